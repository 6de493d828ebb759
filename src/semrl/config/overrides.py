"""`--set KEY=VALUE` overrides, applied to the raw YAML mapping before validation."""

from __future__ import annotations

from typing import Any

import yaml

from semrl.config.yaml_input import YAMLRefused, load_user_yaml
from semrl.core.errors import ConfigError


def apply_override(data: dict[str, Any], item: str) -> str:
    """Set a dotted key in a nested dict from a `key=value` string (value parsed as safe YAML);
    returns the dotted key. A malformed one is a ConfigError naming the `--set` flag."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. stages.grpo.max_steps=2")
    key, raw = item.split("=", 1)
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {part!r} is not a section")
    try:
        node[parts[-1]] = load_user_yaml(raw)
    except YAMLRefused as err:
        raise ConfigError(f"--set {item!r}: the value is refused: {err.problem}") from None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"--set {item!r}: the value is not valid YAML ({problem}); quote it, e.g. --set '{key}=\"{raw}\"'"
        ) from None
    return key.strip()
