"""Broker URLs, as both the edge and the hub are configured with them."""

from __future__ import annotations

import pytest

from segs.protocol.broker import BrokerAddress, broker_address, check_broker_url


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("mqtt://127.0.0.1", BrokerAddress("127.0.0.1", 1883, tls=False)),
        ("mqtts://broker.example.net", BrokerAddress("broker.example.net", 8883, tls=True)),
        ("mqtt://localhost:11883/", BrokerAddress("localhost", 11883, tls=False)),
    ],
)
def test_a_broker_url_gives_host_port_and_tls(url: str, address: BrokerAddress) -> None:
    assert broker_address(url) == address


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("tcp://127.0.0.1:1883", "must start with mqtt:// or mqtts://"),
        ("mqtt://", "has no host"),
        ("mqtt://host:99999", "invalid port"),
        ("mqtt://host/segs", "must be just mqtt[s]://host[:port]"),
        ("mqtt://gw:secret@host", "must not carry credentials; use the password file"),
    ],
)
def test_a_bad_broker_url_says_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        check_broker_url(url, credentials_hint="the password file")
