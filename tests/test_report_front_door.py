"""The report as a front door (issue 25), on runs built from fabricated evaluation records: a
cold-start-only run (no benchmarks) and a full run (cold start, SFT, GRPO, a benchmark, the tax
meter). The scale reads as sentences and tables, plots with nothing to show are left out with a
reason, sample outputs sit under the task table as text, and the verdict reads what the run has."""

from __future__ import annotations

import html
import json
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixture_data import CHINESE_SENTENCES, CharEncoder

from semrl.cli import main
from semrl.config.experiment import load_config
from semrl.core.layout import RunLayout
from semrl.data.example import Example
from semrl.data.splits import SPLIT_NAMES
from semrl.eval.task import task_metrics
from semrl.results.build import verdict
from semrl.results.plots import PLOTS
from semrl.results.report import write_report

TINY = Path(str(resources.files("semrl") / "configs" / "tiny.yaml"))
REFERENCES = CHINESE_SENTENCES
# Sources with markup in them: the sample table must show it as text.
SOURCES = ["<script>alert(1)</script> ངའི་ཨ་མ།", *(f"ཚིག་གྲུབ་{i}།" for i in range(1, len(REFERENCES)))]
# A cold start that learned something: each output is its reference less the final character, with a
# stray character in front of every third one (so chrF is above its shuffled-reference floor).
LEARNED = [("的" if i % 3 == 0 else "") + r[:-1] for i, r in enumerate(REFERENCES)]
CHANCE = ["：：：：：：：："] * len(REFERENCES)  # an untrained model's one output for every source
BENCH_ITEMS = 20
HARDWARE = {
    "cpu": "Intel Xeon",
    "cores": 2,
    "torch_threads": 2,
    "gpu": None,
    "dtype": "bfloat16",
    "dtype_reason": "auto",
}


def _record(outputs: list[str], benchmark: list[float] | None, drift: float | None) -> dict[str, Any]:
    summary, per = task_metrics(outputs, REFERENCES, SOURCES, "zh", "translation", CharEncoder(), seed=0)
    general = {}
    if benchmark is not None:
        general["mmlu"] = {
            "metric": "acc",
            "score": float(np.mean(benchmark)),
            "n": len(benchmark),
            "per_example": benchmark,
            "details": {"per_example_continuous": [0.2 + 0.5 * v for v in benchmark]},
        }
    record = {
        "task": summary,
        "per_example": per,
        "outputs": [
            {"id": f"t{i}", "source": s, "reference": r, "output": o}
            for i, (s, r, o) in enumerate(zip(SOURCES, REFERENCES, outputs))
        ],
        "general": general,
        "drift": None,
    }
    if drift is not None:
        rises = [drift + 0.01 * (i % 5 - 2) for i in range(8)]
        record["drift"] = {
            "nll_mean": float(np.mean(rises)),
            "nll_p90": float(np.quantile(rises, 0.9)),
            "kl_mean": drift / 2,
            "kl_p90": drift,
            "nll_increase": rises,
            "token_kl": [drift / 2] * 8,
        }
    return record


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _fabricated_run(
    run_dir: Path,
    overrides: list[str],
    outputs: dict[str, list[str]],
    benchmarks: dict[str, list[float]] | None = None,
    logs: dict[str, list[dict[str, Any]]] | None = None,
    extras: dict[str, dict[str, Any]] | None = None,
) -> RunLayout:
    """A finished run directory without training: config.yaml, the splits, a manifest per
    trained method (its `extra` from `extras`), stage logs and one evaluation record per method."""
    layout = RunLayout(run_dir)
    run_dir.mkdir(parents=True)
    layout.config.write_text(load_config(TINY, overrides=overrides).to_yaml(), encoding="utf-8")
    sizes = {"cold_start": 9, "rl": 18, "dev": 3, "test": len(REFERENCES)}
    for name in SPLIT_NAMES:
        pairs = list(zip(SOURCES, REFERENCES)) if name == "test" else [("ཀ།", "甲。")] * sizes[name]
        rows = [Example(f"{name}{i}", s, r, f"{name}-doc{i}").to_dict() for i, (s, r) in enumerate(pairs)]
        _write_jsonl(layout.split_file(name), rows)
    for method, outs in outputs.items():
        if method != "base":
            extra = (extras or {}).get(method, {})
            manifest = {"wall_time_s": 12.5, "peak_rss_mb": 600.0, "metrics": {"global_step": 3}, "extra": extra}
            layout.stage(method).root.mkdir(parents=True)
            layout.stage(method).manifest.write_text(json.dumps(manifest), encoding="utf-8")
        bench = (benchmarks or {}).get(method)
        record = _record(outs, bench, None if method == "base" else 0.05 * (1 + len(method) % 3))
        layout.eval_dir.mkdir(exist_ok=True)
        layout.eval_file(method).write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    for stage, rows in (logs or {}).items():
        _write_jsonl(layout.stage(stage).log, rows)
    return layout


@pytest.fixture(scope="module")
def cold_start_only(tmp_path_factory: pytest.TempPathFactory) -> RunLayout:
    """The issue's run: stages.enabled [cold_start], evaluation.methods [base, cold_start], no benchmarks."""
    layout = _fabricated_run(
        tmp_path_factory.mktemp("cold") / "run",
        ["stages.enabled=[cold_start]", "evaluation.methods=[base,cold_start]", "evaluation.benchmarks=[]"],
        {"base": CHANCE, "cold_start": LEARNED},
    )
    write_report(layout.root)
    return layout


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> RunLayout:
    """Every stage, one benchmark, the GRPO log with rewards and the tax meter in two stages."""
    rng = np.random.default_rng(0)
    base = [1.0] * 14 + [0.0] * 6

    def lose(k: int) -> list[float]:
        out = list(base)
        for i in rng.choice(14, size=k, replace=False):
            out[int(i)] = 0.0
        return out

    meter = [{"step": s, "tax/nll_drift": 0.01 * s, "task/dev_gain": 0.02 * s} for s in (1, 2, 3)]
    grpo_log = [
        {"step": s, "rewards/semantic/mean": 0.5 + 0.1 * s, "rewards/language/mean": 0.8, "monitor/length_ratio": 1.0}
        for s in (1, 2, 3)
    ] + meter
    layout = _fabricated_run(
        tmp_path_factory.mktemp("full") / "run",
        ["evaluation.benchmarks=[{name: mmlu, limit: 20}]", "evaluation.tax_meter_steps=1"],
        {"base": CHANCE, "cold_start": LEARNED, "sft": LEARNED, "grpo": [r[:-1] for r in REFERENCES]},
        benchmarks={"base": base, "cold_start": lose(2), "sft": lose(6), "grpo": lose(1)},
        logs={"grpo": grpo_log, "cold_start": meter},
        extras={
            stage: {"hardware": HARDWARE, "compiled_layers": stage != "grpo", "compiled_layers_reason": "auto: ..."}
            for stage in ("cold_start", "sft", "grpo")
        },
    )
    write_report(layout.root)
    return layout


def _section(md: str, heading: str) -> str:
    """A '## ' section of report.md, its heading to the next '## ' heading."""
    start = md.index(f"## {heading}\n")
    end = md.find("\n## ", start + 1)
    return md[start : end if end != -1 else len(md)]


def _visible_text(page: str) -> str:
    body = page.split("<body>", 1)[1]  # the page's <style> is CSS, not report text
    return html.unescape(re.sub(r"<[^>]*>", "", body))


REPRS = ("{'", "['", '{"', '["', "':", "{}", "[]")


@pytest.mark.parametrize("run", ["cold_start_only", "full_run"])
def test_the_scale_is_sentences_and_a_table_and_no_text_is_a_repr(run: str, request: pytest.FixtureRequest) -> None:
    layout: RunLayout = request.getfixturevalue(run)
    md = layout.report_md.read_text(encoding="utf-8")
    scale = _section(md, "Scale")
    assert "{" not in scale and "[" not in scale, scale
    assert "| split | examples |" in scale and f"| test | {len(REFERENCES)} |" in scale and "| rl | 18 |" in scale
    for text in (md, _visible_text(layout.report_html.read_text(encoding="utf-8"))):
        assert not [r for r in REPRS if r in text], [r for r in REPRS if r in text]
    if run == "cold_start_only":
        assert (
            f"Evaluated on {len(REFERENCES)} test examples; no general benchmark was evaluated "
            "(evaluation.benchmarks is empty), so no alignment tax is measured." in scale
        )
        assert "Trained: cold\\_start 3 steps." not in scale and "Trained: cold_start 3 steps." in scale
        assert "GRPO reward" not in scale  # no GRPO stage trains with it
        assert "No general benchmark was evaluated" in _section(md, "Alignment tax")
    else:
        assert f"and on 1 general benchmark: mmlu ({BENCH_ITEMS} items)." in scale
        assert "Trained: cold_start 3 steps, sft 3 steps, grpo 3 steps." in scale
        # Where, in which dtype, and which stages' decoder layers were compiled (their manifests).
        assert (
            "Trained on Intel Xeon, 2 cores in bfloat16 (auto); evaluated in float32. "
            "Decoder layers compiled (torch.compile) in cold_start, sft." in scale
        )
        metrics = json.loads(layout.metrics.read_text(encoding="utf-8"))
        assert metrics["scale"]["compiled_layers"] == ["cold_start", "sft"]
        assert "GRPO reward: " in scale
    versions = _section(md, "Versions")
    assert "python " in versions and "{" not in versions


def test_plots_with_nothing_to_show_are_left_out_with_a_reason(cold_start_only: RunLayout) -> None:
    md = cold_start_only.report_md.read_text(encoding="utf-8")
    page = cold_start_only.report_html.read_text(encoding="utf-8")
    assert sorted(p.name for p in cold_start_only.plots.iterdir()) == ["nll_drift.png"]
    assert re.findall(r"plots/[\w.]+", md) == ["plots/nll_drift.png"]
    assert page.count("data:image/png;base64,") == 1
    plots = _section(md, "Plots")
    reasons = [line for line in plots.splitlines() if line.startswith("- ")]
    assert [line.split(":")[0][2:] for line in reasons] == [
        PLOTS[n] for n in ("gain_vs_tax.png", "reward_components.png", "tax_meter.png", "tradeoff.png")
    ]
    assert "no general benchmark was evaluated" in reasons[0]
    assert "no GRPO stage logged rewards" in reasons[1]
    assert all("evaluation.tax_meter_steps" in line for line in reasons[2:])


def test_a_full_run_draws_every_plot(full_run: RunLayout) -> None:
    md = full_run.report_md.read_text(encoding="utf-8")
    for name in PLOTS:
        assert (full_run.plots / name).stat().st_size > 1000, name
        assert f"(plots/{name})" in md
    assert "Not drawn" not in md
    assert full_run.report_html.read_text(encoding="utf-8").count("data:image/png;base64,") == len(PLOTS)


@pytest.mark.parametrize("run", ["cold_start_only", "full_run"])
def test_sample_outputs_sit_under_the_task_table_as_text(run: str, request: pytest.FixtureRequest) -> None:
    layout: RunLayout = request.getfixturevalue(run)
    md = layout.report_md.read_text(encoding="utf-8")
    methods = list(json.loads(layout.metrics.read_text(encoding="utf-8"))["methods"])
    task = _section(md, "Task quality")
    table_end = task.index("\n\n", task.index("| method |"))
    samples = task[table_end:].lstrip("\n")
    assert samples.startswith("### Sample outputs (the first 3 test examples")
    rows = samples.split("\n\n")[1].splitlines()
    assert rows[0] == "| " + " | ".join(["source", "reference", *methods]) + " |"
    assert len(rows) == 2 + 3  # header, rule, three examples (the default)
    assert f"| {REFERENCES[1]} |" in rows[3] and f"| {LEARNED[1]} |" in rows[3]
    assert samples.index("### Sample outputs") < task.index("BLEU signature")
    assert "## Sample outputs" not in md.replace("### Sample outputs", "")  # not repeated at the end
    # The markup in the first source is text in both files.
    assert r"\<script\>alert(1)\</script\>" in rows[2]
    page = layout.report_html.read_text(encoding="utf-8")
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_the_cold_start_verdict_reads_its_chrf_margin_over_chance(cold_start_only: RunLayout) -> None:
    metrics = json.loads(cold_start_only.metrics.read_text(encoding="utf-8"))
    c = metrics["methods"]["cold_start"]["chance"]["chrf"]
    margin = c["margin"]
    assert c["above_chance"] and margin["low"] > 0
    expected = (
        f"cold_start's test outputs are above chance: chrF {c['value']:.2f} against {c['floor']:.2f} for the same "
        f"outputs scored against shuffled references, a margin of {margin['estimate']:+.2f} "
        f"[{margin['low']:+.2f}, {margin['high']:+.2f}] (95% paired interval)."
    )
    text = verdict(metrics)
    assert text.startswith(expected)
    assert f"{len(set(LEARNED))} of cold_start's {len(REFERENCES)} test outputs are distinct." in text
    assert "Against the base model, cold_start's chrF moved +" in text
    assert text.endswith(
        "No tax comparison is possible without a second trained method: the verdict compares GRPO's tax "
        "with SFT's, each measured against the base model."
    )
    page = _visible_text(cold_start_only.report_html.read_text(encoding="utf-8"))
    assert expected in page


def test_a_verdict_names_outputs_at_chance_and_outputs_all_alike(cold_start_only: RunLayout) -> None:
    metrics = json.loads(cold_start_only.metrics.read_text(encoding="utf-8"))
    metrics["methods"]["cold_start"] = metrics["methods"]["base"]  # the untrained model's outputs
    text = verdict(metrics)
    assert "cold_start's test outputs are not above chance" in text and "reaches zero" in text
    assert f"All {len(REFERENCES)} of cold_start's test outputs are the same text." in text


def test_the_full_run_keeps_the_tax_comparison(full_run: RunLayout) -> None:
    text = verdict(json.loads(full_run.metrics.read_text(encoding="utf-8")))
    assert text.startswith("Primary tax measure (mean per-item continuous tax over the benchmarks), GRPO minus SFT:")
    assert "At this scale, mean accuracy-style tax: GRPO" in text and "No tax comparison" not in text


def test_semrl_report_takes_the_number_of_samples(
    cold_start_only: RunLayout, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(cold_start_only.root), "--samples", "1"]) == 0
    md = cold_start_only.report_md.read_text(encoding="utf-8")
    assert "### Sample outputs (the first test example;" in md
    assert main(["report", str(cold_start_only.root)]) == 0  # back to the default for the other tests
    assert "### Sample outputs (the first 3 test examples;" in cold_start_only.report_md.read_text(encoding="utf-8")
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(cold_start_only.root), "--samples", "-1"])
    assert exit_.value.code == 2 and "expected a whole number of test examples" in capsys.readouterr().err


def test_outputs_that_repeat_themselves_are_counted_and_named(tmp_path: Path) -> None:
    """A gamed reward shows as greedy outputs that repeat a phrase (the canon demo's first GRPO run):
    the task table counts them and the verdict says to read the samples."""
    looping = ["菩薩摩訶薩摩訶薩摩訶薩摩訶薩摩訶薩摩訶薩" for _ in REFERENCES]
    looping[0] = REFERENCES[0]  # one clean output: 11 of 12 repeat
    layout = _fabricated_run(
        tmp_path / "run",
        ["stages.enabled=[cold_start]", "evaluation.methods=[base,cold_start]", "evaluation.benchmarks=[]"],
        {"base": LEARNED, "cold_start": looping},
    )
    write_report(layout.root)
    metrics = json.loads(layout.metrics.read_text(encoding="utf-8"))
    n = len(REFERENCES)
    assert metrics["methods"]["cold_start"]["repetitive_output_rate"] == pytest.approx((n - 1) / n)
    assert metrics["methods"]["base"]["repetitive_output_rate"] == 0.0
    table = _section(layout.report_md.read_text(encoding="utf-8"), "Task quality")
    assert "| distinct outputs per source | repetitive outputs |" in table
    text = verdict(metrics)
    assert f"{n - 1} of cold_start's {n} test outputs repeat themselves" in text
    assert text.count("repeat themselves") == 1  # the base model's clean outputs are not named


def test_a_source_on_several_rows_counts_once_among_distinct_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MITRA aligns one Tibetan sentence with several Chinese translations, so a test set can hold a
    source on several rows. Greedy decoding answers it alike on each: that is no collapse, and the
    distinct-output rate counts per distinct source (the study's 220 rows hold 186 sources)."""
    from semrl.results.evidence import distinct_output_rate

    repeated = [SOURCES[0], SOURCES[0], *SOURCES[2:]]  # rows 0 and 1: one source, two references
    monkeypatch.setattr(sys.modules[__name__], "SOURCES", repeated)
    faithful = [LEARNED[0], LEARNED[0], *LEARNED[2:]]  # one output per source
    collapsed = [LEARNED[0], LEARNED[0], LEARNED[0], *LEARNED[3:]]  # and the next source answered alike
    layout = _fabricated_run(
        tmp_path / "run",
        ["stages.enabled=[cold_start,sft]", "evaluation.methods=[base,cold_start,sft]", "evaluation.benchmarks=[]"],
        {"base": CHANCE, "cold_start": faithful, "sft": collapsed},
    )
    write_report(layout.root)
    metrics = json.loads(layout.metrics.read_text(encoding="utf-8"))
    n, sources = len(REFERENCES), len(REFERENCES) - 1
    assert metrics["methods"]["cold_start"]["distinct_sources"] == sources
    assert metrics["methods"]["cold_start"]["distinct_output_rate"] == 1.0
    assert metrics["methods"]["sft"]["distinct_output_rate"] == pytest.approx((sources - 1) / sources)
    text = verdict(metrics)
    assert f"cold_start gave {sources} distinct outputs for the test's {sources} distinct sources ({n} rows)." in text
    assert f"sft gave {sources - 1} distinct outputs for the test's {sources} distinct sources ({n} rows)." in text
    # counted per output, as without sources, the faithful model could not reach 1.0
    assert distinct_output_rate(faithful) == pytest.approx(sources / n)
