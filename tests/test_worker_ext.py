"""BEP 10 in the workers (issue 14): the request budget, the worker's extension glue on real
wire connections (no sockets: bytes are handed across), and the coordinator's handling of
peers learned by PEX.  Real-software tests are in tests/interop/test_ext_workers.py."""

from __future__ import annotations

import hashlib
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from mptorrent.engine.coordinator import MAX_PEX_KNOWN, SWARM_EVERY, Coordinator, FetchOptions
from mptorrent.messages import PeerAddr, PexLearned
from mptorrent.netio.peer import ACTIVE, CLOSED, PeerSession
from mptorrent.policy.budget import METADATA_BURST, RequestBudget
from mptorrent.policy.picker import Picker
from mptorrent.proto import metainfo, wire
from mptorrent.proto.ext import ExtendedHandshake, ExtensionRouter, encode_handshake
from mptorrent.proto.ext.ut_metadata import (
    MetadataPieceReceived,
    MetadataRejected,
    UtMetadata,
    encode_request,
)
from mptorrent.proto.ext.ut_pex import PexFlags, PexPeer, PexPeers, UtPex, encode_pex
from mptorrent.proto.metainfo import Metainfo
from mptorrent.worker.extensions import CLIENT, WorkerExtensions, _seen_address
from mptorrent.worker.upload import MAX_QUEUED_REQUESTS

THEIR_ID = b"-LT2000-theirpeerid0"
OUR_ID = b"-MP0100-ourpeerid000"


def make_meta(*, private: bool = False, files: int = 1) -> Metainfo:
    """A torrent whose info dictionary is ``files`` long-named files (about 60 bytes each)."""
    spec: list[tuple[tuple[str, ...], int]] = [
        ((f"file-{i:05}-{'x' * 40}.bin",), 1000) for i in range(files)
    ]
    data = metainfo.build(
        name="t",
        piece_length=16384,
        pieces=hashlib.sha1(bytes(16384)).digest() * -(-1000 * files // 16384),
        files=spec,
        private=private,
    )
    return metainfo.parse(data)


# -- the budget -------------------------------------------------------------------------


def test_budget_allows_a_burst_then_the_rate() -> None:
    b = RequestBudget(rate=2.0, burst=4.0)
    assert [b.allow(10.0) for _ in range(6)] == [True] * 4 + [False] * 2
    assert b.allow(10.4) is False  # 0.8 tokens back
    assert b.allow(10.5) is True  # 1.0
    assert [b.allow(100.0) for _ in range(5)] == [True] * 4 + [False]  # refilled to the burst
    assert b.allow(99.0) is False  # a clock going back gives nothing


def test_budget_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        RequestBudget(rate=0.0)
    with pytest.raises(ValueError):
        RequestBudget(burst=0.5)


# -- the worker's glue on a real connection ---------------------------------------------


class Remote:
    """The other end: a wire.Connection with its own router, bytes handed across by hand."""

    def __init__(self, meta: Metainfo, p: PeerSession, *, bep10: bool = True) -> None:
        self.p = p
        self.router = ExtensionRouter([UtMetadata(), UtPex()], client="remote", port=7000)
        self.conn = wire.Connection(meta.info_hash, extensions=self.router)
        reserved = wire.EXTENSION_RESERVED if bep10 else bytes(8)
        self.hs = wire.Handshake(meta.info_hash, THEIR_ID, reserved)

    def take(self) -> list[wire.Event]:
        """Everything our side queued, as the remote decodes it."""
        self.conn.receive_data(bytes(self.p.out))
        self.p.out.clear()
        evs = []
        while (ev := self.conn.next_event()) is not wire.NEED_DATA:
            assert isinstance(ev, wire.Event)
            evs.append(ev)
        return evs

    def give(self, *events: wire.Event) -> list[wire.Event]:
        """Send ``events`` to our side; the events our connection yields."""
        for e in events:
            self.p.wire.receive_data(self.conn.send(e))
        evs = []
        while (ev := self.p.wire.next_event()) is not wire.NEED_DATA:
            assert isinstance(ev, wire.Event)
            evs.append(ev)
        return evs


def connect(
    meta: Metainfo, *, listen: int | None = 6881, inbound: bool = False, bep10: bool = True
) -> tuple[WorkerExtensions, PeerSession, Remote]:
    ext = WorkerExtensions(meta, worker_id=3, listen_port=listen)
    p = PeerSession(
        PeerAddr("127.0.0.9", 51000 if inbound else 7000), info_hash=meta.info_hash,
        peer_id=OUR_ID, num_pieces=meta.num_pieces, piece_length=meta.piece_length,
        total_length=meta.total_length,
    )  # fmt: skip
    p.inbound = inbound
    p.greet()
    remote = Remote(meta, p, bep10=bep10)
    first = remote.take()
    assert isinstance(first[0], wire.Handshake) and first[0].extensions  # our BEP 10 bit
    got = remote.give(remote.hs)
    assert isinstance(got[0], wire.Handshake)
    p.state = ACTIVE
    p.greet_rest(None, interested=True)  # as the worker does, before the BEP 10 handshake
    assert [type(e) for e in remote.take()] == [wire.Interested]
    ext.attach(p)
    return ext, p, remote


def their_handshake(ext: WorkerExtensions, p: PeerSession, remote: Remote) -> None:
    for e in remote.give(remote.router.handshake()):
        assert ext.handle(p, e, 0.0) is None


def test_extended_handshake_says_what_the_issue_asks() -> None:
    meta = make_meta()
    _, _, remote = connect(meta)
    (hs,) = [e for e in remote.take() if isinstance(e, ExtendedHandshake)]
    assert set(hs.extensions) == {"ut_metadata", "ut_pex"}
    assert hs.client == CLIENT and hs.client.startswith("mptorrent/")
    assert hs.metadata_size == len(meta.info_bytes)
    assert hs.reqq == MAX_QUEUED_REQUESTS
    assert hs.port == 6881
    assert hs.yourip == IPv4Address("127.0.0.9")  # the peer's address as we see it
    assert b"6:yourip4:\x7f\x00\x00\x09" in encode_handshake(hs)
    # Not listening: no ``p``.
    _, _, remote2 = connect(meta, listen=None)
    (hs2,) = [e for e in remote2.take() if isinstance(e, ExtendedHandshake)]
    assert hs2.port is None


def test_the_peers_reqq_caps_our_request_window() -> None:
    meta = make_meta()
    ext, p, remote = connect(meta)
    remote.take()
    assert p.depth == 32  # a new peer's window (policy.pipeline.INITIAL)
    remote.router = ExtensionRouter([UtMetadata()], client="remote", port=7000, reqq=10)
    their_handshake(ext, p, remote)
    assert p.depth == p.window.ceiling == 10  # never more in flight than it queues
    p.window.sent(0.0, 16384)
    p.window.received(0.1, 16384)  # a round trip measured: slow start would double ...
    p.window.update(100 << 20)  # ... and a fast peer's rate alone would want hundreds
    assert p.window.rtt == 0.1 and p.depth == 10


def test_yourip_is_the_peers_literal_address() -> None:
    assert _seen_address("::ffff:10.1.2.3") == IPv4Address("10.1.2.3")  # dual-stack socket
    assert str(_seen_address("fe80::1%eth0")) == "fe80::1"
    assert str(_seen_address("::1")) == "::1"
    assert _seen_address("peer.example") is None


def test_private_torrent_has_no_pex_and_ignores_what_arrives_under_any_id() -> None:
    meta = make_meta(private=True)
    ext, p, remote = connect(meta)
    (hs,) = [e for e in remote.take() if isinstance(e, ExtendedHandshake)]
    assert set(hs.extensions) == {"ut_metadata"}  # BEP 27
    their_handshake(ext, p, remote)
    pex = encode_pex([PexPeer(PeerAddr("127.0.0.50", 6881))])
    for ext_id in (2, 7):  # ours for ut_metadata is 1; nothing else is routed
        evs = remote.give(wire.Extended(ext_id, pex))
        assert [type(e) for e in evs] == [wire.Extended]  # unrouted, not PexPeers
        assert ext.handle(p, evs[0], 0.0) is None


def test_without_bep10_on_their_side_nothing_is_sent() -> None:
    meta = make_meta()
    _, p, remote = connect(meta, bep10=False)
    assert p.wire.extensions is None
    assert not [e for e in remote.take() if isinstance(e, wire.Extended | ExtendedHandshake)]


def test_metadata_is_served_exactly_and_a_flood_is_rejected() -> None:
    meta = make_meta(files=700)  # an info dictionary of several 16 KiB pieces
    pieces = -(-len(meta.info_bytes) // 16384)
    assert pieces >= 3
    ext, p, remote = connect(meta)
    remote.take()
    their_handshake(ext, p, remote)
    asks = [i % pieces for i in range(40)]
    for i in asks:  # 40 requests in the same instant
        for e in remote.give(remote.router.message("ut_metadata", encode_request(i))):
            assert ext.handle(p, e, 100.0) is None
    replies = remote.take()
    data = [e for e in replies if isinstance(e, MetadataPieceReceived)]
    rejects = [e for e in replies if isinstance(e, MetadataRejected)]
    assert len(data) == METADATA_BURST and len(rejects) == 40 - METADATA_BURST
    got = {e.piece: e.data for e in data}
    assert b"".join(got[i] for i in range(pieces)) == meta.info_bytes
    # A second later, two more are served.
    for i in (0, 1, 2):
        for e in remote.give(remote.router.message("ut_metadata", encode_request(i))):
            ext.handle(p, e, 101.0)
    replies = remote.take()
    assert [type(e) for e in replies] == [MetadataPieceReceived] * 2 + [MetadataRejected]


def test_pex_received_becomes_a_report_and_a_flood_is_ignored() -> None:
    meta = make_meta()
    ext, p, remote = connect(meta, inbound=True)
    remote.take()
    their_handshake(ext, p, remote)
    added = [PexPeer(PeerAddr(f"127.0.1.{i}", 6881), PexFlags.SEED) for i in range(1, 4)]
    reports = []
    for k in range(6):
        for e in remote.give(remote.router.message("ut_pex", encode_pex(added))):
            reports.append(ext.handle(p, e, 50.0 + k))
    learned = [r for r in reports if r is not None]
    assert len(learned) == 3  # the burst; the rest are dropped quietly
    first = learned[0]
    assert isinstance(first, PexLearned)
    assert first.worker == 3
    assert first.source == PeerAddr("127.0.0.9", 7000)  # incoming: their ``p``
    assert first.peers == tuple(a.addr for a in added)
    assert first.flags == (int(PexFlags.SEED),) * 3


def test_pex_sent_lists_this_workers_peers_at_most_once_a_minute() -> None:
    meta = make_meta()
    ext, p, remote = connect(meta)
    remote.take()
    their_handshake(ext, p, remote)
    others = []
    for i, inbound in ((1, False), (2, True)):
        q = PeerSession(
            PeerAddr(f"127.0.2.{i}", 6000 + i), info_hash=meta.info_hash, peer_id=OUR_ID,
            num_pieces=meta.num_pieces, piece_length=meta.piece_length,
            total_length=meta.total_length,
        )  # fmt: skip
        q.inbound = inbound
        q.state = ACTIVE
        others.append(q)
    ext.send_pex([p, *others], 10.0)
    (pex,) = [e for e in remote.take() if isinstance(e, PexPeers)]
    # The outgoing one only (an incoming peer without BEP 10 gave no listen port); never
    # the peer itself.
    assert [a.addr for a in pex.added] == [PeerAddr("127.0.2.1", 6001)]
    assert pex.added[0].flags == PexFlags.REACHABLE
    others[0].state = CLOSED
    ext.send_pex([p, *others], 30.0)
    assert remote.take() == []  # within the minute
    ext.send_pex([p, *others], 71.0)
    (pex,) = [e for e in remote.take() if isinstance(e, PexPeers)]
    assert pex.dropped == (PeerAddr("127.0.2.1", 6001),)


# -- the coordinator --------------------------------------------------------------------


def coordinator(tmp_path: Path, meta: Metainfo) -> Coordinator:
    c = Coordinator(meta, tmp_path / "out", FetchOptions(use_trackers=False, bind="127.0.0.1"))
    c.listen = ("127.0.0.1", 6881)
    c.picker = Picker(meta.num_pieces, bytearray(meta.num_pieces))  # as _run makes it
    return c


def learned(*peers: PeerAddr) -> PexLearned:
    return PexLearned(0, PeerAddr("127.0.0.2", 1), peers, (0,) * len(peers))


def test_coordinator_adds_pex_peers_but_not_us_nor_banned(tmp_path: Path) -> None:
    c = coordinator(tmp_path, make_meta())
    c.banned[PeerAddr("127.0.0.66", 1)] = "lied"
    c._on_worker(
        c.slots[0],
        learned(PeerAddr("127.0.0.1", 6881), PeerAddr("127.0.0.66", 1), PeerAddr("127.0.0.7", 5)),
    )
    assert c.known == {PeerAddr("127.0.0.7", 5)}
    assert c.slots[0].peers == [PeerAddr("127.0.0.7", 5)]  # handed out like a tracker peer


def test_coordinator_ignores_pex_of_a_private_torrent(tmp_path: Path) -> None:
    c = coordinator(tmp_path, make_meta(private=True))
    c._on_worker(c.slots[0], learned(PeerAddr("127.0.0.7", 5)))
    assert c.known == set()


def test_coordinator_caps_what_pex_adds(tmp_path: Path) -> None:
    c = coordinator(tmp_path, make_meta())
    for k in range(MAX_PEX_KNOWN // 50 + 2):
        c._on_worker(c.slots[0], learned(*(PeerAddr(f"10.{k}.0.{i}", 6881) for i in range(1, 51))))
    assert len(c.known) == MAX_PEX_KNOWN


def test_coordinator_bound_to_every_address_knows_itself_on_loopback(tmp_path: Path) -> None:
    c = coordinator(tmp_path, make_meta())
    c.listen = ("0.0.0.0", 6881)
    c._on_worker(
        c.slots[0],
        learned(PeerAddr("127.0.0.1", 6881), PeerAddr("127.0.0.5", 6881), PeerAddr("::1", 6881)),
    )
    c._on_worker(c.slots[0], learned(PeerAddr("127.0.0.5", 6882), PeerAddr("10.0.0.1", 6881)))
    assert c.known == {PeerAddr("127.0.0.5", 6882), PeerAddr("10.0.0.1", 6881)}


def test_coordinator_shares_the_dialled_connected_peers_every_few_seconds(tmp_path: Path) -> None:
    c = coordinator(tmp_path, make_meta())
    a, b, banned = PeerAddr("127.0.0.7", 5), PeerAddr("127.0.0.8", 5), PeerAddr("127.0.0.9", 5)
    c.known |= {a, b, banned}
    c.banned[banned] = "lied"
    c.slots[0].reported = {a, banned, PeerAddr("127.0.0.10", 40000)}  # the last came in
    assert c.swarm() == {a}
    c._share_swarm(100.0)
    assert c._swarm_sent == {a}
    c.slots[0].reported.add(b)
    c._share_swarm(101.0)
    assert c._swarm_sent == {a}  # not yet: every SWARM_EVERY seconds
    c._share_swarm(100.0 + SWARM_EVERY)
    assert c._swarm_sent == {a, b}
    private = coordinator(tmp_path / "p", make_meta(private=True))
    private.known.add(a)
    private.slots[0].reported = {a}
    private._share_swarm(100.0)
    assert private._swarm_sent == frozenset()  # BEP 27


def test_pex_sent_lists_the_other_workers_peers_too() -> None:
    meta = make_meta()
    ext, p, remote = connect(meta)
    remote.take()
    their_handshake(ext, p, remote)
    ext.swarm = (PeerAddr("127.0.3.1", 6881), p.addr)  # the peer itself is never listed
    ext.send_pex([p], 10.0)
    (pex,) = [e for e in remote.take() if isinstance(e, PexPeers)]
    assert pex.added == (PexPeer(PeerAddr("127.0.3.1", 6881), PexFlags.REACHABLE),)
