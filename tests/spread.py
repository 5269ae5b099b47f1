"""Checks that a fetch really ran in parallel, and the CLI in a child that reports its result.

Parallel workers are the product: a fetch with two or more workers and two or more peers must
have pieces verified by at least two workers.  ``assert_spread`` says so about a
``FetchResult``'s ``pieces_per_worker`` (or the demo's printed list).

``mptorrent fetch`` prints no per-worker figures, so CLI tests run it through
``python -c CLI_WITH_RESULT`` with ``$MPTORRENT_TEST_RESULT`` naming a file: the child runs the
real CLI and writes the ``FetchResult`` of its fetch there as JSON (``read_result``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

RESULT_ENV = "MPTORRENT_TEST_RESULT"
# Below this a loopback fetch can be over (~0.1 s for 4 MiB) before a second worker process has
# connected, so only fetches at least this big, or whose peers each hold pieces the others
# lack, are expected to spread.
SPREAD_MIN_SIZE = 16 * 1024 * 1024

# The real CLI; coordinator.fetch is wrapped to record its result.  SIGINT is delivered only if
# the interpreter starts with it unignored; a test run from a shell's background job inherits
# SIG_IGN, so the child installs Python's handler itself.
CLI_WITH_RESULT = """\
import json, os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
import mptorrent.engine.coordinator as coordinator
_fetch = coordinator.fetch
def fetch(*args, **kwargs):
    res = _fetch(*args, **kwargs)
    path = os.environ.get("MPTORRENT_TEST_RESULT")
    if path:
        per_worker = {str(w): n for w, n in res.pieces_per_worker.items()}
        per_peer = {str(a): n for a, n in res.pieces_per_peer.items()}
        with open(path, "w") as fh:
            json.dump({"pieces_per_worker": per_worker, "pieces_per_peer": per_peer}, fh)
    return res
coordinator.fetch = fetch
from mptorrent.cli.main import main
sys.argv[0] = "mptorrent"
main()
"""
assert RESULT_ENV in CLI_WITH_RESULT


@dataclass(frozen=True)
class ChildResult:
    """What the child wrote: pieces per worker id, and per peer ("host:port")."""

    pieces_per_worker: dict[int, int]
    pieces_per_peer: dict[str, int]


def read_result(path: Path) -> ChildResult:
    assert path.exists(), f"the fetch wrote no result to {path}: did the CLI stop calling fetch?"
    raw = json.loads(path.read_text())
    return ChildResult(
        {int(w): int(n) for w, n in raw["pieces_per_worker"].items()},
        {str(a): int(n) for a, n in raw["pieces_per_peer"].items()},
    )


def assert_spread(pieces_per_worker: Mapping[int, int], jobs: int, peers: int) -> None:
    """With ``jobs`` >= 2 workers and ``peers`` >= 2 peers, at least two workers verified
    pieces; with fewer of either there is nothing to spread."""
    assert set(pieces_per_worker) <= set(range(jobs)), pieces_per_worker
    if jobs >= 2 and peers >= 2:
        busy = [w for w, n in pieces_per_worker.items() if n > 0]
        assert len(busy) >= 2, (
            f"only worker(s) {busy} verified pieces with {jobs} workers and {peers} peers: "
            f"{dict(pieces_per_worker)}"
        )
