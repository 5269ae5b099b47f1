"""`fetch --seed-ratio/--seed-time`: keep seeding after completion, then stop by itself."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from tests.interop.test_seed import (
    IpSource,
    fetching,
    free_port,
    mptorrent_seed,
    start_fetch,
    wait_listening,
)
from tests.swarm import (
    LtPeer,
    Swarm,
    TorrentCase,
    run_lt_leecher,
    same_tree,
    write_torrent,
)

pytestmark = pytest.mark.interop


def seeded_bytes(line: str) -> float:
    """The total of a "seeded: 40.0 MiB uploaded in all" line, give or take its rounding."""
    m = re.fullmatch(r"seeded: (?P<n>\d+(\.\d)?) (?P<unit>B|KiB|MiB|GiB) uploaded in all", line)
    assert m, line
    unit = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[m["unit"]]
    return (float(m["n"]) + (0.05 if m["unit"] != "B" else 0)) * unit


def test_seed_ratio_serves_a_libtorrent_leecher_then_exits(
    single_case: TorrentCase, tmp_path: Path, fresh_ip: IpSource
) -> None:
    torrent = write_torrent(tmp_path, single_case.torrent)
    out = tmp_path / "out.bin"
    fetch_ip = fresh_ip()
    port = free_port(fetch_ip)
    # Ratio 1: the leecher's only source is the fetch, so the fetch may leave only once it
    # has uploaded the whole torrent.  (With 0.5 it may rightly leave as soon as it
    # completes, if the leecher already took half during the download.)
    with (
        mptorrent_seed(torrent, single_case.payload.root, fresh_ip(), "--no-trackers") as src,
        fetching(
            torrent, out, "-j", "2", "--no-trackers", "--peer", str(src.addr),
            "--bind", fetch_ip, "--port", str(port), "--seed-ratio", "1",
        ) as fetch,
    ):  # fmt: skip
        wait_listening((fetch_ip, port))
        with LtPeer(
            single_case.torrent, tmp_path / "lt", ip=fresh_ip(), role="leech",
            use_trackers=False, pex=False,
        ) as leecher:  # fmt: skip
            # The source seeder is unknown to the leecher (no PEX, or the fetch would tell
            # it): every byte it gets comes from the fetch, during the download or after it
            # completed.  It is told of the
            # fetch once: the fetch seeds on the same connection, so the leecher never
            # has to re-dial (libtorrent would wait 60 s, its min_reconnect_time, to dial
            # a peer that had closed on it).
            leecher.add_peer(fetch_ip, port)
            _, err = fetch.communicate(timeout=30)
            leecher.wait_finished(timeout=10)
            got = leecher.stats()
    assert fetch.returncode == 0, err[-2000:]
    # -q: the download's summary when it completed, then the total uploaded
    lines = err.splitlines()
    assert lines[-2].startswith("done: "), lines
    total = single_case.meta.total_length
    assert seeded_bytes(lines[-1]) >= total, lines  # ratio 1
    assert got.payload_download >= total, got  # and all of it reached the leecher
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
    # nobody else was there to upload to: the seeder it fetched from is complete
    assert err.splitlines()[-1] == "seeded: 0 B uploaded in all", err[-2000:]


def test_complete_output_with_seed_time_seeds_without_downloading(
    single_case: TorrentCase, tmp_path: Path, fresh_ip: IpSource
) -> None:
    """Nothing left to fetch: the existing data is checked, then served by the same
    serve-only workers for the time asked; a libtorrent leecher gets all of it."""
    torrent = write_torrent(tmp_path, single_case.torrent)
    out = tmp_path / "out.bin"
    shutil.copyfile(single_case.payload.root, out)
    fetch_ip = fresh_ip()
    port = free_port(fetch_ip)
    with fetching(
        torrent, out, "--no-trackers", "--peer", "127.0.0.1:9", "--bind", fetch_ip,
        "--port", str(port), "--seed-time", "0.1",
    ) as fetch:  # fmt: skip
        wait_listening((fetch_ip, port))
        run_lt_leecher(single_case.torrent, tmp_path / "lt", [(fetch_ip, port)], ip=fresh_ip(),
                       timeout=10)  # fmt: skip
        _, err = fetch.communicate(timeout=30)
    assert fetch.returncode == 0, err[-2000:]
    assert f"{single_case.meta.num_pieces} piece(s) already on disk" in err, err
    # the leecher's only source, which it got the whole torrent from
    assert seeded_bytes(err.splitlines()[-1]) >= single_case.meta.total_length, err
    assert same_tree(tmp_path / "lt" / single_case.payload.root.name, single_case.payload.root)


def test_seeding_fetch_leaves_the_seeds_it_downloaded_from(
    single_case: TorrentCase, lt_swarm: Swarm, tmp_path: Path, fresh_ip: IpSource
) -> None:
    """Once complete, a connection to a seed serves nobody: the workers close it (as
    libtorrent does between two seeds) and keep seeding for the time asked."""
    torrent = write_torrent(tmp_path, single_case.torrent)
    peer_args = [a for addr in lt_swarm.addrs for a in ("--peer", str(addr))]
    connected = seeding_alone = False
    with fetching(
        torrent, tmp_path / "out.bin", "-j", "2", "--no-trackers", *peer_args,
        "--bind", fresh_ip(), "--port", "0", "--seed-time", "0.1",
    ) as fetch:  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and fetch.poll() is None:
            n = sum(st.num_peers for st in lt_swarm.stats())
            connected = connected or n > 0
            if connected and n == 0:
                seeding_alone = fetch.poll() is None  # left them, still seeding
                break
            time.sleep(0.05)
        _, err = fetch.communicate(timeout=30)
    assert fetch.returncode == 0, err[-2000:]
    assert connected and seeding_alone, err[-2000:]
    assert same_tree(tmp_path / "out.bin", single_case.payload.root)
