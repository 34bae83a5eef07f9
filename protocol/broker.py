"""Broker addresses: the ``mqtt://`` / ``mqtts://`` URLs edge and hub are configured with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

DEFAULT_PORTS: Final = {"mqtt": 1883, "mqtts": 8883}
"""The broker port each scheme implies when the URL names none."""


@dataclass(frozen=True)
class BrokerAddress:
    """Where a broker listens, and whether to speak TLS to it."""

    host: str
    port: int
    tls: bool


def check_broker_url(url: str, *, credentials_hint: str = "username and password") -> str:
    """Return ``url`` when it is ``mqtt[s]://host[:port]``; raise ValueError saying what is wrong.

    Credentials in the URL are refused (they would end up in logs);
    ``credentials_hint`` names the settings that carry them instead.
    """
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError(f"must start with mqtt:// or mqtts://, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"has no host: {url!r}")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port lazily
    except ValueError:
        raise ValueError(f"has an invalid port: {url!r}") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"must be just mqtt[s]://host[:port], got {url!r}")
    if parts.username or parts.password:
        raise ValueError(f"must not carry credentials; use {credentials_hint}")
    return url


def broker_address(url: str) -> BrokerAddress:
    """Host, port (1883 / 8883 unless the URL names one) and TLS of a checked broker URL."""
    parts = urlsplit(check_broker_url(url))
    return BrokerAddress(
        host=parts.hostname or "",
        port=parts.port or DEFAULT_PORTS[parts.scheme],
        tls=parts.scheme == "mqtts",
    )
