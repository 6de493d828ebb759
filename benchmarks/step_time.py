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
- the loss: forward and backward over B (P + T) tokens, 4 N per token with frozen weights (LoRA's own
  FLOPs are negligible), and 4 V d per completion token for the LM head (TRL projects only labelled
  positions; `semrl.train.cpu.compact_lm_head_on_cpu`). TRL 1.16 takes the entropy in the same
  fused tile pass as the log-probabilities, so it costs no second pass over the 262k logits.
  beta > 0 adds a reference forward (2 N per token), counted when the config sets it.
Attention's own FLOPs (quadratic in length) are left out: at these lengths (< 256 tokens) they are
a few percent of the projections.

    SEMRL_DATA_DIR=../shared/data python benchmarks/step_time.py [--config configs/demo.yaml]
        [--steps 4] [--dtypes float32,bfloat16] [--set stages.grpo.merged_generation=false]
        [--out benchmarks/results/step_time.json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from semrl.config.experiment import load_config
from semrl.core.io import write_json
from semrl.core.provenance import machine, package_versions, peak_rss_mb
from semrl.data.prompts import prompt_text
from semrl.data.splits import load_examples, split_examples
from semrl.models import choose_dtype, load_tokenizer
from semrl.train.callbacks import read_log
from semrl.train.stage import train_stage

ROOT = Path(__file__).resolve().parents[1]


def matmul_gflops(dtype: torch.dtype, m: int, k: int, n: int, repeats: int = 5) -> float:
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b  # warm-up: oneDNN picks its kernel on the first call
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9


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
    return {"N": layers * (attention + 3 * d * inter), "V": mc.vocab_size, "d": d, "intermediate": inter}


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
    loss_flops = 4 * n * tokens + 4 * head * batch * completion_tokens
    if beta > 0:
        loss_flops += 2 * n * tokens + 2 * head * batch * completion_tokens
    generation = prefill + max(decode_compute, decode_memory)
    loss = loss_flops / (gflops * 1e9)
    return {"generation_s": round(generation, 3), "loss_s": round(loss, 3), "step_s": round(generation + loss, 3)}


def sft_roofline(shape: dict[str, int], batch: int, prompt_tokens: float, target_tokens: float, gflops: float) -> float:
    n, head = shape["N"], shape["V"] * shape["d"]
    flops = 4 * n * batch * (prompt_tokens + target_tokens) + 4 * head * batch * target_tokens
    return round(flops / (gflops * 1e9), 3)


def median_after_first(values: list[float]) -> float | None:
    return round(statistics.median(values[1:]), 3) if len(values) > 1 else None


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
            }
            shares = [r["timing/reward_share"] for r in rows[1:] if "timing/reward_share" in r]
            if shares:
                entry["reward_share_median"] = round(statistics.median(shares), 4)
            lengths = [r["completions/mean_length"] for r in rows if "completions/mean_length" in r]
            if lengths:
                entry["completion_tokens_mean"] = round(statistics.fmean(lengths), 2)
            out["sft" if stage == "cold_start" else "grpo"] = entry
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out, config, splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "step_time.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    args = parser.parse_args()

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
        r["matmul_gflops"] = round(matmul_gflops(dtype, tokens, shape["d"], shape["intermediate"]), 1)
        r["roofline"] = {
            "sft_step_s": sft_roofline(shape, sft_cfg.batch_size, cs_prompt, cs_target, r["matmul_gflops"]),
            "grpo": grpo_roofline(
                shape,
                prompts,
                grpo_cfg.num_generations,
                rl_prompt,
                r["grpo"].get("completion_tokens_mean") or grpo_cfg.max_completion_length,
                r["matmul_gflops"],
                bandwidth,
                torch.finfo(dtype).bits // 8,
                grpo_cfg.beta,
            ),
        }
        r["sft"]["vs_roofline"] = round(r["sft"]["median_step_s_after_first"] / r["roofline"]["sft_step_s"], 2)
        r["grpo"]["vs_roofline"] = round(r["grpo"]["median_step_s_after_first"] / r["roofline"]["grpo"]["step_s"], 2)

    hw = machine()
    print(f"{hw['cpu']}, {hw['cores']} cores, {hw['torch_threads']} threads; copy bandwidth {bandwidth:.1f} GB/s")
    print(
        f"{'dtype':<9} {'GFLOP/s':>8} {'SFT s/step':>10} {'(roof)':>7} {'GRPO s/step':>11} {'(roof)':>7} {'RSS MiB':>8}"
    )
    for r in results:
        print(
            f"{r['dtype']:<9} {r['matmul_gflops']:>8} {r['sft']['median_step_s_after_first']!s:>10} "
            f"{r['roofline']['sft_step_s']:>7} {r['grpo']['median_step_s_after_first']!s:>11} "
            f"{r['roofline']['grpo']['step_s']:>7} {r['peak_rss_mb']:>8}"
        )
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
        args.out,
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
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
