"""Where an SFT and a GRPO optimizer step spend their time: per phase, each against its own roofline,
and per operator (torch.profiler over one step).

It trains semrl's own stages (`train_stage`, as `step_time.py` does) for a few steps with the
trainer instrumented: wrappers time the phases without changing what runs.

- SFT: data collation (tokenised rows -> padded batch), loss forward, backward, optimizer step
  (gradient clipping included);
- GRPO: generation, reward, the no-grad log-prob forwards (old policy / reference, when the
  config needs them), the rest of scoring (advantages, tokenisation, monitors), loss forward,
  backward, optimizer step.

Rooflines (seconds at this machine's measured rates, `step_time.matmul_gflops` and
`step_time.copy_bandwidth_gbs`): a forward is 2 (N + A) FLOPs per token (A: LoRA's adapter
parameters) plus 2 V d per projected (labelled) position; the backward costs the same again for
the inputs' gradients plus 2 A per token for the adapters' own (`step_time.layer_flops_per_token`;
before 2026-12-05's last session A was left out, which at r=64 understated both by ~1.2x); generation is prefill (2 N per prompt token)
plus one read of every weight per decode step (memory-bound); the optimizer reads and writes
the trainable parameters, their gradients and Adam's two moments (float32: 28 bytes per
parameter). The reward (an encoder) and the bookkeeping have no roofline here. Each phase also
counts the pages the kernel zero-filled for it (`page_faults/<phase>`), and the profiled step's
matrix products are listed by operand shape with the rate each ran at (`products`).

    SEMRL_DATA_DIR=../shared/data python benchmarks/step_profile.py [--config configs/demo.yaml]
        [--steps 3] [--dtype bfloat16] [--out benchmarks/results/step_profile.json]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import resource
import statistics
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from step_time import copy_bandwidth_gbs, layer_flops_per_token, matmul_gflops, model_shape

import semrl.train.stage as stage_module
from semrl.config.experiment import load_config
from semrl.core.io import write_json
from semrl.core.provenance import machine, package_versions
from semrl.data.splits import load_examples, split_examples

ROOT = Path(__file__).resolve().parents[1]
TOP_OPERATORS = 25


class PhaseClock:
    """Seconds per phase per optimizer step, from wrappers around the trainer's methods."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.current: dict[str, float] = defaultdict(float)
        self.counts: dict[str, float] = defaultdict(float)
        self.step_counts: list[dict[str, float]] = []

    @contextlib.contextmanager
    def phase(self, name: str):
        start, faults = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        try:
            yield
        finally:
            self.current[name] += time.perf_counter() - start
            # Pages the kernel zero-filled for the phase: fresh memory, not reused (see `freed_memory_kept_for_reuse`).
            self.counts[f"page_faults/{name}"] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults

    def wrap(self, obj: Any, attr: str, name: str | Any) -> None:
        """Time every call of `obj.attr` under `name` (a callable of the call's args picks the name)."""
        original = getattr(obj, attr)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name(*args, **kwargs) if callable(name) else name):
                return original(*args, **kwargs)

        setattr(obj, attr, timed)

    def close_step(self) -> None:
        self.steps.append(dict(self.current))
        self.step_counts.append(dict(self.counts))
        self.current = defaultdict(float)
        self.counts = defaultdict(float)


def instrument(trainer: Any, clock: PhaseClock, profile_step: int, traces: dict[str, Any]) -> None:
    """Wrap the trainer's phases (see the module docstring) and profile operators on `profile_step`."""
    from transformers import TrainerCallback

    grpo = hasattr(trainer, "_generate_and_score_completions")
    traces["trainable"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    collator = trainer.data_collator

    def collate(rows: list[Any]) -> Any:
        with clock.phase("collation"):
            batch = collator(rows)
        if isinstance(batch, dict) and "labels" in batch:
            clock.counts["tokens"] += float(batch["attention_mask"].sum())
            clock.counts["labelled"] += float((batch["labels"] != -100).sum())
            clock.counts["padded_tokens"] += batch["input_ids"].numel()
        return batch

    trainer.data_collator = collate
    trainer.accelerator.backward = _timed(clock, "backward", trainer.accelerator.backward)
    original_loss = trainer.compute_loss

    def compute_loss(model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if grpo:
            clock.counts["tokens"] += float(inputs["prompt_mask"].sum() + inputs["completion_mask"].sum())
            clock.counts["labelled"] += float(inputs["completion_mask"].sum())
        with clock.phase("loss_forward"):
            return original_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = compute_loss
    if grpo:
        clock.wrap(trainer, "_generate_and_score_completions", "generate_and_score")
        original_generate = trainer._generate_single_turn

        def generate(prompt_ids: Any, *args: Any, **kwargs: Any) -> Any:
            with clock.phase("generation"):
                completion_ids, logprobs = original_generate(prompt_ids, *args, **kwargs)
            clock.counts["generated_sequences"] += len(completion_ids)
            clock.counts["prompt_tokens"] += sum(len(p) for p in prompt_ids) * (len(completion_ids) // len(prompt_ids))
            clock.counts["completion_tokens"] += sum(len(c) for c in completion_ids)
            clock.counts["decode_steps"] += max(len(c) for c in completion_ids)
            return completion_ids, logprobs

        trainer._generate_single_turn = generate
        clock.wrap(trainer, "_calculate_rewards", "reward")
        clock.wrap(
            trainer,
            "_get_per_token_logps_and_entropies",
            lambda *a, **k: "logps_loss" if torch.is_grad_enabled() else "logps_old_ref",
        )

    class StepEdges(TrainerCallback):
        def __init__(self) -> None:
            self.profiler: Any = None
            self.started = 0.0
            self.optimizer_started = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()
            if state.global_step + 1 == profile_step:
                self.profiler = torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True
                )
                self.profiler.__enter__()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self.optimizer_started = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kwargs):
            clock.current["optimizer"] += time.perf_counter() - self.optimizer_started

        def on_step_end(self, args, state, control, **kwargs):
            clock.current["step_total"] = time.perf_counter() - self.started
            if self.profiler is not None:
                self.profiler.__exit__(None, None, None)
                traces["operators"] = operator_table(self.profiler)
                traces["products"] = product_table(self.profiler)
                self.profiler = None
            clock.close_step()

    trainer.add_callback(StepEdges())


def _timed(clock: PhaseClock, name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        with clock.phase(name):
            return fn(*args, **kwargs)

    return timed


def operator_table(profiler: Any) -> list[dict[str, Any]]:
    """The top operators by self CPU time over the profiled step."""
    events = profiler.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:TOP_OPERATORS]
    return [
        {
            "op": e.key,
            "self_s": round(e.self_cpu_time_total / 1e6, 3),
            "share": round(e.self_cpu_time_total / total, 4),
            "calls": e.count,
        }
        for e in rows
    ]


def product_table(profiler: Any) -> list[dict[str, Any]]:
    """The matrix products (`aten::mm`, `aten::addmm`, `aten::bmm`) by operand shapes, slowest first,
    with the rate each shape ran at inside the step (compare with `matmul_gflops`)."""
    rows = []
    for e in profiler.key_averages(group_by_input_shape=True):
        if e.key not in ("aten::mm", "aten::addmm", "aten::bmm") or not e.input_shapes:
            continue
        shapes = [s for s in e.input_shapes if s]
        a, b = (shapes[-2], shapes[-1]) if e.key == "aten::addmm" else (shapes[0], shapes[1])
        batch = a[0] if e.key == "aten::bmm" else 1
        flops = 2 * batch * a[-2] * a[-1] * b[-1] * e.count
        seconds = e.self_cpu_time_total / 1e6
        rows.append(
            {
                "op": e.key,
                "shapes": [a, b],
                "calls": e.count,
                "self_s": round(seconds, 4),
                "gflops": round(flops / seconds / 1e9, 1) if seconds else None,
            }
        )
    return sorted(rows, key=lambda r: r["self_s"], reverse=True)[:TOP_OPERATORS]


def profile_stage(stage: str, config: Any, splits: Any, stage_dir: Path, init: Path | None, steps: int) -> dict:
    """Train `stage` for `steps` steps with the phases timed; per-step phases after the first."""
    clock, traces = PhaseClock(), {}
    builder_name = "build_grpo_trainer" if stage == "grpo" else "build_sft_trainer"
    builder = getattr(stage_module, builder_name)

    def build(*args: Any, **kwargs: Any) -> Any:
        trainer = builder(*args, **kwargs)
        instrument(trainer, clock, profile_step=steps, traces=traces)
        return trainer

    setattr(stage_module, builder_name, build)
    try:
        stage_module.train_stage(stage, config, splits, stage_dir, init_model=init, resume=False)
    finally:
        setattr(stage_module, builder_name, builder)
    measured = clock.steps[1:] or clock.steps
    counted = clock.step_counts[1:] or clock.step_counts
    phases = {k: round(statistics.median(s.get(k, 0.0) for s in measured), 3) for k in measured[0]}
    counts = {k: statistics.median(c.get(k, 0.0) for c in counted) for k in counted[0]}
    return {
        "phases_s": phases,
        "counts": counts,
        "trainable_parameters": traces["trainable"],
        "operators": traces.get("operators", []),
        "products": traces.get("products", []),
        "steps": len(clock.steps),
    }


def rooflines(
    kind: str,
    counts: dict[str, float],
    shape: dict[str, int],
    gflops: float,
    bandwidth: float,
    trainable: int,
    bytes_per_weight: int,
    config: Any,
) -> dict[str, float]:
    """Lower bounds (seconds) per phase for the measured token counts (see the module docstring)."""
    n, head = shape["N"], shape["V"] * shape["d"]
    rate = gflops * 1e9
    tokens, labelled = counts.get("tokens", 0), counts.get("labelled", 0)
    forward = (2 * (n + shape["adapters"]) * tokens + 2 * head * labelled) / rate
    backward = (layer_flops_per_token(shape) * tokens + 4 * head * labelled) / rate - forward
    roof = {"loss_forward": forward, "backward": backward, "optimizer": 28 * trainable / (bandwidth * 1e9)}
    if kind == "grpo":
        decode = counts.get("decode_steps", 0) * (n + head) * bytes_per_weight / (bandwidth * 1e9)
        roof["generation"] = 2 * n * counts.get("prompt_tokens", 0) / rate + decode
        cfg = config.stages.grpo
        passes = (1 if cfg.beta > 0 else 0) + (1 if getattr(cfg, "num_iterations", 1) > 1 else 0)
        roof["logps_old_ref"] = passes * forward
    return {k: round(v, 3) for k, v in roof.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--data-dir", default=os.environ.get("SEMRL_DATA_DIR"))
    parser.add_argument("--stages", default="cold_start,grpo")
    parser.add_argument("--set", action="append", default=[], help="extra config overrides (key=value)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "step_profile.json")
    args = parser.parse_args()

    steps = args.steps
    overrides = [f"model.dtype={args.dtype}", f"stages.cold_start.max_steps={steps}", f"stages.grpo.max_steps={steps}"]
    overrides += [f"stages.{s}.save_steps={steps + 1}" for s in ("cold_start", "grpo")]
    overrides += ["stages.cold_start.warmup_ratio=0.0", "stages.grpo.warmup_ratio=0.0", *args.set]
    config = load_config(args.config, overrides=overrides)
    if args.data_dir:
        config.data_dir = args.data_dir
    if config.rewards.tau == "auto":
        config.rewards.tau = 0.85  # tau calibration is not what this measures
    splits = split_examples(load_examples(config), config.data.splits, config.seed)
    dtype = getattr(torch, args.dtype)
    shape = model_shape(config)
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in args.stages.split(","):
            init = Path(tmp) / "cold_start" / "model" if stage == "grpo" and "cold_start" in args.stages else None
            results[stage] = profile_stage(stage, config, splits, Path(tmp) / stage, init, steps)
    load_after = os.getloadavg()
    bandwidth = copy_bandwidth_gbs()
    sft_counts = results.get("cold_start", {}).get("counts", {"tokens": 1600})
    gflops = matmul_gflops(dtype, int(sft_counts.get("tokens", 1600)), shape["d"], shape["intermediate"])
    for stage, r in results.items():
        kind = "grpo" if stage == "grpo" else "sft"
        roof = rooflines(kind, r["counts"], shape, gflops, bandwidth, r["trainable_parameters"], dtype.itemsize, config)
        r["roofline_s"] = roof
        r["vs_roofline"] = {k: round(r["phases_s"][k] / v, 2) for k, v in roof.items() if v and k in r["phases_s"]}
    hw = machine()
    print(
        f"{hw['cpu']}, {hw['cores']} cores; {args.dtype}; matmul {gflops:.0f} GFLOP/s, copy {bandwidth:.1f} GB/s; "
        f"load {load_before[0]:.1f} -> {load_after[0]:.1f}"
    )
    for stage, r in results.items():
        print(f"[{stage}] counts {r['counts']}")
        for k, v in r["phases_s"].items():
            print(f"  {k:<22} {v:>8.3f} s   roof {r['roofline_s'].get(k, '-')!s:>7}  x{r['vs_roofline'].get(k, '-')}")
        for row in r["operators"][:12]:
            print(f"    {row['op'][:48]:<48} {row['self_s']:>7.3f} s {row['share']:>6.1%} {row['calls']:>7}")
        for row in r["products"][:12]:
            shapes = " @ ".join("x".join(map(str, s)) for s in row["shapes"])
            print(
                f"    {row['op']:<10} {shapes:<28} {row['calls']:>5} calls {row['self_s']:>7.3f} s {row['gflops']} GFLOP/s"
            )
    write_json(
        args.out,
        {
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": hw,
            "dtype": args.dtype,
            "load_average": [round(load_before[0], 2), round(load_after[0], 2)],
            "matmul_gflops": round(gflops, 1),
            "copy_bandwidth_gbs": round(bandwidth, 2),
            "config": str(args.config.name),
            "overrides": overrides,
            "versions": package_versions(),
            "results": results,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
