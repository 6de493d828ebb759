"""Task metrics and the statistics around them: pure functions, no model.

- BLEU and chrF through sacrebleu, with the tokenisation that scores the target language
  correctly (`lang.sacrebleu_tokenizer`: 'zh' for Chinese, 'intl' = syllable level for Tibetan;
  the default '13a' scores Tibetan 0). The sacrebleu signature is always returned with a score.
- ROUGE-L through `rouge_score` with semrl's tokenizer (Tibetan syllables, Chinese characters);
  `rouge_score`'s own tokenizer drops every non-Latin character and scores CJK/Tibetan 0.
- CMRC 2018 EM/F1, re-implemented to behave as the official evaluation script does.
- Bootstrap confidence intervals: percentile intervals through `scipy.stats.bootstrap` for
  per-example values, and a paired bootstrap over sentence indices for corpus BLEU/chrF
  differences (sacrebleu's own paired test reports p-values, not an interval of the difference).

Scores: BLEU and chrF are on sacrebleu's 0-100 scale; ROUGE-L and CMRC EM/F1 are in [0, 1].
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

from semrl import lang

__all__ = [
    "Interval",
    "MetricScore",
    "bootstrap_ci",
    "cmrc_em_f1",
    "corpus_bleu",
    "corpus_chrf",
    "mean_of_paired_means_ci",
    "paired_bootstrap",
    "paired_corpus_bootstrap",
    "rouge_l",
    "sentence_bleu",
    "sentence_chrf",
]


@dataclass(frozen=True)
class MetricScore:
    """A corpus-level score and the sacrebleu signature that makes it reproducible."""

    score: float
    signature: str


@dataclass(frozen=True)
class Interval:
    """A point estimate with a bootstrap confidence interval [low, high]."""

    estimate: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


# ---------------------------------------------------------------------------------------------
# BLEU, chrF, ROUGE-L
# ---------------------------------------------------------------------------------------------
def _check_pairs(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"got {len(hyps)} hypotheses but {len(refs)} references; they must be aligned one to one")


def _normalized(texts: Sequence[str], target_lang: str) -> list[str]:
    return [lang.normalize_text(t, target_lang) for t in texts]


def _bleu(target_lang: str, sentence_level: bool = False):  # -> sacrebleu.metrics.BLEU
    from sacrebleu.metrics import BLEU

    # effective_order: a short sentence with no 4-gram match would otherwise score 0; this is
    # sacrebleu's recommended setting for sentence-level BLEU (corpus BLEU does not need it).
    return BLEU(tokenize=lang.sacrebleu_tokenizer(target_lang), effective_order=sentence_level)


def _chrf():  # -> sacrebleu.metrics.CHRF
    from sacrebleu.metrics import CHRF

    # chrF works on characters (whitespace removed), so it needs no language tokenizer.
    return CHRF()


def corpus_bleu(hyps: Sequence[str], refs: Sequence[str], target_lang: str) -> MetricScore:
    """Corpus BLEU (0-100) with the target language's sacrebleu tokenizer, on normalised text."""
    _check_pairs(hyps, refs)
    metric = _bleu(target_lang)
    score = metric.corpus_score(_normalized(hyps, target_lang), [_normalized(refs, target_lang)])
    return MetricScore(float(score.score), str(metric.get_signature()))


def corpus_chrf(hyps: Sequence[str], refs: Sequence[str], target_lang: str) -> MetricScore:
    """Corpus chrF (0-100) on normalised text."""
    _check_pairs(hyps, refs)
    metric = _chrf()
    score = metric.corpus_score(_normalized(hyps, target_lang), [_normalized(refs, target_lang)])
    return MetricScore(float(score.score), str(metric.get_signature()))


def sentence_bleu(hyps: Sequence[str], refs: Sequence[str], target_lang: str) -> list[float]:
    """Per-example BLEU (0-100, effective n-gram order) for per-example analysis."""
    _check_pairs(hyps, refs)
    metric = _bleu(target_lang, sentence_level=True)
    return [
        float(metric.sentence_score(h, [r]).score)
        for h, r in zip(_normalized(hyps, target_lang), _normalized(refs, target_lang))
    ]


def sentence_chrf(hyps: Sequence[str], refs: Sequence[str], target_lang: str) -> list[float]:
    """Per-example chrF (0-100)."""
    _check_pairs(hyps, refs)
    metric = _chrf()
    return [
        float(metric.sentence_score(h, [r]).score)
        for h, r in zip(_normalized(hyps, target_lang), _normalized(refs, target_lang))
    ]


class _MetricTokenizer:
    """The `tokenize(text)` object `rouge_score` accepts: semrl's metric tokens for a language."""

    def __init__(self, target_lang: str) -> None:
        self.target_lang = target_lang

    def tokenize(self, text: str) -> list[str]:
        return lang.tokenize_for_metrics(text, self.target_lang)


def rouge_l(hyps: Sequence[str], refs: Sequence[str], target_lang: str) -> list[float]:
    """Per-example ROUGE-L F-measure in [0, 1] over Tibetan syllables / Chinese characters /
    lower-cased words (see `lang.tokenize_for_metrics`)."""
    from rouge_score.rouge_scorer import RougeScorer

    _check_pairs(hyps, refs)
    scorer = RougeScorer(["rougeL"], tokenizer=_MetricTokenizer(target_lang))
    # RougeScorer.score takes (target, prediction): the reference comes first.
    return [float(scorer.score(r, h)["rougeL"].fmeasure) for h, r in zip(hyps, refs)]


# ---------------------------------------------------------------------------------------------
# CMRC 2018 EM / F1
# ---------------------------------------------------------------------------------------------
# The punctuation the official CMRC 2018 script removes, exactly: a few ASCII symbols and the
# common full-width marks. Its gaps are kept on purpose so scores stay comparable with published
# ones: ASCII , . ! ? ' " ( ) and the opening quote ‘ are NOT removed, nor the ellipsis … (the
# script lists '……' as one two-character entry, which never matches a single character).
CMRC_PUNCTUATION = frozenset("-:_*^/\\~`+=，。：？！“”；’《》·、「」（）－～『』")
# The official script's test for "a Chinese character": the basic CJK block up to U+9FA5.
_CMRC_CJK = re.compile("[\u4e00-\u9fa5]")


def _word_tokenize(text: str) -> list[str]:
    """NLTK's Treebank-style word tokenizer, as `nltk.word_tokenize` applies it to each sentence.

    `nltk.word_tokenize` first splits sentences with the punkt model, which is a download
    (unavailable offline); CMRC answers are short spans, and the word tokenizer alone gives the
    same tokens except for a period that ends a sentence inside the span."""
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer().tokenize(text)


def _cmrc_segments(text: str) -> list[str]:
    """The official script's mixed segmentation with punctuation removal: lower-case, strip, drop
    CMRC_PUNCTUATION (without ending the current run), one token per Chinese character, and runs of
    other characters split into words by the NLTK word tokenizer (whitespace separates words)."""
    tokens: list[str] = []
    run: list[str] = []
    for ch in text.lower().strip():
        if ch in CMRC_PUNCTUATION:
            continue
        if _CMRC_CJK.match(ch):
            if run:
                tokens.extend(_word_tokenize("".join(run)))
                run = []
            tokens.append(ch)
        else:
            run.append(ch)
    if run:
        tokens.extend(_word_tokenize("".join(run)))
    return tokens


def _cmrc_em_text(text: str) -> str:
    """The official EM normalisation: lower-case, strip, remove CMRC_PUNCTUATION (inner spaces stay)."""
    return "".join(ch for ch in text.lower().strip() if ch not in CMRC_PUNCTUATION)


def _longest_common_substring(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common contiguous run of tokens."""
    # autojunk=False: the junk heuristic would ignore frequent tokens in sequences of 200+ items.
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return matcher.find_longest_match(0, len(a), 0, len(b)).size


def cmrc_em_f1(prediction: str, answers: Sequence[str]) -> tuple[float, float]:
    """CMRC 2018 exact match and F1 of one prediction against its reference answers, each in [0, 1].

    As the official evaluation script computes them: EM is 1 when the punctuation-stripped,
    lower-cased prediction equals any answer. F1 segments both texts (Chinese characters one
    each, English words whole), takes the longest common *substring* of the two token lists
    (not the bag-of-tokens overlap of SQuAD), and scores precision = lcs/len(prediction),
    recall = lcs/len(answer); the result is the best F1 over the answers. The paper's "Avg" is
    (EM + F1) / 2.
    """
    if isinstance(answers, str):
        answers = [answers]
    if not answers:
        raise ValueError("cmrc_em_f1 needs at least one reference answer")
    em_pred = _cmrc_em_text(prediction)
    em = float(any(em_pred == _cmrc_em_text(a) for a in answers))
    pred_segs = _cmrc_segments(prediction)
    best_f1 = 0.0
    for answer in answers:
        ans_segs = _cmrc_segments(answer)
        lcs = _longest_common_substring(ans_segs, pred_segs)
        if lcs == 0:
            continue
        precision, recall = lcs / len(pred_segs), lcs / len(ans_segs)
        best_f1 = max(best_f1, 2 * precision * recall / (precision + recall))
    return em, best_f1


# ---------------------------------------------------------------------------------------------
# Bootstrap statistics
# ---------------------------------------------------------------------------------------------
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
) -> Interval:
    """Interval for corpus_metric(a) - corpus_metric(b) by paired bootstrap over sentences.

    Each resample draws sentence indices with replacement and recomputes both corpus scores on
    the same indices (Koehn 2004). Sentence statistics are extracted once with sacrebleu (the
    sufficient statistics its own significance module resamples), so a resample is a sum and a
    formula, not a re-tokenisation.
    """
    if metric not in ("bleu", "chrf"):
        raise ValueError(f"metric must be 'bleu' or 'chrf', got {metric!r}")
    _check_pairs(hyps_a, refs)
    _check_pairs(hyps_b, refs)
    if not refs:
        raise ValueError("no sentences: a corpus bootstrap needs at least one")
    scorer = _bleu(target_lang) if metric == "bleu" else _chrf()
    norm_refs = [_normalized(refs, target_lang)]
    stats_a = np.asarray(scorer._extract_corpus_statistics(_normalized(hyps_a, target_lang), norm_refs), dtype=float)
    stats_b = np.asarray(scorer._extract_corpus_statistics(_normalized(hyps_b, target_lang), norm_refs), dtype=float)

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
