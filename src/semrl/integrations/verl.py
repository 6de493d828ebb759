"""semrl's rewards inside verl's GRPO (verl 0.9.x): a batched reward manager and a per-sample
`compute_score`, both built from a semrl config's `rewards:` section (`scoring.configured_rewards`).

The reward manager, loaded by verl by import path::

    reward.reward_manager.source=importlib
    reward.reward_manager.name=SemrlRewardManager
    reward.reward_manager.module.path=pkg://semrl.integrations.verl
    +reward.reward_kwargs.semrl_config=DATA/semrl.yaml

verl's reward workers call `run_single` once per rollout, concurrently; the manager gathers the
calls that arrive together (a worker's share of the batch, or rollouts finishing within
`semrl_batch_window_s`) and scores them in one batched call per reward: one encoder pass, each
distinct reference embedded once per worker. It returns the weighted total as the reward (verl
puts it on the last response token, `RewardManagerBase.assemble_rm_scores`) and every component's
score, the raw cosine and the language check as extra info, which verl logs.

`compute_score` serves verl's default (naive) manager, one sample per call::

    reward.custom_reward_function.path=pkg://semrl.integrations.verl
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.semrl_config=DATA/semrl.yaml

Options (``reward_kwargs``): `semrl_config` (required: a semrl YAML, e.g. the ``semrl.yaml`` that
`semrl data export` writes), `semrl_stage` (a stage whose own rewards to use), `semrl_tau` (the
semantic floor; default: the config's `rewards.tau`, and for 'auto' calibrated on the references
in `semrl_references`, the manager's default being verl's `data.train_files`),
`semrl_batch_window_s` and `semrl_max_batch` (manager only). The rows are those `semrl data export`
writes: ``reward_model.ground_truth`` is the reference and ``extra_info.source`` the source.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from semrl.core.errors import ConfigError, DataError
from semrl.core.io import file_problem
from semrl.data.export import VERL_GROUND_TRUTH, VERL_SOURCE
from semrl.integrations.scoring import ConfiguredRewards, configured_rewards

VERL_MISSING = (
    "semrl.integrations.verl needs verl 0.9.x: pip install -e '.[verl]' && pip install --no-deps verl==0.9.1 "
    "(see docs/guides/verl.md)"
)
try:
    from verl import DataProto
    from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase
except ImportError as err:  # an optional dependency: say how to install it
    raise ImportError(f"{VERL_MISSING} ({err})") from err

# The reward_kwargs semrl reads; any other semrl_* key is a typo and refused.
OPTIONS: tuple[str, ...] = (
    "semrl_config",
    "semrl_stage",
    "semrl_tau",
    "semrl_references",
    "semrl_batch_window_s",
    "semrl_max_batch",
)
DEFAULT_BATCH_WINDOW_S = 0.02
DEFAULT_MAX_BATCH = 1024


def _options(kwargs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The semrl_* options of `kwargs` (verl's own keys pass through); ConfigError naming `where`."""
    options = {k: v for k, v in dict(kwargs).items() if str(k).startswith("semrl_")}
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown}; semrl reads {', '.join(OPTIONS)}")
    if not options.get("semrl_config"):
        raise ConfigError(
            f"{where}.semrl_config is not set: give the semrl config whose rewards verl should use, e.g. "
            f"+{where}.semrl_config=DATA/semrl.yaml (the file `semrl data export` writes)"
        )
    return options


def _paths(value: Any) -> tuple[str, ...]:
    """A file path or a list of them (verl's `data.train_files`) as a tuple of strings."""
    if value is None:
        return ()
    if isinstance(value, str | Path):
        return (str(value),)
    return tuple(str(v) for v in value)


def references_from_parquet(paths: Sequence[str | Path]) -> list[str]:
    """The references (``reward_model.ground_truth``) of verl parquet files written by `semrl data
    export`, in file order: the texts `rewards.tau: auto` is calibrated on."""
    import pyarrow.parquet as pq

    texts: list[str] = []
    for path in paths:
        problem = file_problem(path)
        if problem:
            raise DataError(f"{path}: {problem}; semrl_references (or verl's data.train_files) names a parquet file")
        table = pq.read_table(path)
        if "reward_model" not in table.column_names:
            raise DataError(f"{path}: no reward_model column; expected a file written by `semrl data export`")
        for i, cell in enumerate(table.column("reward_model").to_pylist()):
            reference = (cell or {}).get(VERL_GROUND_TRUTH)
            if not isinstance(reference, str):
                raise DataError(f"{path}: row {i}: reward_model.{VERL_GROUND_TRUTH} is not a string")
            texts.append(reference)
    return texts


@functools.cache
def _rewards(config: str, stage: str | None, tau: float | None, references: tuple[str, ...]) -> ConfiguredRewards:
    """One `ConfiguredRewards` per process and options: verl calls `compute_score` per sample, and
    every manager of a worker shares the encoder and its reference cache."""
    return configured_rewards(
        config,
        stage=stage,
        tau=None if tau is None else float(tau),
        references=lambda: references_from_parquet(references),
    )


def _build(options: Mapping[str, Any], default_references: tuple[str, ...] = ()) -> ConfiguredRewards:
    references = _paths(options.get("semrl_references")) or default_references
    tau = options.get("semrl_tau")
    return _rewards(
        str(options["semrl_config"]), options.get("semrl_stage"), None if tau is None else float(tau), references
    )


def _row(completion: str, ground_truth: Any, extra_info: Mapping[str, Any] | None) -> dict[str, Any]:
    if not isinstance(ground_truth, str):
        raise DataError(
            f"reward_model.{VERL_GROUND_TRUTH} is {type(ground_truth).__name__}, not the reference text; "
            "train on the files `semrl data export --format verl` writes"
        )
    source = (extra_info or {}).get(VERL_SOURCE) or ""
    return {"source": str(source), "reference": ground_truth, "completion": completion}


def _extra(scores: Mapping[str, float]) -> dict[str, float]:
    """What verl logs beside the reward: each component, the raw cosine and the language check."""
    return {k: v for k, v in scores.items() if k != "total"}


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """verl's per-sample reward function (`reward.custom_reward_function`): semrl's weighted total
    as ``score`` and each component beside it. `kwargs` are verl's `reward_kwargs` (`OPTIONS`)."""
    rewards = _build(_options(kwargs, "reward.custom_reward_function.reward_kwargs"))
    scores = rewards.score([_row(solution_str, ground_truth, extra_info)])[0]
    return {"score": scores["total"], **_extra(scores)}


class _Batcher:
    """Gathers concurrent `score` calls and scores them together, one batch at a time, in a
    thread (the event loop keeps taking calls meanwhile)."""

    def __init__(self, rewards: ConfiguredRewards, window_s: float, max_batch: int) -> None:
        self.rewards = rewards
        self.window_s = window_s
        self.max_batch = max_batch
        self._pending: list[tuple[dict[str, Any], asyncio.Future]] = []
        self._drain: asyncio.Task | None = None

    async def score(self, row: dict[str, Any]) -> dict[str, float]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((row, future))
        if self._drain is None or self._drain.done() or self._drain.get_loop() is not loop:
            self._drain = loop.create_task(self._run())
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            await asyncio.sleep(self.window_s)  # let the calls made together join this batch
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            try:
                scores = await loop.run_in_executor(None, self.rewards.score, [row for row, _ in batch])
            except Exception as err:  # every waiting rollout gets the error, none hangs
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
            else:
                for (_, future), result in zip(batch, scores):
                    if not future.done():
                        future.set_result(result)


class SemrlRewardManager(RewardManagerBase):
    """verl's reward manager (0.9.x reward loop) scoring rollouts with semrl's rewards, batched.

    Options come from verl's ``reward.reward_kwargs`` (see the module docstring); `compute_score`
    (verl's custom reward function, if any) is not used: semrl's config decides the reward.
    """

    def __init__(
        self,
        config: Any,
        tokenizer: Any,
        compute_score: Any = None,
        reward_router_address: str | None = None,
        reward_model_tokenizer: Any = None,
    ) -> None:
        super().__init__(config, tokenizer, compute_score)
        reward_cfg = config.get("reward") or {}
        options = _options(reward_cfg.get("reward_kwargs") or {}, "reward.reward_kwargs")
        train_files = _paths((config.get("data") or {}).get("train_files"))
        self.rewards = _build(options, default_references=train_files)
        self.batcher = _Batcher(
            self.rewards,
            float(options.get("semrl_batch_window_s", DEFAULT_BATCH_WINDOW_S)),
            int(options.get("semrl_max_batch", DEFAULT_MAX_BATCH)),
        )

    async def run_single(self, data: DataProto) -> dict[str, Any]:
        """Score one rollout (the last sequence of `data`, as verl's managers do)."""
        item = data[-1:][0]
        response_ids = item.batch["responses"]
        valid = int(item.batch["attention_mask"][-response_ids.shape[-1] :].sum())
        completion = self.tokenizer.decode(response_ids[:valid], skip_special_tokens=True)
        ground_truth = (item.non_tensor_batch.get("reward_model") or {}).get(VERL_GROUND_TRUTH)
        row = _row(completion, ground_truth, item.non_tensor_batch.get("extra_info"))
        scores = await self.batcher.score(row)
        return {"reward_score": scores["total"], "reward_extra_info": _extra(scores)}
