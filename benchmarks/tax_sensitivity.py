"""Proof that the tax instrument sees: a model with a known tax, measured both ways.

The base model against copies of itself whose weights carry Gaussian noise at two levels (a tax
we put there, larger for the larger level): on the same benchmark items, the accuracy-style tax
and the per-item continuous tax (`semrl.results.evidence`), each with a 95% paired bootstrap
interval. The instrument sees the damage when the continuous intervals exclude zero and rank the
two levels; it prints whether accuracy does the same on the same items. Writes JSON.

    SEMRL_DATA_DIR=../shared/data python benchmarks/tax_sensitivity.py [--model gemma-3-270m] \\
        [--mmlu 100] [--cmrc 100] [--gsm8k 0] [--noise 0.01,0.03]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from semrl.config.evaluation import BenchmarkConfig
from semrl.config.model import ModelConfig
from semrl.core.provenance import cpu_model, package_versions, peak_rss_mb
from semrl.eval.stats import paired_bootstrap
from semrl.eval.tax.benchmarks import evaluate_general
from semrl.models import load_policy, resolve_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tax_cost import RESULTS, perturbed  # noqa: E402  (a sibling script)


def _iv(a, b) -> dict[str, float]:
    iv = paired_bootstrap(a, b, n_resamples=2000, seed=0)
    return {"estimate": round(iv.estimate, 4), "low": round(iv.low, 4), "high": round(iv.high, 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--mmlu", type=int, default=100)
    parser.add_argument("--cmrc", type=int, default=100)
    parser.add_argument("--gsm8k", type=int, default=0)
    parser.add_argument("--noise", default="0.01,0.03", help="relative weight-noise levels, comma-separated")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--likelihood-only",
        type=int,
        default=0,
        metavar="N",
        help="instead: N GSM8K items scored by the gold solution's log-likelihood alone (no generation); the "
        "base model's GSM8K accuracy at this size is 0, which no damage can lower",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    data_dir = os.environ.get("SEMRL_DATA_DIR")
    if not data_dir:
        print("set SEMRL_DATA_DIR to the folder holding cmrc2018_dev/, mmlu_test/ and gsm8k_test/", file=sys.stderr)
        return 2
    benches = [
        BenchmarkConfig(name=n, limit=k, max_gen_toks=g)
        for n, k, g in (("mmlu", args.mmlu, None), ("cmrc2018", args.cmrc, 32), ("gsm8k", args.gsm8k, 128))
        if k
    ]
    levels = [float(x) for x in args.noise.split(",")]
    base, tokenizer = load_policy(ModelConfig(name=args.model, lora={"enabled": False}), resolve_model(args.model))
    if args.likelihood_only:
        return likelihood_only(base, tokenizer, args, levels, data_dir)
    started = time.time()
    results = {"base": evaluate_general(base, tokenizer, benches, data_dir, 0, batch_size=args.batch_size)}
    for i, level in enumerate(levels):
        model = perturbed(base, level, seed=i)
        results[f"noise {level}"] = evaluate_general(model, tokenizer, benches, data_dir, 0, batch_size=args.batch_size)
        del model
    rows = []
    for bench in benches:
        b = results["base"][bench.name]
        for name in results:
            if name == "base":
                continue
            m = results[name][bench.name]
            row = {
                "benchmark": bench.name,
                "model": name,
                "n": m.n,
                "accuracy": round(m.score, 4),
                "accuracy_tax": _iv(b.per_example, m.per_example),
                "continuous_measure": m.details["continuous_measure"],
                "continuous": round(float(np.nanmean(m.details["per_example_continuous"])), 4),
                "continuous_tax": _iv(b.details["per_example_continuous"], m.details["per_example_continuous"]),
            }
            row["continuous_sees"] = row["continuous_tax"]["low"] > 0
            row["accuracy_sees"] = row["accuracy_tax"]["low"] > 0
            rows.append(row)
        if len(levels) >= 2:
            lo, hi = (results[f"noise {levels[0]}"][bench.name], results[f"noise {levels[-1]}"][bench.name])
            rank = _iv(lo.details["per_example_continuous"], hi.details["per_example_continuous"])
            rows.append({"benchmark": bench.name, "model": "ranking", "continuous_tax_difference": rank,
                         "ranked": rank["low"] > 0})  # fmt: skip
    record = {
        "benchmark": "tax_sensitivity",
        "model": args.model,
        "cpu": cpu_model(),
        "base_scores": {k: round(v.score, 4) for k, v in results["base"].items()},
        "base_continuous": {
            k: round(float(np.nanmean(v.details["per_example_continuous"])), 4) for k, v in results["base"].items()
        },
        "rows": rows,
        "wall_time_s": round(time.time() - started, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "versions": package_versions(),
    }
    print(f"tax sensitivity on {record['cpu']}, {args.model}, {record['wall_time_s']} s")
    print("| benchmark | model | n | accuracy tax [95%] | continuous tax [95%] | accuracy sees | continuous sees |")
    print("|---|---|---|---|---|---|---|")
    fmt = lambda iv: f"{iv['estimate']:+.4f} [{iv['low']:+.4f}, {iv['high']:+.4f}]"  # noqa: E731
    for r in rows:
        if r["model"] == "ranking":
            print(
                f"| {r['benchmark']} | larger - smaller noise | | | {fmt(r['continuous_tax_difference'])} | | {r['ranked']} |"
            )
        else:
            print(
                f"| {r['benchmark']} | {r['model']} | {r['n']} | {fmt(r['accuracy_tax'])} | {fmt(r['continuous_tax'])} "
                f"| {r['accuracy_sees']} | {r['continuous_sees']} |"
            )
    out = args.out or RESULTS / f"tax_sensitivity_{args.model.replace('-', '_')}.json"
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


def likelihood_only(base, tokenizer, args, levels, data_dir) -> int:
    """GSM8K gold solutions' log-likelihood per character after lm-eval's gsm8k prompt, for the base
    model and each noise level, with paired intervals of the tax and of the ranking."""
    from semrl.data.general import benchmark_subset
    from semrl.eval.tax.likelihood import continuation_scores, per_char_logprobs

    rows = benchmark_subset("gsm8k", data_dir, args.likelihood_only, seed=0)
    contexts = [f"Question: {r['question']}\nAnswer:" for r in rows]  # lm-eval's gsm8k doc_to_text
    golds = [" " + r["answer"] for r in rows]
    started = time.time()

    def score(model):
        return per_char_logprobs(continuation_scores(model, tokenizer, contexts, golds, batch_size=args.batch_size))

    scores = {"base": score(base)}
    for i, level in enumerate(levels):
        scores[f"noise {level}"] = score(perturbed(base, level, seed=i))
    rows_out = [
        {
            "model": name,
            "n": len(rows),
            "continuous": round(float(np.mean(s)), 4),
            "continuous_tax": _iv(scores["base"], s),
        }
        for name, s in scores.items()
        if name != "base"
    ]
    if len(levels) >= 2:
        rows_out.append(
            {
                "model": "ranking",
                "continuous_tax_difference": _iv(scores[f"noise {levels[0]}"], scores[f"noise {levels[-1]}"]),
            }
        )
    record = {
        "benchmark": "tax_sensitivity_likelihood",
        "model": args.model,
        "cpu": cpu_model(),
        "measure": "GSM8K gold solution log-likelihood per character",
        "base_continuous": round(float(np.mean(scores["base"])), 4),
        "rows": rows_out,
        "wall_time_s": round(time.time() - started, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    print(json.dumps(record, indent=1))
    out = args.out or RESULTS / f"tax_sensitivity_likelihood_{args.model.replace('-', '_')}.json"
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
