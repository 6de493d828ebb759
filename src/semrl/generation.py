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
    previous_side, previous_truncation = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"  # keep a prompt's end: the cue the completion follows
    max_prompt = prompt_token_limit(model, generation.max_new_tokens)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rendered), generation.batch_size):
            batch = rendered[start : start + generation.batch_size]
            enc = tokenizer(
                batch,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_prompt,
                add_special_tokens=not any(chat),
            )
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
        tokenizer.padding_side, tokenizer.truncation_side = previous_side, previous_truncation
        model.train(was_training)
    return texts


def prompt_token_limit(model: Any, max_new_tokens: int) -> int:
    """The most prompt tokens a batch row may hold: the model's context less the new tokens, so a
    pathological input can never make a batch larger than the model could attend to anyway."""
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 4096
    return max(1, int(context) - max_new_tokens)


def clean_completion(text: str, one_line: bool = True) -> str:
    """Strip whitespace; for completion-style prompts keep only the first non-empty line."""
    text = text.strip()
    if one_line:
        text = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return text
