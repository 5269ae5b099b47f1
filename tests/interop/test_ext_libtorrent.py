"""BEP 10 and a geometry learned late, against a real libtorrent seeder on loopback.

Our sans-IO ``Connection`` is driven over a plain socket, as a magnet download will drive
it: created with the info-hash only, it takes libtorrent's handshake, its extended
handshake (through ``mptorrent.proto.ext.ExtensionRouter``) and its bitfield before it
knows the torrent's size; then ``set_geometry`` and an ordinary block download.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mptorrent.proto import bencode
from mptorrent.proto.ext import ExtendedHandshake, ExtensionRouter
from mptorrent.proto.wire import (
    BLOCK_SIZE,
    EXTENSION_RESERVED,
    NEED_DATA,
    Bitfield,
    Connection,
    Event,
    Handshake,
    Interested,
    Piece,
    Unchoke,
)
from tests.swarm import LtPeer, info_hash, make_single_file, make_torrent

lt = pytest.importorskip("libtorrent")

pytestmark = pytest.mark.interop

PIECE_LEN = 32768
SIZE = 5 * PIECE_LEN + 1234  # a short last piece
PEER_ID = b"-MP0100-extinterop00"


def pump(
    sock: socket.socket, conn: Connection, until: Callable[[list[Event]], bool], timeout: float
) -> list[Event]:
    """Receive (zero-copy, as netio does) until ``until(events)``; blocks are copied out."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while not until(events):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out; got {events!r}")
        sock.settimeout(left)
        n = sock.recv_into(conn.get_buffer())
        if n == 0:
            raise AssertionError(f"libtorrent closed the connection; got {events!r}")
        conn.buffer_updated(n)
        while (ev := conn.next_event()) is not NEED_DATA:
            events.append(Piece(ev.index, ev.begin, bytes(ev.block)) if type(ev) is Piece else ev)
    return events


def quiet(sock: socket.socket, conn: Connection, seconds: float) -> list[Event]:
    """Everything that arrives until the line is quiet for ``seconds``."""
    events: list[Event] = []
    while True:
        try:
            events += pump(sock, conn, lambda evs: bool(evs), seconds)
        except (AssertionError, TimeoutError):
            return events


def clients(seed: LtPeer) -> list[bytes]:
    """The client names libtorrent shows for its peers (bytes or str by binding version)."""
    names = (p.client for p in seed.handle.get_peer_info())
    return [n if isinstance(n, bytes) else n.encode() for n in names]


def test_libtorrent_extension_handshake_then_geometry_then_a_block(
    tmp_path: Path, fresh_ip: Callable[[], str]
) -> None:
    payload = make_single_file(tmp_path / "data", SIZE)
    torrent = make_torrent(payload.root, PIECE_LEN)
    ih = info_hash(torrent)
    start, end = bencode.decode_with_spans(torrent, max_size=len(torrent))[1][b"info"]
    data = payload.root.read_bytes()
    with LtPeer(torrent, payload.save_dir, ip=fresh_ip()) as seed:
        router = ExtensionRouter(client="mptorrent-interop 0.1", reqq=64)
        conn = Connection(ih, extensions=router)  # the info-hash is all a magnet link gives
        with socket.create_connection(seed.addr, timeout=10, source_address=(fresh_ip(), 0)) as s:
            s.sendall(conn.send(Handshake(ih, PEER_ID, EXTENSION_RESERVED)))
            got = pump(s, conn, lambda evs: any(type(e) is ExtendedHandshake for e in evs), 10)
            assert isinstance(got[0], Handshake) and got[0].extensions
            s.sendall(conn.send(router.handshake()))
            got += quiet(s, conn, 0.5)  # its bitfield, if not in yet, is kept, not shown

            theirs = router.peer_handshake
            assert theirs is not None
            assert theirs.client is not None and theirs.client.startswith("libtorrent")
            assert theirs.metadata_size == end - start  # BEP 9 will need exactly this
            assert router.peer_supports("ut_metadata")
            assert theirs.reqq is not None and theirs.reqq >= 1
            assert not any(isinstance(e, Bitfield) for e in got)
            # libtorrent read our extended handshake: it names us by our 'v'.
            deadline = time.monotonic() + 10
            while b"mptorrent-interop 0.1" not in clients(seed):
                assert time.monotonic() < deadline, clients(seed)
                time.sleep(0.05)

            conn.set_geometry(6, PIECE_LEN, SIZE)
            # The bitfield came in before the geometry: it is the very next event.
            assert conn.next_event() == Bitfield(b"\xfc")
            assert conn.peer_is_seed and conn.peer_has == bytearray([1] * 6)

            s.sendall(conn.send(Interested()))
            pump(s, conn, lambda evs: any(isinstance(e, Unchoke) for e in evs), 10)
            last = 5 * PIECE_LEN
            blocks = [(0, BLOCK_SIZE, BLOCK_SIZE), (5, 0, 1234)]
            s.sendall(conn.send_requests(blocks))
            got = pump(s, conn, lambda evs: sum(type(e) is Piece for e in evs) == 2, 10)
            pieces = sorted((e.index, e.begin, e.block) for e in got if isinstance(e, Piece))
            assert pieces == [
                (0, BLOCK_SIZE, data[BLOCK_SIZE : 2 * BLOCK_SIZE]),
                (5, 0, data[last:]),
            ]
            assert conn.outstanding_requests == 0
