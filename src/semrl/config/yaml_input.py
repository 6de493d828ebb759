"""YAML the user wrote (config files, `--set` values), read safely: safe tags only, no duplicate
keys, a bound on nesting and on what aliases expand to.

PyYAML's safe loader shares an aliased node instead of copying it, so a "billion laughs" file of
a few hundred bytes loads fast, but anything that walks the result (validation, an error message
showing the value, a dump) sees 10**9 values and runs out of memory after minutes. The bound is
checked while the document is composed, before anything is built from it.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.error import MarkedYAMLError

# Far above any experiment config (a few hundred values) and its nesting (a handful of levels).
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 100

_MERGE_TAG = "tag:yaml.org,2002:merge"


class YAMLRefused(MarkedYAMLError):
    """Well-formed YAML that semrl refuses (duplicate keys, alias bombs, deep nesting); the
    `problem` says why and `problem_mark` where."""


class _UserYAMLLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._expanded: dict[int, int] = {}  # id(node) -> values it stands for, aliases expanded

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if self._depth >= MAX_YAML_DEPTH:
            raise YAMLRefused(problem=f"nested more than {MAX_YAML_DEPTH} levels deep", problem_mark=event.start_mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if id(node) in self._expanded:  # an alias of a finished node: counted again where it is used
            return node
        if isinstance(event, yaml.AliasEvent):
            raise YAMLRefused(
                problem=f"the alias *{event.anchor} refers to itself (a recursive structure)",
                problem_mark=event.start_mark,
            )
        if isinstance(node, yaml.ScalarNode):
            children: list[Any] = []
            try:  # a "\ud800" escape: half a UTF-16 pair, no character, and no UTF-8 for it
                node.value.encode("utf-8")
            except UnicodeEncodeError as err:
                raise YAMLRefused(
                    problem=f"a lone surrogate escape \\u{ord(err.object[err.start]):04x} (half a UTF-16 pair, no "
                    "character)",
                    problem_mark=node.start_mark,
                ) from None
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = [child for pair in node.value for child in pair]
        size = 1 + sum(self._expanded[id(child)] for child in children)
        if size > MAX_YAML_VALUES:
            raise YAMLRefused(
                problem=f"this value expands to more than {MAX_YAML_VALUES:,} values through aliases (*name repeats "
                "an &name anchor); a config needs far fewer: write the values out, or remove the aliases",
                problem_mark=node.start_mark,
            )
        self._expanded[id(node)] = size
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        # The safe loader keeps the last of two equal keys: a second `stages:` would silently
        # replace the whole first section. Keys beside a merge key (`<<: *base`) may override it.
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: the safe loader refuses it itself
                    continue
                if first is not key_node.start_mark:
                    raise YAMLRefused(
                        problem=f"duplicate key {key!r} (first at line {first.line + 1}); each key may appear "
                        "once: merge the two",
                        problem_mark=key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def load_user_yaml(text: str) -> Any:
    """Parse YAML written by the user: like `yaml.safe_load`, but duplicate keys, aliases that
    expand past MAX_YAML_VALUES values, recursive aliases, nesting deeper than MAX_YAML_DEPTH and
    lone surrogate escapes raise `YAMLRefused` (a `yaml.YAMLError` with `problem` and
    `problem_mark`), fast and before anything is built."""
    return yaml.load(text, Loader=_UserYAMLLoader)  # noqa: S506 - a SafeLoader subclass
