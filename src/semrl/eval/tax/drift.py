"""Drift from the base model on general text: per-text NLL increase and per-token KL."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from semrl.core.errors import DataError, ModelError
from semrl.models import device_of, eval_mode


@dataclass
class DriftResult:
    """Drift of a model from the base model on general texts.

    nll_base / nll_model: mean token NLL per text; nll_increase: their difference per text;
    token_kl: KL(model || base) of the next-token distributions at every scored position of every
    text (the divergence GRPO's KL penalty estimates; in nats). summary: nll_mean and nll_p90 of
    the per-text increase, kl_mean and kl_p90 of the per-token KL.
    """

    nll_base: list[float]
    nll_model: list[float]
    nll_increase: list[float]
    token_kl: list[float]
    summary: dict[str, float]


def _encoded_batches(
    tokenizer: Any, texts: Sequence[str], batch_size: int, max_length: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded (input_ids, attention_mask) batches; the same tokenisation for every model.
    Padding is done here, not by the tokenizer, so tokenizers without a pad token work too."""
    if batch_size < 1 or max_length < 2:
        raise ValueError("batch_size must be >= 1 and max_length >= 2")
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        ids = tokenizer(chunk, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
        for offset, seq in enumerate(ids):
            if len(seq) < 2:
                raise DataError(
                    f"general text #{start + offset} has {len(seq)} token(s); NLL needs at least 2 "
                    f"(text: {chunk[offset][:40]!r})"
                )
        width = max(len(s) for s in ids)
        input_ids = torch.zeros((len(ids), width), dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        yield input_ids, mask


def _logits(model: Any, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    device = device_of(model)
    return model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False).logits


def _row_logprobs(logits: torch.Tensor, row: int, length: int) -> torch.Tensor:
    """Log-probabilities of the next token at positions 0..length-2 of one row (float32)."""
    return torch.log_softmax(logits[row, : length - 1].float(), dim=-1).cpu()


def text_nll(
    model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 4, max_length: int = 256
) -> list[float]:
    """Mean next-token NLL (nats) of each text under the model (no_grad, eval mode restored)."""
    out: list[float] = []
    with eval_mode(model):
        for input_ids, mask in _encoded_batches(tokenizer, texts, batch_size, max_length):
            logits = _logits(model, input_ids, mask)
            for row in range(input_ids.shape[0]):
                n = int(mask[row].sum())
                logprobs = _row_logprobs(logits, row, n)
                targets = input_ids[row, 1:n]
                out.append(float(-logprobs.gather(-1, targets[:, None]).mean()))
            del logits
    return out


def base_nll_for(
    model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 4, max_length: int = 256
) -> list[float]:
    """The base model's per-text NLL, the reference `TaxMeterCallback` compares against."""
    return text_nll(model, tokenizer, texts, batch_size=batch_size, max_length=max_length)


def _p90(values: Sequence[float]) -> float:
    return float(np.percentile(values, 90)) if len(values) else 0.0


class BaseLogits:
    """The base model's logits on drift batches, kept for every model compared with it.

    Kept in the dtype the model returns them in, so reusing them is exact; once `max_bytes` are
    kept, further batches are recomputed on each call. (Evaluating the demo's three trained methods
    repeated 16 base forwards of 256 positions x 262k logits, a third of its drift time.)
    """

    def __init__(self, model: Any, max_bytes: int = 2 * 2**30) -> None:
        self.model = model
        self.max_bytes = max_bytes
        self._kept: dict[tuple[Any, ...], torch.Tensor] = {}
        self._bytes = 0

    def __call__(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        key = (tuple(input_ids.shape), input_ids.cpu().numpy().tobytes(), mask.cpu().numpy().tobytes())
        if key in self._kept:
            return self._kept[key]
        logits = _logits(self.model, input_ids, mask)
        size = logits.numel() * logits.element_size()
        if self._bytes + size <= self.max_bytes:
            self._kept[key] = logits
            self._bytes += size
        return logits


def _token_kl(lp_base: torch.Tensor, lp_model: torch.Tensor, rows: int = 16) -> torch.Tensor:
    """KL(model || base) per position, `rows` positions at a time: the same values as one call over
    all positions, 4x faster on a 2-core CPU for 262k-entry rows (the temporaries stay small)."""
    from torch.nn.functional import kl_div

    # kl_div(input=log q, target=log p, log_target=True) sums p * (log p - log q): KL(p || q).
    parts = [
        kl_div(lp_base[i : i + rows], lp_model[i : i + rows], reduction="none", log_target=True).sum(-1)
        for i in range(0, lp_base.shape[0], rows)
    ]
    return torch.cat(parts).clamp_min(0.0)  # clamp float round-off below 0


def measure_drift(
    base_model: Any,
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 4,
    max_length: int = 256,
) -> DriftResult:
    """NLL increase per text and KL(model || base) per token on general texts (one model; see
    `measure_drift_many` to score several against one pass of the base model). `base_model` may
    be a `BaseLogits`, to reuse the base's logits across calls."""
    return measure_drift_many(base_model, {"model": model}, tokenizer, texts, batch_size, max_length)["model"]


def measure_drift_many(
    base_model: Any,
    models: dict[str, Any],
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 4,
    max_length: int = 256,
) -> dict[str, DriftResult]:
    """Drift of each of `models` from the base model on general texts, with one base forward per
    batch shared by all of them (base + M forwards instead of 2M); `base_model` may be a
    `BaseLogits`, which keeps the base's logits for later calls too.

    Every model reads the same token ids (one tokenizer), one batch at a time under no_grad. Peak
    memory is about two batches of logits (2 x batch_size x max_length x vocab floats) plus the
    models themselves: lower batch_size for large vocabularies (Gemma 3: 262k)."""
    if not texts:
        raise ValueError("measure_drift needs at least one text")
    if not models:
        return {}
    base = base_model if isinstance(base_model, BaseLogits) else BaseLogits(base_model, max_bytes=0)
    nll_base: list[float] = []
    nll_model: dict[str, list[float]] = {name: [] for name in models}
    token_kl: dict[str, list[float]] = {name: [] for name in models}
    with eval_mode(base.model, *models.values()):
        for input_ids, mask in _encoded_batches(tokenizer, texts, batch_size, max_length):
            logits_base = base(input_ids, mask)
            rows = [int(mask[row].sum()) for row in range(input_ids.shape[0])]
            # The base model's log-probabilities, row by row (a whole batch's float32 log-softmax
            # would double peak memory), kept for every model of this batch.
            lp_base = [_row_logprobs(logits_base, row, n) for row, n in enumerate(rows)]
            del logits_base
            for row, n in enumerate(rows):
                nll_base.append(float(-lp_base[row].gather(-1, input_ids[row, 1:n, None]).mean()))
            for name, model in models.items():
                logits_model = _logits(model, input_ids, mask)
                if lp_base[0].shape[-1] != logits_model.shape[-1]:
                    raise ModelError(
                        f"the base model and the model have different vocabularies ({lp_base[0].shape[-1]} vs "
                        f"{logits_model.shape[-1]} logits); drift needs one shared tokenizer"
                    )
                for row, n in enumerate(rows):
                    lp_model = _row_logprobs(logits_model, row, n)
                    nll_model[name].append(float(-lp_model.gather(-1, input_ids[row, 1:n, None]).mean()))
                    token_kl[name].extend(_token_kl(lp_base[row], lp_model).tolist())
                del logits_model
    out: dict[str, DriftResult] = {}
    for name in models:
        increase = [m - b for m, b in zip(nll_model[name], nll_base)]
        summary = {
            "nll_mean": float(np.mean(increase)),
            "nll_p90": _p90(increase),
            "kl_mean": float(np.mean(token_kl[name])) if token_kl[name] else 0.0,
            "kl_p90": _p90(token_kl[name]),
        }
        out[name] = DriftResult(list(nll_base), nll_model[name], increase, token_kl[name], summary)
    return out
