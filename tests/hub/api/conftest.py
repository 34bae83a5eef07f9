"""Fixtures for the API tests: an app on a migrated database, signed-in users of every role.

``api`` -> ``apikit.Api``
    A FastAPI ``TestClient`` on the hub app over ``database_url`` (both backends),
    with a settable clock that starts at the real current time.
``make_api`` -> ``(**settings) -> apikit.Api``
    The same with settings of the test's choosing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from apikit import Api, MakeApi, open_api


@pytest.fixture
def make_api(database_url: str) -> Iterator[MakeApi]:
    """Open API test clients on ``database_url``; all are closed after the test."""
    opened: list[Api] = []

    def make(**settings: Any) -> Api:
        api = open_api(database_url, **settings)
        opened.append(api)
        return api

    yield make
    for api in opened:
        api.close()


@pytest.fixture
def api(make_api: MakeApi) -> Api:
    """An API client with the default (demo-mode) settings."""
    return make_api()
