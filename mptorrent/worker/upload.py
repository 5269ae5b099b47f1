"""Serving verified pieces to peers: the upload half of every worker.

``Uploader`` holds the per-process upload policy (who is unchoked, whose
requests are queued) and is used both by fetch workers (which serve while they
download) and by ``mptorrent seed`` worker processes.  Safety rules: serve only
pieces in the verified have-map; the wire layer already refuses requests over
16 KiB or outside the piece; each peer's queue of pending requests is capped;
reads go through the mapped files only.  With the fast extension (BEP 6) every
request we do not serve (choked, a piece we lack, cancelled, queued when we
choke) is answered with a Reject Request.  It also lets us give each peer an
Allowed Fast set (:meth:`Uploader.greeted`): BEP 6's canonical pieces for its
address (``ALLOWED_FAST_SENT`` of them, those we have), whose requests are
served even while that peer is choked, so a newcomer can get its first pieces
(and something to trade) before a rechoke reaches it.

BEP 52 hash requests (v2 torrents) are answered by :meth:`Uploader.hashes` from the
torrent's piece layers, or for leaf hashes from a piece in the have-map, within a per-peer
token bucket; anything else gets a hash reject.
"""

from __future__ import annotations

import random
import time
from collections import deque
from typing import TYPE_CHECKING, Protocol

from mptorrent.disk.storage import Storage
from mptorrent.errors import ProtocolError
from mptorrent.netio.peer import ACTIVE, PeerSession
from mptorrent.policy.budget import RequestBudget
from mptorrent.proto import wire
from mptorrent.proto.fast import allowed_fast_set

if TYPE_CHECKING:
    from mptorrent.proto import merkle  # v2 only: loaded with a v2 torrent's metainfo

MAX_QUEUED_REQUESTS = 500  # libtorrent max_allowed_in_request_queue
MAX_CHOKED_REQUESTS = 300  # libtorrent too_many_requests_when_choked
SEND_HIGH_WATER = 1 << 20  # stop reading blocks for a peer while this much is unsent
UNCHOKE_SLOTS = 8
RECHOKE_EVERY = 10.0
OPTIMISTIC_EVERY = 30.0
# BEP 6 Allowed Fast pieces offered to each peer.  Few: a peer can collect a set per /24
# it connects from, and each set is served regardless of the rechoke.
ALLOWED_FAST_SENT = 4
# BEP 52 hash requests a peer may make: a burst for a magnet leecher's first piece-layer
# requests (one per large file, 512 pieces each), then a steady rate; the rest are rejected.
HASH_REQUEST_BURST = 64.0
HASH_REQUEST_RATE = 16.0


class Budget(Protocol):
    """A global upload limit as one worker draws on it (``worker.process`` gives the shared
    counters of ``engine/limits.py``)."""

    def balance(self) -> int: ...

    def spend(self, n: int) -> None: ...


class UploadState:
    """One peer's upload side in this worker: requests waiting to be served (dropped when we choke
    it), requests sent while choked (capped per choke), bytes served since the last rechoke, and
    the pieces we allowed it fast (BEP 6: served even while it is choked)."""

    __slots__ = (
        "allowed_fast", "choked_requests", "hash_budget", "queue", "rate_bytes", "unchoked_at",
    )  # fmt: skip

    def __init__(self) -> None:
        self.hash_budget = RequestBudget(HASH_REQUEST_RATE, HASH_REQUEST_BURST)
        self.allowed_fast: frozenset[int] = frozenset()
        self.queue: deque[tuple[int, int, int]] = deque()
        self.choked_requests = 0
        self.rate_bytes = 0  # uploaded since the last rechoke
        self.unchoked_at = 0.0


class Uploader:
    """One worker's upload half: chokes and unchokes its peers (tit-for-tat while downloading,
    rotation when seeding) and serves requests for pieces in the have-map only."""

    def __init__(self, storage: Storage, have: memoryview | bytearray, *, seeding: bool) -> None:
        self.storage = storage
        self.have = have
        self.seeding = seeding
        self.state: dict[PeerSession, UploadState] = {}
        self.optimistic: PeerSession | None = None
        self._last_rechoke = 0.0
        self._last_optimistic = 0.0
        self.uploaded = 0
        self.limit: Budget | None = None  # a global upload limit; None: unlimited
        self._quota = 0  # under a limit: bytes each peer may be served this loop turn

    def attach(self, p: PeerSession) -> None:
        self.state[p] = UploadState()

    def greeted(self, p: PeerSession) -> None:
        """Our piece state is sent (``PeerSession.greet_rest``): with the fast extension,
        tell the peer which of BEP 6's pieces for its address it may request while choked."""
        st = self.state.get(p)
        conn = p.wire
        geometry = conn.geometry
        if st is None or not conn.fast_enabled or geometry is None:
            return
        try:
            chosen = allowed_fast_set(
                p.addr.host, p.info_hash, geometry.num_pieces, ALLOWED_FAST_SENT
            )
        except ValueError:
            return  # not an IP literal: no set to compute
        have = self.have
        allowed = [index for index in chosen if have[index]]
        st.allowed_fast = frozenset(allowed)
        for index in allowed:
            p.queue(conn.send(wire.AllowedFast(index)))

    def detach(self, p: PeerSession) -> None:
        self.state.pop(p, None)
        if self.optimistic is p:
            self.optimistic = None

    def on_event(self, p: PeerSession, ev: wire.Event) -> None:
        st = self.state.get(p)
        if st is None:
            return
        if isinstance(ev, wire.Request):
            if p.wire.am_choking and ev.index not in st.allowed_fast:
                st.choked_requests += 1
                if st.choked_requests > MAX_CHOKED_REQUESTS:
                    raise ProtocolError("too many requests while choked")
                self._reject(p, ev.index, ev.begin, ev.length)
                return
            if not self.have[ev.index]:
                # we never announced it; refuse rather than lie
                self._reject(p, ev.index, ev.begin, ev.length)
                return
            if len(st.queue) >= MAX_QUEUED_REQUESTS:
                raise ProtocolError("request queue overflow")
            st.queue.append((ev.index, ev.begin, ev.length))
        elif isinstance(ev, wire.Cancel):
            try:
                st.queue.remove((ev.index, ev.begin, ev.length))
            except ValueError:
                pass  # served already: the block is its answer
            else:
                self._reject(p, ev.index, ev.begin, ev.length)  # BEP 6: a cancel is answered
        elif isinstance(ev, wire.Interested):
            # Unchoke promptly while there are free slots; the rechoke fixes the rest.
            if p.wire.am_choking and self._unchoked_count() < UNCHOKE_SLOTS:
                self._unchoke(p, st)
        elif isinstance(ev, wire.NotInterested) and not p.wire.am_choking:
            self._choke(p, st)

    def hashes(
        self, p: PeerSession, ev: wire.HashRequest, tree: merkle.MerklePieces | None
    ) -> None:
        """Answer a BEP 52 hash request (``tree``: the torrent's merkle verifier; None for v1)."""
        from mptorrent.proto import merkle  # loaded already for a v2 torrent (metainfo)

        st = self.state.get(p)
        req = merkle.HashRange(ev.root, ev.base, ev.index, ev.count, ev.proof_layers)
        found = None
        if st is not None and tree is not None and st.hash_budget.allow(time.monotonic()):
            layout = self.storage.layout

            def leaves(index: int) -> list[bytes] | None:
                if not self.have[index]:
                    return None  # BEP 52: only pieces we announced
                data = self.storage.read(index * layout.piece_length, layout.piece_size(index))
                return tree.piece_leaves(index, data)

            found = merkle.answer(tree, req, leaves)
        fields = (ev.root, ev.base, ev.index, ev.count, ev.proof_layers)
        if found is None:
            p.queue(p.wire.send(wire.HashReject(*fields)))
        else:
            p.queue(p.wire.send(wire.Hashes(*fields, found)))

    def _unchoked_count(self) -> int:
        return sum(1 for p in self.state if not p.wire.am_choking)

    def _unchoke(self, p: PeerSession, st: UploadState) -> None:
        p.queue(p.wire.send(wire.Unchoke()))
        st.unchoked_at = time.monotonic()
        st.choked_requests = 0  # the cap is per choke: pipelined stragglers must not add up

    def _choke(self, p: PeerSession, st: UploadState) -> None:
        p.queue(p.wire.send(wire.Choke()))
        for index, begin, length in st.queue:  # BEP 6: a choke no longer implies them
            self._reject(p, index, begin, length)
        st.queue.clear()

    def _reject(self, p: PeerSession, index: int, begin: int, length: int) -> None:
        """A request we will not serve: with the fast extension the peer is told (BEP 6
        Reject Request), without it the request is dropped silently, as BEP 3 has it."""
        if p.wire.fast_enabled:
            p.queue(p.wire.send(wire.RejectRequest(index, begin, length)))

    def backlogged(self, p: PeerSession) -> bool:
        """Requests are queued that serve() has not put in the send buffer yet (a choked
        peer's queue holds only requests for pieces we allowed it fast)."""
        st = self.state.get(p)
        return st is not None and bool(st.queue) and not self.starved()

    def starved(self) -> bool:
        """The upload limit's balance is used up: nothing is served until it comes back."""
        return self.limit is not None and self.limit.balance() <= 0

    def begin_turn(self) -> None:
        """Under an upload limit, share this turn's balance among the peers waiting for
        blocks, so the first peers of the loop cannot take it all turn after turn."""
        if self.limit is None:
            return
        waiting = sum(1 for st in self.state.values() if st.queue)
        self._quota = max(wire.BLOCK_SIZE, self.limit.balance() // max(1, waiting))

    def serve(self, p: PeerSession) -> None:
        """Move queued requests into the send buffer, up to the high-water mark (and,
        under a limit, this turn's share)."""
        st = self.state.get(p)
        if st is None or p.state != ACTIVE:
            return
        limit = self.limit
        quota = self._quota
        while st.queue and len(p.out) < SEND_HIGH_WATER:
            if limit is not None:
                if limit.balance() <= 0 or quota <= 0:
                    return  # the next tick brings more (a block may overdraw: paid back)
                quota -= st.queue[0][2]
                limit.spend(st.queue[0][2])
            index, begin, length = st.queue.popleft()
            start = index * self.storage.layout.piece_length + begin
            block = self.storage.read(start, length)
            p.queue(p.wire.piece_header(index, begin, length))
            p.queue(block)
            st.rate_bytes += length
            self.uploaded += length

    def rechoke(self, now: float) -> None:
        """Every 10 s: unchoke the best interested peers; rotate one optimistic slot."""
        if now - self._last_rechoke < RECHOKE_EVERY:
            return
        self._last_rechoke = now
        interested = [p for p in self.state if p.state == ACTIVE and p.wire.peer_interested]
        if self.seeding:
            # A seed rotates among everyone interested: those served longest go last.
            interested.sort(key=lambda p: self.state[p].unchoked_at)
        else:
            # Tit-for-tat: reward the peers that upload to us fastest.
            interested.sort(key=lambda p: p.rate(now), reverse=True)
        keep = set(interested[: UNCHOKE_SLOTS - 1])
        if now - self._last_optimistic >= OPTIMISTIC_EVERY or self.optimistic not in self.state:
            self._last_optimistic = now
            rest = [p for p in interested if p not in keep]
            self.optimistic = random.choice(rest) if rest else None
        if self.optimistic is not None:
            keep.add(self.optimistic)
        for p, st in self.state.items():
            if p.state != ACTIVE:
                continue
            if p in keep and p.wire.am_choking:
                self._unchoke(p, st)
            elif p not in keep and not p.wire.am_choking:
                self._choke(p, st)
            st.rate_bytes = 0
