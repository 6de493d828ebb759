"""Each speed change gives the numbers of the slower path it replaces, within its dtype's tolerance
(issue 22); the timings themselves are in benchmarks/results/step_ab_*.json."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from semrl import models
from semrl.config.model import LoraConfig, ModelConfig
from semrl.train.cpu import lora_in_weight_dtype, merged_lora_for_generation

TEXTS = ["ཀ་ཁ་ག་ང་ཅ་ཆ", "我们明天早上坐火车去北京。"]


@pytest.fixture(scope="module")
def cache() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp, __import__("tempfile").TemporaryDirectory() as tmp:
        mp.setenv("SEMRL_CACHE_DIR", tmp)
        yield


def _lora_policy(dtype: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The tiny policy in `dtype` wrapped with float32 LoRA adapters as TRL wraps it (PEFT's
    defaults), with non-zero B matrices so that the adapters change the output."""
    import peft

    model, tok = models.load_policy(ModelConfig(name="tiny", dtype=dtype))
    wrapped = peft.get_peft_model(model, models.peft_config(LoraConfig(r=8, alpha=16, dropout=0.0), model))
    generator = torch.Generator().manual_seed(0)
    for name, param in wrapped.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator, dtype=param.dtype) * 0.05
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return wrapped, dict(batch)


def _loss_and_grads(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor]:
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    grads = [p.grad.flatten() for p in model.parameters() if p.requires_grad]
    return loss.item(), torch.cat(grads).float()


def test_lora_in_weight_dtype_matches_peft_float32_adapter_path(cache: None) -> None:
    model, batch = _lora_policy("bfloat16")
    adapters = [p for p in model.parameters() if p.requires_grad]
    assert adapters and all(p.dtype == torch.float32 for p in adapters)  # PEFT's default: float32 adapters

    adapter_dtypes: list[torch.dtype] = []
    first_a = next(m for n, m in model.named_modules() if n.endswith("lora_A.default"))
    first_a.register_forward_hook(lambda mod, args, out: adapter_dtypes.append(out.dtype))

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    slow_loss, slow_grads = _loss_and_grads(model, batch)
    with torch.no_grad():
        slow_logits = model(**inputs).logits.float()
    with lora_in_weight_dtype(model):
        fast_loss, fast_grads = _loss_and_grads(model, batch)
        with torch.no_grad():  # generation's forwards: the float32 adapter path, same logits
            nograd_logits = model(**inputs).logits.float()
    again_loss, _ = _loss_and_grads(model, batch)

    # Same loss and gradients within bfloat16's rounding (8 bits of mantissa).
    assert fast_loss == pytest.approx(slow_loss, rel=1e-2)
    assert torch.nn.functional.cosine_similarity(fast_grads, slow_grads, dim=0) > 0.995
    assert (fast_grads.norm() / slow_grads.norm()).item() == pytest.approx(1.0, rel=2e-2)
    # The gradients still reach float32 adapters (Adam's state stays float32), and the adapter path
    # really ran in bfloat16; after the block PEFT's own path is back, bit for bit.
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in adapters)
    # (the no-grad forward inside the block computes in float32 and hands back bfloat16)
    assert adapter_dtypes == [torch.float32, torch.float32, torch.bfloat16, torch.bfloat16, torch.float32]
    assert torch.allclose(nograd_logits, slow_logits, atol=0.05, rtol=0.02)
    assert again_loss == slow_loss


def test_lora_in_weight_dtype_leaves_float32_models_alone(cache: None) -> None:
    model, batch = _lora_policy("float32")
    before, _ = _loss_and_grads(model, batch)
    with lora_in_weight_dtype(model):
        inside, _ = _loss_and_grads(model, batch)
    assert inside == before


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_merged_lora_for_generation_samples_what_the_adapters_sample(cache: None, dtype: str) -> None:
    model, batch = _lora_policy(dtype)
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapter_calls: list[int] = []
    first_a = next(m for n, m in model.named_modules() if n.endswith("lora_A.default"))
    first_a.register_forward_hook(lambda *_: adapter_calls.append(1))

    def greedy() -> torch.Tensor:
        return model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=0)

    with torch.no_grad():
        slow_logits, slow_tokens = model(**inputs).logits.float(), greedy()
        calls_unmerged = len(adapter_calls)
        with merged_lora_for_generation(model):
            fast_logits, fast_tokens = model(**inputs).logits.float(), greedy()
        assert len(adapter_calls) == calls_unmerged  # the adapter path did not run: the merged weights did
        again_logits = model(**inputs).logits.float()

    tolerance = {"float32": 1e-4, "bfloat16": 0.1}[dtype]  # bfloat16: W + BA rounded once, 8-bit mantissa
    assert torch.allclose(fast_logits, slow_logits, atol=tolerance, rtol=tolerance)
    assert torch.equal(fast_tokens, slow_tokens)
    # On exit the model is the one it was, bit for bit: no merge/unmerge rounding left in the base.
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    assert torch.equal(again_logits, slow_logits)


def test_merged_lora_for_generation_leaves_models_without_lora_alone(cache: None) -> None:
    model, _ = models.load_policy(ModelConfig(name="tiny", dtype="float32"))
    storage = {n: p.data_ptr() for n, p in model.named_parameters()}
    with merged_lora_for_generation(model):
        assert {n: p.data_ptr() for n, p in model.named_parameters()} == storage
