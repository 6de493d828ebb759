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
from typing import TYPE_CHECKING, Any

from semrl.core import lang as L
from semrl.core.errors import ConfigError, DataError

if TYPE_CHECKING:
    pass


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
                    self.name,
                    bad,
                    len(out),
                    type(self).__name__,
                )
                self._warned = True
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def column_values(columns: dict[str, Any], key: str, n: int, reward: str) -> list[str]:
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


def check_lang(target_lang: str) -> None:
    try:
        L.script_of_language(target_lang)
    except ValueError as err:
        raise ConfigError(f"task.target_lang: {err}") from None
