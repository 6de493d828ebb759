"""The training stages, on TRL: cold-start SFT, the strong-SFT baseline and semantic GRPO.

`train_stage` maps one stage of the experiment config onto TRL's `SFTTrainer`/`SFTConfig` or
`GRPOTrainer`/`GRPOConfig`, trains (resuming from the stage's last complete checkpoint when there is
one) and writes the stage's output as a full safetensors checkpoint (LoRA merged) to
``stage_dir/model``, so that every later stage and the evaluation load models the same way.

Stage folder::

    stage_dir/
      checkpoints/checkpoint-N/   trainer checkpoints (resume points; TensorBoard logs under runs/)
      log.jsonl                   one JSON object per trainer log (step, epoch, time, metrics)
      tau.json                    GRPO only: the semantic floor tau and where it came from
      reward_stats.rank<N>.json   GRPO only: process N's reward calls, completions scored, seconds
      model/                      the stage's output

GRPO logs carry TRL's own metrics (``rewards/<name>/mean``, ``frac_reward_zero_std``, completion
lengths, ``kl`` when beta > 0) plus semrl's monitors against reward hacking and stalls:
``monitor/language_pass_rate`` (completions in the target script only), ``monitor/length_ratio``
(completion / reference length in characters), ``monitor/frac_groups_equal_reward`` (groups whose
G weighted rewards are all equal, i.e. no learning signal, whatever `scale_rewards` is) and
``monitor/<reward>/frac_groups_equal`` per reward (a saturated binary language reward shows up
here), ``monitor/mixed_script_rate`` (completions mixing scripts), ``monitor/source_copy_rate``
(completions copied from their source, `rewards.is_source_copy`) and ``monitor/repetition_rate``
(completions with repeated 4-grams, `rewards.is_repetitive`) at the guards' default thresholds, so
runs with and without guards compare (see `completion_monitors`), and timings:
``timing/reward/<name>_s`` per reward call, ``timing/rewards_s`` for all rewards of a generation
batch, ``step_time_s`` and ``timing/reward_share`` (reward time / step time).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import math
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from transformers import TrainerCallback

from semrl.config import ExperimentConfig, GenerationConfig
from semrl.errors import ConfigError, DataError
from semrl.io import write_json, write_jsonl

if TYPE_CHECKING:
    from semrl.data import Example
    from semrl.encoders import Encoder
    from semrl.rewards import TauCalibration

logger = logging.getLogger(__name__)

Stage = Literal["cold_start", "sft", "grpo"]
# Which splits each stage trains on. The strong-SFT baseline sees all training data (cold-start
# and RL splits) from the base model; GRPO sees the RL split from the cold-start model.
STAGE_SPLITS: dict[str, tuple[str, ...]] = {
    "cold_start": ("cold_start",),
    "sft": ("cold_start", "rl"),
    "grpo": ("rl",),
}
CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"
LOG_FILE = "log.jsonl"
TAU_FILE = "tau.json"
REWARD_STATS_FILE = "reward_stats.rank{rank}.json"
SEMANTIC_PURPOSE = "the semantic reward (and its tau calibration)"
# Resuming needs only the newest checkpoint; one older is kept in case the newest is damaged.
SAVE_TOTAL_LIMIT = 2


@dataclass
class StageResult:
    """What a stage produced: its model directory, the trainer's final metrics, and extras
    (tau calibration, resume point, batch arithmetic) for the stage manifest."""

    stage: str
    model_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Logging
# ----------------------------------------------------------------------------------------------
def _json_safe(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null. Tensors and numpy scalars become floats."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlLogCallback(TrainerCallback):
    """Append every trainer log to a JSONL file, with step, epoch, wall time and the mean wall time
    of the optimizer steps since the previous log (`step_time_s`). Writes on the main process only.

    When the trainer logs reward time (`timing/rewards_s`, one generation batch per optimizer step
    as semrl configures GRPO), the row also gets `timing/reward_share`, the share of a step spent
    in reward functions.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._step_started: float | None = None
        self._step_times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._step_started is not None:
            self._step_times.append(time.perf_counter() - self._step_started)
            self._step_started = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row: dict[str, Any] = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time(), 3)}
        if self._step_times:
            row["step_time_s"] = sum(self._step_times) / len(self._step_times)
            self._step_times.clear()
        row.update({k: _json_safe(v) for k, v in logs.items()})
        reward_s = row.get("timing/rewards_s")
        if isinstance(reward_s, float) and row.get("step_time_s"):
            row["timing/reward_share"] = reward_s / row["step_time_s"]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a stage's log.jsonl (empty when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------
# GRPO: timed rewards and monitors
# ----------------------------------------------------------------------------------------------
class TimedReward:
    """A reward function that also logs its own wall time per call (`timing/reward/<name>_s`)
    through TRL's `log_metric` hook. Keeps the wrapped function's `__name__`, which TRL logs.

    It also counts, in this process, its calls, the completions it scored and the seconds it took
    (`stats()`): TRL scores each process's own share of a generation batch, so under a
    multi-process launch these show how the reward load is spread (see `write_reward_stats`).
    """

    def __init__(self, func: Callable[..., list[float]]) -> None:
        self.func = func
        self.__name__ = getattr(func, "__name__", type(func).__name__)
        self.calls = 0
        self.completions = 0
        self.seconds = 0.0

    def __call__(self, prompts: Any, completions: Any, completion_ids: Any = None, **kwargs: Any) -> list[float]:
        start = time.perf_counter()
        scores = self.func(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        elapsed = time.perf_counter() - start
        self.calls += 1
        self.completions += len(completions)
        self.seconds += elapsed
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            log_metric(f"timing/reward/{self.__name__}_s", elapsed)
        return scores

    def stats(self) -> dict[str, float | int]:
        """This process's totals so far: calls, completions scored, seconds."""
        return {"calls": self.calls, "completions": self.completions, "seconds": round(self.seconds, 4)}


def write_reward_stats(stage_dir: str | Path, reward_funcs: Sequence[Any]) -> Path:
    """Write this process's reward load to ``stage_dir/reward_stats.rank<N>.json``.

    Every process writes its own file (rank, world_size and, per reward function, the calls,
    completions scored and seconds of its `TimedReward`), so a multi-process run shows whether
    every process scored its share. The counts cover this invocation only, not the steps before a
    resume.
    """
    state = distributed_state()
    stats = {f.__name__: f.stats() for f in reward_funcs if isinstance(f, TimedReward)}
    path = Path(stage_dir) / REWARD_STATS_FILE.format(rank=state.process_index)
    write_json(path, {"rank": state.process_index, "world_size": state.num_processes, "rewards": stats})
    return path


def _frac_groups_equal(values: np.ndarray, tol: float = 1e-6) -> float:
    """Share of rows (groups) whose finite values are all equal (NaN = excluded sample)."""
    if not values.size:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 'All-NaN slice': a group nobody scored
        spread = np.nanmax(values, axis=1) - np.nanmin(values, axis=1)
    spread = np.nan_to_num(spread, nan=0.0)  # a group with no scored sample has no signal either
    return float((spread <= tol).mean())


def completion_monitors(texts: Sequence[str], rows: Sequence[dict[str, Any]], target_lang: str) -> dict[str, float]:
    """semrl's per-batch monitors of a generation batch: `texts` are the completions, `rows` their
    dataset rows (`reference`, `source`). Shares of completions in the target script only, mixing
    scripts, repeating 4-grams (`rewards.is_repetitive`) and copied from their source
    (`rewards.is_source_copy`), and the mean completion / reference length in characters. Monitors
    that need a column the rows lack are left out."""
    from semrl import lang
    from semrl.rewards import is_repetitive, is_source_copy

    if not texts:
        return {"monitor/language_pass_rate": float("nan")}
    out = {
        "monitor/language_pass_rate": float(np.mean([lang.is_target_script_only(t, target_lang) for t in texts])),
        "monitor/mixed_script_rate": float(np.mean([lang.is_mixed_script(t) for t in texts])),
        "monitor/repetition_rate": float(np.mean([is_repetitive(t, target_lang) for t in texts])),
    }
    ratios = [
        len(t.strip()) / len(str(row["reference"]).strip())
        for t, row in zip(texts, rows)
        if str(row.get("reference") or "").strip()
    ]
    if ratios:
        out["monitor/length_ratio"] = float(np.mean(ratios))
    copies = [is_source_copy(t, str(row["source"]), target_lang) for t, row in zip(texts, rows) if row.get("source")]
    if copies:
        out["monitor/source_copy_rate"] = float(np.mean(copies))
    return out


@functools.cache
def _monitored_grpo_trainer_class() -> type:
    """`GRPOTrainer` with semrl's monitors (built lazily: importing TRL is slow)."""
    from trl import GRPOTrainer

    from semrl.rewards import completion_text

    class MonitoredGRPOTrainer(GRPOTrainer):
        """GRPOTrainer that logs reward time and reward-hacking/stall monitors per generation batch.

        It hooks `_calculate_rewards`, where TRL holds the completions, the dataset columns and the
        rewards gathered over all processes (whole groups), and logs through `_log_metric`, the
        same channel TRL's `log_metric` reward hook uses (averaged per logging step and across
        processes). TRL is pinned below 1.17 in pyproject; `_check_hooks` fails loudly if a TRL
        version lacks these methods.
        """

        def __init__(self, *args: Any, target_lang: str, **kwargs: Any) -> None:
            self.target_lang = target_lang
            super().__init__(*args, **kwargs)

        @classmethod
        def _check_hooks(cls) -> None:
            for name in ("_calculate_rewards", "_log_metric"):
                if not hasattr(GRPOTrainer, name):
                    import trl

                    raise RuntimeError(
                        f"semrl's GRPO monitors need GRPOTrainer.{name}, which trl {trl.__version__} lacks; "
                        "install a trl version that semrl supports (see pyproject.toml)"
                    )

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
            self._log_metric("monitor/frac_groups_equal_reward", _frac_groups_equal(total))
            for i, name in enumerate(self.reward_func_names):
                self._log_metric(f"monitor/{name}/frac_groups_equal", _frac_groups_equal(per_func[:, :, i]))
            return rewards_per_func

    MonitoredGRPOTrainer._check_hooks()
    return MonitoredGRPOTrainer


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def distributed_state() -> Any:
    """accelerate's process state. The first construction in a process decides it for good, and
    on a machine without a GPU only `cpu=True` recognises a multi-process (gloo) launch, so say
    so here; the trainer's own `use_cpu=True` then finds the same state."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    return distributed_state().is_main_process


def wait_for_everyone() -> None:
    distributed_state().wait_for_everyone()


def _world_size() -> int:
    return distributed_state().num_processes


def last_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under `checkpoints_dir`, or None.

    transformers writes `trainer_state.json` last, so a checkpoint without it was interrupted
    while saving and is not a safe resume point.
    """
    folder = Path(checkpoints_dir)
    if not folder.is_dir():
        return None
    complete = []
    for path in folder.glob("checkpoint-*"):
        suffix = path.name.split("-", 1)[1]
        if suffix.isdigit() and (path / "trainer_state.json").is_file():
            complete.append((int(suffix), path))
    return max(complete)[1] if complete else None


def _checkpoint_step(path: Path) -> int:
    return int(json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))["global_step"])


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


def _report_to() -> list[str]:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return ["none"]
    return ["tensorboard"]


def _stage_examples(stage: str, splits: dict[str, list[Example]]) -> list[Example]:
    missing = [name for name in STAGE_SPLITS[stage] if name not in splits]
    if missing:
        raise DataError(
            f"stage '{stage}' trains on the split(s) {list(STAGE_SPLITS[stage])}, but {missing} is missing from the "
            f"run's splits (present: {sorted(splits)}); prepare the data again (`semrl data`)"
        )
    examples = [ex for name in STAGE_SPLITS[stage] for ex in splits[name]]
    if not examples:
        raise DataError(
            f"stage '{stage}' has no training examples: split(s) {list(STAGE_SPLITS[stage])} are empty; "
            f"check data.splits in the config"
        )
    return examples


def _common_args(stage: str, cfg: Any, config: ExperimentConfig, output_dir: Path) -> dict[str, Any]:
    """TrainingArguments shared by SFTConfig and GRPOConfig, from a stage's config section."""
    from semrl.models import trainer_hardware_kwargs

    per_device, accumulation = batch_arithmetic(stage, cfg.batch_size, cfg.per_device_batch_size, _world_size())
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
        seed=config.seed,
        data_seed=config.seed,
        report_to=_report_to(),
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


@contextlib.contextmanager
def compact_lm_head_on_cpu() -> Iterator[None]:
    """Within this block, TRL's fused LM head projects only the labelled positions on CPU too.

    TRL's SFT and GRPO losses run the LM head through a fused, tiled log-probability kernel
    (`trl.trainer.utils.add_fused_lm_head`). On Triton devices it projects only the positions that
    carry a label; elsewhere it projects every position, because on XLA/Neuron a batch-dependent
    shape would recompile each step. CPU eager mode compiles nothing, so there the full projection
    is only wasted work, and much of it: with Gemma 3's 262k-token vocabulary the LM head dominates
    a CPU step, and prompts hold most positions (completion-only SFT, GRPO). Losses and gradients
    are unchanged (the same tiles over fewer rows). On the demo config, 2 CPU cores: SFT steps
    26 s -> 11 s, GRPO steps 38 s -> 25 s.

    `train_stage` trains inside this block; a TRL script can use it the same way around
    `trainer.train()`. With a TRL that no longer has the switch it changes nothing.
    """
    try:
        import trl.trainer.utils as trl_utils

        use_triton = trl_utils._use_triton
    except (ImportError, AttributeError):
        yield
        return
    # `_use_triton` in trl.trainer.utils decides only this compaction; the kernel reads its own copy,
    # so CPU still runs the plain-torch tiles.
    trl_utils._use_triton = lambda device: device.type == "cpu" or use_triton(device)
    try:
        yield
    finally:
        trl_utils._use_triton = use_triton


def _progress_callbacks(trainer: Any) -> None:
    """A rich progress panel in an interactive terminal; transformers' tqdm bar otherwise (logs,
    CI). Either shows on the main process only."""
    if not sys.stdout.isatty():
        return
    from transformers.trainer_callback import ProgressCallback
    from trl.trainer.callbacks import RichProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(RichProgressCallback())


# ----------------------------------------------------------------------------------------------
# tau from the cold-start model
# ----------------------------------------------------------------------------------------------
def dev_similarity(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    config: ExperimentConfig,
    encoder: Encoder,
) -> float:
    """Mean cosine (under the reward encoder) between the model's greedy outputs on `examples` and
    their references: the cold-start model's semantic adequacy, the paper's tau."""
    from semrl.data import build_prompt
    from semrl.evaluation import generate_completions

    generation = GenerationConfig(
        do_sample=False,
        max_new_tokens=config.stages.grpo.max_completion_length,
        batch_size=config.evaluation.generation.batch_size,
    )
    prompts = [build_prompt(ex.source, config.task, tokenizer) for ex in examples]
    outputs = generate_completions(model, tokenizer, prompts, generation)
    hyp = encoder.encode(outputs)
    ref = encoder.encode([ex.reference for ex in examples])
    sims = np.einsum("ij,ij->i", hyp.astype(np.float64), ref.astype(np.float64))
    sims = sims[np.isfinite(sims)]
    if not sims.size:
        raise DataError("tau calibration: the encoder gave no finite similarity on the dev split")
    return float(sims.mean())


def _calibrate_tau(
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
    from semrl.rewards import TauCalibration, resolve_tau

    if resuming and tau_path.is_file():
        saved = json.loads(tau_path.read_text(encoding="utf-8"))
        logger.info("tau %.4f (%s) reused from %s", saved["value"], saved["origin"], tau_path)
        return TauCalibration(float(saved["value"]), saved["origin"], saved.get("details", {}))
    rewards = config.rewards
    dev_sim = None
    dev = splits.get("dev") or []
    if rewards.tau == "auto" and rewards.tau_source == "cold_start_dev" and dev:
        started = time.perf_counter()
        dev_sim = dev_similarity(model, tokenizer, dev, config, encoder)
        logger.info("cold-start dev similarity %.4f on %d examples (%.1fs)", dev_sim, len(dev), time.perf_counter() - started)
    calibration = resolve_tau(rewards, encoder, [ex.reference for ex in examples], dev_similarity=dev_sim, seed=config.seed)
    if calibration.origin == "cold_start_dev":
        calibration.details.setdefault("n_dev_examples", len(dev))
    if is_main_process():
        write_json(tau_path, asdict(calibration))
    return calibration


# ----------------------------------------------------------------------------------------------
# Trainers
# ----------------------------------------------------------------------------------------------
def _sft_trainer(
    stage: str, config: ExperimentConfig, examples: list[Example], model: Any, tokenizer: Any,
    output_dir: Path, callbacks: list[Any], extra: dict[str, Any],
) -> Any:
    from trl import SFTConfig, SFTTrainer

    from semrl.data import to_sft_dataset
    from semrl.models import peft_config

    cfg = getattr(config.stages, stage)
    args = SFTConfig(
        **_common_args(stage, cfg, config, output_dir),
        max_length=cfg.max_length,
        completion_only_loss=True,  # learn the reference, not the prompt
        packing=False,
    )
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


def _grpo_trainer(
    config: ExperimentConfig, splits: dict[str, list[Example]], examples: list[Example], model: Any,
    tokenizer: Any, stage_dir: Path, callbacks: list[Any], extra: dict[str, Any], resuming: bool,
) -> Any:
    from trl import GRPOConfig

    from semrl.data import to_grpo_dataset
    from semrl.encoders import build_encoder, require_representation
    from semrl.models import peft_config
    from semrl.rewards import build_reward_functions

    rewards = config.rewards
    encoder = None
    tau: float | None = None
    if any(c.name == "semantic" for c in rewards.components):
        encoder = build_encoder(rewards.encoder)
        # Before tau calibration (which generates on the dev split): refuse an encoder blind to the
        # output language rather than calibrate and train on noise.
        probe = require_representation(encoder, config.task.target_lang, SEMANTIC_PURPOSE)
        if probe is not None:
            extra["encoder_probe"] = probe.summary()
        calibration = _calibrate_tau(
            config, splits, examples, model, tokenizer, encoder, stage_dir / TAU_FILE, resuming
        )
        tau = calibration.value
        extra["tau"] = asdict(calibration)
        logger.info("GRPO semantic floor tau = %.4f (origin: %s)", tau, calibration.origin)
        if is_main_process():
            print(f"[grpo] semantic floor tau = {tau:.4f} ({calibration.origin})", flush=True)
    funcs, weights = build_reward_functions(rewards, config.task.target_lang, encoder, tau)

    cfg = config.stages.grpo
    args = GRPOConfig(
        **_common_args("grpo", cfg, config, stage_dir / CHECKPOINTS_DIR),
        num_generations=cfg.num_generations,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        max_completion_length=cfg.max_completion_length,
        reward_weights=weights,
        use_vllm=cfg.use_vllm,
        vllm_mode=cfg.vllm_mode,
    )
    extra["gradient_accumulation_steps"] = args.gradient_accumulation_steps
    extra["per_device_batch_size"] = args.per_device_train_batch_size
    extra["reward_weights"] = {getattr(f, "__name__", str(f)): w for f, w in zip(funcs, weights)}
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
    )


# ----------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------
def _prepare_stage_dir(stage_dir: Path, resume: bool) -> Path | None:
    """Decide the resume point and make the log agree with it (main process only writes).

    Without a resume point the stage starts fresh: old checkpoints, log and tau are removed. With
    one, log rows after the checkpoint's step are dropped, since those steps will run again.
    """
    checkpoints = stage_dir / CHECKPOINTS_DIR
    log_path = stage_dir / LOG_FILE
    resume_from = last_checkpoint(checkpoints) if resume else None
    if is_main_process():
        # Each run writes these again at its end; old ones may be from a different process count.
        for stale in stage_dir.glob(REWARD_STATS_FILE.format(rank="*")):
            stale.unlink(missing_ok=True)
        if resume_from is None:
            shutil.rmtree(checkpoints, ignore_errors=True)
            for name in (LOG_FILE, TAU_FILE):
                (stage_dir / name).unlink(missing_ok=True)
        else:
            step = _checkpoint_step(resume_from)
            kept = [row for row in read_log(log_path) if int(row.get("step", 0)) <= step]
            write_jsonl(log_path, kept)
    wait_for_everyone()
    return resume_from


def _weights_are_sharded(accelerator: Any) -> bool:
    """DeepSpeed ZeRO-3 and FSDP keep a slice of each weight per process."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return accelerator.distributed_type == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3


def _save_stage_model(trainer: Any, tokenizer: Any, stage_dir: Path, model_dir: Path) -> None:
    """Write the stage's full, merged checkpoint. With sharded weights every process first takes
    part in the trainer's gathering save (adapters or full weights); the main process then
    reloads that on CPU and merges, so no process ever saves only its own shard."""
    from semrl.models import save_merged

    if not _weights_are_sharded(trainer.accelerator):
        if trainer.accelerator.is_main_process:
            save_merged(trainer.accelerator.unwrap_model(trainer.model), tokenizer, model_dir)
        wait_for_everyone()
        return
    gathered = stage_dir / "gathered"
    trainer.save_model(str(gathered))  # collective: all processes must call it
    if trainer.accelerator.is_main_process:
        if (gathered / "adapter_config.json").is_file():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(str(gathered), torch_dtype="auto")
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(str(gathered), torch_dtype="auto")
        save_merged(model, tokenizer, model_dir)
        shutil.rmtree(gathered, ignore_errors=True)
    wait_for_everyone()


def train_stage(
    stage: Stage,
    config: ExperimentConfig,
    splits: dict[str, list[Example]],
    stage_dir: str | Path,
    init_model: str | Path | None = None,
    callbacks: Sequence[Any] = (),
    resume: bool = True,
) -> StageResult:
    """Train one stage and write its full checkpoint to ``stage_dir/model``.

    Args:
        stage: 'cold_start' (SFT on the cold-start split), 'sft' (the strong-SFT baseline on the
            cold-start and RL splits) or 'grpo' (semantic GRPO on the RL split).
        config: the experiment config; the stage reads `stages.<stage>`, `model`, `task`, `seed`
            and, for GRPO, `rewards`.
        splits: the run's splits by name (`semrl.data.load_splits`).
        stage_dir: the stage's folder (checkpoints, log.jsonl, model).
        init_model: the checkpoint to start from (GRPO: the cold-start output); None starts from
            the configured base model.
        callbacks: extra `transformers.TrainerCallback`s.
        resume: continue from the last complete checkpoint in ``stage_dir/checkpoints`` if there
            is one; False starts over and deletes old checkpoints.
    """
    from transformers import set_seed

    from semrl.models import load_policy

    if stage not in STAGE_SPLITS:
        raise ConfigError(f"unknown stage {stage!r}; stages are {', '.join(STAGE_SPLITS)}")
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    examples = _stage_examples(stage, splits)
    resume_from = _prepare_stage_dir(stage_dir, resume)

    # Seed before loading: LoRA adapters are initialised randomly when the trainer wraps the model.
    set_seed(config.seed)
    if stage == "grpo" and init_model is None:
        logger.warning("GRPO starts from the base model (no cold-start checkpoint given)")
    model, tokenizer = load_policy(config.model, init_model)
    # User callbacks first: one that adds to the logs (the tax meter) must run before the writer.
    all_callbacks = [*callbacks, JsonlLogCallback(stage_dir / LOG_FILE)]
    extra: dict[str, Any] = {
        "init_model": str(init_model) if init_model is not None else config.model.name,
        "num_examples": len(examples),
        "lora": config.model.lora.enabled,
        "resumed_from": str(resume_from) if resume_from else None,
    }
    if stage == "grpo":
        trainer = _grpo_trainer(
            config, splits, examples, model, tokenizer, stage_dir, all_callbacks, extra, resuming=resume_from is not None
        )
    else:
        trainer = _sft_trainer(stage, config, examples, model, tokenizer, stage_dir / CHECKPOINTS_DIR, all_callbacks, extra)
    _progress_callbacks(trainer)

    with compact_lm_head_on_cpu():
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    if stage == "grpo":
        write_reward_stats(stage_dir, trainer.reward_funcs)
    model_dir = stage_dir / MODEL_DIR
    _save_stage_model(trainer, tokenizer, stage_dir, model_dir)
    metrics = {k: _json_safe(v) for k, v in output.metrics.items()}
    metrics["global_step"] = trainer.state.global_step
    # The accelerator keeps references to the model and optimizer; drop them so that the next
    # stage run in this process (the runner trains all stages in one) starts with free memory.
    trainer.accelerator.free_memory()
    del trainer, model
    gc.collect()
    return StageResult(stage=stage, model_dir=model_dir, metrics=metrics, extra=extra)
