"""Teacher-forced log-likelihood of a continuation given its context: the per-item continuous
scores behind the alignment tax, and the sequence log-probabilities of the task-distribution KL.

A generative benchmark's accuracy (CMRC 2018 EM/F1, GSM8K exact match) falls to zero when a model
merely changes its output format (ends its answer at once, a "pseudo-forgetting" artefact: Zheng
et al. 2024, arXiv 2411.11932); the log-likelihood of the gold answer does not depend on what the
model chose to generate, so it separates a format change from a loss of knowledge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from semrl.models import device_of, eval_mode, left_padded


@dataclass(frozen=True)
class ContinuationScore:
    """log p(continuation | context) summed over its tokens, its token count and character count."""

    logprob: float
    tokens: int
    chars: int

    @property
    def per_char(self) -> float:
        """Mean log-probability per character (comparable across tokenizers and answer lengths); nan if empty."""
        return self.logprob / self.chars if self.chars else float("nan")


def _encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    # As lm-eval's HFLM does: trailing spaces of the context move to the continuation, and the
    # continuation's tokens are those of context+continuation after the context's own tokens, so
    # a space that the tokenizer folds into the next word is scored with the continuation.
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=True)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=True)["input_ids"]
    return ctx, whole[len(ctx) :]


def continuation_scores(
    model,
    tokenizer,
    contexts: Sequence[str],
    continuations: Sequence[str],
    batch_size: int = 4,
    max_length: int = 1024,
) -> list[ContinuationScore]:
    """Teacher-forced log p(continuation | context) for each pair, in batches.

    Sequences are left-padded so that every continuation ends the row; only the last positions'
    logits are computed (`logits_to_keep`), which keeps memory at batch x continuation x vocabulary
    even for Gemma 3's 262k-token vocabulary. A context longer than `max_length` loses its start.
    """
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    pairs = [_encode_pair(tokenizer, c, x) for c, x in zip(contexts, continuations)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores: list[ContinuationScore] = []
    device = device_of(model)
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            conts = [cont[: max_length - 1] for _, cont in chunk]
            rows = [(ctx + cont)[-max_length:] for (ctx, _), cont in zip(chunk, conts)]
            keep = max(len(c) for c in conts) + 1
            inputs = left_padded(rows, pad, device)
            try:
                logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
            except TypeError:  # a model without logits_to_keep: all positions
                logits = model(**inputs, use_cache=False).logits[:, -keep:]
            logp = torch.log_softmax(logits.float(), dim=-1)
            for i, cont in enumerate(conts):
                n = len(cont)
                if n == 0:
                    scores.append(ContinuationScore(0.0, 0, 0))
                    continue
                # Token t of the continuation (at row position width-n+t) is predicted at width-n+t-1,
                # which is index keep-1-n+t of the kept window.
                window = logp[i, keep - 1 - n : keep - 1]
                target = torch.tensor(cont, device=window.device)
                total = float(window.gather(-1, target[:, None]).sum())
                chars = len(continuations[start + i].strip())
                scores.append(ContinuationScore(total, n, chars))
    return scores


def per_char_logprobs(scores: Sequence[ContinuationScore]) -> list[float]:
    """The per-character log-probabilities of `scores` (nan where the continuation was empty)."""
    return [float(s.per_char) for s in scores]


def finite_mean(values: Sequence[float]) -> float:
    """Mean of the finite values (nan when there are none)."""
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")
