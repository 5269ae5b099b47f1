"""The multiprocessing context every process-starting module uses.

``MPTORRENT_START_METHOD`` (fork, spawn, forkserver) lets tests run the whole
client under each start method; Python 3.14 changed the POSIX default.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, TypeAlias, cast

if TYPE_CHECKING:
    import ctypes
    from collections.abc import Sequence
    from multiprocessing.context import (
        DefaultContext,
        ForkContext,
        ForkServerContext,
        SpawnContext,
    )

    # Unlike their base class BaseContext, each of these has .Process.
    Context: TypeAlias = DefaultContext | ForkContext | SpawnContext | ForkServerContext


def context(preload: Sequence[str] = ()) -> Context:
    """The start method's context.  ``preload``: the modules the processes this caller
    starts will run, for the fork server to import once (see ``_start_forkserver``)."""
    # imported here: the CLI needs default_jobs() before it knows whether it starts processes
    import multiprocessing

    method = os.environ.get("MPTORRENT_START_METHOD") or None
    # typeshed gives get_context(str) as a bare BaseContext; on POSIX it is always one of the four
    ctx = cast("Context", multiprocessing.get_context(method))
    if preload and ctx.get_start_method() == "forkserver":
        _start_forkserver(ctx, preload)
    return ctx


def _start_forkserver(ctx: Context, preload: Sequence[str]) -> None:
    """Under forkserver (Python 3.14's POSIX default) every process is forked from a server
    that a fresh interpreter runs.  Without a preload each worker imports its modules itself
    after that fork: some 30 ms of CPU and 6 MiB (~70 modules) each, in every worker.  With
    it the server imports them once, and it starts now, while the caller prepares, rather
    than on the first ``Process.start``.  A server already running keeps its preload."""
    from multiprocessing import forkserver

    cast("ForkServerContext", ctx).set_forkserver_preload(list(preload))
    forkserver.ensure_running()


def default_jobs() -> int:
    return max(1, os.cpu_count() or 1)


class RateCells:
    """One global rate limit's counters in shared memory: per worker, a *granted* total that
    only the coordinator (or seeder) writes and a *spent* total that only that worker
    writes (``policy.ratelimit.RateShare`` explains the share-out).  One writer per
    counter: no lock, so a worker killed at any moment wedges nobody.  Picklable to a
    starting worker process (a ``RawArray`` goes with the process's arguments)."""

    def __init__(self, ctx: Context, workers: int) -> None:
        import ctypes

        self.workers = workers
        # granted..., spent...
        self.raw: ctypes.Array[ctypes.c_int64] = ctx.RawArray(ctypes.c_int64, 2 * workers)

    def spent_all(self) -> list[int]:
        raw, n = self.raw, self.workers
        return [raw[n + i] for i in range(n)]

    def set_granted(self, granted: list[int]) -> None:
        raw = self.raw
        for i, g in enumerate(granted):
            raw[i] = g

    def balance(self, wid: int) -> int:
        """What worker ``wid`` may still spend (negative: it overdrew)."""
        raw = self.raw
        return int(raw[wid] - raw[self.workers + wid])

    def spend(self, wid: int, n: int) -> None:
        self.raw[self.workers + wid] += n
