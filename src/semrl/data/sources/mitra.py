"""MITRA-parallel Tibetan -> Buddhist Chinese (dharmamitra/mitra-parallel), read from the data
directory or fetched at a pinned commit, each file checked against its git blob SHA-1.

Upstream keeps one TSV per (Tibetan text, Taisho text) pair, `mitra-parallel/tsv/<Tibetan text
id>_<Taisho id>.tsv`, with the header `src_segmentnr, src_original, tgt_segmentnr, tgt_original`
(Tibetan, then Chinese). A document is a Tibetan text: the file name before the Taisho id
(`K01D0001-2_H0001-2`: Derge and Lhasa numbers), which is also the prefix of `src_segmentnr`. The
Derge part alone is not an id: `K10Dx` stands for several texts (`K10Dx_H0101`, `K10Dx_H0259`...).

Two collections:
- `subset` (default): the files the data directory's `mitra_bo_zh/FILES.txt` lists with their blob
  SHA-1 (the shared copy: 588 files of 94 Kangyur texts, about 120k rows); without FILES.txt, the
  files of its `tsv/` folder as they are. semrl ships no copy of that selection: it is the data
  directory's. A listed file missing from `tsv/` is downloaded at the pinned commit and checked.
- `upstream`: every Tibetan -> Chinese file of the pinned commit. Its names come from GitHub's
  git-tree API at that commit (one call, cached with the files), so it needs the network once:
  files named `<[KT]..D.. text>_<T..n.. Taisho>.tsv`, less those whose Taisho id ends in `u`
  (Sanskrit texts in Taisho numbering) and, when read, those whose target column is not mostly
  Chinese (36 files at the pinned commit have Sanskrit there). 5,889 files, 852 Tibetan texts
  (445 Kangyur), 825,907 rows as counted at the pinned commit.

The `texts` option keeps the texts whose id matches a glob or a `re:` regular expression.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from collections.abc import Collection
from pathlib import Path

from semrl.config.data import MitraSource, TaskConfig
from semrl.core import lang
from semrl.core.errors import ConfigError, DataError
from semrl.core.io import atomic_path
from semrl.data import download  # download.fetch: one patch point for tests and offline fakes
from semrl.data.download import data_cache_dir, git_blob_sha1, no_download_hint, raw_url
from semrl.data.example import Example, read_text, split_lines

logger = logging.getLogger(__name__)


MITRA_REPO = "dharmamitra/mitra-parallel"
MITRA_COMMIT = "301e922605d833da9bec8bebaf7fc99118b74840"
MITRA_DIRNAME = "mitra_bo_zh"
MITRA_TSV_PATH = "mitra-parallel/tsv"
MITRA_TREE_URL = f"https://api.github.com/repos/{MITRA_REPO}/git/trees/{MITRA_COMMIT}?recursive=1"
MITRA_LANGS = frozenset({"bo", "zh"})
MITRA_HEADER = ("src_segmentnr", "src_original", "tgt_segmentnr", "tgt_original")
MITRA_LISTING_FILE = "FILES.txt"  # in the data directory's mitra_bo_zh/: <blob sha1><TAB><upstream path>
# <Tibetan text id: Kangyur K.., Tengyur T.., each with a Derge D number>_<Taisho id T..n..>.tsv
MITRA_FILE_NAME = re.compile(r"^(?P<text>[KT]\d{2}D.*?)_(?P<taisho>T\d{2}n[0-9A-Za-z_-]*)\.tsv$")
# Taisho ids ending in u (u_001...) are Sanskrit texts under Taisho numbers: not Chinese.
_SANSKRIT_TAISHO = re.compile(r"u(?:_\d+)?$")


def mitra_text_id(file_name: str) -> str | None:
    """The Tibetan text id of a Tibetan -> Chinese file name (None for any other file)."""
    m = MITRA_FILE_NAME.match(file_name)
    if m is None or _SANSKRIT_TAISHO.search(m["taisho"]):
        return None
    return m["text"]


def parse_listing(text: str) -> dict[str, str]:
    """`<blob sha1><TAB><path>` lines (`#` comments allowed) -> {file name: blob sha1}, keeping
    the Tibetan -> Chinese files of the tsv folder."""
    files = {}
    for line in split_lines(text):
        if not line.strip() or line.startswith("#"):
            continue
        sha, _, path = line.partition("\t")
        name = path.rsplit("/", 1)[-1]
        if path.startswith(MITRA_TSV_PATH + "/") and mitra_text_id(name) is not None:
            files[name] = sha.strip()
    return files


def local_listing(data_dir: Path | None) -> dict[str, str | None]:
    """The data directory's MITRA files: {file name: blob SHA-1} from `mitra_bo_zh/FILES.txt`, else
    {file name: None} for the TSVs of its `tsv/` folder; empty without a data directory."""
    if data_dir is None:
        return {}
    folder = data_dir / MITRA_DIRNAME
    if (folder / MITRA_LISTING_FILE).is_file():
        return dict(parse_listing(read_text(folder / MITRA_LISTING_FILE)))
    tsv = folder / "tsv"
    names = sorted(p.name for p in tsv.glob("*.tsv")) if tsv.is_dir() else []
    return {n: None for n in names if mitra_text_id(n) is not None}


def upstream_listing() -> dict[str, str]:
    """Every Tibetan -> Chinese file of the pinned commit, from GitHub's tree API (cached)."""
    cache = data_cache_dir() / "mitra" / MITRA_COMMIT / "listing.txt"
    if cache.is_file():
        return parse_listing(read_text(cache))
    try:
        tree = json.loads(download.fetch(MITRA_TREE_URL))
        if tree.get("truncated"):
            raise DataError(f"the file listing at {MITRA_TREE_URL} came back truncated")
        lines = [f"{e['sha']}\t{e['path']}" for e in tree["tree"] if e.get("type") == "blob"]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"the file listing at {MITRA_TREE_URL} is not a git tree ({err})") from None
    text = "".join(line + "\n" for line in sorted(lines))
    files = parse_listing(text)
    if not files:
        raise DataError(f"the file listing at {MITRA_TREE_URL} has no Tibetan->Chinese file under {MITRA_TSV_PATH}/")
    with atomic_path(cache) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return files


def _matches(text_id: str, patterns: list[str]) -> bool:
    for p in patterns:
        if p.startswith("re:"):
            if re.fullmatch(p[3:], text_id):
                return True
        elif fnmatch.fnmatchcase(text_id, p):
            return True
    return False


def select_texts(text_ids: Collection[str], texts: str | list[str] | None) -> list[str]:
    """The ids of `text_ids` that match `texts` (all when None); DataError naming some ids when
    nothing matches."""
    ids = sorted(text_ids)
    if texts is None:
        return ids
    patterns = [texts] if isinstance(texts, str) else list(texts)
    chosen = [i for i in ids if _matches(i, patterns)]
    if not chosen:
        raise DataError(
            f"data.sources: mitra texts {texts!r} match none of the collection's {len(ids)} Tibetan texts "
            f"(ids such as {', '.join(ids[:3])}); fix the pattern, or set collection: upstream for texts outside "
            f"the subset"
        )
    return chosen


def mitra_files(source: MitraSource, data_dir: Path | None) -> list[Path]:
    """Paths of the selected files: from `<data_dir>/mitra_bo_zh/tsv/` when there, else from the
    download cache (fetched at the pinned commit and checked against the listed blob SHA-1)."""
    local = data_dir / MITRA_DIRNAME / "tsv" if data_dir else None
    cache = data_cache_dir() / "mitra" / MITRA_COMMIT / "tsv"
    if source.collection == "subset":
        listing = local_listing(data_dir)
        if not listing:
            where = f"{data_dir / MITRA_DIRNAME} has neither" if data_dir else "no data directory is set"
            raise DataError(
                f"MITRA: the 'subset' collection is the files the data directory's {MITRA_DIRNAME}/{MITRA_LISTING_FILE} "
                f"lists (else its tsv/ folder's), and {where}. Point data.data_dir or SEMRL_DATA_DIR at a directory "
                f"holding {MITRA_DIRNAME}/, or set collection: upstream (every Tibetan->Chinese file at the pinned "
                f"commit, downloaded; texts: selects Tibetan texts by pattern)"
            )
    else:
        try:
            listing = upstream_listing()
        except DataError as err:
            raise DataError(f"MITRA: {err}. {no_download_hint(MITRA_DIRNAME + '/tsv', local)}") from None
    wanted = set(select_texts({mitra_text_id(n) for n in listing}, source.texts))
    chosen = {n: sha for n, sha in listing.items() if mitra_text_id(n) in wanted}
    paths = {n: local / n for n in chosen if local is not None and (local / n).is_file()}
    missing = sorted(set(chosen) - set(paths))
    if missing:
        logger.info(
            "MITRA: %d of %d files not in the data directory; fetching into %s", len(missing), len(chosen), cache
        )
    try:
        for n in missing:
            url = raw_url(MITRA_REPO, MITRA_COMMIT, f"{MITRA_TSV_PATH}/{n}")
            paths[n] = download.download_verified(
                url, cache / n, chosen[n], digest_of=git_blob_sha1, digest_name="git blob SHA-1"
            )
    except DataError as err:
        raise DataError(f"MITRA: {err}. {no_download_hint(MITRA_DIRNAME + '/tsv', local)}") from None
    return [paths[n] for n in sorted(paths)]


def _mostly_chinese(texts: list[str]) -> bool:
    counts = lang.script_counts("".join(texts))
    return counts.get("han", 0) > sum(v for k, v in counts.items() if k != "han")


def read_mitra_file(path: Path) -> list[tuple[int, str, str, str, str]]:
    """Rows of one MITRA TSV as (line, src_segmentnr, Tibetan, tgt_segmentnr, Chinese); DataError
    naming file:line for a wrong header or field count. Rows with an empty side are skipped."""
    lines = split_lines(read_text(path))
    if not lines or tuple(h.strip() for h in lines[0].split("\t")) != MITRA_HEADER:
        raise DataError(f"{path}:1: expected the header {' / '.join(MITRA_HEADER)} (tab-separated)")
    rows, blank = [], 0
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(MITRA_HEADER):
            raise DataError(f"{path}:{lineno}: {len(fields)} field(s), expected {len(MITRA_HEADER)}")
        src_id, bo, tgt_id, zh = (f.strip() for f in fields)
        if not bo or not zh:
            blank += 1
            continue
        rows.append((lineno, src_id, bo, tgt_id, zh))
    if blank:
        logger.warning("%s: %d row(s) with an empty side skipped", path, blank)
    return rows


def load_mitra(source: MitraSource, task: TaskConfig, data_dir: Path | None, name: str | None = None) -> list[Example]:
    """MITRA Tibetan-Chinese pairs, in either direction; doc_id = the Tibetan text id.

    Ids are `<name>:<file stem>:<line>`; metadata keeps the file, line and both segment numbers. A
    file whose Chinese column is not mostly Han characters is skipped with a warning.
    """
    if task.kind != "translation" or {task.source_lang, task.target_lang} != MITRA_LANGS:
        raise ConfigError(
            f"data.sources: the mitra source is Tibetan-Chinese translation; task is {task.kind} "
            f"{task.source_lang}->{task.target_lang}"
        )
    name = name or "mitra"
    examples = []
    for path in mitra_files(source, data_dir):
        rows = read_mitra_file(path)
        if rows and not _mostly_chinese([r[4] for r in rows]):
            logger.warning("%s: its target column is not Chinese (Sanskrit?); file skipped", path)
            continue
        text_id = mitra_text_id(path.name) or path.stem
        for lineno, src_id, bo, tgt_id, zh in rows:
            sides = {"bo": bo, "zh": zh}
            meta = {"file": path.stem, "line": lineno, "bo_segment": src_id, "zh_segment": tgt_id}
            examples.append(
                Example(f"{name}:{path.stem}:{lineno}", sides[task.source_lang], sides[task.target_lang], text_id, meta)
            )
    return examples
