"""The data layer: sources, document-level splits, prepared split files, prompts, TRL datasets.

Every fixture is written into tmp_path; only the `shared_data_dir` tests read ../shared/data.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from fixture_data import serve_downloads

from semrl import data
from semrl.config.data import HubSource, LocalSource, LotsawaSource, NtrexSource, SplitSizes, TaskConfig
from semrl.config.experiment import ExperimentConfig, parse_config
from semrl.core.errors import ConfigError, DataError, ModelError
from semrl.data import download
from semrl.data.example import Example
from semrl.data.sources import lotsawa as lotsawa_source
from semrl.data.sources import ntrex as ntrex_source

BO = ["བཀྲ་ཤིས་བདེ་ལེགས།", "ཐུགས་རྗེ་ཆེ།", "ཁྱེད་རང་སྐུ་གཟུགས་བདེ་པོ་ཡིན་པས།", "ང་བོད་པ་ཡིན།", "ཉི་མ་ཤར་སོང་།", "ཆུ་འཐུང་།"]
ZH = ["吉祥如意。", "谢谢。", "你身体好吗？", "我是藏族人。", "太阳出来了。", "喝水。"]
EN = ["Good luck.", "Thanks.", "How are you?", "I am Tibetan.", "The sun rose.", "Drink water."]


def _rows(n: int = 6) -> list[dict[str, str]]:
    return [{"uid": f"r{i}", "bo": BO[i], "zh": ZH[i], "doc": f"d{i // 2}"} for i in range(n)]


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _delimited(path: Path, rows: list[dict[str, str]], delimiter: str) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _local(path: Path, **columns: str) -> LocalSource:
    return LocalSource(
        path=str(path), columns=columns or {"source": "bo", "reference": "zh", "doc_id": "doc", "id": "uid"}
    )


def _config(sources: list[dict[str, Any]], splits: dict[str, Any] | None = None, **extra: Any) -> ExperimentConfig:
    return parse_config({"data": {"sources": sources, "splits": splits or {}}, **extra})


def _many_examples(n_docs: int = 40, seed: int = 0) -> list[Example]:
    """Documents of 1-7 examples each, so whole-document filling is exercised."""
    import random

    rng = random.Random(seed)
    out = []
    for d in range(n_docs):
        for k in range(rng.randint(1, 7)):
            out.append(Example(f"x:{d}-{k}", f"{BO[k % 6]} {d}", f"{ZH[k % 6]}{d}", f"doc{d}"))
    return out


# ----------------------------------------------------------------------------------------------
# Example
# ----------------------------------------------------------------------------------------------
def test_example_round_trip() -> None:
    ex = Example("a:1", BO[0], ZH[0], "d", {"line": 3})
    assert Example.from_dict(ex.to_dict()) == ex
    assert Example.from_dict({"id": "a", "source": "s", "reference": "r", "doc_id": "d"}).metadata == {}
    with pytest.raises(DataError, match="doc_id"):
        Example.from_dict({"id": "a", "source": "s", "reference": "r"})


# ----------------------------------------------------------------------------------------------
# Local files
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv"])
def test_local_formats_map_columns(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"pairs.{fmt}"
    if fmt == "jsonl":
        _jsonl(path, _rows())
    else:
        _delimited(path, _rows(), "," if fmt == "csv" else "\t")
    examples = data.load_local(_local(path))
    assert [ex.source for ex in examples] == BO
    assert [ex.reference for ex in examples] == ZH
    assert examples[0].id == "pairs:r0"
    assert [ex.doc_id for ex in examples] == ["d0", "d0", "d1", "d1", "d2", "d2"]
    assert examples[2].metadata["origin"] == f"{path}:{3 if fmt == 'jsonl' else 4}"  # header is line 1


def test_local_defaults_one_document_per_row(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"bo": b, "zh": z} for b, z in zip(BO, ZH)])
    examples = data.load_local(LocalSource(path=str(path), columns={"source": "bo", "reference": "zh"}))
    assert [ex.id for ex in examples] == [f"p:{i}" for i in range(1, 7)]  # line numbers
    assert [ex.doc_id for ex in examples] == [ex.id for ex in examples]


def test_csv_quoted_field_with_comma_and_newline(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text('bo,zh\n"ཀ, ཁ\nག","甲，乙"\nང,丁\n', encoding="utf-8")
    examples = data.load_local(LocalSource(path=str(path), columns={"source": "bo", "reference": "zh"}))
    assert examples[0].source == "ཀ, ཁ\nག"
    # ids are the line a record starts on: the quoted record spans lines 2-3
    assert [ex.id for ex in examples] == ["p:2", "p:4"]


def test_tsv_keeps_quote_characters(tmp_path: Path) -> None:
    path = tmp_path / "p.tsv"
    path.write_text('bo\tzh\n"ཀ\t“甲”"\n', encoding="utf-8")
    (ex,) = data.load_local(LocalSource(path=str(path), columns={"source": "bo", "reference": "zh"}))
    assert (ex.source, ex.reference) == ('"ཀ', '“甲”"')


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_rows()[0], ensure_ascii=False) + "\n\n{not json}\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:3: malformed JSON"):
        data.load_local(_local(path))


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_missing_column_names_file_and_line(tmp_path: Path, fmt: str) -> None:
    rows = _rows(3)
    if fmt == "jsonl":
        del rows[1]["zh"]
        path = _jsonl(tmp_path / "m.jsonl", rows)
        where = f"{path}:2"
    else:
        path = _delimited(tmp_path / "m.csv", [{k: v for k, v in r.items() if k != "zh"} for r in rows], ",")
        where = f"{path}:1: header"  # a CSV lacks a column in its header
    with pytest.raises(DataError) as err:
        data.load_local(_local(path))
    assert where in str(err.value) and "'zh'" in str(err.value)


@pytest.mark.parametrize("fmt", ["jsonl", "tsv"])
def test_empty_reference_names_file_and_line(tmp_path: Path, fmt: str) -> None:
    rows = _rows(4)
    rows[2]["zh"] = "   "
    if fmt == "jsonl":
        path, line = _jsonl(tmp_path / "e.jsonl", rows), 3
    else:
        path, line = _delimited(tmp_path / "e.tsv", rows, "\t"), 4
    with pytest.raises(DataError, match=rf"{path}:{line}: column 'zh' is empty"):
        data.load_local(_local(path))


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_invalid_utf8_names_file_and_line(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"u.{suffix}"
    if suffix == "jsonl":
        good = json.dumps(_rows()[0], ensure_ascii=False).encode()
        path.write_bytes(good + b"\n" + good + b"\n" + b'{"bo": "\xff\xfe", "zh": "x"}\n')
    else:
        path.write_bytes(b"uid,bo,zh,doc\n" + b"a,\xe0\xbd,x,d\n")
    with pytest.raises(DataError, match=rf"{path}:{3 if suffix == 'jsonl' else 2}: invalid UTF-8"):
        data.load_local(_local(path))


def test_wrong_field_count_and_duplicate_ids(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_text("bo,zh\nཀ,甲\nཁ,乙,extra\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:3: 3 field\(s\) but the header has 2"):
        data.load_local(LocalSource(path=str(path), columns={"source": "bo", "reference": "zh"}))
    rows = _rows(3)
    rows[2]["uid"] = "r0"
    path = _jsonl(tmp_path / "dup.jsonl", rows)
    with pytest.raises(DataError, match=rf"{path}:3: id 'r0' already used at {path}:1"):
        data.load_local(_local(path))


def test_local_config_errors(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", _rows())
    with pytest.raises(ConfigError, match="unknown semrl field"):
        data.load_local(LocalSource(path=str(path), columns={"source": "bo", "reference": "zh", "title": "t"}))
    with pytest.raises(ConfigError, match="reference"):
        data.load_local(LocalSource(path=str(path), columns={"source": "bo"}))
    odd = _jsonl(tmp_path / "p.txt", _rows())
    with pytest.raises(ConfigError, match="set format"):
        data.load_local(LocalSource(path=str(odd), columns={"source": "bo", "reference": "zh"}))
    assert (
        len(data.load_local(LocalSource(path=str(odd), format="jsonl", columns={"source": "bo", "reference": "zh"})))
        == 6
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no examples"):
        data.load_local(_local(empty))
    with pytest.raises(DataError, match="no such file"):
        data.load_local(_local(tmp_path / "absent.jsonl"))


# ----------------------------------------------------------------------------------------------
# Hub
# ----------------------------------------------------------------------------------------------
def test_hub_offline_gives_clear_error() -> None:
    # conftest sets HF_HUB_OFFLINE=1: the real datasets.load_dataset call fails fast.
    with pytest.raises(DataError) as err:
        data.load_hub(HubSource(id="KEVVVV/CMHG", columns={"source": "article", "reference": "title"}))
    message = str(err.value)
    assert "unreachable" in message and "kind: local" in message and "KEVVVV/CMHG" in message


def test_hub_rows_map_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def fake_load(path: str, name: str | None = None, **kwargs: Any) -> datasets.Dataset:
        calls.append((path, name, kwargs))
        return datasets.Dataset.from_dict({"tib": BO[:3], "chi": ZH[:3], "extra": [1, 2, 3]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    examples = data.load_hub(HubSource(id="org/pairs", split="test", columns={"source": "tib", "reference": "chi"}))
    assert calls == [("org/pairs", None, {"split": "test", "revision": None})]
    assert [(ex.id, ex.source, ex.reference, ex.doc_id) for ex in examples][0] == ("pairs:0", BO[0], ZH[0], "pairs:0")
    with pytest.raises(DataError, match=r"no column 'zh' \(for reference\).*\['tib', 'chi', 'extra'\]"):
        data.load_hub(HubSource(id="org/pairs", columns={"source": "tib", "reference": "zh"}))


def test_hub_cmhg_tibetan_part_by_config_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper's headline set: KEVVVV/CMHG keeps one CSV per language (bo/bo-all.csv, columns id,
    title, content, ...); `data_files` selects the Tibetan part, `columns` maps article -> headline."""
    import datasets

    calls = []

    def fake_load(path: str, name: str | None = None, **kwargs: Any) -> datasets.Dataset:
        calls.append((path, kwargs.get("data_files")))
        return datasets.Dataset.from_dict(
            {"id": ["a1", "a2"], "title": BO[:2], "content": BO[2:4], "average_score": [4.5, 3.0]}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    source = HubSource(
        id="KEVVVV/CMHG", data_files="bo/bo-all.csv", columns={"source": "content", "reference": "title"}
    )
    examples = data.load_hub(source)
    assert calls == [("KEVVVV/CMHG", "bo/bo-all.csv")]
    assert [(ex.source, ex.reference) for ex in examples] == [(BO[2], BO[0]), (BO[3], BO[1])]


# ----------------------------------------------------------------------------------------------
# NTREX
# ----------------------------------------------------------------------------------------------
NTREX_DOCS = {"bbc.1": 3, "reuters.2": 2, "dm.3": 4}


def _ntrex_files() -> dict[str, bytes]:
    """NTREX-shaped content: per document, a headline line then body lines, in three languages."""
    ids, lines = [], {"bo": [], "zh": [], "en": []}
    for doc, n in NTREX_DOCS.items():
        for k in range(n):
            ids.append(doc)
            lines["bo"].append(f"{BO[k]} {doc}")
            lines["zh"].append(f"{ZH[k]}{doc}")
            lines["en"].append(f"{EN[k]} {doc}")
    files = {"DOCUMENT_IDS.tsv": "\n".join(ids) + "\n"}
    files.update({data.NTREX_LANG_FILES[lang]: "\n".join(v) + "\n" for lang, v in lines.items()})
    return {name: text.encode() for name, text in files.items()}


@pytest.fixture
def ntrex_data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "shared" / data.NTREX_DIRNAME
    folder.mkdir(parents=True)
    for name, blob in _ntrex_files().items():
        (folder / name).write_bytes(blob)
    return folder.parent


@pytest.mark.parametrize(("src", "tgt"), [("bo", "zh"), ("zh", "bo"), ("en", "bo")])
def test_ntrex_sentence_pairs_both_directions(ntrex_data_dir: Path, src: str, tgt: str) -> None:
    task = TaskConfig(source_lang=src, target_lang=tgt)
    examples = data.load_ntrex(NtrexSource(), task, ntrex_data_dir)
    assert len(examples) == sum(NTREX_DOCS.values())
    side = {"bo": lambda k, d: f"{BO[k]} {d}", "zh": lambda k, d: f"{ZH[k]}{d}", "en": lambda k, d: f"{EN[k]} {d}"}
    assert (examples[4].source, examples[4].reference) == (side[src](1, "reuters.2"), side[tgt](1, "reuters.2"))
    assert [ex.doc_id for ex in examples[:4]] == ["bbc.1"] * 3 + ["reuters.2"]
    assert examples[0].id == "ntrex:1"


def test_ntrex_headline_pairs(ntrex_data_dir: Path) -> None:
    task = TaskConfig(kind="headline", source_lang="bo", target_lang="bo")
    examples = data.load_ntrex(NtrexSource(headlines=True), task, ntrex_data_dir)
    assert len(examples) == len(NTREX_DOCS)
    dm = examples[2]
    assert dm.doc_id == dm.id.removeprefix("ntrex-headlines:") == "dm.3"
    assert dm.reference == f"{BO[0]} dm.3"  # first line: the headline
    assert dm.source == "\n".join(f"{BO[k]} dm.3" for k in (1, 2, 3))  # the rest: the body
    lead = data.load_ntrex(NtrexSource(headlines=True, lead_lines=2), task, ntrex_data_dir)[2]
    assert lead.source == "\n".join(f"{BO[k]} dm.3" for k in (1, 2)) and lead.metadata["body_lines"] == 2
    with pytest.raises(ValueError, match="headline pairs only"):
        NtrexSource(lead_lines=2)


def test_ntrex_config_and_alignment_errors(ntrex_data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="headlines: true"):
        data.load_ntrex(NtrexSource(), TaskConfig(kind="headline", source_lang="bo", target_lang="bo"), ntrex_data_dir)
    with pytest.raises(ConfigError, match="task.kind: headline"):
        data.load_ntrex(NtrexSource(headlines=True), TaskConfig(), ntrex_data_dir)
    with pytest.raises(ConfigError, match="task.target_lang 'ug'"):
        data.load_ntrex(NtrexSource(), TaskConfig(target_lang="ug"), ntrex_data_dir)
    zh = ntrex_data_dir / data.NTREX_DIRNAME / data.NTREX_LANG_FILES["zh"]
    zh.write_text("\n".join(zh.read_text(encoding="utf-8").splitlines()[:-1]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="differ in length"):
        data.load_ntrex(NtrexSource(), TaskConfig(), ntrex_data_dir)


@pytest.fixture
def fake_github(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """Serve NTREX- and Lotsawa-shaped files at their raw GitHub URLs; cache in tmp_path."""
    served: dict[str, bytes] = {}
    for name, blob in _ntrex_files().items():
        repo_path = data.NTREX_FILES[name][0]
        served[data.raw_url(data.NTREX_REPO, data.NTREX_COMMIT, repo_path)] = blob
    monkeypatch.setattr(
        ntrex_source,
        "NTREX_FILES",
        {n: (p, hashlib.sha256(_ntrex_files()[n]).hexdigest()) for n, (p, _) in data.NTREX_FILES.items()},
    )
    for name, blob in _lotsawa_files().items():
        served[data.raw_url(data.LOTSAWA_REPO, data.LOTSAWA_COMMIT, f"text-pairs/{name}")] = blob
    # The pinned commit's listing: the pairs, plus files the download must leave alone (a bo-en
    # text, a Chinese text without its Tibetan side, files outside text-pairs/).
    paths = [f"text-pairs/{n}" for n in _lotsawa_files()] + [
        "text-pairs/A00000009-bo.txt",
        "text-pairs/A00000009-en.txt",
        "text-pairs/A00000008-zh.txt",
        "README.md",
        "A00000007-zh.txt",
        "A00000007-bo.txt",
    ]
    served[data.LOTSAWA_TREE_URL] = json.dumps(
        {"sha": data.LOTSAWA_COMMIT, "tree": [{"path": p, "type": "blob"} for p in paths]}
    ).encode()
    listing = "".join(f"{n}  {hashlib.sha256(b).hexdigest()}\n" for n, b in sorted(_lotsawa_files().items()))
    monkeypatch.setattr(lotsawa_source, "LOTSAWA_SHA256", hashlib.sha256(listing.encode()).hexdigest())
    return serve_downloads(monkeypatch, served, tmp_path / "cache")


def test_ntrex_download_verifies_and_caches(fake_github: dict[str, Any]) -> None:
    examples = data.load_ntrex(NtrexSource(), TaskConfig(), data_dir=None)
    assert len(examples) == 9
    assert len(fake_github["fetched"]) == 3  # ids, bo, zh: only the files the task needs
    assert (fake_github["cache"] / "data" / "ntrex128" / data.NTREX_COMMIT / "DOCUMENT_IDS.tsv").is_file()
    data.load_ntrex(NtrexSource(), TaskConfig(), data_dir=None)
    assert len(fake_github["fetched"]) == 3  # second load: from the verified cache


def test_ntrex_download_failures_say_how_to_use_local_data(fake_github: dict[str, Any], tmp_path: Path) -> None:
    url = next(u for u in fake_github["served"] if u.endswith("zho-CN.txt"))
    fake_github["served"][url] = b"tampered\n"
    with pytest.raises(DataError, match=r"sha256 .* expected .*SEMRL_DATA_DIR"):
        data.load_ntrex(NtrexSource(), TaskConfig(), data_dir=tmp_path / "empty")
    fake_github["served"].clear()
    with pytest.raises(DataError, match=r"failed \(404\).*--data-dir"):
        data.load_ntrex(NtrexSource(), TaskConfig(), data_dir=None)


# ----------------------------------------------------------------------------------------------
# Lotsawa
# ----------------------------------------------------------------------------------------------
LOTSAWA_TEXTS = {"A00000001": 3, "A00000002": 4}


def _lotsawa_files() -> dict[str, bytes]:
    files = {}
    for text_id, n in LOTSAWA_TEXTS.items():
        files[f"{text_id}-bo.txt"] = ("\n".join(f"{BO[k]}{text_id[-1]}" for k in range(n)) + "\n").encode()
        files[f"{text_id}-zh.txt"] = ("\n".join(f"{ZH[k]}{text_id[-1]}" for k in range(n)) + "\n").encode()
    return files


@pytest.fixture
def lotsawa_data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "shared" / data.LOTSAWA_DIRNAME / "text-pairs"
    folder.mkdir(parents=True)
    for name, blob in _lotsawa_files().items():
        (folder / name).write_bytes(blob)
    (folder / "A00000009-bo.txt").write_text("བོད་ཡིག་ཁོ་ན།\n", encoding="utf-8")  # bo-en text: ignored
    return folder.parent.parent


@pytest.mark.parametrize(("src", "tgt"), [("bo", "zh"), ("zh", "bo")])
def test_lotsawa_pairs(lotsawa_data_dir: Path, src: str, tgt: str) -> None:
    task = TaskConfig(source_lang=src, target_lang=tgt)
    with_titles = data.load_lotsawa(LotsawaSource(skip_titles=False), task, lotsawa_data_dir)
    assert len(with_titles) == 7
    examples = data.load_lotsawa(LotsawaSource(), task, lotsawa_data_dir)
    assert len(examples) == 5  # line 1 of each text dropped
    first = examples[0]
    assert (first.id, first.doc_id, first.metadata["line"]) == ("lotsawa:A00000001:2", "A00000001", 2)
    sides = {"bo": f"{BO[1]}1", "zh": f"{ZH[1]}1"}
    assert (first.source, first.reference) == (sides[src], sides[tgt])


def test_lotsawa_errors(lotsawa_data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="Tibetan-Chinese"):
        data.load_lotsawa(LotsawaSource(), TaskConfig(source_lang="bo", target_lang="en"), lotsawa_data_dir)
    zh = lotsawa_data_dir / data.LOTSAWA_DIRNAME / "text-pairs" / "A00000002-zh.txt"
    zh.write_text(f"{ZH[0]}\n\n{ZH[2]}\n{ZH[3]}\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{zh}:2: empty line opposite"):
        data.load_lotsawa(LotsawaSource(), TaskConfig(), lotsawa_data_dir)
    zh.write_text(f"{ZH[0]}\n", encoding="utf-8")
    with pytest.raises(DataError, match="differ in length"):
        data.load_lotsawa(LotsawaSource(), TaskConfig(), lotsawa_data_dir)


def test_lotsawa_download_is_verified_as_a_collection(fake_github: dict[str, Any]) -> None:
    examples = data.load_lotsawa(LotsawaSource(), TaskConfig(), data_dir=None)
    assert len(examples) == 5 and len(fake_github["fetched"]) == 5  # the listing, then 2 pairs
    assert fake_github["fetched"][0] == data.LOTSAWA_TREE_URL
    data.load_lotsawa(LotsawaSource(), TaskConfig(), data_dir=None)
    assert len(fake_github["fetched"]) == 5  # cached and still matching the digest
    cache = fake_github["cache"] / "data" / "lotsawa" / data.LOTSAWA_COMMIT / "text-pairs"
    (cache / "A00000001-zh.txt").write_text("changed\n", encoding="utf-8")
    url = next(u for u in fake_github["served"] if u.endswith("A00000002-bo.txt"))
    fake_github["served"][url] = b"tampered\n"
    with pytest.raises(DataError, match="collection has digest .*SEMRL_DATA_DIR"):
        data.load_lotsawa(LotsawaSource(), TaskConfig(), data_dir=None)
    assert not cache.exists() or not any(cache.glob("*.tmp"))
    fake_github["served"][data.LOTSAWA_TREE_URL] = b"<html>rate limit exceeded</html>"
    with pytest.raises(DataError, match="not a git tree.*SEMRL_DATA_DIR"):
        data.load_lotsawa(LotsawaSource(), TaskConfig(), data_dir=None)


# ----------------------------------------------------------------------------------------------
# load_examples: several sources
# ----------------------------------------------------------------------------------------------
def test_load_examples_prefixes_ids_and_filters(tmp_path: Path, ntrex_data_dir: Path) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir(), b.mkdir()
    cols = {"source": "bo", "reference": "zh", "doc_id": "doc", "id": "uid"}
    config = _config(
        [
            {"kind": "local", "path": str(_jsonl(a / "pairs.jsonl", _rows())), "columns": cols},
            # other references: a pair repeated across sources would be dropped as a duplicate
            {
                "kind": "local",
                "path": str(_jsonl(b / "pairs.jsonl", [{**r, "zh": r["zh"] + "！"} for r in _rows()])),
                "columns": cols,
            },
            {"kind": "ntrex"},
        ],
        data_dir=str(ntrex_data_dir),
    )
    examples = data.load_examples(config)
    assert len(examples) == 6 + 6 + 9
    assert len({ex.id for ex in examples}) == len(examples)
    assert examples[0].id == "pairs:r0" and examples[6].id == "pairs-2:r0" and examples[12].id == "ntrex:1"
    assert examples[12].metadata["source"] == "ntrex"
    assert data.load_examples(config) == examples  # deterministic

    longest = max(len(ex.source) for ex in examples)
    limited = config.model_copy(deep=True)
    limited.data.max_source_chars = longest - 1
    kept = data.load_examples(limited)
    assert kept and all(len(ex.source) < longest for ex in kept)
    assert len(kept) == sum(len(ex.source) < longest for ex in examples)
    limited.data.max_source_chars = 1
    with pytest.raises(DataError, match="drops all 21"):
        data.load_examples(limited)


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
def test_splits_never_share_a_document(seed: int) -> None:
    examples = _many_examples(seed=seed)
    sizes = SplitSizes(cold_start=20, rl=-1, dev=10, test=0.2)
    splits = data.split_examples(examples, sizes, seed)
    docs = {name: {ex.doc_id for ex in exs} for name, exs in splits.items()}
    names = list(docs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not docs[a] & docs[b], (a, b)
    assert sorted(ex.id for exs in splits.values() for ex in exs) == sorted(ex.id for ex in examples)
    assert len(splits["test"]) >= round(0.2 * len(examples))
    assert len(splits["dev"]) >= 10 and len(splits["cold_start"]) >= 20
    # whole documents, so each split overshoots by less than its last document
    by_doc = {}
    for ex in examples:
        by_doc[ex.doc_id] = by_doc.get(ex.doc_id, 0) + 1
    assert len(splits["dev"]) - 10 < max(by_doc.values())


def test_splits_are_deterministic_and_seeded() -> None:
    examples = _many_examples()
    sizes = SplitSizes(cold_start=20, rl=-1, dev=10, test=30)
    ids = lambda s: {k: [ex.id for ex in v] for k, v in s.items()}  # noqa: E731
    assert ids(data.split_examples(examples, sizes, 1)) == ids(data.split_examples(examples, sizes, 1))
    assert ids(data.split_examples(examples, sizes, 1)) != ids(data.split_examples(examples, sizes, 2))
    # within a split, examples keep input order
    order = {ex.id: i for i, ex in enumerate(examples)}
    for exs in data.split_examples(examples, sizes, 1).values():
        assert [order[ex.id] for ex in exs] == sorted(order[ex.id] for ex in exs)


def test_test_and_dev_stay_fixed_when_training_sizes_change() -> None:
    examples = _many_examples()
    a = data.split_examples(examples, SplitSizes(cold_start=10, rl=-1, dev=10, test=30), 3)
    b = data.split_examples(examples, SplitSizes(cold_start=40, rl=20, dev=10, test=30), 3)
    assert a["test"] == b["test"] and a["dev"] == b["dev"]
    assert a["cold_start"] != b["cold_start"]


def test_split_sizes_zero_fraction_and_unused() -> None:
    examples = _many_examples()
    splits = data.split_examples(examples, SplitSizes(cold_start=0, rl=5, dev=0, test=0.5), 0)
    assert splits["cold_start"] == [] and splits["dev"] == []
    assert len(splits["test"]) >= len(examples) / 2
    assert sum(map(len, splits.values())) < len(examples)  # no -1 split: the rest is unused


def test_split_errors_give_the_numbers() -> None:
    examples = _many_examples()
    n = len(examples)
    with pytest.raises(
        DataError, match=rf"data.splits.cold_start asks for {n} examples.*out of {n} examples in 40 documents"
    ):
        data.split_examples(examples, SplitSizes(cold_start=n, rl=-1, dev=1, test=1), 0)
    with pytest.raises(DataError, match="data.splits.rl is -1 .* nothing is left"):
        data.split_examples(examples, SplitSizes(cold_start=0, rl=-1, dev=0, test=n), 0)
    with pytest.raises(DataError, match="no examples"):
        data.split_examples([], SplitSizes(), 0)


def test_split_summary() -> None:
    splits = {
        "cold_start": [Example("a", "ཀཀ", "甲", "d1"), Example("b", "ཀཀཀཀ", "乙乙乙", "d1")],
        "rl": [],
        "dev": [Example("c", "ཀ", "甲", "d2")],
        "test": [Example("d", "ཀ", "甲", "d3"), Example("e", "ཀ", "甲", "d4")],
    }
    rows = data.split_summary(splits)
    assert [r["split"] for r in rows] == ["cold_start", "rl", "dev", "test"]
    assert rows[0] == {
        "split": "cold_start",
        "examples": 2,
        "documents": 1,
        "mean_source_chars": 3.0,
        "mean_reference_chars": 2.0,
    }
    assert rows[1]["examples"] == 0 and rows[1]["mean_source_chars"] == 0.0
    assert rows[3]["documents"] == 2


# ----------------------------------------------------------------------------------------------
# prepare_data / load_splits
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def local_config(tmp_path: Path) -> ExperimentConfig:
    rows = [{"uid": f"r{i}", "bo": f"{BO[i % 6]}{i}", "zh": f"{ZH[i % 6]}{i}", "doc": f"d{i // 3}"} for i in range(30)]
    path = _jsonl(tmp_path / "pairs.jsonl", rows)
    return _config(
        [
            {
                "kind": "local",
                "path": str(path),
                "columns": {"source": "bo", "reference": "zh", "doc_id": "doc", "id": "uid"},
            }
        ],
        {"cold_start": 6, "rl": -1, "dev": 3, "test": 0.3},
        seed=7,
    )


def test_unused_counts_documents_no_split_touched_when_splits_share_documents(
    tmp_path: Path, local_config: ExperimentConfig
) -> None:
    # Training rows drawn one by one: cold start and RL come from the same documents, and one
    # document is left out of every split (an RL split of 3 rows).
    local_config.data.training_unit = "example"
    local_config.data.splits = SplitSizes(cold_start=6, rl=3, dev=3, test=3)
    splits = data.prepare_data(local_config, tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "splits" / "manifest.json").read_text(encoding="utf-8"))
    touched = {ex.doc_id for rows in splits.values() for ex in rows}
    assert manifest["unused"] == {"examples": 30 - 15, "documents": 10 - len(touched)}
    assert manifest["unused"]["documents"] >= 1


def test_prepare_and_load_splits_round_trip(tmp_path: Path, local_config: ExperimentConfig) -> None:
    out = tmp_path / "run"
    splits = data.prepare_data(local_config, out)
    folder = out / "splits"
    assert sorted(p.name for p in folder.iterdir()) == [
        "cold_start.jsonl",
        "dev.jsonl",
        "manifest.json",
        "rl.jsonl",
        "test.jsonl",
    ]
    assert data.load_splits(out) == splits
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["seed"] == 7
    assert manifest["config_hash"] == local_config.hash("seed", "task", "data")
    assert manifest["sizes_requested"] == {"cold_start": 6, "rl": -1, "dev": 3, "test": 0.3}
    assert manifest["target_examples"] == {"cold_start": 6, "rl": None, "dev": 3, "test": 9}
    assert manifest["total"] == {"examples": 30, "documents": 10}
    assert manifest["sources"][0]["name"] == "pairs" and manifest["sources"][0]["examples"] == 30
    for name, info in manifest["splits"].items():
        assert info["examples"] == len(splits[name])
        assert info["documents"] == len({ex.doc_id for ex in splits[name]})
        assert info["sha256"] == hashlib.sha256((folder / f"{name}.jsonl").read_bytes()).hexdigest()
    first = json.loads((folder / "test.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert set(first) >= {"id", "source", "reference", "doc_id"}


def test_prepare_is_atomic_and_replaces(tmp_path: Path, local_config: ExperimentConfig) -> None:
    out = tmp_path / "run"
    data.prepare_data(local_config, out)
    before = (out / "splits" / "test.jsonl").read_bytes()
    too_big = local_config.model_copy(deep=True)
    too_big.data.splits.test = 1000
    with pytest.raises(DataError, match="asks for 1000"):
        data.prepare_data(too_big, out)
    assert (out / "splits" / "test.jsonl").read_bytes() == before  # the old splits are untouched
    with pytest.raises(DataError):
        data.prepare_data(too_big, tmp_path / "fresh")
    assert not (tmp_path / "fresh" / "splits").exists()
    other = local_config.model_copy(deep=True)
    other.seed = 8
    data.prepare_data(other, out)
    assert sorted(p.name for p in out.iterdir()) == ["splits"]  # no temporary folders left behind


def test_load_splits_errors(tmp_path: Path, local_config: ExperimentConfig) -> None:
    with pytest.raises(DataError, match="semrl data prepare"):
        data.load_splits(tmp_path / "nothing")
    out = tmp_path / "run"
    data.prepare_data(local_config, out)
    dev = out / "splits" / "dev.jsonl"
    dev.write_text(dev.read_text(encoding="utf-8") + '{"id": "x"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="changed since it was prepared"):
        data.load_splits(out)
    (out / "splits" / "manifest.json").unlink()
    with pytest.raises(DataError, match=rf"{dev}:\d+: missing key\(s\) \['source', 'reference', 'doc_id'\]"):
        data.load_splits(out)
    (out / "splits" / "rl.jsonl").unlink()
    with pytest.raises(DataError, match="rl.jsonl: missing"):
        data.load_splits(out)


def test_packaged_tiny_config_prepares(tmp_path: Path, fixture_data_dir: Path) -> None:
    from semrl.config.experiment import load_config

    config = load_config(Path(data.__file__).parents[1] / "configs" / "tiny.yaml")
    config.data_dir = str(fixture_data_dir)
    splits = data.prepare_data(config, tmp_path)
    assert {k: len(v) for k, v in splits.items()} == {"cold_start": 9, "rl": 18, "dev": 3, "test": 6}


# ----------------------------------------------------------------------------------------------
# Prompts and TRL datasets
# ----------------------------------------------------------------------------------------------
class _ChatTokenizer:
    chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


class _BaseTokenizer:
    chat_template = None


def test_default_prompts_and_completion_convention() -> None:
    mt = TaskConfig(source_lang="bo", target_lang="zh")
    assert (
        data.build_prompt(BO[0], mt)
        == f"Translate the following Tibetan text into Chinese.\nTibetan: {BO[0]}\nChinese:"
    )
    assert data.completion_text(ZH[0], mt) == " " + ZH[0]
    reverse = TaskConfig(source_lang="zh", target_lang="bo")
    assert data.build_prompt(ZH[0], reverse).endswith(f"Chinese: {ZH[0]}\nTibetan:")
    hg = TaskConfig(kind="headline", source_lang="bo", target_lang="bo")
    assert (
        data.build_prompt(BO[1], hg)
        == f"Write a Tibetan headline for the following Tibetan article.\nArticle: {BO[1]}\nHeadline:"
    )


def test_custom_prompt_template() -> None:
    task = TaskConfig(prompt_template="{source_lang_name}→{target_lang_name} ({source_lang}): {source} = ")
    assert data.build_prompt("{x}", task) == "Tibetan→Chinese (bo): {x} ="  # braces in the source are kept
    for bad, match in [
        ("{text}", "unknown placeholder"),
        ("no source here", "must contain"),
        ("{source", "format string"),
    ]:
        with pytest.raises(ConfigError, match=match):
            data.build_prompt("x", TaskConfig(prompt_template=bad))


def test_chat_template_choice() -> None:
    auto = TaskConfig()
    assert isinstance(data.build_prompt("x", auto, _BaseTokenizer()), str)
    assert data.build_prompt("x", auto, _ChatTokenizer()) == [{"role": "user", "content": data.prompt_text("x", auto)}]
    assert data.completion_text("y", auto, _ChatTokenizer()) == [{"role": "assistant", "content": "y"}]
    assert isinstance(data.build_prompt("x", TaskConfig(use_chat_template="never"), _ChatTokenizer()), str)
    always = TaskConfig(use_chat_template="always")
    assert isinstance(data.build_prompt("x", always), list)
    with pytest.raises(ModelError, match="no chat template"):
        data.build_prompt("x", always, _BaseTokenizer())


@pytest.mark.parametrize("tokenizer", [None, _ChatTokenizer()], ids=["completion", "conversational"])
def test_trl_datasets(tokenizer: Any) -> None:
    from trl.data_utils import is_conversational

    examples = [Example(f"s:{i}", BO[i], ZH[i], f"d{i}") for i in range(4)]
    task = TaskConfig()
    sft = data.to_sft_dataset(examples, task, tokenizer)
    assert sft.column_names == ["prompt", "completion"] and len(sft) == 4
    assert is_conversational(sft[0]) == (tokenizer is not None)
    if tokenizer is None:
        assert sft[1]["completion"] == " " + ZH[1]
    grpo = data.to_grpo_dataset(examples, task, tokenizer)
    assert grpo.column_names == ["prompt", "reference", "source", "id"]
    assert grpo[2]["reference"] == ZH[2] and grpo[2]["source"] == BO[2] and grpo[2]["id"] == "s:2"
    assert is_conversational(grpo[0]) == (tokenizer is not None)
    with pytest.raises(DataError, match="no examples"):
        data.to_sft_dataset([], task)


# ----------------------------------------------------------------------------------------------
# The real corpora (skipped without SEMRL_DATA_DIR)
# ----------------------------------------------------------------------------------------------
@pytest.mark.shared_data
def test_shared_ntrex_loads_and_splits_with_defaults(
    shared_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "fetch", lambda url: pytest.fail(f"unexpected download {url}"))
    config = ExperimentConfig(data_dir=str(shared_data_dir))
    examples = data.load_examples(config)
    assert len(examples) == 1997 and len({ex.doc_id for ex in examples}) == 123
    assert all(ex.source and ex.reference for ex in examples)
    # the shared files are the pinned originals: their digests are the hard-coded checksums
    folder = shared_data_dir / data.NTREX_DIRNAME
    for name, (_, sha) in data.NTREX_FILES.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha, name
    splits = data.split_examples(examples, config.data.splits, config.seed)
    sizes = config.data.splits
    assert len(splits["test"]) >= sizes.test and len(splits["dev"]) >= sizes.dev
    assert len(splits["cold_start"]) >= sizes.cold_start and splits["rl"]
    assert sum(map(len, splits.values())) == 1997
    docs = [{ex.doc_id for ex in exs} for exs in splits.values()]
    assert sum(map(len, docs)) == 123 == len(set().union(*docs))

    headlines = ExperimentConfig(
        data_dir=str(shared_data_dir),
        task=TaskConfig(kind="headline", source_lang="bo", target_lang="bo"),
        data={"sources": [{"kind": "ntrex", "headlines": True}]},
    )
    pairs = data.load_examples(headlines)
    assert len(pairs) == 123
    assert sorted(len(p.reference) for p in pairs)[61] == 87  # SOURCE.md: headline median 87 chars


@pytest.mark.shared_data
def test_shared_lotsawa_matches_pinned_collection(shared_data_dir: Path) -> None:
    folder = shared_data_dir / data.LOTSAWA_DIRNAME / "text-pairs"
    assert lotsawa_source._collection_digest(folder) == data.LOTSAWA_SHA256
    assert len(list(folder.glob("*-zh.txt"))) == len(list(folder.glob("*-bo.txt"))) == 78
    task = TaskConfig(source_lang="zh", target_lang="bo")
    assert len(data.load_lotsawa(LotsawaSource(skip_titles=False), task, shared_data_dir)) == 2573
    assert len(data.load_lotsawa(LotsawaSource(), task, shared_data_dir)) == 2573 - 78
