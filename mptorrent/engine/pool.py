"""Worker processes under supervision: start, watch, restart (bounded), drain, stop.

Both fetch (:mod:`mptorrent.engine.coordinator`) and seed (:mod:`mptorrent.engine.seeder`)
run their workers in a :class:`WorkerPool`.  The pool decides nothing about pieces or
peers; it keeps one process per worker position alive and carries its queues, and its
owner decides what to send and what a worker's death means.

Every worker gets queues of its own: *work* (lists of piece indices), *control*
(:data:`~mptorrent.messages.Control` records) and *reports* (lists of
:data:`~mptorrent.messages.WorkerReport` records, the other way).  Why not one shared
queue: a worker killed inside ``Queue.get()`` or ``Queue.put()`` leaves that queue's lock
held for ever, so a shared queue would wedge every worker; with queues per worker a death
costs only that worker's queues, and it is restarted alone with new ones.  (A shared work
queue would also hand pieces to workers whose peers lack them, which thrashes on a swarm
of partial peers: the coordinator fills each worker's queue for that worker's peers.)

A reader thread per worker (its *pump*) moves the worker's reports to the owner's
``deliver`` callback, tagged with the worker's position and incarnation: a worker that
dies mid-message can only block its own pump, abandoned with that incarnation, never the
owner.  Before the pool reports a death it gives the pump a moment to pass on the dead
worker's last words (a crash report, a disk error, its last byte counts), so the owner
can act on them before it acts on the exit.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeAlias, TypeVar

from mptorrent.errors import DownloadError
from mptorrent.messages import (
    Control,
    ControlQueue,
    ReportQueue,
    Stop,
    WorkerReport,
    WorkQueue,
)
from mptorrent.record import Record, frozen, mutable

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext
    from multiprocessing.process import BaseProcess

MAX_RESTARTS = 20  # worker deaths tolerated (in all) before giving up
STOP_GRACE = 3.0  # seconds a stopping worker gets before it is killed
LAST_WORDS_WAIT = 0.5  # seconds to read a dead worker's last reports before reporting its exit
PUMPS_WAIT = 0.5  # seconds, at stop, for the pumps to pass on the last reports

C = TypeVar("C")  # what one worker is started with (its WorkerConfig)
S = TypeVar("S")  # what every worker shares (the done-map)

# A worker's entry point: its config, its three queues, the shared state.
WorkerMain: TypeAlias = Callable[[C, WorkQueue, ReportQueue, ControlQueue, S], None]


class Batch(NamedTuple):
    """One put of one worker's reports, as delivered to the pool's owner."""

    worker: int
    gen: int  # the incarnation that sent it: reports of an earlier one are stale
    reports: list[WorkerReport]


@frozen(slots=False)
class Exit(Record):
    """A worker process that ended (its last words already delivered)."""

    worker: int
    gen: int
    code: int  # exit status, or minus the signal number

    @property
    def signum(self) -> int | None:
        """The signal that killed it, if one did."""
        return -self.code if self.code < 0 else None

    def describe(self) -> str:
        if self.code == -signal.SIGSEGV:
            return f"worker {self.worker} crashed (signal {-self.code})"
        if self.code < 0:
            return f"worker {self.worker} died (signal {-self.code})"
        return f"worker {self.worker} exited unexpectedly (status {self.code})"


@mutable
class _Incarnation(Record):
    """One process of one worker position, with the queues it was started with."""

    gen: int
    proc: BaseProcess
    work: WorkQueue
    control: ControlQueue
    reports: ReportQueue
    pump: threading.Thread

    def queues(self) -> tuple[WorkQueue, ControlQueue, ReportQueue]:
        return self.work, self.control, self.reports

    def let_go(self) -> None:
        """Stop caring about this incarnation's queues, whatever locks it may hold."""
        for q in self.queues():
            q.cancel_join_thread()  # a dead holder's lock must not hang our exit
        try:
            self.reports.put(None)  # ends the pump, unless a dead writer wedged it
        except (ValueError, OSError):
            pass

    def close(self) -> None:
        # Closing the report queue also closes its reading end here once the None is
        # written: a pump still behind would lose what it had not read.
        for q in self.queues():
            q.close()


class WorkerPool(Generic[C, S]):
    """``size`` worker positions, each run by one process at a time.

    ``target(config, work, reports, control, shared)`` is the worker's entry point;
    ``deliver`` gets every :class:`Batch` of reports, from the pump threads.
    """

    def __init__(
        self, ctx: BaseContext, size: int, target: WorkerMain[C, S], shared: S,
        deliver: Callable[[Batch], None], *, name: str = "mptorrent-worker",
        max_restarts: int = MAX_RESTARTS,
    ) -> None:  # fmt: skip
        self._ctx = ctx
        self._target = target
        self._shared = shared
        self._deliver = deliver
        self._name = name
        self.size = size
        self.max_restarts = max_restarts
        self.restarts = 0
        self._gens = [0] * size
        self._running: list[_Incarnation | None] = [None] * size

    # -- starting -------------------------------------------------------------

    def start(self, wid: int, config: C) -> int:
        """Start worker ``wid`` with new queues; its incarnation number."""
        if self._running[wid] is not None:
            raise RuntimeError(f"worker {wid} is already running")
        self._gens[wid] += 1
        gen = self._gens[wid]
        ctx = self._ctx
        work: WorkQueue = ctx.Queue()
        reports: ReportQueue = ctx.Queue()
        control: ControlQueue = ctx.Queue()
        # BaseContext is typed without Process; every concrete context has it.
        proc: BaseProcess = getattr(ctx, "Process")(  # noqa: B009
            target=self._target, args=(config, work, reports, control, self._shared),
            name=f"{self._name}-{wid}", daemon=True,
        )  # fmt: skip
        proc.start()
        pump = threading.Thread(target=self._pump, args=(wid, gen, reports), daemon=True)
        pump.start()
        self._running[wid] = _Incarnation(gen, proc, work, control, reports, pump)
        return gen

    def restart(self, wid: int, config: C, why: str) -> int:
        """Start worker ``wid`` again after it died of ``why``: a :class:`DownloadError`
        once that makes more than ``max_restarts`` restarts (a crash loop)."""
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise DownloadError(f"{why}; giving up after {self.max_restarts} worker restarts")
        return self.start(wid, config)

    def _pump(self, wid: int, gen: int, reports: ReportQueue) -> None:
        while True:
            try:
                batch = reports.get()
            except Exception:  # closed, or a writer died mid-message
                return
            if batch is None:
                return
            self._deliver(Batch(wid, gen, batch))

    # -- talking to workers ---------------------------------------------------

    def running(self, wid: int) -> bool:
        return self._running[wid] is not None

    def gen(self, wid: int) -> int:
        """The incarnation number of worker ``wid`` (its latest start)."""
        return self._gens[wid]

    def put_work(self, wid: int, batch: list[int]) -> bool:
        w = self._running[wid]
        if w is None:
            return False
        try:
            w.work.put(batch)
        except (ValueError, OSError):
            return False
        return True

    def take_back(self, wid: int) -> list[int] | None:
        """A batch worker ``wid`` has not taken yet, if there is one."""
        w = self._running[wid]
        if w is None:
            return None
        try:
            return w.work.get_nowait()
        except Exception:  # queue.Empty, or closed
            return None

    def send(self, wid: int, msg: Control) -> bool:
        w = self._running[wid]
        if w is None:
            return False
        try:
            w.control.put(msg)
        except (ValueError, OSError):
            return False  # a dying worker: its owner hears of the exit
        return True

    def broadcast(self, msg: Control) -> int:
        """Send ``msg`` to every running worker; to how many it went."""
        return sum(self.send(wid, msg) for wid in range(self.size))

    # -- watching ---------------------------------------------------------------

    def alive(self) -> int:
        return sum(1 for w in self._running if w is not None and w.proc.is_alive())

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._running if w is not None and w.proc.pid is not None]

    def exits(self) -> list[Exit]:
        """Workers that ended since the last look, each now stopped (not restarted).

        What each reported before it ended has been delivered by then, unless it died
        in the middle of writing a report (that one is lost, and so are any behind it).
        """
        ended = []
        for wid, w in enumerate(self._running):
            if w is None:
                continue
            code = w.proc.exitcode
            if code is None:
                continue
            w.let_go()  # the None goes behind everything the worker wrote
            w.pump.join(LAST_WORDS_WAIT)  # a writer killed mid-message wedges the pump
            w.close()
            self._running[wid] = None
            ended.append(Exit(wid, w.gen, code))
        return ended

    # -- stopping ---------------------------------------------------------------

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Ask every worker to stop, kill those still running after ``grace`` seconds,
        and deliver what they reported before they ended."""
        running = [w for w in self._running if w is not None]
        for w in running:
            try:
                w.control.put(Stop())
            except (ValueError, OSError):
                pass
        deadline = time.monotonic() + grace
        for w in running:
            w.proc.join(max(0.0, deadline - time.monotonic()))
        for w in running:
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(1.0)
            w.let_go()
        # Each pump ends at the None queued behind its worker's last report: once they
        # have, everything is delivered and the queues can close.
        deadline = time.monotonic() + PUMPS_WAIT
        for w in running:
            w.pump.join(max(0.0, deadline - time.monotonic()))
        for w in running:
            w.close()
        self._running = [None] * self.size
