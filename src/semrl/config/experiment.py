"""The experiment config: one YAML file describes a whole semrl experiment.

Every section is a pydantic model so that a typo or an out-of-range value fails early with a
message naming the key, the value and what is allowed. Defaults are the published values of
Su et al. (2026) (see METHOD.md); values the paper does not publish are explicit options whose
defaults are marked "(not published)" in the field description.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, get_args

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from semrl.config.base import Section, check_plain_name, nested_key_error
from semrl.config.data import DataConfig, LocalSource, TaskConfig
from semrl.config.encoder import EncoderTrainingConfig
from semrl.config.evaluation import EvaluationConfig
from semrl.config.model import ModelConfig
from semrl.config.overrides import apply_override
from semrl.config.rewards import REWARD_PRESETS, RewardsConfig
from semrl.config.stages import StageKind, StagesConfig, StrongSFTConfig
from semrl.config.yaml_input import YAMLRefused, load_user_yaml
from semrl.core.errors import ConfigError
from semrl.core.io import NO_SUCH_FILE, file_problem
from semrl.core.provenance import digest


class SweepConfig(Section):
    """`semrl sweep`: one experiment per variant, all sharing the data split, the base evaluation
    and the cold-start (and strong-SFT) stage; only GRPO and its evaluation differ."""

    rewards: list[str] = Field(
        default_factory=list,
        description="Reward presets to compare (see rewards.preset), e.g. [emb_lang, bleu_lang, "
        "bleu_emb_lang, emb]; `semrl sweep --vary rewards=...` overrides it.",
    )
    seeds: list[Annotated[int, Field(ge=0, lt=2**32, strict=True)]] = Field(
        default_factory=list,
        description="GRPO seeds to repeat the run's GRPO stage with (stages.grpo.seed), each a variant seed-N: "
        "the spread another seed gives the same stage; `semrl sweep --vary seed=...` overrides it.",
    )

    _omit_when_default = ("seeds",)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"each seed may appear once; got {v}")
        return v

    @field_validator("rewards")
    @classmethod
    def _known_presets(cls, v: list[str]) -> list[str]:
        for preset in v:  # each names its variant's run directory, DIR/<preset>
            check_plain_name(preset, "reward preset")
        unknown = [p for p in v if p not in REWARD_PRESETS]
        if unknown:
            raise ValueError(f"unknown reward preset(s) {unknown}; presets are {', '.join(REWARD_PRESETS)}")
        if len(set(v)) != len(v):
            raise ValueError(f"each preset may appear once; got {v}")
        return v


class TransferConfig(Section):
    """`semrl transfer`: fine-tune checkpoints of an earlier run on N examples of this config's
    task and data, and compare them (the paper's few-shot transfer: MT-RL vs MT-SFT on 1k
    headline examples)."""

    from_run: str | None = Field(
        None, description="Run directory whose stage models (RUN/stages/<stage>/model) start the transfer."
    )
    from_stages: list[str] = Field(
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
        for stage in v:  # read from RUN/stages/<stage>, written to DIR/stages/from_<stage>
            check_plain_name(stage, "stage name")
        return v


class ExperimentConfig(Section):
    name: str = Field("experiment", description="The experiment's name (in the report and model cards).")
    seed: int = Field(
        42,
        ge=0,
        lt=2**32,
        strict=True,
        description="Seeds the data splits, training, sampling and the bootstrap (an integer in [0, 2**32)).",
    )
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
    encoder: EncoderTrainingConfig | None = Field(
        None,
        description="Train the reward encoder on the run's parallel pairs (`semrl encoder train`); "
        "`rewards.encoder.backend: trained` then uses it, and `semrl run` trains it first.",
    )

    _omit_when_default = ("encoder",)

    @model_validator(mode="after")
    def _trained_encoder_declared(self) -> ExperimentConfig:
        uses = [
            ("rewards.encoder", self.rewards.encoder),
            ("evaluation.second_encoder", self.evaluation.second_encoder),
        ]
        for key, enc in uses:
            if enc is not None and enc.backend == "trained" and self.encoder is None:
                raise ValueError(
                    f"{key}.backend 'trained' needs an `encoder:` section saying how to train it "
                    f"(see configs/encoder-bo-zh.yaml), or backend sentence-transformers with name: "
                    f"a trained encoder's directory (RUN_DIR/encoder/model)"
                )
        if self.encoder is not None and self.encoder.pair_langs is None and self.task.kind != "translation":
            raise ValueError(
                "encoder.pair_langs is needed when task.kind is not translation: the encoder trains on "
                "translation pairs (set encoder.sources to them, e.g. [{kind: ntrex}], and pair_langs: [bo, zh])"
            )
        return self

    @model_validator(mode="after")
    def _methods_are_stages(self) -> ExperimentConfig:
        known = ["base", *self.stages.declared()]
        named = {"evaluation.methods": self.evaluation.methods or []}
        named["evaluation.judge.pairs"] = [m for pair in self.evaluation.judge.pairs for m in pair]
        for key, methods in named.items():
            unknown = sorted({m for m in methods if m not in known})
            if unknown:
                raise ValueError(f"{key}: unknown method(s) {unknown}; methods are {', '.join(known)}")
        return self

    @model_validator(mode="after")
    def _extra_tests_are_other_data(self) -> ExperimentConfig:
        for i, test in enumerate(self.evaluation.extra_tests):
            if test.source in self.data.sources:
                raise nested_key_error(
                    f"evaluation.extra_tests.{i}.source",
                    f"extra test {test.name!r} reads one of data.sources, the run's own data, whose test split the "
                    "main task table already shows; name another source",
                )
        return self

    def resolved_data_dir(self) -> Path | None:
        """The data directory: the config's, else $SEMRL_DATA_DIR, else None (download)."""
        value = self.data_dir or os.environ.get("SEMRL_DATA_DIR")
        return Path(value).expanduser() if value else None

    def stage_seed(self, stage: str) -> int:
        """The seed a stage trains and samples with: its own `seed`, else the top-level one."""
        own = self.stages.section(stage).seed
        return self.seed if own is None else own

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def hash(self, *sections: str) -> str:
        """A short, stable hash of the whole config, or of the named sections only."""
        data = self.to_dict()
        if sections:
            data = {k: data[k] for k in sections}
        return digest(data)


def _without_stage_kind(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """A declared stage's error location without the kind pydantic puts in it (stages.arm.grpo.beta
    is the config's stages.arm.beta): the message names keys as the config writes them."""
    if len(loc) >= 3 and loc[0] == "stages" and loc[2] in get_args(StageKind):
        return (*loc[:2], *loc[3:])
    return loc


def _format_validation_error(err: ValidationError, path: str | Path, overridden: dict[str, str] | None = None) -> str:
    lines = [f"{path}: invalid experiment config ({err.error_count()} problem(s)):"]
    for e in err.errors():
        key = ".".join(str(p) for p in _without_stage_kind(e["loc"])) or "(top level)"
        nested = e["type"] in ("trl_key", "nested_key")  # a key inside the value (a stage's `trl:` key): name it
        if nested:
            key = f"{key}.{e['ctx']['field']}" if key != "(top level)" else e["ctx"]["field"]
        origin = next((item for k, item in (overridden or {}).items() if key == k or key.startswith(k + ".")), None)
        if origin is not None:
            key = f"{key} (from --set {origin})"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `semrl config init` writes every allowed key)"
        elif nested:
            lines.append(f"  - {key}: {msg}")
            continue
        elif e["type"] == "literal_error":
            expected = e.get("ctx", {}).get("expected")
            msg = f"must be one of {expected}"
        value = e.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  - {key}: {msg}{shown}")
    return "\n".join(lines)


def parse_config(
    data: dict[str, Any], origin: str | Path = "<config>", overridden: dict[str, str] | None = None
) -> ExperimentConfig:
    """Validate a config dictionary; raise ConfigError with one line per problem.

    `overridden` maps dotted keys set by `--set` to the override string, so a problem with one
    is blamed on the flag, not on the file."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin, overridden)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load and validate an experiment YAML file.

    `overrides` are dotted `key=value` strings (values parsed as YAML), e.g.
    ``["stages.grpo.max_steps=2", "model.name=tiny"]``.
    """
    path = Path(path)
    problem = file_problem(path)
    if problem == NO_SUCH_FILE:
        raise ConfigError(f"{path}: no such config file. `semrl config init` writes a starter.")
    if problem:
        raise ConfigError(f"{path}: {problem}; give the experiment YAML file")
    try:
        data = load_user_yaml(path.read_text(encoding="utf-8"))
    except YAMLRefused as err:
        mark = err.problem_mark
        raise ConfigError(f"{path}: line {mark.line + 1}, column {mark.column + 1}: {err.problem}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML: {getattr(err, 'problem', err)}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    if data is None or data == {}:
        raise ConfigError(
            f"{path}: the config is empty; an empty file would run the full default experiment. "
            f"`semrl config init` writes a commented starter."
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    overridden = {}
    for item in overrides or []:
        overridden[apply_override(data, item)] = item
    config = parse_config(data, path, overridden)
    _resolve_relative_paths(config, path.parent)
    return config


def _resolve_relative_paths(config: ExperimentConfig, base: Path) -> None:
    """Local data files named by a relative path are looked up beside the config file first, so
    a config and its data can travel together; otherwise the path stays relative to the CWD."""
    for source in [*config.data.sources, *(t.source for t in config.evaluation.extra_tests)]:
        if isinstance(source, LocalSource) and not Path(source.path).is_absolute():
            beside = base / source.path
            if beside.exists() and not Path(source.path).exists():
                source.path = str(beside.resolve())
