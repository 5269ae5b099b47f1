"""The main process of a fetch: storage, trackers, the work queue and the workers.

It owns the truth: the picker's table says which piece is needed, queued,
taken by which worker, or done.  The ``multiprocessing.Queue`` of piece indices
is only the delivery pipe, kept a little ahead of the workers.  Worker deaths
are watched through process sentinels; because a worker killed inside
``Queue.get()`` can leave the queue's lock held for ever, any abnormal death
rebuilds both queues and restarts the workers, losing only unverified blocks.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mptorrent import checker, tracker
from mptorrent.announcer import Announcer
from mptorrent.errors import DownloadError, StorageError
from mptorrent.messages import (
    AddPeers,
    PeerAddr,
    PeerBanned,
    PeerBitfield,
    PeerHaves,
    PieceDone,
    PieceFailed,
    Returned,
    Stop,
    Took,
    WorkerFailed,
    WorkerStats,
)
from mptorrent.metainfo import Metainfo
from mptorrent.mp import context
from mptorrent.picker import Picker
from mptorrent.seeder import reserve_port
from mptorrent.storage import Layout, Storage, human_size, prepare
from mptorrent.worker import WorkerConfig, run

QUEUE_AHEAD = 4  # pieces queued per worker beyond what they hold
MAX_RESTARTS = 20  # worker deaths tolerated before giving up
NO_PEERS_TIMEOUT = 60.0  # no connected peer for this long: give up (exit 1)
STOP_GRACE = 3.0
ENDGAME_SLACK = 0  # endgame starts when every missing piece is in flight
SHARE_AFTER = 1.0  # seconds before idle workers borrow peers


class ProgressSink(Protocol):
    def start(self, total: int, done: int) -> None: ...
    def update(self, done: int, peers: int, workers: int) -> None: ...
    def note(self, text: str) -> None: ...


class _Quiet:
    def start(self, total: int, done: int) -> None:
        pass

    def update(self, done: int, peers: int, workers: int) -> None:
        pass

    def note(self, text: str) -> None:
        pass


@dataclass
class FetchResult:
    total_length: int
    downloaded: int  # payload bytes fetched in this run
    elapsed: float
    resumed_pieces: int
    peers_used: int
    pieces_per_worker: dict[int, int]
    pieces_per_peer: dict[PeerAddr, int]


@dataclass
class FetchOptions:
    jobs: int = 1
    peers: tuple[PeerAddr, ...] = ()
    port: int = 6881
    bind: str | None = None  # accept peers on (bind, port) while fetching; None: only dial out
    max_peers: int = 50
    use_trackers: bool = True
    no_peers_timeout: float = NO_PEERS_TIMEOUT


@dataclass
class _Slot:
    """One worker position: its process and control queue, and the peers it owns."""

    wid: int
    peers: list[PeerAddr] = field(default_factory=list)
    proc: Any = None
    control: Any = None
    stats_peers: int = 0


def output_path(meta: Metainfo, output: str | Path | None) -> Path:
    return Path(output) if output is not None else Path.cwd() / meta.name


class Coordinator:
    def __init__(
        self, meta: Metainfo, output: str | Path | None, opts: FetchOptions,
        progress: ProgressSink | None = None,
    ) -> None:  # fmt: skip
        self.meta = meta
        self.output = output_path(meta, output)
        self.opts = opts
        self.progress = progress or _Quiet()
        self.layout = Layout.for_torrent(meta, self.output)
        self.ctx = context()
        self.peer_id = tracker.make_peer_id()
        self.slots = [_Slot(w) for w in range(max(1, opts.jobs))]
        self.known: set[PeerAddr] = set()
        self.banned: set[PeerAddr] = set()
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.restarts = 0
        self.downloaded = 0  # payload bytes received, from worker stats
        self.verified_bytes = 0  # bytes of pieces verified in this run
        self.hash_failures = 0
        self.pieces_per_worker: dict[int, int] = {}
        self.pieces_per_peer: dict[PeerAddr, int] = {}
        self.tracker_errors: list[str] = []
        self.trackers_pending = 0
        self._lock = threading.Lock()
        self.listen: tuple[str, int] | None = None
        self._holder: socket.socket | None = None
        # trackers record the address a request comes from, so announce from the one we bind
        source = None if opts.bind in (None, "0.0.0.0", "::") else opts.bind
        self.announcer = Announcer(
            meta.trackers, info_hash=meta.info_hash, peer_id=self.peer_id, port=opts.port,
            source_address=source,
        )  # fmt: skip

    # -- set-up -------------------------------------------------------------

    def _prepare_storage(self) -> bytearray:
        existed = any(p is not None and os.path.exists(p) for p in self.layout.paths)
        prepare(self.layout, self.output)
        if not existed:
            return bytearray(self.meta.num_pieces)
        self.progress.note("checking existing data")
        report = checker.verify(self.meta, self.layout, jobs=len(self.slots))
        return report.valid

    def run(self) -> FetchResult:
        t0 = time.monotonic()
        have = self._prepare_storage()
        resumed = sum(have)
        self.picker = Picker(self.meta.num_pieces, have)
        self.done_bytes = self._done_bytes(have)
        self.progress.start(self.meta.total_length, self.done_bytes)
        if self.picker.remaining == 0:
            self._announce_all("completed", wait=True)
            return self._result(t0, resumed)
        # One shared done-map: workers see each other's verified pieces (endgame)
        # and the last byte says "endgame".
        self.done_raw = self.ctx.RawArray("B", self.meta.num_pieces + 1)
        self.done_map = memoryview(self.done_raw).cast("B")
        for i, h in enumerate(have):
            if h:
                self.done_map[i] = 1
        for addr in self.opts.peers:
            self._add_peer(addr)
        if not (self.opts.use_trackers and self.announcer) and not self.known:
            raise DownloadError("no peers: the torrent lists no trackers and no --peer was given")
        self._listen()
        try:
            if self.opts.use_trackers and self.announcer:
                self._announce_all("started", wait=False)
            try:
                self._start_workers()
                self._loop()
            except BaseException:
                self._stop_workers()
                self._announce_all("stopped", wait=True)
                raise
            self._stop_workers()
            self._announce_all("completed", wait=True)
        finally:
            if self._holder is not None:
                self._holder.close()
        return self._result(t0, resumed)

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
            self.progress.note(
                f"port {self.opts.port} is busy; accepting peers on port "
                f"{self._holder.getsockname()[1]}"
            )
        self.listen = (bind, self._holder.getsockname()[1])
        self.announcer.port = self.listen[1]

    def _done_bytes(self, have: bytes | bytearray) -> int:
        return sum(self.layout.piece_size(i) for i, h in enumerate(have) if h)

    def _result(self, t0: float, resumed: int) -> FetchResult:
        return FetchResult(
            total_length=self.meta.total_length,
            downloaded=self.verified_bytes,
            elapsed=time.monotonic() - t0,
            resumed_pieces=resumed,
            peers_used=len(self.pieces_per_peer),
            pieces_per_worker=dict(self.pieces_per_worker),
            pieces_per_peer=dict(self.pieces_per_peer),
        )

    # -- peers and trackers -------------------------------------------------

    def _add_peer(self, addr: PeerAddr) -> None:
        """Give a new peer to the worker with the fewest."""
        if addr in self.known or addr in self.banned or addr.port == 0:
            return
        self.known.add(addr)
        slot = min(self.slots, key=lambda s: len(s.peers))
        self._give(slot, addr)

    def _give(self, slot: _Slot, addr: PeerAddr) -> None:
        slot.peers.append(addr)
        if slot.control is not None:
            slot.control.put(AddPeers((addr,)))

    def _share_peers(self) -> None:
        """With fewer peers than workers, idle workers also dial the least-shared peers.

        Done a little after start-up, so that peers from the first tracker replies
        are spread one per worker before any is doubled up.
        """
        if not self.known:
            return
        for slot in self.slots:
            if not slot.peers:
                users = {a: sum(a in s.peers for s in self.slots) for a in self.known}
                self._give(slot, min(users, key=lambda a: (users[a], str(a))))

    def _announce_all(self, event: str | None, *, wait: bool) -> None:
        if not self.announcer or not self.opts.use_trackers:
            return
        left = self.meta.total_length - getattr(self, "done_bytes", 0)
        threads = self.announcer.announce(
            event=event, left=left, downloaded=self.verified_bytes,
            on_result=lambda r: self.inbox.put(("tracker", r)), wait=3.0 if wait else None,
        )  # fmt: skip
        with self._lock:
            self.trackers_pending += len(threads)

    # -- workers ------------------------------------------------------------

    def _start_workers(self) -> None:
        self.work_q = self.ctx.Queue()
        self.result_q = self.ctx.Queue()
        self.queued = 0
        for slot in self.slots:
            slot.control = self.ctx.Queue()
            cfg = WorkerConfig(
                worker_id=slot.wid, meta=self.meta, layout=self.layout, peers=tuple(slot.peers),
                parent_pid=os.getpid(), max_peers=self.opts.max_peers, banned=tuple(self.banned),
                listen=self.listen, client_id=self.peer_id[8:],
            )  # fmt: skip
            slot.proc = self.ctx.Process(
                target=run, args=(cfg, self.work_q, self.result_q, slot.control, self.done_raw),
                name=f"mptorrent-worker-{slot.wid}", daemon=True,
            )  # fmt: skip
            slot.proc.start()
        # A reader thread, so a worker that dies mid-message can only block this
        # thread (abandoned at the next rebuild), never the coordinator.
        rq = self.result_q
        threading.Thread(target=self._pump, args=(rq,), daemon=True).start()

    def _pump(self, rq: Any) -> None:
        while True:
            try:
                msg = rq.get()
            except Exception:  # the queue was closed or a writer died mid-message
                return
            if msg is None:
                return
            self.inbox.put(("worker", (rq, msg)))

    def _stop_workers(self) -> None:
        for slot in self.slots:
            if slot.control is not None:
                try:
                    slot.control.put(Stop())
                except (ValueError, OSError):
                    pass
        deadline = time.monotonic() + STOP_GRACE
        for slot in self.slots:
            if slot.proc is not None:
                slot.proc.join(max(0.0, deadline - time.monotonic()))
        for slot in self.slots:
            if slot.proc is not None and slot.proc.is_alive():
                slot.proc.kill()
                slot.proc.join(1.0)
        try:
            self.result_q.put(None)  # ends the pump thread
        except (ValueError, OSError, AttributeError):
            pass
        for q in [getattr(self, "work_q", None), *(s.control for s in self.slots)]:
            if q is not None:
                q.cancel_join_thread()
                q.close()

    def _rebuild(self, why: str) -> None:
        self.restarts += 1
        self.progress.note(f"{why}; restarting workers")
        if self.restarts > MAX_RESTARTS:
            raise DownloadError(f"{why}; giving up after {MAX_RESTARTS} worker restarts")
        self._stop_workers()
        # Verified writes whose PieceDone was lost with the old result queue.
        self._recover_done()
        self.picker.release_all()
        for slot in self.slots:
            slot.stats_peers = 0
        self._start_workers()

    def _recover_done(self) -> None:
        claimed = [
            i for i in range(self.meta.num_pieces) if self.done_map[i] and self.picker.state[i] != 3
        ]
        if not claimed:
            return
        with Storage(self.layout) as st:
            for i in claimed:
                if st.hash_piece(i) == self.meta.piece_hash(i):
                    self._piece_done(i, None, ())
                else:
                    self.done_map[i] = 0

    # -- the loop -----------------------------------------------------------

    def _loop(self) -> None:
        last_peer_seen = started = time.monotonic()
        shared = False
        while self.picker.remaining:
            if not shared and time.monotonic() - started > SHARE_AFTER:
                shared = True
                self._share_peers()
            self._refill()
            try:
                kind, payload = self.inbox.get(timeout=0.1)
            except queue.Empty:
                kind, payload = None, None
            while kind is not None:
                self._handle(kind, payload)
                try:
                    kind, payload = self.inbox.get_nowait()
                except queue.Empty:
                    kind = None
            self._check_workers()
            peers = sum(s.stats_peers for s in self.slots)
            now = time.monotonic()
            if peers:
                last_peer_seen = now
            elif now - last_peer_seen > self.opts.no_peers_timeout and self.trackers_pending == 0:
                raise DownloadError(self._no_peers_reason())
            if not self.known and self.trackers_pending == 0:
                raise DownloadError(self._no_peers_reason())
            workers = sum(1 for s in self.slots if s.proc is not None and s.proc.is_alive())
            self.progress.update(self.done_bytes, peers, workers)

    def _no_peers_reason(self) -> str:
        if self.tracker_errors:
            return "no peers: " + self.tracker_errors[-1]
        if not self.known:
            return "no peers: the trackers returned none"
        return f"no peer could be reached for {self.opts.no_peers_timeout:.0f} s"

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "peers":
            for addr in payload:
                self._add_peer(addr)
        elif kind == "tracker":
            with self._lock:
                self.trackers_pending -= 1
            for err in payload.errors:
                self.tracker_errors.append(err)
                self.progress.note(f"tracker error: {err}")
            for addr in payload.peers:
                self._add_peer(addr)
        elif kind == "worker":
            rq, msg = payload
            if rq is self.result_q:  # ignore stragglers from before a rebuild
                self._on_worker(msg)

    def _on_worker(self, msg: Any) -> None:
        p = self.picker
        if isinstance(msg, Took):
            self.queued = max(0, self.queued - 1)
            p.took(msg.index, msg.worker)
        elif isinstance(msg, PieceDone):
            self._piece_done(msg.index, msg.worker, msg.peers)
        elif isinstance(msg, PieceFailed):
            self.progress.note(f"piece {msg.index} failed its hash check")
            self.hash_failures += 1
            if not msg.retrying:
                p.release(msg.index, msg.worker)
        elif isinstance(msg, Returned):
            p.release(msg.index, msg.worker)
        elif isinstance(msg, PeerBitfield):
            p.peer_bitfield((msg.worker, msg.peer), msg.bits)
        elif isinstance(msg, PeerHaves):
            for i in msg.indices:
                p.peer_have((msg.worker, msg.peer), i)
        elif isinstance(msg, PeerBanned):
            if msg.peer not in self.banned:
                self.banned.add(msg.peer)
                self.progress.note(f"banned {msg.peer}: {msg.reason}")
        elif isinstance(msg, WorkerStats):
            self.slots[msg.worker].stats_peers = msg.peers
            self.downloaded += msg.downloaded
        elif isinstance(msg, WorkerFailed):
            if msg.storage:
                raise StorageError(msg.message)
            # A bug in a worker: show it, requeue its pieces, carry on (capped).
            self.progress.note(msg.message)
            self._failed_worker = msg

    def _piece_done(self, index: int, worker: int | None, peers: tuple[PeerAddr, ...]) -> None:
        if not self.picker.finished(index):
            return
        self.done_map[index] = 1
        self.verified_bytes += self.layout.piece_size(index)
        self.done_bytes += self.layout.piece_size(index)
        if worker is not None:
            self.pieces_per_worker[worker] = self.pieces_per_worker.get(worker, 0) + 1
        if peers:  # credited to the peer that sent most of its blocks
            self.pieces_per_peer[peers[0]] = self.pieces_per_peer.get(peers[0], 0) + 1

    def _refill(self) -> None:
        p = self.picker
        target = len(self.slots) * QUEUE_AHEAD
        if self.queued < target:
            for index in p.pick(target - self.queued):
                self.work_q.put(index)
                self.queued += 1
        if (
            self.queued == 0
            and p.remaining
            and p.remaining <= len(p.owner) + ENDGAME_SLACK
            and not p.needed_available
        ):
            # Endgame: everything left is in flight; let idle workers duplicate it.
            if not self.done_map[self.meta.num_pieces]:
                self.done_map[self.meta.num_pieces] = 1
            now = time.monotonic()
            if now - getattr(self, "_last_endgame", 0.0) > 1.0:
                self._last_endgame = now
                for index in p.endgame_pick(len(self.slots)):
                    self.work_q.put(index)

    def _check_workers(self) -> None:
        for slot in self.slots:
            proc = slot.proc
            if proc is None or proc.exitcode is None:
                continue
            code = proc.exitcode
            if code == -7:
                raise StorageError(
                    f"worker {slot.wid} was killed by SIGBUS: disk I/O error or disk full"
                )
            failed = getattr(self, "_failed_worker", None)
            if failed is not None and failed.worker == slot.wid:
                self._failed_worker = None
                self._rebuild(failed.message)
                return
            why = (
                f"worker {slot.wid} died (signal {-code})" if code < 0
                else f"worker {slot.wid} exited unexpectedly (status {code})"
            )  # fmt: skip
            self._rebuild(why)
            return


def fetch(
    meta: Metainfo, output: str | Path | None, opts: FetchOptions,
    progress: ProgressSink | None = None,
) -> FetchResult:  # fmt: skip
    return Coordinator(meta, output, opts, progress).run()


def summary(res: FetchResult) -> str:
    rate = res.downloaded / res.elapsed if res.elapsed > 0 else 0.0
    return (
        f"done: {human_size(res.total_length)} in {res.elapsed:.1f} s, "
        f"{human_size(rate)}/s average, {res.peers_used} peer(s) used"
        + (f", {res.resumed_pieces} piece(s) already on disk" if res.resumed_pieces else "")
    )
