"""The request window (policy/pipeline.py): slow start, rate x delay, reqq, with a clock input.

``_Link`` is a small simulation of one peer: our requests reach it half a round trip later,
it serves them in order at its upload cap, and each block takes another half round trip
back.  The window is driven as the worker drives it: top up to ``depth``, report arrivals,
and ``update`` with the measured rate every 0.2 s.
"""

from __future__ import annotations

from collections import deque

import pytest

from mptorrent.policy.pipeline import (
    BATCH_SECONDS,
    BLOCK,
    CEILING,
    FLOOR,
    HEADROOM,
    INITIAL,
    NEAR_HEADROOM,
    RequestWindow,
    endgame_horizon,
    near_headroom,
)

MiB = 1 << 20
STEP = 0.005


class _Link:
    def __init__(self, rate: float, rtt: float) -> None:
        self.rate = rate
        self.rtt = rtt
        self.to_peer: deque[float] = deque()  # arrival time at the peer, per request
        self.to_us: deque[float] = deque()  # arrival time here, per block
        self.free_at = 0.0  # the peer's uploader is busy until then
        self.outstanding = 0

    def request(self, now: float, n: int) -> None:
        self.to_peer.extend([now + self.rtt / 2] * n)
        self.outstanding += n

    def step(self, now: float) -> int:
        """Blocks that arrive by ``now``."""
        while self.to_peer and self.to_peer[0] <= now:
            start = max(self.to_peer.popleft(), self.free_at)
            self.free_at = start + BLOCK / self.rate
            self.to_us.append(self.free_at + self.rtt / 2)
        n = 0
        while self.to_us and self.to_us[0] <= now:
            self.to_us.popleft()
            n += 1
        self.outstanding -= n
        return n


def _run(
    link: _Link, w: RequestWindow, seconds: float, step: float = STEP
) -> list[tuple[float, int]]:
    """Drive ``w`` over ``link``; (time, blocks received so far) every step."""
    now, got, out = 0.0, 0, []
    arrivals: deque[tuple[float, int]] = deque()
    next_update = 0.2
    while now < seconds:
        spare = w.depth - link.outstanding
        if spare > 0 and (link.outstanding == 0 or spare >= w.batch):
            link.request(now, spare)
            w.sent(now, spare * BLOCK)
        n = link.step(now)
        if n:
            w.received(now, n * BLOCK)
            got += n
            arrivals.append((now, n))
        if now >= next_update:
            next_update += 0.2
            while arrivals and arrivals[0][0] < now - 2.0:
                arrivals.popleft()
            w.update(sum(k for _, k in arrivals) * BLOCK / min(2.0, max(0.25, now)))
        out.append((now, got))
        now += step
    return out


def _rate_between(trace: list[tuple[float, int]], t0: float, t1: float) -> float:
    a = next(g for t, g in trace if t >= t0)
    b = next((g for t, g in trace if t >= t1), trace[-1][1])
    return (b - a) * BLOCK / (t1 - t0)


def test_distant_fast_peer_reaches_its_cap_within_a_few_round_trips() -> None:
    link = _Link(4 * MiB, 0.300)
    w = RequestWindow()
    trace = _run(link, w, 6.0)
    # Slow start: 32 -> 64 -> 128 requests, a round trip each; the cap from ~1.2 s on.
    assert _rate_between(trace, 1.5, 5.9) >= 0.97 * link.rate
    assert w.rtt is not None and 0.3 <= w.rtt < 0.33
    assert not w.slow_start  # it saw the queue at the cap and stopped doubling
    # What it keeps in flight: about rate x (1.5 RTT + headroom), not the ceiling.
    assert w.depth == pytest.approx(link.rate * (1.5 * 0.3 + HEADROOM) / BLOCK, rel=0.1)
    assert w.depth < CEILING
    assert w.batch == int(link.rate * BATCH_SECONDS / BLOCK)  # refilled every 50 ms


def test_a_rate_average_alone_would_still_be_ramping() -> None:
    """The same peer with the window held at its initial size: what slow start saves."""
    link = _Link(4 * MiB, 0.300)
    w = RequestWindow(ceiling=INITIAL)
    trace = _run(link, w, 3.0)
    assert _rate_between(trace, 1.5, 2.9) < 0.5 * link.rate


def test_near_fast_peer_reaches_its_byte_headroom_by_its_rate() -> None:
    link = _Link(400 * MiB, 0.0005)
    w = RequestWindow()
    _run(link, w, 0.05, step=0.0001)
    assert w.depth == INITIAL  # no slow start a millisecond away ...
    _run(_Link(400 * MiB, 0.0005), w, 1.2, step=0.001)
    # ... the rate rule takes it up, to NEAR_HEADROOM bytes (2 MiB), not a second of its
    # rate (the ceiling, 8 MiB of piece buffers per peer on loopback)
    assert w.depth == NEAR_HEADROOM // BLOCK < CEILING


def test_near_fast_peer_keeps_its_rate_with_the_byte_headroom() -> None:
    link = _Link(400 * MiB, 0.0005)
    w = RequestWindow()
    trace = _run(link, w, 1.0, step=0.0002)
    assert _rate_between(trace, 0.5, 0.99) >= 0.97 * link.rate
    assert w.rtt is not None
    assert w.depth <= (link.rate * 1.5 * w.rtt + NEAR_HEADROOM) // BLOCK + 1


def test_slow_peer_keeps_its_rate_x_delay_only() -> None:
    link = _Link(256 * 1024, 0.100)
    w = RequestWindow()
    trace = _run(link, w, 8.0)
    assert _rate_between(trace, 2.0, 7.9) >= 0.97 * link.rate
    # rate x (1.5 RTT + headroom): 18 requests, not a floor of 32 (2 s of this peer's
    # rate, asked of it at any moment: the tail, and what an endgame asks twice)
    assert w.rtt is not None and w.rtt == pytest.approx(0.1 + BLOCK / link.rate, abs=0.01)
    assert 18 <= w.depth <= 19  # rate x (1.1 to 1.2 s), with the rate measured


def test_reqq_caps_the_window() -> None:
    w = RequestWindow()
    w.limit(20)
    assert w.depth == 20 and w.ceiling == 20
    link = _Link(400 * MiB, 0.0005)
    _run(link, w, 0.3)
    assert w.depth == 20
    w.limit(5000)  # a larger reqq never raises our own ceiling
    assert w.ceiling == 20


def test_latency_sample_per_send_in_order() -> None:
    w = RequestWindow()
    w.sent(0.0, 4 * BLOCK)
    w.sent(0.1, 4 * BLOCK)
    w.received(0.3, BLOCK)  # the first send's first block: 0.3 s
    assert w.rtt == pytest.approx(0.3)
    w.received(0.5, 4 * BLOCK)  # completes the second send's first block: 0.4 s
    assert w.rtt == pytest.approx(0.3)
    assert w.depth == INITIAL * 2  # no queue seen: doubled once (not per sample)


def test_cancels_and_choke_keep_the_counts_aligned() -> None:
    w = RequestWindow()
    w.sent(0.0, 2 * BLOCK)
    w.settled(2 * BLOCK)  # both cancelled: nothing of them will come
    w.sent(1.0, BLOCK)
    w.received(1.2, BLOCK)
    assert w.rtt == pytest.approx(0.2)  # not 1.2: the cancelled bytes are not waited for
    w.sent(2.0, 3 * BLOCK)
    w.dropped()  # choked: they are gone
    w.sent(3.0, BLOCK)
    w.received(3.25, BLOCK)
    assert w.rtt == pytest.approx(0.2)
    assert w.latency == pytest.approx(0.25)


def test_queue_at_the_peer_ends_slow_start_and_update_shrinks() -> None:
    w = RequestWindow()
    w.sent(0.0, BLOCK)
    w.received(0.1, BLOCK)
    assert w.slow_start
    w.sent(1.0, BLOCK)
    w.received(2.0, BLOCK)  # a second to answer: it had a queue
    assert not w.slow_start
    w.depth = 400
    w.update(100 * 1024)  # 100 KiB/s: wants a few blocks; shrinks a quarter per update
    assert w.depth == 300
    for _ in range(20):
        w.update(100 * 1024)
    assert w.depth == int(100 * 1024 * (1.5 * 0.1 + HEADROOM) / BLOCK)  # rtt 0.1 s: 7


def test_the_floor_is_a_few_requests() -> None:
    w = RequestWindow()
    w.sent(0.0, BLOCK)
    w.received(0.05, BLOCK)
    w.sent(1.0, BLOCK)
    w.received(2.0, BLOCK)  # queued: slow start over
    for _ in range(30):
        w.update(1000.0)  # a trickle: a few requests still go out
    assert w.depth == FLOOR


def test_the_tail_shrinks_the_headroom_not_the_round_trips() -> None:
    """Nothing more to take: the headroom is at most the seconds the worker's remainder
    needs, so the endgame starts with ~1.5 round trips of each peer's rate asked, not a
    second more of it in the seeder's send buffer."""
    link = _Link(1 * MiB, 0.200)
    w = RequestWindow()
    _run(link, w, 4.0)
    steady = w.depth
    assert steady == pytest.approx(MiB * (1.5 * 0.2 + HEADROOM) / BLOCK, rel=0.1)
    assert w.rtt is not None
    for _ in range(20):
        w.update(MiB, left=0.1)
    assert w.depth == int(MiB * (1.5 * w.rtt + 0.1) / BLOCK)  # about 25 of 83
    w.update(MiB, left=None)
    assert w.depth == 2 * int(MiB * (1.5 * w.rtt + 0.1) / BLOCK)  # back up, doubling


def test_near_headroom_grows_with_the_workers_per_cpu() -> None:
    """A worker sharing its core with others reads its sockets less often: its near peers
    keep more queued (benchmarks/README.md: 2 MiB at -j 8 on two cores cost 0.6 s)."""
    assert near_headroom(1, 2) == near_headroom(2, 2) == NEAR_HEADROOM
    assert near_headroom(4, 2) == 2 * NEAR_HEADROOM
    assert near_headroom(8, 2) == near_headroom(64, 2) == CEILING * BLOCK  # the old window
    link = _Link(400 * MiB, 0.0005)
    w = RequestWindow(near_headroom=near_headroom(4, 2))
    _run(link, w, 1.2, step=0.001)
    assert w.rtt is not None
    assert (
        2 * NEAR_HEADROOM // BLOCK
        < w.depth
        <= (link.rate * 1.5 * w.rtt + 2 * NEAR_HEADROOM) // BLOCK + 1
    )


def test_the_tail_leaves_a_near_peer_its_byte_headroom() -> None:
    link = _Link(400 * MiB, 0.0005)
    w = RequestWindow()
    _run(link, w, 1.2, step=0.001)
    w.update(400 * MiB)
    before = w.depth
    for _ in range(5):
        w.update(400 * MiB, left=0.001)  # a queue dry for a moment on loopback
    assert w.depth == before


def test_cancelled_requests_take_room_until_they_could_have_come() -> None:
    """A cancelled request is probably in the peer's send buffer: its bytes count as still
    coming, draining at the peer's rate, so an idle peer is not asked for more duplicates
    (queued behind them anyway) before they are through."""
    w = RequestWindow()
    w.sent(0.0, BLOCK)
    w.received(0.1, BLOCK)
    w.update(16 * BLOCK)  # 16 blocks a second
    assert w.in_flight(1.0) == 0
    w.settled(8 * BLOCK)
    w.cancelled(1.0, 8 * BLOCK)
    assert w.in_flight(1.0) == 8
    assert w.in_flight(1.25) == 4  # a quarter of a second at 16 blocks/s
    w.cancelled(1.25, 2 * BLOCK)  # more on top of what is left
    assert w.in_flight(1.25) == 6
    assert w.in_flight(1.5) == 2
    assert w.in_flight(2.0) == 0  # all through: forgotten
    assert w.in_flight(5.0) == 0


def test_cancelled_requests_of_a_peer_without_a_rate_are_not_waited_for() -> None:
    w = RequestWindow()
    w.cancelled(0.0, 4 * BLOCK)
    assert w.in_flight(0.0) == 0  # no rate measured: no guess keeps the peer idle
    w.update(0.0)
    w.cancelled(1.0, 4 * BLOCK)
    assert w.in_flight(1.0) == 0


def test_a_choke_takes_the_cancelled_requests_with_it() -> None:
    """A choke without the fast extension drops every request, the cancelled ones in the
    peer's send buffer too: nothing of them is still coming."""
    w = RequestWindow()
    w.sent(0.0, BLOCK)
    w.received(0.1, BLOCK)
    w.update(16 * BLOCK)
    w.settled(8 * BLOCK)
    w.cancelled(1.0, 8 * BLOCK)
    assert w.in_flight(1.0) == 8
    w.dropped()
    assert w.in_flight(1.0) == 0


def test_the_endgame_horizon_counts_an_idle_peer_at_its_best_rate() -> None:
    """A slow peer holds 1 MiB at 20 KiB/s and a fast one idles (its two-second rate fell
    to 0): the blocks in hand are 1 MiB at 4 MiB/s, a quarter second, not 50 s, so the
    fast peer may copy them (DownloadPolicy.tail_left)."""
    slow = (20.0 * 1024, 20.0 * 1024, True)
    idle_fast = (0.0, 4.0 * MiB - 20.0 * 1024, False)
    assert endgame_horizon(MiB, [slow, idle_fast]) == pytest.approx(0.25)
    busy_fast = (2.0 * MiB, 4.0 * MiB, True)  # busy: its rate now, not its best
    assert endgame_horizon(MiB, [busy_fast]) == pytest.approx(0.5)
    assert endgame_horizon(None, [slow]) is None  # the work queue has not run dry
    assert endgame_horizon(MiB, [(0.0, 0.0, False)]) is None  # no rate known: no horizon
