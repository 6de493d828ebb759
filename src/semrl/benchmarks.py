"""General benchmarks and drift: what a model lost in general competence (the alignment tax).

- Loaders for the general sets, read from a data directory (`--data-dir` / $SEMRL_DATA_DIR;
  see each folder's SOURCE.md) or, when it lacks them, fetched from their public origin:
  CMRC 2018 dev (SQuAD JSON, GitHub ymcui/cmrc2018), MMLU test (hub cais/mmlu), GSM8K test
  (GitHub openai/grade-school-math). Fixed seeded subsets keep every method on the same items.
- `evaluate_general` runs them through lm-evaluation-harness: semrl ships task YAMLs for
  `cmrc2018` (lm-eval has none), `mmlu` and `gsm8k` in `semrl/tasks/` and, per run, writes the
  prepared subset as JSONL plus a small YAML that includes the shipped one and points
  `data_files` at it, so the harness never touches the hub for them. Any other name is passed
  to lm-eval as one of its own tasks (these need the hub or a populated HF cache).
- `measure_drift`: per-example NLL increase over the base model and per-token KL on general
  text; `TaxMeterCallback` tracks the NLL increase during training.

All benchmark scores are fractions in [0, 1] (the paper prints CMRC as 0-100: multiply by 100).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from transformers import TrainerCallback

from semrl.config import BenchmarkConfig
from semrl.errors import ConfigError, DataError, ModelError
from semrl.io import read_jsonl, write_jsonl, write_text
from semrl.metrics import cmrc_em_f1

logger = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).with_name("tasks")

# Where each set lives in a data directory, and where it comes from for users with internet.
CMRC_DIRNAME, CMRC_FILE = "cmrc2018_dev", "cmrc2018_dev.json"
MMLU_DIRNAME, MMLU_FILE = "mmlu_test", "mmlu_test.jsonl"
GSM8K_DIRNAME, GSM8K_FILE = "gsm8k_test", "test.jsonl"
CMRC_ORIGIN = ("ymcui/cmrc2018", "c0eb1b6ba219847457e6af3180da722bbeb656af", "squad-style-data/cmrc2018_dev.json",
               "e9ff74231f05c230c6fa88b84441ee334d97234cbb610991cd94b82db00c7f1f")
GSM8K_ORIGIN = ("openai/grade-school-math", "3101c7d5072418e28b9008a6636bde82a006892c", "grade_school_math/data/test.jsonl",
                "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14")
MMLU_HUB_ID = "cais/mmlu"

MMLU_LETTERS = ("A", "B", "C", "D")


# ---------------------------------------------------------------------------------------------
# Data directory and downloads
# ---------------------------------------------------------------------------------------------
def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """The given data directory, else $SEMRL_DATA_DIR, else None (download)."""
    value = data_dir or os.environ.get("SEMRL_DATA_DIR")
    return Path(value).expanduser() if value else None


def _missing_hint(name: str, dirname: str, filename: str, data_dir: Path | None, origin: str, err: Exception) -> str:
    looked = f"{data_dir / dirname / filename} does not exist" if data_dir else "no data directory is set"
    return (
        f"{name}: {looked}, and fetching it from {origin} failed ({err}). Put the file at "
        f"<data dir>/{dirname}/{filename} and pass --data-dir <data dir> or set SEMRL_DATA_DIR "
        f"(or data_dir in the config); with internet access semrl downloads it from {origin}."
    )


def _fetch_github(repo: str, commit: str, path: str, sha256: str, dest_name: str) -> Path:
    """Download a file from GitHub at a pinned commit into semrl's data cache, sha256-checked."""
    from semrl.data import _download_verified, _raw_url, data_cache_dir

    dest = data_cache_dir() / repo.replace("/", "__") / commit / dest_name
    return _download_verified(_raw_url(repo, commit, path), dest, sha256)


def _local_or_fetch(name: str, dirname: str, filename: str, origin: tuple[str, str, str, str], data_dir: Path | None) -> Path:
    local = data_dir / dirname / filename if data_dir else None
    if local is not None and local.is_file():
        return local
    repo, commit, path, sha = origin
    try:
        return _fetch_github(repo, commit, path, sha, filename)
    except DataError as err:
        raise DataError(_missing_hint(name, dirname, filename, data_dir, f"github.com/{repo}", err)) from None


# ---------------------------------------------------------------------------------------------
# Loaders: each returns rows in the schema of the public hub/GitHub dataset
# ---------------------------------------------------------------------------------------------
def _require(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """obj[key], checked: DataError naming the place, the key and the expected type otherwise."""
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"{where}: missing key {key!r}")
    if not isinstance(obj[key], kind):
        expected = " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
        raise DataError(f"{where}.{key}: expected {expected}, got {type(obj[key]).__name__}")
    return obj[key]


def load_cmrc2018(data_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """CMRC 2018 dev questions as rows {id, context, question, answers: list[str]} (SQuAD v1 JSON)."""
    path = _local_or_fetch("CMRC 2018", CMRC_DIRNAME, CMRC_FILE, CMRC_ORIGIN, resolve_data_dir(data_dir))
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid SQuAD-style JSON ({err})") from None
    rows: list[dict[str, Any]] = []
    for i, article in enumerate(_require(doc, "data", list, str(path))):
        for j, para in enumerate(_require(article, "paragraphs", list, f"{path}: data[{i}]")):
            where = f"{path}: data[{i}].paragraphs[{j}]"
            context = _require(para, "context", str, where)
            for k, qa in enumerate(_require(para, "qas", list, where)):
                qwhere = f"{where}.qas[{k}]"
                answers = [_require(a, "text", str, f"{qwhere}.answers[{m}]") for m, a in enumerate(_require(qa, "answers", list, qwhere))]
                if not answers:
                    raise DataError(f"{qwhere}: no reference answers")
                rows.append({
                    "id": str(_require(qa, "id", str, qwhere)),
                    "context": context,
                    "question": _require(qa, "question", str, qwhere).strip(),
                    "answers": answers,
                })
    if not rows:
        raise DataError(f"{path}: no questions found")
    return rows


def load_mmlu(data_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """MMLU test questions as rows {question, choices: [4 str], answer: 0-3, subject}.

    From `<data dir>/mmlu_test/mmlu_test.jsonl` (keys question, answer_a..answer_d,
    correct_answer A-D, topic; rows whose correct_answer is not A-D, such as stray header rows,
    are dropped), else from the hub dataset cais/mmlu (config 'all', split 'test')."""
    root = resolve_data_dir(data_dir)
    path = root / MMLU_DIRNAME / MMLU_FILE if root else None
    if path is None or not path.is_file():
        return _load_mmlu_hub(root)
    rows: list[dict[str, Any]] = []
    dropped = 0
    for i, rec in enumerate(read_jsonl(path), start=1):
        where = f"{path}: row {i}"
        if rec.get("correct_answer") not in MMLU_LETTERS:
            dropped += 1
            continue
        rows.append({
            "question": _require(rec, "question", str, where),
            "choices": [str(_require(rec, f"answer_{c.lower()}", (str, int, float), where)) for c in MMLU_LETTERS],
            "answer": MMLU_LETTERS.index(rec["correct_answer"]),
            "subject": str(rec.get("topic", "general")).replace("_", " "),
        })
    if dropped:
        logger.info("%s: dropped %d rows whose correct_answer is not one of A-D", path, dropped)
    if not rows:
        raise DataError(f"{path}: no questions with correct_answer A-D")
    return rows


def _load_mmlu_hub(data_dir: Path | None) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(MMLU_HUB_ID, "all", split="test")
    except Exception as err:  # datasets raises many types (ConnectionError, FileNotFoundError, hub errors)
        raise DataError(_missing_hint("MMLU", MMLU_DIRNAME, MMLU_FILE, data_dir, f"the hub ({MMLU_HUB_ID})", err)) from None
    return [
        {"question": r["question"], "choices": list(r["choices"]), "answer": int(r["answer"]),
         "subject": r["subject"].replace("_", " ")}
        for r in ds
    ]


_GSM8K_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.S)


def gsm8k_target(answer: str) -> str:
    """The final answer of a GSM8K solution: the text after '####'."""
    m = _GSM8K_ANSWER.search(answer)
    if not m:
        raise ValueError("no '####' final answer in the solution")
    return m.group(1).strip()


def load_gsm8k(data_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """GSM8K test problems as rows {question, answer} (answer: worked solution ending '#### N')."""
    path = _local_or_fetch("GSM8K", GSM8K_DIRNAME, GSM8K_FILE, GSM8K_ORIGIN, resolve_data_dir(data_dir))
    rows = []
    for i, rec in enumerate(read_jsonl(path), start=1):
        where = f"{path}: row {i}"
        answer = _require(rec, "answer", str, where)
        try:
            gsm8k_target(answer)
        except ValueError:
            raise DataError(f"{where}: the answer has no '#### <number>' final line") from None
        rows.append({"question": _require(rec, "question", str, where), "answer": answer})
    if not rows:
        raise DataError(f"{path}: no problems")
    return rows


LOADERS: dict[str, Callable[[str | Path | None], list[dict[str, Any]]]] = {
    "cmrc2018": load_cmrc2018,
    "mmlu": load_mmlu,
    "gsm8k": load_gsm8k,
}


def seeded_indices(rows: Sequence[Any], n: int | None, seed: int, stratify: str | None = None) -> list[int]:
    """Indices of a fixed seeded subset of `n` rows (all rows when n is None or >= len(rows)),
    in file order. With `stratify` (a row key, e.g. 'subject'), strata take turns in a seeded
    order, one row each, so a small subset still covers every stratum. A larger n with the same
    seed gives a superset."""
    total = len(rows)
    if n is None or n >= total:
        return list(range(total))
    rng = random.Random(seed)
    if stratify is None:
        order = list(range(total))
        rng.shuffle(order)
        return sorted(order[:n])
    strata: dict[Any, list[int]] = {}
    for i, row in enumerate(rows):
        strata.setdefault(row[stratify], []).append(i)
    keys = sorted(strata, key=str)
    rng.shuffle(keys)
    queues = []
    for key in keys:
        members = strata[key][:]
        rng.shuffle(members)
        queues.append(members)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n:
        for q in queues:
            if depth < len(q):
                chosen.append(q[depth])
                if len(chosen) == n:
                    break
        depth += 1
    return sorted(chosen)


def benchmark_subset(name: str, data_dir: str | Path | None, n: int | None, seed: int) -> list[dict[str, Any]]:
    """The fixed seeded subset of a semrl benchmark ('cmrc2018', 'mmlu' stratified by subject, 'gsm8k')."""
    if name not in LOADERS:
        raise ConfigError(f"no semrl loader for benchmark {name!r}; semrl's own are {sorted(LOADERS)}")
    rows = LOADERS[name](data_dir)
    return [rows[i] for i in seeded_indices(rows, n, seed, stratify="subject" if name == "mmlu" else None)]


# ---------------------------------------------------------------------------------------------
# lm-eval hooks (named in the shipped task YAMLs)
# ---------------------------------------------------------------------------------------------
def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def process_cmrc2018(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """lm-eval `process_results` for semrl_cmrc2018: EM, F1 and their mean for one answer."""
    em, f1 = cmrc_em_f1(_first_line(results[0]), doc["answers"])
    return {"avg": (em + f1) / 2, "em": em, "f1": f1}


_NUMBER = re.compile(r"-?[$]?\d[\d,]*(?:\.\d+)?")
_STRICT = re.compile(r"####\s*(-?[$]?\d[\d,]*(?:\.\d+)?)")


def _number_value(text: str) -> Decimal | None:
    cleaned = text.replace(",", "").replace("$", "").rstrip(".")
    try:
        return Decimal(cleaned)
    except InvalidOperation:
        return None


def gsm8k_extract(text: str, strict: bool = False) -> str | None:
    """The model's final number: after '####' (strict), else the last number in the text."""
    m = _STRICT.search(text)
    if m:
        return m.group(1)
    if strict:
        return None
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def process_gsm8k(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """lm-eval `process_results` for semrl_gsm8k: exact match of the final number (flexible and
    strict extraction), compared as numbers (so '18.00' == '18' and '1,000' == '1000')."""
    gold = _number_value(gsm8k_target(doc["answer"]))
    scores = {}
    for key, strict in (("exact_match", False), ("strict_match", True)):
        found = gsm8k_extract(results[0], strict=strict)
        value = _number_value(found) if found is not None else None
        scores[key] = float(value is not None and gold is not None and value == gold)
    return scores


# ---------------------------------------------------------------------------------------------
# evaluate_general
# ---------------------------------------------------------------------------------------------
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


# semrl's own tasks: shipped YAML, lm-eval task name, headline metric.
SEMRL_TASKS: dict[str, tuple[str, str, str]] = {
    "cmrc2018": ("cmrc2018.yaml", "semrl_cmrc2018", "avg"),
    "mmlu": ("mmlu.yaml", "semrl_mmlu", "acc"),
    "gsm8k": ("gsm8k.yaml", "semrl_gsm8k", "exact_match"),
}
FEWSHOT_POOL = 64  # rows outside the evaluated subset that few-shot examples are drawn from


@contextlib.contextmanager
def _preserved_state(model: Any) -> Iterator[None]:
    """lm-eval reseeds the global RNGs and puts the model in eval mode; undo both afterwards so
    that evaluating in the middle of a run does not change what follows."""
    py, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    was_training = getattr(model, "training", False)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        model.train(was_training)


def _shipped_task(yaml_name: str) -> dict[str, Any]:
    """A shipped task YAML as a dict (lm-eval's `!function` tags read as plain strings)."""
    loader = type("_TaskLoader", (yaml.SafeLoader,), {})
    loader.add_constructor("!function", lambda ld, node: ld.construct_scalar(node))
    return yaml.load((TASKS_DIR / yaml_name).read_text(encoding="utf-8"), Loader=loader)


def prepare_task(bench: BenchmarkConfig, data_dir: str | Path | None, seed: int, out_dir: str | Path) -> tuple[str, Path]:
    """Write a semrl benchmark's seeded subset (test.jsonl, plus fewshot.jsonl when few-shot
    examples are asked for) and a task YAML that includes the shipped one; returns the lm-eval
    task name and the folder to pass as TaskManager(include_path=...). The folder is
    self-contained: `lm_eval --include_path <folder> --tasks <name>` reproduces the run."""
    yaml_name, task_name, _ = SEMRL_TASKS[bench.name]
    out_dir = Path(out_dir)
    rows = LOADERS[bench.name](data_dir)
    chosen = seeded_indices(rows, bench.limit, seed, stratify="subject" if bench.name == "mmlu" else None)
    test_path = write_jsonl(out_dir / "test.jsonl", (rows[i] for i in chosen))
    # The datasets cache for these files lives (and dies) with the folder: nothing piles up in
    # ~/.cache, and a rewritten subset is never served from a stale cache.
    cache_dir = out_dir / ".hf_cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    config: dict[str, Any] = {
        "include": str((TASKS_DIR / yaml_name).resolve()),
        "dataset_kwargs": {"data_files": {"test": str(test_path.resolve())}, "cache_dir": str(cache_dir.resolve())},
        "num_fewshot": bench.num_fewshot,
    }
    if bench.num_fewshot:
        # Few-shot examples come from items outside the evaluated subset, so no item is shown
        # its own answer.
        taken = set(chosen)
        rest = [i for i in range(len(rows)) if i not in taken]
        random.Random(seed + 1).shuffle(rest)
        pool = rest[: max(FEWSHOT_POOL, bench.num_fewshot)]
        if len(pool) < bench.num_fewshot:
            raise ConfigError(
                f"evaluation.benchmarks[{bench.name}].num_fewshot={bench.num_fewshot}: only {len(pool)} items are "
                f"left outside the evaluated subset of {len(chosen)}; lower limit or num_fewshot"
            )
        fewshot_path = write_jsonl(out_dir / "fewshot.jsonl", (rows[i] for i in sorted(pool)))
        config["dataset_kwargs"]["data_files"]["fewshot"] = str(fewshot_path.resolve())
        config["fewshot_split"] = "fewshot"
    if bench.max_gen_toks is not None:
        # lm-eval's `include` replaces a whole top-level key, so the shipped generation_kwargs are
        # copied and only the cap changed.
        shipped = _shipped_task(yaml_name).get("generation_kwargs")
        if shipped is None:
            raise ConfigError(
                f"evaluation.benchmarks[{bench.name}].max_gen_toks: {bench.name} is scored by log-likelihood and "
                f"generates nothing; remove max_gen_toks"
            )
        config["generation_kwargs"] = {**shipped, "max_gen_toks": bench.max_gen_toks}
    write_text(out_dir / f"{task_name}.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return task_name, out_dir


def _samples_in_order(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(samples, key=lambda s: s["doc_id"])


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


def _evaluate_semrl_task(lm: Any, bench: BenchmarkConfig, data_dir: str | Path | None, seed: int, work_dir: Path) -> BenchmarkResult:
    from lm_eval.tasks import TaskManager

    metric = SEMRL_TASKS[bench.name][2]
    task_name, task_dir = prepare_task(bench, data_dir, seed, work_dir / bench.name)
    n_items = sum(1 for _ in (task_dir / "test.jsonl").open(encoding="utf-8"))
    # Only semrl's folder is indexed: no scan of lm-eval's thousands of built-in YAMLs, no hub.
    out = _run(lm, [task_name], TaskManager(include_path=str(task_dir), include_defaults=False), seed)
    samples = _samples_in_order(out["samples"][task_name])
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
        details.update(
            strict_match=float(summary["strict_match,none"]),
            predictions=[_prediction(s) for s in samples],
        )
    return BenchmarkResult(bench.name, metric, float(summary[f"{metric},none"]), per_example, len(samples), details)


_NOT_METRICS = {"alias", "name", "sample_len", "samples"}


def _evaluate_harness_task(lm: Any, bench: BenchmarkConfig, seed: int, task_manager: Any) -> BenchmarkResult:
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
        out = _run(lm, [bench.name], task_manager, seed, num_fewshot=bench.num_fewshot, limit=bench.limit, gen_kwargs=gen_kwargs)
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
    work_dir: str | Path | None = None,
) -> dict[str, BenchmarkResult]:
    """Score a model on general benchmarks with lm-evaluation-harness.

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
        from lm_eval.models.huggingface import HFLM
    except ImportError as err:
        raise ConfigError(
            "general benchmarks (evaluation.benchmarks) run on lm-evaluation-harness, which is not installed: "
            "pip install 'semrl[eval]', or set evaluation.benchmarks: [] to skip them"
        ) from err

    names = [b.name for b in benchmarks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"evaluation.benchmarks: {duplicates} listed more than once")
    results: dict[str, BenchmarkResult] = {}
    harness_tasks = None
    with contextlib.ExitStack() as stack:
        stack.enter_context(_preserved_state(model))  # before HFLM, which switches to eval mode
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        root = Path(work_dir) if work_dir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="semrl-bench-")))
        for bench in benchmarks:
            started = time.perf_counter()
            if bench.name in SEMRL_TASKS:
                result = _evaluate_semrl_task(lm, bench, data_dir, seed, root)
            else:
                if harness_tasks is None:
                    from lm_eval.tasks import TaskManager

                    harness_tasks = TaskManager()  # indexes lm-eval's built-in tasks (~20 s)
                result = _evaluate_harness_task(lm, bench, seed, harness_tasks)
            result.details["wall_time_s"] = round(time.perf_counter() - started, 2)
            if work_dir is None:
                result.details.pop("task_dir", None)  # a temporary folder, gone after this call
            logger.info("%s: %s = %.4f on %d items", bench.name, result.metric, result.score, result.n)
            results[bench.name] = result
    return results


# ---------------------------------------------------------------------------------------------
# Drift: NLL increase and token KL against the base model
# ---------------------------------------------------------------------------------------------
@dataclass
class DriftResult:
    """Drift of a model from the base model on general texts.

    nll_base / nll_model: mean token NLL per text; nll_increase: their difference per text;
    token_kl: KL(model || base) of the next-token distributions at every scored position of every
    text (the divergence GRPO's KL penalty estimates; in nats). summary: nll_mean and nll_p90 of
    the per-text increase, kl_mean and kl_p90 of the per-token KL.
    """

    nll_base: list[float]
    nll_model: list[float]
    nll_increase: list[float]
    token_kl: list[float]
    summary: dict[str, float]


def _device_of(model: Any) -> torch.device:
    return next(model.parameters()).device


def _encoded_batches(tokenizer: Any, texts: Sequence[str], batch_size: int, max_length: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded (input_ids, attention_mask) batches; the same tokenisation for every model.
    Padding is done here, not by the tokenizer, so tokenizers without a pad token work too."""
    if batch_size < 1 or max_length < 2:
        raise ValueError("batch_size must be >= 1 and max_length >= 2")
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        ids = tokenizer(chunk, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
        for offset, seq in enumerate(ids):
            if len(seq) < 2:
                raise DataError(
                    f"general text #{start + offset} has {len(seq)} token(s); NLL needs at least 2 "
                    f"(text: {chunk[offset][:40]!r})"
                )
        width = max(len(s) for s in ids)
        input_ids = torch.zeros((len(ids), width), dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        yield input_ids, mask


def _logits(model: Any, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    device = _device_of(model)
    return model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False).logits


@contextlib.contextmanager
def _eval_mode(*models: Any) -> Iterator[None]:
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def _row_logprobs(logits: torch.Tensor, row: int, length: int) -> torch.Tensor:
    """Log-probabilities of the next token at positions 0..length-2 of one row (float32)."""
    return torch.log_softmax(logits[row, : length - 1].float(), dim=-1).cpu()


def text_nll(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 4, max_length: int = 256) -> list[float]:
    """Mean next-token NLL (nats) of each text under the model (no_grad, eval mode restored)."""
    out: list[float] = []
    with _eval_mode(model):
        for input_ids, mask in _encoded_batches(tokenizer, texts, batch_size, max_length):
            logits = _logits(model, input_ids, mask)
            for row in range(input_ids.shape[0]):
                n = int(mask[row].sum())
                logprobs = _row_logprobs(logits, row, n)
                targets = input_ids[row, 1:n]
                out.append(float(-logprobs.gather(-1, targets[:, None]).mean()))
            del logits
    return out


def base_nll_for(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 4, max_length: int = 256) -> list[float]:
    """The base model's per-text NLL, the reference `TaxMeterCallback` compares against."""
    return text_nll(model, tokenizer, texts, batch_size=batch_size, max_length=max_length)


def _p90(values: Sequence[float]) -> float:
    return float(np.percentile(values, 90)) if len(values) else 0.0


def measure_drift(
    base_model: Any,
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 4,
    max_length: int = 256,
) -> DriftResult:
    """NLL increase per text and KL(model || base) per token on general texts.

    Both models read the same token ids (one tokenizer), one batch at a time under no_grad.
    Peak memory is about two batches of logits (2 x batch_size x max_length x vocab floats):
    lower batch_size for large vocabularies (Gemma 3: 262k)."""
    from torch.nn.functional import kl_div

    if not texts:
        raise ValueError("measure_drift needs at least one text")
    nll_base: list[float] = []
    nll_model: list[float] = []
    token_kl: list[float] = []
    with _eval_mode(base_model, model):
        for input_ids, mask in _encoded_batches(tokenizer, texts, batch_size, max_length):
            logits_base = _logits(base_model, input_ids, mask)
            logits_model = _logits(model, input_ids, mask)
            if logits_base.shape[-1] != logits_model.shape[-1]:
                raise ModelError(
                    f"the base model and the model have different vocabularies ({logits_base.shape[-1]} vs "
                    f"{logits_model.shape[-1]} logits); drift needs one shared tokenizer"
                )
            # One row at a time: the float32 log-softmax of a whole batch would double peak memory.
            for row in range(input_ids.shape[0]):
                n = int(mask[row].sum())
                targets = input_ids[row, 1:n, None]
                lp_base = _row_logprobs(logits_base, row, n)
                lp_model = _row_logprobs(logits_model, row, n)
                nll_base.append(float(-lp_base.gather(-1, targets).mean()))
                nll_model.append(float(-lp_model.gather(-1, targets).mean()))
                # kl_div(input=log q, target=log p, log_target=True) sums p * (log p - log q): KL(p || q).
                kl = kl_div(lp_base, lp_model, reduction="none", log_target=True).sum(-1)
                token_kl.extend(kl.clamp_min(0.0).tolist())  # clamp float round-off below 0
            del logits_base, logits_model
    increase = [m - b for m, b in zip(nll_model, nll_base)]
    summary = {
        "nll_mean": float(np.mean(increase)),
        "nll_p90": _p90(increase),
        "kl_mean": float(np.mean(token_kl)) if token_kl else 0.0,
        "kl_p90": _p90(token_kl),
    }
    return DriftResult(nll_base, nll_model, increase, token_kl, summary)


def general_texts(data_dir: str | Path | None, n: int, seed: int, text_file: str | Path | None = None) -> list[str]:
    """`n` general passages for drift, a fixed seeded choice: distinct CMRC 2018 contexts by
    default, or one passage per non-empty line of `text_file`."""
    if text_file is not None:
        path = Path(text_file)
        if not path.is_file():
            raise DataError(f"{path}: no such text file (evaluation.drift_text_file: one passage per line)")
        try:
            passages = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: invalid UTF-8 at byte {err.start}; re-save the file as UTF-8") from None
        if not passages:
            raise DataError(f"{path}: no non-empty lines (evaluation.drift_text_file needs one passage per line)")
    else:
        passages = list(dict.fromkeys(row["context"] for row in load_cmrc2018(data_dir)))
    return [passages[i] for i in seeded_indices(passages, n, seed)]


class TaxMeterCallback(TrainerCallback):
    """Logs `tax/nll_drift` (mean NLL increase over the base model on fixed general texts) every
    `every_n_steps` optimizer steps, so the alignment tax can be watched while training.

    The value is added to the step's log entry (the trainer's `log_history`, and the `logs` that
    later callbacks receive); list this callback before callbacks that write logs from `on_log`.
    The measurement runs under no_grad in eval mode and restores train mode afterwards.
    """

    def __init__(
        self,
        texts: Sequence[str],
        tokenizer: Any,
        every_n_steps: int,
        base_nll: Sequence[float],
        batch_size: int = 4,
        max_length: int = 256,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if len(base_nll) != len(texts):
            raise ValueError(f"base_nll has {len(base_nll)} values for {len(texts)} texts; compute it with base_nll_for")
        self.texts = list(texts)
        self.tokenizer = tokenizer
        self.every_n_steps = every_n_steps
        self.base_nll = np.asarray(base_nll, dtype=float)
        self.batch_size = batch_size
        self.max_length = max_length
        self.history: list[tuple[int, float]] = []  # (step, drift)

    def measure(self, model: Any) -> float:
        """Mean NLL increase of `model` over the base on the texts."""
        nll = np.asarray(text_nll(model, self.tokenizer, self.texts, self.batch_size, self.max_length))
        return float(np.mean(nll - self.base_nll))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step % self.every_n_steps == 0:
            control.should_log = True  # make sure the step has a log entry to carry the value
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, model: Any = None, **kwargs: Any) -> None:
        step = state.global_step
        if logs is None or model is None or step == 0 or step % self.every_n_steps:
            return
        if self.history and self.history[-1][0] == step:
            return  # already measured at this step (e.g. a second log call for evaluation)
        drift = self.measure(model)
        self.history.append((step, drift))
        logs["tax/nll_drift"] = drift
        # Trainer.log appends a copy of `logs` to log_history just before calling on_log.
        if state.log_history and state.log_history[-1].get("step") == step:
            state.log_history[-1]["tax/nll_drift"] = drift
