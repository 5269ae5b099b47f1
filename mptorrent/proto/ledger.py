"""Block requests of one peer connection, and the torrent geometry they are checked against.

Split out of :class:`mptorrent.proto.wire.Connection`, which owns one
:class:`RequestLedger` and, once it is known, one :class:`Geometry`.  Sans-IO
and free of the wire format: keys are ``(index, begin, length)`` tuples, the
connection turns them into messages.

Every request we send ends exactly one way: its block arrives, we cancel it,
the peer rejects it (BEP 6), or :meth:`RequestLedger.clear` hands it back for
re-queueing (a received Choke, without the fast extension, only moves it to
the *lost* set that ``clear`` empties).  Late blocks for
requests we gave up on are recognised and dropped quietly; blocks nobody asked
for are counted, and only a peer that keeps pushing them is cut off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import field
from typing import Final, Literal

from mptorrent.proto.wire_errors import LocalProtocolError
from mptorrent.record import Record, frozen

__all__ = [
    "BLOCK_SIZE",
    "MAX_CANCELLED",
    "MAX_PEER_REQUESTS",
    "MAX_UNWANTED_BYTES",
    "BlockKey",
    "Geometry",
    "Rejected",
    "RequestLedger",
]

BLOCK_SIZE: Final = 16384  # BEP 3: the largest request every client serves
# Late blocks for requests we cancelled (or lost to a choke) are dropped quietly;
# remembering a few thousand covers any sane pipeline depth and bounds memory.
MAX_CANCELLED: Final = 4096
MAX_UNWANTED_BYTES: Final = 4 << 20  # unrequested block payload tolerated per connection
# The peer's requests are recorded, not policed (the uploader caps its queue at 500
# and cuts the peer off); past this many the oldest are forgotten, to bound memory.
MAX_PEER_REQUESTS: Final = 4096

BlockKey = tuple[int, int, int]  # (index, begin, length) of a block request
# What a BEP 6 Reject Request was for: a request still outstanding, one we had
# given up on (cancelled, or lost to a choke), or one we never sent.
Rejected = Literal["outstanding", "given_up", "unknown"]


@frozen
class Geometry(Record):
    """Piece count, piece length and total length of a torrent, checked consistent.

    Raises :class:`LocalProtocolError` if they do not describe a torrent: at
    least one piece of at least one byte, and a last piece of 1 to
    ``piece_length`` bytes.
    """

    num_pieces: int
    piece_length: int
    total_length: int
    last_piece: int = field(init=False, repr=False, compare=False)
    last_piece_size: int = field(init=False, repr=False, compare=False)
    bitfield_bytes: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n, size, total = self.num_pieces, self.piece_length, self.total_length
        if n < 1 or size < 1:
            raise LocalProtocolError("a torrent has at least one piece of at least one byte")
        if not (n - 1) * size < total <= n * size:
            raise LocalProtocolError(f"{total} bytes do not make {n} pieces of {size}")
        # Derived once: the receive path reads them for every request it checks.
        object.__setattr__(self, "last_piece", n - 1)
        object.__setattr__(self, "last_piece_size", total - (n - 1) * size)
        object.__setattr__(self, "bitfield_bytes", (n + 7) // 8)

    def block_ok(self, index: int, begin: int, length: int) -> bool:
        """The block lies inside piece ``index`` and is 1 to BLOCK_SIZE bytes long.

        ``index`` and ``begin`` are taken as non-negative (they come off the wire
        unsigned; the send side checks the sign itself).
        """
        if index > self.last_piece or not 0 < length <= BLOCK_SIZE:
            return False
        size = self.last_piece_size if index == self.last_piece else self.piece_length
        return begin + length <= size


def _trim(keys: dict[BlockKey, None], limit: int) -> None:
    """Forget the oldest entries beyond ``limit`` (dicts keep insertion order)."""
    excess = len(keys) - limit
    if excess > 0:
        it = iter(keys)
        oldest = [next(it) for _ in range(excess)]
        for key in oldest:
            del keys[key]


class RequestLedger:
    """What we asked the peer for and have not got, and what the peer asked of us.

    The dictionaries are public for :class:`~mptorrent.proto.wire.Connection`,
    whose receive fast path pops ``outstanding`` directly; everyone else uses
    the methods.  The ledger checks no geometry: the connection does, before it
    records anything.
    """

    __slots__ = ("cancelled", "lost", "outstanding", "peer_requests", "unwanted_bytes")

    def __init__(self) -> None:
        # Keys only (the value is always True): a Request object per block would cost
        # more than the rest of the bookkeeping.  The dict is never replaced, only
        # cleared, so the connection may keep a reference to it.
        self.outstanding: dict[BlockKey, bool] = {}
        self.cancelled: dict[BlockKey, None] = {}  # given up on; late blocks are dropped
        self.lost: dict[BlockKey, bool] = {}  # dropped by a choke, not yet handed back
        self.unwanted_bytes = 0
        self.peer_requests: dict[BlockKey, None] = {}  # the peer's, not yet served

    # -- our requests ---------------------------------------------------------

    def requested(self) -> list[BlockKey]:
        """The outstanding requests, oldest first."""
        return list(self.outstanding)

    def record(self, keys: Sequence[BlockKey]) -> None:
        """Record requests about to be sent: all of them, or none (LocalProtocolError)."""
        outstanding = self.outstanding
        if not outstanding.keys().isdisjoint(keys):
            key = next(key for key in keys if key in outstanding)
            raise LocalProtocolError(f"block {key} is already requested")
        added = dict.fromkeys(keys, True)
        if len(added) != len(keys):
            raise LocalProtocolError("the same block is requested twice")
        cancelled, lost = self.cancelled, self.lost
        if cancelled or lost:
            for key in keys:
                cancelled.pop(key, None)
                lost.pop(key, None)
        outstanding.update(added)

    def cancel(self, key: BlockKey) -> bool:
        """We cancel ``key``; True if it was outstanding (a late block is then dropped)."""
        if self.outstanding.pop(key, None) is None:
            return False
        self.cancelled[key] = None
        _trim(self.cancelled, MAX_CANCELLED)
        return True

    def choked(self) -> None:
        """The peer choked us: every outstanding request is lost until clear()."""
        if self.outstanding:
            self.lost.update(self.outstanding)
            self.cancel_all()

    def clear(self) -> list[BlockKey]:
        """Forget every request still owed and return them, oldest first.

        That is the requests a choke discarded since the last call, then the
        outstanding ones.  Blocks that still arrive for them are dropped.
        """
        owed = list(self.lost)
        self.lost.clear()
        if self.outstanding:
            owed.extend(self.outstanding)
            self.cancel_all()
        return owed

    def cancel_all(self) -> None:
        cancelled = self.cancelled
        for key in self.outstanding:
            cancelled[key] = None
        self.outstanding.clear()
        _trim(cancelled, MAX_CANCELLED)

    def late(self, key: BlockKey) -> bool:
        """A block arrived that was not outstanding: True if we had given up on it
        (it is forgotten now), False if nobody asked for it."""
        if key in self.cancelled:
            del self.cancelled[key]
            return True
        return False

    def rejected(self, key: BlockKey) -> Rejected:
        """The peer rejected our request ``key`` (BEP 6): an outstanding one is settled
        (no block will come), a cancelled one is forgotten like its late block would be."""
        if self.outstanding.pop(key, None) is not None:
            return "outstanding"
        if key in self.cancelled:
            del self.cancelled[key]
            return "given_up"
        if key in self.lost:
            return "given_up"  # still handed back by clear()
        return "unknown"

    def unwanted(self, nbytes: int) -> bool:
        """Count ``nbytes`` of unrequested block payload; True once over the limit."""
        self.unwanted_bytes += nbytes
        return self.unwanted_bytes > MAX_UNWANTED_BYTES

    # -- the peer's requests --------------------------------------------------
    # BEP 3: a choke discards everything the peer asked for; a Cancel or the
    # block itself settles one request.

    def peer_requested(self, key: BlockKey) -> None:
        requests = self.peer_requests
        requests[key] = None
        if len(requests) > MAX_PEER_REQUESTS:
            del requests[next(iter(requests))]

    def peer_settled(self, key: BlockKey) -> None:
        """The peer cancelled ``key``, or we sent its block."""
        self.peer_requests.pop(key, None)

    def peer_requests_dropped(self) -> None:
        """We choked the peer."""
        self.peer_requests.clear()
