"""Each speed change gives the numbers of the slower path it replaces, within its dtype's tolerance
(issue 22); the timings themselves are in benchmarks/results/step_ab_*.json."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from semrl import models
from semrl.config.model import LoraConfig, ModelConfig
from semrl.generation import inverse_cdf_multinomial, inverse_cdf_sampling_in_generate
from semrl.train import cpu
from semrl.train.cpu import (
    compiled_decoder_layers,
    decoder_layers,
    lm_head_in_one_product,
    lora_in_weight_dtype,
    merged_lora_for_generation,
)

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
    with torch.random.fork_rng(devices=[]):  # PEFT draws the A matrices from the global RNG: whatever ran before
        torch.manual_seed(0)
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


def test_torch_compile_problem_is_none_where_compiling_works_and_names_the_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu.torch_compile_problem.cache_clear()
    assert cpu.torch_compile_problem() is None  # CI compiles (the compiled-layers tests need it too)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("C++ compile failed: Python.h: No such file\n(the compiler's whole log)")

    monkeypatch.setattr(torch, "compile", broken)
    cpu.torch_compile_problem.cache_clear()
    try:
        assert cpu.torch_compile_problem() == "RuntimeError: C++ compile failed: Python.h: No such file"
    finally:
        cpu.torch_compile_problem.cache_clear()


def test_compiled_decoder_layers_match_eager_layers_and_leave_generation_eager(cache: None) -> None:
    from torch._dynamo.utils import counters

    model, batch = _lora_policy("float32")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    layers = decoder_layers(model)
    assert len(layers) == model.config.num_hidden_layers
    keys = list(model.state_dict())
    eager_loss, eager_grads = _loss_and_grads(model, batch)
    with torch.no_grad():
        eager_logits = model(**inputs).logits

    with compiled_decoder_layers(model):
        graphs_before = counters["stats"]["unique_graphs"]
        compiled_loss, compiled_grads = _loss_and_grads(model, batch)
        graphs_after_training = counters["stats"]["unique_graphs"]
        shorter = {k: v[:, :-2] for k, v in batch.items()}
        _loss_and_grads(model, shorter)  # a batch of another length: dynamic shapes, no new graphs
        assert counters["stats"]["unique_graphs"] == graphs_after_training
        with torch.no_grad():  # generation's forwards run the eager layers: nothing more compiled
            nograd_logits = model(**inputs).logits
            model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert counters["stats"]["unique_graphs"] == graphs_after_training

    assert graphs_after_training > graphs_before  # the training forward did run compiled layers
    # float32: inductor's fused kernels round differently from eager kernels, nothing more.
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-5)
    assert torch.allclose(compiled_grads, eager_grads, rtol=1e-3, atol=1e-6)
    assert torch.equal(nograd_logits, eager_logits)
    # The layers are the same modules with the same state-dict keys (checkpoints load either way),
    # and after the block their own forwards are back.
    assert list(model.state_dict()) == keys
    assert all("forward" not in layer.__dict__ for layer in layers)


def _flash_attention_calls(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[int, float, torch.Tensor]:
    with torch.profiler.profile() as profiler:
        loss, grads = _loss_and_grads(model, batch)
    calls = sum(e.count for e in profiler.key_averages() if "flash_attention" in e.key)
    return calls, loss, grads


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_compiled_layers_compute_attention_as_products_up_to_the_bound_and_with_sdpa_beyond(
    cache: None, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The batch is left-padded: the rows that may attend to nothing feed the first real token's loss.
    model, batch = _lora_policy(dtype)
    with compiled_decoder_layers(model):
        products_calls, products_loss, products_grads = _flash_attention_calls(model, batch)
        monkeypatch.setattr(cpu, "PRODUCT_ATTENTION_MAX_SCORES", 0)  # every score matrix over the bound
        sdpa_calls, sdpa_loss, sdpa_grads = _flash_attention_calls(model, batch)
    assert products_calls == 0
    assert sdpa_calls > 0
    tolerance = {"float32": 1e-5, "bfloat16": 1e-2}[dtype]
    assert products_loss == pytest.approx(sdpa_loss, rel=tolerance)
    difference = float((products_grads - sdpa_grads).norm() / sdpa_grads.norm())
    assert difference < tolerance


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
    # Greedy paths agree until a step whose two best tokens are tied within the rounding; then
    # the merged path picked the other one of the tie.
    for row, (fast, slow) in enumerate(zip(fast_tokens, slow_tokens)):
        differ = (fast != slow).nonzero()
        if len(differ):
            step = int(differ[0])
            prompt_mask = inputs["attention_mask"][row]
            mask = torch.cat([prompt_mask, prompt_mask.new_ones(step - len(prompt_mask))])
            with torch.no_grad():
                logits = model(input_ids=slow[None, :step], attention_mask=mask[None]).logits[0, -1]
            margin = float(logits[slow[step]] - logits[fast[step]])
            assert dtype == "bfloat16" and 0 <= margin <= tolerance, (row, step, margin)
    # On exit the model is the one it was, bit for bit: no merge/unmerge rounding left in the base.
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    assert torch.equal(again_logits, slow_logits)


def test_merged_lora_for_generation_leaves_models_without_lora_alone(cache: None) -> None:
    model, _ = models.load_policy(ModelConfig(name="tiny", dtype="float32"))
    storage = {n: p.data_ptr() for n, p in model.named_parameters()}
    with merged_lora_for_generation(model):
        assert {n: p.data_ptr() for n, p in model.named_parameters()} == storage


def _chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of drawing `counts` from `probs` (entries expected fewer than 5 times pooled into one cell)."""
    from scipy.stats import chisquare

    expected = probs.double() / probs.double().sum() * counts.sum()
    small = expected < 5
    observed = torch.cat([counts[~small], counts[small].sum().view(1)]).double()
    expected = torch.cat([expected[~small], expected[small].sum().view(1)])
    keep = expected > 0
    return float(chisquare(observed[keep].numpy(), expected[keep].numpy()).pvalue)


def test_inverse_cdf_multinomial_draws_each_entry_with_its_probability() -> None:
    # 1,300 entries (not a multiple of the 512-entry blocks), every 7th impossible, one rare entry
    # (1e-4) and one block holding most of the mass: the shapes a sampler gets wrong by one.
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(1300, generator=generator)
    probs[::7] = 0.0
    probs[5] = 1e-4 * probs.sum()
    probs[600:700] *= 40
    probs /= probs.sum()
    draws = torch.cat([inverse_cdf_multinomial(probs.expand(5000, -1), generator) for _ in range(80)])
    assert draws.shape == (5000 * 80, 1) and draws.dtype == torch.int64
    counts = torch.bincount(draws.flatten(), minlength=1300)
    assert counts.numel() == 1300  # no index past the vocabulary
    assert counts[::7].sum() == 0  # impossible entries never drawn
    assert _chi_square_p(counts, probs) > 1e-3


def test_sampled_generation_draws_from_the_models_next_token_distribution(cache: None) -> None:
    import transformers.generation.utils as generation_utils

    model, tok = models.load_policy(ModelConfig(name="tiny", dtype="float32"))
    model.eval()
    prompt = tok([TEXTS[1]], return_tensors="pt")
    rows = 4000
    inputs = {k: v.expand(rows, -1) for k, v in prompt.items()}
    with torch.no_grad():
        probs = torch.softmax(model(**prompt).logits[0, -1].float() / 0.7, -1)
        torch.manual_seed(0)
        drawn_by = []
        real = inverse_cdf_multinomial
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("semrl.generation.inverse_cdf_multinomial", lambda *a: drawn_by.append(1) or real(*a))
            with inverse_cdf_sampling_in_generate():
                out = model.generate(
                    **inputs, max_new_tokens=1, do_sample=True, temperature=0.7, top_k=0, pad_token_id=0
                )
    assert generation_utils.torch is torch  # the block leaves transformers as it found it
    assert drawn_by  # the inverse-CDF sampler drew the tokens
    counts = torch.bincount(out[:, -1], minlength=probs.numel())
    assert _chi_square_p(counts, probs) > 1e-3


def test_sampling_in_generate_leaves_invalid_rows_to_torch_multinomial() -> None:
    import transformers.generation.utils as generation_utils

    with inverse_cdf_sampling_in_generate():
        sampler = generation_utils.torch
        for bad in ([[0.0, 0.0]], [[1.0, -1.0]], [[float("nan"), 1.0]]):
            with pytest.raises(RuntimeError):
                sampler.multinomial(torch.tensor(bad), num_samples=1)
        assert sampler.multinomial(torch.tensor([[0.0, 1.0]]), num_samples=2, replacement=True).tolist() == [[1, 1]]


def _generation_batch(rows: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A GRPO generation batch as TRL 1.16 builds it: prompts padded on the left, completions on
    the right, each to the batch's longest, and one advantage per row."""
    prompt_lengths = torch.randint(2, 12, (rows,), generator=generator)
    completion_lengths = torch.randint(1, 9, (rows,), generator=generator)
    width_p, width_c = int(prompt_lengths.max()), int(completion_lengths.max())
    prompt_ids = torch.zeros(rows, width_p, dtype=torch.long)
    prompt_mask = torch.zeros(rows, width_p, dtype=torch.long)
    completion_ids = torch.zeros(rows, width_c, dtype=torch.long)
    completion_mask = torch.zeros(rows, width_c, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_lengths.tolist(), completion_lengths.tolist())):
        prompt_ids[i, width_p - p :] = torch.randint(5, 200, (p,), generator=generator)
        prompt_mask[i, width_p - p :] = 1
        completion_ids[i, :c] = torch.randint(5, 200, (c,), generator=generator)
        completion_mask[i, :c] = 1
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.randn(rows, generator=generator),
        "num_items_in_batch": completion_mask.sum(),
    }


def _dapo_step_grads(model: torch.nn.Module, micro_batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """The gradient of one step accumulated over `micro_batches` as TRL's dapo loss computes it
    (on-policy: the ratio is 1, so each token's loss is -advantage x log-probability)."""
    model.zero_grad()
    for batch in micro_batches:
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
        mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
        keep = batch["completion_ids"].shape[1]
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep + 1).logits[:, :-1]
        logps = torch.log_softmax(logits.float(), -1).gather(-1, batch["completion_ids"][..., None])[..., 0]
        token_loss = -batch["advantages"][:, None] * logps * batch["completion_mask"]
        (token_loss.sum() / batch["num_items_in_batch"]).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]).float()


def test_length_sorted_micro_batches_give_trls_step_gradient_on_fewer_positions(cache: None) -> None:
    from semrl.train.micro_batches import length_sorted_micro_batches, padded_positions

    model, _ = _lora_policy("float32")
    generation = _generation_batch(8, torch.Generator().manual_seed(1))
    trl_batches = [{k: v if v.ndim == 0 else v[i : i + 4] for k, v in generation.items()} for i in (0, 4)]
    regrouped = length_sorted_micro_batches(trl_batches)

    assert regrouped is not None and len(regrouped) == 2
    assert padded_positions(regrouped) < padded_positions(trl_batches)

    # Every row is still there with its own tokens and advantage, only regrouped.
    def rows(batches: list[dict[str, torch.Tensor]]) -> list[tuple]:
        return sorted(
            (tuple(b["prompt_ids"][i][b["prompt_mask"][i] == 1].tolist()),
             tuple(b["completion_ids"][i][b["completion_mask"][i] == 1].tolist()), float(b["advantages"][i]))
            for b in batches
            for i in range(len(b["advantages"]))
        )  # fmt: skip

    assert rows(regrouped) == rows(trl_batches)
    # Padding removed shifts the real tokens' positions; rotary attention does not see it.
    assert torch.allclose(_dapo_step_grads(model, regrouped), _dapo_step_grads(model, trl_batches), atol=1e-6)


def test_micro_batches_with_a_key_it_does_not_know_are_left_to_trl() -> None:
    from semrl.train.micro_batches import length_sorted_micro_batches

    generation = _generation_batch(4, torch.Generator().manual_seed(2))
    batches = [{k: v if v.ndim == 0 else v[i : i + 2] for k, v in generation.items()} for i in (0, 2)]
    assert length_sorted_micro_batches(batches) is not None
    batches[0]["pixel_values"] = batches[1]["pixel_values"] = torch.zeros(2, 3)
    assert length_sorted_micro_batches(batches) is None


OUTPUTS = ("entropy", "is_top1", "mean_logits", "log_sum_sq_probs")


def _fused_head(
    hidden: torch.Tensor, head: torch.Tensor, targets: torch.Tensor, temperature: float, grads: torch.Tensor
):
    """TRL's fused LM head as its trainers call it (`trl.trainer.utils._ChunkedLogProbFunction`, 256-token
    vocabulary chunks); a loss over the log-probabilities and the entropy, backpropagated."""
    import trl.trainer.utils as trl_utils

    hidden = hidden.clone().requires_grad_()
    head = head.detach().clone().requires_grad_(head.requires_grad)
    out = trl_utils._ChunkedLogProbFunction.apply(hidden, head, None, targets, temperature, 256, None, 1.0, OUTPUTS)
    ((out[0] * grads[0]).sum() + (out[1] * grads[1]).sum()).backward()
    return out, hidden.grad, head.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_the_lm_head_in_one_product_gives_trls_numbers(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, temperature: float
) -> None:
    pytest.importorskip("trl")
    generator = torch.Generator().manual_seed(0)
    vocab, width, rows = 1000, 32, 21
    head = (torch.randn(vocab, width, generator=generator) * 0.3).to(dtype)
    hidden = torch.randn(rows, width, generator=generator).to(dtype)
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    targets[:6] = (hidden[:6].float() @ head.float().t()).argmax(-1)  # some targets are the model's top-1
    grads = torch.randn(2, rows, generator=generator)
    # Parts of 5 tokens: the tiles, their blocks of rows and the vocabulary chunks all split unevenly.
    monkeypatch.setattr(cpu, "LM_HEAD_TILE_BYTES", 5 * vocab * head.element_size())
    trl_out, trl_grad, _ = _fused_head(hidden, head, targets, temperature, grads)
    with lm_head_in_one_product():
        out, grad, _ = _fused_head(hidden, head, targets, temperature, grads)
    for ours, theirs in zip(out[:4], trl_out[:4]):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=2e-5)
    assert torch.equal(out[4], trl_out[4]) and 0 < int(out[4].sum()) < rows  # is_top1
    assert grad.dtype == trl_grad.dtype == dtype
    # The same float32 gradient, rounded once to the hidden states' dtype (a bfloat16 step apart at most).
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 8e-3, "atol": 1e-5}
    torch.testing.assert_close(grad, trl_grad, **tolerance)
    assert (grad.double() - trl_grad.double()).norm() < 1e-3 * trl_grad.double().norm()


def test_the_lm_head_in_one_product_reuses_only_the_logits_of_the_forward_being_differentiated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The backward starts from the logits its own forward left in the block's buffer; a forward in
    between (another micro-batch, or a no-grad scoring pass) overwrites them, and the backward then
    multiplies again: either way each gradient is the one of its own forward alone."""
    pytest.importorskip("trl")
    import trl.trainer.utils as trl_utils

    generator = torch.Generator().manual_seed(2)
    vocab, width = 700, 24
    head = (torch.randn(vocab, width, generator=generator) * 0.3).to(torch.bfloat16)
    batches = [
        (torch.randn(rows, width, generator=generator).to(torch.bfloat16), torch.randint(0, vocab, (rows,)))
        for rows in (13, 13)  # the same parts: a stale tile would be the right shape
    ]
    grads = [torch.randn(2, 13, generator=generator) for _ in batches]
    monkeypatch.setattr(cpu, "LM_HEAD_TILE_BYTES", 5 * vocab * head.element_size())  # several tiles a batch
    with lm_head_in_one_product():
        alone = [_fused_head(h, head, t, 1.0, g)[1] for (h, t), g in zip(batches, grads, strict=True)]
        # Both forwards first (the second overwrites the buffer), then both backwards.
        leaves = [h.clone().requires_grad_() for h, _ in batches]
        outs = [
            trl_utils._ChunkedLogProbFunction.apply(leaf, head, None, t, 1.0, 256, None, 1.0, OUTPUTS)
            for leaf, (_, t) in zip(leaves, batches, strict=True)
        ]
        for out, g in zip(outs, grads, strict=True):
            ((out[0] * g[0]).sum() + (out[1] * g[1]).sum()).backward()
    for leaf, own in zip(leaves, alone, strict=True):
        assert torch.equal(leaf.grad, own)
    with lm_head_in_one_product():  # a batch whose every label is masked has no rows to project
        out, grad, _ = _fused_head(batches[0][0][:0], head, batches[0][1][:0], 1.0, torch.zeros(2, 0))
    assert out[0].shape == (0,) and grad.shape == (0, width)


def test_the_lm_head_in_one_product_leaves_a_trained_head_to_trl() -> None:
    pytest.importorskip("trl")
    import trl.trainer.utils as trl_utils

    generator = torch.Generator().manual_seed(1)
    head = torch.randn(300, 16, generator=generator).requires_grad_()
    hidden, targets = torch.randn(5, 16, generator=generator), torch.randint(0, 300, (5,), generator=generator)
    grads = torch.randn(2, 5, generator=generator)
    kernel = trl_utils._ChunkedLogProbFunction
    _, trl_grad, trl_head_grad = _fused_head(hidden, head, targets, 1.0, grads)
    with lm_head_in_one_product():
        assert trl_utils._ChunkedLogProbFunction is not kernel
        _, grad, head_grad = _fused_head(hidden, head, targets, 1.0, grads)
    assert trl_utils._ChunkedLogProbFunction is kernel  # restored on exit
    assert torch.equal(grad, trl_grad) and torch.equal(head_grad, trl_head_grad)
