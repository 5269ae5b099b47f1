"""The BitTorrent peer wire protocol (BEP 3), sans-IO.

No sockets, no clock, no threads: a :class:`Connection` turns received bytes into
events and events to send into bytes, and checks both directions against the
protocol and the torrent's geometry.  Every violation by the remote side raises
:class:`RemoteProtocolError` (a :class:`mptorrent.errors.ProtocolError`);
misuse by the local caller raises :class:`LocalProtocolError` (a ``ValueError``).

Receiving is shaped like :class:`asyncio.BufferedProtocol` so that a block is
never copied between the socket and the caller's piece buffer::

    view = conn.get_buffer()            # free tail of the receive buffer
    n = sock.recv_into(view)
    conn.buffer_updated(n)
    while (event := conn.next_event()) is not NEED_DATA:
        ...                             # a Piece's block is a view into the buffer

:meth:`Connection.receive_data` is the copying convenience for tests and fuzzers.

The torrent's geometry (piece count, piece length, total length) may be given
later with :meth:`Connection.set_geometry`: a magnet download learns it only
from the metadata, which arrives over the connection itself.  Until then the
handshake and everything without a piece index flows as usual; piece state the
peer sends early is kept and checked when the geometry arrives (see
:meth:`Connection.set_geometry` for the rule).

Request bookkeeping lives in :mod:`mptorrent.proto.ledger`.  Received messages
are parsed through a table of message id -> parser method, with the Piece fast
path in front of it.

The fast extension (BEP 6) is spoken when both handshakes set its bit
(:attr:`Connection.fast_enabled`); otherwise its messages are refused on both
sides.  With it, a received Choke no longer writes off our requests: the peer
answers each with its block or a :class:`RejectRequest`, and a reject for a
block we never asked for is a protocol error (one for a block we gave up on is
dropped quietly, like its late block would be).  The extension protocol
(BEP 10) is framed here (:class:`Extended`); its payloads go
to the :class:`ExtendedReceiver` in :attr:`Connection.extensions` (the router in
:mod:`mptorrent.proto.ext`), or to the caller as :class:`Extended` events.
"""

from __future__ import annotations

import enum
import struct
from abc import ABC
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

from mptorrent.proto.ledger import (
    BLOCK_SIZE,
    MAX_CANCELLED,
    MAX_UNWANTED_BYTES,
    Geometry,
    RequestLedger,
)
from mptorrent.proto.wire_errors import LocalProtocolError, RemoteProtocolError
from mptorrent.record import (
    Record,  # eq, hash and repr of the events (start-up cost)
    frozen,
)

__all__ = [
    "BLOCK_SIZE",
    "DHT_BIT",
    "DHT_RESERVED",
    "EXTENSION_BIT",
    "EXTENSION_RESERVED",
    "FAST_BIT",
    "FAST_RESERVED",
    "HANDSHAKE_LEN",
    "MAX_ALLOWED_FAST",
    "MAX_CANCELLED",
    "MAX_MESSAGE",
    "MAX_PIECES",
    "MAX_UNWANTED_BYTES",
    "NEED_DATA",
    "PROTOCOL",
    "AllowedFast",
    "Bitfield",
    "Cancel",
    "Choke",
    "Connection",
    "Event",
    "Extended",
    "ExtendedReceiver",
    "Geometry",
    "Handshake",
    "HashReject",
    "HashRequest",
    "Hashes",
    "Have",
    "HaveAll",
    "HaveNone",
    "Interested",
    "KeepAlive",
    "LocalProtocolError",
    "NeedData",
    "NotInterested",
    "Piece",
    "Port",
    "RejectRequest",
    "RemoteProtocolError",
    "Request",
    "SuggestPiece",
    "Unchoke",
    "pack_bitfield",
    "unpack_bitfield",
]

PROTOCOL: Final = b"BitTorrent protocol"
HANDSHAKE_LEN: Final = 68  # pstrlen, pstr, reserved(8), info_hash(20), peer_id(20)
# libtorrent packet_too_large: nothing but a piece (or a huge bitfield) may exceed it.
MAX_MESSAGE: Final = 1 << 20
EXTENSION_BIT: Final = 0x10  # BEP 10: reserved[5] & 0x10
EXTENSION_BYTE: Final = 5
EXTENSION_RESERVED: Final = bytes([0, 0, 0, 0, 0, EXTENSION_BIT, 0, 0])
FAST_BIT: Final = 0x04  # BEP 6: reserved[7] & 0x04
FAST_BYTE: Final = 7
FAST_RESERVED: Final = bytes([0, 0, 0, 0, 0, 0, 0, FAST_BIT])  # OR it into the reserved bytes
DHT_BIT: Final = 0x01  # BEP 5: reserved[7] & 0x01, the sender runs a DHT node (Port messages)
DHT_BYTE: Final = 7
DHT_RESERVED: Final = bytes([0, 0, 0, 0, 0, 0, 0, DHT_BIT])  # OR it into the reserved bytes
# Allowed Fast indices a peer may make us keep (libtorrent sends 10); more are
# checked and reported, not kept, so a peer cannot grow the set without bound.
MAX_ALLOWED_FAST: Final = 256
# Before the geometry is known, piece indices are only checked against the largest
# torrent we load (metainfo.MAX_PIECES, libtorrent max_pieces): that bounds what an
# early Bitfield or Have can make us keep to 256 KiB.
MAX_PIECES: Final = 2_097_152

_CHOKE, _UNCHOKE, _INTERESTED, _NOT_INTERESTED = 0, 1, 2, 3
_HAVE, _BITFIELD, _REQUEST, _PIECE, _CANCEL, _PORT = 4, 5, 6, 7, 8, 9
_EXTENDED = 20
_SUGGEST, _HAVE_ALL, _HAVE_NONE, _REJECT, _ALLOWED_FAST = 13, 14, 15, 16, 17  # BEP 6
# Their exact lengths, checked by the parsers only after the fast bit (so a
# message without it is refused as such, whatever its length).
_FAST_LEN: Final = {_SUGGEST: 5, _HAVE_ALL: 1, _HAVE_NONE: 1, _REJECT: 13, _ALLOWED_FAST: 5}
_PIECE_MAX_LEN = 9 + BLOCK_SIZE
_HASH_REQUEST, _HASHES, _HASH_REJECT = 21, 22, 23  # BEP 52
_HASH_FIELDS = struct.Struct(">32sIIII")  # pieces root, base layer, index, length, proof layers
MAX_HASH_COUNT: Final = 8192  # hashes one request may ask for (libtorrent's cap)
MAX_PROOF_LAYERS: Final = 64  # no file tree is deeper
# Exact length prefixes of the fixed-size messages (the bitfield's depends on the torrent).
_FIXED_LEN: Final = {
    _CHOKE: 1,
    _UNCHOKE: 1,
    _INTERESTED: 1,
    _NOT_INTERESTED: 1,
    _HAVE: 5,
    _REQUEST: 13,
    _CANCEL: 13,
    _PORT: 3,
    _HASH_REQUEST: 1 + _HASH_FIELDS.size,
    _HASH_REJECT: 1 + _HASH_FIELDS.size,
}

_u32 = struct.Struct(">I").unpack_from
_u32x2 = struct.Struct(">II").unpack_from
_u32x3 = struct.Struct(">III").unpack_from
_piece_header = struct.Struct(">IBII").unpack_from
_u16 = struct.Struct(">H").unpack_from
_pack_have = struct.Struct(">IBI").pack
_pack_block = struct.Struct(">IBIII").pack  # request and cancel
_pack_piece_header = struct.Struct(">IBII").pack
_pack_port = struct.Struct(">IBH").pack
_pack_header = struct.Struct(">IB").pack
_pack_extended_header = struct.Struct(">IBB").pack

_HANDSHAKE_PREFIX: Final = bytes([len(PROTOCOL)]) + PROTOCOL


class NeedData(enum.Enum):
    """The type of :data:`NEED_DATA`, which ``next_event()`` returns when no complete message is
    buffered; an enum of one so that type checkers can narrow on ``is``."""

    NEED_DATA = enum.auto()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


# -- events ---------------------------------------------------------------------
# The same classes are sent and received (the protocol is symmetric).  They do no
# validation of their own: Connection checks them against the torrent, and keeping
# __init__ trivial keeps the receive path cheap.


class Event(Record, ABC):
    """Base of every peer wire event, sent and received alike (extension events too). Subclasses are
    plain records that check nothing: :class:`Connection` and the extension handlers do."""

    __slots__ = ()


@frozen
class Handshake(Event):
    """The opening message. A received one always carries our info-hash (a mismatch is a protocol
    error); ``reserved`` holds the extension bits (BEP 10's, BEP 6's fast bit)."""

    info_hash: bytes
    peer_id: bytes
    reserved: bytes = bytes(8)

    @property
    def extensions(self) -> bool:
        """The sender speaks the BEP 10 extension protocol."""
        return bool(self.reserved[EXTENSION_BYTE] & EXTENSION_BIT)

    @property
    def fast(self) -> bool:
        """The sender speaks the BEP 6 fast extension."""
        return bool(self.reserved[FAST_BYTE] & FAST_BIT)

    @property
    def dht(self) -> bool:
        """The sender runs a DHT node (BEP 5): it may send, and wants, a :class:`Port`."""
        return bool(self.reserved[DHT_BYTE] & DHT_BIT)


@frozen
class KeepAlive(Event):
    """An empty message that only shows the connection is alive; the worker's idle timeout does not
    count it."""

    pass


@frozen
class Choke(Event):
    """The sender will not serve the other side's requests: received, our outstanding requests are
    written off; sent, the peer's are forgotten. With the fast extension neither: every request is
    still answered, by its block or a :class:`RejectRequest`."""

    pass


@frozen
class Unchoke(Event):
    """The sender will serve requests again; we may send Requests only while unchoked."""

    pass


@frozen
class Interested(Event):
    """The sender wants pieces the other side has (our uploader may unchoke at once)."""

    pass


@frozen
class NotInterested(Event):
    """The sender wants nothing more from the other side (our uploader then chokes it)."""

    pass


@frozen
class Have(Event):
    """The sender now has piece ``index``. One received before the geometry is known is held back
    and returned later inside a :class:`Bitfield`."""

    index: int


@frozen
class Bitfield(Event):
    """Every piece the sender has; allowed only as the first message after the handshake, and
    checked for length and spare bits."""

    bits: bytes  # packed as on the wire: piece 0 is the high bit of byte 0

    def __repr__(self) -> str:
        return f"Bitfield(<{len(self.bits)} bytes>)"


@frozen
class Request(Event):
    """Asks for ``length`` bytes at ``begin`` of piece ``index``; must lie inside the torrent, and
    we send one only while the peer has us unchoked."""

    index: int
    begin: int
    length: int


@frozen
class Piece(Event):
    """A block.  Received blocks are read-only memoryviews into the connection's
    receive buffer, valid only until the next ``get_buffer()`` or
    ``receive_data()`` call: copy them (once) where they belong before then."""

    index: int
    begin: int
    block: bytes | memoryview

    def __repr__(self) -> str:
        return f"Piece(index={self.index}, begin={self.begin}, block=<{len(self.block)} bytes>)"


@frozen
class Cancel(Event):
    """Withdraws a Request. Sending one for a block no longer outstanding is allowed: it can cross a
    choke or the block itself."""

    index: int
    begin: int
    length: int


@frozen
class Port(Event):
    """BEP 5: the UDP port of the sender's DHT node (at the connection's IP). Accepted with or
    without the DHT bit in the handshake, as libtorrent does; port 0 is passed on as it came
    (the receiver drops it). Any length but 3 is a protocol error."""

    port: int


@frozen
class Extended(Event):
    """A BEP 10 message, framed here and no more. The caller sees one only when no
    :class:`ExtendedReceiver` is set; both handshakes must carry the extension bit."""

    ext_id: int  # BEP 10: 0 is the extension handshake
    payload: bytes

    def __repr__(self) -> str:
        return f"Extended(ext_id={self.ext_id}, payload=<{len(self.payload)} bytes>)"


@frozen
class HaveAll(Event):
    """BEP 6: the sender has every piece; in place of a Bitfield, as the first message only."""

    pass


@frozen
class HaveNone(Event):
    """BEP 6: the sender has no piece; in place of a Bitfield, as the first message only."""

    pass


@frozen
class SuggestPiece(Event):
    """BEP 6: the sender suggests piece ``index`` (cheap for it to serve); a hint we may ignore."""

    index: int


@frozen
class RejectRequest(Event):
    """BEP 6: the sender will not serve this request. Received, the request is no longer
    outstanding (the block must be asked of someone); only for a request actually sent."""

    index: int
    begin: int
    length: int


@frozen
class AllowedFast(Event):
    """BEP 6: the receiver may request blocks of piece ``index`` even while choked. One received
    before the geometry is known is checked then and kept in :attr:`Connection.allowed_fast`; one
    we send lets blocks of ``index`` go out while we choke the receiver."""

    index: int


@frozen
class HashRequest(Event):
    """BEP 52: ``count`` hashes of layer ``base`` (0: the 16 KiB leaves) of the merkle tree of
    the file whose ``pieces root`` is ``root``, from ``index``, with uncle hashes for
    ``proof_layers`` layers above them.  Answered by :class:`Hashes` or :class:`HashReject`."""

    root: bytes
    base: int
    index: int
    count: int
    proof_layers: int


@frozen
class Hashes(Event):
    """BEP 52: the answer to a :class:`HashRequest` with the same fields: the requested hashes,
    then the uncle hashes from the lowest layer up (whether they prove out is for the caller,
    who knows the tree; the wire checks only that their number fits the fields)."""

    root: bytes
    base: int
    index: int
    count: int
    proof_layers: int
    hashes: bytes

    def __repr__(self) -> str:
        return (
            f"Hashes(root={self.root.hex()[:16]}..., base={self.base}, index={self.index}, "
            f"count={self.count}, proof_layers={self.proof_layers}, "
            f"{len(self.hashes) // 32} hashes)"
        )


@frozen
class HashReject(Event):
    """BEP 52: the sender will not answer the :class:`HashRequest` with these fields."""

    root: bytes
    base: int
    index: int
    count: int
    proof_layers: int


def hashes_expected(count: int, proof_layers: int) -> int:
    """How many hashes answer a request for ``count`` hashes with ``proof_layers``: the count,
    then one uncle for each proof layer above the whole subtree they make (BEP 52)."""
    width = 1 if count <= 1 else 1 << (count - 1).bit_length()
    return count + max(0, proof_layers - (width.bit_length() - 1) + 1)


def _hash_fields_ok(base: int, count: int, proof_layers: int) -> bool:
    return (
        0 <= base < MAX_PROOF_LAYERS
        and 1 <= count <= MAX_HASH_COUNT
        and 0 <= proof_layers < MAX_PROOF_LAYERS
    )


# Field-less events carry no state, so one instance each serves every message.
# A record's __init__ sets its slots through their descriptors (record.py); the
# receive fast path does the same inline and spares the call, once per block.
_new_object = object.__new__
_set_piece_index: Callable[[Piece, int], None] = Piece.__dict__["index"].__set__
_set_piece_begin: Callable[[Piece, int], None] = Piece.__dict__["begin"].__set__
_set_piece_block: Callable[[Piece, memoryview], None] = Piece.__dict__["block"].__set__

_KEEP_ALIVE: Final = KeepAlive()
_CHOKE_EVENT: Final = Choke()
_UNCHOKE_EVENT: Final = Unchoke()
_INTERESTED_EVENT: Final = Interested()
_NOT_INTERESTED_EVENT: Final = NotInterested()
_HAVE_ALL_EVENT: Final = HaveAll()
_HAVE_NONE_EVENT: Final = HaveNone()

_KEEP_ALIVE_BYTES: Final = bytes(4)
_CHOKE_BYTES: Final = _pack_header(1, _CHOKE)
_UNCHOKE_BYTES: Final = _pack_header(1, _UNCHOKE)
_INTERESTED_BYTES: Final = _pack_header(1, _INTERESTED)
_NOT_INTERESTED_BYTES: Final = _pack_header(1, _NOT_INTERESTED)
_HAVE_ALL_BYTES: Final = _pack_header(1, _HAVE_ALL)
_HAVE_NONE_BYTES: Final = _pack_header(1, _HAVE_NONE)


# -- bitfields ------------------------------------------------------------------
# Going through a base-2 int and its text form keeps the per-bit work in C; for a
# 2-million-piece torrent a Python loop over bits would cost a noticeable pause.

_TEXT_TO_FLAGS: Final = bytes.maketrans(b"01", b"\x00\x01")
_FLAGS_TO_TEXT: Final = b"0" + b"1" * 255  # any non-zero byte means "have"


def pack_bitfield(have: bytes | bytearray | memoryview) -> bytes:
    """One byte per piece (non-zero = have) to the packed wire form."""
    n = len(have)
    if n == 0:
        return b""
    text = bytes(have).translate(_FLAGS_TO_TEXT) + b"0" * (-n % 8)
    return int(text, 2).to_bytes((n + 7) // 8, "big")


def unpack_bitfield(bits: bytes | bytearray | memoryview, num_pieces: int) -> bytearray:
    """The packed wire form to one byte per piece (1 = have).

    Raises :class:`LocalProtocolError` if ``bits`` is not exactly
    ``ceil(num_pieces / 8)`` bytes or has a spare bit set.
    """
    if not _bitfield_ok(bits, num_pieces):
        raise LocalProtocolError(f"not a valid bitfield for {num_pieces} pieces")
    return _unpack(bits, num_pieces)


def _bitfield_ok(bits: bytes | bytearray | memoryview, num_pieces: int) -> bool:
    nbytes = (num_pieces + 7) // 8
    if len(bits) != nbytes:
        return False
    spare = nbytes * 8 - num_pieces
    return spare == 0 or not bits[-1] & ((1 << spare) - 1)


def _unpack(bits: bytes | bytearray | memoryview, num_pieces: int) -> bytearray:
    text = format(int.from_bytes(bits, "big"), f"0{len(bits) * 8}b").encode("ascii")
    return bytearray(text[:num_pieces].translate(_TEXT_TO_FLAGS))


# -- the connection -------------------------------------------------------------


_Parsed = Event | NeedData | None  # what a parser gives; None: a message was dropped


class ExtendedReceiver(Protocol):
    """Where a connection hands BEP 10 messages (the router in :mod:`mptorrent.proto.ext`).

    Called from :meth:`Connection.next_event` with each Extended message once its
    frame is checked; what it returns is the event (None: nothing for the
    caller).  It may raise only :class:`RemoteProtocolError`, which the
    connection makes its own sticky error.
    """

    def receive_extended(self, ext_id: int, payload: bytes) -> Event | None: ...


class Connection:
    """Both directions of one peer connection for one torrent.

    ``info_hash`` and the geometry (``num_pieces``, ``piece_length``,
    ``total_length``) are what every message is checked against; the geometry
    may be left out (all three) and given later with :meth:`set_geometry`.
    ``buffer_size`` is the initial receive buffer; it grows only when a message
    that has passed its length check needs more room, so it never exceeds
    ``max(buffer_size, MAX_MESSAGE + 4)`` through the ``get_buffer`` path.
    ``extensions``, when set, receives every BEP 10 message.
    """

    __slots__ = (
        "_allowed_fast",
        "_allowed_out",
        "_am_choking",
        "_am_interested",
        "_bitfield_in_open",
        "_bitfield_len",
        "_bitfield_out_open",
        "_buf",
        "_deferred",
        "_early_all",
        "_early_bits",
        "_early_haves",
        "_error",
        "_fast",
        "_geometry",
        "_handshake_received",
        "_handshake_sent",
        "_info_hash",
        "_ledger",
        "_max_len",
        "_num_pieces",
        "_our_reserved",
        "_outstanding",
        "_peer_choking",
        "_peer_has",
        "_peer_has_count",
        "_peer_interested",
        "_peer_requests",
        "_peer_reserved",
        "_r",
        "_rview",
        "_skip",
        "_special",
        "_w",
        "_wview",
        "extensions",
    )

    def __init__(
        self,
        info_hash: bytes,
        num_pieces: int | None = None,
        piece_length: int | None = None,
        total_length: int | None = None,
        *,
        buffer_size: int = 1 << 20,
        extensions: ExtendedReceiver | None = None,
    ) -> None:
        if len(info_hash) != 20:
            raise LocalProtocolError("info_hash must be 20 bytes")
        given = (num_pieces, piece_length, total_length)
        if None in given and given != (None, None, None):
            raise LocalProtocolError("give all of the geometry or none of it")
        if buffer_size < HANDSHAKE_LEN:
            raise LocalProtocolError(f"buffer_size must be at least {HANDSHAKE_LEN}")
        self._info_hash = bytes(info_hash)
        self.extensions = extensions
        self._geometry: Geometry | None = None
        self._num_pieces = 0
        # Message length of a Bitfield (id byte included) and the largest message
        # accepted; both grow with the geometry.
        self._bitfield_len = 0
        self._max_len = MAX_MESSAGE

        self._buf = bytearray(buffer_size)
        self._wview = memoryview(self._buf)
        self._rview = self._wview.toreadonly()
        self._r = 0  # first unread byte
        self._w = 0  # end of received bytes
        self._skip = 0  # bytes still to discard of an ignored message
        self._error: RemoteProtocolError | None = None
        # True while next_event() must look at _error, the handshake, a deferred
        # event or _skip before the fast path.
        self._special = True
        self._deferred: Event | None = None  # returned by the next next_event()

        self._handshake_sent = False
        self._handshake_received = False
        self._our_reserved = bytes(8)
        self._peer_reserved = bytes(8)
        self._fast = False  # both handshakes set BEP 6's bit
        # A bitfield may only open the conversation; keep-alives, BEP 10 messages
        # and DHT ports carry no piece state and may precede it (libtorrent sends
        # its extension handshake before its bitfield).
        self._bitfield_in_open = True
        self._bitfield_out_open = True
        self._peer_choking = True
        self._peer_interested = False
        self._am_choking = True
        self._am_interested = False
        self._peer_has = bytearray()
        self._peer_has_count = 0
        # Piece state received before the geometry: the Bitfield as sent, and the
        # Have indices as a packed bit set (piece 0 is the high bit of byte 0).
        self._early_bits: bytes | None = None
        self._early_haves = bytearray()
        self._early_all = False  # a HaveAll came before the geometry
        self._allowed_fast: set[int] = set()  # pieces the peer lets us request while choked
        self._allowed_out: set[int] = set()  # pieces we let the peer request while choked

        self._ledger = RequestLedger()
        # The hot paths use the ledger's dicts directly: one attribute, not two.
        # The ledger only ever clears them, never replaces them.
        self._outstanding = self._ledger.outstanding
        self._peer_requests = self._ledger.peer_requests
        if num_pieces is not None and piece_length is not None and total_length is not None:
            self._set_geometry(Geometry(num_pieces, piece_length, total_length))

    # -- geometry -------------------------------------------------------------

    @property
    def geometry(self) -> Geometry | None:
        """The torrent's geometry, None until it is known."""
        return self._geometry

    def set_geometry(self, num_pieces: int, piece_length: int, total_length: int) -> None:
        """Give the torrent's geometry to a connection created without it (once).

        The rule for what the peer sent before it:

        * a Bitfield was kept as it came (at most ``MAX_PIECES`` bits) and Have
          indices were kept (each below ``MAX_PIECES``), without events; both are
          checked now, like a Bitfield or Have received afterwards would be.  If
          they fit, they become :attr:`peer_has` and the next :meth:`next_event`
          returns one Bitfield of everything the peer said it has, before any
          later message (a HaveAll, BEP 6, is kept as such and returned as one);
        * Allowed Fast indices were kept (each below ``MAX_PIECES``, at most
          ``MAX_ALLOWED_FAST``) without events: checked now like the Have
          indices, they stay in :attr:`allowed_fast`; a Suggest was dropped;
        * if they do not fit (a Bitfield of the wrong length or with spare bits
          set, a Have beyond the last piece), the connection fails: this raises
          :class:`RemoteProtocolError`, and so does every later next_event();
        * blocks were discarded as unrequested (we could not have asked for
          them), and a Request or Cancel was a protocol error already.

        Raises :class:`LocalProtocolError` if the geometry is already set or is
        not a torrent's.
        """
        if self._geometry is not None:
            raise LocalProtocolError("the geometry is already set")
        self._set_geometry(Geometry(num_pieces, piece_length, total_length))
        if self._error is not None:
            return  # next_event() keeps reporting the peer's error
        n = num_pieces
        early_fast = self._allowed_fast
        if early_fast and max(early_fast) >= n:
            raise self._fail(f"allowed fast for piece {max(early_fast)} of {n}")
        bits, haves, everything = self._early_bits, self._early_haves, self._early_all
        if bits is None and not haves and not everything:
            return
        self._early_bits = None
        self._early_haves = bytearray()
        self._early_all = False
        if bits is not None:
            if len(bits) != (n + 7) // 8:
                raise self._fail(f"bitfield of {len(bits)} bytes for {n} pieces")
            if not _bitfield_ok(bits, n):
                raise self._fail("bitfield with spare bits set")
        packed = int.from_bytes(bits or b"", "big") << (8 * ((n + 7) // 8 - len(bits or b"")))
        if haves:
            # The highest Have decides whether they all fit.
            last_byte = len(haves) - 1
            low = haves[last_byte] & -haves[last_byte]
            highest = 8 * last_byte + 7 - (low.bit_length() - 1)
            if highest >= n:
                raise self._fail(f"have for piece {highest} of {n}")
            nbytes = (n + 7) // 8
            packed |= int.from_bytes(haves + bytes(nbytes - len(haves)), "big")
        field = packed.to_bytes((n + 7) // 8, "big")
        if everything:  # a HaveAll (nothing else can have come before it but Haves)
            field = pack_bitfield(b"\x01" * n)
        self._peer_has[:] = _unpack(field, n)
        self._peer_has_count = self._peer_has.count(1)
        self._deferred = _HAVE_ALL_EVENT if everything else Bitfield(field)
        self._special = True

    def _set_geometry(self, geometry: Geometry) -> None:
        self._geometry = geometry
        self._num_pieces = geometry.num_pieces
        self._bitfield_len = 1 + geometry.bitfield_bytes
        self._max_len = max(MAX_MESSAGE, self._bitfield_len)
        # Extended in place: callers may hold the live peer_has.
        self._peer_has.extend(bytes(geometry.num_pieces))

    # -- read-only state ------------------------------------------------------

    @property
    def handshake_received(self) -> bool:
        return self._handshake_received

    @property
    def handshake_sent(self) -> bool:
        return self._handshake_sent

    @property
    def peer_choking(self) -> bool:
        return self._peer_choking

    @property
    def peer_interested(self) -> bool:
        return self._peer_interested

    @property
    def am_choking(self) -> bool:
        return self._am_choking

    @property
    def am_interested(self) -> bool:
        return self._am_interested

    @property
    def peer_has(self) -> bytearray:
        """One byte per piece, 1 if the peer has it (empty until the geometry is
        known).  Live; do not modify."""
        return self._peer_has

    @property
    def peer_has_count(self) -> int:
        return self._peer_has_count

    @property
    def peer_is_seed(self) -> bool:
        return self._geometry is not None and self._peer_has_count == self._num_pieces

    @property
    def peer_reserved(self) -> bytes:
        return self._peer_reserved

    @property
    def extensions_enabled(self) -> bool:
        """Both handshakes advertised BEP 10, so Extended messages may flow."""
        return bool(
            self._handshake_sent
            and self._handshake_received
            and self._our_reserved[EXTENSION_BYTE] & EXTENSION_BIT
            and self._peer_reserved[EXTENSION_BYTE] & EXTENSION_BIT
        )

    @property
    def fast_enabled(self) -> bool:
        """Both handshakes advertised BEP 6, so its messages may flow and a Choke keeps requests."""
        return self._fast

    @property
    def allowed_fast(self) -> frozenset[int]:
        """The pieces the peer said we may request while it chokes us (BEP 6 Allowed Fast)."""
        return frozenset(self._allowed_fast)

    @property
    def buffer_capacity(self) -> int:
        """Size of the receive buffer, for memory-bound checks."""
        return len(self._buf)

    # -- outstanding requests -------------------------------------------------
    # The bookkeeping is the RequestLedger's; these keep the connection's API.

    @property
    def ledger(self) -> RequestLedger:
        """The request bookkeeping, for inspection.  Do not modify."""
        return self._ledger

    @property
    def unwanted_bytes(self) -> int:
        """Payload of blocks that arrived without a request and were discarded."""
        return self._ledger.unwanted_bytes

    @property
    def outstanding_requests(self) -> int:
        """Requests sent and neither answered, cancelled nor dropped by a choke."""
        return len(self._outstanding)

    @property
    def peer_requests(self) -> int:
        """The peer's requests we received while unchoking it and have neither
        served nor seen cancelled (bounded; a choke drops them all)."""
        return len(self._ledger.peer_requests)

    def list_requests(self) -> list[Request]:
        """The outstanding requests, oldest first."""
        return [Request(*key) for key in self._outstanding]

    def clear_requests(self) -> list[Request]:
        """Forget every request that is still owed, and return them for re-queueing.

        That is the outstanding requests plus those a received Choke discarded
        since the last call, oldest first.  Blocks that still arrive for them are
        dropped without an event.
        """
        return [Request(*key) for key in self._ledger.clear()]

    # -- receiving ------------------------------------------------------------

    def get_buffer(self, min_size: int = 65536) -> memoryview:
        """The free tail of the receive buffer, for ``recv_into``.

        Unread bytes are moved to the front first when the tail is shorter than
        ``min_size`` (a hint; -1 means "any", as asyncio passes).  Invalidates
        every block handed out by earlier Piece events.  Raises
        :class:`LocalProtocolError` if the buffer is full of unread messages:
        call :meth:`next_event` until it returns NEED_DATA first.
        """
        if self._error is not None:
            self._r = self._w = 0  # nothing more will be parsed: let the caller drain the socket
            return self._wview
        r = self._r
        w = self._w
        if r == w:
            self._r = self._w = r = w = 0
        elif r and len(self._buf) - w < (min_size if min_size > 0 else 65536):
            self._compact()
            w = self._w
        if w == len(self._buf):
            raise LocalProtocolError("receive buffer is full: drain next_event() first")
        return self._wview[w:]

    def buffer_updated(self, nbytes: int) -> None:
        """Commit ``nbytes`` written at the start of the last get_buffer() view."""
        if not 0 <= nbytes <= len(self._buf) - self._w:
            raise LocalProtocolError(f"buffer_updated({nbytes}) is beyond the buffer")
        if self._error is None:
            self._w += nbytes

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (copies them).  Invalidates earlier Piece blocks.

        For tests and fuzzers: unlike get_buffer() this grows the buffer to hold
        whatever it is given.
        """
        n = len(data)
        if self._error is not None or n == 0:
            return
        if self._r == self._w:
            self._r = self._w = 0
        elif self._r and len(self._buf) - self._w < n:
            self._compact()
        if len(self._buf) - self._w < n:
            self._grow(self._w - self._r + n)
        w = self._w
        self._buf[w : w + n] = data
        self._w = w + n

    def _compact(self) -> None:
        r, w = self._r, self._w
        # Slice assignment of equal length never resizes, which the exported views forbid.
        self._buf[: w - r] = self._buf[r:w]
        self._r, self._w = 0, w - r

    def _grow(self, size: int) -> None:
        # A new bytearray rather than a resize: views handed out pin the old one.
        r, w = self._r, self._w
        buf = bytearray(size)
        buf[: w - r] = self._buf[r:w]
        self._buf = buf
        self._wview = memoryview(buf)
        self._rview = self._wview.toreadonly()
        self._r, self._w = 0, w - r

    def _need(self, total: int) -> NeedData:
        """A message of ``total`` bytes, already checked, is incomplete."""
        if total > len(self._buf):
            self._grow(total)
        return NEED_DATA

    def _fail(self, reason: str) -> RemoteProtocolError:
        self._error = RemoteProtocolError(reason)
        self._special = True
        self._r = self._w = 0
        return self._error

    def next_event(self) -> Event | NeedData:
        """Parse one message, or return NEED_DATA.

        Raises :class:`RemoteProtocolError` if the peer broke the protocol, and
        keeps raising it on later calls.
        """
        if self._special:
            event = self._next_special()
            if event is not None:
                return event
        buf = self._buf
        while True:
            r = self._r
            avail = self._w - r
            # Fast path: a complete block we asked for, the bulk of all traffic.
            if avail >= 13:
                length, msg_id, index, begin = _piece_header(buf, r)
                if (
                    msg_id == _PIECE
                    and 9 < length <= _PIECE_MAX_LEN
                    and avail >= length + 4
                    and self._outstanding.pop((index, begin, length - 9), None) is not None
                ):
                    end = r + 4 + length
                    self._r = end
                    event = _new_object(Piece)
                    _set_piece_index(event, index)
                    _set_piece_begin(event, begin)
                    _set_piece_block(event, self._rview[r + 13 : end])
                    return event
            event = self._next_message(buf, r, avail)
            if event is not None:
                return event

    def next_blocks(self) -> list[tuple[int, int, memoryview]]:
        """The blocks :meth:`next_event` would return next as Piece events, as
        ``(index, begin, block)``: the run of complete blocks we asked for at the head of
        the receive buffer (often empty).  It stops at anything else, which
        :meth:`next_event` returns next.

        The download's hot path: one call and no event object per run of blocks.  The
        blocks are views into the receive buffer, valid as long as a Piece event's.
        """
        run: list[tuple[int, int, memoryview]] = []
        if self._special:
            return run
        buf = self._buf
        outstanding = self._outstanding
        rview = self._rview
        r = self._r
        w = self._w
        # the fast path of next_event, in a loop
        while w - r >= 13:
            length, msg_id, index, begin = _piece_header(buf, r)
            if (
                msg_id != _PIECE
                or not 9 < length <= _PIECE_MAX_LEN
                or w - r < length + 4
                or outstanding.pop((index, begin, length - 9), None) is None
            ):
                break
            end = r + 4 + length
            run.append((index, begin, rview[r + 13 : end]))
            r = end
        self._r = r
        return run

    def _next_special(self) -> Event | NeedData | None:
        """Before the handshake, with a deferred event, while skipping, after an
        error; None: parse on."""
        if self._error is not None:
            raise self._error
        if not self._handshake_received:
            event = self._next_handshake()
            if event is NEED_DATA:
                return event
            self._special = self._deferred is not None
            return event
        deferred = self._deferred
        if deferred is not None:
            self._deferred = None
            self._special = bool(self._skip)
            return deferred
        n = min(self._skip, self._w - self._r)
        self._r += n
        self._skip -= n
        if self._skip:
            return NEED_DATA
        self._special = False
        return None

    def _next_message(self, buf: bytearray, r: int, avail: int) -> _Parsed:
        """Everything but the fast path; None means a message was dropped."""
        if avail < 4:
            return NEED_DATA
        length = _u32(buf, r)[0]
        if length == 0:
            self._r = r + 4
            return _KEEP_ALIVE
        if length > self._max_len:
            raise self._fail(f"message of {length} bytes is too large")
        if avail < 5:
            return NEED_DATA
        msg_id = buf[r + 4]
        parse, fixed = _RECEIVERS[msg_id]
        if fixed:
            # Fixed-size messages are framed here; their parser reads the body.
            if length != fixed:
                raise self._fail(f"message {msg_id} has length {length}, not {fixed}")
            if avail < length + 4:
                return NEED_DATA
            self._r = r + 4 + length
        return parse(self, buf, r, length, avail)

    # Parsers, one per message id (the _RECEIVERS table below).  Each gets the
    # receive buffer, the offset of the message's length prefix, its length and
    # the bytes available from that offset; a fixed-size message is already
    # complete and consumed when its parser runs.

    def _recv_piece(self, buf: bytearray, r: int, length: int, avail: int) -> _Parsed:
        """A block the fast path did not take: incomplete, late or unrequested."""
        if length > _PIECE_MAX_LEN:
            raise self._fail(f"piece message of {length} bytes is too large")
        if length < 10:
            raise self._fail("piece message with an empty block")
        total = length + 4
        if avail < total:
            return self._need(total)
        index, begin = _u32x2(buf, r + 5)
        ledger = self._ledger
        if ledger.late((index, begin, length - 9)):
            self._r = r + total
            return None
        geometry = self._geometry
        # Before the geometry is known nothing was asked for and nothing can be
        # checked: such a block only counts as unwanted.
        if geometry is not None and not geometry.block_ok(index, begin, length - 9):
            raise self._fail("piece outside the torrent")
        # A block we never asked for (or no longer expect) is discarded, as
        # libtorrent does; only a peer that keeps pushing them is cut off.
        if ledger.unwanted(length - 9):
            raise self._fail("too many unrequested blocks")
        self._r = r + total
        return None

    def _recv_choke(self, buf: bytearray, r: int, length: int, avail: int) -> Event:
        self._bitfield_in_open = False
        self._peer_choking = True
        if not self._fast:  # BEP 6: the peer answers each request, rejects included
            self._ledger.choked()
        return _CHOKE_EVENT

    def _recv_unchoke(self, buf: bytearray, r: int, length: int, avail: int) -> Event:
        self._bitfield_in_open = False
        self._peer_choking = False
        return _UNCHOKE_EVENT

    def _recv_interested(self, buf: bytearray, r: int, length: int, avail: int) -> Event:
        self._bitfield_in_open = False
        self._peer_interested = True
        return _INTERESTED_EVENT

    def _recv_not_interested(self, buf: bytearray, r: int, length: int, avail: int) -> Event:
        self._bitfield_in_open = False
        self._peer_interested = False
        return _NOT_INTERESTED_EVENT

    def _recv_have(self, buf: bytearray, r: int, length: int, avail: int) -> Event | None:
        index = _u32(buf, r + 5)[0]
        if self._geometry is None:
            if index >= MAX_PIECES:
                raise self._fail(f"have for piece {index} of at most {MAX_PIECES}")
            self._bitfield_in_open = False
            haves = self._early_haves
            byte = index >> 3
            if byte >= len(haves):
                haves.extend(bytes(byte + 1 - len(haves)))
            haves[byte] |= 0x80 >> (index & 7)
            return None
        if index >= self._num_pieces:
            raise self._fail(f"have for piece {index} of {self._num_pieces}")
        self._bitfield_in_open = False
        if not self._peer_has[index]:
            self._peer_has[index] = 1
            self._peer_has_count += 1
        return Have(index)

    def _recv_bitfield(self, buf: bytearray, r: int, length: int, avail: int) -> _Parsed:
        early = self._geometry is None
        if early:
            if length - 1 > MAX_PIECES // 8:
                raise self._fail(f"bitfield of {length - 1} bytes for at most {MAX_PIECES} pieces")
        elif length != self._bitfield_len:
            raise self._fail(f"bitfield of {length - 1} bytes for {self._num_pieces} pieces")
        if not self._bitfield_in_open:
            raise self._fail("bitfield after other messages")
        total = length + 4
        if avail < total:
            return self._need(total)
        bits = bytes(buf[r + 5 : r + total])
        if early:
            self._r = r + total
            self._bitfield_in_open = False
            self._early_bits = bits
            return None
        if not _bitfield_ok(bits, self._num_pieces):
            raise self._fail("bitfield with spare bits set")
        self._r = r + total
        self._bitfield_in_open = False
        self._peer_has[:] = _unpack(bits, self._num_pieces)
        self._peer_has_count = self._peer_has.count(1)
        return Bitfield(bits)

    def _recv_request(self, buf: bytearray, r: int, length: int, avail: int) -> Event:
        # The upload hot path (a request per block served): checks inline.
        key = _u32x3(buf, r + 5)
        index, begin, blen = key
        geometry = self._geometry
        if geometry is None or not geometry.block_ok(index, begin, blen):
            raise self._block_in_error("request")
        self._bitfield_in_open = False
        if not self._am_choking or index in self._allowed_out:
            self._ledger.peer_requested(key)
        return Request(index, begin, blen)

    def _recv_cancel(self, buf: bytearray, r: int, length: int, avail: int) -> Event:
        key = _u32x3(buf, r + 5)
        index, begin, blen = key
        geometry = self._geometry
        if geometry is None or not geometry.block_ok(index, begin, blen):
            raise self._block_in_error("cancel")
        self._bitfield_in_open = False
        self._ledger.peer_settled(key)
        return Cancel(index, begin, blen)

    def _block_in_error(self, name: str) -> RemoteProtocolError:
        if self._geometry is None:
            # We could not have told the peer we hold anything.
            return self._fail(f"{name} before the torrent's geometry is known")
        return self._fail(f"{name} outside the torrent")

    def _recv_port(self, buf: bytearray, r: int, length: int, avail: int) -> Event:
        return Port(_u16(buf, r + 5)[0])

    def _recv_extended(self, buf: bytearray, r: int, length: int, avail: int) -> _Parsed:
        if length > MAX_MESSAGE:
            raise self._fail(f"message of {length} bytes is too large")
        if not self.extensions_enabled:
            raise self._fail("extended message without BEP 10 negotiated")
        if length < 2:
            raise self._fail("extended message without an id")
        total = length + 4
        if avail < total:
            return self._need(total)
        self._r = r + total
        ext_id, payload = buf[r + 5], bytes(buf[r + 6 : r + total])
        receiver = self.extensions
        if receiver is None:
            return Extended(ext_id, payload)
        try:
            return receiver.receive_extended(ext_id, payload)
        except RemoteProtocolError as err:
            raise self._fail(err.reason) from None

    # BEP 6.  Each parser frames its message with _fast_frame (refused without the
    # fast bit in both handshakes, as before the extension existed).

    def _fast_frame(self, buf: bytearray, r: int, length: int, avail: int) -> bool:
        """Check a fast-extension message's frame; True once it is complete (and consumed)."""
        if length > MAX_MESSAGE:
            raise self._fail(f"message of {length} bytes is too large")
        msg_id = buf[r + 4]
        if not self._fast:
            raise self._fail(f"fast-extension message {msg_id} without BEP 6 negotiated")
        fixed = _FAST_LEN[msg_id]
        if length != fixed:
            raise self._fail(f"message {msg_id} has length {length}, not {fixed}")
        if avail < length + 4:
            return False
        self._r = r + length + 4
        return True

    def _fast_piece_index(self, buf: bytearray, r: int, name: str) -> int:
        """The piece index of a Suggest or Allowed Fast, checked like a Have's."""
        index: int = _u32(buf, r + 5)[0]
        limit = self._num_pieces if self._geometry is not None else MAX_PIECES
        if index >= limit:
            raise self._fail(f"{name} for piece {index} of {limit}")
        self._bitfield_in_open = False
        return index

    def _recv_have_all(self, buf: bytearray, r: int, length: int, avail: int) -> _Parsed:
        if not self._fast_frame(buf, r, length, avail):
            return NEED_DATA
        if not self._bitfield_in_open:
            raise self._fail("have all after other messages")
        self._bitfield_in_open = False
        if self._geometry is None:
            self._early_all = True
            return None
        n = self._num_pieces
        self._peer_has[:] = b"\x01" * n
        self._peer_has_count = n
        return _HAVE_ALL_EVENT

    def _recv_have_none(self, buf: bytearray, r: int, length: int, avail: int) -> _Parsed:
        if not self._fast_frame(buf, r, length, avail):
            return NEED_DATA
        if not self._bitfield_in_open:
            raise self._fail("have none after other messages")
        self._bitfield_in_open = False
        # peer_has is all zeros already; before the geometry there is nothing to keep.
        return None if self._geometry is None else _HAVE_NONE_EVENT

    def _recv_suggest(self, buf: bytearray, r: int, length: int, avail: int) -> _Parsed:
        if not self._fast_frame(buf, r, length, avail):
            return NEED_DATA
        index = self._fast_piece_index(buf, r, "suggest")
        # A hint only: one before the geometry is dropped.
        return None if self._geometry is None else SuggestPiece(index)

    def _recv_allowed_fast(self, buf: bytearray, r: int, length: int, avail: int) -> _Parsed:
        if not self._fast_frame(buf, r, length, avail):
            return NEED_DATA
        index = self._fast_piece_index(buf, r, "allowed fast")
        if len(self._allowed_fast) < MAX_ALLOWED_FAST:
            self._allowed_fast.add(index)
        return None if self._geometry is None else AllowedFast(index)

    def _recv_reject(self, buf: bytearray, r: int, length: int, avail: int) -> _Parsed:
        if not self._fast_frame(buf, r, length, avail):
            return NEED_DATA
        key = _u32x3(buf, r + 5)
        index, begin, blen = key
        geometry = self._geometry
        if geometry is None or not geometry.block_ok(index, begin, blen):
            raise self._block_in_error("reject")
        self._bitfield_in_open = False
        answer = self._ledger.rejected(key)
        if answer == "outstanding":
            return RejectRequest(index, begin, blen)
        if answer == "given_up":
            return None  # we cancelled it (BEP 6: a cancel is answered too) or lost it
        raise self._fail(f"reject for block ({index}, {begin}, {blen}) we never requested")

    def _hash_fields(self, buf: bytearray, r: int, name: str) -> tuple[bytes, int, int, int, int]:
        root, base, index, count, proof = _HASH_FIELDS.unpack_from(buf, r + 5)
        if not _hash_fields_ok(base, count, proof):
            raise self._fail(
                f"{name} with base layer {base}, length {count}, proof layers {proof} "
                f"(length must be 1..{MAX_HASH_COUNT}, layers under {MAX_PROOF_LAYERS})"
            )
        self._bitfield_in_open = False
        return root, base, index, count, proof

    def _recv_hash_request(self, buf: bytearray, r: int, length: int, avail: int) -> Event:
        return HashRequest(*self._hash_fields(buf, r, "hash request"))

    def _recv_hash_reject(self, buf: bytearray, r: int, length: int, avail: int) -> Event:
        return HashReject(*self._hash_fields(buf, r, "hash reject"))

    def _recv_hashes(self, buf: bytearray, r: int, length: int, avail: int) -> _Parsed:
        head = 1 + _HASH_FIELDS.size
        if length > MAX_MESSAGE:
            raise self._fail(f"message of {length} bytes is too large")
        if length < head + 32 or (length - head) % 32:
            raise self._fail(f"hashes message of {length} bytes is not 49 + 32 x n")
        if avail < 4 + head:
            return NEED_DATA
        fields = self._hash_fields(buf, r, "hashes")
        n = (length - head) // 32
        want = hashes_expected(fields[3], fields[4])
        if n != want:
            raise self._fail(f"hashes message holds {n} hashes, its fields say {want}")
        if avail < 4 + length:
            return NEED_DATA
        self._r = r + 4 + length
        return Hashes(*fields, bytes(buf[r + 4 + head : r + 4 + length]))

    def _recv_unknown(self, buf: bytearray, r: int, length: int, avail: int) -> NeedData | None:
        if length > MAX_MESSAGE:
            raise self._fail(f"message of {length} bytes is too large")
        # BEP 3: ignore message ids we do not know.  Their bytes are skipped as
        # they arrive, never buffered whole.
        total = length + 4
        if avail >= total:
            self._r = r + total
            return None
        self._r = self._w
        self._skip = total - avail
        self._special = True
        return NEED_DATA

    def _next_handshake(self) -> Handshake | NeedData:
        buf, r = self._buf, self._r
        avail = self._w - r
        # Check each part as soon as it is in, so junk is refused early.
        if avail == 0:
            return NEED_DATA
        seen = min(avail, 20)
        if buf[r : r + seen] != _HANDSHAKE_PREFIX[:seen]:
            raise self._fail("not a BitTorrent handshake")
        if avail > 28:
            seen = min(avail, 48)
            if buf[r + 28 : r + seen] != self._info_hash[: seen - 28]:
                raise self._fail("wrong info-hash")
        if avail < HANDSHAKE_LEN:
            return NEED_DATA
        self._peer_reserved = bytes(buf[r + 20 : r + 28])
        self._fast = bool(
            self._handshake_sent
            and self._our_reserved[FAST_BYTE] & FAST_BIT
            and self._peer_reserved[FAST_BYTE] & FAST_BIT
        )
        peer_id = bytes(buf[r + 48 : r + 68])
        self._r = r + HANDSHAKE_LEN
        self._handshake_received = True
        return Handshake(self._info_hash, peer_id, self._peer_reserved)

    # -- sending --------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """The bytes that put ``event`` on the wire, after checking it is allowed."""
        sender = _SENDERS.get(type(event))
        if sender is None:
            raise LocalProtocolError(f"cannot send {event!r}")
        if not self._handshake_sent and type(event) is not Handshake:
            raise LocalProtocolError("the handshake must be sent first")
        return sender(self, event)

    def piece_header(self, index: int, begin: int, length: int) -> bytes:
        """The 13-byte header of a Piece message whose ``length``-byte block the
        caller sends right after it (sendmsg); checked like send(Piece)."""
        if not self._handshake_sent:
            raise LocalProtocolError("the handshake must be sent first")
        self._check_piece_out(index, begin, length)
        return _pack_piece_header(9 + length, _PIECE, index, begin)

    def _known_geometry(self) -> Geometry:
        geometry = self._geometry
        if geometry is None:
            raise LocalProtocolError("the torrent's geometry is not known yet")
        return geometry

    def _check_block_out(self, index: int, begin: int, length: int) -> None:
        geometry = self._known_geometry()
        if index < 0 or begin < 0 or not geometry.block_ok(index, begin, length):
            raise LocalProtocolError(
                f"block ({index}, {begin}, {length}) is not inside the torrent"
            )

    def _check_piece_out(self, index: int, begin: int, length: int) -> None:
        # The upload hot path (a block per call): the checks of _check_block_out inline.
        geo = self._geometry
        if geo is None or index < 0 or begin < 0 or not geo.block_ok(index, begin, length):
            self._check_block_out(index, begin, length)  # raises the right error
        if self._am_choking and index not in self._allowed_out:  # BEP 6: unless allowed fast
            raise LocalProtocolError("cannot send a block while choking the peer")
        self._bitfield_out_open = False
        if self._peer_requests:
            self._peer_requests.pop((index, begin, length), None)

    def _send_handshake(self, ev: Handshake) -> bytes:
        if self._handshake_sent:
            raise LocalProtocolError("the handshake was already sent")
        if ev.info_hash != self._info_hash:
            raise LocalProtocolError("wrong info-hash")
        if len(ev.peer_id) != 20 or len(ev.reserved) != 8:
            raise LocalProtocolError("peer_id must be 20 bytes and reserved 8")
        self._handshake_sent = True
        self._our_reserved = bytes(ev.reserved)
        self._fast = bool(
            self._handshake_received
            and ev.reserved[FAST_BYTE] & FAST_BIT
            and self._peer_reserved[FAST_BYTE] & FAST_BIT
        )
        return b"".join((_HANDSHAKE_PREFIX, ev.reserved, ev.info_hash, ev.peer_id))

    def _send_keep_alive(self, ev: KeepAlive) -> bytes:
        return _KEEP_ALIVE_BYTES

    def _send_choke(self, ev: Choke) -> bytes:
        self._am_choking = True
        self._bitfield_out_open = False
        if not self._fast:  # BEP 6: they are still owed a block or a RejectRequest
            self._ledger.peer_requests_dropped()
        return _CHOKE_BYTES

    def _send_unchoke(self, ev: Unchoke) -> bytes:
        self._am_choking = False
        self._bitfield_out_open = False
        return _UNCHOKE_BYTES

    def _send_interested(self, ev: Interested) -> bytes:
        self._am_interested = True
        self._bitfield_out_open = False
        return _INTERESTED_BYTES

    def _send_not_interested(self, ev: NotInterested) -> bytes:
        self._am_interested = False
        self._bitfield_out_open = False
        return _NOT_INTERESTED_BYTES

    def _send_have(self, ev: Have) -> bytes:
        n = self._known_geometry().num_pieces
        if not 0 <= ev.index < n:
            raise LocalProtocolError(f"have for piece {ev.index} of {n}")
        self._bitfield_out_open = False
        return _pack_have(5, _HAVE, ev.index)

    def _send_bitfield(self, ev: Bitfield) -> bytes:
        n = self._known_geometry().num_pieces
        if not self._bitfield_out_open:
            raise LocalProtocolError("a bitfield may only be the first message")
        if not _bitfield_ok(ev.bits, n):
            raise LocalProtocolError(f"not a valid bitfield for {n} pieces")
        self._bitfield_out_open = False
        return _pack_header(self._bitfield_len, _BITFIELD) + ev.bits

    def _send_request(self, ev: Request) -> bytes:
        return self.send_requests(((ev.index, ev.begin, ev.length),))

    def send_requests(self, keys: Sequence[tuple[int, int, int]]) -> bytes:
        """The bytes of one Request per ``(index, begin, length)``, checked as
        ``send(Request(...))`` checks each; all or none are recorded.

        The download hot path: no event object per block, one join.
        """
        if not self._handshake_sent:
            raise LocalProtocolError("the handshake must be sent first")
        # Geometry.block_ok inline (a call per block is measurable), sign checks included
        geometry = self._known_geometry()
        last, piece_length = geometry.last_piece, geometry.piece_length
        last_size = geometry.last_piece_size
        for index, begin, length in keys:
            if (
                not 0 <= index <= last
                or begin < 0
                or not 0 < length <= BLOCK_SIZE
                or begin + length > (piece_length if index != last else last_size)
            ):
                self._check_block_out(index, begin, length)  # raises the right error
        # BEP 6: pieces the peer allowed us fast may be asked for while it chokes us.
        allowed = self._allowed_fast
        if self._peer_choking and (not keys or not all(key[0] in allowed for key in keys)):
            raise LocalProtocolError("cannot request while the peer chokes us")
        self._ledger.record(keys)
        if not keys:
            return b""
        self._bitfield_out_open = False
        return b"".join([_pack_block(13, _REQUEST, i, b, n) for i, b, n in keys])

    def _send_cancel(self, ev: Cancel) -> bytes:
        index, begin, length = ev.index, ev.begin, ev.length
        self._check_block_out(index, begin, length)
        # Cancelling something no longer outstanding is harmless on the wire
        # (the peer ignores it), and can happen after a choke, so it is allowed.
        self._ledger.cancel((index, begin, length))
        self._bitfield_out_open = False
        return _pack_block(13, _CANCEL, index, begin, length)

    def _send_piece(self, ev: Piece) -> bytes:
        length = len(ev.block)
        self._check_piece_out(ev.index, ev.begin, length)
        return _pack_piece_header(9 + length, _PIECE, ev.index, ev.begin) + ev.block

    def _send_port(self, ev: Port) -> bytes:
        if not 0 <= ev.port <= 0xFFFF:
            raise LocalProtocolError(f"port {ev.port} is out of range")
        return _pack_port(3, _PORT, ev.port)

    def _need_fast(self) -> None:
        if not self._fast:
            raise LocalProtocolError(
                "the fast extension (BEP 6) was not negotiated in both handshakes"
            )

    def _send_have_all(self, ev: HaveAll) -> bytes:
        return self._send_have_all_or_none(_HAVE_ALL_BYTES)

    def _send_have_none(self, ev: HaveNone) -> bytes:
        return self._send_have_all_or_none(_HAVE_NONE_BYTES)

    def _send_have_all_or_none(self, data: bytes) -> bytes:
        self._need_fast()
        self._known_geometry()
        if not self._bitfield_out_open:
            raise LocalProtocolError("have all or have none may only be the first message")
        self._bitfield_out_open = False
        return data

    def _send_piece_hint(self, index: int, msg_id: int) -> bytes:
        self._need_fast()
        n = self._known_geometry().num_pieces
        if not 0 <= index < n:
            raise LocalProtocolError(f"piece {index} of {n} in message {msg_id}")
        self._bitfield_out_open = False
        return _pack_have(5, msg_id, index)

    def _send_suggest(self, ev: SuggestPiece) -> bytes:
        return self._send_piece_hint(ev.index, _SUGGEST)

    def _send_allowed_fast(self, ev: AllowedFast) -> bytes:
        data = self._send_piece_hint(ev.index, _ALLOWED_FAST)
        self._allowed_out.add(ev.index)  # its blocks may go out while we choke the peer
        return data

    def _send_reject(self, ev: RejectRequest) -> bytes:
        self._need_fast()
        index, begin, length = ev.index, ev.begin, ev.length
        self._check_block_out(index, begin, length)
        self._bitfield_out_open = False
        self._ledger.peer_settled((index, begin, length))
        return _pack_block(13, _REJECT, index, begin, length)

    def _send_hash_fields(self, msg_id: int, ev: HashRequest | Hashes | HashReject) -> bytes:
        if len(ev.root) != 32 or not _hash_fields_ok(ev.base, ev.count, ev.proof_layers):
            raise LocalProtocolError(f"{ev!r} has fields out of range")
        if not 0 <= ev.index <= 0xFFFFFFFF:
            raise LocalProtocolError(f"{ev!r} has an index out of range")
        return _HASH_FIELDS.pack(ev.root, ev.base, ev.index, ev.count, ev.proof_layers)

    def _send_hash_request(self, ev: HashRequest) -> bytes:
        body = self._send_hash_fields(_HASH_REQUEST, ev)
        return _pack_header(1 + len(body), _HASH_REQUEST) + body

    def _send_hash_reject(self, ev: HashReject) -> bytes:
        body = self._send_hash_fields(_HASH_REJECT, ev)
        return _pack_header(1 + len(body), _HASH_REJECT) + body

    def _send_hashes(self, ev: Hashes) -> bytes:
        body = self._send_hash_fields(_HASHES, ev)
        if len(ev.hashes) != 32 * hashes_expected(ev.count, ev.proof_layers):
            raise LocalProtocolError(f"{ev!r} does not hold the hashes its fields say")
        if 1 + len(body) + len(ev.hashes) > MAX_MESSAGE:
            raise LocalProtocolError("hashes message is too large")
        return _pack_header(1 + len(body) + len(ev.hashes), _HASHES) + body + ev.hashes

    def _send_extended(self, ev: Extended) -> bytes:
        if not self.extensions_enabled:
            raise LocalProtocolError("BEP 10 was not negotiated in both handshakes")
        if not 0 <= ev.ext_id <= 255:
            raise LocalProtocolError(f"extended message id {ev.ext_id} is out of range")
        if 2 + len(ev.payload) > MAX_MESSAGE:
            raise LocalProtocolError("extended message is too large")
        return _pack_extended_header(2 + len(ev.payload), _EXTENDED, ev.ext_id) + ev.payload


_Receiver = Callable[[Connection, bytearray, int, int, int], _Parsed]


def _receivers() -> tuple[tuple[_Receiver, int], ...]:
    """Message id -> (parser, exact length or 0 if the parser frames it)."""
    table: list[tuple[_Receiver, int]] = [(Connection._recv_unknown, 0)] * 256
    table[_SUGGEST] = (Connection._recv_suggest, 0)
    table[_HAVE_ALL] = (Connection._recv_have_all, 0)
    table[_HAVE_NONE] = (Connection._recv_have_none, 0)
    table[_REJECT] = (Connection._recv_reject, 0)
    table[_ALLOWED_FAST] = (Connection._recv_allowed_fast, 0)
    fixed: dict[int, _Receiver] = {
        _CHOKE: Connection._recv_choke,
        _UNCHOKE: Connection._recv_unchoke,
        _INTERESTED: Connection._recv_interested,
        _NOT_INTERESTED: Connection._recv_not_interested,
        _HAVE: Connection._recv_have,
        _REQUEST: Connection._recv_request,
        _CANCEL: Connection._recv_cancel,
        _PORT: Connection._recv_port,
    }
    for msg_id, parse in fixed.items():
        table[msg_id] = (parse, _FIXED_LEN[msg_id])
    table[_BITFIELD] = (Connection._recv_bitfield, 0)
    table[_PIECE] = (Connection._recv_piece, 0)
    table[_EXTENDED] = (Connection._recv_extended, 0)
    table[_HASH_REQUEST] = (Connection._recv_hash_request, _FIXED_LEN[_HASH_REQUEST])
    table[_HASH_REJECT] = (Connection._recv_hash_reject, _FIXED_LEN[_HASH_REJECT])
    table[_HASHES] = (Connection._recv_hashes, 0)
    return tuple(table)


# A tuple indexed by the id byte: no hashing, no miss case.
_RECEIVERS: Final = _receivers()

_SENDERS: Final[dict[type[Event], Callable[[Connection, Any], bytes]]] = {
    Handshake: Connection._send_handshake,
    KeepAlive: Connection._send_keep_alive,
    Choke: Connection._send_choke,
    Unchoke: Connection._send_unchoke,
    Interested: Connection._send_interested,
    NotInterested: Connection._send_not_interested,
    Have: Connection._send_have,
    Bitfield: Connection._send_bitfield,
    Request: Connection._send_request,
    Cancel: Connection._send_cancel,
    Piece: Connection._send_piece,
    Port: Connection._send_port,
    Extended: Connection._send_extended,
    HaveAll: Connection._send_have_all,
    HaveNone: Connection._send_have_none,
    SuggestPiece: Connection._send_suggest,
    RejectRequest: Connection._send_reject,
    AllowedFast: Connection._send_allowed_fast,
    HashRequest: Connection._send_hash_request,
    Hashes: Connection._send_hashes,
    HashReject: Connection._send_hash_reject,
}
