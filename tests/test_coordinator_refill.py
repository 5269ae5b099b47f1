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

import pytest

from mptorrent.engine.coordinator import Coordinator, FetchOptions
from mptorrent.messages import WorkerStats
from mptorrent.policy.picker import Picker
from mptorrent.worker.process import STATS_EVERY
from tests.test_coordinator import make_case
from tests.test_pool import Tiny, pool_of

KiB = 1024
MiB = 1024 * KiB


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


def test_an_idle_worker_far_faster_than_another_fetches_its_started_pieces(
    tmp_path: Path,
) -> None:
    """The uneven swarm's tail (``Coordinator._hurry``): worker 0's only peer is slow and it
    holds every piece left, all taken from its queue (started); idle worker 1 gets them too,
    as second copies, but only if its best rate is HURRY_RATIO times worker 0's."""
    case = make_case(tmp_path, 256 * KiB, 16 * KiB)  # 16 pieces: more than the last few
    coord = Coordinator(case.meta, tmp_path / "out", FetchOptions(jobs=2))
    n = case.meta.num_pieces
    coord.picker = Picker(n, bytes(n))
    with pool_of(2) as (pool, _inbox, _shared):
        pool.start(0, Tiny(0, "idle"))
        pool.start(1, Tiny(1, "idle"))
        coord.pool = pool  # type: ignore[assignment]
        coord.picker.peer_bitfield("slow", b"\x01" * n, worker=0)
        coord.picker.peer_bitfield("fast", b"\x01" * n, worker=1)
        assert len(coord.picker.pick_for(0, n)) == n  # leased to 0 and taken: none queued
        coord.slots[0].rate = 64.0 * KiB  # 4 s for its 256 KiB
        coord.slots[1].best = 64.0 * KiB * 3  # not far faster: nothing
        coord._refill(time.monotonic())
        assert coord.slots[1].queued == 0
        assert all(owners == {0} for owners in coord.picker.owner.values())

        coord.slots[1].best = 64.0 * KiB * 100  # its best rate: idle, its own rate falls
        coord.slots[1].last_hurry = 0.0
        coord._refill(time.monotonic())
        assert coord.slots[1].queued > 0
        copied = [i for i, owners in coord.picker.owner.items() if owners == {0, 1}]
        assert len(copied) == coord.slots[1].queued
        assert coord.picker.remaining == n  # nothing lost or counted twice


def test_a_workers_best_rate_stays_when_it_idles(tmp_path: Path) -> None:
    """What an idle worker's peers can send is its best smoothed rate: its own rate falls to
    nothing while it waits for work, which would keep it from hurrying anyone."""
    coord = _coordinator(tmp_path)
    slot = coord.slots[1]
    for got in (4 * MiB, 4 * MiB, 0, 0, 0, 0):  # bytes per STATS_EVERY
        coord._on_worker(slot, WorkerStats(1, got, 0, 1))
    assert slot.rate < slot.best / 4
    assert slot.best == pytest.approx(0.51 * 4 * MiB / STATS_EVERY)
