"""`release_freed_memory`: a process that trains several stages gives back what a finished stage freed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from semrl.core.memory import returns_memory_to_os

CHILD = r"""
import torch
from semrl.core.memory import release_freed_memory

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

big = torch.ones(16 * 2**20 // 4)  # freeing one 16 MiB block raises glibc's mmap threshold to 16 MiB,
del big                            # so the 4 MiB tensors below live in its heap, as a stage's do
tensors = [torch.ones(2**20) for _ in range(100)]  # 400 MiB
del tensors[:-1]  # the last one stays live, at the top of the heap: freeing is not enough to shrink it
freed = rss_mb()
release_freed_memory()
print(freed, rss_mb())
"""


@pytest.mark.skipif(not returns_memory_to_os(), reason="malloc_trim is glibc's (Linux)")
def test_freed_tensor_memory_goes_back_to_the_os() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True).stdout
    freed, released = (float(x) for x in out.split())
    assert freed - released > 300, (freed, released)  # of the 396 MiB freed, most leaves the process
