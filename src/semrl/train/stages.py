"""The stage graph: which stages run, in what order, from which model, on which splits.

Built from the config's `stages` section (`semrl.config.stages`), where every stage, built-in
or declared, is data. This module is the only code that turns that section into an order, a
parent, the splits to train on and the config sections a stage's output depends on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from semrl.config.experiment import ExperimentConfig
from semrl.config.rewards import RewardsConfig
from semrl.config.stages import (
    BASE_METHOD,  # noqa: E402  (re-exported: the untrained model's method name)
    StageKind,
    StagesConfig,
)
from semrl.core.errors import ConfigError
from semrl.core.provenance import digest

# The paper's roles, by the built-in stages that play them: GRPO (the treatment) against strong
# SFT (the baseline), both measured against the cold start GRPO starts from. The report's
# comparisons and verdict are about these.
TREATMENT, BASELINE, COLD_START = "grpo", "sft", "cold_start"
# Config sections that change what a stage of each kind produces (its manifest records their hash).
HASHED_SECTIONS: dict[str, tuple[str, ...]] = {
    "sft": ("seed", "model", "task", "data"),
    "grpo": ("seed", "model", "task", "data", "rewards"),
    "rft": ("seed", "model", "task", "data", "rewards"),
}


@dataclass(frozen=True)
class StageSpec:
    """One stage: its name, kind (sft, grpo or rft), the stage it starts from (None: the base model)
    and the splits it trains on."""

    name: str
    kind: StageKind
    parent: str | None
    splits: tuple[str, ...]

    @property
    def hashed_sections(self) -> tuple[str, ...]:
        return HASHED_SECTIONS[self.kind]


def stage_specs(stages: StagesConfig) -> dict[str, StageSpec]:
    """Every declared stage (enabled or not) in declaration order."""
    return {name: StageSpec(name, cfg.kind, cfg.from_, tuple(cfg.splits)) for name, cfg in stages.declared().items()}


def _check_name(stages: StagesConfig, name: str, flag: str) -> None:
    if name not in stages.declared():
        raise ConfigError(f"{flag} {name!r}: unknown stage; stages are {', '.join(stages.declared())}")


def stage_order(stages: StagesConfig) -> list[StageSpec]:
    """The enabled stages, each after the stage it starts from (declaration order otherwise)."""
    specs = stage_specs(stages)
    enabled = [specs[name] for name in specs if name in stages.enabled]
    ordered: list[StageSpec] = []
    placed: set[str] = set()
    while len(ordered) < len(enabled):
        for spec in enabled:
            if spec.name not in placed and (
                spec.parent is None or spec.parent in placed or spec.parent not in stages.enabled
            ):
                ordered.append(spec)
                placed.add(spec.name)
                break
    return ordered


def stages_to_run(stages: StagesConfig, only: str | None = None) -> list[StageSpec]:
    """The enabled stages in dependency order (or just `only`, enabled or not)."""
    if only is not None:
        _check_name(stages, only, "--only")
        return [stage_specs(stages)[only]]
    return stage_order(stages)


def downstream_of(stages: StagesConfig, name: str) -> list[str]:
    """A stage and every stage that starts from its output, transitively."""
    _check_name(stages, name, "--force")
    out = [name]
    grew = True
    while grew:
        grew = False
        for spec in stage_specs(stages).values():
            if spec.parent in out and spec.name not in out:
                out.append(spec.name)
                grew = True
    return out


def reward_free_stages(stages: StagesConfig) -> list[str]:
    """The enabled stages whose output the rewards do not change: SFT stages with no GRPO stage
    among their ancestors (what a reward sweep's variants share)."""
    specs = stage_specs(stages)

    def reward_free(name: str | None) -> bool:
        return name is None or (specs[name].kind == "sft" and reward_free(specs[name].parent))

    return [spec.name for spec in stage_order(stages) if reward_free(spec.name)]


def evaluated_methods(config: ExperimentConfig) -> list[str]:
    """The methods a run evaluates: `evaluation.methods`, else the base model and every enabled
    stage, in stage order."""
    order = [BASE_METHOD, *(spec.name for spec in stage_order(config.stages))]
    if config.evaluation.methods is None:
        return order
    chosen = config.evaluation.methods
    return [m for m in [BASE_METHOD, *stage_specs(config.stages)] if m in chosen]


def stage_rewards(config: ExperimentConfig, stage: str) -> RewardsConfig:
    """The rewards a stage trains or selects with: its own `stages.<stage>.rewards` section when it
    has one (grpo and rft stages may), else the run's `rewards`."""
    own = getattr(config.stages.section(stage), "rewards", None)
    return own if own is not None else config.rewards


def rewards_key(config: ExperimentConfig, stage: str) -> str:
    """Where `stage_rewards` comes from, as a config key for messages: stages.<stage>.rewards or rewards."""
    return f"stages.{stage}.rewards" if getattr(config.stages.section(stage), "rewards", None) else "rewards"


def stage_config_hash(config: ExperimentConfig, stage: str) -> str:
    """Hash of everything that decides a stage's output: the sections its kind reads and its own
    section (not the other stages'). A stage with its own rewards hashes those in place of the
    run's, so the run's rewards leave it alone."""
    spec = stage_specs(config.stages)[stage]
    data = config.to_dict()
    keyed: dict[str, Any] = {k: data[k] for k in spec.hashed_sections}
    keyed["stage"] = dict(data["stages"][stage])
    if "rewards" in keyed:
        own = keyed["stage"].pop("rewards", None)
        rewards = own if own is not None else keyed["rewards"]
        # Which modules may run says nothing about the stage's output.
        keyed["rewards"] = {k: v for k, v in rewards.items() if k != "trust_modules"}
    return digest(keyed)
