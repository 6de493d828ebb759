"""GRPO's micro-batches regrouped by length, each padded only to its own longest row.

TRL generates one batch of completions per optimizer step, pads every row to the batch's longest
prompt (on the left) and longest completion (on the right), shuffles the rows and cuts them into
`steps_per_generation` micro-batches that keep the full width. On the demo's RL prompts that is
2,278 padded positions per step for about 1,490 real tokens, every one of them run forward and
backward. Sorted by length before the cut, short rows share a micro-batch and its all-padding
columns go (`docs/results/benchmarks.md`, the GRPO step's padding).
"""

from __future__ import annotations

from typing import Any

import torch

# The keys of TRL 1.16's text-only generation batch, by what their second dimension spans.
PROMPT_KEYS = ("prompt_ids", "prompt_mask")
COMPLETION_KEYS = (
    "completion_ids",
    "completion_mask",
    "old_per_token_logps",
    "ref_per_token_logps",
    "sampling_per_token_logps",
    "tool_mask",
)
ROW_KEYS = ("advantages",)
BATCH_KEYS = ("num_items_in_batch",)  # one value for the whole generation batch
# Loss types whose sum over one step's micro-batches does not depend on which rows share one: the
# mean over equal-sized micro-batches of per-sequence means (grpo, sapo), or a sum of token losses
# over a fixed normaliser (dr_grpo: batch x max length; dapo, cispo: the generation batch's tokens).
# bnpo and luspo normalise by each micro-batch's own tokens, so regrouping would change them.
REGROUPABLE_LOSSES = frozenset({"grpo", "sapo", "dr_grpo", "dapo", "cispo"})


def padded_positions(batches: list[dict[str, Any]]) -> int:
    """Prompt plus completion positions the loss passes run over, padding included."""
    return sum(int(b["prompt_ids"].numel() + b["completion_ids"].numel()) for b in batches)


def length_sorted_micro_batches(batches: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The rows of TRL's micro-batches regrouped shortest to longest into as many micro-batches of
    the same size, each without its all-padding prompt columns (left) and completion columns
    (right). None when there is nothing to regroup or a batch holds a key this does not know (an
    image, a new TRL field): the caller keeps TRL's batches then.

    Each row keeps its tokens, mask and advantage; only which rows share a forward changes, and
    the real tokens' positions shift by the padding removed, which rotary embeddings do not see
    (attention depends on relative positions). With a loss in `REGROUPABLE_LOSSES` the step's
    gradient is the same up to float rounding.
    """
    known = set(PROMPT_KEYS + COMPLETION_KEYS + ROW_KEYS + BATCH_KEYS)
    if len(batches) < 2 or any(set(b) - known for b in batches):
        return None
    sizes = {int(b["prompt_ids"].shape[0]) for b in batches}
    if len(sizes) != 1 or batches[0]["advantages"].ndim != 1:  # per-token advantages: a subclass's
        return None
    present = [k for k in batches[0] if batches[0][k] is not None]
    joined = {k: batches[0][k] if k in BATCH_KEYS else torch.cat([b[k] for b in batches]) for k in present}
    lengths = joined["prompt_mask"].sum(1) + joined["completion_mask"].sum(1)
    order = torch.argsort(lengths, stable=True)
    size = sizes.pop()
    regrouped = []
    for start in range(0, len(order), size):
        rows = order[start : start + size]
        batch: dict[str, Any] = {k: v if k in BATCH_KEYS else v[rows] for k, v in joined.items()}
        prompt_used = batch["prompt_mask"].any(0).nonzero()
        first = int(prompt_used.min()) if len(prompt_used) else 0
        completion_used = batch["completion_mask"].any(0).nonzero()
        end = int(completion_used.max()) + 1 if len(completion_used) else 1
        for k in PROMPT_KEYS:
            batch[k] = batch[k][:, first:].contiguous()
        for k in COMPLETION_KEYS:
            if k in batch:
                batch[k] = batch[k][:, :end].contiguous()
        regrouped.append(batch)
    # TRL's batch also says which keys are absent (None); keep them so.
    for batch in regrouped:
        batch.update({k: None for k in batches[0] if batches[0][k] is None})
    return regrouped
