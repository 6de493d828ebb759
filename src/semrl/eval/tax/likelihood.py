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
    """Teacher-forced log p(continuation | context) for each pair, in batches (see
    `scored_continuations`). A context longer than `max_length` loses its start."""
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    pairs = [_encode_pair(tokenizer, c, x) for c, x in zip(contexts, continuations)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scored = scored_continuations(model, pairs, pad, batch_size=batch_size, max_length=max_length)
    return [
        ContinuationScore(logprob, len(cont[: max_length - 1]), len(text.strip()) if cont else 0)
        for (logprob, _), (_, cont), text in zip(scored, pairs, continuations)
    ]


def scored_continuations(
    model,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_id: int,
    batch_size: int = 4,
    max_length: int = 1024,
) -> list[tuple[float, bool]]:
    """For each (context ids, continuation ids) pair: log p(continuation | context) summed over the
    continuation's tokens, and whether greedy decoding would produce it (lm-eval's
    `loglikelihood` answer).

    Rows are left-padded so that every continuation ends its row, and only the last positions'
    logits are computed (`logits_to_keep`): memory and LM-head work are batch x continuation x
    vocabulary, not batch x sequence x vocabulary, which matters for Gemma 3's 262k-token
    vocabulary. Pairs that differ only in their continuation's last token (multiple choice with
    one-token answers) share one forward, as in lm-eval's HFLM. A continuation keeps at most
    `max_length - 1` tokens and its row the last `max_length`.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    conts = [list(cont[: max_length - 1]) for _, cont in pairs]
    rows = [(list(ctx) + cont)[-max_length:] for (ctx, _), cont in zip(pairs, conts)]
    # One forward per distinct row less its last token (no scored position reads the last token),
    # keeping as many positions as the longest continuation of the pairs that share it.
    sharing: dict[tuple[int, ...], list[int]] = {}
    for i, (row, cont) in enumerate(zip(rows, conts)):
        if cont:
            sharing.setdefault(tuple(row[:-1]), []).append(i)
    scored: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)  # an empty continuation
    device = device_of(model)
    keys = sorted(sharing, key=len, reverse=True)  # rows of similar length batched together: less padding
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(keys), batch_size):
            chunk = keys[start : start + batch_size]
            keep = max(len(conts[i]) for key in chunk for i in sharing[key])
            inputs = left_padded([list(key) for key in chunk], pad_id, device)
            try:
                logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
            except TypeError:  # a model without logits_to_keep: all positions
                logits = model(**inputs, use_cache=False).logits[:, -keep:]
            logp = torch.log_softmax(logits.float(), dim=-1)
            for row_logp, key in zip(logp, chunk):
                for i in sharing[key]:
                    # Token t of the continuation is predicted at the t-th of the row's last len(cont) positions.
                    window = row_logp[keep - len(conts[i]) :]
                    target = torch.tensor(conts[i], device=window.device)
                    total = float(window.gather(-1, target[:, None]).sum())
                    scored[i] = (total, bool((window.argmax(-1) == target).all()))
    return scored


def per_char_logprobs(scores: Sequence[ContinuationScore]) -> list[float]:
    """The per-character log-probabilities of `scores` (nan where the continuation was empty)."""
    return [float(s.per_char) for s in scores]


def finite_mean(values: Sequence[float]) -> float:
    """Mean of the finite values (nan when there are none)."""
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")
