"""Regression tests of issue 21 ("nothing lost"): no semrl command writes or deletes a file
outside the run directory or the output it was given.

- `semrl export --out DIR` replaces DIR as a whole: a non-empty DIR needs --overwrite, and a run
  directory (DIR itself, one below DIR, or one around DIR) is refused even with it.
- Config values that become folder names (stage names, sweep presets, transfer start stages) are
  plain names, checked when the config loads.
- `semrl data prepare` takes the run's lock and never replaces splits (those of another config
  are refused, the same config's are reused).
- `semrl train` refuses a finished stage whose config changed, unless --force retrains it.

The export and train cases share one run directory whose cold start finished (the tiny model,
3 steps); each case works on a copy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from importlib import resources
from pathlib import Path

import pytest

from semrl.cli import main
from semrl.config.experiment import load_config
from semrl.core.errors import ConfigError
from semrl.core.layout import RunLayout

TINY = Path(str(resources.files("semrl") / "configs" / "tiny.yaml"))


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root` (itself included) with its content's digest: two equal
    snapshots mean nothing was written, deleted or changed there."""
    out = {".": "dir" if root.is_dir() else "missing"}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, fixture_data_dir: Path) -> Path:
    """A run directory whose cold_start stage finished (tiny config, its own defaults)."""
    run = tmp_path_factory.mktemp("paths") / "run"
    args = ["run", str(TINY), "--out", str(run), "--only", "cold_start", "--no-eval"]
    assert main([*args, "--data-dir", str(fixture_data_dir)]) == 0
    return run


def _copy(run: Path, where: Path) -> Path:
    shutil.copytree(run, where, symlinks=True)
    return where


def _export(run: Path, out: Path, *flags: str) -> int:
    return main(["export", str(run), "--stage", "cold_start", "--out", str(out), *flags])


# ---------------------------------------------------------------------------------------------
# 1: semrl export --out
# ---------------------------------------------------------------------------------------------
def test_export_refuses_a_folder_of_user_files_unless_overwrite(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    (out / "notes").mkdir(parents=True)
    (out / "thesis.tex").write_text("months of work", encoding="utf-8")
    (out / "notes" / "a.txt").write_text("more", encoding="utf-8")
    before = snapshot(out)
    assert _export(finished_run, out) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err
    assert snapshot(out) == before
    assert not list(tmp_path.glob(".mine.*.tmp"))  # no temporary export left beside it


def test_export_replaces_a_previous_export_only_with_overwrite(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "export"
    assert _export(finished_run, out) == 0  # a new folder
    first = snapshot(out)
    assert "README.md" in first
    assert _export(finished_run, out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert snapshot(out) == first
    (out / "stale.bin").write_bytes(b"x")
    assert _export(finished_run, out, "--overwrite") == 0
    assert not (out / "stale.bin").exists()
    assert (out / "README.md").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _export(finished_run, empty) == 0  # an empty folder needs no flag


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
@pytest.mark.parametrize(
    "where",
    [
        "the run itself",
        "the run's parent",
        "a folder two levels above the run",
        "a stage folder inside the run",
        "a new folder inside the run",
    ],
)
def test_export_never_replaces_a_run_directory_even_with_overwrite(
    where: str, flags: list[str], finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    top = tmp_path / "top"
    run = _copy(finished_run, top / "projects" / "run")
    (top / "projects" / "readme.txt").write_text("mine", encoding="utf-8")
    out = {
        "the run itself": run,
        "the run's parent": run.parent,
        "a folder two levels above the run": top,
        "a stage folder inside the run": RunLayout(run).stage("cold_start").root,
        "a new folder inside the run": run / "exports" / "cold_start",
    }[where]
    before = snapshot(top)
    assert _export(run, out, *flags) == 2
    err = capsys.readouterr().err
    assert str(out) in err and ("run directory" in err or ("not empty" in err and not flags))
    assert snapshot(top) == before


def test_a_run_prepared_by_data_prepare_alone_is_a_run_directory(
    finished_run: Path, tmp_path: Path, fixture_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prepared = tmp_path / "holder" / "prepared"
    assert main(["data", "prepare", str(TINY), "--out", str(prepared), "--data-dir", str(fixture_data_dir)]) == 0
    before = snapshot(tmp_path / "holder")
    assert _export(finished_run, tmp_path / "holder", "--overwrite") == 2
    assert "holds a semrl run directory" in capsys.readouterr().err
    assert snapshot(tmp_path / "holder") == before


# ---------------------------------------------------------------------------------------------
# 2: config values that become folder names
# ---------------------------------------------------------------------------------------------
def _config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(TINY.read_text(encoding="utf-8") + extra, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["../../victim", "/tmp/victim", "a/b", "..", ".hidden", "x..y", "a b", ""])
def test_a_stage_name_that_is_no_plain_name_is_refused_at_load(name: str, tmp_path: Path) -> None:
    stage = json.dumps(name)
    extra = f"  {stage}: {{kind: sft, splits: [cold_start], max_steps: 1}}\n"
    config = _config(tmp_path, "").read_text(encoding="utf-8").replace("stages:\n", f"stages:\n{extra}", 1)
    path = tmp_path / "bad.yaml"
    path.write_text(config, encoding="utf-8")
    with pytest.raises(ConfigError, match="stage name") as err:
        load_config(path)
    assert "stages" in str(err.value) and "letters, digits" in str(err.value)


def test_a_stage_named_outside_the_run_is_refused_before_anything_is_written(
    tmp_path: Path, fixture_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine", encoding="utf-8")
    extra = "  enabled: [cold_start, ../../victim]\n  ../../victim: {kind: sft, splits: [cold_start], max_steps: 1}\n"
    config = _config(tmp_path, "").read_text(encoding="utf-8").replace("stages:\n", f"stages:\n{extra}", 1)
    path = tmp_path / "bad.yaml"
    path.write_text(config, encoding="utf-8")
    before = snapshot(tmp_path)
    args = ["run", str(path), "--out", str(work / "run"), "--no-eval", "--data-dir", str(fixture_data_dir)]
    assert main(args) == 2
    assert "'../../victim' becomes a folder name" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("names", [["../x"], ["grpo", "/abs"]])
def test_transfer_from_stages_must_be_plain_names(names: list[str]) -> None:
    with pytest.raises(ConfigError, match="transfer.from_stages.*becomes a folder name"):
        load_config(TINY, overrides=[f"transfer.from_stages={json.dumps(names)}"])


def test_sweep_presets_must_be_plain_names() -> None:
    # An unknown preset was refused before too; the check says why a path is never a preset.
    with pytest.raises(ConfigError, match="sweep.rewards.*becomes a folder name"):
        load_config(TINY, overrides=['sweep.rewards=["../emb_lang"]'])


@pytest.mark.parametrize("name", ["recovery", "stage-2.b", "SFT_2"])
def test_plain_stage_names_are_accepted(name: str, tmp_path: Path) -> None:
    extra = f"  {name}: {{kind: sft, from: grpo, splits: [cold_start]}}\n"
    config = TINY.read_text(encoding="utf-8").replace("stages:\n", f"stages:\n{extra}", 1)
    path = tmp_path / "ok.yaml"
    path.write_text(config, encoding="utf-8")
    assert name in load_config(path).stages.declared()


# ---------------------------------------------------------------------------------------------
# 3: semrl data prepare on an existing run
# ---------------------------------------------------------------------------------------------
def _prepare(out: Path, data_dir: Path, *sets: str) -> int:
    args = ["data", "prepare", str(TINY), "--out", str(out), "--data-dir", str(data_dir)]
    for item in sets:
        args += ["--set", item]
    return main(args)


def test_data_prepare_refuses_splits_of_another_config(
    tmp_path: Path, fixture_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert _prepare(run, fixture_data_dir) == 0
    before = snapshot(run)
    assert _prepare(run, fixture_data_dir, "seed=7") == 2
    assert "splits were made from a different data/task config" in capsys.readouterr().err
    assert snapshot(run) == before


def test_data_prepare_reuses_splits_of_the_same_config(
    tmp_path: Path, fixture_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert _prepare(run, fixture_data_dir) == 0
    manifest = RunLayout(run).splits_manifest
    before, stamp = snapshot(run), manifest.stat().st_mtime_ns
    capsys.readouterr()
    assert _prepare(run, fixture_data_dir) == 0
    assert "reused" in capsys.readouterr().out
    assert snapshot(run) == before
    assert manifest.stat().st_mtime_ns == stamp  # not even rewritten with the same bytes


def test_data_prepare_refuses_a_directory_a_run_is_working_in(
    finished_run: Path, tmp_path: Path, fixture_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(finished_run, tmp_path / "run")
    RunLayout(run).lock.write_text(json.dumps({"pid": 1, "host": f"not-{socket.gethostname()}"}), encoding="utf-8")
    before = snapshot(run)
    assert _prepare(run, fixture_data_dir) == 2
    assert "in use by process" in capsys.readouterr().err
    assert snapshot(run) == before


# ---------------------------------------------------------------------------------------------
# 4: semrl train on a finished stage
# ---------------------------------------------------------------------------------------------
def _train(run: Path, data_dir: Path, *more: str) -> int:
    return main(["train", "cold_start", str(TINY), "--out", str(run), "--data-dir", str(data_dir), *more])


def test_train_refuses_a_finished_stage_whose_config_changed(
    finished_run: Path, tmp_path: Path, fixture_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(finished_run, tmp_path / "run")
    before = snapshot(run)
    assert _train(run, fixture_data_dir, "--set", "stages.cold_start.learning_rate=0.5") == 2
    err = capsys.readouterr().err
    assert "finished with a different config" in err and "--force" in err and "--force cold_start" not in err
    assert snapshot(run) == before


def test_train_skips_a_finished_stage_of_the_same_config(
    finished_run: Path, tmp_path: Path, fixture_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(finished_run, tmp_path / "run")
    before = snapshot(run)
    assert _train(run, fixture_data_dir) == 0
    assert "already finished" in capsys.readouterr().out
    assert snapshot(run) == before  # the model keeps its manifest id: child stages stay current


def test_train_force_retrains_under_the_new_config(finished_run: Path, tmp_path: Path, fixture_data_dir: Path) -> None:
    from semrl.train.stages import stage_config_hash

    run = _copy(finished_run, tmp_path / "run")
    stage = RunLayout(run).stage("cold_start")
    old = json.loads(stage.manifest.read_text(encoding="utf-8"))
    changed = "stages.cold_start.learning_rate=0.5"
    assert _train(run, fixture_data_dir, "--set", changed, "--force") == 0
    new = json.loads(stage.manifest.read_text(encoding="utf-8"))
    want = stage_config_hash(load_config(TINY, overrides=[changed]), "cold_start")
    assert new["config_hash"] == want != old["config_hash"]
    assert new["id"] != old["id"]
    assert new["metrics"]["global_step"] == old["metrics"]["global_step"]  # all steps again, from the base model
    assert (stage.model / "adapter_model.safetensors").read_bytes() != (
        RunLayout(finished_run).stage("cold_start").model / "adapter_model.safetensors"
    ).read_bytes()
