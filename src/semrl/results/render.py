"""Render metrics.json as markdown and self-contained HTML; the table and number formatting shared by every report."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from semrl.results.arms import (
    GAIN_DIGITS,
    GAIN_METRICS,
    MEASURE_SHORT,
    ROLE_LABELS,
    TAX_DIGITS,
    budget_sentence,
    comparison_label,
    has_control_arms,
    headline_measure,
    plain_reading,
)
from semrl.results.build import MONITOR_FLAGS, verdict
from semrl.results.evidence import PRIMARY_TAX_MEASURES
from semrl.results.plots import REPORT_PLOTS


class Md(str):
    """Markdown source written into a report as is. Every other string a report shows (data, model
    outputs, names from the config) goes through `md_text` or `md_code` and reads as text."""


# Characters Markdown may read as markup anywhere in a line or a table cell (emphasis, code,
# links and images, raw HTML, entities, headings, table pipes, strikethrough, escapes).
_MD_SPECIAL = re.compile(r"[\\`*\[\]!<>#|&~]")
_LINE_BREAKS = re.compile(r"\r\n|[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]")


def md_text(text: Any) -> Md:
    """`text` as literal text in one Markdown line or table cell: line breaks become spaces and every
    character that could start markup is backslash-escaped (a '_' inside a word cannot, and stays
    bare: `cold_start`). An `Md` is returned as it is."""
    if isinstance(text, Md):
        return text
    s = _LINE_BREAKS.sub(" ", str(text))

    def escape(m: re.Match[str]) -> str:
        return "\\" + m.group()

    s = _MD_SPECIAL.sub(escape, s)
    s = re.sub(r"(?<![^\W_])_|_(?![^\W_])", r"\\_", s)  # '_' not between two letters or digits
    return Md(s)


def md_code(text: Any) -> Md:
    """`text` as a Markdown code span (for a line, not a table cell): fenced with more backticks
    than any run inside it, on one line."""
    s = _LINE_BREAKS.sub(" ", str(text))
    fence = "`" * (max((len(run) for run in re.findall(r"`+", s)), default=0) + 1)
    # CommonMark strips one space from each side when both are there: pad so that the text survives.
    pad = " " if s[:1] in ("`", " ") or s[-1:] in ("`", " ") else ""
    return Md(f"{fence}{pad}{s}{pad}{fence}" if s else "` `")


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


# Joins an interval's two ends: a narrow table column wraps between a value and its interval,
# never inside the interval ("[+0.012," on one line and "+0.034]" on the next).
NBSP = "\u00a0"


def fmt_iv(iv: dict[str, float] | None, digits: int = 3) -> Md:
    """An estimate with its interval, "+0.012 [-0.003, +0.027]" (the interval unbreakable)."""
    if not iv:
        return Md("–")
    return Md(f"{iv['estimate']:+.{digits}f} [{iv['low']:+.{digits}f},{NBSP}{iv['high']:+.{digits}f}]")


def fmt_with_iv(value: float | None, iv: dict[str, float] | None) -> Md:
    """A value with its interval, "0.812 [0.790, 0.834]" (the interval unbreakable); the bare value when
    there is no interval."""
    if value is None:
        return Md("–")
    return Md(f"{value:.3f} [{iv['low']:.3f},{NBSP}{iv['high']:.3f}]" if iv else f"{value:.3f}")


MEASURE_LABELS = {
    "continuous": "continuous per-item tax (mean over benchmarks)",
    "accuracy": "accuracy-style tax (mean over benchmarks)",
    "drift": "NLL increase on general text",
    "task_kl": "forward KL on the task distribution",
}


def _chance_section(methods: dict[str, Any], conf: int) -> list[str]:
    """Each task metric beside its shuffled-reference floor and the margin's interval."""
    keys = [
        k
        for k in ("chrf", "bleu", "semantic", "semantic_2")
        if any(k in (m.get("chance") or {}) for m in methods.values())
    ]
    if not keys:
        return []
    rows = []
    for name, m in methods.items():
        ch = m.get("chance") or {}
        cells = []
        for k in keys:
            c = ch.get(k)
            cells.append(
                Md("–")
                if c is None
                else Md(
                    f"{c['value']:.3f} vs {c['floor']:.3f}: {fmt_iv(c['margin'])}"
                    + ("" if c["above_chance"] else " **at chance**")
                )
            )
        rows.append([name, *cells])
    return [
        f"### Against chance (the same outputs scored against shuffled references; margin with its {conf}% paired interval)",
        "",
        md_table(["method", *keys], rows),
        "",
        "A method whose margin interval reaches zero is not above chance on that metric: its outputs are no "
        "closer to their own references than to unrelated ones.",
        "",
    ]


# The task table's columns, in order; a column shows when some method has the metric.
TASK_COLUMNS = ("bleu", "chrf", "semantic", "semantic_2", "rouge_l", "lang_rate", "length_ratio", "source_copy_rate")


def task_table(methods: dict[str, Any]) -> Md:
    """One row per method: its task metrics (`TASK_COLUMNS`) and, when known, the shares of
    distinct and of repetitive outputs (metrics.json's `methods`, or an extra test's)."""
    present = [c for c in TASK_COLUMNS if any(c in m["task"] for m in methods.values())]
    shares = [
        (key, label)
        for key, label in (
            ("distinct_output_rate", "distinct outputs per source"),
            ("repetitive_output_rate", "repetitive outputs"),
        )
        if any(m.get(key) is not None for m in methods.values())
    ]
    return md_table(
        ["method", *present, *(label for _, label in shares)],
        [
            [k, *(fmt(m["task"].get(c)) for c in present), *(fmt(m.get(key)) for key, _ in shares)]
            for k, m in methods.items()
        ],
    )


def _differences_section(diffs: dict[str, Any], conf: int) -> list[str]:
    """The paired differences between methods, one row per compared pair (none: no section)."""
    if not diffs:
        return []
    cols = sorted({k for d in diffs.values() for k in d})
    return [
        f"### Differences between methods (paired bootstrap, {conf}% intervals)",
        "",
        md_table(["comparison"] + cols, [[k] + [fmt_iv(d.get(c)) for c in cols] for k, d in diffs.items()]),
        "",
    ]


def _extra_task_section(
    name: str, extra: dict[str, Any], records: dict[str, dict[str, Any]], conf: int, samples: int
) -> list[str]:
    """An extra test set's task table (`evaluation.extra_tests`): the test split's columns, its
    sample outputs, differences and chance floors, under a line stating its scale."""
    from semrl.data.extra import extra_test_line

    scale = extra["scale"]
    if {"loaded", "available"} <= scale.keys():
        line = md_text(extra_test_line({"name": name, **scale}))
    else:  # its manifest was gone when the report was written
        line = md_text(f"Extra test {name}: {_count(scale['examples'], 'example')}.")
    source = ", ".join(f"{k}: {v}" for k, v in extra["source"].items())
    return [
        f"## Out-of-domain task: {md_text(name)} ({_count(scale['examples'], 'example')})",
        "",
        Md(
            f"{line} Source {md_code('{' + source + '}')}; the same decoding, encoders and seed as the test "
            "split. A second view of the tax: a model that learned its training domain should not lose this one."
        ),
        "",
        task_table(extra["methods"]),
        "",
        *_samples_section(records, samples),
        *_differences_section(extra["intervals"]["differences"], conf),
        *_chance_section(extra["methods"], conf),
    ]


def _tax_evidence_section(metrics: dict[str, Any], conf: int) -> list[str]:
    """The sensitive tax measures: GRPO - SFT on every measure, then per benchmark and method the
    accuracy and continuous tax, paired flips and empty predictions, and the task-distribution KL."""
    methods = metrics["methods"]
    out: list[str] = []
    comparison = metrics.get("comparison") or {}
    if comparison.get("measures"):
        a, b = comparison["pair"]
        rows = [
            [
                MEASURE_LABELS.get(k, k) + (" (primary)" if k == comparison["primary"] else ""),
                fmt_iv(d, 4),
                d["reading"],
            ]
            for k, d in comparison["measures"].items()
        ]
        out += [
            f"### Tax of {md_text(a)} minus tax of {md_text(b)} ({conf}% paired intervals; negative: "
            f"{md_text(a)} paid less)",
            "",
            md_table(["measure", f"{a} − {b}", "reading"], rows),
            "",
        ]
    rows = []
    for name, m in methods.items():
        for bench, e in (m.get("tax_evidence") or {}).items():
            flips = e.get("flips") or {}
            empty = e.get("empty_share")
            rows.append(
                [
                    name,
                    bench,
                    fmt_iv(e.get("accuracy_tax")),
                    fmt_iv(e.get("continuous_tax"), 4),
                    f"{flips.get('lost', '–')} / {flips.get('gained', '–')} (p={fmt(flips.get('p_value'))})"
                    if flips
                    else "–",
                    f"{empty['base']:.0%} → {empty['method']:.0%}" if empty else "–",
                    Md("**format change**")
                    if e.get("format_change")
                    else ("empty answers rose" if e.get("empty_rise") else ""),
                ]
            )
    if rows:
        header = ["method", "benchmark", "accuracy tax", "continuous tax", "lost / gained (McNemar)", "empty answers"]
        if any(row[-1] for row in rows):
            header.append("note")
        else:  # no benchmark changed format or emptied its answers: no empty column
            rows = [row[:-1] for row in rows]
        out += [
            "### Tax per benchmark: accuracy, continuous score, flips, empty answers",
            "",
            md_table(header, rows),
            "",
            "Continuous tax: base − method per item on the gold answer's score (MMLU: its probability among the "
            "choices; CMRC 2018, GSM8K: its log-likelihood per character), which does not depend on the output "
            "format. Lost / gained: items right for the base model and wrong for the method, and the reverse. "
            "A format change is an accuracy drop with a rise in empty answers while the continuous score holds.",
            "",
        ]
    kl_rows = [
        [name, fmt_with_iv(m["task_kl"]["estimate"], m["task_kl"]), str(m["task_kl"]["n"])]
        for name, m in methods.items()
        if m.get("task_kl")
    ]
    if kl_rows:
        out += [
            "### Forward KL from the base model on the task distribution (RL's Razor)",
            "",
            md_table(["method", f"KL(base ‖ method), nats per completion [{conf}%]", "samples"], kl_rows),
            "",
        ]
    return out


def md_table(header: list[str], rows: list[list[str]]) -> Md:
    """A GFM table. Every header and cell reads as text (`md_text`), except an `Md`, which is
    Markdown already (formatted numbers, deliberate emphasis)."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(md_text(c) for c in cells) + " |"

    return Md("\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]))


def _hardware_line(scale: dict[str, Any]) -> list[str]:
    hw = scale.get("hardware")
    if not hw:
        return []
    where = hw.get("gpu") or f"{hw['cpu']}, {hw['cores']} cores"
    compiled = scale.get("compiled_layers")
    return [
        f"Trained on {md_text(where)} in {md_text(hw['dtype'])} ({md_text(hw['dtype_reason'])}); evaluated in "
        f"{md_text(scale.get('eval_dtype', '?'))}."
        + (f" Decoder layers compiled (torch.compile) in {md_text(', '.join(compiled))}." if compiled else ""),
        "",
    ]


# Sample outputs shown under the task table (the first N test examples), each cell clipped to CELL_CHARS.
SAMPLE_OUTPUTS = 3
CELL_CHARS = 60


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def data_scale_lines(scale: dict[str, Any]) -> list[str]:
    """The data a run (or sweep) measured on, for a person: a table of split sizes and a sentence
    naming the test examples and the general benchmarks' items (metrics.json's `scale`)."""
    out: list[str] = []
    splits = scale.get("split_sizes") or {}
    if splits:
        out += [md_table(["split", "examples"], [[name, str(n)] for name, n in splits.items()]), ""]
    items = scale.get("benchmark_items") or {}
    evaluated = f"Evaluated on {_count(scale['test_examples_evaluated'], 'test example')}"
    if items:
        listed = ", ".join(f"{md_text(name)} ({_count(n, 'item')})" for name, n in items.items())
        evaluated += f" and on {_count(len(items), 'general benchmark')}: {listed}."
    else:
        evaluated += (
            "; no general benchmark was evaluated (evaluation.benchmarks is empty), so no alignment tax is measured."
        )
    return [*out, evaluated, ""]


def _scale_section(metrics: dict[str, Any]) -> list[str]:
    """What the run trained and measured on, as sentences and a table of split sizes."""
    sc = metrics["scale"]
    out = [
        "## Scale",
        "",
        f"Model {md_code(sc['model'])} ({'LoRA' if sc['lora'] else 'full fine-tuning'}); reward encoder "
        f"{md_code(sc['encoder'])}.",
        "",
    ]
    out += data_scale_lines(sc)
    steps = sc.get("steps") or {}
    if steps:
        ran = ", ".join(
            f"{md_text(stage)} {_count(n, 'step') if n is not None else '(steps not recorded)'}"
            for stage, n in steps.items()
        )
        out += [f"Trained: {ran}.", ""]
        out += _rft_lines(metrics.get("training") or {})
    else:
        out += ["No stage was trained in this run.", ""]
    out += _hardware_line(sc)
    out += [
        "This is a small-scale check of the paper's claim (GRPO with a semantic reward keeps general skills "
        "better than strong SFT), not a reproduction of its numbers.",
        "",
    ]
    if sc.get("grpo_stages", True):  # metrics.json from before the key: name the reward as before
        out += [
            "GRPO reward: " + _reward_sum(metrics["config"]["rewards"]["components"]) + ".",
            "",
        ]
    for stage, components in (sc.get("stage_rewards") or {}).items():
        out += [f"{md_text(stage)}'s own reward: {_reward_sum(components)}.", ""]
    return out


def _reward_sum(components: list[dict[str, Any]]) -> str:
    """Reward components as '1.5 semantic + 1 language'."""
    return " + ".join(f"{c['weight']:g} {md_text(c['name'])}" for c in components)


def _rft_lines(training: dict[str, Any]) -> list[str]:
    """One sentence per RFT stage: how many prompts kept a sample, and the kept samples' mean reward."""
    out = []
    for stage, record in training.items():
        rft = ((record or {}).get("extra") or {}).get("rft")
        if not rft:
            continue
        mean = rft.get("kept_mean_reward")
        out += [
            f"RFT stage {md_text(stage)} kept the best of {_count(rft['num_generations'], 'sample')} for "
            f"{rft['prompts_kept']} of {_count(rft['prompts'], 'prompt')}"
            + (f" (mean reward {mean:.3f})" if mean is not None else "")
            + ".",
            "",
        ]
    return out


def _samples_section(evals: dict[str, dict[str, Any]], samples: int) -> list[str]:
    """The first `samples` test examples: source, reference and each method's output, as text."""
    first = next(iter(evals.values()), None)
    shown = (first or {}).get("outputs", [])[:samples]
    if not shown:
        return []

    def output(e: dict[str, Any], i: int) -> Md:
        outputs = e.get("outputs") or []
        if i >= len(outputs):
            return Md("–")
        return _short(outputs[i]["output"]) if outputs[i]["output"].strip() else Md("*(empty)*")

    rows = [
        [_short(o["source"]), _short(o["reference"]), *(output(e, i) for e in evals.values())]
        for i, o in enumerate(shown)
    ]
    return [
        f"### Sample outputs (the first {'test example' if len(shown) == 1 else f'{len(shown)} test examples'}; "
        f"each cell clipped to {CELL_CHARS} characters)",
        "",
        md_table(["source", "reference", *evals], rows),
        "",
    ]


def render_markdown(
    metrics: dict[str, Any],
    evals: dict[str, dict[str, Any]],
    plots: dict[str, str],
    not_drawn: dict[str, str] | None = None,
    samples: int = SAMPLE_OUTPUTS,
) -> str:
    """report.md: the verdict, the scale, task quality with `samples` sample outputs, the tax
    evidence, drift, monitors, training, the `plots` drawn (file name -> path) and one line per plot
    in `not_drawn` (file name -> why it was left out)."""
    methods = metrics["methods"]
    out = [f"# semrl report: {md_text(metrics['config']['name'])}", ""]
    out += [
        "## Verdict",
        "",
        md_text(verdict(metrics)),
        "",
        *_flag_summary(metrics.get("monitors")),
        *_scale_section(metrics),
        "## Task quality",
        "",
    ]
    out += [task_table(methods), ""]
    out += _samples_section(evals, samples)
    out += [
        f"BLEU signature: {md_code(metrics['signatures'].get('bleu'))}; chrF signature: "
        f"{md_code(metrics['signatures'].get('chrf'))}.",
        "",
    ]
    for key in ("semantic", "semantic_2"):
        note = next(
            (m["task"].get(f"{key}_note") for m in methods.values() if m["task"].get(f"{key}_valid") is False), None
        )
        if note:
            out += [f"WARNING: `{key}` similarity is not meaningful in this run: {md_text(note)}.", ""]
    conf = int(metrics["intervals"]["confidence"] * 100)
    out += _differences_section(metrics["intervals"]["differences"], conf)
    out += _chance_section(methods, conf)
    if "judge" in metrics:
        out += _judge_section(metrics["judge"])
    for name, extra in (metrics.get("extra_tasks") or {}).items():
        shown = {m: e["extra_tasks"][name] for m, e in evals.items() if name in (e.get("extra_tasks") or {})}
        out += _extra_task_section(name, extra, shown, conf, samples)
    out += [
        "## Alignment tax",
        "",
        "Tax = score(base) − score(method); positive means the method lost general competence.",
        "",
    ]
    benches = sorted({b for m in methods.values() for b in m["general"]})
    if benches:
        rows = []
        for k, m in methods.items():
            row = [k] + [fmt(m["general"].get(b)) for b in benches]
            tiv = metrics["intervals"]["tax"].get(k, {})
            row += [fmt_iv(tiv.get(b)) for b in benches + ["mean"]]
            rows.append(row)
        out.append(md_table(["method"] + benches + [f"tax {b}" for b in benches] + ["tax mean"], rows))
    else:
        out.append("No general benchmark was evaluated (evaluation.benchmarks is empty), so there is no tax to show.")
    out += ["", *_gain_per_tax_section(metrics.get("arms"), conf), *_control_arms_section(metrics.get("arms"), conf)]
    out += [*_tax_evidence_section(metrics, conf), "## Drift from the base model on general text", ""]
    drifted = {k: m["drift"] for k, m in methods.items() if m.get("drift")}
    if drifted:
        out.append(
            md_table(
                ["method", "NLL increase mean", "NLL increase P90", "token KL mean", "token KL P90"],
                [
                    [k] + [fmt(d.get(c), 4) for c in ("nll_mean", "nll_p90", "kl_mean", "kl_p90")]
                    for k, d in drifted.items()
                ],
            )
        )
    else:
        out.append("No trained method was evaluated, so no drift from the base model was measured.")
    out += ["", *_monitor_section(metrics.get("monitors")), "## Training", ""]
    tr = metrics["training"]
    if tr:
        out.append(
            md_table(
                ["stage", "wall time (s)", "peak RSS (MiB)", "tau"],
                [
                    [
                        s,
                        fmt(t.get("wall_time_s"), 1),
                        fmt(t.get("peak_rss_mb"), 0),
                        fmt(((t.get("extra") or {}).get("tau") or {}).get("value"), 4),
                    ]
                    for s, t in tr.items()
                ],
            )
        )
    else:
        out.append("No stage was trained in this run.")
    out += ["", "## Plots", ""]
    for name, title in REPORT_PLOTS.items():
        if name in plots:
            out += [f"### {title}", "", f"![{title}](plots/{name})", ""]
    if not_drawn:
        out += ["Not drawn, for lack of data in this run:", ""]
        out += [f"- {REPORT_PLOTS.get(name, name)}: {md_text(why)}." for name, why in not_drawn.items()]
        out += [""]
    versions = ", ".join(f"{name} {version}" for name, version in metrics["versions"].items())
    out += ["## Versions", "", md_text(versions) + ".", ""]
    return "\n".join(out)


def _gain_per_tax_section(arms: dict[str, Any] | None, conf: int) -> list[str]:
    """Each trained method's task gain over the arms' starting point and its tax against the base
    model, with intervals, and the gain per unit of tax where the tax is distinguishable from zero
    (metrics.json's `arms`). Empty without a trained method beyond that starting point."""
    if not arms or not arms["methods"]:
        return []
    rows_in = arms["methods"]
    reference = arms["reference"]
    measures = [m for m in PRIMARY_TAX_MEASURES if any(m in r["tax"] for r in rows_in.values())]
    headline = headline_measure(arms["primary"], measures)
    # The headline first; accuracy only as the headline (its table is under Alignment tax).
    shown = [m for m in measures if m == headline] + [m for m in measures if m not in (headline, "accuracy")]
    gains = [g for g in GAIN_METRICS if any(g in r["gain"] for r in rows_in.values())]
    rows = []
    for name, r in rows_in.items():
        ratio = r["gain_per_tax"]
        if r["role"] == "reference":
            ratio_cell = "–"
        elif ratio["value"] is not None and ratio["measure"] == headline:
            ratio_cell = f"{ratio['value']:.1f}"
        else:
            ratio_cell = ratio["reading"] if ratio["measure"] == headline else "–"
        rows.append(
            [
                name,
                ROLE_LABELS.get(r["role"], r["role"] or "–"),
                *(
                    Md("reference") if r["role"] == "reference" else fmt_iv(r["gain"].get(g), GAIN_DIGITS[g])
                    for g in gains
                ),
                *(fmt_iv(r["tax"].get(m), TAX_DIGITS) for m in shown),
                ratio_cell,
            ]
        )
    header = [
        "method",
        "role",
        *(f"{g} gain over {reference}" for g in gains),
        *(MEASURE_SHORT[m] for m in shown),
        *([f"chrF gain per unit of {MEASURE_SHORT[headline]}"] if headline else ["chrF gain per tax"]),
    ]
    return [
        f"### Gain per tax: each method against {md_text(reference)} ({conf}% paired intervals)",
        "",
        f"Task gain: the method minus {md_text(reference)} on the same test examples. Tax: the method against the "
        "base model, on the same benchmark items (continuous, accuracy), general texts (NLL drift) or task prompts "
        "(task KL); positive means general competence lost. The ratio is given only where the tax's interval lies "
        "above zero: over a tax not distinguishable from zero it would be noise.",
        "",
        md_table(header, rows),
        "",
    ]


def _control_arms_section(arms: dict[str, Any] | None, conf: int) -> list[str]:
    """The control arms: each comparison that changes one factor (difference in chrF gain and in
    every tax measure, paired), then the matched-budget rule with each arm's training budget and
    task KL. Empty for a run without a control arm (RFT or a surface-reward GRPO)."""
    if not has_control_arms(arms):
        return []
    out = [
        f"### Control arms: which comparison carries the effect ({conf}% paired intervals, first arm minus second)",
        "",
    ]
    comps = arms["comparisons"]
    if comps:
        measures = [m for m in PRIMARY_TAX_MEASURES if any(m in c["tax"] for c in comps.values())]
        rows = []
        for c in comps.values():
            reading = "–"
            if c["headline"] is not None:
                reading = f"{MEASURE_SHORT[c['headline']]}: " + plain_reading(
                    c["tax"][c["headline"]], c["a"], "tax", TAX_DIGITS
                )
            gain = c["gain"].get("chrf")
            rows.append(
                [
                    comparison_label(c),
                    c["isolates"],
                    fmt_iv(gain, 2),
                    *(fmt_iv(c["tax"].get(m), TAX_DIGITS) for m in measures),
                    reading,
                ]
            )
        out += [
            md_table(
                [
                    "comparison",
                    "isolates",
                    "chrF difference",
                    *(f"{MEASURE_SHORT[m]} difference" for m in measures),
                    "reading",
                ],
                rows,
            ),
            "",
            'A tax difference below zero: the first arm paid less. "No difference larger than X": the interval '
            "includes zero and reaches X at most on either side.",
            "",
        ]
    else:
        present = ", ".join(f"{ROLE_LABELS[r]} ({s})" for r, s in arms["roles"].items())
        out += [f"No comparison has both its arms in this run (arms present: {md_text(present)}).", ""]
    budget_rows = [
        [
            name,
            ROLE_LABELS.get(r["role"], r["role"] or "–"),
            str(r["budget"]["prompts"]) if r["budget"] else "not recorded",
            str(r["budget"]["trained_examples"]) if r["budget"] else "–",
            r["budget"]["counted"] if r["budget"] else "–",
            fmt_iv(r["tax"].get("task_kl"), TAX_DIGITS),
        ]
        for name, r in arms["methods"].items()
    ]
    out += [
        "#### Matched-budget rule",
        "",
        "Tax grows with how far a model moves from the base, so two arms' taxes compare at equal budget when they "
        f"trained on the same number of prompts (within {arms['budget_tolerance']:.0%}) and, where possible, at "
        "the same forward KL from the base on the task distribution. Training prompts: GRPO, steps x prompts per "
        "step; RFT, the prompts it sampled from; SFT, examples x epochs (steps x batch under max_steps). Trained "
        "sequences: those with a gradient (GRPO's completions, RFT's kept samples).",
        "",
        md_table(
            ["method", "role", "training prompts", "trained sequences", "counted", f"task KL from base [{conf}%]"],
            budget_rows,
        ),
        "",
    ]
    out += [f"- {md_text(budget_sentence(arms, key))}" for key in comps]
    return out + ([""] if comps else [])


def _judge_section(judge: dict[str, Any]) -> list[str]:
    """The report's judge table: win/tie/loss rates with intervals per compared pair."""
    who = judge["judge"]
    conf = int(round((judge.get("confidence") or 0.95) * 100))
    out = [
        "## LLM judge: pairwise preference",
        "",
        f"Judge {md_code(who['model'])} ({md_text(who['kind'])}{', ' + md_text(who['url']) if who.get('url') else ''}; "
        f"verdicts by {md_text(who['mode'])}). "
        "Each pair was shown in both orders: a win needs both orders to prefer the first method's output, a loss both "
        "to prefer the second's; anything else is a tie. Inconsistent: the two orders preferred opposite outputs "
        f"(position bias). Rates from the first method's side, with {conf}% bootstrap intervals over examples.",
        "",
    ]
    if judge.get("stale"):
        out += ["Stale: a compared method was evaluated again after this judge pass; rerun `semrl judge RUN_DIR`.", ""]

    def rate(iv: dict[str, float]) -> str:
        return fmt_with_iv(iv["estimate"], iv)

    rows = [
        [
            f"{p['first']} vs {p['second']}",
            str(p["n"]),
            rate(p["rates"]["win"]),
            rate(p["rates"]["tie"]),
            rate(p["rates"]["loss"]),
            f"{p['counts']['inconsistent']} ({p['inconsistent_rate']:.2f})",
            str(p["counts"]["identical"]),
            fmt(p.get("first_position_rate"), 2),
        ]
        for p in judge["pairs"].values()
    ]
    out.append(
        md_table(
            ["comparison", "n", "win", "tie", "loss", "inconsistent", "identical outputs", "verdicts for position A"],
            rows,
        )
    )
    return out + [""]


def _flag_summary(monitors: dict[str, Any] | None) -> list[str]:
    flags = (monitors or {}).get("flags") or []
    if not flags:
        return []
    names = md_text(", ".join(f["monitor"] for f in flags))
    return [f"GRPO raised {len(flags)} reward-hacking flag(s) ({names}): see Reward-hacking monitors.", ""]


def _monitor_section(monitors: dict[str, Any] | None) -> list[str]:
    out = ["## Reward-hacking monitors", ""]
    if not monitors:
        return out + ["No GRPO monitors were logged in this run.", ""]
    out += [
        f"Means over the first and the last {monitors['window']} of {monitors['rows']} logged GRPO steps.",
        "",
        md_table(
            ["monitor", "first", "last", "change"],
            [[k, fmt(v["first"]), fmt(v["last"]), f"{v['change']:+.3f}"] for k, v in monitors["series"].items()],
        ),
        "",
        "Flag thresholds: "
        + "; ".join(f"{name} {stat} > {thr}" for name, stat, thr, _ in MONITOR_FLAGS)
        + " (statistic 'change' is last minus first).",
        "",
    ]
    if monitors["flags"]:
        out += ["Flags:", ""] + [f"- FLAG {md_text(f['monitor'])}: {md_text(f['message'])}" for f in monitors["flags"]]
        out += [""]
    else:
        out += ["No monitor crossed its threshold.", ""]
    return out


def _short(text: str, n: int = CELL_CHARS) -> Md:
    """Data text for a Markdown cell: one line, clipped, read as text (`md_text`: a `<script>` or an
    image in the data stays text in any Markdown viewer and in report.html)."""
    text = _LINE_BREAKS.sub(" ", text)
    text = text if len(text) <= n else text[: n - 1] + "…"
    return md_text(text)


def render_html(markdown_text: str, plot_dir: Path) -> str:
    """A self-contained HTML page: the Markdown rendered by markdown-it-py (CommonMark with GFM
    tables), raw HTML in it escaped (user text such as model outputs lands in the report), and
    each plot image embedded as a data URI read from `plot_dir` by its file name. An image that
    is no plot in `plot_dir` is shown as its text, never fetched."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")

    def embedded_image(renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        token = tokens[idx]
        name = Path(str(token.attrGet("src"))).name
        plot = plot_dir / name
        if not (name.endswith(".png") and plot.is_file()):
            return html.escape(
                f"![{renderer.renderInlineAsText(token.children or [], options, env)}]({token.attrGet('src')})"
            )
        data = base64.b64encode(plot.read_bytes()).decode()
        return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'

    md.add_render_rule("image", embedded_image)
    style = (
        # Tibetan fonts draw their letters small for their size (Tibetan Machine Uni, Microsoft
        # Himalaya): Tibetan text takes the first one installed at a size that reads beside Latin.
        "@font-face{font-family:semrl-tibetan;unicode-range:U+0F00-0FFF;size-adjust:140%;"
        "src:local('Noto Serif Tibetan'),local('Noto Sans Tibetan'),local('Jomolhari'),local('Tibetan Machine Uni'),"
        "local('Microsoft Himalaya'),local('Kailasa')}"
        "body{font-family:semrl-tibetan,system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:4px 8px}"
        "th{background:#f4f4f4}img{max-width:560px;display:block;margin:1em 0}"
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><title>semrl report</title><style>{style}</style></head><body>{md.render(markdown_text)}</body></html>\n"
