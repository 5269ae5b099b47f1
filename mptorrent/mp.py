"""The multiprocessing context every process-starting module uses.

``MPTORRENT_START_METHOD`` (fork, spawn, forkserver) lets tests run the whole
client under each start method; Python 3.14 changed the POSIX default.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext


def context() -> BaseContext:
    # imported here: the CLI needs default_jobs() before it knows whether it starts processes
    import multiprocessing

    method = os.environ.get("MPTORRENT_START_METHOD") or None
    return multiprocessing.get_context(method)


def default_jobs() -> int:
    return max(1, os.cpu_count() or 1)
