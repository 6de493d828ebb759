"""The one record type every layer sees, `Example`, and the checked conversion of raw records into it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semrl.core.errors import ConfigError, DataError
from semrl.core.io import file_problem

if TYPE_CHECKING:
    pass


EXAMPLE_FIELDS: tuple[str, ...] = ("id", "source", "reference", "doc_id")
REQUIRED_COLUMNS: tuple[str, ...] = ("source", "reference")


@dataclass
class Example:
    """One source -> reference pair. `doc_id` groups examples that must stay in the same split."""

    id: str
    source: str
    reference: str
    doc_id: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the line format of `splits/<split>.jsonl`)."""
        return {
            "id": self.id,
            "source": self.source,
            "reference": self.reference,
            "doc_id": self.doc_id,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Example:
        """Build an Example from a dict with at least id, source, reference and doc_id.

        Raises DataError naming the missing or mistyped keys (callers add file and line).
        """
        missing = [k for k in EXAMPLE_FIELDS if k not in data]
        if missing:
            raise DataError(f"missing key(s) {missing}; an example needs {list(EXAMPLE_FIELDS)}")
        wrong = [k for k in EXAMPLE_FIELDS if not isinstance(data[k], str)]
        if wrong:
            raise DataError(f"key(s) {wrong} must be strings")
        metadata = data.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise DataError(f"'metadata' must be an object, got {type(metadata).__name__}")
        return cls(data["id"], data["source"], data["reference"], data["doc_id"], dict(metadata))


def read_text(path: Path) -> str:
    """Decode a UTF-8 file (a BOM is dropped); invalid bytes raise DataError with file:line."""
    problem = file_problem(path)
    if problem:
        raise DataError(f"{path}: {problem}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path}:{line}: invalid UTF-8 ({err.reason} at byte {err.start}); re-save the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


def split_lines(text: str) -> list[str]:
    r"""Split on "\n" only (str.splitlines also splits on U+2028, U+001C..., which would break the
    line alignment of parallel files); a final newline does not make an extra empty line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def check_columns(columns: Mapping[str, str], where: str) -> None:
    unknown = sorted(set(columns) - set(EXAMPLE_FIELDS))
    if unknown:
        raise ConfigError(
            f"{where}.columns: unknown semrl field(s) {unknown}; the keys are semrl fields "
            f"({', '.join(EXAMPLE_FIELDS)}) and the values your file's column names"
        )
    missing = [k for k in REQUIRED_COLUMNS if k not in columns]
    if missing:
        raise ConfigError(
            f"{where}.columns: no column mapped to {missing}; e.g. columns: {{source: bo, reference: zh}}"
        )


def _text_value(value: Any, column: str, origin: str, *, required: bool) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        kind = "null" if value is None else type(value).__name__
        raise DataError(f"{origin}: column {column!r} must hold text, got {kind}")
    text = str(value).strip()
    if required and not text:
        raise DataError(f"{origin}: column {column!r} is empty; every example needs a non-empty source and reference")
    return text


class RecordConverter:
    """Maps records (dicts) of one source to Examples, checking ids are unique within it."""

    def __init__(self, source_name: str, columns: Mapping[str, str]) -> None:
        self.source_name = source_name
        self.columns = dict(columns)
        self._seen: dict[str, str] = {}

    def missing_columns(self, present: Sequence[str]) -> list[tuple[str, str]]:
        return [(f, c) for f, c in self.columns.items() if c not in present]

    def __call__(self, record: Mapping[str, Any], origin: str, default_id: str) -> Example:
        for fld, col in self.missing_columns(list(record)):
            raise DataError(
                f"{origin}: missing column {col!r} (mapped from semrl field {fld!r}); this row has "
                f"{sorted(map(str, record))}. Fix the row, or the source's `columns` mapping."
            )
        values = {
            fld: _text_value(record[col], col, origin, required=fld in REQUIRED_COLUMNS)
            for fld, col in self.columns.items()
        }
        raw_id = values.get("id") or default_id
        if raw_id in self._seen:
            raise DataError(
                f"{origin}: id {raw_id!r} already used at {self._seen[raw_id]}; ids must be unique within a source"
            )
        self._seen[raw_id] = origin
        example_id = f"{self.source_name}:{raw_id}"
        # Without a doc_id column each row is its own document; the prefixed id keeps rows of
        # different sources from merging into one "document".
        doc_id = values.get("doc_id") or example_id
        return Example(example_id, values["source"], values["reference"], doc_id, {"origin": origin})
