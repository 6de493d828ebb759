"""Each speed change gives the numbers of the slower path it replaces, within its dtype's tolerance
(issue 22); the timings themselves are in benchmarks/results/step_ab_*.json."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from semrl import models
from semrl.config.model import LoraConfig, ModelConfig
from semrl.train.cpu import lora_in_weight_dtype

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
