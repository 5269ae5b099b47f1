"""Announcing to a torrent's trackers without ever blocking the download.

Each tier is announced from its own thread (BEP 12: shuffle a tier once, try
its trackers in order, move the one that answers to the front); results go to
a callback as plain values, so the coordinator's loop only reads a queue.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from mptorrent import net, tracker
from mptorrent.errors import TrackerError
from mptorrent.messages import PeerAddr

ANNOUNCE_TIMEOUT = 10.0
HTTP_SCHEMES = ("http://", "https://")


@dataclass(frozen=True)
class TierResult:
    url: str | None  # the tracker that answered, None if the whole tier failed
    peers: tuple[PeerAddr, ...] = ()
    interval: int | None = None
    errors: tuple[str, ...] = ()


def redact(url: str) -> str:
    """scheme://host:port only: private trackers put passkeys in paths and queries."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


class Announcer:
    def __init__(
        self,
        trackers: tuple[tuple[str, ...], ...],
        *,
        info_hash: bytes,
        peer_id: bytes,
        port: int,
        source_address: str | None = None,
        timeout: float = ANNOUNCE_TIMEOUT,
    ) -> None:
        self.tiers = [self._usable(t) for t in trackers]
        self.tiers = [t for t in self.tiers if t]
        for t in self.tiers:
            random.shuffle(t)  # once, as BEP 12 asks
        self.info_hash = info_hash
        self.peer_id = peer_id
        self.port = port
        self.source_address = source_address
        self.timeout = timeout
        self.key = random.getrandbits(32)
        self._lock = threading.Lock()

    @staticmethod
    def _usable(tier: tuple[str, ...]) -> list[str]:
        return [u for u in tier if u.startswith(HTTP_SCHEMES)]

    def __bool__(self) -> bool:
        return bool(self.tiers)

    def announce(
        self,
        *,
        event: str | None,
        left: int,
        downloaded: int = 0,
        uploaded: int = 0,
        on_result: Callable[[TierResult], None] | None = None,
        wait: float | None = None,
    ) -> list[threading.Thread]:
        """Announce to every tier in parallel; ``wait`` bounds how long we block."""
        req = tracker.AnnounceRequest(
            info_hash=self.info_hash, peer_id=self.peer_id, port=self.port,
            uploaded=uploaded, downloaded=downloaded, left=left, event=event,
            key=self.key, numwant=0 if event == "stopped" else 50,
        )  # fmt: skip
        threads = []
        for tier in self.tiers:
            t = threading.Thread(
                target=self._tier, args=(tier, req, on_result), daemon=True, name="announce"
            )
            t.start()
            threads.append(t)
        if wait is not None:
            import time

            deadline = time.monotonic() + wait
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
        return threads

    def _tier(
        self,
        tier: list[str],
        req: tracker.AnnounceRequest,
        on_result: Callable[[TierResult], None] | None,
    ) -> None:
        errors: list[str] = []
        result = TierResult(None)
        for url in list(tier):
            try:
                resp = net.announce_http(
                    url, req, timeout=self.timeout, source_address=self.source_address
                )
            except TrackerError as exc:
                errors.append(str(exc))  # names host:port only: URLs can hold passkeys
                continue
            except Exception as exc:  # a tracker must never take the client down
                errors.append(f"{redact(url)}: {exc!r}")
                continue
            with self._lock:  # BEP 12: the tracker that answered goes to the front
                if url in tier:
                    tier.remove(url)
                    tier.insert(0, url)
            result = TierResult(url, resp.peers, resp.interval)
            break
        if on_result is not None:
            on_result(replace(result, errors=tuple(errors)))
