"""What a fetch or a seed tells its caller, as typed records rather than sentences.

The coordinator and the seeder call one sink, ``Callable[[Event], None]``, with each
record below as it happens.  The records are plain data (numbers, addresses, a
free-form reason only where the reason is text by nature, such as a tracker's
failure message), so that every consumer renders them its own way: the command
line's progress bar and lines on stderr (``mptorrent.cli.render``), and later a
JSON stream or a Python API.  Nothing here prints or formats.

Events are delivered on the thread that runs the fetch or the seeder, in order.
Sizes are in bytes.  ``worker`` is a worker's position (0 .. jobs-1), which keeps
its number across restarts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeAlias

from mptorrent.messages import PeerAddr
from mptorrent.record import Record, frozen

PeerSource: TypeAlias = Literal["manual", "tracker", "pex", "dht", "incoming", "webseed"]
"""Where a fetch first heard of a peer: the user (``--peer``, a magnet's ``x.pe``), a
tracker's reply, a peer's PEX message, the DHT, or the peer dialled us; ``webseed``: an
HTTP mirror (BEP 19), whose address is its URL."""

# -- a fetch ------------------------------------------------------------------


@frozen
class FetchingMetadata(Record):
    """A magnet link's fetch begins: its metadata (the info dictionary) is asked of peers."""

    info_hash: str  # hex
    name: str | None  # the magnet's ``dn``, until the metadata names the torrent


@frozen
class MetadataReceived(Record):
    """A magnet link's metadata arrived and hashes to its info-hash."""

    name: str
    size: int  # bytes in the torrent
    pieces: int  # pieces in the torrent
    seconds: float  # since the metadata phase began
    peers: int  # peers that sent pieces of it


@frozen
class Metadata(Record):
    """The torrent a fetch downloads (from a .torrent, or a magnet's verified metadata).

    Sent by whoever starts the download (``--json``, the Python API) just before it, so
    that a stream says which torrent it is about; the coordinator does not send it."""

    name: str
    info_hash: str  # hex (v1)
    size: int  # bytes in the torrent, padding files included
    piece_length: int
    pieces: int
    files: tuple[tuple[str, int], ...]  # ("dir/file", bytes), without padding files


@frozen
class CheckingExisting(Record):
    """The output already exists: its pieces are being verified before the download."""


@frozen
class Started(Record):
    """Storage is ready and what is already there is known: the download begins."""

    total: int  # bytes in the torrent, or in the files selected (--only)
    done: int  # bytes of pieces already verified on disk (of selected files)
    pieces: int  # pieces in the torrent
    resumed: int  # pieces already verified on disk


@frozen
class PortBusy(Record):
    """The port asked for was taken; peers are accepted on another one."""

    wanted: int
    port: int


@frozen
class Progress(Record):
    """A few times a second while downloading."""

    done: int  # bytes verified, those found on disk included
    total: int
    peers: int  # connected peers, over all workers
    workers: int  # worker processes alive
    received: int = 0  # block payload received so far, duplicates included (for rates)
    uploaded: int = 0  # bytes uploaded so far


@frozen
class PeerConnected(Record):
    """A worker's peer told what it has (its bitfield, or a first HAVE)."""

    worker: int
    peer: PeerAddr
    source: PeerSource | None = None  # None: not known (a sender that does not track it)


@frozen
class PeerGone(Record):
    """A peer that had told what it has is no longer connected to that worker."""

    worker: int
    peer: PeerAddr


@frozen
class PeerBanned(Record):
    """A peer is banned for the rest of the fetch (it sent data that failed checks...)."""

    peer: PeerAddr
    reason: str  # free-form, from the worker that banned it
    worker: int


@frozen
class PieceVerified(Record):
    """A piece passed its SHA-1 check and is written."""

    index: int
    size: int
    worker: int | None  # None: found verified on disk after its worker died
    peer: PeerAddr | None  # the peer that sent most of its blocks, if known


@frozen
class PieceFailed(Record):
    """A downloaded piece failed its SHA-1 check."""

    index: int
    worker: int
    peers: tuple[PeerAddr, ...]  # who sent its blocks
    retrying: bool  # the same worker fetches it again (to find the liar)


@frozen
class TrackerReply(Record):
    """A tracker tier answered an announce."""

    url: str  # scheme://host:port only: never a private tracker's passkey
    tier: int
    announce: str | None  # the event sent: "started", "completed", "stopped" or None
    peers: int  # addresses it gave
    interval: int | None
    seeders: int | None
    leechers: int | None
    warning: str | None  # the tracker's own text


@frozen
class TrackerError(Record):
    """An announce failed (one line naming the tracker by host:port).

    A fetch reports each distinct error once while it recurs."""

    message: str
    url: str | None = None  # scheme://host:port of the tracker that failed, when one did


@frozen
class WorkerError(Record):
    """A worker hit an error it cannot recover from (a bug); it exits and is restarted."""

    worker: int
    message: str
    detail: str  # the worker's traceback


@frozen
class WorkerRestarted(Record):
    """A worker process ended unexpectedly and a new one takes its place."""

    worker: int
    exitcode: int | None  # negative: killed by that signal
    reason: str  # how it ended, as one clause ("worker 1 died (signal 9)")
    restarts: int  # restarts so far, this one included


@frozen
class Done(Record):
    """The download is complete and verified (seeding may follow)."""

    total: int  # the torrent's size, or the selected files' (--only)
    downloaded: int  # bytes of pieces verified in this run
    elapsed: float  # seconds
    resumed: int  # pieces that were already on disk
    peers_used: int  # peers that sent at least one block of a verified piece
    banned: int  # peers banned
    hash_failures: int
    received: int  # block payload received, duplicates and failed pieces included
    uploaded: int


@frozen
class SeedingReady(Record):
    """A seed has verified its data and listens: peers can connect (``mptorrent seed``)."""

    name: str  # the torrent's
    address: str  # the address it listens on ("0.0.0.0": all of them)
    port: int
    pieces: int  # pieces verified on disk, the ones it serves
    total: int  # pieces in the torrent


@frozen
class SeedingStopped(Record):
    """Seeding after a download ended early: workers kept crashing."""

    reason: str


@frozen
class Seeded(Record):
    """Seeding after a download ended (its limit was reached)."""

    uploaded: int  # bytes, during the download and after


@frozen
class Error(Record):
    """The fetch failed; the same error is then raised to the caller."""

    message: str
    exit_status: int  # mptorrent.errors.ExitStatus


Event: TypeAlias = (
    FetchingMetadata | MetadataReceived | Metadata
    | CheckingExisting | Started | PortBusy | Progress | PeerConnected | PeerGone | PeerBanned
    | PieceVerified | PieceFailed | TrackerReply | TrackerError | WorkerError | WorkerRestarted
    | Done | SeedingReady | SeedingStopped | Seeded | Error
)  # fmt: skip

EventSink: TypeAlias = Callable[[Event], None]


def ignore(_event: Event) -> None:
    """The sink of a caller that wants no events."""
