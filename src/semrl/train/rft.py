"""The RFT stage (rejection-sampling fine-tuning), a control arm for GRPO: is a gain the semantic
reward's, or only on-policy learning's?

From its parent's model it samples `num_generations` completions per prompt of its splits (GRPO's
sampling settings), scores them with the stage's rewards exactly as GRPO would
(`rewards.score_completions`, tau calibrated as GRPO calibrates it), keeps each prompt's best
completion when it clears the stage's `threshold`, and the SFT machinery (`train.sft`) then trains
on the kept (prompt, completion) pairs. The sampled set is written to the stage folder
(`StageLayout.rft_samples`) before training, so a resumed stage does not sample again.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from semrl.config.evaluation import GenerationConfig
from semrl.config.experiment import ExperimentConfig
from semrl.core.dist import is_main_process
from semrl.core.errors import DataError
from semrl.core.io import read_cache, write_json
from semrl.core.layout import StageLayout
from semrl.data.prompts import build_prompt
from semrl.generation import generate_completions
from semrl.rewards.registry import score_completions
from semrl.train.grpo import stage_reward_functions
from semrl.train.stages import rewards_key, stage_config_hash

if TYPE_CHECKING:
    from semrl.data.example import Example
    from semrl.encoders import Encoder


logger = logging.getLogger(__name__)


def clears_threshold(score: dict[str, float], threshold: float | None, tau: float | None) -> bool:
    """Whether a prompt's best completion (its `score_completions` row) is kept: its total exceeds
    `threshold`; with threshold None, its cosine clears the semantic floor `tau` (its semantic
    reward is > 0), or, without a semantic reward, its total exceeds 0."""
    if threshold is not None:
        return score["total"] > threshold
    if tau is not None and "similarity" in score:
        return math.isfinite(score["similarity"]) and score["similarity"] > tau
    return score["total"] > 0


def sample_rft_set(
    stage: str,
    config: ExperimentConfig,
    splits: dict[str, list[Example]],
    examples: list[Example],
    model: Any,
    tokenizer: Any,
    stage_dir: Path,
    extra: dict[str, Any],
    encoder: Encoder | None = None,
) -> dict[str, Any]:
    """Sample, score and select the RFT stage's training pairs (see the module docstring); returns
    the record written to `stage_dir/rft_samples.json`: its key, a summary and the kept rows."""
    cfg = config.stages.section(stage)
    funcs, weights, tau = stage_reward_functions(
        stage, config, splits, examples, model, tokenizer, stage_dir, extra, resuming=False, encoder=encoder
    )
    generation = GenerationConfig(
        do_sample=True,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_completion_length,
        batch_size=config.evaluation.generation.batch_size,
    )
    group = cfg.num_generations
    if cfg.max_prompts is not None and cfg.max_prompts < len(examples):
        examples = random.Random(config.stage_seed(stage)).sample(examples, cfg.max_prompts)
    prompts = [build_prompt(ex.source, config.task, tokenizer) for ex in examples]
    # Sampling is most of the stage's time before its first step (160 prompts x 4: minutes on a CPU).
    with tqdm(
        total=len(prompts) * group, desc=f"[{stage}] sampling", unit="completion", disable=not is_main_process()
    ) as bar:
        completions = generate_completions(
            model, tokenizer, [p for p in prompts for _ in range(group)], generation, progress=bar.update
        )
    rows = [
        {"source": ex.source, "reference": ex.reference, "completion": completions[i * group + j]}
        for i, ex in enumerate(examples)
        for j in range(group)
    ]
    scores = score_completions(rows, config.task.target_lang, funcs, weights)
    kept: list[dict[str, Any]] = []
    for i, ex in enumerate(examples):
        candidates = range(i * group, (i + 1) * group)
        # The first best on ties: sampling order is seeded, so the choice is reproducible.
        best = max(candidates, key=lambda k: scores[k]["total"] if math.isfinite(scores[k]["total"]) else -math.inf)
        if clears_threshold(scores[best], cfg.threshold, tau):
            kept.append({"id": ex.id, "completion": rows[best]["completion"], "reward": scores[best]["total"]})
    summary = {
        "prompts": len(examples),
        "num_generations": group,
        "prompts_kept": len(kept),
        "kept_mean_reward": (sum(r["reward"] for r in kept) / len(kept)) if kept else None,
        "threshold": cfg.threshold,
        "threshold_rule": "total > threshold" if cfg.threshold is not None else "semantic floor tau (or total > 0)",
        "tau": tau,
        "rewards": rewards_key(config, stage),
    }
    return {"summary": summary, "kept": kept}


def rft_examples(
    stage: str,
    config: ExperimentConfig,
    splits: dict[str, list[Example]],
    examples: list[Example],
    model: Any,
    tokenizer: Any,
    stage_dir: Path,
    extra: dict[str, Any],
    encoder: Encoder | None = None,
) -> list[Example]:
    """The RFT stage's training examples: each kept prompt with its best sampled completion as the
    reference. The sampled set is read back from the stage folder when it was drawn for this stage
    config and this parent model (a resumed stage); otherwise it is sampled (`sample_rft_set`) and
    written atomically first. Records the summary under `extra['rft']` (the stage manifest).
    Raises DataError when no prompt's completion was kept."""
    path = StageLayout(stage_dir).rft_samples
    key = {"config_hash": stage_config_hash(config, stage), "init_model": extra.get("init_model")}
    record = read_cache(path)
    if record is not None and record.get("key") == key and isinstance(record.get("kept"), list):
        logger.info("%s: reusing the sampled set of %d kept prompts", path, len(record["kept"]))
        if is_main_process():
            print(f"[{stage}] reusing the sampled set in {path}", flush=True)
    else:
        record = {
            "key": key,
            **sample_rft_set(stage, config, splits, examples, model, tokenizer, stage_dir, extra, encoder),
        }
        if "tau" in extra:  # the calibration, for a resumed stage's manifest (its tau.json may be gone)
            record["tau_calibration"] = extra["tau"]
        if is_main_process():
            write_json(path, record)
    summary = record["summary"]
    extra["rft"] = summary
    if "tau_calibration" in record:
        extra["tau"] = record["tau_calibration"]
    if is_main_process():
        mean = summary["kept_mean_reward"]
        print(
            f"[{stage}] kept {summary['prompts_kept']}/{summary['prompts']} prompts' best completion"
            + (f" (mean reward {mean:.4f})" if mean is not None else ""),
            flush=True,
        )
    by_id = {ex.id: ex for ex in examples}
    out = [replace(by_id[row["id"]], reference=row["completion"]) for row in record["kept"] if row["id"] in by_id]
    if not out:
        rule = (
            f"a total reward above stages.{stage}.threshold ({summary['threshold']})"
            if summary["threshold"] is not None
            else "a semantic reward above the floor tau"
        )
        raise DataError(
            f"stage '{stage}' kept no sample: none of the {summary['prompts']} prompts' {summary['num_generations']} "
            f"completions reached {rule}. Lower stages.{stage}.threshold (or raise num_generations); the sampled set "
            f"is in {path}"
        )
    return out
