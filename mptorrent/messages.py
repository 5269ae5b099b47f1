"""Small, picklable records passed between processes (and between layers).

Every message that crosses a process boundary is defined here, in one place:
:data:`WorkerReport` is everything a worker tells its coordinator (or seeder), and
:data:`Control` everything they tell one worker; each side handles them in one
``match`` over the union.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, TypeAlias

if TYPE_CHECKING:
    import ctypes
    from multiprocessing.queues import Queue


class PeerAddr(NamedTuple):
    """A peer's address as every layer and process passes it: picklable, and hashable so it keys the
    peer tables; ``str()`` brackets an IPv6 host."""

    host: str  # IPv4 or IPv6 literal (no brackets); a web seed's URL, with port 0
    port: int

    def __str__(self) -> str:
        if self.port == 0 and "/" in self.host:
            return self.host  # a web seed (BEP 19) stands for its URL
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
    index: int  # type: ignore[assignment]  # hides tuple.index(), which nobody calls here
    peers: tuple[PeerAddr, ...]  # who sent its blocks


class PieceFailed(NamedTuple):
    """A piece failed its SHA-1 check (its peers are suspects)."""

    worker: int
    index: int  # type: ignore[assignment]
    peers: tuple[PeerAddr, ...]
    retrying: bool = False  # the worker fetches it again itself (smart ban); keep its lease


class Returned(NamedTuple):
    """A worker gave a piece back: none of its peers has it, or it is stopping."""

    worker: int
    index: int  # type: ignore[assignment]


class PeerBitfield(NamedTuple):
    """What one of a worker's peers has; ``bits`` is packed as on the wire (piece 0 the high
    bit of the first byte: an eighth of a byte per piece), or None when it left."""

    worker: int
    peer: PeerAddr
    bits: bytes | None


class PeerHaves(NamedTuple):
    """Pieces one of a worker's peers announced since its bitfield (HAVE messages)."""

    worker: int
    peer: PeerAddr
    indices: tuple[int, ...]


class PeerBanned(NamedTuple):
    """A worker will not talk to this peer again (it lied, or broke the protocol)."""

    worker: int
    peer: PeerAddr
    reason: str


class WorkerStats(NamedTuple):
    """Sent a few times a second: bytes received since the last report, connected peers."""

    worker: int
    downloaded: int
    uploaded: int
    peers: int


class PexLearned(NamedTuple):
    """Peers that ``source`` told a worker about by ut_pex (BEP 11): candidates for the
    coordinator to dial, never dialled by the worker on its own.  ``flags`` holds the
    BEP 11 flag byte of each peer, in the same order."""

    worker: int
    source: PeerAddr
    peers: tuple[PeerAddr, ...]
    flags: tuple[int, ...]


class DhtNodeLearned(NamedTuple):
    """A peer's BEP 5 ``port`` message: its IP and the UDP port of its DHT node (never 0), at
    most one per connection.  A candidate for the owner's DHT node to ping, never trusted
    as it comes."""

    worker: int
    node: PeerAddr


class WorkerFailed(NamedTuple):
    """A worker hit an error it cannot recover from (a bug, or a disk error)."""

    worker: int
    message: str
    detail: str  # traceback, shown only with -v
    storage: bool = False


# -- coordinator -> one worker (its control queue) ----------------------------


class AddPeers(NamedTuple):
    """More peers for this worker to dial."""

    peers: tuple[PeerAddr, ...]


class Stop(NamedTuple):
    """Close every connection and exit, after a last report."""


class SeedOnly(NamedTuple):
    """The download is complete and the user wants to seed: stop asking, keep serving,
    on the connections already open (peers need not re-dial a new seeder)."""


class ReturnBacklog(NamedTuple):
    """Give back the pieces taken and not started: another worker is idle and this one's
    peers will take long to get to them."""


class SwarmPeers(NamedTuple):
    """The peers the coordinator's workers are connected to, at the addresses they were
    dialled at: each worker's ut_pex messages (BEP 11) list these besides its own peers."""

    peers: tuple[PeerAddr, ...]


class PeerCap(NamedTuple):
    """This worker accepts peers that dial us while it has fewer than ``max_peers``
    connections: the shares of ``--max-peers`` of workers not started yet are lent to the
    started ones, which alone accept (what it dials stays ``WorkerConfig.max_peers``)."""

    max_peers: int


class Seeding(NamedTuple):
    """A worker's answer to SeedOnly, after its last download counts."""

    worker: int


WorkerReport: TypeAlias = (
    Took | PieceDone | PieceFailed | Returned | PeerBitfield | PeerHaves | PeerBanned
    | WorkerStats | WorkerFailed | Seeding | PexLearned | DhtNodeLearned
)  # fmt: skip
"""Worker -> coordinator (or seeder), in lists on the worker's report queue."""

Control: TypeAlias = AddPeers | Stop | SeedOnly | SwarmPeers | ReturnBacklog | PeerCap
"""Coordinator (or seeder) -> one worker, on its control queue."""

# The queues between the coordinator (or seeder) and one worker; engine/pool.py makes them.
WorkQueue: TypeAlias = "Queue[list[int]]"  # batches of piece indices to fetch
ReportQueue: TypeAlias = "Queue[list[WorkerReport] | None]"  # None ends the reader
ControlQueue: TypeAlias = "Queue[Control]"
# Shared by every worker: one byte per piece, set once it is verified and written, and a
# last byte that says "endgame" (a multiprocessing RawArray of c_ubyte).
DoneMap: TypeAlias = "ctypes.Array[ctypes.c_ubyte]"
