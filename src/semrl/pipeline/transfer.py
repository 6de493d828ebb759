"""Few-shot transfer behind `semrl transfer`: start from checkpoints of an earlier run (default its
`grpo` and `sft` stage models), fine-tune each on N examples of this config's task and data, and
compare them on the task's test split (the paper's analysis: MT-RL vs MT-SFT checkpoints, each
trained on 1k headline examples; headline similarity 0.5690 vs 0.5456).

The config is an ordinary experiment config whose `task` and `data` describe the *new* task, plus
a `transfer` section (`from_run`, `from_stages`, `n`, and the SFT hyperparameters in `stage`).

Transfer directory::

    DIR/
      config.yaml, splits/                      the new task's document-level splits
      encoder/                                  the run's own reward encoder (backend: trained)
      stages/from_<stage>/model, manifest.json  SFT from RUN/stages/<stage>/model
      eval/from_<stage>.json                    test outputs and per-example scores
      transfer.json, transfer.md, transfer.html

Training examples are the new task's cold_start and rl splits, shuffled with the seed, first N.

Everything the transfer needs (the source run's finished stages, the encoders, the transfer
directory's state) is checked before anything is written or trained
(`semrl.pipeline.preflight`). With `rewards.encoder.backend: trained` (or the second
encoder's) the transfer trains the config's `encoder:` into DIR/encoder first, as `semrl run`
does in a run directory; see `run_transfer` for why it does not reuse the source run's.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semrl.config.experiment import ExperimentConfig, parse_config
from semrl.config.stages import TRAINING_SPLITS
from semrl.core.dist import is_main_process
from semrl.core.errors import ConfigError, DataError
from semrl.core.io import json_text, read_manifest, write_json, write_text, write_texts
from semrl.core.layout import ComparisonLayout, RunLayout
from semrl.core.lock import locked_directory
from semrl.core.provenance import digest
from semrl.data.splits import load_splits
from semrl.encoders import build_encoder, probe_language
from semrl.eval.records import read_evaluation
from semrl.eval.task import evaluate_task, evaluation_examples
from semrl.models import load_policy
from semrl.pipeline.evaluate import eval_key
from semrl.pipeline.preflight import check_preconditions
from semrl.pipeline.run import check_splits_current, prepare_run_data, run_stage_in_dir, train_run_encoder
from semrl.results.build import bootstrap_args, paired_differences, task_intervals
from semrl.results.render import fmt, fmt_iv, fmt_with_iv, md_code, md_table, md_text, render_html
from semrl.train.stages import BASELINE

TRANSFER_SCHEMA_VERSION = 1
# The paper's few-shot transfer result (headline similarity after 1k examples), for the report.
PAPER_TRANSFER = {"from_grpo": 0.5690, "from_sft": 0.5456}


@dataclass
class TransferSummary:
    """What `run_transfer` did: per start stage (and for the run's own encoder, 'encoder') 'ran',
    'resumed' or 'skipped', and the report's path."""

    out_dir: Path
    actions: dict[str, str] = field(default_factory=dict)
    report: Path | None = None


def method_name(stage: str) -> str:
    """The name of the model fine-tuned from `stage` (its folder under stages/ and eval/)."""
    return f"from_{stage}"


def transfer_examples(splits: dict[str, list[Any]], n: int | None, seed: int) -> list[Any]:
    """The transfer's training examples: the cold_start and rl splits, shuffled with `seed`, the
    first `n` (all when n is None or larger)."""
    pool = [ex for name in TRAINING_SPLITS for ex in splits[name]]
    random.Random(seed).shuffle(pool)
    return pool[:n] if n is not None else pool


def _source_manifests(config: ExperimentConfig) -> tuple[RunLayout, dict[str, dict[str, Any]]]:
    t = config.transfer
    if not t.from_run:
        raise ConfigError(
            "transfer.from_run is not set: name the run directory whose stage models start the transfer "
            "(e.g. runs/ntrex-bo-zh), in the config or with --set transfer.from_run=DIR"
        )
    source = RunLayout(Path(t.from_run))
    if not source.root.is_dir():
        raise ConfigError(
            f"transfer.from_run: {source.root} does not exist (or is not a directory); name the run directory "
            f"whose stage models start the transfer (`semrl run CONFIG --out DIR` makes one)"
        )
    manifests = {}
    for stage in t.from_stages:
        manifest = read_manifest(source.stage(stage).manifest)
        if manifest is None or not source.stage(stage).model.is_dir():
            raise ConfigError(
                f"transfer.from_stages: {source.stage(stage).root} holds no finished '{stage}' stage (no manifest.json "
                f"or model/). Run `semrl run CONFIG --out {source.root}` first, or change transfer.from_stages."
            )
        manifests[stage] = manifest
    return source, manifests


def _stage_config(config: ExperimentConfig) -> ExperimentConfig:
    """The config train_stage sees: the transfer's SFT hyperparameters as the strong-SFT stage."""
    data = config.to_dict()
    data["stages"][BASELINE] = data["transfer"]["stage"]
    return parse_config(data, "transfer.stage")


def _transfer_hash(config: ExperimentConfig, source_manifest: dict[str, Any]) -> str:
    """What decides a transfer model: the new task's data, the model settings, n, the SFT
    hyperparameters and the exact source checkpoint (its manifest id)."""
    data = config.to_dict()
    keyed = {k: data[k] for k in ("seed", "model", "task", "data")}
    keyed["transfer"] = {"n": data["transfer"]["n"], "stage": data["transfer"]["stage"]}
    keyed["source"] = source_manifest.get("id")
    return digest(keyed)


def run_transfer(
    config: ExperimentConfig, out_dir: str | Path | None = None, log: Callable[[str], None] = print
) -> TransferSummary:
    """Fine-tune each `transfer.from_stages` checkpoint of `transfer.from_run` on N examples of the
    config's task, evaluate them on its test split and write transfer.json/md/html.

    Finished fine-tunings and evaluations are reused; one made from another source checkpoint or
    under other settings is an error (use a new directory or delete it). Every precondition is
    checked before anything is trained; a refusal is a SemrlError naming what to do.

    The run's own reward encoder (`rewards.encoder.backend: trained`) is trained in the transfer
    directory (DIR/encoder), on the transfer's training documents, before the fine-tunings; a
    finished one there is reused. The source run's encoder is never reused: it was trained on the
    source task's splits, which may include documents of the transfer's test split (its similarity
    would then be measured on sentences the encoder was trained on), and it would be the same
    encoder only under the same seed, task, data and `encoder:` sections, i.e. no transfer at all.
    """
    source, sources = _source_manifests(config)
    paths = RunLayout(Path(out_dir or config.output_dir))
    with locked_directory(paths.root, paths.lock, f"transfer directory {paths.root}", log=log):
        return _transfer(config, source, sources, paths, log)


def _check_transfer_current(config: ExperimentConfig, paths: RunLayout, stage: str, src_manifest: dict) -> bool:
    """Whether the fine-tuning of `stage` is finished; ConfigError when it was made otherwise."""
    method = method_name(stage)
    done = read_manifest(paths.stage(method).manifest)
    if done is None:
        return False
    want = _transfer_hash(config, src_manifest)
    if done.get("config_hash") != want:
        raise ConfigError(
            f"{paths.stage(method).manifest}: made from another source checkpoint or under other settings "
            f"(hash {done.get('config_hash')} vs {want}). Delete {paths.stage(method).root} or use a new --out "
            f"directory."
        )
    return True


def _transfer(
    config: ExperimentConfig, source: RunLayout, sources: dict, paths: RunLayout, log: Callable[[str], None]
) -> TransferSummary:
    # Check what can refuse the run before writing anything (config.yaml included).
    check_splits_current(config, paths)
    for stage, src_manifest in sources.items():
        _check_transfer_current(config, paths, stage, src_manifest)
    # The evaluation is the task's alone (no alignment tax): its encoders are what it needs.
    check_preconditions(config, paths.root, evaluate=True, tax=False)
    if is_main_process():
        write_text(paths.config, config.to_yaml())
    splits = prepare_run_data(config, paths)
    train = transfer_examples(splits, config.transfer.n, config.seed)
    if not train:
        raise DataError(f"{paths.splits}: the cold_start and rl splits are empty; nothing to fine-tune on")
    summary = TransferSummary(out_dir=paths.root)
    encoder_result = train_run_encoder(config, paths, splits, log)  # before the fine-tunings, as `semrl run`
    if encoder_result is not None:
        summary.actions[RunLayout.ENCODER] = encoder_result.action
    log(
        f"[transfer] {len(train)} training examples of the {config.task.kind} task "
        f"({config.task.source_lang}->{config.task.target_lang}) from {source.root}"
    )
    stage_cfg = _stage_config(config)

    for stage, src_manifest in sources.items():
        method = method_name(stage)
        stage_dir = paths.stage(method).root
        want = _transfer_hash(config, src_manifest)
        if _check_transfer_current(config, paths, stage, src_manifest):
            log(f"[{method}] already finished: skipped")
            summary.actions[method] = "skipped"
            continue
        log(f"[{method}] fine-tuning {source.stage(stage).model}")
        splits_for_sft = {
            name: (train if i == 0 else []) for i, name in enumerate(stage_cfg.stages.section(BASELINE).splits)
        }
        run_stage_in_dir(
            BASELINE,
            stage_cfg,
            splits_for_sft,
            stage_dir,
            source.stage(stage).model,
            log=log,
            parent_manifest=src_manifest,
            config_hash=want,
        )
        summary.actions[method] = "ran"

    if not is_main_process():
        return summary
    test = evaluation_examples(config, paths.root)
    trained = paths.encoder.model  # where backend 'trained' finds the transfer's own encoder
    encoder = build_encoder(config.rewards.encoder, trained)
    second = build_encoder(config.evaluation.second_encoder, trained) if config.evaluation.second_encoder else None
    for stage in sources:
        method = method_name(stage)
        out_path = paths.eval_file(method)
        key = eval_key(config, paths.root, method)
        cached = read_evaluation(out_path)
        if cached is not None and cached.get("eval_key") == key:
            log(f"[eval:{method}] up to date: skipped")
            continue
        started = time.time()
        model, tokenizer = load_policy(config.model, paths.stage(method).model)
        log(f"[eval:{method}] generating {len(test)} test outputs")
        task, per, outputs = evaluate_task(
            model, tokenizer, test, config.task, config.evaluation.generation, encoder, second, seed=config.seed
        )
        write_json(
            out_path,
            {
                "method": method,
                "from_stage": stage,
                "model_dir": str(paths.stage(method).model),
                "eval_key": key,
                "task": task,
                "per_example": per,
                "outputs": outputs,
                "wall_time_s": round(time.time() - started, 2),
            },
        )
        del model
        gc.collect()
    summary.report = write_transfer_report(paths.root, config, encoder)
    log(f"[transfer] report: {summary.report}")
    return summary


def _encoder_note(config: ExperimentConfig, encoder: Any) -> str | None:
    """A warning when the similarity encoder cannot read the target language."""
    lang = config.task.target_lang.lower()
    probe = probe_language(encoder, lang)
    if probe is None or probe.passed:
        return None
    return (
        f"Warning: the encoder `{encoder.name}` does not represent '{lang}' ({'; '.join(probe.reasons)}), "
        f"so semantic similarity here is not meaningful; configure rewards.encoder with one that does."
    )


def build_transfer(out_dir: str | Path, config: ExperimentConfig, encoder: Any | None = None) -> dict[str, Any]:
    """transfer.json's content.

    Schema (version 1)::

        {"schema_version": 1, "from_run", "from_stages", "n_train", "task": {...},
         "methods": {"from_<stage>": {"task", "task_intervals", "training": {"wall_time_s", "global_step"}}},
         "differences": {"from_<a>-from_<b>": {"<metric>": {"estimate", "low", "high"}}},
         "confidence", "test_examples", "encoder", "encoder_note", "paper": {...}}
    """
    out = Path(out_dir)
    layout = RunLayout(out)
    boot = bootstrap_args(config)
    stages = config.transfer.from_stages
    evals = {}
    for stage in stages:
        path = layout.eval_file(method_name(stage))
        record = read_evaluation(path)
        if record is None:
            raise DataError(f"{path}: missing or unreadable; `semrl transfer` evaluates each fine-tuned model")
        evals[method_name(stage)] = record
    methods = {}
    for method, e in evals.items():
        manifest = read_manifest(layout.stage(method).manifest) or {}
        methods[method] = {
            "task": e["task"],
            "task_intervals": task_intervals(e["per_example"], boot),
            "training": {
                "wall_time_s": manifest.get("wall_time_s"),
                "global_step": (manifest.get("metrics") or {}).get("global_step"),
            },
        }
    names = list(evals)
    differences = {
        f"{names[0]}-{b}": paired_differences(evals[names[0]], evals[b], config.task.target_lang, boot)
        for b in names[1:]
    }
    splits = load_splits(out)
    return {
        "schema_version": TRANSFER_SCHEMA_VERSION,
        "name": config.name,
        "from_run": config.transfer.from_run,
        "from_stages": list(stages),
        "n_train": len(transfer_examples(splits, config.transfer.n, config.seed)),
        "task": config.task.model_dump(mode="json"),
        "methods": methods,
        "differences": differences,
        "confidence": config.evaluation.confidence,
        "test_examples": next(iter(evals.values()))["task"]["n"],
        "encoder": config.rewards.encoder.name or config.rewards.encoder.backend,
        "encoder_note": _encoder_note(config, encoder) if encoder is not None else None,
        "paper": {"metric": "semantic", "values": PAPER_TRANSFER, "task": "Tibetan headline generation, 1k examples"},
    }


def render_transfer_markdown(t: dict[str, Any]) -> str:
    """transfer.md: the fine-tuned models side by side, and their paired differences."""
    conf = int(t["confidence"] * 100)
    task = t["task"]
    out = [
        f"# semrl few-shot transfer: {md_text(t['name'])}",
        "",
        f"Checkpoints {', '.join(md_code(s) for s in t['from_stages'])} of {md_code(t['from_run'])}, each fine-tuned "
        f"on {t['n_train']} examples of the {md_text(task['kind'])} task "
        f"({md_text(task['source_lang'])}->{md_text(task['target_lang'])}), "
        f"evaluated on {t['test_examples']} test examples; similarity encoder {md_code(t['encoder'])}. "
        f"Paper (Tibetan headlines, 1k examples): similarity {t['paper']['values']['from_grpo']:.4f} from MT-RL vs "
        f"{t['paper']['values']['from_sft']:.4f} from MT-SFT.",
        "",
    ]
    if t.get("encoder_note"):
        out += [md_text(t["encoder_note"]), ""]
    cols = ["bleu", "chrf", "rouge_l", "semantic", "lang_rate", "length_ratio"]
    present = [c for c in cols if any(c in m["task"] for m in t["methods"].values())]
    rows = []
    for name, m in t["methods"].items():
        iv = m["task_intervals"]
        rows.append(
            [name]
            + [fmt_with_iv(m["task"].get(c), iv.get(c)) for c in present]
            + [fmt(m["training"]["wall_time_s"], 1)]
        )
    out += [
        "## Task quality after fine-tuning",
        "",
        md_table(["start"] + present + ["fine-tuning wall time (s)"], rows),
        "",
    ]
    if t["differences"]:
        keys = ["semantic", "bleu", "chrf", "rouge_l", "lang_rate"]
        out += [f"## Differences (paired bootstrap, {conf}% intervals)", ""]
        out.append(
            md_table(
                ["comparison"] + keys, [[k] + [fmt_iv(d.get(c)) for c in keys] for k, d in t["differences"].items()]
            )
        )
        out.append("")
    return "\n".join(out)


def write_transfer_report(out_dir: str | Path, config: ExperimentConfig, encoder: Any | None = None) -> Path:
    """Write transfer.json, transfer.md and transfer.html; returns transfer.md's path."""
    layout = ComparisonLayout(Path(out_dir), "transfer")
    t = build_transfer(layout.root, config, encoder)
    md = render_transfer_markdown(t)
    # Rendered first and written together: a failure leaves the previous three as they were.
    write_texts(
        {layout.report_json: json_text(t), layout.report_html: render_html(md, layout.root), layout.report_md: md}
    )
    return layout.report_md
