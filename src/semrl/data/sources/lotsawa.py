"""Lotsawa House Tibetan-Chinese liturgy pairs (OpenPecha C0A2DD042), read locally or fetched at a pinned commit."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from semrl.config.data import (
    LotsawaSource,
    TaskConfig,
)
from semrl.core.errors import ConfigError, DataError
from semrl.core.io import atomic_path
from semrl.data import download  # download.fetch: one patch point for tests and offline fakes
from semrl.data.download import (
    data_cache_dir,
    no_download_hint,
    raw_url,
    sha256_bytes,
    sha256_file,
)
from semrl.data.example import Example
from semrl.data.sources.ntrex import read_aligned

if TYPE_CHECKING:
    pass


logger = logging.getLogger(__name__)


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


def _collection_digest(folder: Path) -> str | None:
    """sha256 of a `sha256sum`-style listing of the folder's files, or None if it has none."""
    names = sorted(p.name for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
    if not names:
        return None
    listing = "".join(f"{n}  {sha256_file(folder / n)}\n" for n in names)
    return sha256_bytes(listing.encode())


def _lotsawa_remote_names() -> list[str]:
    """The Tibetan-Chinese text pairs at the pinned commit, from its file listing:
    `<ID>-bo.txt` and `<ID>-zh.txt` for every ID that has both."""
    try:
        tree = json.loads(download.fetch(LOTSAWA_TREE_URL))["tree"]
        paths = {entry["path"] for entry in tree}
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"the file listing at {LOTSAWA_TREE_URL} is not a git tree ({err})") from None
    ids = sorted(
        path.removeprefix("text-pairs/").removesuffix("-zh.txt")
        for path in paths
        if path.startswith("text-pairs/")
        and path.endswith("-zh.txt")
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
                (tmp / n).write_bytes(download.fetch(raw_url(LOTSAWA_REPO, LOTSAWA_COMMIT, f"text-pairs/{n}")))
            digest = _collection_digest(tmp)
            if digest != LOTSAWA_SHA256:
                raise DataError(
                    f"the downloaded collection has digest {digest}, expected {LOTSAWA_SHA256} "
                    f"(corrupt or changed upstream)"
                )
    except DataError as err:
        raise DataError(f"Lotsawa House: {err}. {no_download_hint(LOTSAWA_DIRNAME, local)}") from None
    return cache


def load_lotsawa(
    source: LotsawaSource, task: TaskConfig, data_dir: Path | None, name: str | None = None
) -> list[Example]:
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
        bo, zh = read_aligned([bo_path, zh_path])
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
