"""A Hugging Face hub dataset through `datasets.load_dataset`, with a column mapping."""

from __future__ import annotations

from typing import TYPE_CHECKING

from semrl.config.data import (
    HubSource,
)
from semrl.core.errors import DataError
from semrl.data.example import Example, RecordConverter, check_columns

if TYPE_CHECKING:
    pass


def load_hub(source: HubSource, name: str | None = None, where: str = "data.sources") -> list[Example]:
    """Load a hub dataset with `datasets.load_dataset` and map its columns to Examples.

    Offline (or with the hub unreachable) this raises DataError explaining how to use a local
    file instead.
    """
    import datasets

    check_columns(source.columns, where)
    name = name or source.id.rsplit("/", 1)[-1]
    label = f"hub dataset {source.id!r}" + (f" ({source.config_name})" if source.config_name else "")
    try:
        files = {"data_files": source.data_files} if source.data_files is not None else {}
        ds = datasets.load_dataset(source.id, source.config_name, split=source.split, revision=source.revision, **files)
    except ConnectionError as err:
        raise DataError(
            f"{where}: the Hugging Face hub is unreachable, so {label} cannot be loaded ({err}). "
            f"Offline, save the data as a JSONL/CSV/TSV file and use a `kind: local` source with the same "
            f"`columns`, or load it once while online so that the datasets cache has it."
        ) from None
    except FileNotFoundError as err:
        raise DataError(
            f"{where}: {label} was not found ({err}). Check the id and config_name; gated datasets need "
            f"`hf auth login`."
        ) from None
    except ValueError as err:  # unknown split or config name
        raise DataError(f"{where}: {label} split {source.split!r}: {err}") from None
    converter = RecordConverter(name, source.columns)
    missing = converter.missing_columns(ds.column_names)
    if missing:
        wanted = ", ".join(f"{c!r} (for {f})" for f, c in missing)
        raise DataError(
            f"{where}: {label} split {source.split!r} has no column {wanted}; it has {ds.column_names}. "
            f"Set the source's `columns` mapping."
        )
    examples = [converter(row, f"{label} split {source.split!r} row {i}", str(i)) for i, row in enumerate(ds)]
    if not examples:
        raise DataError(f"{where}: {label} split {source.split!r} is empty")
    return examples
