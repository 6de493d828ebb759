"""Generation details of the task evaluation."""

from __future__ import annotations

import torch
from test_benchmarks import _tiny_tokenizer

from semrl.generation import FirstLineDone, clean_completion


def test_generation_stops_a_row_once_its_first_line_is_complete() -> None:
    tokenizer = _tiny_tokenizer()
    prompt = tokenizer("Question:").input_ids
    rows = ["Answer one\nQuestion", "Answer", "\n\nAnswer"]  # done; still writing; only blank lines so far
    new = [tokenizer(r).input_ids for r in rows]
    width = max(map(len, new))
    # New tokens follow the prompt block; a row that ended early is padded on the right, as in generate.
    input_ids = torch.tensor([prompt + n + [tokenizer.pad_token_id] * (width - len(n)) for n in new])
    stop = FirstLineDone(tokenizer, prompt_length=len(prompt))
    done = stop(input_ids, scores=torch.zeros(3, 1))
    assert done.tolist() == [True, False, False]
    # What is kept from a stopped row is exactly what a full-length generation would keep.
    assert (
        clean_completion("Answer one\nQuestion") == clean_completion("Answer one\nQuestion: more text") == "Answer one"
    )
