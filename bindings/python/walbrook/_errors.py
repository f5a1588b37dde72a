"""Exceptions of the Walbrook client: one class per ``walbrook_client::ErrorKind``.

Every exception has ``kind`` (the kind's name, e.g. ``"decode"``), ``retryable`` (trying
again later can succeed without changing anything) and, for an error about one stream
message, ``message`` (an :class:`walbrook.UndecodedMessage` with its subject, stream
sequence, headers and payload, and ``ack``/``nak``/``term`` on a durable subscription) and
``stream_sequence``; otherwise both are ``None``.
"""

from __future__ import annotations

from typing import Any, Optional


class WalbrookError(Exception):
    """Base class of every Walbrook client error."""

    kind: str = "unknown"
    retryable: bool = False
    message: Optional[Any] = None
    stream_sequence: Optional[int] = None

    def is_retryable(self) -> bool:
        """Whether trying again later can succeed without changing anything (as the Rust
        SDK's ``Error::is_retryable``)."""
        return self.retryable


class ConnectError(WalbrookError):
    """No NATS server could be reached. Retryable."""

    kind = "connect"
    retryable = True


class AuthError(WalbrookError):
    """The server rejected the credentials, or they could not be loaded."""

    kind = "auth"


class ConfigError(WalbrookError):
    """Invalid options or subscription (bad pattern, durable name taken by other tables…)."""

    kind = "config"


class SchemaNotFoundError(WalbrookError):
    """The schema lookup RPC does not know a message's fingerprint (404)."""

    kind = "schema_not_found"


class DecodeError(WalbrookError):
    """A message is not single-object Avro, does not match its schema, or its schema is not
    an envelope the client reads. The message is attached."""

    kind = "decode"


class ProtocolError(WalbrookError):
    """A peer broke the wire contract (malformed RPC reply, wrong schema, missing header)."""

    kind = "protocol"


class NatsError(WalbrookError):
    """NATS or JetStream reported an error (a consumer request, missed heartbeats, an ack).
    Retryable."""

    kind = "nats"
    retryable = True


import builtins as _builtins  # noqa: E402


class TimeoutError(WalbrookError, _builtins.TimeoutError):  # noqa: A001 - mirrors the Rust kind
    """A schema lookup got no answer in time. Retryable. Also a builtin ``TimeoutError``."""

    kind = "timeout"
    retryable = True


class UnavailableError(WalbrookError):
    """Nobody serves the schema lookup RPC (no producer running). Retryable."""

    kind = "unavailable"
    retryable = True


class ServerError(WalbrookError):
    """The lookup RPC failed server-side (500). Retryable."""

    kind = "server"
    retryable = True


class StreamNotFoundError(WalbrookError):
    """The database's change stream does not exist (the producer has not run yet).
    Retryable."""

    kind = "stream_not_found"
    retryable = True


class RejectedError(WalbrookError):
    """An RPC refused the request as invalid: malformed, unknown or unpublished table, bad
    snapshot filter, no such snapshot (400/403/404). Fix the call."""

    kind = "rejected"


class BusyError(WalbrookError):
    """The producer runs as many snapshots as it may (429). Retryable."""

    kind = "busy"
    retryable = True


class SnapshotFailedError(WalbrookError):
    """A snapshot ended with the producer's ``failed`` message (or was aborted): request a
    new one."""

    kind = "snapshot_failed"


class GapError(WalbrookError):
    """A gap marker: the producer's replication slot was lost and the changes in the
    marker's range are not in the stream. Re-bootstrap the target from a snapshot taken
    after it; the marker is attached (``message``)."""

    kind = "gap"


KINDS = {
    cls.kind: cls
    for cls in (
        ConnectError,
        AuthError,
        ConfigError,
        SchemaNotFoundError,
        DecodeError,
        ProtocolError,
        NatsError,
        TimeoutError,
        UnavailableError,
        ServerError,
        StreamNotFoundError,
        RejectedError,
        BusyError,
        SnapshotFailedError,
        GapError,
    )
}
