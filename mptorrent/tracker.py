"""Sans-IO tracker codecs: announce and scrape URLs in, parsed replies out.

Nothing here opens a socket or reads the clock; :mod:`mptorrent.net` moves the
bytes.  HTTP trackers follow BEP 3 with compact peers (BEP 23), IPv6 peers
(BEP 7) and the scrape convention (BEP 48).  UDP trackers (BEP 15) will get
their packet codecs here too, sharing :class:`AnnounceRequest` and
:class:`AnnounceResponse`.

A tracker reply is untrusted input: every decode is bounded, malformed optional
fields are ignored the way libtorrent ignores them, and anything that is not a
usable reply raises :class:`TrackerError` with a one-line reason.
"""

from __future__ import annotations

import ipaddress
import secrets
import struct
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_from_bytes, urlsplit, urlunsplit

from mptorrent import bencode
from mptorrent.errors import BencodeError, TrackerError
from mptorrent.messages import PeerAddr

PEER_ID_PREFIX = b"-MP0100-"  # Azureus style: client "MP", version 0.1.0.0
EVENTS = frozenset({"started", "completed", "stopped"})
MAX_PEERS = 2000  # per reply; a tracker cannot make us hold more than this
# Intervals are clamped so a hostile reply cannot make a caller sleep forever
# (or hammer the tracker with a negative interval).
MAX_INTERVAL = 7 * 24 * 3600
DEFAULT_INTERVAL = 1800  # libtorrent's fallback when a reply has no interval
MAX_MESSAGE = 300  # characters of a failure reason or warning we pass on

_COMPACT4 = 6
_COMPACT6 = 18
_HTTP_SCHEMES = ("http", "https")
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


@dataclass(frozen=True, slots=True)
class AnnounceRequest:
    info_hash: bytes
    peer_id: bytes
    port: int
    uploaded: int
    downloaded: int
    left: int
    event: str | None = None  # "started", "completed", "stopped" or None (a regular announce)
    numwant: int = 50
    key: int | None = None  # 32-bit; lets the tracker recognise us across IP changes
    compact: bool = True
    tracker_id: bytes | None = None  # echoed back from an earlier AnnounceResponse

    def __post_init__(self) -> None:
        if len(self.info_hash) != 20:
            raise ValueError(f"info_hash must be 20 bytes, not {len(self.info_hash)}")
        if len(self.peer_id) != 20:
            raise ValueError(f"peer_id must be 20 bytes, not {len(self.peer_id)}")
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port {self.port} is out of range")
        for name in ("uploaded", "downloaded", "left", "numwant"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.event is not None and self.event not in EVENTS:
            raise ValueError(f"unknown event {self.event!r}")
        if self.key is not None and not 0 <= self.key <= 0xFFFFFFFF:
            raise ValueError("key must fit in 32 bits")


@dataclass(frozen=True, slots=True)
class AnnounceResponse:
    interval: int
    min_interval: int | None
    peers: tuple[PeerAddr, ...]
    complete: int | None
    incomplete: int | None
    warning: str | None
    tracker_id: bytes | None


@dataclass(frozen=True, slots=True)
class ScrapeResult:
    complete: int
    incomplete: int
    downloaded: int


def make_peer_id() -> bytes:
    """A fresh Azureus-style peer id: ``-MP0100-`` and 12 random bytes."""
    return PEER_ID_PREFIX + secrets.token_bytes(20 - len(PEER_ID_PREFIX))


# -- URLs ---------------------------------------------------------------------


def _q(data: bytes) -> str:
    # Every byte that is not RFC 3986 "unreserved" becomes %XX; the bytes are
    # never decoded as text, so any 20-byte value survives the round trip.
    return quote_from_bytes(data, safe="")


def _with_query(base_url: str, params: Iterable[tuple[str, str]]) -> str:
    """Append already-encoded ``params`` to ``base_url``, keeping its own query.

    A fragment is never sent to a server, so it is dropped; everything else of
    the base URL (private-tracker passkeys in the query, say) is kept verbatim.
    """
    base = base_url.partition("#")[0]
    if "?" not in base:
        sep = "?"
    elif base.endswith(("?", "&")):
        sep = ""
    else:
        sep = "&"
    return base + sep + "&".join(f"{k}={v}" for k, v in params)


def announce_url(base_url: str, req: AnnounceRequest) -> str:
    """The GET URL of an HTTP announce (BEP 3)."""
    params = [
        ("info_hash", _q(req.info_hash)),
        ("peer_id", _q(req.peer_id)),
        ("port", str(req.port)),
        ("uploaded", str(req.uploaded)),
        ("downloaded", str(req.downloaded)),
        ("left", str(req.left)),
        ("compact", "1" if req.compact else "0"),
        ("numwant", str(req.numwant)),
    ]
    if req.event is not None:
        params.append(("event", req.event))
    if req.key is not None:
        params.append(("key", f"{req.key:08X}"))  # hex, as libtorrent sends it
    if req.tracker_id is not None:
        params.append(("trackerid", _q(req.tracker_id)))
    return _with_query(base_url, params)


def scrape_url(announce_url: str) -> str | None:
    """The scrape URL of an HTTP tracker, or None if it has none (BEP 48).

    Only when the last path component starts with ``announce`` does the tracker
    have a scrape URL: that ``announce`` becomes ``scrape``; the rest of the
    URL, query included, is kept.
    """
    base = announce_url.partition("#")[0]
    try:
        parts = urlsplit(base)
    except ValueError:
        return None
    if parts.scheme.lower() not in _HTTP_SCHEMES or not parts.netloc:
        return None
    slash = parts.path.rfind("/")
    if slash < 0 or not parts.path.startswith("announce", slash + 1):
        return None
    path = parts.path[: slash + 1] + "scrape" + parts.path[slash + 1 + len("announce") :]
    return urlunsplit(parts._replace(path=path, fragment=""))


def scrape_request_url(announce_url: str, info_hashes: Iterable[bytes]) -> str | None:
    """The GET URL that scrapes ``info_hashes``, or None if the tracker cannot scrape."""
    url = scrape_url(announce_url)
    if url is None:
        return None
    hashes = list(info_hashes)
    for h in hashes:
        if len(h) != 20:
            raise ValueError(f"info_hash must be 20 bytes, not {len(h)}")
    return _with_query(url, [("info_hash", _q(h)) for h in hashes])


# -- replies ------------------------------------------------------------------


def one_line(text: bytes | str, limit: int = MAX_MESSAGE) -> str:
    """Text from a remote party made safe to print on one terminal line."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    out = []
    for ch in text[:limit]:
        # C* covers control and bidi-override characters; Zl/Zp are line breaks
        if unicodedata.category(ch) in _UNPRINTABLE:
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    if len(text) > limit:
        out.append("...")
    return "".join(out)


def _decode_dict(body: bytes) -> dict[bytes, Any]:
    try:
        value = bencode.decode(body, max_size=bencode.MAX_TRACKER_REPLY_SIZE)
    except BencodeError as exc:
        raise TrackerError(f"bad tracker reply: {exc}") from None
    if not isinstance(value, dict):
        raise TrackerError(f"bad tracker reply: a {_kind(value)}, not a dictionary")
    _check_failure(value)
    return value


def _check_failure(reply: dict[bytes, Any]) -> None:
    failure = reply.get(b"failure reason")
    if failure is not None:
        if isinstance(failure, bytes):
            raise TrackerError(f"tracker failure: {one_line(failure)}")
        raise TrackerError("tracker failure (no readable reason)")


def raise_for_failure(body: bytes) -> None:
    """Raise the tracker's ``failure reason`` if ``body`` carries one; else do nothing."""
    try:
        value = bencode.decode(body, max_size=bencode.MAX_TRACKER_REPLY_SIZE)
    except BencodeError:
        return
    if isinstance(value, dict):
        _check_failure(value)


def _kind(value: object) -> str:
    return {int: "integer", bytes: "string", list: "list"}.get(type(value), type(value).__name__)


def _int(value: object) -> int | None:
    # bool is an int subclass, but bencode never produces one
    return value if isinstance(value, int) else None


def _count(value: object) -> int | None:
    n = _int(value)
    return n if n is not None and n >= 0 else None


def _clamp_interval(value: object) -> int | None:
    n = _int(value)
    return None if n is None else min(max(n, 0), MAX_INTERVAL)


def _usable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """The peer host string for ``ip``, or None if no peer can live there."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.scope_id:
            return None  # a zone means nothing off the tracker's own link
    if ip.is_unspecified or ip.is_multicast:
        return None
    if isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"):
        return None
    return str(ip)


def _compact(blob: bytes, size: int) -> Iterator[PeerAddr]:
    # A trailing partial entry is ignored rather than failing the whole reply.
    addr_len = size - 2
    seen: set[bytes] = set()
    for off in range(0, len(blob) - size + 1, size):
        entry = blob[off : off + size]
        # dedupe on raw bytes first: a reply of one peer repeated 700,000 times
        # then costs a set lookup per entry, not an address parse
        if entry in seen:
            continue
        seen.add(entry)
        (port,) = struct.unpack_from("!H", entry, addr_len)
        if port == 0:
            continue
        raw = entry[:addr_len]
        ip = ipaddress.IPv4Address(raw) if addr_len == 4 else ipaddress.IPv6Address(raw)
        host = _usable(ip)
        if host is not None:
            yield PeerAddr(host, port)


def _dict_peers(items: list[Any]) -> Iterator[PeerAddr]:
    for item in items:
        if not isinstance(item, dict):
            continue
        ip, port = item.get(b"ip"), item.get(b"port")
        if not isinstance(ip, bytes) or not isinstance(port, int) or not 0 < port <= 0xFFFF:
            continue
        # BEP 3 also allows a DNS name here; resolving names a tracker hands us
        # would let it aim our connections anywhere, so only literals count.
        try:
            parsed = ipaddress.ip_address(ip.decode("ascii").strip().strip("[]"))
        except (UnicodeDecodeError, ValueError):
            continue
        host = _usable(parsed)
        if host is not None:
            yield PeerAddr(host, port)


def _collect(sources: Iterable[Iterator[PeerAddr]], limit: int) -> tuple[PeerAddr, ...]:
    seen: dict[PeerAddr, None] = {}
    for source in sources:
        for peer in source:
            if len(seen) >= limit:
                return tuple(seen)
            seen.setdefault(peer, None)
    return tuple(seen)


def parse_announce(body: bytes, *, max_peers: int = MAX_PEERS) -> AnnounceResponse:
    """Parse an HTTP announce reply; raise :class:`TrackerError` if it is unusable."""
    reply = _decode_dict(body)
    peers, peers6 = reply.get(b"peers"), reply.get(b"peers6")
    sources: list[Iterator[PeerAddr]] = []
    if isinstance(peers, bytes):
        sources.append(_compact(peers, _COMPACT4))
    elif isinstance(peers, list):
        sources.append(_dict_peers(peers))
    if isinstance(peers6, bytes):
        sources.append(_compact(peers6, _COMPACT6))
    if not sources:
        # Without a peer list this is not an announce reply (libtorrent agrees).
        raise TrackerError("bad tracker reply: no peers or peers6 list")
    interval = _clamp_interval(reply.get(b"interval"))
    warning = reply.get(b"warning message")
    tracker_id = reply.get(b"tracker id")
    return AnnounceResponse(
        interval=DEFAULT_INTERVAL if interval is None else interval,
        min_interval=_clamp_interval(reply.get(b"min interval")),
        peers=_collect(sources, max(max_peers, 0)),
        complete=_count(reply.get(b"complete")),
        incomplete=_count(reply.get(b"incomplete")),
        warning=one_line(warning) if isinstance(warning, bytes) else None,
        tracker_id=tracker_id if isinstance(tracker_id, bytes) else None,
    )


def parse_scrape(body: bytes, info_hash: bytes) -> ScrapeResult:
    """The counts for ``info_hash`` in an HTTP scrape reply (BEP 48)."""
    reply = _decode_dict(body)
    files = reply.get(b"files")
    if not isinstance(files, dict):
        raise TrackerError("bad scrape reply: no files dictionary")
    entry = files.get(info_hash)
    if entry is None:
        # opentracker leaves out a torrent with no peers instead of listing zeros
        return ScrapeResult(0, 0, 0)
    if not isinstance(entry, dict):
        raise TrackerError("bad scrape reply: the torrent's entry is not a dictionary")
    return ScrapeResult(
        complete=_count(entry.get(b"complete")) or 0,
        incomplete=_count(entry.get(b"incomplete")) or 0,
        downloaded=_count(entry.get(b"downloaded")) or 0,
    )
