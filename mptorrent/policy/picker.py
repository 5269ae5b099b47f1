"""Which piece to fetch next: pure policy, no processes and no I/O.

The coordinator owns the truth of every piece's state here; the work queue is
only the delivery pipe.  Order: the first few pieces at random (so there is
soon something to trade), then rarest first with random ties.

Each piece also has a :class:`Priority`, one mechanism for every way of steering the
order: ``SKIP`` pieces are never picked and do not count towards completion
(``--only``); ``HIGH`` and ``DEADLINE`` pieces are picked before any ``NORMAL`` one,
rarest first within their class (``--sequential``'s read-ahead window, whose head is
``DEADLINE``).  Raised pieces are expected to be few (a window), so they sit in a small
set scanned before the shared order: the normal path costs one byte lookup more.
"""

from __future__ import annotations

import random
import time
from array import array
from collections.abc import Hashable, Iterable
from enum import IntEnum
from typing import Final


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
        self.num_pieces = num_pieces
        self.state = bytearray(num_pieces)
        if have is not None:
            for i, h in enumerate(have):
                if h:
                    self.state[i] = DONE
        self.done = self.state.count(DONE)
        if priority is None:
            self.priority = bytearray([NORMAL]) * num_pieces
        else:
            if len(priority) != num_pieces:
                raise ValueError("one priority per piece")
            self.priority = bytearray(priority)
        # wanted pieces not done yet: what completion waits for
        self._left = sum(
            1 for s, pr in zip(self.state, self.priority, strict=True) if s != DONE and pr
        )
        self._raised: set[int] = set()  # pieces above NORMAL (few: a window)
        for i, pr in enumerate(self.priority):
            if pr > NORMAL:
                self._raised.add(i)
        self.sequential = sequential
        self.window = max(0, window)
        self._head = 0  # sequential: the first wanted piece not done
        self._raised_to = 0  # sequential: pieces below this have entered the window
        self.availability = [0] * num_pieces
        self._peer_bits: dict[Hashable, bytes] = {}
        self.owner: dict[int, set[int]] = {}  # piece -> workers that took it
        self._rng = random.Random(seed)
        self._order: list[int] = []
        self._dirty = True
        self._built_at = 0.0
        self.picked = 0
        # per worker: how many of its peers have each piece, and where its scan of
        # the shared rarest-first order has got to
        self._wavail: dict[int, array[int]] = {}
        self._wcursor: dict[int, int] = {}
        self.slide_window()

    # -- availability ---------------------------------------------------------

    def peer_bitfield(self, peer: Hashable, bits: bytes | None, worker: int | None = None) -> None:
        """Replace one peer's have-set (one byte per piece); None when it left.

        ``worker`` is the worker process connected to that peer: pieces are only
        handed to a worker that has a peer to fetch them from.
        """
        wav = self._worker_avail(worker)
        old = self._peer_bits.pop(peer, None)
        if old is not None:
            for i, h in enumerate(old):
                if h:
                    self.availability[i] -= 1
                    if wav is not None:
                        wav[i] -= 1
        if bits is not None:
            self._peer_bits[peer] = bits
            for i, h in enumerate(bits):
                if h:
                    self.availability[i] += 1
                    if wav is not None:
                        wav[i] += 1
        self._dirty = True

    def peer_have(self, peer: Hashable, index: int, worker: int | None = None) -> None:
        bits = self._peer_bits.get(peer)
        if bits is None:
            bits = bytes(self.num_pieces)
        if not bits[index]:
            b = bytearray(bits)
            b[index] = 1
            self._peer_bits[peer] = bytes(b)
            self.availability[index] += 1
            wav = self._worker_avail(worker)
            if wav is not None:
                wav[index] += 1
            self._dirty = True

    def _worker_avail(self, worker: int | None) -> array[int] | None:
        if worker is None:
            return None
        wav = self._wavail.get(worker)
        if wav is None:
            wav = self._wavail[worker] = array("I", bytes(4 * self.num_pieces))
        return wav

    def forget_worker(self, worker: int, peers: Iterable[Hashable]) -> None:
        """A worker died: its peers' availability goes with it."""
        for peer in peers:
            self.peer_bitfield(peer, None, worker)
        self._wavail.pop(worker, None)
        self._wcursor.pop(worker, None)

    # -- picking --------------------------------------------------------------

    def _maybe_rebuild(self, exhausted: bool) -> None:
        # Rebuilding sorts every needed piece; under a stream of HAVEs do it at most
        # twice a second unless the current order has run dry.
        now = time.monotonic()
        if self._dirty and (exhausted or now - self._built_at > 0.5):
            self._rebuild()
            self._built_at = now

    def _rebuild(self) -> None:
        prio = self.priority
        needed = [
            i
            for i in range(self.num_pieces)
            if self.state[i] == NEEDED and self.availability[i] > 0 and prio[i]
        ]
        keys = {i: self._rng.random() for i in needed}
        if self.sequential:
            pass  # index order, as built
        elif self.done + self.picked < RANDOM_FIRST:
            needed.sort(key=keys.__getitem__)
        else:
            needed.sort(key=lambda i: (self.availability[i], keys[i]))
        self._order = needed
        self._wcursor.clear()
        self._dirty = False

    def pick_for(self, worker: int, n: int) -> list[int]:
        """Up to ``n`` needed pieces that ``worker``'s peers have; they become TAKEN by it."""
        wav = self._wavail.get(worker)
        if wav is None or n <= 0:
            return []
        out = self._scan_for(worker, wav, n)
        if len(out) < n and self._dirty:
            self._maybe_rebuild(exhausted=True)
            out += self._scan_for(worker, wav, n - len(out))
        for i in out:
            self.took(i, worker)
        self.picked += len(out)
        return out

    def _scan_for(self, worker: int, wav: array[int], n: int) -> list[int]:
        self._maybe_rebuild(exhausted=False)
        order, state, prio = self._order, self.state, self.priority
        out = self._scan_raised(wav, n) if self._raised else []
        k = self._wcursor.get(worker, 0)
        # The cursor is this worker's own: pieces it cannot serve stay NEEDED for others.
        while len(out) < n and k < len(order):
            i = order[k]
            k += 1
            if state[i] == NEEDED and wav[i] and prio[i]:
                out.append(i)
                state[i] = QUEUED
        self._wcursor[worker] = k
        return out

    def _scan_raised(self, wav: array[int], n: int) -> list[int]:
        """HIGH and DEADLINE pieces this worker can fetch: the higher class first, then
        the rarest, then the lowest index (a window is small: sorted on every scan)."""
        state, prio, avail = self.state, self.priority, self.availability
        done = [i for i in self._raised if state[i] == DONE]
        for i in done:
            self._raised.discard(i)
        ready = [i for i in self._raised if state[i] == NEEDED and wav[i]]
        ready.sort(key=lambda i: (-prio[i], avail[i], i))
        out = ready[:n]
        for i in out:
            state[i] = QUEUED
        return out

    def endgame_for(self, worker: int, n: int) -> list[int]:
        """Pieces in flight at other workers that ``worker`` could fetch too: those held by
        one worker; a third copy only when every such piece has two (both holders' peers
        may be slow ones)."""
        wav = self._wavail.get(worker)
        if wav is None:
            return []
        out: list[int] = []
        for most in (2, 3):
            out = [
                i for i, owners in self.owner.items()
                if worker not in owners and self.state[i] == TAKEN and wav[i]
                and len(owners) < most
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
        return worker in self._wavail

    def needed_for(self, worker: int) -> bool:
        """Is any needed piece servable by this worker's peers?"""
        wav = self._wavail.get(worker)
        if wav is None:
            return False
        s, prio = self.state, self.priority
        return any(s[i] == NEEDED and wav[i] and prio[i] for i in range(self.num_pieces))

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
            self._dirty = True  # the shared order gains or loses the piece
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
        self._dirty = True

    def release_worker(self, worker: int) -> None:
        for index in [i for i, ws in self.owner.items() if worker in ws]:
            self.release(index, worker)

    def release_all(self) -> None:
        """Everything not verified becomes needed again (the queue was rebuilt)."""
        for i in range(self.num_pieces):
            if self.state[i] != DONE:
                self.state[i] = NEEDED
        self.owner.clear()
        self._dirty = True
