"""Sweeps behind `semrl sweep`: one experiment per variant, sharing everything upstream of GRPO,
and one report that compares them. A variant is a reward preset (the paper's reward ablations) or
GRPO's seed, `seed-N` (how far another seed moves the same GRPO stage: its spread).

Sweep directory::

    DIR/
      shared/                      a run directory with the data split, the cold-start (and
                                   strong-SFT) stage and the evaluations of base, cold_start, sft,
                                   and the run's own reward encoder (backend: trained)
      <variant>/                   a complete run directory per variant (a preset, or seed-N):
        splits -> ../shared/splits               (link)
        encoder -> ../shared/encoder             (link, with backend: trained)
        stages/cold_start -> ../../shared/...    (link; likewise stages/sft)
        stages/grpo/                             the only stage trained per variant
        eval/                                    shared evaluations copied, plus grpo.json
        metrics.json, report.md, report.html
      sweep.json, sweep.md, sweep.html

The cold-start stage is trained once. Each variant is an ordinary run (`semrl run` on
`DIR/<variant>/config.yaml` resumes or checks it) whose linked stages carry the shared manifests,
so the runner's config-hash check still refuses a shared stage made under another config, and a
variant's GRPO stage made from a cold-start model that was since retrained is reported stale.

Before anything is trained, every run of the sweep (the shared one and each variant) is checked
as `semrl run` checks itself (`run.check_run`). The run's own encoder (`rewards.encoder.backend:
trained`) is trained once, first, in shared/ (every variant reads the same documents, so one
encoder serves them all and every method is scored by the same encoder), and then each variant's
GRPO reward is checked against it before the shared cold start trains.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import ValidationError

from semrl.config.experiment import (
    ExperimentConfig,
    SweepConfig,
    load_config,
    parse_config,
)
from semrl.config.rewards import REWARD_PRESETS
from semrl.core.dist import is_main_process, wait_for_everyone
from semrl.core.errors import ConfigError
from semrl.core.io import json_text, write_text, write_texts
from semrl.core.layout import ComparisonLayout, RunLayout
from semrl.core.lock import locked_directory
from semrl.pipeline.evaluate import evaluate_run
from semrl.pipeline.preflight import preflight, uses_trained_encoder
from semrl.pipeline.run import RunSummary, check_run, prepare_run_data, run_experiment, train_run_encoder
from semrl.results.build import bootstrap_args, paired_differences
from semrl.results.render import render_html
from semrl.train.stages import (
    BASE_METHOD,
    BASELINE,
    COLD_START,
    TREATMENT,
    evaluated_methods,
    reward_free_stages,
)

SHARED_DIR = ComparisonLayout.SHARED
SWEEP_SCHEMA_VERSION = 1
# What the sweep can vary: `rewards` sets rewards.preset, `seed` sets stages.grpo.seed. A seed
# variant is named SEED_PREFIX + the seed, which no reward preset is.
VARIABLES = ("rewards", "seed")
SEED_PREFIX = "seed-"
VARY_USAGE = f"rewards=PRESET[,PRESET...] or seed=N[,N...] (presets: {', '.join(REWARD_PRESETS)})"


@dataclass
class SweepSummary:
    """What `run_sweep` did: the shared run, each variant's run, and the comparison report."""

    out_dir: Path
    shared: RunSummary
    variants: dict[str, RunSummary] = field(default_factory=dict)
    report: Path | None = None
    wall_time_s: float = 0.0


def seed_variant(seed: int) -> str:
    """The name (and folder) of the variant that trains GRPO with `seed`."""
    return f"{SEED_PREFIX}{seed}"


def variant_seed(variant: str) -> int | None:
    """The GRPO seed a variant name stands for (None: a reward-preset variant)."""
    digits = variant.removeprefix(SEED_PREFIX)
    return int(digits) if variant.startswith(SEED_PREFIX) and digits.isdigit() else None


def parse_vary(items: Sequence[str]) -> list[str]:
    """Parse `--vary rewards=a,b` and `--vary seed=1,2` into variant names (`a`, `b`, `seed-1`, `seed-2`)."""
    variants: list[str] = []
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or key not in VARIABLES:
            raise ConfigError(f"--vary {item!r}: expected {VARY_USAGE}")
        names = [v.strip() for v in values.split(",") if v.strip()]
        if key == "seed":
            bad = [v for v in names if not v.isdigit() or int(v) >= 2**32]
            if bad:
                raise ConfigError(f"--vary {item!r}: seeds are integers in [0, 2**32); got {', '.join(bad)}")
            names = [seed_variant(int(v)) for v in names]
        variants += names
    return variants


def _checked_variants(config: ExperimentConfig, variants: Sequence[str] | None) -> list[str]:
    chosen = list(variants) if variants else [*config.sweep.rewards, *map(seed_variant, config.sweep.seeds)]
    if not chosen:
        raise ConfigError(
            f"nothing to sweep: pass --vary {VARY_USAGE.replace(' or ', ' or --vary ', 1)}, "
            "or set sweep.rewards or sweep.seeds in the config"
        )
    presets = [v for v in chosen if variant_seed(v) is None]
    seeds = [s for v in chosen if (s := variant_seed(v)) is not None]
    try:
        SweepConfig(rewards=presets, seeds=seeds)
    except ValidationError as err:
        error = err.errors()[0]
        variable = {"rewards": "rewards", "seeds": "seed"}[error["loc"][0]]
        raise ConfigError(f"--vary {variable}: {error['msg']}") from None
    if SHARED_DIR in chosen:
        raise ConfigError(f"a variant may not be called {SHARED_DIR!r}")
    missing = [s for s in (COLD_START, TREATMENT) if s not in config.stages.enabled]
    if missing:
        raise ConfigError(f"a sweep varies GRPO from a shared cold start: stages.enabled must include {missing}")
    if TREATMENT not in evaluated_methods(config):
        raise ConfigError("a sweep compares the GRPO models: evaluation.methods must include grpo")
    return chosen


def variant_config(config: ExperimentConfig, variant: str) -> ExperimentConfig:
    """The config of one variant: GRPO's seed set (`seed-N`), or `rewards.preset` set to the
    preset (its components replace the config's)."""
    data = config.to_dict()
    seed = variant_seed(variant)
    if seed is not None:
        data["name"] = f"{config.name} [GRPO seed: {seed}]"
        data["stages"][TREATMENT]["seed"] = seed
    else:
        data["name"] = f"{config.name} [rewards: {variant}]"
        data["rewards"]["preset"] = variant
        data["rewards"]["components"] = None
    return parse_config(data, f"sweep variant {variant!r}")


def shared_config(config: ExperimentConfig) -> ExperimentConfig:
    """The config of the shared run: every enabled stage that the rewards do not change."""
    data = config.to_dict()
    data["stages"]["enabled"] = reward_free_stages(config.stages)
    return parse_config(data, "sweep shared stages")


def _link(link: Path, target: Path) -> None:
    """Make `link` a relative symlink to `target` (idempotent); refuse to replace anything else."""
    rel = os.path.relpath(target, link.parent)
    if link.is_symlink():
        if os.readlink(link) == rel:
            return
        link.unlink()
    elif link.exists():
        raise ConfigError(
            f"{link} is not the sweep's link to {target}: this variant has its own copy (e.g. after "
            f"--force). Delete {link} to share {target} again, or use a new --out directory."
        )
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(rel, target_is_directory=target.is_dir())


def link_shared(shared: RunLayout, variant: RunLayout, stages: Sequence[str]) -> None:
    """Point a variant's splits, shared stages and (when the shared run trained one) encoder at the
    shared run, and copy its evaluations (their keys match, so the variant's evaluation skips them)."""
    _link(variant.splits, shared.splits)
    if shared.encoder.root.is_dir():
        _link(variant.encoder.root, shared.encoder.root)
    for stage in stages:
        _link(variant.stage(stage).root, shared.stage(stage).root)
    for path in sorted(shared.eval_dir.glob("*.json")):
        target = variant.eval_dir / path.name
        if not target.is_file() or target.read_bytes() != path.read_bytes():
            write_text(target, path.read_text(encoding="utf-8"))


def run_sweep(
    config: ExperimentConfig,
    variants: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> SweepSummary:
    """Run one experiment per variant, all sharing one data split, base evaluation and
    cold-start (and strong-SFT) stage, then write the comparison (sweep.json/md/html).

    Args:
        config: the experiment config; each variant replaces its `rewards` section (a preset) or
            sets GRPO's seed (`seed-N`).
        variants: reward presets and `seed-N` names (see `parse_vary`; default: `config.sweep.rewards`
            then `config.sweep.seeds`).
        out_dir: the sweep directory (default: `<output_dir>-sweep`).
        log: where progress lines go.
    """
    chosen = _checked_variants(config, variants)
    out = Path(out_dir or f"{config.output_dir}-sweep")
    layout = ComparisonLayout(out, "sweep")
    with locked_directory(out, layout.lock, f"sweep directory {out}", log=log):
        return _sweep(config, chosen, layout, log)


def _sweep(
    config: ExperimentConfig, chosen: Sequence[str], layout: ComparisonLayout, log: Callable[[str], None]
) -> SweepSummary:
    out = layout.root
    started = time.time()
    shared_cfg = shared_config(config)
    shared = layout.shared
    shared_stages = list(shared_cfg.stages.enabled)
    configs = {variant: variant_config(config, variant) for variant in chosen}
    # Every run's preconditions before the shared run trains anything (the shared run is
    # evaluated too, by evaluate_run below).
    check_run(shared_cfg, shared)
    pending = {variant: check_run(cfg, layout.variant(variant)) for variant, cfg in configs.items()}
    trained_dir = None
    if uses_trained_encoder(config):  # one encoder for every run, trained first, in shared/
        with locked_directory(shared.root, shared.lock, f"run directory {shared.root}", log=log):
            train_run_encoder(shared_cfg, shared, prepare_run_data(shared_cfg, shared), log)
        trained_dir = shared.encoder.model
    encoder = None
    for variant, cfg in configs.items():  # each variant's GRPO reward can read the output language
        encoder = preflight(cfg, pending[variant], encoder, trained_dir)
    del encoder  # not held through the sweep (a large encoder): each run builds its own when it needs it

    log(f"[sweep] shared stages ({', '.join(shared_stages)}) in {shared.root}")
    summary = SweepSummary(out_dir=out, shared=run_experiment(shared_cfg, shared.root, evaluate=False, log=log))
    evaluate_run(shared_cfg, shared.root, log=log)

    walls: dict[str, float] = {}
    for i, variant in enumerate(chosen, start=1):
        cfg = configs[variant]
        paths = layout.variant(variant)
        if is_main_process():
            link_shared(shared, paths, shared_stages)
        wait_for_everyone()
        terms = " + ".join(f"{c.weight:g} {c.name}" for c in cfg.rewards.components)
        log(f"[sweep] variant {i}/{len(chosen)}: {variant} (R = {terms}) in {paths.root}")
        t0 = time.time()
        summary.variants[variant] = run_experiment(cfg, paths.root, log=log)
        walls[variant] = round(time.time() - t0, 2)

    summary.wall_time_s = round(time.time() - started, 2)
    if is_main_process():
        summary.report = write_sweep_report(out, chosen, walls, summary.wall_time_s)
        log(f"[sweep] {len(chosen)} variants in {summary.wall_time_s:.1f}s; report: {summary.report}")
    return summary


# ---------------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: missing; the sweep writes it after evaluating each variant")
    return json.loads(path.read_text(encoding="utf-8"))


def build_sweep(
    out_dir: str | Path,
    variants: Sequence[str],
    walls: dict[str, float] | None = None,
    wall_time_s: float | None = None,
) -> dict[str, Any]:
    """sweep.json's content from the variants' metrics.json and evaluations.

    Schema (version 1)::

        {"schema_version": 1, "reference": "<first variant>", "confidence": 0.95,
         "shared": {"run_dir", "cold_start": {"id", "finished_at", "wall_time_s"},
                    "methods": {"base" | "cold_start" | "sft": {"task", "tax", "drift", "task_intervals", "tax_intervals"}}},
         "variants": {"<variant>": {"run_dir", "rewards": [components], "seed", "task", "task_intervals",
                     "vs_cold_start", "vs_sft", "vs_reference", "tax", "tax_intervals",
                     "tax_vs_sft": {"measure", "estimate", "low", "high", "reading"} | null, "drift",
                     "tau", "grpo_wall_time_s", "grpo_steps", "wall_time_s"}},
         "scale": {...}, "wall_time_s": float | null}

    `vs_*` are paired bootstrap intervals of GRPO(variant) minus the other model on the same test
    examples; `tax` is score(base) - score(variant) per benchmark and their mean; `tax_vs_sft` is
    the run's primary tax measure, GRPO(variant) minus strong SFT (see the run report's headline);
    `seed` is the seed GRPO trained with.
    """
    layout = ComparisonLayout(Path(out_dir), "sweep")
    metrics = {v: _read_json(layout.variant(v).metrics) for v in variants}
    grpo_evals = {v: _read_json(layout.variant(v).eval_file(TREATMENT)) for v in variants}
    reference = variants[0]
    config = load_config(layout.variant(reference).config)
    boot = bootstrap_args(config)
    first = metrics[reference]

    shared_methods = {}
    for method in (BASE_METHOD, COLD_START, BASELINE):
        if method in first["methods"]:
            m = first["methods"][method]
            shared_methods[method] = {
                "task": m["task"],
                "tax": m.get("tax"),
                "drift": m.get("drift"),
                "task_intervals": first["intervals"]["task"].get(method),
                "tax_intervals": first["intervals"]["tax"].get(method),
            }
    cold = _read_json(layout.shared.stage(COLD_START).manifest)
    rows: dict[str, Any] = {}
    for v in variants:
        m = metrics[v]
        grpo = m["methods"][TREATMENT]
        diffs = m["intervals"]["differences"]
        training = m["training"].get(TREATMENT, {})
        comparison = m.get("comparison") or {}
        primary = (comparison.get("measures") or {}).get(comparison.get("primary"))
        rows[v] = {
            "run_dir": v,
            "rewards": m["config"]["rewards"]["components"],
            "seed": load_config(layout.variant(v).config).stage_seed(TREATMENT),
            "task": grpo["task"],
            "task_intervals": m["intervals"]["task"][TREATMENT],
            "vs_cold_start": diffs.get(f"{TREATMENT}-{COLD_START}"),
            "vs_sft": diffs.get(f"{TREATMENT}-{BASELINE}"),
            "vs_reference": None
            if v == reference
            else paired_differences(grpo_evals[v], grpo_evals[reference], config.task.target_lang, boot),
            "tax": grpo.get("tax"),
            "tax_intervals": m["intervals"]["tax"].get(TREATMENT),
            "tax_vs_sft": None if primary is None else {"measure": comparison["primary"], **primary},
            "drift": grpo.get("drift"),
            "tau": ((training.get("extra") or {}).get("tau") or {}).get("value"),
            "grpo_wall_time_s": training.get("wall_time_s"),
            "grpo_steps": (training.get("metrics") or {}).get("global_step"),
            "wall_time_s": (walls or {}).get(v),
        }
    return {
        "schema_version": SWEEP_SCHEMA_VERSION,
        "name": load_config(layout.shared.config).name,
        "reference": reference,
        "confidence": config.evaluation.confidence,
        "shared": {
            "run_dir": SHARED_DIR,
            "cold_start": {k: cold.get(k) for k in ("id", "finished_at", "wall_time_s")},
            "methods": shared_methods,
        },
        "variants": rows,
        "scale": first["scale"],
        "signatures": first["signatures"],
        "wall_time_s": wall_time_s,
    }


def _rewards_text(components: list[dict[str, Any]]) -> str:
    return " + ".join(f"{c['weight']:g} {c['name']}" for c in components)


def render_sweep_markdown(sweep: dict[str, Any]) -> str:
    """sweep.md: the variants side by side, with intervals."""
    from semrl.results.render import data_scale_lines, fmt, fmt_iv, fmt_with_iv, md_code, md_table, md_text

    conf = int(sweep["confidence"] * 100)
    sc = sweep["scale"]
    ref = sweep["reference"]
    shared = sweep["shared"]
    variants = sweep["variants"]
    out = [
        f"# semrl sweep: {md_text(sweep['name'])}",
        "",
        f"Model {md_code(sc['model'])}, reward encoder {md_code(sc['encoder'])}.",
        "",
        *data_scale_lines(sc),
        f"One cold-start stage ({md_code(shared['run_dir'] + '/stages/cold_start')}, finished "
        f"{md_text(shared['cold_start']['finished_at'])}, {fmt(shared['cold_start']['wall_time_s'], 1)} s) and one "
        f"evaluation of {md_text(', '.join(shared['methods']))} are shared by every variant; only GRPO differs. "
        f"Intervals: {conf}% bootstrap over test examples (task) or benchmark items (tax). "
        "A small-scale ablation, not a reproduction of the paper's numbers.",
        "",
        "## Task quality",
        "",
    ]
    rows = []
    for method, m in shared["methods"].items():
        t, iv = m["task"], m["task_intervals"] or {}
        rows.append(
            [
                method,
                "–",
                fmt(t.get("bleu"), 2),
                fmt(t.get("chrf"), 2),
                fmt_with_iv(t.get("semantic"), iv.get("semantic")),
                fmt_with_iv(t.get("lang_rate"), iv.get("lang_rate")),
                fmt(t.get("length_ratio"), 2),
            ]
        )
    for v, r in variants.items():
        t, iv = r["task"], r["task_intervals"] or {}
        rows.append(
            [
                f"grpo: {v}",
                _rewards_text(r["rewards"]),
                fmt(t.get("bleu"), 2),
                fmt(t.get("chrf"), 2),
                fmt_with_iv(t.get("semantic"), iv.get("semantic")),
                fmt_with_iv(t.get("lang_rate"), iv.get("lang_rate")),
                fmt(t.get("length_ratio"), 2),
            ]
        )
    out.append(md_table(["model", "reward", "BLEU", "chrF", "semantic", "lang rate", "length ratio"], rows))
    out += ["", f"BLEU signature: {md_code(sweep['signatures'].get('bleu'))}.", ""]

    def diff_table(key: str) -> str:
        return md_table(
            ["variant", "Δ semantic", "Δ BLEU", "Δ chrF", "Δ lang rate"],
            [
                [v] + [fmt_iv((r[key] or {}).get(k)) for k in ("semantic", "bleu", "chrf", "lang_rate")]
                for v, r in variants.items()
                if r[key]
            ],
        )

    out += [f"## GRPO minus the cold-start model (paired, {conf}% intervals)", "", diff_table("vs_cold_start"), ""]
    if any(r["vs_sft"] for r in variants.values()):
        out += [f"## GRPO minus strong SFT (paired, {conf}% intervals)", "", diff_table("vs_sft"), ""]
    if any(r["vs_reference"] for r in variants.values()):
        out += [f"## Each variant minus {md_text(ref)} (paired, {conf}% intervals)", "", diff_table("vs_reference"), ""]
    out += [
        "## Alignment tax and drift",
        "",
        "Tax = score(base) − score(model); positive means general competence was lost.",
        "",
    ]
    benches = sorted({b for r in variants.values() for b in (r["tax"] or {}) if b != "mean"})
    rows = []
    entries = [(m, e["tax"], e["tax_intervals"], e["drift"]) for m, e in shared["methods"].items() if m != "base"]
    entries += [(f"grpo: {v}", r["tax"], r["tax_intervals"], r["drift"]) for v, r in variants.items()]
    for name, tax, tax_iv, drift in entries:
        tax, drift = tax or {}, drift or {}
        mean = fmt_iv((tax_iv or {}).get("mean")) if tax_iv else fmt(tax.get("mean"))
        rows.append(
            [name, mean]
            + [fmt(tax.get(b)) for b in benches]
            + [fmt(drift.get("nll_mean"), 4), fmt(drift.get("nll_p90"), 4)]
        )
    out.append(
        md_table(
            ["model", "tax mean"] + [f"tax {b}" for b in benches] + ["NLL increase mean", "NLL increase P90"], rows
        )
    )
    primary = {v: r["tax_vs_sft"] for v, r in variants.items() if r.get("tax_vs_sft")}
    if primary:
        out += [
            "",
            f"The primary tax measure, GRPO minus strong SFT ({conf}% paired intervals; negative: GRPO paid less):",
            "",
            md_table(
                ["variant", "measure", "GRPO − SFT", "reading"],
                [[v, md_text(d["measure"]), fmt_iv(d), md_text(d["reading"])] for v, d in primary.items()],
            ),
        ]
        seeded = [d for v, d in primary.items() if variant_seed(v) is not None]
        if len(seeded) > 1:
            estimates = [d["estimate"] for d in seeded]
            readings = sorted({d["reading"] for d in seeded})
            out += [
                "",
                f"Over {len(seeded)} GRPO seeds the estimate ranges from {min(estimates):+.3f} to "
                f"{max(estimates):+.3f}; readings: {md_text(', '.join(readings))}.",
            ]
    out += ["", "## Training", ""]
    out.append(
        md_table(
            ["variant", "GRPO seed", "tau", "GRPO steps", "GRPO wall time (s)", "variant wall time (s)"],
            [
                [
                    v,
                    str(r.get("seed")),
                    fmt(r["tau"], 4),
                    str(r["grpo_steps"]),
                    fmt(r["grpo_wall_time_s"], 1),
                    fmt(r["wall_time_s"], 1),
                ]
                for v, r in variants.items()
            ],
        )
    )
    if sweep.get("wall_time_s") is not None:
        out += ["", f"Whole sweep: {sweep['wall_time_s']:.1f} s."]
    links = ", ".join(f"[{md_text(v)}]({quote(v)}/report.md)" for v in variants)
    out += ["", "Per-variant reports: " + links, ""]
    return "\n".join(out)


def write_sweep_report(
    out_dir: str | Path,
    variants: Sequence[str],
    walls: dict[str, float] | None = None,
    wall_time_s: float | None = None,
) -> Path:
    """Write DIR/sweep.json, sweep.md and sweep.html; returns sweep.md's path."""
    layout = ComparisonLayout(Path(out_dir), "sweep")
    sweep = build_sweep(layout.root, variants, walls, wall_time_s)
    md = render_sweep_markdown(sweep)
    # Rendered first and written together: a failure leaves the previous three as they were.
    write_texts(
        {layout.report_json: json_text(sweep), layout.report_html: render_html(md, layout.root), layout.report_md: md}
    )
    return layout.report_md
