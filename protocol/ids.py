"""Gateway, meter and region ids: the rules every part applies to them.

Ids appear inside MQTT topics, so they may not contain the topic separators and
wildcards (``/ + #``), whitespace or control characters, and may not start with
``$`` (reserved by brokers). Ids are case-sensitive and compared exactly; they
are never normalised.
"""

from __future__ import annotations

import re
from typing import Annotated, Final

from pydantic import AfterValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from segs.protocol.errors import InvalidIdError
from segs.protocol.limits import MAX_ID_LENGTH

ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@~-]*")
"""Allowed ids: ASCII letters, digits and ``. _ : @ ~ -``, starting with a letter or digit."""


def id_problem(value: str) -> str | None:
    """Return why ``value`` is not a valid id, or ``None`` when it is."""
    if not value:
        return "id is empty"
    if len(value) > MAX_ID_LENGTH:
        return f"id is {len(value)} characters long; the limit is {MAX_ID_LENGTH}"
    if ID_PATTERN.fullmatch(value) is None:
        bad = next((c for c in value if ID_PATTERN.fullmatch("a" + c) is None), value[0])
        return (
            f"id {value!r} has the forbidden character {bad!r}; allowed are ASCII letters, "
            "digits and . _ : @ ~ - (starting with a letter or digit)"
        )
    return None


def validate_id(value: str, *, kind: str = "id") -> str:
    """Return ``value`` when it is a valid id; raise :class:`InvalidIdError` naming ``kind``."""
    problem = id_problem(value)
    if problem is not None:
        raise InvalidIdError(f"invalid {kind}: {problem}")
    return value


def _pydantic_id(value: str) -> str:
    problem = id_problem(value)
    if problem is not None:
        raise PydanticCustomError("invalid_id", problem)
    return value


Id = Annotated[
    str,
    AfterValidator(_pydantic_id),
    WithJsonSchema({"type": "string", "format": "id", "maxLength": MAX_ID_LENGTH}),
]
"""A validated id inside a payload model."""
GatewayId = Id
MeterId = Id
RegionId = Id
