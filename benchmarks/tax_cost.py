"""What each alignment-tax measure costs per item and per model, so a demo can size its benchmarks.

For one model (default: the packaged Gemma 3 270M) on this machine it times, per item and model:
- the continuous score of a generative benchmark (CMRC 2018: teacher-forced log-likelihood of the
  gold answer after the task prompt; `semrl.eval.tax.likelihood.continuation_scores`),
- MMLU through lm-evaluation-harness (four log-likelihoods per item; its gold-choice probability
  comes with them),
- the task-distribution KL (one teacher-forced forward of a base-model sample per item),
- drift on general text, for M methods against one base model: M separate `measure_drift` calls
  (2M forwards) against one `measure_drift_many` pass (base + M forwards).
The methods are copies of the base model with perturbed weights (timing does not depend on what
they learned). It prints a table and writes JSON with the CPU model, dtype, threads and peak RSS.

    SEMRL_DATA_DIR=../shared/data python benchmarks/tax_cost.py [--model tiny] [--items 8] [--texts 8]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

from semrl.config.evaluation import BenchmarkConfig
from semrl.config.model import ModelConfig
from semrl.core.provenance import cpu_model, package_versions, peak_rss_mb
from semrl.data.general import benchmark_subset, general_texts
from semrl.eval.tax.benchmarks import evaluate_general
from semrl.eval.tax.drift import measure_drift, measure_drift_many
from semrl.eval.tax.likelihood import continuation_scores
from semrl.models import load_policy, resolve_model

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def perturbed(model, scale: float, seed: int):
    """A copy of `model` with Gaussian noise on every weight matrix (a stand-in for a trained method)."""
    twin = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in twin.parameters():
            if p.ndim == 2:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale * p.std())
    return twin


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--items", type=int, default=8, help="benchmark items per measure")
    parser.add_argument("--texts", type=int, default=8, help="general texts for drift")
    parser.add_argument("--methods", type=int, default=4, help="methods whose drift is measured")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    data_dir = os.environ.get("SEMRL_DATA_DIR")
    if not data_dir:
        print("set SEMRL_DATA_DIR to the folder holding cmrc2018_dev/ and mmlu_test/", file=sys.stderr)
        return 2
    cfg = ModelConfig(name=args.model, lora={"enabled": False})
    base, tokenizer = load_policy(cfg, resolve_model(args.model))
    methods = {f"m{i}": perturbed(base, 0.01 * (i + 1), i) for i in range(args.methods)}
    figures: dict[str, float] = {}

    cmrc = benchmark_subset("cmrc2018", data_dir, args.items, seed=0)
    contexts = [f"{r['context']}\n问题：{r['question']}\n答案：" for r in cmrc]
    golds = [r["answers"][0] for r in cmrc]
    _, s = timed(lambda: continuation_scores(base, tokenizer, contexts, golds, batch_size=args.batch_size))
    figures["cmrc_gold_loglik_s_per_item"] = s / len(cmrc)

    _, s = timed(
        lambda: evaluate_general(
            base, tokenizer, [BenchmarkConfig(name="mmlu", limit=args.items)], data_dir, 0, batch_size=args.batch_size
        )
    )
    figures["mmlu_lm_eval_s_per_item"] = s / args.items

    samples = ["这是一个模型生成的中文句子，用来测量它在任务分布上的对数似然。"] * args.items
    prompts = [f"Translate the following Tibetan text into Chinese.\nTibetan: {c[:80]}\nChinese:" for c in contexts]
    _, s = timed(lambda: continuation_scores(base, tokenizer, prompts, [" " + x for x in samples], args.batch_size))
    figures["task_kl_s_per_item"] = s / args.items

    texts = general_texts(data_dir, args.texts, 0)
    _, separate = timed(lambda: [measure_drift(base, m, tokenizer, texts, args.batch_size) for m in methods.values()])
    _, shared = timed(lambda: measure_drift_many(base, methods, tokenizer, texts, args.batch_size))
    figures["drift_separate_s"] = separate
    figures["drift_shared_s"] = shared
    figures["drift_saving"] = 1 - shared / separate
    figures["drift_s_per_text_per_model_shared"] = shared / (len(texts) * args.methods)

    record = {
        "benchmark": "tax_cost",
        "model": args.model,
        "dtype": str(next(base.parameters()).dtype),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "items": args.items,
        "texts": len(texts),
        "methods": args.methods,
        "figures": {k: round(v, 4) for k, v in figures.items()},
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "versions": package_versions(),
    }
    print(f"tax cost on {record['cpu']} ({record['threads']} threads, {record['dtype']}), model {args.model}")
    print("| measure | value |\n|---|---|")
    for k, v in record["figures"].items():
        print(f"| {k} | {v:.4f} |")
    print(f"| peak RSS (MB) | {record['peak_rss_mb']:.0f} |")
    out = args.out or RESULTS / f"tax_cost_{args.model.replace('-', '_').replace('.', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
