"""Sweeps and few-shot transfer on the tiny model, driven through the CLI as a user would:
`semrl sweep` trains the cold-start stage once for every variant (reward presets, GRPO seeds) and
writes one comparison;
`semrl transfer` fine-tunes a finished run's checkpoints on another task and compares them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semrl.cli import main
from semrl.config.experiment import ExperimentConfig, load_config
from semrl.config.rewards import REWARD_PRESETS
from semrl.core.errors import ConfigError
from semrl.core.layout import RunLayout
from semrl.pipeline.run import check_parent_current, remove_stage
from semrl.pipeline.sweep import parse_vary, render_sweep_markdown, run_sweep

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Small enough for a 2-core CPU: no strong-SFT stage, one GRPO step, one cheap benchmark.
FAST = [
    "--set",
    "stages.enabled=[cold_start, grpo]",
    "--set",
    "stages.grpo.max_steps=1",
    "--set",
    "evaluation.benchmarks=[{name: mmlu, limit: 2}]",
    "--set",
    "evaluation.drift_examples=2",
]
VARIANTS = ("emb_lang", "bleu_lang")
# tiny.yaml's own reward is emb_lang's and its seed 0: this variant differs from emb_lang only in GRPO's seed.
SEED_VARIANT = "seed-7"
ALL_VARIANTS = (*VARIANTS, SEED_VARIANT)


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _log_keys(path: Path) -> set[str]:
    return set().union(*(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()))


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory, fixture_data_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    code = main(
        [
            "sweep",
            str(CONFIGS / "tiny.yaml"),
            "--vary",
            "rewards=" + ",".join(VARIANTS),
            "--vary",
            "seed=7",
            "--out",
            str(out),
            "--data-dir",
            str(fixture_data_dir),
            *FAST,
        ]
    )
    assert code == 0
    return out


def test_cold_start_is_trained_once_and_shared(sweep_dir: Path) -> None:
    shared = _json(sweep_dir / "shared" / "stages" / "cold_start" / "manifest.json")
    trained = [p for p in sweep_dir.glob("*/stages/cold_start") if not p.is_symlink()]
    assert trained == [sweep_dir / "shared" / "stages" / "cold_start"]
    for variant in ALL_VARIANTS:
        link = sweep_dir / variant / "stages" / "cold_start"
        assert link.is_symlink() and link.resolve() == trained[0].resolve()
        grpo = _json(sweep_dir / variant / "stages" / "grpo" / "manifest.json")
        assert grpo["parent_id"] == shared["id"]  # each variant's GRPO started from the one cold start
        # the base and cold-start evaluations were made once, in shared/, and reused
        assert _json(sweep_dir / variant / "eval" / "base.json") == _json(sweep_dir / "shared" / "eval" / "base.json")


def test_variants_train_with_their_own_rewards(sweep_dir: Path) -> None:
    emb = _log_keys(sweep_dir / "emb_lang" / "stages" / "grpo" / "log.jsonl")
    bleu = _log_keys(sweep_dir / "bleu_lang" / "stages" / "grpo" / "log.jsonl")
    assert {"rewards/semantic/mean", "rewards/language/mean"} <= emb and "rewards/bleu/mean" not in emb
    assert {"rewards/bleu/mean", "rewards/language/mean"} <= bleu and "rewards/semantic/mean" not in bleu


def test_comparison_report_has_both_variants_with_intervals(sweep_dir: Path) -> None:
    sweep = _json(sweep_dir / "sweep.json")
    assert list(sweep["variants"]) == list(ALL_VARIANTS) and sweep["reference"] == "emb_lang"
    assert set(sweep["shared"]["methods"]) == {"base", "cold_start"}
    for name, row in sweep["variants"].items():
        assert [(c["name"], c["weight"]) for c in row["rewards"]] == [
            (c["name"], c["weight"]) for c in REWARD_PRESETS[name if name in VARIANTS else "emb_lang"]
        ]
        assert {"bleu", "chrf", "semantic", "lang_rate"} <= set(row["task"])
        iv = row["tax_intervals"]["mean"]
        assert iv["low"] <= iv["estimate"] <= iv["high"] and row["tax"]["mean"] == pytest.approx(iv["estimate"])
        assert row["vs_cold_start"]["semantic"]["low"] <= row["vs_cold_start"]["semantic"]["high"]
        assert row["drift"] is not None and row["grpo_steps"] == 1
    assert sweep["variants"]["emb_lang"]["tau"] is not None and sweep["variants"]["bleu_lang"]["tau"] is None
    assert (
        sweep["variants"]["emb_lang"]["vs_reference"] is None
        and "semantic" in sweep["variants"]["bleu_lang"]["vs_reference"]
    )
    md = (sweep_dir / "sweep.md").read_text(encoding="utf-8")
    assert "grpo: emb_lang" in md and "grpo: bleu_lang" in md and "1.5 bleu + 1 language" in md
    assert "| split | examples |" in md and "{'" not in md  # the scale as a table, not a Python repr
    assert "<table>" in (sweep_dir / "sweep.html").read_text(encoding="utf-8")
    for variant in ALL_VARIANTS:  # every variant is a complete run with its own report
        assert set(_json(sweep_dir / variant / "metrics.json")["methods"]) == {"base", "cold_start", "grpo"}


def test_a_seed_variant_repeats_grpo_with_its_seed_and_the_same_reward(sweep_dir: Path) -> None:
    manifests = {v: _json(sweep_dir / v / "stages" / "grpo" / "manifest.json") for v in ("emb_lang", SEED_VARIANT)}
    assert manifests["emb_lang"]["seed"] == 0 and manifests[SEED_VARIANT]["seed"] == 7
    assert manifests["emb_lang"]["parent_id"] == manifests[SEED_VARIANT]["parent_id"]
    rows = _json(sweep_dir / "sweep.json")["variants"]
    assert rows[SEED_VARIANT]["seed"] == 7 and rows["emb_lang"]["seed"] == 0
    # the reward, tau included, is the run's: only the training's randomness differs ...
    assert rows[SEED_VARIANT]["rewards"] == rows["emb_lang"]["rewards"]
    assert rows[SEED_VARIANT]["tau"] == rows["emb_lang"]["tau"]
    # ... and it does differ: another seed trains another model from the same cold start
    adapters = [sweep_dir / v / "stages" / "grpo" / "model" / "adapter_model.safetensors" for v in manifests]
    assert all(a.is_file() for a in adapters) and adapters[0].read_bytes() != adapters[1].read_bytes()
    md = (sweep_dir / "sweep.md").read_text(encoding="utf-8")
    assert "grpo: seed-7" in md and "| GRPO seed |" in md


def test_the_comparison_states_the_spread_of_the_primary_tax_over_seeds(sweep_dir: Path) -> None:
    # The fixture sweep has no strong-SFT stage; give its rows the GRPO - SFT figures a full run has.
    sweep = _json(sweep_dir / "sweep.json")
    rows = sweep["variants"]
    rows["seed-8"] = dict(rows[SEED_VARIANT], seed=8)
    figures = {"emb_lang": -0.05, SEED_VARIANT: 0.01, "seed-8": -0.02}
    for name, estimate in figures.items():
        reading = "lower" if estimate < -0.03 else "not separated"
        rows[name]["tax_vs_sft"] = {
            "measure": "continuous",
            "estimate": estimate,
            "low": estimate - 0.02,
            "high": estimate + 0.02,
            "reading": reading,
        }
    md = render_sweep_markdown(sweep)
    assert "| seed-8 | continuous | -0.020 [-0.040, +0.000] | not separated |" in md.replace("\u00a0", " ")
    # the spread is over the seed variants only (emb_lang is a preset, though it trains with seed 0)
    assert "Over 2 GRPO seeds the estimate ranges from -0.020 to +0.010; readings: not separated." in md


def test_rerun_trains_nothing_and_stale_shared_stage_is_refused(sweep_dir: Path, fixture_data_dir: Path) -> None:
    overrides = [v for v in FAST if v != "--set"]
    config = load_config(CONFIGS / "tiny.yaml", overrides=overrides)
    config.data_dir = str(fixture_data_dir)
    before = {v: _json(sweep_dir / v / "stages" / "grpo" / "manifest.json")["id"] for v in ALL_VARIANTS}
    lines: list[str] = []
    run_sweep(config, ALL_VARIANTS, sweep_dir, log=lines.append)
    assert not [line for line in lines if "starting" in line or "generating" in line]
    assert {v: _json(sweep_dir / v / "stages" / "grpo" / "manifest.json")["id"] for v in ALL_VARIANTS} == before
    # the shared stage's manifest is checked through the link: another cold-start config is refused
    changed = load_config(CONFIGS / "tiny.yaml", overrides=[*overrides, "stages.cold_start.learning_rate=0.5"])
    changed.data_dir = str(fixture_data_dir)
    with pytest.raises(ConfigError, match="different config"):
        run_sweep(changed, VARIANTS, sweep_dir, log=lambda m: None)


def test_grpo_made_from_a_retrained_parent_is_stale_and_force_keeps_shared_stage(tmp_path: Path) -> None:
    shared = RunLayout(tmp_path / "shared")
    variant = RunLayout(tmp_path / "variant")
    config = ExperimentConfig()
    shared.stage("cold_start").root.mkdir(parents=True)
    shared.stage("cold_start").manifest.write_text(json.dumps({"id": "new"}), encoding="utf-8")
    variant.stage("grpo").root.mkdir(parents=True)
    variant.stage("cold_start").root.symlink_to(shared.stage("cold_start").root)
    check_parent_current(config, variant, "grpo", {"parent_id": "new"})
    with pytest.raises(ConfigError, match="since been retrained"):
        check_parent_current(config, variant, "grpo", {"parent_id": "old"})
    remove_stage(variant, "cold_start")  # --force cold_start in a variant drops the link only
    assert not variant.stage("cold_start").root.exists() and shared.stage("cold_start").manifest.is_file()


def test_transfer_from_a_tiny_runs_checkpoints(sweep_dir: Path, fixture_data_dir: Path, tmp_path: Path) -> None:
    source = sweep_dir / "emb_lang"
    out = tmp_path / "transfer"
    code = main(
        [
            "transfer",
            str(CONFIGS / "tiny.yaml"),
            "--out",
            str(out),
            "--data-dir",
            str(fixture_data_dir),
            "--set",
            "task={kind: headline, source_lang: zh, target_lang: zh}",
            "--set",
            "data.sources=[{kind: ntrex, headlines: true}]",
            "--set",
            "data.splits={cold_start: 4, rl: -1, dev: 1, test: 3}",
            "--set",
            "data.max_source_chars=null",
            "--set",
            f"transfer.from_run={source}",
            "--set",
            "transfer.from_stages=[grpo, cold_start]",
            "--set",
            "transfer.n=5",
            "--set",
            "transfer.stage={learning_rate: 1.0e-3, max_steps: 1, batch_size: 4, per_device_batch_size: 4, max_length: 256}",
        ]
    )
    assert code == 0
    for stage in ("grpo", "cold_start"):
        manifest = _json(out / "stages" / f"from_{stage}" / "manifest.json")
        assert manifest["init_model"] == str(source / "stages" / stage / "model")
        assert manifest["parent_id"] == _json(source / "stages" / stage / "manifest.json")["id"]
        assert manifest["extra"]["num_examples"] == 5
    t = _json(out / "transfer.json")
    assert (
        list(t["methods"]) == ["from_grpo", "from_cold_start"] and t["n_train"] == 5 and t["task"]["kind"] == "headline"
    )
    assert {"rouge_l", "semantic"} <= set(t["methods"]["from_grpo"]["task"])
    diff = t["differences"]["from_grpo-from_cold_start"]["semantic"]
    assert diff["low"] <= diff["estimate"] <= diff["high"]
    md = (out / "transfer.md").read_text(encoding="utf-8")
    assert "from_grpo" in md and "from_cold_start" in md and "## Differences" in md


def test_cli_errors_name_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = str(CONFIGS / "tiny.yaml")
    assert main(["sweep", tiny, "--out", str(tmp_path / "s")]) == 2
    assert "--vary rewards=" in capsys.readouterr().err
    assert main(["sweep", tiny, "--out", str(tmp_path / "s"), "--vary", "rewards=emb_lang,nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["sweep", tiny, "--out", str(tmp_path / "s"), "--vary", "seed=1,1"]) == 2
    assert "--vary seed: " in (err := capsys.readouterr().err) and "each seed may appear once" in err
    assert (
        main(
            [
                "sweep",
                tiny,
                "--out",
                str(tmp_path / "s"),
                "--vary",
                "rewards=emb",
                "--set",
                "stages.enabled=[cold_start, sft]",
            ]
        )
        == 2
    )
    assert "grpo" in capsys.readouterr().err
    assert main(["transfer", tiny, "--out", str(tmp_path / "t")]) == 2
    assert "transfer.from_run" in capsys.readouterr().err
    assert main(["transfer", tiny, "--out", str(tmp_path / "t"), "--set", f"transfer.from_run={tmp_path}"]) == 2
    assert "no finished 'grpo' stage" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_parse_vary() -> None:
    assert parse_vary(["rewards=emb_lang, bleu_lang", "rewards=emb"]) == ["emb_lang", "bleu_lang", "emb"]
    assert parse_vary(["seed=1, 2", "rewards=emb"]) == ["seed-1", "seed-2", "emb"]
    with pytest.raises(ConfigError, match="rewards=PRESET.* or seed=N"):
        parse_vary(["lr=1e-4"])
    with pytest.raises(ConfigError, match="seeds are integers.*-1, x"):
        parse_vary(["seed=1,-1,x"])
