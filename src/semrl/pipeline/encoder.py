"""`semrl encoder train`: the run's reward encoder trained in its run directory, under its lock.

The run directory is the one `semrl run` uses (same splits, drawn the same way), so
``RUN_DIR/splits/test.jsonl`` names the held-out documents the encoder was evaluated on, and a
later `semrl run` with `rewards.encoder.backend: trained` finds the encoder there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from semrl.config.experiment import ExperimentConfig
from semrl.core.layout import RunLayout
from semrl.core.lock import locked_directory
from semrl.pipeline.run import prepare_run_data
from semrl.train.encoder import EncoderResult, require_encoder_section, train_encoder_stage

Log = Callable[[str], None]


def train_encoder(
    config: ExperimentConfig, out_dir: str | Path | None = None, force: bool = False, log: Log = print
) -> EncoderResult:
    """Draw (or reuse) the run's splits in `out_dir` and train its encoder there (`encoder` section).

    Skips a finished encoder trained with the same config; `force` retrains it."""
    require_encoder_section(config)
    layout = RunLayout(Path(out_dir or config.output_dir))
    with locked_directory(layout.root, layout.lock, f"run directory {layout.root}", log=log):
        splits = prepare_run_data(config, layout)  # refuses splits made from another data config
        return train_encoder_stage(config, splits, layout.root, force=force, log=log)
