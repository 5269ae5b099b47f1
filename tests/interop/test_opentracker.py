"""Our HTTP tracker client against Debian's opentracker, and libtorrent against our tracker.

Each test peer connects from its own 127.x address, because both trackers
record the connection's source address, not a client-supplied one.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mptorrent.errors import TrackerError
from mptorrent.messages import PeerAddr
from mptorrent.netio.net import HTTPStatusError, announce_http, scrape_http
from mptorrent.netio.trackerserver import TrackerServer
from mptorrent.proto.tracker import AnnounceRequest, AnnounceResponse, ScrapeResult, make_peer_id
from tests.interop.opentracker import OpenTracker, run_opentracker

pytestmark = pytest.mark.interop

IH = bytes.fromhex("0123456789abcdef0123456789abcdef01234567")
IH_STOP = bytes.fromhex("76543210fedcba9876543210fedcba9876543210")
UNLISTED = bytes.fromhex("ff" * 20)
A, B, LT = "127.0.0.11", "127.0.0.12", "127.0.0.13"


@pytest.fixture(scope="module")
def tracker(opentracker_bin: str) -> Iterator[OpenTracker]:
    with run_opentracker([IH, IH_STOP]) as t:
        yield t


def announce(
    url: str,
    src: str,
    peer_id: bytes,
    port: int,
    info_hash: bytes = IH,
    *,
    left: int = 1000,
    **kw: Any,
) -> AnnounceResponse:
    req = AnnounceRequest(info_hash, peer_id, port, 0, 0, left, **kw)
    return announce_http(url, req, timeout=5, source_address=src)


def test_fixture_urls(tracker: OpenTracker) -> None:
    assert tracker.announce_url == f"http://127.0.0.1:{tracker.port}/announce"
    assert tracker.udp_url == f"udp://127.0.0.1:{tracker.port}/announce"
    assert tracker.process.poll() is None


def test_peers_find_each_other_through_opentracker(tracker: OpenTracker) -> None:
    pa, pb = make_peer_id(), make_peer_id()
    announce(tracker.announce_url, A, pa, 6881, event="started")
    rb = announce(tracker.announce_url, B, pb, 6882, event="started", left=0)
    assert PeerAddr(A, 6881) in rb.peers
    ra = announce(tracker.announce_url, A, pa, 6881)
    assert PeerAddr(B, 6882) in ra.peers
    # opentracker, unlike our tracker, may hand a peer its own address back
    assert set(ra.peers) <= {PeerAddr(A, 6881), PeerAddr(B, 6882)}
    assert (ra.complete, ra.incomplete) == (1, 1)
    assert ra.interval > 0 and ra.min_interval is not None
    assert scrape_http(tracker.announce_url, IH, timeout=5) == ScrapeResult(1, 1, 0)


def test_stopped_and_completed_on_opentracker(tracker: OpenTracker) -> None:
    pa, pb = make_peer_id(), make_peer_id()
    url = tracker.announce_url
    announce(url, A, pa, 7001, IH_STOP, event="started")
    announce(url, B, pb, 7002, IH_STOP, event="started")
    assert scrape_http(url, IH_STOP, timeout=5) == ScrapeResult(0, 2, 0)
    announce(url, A, pa, 7001, IH_STOP, event="completed", left=0)
    assert scrape_http(url, IH_STOP, timeout=5) == ScrapeResult(1, 1, 1)
    announce(url, A, pa, 7001, IH_STOP, event="stopped", left=0)
    rb = announce(url, B, pb, 7002, IH_STOP)
    assert PeerAddr(A, 7001) not in rb.peers
    assert scrape_http(url, IH_STOP, timeout=5) == ScrapeResult(0, 1, 1)


def test_unlisted_torrent_is_refused(tracker: OpenTracker) -> None:
    with pytest.raises(TrackerError, match=r"^tracker failure: Requested download is not auth"):
        announce(tracker.announce_url, A, make_peer_id(), 6881, UNLISTED)
    # and a scrape simply leaves it out
    assert scrape_http(tracker.announce_url, UNLISTED, timeout=5) == ScrapeResult(0, 0, 0)


def test_opentracker_refuses_dictionary_peers(tracker: OpenTracker) -> None:
    # Debian's build answers compact=0 with "400 Invalid Request" (an HTML page)
    with pytest.raises(HTTPStatusError, match="answered HTTP 400") as info:
        announce(tracker.announce_url, A, make_peer_id(), 6881, compact=False)
    assert info.value.status == 400


# -- libtorrent against our TrackerServer -------------------------------------


def test_libtorrent_and_our_client_meet_on_our_tracker() -> None:
    lt = pytest.importorskip("libtorrent")
    with TrackerServer() as server, tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp, "data.bin")
        data.write_bytes(os.urandom(40_000))
        ct = lt.create_torrent(lt.list_files(str(data)), 16384, lt.create_torrent.v1_only)
        ct.add_tracker(server.announce_url)
        lt.set_piece_hashes(ct, tmp)
        ti = lt.torrent_info(ct.generate())
        info_hash = ti.info_hashes().v1.to_bytes()

        # our client is in the swarm first, so libtorrent's reply must list it
        mine = make_peer_id()
        first = announce(server.announce_url, A, mine, 6881, info_hash, event="started")
        assert first.peers == ()

        session = lt.session({
            "listen_interfaces": f"{LT}:0", "outgoing_interfaces": LT,
            "enable_dht": False, "dht_bootstrap_nodes": "", "enable_lsd": False,
            "enable_upnp": False, "enable_natpmp": False, "enable_ip_notifier": False,
            "enable_incoming_utp": False, "enable_outgoing_utp": False,
            "max_retry_port_bind": 0, "stop_tracker_timeout": 1,
            "alert_mask": lt.alert_category.error | lt.alert_category.tracker
            | lt.alert_category.status,
        })  # fmt: skip
        try:
            atp = lt.add_torrent_params()
            atp.ti = ti
            atp.save_path = tmp
            atp.flags = 0  # neither paused nor auto-managed
            handle = session.add_torrent(atp)
            reply = None
            errors: list[str] = []
            deadline = time.monotonic() + 15
            while reply is None and time.monotonic() < deadline:
                session.wait_for_alert(200)
                for alert in session.pop_alerts():
                    if isinstance(alert, lt.tracker_reply_alert):
                        reply = alert
                    elif isinstance(alert, lt.tracker_error_alert):
                        errors.append(alert.message())
            assert reply is not None, f"libtorrent got no tracker reply: {errors}"
            assert reply.num_peers == 1  # it parsed our compact reply and found us

            lt_port = session.listen_port()
            # libtorrent is a seeder (left=0) on its own 127.0.0.13
            seen = announce(server.announce_url, A, mine, 6881, info_hash)
            assert seen.peers == (PeerAddr(LT, lt_port),)
            assert (seen.complete, seen.incomplete) == (1, 1)
            assert scrape_http(server.announce_url, info_hash, timeout=5) == ScrapeResult(1, 1, 0)

            # Removing the torrent sends event=stopped at once; destroying the
            # session instead holds that announce back for stop_tracker_timeout.
            session.remove_torrent(handle)
            deadline = time.monotonic() + 5
            while PeerAddr(LT, lt_port) in server.state.peers(info_hash):
                assert time.monotonic() < deadline, "libtorrent's stopped announce never came"
                time.sleep(0.01)
            assert announce(server.announce_url, A, mine, 6881, info_hash).peers == ()
        finally:
            del session
