"""lm-evaluation-harness's Hugging Face model, scoring log-likelihoods with semrl's
`scored_continuations`.

HFLM computes the logits of every position of every request and a float32 log-softmax over all
of them, then keeps the continuation's few positions: for Gemma 3's 262k-token vocabulary the LM
head and that softmax cost more than the rest of the model on a CPU (MMLU: about 300 positions of
which one is read). This subclass computes the continuation's positions only; lm-eval's requests,
tokenisation, truncation, one-forward-per-question grouping and answers are unchanged.

Its generation (CMRC 2018's and GSM8K's answers) runs in batches of its own size: decoding a few
rows costs a CPU about what decoding one does (the step reads every weight), so GSM8K's 5 demo
questions at 2 a batch decoded 3 x 64 steps where one batch decodes 64. A batch's prompts are
prefilled one at a time, each at its own length (`prefill_in_length_chunks`), so the larger batch
does not pad CMRC 2018's passages of 240-680 tokens to the longest (on CPU; a GPU prefills the
padded batch).
"""

from __future__ import annotations

from typing import Any

from lm_eval.models.huggingface import HFLM

from semrl.eval.tax.likelihood import scored_continuations
from semrl.generation import prefill_in_length_chunks


class ContinuationOnlyHFLM(HFLM):
    """`HFLM` whose log-likelihood requests compute only the continuations' logits
    (`logits_to_keep`), and whose generation runs `generation_batch_size` prompts a batch, each
    prefilled at its own length on CPU; everything else is HFLM's."""

    def __init__(self, *args: Any, generation_batch_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.generation_batch_size = generation_batch_size

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        if self.generation_batch_size is None:
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        # HFLM batches generation by its one batch size, the log-likelihoods' (lm-eval's `batch_size`).
        likelihood_batch, self.batch_size_per_gpu = self.batch_size_per_gpu, self.generation_batch_size
        try:
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        finally:
            self.batch_size_per_gpu = likelihood_batch

    def _model_generate(self, context: Any, max_length: int, stop: list[str], **generation_kwargs: Any) -> Any:
        mask = generation_kwargs.get("attention_mask")
        # On a CPU padding costs its full compute; a GPU prefills a padded batch faster than its rows one by one.
        if self.backend == "causal" and mask is not None and context.device.type == "cpu":
            generation_kwargs |= prefill_in_length_chunks(self.model, context, mask, rows_per_chunk=1)
        return super()._model_generate(context, max_length, stop, **generation_kwargs)

    # lm-eval's extension point: TemplateLM declares it abstract for every model to implement.
    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str], list[int], list[int]]],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
    ) -> list[tuple[float, bool]]:
        if self.backend != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        batch_size = override_bs or (self.batch_size if isinstance(self.batch_size, int) else 1)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # HFLM feeds the last max_length tokens before the continuation's last one.
        answers = scored_continuations(
            self.model,
            [(ctx, cont) for _, ctx, cont in requests],
            pad,
            batch_size=batch_size,
            max_length=self.max_length + 1,
        )
        for (request, _, _), answer in zip(requests, answers):
            if request is not None:  # loglikelihood_rolling's requests are cached by their caller
                self.cache_hook.add_partial("loglikelihood", request, answer)
        return answers


def harness_model(model: Any, tokenizer: Any, batch_size: int, generation_batch_size: int | None = None) -> HFLM:
    """An lm-eval model over an already loaded model and tokenizer; its generation runs
    `generation_batch_size` prompts a batch (None: `batch_size`, as HFLM does)."""
    return ContinuationOnlyHFLM(
        pretrained=model, tokenizer=tokenizer, batch_size=batch_size, generation_batch_size=generation_batch_size
    )
