"""The tax instrument's pieces on a tiny random model: teacher-forced continuation scores, the
task-distribution KL, paired flips with McNemar's exact test, and chance floors."""

from __future__ import annotations

import pytest
import torch

from semrl.config.model import ModelConfig
from semrl.eval.tax.likelihood import continuation_scores
from semrl.models import build_tiny_model, load_policy


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    path = build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    return load_policy(ModelConfig(name="tiny", lora={"enabled": False}), path)


def _reference_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """One unpadded forward over the whole sequence, summed over the continuation's tokens."""
    ctx = tokenizer(context, add_special_tokens=True)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=True)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
    return float(sum(logp[t - 1, whole[t]] for t in range(len(ctx), len(whole))))


def test_batched_left_padded_scores_equal_unpadded_forwards(tiny) -> None:
    model, tokenizer = tiny
    contexts = ["Question: what is 2+2?\nAnswer:", "A", "今天天气很好。问题：", "long " * 30 + "end:"]
    continuations = [" 4", " longer continuation here", "天气", " x"]
    scores = continuation_scores(model, tokenizer, contexts, continuations, batch_size=3)
    for s, c, x in zip(scores, contexts, continuations):
        assert s.logprob == pytest.approx(_reference_logprob(model, tokenizer, c, x), abs=1e-3)
        assert s.tokens > 0 and s.chars == len(x.strip()) and s.per_char == pytest.approx(s.logprob / s.chars)
    # The batch does not change a row's score.
    alone = continuation_scores(model, tokenizer, contexts[:1], continuations[:1], batch_size=1)[0]
    assert alone.logprob == pytest.approx(scores[0].logprob, abs=1e-4)


def test_trailing_context_space_is_scored_with_the_continuation(tiny) -> None:
    model, tokenizer = tiny
    a = continuation_scores(model, tokenizer, ["Answer: "], ["yes"])[0]
    b = continuation_scores(model, tokenizer, ["Answer:"], [" yes"])[0]
    assert a.logprob == pytest.approx(b.logprob, abs=1e-5) and a.tokens == b.tokens


def test_empty_continuation_has_no_score(tiny) -> None:
    model, tokenizer = tiny
    s = continuation_scores(model, tokenizer, ["Answer:"], [""])[0]
    assert s.tokens == 0 and s.per_char != s.per_char  # nan
