"""The data layer: load parallel examples, split them by document, turn them into TRL datasets.

Everything downstream (training, rewards, evaluation) sees one record type, `Example`
(id, source, reference, doc_id, metadata), so a new data source only has to produce Examples.

Sources (see `semrl.config`):
- `local`:   a JSONL, CSV or TSV file with a column mapping; errors name the file and line.
- `hub`:     a Hugging Face hub dataset via `datasets.load_dataset`.
- `ntrex`:   NTREX-128 news (sentence pairs, or body -> headline pairs), read from the data
             directory or downloaded from GitHub at a pinned commit with sha256 checks.
- `lotsawa`: Lotsawa House Tibetan-Chinese liturgy (OpenPecha C0A2DD042), same policy.

Splits are drawn by whole documents with a fixed seed (no document straddles two splits), test
first, then dev, cold_start and rl, so test and dev stay the same when training sizes change.

Prompt convention (completion style): the prompt ends on a label without trailing whitespace
("...\\nChinese:") and the completion starts with one space (" 你好。"). SentencePiece/BPE
tokenizers (Gemma, Llama, Qwen) fold a leading space into the next token, so the prompt's tokens
are an exact prefix of prompt+completion (what TRL's completion mask relies on) and the model
learns to emit the space itself; a prompt ending in a space would leave a lone space token that
never precedes a word in pretraining. Rewards read generated text through
`semrl.rewards.completion_text`; the evaluation keeps its first line, stripped
(`semrl.evaluation.clean_completion`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import random
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semrl.config import (
    ExperimentConfig,
    HubSource,
    LocalSource,
    LotsawaSource,
    NtrexSource,
    SplitSizes,
    TaskConfig,
)
from semrl.errors import ConfigError, DataError, ModelError
from semrl.io import atomic_path, parse_jsonl_line
from semrl.lang import language_name

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

SPLIT_NAMES: tuple[str, ...] = ("cold_start", "rl", "dev", "test")
# Evaluation splits are drawn first so that they do not move when training sizes change.
ASSIGNMENT_ORDER: tuple[str, ...] = ("test", "dev", "cold_start", "rl")
EXAMPLE_FIELDS: tuple[str, ...] = ("id", "source", "reference", "doc_id")
REQUIRED_COLUMNS: tuple[str, ...] = ("source", "reference")
MANIFEST_VERSION = 1
# What the run's splits depend on; the runner compares this hash before reusing splits.
CONFIG_HASH_SECTIONS: tuple[str, ...] = ("seed", "task", "data")

# ----------------------------------------------------------------------------------------------
# Public origins of the packaged corpora. The digests are those of the unchanged copies in the
# shared data directory, i.e. of the files at the pinned commits.
# ----------------------------------------------------------------------------------------------
NTREX_REPO = "MicrosoftTranslator/NTREX"
NTREX_COMMIT = "8561f6a622db9edad1217683e5c83daefd8bb2bf"
NTREX_DIRNAME = "ntrex128_bo_zh"
NTREX_DOC_IDS = "DOCUMENT_IDS.tsv"
# semrl language code -> NTREX file. NTREX has 128 languages; semrl pins the three it ships for.
NTREX_LANG_FILES: dict[str, str] = {
    "bo": "newstest2019-ref.bod.txt",
    "zh": "newstest2019-ref.zho-CN.txt",
    "en": "newstest2019-ref.eng-US.txt",
}
# file name -> (path in the repository, sha256)
NTREX_FILES: dict[str, tuple[str, str]] = {
    "newstest2019-ref.bod.txt": (
        "NTREX-128/newstest2019-ref.bod.txt",
        "d558d1adf8c8cbe665fbc9cffd7b6194e8c5cb7a969b1bcfd940310baa3db2bf",
    ),
    "newstest2019-ref.zho-CN.txt": (
        "NTREX-128/newstest2019-ref.zho-CN.txt",
        "8bcd6f0868d33f26c8da12f55a82f66088a7b60a5f7b0b1a99dcec51daa8054a",
    ),
    "newstest2019-ref.eng-US.txt": (
        "NTREX-128/newstest2019-ref.eng-US.txt",
        "a163045804ddb5e9529c7cbdb751c6f6f7491a31f69dcc13129bfe1521595094",
    ),
    "DOCUMENT_IDS.tsv": (
        "DOCUMENT_IDS.tsv",
        "88a8b0ff1eae47e83f60dcde01075b8c87d75ced59ca09e0af1eb539958e05d5",
    ),
}

LOTSAWA_REPO = "OpenPecha-Data/C0A2DD042"
LOTSAWA_COMMIT = "1164df36da0b78ec8afa6baad9cb131a9b604366"
LOTSAWA_DIRNAME = "lotsawa_house_bo_zh"
LOTSAWA_LANGS = frozenset({"bo", "zh"})
# The pinned commit's file listing (one GitHub API call) names the texts to fetch: every
# text-pairs/<ID>-zh.txt that has its text-pairs/<ID>-bo.txt (78 texts; bo-en pairs are left out).
LOTSAWA_TREE_URL = f"https://api.github.com/repos/{LOTSAWA_REPO}/git/trees/{LOTSAWA_COMMIT}?recursive=1"
# sha256 of the `sha256sum`-style listing ("<name>  <sha256>\n", sorted by name) of those 156
# files: one digest checks the whole collection (see `_collection_digest`).
LOTSAWA_SHA256 = "c2bb64162c5f73f16315ee54d3c78cc0011e910b128e21cdf72e7a7649b7c8fa"

DEFAULT_TEMPLATES: dict[str, str] = {
    "translation": "Translate the following {source_lang_name} text into {target_lang_name}.\n"
    "{source_lang_name}: {source}\n{target_lang_name}:",
    "headline": "Write a {target_lang_name} headline for the following {source_lang_name} article.\n"
    "Article: {source}\nHeadline:",
}
TEMPLATE_FIELDS: frozenset[str] = frozenset(
    {"source", "source_lang", "target_lang", "source_lang_name", "target_lang_name"}
)
# See the module docstring: completions start with one space, prompts end without one.
COMPLETION_PREFIX = " "


# ----------------------------------------------------------------------------------------------
# The record
# ----------------------------------------------------------------------------------------------
@dataclass
class Example:
    """One source -> reference pair. `doc_id` groups examples that must stay in the same split."""

    id: str
    source: str
    reference: str
    doc_id: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the line format of `splits/<split>.jsonl`)."""
        return {
            "id": self.id,
            "source": self.source,
            "reference": self.reference,
            "doc_id": self.doc_id,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Example:
        """Build an Example from a dict with at least id, source, reference and doc_id.

        Raises DataError naming the missing or mistyped keys (callers add file and line).
        """
        missing = [k for k in EXAMPLE_FIELDS if k not in data]
        if missing:
            raise DataError(f"missing key(s) {missing}; an example needs {list(EXAMPLE_FIELDS)}")
        wrong = [k for k in EXAMPLE_FIELDS if not isinstance(data[k], str)]
        if wrong:
            raise DataError(f"key(s) {wrong} must be strings")
        metadata = data.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise DataError(f"'metadata' must be an object, got {type(metadata).__name__}")
        return cls(data["id"], data["source"], data["reference"], data["doc_id"], dict(metadata))


# ----------------------------------------------------------------------------------------------
# Reading text with line-precise errors
# ----------------------------------------------------------------------------------------------
def _read_text(path: Path) -> str:
    """Decode a UTF-8 file (a BOM is dropped); invalid bytes raise DataError with file:line."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path}:{line}: invalid UTF-8 ({err.reason} at byte {err.start}); re-save the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


def _lines(text: str) -> list[str]:
    r"""Split on "\n" only (str.splitlines also splits on U+2028, U+001C..., which would break the
    line alignment of parallel files); a final newline does not make an extra empty line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    return _sha256_bytes(path.read_bytes())


# ----------------------------------------------------------------------------------------------
# Records -> Examples (shared by local files and hub datasets)
# ----------------------------------------------------------------------------------------------
def _check_columns(columns: Mapping[str, str], where: str) -> None:
    unknown = sorted(set(columns) - set(EXAMPLE_FIELDS))
    if unknown:
        raise ConfigError(
            f"{where}.columns: unknown semrl field(s) {unknown}; the keys are semrl fields "
            f"({', '.join(EXAMPLE_FIELDS)}) and the values your file's column names"
        )
    missing = [k for k in REQUIRED_COLUMNS if k not in columns]
    if missing:
        raise ConfigError(f"{where}.columns: no column mapped to {missing}; e.g. columns: {{source: bo, reference: zh}}")


def _text_value(value: Any, column: str, origin: str, *, required: bool) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        kind = "null" if value is None else type(value).__name__
        raise DataError(f"{origin}: column {column!r} must hold text, got {kind}")
    text = str(value).strip()
    if required and not text:
        raise DataError(f"{origin}: column {column!r} is empty; every example needs a non-empty source and reference")
    return text


class _RecordConverter:
    """Maps records (dicts) of one source to Examples, checking ids are unique within it."""

    def __init__(self, source_name: str, columns: Mapping[str, str]) -> None:
        self.source_name = source_name
        self.columns = dict(columns)
        self._seen: dict[str, str] = {}

    def missing_columns(self, present: Sequence[str]) -> list[tuple[str, str]]:
        return [(f, c) for f, c in self.columns.items() if c not in present]

    def __call__(self, record: Mapping[str, Any], origin: str, default_id: str) -> Example:
        for fld, col in self.missing_columns(list(record)):
            raise DataError(
                f"{origin}: missing column {col!r} (mapped from semrl field {fld!r}); this row has "
                f"{sorted(map(str, record))}. Fix the row, or the source's `columns` mapping."
            )
        values = {
            fld: _text_value(record[col], col, origin, required=fld in REQUIRED_COLUMNS)
            for fld, col in self.columns.items()
        }
        raw_id = values.get("id") or default_id
        if raw_id in self._seen:
            raise DataError(
                f"{origin}: id {raw_id!r} already used at {self._seen[raw_id]}; ids must be unique within a source"
            )
        self._seen[raw_id] = origin
        example_id = f"{self.source_name}:{raw_id}"
        # Without a doc_id column each row is its own document; the prefixed id keeps rows of
        # different sources from merging into one "document".
        doc_id = values.get("doc_id") or example_id
        return Example(example_id, values["source"], values["reference"], doc_id, {"origin": origin})


# ----------------------------------------------------------------------------------------------
# Local files
# ----------------------------------------------------------------------------------------------
_FORMAT_BY_SUFFIX = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv"}


def _local_format(path: Path, fmt: str, where: str) -> str:
    if fmt != "auto":
        return fmt
    try:
        return _FORMAT_BY_SUFFIX[path.suffix.lower()]
    except KeyError:
        raise ConfigError(
            f"{where}: cannot tell the format of {path} from its suffix {path.suffix!r}; "
            f"set format: jsonl, csv or tsv"
        ) from None


def _iter_jsonl(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, line in enumerate(_lines(text), start=1):
        obj = parse_jsonl_line(path, lineno, line)
        if obj is not None:
            yield lineno, obj


def _iter_delimited(
    path: Path, text: str, delimiter: str, converter: _RecordConverter
) -> Iterator[tuple[int, dict[str, Any]]]:
    # TSV has no quoting (fields cannot hold tabs or newlines), so a '"' inside Tibetan or
    # Chinese text is just a character; CSV follows RFC 4180 quoting.
    kind = "TSV" if delimiter == "\t" else "CSV"
    quoting = csv.QUOTE_NONE if kind == "TSV" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        missing = converter.missing_columns(header)
        if missing:
            wanted = ", ".join(f"{c!r} (for {f})" for f, c in missing)
            raise DataError(
                f"{path}:1: header has no column {wanted}; it has {header}. "
                f"Fix the header, or the source's `columns` mapping."
            )
        start = reader.line_num + 1
        for row in reader:
            lineno, start = start, reader.line_num + 1
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path}:{lineno}: {len(row)} field(s) but the header has {len(header)}"
                    + (" (a tab inside a TSV field?)" if kind == "TSV" else " (unquoted comma in a field?)")
                )
            yield lineno, dict(zip(header, row))
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: malformed {kind} ({err})") from None


def load_local(source: LocalSource, name: str | None = None, where: str = "data.sources") -> list[Example]:
    """Read a local JSONL/CSV/TSV file through the source's column mapping.

    Each row becomes an Example with id `<name>:<id column or line number>`. Malformed JSON,
    invalid UTF-8, missing columns and empty source/reference raise DataError naming file:line.
    """
    path = Path(source.path).expanduser()
    _check_columns(source.columns, where)
    fmt = _local_format(path, source.format, where)
    name = name or path.stem
    text = _read_text(path)
    converter = _RecordConverter(name, source.columns)
    if fmt == "jsonl":
        records = _iter_jsonl(path, text)
    else:
        records = _iter_delimited(path, text, "," if fmt == "csv" else "\t", converter)
    examples = [converter(record, f"{path}:{lineno}", str(lineno)) for lineno, record in records]
    if not examples:
        raise DataError(f"{path}: no examples (the file is empty or has only a header)")
    return examples


# ----------------------------------------------------------------------------------------------
# Hugging Face hub
# ----------------------------------------------------------------------------------------------
def load_hub(source: HubSource, name: str | None = None, where: str = "data.sources") -> list[Example]:
    """Load a hub dataset with `datasets.load_dataset` and map its columns to Examples.

    Offline (or with the hub unreachable) this raises DataError explaining how to use a local
    file instead.
    """
    import datasets

    _check_columns(source.columns, where)
    name = name or source.id.rsplit("/", 1)[-1]
    label = f"hub dataset {source.id!r}" + (f" ({source.config_name})" if source.config_name else "")
    try:
        files = {"data_files": source.data_files} if source.data_files is not None else {}
        ds = datasets.load_dataset(source.id, source.config_name, split=source.split, revision=source.revision, **files)
    except ConnectionError as err:
        raise DataError(
            f"{where}: the Hugging Face hub is unreachable, so {label} cannot be loaded ({err}). "
            f"Offline, save the data as a JSONL/CSV/TSV file and use a `kind: local` source with the same "
            f"`columns`, or load it once while online so that the datasets cache has it."
        ) from None
    except FileNotFoundError as err:
        raise DataError(
            f"{where}: {label} was not found ({err}). Check the id and config_name; gated datasets need "
            f"`hf auth login`."
        ) from None
    except ValueError as err:  # unknown split or config name
        raise DataError(f"{where}: {label} split {source.split!r}: {err}") from None
    converter = _RecordConverter(name, source.columns)
    missing = converter.missing_columns(ds.column_names)
    if missing:
        wanted = ", ".join(f"{c!r} (for {f})" for f, c in missing)
        raise DataError(
            f"{where}: {label} split {source.split!r} has no column {wanted}; it has {ds.column_names}. "
            f"Set the source's `columns` mapping."
        )
    examples = [
        converter(row, f"{label} split {source.split!r} row {i}", str(i)) for i, row in enumerate(ds)
    ]
    if not examples:
        raise DataError(f"{where}: {label} split {source.split!r} is empty")
    return examples


# ----------------------------------------------------------------------------------------------
# Downloads (NTREX, Lotsawa)
# ----------------------------------------------------------------------------------------------
def data_cache_dir() -> Path:
    """Where downloaded corpora live: $SEMRL_CACHE_DIR/data, else ~/.cache/semrl/data."""
    root = os.environ.get("SEMRL_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "semrl") / "data"


def _raw_url(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


def _fetch(url: str) -> bytes:
    """GET a URL; network and HTTP failures raise DataError."""
    import requests

    try:
        response = requests.get(url, timeout=60)
        response.raise_for_status()
    except requests.RequestException as err:
        raise DataError(f"download of {url} failed ({err})") from None
    return response.content


def _download_verified(url: str, dest: Path, sha256: str) -> Path:
    """Download `url` to `dest` (atomically) unless a copy with the right sha256 is there."""
    if dest.is_file() and _sha256_file(dest) == sha256:
        return dest
    data = _fetch(url)
    digest = _sha256_bytes(data)
    if digest != sha256:
        raise DataError(f"download of {url} has sha256 {digest}, expected {sha256} (corrupt or changed upstream)")
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return dest


def _no_download_hint(dirname: str, local: Path | None) -> str:
    where = f" ({local} is missing or incomplete)" if local else ""
    return (
        f"Download from GitHub failed{where}. Put a copy of the files in <data dir>/{dirname}/ and pass "
        f"--data-dir <data dir> or set SEMRL_DATA_DIR (or data_dir in the config)."
    )


def ntrex_dir(data_dir: Path | None, files: Sequence[str] = tuple(NTREX_FILES)) -> Path:
    """A folder holding the NTREX files named in `files`: `<data_dir>/ntrex128_bo_zh/` when it
    has them all, else the download cache (fetched at the pinned commit, sha256-checked)."""
    local = data_dir / NTREX_DIRNAME if data_dir else None
    if local is not None and all((local / f).is_file() for f in files):
        return local
    cache = data_cache_dir() / "ntrex128" / NTREX_COMMIT
    logger.info("NTREX-128 not in the data directory; fetching %s into %s", ", ".join(files), cache)
    try:
        for f in files:
            repo_path, sha = NTREX_FILES[f]
            _download_verified(_raw_url(NTREX_REPO, NTREX_COMMIT, repo_path), cache / f, sha)
    except DataError as err:
        raise DataError(f"NTREX-128: {err}. {_no_download_hint(NTREX_DIRNAME, local)}") from None
    return cache


def _collection_digest(folder: Path) -> str | None:
    """sha256 of a `sha256sum`-style listing of the folder's files, or None if it has none."""
    names = sorted(p.name for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
    if not names:
        return None
    listing = "".join(f"{n}  {_sha256_file(folder / n)}\n" for n in names)
    return _sha256_bytes(listing.encode())


def _lotsawa_remote_names() -> list[str]:
    """The Tibetan-Chinese text pairs at the pinned commit, from its file listing:
    `<ID>-bo.txt` and `<ID>-zh.txt` for every ID that has both."""
    try:
        tree = json.loads(_fetch(LOTSAWA_TREE_URL))["tree"]
        paths = {entry["path"] for entry in tree}
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"the file listing at {LOTSAWA_TREE_URL} is not a git tree ({err})") from None
    ids = sorted(
        path.removeprefix("text-pairs/").removesuffix("-zh.txt")
        for path in paths
        if path.startswith("text-pairs/") and path.endswith("-zh.txt")
        and path.removesuffix("-zh.txt") + "-bo.txt" in paths
    )
    return [f"{i}-{lang}.txt" for i in ids for lang in ("bo", "zh")]


def lotsawa_dir(data_dir: Path | None) -> Path:
    """The `text-pairs` folder of the Lotsawa House collection: `<data_dir>/lotsawa_house_bo_zh/
    text-pairs/` when present, else the download cache (the listed texts at the pinned commit,
    checked against one collection digest)."""
    local = data_dir / LOTSAWA_DIRNAME / "text-pairs" if data_dir else None
    if local is not None and local.is_dir():
        return local
    cache = data_cache_dir() / "lotsawa" / LOTSAWA_COMMIT / "text-pairs"
    if _collection_digest(cache) == LOTSAWA_SHA256:
        return cache
    try:
        names = _lotsawa_remote_names()
        logger.info("Lotsawa House texts not in the data directory; fetching %d files into %s", len(names), cache)
        with atomic_path(cache) as tmp:  # the folder appears complete and verified, or not at all
            tmp.mkdir()
            for n in names:
                (tmp / n).write_bytes(_fetch(_raw_url(LOTSAWA_REPO, LOTSAWA_COMMIT, f"text-pairs/{n}")))
            digest = _collection_digest(tmp)
            if digest != LOTSAWA_SHA256:
                raise DataError(
                    f"the downloaded collection has digest {digest}, expected {LOTSAWA_SHA256} "
                    f"(corrupt or changed upstream)"
                )
    except DataError as err:
        raise DataError(f"Lotsawa House: {err}. {_no_download_hint(LOTSAWA_DIRNAME, local)}") from None
    return cache


# ----------------------------------------------------------------------------------------------
# NTREX-128
# ----------------------------------------------------------------------------------------------
def _ntrex_lang_file(lang: str, key: str) -> str:
    try:
        return NTREX_LANG_FILES[lang]
    except KeyError:
        raise ConfigError(
            f"{key} {lang!r}: the NTREX source supports {sorted(NTREX_LANG_FILES)}; "
            f"for other languages use a `kind: local` source"
        ) from None


def _read_aligned(paths: Sequence[Path]) -> list[list[str]]:
    """Read line-aligned files; DataError if their line counts differ."""
    columns = [_lines(_read_text(p)) for p in paths]
    counts = {p.name: len(c) for p, c in zip(paths, columns)}
    if len(set(counts.values())) > 1:
        raise DataError(f"{paths[0].parent}: line-aligned files differ in length: {counts}")
    return columns


def load_ntrex(source: NtrexSource, task: TaskConfig, data_dir: Path | None, name: str | None = None) -> list[Example]:
    """NTREX-128 examples for the task's languages.

    Sentence pairs (`headlines=False`, task.kind 'translation'): line i of the source-language
    file -> line i of the target-language file, doc_id from DOCUMENT_IDS.tsv (1,997 pairs, 123
    documents). Headline pairs (`headlines=True`, task.kind 'headline'): per document, its
    remaining lines (or its first `lead_lines` of them) joined by newlines -> its first line (the
    headline), in the task's language (123 pairs).
    """
    if source.headlines and task.kind != "headline":
        raise ConfigError("data.sources: an ntrex source with headlines: true needs task.kind: headline")
    if not source.headlines and task.kind != "translation":
        raise ConfigError("data.sources: task.kind 'headline' needs the ntrex source with headlines: true")
    name = name or ("ntrex-headlines" if source.headlines else "ntrex")
    src_file = _ntrex_lang_file(task.source_lang, "task.source_lang")
    tgt_file = _ntrex_lang_file(task.target_lang, "task.target_lang")
    if not source.headlines and src_file == tgt_file:
        raise ConfigError(f"task: source_lang and target_lang are both {task.source_lang!r} for translation")
    files = list(dict.fromkeys([NTREX_DOC_IDS, src_file, tgt_file]))
    folder = ntrex_dir(data_dir, files)
    doc_ids, src, tgt = _read_aligned([folder / NTREX_DOC_IDS, folder / src_file, folder / tgt_file])
    doc_ids = [d.split("\t")[0].strip() for d in doc_ids]

    if not source.headlines:
        examples = []
        for i, (doc, s, t) in enumerate(zip(doc_ids, src, tgt), start=1):
            if not s.strip() or not t.strip():
                raise DataError(f"{folder / (src_file if not s.strip() else tgt_file)}:{i}: empty line")
            examples.append(Example(f"{name}:{i}", s.strip(), t.strip(), doc, {"line": i}))
        return examples

    by_doc: dict[str, list[int]] = {}
    for i, doc in enumerate(doc_ids):
        by_doc.setdefault(doc, []).append(i)
    examples = []
    for doc, rows in by_doc.items():
        if len(rows) < 2:
            logger.warning("NTREX document %s has a headline but no body; skipped", doc)
            continue
        body_rows = rows[1:][: source.lead_lines]  # lead_lines None: the whole body
        body = "\n".join(src[i].strip() for i in body_rows)
        examples.append(
            Example(f"{name}:{doc}", body, tgt[rows[0]].strip(), doc, {"headline_line": rows[0] + 1, "body_lines": len(body_rows)})
        )
    return examples


# ----------------------------------------------------------------------------------------------
# Lotsawa House
# ----------------------------------------------------------------------------------------------
def load_lotsawa(source: LotsawaSource, task: TaskConfig, data_dir: Path | None, name: str | None = None) -> list[Example]:
    """Lotsawa House Tibetan-Chinese line pairs, in either direction; doc_id = text ID.

    Reads every `<ID>-zh.txt` with its `<ID>-bo.txt` (line-aligned); `skip_titles` drops line 1.
    Lines blank on both sides are skipped; a line blank on one side only is a misalignment
    (DataError).
    """
    if task.kind != "translation" or {task.source_lang, task.target_lang} != LOTSAWA_LANGS:
        raise ConfigError(
            f"data.sources: the lotsawa source is Tibetan-Chinese translation; task is {task.kind} "
            f"{task.source_lang}->{task.target_lang}"
        )
    name = name or "lotsawa"
    folder = lotsawa_dir(data_dir)
    zh_files = sorted(folder.glob("*-zh.txt"))
    if not zh_files:
        raise DataError(f"{folder}: no <ID>-zh.txt files")
    examples = []
    for zh_path in zh_files:
        text_id = zh_path.name.removesuffix("-zh.txt")
        bo_path = folder / f"{text_id}-bo.txt"
        if not bo_path.is_file():
            raise DataError(f"{zh_path}: no matching Tibetan file {bo_path.name}")
        bo, zh = _read_aligned([bo_path, zh_path])
        sides = {"bo": bo, "zh": zh}
        for i, (s, t) in enumerate(zip(sides[task.source_lang], sides[task.target_lang]), start=1):
            if i == 1 and source.skip_titles:
                continue
            if not s.strip() and not t.strip():
                continue
            if not s.strip() or not t.strip():
                blank = zh_path if not zh[i - 1].strip() else bo_path
                raise DataError(f"{blank}:{i}: empty line opposite a non-empty one (misaligned pair)")
            examples.append(Example(f"{name}:{text_id}:{i}", s.strip(), t.strip(), text_id, {"line": i}))
    return examples


# ----------------------------------------------------------------------------------------------
# All sources
# ----------------------------------------------------------------------------------------------
def _source_names(config: ExperimentConfig) -> list[str]:
    """A readable, unique name per source: the id prefix of its examples."""
    names = []
    for src in config.data.sources:
        if isinstance(src, LocalSource):
            base = Path(src.path).stem
        elif isinstance(src, HubSource):
            base = src.id.rsplit("/", 1)[-1] + (f"-{src.config_name}" if src.config_name else "")
        elif isinstance(src, NtrexSource):
            base = "ntrex-headlines" if src.headlines else "ntrex"
        else:
            base = "lotsawa"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def _load_all(config: ExperimentConfig) -> tuple[list[Example], list[dict[str, Any]], int]:
    """Examples after filtering, per-source info for the manifest, and the number filtered out."""
    if not config.data.sources:
        raise ConfigError("data.sources is empty: configure at least one source")
    data_dir = config.resolved_data_dir()
    examples: list[Example] = []
    info: list[dict[str, Any]] = []
    for index, (src, name) in enumerate(zip(config.data.sources, _source_names(config))):
        where = f"data.sources[{index}]"
        if isinstance(src, LocalSource):
            loaded = load_local(src, name, where)
        elif isinstance(src, HubSource):
            loaded = load_hub(src, name, where)
        elif isinstance(src, NtrexSource):
            loaded = load_ntrex(src, config.task, data_dir, name)
        else:
            loaded = load_lotsawa(src, config.task, data_dir, name)
        if not loaded:
            raise DataError(f"{where} ({name}): no examples")
        for ex in loaded:
            ex.metadata.setdefault("source", name)
        examples.extend(loaded)
        info.append({"name": name, "config": src.model_dump(mode="json"), "examples": len(loaded)})

    seen: set[str] = set()
    for ex in examples:
        if ex.id in seen:  # impossible by construction (unique names, unique ids per source)
            raise DataError(f"duplicate example id {ex.id!r}")
        seen.add(ex.id)

    limit = config.data.max_source_chars
    dropped = 0
    if limit is not None:
        kept = [ex for ex in examples if len(ex.source) <= limit]
        dropped = len(examples) - len(kept)
        if dropped:
            logger.info("data.max_source_chars=%d dropped %d of %d examples", limit, dropped, len(examples))
        if not kept:
            raise DataError(f"data.max_source_chars={limit} drops all {len(examples)} examples; raise it or set null")
        examples = kept
    return examples, info, dropped


def load_examples(config: ExperimentConfig) -> list[Example]:
    """All configured sources, in config order (rows in file order), with ids prefixed by the
    source name (unique) and `data.max_source_chars` applied."""
    return _load_all(config)[0]


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------
def resolve_split_sizes(sizes: SplitSizes, total: int) -> dict[str, int | None]:
    """Target example counts per split; None marks the -1 ('the rest') split."""
    targets: dict[str, int | None] = {}
    for name in SPLIT_NAMES:
        value = getattr(sizes, name)
        if value == -1 and not isinstance(value, float):
            targets[name] = None
        elif isinstance(value, float):
            # A requested fraction never rounds down to an empty split.
            targets[name] = max(1, round(value * total))
        else:
            targets[name] = int(value)
    return targets


def split_examples(examples: Sequence[Example], sizes: SplitSizes, seed: int) -> dict[str, list[Example]]:
    """Split by document: returns {'cold_start', 'rl', 'dev', 'test'} -> examples.

    Documents (sorted by id, then shuffled with `seed`) fill test, dev, cold_start and rl in that
    order, each until it holds at least its target (a document is never split, so a split may
    overshoot by less than one document); the -1 split takes what is left. Within a split,
    examples keep their input order. DataError when the data cannot fill the requested sizes.
    """
    total = len(examples)
    if total == 0:
        raise DataError("no examples to split")
    docs: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        docs.setdefault(ex.doc_id, []).append(i)
    order = sorted(docs)
    random.Random(seed).shuffle(order)
    targets = resolve_split_sizes(sizes, total)

    pool = list(reversed(order))  # pop() from the end = take from the front of `order`
    taken: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    done: list[str] = []
    for name in ASSIGNMENT_ORDER:
        target = targets[name]
        if target is None:
            continue
        count = 0
        while count < target:
            if not pool:
                remaining = total - sum(len(docs[d]) for n in done for d in taken[n])
                raise DataError(
                    f"data.splits.{name} asks for {target} examples, but only {remaining} "
                    f"remain after {', '.join(f'{n} ({sum(len(docs[d]) for d in taken[n])})' for n in done) or 'nothing'} "
                    f"out of {total} examples in {len(docs)} documents (splits take whole documents). "
                    f"Lower data.splits.{name} or another split, or add data."
                )
            doc = pool.pop()
            taken[name].append(doc)
            count += len(docs[doc])
        done.append(name)
    rest = [name for name in SPLIT_NAMES if targets[name] is None]
    if rest:
        taken[rest[0]] = list(reversed(pool))
        if not pool:
            raise DataError(
                f"data.splits.{rest[0]} is -1 (the rest) but nothing is left: the other splits take all "
                f"{total} examples in {len(docs)} documents. Lower them, or set {rest[0]}: 0."
            )
    elif pool:
        logger.info("%d documents (%d examples) fit no split and are unused",
                    len(pool), sum(len(docs[d]) for d in pool))

    return {
        name: [examples[i] for i in sorted(i for d in taken[name] for i in docs[d])]
        for name in SPLIT_NAMES
    }


def split_summary(splits: Mapping[str, Sequence[Example]]) -> list[dict[str, Any]]:
    """One row per split: split, examples, documents, mean source/reference length (characters)."""
    ordered = [n for n in SPLIT_NAMES if n in splits] + [n for n in splits if n not in SPLIT_NAMES]
    rows = []
    for name in ordered:
        exs = splits[name]
        n = len(exs)
        rows.append(
            {
                "split": name,
                "examples": n,
                "documents": len({ex.doc_id for ex in exs}),
                "mean_source_chars": sum(len(ex.source) for ex in exs) / n if n else 0.0,
                "mean_reference_chars": sum(len(ex.reference) for ex in exs) / n if n else 0.0,
            }
        )
    return rows


# ----------------------------------------------------------------------------------------------
# Writing and reading splits
# ----------------------------------------------------------------------------------------------
def _jsonl_bytes(examples: Sequence[Example]) -> bytes:
    return "".join(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n" for ex in examples).encode("utf-8")


def prepare_data(config: ExperimentConfig, out_dir: Path) -> dict[str, list[Example]]:
    """Load, filter and split the configured data; write `out_dir/splits/` atomically.

    The folder holds `<split>.jsonl` (one `Example.to_dict()` per line) for cold_start, rl, dev
    and test, and `manifest.json` (seed, requested and obtained sizes, sources, per-split sha256,
    config hash of the seed/task/data sections). It appears complete or not at all.
    """
    examples, sources, dropped = _load_all(config)
    splits = split_examples(examples, config.data.splits, config.seed)
    split_info: dict[str, Any] = {}
    blobs = {name: _jsonl_bytes(splits[name]) for name in SPLIT_NAMES}
    for name in SPLIT_NAMES:
        split_info[name] = {
            "file": f"{name}.jsonl",
            "examples": len(splits[name]),
            "documents": len({ex.doc_id for ex in splits[name]}),
            "sha256": _sha256_bytes(blobs[name]),
        }
    used = sum(info["examples"] for info in split_info.values())
    used_docs = sum(info["documents"] for info in split_info.values())
    all_docs = len({ex.doc_id for ex in examples})
    manifest = {
        "format": MANIFEST_VERSION,
        "seed": config.seed,
        "config_hash": config.hash(*CONFIG_HASH_SECTIONS),
        "config_hash_sections": list(CONFIG_HASH_SECTIONS),
        "task": config.task.model_dump(mode="json"),
        "sources": sources,
        "max_source_chars": config.data.max_source_chars,
        "dropped_by_max_source_chars": dropped,
        "total": {"examples": len(examples), "documents": all_docs},
        "sizes_requested": config.data.splits.model_dump(mode="json"),
        "target_examples": resolve_split_sizes(config.data.splits, len(examples)),
        "splits": split_info,
        "unused": {"examples": len(examples) - used, "documents": all_docs - used_docs},
    }
    with atomic_path(Path(out_dir) / "splits") as tmp:
        tmp.mkdir()
        for name in SPLIT_NAMES:
            (tmp / f"{name}.jsonl").write_bytes(blobs[name])
        (tmp / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return splits


def read_examples(path: Path) -> list[Example]:
    """Read a JSONL file of `Example.to_dict()` lines; DataError names file:line on bad input."""
    path = Path(path)
    text = _read_text(path)
    examples = []
    for lineno, obj in _iter_jsonl(path, text):
        try:
            examples.append(Example.from_dict(obj))
        except DataError as err:
            raise DataError(f"{path}:{lineno}: {err}") from None
    return examples


def load_splits(out_dir: Path) -> dict[str, list[Example]]:
    """Read `out_dir/splits/<split>.jsonl` back. DataError if a file is missing, malformed, or
    (when the manifest is there) differs from the sha256 recorded when it was written."""
    folder = Path(out_dir) / "splits"
    if not folder.is_dir():
        raise DataError(f"{folder}: no splits here; run `semrl data prepare CONFIG --out {out_dir}` first")
    manifest_path = folder / "manifest.json"
    manifest: dict[str, Any] = {}
    if manifest_path.is_file():
        try:
            manifest = json.loads(_read_text(manifest_path))
        except json.JSONDecodeError as err:
            raise DataError(f"{manifest_path}:{err.lineno}: malformed JSON ({err.msg})") from None
    splits = {}
    for name in SPLIT_NAMES:
        path = folder / f"{name}.jsonl"
        if not path.is_file():
            raise DataError(f"{path}: missing; re-run `semrl data prepare` (delete {folder} first)")
        expected = manifest.get("splits", {}).get(name, {}).get("sha256")
        if expected and _sha256_file(path) != expected:
            raise DataError(
                f"{path}: changed since it was prepared (sha256 differs from {manifest_path}); "
                f"delete {folder} and re-run `semrl data prepare`"
            )
        splits[name] = read_examples(path)
    return splits


# ----------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------
def check_template(template: str, key: str, allowed: frozenset[str], required: tuple[str, ...]) -> str:
    """Check a str.format template: valid syntax, only `allowed` placeholders, every `required`
    one present; ConfigError naming the config `key` otherwise. Returns the template."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as err:
        raise ConfigError(f"{key}: not a valid format string ({err}); write literal braces as {{{{ }}}}") from None
    unknown = sorted(fields - allowed)
    if unknown:
        raise ConfigError(f"{key}: unknown placeholder(s) {unknown}; allowed: {sorted(allowed)}")
    missing = [f"{{{name}}}" for name in required if name not in fields]
    if missing:
        raise ConfigError(f"{key}: must contain {', '.join(missing)}")
    return template


def prompt_template(task: TaskConfig) -> str:
    """The task's completion-style template (its own or semrl's default), checked for fields."""
    template = task.prompt_template or DEFAULT_TEMPLATES[task.kind]
    return check_template(template, "task.prompt_template", TEMPLATE_FIELDS, ("source",))


def language_fields(task: TaskConfig) -> dict[str, str]:
    """The task's language placeholders of prompt templates (codes and English names)."""
    return {
        "source_lang": task.source_lang,
        "target_lang": task.target_lang,
        "source_lang_name": language_name(task.source_lang),
        "target_lang_name": language_name(task.target_lang),
    }


def prompt_text(source: str, task: TaskConfig) -> str:
    """The prompt as plain text (no chat formatting), with trailing whitespace removed."""
    return prompt_template(task).format(source=source, **language_fields(task)).rstrip()


def uses_chat_template(task: TaskConfig, tokenizer: Any = None) -> bool:
    """Whether prompts are conversational: 'never' no; 'auto' iff the tokenizer has a chat
    template; 'always' yes (ModelError if the given tokenizer has none)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if task.use_chat_template == "never":
        return False
    if task.use_chat_template == "auto":
        return has_template
    if tokenizer is not None and not has_template:
        raise ModelError(
            "task.use_chat_template is 'always' but the tokenizer has no chat template (a base model?); "
            "set it to 'auto' or 'never'"
        )
    return True


def build_prompt(source: str, task: TaskConfig, tokenizer: Any = None) -> str | list[dict[str, str]]:
    """The model input for one source text: a completion-style string, or `[{"role": "user",
    "content": ...}]` when chat templates are in use (see `uses_chat_template`)."""
    text = prompt_text(source, task)
    if uses_chat_template(task, tokenizer):
        return [{"role": "user", "content": text}]
    return text


def completion_text(reference: str, task: TaskConfig, tokenizer: Any = None) -> str | list[dict[str, str]]:
    """The training target matching `build_prompt`: " " + reference (completion style, see the
    module docstring), or `[{"role": "assistant", "content": reference}]`."""
    if uses_chat_template(task, tokenizer):
        return [{"role": "assistant", "content": reference}]
    return COMPLETION_PREFIX + reference


# ----------------------------------------------------------------------------------------------
# TRL datasets
# ----------------------------------------------------------------------------------------------
def to_sft_dataset(examples: Sequence[Example], task: TaskConfig, tokenizer: Any = None) -> datasets.Dataset:
    """A prompt/completion dataset: TRL's SFTTrainer trains on the completion tokens only and
    appends the EOS token to each completion."""
    import datasets

    if not examples:
        raise DataError("no examples for an SFT dataset (is the split empty? see data.splits)")
    return datasets.Dataset.from_dict(
        {
            "prompt": [build_prompt(ex.source, task, tokenizer) for ex in examples],
            "completion": [completion_text(ex.reference, task, tokenizer) for ex in examples],
        }
    )


def to_grpo_dataset(examples: Sequence[Example], task: TaskConfig, tokenizer: Any = None) -> datasets.Dataset:
    """A GRPO prompt dataset; TRL hands the extra columns (reference, source, id) to every reward
    function as keyword lists aligned with the completions."""
    import datasets

    if not examples:
        raise DataError("no examples for a GRPO dataset (is the rl split empty? see data.splits.rl)")
    return datasets.Dataset.from_dict(
        {
            "prompt": [build_prompt(ex.source, task, tokenizer) for ex in examples],
            "reference": [ex.reference for ex in examples],
            "source": [ex.source for ex in examples],
            "id": [ex.id for ex in examples],
        }
    )
