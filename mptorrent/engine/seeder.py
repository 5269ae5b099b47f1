"""``mptorrent seed``: serve a torrent's verified data from N worker processes.

The data is verified in parallel first; only pieces that pass are announced
and served.  Every worker opens its own ``SO_REUSEPORT`` listener on the same
address, so the kernel spreads incoming peers over the processes.  The workers
run in a :class:`~mptorrent.engine.pool.WorkerPool`, as fetch's do: one that dies
is restarted (up to the pool's cap) while the others serve on.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, assert_never

from mptorrent import events as ev
from mptorrent.disk import checker
from mptorrent.disk.storage import IoChoice, Layout, choose_io
from mptorrent.engine.limits import Limits, peer_shares
from mptorrent.engine.pool import Batch, Exit, WorkerPool
from mptorrent.errors import StorageError
from mptorrent.messages import (
    DhtNodeLearned,
    PeerBanned,
    PeerBitfield,
    PeerHaves,
    PexLearned,
    PieceDone,
    PieceFailed,
    Returned,
    Seeding,
    Took,
    WorkerFailed,
    WorkerReport,
    WorkerStats,
)
from mptorrent.mp import context
from mptorrent.netio.announcer import Announcer, TierResult
from mptorrent.proto import tracker
from mptorrent.proto.metainfo import Metainfo
from mptorrent.record import Record, mutable
from mptorrent.worker import extensions
from mptorrent.worker.process import WorkerConfig, reserve_port, run

if TYPE_CHECKING:
    from mptorrent.netio.dht import Dht


@mutable
class SeedStats(Record):
    """A seed's running totals, kept by the :class:`Seeder` from worker reports; ``until`` polls
    them and :meth:`Seeder.run` returns them (``port``: the one bound)."""

    uploaded: int = 0
    peers: int = 0
    valid_pieces: int = 0
    port: int = 0
    per_worker_peers: dict[int, int] = field(default_factory=dict)


class Seeder:
    """``mptorrent seed``: verify, announce, and serve from ``jobs`` worker processes."""

    def __init__(
        self,
        meta: Metainfo,
        path: str | Path,
        *,
        jobs: int = 1,
        bind: str = "0.0.0.0",
        port: int = 6881,
        use_trackers: bool = True,
        max_peers: int = 200,
        events: ev.EventSink | None = None,
        until: Callable[[SeedStats], bool] | None = None,
        io: IoChoice = "auto",
        dht: bool = False,
        dht_bootstrap: tuple[tuple[str, int], ...] = (),
        dht_port: int | None = None,
        max_upload_rate: int | None = None,  # bytes a second for all workers; None: no limit
    ) -> None:
        self.meta = meta
        self.max_upload_rate = max_upload_rate
        self.use_dht = dht and not meta.private  # BEP 27: never for private torrents
        self.dht_bootstrap = dht_bootstrap
        self.dht_port = dht_port
        self.dht: Dht | None = None
        self.layout = Layout.for_torrent(meta, path)
        self.io = choose_io(io, path)  # as fetch: pread where a fault could SIGBUS a worker
        self.jobs = max(1, jobs)
        self.bind = bind
        self.port = port
        self.use_trackers = use_trackers
        self.max_peers = max_peers
        self.emit = events or ev.ignore  # tracker errors, worker errors and restarts
        self.until = until  # checked a few times a second: True ends seeding
        self.ctx = context(preload=(run.__module__,))  # forkserver: imported once
        self.stats = SeedStats()
        self.inbox: queue.Queue[Batch | TierResult] = queue.Queue()  # reports, tracker replies
        self.ready = threading.Event()
        self.stop_requested = threading.Event()
        self.client_id = os.urandom(12)

    def run(self, *, progress: checker.Progress | None = None) -> SeedStats:
        """Serve until :meth:`stop` or KeyboardInterrupt (re-raised after a clean stop)."""
        report = checker.verify(self.meta, self.layout, jobs=self.jobs, progress=progress)
        if report.valid_count == 0:
            raise StorageError(f"nothing to seed: no piece of {self.layout.paths[0]} verifies")
        self.stats.valid_pieces = report.valid_count
        left = sum(self.layout.piece_size(i) for i in report.invalid + report.missing)
        holder = reserve_port(self.bind, self.port)
        self.stats.port = holder.getsockname()[1]
        done_raw = self.ctx.RawArray(ctypes.c_ubyte, self.meta.num_pieces + 1)
        done = memoryview(done_raw).cast("B")
        done[: self.meta.num_pieces] = report.valid
        source = None if self.bind in ("0.0.0.0", "::") else self.bind
        announcer = Announcer(
            self.meta.trackers, info_hash=self.meta.info_hash, peer_id=tracker.make_peer_id(),
            port=self.stats.port, source_address=source,
            exclude=[(source, self.stats.port)] if source else (),
        )  # fmt: skip
        pool = WorkerPool(self.ctx, self.jobs, run, done_raw, self.inbox.put, name="mptorrent-seed")
        # --max-peers and --max-upload-rate are for the whole seed, shared by its workers
        shares = peer_shares(self.max_peers, self.jobs)
        limits = Limits(self.ctx, self.jobs, upload=self.max_upload_rate)

        def config(wid: int) -> WorkerConfig:
            return WorkerConfig(
                worker_id=wid, meta=self.meta, layout=self.layout, peers=(),
                parent_pid=os.getpid(), max_peers=shares[wid],
                listen=(self.bind, self.stats.port), seed_only=True, client_id=self.client_id,
                io=self.io, dht_port=self.dht.port if self.dht is not None else None,
                upload_limit=limits.upload_cells,
            )  # fmt: skip

        try:
            limits.start()
            if self.use_dht:
                # announce into the DHT; the peers it finds are left to dial us.  Started
                # before the workers: they tell peers its port (BEP 5).
                from mptorrent.netio.dht import Dht  # only when the DHT is on

                self.dht = Dht(
                    bind=self.bind, bootstrap=self.dht_bootstrap, on_peers=lambda _i, _p: None,
                    port=self.dht_port if self.dht_port is not None else self.stats.port,
                )  # fmt: skip
                self.dht.start()
                self.dht.lookup(self.meta.info_hash, self.stats.port)
            if self.jobs > 1:
                extensions.preload()  # once here, not in each worker
            for w in range(self.jobs):
                pool.start(w, config(w))
            if self.use_trackers and announcer:
                announcer.announce(event="started", left=left, on_result=self.inbox.put, wait=5.0)
            self.ready.set()
            self.emit(ev.SeedingReady(
                self.meta.name, self.bind, self.stats.port, self.stats.valid_pieces,
                self.meta.num_pieces,
            ))  # fmt: skip
            while not self.stop_requested.is_set():
                if self.until is not None and self.until(self.stats):
                    break
                self._take_inbox(0.2)
                ended = pool.exits()
                if ended:
                    self._take_inbox(0)  # their last words first: a disk error is exit 4
                for ex in ended:
                    why = self._exit_reason(ex)
                    pool.restart(ex.worker, config(ex.worker), why)  # raises past the cap
                    self.emit(ev.WorkerRestarted(ex.worker, ex.code, f"seed {why}", pool.restarts))
                if self.use_trackers and announcer:
                    # at the tracker's interval, per tier (never blocks)
                    announcer.maybe_reannounce(
                        time.monotonic(), left=left, uploaded=self.stats.uploaded,
                        on_result=self.inbox.put,
                    )  # fmt: skip
        finally:
            pool.stop()
            limits.stop()
            holder.close()
            if self.dht is not None:
                self.dht.stop()  # saves the routing table
            if self.use_trackers and announcer:
                announcer.announce(
                    event="stopped", left=left, uploaded=self.stats.uploaded, wait=2.0
                )
        return self.stats

    def _take_inbox(self, timeout: float) -> None:
        """Handle everything that arrived, waiting up to ``timeout`` for the first."""
        try:
            item = self.inbox.get(timeout=timeout) if timeout else self.inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            match item:
                case Batch():
                    for msg in item.reports:
                        self._on_worker(msg)
                case TierResult():
                    for i, err in enumerate(item.errors):
                        url = item.failed[i] if i < len(item.failed) else None
                        self.emit(ev.TrackerError(err, url))
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _on_worker(self, msg: WorkerReport) -> None:
        match msg:
            case WorkerStats():
                self.stats.uploaded += msg.uploaded
                self.stats.per_worker_peers[msg.worker] = msg.peers
                self.stats.peers = sum(self.stats.per_worker_peers.values())
            case WorkerFailed():
                if msg.storage:
                    # The data went away under us (a file shrank, a disk error):
                    # a restarted worker would meet it again.  Exit 4, as fetch.
                    raise StorageError(msg.message).with_detail(msg.detail)
                self.emit(ev.WorkerError(msg.worker, msg.message, msg.detail))
            case Took() | PieceDone() | PieceFailed() | Returned() | Seeding():
                pass  # a serve-only worker takes and fetches nothing
            case PeerBitfield() | PeerHaves() | PeerBanned():
                pass  # what leechers have is their business
            case PexLearned():
                pass  # a seed only serves: it dials nobody
            case DhtNodeLearned():
                if self.dht is not None:  # a candidate: pinged within the node's rate
                    self.dht.add_node(msg.node.host, msg.node.port)
            case _:
                assert_never(msg)

    @staticmethod
    def _exit_reason(ex: Exit) -> str:
        if ex.signum == signal.SIGBUS:
            # reading data that shrank under the mmap: the restart would meet it again
            raise StorageError(
                f"seed worker {ex.worker} was killed by SIGBUS: disk I/O error or data file shrank"
            )
        return ex.describe()

    def stop(self) -> None:
        self.stop_requested.set()
