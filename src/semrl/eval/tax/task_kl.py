"""Forward KL from the base model on the new task's own distribution (RL's Razor, Shenfeld et al.
2025, arXiv 2509.04259: this KL predicts how much a fine-tuned model forgets).

Completions y are sampled once per run from the base model on dev prompts (at GRPO's sampling
settings) and cached with log p_base(y|x); every method is then scored on the same (x, y):
KL(base || method) ~ E_y~base [log p_base(y|x) - log p_method(y|x)], one teacher-forced forward
per item per model and no generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from semrl.config.evaluation import GenerationConfig
from semrl.data.prompts import COMPLETION_PREFIX
from semrl.eval.tax.likelihood import continuation_scores
from semrl.generation import generate_completions


def _rendered(tokenizer: Any, prompt: str | list[dict[str, str]]) -> tuple[str, str]:
    """The prompt as text, and what precedes a completion after it (completion-style: one space)."""
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True), ""
    return prompt, COMPLETION_PREFIX


def sample_completions(
    model: Any, tokenizer: Any, prompts: Sequence[Any], generation: GenerationConfig, seed: int
) -> list[str]:
    """One sampled completion per prompt, reproducible for a seed (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return generate_completions(model, tokenizer, prompts, generation)


def sequence_logprobs(
    model: Any, tokenizer: Any, prompts: Sequence[Any], completions: Sequence[str], batch_size: int = 4
) -> list[float]:
    """log p(completion | prompt) summed over the completion's tokens, per item."""
    rendered = [_rendered(tokenizer, p) for p in prompts]
    contexts = [r[0] for r in rendered]
    continuations = [prefix + c for (_, prefix), c in zip(rendered, completions)]
    return [s.logprob for s in continuation_scores(model, tokenizer, contexts, continuations, batch_size=batch_size)]


def forward_kl(base_logprobs: Sequence[float], method_logprobs: Sequence[float]) -> list[float]:
    """Per-item Monte Carlo terms of KL(base || method): log p_base(y|x) - log p_method(y|x)."""
    if len(base_logprobs) != len(method_logprobs):
        raise ValueError(f"{len(base_logprobs)} base and {len(method_logprobs)} method log-probabilities")
    return [float(b - m) for b, m in zip(base_logprobs, method_logprobs)]
