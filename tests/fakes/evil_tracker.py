"""A scripted, possibly hostile tracker on loopback: HTTP via ``http.server``, UDP via a socket.

    with EvilTracker("127.0.0.21") as evil:
        evil.http = lambda req: HttpReply(body=b"<html>garbage")
        evil.udp_announce = lambda pkt, _src: [b"\\x00\\x01"]
        ... evil.http_url(), evil.udp_url() ...

By default both sides answer honestly with ``evil.peers``; a test replaces the
parts it wants to turn hostile.  UDP scripts return the datagrams to send back
(an empty list is silence).  Honest UDP replies check the connection id the
way opentracker does: a packet with any other id is dropped without a word.
Everything received is recorded, so tests can count requests.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mptorrent.errors import TrackerError
from mptorrent.messages import PeerAddr
from mptorrent.netio.trackerserver import parse_query
from mptorrent.proto import bencode
from mptorrent.proto import tracker as tr

CONNECTION_ID = 0x0123456789ABCDEF


@dataclass(frozen=True)
class HttpRequest:
    client: str  # the source address of the connection
    path: str
    query: dict[str, list[bytes]]


@dataclass
class HttpReply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Sent after ``body`` until the client hangs up; no Content-Length unless set in headers.
    endless: bytes | None = None


@dataclass(frozen=True)
class UdpRequest:
    client: tuple[Any, ...]
    data: bytes


HttpScript = Callable[[HttpRequest], "HttpReply | bytes"]
UdpConnectScript = Callable[[tr.UDPConnectPacket, tuple[Any, ...]], list[bytes]]
UdpAnnounceScript = Callable[[tr.UDPAnnouncePacket, tuple[Any, ...]], list[bytes]]
UdpScrapeScript = Callable[[tr.UDPScrapePacket, tuple[Any, ...]], list[bytes]]


def compact(peers: Iterable[PeerAddr], *, ipv6: bool = False) -> bytes:
    return tr.compact_peers(peers, ipv6=ipv6)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        req = HttpRequest(self.client_address[0], path, parse_query(query))
        owner = self.server.owner
        with owner.lock:
            owner.http_requests.append(req)
        reply = owner.http(req)
        if isinstance(reply, bytes):
            reply = HttpReply(body=reply)
        try:
            self.send_response(reply.status)
            headers = {"Connection": "close", **reply.headers}
            if reply.endless is None and "Content-Length" not in headers:
                headers["Content-Length"] = str(len(reply.body))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(reply.body)
            if reply.endless is not None:
                while not owner.stopping.is_set():
                    self.wfile.write(reply.endless)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading, as it should
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], owner: EvilTracker) -> None:
        self.owner = owner
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # skip HTTPServer's reverse DNS lookup of our own name
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class EvilTracker:
    def __init__(self, host: str = "127.0.0.1", *, interval: int = 1800) -> None:
        self.host = host
        self.interval = interval
        self.peers: list[PeerAddr] = []
        self.connection_id = CONNECTION_ID
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.http_requests: list[HttpRequest] = []
        self.udp_requests: list[UdpRequest] = []
        self.http: HttpScript = self.honest_http
        self.udp_connect: UdpConnectScript = self.honest_connect
        self.udp_announce: UdpAnnounceScript = self.honest_announce
        self.udp_scrape: UdpScrapeScript = self.honest_scrape
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._httpd = _HTTPServer((host, 0), self)
        self._udp = socket.socket(family, socket.SOCK_DGRAM)
        self._udp.bind((host, 0))
        self._udp.settimeout(0.05)
        self._threads = [
            threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True),
            threading.Thread(target=self._serve_udp, daemon=True),
        ]

    # -- lifecycle --

    def __enter__(self) -> EvilTracker:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        for t in self._threads:
            t.join(5)
        self._udp.close()

    @property
    def _netloc(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def http_url(self, path: str = "/announce") -> str:
        return f"http://{self._netloc}:{self._httpd.server_address[1]}{path}"

    def udp_url(self, path: str = "/announce") -> str:
        return f"udp://{self._netloc}:{self._udp.getsockname()[1]}{path}"

    def udp_kinds(self) -> list[str]:
        """The kinds of the UDP requests received so far: connect, announce, scrape, junk."""
        out = []
        with self.lock:
            requests = list(self.udp_requests)
        for r in requests:
            try:
                pkt = tr.parse_udp_request(r.data)
            except TrackerError:
                out.append("junk")
                continue
            out.append(
                {tr.UDPConnectPacket: "connect", tr.UDPAnnouncePacket: "announce"}.get(
                    type(pkt), "scrape"
                )
            )
        return out

    # -- honest behaviour, for tests to replace piece by piece --

    def honest_http(self, req: HttpRequest) -> HttpReply | bytes:
        if req.path.endswith("/scrape"):
            files = {
                h: {b"complete": 1, b"incomplete": 2, b"downloaded": 3}
                for h in req.query.get("info_hash", [])
            }
            return bencode.encode({b"files": files})
        return bencode.encode(
            {
                b"interval": self.interval,
                b"peers": compact(self.peers),
                b"peers6": compact(self.peers, ipv6=True),
            }
        )

    def honest_connect(self, pkt: tr.UDPConnectPacket, client: tuple[Any, ...]) -> list[bytes]:
        return [tr.udp_connect_reply(pkt.tid, self.connection_id)]

    def honest_announce(self, pkt: tr.UDPAnnouncePacket, client: tuple[Any, ...]) -> list[bytes]:
        if pkt.connection_id != self.connection_id:
            return []
        ipv6 = self._udp.family == socket.AF_INET6
        peers = compact(self.peers, ipv6=ipv6)
        reply = tr.udp_announce_reply(
            pkt.tid, interval=self.interval, leechers=len(self.peers), seeders=0, peers=peers
        )
        return [reply]

    def honest_scrape(self, pkt: tr.UDPScrapePacket, client: tuple[Any, ...]) -> list[bytes]:
        if pkt.connection_id != self.connection_id:
            return []
        return [tr.udp_scrape_reply(pkt.tid, [tr.ScrapeResult(1, 2, 3)] * len(pkt.info_hashes))]

    # -- UDP loop --

    def _serve_udp(self) -> None:
        while not self.stopping.is_set():
            try:
                data, client = self._udp.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.udp_requests.append(UdpRequest(client, data))
            try:
                pkt = tr.parse_udp_request(data)
            except TrackerError:
                continue
            if isinstance(pkt, tr.UDPConnectPacket):
                replies = self.udp_connect(pkt, client)
            elif isinstance(pkt, tr.UDPAnnouncePacket):
                replies = self.udp_announce(pkt, client)
            else:
                replies = self.udp_scrape(pkt, client)
            for r in replies:
                try:
                    self._udp.sendto(r, client)
                except OSError:
                    pass


def need_ipv6_loopback() -> None:
    """Skip when this machine has no IPv6 loopback at all; fail when ::1 exists but won't bind."""
    import pytest

    if not socket.has_ipv6:
        pytest.skip("this Python was built without IPv6")
    try:
        with open("/proc/net/if_inet6") as fh:
            configured = any(line.split()[0] == "0" * 31 + "1" for line in fh if line.strip())
    except OSError:
        pytest.skip("IPv6 is disabled in this kernel (no /proc/net/if_inet6)")
    if not configured:
        pytest.skip("::1 is not configured on the loopback interface")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        pytest.fail(f"::1 is configured but cannot be bound: {exc}")
