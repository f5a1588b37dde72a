"""Decode benchmark: the Python client's decoder versus fastavro, on the same bytes.

    python bindings/bench/decode_bench.py DIR

DIR holds `schema.json` and `payloads.bin` written by the Rust half
(`cargo run --release -p walbrook-bindings --example decode_bench -- --out DIR`): insert
events of the issue's 10-column row, encoded by the producer's encoder as Avro single-object
messages. Both decoders turn every message into Python objects:

* walbrook: `walbrook.Decoder(schema_json).decode(payload)` — an event whose `source`,
  `before` and `after` are built eagerly (Decimal, aware datetime, UUID, parsed JSON…);
* fastavro: `fastavro.schemaless_reader` on the body after the 10-byte single-object
  header, with fastavro's own logical-type conversions — a dict of dicts.

Each is timed over every message in CPU time of the one thread (best of four interleaved
passes) and the script prints
one JSON line with events/s and the ratio walbrook / fastavro (issue #6 target: >= 2).
It first checks that both decoders read the same values from a sample.
"""

from __future__ import annotations

import io
import json
import pathlib
import struct
import sys
import time

import fastavro

import walbrook


ROUNDS = 4


def load(directory: pathlib.Path):
    schema_json = (directory / "schema.json").read_text()
    data = (directory / "payloads.bin").read_bytes()
    payloads, offset = [], 0
    while offset < len(data):
        (n,) = struct.unpack_from("<I", data, offset)
        payloads.append(data[offset + 4 : offset + 4 + n])
        offset += 4 + n
    return schema_json, payloads


def cpu_seconds(fn, payloads) -> float:
    """CPU time of this thread for one pass (robust when other processes share the cores)."""
    start = time.thread_time()
    fn(payloads)
    return time.thread_time() - start


def main() -> None:
    directory = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "results/decode")
    schema_json, payloads = load(directory)
    decoder = walbrook.Decoder(schema_json)
    parsed = fastavro.parse_schema(json.loads(schema_json))

    def fast_one(payload: bytes):
        return fastavro.schemaless_reader(io.BytesIO(payload[10:]), parsed, None)

    # Same bytes, same values.
    for payload in payloads[:100]:
        ours = decoder.decode(payload)
        theirs = fast_one(payload)
        assert ours.after["id"] == theirs["after"]["id"]
        assert ours.after["name"] == theirs["after"]["name"]
        assert ours.source.xid == theirs["source"]["xid"]
        assert ours.op == theirs["op"].lower()

    def run_walbrook(ps):
        decode = decoder.decode
        for p in ps:
            decode(p)

    def run_fastavro(ps):
        reader = fastavro.schemaless_reader
        for p in ps:
            reader(io.BytesIO(p[10:]), parsed, None)

    run_walbrook(payloads[:5000])
    run_fastavro(payloads[:5000])
    # Interleaved passes, best of each: both see the same machine conditions.
    t_walbrook = t_fastavro = float("inf")
    for _ in range(ROUNDS):
        t_walbrook = min(t_walbrook, cpu_seconds(run_walbrook, payloads))
        t_fastavro = min(t_fastavro, cpu_seconds(run_fastavro, payloads))
    n = len(payloads)
    result = {
        "bench": "python_decode",
        "events": n,
        "walbrook_events_per_second": n / t_walbrook,
        "fastavro_events_per_second": n / t_fastavro,
        "ratio": t_fastavro / t_walbrook,
        "fastavro": fastavro.__version__,
        "python": sys.version.split()[0],
        "timing": "thread CPU time, best of %d interleaved passes" % ROUNDS,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
