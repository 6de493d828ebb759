"""`semrl export`: one stage of a finished run as a standalone, merged model with a model card;
`semrl data export`: the run's splits in another engine's data format (verl's parquet).

A stage with LoRA saves only its adapter (`model.save: adapter`, the default); exporting loads the
base model, merges the adapter (and, for GRPO, the cold-start adapter under it) and writes a full
safetensors checkpoint that loads with plain `AutoModelForCausalLM.from_pretrained`, with a
``README.md`` model card: the run's config summary, its data, its scale and the stage's metrics
when the run was evaluated. The output folder appears complete or not at all, and it replaces
only what the user allowed: an empty or new folder, or with `overwrite` a non-empty one (a
previous export), never a run directory, one holding a run, or one inside a run. A data export
follows the same rules.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from semrl.config.experiment import ExperimentConfig, load_config
from semrl.core.errors import ConfigError, SemrlError
from semrl.core.io import atomic_path, json_text, read_manifest
from semrl.core.layout import MODEL_CARD_FILE, RunLayout, run_dir_marker
from semrl.data.export import EXPORT_FORMATS, export_splits
from semrl.data.splits import load_splits
from semrl.models import is_adapter_dir, load_policy
from semrl.train.stages import stage_rewards, stage_specs


def _metric_lines(metrics: dict[str, Any] | None, stage: str) -> list[str]:
    entry = ((metrics or {}).get("methods") or {}).get(stage)
    if not entry:
        return ["Not evaluated in this run (no metrics.json entry for this stage)."]
    lines = ["| metric | value |", "|---|---|"]
    for name, value in (entry.get("task") or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            lines.append(f"| task/{name} | {value:.4g} |")
    for name, value in (entry.get("general") or {}).items():
        lines.append(f"| general/{name} | {value:.4g} |")
    for name, value in (entry.get("tax") or {}).items():
        lines.append(f"| alignment tax/{name} | {value:+.4g} |")
    return lines


def model_card(
    config: ExperimentConfig,
    stage: str,
    manifest: dict[str, Any],
    splits_manifest: dict[str, Any] | None,
    metrics: dict[str, Any] | None,
    source_dir: Path,
) -> str:
    """The README.md of an exported stage model (markdown, with Hugging Face card metadata)."""
    task, model, section = config.task, config.model, config.stages.section(stage)
    lora = model.lora
    spec = stage_specs(config.stages)[stage]
    split_sizes = (splits_manifest or {}).get("sizes") or ((metrics or {}).get("scale") or {}).get("split_sizes")
    lines = [
        "---",
        f"language: [{task.source_lang}, {task.target_lang}]",
        "library_name: transformers",
        f"tags: [semrl, {spec.kind}]",
        "---",
        "",
        f"# {model.name}: semrl stage `{stage}` ({spec.kind})",
        "",
        f"Exported by `semrl export` from `{source_dir}` ({'adapter merged into its base' if is_adapter_dir(source_dir) else 'full checkpoint'}).",
        "",
        "## Config",
        "",
        f"- task: {task.kind}, {task.source_lang} -> {task.target_lang}",
        f"- base model: {model.name}" + (f" (revision {model.revision})" if model.revision else ""),
        f"- starts from: {spec.parent or 'the base model'}",
        "- LoRA: "
        + (f"r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}" if lora.enabled else "off (all weights)"),
        f"- learning rate {section.learning_rate}, batch size {section.batch_size}, epochs {section.epochs}, "
        f"max steps {section.max_steps}",
        f"- seed {config.seed}; stage config hash {manifest.get('config_hash')}",
    ]
    if spec.kind in ("grpo", "rft"):
        rewards = stage_rewards(config, stage)
        components = ", ".join(f"{c.name} x{c.weight}" for c in rewards.components)
        lines.append(f"- rewards: {components}; encoder {rewards.encoder.name or rewards.encoder.backend}")
    lines += [
        "",
        "## Data",
        "",
        "- sources: " + ", ".join(src.kind for src in config.data.sources),
        f"- trained on split(s): {', '.join(spec.splits)}",
    ]
    if split_sizes:
        lines.append("- split sizes: " + ", ".join(f"{k} {v}" for k, v in split_sizes.items()))
    stage_metrics = manifest.get("metrics") or {}
    lines += [
        "",
        "## Scale",
        "",
        f"- optimizer steps: {stage_metrics.get('global_step')}",
        f"- training examples: {(manifest.get('extra') or {}).get('num_examples')}",
        f"- wall time: {manifest.get('wall_time_s')} s, peak RSS {manifest.get('peak_rss_mb')} MiB",
        "",
        "## Metrics (test split)",
        "",
        *_metric_lines(metrics, stage),
        "",
    ]
    return "\n".join(lines)


def check_export_target(out_dir: str | Path, overwrite: bool = False, command: str = "export") -> None:
    """SemrlError unless an export may replace `out_dir` as a whole (messages name `command`'s --out).

    Always refused (even with `overwrite`): `out_dir` is a semrl run directory, lies inside one,
    or holds one anywhere below it (`core.layout.run_dir_marker`). Refused without `overwrite`: a
    file, or a folder that is not empty.
    """
    out = Path(out_dir)
    resolved = out.resolve()
    for folder in (resolved, *resolved.parents):
        marker = run_dir_marker(folder)
        if marker is not None:
            where = "is" if folder == resolved else f"lies inside {folder}, which is"
            raise SemrlError(
                f"{command} --out {out}: {where} a semrl run directory (it holds {marker.relative_to(folder)}), and "
                f"an export replaces its --out folder as a whole. Choose an --out folder outside every run directory."
            )
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise SemrlError(f"{command} --out {out}: exists and is not a folder; choose a new folder")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise SemrlError(
            f"{command} --out {out}: the folder is not empty, and an export replaces it as a whole (every file in it "
            f"is deleted). Pass --overwrite to replace it (e.g. a previous export), or choose a new folder."
        )
    # Links are not followed: replacing the folder deletes a link, never what it points to.
    for folder, _, _ in os.walk(resolved):
        marker = run_dir_marker(folder)
        if marker is not None:
            raise SemrlError(
                f"{command} --out {out}: holds a semrl run directory ({folder}, with {marker.relative_to(folder)}), "
                f"which replacing the folder would delete; refused even with --overwrite. Choose another --out folder."
            )


def export_stage(run_dir: str | Path, stage: str, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write stage `stage` of the run in `run_dir` to `out_dir` as a merged model plus model card.

    `out_dir` is replaced as a whole: a non-empty one needs `overwrite`, and a run directory (or
    a folder inside or above one) is always refused (`check_export_target`).

    Raises SemrlError (exit code 2 on the command line) when the run, the stage or its model is
    missing, or `out_dir` may not be replaced; nothing is left at `out_dir` unless the export
    completed.
    """
    layout = RunLayout(Path(run_dir))
    if not layout.config.is_file():
        raise SemrlError(
            f"{layout.root}: not a semrl run directory (no {layout.config.name}); pass a run's --out folder"
        )
    config = load_config(layout.config)
    specs = stage_specs(config.stages)
    if stage not in specs:
        raise SemrlError(f"export --stage {stage!r}: no such stage in {layout.config}; stages are {', '.join(specs)}")
    stage_layout = layout.stage(stage)
    manifest = read_manifest(stage_layout.manifest)
    if manifest is None or not stage_layout.model.is_dir():
        raise SemrlError(
            f"{stage_layout.root}: stage '{stage}' is not finished (no {stage_layout.manifest.name} or model/); "
            f"run `semrl run {layout.config} --out {layout.root}` first"
        )
    check_export_target(out_dir, overwrite)
    model, tokenizer = load_policy(config.model, stage_layout.model)
    metrics_path = layout.metrics
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else None
    card = model_card(config, stage, manifest, read_manifest(layout.splits_manifest), metrics, stage_layout.model)
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MODEL_CARD_FILE).write_text(card, encoding="utf-8")
        check_export_target(out_dir, overwrite)  # again: a run may have started there while this one saved
    return out_dir


# Beside the split files of a data export: the run's config (what `semrl.integrations.verl` builds
# the rewards from) and a record of what was exported from where.
EXPORT_CONFIG_FILE = "semrl.yaml"
EXPORT_RECORD_FILE = "semrl_export.json"


def export_data(
    run_dir: str | Path,
    out_dir: str | Path,
    fmt: str = "verl",
    overwrite: bool = False,
    config: str | Path | None = None,
) -> dict[str, Any]:
    """Write the splits of the run in `run_dir` to `out_dir` in format `fmt` (see `EXPORT_FORMATS`).

    For verl: ``<split>.parquet`` for each split (`semrl.data.export`), the run's config as
    ``semrl.yaml`` and ``semrl_export.json`` (the source run, each split's count and sha256). The
    config is `config`, by default the run's own ``config.yaml`` (`semrl run` writes one; after
    `semrl data prepare` alone, pass the config the splits were made from: splits made from another
    data/task config are refused). The splits are read as `semrl run` reads them (`load_splits`: a
    split changed since it was prepared is refused). `out_dir` follows `semrl export`'s rules
    (`check_export_target`) and appears whole or not at all. Returns the record written to
    ``semrl_export.json``.

    Raises SemrlError (exit code 2 on the command line) when `run_dir` has no splits or no config,
    `fmt` is unknown, or `out_dir` may not be replaced.
    """
    from semrl.pipeline.run import check_splits_current

    command = "data export"
    if fmt not in EXPORT_FORMATS:
        raise SemrlError(f"{command} --format {fmt!r}: unknown format; formats are {', '.join(EXPORT_FORMATS)}")
    layout = RunLayout(Path(run_dir))
    if not layout.root.is_dir():
        raise SemrlError(f"{layout.root}: no such run directory; pass the --out folder of `semrl data prepare`")
    config_path = Path(config) if config is not None else layout.config
    if config is None and not config_path.is_file():
        raise SemrlError(
            f"{layout.root}: no {layout.config.name} (a run directory of `semrl run` has one); pass --config CONFIG, "
            f"the config its splits were made from"
        )
    experiment = load_config(config_path)
    try:
        current = check_splits_current(experiment, layout)
    except ConfigError:  # the advice of `semrl run` (a new --out) does not fit an export
        raise ConfigError(
            f"{layout.splits}: made from a different data/task config than {config_path}; pass the config they "
            f"were made from with --config"
        ) from None
    if not current:
        raise SemrlError(
            f"{layout.splits}: no splits here; run `semrl data prepare {config_path} --out {layout.root}` first"
        )
    splits = load_splits(layout.root)
    check_export_target(out_dir, overwrite, command)
    splits_manifest = read_manifest(layout.splits_manifest) or {}
    record: dict[str, Any] = {
        "format": fmt,
        "run_dir": str(layout.root.resolve()),
        "config": EXPORT_CONFIG_FILE,
        "config_source": str(config_path.resolve()),
        "splits": {
            name: {
                "file": None,
                "examples": len(examples),
                "sha256": ((splits_manifest.get("splits") or {}).get(name) or {}).get("sha256"),
            }
            for name, examples in splits.items()
        },
    }
    config_bytes = config_path.read_bytes()
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name, path in export_splits(splits, experiment.task, tmp, fmt).items():
            record["splits"][name]["file"] = path.name
        (tmp / EXPORT_CONFIG_FILE).write_bytes(config_bytes)
        (tmp / EXPORT_RECORD_FILE).write_text(json_text(record), encoding="utf-8")
        check_export_target(out_dir, overwrite, command)  # again: a run may have started there meanwhile
    return record
