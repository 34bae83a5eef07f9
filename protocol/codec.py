"""Encoding payloads to bytes and decoding them back, with typed failures.

``encode`` writes compact UTF-8 JSON; ``decode``/``decode_message`` accept only
what the models allow and raise :class:`~segs.protocol.errors.DecodeError` with a
machine-readable :class:`~segs.protocol.errors.Reason` for anything else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any, Final, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from segs.protocol import limits
from segs.protocol.contract import SPECS
from segs.protocol.errors import DecodeError, EncodeError, Reason, TopicError
from segs.protocol.messages import Message, Payload
from segs.protocol.topics import Topic, TopicKind, parse_topic

M = TypeVar("M", bound=Message)

_TYPE_REASONS: Final[dict[str, Reason]] = {
    "missing": Reason.MISSING_FIELD,
    "union_tag_not_found": Reason.MISSING_FIELD,
    "extra_forbidden": Reason.EXTRA_FIELD,
    "finite_number": Reason.NOT_FINITE,
    "greater_than": Reason.OUT_OF_RANGE,
    "greater_than_equal": Reason.OUT_OF_RANGE,
    "less_than": Reason.OUT_OF_RANGE,
    "less_than_equal": Reason.OUT_OF_RANGE,
    "literal_error": Reason.OUT_OF_RANGE,
    "enum": Reason.OUT_OF_RANGE,
    "union_tag_invalid": Reason.OUT_OF_RANGE,
    "string_too_long": Reason.OUT_OF_RANGE,
    "string_too_short": Reason.OUT_OF_RANGE,
    "too_short": Reason.OUT_OF_RANGE,
    "too_long": Reason.TOO_MANY_ITEMS,
    "string_pattern_mismatch": Reason.INVALID_VALUE,
    "json_invalid": Reason.MALFORMED_JSON,
    "datetime_parsing": Reason.INVALID_TIME,
    "datetime_from_date_parsing": Reason.INVALID_TIME,
    "datetime_object_invalid": Reason.INVALID_TIME,
    "timezone_aware": Reason.INVALID_TIME,
}
_OBJECT_TYPES: Final = frozenset({"model_type", "model_attributes_type", "dict_type"})


def encode(message: BaseModel) -> bytes:
    """Encode a payload as compact UTF-8 JSON; absent optional fields are left out.

    Raises :class:`EncodeError` when the result exceeds ``limits.MAX_PAYLOAD_BYTES``;
    senders split their batches before that.
    """
    data = message.model_dump_json(exclude_none=True).encode()
    if len(data) > limits.MAX_PAYLOAD_BYTES:
        raise EncodeError(
            f"{type(message).__name__} encodes to {len(data)} bytes; "
            f"the limit is {limits.MAX_PAYLOAD_BYTES}"
        )
    return data


def decode(data: bytes | bytearray, payload_type: type[M]) -> M:
    """Decode ``data`` as a ``payload_type`` message or raise :class:`DecodeError`."""
    result: M = _validate(data, _adapter(payload_type), payload_type.__name__)
    return result


@cache
def _adapter(payload_type: type[Message]) -> TypeAdapter[Any]:
    return TypeAdapter(payload_type)


@dataclass(frozen=True)
class Decoded:
    """A payload together with the parsed topic it arrived on."""

    topic: Topic
    payload: Payload


def decode_message(topic: str, data: bytes | bytearray) -> Decoded:
    """Decode a payload received on ``topic``.

    Besides :func:`decode`'s checks, rejects topics that are not SEGS topics
    (``unknown_topic``) and payloads whose gateway or region differs from the
    topic's (``id_mismatch``), so a gateway cannot speak for another one.
    """
    try:
        parsed = parse_topic(topic)
    except TopicError as exc:
        raise DecodeError(Reason.UNKNOWN_TOPIC, str(exc)) from exc
    spec = SPECS[parsed.kind]
    payload: Payload = _validate(data, spec.adapter, parsed.kind.value)
    _check_ids(parsed, payload)
    return Decoded(parsed, payload)


def _check_ids(topic: Topic, payload: Payload) -> None:
    pairs = (("gateway_id", topic.gateway_id), ("region", topic.region))
    for field, expected in pairs:
        if expected is None or (topic.kind == TopicKind.LIVE_ALERT and field == "gateway_id"):
            continue
        actual = getattr(payload, field, None)
        if actual is not None and actual != expected:
            raise DecodeError(
                Reason.ID_MISMATCH,
                f"{field} {actual!r} in the payload differs from {expected!r} in the topic",
            )


def _validate(data: bytes | bytearray, adapter: TypeAdapter[Any], name: str) -> Any:
    if len(data) > limits.MAX_PAYLOAD_BYTES:
        raise DecodeError(
            Reason.TOO_LARGE,
            f"payload is {len(data)} bytes; the limit is {limits.MAX_PAYLOAD_BYTES}",
        )
    try:
        result = adapter.validate_json(data, strict=True)
    except ValidationError as exc:
        raise _explain(data, exc.errors(include_url=False), name) from None
    if "v" not in result.model_fields_set:
        raise DecodeError(Reason.MISSING_FIELD, f"{name}: v: the protocol version is missing")
    return result


def _explain(data: bytes | bytearray, errors: list[ErrorDetails], name: str) -> DecodeError:
    """Turn pydantic's errors into one DecodeError, most fundamental problem first."""
    for error in errors:
        if error["type"] == "json_invalid":
            return _explain_json(data)
    for error in errors:
        loc = error["loc"]
        if loc and loc[-1] == "v" and len(loc) <= 2 and error["type"] == "literal_error":
            return DecodeError(
                Reason.UNSUPPORTED_VERSION,
                f"{name}: v={error.get('input')!r}; this build speaks v={limits.PROTOCOL_VERSION}",
            )
    first = errors[0]
    reason = _reason(first)
    where = ".".join(str(part) for part in first["loc"]) or "payload"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return DecodeError(reason, f"{name}: {where}: {first['msg']}{more}")


def _reason(error: ErrorDetails) -> Reason:
    kind = error["type"]
    if kind in _OBJECT_TYPES:
        return Reason.NOT_AN_OBJECT if not error["loc"] else Reason.WRONG_TYPE
    try:
        return Reason(kind)  # our own PydanticCustomError codes
    except ValueError:
        pass
    if kind in _TYPE_REASONS:
        return _TYPE_REASONS[kind]
    if kind.endswith(("_type", "_parsing")) or kind.startswith("int_from"):
        return Reason.WRONG_TYPE
    return Reason.INVALID_VALUE


def _explain_json(data: bytes | bytearray) -> DecodeError:
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        return DecodeError(
            Reason.NOT_UTF8, f"payload is not UTF-8: {exc.reason} at byte {exc.start}"
        )

    def _reject_constant(token: str) -> Any:
        raise DecodeError(Reason.NOT_FINITE, f"payload contains {token}, which JSON does not allow")

    try:
        json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        return DecodeError(Reason.MALFORMED_JSON, f"payload is not JSON: {exc}")
    except RecursionError:
        return DecodeError(Reason.MALFORMED_JSON, "payload nests too deeply")
    except DecodeError as exc:
        return exc
    return DecodeError(Reason.MALFORMED_JSON, "payload is not JSON")
