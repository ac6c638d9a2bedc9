"""Every bad field of a request, not just the first one msgspec meets.

msgspec stops at the first error. When a body fails, ``every_field_error`` walks the decoded
JSON against the same type, field by field (Structs, tagged unions of Structs, lists, dicts),
and asks msgspec about each leaf, so the 422 lists one entry per bad field with msgspec's own
verdict. Messages that would show a raw regular expression or an enum's internals get words.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, Union

import msgspec

from app.errors import field_errors

# A pattern's meaning, for the message (msgspec's would quote the regular expression).
PATTERN_MESSAGES: dict[str, str] = {}


def describe_pattern(pattern: str, message: str) -> str:
    """Register the words for a ``msgspec.Meta(pattern=...)``; returns the pattern."""
    PATTERN_MESSAGES[pattern] = message
    return pattern


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def allowed_values(tp: Any) -> list[Any] | None:
    """The values of a Literal (or an optional one), else None."""
    tp = _unwrap(tp)
    if typing.get_origin(tp) is Literal:
        return list(typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        for arm in typing.get_args(tp):
            if (values := allowed_values(arm)) is not None:
                return values
    return None


def _pattern_of(tp: Any) -> str | None:
    if typing.get_origin(tp) is Annotated:
        for meta in typing.get_args(tp)[1:]:
            if isinstance(meta, msgspec.Meta) and meta.pattern:
                return meta.pattern
        return _pattern_of(typing.get_args(tp)[0])
    if typing.get_origin(tp) in (Union, types.UnionType):
        for arm in typing.get_args(tp):
            if (pattern := _pattern_of(arm)) is not None:
                return pattern
    return None


def friendly(message: str, tp: Any) -> str:
    """msgspec's message, with words for a known pattern and the allowed values of an enum."""
    if message.startswith("Expected `str` matching regex"):
        pattern = _pattern_of(tp)
        if pattern in PATTERN_MESSAGES:
            return PATTERN_MESSAGES[pattern]
    if message.startswith("Invalid enum value") and (values := allowed_values(tp)) is not None:
        return f"{message.removeprefix('Invalid enum value ')} is not allowed; expected one of " + ", ".join(
            str(value) for value in values)
    return message


def _decode(value: Any, tp: Any) -> msgspec.ValidationError | None:
    try:
        msgspec.json.decode(msgspec.json.encode(value), type=tp)
    except msgspec.ValidationError as exc:
        return exc
    return None


def _struct_arms(tp: Any) -> list[type[msgspec.Struct]]:
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return [tp]
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [arm for arm in typing.get_args(tp) if isinstance(arm, type) and issubclass(arm, msgspec.Struct)]
    return []


def _join(path: str, name: str | int) -> str:
    return str(name) if path == "$" else f"{path}.{name}"


def every_field_error(value: Any, tp: Any, path: str = "$") -> list[dict[str, str]]:
    """One {"field", "message"} per bad field of ``value`` (already decoded JSON) against ``tp``."""
    exc = _decode(value, tp)
    if exc is None:
        return []
    arms = _struct_arms(tp)
    if arms and isinstance(value, dict):
        struct = _pick_arm(arms, value)
        if struct is not None:
            return _struct_errors(value, struct, path) or _leaf(exc, tp, path)
    inner = _unwrap(tp)
    if typing.get_origin(inner) is list and isinstance(value, list):
        (item_type,) = typing.get_args(inner)
        errors = [e for index, item in enumerate(value) for e in every_field_error(item, item_type, _join(path, index))]
        return errors or _leaf(exc, tp, path)
    return _leaf(exc, tp, path)


def _leaf(exc: msgspec.ValidationError, tp: Any, path: str) -> list[dict[str, str]]:
    details = field_errors(exc, root=path)
    # the detail may sit deeper than `path` (msgspec names the exact spot); the type of that spot is
    # only known at `path` itself, so words are only put on errors about `path`
    return [{**d, "message": friendly(d["message"], tp)} if d["field"] == path else d for d in details]


def _pick_arm(arms: list[type[msgspec.Struct]], value: dict[str, Any]) -> type[msgspec.Struct] | None:
    if len(arms) == 1 and arms[0].__struct_config__.tag is None:
        return arms[0]
    for arm in arms:
        config = arm.__struct_config__
        if config.tag_field is not None and value.get(config.tag_field) == config.tag:
            return arm
    return None  # an unknown tag: msgspec's own message names it


def _struct_errors(value: dict[str, Any], struct: type[msgspec.Struct], path: str) -> list[dict[str, str]]:
    hints = typing.get_type_hints(struct, include_extras=True)
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    errors: list[dict[str, str]] = []
    known = {field.encode_name for field in info.fields}
    if info.tag_field is not None:
        known.add(info.tag_field)
    if info.forbid_unknown_fields:
        errors += [{"field": _join(path, name), "message": f"Object contains unknown field `{name}`"}
                   for name in value if name not in known]
    for field in info.fields:
        if field.encode_name not in value:
            if field.required:
                errors.append({"field": _join(path, field.encode_name),
                               "message": f"Object missing required field `{field.encode_name}`"})
            continue
        errors += every_field_error(value[field.encode_name], hints[field.name], _join(path, field.encode_name))
    return errors
