"""The tax meter: NLL drift from the base model on fixed general texts every N training steps and,
beside it, the task gain (the dev references' log-likelihood over the base model's), so the
report can draw the trade-off between them along training (RL's Razor's frontier plot,
arXiv 2509.04259)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from transformers import TrainerCallback

from semrl.eval.tax.drift import text_nll
from semrl.eval.tax.likelihood import continuation_scores, finite_mean, per_char_logprobs


class TaxMeterCallback(TrainerCallback):
    """Logs `tax/nll_drift` (mean NLL increase over the base model on fixed general texts) every
    `every_n_steps` optimizer steps, so the alignment tax can be watched while training. Given dev
    prompts and references (`task_contexts`, `task_continuations`, `base_task_logprob`: the base
    model's mean per-character log-likelihood of them), it also logs `task/dev_gain`, the model's
    mean per-character log-likelihood of the references minus the base model's: teacher-forced,
    so it costs one forward per dev example and no generation.

    The value is added to the step's log entry (the trainer's `log_history`, and the `logs` that
    later callbacks receive); list this callback before callbacks that write logs from `on_log`.
    The measurement runs under no_grad in eval mode and restores train mode afterwards.
    """

    def __init__(
        self,
        texts: Sequence[str],
        tokenizer: Any,
        every_n_steps: int,
        base_nll: Sequence[float],
        batch_size: int = 4,
        max_length: int = 256,
        task_contexts: Sequence[str] = (),
        task_continuations: Sequence[str] = (),
        base_task_logprob: float | None = None,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if len(base_nll) != len(texts):
            raise ValueError(
                f"base_nll has {len(base_nll)} values for {len(texts)} texts; compute it with base_nll_for"
            )
        self.texts = list(texts)
        self.tokenizer = tokenizer
        self.every_n_steps = every_n_steps
        self.base_nll = np.asarray(base_nll, dtype=float)
        self.batch_size = batch_size
        self.max_length = max_length
        self.task_contexts = list(task_contexts)
        self.task_continuations = list(task_continuations)
        self.base_task_logprob = base_task_logprob
        self.history: list[tuple[int, float]] = []  # (step, drift)

    def measure(self, model: Any) -> float:
        """Mean NLL increase of `model` over the base on the texts."""
        nll = np.asarray(text_nll(model, self.tokenizer, self.texts, self.batch_size, self.max_length))
        return float(np.mean(nll - self.base_nll))

    def measure_task(self, model: Any) -> float | None:
        """The model's mean per-character log-likelihood of the dev references minus the base's."""
        if not self.task_contexts or self.base_task_logprob is None:
            return None
        scores = continuation_scores(
            model, self.tokenizer, self.task_contexts, self.task_continuations, self.batch_size
        )
        return finite_mean(per_char_logprobs(scores)) - self.base_task_logprob

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step % self.every_n_steps == 0:
            control.should_log = True  # make sure the step has a log entry to carry the value
        return control

    def on_log(
        self,
        args: Any,
        state: Any,
        control: Any,
        logs: dict[str, float] | None = None,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        step = state.global_step
        if logs is None or model is None or step == 0 or step % self.every_n_steps:
            return
        if self.history and self.history[-1][0] == step:
            return  # already measured at this step (e.g. a second log call for evaluation)
        drift = self.measure(model)
        self.history.append((step, drift))
        values = {"tax/nll_drift": drift}
        gain = self.measure_task(model)
        if gain is not None:
            values["task/dev_gain"] = gain
        logs.update(values)
        # Trainer.log appends a copy of `logs` to log_history just before calling on_log.
        if state.log_history and state.log_history[-1].get("step") == step:
            state.log_history[-1].update(values)
