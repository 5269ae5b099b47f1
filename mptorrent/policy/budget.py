"""How many requests of one kind a peer may make: a token bucket, sans-IO.

Used for BEP 9 metadata requests: a request of a few dozen bytes earns a 16 KiB
reply, so a peer asking in a loop would turn us into an amplifier.  A peer gets
``burst`` requests at once (enough for the metadata of any real torrent, which
libtorrent asks for a few pieces at a time) and ``rate`` per second after that;
requests beyond are refused (the caller sends a reject, as BEP 9 allows).
The clock is an argument.
"""

from __future__ import annotations

from typing import Final

__all__ = ["METADATA_BURST", "METADATA_RATE", "RequestBudget"]

METADATA_RATE: Final = 2.0  # metadata requests per second per peer, after the burst
METADATA_BURST: Final = 8.0  # 128 KiB of metadata at once: any real info dictionary's start


class RequestBudget:
    """A token bucket: :meth:`allow` spends one token if there is one.

    Starts full; tokens come back at ``rate`` per second up to ``burst``.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float = METADATA_RATE, burst: float = METADATA_BURST) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last: float | None = None

    def allow(self, now: float) -> bool:
        """True (and one token spent) if a request at ``now`` is within the budget."""
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
