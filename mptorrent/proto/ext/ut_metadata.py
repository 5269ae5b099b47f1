"""BEP 9, ut_metadata: fetching the info dictionary from peers, and serving it.

A magnet link gives only the info-hash.  Peers that have the torrent say so in
their extended handshake (``m`` has ``ut_metadata``, ``metadata_size`` is the
length of the bencoded info dictionary); the dictionary is then asked for in
16 KiB pieces.  Every message is a bencoded dictionary (``msg_type``: 0
request, 1 data, 2 reject; ``piece``; ``total_size`` on data), and a data
message carries the piece's raw bytes right after it.

Three parts, all sans-IO:

* the codec (:func:`decode_message`, :func:`encode_request`,
  :func:`encode_data`, :func:`encode_reject`) and the per-connection
  :class:`UtMetadata` handler, which turns the peer's messages into
  :class:`MetadataRequested`, :class:`MetadataPieceReceived` and
  :class:`MetadataRejected` events;
* :class:`MetadataAssembler`, one per download, fed by every connection: which
  piece to ask which peer for next, time-outs (the clock is an argument),
  rejects, bad pieces, and the SHA-1 check of the whole dictionary against the
  info-hash before one byte of it is trusted;
* :func:`serve_request`, the answer to a peer's request when we have the
  metadata (seeding, or a fetch that has it already).

Everything the peer sends is bounded: the dictionary part of a message is at
most ``MAX_HEADER`` bytes, a piece at most 16 KiB, ``total_size`` at most
:data:`mptorrent.proto.ext.MAX_METADATA_SIZE` (10 MiB, checked before anything
is allocated).  A malformed message raises
:class:`~mptorrent.proto.wire_errors.RemoteProtocolError`, nothing else.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Hashable
from dataclasses import field
from typing import Final, Generic, TypeAlias, TypeVar

from mptorrent.errors import BencodeError
from mptorrent.proto import bencode
from mptorrent.proto.ext import MAX_METADATA_SIZE, ExtendedHandshake, ExtensionHandler
from mptorrent.proto.wire import Event
from mptorrent.proto.wire_errors import LocalProtocolError, RemoteProtocolError
from mptorrent.record import Record, frozen, mutable

__all__ = [
    "MAX_HEADER",
    "MAX_METADATA_PIECES",
    "MAX_METADATA_SIZE",
    "METADATA_PIECE",
    "NAME",
    "MetadataAssembler",
    "MetadataMismatch",
    "MetadataPieceReceived",
    "MetadataRejected",
    "MetadataRequested",
    "MetadataVerified",
    "MsgType",
    "PieceIgnored",
    "PieceRefused",
    "PieceStored",
    "UtMetadata",
    "decode_message",
    "encode_data",
    "encode_reject",
    "encode_request",
    "piece_count",
    "piece_length",
    "serve_request",
]

NAME: Final = "ut_metadata"
METADATA_PIECE: Final = 16 * 1024  # BEP 9: every piece but the last is this long
MAX_METADATA_PIECES: Final = -(-MAX_METADATA_SIZE // METADATA_PIECE)
# The dictionary before a piece's bytes: libtorrent's is ~50 bytes; room for keys
# we do not know, and no more.
MAX_HEADER: Final = 512
_TRAILING: Final = "trailing data after the value"  # bencode.scan's reason, with the offset


class MsgType(enum.IntEnum):
    """BEP 9's ``msg_type`` values; a message of any other type is ignored, not refused."""

    REQUEST = 0
    DATA = 1
    REJECT = 2


def piece_count(metadata_size: int) -> int:
    """How many 16 KiB pieces ``metadata_size`` bytes of metadata make."""
    return -(-metadata_size // METADATA_PIECE)


def piece_length(metadata_size: int, piece: int) -> int:
    """The length of piece ``piece`` of ``metadata_size`` bytes (the last may be short)."""
    return min(METADATA_PIECE, metadata_size - piece * METADATA_PIECE)


# -- events -----------------------------------------------------------------------------


@frozen
class MetadataRequested(Event):
    """The peer asks us for piece ``piece`` of the metadata (answer: :func:`serve_request`)."""

    piece: int


@frozen
class MetadataPieceReceived(Event):
    """A piece of the metadata, checked against ``total_size`` (feed it to the assembler)."""

    piece: int
    total_size: int
    data: bytes

    def __repr__(self) -> str:
        return (
            f"MetadataPieceReceived(piece={self.piece}, total_size={self.total_size}, "
            f"data=<{len(self.data)} bytes>)"
        )


@frozen
class MetadataRejected(Event):
    """The peer will not send piece ``piece`` (it may not have the metadata)."""

    piece: int


MetadataMessage: TypeAlias = MetadataRequested | MetadataPieceReceived | MetadataRejected


# -- the codec --------------------------------------------------------------------------


def _bad(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"ut_metadata: {reason}")


def _header(payload: bytes) -> tuple[dict[bytes, bencode.BValue], int]:
    """The leading dictionary of ``payload`` and where it ends."""
    head = payload[:MAX_HEADER]
    try:
        bencode.scan(head, max_size=MAX_HEADER, max_depth=4, max_tokens=64)
        end = len(head)
    except BencodeError as exc:
        if exc.reason != _TRAILING or exc.offset is None:
            cut = len(payload) > MAX_HEADER
            hint = f" (the dictionary must end within {MAX_HEADER} bytes)" if cut else ""
            raise _bad(f"{exc}{hint}") from None
        end = exc.offset  # the dictionary ended there; a data message's bytes follow
    try:
        top = bencode.decode(head[:end], max_size=MAX_HEADER, max_depth=4, max_tokens=64)
    except BencodeError as exc:  # pragma: no cover - the scan above passed
        raise _bad(str(exc)) from None
    if not isinstance(top, dict):
        raise _bad("not a dictionary")
    return top, end


def _int(top: dict[bytes, bencode.BValue], key: bytes, low: int, high: int) -> int:
    value = top.get(key)
    if value is None:
        raise _bad(f"no {key.decode()!r}")
    if type(value) is not int:
        raise _bad(f"{key.decode()!r} is not an integer")
    if not low <= value <= high:
        raise _bad(f"{key.decode()!r} {value} is outside {low}..{high}")
    return value


def decode_message(payload: bytes) -> MetadataMessage | None:
    """One ut_metadata message, None for a ``msg_type`` we do not know (BEP 9: ignored).

    A data message's bytes must be exactly the length its ``piece`` has in
    ``total_size``; request and reject carry nothing after the dictionary.
    """
    top, end = _header(payload)
    msg_type = top.get(b"msg_type")
    if type(msg_type) is not int:
        raise _bad("'msg_type' is missing or not an integer")
    if msg_type not in (MsgType.REQUEST, MsgType.DATA, MsgType.REJECT):
        return None
    piece = _int(top, b"piece", 0, MAX_METADATA_PIECES - 1)
    extra = len(payload) - end
    if msg_type != MsgType.DATA:
        if extra:
            raise _bad(f"{extra} bytes after a {MsgType(msg_type).name.lower()} message")
        return MetadataRequested(piece) if msg_type == MsgType.REQUEST else MetadataRejected(piece)
    total = _int(top, b"total_size", 1, MAX_METADATA_SIZE)
    count = piece_count(total)
    if piece >= count:
        raise _bad(f"piece {piece} of metadata with {count} pieces")
    expected = piece_length(total, piece)
    if extra != expected:
        raise _bad(f"piece {piece} has {extra} bytes, not {expected}")
    return MetadataPieceReceived(piece, total, payload[end:])


def encode_request(piece: int) -> bytes:
    _check_piece(piece)
    return bencode.encode({b"msg_type": MsgType.REQUEST.value, b"piece": piece})


def encode_reject(piece: int) -> bytes:
    _check_piece(piece)
    return bencode.encode({b"msg_type": MsgType.REJECT.value, b"piece": piece})


def encode_data(piece: int, total_size: int, data: bytes) -> bytes:
    """A data message; raises :class:`LocalProtocolError` for what a peer would refuse."""
    _check_piece(piece)
    if not 0 < total_size <= MAX_METADATA_SIZE:
        raise LocalProtocolError(f"metadata size {total_size} is outside 1..{MAX_METADATA_SIZE}")
    if piece >= piece_count(total_size) or len(data) != piece_length(total_size, piece):
        raise LocalProtocolError(f"{len(data)} bytes are not piece {piece} of {total_size}")
    head = {b"msg_type": MsgType.DATA.value, b"piece": piece, b"total_size": total_size}
    return bencode.encode(head) + bytes(data)


def _check_piece(piece: int) -> None:
    if not 0 <= piece < MAX_METADATA_PIECES:
        raise LocalProtocolError(f"metadata piece {piece} is outside 0..{MAX_METADATA_PIECES - 1}")


def serve_request(info: bytes | None, piece: int) -> bytes:
    """The payload that answers a peer's request for ``piece``: the piece of the
    raw info dictionary ``info``, or a reject when we have no metadata yet or the
    piece is past its end (libtorrent rejects those too, it does not disconnect)."""
    if info is None or not 0 < len(info) <= MAX_METADATA_SIZE or piece >= piece_count(len(info)):
        return encode_reject(piece)
    start = piece * METADATA_PIECE
    return encode_data(piece, len(info), info[start : start + METADATA_PIECE])


# -- the handler ------------------------------------------------------------------------


class UtMetadata(ExtensionHandler):
    """ut_metadata on one connection: the peer's messages as events.

    After the peer's extended handshake, :attr:`peer_id` is the id to send our
    messages under (0: it does not speak ut_metadata) and :attr:`metadata_size`
    the size it announced (None: it did not say, so it has nothing to give).
    """

    name = NAME

    def __init__(self) -> None:
        self.peer_id = 0
        self.metadata_size: int | None = None

    def receive(self, payload: bytes) -> Event | None:
        return decode_message(payload)

    def peer_handshake(self, handshake: ExtendedHandshake, peer_id: int) -> None:
        self.peer_id = peer_id
        if handshake.metadata_size is not None:
            self.metadata_size = handshake.metadata_size


# -- the assembler ----------------------------------------------------------------------

P = TypeVar("P", bound=Hashable)

REQUEST_TIMEOUT: Final = 10.0  # seconds a peer has to answer one request
MAX_OUTSTANDING: Final = 2  # requests in flight per peer: a piece is 16 KiB, latency dominates
MAX_TIMEOUTS: Final = 2  # a peer that lets this many requests expire is asked no more


@frozen
class PieceStored(Record, Generic[P]):
    """A piece was kept; ``remaining`` pieces are still missing."""

    peer: P
    piece: int
    remaining: int


@frozen
class PieceIgnored(Record, Generic[P]):
    """Harmless and dropped: not asked for, already held, from an excluded peer."""

    peer: P
    piece: int
    reason: str


@frozen
class PieceRefused(Record, Generic[P]):
    """The peer sent a piece that cannot be right (wrong ``total_size``, out of
    range, wrong length): it is excluded from the metadata fetch; penalise it."""

    peer: P
    piece: int
    reason: str


@frozen
class MetadataVerified(Record, Generic[P]):
    """The whole info dictionary, its SHA-1 equal to the info-hash."""

    info: bytes
    peers: frozenset[P]  # who sent its pieces

    def __repr__(self) -> str:
        return f"MetadataVerified(info=<{len(self.info)} bytes>, peers={set(self.peers)!r})"


@frozen
class MetadataMismatch(Record, Generic[P]):
    """The pieces joined do not hash to the info-hash: all were discarded.

    ``culprit`` is set when one peer sent every piece: it is certainly lying and
    is excluded.  Otherwise any of ``peers`` may be; the next round then takes
    every piece from a single peer, so a second failure names the liar.
    """

    peers: frozenset[P]
    culprit: P | None


Outcome: TypeAlias = (
    PieceStored[P] | PieceIgnored[P] | PieceRefused[P] | MetadataVerified[P] | MetadataMismatch[P]
)


@mutable(slots=True)
class _PeerState(Record):
    """The assembler's view of one peer: requests in flight and their deadlines, what it was asked
    this round and refused, and its expired requests (too many: asked no more)."""

    outstanding: dict[int, float] = field(default_factory=dict)  # piece -> deadline
    asked: set[int] = field(default_factory=set)  # this round; late answers still count
    rejected: set[int] = field(default_factory=set)
    timeouts: int = 0


class MetadataAssembler(Generic[P]):
    """Fetch one info dictionary from several peers at once; sans-IO.

    ``P`` is whatever identifies a peer to the caller (a ``PeerAddr``, a
    connection id).  The caller registers peers that announced ``metadata_size``
    (:meth:`add_peer`), asks :meth:`next_requests` what to send each, and feeds
    back what came: :meth:`received`, :meth:`rejected`, :meth:`expire` with the
    current time (:meth:`next_deadline` says when that is next due), and
    :meth:`remove_peer` when a connection ends.
    """

    def __init__(
        self,
        info_hash: bytes,
        metadata_size: int,
        *,
        timeout: float = REQUEST_TIMEOUT,
        max_outstanding: int = MAX_OUTSTANDING,
        info_hash_v2: bytes | None = None,
    ) -> None:
        if len(info_hash) != 20:
            raise LocalProtocolError("info_hash must be 20 bytes")
        if info_hash_v2 is not None and len(info_hash_v2) != 32:
            raise LocalProtocolError("info_hash_v2 must be 32 bytes")
        # BEP 52: the metadata must hash to the v2 info-hash (SHA-256) where there is one, and
        # to the v1 one (SHA-1) unless the 20-byte hash is only the v2 one cut short.
        self.info_hash_v2 = info_hash_v2
        self._check_v1 = info_hash_v2 is None or info_hash != info_hash_v2[:20]
        # The size comes from a peer's handshake: refused before anything is allocated.
        if not 0 < metadata_size <= MAX_METADATA_SIZE:
            raise RemoteProtocolError(
                f"ut_metadata: metadata_size {metadata_size} is outside 1..{MAX_METADATA_SIZE}"
            )
        self.info_hash = bytes(info_hash)
        self.size = metadata_size
        self.count = piece_count(metadata_size)
        self._timeout = timeout
        self._max_outstanding = max_outstanding
        self._pieces: list[bytes | None] = [None] * self.count
        self._senders: list[P | None] = [None] * self.count
        self._missing = self.count
        self._peers: dict[P, _PeerState] = {}
        self._excluded: set[P] = set()
        self._single_source = False  # after a mismatch among several senders
        self._source: P | None = None
        self._done = False

    # -- state -------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self._done

    @property
    def missing(self) -> int:
        return self._missing

    @property
    def peers(self) -> frozenset[P]:
        """Peers that may still be asked."""
        return frozenset(self._peers)

    def excluded(self, peer: P) -> bool:
        return peer in self._excluded

    def useful(self, peer: P) -> bool:
        """Whether ``peer`` could still be asked for something."""
        state = self._peers.get(peer)
        return state is not None and not self._done and bool(self._askable(state))

    def next_deadline(self) -> float | None:
        """When the earliest outstanding request expires (call :meth:`expire` then)."""
        deadlines = [d for st in self._peers.values() for d in st.outstanding.values()]
        return min(deadlines, default=None)

    # -- peers -------------------------------------------------------------------------

    def add_peer(self, peer: P, metadata_size: int | None = None) -> bool:
        """Register a peer that speaks ut_metadata; False if it cannot help
        (excluded, or it announced a different ``metadata_size``)."""
        if peer in self._excluded or self._done:
            return False
        if metadata_size is not None and metadata_size != self.size:
            return False
        self._peers.setdefault(peer, _PeerState())
        return True

    def remove_peer(self, peer: P) -> None:
        """The connection ended; its outstanding pieces go back to the pool."""
        self._peers.pop(peer, None)
        if peer == self._source:
            self._restart_round()

    def _exclude(self, peer: P) -> None:
        self._excluded.add(peer)
        self.remove_peer(peer)

    # -- requests ----------------------------------------------------------------------

    def _askable(self, state: _PeerState) -> list[int]:
        busy = {p for st in self._peers.values() for p in st.outstanding}
        return [
            i
            for i in range(self.count)
            if self._pieces[i] is None and i not in busy and i not in state.rejected
        ]

    def next_requests(self, peer: P, now: float) -> list[int]:
        """The pieces to request from ``peer`` now (maybe none); they count as
        outstanding until answered, rejected, expired or the peer is removed."""
        state = self._peers.get(peer)
        if state is None or self._done:
            return []
        if self._single_source:
            if self._source is None:
                if state.rejected:
                    return []  # it cannot give every piece
                self._source = peer
            elif self._source != peer:
                return []
        room = self._max_outstanding - len(state.outstanding)
        if room <= 0:
            return []
        pieces = self._askable(state)[:room]
        for i in pieces:
            state.outstanding[i] = now + self._timeout
            state.asked.add(i)
        return pieces

    def rejected(self, peer: P, piece: int) -> None:
        """The peer rejected ``piece``: it is not asked for that piece again."""
        state = self._peers.get(peer)
        if state is None or not 0 <= piece < self.count:
            return
        state.outstanding.pop(piece, None)
        state.rejected.add(piece)
        if peer == self._source:
            self._restart_round()

    def expire(self, now: float) -> list[tuple[P, int]]:
        """Requests past their deadline, now back in the pool; a peer that let
        ``MAX_TIMEOUTS`` expire is excluded (the caller may drop it)."""
        expired: list[tuple[P, int]] = []
        for peer, state in list(self._peers.items()):
            late = [i for i, deadline in state.outstanding.items() if deadline <= now]
            for i in late:
                del state.outstanding[i]
                expired.append((peer, i))
            if late:
                state.timeouts += 1
                if state.timeouts >= MAX_TIMEOUTS:
                    self._exclude(peer)
                elif peer == self._source:
                    self._restart_round()
        return expired

    # -- answers -----------------------------------------------------------------------

    def received(self, peer: P, piece: int, total_size: int, data: bytes) -> Outcome[P]:
        """A data message from ``peer``; see the outcome classes for what follows."""
        state = self._peers.get(peer)
        if self._done:
            return PieceIgnored(peer, piece, "the metadata is complete")
        if state is None:
            return PieceIgnored(peer, piece, "not a peer of this metadata fetch")
        if total_size != self.size:
            return self._refuse(peer, piece, f"total_size {total_size}, not {self.size}")
        if not 0 <= piece < self.count:
            return self._refuse(peer, piece, f"piece {piece} of {self.count}")
        expected = piece_length(self.size, piece)
        if len(data) != expected:
            return self._refuse(peer, piece, f"piece {piece} has {len(data)} bytes, not {expected}")
        if piece not in state.asked:
            return PieceIgnored(peer, piece, "not requested")
        state.outstanding.pop(piece, None)
        if self._pieces[piece] is not None:
            return PieceIgnored(peer, piece, "already received")
        self._pieces[piece] = bytes(data)
        self._senders[piece] = peer
        # Asked again elsewhere after a time-out: that request is moot now (BEP 9 has
        # no cancel), so its expiry must not count against the other peer.
        for other in self._peers.values():
            other.outstanding.pop(piece, None)
        self._missing -= 1
        if self._missing:
            return PieceStored(peer, piece, self._missing)
        return self._verify()

    def _matches(self, info: bytes) -> bool:
        if self._check_v1 and hashlib.sha1(info).digest() != self.info_hash:
            return False
        v2 = self.info_hash_v2
        return v2 is None or hashlib.sha256(info).digest() == v2

    def _refuse(self, peer: P, piece: int, reason: str) -> PieceRefused[P]:
        self._exclude(peer)
        return PieceRefused(peer, piece, reason)

    def _verify(self) -> MetadataVerified[P] | MetadataMismatch[P]:
        info = b"".join(p for p in self._pieces if p is not None)
        senders = frozenset(s for s in self._senders if s is not None)
        if self._matches(info):
            self._done = True
            for state in self._peers.values():
                state.outstanding.clear()
            return MetadataVerified(info, senders)
        culprit = next(iter(senders)) if len(senders) == 1 else None
        if culprit is not None:
            self._excluded.add(culprit)
            self._peers.pop(culprit, None)
        else:
            self._single_source = True
        self._restart_round()
        return MetadataMismatch(senders, culprit)

    def _restart_round(self) -> None:
        """Forget every piece and request: after a mismatch, or when the single
        source of a round can no longer finish it."""
        self._pieces = [None] * self.count
        self._senders = [None] * self.count
        self._missing = self.count
        self._source = None
        for state in self._peers.values():
            state.outstanding.clear()
            state.asked.clear()
