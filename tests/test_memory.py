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


REUSE_CHILD = r"""
import resource
import torch
from semrl.core.memory import freed_memory_kept_for_reuse

def faults_per_allocation():
    # Blocks above glibc's largest mmap threshold (32 MiB), as a 262k-vocabulary model's logits
    # tiles and a batch's activations are: each is mapped on malloc and unmapped on free.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        tensors = [torch.empty(48 * 2**20, dtype=torch.uint8).fill_(1) for _ in range(2)]
        del tensors
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 40

faults_per_allocation()
default = faults_per_allocation()
with freed_memory_kept_for_reuse() as kept:
    faults_per_allocation()  # the first rounds grow the heap
    inside = faults_per_allocation()
    with freed_memory_kept_for_reuse(release_after=True):  # as an evaluation phase inside a user's block
        faults_per_allocation()
    faults_per_allocation()  # the heap grows again after the inner block's release
    after_nested = faults_per_allocation()
print(kept, default, inside, after_nested)
"""


@pytest.mark.skipif(not returns_memory_to_os(), reason="glibc on Linux only")
def test_freed_memory_is_reused_inside_the_block_without_page_faults() -> None:
    import resource

    out = subprocess.run([sys.executable, "-c", REUSE_CHILD], capture_output=True, text=True, check=True).stdout
    kept, default, inside, after_nested = out.split()
    pages = 48 * 2**20 / resource.getpagesize()
    assert kept == "True"
    assert float(default) > pages / 2  # glibc's default: every 48 MiB block is faulted in afresh
    assert float(inside) < pages / 100  # inside the block the freed memory is handed out again
    assert float(after_nested) < pages / 100  # a nested block's exit keeps the outer block's settings


RELEASE_CHILD = r"""
import torch
from semrl.core.memory import freed_memory_kept_for_reuse

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

with freed_memory_kept_for_reuse(release_after=True):
    tensors = [torch.ones(48 * 2**20 // 4) for _ in range(8)]  # 384 MiB
    del tensors
    kept = rss_mb()
print(kept, rss_mb())
"""


@pytest.mark.skipif(not returns_memory_to_os(), reason="glibc on Linux only")
def test_memory_kept_by_an_evaluation_phase_is_handed_back_after_it() -> None:
    out = subprocess.run([sys.executable, "-c", RELEASE_CHILD], capture_output=True, text=True, check=True).stdout
    kept, after = (float(x) for x in out.split())
    assert kept - after > 300, (kept, after)  # the 384 MiB freed inside the block stay until it ends
