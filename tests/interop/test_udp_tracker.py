"""Our UDP tracker client (BEP 15) against Debian's opentracker, with libtorrent in the swarm.

opentracker serves UDP on the same port as HTTP and records each peer's source
address, so every test peer announces from its own 127.x address.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from mptorrent.errors import TrackerError
from mptorrent.messages import PeerAddr
from mptorrent.netio import net
from mptorrent.netio.announcer import Announcer, TierResult, redact, scrape_all
from mptorrent.proto.tracker import AnnounceRequest, AnnounceResponse, ScrapeResult, make_peer_id
from tests.interop.opentracker import OpenTracker, run_opentracker
from tests.swarm import LtPeer, TorrentCase, single_file_case

pytestmark = pytest.mark.interop

IH = bytes.fromhex("1111111111111111111111111111111111111111")
IH_SCRAPE = bytes.fromhex("2222222222222222222222222222222222222222")
UNLISTED = bytes.fromhex("ee" * 20)
A, B, LT, C = "127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14"


@pytest.fixture(scope="module")
def lt_case(tmp_path_factory: pytest.TempPathFactory) -> TorrentCase:
    """A small torrent made by libtorrent, so opentracker can whitelist it up front."""
    return single_file_case(tmp_path_factory.mktemp("udp-lt"), size=300_000, piece_length=16384)


@pytest.fixture(scope="module")
def tracker(opentracker_bin: str, lt_case: TorrentCase) -> Iterator[OpenTracker]:
    with run_opentracker([IH, IH_SCRAPE, lt_case.meta.info_hash]) as t:
        yield t


def announce(
    url: str, src: str, peer_id: bytes, port: int, info_hash: bytes = IH, *,
    left: int = 1000, event: str | None = None,
) -> AnnounceResponse:  # fmt: skip
    req = AnnounceRequest(info_hash, peer_id, port, 0, 0, left, event, key=1)
    return net.announce_udp(url, req, timeout=5, source_address=src)


def test_peers_find_each_other_over_udp(tracker: OpenTracker) -> None:
    pa, pb = make_peer_id(), make_peer_id()
    announce(tracker.udp_url, A, pa, 6881, event="started")
    rb = announce(tracker.udp_url, B, pb, 6882, left=0, event="started")
    assert PeerAddr(A, 6881) in rb.peers
    ra = announce(tracker.udp_url, A, pa, 6881)  # a regular announce, connection id reused
    assert PeerAddr(B, 6882) in ra.peers
    assert set(ra.peers) <= {PeerAddr(A, 6881), PeerAddr(B, 6882)}
    assert (ra.complete, ra.incomplete) == (1, 1)
    assert ra.interval > 0 and ra.min_interval is None  # BEP 15 has no min interval
    # the same swarm seen over HTTP
    assert PeerAddr(B, 6882) in net.announce_http(
        tracker.announce_url, AnnounceRequest(IH, pa, 6881, 0, 0, 1000), timeout=5,
        source_address=A,
    ).peers  # fmt: skip


def test_scrape_counts_match_over_http_and_udp(tracker: OpenTracker) -> None:
    ids = [make_peer_id() for _ in range(3)]
    announce(tracker.udp_url, A, ids[0], 7001, IH_SCRAPE, event="started")
    announce(tracker.udp_url, B, ids[1], 7002, IH_SCRAPE, event="started")
    announce(tracker.udp_url, C, ids[2], 7003, IH_SCRAPE, left=0, event="started")
    announce(tracker.udp_url, A, ids[0], 7001, IH_SCRAPE, left=0, event="completed")
    want = ScrapeResult(complete=2, incomplete=1, downloaded=1)
    assert net.scrape_udp(tracker.udp_url, IH_SCRAPE, timeout=5) == want
    assert net.scrape_http(tracker.announce_url, IH_SCRAPE, timeout=5) == want
    got = scrape_all([[tracker.announce_url], [tracker.udp_url]], IH_SCRAPE, timeout=5)
    assert got == [(redact(tracker.announce_url), want), (redact(tracker.udp_url), want)]
    announce(tracker.udp_url, B, ids[1], 7002, IH_SCRAPE, event="stopped")
    assert net.scrape_udp(tracker.udp_url, IH_SCRAPE, timeout=5).incomplete == 0


def test_unlisted_torrent_fails_fast_over_udp(tracker: OpenTracker) -> None:
    start = time.monotonic()
    with pytest.raises(TrackerError, match=r"^UDP tracker 127.0.0.1:\d+: .*empty announce reply"):
        announce(tracker.udp_url, A, make_peer_id(), 6881, UNLISTED, event="started")
    assert time.monotonic() - start < 1.0
    assert net.scrape_udp(tracker.udp_url, UNLISTED, timeout=5) == ScrapeResult(0, 0, 0)


def test_libtorrent_seeder_announcing_over_udp_is_returned_to_us(
    tracker: OpenTracker, lt_case: TorrentCase
) -> None:
    ih = lt_case.meta.info_hash
    with LtPeer(lt_case.torrent, lt_case.save_dir, ip=LT, tracker_url=tracker.udp_url) as seeder:
        seen: tuple[PeerAddr, ...] = ()
        mine = make_peer_id()
        deadline = time.monotonic() + 15
        while seeder.addr not in seen:
            assert time.monotonic() < deadline, f"libtorrent never showed up: {seen}"
            time.sleep(0.1)
            # through the announcer, as a fetch does it: UDP, tiers, source address
            got: list[TierResult] = []
            a = Announcer(
                [[tracker.udp_url]], info_hash=ih, peer_id=mine, port=6999, source_address=C
            )
            a.announce(event="started", left=1, on_result=got.append, wait=5)
            assert got and got[0].errors == (), got
            seen = got[0].peers
        assert got[0].complete == 1  # the seeder, counted by opentracker
        assert net.scrape_udp(tracker.udp_url, ih, timeout=5).complete == 1
