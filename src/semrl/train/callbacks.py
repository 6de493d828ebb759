"""Trainer callbacks and reward wrappers: the JSONL log, reward timing and load, the GRPO completion monitors, progress."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from transformers import TrainerCallback

from semrl.core.dist import distributed_state
from semrl.core.errors import DataError
from semrl.core.io import parse_jsonl_line, write_json
from semrl.core.layout import StageLayout

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    pass


def json_safe(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null. Tensors and numpy scalars become floats."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlLogCallback(TrainerCallback):
    """Append every trainer log to a JSONL file, with step, epoch, wall time and the mean wall time
    of the optimizer steps since the previous log (`step_time_s`). Writes on the main process only.

    When the trainer logs reward time (`timing/rewards_s`, one generation batch per optimizer step
    as semrl configures GRPO), the row also gets `timing/reward_share`, the share of a step spent
    in reward functions.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._step_started: float | None = None
        self._step_times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._step_started is not None:
            self._step_times.append(time.perf_counter() - self._step_started)
            self._step_started = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row: dict[str, Any] = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time(), 3)}
        if self._step_times:
            row["step_time_s"] = sum(self._step_times) / len(self._step_times)
            self._step_times.clear()
        row.update({k: json_safe(v) for k, v in logs.items()})
        reward_s = row.get("timing/rewards_s")
        if isinstance(reward_s, float) and row.get("step_time_s"):
            row["timing/reward_share"] = reward_s / row["step_time_s"]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a stage's log.jsonl (empty when it does not exist).

    A torn last line (the process was killed mid-append) is dropped with a warning; a malformed
    line before the last one is a DataError naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    rows: list[dict[str, Any]] = []
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, raw in enumerate(lines[: last + 1]):
        try:
            row = parse_jsonl_line(path, i + 1, raw.decode("utf-8"))
        except (DataError, UnicodeDecodeError) as err:
            if i < last:
                raise DataError(f"{path}:{i + 1}: malformed log line; delete the line or the log") from err
            logger.warning("%s:%d: dropped a torn last line (the writer was killed mid-append)", path, i + 1)
            continue
        if row is not None:
            rows.append(row)
    return rows


class TimedReward:
    """A reward function that also logs its own wall time per call (`timing/reward/<name>_s`)
    through TRL's `log_metric` hook. Keeps the wrapped function's `__name__`, which TRL logs.

    It also counts, in this process, its calls, the completions it scored and the seconds it took
    (`stats()`): TRL scores each process's own share of a generation batch, so under a
    multi-process launch these show how the reward load is spread (see `write_reward_stats`).
    """

    def __init__(self, func: Callable[..., list[float]]) -> None:
        self.func = func
        self.__name__ = getattr(func, "__name__", type(func).__name__)
        self.calls = 0
        self.completions = 0
        self.seconds = 0.0

    def __call__(self, prompts: Any, completions: Any, completion_ids: Any = None, **kwargs: Any) -> list[float]:
        start = time.perf_counter()
        scores = self.func(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        elapsed = time.perf_counter() - start
        self.calls += 1
        self.completions += len(completions)
        self.seconds += elapsed
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            log_metric(f"timing/reward/{self.__name__}_s", elapsed)
        return scores

    def stats(self) -> dict[str, float | int]:
        """This process's totals so far: calls, completions scored, seconds."""
        return {"calls": self.calls, "completions": self.completions, "seconds": round(self.seconds, 4)}


def write_reward_stats(stage_dir: str | Path, reward_funcs: Sequence[Any]) -> Path:
    """Write this process's reward load to ``stage_dir/reward_stats.rank<N>.json``.

    Every process writes its own file (rank, world_size and, per reward function, the calls,
    completions scored and seconds of its `TimedReward`), so a multi-process run shows whether
    every process scored its share. The counts cover this invocation only, not the steps before a
    resume.
    """
    state = distributed_state()
    stats = {f.__name__: f.stats() for f in reward_funcs if isinstance(f, TimedReward)}
    path = StageLayout(Path(stage_dir)).reward_stats(state.process_index)
    write_json(path, {"rank": state.process_index, "world_size": state.num_processes, "rewards": stats})
    return path


def frac_groups_equal(values: np.ndarray, tol: float = 1e-6) -> float:
    """Share of rows (groups) whose finite values are all equal (NaN = excluded sample)."""
    if not values.size:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 'All-NaN slice': a group nobody scored
        spread = np.nanmax(values, axis=1) - np.nanmin(values, axis=1)
    spread = np.nan_to_num(spread, nan=0.0)  # a group with no scored sample has no signal either
    return float((spread <= tol).mean())


def completion_monitors(texts: Sequence[str], rows: Sequence[dict[str, Any]], target_lang: str) -> dict[str, float]:
    """semrl's per-batch monitors of a generation batch: `texts` are the completions, `rows` their
    dataset rows (`reference`, `source`). Shares of completions in the target script only, mixing
    scripts, repeating 4-grams (`rewards.is_repetitive`) and copied from their source
    (`rewards.is_source_copy`), and the mean completion / reference length in characters. Monitors
    that need a column the rows lack are left out."""
    from semrl.core import lang
    from semrl.rewards.guards import is_repetitive, is_source_copy

    if not texts:
        return {"monitor/language_pass_rate": float("nan")}
    out = {
        "monitor/language_pass_rate": float(np.mean([lang.is_target_script_only(t, target_lang) for t in texts])),
        "monitor/mixed_script_rate": float(np.mean([lang.is_mixed_script(t) for t in texts])),
        "monitor/repetition_rate": float(np.mean([is_repetitive(t, target_lang) for t in texts])),
    }
    ratios = [
        len(t.strip()) / len(str(row["reference"]).strip())
        for t, row in zip(texts, rows)
        if str(row.get("reference") or "").strip()
    ]
    if ratios:
        out["monitor/length_ratio"] = float(np.mean(ratios))
    copies = [is_source_copy(t, str(row["source"]), target_lang) for t, row in zip(texts, rows) if row.get("source")]
    if copies:
        out["monitor/source_copy_rate"] = float(np.mean(copies))
    return out


def use_rich_progress(trainer: Any) -> None:
    """A rich progress panel in an interactive terminal; transformers' tqdm bar otherwise (logs,
    CI). Either shows on the main process only."""
    if not sys.stdout.isatty():
        return
    from transformers.trainer_callback import ProgressCallback
    from trl.trainer.callbacks import RichProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(RichProgressCallback())
