"""The documentation: generated pages match the code, the README's commands are CI's, every command
on the Getting started page runs as written, and metrics.json's documented schema matches a real run.

Regenerate the generated pages with `python scripts/gen_docs.py`.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from semrl.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"
GETTING_STARTED = ROOT / "docs" / "getting-started.md"
REGENERATE = "python scripts/gen_docs.py"


def load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def code_lines(markdown: str, lang: str = "bash") -> list[str]:
    """The lines of a page's ```bash blocks, in order."""
    blocks = re.findall(rf"```{lang}\n(.*?)```", markdown, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def ci_line(prefix: str) -> str:
    line = next((x for x in CI.read_text(encoding="utf-8").splitlines() if x.startswith(prefix)), None)
    assert line is not None, f".ci/run has no line starting with {prefix!r}"
    return line


# ------------------------------------------------------------------------------------------------
# Generated pages
# ------------------------------------------------------------------------------------------------
def test_generated_pages_match_the_code() -> None:
    stale = load_generator().stale_pages()
    details = "\n\n".join(diff[:2000] for diff in stale.values())
    assert not stale, (
        f"generated docs page(s) out of date: {', '.join(stale)}. Regenerate them with `{REGENERATE}` "
        f"and commit the result.\n{details}"
    )


def test_a_changed_description_makes_the_config_page_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check sees a change in the code the page comes from (here, one field's description)."""
    from semrl.config.model import LoraConfig

    gen = load_generator()
    field = LoraConfig.model_fields["r"]
    monkeypatch.setattr(field, "description", "a description the committed page does not have")
    stale = gen.stale_pages()
    assert "reference/config.md" in stale
    assert "a description the committed page does not have" in stale["reference/config.md"]


def test_the_config_page_lists_every_key_with_default_and_description() -> None:
    page = (ROOT / "docs" / "reference" / "config.md").read_text(encoding="utf-8")
    assert "| `r` | integer | `64` | LoRA rank (paper: 64). |" in page
    assert "## `stages.<name> (kind: sft)` {#stages-name-kind-sft}" in page
    assert "| `tau_source` | one of `shuffled`, `cold_start_dev` | `cold_start_dev` |" in page


# ------------------------------------------------------------------------------------------------
# The README and CI
# ------------------------------------------------------------------------------------------------
def test_readme_is_a_short_front_door() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_links_resolve() -> None:
    """mkdocs --strict checks the site's links; the README is outside the site, so check its own."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text(encoding="utf-8"))
    local = [link for link in links if "://" not in link]
    assert local, "the README links into docs/"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_readme_test_command_is_byte_identical_to_ci() -> None:
    readme = code_lines(README.read_text(encoding="utf-8"))
    tests = [line for line in readme if "pytest" in line]
    assert len(tests) == 1, "the README shows one test command"
    assert tests[0] == ci_line("python3 -m venv"), "README's test command differs from .ci/run's"
    # Getting started shows the same command.
    assert tests[0] in code_lines(GETTING_STARTED.read_text(encoding="utf-8"))


def test_readme_docs_build_is_what_ci_runs() -> None:
    text = README.read_text(encoding="utf-8")
    command = 'pip install -e ".[docs]" && mkdocs build --strict'
    assert command in " ".join(text.split()), "the README names the docs build command"
    assert ci_line("pip install -e") == command


def test_demo_install_is_ci_install_without_dev_tools() -> None:
    """The README's demo command and Getting started's install are CI's install minus -q and the dev
    extra, so CI's run of its own line covers them."""
    ci_install = ci_line("python3 -m venv").split(" && ruff")[0]
    expected = ci_install.replace(" -q", "").replace(",dev", "")
    demo = next(line for line in code_lines(README.read_text(encoding="utf-8")) if line.endswith("semrl demo"))
    assert demo == f"{expected} && semrl demo"
    assert expected in code_lines(GETTING_STARTED.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------
# Every command of Getting started, as written
# ------------------------------------------------------------------------------------------------
def test_the_full_demo_is_the_quick_demos_path_on_the_demo_config() -> None:
    """`semrl demo` is too long for CI; it runs configs/demo.yaml through the path `semrl demo
    --quick` runs (tested below), and the packaged demo config is the repository's and loads."""
    from semrl.config.experiment import load_config

    packaged = ROOT / "src" / "semrl" / "configs" / "demo.yaml"
    assert packaged.read_text(encoding="utf-8") == (ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8")
    config = load_config(packaged)
    assert config.model.name == "gemma-3-270m"


@pytest.fixture(scope="module")
def getting_started(tmp_path_factory: pytest.TempPathFactory, fixture_data_dir: Path) -> dict[str, Any]:
    """Run every command of the Getting started page in order, in a fresh directory, with the tests'
    data directory as SEMRL_DATA_DIR (CI sets it to the real datasets, as the page's `export` does)."""
    work = tmp_path_factory.mktemp("getting-started")
    (work / "configs").symlink_to(ROOT / "configs")
    ci_tests = ci_line("python3 -m venv")
    install = ci_tests.split(" && ruff")[0].replace(" -q", "").replace(",dev", "")
    exit_codes: dict[str, int] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("SEMRL_DATA_DIR", str(fixture_data_dir))
        for line in code_lines(GETTING_STARTED.read_text(encoding="utf-8")):
            if line in (install, ci_tests):  # run by CI (see the tests above)
                continue
            if re.fullmatch(r"export SEMRL_DATA_DIR=\S+", line):  # set above, to the tests' data
                continue
            assert line.startswith("semrl "), f"Getting started shows a command no test runs: {line!r}"
            if line == "semrl demo":  # the full demo: see test_the_full_demo_is_the_quick_demos_path...
                continue
            exit_codes[line] = main(shlex.split(line)[1:])
    return {"work": work, "exit_codes": exit_codes}


def test_every_getting_started_command_runs_as_written(getting_started: dict[str, Any]) -> None:
    codes = getting_started["exit_codes"]
    assert "semrl demo --quick --out runs/quick" in codes
    failed = {cmd: code for cmd, code in codes.items() if code != 0}
    assert not failed, f"Getting started commands failed (exit codes): {failed}"
    work: Path = getting_started["work"]
    assert (work / "runs" / "quick" / "report.html").is_file()
    assert (work / "my-experiment.yaml").is_file()
    assert (work / "models" / "quick-grpo" / "config.json").is_file()
    assert (work / "models" / "quick-grpo" / "README.md").is_file()


# ------------------------------------------------------------------------------------------------
# metrics.json against its documented schema
# ------------------------------------------------------------------------------------------------
class SchemaNode:
    def __init__(self) -> None:
        self.children: dict[str, SchemaNode] = {}
        self.key: Any = None  # the documented MetricsKey, None for implicit parents

    def child(self, segment: str) -> SchemaNode | None:
        if segment in self.children:
            return self.children[segment]
        return next((node for name, node in self.children.items() if name.startswith("<")), None)


def schema_tree() -> SchemaNode:
    from semrl.results.schema import METRICS_KEYS

    root = SchemaNode()
    for key in METRICS_KEYS:
        node = root
        for segment in key.path.split("."):
            node = node.children.setdefault(segment, SchemaNode())
        node.key = key
    return root


def check_against_schema(value: Any, node: SchemaNode, path: str, seen: set[str], undocumented: list[str]) -> None:
    if node.key is not None:
        seen.add(node.key.path)
        if node.key.type == "open":
            return
    if not isinstance(value, dict):
        return
    interval = node.key is not None and node.key.type == "interval"
    for name, inner in value.items():
        sub = f"{path}.{name}" if path else name
        child = node.child(name)
        if child is None:
            if not (interval and name in ("estimate", "low", "high")):
                undocumented.append(sub)
            continue
        check_against_schema(inner, child, sub, seen, undocumented)


def test_metrics_json_keys_are_documented_both_ways(getting_started: dict[str, Any]) -> None:
    """Every key a real run writes is in semrl.results.schema (and so on the metrics page), and every
    key documented as present in every run is in it."""
    from semrl.results.schema import METRICS_KEYS

    metrics = json.loads((getting_started["work"] / "runs" / "quick" / "metrics.json").read_text(encoding="utf-8"))
    seen: set[str] = set()
    undocumented: list[str] = []
    check_against_schema(metrics, schema_tree(), "", seen, undocumented)
    assert not undocumented, (
        f"metrics.json keys missing from src/semrl/results/schema.py: {sorted(set(undocumented))}; "
        f"document them there and run `{REGENERATE}`"
    )
    missing = [k.path for k in METRICS_KEYS if k.required and k.path not in seen]
    assert not missing, f"documented as in every run, but not in the tiny run's metrics.json: {missing}"


def test_the_schema_check_finds_an_undocumented_key() -> None:
    seen: set[str] = set()
    undocumented: list[str] = []
    check_against_schema({"schema_version": 2, "surprise": {"x": 1}}, schema_tree(), "", seen, undocumented)
    assert undocumented == ["surprise"] and "schema_version" in seen
