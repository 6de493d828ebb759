"""The data layer: load parallel examples, split them by document, turn them into TRL datasets.

Everything downstream (training, rewards, evaluation) sees one record type, `Example`
(id, source, reference, doc_id, metadata), so a new data source only has to produce Examples.

Sources (see `semrl.config`):
- `local`:   a JSONL, CSV or TSV file with a column mapping; errors name the file and line.
- `hub`:     a Hugging Face hub dataset via `datasets.load_dataset`.
- `ntrex`:   NTREX-128 news (sentence pairs, or body -> headline pairs), read from the data
             directory or downloaded from GitHub at a pinned commit with sha256 checks.
- `lotsawa`: Lotsawa House Tibetan-Chinese liturgy (OpenPecha C0A2DD042), same policy.
- `mitra`:   MITRA-parallel Tibetan -> Buddhist Chinese (Kangyur), same policy.

Cleaning, in this order, each rule counted in the splits manifest (`cleaning`): the Tibetan side
of every source goes through `core.lang.normalize_tibetan` (folio markers, head marks, shad and
tsheg spellings); pairs left with an empty side, pairs over `data.max_source_chars` and repeated
(source, reference) pairs are dropped. The alignment filter (`data.filter`: length-ratio bounds,
encoder cosine) cleans the training splits only, after test and dev are drawn, so that a filter
never changes what a model is tested on (`filter_alignment`).

Splits are drawn by whole documents with a fixed seed (no document straddles two splits), test
first, then dev, cold_start and rl, so test and dev stay the same when training sizes change.
Documents keep whole texts apart, but the same sentence can recur across texts (MITRA pairs one
Tibetan text with many Chinese ones); so no training row (cold_start, rl) may have a source or a
reference that is, after normalisation (`leak_key`), the source or reference of a test or dev
row: such rows are dropped and counted (`leakage`).

Prompt convention (completion style): the prompt ends on a label without trailing whitespace
("...\nChinese:") and the completion starts with one space (" 你好。"). SentencePiece/BPE
tokenizers (Gemma, Llama, Qwen) fold a leading space into the next token, so the prompt's tokens
are an exact prefix of prompt+completion (what TRL's completion mask relies on) and the model
learns to emit the space itself; a prompt ending in a space would leave a lone space token that
never precedes a word in pretraining. Rewards read generated text through
`semrl.rewards.completion_text`; the evaluation keeps its first line, stripped
(`semrl.generation.clean_completion`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import random
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semrl.config.data import (
    DEFAULT_MAX_TEXT_CHARS,
    HubSource,
    LocalSource,
    MitraSource,
    NtrexSource,
    SourceConfig,
    SplitSizes,
    TaskConfig,
)
from semrl.config.experiment import ExperimentConfig
from semrl.core import lang
from semrl.core.errors import ConfigError, DataError
from semrl.core.io import atomic_path
from semrl.data.download import sha256_bytes, sha256_file
from semrl.data.example import Example, read_text
from semrl.data.prompts import prompt_template
from semrl.data.sources.hub import load_hub
from semrl.data.sources.local import iter_jsonl_records, load_local
from semrl.data.sources.lotsawa import load_lotsawa
from semrl.data.sources.mitra import load_mitra
from semrl.data.sources.ntrex import load_ntrex

if TYPE_CHECKING:
    pass


logger = logging.getLogger(__name__)


SPLIT_NAMES: tuple[str, ...] = ("cold_start", "rl", "dev", "test")
# Evaluation splits are drawn first so that they do not move when training sizes change.
ASSIGNMENT_ORDER: tuple[str, ...] = ("test", "dev", "cold_start", "rl")
EVALUATION_SPLITS: tuple[str, ...] = ("test", "dev")
# The cleaning rules in the order they apply to every example (keys of the manifest's `cleaning` counts).
CLEANING_RULES: tuple[str, ...] = ("empty_after_normalisation", "max_source_chars", "duplicate_pairs")
# The alignment filter's rules, applied to the training splits' candidates only (also in `cleaning`).
FILTER_RULES: tuple[str, ...] = ("length_ratio_below", "length_ratio_above", "cosine_below")
MANIFEST_VERSION = 1
# What the run's splits depend on; the runner compares this hash before reusing splits.
CONFIG_HASH_SECTIONS: tuple[str, ...] = ("seed", "task", "data")


def _source_names(config: ExperimentConfig) -> list[str]:
    """A readable, unique name per source: the id prefix of its examples."""
    names = []
    for src in config.data.sources:
        if isinstance(src, LocalSource):
            base = Path(src.path).stem
        elif isinstance(src, HubSource):
            base = src.id.rsplit("/", 1)[-1] + (f"-{src.config_name}" if src.config_name else "")
        elif isinstance(src, NtrexSource):
            base = "ntrex-headlines" if src.headlines else "ntrex"
        elif isinstance(src, MitraSource):
            base = "mitra"
        else:
            base = "lotsawa"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def _is_tibetan(code: str) -> bool:
    try:
        return lang.script_of_language(code) == "tibetan"
    except ValueError:  # a language semrl has no script for is not Tibetan
        return False


def _normalise_lines(text: str) -> str:
    # Line by line: headline bodies keep their line breaks.
    lines = (lang.normalize_tibetan(line) for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def normalise_examples(examples: Sequence[Example], task: TaskConfig) -> tuple[list[Example], dict[str, int]]:
    """The Tibetan side(s) of `examples` through `core.lang.normalize_tibetan` (line by line).

    Returns the examples (changed ones as copies) and counts: `tibetan_rows_changed`,
    `folio_markers_removed` (`lang.FOLIO_MARKER`) and `head_marks_removed` (`lang.HEAD_MARK`).
    """
    sides = [f for f, code in (("source", task.source_lang), ("reference", task.target_lang)) if _is_tibetan(code)]
    counts = {"tibetan_rows_changed": 0, "folio_markers_removed": 0, "head_marks_removed": 0}
    if not sides:
        return list(examples), counts
    out = []
    for ex in examples:
        update = {}
        for f in sides:
            text = getattr(ex, f)
            clean = _normalise_lines(text)
            if clean != text:
                update[f] = clean
                counts["folio_markers_removed"] += len(lang.FOLIO_MARKER.findall(text))
                counts["head_marks_removed"] += len(lang.HEAD_MARK.findall(text))
        if update:
            counts["tibetan_rows_changed"] += 1
            ex = dataclasses.replace(ex, **update)
        out.append(ex)
    return out, counts


def _chars(text: str) -> int:
    return len(re.sub(r"\s", "", text))


def _cosines(config: ExperimentConfig, examples: Sequence[Example]) -> list[float]:
    """Cosine of each example's source and reference under `data.filter.encoder` (else
    `rewards.encoder`), refused when the encoder cannot read one of the two languages."""
    import numpy as np

    from semrl.encoders import build_encoder, probe_language

    cfg = config.data.filter.encoder or config.rewards.encoder
    key = "data.filter.encoder" if config.data.filter.encoder else "rewards.encoder (data.filter.encoder is unset)"
    encoder = build_encoder(cfg)
    for code in (config.task.source_lang, config.task.target_lang):
        probe = probe_language(encoder, code)
        if probe is not None and not probe.passed:
            raise ConfigError(
                f"data.filter.min_cosine compares {lang.language_name(config.task.source_lang)} sources with "
                f"{lang.language_name(config.task.target_lang)} references, but {key}: {probe.summary()}. Set "
                f"data.filter.encoder to an encoder that reads both (backend: sentence-transformers, name: ...), "
                f"or drop min_cosine."
            )
    src = encoder.encode([ex.source for ex in examples])
    ref = encoder.encode([ex.reference for ex in examples])
    return np.einsum("ij,ij->i", src, ref).astype(float).tolist()


def clean_examples(
    config: ExperimentConfig, examples: list[Example], cap_key: str = "data.max_source_chars"
) -> tuple[list[Example], dict[str, int]]:
    """Normalise, then apply the dropping rules of CLEANING_RULES in order (the length cap and
    too_long of `config.data`); counts per rule. `cap_key` is the config key messages name for the
    length cap. The alignment filter is not applied here (see `filter_alignment`)."""
    examples, counts = normalise_examples(examples, config.task)
    dropped = dict.fromkeys(CLEANING_RULES, 0)

    def keep(rule: str, kept: list[Example], before: int) -> list[Example]:
        dropped[rule] = before - len(kept)
        return kept

    examples = keep(
        "empty_after_normalisation",
        [ex for ex in examples if ex.source.strip() and ex.reference.strip()],
        len(examples),
    )
    if not examples:
        raise DataError("every example has an empty source or reference after Tibetan normalisation")

    limit = config.data.max_source_chars or DEFAULT_MAX_TEXT_CHARS
    kept = [ex for ex in examples if len(ex.source) <= limit and len(ex.reference) <= limit]
    too_long = len(examples) - len(kept)
    if too_long and config.data.too_long == "fail":
        first = next(ex for ex in examples if len(ex.source) > limit or len(ex.reference) > limit)
        raise DataError(
            f"example {first.id!r} is {max(len(first.source), len(first.reference))} characters long, over "
            f"{cap_key}={limit} ({too_long} example(s) are); shorten them, raise the cap, or set "
            f"data.too_long: drop"
        )
    if too_long:
        logger.warning("%s=%d dropped %d of %d examples", cap_key, limit, too_long, len(examples))
    if not kept:
        raise DataError(f"{cap_key}={limit} drops all {len(examples)} examples; raise it")
    examples = keep("max_source_chars", kept, len(examples))

    seen: set[tuple[str, str]] = set()
    unique = []
    for ex in examples:
        if (ex.source, ex.reference) not in seen:
            seen.add((ex.source, ex.reference))
            unique.append(ex)
    examples = keep("duplicate_pairs", unique, len(examples))

    return examples, {**counts, **dropped}


def filter_alignment(config: ExperimentConfig, examples: Sequence[Example]) -> tuple[list[bool], dict[str, int]]:
    """Which of `examples` pass `config.data.filter` (length-ratio bounds, then the encoder cosine),
    and how many each rule of FILTER_RULES dropped. The splits apply it to training candidates only."""
    rules = config.data.filter
    keep = [True] * len(examples)
    dropped = dict.fromkeys(FILTER_RULES, 0)

    def apply(rule: str, passes: Sequence[bool]) -> None:
        for i, ok in enumerate(passes):
            if keep[i] and not ok:
                keep[i] = False
                dropped[rule] += 1

    if rules.min_length_ratio is not None:
        low = rules.min_length_ratio
        apply("length_ratio_below", [_chars(ex.source) >= low * _chars(ex.reference) for ex in examples])
    if rules.max_length_ratio is not None:
        high = rules.max_length_ratio
        apply("length_ratio_above", [_chars(ex.source) <= high * _chars(ex.reference) for ex in examples])
    if rules.min_cosine is not None:
        alive = [i for i, ok in enumerate(keep) if ok]
        passes = [True] * len(examples)
        for i, cosine in zip(alive, _cosines(config, [examples[i] for i in alive]) if alive else []):
            passes[i] = cosine >= rules.min_cosine
        apply("cosine_below", passes)
    return keep, dropped


def load_source(src: SourceConfig, task: TaskConfig, data_dir: Path | None, name: str, where: str) -> list[Example]:
    """One source's examples (not yet cleaned), ids prefixed by `name`, each example's
    `metadata["source"]` set to it; DataError naming `where` (its config key) when it has none."""
    if isinstance(src, LocalSource):
        loaded = load_local(src, name, where)
    elif isinstance(src, HubSource):
        loaded = load_hub(src, name, where)
    elif isinstance(src, NtrexSource):
        loaded = load_ntrex(src, task, data_dir, name)
    elif isinstance(src, MitraSource):
        loaded = load_mitra(src, task, data_dir, name)
    else:
        loaded = load_lotsawa(src, task, data_dir, name)
    if not loaded:
        raise DataError(f"{where} ({name}): no examples")
    for ex in loaded:
        ex.metadata.setdefault("source", name)
    return loaded


def _load_all(config: ExperimentConfig) -> tuple[list[Example], list[dict[str, Any]], dict[str, int]]:
    """Examples after cleaning, per-source info for the manifest, and the cleaning counts."""
    if not config.data.sources:
        raise ConfigError("data.sources is empty: configure at least one source")
    data_dir = config.resolved_data_dir()
    examples: list[Example] = []
    info: list[dict[str, Any]] = []
    for index, (src, name) in enumerate(zip(config.data.sources, _source_names(config))):
        loaded = load_source(src, config.task, data_dir, name, f"data.sources[{index}]")
        examples.extend(loaded)
        info.append({"name": name, "config": src.model_dump(mode="json"), "examples": len(loaded)})

    seen: set[str] = set()
    for ex in examples:
        if ex.id in seen:  # impossible by construction (unique names, unique ids per source)
            raise DataError(f"duplicate example id {ex.id!r}")
        seen.add(ex.id)
    kept, counts = clean_examples(config, examples)
    return kept, info, counts


def load_examples(config: ExperimentConfig) -> list[Example]:
    """All configured sources, in config order (rows in file order), with ids prefixed by the
    source name (unique), the Tibetan side normalised and the cleaning rules applied (see the
    module docstring)."""
    return _load_all(config)[0]


def resolve_split_sizes(sizes: SplitSizes, total: int) -> dict[str, int | None]:
    """Target example counts per split; None marks the -1 ('the rest') split."""
    targets: dict[str, int | None] = {}
    for name in SPLIT_NAMES:
        value = getattr(sizes, name)
        if value == -1 and not isinstance(value, float):
            targets[name] = None
        elif isinstance(value, float):
            # A requested fraction never rounds down to an empty split.
            targets[name] = max(1, round(value * total))
        else:
            targets[name] = int(value)
    return targets


def leak_key(text: str) -> str:
    """What two texts must share to count as the same sentence: `normalize_tibetan` (a no-op on
    other scripts but for NFC and spacing), then only letters, marks and digits, case-folded. So
    "山僧何處去？" and "山僧何處去" meet, and so do a Tibetan sentence with and without its shad."""
    text = lang.normalize_tibetan(text)
    return "".join(c for c in text if unicodedata.category(c)[0] in "LMN").casefold()


# Which of some training candidates to keep, and how many each rule dropped (`filter_alignment`).
TrainingFilter = Callable[[Sequence[Example]], tuple[list[bool], dict[str, int]]]


@dataclass
class SplitOutcome:
    """The splits, and what the leakage rule and the training filter removed from the training splits."""

    splits: dict[str, list[Example]]
    leakage: dict[str, int]
    filtered: dict[str, int] = dataclasses.field(default_factory=dict)


def _leak_filter(
    examples: Sequence[Example], held: Sequence[int], candidates: Sequence[int], leakage: dict[str, int]
) -> set[int]:
    """The indices of `candidates` to drop: rows whose source or reference key is the source or
    reference key of a held-out row (`held`). Adds to the counts in `leakage`."""
    keys = {k for i in held for k in (leak_key(examples[i].source), leak_key(examples[i].reference)) if k}
    drop = set()
    for i in candidates:
        src = leak_key(examples[i].source) in keys
        ref = leak_key(examples[i].reference) in keys
        if src or ref:
            drop.add(i)
            leakage["rows_removed"] += 1
            leakage["same_source"] += src
            leakage["same_reference"] += ref
    return drop


def remove_leaked(candidates: Sequence[Example], held: Sequence[Example]) -> tuple[list[Example], dict[str, int]]:
    """`candidates` less the rows whose source or reference is (`leak_key`) the source or reference
    of a `held` row, and the counts of what was dropped (`rows_removed`, `same_source`,
    `same_reference`), as the splits' leakage rule counts them."""
    rows = [*held, *candidates]
    leakage = {"rows_removed": 0, "same_source": 0, "same_reference": 0}
    drop = _leak_filter(rows, range(len(held)), range(len(held), len(rows)), leakage)
    return [ex for i, ex in enumerate(candidates, start=len(held)) if i not in drop], leakage


def assign_splits(
    examples: Sequence[Example],
    sizes: SplitSizes,
    seed: int,
    training_unit: str = "document",
    eval_document_max_examples: int | None = None,
    training_filter: TrainingFilter | None = None,
) -> SplitOutcome:
    """Split by document, then keep the training splits free of test/dev sentences.

    Documents (sorted by id, then shuffled with `seed`) fill test, dev, cold_start and rl in that
    order, each until it holds at least its target (a document is never split, so a split may
    overshoot by less than one document); the -1 split takes what is left. With `training_unit`
    'example', cold_start and rl are filled row by row (a seeded order of the rows test and dev
    left), so their counts are met exactly. Rows of the training splits whose source or reference
    is a test or dev sentence (`leak_key`) are dropped before the training splits are filled (after,
    when test or dev is the -1 split); `leakage` counts them. `eval_document_max_examples` passes
    larger documents over when filling test and dev (they stay in order for the training splits).
    `training_filter` (e.g. `filter_alignment` bound to a config) drops training candidates at the
    same point as the leakage rule, so test and dev do not depend on it; its counts are `filtered`.
    Within a split, examples keep their input order. DataError when the data cannot fill the
    requested sizes.
    """
    # Hand-written: datasets' train_test_split splits rows; keeping documents whole needs a grouped split.
    total = len(examples)
    if total == 0:
        raise DataError("no examples to split")
    docs: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        docs.setdefault(ex.doc_id, []).append(i)
    order = sorted(docs)
    random.Random(seed).shuffle(order)
    targets = resolve_split_sizes(sizes, total)
    rest = [name for name in SPLIT_NAMES if targets[name] is None]
    by_row = training_unit == "example"
    if by_row and any(name in EVALUATION_SPLITS for name in rest):
        raise ConfigError(
            f"data.training_unit 'example' fills the training splits from what test and dev leave, so data.splits."
            f"{rest[0]} cannot be -1; give it a size and set cold_start or rl to -1"
        )
    leakage = {"rows_removed": 0, "same_source": 0, "same_reference": 0}
    filtered: dict[str, int] = {}

    pool = list(reversed(order))  # pop() from the end = take from the front of `order`
    taken: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    done: list[str] = []

    def size(doc_list: Sequence[str]) -> int:
        return sum(len(docs[d]) for d in doc_list)

    def fill(name: str, target: int, max_doc: int | None = None) -> None:
        count = 0
        passed_over: list[str] = []
        while count < target:
            if pool and max_doc is not None and len(docs[pool[-1]]) > max_doc:
                passed_over.append(pool.pop())
                continue
            if not pool:
                pool.extend(reversed(passed_over))
                dropped = leakage["rows_removed"] + sum(filtered.values())
                remaining = total - dropped - sum(size(taken[n]) for n in done)
                raise DataError(
                    f"data.splits.{name} asks for {target} examples, but only {remaining} "
                    f"remain after {', '.join(f'{n} ({size(taken[n])})' for n in done) or 'nothing'} "
                    f"out of {total} examples in {len(docs)} documents (splits take whole documents"
                    f"{'' if not leakage['rows_removed'] else '; ' + str(leakage['rows_removed']) + ' training rows repeat a test/dev sentence'}"
                    f"{'' if not filtered else '; ' + str(sum(filtered.values())) + ' training rows dropped by data.filter'}"
                    f"{'' if not passed_over else f'; {len(passed_over)} documents are over data.eval_document_max_examples={max_doc}'}). "
                    f"Lower data.splits.{name} or another split{', raise data.eval_document_max_examples' if passed_over else ''}, or add data."
                )
            doc = pool.pop()
            taken[name].append(doc)
            count += len(docs[doc])
        pool.extend(reversed(passed_over))  # back at the front, in their order
        done.append(name)

    def drop_leaks_from(doc_list: list[str]) -> None:
        held = [i for n in EVALUATION_SPLITS for d in taken[n] for i in docs[d]]
        candidates = [i for d in doc_list for i in docs[d]]
        drop = _leak_filter(examples, held, candidates, leakage)
        if training_filter is not None:
            alive = [i for i in candidates if i not in drop]
            keep, counts = training_filter([examples[i] for i in alive])
            drop |= {i for i, ok in zip(alive, keep) if not ok}
            for rule, n in counts.items():
                filtered[rule] = filtered.get(rule, 0) + n
        for d in doc_list:
            docs[d] = [i for i in docs[d] if i not in drop]
        doc_list[:] = [d for d in doc_list if docs[d]]

    for name in EVALUATION_SPLITS:
        if targets[name] is not None:
            fill(name, targets[name], eval_document_max_examples)
    evaluation_known = not any(name in EVALUATION_SPLITS for name in rest)
    if evaluation_known:
        drop_leaks_from(pool)

    rows: dict[str, list[int]] = {}
    if by_row:
        free = [i for d in reversed(pool) for i in docs[d]]
        random.Random(seed).shuffle(free)
        for name in ("cold_start", "rl"):
            target = targets[name]
            if target is None:
                continue
            if target > len(free):
                raise DataError(
                    f"data.splits.{name} asks for {target} examples, but only {len(free)} remain after test "
                    f"({size(taken['test'])}), dev ({size(taken['dev'])}){', ' + ', '.join(f'{n} ({len(rows[n])})' for n in rows) if rows else ''}"
                    f", {leakage['rows_removed']} training rows that repeat a test/dev sentence and "
                    f"{sum(filtered.values())} dropped by data.filter. Lower "
                    f"data.splits.{name}, or add data."
                )
            rows[name], free = free[:target], free[target:]
        if rest:
            rows[rest[0]] = free
            if not free:
                raise DataError(
                    f"data.splits.{rest[0]} is -1 (the rest) but nothing is left after the other splits; lower "
                    f"them, or set {rest[0]}: 0."
                )
        pool = []
    else:
        for name in ("cold_start", "rl"):
            if targets[name] is not None:
                fill(name, targets[name])
        if rest:
            taken[rest[0]] = list(reversed(pool))
            if not pool:
                raise DataError(
                    f"data.splits.{rest[0]} is -1 (the rest) but nothing is left: the other splits take all "
                    f"{total} examples in {len(docs)} documents. Lower them, or set {rest[0]}: 0."
                )
            pool = []
        if not evaluation_known:
            for name in ("cold_start", "rl"):
                drop_leaks_from(taken[name])
    if pool:
        logger.info("%d documents (%d examples) fit no split and are unused", len(pool), size(pool))
    for name in SPLIT_NAMES:
        rows.setdefault(name, [i for d in taken[name] for i in docs[d]])
    if leakage["rows_removed"]:
        logger.info(
            "%d training rows dropped: their source or reference is a test/dev sentence", leakage["rows_removed"]
        )
    return SplitOutcome({name: [examples[i] for i in sorted(rows[name])] for name in SPLIT_NAMES}, leakage, filtered)


def split_examples(
    examples: Sequence[Example],
    sizes: SplitSizes,
    seed: int,
    training_unit: str = "document",
    eval_document_max_examples: int | None = None,
) -> dict[str, list[Example]]:
    """Split by document: returns {'cold_start', 'rl', 'dev', 'test'} -> examples (see
    `assign_splits`, which also counts the training rows the leakage rule removed)."""
    return assign_splits(examples, sizes, seed, training_unit, eval_document_max_examples).splits


def split_summary(splits: Mapping[str, Sequence[Example]]) -> list[dict[str, Any]]:
    """One row per split: split, examples, documents, mean source/reference length (characters)."""
    ordered = [n for n in SPLIT_NAMES if n in splits] + [n for n in splits if n not in SPLIT_NAMES]
    rows = []
    for name in ordered:
        exs = splits[name]
        n = len(exs)
        rows.append(
            {
                "split": name,
                "examples": n,
                "documents": len({ex.doc_id for ex in exs}),
                "mean_source_chars": sum(len(ex.source) for ex in exs) / n if n else 0.0,
                "mean_reference_chars": sum(len(ex.reference) for ex in exs) / n if n else 0.0,
            }
        )
    return rows


# What each count of a splits manifest means, for `cleaning_lines`.
_CLEANING_TEXT: dict[str, str] = {
    "tibetan_rows_changed": "example(s) had their Tibetan normalised (core.lang.normalize_tibetan)",
    "folio_markers_removed": "folio marker(s) removed",
    "head_marks_removed": "head mark(s) removed",
    "empty_after_normalisation": "example(s) dropped: a side was empty after normalisation",
    "max_source_chars": "example(s) dropped: over the length cap (data.max_source_chars)",
    "duplicate_pairs": "example(s) dropped: a repeated (source, reference) pair",
    "length_ratio_below": "training example(s) dropped: under data.filter.min_length_ratio",
    "length_ratio_above": "training example(s) dropped: over data.filter.max_length_ratio",
    "cosine_below": "training example(s) dropped: under data.filter.min_cosine",
}


def cleaning_lines(manifest: Mapping[str, Any]) -> list[str]:
    """One line per non-zero count of a splits manifest's cleaning and leakage rules."""
    cleaning = manifest.get("cleaning") or {"max_source_chars": manifest.get("dropped_by_max_source_chars", 0)}
    lines = [f"{n:,} {_CLEANING_TEXT.get(rule, rule)}" for rule, n in cleaning.items() if n]
    leak = manifest.get("leakage") or {}
    if leak.get("rows_removed"):
        lines.append(
            f"{leak['rows_removed']:,} training example(s) dropped: their source ({leak['same_source']:,}) or "
            f"reference ({leak['same_reference']:,}) is a test/dev sentence"
        )
    return lines


def _jsonl_bytes(examples: Sequence[Example]) -> bytes:
    return "".join(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n" for ex in examples).encode("utf-8")


def prepare_data(config: ExperimentConfig, out_dir: Path) -> dict[str, list[Example]]:
    """Load, filter and split the configured data; write `out_dir/splits/` atomically.

    The folder holds `<split>.jsonl` (one `Example.to_dict()` per line) for cold_start, rl, dev
    and test, and `manifest.json` (seed, requested and obtained sizes, sources, what each cleaning
    rule and the leakage rule removed, per-split sha256, config hash of the seed/task/data
    sections). It appears complete or not at all.
    """
    prompt_template(config.task)  # a bad template fails here, not when training builds prompts
    examples, sources, cleaning = _load_all(config)
    training_filter = functools.partial(filter_alignment, config) if config.data.filter.active else None
    outcome = assign_splits(
        examples,
        config.data.splits,
        config.seed,
        config.data.training_unit,
        config.data.eval_document_max_examples,
        training_filter,
    )
    splits = outcome.splits
    cleaning = {**cleaning, **dict.fromkeys(FILTER_RULES, 0), **outcome.filtered}
    split_info: dict[str, Any] = {}
    blobs = {name: _jsonl_bytes(splits[name]) for name in SPLIT_NAMES}
    for name in SPLIT_NAMES:
        split_info[name] = {
            "file": f"{name}.jsonl",
            "examples": len(splits[name]),
            "documents": len({ex.doc_id for ex in splits[name]}),
            "sha256": sha256_bytes(blobs[name]),
        }
    used = sum(info["examples"] for info in split_info.values())
    # With training_unit 'example' one document can feed several splits: count each once.
    used_docs = len({ex.doc_id for name in SPLIT_NAMES for ex in splits[name]})
    all_docs = len({ex.doc_id for ex in examples})
    manifest = {
        "format": MANIFEST_VERSION,
        "seed": config.seed,
        "config_hash": config.hash(*CONFIG_HASH_SECTIONS),
        "config_hash_sections": list(CONFIG_HASH_SECTIONS),
        "task": config.task.model_dump(mode="json"),
        "sources": sources,
        "max_source_chars": config.data.max_source_chars,
        "dropped_by_max_source_chars": cleaning["max_source_chars"],
        "cleaning": cleaning,
        "leakage": outcome.leakage,
        "training_unit": config.data.training_unit,
        "eval_document_max_examples": config.data.eval_document_max_examples,
        "total": {"examples": len(examples), "documents": all_docs},
        "sizes_requested": config.data.splits.model_dump(mode="json"),
        "target_examples": resolve_split_sizes(config.data.splits, len(examples)),
        "splits": split_info,
        "unused": {"examples": len(examples) - used, "documents": all_docs - used_docs},
    }
    with atomic_path(Path(out_dir) / "splits") as tmp:
        tmp.mkdir()
        for name in SPLIT_NAMES:
            (tmp / f"{name}.jsonl").write_bytes(blobs[name])
        (tmp / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return splits


def read_examples(path: Path) -> list[Example]:
    """Read a JSONL file of `Example.to_dict()` lines; DataError names file:line on bad input."""
    path = Path(path)
    text = read_text(path)
    examples = []
    for lineno, obj in iter_jsonl_records(path, text):
        try:
            examples.append(Example.from_dict(obj))
        except DataError as err:
            raise DataError(f"{path}:{lineno}: {err}") from None
    return examples


def load_splits(out_dir: Path) -> dict[str, list[Example]]:
    """Read `out_dir/splits/<split>.jsonl` back. DataError if a file is missing, malformed, or
    (when the manifest is there) differs from the sha256 recorded when it was written."""
    folder = Path(out_dir) / "splits"
    if not folder.is_dir():
        raise DataError(f"{folder}: no splits here; run `semrl data prepare CONFIG --out {out_dir}` first")
    manifest_path = folder / "manifest.json"
    manifest: dict[str, Any] = {}
    if manifest_path.is_file():
        try:
            manifest = json.loads(read_text(manifest_path))
        except json.JSONDecodeError as err:
            raise DataError(f"{manifest_path}:{err.lineno}: malformed JSON ({err.msg})") from None
    splits = {}
    for name in SPLIT_NAMES:
        path = folder / f"{name}.jsonl"
        if not path.is_file():
            raise DataError(f"{path}: missing; re-run `semrl data prepare` (delete {folder} first)")
        expected = manifest.get("splits", {}).get(name, {}).get("sha256")
        if expected and sha256_file(path) != expected:
            raise DataError(
                f"{path}: changed since it was prepared (sha256 differs from {manifest_path}); "
                f"delete {folder} and re-run `semrl data prepare`"
            )
        splits[name] = read_examples(path)
    return splits
