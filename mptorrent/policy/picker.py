"""Which piece to fetch next: pure policy, no processes and no I/O.

The coordinator owns the truth of every piece's state here; the work queue is
only the delivery pipe.  Order: the first few pieces at random (so there is
soon something to trade), then rarest first with random ties.
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


class Picker:
    """Each piece's state, owners and availability; the coordinator's alone, the one place a piece
    is leased to a worker. DONE is final; endgame lets two workers hold a piece."""

    def __init__(
        self, num_pieces: int, have: bytes | bytearray | None = None, *, seed: int | None = None
    ) -> None:
        self.num_pieces = num_pieces
        self.state = bytearray(num_pieces)
        if have is not None:
            for i, h in enumerate(have):
                if h:
                    self.state[i] = DONE
        self.done = self.state.count(DONE)
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
        needed = [
            i
            for i in range(self.num_pieces)
            if self.state[i] == NEEDED and self.availability[i] > 0
        ]
        keys = {i: self._rng.random() for i in needed}
        if self.done + self.picked < RANDOM_FIRST:
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
        order, state = self._order, self.state
        k = self._wcursor.get(worker, 0)
        out: list[int] = []
        # The cursor is this worker's own: pieces it cannot serve stay NEEDED for others.
        while len(out) < n and k < len(order):
            i = order[k]
            k += 1
            if state[i] == NEEDED and wav[i]:
                out.append(i)
                state[i] = QUEUED
        self._wcursor[worker] = k
        return out

    def endgame_for(self, worker: int, n: int) -> list[int]:
        """Pieces in flight at other workers that ``worker`` could fetch too."""
        wav = self._wavail.get(worker)
        if wav is None:
            return []
        out = [
            i for i, owners in self.owner.items()
            if worker not in owners and self.state[i] == TAKEN and wav[i] and len(owners) < 2
        ]  # fmt: skip
        self._rng.shuffle(out)
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
        return any(self.state[i] == NEEDED and wav[i] for i in range(self.num_pieces))

    @property
    def remaining(self) -> int:
        return self.num_pieces - self.done

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
