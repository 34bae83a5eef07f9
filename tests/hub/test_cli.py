"""``segs hub``: migrate, run (refusing an unmigrated database), retention; the app's shutdown."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hubkit import SimMeter, incoming, scalar, window_batch
from services import MosquittoBroker, free_port

from segs.cli import main
from segs.hub.app import run as run_hub
from segs.hub.db.migrate import head_revision, migrate
from segs.hub.exceptions import SchemaNotCurrentError
from segs.hub.settings import HubSettings
from segs.hub.store import open_store


def test_segs_lists_the_hub_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "hub" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["hub", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(action in out for action in ("migrate", "run", "retention"))


def test_migrate_then_run_refuses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("SEGS_DATABASE_URL", url)
    monkeypatch.setenv("SEGS_LOG_LEVEL", "warning")
    assert main(["hub", "run", "--only", "ingest"]) == 2
    assert "run `segs hub migrate`" in capsys.readouterr().err
    assert main(["hub", "migrate"]) == 0
    assert f"database at revision {head_revision()}" in capsys.readouterr().out
    assert main(["hub", "migrate"]) == 0


def test_invalid_settings_exit_2_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SEGS_MQTT_URL", "http://nope")
    assert main(["hub", "migrate"]) == 2
    assert "mqtt_url: must start with mqtt://" in capsys.readouterr().err


def test_retention_command_deletes_old_windows_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'ret.db'}"
    migrate(url)
    with open_store(url) as store:
        store.commit([incoming(window_batch("gw-1", 1, SimMeter("MTR-1").windows(range(3))))])
    monkeypatch.setenv("SEGS_DATABASE_URL", url)
    assert main(["hub", "retention", "--older-than-days", "1"]) == 0
    assert "deleted 3 minute windows" in capsys.readouterr().out
    with open_store(url) as store:
        assert scalar(store.engine, "SELECT count(*) FROM meter_windows") == 0
        assert scalar(store.engine, "SELECT sum(windows) FROM meter_rollups_15m") == 3


async def test_the_app_runs_its_components_and_stops_cleanly(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    port = free_port()
    settings = HubSettings(
        database_url=url, mqtt_url=mosquitto.url, retention_interval_s=0.1, api_port=port
    )
    with pytest.raises(SchemaNotCurrentError):
        await run_hub(settings, handle_signals=False)
    migrate(url)
    with pytest.raises(ValueError, match="unknown components"):
        await run_hub(settings, only=["billing-later"], handle_signals=False)
    stop = asyncio.Event()
    task = asyncio.create_task(run_hub(settings, stop=stop, handle_signals=False))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for _ in range(100):
            try:
                response = await client.get("/health")
                break
            except httpx.TransportError:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("the API never answered")
        metrics = await client.get("/metrics")
    assert response.status_code == 200
    assert response.json()["database"]["ok"] is True
    assert response.json()["broker"]["ok"] is True
    # The API exports the counters of the ingest component it runs beside.
    assert "segs_ingest_connects_total" in metrics.text
    assert "segs_ingest_windows_stored_total" in metrics.text
    assert not task.done()
    stop.set()
    async with asyncio.timeout(10):
        assert await task == 0
