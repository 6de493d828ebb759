"""General benchmarks and drift: what a model lost in general competence (the alignment tax).

- Loaders for the general sets, read from a data directory (`--data-dir` / $SEMRL_DATA_DIR;
  see each folder's SOURCE.md) or, when it lacks them, fetched from their public origin:
  CMRC 2018 dev (SQuAD JSON, GitHub ymcui/cmrc2018), MMLU test (hub cais/mmlu), GSM8K test
  (GitHub openai/grade-school-math). Fixed seeded subsets keep every method on the same items.
- `evaluate_general` runs them through lm-evaluation-harness. `mmlu` and `gsm8k` are lm-eval's
  own task YAMLs (`lm_eval/tasks/mmlu/default/_default_template_yaml`, `lm_eval/tasks/gsm8k/
  gsm8k.yaml`), so prompts, stop sequences, answer extraction and scoring are exactly the
  published ones; `cmrc2018` is semrl's (lm-eval has none), shipped in `eval/tax/tasks/`. Per run,
  semrl writes the prepared subset as JSONL plus a small YAML that includes the base YAML and
  overrides only the data (`dataset_path: json`, `data_files`, splits), so the harness never
  touches the hub for them. Any other name is passed to lm-eval as one of its own tasks (these
  need the hub or a populated HF cache).
- `measure_drift`: per-example NLL increase over the base model and per-token KL on general
  text; `TaxMeterCallback` tracks the NLL increase during training.

All benchmark scores are fractions in [0, 1] (the paper prints CMRC as 0-100: multiply by 100).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from semrl.config.evaluation import BenchmarkConfig
from semrl.core.errors import ConfigError, DataError
from semrl.core.io import write_jsonl, write_text
from semrl.data.general import LOADERS, seeded_indices
from semrl.eval.metrics import cmrc_em_f1
from semrl.eval.tax.likelihood import continuation_scores, per_char_logprobs

logger = logging.getLogger(__name__)


TASKS_DIR = Path(__file__).with_name("tasks")


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def process_cmrc2018(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """lm-eval `process_results` for semrl_cmrc2018: EM, F1 and their mean for one answer.
    (Hand-written because lm-eval has no CMRC task; the F1 follows CMRC's official script.)"""
    em, f1 = cmrc_em_f1(_first_line(results[0]), doc["answers"])
    return {"avg": (em + f1) / 2, "em": em, "f1": f1}


@dataclass
class BenchmarkResult:
    """One benchmark's score (a fraction in [0, 1]) with its per-item values, aligned with the
    items evaluated (the same items for every model with the same seed and limit)."""

    name: str
    metric: str
    score: float
    per_example: list[float]
    n: int
    details: dict[str, Any] = field(default_factory=dict)


def _lm_eval_tasks_dir() -> Path:
    """lm-eval's task folder, found without importing lm_eval (slow, and optional)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "general benchmarks (evaluation.benchmarks) run on lm-evaluation-harness, which is not installed: "
            "pip install 'semrl[eval]', or set evaluation.benchmarks: [] to skip them"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


@dataclass(frozen=True)
class SemrlTask:
    """A benchmark semrl runs offline on a prepared subset: the YAML it includes (under semrl's
    `eval/tax/tasks/` or lm-eval's task folder), the task name it registers, its headline metric
    and the lm-eval filter that metric is reported under."""

    base: str
    lm_eval_owned: bool
    task: str
    metric: str
    filter: str = "none"

    @property
    def base_path(self) -> Path:
        return (_lm_eval_tasks_dir() if self.lm_eval_owned else TASKS_DIR) / self.base


# The MMLU subset mixes subjects in one task; lm-eval's per-subject YAMLs differ only in this
# description, which its _generate_configs.py writes from the subject name.
MMLU_DESCRIPTION = "The following are multiple choice questions (with answers) about {{subject.replace('_', ' ')}}.\n\n"

SEMRL_TASKS: dict[str, SemrlTask] = {
    "cmrc2018": SemrlTask("cmrc2018.yaml", False, "semrl_cmrc2018", "avg"),
    "mmlu": SemrlTask("mmlu/default/_default_template_yaml", True, "semrl_mmlu", "acc"),
    "gsm8k": SemrlTask("gsm8k/gsm8k.yaml", True, "semrl_gsm8k", "exact_match", "flexible-extract"),
}


FEWSHOT_POOL = 64  # rows outside the evaluated subset that few-shot examples are drawn from


@contextlib.contextmanager
def _preserved_state(model: Any) -> Iterator[None]:
    """lm-eval reseeds the global RNGs and puts the model in eval mode; undo both afterwards so
    that evaluating in the middle of a run does not change what follows."""
    # torch.random.fork_rng covers torch's CPU and CUDA generators; Python's and NumPy's, which
    # lm-eval reseeds too, have no library helper and are restored by hand.
    py, np_state = random.getstate(), np.random.get_state()
    was_training = getattr(model, "training", False)
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        model.train(was_training)


def _base_task(path: Path) -> dict[str, Any]:
    """A base task YAML as a dict (lm-eval's `!function` tags read as plain strings)."""
    loader = type("_TaskLoader", (yaml.SafeLoader,), {})
    loader.add_constructor("!function", lambda ld, node: ld.construct_scalar(node))
    return yaml.load(path.read_text(encoding="utf-8"), Loader=loader)


def _fewshot_pool(bench: BenchmarkConfig, rows: Sequence[Any], chosen: Sequence[int], seed: int) -> list[int]:
    """The rows few-shot examples are drawn from (none without `num_fewshot`): items outside the
    evaluated subset, so that no item is shown its own answer."""
    if not bench.num_fewshot:
        return []
    taken = set(chosen)
    rest = [i for i in range(len(rows)) if i not in taken]
    random.Random(seed + 1).shuffle(rest)
    pool = rest[: max(FEWSHOT_POOL, bench.num_fewshot)]
    if len(pool) < bench.num_fewshot:
        raise ConfigError(
            f"evaluation.benchmarks[{bench.name}].num_fewshot={bench.num_fewshot}: only {len(pool)} items are "
            f"left outside the evaluated subset of {len(chosen)}; lower limit or num_fewshot"
        )
    return sorted(pool)


def _generation_kwargs(bench: BenchmarkConfig) -> dict[str, Any] | None:
    """A semrl benchmark's generation settings with `max_gen_toks` applied (None: the shipped ones).

    lm-eval's `include` replaces a whole top-level key, so the base generation_kwargs are copied
    and only the cap changed."""
    if bench.max_gen_toks is None:
        return None
    shipped = _base_task(SEMRL_TASKS[bench.name].base_path).get("generation_kwargs")
    if shipped is None:
        raise ConfigError(
            f"evaluation.benchmarks[{bench.name}].max_gen_toks: {bench.name} is scored by log-likelihood and "
            f"generates nothing; remove max_gen_toks"
        )
    return {**shipped, "max_gen_toks": bench.max_gen_toks}


def check_benchmarks(benchmarks: Sequence[BenchmarkConfig], data_dir: str | Path | None, seed: int) -> None:
    """What `evaluate_general` will need, checked before a run trains anything: lm-evaluation-
    harness, distinct names, each semrl benchmark's data (read from the data directory, or
    downloaded into the cache now) and the settings only preparing its task would reject.
    lm-eval's own tasks are not looked up here (indexing them takes ~20 s)."""
    if not benchmarks:
        return
    _lm_eval_tasks_dir()
    _check_distinct(benchmarks)
    for bench in benchmarks:
        if bench.name in SEMRL_TASKS:
            rows = LOADERS[bench.name](data_dir)
            chosen = seeded_indices(rows, bench.limit, seed, stratify="subject" if bench.name == "mmlu" else None)
            _fewshot_pool(bench, rows, chosen, seed)
            _generation_kwargs(bench)


def _check_distinct(benchmarks: Sequence[BenchmarkConfig]) -> None:
    names = [b.name for b in benchmarks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"evaluation.benchmarks: {duplicates} listed more than once")


def prepare_task(
    bench: BenchmarkConfig, data_dir: str | Path | None, seed: int, out_dir: str | Path
) -> tuple[str, Path]:
    """Write a semrl benchmark's seeded subset (test.jsonl, plus fewshot.jsonl when few-shot
    examples are asked for) and a task YAML that includes the base one (lm-eval's own for mmlu
    and gsm8k) and overrides only the data; returns the lm-eval task name and the folder to pass
    as TaskManager(include_path=...). The folder is self-contained: `lm_eval --include_path
    <folder> --tasks <name>` reproduces the run."""
    spec = SEMRL_TASKS[bench.name]
    task_name = spec.task
    out_dir = Path(out_dir)
    rows = LOADERS[bench.name](data_dir)
    chosen = seeded_indices(rows, bench.limit, seed, stratify="subject" if bench.name == "mmlu" else None)
    test_path = write_jsonl(out_dir / "test.jsonl", (rows[i] for i in chosen))
    # The datasets cache for these files lives (and dies) with the folder: nothing piles up in
    # ~/.cache, and a rewritten subset is never served from a stale cache.
    cache_dir = out_dir / ".hf_cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    config: dict[str, Any] = {
        "include": str(spec.base_path.resolve()),
        "task": task_name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(test_path.resolve())}, "cache_dir": str(cache_dir.resolve())},
        "test_split": "test",
        "training_split": None,
        "validation_split": None,
        "fewshot_split": None,
        "num_fewshot": bench.num_fewshot,
    }
    if bench.name == "mmlu":
        config["description"] = MMLU_DESCRIPTION
    pool = _fewshot_pool(bench, rows, chosen, seed)
    if pool:
        fewshot_path = write_jsonl(out_dir / "fewshot.jsonl", (rows[i] for i in pool))
        config["dataset_kwargs"]["data_files"]["fewshot"] = str(fewshot_path.resolve())
        config["fewshot_split"] = "fewshot"
    generation = _generation_kwargs(bench)
    if generation is not None:
        config["generation_kwargs"] = generation
    write_text(out_dir / f"{task_name}.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return task_name, out_dir


def _samples_in_order(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(samples, key=lambda s: s["doc_id"])


def _samples_by_filter(samples: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """lm-eval logs one sample per item and filter; group them by filter, each in item order."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for s in _samples_in_order(samples):
        grouped.setdefault(s.get("filter", "none"), []).append(s)
    return grouped


def _raw_response(sample: dict[str, Any]) -> str:
    """What the model generated, before lm-eval's answer-extraction filters."""
    resp = sample.get("resps") or [""]
    while isinstance(resp, (list, tuple)) and resp:
        resp = resp[0]
    return resp if isinstance(resp, str) else ""


def _prediction(sample: dict[str, Any]) -> str:
    resp = sample.get("filtered_resps") or sample.get("resps") or [""]
    while isinstance(resp, (list, tuple)) and resp:
        resp = resp[0]
    return resp if isinstance(resp, str) else ""


def _run(lm: Any, tasks: list[str], task_manager: Any, seed: int, **kwargs: Any) -> dict[str, Any]:
    from lm_eval import simple_evaluate

    out = simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=task_manager,
        log_samples=True,
        bootstrap_iters=0,  # semrl computes its own intervals from the per-item values
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        **kwargs,
    )
    if out is None:  # lm-eval returns None on non-zero ranks
        raise RuntimeError("lm-eval returned no results (not the main process?)")
    return out


def _evaluate_semrl_task(
    lm: Any, bench: BenchmarkConfig, data_dir: str | Path | None, seed: int, work_dir: Path
) -> BenchmarkResult:
    from lm_eval.tasks import TaskManager

    spec = SEMRL_TASKS[bench.name]
    metric = spec.metric
    task_name, task_dir = prepare_task(bench, data_dir, seed, work_dir / bench.name)
    n_items = sum(1 for _ in (task_dir / "test.jsonl").open(encoding="utf-8"))
    # Only semrl's folder is indexed: no scan of lm-eval's thousands of built-in YAMLs, no hub.
    out = _run(lm, [task_name], TaskManager(include_path=str(task_dir), include_defaults=False), seed)
    by_filter = _samples_by_filter(out["samples"][task_name])
    samples = by_filter[spec.filter]
    if len(samples) != n_items:
        raise RuntimeError(f"lm-eval scored {len(samples)} of {n_items} {bench.name} items")
    per_example = [float(s[metric]) for s in samples]
    summary = out["results"][task_name]
    details: dict[str, Any] = {
        "lm_eval_task": task_name,
        "num_fewshot": bench.num_fewshot,
        "limit": bench.limit,
        "seed": seed,
        "task_dir": str(task_dir),
    }
    if bench.name == "cmrc2018":
        details.update(
            em=float(summary["em,none"]),
            f1=float(summary["f1,none"]),
            per_example_em=[float(s["em"]) for s in samples],
            per_example_f1=[float(s["f1"]) for s in samples],
            ids=[s["doc"]["id"] for s in samples],
            predictions=[_first_line(_prediction(s)) for s in samples],
        )
    elif bench.name == "mmlu":
        by_subject: dict[str, list[float]] = {}
        for s, v in zip(samples, per_example):
            by_subject.setdefault(s["doc"]["subject"], []).append(v)
        details["per_subject"] = {k: float(np.mean(v)) for k, v in sorted(by_subject.items())}
        details["subjects"] = [s["doc"]["subject"] for s in samples]
    elif bench.name == "gsm8k":
        strict = by_filter["strict-match"]
        details.update(
            filter=spec.filter,
            strict_match=float(summary["exact_match,strict-match"]),
            per_example_strict_match=[float(s["exact_match"]) for s in strict],
            predictions=[_raw_response(s) for s in samples],
            extracted=[_prediction(s) for s in samples],
        )
    details["continuous_measure"], details["per_example_continuous"] = continuous_scores(lm, bench.name, samples)
    return BenchmarkResult(
        bench.name, metric, float(summary[f"{metric},{spec.filter}"]), per_example, len(samples), details
    )


def continuous_scores(lm: Any, name: str, samples: list[dict[str, Any]]) -> tuple[str, list[float]]:
    """Per-item continuous scores of a semrl benchmark, higher is better, from lm-eval's logged
    samples: for MMLU the probability of the gold choice among the four, normalised from lm-eval's
    per-choice log-likelihoods; for CMRC 2018 and GSM8K the teacher-forced log-likelihood per
    character of the gold answer (`doc_to_target`) after the very prompt lm-eval generated from,
    which does not depend on the output format (`semrl.eval.tax.likelihood`)."""
    if name == "mmlu":
        probs = []
        for s in samples:
            ll = np.asarray([float(r[0]) for r in s["filtered_resps"]])
            p = np.exp(ll - ll.max())
            probs.append(float(p[int(s["target"])] / p.sum()))
        return "probability of the gold choice", probs
    contexts = [str(s["arguments"][0][0]) for s in samples]
    delimiter = "" if name == "cmrc2018" else " "  # each task's target_delimiter
    golds = [delimiter + str(s["target"]) for s in samples]
    batch = lm.batch_size_per_gpu if isinstance(getattr(lm, "batch_size_per_gpu", None), int) else 4
    scores = continuation_scores(lm.model, lm.tokenizer, contexts, golds, batch_size=batch)
    return "gold answer log-likelihood per character", per_char_logprobs(scores)


_NOT_METRICS = {"alias", "name", "sample_len", "samples"}


def evaluate_harness_task(lm: Any, bench: BenchmarkConfig, seed: int, task_manager: Any) -> BenchmarkResult:
    """Any lm-eval task or group by name; `limit` is lm-eval's (the first N items per task)."""
    import difflib

    if bench.name not in task_manager.all_tasks:
        close = difflib.get_close_matches(bench.name, task_manager.all_tasks, n=5)
        hint = f" Close lm-eval names: {', '.join(close)}." if close else ""
        raise ConfigError(
            f"evaluation.benchmarks: {bench.name!r} is neither a semrl benchmark ({', '.join(SEMRL_TASKS)}) "
            f"nor an lm-evaluation-harness task or group.{hint}"
        )
    try:
        gen_kwargs = {"max_gen_toks": bench.max_gen_toks} if bench.max_gen_toks is not None else None
        out = _run(
            lm,
            [bench.name],
            task_manager,
            seed,
            num_fewshot=bench.num_fewshot,
            limit=bench.limit,
            gen_kwargs=gen_kwargs,
        )
    except OSError as err:  # ConnectionError/FileNotFoundError from datasets and the hub client
        raise DataError(
            f"lm-eval task {bench.name!r}: its dataset could not be loaded ({err}). lm-eval's own tasks "
            f"download from the Hugging Face hub: run with internet access once (the HF cache keeps it), "
            f"or use semrl's offline benchmarks ({', '.join(SEMRL_TASKS)})."
        ) from err
    # A task reports its own metrics; a group or tag may report an aggregate, or only its members.
    summary = out["results"].get(bench.name) or out["results"][sorted(out["samples"])[0]]
    key = next(
        (k for k, v in summary.items() if "," in k and "_stderr" not in k and isinstance(v, (int, float))),
        None,
    )
    if key is None:
        raise RuntimeError(f"lm-eval reported no numeric metric for {bench.name!r}: {summary}")
    metric, filter_name = key.split(",", 1)
    per_example = [
        float(s[metric])
        for task in sorted(out["samples"])
        for s in _samples_in_order(out["samples"][task])
        if s.get("filter") == filter_name and isinstance(s.get(metric), (int, float, bool))
    ]
    score = float(summary[key]) if bench.name in out["results"] else float(np.mean(per_example))
    details = {
        "lm_eval_task": bench.name,
        "filter": filter_name,
        "num_fewshot": bench.num_fewshot,
        "limit": bench.limit,
        "seed": seed,
        "results": {t: {k: v for k, v in r.items() if k not in _NOT_METRICS} for t, r in out["results"].items()},
    }
    return BenchmarkResult(bench.name, metric, score, per_example, len(per_example), details)


def evaluate_general(
    model: Any,
    tokenizer: Any,
    benchmarks: Sequence[BenchmarkConfig],
    data_dir: str | Path | None,
    seed: int,
    batch_size: int = 8,
    *,
    generation_batch_size: int | None = None,
    work_dir: str | Path | None = None,
) -> dict[str, BenchmarkResult]:
    """Score a model on general benchmarks with lm-evaluation-harness, `batch_size` requests a
    batch for log-likelihoods and `generation_batch_size` (None: `batch_size`) for generation.

    `cmrc2018` (score: (EM+F1)/2, "Avg" as in the paper; EM and F1 in details), `mmlu`
    (accuracy over the letters A-D by log-likelihood, subset stratified by subject) and `gsm8k`
    (exact match of the final number) run offline from the data directory on a fixed subset of
    `limit` items drawn with `seed`. Any other name runs lm-eval's own task of that name.
    The prepared data and task YAMLs go to `work_dir/<benchmark>/` (a temporary folder when
    None). Global RNG states and the model's train/eval mode are restored afterwards.
    """
    if not benchmarks:
        return {}
    try:
        from semrl.eval.tax.harness import harness_model
    except ImportError as err:
        raise ConfigError(
            "general benchmarks (evaluation.benchmarks) run on lm-evaluation-harness, which is not installed: "
            "pip install 'semrl[eval]', or set evaluation.benchmarks: [] to skip them"
        ) from err

    _check_distinct(benchmarks)
    results: dict[str, BenchmarkResult] = {}
    harness_tasks = None
    with contextlib.ExitStack() as stack:
        stack.enter_context(_preserved_state(model))  # before HFLM, which switches to eval mode
        lm = harness_model(model, tokenizer, batch_size, generation_batch_size)
        root = (
            Path(work_dir)
            if work_dir is not None
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="semrl-bench-")))
        )
        for bench in benchmarks:
            started = time.perf_counter()
            if bench.name in SEMRL_TASKS:
                result = _evaluate_semrl_task(lm, bench, data_dir, seed, root)
            else:
                if harness_tasks is None:
                    from lm_eval.tasks import TaskManager

                    harness_tasks = TaskManager()  # indexes lm-eval's built-in tasks (~20 s)
                result = evaluate_harness_task(lm, bench, seed, harness_tasks)
            result.details["wall_time_s"] = round(time.perf_counter() - started, 2)
            if work_dir is None:
                result.details.pop("task_dir", None)  # a temporary folder, gone after this call
            logger.info("%s: %s = %.4f on %d items", bench.name, result.metric, result.score, result.n)
            results[bench.name] = result
    return results
