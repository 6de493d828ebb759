"""The pairs a reward encoder trains and is evaluated on (never a dev or test document in training)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from semrl.config.encoder import EncoderTrainingConfig
from semrl.config.experiment import ExperimentConfig
from semrl.core.errors import ConfigError, DataError
from semrl.data.example import Example
from semrl.data.splits import load_examples

# What an encoder's training depends on: a change to any of these makes a finished one stale.
ENCODER_HASH_SECTIONS: tuple[str, ...] = ("seed", "task", "data", "encoder")
TRAINING_SPLITS = ("cold_start", "rl")


@dataclass
class EncoderPairs:
    """Training and held-out pairs, and their languages (`langs[0]` on the source side)."""

    train: list[Example]
    test: list[Example]
    langs: tuple[str, str]
    info: dict[str, Any] = field(default_factory=dict)


def encoder_config_hash(config: ExperimentConfig) -> str:
    return config.hash(*ENCODER_HASH_SECTIONS)


def require_encoder_section(config: ExperimentConfig) -> EncoderTrainingConfig:
    if config.encoder is None:
        raise ConfigError(
            "the config has no `encoder:` section, so there is no encoder to train; add one "
            "(configs/encoder-bo-zh.yaml shows every key)"
        )
    return config.encoder


def encoder_pairs(config: ExperimentConfig, splits: dict[str, list[Example]]) -> EncoderPairs:
    """The pairs the encoder trains and is evaluated on, never a dev or test document in training.

    Without `encoder.sources`: the run's cold_start + rl splits train it and its test split
    evaluates it. With them: their examples are assigned by `doc_id` to the run's splits: those of
    the run's test documents evaluate it, those of its dev documents are left out, the rest train.
    """
    enc = require_encoder_section(config)
    langs = tuple(enc.pair_langs or (config.task.source_lang, config.task.target_lang))
    if enc.sources is None:
        if tuple(langs) != (config.task.source_lang, config.task.target_lang):
            raise ConfigError(
                f"encoder.pair_langs {list(langs)} differs from the task's languages, but encoder.sources is "
                f"null (the run's own {config.task.source_lang}->{config.task.target_lang} pairs); set encoder.sources"
            )
        train = [ex for split in TRAINING_SPLITS for ex in splits.get(split, [])]
        test = list(splits.get("test", []))
        info = {"from": "the run's splits", "train_splits": list(TRAINING_SPLITS), "test_split": "test"}
    else:
        pair_config = config.model_copy(deep=True)
        pair_config.task = config.task.model_copy(
            update={"kind": "translation", "source_lang": langs[0], "target_lang": langs[1]}
        )
        # The run's length cap is for the policy's prompts; the encoder reads every pair.
        pair_config.data = config.data.model_copy(update={"sources": list(enc.sources), "max_source_chars": None})
        examples = load_examples(pair_config)
        test_docs = {ex.doc_id for ex in splits.get("test", [])}
        held = test_docs | {ex.doc_id for ex in splits.get("dev", [])}
        train = [ex for ex in examples if ex.doc_id not in held]
        test = [ex for ex in examples if ex.doc_id in test_docs]
        info = {
            "from": "encoder.sources",
            "sources": [s.model_dump(mode="json") for s in enc.sources],
            "left_out_dev_documents": len(held - test_docs),
        }
    if enc.max_train_pairs is not None and len(train) > enc.max_train_pairs:
        train = random.Random(config.seed).sample(train, enc.max_train_pairs)
    if enc.eval_limit is not None:
        test = test[: enc.eval_limit]
    if len(train) < 2:
        raise DataError(f"the encoder needs at least 2 training pairs; {info['from']} give {len(train)}")
    if len(test) < 2:
        raise DataError(
            f"the encoder's held-out evaluation needs at least 2 test pairs; {info['from']} give {len(test)} "
            f"(raise data.splits.test)"
        )
    info.update(
        train_pairs=len(train),
        train_documents=len({ex.doc_id for ex in train}),
        test_pairs=len(test),
        test_documents=len({ex.doc_id for ex in test}),
    )
    return EncoderPairs(train, test, (langs[0], langs[1]), info)
