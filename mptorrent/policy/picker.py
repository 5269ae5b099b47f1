"""Which piece to fetch next: pure policy, no processes and no I/O.

The coordinator owns the truth of every piece's state here; the work queue is
only the delivery pipe.  Order: the first few pieces from a random place (so there is
soon something to trade; neighbours within one random chunk), then rarest first, ties in
a random order of chunks.

Each piece also has a :class:`Priority`, one mechanism for every way of steering the
order: ``SKIP`` pieces are never picked and do not count towards completion
(``--only``); ``HIGH`` and ``DEADLINE`` pieces are picked before any ``NORMAL`` one,
rarest first within their class (``--sequential``'s read-ahead window, whose head is
``DEADLINE``).  Raised pieces are expected to be few (a window), so they sit in a small
set scanned before the shared order: the normal path costs one byte lookup more.

Built for torrents of many pieces (500,000 pieces of 64 KiB is a 32 GiB torrent): nothing
that happens often costs a Python step per piece.

* A peer that has every piece (a seed, a BEP 6 HaveAll, a web seed) is one count, for the
  torrent and for its worker, never added piece by piece (libtorrent does the same).
* Any other peer keeps its bitfield packed (an eighth of a byte per piece); its arrival
  and departure add it to or take it from the 16-bit per-piece counts in C, through big
  integers (``_add_lanes``): about 3 ms for 500,000 pieces.  A HAVE is O(1), and a
  peer whose HAVEs complete it becomes a seed.
* Each worker has one byte per piece saying whether any of its peers has the piece
  (O(1) to read and to set on a HAVE), rebuilt from its peers' packed bitfields when one
  leaves.
* The rarest-first order is not sorted.  A rebuild (a few milliseconds, at most twice a
  second, or at once when a worker runs dry after pieces came back) gives each needed piece
  a byte: its *availability bucket* (exact up to 15 peers, then by powers of two), 0 for
  pieces not to be picked.  Each worker then walks the buckets rarest first, lazily: the
  bucket's pieces that its peers have (a big-integer AND), in chunks visited in a random
  order (an index order within each chunk), a ``bytes.find`` per piece handed out.  HAVEs
  change the counts at once and the order at the next rebuild; a worker whose walk runs
  dry then picks up the pieces its peers announced since it began, without waiting for one.
"""

from __future__ import annotations

import random
import sys
import time
from array import array
from collections.abc import Hashable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from enum import IntEnum
from itertools import pairwise
from typing import Final

from mptorrent.proto import bitfield


class PieceState(IntEnum):
    """A piece's state in :attr:`Picker.state`, one byte per piece (so an IntEnum)."""

    NEEDED = 0  # not verified and in flight nowhere: to be picked
    QUEUED = 1  # chosen by a scan of pick_for(), TAKEN as it returns
    TAKEN = 2  # a worker has it in flight (two in endgame)
    DONE = 3  # verified and written


NEEDED: Final = PieceState.NEEDED
QUEUED: Final = PieceState.QUEUED
TAKEN: Final = PieceState.TAKEN
DONE: Final = PieceState.DONE
RANDOM_FIRST = 4  # libtorrent's initial_picker_threshold


class Priority(IntEnum):
    """How much a piece is wanted, one byte per piece in :attr:`Picker.priority`."""

    SKIP = 0  # not wanted: never picked, not counted in ``remaining``
    NORMAL = 1  # rarest first (sequential mode: in index order)
    HIGH = 2  # before every NORMAL piece, rarest first among them
    DEADLINE = 3  # before every HIGH piece: a reader is waiting for it


SKIP: Final = Priority.SKIP
NORMAL: Final = Priority.NORMAL
HIGH: Final = Priority.HIGH
DEADLINE: Final = Priority.DEADLINE
DEADLINE_PIECES = 2  # sequential: the first pieces of the window a reader waits on
REBUILD_EVERY = 0.5  # s: the order follows changed availability at most this often
CHUNKS = 256  # a bucket is walked in this many chunks, in a random order
FRESH_MAX = 4096  # pieces announced since a worker's walk began, listed until a rebuild


def _level(count: int) -> int:
    """The availability bucket of a piece that ``count`` non-seed peers have (1 and up; 0
    is kept for pieces not to be picked): exact up to 15, then one per power of two."""
    return 1 + (count if count < 16 else 16 + count.bit_length() - 5)


# byte maps for bytes.translate: the per-piece work of a rebuild stays in C
_LEVELS: Final = bytes(_level(c) for c in range(256))  # counts of 255 and more share one
_LEVELS_NO_SEED: Final = b"\x00" + _LEVELS[1:]  # no seed: a piece nobody has is not picked
_ONE_LEVEL: Final = b"\x01" * 256  # random start, sequential: availability does not order
_ONE_LEVEL_NO_SEED: Final = b"\x00" + b"\x01" * 255
_NEEDED_FF: Final = b"\xff" + bytes(255)  # state NEEDED -> 0xFF
_WANTED_FF: Final = b"\x00" + b"\xff" * 255  # priority not SKIP -> 0xFF
_NOT_DONE_FF: Final = b"\xff" * DONE + b"\x00" + b"\xff" * (255 - DONE)
_KEEP_DONE: Final = bytes(DONE) + bytes([DONE]) + bytes(255 - DONE)  # else NEEDED
_TO_DONE: Final = bytes([0]) + bytes([DONE]) * 255  # a have-flag to a state
_RAISED_ONE: Final = bytes(NORMAL + 1) + b"\x01" * (255 - NORMAL)  # HIGH, DEADLINE -> 1
_LITTLE: Final = sys.byteorder == "little"


class _PeerHas:
    """What one peer has: its packed bitfield, or None for a peer with every piece (counted
    apart, as a seed), and how many pieces it has."""

    __slots__ = ("bits", "count", "worker")

    def __init__(self, worker: int | None, bits: bytearray | None, count: int) -> None:
        self.worker = worker
        self.bits = bits
        self.count = count


class Picker:
    """Each piece's state, owners and availability; the coordinator's alone, the one place a piece
    is leased to a worker. DONE is final; endgame lets two workers hold a piece."""

    def __init__(
        self, num_pieces: int, have: bytes | bytearray | None = None, *, seed: int | None = None,
        priority: bytes | bytearray | None = None, sequential: bool = False, window: int = 0,
    ) -> None:  # fmt: skip
        """``priority``: one :class:`Priority` byte per piece (default all NORMAL).

        ``sequential``: NORMAL pieces in index order, and a read-ahead ``window`` of wanted
        pieces from the first one not done is raised to HIGH (its first
        ``DEADLINE_PIECES`` to DEADLINE), sliding as pieces complete."""
        self.num_pieces = n = num_pieces
        self.state = bytearray(n)
        if have is not None:
            flags = bytes(have[:n]).translate(_TO_DONE)
            self.state[: len(flags)] = flags
        self.done = self.state.count(DONE)
        if priority is None:
            self.priority = bytearray([NORMAL]) * n
        else:
            if len(priority) != n:
                raise ValueError("one priority per piece")
            self.priority = bytearray(priority)
        # wanted pieces not done yet: what completion waits for (0xFF & 0xFF: 8 bits a piece)
        left = int.from_bytes(self.state.translate(_NOT_DONE_FF), "little")
        left &= int.from_bytes(self.priority.translate(_WANTED_FF), "little")
        self._left = left.bit_count() // 8
        # pieces above NORMAL (few: a window)
        self._raised: set[int] = set(bitfield.indices(self.priority.translate(_RAISED_ONE)))
        self.sequential = sequential
        self.window = max(0, window)
        self._head = 0  # sequential: the first wanted piece not done
        self._raised_to = 0  # sequential: pieces below this have entered the window
        # availability: peers with every piece are counted apart; the others per piece
        # 16 bits a count (the lanes of _add_lanes are half as wide as with 32), widened to
        # 32 before a 65,536th peer could overflow one
        self._counts = array("H", bytes(2 * n))
        self._seeds = 0
        self._partials = 0  # peers in _counts: while below 256, a count fits its low byte
        self._peers: dict[Hashable, _PeerHas] = {}
        self.owner: dict[int, set[int]] = {}  # piece -> workers that took it
        self._rng = random.Random(seed)
        self.picked = 0
        # per worker: its peers, how many have every piece, and one byte per piece that
        # says whether any of the others has it
        self._wpeers: dict[int, set[Hashable]] = {}
        self._wseeds: dict[int, int] = {}
        self._whas: dict[int, bytearray] = {}
        # the order: one availability bucket per piece (0: not to be picked), walked lazily
        self._key = b""
        self._masks: dict[int, tuple[bytes, int]] = {}  # bucket -> its pieces: flags, int
        parts = min(n, CHUNKS)
        self._bounds = list(pairwise(n * k // parts for k in range(parts + 1)))
        self._chunks: list[tuple[int, int]] = []  # the bounds, in this build's order
        self._walks: dict[int, Iterator[int]] = {}
        self._fresh: dict[int, list[int]] = {}  # pieces a worker's peers announced since
        self._dirty = True  # availability changed: rebuild within REBUILD_EVERY
        self._stale = True  # the walks may miss pickable pieces: rebuild when one runs dry
        self._built_at = 0.0
        self._built_random = True  # the order was built for the random start
        self.slide_window()

    # -- availability ---------------------------------------------------------

    @property
    def availability(self) -> list[int]:
        """How many peers have each piece.  O(pieces): for tests and diagnostics."""
        seeds = self._seeds
        return [c + seeds for c in self._counts]

    def peer_bitfield(self, peer: Hashable, bits: bytes | None, worker: int | None = None) -> None:
        """Replace one peer's have-set, given as one byte per piece (non-zero = has it);
        None when it left.  :meth:`peer_packed` takes the wire's packed form.

        ``worker`` is the worker process connected to that peer: pieces are only
        handed to a worker that has a peer to fetch them from.
        """
        if bits is None:
            self.peer_packed(peer, None, worker)
            return
        if len(bits) != self.num_pieces:
            raise ValueError(f"{len(bits)} have-flags for {self.num_pieces} pieces")
        flags = bitfield.ones(bits)
        self._drop_peer(peer)
        self._add_peer(peer, bitfield.from_flags(flags), flags, worker)

    def peer_packed(self, peer: Hashable, bits: bytes | None, worker: int | None = None) -> None:
        """Replace one peer's have-set, given packed as on the wire (BEP 3: piece 0 is the
        high bit of the first byte); None when it left.  Raises ValueError for a bitfield
        of the wrong length or with a spare bit set."""
        if bits is not None:
            why = bitfield.problem(bits, self.num_pieces)
            if why is not None:
                raise ValueError(why)
        self._drop_peer(peer)
        if bits is not None:
            self._add_peer(peer, bits, None, worker)
        elif worker is not None:
            self._worker(worker)

    def peer_have(self, peer: Hashable, index: int, worker: int | None = None) -> None:
        """One HAVE: O(1)."""
        if not 0 <= index < self.num_pieces:
            raise ValueError(f"have for piece {index} of {self.num_pieces}")
        rec = self._peers.get(peer)
        if rec is None:  # a peer that sent no bitfield: it had nothing
            rec = self._peers[peer] = _PeerHas(
                worker, bytearray(bitfield.nbytes(self.num_pieces)), 0
            )
            self._one_more_partial()
            if worker is not None:
                self._worker(worker)
                self._wpeers[worker].add(peer)
        bits = rec.bits
        if bits is None:
            return  # a seed has it already
        byte, bit = index >> 3, 0x80 >> (index & 7)
        if bits[byte] & bit:
            return
        bits[byte] |= bit
        rec.count += 1
        self._counts[index] += 1
        self._dirty = True
        w = rec.worker
        if w is not None:
            has = self._whas[w]
            if not has[index]:
                has[index] = 1
                # the worker's walk (its peers' pieces when it began) would miss it
                if self.state[index] == NEEDED and self.priority[index]:
                    fresh = self._fresh.setdefault(w, [])
                    if len(fresh) < FRESH_MAX:
                        fresh.append(index)
                    else:  # a worker that has not asked for long: rebuild when it runs dry
                        self._stale = True
        if rec.count == self.num_pieces:
            self._to_seed(rec)

    def _worker(self, worker: int) -> bytearray:
        has = self._whas.get(worker)
        if has is None:
            has = self._whas[worker] = bytearray(self.num_pieces)
            self._wpeers[worker] = set()
            self._wseeds[worker] = 0
        return has

    def _add_peer(
        self, peer: Hashable, packed: bytes, flags: bytes | None, worker: int | None
    ) -> None:
        n = self.num_pieces
        k = bitfield.count(packed)
        rec = self._peers[peer] = _PeerHas(worker, None, k)
        if worker is not None:
            self._worker(worker)
            self._wpeers[worker].add(peer)
            self._walks.pop(worker, None)  # its next walk sees the new peer's pieces
        self._dirty = self._stale = True
        if k == n:
            self._seeds += 1
            if worker is not None:
                self._wseeds[worker] += 1
            return
        rec.bits = bytearray(packed)
        self._one_more_partial()
        if k:
            if flags is None:
                flags = bitfield.to_flags(packed, n)
            self._add_lanes(flags, 1)
            if worker is not None:
                has = self._whas[worker]
                both = int.from_bytes(has, "little") | int.from_bytes(flags, "little")
                has[:] = both.to_bytes(n, "little")

    def _one_more_partial(self) -> None:
        self._partials += 1
        if self._partials > 0xFFFF and self._counts.typecode == "H":
            self._counts = array("I", self._counts)  # a count could reach 65,536

    def _drop_peer(self, peer: Hashable, redo: bool = True) -> None:
        rec = self._peers.pop(peer, None)
        if rec is None:
            return
        w = rec.worker
        if w is not None:
            self._wpeers[w].discard(peer)
        self._dirty = True
        if rec.bits is None:
            self._seeds -= 1
            if w is not None:
                self._wseeds[w] -= 1
                if not self._wseeds[w]:  # its walk, of every piece, would yield them all
                    self._walks.pop(w, None)
            return
        self._partials -= 1
        if rec.count:
            self._add_lanes(bitfield.to_flags(rec.bits, self.num_pieces), -1)
            if w is not None and redo:
                self._redo_worker(w)

    def _to_seed(self, rec: _PeerHas) -> None:
        """A peer whose HAVEs completed it: counted as a seed from now on."""
        assert rec.bits is not None
        self._add_lanes(bitfield.to_flags(rec.bits, self.num_pieces), -1)
        rec.bits = None
        self._partials -= 1
        self._seeds += 1
        if rec.worker is not None:
            self._wseeds[rec.worker] += 1
            self._redo_worker(rec.worker)
            self._walks.pop(rec.worker, None)  # it can serve every piece now

    def _redo_worker(self, worker: int) -> None:
        """The worker's have-flags again, from its remaining peers' packed bitfields."""
        acc = 0
        for p in self._wpeers[worker]:
            bits = self._peers[p].bits
            if bits is not None:
                acc |= int.from_bytes(bits, "big")
        n = self.num_pieces
        self._whas[worker][:] = bitfield.to_flags(acc.to_bytes(bitfield.nbytes(n), "big"), n)

    def _add_lanes(self, flags: bytes, sign: int) -> None:
        """Add (or take) one to the count of every piece whose flag is 1, in C: the counts
        are one big integer with a lane per piece, and so are the flags.  A count never
        exceeds the peers added, so no lane carries into the next."""
        counts = self._counts
        width = counts.itemsize
        lanes = bytearray(width * self.num_pieces)
        lanes[0 if _LITTLE else width - 1 :: width] = flags
        total = int.from_bytes(counts, sys.byteorder)
        delta = int.from_bytes(lanes, sys.byteorder)
        total = total + delta if sign > 0 else total - delta
        memoryview(counts).cast("B")[:] = total.to_bytes(len(lanes), sys.byteorder)

    def forget_worker(self, worker: int, peers: Iterable[Hashable]) -> None:
        """A worker died: its peers' availability goes with it."""
        for peer in [*peers, *self._wpeers.get(worker, ())]:
            self._drop_peer(peer, redo=False)  # its flags go: O(peers), not O(peers^2)
        self._whas.pop(worker, None)
        self._wpeers.pop(worker, None)
        self._wseeds.pop(worker, None)
        self._walks.pop(worker, None)
        self._fresh.pop(worker, None)

    def _servable(self, worker: int) -> bytearray | None:
        """None if one of the worker's peers has every piece, else its have-flags."""
        return None if self._wseeds[worker] else self._whas[worker]

    # -- picking --------------------------------------------------------------

    def _random_start(self) -> bool:
        return self.done + self.picked < RANDOM_FIRST

    def _maybe_rebuild(self, exhausted: bool) -> None:
        # Under a stream of HAVEs follow the counts at most twice a second; at once when
        # the random start is over, or when a worker ran dry and pieces may have come back.
        now = time.monotonic()
        due = (self._dirty or self._stale) and now - self._built_at > REBUILD_EVERY
        moved = self._built_random and not self.sequential and not self._random_start()
        if due or moved or (exhausted and self._stale):
            self._rebuild()
            self._built_at = now

    def _rebuild(self) -> None:
        """Each piece's bucket, in C: its availability's (0: not needed, not wanted, or
        nobody has it).  The walks start again from the rarest."""
        n = self.num_pieces
        self._built_random = random = self._random_start()
        if self.sequential or random:
            table = _ONE_LEVEL if self._seeds else _ONE_LEVEL_NO_SEED
        else:
            table = _LEVELS if self._seeds else _LEVELS_NO_SEED
        raw = memoryview(self._counts).cast("B")
        width = self._counts.itemsize
        at = 0 if _LITTLE else width - 1  # the low byte of each count
        low = bytes(raw[at::width])
        if self._partials >= 256:  # counts may not fit a byte: saturate them
            high = 0
            for k in range(width):
                if k != at:
                    high |= int.from_bytes(raw[k::width], "little")
            sat = bitfield.ones(high.to_bytes(n, "little")).translate(_WANTED_FF)
            low = (int.from_bytes(low, "little") | int.from_bytes(sat, "little")).to_bytes(
                n, "little"
            )
        wanted = int.from_bytes(self.state.translate(_NEEDED_FF), "little")
        wanted &= int.from_bytes(self.priority.translate(_WANTED_FF), "little")
        key = int.from_bytes(low.translate(table), "little") & wanted
        self._key = key.to_bytes(n, "little")
        self._masks.clear()
        self._chunks = list(self._bounds)
        if not self.sequential:
            self._rng.shuffle(self._chunks)
        self._walks.clear()
        self._fresh.clear()
        self._dirty = self._stale = False

    def _mask(self, level: int) -> tuple[bytes, int]:
        """The pieces of one bucket: one byte per piece, and as an integer."""
        got = self._masks.get(level)
        if got is None:
            table = bytes(level) + b"\x01" + bytes(255 - level)
            flags = self._key.translate(table)
            got = self._masks[level] = (flags, int.from_bytes(flags, "little"))
        return got

    def _walk(self, worker: int) -> Iterator[int]:
        """The pieces this worker's peers have, rarest bucket first; within a bucket the
        chunks in the rebuild's order.  Lazy: only what is taken is looked at."""
        key, n = self._key, self.num_pieces
        has = None if self._wseeds[worker] else int.from_bytes(self._whas[worker], "little")
        for level in range(1, _level(255) + 1):
            if level not in key:
                continue
            flags, mask = self._mask(level)
            if has is not None:
                mine = mask & has
                if not mine:
                    continue
                flags = mine.to_bytes(n, "little")
            find = flags.find
            for a, b in self._chunks:
                i = find(1, a, b)
                while i >= 0:
                    yield i
                    i = find(1, i + 1, b)

    def pick_for(self, worker: int, n: int) -> list[int]:
        """Up to ``n`` needed pieces that ``worker``'s peers have; they become TAKEN by it."""
        if worker not in self._whas or n <= 0:
            return []
        out = self._scan_for(worker, n)
        if len(out) < n and self._stale:
            self._maybe_rebuild(exhausted=True)
            out += self._scan_for(worker, n - len(out))
        for i in out:
            self.took(i, worker)
        self.picked += len(out)
        return out

    def _scan_for(self, worker: int, n: int) -> list[int]:
        self._maybe_rebuild(exhausted=False)
        state, prio = self.state, self.priority
        out = self._scan_raised(worker, n) if self._raised else []
        has = self._servable(worker)
        if len(out) >= n:
            return out
        walk = self._walks.get(worker)
        if walk is None:
            walk = self._walks[worker] = self._walk(worker)
        # The walk is this worker's own: pieces it cannot serve stay NEEDED for others.
        for i in walk:
            if state[i] == NEEDED and prio[i] and (has is None or has[i]):
                out.append(i)
                state[i] = QUEUED
                if len(out) >= n:
                    return out
        # The walk ran dry: what its peers announced since it began (or what the order,
        # built before anyone had it, left out), without waiting for a rebuild.
        fresh = self._fresh.pop(worker, None)
        if fresh:
            for k, i in enumerate(fresh):
                if len(out) >= n:
                    self._fresh[worker] = fresh[k:]
                    break
                # the peer that announced it may have left since
                if state[i] == NEEDED and prio[i] and (has is None or has[i]):
                    out.append(i)
                    state[i] = QUEUED
        return out

    def _scan_raised(self, worker: int, n: int) -> list[int]:
        """HIGH and DEADLINE pieces this worker can fetch: the higher class first, then
        the rarest, then the lowest index (a window is small: sorted on every scan)."""
        state, prio, counts = self.state, self.priority, self._counts
        has = self._servable(worker)
        done = [i for i in self._raised if state[i] == DONE]
        for i in done:
            self._raised.discard(i)
        ready = [i for i in self._raised if state[i] == NEEDED and (has is None or has[i])]
        ready.sort(key=lambda i: (-prio[i], counts[i], i))
        out = ready[:n]
        for i in out:
            state[i] = QUEUED
        return out

    def endgame_for(self, worker: int, n: int, of: AbstractSet[int] | None = None) -> list[int]:
        """Pieces in flight at other workers that ``worker`` could fetch too: those held by
        one worker; a third copy only when every piece in flight that this worker could fetch
        has two (both holders' peers may be slow ones).  ``of``: only pieces every holder of
        which is among these workers (the slow ones)."""
        if worker not in self._whas:
            return []
        has = self._servable(worker)
        out: list[int] = []
        for most in (2, 3):
            out = [
                i for i, owners in self.owner.items()
                if worker not in owners and self.state[i] == TAKEN and (has is None or has[i])
                and len(owners) < most and (of is None or owners <= of)
            ]  # fmt: skip
            if out:
                break
        self._rng.shuffle(out)
        if self._raised:  # a reader waits for those: duplicate them first
            out.sort(key=lambda i: -self.priority[i])
        out = out[:n]
        for i in out:
            self.took(i, worker)
        return out

    def knows(self, worker: int) -> bool:
        """Has a peer of this worker said what it has (else it can be handed nothing)?"""
        return worker in self._whas

    def needed_for(self, worker: int) -> bool:
        """Is any needed piece servable by this worker's peers?  In C: O(pieces / 64)."""
        if worker not in self._whas:
            return False
        wanted = int.from_bytes(self.state.translate(_NEEDED_FF), "little")
        wanted &= int.from_bytes(self.priority.translate(_WANTED_FF), "little")
        has = self._servable(worker)
        if has is None:
            return wanted != 0
        return wanted & int.from_bytes(has, "little") != 0

    @property
    def remaining(self) -> int:
        """Wanted pieces (not SKIP) not verified yet: the fetch is complete at 0."""
        return self._left

    # -- priorities -----------------------------------------------------------

    def set_priority(self, index: int, priority: Priority) -> None:
        """Change one piece's priority; O(1) (a change to or from SKIP re-sorts later)."""
        old = self.priority[index]
        if old == priority:
            return
        self.priority[index] = priority
        if self.state[index] != DONE and (old == SKIP) != (priority == SKIP):
            self._left += 1 if old == SKIP else -1
            self._stale = True  # the shared order gains or loses the piece
        if priority > NORMAL:
            self._raised.add(index)
        else:
            self._raised.discard(index)

    def slide_window(self) -> None:
        """Sequential mode: move the window's head past done (and skipped) pieces and raise
        the pieces entering it.  Amortised O(1) per piece: both ends only move forward."""
        if not self.sequential:
            return
        n, state, prio = self.num_pieces, self.state, self.priority
        h = self._head
        while h < n and (state[h] == DONE or prio[h] == SKIP):
            h += 1
        self._head = h
        end = min(n, h + self.window)
        for i in range(max(self._raised_to, h), end):
            if prio[i] and state[i] != DONE:
                self.set_priority(i, HIGH)
        self._raised_to = max(self._raised_to, end)
        for i in range(h, min(n, h + DEADLINE_PIECES)):
            if prio[i] == HIGH:
                self.set_priority(i, DEADLINE)

    # -- transitions ----------------------------------------------------------

    def took(self, index: int, worker: int) -> None:
        if self.state[index] != DONE:
            self.state[index] = TAKEN
            self.owner.setdefault(index, set()).add(worker)

    def finished(self, index: int) -> bool:
        """A verified piece; returns False if it was already done (endgame duplicate)."""
        self.owner.pop(index, None)
        if self.state[index] == DONE:
            return False
        self.state[index] = DONE
        self.done += 1
        if self.priority[index]:
            self._left -= 1
        if self.sequential and index == self._head:
            self.slide_window()
        return True

    def release(self, index: int, worker: int | None = None) -> None:
        """A piece failed, was returned, or its worker died: fetch it again."""
        if self.state[index] == DONE:
            return
        owners = self.owner.get(index)
        if owners is not None and worker is not None:
            owners.discard(worker)
            if owners:
                return  # another worker still has it in flight
        self.owner.pop(index, None)
        self.state[index] = NEEDED
        self._stale = True  # the walks have passed it

    def release_worker(self, worker: int) -> None:
        for index in [i for i, ws in self.owner.items() if worker in ws]:
            self.release(index, worker)

    def release_all(self) -> None:
        """Everything not verified becomes needed again (the queue was rebuilt)."""
        self.state[:] = self.state.translate(_KEEP_DONE)
        self.owner.clear()
        self._stale = True
