"""Regression tests of issue 15 (a fault campaign): nothing lost, nothing half-trusted.

Fast cases use fixtures and fabricated files; the resume cases train the tiny model's cold start
(3 steps) once per module and copy that run directory for each fault.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from semrl.cli import main
from semrl.config.experiment import load_config, parse_config
from semrl.core.errors import ConfigError, DataError, ModelError
from semrl.core.layout import RunLayout
from semrl.core.lock import LockError, directory_lock
from semrl.train.callbacks import read_log
from semrl.train.stage import last_checkpoint

TINY = Path(str(resources.files("semrl") / "configs" / "tiny.yaml"))
CONSTANT = ["stages.cold_start.lr_scheduler=constant", "stages.cold_start.save_steps=1"]


def _weights_file(model_dir: Path) -> Path:
    """A stage model's weights: the adapter with LoRA (the default), else the full checkpoint."""
    return next(p for p in (model_dir / "adapter_model.safetensors", model_dir / "model.safetensors") if p.is_file())


def _tiny(data_dir: Path, *overrides: str):
    config = load_config(TINY, overrides=[*CONSTANT, *overrides])
    config.data_dir = str(data_dir)
    return config


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory: pytest.TempPathFactory, fixture_data_dir: Path) -> Path:
    """A run directory whose cold start finished (3 steps, constant lr, a checkpoint every step)."""
    from semrl.pipeline.run import run_experiment

    run_dir = tmp_path_factory.mktemp("faults") / "run"
    run_experiment(_tiny(fixture_data_dir), run_dir, only="cold_start", evaluate=False, log=lambda _: None)
    return run_dir


def _copy(run_dir: Path, tmp_path: Path) -> RunLayout:
    target = tmp_path / "run"
    shutil.copytree(run_dir, target, symlinks=True)
    return RunLayout(target)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------------------------------------
# 1, 2, 6: resume and reruns of a finished stage
# ---------------------------------------------------------------------------------------------
def test_rerun_after_the_final_checkpoint_finishes_without_training(
    cold_run: Path, tmp_path: Path, fixture_data_dir: Path
) -> None:
    from semrl.pipeline.run import run_experiment

    layout = _copy(cold_run, tmp_path)
    stage = layout.stage("cold_start")
    weights = _weights_file(stage.model).read_bytes()
    rows = read_log(stage.log)
    stage.manifest.unlink()  # stopped after its last checkpoint, before its manifest
    summary = run_experiment(
        _tiny(fixture_data_dir), layout.root, only="cold_start", evaluate=False, log=lambda _: None
    )
    assert summary.actions["cold_start"] == "resumed"
    assert summary.manifests["cold_start"]["metrics"]["global_step"] == 3
    assert _weights_file(stage.model).read_bytes() == weights  # no step past max_steps
    assert read_log(stage.log) == rows


def test_a_refused_rerun_leaves_config_yaml_as_it_was(cold_run: Path, tmp_path: Path, fixture_data_dir: Path) -> None:
    from semrl.pipeline.run import run_experiment

    layout = _copy(cold_run, tmp_path)
    before = layout.config.read_text(encoding="utf-8")
    changed = _tiny(fixture_data_dir, "stages.cold_start.learning_rate=0.5")
    with pytest.raises(ConfigError, match="different config"):
        run_experiment(changed, layout.root, only="cold_start", evaluate=False, log=lambda _: None)
    assert layout.config.read_text(encoding="utf-8") == before


def test_a_damaged_stage_manifest_is_reported_never_retrained(
    cold_run: Path, tmp_path: Path, fixture_data_dir: Path
) -> None:
    from semrl.pipeline.run import run_experiment

    layout = _copy(cold_run, tmp_path)
    stage = layout.stage("cold_start")
    stage.manifest.write_text('{"stage": "cold_st', encoding="utf-8")
    weights = _weights_file(stage.model).read_bytes()
    with pytest.raises(DataError, match="damaged manifest") as err:
        run_experiment(_tiny(fixture_data_dir), layout.root, only="cold_start", evaluate=False, log=lambda _: None)
    assert str(stage.manifest) in str(err.value)
    assert _weights_file(stage.model).read_bytes() == weights


# ---------------------------------------------------------------------------------------------
# 3: the run directory's lock
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "command", [["run", "CONFIG", "--only", "cold_start", "--no-eval"], ["train", "cold_start", "CONFIG"]]
)
def test_a_second_run_on_a_locked_directory_exits_2_naming_the_holder(
    command: list[str], cold_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = _copy(cold_run, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        layout.lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}), encoding="utf-8")
        argv = [str(layout.config) if a == "CONFIG" else a for a in command]
        code = main([*argv, "--out", str(layout.root)])
    finally:
        holder.kill()
        holder.wait()
    assert code == 2
    assert f"in use by process {holder.pid}" in capsys.readouterr().err
    assert layout.lock.is_file()  # the holder's lock is left alone


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path: Path) -> None:
    lock = tmp_path / ".semrl.lock"
    pid = _dead_pid()
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname()}), encoding="utf-8")
    lines: list[str] = []
    with directory_lock(lock, "run directory", log=lines.append):
        assert json.loads(lock.read_text(encoding="utf-8"))["pid"] == os.getpid()
    assert not lock.exists()
    assert any(f"stale lock of process {pid}" in line for line in lines)


def _locked_elsewhere(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / ".semrl.lock").write_text(json.dumps({"pid": 1, "host": "another-host"}), encoding="utf-8")


def test_sweep_and_transfer_refuse_a_locked_directory(cold_run: Path, tmp_path: Path, fixture_data_dir: Path) -> None:
    from semrl.pipeline.sweep import run_sweep
    from semrl.pipeline.transfer import run_transfer

    sweep_dir = tmp_path / "sweep"
    _locked_elsewhere(sweep_dir)
    with pytest.raises(LockError, match="another-host"):
        run_sweep(_tiny(fixture_data_dir), ["emb_lang"], sweep_dir)
    assert not (sweep_dir / "shared").exists()

    config = _tiny(fixture_data_dir, f"transfer.from_run={cold_run}", "transfer.from_stages=[cold_start]")
    transfer_dir = tmp_path / "transfer"
    _locked_elsewhere(transfer_dir)
    with pytest.raises(LockError, match="another-host"):
        run_transfer(config, transfer_dir)
    assert not RunLayout(transfer_dir).config.exists()


# ---------------------------------------------------------------------------------------------
# 4, 5: damaged checkpoints, logs and evaluations
# ---------------------------------------------------------------------------------------------
def _checkpoint(folder: Path, step: int) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": torch.zeros(16)}, str(path / "adapter_model.safetensors"))
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 9}), encoding="utf-8")
    return path


def test_a_truncated_trainer_state_falls_back_to_the_older_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    older = _checkpoint(tmp_path, 2)
    newer = _checkpoint(tmp_path, 4)
    (newer / "trainer_state.json").write_text('{"global_st', encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert last_checkpoint(tmp_path) == older
    assert str(newer) in caplog.text


def test_truncated_checkpoint_weights_are_not_a_resume_point(tmp_path: Path) -> None:
    older = _checkpoint(tmp_path, 2)
    newer = _checkpoint(tmp_path, 4)
    weights = newer / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    assert last_checkpoint(tmp_path) == older
    weights.unlink()
    assert last_checkpoint(tmp_path) == older


def test_a_torn_last_log_line_is_dropped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.9}\n{"step": 3, "lo', encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert [r["step"] for r in read_log(log)] == [1, 2]
    assert "torn last line" in caplog.text
    log.write_text('{"step": 1}\n{"ste\n{"step": 3}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"log.jsonl:2"):
        read_log(log)


def test_report_survives_a_torn_log_and_a_truncated_evaluation(
    cold_run: Path, tmp_path: Path, fixture_data_dir: Path
) -> None:
    from semrl.pipeline.evaluate import evaluate_run
    from semrl.results.report import write_report

    layout = _copy(cold_run, tmp_path)
    config = _tiny(fixture_data_dir, "evaluation.methods=[base]", "evaluation.benchmarks=[]", "evaluation.test_limit=2")
    evaluate_run(config, layout.root, log=lambda _: None)
    good = layout.eval_file("base").read_text(encoding="utf-8")
    with layout.stage("cold_start").log.open("a", encoding="utf-8") as f:
        f.write('{"step": 4, "lo')  # killed mid-append
    stale = layout.root / ".plots.killed.tmp"  # a report killed mid-write
    stale.mkdir()
    assert write_report(layout.root).is_file()
    assert not stale.exists()

    layout.eval_file("base").write_text(good[: len(good) // 2], encoding="utf-8")  # truncated
    evaluate_run(config, layout.root, log=lambda _: None)  # redone, not a crash
    assert json.loads(layout.eval_file("base").read_text(encoding="utf-8"))["method"] == "base"


# ---------------------------------------------------------------------------------------------
# 7: values checked when the config loads
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"evaluation": {"generation": {"batch_size": 0}}}, "evaluation.generation.batch_size"),
        ({"stages": {"cold_start": {"lr_scheduler": "cosin"}}}, "stages.cold_start.lr_scheduler"),
        ({"stages": {"grpo": {"max_steps": 0}}}, "stages.grpo.max_steps"),
        ({"stages": {"sft": {"max_steps": -5}}}, "stages.sft.max_steps"),
    ],
)
def test_bad_values_fail_when_the_config_loads(section: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config({"name": "x", **section})


def test_every_transformers_scheduler_is_accepted() -> None:
    from transformers.trainer_utils import SchedulerType

    for kind in SchedulerType:
        assert parse_config({"stages": {"cold_start": {"lr_scheduler": kind.value}}}).stages.cold_start.lr_scheduler


def test_an_empty_config_points_to_config_init(tmp_path: Path) -> None:
    for text in ("", "# only a comment\n", "{}\n"):
        path = tmp_path / "empty.yaml"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError, match="semrl config init"):
            load_config(path)


# ---------------------------------------------------------------------------------------------
# 8: length cap at data preparation, bounded evaluation batches
# ---------------------------------------------------------------------------------------------
def _long_line_config(tmp_path: Path, **data: object):
    rows = [{"bo": "ཀ" * (1_000_000 if i == 3 else 5) + str(i), "zh": f"中{i}", "doc": f"d{i}"} for i in range(12)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    source = {"kind": "local", "path": str(path), "columns": {"source": "bo", "reference": "zh", "doc_id": "doc"}}
    return parse_config(
        {"data": {"sources": [source], "splits": {"cold_start": 2, "rl": 4, "dev": 2, "test": 2}, **data}}
    )


def test_a_one_megabyte_line_is_dropped_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from semrl.data.splits import prepare_data

    splits = prepare_data(_long_line_config(tmp_path), tmp_path / "run")
    assert max(len(ex.source) for exs in splits.values() for ex in exs) < 100
    manifest = json.loads(RunLayout(tmp_path / "run").splits_manifest.read_text(encoding="utf-8"))
    assert manifest["dropped_by_max_source_chars"] == 1


def test_a_too_long_line_fails_when_the_config_says_so(tmp_path: Path) -> None:
    from semrl.data.splits import prepare_data

    with pytest.raises(DataError, match="1000001 characters long"):
        prepare_data(_long_line_config(tmp_path, too_long="fail"), tmp_path / "run")


def test_generation_bounds_a_pathological_prompt() -> None:
    from semrl.config.evaluation import GenerationConfig
    from semrl.config.model import ModelConfig
    from semrl.generation import generate_completions
    from semrl.models import load_policy

    model, tokenizer = load_policy(ModelConfig(name="tiny"))
    texts = generate_completions(model, tokenizer, ["ཀ" * 200_000, "short"], GenerationConfig(max_new_tokens=2))
    assert len(texts) == 2


# ---------------------------------------------------------------------------------------------
# 9-12: messages instead of tracebacks
# ---------------------------------------------------------------------------------------------
def test_a_full_disk_is_a_message_naming_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "semrl.yaml"

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", full)
    assert main(["config", "init", str(target)]) == 2
    err = capsys.readouterr().err
    assert str(target) in err.replace("\n", "") and "free disk space" in err
    assert not target.exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_a_safetensors_write_error_is_a_model_error(tmp_path: Path) -> None:
    from semrl.config.model import ModelConfig
    from semrl.models import load_policy, save_merged

    class SafetensorError(Exception):
        pass

    model, tokenizer = load_policy(ModelConfig(name="tiny"))

    def fail(*args, **kwargs):
        raise SafetensorError("No space left on device (os error 28)")

    model.save_pretrained = fail
    with pytest.raises(ModelError, match="cannot write the model"):
        save_merged(model, tokenizer, tmp_path / "model")
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("value", ["rewards.tau=[1,", "model.name=!!python/name:os.system", "x.y"])
def test_malformed_set_names_the_flag(value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", str(TINY), "--set", value]) == 2
    assert "--set" in capsys.readouterr().err


def test_an_invalid_set_value_is_blamed_on_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"stages\.grpo\.max_steps \(from --set stages\.grpo\.max_steps=0\)"):
        load_config(TINY, overrides=["stages.grpo.max_steps=0"])


@pytest.mark.parametrize("tau", ["abc", "2.5", "nan"])
def test_score_refuses_a_bad_tau_naming_the_flag(tau: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = tmp_path / "c.jsonl"
    rows.write_text('{"source": "a", "reference": "我", "completion": "我"}\n', encoding="utf-8")
    with pytest.raises(SystemExit) as exit_:
        main(["score", "--completions", str(rows), "--target-lang", "zh", "--tau", tau])
    assert exit_.value.code == 2
    assert "--tau" in capsys.readouterr().err


def test_pickle_only_weights_are_refused_unless_allowed(tmp_path: Path) -> None:
    from semrl.config.model import ModelConfig
    from semrl.models import check_weights_format

    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelError, match="model.allow_pickle"):
        check_weights_format(tmp_path, ModelConfig().allow_pickle)
    check_weights_format(tmp_path, allow_pickle=True)
    assert "allow_pickle" not in ModelConfig().model_dump()  # old config hashes stay valid


def test_remote_code_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from semrl.models import warn_remote_code

    (tmp_path / "modeling_x.py").write_text("", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        warn_remote_code(tmp_path, True)
        warn_remote_code(tmp_path, True)
    assert caplog.text.count("modeling_x.py") == 1


def test_a_directory_as_config_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_file_names_with_rich_markup_print_verbatim(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a:x:[b]c.yaml"
    assert main(["config", "show", str(path)]) == 2
    assert "a:x:[b]c.yaml" in capsys.readouterr().err.replace("\n", "")


def test_report_md_escapes_markup_from_data() -> None:
    from semrl.results import render
    from semrl.results.render import md_table, render_html

    cell = render._short("<script>alert(1)</script> & co")
    assert "<script>" not in cell
    html = render_html(md_table(["output"], [[cell]]), Path("/nonexistent"))
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html  # escaped once, not twice


# ---------------------------------------------------------------------------------------------
# Found by the fresh campaign (benchmarks/fault_campaign.py)
# ---------------------------------------------------------------------------------------------
def test_a_damaged_tau_json_is_recalibrated_to_the_same_value_on_resume(
    cold_run: Path, tmp_path: Path, fixture_data_dir: Path
) -> None:
    from semrl.pipeline.run import run_experiment

    layout = _copy(cold_run, tmp_path)
    config = _tiny(fixture_data_dir, "stages.grpo.max_steps=1")
    first = run_experiment(config, layout.root, only="grpo", evaluate=False, log=lambda _: None)
    grpo = layout.stage("grpo")
    tau = json.loads(grpo.tau.read_text(encoding="utf-8"))["value"]
    grpo.manifest.unlink()
    grpo.tau.write_text('{"value": 0.', encoding="utf-8")  # damaged
    again = run_experiment(config, layout.root, only="grpo", evaluate=False, log=lambda _: None)
    assert again.actions["grpo"] == "resumed"
    assert json.loads(grpo.tau.read_text(encoding="utf-8"))["value"] == tau
    assert again.manifests["grpo"]["metrics"]["global_step"] == first.manifests["grpo"]["metrics"]["global_step"]


def test_a_parent_model_with_damaged_weights_is_a_model_error(cold_run: Path, tmp_path: Path) -> None:
    from semrl.config.model import ModelConfig
    from semrl.models import load_policy

    model_dir = _copy(cold_run, tmp_path).stage("cold_start").model
    weights = _weights_file(model_dir)
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelError, match="--force"):
        load_policy(ModelConfig(name="tiny"), model_dir)
