"""One decode step's matrix products at the model's shapes, in float32 and bfloat16: as
`torch.nn.functional.linear` runs them, and with the weight packed once for oneDNN
(`torch.ops.mkldnn._reorder_linear_weight`, what inductor's CPU freezing does and what
`semrl.models.pack_linear_weights` uses), with the weight bytes each reads per second and how far the
packed product is from the plain one (bfloat16: equal to the bit; float32: summed in another order).

A decode step multiplies a few rows (1 for lm-eval's batches of 2 near their end, 16 for GRPO's
samples, up to 120 for the evaluation's test outputs) by every weight of the model. On a CPU that is
bound by reading the weights, so the figure to compare with is the machine's copy bandwidth; 1,024
rows is a prefill.

    python benchmarks/decode_matmul.py [--config configs/demo.yaml] [--rows 1,16,120,1024]
        [--out benchmarks/results/decode_matmul.json]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
from step_time import copy_bandwidth_gbs, model_shape

from semrl.config.experiment import load_config
from semrl.core.io import write_json
from semrl.core.provenance import machine, package_versions

ROOT = Path(__file__).resolve().parents[1]


def best_ms(fn: Callable[[], torch.Tensor], repeats: int = 10, trials: int = 3) -> float:
    fn()
    fn()  # warm-up: oneDNN builds its primitive on the first calls
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best * 1e3


def measure(out_features: int, in_features: int, rows: int) -> dict[str, float | bool]:
    result: dict[str, float | bool] = {}
    x32 = torch.randn(rows, in_features)
    w32 = torch.randn(out_features, in_features) * in_features**-0.5
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        x, w = x32.to(dtype), w32.to(dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)

        def plain_linear(x: torch.Tensor = x, w: torch.Tensor = w) -> torch.Tensor:
            return torch.nn.functional.linear(x, w)

        def packed_linear(x: torch.Tensor = x, packed: torch.Tensor = packed) -> torch.Tensor:
            return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")

        plain_ms, packed_ms = best_ms(plain_linear), best_ms(packed_linear)
        weight_gb = w.numel() * w.element_size() / 1e9
        result.update(
            {
                f"{name}_ms": round(plain_ms, 3),
                f"{name}_packed_ms": round(packed_ms, 3),
                f"{name}_weight_gbs": round(weight_gb / (plain_ms / 1e3), 1),
                f"{name}_packed_weight_gbs": round(weight_gb / (packed_ms / 1e3), 1),
                f"{name}_packed_max_abs_difference": float((packed_linear() - plain_linear()).abs().max()),
            }
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--rows", default="1,16,120,1024")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "decode_matmul.json")
    args = parser.parse_args()

    config = load_config(args.config)
    shape = model_shape(config)
    d, inter, vocab = shape["d"], shape["intermediate"], shape["V"]
    # (name, out_features, in_features): the MLP's up/gate and down projections, and the LM head.
    shapes = [("mlp_up", inter, d), ("mlp_down", d, inter), ("lm_head", vocab, d)]
    bandwidth = copy_bandwidth_gbs()
    hw = machine()
    print(f"{hw['cpu']}, {hw['cores']} cores; copy bandwidth {bandwidth:.1f} GB/s")
    print(
        f"{'weight':<9} {'rows':>5} {'f32 ms':>8} {'packed':>8} {'bf16 ms':>8} {'packed':>8}  max |packed - plain| f32, bf16"
    )
    results = []
    for name, out_features, in_features in shapes:
        for rows in (int(r) for r in args.rows.split(",")):
            if name == "lm_head" and rows > 120:
                continue  # generation projects only the last position; 1,024 rows of 262k logits take minutes here
            r = {"weight": name, "out_features": out_features, "in_features": in_features, "rows": rows}
            r.update(measure(out_features, in_features, rows))
            results.append(r)
            print(
                f"{name:<9} {rows:>5} {r['float32_ms']:>8} {r['float32_packed_ms']:>8} {r['bfloat16_ms']:>8} "
                f"{r['bfloat16_packed_ms']:>8}  {r['float32_packed_max_abs_difference']:.1e}, "
                f"{r['bfloat16_packed_max_abs_difference']:.1e}"
            )
    write_json(
        args.out,
        {
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": hw,
            "load_average": [round(v, 2) for v in os.getloadavg()[:2]],
            "copy_bandwidth_gbs": round(bandwidth, 2),
            "model": config.model.name,
            "results": results,
            "versions": package_versions(),
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
