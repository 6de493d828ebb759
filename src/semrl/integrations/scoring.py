"""A semrl config's rewards, built once, scoring rows for another engine's trainer.

`configured_rewards` builds what semrl's GRPO stage builds (`train.grpo.stage_reward_functions`)
from a config's `rewards:` section: the encoder (refused when blind to the target language), the
semantic floor tau and the weighted components; `ConfiguredRewards.score` then scores rows of
``{"source", "reference", "completion"}`` with `rewards.score_completions`, the function behind
`semrl score`, so an engine's rewards equal `semrl score`'s on the same completions.

One difference from a semrl run: GRPO's `tau_source: cold_start_dev` measures the starting model on
the dev split, and an engine's reward workers have no model; tau then comes from shuffled reference
pairs (as `resolve_tau` falls back, saying so in the calibration's note), or pass the value a semrl
run recorded (``stages/grpo/tau.json``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semrl.config.experiment import ExperimentConfig, load_config
from semrl.config.rewards import ENCODER_REWARDS, RewardsConfig
from semrl.core.errors import ConfigError
from semrl.core.layout import RunLayout
from semrl.encoders import Encoder, build_encoder, require_representation
from semrl.rewards.base import RewardFunc
from semrl.rewards.registry import build_reward_functions, score_completions
from semrl.rewards.semantic import check_tau
from semrl.rewards.tau import TauCalibration, resolve_tau
from semrl.train.stages import rewards_key, stage_rewards

logger = logging.getLogger(__name__)

# Components whose score depends on which rows are scored together (length_penalty against the
# median of the batch or of the prompt's group): in another engine that is whatever one reward
# worker scores at once, not TRL's generation batch.
BATCH_DEPENDENT: dict[str, tuple[str, ...]] = {"length_penalty": ("batch", "group")}


@dataclass
class ConfiguredRewards:
    """The reward components of one `rewards:` section, their weights and the tau they use."""

    rewards: RewardsConfig
    target_lang: str
    funcs: list[RewardFunc]
    weights: list[float]
    tau: TauCalibration | None
    encoder: Encoder | None = None
    names: list[str] = field(init=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.names = [getattr(f, "__name__", type(f).__name__) for f in self.funcs]

    def score(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
        """Score rows of ``{"source", "reference", "completion"}`` in one batched call per reward
        (one encoder pass for all completions): each component's score by name, ``similarity`` (the
        raw cosine, with a semantic reward), ``language`` and the weighted ``total``, as `semrl score`
        reports them. Calls from several threads take turns (engines score in thread pools, and the
        reference cache and the encoder are not thread-safe)."""
        with self._lock:
            return score_completions(list(rows), self.target_lang, self.funcs, self.weights)


def configured_rewards(
    config: ExperimentConfig | str | Path,
    *,
    stage: str | None = None,
    references: Sequence[str] | Callable[[], Sequence[str]] | None = None,
    tau: float | None = None,
    trained_encoder_dir: str | Path | None = None,
) -> ConfiguredRewards:
    """Build the rewards of `config` (a loaded config or a YAML path): its `rewards:` section, or
    with `stage` that stage's rewards (its own section when it has one).

    tau, when a semantic reward needs one: `tau` if given, else `rewards.tau` if it is a number,
    else ('auto') calibrated on `references` (the training references: the rl split's, as semrl's
    GRPO does; shuffled pairs, seeded with the config's seed); a callable is called only then. An encoder with backend 'trained'
    is read from `trained_encoder_dir`, by default the run directory's (the config file's folder,
    ``encoder/model``). Raises ConfigError/ModelError naming the key or file to fix.
    """
    if not isinstance(config, ExperimentConfig):
        path = Path(config)
        config = load_config(path)
        if trained_encoder_dir is None:
            trained_encoder_dir = RunLayout(path.parent).encoder.model
    if stage is not None and stage not in config.stages.declared():
        raise ConfigError(f"no stage {stage!r} in the config; stages are {', '.join(config.stages.declared())}")
    rewards = stage_rewards(config, stage) if stage is not None else config.rewards
    key = rewards_key(config, stage) if stage is not None else "rewards"
    target_lang = config.task.target_lang
    names = {c.name for c in rewards.components}
    for name, modes in BATCH_DEPENDENT.items():
        for comp in rewards.components:
            if comp.name == name and comp.relative_to in modes:
                logger.warning(
                    "%s.components: %s relative_to %r compares a completion with the others scored at the "
                    "same time, which outside semrl are the rows one reward worker receives at once; "
                    "relative_to: reference gives each completion the same score wherever it is scored",
                    key,
                    name,
                    comp.relative_to,
                )
    encoder: Encoder | None = None
    if names & set(ENCODER_REWARDS):
        encoder = build_encoder(rewards.encoder, trained_encoder_dir)
    calibration: TauCalibration | None = None
    if "semantic" in names:
        require_representation(encoder, target_lang, "the semantic reward")
        calibration = _tau(rewards, key, encoder, tau, references, config.seed)
    funcs, weights = build_reward_functions(
        rewards, target_lang, encoder, calibration.value if calibration is not None else None
    )
    return ConfiguredRewards(rewards, target_lang, funcs, weights, calibration, encoder)


def _tau(
    rewards: RewardsConfig,
    key: str,
    encoder: Encoder | None,
    tau: float | None,
    references: Sequence[str] | Callable[[], Sequence[str]] | None,
    seed: int,
) -> TauCalibration:
    """The semantic floor: the caller's, the config's number, or calibrated on the references."""
    if tau is not None:
        return TauCalibration(check_tau(tau), "fixed", {"note": "given by the caller"})
    if rewards.tau != "auto":
        return TauCalibration(check_tau(float(rewards.tau)), "fixed", {})
    texts = list((references() if callable(references) else references) or ())
    if not texts:
        raise ConfigError(
            f"{key}.tau is 'auto', which calibrates tau on the training references, and none were given; "
            f"pass the exported training file (semrl data export) or set {key}.tau to a number (a semrl "
            f"run records its value in stages/grpo/tau.json)"
        )
    calibration = resolve_tau(rewards, encoder, texts, seed=seed)
    logger.info("semantic floor tau = %.4f (%s)", calibration.value, calibration.origin)
    return calibration
