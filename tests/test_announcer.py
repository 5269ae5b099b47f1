"""mptorrent.netio.announcer: tiers (BEP 12), re-announce timing, hostile trackers, scrape_all.

Everything runs over real loopback sockets: the good tier is our embedded
TrackerServer, the bad ones are tests/fakes/evil_tracker.py.  Our client
announces from ME and listens on PORT, so a tracker that hands that address
back can be caught.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mptorrent.messages import PeerAddr
from mptorrent.netio import net
from mptorrent.netio.announcer import (
    LOW_PEERS_WAIT,
    RETRY_BASE,
    Announcer,
    TierResult,
    redact,
    scrape_all,
    usable,
)
from mptorrent.netio.trackerserver import TrackerServer
from mptorrent.proto import bencode
from mptorrent.proto import tracker as tr
from mptorrent.proto.tracker import AnnounceRequest, ScrapeResult, UDPRetry, make_peer_id
from tests.fakes.evil_tracker import (
    EvilTracker,
    HttpReply,
    compact,
    need_ipv6_loopback,
)

IH = bytes.fromhex("aa" * 20)
ME, PORT = "127.0.0.61", 6881
GOOD_PEER = PeerAddr("127.0.0.60", 7777)
FAST = UDPRetry(0.2, 2)
SECRET = "PASSKEY0123"
T0 = 10_000.0  # an invented clock: the announcer takes time as an argument


@pytest.fixture
def good() -> Iterator[TrackerServer]:
    """Our own tracker, with one seeder already in the swarm."""
    with TrackerServer("127.0.0.1") as server:
        req = AnnounceRequest(IH, make_peer_id(), GOOD_PEER.port, 0, 0, 0, "started")
        net.announce_http(server.announce_url, req, timeout=5, source_address=GOOD_PEER.host)
        yield server


@pytest.fixture
def evil() -> Iterator[EvilTracker]:
    with EvilTracker("127.0.0.62") as t:
        yield t


class Collect:
    """An on_result callback that keeps what it gets."""

    def __init__(self) -> None:
        self.results: list[TierResult] = []
        self._lock = threading.Lock()

    def __call__(self, r: TierResult) -> None:
        with self._lock:
            self.results.append(r)

    def tier(self, i: int) -> TierResult:
        (r,) = [r for r in self.results if r.tier == i]
        return r


def announcer(tiers: list[list[str]], **kw: Any) -> Announcer:
    args: dict[str, Any] = dict(
        info_hash=IH, peer_id=make_peer_id(), port=PORT, source_address=ME,
        udp_retry=FAST, timeout=5.0, exclude=[(ME, PORT)],
    )  # fmt: skip
    args.update(kw)
    return Announcer(tiers, **args)


def run(a: Announcer, event: str | None = "started", **kw: Any) -> Collect:
    got = Collect()
    threads = a.announce(event=event, left=1000, on_result=got, wait=10.0, **kw)
    assert not any(t.is_alive() for t in threads)
    assert len(got.results) == len(threads)  # exactly one result per thread
    return got


def one_line(msg: str) -> None:
    assert msg.isprintable() and "\n" not in msg
    assert SECRET not in msg  # passkeys stay out of messages


# -- hostile trackers: each fails alone, the good tier still delivers ---------


def failure(text: bytes) -> bytes:
    return bencode.encode({b"failure reason": text})


def peers_reply(peers: bytes, **extra: Any) -> bytes:
    return bencode.encode({b"interval": 1800, b"peers": peers, **extra})


HTTP_CASES: dict[str, tuple[HttpReply, str | None, tuple[PeerAddr, ...]]] = {
    "garbage": (HttpReply(body=b"<html>\x00\xff"), r"bad tracker reply: bad bencode", ()),
    "not a dictionary": (HttpReply(body=b"li1ee"), r"a list, not a dictionary", ()),
    "oversized, streamed": (
        HttpReply(body=b"d5:peers", endless=b"x" * 65536),
        r"sent more than the 4194304-byte limit",
        (),
    ),
    "oversized, declared": (
        HttpReply(headers={"Content-Length": str(50 << 20)}),
        r"sent 52428800 bytes, over the 4194304-byte limit",
        (),
    ),
    "failure reason": (
        HttpReply(body=failure(b"unregistered torrent\n\x1b[31m")),
        r": tracker failure: unregistered torrent\\n\\x1b\[31m$",
        (),
    ),
    "failure reason with HTTP 403": (
        HttpReply(status=403, body=failure(b"passkey not found")),
        r": tracker failure: passkey not found$",
        (),
    ),
    "HTTP 500": (HttpReply(status=500, body=b"oops"), r"answered HTTP 500", ()),
    "redirect loop": (
        HttpReply(status=302, headers={"Location": f"/{SECRET}/announce"}),
        r"more than 5 redirects",
        (),
    ),
    "truncated compact peers": (
        HttpReply(body=peers_reply(compact([PeerAddr("10.1.1.1", 1)]) + b"\x0a\x00")),
        None,
        (PeerAddr("10.1.1.1", 1),),
    ),
    "port-0 peers": (
        HttpReply(body=peers_reply(compact([PeerAddr("10.1.1.2", 0), PeerAddr("10.1.1.3", 3)]))),
        None,
        (PeerAddr("10.1.1.3", 3),),
    ),
    "our own address": (
        HttpReply(body=peers_reply(compact([PeerAddr(ME, PORT), PeerAddr("10.1.1.4", 4)]))),
        None,
        (PeerAddr("10.1.1.4", 4),),
    ),
    "our own address, IPv4-mapped": (
        HttpReply(
            body=peers_reply(b"", peers6=compact([PeerAddr(f"::ffff:{ME}", PORT)], ipv6=True))
        ),
        None,
        (),
    ),
}


@pytest.mark.parametrize("case", list(HTTP_CASES))
def test_hostile_http_tracker(case: str, good: TrackerServer, evil: EvilTracker) -> None:
    reply, error, peers = HTTP_CASES[case]
    evil.http = lambda req: reply
    a = announcer([[evil.http_url(f"/{SECRET}/announce")], [good.announce_url]])
    got = run(a)
    assert got.tier(1).peers == (GOOD_PEER,) and got.tier(1).errors == ()
    bad = got.tier(0)
    if error is None:
        assert bad.errors == () and bad.peers == peers
        return
    assert bad.url is None and bad.peers == ()
    (msg,) = bad.errors
    one_line(msg)
    assert msg.startswith(f"tracker {evil.host}:")
    assert len(msg) < 400
    assert re.search(error, msg), msg


UdpCase = tuple[Callable[[EvilTracker], None], str | None, tuple[PeerAddr, ...]]


def _set(kind: str, fn: Callable[..., list[bytes]]) -> Callable[[EvilTracker], None]:
    def script(evil: EvilTracker) -> None:
        setattr(evil, f"udp_{kind}", fn)

    return script


def _honest_then(change: Callable[[bytes], bytes]) -> Callable[[EvilTracker], None]:
    def script(evil: EvilTracker) -> None:
        def announce(pkt: tr.UDPAnnouncePacket, client: tuple[Any, ...]) -> list[bytes]:
            return [change(r) for r in evil.honest_announce(pkt, client)]

        evil.udp_announce = announce

    return script


def _peers(*peers: PeerAddr, tail: bytes = b"") -> Callable[[EvilTracker], None]:
    def script(evil: EvilTracker) -> None:
        evil.udp_announce = lambda pkt, _c: [
            tr.udp_announce_reply(pkt.tid, interval=60, leechers=1, seeders=1,
                                  peers=compact(peers) + tail)
        ]  # fmt: skip

    return script


UDP_CASES: dict[str, UdpCase] = {
    "garbage": (_set("connect", lambda pkt, c: [b"\xde\xad"]), r"no reply to 2 connect", ()),
    "wrong transaction id": (
        _set("connect", lambda pkt, c: [tr.udp_connect_reply(pkt.tid ^ 1, 5)]),
        r"ignored 2 bad packets \(last: a wrong transaction id\)",
        (),
    ),
    "wrong action": (
        _set("connect", lambda pkt, c: [tr.udp_scrape_reply(pkt.tid, [])]),
        r"bad tracker reply: scrape reply to a connect request$",
        (),
    ),
    "short packet": (
        _honest_then(lambda r: r[:12]),
        r"bad tracker reply: announce reply of 12 bytes, under 20$",
        (),
    ),
    "empty announce reply": (_honest_then(lambda r: r[:8]), r"empty announce reply", ()),
    "error packet": (
        _set("announce", lambda pkt, c: [tr.udp_error_reply(pkt.tid, "client banned\r\n")]),
        r": tracker failure: client banned\\r\\n$",
        (),
    ),
    "silence": (
        _set("connect", lambda pkt, c: []),
        r"no reply to 2 connect requests in 0\.6 s",
        (),
    ),
    "truncated compact peers": (
        _peers(PeerAddr("10.2.2.1", 1), tail=b"\x0a\x00\x00"),
        None,
        (PeerAddr("10.2.2.1", 1),),
    ),
    "port-0 peers": (
        _peers(PeerAddr("10.2.2.2", 0), PeerAddr("10.2.2.3", 3)),
        None,
        (PeerAddr("10.2.2.3", 3),),
    ),
    "our own address": (
        _peers(PeerAddr(ME, PORT), PeerAddr("10.2.2.4", 4)),
        None,
        (PeerAddr("10.2.2.4", 4),),
    ),
}


@pytest.mark.parametrize("case", list(UDP_CASES))
def test_hostile_udp_tracker(case: str, good: TrackerServer, evil: EvilTracker) -> None:
    script, error, peers = UDP_CASES[case]
    script(evil)
    a = announcer([[evil.udp_url(f"/{SECRET}/announce")], [good.announce_url]])
    start = time.monotonic()
    got = run(a)
    assert time.monotonic() - start < 2.0
    assert got.tier(1).peers == (GOOD_PEER,)
    bad = got.tier(0)
    if error is None:
        assert bad.errors == () and bad.peers == peers
        assert bad.url is not None and bad.url.startswith("udp://")
        return
    assert bad.url is None and bad.peers == ()
    (msg,) = bad.errors
    one_line(msg)
    assert msg.startswith(f"UDP tracker {evil.host}:")
    assert re.search(error, msg), msg


def test_a_dead_tier_never_delays_the_others(good: TrackerServer, evil: EvilTracker) -> None:
    evil.udp_connect = lambda pkt, c: []  # never answers
    a = announcer([[evil.udp_url()], [good.announce_url]], udp_retry=UDPRetry(1.0, 2))
    got = Collect()
    start = time.monotonic()
    threads = a.announce(event="started", left=1, on_result=got)
    deadline = start + 2.0
    while not got.results and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got.results and got.results[0].tier == 1, "the working tier waited for the dead one"
    assert time.monotonic() - start < 1.0
    for t in threads:
        t.join(5)
    assert 2.9 < time.monotonic() - start < 4.0  # 1 s + 2 s, then the dead tier gives up
    assert got.tier(0).errors[0].endswith("no reply to 2 connect requests in 3 s")


# -- tiers (BEP 12) -----------------------------------------------------------


def test_dead_trackers_are_passed_over_and_the_one_that_answers_moves_up(
    good: TrackerServer, evil: EvilTracker
) -> None:
    evil.http = lambda req: HttpReply(status=503)
    bad = evil.http_url()
    a = announcer([[good.announce_url, bad]])
    a.tiers[0][:] = [bad, good.announce_url]  # make the shuffle put the dead one first
    got = run(a)
    r = got.tier(0)
    assert r.url == good.announce_url and r.peers == (GOOD_PEER,)
    assert len(r.errors) == 1 and "answered HTTP 503" in r.errors[0]
    assert a.tiers == [[good.announce_url, bad]]
    run(a, event=None)
    assert len(evil.http_requests) == 1  # the next announce went straight to the good one


def test_tiers_are_shuffled_once() -> None:
    urls = [f"http://127.0.0.1:{p}/announce" for p in range(1, 9)]
    a = announcer([urls], rng=random.Random(4))
    assert sorted(a.tiers[0]) == urls and a.tiers[0] != urls
    assert a.tiers[0] == announcer([urls], rng=random.Random(4)).tiers[0]


def test_usable_schemes_only() -> None:
    a = announcer(
        [
            ["wss://t.example/announce", "magnet:?xt=1", "dht://x"],
            ["UDP://t.example:1/announce", "ws://t.example/", "https://t.example/announce"],
            ["udp://t.example:1/announce", "http://[::1/broken"],  # a repeat, a bad URL
            ["http://t.example/announce"],
        ]
    )
    assert sorted(map(sorted, a.tiers)) == [
        ["UDP://t.example:1/announce", "https://t.example/announce"],
        ["http://t.example/announce"],
        ["udp://t.example:1/announce"],
    ]
    assert not announcer([["wss://t.example/announce"], []])
    assert usable("udp://x:1") and not usable("file:///etc/passwd")


def test_bad_url_still_gives_exactly_one_result(good: TrackerServer) -> None:
    a = announcer([["udp://no-port.example/announce"], [good.announce_url]])
    got = run(a)
    assert got.tier(0).errors == ("UDP tracker no-port.example: bad tracker URL: no port",)


# -- events -------------------------------------------------------------------


def events(evil: EvilTracker) -> list[str | None]:
    out = []
    for r in evil.http_requests:
        values = r.query.get("event")
        out.append(values[0].decode() if values else None)
    return out


def test_started_until_accepted_then_regular(evil: EvilTracker) -> None:
    evil.http = lambda req: HttpReply(status=500)
    a = announcer([[evil.http_url()]])
    run(a, now=T0)
    run(a, event=None, now=T0 + 100)  # "started" never got through, so it is sent again
    evil.http = evil.honest_http
    run(a, event=None, now=T0 + 200)
    run(a, event=None, now=T0 + 300)
    assert events(evil) == ["started", "started", "started", None]


def test_stopped_and_completed_go_only_to_tiers_that_know_us(
    good: TrackerServer, evil: EvilTracker
) -> None:
    dead = "http://127.0.0.1:1/announce"
    a = announcer([[evil.http_url()], [dead]])
    assert run(a, event="completed").results == []  # nobody has seen "started"
    run(a)
    got = run(a, event="stopped")
    assert [r.tier for r in got.results] == [0]
    assert events(evil) == ["started", "stopped"]
    assert evil.http_requests[-1].query["numwant"] == [b"0"]
    assert run(a, event="stopped").results == []  # and it is forgotten after "stopped"


def test_tracker_id_is_echoed(evil: EvilTracker) -> None:
    evil.http = lambda req: peers_reply(b"", **{"tracker id": b"tid\x01"})
    a = announcer([[evil.http_url()]])
    run(a, now=T0)
    run(a, event=None, now=T0 + 2000)
    assert "trackerid" not in evil.http_requests[0].query
    assert evil.http_requests[1].query["trackerid"] == [b"tid\x01"]


# -- re-announce timing (clock as input) --------------------------------------


def intervals(evil: EvilTracker, interval: int, min_interval: int | None) -> None:
    extra = {} if min_interval is None else {"min interval": min_interval}
    evil.http = lambda req: bencode.encode(
        {b"interval": interval, b"peers": b""} | {k.encode(): v for k, v in extra.items()}
    )


def test_reannounce_at_the_interval_and_sooner_when_peers_run_low(evil: EvilTracker) -> None:
    intervals(evil, 600, 100)
    a = announcer([[evil.http_url()]])
    assert a.due(T0)  # never announced
    got = run(a, now=T0)
    assert got.tier(0).interval == 600 and got.tier(0).min_interval == 100
    assert a.next_announce_at() == T0 + 600
    assert a.next_announce_at(peers_low=True) == T0 + 100
    assert not a.due(T0 + 99, peers_low=True) and a.due(T0 + 100, peers_low=True)
    assert not a.due(T0 + 599) and a.due(T0 + 600)
    assert a.maybe_reannounce(T0 + 599, left=5) == []
    results = Collect()
    threads = a.maybe_reannounce(T0 + 600, left=5, downloaded=7, uploaded=9, on_result=results)
    assert len(threads) == 1
    assert a.next_announce_at() is None  # busy
    assert a.maybe_reannounce(T0 + 601, left=5) == []  # never two at once per tier
    threads[0].join(5)
    assert len(results.results) == 1 and results.results[0].event is None
    last = evil.http_requests[-1].query
    assert (last["left"], last["downloaded"], last["uploaded"]) == ([b"5"], [b"7"], [b"9"])
    assert "event" not in last
    assert a.next_announce_at() == T0 + 1200


def test_without_min_interval_peers_low_waits_a_default(evil: EvilTracker) -> None:
    intervals(evil, 1800, None)  # as every UDP tracker: there is no min interval in BEP 15
    a = announcer([[evil.http_url()]])
    run(a, now=T0)
    assert a.next_announce_at(peers_low=True) == T0 + LOW_PEERS_WAIT


@pytest.mark.parametrize(("interval", "min_interval"), [(0, 0), (1, None), (5, 0)])
def test_a_tracker_cannot_make_us_spin(
    evil: EvilTracker, interval: int, min_interval: int | None
) -> None:
    intervals(evil, interval, min_interval)
    a = announcer([[evil.http_url()]])
    run(a, now=T0)
    now = T0
    while now <= T0 + 300:  # five simulated minutes of a loop polling twice a second
        for t in a.maybe_reannounce(now, peers_low=True, left=1):
            t.join(5)
        now += 0.5
    # the first announce, then at most one per 30 s (the promised floor, written out so that
    # lowering MIN_REANNOUNCE fails here)
    assert len(evil.http_requests) == 1 + 300 // 30


def test_failed_tier_backs_off(evil: EvilTracker) -> None:
    evil.http = lambda req: HttpReply(status=502)
    a = announcer([[evil.http_url()]])
    run(a, now=T0)
    assert a.next_announce_at() == T0 + RETRY_BASE
    assert a.next_announce_at(peers_low=True) == T0 + RETRY_BASE  # no hurrying a broken tier
    for t in a.maybe_reannounce(T0 + RETRY_BASE, left=1):
        t.join(5)
    assert a.next_announce_at() == T0 + RETRY_BASE * 3  # then 30 s after that
    evil.http = evil.honest_http
    for t in a.maybe_reannounce(T0 + RETRY_BASE * 3, left=1):
        t.join(5)
    assert a.next_announce_at() == T0 + RETRY_BASE * 3 + 1800
    assert len(evil.http_requests) == 3


# -- IPv6 ---------------------------------------------------------------------


def test_ipv6_http_tracker_gives_peers6() -> None:
    need_ipv6_loopback()
    with TrackerServer("::1") as server:
        req = AnnounceRequest(IH, make_peer_id(), 7001, 0, 0, 0, "started")
        net.announce_http(server.announce_url, req, timeout=5, source_address="::1")
        a = announcer([[server.announce_url]], source_address="::1", exclude=[("::1", PORT)])
        got = run(a)
        assert got.tier(0).peers == (PeerAddr("::1", 7001),)
        assert str(got.tier(0).peers[0]) == "[::1]:7001"
        assert PeerAddr("::1", PORT) in server.state.peers(IH)


def test_ipv6_udp_tracker_through_the_announcer() -> None:
    need_ipv6_loopback()
    with EvilTracker("::1") as evil6:
        evil6.peers = [PeerAddr("::1", 7002), PeerAddr("::1", PORT), PeerAddr("10.0.0.1", 1)]
        a = announcer([[evil6.udp_url()]], source_address="::1", exclude=[("[::1]", PORT)])
        got = run(a)
        assert got.tier(0).errors == ()
        assert got.tier(0).peers == (PeerAddr("::1", 7002),)


# -- scrape -------------------------------------------------------------------


def test_scrape_all(good: TrackerServer, evil: EvilTracker) -> None:
    with_secret = evil.udp_url(f"/{SECRET}/announce")
    closed = "http://127.0.0.1:1/announce"
    trackers = [
        [good.announce_url, "wss://t.example/announce"],
        [with_secret, closed],
        [evil.http_url("/a")],  # no "announce" in the path: no scrape URL (BEP 48)
    ]
    start = time.monotonic()
    got = scrape_all(trackers, IH, timeout=2.0, udp_retry=FAST)
    assert time.monotonic() - start < 2.5
    assert [u for u, _ in got] == [
        redact(good.announce_url),
        redact(with_secret),
        redact(closed),
        redact(evil.http_url()),
    ]
    assert got[0][1] == ScrapeResult(complete=1, incomplete=0, downloaded=0)
    assert got[1][1] == ScrapeResult(complete=1, incomplete=2, downloaded=3)
    assert isinstance(got[2][1], str) and "refused the connection" in got[2][1]
    assert isinstance(got[3][1], str) and "no scrape URL" in got[3][1]
    for url, r in got:
        assert SECRET not in url and (not isinstance(r, str) or SECRET not in r)


def test_scrape_all_of_nothing() -> None:
    assert scrape_all([["wss://t.example/announce"]], IH, timeout=1) == []


def test_redact() -> None:
    assert redact(f"udp://u:p@t.example:6969/{SECRET}/announce?pk={SECRET}") == (
        "udp://t.example:6969"
    )
    assert redact("http://[::1/") == "(unreadable tracker URL)"
