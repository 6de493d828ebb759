"""Extra test sets (`evaluation.extra_tests`): further data every method is evaluated on beside the
run's own test split, e.g. NTREX-128 news beside a run trained on the Buddhist canon (an
out-of-domain view of the task, and of the tax).

An extra test is read as `data.sources` are (`splits.load_source`: the same loaders, data
directory and Tibetan normaliser) and cleaned by the same rules (`splits.clean_examples`: empty
sides, the length cap, repeated pairs; not the alignment filter, which is for the training
corpus). It is not split: all of it is test. Rows whose source or reference is (`splits.leak_key`)
the source or reference of a row of the run's training splits (cold_start, rl) are dropped and
counted (`splits.remove_leaked`), so no method was trained on what it is tested on. Then
`limit` rows are kept: a fixed seeded subset, in file order (`general.seeded_indices`).

The rows are written once to `RUN_DIR/splits/extra/<name>/test.jsonl` with a manifest (what was
loaded, dropped and kept, and the file's sha256), so that every method of the run, and every
later evaluation of it, reads the same rows. They are made again when the test's config, the
task, the seed, the data section or the training splits change (the manifest's `key`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semrl.config.evaluation import ExtraTestConfig
from semrl.config.experiment import ExperimentConfig
from semrl.config.stages import TRAINING_SPLITS
from semrl.core.errors import DataError, SemrlError
from semrl.core.io import atomic_path, read_manifest
from semrl.core.layout import RunLayout
from semrl.core.provenance import digest
from semrl.data.download import sha256_bytes, sha256_file
from semrl.data.example import Example
from semrl.data.general import seeded_indices
from semrl.data.splits import (
    CLEANING_RULES,
    CONFIG_HASH_SECTIONS,
    clean_examples,
    load_source,
    read_examples,
    remove_leaked,
)

EXTRA_MANIFEST_VERSION = 1


@dataclass
class ExtraTest:
    """One extra test set: its rows and its manifest."""

    name: str
    examples: list[Example]
    manifest: dict[str, Any]


def extra_test_key(config: ExperimentConfig, test: ExtraTestConfig, layout: RunLayout) -> str:
    """What an extra test's rows depend on: its config, the run's seed, task and data sections and
    the training splits' files (the leakage rule reads them)."""
    training = {
        split: sha256_file(layout.split_file(split)) if layout.split_file(split).is_file() else None
        for split in TRAINING_SPLITS
    }
    return digest(
        {
            "test": test.model_dump(mode="json"),
            "run": config.hash(*CONFIG_HASH_SECTIONS),
            "training": training,
            "format": EXTRA_MANIFEST_VERSION,
        }
    )


def prepare_extra_tests(config: ExperimentConfig, run_dir: str | Path) -> dict[str, ExtraTest]:
    """Every extra test of `config` by name, in config order: read from the run directory when its
    rows were made for this config and these splits, else made and written there (atomically).

    The run's splits must exist. ConfigError or DataError naming `evaluation.extra_tests[i]` when a
    test cannot be read or nothing of it is left; DataError when its stored rows were edited.
    """
    layout = RunLayout(Path(run_dir))
    out: dict[str, ExtraTest] = {}
    training: list[Example] | None = None
    for index, test in enumerate(config.evaluation.extra_tests):
        key = extra_test_key(config, test, layout)
        stored = _read_stored(layout, test.name, key)
        if stored is None:
            if training is None:
                training = [ex for split in TRAINING_SPLITS for ex in _read_split(layout, split)]
            stored = _make(config, index, test, key, training, layout)
        out[test.name] = stored
    return out


def _read_split(layout: RunLayout, split: str) -> list[Example]:
    path = layout.split_file(split)
    if not path.is_file():
        raise DataError(
            f"{path}: missing; the extra tests (evaluation.extra_tests) are checked against the run's training "
            f"splits: run `semrl data prepare CONFIG --out {layout.root}` first"
        )
    return read_examples(path)


def _read_stored(layout: RunLayout, name: str, key: str) -> ExtraTest | None:
    """The stored rows of an extra test when they were made under `key`, else None."""
    manifest = read_manifest(layout.extra_test_manifest(name))
    path = layout.extra_test_file(name)
    if manifest is None or manifest.get("key") != key or not path.is_file():
        return None
    if sha256_file(path) != manifest.get("sha256"):
        raise DataError(
            f"{path}: changed since it was made (sha256 differs from {layout.extra_test_manifest(name)}); delete "
            f"{layout.extra_test(name)} and it is made again from evaluation.extra_tests"
        )
    return ExtraTest(name, read_examples(path), manifest)


def _make(
    config: ExperimentConfig,
    index: int,
    test: ExtraTestConfig,
    key: str,
    training: list[Example],
    layout: RunLayout,
) -> ExtraTest:
    where = f"evaluation.extra_tests[{index}]"
    cap = test.max_source_chars or config.data.max_source_chars
    cap_key = f"{where}.max_source_chars" + ("" if test.max_source_chars else " (unset, so data.max_source_chars)")
    # The run's cleaning rules with this test's cap; a row over it is dropped (counted), never a
    # failure (the alignment filter is the training splits', so it does not apply here).
    cleaning_config = config.model_copy(
        update={"data": config.data.model_copy(update={"max_source_chars": cap, "too_long": "drop"})}
    )
    try:
        loaded = load_source(test.source, config.task, config.resolved_data_dir(), test.name, f"{where}.source")
        cleaned, cleaning = clean_examples(cleaning_config, loaded, cap_key)
    except SemrlError as err:
        if where in str(err):
            raise
        raise type(err)(f"{where} ({test.name}): {err}") from None
    kept, leakage = remove_leaked(cleaned, training)
    if not kept:
        raise DataError(
            f"{where} ({test.name}): all {len(cleaned)} of its rows have a source or reference in the run's training "
            "splits (cold_start, rl), so none is out of the training data; name another source"
        )
    chosen = [kept[i] for i in seeded_indices(kept, test.limit, config.seed)]
    blob = "".join(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n" for ex in chosen).encode("utf-8")
    manifest = {
        "format": EXTRA_MANIFEST_VERSION,
        "name": test.name,
        "key": key,
        "source": test.source.model_dump(mode="json"),
        "limit": test.limit,
        "max_source_chars": cap,
        "loaded": len(loaded),
        "cleaning": cleaning,
        "leakage": leakage,
        "available": len(kept),
        "examples": len(chosen),
        "documents": len({ex.doc_id for ex in chosen}),
        "seed": config.seed,
        "sha256": sha256_bytes(blob),
    }
    with atomic_path(layout.extra_test(test.name)) as tmp:
        tmp.mkdir()
        (tmp / layout.extra_test_file(test.name).name).write_bytes(blob)
        (tmp / layout.extra_test_manifest(test.name).name).write_text(
            json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
    return ExtraTest(test.name, chosen, manifest)


def extra_test_line(manifest: dict[str, Any]) -> str:
    """An extra test in one sentence: what it evaluates, out of how many rows, and what was dropped."""
    dropped = sum(n for rule, n in (manifest.get("cleaning") or {}).items() if rule in CLEANING_RULES)
    leak = manifest.get("leakage") or {}
    available = manifest["available"]
    subset = f"a seeded subset of the {available:,}" if manifest["examples"] < available else f"all {available:,}"
    cleaned = f"; {dropped:,} dropped by cleaning" if dropped else ""
    if leak.get("rows_removed"):
        leaked = (
            f"; {leak['rows_removed']:,} dropped because their source ({leak['same_source']:,}) or reference "
            f"({leak['same_reference']:,}) is in the run's training splits"
        )
    else:
        leaked = "; none was in the run's training splits"
    return (
        f"Extra test {manifest['name']}: {manifest['examples']:,} examples ({subset} left of "
        f"{manifest['loaded']:,} loaded{cleaned}{leaked})."
    )
