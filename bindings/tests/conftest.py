"""Real servers for the Python tests: PostgreSQL + NATS from the harness's
`walbrook-servers` binary, and `walbrook produce` as a subprocess.

Binaries are looked up in $TEST_BIN_DIR, else $CARGO_TARGET_DIR/debug, else
target/debug (scripts/test.sh builds them first). Everything is stopped at the end of the
session, also when tests fail: the servers stop when our pipe to `walbrook-servers` closes
(even if pytest is killed), and the producer gets SIGTERM (and dies with us through
PR_SET_PDEATHSIG if pytest is killed).
"""

from __future__ import annotations

import ctypes
import json
import os
import pathlib
import signal
import socket
import subprocess
import time
import uuid
from typing import Iterator, List, Optional
from urllib.parse import urlparse

import pytest

import walbrook

ROOT_DIR = pathlib.Path(__file__).resolve().parents[2]
SUBJECT_ROOT = "WBPY"


def bin_dir() -> pathlib.Path:
    if os.environ.get("TEST_BIN_DIR"):
        return pathlib.Path(os.environ["TEST_BIN_DIR"])
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT_DIR / "target"))
    return target / "debug"


def binary(name: str) -> str:
    path = bin_dir() / name
    if not path.exists():
        pytest.fail(
            f"{path} is missing: build it first "
            "(cargo build -p walbrook-cli -p walbrook-harness --bins)"
        )
    return str(path)


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the test process dies (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Servers:
    def __init__(self, info: dict) -> None:
        self.pg_url: str = info["pg_url"]
        self.nats_url: str = info["nats_url"]
        self.psql_bin: str = info["psql"]

    def url_for(self, database: str) -> str:
        parsed = urlparse(self.pg_url)
        return parsed._replace(path="/" + database).geturl()


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    proc = subprocess.Popen(
        [binary("walbrook-servers")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            pytest.fail(f"walbrook-servers did not start (exit {proc.wait()})")
        yield Servers(json.loads(line))
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Database:
    """A fresh database with a producer publishing its tables under SUBJECT_ROOT."""

    def __init__(self, servers: Servers, name: str, log_dir: pathlib.Path) -> None:
        self.servers = servers
        self.name = name
        self.url = servers.url_for(name)
        self.producer: Optional[subprocess.Popen] = None
        self.log = log_dir / f"producer-{name}.log"

    def sql(self, statement: str) -> str:
        """Runs one statement (or several, in one transaction) and returns the output."""
        out = subprocess.run(
            [self.servers.psql_bin, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-d", self.url, "-c", statement],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise AssertionError(f"psql failed: {out.stderr}")
        return out.stdout.strip()

    def start_producer(self, tables: List[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WALBROOK_")}
        env.update(
            WALBROOK_PG_URL=self.url,
            WALBROOK_NATS_URL=self.servers.nats_url,
            WALBROOK_TABLES=",".join(tables),
            WALBROOK_SLOT=f"{self.name}_slot",
            WALBROOK_PUBLICATION=f"{self.name}_pub",
            WALBROOK_ROOT=SUBJECT_ROOT,
            WALBROOK_HEARTBEAT_INTERVAL="1s",
            RUST_LOG="info",
        )
        with open(self.log, "ab") as log:
            self.producer = subprocess.Popen(
                [binary("walbrook"), "produce"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + 60
        while True:
            # A walsender streaming from the slot, not just an active slot: creating
            # the slot marks it active too, and a write in that window is not captured.
            active = self.sql(
                "SELECT count(*) FROM pg_replication_slots s "
                "JOIN pg_stat_replication r ON r.pid = s.active_pid "
                f"WHERE s.slot_name = '{self.name}_slot'"
            )
            if active == "1":
                break
            if self.producer.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the producer did not start:\n{self.log.read_text()}")
            time.sleep(0.1)
        client = self.client()
        while True:
            try:
                client.subscribe("*", start="new").close()
                return
            except walbrook.StreamNotFoundError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop_producer(self) -> None:
        if self.producer is None:
            return
        self.producer.send_signal(signal.SIGTERM)
        try:
            self.producer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.producer.kill()
            self.producer.wait()
        self.producer = None

    def client(self, **options) -> walbrook.Client:
        return walbrook.Client.connect(
            self.servers.nats_url, self.name, root=SUBJECT_ROOT, **options
        )

    def wal_subject(self, schema: str, table: str) -> str:
        return f"{SUBJECT_ROOT}.{self.name}.wal.{schema}.{table}"


def nats_publish(nats_url: str, subject: str, payload: bytes) -> None:
    """Publishes one message with the NATS text protocol (no client library needed) and
    waits for the server to have processed it (PING/PONG)."""
    parsed = urlparse(nats_url)
    with socket.create_connection((parsed.hostname, parsed.port or 4222), timeout=10) as s:
        reader = s.makefile("rb")
        info = reader.readline()
        assert info.startswith(b"INFO "), info
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
        s.sendall(f"PUB {subject} {len(payload)}\r\n".encode() + payload + b"\r\nPING\r\n")
        while True:
            line = reader.readline()
            if line.startswith(b"PONG"):
                return
            assert not line.startswith(b"-ERR"), line
            assert line, "connection closed"


# Every table the tests use, created before the producer starts (one producer for all).
TABLES_DDL = """
CREATE TABLE types (
  id int PRIMARY KEY,
  n numeric, n2 numeric(12,4), ts timestamptz, tsl timestamp, d date, t time, ttz timetz,
  u uuid, b bytea, j jsonb, js json, arr int[], tarr text[], arr2 int[], r int4range,
  tr tstzrange, nr numrange, iv interval, f8 float8, f4 float4, bo bool, big bigint,
  sm smallint, txt text, big_toast text
);
ALTER TABLE types ALTER COLUMN big_toast SET STORAGE EXTERNAL;
CREATE TABLE ops (id int PRIMARY KEY, v text);
CREATE TABLE durable (id int PRIMARY KEY, v text);
CREATE TABLE aio (id int PRIMARY KEY, v text);
CREATE TABLE garbage (id int PRIMARY KEY, v text);
CREATE TABLE batchy (id int PRIMARY KEY);
CREATE TABLE dec (id int PRIMARY KEY, v text);
CREATE TABLE snap (id int PRIMARY KEY, n numeric(12,2), t text, ts timestamptz, u uuid,
  j jsonb, b bytea);
CREATE TABLE snap_wait (id int PRIMARY KEY);
CREATE TABLE dlq (id int PRIMARY KEY, v text);
"""
TABLES = ["public.types", "public.ops", "public.durable", "public.aio", "public.garbage",
          "public.batchy", "public.dec", "public.snap", "public.snap_wait",
          "public.dlq"]


@pytest.fixture(scope="session")
def db(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    name = "py_" + uuid.uuid4().hex[:10]
    logs = tmp_path_factory.mktemp("logs")
    admin = Database(servers, "postgres", logs)
    admin.url = servers.pg_url
    admin.sql(f"CREATE DATABASE {name}")
    database = Database(servers, name, logs)
    try:
        database.sql(TABLES_DDL)
        database.start_producer(TABLES)
        yield database
    finally:
        database.stop_producer()


def take(sub: walbrook.Subscription, n: int, timeout: float = 20.0) -> List[walbrook.ChangeEvent]:
    """The next `n` events, failing if they do not arrive in time."""
    events = []
    deadline = time.monotonic() + timeout
    while len(events) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(events)} of {n} events arrived: {events}"
        event = sub.next(timeout=left)
        if event is not None:
            events.append(event)
    return events


