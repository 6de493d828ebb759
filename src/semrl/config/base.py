"""The base of every config section: unknown keys are errors, and keys added later leave old
hashes alone."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    model_serializer,
)
from pydantic_core import PydanticCustomError

# Config values that become a file or folder name (stage names, sweep variants, transfer start
# stages): a name like `../x` or `/tmp/x` would write outside the run directory.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
PLAIN_NAME_RULE = "letters, digits, '_', '.' and '-', starting with a letter or digit, no '..'"


def check_plain_name(value: str, what: str) -> str:
    """`value` unchanged when it is safe as one path component; ValueError saying what is allowed
    otherwise (pydantic validators turn it into a ConfigError naming the key)."""
    if not PLAIN_NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{what} {value!r} becomes a folder name: use only {PLAIN_NAME_RULE}")
    return value


class Section(BaseModel):
    # Unknown keys are errors: a misspelt key silently ignored is the worst kind of bug in a
    # research config.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Keys added after run directories already existed: left out of dumps while at their default,
    # so the config hashes of existing runs (splits, stage manifests) stay valid.
    _omit_when_default: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        fields = type(self).model_fields
        for key in self._omit_when_default:
            shown = key if key in data else fields[key].alias
            if shown in data and getattr(self, key) == fields[key].get_default(call_default_factory=True):
                del data[shown]
        return data


def nested_key_error(field: str, detail: str) -> PydanticCustomError:
    """A validation error about `field` inside the value being validated (e.g. '1.name' of a list of
    components); the config loader names it <the value's key>.<field>."""
    return PydanticCustomError("nested_key", "{detail}", {"field": field, "detail": detail})
