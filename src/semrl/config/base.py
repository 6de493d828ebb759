"""The base of every config section: unknown keys are errors, and keys added later leave old
hashes alone."""

from __future__ import annotations

import re
import types
from typing import Annotated, Any, ClassVar, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
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


def takes_integers_only(annotation: Any) -> bool:
    """Whether a field's type takes integers but neither floats nor booleans (int, int | None,
    int | Literal['auto'], ...)."""
    if get_origin(annotation) is Annotated:
        return takes_integers_only(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        kinds = {get_args(a)[0] if get_origin(a) is Annotated else a for a in get_args(annotation)}
        return int in kinds and not kinds & {float, bool}
    return annotation is int


class Section(BaseModel):
    # Unknown keys are errors: a misspelt key silently ignored is the worst kind of bug in a
    # research config. Infinite and NaN floats are errors too: `.inf` would be dumped as null
    # into the run's config.yaml, and no setting means either.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

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

    @model_validator(mode="before")
    @classmethod
    def _integers_are_integers(cls, data: Any) -> Any:
        # pydantic would take 1e9 as 1000000000 and `true` as 1: a count written as a float, or a
        # flag given to a number, is a mistake to name, not to guess at. (A field validator cannot
        # do it: pydantic refuses one on the `kind` discriminators.)
        if not isinstance(data, dict):
            return data
        errors = []
        for name, field in cls.model_fields.items():
            key = field.alias if field.alias in data else name
            value = data.get(key)
            if isinstance(value, (bool, float)) and takes_integers_only(field.annotation):
                got = "true/false" if isinstance(value, bool) else "a float"
                message = f"must be an integer, not {got}"
                errors.append({"type": PydanticCustomError("int_type", message), "loc": (key,), "input": value})
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return data


def nested_key_error(field: str, detail: str) -> PydanticCustomError:
    """A validation error about `field` inside the value being validated (e.g. '1.name' of a list of
    components); the config loader names it <the value's key>.<field>."""
    return PydanticCustomError("nested_key", "{detail}", {"field": field, "detail": detail})
