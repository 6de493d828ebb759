"""The evaluation's test-output generation with and without compact batches, on a finished run.

For one method of a run (its trained model, as `semrl run` evaluates it: the evaluation dtype,
the run's test split and generation settings), it generates every test output twice, through
`semrl.generation.generate_completions` with `compact_batches=False` (transformers' `generate` on
batches in the caller's order, every row running until its batch's longest ends: the path before)
and `compact_batches=True` (length-sorted batches that release finished rows), alternating the arms
`--repeats` times in one process so the machine's load hits both alike. It reports the seconds of
each, their ratio, and how many outputs differ (the change is meant to leave every output as it was).
With `--before unchunked_prefill` the first arm is compact batches without the chunked prefill
(`semrl.generation.prefill_in_length_chunks`), so the second arm's gain is the chunking's alone.
Each arm runs inside `freed_memory_kept_for_reuse(release_after=True)`, as the evaluation does.

    SEMRL_DATA_DIR=../shared/data python benchmarks/eval_generation.py --run runs/study --method rft
        [--before whole_batches|unchunked_prefill] [--repeats 1] [--out benchmarks/results/eval_generation.json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from semrl import generation
from semrl.config.experiment import load_config
from semrl.core.io import write_json
from semrl.core.layout import RunLayout
from semrl.core.memory import freed_memory_kept_for_reuse
from semrl.core.provenance import machine, package_versions
from semrl.data.prompts import build_prompt
from semrl.eval.task import evaluation_examples
from semrl.generation import generate_completions
from semrl.models import load_policy
from semrl.pipeline.evaluate import method_model_dirs

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _prefill_chunk_rows(rows: int) -> Iterator[None]:
    """`generation.PREFILL_CHUNK_ROWS` set to `rows` while the block lasts (more than a batch: no chunks)."""
    previous, generation.PREFILL_CHUNK_ROWS = generation.PREFILL_CHUNK_ROWS, rows
    try:
        yield
    finally:
        generation.PREFILL_CHUNK_ROWS = previous


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run directory")
    parser.add_argument("--method", default="rft", help="the method whose model generates")
    parser.add_argument("--before", choices=["whole_batches", "unchunked_prefill"], default="whole_batches")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "eval_generation.json")
    args = parser.parse_args()

    config = load_config(RunLayout(args.run).config)
    ev = config.evaluation
    model_cfg = config.model if ev.dtype == "model" else config.model.model_copy(update={"dtype": ev.dtype})
    model_dir = method_model_dirs(config, args.run)[args.method]
    model, tokenizer = load_policy(model_cfg, model_dir if args.method != "base" else None)
    examples = evaluation_examples(config, args.run)
    prompts = [build_prompt(e.source, config.task, tokenizer) for e in examples]

    seconds: dict[str, list[float]] = {"before": [], "compact_batches": []}
    outputs: dict[str, list[str]] = {}
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        for arm, compact in (("before", args.before == "unchunked_prefill"), ("compact_batches", True)):
            chunk_rows = len(prompts) + 1 if arm == "before" else generation.PREFILL_CHUNK_ROWS
            started = time.perf_counter()
            with freed_memory_kept_for_reuse(release_after=True), _prefill_chunk_rows(chunk_rows):
                outputs[arm] = generate_completions(model, tokenizer, prompts, ev.generation, compact_batches=compact)
            seconds[arm].append(round(time.perf_counter() - started, 2))
            print(f"{arm}: {seconds[arm][-1]:.1f}s", flush=True)
    load_after = os.getloadavg()
    median = {arm: statistics.median(s) for arm, s in seconds.items()}
    differ = [i for i, (a, b) in enumerate(zip(outputs["before"], outputs["compact_batches"])) if a != b]
    summary = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "dtype": str(model.dtype).removeprefix("torch."),
        "load_average": [round(load_before[0], 2), round(load_after[0], 2)],
        "run": str(args.run),
        "config": config.name,
        "method": args.method,
        "before": args.before,
        "freed_memory_kept": True,
        "shape": {
            "test_outputs": len(prompts),
            "batch_size": ev.generation.batch_size,
            "max_new_tokens": ev.generation.max_new_tokens,
        },
        "seconds": seconds,
        "median_s": median,
        "speedup": round(median["before"] / median["compact_batches"], 3),
        "outputs_differing": len(differ),
        "differing_examples": [
            {"index": i, "before": outputs["before"][i], "compact_batches": outputs["compact_batches"][i]}
            for i in differ[:5]
        ],
        "versions": package_versions(),
    }
    write_json(args.out, summary)
    print(
        f"{len(prompts)} outputs: {median['before']:.1f}s before, {median['compact_batches']:.1f}s with compact "
        f"batches ({summary['speedup']:.2f}x); {len(differ)} outputs differ -> {args.out}"
    )


if __name__ == "__main__":
    main()
