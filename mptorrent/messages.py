"""Small, picklable records passed between processes (and between layers).

Every message that crosses a process boundary is defined here, in one place.
"""

from __future__ import annotations

from typing import NamedTuple


class PeerAddr(NamedTuple):
    host: str  # IPv4 or IPv6 literal (no brackets)
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# -- worker -> coordinator (the result queue) ---------------------------------
# A worker puts a *list* of these records per report: one pickle and one pipe
# write for everything since the last report, not one per piece (reports go out
# every few tens of milliseconds, at once for anything the coordinator acts on).
# The coordinator's work queue likewise carries lists of piece indices.


class Took(NamedTuple):
    """A worker took a batch of pieces from its work queue (the coordinator's count)."""

    worker: int
    indices: tuple[int, ...]


class PieceDone(NamedTuple):
    """A piece passed its SHA-1 check and is in the output mmap."""

    worker: int
    index: int
    peers: tuple[PeerAddr, ...]  # who sent its blocks


class PieceFailed(NamedTuple):
    worker: int
    index: int
    peers: tuple[PeerAddr, ...]
    retrying: bool = False  # the worker fetches it again itself (smart ban); keep its lease


class Returned(NamedTuple):
    """A worker gave a piece back: none of its peers has it, or it is stopping."""

    worker: int
    index: int


class PeerBitfield(NamedTuple):
    """What one of a worker's peers has; ``bits`` is one byte per piece, or None when it left."""

    worker: int
    peer: PeerAddr
    bits: bytes | None


class PeerHaves(NamedTuple):
    worker: int
    peer: PeerAddr
    indices: tuple[int, ...]


class PeerBanned(NamedTuple):
    worker: int
    peer: PeerAddr
    reason: str


class WorkerStats(NamedTuple):
    """Sent a few times a second: bytes received since the last report, connected peers."""

    worker: int
    downloaded: int
    uploaded: int
    peers: int


class WorkerFailed(NamedTuple):
    """A worker hit an error it cannot recover from (a bug, or a disk error)."""

    worker: int
    message: str
    detail: str  # traceback, shown only with -v
    storage: bool = False


# -- coordinator -> one worker (its control queue) ----------------------------


class AddPeers(NamedTuple):
    peers: tuple[PeerAddr, ...]


class Stop(NamedTuple):
    pass


class SeedOnly(NamedTuple):
    """The download is complete and the user wants to seed: stop asking, keep serving,
    on the connections already open (peers need not re-dial a new seeder)."""


class Seeding(NamedTuple):
    """A worker's answer to SeedOnly, after its last download counts."""

    worker: int
