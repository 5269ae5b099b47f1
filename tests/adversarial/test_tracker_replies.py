"""Table B of tests/adversarial/README.md: hostile tracker replies, through the announcer.

Most rows are already pinned where the code lives (tests/test_tracker.py for the
codecs, tests/test_net.py and tests/test_trackerserver.py for the sockets,
tests/test_announcer.py for tiers and timing); tests/adversarial/README.md says
which test covers which row.  This file adds what those leave open.  Every
hostile tracker is tests/fakes/evil_tracker.py (or, for TLS and headers, a raw
loopback socket) on its own 127.x address, next to our honest TrackerServer
holding one good peer, so each case also shows that the good tier still
delivers.  Re-announce timing uses an invented clock.
"""

from __future__ import annotations

import gzip
import re
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mptorrent.cli.main import cli
from mptorrent.errors import ExitStatus, TrackerError
from mptorrent.messages import PeerAddr
from mptorrent.netio import net
from mptorrent.netio.announcer import Announcer, TierResult
from mptorrent.netio.trackerserver import TrackerServer
from mptorrent.proto import bencode
from mptorrent.proto import tracker as tr
from mptorrent.proto.tracker import AnnounceRequest, UDPRetry, make_peer_id
from tests.fakes.evil_tracker import EvilTracker, HttpReply, HttpRequest, compact

IH = bytes.fromhex("bb" * 20)
ME, PORT = "127.0.0.72", 6881
GOOD_PEER = PeerAddr("127.0.0.70", 7777)
FAST = UDPRetry(0.2, 2)
T0 = 50_000.0  # an invented clock
WINDOW = 600.0  # ten simulated minutes


@pytest.fixture
def good() -> Iterator[TrackerServer]:
    with TrackerServer("127.0.0.1") as server:
        req = AnnounceRequest(IH, make_peer_id(), GOOD_PEER.port, 0, 0, 0, "started")
        net.announce_http(server.announce_url, req, timeout=5, source_address=GOOD_PEER.host)
        yield server


@pytest.fixture
def evil() -> Iterator[EvilTracker]:
    with EvilTracker("127.0.0.71") as t:
        yield t


def announcer(tiers: list[list[str]], **kw: Any) -> Announcer:
    args: dict[str, Any] = dict(
        info_hash=IH, peer_id=make_peer_id(), port=PORT, source_address=ME,
        udp_retry=FAST, timeout=5.0, exclude=[(ME, PORT)],
    )  # fmt: skip
    args.update(kw)
    return Announcer(tiers, **args)


def announce_once(a: Announcer, **kw: Any) -> dict[int, TierResult]:
    got: list[TierResult] = []
    lock = threading.Lock()

    def keep(r: TierResult) -> None:
        with lock:
            got.append(r)

    threads = a.announce(event="started", left=1000, on_result=keep, wait=10.0, **kw)
    assert not any(t.is_alive() for t in threads)
    assert len(got) == len(threads)
    return {r.tier: r for r in got}


def the_error(r: TierResult) -> str:
    assert r.url is None and r.peers == ()
    (msg,) = r.errors
    assert msg.isprintable() and "\n" not in msg and len(msg) < 400
    return msg


def reply(**fields: Any) -> bytes:
    return bencode.encode({k.replace("_", " ").encode(): v for k, v in fields.items()})


# -- B1: HTTP errors and redirects; the next tracker in the tier is tried ------------------


def test_b1_404_and_a_redirect_to_another_scheme_fall_through_to_the_next_tracker(
    good: TrackerServer, evil: EvilTracker
) -> None:
    def script(req: HttpRequest) -> HttpReply:
        if req.path.startswith("/missing"):
            return HttpReply(status=404, body=b"<html>Not Found</html>")
        return HttpReply(status=302, headers={"Location": "ftp://127.0.0.1/announce"})

    evil.http = script
    missing, ftp = evil.http_url("/missing/announce"), evil.http_url("/ftp/announce")
    a = announcer([[missing, ftp, good.announce_url]])
    a.tiers[0][:] = [missing, ftp, good.announce_url]  # undo the BEP 12 shuffle
    r = announce_once(a)[0]
    assert r.url == good.announce_url and r.peers == (GOOD_PEER,)
    assert len(r.errors) == 2
    assert re.fullmatch(r"tracker 127\.0\.0\.71:\d+ answered HTTP 404 Not Found", r.errors[0])
    assert r.errors[1].endswith("scheme 'ftp' is not http or https"), r.errors[1]
    assert a.tiers[0][0] == good.announce_url  # the one that answered moved to the front


def test_b1_b3_no_tracker_gives_peers_is_exit_1_with_the_trackers_words(
    evil: EvilTracker, tmp_path: Path
) -> None:
    evil.http = lambda req: (
        HttpReply(status=500) if req.path.startswith("/down")
        else reply(failure_reason=b"torrent not registered\x1b[31m")
    )  # fmt: skip
    t = tmp_path / "t.torrent"
    t.write_bytes(
        bencode.encode(
            {
                b"announce-list": [
                    [evil.http_url("/down/announce").encode()],
                    [evil.http_url("/refuse/announce").encode()],
                ],
                b"info": {
                    b"length": 10, b"name": b"x", b"piece length": 16384, b"pieces": bytes(20),
                },
            }
        )
    )  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "mptorrent", "fetch", str(t), "-o", str(tmp_path / "out"), "-q",
         "--port", "0", "--bind", ME, "-j", "1", "--no-dht"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == ExitStatus.ERROR, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("mptorrent: error: no peers: tracker 127.0.0.71:"), line
    assert re.search(r"answered HTTP 500|tracker failure: torrent not registered\\x1b\[31m", line)
    assert time.monotonic() - start < 30
    assert 1 <= len(evil.http_requests) <= 4  # one "started" per tier, no retry storm


# -- B2: bodies that are not a usable reply ------------------------------------------------

B2_BODIES = {
    "not bencode": (b"<html><body>502</body></html>", r"bad bencode at byte 0"),
    "truncated": (reply(interval=1800, peers=bytes(60))[:50], r"60 bytes runs past the end"),
    "deep nesting": (b"d5:peers" + b"l" * 100_000 + b"e" * 100_001, r"nesting deeper than 100"),
    "absurd string length": (b"d5:peers99999999999999999999999:e", r"string length is unt"),
    "string longer than the body": (b"d5:peers600:" + bytes(12) + b"e", r"runs past the end"),
    "top-level list": (b"l5:peerse", r"a list, not a dictionary"),
}


@pytest.mark.parametrize("case", list(B2_BODIES))
def test_b2_unusable_bodies_are_a_failed_announce(
    case: str, good: TrackerServer, evil: EvilTracker
) -> None:
    body, match = B2_BODIES[case]
    evil.http = lambda req: body
    got = announce_once(announcer([[evil.http_url()], [good.announce_url]]))
    assert got[1].peers == (GOOD_PEER,)
    msg = the_error(got[0])
    assert msg.startswith(f"tracker {evil.host}:") and "bad tracker reply" in msg
    assert re.search(match, msg), msg


# -- B3: failure reason, and no tight retry loop after it ----------------------------------


def count_announces(a: Announcer, start: float, peers_low: bool = True) -> None:
    """Poll maybe_reannounce twice a (simulated) second over WINDOW, as a main loop would."""
    now = start
    while now <= start + WINDOW:
        for t in a.maybe_reannounce(now, peers_low=peers_low, left=1):
            t.join(5)
        now += 0.5


def test_b3_failure_reason_is_shown_and_retried_only_with_backoff(evil: EvilTracker) -> None:
    evil.http = lambda req: reply(failure_reason=b"unregistered torrent\r\n\x1b[2J", peers=b"")
    a = announcer([[evil.http_url()]])
    msg = the_error(announce_once(a, now=T0)[0])
    assert msg.endswith(": tracker failure: unregistered torrent\\r\\n\\x1b[2J"), msg
    count_announces(a, T0)
    # 15 s, 30 s, 60 s, 120 s, 240 s after each failure: T0, +15, +45, +105, +225, +465
    assert len(evil.http_requests) == 6


# -- B4: warning message -------------------------------------------------------------------


def test_b4_warning_is_passed_on_escaped_and_the_peers_are_used(evil: EvilTracker) -> None:
    peer = PeerAddr("10.4.4.4", 4444)
    evil.http = lambda req: reply(
        interval=1800, peers=compact([peer]), warning_message=b"slow down\n\x1b[31mplease"
    )
    r = announce_once(announcer([[evil.http_url()]]))[0]
    assert r.errors == () and r.peers == (peer,)
    assert r.warning == "slow down\\n\\x1b[31mplease"


# -- B5, B6, B7: peer lists ----------------------------------------------------------------


def test_b5_partial_compact_records_are_dropped_alone(evil: EvilTracker) -> None:
    v4, v6 = PeerAddr("10.5.5.5", 5), PeerAddr("2001:db8::5", 6)
    evil.http = lambda req: reply(
        interval=1800,
        peers=compact([v4]) + b"\x0a\x00\x00",  # 6 + 3 bytes
        peers6=compact([v6], ipv6=True) + bytes(7),  # 18 + 7 bytes
    )
    r = announce_once(announcer([[evil.http_url()]]))[0]
    assert r.errors == () and r.peers == (v4, v6)


def test_b6_malformed_dictionary_peers_are_dropped_and_the_rest_kept(evil: EvilTracker) -> None:
    peers = [
        {b"ip": b"10.6.6.1", b"port": 6001},
        5,
        b"10.6.6.2:6002",
        {b"port": 6003},
        {b"ip": b"10.6.6.4"},
        {b"ip": 10, b"port": 6005},
        {b"ip": b"10.6.6.6", b"port": b"6006"},
        {b"ip": b"10.6.6.999", b"port": 6007},
        {b"ip": b"evil.example.com", b"port": 6008},
        {b"ip": b"\xff\xfe", b"port": 6009},
        {b"ip": [b"10.6.6.10"], b"port": 6010},
        {b"ip": b"2001:db8::6", b"port": 6011},
    ]
    evil.http = lambda req: reply(interval=1800, peers=peers)
    r = announce_once(announcer([[evil.http_url()]]))[0]
    assert r.errors == ()
    assert r.peers == (PeerAddr("10.6.6.1", 6001), PeerAddr("2001:db8::6", 6011))


def test_b7_bad_addresses_duplicates_and_100000_peers(evil: EvilTracker) -> None:
    junk = [
        PeerAddr("10.7.7.1", 0),
        PeerAddr("0.0.0.0", 7000),
        PeerAddr("255.255.255.255", 7000),
        PeerAddr("224.0.0.251", 7000),
        PeerAddr("10.7.7.2", 7002),
        PeerAddr("10.7.7.2", 7002),
    ]
    flood = b"".join(struct.pack("!IH", 0x0B000000 + i, 6881) for i in range(100_000))
    body = reply(interval=1800, peers=compact(junk) * 3 + flood)
    evil.http = lambda req: body
    r = announce_once(announcer([[evil.http_url()]]))[0]
    assert r.errors == ()
    assert len(r.peers) == tr.MAX_PEERS
    assert r.peers[0] == PeerAddr("10.7.7.2", 7002)
    assert len(set(r.peers)) == len(r.peers)
    assert all(p.port and not p.host.startswith(("0.", "255.", "224.")) for p in r.peers)
    tracemalloc.start()
    try:
        assert len(tr.parse_announce(body).peers) == tr.MAX_PEERS
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * len(body)  # the decoded body and a capped peer list, nothing per entry


# -- B9: intervals -------------------------------------------------------------------------

# (interval field, HTTP announces expected in WINDOW): clamped to [30 s, MAX_INTERVAL].  The
# counts are the promise written out (README: at most one announce per 30 s), not derived from
# MIN_REANNOUNCE, so that lowering the floor fails here: the first announce and one per 30 s.
B9_FLOOR_COUNT = 1 + int(WINDOW // 30)
B9_HTTP: dict[str, tuple[Any, int]] = {
    "missing": (None, 1),  # DEFAULT_INTERVAL, 1800 s
    "zero": (0, B9_FLOOR_COUNT),
    "negative": (-600, B9_FLOOR_COUNT),
    "10**12": (10**12, 1),
    "a string": (b"60", 1),
}


@pytest.mark.parametrize("case", list(B9_HTTP))
def test_b9_http_interval_is_clamped_and_never_a_busy_loop(case: str, evil: EvilTracker) -> None:
    value, expected = B9_HTTP[case]
    fields: dict[str, Any] = {"peers": b""}
    if value is not None:
        fields["interval"] = value
    body = reply(**fields)
    evil.http = lambda req: body
    a = announcer([[evil.http_url()]])
    announce_once(a, now=T0)
    if case == "10**12":
        assert a.next_announce_at() == T0 + tr.MAX_INTERVAL
    count_announces(a, T0, peers_low=False)
    assert len(evil.http_requests) == expected


@pytest.mark.parametrize(("interval", "expected"), [(0, B9_FLOOR_COUNT), (2**32 - 1, 1)])
def test_b9_udp_interval_is_clamped_too(interval: int, expected: int, evil: EvilTracker) -> None:
    evil.interval = interval
    a = announcer([[evil.udp_url()]])
    assert announce_once(a, now=T0)[0].errors == ()
    count_announces(a, T0, peers_low=False)
    assert evil.udp_kinds().count("announce") == expected


# -- B10: gzip is never asked for nor inflated ---------------------------------------------


class RawHttp:
    """One loopback HTTP server that records request heads and sends a fixed reply."""

    def __init__(self, head: bytes, body: bytes, tls: ssl.SSLContext | None = None) -> None:
        self.reply = head + body
        self.tls = tls
        self.heads: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.74", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.74:{self.port}/announce"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                conn.settimeout(5)
                if self.tls is not None:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                self.heads.append(head)
                conn.sendall(self.reply)
            except OSError:
                pass  # a client that refuses our certificate hangs up mid-handshake
            finally:
                conn.close()

    def close(self) -> None:
        self.sock.close()


def test_b10_a_gzip_bomb_is_not_inflated(good: TrackerServer) -> None:
    bomb = gzip.compress(reply(interval=1800, peers=bytes(6 * 1_000_000)), compresslevel=9)
    assert len(bomb) < 64 * 1024
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    server = RawHttp(head, bomb)
    try:
        got = announce_once(announcer([[server.url()], [good.announce_url]]))
    finally:
        server.close()
    assert got[1].peers == (GOOD_PEER,)
    assert "bad tracker reply: bad bencode at byte 0" in the_error(got[0])
    (request,) = server.heads
    assert b"\r\nAccept-Encoding: identity\r\n" in request
    assert b"gzip" not in request


# -- B11: a tracker that never answers -----------------------------------------------------


def test_b11_a_silent_tracker_costs_the_deadline_then_the_next_is_tried(
    good: TrackerServer, evil: EvilTracker
) -> None:
    def silent(req: HttpRequest) -> HttpReply:
        evil.stopping.wait(30)  # holds the connection open, says nothing
        return HttpReply(status=500)

    evil.http = silent
    a = announcer([[evil.http_url(), good.announce_url]], timeout=0.5)
    a.tiers[0][:] = [evil.http_url(), good.announce_url]
    start = time.monotonic()
    r = announce_once(a)[0]
    assert time.monotonic() - start < 2.0
    assert r.url == good.announce_url and r.peers == (GOOD_PEER,)
    (msg,) = r.errors
    assert re.fullmatch(r"tracker 127\.0\.0\.71:\d+ did not answer within 0\.5 s", msg), msg


# -- B12: TLS is verified, and nothing can switch that off ---------------------------------


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-days", "2",
         "-subj", "/CN=127.0.0.74", "-addext", "subjectAltName=IP:127.0.0.74"],
        check=True, capture_output=True,
    )  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    return ctx


def test_b12_self_signed_https_tracker_fails_with_a_tls_error(
    good: TrackerServer, self_signed: ssl.SSLContext
) -> None:
    body = reply(interval=1800, peers=compact([PeerAddr("10.12.12.12", 12)]))
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    server = RawHttp(head, body, tls=self_signed)
    try:
        got = announce_once(announcer([[server.url()], [good.announce_url]]))
    finally:
        server.close()
    assert got[1].peers == (GOOD_PEER,)
    msg = the_error(got[0])
    assert re.fullmatch(
        r"tracker 127\.0\.0\.74:\d+: TLS certificate check failed: self.signed certificate", msg
    ), msg
    assert server.heads == []  # not one byte of the request went to the unverified server


def test_b12_there_is_no_switch_that_turns_verification_off() -> None:
    ctx = net._tls()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    source = "\n".join(
        p.read_text() for p in Path(net.__file__).parent.glob("*.py")
    )  # every module, the CLI included
    for needle in ("CERT_NONE", "check_hostname = False", "_create_unverified_context"):
        assert needle not in source, needle
    runner = CliRunner()
    for command in ("fetch", "seed", "info"):
        help_text = runner.invoke(cli, [command, "--help"]).output.lower()
        assert not re.search(r"insecure|no-verify|no-check-certificate|--verify", help_text)


# -- B13: UDP connection ids ---------------------------------------------------------------


def test_b13_expired_connection_id_answered_with_an_error_reconnects(evil: EvilTracker) -> None:
    evil.peers = [PeerAddr("10.13.13.1", 1313)]
    src = "127.0.0.75"
    net.announce_udp(evil.udp_url(), AnnounceRequest(IH, make_peer_id(), PORT, 0, 0, 1),
                     timeout=5, source_address=src, retry=FAST)  # fmt: skip

    def strict(pkt: tr.UDPAnnouncePacket, client: tuple[Any, ...]) -> list[bytes]:
        if pkt.connection_id != evil.connection_id:
            return [tr.udp_error_reply(pkt.tid, "Connection ID expired")]
        return evil.honest_announce(pkt, client)

    evil.udp_announce = strict
    evil.connection_id += 1  # the tracker restarted: the id we cached is now unknown
    a = announcer([[evil.udp_url()]], source_address=src, exclude=[(src, PORT)])
    r = announce_once(a)[0]
    assert r.errors == () and r.peers == (PeerAddr("10.13.13.1", 1313),)
    assert evil.udp_kinds() == ["connect", "announce", "announce", "connect", "announce"]


def test_b13_a_connection_id_older_than_a_minute_is_not_used(evil: EvilTracker) -> None:
    src = "127.0.0.76"
    req = AnnounceRequest(IH, make_peer_id(), PORT, 0, 0, 1)
    net.announce_udp(evil.udp_url(), req, timeout=5, source_address=src, retry=FAST)
    # Age the cached id past BEP 15's minute instead of waiting one.
    with net._connections_lock:
        key = next(k for k in net._connections if k[2] == src)
        cid, got_at = net._connections[key]
        net._connections[key] = (cid, got_at - tr.CONNECTION_ID_LIFETIME - 1)
    net.announce_udp(evil.udp_url(), req, timeout=5, source_address=src, retry=FAST)
    assert evil.udp_kinds() == ["connect", "announce", "connect", "announce"]


def test_b13_garbage_datagrams_never_escape_as_anything_but_tracker_error(
    evil: EvilTracker,
) -> None:
    replies: list[Callable[[tr.UDPConnectPacket], bytes]] = [
        lambda p: b"",
        lambda p: struct.pack("!I", 0),
        lambda p: struct.pack("!II", 0, p.tid),  # 8 bytes: connect reply without the id
        lambda p: struct.pack("!IIH", 0, p.tid, 1),
        lambda p: struct.pack("!II", 7, p.tid) + b"x" * 100,  # unknown action
        lambda p: struct.pack("!II", 3, p.tid) + b"\xff\xfe\x1b[2J",  # error, junk text
    ]
    for make in replies:
        evil.udp_connect = lambda pkt, c, make=make: [make(pkt)]
        with pytest.raises(TrackerError) as info:
            net.announce_udp(evil.udp_url(), AnnounceRequest(IH, make_peer_id(), PORT, 0, 0, 1),
                             timeout=2, source_address="127.0.0.77",
                             retry=UDPRetry(0.05, 2))  # fmt: skip
        assert str(info.value).isprintable()
