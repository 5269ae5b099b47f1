"""How many block requests to keep in flight with one peer: bandwidth x delay, measured.

Sans-IO: the caller says when it sent requests and when payload arrived (with the time),
and once in a while the peer's measured rate; :class:`RequestWindow` answers with
:attr:`~RequestWindow.depth`, the number of requests worth keeping outstanding.

- **Round trip, measured.** Requests are served in order (BEP 3 peers answer a request
  queue first in, first out), so the request that made the byte count reach ``n`` is
  answered when ``n`` payload bytes have arrived.  Each send is marked with the byte count
  its first request completes and the time; when that count arrives the elapsed time is one
  request-to-block latency sample.  The smallest sample so far is the round trip (a larger
  one also holds the time our request waited in the peer's queue behind earlier ones; no
  sample is ever smaller than the round trip, and once our requests keep a queue at the
  peer no later one shows it again, so a sliding minimum would forget it).
- **Slow start.** A new peer starts at ``initial`` requests.  Each sample that shows no
  queue at the peer (latency near the round trip) while requests sent after the last
  increase come back means the peer could send more than we ask: the window doubles, so a
  distant fast peer's cap is reached in a few round trips instead of the seconds a rate
  average takes to catch up.  The first sample that shows a queue ends slow start.  A
  near peer (round trip under ``NEAR_RTT``) gets none: its bandwidth-delay product is a
  few blocks, and the rate rule below takes its window up as fast as the rate grows, so
  a short fast download holds no deeper queues (and no more piece buffers) than it needs.
- **Steady state.** Every :meth:`update` sets the window to the measured rate x (1.5 round
  trips + ``HEADROOM`` seconds): enough to keep the peer busy through its own bursts (a
  rate-capped libtorrent seeder asks its limiter for a whole send buffer of quota, up to
  3 MiB, and then sends it at once: 0.75 s of a 4 MiB/s cap).  When the window itself
  limits the rate, that target exceeds the window, so it keeps growing; a window the peer
  does not need shrinks by a quarter per update at most.  The floor is ``FLOOR`` requests,
  not a fixed 32: a slow peer's window is its rate x delay like any other's (32 requests
  are 2 s of a 256 KiB/s seeder, all of it in the seeder's send buffer, where a cancel
  no longer reaches it: the tail and the blocks sent twice in the endgame).
- **Near peers: headroom in bytes.**  A peer under ``NEAR_RTT`` is refilled within a few
  milliseconds, so its headroom is at most ``NEAR_HEADROOM`` bytes, not a second of its
  rate: a loopback or LAN peer sending 250 MiB/s would otherwise keep 500 requests (8 MiB)
  in flight, and a piece buffer in hand for each of their pieces.  :func:`near_headroom`
  scales it by the workers per CPU: a worker that shares its core with others is off the
  CPU longer between reads, and its near peers' pipelines must not drain meanwhile.
- **The tail.** Once the worker has nothing more to take, the headroom is at most the time
  its remaining blocks need at the rate of all its peers (:meth:`update`'s ``left``): in
  the last second every window shrinks towards 1.5 round trips of its peer's rate, which
  still keeps the peer sending, so the endgame starts with a few round trips of data
  asked, not a second of every peer's rate (in a seeder's send buffer, where a cancel no
  longer reaches it: each duplicate asked of another peer is then sent twice).
- **Top-ups.** :attr:`~RequestWindow.batch` is the fewest free slots worth a send while
  requests are outstanding: ``BATCH_SECONDS`` of the peer's rate, at most half the window.
  A fast near peer gets few, full sends (half its window, as before); a distant one gets
  its window refilled every few tens of milliseconds, so it never drains to half.
- **Cancelled, still coming.**  A request cancelled in the endgame (its block came from
  another peer) is usually in the peer's send buffer already (a libtorrent seeder reads
  about 1.5 s of its rate ahead), so the peer sends it anyway, before anything asked
  after it.  :meth:`~RequestWindow.cancelled` keeps those bytes in the window until they
  have had time to arrive at the peer's rate (:meth:`~RequestWindow.in_flight`): an idle
  peer whose duplicates were cancelled is not asked for new ones (more blocks sent twice,
  queued behind the cancelled ones, which arrive no sooner) until what it still sends
  would take less than its window.
- **The peer's limit.** A ``reqq`` from its BEP 10 handshake caps the window (:meth:`limit`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Final

BLOCK: Final = 16384
INITIAL: Final = 32  # requests in flight to a new peer (libtorrent and Transmission floor)
FLOOR: Final = 4  # requests kept in flight however slow the peer (a top-up's worth)
CEILING: Final = 500  # libtorrent's max_out_request_queue
HEADROOM: Final = 1.0  # seconds of data kept queued at the peer beyond 1.5 round trips
NEAR_HEADROOM: Final = 2 << 20  # bytes of it for a peer under NEAR_RTT, per worker a CPU runs
BATCH_SECONDS: Final = 0.05  # top up once this much of the peer's data has free slots
MIN_BATCH: Final = 4
QUEUE_FACTOR: Final = 1.25  # a sample beyond this x the round trip ...
QUEUE_SLACK: Final = 0.001  # ... plus this many seconds means our requests queued at the peer
NEAR_RTT: Final = 0.005  # a round trip under this: no slow start, the rate rule suffices
MAX_MARKS: Final = 64


class RequestWindow:
    """One peer's request window: see the module docstring.  Times are seconds."""

    __slots__ = ("_asked", "_got", "_grow_from", "_junk_at", "_marks", "_rate", "batch",
                 "ceiling", "depth", "floor", "junk", "latency", "near_headroom", "rtt",
                 "slow_start")  # fmt: skip

    def __init__(
        self, *, initial: int = INITIAL, floor: int = FLOOR, ceiling: int = CEILING,
        near_headroom: int = NEAR_HEADROOM,
    ) -> None:  # fmt: skip
        self.floor = floor
        self.near_headroom = near_headroom
        self.ceiling = ceiling
        self.depth = max(1, min(initial, ceiling))
        self.batch = self.depth // 2  # until the rate is known
        self.slow_start = True
        self.rtt: float | None = None  # the smallest latency sample
        self.latency: float | None = None  # the latest one
        self._asked = 0  # payload bytes requested so far
        self._got = 0  # payload bytes received or given up on so far
        self._marks: deque[tuple[int, float]] = deque()  # (byte count, time sent)
        self._grow_from = 0  # growth is judged on requests marked at or after this count
        self.junk = 0.0  # bytes cancelled that the peer probably sends anyway, as of _junk_at
        self._junk_at = 0.0
        self._rate = 0.0  # the rate of the last update (bytes/s)

    def sent(self, now: float, nbytes: int) -> None:
        """Requests for ``nbytes`` of payload went out at ``now``."""
        if len(self._marks) < MAX_MARKS:
            self._marks.append((self._asked + 1, now))
        self._asked += nbytes

    def received(self, now: float, nbytes: int) -> None:
        """``nbytes`` of requested payload arrived at ``now``."""
        self._got += nbytes
        marks = self._marks
        if not marks or marks[0][0] > self._got:
            return
        while marks and marks[0][0] <= self._got:
            mark, sent_at = marks.popleft()
        self._sample(now - sent_at, mark)

    def settled(self, nbytes: int) -> None:
        """Requests for ``nbytes`` will not be answered (cancelled or rejected): later blocks
        complete the counts they would have."""
        self._got += nbytes
        marks = self._marks
        while marks and marks[0][0] <= self._got:
            marks.popleft()

    def cancelled(self, now: float, nbytes: int) -> None:
        """Requests for ``nbytes`` were cancelled at ``now`` (after :meth:`settled`): they
        are probably in the peer's send buffer, and arrive at its rate anyway."""
        self.junk = self._still_coming(now) + nbytes
        self._junk_at = now

    def _still_coming(self, now: float) -> float:
        if self.junk <= 0:
            return 0.0
        return max(0.0, self.junk - self._rate * (now - self._junk_at))

    def in_flight(self, now: float) -> int:
        """Cancelled requests, in blocks, the peer has probably not finished sending: they
        take room in the window as outstanding ones do; none while the rate is unknown
        (a peer that sends nothing must not be kept idle by a guess)."""
        if self.junk <= 0:
            return 0
        if self._rate <= 0:
            self.junk = 0.0
            return 0
        left = self._still_coming(now)
        if left <= 0:
            self.junk = 0.0
        return int(left // BLOCK)

    def dropped(self) -> None:
        """Every outstanding request is gone (a choke without the fast extension)."""
        self._got = self._asked
        self._marks.clear()
        self.junk = 0.0  # the cancelled ones went with the choke too

    def limit(self, reqq: int) -> None:
        """The peer takes at most ``reqq`` requests at once (BEP 10 handshake)."""
        self.ceiling = max(1, min(self.ceiling, reqq))
        self.floor = min(self.floor, self.ceiling)
        self.depth = min(self.depth, self.ceiling)
        self.batch = min(self.batch, self.depth // 2)

    def _sample(self, latency: float, mark: int) -> None:
        self.latency = latency
        rtt = self.rtt = latency if self.rtt is None else min(self.rtt, latency)
        queued = latency > rtt * QUEUE_FACTOR + QUEUE_SLACK
        if queued:
            self.slow_start = False
        elif self.slow_start and mark >= self._grow_from and rtt >= NEAR_RTT:
            self.depth = min(self.ceiling, self.depth * 2)
            self.batch = self.depth // 2
            self._grow_from = self._asked + 1  # judge the next doubling on what follows

    def update(self, rate: float, left: float | None = None) -> None:
        """The peer's measured rate (bytes/s): size the window to rate x delay.  ``left``:
        the seconds the worker's remaining blocks need at all its peers' rate, once it has
        nothing more to take (None before): a distant peer's headroom shrinks to that (a near
        one's is a few MiB anyway, and a worker's queue runs dry for moments on loopback)."""
        self._rate = rate
        if self.rtt is None:
            return
        self.batch = max(MIN_BATCH, min(self.depth // 2, int(rate * BATCH_SECONDS / BLOCK)))
        rtt = max(0.0, self.rtt)
        if rtt < NEAR_RTT:  # no send buffer of a rate limiter to fill: bytes, not seconds
            headroom = min(rate * HEADROOM, self.near_headroom)
        else:
            headroom = rate * (HEADROOM if left is None else min(HEADROOM, left))
        want = int((rate * 1.5 * rtt + headroom) / BLOCK)
        depth = self.depth
        if self.slow_start:
            depth = max(depth, want)
        else:
            depth = max(want, depth * 3 // 4)
            depth = min(depth, self.depth * 2)
        self.depth = max(self.floor, min(self.ceiling, depth))
        self.batch = min(self.batch, self.depth // 2)


def near_headroom(workers: int, cpus: int) -> int:
    """The byte headroom of a near peer's window for one of ``workers`` worker processes on
    ``cpus`` CPUs: ``NEAR_HEADROOM`` per worker a CPU has to run (2 MiB at -j 2 on two
    cores, 8 MiB at -j 8: without it a loopback fetch at -j 8 took 0.6 s longer)."""
    share = max(1.0, workers / max(1, cpus))
    return min(CEILING * BLOCK, int(NEAR_HEADROOM * share))


def endgame_horizon(
    left_bytes: int | None, peers: Iterable[tuple[float, float, bool]]
) -> float | None:
    """Seconds the blocks in a worker's hand need (``DownloadPolicy.tail_left``): ``left_bytes``
    (None: the work queue has not run dry) at the peers' rate, each ``(rate, best, busy)``
    counted at its current rate while busy and at its best while idle: an idle peer's
    two-second rate falls to nothing while it waits, and the blocks would then look as
    slow as their holders, holding the fast idle peer back from copying them."""
    if left_bytes is None:
        return None
    able = sum(rate if busy else best for rate, best, busy in peers)
    return left_bytes / able if able > 0 else None
