"""IPv6 peers (BEP 7): a libtorrent seeder on [::1], reached through --peer and through peers6."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import libtorrent as lt
import pytest

from mptorrent.proto import metainfo
from tests.fakes.evil_tracker import need_ipv6_loopback
from tests.swarm import TorrentCase, same_tree, session_settings, write_torrent

pytestmark = pytest.mark.interop


def _free_port6() -> int:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def v6_seeder(single_case: TorrentCase) -> Iterator[int]:
    need_ipv6_loopback()
    port = _free_port6()
    settings = session_settings("127.0.0.1", port, seed=True)
    settings["listen_interfaces"] = f"[::1]:{port}"  # the harness pins peers to 127/8
    settings["outgoing_interfaces"] = "::1"
    ses = lt.session(settings)
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(lt.bdecode(single_case.torrent))
    params.save_path = str(single_case.save_dir)
    params.flags &= ~(lt.torrent_flags.paused | lt.torrent_flags.auto_managed)
    handle = ses.add_torrent(params)
    deadline = time.monotonic() + 30
    while handle.status().state != lt.torrent_status.seeding:
        assert time.monotonic() < deadline, "libtorrent seeder on ::1 never became a seed"
        time.sleep(0.05)
    yield port
    ses.remove_torrent(handle)
    del ses


def _fetch(torrent: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "mptorrent", "fetch", str(torrent), "-o", str(out), "-q",
           "--no-dht", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def test_fetch_from_a_libtorrent_seeder_on_ipv6_loopback_via_peer(
    single_case: TorrentCase, v6_seeder: int, tmp_path: Path
) -> None:
    torrent = write_torrent(tmp_path, single_case.torrent, "t.torrent")
    out = tmp_path / "out.bin"
    r = _fetch(torrent, out, "--no-trackers", "--peer", f"[::1]:{v6_seeder}", "--bind", "::1",
               "--port", "0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "1 peer(s) used" in r.stderr
    assert same_tree(out, single_case.payload.root)


def test_fetch_finds_an_ipv6_seeder_through_peers6(
    single_case: TorrentCase, v6_seeder: int, tmp_path: Path
) -> None:
    from mptorrent.netio import net
    from mptorrent.netio.trackerserver import TrackerServer
    from mptorrent.proto import tracker

    meta = single_case.meta
    with TrackerServer("::1", 0) as srv:
        # Register the libtorrent seeder's address as a tracker would see it.
        req = tracker.AnnounceRequest(
            info_hash=meta.info_hash, peer_id=tracker.make_peer_id(), port=v6_seeder,
            uploaded=0, downloaded=0, left=0, event="started",
        )  # fmt: skip
        net.announce_http(srv.announce_url, req, timeout=5, source_address="::1")
        data = metainfo.build(
            name=meta.name, piece_length=meta.piece_length, pieces=meta.pieces,
            length=meta.total_length, trackers=[[srv.announce_url]],
        )  # fmt: skip
        torrent = tmp_path / "t.torrent"
        torrent.write_bytes(data)
        assert metainfo.parse(data).info_hash == meta.info_hash
        out = tmp_path / "out.bin"
        r = _fetch(torrent, out, "--bind", "::1", "--port", "0")
    assert r.returncode == 0, r.stderr
    assert same_tree(out, single_case.payload.root)
