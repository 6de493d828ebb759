"""The `stages` section: every training stage is data (a kind, the stage it starts from and the
splits it trains on), so a config can add stages without code.

Built-in stages, with the paper's graph as their defaults::

    cold_start  sft   from the base model, on the cold-start split
    sft         sft   from the base model, on the cold-start and RL splits (the strong-SFT baseline)
    grpo        grpo  from cold_start, on the RL split

A third kind, `rft` (rejection-sampling fine-tuning, a control arm for GRPO), samples G completions
per prompt from its parent, keeps each prompt's best one when its reward clears `threshold`, and
runs SFT on the kept pairs. A grpo or rft stage may carry its own `rewards:` section (the top-level
schema), which replaces the run's for that stage, e.g. a surface-reward GRPO arm beside the
semantic one::

    stages:
      enabled: [cold_start, sft, grpo, rft, grpo_chrf]
      rft: {kind: rft, from: cold_start, splits: [rl]}
      grpo_chrf: {kind: grpo, from: cold_start, splits: [rl], rewards: {preset: bleu_lang}}

A config may declare further stages of either kind under any other name, e.g. SG-SRL's recovery
SFT after GRPO::

    stages:
      enabled: [cold_start, sft, grpo, recovery]
      recovery: {kind: sft, from: grpo, splits: [cold_start], epochs: 1, learning_rate: 1.0e-5}

`semrl.train.stages` turns this section into the stage graph the runner follows.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from semrl.config.base import Section, check_plain_name
from semrl.config.rewards import RewardsConfig

StageKind = Literal["sft", "grpo", "rft"]
# Splits a stage may train on: evaluation splits (dev, test) never are.
TRAINING_SPLITS: tuple[str, ...] = ("cold_start", "rl")
# Names a declared stage may not take: the base model's method name and the section's own keys.
BASE_METHOD = "base"  # the untrained model's method name, evaluated beside every stage's output
RESERVED_STAGE_NAMES: frozenset[str] = frozenset({BASE_METHOD, "enabled"})

# The TRL config class a stage of each kind builds (`stages.<stage>.trl` keys are its fields).
TRL_CONFIG_CLASS: dict[str, str] = {"sft": "SFTConfig", "grpo": "GRPOConfig", "rft": "SFTConfig"}
# TRL fields semrl sets from its own stage keys (TRL field -> semrl key): `trl:` may not set them,
# or the two would disagree. Other fields semrl sets to fixed values (save_total_limit, report_to,
# packing, precision...) a `trl:` key overrides.
SEMRL_OWNED_TRL_KEYS: dict[str, dict[str, str]] = {
    "sft": {
        "output_dir": "the run layout (output_dir)",
        "learning_rate": "learning_rate",
        "num_train_epochs": "epochs",
        "max_steps": "max_steps",
        "per_device_train_batch_size": "per_device_batch_size",
        "gradient_accumulation_steps": "batch_size",
        "lr_scheduler_type": "lr_scheduler",
        "warmup_steps": "warmup_ratio",
        "warmup_ratio": "warmup_ratio",
        "weight_decay": "weight_decay",
        "max_grad_norm": "max_grad_norm",
        "logging_steps": "logging_steps",
        "save_steps": "save_steps",
        "gradient_checkpointing": "gradient_checkpointing",
        "activation_checkpointing": "gradient_checkpointing",
        "seed": "the top-level seed",
        "data_seed": "the top-level seed",
        "max_length": "max_length",
        "trust_remote_code": "the model.trust_remote_code key",
    },
}
SEMRL_OWNED_TRL_KEYS["grpo"] = {
    **{k: v for k, v in SEMRL_OWNED_TRL_KEYS["sft"].items() if k != "max_length"},
    "num_generations": "num_generations",
    "temperature": "temperature",
    "top_p": "top_p",
    "beta": "beta",
    "epsilon": "epsilon",
    "loss_type": "loss_type",
    "scale_rewards": "scale_rewards",
    "max_completion_length": "max_completion_length",
    "reward_weights": "the weights in rewards.components",
    "use_vllm": "use_vllm",
    "vllm_mode": "vllm_mode",
    "vllm_gpu_memory_utilization": "vllm_gpu_memory_utilization",
    "vllm_enable_sleep_mode": "vllm_enable_sleep_mode",
    "vllm_max_model_length": "vllm_max_model_length",
}
SEMRL_OWNED_TRL_KEYS["rft"] = SEMRL_OWNED_TRL_KEYS["sft"]
STAGE_REWARDS_DESCRIPTION = (
    "This stage's own reward (the top-level `rewards` schema), replacing the run's for this stage only, "
    "e.g. {preset: bleu_lang} for a surface-reward arm. null: the run's `rewards`."
)


@functools.cache
def trl_config_fields(kind: str) -> frozenset[str]:
    """The init fields of TRL's config class for a stage kind (TRL is imported here, lazily: it is slow)."""
    import trl

    return frozenset(f.name for f in dataclasses.fields(getattr(trl, TRL_CONFIG_CLASS[kind])) if f.init)


def trl_key_error(key: str, detail: str) -> PydanticCustomError:
    """A validation error about `trl.<key>` of a stage; the config loader names it stages.<stage>.trl.<key>."""
    return PydanticCustomError("trl_key", "{detail}", {"field": f"trl.{key}", "detail": detail})


class StageCommon(Section):
    """Keys every stage has. `kind`, `from` and `splits` place the stage in the graph; the
    built-in stages default them to the paper's graph."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    kind: StageKind = Field("sft", description="'sft', 'grpo' or 'rft': the trainer this stage runs.")
    from_: str | None = Field(
        None, alias="from", description="The stage whose output model this stage starts from (null: the base model)."
    )
    splits: list[str] = Field(default_factory=lambda: ["cold_start"], description="Splits to train on.")
    learning_rate: float = Field(2e-5, gt=0, description="Peak learning rate (paper: 2e-5 for SFT).")
    epochs: float = Field(2.0, gt=0, description="Passes over the training splits (paper: 2 for the cold start).")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: epochs decide).")
    batch_size: int = Field(32, ge=1, description="Effective batch size (per-device x accumulation x processes).")
    per_device_batch_size: int = Field(
        8, ge=1, description="Sequences per forward pass; the rest of batch_size is gradient accumulation."
    )
    lr_scheduler: str = Field("cosine", description="A transformers scheduler name (transformers.SchedulerType).")
    warmup_ratio: float = Field(0.03, ge=0.0, le=1.0, description="Share of the steps spent warming up.")
    weight_decay: float = Field(0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, description="Gradient clipping norm.")
    logging_steps: int = Field(1, ge=1, description="Log to stages/<stage>/log.jsonl every N steps.")
    save_steps: int = Field(50, ge=1, description="Checkpoint every N steps (resume point if killed).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass (less memory).")
    seed: int | None = Field(
        None,
        ge=0,
        lt=2**32,
        strict=True,
        description="This stage's own seed (adapter initialisation, data order, sampled completions; the reward "
        "and its tau stay the run's); null: the top-level seed. The same stage with other seeds on the same parent "
        "shows its spread (`semrl sweep --vary seed=1,2,3`).",
    )
    compile_layers: bool | Literal["auto"] = Field(
        False,
        description="Compile each decoder layer with torch.compile for the training forwards and backwards "
        "(regional compilation; generation stays eager). Numbers change within the dtype's rounding; the first "
        "steps compile; on CPU it needs a C++ compiler (g++). 'auto': on for bfloat16 training on a CPU with "
        "AMX when a C++ compiler is on PATH and torch.compile works with it, else off (the stage manifest "
        "records which and why). The demo's longest SFT step (bfloat16, 2 cores): 1.43x faster on an Intel "
        "Xeon with AMX, 1.09x on an AMD EPYC without AMX. Inside the compiled layers, attention over short "
        "batches is written out as products (semrl.train.cpu.PRODUCT_ATTENTION_MAX_SCORES; SFT steps another "
        "1.10x on that Xeon, its score matrices kept for the backward: 0.6 GB at the demo's peak).",
    )
    trl: dict[str, Any] = Field(
        default_factory=dict,
        description="Further fields of TRL's SFTConfig (sft stages) or GRPOConfig (grpo stages), passed through "
        "verbatim, e.g. {report_to: wandb} or {epsilon_high: 0.28}. Fields semrl sets from its own keys are refused.",
    )

    # Subclasses extend this tuple: a key added here must stay out of every stage's dump.
    _omit_when_default = ("trl", "seed", "compile_layers")

    @field_validator("max_steps")
    @classmethod
    def _max_steps(cls, v: int) -> int:
        if v == 0 or v < -1:
            raise ValueError("must be -1 (the epochs decide) or a number of steps >= 1")
        return v

    @field_validator("lr_scheduler")
    @classmethod
    def _known_scheduler(cls, v: str) -> str:
        from transformers.trainer_utils import SchedulerType  # lazily: only when a config sets it

        names = [t.value for t in SchedulerType]
        if v not in names:
            close = difflib.get_close_matches(v, names, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"unknown scheduler{hint}; transformers' schedulers are {', '.join(names)}")
        return v

    @model_validator(mode="after")
    def _trl_keys_known(self) -> StageCommon:
        if not self.trl:
            return self
        owned = SEMRL_OWNED_TRL_KEYS[self.kind]
        cls_name = f"trl.{TRL_CONFIG_CLASS[self.kind]}"
        fields = trl_config_fields(self.kind)
        for key in self.trl:
            if key in owned:
                source = owned[key] if owned[key].startswith("the ") else f"this stage's {owned[key]} key"
                raise trl_key_error(key, f"semrl sets {cls_name}.{key} itself; use {source} instead")
            if key not in fields:
                close = difflib.get_close_matches(key, sorted(fields - owned.keys()), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise trl_key_error(key, f"not a field of {cls_name}{hint}")
        return self


class SFTStageConfig(StageCommon):
    kind: Literal["sft"] = Field("sft", description="An SFT stage (TRL's SFTTrainer).")
    max_length: int = Field(512, ge=8, description="Prompt + completion tokens (not published).")


class ColdStartConfig(SFTStageConfig):
    """Cold-start SFT on a small slice: paper 5k examples, 2 epochs, lr 2e-5, batch 32, cosine."""

    _omit_when_default = (*StageCommon._omit_when_default, "kind", "from_", "splits")


class StrongSFTConfig(SFTStageConfig):
    """The strong SFT baseline on all training data (cold-start + RL splits), from the base model.
    Recipe not published: same optimiser as cold start."""

    splits: list[str] = Field(default_factory=lambda: ["cold_start", "rl"], description="Splits to train on.")

    _omit_when_default = (*StageCommon._omit_when_default, "kind", "from_", "splits")


class GRPOStageConfig(StageCommon):
    """GRPO from the cold-start checkpoint. Paper: G=8, temperature 0.8, top-p 0.9, lr 5e-7, 1 epoch."""

    kind: Literal["grpo"] = Field("grpo", description="A GRPO stage (TRL's GRPOTrainer).")
    from_: str | None = Field("cold_start", alias="from", description="The stage whose output model GRPO starts from.")
    splits: list[str] = Field(default_factory=lambda: ["rl"], description="Splits whose sources are GRPO's prompts.")
    learning_rate: float = Field(5e-7, gt=0, description="Peak learning rate (paper: 5e-7).")
    epochs: float = Field(1.0, gt=0, description="Passes over the prompts (paper: 1).")
    batch_size: int = Field(
        32, ge=1, description="Completions per optimizer step, a multiple of num_generations (not published)."
    )
    num_generations: int = Field(8, ge=2, description="Group size G (paper: 8).")
    temperature: float = Field(0.8, gt=0, description="Sampling temperature of the completions (paper: 0.8).")
    top_p: float = Field(0.9, gt=0, le=1.0, description="Nucleus sampling of the completions (paper: 0.9).")
    beta: float = Field(0.0, ge=0, description="KL coefficient (not published; TRL default 0).")
    epsilon: float = Field(0.2, gt=0, description="Clip range (not published; TRL default 0.2).")
    loss_type: str = Field("dapo", description="TRL loss type (not published; TRL default 'dapo').")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="How TRL scales the advantages: by the group's reward std, the batch's, or not."
    )
    max_completion_length: int = Field(128, ge=1, description="Generated tokens (not published).")
    merged_generation: bool = Field(
        True,
        description="Without vLLM: sample from the LoRA adapters merged into a copy of the weights, rebuilt "
        "each step (decoding 1.1x faster on 2 AMD EPYC cores; no LoRA dropout while sampling, as with vLLM). "
        "False: PEFT's unmerged adapter path.",
    )
    packed_generation: bool = Field(
        True,
        description="On CPU without vLLM: sample each step's completions with the policy's linear weights packed "
        "for oneDNN on entry (`semrl.models.linear_weights_packed`, after the LoRA merge): bfloat16 products "
        "equal to the bit, float32 ones summed in another order (about 1e-6 apart). Costs one packed copy of "
        "the linear weights while sampling. False: torch's plain CPU matmuls.",
    )
    length_sorted_micro_batches: bool = Field(
        True,
        description="Regroup each step's completions shortest to longest into its micro-batches, each padded "
        "only to its own longest row (TRL shuffles them and keeps the whole batch's width). The same gradient "
        "up to float rounding, for the loss types whose sum does not depend on the grouping (grpo, sapo, "
        "dr_grpo, dapo, cispo; others keep TRL's batches). False: TRL's micro-batches.",
    )
    use_vllm: bool = Field(
        False,
        description="Generate with vLLM (GPU only; install semrl[gpu]). With LoRA, TRL merges the adapter, "
        "syncs the weights to vLLM and unmerges before each generation.",
    )
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate", description="vLLM in the training process (colocate) or a `trl vllm-serve` server."
    )
    vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="Colocate: share of GPU memory vLLM reserves (TRL default 0.3)."
    )
    vllm_enable_sleep_mode: bool = Field(
        False, description="Colocate: offload vLLM's weights and cache while the policy trains (TRL's sleep mode)."
    )
    vllm_max_model_length: int | None = Field(
        None, ge=1, description="Colocate: vLLM's context length (None: prompt + completion lengths, TRL's default)."
    )
    rewards: RewardsConfig | None = Field(None, description=STAGE_REWARDS_DESCRIPTION)

    _omit_when_default = (
        *StageCommon._omit_when_default,
        "kind",
        "from_",
        "splits",
        "merged_generation",
        "length_sorted_micro_batches",
        "packed_generation",
        "vllm_gpu_memory_utilization",
        "vllm_enable_sleep_mode",
        "vllm_max_model_length",
        "rewards",
    )

    @model_validator(mode="after")
    def _batch_multiple_of_group(self) -> GRPOStageConfig:
        if self.batch_size % self.num_generations:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of num_generations "
                f"({self.num_generations}): each prompt's group of completions is scored together"
            )
        return self


class DeclaredSFTStage(SFTStageConfig):
    """A stage a config adds, of kind sft: it must name its kind and splits."""

    kind: Literal["sft"] = Field(description="An SFT stage (TRL's SFTTrainer).")
    splits: list[str] = Field(min_length=1, description="Splits to train on.")


class DeclaredGRPOStage(GRPOStageConfig):
    """A stage a config adds, of kind grpo: it must name its kind, parent and splits."""

    kind: Literal["grpo"] = Field(description="A GRPO stage (TRL's GRPOTrainer).")
    from_: str | None = Field(alias="from", description="The stage whose output model this stage starts from.")
    splits: list[str] = Field(min_length=1, description="Splits whose sources are the prompts.")


class RFTStageConfig(SFTStageConfig):
    """Rejection-sampling fine-tuning, a control arm for GRPO: sample `num_generations` completions
    per prompt of its splits from its parent (GRPO's sampling settings and defaults), score them with
    the stage's rewards, keep each prompt's best completion when it clears `threshold`, and SFT on
    the kept (prompt, completion) pairs (the SFT keys below)."""

    kind: Literal["rft"] = Field("rft", description="An RFT stage (sampling, then TRL's SFTTrainer).")
    from_: str | None = Field(
        "cold_start", alias="from", description="The stage whose model samples the completions (and is fine-tuned)."
    )
    splits: list[str] = Field(default_factory=lambda: ["rl"], description="Splits whose sources are the prompts.")
    num_generations: int = Field(8, ge=1, description="Completions sampled per prompt (GRPO's G; paper: 8).")
    temperature: float = Field(0.8, gt=0, description="Sampling temperature (as GRPO's, paper: 0.8).")
    top_p: float = Field(0.9, gt=0, le=1.0, description="Nucleus sampling (as GRPO's, paper: 0.9).")
    max_completion_length: int = Field(128, ge=1, description="Generated tokens per completion (as GRPO's).")
    threshold: float | None = Field(
        None,
        description="A prompt's best completion is kept when its weighted total reward exceeds this. null: when "
        "it clears the semantic floor tau (its semantic reward is > 0); without a semantic reward, total > 0.",
    )
    max_prompts: int | None = Field(
        None,
        ge=1,
        description="Sample from this many prompts of the splits, a seeded random draw (null: all of them). For a "
        "matched budget, GRPO's prompts: max_steps x batch_size / num_generations.",
    )
    rewards: RewardsConfig | None = Field(None, description=STAGE_REWARDS_DESCRIPTION)

    _omit_when_default = (*StageCommon._omit_when_default, "max_prompts")

    @model_validator(mode="after")
    def _has_parent(self) -> RFTStageConfig:
        if self.from_ is None:
            raise ValueError(
                "an rft stage samples its completions from another stage's model: set `from` to a stage "
                "(e.g. from: cold_start)"
            )
        return self


class DeclaredRFTStage(RFTStageConfig):
    """A stage a config adds, of kind rft: it must name its kind, parent and splits."""

    kind: Literal["rft"] = Field(description="An RFT stage (sampling, then TRL's SFTTrainer).")
    from_: str | None = Field(alias="from", description="The stage whose model samples the completions.")
    splits: list[str] = Field(min_length=1, description="Splits whose sources are the prompts.")


DeclaredStage = Annotated[Union[DeclaredSFTStage, DeclaredGRPOStage, DeclaredRFTStage], Field(discriminator="kind")]
AnyStageConfig = Union[SFTStageConfig, GRPOStageConfig, RFTStageConfig]


class StagesConfig(Section):
    """The built-in stages, any declared ones (extra keys), and which of them run."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    __pydantic_extra__: dict[str, DeclaredStage] = Field(init=False)  # type: ignore[assignment]

    BUILT_IN: ClassVar[tuple[str, ...]] = ("cold_start", "sft", "grpo")

    cold_start: ColdStartConfig = Field(default_factory=ColdStartConfig)
    sft: StrongSFTConfig = Field(default_factory=StrongSFTConfig)
    grpo: GRPOStageConfig = Field(default_factory=GRPOStageConfig)
    enabled: list[str] = Field(
        default_factory=lambda: ["cold_start", "sft", "grpo"], description="Stages that run (any order)."
    )

    def declared(self) -> dict[str, AnyStageConfig]:
        """Every stage section by name: the built-in ones, then those the config adds."""
        out: dict[str, Any] = {name: getattr(self, name) for name in self.BUILT_IN}
        out.update(self.__pydantic_extra__ or {})
        return out

    def section(self, name: str) -> AnyStageConfig:
        try:
            return self.declared()[name]
        except KeyError:
            raise KeyError(f"no stage {name!r}; stages are {', '.join(self.declared())}") from None

    @model_validator(mode="after")
    def _graph_is_valid(self) -> StagesConfig:
        declared = self.declared()
        for name, cfg in declared.items():
            check_plain_name(name, "stage name")  # it names the stage's folder, stages/<name>
            if name in RESERVED_STAGE_NAMES:
                raise ValueError(f"{name!r} cannot name a stage (reserved)")
            if cfg.from_ is not None and cfg.from_ not in declared:
                raise ValueError(f"{name}.from: no stage {cfg.from_!r}; stages are {', '.join(declared)}")
            bad = [s for s in cfg.splits if s not in TRAINING_SPLITS]
            if bad:
                raise ValueError(
                    f"{name}.splits: {bad} cannot be trained on; training splits are {', '.join(TRAINING_SPLITS)} "
                    "(dev and test stay held out)"
                )
            seen = [name]
            parent = cfg.from_
            while parent is not None:
                if parent in seen:
                    raise ValueError(f"{name}.from: the stages form a cycle ({' -> '.join([*seen, parent])})")
                seen.append(parent)
                parent = declared[parent].from_
        unknown = [s for s in self.enabled if s not in declared]
        if unknown:
            raise ValueError(f"enabled: unknown stage(s) {unknown}; stages are {', '.join(declared)}")
        if len(set(self.enabled)) != len(self.enabled):
            raise ValueError(f"enabled: each stage may appear once; got {self.enabled}")
        return self
