"""The weight dtype a load uses on this machine, and the trainer's precision arguments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from semrl.core.errors import ModelError


def _cuda_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


# CPU features that make bfloat16 matrix work fast (oneDNN kernels); without them bfloat16 is
# emulated and slower than float32 (measured on AVX2-only EPYC).
CPU_BF16_FEATURES: tuple[str, ...] = ("amx_bf16", "avx512_bf16")


def cpu_bf16_feature() -> str | None:
    """The first of `CPU_BF16_FEATURES` this CPU has (torch's runtime cpuinfo probe), or None."""
    capabilities = torch.cpu.get_capabilities()
    return next((f for f in CPU_BF16_FEATURES if capabilities.get(f)), None)


@dataclass(frozen=True)
class DtypeChoice:
    """The weight dtype a load uses, and why (recorded in every stage manifest and the report)."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def choose_dtype(requested: str = "auto") -> DtypeChoice:
    """The weight dtype for `model.dtype`: an explicit choice, or for 'auto' bfloat16 on a GPU or
    CPU with fast bfloat16 (AMX or AVX512-BF16) and float32 elsewhere. LoRA adapters stay float32
    either way (PEFT's `autocast_adapter_dtype`)."""
    if requested != "auto":
        try:
            dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[requested]
        except KeyError:
            raise ModelError(
                f"model.dtype {requested!r} is not supported; use auto, float32, bfloat16 or float16"
            ) from None
        return DtypeChoice(dtype, f"model.dtype: {requested}")
    if torch.cuda.is_available():
        if _cuda_bf16():
            return DtypeChoice(torch.bfloat16, "auto: the GPU supports bfloat16")
        return DtypeChoice(torch.float32, "auto: the GPU lacks bfloat16 (the trainer's fp16 mixed precision applies)")
    feature = cpu_bf16_feature()
    if feature is not None:
        return DtypeChoice(torch.bfloat16, f"auto: the CPU has {feature}")
    return DtypeChoice(torch.float32, "auto: the CPU has neither AMX nor AVX512-BF16 (bfloat16 would be emulated)")


def select_dtype(requested: str = "auto") -> torch.dtype:
    """The weight dtype `choose_dtype` picks for `model.dtype`."""
    return choose_dtype(requested).dtype


def trainer_hardware_kwargs() -> dict[str, Any]:
    """Precision/device arguments for TRL configs on this machine. TRL's configs default to bf16,
    which fails on a CPU-only machine, so CPU runs ask for plain float32 explicitly."""
    if not torch.cuda.is_available():
        return {"use_cpu": True, "bf16": False, "fp16": False}
    if _cuda_bf16():
        return {"bf16": True, "fp16": False}
    return {"bf16": False, "fp16": True}
