"""The experiment behind `semrl run`: data, then the training stages in dependency order, then
evaluation and the report, all inside one run directory (`semrl.core.layout.RunLayout`).

Read `run_experiment` top to bottom: it is the whole flow. A finished stage (its manifest
exists) is skipped when the run is started again; a stage that was killed resumes from its last
checkpoint; `force` reruns a stage and every stage downstream of it. The stage graph comes from
the config (`semrl.train.stages`); the reward encoder is built once and shared by the preflight
check, every GRPO stage and the evaluation. When it is the run's own (`rewards.encoder.backend:
trained`), it is trained first, on the run's training documents (`semrl.train.encoder`).

Before anything is written or trained, `check_run` refuses what would otherwise stop the run
later: stale splits or stages, and `semrl.pipeline.preflight`'s preconditions (encoders, the
policy model, the evaluation's data and judge).
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from semrl.config.experiment import ExperimentConfig
from semrl.core.dist import is_main_process, wait_for_everyone
from semrl.core.errors import ConfigError
from semrl.core.io import read_cache, read_manifest, write_json, write_text
from semrl.core.layout import RunLayout, StageLayout
from semrl.core.lock import locked_directory
from semrl.core.provenance import package_versions, peak_rss_mb
from semrl.data.extra import prepare_extra_tests
from semrl.data.splits import load_splits, prepare_data
from semrl.encoders import Encoder
from semrl.pipeline.evaluate import evaluate_run
from semrl.pipeline.judge import run_judge
from semrl.pipeline.preflight import check_preconditions, preflight, uses_trained_encoder
from semrl.results.report import write_report
from semrl.train.encoder import EncoderResult, train_encoder_stage
from semrl.train.stage import last_checkpoint, train_stage
from semrl.train.stages import (
    downstream_of,
    stage_config_hash,
    stage_specs,
    stages_to_run,
)

Log = Callable[[str], None]


@dataclass
class RunSummary:
    """What `run_experiment` did: per stage 'ran', 'skipped' or 'resumed', and the manifests."""

    run_dir: Path
    actions: dict[str, str] = field(default_factory=dict)
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: Path | None = None


def check_splits_current(config: ExperimentConfig, layout: RunLayout) -> bool:
    """Whether the run's splits exist; ConfigError when they were made from another data/task config."""
    manifest = read_manifest(layout.splits_manifest)
    if manifest is None:
        return False
    wanted = config.hash("seed", "task", "data")
    if manifest.get("config_hash") != wanted:
        raise ConfigError(
            f"{layout.splits}: these splits were made from a different data/task config "
            f"(hash {manifest.get('config_hash')} vs {wanted}). Use a new --out directory, or "
            f"delete {layout.splits} to re-split (finished stages would then be stale)."
        )
    return True


def prepare_run_data(config: ExperimentConfig, layout: RunLayout) -> dict[str, list]:
    """Write the document-level splits once per run (main process), then read them everywhere.
    The extra test sets (`evaluation.extra_tests`) are made here too, beside the splits, so that
    one that cannot be read stops the run before anything trains."""
    if is_main_process():
        if not check_splits_current(config, layout):
            prepare_data(config, layout.root)
        prepare_extra_tests(config, layout.root)
    wait_for_everyone()
    return load_splits(layout.root)


def run_stage_in_dir(
    stage: str,
    config: ExperimentConfig,
    splits: dict[str, list],
    stage_dir: Path,
    init_model: str | Path | None,
    callbacks: Iterable[Any] = (),
    log: Log = print,
    parent_manifest: dict[str, Any] | None = None,
    config_hash: str | None = None,
    encoder: Encoder | None = None,
) -> dict[str, Any]:
    """Train one stage into `stage_dir` and write its manifest last (atomically).

    `parent_manifest` is the manifest of the stage whose model `init_model` is; its id is recorded
    so that a later run notices when that parent was retrained (see `check_parent_current`).
    `config_hash` defaults to `stage_config_hash` (the few-shot transfer hashes its own way).
    """
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    result = train_stage(
        stage, config, splits, stage_dir, init_model=init_model, callbacks=list(callbacks), resume=True, encoder=encoder
    )
    manifest = {
        "stage": stage,
        "id": uuid.uuid4().hex,  # the model's identity: evaluations and child stages record it
        "config_hash": config_hash or stage_config_hash(config, stage),
        "init_model": str(init_model) if init_model is not None else None,
        "parent_id": (parent_manifest or {}).get("id"),
        "model_dir": str(result.model_dir),
        "seed": config.stage_seed(stage),
        "wall_time_s": round(time.time() - started, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "metrics": result.metrics,
        "extra": result.extra,
        "versions": package_versions(),
    }
    if is_main_process():
        write_json(StageLayout(stage_dir).manifest, manifest)
    wait_for_everyone()
    log(f"[{stage_dir.name}] finished in {manifest['wall_time_s']:.1f}s (peak RSS {manifest['peak_rss_mb']:.0f} MiB)")
    return manifest


def check_parent_current(config: ExperimentConfig, layout: RunLayout, stage: str, manifest: dict[str, Any]) -> None:
    """ConfigError when a finished stage was trained from a parent model that has since been
    retrained or removed (e.g. a sweep's shared cold-start stage rerun with --force)."""
    parent = stage_specs(config.stages)[stage].parent
    recorded = manifest.get("parent_id")
    if parent is None or recorded is None:  # from the base model, or a manifest from before ids
        return
    current = read_manifest(layout.stage(parent).manifest)
    if current is None or current.get("id") != recorded:
        raise ConfigError(
            f"{layout.stage(stage).manifest}: stage '{stage}' was trained from a '{parent}' model that "
            f"{'is gone' if current is None else 'has since been retrained'} ({layout.stage(parent).root}). "
            f"Rerun it with --force {stage}, or use a new --out directory."
        )


def remove_stage(layout: RunLayout, stage: str) -> None:
    """Delete a stage's folder; a linked (shared) stage loses only the link, never the original."""
    folder = layout.stage(stage).root
    if folder.is_symlink():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)


def tax_meter_callbacks(config: ExperimentConfig, layout: RunLayout, splits: dict[str, list]) -> list[Any]:
    """The tax meter (NLL drift on fixed general texts, and the task gain on the dev split, every N
    steps), when the config asks for it.

    The base model's NLL on those texts and its log-likelihood of the dev references are measured
    once per run and cached in the run directory.
    """
    steps = config.evaluation.tax_meter_steps
    if steps <= 0:
        return []
    from semrl.data.general import general_texts
    from semrl.data.prompts import COMPLETION_PREFIX, prompt_text
    from semrl.eval.tax.drift import base_nll_for
    from semrl.eval.tax.likelihood import continuation_scores, finite_mean, per_char_logprobs
    from semrl.eval.tax.meter import TaxMeterCallback
    from semrl.models import load_policy, load_tokenizer, resolve_model

    ev = config.evaluation
    texts = general_texts(config.resolved_data_dir(), ev.drift_examples, config.seed, text_file=ev.drift_text_file)
    dev = (splits.get("dev") or [])[: max(ev.task_kl_examples, 8)]
    contexts = [prompt_text(ex.source, config.task) for ex in dev]
    continuations = [COMPLETION_PREFIX + ex.reference for ex in dev]
    cached = read_cache(layout.tax_meter_base)
    if cached is not None and cached.get("texts") == texts and cached.get("task_contexts") == contexts:
        base_nll, base_task = cached["base_nll"], cached.get("base_task_logprob")
        tokenizer = load_tokenizer(config.model)
    else:
        model, tokenizer = load_policy(config.model, resolve_model(config.model.name))
        base_nll = base_nll_for(model, tokenizer, texts)
        base_task = (
            finite_mean(per_char_logprobs(continuation_scores(model, tokenizer, contexts, continuations)))
            if dev
            else None
        )
        del model
        if is_main_process():
            write_json(
                layout.tax_meter_base,
                {"texts": texts, "base_nll": base_nll, "task_contexts": contexts, "base_task_logprob": base_task},
            )
    return [
        TaxMeterCallback(
            texts,
            tokenizer,
            steps,
            base_nll,
            task_contexts=contexts,
            task_continuations=continuations,
            base_task_logprob=base_task,
        )
    ]


def run_experiment(
    config: ExperimentConfig,
    run_dir: str | Path | None = None,
    only: str | None = None,
    force: Iterable[str] = (),
    evaluate: bool = True,
    log: Log = print,
) -> RunSummary:
    """Run an experiment end to end (or one stage with `only`), skipping finished stages.

    Args:
        config: the validated experiment config.
        run_dir: run directory (default: `config.output_dir`).
        only: run just this stage; the stage it starts from must already be finished.
        force: stages to rerun even if finished (their downstream stages rerun too).
        evaluate: evaluate every method and write the report after training.
        log: where progress lines go.
    """
    layout = RunLayout(Path(run_dir or config.output_dir))
    with locked_directory(layout.root, layout.lock, f"run directory {layout.root}", log=log):
        return _run_stages(config, layout, only, force, evaluate, log)


def check_finished_stage(config: ExperimentConfig, layout: RunLayout, stage: str, manifest: dict[str, Any]) -> None:
    """ConfigError when a finished stage was trained with another config or from a stale parent."""
    want = stage_config_hash(config, stage)
    if manifest.get("config_hash") != want:
        raise ConfigError(
            f"{layout.stage(stage).manifest}: stage '{stage}' was finished with a different config "
            f"(hash {manifest.get('config_hash')} vs {want}). Rerun it with --force {stage}, "
            f"or use a new --out directory."
        )
    check_parent_current(config, layout, stage, manifest)


def forced_stages(config: ExperimentConfig, force: Iterable[str]) -> set[str]:
    """The stages `--force` reruns: each one named and every stage downstream of it."""
    forced: set[str] = set()
    for stage in force:
        forced.update(downstream_of(config.stages, stage))
    return forced


def check_run(
    config: ExperimentConfig,
    layout: RunLayout,
    only: str | None = None,
    force: Iterable[str] = (),
    evaluate: bool = True,
) -> list[str]:
    """Everything that can refuse `run_experiment` (same arguments), checked before it writes
    anything (a refused rerun leaves the run directory as it was) or trains anything: the splits
    and finished stages are current, and `preflight.check_preconditions` for the stages still to
    train. Returns those stages. A sweep calls it for each of its runs before the first trains."""
    forced = forced_stages(config, force)
    stages = [spec.name for spec in stages_to_run(config.stages, only)]
    finished = {s: read_manifest(layout.stage(s).manifest) for s in stages if s not in forced}
    finished = {s: m for s, m in finished.items() if m is not None}
    check_splits_current(config, layout)
    for stage, manifest in finished.items():
        check_finished_stage(config, layout, stage, manifest)
    pending = [s for s in stages if s not in finished]
    check_preconditions(config, layout.root, pending, evaluate=evaluate and only is None)
    return pending


def train_run_encoder(
    config: ExperimentConfig, layout: RunLayout, splits: dict[str, list], log: Log = print
) -> EncoderResult | None:
    """The run's own reward encoder (`rewards.encoder.backend: trained`), trained first (or found
    finished) on the main process, on the run's training documents, so that the run's test
    documents stay held out from it. None on other processes, or when the config uses none."""
    if not uses_trained_encoder(config):
        return None
    result = train_encoder_stage(config, splits, layout.root, log=log) if is_main_process() else None
    wait_for_everyone()
    return result


def _run_stages(
    config: ExperimentConfig, layout: RunLayout, only: str | None, force: Iterable[str], evaluate: bool, log: Log
) -> RunSummary:
    forced = forced_stages(config, force)
    stages = [spec.name for spec in stages_to_run(config.stages, only)]
    pending = check_run(config, layout, only, force, evaluate)
    needs_encoder = uses_trained_encoder(config)
    if not needs_encoder:
        encoder = preflight(config, pending)
    splits = prepare_run_data(config, layout)
    if is_main_process():  # after the data: a run refused for its data leaves nothing behind
        write_text(layout.config, config.to_yaml())
    summary = RunSummary(run_dir=layout.root)
    if needs_encoder:  # the reward's encoder is trained first, on this run's training documents
        result = train_run_encoder(config, layout, splits, log)
        if result is not None:
            summary.actions[RunLayout.ENCODER] = result.action
            summary.manifests[RunLayout.ENCODER] = result.manifest
        encoder = preflight(config, pending, trained_dir=layout.encoder.model)

    for stage in stages:
        manifest = read_manifest(layout.stage(stage).manifest) if stage not in forced else None
        if manifest is not None:
            check_finished_stage(config, layout, stage, manifest)
            log(f"[{stage}] already finished: skipped (use --force {stage} to rerun)")
            summary.actions[stage] = "skipped"
            summary.manifests[stage] = manifest
            continue
        if stage in forced and is_main_process():
            remove_stage(layout, stage)
        wait_for_everyone()

        parent = stage_specs(config.stages)[stage].parent
        init_model: Path | None = None
        parent_manifest = None
        if parent is not None:
            parent_manifest = read_manifest(layout.stage(parent).manifest)
            if parent_manifest is None:
                raise ConfigError(
                    f"stage '{stage}' starts from the '{parent}' stage's model, which is not finished in "
                    f"{layout.root}. Run `semrl run CONFIG --out {layout.root}` (or --only {parent}) first."
                )
            init_model = layout.stage(parent).model
        resumed = last_checkpoint(layout.stage(stage).checkpoints) is not None
        log(f"[{stage}] {'resuming from its last checkpoint' if resumed else 'starting'}")
        summary.manifests[stage] = run_stage_in_dir(
            stage,
            config,
            splits,
            layout.stage(stage).root,
            init_model,
            callbacks=tax_meter_callbacks(config, layout, splits),
            log=log,
            parent_manifest=parent_manifest,
            encoder=encoder,
        )
        summary.actions[stage] = "resumed" if resumed else "ran"

    if evaluate and only is None:
        summary.report = evaluate_and_report(config, layout, log=log, encoder=encoder)
    return summary


def evaluate_and_report(
    config: ExperimentConfig, layout: RunLayout, log: Log = print, encoder: Encoder | None = None
) -> Path | None:
    """Evaluate every method of the run, judge method pairs when `evaluation.judge.enabled`, and
    write the report (see semrl.pipeline.evaluate, semrl.eval.judge, semrl.results.report)."""
    evaluate_run(config, layout.root, log=log, encoder=encoder)
    if is_main_process():
        if config.evaluation.judge.enabled:
            run_judge(config, layout.root, log=log)
        return write_report(layout.root)
    return None
