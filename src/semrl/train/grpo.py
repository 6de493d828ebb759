"""The GRPO stage: TRL's GRPOTrainer with semrl's rewards, monitors and the tau calibration."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from semrl.config.data import TaskConfig
from semrl.config.evaluation import GenerationConfig
from semrl.config.experiment import ExperimentConfig
from semrl.core.dist import is_main_process
from semrl.core.errors import DataError
from semrl.core.io import read_cache, write_json
from semrl.core.layout import StageLayout
from semrl.data.prompts import build_prompt, to_grpo_dataset
from semrl.encoders import build_encoder, require_representation
from semrl.generation import generate_completions, inverse_cdf_sampling_in_generate
from semrl.models import linear_weights_packed, peft_config
from semrl.rewards.registry import build_reward_functions
from semrl.train.callbacks import TimedReward, completion_monitors, frac_groups_equal
from semrl.train.common import build_trl_config, common_args
from semrl.train.cpu import merged_lora_for_generation
from semrl.train.micro_batches import REGROUPABLE_LOSSES, length_sorted_micro_batches, padded_positions
from semrl.train.stages import stage_rewards

if TYPE_CHECKING:
    from semrl.data.example import Example
    from semrl.encoders import Encoder
    from semrl.rewards.tau import TauCalibration


logger = logging.getLogger(__name__)


SEMANTIC_PURPOSE = "the semantic reward (and its tau calibration)"


@functools.cache
def _monitored_grpo_trainer_class() -> type:
    """`GRPOTrainer` with semrl's monitors (built lazily: importing TRL is slow)."""
    from trl import GRPOTrainer

    from semrl.rewards.base import completion_text

    class MonitoredGRPOTrainer(GRPOTrainer):
        """GRPOTrainer that logs reward time and reward-hacking/stall monitors per generation batch.

        It hooks `_calculate_rewards`, where TRL holds the completions, the dataset columns and the
        rewards gathered over all processes (whole groups), and logs through `_log_metric`, the
        same channel TRL's `log_metric` reward hook uses (averaged per logging step and across
        processes). It also wraps `_generate_single_turn` in `merged_lora_for_generation` (unless
        `merged_generation` is off, vLLM generates, or the weights are sharded), in
        `linear_weights_packed` (unless `packed_generation` is off) and in
        `inverse_cdf_sampling_in_generate` (CPU sampling without 262k exponentials per token), and
        `_prepare_inputs` to regroup each step's micro-batches by length
        (`semrl.train.micro_batches`). TRL is pinned below 1.17 in pyproject; `_check_hooks` fails
        loudly if a TRL version lacks these methods.
        """

        def __init__(
            self,
            *args: Any,
            target_lang: str,
            merged_generation: bool = True,
            length_sorted_micro_batches: bool = True,
            packed_generation: bool = True,
            **kwargs: Any,
        ) -> None:
            self.target_lang = target_lang
            self.merged_generation = merged_generation
            self.packed_generation = packed_generation
            self.length_sorted_micro_batches = length_sorted_micro_batches
            super().__init__(*args, **kwargs)

        @classmethod
        def _check_hooks(cls) -> None:
            for name in ("_calculate_rewards", "_log_metric", "_generate_single_turn", "_prepare_inputs"):
                if not hasattr(GRPOTrainer, name):
                    import trl

                    raise RuntimeError(
                        f"semrl's GRPO monitors need GRPOTrainer.{name}, which trl {trl.__version__} lacks; "
                        "install a trl version that semrl supports (see pyproject.toml)"
                    )

        def _generate_single_turn(self, *args: Any, **kwargs: Any) -> Any:
            # vLLM syncs its own merged copy; sharded (ZeRO-3/FSDP) weights are not whole tensors here.
            sharded = self.is_deepspeed_enabled or self.is_fsdp_enabled
            if not self.merged_generation or self.use_vllm or sharded:
                merged = contextlib.nullcontext()
            else:
                merged = merged_lora_for_generation(self.model)
            # Packed after the merge, from the weights this step samples with (a CPU-only no-op elsewhere).
            if self.packed_generation and not (self.use_vllm or sharded):
                packed = linear_weights_packed(self.model)
            else:
                packed = contextlib.nullcontext()
            with merged, packed, inverse_cdf_sampling_in_generate():
                return super()._generate_single_turn(*args, **kwargs)

        def _prepare_inputs(self, generation_batch: Any) -> Any:
            # TRL buffers a new generation batch's micro-batches in `_buffered_inputs` and hands out
            # `_buffered_inputs[_step % steps_per_generation]`; regroup them once, when they are new.
            buffered = self._buffered_inputs
            inputs = super()._prepare_inputs(generation_batch)
            regroup = (
                self.length_sorted_micro_batches
                and self.model.training
                and self._buffered_inputs is not buffered
                and self.loss_type in REGROUPABLE_LOSSES
                and self.top_entropy_quantile == 1.0  # entropy masking reads each micro-batch's quantile
            )
            regrouped = length_sorted_micro_batches(self._buffered_inputs) if regroup else None
            if regrouped is not None:
                # Into this step's metrics, as TRL logs its own (`_log_metric` would wait for the next generation).
                self._metrics["train"]["padding/positions_trl"].append(padded_positions(self._buffered_inputs))
                self._metrics["train"]["padding/positions"].append(padded_positions(regrouped))
                self._buffered_inputs = regrouped
                inputs = regrouped[self._step % self.args.steps_per_generation]
            return inputs

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            start = time.perf_counter()
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            self._log_metric("timing/rewards_s", time.perf_counter() - start)

            texts = [completion_text(c) for c in completions]
            for name, value in completion_monitors(texts, inputs, self.target_lang).items():
                self._log_metric(name, value)

            # rewards_per_func is gathered over processes, so it holds whole groups of G.
            group = self.num_generations if self.model.training else self.num_generations_eval
            per_func = rewards_per_func.detach().float().cpu().numpy().reshape(-1, group, len(self.reward_funcs))
            weights = self.reward_weights.detach().float().cpu().numpy()
            scored = ~np.isnan(per_func).all(axis=2)
            total = np.where(scored, np.nansum(per_func * weights, axis=2), np.nan)
            self._log_metric("monitor/frac_groups_equal_reward", frac_groups_equal(total))
            for i, name in enumerate(self.reward_func_names):
                self._log_metric(f"monitor/{name}/frac_groups_equal", frac_groups_equal(per_func[:, :, i]))
            return rewards_per_func

    MonitoredGRPOTrainer._check_hooks()
    return MonitoredGRPOTrainer


def dev_similarity(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    task: TaskConfig,
    generation: GenerationConfig,
    encoder: Encoder,
) -> float:
    """Mean cosine (under the reward encoder) between the model's outputs on `examples` (decoded
    with `generation`) and their references: the cold-start model's semantic adequacy, the
    paper's tau."""
    prompts = [build_prompt(ex.source, task, tokenizer) for ex in examples]
    outputs = generate_completions(model, tokenizer, prompts, generation)
    hyp = encoder.encode(outputs)
    ref = encoder.encode([ex.reference for ex in examples])
    sims = np.einsum("ij,ij->i", hyp.astype(np.float64), ref.astype(np.float64))
    sims = sims[np.isfinite(sims)]
    if not sims.size:
        raise DataError("tau calibration: the encoder gave no finite similarity on the dev split")
    return float(sims.mean())


def _calibrate_tau(
    stage: str,
    config: ExperimentConfig,
    splits: dict[str, list[Example]],
    examples: Sequence[Example],
    model: Any,
    tokenizer: Any,
    encoder: Encoder,
    tau_path: Path,
    resuming: bool,
) -> TauCalibration:
    """Resolve tau (see `semrl.rewards.resolve_tau`), reusing the value of an interrupted run so a
    resumed stage optimises the same reward it started with."""
    from semrl.rewards.tau import TauCalibration, resolve_tau

    rewards = stage_rewards(config, stage)
    saved = read_cache(tau_path) if resuming else None
    if saved is not None and isinstance(saved.get("value"), (int, float)) and "origin" in saved:
        logger.info("tau %.4f (%s) reused from %s", saved["value"], saved["origin"], tau_path)
        return TauCalibration(float(saved["value"]), saved["origin"], saved.get("details", {}))
    if resuming and tau_path.is_file():  # calibration is seeded: the same value comes out again
        logger.warning("%s is unreadable (damaged); calibrating tau again", tau_path)
    dev_sim = None
    dev = splits.get("dev") or []
    if rewards.tau == "auto" and rewards.tau_source == "cold_start_dev" and dev:
        started = time.perf_counter()
        # Greedy, at GRPO's completion length: the floor is what the starting model reaches.
        generation = GenerationConfig(
            do_sample=False,
            max_new_tokens=config.stages.section(stage).max_completion_length,
            batch_size=config.evaluation.generation.batch_size,
        )
        dev_sim = dev_similarity(model, tokenizer, dev, config.task, generation, encoder)
        logger.info(
            "cold-start dev similarity %.4f on %d examples (%.1fs)", dev_sim, len(dev), time.perf_counter() - started
        )
    # The run's seed, not the stage's own: repeats of a stage under other seeds optimise one reward.
    calibration = resolve_tau(
        rewards, encoder, [ex.reference for ex in examples], dev_similarity=dev_sim, seed=config.seed
    )
    if calibration.origin == "cold_start_dev":
        calibration.details.setdefault("n_dev_examples", len(dev))
    if is_main_process():
        write_json(tau_path, asdict(calibration))
    return calibration


def grpo_args(stage: str, config: ExperimentConfig, output_dir: Path, reward_weights: list[float]) -> Any:
    """TRL's GRPOConfig for stage `stage`: semrl's values, then the stage's `trl:` keys."""
    from trl import GRPOConfig

    cfg = config.stages.section(stage)
    semrl_kwargs = dict(
        **common_args(stage, cfg, config, output_dir),
        num_generations=cfg.num_generations,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        max_completion_length=cfg.max_completion_length,
        reward_weights=reward_weights,
        use_vllm=cfg.use_vllm,
        vllm_mode=cfg.vllm_mode,
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        vllm_enable_sleep_mode=cfg.vllm_enable_sleep_mode,
        vllm_max_model_length=cfg.vllm_max_model_length,
    )
    return build_trl_config(stage, cfg, GRPOConfig, semrl_kwargs)


def stage_reward_functions(
    stage: str,
    config: ExperimentConfig,
    splits: dict[str, list[Example]],
    examples: Sequence[Example],
    model: Any,
    tokenizer: Any,
    stage_dir: Path,
    extra: dict[str, Any],
    resuming: bool,
    encoder: Encoder | None = None,
) -> tuple[list[Any], list[float], float | None]:
    """The reward functions and weights of stage `stage` (its own `rewards` section, else the run's;
    see `stage_rewards`), and the semantic floor tau (None without a semantic reward). With a
    semantic reward, tau is calibrated as `rewards.tau` says (on `model`, the stage's starting
    model) and recorded in `stage_dir/tau.json` and `extra`. `encoder` is the run's reward encoder
    when the caller built it already; it is used only when the stage's rewards name the same one."""
    rewards = stage_rewards(config, stage)
    if encoder is not None and rewards.encoder != config.rewards.encoder:
        encoder = None  # the stage's own rewards read another encoder than the run's
    tau: float | None = None
    if any(c.name == "semantic" for c in rewards.components):
        encoder = encoder if encoder is not None else build_encoder(rewards.encoder)
        # Before tau calibration (which generates on the dev split): refuse an encoder blind to the
        # output language rather than calibrate and train on noise.
        probe = require_representation(encoder, config.task.target_lang, SEMANTIC_PURPOSE)
        if probe is not None:
            extra["encoder_probe"] = probe.summary()
        calibration = _calibrate_tau(
            stage, config, splits, examples, model, tokenizer, encoder, StageLayout(stage_dir).tau, resuming
        )
        tau = calibration.value
        extra["tau"] = asdict(calibration)
        logger.info("stage %s: semantic floor tau = %.4f (origin: %s)", stage, tau, calibration.origin)
        if is_main_process():
            print(f"[{stage}] semantic floor tau = {tau:.4f} ({calibration.origin})", flush=True)

    elif any(c.name == "source_grounded" for c in rewards.components):  # SG-SRL: encoder, no tau calibration
        encoder = encoder if encoder is not None else build_encoder(rewards.encoder)
    else:
        encoder = None
    funcs, weights = build_reward_functions(rewards, config.task.target_lang, encoder, tau)
    return funcs, weights, tau


def build_grpo_trainer(
    stage: str,
    config: ExperimentConfig,
    splits: dict[str, list[Example]],
    examples: list[Example],
    model: Any,
    tokenizer: Any,
    stage_dir: Path,
    callbacks: list[Any],
    extra: dict[str, Any],
    resuming: bool,
    encoder: Encoder | None = None,
) -> Any:
    """The GRPO trainer of stage `stage` (a section of kind grpo), with semrl's rewards and
    monitors. `encoder` is the reward encoder when the caller has built it already (the runner
    builds it once per run); otherwise it is built here when the semantic reward needs it."""
    funcs, weights, _ = stage_reward_functions(
        stage, config, splits, examples, model, tokenizer, stage_dir, extra, resuming, encoder
    )

    args = grpo_args(stage, config, StageLayout(stage_dir).checkpoints, weights)
    extra["gradient_accumulation_steps"] = args.gradient_accumulation_steps
    extra["per_device_batch_size"] = args.per_device_train_batch_size
    extra["reward_weights"] = {getattr(f, "__name__", str(f)): w for f, w in zip(funcs, weights)}
    section = config.stages.section(stage)
    trainer_cls = _monitored_grpo_trainer_class()
    return trainer_cls(
        model=model,
        reward_funcs=[TimedReward(f) for f in funcs],
        args=args,
        train_dataset=to_grpo_dataset(examples, config.task, tokenizer),
        processing_class=tokenizer,
        peft_config=peft_config(config.model.lora, model),
        callbacks=callbacks,
        target_lang=config.task.target_lang,
        merged_generation=section.merged_generation,
        length_sorted_micro_batches=section.length_sorted_micro_batches,
        packed_generation=section.packed_generation,
    )
