"""Walbrook: PostgreSQL change data capture over NATS JetStream.

Only the package skeleton exists so far; the client API arrives with issue #6.
"""

from walbrook._walbrook import __version__

__all__ = ["__version__"]
