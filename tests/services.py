"""Real services for the tests: a Mosquitto broker per test and a fresh PostgreSQL database.

Nothing here depends on pytest; ``tests/conftest.py`` wraps it in fixtures and turns a
:class:`ServiceUnavailableError` into a loud ``pytest.fail`` (never a skip).

``tests/conftest.py`` puts this folder on ``sys.path``, so a test module may write
``from services import MosquittoBroker`` (for annotations or to build its own broker).

Environment variables:

``SEGS_MOSQUITTO_BIN``
    Path of the ``mosquitto`` executable. Without it, ``mosquitto`` is looked up on
    ``PATH`` and then in ``/usr/sbin`` and ``/usr/local/sbin`` (Debian installs it in
    ``/usr/sbin``, which is not on a normal user's ``PATH``).
``SEGS_TEST_DATABASE_URL``
    libpq URL of a PostgreSQL server and a database to connect to for administration
    (the role must be allowed to create databases); default :data:`DEFAULT_ADMIN_URL`.
    Each test session creates ``segs_test_<hex>`` on that server and drops it at the end.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol, Self
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

__all__ = [
    "DEFAULT_ADMIN_URL",
    "MosquittoBroker",
    "MosquittoFactory",
    "PostgresDatabase",
    "ServiceUnavailableError",
    "admin_url_from_env",
    "create_database",
    "drop_database",
    "find_mosquitto",
    "free_port",
    "temporary_database",
]

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

_RUNNING = re.compile(r"mosquitto version \S+ running")
_MOSQUITTO_DIRS = ("/usr/sbin", "/usr/local/sbin")
_MOSQUITTO_HELP = (
    "install it with `apt-get install mosquitto` (Debian/Ubuntu), or run `./scripts/test`, "
    "which installs it; or point SEGS_MOSQUITTO_BIN at the executable"
)
_POSTGRES_HELP = (
    "start it with `pg_ctlcluster 15 main start` (Debian; `pg_lsclusters` lists the clusters), "
    "or run `./scripts/test`, which installs and starts it; or set SEGS_TEST_DATABASE_URL "
    "to a server where this role may create databases"
)


class ServiceUnavailableError(RuntimeError):
    """A service the tests need is missing, cannot start or cannot be reached."""


class _PortInUseError(ServiceUnavailableError):
    """Mosquitto could not bind its port."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def find_mosquitto() -> Path:
    """Locate the ``mosquitto`` executable (see the module docstring for the search order)."""
    override = os.environ.get("SEGS_MOSQUITTO_BIN")
    if override:
        path = Path(override)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        msg = f"SEGS_MOSQUITTO_BIN={override} is not an executable file; {_MOSQUITTO_HELP}"
        raise ServiceUnavailableError(msg)
    found = shutil.which("mosquitto")
    if found:
        return Path(found)
    for folder in _MOSQUITTO_DIRS:
        path = Path(folder, "mosquitto")
        if path.is_file() and os.access(path, os.X_OK):
            return path
    msg = (
        f"the mosquitto broker was not found on PATH or in {', '.join(_MOSQUITTO_DIRS)}; "
        f"{_MOSQUITTO_HELP}"
    )
    raise ServiceUnavailableError(msg)


class MosquittoBroker:
    """A private Mosquitto 2 broker on a free 127.0.0.1 port, for one test or one session.

    The constructor only picks the port and the folder; :meth:`start` spawns the
    process. It keeps its port across :meth:`stop`/:meth:`start`/:meth:`restart`, so
    clients reconnect to the same address. Anonymous access, no TLS, no ACLs.

    With ``persistence=True`` the broker keeps retained messages and sessions in
    ``workdir/persistence`` and writes them on a clean :meth:`stop` (SIGTERM); a
    :meth:`kill` (SIGKILL) loses what changed since the last autosave, like a real
    crash. ``extra_config`` lines are appended to the generated config verbatim (for
    example ``"autosave_interval 1"`` or ``"max_queued_messages 10"``).

    The control methods block for up to a few seconds; from async code run them with
    ``await asyncio.to_thread(broker.restart)`` if other tasks must keep running.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        persistence: bool = False,
        extra_config: Sequence[str] = (),
        port: int | None = None,
        binary: Path | None = None,
    ) -> None:
        """Prepare a broker in ``workdir`` (a new temporary folder when ``None``)."""
        self._binary = binary
        self._workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="segs-mqtt-"))
        self._persistence = persistence
        self._extra_config = tuple(extra_config)
        self._host = "127.0.0.1"
        self._port = port if port is not None else free_port(self._host)
        self._port_fixed = port is not None
        self._process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    # -- addresses ---------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address the broker listens on (always 127.0.0.1)."""
        return self._host

    @property
    def port(self) -> int:
        """The TCP port; the same for the broker's whole life, restarts included."""
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``."""
        return f"mqtt://{self._host}:{self._port}"

    @property
    def workdir(self) -> Path:
        """The folder holding the config, the log and the persistence store."""
        return self._workdir

    @property
    def config_path(self) -> Path:
        """The generated ``mosquitto.conf``."""
        return self._workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        """The broker's log file (``log_dest file``)."""
        return self._workdir / "mosquitto.log"

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    # -- lifecycle ---------------------------------------------------------------------------

    def _config_text(self) -> str:
        lines = [
            f"listener {self._port} {self._host}",
            "allow_anonymous true",
            f"log_dest file {self.log_path}",
            "log_type all",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
        ]
        # Started as root, Mosquitto drops to the `mosquitto` user, which could not
        # write to our root-owned temporary folder; `user` is ignored otherwise.
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines.append("user root")
        if self._persistence:
            store = self._workdir / "persistence"
            store.mkdir(parents=True, exist_ok=True)
            lines += ["persistence true", f"persistence_location {store}/"]
        else:
            lines.append("persistence false")
        lines += self._extra_config
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> None:
        """Spawn the broker and wait until it listens (``timeout`` seconds at most).

        Raises :class:`ServiceUnavailableError` with the log tail when the binary is
        missing, the process exits, or the port is not open within ``timeout`` seconds.
        A port picked by the constructor that another process took in the meantime is
        replaced before the first start; after that the port never changes.
        """
        if self.running:
            return
        attempts = 1 if self._port_fixed else 3
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(timeout)
            except _PortInUseError:
                if attempt == attempts:
                    raise
                self._port = free_port(self._host)
            else:
                self._port_fixed = True
                return

    def _start_once(self, timeout: float) -> None:
        binary = self._binary or find_mosquitto()
        self._workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._config_text(), encoding="utf-8")
        log_start = len(self.log_text())
        # stderr catches what Mosquitto prints before it opens its log file.
        self._output = (self._workdir / "mosquitto.out").open("ab")
        self._process = subprocess.Popen(
            [str(binary), "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._reap()
                log = self.log_text()
                error = _PortInUseError if "Address already in use" in log[log_start:] else None
                msg = f"mosquitto exited with code {code} at start:\n{_tail(log)}"
                raise (error or ServiceUnavailableError)(msg)
            # Mosquitto logs "running" once every listener is bound; checking the port
            # alone could hit another process that holds it.
            running = _RUNNING.search(self.log_text(), log_start)
            if running and _port_accepts(self._host, self._port):
                return
            if time.monotonic() > deadline:
                self.kill()
                msg = (
                    f"mosquitto did not accept connections on {self.url} within {timeout} s:\n"
                    f"{_tail(self.log_text())}"
                )
                raise ServiceUnavailableError(msg)
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker cleanly (SIGTERM; SIGKILL after ``timeout`` seconds). Idempotent."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._reap()

    def kill(self) -> None:
        """Kill the broker at once (SIGKILL), as a crash would. Idempotent."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._reap()

    def restart(self, timeout: float = 10.0) -> None:
        """Stop the broker cleanly and start it again on the same port."""
        self.stop(timeout)
        self.start(timeout)

    def _reap(self) -> None:
        self._process = None
        if self._output is not None:
            self._output.close()
            self._output = None

    def log_text(self) -> str:
        """What the broker wrote: its early stderr, then its log file."""
        parts = []
        for path in (self._workdir / "mosquitto.out", self.log_path):
            with contextlib.suppress(FileNotFoundError):
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
        return "".join(parts)

    def __enter__(self) -> Self:
        """Start the broker."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the broker."""
        self.stop()

    def __repr__(self) -> str:
        """Show the address and whether it runs."""
        state = "running" if self.running else "stopped"
        return f"<MosquittoBroker {self.url} {state}>"


class MosquittoFactory(Protocol):
    """The ``mosquitto_factory`` fixture: starts a broker with options; all stop at teardown."""

    def __call__(
        self, *, persistence: bool = False, extra_config: Sequence[str] = ()
    ) -> MosquittoBroker:
        """Start a new broker on its own port and return it."""
        ...


# -- PostgreSQL ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresDatabase:
    """A database created for the tests, and the URL of the server's admin database."""

    name: str
    url: str
    admin_url: str

    @property
    def sqlalchemy_url(self) -> str:
        """The same URL for SQLAlchemy with the psycopg 3 driver (``postgresql+psycopg://``)."""
        return "postgresql+psycopg://" + self.url.split("://", 1)[1]


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in {"postgresql", "postgres"}:
        msg = f"SEGS_TEST_DATABASE_URL must be a postgresql:// URL, got {url!r}"
        raise ValueError(msg)
    return urlunsplit(("postgresql", parts.netloc, f"/{name}", parts.query, parts.fragment))


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def _admin_connect(admin_url: str) -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        msg = (
            f"cannot connect to PostgreSQL at {_redact(admin_url)} "
            f"({str(exc).strip()}); {_POSTGRES_HELP}"
        )
        raise ServiceUnavailableError(msg) from exc


def admin_url_from_env() -> str:
    """``SEGS_TEST_DATABASE_URL``, or :data:`DEFAULT_ADMIN_URL`."""
    return os.environ.get("SEGS_TEST_DATABASE_URL") or DEFAULT_ADMIN_URL


def create_database(
    admin_url: str | None = None, *, prefix: str = "segs_test_"
) -> PostgresDatabase:
    """Create an empty database named ``<prefix><random hex>`` and return where it is."""
    admin_url = admin_url or admin_url_from_env()
    name = f"{prefix}{secrets.token_hex(6)}"
    with _admin_connect(admin_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return PostgresDatabase(name=name, url=_with_database(admin_url, name), admin_url=admin_url)


def drop_database(database: PostgresDatabase) -> None:
    """Drop ``database``, closing any connection still open to it."""
    with _admin_connect(database.admin_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database.name))
        )


@contextlib.contextmanager
def temporary_database(admin_url: str | None = None) -> Iterator[PostgresDatabase]:
    """Create a fresh database for the ``with`` block and drop it afterwards."""
    database = create_database(admin_url)
    try:
        yield database
    finally:
        drop_database(database)
