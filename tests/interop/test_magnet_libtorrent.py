"""Magnet links, BEP 9 and BEP 11 against real libtorrent on loopback, at the sans-IO level.

Our ``Connection`` with the ``ut_metadata`` and ``ut_pex`` handlers is driven over plain
sockets (as tests/interop/test_ext_libtorrent.py does for BEP 10): the engine and CLI
wiring of issue 14 is still to come, these tests pin the codecs, the assembler and the
magnet format against independent software first.

* libtorrent seeds a multi-file torrent whose info dictionary is three metadata pieces;
  we fetch it knowing only the info-hash and verify it.
* libtorrent has only our magnet link (``x.pe`` naming us) and fetches the metadata we
  serve.
* libtorrent tells us, by ut_pex, about another peer it is connected to.
* Magnet links go both ways between our parser/formatter and libtorrent's.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mptorrent.messages import PeerAddr
from mptorrent.proto import bencode, metainfo
from mptorrent.proto.ext import ExtendedHandshake, ExtensionRouter
from mptorrent.proto.ext.ut_metadata import (
    METADATA_PIECE,
    MetadataAssembler,
    MetadataPieceReceived,
    MetadataRequested,
    MetadataVerified,
    PieceStored,
    UtMetadata,
    encode_request,
    serve_request,
)
from mptorrent.proto.ext.ut_pex import PexPeers, UtPex
from mptorrent.proto.magnet import Magnet, parse_magnet, torrent_from_metadata
from mptorrent.proto.wire import EXTENSION_RESERVED, Connection, Event, Handshake
from tests.interop.test_ext_libtorrent import pump
from tests.swarm import LtPeer, info_hash, make_payload, make_torrent, session_settings

lt = pytest.importorskip("libtorrent")

pytestmark = pytest.mark.interop

PEER_ID = b"-MP0100-magnetinterop"[:20]
# ~560 files with long names: an info dictionary of three 16 KiB metadata pieces, tiny data.
TREE = {f"dir-{i // 100}/file-{i:04}-{'n' * 24}.bin": 1 + i % 7 for i in range(560)}


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes, Path]:
    """(torrent, raw info dictionary, save dir) of the many-file torrent."""
    root = tmp_path_factory.mktemp("magnet")
    payload = make_payload(root / "data", TREE, name="tree")
    torrent = make_torrent(payload.root, 16384, trackers=[["http://127.0.0.1:1/announce"]])
    start, end = bencode.decode_with_spans(torrent, max_size=len(torrent))[1][b"info"]
    info = torrent[start:end]
    assert 2 * METADATA_PIECE < len(info) <= 3 * METADATA_PIECE, len(info)
    return torrent, info, payload.save_dir


def _router(**kw: Any) -> ExtensionRouter:
    return ExtensionRouter([UtMetadata(), UtPex()], client="mptorrent-interop 0.1", **kw)


def _pieces_at_least(n: int) -> Callable[[list[Event]], bool]:
    return lambda evs: sum(isinstance(e, MetadataPieceReceived) for e in evs) >= n


def _open(sock: socket.socket, conn: Connection, ih: bytes) -> list[Event]:
    """Both handshakes and both extended handshakes, we dialling."""
    router = conn.extensions
    assert isinstance(router, ExtensionRouter)
    sock.sendall(conn.send(Handshake(ih, PEER_ID, EXTENSION_RESERVED)))
    got = pump(sock, conn, lambda evs: any(type(e) is ExtendedHandshake for e in evs), 10)
    sock.sendall(conn.send(router.handshake()))
    return got


def test_metadata_of_three_pieces_from_a_libtorrent_seeder(
    case: tuple[bytes, bytes, Path], fresh_ip: Callable[[], str]
) -> None:
    torrent, info, save_dir = case
    ih = info_hash(torrent)
    with LtPeer(torrent, save_dir, ip=fresh_ip(), use_trackers=False) as seed:
        router = _router()
        conn = Connection(ih, extensions=router)  # the info-hash is all a magnet link gives
        with socket.create_connection(seed.addr, timeout=10, source_address=(fresh_ip(), 0)) as s:
            _open(s, conn, ih)
            theirs = router.peer_handshake
            assert theirs is not None and theirs.metadata_size == len(info)
            asm: MetadataAssembler[str] = MetadataAssembler(ih, theirs.metadata_size)
            assert asm.add_peer("seed", theirs.metadata_size)
            outcomes: list[object] = []
            now = 0.0
            while not asm.complete:
                asked = asm.next_requests("seed", now)
                for i in asked:
                    s.sendall(conn.send(router.message("ut_metadata", encode_request(i))))
                got = pump(s, conn, _pieces_at_least(len(asked)), 10)
                for ev in got:
                    if isinstance(ev, MetadataPieceReceived):
                        outcomes.append(asm.received("seed", ev.piece, ev.total_size, ev.data))
                now += 1.0
    assert [type(o) for o in outcomes] == [PieceStored, PieceStored, MetadataVerified]
    done = outcomes[-1]
    assert isinstance(done, MetadataVerified) and done.info == info
    # The .torrent for --save-torrent: same info-hash, the magnet's trackers.
    magnet = Magnet(ih, trackers=("udp://127.0.0.1:6969",))
    meta = metainfo.parse(torrent_from_metadata(done.info, magnet))
    assert meta.info_hash == ih and len(meta.files) == len(TREE)
    assert meta.trackers == (("udp://127.0.0.1:6969",),)
    assert (
        lt.torrent_info(torrent_from_metadata(done.info, magnet)).info_hashes().v1.to_bytes() == ih
    )


def test_libtorrent_fetches_the_metadata_we_serve_from_our_magnet_link(
    case: tuple[bytes, bytes, Path], fresh_ip: Callable[[], str], tmp_path: Path
) -> None:
    torrent, info, _ = case
    ih = info_hash(torrent)
    our_ip, their_ip = fresh_ip(), fresh_ip()
    with socket.create_server((our_ip, 0)) as server:
        port = server.getsockname()[1]
        uri = Magnet(ih, name="tree", peers=(PeerAddr(our_ip, port),)).to_uri()
        atp = lt.parse_magnet_uri(uri)
        assert atp.name == "tree"
        assert [(str(ep[0]), ep[1]) for ep in atp.peers] == [(our_ip, port)]
        atp.save_path = str(tmp_path / "lt")
        ses = lt.session(lt.session_params(session_settings(their_ip, 0, seed=False)))
        try:
            handle = ses.add_torrent(atp)  # libtorrent dials x.pe: us
            server.settimeout(15)
            s, _ = server.accept()
            with s:
                router = _router(metadata_size=len(info))
                conn = Connection(ih, extensions=router)
                got = pump(s, conn, lambda evs: any(type(e) is Handshake for e in evs), 10)
                first = got[0]
                assert isinstance(first, Handshake) and first.extensions
                s.sendall(conn.send(Handshake(ih, PEER_ID, EXTENSION_RESERVED)))
                s.sendall(conn.send(router.handshake()))
                served: list[int] = []
                deadline = time.monotonic() + 20
                while not handle.status().has_metadata:
                    assert time.monotonic() < deadline, served
                    try:
                        events = pump(s, conn, lambda evs: bool(evs), 0.2)
                    except (AssertionError, TimeoutError):
                        continue
                    for ev in events:
                        if isinstance(ev, MetadataRequested):
                            served.append(ev.piece)
                            s.sendall(
                                conn.send(
                                    router.message("ut_metadata", serve_request(info, ev.piece))
                                )
                            )
            assert sorted(set(served)) == [0, 1, 2]
            ti = handle.torrent_file()
            assert bytes(ti.info_section()) == info
            assert ti.num_files() == len(TREE)
        finally:
            ses.pause()
            del ses


def test_libtorrent_tells_us_about_another_peer_by_pex(
    case: tuple[bytes, bytes, Path], fresh_ip: Callable[[], str], tmp_path: Path
) -> None:
    torrent, _, save_dir = case
    ih = info_hash(torrent)
    # The seeder uploads slowly, so the leecher stays a leecher (libtorrent drops
    # seed-to-seed connections) while the seeder sends its ut_pex messages.
    with (
        LtPeer(
            torrent, save_dir, ip=fresh_ip(), use_trackers=False, upload_rate_limit=2048
        ) as seed,
        LtPeer(
            torrent, tmp_path / "leech", ip=fresh_ip(), role="leech", use_trackers=False
        ) as other,
    ):
        seed_addr, other_addr = seed.addr, other.addr
        other.add_peer(*seed_addr)
        router = _router()
        conn = Connection(ih, extensions=router)
        with socket.create_connection(seed.addr, timeout=10, source_address=(fresh_ip(), 0)) as s:
            _open(s, conn, ih)
            assert router.peer_supports("ut_pex")
            got = pump(
                s,
                conn,
                lambda evs: any(
                    isinstance(e, PexPeers) and any(p.addr == other_addr for p in e.added)
                    for e in evs
                ),
                30,
            )
    pex = [e for e in got if isinstance(e, PexPeers)]
    assert all(len(e.added) <= 50 for e in pex)
    assert all(p.addr != seed_addr for e in pex for p in e.added)  # nor us: we do not listen


def test_magnet_links_both_ways_with_libtorrent(case: tuple[bytes, bytes, Path]) -> None:
    torrent, _, _ = case
    ti = lt.torrent_info(torrent)
    theirs = parse_magnet(lt.make_magnet_uri(ti))
    assert theirs.info_hash == info_hash(torrent)
    assert theirs.name == "tree"
    assert theirs.trackers == ("http://127.0.0.1:1/announce",)
    ours = Magnet(
        theirs.info_hash,
        name="a name & more",
        trackers=("udp://127.0.0.1:6969/announce", "http://127.0.0.1:1/a?b=c&d=e"),
        peers=(PeerAddr("127.0.0.5", 6881), PeerAddr("::1", 51413)),
    )
    atp = lt.parse_magnet_uri(ours.to_uri())
    assert bytes(atp.info_hashes.v1.to_bytes()) == ours.info_hash
    assert atp.name == "a name & more"
    assert list(atp.trackers) == list(ours.trackers)
    assert sorted((str(ep[0]), ep[1]) for ep in atp.peers) == [("127.0.0.5", 6881), ("::1", 51413)]
