"""Small file helpers: atomic writes (nothing half-written) and JSONL with line-precise errors."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from semrl.core.errors import DataError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Works for files and directories: a reader never sees a half-written output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and target.is_dir():
            _remove(path)
        os.replace(target, path)
    finally:
        _remove(tmp)


@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | Path]) -> Iterator[list[Path]]:
    """`atomic_path` for several outputs that belong together (a report's files): yield a temporary
    path for each; only once the block has succeeded are they renamed onto their targets, one right
    after another, so a failure while making any of them leaves every target as it was."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(atomic_path(p)) for p in paths]


def _remove(p: Path) -> None:
    import shutil

    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_texts(files: Mapping[str | Path, str]) -> list[Path]:
    """Write several text files together (`atomic_paths`): all are replaced, or none is."""
    with atomic_paths(list(files)) as tmps:
        for tmp, text in zip(tmps, files.values()):
            tmp.write_text(text, encoding="utf-8")
    return [Path(p) for p in files]


def json_text(obj: Any, indent: int | None = 2) -> str:
    """The text `write_json` writes: UTF-8 JSON with non-ASCII kept readable, ending in a newline."""
    return json.dumps(obj, ensure_ascii=False, indent=indent) + "\n"


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Write JSON atomically (UTF-8, non-ASCII kept readable)."""
    return write_text(path, json_text(obj, indent))


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write one JSON object per line, atomically."""
    with atomic_path(path) as tmp:
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file; raise DataError naming the file and line on malformed input."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows: list[dict[str, Any]] = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path}:{lineno}: invalid UTF-8 ({err.reason} at byte {err.start}); re-save the file as UTF-8"
                ) from None
            obj = parse_jsonl_line(path, lineno, line)
            if obj is not None:
                rows.append(obj)
    return rows


def parse_jsonl_line(path: str | Path, lineno: int, line: str) -> dict[str, Any] | None:
    """One JSONL line as a dict (None for a blank line); DataError naming file and line otherwise."""
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object per line, got {type(obj).__name__}")
    return obj


def read_manifest(path: str | Path) -> dict[str, Any] | None:
    """A JSON manifest, or None when it is missing.

    semrl writes manifests atomically, so one that exists but does not parse was damaged after
    the fact (a disk error, an edit): that is a DataError naming the file, never taken silently as
    "not finished" (which would retrain a finished stage).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        text = None
    try:
        obj = json.loads(text) if text is not None else None
    except json.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: damaged manifest (not a JSON object). Restore it, or delete it and run again: a stage "
            f"then finishes from its last checkpoint (or retrains), and splits are made again"
        )
    return obj


def read_cache(path: str | Path) -> dict[str, Any] | None:
    """A JSON cache file, or None when it is missing or unreadable (it is then recomputed)."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def remove_stale_temps(path: str | Path) -> None:
    """Delete the temporary folders `atomic_path` left beside `path` when a process was killed
    mid-write (``.<name>.*.tmp``). Call it only while holding the directory's lock."""
    path = Path(path)
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        _remove(tmp)
