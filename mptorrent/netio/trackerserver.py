"""An embedded HTTP tracker for ``mptorrent demo``, ``mptorrent tracker`` and LANs.

:class:`TrackerState` is the tracker without any I/O: a request target, the
client's address and the time go in, an HTTP status and a bencoded body come
out.  :class:`TrackerServer` puts it behind ``http.server`` in a daemon thread.
Unlike Debian's opentracker it accepts any info-hash (no whitelist), and unlike
opentracker it never hands a peer its own address back.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, unquote_to_bytes

from mptorrent import __version__
from mptorrent.errors import TrackerError
from mptorrent.messages import PeerAddr
from mptorrent.proto import bencode
from mptorrent.proto.bencode import BValue
from mptorrent.record import Record, mutable

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 60
DEFAULT_NUMWANT = 50
MAX_NUMWANT = 200
# Bounds on what strangers on the network can make us remember.
MAX_TORRENTS = 10_000
MAX_PEERS_PER_TORRENT = 10_000
MAX_SCRAPE_HASHES = 100
REQUEST_TIMEOUT = 10.0  # seconds a client may take to send its request

Query = dict[str, list[bytes]]


class _BadRequest(Exception):
    """A request we answer with a bencoded failure reason."""


@mutable(slots=True)
class _Peer(Record):
    """What the tracker remembers of one announcing peer; it expires once ``seen`` (the caller's
    clock) is older than the peer timeout."""

    peer_id: bytes
    seeder: bool
    seen: float


@mutable(slots=True)
class _Swarm(Record):
    """The peers of one info-hash, by the address they announced; swept away once it has no peers
    and no completed downloads. Guarded by the :class:`TrackerState` lock."""

    peers: dict[PeerAddr, _Peer] = field(default_factory=dict)
    downloaded: int = 0  # "completed" events, for scrape

    def counts(self) -> tuple[int, int]:
        seeders = sum(p.seeder for p in self.peers.values())
        return seeders, len(self.peers) - seeders


def parse_query(query: str) -> Query:
    """``a=1&b=%ff`` -> ``{"a": [b"1"], "b": [b"\\xff"]}``, keeping values as raw bytes.

    ``query`` is what ``http.server`` decoded as Latin-1, so encoding it back
    gives the bytes on the wire; ``+`` is left alone because clients send a
    literal ``+`` inside binary info-hashes (form encoding is not URL encoding).
    """
    out: Query = {}
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        out.setdefault(unquote(key, "latin-1"), []).append(
            unquote_to_bytes(value.encode("latin-1", "replace"))
        )
    return out


def _normal_ip(text: str) -> str:
    ip = ipaddress.ip_address(text.strip("[]"))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)  # a dual-stack socket shows IPv4 clients as ::ffff:a.b.c.d
    return str(ip)


def _one(query: Query, key: str) -> bytes | None:
    values = query.get(key)
    return values[0] if values else None


def _int(query: Query, key: str, default: int | None = None) -> int:
    raw = _one(query, key)
    if raw is None:
        if default is None:
            raise _BadRequest(f"missing {key}")
        return default
    if not raw.isdigit() or len(raw) > 20:
        raise _BadRequest(f"{key} is not a non-negative integer")
    return int(raw)


def _hash(raw: bytes | None, key: str) -> bytes:
    if raw is None or len(raw) != 20:
        raise _BadRequest(f"{key} must be 20 bytes")
    return raw


class TrackerState:
    """Swarm bookkeeping behind the HTTP tracker; thread-safe, no I/O, no clock."""

    def __init__(
        self,
        interval: int = DEFAULT_INTERVAL,
        *,
        peer_timeout: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if interval < 1:
            raise ValueError("interval must be at least 1 second")
        self.interval = interval
        # A peer that missed two announces is gone (opentracker waits 1.5 intervals).
        self.peer_timeout = peer_timeout if peer_timeout is not None else 2 * interval + 30
        self._rng = rng or random.Random()
        self._swarms: dict[bytes, _Swarm] = {}
        self._lock = threading.Lock()
        self._last_sweep = -float("inf")

    def handle(self, target: str, client_ip: str, now: float) -> tuple[int, bytes]:
        """Answer one GET of ``target`` (path and query) from ``client_ip`` at ``now``."""
        path, _, query = target.partition("?")
        try:
            if path == "/announce":
                params = parse_query(query)
                with self._lock:
                    self._sweep(now)
                    return 200, self._announce(params, client_ip, now)
            if path == "/scrape":
                params = parse_query(query)
                with self._lock:
                    self._sweep(now)
                    return 200, self._scrape(params)
        except _BadRequest as exc:
            # 200, not 400: BEP 3 clients look for the reason only in a normal reply
            return 200, bencode.encode({b"failure reason": str(exc).encode()})
        return 404, bencode.encode({b"failure reason": b"no such path; try /announce"})

    def peers(self, info_hash: bytes) -> tuple[PeerAddr, ...]:
        """The addresses currently held for ``info_hash``, expired ones included."""
        with self._lock:
            swarm = self._swarms.get(info_hash)
            return tuple(swarm.peers) if swarm is not None else ()

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < self.interval:
            return
        self._last_sweep = now
        cutoff = now - self.peer_timeout
        for info_hash, swarm in list(self._swarms.items()):
            for addr, peer in list(swarm.peers.items()):
                if peer.seen < cutoff:
                    del swarm.peers[addr]
            if not swarm.peers and not swarm.downloaded:
                del self._swarms[info_hash]

    def _announce(self, q: Query, client_ip: str, now: float) -> bytes:
        info_hash = _hash(_one(q, "info_hash"), "info_hash")
        peer_id = _one(q, "peer_id")
        if peer_id is None or len(peer_id) != 20:
            raise _BadRequest("peer_id must be 20 bytes")
        port = _int(q, "port")
        if not 0 < port <= 0xFFFF:
            raise _BadRequest("port is out of range")
        left = _int(q, "left", 1)  # without "left" the peer is taken for a leecher
        try:
            numwant = min(_int(q, "numwant", DEFAULT_NUMWANT), MAX_NUMWANT)
        except _BadRequest:
            numwant = DEFAULT_NUMWANT  # some clients send -1 for "the default"
        event = (_one(q, "event") or b"").decode("latin-1")
        raw_ip = _one(q, "ip")
        try:
            ip = _normal_ip(raw_ip.decode("ascii") if raw_ip is not None else client_ip)
        except (UnicodeDecodeError, ValueError):
            raise _BadRequest("ip is not an IP address") from None
        me = PeerAddr(ip, port)

        swarm = self._swarms.get(info_hash)
        if event == "stopped":
            if swarm is not None:
                swarm.peers.pop(me, None)
            return self._reply(swarm, [], compact=True, with_ids=False)
        if swarm is None:
            if len(self._swarms) >= MAX_TORRENTS:
                raise _BadRequest("tracker is full")
            swarm = self._swarms[info_hash] = _Swarm()
        if me not in swarm.peers and len(swarm.peers) >= MAX_PEERS_PER_TORRENT:
            raise _BadRequest("swarm is full")
        if event == "completed":
            swarm.downloaded += 1
        swarm.peers[me] = _Peer(peer_id, left == 0, now)

        cutoff = now - self.peer_timeout
        others = [
            addr
            for addr, peer in swarm.peers.items()
            if addr != me and peer.peer_id != peer_id and peer.seen >= cutoff
        ]
        chosen = self._rng.sample(others, min(numwant, len(others)))
        return self._reply(
            swarm,
            chosen,
            compact=_one(q, "compact") == b"1",
            with_ids=_one(q, "no_peer_id") != b"1",
        )

    def _reply(
        self, swarm: _Swarm | None, chosen: list[PeerAddr], *, compact: bool, with_ids: bool
    ) -> bytes:
        seeders, leechers = swarm.counts() if swarm is not None else (0, 0)
        reply: dict[bytes, BValue] = {
            b"interval": self.interval,
            b"min interval": max(self.interval // 2, 1),
            b"complete": seeders,
            b"incomplete": leechers,
        }
        if compact:
            v4, v6 = bytearray(), bytearray()
            for addr in chosen:
                ip = ipaddress.ip_address(addr.host)
                (v6 if ip.version == 6 else v4).extend(ip.packed + addr.port.to_bytes(2, "big"))
            reply[b"peers"] = bytes(v4)
            if v6:
                reply[b"peers6"] = bytes(v6)
        else:
            assert swarm is not None or not chosen
            items: list[BValue] = []
            for addr in chosen:
                item: dict[bytes, BValue] = {b"ip": addr.host.encode(), b"port": addr.port}
                if with_ids and swarm is not None:
                    item[b"peer id"] = swarm.peers[addr].peer_id
                items.append(item)
            reply[b"peers"] = items
        return bencode.encode(reply)

    def _scrape(self, q: Query) -> bytes:
        wanted = [_hash(h, "info_hash") for h in q.get("info_hash", [])]
        if len(wanted) > MAX_SCRAPE_HASHES:
            raise _BadRequest(f"more than {MAX_SCRAPE_HASHES} info_hash values")
        files: dict[bytes, BValue] = {}
        for info_hash in wanted or list(self._swarms):
            swarm = self._swarms.get(info_hash)
            seeders, leechers = swarm.counts() if swarm is not None else (0, 0)
            files[info_hash] = {
                b"complete": seeders,
                b"incomplete": leechers,
                b"downloaded": swarm.downloaded if swarm is not None else 0,
            }
        return bencode.encode({b"files": files})


# -- HTTP ---------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Answers one HTTP request on its own thread through the shared :class:`TrackerState`, then
    closes the connection; logs at debug level only."""

    server: _HTTPServer
    server_version = f"mptorrent/{__version__}"
    timeout = REQUEST_TIMEOUT

    def do_GET(self) -> None:
        status, body = self.server.state.handle(self.path, self.client_address[0], time.monotonic())
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.client_address[0], format % args)


class _HTTPServer(ThreadingHTTPServer):
    """The listening socket of a :class:`TrackerServer`: one daemon thread per request, IPv6 when
    the host is an IPv6 literal, and no reverse DNS lookup at bind."""

    daemon_threads = True
    # The default backlog of 5 drops SYNs when a swarm starts at once, and each
    # dropped SYN costs its client a one-second retransmit.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], state: TrackerState) -> None:
        self.state = state
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that can
        # take seconds on a machine without working DNS; we need no server name.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def handle_error(self, request: object, client_address: object) -> None:
        log.debug("request from %s failed", client_address, exc_info=True)


class TrackerServer:
    """The HTTP tracker on ``host:port`` (0 picks a free port), served from a daemon thread."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, interval: int = DEFAULT_INTERVAL
    ) -> None:
        self.host = host
        self.state = TrackerState(interval)
        self._requested_port = port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> TrackerServer:
        if self._httpd is not None:
            raise RuntimeError("tracker already started")
        try:
            self._httpd = _HTTPServer((self.host, self._requested_port), self.state)
        except OSError as exc:
            where = f"{self.host}:{self._requested_port}"
            raise TrackerError(f"cannot listen on {where}: {exc.strerror or exc}") from None
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"tracker-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(5)

    def __enter__(self) -> TrackerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("tracker not started")
        return int(self._httpd.server_address[1])

    @property
    def announce_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/announce"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the serving thread to end (it ends only through :meth:`stop`)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)


def serve(
    host: str = "127.0.0.1",
    port: int = 6969,
    interval: int = DEFAULT_INTERVAL,
    *,
    on_ready: Callable[[TrackerServer], None] | None = None,
) -> None:
    """Run a tracker in the foreground until KeyboardInterrupt, which is re-raised.

    ``on_ready`` is called once the socket is listening (to print the URL, say).
    """
    server = TrackerServer(host, port, interval).start()
    try:
        if on_ready is not None:
            on_ready(server)
        while server.running:
            # short joins so that Ctrl-C reaches the main thread promptly
            server.join(0.5)
    finally:
        server.stop()
