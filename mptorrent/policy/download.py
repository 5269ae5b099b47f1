"""Which blocks to ask of which peer, and what a finished piece means: the download policy.

Sans-IO.  :class:`DownloadPolicy` holds the pieces a worker has in hand (a
:class:`PieceJob` each, assembled in the worker's own buffer), hands their 16 KiB blocks
to peers' pipelines, copies arriving blocks into place, verifies finished pieces, works
out whom to blame for a bad one (smart ban) and which pieces to give back.  It never
touches a socket, a queue or a file:

- peers are seen through the small :class:`Peer` protocol (a wire connection in the
  worker; a web seed could be another kind).  Requests and cancels go to
  :meth:`Peer.request` and :meth:`Peer.cancel`, which only queue them;
- new work comes from a ``take`` callable (the worker's work queue, acknowledged there);
- everything else it decides is appended to :attr:`DownloadPolicy.decisions`, in order,
  as :class:`Verified`, :class:`Failed`, :class:`Ban` and :class:`GiveBack` records that
  the worker applies (write the piece, report, drop the peer);
- time is an input: the worker sets :attr:`DownloadPolicy.now` once per loop turn.

The block path (:meth:`DownloadPolicy.receive`) is the hottest code of a download: it
takes a whole run of blocks in one call (from a wire connection as tuples, through
``next_blocks``: no call and no event object per 16 KiB block) and copies each block
once, from the connection's receive buffer into its piece.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Generic, Protocol, TypeVar

from mptorrent.messages import PeerAddr
from mptorrent.proto import wire
from mptorrent.proto.hashing import PieceVerifier, block_fingerprint
from mptorrent.record import Record, frozen

BLOCK = wire.BLOCK_SIZE
MAX_STRIKES = 3  # hash failures a peer may take part in before it is banned
MAX_PIECE_TRIES = 3  # local attempts at a piece fed by several peers (smart ban) before release
MAX_BACKLOG = 8  # no new batch while this many taken pieces wait for other peers
ENDGAME_BLOCKS = 4  # duplicate requests an idle peer may get at once in the endgame, at least
ENDGAME_COPIES = 3  # peers asked for one block at most, in the endgame
ENDGAME_HORIZON = 1.5  # no duplicates while the blocks in hand need longer (seconds)
# Piece buffers are kept for reuse, up to the most pieces ever in hand at once (the
# peak memory is the same): a fresh one costs a malloc, page faults and zeroing.
MAX_FREE_BUFFERS = 256

BlockKey = tuple[int, int]  # (piece index, begin) of a block asked of a peer
BlockRequest = tuple[int, int, int]  # (piece index, begin, length)


class Peer(Protocol):
    """A source of blocks as the policy sees it: what it has, and its request pipeline."""

    @property
    def addr(self) -> PeerAddr: ...

    @property
    def pending(self) -> set[BlockKey]:
        """Blocks asked of this peer and not yet received; the policy keeps it."""
        ...

    @property
    def spare(self) -> int:
        """Requests it can take now (0 while it cannot take any, e.g. choked and nothing
        allowed fast)."""
        ...

    @property
    def allowed_while_choked(self) -> AbstractSet[int] | None:
        """None while it does not choke us; else the only pieces we may ask of it, those it
        allowed fast (BEP 6)."""
        ...

    @property
    def depth(self) -> int:
        """Its pipeline's length: requests worth keeping in flight."""
        ...

    @property
    def batch(self) -> int:
        """The fewest free pipeline slots worth a top-up while requests are outstanding."""
        ...

    @property
    def active(self) -> bool:
        """Connected, with its pieces known."""
        ...

    @property
    def connecting(self) -> bool:
        """Not yet active: its pieces are not known yet."""
        ...

    def has_piece(self, index: int) -> bool: ...

    def request(self, blocks: Sequence[BlockRequest]) -> None:
        """Queue requests for these blocks (already added to :attr:`pending`)."""
        ...

    def cancel(self, index: int, begin: int, length: int) -> None:
        """Withdraw a request (already removed from :attr:`pending`)."""
        ...


class BlockSource(Protocol):
    """Parsed messages of one peer (``wire.Connection``), taken one at a time.

    A source may also have ``next_blocks()`` (``wire.Connection.next_blocks``): the
    blocks it would return next, as ``(index, begin, block)`` in one list, without an
    event object per block; :meth:`DownloadPolicy.receive` takes them that way first."""

    def next_event(self) -> wire.Event | wire.NeedData: ...


BlockRun = Sequence[tuple[int, int, bytes | memoryview]]  # (index, begin, block)


P = TypeVar("P", bound=Peer)


@frozen
class Verified(Record):
    """Piece ``index`` verified: write ``data``, then give it back with ``recycle``."""

    index: int
    data: bytearray
    peers: tuple[PeerAddr, ...]  # who sent its blocks, most first


@frozen
class Failed(Record):
    """Piece ``index`` failed its hash; ``retrying``: fetched again here, else let go."""

    index: int
    peers: tuple[PeerAddr, ...]
    retrying: bool = False


@frozen
class Ban(Record):
    """A peer sent data that failed a hash check."""

    addr: PeerAddr
    reason: str


@frozen
class GiveBack(Record):
    """A piece this worker took but will not fetch (no peer of ours has it, or it stalled)."""

    index: int


Decision = Verified | Failed | Ban | GiveBack


class PieceJob:
    """One piece in hand: its buffer and, per block, who was asked and who sent it."""

    __slots__ = ("buf", "index", "last_progress", "nblocks", "nreceived",
                 "received", "requested", "senders", "size", "started", "suspects", "todo",
                 "tries")  # fmt: skip

    def __init__(self, index: int, size: int, now: float, buf: bytearray | None = None) -> None:
        self.index = index
        self.size = size
        # a recycled buffer holds an old piece: every block is overwritten before the hash
        self.buf = buf if buf is not None and len(buf) == size else bytearray(size)
        self.nblocks = -(-size // BLOCK)
        self.requested = bytearray(self.nblocks)  # how many peers asked for each block
        self.received = bytearray(self.nblocks)
        self.nreceived = 0
        self.todo = list(range(self.nblocks - 1, -1, -1))  # stack of blocks nobody asked for
        self.senders: list[PeerAddr | None] = [None] * self.nblocks
        self.suspects: dict[int, list[tuple[PeerAddr, bytes]]] = {}  # from failed tries
        self.tries = 0
        self.started = self.last_progress = now

    def reset(self, now: float) -> None:
        """Forget the received blocks to fetch the piece again."""
        self.requested = bytearray(self.nblocks)
        self.received = bytearray(self.nblocks)
        self.nreceived = 0
        self.todo = list(range(self.nblocks - 1, -1, -1))
        self.senders = [None] * self.nblocks
        self.last_progress = now

    def block_digest(self, blk: int) -> bytes:
        start = blk * BLOCK
        return block_fingerprint(memoryview(self.buf)[start : start + self.block_len(blk)])

    def block_len(self, blk: int) -> int:
        return min(BLOCK, self.size - blk * BLOCK)

    def take(self, n: int) -> list[int]:
        """Up to ``n`` blocks that nobody has been asked for yet."""
        out: list[int] = []
        todo, received, requested = self.todo, self.received, self.requested
        # As many off the top of the stack at once as are still wanted: the blocks a pop
        # per block would take, without a call per block.
        while todo and len(out) < n:
            top = todo[len(out) - n :]
            del todo[len(out) - n :]
            top.reverse()
            out += [b for b in top if not received[b] and not requested[b]]
        return out


class DownloadPolicy(Generic[P]):
    """A worker's pieces in hand, and what to ask of its peers to finish them.

    ``peers`` is the worker's own live map of connected peers (the map is only read
    here; each peer's ``pending`` set is kept here).  ``done`` is the shared done-map:
    one byte per verified piece, then the endgame flag the coordinator sets once nothing
    is left to hand out.  ``take`` returns the next batch of piece indices from the
    coordinator, or None when there is none.
    """

    def __init__(
        self,
        *,
        verifier: PieceVerifier,
        piece_length: int,
        total_length: int,
        done: bytearray | memoryview,
        peers: Mapping[PeerAddr, P],
        take: Callable[[], Sequence[int] | None],
    ) -> None:
        self.verifier = verifier
        self.piece_length = piece_length
        self.total_length = total_length
        self.num_pieces = verifier.num_pieces
        self.done = done
        self.peers = peers
        self.take = take
        self.jobs: dict[int, PieceJob] = {}
        self.backlog: list[int] = []  # taken, not started
        self.free_bufs: list[bytearray] = []
        self.strikes: dict[PeerAddr, int] = {}
        self.decisions: list[Decision] = []  # for the caller to apply, then clear
        self.downloaded = 0  # bytes of blocks received, duplicates included; caller resets
        self.queue_empty = False
        self.empty_at = -1.0  # loop turn (``now``) in which ``take`` last returned None
        self.now = 0.0
        # seconds the blocks in hand need at all the peers' rate, once the work source is dry
        # (the caller's estimate; None: not known)
        self.tail_left: float | None = None

    def piece_size(self, index: int) -> int:
        if index == self.num_pieces - 1:
            return self.total_length - index * self.piece_length
        return self.piece_length

    def left_in_hand(self) -> int | None:
        """Bytes still to arrive for the pieces this worker holds (asked or not), once its
        work source had nothing more to give (None before): the tail, whose time at the
        peers' rate bounds their request windows (``policy.pipeline``, "The tail")."""
        if not self.queue_empty:
            return None
        left = sum(job.size - job.nreceived * BLOCK for job in self.jobs.values())
        left += sum(self.piece_size(index) for index in self.backlog)
        return max(0, left)

    # -- requests -----------------------------------------------------------

    def fill(self, p: P) -> int:
        """Top up ``p``'s pipeline with block requests; returns how many were asked."""
        spare = p.spare
        # Top up once a batch is free: fewer, fuller sends (each one also wakes the
        # peer); a fast near peer's batch is half its pipeline, a distant one's smaller.
        if spare <= 0 or (p.pending and spare < p.batch):
            return 0
        has_piece = p.has_piece
        only = p.allowed_while_choked
        if only is not None:  # choked: BEP 6 lets us ask for the pieces it allowed fast
            if not only:
                return 0
            peer_has = has_piece

            def has_piece(index: int) -> bool:
                return index in only and peer_has(index)

        pending = p.pending
        keys: list[BlockRequest] = []
        while spare > 0:
            blocks: list[int] = []
            for job in self.jobs.values():
                if job.todo and has_piece(job.index):
                    blocks = job.take(spare)
                    if blocks:
                        break
            else:
                started = self._start_piece(has_piece)
                if started is not None:
                    job = started
                    blocks = job.take(spare)
                else:
                    found = self._endgame_blocks(p, spare, has_piece)
                    if found is None:
                        break
                    job, blocks = found
            index = job.index
            requested = job.requested
            for b in blocks:
                requested[b] += 1
            begins = [b * BLOCK for b in blocks]
            size = job.size
            last = size - BLOCK  # blocks that begin after this are the piece's short last one
            keys += [(index, s, BLOCK if s <= last else size - s) for s in begins]
            # now, not after the loop: the endgame search skips what is pending
            pending.update([(index, s) for s in begins])
            spare -= len(blocks)
        if keys:
            p.request(keys)
        return len(keys)

    def _start_piece(self, has_piece: Callable[[int], bool]) -> PieceJob | None:
        while True:
            for k, index in enumerate(self.backlog):
                if has_piece(index):
                    del self.backlog[k]
                    return self._new_job(index)
            if len(self.backlog) >= MAX_BACKLOG or not self._take_work():
                return None

    def _take_work(self) -> bool:
        """Move one batch from ``take`` to the backlog; False if there is none."""
        if self.queue_empty and self.empty_at == self.now:
            return False  # looked this turn already (once per turn, not once per peer)
        batch = self.take()
        if batch is None:
            self.queue_empty = True
            self.empty_at = self.now
            return False
        self.queue_empty = False
        active = [q for q in self.peers.values() if q.active]
        for index in batch:
            if self.done[index] or index in self.jobs or index in self.backlog:
                continue
            if any(q.has_piece(index) for q in active):
                self.backlog.append(index)
            else:
                # The coordinator only sends pieces our peers have; that peer has left.
                self.decisions.append(GiveBack(index))
        return True

    def _new_job(self, index: int) -> PieceJob:
        size = self.piece_size(index)
        full = size == self.piece_length  # the short last piece gets its own
        buf = self.free_bufs.pop() if full and self.free_bufs else None
        job = PieceJob(index, size, self.now, buf)
        self.jobs[index] = job
        return job

    def recycle(self, buf: bytearray) -> None:
        """A piece buffer the caller is done with (a :class:`Verified` one, once written)."""
        if len(self.free_bufs) < MAX_FREE_BUFFERS and len(buf) == self.piece_length:
            self.free_bufs.append(buf)

    def _endgame_blocks(
        self, p: P, n: int, has_piece: Callable[[int], bool]
    ) -> tuple[PieceJob, list[int]] | None:
        """Nothing new to fetch: ask this peer for up to ``n`` blocks of one piece that
        others are slow to send (``has_piece``: what we may ask of it).

        Strict, as libtorrent's strict_end_game_mode: only a peer with nothing outstanding
        duplicates, and a batch at a time (at least ``ENDGAME_BLOCKS``).  A peer's copy is
        often already in its send buffer when our cancel arrives (a libtorrent seeder
        buffers about 1.5 s of its rate), so each duplicate asked early is a block sent
        twice; a peer that is still busy gets to its own blocks first.  And none while the
        blocks in hand need over ``ENDGAME_HORIZON`` s at all the peers' rate
        (:attr:`tail_left`): at -j 2 on 48 slow seeders a worker's queue runs dry for
        moments about 3 s before the end (the coordinator moves the last pieces between
        workers), and the copies idle peers asked then were mostly sent twice."""
        if not self.queue_empty or not self.done[self.num_pieces] or p.pending:
            return None
        if self.tail_left is not None and self.tail_left > ENDGAME_HORIZON:
            # every peer is still busy with the blocks in hand for longer than a copy would
            # take: those blocks are on their way, and each copy asked now is sent twice
            return None
        n = min(n, max(ENDGAME_BLOCKS, p.batch))
        pending = p.pending
        # Blocks asked once first; a third copy only when every missing block has two:
        # the two peers asked may both be slow, with a send buffer of cancelled blocks
        # ahead of ours, while every other peer idles.
        for copies in range(1, ENDGAME_COPIES):
            for job in self.jobs.values():
                if not has_piece(job.index):
                    continue
                received, requested, index = job.received, job.requested, job.index
                found = [
                    b
                    for b in range(job.nblocks)
                    if not received[b]
                    and requested[b] == copies
                    and (index, b * BLOCK) not in pending
                ][:n]
                if found:
                    return job, found
        return None

    # -- blocks -------------------------------------------------------------

    def receive(self, p: P, source: BlockSource) -> wire.Event | wire.NeedData:
        """Take ``p``'s blocks from ``source`` up to its next other event, and return that
        event (``NEED_DATA`` when the source is drained).

        Each block is copied once, from the source's buffer into its piece; a piece whose
        last block arrives is verified here (decisions: Verified, Failed, Ban).
        """
        jobs = self.jobs
        pending = p.pending
        addr = p.addr
        now = self.now
        piece = wire.Piece
        next_blocks: Callable[[], BlockRun] | None = getattr(source, "next_blocks", None)
        run: BlockRun = ()
        while True:
            if next_blocks is not None:
                run = next_blocks()
            if not run:
                ev = source.next_event()
                if type(ev) is not piece:
                    return ev
                run = ((ev.index, ev.begin, ev.block),)
            # The bulk of all traffic, kept inline: a call per block is measurable.
            got = 0
            for index, begin, block in run:
                n = len(block)
                got += n  # every byte received, duplicates included
                pending.discard((index, begin))
                job = jobs.get(index)
                if job is None:
                    continue  # finished or dropped meanwhile (endgame duplicate)
                blk = begin // BLOCK
                if job.received[blk]:
                    continue
                job.buf[begin : begin + n] = block
                job.received[blk] = 1
                job.nreceived += 1
                job.senders[blk] = addr
                job.last_progress = now
                if job.requested[blk] > 1:
                    self._cancel_others(p, index, begin, n)
                if job.nreceived == job.nblocks:
                    self._complete(job)
            self.downloaded += got
            run = ()

    def _cancel_others(self, got: P, index: int, begin: int, length: int) -> None:
        for q in self.peers.values():
            if q is not got and (index, begin) in q.pending:
                q.pending.discard((index, begin))
                q.cancel(index, begin, length)

    def _complete(self, job: PieceJob) -> None:
        # Requests for this piece can still be out only where a block was asked of two
        # peers (endgame); skip scanning every peer's pending set for the common case.
        if max(job.requested) > 1:
            self._cancel_piece(job)
        # who sent its blocks, most first (credit, and suspects on a failure)
        senders = job.senders
        first = senders[0]
        if first is not None and senders.count(first) == len(senders):
            peers: tuple[PeerAddr, ...] = (first,)  # the common case: one peer sent them all
        else:
            peers = tuple(a for a, _ in Counter(senders).most_common() if a is not None)
        if self.verifier.verify(job.index, job.buf):
            del self.jobs[job.index]
            if job.suspects:
                self._smart_ban(job)
            self.decisions.append(Verified(job.index, job.buf, peers))
            return
        reason = f"sent data that failed the hash check of piece {job.index}"
        job.tries += 1
        if len(peers) == 1:
            # The sole contributor lied: ban it (libtorrent known_bad_peer).
            self._ban(peers[0], reason)
        elif job.tries < MAX_PIECE_TRIES:
            # Several peers fed it: remember who sent which block, fetch it again,
            # and ban whoever's blocks differ from the copy that verifies (smart ban).
            for blk, sender in enumerate(job.senders):
                if sender is not None:
                    job.suspects.setdefault(blk, []).append((sender, job.block_digest(blk)))
            self.decisions.append(Failed(job.index, peers, retrying=True))
            job.reset(self.now)
            return
        else:
            for addr in peers:
                self.strikes[addr] = self.strikes.get(addr, 0) + 1
                if self.strikes[addr] >= MAX_STRIKES:
                    self._ban(addr, reason)
        del self.jobs[job.index]
        self.recycle(job.buf)
        self.decisions.append(Failed(job.index, peers))

    def _smart_ban(self, job: PieceJob) -> None:
        for blk, claims in job.suspects.items():
            good = job.block_digest(blk)
            for sender, digest in claims:
                if digest != good:
                    self._ban(sender, f"sent a corrupt block of piece {job.index}")

    def _ban(self, addr: PeerAddr, reason: str) -> None:
        self.decisions.append(Ban(addr, reason))

    # -- giving work back ---------------------------------------------------

    def _cancel_piece(self, job: PieceJob) -> None:
        """Withdraw every request still out for this piece (endgame duplicates)."""
        for q in self.peers.values():
            pending = q.pending
            stale = [k for k in pending if k[0] == job.index]
            for k in stale:
                pending.discard(k)
                q.cancel(k[0], k[1], job.block_len(k[1] // BLOCK))

    def release(self, p: P) -> None:
        """``p`` will not answer its requests (it choked us or left): let others ask for
        the blocks."""
        for index, begin in p.pending:
            self._unask(index, begin)
        p.pending.clear()

    def rejected(self, p: P, index: int, begin: int) -> None:
        """``p`` rejected its request for this block (BEP 6): let others (or ``p``
        itself, later) ask for it, as :meth:`release` does for all of a peer's blocks."""
        if (index, begin) not in p.pending:
            return  # given up meanwhile (the piece finished, or an endgame cancel)
        p.pending.discard((index, begin))
        self._unask(index, begin)

    def _unask(self, index: int, begin: int) -> None:
        """One request for this block will not be answered: once none is out and the block
        is still missing, it goes back on its piece's to-do list."""
        job = self.jobs.get(index)
        if job is None:
            return
        blk = begin // BLOCK
        if job.requested[blk]:
            job.requested[blk] -= 1
        if not job.received[blk] and job.requested[blk] == 0:
            job.todo.append(blk)

    def give_back(self, index: int) -> None:
        self.jobs.pop(index, None)
        if index in self.backlog:
            self.backlog.remove(index)
        self.decisions.append(GiveBack(index))

    def return_backlog(self) -> None:
        """Give back every piece taken and not started (the coordinator asks, for an idle
        worker); the pieces in hand stay."""
        for index in list(self.backlog):
            self.give_back(index)

    def give_back_stalled(self, timeout: float) -> None:
        """Give back pieces nothing arrived for in ``timeout`` seconds and that no peer
        is still asked for."""
        now = self.now
        for job in [j for j in self.jobs.values() if now - j.last_progress > timeout]:
            if not any(k[0] == job.index for q in self.peers.values() for k in q.pending):
                self.give_back(job.index)

    def drop_finished_elsewhere(self) -> None:
        """Another worker verified a piece we are still on (endgame): let it go."""
        for index in [i for i in self.jobs if self.done[i]]:
            self._cancel_piece(self.jobs.pop(index))
        self.backlog = [i for i in self.backlog if not self.done[i]]

    def return_orphans(self) -> None:
        """Pieces no connected peer of ours has any more go back to the coordinator."""
        if any(q.connecting for q in self.peers.values()):
            return
        active = [q for q in self.peers.values() if q.active]
        for index in list(self.backlog) + list(self.jobs):
            if not any(q.has_piece(index) for q in active):
                self.give_back(index)

    def stop(self) -> None:
        """The download is over (we became a seed): withdraw every request still out
        (endgame duplicates; late blocks are dropped) and forget the pieces in hand."""
        for index in list(self.jobs):
            self._cancel_piece(self.jobs.pop(index))
        self.backlog.clear()
        self.free_bufs.clear()  # piece buffers: seeding may last hours and needs none
