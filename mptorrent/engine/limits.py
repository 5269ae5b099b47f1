"""Global rate limits for the pool's workers: the shared counters and the thread that refills them.

The owner of a pool (the coordinator, the seeder) makes one :class:`Limits` before it
starts its workers and hands each worker the :class:`~mptorrent.mp.RateCells` of each
limited direction (``WorkerConfig.download_limit`` / ``upload_limit``).  A thread here
ticks every ``policy.ratelimit.TICK`` seconds: it reads every worker's *spent* counter,
lets :class:`~mptorrent.policy.ratelimit.RateShare` decide the new grants, and writes
them.  A worker stops reading its sockets (download) or queueing piece data (upload)
while its balance is used up.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from mptorrent.mp import RateCells
from mptorrent.policy.ratelimit import TICK, RateShare

if TYPE_CHECKING:
    from mptorrent.mp import Context


def peer_shares(max_peers: int, workers: int) -> list[int]:
    """``--max-peers`` (connections for the whole client) split over ``workers`` workers:
    shares that add up to it (with fewer connections than workers, some get none and
    stay idle: the owner gives them no peers)."""
    base, extra = divmod(max(1, max_peers), workers)
    return [base + (1 if i < extra else 0) for i in range(workers)]


class _Direction:
    """One limited direction: its counters and its share-out."""

    def __init__(self, ctx: Context, rate: int, workers: int) -> None:
        self.cells = RateCells(ctx, workers)
        self.share = RateShare(rate, workers)

    def tick(self, now: float) -> None:
        self.cells.set_granted(self.share.tick(now, self.cells.spent_all()))


class Limits:
    """The download and upload limits of one pool of ``workers`` workers (bytes a second;
    None or 0: unlimited), refilled by a thread between :meth:`start` and :meth:`stop`."""

    def __init__(
        self, ctx: Context, workers: int, *, download: int | None = None,
        upload: int | None = None,
    ) -> None:  # fmt: skip
        self.download = _Direction(ctx, download, workers) if download else None
        self.upload = _Direction(ctx, upload, workers) if upload else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tick(time.monotonic())  # the first burst is there before any worker starts

    @property
    def download_cells(self) -> RateCells | None:
        return self.download.cells if self.download is not None else None

    @property
    def upload_cells(self) -> RateCells | None:
        return self.upload.cells if self.upload is not None else None

    def __bool__(self) -> bool:
        return self.download is not None or self.upload is not None

    def _tick(self, now: float) -> None:
        for d in (self.download, self.upload):
            if d is not None:
                d.tick(now)

    def start(self) -> None:
        if not self or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="mptorrent-limits", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            self._tick(time.monotonic())

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
            self._thread = None
