"""Returning freed memory to the operating system between the stages of one process."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import sys


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not sys.platform.startswith("linux") or name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018 (glibc only: musl has no malloc_trim)
    except (OSError, AttributeError):
        return None
    return libc


def returns_memory_to_os() -> bool:
    """Whether `release_freed_memory` can hand pages back here (glibc on Linux)."""
    return _libc() is not None


def release_freed_memory() -> None:
    """Collect garbage, then hand the allocator's free pages back to the OS (glibc `malloc_trim`).

    glibc keeps freed blocks below its mmap threshold (which grows to 32 MiB) in its heaps, so a
    process that trains several stages in a row holds the earlier stages' freed tensors as resident
    memory, and the next stage's peak lands on top of them. Elsewhere this only collects garbage.
    """
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
