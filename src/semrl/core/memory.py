"""glibc's handling of freed memory: kept for reuse within a stage, returned to the operating system
between the stages of one process."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import os
import sys
from collections.abc import Iterator

# mallopt parameters (glibc's malloc.h) and glibc's documented defaults, put back on leaving the block.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}
_KEPT = {_M_TRIM_THRESHOLD: 2**31 - 1, _M_MMAP_MAX: 0}
# Set to "default" to leave glibc's settings alone (e.g. to measure the difference).
MALLOC_ENV = "SEMRL_MALLOC"


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


# Whether each open block's settings took effect, outermost first: only the outermost sets and restores them.
_open_blocks: list[bool] = []


@contextlib.contextmanager
def freed_memory_kept_for_reuse(release_after: bool = False) -> Iterator[bool]:
    """Within this block, glibc keeps freed memory for the process's next allocations instead of
    handing it back to the operating system at once; yields whether it could (glibc on Linux).
    With `release_after`, what was kept is handed back on leaving (`release_freed_memory`).

    PyTorch on CPU allocates every activation, gradient and logits tile with malloc, and frees it
    within the step. glibc serves large blocks with a fresh mmap and unmaps them on free, and trims
    its heap's top beyond a threshold, so the next step faults the same pages in again, each one
    zeroed by the kernel. On a 2-core AMD EPYC the demo's bfloat16 SFT step took 14.1-16.4 s with
    glibc's defaults (13 M page faults per benchmark run) and 8.4-10.9 s with mmap off and the trim
    threshold at 2 GiB, at the same peak RSS (docs/results/benchmarks.md, `step_time_epyc*.json`).
    `train_stage` trains inside this block. The evaluation runs each phase (test generation, the
    benchmarks, task KL, drift) in its own block with `release_after`: one block around the whole
    demo evaluation peaked at 10.2 GiB, blocks per phase at 5.45 GiB (5.12 GiB without any). On
    leaving the outermost block, glibc's documented defaults are set again (a nested block leaves the
    outer one's settings in force). Set SEMRL_MALLOC=default to leave glibc alone.
    """
    libc = _libc()
    if libc is None or os.environ.get(MALLOC_ENV) == "default":
        yield False
        return
    # Nested (an evaluation phase inside a user's block): the outer block's settings hold.
    nested = bool(_open_blocks)
    applied = [] if nested else [param for param, value in _KEPT.items() if libc.mallopt(param, value) == 1]
    _open_blocks.append(_open_blocks[-1] if nested else len(applied) == len(_KEPT))
    try:
        yield _open_blocks[-1]
    finally:
        _open_blocks.pop()
        for param in applied:
            libc.mallopt(param, _GLIBC_DEFAULTS[param])
        if release_after:
            release_freed_memory()
