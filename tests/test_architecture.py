"""The package's layering: each subpackage imports only the layers below it, so there is no import
cycle and a reader can follow the code from the bottom up (core, config, ... pipeline, cli)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "semrl"
# Bottom to top; a module may import its own layer and those before it.
LAYERS: list[set[str]] = [
    {"core"},
    {"config"},
    {"models", "generation"},
    {"encoders"},
    {"data"},
    {"rewards"},
    {"eval"},
    {"train"},
    {"results"},
    {"integrations"},
    {"pipeline"},
    {"cli", "__main__", "__init__"},
]


def layer_of(name: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if name in names)


def imported_units(path: Path) -> set[str]:
    """The top-level semrl units (subpackage or module) a file imports, lazily or not."""
    units = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        units |= {n.split(".")[1] for n in names if n.startswith("semrl.")}
    return units


def test_every_unit_has_a_layer() -> None:
    units = {
        p.name.removesuffix(".py") for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()
    }
    assert units == set().union(*LAYERS)


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for target in imported_units(path):
            if layer_of(target) > layer_of(unit):
                upward.append(f"{path.relative_to(PACKAGE)} imports semrl.{target}")
    assert not upward, "imports reaching up the layers:\n" + "\n".join(upward)
