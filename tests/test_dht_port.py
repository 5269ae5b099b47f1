"""The BEP 5 ``port`` message in real worker processes (issue 15), against a peer of our own.

A :class:`~mptorrent.engine.seeder.Seeder` runs in this process with its DHT node on a
loopback address (its worker is a real process); the "peer" is a TCP socket scripted here
with a ``wire.Connection``, and the DHT nodes it names are UDP sockets of ours, so what our
DHT does with a named node is seen as the datagram that reaches it.  Everything is on
127.0.7.0/24.  The libtorrent side of the exchange is in tests/interop/test_dht_port.py.
"""

from __future__ import annotations

import hashlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mptorrent.disk.create import create
from mptorrent.engine.seeder import Seeder
from mptorrent.proto import metainfo, wire
from mptorrent.proto.dht import krpc
from mptorrent.proto.metainfo import Metainfo

SEED_IP = "127.0.7.1"
PIECE = 16 * 1024
SIZE = 5 * PIECE + 99
THEIR_ID = b"-XX0001-portpeer0000"


@dataclass
class Running:
    seeder: Seeder
    meta: Metainfo

    @property
    def addr(self) -> tuple[str, int]:
        return (SEED_IP, self.seeder.stats.port)

    @property
    def dht_port(self) -> int:
        assert self.seeder.dht is not None
        return self.seeder.dht.port


def _seed(tmp: Path, *, dht: bool, private: bool = False) -> Iterator[Running]:
    tmp.mkdir(parents=True, exist_ok=True)
    data = tmp / "movie.bin"
    data.write_bytes(hashlib.shake_256(b"test_dht_port").digest(SIZE))
    meta = metainfo.parse(create(data, trackers=[], piece_length=PIECE, private=private, jobs=1))
    seeder = Seeder(
        meta, data, jobs=1, bind=SEED_IP, port=0, use_trackers=False, dht=dht,
        dht_bootstrap=(("127.0.0.1", 1),),
    )  # fmt: skip
    thread = threading.Thread(target=seeder.run, daemon=True)
    thread.start()
    try:
        assert seeder.ready.wait(30), "the seeder did not start"
        yield Running(seeder, meta)
    finally:
        seeder.stop()
        thread.join(30)


@pytest.fixture(scope="module")
def seeding(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from _seed(tmp_path_factory.mktemp("dht-port"), dht=True)


class Peer:
    """A scripted peer on ``ip``: our handshake (``reserved`` bits), then wire events."""

    def __init__(self, target: Running, ip: str, reserved: bytes) -> None:
        meta = target.meta
        self.conn = wire.Connection(
            meta.info_hash, meta.num_pieces, meta.piece_length, meta.total_length
        )
        deadline = time.monotonic() + 10
        while True:  # "ready" is said before the worker process listens
            try:
                self.sock = socket.create_connection(target.addr, 10, source_address=(ip, 0))
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "the seed's worker does not listen"
                time.sleep(0.05)
        self.sock.sendall(self.conn.send(wire.Handshake(meta.info_hash, THEIR_ID, reserved)))

    def events(self, seconds: float, until: type[wire.Event] | None = None) -> list[wire.Event]:
        """What the seeder sends within ``seconds`` (until it closes, or sends an ``until``)."""
        out: list[wire.Event] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if until is not None and any(isinstance(e, until) for e in out):
                break
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                break
            data = self.sock.recv(65536)
            if not data:
                break
            self.conn.receive_data(data)
            while (ev := self.conn.next_event()) is not wire.NEED_DATA:
                assert isinstance(ev, wire.Event)
                out.append(ev)
        return out

    def send(self, *events: wire.Event) -> None:
        self.sock.sendall(b"".join(self.conn.send(e) for e in events))

    def close(self) -> None:
        self.sock.close()


def udp_node(ip: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, 0))
    return s


def pings(
    sock: socket.socket, seconds: float, want: int | None = None
) -> list[tuple[krpc.Message, tuple[str, int]]]:
    """The KRPC messages reaching ``sock`` within ``seconds`` (or once ``want`` came)."""
    got: list[tuple[krpc.Message, tuple[str, int]]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and len(got) != want:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        data, src = sock.recvfrom(65536)
        got.append((krpc.decode(data), (src[0], src[1])))
    return got


def test_the_seed_sets_the_dht_bit_and_sends_its_port_to_a_dht_peer(seeding: Running) -> None:
    peer = Peer(seeding, "127.0.7.2", wire.DHT_RESERVED)
    try:
        evs = peer.events(5, until=wire.Port)
        evs += peer.events(0.3)  # and no second one
        hs = evs[0]
        assert isinstance(hs, wire.Handshake) and hs.dht
        assert wire.Port(seeding.dht_port) in evs
        # after its piece state, as libtorrent does; once only
        assert isinstance(evs[1], wire.Bitfield) and evs.count(wire.Port(seeding.dht_port)) == 1
    finally:
        peer.close()


def test_no_port_for_a_peer_without_the_bit_until_it_sends_one(seeding: Running) -> None:
    peer = Peer(seeding, "127.0.7.3", bytes(8))
    try:
        evs = peer.events(5, until=wire.Bitfield)
        evs += peer.events(0.5)
        assert isinstance(evs[0], wire.Handshake) and evs[0].dht
        assert not any(isinstance(e, wire.Port) for e in evs)
        node = udp_node("127.0.7.3")
        peer.send(wire.Port(node.getsockname()[1]))  # libtorrent's rule: ours in return
        assert peer.events(5, until=wire.Port) == [wire.Port(seeding.dht_port)]
        ((ping, src),) = pings(node, 5, want=1)
        assert isinstance(ping, krpc.Ping) and src == (SEED_IP, seeding.dht_port)
    finally:
        peer.close()


def test_a_named_node_is_pinged_once_and_port_floods_are_ignored(seeding: Running) -> None:
    """Port 0 is dropped; the first real port of a connection is pinged (not trusted: no
    answer, no table entry); every later port on that connection is ignored, however many."""
    ip = "127.0.7.4"
    first, later = udp_node(ip), udp_node(ip)
    peer = Peer(seeding, ip, wire.DHT_RESERVED)
    try:
        peer.events(5, until=wire.Port)
        peer.send(wire.Port(0), wire.Port(first.getsockname()[1]))
        peer.send(*[wire.Port(later.getsockname()[1])] * 500)
        got = pings(first, 5, want=1)
        assert [type(m) for m, _ in got] == [krpc.Ping]
        assert got[0][1] == (SEED_IP, seeding.dht_port)
        assert pings(first, 0.5) == [] and pings(later, 0.5) == []
        dht = seeding.seeder.dht
        assert dht is not None and dht.node is not None
        assert not dht.node.table.knows(first.getsockname())  # it never answered
        # a second connection from the same address may name a node again
        again = Peer(seeding, ip, wire.DHT_RESERVED)
        again.events(5, until=wire.Port)
        again.send(wire.Port(later.getsockname()[1]))
        assert [type(m) for m, _ in pings(later, 5, want=1)] == [krpc.Ping]
        again.close()
    finally:
        peer.close()


def test_a_named_node_that_answers_joins_the_table(seeding: Running) -> None:
    ip = "127.0.7.5"
    node = udp_node(ip)
    peer = Peer(seeding, ip, wire.DHT_RESERVED)
    try:
        peer.events(5, until=wire.Port)
        peer.send(wire.Port(node.getsockname()[1]))
        ((ping, src),) = pings(node, 5, want=1)
        assert isinstance(ping, krpc.Ping)
        node.sendto(krpc.encode(krpc.Response(ping.tid, b"A" * 20)), src)
        dht = seeding.seeder.dht
        assert dht is not None and dht.node is not None
        deadline = time.monotonic() + 3
        while not dht.node.table.knows(node.getsockname()) and time.monotonic() < deadline:
            time.sleep(0.05)
        entry = dht.node.table.get(b"A" * 20)
        assert entry is not None and entry.addr == node.getsockname()
    finally:
        peer.close()


def test_without_the_dht_no_bit_no_port_and_ports_are_ignored(tmp_path: Path) -> None:
    for private, dht in ((False, False), (True, True)):  # --no-dht; a private torrent (BEP 27)
        for running in _seed(tmp_path / f"{private}-{dht}", dht=dht, private=private):
            assert running.seeder.dht is None
            ip = "127.0.7.6"
            node = udp_node(ip)
            peer = Peer(running, ip, wire.DHT_RESERVED)
            try:
                evs = peer.events(5, until=wire.Bitfield)
                assert isinstance(evs[0], wire.Handshake) and not evs[0].dht
                peer.send(wire.Port(node.getsockname()[1]))
                assert not any(isinstance(e, wire.Port) for e in evs + peer.events(0.5))
                assert pings(node, 0.3) == []
            finally:
                peer.close()


def test_the_dht_queues_at_most_64_named_nodes_and_unmaps_ipv4_over_ipv6() -> None:
    from mptorrent.netio.dht import MAX_QUEUED_NODES, Dht

    dht = Dht(bind="127.0.7.9", port=0, on_peers=lambda _ih, _p: None, save=False)
    dht.add_node("::ffff:127.0.7.10", 7000)  # as a dual-stack socket names an IPv4 peer
    for i in range(1000):
        dht.add_node("127.0.7.11", 1000 + i)
    assert dht._pings[0] == ("127.0.7.10", 7000)
    assert len(dht._pings) == MAX_QUEUED_NODES
