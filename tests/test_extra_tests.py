"""Issue 23: extra test sets (`evaluation.extra_tests`), a second task table per set.

One module-scoped run of the tiny model (cold start, 3 steps) on the tests' NTREX-shaped corpus,
with an extra test read from a local JSONL that repeats a training source, a training reference
and a test row: the repeats of training rows are dropped and counted, the rest is evaluated by
every method into its eval record, metrics.json and report.md.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from test_docs import check_against_schema, schema_tree

from semrl.cli import main
from semrl.config.experiment import load_config
from semrl.core.layout import RunLayout
from semrl.data.splits import load_splits

TINY = str(resources.files("semrl") / "configs" / "tiny.yaml")
# Fast: one 3-step stage, no benchmarks, no task KL, no judge, a short test split.
FAST = [
    "stages.enabled=[cold_start]",
    "evaluation.methods=[base,cold_start]",
    "evaluation.benchmarks=[]",
    "evaluation.task_kl_examples=0",
    "evaluation.judge.enabled=false",
    "evaluation.test_limit=4",
]
# semrl's own sentences, in none of the fixture corpus's documents.
NEW_PAIRS = [
    ("ཁྱེད་རང་གི་མིང་ལ་ག་རེ་ཟེར།", "你叫什么名字？"),
    ("ང་ཚོ་ཉིན་རེ་བཞིན་ལས་ཀ་བྱེད།", "我们每天工作。"),
    ("མོ་ཊ་གསར་པ་ཞིག་ཉོ་འདོད་ཡོད།", "我想买一辆新车。"),
]


def _extra(path: Path, name: str = "news", limit: int = 3) -> str:
    return f"evaluation.extra_tests=[{{name: {name}, source: {{kind: local, path: {path}}}, limit: {limit}}}]"


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def ood(tmp_path_factory: pytest.TempPathFactory, fixture_data_dir: Path, tiny_cache: None) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("ood")
    run = work / "run"
    common = ["--out", str(run), "--data-dir", str(fixture_data_dir), *(a for s in FAST for a in ("--set", s))]
    assert main(["data", "prepare", TINY, *common]) == 0
    splits = load_splits(run)
    train_src, train_ref, test_row = splits["rl"][0], splits["cold_start"][0], splits["test"][0]
    rows = [{"source": s, "reference": r} for s, r in NEW_PAIRS]
    rows += [
        {"source": train_src.source, "reference": "另一种译文。"},  # a training source
        {"source": "ཡི་གེ་འདི་གསར་པ་རེད།", "reference": train_ref.reference.rstrip("。？")},  # a training reference
        {"source": test_row.source, "reference": test_row.reference},  # a test row: not trained on, kept
    ]
    extra = work / "news.jsonl"
    extra.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert main(["run", TINY, *common, "--set", _extra(extra)]) == 0
    return {"run": RunLayout(run), "extra": extra, "data": fixture_data_dir, "test_row": test_row}


def test_training_rows_are_dropped_and_counted(ood: dict[str, Any]) -> None:
    layout = ood["run"]
    manifest = json.loads(layout.extra_test_manifest("news").read_text(encoding="utf-8"))
    assert manifest["loaded"] == 6
    assert manifest["leakage"] == {"rows_removed": 2, "same_source": 1, "same_reference": 1}
    assert manifest["available"] == 4 and manifest["examples"] == 3  # limit 3: a seeded subset of the 4
    kept = _rows(layout.extra_test_file("news"))
    assert len(kept) == 3
    training = load_splits(layout.root)
    trained = {t for split in ("cold_start", "rl") for ex in training[split] for t in (ex.source, ex.reference)}
    assert not any(r["source"] in trained or r["reference"] in trained for r in kept)
    assert all(r["id"].startswith("news:") for r in kept)


def test_every_method_is_evaluated_on_the_extra_test(ood: dict[str, Any]) -> None:
    layout = ood["run"]
    kept = _rows(layout.extra_test_file("news"))
    for method in ("base", "cold_start"):
        record = json.loads(layout.eval_file(method).read_text(encoding="utf-8"))
        task = record["extra_tasks"]["news"]
        assert task["task"]["n"] == 3 and len(task["per_example"]["sentence_chrf"]) == 3
        assert [o["id"] for o in task["outputs"]] == [r["id"] for r in kept]
        assert "chance" in task["task"] and task["key"]
        assert record["task"]["n"] == 4  # the run's own test split, as before


def test_metrics_and_report_show_a_second_task_table(ood: dict[str, Any]) -> None:
    layout = ood["run"]
    metrics = json.loads(layout.metrics.read_text(encoding="utf-8"))
    news = metrics["extra_tasks"]["news"]
    assert set(news["methods"]) == {"base", "cold_start"}
    assert news["scale"]["examples"] == 3 and news["scale"]["leakage"]["rows_removed"] == 2
    assert news["source"]["kind"] == "local"
    assert "cold_start-base" in news["intervals"]["differences"]
    chrf = news["methods"]["cold_start"]["chance"]["chrf"]
    assert {"value", "floor", "margin", "above_chance"} <= chrf.keys()
    # every key is documented in semrl.results.schema
    seen: set[str] = set()
    undocumented: list[str] = []
    check_against_schema(metrics, schema_tree(), "", seen, undocumented)
    assert not undocumented, undocumented

    md = layout.report_md.read_text(encoding="utf-8")
    section = md[md.index("## Out-of-domain task: news (3 examples)") :]
    section = section[: section.index("\n## ", 1)]
    assert "Extra test news: 3 examples (a seeded subset of the 4 left of 6 loaded" in section
    assert "2 dropped because their source (1) or reference (1) is in the run's training splits" in section
    main_header = next(line for line in md.splitlines() if line.startswith("| method | bleu"))
    assert main_header in section  # the test split's columns
    assert "### Against chance" in section and "### Differences between methods" in section


def test_an_added_extra_test_is_evaluated_alone(ood: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    from semrl.pipeline.run import run_experiment

    run = tmp_path / "run"
    shutil.copytree(ood["run"].root, run, symlinks=True)
    layout = RunLayout(run)
    before = {m: json.loads(layout.eval_file(m).read_text(encoding="utf-8")) for m in ("base", "cold_start")}
    two = (
        f"evaluation.extra_tests=[{{name: news, source: {{kind: local, path: {ood['extra']}}}, limit: 3}}, "
        f"{{name: more, source: {{kind: local, path: {ood['extra']}}}, limit: 2}}]"
    )
    config = load_config(TINY, overrides=[*FAST, two])
    config.data_dir = str(ood["data"])
    lines: list[str] = []
    run_experiment(config, run, log=lines.append)
    assert not any("test outputs" in line for line in lines), lines  # the test split is not generated again
    assert sum("extra test more" in line for line in lines) == 2 and not any("extra test news" in x for x in lines)
    for method, old in before.items():
        record = json.loads(layout.eval_file(method).read_text(encoding="utf-8"))
        assert record["outputs"] == old["outputs"] and record["eval_key"] == old["eval_key"]
        assert record["extra_tasks"]["news"] == old["extra_tasks"]["news"]
        assert list(record["extra_tasks"]) == ["news", "more"] and record["extra_tasks"]["more"]["task"]["n"] == 2
    assert list(json.loads(layout.metrics.read_text(encoding="utf-8"))["extra_tasks"]) == ["news", "more"]

    # dropped from the config: dropped from the records and the report, nothing generated
    lines.clear()
    config = load_config(TINY, overrides=FAST)
    config.data_dir = str(ood["data"])
    run_experiment(config, run, log=lines.append)
    assert not any("generating" in line for line in lines)
    assert "extra_tasks" not in json.loads(layout.metrics.read_text(encoding="utf-8"))
    assert not json.loads(layout.eval_file("base").read_text(encoding="utf-8"))["extra_tasks"]
    assert "Out-of-domain task" not in layout.report_md.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("[{name: news, source: {kind: newswire}}]", "evaluation.extra_tests.0.source"),
        ("[{name: test, source: {kind: lotsawa}}]", "'test' is the run's own test split"),
        ("[{name: a, source: {kind: lotsawa}}, {name: a, source: {kind: ntrex, headlines: true}}]", "its own name"),
        ("[{name: news, source: {kind: ntrex}}]", "reads one of data.sources"),
    ],
)
def test_a_bad_extra_test_config_exits_2(
    setting: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["run", TINY, "--out", str(out), "--set", f"evaluation.extra_tests={setting}"]) == 2
    assert expected in capsys.readouterr().err.replace("\n", " ")
    assert not out.exists()


def test_missing_extra_test_data_stops_the_run_before_training(
    fixture_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    missing = tmp_path / "nowhere.jsonl"
    args = ["run", TINY, "--out", str(out), "--data-dir", str(fixture_data_dir), "--set", _extra(missing)]
    assert main([*args, *(a for s in FAST for a in ("--set", s))]) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "evaluation.extra_tests[0]" in err and "nowhere.jsonl" in err
    assert not RunLayout(out).stages.exists()  # nothing trained
    assert not RunLayout(out).extra_test("news").exists()
