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
