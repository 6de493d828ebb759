"""BLEU and chrF rewards (sentence-level sacrebleu with the target language's tokenisation), for the paper's reward ablations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from semrl.core import lang as L
from semrl.rewards.base import RewardFunction, check_lang, column_values

if TYPE_CHECKING:
    pass


class BleuReward(RewardFunction):
    """Sentence BLEU (sacrebleu, effective order) with the tokenizer that suits the target
    language (`lang.sacrebleu_tokenizer`: 'zh' for Chinese, 'intl' for Tibetan), scaled to 0..1."""

    name = "bleu"

    def __init__(self, target_lang: str) -> None:
        super().__init__()
        from sacrebleu.metrics import BLEU

        check_lang(target_lang)
        self.target_lang = target_lang
        self.tokenize = L.sacrebleu_tokenizer(target_lang)  # report it: BLEU is meaningless without it
        self.metric = BLEU(tokenize=self.tokenize, effective_order=True)

    def _score(self, completions: list[str], columns: dict[str, Any]) -> list[float]:
        return _sentence_scores(self.metric, completions, columns, self.target_lang, self.name)


def _sentence_scores(
    metric: Any, completions: list[str], columns: dict[str, Any], target_lang: str, name: str
) -> list[float]:
    """A sacrebleu sentence metric per completion against its reference, scaled to 0..1, on
    language-normalised text."""
    refs = column_values(columns, "reference", len(completions), name)
    norm = L.normalize_text
    return [
        min(1.0, metric.sentence_score(norm(h, target_lang), [norm(r, target_lang)]).score / 100.0)
        for h, r in zip(completions, refs)
    ]


class ChrfReward(RewardFunction):
    """Sentence chrF (sacrebleu, character 6-grams; language-independent) scaled to 0..1, on
    language-normalised text (Tibetan tsheg/shad variants unified)."""

    name = "chrf"

    def __init__(self, target_lang: str) -> None:
        super().__init__()
        from sacrebleu.metrics import CHRF

        check_lang(target_lang)
        self.target_lang = target_lang
        self.metric = CHRF()

    def _score(self, completions: list[str], columns: dict[str, Any]) -> list[float]:
        return _sentence_scores(self.metric, completions, columns, self.target_lang, self.name)
