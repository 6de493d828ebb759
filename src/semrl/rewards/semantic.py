"""The semantic reward R_sim (Su et al. 2026): encoder cosine with the reference, rescaled above the floor tau."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from semrl.core.errors import ConfigError
from semrl.encoders import CachedEncoder, Encoder
from semrl.rewards.base import RewardFunction, column_values

if TYPE_CHECKING:
    pass


def rescale_similarity(similarity: np.ndarray | Sequence[float], tau: float) -> np.ndarray:
    """The paper's R_sim: 0 at or below tau, then linear to 1 at cosine 1. NaN stays NaN."""
    s = np.asarray(similarity, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        r = np.where(s <= tau, 0.0, (s - tau) / (1.0 - tau))
    # Float round-off can put the cosine of identical texts a hair above 1.
    return np.minimum(r, 1.0)


def check_tau(tau: float) -> float:
    tau = float(tau)
    if not (-1.0 <= tau < 1.0) or not math.isfinite(tau):
        raise ConfigError(f"rewards.tau must be a cosine threshold in [-1, 1), got {tau}")
    return tau


class SemanticReward(RewardFunction):
    """R_sim between each completion and its `reference` column under a frozen encoder.

    All completions of a call are embedded in one `encode` call; references go through a
    `CachedEncoder` (each distinct reference is embedded once per run) unless
    `cache_references=False`. `last_similarity` keeps the raw cosines of the last call for logging;
    under TRL the mean cosine is also logged as `semantic/similarity` via `log_metric`.
    """

    name = "semantic"

    def __init__(self, encoder: Encoder, tau: float, cache_references: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.tau = check_tau(tau)
        self.reference_encoder: Encoder = CachedEncoder(encoder) if cache_references else encoder
        self.last_similarity: list[float] = []

    def _score(self, completions: list[str], columns: dict[str, Any]) -> list[float]:
        references = column_values(columns, "reference", len(completions), self.name)
        if not completions:
            self.last_similarity = []
            return []
        hyp = self.encoder.encode(completions)
        ref = self.reference_encoder.encode(references)
        sim = np.einsum("ij,ij->i", hyp.astype(np.float64), ref.astype(np.float64))
        self.last_similarity = sim.tolist()
        log_metric = columns.get("log_metric")
        if callable(log_metric):
            finite = sim[np.isfinite(sim)]
            if finite.size:
                log_metric(f"{self.name}/similarity", float(finite.mean()))
        return rescale_similarity(sim, self.tau).tolist()
