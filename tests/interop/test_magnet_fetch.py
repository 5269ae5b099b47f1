"""``mptorrent fetch MAGNET`` and ``mptorrent info MAGNET``: the real CLI in a subprocess, the
metadata (BEP 9) from real libtorrent seeders on loopback, found through Debian's opentracker
(``tr=``) or named in the link (``x.pe``).

Seeders of the single-file torrent sit on 127.0.0.41-43 and of the many-file one (an info
dictionary of several 16 KiB metadata pieces) on 127.0.0.44-46; the client under test binds its
own address from ``fresh_ip``.  One test builds its own swarm: a magnet whose one ``x.pe``
peer leads mptorrent to two seeders by ut_pex.  The timing test fetches the same magnet with
a libtorrent leecher in the same run and prints both times (``pytest -s`` shows them).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libtorrent as lt
import pytest

from mptorrent.messages import PeerAddr
from mptorrent.proto import bencode, metainfo, wire
from mptorrent.proto.ext import ExtensionRouter
from mptorrent.proto.ext.ut_metadata import (
    METADATA_PIECE,
    MetadataRequested,
    UtMetadata,
    encode_reject,
    serve_request,
)
from mptorrent.proto.magnet import Magnet
from tests.dht_off import no_dht
from tests.interop.opentracker import OpenTracker, run_opentracker
from tests.interop.test_fetch import (
    SUMMARY,
    summary_of,
    tracked_swarm,
    unused_port,
    with_tracker,
)
from tests.spread import CLI_WITH_RESULT, RESULT_ENV, assert_spread, read_result
from tests.swarm import (
    LtPeer,
    Swarm,
    TorrentCase,
    info_hash,
    make_payload,
    make_torrent,
    same_tree,
    session_settings,
)

pytestmark = pytest.mark.interop

# ~560 files with long names: an info dictionary of three or four metadata pieces.
TREE = {f"dir-{i // 100}/file-{i:04}-{'n' * 24}.bin": 1500 * (1 + i % 7) for i in range(560)}
METADATA = re.compile(r"mptorrent: metadata received in (?P<seconds>[\d.]+) s: ")
MAGNET_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def tree_case(tmp_path_factory: pytest.TempPathFactory) -> TorrentCase:
    payload = make_payload(tmp_path_factory.mktemp("tree") / "data", TREE, name="tree")
    return TorrentCase(make_torrent(payload.root, 16384), payload)


@pytest.fixture(scope="module")
def tracker(
    opentracker_bin: str, single_case: TorrentCase, tree_case: TorrentCase
) -> Iterator[OpenTracker]:
    with run_opentracker([single_case.meta.info_hash, tree_case.meta.info_hash]) as t:
        yield t


@pytest.fixture(scope="module")
def single_swarm(single_case: TorrentCase, tracker: OpenTracker) -> Iterator[Swarm]:
    with tracked_swarm(single_case, tracker, first_ip=41) as swarm:
        yield swarm


@pytest.fixture(scope="module")
def tree_swarm(tree_case: TorrentCase, tracker: OpenTracker) -> Iterator[Swarm]:
    with tracked_swarm(tree_case, tracker, first_ip=44) as swarm:
        yield swarm


def magnet_of(case: TorrentCase, **kw: object) -> str:
    return Magnet(case.meta.info_hash, name=case.meta.name, **kw).to_uri()  # type: ignore[arg-type]


def run_cli(*args: str, timeout: float = MAGNET_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mptorrent", *no_dht(args)], stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def run_fetch(
    uri: str, out: Path, *args: str, result: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The real CLI (writing its FetchResult to ``result``, tests/spread.py), given a magnet."""
    cmd = [
        sys.executable, "-c", CLI_WITH_RESULT, *no_dht(["fetch", uri, "-o", str(out),
        "--port", str(unused_port()), *args]),
    ]  # fmt: skip
    env = {**os.environ, RESULT_ENV: str(result)} if result else None
    return subprocess.run(
        cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=MAGNET_TIMEOUT,
        env=env,
    )  # fmt: skip


def metadata_seconds(stderr: str) -> float:
    m = METADATA.search(stderr)
    assert m is not None, stderr
    return float(m["seconds"])


# -- fetch --------------------------------------------------------------------------------


@pytest.mark.parametrize("jobs", [1, 3])
def test_fetch_magnet_through_opentracker(
    single_case: TorrentCase, single_swarm: Swarm, tracker: OpenTracker, tmp_path: Path,
    fresh_ip: Callable[[], str], jobs: int,
) -> None:  # fmt: skip
    uri = magnet_of(single_case, trackers=(tracker.announce_url,))
    out = tmp_path / "out"
    proc = run_fetch(uri, out, "-j", str(jobs), "--bind", fresh_ip(), result=tmp_path / "r.json")
    m = summary_of(proc)
    assert 1 <= int(m["peers"]) <= 3
    metadata_seconds(proc.stderr)
    assert_spread(read_result(tmp_path / "r.json").pieces_per_worker, jobs, 3)
    assert same_tree(out, single_case.payload.root)


def test_fetch_magnet_of_many_files_and_save_the_torrent(
    tree_case: TorrentCase, tree_swarm: Swarm, tracker: OpenTracker, tmp_path: Path,
    fresh_ip: Callable[[], str],
) -> None:  # fmt: skip
    torrent = tree_case.torrent
    start, end = bencode.decode_with_spans(torrent, max_size=len(torrent))[1][b"info"]
    assert len(torrent[start:end]) > 2 * METADATA_PIECE  # several metadata pieces
    uri = magnet_of(tree_case, trackers=(tracker.announce_url,))
    out, saved = tmp_path / "out", tmp_path / "saved.torrent"
    proc = run_fetch(uri, out, "-j", "2", "--bind", fresh_ip(), "--save-torrent", str(saved))
    summary_of(proc)
    assert same_tree(out, tree_case.payload.root)
    # The .torrent: the info dictionary exactly as libtorrent has it, and the magnet's tracker.
    meta = metainfo.load(saved)
    assert meta.info_hash == tree_case.meta.info_hash
    assert meta.trackers == ((tracker.announce_url,),)
    ti = lt.torrent_info(str(saved))
    assert ti.info_hashes().v1.to_bytes() == tree_case.meta.info_hash
    assert bytes(ti.info_section()) == torrent[start:end]
    assert ti.num_files() == len(TREE)


def test_fetch_magnet_with_one_x_pe_peer_and_no_tracker(
    single_case: TorrentCase, single_swarm: Swarm, tmp_path: Path, fresh_ip: Callable[[], str]
) -> None:
    uri = magnet_of(single_case, peers=(PeerAddr(*single_swarm.addrs[0]),))
    out = tmp_path / "out"
    proc = run_fetch(uri, out, "-j", "2", "--bind", fresh_ip())
    m = summary_of(proc)
    assert int(m["peers"]) >= 1
    assert same_tree(out, single_case.payload.root)


def test_magnet_pex_from_the_one_x_pe_peer_leads_to_the_others(
    tmp_path: Path, fresh_ip: Callable[[], str]
) -> None:
    """``fetch 'magnet:?xt=...&x.pe=A' --no-trackers -j 2``: A holds half the pieces and is
    connected to seeders B and C; its ut_pex names them, and mptorrent dials both.

    libtorrent drops a connection between two peers that want nothing, so A is a downloader
    (throttled to a trickle) and B and C are connected to it, not to each other.  B and C run
    without ut_pex: they cannot learn mptorrent's address from A and dial in, so each
    connection they see from mptorrent (``peer_info`` without ``local_connection``) was
    dialled by mptorrent.  Their uploads are throttled so that the fetch lasts long enough
    to watch those connections.
    """
    payload = make_payload(tmp_path / "data", 4 * 1024 * 1024 + 777, name="file.bin")
    torrent = make_torrent(payload.root, 64 * 1024)
    n = lt.torrent_info(torrent).num_pieces()
    first_half = range(n // 2)
    half_dir = tmp_path / "half"
    half_dir.mkdir()
    shutil.copy(payload.root, half_dir / "file.bin")
    ours = fresh_ip()
    seen: dict[str, set[str]] = {}  # seeder -> how its connections with us began ("in", "out")
    uploaded: dict[str, int] = {}  # seeder -> payload bytes it sent us (libtorrent's count)
    with (
        LtPeer(torrent, payload.save_dir, ip=fresh_ip(), use_trackers=False, pex=False,
               upload_rate_limit=768 * 1024) as b,
        LtPeer(torrent, payload.save_dir, ip=fresh_ip(), use_trackers=False, pex=False,
               upload_rate_limit=768 * 1024) as c,
        LtPeer(torrent, half_dir, ip=fresh_ip(), have_pieces=first_half,
               use_trackers=False) as a,
    ):  # fmt: skip
        ses = a._ses  # A wants the rest, at a trickle: it stays a downloader
        cls = ses.get_peer_class(ses.local_peer_class_id)
        cls["download_limit"] = 2 * 1024
        ses.set_peer_class(ses.local_peer_class_id, cls)
        a.handle.prioritize_pieces([4] * n)
        for seeder in (b, c):
            a.add_peer(*seeder.addr)
        deadline = time.monotonic() + 10
        while {b.addr, c.addr} - {
            p.ip for p in a.handle.get_peer_info() if not p.flags & lt.peer_info.connecting
        }:
            assert time.monotonic() < deadline, "A did not connect to both seeders"
            time.sleep(0.05)
        uri = Magnet(info_hash(torrent), name="file.bin", peers=(a.addr,)).to_uri()
        out, result = tmp_path / "out.bin", tmp_path / "r.json"
        cmd = [
            sys.executable, "-c", CLI_WITH_RESULT, "fetch", uri, "-o", str(out), "-j", "2",
            "--no-trackers", "--bind", ours, "--port", str(unused_port()), "--no-dht",
        ]  # fmt: skip
        env = {**os.environ, RESULT_ENV: str(result)}
        with subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env,
        ) as proc:  # fmt: skip
            deadline = time.monotonic() + MAGNET_TIMEOUT
            while proc.poll() is None:
                assert time.monotonic() < deadline, "the fetch did not finish"
                for seeder in (b, c):
                    for p in seeder.handle.get_peer_info():
                        if p.ip[0] != ours or p.flags & lt.peer_info.connecting:
                            continue
                        way = "out" if p.flags & lt.peer_info.local_connection else "in"
                        key = str(seeder.addr)
                        seen.setdefault(key, set()).add(way)
                        uploaded[key] = max(uploaded.get(key, 0), p.total_upload)
                time.sleep(0.02)
            _, stderr = proc.communicate()
        assert proc.returncode == 0, stderr[-2000:]
        b_addr, c_addr = str(b.addr), str(c.addr)
    assert same_tree(out, payload.root)
    # Both seeders saw mptorrent dial them (an incoming connection) and none of their own.
    assert seen == {b_addr: {"in"}, c_addr: {"in"}}, seen
    per_peer = read_result(result).pieces_per_peer
    # Pieces came from more than one peer: from A and from both seeders it named, each
    # at its listening address (so we dialled it).
    assert {b_addr, c_addr} <= set(per_peer), per_peer
    assert per_peer[b_addr] > 0 and per_peer[c_addr] > 0, per_peer
    assert per_peer[b_addr] + per_peer[c_addr] >= n - len(first_half), per_peer
    assert uploaded[b_addr] > 0 and uploaded[c_addr] > 0, uploaded


# -- info ---------------------------------------------------------------------------------


def test_info_magnet_json_matches_info_torrent(
    tree_case: TorrentCase, tree_swarm: Swarm, tracker: OpenTracker, tmp_path: Path,
    fresh_ip: Callable[[], str],
) -> None:  # fmt: skip
    torrent = tmp_path / "tree.torrent"
    torrent.write_bytes(with_tracker(tree_case.torrent, tracker.announce_url))
    from_torrent = run_cli("info", str(torrent), "--json")
    assert from_torrent.returncode == 0, from_torrent.stderr
    saved = tmp_path / "saved.torrent"
    uri = magnet_of(tree_case, trackers=(tracker.announce_url,))
    from_magnet = run_cli("info", uri, "--json", "--bind", fresh_ip(), "--save-torrent", str(saved))
    assert from_magnet.returncode == 0, from_magnet.stderr
    ours, theirs = json.loads(from_magnet.stdout), json.loads(from_torrent.stdout)
    # What lies outside the info dictionary is not in a magnet link.
    for key in ("created_by", "creation_date", "comment"):
        theirs.pop(key)
        assert ours.pop(key) is None
    assert ours == theirs
    assert metainfo.load(saved).info_hash == tree_case.meta.info_hash
    assert lt.torrent_info(str(saved)).info_hashes().v1.to_bytes() == tree_case.meta.info_hash


def test_info_magnet_text_from_a_peer(
    single_case: TorrentCase, single_swarm: Swarm, fresh_ip: Callable[[], str]
) -> None:
    uri = magnet_of(single_case)
    host, port = single_swarm.addrs[1]
    proc = run_cli("info", uri, "--bind", fresh_ip(), "--peer", f"{host}:{port}")
    assert proc.returncode == 0, proc.stderr
    assert f"info-hash:   {single_case.meta.info_hash.hex()}" in proc.stdout
    assert f"name:        {single_case.meta.name}" in proc.stdout


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["fetch", "info"])
def test_a_malformed_magnet_is_exit_3_in_one_line(command: str, tmp_path: Path) -> None:
    proc = run_cli(command, "magnet:?xt=urn:btih:12345&dn=x", timeout=30)
    assert proc.returncode == 3
    assert proc.stderr.splitlines() == [
        "mptorrent: error: bad magnet link: info-hash '12345' is neither 40 hex nor 32 base32 "
        "characters"
    ]
    assert not list(tmp_path.iterdir())


def test_a_magnet_without_peers_is_exit_1(single_case: TorrentCase) -> None:
    proc = run_cli("info", magnet_of(single_case), timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        "mptorrent: error: no peers: it names no usable tracker, the magnet link has no 'x.pe' "
        "peer and no --peer was given"
    )


def test_metadata_that_never_comes_is_a_timeout(
    single_case: TorrentCase, fresh_ip: Callable[[], str]
) -> None:
    import socket

    with socket.create_server((fresh_ip(), 0)) as silent:  # accepts, never answers
        host, port = silent.getsockname()[:2]
        uri = magnet_of(single_case, peers=(PeerAddr(host, port),))
        started = time.monotonic()
        proc = run_cli("info", uri, "--metadata-timeout", "2", timeout=30)
    assert proc.returncode == 1
    assert time.monotonic() - started < 15
    assert proc.stderr.splitlines()[-1] == (
        "mptorrent: error: metadata not received within 2 s (1 peer(s) known, 0 answered)"
    )


# -- against libtorrent -------------------------------------------------------------------


def lt_magnet_leecher(uri: str, save: Path, ip: str, timeout: float) -> tuple[float, float]:
    """A libtorrent session given only ``uri``: seconds to the metadata, and to the whole
    download (both from adding the magnet)."""
    settings: Any = session_settings(ip, 0, seed=False)  # libtorrent's stubs want a settings_pack
    ses = lt.session(lt.session_params(settings))
    try:
        atp = lt.parse_magnet_uri(uri)
        atp.save_path = str(save)
        added = time.monotonic()
        handle = ses.add_torrent(atp)
        got_metadata: float | None = None
        deadline = added + timeout
        while True:
            st = handle.status()
            now = time.monotonic()
            if got_metadata is None and st.has_metadata:
                got_metadata = now - added
            if st.is_finished and got_metadata is not None:
                return got_metadata, now - added
            assert now < deadline, f"libtorrent: state {st.state}, progress {st.progress:.3f}"
            ses.wait_for_alert(20)
            ses.pop_alerts()
    finally:
        ses.pause()
        del ses


def test_magnet_times_against_a_libtorrent_leecher(
    single_case: TorrentCase, single_swarm: Swarm, tracker: OpenTracker, tmp_path: Path,
    fresh_ip: Callable[[], str],
) -> None:  # fmt: skip
    """Not a speed test (benchmarks/ are): it prints the times for the record.
    benchmarks/magnet.py measures the same comparison with the time to the first piece
    request, as the seeders see it."""
    uri = magnet_of(single_case, trackers=(tracker.announce_url,))
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "mptorrent", "fetch", uri, "-o", str(out), "-j", "2",
        "--bind", fresh_ip(), "--port", str(unused_port()), "--no-dht",
    ]  # fmt: skip
    # stderr read as it comes: when the metadata line appears is the time to the metadata
    started = time.monotonic()
    lines: list[tuple[float, str]] = []
    with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as p:
        assert p.stderr is not None
        for line in p.stderr:
            lines.append((time.monotonic() - started, line.rstrip("\n")))
        p.wait(MAGNET_TIMEOUT)
    ours_total = time.monotonic() - started
    stderr = "\n".join(text for _, text in lines)
    assert p.returncode == 0, stderr
    assert SUMMARY.fullmatch(lines[-1][1]), stderr
    ours_phase = metadata_seconds(stderr)
    ours_metadata = next(at for at, text in lines if METADATA.match(text))
    assert same_tree(out, single_case.payload.root)
    lt_metadata, lt_total = lt_magnet_leecher(uri, tmp_path / "lt", fresh_ip(), MAGNET_TIMEOUT)
    assert same_tree(tmp_path / "lt" / single_case.meta.name, single_case.payload.root)
    size = single_case.meta.total_length / 2**20
    print(
        f"\nfetch MAGNET of {size:.0f} MiB from 3 libtorrent seeders via opentracker:\n"
        f"  mptorrent -j 2: metadata verified {ours_metadata:.2f} s after the process started "
        f"({ours_phase:.2f} s in the metadata phase), whole fetch {ours_total:.2f} s "
        "(process start to exit)\n"
        f"  libtorrent:     metadata {lt_metadata:.2f} s after add_torrent, "
        f"whole download {lt_total:.2f} s"
    )


# -- hostile peers beside an honest one ---------------------------------------------------
# tests/adversarial/README.md table L (L1-L4 here; L5 and L6 are the error tests above).


class _HostilePeer:
    """A peer on its own loopback address that says it has the metadata, then sends pieces
    of a forged info dictionary of the same size (``lie``), rejects every request
    (``reject``), never answers (``silent``), or announces 4 GiB of metadata (``huge``).
    It serves one connection."""

    def __init__(self, ip: str, info_hash: bytes, info: bytes, mode: str) -> None:
        import socket
        import threading

        self.server = socket.create_server((ip, 0))
        self.addr = PeerAddr(ip, self.server.getsockname()[1])
        self.info_hash, self.mode, self.served = info_hash, mode, 0
        forged = bytearray(info)  # the same size, one byte off in every metadata piece
        for at in range(100, len(info), METADATA_PIECE):
            forged[at] ^= 1
        self.forged = bytes(forged)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            sock, _ = self.server.accept()
        except OSError:
            return
        with sock:
            router = ExtensionRouter([UtMetadata()], metadata_size=len(self.forged))
            conn = wire.Connection(self.info_hash, extensions=router)
            hello = wire.Handshake(self.info_hash, b"-XX0000-hostilepeer!", wire.EXTENSION_RESERVED)
            ours = router.handshake()
            if self.mode == "huge":  # 4 GiB of metadata, as no encoder of ours would write
                huge: dict[bytes, bencode.Encodable] = {
                    b"m": {b"ut_metadata": 1},
                    b"metadata_size": 4 << 30,
                }
                ours = wire.Extended(0, bencode.encode(huge))
            sock.sendall(conn.send(hello))
            sock.settimeout(20)
            with contextlib.suppress(ConnectionError):  # the client hangs up on a liar
                self._answer(sock, conn, router, ours)

    def _answer(
        self,
        sock: socket.socket,
        conn: wire.Connection,
        router: ExtensionRouter,
        ours: wire.Extended,
    ) -> None:
        while data := sock.recv(65536):
            conn.receive_data(data)
            while (event := conn.next_event()) is not wire.NEED_DATA:
                if isinstance(event, wire.Handshake):
                    sock.sendall(conn.send(ours))
                elif isinstance(event, MetadataRequested) and router.peer_supports("ut_metadata"):
                    self.served += 1
                    if self.mode == "silent":
                        continue
                    payload = (
                        serve_request(self.forged, event.piece)
                        if self.mode == "lie"
                        else encode_reject(event.piece)
                    )
                    sock.sendall(conn.send(router.message("ut_metadata", payload)))

    def close(self) -> None:
        self.server.close()
        self.thread.join(5)


@pytest.mark.parametrize("mode", ["lie", "reject", "silent", "huge"])
def test_metadata_from_the_honest_peer_beside_a_hostile_one(
    tree_case: TorrentCase, tree_swarm: Swarm, fresh_ip: Callable[[], str], mode: str
) -> None:
    from mptorrent.engine.metadata import fetch_metadata

    torrent = tree_case.torrent
    start, end = bencode.decode_with_spans(torrent, max_size=len(torrent))[1][b"info"]
    info = torrent[start:end]
    hostile = _HostilePeer(fresh_ip(), tree_case.meta.info_hash, info, mode)
    try:
        # The hostile peer is dialled first: it is asked for pieces of the first round.
        honest = PeerAddr(*tree_swarm.addrs[0])
        magnet = Magnet(tree_case.meta.info_hash, peers=(hostile.addr, honest))
        result = fetch_metadata(
            magnet, use_trackers=False, bind=fresh_ip(), timeout=30, request_timeout=1.0
        )
    finally:
        hostile.close()
    assert result.info == info
    assert hostile.served >= (0 if mode == "huge" else 1)
    if mode == "silent":  # its requests expired, and the honest peer was asked instead
        assert result.seconds >= 1.0
    assert honest in result.peers
    if mode == "lie":  # found out and not handed to the download
        assert hostile.addr not in result.peers
