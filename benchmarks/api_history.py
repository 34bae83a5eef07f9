"""Hub API: a customer's 30-day history over HTTP, against a bare FastAPI endpoint.

    .venv/bin/python benchmarks/api_history.py
    .venv/bin/python benchmarks/api_history.py --meters 100 --days 30 --seconds 20 \\
        --concurrency 8 1 --write docs/benchmarks.md
    .venv/bin/python benchmarks/api_history.py --keep             # keep the loaded database
    .venv/bin/python benchmarks/api_history.py --database NAME    # reuse it (no load)
    .venv/bin/python benchmarks/api_history.py --profile          # and profile the app after

What runs (all on this machine):

- a fresh PostgreSQL database on ``SEGS_TEST_DATABASE_URL``'s server (default
  ``postgres@127.0.0.1:5432``), migrated, with 4 regions, ``--meters`` meters on
  gateways of 10, and ``--days`` whole UTC days of 1-minute windows per meter,
  ending at today's UTC midnight. The windows go in through the ingest store
  (:func:`segs.hub.store.open_store` and ``commit``, batches of 2,000 windows,
  commits of 20,000), as ingest writes them, so the 15-minute and daily rollups
  and the regional load are the production ones. Windows are built with
  ``model_copy`` from one validated window (the values are ours; validating
  4.3 M of them would double the load time);
- a customer linked to one meter, created with ``segs hub create-user``;
- the app as ``python -m segs hub run --only api`` (production mode, one process,
  uvicorn as :class:`segs.hub.api.ApiServer` configures it);
- a bare FastAPI app with one ``async`` endpoint returning a small dict, in a
  process of its own, served by uvicorn with the same ``Config`` (one process,
  the hub's GIL switch interval and ``gc.freeze()``; uvicorn binds the socket).

The client signs in over HTTP, checks the history (``--days`` daily points, each
with energy), then drives both servers from this process: ``--concurrency``
keep-alive connections, each sending the next request when the previous answer
is read (HTTP/1.1 written and parsed by hand over asyncio streams, so the client
costs little next to the servers on a 2-core machine), for ``--seconds`` per
target and concurrency, in ``--rounds`` alternating slices after a warm-up.
Reported per target: requests/s, latency p50/p95/p99, errors (status or body
length unlike the first answer), and the server's CPU (the app's PostgreSQL
backends counted apart). The figure of merit is the app's requests/s over the
bare endpoint's. Targets: p99 ≤ 50 ms, ratio ≥ 0.3.

``--profile`` then serves the app once more under a cProfile of every thread
(CPU time), drives it, and prints the top functions and the SQL statements a
request runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import json
import os
import pstats
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import httpx
import psycopg
from sqlalchemy import insert

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import _bench  # noqa: E402 - benchmarks/ is on the path as the script's folder
from services import (  # noqa: E402 - tests/ is on the path only now
    PostgresDatabase,
    admin_url_from_env,
    create_database,
    drop_database,
)

from segs.hub.db import Gateway, Meter, Region  # noqa: E402
from segs.hub.db.engine import make_engine  # noqa: E402
from segs.hub.db.migrate import migrate  # noqa: E402
from segs.hub.store import Incoming, StoreOptions, open_store  # noqa: E402
from segs.protocol import TopicKind, Window, WindowBatch, gateway_topic, limits  # noqa: E402

REGIONS: Final = 4
METERS_PER_GATEWAY: Final = 10
COMMIT_WINDOWS: Final = 20_000
EMAIL: Final = "customer@example.com"
PASSWORD: Final = "history-reader-pass-phrase"  # noqa: S105 - a throwaway benchmark account
HISTORY: Final = "/api/v1/telemetry/my/history"
BARE: Final = "/bare"
BEGIN, END = "<!-- api_history:begin -->", "<!-- api_history:end -->"


# -- the database -------------------------------------------------------------------------------


def gateway_id(g: int) -> str:
    return f"gw-api-{g:03d}"


def meter_id(g: int, m: int) -> str:
    return f"MTR-API-{g:03d}-{m:02d}"


def register(url: str, meters: int) -> list[tuple[str, list[str]]]:
    """Regions, gateways and meters as an admin registers them; the gateways and their meters."""
    gateways = [
        (gateway_id(g), [meter_id(g, m) for m in range(min(METERS_PER_GATEWAY, meters - start))])
        for g, start in enumerate(range(0, meters, METERS_PER_GATEWAY))
    ]
    now = datetime.now(UTC)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            insert(Region),
            [
                {
                    "name": f"region-{r}",
                    "timezone": "UTC",
                    "capacity_kw": 10_000.0,
                    "currency": "EUR",
                    "created_at": now,
                }
                for r in range(REGIONS)
            ],
        )
        conn.execute(
            insert(Gateway),
            [
                {
                    "gateway_id": gw,
                    "region": f"region-{g % REGIONS}",
                    "online": True,
                    "highest_seq": 0,
                    "ingest_version": 0,
                    "auto_registered": False,
                    "registered_at": now,
                }
                for g, (gw, _) in enumerate(gateways)
            ],
        )
        conn.execute(
            insert(Meter),
            [
                {
                    "meter_id": m,
                    "gateway_id": gw,
                    "region": f"region-{g % REGIONS}",
                    "status": "active",
                    "auto_registered": False,
                    "registered_at": now,
                }
                for g, (gw, ids) in enumerate(gateways)
                for m in ids
            ],
        )
    engine.dispose()
    return gateways


def power_kw(meter: str) -> float:
    """A constant power per meter, 0.5 to 9.5 kW."""
    return 0.5 + (sum(meter.encode()) % 37) * 0.25


BATCH_MINUTES: Final = limits.MAX_WINDOWS_PER_BATCH // METERS_PER_GATEWAY
"""Minutes per batch: a gateway's batch holds its 10 meters' windows of 200 minutes."""


def _build(
    gateways: list[tuple[str, list[str]]],
    first: datetime,
    *,
    start: int,
    count: int,
    seq: int,
    proto: Window,
) -> list[Incoming]:
    """One commit: the batches of every gateway over ``count`` minutes from minute ``start``."""
    now = datetime.now(UTC)
    messages = []
    for gw, meters in gateways:
        for offset in range(start, start + count, BATCH_MINUTES):
            windows: list[Window] = []
            for meter in meters:
                kw = power_kw(meter)
                delta = kw / 60.0
                shape = {
                    "meter_id": meter,
                    "import_delta_kwh": delta,
                    "power_min_kw": kw - 0.2,
                    "power_avg_kw": kw,
                    "power_max_kw": kw + 0.2,
                    "current_avg_a": round(kw * 1000 / 230.0, 3),
                }
                windows.extend(
                    proto.model_copy(
                        update=shape
                        | {
                            "window_start": first + timedelta(minutes=k),
                            "import_kwh": 1000.0 + delta * (k + 1),
                        }
                    )
                    for k in range(offset, min(offset + BATCH_MINUTES, start + count))
                )
            batch = WindowBatch(
                gateway_id=gw, seq=seq, sent_at=now, historical=True, windows=tuple(windows)
            )
            messages.append(Incoming(gateway_topic(gw, TopicKind.WINDOWS), b"", batch, now))
            seq += 1
    return messages


def load(url: str, gateways: list[tuple[str, list[str]]], first: datetime, days: int) -> float:
    """Store every window through the ingest store; the seconds it took."""
    minutes = days * 1440
    proto = Window.model_validate(
        {
            "meter_id": "MTR-PROTO",
            "window_start": first,
            "window_seconds": 60,
            "import_kwh": 1000.0,
            "export_kwh": 0.0,
            "import_delta_kwh": 0.0,
            "export_delta_kwh": 0.0,
            "power_min_kw": 0.0,
            "power_avg_kw": 0.0,
            "power_max_kw": 0.0,
            "voltage_avg_v": 230.0,
            "current_avg_a": 0.0,
            "power_factor_avg": 0.97,
            "frequency_avg_hz": 50.0,
            "samples_got": 60,
            "samples_expected": 60,
            "quality": (),
        }
    )
    meters = sum(len(ids) for _, ids in gateways)
    expected = meters * minutes
    # Each commit holds about COMMIT_WINDOWS windows: whole batches of every gateway.
    span = max(1, COMMIT_WINDOWS // meters // BATCH_MINUTES) * BATCH_MINUTES
    chunks = [(start, min(span, minutes - start)) for start in range(0, minutes, span)]
    seq_step = len(gateways) * -(-span // BATCH_MINUTES)  # seqs only have to increase
    stored = 0
    started = time.perf_counter()
    store = open_store(url, options=StoreOptions())
    # The next commit's batches are built while the database works on this one.
    with store, ThreadPoolExecutor(1) as builder:

        def submit(i: int) -> Future[list[Incoming]]:
            start, count = chunks[i]
            return builder.submit(
                _build,
                gateways,
                first,
                start=start,
                count=count,
                seq=1 + i * seq_step,
                proto=proto,
            )

        pending = submit(0)
        for i in range(len(chunks)):
            messages = pending.result()
            if i + 1 < len(chunks):
                pending = submit(i + 1)
            stored += store.commit(messages).windows_stored
            if i % 25 == 0 or i + 1 == len(chunks):
                elapsed = time.perf_counter() - started
                print(
                    f"  stored {stored:,} of {expected:,} windows "
                    f"({stored / elapsed:,.0f} windows/s)",
                    flush=True,
                )
    if stored != expected:
        raise RuntimeError(f"stored {stored} windows, expected {expected}")
    return time.perf_counter() - started


def create_customer(url: str, env: dict[str, str], meter: str) -> None:
    """A customer linked to ``meter``, created as an operator would: ``segs hub create-user``."""
    subprocess.run(
        [sys.executable, "-m", "segs", "hub", "create-user", "--email", EMAIL,
         "--password", PASSWORD, "--meter", meter],
        env=env | {"SEGS_DATABASE_URL": url},
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


# -- the servers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _hub_process_settings() -> None:
    """What ``segs hub run`` does to its process before serving (for the bare server)."""
    from segs.hub.app import GIL_SWITCH_INTERVAL_S  # noqa: PLC0415

    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    gc.collect()
    gc.freeze()


def serve_bare(port: int) -> None:
    """The bare app, served by uvicorn with :class:`segs.hub.api.ApiServer`'s ``Config``."""
    import uvicorn  # noqa: PLC0415 - only the server process needs it
    from fastapi import FastAPI  # noqa: PLC0415

    app = FastAPI()

    @app.get(BARE)
    async def bare() -> dict[str, Any]:
        return {"status": "ok", "service": "bare", "value": 42}

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        proxy_headers=True,
    )
    _hub_process_settings()
    asyncio.run(uvicorn.Server(config).serve())


def serve_app(profile: Path) -> None:
    """``segs hub run --only api`` in this process under a CPU-time cProfile per thread
    (route handlers run in worker threads), written to ``profile`` when the hub stops,
    with the SQL statements it ran next to it (``.sql.json``)."""
    from sqlalchemy import Engine, event  # noqa: PLC0415

    from segs.cli import main as segs_main  # noqa: PLC0415

    statements: dict[str, int] = {}

    def count(*args: Any) -> None:
        sql = " ".join(str(args[2]).split())
        statements[sql[:120]] = statements.get(sql[:120], 0) + 1

    event.listen(Engine, "before_cursor_execute", count)
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_thread_profile(*_: object) -> None:
        sys.setprofile(None)
        thread_profile = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append(thread_profile)
        thread_profile.enable()

    threading.setprofile(start_thread_profile)
    main_profile = cProfile.Profile(time.thread_time)
    main_profile.enable()
    try:
        segs_main(["hub", "run", "--only", "api"])
    finally:
        main_profile.disable()
        threading.setprofile(None)
        stats = pstats.Stats(main_profile)
        with lock:
            for thread_profile in profiles:
                thread_profile.create_stats()
                stats.add(thread_profile)
        stats.dump_stats(profile)
        profile.with_suffix(".sql.json").write_text(json.dumps(statements, indent=2))


@dataclass
class Server:
    """A server process, the request it gets, and the length of its answer."""

    name: str
    process: subprocess.Popen[str]
    port: int
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    length: int = 0
    database: PostgresDatabase | None = None
    """The app's database, whose backends' CPU and sessions are counted."""

    def url(self, path: str | None = None) -> str:
        return f"http://127.0.0.1:{self.port}{path or self.path}"


def start_server(
    name: str, command: list[str], env: dict[str, str], port: int, log: Path
) -> Server:
    with log.open("w") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, text=True, cwd=ROOT
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return Server(name, process, port)
        except OSError:
            time.sleep(0.1)
    _bench.stop(process)
    raise RuntimeError(f"{name} did not listen on {port}:\n{log.read_text()}")


def app_env(url: str, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "SEGS_DATABASE_URL": url,
        "SEGS_MODE": "production",
        "SEGS_JWT_SECRET": secrets.token_urlsafe(48),
        "SEGS_API_HOST": "127.0.0.1",
        "SEGS_API_PORT": str(port),
        "SEGS_LOG_LEVEL": "warning",
    }


def sign_in(server: Server) -> str:
    response = httpx.post(
        server.url("/api/v1/auth/login"), json={"email": EMAIL, "password": PASSWORD}, timeout=30
    )
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


def check_history(server: Server, days: int) -> dict[str, Any]:
    """The history answer: a point per day (per quarter hour or minute for ranges too short
    for daily points to be the finest that fit), each with energy; fails otherwise."""
    response = httpx.get(server.url(), headers=server.headers, timeout=30)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    points = body["points"]
    expected = days * {"1d": 1, "15m": 96, "1m": 1440}[body["resolution"]]
    if len(points) != expected or (days > 15 and body["resolution"] != "1d"):
        raise RuntimeError(f"expected {expected} points, got {body['resolution']} x {len(points)}")
    if not all(p["import_kwh"] > 0 and p["samples_got"] > 0 for p in points):
        raise RuntimeError(f"a point without energy: {points}")
    return body


@dataclass(frozen=True)
class Backends:
    """The CPU seconds of a database's backends, and the sessions it has seen."""

    cpu: dict[int, float]
    sessions: int

    @classmethod
    def of(cls, database: PostgresDatabase | None) -> Backends:
        if database is None:
            return cls({}, 0)
        with psycopg.connect(database.url, autocommit=True) as conn:
            pids = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (database.name,),
            ).fetchall()
            row = conn.execute(
                "SELECT sessions FROM pg_stat_database WHERE datname = %s", (database.name,)
            ).fetchone()
        cpu = {}
        for (pid,) in pids:
            with contextlib.suppress(FileNotFoundError):  # a backend that just closed
                cpu[int(pid)] = _bench.cpu_seconds(int(pid))
        return cls(cpu, int(row[0]) if row else 0)

    def since(self, earlier: Backends) -> tuple[float, int]:
        """CPU seconds the backends alive now used since ``earlier`` (those opened in
        between: all of theirs), and the sessions opened in between."""
        cpu = sum(now - earlier.cpu.get(pid, 0.0) for pid, now in self.cpu.items())
        # pg_stat_database counts our own probe too (and only once it flushes its stats).
        return cpu, max(0, self.sessions - earlier.sessions - 1)


# -- the load -----------------------------------------------------------------------------------


@dataclass
class Tally:
    """What one target answered over the measured slices."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    server_cpu: float = 0.0
    database_cpu: float = 0.0
    sessions: int = 0
    client_cpu: float = 0.0

    def percentile(self, q: float) -> float:
        """The ``q`` quantile of the latencies, ms."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            return int(line[15:])
    raise RuntimeError(f"no content-length in {head!r}")


async def _drive(server: Server, request: bytes, deadline: float, tally: Tally) -> None:
    """One keep-alive connection: the next request as soon as the answer is read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        while (started := time.perf_counter()) < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.readexactly(_content_length(head))
            tally.latencies.append(time.perf_counter() - started)
            if head[9:12] != b"200" or len(body) != server.length:
                tally.errors += 1
    finally:
        writer.close()
        await writer.wait_closed()


def _request(server: Server) -> bytes:
    lines = [f"GET {server.path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
    lines += [f"{name}: {value}" for name, value in server.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def run_slice(server: Server, concurrency: int, seconds: float, tally: Tally) -> None:
    """Drive ``server`` with ``concurrency`` connections for ``seconds``; add to ``tally``."""
    request = _request(server)
    cpu = _bench.cpu_seconds(server.process.pid)
    backends = Backends.of(server.database)
    client = time.process_time()
    started = time.perf_counter()

    async def drive_all() -> None:
        deadline = time.perf_counter() + seconds
        await asyncio.gather(
            *(_drive(server, request, deadline, tally) for _ in range(concurrency))
        )

    asyncio.run(drive_all())
    tally.seconds += time.perf_counter() - started
    tally.client_cpu += time.process_time() - client
    tally.server_cpu += _bench.cpu_seconds(server.process.pid) - cpu
    cpu, sessions = Backends.of(server.database).since(backends)
    tally.database_cpu += cpu
    tally.sessions += sessions


def measure(
    servers: list[Server],
    *,
    concurrency: int,
    seconds: float,
    rounds: int,
) -> dict[str, Tally]:
    """Warm each server up, then alternate ``rounds`` slices of ``seconds / rounds`` each."""
    for server in servers:
        run_slice(server, concurrency, 2.0, Tally())
    tallies = {server.name: Tally() for server in servers}
    for _ in range(rounds):
        for server in servers:
            run_slice(server, concurrency, seconds / rounds, tallies[server.name])
    return tallies


# -- reporting ----------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything a results section needs."""

    command: str
    machine: str
    postgres: str
    meters: int
    days: int
    load_seconds: float | None
    results: dict[int, dict[str, Tally]]


def _cpu(seconds: float, tally: Tally) -> str:
    """CPU as % of one core, and per request."""
    per_request = seconds / len(tally.latencies) * 1000 if tally.latencies else 0.0
    return f"{seconds / tally.seconds * 100:.0f} % ({per_request:.2f} ms)"


def _row(name: str, concurrency: int, tally: Tally) -> str:
    database = "-" if name == "bare" else _cpu(tally.database_cpu, tally)
    return (
        f"| {LABELS[name]} | {concurrency} | **{tally.rate:,.0f}** | "
        f"{tally.percentile(0.50):.1f} | {tally.percentile(0.95):.1f} | "
        f"**{tally.percentile(0.99):.1f}** | {tally.errors} | "
        f"{_cpu(tally.server_cpu, tally)} | {database} |"
    )


def section(run: Run) -> str:
    """The marked block of docs/benchmarks.md."""
    windows = run.meters * run.days * 1440
    if run.load_seconds is None:
        loaded = "in a database loaded by an earlier run (`--database`)"
    else:
        loaded = (
            f"loaded through the ingest store in {run.load_seconds:.0f} s "
            f"({windows / run.load_seconds:,.0f} windows/s)"
        )
    today = datetime.now(UTC).date().isoformat()
    lines = [
        BEGIN,
        (
            f"Measured {today} with `{run.command}`: {run.meters} meters x "
            f"{run.days} days x 1,440 = {windows:,} windows, {loaded}."
        ),
        "",
        f"{run.machine.removesuffix('.')}, {run.postgres} (default configuration).",
        "",
        (
            "| target | connections | requests/s | p50 (ms) | p95 (ms) | p99 (ms) | errors "
            "| server CPU: of one core (per request) | its PostgreSQL backends' CPU |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for concurrency, tallies in run.results.items():
        lines += [_row(name, concurrency, tally) for name, tally in tallies.items()]
    lines.append("")
    if all({"app", "bare"} <= set(tallies) for tallies in run.results.values()):
        ratios = [
            (concurrency, tallies["app"].rate / tallies["bare"].rate)
            for concurrency, tallies in run.results.items()
        ]
        p99s = [
            (concurrency, tallies["app"].percentile(0.99))
            for concurrency, tallies in run.results.items()
        ]
        met = {True: "met", False: "**missed**"}

        def at(c: int) -> str:
            return f"at {c} connection{'' if c == 1 else 's'}"

        lines += [
            "- The app's requests/s over the bare endpoint's: "
            + ", ".join(f"**{ratio:.3f}** {at(c)}" for c, ratio in ratios)
            + ".",
            "- p99 ≤ 50 ms: "
            + ", ".join(f"{met[p99 <= 50]} {at(c)} ({p99:.1f} ms)" for c, p99 in p99s)
            + ".",
            "- Ratio ≥ 0.3: "
            + ", ".join(f"{met[ratio >= 0.3]} {at(c)}" for c, ratio in ratios)
            + ".",
        ]
    lines.append(END)
    return "\n".join(lines)


def print_results(run: Run) -> None:
    for concurrency, tallies in run.results.items():
        for name, tally in tallies.items():
            print(
                f"{name:>11} c={concurrency}: {tally.rate:8,.0f} req/s  p50 "
                f"{tally.percentile(0.5):6.2f}  p95 {tally.percentile(0.95):6.2f}  p99 "
                f"{tally.percentile(0.99):6.2f} ms  errors {tally.errors}  server CPU "
                f"{_cpu(tally.server_cpu, tally)}  PostgreSQL CPU "
                f"{_cpu(tally.database_cpu, tally)}  sessions opened ~{tally.sessions}  client CPU "
                f"{_cpu(tally.client_cpu, tally)}  "
                f"({len(tally.latencies):,} requests in {tally.seconds:.1f} s)"
            )
            if name != "bare" and "bare" in tallies:
                print(f"{'':>11} ratio {tally.rate / tallies['bare'].rate:.3f}")


def profile_app(database: PostgresDatabase, args: argparse.Namespace, work: Path) -> None:
    """Serve the app under a CPU-time cProfile, drive it, and print where its CPU goes and
    the SQL statements a request runs."""
    out = work / "app.prof"
    port = free_port()
    server = start_server(
        "app-profiled",
        [sys.executable, __file__, "--serve-profiled", str(out)],
        app_env(database.sqlalchemy_url, port),
        port,
        work / "app-profiled.log",
    )
    try:
        server.headers = {"Authorization": f"Bearer {sign_in(server)}"}
        server.path = history_path(args.days)
        server.length = len(httpx.get(server.url(), headers=server.headers, timeout=30).content)
        warm, tally = Tally(), Tally()
        run_slice(server, args.concurrency[0], 2.0, warm)
        run_slice(server, args.concurrency[0], args.profile_seconds, tally)
        print(
            f"profiled app: {len(tally.latencies):,} requests, {tally.rate:,.0f} req/s under "
            f"cProfile, {tally.server_cpu / len(tally.latencies) * 1000:.2f} ms of CPU each "
            f"({tally.errors} errors)"
        )
    finally:
        _bench.stop(server.process)
    stats = pstats.Stats(str(out))
    stats.sort_stats("tottime").print_stats(40)
    stats.sort_stats("cumulative").print_stats(60)
    print(f"profile written to {out}")
    # Every history request since the sign-in (which ran the statements counted once below).
    requests = len(warm.latencies) + len(tally.latencies) + 1
    statements = json.loads(out.with_suffix(".sql.json").read_text())
    print(f"SQL statements per history request ({requests} requests; pool pre-pings not counted):")
    for sql, n in sorted(statements.items(), key=lambda item: -item[1]):
        print(f"  {n / requests:5.2f}  {sql}")


def history_path(days: int) -> str:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first = today - timedelta(days=days)
    return f"{HISTORY}?{urlencode({'from': first.isoformat(), 'to': today.isoformat()})}"


# -- main ---------------------------------------------------------------------------------------


def prepare_database(args: argparse.Namespace) -> tuple[PostgresDatabase, float | None]:
    """The database to read: a new one, loaded (and the seconds that took), or ``--database``."""
    admin = admin_url_from_env()
    if args.database:
        url = admin.rsplit("/", 1)[0] + "/" + args.database
        return PostgresDatabase(name=args.database, url=url, admin_url=admin), None
    database = create_database(admin, prefix="segs_bench_api_")
    try:
        url = database.sqlalchemy_url
        migrate(url)
        gateways = register(url, args.meters)
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        print(
            f"loading {args.meters} meters x {args.days} days x 1,440 = "
            f"{args.meters * args.days * 1440:,} windows through the ingest store"
        )
        seconds = load(url, gateways, today - timedelta(days=args.days), args.days)
        print(f"loaded in {seconds:.0f} s")
        create_customer(url, dict(os.environ), meter_id(0, 0))
        # What autovacuum does after a bulk load, before the reads are measured.
        with psycopg.connect(database.url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
    except BaseException:
        if not args.keep:
            drop_database(database)
        raise
    return database, seconds


LABELS: Final = {
    "app": "`GET /api/v1/telemetry/my/history`, 30 days (`segs hub run --only api`)",
    "bare": "bare FastAPI endpoint",
}
"""The targets, as the results table names them."""


def start_servers(
    database: PostgresDatabase, targets: list[str], days: int, work: Path
) -> list[Server]:
    """The targets, signed in where they need it (history checked), ready to be driven."""
    url = database.sqlalchemy_url
    servers: list[Server] = []
    try:
        for name in targets:
            port = free_port()
            if name == "bare":
                command = [sys.executable, __file__, "--serve-bare", str(port)]
                env = dict(os.environ)
            else:
                command = [sys.executable, "-m", "segs", "hub", "run", "--only", "api"]
                env = app_env(url, port)
            server = start_server(name, command, env, port, work / f"{name}.log")
            servers.append(server)
            if name == "bare":
                server.path = BARE
            else:
                server.headers = {"Authorization": f"Bearer {sign_in(server)}"}
                server.path = history_path(days)
                server.database = database
                body = check_history(server, days)
                print(
                    f"{name}: history of {len(body['points'])} points at {body['resolution']}, "
                    f"{sum(p['import_kwh'] for p in body['points']):,.1f} kWh imported"
                )
            server.length = len(httpx.get(server.url(), headers=server.headers, timeout=30).content)
    except BaseException:
        for server in servers:
            _bench.stop(server.process)
        raise
    return servers


def benchmark(servers: list[Server], database: PostgresDatabase, args: argparse.Namespace) -> Run:
    """Measure every server at each concurrency."""
    results = {
        concurrency: measure(
            servers,
            concurrency=concurrency,
            seconds=args.seconds,
            rounds=args.rounds,
        )
        for concurrency in args.concurrency
    }
    with psycopg.connect(database.url, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    return Run(
        command=command_line(args),
        machine=_bench.machine_line(_bench.machine()),
        postgres=f"PostgreSQL {version[0].split()[0] if version else '?'}",
        meters=args.meters,
        days=args.days,
        load_seconds=None,
        results=results,
    )


def command_line(args: argparse.Namespace) -> str:
    """The command as the results block shows it: what shapes the figures, and ``--write``."""
    words = ["python benchmarks/api_history.py", f"--meters {args.meters}", f"--days {args.days}"]
    words += [
        f"--seconds {args.seconds:g}",
        "--concurrency " + " ".join(map(str, args.concurrency)),
    ]
    if args.rounds != 4:
        words.append(f"--rounds {args.rounds}")
    if args.database:
        words.append(f"--database {args.database}")
    if args.write:
        words.append(f"--write {args.write}")
    return " ".join(words)


def as_json(run: Run) -> str:
    return json.dumps(
        {
            str(concurrency): {
                name: {
                    "requests_per_s": tally.rate,
                    "p50_ms": tally.percentile(0.5),
                    "p95_ms": tally.percentile(0.95),
                    "p99_ms": tally.percentile(0.99),
                    "errors": tally.errors,
                    "server_cpu_s": tally.server_cpu,
                    "database_cpu_s": tally.database_cpu,
                    "database_sessions": tally.sessions,
                    "client_cpu_s": tally.client_cpu,
                    "seconds": tally.seconds,
                }
                for name, tally in tallies.items()
            }
            for concurrency, tallies in run.results.items()
        },
        indent=2,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=100)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=20, help="per target and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 1])
    parser.add_argument("--rounds", type=int, default=4, help="alternating slices per target")
    parser.add_argument("--keep", action="store_true", help="keep the database (see --database)")
    parser.add_argument("--database", help="reuse this database, loaded by a --keep run")
    parser.add_argument("--profile", action="store_true", help="then profile the app")
    parser.add_argument("--profile-seconds", type=float, default=10)
    parser.add_argument("--write", type=Path, help="replace the results block in this file")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--targets", nargs="+", choices=list(LABELS), default=list(LABELS), help="what to drive"
    )
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-profiled", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare is not None:
        serve_bare(args.serve_bare)
        return 0
    if args.serve_profiled is not None:
        serve_app(args.serve_profiled)
        return 0

    print(_bench.machine_line(_bench.machine()))
    database, load_seconds = prepare_database(args)
    print(f"database: {database.name}")
    work = Path(tempfile.mkdtemp(prefix="segs-bench-api-"))
    try:
        servers = start_servers(database, args.targets, args.days, work)
        try:
            run = benchmark(servers, database, args)
        finally:
            for server in servers:
                _bench.stop(server.process)
        run.load_seconds = load_seconds
        print_results(run)
        if args.write:
            _bench.write_section(args.write, section(run), begin=BEGIN, end=END)
            print(f"wrote {args.write}")
        if args.json:
            args.json.write_text(as_json(run))
        if args.profile:
            profile_app(database, args, work)
    finally:
        if args.keep or args.database:
            print(f"kept database {database.name} (reuse it with --database {database.name})")
        else:
            drop_database(database)
    print(f"server logs in {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
