"""mptorrent/record.py: @frozen and @mutable records behave as the dataclasses they replace."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
from abc import ABC
from dataclasses import field

import pytest

from mptorrent.record import Record, frozen, mutable


@frozen
class Point(Record):
    """A frozen record with a default, a hidden field and an uncompared factory."""

    x: int
    label: str = "p"
    blob: bytes = field(default=b"", repr=False)
    notes: list[str] = field(default_factory=list, compare=False)


@dataclasses.dataclass(frozen=True, slots=True)
class PointDC:
    """The dataclass Point stands for."""

    x: int
    label: str = "p"
    blob: bytes = field(default=b"", repr=False)
    notes: list[str] = field(default_factory=list, compare=False)


class Base(Record, ABC):
    """A field-less base, as wire.Event is."""

    __slots__ = ()


@frozen
class Leaf(Base):
    """A record under an ABC base."""

    n: int


@frozen
class Nothing(Base):
    """A record without fields."""


@frozen
class Derived(Record):
    """A field computed after __init__."""

    x: int
    double: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "double", self.x * 2)


@frozen(slots=False)
class Open(Record):
    """A frozen record that keeps a __dict__."""

    x: int
    y: int = 3


@mutable
class Counter(Record):
    """A mutable record."""

    name: str
    hits: list[int] = field(default_factory=list)
    total: int = field(init=False, default=0)


@mutable(eq=False)
class Handle(Record):
    """A mutable record compared by identity."""

    n: int = 0


def test_frozen_matches_the_dataclass() -> None:
    p, d = Point(1, "a", b"z", ["n"]), PointDC(1, "a", b"z", ["n"])
    assert repr(p) == repr(d).replace("PointDC", "Point")
    assert str(inspect.signature(Point)) == str(inspect.signature(PointDC))
    assert Point.__match_args__ == PointDC.__match_args__
    assert [f.name for f in dataclasses.fields(p)] == [f.name for f in dataclasses.fields(d)]
    assert dataclasses.astuple(p) == dataclasses.astuple(d)
    assert dataclasses.asdict(p) == dataclasses.asdict(d)
    assert dataclasses.replace(p, label="b") == Point(1, "b", b"z")
    assert dataclasses.is_dataclass(p)
    assert not hasattr(p, "__dict__")
    assert Point(2).notes == [] and Point(2).notes is not Point(2).notes


def test_frozen_equality_hash_and_assignment() -> None:
    assert Point(1) == Point(1, "p", b"", ["ignored"])
    assert Point(1) != Point(2) and Point(1) != Point(1, "q")
    assert hash(Point(1)) == hash(Point(1, notes=["x"]))
    assert Leaf(1) != Nothing() and Leaf(1) == Leaf(1) and Nothing() == Nothing()
    with pytest.raises(dataclasses.FrozenInstanceError):
        Point(1).x = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del Point(1).x  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Open(1).x = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        Nothing(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]


def test_patterns_copies_and_pickles() -> None:
    p = Point(1, "a", notes=["n"])
    match p:
        case Point(x, label):
            assert (x, label) == (1, "a")
        case _:
            pytest.fail("no match")
    for other in (copy.copy(p), copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert other == p and other.notes == ["n"]
    d = pickle.loads(pickle.dumps(Derived(4)))
    assert d.double == 8 and repr(d) == "Derived(x=4)"
    assert pickle.loads(pickle.dumps(Open(1, 2))) == Open(1, 2) and Open(1).__dict__ == {
        "x": 1, "y": 3,
    }  # fmt: skip


def test_mutable_matches_the_dataclass() -> None:
    c = Counter("a")
    c.hits.append(1)
    c.total += 1
    assert repr(c) == "Counter(name='a', hits=[1], total=1)"
    assert Counter("a", [1]) == Counter("a", [1]) and c != Counter("a", [1])  # total differs
    assert Counter.__hash__ is None  # compared by value: unhashable, as a dataclass
    c.extra = 5  # type: ignore[attr-defined]  # a __dict__, as a dataclass
    assert pickle.loads(pickle.dumps(c)).__dict__ == c.__dict__
    assert str(inspect.signature(Counter)) == "(name: 'str', hits: 'list[int]' = <factory>) -> None"
    h = Handle()
    assert h != Handle() and h == h and hash(h) == object.__hash__(h)


def test_declarations_dataclass_refuses_are_refused() -> None:
    with pytest.raises(TypeError, match="non-default argument"):

        @frozen
        class Bad(Record):
            """A required field after a default."""

            a: int = 1
            b: int  # type: ignore[misc]

    with pytest.raises(ValueError, match="mutable default"):

        @frozen
        class Mutable(Record):
            """A shared list as a default."""

            a: list[int] = []  # noqa: RUF012

    with pytest.raises(TypeError, match="must derive from Record"):

        @frozen
        class Plain:
            """Not a Record."""

            a: int


def test_inheritance_across_slots_and_frozenness_as_dataclass() -> None:
    @frozen(slots=False)
    class Loose(Record):
        """A frozen record with a __dict__."""

        x: int
        y: int = 0

    @frozen
    class Tight(Loose):
        """A slotted one over it: the inherited fields live in the __dict__."""

        z: int = 1

    t = Tight(1, 2, 3)
    assert (t.x, t.y, t.z) == (1, 2, 3) and t == Tight(1, 2, 3)
    assert copy.copy(t) == t and copy.deepcopy(t) == t  # __reduce__, as a pickle

    # dataclass refuses both mixes when the class is made, not at its first instance
    with pytest.raises(TypeError, match="cannot inherit non-frozen"):

        @mutable
        class Thawed(Loose):
            """Mutable over frozen."""

            w: int = 5

    @mutable
    class Soft(Record):
        """A mutable record."""

        a: int = 0

    with pytest.raises(TypeError, match="cannot inherit frozen"):

        @frozen
        class Hard(Soft):
            """Frozen over mutable."""

            b: int = 0
