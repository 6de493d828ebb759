"""`--set KEY=VALUE` overrides, applied to the raw YAML mapping before validation."""

from __future__ import annotations

from typing import Any

import yaml

from semrl.core.errors import ConfigError


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set a dotted key in a nested dict from a `key=value` string (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. stages.grpo.max_steps=2")
    key, raw = item.split("=", 1)
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)
