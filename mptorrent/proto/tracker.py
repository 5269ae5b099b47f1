"""Sans-IO tracker codecs: announce and scrape URLs in, parsed replies out.

Nothing here opens a socket or reads the clock; :mod:`mptorrent.netio.net` moves the
bytes.  HTTP trackers follow BEP 3 with compact peers (BEP 23), IPv6 peers
(BEP 7) and the scrape convention (BEP 48).  UDP trackers (BEP 15) share
:class:`AnnounceRequest` and :class:`AnnounceResponse`: their packets are built
and parsed here (both sides, so the test tracker and round-trip tests use the
same code), and :class:`UDPAnnounce` / :class:`UDPScrape` are the client's
state machines, with the clock as an input.

A tracker reply is untrusted input: every decode is bounded, malformed optional
fields are ignored the way libtorrent ignores them, and anything that is not a
usable reply raises :class:`TrackerError` with a one-line reason.
"""

from __future__ import annotations

import ipaddress
import secrets
import struct
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from enum import IntEnum
from typing import Final, Generic, Literal, TypeAlias, TypeVar
from urllib.parse import quote_from_bytes, urlsplit, urlunsplit

from mptorrent.errors import BencodeError, TrackerError
from mptorrent.messages import PeerAddr
from mptorrent.proto import bencode
from mptorrent.proto.bencode import BValue
from mptorrent.record import Record, frozen

PEER_ID_PREFIX = b"-MP0100-"  # Azureus style: client "MP", version 0.1.0.0
# An announce's event; None (no event) is a regular announce.
Event: TypeAlias = Literal["started", "completed", "stopped"]
EVENTS: frozenset[Event] = frozenset({"started", "completed", "stopped"})
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


@frozen
class AnnounceRequest(Record):
    """What we tell a tracker in one announce, over HTTP or UDP alike; checked on construction, so a
    bad value fails here (``ValueError``) before anything is sent."""

    info_hash: bytes
    peer_id: bytes
    port: int
    uploaded: int
    downloaded: int
    left: int
    event: Event | None = None  # None: a regular announce
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


@frozen
class AnnounceResponse(Record):
    """A tracker's announce reply as far as we trust it: intervals clamped, peers deduplicated and
    capped, and optional fields None when missing or malformed."""

    interval: int
    min_interval: int | None
    peers: tuple[PeerAddr, ...]
    complete: int | None
    incomplete: int | None
    warning: str | None
    tracker_id: bytes | None


@frozen
class ScrapeResult(Record):
    """A tracker's counts for one torrent (seeders, leechers, completed downloads); a torrent the
    tracker leaves out of an HTTP scrape reads as all zeros."""

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
    size = used = 0
    for ch in text[:limit]:
        # C* covers control and bidi-override characters; Zl/Zp are line breaks
        if unicodedata.category(ch) in _UNPRINTABLE:
            ch = ch.encode("unicode_escape").decode("ascii")
        if size + len(ch) > limit:
            break  # the cap holds after escaping, so NULs cannot make a 4x longer line
        out.append(ch)
        size += len(ch)
        used += 1
    if used < len(text):
        out.append("...")
    return "".join(out)


def _decode_dict(body: bytes) -> dict[bytes, BValue]:
    try:
        value = bencode.decode(body, max_size=bencode.MAX_TRACKER_REPLY_SIZE)
    except BencodeError as exc:
        raise TrackerError(f"bad tracker reply: {exc}") from None
    if not isinstance(value, dict):
        raise TrackerError(f"bad tracker reply: a {_kind(value)}, not a dictionary")
    _check_failure(value)
    return value


def _check_failure(reply: dict[bytes, BValue]) -> None:
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


def _dict_peers(items: list[BValue]) -> Iterator[PeerAddr]:
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


# -- UDP trackers (BEP 15) ----------------------------------------------------


class Action(IntEnum):
    """BEP 15: what a UDP tracker packet is (its first 32-bit field after any connection id)."""

    CONNECT = 0
    ANNOUNCE = 1
    SCRAPE = 2
    ERROR = 3


UDP_PROTOCOL_ID = 0x41727101980
CONNECT: Final = Action.CONNECT
ANNOUNCE: Final = Action.ANNOUNCE
SCRAPE: Final = Action.SCRAPE
ERROR: Final = Action.ERROR
CONNECTION_ID_LIFETIME = 60.0  # BEP 15: a client may use a connection id for one minute
UDP_MAX_SCRAPE = 74  # info-hashes per scrape request (BEP 15)
UDP_ANNOUNCE_SIZE = 98  # an announce request before any BEP 41 options
_UDP_EVENTS: dict[Event | None, int] = {None: 0, "completed": 1, "started": 2, "stopped": 3}
_UDP_EVENT_NAMES = {code: name for name, code in _UDP_EVENTS.items()}
_ACTION_NAMES = {CONNECT: "connect", ANNOUNCE: "announce", SCRAPE: "scrape", ERROR: "error"}
_I64_MAX = 2**63 - 1  # BEP 15's 64-bit counters; libtorrent writes them signed
_I32_MAX = 2**31 - 1
_BEP41_END, _BEP41_NOP, _BEP41_URL_DATA = 0, 1, 2
_CONNECT_REQ = struct.Struct("!QII")  # protocol id, action, transaction id
_HEADER = struct.Struct("!II")  # action, transaction id: every reply starts so
_CONNECT_REPLY = struct.Struct("!IIQ")
_ANNOUNCE_REQ = struct.Struct("!QII20s20sqqqIIIiH")
_ANNOUNCE_REPLY = struct.Struct("!IIIII")  # action, tid, interval, leechers, seeders
_SCRAPE_ENTRY = struct.Struct("!III")  # seeders, completed, leechers


class UDPIgnored(TrackerError):
    """A datagram that is not the reply we wait for: drop it and keep waiting.

    Anyone can send us a datagram, so a stray or spoofed one must not end an
    exchange that a real reply could still complete.  Only a packet carrying
    our random 32-bit transaction id is taken as the tracker's answer; a bad
    one of those is a :class:`TrackerError` at once (as in libtorrent), since
    the tracker would only say the same again.
    """


def _u32(name: str, value: int) -> int:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{name} must fit in 32 bits")
    return value


def _check_hashes(info_hashes: Sequence[bytes]) -> None:
    if not 1 <= len(info_hashes) <= UDP_MAX_SCRAPE:
        raise ValueError(f"a UDP scrape takes 1 to {UDP_MAX_SCRAPE} info-hashes")
    for h in info_hashes:
        if len(h) != 20:
            raise ValueError(f"info_hash must be 20 bytes, not {len(h)}")


# client -> tracker


def udp_connect_request(tid: int) -> bytes:
    return _CONNECT_REQ.pack(UDP_PROTOCOL_ID, CONNECT, _u32("transaction id", tid))


def udp_announce_request(
    connection_id: int, tid: int, req: AnnounceRequest, *, url_data: bytes = b""
) -> bytes:
    """An announce packet; ``url_data`` (the URL's path and query) goes in BEP 41 options.

    Private UDP trackers read the passkey from that path, as libtorrent sends it.
    """
    if not 0 <= connection_id < 2**64:
        raise ValueError("connection id must fit in 64 bits")
    packet = _ANNOUNCE_REQ.pack(
        connection_id, ANNOUNCE, _u32("transaction id", tid), req.info_hash, req.peer_id,
        min(req.downloaded, _I64_MAX), min(req.left, _I64_MAX), min(req.uploaded, _I64_MAX),
        _UDP_EVENTS[req.event], 0, req.key or 0, min(req.numwant, _I32_MAX), req.port,
    )  # fmt: skip
    options = [
        bytes((_BEP41_URL_DATA, len(chunk))) + chunk
        for chunk in (url_data[i : i + 255] for i in range(0, len(url_data), 255))
    ]
    return packet + b"".join(options)


def udp_scrape_request(connection_id: int, tid: int, info_hashes: Sequence[bytes]) -> bytes:
    if not 0 <= connection_id < 2**64:
        raise ValueError("connection id must fit in 64 bits")
    _check_hashes(info_hashes)
    return _CONNECT_REQ.pack(connection_id, SCRAPE, _u32("transaction id", tid)) + b"".join(
        info_hashes
    )


# tracker -> client, as the client checks it


def _check_reply(data: bytes, tid: int, action: Action, min_size: int) -> None:
    """Raise UDPIgnored unless ``data`` answers ``tid``; TrackerError unless it is ``action``."""
    if len(data) < _HEADER.size:
        raise UDPIgnored(f"a {len(data)}-byte packet")
    got_action, got_tid = _HEADER.unpack_from(data)
    if got_tid != tid:
        raise UDPIgnored("a wrong transaction id")
    if got_action == ERROR:
        message = data[_HEADER.size :].rstrip(b"\x00")  # some trackers NUL-terminate it
        if message.strip():
            raise TrackerError(f"tracker failure: {one_line(message)}")
        raise TrackerError("tracker failure (an error packet without a message)")
    if got_action != action:
        name = _ACTION_NAMES.get(got_action, f"action {got_action}")
        raise TrackerError(f"bad tracker reply: {name} reply to a {_ACTION_NAMES[action]} request")
    if len(data) < min_size:
        raise TrackerError(
            f"bad tracker reply: {_ACTION_NAMES[action]} reply of {len(data)} bytes, "
            f"under {min_size}"
        )


def parse_udp_connect(data: bytes, tid: int) -> int:
    """The connection id in a connect reply."""
    _check_reply(data, tid, CONNECT, _CONNECT_REPLY.size)
    return int(_CONNECT_REPLY.unpack_from(data)[2])


def parse_udp_announce(
    data: bytes, tid: int, *, ipv6: bool = False, max_peers: int = MAX_PEERS
) -> AnnounceResponse:
    """An announce reply.  Peers are 18-byte entries when it came over IPv6 (BEP 15)."""
    if len(data) == _HEADER.size and _HEADER.unpack(data) == (ANNOUNCE, tid):
        # opentracker's answer for a torrent it does not serve (off its whitelist)
        raise TrackerError("tracker failure: an empty announce reply (torrent not served here?)")
    _check_reply(data, tid, ANNOUNCE, _ANNOUNCE_REPLY.size)
    _, _, interval, leechers, seeders = _ANNOUNCE_REPLY.unpack_from(data)
    blob = data[_ANNOUNCE_REPLY.size :]
    return AnnounceResponse(
        interval=min(interval, MAX_INTERVAL),
        min_interval=None,
        peers=_collect([_compact(blob, _COMPACT6 if ipv6 else _COMPACT4)], max(max_peers, 0)),
        complete=seeders,
        incomplete=leechers,
        warning=None,
        tracker_id=None,
    )


def parse_udp_scrape(data: bytes, tid: int, count: int) -> tuple[ScrapeResult, ...]:
    """The counts of the ``count`` info-hashes a scrape asked for, in their order."""
    _check_reply(data, tid, SCRAPE, _HEADER.size + _SCRAPE_ENTRY.size * count)
    out = []
    for i in range(count):
        seeders, completed, leechers = _SCRAPE_ENTRY.unpack_from(
            data, _HEADER.size + i * _SCRAPE_ENTRY.size
        )
        out.append(ScrapeResult(complete=seeders, incomplete=leechers, downloaded=completed))
    return tuple(out)


# tracker side: what a UDP tracker parses and sends (the test trackers use these)


@frozen
class UDPConnectPacket(Record):
    """A client's BEP 15 connect request, as a UDP tracker reads it (test trackers)."""

    tid: int


@frozen
class UDPAnnouncePacket(Record):
    """A client's BEP 15 announce, as a UDP tracker reads it (test trackers); ``url_data`` is the
    BEP 41 path and query, ``ip`` 0 unless the client named one."""

    connection_id: int
    tid: int
    request: AnnounceRequest  # key 0 and numwant 50 stand for "none" and "default" (-1)
    ip: int
    url_data: bytes


@frozen
class UDPScrapePacket(Record):
    """A client's BEP 15 scrape, as a UDP tracker reads it (test trackers): one or more info-hashes,
    bounded by ``UDP_MAX_SCRAPE``."""

    connection_id: int
    tid: int
    info_hashes: tuple[bytes, ...]


def _url_data(options: bytes) -> bytes:
    # BEP 41: type 0 ends the list, type 1 is one byte of padding, others carry a length
    out = bytearray()
    pos = 0
    while pos < len(options):
        kind = options[pos]
        pos += 1
        if kind == _BEP41_END:
            break
        if kind == _BEP41_NOP:
            continue
        if pos >= len(options):
            break
        size = options[pos]
        chunk = options[pos + 1 : pos + 1 + size]
        pos += 1 + size
        if kind == _BEP41_URL_DATA:
            out += chunk
    return bytes(out)


def parse_udp_request(data: bytes) -> UDPConnectPacket | UDPAnnouncePacket | UDPScrapePacket:
    """A client's request as a UDP tracker reads it; :class:`TrackerError` if it is not one."""
    if len(data) < _CONNECT_REQ.size:
        raise TrackerError(f"bad UDP request: {len(data)} bytes")
    connection_id, action, tid = _CONNECT_REQ.unpack_from(data)
    if action == CONNECT:
        if connection_id != UDP_PROTOCOL_ID:
            raise TrackerError("bad UDP request: wrong protocol id")
        return UDPConnectPacket(tid)
    if action == SCRAPE:
        hashes = data[_CONNECT_REQ.size :]
        if not hashes or len(hashes) % 20 or len(hashes) > 20 * UDP_MAX_SCRAPE:
            raise TrackerError("bad UDP request: scrape info-hashes")
        return UDPScrapePacket(
            connection_id, tid, tuple(hashes[i : i + 20] for i in range(0, len(hashes), 20))
        )
    if action != ANNOUNCE:
        raise TrackerError(f"bad UDP request: action {action}")
    if len(data) < UDP_ANNOUNCE_SIZE:
        raise TrackerError(f"bad UDP request: a {len(data)}-byte announce")
    (_, _, _, info_hash, peer_id, downloaded, left, uploaded,
     event, ip, key, numwant, port) = _ANNOUNCE_REQ.unpack_from(data)  # fmt: skip
    if event not in _UDP_EVENT_NAMES:
        raise TrackerError(f"bad UDP request: event {event}")
    try:
        req = AnnounceRequest(
            info_hash, peer_id, port, uploaded, downloaded, left, _UDP_EVENT_NAMES[event],
            numwant=numwant if numwant >= 0 else 50, key=key,
        )  # fmt: skip
    except ValueError as exc:
        raise TrackerError(f"bad UDP request: {exc}") from None
    return UDPAnnouncePacket(connection_id, tid, req, ip, _url_data(data[UDP_ANNOUNCE_SIZE:]))


def compact_peers(peers: Iterable[PeerAddr], *, ipv6: bool) -> bytes:
    """Peers of one family as compact entries (6 or 18 bytes); the other family is left out."""
    out = bytearray()
    for peer in peers:
        ip = ipaddress.ip_address(peer.host)
        if (ip.version == 6) == ipv6:
            out += ip.packed + struct.pack("!H", peer.port)
    return bytes(out)


def udp_connect_reply(tid: int, connection_id: int) -> bytes:
    return _CONNECT_REPLY.pack(CONNECT, tid, connection_id)


def udp_announce_reply(
    tid: int, *, interval: int, leechers: int, seeders: int, peers: bytes = b""
) -> bytes:
    """``peers`` is compact entries as they go on the wire (see :func:`compact_peers`)."""
    return _ANNOUNCE_REPLY.pack(ANNOUNCE, tid, interval, leechers, seeders) + peers


def udp_scrape_reply(tid: int, results: Iterable[ScrapeResult]) -> bytes:
    return _HEADER.pack(SCRAPE, tid) + b"".join(
        _SCRAPE_ENTRY.pack(r.complete, r.downloaded, r.incomplete) for r in results
    )


def udp_error_reply(tid: int, message: bytes | str) -> bytes:
    text = message.encode() if isinstance(message, str) else message
    return _HEADER.pack(ERROR, tid) + text


# the client's side of one exchange, as a state machine


@frozen
class UDPRetry(Record):
    """BEP 15 retransmission: the n-th send of a packet waits ``base * 2**n`` s for a reply.

    BEP 15 itself says 15 s and up to 8 doublings (``UDPRetry()``: hours);
    a command-line fetch wants ``UDPRetry(2, 2)``: a dead tracker costs 6 s.
    """

    base: float = 15.0
    tries: int = 9  # sends of one packet, so n = 0..8

    def __post_init__(self) -> None:
        if not self.base > 0 or self.tries < 1:
            raise ValueError("UDPRetry needs base > 0 and tries >= 1")

    def wait(self, n: int) -> float:
        return float(self.base * 2**n)

    @property
    def total(self) -> float:
        """How long one packet is retried before the exchange gives up."""
        return sum(self.wait(n) for n in range(self.tries))


T = TypeVar("T")
_Stage: TypeAlias = Literal["connect", "request"]  # what the packet in flight asks for


class UDPExchange(Generic[T]):
    """One request to a UDP tracker: connect (unless a fresh connection id is known), then ask.

    Sans-IO: send what :meth:`start`, :meth:`receive` and :meth:`timeout`
    return; give every datagram from the tracker to :meth:`receive`; call
    :meth:`timeout` once ``deadline`` has passed.  Time is always an argument.
    When ``done``, ``result`` holds the answer (an error reply or running out
    of tries raises :class:`TrackerError` instead).  ``connection`` is the
    connection id and when it was received, for the caller to reuse: BEP 15
    lets it serve for a minute.
    """

    what = "request"

    def __init__(
        self,
        *,
        retry: UDPRetry | None = None,
        connection: tuple[int, float] | None = None,
        new_tid: Callable[[], int] | None = None,
    ) -> None:
        self.retry = retry or UDPRetry()
        self.connection = connection
        self._new_tid = new_tid or (lambda: secrets.randbits(32))
        self.done = False
        self.result: T | None = None
        self.ignored = 0  # stray datagrams dropped
        self.last_ignored: str | None = None
        self._stage: _Stage | None = None  # None until started
        self._tid = 0
        self._packet = b""
        self._sends = 0  # of the current packet
        self._sent_at = 0.0
        self._began = 0.0
        self._fresh = False  # the connection id came from this exchange's own connect
        self._reconnected = False
        self._asked = 0  # sends of the request before the latest reconnect

    def _build(self, connection_id: int, tid: int) -> bytes:
        raise NotImplementedError

    def _parse(self, data: bytes, tid: int) -> T:
        raise NotImplementedError

    @property
    def deadline(self) -> float:
        """When the packet sent last stops waiting for its reply."""
        return self._sent_at + self.retry.wait(self._sends - 1)

    def start(self, now: float) -> bytes:
        if self._stage is not None:
            raise RuntimeError("exchange already started")
        self._began = now
        if self.connection is not None and now - self.connection[1] < CONNECTION_ID_LIFETIME:
            return self._ask(now)
        self.connection = None
        return self._connect(now)

    def _send(self, stage: _Stage, packet: bytes, tid: int, now: float, sends: int = 1) -> bytes:
        self._stage, self._packet, self._tid = stage, packet, tid
        self._sends, self._sent_at = sends, now
        return packet

    def _connect(self, now: float) -> bytes:
        tid = self._new_tid()
        return self._send("connect", udp_connect_request(tid), tid, now)

    def _ask(self, now: float) -> bytes:
        assert self.connection is not None
        tid = self._new_tid()
        # After a reconnect the count goes on from where the request left it,
        # so a tracker that answers connects but never requests cannot keep
        # us retrying for ever.
        packet = self._build(self.connection[0], tid)
        return self._send("request", packet, tid, now, self._asked + 1)

    def receive(self, data: bytes, now: float) -> bytes | None:
        """Take one datagram; return the next packet to send, if any."""
        if self.done or self._stage is None:
            return None  # a late duplicate
        try:
            if self._stage == "connect":
                self.connection = (parse_udp_connect(data, self._tid), now)
                self._fresh = True
                return self._ask(now)
            self.result = self._parse(data, self._tid)
        except UDPIgnored as exc:
            self.ignored += 1
            self.last_ignored = str(exc)
            return None
        except TrackerError:
            if self._stage == "request" and not self._fresh and not self._reconnected:
                # Some trackers answer an expired connection id with an error
                # packet: one new connect tells that apart from a real refusal.
                self._reconnected = True
                self._asked = self._sends
                return self._connect(now)
            self.done = True
            raise
        self.done = True
        return None

    def timeout(self, now: float) -> bytes:
        """The packet to send again; :class:`TrackerError` once the tries are used up."""
        if self._stage is None or self.done:
            raise RuntimeError("timeout() on an exchange that is not waiting")
        if self._sends >= self.retry.tries:
            self.done = True
            what = "connect" if self._stage == "connect" else self.what
            took = round(now - self._began, 1)
            msg = f"no reply to {self._sends} {what} requests in {took:g} s"
            if self.ignored:
                msg += f"; ignored {self.ignored} bad packets (last: {self.last_ignored})"
            raise TrackerError(msg)
        sends = self._sends
        if self._stage == "request" and (
            not self._fresh
            or self.connection is None
            or now - self.connection[1] >= CONNECTION_ID_LIFETIME
        ):
            # Trackers drop packets with a stale connection id without a word
            # (opentracker does): silence may mean "connect again".
            self._asked = sends
            self._connect(now)
        self._sends = sends + 1
        self._sent_at = now
        return self._packet


class UDPAnnounce(UDPExchange[AnnounceResponse]):
    """A BEP 15 announce exchange; ``ipv6`` says the tracker was reached over IPv6, so its reply
    lists 18-byte peers."""

    what = "announce"

    def __init__(
        self,
        req: AnnounceRequest,
        *,
        ipv6: bool = False,
        url_data: bytes = b"",
        max_peers: int = MAX_PEERS,
        retry: UDPRetry | None = None,
        connection: tuple[int, float] | None = None,
        new_tid: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(retry=retry, connection=connection, new_tid=new_tid)
        self.req = req
        self.ipv6 = ipv6
        self.url_data = url_data
        self.max_peers = max_peers

    def _build(self, connection_id: int, tid: int) -> bytes:
        return udp_announce_request(connection_id, tid, self.req, url_data=self.url_data)

    def _parse(self, data: bytes, tid: int) -> AnnounceResponse:
        return parse_udp_announce(data, tid, ipv6=self.ipv6, max_peers=self.max_peers)


class UDPScrape(UDPExchange[tuple[ScrapeResult, ...]]):
    """A BEP 15 scrape exchange; the results come in the order of ``info_hashes``."""

    what = "scrape"

    def __init__(
        self,
        info_hashes: Sequence[bytes],
        *,
        retry: UDPRetry | None = None,
        connection: tuple[int, float] | None = None,
        new_tid: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(retry=retry, connection=connection, new_tid=new_tid)
        _check_hashes(info_hashes)
        self.info_hashes = tuple(info_hashes)

    def _build(self, connection_id: int, tid: int) -> bytes:
        return udp_scrape_request(connection_id, tid, self.info_hashes)

    def _parse(self, data: bytes, tid: int) -> tuple[ScrapeResult, ...]:
        return parse_udp_scrape(data, tid, len(self.info_hashes))
