"""MITRA-parallel Tibetan -> Buddhist Chinese (dharmamitra/mitra-parallel), read from the data
directory or fetched at a pinned commit, each file checked against its git blob SHA-1.

Upstream keeps one TSV per (Tibetan text, Taisho text) pair, `mitra-parallel/tsv/<Tibetan text
id>_<Taisho id>.tsv`, with the header `src_segmentnr, src_original, tgt_segmentnr, tgt_original`
(Tibetan, then Chinese). A document is a Tibetan text: the file name before the Taisho id
(`K01D0001-2_H0001-2`: Derge and Lhasa numbers), which is also the prefix of `src_segmentnr`. The
Derge part alone is not an id: `K10Dx` stands for several texts (`K10Dx_H0101`, `K10Dx_H0259`...).

Two collections:
- `subset` (default): every file of the 94 Kangyur texts in `MITRA_SUBSET_TEXTS` (588 files,
  about 120k rows; the shared data directory's `mitra_bo_zh/`). Offline from the data directory,
  whose `FILES.txt` lists each file with its blob SHA-1 (without it, the `tsv/` folder's files are
  taken as they are); a selected text with no file there is listed from the pinned tree, like
  `upstream`, and its files are downloaded and checked against their blob SHA-1.
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
# The default collection: 94 Kangyur texts drawn at random (seed 2026) among the 448 Kangyur texts
# until about 120k rows, as in the shared data directory's mitra_bo_zh/SOURCE.md. A selection, like
# the Lotsawa ids: the file names and blob SHA-1s come from the data directory or the pinned tree.
MITRA_SUBSET_TEXTS: tuple[str, ...] = (
    "K01D0001_H0001",
    "K01D0004_H0004",
    "K01D0005_H0005",
    "K01D0007B-2_H0008-2",
    "K02D0008-12_H0009-12",
    "K02D0008-2_H0009-2",
    "K02D0008-4_H0009-4",
    "K02D0008-9_H0009-9",
    "K03D0009-3_H0010-3",
    "K05D0010_H0012",
    "K06D0011-2_H0013-2",
    "K06D0014_H0014",
    "K06D0042_H0043",
    "K08D0044_H0094",
    "K08D0055_H0055",
    "K08D0056_H0056",
    "K08D0057_H0058",
    "K08D0074_H0074",
    "K08D0077_H0077",
    "K08D0082_H0082",
    "K08D0086_H0086",
    "K08D0088_H0088",
    "K08D0089_H0089",
    "K08D0090_H0090",
    "K08D0091_H0091",
    "K09D0094_H0095",
    "K10D0098=D0721_H0099",
    "K10D0101_H0104",
    "K10D0110_H0113",
    "K10D0116_H0119",
    "K10D0120_H0122",
    "K10D0123_H0125",
    "K10D0134_H0136",
    "K10D0141=D0526=D0916_H0143",
    "K10D0154_H0155",
    "K10D0165_H0166",
    "K10D0175_H0176",
    "K10D0179_H0180",
    "K10D0182_H0183",
    "K10D0184_H0185",
    "K10D0190_H0191",
    "K10D0193_H0194",
    "K10D0202_H0203",
    "K10D0209_H0210",
    "K10D0216_H0217",
    "K10D0246_H0247",
    "K10D0273=D0511=D0853_H0275",
    "K10D0287-4_H0289-4",
    "K10D0296_H0299",
    "K10D0301_H0304",
    "K10D0310_H0313",
    "K10D0319_H0323",
    "K10D0331_H0335",
    "K10D0336_H0340",
    "K10D0338_H0343",
    "K10D0339_H0345",
    "K10D0346_H0354",
    "K10D0354_H0362",
    "K10D0355_H0363",
    "K10Dx_H0101",
    "K12D0370_H0386",
    "K12D0381_H0396",
    "K12D0382_H0397",
    "K12D0417-18_H0378",
    "K12D0444_H0418",
    "K12D0468_H0434",
    "K12D0474_H0440",
    "K12D0480_H0448",
    "K12D0481_H0449",
    "K12D0482_H0450",
    "K12D0486_H0451",
    "K12D0487_D0470_H0453",
    "K12D0490_H0459",
    "K12D0494_H0462",
    "K12D0510=D0982_H0556",
    "K12D0513=D0856_H0488",
    "K12D0541=D0931_H0709",
    "K12D0552_H0504",
    "K12D0559_H0517",
    "K12D0569=D0859_H0591",
    "K12D0592_H0543",
    "K12D0599=D0983_H0545",
    "K12D0604_H0581",
    "K12D0609=D0925_H0587",
    "K12D0642_H0621",
    "K12D0657=D0235=D1063_H0625",
    "K12D0671_H0638",
    "K12D0707=D0919_H0670",
    "K12D0724_H0711",
    "K12D0727=D0745=D1000_H0677",
    "K12D0740=D1005_H0685",
    "K12D0746-2_H0691-2",
    "K12D0772=D0907_H0714",
    "K12Dx_H0662",
)


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


def subset_listing(text_ids: Collection[str], data_dir: Path | None) -> dict[str, str | None]:
    """The files of the subset texts `text_ids`: the data directory's (`local_listing`), and for a
    text it has no file of, the pinned tree's (`upstream_listing`, which needs the network once)."""
    wanted = set(text_ids)
    listing = {n: sha for n, sha in local_listing(data_dir).items() if mitra_text_id(n) in wanted}
    absent = wanted - {mitra_text_id(n) for n in listing}
    if absent:
        listing |= {n: sha for n, sha in upstream_listing().items() if mitra_text_id(n) in absent}
    return listing


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
    subset = source.collection == "subset"
    texts = select_texts(MITRA_SUBSET_TEXTS, source.texts) if subset else []
    try:
        listing = subset_listing(texts, data_dir) if subset else upstream_listing()
    except DataError as err:
        raise DataError(f"MITRA: {err}. {no_download_hint(MITRA_DIRNAME + '/tsv', local)}") from None
    if not subset:
        texts = select_texts({mitra_text_id(n) for n in listing}, source.texts)
    wanted = set(texts)
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
