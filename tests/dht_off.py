"""``--no-dht`` for every mptorrent command line a test builds (issue 15).

Tests must never reach the public DHT: every ``fetch``, ``seed`` and ``info`` a test runs
says ``--no-dht`` unless it chooses its DHT itself (``--dht-bootstrap`` with loopback
nodes, or ``--dht``).  The root conftest's environment is the net under this.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

DHT_COMMANDS = frozenset({"fetch", "seed", "info"})
CHOSEN = frozenset({"--no-dht", "--dht", "--dht-bootstrap"})


def no_dht(args: Sequence[T]) -> list[T]:
    """``args`` (a command and its arguments) with ``--no-dht`` after a DHT command."""
    out = list(args)
    words = [str(a) for a in out]
    if not words or words[0] not in DHT_COMMANDS or CHOSEN & set(words):
        return out
    return [out[0], "--no-dht", *out[1:]]  # type: ignore[list-item]
