"""LLM-judge pairwise win rate: which of two methods' outputs for the same source a judge prefers.

Each pair of outputs is shown to the judge twice, as (A, B) and as (B, A), so that a judge that
favours a position cannot favour a method. Each order gives a verdict A / B / tie. For the pair's
first method the result is a *win* when both orders prefer its output, a *loss* when both prefer
the other output and a *tie* otherwise. A pair whose two orders prefer opposite outputs (the
judge picked the same position twice) is a tie that is also counted as *inconsistent*: a high
inconsistent share says the judge follows position, not content. Identical outputs are a tie
without asking. Win/tie/loss rates get bootstrap percentile intervals over examples.

Judges:
- `LocalJudge`: a transformers model ('tiny', 'gemma-3-270m', a hub id or a local path; see
  `models.resolve_model`). Mode 'logprob' (the default for base models) compares
  log P(label | prompt) of the labels A, B and tie; mode 'generate' (the default for chat models)
  generates a short reply and parses it.
- `EndpointJudge`: any OpenAI-compatible server (vLLM, llama.cpp, a hosted API) by URL, asked
  through the `openai` client (its timeout and retries with backoff), a bounded number of
  requests in flight at once.

`run_judge` compares the configured method pairs of a run from `RUN_DIR/eval/<method>.json` and
writes `RUN_DIR/eval/judge.json`, which the report reads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from semrl.config.data import TaskConfig
from semrl.config.evaluation import JudgeConfig
from semrl.config.model import ModelConfig
from semrl.core.errors import ConfigError, DataError, ModelError
from semrl.core.layout import RunLayout
from semrl.data.prompts import check_template, language_fields

LABELS: tuple[str, str, str] = ("A", "B", "tie")
OUTCOMES: tuple[str, str, str] = ("win", "tie", "loss")

DEFAULT_TEMPLATES: dict[str, str] = {
    "translation": "Two {target_lang_name} translations of the same {source_lang_name} text follow. Judge which "
    "one preserves the meaning of the source better and reads more fluently and naturally in {target_lang_name}.\n"
    "{source_lang_name} source: {source}\n"
    "Reference translation: {reference}\n"
    "Translation A: {output_a}\n"
    "Translation B: {output_b}\n"
    "Reply with one word: A if translation A is better, B if translation B is better, tie if they are equally good.\n"
    "Answer:",
    "headline": "Two {target_lang_name} headlines for the same {source_lang_name} article follow. Judge which one "
    "states the article's meaning better and reads more fluently and naturally in {target_lang_name}.\n"
    "Article: {source}\n"
    "Reference headline: {reference}\n"
    "Headline A: {output_a}\n"
    "Headline B: {output_b}\n"
    "Reply with one word: A if headline A is better, B if headline B is better, tie if they are equally good.\n"
    "Answer:",
}
TEMPLATE_FIELDS: frozenset[str] = frozenset(
    {
        "source",
        "reference",
        "output_a",
        "output_b",
        "source_lang",
        "target_lang",
        "source_lang_name",
        "target_lang_name",
    }
)


# ---------------------------------------------------------------------------------------------
# Prompts and verdicts
# ---------------------------------------------------------------------------------------------
def judge_template(cfg: JudgeConfig, task: TaskConfig) -> str:
    """The judge prompt template (the config's, else the task's default), checked for fields."""
    template = cfg.template or DEFAULT_TEMPLATES[task.kind]
    return check_template(template, "evaluation.judge.template", TEMPLATE_FIELDS, ("output_a", "output_b"))


def render_prompt(template: str, task: TaskConfig, source: str, reference: str, output_a: str, output_b: str) -> str:
    """One judge prompt, trailing whitespace removed (a scored label follows it after one space)."""
    return template.format(
        source=source, reference=reference, output_a=output_a, output_b=output_b, **language_fields(task)
    ).rstrip()


# Capital A or B standing alone ("A", "Translation B.", "**A**"; not the article "a"), or "tie".
_VERDICT = re.compile(r"(?<![A-Za-z])([AB])(?![A-Za-z])|(?i:\b(tie)\b)")
_THINKING = re.compile(r"<think>.*?</think>", re.DOTALL)


def parse_verdict(text: str) -> str | None:
    """The first verdict label in a judge's reply ('A', 'B' or 'tie'), None when there is none.
    Reasoning in <think>...</think> is skipped."""
    match = _VERDICT.search(_THINKING.sub(" ", text))
    if match is None:
        return None
    return match.group(1) or "tie"


def combine(verdict_ab: str | None, verdict_ba: str | None) -> tuple[str, bool]:
    """The outcome for the first method from its two verdicts, and whether they were inconsistent.

    In order "ab" the first method's output is shown as A; in order "ba" it is shown as B. A win
    needs both orders to prefer the first method, a loss both to prefer the second; anything else
    (a tie or an unparsed verdict in either order, or opposite preferences) is a tie. Opposite
    preferences mean the judge chose the same position twice: inconsistent.
    """
    prefers_ab = {"A": "first", "B": "second"}.get(verdict_ab or "")
    prefers_ba = {"A": "second", "B": "first"}.get(verdict_ba or "")
    if prefers_ab == prefers_ba == "first":
        return "win", False
    if prefers_ab == prefers_ba == "second":
        return "loss", False
    return "tie", prefers_ab is not None and prefers_ba is not None


# ---------------------------------------------------------------------------------------------
# Judges
# ---------------------------------------------------------------------------------------------
@dataclass
class JudgeReply:
    """A judge's answer to one prompt: the verdict label ('A', 'B', 'tie'; None if unparsed), and
    the reply text (generating judges) or the labels' probabilities (scoring judges)."""

    verdict: str | None
    text: str | None = None
    probs: dict[str, float] | None = None


class Judge(Protocol):
    """Anything that answers judge prompts; `description` names it in judge.json."""

    description: dict[str, Any]

    def __call__(self, prompts: Sequence[str]) -> list[JudgeReply]: ...


def label_logprobs(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    label_ids: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 8,
) -> list[list[float]]:
    """log P(label | prompt) for every prompt and label, summed over the label's tokens.

    Sequences that share a context (the prompt plus all but the label's last token) share one
    forward pass, so with single-token labels each prompt costs one pass; only the last few
    positions' logits are computed (`logits_to_keep`). Left padding with explicit position ids.
    """
    import torch

    from semrl.models import device_of, eval_mode, left_padded

    if any(len(lab) == 0 for lab in label_ids):
        raise ValueError("every label needs at least one token")
    rows: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for i, prompt in enumerate(prompt_ids):
        for j, lab in enumerate(label_ids):
            rows.setdefault((*prompt, *lab[:-1]), []).append((i, j))
    out = [[0.0] * len(label_ids) for _ in prompt_ids]
    keep = max(len(lab) for lab in label_ids)
    contexts = list(rows)
    device = device_of(model)
    with eval_mode(model):
        for start in range(0, len(contexts), batch_size):
            batch = contexts[start : start + batch_size]
            logits = model(**left_padded(batch, pad_id, device), use_cache=False, logits_to_keep=keep).logits
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()
            kept = logp.shape[1]
            for r, context in enumerate(batch):
                for i, j in rows[context]:
                    lab = label_ids[j]
                    # the last kept position predicts lab[-1]; lab[t] is predicted len(lab)-1-t earlier
                    out[i][j] = float(sum(logp[r, kept - len(lab) + t, tok] for t, tok in enumerate(lab)))
            del logits, logp
    return out


class LocalJudge:
    """A transformers model as judge.

    Args:
        model, tokenizer: the judge (e.g. from `models.load_policy`).
        mode: 'logprob' scores the labels after the prompt and picks the most probable (one
            forward pass per prompt with single-token labels); 'generate' generates up to
            `max_tokens` tokens greedily and parses the reply; 'auto': generate when the
            tokenizer has a chat template, logprob otherwise.
        name: how judge.json names the model.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        mode: str = "auto",
        batch_size: int = 8,
        max_tokens: int = 16,
        name: str = "local",
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        self.mode = ("generate" if self.chat else "logprob") if mode == "auto" else mode
        if self.mode not in ("logprob", "generate"):
            raise ConfigError(f"evaluation.judge.mode must be auto, logprob or generate; got {mode!r}")
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self.truncated = 0
        self.description = {"kind": "local", "model": name, "mode": self.mode}
        # After a completion-style prompt ("...Answer:") a label follows a space; after a chat
        # template's assistant turn it starts the reply.
        self.label_ids = [
            tokenizer.encode(("" if self.chat else " ") + lab, add_special_tokens=False) for lab in LABELS
        ]
        if self.mode == "logprob" and len({tuple(ids) for ids in self.label_ids}) < len(LABELS):
            raise ModelError(
                f"the judge's tokenizer encodes the labels {LABELS} identically; use evaluation.judge.mode: generate"
            )

    def __call__(self, prompts: Sequence[str]) -> list[JudgeReply]:
        if self.mode == "generate":
            return self._generate(prompts)
        return self._score(prompts)

    def _generate(self, prompts: Sequence[str]) -> list[JudgeReply]:
        from semrl.config.evaluation import GenerationConfig
        from semrl.generation import generate_completions

        inputs: list[Any] = [[{"role": "user", "content": p}] for p in prompts] if self.chat else list(prompts)
        texts = generate_completions(
            self.model,
            self.tokenizer,
            inputs,
            GenerationConfig(max_new_tokens=self.max_tokens, batch_size=self.batch_size),
        )
        return [JudgeReply(parse_verdict(t), text=t) for t in texts]

    def _score(self, prompts: Sequence[str]) -> list[JudgeReply]:
        import math

        limit = getattr(self.model.config, "max_position_embeddings", None) or 4096
        room = limit - max(len(ids) for ids in self.label_ids)
        encoded: list[list[int]] = []
        for prompt in prompts:
            if self.chat:
                text = self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
                )
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            else:
                ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
            if len(ids) > room:
                ids = ids[-room:]  # keep the end: the outputs and the question
                self.truncated += 1
            encoded.append(ids)
        scores = label_logprobs(self.model, encoded, self.label_ids, self.tokenizer.pad_token_id, self.batch_size)
        replies = []
        for row in scores:
            top = max(row)
            total = sum(math.exp(s - top) for s in row)
            probs = {lab: math.exp(s - top) / total for lab, s in zip(LABELS, row)}
            replies.append(
                JudgeReply(max(probs, key=probs.__getitem__), probs={k: round(v, 4) for k, v in probs.items()})
            )
        return replies


class EndpointJudge:
    """An OpenAI-compatible chat endpoint as judge ({url}/chat/completions, greedy decoding),
    through the `openai` client: `timeout_s` per request, `max_retries` with the client's backoff
    (connection errors, 408/409/429 and 5xx), at most `concurrency` requests in flight."""

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        max_tokens: int = 16,
        timeout_s: float = 120.0,
        max_retries: int = 2,
        concurrency: int = 8,
    ) -> None:
        self.base_url = url.rstrip("/").removesuffix("/chat/completions")
        self.endpoint = self.base_url + "/chat/completions"
        self.model, self.api_key, self.max_tokens, self.timeout_s = model, api_key, max_tokens, timeout_s
        self.max_retries, self.concurrency = max_retries, concurrency
        self.description = {"kind": "endpoint", "model": model, "url": self.endpoint, "mode": "generate"}

    def __call__(self, prompts: Sequence[str]) -> list[JudgeReply]:
        from concurrent.futures import ThreadPoolExecutor

        from openai import OpenAI

        if not prompts:
            return []
        # The client needs some key; servers started without one (vLLM, llama.cpp) ignore "EMPTY".
        client = OpenAI(
            base_url=self.base_url,
            api_key=self.api_key or "EMPTY",
            timeout=self.timeout_s,
            max_retries=self.max_retries,
        )
        with client:
            pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts)))
            try:
                replies = list(pool.map(lambda p: self._ask(client, p), prompts))
            finally:
                pool.shutdown(wait=True, cancel_futures=True)  # after a failure, send no more
        return replies

    def _ask(self, client: Any, prompt: str) -> JudgeReply:
        import openai

        try:
            completion = client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=self.max_tokens,
                temperature=0.0,
            )
        except openai.APITimeoutError:
            raise ModelError(
                f"the judge endpoint {self.endpoint} did not answer within {self.timeout_s:g}s, "
                f"{self.max_retries + 1} tries (evaluation.judge.timeout_s, evaluation.judge.max_retries)"
            ) from None
        except openai.APIConnectionError as err:
            raise ModelError(
                f"cannot reach the judge endpoint {self.endpoint} ({type(err.__cause__ or err).__name__}). Is the "
                f"server running and evaluation.judge.url right? e.g. `vllm serve MODEL --port 8000` with url "
                f"http://localhost:8000/v1"
            ) from None
        except openai.APIStatusError as err:
            hint = " Check the API key (evaluation.judge.api_key_env)." if err.status_code in (401, 403) else ""
            raise ModelError(
                f"the judge endpoint {self.endpoint} answered HTTP {err.status_code}: {err.response.text[:300]!r}.{hint}"
            ) from None
        try:
            text = completion.choices[0].message.content or ""
        except (AttributeError, IndexError, TypeError):
            raise ModelError(
                f"the judge endpoint {self.endpoint} did not answer in the OpenAI chat format "
                f"(choices[0].message.content): {str(completion)[:300]!r}"
            ) from None
        return JudgeReply(parse_verdict(text), text=text.strip()[:500])


def check_judge(cfg: JudgeConfig) -> None:
    """What `build_judge` needs, checked without loading the judge (a run checks it before it
    trains): a model name, the endpoint's API key when one is named, a local model that exists."""
    if not cfg.model:
        raise ConfigError(
            "evaluation.judge.model is not set: name a local model ('tiny', 'gemma-3-270m', a hub id or a path), or with evaluation.judge.url the served model"
        )
    if cfg.url:
        if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
            raise ConfigError(
                f"evaluation.judge.api_key_env names ${cfg.api_key_env}, which is not set; export it or remove the key"
            )
        return
    from semrl.models import model_source_problem

    problem = model_source_problem(cfg.model)
    if problem is not None:
        raise ModelError(
            f"evaluation.judge.model: {problem}. Name a local model ('tiny', 'gemma-3-270m' or a checkpoint "
            f"directory), download it once with internet access, or set evaluation.judge.enabled: false"
        )


def build_judge(cfg: JudgeConfig) -> Judge:
    """The judge a config names: an endpoint when `url` is set, else a local model."""
    check_judge(cfg)
    if cfg.url:
        api_key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        return EndpointJudge(
            cfg.url, cfg.model, api_key, cfg.max_tokens, cfg.timeout_s, cfg.max_retries, cfg.concurrency
        )
    from semrl.models import load_policy

    model, tokenizer = load_policy(ModelConfig(name=cfg.model))
    return LocalJudge(
        model, tokenizer, mode=cfg.mode, batch_size=cfg.batch_size, max_tokens=cfg.max_tokens, name=cfg.model
    )


# ---------------------------------------------------------------------------------------------
# Comparing two methods
# ---------------------------------------------------------------------------------------------
@dataclass
class PairItem:
    """One test example with the two methods' outputs."""

    id: str
    source: str
    reference: str
    first: str
    second: str


@dataclass
class PairOutcome:
    """The judged pair: outcome for the first method, and both orders' replies (None when the
    outputs were identical and the judge was not asked)."""

    id: str
    outcome: str
    inconsistent: bool
    identical: bool
    ab: JudgeReply | None = None
    ba: JudgeReply | None = None


def compare_outputs(judge: Judge, items: Sequence[PairItem], template: str, task: TaskConfig) -> list[PairOutcome]:
    """Ask the judge about every pair in both orders (one call for all prompts) and combine."""
    prompts: list[str] = []
    asked: list[int] = []
    for i, it in enumerate(items):
        if it.first.strip() == it.second.strip():
            continue
        prompts.append(render_prompt(template, task, it.source, it.reference, it.first, it.second))
        prompts.append(render_prompt(template, task, it.source, it.reference, it.second, it.first))
        asked.append(i)
    replies = judge(prompts) if prompts else []
    if len(replies) != len(prompts):
        raise ModelError(f"the judge answered {len(replies)} of {len(prompts)} prompts")
    by_item = {i: (replies[2 * k], replies[2 * k + 1]) for k, i in enumerate(asked)}
    outcomes = []
    for i, it in enumerate(items):
        if i not in by_item:
            outcomes.append(PairOutcome(it.id, "tie", False, True))
            continue
        ab, ba = by_item[i]
        outcome, inconsistent = combine(ab.verdict, ba.verdict)
        outcomes.append(PairOutcome(it.id, outcome, inconsistent, False, ab, ba))
    return outcomes


def summarize(
    outcomes: Sequence[PairOutcome], n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """Counts, win/tie/loss rates with bootstrap intervals, the inconsistent share and the share of
    decisive verdicts that picked position A (0.5 for a judge without position bias)."""
    from semrl.eval.stats import bootstrap_ci

    n = len(outcomes)
    if n == 0:
        raise DataError("no pairs to summarise: the two methods share no evaluated test example")
    replies = [r for o in outcomes for r in (o.ab, o.ba) if r is not None]
    counts = {k: sum(o.outcome == k for o in outcomes) for k in OUTCOMES}
    counts["inconsistent"] = sum(o.inconsistent for o in outcomes)
    counts["identical"] = sum(o.identical for o in outcomes)
    counts["unparsed"] = sum(r.verdict is None for r in replies)
    rates = {}
    for k in OUTCOMES:
        iv = bootstrap_ci(
            [float(o.outcome == k) for o in outcomes], n_resamples=n_resamples, confidence=confidence, seed=seed
        )
        rates[k] = {"estimate": iv.estimate, "low": iv.low, "high": iv.high}
    decisive = [r.verdict for r in replies if r.verdict in ("A", "B")]
    return {
        "n": n,
        "counts": counts,
        "rates": rates,
        "inconsistent_rate": counts["inconsistent"] / n,
        "first_position_rate": decisive.count("A") / len(decisive) if decisive else None,
        "judge_prompts": len(replies),
    }


def pair_items(first: dict[str, Any], second: dict[str, Any], limit: int | None = None) -> list[PairItem]:
    """The examples both evaluations hold (matched by id, in the first's order), up to `limit`."""
    others = {o["id"]: o["output"] for o in second["outputs"]}
    items = [
        PairItem(o["id"], o["source"], o["reference"], o["output"], others[o["id"]])
        for o in first["outputs"]
        if o["id"] in others
    ]
    return items[:limit] if limit else items


def load_judge(run_dir: str | Path) -> dict[str, Any] | None:
    """RUN_DIR/eval/judge.json, or None when the run has not been judged."""
    import json

    path = RunLayout(Path(run_dir)).judge
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def judge_summary(record: dict[str, Any], evals: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """metrics.json's "judge" section: judge.json without per-example replies, flagged `stale` when
    a compared method was evaluated again after judging."""
    stale = any(evals.get(m, {}).get("eval_key") != k for m, k in record.get("eval_keys", {}).items())
    pairs = {name: {k: v for k, v in p.items() if k != "per_example"} for name, p in record["pairs"].items()}
    return {"judge": record["judge"], "confidence": record.get("confidence"), "stale": stale, "pairs": pairs}
