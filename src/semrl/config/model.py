"""The `model` section: which policy model, its dtype, and its LoRA adapters."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from semrl.config.base import Section


class LoraConfig(Section):
    """LoRA adapters (PEFT) on the policy: the paper trains LoRA r=64, alpha 128."""

    enabled: bool = Field(True, description="Train LoRA adapters (True) or all weights (False).")
    r: int = Field(64, ge=1, description="LoRA rank (paper: 64).")
    alpha: int = Field(128, ge=1, description="LoRA alpha (paper: 128).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout (paper: 0.05).")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Modules that get adapters: attention and MLP projections, as in the paper.",
    )


class ModelConfig(Section):
    """The policy model: which one, its weight dtype, its LoRA adapters and what a stage saves."""

    name: str = Field(
        "tiny",
        description="Policy model: 'tiny' (random, built in code), 'gemma-3-270m' (packaged, offline), "
        "a Hugging Face hub id, or a local path.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub. Off unless you trust it.")
    allow_pickle: bool = Field(
        False,
        description="Load pickle-only weights (pytorch_model.bin without safetensors). Unpickling runs code from "
        "the file: off unless you trust it.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="'auto': bfloat16 on a GPU that supports it and on CPUs with AMX or AVX512-BF16 (2-3x faster "
        "matmuls there), float32 elsewhere (bfloat16 is emulated, so slower, on AVX2-only CPUs). LoRA adapters stay "
        "float32. The evaluation has its own dtype (evaluation.dtype).",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)
    save: Literal["adapter", "merged", "both"] | None = Field(
        None,
        description="What a stage writes as its output model: 'adapter' (PEFT's own format, a few MB; "
        "loaded as base + adapter), 'merged' (a full checkpoint, LoRA merged in) or 'both' (the adapter as "
        "the stage's output, plus the merged checkpoint beside it). Default: 'adapter' with LoRA, 'merged' "
        "without. `semrl export` merges an adapter on demand.",
    )

    # Added after runs existed: at its default it stays out of dumps, so old config hashes hold.
    _omit_when_default = ("save", "allow_pickle")

    @property
    def save_mode(self) -> Literal["adapter", "merged", "both"]:
        """`save`, with its default resolved: 'adapter' when LoRA is on, else 'merged'."""
        if self.save is not None:
            return self.save
        return "adapter" if self.lora.enabled else "merged"

    @model_validator(mode="after")
    def _adapter_needs_lora(self) -> ModelConfig:
        if self.save in ("adapter", "both") and not self.lora.enabled:
            raise ValueError(
                f"model.save {self.save!r} needs LoRA (model.lora.enabled: true): without LoRA there is no adapter; "
                "use model.save: merged or remove the key"
            )
        return self
