"""The process state of a (possibly multi-process) launch, from accelerate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass


def distributed_state() -> Any:
    """accelerate's process state. The first construction in a process decides it for good, and
    on a machine without a GPU only `cpu=True` recognises a multi-process (gloo) launch, so say
    so here; the trainer's own `use_cpu=True` then finds the same state."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    return distributed_state().is_main_process


def wait_for_everyone() -> None:
    distributed_state().wait_for_everyone()


def world_size() -> int:
    return distributed_state().num_processes
