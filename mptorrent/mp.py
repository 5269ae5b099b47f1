"""The multiprocessing context every process-starting module uses.

``MPTORRENT_START_METHOD`` (fork, spawn, forkserver) lets tests run the whole
client under each start method; Python 3.14 changed the POSIX default.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, TypeAlias, cast

if TYPE_CHECKING:
    from multiprocessing.context import (
        DefaultContext,
        ForkContext,
        ForkServerContext,
        SpawnContext,
    )

    # Unlike their base class BaseContext, each of these has .Process.
    Context: TypeAlias = DefaultContext | ForkContext | SpawnContext | ForkServerContext


def context() -> Context:
    # imported here: the CLI needs default_jobs() before it knows whether it starts processes
    import multiprocessing

    method = os.environ.get("MPTORRENT_START_METHOD") or None
    # typeshed gives get_context(str) as a bare BaseContext; on POSIX it is always one of the four
    return cast("Context", multiprocessing.get_context(method))


def default_jobs() -> int:
    return max(1, os.cpu_count() or 1)
