"""Interop: fastavro (an independent Avro implementation) decodes walbrook-pgtype-avro's
single-object messages to the expected values, and its CRC-64-AVRO fingerprint of our schema
equals the fingerprint in our message header.

Run: pytest pgtype-avro/tests/python (uses CARGO_TARGET_DIR if set; needs cargo and fastavro).
"""

import datetime
import decimal
import io
import json
import math
import os
import pathlib
import struct
import subprocess
import uuid

import fastavro
import pytest
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

ROOT = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def vectors():
    out = subprocess.run(
        ["cargo", "run", "-q", "-p", "walbrook-pgtype-avro", "--example", "vectors"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    ).stdout
    return json.loads(out)["messages"]


def norm(x):
    """Normalise fastavro values for comparison with JSON expectations."""
    if isinstance(x, dict):
        return {k: norm(v) for k, v in x.items()}
    if isinstance(x, list):
        return [norm(v) for v in x]
    if isinstance(x, decimal.Decimal):
        return str(x)
    if isinstance(x, (datetime.datetime, datetime.date, datetime.time)):
        return x.isoformat()
    if isinstance(x, uuid.UUID):
        return str(x)
    if isinstance(x, bytes):
        return x.hex()
    return x


def check(field, tagged, got):
    t = tagged["t"]
    v = tagged.get("v")
    if t == "null":
        assert got is None, field
    elif t == "unchanged":
        # The walbrook.Unchanged marker is an empty record.
        assert got == {}, (field, got)
    elif t == "int":
        assert got == int(v), (field, got)
    elif t == "bool":
        assert got is v, (field, got)
    elif t == "float32":
        assert got == struct.unpack("f", struct.pack("f", float(v)))[0], (field, got)
    elif t == "float":
        f = float(v)
        assert (math.isnan(got) and math.isnan(f)) or got == f, (field, got)
    elif t == "decimal":
        assert isinstance(got, decimal.Decimal), (field, got)
        assert str(got) == v, (field, got)
    elif t == "str":
        assert got == v, (field, got)
    elif t == "bytes":
        assert got == bytes.fromhex(v), (field, got)
    elif t == "uuid":
        assert got == uuid.UUID(v), (field, got)
    elif t == "date":
        assert got == datetime.date.fromisoformat(v), (field, got)
    elif t == "time":
        assert got == datetime.time.fromisoformat(v), (field, got)
    elif t == "naive":
        assert got.tzinfo is None and got == datetime.datetime.fromisoformat(v), (field, got)
    elif t == "aware":
        want = datetime.datetime.fromisoformat(v)
        assert got.tzinfo is not None and got == want, (field, got)
    elif t == "timetz":
        assert got["micros"] == datetime.time.fromisoformat(v["micros"]), (field, got)
        assert got["offset_seconds"] == v["offset_seconds"], (field, got)
    elif t == "json":
        assert got == v, (field, got)
    elif t == "deep":
        assert norm(got) == v, (field, got)
    else:
        raise AssertionError(f"unknown tag {t}")


def test_fastavro_decodes_our_messages(vectors):
    assert len(vectors) >= 3
    for vec in vectors:
        raw = bytes.fromhex(vec["message"])
        assert raw[:2] == b"\xc3\x01"
        assert raw[2:10].hex() == vec["fingerprint"]
        schema = parse_schema(vec["schema"])
        record = fastavro.schemaless_reader(io.BytesIO(raw[10:]), schema, None)
        assert set(record) == set(vec["expected"]), vec["name"]
        for field, tagged in vec["expected"].items():
            check(field, tagged, record[field])


def test_fastavro_fingerprint_equals_our_header(vectors):
    for vec in vectors:
        raw = bytes.fromhex(vec["message"])
        canonical = to_parsing_canonical_form(vec["schema"])
        assert "logicalType" not in canonical and "pgType" not in canonical
        assert fingerprint(canonical, "CRC-64-AVRO") == raw[2:10].hex(), vec["name"]
