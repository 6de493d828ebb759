"""Reward-hacking guards after SG-SRL (language gate, length, repetition and source-copy penalties): 0 for a clean completion, down to -1 for a suspect one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from semrl.core import lang as L
from semrl.core.errors import ConfigError
from semrl.rewards.base import RewardFunction, check_lang, column_values

if TYPE_CHECKING:
    pass


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


def check_mode(mode: str, reward: str) -> str:
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
        check_lang(target_lang)
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
        check_lang(target_lang)
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
            refs = column_values(columns, "reference", len(completions), self.name)
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
        check_lang(target_lang)
        self.target_lang = target_lang
        self.threshold = _check_threshold(self.default_threshold if threshold is None else threshold, self.name)
        self.mode = check_mode(mode, self.name)
        self.n = n


class RepetitionPenalty(_NgramPenalty):
    """Repeated n-grams (`lang.repeated_ngram_share` on metric tokens), SG-SRL's threshold 0.15."""

    name = "repetition_penalty"
    default_threshold = REPETITION_THRESHOLD

    def _score(self, completions: list[str], columns: dict[str, Any]) -> list[float]:
        return [
            _penalty(L.repeated_ngram_share(c, self.target_lang, self.n), self.threshold, self.mode)
            for c in completions
        ]


class SourceCopyPenalty(_NgramPenalty):
    """Output copied from the source (`lang.source_overlap`: share of the output's n-grams found
    verbatim in the `source` column). Copying the article's first sentence as its headline, or
    echoing an untranslated source, is a cheap way to please an overlap or embedding reward."""

    name = "source_copy_penalty"
    default_threshold = SOURCE_COPY_THRESHOLD

    def _score(self, completions: list[str], columns: dict[str, Any]) -> list[float]:
        sources = column_values(columns, "source", len(completions), self.name)
        return [
            _penalty(L.source_overlap(c, s, self.target_lang, self.n), self.threshold, self.mode)
            for c, s in zip(completions, sources)
        ]
