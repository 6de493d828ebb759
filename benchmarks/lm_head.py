"""TRL's fused LM head on CPU, its own chunked kernel against `semrl.train.cpu.lm_head_in_one_product`.

For Gemma 3 270M's head shape (262,144 x 640, random weights) and `--rows` labelled positions, it
times the forward (log-probabilities and the per-token outputs TRL's trainers ask for) and the
backward of a loss over the log-probabilities (and the entropy, with `--entropy-gradient`), both
arms alternated `--repeats` times in one process inside `freed_memory_kept_for_reuse` (as
`train_stage` trains: without it every fresh float32 chunk of TRL's kernel faults its pages in again),
and compares the hidden states' gradients with a float64 reference.

    python benchmarks/lm_head.py [--rows 592] [--dtype bfloat16] [--temperature 1.0] [--entropy-gradient]
        [--outputs entropy,is_top1] [--repeats 3] [--out benchmarks/results/lm_head.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from semrl.core.io import write_json
from semrl.core.memory import freed_memory_kept_for_reuse
from semrl.core.provenance import machine, package_versions
from semrl.train.cpu import lm_head_in_one_product

ROOT = Path(__file__).resolve().parents[1]
VOCAB, WIDTH, CHUNK = 262_144, 640, 32_768  # Gemma 3 270M's head; TRL's vocabulary chunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=592, help="labelled positions (the cold start's longest batch)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--entropy-gradient", action="store_true", help="the loss includes the entropy")
    parser.add_argument("--outputs", default="entropy,is_top1", help="TRL's SFT trainer: entropy,is_top1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lm_head.json")
    args = parser.parse_args()
    import trl.trainer.utils as trl_utils

    dtype = getattr(torch, args.dtype)
    outputs = tuple(o for o in args.outputs.split(",") if o)
    generator = torch.Generator().manual_seed(0)
    head = (torch.randn(VOCAB, WIDTH, generator=generator) * 0.05).to(dtype)
    hidden = (torch.randn(args.rows, WIDTH, generator=generator) * 1.5).to(dtype)
    targets = torch.randint(0, VOCAB, (args.rows,), generator=generator)
    weights = torch.randn(2, args.rows, generator=generator)

    def step() -> tuple[float, float, torch.Tensor]:
        h = hidden.clone().requires_grad_()
        start = time.perf_counter()
        out = trl_utils._ChunkedLogProbFunction.apply(
            h, head, None, targets, args.temperature, CHUNK, None, 1.0, outputs
        )
        middle = time.perf_counter()
        loss = (out[0] * weights[0]).sum()
        if args.entropy_gradient:
            loss = loss + (out[1] * weights[1]).sum()
        loss.backward()
        return middle - start, time.perf_counter() - middle, h.grad

    def in_one_product() -> tuple[float, float, torch.Tensor]:
        with lm_head_in_one_product():
            return step()

    arms = {"trl_chunked": step, "in_one_product": in_one_product}
    times: dict[str, dict[str, list[float]]] = {name: {"forward_s": [], "backward_s": []} for name in arms}
    grads: dict[str, torch.Tensor] = {}
    load_before = os.getloadavg()
    with freed_memory_kept_for_reuse():
        for _ in range(args.repeats + 1):  # the first round warms both arms up
            for name, arm in arms.items():
                forward, backward, grads[name] = arm()
                times[name]["forward_s"].append(round(forward, 3))
                times[name]["backward_s"].append(round(backward, 3))
    for name in arms:
        times[name] = {k: v[1:] for k, v in times[name].items()}
    exact_hidden = hidden.double().requires_grad_()
    log_probs = torch.log_softmax(exact_hidden @ head.double().t() / args.temperature, -1)
    loss = (log_probs.gather(-1, targets[:, None]).squeeze(-1) * weights[0]).sum()
    if args.entropy_gradient:
        loss = loss - ((log_probs.exp() * log_probs).sum(-1) * weights[1]).sum()
    loss.backward()

    def distance(a: torch.Tensor, b: torch.Tensor) -> float:
        return round(float((a.double() - b.double()).norm() / b.double().norm()), 7)

    medians = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
    hw = machine()
    summary = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": hw,
        "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "shape": {"rows": args.rows, "vocab": VOCAB, "width": WIDTH, "dtype": args.dtype, "outputs": outputs},
        "temperature": args.temperature,
        "entropy_gradient": args.entropy_gradient,
        "seconds": times,
        "median_s": medians,
        "speed_up": {
            k: round(medians["trl_chunked"][k] / medians["in_one_product"][k], 2) for k in ("forward_s", "backward_s")
        },
        "gradient_distance": {
            "trl_chunked_vs_float64": distance(grads["trl_chunked"], exact_hidden.grad),
            "in_one_product_vs_float64": distance(grads["in_one_product"], exact_hidden.grad),
            "in_one_product_vs_trl_chunked": distance(grads["in_one_product"], grads["trl_chunked"]),
        },
        "versions": package_versions(),
    }
    print(f"{hw['cpu']}, {hw['cores']} cores, {args.dtype}, {args.rows} rows, load {summary['load_average']}")
    for name, m in medians.items():
        print(f"  {name:<16} forward {m['forward_s']:.3f} s  backward {m['backward_s']:.3f} s")
    print(f"  speed-up {summary['speed_up']}; gradient distance {summary['gradient_distance']}")
    write_json(args.out, summary)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
