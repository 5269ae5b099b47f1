"""`mptorrent scrape` against our own tracker on loopback (HTTP) and a dead UDP one."""

from __future__ import annotations

import socket
from pathlib import Path

from click.testing import CliRunner

from mptorrent.cli.main import cli
from mptorrent.netio import net
from mptorrent.netio.trackerserver import TrackerServer
from mptorrent.proto import metainfo, tracker


def _torrent(tmp_path: Path, tiers: list[list[str]]) -> tuple[Path, bytes]:
    data = metainfo.build(
        name="x.bin", piece_length=16384, pieces=b"\x01" * 20, length=1000, trackers=tiers
    )
    path = tmp_path / "x.torrent"
    path.write_bytes(data)
    return path, metainfo.parse(data).info_hash


def test_scrape_reports_counts_per_tracker_and_errors(tmp_path: Path) -> None:
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))  # a UDP tracker that never answers
    with TrackerServer("127.0.0.1", 0) as srv:
        path, info_hash = _torrent(
            tmp_path, [[srv.announce_url], [f"udp://127.0.0.1:{dead.getsockname()[1]}/announce"]]
        )
        for host, left in (("127.0.0.11", 0), ("127.0.0.12", 1000)):
            req = tracker.AnnounceRequest(
                info_hash=info_hash, peer_id=tracker.make_peer_id(), port=6881,
                uploaded=0, downloaded=0, left=left, event="started",
            )  # fmt: skip
            net.announce_http(srv.announce_url, req, timeout=5, source_address=host)
        result = CliRunner().invoke(cli, ["scrape", str(path), "--timeout", "1"])
    dead.close()
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any("seeders 1  leechers 1" in line for line in lines)
    assert any("error:" in line and "127.0.0.1" in line for line in lines)


def test_scrape_without_trackers_is_exit_1(tmp_path: Path) -> None:
    path, _ = _torrent(tmp_path, [])
    result = CliRunner().invoke(cli, ["scrape", str(path)])
    assert result.exit_code == 1
    assert "no usable trackers" in result.stderr
