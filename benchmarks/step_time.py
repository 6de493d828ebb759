"""Seconds per SFT and GRPO optimizer step in float32 and bfloat16, against a roofline estimate.

For a config (default: configs/demo.yaml, so the shapes are the demo's), it trains semrl's own
stages (`train_stage`) for a few steps in each dtype: the cold start (an SFT stage) and GRPO from
that cold start, on the config's own splits. It reads the per-step timings the stage logs
(`step_time_s`, `timing/reward_share`, GRPO's completion lengths); the first step of each stage is
reported apart (warm-up).

The roofline is what this machine could do at best for one GRPO step of that shape:

- measured throughput: a matmul of the model's MLP shape (tokens x d) @ (d x 4d) in each dtype,
  and the memory bandwidth of a large tensor copy;
- generation: prefill 2 N P FLOPs per completion (N: non-embedding parameters, P: prompt tokens), then
  T decode steps, each reading every weight once for the whole batch (memory-bound on a CPU:
  weight bytes / bandwidth) or 2 (N + V d) B FLOPs, whichever takes longer;
- the loss: forward and backward over B (P + T) tokens, 4 N per token with frozen weights, plus
  6 A per token for the A LoRA adapter parameters (forward, input gradient, weight gradient: at r=64
  on Gemma 3 270M's seven projections A is 15.2M, 15% of N, and its 6 A a fifth of the step's
  layer FLOPs; full fine-tuning adds 2 N instead), and 4 V d per completion token for the LM head (TRL projects only labelled
  positions; `semrl.train.cpu.compact_lm_head_on_cpu`). TRL 1.16 takes the entropy in the same
  fused tile pass as the log-probabilities, so it costs no second pass over the 262k logits.
  beta > 0 adds a reference forward (2 N per token), counted when the config sets it.
Attention's own FLOPs (quadratic in length) are left out: at these lengths (< 256 tokens) they are
a few percent of the projections.

Each step is held against the roofline of its own tokens, read from the stage's log (TRL's
cumulative `num_tokens`, padding excluded; for GRPO also the step's mean completion length). SFT's
labelled share of a step's tokens is the split's (the log does not count labels). Batches differ:
`group_by_length` starts an epoch with its longest batches, so a few first steps held against the
mean batch's roofline overstate the ratio (the figures published before 2026-12-05 did, by about
1.6x). `--from-run RUN_DIR` holds every step of a finished run's SFT and GRPO stages against its
own roofline (rates measured now; run it on the machine that trained the run): the ratio of a
whole stage as a run spends it.

    SEMRL_DATA_DIR=../shared/data python benchmarks/step_time.py [--config configs/demo.yaml]
        [--steps 4] [--dtypes float32,bfloat16] [--set stages.grpo.merged_generation=false]
        [--out benchmarks/results/step_time.json]
    SEMRL_DATA_DIR=../shared/data python benchmarks/step_time.py --from-run runs/demo
        [--out benchmarks/results/step_time_run.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from semrl.config.experiment import load_config
from semrl.core.io import write_json
from semrl.core.layout import RunLayout
from semrl.core.provenance import machine, package_versions, peak_rss_mb
from semrl.data.prompts import prompt_text
from semrl.data.splits import load_examples, load_splits, split_examples
from semrl.models import choose_dtype, load_tokenizer
from semrl.train.callbacks import read_log
from semrl.train.stage import train_stage

ROOT = Path(__file__).resolve().parents[1]


def matmul_gflops(dtype: torch.dtype, m: int, k: int, n: int, repeats: int = 5, trials: int = 5) -> float:
    """The best of `trials` timings of `repeats` matmuls: a roofline is the rate the machine can reach."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b  # warm-up: oneDNN picks its kernel on the first call
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n * repeats / best / 1e9


def copy_bandwidth_gbs(megabytes: int = 512, repeats: int = 5) -> float:
    src = torch.empty(megabytes * 2**20, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    return 2 * src.numel() * repeats / (time.perf_counter() - start) / 1e9  # read + write


def model_shape(config: Any) -> dict[str, int]:
    """Non-embedding parameters N, vocabulary V and width d of the configured model."""
    from transformers import AutoConfig

    from semrl.models import resolve_model

    mc = AutoConfig.from_pretrained(str(resolve_model(config.model.name)))
    mc = getattr(mc, "text_config", mc)
    d, layers, inter = mc.hidden_size, mc.num_hidden_layers, mc.intermediate_size
    heads, kv, head_dim = (
        mc.num_attention_heads,
        mc.num_key_value_heads,
        getattr(mc, "head_dim", d // mc.num_attention_heads),
    )
    attention = d * head_dim * (heads + 2 * kv) + heads * head_dim * d
    n = layers * (attention + 3 * d * inter)
    lora = config.model.lora
    # (in, out) of each projection LoRA may adapt, as Gemma, Qwen and Llama name them.
    projections = {
        "q_proj": (d, heads * head_dim),
        "k_proj": (d, kv * head_dim),
        "v_proj": (d, kv * head_dim),
        "o_proj": (heads * head_dim, d),
        "gate_proj": (d, inter),
        "up_proj": (d, inter),
        "down_proj": (inter, d),
    }
    targets = projections if lora.target_modules == "all-linear" else lora.target_modules
    adapters = layers * sum(lora.r * sum(projections[t]) for t in targets if t in projections) if lora.enabled else 0
    return {
        "N": n,
        "V": mc.vocab_size,
        "d": d,
        "intermediate": inter,
        "adapters": adapters,  # A: LoRA parameters, 0 without LoRA
        "weight_gradients": adapters if lora.enabled else n,  # parameters whose gradient the backward builds
    }


def layer_flops_per_token(shape: dict[str, int]) -> int:
    """Forward and backward FLOPs per trained token in the decoder layers: 2 (N + A) forward, 2 (N + A)
    for the input gradient, 2 per parameter whose weight gradient is built."""
    return 4 * (shape["N"] + shape.get("adapters", 0)) + 2 * shape.get("weight_gradients", 0)


def grpo_roofline(
    shape: dict[str, int],
    prompts: int,
    group: int,
    prompt_tokens: float,
    completion_tokens: float,
    gflops: float,
    bandwidth: float,
    bytes_per_weight: int,
    beta: float,
) -> dict[str, float]:
    """Lower bounds (seconds) for one GRPO step: generation and loss (see the module docstring)."""
    n, head = shape["N"], shape["V"] * shape["d"]
    batch = prompts * group
    prefill = 2 * n * prompt_tokens * batch / (gflops * 1e9)
    decode_compute = completion_tokens * 2 * (n + head) * batch / (gflops * 1e9)
    decode_memory = completion_tokens * (n + head) * bytes_per_weight / (bandwidth * 1e9)
    tokens = batch * (prompt_tokens + completion_tokens)
    loss_flops = layer_flops_per_token(shape) * tokens + 4 * head * batch * completion_tokens
    if beta > 0:
        loss_flops += 2 * n * tokens + 2 * head * batch * completion_tokens
    generation = prefill + max(decode_compute, decode_memory)
    loss = loss_flops / (gflops * 1e9)
    return {"generation_s": round(generation, 3), "loss_s": round(loss, 3), "step_s": round(generation + loss, 3)}


def sft_roofline(shape: dict[str, int], tokens: float, labelled_tokens: float, gflops: float) -> float:
    """Lower bound (seconds) for an SFT step over `tokens` tokens, `labelled_tokens` of them in the loss."""
    head = shape["V"] * shape["d"]
    return (layer_flops_per_token(shape) * tokens + 4 * head * labelled_tokens) / (gflops * 1e9)


def median_after_first(values: list[float]) -> float | None:
    return round(statistics.median(values[1:]), 3) if len(values) > 1 else None


def step_tokens(rows: list[dict[str, Any]]) -> list[float]:
    """Tokens of each logged step, padding excluded: the differences of TRL's cumulative `num_tokens`."""
    seen, tokens = 0.0, []
    for row in rows:
        tokens.append(row["num_tokens"] - seen)
        seen = row["num_tokens"]
    return tokens


def step_rooflines(
    rows: list[dict[str, Any]],
    kind: str,
    shape: dict[str, int],
    gflops: float,
    bandwidth: float,
    bytes_per_weight: int,
    *,
    labelled_share: float,
    grpo_batch: int,
    grpo_group: int,
    beta: float,
) -> list[float]:
    """Each logged step's roofline (seconds) from the step's own tokens (see the module docstring)."""
    roofs = []
    for row, tokens in zip(rows, step_tokens(rows), strict=True):
        if kind == "sft":
            roofs.append(sft_roofline(shape, tokens, tokens * labelled_share, gflops))
            continue
        completion = row["completions/mean_length"]
        prompt = tokens / grpo_batch - completion
        roof = grpo_roofline(
            shape, grpo_batch // grpo_group, grpo_group, prompt, completion, gflops, bandwidth, bytes_per_weight, beta
        )
        roofs.append(roof["step_s"])
    return roofs


def against_rooflines(times: list[float], roofs: list[float], tokens: list[float]) -> dict[str, Any]:
    """Steps after the first (warm-up) against their own rooflines: the median step's ratio and the sum's."""
    if len(times) < 2:
        return {}
    ratios = [t / r for t, r in zip(times[1:], roofs[1:], strict=True)]
    return {
        "tokens_per_step": [round(t) for t in tokens],
        "roofline_s_per_step": [round(r, 3) for r in roofs],
        "median_step_vs_own_roofline": round(statistics.median(ratios), 2),
        "steps_vs_their_rooflines": round(sum(times[1:]) / sum(roofs[1:]), 2),
    }


def measure(
    config_path: Path, dtype: str, steps: int, data_dir: str | None, extra: list[str]
) -> tuple[dict[str, Any], Any, dict]:
    """Step times in one dtype, with the config and splits they ran on (`extra`: more overrides)."""
    overrides = [
        *extra,
        f"model.dtype={dtype}",
        f"stages.cold_start.max_steps={steps}",
        f"stages.grpo.max_steps={steps}",
    ]
    overrides += [f"stages.{s}.save_steps={steps + 1}" for s in ("cold_start", "grpo")]
    overrides += ["stages.cold_start.warmup_ratio=0.0", "stages.grpo.warmup_ratio=0.0"]
    config = load_config(config_path, overrides=overrides)
    if data_dir:
        config.data_dir = data_dir
    if config.rewards.tau == "auto":
        config.rewards.tau = 0.85  # tau calibration is not what this measures
    splits = split_examples(load_examples(config), config.data.splits, config.seed)
    out: dict[str, Any] = {"dtype": dtype, "dtype_reason": choose_dtype(dtype).reason, "steps": steps}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in ("cold_start", "grpo"):
            stage_dir = Path(tmp) / stage
            init = Path(tmp) / "cold_start" / "model" if stage == "grpo" else None
            started = time.time()
            train_stage(stage, config, splits, stage_dir, init_model=init, resume=False)
            rows = [r for r in read_log(stage_dir / "log.jsonl") if r.get("step_time_s")]
            times = [r["step_time_s"] for r in rows]
            entry: dict[str, Any] = {
                "wall_s": round(time.time() - started, 2),
                "first_step_s": round(times[0], 3) if times else None,
                "median_step_s_after_first": median_after_first(times),
                "step_s": [round(t, 3) for t in times],
            }
            # GRPO's loss passes: positions run forward and backward, padding included (with
            # length_sorted_micro_batches, also what TRL's own micro-batches would have run).
            for key, name in (("padding/positions", "padded_positions"), ("padding/positions_trl", "trl_positions")):
                if any(key in r for r in rows):
                    entry[f"{name}_per_step"] = [r.get(key) for r in rows]
            shares = [r["timing/reward_share"] for r in rows[1:] if "timing/reward_share" in r]
            if shares:
                entry["reward_share_median"] = round(statistics.median(shares), 4)
            lengths = [r["completions/mean_length"] for r in rows if "completions/mean_length" in r]
            if lengths:
                entry["completion_tokens_mean"] = round(statistics.fmean(lengths), 2)
            entry["log_rows"] = rows  # for the per-step rooflines; dropped before writing
            out["sft" if stage == "cold_start" else "grpo"] = entry
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out, config, splits


def labelled_share(tokenizer: Any, config: Any, examples: list[Any]) -> float:
    """The share of an SFT split's tokens that are in the loss (the reference and EOS)."""

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    prompt = sum(count(prompt_text(e.source, config.task)) + 1 for e in examples)  # + BOS
    target = sum(count(" " + e.reference) + 1 for e in examples)  # + EOS
    return target / (prompt + target)


def stage_kind(rows: list[dict[str, Any]]) -> str:
    return "grpo" if any("completions/mean_length" in r for r in rows) else "sft"


def from_run(run_dir: Path, out_path: Path) -> None:
    """Every SFT and GRPO stage of a finished run against its steps' own rooflines."""
    layout = RunLayout(run_dir)
    config = load_config(layout.config)
    splits = load_splits(layout.root)
    tokenizer = load_tokenizer(config.model)
    shape = model_shape(config)
    bandwidth = copy_bandwidth_gbs()
    hw = machine()
    stages: dict[str, Any] = {}
    rates: dict[str, float] = {}
    for stage_dir in sorted(layout.stages.iterdir()):
        manifest = layout.stage(stage_dir.name).manifest
        if not manifest.exists():
            continue
        rows = [r for r in read_log(stage_dir / "log.jsonl") if r.get("step_time_s") and "num_tokens" in r]
        if len(rows) < 2:
            continue
        hardware = json.loads(manifest.read_text())["extra"]["hardware"]
        if hardware["cpu"] != hw["cpu"]:
            print(f"warning: {stage_dir.name} trained on {hardware['cpu']!r}, this machine is {hw['cpu']!r}")
        dtype = hardware["dtype"]
        tokens = step_tokens(rows)
        if dtype not in rates:
            rates[dtype] = matmul_gflops(
                getattr(torch, dtype), int(statistics.median(tokens)), shape["d"], shape["intermediate"]
            )
        stage_cfg = getattr(config.stages, stage_dir.name)
        kind = stage_kind(rows)
        train_splits = getattr(stage_cfg, "splits", None) or [stage_dir.name]
        share = labelled_share(tokenizer, config, [e for name in train_splits for e in splits.get(name, [])][:4000])
        roofs = step_rooflines(
            rows,
            kind,
            shape,
            rates[dtype],
            bandwidth,
            torch.finfo(getattr(torch, dtype)).bits // 8,
            labelled_share=share,
            grpo_batch=stage_cfg.batch_size,
            grpo_group=getattr(stage_cfg, "num_generations", 1),
            beta=getattr(stage_cfg, "beta", 0.0),
        )
        times = [r["step_time_s"] for r in rows]
        stages[stage_dir.name] = {
            "kind": kind,
            "dtype": dtype,
            "trained_on": hardware["cpu"],
            "steps": len(rows),
            "step_time_s_sum": round(sum(times), 1),
            "labelled_share": round(share, 3) if kind == "sft" else None,
            **against_rooflines(times, roofs, tokens),
        }
        st = stages[stage_dir.name]
        print(
            f"{stage_dir.name:<12} {kind:<5} {dtype:<9} {len(rows):>5} steps  {sum(times):>8.1f} s  "
            f"median step {st['median_step_vs_own_roofline']}x its roofline, all steps {st['steps_vs_their_rooflines']}x"
        )
    write_json(
        out_path,
        {
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": hw,
            "run_dir": str(run_dir),
            "config_name": config.name,
            "matmul_gflops": {k: round(v, 1) for k, v in rates.items()},
            "copy_bandwidth_gbs": round(bandwidth, 2),
            "stages": stages,
            "versions": package_versions(),
        },
    )
    print(f"wrote {out_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--from-run", type=Path, default=None, metavar="RUN_DIR", help="a finished run's stages")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/step_time[_run].json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    args = parser.parse_args()
    results_dir = ROOT / "benchmarks" / "results"
    if args.from_run:
        from_run(args.from_run, args.out or results_dir / "step_time_run.json")
        return
    out_path = args.out or results_dir / "step_time.json"

    runs = [measure(args.config, dtype, args.steps, args.data_dir, args.set) for dtype in args.dtypes.split(",")]
    results = [r for r, _, _ in runs]
    _, config, splits = runs[0]
    tokenizer = load_tokenizer(config.model)

    def mean_tokens(texts: list[str]) -> float:
        return statistics.fmean(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)

    rl, cold = splits["rl"], splits["cold_start"]
    rl_prompt = mean_tokens([prompt_text(e.source, config.task) for e in rl]) + 1  # + BOS
    cs_prompt = mean_tokens([prompt_text(e.source, config.task) for e in cold]) + 1
    cs_target = mean_tokens([" " + e.reference for e in cold]) + 1  # + EOS
    shape = model_shape(config)
    grpo_cfg, sft_cfg = config.stages.grpo, config.stages.cold_start
    prompts = grpo_cfg.batch_size // grpo_cfg.num_generations
    bandwidth = copy_bandwidth_gbs()
    for r in results:
        dtype = getattr(torch, r["dtype"])
        tokens = int(sft_cfg.per_device_batch_size * (cs_prompt + cs_target))
        gflops = matmul_gflops(dtype, tokens, shape["d"], shape["intermediate"])
        r["matmul_gflops"] = round(gflops, 1)
        mean_grpo = grpo_roofline(
            shape,
            prompts,
            grpo_cfg.num_generations,
            rl_prompt,
            r["grpo"].get("completion_tokens_mean") or grpo_cfg.max_completion_length,
            gflops,
            bandwidth,
            torch.finfo(dtype).bits // 8,
            grpo_cfg.beta,
        )
        mean_sft = sft_roofline(
            shape, sft_cfg.batch_size * (cs_prompt + cs_target), sft_cfg.batch_size * cs_target, gflops
        )
        r["roofline_of_the_mean_batch"] = {"sft_step_s": round(mean_sft, 3), "grpo": mean_grpo}
        for kind, stage_cfg in (("sft", sft_cfg), ("grpo", grpo_cfg)):
            entry = r[kind]
            rows = entry.pop("log_rows")
            roofs = step_rooflines(
                rows,
                kind,
                shape,
                gflops,
                bandwidth,
                torch.finfo(dtype).bits // 8,
                labelled_share=cs_target / (cs_prompt + cs_target),
                grpo_batch=stage_cfg.batch_size,
                grpo_group=grpo_cfg.num_generations,
                beta=grpo_cfg.beta,
            )
            entry.update(against_rooflines([row["step_time_s"] for row in rows], roofs, step_tokens(rows)))
            entry["vs_roofline"] = entry.get("median_step_vs_own_roofline")
        mean_roofs = (mean_sft, mean_grpo["step_s"])
        for kind, roof in zip(("sft", "grpo"), mean_roofs, strict=True):
            r[kind]["median_step_vs_mean_batch_roofline"] = round(r[kind]["median_step_s_after_first"] / roof, 2)

    hw = machine()
    print(f"{hw['cpu']}, {hw['cores']} cores, {hw['torch_threads']} threads; copy bandwidth {bandwidth:.1f} GB/s")
    print(
        f"{'dtype':<9} {'GFLOP/s':>8} {'SFT s/step':>10} {'x roof':>7} {'GRPO s/step':>11} {'x roof':>7} {'RSS MiB':>8}"
    )
    for r in results:
        print(
            f"{r['dtype']:<9} {r['matmul_gflops']:>8} {r['sft']['median_step_s_after_first']!s:>10} "
            f"{r['sft']['vs_roofline']!s:>7} {r['grpo']['median_step_s_after_first']!s:>11} "
            f"{r['grpo']['vs_roofline']!s:>7} {r['peak_rss_mb']:>8}"
        )
    print("x roof: the median step after the first against the roofline of its own tokens")
    if len(results) == 2:
        for kind in ("sft", "grpo"):
            a, b = (r[kind]["median_step_s_after_first"] for r in results)
            print(f"{kind}: {results[0]['dtype']} / {results[1]['dtype']} step time = {a / b:.2f}x")
    setup = (
        f"{args.config.name}: SFT batch {sft_cfg.batch_size} (mean {cs_prompt:.0f} prompt + {cs_target:.0f} target "
        f"tokens); GRPO {prompts} prompts x G={grpo_cfg.num_generations} (mean {rl_prompt:.0f} prompt tokens, at most "
        f"{grpo_cfg.max_completion_length} new); LoRA r={config.model.lora.r}; model {config.model.name} "
        f"(N={shape['N'] / 1e6:.0f}M non-embedding, V={shape['V']}, d={shape['d']})"
    )
    print(setup)
    write_json(
        out_path,
        {
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": hw,
            "copy_bandwidth_gbs": round(bandwidth, 2),
            "setup": setup,
            "overrides": args.set,
            "versions": package_versions(),
            "results": results,
        },
    )
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
