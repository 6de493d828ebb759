"""Regression tests of issue 21 (outside testing): text from data and configs is only ever text in a
report, a report is replaced whole or not at all, and a config runs no code the user has not trusted.

The report cases run the tiny model's base evaluation once per module (no training) on data whose
references carry Markdown and HTML, under a run name that does too.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import sys
from importlib import resources
from pathlib import Path

import pytest

from semrl.cli import main
from semrl.config.experiment import load_config, parse_config
from semrl.core.errors import ConfigError
from semrl.core.layout import RunLayout

TINY = Path(str(resources.files("semrl") / "configs" / "tiny.yaml"))
HOSTILE = "![x](nope.png) <script>alert(1)</script> | *b* `c` # [l](http://e) \\ &amp; _u_ ~~s~~"
HOSTILE_NAME = "<script>alert(2)</script> ![n](nope.png) # h"
PAIRS = [("ང་ཚོ་སང་ཉིན་འགྲོ།", "我們明天去。"), ("ཁྱེད་རང་བདེ་པོ་ཡིན་པས།", "你好嗎？"), ("དེབ་འདི་ཡག་པོ་འདུག", "這本書很好。")]


def _base_only_run_args(data_file: Path, data_dir: Path, out: Path, *sets: str) -> list[str]:
    """`semrl run` of the tiny config that evaluates the base model only (no stage, no benchmark)."""
    args = ["run", str(TINY), "--out", str(out), "--data-dir", str(data_dir)]
    for item in (
        f"data.sources=[{{kind: local, path: '{data_file}', columns: {{source: bo, reference: zh, doc_id: doc}}}}]",
        "data.splits={cold_start: 3, rl: 8, dev: 1, test: 2}",
        "stages.enabled=[]",
        "evaluation.benchmarks=[]",
        "evaluation.judge.enabled=false",
        *sets,
    ):
        args += ["--set", item]
    return args


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory, fixture_data_dir: Path) -> Path:
    """A finished base-only run whose references start with HOSTILE and whose name is HOSTILE_NAME."""
    work = tmp_path_factory.mktemp("hostile")
    data = work / "hostile.jsonl"
    # Distinct pairs: exact duplicates are dropped and a training row may not repeat a test sentence.
    rows = [{"bo": f"{b} {i}", "zh": f"{HOSTILE} {z} {i}", "doc": f"d{i}"} for i, (b, z) in enumerate(PAIRS * 8)]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    run = work / "run"
    name = json.dumps(HOSTILE_NAME)  # a YAML string: JSON's quoting is YAML's
    assert main(_base_only_run_args(data, fixture_data_dir, run, f"name={name}")) == 0
    return run


def _copy(run: Path, tmp_path: Path) -> RunLayout:
    target = tmp_path / "run"
    shutil.copytree(run, target, symlinks=True)
    return RunLayout(target)


def _visible_text(page: str) -> str:
    """What a browser shows of an HTML page: its tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]*>", "", page))


def _assert_inert(page: str) -> None:
    """No markup from the data: the only images are the embedded plots, and no script."""
    assert "<script" not in page.lower()
    assert 'src="nope.png"' not in page and "<a href" not in page
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'<img [^>]*src="([^"]*)"', page))


# ---------------------------------------------------------------------------------------------
# Report injection
# ---------------------------------------------------------------------------------------------
def test_markup_in_references_and_the_run_name_is_text_in_both_reports(hostile_run: Path) -> None:
    layout = RunLayout(hostile_run)
    md = layout.report_md.read_text(encoding="utf-8")
    page = layout.report_html.read_text(encoding="utf-8")
    _assert_inert(page)
    title = re.search(r"<h1>(.*?)</h1>", page, re.S)
    assert title is not None and html.unescape(title.group(1)) == f"semrl report: {HOSTILE_NAME}"
    assert md.splitlines()[0] == r"# semrl report: \<script\>alert(2)\</script\> \!\[n\](nope.png) \# h"
    # The sample table shows each reference clipped to 60 characters, as the text it is.
    clipped = HOSTILE[:59] + "…"
    assert clipped in _visible_text(page)
    sample = page.split("<h3>Sample outputs")[1].split("</table>")[0]
    rows = re.findall(r"<tr>(.*?)</tr>", sample, re.S)[1:]
    assert rows and all(row.count("<td>") == 3 for row in rows)  # source, reference, base: no cell split by '|'
    assert json.loads(layout.metrics.read_text(encoding="utf-8"))["config"]["name"] == HOSTILE_NAME


def test_markup_in_model_outputs_is_text_and_the_report_can_be_rebuilt(hostile_run: Path, tmp_path: Path) -> None:
    layout = _copy(hostile_run, tmp_path)
    path = layout.eval_file("base")
    record = json.loads(path.read_text(encoding="utf-8"))
    for row in record["outputs"]:
        row["output"] = "<img src=nope.png onerror=alert(3)>![y](nope.png)\n# hd"  # under the 60-character clip
    path.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    for _ in range(2):  # `semrl report` works, and works again: nothing breaks it for good
        assert main(["report", str(layout.root)]) == 0
    page = layout.report_html.read_text(encoding="utf-8")
    _assert_inert(page)
    assert "<img src=nope.png onerror=alert(3)>![y](nope.png) # hd" in _visible_text(page)
    assert "<h1>hd" not in page


@pytest.mark.parametrize(
    "text",
    [
        HOSTILE,
        "a\\|b \\\\| c",
        "line one\nline two\r\n# three",
        "&lt;b&gt; &#x3C;i&#x3E; &copy;",
        "__init__ cold_start _lead trail_ snake_case_",
        "<https://example.org> www.example.org [ref]: /x",
        "``` fence ` tick",
    ],
)
def test_any_text_in_a_table_cell_reads_back_as_itself(text: str) -> None:
    from semrl.results.render import md_table, render_html

    page = render_html(md_table(["text"], [[text]]), Path("/nonexistent"))
    cells = re.findall(r"<td>(.*?)</td>", page, re.S)
    assert len(cells) == 1, page
    shown = " ".join(re.split(r"\r\n|\n|\r", text))
    assert html.unescape(cells[0]) == shown
    _assert_inert(page)


def test_a_report_that_fails_leaves_all_its_outputs_as_they_were(
    hostile_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import semrl.results.report as report

    layout = _copy(hostile_run, tmp_path)
    outputs = [layout.metrics, layout.report_md, layout.report_html]
    before = {p: p.read_bytes() for p in outputs}
    plots_before = sorted(p.name for p in layout.plots.iterdir())
    # New outputs make a new report.md; then the last rendering step fails.
    path = layout.eval_file("base")
    record = json.loads(path.read_text(encoding="utf-8"))
    for row in record["outputs"]:
        row["output"] = "something else"
    path.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")

    def fail(*args: object) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "render_html", fail)
    assert main(["report", str(layout.root)]) == 2
    assert {p: p.read_bytes() for p in outputs} == before
    assert sorted(p.name for p in layout.plots.iterdir()) == plots_before
    assert not list(layout.root.glob(".*.tmp"))  # no temporaries left behind


# ---------------------------------------------------------------------------------------------
# Code execution from a config
# ---------------------------------------------------------------------------------------------
def _popen_config(tmp_path: Path, marker: Path, trust: str = "") -> Path:
    """The tiny config with a custom reward `subprocess:Popen` that would run `touch MARKER`."""
    text = TINY.read_text(encoding="utf-8")
    assert text.count("\nrewards:\n") == 1
    rewards = (
        "\nrewards:\n"
        "  components:\n"
        "    - {name: language}\n"
        f'    - {{name: "subprocess:Popen", kwargs: {{args: "touch {marker}", shell: true}}}}\n'
        + (f"  trust_modules: [{trust}]\n" if trust else "")
    )
    cfg = tmp_path / "popen.yaml"
    cfg.write_text(text.replace("\nrewards:\n", rewards), encoding="utf-8")
    return cfg


@pytest.mark.parametrize("trust", ["", "subprocess"])
def test_a_config_naming_subprocess_popen_is_refused_when_it_loads(
    trust: str, tmp_path: Path, fixture_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "MARKER"
    cfg = _popen_config(tmp_path, marker, trust)
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    key = "rewards.trust_modules.0" if trust else "rewards.components.1.name"
    assert key in str(err.value) and "standard library" in str(err.value)
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--data-dir", str(fixture_data_dir)]) == 2
    message = capsys.readouterr().err
    assert key in message and "trust_modules" in message
    assert not marker.exists() and not (out / "splits").exists()  # refused before anything ran


def _user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(body, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


USER_REWARDS = """
import os
from subprocess import Popen


def bonus(prompts, completions, value=1.0, **columns):
    return [value for _ in completions]


class Exact:
    def __init__(self, miss=0.0):
        self.miss = miss

    def __call__(self, prompts, completions, reference, **columns):
        return [1.0 if c == r else self.miss for c, r in zip(completions, reference)]
"""


def test_a_reward_from_a_trusted_user_module_still_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from semrl.rewards.registry import build_reward_functions, score_completions

    _user_module(tmp_path, monkeypatch, "trust_lab_rewards", USER_REWARDS)
    components = [
        {"name": "trust_lab_rewards:bonus", "weight": 0.5, "kwargs": {"value": 2.0}},
        {"name": "trust_lab_rewards.Exact", "kwargs": {"miss": -1.0}},
    ]
    with pytest.raises(ConfigError, match=r"rewards\.components\.0\.name: .*not trusted.*trust_modules"):
        parse_config({"rewards": {"components": components}})
    config = parse_config({"rewards": {"trust_modules": ["trust_lab_rewards"], "components": components}})
    assert config.to_dict()["rewards"]["trust_modules"] == ["trust_lab_rewards"]  # kept in the resolved config
    funcs, weights = build_reward_functions(config.rewards, "zh", None, None)
    rows = [
        {"source": "ཀ", "reference": "好", "completion": "好"},
        {"source": "ཁ", "reference": "好", "completion": "坏"},
    ]
    scored = score_completions(rows, "zh", funcs, weights)
    assert [r["total"] for r in scored] == [0.5 * 2.0 + 1.0, 0.5 * 2.0 - 1.0]


def test_a_trusted_prefix_trusts_its_submodules_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "trust_lab"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "rewards.py").write_text(USER_REWARDS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    ok = parse_config(
        {"rewards": {"trust_modules": ["trust_lab"], "components": [{"name": "trust_lab.rewards:bonus"}]}}
    )
    assert ok.rewards.components[0].name == "trust_lab.rewards:bonus"
    with pytest.raises(ConfigError, match="not trusted"):
        parse_config({"rewards": {"trust_modules": ["trust_la"], "components": [{"name": "trust_lab.rewards:bonus"}]}})


@pytest.mark.parametrize("attr", ["Popen", "os.system"])
def test_a_trusted_module_does_not_lend_its_trust_to_what_it_imports(
    attr: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from semrl.rewards.registry import build_reward_functions

    _user_module(tmp_path, monkeypatch, "trust_lab_reexports", USER_REWARDS)
    marker = tmp_path / "MARKER"
    kwargs = {"args": f"touch {marker}", "shell": True} if attr == "Popen" else {"command": f"touch {marker}"}
    config = parse_config(
        {
            "rewards": {
                "trust_modules": ["trust_lab_reexports"],
                "components": [{"name": f"trust_lab_reexports:{attr}", "kwargs": kwargs}],
            }
        }
    )
    with pytest.raises(ConfigError, match=r"rewards\.components\[0\]\.name: .*not defined in a trusted module"):
        build_reward_functions(config.rewards, "zh", None, None)
    assert not marker.exists()


def test_trust_modules_refuses_builtins_and_non_reward_packages() -> None:
    for module in ("builtins", "os.path", "importlib", "torch", "semrl.cli", "numpy"):
        with pytest.raises(ConfigError, match=r"rewards\.trust_modules\.0: .*even when listed"):
            parse_config({"rewards": {"trust_modules": [module]}})
    with pytest.raises(ConfigError, match=r"rewards\.trust_modules\.0: 'my rewards' is not a dotted module name"):
        parse_config({"rewards": {"trust_modules": ["my rewards"]}})
    assert parse_config({"rewards": {"trust_modules": ["trl.rewards"]}}).rewards.trust_modules == ["trl.rewards"]


def test_trusting_a_module_does_not_change_a_stage_hash() -> None:
    from semrl.train.stages import stage_config_hash

    plain = load_config(TINY)
    trusted = load_config(TINY, overrides=["rewards.trust_modules=[trust_lab]"])
    assert stage_config_hash(plain, "grpo") == stage_config_hash(trusted, "grpo")


def test_trl_trust_remote_code_cannot_bypass_the_model_switch() -> None:
    with pytest.raises(
        ConfigError, match=r"stages\.grpo\.trl\.trust_remote_code \(from --set .*\): .*model\.trust_remote"
    ):
        load_config(TINY, overrides=["stages.grpo.trl={trust_remote_code: true}"])
    with pytest.raises(ConfigError, match=r"rewards\.trust_modules\.0 \(from --set rewards\.trust_modules=\[os\]\): "):
        load_config(TINY, overrides=["rewards.trust_modules=[os]"])
