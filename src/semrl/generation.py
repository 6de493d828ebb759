"""Batched generation for evaluation and for GRPO's tau calibration: one completion per prompt, decoded
without the prompt; and a cheaper CPU sampler for transformers' `generate`."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from semrl.config.evaluation import GenerationConfig

# Tokens generated between two checks for finished rows (see `generate_completions`).
PHASE_TOKENS = 8


def generate_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | list[dict[str, str]]],
    generation: GenerationConfig,
    progress: Callable[[int], None] | None = None,
    compact_batches: bool = True,
) -> list[str]:
    """Generate one completion per prompt in batches (left padding), decoded without the prompt.

    Prompts are completion-style strings or conversational message lists (rendered with the
    tokenizer's chat template). Completion-style outputs are cut at the first newline: the
    prompt format asks for one line, so a completion-style batch stops at "\\n" (transformers'
    `stop_strings`) and `clean_completion` keeps its first non-empty line. A row whose first
    token is a newline therefore stops there and comes out empty.

    With `compact_batches` (the default) three things keep a CPU from computing tokens nobody reads,
    without changing what a row computes: prompts are batched in order of their token length (less
    left padding; outputs come back in the caller's order), a batch's prompts are prefilled in chunks
    of similar length (`prefill_in_length_chunks`), and a batch is generated `PHASE_TOKENS` at
    a time, rows that have finished leave it and the rest continue from their KV cache
    (`DynamicCache.batch_select_indices`). transformers' `generate` runs every row until the
    batch's longest one ends: at the study's evaluation, trained models' outputs used 40% of the
    40-token budget, so most decode work went to rows already finished.
    """
    chat = [isinstance(p, list) for p in prompts]
    rendered = [
        tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) if c else p
        for p, c in zip(prompts, chat)
    ]
    previous_side, previous_truncation = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"  # keep a prompt's end: the cue the completion follows
    max_prompt = prompt_token_limit(model, generation.max_new_tokens)
    order = list(range(len(rendered)))
    if compact_batches:
        ids = tokenizer(rendered, truncation=True, max_length=max_prompt, add_special_tokens=not any(chat))
        order.sort(key=lambda i: len(ids["input_ids"][i]))  # stable: ties keep the caller's order
    texts: list[str] = [""] * len(rendered)
    # Built once per call: transformers rebuilds its "\n" stop criterion from the 262k-token vocabulary
    # in every `generate` call (about 0.6 s each, 6 s per method of the demo's evaluation).
    newline_stop = _newline_stop(tokenizer) if not all(chat) else None
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), generation.batch_size):
            rows = order[start : start + generation.batch_size]
            enc = tokenizer(
                [rendered[i] for i in rows],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_prompt,
                add_special_tokens=not any(chat),
            )
            enc = {k: v.to(model.device) for k, v in enc.items()}
            one_line = not any(chat[i] for i in rows)
            with inverse_cdf_sampling_in_generate():  # sampled rows only: greedy decoding draws nothing
                stop = newline_stop if one_line else None
                new_tokens = _generate_rows(model, tokenizer, enc, generation, stop, compact_batches)
            for i, tokens in zip(rows, new_tokens):
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                texts[i] = clean_completion(text, one_line=not chat[i])
            if progress:
                progress(len(rows))
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = previous_side, previous_truncation
        model.train(was_training)
    return texts


def _newline_stop(tokenizer: Any) -> Any:
    """transformers' criterion that stops a row at its first "\n" (what `stop_strings=["\n"]` builds)."""
    from transformers import StoppingCriteriaList, StopStringCriteria

    return StoppingCriteriaList([StopStringCriteria(tokenizer=tokenizer, stop_strings=["\n"])])


def _generate_rows(
    model: Any,
    tokenizer: Any,
    enc: dict[str, torch.Tensor],
    generation: GenerationConfig,
    newline_stop: Any | None,
    compact_batches: bool,
) -> list[list[int]]:
    """The new tokens of each row of one left-padded batch, up to its end of sequence; with
    `newline_stop` (completion-style prompts) also up to its first newline."""
    one_line = newline_stop is not None
    stop = {"stopping_criteria": newline_stop} if one_line else {}
    sampling = dict(
        do_sample=generation.do_sample,
        temperature=generation.temperature if generation.do_sample else None,
        top_p=generation.top_p if generation.do_sample else None,
        pad_token_id=tokenizer.pad_token_id,
    )
    eos = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
    ends = {t for t in ([eos] if isinstance(eos, int) else (eos or [])) if t is not None}
    ends |= {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}

    def finished(tokens: list[int]) -> bool:
        if any(t in ends for t in tokens):
            return True
        return one_line and "\n" in tokenizer.decode(tokens, skip_special_tokens=True)

    def cut(tokens: list[int]) -> list[int]:  # the tokens before the first end of sequence
        return next((tokens[:k] for k, t in enumerate(tokens) if t in ends), tokens)

    input_ids, attention_mask = enc["input_ids"], enc["attention_mask"]
    budget = generation.max_new_tokens
    if not compact_batches:
        with torch.no_grad():
            out = model.generate(**enc, **stop, **sampling, max_new_tokens=budget)
        return [cut(row) for row in out[:, input_ids.shape[1] :].tolist()]
    tokens: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    active = list(range(input_ids.shape[0]))  # rows (of this batch) still generating
    # The KV cache to continue from, under the name this transformers gives it: at first the prompts'
    # (all but their last token), prefilled in chunks of similar length when that saves padding.
    cache: dict[str, Any] = prefill_in_length_chunks(model, input_ids, attention_mask)
    while budget > 0 and active:
        step = min(PHASE_TOKENS, budget)
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                **cache,
                **stop,
                **sampling,
                max_new_tokens=step,
                return_dict_in_generate=True,
            )
        fresh = out.sequences[:, input_ids.shape[1] :]
        budget -= fresh.shape[1]
        keep = []
        for position, row in enumerate(active):
            tokens[row].extend(fresh[position].tolist())
            if not finished(tokens[row]):
                keep.append(position)
        name = _cache_name(out)
        cache = {name: getattr(out, name)}
        if len(keep) < len(active):
            index = torch.tensor(keep, dtype=torch.long, device=input_ids.device)
            cache[name].batch_select_indices(index)
            active = [active[k] for k in keep]
        else:
            index = None
        input_ids = out.sequences if index is None else out.sequences[index]
        mask = attention_mask if index is None else attention_mask[index]
        attention_mask = torch.cat([mask, torch.ones_like(input_ids[:, mask.shape[1] :])], dim=1)
    return [cut(row) for row in tokens]


# Rows per chunk of `prefill_in_length_chunks`, and the share of a batch's prefill positions the
# chunks must save before they are used.
PREFILL_CHUNK_ROWS = 16
PREFILL_MIN_SAVING = 0.2


def _cache_name(output: Any) -> str:
    # transformers 5.25 renamed `past_key_values` to `cache` (the old name warns); earlier 5.x have only the old.
    return "cache" if "cache" in getattr(output, "__dataclass_fields__", {}) else "past_key_values"


def prefill_in_length_chunks(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows_per_chunk: int | None = None
) -> dict[str, Any]:
    """The KV cache of a left-padded, length-sorted batch's prompts but their last token, computed
    `rows_per_chunk` rows at a time, each chunk only as wide as its longest prompt; {} (prefill
    in `generate`, as usual) when that would not save `PREFILL_MIN_SAVING` of the positions, or the
    model's cache is not transformers' `DynamicCache` of full or sliding-window layers.

    A batch's prefill computes every position of every row, padding included: the demo's 120 test
    prompts (24-132 tokens) padded to 132 were 48% padding. Each chunk's keys and values are
    left-padded with zeros to the batch's width and stacked into one cache, which `generate` then
    continues from with the full batch: padded positions are masked either way, so a row attends to
    the same keys and values at the same positions as in one batch. A sliding-window layer keeps the
    last `sliding_window - 1` of the batch's positions, as after one batch's prefill, whether a prompt
    is shorter or longer than the window (`test_generation_outputs_do_not_depend_on_prefill_chunks`
    and `test_harness_generation_in_large_batches_gives_lm_evals_answers` check the outputs are the
    same, on a model with sliding-window layers).
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    config = getattr(model, "config", None)
    rows, width = input_ids.shape
    rows_per_chunk = rows_per_chunk or PREFILL_CHUNK_ROWS
    lengths = attention_mask.sum(-1).tolist()
    starts = range(0, rows, rows_per_chunk)
    needed = sum(len(lengths[i : i + rows_per_chunk]) * max(lengths[i : i + rows_per_chunk]) for i in starts)
    if not hasattr(config, "get_text_config") or rows <= rows_per_chunk or width < 2:
        return {}
    if needed > (1 - PREFILL_MIN_SAVING) * rows * width:
        return {}
    merged = DynamicCache(config=config)
    if any(type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer) for layer in merged.layers):
        return {}
    chunks = []
    for start in starts:
        ids, mask = input_ids[start : start + rows_per_chunk], attention_mask[start : start + rows_per_chunk]
        keep = int(mask.sum(-1).max())  # left padding: the chunk's prompts lie in its last `keep` columns
        if keep < 2:
            return {}
        ids, mask = ids[:, width - keep : -1], mask[:, width - keep : -1]
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as `generate` numbers them
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        chunks.append(getattr(out, _cache_name(out)))
    for index in range(len(merged.layers)):
        parts = [(chunk.layers[index].keys, chunk.layers[index].values) for chunk in chunks]
        keys, values = (
            torch.cat([torch.nn.functional.pad(t[k], (0, 0, width - 1 - t[k].shape[-2], 0)) for t in parts])
            for k in (0, 1)
        )
        merged.update(keys, values, index)
    return {_cache_name(out): merged}


def prompt_token_limit(model: Any, max_new_tokens: int) -> int:
    """The most prompt tokens a batch row may hold: the model's context less the new tokens, so a
    pathological input can never make a batch larger than the model could attend to anyway."""
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 4096
    return max(1, int(context) - max_new_tokens)


def clean_completion(text: str, one_line: bool = True) -> str:
    """Strip whitespace; for completion-style prompts keep only the first non-empty line."""
    text = text.strip()
    if one_line:
        text = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return text


_SAMPLING_BLOCK = 512  # vocabulary positions per block of the two-level inverse CDF below


def _below(bound: torch.Tensor) -> torch.Tensor:
    """The largest float64 strictly below `bound` (u = rand * total can round up to total)."""
    return torch.nextafter(bound, torch.zeros_like(bound))


def inverse_cdf_multinomial(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of `probs` ([batch, vocab], non-negative, finite, each row summing above 0),
    drawn with probability proportional to its entry: a [batch, 1] int64 tensor, as
    `torch.multinomial(probs, 1)` returns.

    `torch.multinomial` on CPU draws one exponential variate per vocabulary entry (Gemma 3: 262k per
    row and decode step: 85 ms for 16 rows on 2 cores, 40% of GRPO's generation); inverse-CDF
    sampling needs one uniform per row. The CDF is two-level so that a 262k-long float32 running
    sum does not blur small probabilities: a float64 running sum of 512-entry block masses picks a
    block, a float64 running sum inside it picks the entry (0.3 ms for the same 16 rows). Entries of
    probability 0 are never drawn (a strict search over a CDF that does not rise at them). Same
    distribution, another random stream: a seed samples other tokens than `torch.multinomial` would.
    """
    batch, vocab = probs.shape
    pad = (-vocab) % _SAMPLING_BLOCK
    blocks = (torch.nn.functional.pad(probs, (0, pad)) if pad else probs).view(batch, -1, _SAMPLING_BLOCK)
    # A 512-entry float32 sum is exact to ~1e-7 of its block's mass (a float64 sum is 80x slower here).
    block_cdf = blocks.sum(-1).to(torch.float64).cumsum(-1)
    u = torch.rand(batch, 1, dtype=torch.float64, device=probs.device, generator=generator) * block_cdf[:, -1:]
    u = torch.minimum(u, _below(block_cdf[:, -1:]))
    block = torch.searchsorted(block_cdf, u, right=True)  # the first block whose CDF rises above u
    mass_before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp_min(0)), 0.0)
    inner_cdf = blocks[torch.arange(batch, device=probs.device), block.squeeze(1)].to(torch.float64).cumsum(-1)
    # The block's own sum may differ from its running sum in the last bits: stay below its total.
    rest = torch.minimum(u - mass_before, _below(inner_cdf[:, -1:]))
    entry = torch.searchsorted(inner_cdf, rest, right=True)
    return block * _SAMPLING_BLOCK + entry


def _multinomial_for_generation(input: torch.Tensor, num_samples: int, *args: Any, **kwargs: Any) -> torch.Tensor:
    # One draw per row: with or without replacement is the same draw, so `replacement` is not read.
    simple = not kwargs.keys() - {"replacement", "generator"} and len(args) <= 1
    usable = (
        simple
        and num_samples == 1
        and input.dim() == 2
        and input.device.type == "cpu"
        and input.dtype.is_floating_point
        and input.shape[1] > 0
    )
    if usable:
        lowest, highest = torch.aminmax(input)  # one pass (a NaN makes `highest` NaN)
        # Negative, non-finite or all-zero rows go to torch.multinomial, which raises as it did.
        if lowest >= 0 and torch.isfinite(highest) and bool((input.sum(-1) > 0).all()):
            return inverse_cdf_multinomial(input, kwargs.get("generator"))
    return torch.multinomial(input, num_samples, *args, **kwargs)


class _TorchWithInverseCdfMultinomial(types.ModuleType):
    """`torch` as transformers' generation module sees it inside `inverse_cdf_sampling_in_generate`."""

    multinomial = staticmethod(_multinomial_for_generation)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


@contextlib.contextmanager
def inverse_cdf_sampling_in_generate() -> Iterator[None]:
    """Within this block, transformers' `generate(do_sample=True)` draws tokens on CPU with
    `inverse_cdf_multinomial` instead of `torch.multinomial` (same distribution; with a 262k
    vocabulary and 16 rows, under 1 ms per decode step instead of 85 ms; see there). GPUs, several samples per row and invalid
    rows keep `torch.multinomial`. Only `transformers.generation.utils` sees the change, and only
    while the block lasts; without that module nothing changes.
    """
    try:
        import transformers.generation.utils as generation_utils
    except ImportError:
        yield
        return
    seen = generation_utils.torch
    generation_utils.torch = _TorchWithInverseCdfMultinomial("torch")
    try:
        yield
    finally:
        generation_utils.torch = seen
