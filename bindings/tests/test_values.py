"""Every PostgreSQL type arrives as the documented native Python value, exactly."""

import datetime as dt
import uuid
from decimal import Decimal

import walbrook
from conftest import take

UTC = dt.timezone.utc


def test_values_are_native_python_types_exactly(db):
    db.sql(
        """INSERT INTO types VALUES (1,
        12345678901234567890.123456789012345678901, -0.0100,
        '2024-02-29 12:34:56.789012+05:30', '2024-02-29 12:34:56.789012', '2024-02-29',
        '23:59:59.999999', '12:00:00+05:30',
        'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\xdeadbeef00',
        '{"a": [1, 2.5, "x"], "b": null, "c": {"d": 1e400}}', '[1, "two"]',
        '{1,NULL,3}', '{a,"b c",NULL}', '{{1,2},{3,4}}', '[1,10)',
        '["2024-01-01 00:00:00+00",)', 'empty',
        '1 year 2 mons 3 days 04:05:06.000007', 1.5, 0.25, true, 9223372036854775807,
        -32768, 'plain', repeat('toast-', 2000))"""
    )
    db.sql(
        """INSERT INTO types (id, n, ts, tsl, d, t, arr, iv, txt) VALUES (2,
        'NaN', '-infinity', 'infinity', '0044-03-15 BC', '24:00:00', '[0:1]={7,8}',
        '-1 mons +2 days -00:00:01', NULL)"""
    )
    db.sql("UPDATE types SET txt = 'changed' WHERE id = 1")

    client = db.client()
    sub = client.subscribe("public.types", start="beginning")
    first, second, update = take(sub, 3)

    assert first.op == "insert" and first.before is None
    a = first.after
    assert list(a) == [
        "id", "n", "n2", "ts", "tsl", "d", "t", "ttz", "u", "b", "j", "js", "arr", "tarr",
        "arr2", "r", "tr", "nr", "iv", "f8", "f4", "bo", "big", "sm", "txt", "big_toast",
    ]
    assert a["id"] == 1 and type(a["id"]) is int
    assert isinstance(a["n"], Decimal)
    assert str(a["n"]) == "12345678901234567890.123456789012345678901"
    assert str(a["n2"]) == "-0.0100"
    assert a["ts"] == dt.datetime(2024, 2, 29, 7, 4, 56, 789012, tzinfo=UTC)
    assert a["ts"].tzinfo is not None and a["ts"].utcoffset() == dt.timedelta(0)
    assert a["tsl"] == dt.datetime(2024, 2, 29, 12, 34, 56, 789012)
    assert a["tsl"].tzinfo is None
    assert a["d"] == dt.date(2024, 2, 29) and type(a["d"]) is dt.date
    assert a["t"] == dt.time(23, 59, 59, 999999)
    assert a["ttz"] == dt.time(12, 0, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    assert a["ttz"].utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert a["u"] == uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    assert a["b"] == b"\xde\xad\xbe\xef\x00" and type(a["b"]) is bytes
    # JSON: parsed, numbers exact (floats as Decimal; PostgreSQL's jsonb keeps 1e400).
    assert a["j"] == {"a": [1, Decimal("2.5"), "x"], "b": None, "c": {"d": Decimal("1e400")}}
    assert type(a["j"]["a"][0]) is int
    assert a["js"] == [1, "two"]
    assert a["arr"] == [1, None, 3]
    assert a["tarr"] == ["a", "b c", None]
    assert a["arr2"] == [[1, 2], [3, 4]]
    assert a["r"] == walbrook.Range(1, 10, "[)")
    assert a["r"].lower_inc and not a["r"].upper_inc
    assert a["tr"] == walbrook.Range(dt.datetime(2024, 1, 1, tzinfo=UTC), None, "[)")
    assert a["tr"].upper_inf and not a["tr"].lower_inf
    assert a["nr"] == walbrook.Range(empty=True) and a["nr"].empty
    assert a["iv"] == walbrook.Interval(months=14, days=3, microseconds=14_706_000_007)
    assert a["f8"] == 1.5 and a["f4"] == 0.25
    assert a["bo"] is True
    assert a["big"] == 9223372036854775807 and a["sm"] == -32768
    assert a["txt"] == "plain"
    assert a["big_toast"] == "toast-" * 2000

    b = second.after
    assert b["n"].is_nan()
    assert b["n2"] is None  # NULL
    assert b["ts"] is walbrook.NEG_INFINITY or b["ts"] == walbrook.NEG_INFINITY
    assert b["tsl"] == walbrook.INFINITY
    # 44 BC: before Python's year 1, kept exactly as days since 1970-01-01.
    assert b["d"] == walbrook.OutOfRange("date", -735_160)
    assert b["t"] == walbrook.OutOfRange("time", 86_400_000_000)
    assert b["arr"] == walbrook.BoundedArray((0,), [7, 8])
    assert b["iv"] == walbrook.Interval(months=-1, days=2, microseconds=-1_000_000)
    assert b["txt"] is None

    # An update that leaves a TOASTed value alone: the explicit marker, not None.
    assert update.op == "update"
    assert update.after["txt"] == "changed"
    assert update.after["big_toast"] is walbrook.UNCHANGED
    assert update.after["big_toast"] is not None
    assert not walbrook.UNCHANGED
    assert repr(walbrook.UNCHANGED) == "walbrook.UNCHANGED"

    # Source metadata.
    s = first.source
    assert (s.schema, s.table, s.database) == ("public", "types", db.name)
    assert isinstance(s.commit_lsn, walbrook.Lsn) and s.commit_lsn > 0
    assert walbrook.Lsn.parse(str(s.commit_lsn)) == s.commit_lsn
    assert s.lsn <= s.commit_lsn
    assert s.commit_time.tzinfo is not None
    assert abs(dt.datetime.now(UTC) - s.commit_time) < dt.timedelta(minutes=5)
    assert s.ordinal == 0 and s.last is True
    assert first.commit_lsn == s.commit_lsn and first.ordinal == 0
    assert first.table == "public.types"
    assert len(first.fingerprint) == 16
    assert first.subject == db.wal_subject("public", "types")
    assert first.stream_sequence < second.stream_sequence < update.stream_sequence
    # The lossless JSON form of the Rust SDK is available too.
    assert '"n":"12345678901234567890.123456789012345678901"' in first.to_json()

    # The schema of the event, by fingerprint.
    schema = client.schema(first.fingerprint)
    assert schema.table == "public.types"
    assert schema.fingerprint == first.fingerprint
    columns = {c.name: c for c in schema.columns}
    assert columns["id"].is_key and columns["id"].not_null
    assert columns["n2"].type_name == "numeric(12,4)"
    sub.close()
