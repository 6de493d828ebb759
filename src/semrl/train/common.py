"""TrainingArguments shared by the SFT and GRPO trainers: batch arithmetic, schedule, checkpointing, logging."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from semrl.config.experiment import ExperimentConfig
from semrl.core.dist import world_size
from semrl.core.errors import ConfigError

if TYPE_CHECKING:
    pass

T = TypeVar("T")


# Resuming needs only the newest checkpoint; one older is kept in case the newest is damaged.
SAVE_TOTAL_LIMIT = 2


def batch_arithmetic(stage: str, batch_size: int, per_device_batch_size: int, world_size: int) -> tuple[int, int]:
    """(per-device batch, gradient accumulation steps) so that per-device x processes x
    accumulation equals the configured effective `batch_size`. A per-device batch larger than its
    share of `batch_size` is lowered to that share."""
    per_device = max(1, min(per_device_batch_size, batch_size // world_size))
    denominator = per_device * world_size
    if batch_size % denominator:
        raise ConfigError(
            f"stages.{stage}.batch_size ({batch_size}) must be a multiple of stages.{stage}.per_device_batch_size "
            f"x processes ({per_device} x {world_size} = {denominator}); change one of them"
        )
    return per_device, batch_size // denominator


def default_report_to() -> list[str]:
    """semrl's default `report_to`: TensorBoard when it is installed, else none (a stage's
    `trl: {report_to: ...}` overrides it)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return ["none"]
    return ["tensorboard"]


def common_args(stage: str, cfg: Any, config: ExperimentConfig, output_dir: Path) -> dict[str, Any]:
    """TrainingArguments shared by SFTConfig and GRPOConfig, from a stage's config section."""
    from semrl.models import trainer_hardware_kwargs

    per_device, accumulation = batch_arithmetic(stage, cfg.batch_size, cfg.per_device_batch_size, world_size())
    return dict(
        output_dir=str(output_dir),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        lr_scheduler_type=cfg.lr_scheduler,
        # transformers 5 reads a float warmup_steps in [0, 1) as a ratio of the total steps.
        warmup_steps=min(float(cfg.warmup_ratio), 0.999),
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=SAVE_TOTAL_LIMIT,
        seed=config.stage_seed(stage),
        data_seed=config.stage_seed(stage),
        report_to=default_report_to(),
        # TRL loads code from the model's folder with this (vLLM, a processor): semrl's own switch decides.
        trust_remote_code=config.model.trust_remote_code,
        **_checkpointing_arg(cfg.gradient_checkpointing),
        **trainer_hardware_kwargs(),
    )


def _checkpointing_arg(enabled: bool) -> dict[str, bool]:
    """Activation (gradient) checkpointing under the name this transformers version uses: newer 5.x
    releases renamed `gradient_checkpointing` to `activation_checkpointing` and warn on the old one."""
    from transformers import TrainingArguments

    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__:
        return {"activation_checkpointing": enabled}
    return {"gradient_checkpointing": enabled}


def build_trl_config(stage: str, cfg: Any, config_cls: type[T], semrl_kwargs: dict[str, Any]) -> T:
    """`config_cls` (TRL's SFTConfig or GRPOConfig) from semrl's derived values, then the stage's
    `trl:` keys verbatim (their names were checked when the config loaded; TRL checks their
    values here). A value TRL refuses raises ConfigError naming stages.<stage>.trl.<key>."""
    passthrough = dict(cfg.trl)
    try:
        return config_cls(**{**semrl_kwargs, **passthrough})
    except (TypeError, ValueError) as err:
        if not passthrough:
            raise
        # Find the key TRL refuses: the first whose value alone, over semrl's values, fails.
        culprits = []
        for key, value in passthrough.items():
            try:
                config_cls(**{**semrl_kwargs, key: value})
            except (TypeError, ValueError):
                culprits.append(key)
        keys = culprits or list(passthrough)
        named = ", ".join(f"stages.{stage}.trl.{k}" for k in keys)
        shown = ", ".join(f"{k}={passthrough[k]!r}" for k in keys)
        raise ConfigError(f"{named}: trl.{config_cls.__name__} refused {shown}: {err}") from None
