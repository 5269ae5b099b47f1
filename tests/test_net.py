"""mptorrent.netio.net's UDP side (BEP 15) over real loopback sockets, and the scheme dispatch.

The HTTP client's own tests live in test_trackerserver.py.  The tracker here is
tests/fakes/evil_tracker.py: honest unless a test scripts it otherwise.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mptorrent.errors import TrackerError
from mptorrent.messages import PeerAddr
from mptorrent.netio import net
from mptorrent.proto import bencode
from mptorrent.proto import tracker as tr
from mptorrent.proto.tracker import AnnounceRequest, ScrapeResult, UDPRetry, make_peer_id
from tests.fakes.evil_tracker import EvilTracker, HttpReply, HttpRequest, need_ipv6_loopback

IH = bytes.fromhex("00112233445566778899aabbccddeeff00112233")
FAST = UDPRetry(0.2, 2)  # 0.6 s for a silent tracker
PEERS = [PeerAddr("10.0.0.1", 6881), PeerAddr("2001:db8::7", 7000), PeerAddr("10.0.0.2", 6882)]


@pytest.fixture
def evil() -> Iterator[EvilTracker]:
    with EvilTracker("127.0.0.1") as t:
        t.peers = list(PEERS)
        yield t


def req(event: str | None = "started", port: int = 6881) -> AnnounceRequest:
    return AnnounceRequest(IH, make_peer_id(), port, 0, 0, 1000, event, key=7)


def announce(url: str, *, source: str | None = None, retry: UDPRetry = FAST, **kw: Any) -> Any:
    return net.announce_udp(url, req(), timeout=5, source_address=source, retry=retry, **kw)


# -- announce -----------------------------------------------------------------


def test_udp_announce_from_a_bound_source_address(evil: EvilTracker) -> None:
    resp = announce(evil.udp_url(), source="127.0.0.31")
    assert resp.peers == (PeerAddr("10.0.0.1", 6881), PeerAddr("10.0.0.2", 6882))
    assert resp.interval == 1800 and resp.incomplete == 3
    assert {r.client[0] for r in evil.udp_requests} == {"127.0.0.31"}
    assert evil.udp_kinds() == ["connect", "announce"]


def test_the_url_path_travels_as_bep41_url_data(evil: EvilTracker) -> None:
    seen: list[bytes] = []

    def record(pkt: tr.UDPAnnouncePacket, client: tuple[Any, ...]) -> list[bytes]:
        seen.append(pkt.url_data)
        return evil.honest_announce(pkt, client)

    evil.udp_announce = record
    announce(evil.udp_url("/pk123/announce?x=1"), source="127.0.0.32")
    assert seen == [b"/pk123/announce?x=1"]


def test_connection_id_is_reused_within_its_minute(evil: EvilTracker) -> None:
    announce(evil.udp_url(), source="127.0.0.33")
    announce(evil.udp_url(), source="127.0.0.33")
    assert evil.udp_kinds() == ["connect", "announce", "announce"]
    announce(evil.udp_url(), source="127.0.0.34")  # another source is another client
    assert evil.udp_kinds()[3:] == ["connect", "announce"]


def test_stale_connection_id_is_dropped_then_we_reconnect(evil: EvilTracker) -> None:
    announce(evil.udp_url(), source="127.0.0.35")
    evil.connection_id += 1  # as after a tracker restart: the old id is silently dropped
    start = time.monotonic()
    resp = announce(evil.udp_url(), source="127.0.0.35", retry=UDPRetry(0.2, 3))
    assert time.monotonic() - start < 1.0
    assert resp.peers
    assert evil.udp_kinds() == ["connect", "announce", "announce", "connect", "announce"]


def test_silent_tracker_costs_the_retry_schedule(evil: EvilTracker) -> None:
    evil.udp_connect = lambda pkt, client: []
    start = time.monotonic()
    with pytest.raises(TrackerError) as info:
        announce(evil.udp_url(), source="127.0.0.36")
    elapsed = time.monotonic() - start
    assert 0.55 < elapsed < 1.5
    port = evil.udp_url().split(":")[2].split("/")[0]
    assert str(info.value) == (
        f"UDP tracker 127.0.0.1:{port}: no reply to 2 connect requests in 0.6 s"
    )
    assert evil.udp_kinds() == ["connect", "connect"]
    # a retransmission repeats the packet, transaction id and all
    assert evil.udp_requests[0].data == evil.udp_requests[1].data


def test_timeout_caps_a_long_schedule(evil: EvilTracker) -> None:
    evil.udp_connect = lambda pkt, client: []
    start = time.monotonic()
    with pytest.raises(TrackerError, match=r"did not answer within 0.4 s$"):
        net.announce_udp(evil.udp_url(), req(), timeout=0.4, retry=UDPRetry())
    assert time.monotonic() - start < 1.0


def test_closed_port_fails_at_once() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(TrackerError, match=r"^UDP tracker 127.0.0.1:\d+ refused the connection"):
        net.announce_udp(f"udp://127.0.0.1:{port}/announce", req(), timeout=5, retry=UDPRetry())
    assert time.monotonic() - start < 1.0


def test_stray_packets_are_ignored_until_the_real_reply(evil: EvilTracker) -> None:
    def noisy(pkt: tr.UDPConnectPacket, client: tuple[Any, ...]) -> list[bytes]:
        return [
            b"\x00\x00",
            tr.udp_connect_reply(pkt.tid ^ 1, 99),  # someone else's transaction
            tr.udp_error_reply(pkt.tid ^ 2, "spoofed"),
            *evil.honest_connect(pkt, client),
        ]

    evil.udp_connect = noisy
    assert announce(evil.udp_url(), source="127.0.0.37").peers


def test_only_stray_packets_is_a_timeout_that_says_so(evil: EvilTracker) -> None:
    evil.udp_connect = lambda pkt, client: [tr.udp_connect_reply(pkt.tid + 1, 5)]
    with pytest.raises(TrackerError, match=r"ignored 2 bad packets \(last: a wrong transaction"):
        announce(evil.udp_url(), source="127.0.0.38")


def test_replies_from_another_address_are_ignored(evil: EvilTracker) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as spoofer:
        spoofer.bind(("127.0.0.1", 0))

        def from_elsewhere(pkt: tr.UDPConnectPacket, client: tuple[Any, ...]) -> list[bytes]:
            spoofer.sendto(tr.udp_connect_reply(pkt.tid, evil.connection_id), client)
            return []

        evil.udp_connect = from_elsewhere
        with pytest.raises(TrackerError, match="no reply to 2 connect requests"):
            announce(evil.udp_url(), source="127.0.0.39")


def test_error_packet_reaches_the_user_as_one_line(evil: EvilTracker) -> None:
    evil.udp_announce = lambda pkt, client: [tr.udp_error_reply(pkt.tid, "banned\r\nclient\x00")]
    with pytest.raises(TrackerError) as info:
        announce(evil.udp_url("/secretpk/announce"), source="127.0.0.40")
    msg = str(info.value)
    assert msg.endswith(": tracker failure: banned\\r\\nclient")
    assert msg.startswith("UDP tracker 127.0.0.1:") and msg.isprintable()
    assert "secretpk" not in msg


def test_udp_scrape(evil: EvilTracker) -> None:
    got = net.scrape_udp(evil.udp_url(), IH, timeout=5, source_address="127.0.0.41", retry=FAST)
    assert got == ScrapeResult(complete=1, incomplete=2, downloaded=3)


# -- IPv6 ---------------------------------------------------------------------


def test_ipv6_udp_tracker_sends_18_byte_peers() -> None:
    need_ipv6_loopback()
    with EvilTracker("::1") as evil6:
        evil6.peers = list(PEERS)
        resp = announce(evil6.udp_url(), source="::1")
        assert resp.peers == (PeerAddr("2001:db8::7", 7000),)
        assert evil6.udp_requests[0].client[0] == "::1"
        assert evil6.udp_url().startswith("udp://[::1]:")
        assert net.scrape_udp(evil6.udp_url(), IH, timeout=5, retry=FAST).complete == 1


def test_ipv6_tracker_from_an_ipv4_source_is_a_clear_error() -> None:
    with pytest.raises(TrackerError, match=r"^UDP tracker \[::1\]:6969: no IPv4 address to reach"):
        net.announce_udp("udp://[::1]:6969/announce", req(), timeout=1, source_address="127.0.0.1")


# -- URLs and dispatch --------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("udp://tracker.example/announce", "no port"),
        ("udp://t.example:6969/ann ounce", "spaces or control"),
        ("udp://t.example:99999/announce", "bad tracker URL"),
        ("udp://:6969/announce", "no host"),
        ("http://t.example:6969/announce", "not udp"),
    ],
)
def test_bad_udp_urls(url: str, match: str) -> None:
    with pytest.raises(TrackerError, match=match):
        net.announce_udp(url, req(), timeout=1)


def test_dispatch_by_scheme_and_errors_name_the_tracker(evil: EvilTracker) -> None:
    evil.peers = [PeerAddr("10.0.0.5", 5)]
    for url in (evil.http_url(), evil.udp_url(), evil.http_url().replace("http", "HTTP", 1)):
        got = net.announce(url, req(), timeout=5, udp_retry=FAST)
        assert got.peers == (PeerAddr("10.0.0.5", 5),)
    assert net.scrape(evil.http_url(), IH, timeout=5).downloaded == 3
    assert net.scrape(evil.udp_url(), IH, timeout=5, udp_retry=FAST).incomplete == 2

    def refuse(r: HttpRequest) -> HttpReply:
        return HttpReply(body=bencode.encode({b"failure reason": b"unregistered torrent"}))

    evil.http = refuse
    port = evil.http_url().split(":")[2].split("/")[0]
    with pytest.raises(TrackerError) as info:
        net.announce(evil.http_url("/pk=SECRET/announce"), req(), timeout=5)
    assert str(info.value) == f"tracker 127.0.0.1:{port}: tracker failure: unregistered torrent"
    with pytest.raises(TrackerError, match=r"^tracker t.example:1: scheme 'wss' is not http"):
        net.announce("wss://t.example:1/announce", req(), timeout=1)


def test_where() -> None:
    assert net.where("udp://[::1]:6969/pk/announce") == "UDP tracker [::1]:6969"
    assert net.where("https://user:pw@t.example/x?passkey=1") == "tracker t.example"
    assert net.where("http://[::1/announce") == "tracker ?"


def test_a_refusing_address_falls_through_to_the_next(
    evil: EvilTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No DNS server here: a name with two addresses is simulated, the sockets stay real.
    port = int(evil.udp_url().split(":")[2].split("/")[0])
    two = [
        (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("127.0.0.2", port)),  # nobody there
        (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("127.0.0.1", port)),
    ]
    monkeypatch.setattr(net.socket, "getaddrinfo", lambda *a, **k: two)
    resp = net.announce_udp(f"udp://tracker.example:{port}/announce", req(), timeout=5, retry=FAST)
    assert resp.peers
    monkeypatch.setattr(net.socket, "getaddrinfo", lambda *a, **k: two[:1])
    with pytest.raises(TrackerError, match=r"^UDP tracker tracker.example:\d+ refused"):
        net.announce_udp(f"udp://tracker.example:{port}/announce", req(), timeout=5, retry=FAST)
