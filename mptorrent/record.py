"""Records for the project's many small value classes, made cheaply at import.

``@dataclass`` writes each method it adds as source text and compiles it with ``exec``:
``__init__``, ``__repr__``, ``__eq__``, and for a frozen class ``__hash__``,
``__setattr__`` and ``__delattr__`` too: 0.1 to 0.7 ms a class.  A fetch defines some
ninety such classes (the typed events, the wire events, the tracker's, the metainfo's, the
worker's and the coordinator's records) before its first worker starts, which made 20 ms of
its start-up.  They are made by :func:`frozen` and :func:`mutable` instead: equality, hash,
repr and the refusal to assign are written once, here, in :class:`Record`, and ``__init__``
is compiled once per *shape* (how many fields; for a mutable record, which have a
factory), then given each class's field names (``CodeType.replace``): 25 compilations
instead of some three hundred, and 4 ms in all where ``dataclass`` took 20.

A class made by ``@frozen`` over :class:`Record` behaves as ``@dataclass(frozen=True,
slots=True)`` would make it (``@frozen(slots=False)``: ``frozen=True`` alone), and one
made by ``@mutable`` as ``@dataclass`` (``@mutable(eq=False)``: ``eq=False``):
``__slots__`` or not, ``__match_args__`` (positional patterns), field defaults,
``field(default_factory=..., init=..., repr=..., compare=...)``, ``__post_init__``,
``dataclasses.FrozenInstanceError`` on assignment to a frozen one, equality (and, frozen,
hash) over the compared fields in order, a mutable one unhashable, the same ``repr`` text,
the same ``__init__`` signature, ``copy`` and ``pickle``; ``dataclasses.fields``,
``replace``, ``astuple`` and ``asdict`` work on them (they have ``__dataclass_fields__``),
and type checkers read them as dataclasses (``dataclass_transform``).  Not offered:
``order``, ``kw_only``, ``InitVar``, and zero-argument ``super()`` in a slotted record's
methods (as with ``dataclass(slots=True)``, the class is rebuilt).

A frozen record's ``__init__`` sets each field through its slot's descriptor: making one
costs a third less than making the frozen dataclass it replaces (which goes through
``object.__setattr__``), which matters for the events made per piece and per block.

A ``@dataclass(frozen=True, slots=True, eq=False, repr=False)`` over :class:`Record` still
gets the same equality, hash and repr (from its ``__match_args__``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from operator import attrgetter
from types import CodeType, FunctionType, MemberDescriptorType
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar, dataclass_transform, overload

_C = TypeVar("_C", bound=type)

# dataclasses.fields() lists the Field objects that carry this marker
_FIELD: Final[object] = dataclasses._FIELD  # type: ignore[attr-defined]


class _Factory:
    """The default a field with a ``default_factory`` shows in ``__init__``'s signature."""

    def __repr__(self) -> str:
        return "<factory>"


_FACTORY: Final = _Factory()


def _init_fields(record: Record) -> tuple[str, ...]:
    # a dataclass's __match_args__ are its __init__'s fields, in order; a bare base has none
    names: tuple[str, ...] = getattr(record.__class__, "__match_args__", ())
    return names


def _by_match_args(record: Record) -> tuple[object, ...]:
    return tuple(getattr(record, name) for name in _init_fields(record))


class Record:
    """Base of the frozen records: equality, hash, repr and pickling, written once."""

    __slots__ = ()
    if TYPE_CHECKING:
        __match_args__: ClassVar[tuple[str, ...]]
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    # set by @frozen per class: the compared fields' values, and the names repr shows
    _record_key: ClassVar[Callable[[Record], tuple[object, ...]]] = _by_match_args
    _record_shown: ClassVar[tuple[str, ...] | None] = None  # None: __match_args__

    def __eq__(self, other: object) -> bool:
        cls = self.__class__
        if other.__class__ is not cls:
            return NotImplemented
        key = cls._record_key
        return key(self) == key(other)

    def __hash__(self) -> int:
        # as a dataclass's: the compared fields' tuple (records of two classes are never equal)
        return hash(self.__class__._record_key(self))

    def __repr__(self) -> str:
        names = self._record_shown
        if names is None:
            names = _init_fields(self)
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{self.__class__.__qualname__}({fields})"

    def __reduce__(self) -> tuple[type[Record], tuple[object, ...]]:
        # a frozen slotted object cannot be rebuilt by setting attributes: call __init__
        return self.__class__, tuple(getattr(self, name) for name in _init_fields(self))


def _refuse_set(self: Record, name: str, value: object) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def _refuse_delete(self: Record, name: str) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")


def _key_of(names: tuple[str, ...]) -> Callable[[Record], tuple[object, ...]]:
    if not names:
        return lambda _record: ()
    if len(names) == 1:
        one = attrgetter(names[0])
        return lambda record: (one(record),)
    get: Callable[[Record], tuple[object, ...]] = attrgetter(*names)
    return get


def _is_class_var(annotation: object) -> bool:
    if isinstance(annotation, str):  # from __future__ import annotations
        return annotation.startswith(("ClassVar", "typing.ClassVar"))
    return annotation is ClassVar or getattr(annotation, "__origin__", None) is ClassVar


def _own_fields(cls: type) -> list[dataclasses.Field[Any]]:
    out = []
    for name, annotation in inspect.get_annotations(cls).items():
        if _is_class_var(annotation):
            continue
        value = cls.__dict__.get(name, dataclasses.MISSING)
        if isinstance(value, dataclasses.Field):
            f = value
            if f.hash is not None or f.kw_only is True or f.metadata:
                raise TypeError(f"{cls.__qualname__}.{name}: @frozen takes only default, "
                                "default_factory, init, repr and compare")  # fmt: skip
        else:
            if value is not dataclasses.MISSING and value.__class__.__hash__ is None:
                raise ValueError(f"mutable default {type(value)} for field {name} is not "
                                 "allowed: use default_factory")  # fmt: skip
            f = dataclasses.field(default=value)
        f.name = name
        f.type = annotation
        f.kw_only = False
        f._field_type = _FIELD  # type: ignore[attr-defined]
        out.append(f)
    return out


@functools.cache
def _init_code(shape: str, post_init: bool) -> CodeType:
    """The code of ``__init__`` for every record of one shape, with ``a{i}`` for field i's
    name (as a parameter, and as an attribute in a mutable record's); compiled once per
    shape, not once per class.  ``shape[i]``, for a frozen record's field i, set by the
    function's global ``_set{i}`` (the slot's own setter, or one made by :func:`_setter`):
    "p" a parameter (its default, if any, is the function's), "n" set without one (from
    its default or factory); for a mutable record's, assigned (``self.a{i} = ...``, as fast
    as ``dataclass``): "P" a parameter, "f" a parameter defaulting to its factory, "F" set
    from its factory, "d" set to its default; "-" not set (``__post_init__`` does it)."""
    params = ["self"]
    body = []
    for i, kind in enumerate(shape):
        if kind in "pPf":
            params.append(f"a{i}")
        if kind == "p":
            body.append(f"_set{i}(self, a{i})")
        elif kind == "n":
            body.append(f"_set{i}(self)")
        elif kind == "f":
            body.append(f"if a{i} is _FACTORY: a{i} = _factory{i}()")
        value = {"P": f"a{i}", "f": f"a{i}", "F": f"_factory{i}()", "d": f"_default{i}"}.get(kind)
        if value is not None:
            body.append(f"self.a{i} = {value}")
    if post_init:
        body.append("self.__post_init__()")
    names: dict[str, object] = {}
    exec(f"def __init__({', '.join(params)}):\n" + "".join(f" {line}\n" for line in body), names)
    init = names["__init__"]
    assert isinstance(init, FunctionType)
    return init.__code__


def _setter(
    cls: type, f: dataclasses.Field[Any], slotted: bool
) -> Callable[[Any, Any], None] | Callable[[Any], None]:
    """What a frozen record's ``__init__`` calls to set field ``f``: ``(self, value)`` for a
    parameter, ``(self)`` for a field set from its default or factory."""
    name = f.name
    put: Callable[[Any, Any], None]
    slot = getattr(cls, name, None)  # a slot, or an inherited default (a base with __dict__)
    if slotted and isinstance(slot, MemberDescriptorType):
        put = slot.__set__  # the slot's own setter: the fastest
    else:  # with a __dict__ (or a field of a base that has one): API results, options
        put = lambda self, value: _object_setattr(self, name, value)  # noqa: E731
    factory = f.default_factory
    if f.init:
        if factory is dataclasses.MISSING:
            return put
        return lambda self, value: put(self, factory() if value is _FACTORY else value)
    if factory is not dataclasses.MISSING:
        return lambda self: put(self, factory())
    default = f.default
    return lambda self: put(self, default)


_object_setattr = object.__setattr__


def _make_init(
    cls: type, fields: list[dataclasses.Field[Any]], slotted: bool, frozen: bool
) -> Callable[..., None] | None:
    """``__init__`` for ``cls``, with the fields' names and defaults, as ``dataclass`` writes it;
    None if the record has nothing to set."""
    names: dict[str, object] = {"_FACTORY": _FACTORY}
    shape = []
    defaults: list[object] = []
    rename = {}
    for i, f in enumerate(fields):
        rename[f"a{i}"] = f.name
        factory, default = f.default_factory, f.default
        if f.init:
            if factory is not dataclasses.MISSING:
                defaults.append(_FACTORY)
            elif default is not dataclasses.MISSING:
                defaults.append(default)
        elif factory is dataclasses.MISSING and default is dataclasses.MISSING:
            shape.append("-")
            continue
        if frozen:
            shape.append("p" if f.init else "n")
            names[f"_set{i}"] = _setter(cls, f, slotted)
        elif f.init:
            shape.append("P" if factory is dataclasses.MISSING else "f")
            names[f"_factory{i}"] = factory
        elif factory is not dataclasses.MISSING:
            shape.append("F")
            names[f"_factory{i}"] = factory
        else:
            shape.append("d")
            names[f"_default{i}"] = default
    post_init = hasattr(cls, "__post_init__")
    if not post_init and all(kind == "-" for kind in shape):
        return None
    code = _init_code("".join(shape), post_init)
    qualname = f"{cls.__qualname__}.__init__"
    code = code.replace(
        co_varnames=tuple(rename.get(n, n) for n in code.co_varnames),
        co_names=tuple(rename.get(n, n) for n in code.co_names),
        co_qualname=qualname,
    )
    init = FunctionType(code, names, "__init__", tuple(defaults) or None)
    init.__qualname__ = qualname
    init.__annotations__ = {f.name: f.type for f in fields if f.init}
    init.__annotations__["return"] = None
    return init


def _is_frozen(cls: type) -> bool:
    params = cls.__dict__.get("__dataclass_params__")  # a dataclass over Record
    return cls.__dict__.get("__setattr__") is _refuse_set or bool(getattr(params, "frozen", False))


def _build(cls: type, slots: bool, frozen: bool = True, eq: bool = True) -> type:
    if not issubclass(cls, Record):
        raise TypeError(f"record class {cls.__qualname__} must derive from Record")
    for base in cls.__mro__[1:]:  # as dataclass: frozen and mutable records do not mix
        if "__dataclass_fields__" in base.__dict__ and _is_frozen(base) != frozen:
            kind = ("frozen", "non-frozen") if frozen else ("non-frozen", "frozen")
            raise TypeError(f"cannot inherit {kind[0]} record {cls.__qualname__} from a "
                            f"{kind[1]} one ({base.__qualname__})")  # fmt: skip
    fields: dict[str, dataclasses.Field[Any]] = {}
    for base in cls.__mro__[-1:0:-1]:  # inherited fields first, as dataclass orders them
        fields.update(base.__dict__.get("__dataclass_fields__", {}))
    own = _own_fields(cls)
    fields.update((f.name, f) for f in own)
    every = list(fields.values())
    seen_default = False
    for f in every:
        if not f.init:
            continue
        has_default = (
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        )
        if seen_default and not has_default:
            raise TypeError(f"non-default argument {f.name!r} follows default argument")
        seen_default = seen_default or has_default
    attrs: dict[str, Any] = {
        "__dataclass_fields__": fields,
        "__match_args__": tuple(f.name for f in every if f.init),
        "_record_key": _key_of(tuple(f.name for f in every if f.compare)),
        "_record_shown": tuple(f.name for f in every if f.repr),
    }
    if frozen:
        attrs["__setattr__"] = _refuse_set
        attrs["__delattr__"] = _refuse_delete
    else:
        # as dataclass: a mutable record compared by value has no hash; its state is more
        # than its __init__'s arguments, so it pickles as any object does
        attrs["__hash__"] = None if eq else object.__hash__
        attrs["__reduce__"] = object.__reduce__
        if not eq:
            attrs["__eq__"] = object.__eq__
    if slots:
        body = dict(cls.__dict__)
        for f in own:
            body.pop(f.name, None)  # a class attribute would shadow the slot (defaults: __init__)
        body.pop("__dict__", None)
        body.pop("__weakref__", None)
        body["__slots__"] = tuple(f.name for f in own)
        body.update(attrs)
        qualname = cls.__qualname__
        meta: Callable[..., type] = type(cls)  # ABCMeta for wire events
        cls = meta(cls.__name__, cls.__bases__, body)
        cls.__qualname__ = qualname
    else:
        for f in own:  # as dataclass leaves them: the default as a class attribute, or none
            if isinstance(cls.__dict__.get(f.name), dataclasses.Field):
                if f.default is dataclasses.MISSING:
                    delattr(cls, f.name)
                else:
                    setattr(cls, f.name, f.default)
        for name, value in attrs.items():
            setattr(cls, name, value)
    init = _make_init(cls, every, slots, frozen)
    if init is not None:
        cls.__init__ = init  # type: ignore[misc]
    return cls


@overload
def frozen(cls: _C, /) -> _C: ...
@overload
def frozen(*, slots: bool = True) -> Callable[[_C], _C]: ...
@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def frozen(cls: _C | None = None, /, *, slots: bool = True) -> _C | Callable[[_C], _C]:
    """Make ``cls`` (a subclass of :class:`Record` with annotated fields) a frozen record, as
    ``@dataclass(frozen=True, slots=slots)`` would; ``slots=False`` keeps a ``__dict__``
    (for ``functools.cached_property``, or a public class that always had one)."""
    if cls is None:
        return lambda c: _build(c, slots)  # type: ignore[return-value]
    return _build(cls, slots)


@overload
def mutable(cls: _C, /) -> _C: ...
@overload
def mutable(*, eq: bool = True, slots: bool = False) -> Callable[[_C], _C]: ...
@dataclass_transform(field_specifiers=(dataclasses.field,))
def mutable(
    cls: _C | None = None, /, *, eq: bool = True, slots: bool = False
) -> _C | Callable[[_C], _C]:
    """Make ``cls`` (a subclass of :class:`Record`) a mutable record, as ``@dataclass(eq=eq,
    slots=slots)`` would: fields assignable, compared by value and unhashable (``eq=False``:
    compared and hashed by identity)."""
    if cls is None:
        return lambda c: _build(c, slots, False, eq)  # type: ignore[return-value]
    return _build(cls, slots, False, eq)
