"""Seconds per SFT and GRPO optimizer step, peak RSS, and the share of a GRPO step spent in
reward functions, for the tiny model and (with --gemma) the packaged Gemma 3 270M.

Runs semrl's own stages (`train_stage`) on NTREX-128 sentences (configs/tiny.yaml's source, read
from --data-dir / $SEMRL_DATA_DIR), reading the per-step timings the stage logs (`step_time_s`,
`timing/reward_share`). The first step of each stage is reported apart: it includes warm-up.

    python benchmarks/step_time.py [--gemma] [--steps 3] --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from semrl.config.experiment import load_config
from semrl.core.io import write_json
from semrl.data.splits import load_examples, split_examples
from semrl.train.callbacks import read_log
from semrl.train.stage import train_stage

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def measure(model: str, steps: int, data_dir: str | None) -> dict:
    overrides = [
        f"model.name={model}",
        f"stages.cold_start.max_steps={steps}",
        "stages.cold_start.batch_size=8",
        "stages.cold_start.per_device_batch_size=8",
        "stages.cold_start.max_length=256",
        f"stages.grpo.max_steps={steps}",
        "stages.grpo.batch_size=8",
        "stages.grpo.per_device_batch_size=8",
        "stages.grpo.num_generations=4",
        "stages.grpo.max_completion_length=32",
        "rewards.tau=0.85",
        f"stages.grpo.save_steps={steps + 1}",
        f"stages.cold_start.save_steps={steps + 1}",
    ]
    if model != "tiny":
        overrides.append("model.lora={enabled: true, r: 64, alpha: 128, dropout: 0.05}")
    config = load_config(CONFIGS / "tiny.yaml", overrides=overrides)
    if data_dir:
        config.data_dir = data_dir
    config.data.splits = {"cold_start": 100, "rl": 100, "dev": 10, "test": 10}
    splits = split_examples(load_examples(config), config.data.splits, config.seed)
    out: dict = {"model": model, "steps": steps}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in ("cold_start", "grpo"):
            stage_dir = Path(tmp) / stage
            init = Path(tmp) / "cold_start" / "model" if stage == "grpo" else None
            started = time.time()
            train_stage(stage, config, splits, stage_dir, init_model=init, resume=False)
            rows = [r for r in read_log(stage_dir / "log.jsonl") if r.get("step_time_s")]
            times = [r["step_time_s"] for r in rows]
            entry = {
                "wall_s": round(time.time() - started, 2),
                "first_step_s": round(times[0], 3) if times else None,
                "median_step_s_after_first": round(statistics.median(times[1:]), 3) if len(times) > 1 else None,
            }
            shares = [r["timing/reward_share"] for r in rows[1:] if "timing/reward_share" in r]
            if shares:
                entry["reward_share_median"] = round(statistics.median(shares), 4)
            out["sft" if stage == "cold_start" else "grpo"] = entry
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gemma", action="store_true", help="also measure Gemma 3 270M (minutes; about 8 GB RAM)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--data-dir", default=None, help="use NTREX sentences from this data directory")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/step_time.json"))
    args = parser.parse_args()
    results = [measure("tiny", args.steps, args.data_dir)]
    if args.gemma:
        results.append(measure("gemma-3-270m", args.steps, args.data_dir))
    setup = "batch 8; SFT max_length 256; GRPO 2 prompts x G=4, 32 new tokens; LoRA; fp32 CPU"
    print(f"{'model':<14} {'SFT s/step':>10} {'GRPO s/step':>11} {'reward share':>12} {'peak RSS MiB':>12}")
    for r in results:
        print(
            f"{r['model']:<14} {r['sft']['median_step_s_after_first']!s:>10} {r['grpo']['median_step_s_after_first']!s:>11} "
            f"{r['grpo'].get('reward_share_median')!s:>12} {r['peak_rss_mb']:>12}"
        )
    print(setup)
    write_json(
        args.out,
        {
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "processor": platform.machine()},
            "setup": setup,
            "results": results,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
