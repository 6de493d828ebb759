"""Task metrics and the statistics around them: pure functions, no model.

- BLEU and chrF through sacrebleu, with the tokenisation that scores the target language
  correctly (`lang.sacrebleu_tokenizer`: 'zh' for Chinese, 'intl' = syllable level for Tibetan;
  the default '13a' scores Tibetan 0). The sacrebleu signature is always returned with a score.
- ROUGE-L through `rouge_score` with semrl's tokenizer (Tibetan syllables, Chinese characters);
  `rouge_score`'s own tokenizer drops every non-Latin character and scores CJK/Tibetan 0.
- CMRC 2018 EM/F1, re-implemented to behave as the official evaluation script does.
- Bootstrap confidence intervals: percentile intervals through `scipy.stats.bootstrap` for
  per-example values, and a paired bootstrap over sentence indices for corpus BLEU/chrF
  differences (sacrebleu's own paired test reports p-values, not an interval of the difference).

Scores: BLEU and chrF are on sacrebleu's 0-100 scale; ROUGE-L and CMRC EM/F1 are in [0, 1].
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from semrl.core import lang


@dataclass(frozen=True)
class MetricScore:
    """A corpus-level score and the sacrebleu signature that makes it reproducible."""

    score: float
    signature: str


def check_pairs(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"got {len(hyps)} hypotheses but {len(refs)} references; they must be aligned one to one")


def normalized_texts(texts: Sequence[str], target_lang: str) -> list[str]:
    return [lang.normalize_text(t, target_lang) for t in texts]


def bleu_metric(target_lang: str, sentence_level: bool = False):  # -> sacrebleu.metrics.BLEU
    from sacrebleu.metrics import BLEU

    # effective_order: a short sentence with no 4-gram match would otherwise score 0; this is
    # sacrebleu's recommended setting for sentence-level BLEU (corpus BLEU does not need it).
    return BLEU(tokenize=lang.sacrebleu_tokenizer(target_lang), effective_order=sentence_level)


def chrf_metric():  # -> sacrebleu.metrics.CHRF
    from sacrebleu.metrics import CHRF

    # chrF works on characters (whitespace removed), so it needs no language tokenizer.
    return CHRF()


def corpus_bleu(hyps: Sequence[str], refs: Sequence[str], target_lang: str) -> MetricScore:
    """Corpus BLEU (0-100) with the target language's sacrebleu tokenizer, on normalised text."""
    check_pairs(hyps, refs)
    metric = bleu_metric(target_lang)
    score = metric.corpus_score(normalized_texts(hyps, target_lang), [normalized_texts(refs, target_lang)])
    return MetricScore(float(score.score), str(metric.get_signature()))


def corpus_chrf(hyps: Sequence[str], refs: Sequence[str], target_lang: str) -> MetricScore:
    """Corpus chrF (0-100) on normalised text."""
    check_pairs(hyps, refs)
    metric = chrf_metric()
    score = metric.corpus_score(normalized_texts(hyps, target_lang), [normalized_texts(refs, target_lang)])
    return MetricScore(float(score.score), str(metric.get_signature()))


def sentence_bleu(hyps: Sequence[str], refs: Sequence[str], target_lang: str) -> list[float]:
    """Per-example BLEU (0-100, effective n-gram order) for per-example analysis."""
    check_pairs(hyps, refs)
    metric = bleu_metric(target_lang, sentence_level=True)
    return [
        float(metric.sentence_score(h, [r]).score)
        for h, r in zip(normalized_texts(hyps, target_lang), normalized_texts(refs, target_lang))
    ]


def sentence_chrf(hyps: Sequence[str], refs: Sequence[str], target_lang: str) -> list[float]:
    """Per-example chrF (0-100)."""
    check_pairs(hyps, refs)
    metric = chrf_metric()
    return [
        float(metric.sentence_score(h, [r]).score)
        for h, r in zip(normalized_texts(hyps, target_lang), normalized_texts(refs, target_lang))
    ]


class _MetricTokenizer:
    """The `tokenize(text)` object `rouge_score` accepts: semrl's metric tokens for a language."""

    def __init__(self, target_lang: str) -> None:
        self.target_lang = target_lang

    def tokenize(self, text: str) -> list[str]:
        return lang.tokenize_for_metrics(text, self.target_lang)


def rouge_l(hyps: Sequence[str], refs: Sequence[str], target_lang: str) -> list[float]:
    """Per-example ROUGE-L F-measure in [0, 1] over Tibetan syllables / Chinese characters /
    lower-cased words (see `lang.tokenize_for_metrics`)."""
    from rouge_score.rouge_scorer import RougeScorer

    check_pairs(hyps, refs)
    scorer = RougeScorer(["rougeL"], tokenizer=_MetricTokenizer(target_lang))
    # RougeScorer.score takes (target, prediction): the reference comes first.
    return [float(scorer.score(r, h)["rougeL"].fmeasure) for h, r in zip(hyps, refs)]


# The punctuation the official CMRC 2018 script removes, exactly: a few ASCII symbols and the
# common full-width marks. Its gaps are kept on purpose so scores stay comparable with published
# ones: ASCII , . ! ? ' " ( ) and the opening quote ‘ are NOT removed, nor the ellipsis … (the
# script lists '……' as one two-character entry, which never matches a single character).
CMRC_PUNCTUATION = frozenset("-:_*^/\\~`+=，。：？！“”；’《》·、「」（）－～『』")
# The official script's test for "a Chinese character": the basic CJK block up to U+9FA5.
_CMRC_CJK = re.compile("[\u4e00-\u9fa5]")


def _word_tokenize(text: str) -> list[str]:
    """NLTK's Treebank-style word tokenizer, as `nltk.word_tokenize` applies it to each sentence.

    `nltk.word_tokenize` first splits sentences with the punkt model, which is a download
    (unavailable offline); CMRC answers are short spans, and the word tokenizer alone gives the
    same tokens except for a period that ends a sentence inside the span."""
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer().tokenize(text)


def _cmrc_segments(text: str) -> list[str]:
    """The official script's mixed segmentation with punctuation removal: lower-case, strip, drop
    CMRC_PUNCTUATION (without ending the current run), one token per Chinese character, and runs of
    other characters split into words by the NLTK word tokenizer (whitespace separates words)."""
    tokens: list[str] = []
    run: list[str] = []
    for ch in text.lower().strip():
        if ch in CMRC_PUNCTUATION:
            continue
        if _CMRC_CJK.match(ch):
            if run:
                tokens.extend(_word_tokenize("".join(run)))
                run = []
            tokens.append(ch)
        else:
            run.append(ch)
    if run:
        tokens.extend(_word_tokenize("".join(run)))
    return tokens


def _cmrc_em_text(text: str) -> str:
    """The official EM normalisation: lower-case, strip, remove CMRC_PUNCTUATION (inner spaces stay)."""
    return "".join(ch for ch in text.lower().strip() if ch not in CMRC_PUNCTUATION)


def _longest_common_substring(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common contiguous run of tokens."""
    # autojunk=False: the junk heuristic would ignore frequent tokens in sequences of 200+ items.
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return matcher.find_longest_match(0, len(a), 0, len(b)).size


def cmrc_em_f1(prediction: str, answers: Sequence[str]) -> tuple[float, float]:
    """CMRC 2018 exact match and F1 of one prediction against its reference answers, each in [0, 1].

    As the official evaluation script computes them: EM is 1 when the punctuation-stripped,
    lower-cased prediction equals any answer. F1 segments both texts (Chinese characters one
    each, English words whole), takes the longest common *substring* of the two token lists
    (not the bag-of-tokens overlap of SQuAD), and scores precision = lcs/len(prediction),
    recall = lcs/len(answer); the result is the best F1 over the answers. The paper's "Avg" is
    (EM + F1) / 2.
    """
    # Hand-written: no library ships CMRC 2018's metric (longest common substring F1, not SQuAD's).
    if isinstance(answers, str):
        answers = [answers]
    if not answers:
        raise ValueError("cmrc_em_f1 needs at least one reference answer")
    em_pred = _cmrc_em_text(prediction)
    em = float(any(em_pred == _cmrc_em_text(a) for a in answers))
    pred_segs = _cmrc_segments(prediction)
    best_f1 = 0.0
    for answer in answers:
        ans_segs = _cmrc_segments(answer)
        lcs = _longest_common_substring(ans_segs, pred_segs)
        if lcs == 0:
            continue
        precision, recall = lcs / len(pred_segs), lcs / len(ans_segs)
        best_f1 = max(best_f1, 2 * precision * recall / (precision + recall))
    return em, best_f1
