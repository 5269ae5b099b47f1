"""Table V (V5, V7) end to end: a hostile peer's BEP 52 hash requests to a real ``mptorrent
seed`` of a v2 torrent, over a loopback socket.

The peer is a raw socket; our own wire codec only frames what comes back.  Answers within
bounds must prove out against the file's root; requests a seed should not answer get a hash
reject on a connection that stays up; a malformed hash message ends the connection.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mptorrent.disk.create import create
from mptorrent.proto import merkle, metainfo, wire
from tests.interop.test_seed import mptorrent_seed
from tests.swarm import IpPool

PL = 32768
BIG = os.urandom(40 * PL + 123)  # 41 pieces: a piece layer of 64 (padded) hashes
fresh_ip = IpPool(third=53)


class RawPeer:
    """A peer that says what the test tells it, and frames the answers with our codec."""

    def __init__(self, addr: tuple[str, int], meta: metainfo.Metainfo) -> None:
        # each on its own address: a peer that breaks the protocol is not taken back
        self.sock = socket.create_connection(addr, timeout=10, source_address=(fresh_ip(), 0))
        self.conn = wire.Connection(
            meta.info_hash, meta.num_pieces, meta.piece_length, meta.total_length
        )
        self.sock.sendall(self.conn.send(wire.Handshake(meta.info_hash, b"-XX0001-hostile00000")))

    def send(self, event: wire.Event) -> None:
        self.sock.sendall(self.conn.send(event))

    def events(self, timeout: float = 10.0) -> Iterator[wire.Event]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ev = self.conn.next_event()
            if ev is not wire.NEED_DATA:
                assert isinstance(ev, wire.Event)
                yield ev
                continue
            data = self.sock.recv(65536)
            if not data:
                return
            self.conn.receive_data(data)

    def answer(self, req: merkle.HashRange) -> wire.Event:
        self.send(wire.HashRequest(req.root, req.base, req.index, req.count, req.proof_layers))
        for ev in self.events():
            if isinstance(ev, (wire.Hashes, wire.HashReject)):
                return ev
        pytest.fail("no answer to a hash request")

    def closed(self, timeout: float = 10.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return True


@pytest.fixture(scope="module")
def seeded(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[tuple[str, int], metainfo.Metainfo]]:
    tmp = tmp_path_factory.mktemp("v2seed")
    root = tmp / "payload"
    root.mkdir()
    (root / "big").write_bytes(BIG)
    (root / "small").write_bytes(b"small file")
    data = create(root, piece_length=PL, version="v2")
    torrent = tmp / "v2.torrent"
    torrent.write_bytes(data)
    with mptorrent_seed(torrent, root, fresh_ip(), "--no-trackers", jobs=1) as seed:
        yield (seed.addr.host, seed.addr.port), metainfo.parse(data)


def _big_root(meta: metainfo.Metainfo) -> tuple[bytes, int]:
    f = next(f for f in meta.files if f.path == ("big",))
    assert f.pieces_root is not None
    return f.pieces_root, merkle.log2(merkle.next_pow2(merkle.blocks_in(f.length)))


def test_v7_answers_prove_out_and_what_cannot_be_answered_is_rejected(
    seeded: tuple[tuple[str, int], metainfo.Metainfo],
) -> None:
    addr, meta = seeded
    root, top = _big_root(meta)
    p_level = merkle.log2(PL // merkle.BLOCK)
    peer = RawPeer(addr, meta)
    good = [
        merkle.HashRange(root, p_level, 0, 64, top - p_level - 1),  # the whole piece layer
        merkle.HashRange(root, p_level, 32, 16, top - p_level - 1),  # part of it, with uncles
        merkle.HashRange(root, 0, 10, 2, top - 1),  # leaf hashes of piece 5, to the root
    ]
    for req in good:
        ev = peer.answer(req)
        assert isinstance(ev, wire.Hashes), req
        assert merkle.check_answer(req, ev.hashes, top), req
    refused = [
        merkle.HashRange(bytes(32), p_level, 0, 2, 0),  # a root not in the torrent
        merkle.HashRange(root, p_level, 0, 3, 0),  # not a power of two
        merkle.HashRange(root, p_level, 2, 4, 0),  # not a multiple of the length
        merkle.HashRange(root, p_level, 64, 2, 0),  # past the layer
        merkle.HashRange(root, p_level, 0, 2, top),  # proof past the root
        merkle.HashRange(root, 0, 0, 4, 0),  # leaves of two pieces at once
    ]
    for req in refused:
        ev = peer.answer(req)
        assert isinstance(ev, wire.HashReject), req
        assert (ev.root, ev.base, ev.index, ev.count) == (req.root, req.base, req.index, req.count)
    # still served after all that
    assert isinstance(peer.answer(good[0]), wire.Hashes)


def test_v5_a_malformed_hash_message_ends_the_connection(
    seeded: tuple[tuple[str, int], metainfo.Metainfo],
) -> None:
    addr, meta = seeded
    root, _top = _big_root(meta)
    peer = RawPeer(addr, meta)
    # a hash request for 0 hashes: refused by the seed's codec
    body = bytes([21]) + root + bytes(8) + (0).to_bytes(4, "big") + bytes(4)
    peer.sock.sendall(len(body).to_bytes(4, "big") + body)
    assert peer.closed()
    # and the seed serves on, to others
    again = RawPeer(addr, meta)
    ev = again.answer(merkle.HashRange(root, 1, 0, 64, 0))
    assert isinstance(ev, wire.Hashes)


def test_v7_a_v1_torrent_rejects_every_hash_request(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(os.urandom(3 * PL))
    data = create(tmp_path / "f", piece_length=PL)
    torrent = tmp_path / "v1.torrent"
    torrent.write_bytes(data)
    meta = metainfo.parse(data)
    with mptorrent_seed(torrent, tmp_path / "f", fresh_ip(), "--no-trackers", jobs=1) as seed:
        peer = RawPeer((seed.addr.host, seed.addr.port), meta)
        ev = peer.answer(merkle.HashRange(bytes(32), 0, 0, 2, 0))
        assert isinstance(ev, wire.HashReject)
