"""Walbrook: PostgreSQL change data capture over NATS JetStream — the Python client.

    import walbrook

    client = walbrook.Client.connect("nats://127.0.0.1:4222", "shop")
    for event in client.subscribe("public.orders", start="new", durable="billing"):
        print(event.op, event.after)
        event.ack()

``async for`` works the same way on a subscription from ``await client.subscribe_async(…)``,
and on a snapshot's rows from ``client.snapshot("public.orders")``.
Values are native Python types (``Decimal``, ``uuid.UUID``, aware ``datetime``…); see
docs/python.md for the full table, the exceptions and the offline :class:`Decoder`.
"""

from walbrook._errors import (
    AuthError,
    BusyError,
    ConfigError,
    ConnectError,
    DecodeError,
    GapError,
    NatsError,
    ProtocolError,
    RejectedError,
    SchemaNotFoundError,
    ServerError,
    SnapshotFailedError,
    StreamNotFoundError,
    TimeoutError,
    UnavailableError,
    WalbrookError,
)
from walbrook._types import (
    INFINITY,
    NEG_INFINITY,
    UNCHANGED,
    BoundedArray,
    Infinity,
    Interval,
    Lsn,
    OutOfRange,
    Range,
    Unchanged,
)
from walbrook._walbrook import (
    ChangeEvent,
    Client,
    Column,
    Decoder,
    Schema,
    Snapshot,
    SnapshotInfo,
    Source,
    Subscription,
    UndecodedMessage,
    __version__,
)

__all__ = [
    "AuthError",
    "BoundedArray",
    "BusyError",
    "ChangeEvent",
    "Client",
    "Column",
    "ConfigError",
    "ConnectError",
    "DecodeError",
    "GapError",
    "Decoder",
    "INFINITY",
    "Infinity",
    "Interval",
    "Lsn",
    "NEG_INFINITY",
    "NatsError",
    "OutOfRange",
    "ProtocolError",
    "RejectedError",
    "Range",
    "Schema",
    "SchemaNotFoundError",
    "ServerError",
    "Snapshot",
    "SnapshotFailedError",
    "SnapshotInfo",
    "Source",
    "StreamNotFoundError",
    "Subscription",
    "TimeoutError",
    "UNCHANGED",
    "UnavailableError",
    "UndecodedMessage",
    "Unchanged",
    "WalbrookError",
    "__version__",
]
