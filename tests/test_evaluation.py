"""Generation details of the task evaluation."""

from __future__ import annotations

import torch
from test_benchmarks import _tiny_model, _tiny_tokenizer

from semrl.config.evaluation import GenerationConfig
from semrl.generation import clean_completion, generate_completions


def _scripted(tokenizer, script: str):
    """The tiny model, made to write `script` token by token (greedy), whatever the prompt."""
    model = _tiny_model(len(tokenizer))
    planned = tokenizer(script, add_special_tokens=False).input_ids
    calls = []
    real_forward = model.forward

    def forward(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        step = len(calls)
        calls.append(step)
        token = planned[step] if step < len(planned) else tokenizer.eos_token_id
        logits = torch.full_like(out.logits, -1e4)
        logits[:, -1, token] = 1e4
        out.logits = logits
        return out

    model.forward = forward
    return model, calls


def test_generation_stops_at_the_first_newline_and_keeps_the_first_line() -> None:
    tokenizer = _tiny_tokenizer()
    script = "Answer one\nQuestion: more text that would follow"
    model, calls = _scripted(tokenizer, script)
    out = generate_completions(model, tokenizer, ["Question:"], GenerationConfig(max_new_tokens=40, batch_size=1))
    assert out == ["Answer one"]
    # Generation stopped once the newline was written, not at max_new_tokens or the end of the script.
    up_to_newline = len(tokenizer("Answer one\n", add_special_tokens=False).input_ids)
    assert len(calls) <= up_to_newline + 1 < len(tokenizer(script, add_special_tokens=False).input_ids)
    # What is kept from a stopped row is exactly what a full-length generation would keep.
    assert clean_completion("Answer one\nQuestion") == clean_completion(script) == "Answer one"
    assert clean_completion("  \n\nAnswer two\nmore") == "Answer two"
    assert clean_completion("Answer\nmore", one_line=False) == "Answer\nmore"


def test_batched_generation_drops_finished_rows_and_keeps_every_output() -> None:
    """Length-sorted batches that release finished rows (the fast path) give each prompt the output
    it gets alone, with nothing padded or pruned (the slow path)."""
    tokenizer = _tiny_tokenizer()
    model = _tiny_model(len(tokenizer))
    newline = tokenizer("\n", add_special_tokens=False).input_ids[-1]
    real_forward = model.forward
    lengths: list[int] = []

    def forward(*args, **kwargs):
        # Favour the newline and the end of sequence, so rows end at different steps (a random model
        # otherwise writes to the token limit); what a row writes still depends on its own text only.
        out = real_forward(*args, **kwargs)
        out.logits[..., newline] += 0.1
        out.logits[..., tokenizer.eos_token_id] += 0.08
        lengths.append(out.logits.shape[0])
        return out

    model.forward = forward
    prompts = [
        "Question: " + " ".join(["more"] * k) + f" {word}"
        for k, word in [(1, "A."), (9, "B."), (3, "C."), (0, "D."), (6, "Answer:"), (2, "one"), (12, "two")]
    ]
    generation = GenerationConfig(max_new_tokens=24, batch_size=4)
    alone = [
        generate_completions(
            model, tokenizer, [p], generation.model_copy(update={"batch_size": 1}), compact_batches=False
        )[0]
        for p in prompts
    ]
    lengths.clear()
    fast = generate_completions(model, tokenizer, prompts, generation)
    assert fast == alone
    assert len({len(o) for o in alone}) > 2  # rows really ended at different points
    assert min(lengths) < 4  # and finished rows left their batch


def _tiny_gemma3(vocab_size: int):
    """A random 2-layer Gemma 3: one sliding-window layer, one full-attention layer."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=128,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=256,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    return Gemma3ForCausalLM(config).eval()


def test_generation_outputs_do_not_depend_on_prefill_chunks(monkeypatch) -> None:
    """Prefilling a batch's prompts in chunks of similar length (less padding) gives every row the
    output one whole-batch prefill gives it, on Llama and on Gemma 3's sliding-window layers."""
    import semrl.generation as generation_module

    tokenizer = _tiny_tokenizer()
    # Mostly short prompts and a few long ones, as a test split's are: chunks save 43% of the prefill.
    prompts = [f"Question: {' '.join(['more'] * ((k % 20) ** 2 // 12))} {k} Answer:" for k in range(40)]
    generation = GenerationConfig(max_new_tokens=12, batch_size=40)
    chunked: list[int] = []
    real_prefill, chunk_rows = generation_module.prefill_in_length_chunks, generation_module.PREFILL_CHUNK_ROWS

    def counting_prefill(model, input_ids, attention_mask):
        cache = real_prefill(model, input_ids, attention_mask)
        chunked.append(len(cache))
        return cache

    monkeypatch.setattr(generation_module, "prefill_in_length_chunks", counting_prefill)
    for model in (_tiny_model(len(tokenizer)), _tiny_gemma3(len(tokenizer))):
        chunked.clear()
        fast = generate_completions(model, tokenizer, prompts, generation)
        assert chunked == [1]  # the batch was prefilled in chunks
        monkeypatch.setattr(generation_module, "PREFILL_CHUNK_ROWS", len(prompts))  # one chunk: no chunking
        whole = generate_completions(model, tokenizer, prompts, generation)
        monkeypatch.setattr(generation_module, "PREFILL_CHUNK_ROWS", chunk_rows)
        assert chunked == [1, 0]
        assert fast == whole
        assert len(set(fast)) > 5  # the outputs differ from prompt to prompt: the test can see a mix-up


def test_harness_generation_in_large_batches_gives_lm_evals_answers(monkeypatch) -> None:
    """The general benchmarks' generated answers from semrl's lm-eval model (every prompt in one
    batch, each prefilled at its own length) are HFLM's, one prompt at a time: on Gemma 3's
    sliding-window layers, with prompts shorter and longer than the window."""
    import pytest

    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    import semrl.eval.tax.harness as harness

    tokenizer = _tiny_tokenizer()
    model = _tiny_gemma3(len(tokenizer))  # sliding window: 128 tokens
    prompts = [f"Question: {' '.join(['more'] * n)} {n} Answer:" for n in (3, 150, 40, 190, 8, 90, 120, 0)]
    assert max(len(tokenizer(p).input_ids) for p in prompts) > 128 > min(len(tokenizer(p).input_ids) for p in prompts)
    settings = {"until": ["\n\n"], "max_gen_toks": 10, "do_sample": False}
    requests = [Instance("generate_until", {}, (p, settings), i) for i, p in enumerate(prompts)]
    prefilled: list[bool] = []
    real_prefill = harness.prefill_in_length_chunks

    def counting_prefill(*args, **kwargs):
        cache = real_prefill(*args, **kwargs)
        prefilled.append(bool(cache))
        return cache

    monkeypatch.setattr(harness, "prefill_in_length_chunks", counting_prefill)
    ours = harness.harness_model(model, tokenizer, batch_size=1, generation_batch_size=8).generate_until(requests)
    alone = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1).generate_until(requests)
    assert prefilled == [True]  # one batch, its prompts prefilled one by one
    assert ours == alone and len(set(alone)) > 2

    # A random model's answers repeat themselves; the caches are compared too: each layer keeps what
    # one left-padded batch's prefill keeps (a sliding-window layer: the last 127 positions).
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, padding=True, return_tensors="pt")
    ids, mask = enc.input_ids, enc.attention_mask
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    with torch.no_grad():
        out = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], use_cache=True)
    whole = out.past_key_values
    (by_row,) = real_prefill(model, ids, mask, rows_per_chunk=1).values()
    for batch_layer, row_layer in zip(whole.layers, by_row.layers, strict=True):
        for a, b in ((batch_layer.keys, row_layer.keys), (batch_layer.values, row_layer.values)):
            assert a.shape == b.shape
            kept = mask[:, :-1][:, -a.shape[-2] :].bool()  # the real tokens among the positions kept
            assert torch.allclose(a.transpose(1, 2)[kept], b.transpose(1, 2)[kept], atol=1e-5)
    assert [layer.keys.shape[-2] for layer in whole.layers] == [127, ids.shape[1] - 1]
