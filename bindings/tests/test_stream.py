"""Sync iteration, operations, start positions, durable resume and error kinds."""

import datetime as dt
import json
import os
import subprocess
import time

import pytest

import walbrook
from conftest import SUBJECT_ROOT, binary, nats_publish, take


def test_operations_arrive_in_order_with_rows(db):
    db.sql("INSERT INTO ops VALUES (1, 'a'), (2, 'b')")
    db.sql("UPDATE ops SET v = 'a2' WHERE id = 1")
    db.sql("UPDATE ops SET id = 3 WHERE id = 2")
    db.sql("DELETE FROM ops WHERE id = 1")
    db.sql("TRUNCATE ops")
    client = db.client()
    with client.subscribe(["public.ops"], start="beginning") as sub:
        assert not sub.durable
        events = []
        for event in sub:  # plain iteration
            events.append(event)
            if len(events) == 6:
                break
    assert [e.op for e in events] == [
        "insert", "insert", "update", "update_key", "delete", "truncate"
    ]
    assert [e.after for e in events] == [
        {"id": 1, "v": "a"}, {"id": 2, "v": "b"}, {"id": 1, "v": "a2"}, {"id": 3, "v": "b"},
        None, None,
    ]
    assert [e.before for e in events] == [None, None, None, {"id": 2}, {"id": 1}, None]
    # One transaction with two rows: same commit LSN, ordinals 0 and 1, `last` on the second.
    assert events[0].commit_lsn == events[1].commit_lsn
    assert [(e.ordinal, e.source.last) for e in events[:2]] == [(0, False), (1, True)]
    assert events[2].commit_lsn > events[1].commit_lsn
    # The two inserts share one stream message (protocol §3.6); the rest have their own.
    assert [(e.message_index, e.message_events) for e in events] == [
        (0, 2), (1, 2), (0, 1), (0, 1), (0, 1), (0, 1)
    ]
    assert events[0].stream_sequence == events[1].stream_sequence < events[2].stream_sequence
    # After close, iteration ends.
    assert list(sub) == []

    # Start positions: a commit position (the first update's), a time, new events only.
    with client.subscribe("public.ops", start=events[2].commit_lsn) as sub:
        assert [e.op for e in take(sub, 4)] == ["update", "update_key", "delete", "truncate"]
    with client.subscribe("public.ops", start=str(events[3].commit_lsn)) as sub:
        assert take(sub, 1)[0].op == "update_key"
    with client.subscribe("public.ops", start=events[5].commit_lsn + 1) as sub:
        assert sub.next(timeout=0.5) is None
    with client.subscribe("public.*", start=dt.datetime.now(dt.timezone.utc)) as sub:
        assert sub.next(timeout=0.5) is None
        db.sql("INSERT INTO ops VALUES (10, 'late')")
        late = take(sub, 1)[0]
        assert (late.table, late.after) == ("public.ops", {"id": 10, "v": "late"})
    with client.subscribe("*", start="new") as sub:
        db.sql("INSERT INTO ops VALUES (11, 'new')")
        assert take(sub, 1)[0].after == {"id": 11, "v": "new"}
    with pytest.raises(walbrook.ConfigError):
        client.subscribe("public.ops", start=dt.datetime(2024, 1, 1))  # naive: refused


def test_next_batch_returns_what_arrived(db):
    db.sql("INSERT INTO batchy SELECT generate_series(1, 7)")
    with db.client().subscribe("public.batchy", prefetch=4) as sub:
        got = []
        deadline = time.monotonic() + 20
        while len(got) < 7 and time.monotonic() < deadline:
            batch = sub.next_batch(5, 1.0)
            assert len(batch) <= 5
            got.extend(batch)
        assert [e.after["id"] for e in got] == list(range(1, 8))
        assert sub.next_batch(5, 0.3) == []


def test_a_durable_subscription_resumes_after_acknowledged_events(db):
    # One transaction per row: one message each (a transaction's events may share a
    # message, and acknowledgements count per message).
    for g in range(1, 5):
        db.sql(f"INSERT INTO durable VALUES ({g}, 'v{g}')")
    client = db.client()
    client.delete_durable("py-durable")
    sub = client.subscribe("public.durable", durable="py-durable", ack_wait=1.0)
    assert sub.durable and sub.consumer_name == "py-durable"
    one, two, three = take(sub, 3)
    assert [e.after["id"] for e in (one, two, three)] == [1, 2, 3]
    one.ack()
    two.ack()
    # three is not acknowledged.
    sub.close()

    # A new connection, the same name: resumes after the acknowledged events; the
    # unacknowledged one comes back (redelivered), then the rest.
    again = db.client().subscribe("public.durable", durable="py-durable", ack_wait=1.0)
    redelivered, four = take(again, 2)
    assert redelivered.after["id"] == 3 and redelivered.delivered >= 2
    # (4 may have been pulled ahead by the first reader, so it can count 2 deliveries too.)
    assert four.after["id"] == 4 and four.delivered >= 1
    redelivered.ack()
    four.ack()
    again.close()
    again = db.client().subscribe("public.durable", durable="py-durable")
    assert again.next(timeout=1.5) is None
    again.close()

    # The same name with other tables is refused; deleting forgets the position.
    with pytest.raises(walbrook.ConfigError) as info:
        client.subscribe("public.ops", durable="py-durable")
    assert info.value.kind == "config" and not info.value.retryable
    assert client.delete_durable("py-durable") is True
    assert client.delete_durable("py-durable") is False
    with client.subscribe("public.durable", durable="py-durable") as sub:
        assert take(sub, 1)[0].after["id"] == 1  # starts over from the beginning
    client.delete_durable("py-durable")


def test_undecodable_messages_raise_with_the_message_and_the_stream_goes_on(db):
    subject = db.wal_subject("public", "garbage")
    nats_publish(db.servers.nats_url, subject, b"garbage")
    # Framed as single-object Avro but with a fingerprint no schema has.
    nats_publish(db.servers.nats_url, subject, b"\xc3\x01" + bytes(range(8)) + b"\x00")
    db.sql("INSERT INTO garbage VALUES (1, 'after')")

    client = db.client()
    with client.subscribe("public.garbage") as sub:
        with pytest.raises(walbrook.DecodeError) as info:
            next(sub)
        error = info.value
        assert isinstance(error, walbrook.WalbrookError)
        assert error.kind == "decode" and error.retryable is False
        assert error.message.payload == b"garbage"
        assert error.message.subject == subject
        assert error.stream_sequence == error.message.stream_sequence > 0
        assert "not an Avro single-object message" in str(error)

        with pytest.raises(walbrook.SchemaNotFoundError) as info:
            next(sub)
        assert info.value.stream_sequence == error.stream_sequence + 1
        assert info.value.message.payload.startswith(b"\xc3\x01")

        event = next(sub)  # the stream goes on
        assert event.after == {"id": 1, "v": "after"}
        assert event.stream_sequence == error.stream_sequence + 2

    # On a durable subscription the bad message stays until terminated.
    client.delete_durable("py-garbage")
    with client.subscribe("public.garbage", durable="py-garbage", ack_wait=1.0) as sub:
        with pytest.raises(walbrook.DecodeError) as info:
            next(sub)
        info.value.message.term()
        with pytest.raises(walbrook.SchemaNotFoundError) as info:
            next(sub)
        info.value.message.ack()
        take(sub, 1)[0].ack()
    with client.subscribe("public.garbage", durable="py-garbage") as sub:
        assert sub.next(timeout=1.5) is None  # nothing comes back
    client.delete_durable("py-garbage")


def test_connection_and_subscription_errors_have_kinds(db, servers):
    with pytest.raises(walbrook.ConnectError) as info:
        walbrook.Client.connect("nats://127.0.0.1:1", "x", connect_timeout=2.0)
    assert info.value.retryable and info.value.kind == "connect"
    assert info.value.is_retryable() and info.value.message is None

    with pytest.raises(walbrook.StreamNotFoundError) as info:
        walbrook.Client.connect(servers.nats_url, "no_such_db", root="WBPY").subscribe("*")
    assert info.value.retryable

    client = db.client()
    with pytest.raises(walbrook.ConfigError):
        client.subscribe("no_dot_in_pattern")
    with pytest.raises(walbrook.ConfigError):
        client.subscribe("public.ops", durable="bad name!")
    with pytest.raises(walbrook.ConfigError):
        walbrook.Client.connect(servers.nats_url, "x", token="t", user="u")
    with pytest.raises(walbrook.SchemaNotFoundError):
        client.schema("0123456789abcdef")
    with pytest.raises(walbrook.ConfigError):
        client.schema("not-a-fingerprint")
    # Mirrors the builtin too.
    assert issubclass(walbrook.TimeoutError, TimeoutError)
    assert walbrook.NatsError.retryable and not walbrook.DecodeError.retryable


def test_dead_letter_option_stores_undecodable_messages_and_goes_on(db):
    client = db.client()
    client.delete_durable("py-dlq")
    with pytest.raises(walbrook.ConfigError):
        client.subscribe("public.dlq", dead_letter="bad name")
    sub = client.subscribe("public.dlq", durable="py-dlq", dead_letter="py-dlq", ack_wait=1.0)
    subject = db.wal_subject("public", "dlq")
    nats_publish(db.servers.nats_url, subject, b"\x00garbage\xff")
    db.sql("INSERT INTO dlq VALUES (1, 'after')")
    event = take(sub, 1)[0]  # the garbage is not raised
    assert event.after == {"id": 1, "v": "after"}
    event.ack()
    assert sub.next(timeout=1.5) is None  # and not redelivered: it was acknowledged
    sub.close()

    # `walbrook dlq list` (the runner's listing) shows the dead letter.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALBROOK_")}
    env.update(WALBROOK_NATS_URL=db.servers.nats_url, WALBROOK_ROOT=SUBJECT_ROOT,
               WALBROOK_SINK_SOURCE_DB=db.name, WALBROOK_SINK_CONSUMER="py-dlq")
    out = subprocess.run([binary("walbrook"), "dlq", "list"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    letters = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(letters) == 1, letters
    assert letters[0]["subject"] == subject
    assert letters[0]["sink"] == "decode"
    assert letters[0]["stream_sequence"] == event.stream_sequence - 1
    assert "not an Avro single-object message" in letters[0]["error"]
    client.delete_durable("py-dlq")
