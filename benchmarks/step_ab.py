"""A/B timings of one speed change at a time, interleaved in one process (the machine is shared).

The same trainer and batch serve both arms, alternated step by step (A, B, A, B, ...), so a change
in the machine's load hits both alike; the load average is recorded. Arms:

- ``lora_dtype``: an SFT optimizer step (forward, backward, AdamW) with PEFT's float32 adapter
  path (A) and with `semrl.train.lora_in_weight_dtype` (B);
- ``attention``: the same SFT step (with `lora_in_weight_dtype`) with SDPA (A) and eager attention (B);
- ``generation``: GRPO-shaped sampling (prompts x G, at most max_completion_length new tokens) of
  the LoRA-wrapped policy, with PEFT's float32 adapter path (A) and `lora_in_weight_dtype` (B);
- ``merged_generation``: the same sampling with PEFT's adapter path (A) and from merged weights,
  rebuilt for each call as GRPO rebuilds them each step (`semrl.train.merged_lora_for_generation`, B);
- ``sampling``: the merged sampling with `torch.multinomial` drawing each token (A) and with
  `semrl.generation.inverse_cdf_sampling_in_generate` (B);
- ``packed_generation``: the merged sampling with torch's plain CPU matmuls (A) and with the merged
  weights packed for oneDNN on entry (`semrl.models.linear_weights_packed`, B; its time includes
  the packing, which GRPO pays once per step);
- ``micro_batches``: the loss passes of one GRPO step (forward and backward of TRL's dapo loss on
  the completions of one sampling, in micro-batches of `per_device_batch_size`), over TRL's
  shuffled micro-batches that keep the whole batch's width (A) and over the same rows regrouped by
  length (`semrl.train.micro_batches.length_sorted_micro_batches`, B);
- ``compile``: the SFT step (with `lora_in_weight_dtype` and `lm_head_in_one_product`) with eager decoder layers (A) and with
  each decoder layer compiled as a stage with `compile_layers: true` runs it
  (`semrl.train.cpu.compiled_decoder_layers`: `torch.compile(dynamic=True)`, regional compilation, B).
  The compiled arm's first call, in the warm-up, includes the compilation (`first_call_s`);
- ``compiled_attention``: that compiled SFT step with SDPA's flash kernel in its layers (A) and with
  attention as products (`semrl.train.cpu.PRODUCT_ATTENTION_MAX_SCORES`, the default), which inductor
  fuses with the rest of the layer (B); `shape.same_weights` as for ``lm_head``. Until 2026-12-06 its
  B arm was transformers' eager attention (`step_ab_compiled_attention.json`);
- ``lm_head``: the SFT step (with `lora_in_weight_dtype`) with TRL's chunked LM head (A) and with
  `semrl.train.cpu.lm_head_in_one_product` (B); `shape.same_weights`: both arms' loss and LoRA gradients on one set of
  weights, and their distance from the same step in float32.

Both arms run inside `semrl.core.memory.freed_memory_kept_for_reuse`, as `train_stage` trains
(`"freed_memory_kept": true` in the JSON); results without that key ran on glibc's defaults, which
penalise the arm with more large temporaries (eager layers against compiled ones: 1.35x there).

    SEMRL_DATA_DIR=../shared/data python benchmarks/step_ab.py --compare lora_dtype [--repeats 3]
        [--out benchmarks/results/step_ab_lora_dtype.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from semrl.config.experiment import load_config
from semrl.core.io import write_json
from semrl.core.memory import freed_memory_kept_for_reuse
from semrl.core.provenance import machine, package_versions
from semrl.data.prompts import prompt_text
from semrl.data.splits import load_examples, split_examples
from semrl.generation import inverse_cdf_sampling_in_generate
from semrl.models import linear_weights_packed, load_policy
from semrl.train import cpu
from semrl.train.cpu import (
    compact_lm_head_on_cpu,
    compiled_decoder_layers,
    lm_head_in_one_product,
    lora_in_weight_dtype,
    merged_lora_for_generation,
)
from semrl.train.micro_batches import length_sorted_micro_batches, padded_positions
from semrl.train.sft import build_sft_trainer

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def attention(model: Any, implementation: str) -> Iterator[None]:
    previous = model.config._attn_implementation
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def sft_trainer(config: Any, splits: Any, tmp: Path, batch_index: int = 0) -> tuple[Any, dict]:
    model, tokenizer = load_policy(config.model)
    trainer = build_sft_trainer("cold_start", config, list(splits["cold_start"]), model, tokenizer, tmp, [], {})
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this bypasses
    batch = next(itertools.islice(trainer.get_train_dataloader(), batch_index, None))
    return trainer, batch


def sft_step(trainer: Any, batch: dict) -> float:
    start = time.perf_counter()
    trainer.training_step(trainer.model, dict(batch))
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()
    return time.perf_counter() - start


def same_weights(trainer: Any, batch: dict, a: tuple[str, Callable], b: tuple[str, Callable]) -> dict[str, float]:
    """The SFT loss and LoRA gradients on the same weights in arm `a` and arm `b` (each a name and a
    context factory, with `lora_in_weight_dtype` as `train_stage` trains), and their distance from
    the same step in float32 (eager, TRL's head): the scale of bfloat16's own rounding."""
    model = trainer.model

    def loss_and_grads(context: Callable = contextlib.nullcontext, model: Any = model) -> tuple[float, torch.Tensor]:
        model.zero_grad()
        with context(), lora_in_weight_dtype(model):
            loss = trainer.compute_loss(model, dict(batch))
            loss.backward()
        grads = torch.cat([p.grad.flatten().double() for p in model.parameters() if p.requires_grad])
        model.zero_grad()
        return float(loss), grads

    (name_a, context_a), (name_b, context_b) = a, b
    loss_a, grads_a = loss_and_grads(context_a)
    loss_b, grads_b = loss_and_grads(context_b)
    float32_loss, float32_grads = loss_and_grads(model=copy.deepcopy(model).float())

    def difference(x: torch.Tensor, y: torch.Tensor) -> float:
        return round(float((x - y).norm() / y.norm()), 6)

    return {
        f"loss_{name_a}": loss_a,
        f"loss_{name_b}": loss_b,
        "loss_float32": float32_loss,
        f"gradient_difference_{name_b}_vs_{name_a}": difference(grads_b, grads_a),
        f"gradient_difference_{name_a}_vs_float32": difference(grads_a, float32_grads),
        f"gradient_difference_{name_b}_vs_float32": difference(grads_b, float32_grads),
    }


@contextlib.contextmanager
def attention_as_products(enabled: bool) -> Iterator[None]:
    """Compiled layers' attention as products (semrl's default) or, with `enabled` false, SDPA
    throughout (the bound at 0, as for score matrices beyond it)."""
    bound = cpu.PRODUCT_ATTENTION_MAX_SCORES
    cpu.PRODUCT_ATTENTION_MAX_SCORES = bound if enabled else 0
    try:
        yield
    finally:
        cpu.PRODUCT_ATTENTION_MAX_SCORES = bound


def arms(
    compare: str, config: Any, splits: Any, tmp: Path, batch_index: int = 0
) -> tuple[dict[str, Callable[[], float]], dict]:
    """The two arms of `compare`: callables that time one step each (SFT on the cold start's batch
    `batch_index`; 0, the first, is its longest: TRL groups by length)."""
    trainer, batch = sft_trainer(config, splits, tmp, batch_index)
    model = trainer.model
    info = {"tokens": int(batch["attention_mask"].sum()), "padded": int(batch["input_ids"].numel())}
    if compare == "lora_dtype":
        return {
            "peft_float32_adapters": lambda: sft_step(trainer, batch),
            "lora_in_weight_dtype": lambda: _in(lora_in_weight_dtype(model), lambda: sft_step(trainer, batch)),
        }, info
    if compare == "attention":
        base = model.get_base_model()  # both arms on top of the default lora_in_weight_dtype
        return {
            "sdpa": lambda: _in(
                attention(base, "sdpa"), lambda: _in(lora_in_weight_dtype(model), lambda: sft_step(trainer, batch))
            ),
            "eager": lambda: _in(
                attention(base, "eager"), lambda: _in(lora_in_weight_dtype(model), lambda: sft_step(trainer, batch))
            ),
        }, info
    if compare == "lm_head":
        info["same_weights"] = same_weights(
            trainer, batch, ("trl", contextlib.nullcontext), ("one_product", lm_head_in_one_product)
        )
        return {
            "trl_chunked_lm_head": lambda: _in(lora_in_weight_dtype(model), lambda: sft_step(trainer, batch)),
            "lm_head_in_one_product": lambda: _in(
                lm_head_in_one_product(), lambda: _in(lora_in_weight_dtype(model), lambda: sft_step(trainer, batch))
            ),
        }, info
    if compare in ("compile", "compiled_attention"):
        # Both arms with the LM head as `train_stage` runs it (in one product), so the ratio is the
        # layers' alone.
        def step() -> float:
            return _in(
                lm_head_in_one_product(), lambda: _in(lora_in_weight_dtype(model), lambda: sft_step(trainer, batch))
            )

        if compare == "compile":
            return {"eager": step, "compiled_layers": lambda: _in(compiled_decoder_layers(model), step)}, info
        info["same_weights"] = same_weights(
            trainer,
            batch,
            ("sdpa", lambda: _both(compiled_decoder_layers(model), attention_as_products(False))),
            ("products", lambda: _both(compiled_decoder_layers(model), attention_as_products(True))),
        )
        return {
            arm: lambda enabled=enabled: _in(
                attention_as_products(enabled), lambda: _in(compiled_decoder_layers(model), step)
            )
            for arm, enabled in (("sdpa", False), ("products", True))
        }, info
    if compare in ("generation", "merged_generation", "sampling", "packed_generation", "micro_batches"):
        cfg = config.stages.grpo
        tokenizer = trainer.processing_class
        prompts = [prompt_text(e.source, config.task) for e in splits["rl"][: cfg.batch_size // cfg.num_generations]]
        enc = tokenizer([p for p in prompts for _ in range(cfg.num_generations)], return_tensors="pt", padding=True)
        info = {"sequences": len(enc["input_ids"]), "prompt_tokens": int(enc["attention_mask"].sum())}

        def generate() -> float:
            torch.manual_seed(0)
            model.eval()
            start = time.perf_counter()
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    max_new_tokens=cfg.max_completion_length,
                    do_sample=True,
                    temperature=cfg.temperature,
                    top_p=cfg.top_p,
                    pad_token_id=tokenizer.pad_token_id,
                )
            info["new_tokens"] = out.shape[1] - enc["input_ids"].shape[1]
            return time.perf_counter() - start

        if compare == "packed_generation":
            return {
                "plain_weights": lambda: _in(
                    merged_lora_for_generation(model), lambda: _in(inverse_cdf_sampling_in_generate(), generate)
                ),
                "packed_weights": lambda: _in(
                    merged_lora_for_generation(model),
                    lambda: _timed_in(
                        linear_weights_packed(model), lambda: _in(inverse_cdf_sampling_in_generate(), generate)
                    ),
                ),
            }, info
        if compare == "micro_batches":
            return grpo_loss_arms(model, tokenizer, enc, cfg, info)
        if compare == "sampling":
            return {
                "torch_multinomial": lambda: _in(merged_lora_for_generation(model), generate),
                "inverse_cdf": lambda: _in(
                    merged_lora_for_generation(model), lambda: _in(inverse_cdf_sampling_in_generate(), generate)
                ),
            }, info
        if compare == "merged_generation":
            # B's time includes the merge: GRPO pays it once per step.
            return {
                "peft_adapters": generate,
                "merged_adapters": lambda: _timed_in(merged_lora_for_generation(model), generate),
            }, info
        return {
            "peft_float32_adapters": generate,
            "lora_in_weight_dtype": lambda: _in(lora_in_weight_dtype(model), generate),
        }, info
    raise SystemExit(f"unknown --compare {compare!r}")


def grpo_loss_arms(
    model: Any, tokenizer: Any, enc: dict, cfg: Any, info: dict
) -> tuple[dict[str, Callable[[], float]], dict]:
    """One sampling's completions as TRL 1.16 batches them (prompts padded left, completions right,
    each to the batch's longest; rows shuffled and cut into micro-batches), and the same rows
    regrouped by length; each arm times the dapo loss's forward and backward over its micro-batches."""
    torch.manual_seed(0)
    model.eval()
    with torch.no_grad(), merged_lora_for_generation(model), inverse_cdf_sampling_in_generate():
        out = model.generate(
            **enc, max_new_tokens=cfg.max_completion_length, do_sample=True, temperature=cfg.temperature,
            top_p=cfg.top_p, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    model.train()
    width = enc["input_ids"].shape[1]
    completion_ids = out[:, width:]
    # TRL's mask: every token up to and including the first end-of-sequence token.
    is_eos = completion_ids == tokenizer.eos_token_id
    first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), completion_ids.shape[1])
    completion_mask = (torch.arange(completion_ids.shape[1])[None] <= first_eos[:, None]).long()
    batch = {
        "prompt_ids": enc["input_ids"],
        "prompt_mask": enc["attention_mask"],
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.randn(len(completion_ids), generator=torch.Generator().manual_seed(0)),
        "num_items_in_batch": completion_mask.sum(),
    }
    order = torch.randperm(len(completion_ids), generator=torch.Generator().manual_seed(0))
    size = cfg.per_device_batch_size or len(order)
    trl_batches = [
        {k: v if v.ndim == 0 else v[order[i : i + size]] for k, v in batch.items()} for i in range(0, len(order), size)
    ]
    regrouped = length_sorted_micro_batches(trl_batches) or trl_batches
    info.update(
        completion_tokens=int(completion_mask.sum()),
        trl_positions=padded_positions(trl_batches),
        length_sorted_positions=padded_positions(regrouped),
    )

    def loss_passes(micro_batches: list[dict]) -> float:
        start = time.perf_counter()
        for mb in micro_batches:
            ids = torch.cat([mb["prompt_ids"], mb["completion_ids"]], 1)
            mask = torch.cat([mb["prompt_mask"], mb["completion_mask"]], 1)
            keep = mb["completion_ids"].shape[1]
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep + 1).logits[:, :-1]
            logps = torch.log_softmax(logits.float(), -1).gather(-1, mb["completion_ids"][..., None])[..., 0]
            loss = (-mb["advantages"][:, None] * logps * mb["completion_mask"]).sum() / mb["num_items_in_batch"]
            loss.backward()
        model.zero_grad()
        return time.perf_counter() - start

    return {
        "trl_micro_batches": lambda: _in(lora_in_weight_dtype(model), lambda: loss_passes(trl_batches)),
        "length_sorted": lambda: _in(lora_in_weight_dtype(model), lambda: loss_passes(regrouped)),
    }, info


def _in(context: Any, fn: Callable[[], float]) -> float:
    with context:
        return fn()


@contextlib.contextmanager
def _both(outer: Any, inner: Any) -> Iterator[None]:
    with outer, inner:
        yield


def _timed_in(context: Any, fn: Callable[[], float]) -> float:
    """As `_in`, but the time includes entering and leaving `context`."""
    start = time.perf_counter()
    with context:
        fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument(
        "--compare",
        required=True,
        choices=[
            "lora_dtype",
            "attention",
            "generation",
            "merged_generation",
            "sampling",
            "packed_generation",
            "micro_batches",
            "compile",
            "compiled_attention",
            "lm_head",
        ],
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=0, help="which cold-start batch (0: the longest)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--data-dir", default=os.environ.get("SEMRL_DATA_DIR"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    config = load_config(args.config, overrides=[f"model.dtype={args.dtype}"])
    if args.data_dir:
        config.data_dir = args.data_dir
    splits = split_examples(load_examples(config), config.data.splits, config.seed)
    load_before = os.getloadavg()
    # As `train_stage` trains: without the block, eager kernels' many large temporaries fault their
    # pages in again each step, which fused (compiled) kernels avoid, and the arms' ratio inflates.
    with tempfile.TemporaryDirectory() as tmp, compact_lm_head_on_cpu(), freed_memory_kept_for_reuse():
        timed, info = arms(args.compare, config, splits, Path(tmp), args.batch)
        first_call = {}
        for name, fn in timed.items():  # warm-up: oneDNN picks its kernels (torch.compile compiles) on the first call
            start = time.perf_counter()
            fn()
            first_call[name] = round(time.perf_counter() - start, 2)
        times: dict[str, list[float]] = {name: [] for name in timed}
        for _ in range(args.repeats):
            for name, fn in timed.items():
                times[name].append(round(fn(), 3))
    load_after = os.getloadavg()
    (a, ta), (b, tb) = times.items()
    ratio = statistics.median(ta) / statistics.median(tb)
    hw = machine()
    summary = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "compare": args.compare,
        "machine": hw,
        "dtype": args.dtype,
        "load_average": [round(load_before[0], 2), round(load_after[0], 2)],
        "config": args.config.name,
        "freed_memory_kept": True,
        "shape": info,
        "seconds": times,
        "first_call_s": first_call,
        "median_s": {name: round(statistics.median(t), 3) for name, t in times.items()},
        "ratio_a_over_b": round(ratio, 2),
        "versions": package_versions(),
    }
    print(f"{hw['cpu']}, {hw['cores']} cores, {args.dtype}, load {load_before[0]:.1f} -> {load_after[0]:.1f}; {info}")
    for name, t in times.items():
        print(f"  {name:<24} median {statistics.median(t):7.3f} s  {t}")
    print(f"  {a} / {b} = {ratio:.2f}x")
    out = args.out or ROOT / "benchmarks" / "results" / f"step_ab_{args.compare}.json"
    write_json(out, summary)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
