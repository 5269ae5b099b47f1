"""BEP 12 tiers against real trackers: a dead first tier must not cost the download its peers.

The dead tier holds an HTTP URL on a closed port and a UDP port that takes
datagrams and never answers; the working tier holds opentracker (UDP) and our
own TrackerServer (HTTP) behind a closed UDP port.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from mptorrent.messages import PeerAddr
from mptorrent.netio import net
from mptorrent.netio.announcer import UDP_RETRY, Announcer, TierResult
from mptorrent.netio.trackerserver import TrackerServer
from mptorrent.proto.tracker import AnnounceRequest, UDPRetry, make_peer_id
from tests.interop.opentracker import OpenTracker, run_opentracker

pytestmark = pytest.mark.interop

IH = bytes.fromhex("3333333333333333333333333333333333333333")
SEED = PeerAddr("127.0.0.21", 7100)  # already in the swarm on every working tracker
ME = "127.0.0.22"


@pytest.fixture(scope="module")
def tracker(opentracker_bin: str) -> Iterator[OpenTracker]:
    with run_opentracker([IH]) as t:
        req = AnnounceRequest(IH, make_peer_id(), SEED.port, 0, 0, 0, "started")
        net.announce_udp(t.udp_url, req, timeout=5, source_address=SEED.host)
        yield t


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A UDP tracker URL whose port takes every datagram and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield f"udp://127.0.0.1:{s.getsockname()[1]}/announce"


def closed_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dead_first_tier_does_not_delay_peers_from_the_second(
    tracker: OpenTracker, black_hole: str
) -> None:
    dead_http = f"http://127.0.0.1:{closed_port(socket.SOCK_STREAM)}/announce"
    refusing_udp = f"udp://127.0.0.1:{closed_port(socket.SOCK_DGRAM)}/announce"
    retry = UDPRetry(0.5, 2)  # the black hole costs 1.5 s (the CLI's 2 s + 4 s, scaled down)
    with TrackerServer("127.0.0.1") as ours:
        req = AnnounceRequest(IH, make_peer_id(), SEED.port, 0, 0, 0, "started")
        net.announce_http(ours.announce_url, req, timeout=5, source_address=SEED.host)
        a = Announcer(
            [[dead_http, black_hole], [refusing_udp, tracker.udp_url, ours.announce_url]],
            info_hash=IH, peer_id=make_peer_id(), port=6881, source_address=ME,
            udp_retry=retry, exclude=[(ME, 6881)],
        )  # fmt: skip
        a.tiers[1][:] = [refusing_udp, tracker.udp_url, ours.announce_url]
        results: list[tuple[float, TierResult]] = []
        arrived = threading.Condition()

        def on_result(r: TierResult) -> None:
            with arrived:
                results.append((time.monotonic() - start, r))
                arrived.notify_all()

        start = time.monotonic()
        threads = a.announce(event="started", left=100, on_result=on_result)
        with arrived:
            assert arrived.wait_for(lambda: results, timeout=3.0)
        took, first = results[0]
        assert first.tier == 1 and took < 1.0, results
        assert first.url == tracker.udp_url and SEED in first.peers
        assert len(first.errors) == 1 and "refused the connection" in first.errors[0]
        assert a.tiers[1][0] == tracker.udp_url  # BEP 12: it moves to the front

        for t in threads:
            t.join(5)
        took, dead = results[1]
        assert dead.tier == 0 and dead.url is None and dead.peers == ()
        assert 1.4 < took < 2.5
        assert len(dead.errors) == 2
        assert any("refused the connection" in e for e in dead.errors)
        assert any("no reply to 2 connect requests in 1.5 s" in e for e in dead.errors)

        # the next announce to the working tier goes straight to opentracker
        again: list[TierResult] = []
        a.announce(event=None, left=100, on_result=again.append, wait=3.0)
        (tier1,) = [r for r in again if r.tier == 1]
        assert tier1.url == tracker.udp_url and tier1.errors == ()


def test_the_cli_schedule_keeps_a_dead_udp_tracker_under_ten_seconds() -> None:
    assert UDP_RETRY.total <= 10.0
    assert (UDP_RETRY.base, UDP_RETRY.tries) == (2.0, 2)


def test_mixed_http_and_udp_tier_on_real_trackers(tracker: OpenTracker) -> None:
    with TrackerServer("127.0.0.1") as ours:
        a = Announcer(
            [[tracker.udp_url], [ours.announce_url], [tracker.announce_url]],
            info_hash=IH, peer_id=make_peer_id(), port=6882, source_address="127.0.0.23",
        )  # fmt: skip
        got: list[TierResult] = []
        a.announce(event="started", left=0, on_result=got.append, wait=5.0)
        assert sorted(r.tier for r in got) == [0, 1, 2]
        assert all(r.errors == () for r in got), got
        by_tier = {r.tier: r for r in got}
        assert SEED in by_tier[0].peers and SEED in by_tier[2].peers
        # then "stopped" to every tier that accepted us, and the swarm forgets us
        stopped: list[TierResult] = []
        a.announce(event="stopped", left=0, on_result=stopped.append, wait=5.0)
        assert sorted(r.tier for r in stopped) == [0, 1, 2]
        assert PeerAddr("127.0.0.23", 6882) not in ours.state.peers(IH)
