"""Language tools: Unicode script detection, target-script share, Tibetan normalisation and
tokenisation for metrics (Tibetan syllables, Chinese characters).

The language-consistency reward and the metrics both stand on these functions, so they are
deliberately rule-based and dependency-free: a reader can check every rule here.
"""

from __future__ import annotations

import re
import unicodedata

# Code-point ranges per script. Han covers the unified ideographs, extensions A-F and the
# compatibility block; that is what Simplified and Traditional Chinese text uses.
SCRIPT_RANGES: dict[str, tuple[tuple[int, int], ...]] = {
    "tibetan": ((0x0F00, 0x0FFF),),
    "han": (
        (0x4E00, 0x9FFF),
        (0x3400, 0x4DBF),
        (0x20000, 0x2A6DF),
        (0x2A700, 0x2EBEF),
        (0x30000, 0x3134F),
        (0xF900, 0xFAFF),
    ),
    "latin": ((0x0041, 0x005A), (0x0061, 0x007A), (0x00C0, 0x024F), (0x1E00, 0x1EFF)),
    "thai": ((0x0E00, 0x0E7F),),
    "cyrillic": ((0x0400, 0x04FF),),
    "arabic": ((0x0600, 0x06FF),),
    "devanagari": ((0x0900, 0x097F),),
    "hangul": ((0xAC00, 0xD7AF), (0x1100, 0x11FF)),
    "kana": ((0x3040, 0x30FF),),
}

# Target language (ISO 639-1/3 code) -> the script its text is written in.
LANGUAGE_SCRIPTS: dict[str, str] = {
    "bo": "tibetan",
    "bod": "tibetan",
    "dz": "tibetan",
    "zh": "han",
    "zho": "han",
    "cmn": "han",
    "yue": "han",
    "en": "latin",
    "eng": "latin",
    "fr": "latin",
    "de": "latin",
    "es": "latin",
    "it": "latin",
    "pt": "latin",
    "vi": "latin",
    "id": "latin",
    "th": "thai",
    "tha": "thai",
    "ru": "cyrillic",
    "uk": "cyrillic",
    "mn": "cyrillic",
    "ar": "arabic",
    "ug": "arabic",
    "fa": "arabic",
    "hi": "devanagari",
    "ne": "devanagari",
    "ko": "hangul",
}

LANGUAGE_NAMES: dict[str, str] = {
    "bo": "Tibetan",
    "zh": "Chinese",
    "en": "English",
    "th": "Thai",
    "ug": "Uyghur",
    "mn": "Mongolian",
    "ja": "Japanese",
    "ko": "Korean",
    "ru": "Russian",
    "fr": "French",
    "de": "German",
    "es": "Spanish",
}

TSHEG = "\u0f0b"
_TSHEG_VARIANTS = "\u0f0c"  # non-breaking tsheg
# Shad and related phrase/section marks: U+0F0D-U+0F12, U+0F14; also gter tsheg U+0F14.
_SHAD_MARKS = "\u0f0d\u0f0e\u0f0f\u0f10\u0f11\u0f12\u0f14"
# The shads whose spellings differ between corpora, each as single shads (U+0F0D): the double
# shad ༎ is two shads, the tsheg-shad ༏ one, the double tsheg-shad ༐ two. MITRA writes ༏ where
# other editions of the same passage have a shad, followed by a tsheg for the space.
_SHAD_SPELLINGS = {"\u0f0d": "\u0f0d", "\u0f0e": "\u0f0d\u0f0d", "\u0f0f": "\u0f0d", "\u0f10": "\u0f0d\u0f0d"}
# A run of shads with the spaces before it and the tshegs and spaces inside and after it (NBSP
# included: Lotsawa House writes the verse-final "། །" with U+00A0).
_SHAD_RUN = re.compile(f"\\s*[{''.join(_SHAD_SPELLINGS)}](?:[\\s{TSHEG}]*[{''.join(_SHAD_SPELLINGS)}])*[\\s{TSHEG}]*")
# Folio (page) markers that the MITRA Kangyur keeps inside its text (even inside words, as in
# ཕཅོམ་༄༡༢ཨ་༌༎ ལྡན་འཌས): ༄, the folio number in Tibetan digits (sometimes with a ".2" sub-leaf), the
# side ཨ (recto, "a") or བ (verso, "b"), a tsheg, and on recto pages the page-opening ༌༎ or ༅༎;
# with the spaces after it. All 13,758 markers of the 588 shared files have this shape.
FOLIO_MARKER = re.compile(
    "\u0f04[\u0f20-\u0f29]+(?:\\.[\u0f20-\u0f29]+)?[\u0f68\u0f56](?:\u0f0b(?:[\u0f0c\u0f05]?\u0f0e)?)?\\s*"
)
# The head mark ༄༅ (yig mgo) that opens a text or section, with the shads that follow it
# ("༄༅། །"): an ornament with no reading.
HEAD_MARK = re.compile("\u0f04\u0f05+(?:[\\s\u0f0b]*[\u0f0d\u0f0e\u0f0f\u0f10])*\\s*")
_TIBETAN_LETTER = re.compile("[\u0f00\u0f20-\u0f33\u0f40-\u0fbc]")


def script_of_language(lang: str) -> str:
    """The script a language code is written in ('bo' -> 'tibetan'); ValueError if unknown."""
    key = lang.lower().split("-")[0].split("_")[0]
    if key not in LANGUAGE_SCRIPTS:
        known = ", ".join(sorted(LANGUAGE_SCRIPTS))
        raise ValueError(f"no script known for language {lang!r}; known codes: {known}")
    return LANGUAGE_SCRIPTS[key]


def language_name(lang: str) -> str:
    """English name of a language code, for prompts ('bo' -> 'Tibetan')."""
    return LANGUAGE_NAMES.get(lang.lower(), lang)


def char_script(ch: str) -> str | None:
    """The script of one character, or None for characters that carry no script
    (digits, punctuation, spaces, symbols). Letters outside the known scripts give 'other'."""
    cat = unicodedata.category(ch)
    if cat[0] not in "LM":  # letters and combining marks carry script; the rest is neutral
        return None
    cp = ord(ch)
    for script, ranges in SCRIPT_RANGES.items():
        for lo, hi in ranges:
            if lo <= cp <= hi:
                return script
    return "other"


def script_counts(text: str) -> dict[str, int]:
    """How many script-bearing characters of each script the text holds."""
    counts: dict[str, int] = {}
    for ch in text:
        s = char_script(ch)
        if s is not None:
            counts[s] = counts.get(s, 0) + 1
    return counts


def script_share(text: str, script: str) -> float:
    """Share of script-bearing characters that are in `script`, ignoring digits, punctuation and
    spaces. A text with no script-bearing characters (empty, digits only) has share 0."""
    counts = script_counts(text)
    total = sum(counts.values())
    return counts.get(script, 0) / total if total else 0.0


def target_script_share(text: str, target_lang: str) -> float:
    """Share of the text written in the target language's script (0..1)."""
    return script_share(text, script_of_language(target_lang))


def is_target_script_only(text: str, target_lang: str) -> bool:
    """The paper's binary rule: non-empty, and every script-bearing character is in the target
    script (digits and punctuation are allowed)."""
    counts = script_counts(text)
    script = script_of_language(target_lang)
    return bool(counts) and set(counts) == {script}


def is_mixed_script(text: str) -> bool:
    """True when the text mixes two or more scripts."""
    return len(script_counts(text)) > 1


def _shad_run(match: re.Match[str]) -> str:
    """One shad run in its canonical spelling: single shads, no tsheg before or inside, and one
    space after it when Tibetan text follows (or when a space was there)."""
    run = match.group(0)
    shads = "".join(_SHAD_SPELLINGS.get(c, "") for c in run)
    nxt = match.string[match.end() : match.end() + 1]
    spaced = bool(nxt) and (_TIBETAN_LETTER.match(nxt) is not None or run[-1].isspace())
    return shads + (" " if spaced else "")


def normalize_tibetan(text: str) -> str:
    """The one Tibetan normaliser (metrics, rewards, and every data source's Tibetan side).

    Drops what is not text: folio markers (`FOLIO_MARKER`, e.g. ༄༡༥༣བ་, ༄༡༥༣ཨ་༌༎) and the head
    mark ༄༅ with its shads (`HEAD_MARK`), and shads at the very start. Unifies spellings that
    corpora choose differently: NFC; non-breaking tsheg to tsheg; runs of tsheg collapsed; no
    tsheg or space before a shad (ང་། -> ང།, ཤོག ། -> ཤོག།, MITRA's ་། and ་༎); ༎ -> །།, ༏ -> །; a
    run of shads written without spaces inside and followed by one space before Tibetan text
    (MITRA ་༎ , Lotsawa House "། །" -> "།། "); whitespace collapsed. Letters, vowel signs and the other marks are
    left as they are: MITRA writes no U+0F71 (ཤའ་རི for ཤཱ་རི), which no rule can undo safely.
    """
    text = unicodedata.normalize("NFC", text)
    text = FOLIO_MARKER.sub("", text)
    text = HEAD_MARK.sub(" ", text)  # a space: it may stand between two texts run together
    text = text.translate({ord(c): TSHEG for c in _TSHEG_VARIANTS})
    text = re.sub(f"{TSHEG}+", TSHEG, text)
    text = re.sub(f"{TSHEG}(\\s*[{_SHAD_MARKS}])", r"\1", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = _SHAD_RUN.sub(_shad_run, text)
    text = re.sub(f"^[{''.join(_SHAD_SPELLINGS)}]+ ?", "", text)  # shads opening a verse line
    return text.strip()


def normalize_text(text: str, lang: str) -> str:
    """Language-aware normalisation before scoring (NFC everywhere; Tibetan rules for 'bo')."""
    if script_of_language(lang) == "tibetan":
        return normalize_tibetan(text)
    return unicodedata.normalize("NFC", text).strip()


# One token pattern for every language: a Tibetan syllable (letters, vowel signs, subjoined
# letters, Tibetan digits; tsheg and shad end it), a single Han character, or a run of other
# letters/digits. Splitting at script changes matters: NTREX Tibetan embeds Latin names with no
# tsheg between them and the next syllable.
_TIBETAN_SYLLABLE = "[\u0f00\u0f18\u0f19\u0f20-\u0f33\u0f35\u0f37\u0f39\u0f3e-\u0fbc]+"
_HAN_CHAR = "[\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff\U00020000-\U0003134f]"
_OTHER_WORD = "(?:(?![\u0f00-\u0fff\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff])[^\\W_])+"
_TOKEN = re.compile(f"{_TIBETAN_SYLLABLE}|{_HAN_CHAR}|{_OTHER_WORD}")


def tibetan_syllables(text: str) -> list[str]:
    """Split Tibetan text into syllables (on tsheg, shad, spaces and script changes). Latin names
    and digits embedded in the text come out as their own tokens; punctuation is dropped."""
    return _TOKEN.findall(normalize_tibetan(text))


def chinese_tokens(text: str) -> list[str]:
    """Chinese characters one per token; runs of other letters/digits as words; punctuation dropped."""
    return _TOKEN.findall(unicodedata.normalize("NFC", text))


def tokenize_for_metrics(text: str, lang: str) -> list[str]:
    """Tokens for ROUGE and similar overlap metrics: Tibetan syllables, Chinese characters, and
    lower-cased words for everything else (the same rule serves mixed-script text)."""
    if script_of_language(lang) == "tibetan":
        return [t.lower() for t in tibetan_syllables(text)]
    return [t.lower() for t in _TOKEN.findall(unicodedata.normalize("NFC", text))]


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram_share(text: str, lang: str, n: int = 4) -> float:
    """Share of the text's token n-grams (`tokenize_for_metrics`) that repeat an earlier n-gram of
    the same text: 0 without repetition, close to 1 for a looping output. A text with fewer than
    n tokens has no n-grams and scores 0."""
    grams = _ngrams(tokenize_for_metrics(text, lang), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def source_overlap(text: str, source: str, lang: str, n: int = 4) -> float:
    """Share of the text's token n-grams that occur verbatim in `source` (both tokenised with
    `tokenize_for_metrics` for `lang`): 1.0 when the output is copied from the source. A text
    shorter than n tokens is compared as one n-gram of its own length, so a copied two-syllable
    fragment still counts as a copy; an empty text scores 0."""
    tokens = tokenize_for_metrics(text, lang)
    if not tokens:
        return 0.0
    n = min(n, len(tokens))
    grams = _ngrams(tokens, n)
    seen = set(_ngrams(tokenize_for_metrics(source, lang), n))
    return sum(g in seen for g in grams) / len(grams)


def sacrebleu_tokenizer(lang: str) -> str:
    """The sacrebleu tokenizer that scores `lang` correctly: 'zh' for Chinese, 'intl' for Tibetan
    (splits on the tsheg, giving syllable-level BLEU), '13a' otherwise. The default '13a' scores
    Tibetan 0 and Chinese near 0."""
    script = script_of_language(lang)
    if script == "han":
        return "zh"
    if script == "tibetan":
        return "intl"
    if script == "thai":
        return "char"
    if script == "kana":
        return "char"  # ja-mecab needs an optional dependency; character level is safe
    return "13a"
