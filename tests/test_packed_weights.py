"""Evaluated models multiply by linear weights packed for oneDNN (`evaluation.packed_weights`), and
GRPO samples with them (`packed_generation`): the same logits within float32 rounding (bfloat16: to
the bit), the same greedy outputs, plain weights wherever gradients are built."""

from __future__ import annotations

import pytest
import torch

from semrl.config.evaluation import GenerationConfig
from semrl.config.model import ModelConfig
from semrl.generation import generate_completions
from semrl.models import can_pack_linears, linear_weights_packed, load_policy, pack_linear_weights

PROMPTS = ["Translate: ཐུགས་རྗེ་ཆེ།", "Question: what is", "བཀྲ་ཤིས་བདེ་ལེགས", "Answer:", "one two three four five"]

pytestmark = pytest.mark.skipif(
    not can_pack_linears(torch.nn.Linear(2, 2)), reason="this torch has no oneDNN (mkldnn) CPU kernels"
)


def test_a_packed_model_gives_the_plain_logits_and_greedy_outputs() -> None:
    model, tokenizer = load_policy(ModelConfig(name="tiny", dtype="float32"))
    model.eval()
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    generation = GenerationConfig(max_new_tokens=16, batch_size=3)
    with torch.no_grad():
        plain_logits = model(**batch).logits
    plain_outputs = generate_completions(model, tokenizer, PROMPTS, generation)

    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert pack_linear_weights(model) == linears > 0
    with torch.no_grad():
        packed_logits = model(**batch).logits
    torch.testing.assert_close(packed_logits, plain_logits, rtol=1e-5, atol=1e-5)
    assert generate_completions(model, tokenizer, PROMPTS, generation) == plain_outputs


def test_a_packed_linear_uses_its_copy_without_gradients_and_the_weight_with_them() -> None:
    layer = torch.nn.Linear(64, 300)
    x = torch.randn(5, 64)
    before = torch.nn.functional.linear(x, layer.weight, layer.bias).detach()
    assert pack_linear_weights(layer) == 1
    with torch.no_grad():
        layer.weight.mul_(2.0)  # the packed copy does not follow: a packed model must not be changed
        torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-5)
    out = layer(x.requires_grad_())
    torch.testing.assert_close(out.detach(), torch.nn.functional.linear(x, layer.weight, layer.bias).detach())
    out.sum().backward()
    assert layer.weight.grad is not None and x.grad is not None


def test_weights_packed_for_one_block_sample_the_plain_bfloat16_logits_and_follow_the_weights() -> None:
    # GRPO packs its policy for each step's sampling: within the block bfloat16 logits are the plain
    # ones to the bit; after it the forwards are torch's again, so the next step's weights are used.
    model, tokenizer = load_policy(ModelConfig(name="tiny", dtype="bfloat16"))
    model.eval()
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        plain = model(**batch).logits
        with linear_weights_packed(model) as packed:
            assert packed == sum(type(m) is torch.nn.Linear for m in model.modules()) > 0
            assert torch.equal(model(**batch).logits, plain)
        assert not any("forward" in m.__dict__ for m in model.modules() if type(m) is torch.nn.Linear)
        for parameter in model.parameters():
            parameter.mul_(1.5)  # a training step between two samplings
        changed = model(**batch).logits
        with linear_weights_packed(model):
            assert torch.equal(model(**batch).logits, changed)
    assert not torch.equal(changed, plain)
