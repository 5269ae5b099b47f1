"""``mptorrent seed``: serve a torrent's verified data from N worker processes.

The data is verified in parallel first; only pieces that pass are announced
and served.  Every worker opens its own ``SO_REUSEPORT`` listener on the same
address, so the kernel spreads incoming peers over the processes.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mptorrent import events as ev
from mptorrent.disk import checker
from mptorrent.disk.storage import Layout, choose_io
from mptorrent.errors import StorageError
from mptorrent.messages import Stop, WorkerFailed, WorkerStats
from mptorrent.mp import context
from mptorrent.netio.announcer import Announcer, TierResult
from mptorrent.proto import tracker
from mptorrent.proto.metainfo import Metainfo
from mptorrent.worker.process import WorkerConfig, reserve_port, run


@dataclass
class SeedStats:
    uploaded: int = 0
    peers: int = 0
    valid_pieces: int = 0
    port: int = 0
    per_worker_peers: dict[int, int] = field(default_factory=dict)


class Seeder:
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
        io: str = "auto",
    ) -> None:
        self.meta = meta
        self.layout = Layout.for_torrent(meta, path)
        self.io = choose_io(io, path)  # as fetch: pread where a fault could SIGBUS a worker
        self.jobs = max(1, jobs)
        self.bind = bind
        self.port = port
        self.use_trackers = use_trackers
        self.max_peers = max_peers
        self.emit = events or ev.ignore  # tracker errors, worker errors and restarts
        self.until = until  # checked a few times a second: True ends seeding
        self.ctx = context()
        self.stats = SeedStats()
        self.inbox: queue.Queue[TierResult] = queue.Queue()  # from announce threads
        self.ready = threading.Event()
        self.stop_requested = threading.Event()
        self.client_id = os.urandom(12)
        self.restarts = 0

    def run(self, *, progress: checker.Progress | None = None) -> SeedStats:
        """Serve until :meth:`stop` or KeyboardInterrupt (re-raised after a clean stop)."""
        report = checker.verify(self.meta, self.layout, jobs=self.jobs, progress=progress)
        if report.valid_count == 0:
            raise StorageError(f"nothing to seed: no piece of {self.layout.paths[0]} verifies")
        self.stats.valid_pieces = report.valid_count
        left = sum(self.layout.piece_size(i) for i in report.invalid + report.missing)
        holder = reserve_port(self.bind, self.port)
        self.stats.port = holder.getsockname()[1]
        done_raw = self.ctx.RawArray("B", self.meta.num_pieces + 1)
        done = memoryview(done_raw).cast("B")
        done[: self.meta.num_pieces] = report.valid
        source = None if self.bind in ("0.0.0.0", "::") else self.bind
        announcer = Announcer(
            self.meta.trackers, info_hash=self.meta.info_hash, peer_id=tracker.make_peer_id(),
            port=self.stats.port, source_address=source,
            exclude=[(source, self.stats.port)] if source else (),
        )  # fmt: skip
        results: Any = self.ctx.Queue()
        idle_q: Any = self.ctx.Queue()  # seeders never take work
        procs: dict[int, tuple[Any, Any]] = {}

        def start(wid: int) -> None:
            cfg = WorkerConfig(
                worker_id=wid, meta=self.meta, layout=self.layout, peers=(),
                parent_pid=os.getpid(), max_peers=self.max_peers,
                listen=(self.bind, self.stats.port), seed_only=True, client_id=self.client_id,
                io=self.io,
            )  # fmt: skip
            control = self.ctx.Queue()
            p = self.ctx.Process(
                target=run, args=(cfg, idle_q, results, control, done_raw),
                name=f"mptorrent-seed-{wid}", daemon=True,
            )  # fmt: skip
            p.start()
            procs[wid] = (p, control)

        def on_result(r: TierResult) -> None:
            self.inbox.put(r)

        try:
            for w in range(self.jobs):
                start(w)
            if self.use_trackers and announcer:
                announcer.announce(event="started", left=left, on_result=on_result, wait=5.0)
            self.ready.set()
            while not self.stop_requested.is_set():
                if self.until is not None and self.until(self.stats):
                    break
                try:
                    batch = results.get(timeout=0.2)  # a worker's list of reports
                except queue.Empty:
                    batch = []
                for msg in batch:
                    if isinstance(msg, WorkerStats):
                        self.stats.uploaded += msg.uploaded
                        self.stats.per_worker_peers[msg.worker] = msg.peers
                        self.stats.peers = sum(self.stats.per_worker_peers.values())
                    elif isinstance(msg, WorkerFailed):
                        if msg.storage:
                            # The data went away under us (a file shrank, a disk error):
                            # a restarted worker would meet it again.  Exit 4, as fetch.
                            raise StorageError(msg.message).with_detail(msg.detail)
                        self.emit(ev.WorkerError(msg.worker, msg.message, msg.detail))
                while not self.inbox.empty():
                    r = self.inbox.get_nowait()
                    for err in r.errors:
                        self.emit(ev.TrackerError(err))
                for wid, (p, _c) in list(procs.items()):
                    if p.exitcode is not None:
                        self.restarts += 1
                        self.emit(ev.WorkerRestarted(
                            wid, p.exitcode, f"seed worker {wid} exited ({p.exitcode})",
                            self.restarts,
                        ))  # fmt: skip
                        start(wid)
                if self.use_trackers and announcer:
                    # at the tracker's interval, per tier (never blocks)
                    announcer.maybe_reannounce(
                        time.monotonic(), left=left, uploaded=self.stats.uploaded,
                        on_result=on_result,
                    )  # fmt: skip
        finally:
            for _p, control in procs.values():
                try:
                    control.put(Stop())
                except (OSError, ValueError):
                    pass
            deadline = time.monotonic() + 3.0
            for p, _c in procs.values():
                p.join(max(0.0, deadline - time.monotonic()))
                if p.is_alive():
                    p.kill()
                    p.join(1.0)
            holder.close()
            if self.use_trackers and announcer:
                announcer.announce(
                    event="stopped", left=left, uploaded=self.stats.uploaded, wait=2.0
                )
        return self.stats

    def stop(self) -> None:
        self.stop_requested.set()
