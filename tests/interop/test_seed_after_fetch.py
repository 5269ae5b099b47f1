"""`fetch --seed-ratio/--seed-time`: keep seeding after completion, then stop by itself."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.interop.test_seed import (
    IpSource,
    free_port,
    mptorrent_seed,
    start_fetch,
    wait_listening,
)
from tests.swarm import LtPeer, TorrentCase, same_tree, write_torrent

pytestmark = pytest.mark.interop


def test_seed_ratio_serves_a_libtorrent_leecher_then_exits(
    single_case: TorrentCase, tmp_path: Path, fresh_ip: IpSource
) -> None:
    torrent = write_torrent(tmp_path, single_case.torrent)
    out = tmp_path / "out.bin"
    fetch_ip = fresh_ip()
    port = free_port(fetch_ip)
    with mptorrent_seed(torrent, single_case.payload.root, fresh_ip(), "--no-trackers") as src:
        fetch = start_fetch(
            torrent, out, "-j", "2", "--no-trackers", "--peer", str(src.addr),
            "--bind", fetch_ip, "--port", str(port), "--seed-ratio", "1",
        )  # fmt: skip
        # Ratio 1: the leecher's only source is the fetch, so the fetch may leave only once
        # it has uploaded the whole torrent.  (With 0.5 it may rightly leave as soon as
        # it completes, if the leecher already took half during the download.)
        try:
            wait_listening((fetch_ip, port))
            with LtPeer(
                single_case.torrent, tmp_path / "lt", ip=fresh_ip(), role="leech",
                use_trackers=False,
            ) as leecher:  # fmt: skip
                # The source seeder is unknown to the leecher: every byte it gets
                # comes from the fetch, during the download or after it completed.
                deadline = time.monotonic() + 60
                while fetch.poll() is None and time.monotonic() < deadline:
                    leecher.add_peer(fetch_ip, port)  # re-dial once fetch turns seeder
                    time.sleep(0.5)
                _, err = fetch.communicate(timeout=10)
                leecher.wait_finished(timeout=10)
        finally:
            if fetch.poll() is None:
                fetch.kill()
                fetch.communicate()
    assert fetch.returncode == 0, err[-2000:]
    assert "seeded:" in err
    assert same_tree(out, single_case.payload.root)
    assert same_tree(tmp_path / "lt" / single_case.payload.root.name, single_case.payload.root)


def test_seed_time_stops_after_the_time_limit(
    single_case: TorrentCase, tmp_path: Path, fresh_ip: IpSource
) -> None:
    torrent = write_torrent(tmp_path, single_case.torrent)
    with mptorrent_seed(torrent, single_case.payload.root, fresh_ip(), "--no-trackers") as src:
        t0 = time.monotonic()
        fetch = start_fetch(
            torrent, tmp_path / "out.bin", "--no-trackers", "--peer", str(src.addr),
            "--bind", fresh_ip(), "--port", "0", "--seed-time", "0.05",
        )  # fmt: skip
        _, err = fetch.communicate(timeout=60)
    assert fetch.returncode == 0, err[-2000:]
    assert time.monotonic() - t0 >= 3.0  # 0.05 min of seeding after the download
    assert "seeded:" in err
