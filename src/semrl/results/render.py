"""Render metrics.json as markdown and self-contained HTML; the table and number formatting shared by every report."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from semrl.results.build import MONITOR_FLAGS, verdict
from semrl.results.plots import PLOTS


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


def fmt_iv(iv: dict[str, float] | None, digits: int = 3) -> Md:
    if not iv:
        return Md("–")
    return Md(f"{iv['estimate']:+.{digits}f} [{iv['low']:+.{digits}f}, {iv['high']:+.{digits}f}]")


def fmt_with_iv(value: float | None, iv: dict[str, float] | None) -> Md:
    """A value with its interval, "0.812 [0.790, 0.834]"; the bare value when there is no interval."""
    if value is None:
        return Md("–")
    return Md(f"{value:.3f} [{iv['low']:.3f}, {iv['high']:.3f}]" if iv else f"{value:.3f}")


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
        out += [
            "### Tax per benchmark: accuracy, continuous score, flips, empty answers",
            "",
            md_table(
                [
                    "method",
                    "benchmark",
                    "accuracy tax",
                    "continuous tax",
                    "lost / gained (McNemar)",
                    "empty answers",
                    "",
                ],
                rows,
            ),
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
    return [
        f"Trained on {md_text(where)} in {md_text(hw['dtype'])} ({md_text(hw['dtype_reason'])}); evaluated in "
        f"{md_text(scale.get('eval_dtype', '?'))}.",
        "",
    ]


def render_markdown(metrics: dict[str, Any], evals: dict[str, dict[str, Any]], plots: dict[str, str]) -> str:
    methods = metrics["methods"]
    sc = metrics["scale"]
    out = [f"# semrl report: {md_text(metrics['config']['name'])}", ""]
    out += [
        "## Verdict",
        "",
        md_text(verdict(metrics)),
        "",
        *_flag_summary(metrics.get("monitors")),
        "## Scale",
        "",
        f"Model {md_code(sc['model'])} ({'LoRA' if sc['lora'] else 'full fine-tuning'}), reward encoder "
        f"{md_code(sc['encoder'])}; splits {md_text(sc['split_sizes'])}; {md_text(sc['test_examples_evaluated'])} "
        f"test examples evaluated; benchmark items {md_text(sc['benchmark_items'])}; training steps "
        f"{md_text(sc['steps'])}.",
        "",
        *_hardware_line(sc),
        "This is a small-scale check of the paper's claim (GRPO with a semantic reward keeps general skills "
        "better than strong SFT), not a reproduction of its numbers.",
        "",
        "GRPO reward: "
        + " + ".join(f"{c['weight']:g} {md_text(c['name'])}" for c in metrics["config"]["rewards"]["components"])
        + ".",
        "",
        "## Task quality",
        "",
    ]
    task_cols = ["bleu", "chrf", "semantic", "semantic_2", "rouge_l", "lang_rate", "length_ratio", "source_copy_rate"]
    present = [c for c in task_cols if any(c in m["task"] for m in methods.values())]
    out.append(
        md_table(["method"] + present, [[k] + [fmt(m["task"].get(c)) for c in present] for k, m in methods.items()])
    )
    out += [
        "",
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
    diffs = metrics["intervals"]["differences"]
    if diffs:
        cols = sorted({k for d in diffs.values() for k in d})
        out += [f"### Differences between methods (paired bootstrap, {conf}% intervals)", ""]
        out.append(md_table(["comparison"] + cols, [[k] + [fmt_iv(d.get(c)) for c in cols] for k, d in diffs.items()]))
        out.append("")
    out += _chance_section(methods, conf)
    if "judge" in metrics:
        out += _judge_section(metrics["judge"])
    out += [
        "## Alignment tax",
        "",
        "Tax = score(base) − score(method); positive means the method lost general competence.",
        "",
    ]
    benches = sorted({b for m in methods.values() for b in m["general"]})
    rows = []
    for k, m in methods.items():
        row = [k] + [fmt(m["general"].get(b)) for b in benches]
        tiv = metrics["intervals"]["tax"].get(k, {})
        row += [fmt_iv(tiv.get(b)) for b in benches + ["mean"]]
        rows.append(row)
    out.append(md_table(["method"] + benches + [f"tax {b}" for b in benches] + ["tax mean"], rows))
    out += ["", *_tax_evidence_section(metrics, conf), "## Drift from the base model on general text", ""]
    out.append(
        md_table(
            ["method", "NLL increase mean", "NLL increase P90", "token KL mean", "token KL P90"],
            [
                [k] + [fmt((m.get("drift") or {}).get(c), 4) for c in ("nll_mean", "nll_p90", "kl_mean", "kl_p90")]
                for k, m in methods.items()
            ],
        )
    )
    out += ["", *_monitor_section(metrics.get("monitors")), "## Training", ""]
    tr = metrics["training"]
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
    out += ["", "## Plots", ""]
    for name, title in PLOTS.items():
        if name in plots:
            out += [f"### {title}", "", f"![{title}](plots/{name})", ""]
    out += ["## Sample outputs", ""]
    first = next(iter(evals.values()))
    rows = []
    for i, o in enumerate(first["outputs"][:8]):
        row = [_short(o["source"]), _short(o["reference"])]
        for k, e in evals.items():
            sem = e["per_example"]["semantic"][i]
            row.append(
                Md(f"{_short(e['outputs'][i]['output'])} (sim {sem:.2f}, lang {int(e['per_example']['lang_pass'][i])})")
            )
        rows.append(row)
    out.append(md_table(["source", "reference"] + list(evals), rows))
    out += ["", "## Versions", "", md_code(json.dumps(metrics["versions"])), ""]
    return "\n".join(out)


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


def _short(text: str, n: int = 60) -> Md:
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
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:4px 8px}"
        "th{background:#f4f4f4}img{max-width:560px;display:block;margin:1em 0}"
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><title>semrl report</title><style>{style}</style></head><body>{md.render(markdown_text)}</body></html>\n"
