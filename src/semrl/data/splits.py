"""The data layer: load parallel examples, split them by document, turn them into TRL datasets.

Everything downstream (training, rewards, evaluation) sees one record type, `Example`
(id, source, reference, doc_id, metadata), so a new data source only has to produce Examples.

Sources (see `semrl.config`):
- `local`:   a JSONL, CSV or TSV file with a column mapping; errors name the file and line.
- `hub`:     a Hugging Face hub dataset via `datasets.load_dataset`.
- `ntrex`:   NTREX-128 news (sentence pairs, or body -> headline pairs), read from the data
             directory or downloaded from GitHub at a pinned commit with sha256 checks.
- `lotsawa`: Lotsawa House Tibetan-Chinese liturgy (OpenPecha C0A2DD042), same policy.

Splits are drawn by whole documents with a fixed seed (no document straddles two splits), test
first, then dev, cold_start and rl, so test and dev stay the same when training sizes change.

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

import json
import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semrl.config.data import (
    DEFAULT_MAX_TEXT_CHARS,
    HubSource,
    LocalSource,
    NtrexSource,
    SplitSizes,
)
from semrl.config.experiment import ExperimentConfig
from semrl.core.errors import ConfigError, DataError
from semrl.core.io import atomic_path
from semrl.data.download import sha256_bytes, sha256_file
from semrl.data.example import Example, read_text
from semrl.data.prompts import prompt_template
from semrl.data.sources.hub import load_hub
from semrl.data.sources.local import iter_jsonl_records, load_local
from semrl.data.sources.lotsawa import load_lotsawa
from semrl.data.sources.ntrex import load_ntrex

if TYPE_CHECKING:
    pass


logger = logging.getLogger(__name__)


SPLIT_NAMES: tuple[str, ...] = ("cold_start", "rl", "dev", "test")
# Evaluation splits are drawn first so that they do not move when training sizes change.
ASSIGNMENT_ORDER: tuple[str, ...] = ("test", "dev", "cold_start", "rl")
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
        else:
            base = "lotsawa"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def _load_all(config: ExperimentConfig) -> tuple[list[Example], list[dict[str, Any]], int]:
    """Examples after filtering, per-source info for the manifest, and the number filtered out."""
    if not config.data.sources:
        raise ConfigError("data.sources is empty: configure at least one source")
    data_dir = config.resolved_data_dir()
    examples: list[Example] = []
    info: list[dict[str, Any]] = []
    for index, (src, name) in enumerate(zip(config.data.sources, _source_names(config))):
        where = f"data.sources[{index}]"
        if isinstance(src, LocalSource):
            loaded = load_local(src, name, where)
        elif isinstance(src, HubSource):
            loaded = load_hub(src, name, where)
        elif isinstance(src, NtrexSource):
            loaded = load_ntrex(src, config.task, data_dir, name)
        else:
            loaded = load_lotsawa(src, config.task, data_dir, name)
        if not loaded:
            raise DataError(f"{where} ({name}): no examples")
        for ex in loaded:
            ex.metadata.setdefault("source", name)
        examples.extend(loaded)
        info.append({"name": name, "config": src.model_dump(mode="json"), "examples": len(loaded)})

    seen: set[str] = set()
    for ex in examples:
        if ex.id in seen:  # impossible by construction (unique names, unique ids per source)
            raise DataError(f"duplicate example id {ex.id!r}")
        seen.add(ex.id)

    limit = config.data.max_source_chars or DEFAULT_MAX_TEXT_CHARS
    kept = [ex for ex in examples if len(ex.source) <= limit and len(ex.reference) <= limit]
    dropped = len(examples) - len(kept)
    if dropped and config.data.too_long == "fail":
        first = next(ex for ex in examples if len(ex.source) > limit or len(ex.reference) > limit)
        raise DataError(
            f"example {first.id!r} is {max(len(first.source), len(first.reference))} characters long, over "
            f"data.max_source_chars={limit} ({dropped} example(s) are); shorten them, raise the cap, or set "
            f"data.too_long: drop"
        )
    if dropped:
        logger.warning("data.max_source_chars=%d dropped %d of %d examples", limit, dropped, len(examples))
    if examples and not kept:
        raise DataError(f"data.max_source_chars={limit} drops all {len(examples)} examples; raise it")
    return kept, info, dropped


def load_examples(config: ExperimentConfig) -> list[Example]:
    """All configured sources, in config order (rows in file order), with ids prefixed by the
    source name (unique) and `data.max_source_chars` applied."""
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


def split_examples(examples: Sequence[Example], sizes: SplitSizes, seed: int) -> dict[str, list[Example]]:
    """Split by document: returns {'cold_start', 'rl', 'dev', 'test'} -> examples.

    Documents (sorted by id, then shuffled with `seed`) fill test, dev, cold_start and rl in that
    order, each until it holds at least its target (a document is never split, so a split may
    overshoot by less than one document); the -1 split takes what is left. Within a split,
    examples keep their input order. DataError when the data cannot fill the requested sizes.
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

    pool = list(reversed(order))  # pop() from the end = take from the front of `order`
    taken: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    done: list[str] = []
    for name in ASSIGNMENT_ORDER:
        target = targets[name]
        if target is None:
            continue
        count = 0
        while count < target:
            if not pool:
                remaining = total - sum(len(docs[d]) for n in done for d in taken[n])
                raise DataError(
                    f"data.splits.{name} asks for {target} examples, but only {remaining} "
                    f"remain after {', '.join(f'{n} ({sum(len(docs[d]) for d in taken[n])})' for n in done) or 'nothing'} "
                    f"out of {total} examples in {len(docs)} documents (splits take whole documents). "
                    f"Lower data.splits.{name} or another split, or add data."
                )
            doc = pool.pop()
            taken[name].append(doc)
            count += len(docs[doc])
        done.append(name)
    rest = [name for name in SPLIT_NAMES if targets[name] is None]
    if rest:
        taken[rest[0]] = list(reversed(pool))
        if not pool:
            raise DataError(
                f"data.splits.{rest[0]} is -1 (the rest) but nothing is left: the other splits take all "
                f"{total} examples in {len(docs)} documents. Lower them, or set {rest[0]}: 0."
            )
    elif pool:
        logger.info(
            "%d documents (%d examples) fit no split and are unused", len(pool), sum(len(docs[d]) for d in pool)
        )

    return {name: [examples[i] for i in sorted(i for d in taken[name] for i in docs[d])] for name in SPLIT_NAMES}


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


def _jsonl_bytes(examples: Sequence[Example]) -> bytes:
    return "".join(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n" for ex in examples).encode("utf-8")


def prepare_data(config: ExperimentConfig, out_dir: Path) -> dict[str, list[Example]]:
    """Load, filter and split the configured data; write `out_dir/splits/` atomically.

    The folder holds `<split>.jsonl` (one `Example.to_dict()` per line) for cold_start, rl, dev
    and test, and `manifest.json` (seed, requested and obtained sizes, sources, per-split sha256,
    config hash of the seed/task/data sections). It appears complete or not at all.
    """
    prompt_template(config.task)  # a bad template fails here, not when training builds prompts
    examples, sources, dropped = _load_all(config)
    splits = split_examples(examples, config.data.splits, config.seed)
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
    used_docs = sum(info["documents"] for info in split_info.values())
    all_docs = len({ex.doc_id for ex in examples})
    manifest = {
        "format": MANIFEST_VERSION,
        "seed": config.seed,
        "config_hash": config.hash(*CONFIG_HASH_SECTIONS),
        "config_hash_sections": list(CONFIG_HASH_SECTIONS),
        "task": config.task.model_dump(mode="json"),
        "sources": sources,
        "max_source_chars": config.data.max_source_chars,
        "dropped_by_max_source_chars": dropped,
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
