"""A rate limit shared by several worker processes: the coordinator's share-out, sans-IO.

One global token bucket (``rate`` bytes a second, at most ``burst`` saved up) is split
among the workers.  Each worker has two counters in shared memory: *granted* (written
only by the coordinator) and *spent* (written only by that worker); its balance is the
difference.  A single writer per counter needs no lock, so a worker killed at any
moment can wedge nobody.

Every tick the coordinator calls :meth:`RateShare.tick` with the clock and every
worker's *spent* total, and writes back the *granted* totals it returns.  A tick takes
back every balance (it may be negative: a worker may overdraw by one read), adds the
tokens earned since the last tick, keeps at most ``burst`` of what went unspent (a tick
that comes late still hands out all it earned, up to ``MAX_GAP``), and hands the lot
out again in proportion to what each worker spent in the last tick, doubled for a
worker that spent nearly all it had (it would have spent more), plus a small equal
floor so an idle worker can start.  So what all workers together spend from time 0
to t never exceeds ``rate * t + burst`` (up to one read per worker whose draw raced
with a tick), and the tokens follow whichever workers have the traffic.

:class:`TokenBucket` is the plain single-process bucket (used where one process
draws alone) and :func:`parse_rate` reads the CLI's ``20M``-style values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

__all__ = ["BURST_SECONDS", "MAX_GAP", "TICK", "RateShare", "TokenBucket", "parse_rate"]

TICK: Final = 0.02  # seconds between the coordinator's share-outs
BURST_SECONDS: Final = 0.25  # tokens saved up at most: a quarter second at the full rate
MIN_BURST: Final = 64 << 10  # ... but never less than a few blocks (very low limits)
MAX_GAP: Final = 1.0  # seconds of tokens one late tick may hand out (then the burst rules)
HUNGRY: Final = 0.1  # a worker left with less than this share of its grant wants more
FLOOR: Final = 0.05  # share of each tick's tokens spread equally, so idle workers can start

_UNITS: Final = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_rate(text: str) -> int:
    """Bytes per second from ``"20M"``, ``"512K"``, ``"1.5M"``, ``"100000"`` (K, M, G are
    powers of 1024; a trailing ``B`` or ``/s`` is allowed); ``0`` means no limit.

    A ``ValueError`` names what is wrong."""
    s = text.strip().upper().removesuffix("/S").removesuffix("IB").removesuffix("B")
    unit = s[-1:] if s[-1:] in _UNITS else ""
    number = s[: len(s) - len(unit)].strip()
    if not number or len(number) > 20:
        raise ValueError(f"not a rate: {text!r} (try 20M, 512K or 0 for no limit)")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a rate: {text!r} (try 20M, 512K or 0 for no limit)") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"not a rate: {text!r} (must be 0 or more)")
    rate = int(value * _UNITS[unit])
    if value and rate < 1024:
        raise ValueError(f"rate too low: {text!r} (at least 1K, or 0 for no limit)")
    if rate > 1 << 50:
        raise ValueError(f"rate too high: {text!r}")
    return rate


def burst_for(rate: int) -> int:
    """Tokens the shared bucket keeps at most for ``rate`` bytes a second."""
    return max(MIN_BURST, int(rate * BURST_SECONDS))


class TokenBucket:
    """A token bucket in bytes: ``rate`` a second, at most ``burst`` saved; the clock is an
    argument.  It starts full; :meth:`take` may overdraw (a read of unknown size), and the
    debt is paid back before anything more is allowed."""

    __slots__ = ("_last", "burst", "rate", "tokens")

    def __init__(self, rate: int, burst: int | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else burst_for(rate)
        self.tokens = float(self.burst)
        self._last: float | None = None

    def refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self.tokens = min(float(self.burst), self.tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now

    def available(self, now: float) -> int:
        """Whole tokens on hand at ``now`` (0 while in debt)."""
        self.refill(now)
        return max(0, int(self.tokens))

    def take(self, n: int) -> None:
        self.tokens -= n

    def wait(self, now: float) -> float:
        """Seconds until a token is on hand (0 if one is)."""
        self.refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate


class RateShare:
    """The coordinator's half of a global limit of ``rate`` bytes a second over ``workers``
    workers: :meth:`tick` turns the workers' *spent* totals into new *granted* totals.

    Totals only grow and start at 0 (a restarted worker carries on from its slot's *spent*
    counter).  The first tick hands out a full burst.
    """

    __slots__ = ("_last", "_spent", "burst", "granted", "rate")

    def __init__(self, rate: int, workers: int, burst: int | None = None) -> None:
        if rate <= 0 or workers < 1:
            raise ValueError("rate must be positive and workers at least 1")
        self.rate = rate
        self.burst = burst if burst is not None else burst_for(rate)
        self.granted = [0] * workers
        self._spent = [0] * workers  # as of the last tick
        self._last: float | None = None

    def tick(self, now: float, spent: Sequence[int]) -> list[int]:
        """Share out the tokens earned up to ``now``; the new granted totals.

        ``spent[i]`` is worker i's total as it reads now (never above what it may spend
        but for one overdrawn read)."""
        n = len(self.granted)
        if len(spent) != n:
            raise ValueError(f"{len(spent)} spent counters for {n} workers")
        last = self._last
        if last is None:
            earned = float(self.burst)
        else:  # a tick that comes late (a busy machine) still pays for its whole gap
            earned = min(MAX_GAP, max(0.0, now - last)) * self.rate
        if self._last is None or now > self._last:
            self._last = now
        balances = [g - s for g, s in zip(self.granted, spent, strict=True)]
        used = [max(0, s - p) for s, p in zip(spent, self._spent, strict=True)]
        self._spent = list(spent)
        # What workers left unspent is kept up to a burst; what this tick earned, in full.
        pool = min(max(float(self.burst), earned), sum(balances) + earned)
        if pool <= 0:
            # In debt (overdrawn reads): nothing to hand out; balances stay as they are.
            return list(self.granted)
        weights = []
        for u, b in zip(used, balances, strict=True):
            hungry = u > 0 and b <= HUNGRY * (u + max(b, 0))
            weights.append(u * (2 if hungry else 1))
        total = sum(weights)
        floor = pool * FLOOR / n if total else pool / n
        rest = pool - floor * n
        for i in range(n):
            share = floor + (rest * weights[i] / total if total else 0.0)
            # take back the balance, give the new share: granted = spent + share
            self.granted[i] = spent[i] + int(share)
        return list(self.granted)
