"""A run's splits in other engines' file formats: verl's RL parquet (`semrl data export --format verl`).

verl's trainer reads one row per prompt (see its data preparation examples): ``data_source``,
``prompt`` (chat messages: verl applies the tokenizer's chat template itself), ``ability``,
``reward_model`` (``ground_truth``: what the reward compares the response with) and
``extra_info`` (free fields handed to the reward). semrl fills them from its `Example`s: the user
message is semrl's prompt text for the task (`prompts.prompt_text`), the ground truth is the
reference, and ``extra_info`` carries semrl's ids and the source text, which the guards
(`source_copy_penalty`) and group-wise rewards read. `semrl.integrations.verl` reads the same
fields back (`VERL_GROUND_TRUTH`, `VERL_SOURCE`), so the two sides cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semrl.config.data import TaskConfig
from semrl.data.example import Example
from semrl.data.prompts import prompt_text

# The formats `export_splits` writes, and each split's file name in them.
EXPORT_FORMATS: tuple[str, ...] = ("verl",)
VERL_SUFFIX = ".parquet"
# The columns of a verl RL row; `reward_model.ground_truth` and `extra_info.source` are what
# semrl's reward manager reads.
VERL_COLUMNS: tuple[str, ...] = ("data_source", "prompt", "ability", "reward_model", "extra_info")
VERL_GROUND_TRUTH = "ground_truth"
VERL_SOURCE = "source"
VERL_REWARD_STYLE = "semrl"


def verl_data_source(task: TaskConfig) -> str:
    """verl's `data_source` of semrl rows: it groups validation metrics, and names no verl scorer."""
    return f"semrl/{task.kind}/{task.source_lang}-{task.target_lang}"


def verl_records(examples: Sequence[Example], task: TaskConfig, split: str) -> list[dict[str, Any]]:
    """One verl RL row per example, in split order (`extra_info.index` is the position)."""
    return [
        {
            "data_source": verl_data_source(task),
            "prompt": [{"role": "user", "content": prompt_text(ex.source, task)}],
            "ability": task.kind,
            "reward_model": {"style": VERL_REWARD_STYLE, VERL_GROUND_TRUTH: ex.reference},
            "extra_info": {"split": split, "index": i, "id": ex.id, "doc_id": ex.doc_id, VERL_SOURCE: ex.source},
        }
        for i, ex in enumerate(examples)
    ]


def _verl_schema() -> Any:
    """The parquet schema, fixed so that an empty split still writes a file verl can open."""
    import pyarrow as pa

    text = pa.string()
    return pa.schema(
        [
            ("data_source", text),
            ("prompt", pa.list_(pa.struct([("role", text), ("content", text)]))),
            ("ability", text),
            ("reward_model", pa.struct([("style", text), (VERL_GROUND_TRUTH, text)])),
            (
                "extra_info",
                pa.struct(
                    [("split", text), ("index", pa.int64()), ("id", text), ("doc_id", text), (VERL_SOURCE, text)]
                ),
            ),
        ]
    )


def write_verl_split(path: Path, examples: Sequence[Example], task: TaskConfig, split: str) -> Path:
    """Write one split as a verl RL parquet file at `path` (callers write into a temporary folder)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(verl_records(examples, task, split), schema=_verl_schema())
    pq.write_table(table, path)
    return path


def export_splits(
    splits: dict[str, Sequence[Example]], task: TaskConfig, out_dir: Path, fmt: str = "verl"
) -> dict[str, Path]:
    """Write every split to `out_dir/<split><suffix>` in format `fmt`; the files by split name.

    `out_dir` must exist; the caller makes it appear whole (`core.io.atomic_path`)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; formats are {', '.join(EXPORT_FORMATS)}")
    return {
        name: write_verl_split(Path(out_dir) / f"{name}{VERL_SUFFIX}", examples, task, name)
        for name, examples in splits.items()
    }
