"""The loopback libtorrent harness (tests/swarm.py) does what interop tests rely on."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote_from_bytes

import libtorrent as lt
import pytest

from mptorrent.proto import metainfo
from tests.swarm import (
    DEFAULT_TREE,
    IpPool,
    KiB,
    LtPeer,
    Swarm,
    SwarmError,
    TorrentCase,
    advertised_pieces,
    info_hash,
    make_torrent,
    make_tree,
    multi_file_case,
    run_lt_leecher,
    same_tree,
    single_file_case,
)

pytestmark = pytest.mark.interop

ips = IpPool(third=2)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> TorrentCase:
    return single_file_case(
        tmp_path_factory.mktemp("single"),
        trackers=[["http://127.0.0.1:1/announce"], ["udp://127.0.0.1:1", "udp://127.0.0.2:1"]],
    )


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> TorrentCase:
    return multi_file_case(tmp_path_factory.mktemp("multi"))


@pytest.fixture(scope="module")
def swarm(single: TorrentCase) -> Iterator[Swarm]:
    with Swarm(single.torrent, single.save_dir) as sw:
        yield sw


def test_torrents_are_libtorrent_v1_without_padding(
    single: TorrentCase, multi: TorrentCase
) -> None:
    m = single.meta
    assert not m.multi_file
    assert m.piece_length == 256 * KiB
    assert m.num_pieces == 160
    assert 0 < m.piece_size(m.num_pieces - 1) < m.piece_length
    assert m.trackers == (
        ("http://127.0.0.1:1/announce",),
        ("udp://127.0.0.1:1", "udp://127.0.0.2:1"),
    )
    assert m.created_by is not None and m.created_by.startswith("libtorrent")
    assert m.info_hash == info_hash(single.torrent)
    for case in (single, multi):
        assert b"meta version" not in case.meta.info_bytes  # no v2 / hybrid
        assert not any(f.padding for f in case.meta.files)

    mm = multi.meta
    on_disk = {"/".join(f.path): f.length for f in mm.files}
    assert on_disk == DEFAULT_TREE
    assert any(len(f.path) >= 3 for f in mm.files)
    assert mm.total_length % mm.piece_length


def test_pad_files_only_when_asked(tmp_path: Path) -> None:
    payload = make_tree(tmp_path)
    padded = metainfo.parse(make_torrent(payload.root, 16 * KiB, pad_files=True))
    assert any(f.padding for f in padded.files)
    data = {"/".join(f.path): f.length for f in padded.files if not f.padding}
    assert data == DEFAULT_TREE
    # Every data file after a pad starts on a piece boundary.
    for prev, f in zip(padded.files, padded.files[1:], strict=False):
        if prev.padding:
            assert f.offset % padded.piece_length == 0


def test_lt_leecher_downloads_identical_data_from_three_seeders(
    swarm: Swarm, single: TorrentCase, tmp_path: Path
) -> None:
    addrs = swarm.addrs
    assert [a.host for a in addrs] == ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
    assert all(a.port > 0 for a in addrs)
    elapsed = run_lt_leecher(single.torrent, tmp_path, addrs, ip=ips(), timeout=60)
    assert 0 < elapsed < 60
    assert same_tree(single.payload.root, tmp_path / single.payload.root.name)
    stats = swarm.stats()
    assert all(s.state == "seeding" for s in stats)
    assert sum(s.payload_upload for s in stats) >= single.meta.total_length


def test_lt_leecher_downloads_multi_file_tree(multi: TorrentCase, tmp_path: Path) -> None:
    with Swarm(multi.torrent, multi.payload.root, n_seeders=2, first_ip=14) as sw:
        run_lt_leecher(multi.torrent, tmp_path, sw.addrs, ip=ips(), timeout=60)
    got = tmp_path / multi.payload.root.name
    assert same_tree(multi.payload.root, got)
    assert (got / "docs" / "empty.dat").stat().st_size == 0


def test_partial_seeder_advertises_and_serves_exactly_its_subset(
    single: TorrentCase, tmp_path: Path
) -> None:
    n = single.meta.num_pieces
    subset = set(range(0, n, 3)) | {n - 1}
    with LtPeer(single.torrent, single.save_dir, ip=ips(), have_pieces=subset) as partial:
        assert partial.have() == subset
        assert partial.stats().state == "finished"
        # What a plain peer sees on the wire, independent of libtorrent's API.
        assert advertised_pieces(partial.addr, single.torrent, source_ip=ips()) == subset

        with LtPeer(single.torrent, tmp_path, ip=ips(), role="leech", use_trackers=False) as lch:
            lch.add_peer(*partial.addr)
            deadline = time.monotonic() + 20
            while lch.have() != subset and time.monotonic() < deadline:
                time.sleep(0.05)
            assert lch.have() == subset
        # It never fetched what it lacks.
        assert partial.have() == subset
        assert partial.stats().payload_download == 0


def test_seeder_without_the_data_fails_fast_and_clearly(
    single: TorrentCase, tmp_path: Path
) -> None:
    (tmp_path / single.payload.root.name).write_bytes(b"not the payload")
    start = time.monotonic()
    with pytest.raises(SwarmError, match=r"holds 0/160 pieces"):
        LtPeer(single.torrent, tmp_path, ip=ips()).start(timeout=20)
    assert time.monotonic() - start < 5


def test_busy_port_is_an_error_not_another_port(swarm: Swarm, single: TorrentCase) -> None:
    taken = swarm.addrs[0]
    peer = LtPeer(single.torrent, single.save_dir, ip=taken.host, port=taken.port)
    with pytest.raises(SwarmError, match="cannot listen"):
        peer.start(timeout=10)


def test_seeders_dial_a_listening_peer(swarm: Swarm, single: TorrentCase) -> None:
    ip = ips()
    ih = info_hash(single.torrent)
    with socket.create_server((ip, 0)) as server:
        server.settimeout(5)
        swarm.connect(ip, server.getsockname()[1])
        sources = set()
        while len(sources) < 3:
            conn, (host, _port) = server.accept()
            with conn:
                conn.settimeout(5)
                hello = conn.recv(68, socket.MSG_WAITALL)
            assert hello[1:20] == b"BitTorrent protocol" and hello[28:48] == ih
            sources.add(host)
    assert sources == {a.host for a in swarm.addrs}


def test_upload_rate_limit_holds_on_loopback(multi: TorrentCase, tmp_path: Path) -> None:
    limit = 4 * 1024 * KiB
    with Swarm(
        multi.torrent, multi.save_dir, n_seeders=1, first_ip=17, upload_rate_limit=limit
    ) as sw:
        elapsed = run_lt_leecher(multi.torrent, tmp_path, sw.addrs, ip=ips(), timeout=60)
    # Unlimited, this takes about 0.1 s.
    assert elapsed > 0.5 * multi.meta.total_length / limit


def _tracker_peers(announce_url: str, ih: bytes) -> set[tuple[str, int]]:
    """The peers an HTTP tracker lists for ``ih``, asked by a probe that leaves no trace."""
    query = (
        f"info_hash={quote_from_bytes(ih, safe='')}&peer_id=-PROBE0-harnessprobe"
        "&port=1&uploaded=0&downloaded=0&left=1&compact=1&numwant=200"
    )
    with urllib.request.urlopen(f"{announce_url}?{query}", timeout=5) as resp:
        reply = lt.bdecode(resp.read())
    urllib.request.urlopen(f"{announce_url}?{query}&event=stopped", timeout=5).close()
    raw = reply[b"peers"]
    found = {
        (".".join(str(b) for b in raw[i : i + 4]), int.from_bytes(raw[i + 4 : i + 6], "big"))
        for i in range(0, len(raw), 6)
    }
    found.discard(("127.0.0.1", 1))
    return found


@pytest.mark.parametrize("proto", ["http", "udp"])
def test_swarm_over_a_tracker(proto: str, multi: TorrentCase, tmp_path: Path) -> None:
    opentracker = pytest.importorskip("tests.interop.opentracker")
    if opentracker.opentracker_binary() is None:
        pytest.skip("opentracker is not installed")
    ih = info_hash(multi.torrent)
    with opentracker.run_opentracker([ih]) as tracker:
        url = tracker.announce_url if proto == "http" else tracker.udp_url
        with Swarm(multi.torrent, multi.save_dir, first_ip=21, tracker_url=url) as sw:
            # Each seeder is listed under its own address (UDP included: see
            # udp_tracker_token_expiry in tests/swarm.py).
            want = {tuple(a) for a in sw.addrs}
            deadline = time.monotonic() + 5
            while (seen := _tracker_peers(tracker.announce_url, ih)) != want:
                assert time.monotonic() < deadline, f"tracker lists {seen}, want {want}"
                time.sleep(0.05)
            elapsed = run_lt_leecher(multi.torrent, tmp_path, tracker_url=url, ip=ips(), timeout=20)
        assert elapsed < 10
        assert same_tree(multi.payload.root, tmp_path / multi.payload.root.name)
