"""One base for the project's many small frozen records: equality, hash and repr written once.

``@dataclass`` builds every method it adds from source text, compiled by ``exec``: about
0.1 ms a method.  The typed events (``events.py``) and the wire events (``proto/wire.py``)
are some forty classes that the command line imports before a fetch can start, so they are
declared ``@dataclass(frozen=True, slots=True, eq=False, repr=False)`` over :class:`Record`,
which gives all of them the same ``__eq__``, ``__hash__`` and ``__repr__`` as ``dataclass``
would (fields compared in order, the same text) from the three functions below (measured:
about 4 ms less start-up).  ``dataclasses.fields``, ``replace`` and ``astuple`` work as
before; a class that writes its own ``__repr__`` keeps it.
"""

from __future__ import annotations


def _names(record: object) -> tuple[str, ...]:
    # a slotted dataclass's __slots__ are its fields, in order
    names: tuple[str, ...] = record.__class__.__slots__  # type: ignore[attr-defined]
    return names


class Record:
    """Base of a frozen, slotted dataclass declared with ``eq=False, repr=False``."""

    __slots__ = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in _names(self))

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((self.__class__, self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in _names(self))
        return f"{self.__class__.__qualname__}({fields})"
