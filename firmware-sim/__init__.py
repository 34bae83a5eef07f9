"""Simulated SDM630, SDM120 and SunSpec meters served over Modbus TCP and RTU.

Modules, one concern each:

- ``config``: frozen, validated settings (TOML file or quick-start arguments);
- ``physics``: the numpy fleet model (load, PV, voltage, frequency, energy counters);
- ``registers``: register images per profile, rebuilt from the physics each update;
- ``faults``: fault kinds (pydantic) and the table of active faults;
- ``modbus``: TCP and RTU servers, one per bus, answering many unit ids;
- ``control``: the HTTP control API (FastAPI);
- ``state``: the state file that keeps energy counters across restarts;
- ``app``: :class:`~segs.sim.app.Simulator`, the owner that runs all of it;
- ``cli``: ``segs sim``.

See ``docs/simulator.md``.
"""
