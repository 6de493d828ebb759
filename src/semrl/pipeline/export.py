"""`semrl export`: one stage of a finished run as a standalone, merged model with a model card.

A stage with LoRA saves only its adapter (`model.save: adapter`, the default); exporting loads the
base model, merges the adapter (and, for GRPO, the cold-start adapter under it) and writes a full
safetensors checkpoint that loads with plain `AutoModelForCausalLM.from_pretrained`, with a
``README.md`` model card: the run's config summary, its data, its scale and the stage's metrics
when the run was evaluated. The output folder appears complete or not at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from semrl.config.experiment import ExperimentConfig, load_config
from semrl.core.errors import SemrlError
from semrl.core.io import atomic_path, read_manifest
from semrl.core.layout import MODEL_CARD_FILE, RunLayout
from semrl.models import is_adapter_dir, load_policy
from semrl.train.stages import stage_specs


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
        "tags: [semrl, " + ("grpo" if spec.kind == "grpo" else "sft") + "]",
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
    if spec.kind == "grpo":
        components = ", ".join(f"{c.name} x{c.weight}" for c in config.rewards.components)
        lines.append(
            f"- rewards: {components}; encoder {config.rewards.encoder.name or config.rewards.encoder.backend}"
        )
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


def export_stage(run_dir: str | Path, stage: str, out_dir: str | Path) -> Path:
    """Write stage `stage` of the run in `run_dir` to `out_dir` as a merged model plus model card.

    Raises SemrlError (exit code 2 on the command line) when the run, the stage or its model is
    missing; nothing is left at `out_dir` unless the export completed.
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
    model, tokenizer = load_policy(config.model, stage_layout.model)
    metrics_path = layout.metrics
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else None
    card = model_card(config, stage, manifest, read_manifest(layout.splits_manifest), metrics, stage_layout.model)
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MODEL_CARD_FILE).write_text(card, encoding="utf-8")
    return out_dir
