"""The peers a client knows of, capped, with an order to dial them in: sans-IO.

Trackers, the DHT and PEX can name tens of thousands of peers in a large swarm; the
coordinator keeps at most ``capacity`` of them (libtorrent keeps 3,000) and decides whom
to dial first and whom to forget.  The clock is an argument.

Dial order (:meth:`PeerTable.candidates`): peers never tried first, in the order we heard
of them (a fresh tracker reply is the best bet); then peers that delivered before,
most recently good first; then peers that failed, fewest failures first, each only once
its back-off (``RETRY_AFTER`` doubled per failure) is over.  Peers connected now, banned,
or used up (``MAX_FAILURES``) are never offered.

Forgetting (when a new peer arrives at a full table, a tenth of the table at once): banned
peers first, then those that failed most, then the longest unheard of; never a connected
peer.  A full table of
connected peers takes no more.
"""

from __future__ import annotations

from collections.abc import Container, Hashable
from typing import Final, Generic, TypeVar

from mptorrent.record import Record, mutable

__all__ = ["MAX_FAILURES", "MAX_KNOWN", "RETRY_AFTER", "PeerTable"]

MAX_KNOWN: Final = 3000  # peers kept at most (libtorrent's max_peerlist_size)
MAX_FAILURES: Final = 5  # failed attempts in a row before a peer is no longer offered
RETRY_AFTER: Final = 10.0  # seconds after a first failure, doubled for each further one

A = TypeVar("A", bound=Hashable)


@mutable
class PeerEntry(Record):
    """What the table knows of one peer."""

    seen: float  # when we last heard of it (a tracker, the DHT, PEX)
    order: int  # arrival number: never-tried peers are dialled in this order
    failures: int = 0  # failed attempts in a row (cleared by a useful connection)
    tried: bool = False
    connected: bool = False
    banned: bool = False
    good_at: float | None = None  # last time it delivered data
    retry_at: float = 0.0


class PeerTable(Generic[A]):
    """At most ``capacity`` known peers (addresses of type ``A``), their history, and the
    order to dial them in."""

    def __init__(self, capacity: int = MAX_KNOWN) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.peers: dict[A, PeerEntry] = {}
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self.peers)

    def __contains__(self, addr: object) -> bool:
        return addr in self.peers

    def add(self, addr: A, now: float) -> bool:
        """We heard of ``addr``: True if it is new and kept (the caller may dial it)."""
        entry = self.peers.get(addr)
        if entry is not None:
            entry.seen = now
            return False
        if len(self.peers) >= self.capacity and not self._forget_some():
            return False
        self._arrivals += 1
        self.peers[addr] = PeerEntry(seen=now, order=self._arrivals)
        return True

    def _forget_some(self) -> bool:
        """Make room: forget the worst tenth at once (one sort for many arrivals)."""
        victims = [(a, e) for a, e in self.peers.items() if not e.connected]
        if not victims:
            return False
        victims.sort(key=lambda ae: (ae[1].banned, ae[1].failures, -ae[1].seen), reverse=True)
        for addr, _ in victims[: max(1, self.capacity // 10)]:
            del self.peers[addr]
        return True

    def forget(self, addr: A) -> None:
        self.peers.pop(addr, None)

    # -- what happened ------------------------------------------------------------

    def dialled(self, addr: A) -> None:
        entry = self.peers.get(addr)
        if entry is not None:
            entry.tried = True

    def connected(self, addr: A, now: float) -> None:
        entry = self.peers.get(addr)
        if entry is not None:
            entry.tried = entry.connected = True
            entry.failures = 0
            entry.good_at = now

    def closed(self, addr: A, now: float, *, useful: bool) -> None:
        """The connection ended; ``useful``: it delivered data (or at least its pieces)."""
        entry = self.peers.get(addr)
        if entry is None:
            return
        entry.connected = False
        if useful:
            entry.good_at = now
            entry.failures = 0
        else:
            self.failed(addr, now)

    def failed(self, addr: A, now: float) -> None:
        """A connection attempt failed (refused, timed out, no handshake)."""
        entry = self.peers.get(addr)
        if entry is None:
            return
        entry.tried = True
        entry.connected = False
        entry.failures += 1
        entry.retry_at = now + RETRY_AFTER * 2 ** (entry.failures - 1)

    def ban(self, addr: A) -> None:
        entry = self.peers.get(addr)
        if entry is not None:
            entry.banned = True
            entry.connected = False

    # -- whom to dial -------------------------------------------------------------

    def candidates(self, n: int, now: float, exclude: Container[A] = ()) -> list[A]:
        """Up to ``n`` peers to dial now, best first (see the module's docstring)."""
        fresh: list[tuple[int, A]] = []
        good: list[tuple[float, A]] = []
        retry: list[tuple[int, float, A]] = []
        for addr, e in self.peers.items():
            if e.connected or e.banned or e.failures >= MAX_FAILURES or addr in exclude:
                continue
            if not e.tried:
                fresh.append((e.order, addr))
            elif e.retry_at > now:
                continue
            elif e.failures == 0:
                good.append((-(e.good_at or 0.0), addr))
            else:
                retry.append((e.failures, e.retry_at, addr))
        fresh.sort(key=lambda t: t[0])
        good.sort(key=lambda t: t[0])
        retry.sort(key=lambda t: (t[0], t[1]))
        out = [a for _, a in fresh] + [a for _, a in good] + [a for _, _, a in retry]
        return out[: max(0, n)]
