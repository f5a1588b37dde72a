"""The offline decoder: the schema of a live table, bytes written by another Avro library."""

import datetime as dt
import io
import json
import struct

import fastavro
import pytest

import walbrook
from conftest import take


def test_the_offline_decoder_reads_single_object_messages(db):
    db.sql("INSERT INTO dec VALUES (100, 'for the decoder')")
    client = db.client()
    with client.subscribe("public.dec", start="beginning") as sub:
        event = [e for e in take(sub, 1)][0]
    schema = client.schema(event.fingerprint)
    decoder = walbrook.Decoder(schema.schema_json)
    assert decoder.fingerprint == event.fingerprint
    assert decoder.table == "public.dec"

    # Write a message with fastavro from the same schema, framed as single-object Avro.
    parsed = fastavro.parse_schema(json.loads(schema.schema_json))
    body = io.BytesIO()
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone.utc)
    fastavro.schemaless_writer(body, parsed, {
        "op": "UPDATE_KEY",
        "source": {
            "database": db.name, "schema": "public", "table": "dec", "xid": 77,
            "commit_lsn": 0x1_0000_0010, "lsn": 0x1_0000_0008, "commit_ts": when,
            "ordinal": 2, "last": True, "sent_at": when,
        },
        "before": {"id": 7},
        "after": {"id": 8, "v": None},
    })
    fingerprint = bytes.fromhex(event.fingerprint)
    payload = b"\xc3\x01" + fingerprint + body.getvalue()
    decoded = decoder.decode(payload)
    assert decoded.op == "update_key"
    assert decoded.before == {"id": 7} and decoded.after == {"id": 8, "v": None}
    assert decoded.source.commit_lsn == walbrook.Lsn.parse("1/10")
    assert str(decoded.source.lsn) == "1/8"
    assert decoded.source.commit_time == when
    assert (decoded.source.xid, decoded.source.ordinal, decoded.source.last) == (77, 2, True)
    assert decoded.stream_sequence == 0 and decoded.subject == ""

    with pytest.raises(walbrook.DecodeError):
        decoder.decode(b"garbage")
    with pytest.raises(walbrook.DecodeError):  # truncated
        decoder.decode(payload[:-3])
    with pytest.raises(walbrook.DecodeError):  # another schema's fingerprint
        decoder.decode(b"\xc3\x01" + struct.pack("<Q", 1) + body.getvalue())
    with pytest.raises(walbrook.DecodeError):
        walbrook.Decoder('{"type": "record", "name": "x", "fields": []}')


def test_value_types_behave():
    assert walbrook.Lsn.parse("16/B374D848") == 0x16B374D848
    assert str(walbrook.Lsn(0x16B374D848)) == "16/B374D848"
    with pytest.raises(ValueError):
        walbrook.Lsn.parse("nope")
    assert walbrook.Interval(0, 1, 5).to_timedelta() == dt.timedelta(days=1, microseconds=5)
    with pytest.raises(ValueError):
        walbrook.Interval(1, 0, 0).to_timedelta()
    r = walbrook.Range(1, None, "[)")
    assert r.lower_inc and r.upper_inf and not r.upper_inc and not r.empty
    assert walbrook.Range(empty=True) != walbrook.Range(None, None, "()")
    assert walbrook.INFINITY != walbrook.NEG_INFINITY
    assert walbrook.Unchanged() is walbrook.UNCHANGED
