"""NTREX-128 news (Tibetan, Chinese, English; line-aligned, 123 documents): sentence pairs or body -> headline pairs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from semrl.config.data import (
    NtrexSource,
    TaskConfig,
)
from semrl.core.errors import ConfigError, DataError
from semrl.data.download import (
    data_cache_dir,
    download_verified,
    no_download_hint,
    raw_url,
)
from semrl.data.example import Example, read_text, split_lines

if TYPE_CHECKING:
    pass


logger = logging.getLogger(__name__)


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
            download_verified(raw_url(NTREX_REPO, NTREX_COMMIT, repo_path), cache / f, sha)
    except DataError as err:
        raise DataError(f"NTREX-128: {err}. {no_download_hint(NTREX_DIRNAME, local)}") from None
    return cache


def _ntrex_lang_file(lang: str, key: str) -> str:
    try:
        return NTREX_LANG_FILES[lang]
    except KeyError:
        raise ConfigError(
            f"{key} {lang!r}: the NTREX source supports {sorted(NTREX_LANG_FILES)}; "
            f"for other languages use a `kind: local` source"
        ) from None


def read_aligned(paths: Sequence[Path]) -> list[list[str]]:
    """Read line-aligned files; DataError if their line counts differ."""
    columns = [split_lines(read_text(p)) for p in paths]
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
    doc_ids, src, tgt = read_aligned([folder / NTREX_DOC_IDS, folder / src_file, folder / tgt_file])
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
            Example(
                f"{name}:{doc}",
                body,
                tgt[rows[0]].strip(),
                doc,
                {"headline_line": rows[0] + 1, "body_lines": len(body_rows)},
            )
        )
    return examples
