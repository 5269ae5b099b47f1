"""BEP 11, ut_pex: peers learn peers from peers.

A ut_pex message is a bencoded dictionary of compact peer lists: ``added``
(6 bytes per IPv4 peer), ``added.f`` (one flag byte per added peer),
``added6``/``added6.f`` (18 bytes per IPv6 peer), ``dropped``/``dropped6``.
Each side sends the changes in its set of connected peers at most once a
minute.

Two parts, sans-IO:

* the codec (:func:`decode_pex`, :func:`encode_pex`) and the per-connection
  :class:`UtPex` handler, whose event is :class:`PexPeers`;
* :class:`PexState`, the sending side for one connection: given the peers we
  are connected to and the time, the next message to send, if one is due.

Limits (our choice, matching what common clients send: libtorrent and
qBittorrent send a few dozen entries per message):

* a payload over ``MAX_PEX_SIZE`` (16 KiB, room for ~100 entries of each
  kind of both families twice over) is a protocol error: no honest client
  sends one;
* within it, at most ``MAX_ADDED`` (50) added and ``MAX_DROPPED`` (50) dropped
  peers are taken per message, IPv4 first; the rest are ignored (truncated,
  not refused: a generous but honest peer keeps its connection);
* a list whose length is not a multiple of its entry size, or a flag string
  whose length is not the number of peers it describes, is a protocol error.

Entries with port 0 or an address no peer can have (unspecified, multicast,
broadcast) are skipped.  Private and loopback addresses are kept (tests run on
loopback); leaving out our own address is the caller's job, as it is for
tracker replies.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import Final, NamedTuple

from mptorrent.errors import BencodeError
from mptorrent.messages import PeerAddr
from mptorrent.proto import bencode
from mptorrent.proto.ext import ExtendedHandshake, ExtensionHandler
from mptorrent.proto.wire import Event
from mptorrent.proto.wire_errors import RemoteProtocolError
from mptorrent.record import frozen

__all__ = [
    "MAX_ADDED",
    "MAX_DROPPED",
    "MAX_PEX_SIZE",
    "NAME",
    "PEX_INTERVAL",
    "PexFlags",
    "PexPeer",
    "PexPeers",
    "PexState",
    "UtPex",
    "decode_pex",
    "encode_pex",
]

NAME: Final = "ut_pex"
MAX_PEX_SIZE: Final = 16 * 1024
MAX_ADDED: Final = 50
MAX_DROPPED: Final = 50
PEX_INTERVAL: Final = 60.0  # BEP 11: at most one message a minute
_V4, _V6 = 6, 18  # compact entry sizes
_port = struct.Struct("!H")


class PexFlags(enum.IntFlag):
    """BEP 11's one flag byte per added peer."""

    ENCRYPTION = 0x01  # prefers encrypted connections
    SEED = 0x02  # seed or upload-only
    UTP = 0x04  # supports uTP
    HOLEPUNCH = 0x08  # supports ut_holepunch
    REACHABLE = 0x10  # accepts incoming connections (the sender connected to it)


class PexPeer(NamedTuple):
    """One ``added`` entry of a ut_pex message: a usable address and the sender's flags for it (none
    when the message carried no flag string)."""

    addr: PeerAddr
    flags: PexFlags = PexFlags(0)


@frozen
class PexPeers(Event):
    """Peers the sender connected to (``added``) and lost (``dropped``) since its
    last message, capped at ``MAX_ADDED`` and ``MAX_DROPPED``."""

    added: tuple[PexPeer, ...] = ()
    dropped: tuple[PeerAddr, ...] = ()


# -- the codec --------------------------------------------------------------------------


def _bad(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"ut_pex: {reason}")


def _blob(top: Mapping[bytes, bencode.BValue], key: bytes) -> bytes:
    value = top.get(key, b"")
    if not isinstance(value, bytes):
        raise _bad(f"{key.decode()!r} is not a string")
    return value


def _entries(blob: bytes, key: bytes, size: int) -> Iterator[PeerAddr | None]:
    """The entries of a compact list, lazily (a caller stops at its cap); None where no
    peer can live, so that flags stay aligned.  The length is checked up front."""
    if len(blob) % size:
        raise _bad(f"{key.decode()!r} is {len(blob)} bytes, not a multiple of {size}")
    return _walk(blob, size)


def _walk(blob: bytes, size: int) -> Iterator[PeerAddr | None]:
    for off in range(0, len(blob), size):
        (port,) = _port.unpack_from(blob, off + size - 2)
        raw = blob[off : off + size - 2]
        ip = ipaddress.IPv4Address(raw) if size == _V4 else ipaddress.IPv6Address(raw)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        unusable = ip.is_unspecified or ip.is_multicast or str(ip) == "255.255.255.255"
        yield None if port == 0 or unusable else PeerAddr(str(ip), port)


def _flags(top: Mapping[bytes, bencode.BValue], key: bytes, count: int) -> bytes:
    if key not in top:
        return bytes(count)  # flags are optional; none known
    blob = _blob(top, key)
    if len(blob) != count:
        raise _bad(f"{key.decode()!r} has {len(blob)} bytes for {count} peers")
    return blob


def decode_pex(payload: bytes) -> PexPeers:
    """One ut_pex message, or :class:`RemoteProtocolError`; unknown keys are ignored."""
    try:
        top = bencode.decode(payload, max_size=MAX_PEX_SIZE, max_depth=4, max_tokens=256)
    except BencodeError as exc:
        raise _bad(str(exc)) from None
    if not isinstance(top, dict):
        raise _bad("not a dictionary")
    added: dict[PeerAddr, PexPeer] = {}
    for key, size in ((b"added", _V4), (b"added6", _V6)):
        blob = _blob(top, key)
        entries = _entries(blob, key, size)
        flags = _flags(top, key + b".f", len(blob) // size)
        for addr, flag in zip(entries, flags, strict=False):
            if len(added) >= MAX_ADDED:
                break  # truncated: see the module docstring
            if addr is not None:
                # Bits BEP 11 does not define are dropped, not kept as unknown flags.
                added.setdefault(addr, PexPeer(addr, PexFlags(flag & 0x1F)))
    dropped: dict[PeerAddr, None] = {}
    for key, size in ((b"dropped", _V4), (b"dropped6", _V6)):
        for addr in _entries(_blob(top, key), key, size):
            if len(dropped) >= MAX_DROPPED:
                break
            if addr is not None:
                dropped.setdefault(addr, None)
    return PexPeers(tuple(added.values()), tuple(dropped))


def _pack(addr: PeerAddr) -> tuple[int, bytes] | None:
    """(entry size, compact entry), or None for a host that is not an IP literal."""
    try:
        ip = ipaddress.ip_address(addr.host)
    except ValueError:
        return None
    if not 0 < addr.port <= 0xFFFF:
        return None
    size = _V4 if ip.version == 4 else _V6
    return size, ip.packed + _port.pack(addr.port)


def encode_pex(added: Iterable[PexPeer] = (), dropped: Iterable[PeerAddr] = ()) -> bytes:
    """The payload of a ut_pex message; hosts that are not IP literals are left out."""
    lists: dict[bytes, bytearray] = {
        k: bytearray()
        for k in (b"added", b"added.f", b"added6", b"added6.f", b"dropped", b"dropped6")
    }
    for peer in added:
        packed = _pack(peer.addr)
        if packed is not None:
            key = b"added" if packed[0] == _V4 else b"added6"
            lists[key] += packed[1]
            lists[key + b".f"].append(int(peer.flags) & 0xFF)
    for addr in dropped:
        packed = _pack(addr)
        if packed is not None:
            lists[b"dropped" if packed[0] == _V4 else b"dropped6"] += packed[1]
    # libtorrent always sends added, added.f and dropped; the IPv6 lists only when used
    top = {k: bytes(v) for k, v in lists.items() if v or b"6" not in k}
    return bencode.encode(top)


# -- the handler ------------------------------------------------------------------------


class UtPex(ExtensionHandler):
    """ut_pex on one connection: the peer's messages as :class:`PexPeers` events.

    :attr:`peer_id` is the id to send ours under (0: the peer does not speak
    ut_pex).  Private torrents (BEP 27) must not register this handler.
    """

    name = NAME

    def __init__(self) -> None:
        self.peer_id = 0

    def receive(self, payload: bytes) -> Event | None:
        return decode_pex(payload)

    def peer_handshake(self, handshake: ExtendedHandshake, peer_id: int) -> None:
        self.peer_id = peer_id


# -- the sending side -------------------------------------------------------------------


class PexState:
    """What one connection's peer has been told; the next ut_pex message to send it.

    Call :meth:`update` as often as convenient with the peers we are connected
    to now (and their flags); it returns a payload at most once per
    ``interval`` seconds, and only when something changed.  At most
    ``max_added`` added and ``max_dropped`` dropped peers go in one message;
    the rest wait for the next.  ``exclude`` (the peer this connection goes to)
    is never sent.
    """

    def __init__(
        self,
        exclude: PeerAddr | None = None,
        *,
        interval: float = PEX_INTERVAL,
        max_added: int = MAX_ADDED,
        max_dropped: int = MAX_DROPPED,
    ) -> None:
        self._exclude = exclude
        self._interval = interval
        self._max_added = max_added
        self._max_dropped = max_dropped
        self._told: dict[PeerAddr, PexFlags] = {}
        self._last: float | None = None

    @property
    def told(self) -> Mapping[PeerAddr, PexFlags]:
        """The peers this connection's peer was last told we are connected to."""
        return dict(self._told)

    def due(self, now: float) -> bool:
        return self._last is None or now - self._last >= self._interval

    def update(self, connected: Mapping[PeerAddr, PexFlags], now: float) -> bytes | None:
        """The payload to send now, or None (too soon, or nothing changed)."""
        if not self.due(now):
            return None
        current = {
            a: f for a, f in connected.items() if a != self._exclude and _pack(a) is not None
        }
        added = [PexPeer(a, f) for a, f in current.items() if a not in self._told]
        added = added[: self._max_added]
        dropped = [a for a in self._told if a not in current][: self._max_dropped]
        if not added and not dropped:
            return None
        for addr in dropped:
            del self._told[addr]
        for peer in added:
            self._told[peer.addr] = peer.flags
        self._last = now
        return encode_pex(added, dropped)
