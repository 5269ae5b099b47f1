"""mptorrent.netio.trackerserver and mptorrent.netio.net: our tracker and HTTP client, on loopback.

The first part drives :class:`TrackerState` directly (no sockets, a fake
clock).  The second runs :class:`TrackerServer` and talks to it with
:func:`announce_http` / :func:`scrape_http`, each test peer connecting from its
own 127.x address.  The last part points :func:`http_get` at scripted loopback
servers that misbehave: redirect loops, endless bodies, one byte a second, bad
TLS certificates.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import pytest

from mptorrent.errors import TrackerError
from mptorrent.messages import PeerAddr
from mptorrent.netio import net, trackerserver
from mptorrent.netio.net import HTTPStatusError, announce_http, http_get, scrape_http
from mptorrent.netio.trackerserver import TrackerServer, TrackerState, parse_query, serve
from mptorrent.proto import bencode
from mptorrent.proto.tracker import AnnounceRequest, ScrapeResult, make_peer_id, parse_announce

IH = bytes.fromhex("aa" * 20)
IH2 = bytes.fromhex("bb" * 20)
PID_A = b"-MP0100-aaaaaaaaaaaa"
PID_B = b"-MP0100-bbbbbbbbbbbb"
PID_C = b"-MP0100-cccccccccccc"
A, B, C = "127.0.0.11", "127.0.0.12", "127.0.0.13"


# -- TrackerState without sockets ---------------------------------------------


def q(**params: bytes | str | int) -> str:
    return "&".join(
        f"{k}={quote_from_bytes(v, safe='') if isinstance(v, bytes) else v}"
        for k, v in params.items()
    )


class Client:
    """Announces to a TrackerState as one peer, returning the decoded reply."""

    def __init__(self, state: TrackerState, ip: str, peer_id: bytes, port: int) -> None:
        self.state, self.ip, self.peer_id, self.port = state, ip, peer_id, port

    def raw(self, now: float = 0.0, info_hash: bytes = IH, **extra: Any) -> tuple[int, bytes]:
        params: dict[str, Any] = dict(
            info_hash=info_hash, peer_id=self.peer_id, port=self.port,
            uploaded=0, downloaded=0, left=100, compact=1,
        )  # fmt: skip
        params.update(extra)
        return self.state.handle("/announce?" + q(**params), self.ip, now)

    def announce(self, now: float = 0.0, **extra: Any) -> dict[bytes, Any]:
        status, body = self.raw(now, **extra)
        assert status == 200
        reply = bencode.decode(body, max_size=bencode.MAX_TRACKER_REPLY_SIZE)
        assert b"failure reason" not in reply, reply
        return dict(reply)

    def peers(self, now: float = 0.0, **extra: Any) -> set[PeerAddr]:
        return set(parse_announce(self.raw(now, **extra)[1]).peers)


def scrape(state: TrackerState, *hashes: bytes) -> dict[bytes, dict[bytes, int]]:
    target = "/scrape?" + "&".join(f"info_hash={quote_from_bytes(h, safe='')}" for h in hashes)
    status, body = state.handle(target, A, 0.0)
    assert status == 200
    return dict(bencode.decode(body, max_size=bencode.MAX_TRACKER_REPLY_SIZE)[b"files"])


@pytest.fixture
def state() -> TrackerState:
    import random

    return TrackerState(60, rng=random.Random(7))


def test_first_peer_gets_an_empty_list_and_the_interval(state: TrackerState) -> None:
    reply = Client(state, A, PID_A, 6881).announce(event="started")
    assert reply == {
        b"interval": 60, b"min interval": 30, b"complete": 0, b"incomplete": 1, b"peers": b"",
    }  # fmt: skip


def test_peers_see_each_other_but_never_themselves(state: TrackerState) -> None:
    a, b = Client(state, A, PID_A, 6881), Client(state, B, PID_B, 6882)
    assert a.peers(event="started") == set()
    assert b.peers(event="started") == {PeerAddr(A, 6881)}
    assert a.peers() == {PeerAddr(B, 6882)}
    # the same client from a second address is still itself
    assert Client(state, C, PID_A, 7000).peers() == {PeerAddr(B, 6882)}


def test_seeders_and_leechers_are_counted(state: TrackerState) -> None:
    Client(state, A, PID_A, 6881).announce(left=0)
    reply = Client(state, B, PID_B, 6882).announce(left=5)
    assert (reply[b"complete"], reply[b"incomplete"]) == (1, 1)
    assert scrape(state, IH) == {IH: {b"complete": 1, b"downloaded": 0, b"incomplete": 1}}


def test_stopped_removes_the_peer(state: TrackerState) -> None:
    a, b = Client(state, A, PID_A, 6881), Client(state, B, PID_B, 6882)
    a.announce(event="started")
    reply = a.announce(event="stopped")
    assert reply[b"peers"] == b"" and reply[b"incomplete"] == 0
    assert b.peers() == set()
    Client(state, C, PID_C, 1).announce(event="stopped", info_hash=IH2)  # unknown: fine


def test_completed_counts_as_a_download(state: TrackerState) -> None:
    a = Client(state, A, PID_A, 6881)
    a.announce(event="started")
    a.announce(event="completed", left=0)
    assert scrape(state, IH)[IH] == {b"complete": 1, b"downloaded": 1, b"incomplete": 0}


def test_compact_and_dictionary_peers(state: TrackerState) -> None:
    Client(state, A, PID_A, 6881).announce()
    b = Client(state, B, PID_B, 6882)
    assert b.announce(compact=1)[b"peers"] == bytes([127, 0, 0, 11]) + (6881).to_bytes(2, "big")
    dict_peer = {b"ip": A.encode(), b"peer id": PID_A, b"port": 6881}
    assert b.announce(compact=0)[b"peers"] == [dict_peer]
    # no compact parameter means dictionary peers, as in BEP 3
    _, body = state.handle("/announce?" + q(info_hash=IH, peer_id=PID_B, port=6882, left=1), B, 0.0)
    assert isinstance(bencode.decode(body, max_size=bencode.MAX_TRACKER_REPLY_SIZE)[b"peers"], list)
    assert b.announce(compact=0, no_peer_id=1)[b"peers"] == [{b"ip": A.encode(), b"port": 6881}]


def test_ipv6_peers_go_in_peers6(state: TrackerState) -> None:
    Client(state, "::1", PID_A, 6881).announce()
    Client(state, "::ffff:127.0.0.12", PID_B, 6882).announce()  # dual-stack socket view of B
    c = Client(state, C, PID_C, 6883)
    reply = c.announce(compact=1)
    assert reply[b"peers"] == bytes([127, 0, 0, 12]) + (6882).to_bytes(2, "big")
    assert reply[b"peers6"] == bytes(15) + b"\x01" + (6881).to_bytes(2, "big")
    assert c.peers(compact=1) == {PeerAddr("::1", 6881), PeerAddr(B, 6882)}
    assert c.peers(compact=0) == {PeerAddr("::1", 6881), PeerAddr(B, 6882)}


def test_ip_parameter_overrides_the_source_address(state: TrackerState) -> None:
    Client(state, A, PID_A, 6881).announce(ip="10.1.2.3")
    assert Client(state, B, PID_B, 6882).peers() == {PeerAddr("10.1.2.3", 6881)}


def test_numwant_limits_the_list(state: TrackerState) -> None:
    for i in range(30):
        Client(state, f"127.0.1.{i}", b"-MP0100-%012d" % i, 6881).announce()
    me = Client(state, A, PID_A, 6881)
    assert len(me.peers(numwant=5)) == 5
    assert len(me.peers()) == 30
    assert me.peers(numwant=0) == set()
    assert len(me.peers(numwant=-1)) == 30  # nonsense means the default (50)
    assert len(me.peers(numwant=10**6)) == 30


def test_silent_peers_expire(state: TrackerState) -> None:
    Client(state, A, PID_A, 6881).announce(now=0.0)
    b = Client(state, B, PID_B, 6882)
    assert b.peers(now=100.0) == {PeerAddr(A, 6881)}
    assert b.peers(now=1000.0) == set()
    assert state.peers(IH) == (PeerAddr(B, 6882),)


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"info_hash": b"short"}, b"info_hash must be 20 bytes"),
        ({"peer_id": b"x"}, b"peer_id must be 20 bytes"),
        ({"port": 0}, b"port is out of range"),
        ({"port": 70000}, b"port is out of range"),
        ({"port": "-1"}, b"port is not a non-negative integer"),
        ({"left": "lots"}, b"left is not a non-negative integer"),
        ({"ip": "example.com"}, b"ip is not an IP address"),
    ],
)
def test_bad_announces_get_a_failure_reason(
    state: TrackerState, extra: dict[str, Any], reason: bytes
) -> None:
    status, body = Client(state, A, PID_A, 6881).raw(**extra)
    assert status == 200
    reply = bencode.decode(body, max_size=bencode.MAX_TRACKER_REPLY_SIZE)
    assert reply == {b"failure reason": reason}


def test_missing_fields_and_unknown_paths(state: TrackerState) -> None:
    assert state.handle("/announce", A, 0.0) == (
        200, bencode.encode({b"failure reason": b"info_hash must be 20 bytes"})
    )  # fmt: skip
    status, body = state.handle("/", A, 0.0)
    assert status == 404 and b"failure reason" in body


def test_scrape(state: TrackerState) -> None:
    Client(state, A, PID_A, 6881).announce(left=0)
    Client(state, B, PID_B, 6882).announce(info_hash=IH2)
    assert scrape(state, IH, IH2) == {
        IH: {b"complete": 1, b"downloaded": 0, b"incomplete": 0},
        IH2: {b"complete": 0, b"downloaded": 0, b"incomplete": 1},
    }
    unknown = b"\x01" * 20
    assert scrape(state, unknown) == {unknown: {b"complete": 0, b"downloaded": 0, b"incomplete": 0}}
    assert set(scrape(state)) == {IH, IH2}  # a full scrape
    _, body = state.handle("/scrape?info_hash=abc", A, 0.0)
    assert b"info_hash must be 20 bytes" in body


def test_tracker_is_bounded(state: TrackerState, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trackerserver, "MAX_TORRENTS", 1)
    monkeypatch.setattr(trackerserver, "MAX_PEERS_PER_TORRENT", 1)
    Client(state, A, PID_A, 6881).announce()
    assert b"tracker is full" in Client(state, A, PID_A, 6881).raw(info_hash=IH2)[1]
    assert b"swarm is full" in Client(state, B, PID_B, 6881).raw()[1]
    Client(state, A, PID_A, 6881).announce()  # a known peer may still re-announce


def test_parse_query_keeps_raw_bytes() -> None:
    # http.server hands us the request line decoded as Latin-1
    raw = "info_hash=%00+a\xff&x&=y&info_hash=%2B"
    assert parse_query(raw) == {"info_hash": [b"\x00+a\xff", b"+"], "x": [b""], "": [b"y"]}


# -- TrackerServer over loopback ----------------------------------------------


@pytest.fixture
def server() -> Iterator[TrackerServer]:
    with TrackerServer(interval=60) as srv:
        yield srv


def announce(srv: TrackerServer, src: str, peer_id: bytes, port: int, **kw: Any) -> Any:
    kw.setdefault("left", 100)
    req = AnnounceRequest(IH, peer_id, port, uploaded=0, downloaded=0, **kw)
    return announce_http(srv.announce_url, req, timeout=5, source_address=src)


def test_two_peers_find_each_other(server: TrackerServer) -> None:
    assert server.announce_url == f"http://127.0.0.1:{server.port}/announce"
    first = announce(server, A, PID_A, 6881, event="started")
    assert first.peers == () and first.interval == 60 and first.min_interval == 30
    second = announce(server, B, PID_B, 6882, event="started", left=0)
    assert second.peers == (PeerAddr(A, 6881),)
    assert (second.complete, second.incomplete) == (1, 1)
    assert announce(server, A, PID_A, 6881).peers == (PeerAddr(B, 6882),)
    assert scrape_http(server.announce_url, IH, timeout=5) == ScrapeResult(1, 1, 0)

    announce(server, B, PID_B, 6882, event="stopped", left=0)
    assert announce(server, A, PID_A, 6881).peers == ()
    assert scrape_http(server.announce_url, IH, timeout=5) == ScrapeResult(0, 1, 0)


def test_dictionary_peers_over_http(server: TrackerServer) -> None:
    announce(server, A, PID_A, 6881)
    assert announce(server, B, PID_B, 6882, compact=False).peers == (PeerAddr(A, 6881),)


def test_ipv6_tracker() -> None:
    try:
        srv = TrackerServer(host="::1").start()
    except TrackerError:
        pytest.skip("no IPv6 loopback here")
    try:
        assert srv.announce_url == f"http://[::1]:{srv.port}/announce"
        announce(srv, "::1", PID_A, 6881)
        assert announce(srv, "::1", PID_B, 6882).peers == (PeerAddr("::1", 6881),)
    finally:
        srv.stop()


def test_failure_reason_over_http(server: TrackerServer) -> None:
    req = AnnounceRequest(IH, PID_A, 6881, 0, 0, 1)
    bad = server.announce_url.replace("/announce", "/elsewhere")
    with pytest.raises(TrackerError, match="tracker failure: no such path"):
        announce_http(bad, req, timeout=5)


def test_many_concurrent_announces(server: TrackerServer) -> None:
    def one(i: int) -> int:
        return len(announce(server, f"127.0.2.{i}", b"-MP0100-%012d" % i, 7000 + i).peers)

    with ThreadPoolExecutor(16) as pool:
        assert len(list(pool.map(one, range(40)))) == 40
    assert len(server.state.peers(IH)) == 40


def test_busy_port_is_a_one_line_error(server: TrackerServer) -> None:
    with pytest.raises(TrackerError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        TrackerServer(port=server.port).start()


def test_serve_runs_until_stopped() -> None:
    ready: list[TrackerServer] = []
    thread = threading.Thread(
        target=serve, args=("127.0.0.1", 0, 30), kwargs={"on_ready": ready.append}
    )
    thread.start()
    deadline = time.monotonic() + 5
    while not ready and time.monotonic() < deadline:
        time.sleep(0.01)
    srv = ready[0]
    assert announce(srv, A, PID_A, 6881).interval == 30
    srv.stop()
    thread.join(5)
    assert not thread.is_alive()


# -- http_get against scripted, misbehaving servers ---------------------------


Respond = Callable[[str, socket.socket], None]


class Scripted:
    """A loopback HTTP server whose reply to each request is a Python function."""

    def __init__(self, respond: Respond, tls: ssl.SSLContext | None = None) -> None:
        self.respond, self.tls = respond, tls
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[tuple[str, str]] = []  # (source address, request target)
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "/announce") -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while True:
            try:
                conn, addr = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, addr[0]), daemon=True).start()

    def _serve(self, conn: socket.socket, src: str) -> None:
        try:
            conn.settimeout(5)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            target = data.split(b" ", 2)[1].decode("latin-1")
            self.requests.append((src, target))
            self.respond(target, conn)
        except OSError:
            pass  # the client hung up on us, as it should on hostile replies
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    made: list[Scripted] = []

    def make(respond: Respond, tls: ssl.SSLContext | None = None) -> Scripted:
        made.append(Scripted(respond, tls))
        return made[-1]

    yield make
    for s in made:
        s.close()


def ok(body: bytes, status: str = "200 OK", headers: str = "") -> Respond:
    def respond(target: str, conn: socket.socket) -> None:
        head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
        conn.sendall(head.encode() + body)

    return respond


def endless(head: bytes) -> Respond:
    def respond(target: str, conn: socket.socket) -> None:
        conn.sendall(head)
        block = b"x" * 65536
        while True:
            conn.sendall(block)

    return respond


def get(url: str, **kw: Any) -> bytes:
    kw.setdefault("timeout", 5)
    kw.setdefault("max_bytes", 1000)
    return http_get(url, **kw)


def test_get_binds_the_source_address(scripted: Callable[..., Scripted]) -> None:
    s = scripted(ok(b"hello"))
    assert get(s.url("/x?a=%00"), source_address=A) == b"hello"
    assert get(s.url(), source_address=B) == b"hello"
    assert s.requests == [(A, "/x?a=%00"), (B, "/announce")]


def test_redirects_are_followed_and_bounded(scripted: Callable[..., Scripted]) -> None:
    def respond(target: str, conn: socket.socket) -> None:
        n = int(target.rsplit("/", 1)[1])
        if n == 0:
            ok(b"done")(target, conn)
        else:
            ok(b"", "302 Found", f"Location: /r/{n - 1}\r\n")(target, conn)

    s = scripted(respond)
    assert get(s.url("/r/5")) == b"done"
    with pytest.raises(TrackerError, match="more than 5 redirects"):
        get(s.url("/r/6"))
    assert get(s.url("/r/2"), max_redirects=2) == b"done"
    with pytest.raises(TrackerError, match="more than 0 redirects"):
        get(s.url("/r/1"), max_redirects=0)


def test_redirect_to_another_scheme_is_refused(scripted: Callable[..., Scripted]) -> None:
    s = scripted(ok(b"", "301 Moved", "Location: file:///etc/passwd\r\n"))
    with pytest.raises(TrackerError, match="scheme 'file' is not http"):
        get(s.url())


def test_declared_oversized_body_is_refused_unread(scripted: Callable[..., Scripted]) -> None:
    s = scripted(endless(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n"))
    with pytest.raises(TrackerError, match="sent 100000000 bytes, over the 1000-byte limit"):
        get(s.url())


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.0 200 OK\r\n\r\n",  # no length: read until close
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000\r\n",
    ],
)
def test_endless_body_is_cut_at_the_cap(scripted: Callable[..., Scripted], head: bytes) -> None:
    s = scripted(endless(head))
    start = time.monotonic()
    with pytest.raises(TrackerError, match="more than the 1000-byte limit"):
        get(s.url())
    assert time.monotonic() - start < 2


def test_body_exactly_at_the_cap_is_fine(scripted: Callable[..., Scripted]) -> None:
    s = scripted(ok(b"y" * 1000))
    assert get(s.url()) == b"y" * 1000
    with pytest.raises(TrackerError, match="over the 999-byte limit"):
        get(s.url(), max_bytes=999)


def test_the_timeout_bounds_the_whole_exchange(scripted: Callable[..., Scripted]) -> None:
    def drip(target: str, conn: socket.socket) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 1000:
            conn.sendall(bytes([byte]))
            time.sleep(0.05)

    s = scripted(drip)
    start = time.monotonic()
    with pytest.raises(TrackerError, match=r"did not answer within 0\.5 s"):
        get(s.url(), timeout=0.5)
    assert time.monotonic() - start < 1.5


def test_silent_server_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts, never answers
        port = listener.getsockname()[1]
        with pytest.raises(TrackerError, match=f"tracker 127.0.0.1:{port} did not answer"):
            get(f"http://127.0.0.1:{port}/announce", timeout=0.3)


def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TrackerError, match=f"^tracker 127.0.0.1:{port} refused the connection$"):
        get(f"http://127.0.0.1:{port}/announce?passkey=secret")


def test_http_status_errors(scripted: Callable[..., Scripted]) -> None:
    s = scripted(ok(b"<html>down</html>", "503 Service Unavailable"))
    with pytest.raises(HTTPStatusError) as info:
        get(s.url())
    assert str(info.value) == f"tracker 127.0.0.1:{s.port} answered HTTP 503 Service Unavailable"
    assert info.value.status == 503 and info.value.body == b"<html>down</html>"


def test_failure_reason_in_an_error_status_is_shown(scripted: Callable[..., Scripted]) -> None:
    s = scripted(ok(b"d14:failure reason12:unregisterede", "400 Bad Request"))
    req = AnnounceRequest(IH, make_peer_id(), 6881, 0, 0, 1)
    with pytest.raises(TrackerError, match=r"^tracker failure: unregistered$"):
        announce_http(s.url(), req, timeout=5)


def test_not_http_at_all(scripted: Callable[..., Scripted]) -> None:
    s = scripted(lambda target, conn: conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n"))
    with pytest.raises(TrackerError, match="bad HTTP reply"):
        get(s.url())


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("ftp://t/announce", "scheme 'ftp'"),
        ("http:///announce", "no host"),
        ("http://t:99999/announce", "bad tracker URL"),
        ("http://t/ann ounce", "spaces or control"),
        ("http://t/announce\r\nX: y", "spaces or control"),
    ],
)
def test_bad_urls(url: str, match: str) -> None:
    with pytest.raises(TrackerError, match=match):
        get(url)


def test_scrape_needs_a_scrape_url() -> None:
    with pytest.raises(TrackerError, match="no scrape URL"):
        scrape_http("http://127.0.0.1:1/tracker", IH, timeout=1)


# -- TLS ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return d


def server_tls(cert: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert / "cert.pem", cert / "key.pem")
    return ctx


def test_tls_certificates_are_verified(scripted: Callable[..., Scripted], cert: Path) -> None:
    s = scripted(ok(b"secret"), tls=server_tls(cert))
    with pytest.raises(TrackerError, match=r"TLS certificate check failed: self.signed"):
        get(s.url())


def test_tls_with_a_trusted_certificate(
    scripted: Callable[..., Scripted], cert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Trust our test CA the way the system store would trust a real one.
    ctx = ssl.create_default_context(cafile=str(cert / "cert.pem"))
    ctx.sslsocket_class = net._DeadlineSSLSocket
    monkeypatch.setattr(net, "_tls_context", ctx)
    s = scripted(ok(b"over tls"), tls=server_tls(cert))
    assert get(s.url(), source_address=A) == b"over tls"
    assert s.requests[0][0] == A

    def drip(target: str, conn: socket.socket) -> None:
        for byte in b"HTTP/1.1 200 OK\r\n" * 100:
            conn.sendall(bytes([byte]))
            time.sleep(0.05)

    slow = scripted(drip, tls=server_tls(cert))
    start = time.monotonic()
    with pytest.raises(TrackerError, match="did not answer within"):
        get(slow.url(), timeout=0.5)
    assert time.monotonic() - start < 1.5
