"""The semantic floor tau (Su et al. 2026): from the cold-start model's dev similarity, or a quantile of shuffled reference pairs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from semrl.core.errors import ConfigError, DataError, ModelError
from semrl.encoders import Encoder
from semrl.rewards.semantic import check_tau

if TYPE_CHECKING:
    from semrl.config.rewards import RewardsConfig


@dataclass
class TauCalibration:
    """The semantic floor tau, where it came from, and the numbers behind it (for the report)."""

    value: float
    origin: Literal["fixed", "shuffled", "cold_start_dev"]
    details: dict[str, Any] = field(default_factory=dict)


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random cyclic permutation: perm[i] != i for every i (a derangement)."""
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def distinct_references(references: Sequence[str]) -> list[str]:
    """The distinct non-empty references, stripped, in first-seen order: what tau pairs are drawn from."""
    return list(dict.fromkeys(t.strip() for t in map(str, references) if t.strip()))


def shuffled_pair_similarities(
    encoder: Encoder,
    references: Sequence[str],
    seed: int = 0,
    max_pairs: int = 4096,
    max_references: int | None = 1024,
) -> np.ndarray:
    """Cosines of unrelated reference pairs. Each round pairs every distinct reference with another
    through a random derangement (no reference meets itself); rounds with fresh derangements add
    pairs until `max_pairs` distinct pairs are collected or a bounded number of rounds has run.
    Pairs of identical text are excluded: duplicates are not 'unrelated'.

    The pairs are drawn among a seeded random sample of at most `max_references` distinct
    references (None: all), and only those are encoded: 1,024 references give 4,096 pairs with
    each reference in about 8 of them, while encoding a 12,000-row RL split took 213 s of a GRPO
    stage's set-up on 2 CPU cores."""
    distinct = distinct_references(references)
    if len(distinct) < 2:
        raise DataError(
            f"tau calibration on shuffled pairs needs at least 2 distinct non-empty references, got "
            f"{len(distinct)}; set rewards.tau to a number instead"
        )
    rng = np.random.default_rng(seed)
    if max_references is not None:
        if max_references < 2:
            raise ValueError(f"max_references must be >= 2 or None, got {max_references}")
        if len(distinct) > max_references:
            keep = np.sort(rng.choice(len(distinct), size=max_references, replace=False))
            distinct = [distinct[i] for i in keep.tolist()]
    n = len(distinct)
    target = min(max_pairs, n * (n - 1) // 2)
    pairs: set[tuple[int, int]] = set()
    # A round adds up to n new pairs; spare rounds absorb pairs drawn twice.
    for _ in range(4 * math.ceil(target / n)):
        perm = derangement(n, rng)
        for i in rng.permutation(n).tolist():  # random order: a partial round is an unbiased sample
            j = int(perm[i])
            pairs.add((min(i, j), max(i, j)))
            if len(pairs) >= target:
                break
        if len(pairs) >= target:
            break
    idx = np.array(sorted(pairs))
    vectors = encoder.encode(distinct)
    return np.einsum("ij,ij->i", vectors[idx[:, 0]], vectors[idx[:, 1]]).astype(np.float64)


def _shuffled_tau(
    encoder: Encoder,
    references: Sequence[str],
    quantile: float,
    seed: int,
    max_pairs: int,
    max_references: int | None,
) -> tuple[float, np.ndarray]:
    if not 0.0 < quantile < 1.0:
        raise ConfigError(f"rewards.tau_quantile must lie in (0, 1), got {quantile}")
    sims = shuffled_pair_similarities(
        encoder, references, seed=seed, max_pairs=max_pairs, max_references=max_references
    )
    sims = sims[np.isfinite(sims)]
    if sims.size == 0:
        raise ModelError(f"encoder {encoder.name!r} gave no finite similarity for any reference pair")
    value = float(np.quantile(sims, quantile))
    if value >= 0.999:
        raise ModelError(
            f"encoder {encoder.name!r} embeds unrelated references almost identically (the {quantile} quantile "
            f"of their cosine is {value:.4f}), so no tau can tell good outputs from bad. It probably cannot read "
            f"the target language (check with semrl.encoders.can_represent); configure another rewards.encoder"
        )
    return value, sims


def calibrate_tau_shuffled(
    encoder: Encoder,
    references: Sequence[str],
    quantile: float = 0.95,
    seed: int = 0,
    max_pairs: int = 4096,
    max_references: int | None = 1024,
) -> float:
    """tau as the `quantile` of cosine over shuffled, unrelated reference pairs
    (`shuffled_pair_similarities`): a completion must be closer to its reference than almost any
    unrelated sentence is before it earns R_sim. The caller logs the value and its origin."""
    return _shuffled_tau(encoder, references, quantile, seed, max_pairs, max_references)[0]


def resolve_tau(
    cfg: RewardsConfig,
    encoder: Encoder | None,
    references: Sequence[str],
    dev_similarity: float | None = None,
    seed: int = 0,
    max_pairs: int = 4096,
    max_references: int | None = 1024,
) -> TauCalibration:
    """Decide tau from the rewards config.

    - `tau: <float>` -> that value ('fixed').
    - `tau: auto`, `tau_source: shuffled` -> `calibrate_tau_shuffled` on `references`.
    - `tau: auto`, `tau_source: cold_start_dev` -> `dev_similarity` (the cold-start model's mean dev
      cosine); when it is None, falls back to shuffled pairs and says so in `details['note']`.
    """
    if cfg.tau != "auto":
        return TauCalibration(check_tau(float(cfg.tau)), "fixed", {})
    if cfg.tau_source == "cold_start_dev" and dev_similarity is not None:
        value = float(dev_similarity)
        if not (math.isfinite(value) and -1.0 <= value < 1.0):
            raise ModelError(
                f"the cold-start model's mean dev similarity is {value}, which cannot serve as tau (needs [-1, 1)); "
                f"set rewards.tau to a number or rewards.tau_source: shuffled"
            )
        return TauCalibration(value, "cold_start_dev", {"dev_mean_similarity": value})
    if encoder is None:
        raise ModelError("rewards.tau 'auto' needs the reward encoder to calibrate tau; configure rewards.encoder")
    details: dict[str, Any] = {}
    if cfg.tau_source == "cold_start_dev":
        details["note"] = (
            "tau_source 'cold_start_dev' was requested but no cold-start dev similarity was available; "
            "fell back to shuffled reference pairs"
        )
    value, sims = _shuffled_tau(encoder, references, cfg.tau_quantile, seed, max_pairs, max_references)
    details.update(
        quantile=cfg.tau_quantile,
        n_pairs=int(sims.size),
        n_references=len(references),
        n_references_sampled=min(len(distinct_references(references)), max_references or len(references)),
        mean_unrelated_similarity=float(sims.mean()),
        seed=seed,
        encoder=encoder.name,
    )
    return TauCalibration(value, "shuffled", details)
