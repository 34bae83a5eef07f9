"""Sustained hub ingest: MQTT in, committed rows, acks out — against the raw database limit.

    .venv/bin/python benchmarks/hub_ingest.py                 # PostgreSQL, then SQLite
    .venv/bin/python benchmarks/hub_ingest.py --backends postgresql --seconds 30

What runs (all on this machine):

- a private Mosquitto on a free port (``tests/services.py``);
- the hub as ``python -m segs hub run --only ingest`` on a fresh database
  (PostgreSQL: a new database on ``SEGS_TEST_DATABASE_URL``'s server; SQLite: a
  file), production mode, gateways and meters registered beforehand;
- synthetic gateways in separate processes. Each publishes pre-encoded
  ``windows`` batches (one window per meter and minute, counters continuous)
  with at most ``--inflight`` batches awaiting the hub's ack, like the edge
  agent's ``max_inflight``, and records when each ack arrives.

The hub's rate is the windows acknowledged per second between 10 % and 90 % of
all acks (acks are sent only after the commit). After the run the database
must hold every window exactly once. Then, in the same run, the same rows are
loaded straight into ``meter_windows`` of another fresh database with binary
COPY into a temporary table + ``INSERT ... ON CONFLICT DO NOTHING``, in chunks
of the hub's commit size: the raw database limit. The ratio of the two is the
figure of merit.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from sqlalchemy import insert, text

from segs.hub.db import Gateway, Meter, Region
from segs.hub.db.engine import make_engine
from segs.hub.db.migrate import migrate
from segs.hub.db.types import to_micros
from segs.hub.store.postgres import _COLUMNS, _STAGE_TYPES
from segs.protocol import (
    Ack,
    ConnectionState,
    HubState,
    TopicKind,
    WindowBatch,
    decode,
    decode_message,
    gateway_topic,
    hub_state_topic,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from services import (  # noqa: E402 - tests/ is on the path only now
    MosquittoBroker,
    PostgresDatabase,
    admin_url_from_env,
    create_database,
    drop_database,
)

REGIONS = 4


# -- synthetic traffic --------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the gateways send."""

    gateways: int
    meters: int
    batches: int
    inflight: int
    start: datetime

    @property
    def windows(self) -> int:
        return self.gateways * self.meters * self.batches


def gateway_id(g: int) -> str:
    return f"gw-bench-{g:03d}"


def meter_id(g: int, m: int) -> str:
    return f"MTR-{g:03d}-{m:05d}"


def _format_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def encode_batches(plan: Plan, g: int) -> list[bytes]:
    """Gateway ``g``'s batches, encoded fast from a template (checked against the codec)."""
    gw = gateway_id(g)
    power = [0.5 + (m % 37) * 0.25 for m in range(plan.meters)]
    # %-templates: the JSON's own braces stay literal.
    window_parts = [
        '{"meter_id":"' + meter_id(g, m) + '","window_start":"%s","window_seconds":60,'
        '"import_kwh":%r,"export_kwh":0.0,"import_delta_kwh":%r,"export_delta_kwh":0.0,'
        '"power_min_kw":%r,"power_avg_kw":%r,"power_max_kw":%r,"voltage_avg_v":230.1,'
        '"current_avg_a":%r,"power_factor_avg":0.97,"frequency_avg_hz":50.0,'
        '"samples_got":60,"samples_expected":60,"quality":[]}'
        for m in range(plan.meters)
    ]
    payloads = []
    for k in range(plan.batches):
        stamp = _format_time(plan.start + timedelta(minutes=k))
        windows = []
        for m, template in enumerate(window_parts):
            p = power[m]
            delta = round(p / 60.0, 6)
            windows.append(
                template
                % (
                    stamp,
                    round(1000.0 + delta * (k + 1), 6),
                    delta,
                    round(p - 0.2, 3),
                    p,
                    round(p + 0.2, 3),
                    round(p * 1000 / 230.1, 3),
                )
            )
        sent = _format_time(plan.start + timedelta(minutes=k + 1))
        payloads.append(
            (
                '{"v":1,"gateway_id":"%s","seq":%d,"sent_at":"%s","historical":false,'  # noqa: UP031
                '"windows":[%s]}' % (gw, k + 1, sent, ",".join(windows))
            ).encode()
        )
    return payloads


def gateway_process(
    *,
    host: str,
    port: int,
    plan: Plan,
    indexes: list[int],
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    """One OS process driving several gateways (one paho client and thread each)."""
    payloads = {g: encode_batches(plan, g) for g in indexes}
    ready.put(len(indexes))
    go.wait()
    threads = []
    outcome: dict[int, list[float]] = {}

    def drive(g: int) -> None:
        gw = gateway_id(g)
        window = threading.Semaphore(plan.inflight)
        acked: list[float] = []
        done = threading.Event()
        seen: set[int] = set()

        def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
            ack = decode(message.payload, Ack)
            now = time.monotonic()
            for seq in (*ack.seqs, *ack.rejected):
                if seq not in seen:
                    seen.add(seq)
                    acked.append(now)
                    window.release()
            if len(seen) == plan.batches:
                done.set()

        subscribed = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=gw, protocol=mqtt.MQTTv5)
        client.max_inflight_messages_set(plan.inflight + 2)
        client.on_message = on_message
        client.on_subscribe = lambda *_: subscribed.set()
        client.connect(host, port)
        client.loop_start()
        client.subscribe(gateway_topic(gw, TopicKind.ACK), qos=1)
        subscribed.wait(10)
        topic = gateway_topic(gw, TopicKind.WINDOWS)
        for payload in payloads[g]:
            window.acquire()
            client.publish(topic, payload, qos=1)
        done.wait(600)
        client.loop_stop()
        client.disconnect()
        outcome[g] = acked

    for g in indexes:
        thread = threading.Thread(target=drive, args=(g,))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    results.put(outcome)


# -- database setup -----------------------------------------------------------------------------


def register(url: str, plan: Plan) -> None:
    """Regions, gateways and meters, as an admin would register them."""
    now = datetime.now(UTC)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            insert(Region),
            [
                {
                    "name": f"region-{r}",
                    "timezone": "UTC",
                    "capacity_kw": 50_000.0,
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
                    "gateway_id": gateway_id(g),
                    "region": f"region-{g % REGIONS}",
                    "online": True,
                    "highest_seq": 0,
                    "ingest_version": 0,
                    "auto_registered": False,
                    "registered_at": now,
                }
                for g in range(plan.gateways)
            ],
        )
        conn.execute(
            insert(Meter),
            [
                {
                    "meter_id": meter_id(g, m),
                    "gateway_id": gateway_id(g),
                    "region": f"region-{g % REGIONS}",
                    "status": "active",
                    "auto_registered": False,
                    "registered_at": now,
                }
                for g in range(plan.gateways)
                for m in range(plan.meters)
            ],
        )
    engine.dispose()


def count_windows(url: str) -> tuple[int, int, int]:
    """Rows in meter_windows, and windows counted by the 15-minute and daily rollups."""
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT count(*) FROM meter_windows")).scalar_one()
        quarter = conn.execute(text("SELECT sum(windows) FROM meter_rollups_15m")).scalar_one()
        day = conn.execute(text("SELECT sum(windows) FROM meter_rollups_daily")).scalar_one()
    engine.dispose()
    return int(rows), int(quarter or 0), int(day or 0)


# -- the runs -----------------------------------------------------------------------------------


@dataclass
class HubRun:
    backend: str
    windows: int
    seconds: float
    rate: float
    commit_rows: int
    exact: bool


def wait_online(broker: MosquittoBroker, timeout: float = 30.0) -> None:
    """Block until the hub's retained state says online."""
    online = threading.Event()

    def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        if decode(message.payload, HubState).state is ConnectionState.ONLINE:
            online.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.subscribe(hub_state_topic(), qos=1)
    try:
        if not online.wait(timeout):
            raise RuntimeError("the hub did not come online")
    finally:
        client.loop_stop()
        client.disconnect()


def run_hub(backend: str, url: str, plan: Plan, args: argparse.Namespace, log: Path) -> HubRun:
    """Ingest the plan through a hub process; return its sustained rate."""
    migrate(url)
    register(url, plan)
    ctx = mp.get_context("spawn")
    with MosquittoBroker(Path(tempfile.mkdtemp(prefix="segs-bench-mqtt-"))) as broker:
        env = {
            **os.environ,
            "SEGS_DATABASE_URL": url,
            "SEGS_MQTT_URL": broker.url,
            "SEGS_MODE": "production",
            "SEGS_LOG_LEVEL": args.hub_log_level,
            "SEGS_INGEST_BATCH_MAX_WINDOWS": str(args.commit_windows),
            "SEGS_INGEST_BATCH_MAX_DELAY_S": "0.02",
        }
        hubs = []
        for worker in range(args.workers):
            with log.with_suffix(f".{worker}.log").open("wb") as out:
                hubs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "segs", "hub", "run", "--only", "ingest"],
                        env=env | {"SEGS_HUB_ID": f"hub-bench-{worker}"},
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        try:
            wait_online(broker)
            ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
            everyone = list(range(plan.gateways))
            groups = [everyone[p :: args.processes] for p in range(args.processes)]
            workers = [
                ctx.Process(
                    target=gateway_process,
                    kwargs={
                        "host": broker.host,
                        "port": broker.port,
                        "plan": plan,
                        "indexes": group,
                        "ready": ready,
                        "go": go,
                        "results": results,
                    },
                )
                for group in groups
            ]
            for worker in workers:
                worker.start()
            for _ in workers:
                ready.get(timeout=600)
            go.set()
            acks: list[float] = []
            for _ in workers:
                for times in results.get(timeout=900).values():
                    acks += times
            for worker in workers:
                worker.join()
        finally:
            for hub in hubs:
                hub.send_signal(signal.SIGTERM)
            for hub in hubs:
                hub.wait(30)
    acks.sort()
    per_batch = plan.meters
    lo, hi = acks[len(acks) // 10], acks[(len(acks) * 9) // 10]
    sustained = (len(acks) * 8 // 10) * per_batch / (hi - lo)
    rows, quarter, day = count_windows(url)
    return HubRun(
        backend=backend,
        windows=len(acks) * per_batch,
        seconds=acks[-1] - acks[0],
        rate=sustained,
        commit_rows=args.commit_windows,
        exact=rows == quarter == day == plan.windows,
    )


def raw_postgres(url: str, plan: Plan, chunk: int) -> float:
    """The same rows, binary COPY into a temp table + INSERT ... ON CONFLICT DO NOTHING."""
    migrate(url)
    rows = list(_raw_rows(plan))
    plain = "postgresql://" + url.split("://", 1)[1]
    with psycopg.connect(plain) as conn:
        conn.execute(
            "CREATE TEMP TABLE raw_stage (LIKE meter_windows INCLUDING DEFAULTS) "
            "ON COMMIT DELETE ROWS"
        )
        conn.commit()
        started = time.perf_counter()
        for i in range(0, len(rows), chunk):
            with conn.cursor() as cursor:
                with cursor.copy(
                    f"COPY raw_stage ({_COLUMNS}, counter_break) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types([*_STAGE_TYPES, "bool"])
                    for row in rows[i : i + chunk]:
                        copy.write_row(row)
                cursor.execute(
                    "INSERT INTO meter_windows SELECT * FROM raw_stage "
                    "ON CONFLICT (meter_id, window_start) DO NOTHING"
                )
            conn.commit()
        elapsed = time.perf_counter() - started
        stored = conn.execute("SELECT count(*) FROM meter_windows").fetchone()
    assert stored is not None
    assert stored[0] == len(rows)
    return len(rows) / elapsed


def raw_sqlite(path: Path, plan: Plan, chunk: int) -> float:
    """The same rows, ``INSERT OR IGNORE`` executemany in transactions of ``chunk``."""
    migrate(f"sqlite:///{path}")
    rows = [(r[0], to_micros(r[1]), *r[2:-1], int(r[-1])) for r in _raw_rows(plan)]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    insert_row = f"INSERT OR IGNORE INTO meter_windows VALUES ({', '.join('?' * 19)})"  # noqa: S608
    started = time.perf_counter()
    for i in range(0, len(rows), chunk):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(insert_row, rows[i : i + chunk])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return len(rows) / elapsed


def _raw_rows(plan: Plan) -> Iterator[tuple[Any, ...]]:
    for g in range(plan.gateways):
        region = f"region-{g % REGIONS}"
        for k in range(plan.batches):
            start = plan.start + timedelta(minutes=k)
            for m in range(plan.meters):
                p = 0.5 + (m % 37) * 0.25
                delta = round(p / 60.0, 6)
                yield (
                    meter_id(g, m), start, 60, round(1000.0 + delta * (k + 1), 6), 0.0, delta,
                    0.0, round(p - 0.2, 3), p, round(p + 0.2, 3), 230.1,
                    round(p * 1000 / 230.1, 3), 0.97, 50.0, 60, 60, "", region, False,
                )  # fmt: skip


# -- main ---------------------------------------------------------------------------------------


def _check_payloads(plan: Plan) -> None:
    """The template encoder must produce what segs.protocol accepts."""
    small = Plan(1, 3, 2, 1, plan.start)
    for payload in encode_batches(small, 0):
        decoded = decode_message(gateway_topic(gateway_id(0), TopicKind.WINDOWS), payload)
        assert isinstance(decoded.payload, WindowBatch)


def machine() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo", encoding="utf-8") as info:  # noqa: PTH123 - Linux only
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["postgresql", "sqlite"])
    parser.add_argument("--gateways", type=int, default=20)
    parser.add_argument(
        "--meters", type=int, default=500, help="meters per gateway (= windows per batch)"
    )
    parser.add_argument("--batches", type=int, default=60, help="batches per gateway")
    parser.add_argument("--inflight", type=int, default=8, help="unacked batches per gateway")
    parser.add_argument("--processes", type=int, default=2, help="gateway processes")
    parser.add_argument("--commit-windows", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=1, help="hub ingest processes")
    parser.add_argument("--hub-log-level", default="warning")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (hub logs)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    start = (datetime.now(UTC) - timedelta(days=1)).replace(second=0, microsecond=0)
    plan = Plan(args.gateways, args.meters, args.batches, args.inflight, start)
    print(f"machine: {machine()}")
    print(
        f"plan: {plan.gateways} gateways x {plan.meters} meters x {plan.batches} batches "
        f"= {plan.windows} windows, {plan.inflight} batches in flight per gateway, "
        f"{args.processes} gateway processes, commits of up to {args.commit_windows} windows"
    )
    _check_payloads(plan)
    results: dict[str, Any] = {"machine": machine(), "plan": vars(args) | {"windows": plan.windows}}
    work = Path(tempfile.mkdtemp(prefix="segs-bench-"))
    print(f"work folder: {work}")
    for backend in args.backends:
        if backend == "postgresql":
            database = create_database(admin_url_from_env(), prefix="segs_bench_")
            raw_db: PostgresDatabase | None = None
            try:
                hub = run_hub(backend, database.sqlalchemy_url, plan, args, work / "hub-pg.log")
                raw_db = create_database(admin_url_from_env(), prefix="segs_bench_raw_")
                raw = raw_postgres(raw_db.sqlalchemy_url, plan, args.commit_windows)
            finally:
                drop_database(database)
                if raw_db is not None:
                    drop_database(raw_db)
        else:
            url = f"sqlite:///{work / 'hub.db'}"
            hub = run_hub(backend, url, plan, args, work / "hub-sqlite.log")
            raw = raw_sqlite(work / "raw.db", plan, args.commit_windows)
        print(
            f"{backend}: hub {hub.rate:,.0f} windows/s sustained "
            f"({hub.windows} windows in {hub.seconds:.1f} s, exactly once: {hub.exact}); "
            f"raw {raw:,.0f} rows/s; ratio {hub.rate / raw:.2f}"
        )
        results[backend] = {"hub_windows_per_s": hub.rate, "raw_rows_per_s": raw,
                            "ratio": hub.rate / raw, "exactly_once": hub.exact,
                            "seconds": hub.seconds}  # fmt: skip
        if not hub.exact:
            print(f"{backend}: the database does not hold every window exactly once!")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
