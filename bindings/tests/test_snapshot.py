"""Snapshots: request one, iterate its rows with `for` and `async for`, list and re-read
it; an unknown table, a stalled and a failed snapshot raise the mirrored exceptions."""

import asyncio
import datetime
import decimal
import json
import pathlib
import subprocess
import time
import uuid

import pytest

import walbrook
from conftest import Database

ROWS = 1000


def expected_rows(db):
    """The table as PostgreSQL sees it, in Python values, keyed by id."""
    out = db.sql(
        "SELECT json_agg(json_build_object('id', id, 'n', n::text, 't', t, "
        "'ts', to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), 'u', u, "
        "'j', j::text, 'b', encode(b, 'hex')) ORDER BY id) FROM snap"
    )
    rows = {}
    for r in json.loads(out):
        rows[r["id"]] = {
            "id": r["id"],
            "n": decimal.Decimal(r["n"]),
            "t": r["t"],
            "ts": datetime.datetime.fromisoformat(r["ts"]).replace(tzinfo=datetime.timezone.utc),
            "u": uuid.UUID(r["u"]),
            "j": json.loads(r["j"]),
            "b": bytes.fromhex(r["b"]),
        }
    return rows


@pytest.fixture(scope="module")
def filled(db):
    db.sql("TRUNCATE snap")
    db.sql(
        f"INSERT INTO snap SELECT g, g * 1.25 - 300, 'row ' || g || ' ✓', "
        "timestamptz '2024-02-29 12:00:00.123456+00' + g * interval '1 minute 1 microsecond', "
        "md5(g::text)::uuid, jsonb_build_object('g', g, 'half', g / 2.0), "
        f"decode(lpad(to_hex(g), 8, '0'), 'hex') FROM generate_series(1, {ROWS}) g"
    )
    db.sql("ANALYZE snap")
    return expected_rows(db)


def test_a_snapshot_of_1000_rows_has_every_value_exactly(db, filled):
    client = db.client()
    snapshot = client.snapshot("public.snap", chunk_size=128)
    assert isinstance(snapshot, walbrook.Snapshot)
    assert isinstance(snapshot.position, walbrook.Lsn)
    assert len(snapshot.fingerprint) == 16
    assert snapshot.approx_rows == ROWS
    assert snapshot.info.table == "public.snap"
    assert snapshot.info.chunk_size == 128
    assert snapshot.info.keyed
    got = {}
    for event in snapshot:
        assert event.op == "read"
        assert event.table == "public.snap"
        assert event.fingerprint == snapshot.fingerprint
        assert event.after["id"] not in got
        got[event.after["id"]] = event.after
    assert snapshot.rows_received == ROWS
    assert len(got) == ROWS
    assert got == filled
    # Iterating after the end stays ended.
    assert snapshot.next(timeout=0.2) is None

    # Listed with its header, then read again with the same rows.
    listed = client.snapshots("public.snap")
    mine = [info for info in listed if info.id == snapshot.id]
    assert len(mine) == 1, listed
    info = mine[0]
    assert info.status == "done"
    assert info.rows == ROWS
    assert info.position == snapshot.position
    assert info.fingerprint == snapshot.fingerprint
    assert info.ended_at is not None
    assert snapshot.id in {i.id for i in client.snapshots()}
    again = client.read_snapshot(snapshot.id)
    assert again.id == snapshot.id
    assert {e.after["id"]: e.after for e in again} == filled
    assert again.rows_received == ROWS


def test_async_snapshot_filter_and_reread(db, filled):
    async def main():
        client = await walbrook.Client.connect_async(
            db.servers.nats_url, db.name, root="WBPY"
        )
        snapshot = await client.snapshot_async("public.snap", filter=("id", ">", 900))
        ids = []
        async for event in snapshot:
            assert event.after == filled[event.after["id"]]
            ids.append(event.after["id"])
        assert sorted(ids) == list(range(901, ROWS + 1))
        listed = await client.snapshots_async("public.snap")
        assert snapshot.id in [i.id for i in listed]
        again = await client.read_snapshot_async(snapshot.id)
        reread = [e.after["id"] async for e in again]
        assert sorted(reread) == sorted(ids)
        none = await client.snapshot_async("public.snap", filter=("t", "is_null"))
        assert [e async for e in none] == []
        assert none.rows_received == 0

    asyncio.run(main())


def test_snapshot_errors_are_the_mirrored_exceptions(db):
    client = db.client()
    with pytest.raises(walbrook.RejectedError) as unknown:
        client.snapshot("public.no_such_table")
    assert unknown.value.kind == "rejected"
    assert not unknown.value.is_retryable()
    with pytest.raises(walbrook.RejectedError):
        client.snapshot("public.snap", filter=("no_such_column", "=", 1))
    with pytest.raises(walbrook.RejectedError):
        client.read_snapshot("no-such-snapshot")
    with pytest.raises(walbrook.ConfigError):
        client.snapshot("public.*")
    with pytest.raises(walbrook.ConfigError):
        client.snapshot("public.snap", filter=("id", "~", 1))
    with pytest.raises(walbrook.ConfigError):
        client.snapshot("public.snap", stall_timeout=0)


class OpenTransaction:
    """A psql session holding a transaction open (snapshots wait for it)."""

    def __init__(self, db: Database, statement: str) -> None:
        self.db = db
        self.proc = subprocess.Popen(
            [db.servers.psql_bin, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db.url],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self.proc.stdin.write(f"BEGIN; {statement};\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + 20
        while db.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' "
            "AND backend_xid IS NOT NULL AND datname = current_database()"
        ) != "1":
            assert time.monotonic() < deadline, "the transaction did not open"
            time.sleep(0.05)

    def rollback(self) -> None:
        self.proc.stdin.write("ROLLBACK;\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=20)


def test_a_stalled_snapshot_raises_timeout_error(db):
    db.sql("INSERT INTO snap_wait SELECT generate_series(1, 5) ON CONFLICT DO NOTHING")
    client = db.client()
    open_tx = OpenTransaction(db, "INSERT INTO snap_wait VALUES (100)")
    try:
        snapshot = client.snapshot("public.snap_wait", stall_timeout=1.0)
        started = time.monotonic()
        with pytest.raises(walbrook.TimeoutError) as stalled:
            for _ in snapshot:
                pass
        assert time.monotonic() - started < 15
        assert stalled.value.is_retryable()
        assert "no message" in str(stalled.value)
        # The error was the last item.
        assert snapshot.next(timeout=0.2) is None
    finally:
        open_tx.rollback()


def test_a_failed_snapshot_raises_snapshot_failed_error(servers, tmp_path: pathlib.Path):
    name = "pyf_" + uuid.uuid4().hex[:10]
    admin = Database(servers, "postgres", tmp_path)
    admin.url = servers.pg_url
    admin.sql(f"CREATE DATABASE {name}")
    other = Database(servers, name, tmp_path)
    other.sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10)")
    other.start_producer(["public.t"])
    open_tx = None
    try:
        client = other.client()
        open_tx = OpenTransaction(other, "INSERT INTO t VALUES (100)")
        snapshot = client.snapshot("public.t")
        time.sleep(0.3)
        other.stop_producer()  # a producer shutting down fails its running snapshots
        with pytest.raises(walbrook.SnapshotFailedError) as failed:
            snapshot.next(timeout=20)
        assert failed.value.kind == "snapshot_failed"
        assert not failed.value.is_retryable()
        assert "shut down" in str(failed.value)
        assert snapshot.next(timeout=0.2) is None
    finally:
        if open_tx is not None:
            open_tx.rollback()
        other.stop_producer()
