"""Upload safety: a raw BitTorrent client on a real socket against a seeding worker process.

Everything the seeder sends is parsed here by hand, not by ``mptorrent.proto.wire``, so a bug in our
codec cannot hide a matching bug in what goes out.  Requests are served first in, first out,
which lets a test prove that a request was dropped without waiting for a timeout: when the
block asked for *after* it arrives first, the earlier one was never queued.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mptorrent.disk.create import create
from mptorrent.engine.seeder import Seeder
from mptorrent.proto import metainfo
from mptorrent.proto.metainfo import Metainfo
from mptorrent.worker.upload import MAX_CHOKED_REQUESTS, MAX_QUEUED_REQUESTS

KiB = 1024
PIECE = 32 * KiB  # two blocks a piece
BLOCK = 16 * KiB
SIZE = 6 * PIECE + 1000  # seven pieces, the last one 1000 bytes
BAD_PIECE = 3  # corrupted on disk in the second seeder's copy
SEED_IP = "127.0.9.1"
BAD_SEED_IP = "127.0.9.2"

CHOKE, UNCHOKE, INTERESTED, NOT_INTERESTED, HAVE, BITFIELD, REQUEST, PIECE_MSG, CANCEL = range(9)
PROTOCOL = b"\x13BitTorrent protocol"


class PeerClosed(Exception):
    pass


_client_ips = itertools.count()


def client_ip() -> str:
    # A new source address for every connection: workers ban an offender by (address, port),
    # and a later connection that happened to reuse the port would be refused.
    n = next(_client_ips)
    return f"127.0.{10 + n // 200}.{50 + n % 200}"


def request(index: int, begin: int, length: int) -> bytes:
    return struct.pack(">IBIII", 13, REQUEST, index, begin, length)


def cancel(index: int, begin: int, length: int) -> bytes:
    return struct.pack(">IBIII", 13, CANCEL, index, begin, length)


def simple(msg_id: int) -> bytes:
    return struct.pack(">IB", 1, msg_id)


class RawPeer:
    """A bare-bones remote peer: handshake, then length-prefixed messages in and out."""

    def __init__(self, addr: tuple[str, int], meta: Metainfo) -> None:
        self.sock = socket.create_connection(addr, timeout=5, source_address=(client_ip(), 0))
        self.buf = bytearray()
        self.sock.sendall(PROTOCOL + bytes(8) + meta.info_hash + b"-TS0001-" + os.urandom(12))
        reply = self._exact(68)
        assert reply[:20] == PROTOCOL and reply[28:48] == meta.info_hash

    def close(self) -> None:
        self.sock.close()

    def send(self, *msgs: bytes) -> None:
        # one write, so the seeder reads the whole batch in one go
        self.sock.sendall(b"".join(msgs))

    def _fill(self, deadline: float) -> bool:
        """Read more; False if nothing came by ``deadline``; PeerClosed at end of stream."""
        self.sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return False
        except ConnectionResetError:
            raise PeerClosed from None
        if not data:
            raise PeerClosed
        self.buf += data
        return True

    def _exact(self, n: int) -> bytes:
        deadline = time.monotonic() + 5
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise TimeoutError(f"waited for {n} bytes, have {len(self.buf)}")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def next(self, timeout: float) -> tuple[int, bytes] | None:
        """The next message as (id, payload), skipping keep-alives; None if none in time."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 4:
                (length,) = struct.unpack_from(">I", self.buf)
                if length == 0:
                    del self.buf[:4]
                    continue
                if len(self.buf) >= 4 + length:
                    body = bytes(self.buf[4 : 4 + length])
                    del self.buf[: 4 + length]
                    return body[0], body[1:]
            if not self._fill(deadline):
                return None

    def expect(self, msg_id: int, timeout: float = 5.0) -> tuple[list[int], bytes]:
        """Read up to the first message ``msg_id``; the ids before it and its payload."""
        before: list[int] = []
        deadline = time.monotonic() + timeout
        while True:
            msg = self.next(max(0.0, deadline - time.monotonic()))
            if msg is None:
                raise AssertionError(f"no message {msg_id} in {timeout} s; got {before}")
            if msg[0] == msg_id:
                return before, msg[1]
            before.append(msg[0])

    def silent_for(self, seconds: float) -> list[int]:
        """Ids of everything that arrives within ``seconds``."""
        got = []
        deadline = time.monotonic() + seconds
        while (msg := self.next(max(0.0, deadline - time.monotonic()))) is not None:
            got.append(msg[0])
        return got

    def closed_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                self.buf.clear()  # blocks served before the cut are of no interest
                self._fill(deadline)
        except PeerClosed:
            return True
        return False

    def unchoked(self) -> RawPeer:
        self.send(simple(INTERESTED))
        self.expect(UNCHOKE)
        return self


def bitfield_pieces(payload: bytes, n: int) -> set[int]:
    return {i for i in range(n) if payload[i >> 3] & (0x80 >> (i & 7))}


@dataclass(frozen=True)
class Running:
    seeder: Seeder
    meta: Metainfo
    data: bytes

    @property
    def addr(self) -> tuple[str, int]:
        return (self.seeder.bind, self.seeder.stats.port)

    def block(self, index: int, begin: int, length: int) -> bytes:
        start = index * PIECE + begin
        return self.data[start : start + length]


@pytest.fixture(scope="module")
def torrent(tmp_path_factory: pytest.TempPathFactory) -> tuple[Metainfo, Path, bytes]:
    d = tmp_path_factory.mktemp("upload")
    data = hashlib.shake_256(b"test_upload").digest(SIZE)
    src = d / "data.bin"
    src.write_bytes(data)
    tfile = d / "data.torrent"
    tfile.write_bytes(create(src, trackers=[], piece_length=PIECE, jobs=1))
    return metainfo.load(tfile), src, data


def _serve(meta: Metainfo, path: Path, data: bytes, ip: str) -> Iterator[Running]:
    seeder = Seeder(meta, path, jobs=1, bind=ip, port=0, use_trackers=False)
    failed: list[BaseException] = []

    def run() -> None:
        try:
            seeder.run()
        except BaseException as exc:  # surfaced by the fixture, not lost in the thread
            failed.append(exc)
            seeder.ready.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert seeder.ready.wait(30), "seeder did not start"
    if failed:
        raise failed[0]
    # the worker process opens its listener a moment after the seeder is ready
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection((ip, seeder.stats.port), timeout=1).close()
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield Running(seeder, meta, data)
    finally:
        seeder.stop()
        t.join(10)


@pytest.fixture(scope="module")
def seed(torrent: tuple[Metainfo, Path, bytes]) -> Iterator[Running]:
    yield from _serve(*torrent, SEED_IP)


@pytest.fixture(scope="module")
def bad_seed(
    torrent: tuple[Metainfo, Path, bytes], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    meta, src, data = torrent
    copy = tmp_path_factory.mktemp("bad") / src.name
    broken = bytearray(data)
    broken[BAD_PIECE * PIECE + 100] ^= 0xFF
    copy.write_bytes(broken)
    yield from _serve(meta, copy, bytes(broken), BAD_SEED_IP)


@pytest.fixture
def peer(seed: Running) -> Iterator[RawPeer]:
    p = RawPeer(seed.addr, seed.meta)
    yield p
    p.close()


def test_full_seed_announces_everything_and_serves_exact_blocks(
    seed: Running, peer: RawPeer
) -> None:
    _, bits = peer.expect(BITFIELD)
    assert bitfield_pieces(bits, seed.meta.num_pieces) == set(range(7))
    peer.unchoked()
    wanted = [(0, 0, BLOCK), (2, BLOCK, BLOCK), (6, 0, 1000), (6, 10, 990), (5, 5, 77)]
    peer.send(*(request(*r) for r in wanted))
    for index, begin, length in wanted:
        _, payload = peer.expect(PIECE_MSG)
        assert struct.unpack_from(">II", payload) == (index, begin)
        assert payload[8:] == seed.block(index, begin, length)


@pytest.mark.parametrize(
    "index,begin,length",
    [
        (0, 0, BLOCK + 1),  # larger than 16 KiB
        (0, 0, 1 << 20),
        (0, PIECE - BLOCK + 1, BLOCK),  # runs past the end of the piece
        (0, PIECE, 1),
        (6, 0, 1001),  # past the end of the short last piece
        (7, 0, BLOCK),  # no such piece
        (0, 0, 0),  # empty
    ],
)
def test_bad_request_disconnects(seed: Running, index: int, begin: int, length: int) -> None:
    for choked in (True, False):
        p = RawPeer(seed.addr, seed.meta)
        try:
            if not choked:
                p.unchoked()
            p.send(request(index, begin, length))
            assert p.closed_within(5)
        finally:
            p.close()


def test_request_queue_holds_the_cap_and_no_more(seed: Running) -> None:
    p = RawPeer(seed.addr, seed.meta).unchoked()
    try:
        # duplicates are fine: the cap counts requests, not distinct blocks
        p.send(request(1, 0, BLOCK) * MAX_QUEUED_REQUESTS)
        for _ in range(MAX_QUEUED_REQUESTS):
            _, payload = p.expect(PIECE_MSG)
            assert payload[8:] == seed.block(1, 0, BLOCK)
    finally:
        p.close()
    p = RawPeer(seed.addr, seed.meta).unchoked()
    try:
        p.send(request(1, 0, BLOCK) * (MAX_QUEUED_REQUESTS + 1))
        assert p.closed_within(5)
    finally:
        p.close()


def test_requests_while_choked_are_dropped_then_cut_off(seed: Running, peer: RawPeer) -> None:
    peer.send(request(0, 0, BLOCK) * MAX_CHOKED_REQUESTS)
    peer.send(simple(INTERESTED))
    before, _ = peer.expect(UNCHOKE)
    assert PIECE_MSG not in before
    assert PIECE_MSG not in peer.silent_for(0.3)  # dropped, not queued for later

    p = RawPeer(seed.addr, seed.meta)
    try:
        p.send(request(0, 0, BLOCK) * (MAX_CHOKED_REQUESTS + 1))
        assert p.closed_within(5)
    finally:
        p.close()


def test_choked_request_count_starts_again_at_each_unchoke(peer: RawPeer) -> None:
    # Peers pipeline requests, so a few always arrive after a choke; over a long session
    # those must not add up to a disconnect (libtorrent counts them "in a row" only).
    rounds = 3
    per_round = MAX_CHOKED_REQUESTS // 2 + 1
    assert rounds * per_round > MAX_CHOKED_REQUESTS
    for _ in range(rounds):
        peer.send(request(0, 0, BLOCK) * per_round, simple(INTERESTED))
        peer.expect(UNCHOKE)
        peer.send(simple(NOT_INTERESTED))
        peer.expect(CHOKE)
    peer.send(simple(INTERESTED))
    peer.expect(UNCHOKE)


def test_cancel_removes_a_queued_request(seed: Running, peer: RawPeer) -> None:
    peer.unchoked()
    peer.send(request(0, 0, BLOCK), request(1, 0, BLOCK), cancel(0, 0, BLOCK))
    _, payload = peer.expect(PIECE_MSG)
    assert struct.unpack_from(">II", payload) == (1, 0)
    assert payload[8:] == seed.block(1, 0, BLOCK)
    assert PIECE_MSG not in peer.silent_for(0.3)
    # a cancel for something never asked for is harmless
    peer.send(cancel(2, 0, BLOCK), request(2, BLOCK, BLOCK))
    _, payload = peer.expect(PIECE_MSG)
    assert struct.unpack_from(">II", payload) == (2, BLOCK)


def test_unverified_piece_is_neither_announced_nor_served(bad_seed: Running) -> None:
    assert bad_seed.seeder.stats.valid_pieces == bad_seed.meta.num_pieces - 1
    p = RawPeer(bad_seed.addr, bad_seed.meta)
    try:
        _, bits = p.expect(BITFIELD)
        assert bitfield_pieces(bits, bad_seed.meta.num_pieces) == set(range(7)) - {BAD_PIECE}
        p.unchoked()
        p.send(request(BAD_PIECE, 0, BLOCK), request(BAD_PIECE, BLOCK, BLOCK), request(0, 0, BLOCK))
        _, payload = p.expect(PIECE_MSG)
        assert struct.unpack_from(">II", payload) == (0, 0)
        assert PIECE_MSG not in p.silent_for(0.3)
        # asking for a piece we lack is not an offence: the connection stays usable
        p.send(request(BAD_PIECE + 1, 0, BLOCK))
        _, payload = p.expect(PIECE_MSG)
        assert payload[8:] == bad_seed.block(BAD_PIECE + 1, 0, BLOCK)
    finally:
        p.close()
