"""Local JSONL, CSV and TSV files with a column mapping; every error names file:line."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semrl.config.data import (
    LocalSource,
)
from semrl.core.errors import ConfigError, DataError
from semrl.core.io import parse_jsonl_line
from semrl.data.example import (
    Example,
    RecordConverter,
    check_columns,
    read_text,
    split_lines,
)

if TYPE_CHECKING:
    pass


_FORMAT_BY_SUFFIX = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
}


def _local_format(path: Path, fmt: str, where: str) -> str:
    if fmt != "auto":
        return fmt
    try:
        return _FORMAT_BY_SUFFIX[path.suffix.lower()]
    except KeyError:
        raise ConfigError(
            f"{where}: cannot tell the format of {path} from its suffix {path.suffix!r}; set format: jsonl, csv or tsv"
        ) from None


def iter_jsonl_records(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, line in enumerate(split_lines(text), start=1):
        obj = parse_jsonl_line(path, lineno, line)
        if obj is not None:
            yield lineno, obj


def _iter_delimited(
    path: Path, text: str, delimiter: str, converter: RecordConverter
) -> Iterator[tuple[int, dict[str, Any]]]:
    # TSV has no quoting (fields cannot hold tabs or newlines), so a '"' inside Tibetan or
    # Chinese text is just a character; CSV follows RFC 4180 quoting.
    kind = "TSV" if delimiter == "\t" else "CSV"
    quoting = csv.QUOTE_NONE if kind == "TSV" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        twice = next((h for i, h in enumerate(header) if h in header[:i]), None)
        if twice is not None:  # a row as a dict would keep the last of the two silently
            columns = [i + 1 for i, h in enumerate(header) if h == twice]
            raise DataError(f"{path}:1: column {twice!r} appears twice in the header (columns {columns}); rename one")
        missing = converter.missing_columns(header)
        if missing:
            wanted = ", ".join(f"{c!r} (for {f})" for f, c in missing)
            raise DataError(
                f"{path}:1: header has no column {wanted}; it has {header}. "
                f"Fix the header, or the source's `columns` mapping."
            )
        start = reader.line_num + 1
        for row in reader:
            lineno, start = start, reader.line_num + 1
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path}:{lineno}: {len(row)} field(s) but the header has {len(header)}"
                    + (" (a tab inside a TSV field?)" if kind == "TSV" else " (unquoted comma in a field?)")
                )
            yield lineno, dict(zip(header, row))
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: malformed {kind} ({err})") from None


def load_local(source: LocalSource, name: str | None = None, where: str = "data.sources") -> list[Example]:
    """Read a local JSONL/CSV/TSV file through the source's column mapping.

    Each row becomes an Example with id `<name>:<id column or line number>`. Malformed JSON,
    invalid UTF-8, missing columns and empty source/reference raise DataError naming file:line.
    """
    path = Path(source.path).expanduser()
    check_columns(source.columns, where)
    fmt = _local_format(path, source.format, where)
    name = name or path.stem
    text = read_text(path)
    converter = RecordConverter(name, source.columns)
    if fmt == "jsonl":
        records = iter_jsonl_records(path, text)
    else:
        records = _iter_delimited(path, text, "," if fmt == "csv" else "\t", converter)
    examples = [converter(record, f"{path}:{lineno}", str(lineno)) for lineno, record in records]
    if not examples:
        raise DataError(f"{path}: no examples (the file is empty or has only a header)")
    return examples
