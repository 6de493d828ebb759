"""The GRPO stage runs unchanged under `accelerate launch` with two processes (CPU, gloo).

`accelerate launch --cpu --num_processes 2` is not that launch: in accelerate 1.15 `--cpu` (like a
config with `distributed_type: MULTI_CPU`) takes the "simple" launcher, which starts one process
and leaves starting the others to mpirun. The shipped examples/accelerate/cpu_2proc.yaml goes
through accelerate's torchrun launcher instead; see the comment in that file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from semrl.cli import main, packaged_config

REPO = Path(__file__).resolve().parents[1]
CPU_2PROC = REPO / "examples" / "accelerate" / "cpu_2proc.yaml"
GRPO_STEPS = 2
GRPO_BATCH = 8  # 4 completions per process per step: 2 processes x 4, one group of G=4 each


def test_grpo_stage_under_two_process_accelerate_launch(tmp_path: Path, fixture_data_dir: Path) -> None:
    config = packaged_config("tiny.yaml")
    data_args = ["--data-dir", str(fixture_data_dir)]
    assert main(["train", "cold_start", str(config), "--out", str(tmp_path), *data_args]) == 0

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CPU_2PROC),
        "-m",
        "semrl.cli",
        "train",
        "grpo",
        str(config),
        "--out",
        str(tmp_path),
        *data_args,
        "--set",
        f"stages.grpo.max_steps={GRPO_STEPS}",
        "--set",
        f"stages.grpo.batch_size={GRPO_BATCH}",
        "--set",
        "stages.grpo.num_generations=4",
        "--set",
        f"stages.grpo.save_steps={GRPO_STEPS}",
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    stage_dir = tmp_path / "stages" / "grpo"
    manifest = json.loads((stage_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["metrics"]["global_step"] == GRPO_STEPS
    # The effective batch was split over the two processes, not run twice on one.
    assert manifest["extra"]["per_device_batch_size"] == GRPO_BATCH // 2

    stats = [json.loads((stage_dir / f"reward_stats.rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    assert [s["rank"] for s in stats] == [0, 1]
    assert all(s["world_size"] == 2 for s in stats)
    assert not list(stage_dir.glob("reward_stats.rank2*.json"))
    for name in ("semantic", "language"):
        per_rank = [s["rewards"][name]["completions"] for s in stats]
        assert all(n > 0 for n in per_rank), (name, per_rank)
        assert all(s["rewards"][name]["calls"] == GRPO_STEPS for s in stats)
        # Between them the processes scored every completion of every step, each exactly once.
        assert sum(per_rank) == GRPO_STEPS * GRPO_BATCH, (name, per_rank)


def test_timed_reward_counts_calls_and_completions(tmp_path: Path) -> None:
    from semrl.train.callbacks import TimedReward, write_reward_stats

    def length(prompts, completions, **kwargs):
        return [float(len(c)) for c in completions]

    reward = TimedReward(length)
    assert reward(prompts=["a", "b", "c"], completions=["x", "yy", "zzz"]) == [1.0, 2.0, 3.0]
    reward(prompts=["a"], completions=["x"])
    assert reward.stats()["calls"] == 2 and reward.stats()["completions"] == 4

    path = write_reward_stats(tmp_path, [reward, length])  # unwrapped functions have no counts
    data = json.loads(path.read_text(encoding="utf-8"))
    assert path.name == "reward_stats.rank0.json"
    assert data["rank"] == 0 and data["world_size"] == 1
    assert list(data["rewards"]) == ["length"]
    assert data["rewards"]["length"]["completions"] == 4
