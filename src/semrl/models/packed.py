"""Inference with linear weights packed once for oneDNN, on CPU.

torch's CPU `linear` multiplies by the weight as stored: float32 goes to MKL's sgemm, which for the
few rows of a decode step reads the weight at a fraction of the memory bandwidth, and bfloat16 goes
to oneDNN, which lays the weight out for its kernels again on every call.
`torch.ops.mkldnn._reorder_linear_weight` lays it out once (what inductor's CPU freezing does) and
`torch.ops.mkldnn._linear_pointwise` multiplies by that copy. Measured by
`benchmarks/decode_matmul.py` (AMD EPYC, 2 cores): Gemma 3's float32 LM head at 16 rows 126 ms plain,
34 ms packed, at 120 rows 411 and 228 ms; its MLP projections 1.3-1.8x faster at 1 to 120 rows, 1.1x
at a 1,024-row prefill.

The packed product is float32 (or bfloat16) as the plain one, summed in another order: float32
values differ by about 1e-6 relative, so a greedy decode can part from sgemm's only where two
tokens' logits tie to that precision (bfloat16 products were equal to the bit).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F

# The number of rows oneDNN lays the weight out for; any row count works (16: GRPO's and the
# evaluation's decode batches; measured within 10% of each size's own layout at 1, 16 and 120 rows).
ROWS_HINT = 16


def can_pack_linears(model: torch.nn.Module) -> bool:
    """Whether `pack_linear_weights` applies: a CPU model and a torch built with oneDNN."""
    first = next(model.parameters(), None)
    return (
        first is not None
        and first.device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


def _packed_linear(module: torch.nn.Linear, packed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if x.dtype != module.weight.dtype or (torch.is_grad_enabled() and (x.requires_grad or module.weight.requires_grad)):
        return F.linear(x, module.weight, module.bias)  # gradients and other dtypes: the plain weight
    return torch.ops.mkldnn._linear_pointwise(x, packed, module.bias, "none", [], "")


def _packable_linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    # Only plain linears whose forward nobody has replaced on the instance (another block's patch).
    return [
        m
        for m in model.modules()
        if type(m) is torch.nn.Linear
        and m.weight.dtype in (torch.float32, torch.bfloat16)
        and "forward" not in m.__dict__
    ]


def _pack(module: torch.nn.Linear) -> None:
    weight = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), ROWS_HINT)
    module.forward = functools.partial(_packed_linear, module, weight)


def pack_linear_weights(model: torch.nn.Module) -> int:
    """Route every `torch.nn.Linear` of an inference model through a copy of its weight packed for
    oneDNN; returns how many were packed (0 when `can_pack_linears` is false).

    For evaluation: the weights must not change afterwards (the copies would go stale; load the
    model again instead, or pack within `linear_weights_packed`), and the copies cost the linear
    weights' memory once more (Gemma 3 270M in float32: about 1 GB, its tied LM head included).
    Forwards that build gradients, and inputs of another dtype, use the plain weight.
    """
    if not can_pack_linears(model):
        return 0
    modules = _packable_linears(model)
    for module in modules:
        _pack(module)
    return len(modules)


@contextlib.contextmanager
def linear_weights_packed(model: torch.nn.Module) -> Iterator[int]:
    """Within this block, no-grad forwards multiply by copies of the linear weights packed on entry
    (`pack_linear_weights`); on exit the copies are dropped and the forwards are torch's again.
    Yields how many were packed. For generation from weights that change between blocks: GRPO
    packs its policy for each step's sampling, after `merged_lora_for_generation` has merged it.
    """
    modules = _packable_linears(model) if can_pack_linears(model) else []
    try:
        for module in modules:
            _pack(module)
        yield len(modules)
    finally:
        for module in modules:
            module.__dict__.pop("forward", None)
