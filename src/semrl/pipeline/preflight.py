"""What `semrl run`, `semrl sweep` and `semrl transfer` check before they train anything.

A command that stops after hours of training for something knowable at its start (an encoder
that cannot be loaded or cannot read the output language, a missing benchmark file, a judge that
does not exist) wastes the hours. Each command runs these checks first and each refusal is a
SemrlError (exit 2) naming the key and what to do. Two steps, because one check needs the reward
encoder itself:

- `check_preconditions`: everything that needs no encoder in memory, run before anything is
  written: the run's own encoder (`rewards.encoder.backend: trained`) is not stale and can be
  trained (its student and teacher exist), every other encoder, the policy model and the judge
  can be found, and the evaluation's data (benchmarks, drift texts) can be read.
- `preflight`: builds the reward encoder and checks that it represents the output language when
  a GRPO stage will train on it. For the run's own encoder this runs once it is trained, which is
  the first thing every command trains.

The data sources are read when each command draws its splits, which is also before anything
trains (the encoder's own `encoder.sources` when it starts training, before its first step); the
extra test sets (`evaluation.extra_tests`) are read and written beside the splits.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from semrl.config.experiment import ExperimentConfig
from semrl.config.rewards import ENCODER_REWARDS, EncoderConfig
from semrl.core.errors import ConfigError, ModelError
from semrl.core.io import read_manifest
from semrl.core.layout import RunLayout
from semrl.data.general import general_texts
from semrl.encoders import Encoder, build_encoder, encoder_source_problem, require_representation
from semrl.eval.judge import check_judge
from semrl.eval.tax.benchmarks import check_benchmarks
from semrl.models import model_source_problem
from semrl.train.encoder import check_encoder_current
from semrl.train.grpo import SEMANTIC_PURPOSE
from semrl.train.stage import check_compile_layers
from semrl.train.stages import rewards_key, stage_rewards, stage_specs

SECOND_ENCODER = "evaluation.second_encoder"


# Stage kinds that score completions with rewards (GRPO trains on them, RFT selects with them).
REWARD_KINDS = ("grpo", "rft")


def encoder_reward_stages(config: ExperimentConfig, stages: Iterable[str]) -> list[str]:
    """Those of `stages` that score with rewards (GRPO, RFT) including one that reads the encoder
    (semantic, or SG-SRL's source_grounded), under the stage's own rewards or the run's."""
    specs = stage_specs(config.stages)
    return [
        s
        for s in stages
        if specs[s].kind in REWARD_KINDS and any(c.name in ENCODER_REWARDS for c in stage_rewards(config, s).components)
    ]


def trains_on_semantic_reward(config: ExperimentConfig, stages: Iterable[str]) -> bool:
    """Whether any of `stages` is a GRPO or RFT stage that reads the run's reward encoder
    (`rewards.encoder`) for a semantic or source-grounded reward."""
    return any(
        stage_rewards(config, s).encoder == config.rewards.encoder for s in encoder_reward_stages(config, stages)
    )


def uses_trained_encoder(config: ExperimentConfig) -> bool:
    """Whether the reward or the second evaluation encoder is the one the run trains (backend 'trained')."""
    encoders = (config.rewards.encoder, config.evaluation.second_encoder)
    return config.encoder is not None and any(e is not None and e.backend == "trained" for e in encoders)


def check_preconditions(
    config: ExperimentConfig,
    run_dir: str | Path,
    stages: Iterable[str] = (),
    evaluate: bool = True,
    tax: bool = True,
) -> None:
    """Refuse (ConfigError, DataError or ModelError naming the key and what to do) what would stop
    a command after it has trained something; nothing is built, written or trained.

    Args:
        config: the run's config.
        run_dir: its directory (where the run's own encoder is, or will be trained).
        stages: the config's stages that will be trained (not those already finished).
        evaluate: whether the command evaluates afterwards (the encoders, the evaluation's data).
        tax: whether that evaluation measures the alignment tax (general benchmarks, drift from
            the base model, the judge), as `semrl run` does; the transfer's does not.
    """
    stages = list(stages)
    for stage in stages:
        check_compile_layers(config, stage)
    if uses_trained_encoder(config):
        _check_own_encoder(config, run_dir)
    if stages or (evaluate and tax):  # the policy model is trained, or evaluated as the base
        problem = model_source_problem(config.model.name, config.model.revision)
        if problem is not None:
            raise ModelError(
                f"model.name: {problem}. Point model.name at a local checkpoint ('tiny', 'gemma-3-270m' or a "
                f"directory), or download it once with internet access."
            )
    if evaluate or trains_on_semantic_reward(config, stages):
        _check_encoder(config.rewards.encoder, "rewards.encoder")
    for stage in encoder_reward_stages(config, stages):  # a stage's own rewards with another encoder
        own = stage_rewards(config, stage).encoder
        if own == config.rewards.encoder:
            continue
        key = f"{rewards_key(config, stage)}.encoder"
        if own.backend == "trained":
            raise ConfigError(
                f"{key}: backend 'trained' names the run's own encoder, which only the run's rewards.encoder "
                f"may use; set rewards.encoder.backend: trained and drop {key} (or name another encoder)"
            )
        _check_encoder(own, key)
    if evaluate and config.evaluation.second_encoder is not None:
        _check_encoder(config.evaluation.second_encoder, SECOND_ENCODER)
    ev = config.evaluation
    data_dir = config.resolved_data_dir()
    if (evaluate and tax) or (stages and ev.tax_meter_steps > 0):  # drift, and the tax meter's texts
        general_texts(data_dir, ev.drift_examples, config.seed, text_file=ev.drift_text_file)
    if evaluate and tax:
        check_benchmarks(ev.benchmarks, data_dir, config.seed)
        if ev.judge.enabled:
            check_judge(ev.judge)


def _check_encoder(cfg: EncoderConfig, key: str) -> None:
    """ModelError when the encoder `cfg` names cannot be found (the run's own is checked apart)."""
    problem = encoder_source_problem(cfg)
    if problem is None:
        return
    remove = f", or remove {key}" if key == SECOND_ENCODER else ""
    if key.startswith("stages."):  # a stage's own rewards: the run's own encoder is not theirs to name
        own = f", or drop {key} to use rewards.encoder"
    else:
        own = f", or set {key}.backend: trained with an `encoder:` section so that the run trains it first"
    raise ModelError(
        f"{key}: {problem}. Nothing was trained. Point {key}.name at an existing sentence-transformers "
        f"directory (`semrl encoder train CONFIG --out DIR` trains one into DIR/encoder/model), download it "
        f"once with internet access{own}{remove}."
    )


def _check_own_encoder(config: ExperimentConfig, run_dir: str | Path) -> None:
    """The run's own encoder: not finished under another config, and, when it is still to be
    trained, its student and teacher can be found."""
    check_encoder_current(config, run_dir)
    if read_manifest(RunLayout(Path(run_dir)).encoder.manifest) is not None or config.encoder is None:
        return  # finished: nothing of it is loaded again
    enc = config.encoder
    files = ("config.json", "tokenizer_config.json", "modules.json")  # a static student reads a tokenizer only
    problem = model_source_problem(enc.student.name, files=files)
    if problem is not None:
        raise ModelError(
            f"encoder.student.name: {problem}. Name 'gemma-3-270m', 'tiny' or a local model directory, or "
            f"download it once with internet access."
        )
    if enc.recipe == "distill":
        _check_encoder(enc.teacher, "encoder.teacher")


def preflight(
    config: ExperimentConfig,
    stages: Iterable[str],
    encoder: Encoder | None = None,
    trained_dir: Path | None = None,
) -> Encoder | None:
    """Check that would otherwise fail a run after hours of training, run before any stage: when
    a GRPO stage will train on the semantic reward, its encoder must represent the task's output
    language (`encoders.require_representation`; raises ModelError naming what to configure).

    Returns the reward encoder it built (or was given), for the stages to reuse; None when no
    pending stage needs it. `trained_dir` is where backend 'trained' finds the run's encoder.
    """
    if not trains_on_semantic_reward(config, stages):
        return encoder
    encoder = encoder if encoder is not None else build_encoder(config.rewards.encoder, trained_dir)
    # Stages whose own rewards read another encoder check it when they build it.
    names = {
        c.name
        for s in encoder_reward_stages(config, stages)
        if stage_rewards(config, s).encoder == config.rewards.encoder
        for c in stage_rewards(config, s).components
    }
    if "semantic" in names:
        require_representation(encoder, config.task.target_lang, SEMANTIC_PURPOSE)
    if "source_grounded" in names:  # it compares the output with the source: it reads both languages
        for lang in (config.task.target_lang, config.task.source_lang):
            require_representation(encoder, lang, "the source-grounded reward (SG-SRL)")
    return encoder
