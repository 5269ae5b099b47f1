"""The worker processes speak BEP 10 with real libtorrent peers (issue 14), on loopback.

* ``mptorrent seed`` serves the metadata (BEP 9) to a libtorrent client that has only the
  bare magnet link and mptorrent's address: libtorrent gets the info dictionary, three
  16 KiB metadata pieces, then every file, byte-identical.
* A libtorrent peer that is connected to a libtorrent seeder tells mptorrent about it by
  ut_pex (BEP 11) while mptorrent fetches knowing only that first peer, with
  no trackers: mptorrent's coordinator hands the seeder to a worker, which dials it,
  and both upload to mptorrent.  The first peer holds only half the pieces, so the fetch
  cannot complete without the seeder.  The fetch does not listen, so the seeder cannot have
  dialled in: it was dialled.
* The reverse: two libtorrent leechers that know only ``mptorrent seed`` learn each other
  from its ut_pex and connect.

libtorrent sends a peer its first ut_pex message (the full list of its connected peers) a
second or so after the extended handshakes, and changes only once a minute after that; so
the first peer is connected to the seeder before mptorrent starts.  libtorrent drops
connections between two peers that both want nothing, so the first peer still wants the
pieces it lacks (its download is throttled to a trickle: it stays a downloader).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mptorrent.engine.coordinator import FetchOptions, fetch
from mptorrent.proto import metainfo
from tests.interop.test_seed import mptorrent_seed
from tests.swarm import (
    LtPeer,
    info_hash,
    make_payload,
    make_torrent,
    run_lt_magnet_leecher,
    same_tree,
    write_torrent,
)

lt = pytest.importorskip("libtorrent")

pytestmark = pytest.mark.interop

KiB = 1024
# ~560 files with long names: an info dictionary of three 16 KiB metadata pieces; plus one
# bigger file so that the data phase is more than a formality.
TREE = {f"dir-{i // 100}/file-{i:04}-{'n' * 24}.bin": 1 + i % 7 for i in range(560)}
TREE["big.bin"] = 3 * 1024 * KiB + 123


def test_seed_serves_metadata_then_data_to_a_magnet_only_libtorrent(
    tmp_path: Path, fresh_ip: Callable[[], str]
) -> None:
    payload = make_payload(tmp_path / "data", TREE, name="tree")
    torrent = make_torrent(payload.root, 64 * KiB)
    info = metainfo.parse(torrent).info_bytes
    assert 2 * 16 * KiB < len(info) <= 3 * 16 * KiB
    path = write_torrent(tmp_path, torrent)
    with mptorrent_seed(path, payload.root, fresh_ip(), "--no-trackers") as seed:
        got = run_lt_magnet_leecher(
            f"magnet:?xt=urn:btih:{info_hash(torrent).hex()}", tmp_path / "lt",
            (seed.addr.host, seed.addr.port), ip=fresh_ip(),
        )  # fmt: skip
        assert got == info
        assert seed.proc.poll() is None  # still serving
    assert same_tree(tmp_path / "lt" / "tree", payload.root)


def test_pex_leads_the_fetch_to_a_seeder_it_was_not_told_about(
    tmp_path: Path, fresh_ip: Callable[[], str]
) -> None:
    payload = make_payload(tmp_path / "data", 4 * 1024 * KiB + 777, name="file.bin")
    torrent = make_torrent(payload.root, 64 * KiB)
    n = lt.torrent_info(torrent).num_pieces()
    first_half = range(n // 2)
    half_dir = tmp_path / "half"
    half_dir.mkdir()
    shutil.copy(payload.root, half_dir / "file.bin")
    with (
        LtPeer(torrent, payload.save_dir, ip=fresh_ip(), use_trackers=False) as seeder,
        LtPeer(
            torrent, half_dir, ip=fresh_ip(), have_pieces=first_half, use_trackers=False
        ) as half,
    ):
        # The half peer wants the rest, at a trickle: it stays a downloader, so libtorrent
        # keeps its connection to the seeder (two peers that want nothing part at once).
        ses = half._ses
        cls = ses.get_peer_class(ses.local_peer_class_id)
        cls["download_limit"] = 2 * KiB
        ses.set_peer_class(ses.local_peer_class_id, cls)
        half.handle.prioritize_pieces([4] * n)
        half_addr, seeder_addr = str(half.addr), str(seeder.addr)
        half.add_peer(*seeder.addr)
        deadline = time.monotonic() + 10
        while not any(
            p.ip == seeder.addr and not p.flags & p.connecting for p in half.handle.get_peer_info()
        ):
            assert time.monotonic() < deadline, "the half peer did not connect to the seeder"
            time.sleep(0.05)
        out = tmp_path / "out.bin"
        t0 = time.monotonic()
        # In this process, for the FetchResult; not listening (no ``bind``), so our extended
        # handshake has no ``p`` and libtorrent tells nobody about us: the seeder cannot
        # learn our address and dial in.
        opts = FetchOptions(jobs=2, peers=(half.addr,), use_trackers=False, no_peers_timeout=20)
        res = fetch(metainfo.parse(torrent), out, opts)
        elapsed = time.monotonic() - t0
    assert same_tree(out, payload.root)
    per_peer = {str(a): k for a, k in res.pieces_per_peer.items()}
    # Both uploaded; the seeder at its listening address: we dialled it.
    assert set(per_peer) == {half_addr, seeder_addr}, per_peer
    assert per_peer[seeder_addr] >= n - len(first_half)
    assert elapsed < 20, elapsed


def _throttle_download(peer: LtPeer, rate: int) -> None:
    """Loopback peers are in libtorrent's local peer class, which session limits skip."""
    ses = peer._ses
    cls = ses.get_peer_class(ses.local_peer_class_id)
    cls["download_limit"] = rate
    ses.set_peer_class(ses.local_peer_class_id, cls)


def _connected(a: LtPeer, b: LtPeer) -> bool:
    return b.ip in {p.ip[0] for p in a.handle.get_peer_info()}


def test_libtorrent_leechers_learn_each_other_from_our_pex(
    tmp_path: Path, fresh_ip: Callable[[], str]
) -> None:
    payload = make_payload(tmp_path / "data", 4 * 1024 * KiB, name="file.bin")
    torrent = make_torrent(payload.root, 64 * KiB)
    path = write_torrent(tmp_path, torrent)
    # One worker: PEX lists that worker's own peers (see mptorrent/worker/extensions.py).
    with (
        mptorrent_seed(path, payload.root, fresh_ip(), "--no-trackers", jobs=1) as seed,
        LtPeer(torrent, tmp_path / "l1", ip=fresh_ip(), role="leech", use_trackers=False) as l1,
        LtPeer(torrent, tmp_path / "l2", ip=fresh_ip(), role="leech", use_trackers=False) as l2,
    ):
        for leech in (l1, l2):
            _throttle_download(leech, 256 * KiB)  # both stay leechers for the test
            leech.add_peer(*seed.addr)
        deadline = time.monotonic() + 15
        while not (_connected(l1, l2) or _connected(l2, l1)):
            assert time.monotonic() < deadline, "the leechers never met"
            time.sleep(0.1)
        assert l1.stats().progress < 1 and l2.stats().progress < 1
