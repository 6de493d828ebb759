"""LoRA: the PEFT config a stage trains with, the adapter's ``base_model.json`` record, and how a
stage saves its model (adapter, merged checkpoint or both)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from semrl.core.errors import ModelError
from semrl.core.io import atomic_path
from semrl.core.layout import ADAPTER_BASE_FILE, ADAPTER_CONFIG_FILE

if TYPE_CHECKING:
    import peft
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from semrl.config.model import LoraConfig, ModelConfig

logger = logging.getLogger(__name__)


def linear_module_names(model: torch.nn.Module) -> set[str]:
    """Leaf names of the model's linear layers (e.g. 'q_proj'), the names LoRA targets."""
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def peft_config(cfg: LoraConfig, model: torch.nn.Module | None = None) -> peft.LoraConfig | None:
    """A PEFT LoRA config from the config's `model.lora` section, or None when LoRA is disabled.

    With `model`, the target modules are filtered to those the model has (Gemma, Qwen and Llama
    share the q/k/v/o and gate/up/down projection names; other architectures may not). A list
    with no match raises ModelError naming the model's linear layers.
    """
    if not cfg.enabled:
        return None
    import peft

    targets: list[str] | str = cfg.target_modules
    if model is not None and targets != "all-linear":
        present = linear_module_names(model)
        present.discard("lm_head")  # never adapt the output head: it is tied to the embeddings
        kept = [t for t in targets if t in present]
        if not kept:
            raise ModelError(
                f"model.lora.target_modules {list(targets)} match no linear layer of this model; its linear "
                f"layers are {sorted(present)}. Set model.lora.target_modules to some of those, or 'all-linear'."
            )
        dropped = [t for t in targets if t not in present]
        if dropped:
            logger.info("LoRA: the model has no %s layers; adapting %s", dropped, kept)
        targets = kept
    return peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )


def is_adapter_dir(path: str | Path) -> bool:
    """Whether `path` is a LoRA adapter directory (PEFT's format) rather than a full checkpoint."""
    return (Path(str(path)) / ADAPTER_CONFIG_FILE).is_file()


def adapter_base_record(base: str | Path | None, cfg: ModelConfig, adapter_dir: str | Path) -> dict[str, Any]:
    """What an adapter saved to `adapter_dir` applies to, for its ``base_model.json``.

    `base` is the checkpoint the stage started from (None: the configured model, recorded by name
    and revision). A local checkpoint (another stage's output, itself perhaps an adapter) is recorded
    relative to `adapter_dir`, so a run directory can be moved or copied whole, and absolutely as a
    fallback (a transfer run's source run stays where it is).
    """
    if base is None:
        return {"name": cfg.name, "revision": cfg.revision}
    if not Path(str(base)).exists():  # a hub id given as the starting model
        return {"name": str(base), "revision": None}
    absolute = os.path.abspath(str(base))
    return {"path": os.path.relpath(absolute, os.path.abspath(str(adapter_dir))), "absolute": absolute}


# ----------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------
def save_merged(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path) -> Path:
    """Save a full safetensors checkpoint of `model` (LoRA adapters merged in) atomically.

    A model with adapters is merged in place (do not train it further).
    """
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    out_dir = Path(out_dir)
    try:
        with atomic_path(out_dir) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    except Exception as err:  # safetensors raises its own SafetensorError, not an OSError
        if isinstance(err, OSError) or type(err).__name__ == "SafetensorError":
            raise ModelError(
                f"{out_dir}: cannot write the model ({err}). Free disk space or use a writable --out; nothing "
                f"was half-written and the same command then finishes the stage from its last checkpoint."
            ) from err
        raise
    return out_dir


def save_adapter(
    model: peft.PeftModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path, base_record: dict[str, Any]
) -> Path:
    """Save `model`'s LoRA adapter in PEFT's own format (``save_pretrained`` of the PeftModel), the
    tokenizer, and ``base_model.json`` (`adapter_base_record`, computed for `out_dir`), atomically."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / ADAPTER_BASE_FILE).write_text(json.dumps(base_record, indent=2) + "\n", encoding="utf-8")
    return out_dir


def save_stage_output(
    model: PreTrainedModel | peft.PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    mode: str,
    model_dir: str | Path,
    merged_dir: str | Path,
    base_record: dict[str, Any],
) -> None:
    """Write a stage's output as `model.save` asks: 'adapter' (to `model_dir`), 'merged' (a full
    checkpoint to `model_dir`, as before adapters were saved) or 'both' (the adapter to `model_dir`,
    then the merged checkpoint to `merged_dir`). A model without adapters is always saved merged."""
    from peft import PeftModel

    if not isinstance(model, PeftModel) or mode == "merged":
        save_merged(model, tokenizer, model_dir)
        return
    save_adapter(model, tokenizer, model_dir, base_record)
    if mode == "both":
        save_merged(model, tokenizer, merged_dir)  # merges in place: after the adapter is saved
