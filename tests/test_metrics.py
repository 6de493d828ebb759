"""Tests for semrl.eval.metrics and semrl.eval.stats: every expected score below is computed by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sacrebleu

from semrl.eval.metrics import cmrc_em_f1, corpus_bleu, corpus_chrf, rouge_l, sentence_bleu, sentence_chrf
from semrl.eval.stats import Interval, bootstrap_ci, mean_of_paired_means_ci, paired_bootstrap, paired_corpus_bootstrap

TSHEG = "\u0f0b"


# ---------------------------------------------------------------------------------------------
# BLEU / chrF
# ---------------------------------------------------------------------------------------------
def test_chinese_bleu_exact_match_is_100() -> None:
    score = corpus_bleu(["我们今天去北京。"], ["我们今天去北京。"], "zh")
    assert score.score == pytest.approx(100.0)
    assert "tok:zh" in score.signature


def test_chinese_bleu_partial_match_by_hand() -> None:
    # 'zh' tokenisation: one token per character. hyp 我爱北京天安门 (7) vs ref 我爱北京天安 (6):
    # n-gram precisions 6/7, 5/6, 4/5, 3/4; hyp longer than ref, so BP = 1.
    # BLEU = (6/7 * 5/6 * 4/5 * 3/4) ** (1/4) = (3/7) ** 0.25.
    score = corpus_bleu(["我爱北京天安门"], ["我爱北京天安"], "zh")
    assert score.score == pytest.approx(100 * (3 / 7) ** 0.25, abs=1e-6)
    # Shorter hypothesis 我爱北京 (4): precisions all 1, BP = exp(1 - 6/4).
    short = corpus_bleu(["我爱北京"], ["我爱北京天安"], "zh")
    assert short.score == pytest.approx(100 * math.exp(-0.5), abs=1e-6)


def test_tibetan_bleu_needs_syllable_tokenisation() -> None:
    hyp = f"བཀྲ{TSHEG}ཤིས{TSHEG}བདེ{TSHEG}ལེགས{TSHEG}ཡིན།"
    ref = f"བཀྲ{TSHEG}ཤིས{TSHEG}བདེ{TSHEG}ལེགས{TSHEG}ཕུན{TSHEG}སུམ{TSHEG}ཚོགས།"
    # The default 13a sees one space-free "word" per sentence: no match at all.
    assert sacrebleu.corpus_bleu([hyp], [[ref]]).score == 0.0
    # 'intl' splits syllables and tshegs: hyp 10 tokens, ref 14. Matching n-grams:
    # 1-grams 9/10 (all but ཡིན), 2-grams 7/9, 3-grams 6/8, 4-grams 5/7; BP = exp(1 - 14/10).
    score = corpus_bleu([hyp], [ref], "bo")
    expected = 100 * math.exp(1 - 14 / 10) * (9 / 10 * 7 / 9 * 6 / 8 * 5 / 7) ** 0.25
    assert score.score == pytest.approx(expected, abs=1e-6)
    assert "tok:intl" in score.signature


def test_tibetan_normalisation_before_scoring() -> None:
    ref = f"བཀྲ{TSHEG}ཤིས{TSHEG}བདེ{TSHEG}ལེགས།"
    # Non-breaking tsheg (U+0F0C), a doubled tsheg and a tsheg before the shad: same text.
    hyp = f"བཀྲ\u0f0cཤིས{TSHEG}{TSHEG}བདེ{TSHEG}ལེགས{TSHEG}།"
    assert corpus_bleu([hyp], [ref], "bo").score == pytest.approx(100.0)
    assert corpus_chrf([hyp], [ref], "bo").score == pytest.approx(100.0)


def test_sentence_bleu_matches_corpus_on_one_sentence_and_handles_no_overlap() -> None:
    hyps, refs = ["我爱北京天安门", "今天下雨"], ["我爱北京天安", "明日晴"]
    per = sentence_bleu(hyps, refs, "zh")
    assert per[0] == pytest.approx(corpus_bleu(hyps[:1], refs[:1], "zh").score)
    assert per[1] == 0.0


def test_chrf_exact_disjoint_partial() -> None:
    assert corpus_chrf(["北京欢迎你"], ["北京欢迎你"], "zh").score == pytest.approx(100.0)
    assert corpus_chrf(["天地"], ["北京"], "zh").score == 0.0
    partial = sentence_chrf(["北京欢迎"], ["北京欢迎你"], "zh")[0]
    assert 0.0 < partial < 100.0
    # Recall-weighted (beta=2): a hypothesis missing characters scores below one adding them.
    extra = sentence_chrf(["北京欢迎你们"], ["北京欢迎你"], "zh")[0]
    missing = sentence_chrf(["北京欢"], ["北京欢迎你"], "zh")[0]
    assert extra > missing


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        corpus_bleu(["a", "b"], ["a"], "en")


# ---------------------------------------------------------------------------------------------
# ROUGE-L
# ---------------------------------------------------------------------------------------------
def test_rouge_l_tibetan_syllables_by_hand() -> None:
    # ref ཀ ཁ ག ང, hyp ཀ ག ང ཅ: LCS ཀ ག ང = 3, P = R = 3/4, F = 3/4.
    ref = TSHEG.join("ཀཁགང")
    hyp = TSHEG.join("ཀགངཅ")
    assert rouge_l([hyp], [ref], "bo") == [pytest.approx(0.75)]


def test_rouge_l_chinese_characters_by_hand() -> None:
    # ref 我爱北京天安门 (7), hyp 我在北京看天安门 (8): LCS 我北京天安门 = 6.
    # P = 6/8, R = 6/7, F = 2PR/(P+R) = 0.8.
    assert rouge_l(["我在北京看天安门"], ["我爱北京天安门"], "zh") == [pytest.approx(0.8)]


def test_rouge_l_default_tokenizer_would_score_zero() -> None:
    from rouge_score.rouge_scorer import RougeScorer

    # The pitfall semrl's tokenizer avoids: rouge_score's own tokenizer drops all CJK.
    assert RougeScorer(["rougeL"]).score("我爱北京", "我爱北京")["rougeL"].fmeasure == 0.0
    assert rouge_l(["我爱北京"], ["我爱北京"], "zh") == [pytest.approx(1.0)]
    assert rouge_l([""], ["我爱北京"], "zh") == [0.0]


# ---------------------------------------------------------------------------------------------
# CMRC 2018 EM / F1
# ---------------------------------------------------------------------------------------------
def test_cmrc_exact_and_case() -> None:
    assert cmrc_em_f1("北京", ["北京"]) == (1.0, 1.0)
    assert cmrc_em_f1(" ABC ", ["abc"]) == (1.0, 1.0)
    assert cmrc_em_f1("", ["北京"]) == (0.0, 0.0)


def test_cmrc_punctuation_removed() -> None:
    # 《》 and 。 are in the official script's list: removed for EM and F1.
    assert cmrc_em_f1("《山河行3》。", ["山河行3"]) == (1.0, 1.0)
    # The ASCII comma is not in that list (an official quirk kept for comparability).
    em, f1 = cmrc_em_f1("1,000", ["1000"])
    assert em == 0.0 and f1 == 0.0


def test_cmrc_partial_chinese() -> None:
    # pred 北京市 (3 chars) vs answers 上海 / 北京: best is 北京, LCS 2, P = 2/3, R = 1 -> F1 0.8.
    assert cmrc_em_f1("北京市", ["上海", "北京"]) == (0.0, pytest.approx(0.8))


def test_cmrc_f1_uses_longest_common_substring_not_subsequence() -> None:
    # pred 北上京 vs 北京: common subsequence 北京 (2) but longest common substring 1.
    # P = 1/3, R = 1/2, F1 = 2 * (1/6) / (5/6) = 0.4.
    assert cmrc_em_f1("北上京", ["北京"]) == (0.0, pytest.approx(0.4))


def test_cmrc_mixed_english_words_kept_whole() -> None:
    # 'iPhone 6 Plus手机' -> [iphone, 6, plus, 手, 机] (5); answer -> [iphone, 6, plus] (3).
    # LCS 3: P = 3/5, R = 1, F1 = 0.75.
    assert cmrc_em_f1("iPhone 6 Plus手机", ["iPhone 6 Plus"]) == (0.0, pytest.approx(0.75))
    # English words are whole tokens, not characters: [new, york] vs [york] -> P 1/2, R 1.
    assert cmrc_em_f1("New York", ["York"])[1] == pytest.approx(2 / 3)
    # '-' is removed without splitting the word: 青 石 和 αstudio (4) vs 青 石 -> F1 2/3.
    assert cmrc_em_f1("青石和α-studio", ["青石"])[1] == pytest.approx(2 / 3)


def test_cmrc_needs_answers() -> None:
    with pytest.raises(ValueError, match="at least one reference"):
        cmrc_em_f1("北京", [])


# ---------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------
def test_bootstrap_ci_contains_estimate_and_narrows_with_n() -> None:
    rng = np.random.default_rng(1)
    small = rng.normal(0.5, 0.2, size=20)
    large = rng.normal(0.5, 0.2, size=2000)
    ci_small, ci_large = bootstrap_ci(small), bootstrap_ci(large)
    for values, ci in ((small, ci_small), (large, ci_large)):
        assert ci.estimate == pytest.approx(values.mean())
        assert ci.low < ci.estimate < ci.high
    assert (ci_large.high - ci_large.low) < (ci_small.high - ci_small.low) / 4
    assert ci_large.contains(0.5)


def test_bootstrap_ci_is_seeded_and_handles_degenerate_samples() -> None:
    values = [0.0, 1.0, 1.0, 0.0, 1.0]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci([2.0, 2.0, 2.0]) == Interval(2.0, 2.0, 2.0)
    assert bootstrap_ci([0.7]) == Interval(0.7, 0.7, 0.7)
    median = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 100.0], statistic=np.median)
    assert median.estimate == 3.0
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])


def test_paired_bootstrap_detects_a_clear_difference_and_not_a_null_one() -> None:
    rng = np.random.default_rng(2)
    b = rng.normal(0.0, 1.0, size=200)
    # Paired: a large between-example spread, a small consistent improvement.
    a = b + 0.3 + rng.normal(0.0, 0.1, size=200)
    diff = paired_bootstrap(a, b)
    assert diff.low > 0.2 and diff.high < 0.4
    null = paired_bootstrap(b + rng.normal(0.0, 0.1, size=200), b)
    assert null.low < 0.0 < null.high
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap([1.0, 2.0], [1.0])


def test_mean_of_paired_means_weighs_groups_equally() -> None:
    rng = np.random.default_rng(3)
    g1 = rng.normal(0.1, 0.05, size=50)
    g2 = rng.normal(0.3, 0.05, size=500)
    ci = mean_of_paired_means_ci([g1, g2])
    assert ci.estimate == pytest.approx((g1.mean() + g2.mean()) / 2)
    assert ci.low < ci.estimate < ci.high
    assert ci.contains(0.2) and not ci.contains(0.28)  # the pooled mean would be ~0.28
    # A one-item group is a constant: it shifts the interval but adds no width.
    single = mean_of_paired_means_ci([g1, [0.5]])
    only = bootstrap_ci(g1)
    assert single.estimate == pytest.approx((g1.mean() + 0.5) / 2)
    assert single.high - single.low == pytest.approx((only.high - only.low) / 2, rel=0.05)


def test_paired_corpus_bootstrap_bleu() -> None:
    refs = ["我爱北京天安门", "今天天气很好", "他在学校学习中文", "我们明天去上海", "这本书很有意思", "请把门关上"] * 5
    good = list(refs)
    good[0] = "我爱北京"
    bad = ["你好"] * len(refs)
    diff = paired_corpus_bootstrap("bleu", good, bad, refs, "zh", n_resamples=200)
    expected = corpus_bleu(good, refs, "zh").score - corpus_bleu(bad, refs, "zh").score
    assert diff.estimate == pytest.approx(expected)
    assert diff.low > 50.0
    same = paired_corpus_bootstrap("chrf", good, good, refs, "zh", n_resamples=50)
    assert same == Interval(0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="'bleu' or 'chrf'"):
        paired_corpus_bootstrap("ter", good, bad, refs, "zh")  # type: ignore[arg-type]
