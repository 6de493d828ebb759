"""The SFT stages (cold start, strong SFT, declared SFT stages): TRL's SFTTrainer on completion-only loss."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from semrl.config.experiment import ExperimentConfig
from semrl.train.common import build_trl_config, common_args

if TYPE_CHECKING:
    from semrl.data.example import Example


def sft_args(stage: str, config: ExperimentConfig, output_dir: Path) -> Any:
    """TRL's SFTConfig for stage `stage`: semrl's values, then the stage's `trl:` keys."""
    from trl import SFTConfig

    cfg = config.stages.section(stage)
    semrl_kwargs = dict(
        **common_args(stage, cfg, config, output_dir),
        max_length=cfg.max_length,
        completion_only_loss=True,  # learn the reference, not the prompt
        packing=False,
    )
    return build_trl_config(stage, cfg, SFTConfig, semrl_kwargs)


def build_sft_trainer(
    stage: str,
    config: ExperimentConfig,
    examples: list[Example],
    model: Any,
    tokenizer: Any,
    output_dir: Path,
    callbacks: list[Any],
    extra: dict[str, Any],
) -> Any:
    from trl import SFTTrainer

    from semrl.data.prompts import to_sft_dataset
    from semrl.models import peft_config

    args = sft_args(stage, config, output_dir)
    extra["gradient_accumulation_steps"] = args.gradient_accumulation_steps
    extra["per_device_batch_size"] = args.per_device_train_batch_size
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=to_sft_dataset(examples, config.task, tokenizer),
        processing_class=tokenizer,
        peft_config=peft_config(config.model.lora, model),
        callbacks=callbacks,
    )
