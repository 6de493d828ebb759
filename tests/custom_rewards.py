"""Custom rewards for the tests of `rewards.components[].name` as a dotted path (tests/ is on the
pytest pythonpath, so this module imports as `custom_rewards`)."""

from __future__ import annotations

from typing import Any


def length_reward(prompts: list[Any], completions: list[Any], scale: float = 1.0, **columns: Any) -> list[float]:
    """`scale` x the completion's length in characters."""
    return [scale * len(c if isinstance(c, str) else c[-1]["content"]) for c in completions]


class ExactMatch:
    """1.0 where the completion equals its reference, else `miss`."""

    def __init__(self, miss: float = 0.0) -> None:
        self.miss = miss

    def __call__(self, prompts: list[Any], completions: list[Any], reference: list[str], **columns: Any) -> list[float]:
        return [1.0 if c.strip() == r.strip() else self.miss for c, r in zip(completions, reference)]


NOT_CALLABLE = 3
