"""The tax instrument's pieces on a tiny random model: teacher-forced continuation scores, the
task-distribution KL, paired flips with McNemar's exact test, and chance floors."""

from __future__ import annotations

import copy

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


def _perturbed(model, scale: float, seed: int):
    twin = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in twin.parameters():
            if p.ndim == 2:
                p.add_(torch.randn(p.shape, generator=gen) * scale * p.std())
    return twin


def test_continuous_scores_rank_known_damage_with_intervals_excluding_zero(tiny) -> None:
    """A model that learnt 24 answers, then the same model with its weights perturbed at two noise
    levels: the continuous tax sees both losses, ranks them, and its intervals exclude zero."""
    from semrl.eval.stats import paired_bootstrap
    from semrl.eval.tax.likelihood import per_char_logprobs

    model, tokenizer = tiny
    contexts = [f"问题{i}：这个词是" for i in range(24)]
    golds = ["吉祥如意", "天气很好", "我们明天", "一本新书", "学生们去", "妈妈煮茶"] * 4
    trained = copy.deepcopy(model)
    batch = tokenizer([c + g for c, g in zip(contexts, golds)], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.Adam(trained.parameters(), lr=1e-2)
    trained.train()
    for _ in range(40):
        optimizer.zero_grad()
        trained(**batch, labels=labels).loss.backward()
        optimizer.step()
    trained.eval()

    def scores(m):
        return per_char_logprobs(continuation_scores(m, tokenizer, contexts, golds, batch_size=8))

    base, mild, severe = scores(trained), scores(_perturbed(trained, 0.3, 0)), scores(_perturbed(trained, 0.8, 1))
    boot = {"n_resamples": 500, "seed": 0}
    tax_mild, tax_severe = paired_bootstrap(base, mild, **boot), paired_bootstrap(base, severe, **boot)
    assert tax_mild.low > 0 and tax_severe.low > 0
    assert paired_bootstrap(mild, severe, **boot).low > 0  # severe damage costs more than mild
