"""Prompts and completions: the completion-style templates (or chat templates), and TRL datasets for SFT and GRPO."""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from semrl.config.data import (
    TaskConfig,
)
from semrl.core.errors import ConfigError, DataError, ModelError
from semrl.core.lang import language_name
from semrl.data.example import Example

if TYPE_CHECKING:
    import datasets


DEFAULT_TEMPLATES: dict[str, str] = {
    "translation": "Translate the following {source_lang_name} text into {target_lang_name}.\n"
    "{source_lang_name}: {source}\n{target_lang_name}:",
    "headline": "Write a {target_lang_name} headline for the following {source_lang_name} article.\n"
    "Article: {source}\nHeadline:",
}


TEMPLATE_FIELDS: frozenset[str] = frozenset(
    {"source", "source_lang", "target_lang", "source_lang_name", "target_lang_name"}
)


# See the module docstring: completions start with one space, prompts end without one.
COMPLETION_PREFIX = " "


def check_template(template: str, key: str, allowed: frozenset[str], required: tuple[str, ...]) -> str:
    """Check a str.format template: valid syntax, only `allowed` placeholders, every `required`
    one present; ConfigError naming the config `key` otherwise. Returns the template."""
    try:
        parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise ConfigError(f"{key}: not a valid format string ({err}); write literal braces as {{{{ }}}}") from None
    fields = {f for f, _, _ in parsed}
    unknown = sorted(fields - allowed)
    if unknown:
        raise ConfigError(f"{key}: unknown placeholder(s) {unknown}; allowed: {sorted(allowed)}")
    # A format spec or conversion ({source:{source_lang}}, {source!r}) passes the names above but
    # is filled in (or fails) only when a prompt is built: placeholders are plain names.
    fancy = [
        f"{{{f}{'!' + conv if conv else ''}{':' + spec if spec else ''}}}" for f, spec, conv in parsed if spec or conv
    ]
    if fancy:
        raise ConfigError(
            f"{key}: placeholder(s) {fancy} have a format spec or conversion; write plain placeholders such as "
            f"{{source}} (and literal braces as {{{{ }}}})"
        )
    missing = [f"{{{name}}}" for name in required if name not in fields]
    if missing:
        raise ConfigError(f"{key}: must contain {', '.join(missing)}")
    return template


def prompt_template(task: TaskConfig) -> str:
    """The task's completion-style template (its own or semrl's default), checked for fields."""
    template = task.prompt_template or DEFAULT_TEMPLATES[task.kind]
    return check_template(template, "task.prompt_template", TEMPLATE_FIELDS, ("source",))


def language_fields(task: TaskConfig) -> dict[str, str]:
    """The task's language placeholders of prompt templates (codes and English names)."""
    return {
        "source_lang": task.source_lang,
        "target_lang": task.target_lang,
        "source_lang_name": language_name(task.source_lang),
        "target_lang_name": language_name(task.target_lang),
    }


def prompt_text(source: str, task: TaskConfig) -> str:
    """The prompt as plain text (no chat formatting), with trailing whitespace removed."""
    return prompt_template(task).format(source=source, **language_fields(task)).rstrip()


def uses_chat_template(task: TaskConfig, tokenizer: Any = None) -> bool:
    """Whether prompts are conversational: 'never' no; 'auto' iff the tokenizer has a chat
    template; 'always' yes (ModelError if the given tokenizer has none)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if task.use_chat_template == "never":
        return False
    if task.use_chat_template == "auto":
        return has_template
    if tokenizer is not None and not has_template:
        raise ModelError(
            "task.use_chat_template is 'always' but the tokenizer has no chat template (a base model?); "
            "set it to 'auto' or 'never'"
        )
    return True


def build_prompt(source: str, task: TaskConfig, tokenizer: Any = None) -> str | list[dict[str, str]]:
    """The model input for one source text: a completion-style string, or `[{"role": "user",
    "content": ...}]` when chat templates are in use (see `uses_chat_template`)."""
    text = prompt_text(source, task)
    if uses_chat_template(task, tokenizer):
        return [{"role": "user", "content": text}]
    return text


def completion_text(reference: str, task: TaskConfig, tokenizer: Any = None) -> str | list[dict[str, str]]:
    """The training target matching `build_prompt`: " " + reference (completion style, see the
    module docstring), or `[{"role": "assistant", "content": reference}]`."""
    if uses_chat_template(task, tokenizer):
        return [{"role": "assistant", "content": reference}]
    return COMPLETION_PREFIX + reference


def to_sft_dataset(examples: Sequence[Example], task: TaskConfig, tokenizer: Any = None) -> datasets.Dataset:
    """A prompt/completion dataset: TRL's SFTTrainer trains on the completion tokens only and
    appends the EOS token to each completion."""
    import datasets

    if not examples:
        raise DataError("no examples for an SFT dataset (is the split empty? see data.splits)")
    return datasets.Dataset.from_dict(
        {
            "prompt": [build_prompt(ex.source, task, tokenizer) for ex in examples],
            "completion": [completion_text(ex.reference, task, tokenizer) for ex in examples],
        }
    )


def to_grpo_dataset(examples: Sequence[Example], task: TaskConfig, tokenizer: Any = None) -> datasets.Dataset:
    """A GRPO prompt dataset; TRL hands the extra columns (reference, source, id) to every reward
    function as keyword lists aligned with the completions."""
    import datasets

    if not examples:
        raise DataError("no examples for a GRPO dataset (is the rl split empty? see data.splits.rl)")
    return datasets.Dataset.from_dict(
        {
            "prompt": [build_prompt(ex.source, task, tokenizer) for ex in examples],
            "reference": [ex.reference for ex in examples],
            "source": [ex.source for ex in examples],
            "id": [ex.id for ex in examples],
        }
    )
