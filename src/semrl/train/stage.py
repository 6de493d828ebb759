"""The training stages, on TRL: cold-start SFT, the strong-SFT baseline and semantic GRPO.

`train_stage` maps one stage of the experiment config onto TRL's `SFTTrainer`/`SFTConfig` or
`GRPOTrainer`/`GRPOConfig`, trains (resuming from the stage's last complete checkpoint when there is
one) and writes the stage's output to ``stage_dir/model``: with LoRA (by default) the adapter in
PEFT's format, else a full safetensors checkpoint (`model.save` chooses; see
`models.save_stage_output`). `models.load_policy` loads either as a plain model, so every later
stage and the evaluation load models the same way.

A stage that starts from an adapter (GRPO from the cold-start adapter) gets the parent adapter
merged into its base in memory and trains a fresh LoRA on top, exactly as it did when stages saved
merged checkpoints. Continuing the parent's adapter instead would change what GRPO optimises: TRL
computes the KL reference of a PEFT model with its adapter disabled, which would then be the base
model rather than the cold-start model GRPO starts from; and the two stages' updates together would
be confined to one rank-r adapter.

Stage folder::

    stage_dir/
      checkpoints/checkpoint-N/   trainer checkpoints (resume points; TensorBoard logs under runs/)
      log.jsonl                   one JSON object per trainer log (step, epoch, time, metrics)
      tau.json                    GRPO and RFT: the semantic floor tau and where it came from
      rft_samples.json            RFT only: each kept prompt's best sampled completion and its reward
      reward_stats.rank<N>.json   GRPO only: process N's reward calls, completions scored, seconds
      model/                      the stage's output (adapter + base_model.json, or a full checkpoint)
      merged/                     model.save: both only: the full checkpoint beside the adapter

GRPO logs carry TRL's own metrics (``rewards/<name>/mean``, ``frac_reward_zero_std``, completion
lengths, ``kl`` when beta > 0) plus semrl's monitors against reward hacking and stalls:
``monitor/language_pass_rate`` (completions in the target script only), ``monitor/length_ratio``
(completion / reference length in characters), ``monitor/frac_groups_equal_reward`` (groups whose
G weighted rewards are all equal, i.e. no learning signal, whatever `scale_rewards` is) and
``monitor/<reward>/frac_groups_equal`` per reward (a saturated binary language reward shows up
here), ``monitor/mixed_script_rate`` (completions mixing scripts), ``monitor/source_copy_rate``
(completions copied from their source, `rewards.is_source_copy`) and ``monitor/repetition_rate``
(completions with repeated 4-grams, `rewards.is_repetitive`) at the guards' default thresholds, so
runs with and without guards compare (see `completion_monitors`), and timings:
``timing/reward/<name>_s`` per reward call, ``timing/rewards_s`` for all rewards of a generation
batch, ``step_time_s`` and ``timing/reward_share`` (reward time / step time).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semrl.config.experiment import ExperimentConfig
from semrl.core.dist import is_main_process, wait_for_everyone
from semrl.core.errors import ConfigError, DataError
from semrl.core.io import write_jsonl
from semrl.core.layout import ADAPTER_BASE_FILE, TRAINER_STATE_FILE, StageLayout
from semrl.core.memory import freed_memory_kept_for_reuse, release_freed_memory
from semrl.core.provenance import machine
from semrl.train.callbacks import (
    JsonlLogCallback,
    json_safe,
    read_log,
    use_rich_progress,
    write_reward_stats,
)
from semrl.train.cpu import (
    compact_lm_head_on_cpu,
    compiled_decoder_layers,
    lm_head_in_one_product,
    lora_in_weight_dtype,
    torch_compile_problem,
)
from semrl.train.grpo import build_grpo_trainer
from semrl.train.rft import rft_examples
from semrl.train.sft import build_sft_trainer
from semrl.train.stages import StageSpec, stage_specs

if TYPE_CHECKING:
    import torch

    from semrl.data.example import Example
    from semrl.encoders import Encoder


logger = logging.getLogger(__name__)


@dataclass
class StageResult:
    """What a stage produced: its model directory, the trainer's final metrics, and extras
    (tau calibration, resume point, batch arithmetic) for the stage manifest."""

    stage: str
    model_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def last_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under `checkpoints_dir`, or None.

    A checkpoint is a resume point only if its `trainer_state.json` (written last by transformers)
    parses and its safetensors weights are complete; a damaged newer one is skipped, with a
    warning naming it, for the older one `SAVE_TOTAL_LIMIT` keeps.
    """
    return _resume_points(checkpoints_dir)[0]


def _resume_points(checkpoints_dir: str | Path) -> tuple[Path | None, list[Path]]:
    """(the newest complete checkpoint, the damaged checkpoints newer than it)."""
    # Hand-written: transformers' get_last_checkpoint picks the highest step even when that
    # checkpoint is half-written or damaged, which is the case this check exists for.
    folder = Path(checkpoints_dir)
    if not folder.is_dir():
        return None, []
    numbered = []
    for path in folder.glob("checkpoint-*"):
        suffix = path.name.split("-", 1)[1]
        if suffix.isdigit() and path.is_dir():
            numbered.append((int(suffix), path))
    damaged: list[Path] = []
    for _, path in sorted(numbered, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, damaged
        if (path / TRAINER_STATE_FILE).exists():  # a save interrupted before its state file is expected
            logger.warning("%s: damaged checkpoint (%s); falling back to an older one", path, problem)
        damaged.append(path)
    return None, damaged


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at `path` is not a safe resume point, or None when it is."""
    try:
        state = json.loads((path / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
        int(state["global_step"])
    except FileNotFoundError:
        return f"no {TRAINER_STATE_FILE}: interrupted while saving"
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return f"{TRAINER_STATE_FILE} is unreadable"
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        return "no safetensors weights"
    for file in weights:
        if not safetensors_complete(file):
            return f"{file.name} is truncated or damaged"
    return None


def safetensors_complete(path: Path) -> bool:
    """Whether a safetensors file's header parses and the file holds every byte it announces."""
    try:
        with path.open("rb") as f:
            size = path.stat().st_size
            head = f.read(8)
            if len(head) < 8:
                return False
            n = int.from_bytes(head, "little")
            if n <= 0 or 8 + n > size:
                return False
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return False
    ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    return 8 + n + max(ends, default=0) <= size


def _checkpoint_state(path: Path) -> dict[str, Any]:
    return json.loads((path / TRAINER_STATE_FILE).read_text(encoding="utf-8"))


def checkpoint_is_final(path: Path) -> bool:
    """Whether the trainer had reached its last step when it saved this checkpoint."""
    state = _checkpoint_state(path)
    max_steps = int(state.get("max_steps") or 0)
    return max_steps > 0 and int(state["global_step"]) >= max_steps


def stage_examples(spec: StageSpec, splits: dict[str, list[Example]]) -> list[Example]:
    missing = [name for name in spec.splits if name not in splits]
    if missing:
        raise DataError(
            f"stage '{spec.name}' trains on the split(s) {list(spec.splits)}, but {missing} is missing from the "
            f"run's splits (present: {sorted(splits)}); prepare the data again (`semrl data`)"
        )
    examples = [ex for name in spec.splits for ex in splits[name]]
    if not examples:
        raise DataError(
            f"stage '{spec.name}' has no training examples: split(s) {list(spec.splits)} are empty; "
            f"check data.splits in the config"
        )
    return examples


def _cxx_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend would use ($CXX, g++, c++, clang++), or None."""
    return next(
        (path for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c and (path := shutil.which(c))), None
    )


def compile_layers_choice(stage: str, value: bool | str, dtype: torch.dtype) -> tuple[bool, str]:
    """Whether stage `stage` compiles its decoder layers (`stages.<stage>.compile_layers`), and why.

    'auto' compiles where it was measured to pay: bfloat16 training on a CPU with AMX and a C++
    compiler that torch.compile can use (`semrl.train.cpu.torch_compile_problem`). The demo's
    longest SFT step ran 1.43x faster so on an Intel Xeon with AMX, 1.09x on an AMD EPYC without
    AMX, where the matrix work is a larger share (`benchmarks/results/step_ab_compile*.json`).
    `true` on a CPU machine without a C++ compiler raises ConfigError before anything trains:
    torch.compile's CPU backend builds C++ kernels, and would fail at the first step.
    """
    import torch

    if value is False:
        return False, "compile_layers: false"
    on_cpu = not torch.cuda.is_available()
    compiler = _cxx_compiler() if on_cpu else None
    if value is True:
        if on_cpu and compiler is None:
            raise ConfigError(
                f"stages.{stage}.compile_layers: torch.compile on CPU builds C++ kernels, and no C++ compiler "
                f"($CXX, g++, c++ or clang++) is on PATH; install one (e.g. apt-get install g++) or set "
                f"stages.{stage}.compile_layers: auto (compiles only where it can) or false"
            )
        return True, "compile_layers: true"
    if not on_cpu:
        return False, "auto: measured on CPUs only; set true to compile on a GPU"
    if dtype != torch.bfloat16:
        return False, f"auto: the model trains in {str(dtype).removeprefix('torch.')}, measured to pay in bfloat16"
    if not torch.cpu.get_capabilities().get("amx_bf16"):
        return False, "auto: the CPU has no AMX (without it compiled layers bought 1.02-1.15x a stage)"
    if compiler is None:
        return False, "auto: no C++ compiler ($CXX, g++, c++ or clang++) for torch.compile's CPU kernels"
    problem = torch_compile_problem()
    if problem is not None:
        return False, f"auto: torch.compile failed on this machine ({problem})"
    return True, f"auto: the CPU has AMX and {compiler} builds the kernels"


def check_compile_layers(config: ExperimentConfig, stage: str) -> bool:
    """Whether stage `stage` compiles its decoder layers on this machine (see `compile_layers_choice`,
    which raises ConfigError for an explicit `true` that cannot compile)."""
    from semrl.models import select_dtype

    dtype = select_dtype(config.model.dtype)
    compiles, _reason = compile_layers_choice(stage, config.stages.section(stage).compile_layers, dtype)
    return compiles


def _prepare_stage_dir(stage_dir: Path, resume: bool) -> Path | None:
    """Decide the resume point and make the log agree with it (main process only writes).

    Without a resume point the stage starts fresh: old checkpoints, log and tau are removed. With
    one, log rows after the checkpoint's step are dropped, since those steps will run again.
    """
    layout = StageLayout(stage_dir)
    checkpoints = layout.checkpoints
    log_path = layout.log
    resume_from, damaged = _resume_points(checkpoints) if resume else (None, [])
    if is_main_process():
        for path in damaged:  # a resumed run saves those steps again
            shutil.rmtree(path, ignore_errors=True)
        # Each run writes these again at its end; old ones may be from a different process count.
        for stale in stage_dir.glob(layout.reward_stats("*").name):
            stale.unlink(missing_ok=True)
        if resume_from is None:
            shutil.rmtree(checkpoints, ignore_errors=True)
            for path in (layout.log, layout.tau):
                path.unlink(missing_ok=True)
        else:
            step = int(_checkpoint_state(resume_from)["global_step"])
            kept = [row for row in read_log(log_path) if int(row.get("step", 0)) <= step]
            write_jsonl(log_path, kept)
    wait_for_everyone()
    return resume_from


def _weights_are_sharded(accelerator: Any) -> bool:
    """DeepSpeed ZeRO-3 and FSDP keep a slice of each weight per process."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return accelerator.distributed_type == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3


def _save_stage_model(
    trainer: Any, tokenizer: Any, config: ExperimentConfig, init_model: str | Path | None, stage_dir: Path
) -> Path:
    """Write the stage's output as `model.save` asks (`models.save_stage_output`) and return its
    directory. With sharded weights every process first takes part in the trainer's gathering save
    (adapters or full weights); the main process then finishes from that on CPU, so no process ever
    saves only its own shard."""
    from semrl.models import adapter_base_record, is_adapter_dir, load_policy, save_merged, save_stage_output

    layout = StageLayout(stage_dir)
    mode = config.model.save_mode
    base_record = adapter_base_record(init_model, config.model, layout.model)
    if not _weights_are_sharded(trainer.accelerator):
        if trainer.accelerator.is_main_process:
            model = trainer.accelerator.unwrap_model(trainer.model)
            save_stage_output(model, tokenizer, mode, layout.model, layout.merged_model, base_record)
        wait_for_everyone()
        return layout.model
    gathered = layout.gathered
    trainer.save_model(str(gathered))  # collective: all processes must call it
    if trainer.accelerator.is_main_process:
        if is_adapter_dir(gathered):
            # `gathered` is a sibling of the model folder, so the record's relative path holds for both.
            tokenizer.save_pretrained(gathered)
            (gathered / ADAPTER_BASE_FILE).write_text(json.dumps(base_record, indent=2) + "\n", encoding="utf-8")
            if mode in ("merged", "both"):
                merged, _ = load_policy(config.model, gathered)  # base + adapter, merged
                save_merged(merged, tokenizer, layout.model if mode == "merged" else layout.merged_model)
            if mode in ("adapter", "both"):
                shutil.rmtree(layout.model, ignore_errors=True)
                gathered.rename(layout.model)
        else:
            from transformers import AutoModelForCausalLM

            save_merged(
                AutoModelForCausalLM.from_pretrained(str(gathered), torch_dtype="auto"), tokenizer, layout.model
            )
        shutil.rmtree(gathered, ignore_errors=True)
    wait_for_everyone()
    return layout.model


def train_stage(
    stage: str,
    config: ExperimentConfig,
    splits: dict[str, list[Example]],
    stage_dir: str | Path,
    init_model: str | Path | None = None,
    callbacks: Sequence[Any] = (),
    resume: bool = True,
    encoder: Encoder | None = None,
) -> StageResult:
    """Train one stage and write its output model (adapter or full checkpoint) to ``stage_dir/model``.

    Args:
        stage: a stage of `config.stages` (built-in: 'cold_start', SFT on the cold-start split;
            'sft', the strong-SFT baseline on the cold-start and RL splits; 'grpo', semantic GRPO
            on the RL split; or one the config declares). Its kind decides the trainer (rft: SFT on
            the best of its parent's sampled completions, see `semrl.train.rft`).
        config: the experiment config; the stage reads `stages.<stage>`, `model`, `task`, `seed`
            and, for GRPO and RFT, `rewards` (or the stage's own `rewards`).
        splits: the run's splits by name (`semrl.data.load_splits`).
        stage_dir: the stage's folder (checkpoints, log.jsonl, model).
        init_model: the checkpoint to start from (GRPO: the cold-start output); None starts from
            the configured base model.
        callbacks: extra `transformers.TrainerCallback`s.
        resume: continue from the last complete checkpoint in ``stage_dir/checkpoints`` if there
            is one; False starts over and deletes old checkpoints.
        encoder: the reward encoder, when the caller built it already (GRPO and RFT stages).
    """
    from transformers import set_seed

    from semrl.models import choose_dtype, load_policy

    specs = stage_specs(config.stages)
    if stage not in specs:
        raise ConfigError(f"unknown stage {stage!r}; stages are {', '.join(specs)}")
    spec = specs[stage]
    dtype = choose_dtype(config.model.dtype)
    compile_layers, compile_reason = compile_layers_choice(
        stage, config.stages.section(stage).compile_layers, dtype.dtype
    )
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    examples = stage_examples(spec, splits)
    resume_from = _prepare_stage_dir(stage_dir, resume)

    # Seed before loading: LoRA adapters are initialised randomly when the trainer wraps the model.
    set_seed(config.stage_seed(stage))
    if spec.kind == "grpo" and init_model is None:
        logger.warning("GRPO stage %r starts from the base model (no starting checkpoint given)", stage)
    model, tokenizer = load_policy(config.model, init_model)
    # User callbacks first: one that adds to the logs (the tax meter) must run before the writer.
    layout = StageLayout(stage_dir)
    all_callbacks = [*callbacks, JsonlLogCallback(layout.log)]
    extra: dict[str, Any] = {
        "hardware": {**machine(), "dtype": dtype.name, "dtype_reason": dtype.reason},
        "compiled_layers": compile_layers,
        "compiled_layers_reason": compile_reason,
        "init_model": str(init_model) if init_model is not None else config.model.name,
        "num_examples": len(examples),
        "lora": config.model.lora.enabled,
        "resumed_from": str(resume_from) if resume_from else None,
    }
    if spec.kind == "grpo":
        trainer = build_grpo_trainer(
            stage,
            config,
            splits,
            examples,
            model,
            tokenizer,
            stage_dir,
            all_callbacks,
            extra,
            resuming=resume_from is not None,
            encoder=encoder,
        )
    else:
        if spec.kind == "rft":  # sampled from the starting model, before the trainer wraps it
            examples = rft_examples(stage, config, splits, examples, model, tokenizer, stage_dir, extra, encoder)
            extra["num_examples"] = len(examples)
        trainer = build_sft_trainer(stage, config, examples, model, tokenizer, layout.checkpoints, all_callbacks, extra)
    use_rich_progress(trainer)

    if resume_from is not None and checkpoint_is_final(resume_from):
        # Stopped after its last checkpoint but before its manifest: the training is done. Load
        # that checkpoint's weights and save the stage; training on would step past max_steps.
        logger.warning("%s is the stage's final step: finishing the stage from it without training", resume_from)
        trainer._load_from_checkpoint(str(resume_from))
        trainer.state.global_step = int(_checkpoint_state(resume_from)["global_step"])
        metrics: dict[str, Any] = {}
    else:
        # They change how the work is done, not what is computed (tests/test_speed_equivalence.py).
        with contextlib.ExitStack() as speedups:
            speedups.enter_context(compact_lm_head_on_cpu())
            speedups.enter_context(lm_head_in_one_product())
            speedups.enter_context(lora_in_weight_dtype(trainer.model))
            if compile_layers:
                logger.info("stage %s: decoder layers compiled (%s)", stage, compile_reason)
                if is_main_process():  # the first steps are slow while they compile: say why
                    print(f"[{stage}] decoder layers compiled by torch.compile ({compile_reason})", flush=True)
                speedups.enter_context(compiled_decoder_layers(trainer.model))
            speedups.enter_context(freed_memory_kept_for_reuse())
            output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        metrics = {k: json_safe(v) for k, v in output.metrics.items()}

    if spec.kind == "grpo":
        write_reward_stats(stage_dir, trainer.reward_funcs)
    model_dir = _save_stage_model(trainer, tokenizer, config, init_model, stage_dir)
    metrics["global_step"] = trainer.state.global_step
    # The accelerator keeps references to the model and optimizer; drop them so that the next
    # stage run in this process (the runner trains all stages in one) starts with free memory.
    trainer.accelerator.free_memory()
    del trainer, model
    release_freed_memory()
    return StageResult(stage=stage, model_dir=model_dir, metrics=metrics, extra=extra)
