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
