"""engine/pool.py: real worker processes running tiny worker functions.

The workers here speak the real queue contract (lists of piece indices in, lists of
``WorkerReport`` out, ``Control`` records) but do nothing else, so each test shows one
thing the pool does: deliver, restart, cap restarts, survive a wedged queue, stop.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import pytest

from mptorrent.engine.pool import LAST_WORDS_WAIT, Batch, Exit, WorkerPool
from mptorrent.errors import DownloadError
from mptorrent.messages import (
    AddPeers,
    ControlQueue,
    PeerAddr,
    ReportQueue,
    Stop,
    Took,
    WorkerFailed,
    WorkerReport,
    WorkQueue,
)
from mptorrent.mp import context

Mode = Literal["echo", "flood", "crash", "fail", "idle"]
BIG = tuple(range(300_000))  # a report of about 1.5 MB: far more than a pipe holds


@dataclass(frozen=True)
class Tiny:
    """What a tiny worker does: see :func:`tiny`."""

    wid: int
    mode: Mode = "echo"


Shared = ctypes.Array[ctypes.c_ubyte]  # one byte per worker: its incarnations so far


def tiny(
    cfg: Tiny, work: WorkQueue, reports: ReportQueue, control: ControlQueue, shared: Shared
) -> None:
    """echo: acknowledge each batch taken (Took), each AddPeers with an empty Took, and
    end on Stop with a last report; flood: write huge reports for ever; crash: exit at
    once with status 3; fail: report a WorkerFailed, then exit 1; idle: read nothing."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    shared[cfg.wid] += 1
    try:
        if cfg.mode == "crash":
            os._exit(3)
        if cfg.mode == "fail":
            reports.put([WorkerFailed(cfg.wid, "tiny failure", "detail")])
            raise SystemExit(1)
        if cfg.mode == "idle":
            while True:
                time.sleep(1)
        if cfg.mode == "flood":
            while True:
                reports.put([Took(cfg.wid, BIG)])
                time.sleep(0.005)  # the feeder thread pickles; do not outrun it
        while True:
            try:
                msg = control.get(timeout=0.01)
            except queue.Empty:
                msg = None
            match msg:
                case Stop():
                    reports.put([Took(cfg.wid, (-1,))])  # last words
                    return
                case AddPeers():
                    reports.put([Took(cfg.wid, ())])
            try:
                batch = work.get_nowait()
            except queue.Empty:
                continue
            reports.put([Took(cfg.wid, tuple(batch))])
    finally:
        # let the feeder thread deliver what we put before we exit, as the real worker does
        reports.close()
        reports.join_thread()


class Inbox:
    """The pool's ``deliver``: keeps every batch; ``hold`` stalls one worker's pump."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.cond = threading.Condition()
        self.held: dict[int, threading.Event] = {}

    def __call__(self, batch: Batch) -> None:
        gate = self.held.get(batch.worker)
        with self.cond:
            self.batches.append(batch)
            self.cond.notify_all()
        if gate is not None:
            gate.wait()

    def reports(self, wid: int, gen: int | None = None) -> list[WorkerReport]:
        with self.cond:
            return [
                r
                for b in self.batches
                if b.worker == wid and (gen is None or b.gen == gen)
                for r in b.reports
            ]

    def wait_for(self, pred: Callable[[], bool], timeout: float = 10.0) -> None:
        with self.cond:
            assert self.cond.wait_for(pred, timeout), self.batches[-5:]

    def wait_took(self, wid: int, indices: tuple[int, ...], gen: int | None = None) -> None:
        self.wait_for(lambda: Took(wid, indices) in self.reports(wid, gen))


@contextmanager
def pool_of(
    size: int, *, max_restarts: int = 5, method: str | None = None
) -> Iterator[tuple[WorkerPool[Tiny, Shared], Inbox, Shared]]:
    ctx = context() if method is None else __import__("multiprocessing").get_context(method)
    shared = ctx.RawArray(ctypes.c_ubyte, size)
    inbox = Inbox()
    pool: WorkerPool[Tiny, Shared] = WorkerPool(
        ctx, size, tiny, shared, inbox, name="test-pool", max_restarts=max_restarts
    )
    try:
        yield pool, inbox, shared
    finally:
        for gate in inbox.held.values():
            gate.set()
        pool.stop(grace=1.0)


def wait_exits(pool: WorkerPool[Tiny, Shared], n: int, timeout: float = 10.0) -> list[Exit]:
    ended: list[Exit] = []
    deadline = time.monotonic() + timeout
    while len(ended) < n:
        assert time.monotonic() < deadline, ended
        ended += pool.exits()
        time.sleep(0.01)
    return ended


def test_work_and_control_reach_each_worker_and_reports_come_back_tagged() -> None:
    with pool_of(2) as (pool, inbox, _):
        gens = [pool.start(w, Tiny(w)) for w in range(2)]
        assert gens == [1, 1] and pool.alive() == 2 and len(pool.pids()) == 2
        assert pool.put_work(0, [1, 2]) and pool.put_work(1, [3])
        inbox.wait_took(0, (1, 2), gen=1)
        inbox.wait_took(1, (3,), gen=1)
        assert pool.broadcast(AddPeers((PeerAddr("127.0.0.1", 1),))) == 2
        inbox.wait_for(lambda: all(Took(w, ()) in inbox.reports(w) for w in range(2)))
        assert pool.exits() == []


def test_a_killed_worker_is_reported_and_restarted_alone() -> None:
    with pool_of(2) as (pool, inbox, shared):
        for w in range(2):
            pool.start(w, Tiny(w))
        while bytes(shared) != b"\x01\x01":
            time.sleep(0.01)
        other = pool.pids()[1]
        os.kill(pool.pids()[0], signal.SIGKILL)
        [ex] = wait_exits(pool, 1)
        assert ex == Exit(0, 1, -signal.SIGKILL)
        assert ex.describe() == "worker 0 died (signal 9)"
        assert not pool.running(0) and not pool.put_work(0, [5])
        assert pool.restart(0, Tiny(0), ex.describe()) == 2
        assert pool.restarts == 1
        pool.put_work(0, [5])
        inbox.wait_took(0, (5,), gen=2)
        assert pool.pids()[1] == other and bytes(shared) == b"\x02\x01"  # 1 was left alone


def test_exit_reasons_name_the_signal_or_the_status() -> None:
    assert Exit(1, 1, -signal.SIGSEGV).describe() == "worker 1 crashed (signal 11)"
    assert Exit(1, 1, -signal.SIGBUS).signum == signal.SIGBUS
    assert Exit(2, 3, 0).describe() == "worker 2 exited unexpectedly (status 0)"
    assert Exit(2, 3, 0).signum is None


def test_restarts_are_capped() -> None:
    with pool_of(1, max_restarts=3) as (pool, _, shared):
        pool.start(0, Tiny(0, "crash"))
        for k in range(3):
            [ex] = wait_exits(pool, 1)
            assert ex == Exit(0, k + 1, 3)
            pool.restart(0, Tiny(0, "crash"), ex.describe())
        [ex] = wait_exits(pool, 1)
        with pytest.raises(DownloadError) as err:
            pool.restart(0, Tiny(0, "crash"), ex.describe())
        assert str(err.value) == (
            "worker 0 exited unexpectedly (status 3); giving up after 3 worker restarts"
        )
        assert not pool.running(0) and shared[0] == 4


def test_last_words_are_delivered_before_the_exit_is_reported() -> None:
    for _ in range(5):  # whichever comes first, the exit or the pump's read
        with pool_of(1) as (pool, inbox, _):
            pool.start(0, Tiny(0, "fail"))
            while not pool.exits():
                time.sleep(0.001)
            assert inbox.reports(0) == [WorkerFailed(0, "tiny failure", "detail")]


def test_a_worker_killed_mid_report_cannot_wedge_the_others() -> None:
    """Worker 0 dies in the middle of writing a report (its pump is held, so the pipe is
    full): worker 1's queues keep working, the exit is reported within the last-words
    wait, and worker 0 restarts on new queues."""
    with pool_of(2) as (pool, inbox, _):
        inbox.held[0] = threading.Event()
        pool.start(0, Tiny(0, "flood"))
        pool.start(1, Tiny(1))
        inbox.wait_for(lambda: bool(inbox.reports(0)))
        time.sleep(0.3)  # the flood fills the pipe and blocks inside the next message
        os.kill(pool.pids()[0], signal.SIGKILL)
        while pool.alive() == 2:
            time.sleep(0.01)
        inbox.held[0].set()  # the pump now reads half a message and waits for the rest
        pool.put_work(1, [1])
        inbox.wait_took(1, (1,))
        t0 = time.monotonic()
        [ex] = wait_exits(pool, 1)
        # the pump was wedged on the half message: the pool waited for it, and no longer
        assert LAST_WORDS_WAIT <= time.monotonic() - t0 < LAST_WORDS_WAIT + 1.0
        assert ex.worker == 0 and ex.code == -signal.SIGKILL
        pool.restart(0, Tiny(0), ex.describe())
        for w, batch in ((0, [7]), (1, [8])):
            pool.put_work(w, batch)
            inbox.wait_took(w, tuple(batch))
        t0 = time.monotonic()
        pool.stop()
        assert time.monotonic() - t0 < 2.0
        assert Took(0, (-1,)) in inbox.reports(0, gen=2)
        assert Took(1, (-1,)) in inbox.reports(1)


def test_take_back_returns_work_the_worker_has_not_taken() -> None:
    with pool_of(2) as (pool, inbox, _):
        pool.start(0, Tiny(0, "idle"))
        pool.start(1, Tiny(1))
        assert pool.put_work(0, [1, 2]) and pool.put_work(1, [3])
        inbox.wait_took(1, (3,))
        deadline = time.monotonic() + 5
        while (back := pool.take_back(0)) is None:  # once the feeder thread has sent it
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert back == [1, 2]
        assert pool.take_back(0) is None and pool.take_back(1) is None
        os.kill(pool.pids()[0], signal.SIGKILL)
        wait_exits(pool, 1)
        assert pool.take_back(0) is None and not pool.put_work(0, [1])  # nobody there


def test_stop_delivers_last_words_and_kills_workers_that_do_not_listen() -> None:
    with pool_of(3) as (pool, inbox, shared):
        for w in range(3):
            pool.start(w, Tiny(w, "idle" if w == 2 else "echo"))
        while shared[2] == 0:  # the idle one is running
            time.sleep(0.01)
        procs = pool.pids()
        t0 = time.monotonic()
        pool.stop(grace=0.5)
        elapsed = time.monotonic() - t0
        assert 0.5 <= elapsed < 2.0
        for w in range(2):
            assert inbox.reports(w)[-1] == Took(w, (-1,))  # each one's last words
        assert inbox.reports(2) == []
        assert pool.alive() == 0 and pool.pids() == [] and not pool.running(2)
        for pid in procs:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # reaped, not left a zombie
        pool.stop()  # twice is harmless


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_restart_under_each_start_method(method: str) -> None:
    with pool_of(1, method=method) as (pool, inbox, _):
        pool.start(0, Tiny(0))
        os.kill(pool.pids()[0], signal.SIGKILL)
        [ex] = wait_exits(pool, 1, timeout=20)
        pool.restart(0, Tiny(0), ex.describe())
        pool.put_work(0, [9])
        inbox.wait_took(0, (9,), gen=2)
