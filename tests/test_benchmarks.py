"""Tests for semrl.eval.tax and semrl.data.general on tiny fixture files and a tiny random model built here."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fixture_data import CMRC_ARTICLES, GSM8K_ROWS, MMLU_SUBJECTS  # noqa: F401
from fixture_data import write_general_data_dir as _write_data_dir

from semrl.config.evaluation import BenchmarkConfig
from semrl.core.errors import ConfigError, DataError
from semrl.data import download
from semrl.data.general import (
    benchmark_subset,
    general_texts,
    gsm8k_target,
    load_cmrc2018,
    load_gsm8k,
    load_mmlu,
    seeded_indices,
)
from semrl.eval.tax.benchmarks import (
    evaluate_general,
    evaluate_harness_task,
    prepare_task,
    process_cmrc2018,
)
from semrl.eval.tax.drift import BaseLogits, base_nll_for, measure_drift, text_nll
from semrl.eval.tax.meter import TaxMeterCallback


# ---------------------------------------------------------------------------------------------
# Fixtures: a data directory in the layout of ../shared/data, and a tiny model
# ---------------------------------------------------------------------------------------------
@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    return _write_data_dir(tmp_path / "data")


@pytest.fixture()
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads fail at once, as they do offline."""
    import datasets

    def offline(*args, **kwargs):
        raise DataError("download refused (test)")

    def offline_hub(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'cais/mmlu' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(download, "fetch", offline)
    monkeypatch.setattr(datasets, "load_dataset", offline_hub)
    monkeypatch.delenv("SEMRL_DATA_DIR", raising=False)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # The machine is shared: one thread is faster here than contending for both cores.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: any text encodes
        show_progress=False,
    )
    corpus = [c for c, _ in CMRC_ARTICLES] + [q for q, _ in GSM8K_ROWS] + ["Question: Answer: A. B. C. D."]
    tok.train_from_iterator(corpus * 3, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def _tiny_model(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=1,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def tiny():
    tokenizer = _tiny_tokenizer()
    return _tiny_model(len(tokenizer)), tokenizer


# ---------------------------------------------------------------------------------------------
# Loaders and subsets
# ---------------------------------------------------------------------------------------------
def test_loaders_read_fixture_files(data_dir: Path) -> None:
    cmrc = load_cmrc2018(data_dir)
    assert len(cmrc) == 6
    assert cmrc[0] == {
        "id": "DEV_0_QUERY_0",
        "context": CMRC_ARTICLES[0][0],
        "question": "开发者是谁？",
        "answers": ["青石和α-studio", "青石"],
    }
    mmlu = load_mmlu(data_dir)
    assert len(mmlu) == 9  # the header row (correct_answer 'answer') is dropped
    assert mmlu[1] == {
        "question": "Question 1 about anatomy?",
        "choices": ["a1", "b1", "c1", "d1"],
        "answer": 1,
        "subject": "anatomy",
    }
    gsm = load_gsm8k(data_dir)
    assert len(gsm) == 6 and gsm8k_target(gsm[2]["answer"]) == "750"


def test_loaders_use_the_env_var(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMRL_DATA_DIR", str(data_dir))
    assert len(load_gsm8k(None)) == 6


def test_missing_data_says_where_it_looked(tmp_path: Path, no_downloads: None) -> None:
    with pytest.raises(DataError) as err:
        load_cmrc2018(tmp_path)
    message = str(err.value)
    assert str(tmp_path / "cmrc2018_dev" / "cmrc2018_dev.json") in message
    assert "SEMRL_DATA_DIR" in message and "--data-dir" in message and "ymcui/cmrc2018" in message
    with pytest.raises(DataError, match="no data directory is set.*cais/mmlu"):
        load_mmlu(None)
    with pytest.raises(DataError, match="openai/grade-school-math"):
        load_gsm8k(None)


def test_malformed_files_name_the_place(data_dir: Path) -> None:
    bad = json.loads((data_dir / "cmrc2018_dev" / "cmrc2018_dev.json").read_text(encoding="utf-8"))
    del bad["data"][1]["paragraphs"][0]["qas"][0]["question"]
    (data_dir / "cmrc2018_dev" / "cmrc2018_dev.json").write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(DataError, match=r"data\[1\]\.paragraphs\[0\]\.qas\[0\]: missing key 'question'"):
        load_cmrc2018(data_dir)
    with (data_dir / "gsm8k_test" / "test.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps({"question": "q", "answer": "no final line"}) + "\n")
    with pytest.raises(DataError, match=r"test.jsonl: row 7: the answer has no '#### <number>'"):
        load_gsm8k(data_dir)
    with (data_dir / "mmlu_test" / "mmlu_test.jsonl").open("a", encoding="utf-8") as f:
        f.write("{not json\n")
    with pytest.raises(DataError, match=r"mmlu_test.jsonl:11: malformed JSON"):
        load_mmlu(data_dir)


def test_seeded_indices_are_fixed_nested_and_stratified() -> None:
    rows = [{"subject": s} for s in ["a"] * 50 + ["b"] * 30 + ["c"] * 5]
    first = seeded_indices(rows, 10, seed=7)
    assert first == seeded_indices(rows, 10, seed=7) == sorted(first)
    assert first != seeded_indices(rows, 10, seed=8)
    assert set(first) <= set(seeded_indices(rows, 20, seed=7))
    assert seeded_indices(rows, None, seed=7) == list(range(85))
    assert seeded_indices(rows, 1000, seed=7) == list(range(85))
    strat = seeded_indices(rows, 9, seed=7, stratify="subject")
    # Round-robin over subjects: 3 each, though 'c' holds only 6% of the rows.
    assert sorted(rows[i]["subject"] for i in strat) == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    many = seeded_indices(rows, 20, seed=7, stratify="subject")
    assert sum(rows[i]["subject"] == "c" for i in many) == 5  # 'c' exhausted, the others fill in
    assert len(set(many)) == 20


def test_benchmark_subset_mmlu_covers_subjects(data_dir: Path) -> None:
    subset = benchmark_subset("mmlu", data_dir, 3, seed=0)
    assert sorted(r["subject"] for r in subset) == sorted(MMLU_SUBJECTS)


# ---------------------------------------------------------------------------------------------
# lm-eval hooks
# ---------------------------------------------------------------------------------------------
def test_process_cmrc2018_scores_the_first_line() -> None:
    doc = {"answers": ["北京", "北京市"]}
    assert process_cmrc2018(doc, ["\n北京\n其他"]) == {"avg": 1.0, "em": 1.0, "f1": 1.0}
    scores = process_cmrc2018(doc, ["北京的"])  # F1 vs 北京: P 2/3, R 1 -> 0.8; vs 北京市: 2/3
    assert scores["em"] == 0.0 and scores["f1"] == pytest.approx(0.8) and scores["avg"] == pytest.approx(0.4)


class _CannedLM:
    """An lm-eval model that answers from a table: what lm-eval asks and how it scores the
    answers is then visible without a real model."""

    def __init__(self, answers: dict[str, str]) -> None:
        from lm_eval.api.model import LM

        outer = self
        self.contexts: list[str] = []
        self.gen_kwargs: list[dict] = []

        class Canned(LM):
            def generate_until(self, requests):
                out = []
                for r in requests:
                    context, kwargs = r.args
                    outer.contexts.append(context)
                    outer.gen_kwargs.append(kwargs)
                    out.append(answers.get(r.doc["question"], ""))
                return out

            def loglikelihood(self, requests):
                outer.contexts += [r.args[0] for r in requests]
                return [(0.0 if r.args[1] == " B" else -1.0, False) for r in requests]

            def loglikelihood_rolling(self, requests):
                raise NotImplementedError

        self.lm = Canned()

    def run(self, bench: BenchmarkConfig, data_dir: Path, out_dir: Path) -> dict:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager

        name, folder = prepare_task(bench, data_dir, seed=0, out_dir=out_dir)
        manager = TaskManager(include_path=str(folder), include_defaults=False)
        return simple_evaluate(model=self.lm, tasks=[name], task_manager=manager, bootstrap_iters=0)["results"][name]


def test_gsm8k_is_scored_by_lm_evals_own_task(data_dir: Path, tmp_path: Path) -> None:
    import lm_eval

    canned = _CannedLM(
        {
            GSM8K_ROWS[0][0]: " 3 + 2 = 5 apples.\n#### 5",  # strict and flexible
            GSM8K_ROWS[1][0]: " 12 * 3 = $36.00.",  # lm-eval compares strings: "36.00" is not "36"
            GSM8K_ROWS[2][0]: " 1,000 - 250 = 750",  # flexible only: commas and no "####"
            GSM8K_ROWS[3][0]: " no idea",
        }
    )
    results = canned.run(BenchmarkConfig(name="gsm8k", limit=None), data_dir, tmp_path / "gsm8k")
    n = len(GSM8K_ROWS)
    assert results["exact_match,strict-match"] == pytest.approx(1 / n)
    assert results["exact_match,flexible-extract"] == pytest.approx(2 / n)
    # The prompt and stop sequences are lm-eval's gsm8k, only the data is semrl's.
    own = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text(encoding="utf-8"))
    assert f"Question: {GSM8K_ROWS[0][0]}\nAnswer:" in canned.contexts
    assert canned.gen_kwargs[0]["until"] == own["generation_kwargs"]["until"]


def test_mmlu_prompt_is_lm_evals_per_subject_prompt(data_dir: Path, tmp_path: Path) -> None:
    canned = _CannedLM({})
    results = canned.run(BenchmarkConfig(name="mmlu", limit=None), data_dir, tmp_path / "mmlu")
    rows = [json.loads(line) for line in (tmp_path / "mmlu" / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert results["acc,none"] == pytest.approx(np.mean([r["answer"] == 1 for r in rows]))
    first = rows[0]
    expected = (
        f"The following are multiple choice questions (with answers) about {first['subject'].replace('_', ' ')}.\n\n"
        f"{first['question'].strip()}\nA. {first['choices'][0]}\nB. {first['choices'][1]}\n"
        f"C. {first['choices'][2]}\nD. {first['choices'][3]}\nAnswer:"
    )
    assert expected in canned.contexts


# ---------------------------------------------------------------------------------------------
# evaluate_general through lm-evaluation-harness
# ---------------------------------------------------------------------------------------------
def test_prepare_task_writes_a_self_contained_task(data_dir: Path, tmp_path: Path) -> None:
    bench = BenchmarkConfig(name="gsm8k", limit=4, num_fewshot=1)
    name, folder = prepare_task(bench, data_dir, seed=0, out_dir=tmp_path / "gsm8k")
    assert name == "semrl_gsm8k"
    config = yaml.safe_load((folder / "semrl_gsm8k.yaml").read_text(encoding="utf-8"))
    # lm-eval's own gsm8k task, with only the data (and the number of shots) overridden
    assert Path(config["include"]).parts[-3:] == ("tasks", "gsm8k", "gsm8k.yaml")
    assert config["dataset_path"] == "json" and config["dataset_name"] is None
    assert config["num_fewshot"] == 1 and config["fewshot_split"] == "fewshot"
    test = [json.loads(line) for line in (folder / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    fewshot = [json.loads(line) for line in (folder / "fewshot.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(test) == 4 and len(fewshot) == 2
    assert not {r["question"] for r in test} & {r["question"] for r in fewshot}  # no answer leaks


def test_max_gen_toks_caps_generation_but_keeps_the_stop_sequences(data_dir: Path, tmp_path: Path) -> None:
    bench = BenchmarkConfig(name="gsm8k", limit=2, max_gen_toks=32)
    _, folder = prepare_task(bench, data_dir, seed=0, out_dir=tmp_path / "gsm8k")
    config = yaml.safe_load((folder / "semrl_gsm8k.yaml").read_text(encoding="utf-8"))
    # `include` would replace the whole generation_kwargs, so the shipped stop sequences must be copied
    assert config["generation_kwargs"]["max_gen_toks"] == 32
    assert config["generation_kwargs"]["until"] == ["Question:", "</s>", "<|im_end|>"]  # lm-eval's gsm8k


def test_max_gen_toks_on_a_loglikelihood_task_is_an_error(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="log-likelihood"):
        prepare_task(BenchmarkConfig(name="mmlu", limit=2, max_gen_toks=8), data_dir, seed=0, out_dir=tmp_path / "m")


def test_evaluate_general_on_a_tiny_model(tiny, data_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = tiny
    model.train()
    random.seed(123)
    torch.manual_seed(123)
    expected_next, expected_torch = random.random(), torch.rand(3)
    random.seed(123)
    torch.manual_seed(123)
    benches = [
        BenchmarkConfig(name="cmrc2018", limit=4),
        BenchmarkConfig(name="mmlu", limit=5),
        BenchmarkConfig(name="gsm8k", limit=3, num_fewshot=1),
    ]
    results = evaluate_general(model, tokenizer, benches, data_dir, seed=0, batch_size=4, work_dir=tmp_path / "work")
    assert random.random() == expected_next  # lm-eval's reseeding did not leak out
    assert torch.equal(torch.rand(3), expected_torch)
    assert model.training  # train mode restored

    assert set(results) == {"cmrc2018", "mmlu", "gsm8k"}
    for bench in benches:
        r = results[bench.name]
        assert r.name == bench.name and r.n == bench.limit == len(r.per_example)
        assert 0.0 <= r.score <= 1.0
        assert r.score == pytest.approx(float(np.mean(r.per_example)))
        assert all(0.0 <= v <= 1.0 for v in r.per_example)
    cmrc = results["cmrc2018"]
    assert cmrc.metric == "avg"
    assert cmrc.score == pytest.approx((cmrc.details["em"] + cmrc.details["f1"]) / 2)
    assert len(cmrc.details["predictions"]) == 4
    # The items are the fixed seeded subset, in file order.
    subset_ids = [r["id"] for r in benchmark_subset("cmrc2018", data_dir, 4, seed=0)]
    assert cmrc.details["ids"] == subset_ids
    mmlu = results["mmlu"]
    assert mmlu.metric == "acc" and set(mmlu.per_example) <= {0.0, 1.0}
    assert set(mmlu.details["per_subject"]) == set(MMLU_SUBJECTS)
    gsm8k = results["gsm8k"]
    assert gsm8k.metric == "exact_match" and gsm8k.details["filter"] == "flexible-extract"
    assert len(gsm8k.details["per_example_strict_match"]) == 3 and len(gsm8k.details["predictions"]) == 3


def test_evaluate_general_rejects_unknown_and_duplicate_names(tiny) -> None:
    class FakeTaskManager:  # lm-eval's real index takes ~20 s to build; the lookup is what matters
        all_tasks = ["arc_easy", "arc_challenge", "hellaswag"]

    with pytest.raises(ConfigError, match="'arc_eazy' is neither.*Close lm-eval names: arc_easy"):
        evaluate_harness_task(None, BenchmarkConfig(name="arc_eazy"), 0, FakeTaskManager())
    model, tokenizer = tiny
    with pytest.raises(ConfigError, match="more than once"):
        evaluate_general(model, tokenizer, [BenchmarkConfig(name="mmlu")] * 2, None, seed=0)


# ---------------------------------------------------------------------------------------------
# Drift and the tax meter
# ---------------------------------------------------------------------------------------------
TEXTS = [
    "北京是中国的首都，人口众多。",
    "Tom has 3 apples and buys 2 more.",
    "长江是中国最长的河流。",
    "A box holds 12 pens.",
]


def test_text_nll_matches_the_models_own_loss_and_ignores_padding(tiny) -> None:
    model, tokenizer = tiny
    nll = text_nll(model, tokenizer, TEXTS, batch_size=4)
    one_by_one = text_nll(model, tokenizer, TEXTS, batch_size=1)
    assert nll == pytest.approx(one_by_one, abs=1e-5)  # right padding changes nothing
    ids = tokenizer(TEXTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert nll[0] == pytest.approx(float(loss), abs=1e-5)


def test_measure_drift_zero_against_itself_positive_against_a_perturbed_copy(tiny) -> None:
    model, tokenizer = tiny
    same = measure_drift(model, model, tokenizer, TEXTS, batch_size=3)
    assert same.nll_increase == pytest.approx([0.0] * len(TEXTS), abs=1e-6)
    assert max(same.token_kl) < 1e-6
    n_scored = sum(len(tokenizer(t)["input_ids"]) - 1 for t in TEXTS)
    assert len(same.token_kl) == n_scored

    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for p in perturbed.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=generator))
    drift = measure_drift(model, perturbed, tokenizer, TEXTS, batch_size=3)
    assert drift.nll_base == pytest.approx(same.nll_base, abs=1e-6)
    assert drift.nll_increase == pytest.approx([m - b for m, b in zip(drift.nll_model, drift.nll_base)])
    assert drift.summary["kl_mean"] > 1e-3  # the two random models disagree
    assert any(abs(v) > 1e-3 for v in drift.nll_increase)
    assert set(drift.summary) == {"nll_mean", "nll_p90", "kl_mean", "kl_p90"}
    assert drift.summary["nll_mean"] == pytest.approx(float(np.mean(drift.nll_increase)))
    assert drift.summary["kl_p90"] == pytest.approx(float(np.percentile(drift.token_kl, 90)))


def test_drift_reuses_the_base_logits_and_measures_the_same_kl(tiny) -> None:
    """Against a `BaseLogits`, a second model's drift runs the base model no more and gives the
    values a fresh pass gives; every position's KL is KL(model || base) of its next-token
    distributions (texts longer than the KL's 16-position chunks)."""
    model, tokenizer = tiny
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for p in perturbed.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
    texts = [" ".join(TEXTS) * 2, TEXTS[0]]
    base_forwards = []
    hook = model.register_forward_hook(lambda *_: base_forwards.append(1))
    try:
        fresh = measure_drift(model, perturbed, tokenizer, texts, batch_size=1)
        kept = BaseLogits(model)
        first = measure_drift(kept, perturbed, tokenizer, texts, batch_size=1)
        forwards_before = len(base_forwards)
        second = measure_drift(kept, perturbed, tokenizer, texts, batch_size=1)
    finally:
        hook.remove()
    assert forwards_before == 2 * len(texts) and len(base_forwards) == forwards_before
    assert first == fresh and second == fresh

    ids = tokenizer(texts[0], return_tensors="pt")["input_ids"]
    assert ids.shape[1] > 40
    with torch.no_grad():
        p_model = torch.log_softmax(perturbed(ids).logits[0, :-1], -1)
        p_base = torch.log_softmax(model(ids).logits[0, :-1], -1)
    expected = (p_model.exp() * (p_model - p_base)).sum(-1)
    assert fresh.token_kl[: ids.shape[1] - 1] == pytest.approx(expected.tolist(), abs=1e-5)


def test_measure_drift_rejects_too_short_text(tiny) -> None:
    model, tokenizer = tiny
    with pytest.raises(DataError, match="general text #1 has 0 token"):
        measure_drift(model, model, tokenizer, ["北京", ""])


def test_general_texts_from_cmrc_and_from_a_file(data_dir: Path, tmp_path: Path) -> None:
    texts = general_texts(data_dir, 3, seed=0)
    assert len(texts) == 3 and len(set(texts)) == 3
    assert set(texts) <= {c for c, _ in CMRC_ARTICLES}
    assert general_texts(data_dir, 100, seed=0) == [c for c, _ in CMRC_ARTICLES]  # distinct contexts
    path = tmp_path / "texts.txt"
    path.write_text("one passage\n\n  two passage  \nthree\n", encoding="utf-8")
    assert general_texts(None, 10, seed=0, text_file=path) == ["one passage", "two passage", "three"]
    assert len(general_texts(None, 2, seed=0, text_file=path)) == 2
    path.write_text("\n \n", encoding="utf-8")
    with pytest.raises(DataError, match="no non-empty lines"):
        general_texts(None, 2, seed=0, text_file=path)


def test_tax_meter_logs_drift_into_the_trainer_history(tiny, tmp_path: Path) -> None:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    base, tokenizer = tiny
    model = copy.deepcopy(base)
    base_nll = base_nll_for(base, tokenizer, TEXTS)
    meter = TaxMeterCallback(TEXTS, tokenizer, every_n_steps=2, base_nll=base_nll)

    seen: list[dict] = []

    class Recorder(TrainerCallback):  # a log writer listed after the meter sees its value
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    ids = [tokenizer(t)["input_ids"] for t in TEXTS]
    train = [{"input_ids": x, "labels": x} for x in ids]
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=1,
        learning_rate=5e-2,
        logging_steps=3,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[meter, Recorder()])
    trainer.train()

    logged = {h["step"]: h["tax/nll_drift"] for h in trainer.state.log_history if "tax/nll_drift" in h}
    assert sorted(logged) == [2, 4]  # step 2 is logged although logging_steps is 3
    assert [s for s, _ in meter.history] == [2, 4]
    assert logged[4] == pytest.approx(meter.history[1][1])
    assert logged[4] == pytest.approx(
        float(np.mean(np.subtract(text_nll(model, tokenizer, TEXTS), base_nll))), abs=1e-5
    )
    assert abs(logged[4]) > 1e-4  # training at lr 5e-2 moved the model
    assert [r["tax/nll_drift"] for r in seen if "tax/nll_drift" in r] == [logged[2], logged[4]]
    assert model.training


def test_tax_meter_validates_its_inputs(tiny) -> None:
    _, tokenizer = tiny
    with pytest.raises(ValueError, match="base_nll has 1 values for 4 texts"):
        TaxMeterCallback(TEXTS, tokenizer, every_n_steps=2, base_nll=[1.0])
    with pytest.raises(ValueError, match="every_n_steps"):
        TaxMeterCallback(TEXTS, tokenizer, every_n_steps=0, base_nll=[1.0] * 4)


# ---------------------------------------------------------------------------------------------
# The shared data (skipped without SEMRL_DATA_DIR)
# ---------------------------------------------------------------------------------------------
@pytest.mark.shared_data
def test_shared_data_loads_real_subsets(shared_data_dir: Path) -> None:
    cmrc = load_cmrc2018(shared_data_dir)
    assert len(cmrc) == 3219 and all(len(r["answers"]) >= 1 for r in cmrc)
    mmlu = load_mmlu(shared_data_dir)
    assert len(mmlu) == 14042 and len({r["subject"] for r in mmlu}) == 57
    assert len(load_gsm8k(shared_data_dir)) == 1319
    subset = benchmark_subset("mmlu", shared_data_dir, 100, seed=42)
    assert len(subset) == 100 and len({r["subject"] for r in subset}) == 57
    assert subset == benchmark_subset("mmlu", shared_data_dir, 100, seed=42)
    texts = general_texts(shared_data_dir, 20, seed=42)
    assert len(texts) == 20 and len(set(texts)) == 20 and all(len(t) > 50 for t in texts)


def _write_plain_lm_eval_task(folder: Path, name: str, dataset_path: str, data_files: dict | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "task": name,
        "dataset_path": dataset_path,
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}\nAnswer:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "answer",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    if data_files:
        config["dataset_kwargs"] = {"data_files": data_files}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")


def test_other_lm_eval_tasks_run_by_name(tiny, tmp_path: Path) -> None:
    """The path for any lm-eval task: here a user's own YAML over local data, indexed without
    lm-eval's built-in tasks (which need the hub)."""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tokenizer = tiny
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"Is {i} even?", "choices": ["yes", "no"], "answer": i % 2}) + "\n"
            for i in range(6)
        ),
        encoding="utf-8",
    )
    _write_plain_lm_eval_task(tmp_path / "tasks", "my_parity", "json", {"test": str(data)})
    _write_plain_lm_eval_task(tmp_path / "tasks", "my_hub_task", "no-such-org/no-such-dataset", None)
    manager = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4)

    result = evaluate_harness_task(lm, BenchmarkConfig(name="my_parity", limit=4), 0, manager)
    assert result.metric == "acc" and result.n == 4 and set(result.per_example) <= {0.0, 1.0}
    assert result.score == pytest.approx(float(np.mean(result.per_example)))
    assert result.details["filter"] == "none"

    with pytest.raises(DataError, match="'my_hub_task': its dataset could not be loaded"):
        evaluate_harness_task(lm, BenchmarkConfig(name="my_hub_task", limit=4), 0, manager)


def test_harness_model_answers_log_likelihood_requests_as_lm_eval_does(tiny) -> None:
    """semrl's lm-eval model computes only the continuations' logits; its answers to lm-eval's
    log-likelihood requests are HFLM's: the same log-probabilities and greedy flags, for questions
    sharing a context with one-token choices, multi-token continuations, and rows of different
    lengths batched together."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from semrl.eval.tax.harness import harness_model

    model, tokenizer = tiny
    question = "Question: Is 12 even?\nA. yes\nB. no\nC. maybe\nD. never\nAnswer:"
    with torch.no_grad():
        greedy = tokenizer.decode([int(model(**tokenizer(question, return_tensors="pt")).logits[0, -1].argmax())])
    pairs = [(question, f" {letter}") for letter in "ABCD"]
    pairs += [(question, greedy), ("Answer:", " A. B. C."), (CMRC_ARTICLES[0][0][:120], " Question: Answer: D.")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]

    ours = harness_model(model, tokenizer, batch_size=3).loglikelihood(requests)
    reference = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=3).loglikelihood(requests)

    assert [g for _, g in ours] == [g for _, g in reference]
    assert ours[4][1], "the greedy continuation is flagged greedy"
    assert [ll for ll, _ in ours] == pytest.approx([ll for ll, _ in reference], abs=1e-4)
    assert len({round(ll, 3) for ll, _ in ours[:4]}) == 4  # the four choices are scored apart
