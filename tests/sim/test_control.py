"""The control API over real HTTP: the truth, statistics, and bad requests rejected with 4xx."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from simtools import modbus_client, read_profile

from segs.protocol.profiles import load_profile
from segs.sim.app import Simulator


def _api(sim: Simulator) -> httpx.AsyncClient:
    assert sim.control is not None
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{sim.control.port}", timeout=5.0)


async def test_the_truth_of_every_meter_matches_the_wire(
    make_sim: Callable[..., Simulator],
) -> None:
    async with make_sim(3) as sim, _api(sim) as api, modbus_client(sim.bus_port("bus-1")) as c:
        response = await api.get("/meters")
        assert response.status_code == 200
        meters = response.json()
        assert [m["meter_id"] for m in meters] == ["MTR-00000001", "MTR-00000002", "MTR-00000003"]
        assert [m["profile"] for m in meters] == ["sdm630", "sdm120", "sunspec203"]
        one = (await api.get("/meters/MTR-00000002")).json()
        assert one["unit_id"] == 2
        assert one["bus"] == "bus-1"
        assert one["phases"] == 1
        assert one["time"] == "2024-06-21T12:00:00Z"
        assert "voltage_l2" not in one["values"]  # a single-phase meter has L1 only
        for name in (
            "voltage_l1",
            "current_l1",
            "power_l1",
            "power_factor_l1",
            "frequency",
            "import_energy",
            "export_energy",
        ):
            assert isinstance(one["values"][name], float)
        wire = await read_profile(c, load_profile("sdm120"), 2)
        # The registers hold the float32 of the very number the API reports.
        assert wire["power_l1"] == pytest.approx(one["values"]["power_l1"], rel=1e-7)
        three = (await api.get("/meters/MTR-00000001")).json()["values"]
        assert {"voltage_l3", "power_total", "current_neutral"} <= set(three)


async def test_stats_report_the_update_loop_and_the_buses(
    make_sim: Callable[..., Simulator],
) -> None:
    async with make_sim(3) as sim, _api(sim) as api:
        sim.update()
        stats = (await api.get("/stats")).json()
    assert stats["meters"] == 3
    assert stats["update"]["steps"] == 2
    assert 0 < stats["update"]["last_seconds"] < 1
    assert stats["update"]["total_cpu_seconds"] > 0
    assert stats["buses"][0]["id"] == "bus-1"
    assert stats["buses"][0]["meters"] == 3


async def test_bad_requests_are_rejected_and_the_simulator_keeps_running(
    make_sim: Callable[..., Simulator],
) -> None:
    async with make_sim(3) as sim, _api(sim) as api, modbus_client(sim.bus_port("bus-1")) as c:
        cases: list[tuple[str, str, dict[str, object], int, str]] = [
            ("GET", "/meters/MTR-99999999", {}, 404, "MTR-99999999"),
            (
                "POST",
                "/meters/MTR-99999999/faults",
                {"json": {"kind": "offline"}},
                404,
                "no simulated",
            ),
            ("DELETE", "/meters/nobody/faults", {}, 404, "nobody"),
            (
                "POST",
                "/meters/MTR-00000001/faults",
                {"json": {"kind": "meltdown"}},
                422,
                "meltdown",
            ),
            ("POST", "/meters/MTR-00000001/faults", {"json": {"kind": "slow"}}, 422, "delay_ms"),
            (
                "POST",
                "/meters/MTR-00000001/faults",
                {"json": {"kind": "spike", "factor": -2}},
                422,
                "factor",
            ),
            (
                "POST",
                "/meters/MTR-00000001/faults",
                {"json": {"kind": "exception", "code": 99}},
                422,
                "code must be one of",
            ),
            ("POST", "/meters/MTR-00000001/faults", {"json": ["offline"]}, 422, "body"),
            (
                "POST",
                "/meters/MTR-00000001/faults",
                {"content": b"{not json", "headers": {"content-type": "application/json"}},
                422,
                "JSON",
            ),
            ("POST", "/meters/MTR-00000001/faults", {}, 422, "body"),
            ("DELETE", "/meters/MTR-00000001/faults/meltdown", {}, 422, "kind"),
            ("PUT", "/meters/MTR-00000001", {}, 405, "Method Not Allowed"),
            ("GET", "/no/such/path", {}, 404, "no such path"),
        ]
        for method, path, options, code, fragment in cases:
            response = await api.request(method, path, **options)
            assert response.status_code == code, (method, path, response.text)
            body = response.json()
            assert set(body) == {"error", "message"}, body
            assert fragment in body["message"], (path, body)
        assert (await api.get("/meters/MTR-00000001/faults")).json() == []
        assert (await api.get("/health")).json() == {"status": "ok"}
        assert not (await c.read_input_registers(0, count=2, device_id=1)).isError()


async def test_a_fault_is_listed_with_its_parameters_and_times(
    make_sim: Callable[..., Simulator],
) -> None:
    async with make_sim(1) as sim, _api(sim) as api:
        created = await api.post(
            "/meters/MTR-00000001/faults", json={"kind": "slow", "delay_ms": 50, "seconds": 60}
        )
        assert created.status_code == 201
        assert created.json() == {
            "kind": "slow",
            "delay_ms": 50,
            "seconds": 60.0,
            "since": "2024-06-21T12:00:00Z",
            "until": "2024-06-21T12:01:00Z",
        }
        listed = (await api.get("/meters/MTR-00000001/faults")).json()
        assert listed == [created.json()]
        cleared = await api.delete("/meters/MTR-00000001/faults/slow")
        assert cleared.json() == {"cleared": [created.json()]}
        again = await api.delete("/meters/MTR-00000001/faults")
        assert again.json() == {"cleared": []}
