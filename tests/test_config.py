"""The experiment config: shipped configs load, errors name the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from semrl.cli import main
from semrl.config.experiment import ExperimentConfig, load_config
from semrl.core.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, ExperimentConfig)


def test_defaults_are_the_papers_published_values() -> None:
    c = ExperimentConfig()
    assert (c.model.lora.r, c.model.lora.alpha, c.model.lora.dropout) == (64, 128, 0.05)
    assert (c.stages.cold_start.learning_rate, c.stages.cold_start.epochs, c.stages.cold_start.batch_size) == (
        2e-5,
        2,
        32,
    )
    g = c.stages.grpo
    assert (g.num_generations, g.temperature, g.top_p, g.learning_rate, g.epochs) == (8, 0.8, 0.9, 5e-7, 1)
    weights = {comp.name: comp.weight for comp in c.rewards.components}
    assert weights == {"semantic": 1.5, "language": 1.0}


def test_starter_config_documents_every_key() -> None:
    """The commented starter (`semrl config init`) shows every section key the code accepts."""
    raw = yaml.safe_load((CONFIGS / "ntrex-bo-zh.yaml").read_text(encoding="utf-8"))
    full = ExperimentConfig().to_dict()

    def missing(defaults: dict, shown: dict, prefix: str = "") -> list[str]:
        out = []
        for key, value in defaults.items():
            if key not in shown:
                out.append(prefix + key)
            elif isinstance(value, dict) and isinstance(shown[key], dict):
                out.extend(missing(value, shown[key], prefix + key + "."))
        return out

    assert missing(full, raw) == []


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, "stages:\n  grpo:\n    num_generation: 8\n"))
    assert "stages.grpo.num_generation" in str(e.value) and "unknown key" in str(e.value)


def test_bad_value_names_key_value_and_allowed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, "task:\n  kind: summarise\n"))
    msg = str(e.value)
    assert "task.kind" in msg and "summarise" in msg and "translation" in msg and "headline" in msg


def test_group_size_must_divide_batch(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="stages.grpo: .*multiple of num_generations"):
        load_config(_write(tmp_path, "stages:\n  grpo:\n    batch_size: 10\n    num_generations: 4\n"))


def test_yaml_syntax_error_gives_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line 2"):
        load_config(_write(tmp_path, "seed: 1\nmodel: name: x\n"))


def test_overrides(tmp_path: Path) -> None:
    c = load_config(_write(tmp_path, "seed: 1\n"), overrides=["stages.grpo.max_steps=2", "model.name=tiny"])
    assert c.stages.grpo.max_steps == 2 and c.model.name == "tiny"


def test_relative_local_path_resolves_beside_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pairs.jsonl").write_text('{"source": "a", "reference": "b"}\n', encoding="utf-8")
    config = _write(tmp_path, "data:\n  sources:\n    - {kind: local, path: pairs.jsonl}\n")
    monkeypatch.chdir(tmp_path.parent)  # the path is not relative to the working directory
    c = load_config(config)
    assert Path(c.data.sources[0].path) == (tmp_path / "pairs.jsonl").resolve()


def test_cli_config_init_then_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "my.yaml"
    assert main(["config", "init", str(out)]) == 0
    assert main(["config", "show", str(out)]) == 0
    assert out.read_text(encoding="utf-8").startswith("# semrl experiment")
    # refusing to overwrite is an error, exit code 2
    assert main(["config", "init", str(out)]) == 2


def test_cli_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["config", "show", str(_write(tmp_path, "evaluation:\n  confidence: 2\n"))])
    assert code == 2
    assert "evaluation.confidence" in capsys.readouterr().err


def test_reward_preset_fills_components_and_a_resolved_config_reloads(tmp_path: Path) -> None:
    c = load_config(_write(tmp_path, "rewards:\n  preset: bleu_emb_lang\n"))
    assert [(x.name, x.weight) for x in c.rewards.components] == [("semantic", 0.75), ("bleu", 0.75), ("language", 1.0)]
    again = load_config(_write(tmp_path, c.to_yaml()))  # a run's config.yaml holds both keys
    assert again.rewards == c.rewards


def test_reward_preset_conflicts_and_unknown_names_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="disagree"):
        load_config(_write(tmp_path, "rewards:\n  preset: emb\n  components: [{name: bleu, weight: 1.0}]\n"))
    with pytest.raises(ConfigError, match="emb_lang, bleu_lang"):
        load_config(_write(tmp_path, "rewards:\n  preset: embb\n"))
    with pytest.raises(ConfigError, match="sweep.rewards"):
        load_config(_write(tmp_path, "sweep:\n  rewards: [emb, emb_lang, emb]\n"))


def test_ablation_configs_differ_only_in_their_reward_set() -> None:
    configs = {p.stem: load_config(p).to_dict() for p in sorted((CONFIGS / "ablations").glob("*.yaml"))}
    assert set(configs) == {"emb_lang", "bleu_lang", "bleu_emb_lang", "emb"}
    for name, data in configs.items():
        assert data["rewards"]["preset"] == name and data["name"] == f"ablation-{name}"
        comparable = {k: v for k, v in data.items() if k not in ("name", "output_dir")}
        comparable["rewards"] = {k: v for k, v in data["rewards"].items() if k not in ("preset", "components")}
        reference = {k: v for k, v in configs["emb_lang"].items() if k not in ("name", "output_dir")}
        reference["rewards"] = {k: v for k, v in reference["rewards"].items() if k not in ("preset", "components")}
        assert comparable == reference, name


def test_the_emb_lang_ablation_and_the_ntrex_study_are_the_ntrex_demos_experiment() -> None:
    # The ablations and the NTREX study say so in their headers; a retuned NTREX demo would break it.
    def experiment(name: str, drop: tuple[str, ...] = ()) -> dict:
        data = load_config(CONFIGS / name).to_dict()
        for key in ("name", "output_dir", *drop):
            data.pop(key)
        data["rewards"].pop("preset", None)
        return data

    demo = experiment("ntrex-demo.yaml")
    assert experiment("ablations/emb_lang.yaml") == demo
    study, same = experiment("ntrex-study.yaml"), dict(demo)
    assert study["stages"]["grpo"]["max_steps"] > demo["stages"]["grpo"]["max_steps"]
    for key in ("stages", "evaluation"):
        study.pop(key), same.pop(key)
    assert study == same
    study_stages = load_config(CONFIGS / "ntrex-study.yaml").stages
    demo_stages = load_config(CONFIGS / "ntrex-demo.yaml").stages
    assert (study_stages.cold_start, study_stages.sft) == (demo_stages.cold_start, demo_stages.sft)  # reusable


def test_the_study_is_the_demos_experiment_at_a_larger_scale() -> None:
    # Both headers say so: same model, task, corpus and rewards, the same stage graph (strong SFT and
    # GRPO from the cold start), every size at least the demo's.
    demo, study = load_config(CONFIGS / "demo.yaml"), load_config(CONFIGS / "study.yaml")
    for section in ("model", "task", "rewards"):
        assert getattr(study, section) == getattr(demo, section), section
    assert study.data.sources == demo.data.sources and study.data.max_source_chars == demo.data.max_source_chars
    for stage in ("sft", "grpo"):
        assert study.stages.section(stage).from_ == demo.stages.section(stage).from_ == "cold_start"
    sizes = ("cold_start", "rl", "test")
    assert all(getattr(study.data.splits, s) >= getattr(demo.data.splits, s) for s in sizes)
    assert study.stages.sft.max_steps > demo.stages.sft.max_steps
    assert study.stages.grpo.max_steps > demo.stages.grpo.max_steps
    # The study's control arm draws GRPO's number of prompts: a matched budget.
    grpo, rft = study.stages.grpo, study.stages.section("rft")
    assert rft.max_prompts == grpo.max_steps * grpo.batch_size // grpo.num_generations


def test_compile_layers_is_off_by_default_and_leaves_existing_stages_current(tmp_path: Path) -> None:
    from semrl.train.stages import stage_config_hash

    plain = load_config(_write(tmp_path, "seed: 5\n"))
    explicit_off = load_config(_write(tmp_path, "seed: 5\nstages:\n  grpo: {compile_layers: false}\n"))
    on = load_config(_write(tmp_path, "seed: 5\nstages:\n  grpo: {compile_layers: true}\n"))
    for stage in ("cold_start", "sft", "grpo"):
        assert "compile_layers" not in plain.to_dict()["stages"][stage]  # stages trained before the key stay current
        assert stage_config_hash(explicit_off, stage) == stage_config_hash(plain, stage)
    assert stage_config_hash(on, "grpo") != stage_config_hash(plain, "grpo")  # other numbers: trained again
    assert stage_config_hash(on, "cold_start") == stage_config_hash(plain, "cold_start")
    auto = load_config(_write(tmp_path, "seed: 5\nstages:\n  grpo: {compile_layers: auto}\n"))
    assert auto.stages.grpo.compile_layers == "auto"
    with pytest.raises(ConfigError, match="compile_layers"):
        load_config(_write(tmp_path, "seed: 5\nstages:\n  grpo: {compile_layers: sometimes}\n"))


def test_a_stage_seed_defaults_to_the_run_seed_and_leaves_existing_stages_current(tmp_path: Path) -> None:
    from semrl.train.common import common_args
    from semrl.train.stages import stage_config_hash

    plain = load_config(_write(tmp_path, "seed: 5\n"))
    assert plain.stage_seed("grpo") == 5
    # not in the dump while unset: stages finished before the key existed keep their config hash
    assert "seed" not in plain.to_dict()["stages"]["grpo"]
    explicit_null = load_config(_write(tmp_path, "seed: 5\nstages:\n  grpo: {seed: null}\n"))
    assert stage_config_hash(explicit_null, "grpo") == stage_config_hash(plain, "grpo")

    own = load_config(_write(tmp_path, "seed: 5\nstages:\n  grpo: {seed: 9}\n"))
    assert own.stage_seed("grpo") == 9 and own.stage_seed("cold_start") == 5
    assert stage_config_hash(own, "grpo") != stage_config_hash(plain, "grpo")
    assert stage_config_hash(own, "cold_start") == stage_config_hash(plain, "cold_start")
    args = common_args("grpo", own.stages.grpo, own, tmp_path)
    assert args["seed"] == args["data_seed"] == 9
    for bad in ("1.5", "-1", "true"):
        with pytest.raises(ConfigError, match="stages.grpo.seed"):
            load_config(_write(tmp_path, f"stages:\n  grpo: {{seed: {bad}}}\n"))
