"""The general sets behind the alignment tax (CMRC 2018, MMLU, GSM8K): loaders from the data directory or their public origin, seeded subsets, drift texts."""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from semrl.core.errors import ConfigError, DataError
from semrl.core.io import read_jsonl

logger = logging.getLogger(__name__)


# Where each set lives in a data directory, and where it comes from for users with internet.
CMRC_DIRNAME, CMRC_FILE = "cmrc2018_dev", "cmrc2018_dev.json"


MMLU_DIRNAME, MMLU_FILE = "mmlu_test", "mmlu_test.jsonl"


GSM8K_DIRNAME, GSM8K_FILE = "gsm8k_test", "test.jsonl"


GSM8K_ORIGIN = (
    "openai/grade-school-math",
    "3101c7d5072418e28b9008a6636bde82a006892c",
    "grade_school_math/data/test.jsonl",
    "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
)


_GSM8K_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.S)
CMRC_ORIGIN = (
    "ymcui/cmrc2018",
    "c0eb1b6ba219847457e6af3180da722bbeb656af",
    "squad-style-data/cmrc2018_dev.json",
    "e9ff74231f05c230c6fa88b84441ee334d97234cbb610991cd94b82db00c7f1f",
)


MMLU_HUB_ID = "cais/mmlu"
MMLU_LETTERS = ("A", "B", "C", "D")


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
    from semrl.data.download import data_cache_dir, download_verified, raw_url

    dest = data_cache_dir() / repo.replace("/", "__") / commit / dest_name
    return download_verified(raw_url(repo, commit, path), dest, sha256)


def _local_or_fetch(
    name: str, dirname: str, filename: str, origin: tuple[str, str, str, str], data_dir: Path | None
) -> Path:
    local = data_dir / dirname / filename if data_dir else None
    if local is not None and local.is_file():
        return local
    repo, commit, path, sha = origin
    try:
        return _fetch_github(repo, commit, path, sha, filename)
    except DataError as err:
        raise DataError(_missing_hint(name, dirname, filename, data_dir, f"github.com/{repo}", err)) from None


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
                answers = [
                    _require(a, "text", str, f"{qwhere}.answers[{m}]")
                    for m, a in enumerate(_require(qa, "answers", list, qwhere))
                ]
                if not answers:
                    raise DataError(f"{qwhere}: no reference answers")
                rows.append(
                    {
                        "id": str(_require(qa, "id", str, qwhere)),
                        "context": context,
                        "question": _require(qa, "question", str, qwhere).strip(),
                        "answers": answers,
                    }
                )
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
        rows.append(
            {
                "question": _require(rec, "question", str, where),
                "choices": [str(_require(rec, f"answer_{c.lower()}", (str, int, float), where)) for c in MMLU_LETTERS],
                "answer": MMLU_LETTERS.index(rec["correct_answer"]),
                "subject": str(rec.get("topic", "general")).replace("_", " "),
            }
        )
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
        raise DataError(
            _missing_hint("MMLU", MMLU_DIRNAME, MMLU_FILE, data_dir, f"the hub ({MMLU_HUB_ID})", err)
        ) from None
    return [
        {
            "question": r["question"],
            "choices": list(r["choices"]),
            "answer": int(r["answer"]),
            "subject": r["subject"].replace("_", " "),
        }
        for r in ds
    ]


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
