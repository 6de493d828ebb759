"""The language-consistency reward R_lang (Su et al. 2026): 1 when the completion is in the target script only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from semrl.core import lang as L
from semrl.rewards.base import RewardFunction, check_lang
from semrl.rewards.guards import check_mode

if TYPE_CHECKING:
    pass


class LanguageReward(RewardFunction):
    """R_lang: 'binary' is the paper's rule (1 if every script-bearing character is in the target
    script, else 0); 'continuous' is the target-script share, which still separates completions
    when a binary reward would give a whole group the same value (no GRPO signal)."""

    name = "language"

    def __init__(self, target_lang: str, mode: Literal["binary", "continuous"] = "binary") -> None:
        super().__init__()
        check_lang(target_lang)
        self.target_lang = target_lang
        self.mode = check_mode(mode, self.name)

    def _score(self, completions: list[str], columns: dict[str, Any]) -> list[float]:
        if self.mode == "binary":
            return [float(L.is_target_script_only(c, self.target_lang)) for c in completions]
        return [L.target_script_share(c, self.target_lang) for c in completions]
