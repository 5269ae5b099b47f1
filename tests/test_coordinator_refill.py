"""The coordinator's refill (engine/coordinator.py ``_refill``) with a real pool of tiny workers.

An idle worker takes back the batches other workers have not read yet, so that pieces do not
wait on a worker whose peers are slow; but only once it knows a peer: a worker that has heard
no bitfield can be handed nothing, and taking back a batch put a moment before only delays it
(at start-up, with one peer at -j 2, the first request waited 0.1-0.2 s for it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from mptorrent.engine.coordinator import Coordinator, FetchOptions
from mptorrent.policy.picker import Picker
from tests.test_coordinator import make_case
from tests.test_pool import Tiny, pool_of

KiB = 1024


def _coordinator(tmp_path: Path) -> Coordinator:
    case = make_case(tmp_path, 64 * KiB, 16 * KiB)  # 4 pieces: one batch leases them all
    coord = Coordinator(case.meta, tmp_path / "out", FetchOptions(jobs=2))
    n = case.meta.num_pieces
    coord.picker = Picker(n, bytes(n))
    coord.first_ahead = coord.ahead = n
    return coord


def _counting(
    calls: list[int], take_back: Callable[[int], list[int] | None]
) -> Callable[..., object]:
    def counted(wid: int) -> list[int] | None:
        calls.append(wid)
        return take_back(wid)

    return counted


def test_a_worker_that_knows_no_peer_leaves_the_others_work_queued(tmp_path: Path) -> None:
    coord = _coordinator(tmp_path)
    n = coord.meta.num_pieces
    with pool_of(2) as (pool, _inbox, _shared):
        pool.start(0, Tiny(0, "idle"))  # reads nothing: its batch stays in its queue
        pool.start(1, Tiny(1, "idle"))
        coord.pool = pool  # type: ignore[assignment]
        calls: list[int] = []
        pool.take_back = _counting(calls, pool.take_back)  # type: ignore[method-assign]
        coord.picker.peer_bitfield("seeder", b"\x01" * n, worker=0)
        for _ in range(20):  # worker 1 stays idle, and knows nobody
            coord._refill(time.monotonic())
            time.sleep(0.005)
        assert calls == []
        assert coord.slots[0].queued == n and coord.slots[1].queued == 0

        # once worker 1 hears of a peer, it takes worker 0's unread batch back
        coord.picker.peer_bitfield("other", b"\x01" * n, worker=1)
        deadline = time.monotonic() + 5
        while coord.slots[1].queued == 0:  # the batch is in worker 0's pipe once fed
            assert time.monotonic() < deadline
            coord._refill(time.monotonic())
            time.sleep(0.01)
        assert calls and coord.slots[1].queued > 0
