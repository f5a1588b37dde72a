"""Value types for PostgreSQL values that have no exact Python built-in equivalent.

Every class here is small, immutable, comparable and documented in docs/python.md.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Optional, Tuple


class Unchanged:
    """The marker of an unchanged TOASTed value: the column kept its old value, which the
    event does not carry. Distinct from ``None`` (SQL NULL). There is one instance,
    :data:`walbrook.UNCHANGED`; test with ``value is walbrook.UNCHANGED``."""

    __slots__ = ()
    _instance: Optional["Unchanged"] = None

    def __new__(cls) -> "Unchanged":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "walbrook.UNCHANGED"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "UNCHANGED"


UNCHANGED = Unchanged()


class Infinity:
    """PostgreSQL's ``infinity`` / ``-infinity`` of ``date``, ``timestamp`` and
    ``timestamptz``: :data:`walbrook.INFINITY` and :data:`walbrook.NEG_INFINITY`."""

    __slots__ = ("negative",)

    def __init__(self, negative: bool) -> None:
        object.__setattr__(self, "negative", negative)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Infinity is immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Infinity) and other.negative == self.negative

    def __hash__(self) -> int:
        return hash(("walbrook.Infinity", self.negative))

    def __repr__(self) -> str:
        return "walbrook.NEG_INFINITY" if self.negative else "walbrook.INFINITY"


INFINITY = Infinity(False)
NEG_INFINITY = Infinity(True)


class OutOfRange:
    """A ``date``, ``time``, ``timestamp`` or ``timestamptz`` that Python's ``datetime``
    types cannot hold (years before 1 or after 9999, ``time`` ``24:00:00``), kept exactly:
    ``kind`` is the type name and ``raw`` the value as PostgreSQL counts it (days since
    1970-01-01 for ``date``, microseconds since 1970-01-01 00:00:00 for the timestamps,
    microseconds since midnight for ``time``)."""

    __slots__ = ("kind", "raw")

    def __init__(self, kind: str, raw: int) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "raw", raw)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("OutOfRange is immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OutOfRange) and (other.kind, other.raw) == (self.kind, self.raw)

    def __hash__(self) -> int:
        return hash(("walbrook.OutOfRange", self.kind, self.raw))

    def __repr__(self) -> str:
        return f"walbrook.OutOfRange({self.kind!r}, {self.raw!r})"


class Interval:
    """A PostgreSQL ``interval``, exactly as stored: months, days and microseconds are
    separate because their lengths vary (a month is not 30 days, a day across a DST change
    is not 24 hours)."""

    __slots__ = ("months", "days", "microseconds")

    def __init__(self, months: int = 0, days: int = 0, microseconds: int = 0) -> None:
        object.__setattr__(self, "months", months)
        object.__setattr__(self, "days", days)
        object.__setattr__(self, "microseconds", microseconds)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Interval is immutable")

    def to_timedelta(self) -> _dt.timedelta:
        """The interval as a ``datetime.timedelta``; raises ``ValueError`` when it has
        months (their length depends on the date they are added to)."""
        if self.months:
            raise ValueError(f"{self!r} has months; a timedelta cannot hold them exactly")
        return _dt.timedelta(days=self.days, microseconds=self.microseconds)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Interval) and (
            (other.months, other.days, other.microseconds)
            == (self.months, self.days, self.microseconds)
        )

    def __hash__(self) -> int:
        return hash(("walbrook.Interval", self.months, self.days, self.microseconds))

    def __repr__(self) -> str:
        return (
            f"walbrook.Interval(months={self.months}, days={self.days}, "
            f"microseconds={self.microseconds})"
        )


class Range:
    """A PostgreSQL range value. ``lower``/``upper`` are ``None`` when unbounded;
    ``bounds`` is ``"[)"``, ``"[]"``, ``"()"`` or ``"(]"``; an empty range has
    ``empty=True`` and no bounds."""

    __slots__ = ("lower", "upper", "bounds", "empty")

    def __init__(
        self,
        lower: Any = None,
        upper: Any = None,
        bounds: str = "[)",
        empty: bool = False,
    ) -> None:
        if bounds not in ("[)", "[]", "()", "(]"):
            raise ValueError(f"bounds must be one of [), [], (), (]; got {bounds!r}")
        if empty:
            lower = upper = None
            bounds = "()"
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)
        object.__setattr__(self, "bounds", bounds)
        object.__setattr__(self, "empty", empty)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Range is immutable")

    @property
    def lower_inc(self) -> bool:
        """Whether the lower bound is included (false when unbounded)."""
        return self.lower is not None and self.bounds[0] == "["

    @property
    def upper_inc(self) -> bool:
        """Whether the upper bound is included (false when unbounded)."""
        return self.upper is not None and self.bounds[1] == "]"

    @property
    def lower_inf(self) -> bool:
        """Whether the range has no lower bound."""
        return self.lower is None and not self.empty

    @property
    def upper_inf(self) -> bool:
        """Whether the range has no upper bound."""
        return self.upper is None and not self.empty

    def _key(self) -> Tuple[Any, ...]:
        return (self.lower, self.upper, self.lower_inc, self.upper_inc, self.empty)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Range) and other._key() == self._key()

    def __hash__(self) -> int:
        return hash(("walbrook.Range",) + self._key())

    def __repr__(self) -> str:
        if self.empty:
            return "walbrook.Range(empty=True)"
        return f"walbrook.Range({self.lower!r}, {self.upper!r}, {self.bounds!r})"


class BoundedArray:
    """An array whose lower bounds are not all 1 (``'[0:1]={a,b}'``): ``lower_bounds`` has
    one entry per dimension and ``values`` is the nested list. Arrays with the default
    lower bound 1 are plain (nested) lists."""

    __slots__ = ("lower_bounds", "values")

    def __init__(self, lower_bounds: Tuple[int, ...], values: list) -> None:
        object.__setattr__(self, "lower_bounds", tuple(lower_bounds))
        object.__setattr__(self, "values", values)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("BoundedArray is immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BoundedArray) and (
            (other.lower_bounds, other.values) == (self.lower_bounds, self.values)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"walbrook.BoundedArray({self.lower_bounds!r}, {self.values!r})"


class Lsn(int):
    """A WAL position (PostgreSQL LSN). An ``int`` whose text form is PostgreSQL's
    ``X/Y``; ``Lsn.parse("0/16B3A28")`` reads it back. To resume after a transaction you
    finished, start at its commit LSN + 1."""

    __slots__ = ()

    @classmethod
    def parse(cls, text: str) -> "Lsn":
        high, sep, low = text.partition("/")
        if not sep or not high or not low:
            raise ValueError(f"{text!r} is not an LSN (X/Y in hexadecimal)")
        try:
            value = (int(high, 16) << 32) | int(low, 16)
        except ValueError:
            raise ValueError(f"{text!r} is not an LSN (X/Y in hexadecimal)") from None
        if int(high, 16) >= 1 << 32 or int(low, 16) >= 1 << 32:
            raise ValueError(f"{text!r} is out of range")
        return cls(value)

    def __str__(self) -> str:
        return f"{int(self) >> 32:X}/{int(self) & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"walbrook.Lsn('{self}')"
