"""Language tools: script detection, script share, Tibetan normalisation and tokenisation."""

from __future__ import annotations

import pytest

from semrl.core import lang


def test_script_share_ignores_digits_punctuation_spaces() -> None:
    assert lang.target_script_share("我有 3 本书。", "zh") == 1.0
    assert lang.target_script_share("ང་ལ་དེབ་༣་ཡོད། 2024", "bo") == 1.0
    assert lang.target_script_share("12,345 !", "zh") == 0.0  # nothing script-bearing


def test_mixed_tibetan_chinese_share() -> None:
    text = "我是学生ང་སློབ་མ"  # 4 Han + Tibetan letters/marks
    share = lang.target_script_share(text, "zh")
    assert 0.0 < share < 1.0
    assert not lang.is_target_script_only(text, "zh")
    assert lang.is_mixed_script(text)


def test_binary_rule() -> None:
    assert lang.is_target_script_only("今天天气很好。", "zh")
    assert not lang.is_target_script_only("དེ་རིང་གནམ་གཤིས་ཡག་པོ་འདུག", "zh")
    assert not lang.is_target_script_only("", "zh")
    assert lang.is_target_script_only("Hello, world!", "en")
    assert lang.is_target_script_only("สวัสดี", "th")


def test_unknown_language_is_an_error() -> None:
    with pytest.raises(ValueError, match="known codes"):
        lang.script_of_language("xx")


def test_tibetan_normalisation() -> None:
    # non-breaking tsheg -> tsheg, doubled tsheg collapsed, tsheg before shad dropped
    assert lang.normalize_tibetan("ཀ༌ཁ་་ག་།") == "ཀ་ཁ་ག།"


def test_tibetan_syllables_split_at_tsheg_shad_and_script_changes() -> None:
    assert lang.tibetan_syllables("བཀྲ་ཤིས་བདེ་ལེགས།") == ["བཀྲ", "ཤིས", "བདེ", "ལེགས"]
    # NTREX-style embedded Latin with no tsheg before the next syllable
    assert lang.tibetan_syllables("AMsརང་ཉིད་") == ["AMs", "རང", "ཉིད"]


def test_metric_tokens() -> None:
    assert lang.tokenize_for_metrics("我爱北京 ABC 2024年。", "zh") == ["我", "爱", "北", "京", "abc", "2024", "年"]
    assert lang.tokenize_for_metrics("Hello, World!", "en") == ["hello", "world"]


def test_sacrebleu_tokenizers() -> None:
    assert lang.sacrebleu_tokenizer("zh") == "zh"
    assert lang.sacrebleu_tokenizer("bo") == "intl"
    assert lang.sacrebleu_tokenizer("en") == "13a"


def test_repeated_ngram_share_counts_loops_on_metric_tokens() -> None:
    assert lang.repeated_ngram_share("我们明天早上坐火车去北京。", "zh") == 0.0
    # 3 copies of a 4-character phrase: 12 tokens, 9 4-grams, 4 distinct
    assert lang.repeated_ngram_share("去北京了去北京了去北京了", "zh") == pytest.approx(5 / 9)
    # Tibetan counts syllables, not characters: 4 syllables repeated twice = 8 syllables, 5 4-grams, 4 distinct
    assert lang.repeated_ngram_share("ང་ཚོ་ལྷ་སར་ང་ཚོ་ལྷ་སར།", "bo") == pytest.approx(1 / 5)
    assert lang.repeated_ngram_share("ཐུགས་རྗེ་ཆེ།", "bo") == 0.0  # fewer tokens than n


def test_source_overlap_measures_copying() -> None:
    article = "ང་ཚོ་སང་ཉིན་ལྷ་སར་འགྲོ་གི་ཡིན།\nདེ་རིང་གནམ་གཤིས་ཡག་པོ་འདུག"
    assert lang.source_overlap("ང་ཚོ་སང་ཉིན་ལྷ་སར་འགྲོ་གི་ཡིན།", article, "bo") == 1.0  # first sentence copied
    assert lang.source_overlap("ཁོང་གིས་དཔེ་ཆ་གསར་པ་ཞིག་ཉོས་སོང་།", article, "bo") == 0.0
    assert lang.source_overlap("ལྷ་སར།", article, "bo") == 1.0  # shorter than n: compared whole
    assert lang.source_overlap("", article, "bo") == 0.0
    # tsheg/shad variants do not hide a copy
    assert lang.source_overlap("ང་ཚོ་སང་ཉིན་ལྷ་སར་འགྲོ་གི་ཡིན་།", article, "bo") == 1.0
    # a Chinese output that echoes its Tibetan source
    assert lang.source_overlap("དེ་རིང་གནམ་གཤིས་ཡག་པོ་འདུག", article, "zh") == 1.0
    assert lang.source_overlap("今天天气很好。", article, "zh") == 0.0
