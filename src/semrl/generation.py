"""Batched generation for evaluation and for GRPO's tau calibration: one completion per prompt, decoded without the prompt."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from semrl.config.evaluation import GenerationConfig


def generate_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | list[dict[str, str]]],
    generation: GenerationConfig,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Generate one completion per prompt in batches (left padding), decoded without the prompt.

    Prompts are completion-style strings or conversational message lists (rendered with the
    tokenizer's chat template). Completion-style outputs are cut at the first newline: the
    prompt format asks for one line, so a completion-style batch stops at "\\n" (transformers'
    `stop_strings`) and `clean_completion` keeps its first non-empty line. A row whose first
    token is a newline therefore stops there and comes out empty.
    """
    texts: list[str] = []
    chat = [isinstance(p, list) for p in prompts]
    rendered = [
        tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) if c else p
        for p, c in zip(prompts, chat)
    ]
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rendered), generation.batch_size):
            batch = rendered[start : start + generation.batch_size]
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=not any(chat))
            enc = {k: v.to(model.device) for k, v in enc.items()}
            one_line = not any(chat[start : start + len(batch)])
            stop = {"stop_strings": ["\n"], "tokenizer": tokenizer} if one_line else {}
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    **stop,
                    max_new_tokens=generation.max_new_tokens,
                    do_sample=generation.do_sample,
                    temperature=generation.temperature if generation.do_sample else None,
                    top_p=generation.top_p if generation.do_sample else None,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new_tokens = out[:, enc["input_ids"].shape[1] :]
            decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for text, is_chat in zip(decoded, chat[start : start + len(batch)]):
                texts.append(clean_completion(text, one_line=not is_chat))
            if progress:
                progress(len(batch))
    finally:
        tokenizer.padding_side = previous_side
        model.train(was_training)
    return texts


def clean_completion(text: str, one_line: bool = True) -> str:
    """Strip whitespace; for completion-style prompts keep only the first non-empty line."""
    text = text.strip()
    if one_line:
        text = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return text
