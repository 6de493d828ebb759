"""Bootstrap confidence intervals (scipy.stats.bootstrap), paired where two methods are compared on the same items."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

from semrl.eval.metrics import bleu_metric, check_pairs, chrf_metric, normalized_texts


@dataclass(frozen=True)
class Interval:
    """A point estimate with a bootstrap confidence interval [low, high]."""

    estimate: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def _as_array(values: Sequence[float] | np.ndarray, name: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: a confidence interval needs at least one value")
    return arr


def _interval(estimate: float, low: float, high: float) -> Interval:
    # A constant sample gives a degenerate distribution; scipy may then return nan bounds.
    low = estimate if np.isnan(low) else float(low)
    high = estimate if np.isnan(high) else float(high)
    return Interval(float(estimate), low, high)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[..., float] = np.mean,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of `statistic` over per-example values (scipy.stats.bootstrap).

    `statistic` is called on a 1-D array (and with `axis=` when it accepts one, which makes the
    resampling vectorised). The estimate is the statistic of the full sample.
    """
    arr = _as_array(values)
    estimate = float(statistic(arr))
    if arr.size == 1:
        return Interval(estimate, estimate, estimate)
    result = stats.bootstrap(
        (arr,),
        statistic,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return _interval(estimate, *result.confidence_interval)


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    statistic: Callable[..., float] = np.mean,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Interval for statistic(a) - statistic(b) on paired per-example values (the same examples
    scored two ways): examples are resampled together, so their correlation is kept."""
    xa, xb = _as_array(a, "a"), _as_array(b, "b")
    if xa.shape != xb.shape:
        raise ValueError(f"paired values must have the same length: {xa.size} vs {xb.size}")
    estimate = float(statistic(xa) - statistic(xb))
    if xa.size == 1:
        return Interval(estimate, estimate, estimate)

    def difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return statistic(x, axis=axis) - statistic(y, axis=axis)

    result = stats.bootstrap(
        (xa, xb),
        difference,
        paired=True,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return _interval(estimate, *result.confidence_interval)


def mean_of_paired_means_ci(
    diffs: Sequence[Sequence[float] | np.ndarray],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Interval for the mean over groups of each group's mean (e.g. the alignment tax averaged
    over benchmarks, from each benchmark's per-item paired differences). Groups may differ in
    size; each is resampled on its own (a stratified bootstrap), so every benchmark weighs the same."""
    groups = [_as_array(d, f"diffs[{i}]") for i, d in enumerate(diffs)]
    if not groups:
        raise ValueError("diffs is empty: need at least one group of differences")
    estimate = float(np.mean([g.mean() for g in groups]))
    if all(g.size == 1 for g in groups):
        return Interval(estimate, estimate, estimate)

    def mean_of_means(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean([s.mean(axis=axis) for s in samples], axis=0)

    # scipy needs two or more observations per sample; a single-item group cannot vary anyway.
    varying = [g for g in groups if g.size > 1]
    fixed = sum(g.mean() for g in groups if g.size == 1)
    result = stats.bootstrap(
        tuple(varying),
        mean_of_means,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    # Turn the varying groups' mean of means back into the mean over all groups (a linear map).
    k, kv = len(groups), len(varying)
    low, high = result.confidence_interval
    return _interval(estimate, (low * kv + fixed) / k, (high * kv + fixed) / k)


def paired_corpus_bootstrap(
    metric: Literal["bleu", "chrf"],
    hyps_a: Sequence[str],
    hyps_b: Sequence[str],
    refs: Sequence[str],
    target_lang: str,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    refs_b: Sequence[str] | None = None,
) -> Interval:
    """Interval for corpus_metric(a) - corpus_metric(b) by paired bootstrap over sentences.

    `refs_b` scores b against other references than a (default: the same): with b = a and
    shuffled references it is a metric's margin over its chance floor.

    Each resample draws sentence indices with replacement and recomputes both corpus scores on
    the same indices (Koehn 2004). Sentence statistics are extracted once with sacrebleu (the
    sufficient statistics its own significance module resamples), so a resample is a sum and a
    formula, not a re-tokenisation.
    """
    # Hand-written: sacrebleu's paired bootstrap returns p-values for its CLI report, not the
    # interval of the difference (with a seeded rng) that the report prints.
    if metric not in ("bleu", "chrf"):
        raise ValueError(f"metric must be 'bleu' or 'chrf', got {metric!r}")
    check_pairs(hyps_a, refs)
    refs_b = refs if refs_b is None else refs_b
    check_pairs(hyps_b, refs_b)
    if not refs:
        raise ValueError("no sentences: a corpus bootstrap needs at least one")
    scorer = bleu_metric(target_lang) if metric == "bleu" else chrf_metric()
    norm_refs = [normalized_texts(refs, target_lang)]
    stats_a = np.asarray(
        scorer._extract_corpus_statistics(normalized_texts(hyps_a, target_lang), norm_refs), dtype=float
    )
    stats_b = np.asarray(
        scorer._extract_corpus_statistics(
            normalized_texts(hyps_b, target_lang), [normalized_texts(refs_b, target_lang)]
        ),
        dtype=float,
    )

    def corpus(stats_rows: np.ndarray) -> float:
        return float(scorer._compute_score_from_stats(stats_rows.sum(axis=0)).score)

    estimate = corpus(stats_a) - corpus(stats_b)
    n = len(refs)
    rng = np.random.default_rng(seed)
    deltas = np.empty(n_resamples)
    for i in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        deltas[i] = corpus(stats_a[idx]) - corpus(stats_b[idx])
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(deltas, [alpha, 1.0 - alpha])
    return Interval(float(estimate), float(low), float(high))


@dataclass(frozen=True)
class Flips:
    """Paired flips of one benchmark between the base model and a method, item by item (as in
    "Mapping post-training forgetting at scale", arXiv 2510.17776): `lost` items right for the base
    model and wrong for the method (1 -> 0), `gained` the reverse, and the two-sided p-value of
    McNemar's exact test that lost and gained are equally likely (a binomial test on the
    discordant items; 1.0 when there are none)."""

    n: int
    lost: int
    gained: int
    p_value: float

    def as_dict(self) -> dict[str, float | int]:
        return {"n": self.n, "lost": self.lost, "gained": self.gained, "p_value": self.p_value}


def paired_flips(base_correct: Sequence[float], method_correct: Sequence[float], threshold: float = 0.5) -> Flips:
    """Flips between two per-item correctness vectors (an item counts as right when its score is
    at least `threshold`, so F1-like scores can be used too)."""
    a = _as_array(base_correct, "base_correct") >= threshold
    b = _as_array(method_correct, "method_correct") >= threshold
    if a.shape != b.shape:
        raise ValueError(f"paired values must have the same length: {a.size} vs {b.size}")
    lost, gained = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if lost + gained == 0 else float(stats.binomtest(lost, lost + gained, 0.5).pvalue)
    return Flips(int(a.size), lost, gained, p)
