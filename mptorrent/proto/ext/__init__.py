"""BEP 10, the extension protocol: the extended handshake and the router.

Once both handshakes set the BEP 10 bit, either side may send Extended messages
(wire message id 20).  Their first byte is an extension id: 0 is the extended
handshake, a bencoded dictionary whose ``m`` maps extension names to the ids the
*sender* wants to receive them under; any other id is a message of the
extension the receiver advertised under that id.

:class:`ExtensionRouter` is one connection's view of that: it numbers our
handlers (:class:`ExtensionHandler`, one module per extension under this
package: ``ut_metadata`` for BEP 9, ``ut_pex`` for BEP 11), builds our
handshake, remembers the peer's ids, and hands each received message to the
handler it names.  Attach it to the connection
(``Connection(..., extensions=router)`` or ``conn.extensions = router``) and
its events come out of ``next_event()``.

Sans-IO like the rest of :mod:`mptorrent.proto`.  Everything the peer sends is
bounded and validated: it yields an event or raises
:class:`~mptorrent.proto.wire.RemoteProtocolError`, never another exception.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import field
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, ClassVar, Final

from mptorrent.errors import BencodeError
from mptorrent.proto import bencode
from mptorrent.proto.wire import Event, Extended, LocalProtocolError, RemoteProtocolError
from mptorrent.record import frozen

__all__ = [
    "HANDSHAKE_ID",
    "MAX_CLIENT_BYTES",
    "MAX_EXTENSIONS",
    "MAX_HANDSHAKE_SIZE",
    "MAX_METADATA_SIZE",
    "MAX_NAME_BYTES",
    "MAX_REQQ",
    "ExtendedHandshake",
    "ExtensionHandler",
    "ExtensionRouter",
    "decode_handshake",
    "encode_handshake",
]

HANDSHAKE_ID: Final = 0
# Real handshakes are a few hundred bytes (libtorrent's, with a dozen extensions,
# stays under 1 KiB); everything past these bounds is refused, not truncated.
MAX_HANDSHAKE_SIZE: Final = 16 * 1024
MAX_HANDSHAKE_DEPTH: Final = 8  # m is at depth 2; room for values we do not know
MAX_HANDSHAKE_TOKENS: Final = 4096
MAX_EXTENSIONS: Final = 64  # names the peer may have advertised, over all its handshakes
MAX_NAME_BYTES: Final = 64
MAX_CLIENT_BYTES: Final = 256  # ``v``
MAX_METADATA_SIZE: Final = bencode.MAX_TORRENT_SIZE  # no info dict outgrows a .torrent
MAX_REQQ: Final = 1 << 16
_MAX_EXT_ID: Final = 255  # one byte on the wire


@frozen
class ExtendedHandshake(Event):
    """The extended handshake (BEP 10 message 0), sent and received.

    ``extensions`` is ``m``: extension name -> the id its sender receives it
    under, 0 meaning "disabled" (a later handshake changes only the names it
    lists).  The rest are optional: ``client`` is ``v``, ``port`` is ``p`` (the
    sender's listen port), ``metadata_size`` is BEP 9's, ``reqq`` the number of
    outstanding requests the sender allows, ``yourip`` the receiver's address as
    the sender sees it (4 or 16 bytes on the wire).  Other keys are ignored on
    receipt, and so is a ``yourip`` that is not 4 or 16 bytes: it is only a hint
    about our own address, nothing to drop a peer for.
    """

    extensions: Mapping[str, int] = field(default_factory=dict)
    client: str | None = None
    port: int | None = None
    metadata_size: int | None = None
    reqq: int | None = None
    yourip: IPv4Address | IPv6Address | None = None


def _bad(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"extended handshake: {reason}")


def _int_in(top: dict[Any, Any], key: bytes, low: int, high: int) -> int | None:
    value = top.get(key)
    if value is None:
        return None
    if type(value) is not int:
        raise _bad(f"{key.decode()!r} is not an integer")
    if not low <= value <= high:
        raise _bad(f"{key.decode()!r} {value} is outside {low}..{high}")
    return value


def _name(raw: object) -> str:
    if not isinstance(raw, bytes) or not 0 < len(raw) <= MAX_NAME_BYTES:
        raise _bad(f"extension name is not 1 to {MAX_NAME_BYTES} bytes")
    if not (raw.isascii() and raw.decode().isprintable()):
        raise _bad(f"extension name {raw!r} is not printable ASCII")
    return raw.decode()


def _yourip(raw: object) -> IPv4Address | IPv6Address | None:
    if isinstance(raw, bytes) and len(raw) in (4, 16):
        return ip_address(raw)
    return None


def decode_handshake(payload: bytes) -> ExtendedHandshake:
    """The peer's extended handshake, or :class:`RemoteProtocolError`."""
    try:
        top = bencode.decode(
            payload,
            max_size=MAX_HANDSHAKE_SIZE,
            max_depth=MAX_HANDSHAKE_DEPTH,
            max_tokens=MAX_HANDSHAKE_TOKENS,
            max_string=MAX_HANDSHAKE_SIZE,
        )
    except BencodeError as exc:
        raise _bad(str(exc)) from None
    if not isinstance(top, dict):
        raise _bad("not a dictionary")
    m = top.get(b"m", {})
    if not isinstance(m, dict):
        raise _bad("'m' is not a dictionary")
    if len(m) > MAX_EXTENSIONS:
        raise _bad(f"{len(m)} extensions, over the limit of {MAX_EXTENSIONS}")
    extensions: dict[str, int] = {}
    for raw, ext_id in m.items():
        name = _name(raw)
        if type(ext_id) is not int or not 0 <= ext_id <= _MAX_EXT_ID:
            raise _bad(f"id of {name!r} is not an integer in 0..{_MAX_EXT_ID}")
        extensions[name] = ext_id
    raw_client = top.get(b"v")
    client: str | None = None
    if raw_client is not None:
        if not isinstance(raw_client, bytes) or len(raw_client) > MAX_CLIENT_BYTES:
            raise _bad(f"'v' is not a string of at most {MAX_CLIENT_BYTES} bytes")
        client = raw_client.decode("utf-8", "replace")
    return ExtendedHandshake(
        extensions=extensions,
        client=client,
        port=_int_in(top, b"p", 1, 0xFFFF),
        metadata_size=_int_in(top, b"metadata_size", 1, MAX_METADATA_SIZE),
        reqq=_int_in(top, b"reqq", 1, MAX_REQQ),
        yourip=_yourip(top.get(b"yourip")),
    )


def encode_handshake(hs: ExtendedHandshake) -> bytes:
    """The bencoded payload of ``hs`` (keys sorted, canonical).

    Raises :class:`LocalProtocolError` for values a peer following
    :func:`decode_handshake`'s rules would refuse.
    """
    m: dict[bytes, int] = {}
    for name, ext_id in hs.extensions.items():
        raw = name.encode("ascii", "replace")
        if not 0 < len(raw) <= MAX_NAME_BYTES or not name.isascii() or not name.isprintable():
            raise LocalProtocolError(f"extension name {name!r} is not 1 to 64 printable ASCII")
        if not 0 <= ext_id <= _MAX_EXT_ID:
            raise LocalProtocolError(f"extension id {ext_id} is outside 0..{_MAX_EXT_ID}")
        m[raw] = ext_id
    top: dict[bytes, bencode.Encodable] = {b"m": m}
    checks = (
        (b"p", hs.port, 1, 0xFFFF),
        (b"metadata_size", hs.metadata_size, 1, MAX_METADATA_SIZE),
        (b"reqq", hs.reqq, 1, MAX_REQQ),
    )
    for key, value, low, high in checks:
        if value is not None:
            if not low <= value <= high:
                raise LocalProtocolError(f"{key.decode()} {value} is outside {low}..{high}")
            top[key] = value
    if hs.client is not None:
        top[b"v"] = hs.client.encode()
    if hs.yourip is not None:
        top[b"yourip"] = hs.yourip.packed  # 4 or 16 bytes by construction
    data = bencode.encode(top)
    if len(data) > MAX_HANDSHAKE_SIZE:
        raise LocalProtocolError("extended handshake is too large")
    return data


class ExtensionHandler(ABC):
    """One extension's side of one connection; a subclass per extension module.

    ``name`` is the key in ``m`` (``"ut_metadata"``).  :meth:`receive` gets the
    payload of every message the peer sends under the id we advertised for it
    and returns an event for the caller (or None); it must raise
    :class:`RemoteProtocolError` for anything it refuses, and nothing else.
    """

    name: ClassVar[str]

    @abstractmethod
    def receive(self, payload: bytes) -> Event | None: ...

    def peer_handshake(self, handshake: ExtendedHandshake, peer_id: int) -> None:  # noqa: B027
        """The peer sent an extended handshake; ``peer_id`` is the id it receives
        this extension under (0: it does not, or no longer does)."""


class ExtensionRouter:
    """Both directions of BEP 10 on one connection: our ids, the peer's ids, routing.

    Our handlers get ids 1, 2, ... in the order they are registered.  The
    keyword arguments are what our handshake says besides ``m``.
    """

    __slots__ = (
        "_handlers",
        "_local_ids",
        "_peer_ids",
        "client",
        "metadata_size",
        "peer_handshake",
        "port",
        "reqq",
        "yourip",
    )

    def __init__(
        self,
        handlers: Iterable[ExtensionHandler] = (),
        *,
        client: str | None = None,
        port: int | None = None,
        metadata_size: int | None = None,
        reqq: int | None = None,
        yourip: IPv4Address | IPv6Address | None = None,
    ) -> None:
        self._handlers: dict[int, ExtensionHandler] = {}
        self._local_ids: dict[str, int] = {}
        self._peer_ids: dict[str, int] = {}
        self.client = client
        self.port = port
        self.metadata_size = metadata_size
        self.reqq = reqq
        self.yourip = yourip
        self.peer_handshake: ExtendedHandshake | None = None  # the latest received
        for handler in handlers:
            self.register(handler)

    def register(self, handler: ExtensionHandler) -> int:
        """Route ``handler.name`` to ``handler``; returns the id we advertise for it."""
        if handler.name in self._local_ids:
            raise LocalProtocolError(f"extension {handler.name!r} is already registered")
        ext_id = len(self._handlers) + 1
        if ext_id > _MAX_EXT_ID:
            raise LocalProtocolError("no extension id left")
        self._handlers[ext_id] = handler
        self._local_ids[handler.name] = ext_id
        return ext_id

    @property
    def local_ids(self) -> Mapping[str, int]:
        """Extension name -> the id the peer must send it to us under."""
        return dict(self._local_ids)

    @property
    def peer_ids(self) -> Mapping[str, int]:
        """Extension name -> the id we must send it under; enabled ones only."""
        return dict(self._peer_ids)

    def peer_supports(self, name: str) -> bool:
        return name in self._peer_ids

    # -- sending --------------------------------------------------------------

    def handshake(self) -> Extended:
        """Our extended handshake, for ``Connection.send``."""
        ours = ExtendedHandshake(
            dict(self._local_ids),
            self.client,
            self.port,
            self.metadata_size,
            self.reqq,
            self.yourip,
        )
        return Extended(HANDSHAKE_ID, encode_handshake(ours))

    def message(self, name: str, payload: bytes) -> Extended:
        """A message of extension ``name`` under the id the peer asked for."""
        ext_id = self._peer_ids.get(name)
        if ext_id is None:
            raise LocalProtocolError(f"the peer does not support {name!r}")
        return Extended(ext_id, payload)

    # -- receiving (wire.ExtendedReceiver) ------------------------------------

    def receive_extended(self, ext_id: int, payload: bytes) -> Event | None:
        """Route one received Extended message; see :class:`wire.ExtendedReceiver`.

        Ids we did not advertise come back as plain :class:`Extended` events.
        """
        if ext_id == HANDSHAKE_ID:
            return self._receive_handshake(payload)
        handler = self._handlers.get(ext_id)
        if handler is None:
            return Extended(ext_id, payload)
        return handler.receive(payload)

    def _receive_handshake(self, payload: bytes) -> ExtendedHandshake:
        hs = decode_handshake(payload)
        # BEP 10: a later handshake changes only the extensions it names.
        peer_ids = dict(self._peer_ids)
        for name, ext_id in hs.extensions.items():
            if ext_id:
                peer_ids[name] = ext_id
            else:
                peer_ids.pop(name, None)
        if len(peer_ids) > MAX_EXTENSIONS:
            raise _bad(f"more than {MAX_EXTENSIONS} extensions over all handshakes")
        if len(set(peer_ids.values())) != len(peer_ids):
            raise _bad("two extensions share one id")
        self._peer_ids = peer_ids
        self.peer_handshake = hs
        for handler in self._handlers.values():
            handler.peer_handshake(hs, peer_ids.get(handler.name, 0))
        return hs
