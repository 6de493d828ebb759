"""lm-evaluation-harness's Hugging Face model, scoring log-likelihoods with semrl's
`scored_continuations`.

HFLM computes the logits of every position of every request and a float32 log-softmax over all
of them, then keeps the continuation's few positions: for Gemma 3's 262k-token vocabulary the LM
head and that softmax cost more than the rest of the model on a CPU (MMLU: about 300 positions of
which one is read). This subclass computes the continuation's positions only; lm-eval's requests,
tokenisation, truncation, one-forward-per-question grouping and answers are unchanged.
"""

from __future__ import annotations

from typing import Any

from lm_eval.models.huggingface import HFLM

from semrl.eval.tax.likelihood import scored_continuations


class ContinuationOnlyHFLM(HFLM):
    """`HFLM` whose log-likelihood requests compute only the continuations' logits
    (`logits_to_keep`); generation and everything else is HFLM's."""

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


def harness_model(model: Any, tokenizer: Any, batch_size: int) -> HFLM:
    """An lm-eval model over an already loaded model and tokenizer."""
    return ContinuationOnlyHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
