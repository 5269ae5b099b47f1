"""Announcing to a torrent's trackers without ever blocking the download.

Trackers come in tiers (BEP 12): each tier is shuffled once, its trackers are
tried in order, and the one that answers moves to the front.  Every tier is
announced from its own thread, so a dead tracker in one tier never delays the
peers of another; results reach a callback as plain values, so the
coordinator's loop only reads a queue.  ``http://``, ``https://`` and
``udp://`` trackers are used; other schemes (``wss://``, ...) are skipped
without a word.

Per tier the announcer remembers what the last reply said (interval, min
interval, tracker id) and when the next announce is due.  The clock is an
argument: the caller's loop polls :meth:`Announcer.maybe_reannounce`.
"""

from __future__ import annotations

import ipaddress
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import field, replace
from urllib.parse import urlsplit

from mptorrent.errors import TrackerError
from mptorrent.messages import PeerAddr
from mptorrent.netio import net
from mptorrent.proto import tracker
from mptorrent.record import Record, frozen, mutable

ANNOUNCE_TIMEOUT = 10.0
SCRAPE_TIMEOUT = 10.0
# BEP 15's own schedule (15 s, 30 s, ...) would let a dead UDP tracker hold a
# command-line user for hours; 2 s then 4 s costs 6 s.
UDP_RETRY = tracker.UDPRetry(base=2.0, tries=2)
SCHEMES = frozenset({"http", "https", "udp"})
NUMWANT = 50
MAX_NUMWANT = 200  # what trackers usually cap a reply at (opentracker, libtorrent's default)
MIN_REANNOUNCE = 30.0  # floor under any interval: a tracker saying 0 cannot make us spin
LOW_PEERS_WAIT = 120.0  # how soon to ask again for peers when the tracker set no min interval
RETRY_BASE = 15.0  # a tier that failed is tried again after 15, 30, 60 ... s
RETRY_MAX = 1800.0

OnResult = Callable[["TierResult"], None]


def numwant_for(max_peers: int, workers: int = 1) -> int:
    """Peers to ask each tracker for: enough to fill ``max_peers`` connections on each of
    ``workers`` workers, with spares for those that fail, up to what trackers hand out."""
    return max(1, min(MAX_NUMWANT, max_peers * workers))


@frozen(slots=False)
class TierResult(Record):
    """One tier's answer to one announce, handed from that tier's thread to ``on_result``; ``peers``
    already leaves out our own listen addresses."""

    url: str | None  # the tracker that answered (in full: print redact(url)), None if all failed
    peers: tuple[PeerAddr, ...] = ()
    interval: int | None = None
    errors: tuple[str, ...] = ()  # one line each, naming trackers by host:port only
    failed: tuple[str, ...] = ()  # errors' trackers, redact()ed: failed[i] said errors[i]
    tier: int = 0
    # what was sent: "started" stands in for a first regular announce
    event: tracker.Event | None = None
    min_interval: int | None = None
    complete: int | None = None  # seeders, if the tracker said
    incomplete: int | None = None  # leechers
    warning: str | None = None


def redact(url: str) -> str:
    """scheme://host:port only: private trackers put passkeys in paths and queries."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unreadable tracker URL)"
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def usable(url: str) -> bool:
    """Whether we can talk to the tracker at ``url`` (http, https or udp)."""
    try:
        return urlsplit(url).scheme.lower() in SCHEMES
    except ValueError:
        return False


def _usable_urls(trackers: Sequence[Sequence[str]]) -> list[list[str]]:
    """The tiers with unusable URLs, repeats and then empty tiers dropped."""
    seen: set[str] = set()
    tiers = []
    for tier in trackers:
        urls = []
        for url in tier:
            if usable(url) and url not in seen:
                seen.add(url)
                urls.append(url)
        if urls:
            tiers.append(urls)
    return tiers


def _normal_host(host: str) -> str:
    # the tracker codecs write hosts this way, so exclusions must match it
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _describe(url: str, exc: BaseException) -> str:
    if isinstance(exc, TrackerError):
        return str(exc)  # net names the tracker by host:port
    # a bug, not a tracker problem; still one line and no passkey
    return f"{redact(url)}: {tracker.one_line(repr(exc), 200)}"


@mutable(eq=False)
class _Tier(Record):
    """One tier's announce state, shared between the caller's loop and the tier's threads: its
    fields change only under the announcer's lock, and ``lock`` keeps its announces in order."""

    index: int
    urls: list[str]  # BEP 12 order: the tracker that answered last comes first
    lock: threading.Lock = field(default_factory=threading.Lock)  # one announce at a time
    inflight: int = 0
    started: bool = False  # a tracker accepted "started", and no "stopped" since
    last_at: float | None = None  # when the latest announce began
    failures: int = 0  # announces in a row that no tracker of the tier answered
    interval: float = tracker.DEFAULT_INTERVAL
    min_interval: float | None = None
    tracker_ids: dict[str, bytes] = field(default_factory=dict)

    def next_at(self, peers_low: bool) -> float:
        if self.last_at is None:
            return -math.inf
        if self.failures:
            return self.last_at + min(RETRY_MAX, RETRY_BASE * 2.0 ** min(self.failures - 1, 16))
        wait = max(self.interval, MIN_REANNOUNCE)
        if peers_low:
            soon = self.min_interval if self.min_interval is not None else LOW_PEERS_WAIT
            wait = min(wait, max(soon, MIN_REANNOUNCE))
        return self.last_at + wait


class Announcer:
    """A torrent's trackers, announced tier by tier in parallel (BEP 12).

    ``exclude`` holds our own listen addresses, (host, port): trackers often
    hand a peer its own address back.  ``udp_retry`` is the BEP 15
    retransmission schedule; ``timeout`` caps every single tracker exchange.
    """

    def __init__(
        self,
        trackers: Sequence[Sequence[str]],
        *,
        info_hash: bytes,
        peer_id: bytes,
        port: int,
        source_address: str | None = None,
        timeout: float = ANNOUNCE_TIMEOUT,
        udp_retry: tracker.UDPRetry = UDP_RETRY,
        exclude: Iterable[tuple[str, int]] = (),
        numwant: int = NUMWANT,
        rng: random.Random | None = None,
    ) -> None:
        rng = rng or random.Random()
        self._tiers = [_Tier(i, urls) for i, urls in enumerate(_usable_urls(trackers))]
        for t in self._tiers:
            rng.shuffle(t.urls)  # once, as BEP 12 asks
        # The live lists: BEP 12 reordering shows here.
        self.tiers: list[list[str]] = [t.urls for t in self._tiers]
        self.info_hash = info_hash
        self.peer_id = peer_id
        self.port = port
        self.source_address = source_address
        self.timeout = timeout
        self.udp_retry = udp_retry
        self.numwant = numwant
        self.key = random.getrandbits(32)
        self.exclude: set[PeerAddr] = set()
        for host, p in exclude:
            self.exclude_peer(host, p)
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._tiers)

    def exclude_peer(self, host: str, port: int) -> None:
        """Never report ``host:port`` (one of our own listen addresses) as a peer."""
        self.exclude.add(PeerAddr(_normal_host(host), port))

    # -- announcing ----------------------------------------------------------

    def announce(
        self,
        *,
        event: tracker.Event | None,
        left: int,
        downloaded: int = 0,
        uploaded: int = 0,
        on_result: OnResult | None = None,
        wait: float | None = None,
        now: float | None = None,
    ) -> list[threading.Thread]:
        """Announce to every tier in parallel; ``wait`` bounds how long we block.

        ``on_result`` gets exactly one :class:`TierResult` per returned thread.
        "stopped" and "completed" go only to tiers that accepted our "started"
        (or are busy announcing): a tracker that never listed us has nothing
        to update.  A regular announce (``event=None``) to a tier that never
        accepted "started" is sent as "started".
        """
        if event is not None and event not in tracker.EVENTS:
            raise ValueError(f"unknown event {event!r}")
        now = time.monotonic() if now is None else now
        final = event in ("stopped", "completed")
        with self._lock:
            chosen = [t for t in self._tiers if not final or t.started or t.inflight]
            self._begin(chosen, now)
        return self._launch(chosen, event, left, downloaded, uploaded, on_result, wait)

    def maybe_reannounce(
        self,
        now: float,
        *,
        peers_low: bool = False,
        left: int,
        downloaded: int = 0,
        uploaded: int = 0,
        on_result: OnResult | None = None,
    ) -> list[threading.Thread]:
        """Announce to the tiers that are due (see :meth:`due`); never blocks.

        Call it from the main loop every 0.1-1 s with ``time.monotonic()``.
        """
        with self._lock:
            chosen = [t for t in self._tiers if not t.inflight and t.next_at(peers_low) <= now]
            self._begin(chosen, now)
        return self._launch(chosen, None, left, downloaded, uploaded, on_result, None)

    def due(self, now: float, peers_low: bool = False) -> bool:
        """Whether some idle tier should announce again at ``now``.

        A tier that answered is due after its ``interval`` (never under
        :data:`MIN_REANNOUNCE`); with ``peers_low``, after its ``min interval``
        (:data:`LOW_PEERS_WAIT` if it gave none).  A tier that failed is due
        after a backoff of 15 s, 30 s, ... up to 30 minutes.
        """
        at = self.next_announce_at(peers_low)
        return at is not None and at <= now

    def next_announce_at(self, peers_low: bool = False) -> float | None:
        """When the next tier falls due (monotonic seconds); None while all are busy."""
        with self._lock:
            times = [t.next_at(peers_low) for t in self._tiers if not t.inflight]
        return min(times, default=None)

    def _begin(self, tiers: list[_Tier], now: float) -> None:
        for t in tiers:
            t.inflight += 1
            t.last_at = now

    def _launch(
        self,
        tiers: list[_Tier],
        event: tracker.Event | None,
        left: int,
        downloaded: int,
        uploaded: int,
        on_result: OnResult | None,
        wait: float | None,
    ) -> list[threading.Thread]:
        with self._lock:
            urls = [url for t in tiers for url in t.urls]
        net.prepare(urls)  # imports, before the threads: see net.prepare
        threads = []
        for t in tiers:
            sent: tracker.Event | None = "started" if event is None and not t.started else event
            req = tracker.AnnounceRequest(
                info_hash=self.info_hash, peer_id=self.peer_id, port=self.port,
                uploaded=uploaded, downloaded=downloaded, left=left, event=sent,
                key=self.key, numwant=0 if sent == "stopped" else self.numwant,
            )  # fmt: skip
            thread = threading.Thread(
                target=self._tier, args=(t, req, on_result), daemon=True, name=f"announce-{t.index}"
            )
            thread.start()
            threads.append(thread)
        if wait is not None:
            deadline = time.monotonic() + wait
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
        return threads

    def _tier(self, tier: _Tier, req: tracker.AnnounceRequest, on_result: OnResult | None) -> None:
        errors: list[str] = []
        failed: list[str] = []
        result = TierResult(None, tier=tier.index, event=req.event)
        try:
            with tier.lock:  # in order: a "stopped" must not overtake our "started"
                with self._lock:
                    urls = list(tier.urls)
                for url in urls:
                    with self._lock:
                        tracker_id = tier.tracker_ids.get(url)
                    try:
                        resp = net.announce(
                            url,
                            req if tracker_id is None else replace(req, tracker_id=tracker_id),
                            timeout=self.timeout,
                            source_address=self.source_address,
                            udp_retry=self.udp_retry,
                        )
                    except Exception as exc:  # a tracker must never take the client down
                        errors.append(_describe(url, exc))
                        failed.append(redact(url))
                        continue
                    with self._lock:
                        self._answered(tier, url, req.event, resp)
                    result = TierResult(
                        url,
                        tuple(p for p in resp.peers if p not in self.exclude),
                        resp.interval,
                        tier=tier.index,
                        event=req.event,
                        min_interval=resp.min_interval,
                        complete=resp.complete,
                        incomplete=resp.incomplete,
                        warning=resp.warning,
                    )
                    break
                else:
                    if req.event != "stopped":
                        with self._lock:
                            tier.failures += 1
        finally:
            with self._lock:
                tier.inflight -= 1
            if on_result is not None:
                on_result(replace(result, errors=tuple(errors), failed=tuple(failed)))

    @staticmethod
    def _answered(
        tier: _Tier, url: str, event: tracker.Event | None, resp: tracker.AnnounceResponse
    ) -> None:
        if url in tier.urls:  # BEP 12: the tracker that answered goes to the front
            tier.urls.remove(url)
            tier.urls.insert(0, url)
        tier.failures = 0
        tier.started = event != "stopped"
        tier.interval = resp.interval
        tier.min_interval = resp.min_interval
        if resp.tracker_id is not None:
            tier.tracker_ids[url] = resp.tracker_id


# -- scrape -------------------------------------------------------------------


def scrape_all(
    trackers: Sequence[Sequence[str]],
    info_hash: bytes,
    timeout: float = SCRAPE_TIMEOUT,
    *,
    source_address: str | None = None,
    udp_retry: tracker.UDPRetry = UDP_RETRY,
) -> list[tuple[str, tracker.ScrapeResult | str]]:
    """Scrape every usable tracker of every tier at once.

    One ``(redacted URL, counts or one-line error)`` per tracker, in the
    torrent's order; the whole call takes about ``timeout`` at most.
    """
    urls = [u for tier in _usable_urls(trackers) for u in tier]
    results: list[tracker.ScrapeResult | str | None] = [None] * len(urls)

    def run(i: int, url: str) -> None:
        try:
            results[i] = net.scrape(
                url, info_hash, timeout=timeout, source_address=source_address, udp_retry=udp_retry
            )
        except Exception as exc:
            results[i] = _describe(url, exc)

    threads = [
        threading.Thread(target=run, args=(i, u), daemon=True, name="scrape")
        for i, u in enumerate(urls)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout + 1.0  # DNS is outside net's deadline
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return [
        (redact(u), r if r is not None else f"{net.where(u)} did not answer within {timeout:g} s")
        for u, r in zip(urls, results, strict=True)
    ]
