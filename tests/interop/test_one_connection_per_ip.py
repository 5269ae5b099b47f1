"""One connection per peer address from all our workers together (issue 18).

Real peers refuse a second connection from an address already connected
(``allow_multiple_connections_per_ip`` is off by default; tests/swarm.py's loopback swarms
turn it on).  The coordinator gives each peer address to one worker only: with fewer peers
than workers, ``-j 3`` still completes against seeders at the default, never holds two
connections to one seeder (watched from the seeder's side while the fetch runs, against a
seeder that would accept them), nothing is fetched twice, and the summary counts the seeders
that sent data.  The seeders are capped so that the fetch lasts past the second in which
idle workers used to borrow the busy ones' peers.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.interop.test_fetch import peer_args, run_fetch, summary_of
from tests.swarm import ONE_CONNECTION_PER_IP, LtPeer, Swarm, TorrentCase, same_tree

pytestmark = pytest.mark.interop

CLIENT_IP = "127.0.0.97"  # every worker dials from here: the seeders see one address
RATE = 16 << 20  # per seeder: ~40 MiB takes 1.3 to 2.5 s


@pytest.mark.parametrize(
    ("seeders", "settings"),
    [(1, ONE_CONNECTION_PER_IP), (2, ONE_CONNECTION_PER_IP), (1, {})],
    ids=["one-default", "two-default", "one-accepting-more"],
)
def test_j3_holds_one_connection_per_seeder(
    single_case: TorrentCase, tmp_path: Path, seeders: int, settings: Mapping[str, Any]
) -> None:
    meta = single_case.meta
    torrent = tmp_path / "single.torrent"
    torrent.write_bytes(single_case.torrent)
    out = tmp_path / "out.bin"
    with Swarm(
        single_case.torrent, single_case.save_dir, n_seeders=seeders, first_ip=91,
        use_trackers=False, trust_data=True, upload_rate_limit=RATE, settings=settings,
    ) as swarm:  # fmt: skip
        result: list[subprocess.CompletedProcess[str]] = []
        fetch = threading.Thread(target=lambda: result.append(run_fetch(
            torrent, out, "-j", "3", "--bind", CLIENT_IP, "--no-trackers",
            *peer_args(swarm.addrs),
        )))  # fmt: skip
        fetch.start()
        most = 0  # connections from our address that one seeder held at once
        while fetch.is_alive():
            for s in swarm.seeders:
                conns = [p for p in s.handle.get_peer_info() if p.ip[0] == CLIENT_IP]
                most = max(most, len(conns))
            time.sleep(0.02)
        fetch.join()
        m = summary_of(result[0])
        assert same_tree(out, single_case.payload.root)
        deadline = time.monotonic() + 3  # libtorrent moves its counters once a second
        while sum(uploaded := [s.payload_upload for s in swarm.stats()]) < meta.total_length:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert most == 1
    assert int(m["peers"]) == sum(1 for u in uploaded if u > 0) >= 1
    # A piece is sent twice only in the endgame (two pieces per idle worker at most) or
    # when a connection drops mid-piece.
    assert meta.total_length <= sum(uploaded) <= meta.total_length + 4 * meta.piece_length


def test_an_idle_worker_takes_the_pieces_a_slow_worker_has_not_started(
    single_case: TorrentCase, tmp_path: Path
) -> None:
    """-j 2, one fast seeder and one at 128 KiB/s, one per worker: once the fast worker has
    nothing left to pick, the slow one gives back the pieces it took and has not started
    (``ReturnBacklog``), and the fast one fetches them; the slow seeder sends only what its
    worker had in hand, not the whole backlog it took at its own pace."""
    meta = single_case.meta
    torrent = tmp_path / "single.torrent"
    torrent.write_bytes(single_case.torrent)
    out = tmp_path / "out.bin"
    common = dict(use_trackers=False, trust_data=True, settings=ONE_CONNECTION_PER_IP)
    with (
        LtPeer(single_case.torrent, single_case.save_dir, ip="127.0.0.93", **common) as fast,
        LtPeer(
            single_case.torrent, single_case.save_dir, ip="127.0.0.94",
            upload_rate_limit=128 << 10, **common,
        ) as slow,
    ):  # fmt: skip
        proc = run_fetch(
            torrent, out, "-j", "2", "--bind", CLIENT_IP, "--no-trackers",
            *peer_args([fast.addr, slow.addr]),
        )  # fmt: skip
        summary_of(proc)
        assert same_tree(out, single_case.payload.root)
        time.sleep(1.2)  # libtorrent moves its counters once a second
        sent = slow.stats().payload_upload
    # What the slow worker had requested (its window of 32 blocks, 2 pieces) and what its
    # peer sent meanwhile; without the hand-back, its whole backlog (8 more pieces, 2 MiB at
    # 128 KiB/s) came from the slow seeder too.
    assert sent <= 6 * meta.piece_length, sent
