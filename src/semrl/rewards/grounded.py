"""The source-grounded reward of SG-SRL ("Source-Grounded Semantic RL", arXiv 2605.29502): no reference.

    r = gate * max(0, r_score - 0.20 * p_len - 0.05 * p_rep)

with r_score the cross-lingual cosine between the source and the output under a frozen encoder
that reads both languages (rescaled above the floor tau like the paper's R_sim; tau 0 keeps the
raw cosine, clipped at 0), gate the hard target-language check (1 when the output is in the
target script only), p_len SG-SRL's length penalty (0 up to 2.5x the batch median length, rising
linearly to 1 at 5x) and p_rep 1 when the repeated-4-gram share exceeds 0.15. It reads the
`source` column only, so it trains on source-only data; SG-SRL follows it with a short "recovery"
SFT on the parallel set (a declared `recovery` stage, see configs/sg-srl.yaml).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from semrl.core import lang as L
from semrl.encoders import CachedEncoder, Encoder
from semrl.rewards.base import RewardFunction, check_lang, column_values
from semrl.rewards.guards import REPETITION_THRESHOLD, LengthPenalty, RepetitionPenalty
from semrl.rewards.semantic import check_tau, rescale_similarity

# SG-SRL's weights of the length and repetition penalties inside the gate.
LENGTH_WEIGHT = 0.20
REPETITION_WEIGHT = 0.05


class SourceGroundedReward(RewardFunction):
    """SG-SRL's reward: gate * max(0, R(cos(source, output)) - 0.20 p_len - 0.05 p_rep).

    The penalties are semrl's guards (`LengthPenalty` relative to the batch median, SG-SRL's 2.5x
    to 5x ramp; `RepetitionPenalty`, binary above `repetition_threshold`), used as magnitudes in
    [0, 1]. Sources go through a `CachedEncoder` (each recurs G times per step). `last_similarity`
    keeps the raw source-output cosines of the last call.
    """

    name = "source_grounded"

    def __init__(
        self,
        encoder: Encoder,
        target_lang: str,
        tau: float = 0.0,
        ratio_start: float = 2.5,
        ratio_full: float = 5.0,
        repetition_threshold: float | None = None,
        length_weight: float = LENGTH_WEIGHT,
        repetition_weight: float = REPETITION_WEIGHT,
    ) -> None:
        super().__init__()
        check_lang(target_lang)
        self.encoder = encoder
        self.source_encoder: Encoder = CachedEncoder(encoder)
        self.target_lang = target_lang
        self.tau = check_tau(tau)
        self.length = LengthPenalty(target_lang, "batch", ratio_start, ratio_full)
        threshold = REPETITION_THRESHOLD if repetition_threshold is None else repetition_threshold
        self.repetition = RepetitionPenalty(target_lang, threshold, "binary")
        self.length_weight = float(length_weight)
        self.repetition_weight = float(repetition_weight)
        self.last_similarity: list[float] = []

    def _score(self, completions: list[str], columns: dict[str, Any]) -> list[float]:
        sources = column_values(columns, "source", len(completions), self.name)
        if not completions:
            self.last_similarity = []
            return []
        out = self.encoder.encode(completions).astype(np.float64)
        src = self.source_encoder.encode(sources).astype(np.float64)
        sim = np.einsum("ij,ij->i", out, src)
        self.last_similarity = sim.tolist()
        score = np.maximum(rescale_similarity(sim, self.tau), 0.0)
        p_len = -np.asarray(self.length._score(completions, columns), dtype=np.float64)
        p_rep = -np.asarray(self.repetition._score(completions, columns), dtype=np.float64)
        gate = np.array([L.is_target_script_only(c, self.target_lang) for c in completions], dtype=np.float64)
        reward = gate * np.maximum(0.0, score - self.length_weight * p_len - self.repetition_weight * p_rep)
        log_metric = columns.get("log_metric")
        if callable(log_metric) and np.isfinite(sim).any():
            log_metric(f"{self.name}/similarity", float(np.nanmean(sim)))
        return reward.tolist()
