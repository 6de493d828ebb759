"""Wall time of one LLM-judge pass: the packaged Gemma 3 270M (or --judge MODEL) compares two
methods' outputs of a tiny run on --pairs test examples, each pair asked in both orders.

Makes the tiny run first (configs/tiny.yaml with a test split of --pairs examples, sampled
outputs, no general benchmarks, judge off; NTREX-128 from --data-dir / $SEMRL_DATA_DIR) unless
--run-dir names an evaluated run (a --run-dir without evaluations receives the tiny run and
keeps it). The pair of methods compared is the one whose outputs differ on the most examples
(identical outputs are a tie without asking the judge), grpo vs sft when it ties. The run's
eval/judge.json is rewritten. Loading the judge and judging are timed apart. The tiny model's
outputs are junk: the verdicts measure nothing but the plumbing; the timing is what this script
is for.

    python benchmarks/judge_pass.py --data-dir ../shared/data [--judge gemma-3-270m] [--pairs 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from semrl.config.evaluation import JudgeConfig
from semrl.config.experiment import load_config
from semrl.core.io import write_json
from semrl.eval.judge import build_judge, judge_template, pair_items, render_prompt
from semrl.eval.records import load_evaluations
from semrl.pipeline.judge import run_judge
from semrl.pipeline.run import run_experiment

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_run(run_dir: Path, pairs: int, data_dir: str | None) -> None:
    """A tiny run whose test split holds at least `pairs` examples. Its outputs are sampled: greedy
    decoding after a few steps from random weights writes the same text for every method, which
    leaves the judge nothing to compare."""
    overrides = [
        f"data.splits.test={pairs}",
        f"evaluation.test_limit={pairs}",
        "evaluation.benchmarks=[]",
        "evaluation.generation.do_sample=true",
        "evaluation.judge.enabled=false",
    ]
    config = load_config(CONFIGS / "tiny.yaml", overrides=overrides)
    if data_dir:
        config.data_dir = data_dir
    run_experiment(config, run_dir, log=lambda m: print(m, flush=True))


CANDIDATES = (
    ("grpo", "sft"),
    ("grpo", "cold_start"),
    ("sft", "cold_start"),
    ("grpo", "base"),
    ("sft", "base"),
    ("cold_start", "base"),
)


def most_different_pair(evals: dict, pairs: int) -> tuple[str, str]:
    """The evaluated method pair whose outputs differ on the most of the first `pairs` examples."""

    def differing(a: str, b: str) -> int:
        return sum(it.first.strip() != it.second.strip() for it in pair_items(evals[a], evals[b], pairs))

    candidates = [(a, b) for a, b in CANDIDATES if a in evals and b in evals]
    if not candidates:
        raise SystemExit(f"fewer than two evaluated methods: {sorted(evals)}")
    return max(candidates, key=lambda ab: differing(*ab))  # max keeps the first of equals


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(run_dir: Path, judge_model: str, pairs: int) -> dict:
    config = load_config(run_dir / "config.yaml")
    evals = load_evaluations(run_dir)
    first, second = most_different_pair(evals, pairs)
    config.evaluation.judge = JudgeConfig(enabled=True, model=judge_model, pairs=[(first, second)], limit=pairs)
    load_before = os.getloadavg()[0]
    started = time.time()
    judge = build_judge(config.evaluation.judge)
    load_s = time.time() - started
    started, cpu_started = time.time(), _cpu_s()
    record = run_judge(config, run_dir, judge=judge, log=lambda m: print(m, flush=True))
    judge_s, judge_cpu_s = time.time() - started, _cpu_s() - cpu_started
    pair = record["pairs"][f"{first}-{second}"]
    out = {
        "judge": record["judge"],
        "compared": f"{first} vs {second}",
        "pairs": pair["n"],
        "judge_prompts": pair["judge_prompts"],
        "identical_pairs_not_asked": pair["counts"]["identical"],
        "load_s": round(load_s, 2),
        "judge_s": round(judge_s, 2),
        "s_per_prompt": round(judge_s / max(1, pair["judge_prompts"]), 3),
        # CPU seconds of this process (all threads) while judging: less sensitive than wall time
        # to other work on the machine
        "judge_cpu_s": round(judge_cpu_s, 2),
        "torch_threads": torch.get_num_threads(),
        "truncated_prompts": record["truncated_prompts"],
        "counts": pair["counts"],
        "first_position_rate": pair["first_position_rate"],
    }
    tokenizer = getattr(judge, "tokenizer", None)
    if tokenizer is not None:
        template = judge_template(config.evaluation.judge, config.task)
        lengths = [
            len(
                tokenizer(render_prompt(template, config.task, it.source, it.reference, it.first, it.second))[
                    "input_ids"
                ]
            )
            for it in pair_items(evals[first], evals[second], pairs)
            if it.first.strip() != it.second.strip()
        ]
        if lengths:
            out["prompt_tokens_median"] = statistics.median(lengths)
            out["prompt_tokens_max"] = max(lengths)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    # Other work on the machine slows the pass: the 1-minute load average before and after it.
    out["load_average_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    out["cpu_count"] = os.cpu_count()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", default="gemma-3-270m", help="judge model (default: the packaged Gemma 3 270M)")
    parser.add_argument("--pairs", type=int, default=20, help="test examples to judge (each in both orders)")
    parser.add_argument("--run-dir", type=Path, help="an evaluated run to judge (default: make a tiny run)")
    parser.add_argument("--data-dir", default=None, help="NTREX-128 for the tiny run (default: $SEMRL_DATA_DIR)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/judge_pass.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run_dir or Path(tmp) / "run"
        if not load_evaluations(run_dir):
            tiny_run(run_dir, args.pairs, args.data_dir)
        result = measure(run_dir, args.judge, args.pairs)
    r = result
    print(
        f"judge {r['judge']['model']} ({r['judge']['mode']}) on {r['compared']}: {r['pairs']} pairs, {r['judge_prompts']} prompts "
        f"(median {r.get('prompt_tokens_median', '?')} tokens); load {r['load_s']:.1f}s, judging {r['judge_s']:.1f}s "
        f"({r['s_per_prompt']:.2f} s/prompt); peak RSS {r['peak_rss_mb']:.0f} MiB"
    )
    write_json(
        args.out,
        {
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "processor": platform.machine()},
            "setup": "two methods' outputs of a tiny run (random weights: junk text), each pair in both orders; "
            "fp32 CPU, judge batch 8, run under nice -n 19 (see load_average_1m for other work on the machine)",
            "result": result,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
