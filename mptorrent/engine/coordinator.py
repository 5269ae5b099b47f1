"""The main process of a fetch: storage, trackers, the work queues and the workers.

It owns the truth: the picker's table says which piece is needed, leased to
which worker, or done.  The workers run in a :class:`~mptorrent.engine.pool.WorkerPool`
(which explains why each has queues of its own).  Each worker's work queue is kept a
few pieces ahead and filled only with pieces that one of *that worker's* peers has
(workers report their peers' bitfields); its reports drive the progress bar.

What a worker's death means is decided here: its leases and its peers' pieces are
forgotten, and it is restarted (up to the pool's cap).  Verified pieces are never
lost: workers mark them in a shared done-map right after writing them, and the
coordinator re-hashes any such claim whose report died with its worker.
"""

from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal, assert_never

from mptorrent import events as ev
from mptorrent.disk import checker
from mptorrent.disk.storage import IoChoice, Layout, Storage, choose_io, prepare
from mptorrent.engine.limits import Limits, peer_shares
from mptorrent.engine.pool import Batch, Exit, WorkerPool
from mptorrent.errors import (
    BadSelection,
    DownloadError,
    MptorrentError,
    OutputLocked,
    StorageError,
    StreamClosed,
)
from mptorrent.messages import (
    AddPeers,
    DhtNodeLearned,
    PeerAddr,
    PeerBanned,
    PeerBitfield,
    PeerCap,
    PeerHaves,
    PexLearned,
    PieceDone,
    PieceFailed,
    ReturnBacklog,
    Returned,
    Seeding,
    SeedOnly,
    SwarmPeers,
    Took,
    WorkerFailed,
    WorkerReport,
    WorkerStats,
)
from mptorrent.mp import context
from mptorrent.netio.announcer import Announcer, TierResult, numwant_for, redact
from mptorrent.netio.peer import Timeouts
from mptorrent.policy.peertable import PeerTable
from mptorrent.policy.picker import DONE, Picker
from mptorrent.proto import bitfield, tracker
from mptorrent.proto.metainfo import Metainfo
from mptorrent.record import Record, frozen, mutable
from mptorrent.worker import extensions
from mptorrent.worker.process import STATS_EVERY, WorkerConfig, reserve_port, run

if TYPE_CHECKING:
    from mptorrent.engine.stream import PieceStream
    from mptorrent.netio.dht import Dht

AHEAD_BYTES = 8 << 20  # queued per worker beyond what it holds: feeds a deep pipeline
WINDOW_BYTES = 4 << 20  # --sequential: read-ahead raised to HIGH (its head to DEADLINE)
MIN_WINDOW = 4  # pieces, however large they are
MIN_AHEAD, MAX_AHEAD = 2, 64
NO_PEERS_TIMEOUT = 60.0  # no connected peer for this long: give up (exit 1)
STALL_TIMEOUT = 300.0  # no data received (no peer found, or none sends) for this long: exit 1
ENDGAME_EVERY = 0.5  # seconds between endgame hand-outs to one idle worker
ENDGAME_PIECES = 2  # pieces left per worker before idle workers fetch pieces held by others
UNLOAD_AFTER = 0.5  # s a worker would need for its leased pieces before an idle one takes some
# An idle worker this many times faster than another fetches that one's pieces too (started
# ones included) once it would need over HURRY_AFTER s for them; HURRY_SECONDS of the idle
# worker's rate at a time, looked at every HURRY_EVERY s (see _hurry)
HURRY_RATIO = 4.0
HURRY_AFTER = 0.05
HURRY_SECONDS = 0.25
HURRY_EVERY = 0.05
PEERS_LOW = 5  # fewer connected peers than this: re-announce early (min interval)
MAX_PEX_KNOWN = 500  # peers known before PEX adds no more (trackers and --peer still do)
SWARM_EVERY = 5.0  # seconds between looks at the connected peers, for the workers' PEX
# Progress events at most this often: the loop turns once per report batch, hundreds of
# times a second at -j 2, and the bar redraws at most ten times a second anyway.
PROGRESS_EVERY = 0.05
MAX_SWARM = 200  # connected peers sent to the workers at most (PEX sends 50 a minute)
_IS_DONE = bytes(DONE) + b"\x01" + bytes(255 - DONE)  # a picker state to a done flag


# What the coordinator's inbox carries: a tracker tier's answer (from an announce
# thread), one report batch of a worker incarnation (from its reader thread), or peers
# the DHT found (from the DHT thread).
InboxItem = (
    tuple[Literal["tracker"], TierResult]
    | tuple[Literal["worker"], Batch]
    | tuple[Literal["dht"], tuple[PeerAddr, ...]]
)


@mutable
class FetchResult(Record):
    """What one fetch did, for the summary and the demo; bytes are this run's only (resumed pieces
    are counted, not their bytes)."""

    total_length: int
    downloaded: int  # bytes of pieces verified in this run
    elapsed: float
    resumed_pieces: int
    peers_used: int
    pieces_per_worker: dict[int, int]
    pieces_per_peer: dict[PeerAddr, int]
    banned: dict[PeerAddr, str] = field(default_factory=dict)
    hash_failures: int = 0
    uploaded: int = 0
    received: int = 0  # block payload that arrived, duplicates and failed pieces included


@mutable
class FetchOptions(Record):
    """The caller's choices for one fetch: workers, where peers come from, listening, I/O mode,
    timeouts and seeding after. The coordinator only reads them."""

    jobs: int = 1
    peers: tuple[PeerAddr, ...] = ()
    # where ``peers`` came from (a magnet's metadata phase knows); those not here: "manual"
    sources: Mapping[PeerAddr, ev.PeerSource] = field(default_factory=dict)
    port: int = 6881
    bind: str | None = None  # accept peers on (bind, port) while fetching; None: only dial out
    max_peers: int = 50
    use_trackers: bool = True
    no_peers_timeout: float = NO_PEERS_TIMEOUT
    io: IoChoice = "auto"  # "auto" is pwrite on network/FUSE filesystems, else mmap
    timeouts: Timeouts = field(default_factory=Timeouts)
    seed_after: SeedAfter | None = None  # keep serving once complete; None: leave at once
    dht: bool = False  # look for peers in the DHT (never for a private torrent)
    dht_bootstrap: tuple[tuple[str, int], ...] = ()  # empty: the saved table, else the routers
    dht_port: int | None = None  # UDP port of the DHT node; None: the listening port
    stall_timeout: float = STALL_TIMEOUT  # no data received for this long: give up
    web_seeds: tuple[str, ...] = ()  # BEP 19 mirrors besides the torrent's url-list (--web-seed)
    # selective and streaming (issue 16): all three are piece priorities in the picker
    only: tuple[int, ...] | None = None  # indices of the files wanted; None: every file
    sequential: bool = False  # in order, a read-ahead window first (rarest first inside)
    stream: IO[bytes] | None = None  # write the one selected file here, in order
    # global limits, across all workers (engine/limits.py); None: unlimited
    max_download_rate: int | None = None  # bytes a second
    max_upload_rate: int | None = None


@frozen(slots=False)
class SeedAfter(Record):
    """Seeding after the download (fetch --seed-ratio/--seed-time), by the same workers
    on the same connections, so peers that were downloading with us keep going."""

    until: Callable[[int], bool]  # given the bytes uploaded in all: True ends seeding
    started: Callable[[FetchResult], None] = lambda _result: None  # the download's result


@mutable
class _Slot(Record):
    """One worker position, as the coordinator sees it: the peers it owns and what it
    holds (its process and queues are the pool's)."""

    wid: int
    peers: list[PeerAddr] = field(default_factory=list)
    gen: int = 0  # incarnation; messages from an earlier one are stale
    queued: int = 0  # pieces put on its queue and not yet taken
    stats_peers: int = 0
    reported: set[PeerAddr] = field(default_factory=set)  # peers whose bitfield we hold
    last_endgame: float = 0.0
    last_hurry: float = 0.0
    rate: float = 0.0  # bytes/s it receives, smoothed over its last few WorkerStats
    cap: int = 0  # its cap on accepting, as last told (its share plus what it is lent)
    best: float = 0.0  # the highest ``rate`` so far: what its peers can send (idle, rate decays)


def output_path(meta: Metainfo, output: str | Path | None) -> Path:
    return Path(output) if output is not None else Path.cwd() / meta.name


def lock_path(meta: Metainfo, output: Path) -> Path:
    """Beside a single file, inside a multi-file torrent's directory."""
    if meta.multi_file:
        return output / ".mptorrent-lock"
    return output.parent / f".{output.name}.mptorrent-lock"


class Coordinator:
    """One fetch, in the main process: the one owner of the picker, the output lock and the
    trackers; other threads only put on its inbox, which :meth:`run`'s thread handles."""

    def __init__(
        self, meta: Metainfo, output: str | Path | None, opts: FetchOptions,
        progress: ev.EventSink | None = None,  # typed events (mptorrent.events)
    ) -> None:  # fmt: skip
        self.meta = meta
        self.output = output_path(meta, output)
        self.opts = opts
        self.emit: ev.EventSink = progress or ev.ignore
        self.layout = Layout.for_torrent(meta, self.output, opts.only)
        self.total = self.layout.selected_length  # what completion means: selected bytes
        self.sequential = opts.sequential
        self.io = choose_io(opts.io, self.output)
        self.stream: PieceStream | None = None
        if opts.stream is not None:
            self.stream = self._make_stream(opts.stream)
        self.ctx = context(preload=(run.__module__,))  # forkserver: imported once
        self.peer_id = tracker.make_peer_id()
        self.slots = [_Slot(w) for w in range(max(1, opts.jobs))]
        self.known: set[PeerAddr] = set()
        # bounds ``known`` (3,000 peers) and keeps each one's history (policy/peertable.py)
        self.table: PeerTable[PeerAddr] = PeerTable()
        self.sources: dict[PeerAddr, ev.PeerSource] = {}  # where we first heard of each
        self.banned: dict[PeerAddr, str] = {}
        # BEP 19 mirrors (the torrent's, a magnet's ws, --web-seed): every worker reads from
        # each; a worker reports one as the peer PeerAddr(seed_id(url), 0), source "webseed"
        self.web_seeds = web_seed_urls(meta, opts.web_seeds)
        for url in self.web_seeds:
            self.sources[PeerAddr(_seed_id(url), 0)] = "webseed"
        self.inbox: queue.Queue[InboxItem] = queue.Queue()
        # One shared done-map: workers see each other's verified pieces (endgame,
        # HAVE messages), and its last byte says "endgame".
        self.done_raw = self.ctx.RawArray(ctypes.c_ubyte, meta.num_pieces + 1)
        self.done_map = memoryview(self.done_raw).cast("B")
        self.pool = WorkerPool(
            self.ctx, len(self.slots), run, self.done_raw, self._deliver,
            name="mptorrent-worker",
        )  # fmt: skip
        # --max-peers is for the whole client: each worker gets its share
        self.peer_shares = peer_shares(opts.max_peers, len(self.slots))
        self.limits = Limits(
            self.ctx, len(self.slots), download=opts.max_download_rate,
            upload=opts.max_upload_rate,
        )  # fmt: skip
        self.seeding_acks = 0  # workers that answered SeedOnly
        self.downloaded = 0  # payload bytes received, from worker stats
        self.uploaded = 0
        self.verified_bytes = 0
        self.done_bytes = 0
        self.hash_failures = 0
        self.pieces_per_worker: dict[int, int] = {}
        self.pieces_per_peer: dict[PeerAddr, int] = {}
        self.senders: set[PeerAddr] = set()  # peers that sent blocks of verified pieces
        self.tracker_errors: list[str] = []
        self.trackers_pending = 0
        self._lock = threading.Lock()
        self.listen: tuple[str, int] | None = None
        self._swarm_sent: frozenset[PeerAddr] = frozenset()  # the last SwarmPeers
        self._swarm_at = 0.0
        self._lazy_start = False  # _give starts a worker that never ran (after _run's start)
        self._holder: socket.socket | None = None
        self.dht: Dht | None = None
        self._lock_fd: int | None = None
        self.ahead = max(MIN_AHEAD, min(MAX_AHEAD, AHEAD_BYTES // meta.piece_length))
        self.window = max(MIN_WINDOW, WINDOW_BYTES // meta.piece_length)
        if self.sequential:  # deeper queues would hold the window's next pieces behind others
            self.ahead = max(MIN_AHEAD, min(self.ahead, self.window))
        self.first_ahead = max(MIN_AHEAD, self.ahead // 4)
        # Trackers record the address a request comes from: announce from the one we bind.
        source = None if opts.bind in (None, "0.0.0.0", "::") else opts.bind
        self.announcer = Announcer(
            meta.trackers, info_hash=meta.info_hash, peer_id=self.peer_id, port=opts.port,
            source_address=source, numwant=numwant_for(opts.max_peers, len(self.slots)),
        )  # fmt: skip

    # -- set-up -------------------------------------------------------------

    def _lock_output(self) -> None:
        """One fetch per output: a second one would fight over the same pieces."""
        path = lock_path(self.meta, self.output)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            # mkdir says "File exists" when a file stands where a directory must be
            blocker = next((q for q in path.parents if os.path.lexists(q)), None)
            why = exc.strerror
            if blocker is not None and not blocker.is_dir():
                why = f"{blocker} is not a directory"
            raise StorageError(f"cannot create {path}: {why}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputLocked(
                f"output {self.output} is locked by another mptorrent (pid {other})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        self._lock_file = path

    def _unlock_output(self) -> None:
        if self._lock_fd is not None:
            try:
                os.unlink(self._lock_file)
            except OSError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = None

    def _make_stream(self, out: IO[bytes]) -> PieceStream:
        """The one file to stream: a single-file torrent's, or the one ``only`` selects."""
        from mptorrent.engine.stream import PieceStream  # -o - only

        lay = self.layout
        chosen = [i for i, f in enumerate(lay.files) if not f.padding and lay.is_selected(i)]
        if len(chosen) != 1:
            raise BadSelection(
                f"-o - streams one file, and {len(chosen)} are selected: choose one with --only"
            )
        f = lay.files[chosen[0]]
        return PieceStream(lay, f.offset, f.offset + f.length, out, self.io)

    def _prepare_storage(self) -> bytearray:
        lay = self.layout
        chosen = [p if lay.is_selected(i) else None for i, p in enumerate(lay.paths)]
        fresh = {i for i, p in enumerate(chosen) if p is not None and not os.path.exists(p)}
        parts = lay.parts_path is not None and os.path.exists(lay.parts_path)
        existed = parts or any(p is not None and os.path.exists(p) for p in chosen)
        prepare(lay, self.output)
        if not existed:
            return bytearray(self.meta.num_pieces)
        self.emit(ev.CheckingExisting())
        prio = lay.priorities()
        wanted = [i for i, p in enumerate(prio) if p]
        report = checker.verify(self.meta, lay, jobs=len(self.slots), pieces=wanted)
        # --only changed since the last run: shared pieces may be split between the parts
        # file and files of the earlier selection (a few pieces: one per file boundary)
        if parts and (report.invalid or report.missing):
            bad = sorted(report.invalid + report.missing)
            for i in checker.recover_shared(self.meta, lay, bad, fresh):
                report.valid[i] = 1
        return report.valid

    def _drop_parts(self) -> None:
        """Every file is selected and complete: the parts file holds nothing needed."""
        path = self.layout.parts_path
        if self.layout.selected is None and path is not None:
            try:
                os.unlink(path)
            except OSError:
                pass

    def run(self) -> FetchResult:
        """Download (and seed after, if asked), reporting through the event sink.

        A failure is reported as an ``Error`` event, then raised."""
        try:
            result = self._fetch()
        except MptorrentError as exc:
            self.emit(ev.Error(str(exc), int(exc.exit_status)))
            raise
        if self.opts.seed_after is None:
            self.emit(done_event(result))
        else:  # Done came when seeding began
            self.emit(ev.Seeded(result.uploaded))
        return result

    def _fetch(self) -> FetchResult:
        t0 = time.monotonic()
        if self._uses_dht() or self.web_seeds:
            pass  # the DHT or a web seed may serve where trackers and --peer give none
        elif self.opts.use_trackers and not self.announcer and not self.opts.peers:
            why = "the torrent lists no usable trackers" if self.meta.trackers else (
                "the torrent lists no trackers")  # fmt: skip
            raise DownloadError(f"no peers: {why} and no --peer was given")
        elif not self.opts.use_trackers and not self.opts.peers:
            raise DownloadError("no peers: trackers are turned off and no --peer was given")
        self._lock_output()
        try:
            return self._run(t0)
        finally:
            self._unlock_output()

    def _run(self, t0: float) -> FetchResult:
        have = self._prepare_storage()
        resumed = sum(have)
        self.picker = Picker(
            self.meta.num_pieces, have, priority=self.layout.priorities(),
            sequential=self.sequential, window=self.window,
        )  # fmt: skip
        self.done_bytes = self._done_bytes(have)
        self.emit(ev.Started(self.total, self.done_bytes, self.meta.num_pieces, resumed))
        seed_after = self.opts.seed_after
        was_complete = self.picker.remaining == 0
        if self.stream is not None:
            self.stream.begin(have)
        if was_complete and seed_after is None:
            self._drop_parts()
            self._finish_stream()
            return self._result(t0, resumed)
        self.done_map[: self.meta.num_pieces] = have
        for addr in self.opts.peers:
            self._add_peer(addr, self.opts.sources.get(addr, "manual"))
        self._listen()
        try:
            self._start_dht()
            if self.opts.use_trackers and self.announcer:
                self._announce_all("started", wait=None)
            try:
                self.limits.start()
                if len(self.slots) > 1:  # once here, not once per worker (see preload)
                    extensions.preload()  # while the announce is in flight
                self._lazy_start = True  # a worker given its first peer from now on starts then
                for slot in self.slots:
                    if slot.gen == 0 and self._needed(slot):  # else _give started it
                        self._start(slot)
                    # A tracker's answer comes in after the first fork or two: its peers go
                    # to the workers started so far now, not after every fork (at -j 8 the
                    # forks take 30-40 ms, and the first requests waited for all of them).
                    self._take_inbox(0)
                    self._refill(time.monotonic())
                self._loop()
                self._drop_parts()
                if seed_after is not None:
                    self._seed(seed_after, t0, resumed, announce_completed=not was_complete)
            except BaseException:
                if self.stream is not None:
                    self.stream.stop()
                self._stop_workers()
                self._announce_all("stopped", wait=2.0)
                raise
            self._stop_workers()
            self._finish_stream()
            self._drain_counts()
            if seed_after is None:
                # fetch does not stay to seed: say we completed, then that we left
                self._announce_all("completed", wait=3.0)
            self._announce_all("stopped", wait=2.0)
        finally:
            self.limits.stop()
            if self._holder is not None:
                self._holder.close()
            if self.dht is not None:
                self.dht.stop()  # saves the routing table
        return self._result(t0, resumed)

    def _uses_dht(self) -> bool:
        return self.opts.dht and not self.meta.private  # BEP 27: never for private torrents

    def _start_dht(self) -> None:
        if not self._uses_dht():
            return
        port = self.listen[1] if self.listen is not None else self.opts.port
        from mptorrent.netio.dht import Dht  # only when the DHT is on

        self.dht = Dht(
            bind=self.opts.bind or "0.0.0.0",
            port=self.opts.dht_port if self.opts.dht_port is not None else port,
            bootstrap=self.opts.dht_bootstrap,
            on_peers=lambda _ih, peers: self.inbox.put(("dht", peers)),
        )
        self.dht.start()
        # announce only a port peers can reach: the one we listen on
        self.dht.lookup(self.meta.info_hash, port if self.listen is not None else None)

    def _listen(self) -> None:
        """Hold the port every worker listens on (SO_REUSEPORT), so other peers can dial us."""
        bind = self.opts.bind
        if bind is None:
            return
        try:
            self._holder = reserve_port(bind, self.opts.port)
        except StorageError:
            if self.opts.port == 0:
                raise
            # a busy incoming port is no reason to fail a download
            self._holder = reserve_port(bind, 0)
            self.emit(ev.PortBusy(self.opts.port, self._holder.getsockname()[1]))
        self.listen = (bind, self._holder.getsockname()[1])
        self.announcer.port = self.listen[1]
        if bind not in ("0.0.0.0", "::"):
            self.announcer.exclude_peer(bind, self.listen[1])

    def _done_bytes(self, have: bytes | bytearray) -> int:
        prio = self.picker.priority
        return sum(self.layout.wanted_size(i) for i, h in enumerate(have) if h and prio[i])

    def _finish_stream(self) -> None:
        """Complete: wait for the stream's last bytes to reach its reader."""
        if self.stream is None:
            return
        if not self.stream.finish():
            self._stream_closed()

    def _stream_closed(self) -> None:
        s = self.stream
        assert s is not None
        why = s.error or "the stream ended early"
        raise StreamClosed(f"{why} after {s.written} of {s.end - s.start} bytes")

    def _result(self, t0: float, resumed: int) -> FetchResult:
        return FetchResult(
            total_length=self.total,
            downloaded=self.verified_bytes,
            elapsed=time.monotonic() - t0,
            resumed_pieces=resumed,
            peers_used=len(self.senders),
            pieces_per_worker=dict(self.pieces_per_worker),
            pieces_per_peer=dict(self.pieces_per_peer),
            banned=dict(self.banned),
            hash_failures=self.hash_failures,
            uploaded=self.uploaded,
            received=self.downloaded,
        )

    # -- peers and trackers -------------------------------------------------

    def _add_peer(self, addr: PeerAddr, source: ev.PeerSource) -> None:
        """Give a new peer to the worker with the fewest; remember where it came from."""
        self.sources.setdefault(addr, source)
        if addr in self.known or addr in self.banned or addr.port == 0:
            return
        if self.listen is not None and _is_us(addr, self.listen):
            return
        if not self.table.add(addr, time.monotonic()):
            return  # the table is full of peers we are connected to
        if len(self.known) >= len(self.table):  # it forgot some to make room
            self.known.intersection_update(self.table.peers)
        self.known.add(addr)
        slot = min(self._dialling(), key=lambda s: len(s.peers))
        self._give(slot, addr)

    def _dialling(self) -> list[_Slot]:
        """The workers that may hold connections (with fewer --max-peers than workers, a
        worker's share can be none)."""
        return [s for s in self.slots if self.peer_shares[s.wid]]

    def _pex_learned(self, msg: PexLearned) -> None:
        """Peers a worker's peer told it about (BEP 11): dialled like tracker peers, up to
        ``MAX_PEX_KNOWN`` known in all.  Our own address and banned peers are left out by
        ``_add_peer``; a private torrent ignores PEX entirely (BEP 27)."""
        if self.meta.private:
            return
        for addr in msg.peers:
            if len(self.known) >= MAX_PEX_KNOWN:
                return
            self._add_peer(addr, "pex")

    def swarm(self) -> frozenset[PeerAddr]:
        """The peers some worker is connected to (its bitfield reported) that others can
        dial: those we gave out, not banned.  Incoming peers' temporary ports are left out."""
        reported = (a for s in self.slots for a in s.reported)
        return frozenset(a for a in reported if a in self.known and a not in self.banned)

    def _share_swarm(self, now: float) -> None:
        """Every few seconds, if it changed: tell every worker whom the swarm's workers are
        connected to, so each one's PEX speaks for the whole client (issue 14)."""
        if self.meta.private or now - self._swarm_at < SWARM_EVERY:
            return
        self._swarm_at = now
        peers = self.swarm()
        if peers != self._swarm_sent:
            self._swarm_sent = peers
            self.pool.broadcast(SwarmPeers(tuple(sorted(peers, key=str))[:MAX_SWARM]))

    def _give(self, slot: _Slot, addr: PeerAddr) -> None:
        """Each address goes to one worker only, never to two: a real peer refuses a second
        connection from one address (libtorrent's allow_multiple_connections_per_ip is off
        by default), and one that accepts it would send blocks twice.  With fewer peers
        than workers some workers stay idle, and the endgame lends them nothing."""
        slot.peers.append(addr)
        if self._lazy_start and slot.gen == 0:
            try:
                self._start(slot)  # its first peer: the config carries slot.peers
                return
            except OSError:
                # no fork now (EAGAIN, ENOMEM): worker 0, started with the fetch, takes it
                slot.peers.remove(addr)
                slot = self.slots[0]
                slot.peers.append(addr)
        self.pool.send(slot.wid, AddPeers((addr,)))  # else it gets them when it starts

    def _tracker_result(self, r: TierResult) -> None:
        self.inbox.put(("tracker", r))

    def _announce_all(self, event: tracker.Event | None, *, wait: float | None) -> None:
        if not self.announcer or not self.opts.use_trackers:
            return
        threads = self.announcer.announce(
            event=event, left=self.total - self.done_bytes,
            downloaded=self.verified_bytes, uploaded=self.uploaded,
            on_result=self._tracker_result, wait=wait,
        )  # fmt: skip
        with self._lock:
            self.trackers_pending += len(threads)

    def _reannounce(self, now: float, peers: int) -> None:
        if not self.announcer or not self.opts.use_trackers:
            return
        threads = self.announcer.maybe_reannounce(
            now, peers_low=peers < min(PEERS_LOW, self.opts.max_peers),
            left=self.total - self.done_bytes, downloaded=self.verified_bytes,
            uploaded=self.uploaded, on_result=self._tracker_result,
        )  # fmt: skip
        if threads:
            with self._lock:
                self.trackers_pending += len(threads)

    # -- workers ------------------------------------------------------------

    def _needed(self, slot: _Slot) -> bool:
        """Whether the slot's worker starts with the fetch: worker 0 always (it listens for
        peers that dial us), one given peers already, and all of them with web seeds (each
        worker reads from every mirror).  The others start with their first peer
        (``_give``): with fewer peers than workers (four seeders at ``-j 8``) an idle
        worker would cost a whole forked image of the coordinator, 16-17 MiB, for nothing."""
        return slot.wid == 0 or bool(slot.peers) or bool(self._web_seeds_left())

    def _start_for_incoming(self) -> None:
        """Start one more worker once every started one is within a connection of its share
        of ``--max-peers``: only started workers accept the peers that dial us, each up to
        its share, so lazily started workers would otherwise cap what we accept at theirs."""
        if not self._lazy_start or self.listen is None:
            return
        idle = [s for s in self.slots if s.gen == 0 and self.peer_shares[s.wid]]
        if not idle:
            return
        # near its share: one connection short of it, or full with a share of one
        if all(s.stats_peers >= max(1, self.peer_shares[s.wid] - 1) for s in self.slots if s.gen):
            try:
                self._start(idle[0])
            except OSError:
                pass  # no fork now (EAGAIN, ENOMEM): the started ones serve on

    def _lend_caps(self) -> None:
        """Only started workers accept the peers that dial us, so the shares of ``--max-peers``
        of the workers not started yet are lent to the started ones for accepting (what each
        dials stays its own share, as ``_add_peer`` hands out peers); those whose cap on
        accepting changes are told (``PeerCap``).  Taken back as workers start: connections
        accepted on a lent share stay until they close, so the client may hold more than
        ``--max-peers`` for that long."""
        started = [s for s in self.slots if s.gen]
        if not started:
            return
        lent = sum(self.peer_shares[s.wid] for s in self.slots if not s.gen)
        base, extra = divmod(lent, len(started))
        for i, s in enumerate(started):
            cap = self.peer_shares[s.wid] + base + (1 if i < extra else 0)
            if s.cap != cap:
                self.pool.send(s.wid, PeerCap(cap))
                s.cap = cap

    def _start(self, slot: _Slot, restart: str | None = None) -> None:
        """Start the slot's worker, or restart it after it died of ``restart``."""
        cfg = WorkerConfig(
            worker_id=slot.wid, meta=self.meta, layout=self.layout, peers=tuple(slot.peers),
            parent_pid=os.getpid(), max_peers=self.peer_shares[slot.wid],
            banned=tuple(self.banned), listen=self.listen, client_id=self.peer_id[8:],
            timeouts=self.opts.timeouts, io=self.io,
            source_address=None if self.opts.bind in (None, "0.0.0.0", "::") else self.opts.bind,
            seed_only=self.picker.remaining == 0,  # a restart while seeding, or nothing to get
            dht_port=self.dht.port if self.dht is not None else None,  # BEP 5 port messages
            web_seeds=self._web_seeds_left(),
            web_seed_connections=self._web_seed_connections(),
            download_limit=self.limits.download_cells, upload_limit=self.limits.upload_cells,
            workers=len(self.slots),
        )  # fmt: skip
        if restart is None:
            slot.gen = self.pool.start(slot.wid, cfg)
        else:
            slot.gen = self.pool.restart(slot.wid, cfg, restart)  # raises past the cap
        slot.queued = 0
        slot.stats_peers = 0
        slot.reported = set()
        slot.cap = self.peer_shares[slot.wid]  # what a new incarnation accepts until told
        slot.rate = slot.best = 0.0  # a new incarnation: no rates of the dead one's peers
        self._lend_caps()
        self._swarm_sent = frozenset()  # a new incarnation has heard nothing yet

    def _web_seed_connections(self) -> int:
        """Connections each worker opens to each mirror: at most MAX_CONNECTIONS to one mirror
        from the whole client."""
        if not self.web_seeds:
            return 1  # none opened; netio.webseed (ssl, a DNS thread pool) stays unloaded
        from mptorrent.netio.webseed import CONNECTIONS, MAX_CONNECTIONS

        return max(1, min(CONNECTIONS, MAX_CONNECTIONS // len(self.slots)))

    def _web_seeds_left(self) -> tuple[str, ...]:
        """The web seeds no worker has given up on (a restarted worker is not given those)."""
        return tuple(u for u in self.web_seeds if PeerAddr(_seed_id(u), 0) not in self.banned)

    def _deliver(self, batch: Batch) -> None:
        """From the pool's reader threads: a worker's list of reports."""
        self.inbox.put(("worker", batch))

    def _stop_workers(self) -> None:
        self.pool.stop()

    def _drain_counts(self) -> None:
        """Take in the stopped workers' last reports (byte counts for the summary)."""
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return
            match item:
                case ("worker", Batch(wid, gen, batch)):
                    kept: list[WorkerReport] = [
                        m for m in batch if isinstance(m, WorkerStats | PieceDone)
                    ]
                    self._handle(("worker", Batch(wid, gen, kept)))

    def _restart(self, slot: _Slot, why: str, exitcode: int | None = None) -> None:
        # Its leases and its peers' availability die with it.
        self.picker.forget_worker(slot.wid, [(slot.wid, slot.gen, a) for a in slot.reported])
        self.picker.release_worker(slot.wid)
        self._recover_done()
        self._start(slot, restart=why)
        self.emit(ev.WorkerRestarted(slot.wid, exitcode, why, self.pool.restarts))

    def _recover_done(self) -> None:
        """Verified writes whose report was lost with a dead worker's result queue."""
        n = self.meta.num_pieces
        done = self.picker.state.translate(_IS_DONE)  # in C: a torrent may have 500,000 pieces
        claimed = bitfield.newly_set(self.done_map[:n], done)
        if not claimed:
            return
        verifier = self.meta.verifier()
        with Storage(self.layout) as st:
            for i in claimed:
                if st.verify_piece(i, verifier):
                    self._piece_done(i, None, ())
                else:
                    self.done_map[i] = 0

    # -- the loop -----------------------------------------------------------

    def _loop(self) -> None:
        last_peer_seen = last_data = time.monotonic()
        received = self.downloaded
        last_progress = 0.0
        while self.picker.remaining:
            now = time.monotonic()
            self._refill(now)
            self._take_inbox(0.1)
            self._check_workers()
            self._start_for_incoming()
            peers = sum(s.stats_peers for s in self.slots)
            now = time.monotonic()
            self._share_swarm(now)
            self._reannounce(now, peers)
            if self.downloaded != received:
                received, last_data = self.downloaded, now
            elif now - last_data > self.opts.stall_timeout:
                what = "no data received" if self.known else "no peer found"
                raise DownloadError(
                    f"stalled: {what} for {self.opts.stall_timeout:.0f} s (--stall-timeout)"
                )
            if peers:
                last_peer_seen = now
            elif self.trackers_pending == 0:
                mirrors = self._web_seeds_left()
                if not self.known and not mirrors and (self.dht is None or self.dht.hopeless()):
                    # Every tracker has answered (or failed) and nobody gave us a peer.
                    raise DownloadError(self._no_peers_reason())
                usable = self.known - self.banned.keys()
                if not usable and not mirrors and self.banned and not self.announcer:
                    raise DownloadError(self._no_peers_reason())
                # with the DHT, new peers may still come: --stall-timeout decides
                if self.dht is None and now - last_peer_seen > self.opts.no_peers_timeout:
                    raise DownloadError(self._no_peers_reason())
            if self.stream is not None and self.stream.closed:
                self._stream_closed()  # the player quit: stop fetching what nobody reads
            if now - last_progress < PROGRESS_EVERY and self.picker.remaining:
                continue
            last_progress = now
            alive = self.pool.alive()
            self.emit(ev.Progress(
                self.done_bytes, self.total, peers, alive, self.downloaded, self.uploaded,
            ))  # fmt: skip

    def _take_inbox(self, timeout: float) -> None:
        """Handle everything reported, waiting up to ``timeout`` for the first report."""
        try:
            item = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._handle(item)
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _seed(self, plan: SeedAfter, t0: float, resumed: int, *, announce_completed: bool) -> None:
        """Complete: the workers stop asking and serve on, until ``plan.until``."""
        asked = self.pool.broadcast(SeedOnly())  # a dying worker's restart starts serve-only
        # Each worker answers after its last download counts: the summary is final.
        deadline = time.monotonic() + 1.0
        while self.seeding_acks < asked and time.monotonic() < deadline:
            self._take_inbox(0.05)
        download = self._result(t0, resumed)
        self.emit(done_event(download))
        plan.started(download)
        if announce_completed:
            self._announce_all("completed", wait=None)  # answers arrive in the loop below
        while not plan.until(self.uploaded):
            self._take_inbox(0.2)
            try:
                self._check_workers()
                self._start_for_incoming()  # leechers dial a seed
            except DownloadError as exc:
                # A crash loop ends the seeding, not the download that already succeeded.
                self.emit(ev.SeedingStopped(str(exc)))
                return
            self._reannounce(time.monotonic(), sum(s.stats_peers for s in self.slots))

    def _no_peers_reason(self) -> str:
        if self.banned:
            reasons = sorted({r.split(" of piece")[0] for r in self.banned.values()})
            return (
                f"could not complete: no usable peers ({len(self.banned)} banned: "
                f"{'; '.join(reasons)[:200]})"
            )
        dht = "; no DHT node answered" if self.dht is not None and self.dht.hopeless() else ""
        if self.tracker_errors and not self.known:
            return "no peers: " + self.tracker_errors[-1] + dht
        if not self.known:
            return "no peers: the trackers returned none" + dht
        return f"no peer could be reached for {self.opts.no_peers_timeout:.0f} s"

    def _handle(self, item: InboxItem) -> None:
        """One inbox item: a tracker tier's answer, or a worker's list of reports."""
        if item[0] == "worker":  # by far the commonest: no pattern matching on this path
            wid, gen, batch = item[1]
            slot = self.slots[wid]
            on_worker = self._on_worker
            for msg in batch:
                if gen == slot.gen:  # ignore stragglers from a dead incarnation
                    on_worker(slot, msg)
                elif isinstance(msg, PieceDone):
                    self._piece_done(msg.index, wid, msg.peers)  # verified is verified
            return
        match item:
            case ("tracker", TierResult() as r):
                self._on_tracker(r)
            case ("dht", tuple() as found):
                for addr in found:
                    self._add_peer(addr, "dht")

    def _on_tracker(self, r: TierResult) -> None:
        with self._lock:
            self.trackers_pending -= 1
        for i, err in enumerate(r.errors):
            if err not in self.tracker_errors[-5:]:
                self.emit(ev.TrackerError(err, r.failed[i] if i < len(r.failed) else None))
            self.tracker_errors.append(err)
        if r.url is not None:
            self.emit(ev.TrackerReply(
                redact(r.url), r.tier, r.event, len(r.peers), r.interval, r.complete,
                r.incomplete, r.warning,
            ))  # fmt: skip
        for addr in r.peers:
            self._add_peer(addr, "tracker")

    def _on_worker(self, slot: _Slot, msg: WorkerReport) -> None:
        if type(msg) is PieceDone:  # one per piece: ahead of the match below
            self._piece_done(msg.index, slot.wid, msg.peers)
            return
        p = self.picker
        wid = slot.wid
        match msg:
            case PieceDone():
                self._piece_done(msg.index, wid, msg.peers)
            case Took():
                slot.queued = max(0, slot.queued - len(msg.indices))
            case PieceFailed():
                self.emit(ev.PieceFailed(msg.index, wid, msg.peers, msg.retrying))
                self.hash_failures += 1
                if not msg.retrying:
                    p.release(msg.index, wid)
            case Returned():
                p.release(msg.index, wid)
            case PeerBitfield():
                if msg.bits is None:
                    if msg.peer in slot.reported:
                        slot.reported.discard(msg.peer)
                        self.table.closed(msg.peer, time.monotonic(), useful=True)
                        self.emit(ev.PeerGone(wid, msg.peer))
                elif msg.peer not in slot.reported:
                    slot.reported.add(msg.peer)
                    self.table.connected(msg.peer, time.monotonic())
                    # not dialled by us (no source): it connected to our port
                    self.emit(
                        ev.PeerConnected(wid, msg.peer, self.sources.get(msg.peer, "incoming"))
                    )
                p.peer_packed((wid, slot.gen, msg.peer), msg.bits, wid)
            case PeerHaves():
                for i in msg.indices:
                    p.peer_have((wid, slot.gen, msg.peer), i, wid)
            case PeerBanned():
                if msg.peer not in self.banned:
                    self.banned[msg.peer] = msg.reason
                    self.table.ban(msg.peer)
                    self.emit(ev.PeerBanned(msg.peer, msg.reason, wid))
            case WorkerStats():
                slot.stats_peers = msg.peers
                slot.rate = 0.7 * slot.rate + 0.3 * msg.downloaded / STATS_EVERY
                slot.best = max(slot.best, slot.rate)
                self.downloaded += msg.downloaded
                self.uploaded += msg.uploaded
            case Seeding():
                self.seeding_acks += 1
            case PexLearned():
                self._pex_learned(msg)
            case DhtNodeLearned():
                if self.dht is not None:  # a candidate: pinged within the node's rate
                    self.dht.add_node(msg.node.host, msg.node.port)
            case WorkerFailed():
                if msg.storage:
                    raise StorageError(msg.message).with_detail(msg.detail)
                # A bug in a worker: say so; its exit then restarts it (capped).
                self.emit(ev.WorkerError(wid, msg.message, msg.detail))
            case _:
                assert_never(msg)

    def _piece_done(self, index: int, worker: int | None, peers: tuple[PeerAddr, ...]) -> None:
        if not self.picker.finished(index):
            return
        self.done_map[index] = 1
        if self.stream is not None:
            self.stream.piece_done(index)
        size = self.layout.piece_size(index)
        self.verified_bytes += size
        self.done_bytes += self.layout.wanted_size(index)  # of a shared piece: selected bytes
        if worker is not None:
            self.pieces_per_worker[worker] = self.pieces_per_worker.get(worker, 0) + 1
        if peers:  # credited to the peer that sent most of its blocks
            self.pieces_per_peer[peers[0]] = self.pieces_per_peer.get(peers[0], 0) + 1
            self.senders.update(peers)  # the summary counts every one that sent a block
        self.emit(ev.PieceVerified(index, size, worker, peers[0] if peers else None))

    def _refill(self, now: float) -> None:
        p = self.picker
        for slot in self.slots:
            # A worker that has not finished a piece yet gets fewer: its peers may be
            # snubbing it, and queued pieces stay leased to it.
            ahead = self.ahead if self.pieces_per_worker.get(slot.wid) else self.first_ahead
            # Top up at half: batches of several pieces per put (and per Took).
            if not self.pool.running(slot.wid) or slot.queued > ahead // 2:
                continue
            got = p.pick_for(slot.wid, ahead - slot.queued)
            # Not for a worker that has heard no peer's bitfield yet: it can be handed
            # nothing, and the batch taken back (at start-up, put a moment before) would
            # reach its worker a refill later, or never while this one stays idle.
            if not got and slot.queued == 0 and p.knows(slot.wid) and self._take_back(slot):
                got = p.pick_for(slot.wid, ahead - slot.queued)
            # (not before its peers are known: a look at start-up would hold the first
            # endgame hand-out back by ENDGAME_EVERY, an idle half second at the end of a
            # small download where one fast source asked for every block)
            endgame_due = now - slot.last_endgame > ENDGAME_EVERY and p.knows(slot.wid)
            if not got and slot.queued == 0 and endgame_due:
                # Endgame: nothing left this worker can start, but pieces are still in
                # flight elsewhere: fetch some of them too; the first copy wins.
                slot.last_endgame = now
                self._unload_slow(slot)
                if p.remaining <= len(p.owner) or not p.needed_for(slot.wid):
                    # Whole pieces twice only for the last few: a piece another worker
                    # holds is usually on its way, and its copy is sent anyway.
                    last_few = p.remaining <= ENDGAME_PIECES * len(self.slots)
                    got = p.endgame_for(slot.wid, 2) if last_few else []
                    # with one worker there is no other to share with, but its own
                    # idle peers may still duplicate slow blocks (block-level endgame)
                    if (got or p.remaining <= len(p.owner)) and not self.done_map[
                        self.meta.num_pieces
                    ]:
                        self.done_map[self.meta.num_pieces] = 1
            hurry_due = now - slot.last_hurry > HURRY_EVERY and p.knows(slot.wid)
            if not got and slot.queued == 0 and hurry_due:
                slot.last_hurry = now
                got = self._hurry(slot)
            if got and self.pool.put_work(slot.wid, list(got)):
                slot.queued += len(got)

    def _unload_slow(self, idle: _Slot) -> None:
        """An idle worker, nothing to pick or take back: every worker that would need over
        UNLOAD_AFTER s for its leased pieces at its rate gives back those it has not
        started (``ReturnBacklog``), for whoever picks them first.  Its peers are slow, or
        merely busy with the pieces in hand, while the idle worker's peers have nothing to
        do: at the end of a download, unstarted pieces held anywhere are the tail."""
        for wid in slow_workers(self.picker.owner, self._rates(but=idle), self.meta.piece_length):
            self.pool.send(wid, ReturnBacklog())

    def _hurry(self, idle: _Slot) -> list[int]:
        """An idle worker, nothing to pick: the pieces of workers far slower than it
        (``lagging_workers``), started ones too, fetched again here; the first verified copy
        wins (the other worker drops its own when it sees the done-map).  With one
        connection per peer address across workers, a worker whose only peer is slow holds
        about a second of that peer's rate in hand when the others are done: an uneven
        swarm's tail.  Only far slower ones: where every worker's peers are alike (a WAN
        swarm of small seeders), copies before the last few pieces cost more sent than they
        save."""
        p = self.picker
        fast = idle.best  # idle, its own rate falls: it says nothing of what its peers can do
        lagging = lagging_workers(p.owner, self._rates(but=idle), self.meta.piece_length, fast)
        if not lagging:
            return []
        n = max(1, int(fast * HURRY_SECONDS) // self.meta.piece_length)
        return p.endgame_for(idle.wid, n, of=lagging)

    def _rates(self, but: _Slot) -> dict[int, float]:
        """The running workers' smoothed receive rates (bytes/s), ``but`` one."""
        return {s.wid: s.rate for s in self.slots if s is not but and self.pool.running(s.wid)}

    def _take_back(self, idle: _Slot) -> bool:
        """An idle worker while others still have pieces queued: take those batches back
        (the workers have not seen them) so that whoever can fetch them does.  A worker
        whose peer snubs it would otherwise sit on its queue until the endgame."""
        moved = False
        for slot in self.slots:
            if slot is idle or slot.queued == 0:
                continue
            batch = self.pool.take_back(slot.wid)
            if batch is None:
                continue
            slot.queued = max(0, slot.queued - len(batch))  # no Took will come for these
            for index in batch:
                self.picker.release(index, slot.wid)
            moved = True
        return moved

    def _last_words(self) -> None:
        """Handle what dead workers reported before they exited (a crash, a disk error)
        before acting on their exits: the pool has delivered it by now."""
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return
            self._handle(item)

    def _check_workers(self) -> None:
        ended = self.pool.exits()
        if ended:
            self._last_words()
        for ex in ended:
            self._on_exit(ex)

    def _on_exit(self, ex: Exit) -> None:
        if ex.signum == signal.SIGBUS:
            raise StorageError(
                f"worker {ex.worker} was killed by SIGBUS: disk I/O error or disk full"
            )
        self._restart(self.slots[ex.worker], ex.describe(), ex.code)


def slow_workers(
    owner: Mapping[int, set[int]], rates: Mapping[int, float], piece_length: int,
    after: float = UNLOAD_AFTER,
) -> list[int]:  # fmt: skip
    """The workers among ``rates`` (worker: bytes/s) that would need over ``after`` seconds
    for the pieces leased to them (``owner``: piece: workers, the picker's)."""
    leased = dict.fromkeys(rates, 0)
    for owners in owner.values():
        for w in owners:
            if w in leased:
                leased[w] += 1
    return [w for w, n in leased.items() if n * piece_length / max(rates[w], 1.0) > after]


def lagging_workers(
    owner: Mapping[int, set[int]], rates: Mapping[int, float], piece_length: int, fast: float,
    ratio: float = HURRY_RATIO, after: float = HURRY_AFTER,
) -> set[int]:  # fmt: skip
    """The workers among ``rates`` that would need over ``after`` seconds for their leased
    pieces and receive under ``1/ratio`` of ``fast`` (an idle worker's rate): worth copying."""
    slow = slow_workers(owner, rates, piece_length, after)
    return {w for w in slow if rates[w] * ratio < fast}


def _is_us(addr: PeerAddr, listen: tuple[str, int]) -> bool:
    """``addr`` is our own listener: the address we bind, or, bound to every address, any
    loopback address with our port (a peer's PEX or a tracker can hand us ourselves)."""
    host, port = listen
    if addr.port != port:
        return False
    if addr.host == host:
        return True
    if host not in ("0.0.0.0", "::"):
        return False
    try:
        return ipaddress.ip_address(addr.host).is_loopback
    except ValueError:
        return False


def web_seed_urls(meta: Metainfo, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The web seeds a fetch reads from: ``extra`` (``--web-seed``) and the torrent's
    ``url-list`` (a magnet's ``ws``), once each, without those that are not http(s) URLs, at
    most ``MAX_WEB_SEEDS``."""
    urls = dict.fromkeys((*extra, *meta.web_seeds))
    if not urls:
        return ()  # proto.webseed loads only for a fetch that has web seeds
    from mptorrent.proto.webseed import MAX_WEB_SEEDS, seed_url_problem

    return tuple(u for u in urls if seed_url_problem(u) is None)[:MAX_WEB_SEEDS]


def _seed_id(url: str) -> str:
    from mptorrent.proto.webseed import seed_id

    return seed_id(url)


def fetch(
    meta: Metainfo, output: str | Path | None, opts: FetchOptions,
    progress: ev.EventSink | None = None,  # typed events (mptorrent.events)
) -> FetchResult:  # fmt: skip
    return Coordinator(meta, output, opts, progress).run()


def metadata_event(meta: Metainfo) -> ev.Metadata:
    """The event that says which torrent a fetch (or a seed, a verify) works on."""
    files = tuple(("/".join(f.path), f.length) for f in meta.files if not f.padding)
    return ev.Metadata(
        meta.name, meta.info_hash_hex, meta.total_length, meta.piece_length, meta.num_pieces,
        files,
    )  # fmt: skip


def done_event(res: FetchResult) -> ev.Done:
    """The event that reports a completed download (the CLI's summary line)."""
    return ev.Done(
        total=res.total_length, downloaded=res.downloaded, elapsed=res.elapsed,
        resumed=res.resumed_pieces, peers_used=res.peers_used, banned=len(res.banned),
        hash_failures=res.hash_failures, received=res.received, uploaded=res.uploaded,
    )  # fmt: skip
