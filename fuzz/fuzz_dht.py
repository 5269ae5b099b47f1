"""Fuzz target: the DHT core (mptorrent.proto.dht) takes any datagram without raising.

The first byte picks the mode.  Even: the rest is one datagram for ``krpc.decode``:
a message or ``KrpcError``, nothing else; a message holds to the caps (at most 32
nodes, 200 values, ports > 0) and re-encodes to bytes that decode to the same
message.  Odd: the rest is a series of datagrams (each behind a 2-byte length) fed
to a :class:`Node` with a ``get_peers`` lookup in flight, from the address it asked
(bit 1 set: from another address), with the clock moving a second per datagram;
``datagram_received`` and ``timers`` must never raise, every datagram the node sends
must decode, and its pending queries, lookups and peers stay bounded.

    python fuzz/fuzz_dht.py -runs=20000             # atheris (pip install atheris)
    python fuzz/fuzz_dht.py --hypothesis 2000       # without atheris
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from mptorrent.proto.dht import krpc
from mptorrent.proto.dht.krpc import (
    MAX_NODES,
    MAX_VALUES,
    AnnouncePeer,
    Error,
    FindNode,
    GetPeers,
    KrpcError,
    NodeInfo,
    Ping,
    Response,
)
from mptorrent.proto.dht.lookup import MAX_PEERS
from mptorrent.proto.dht.node import MAX_LOOKUPS, MAX_PENDING, Node

OWN = ("10.0.0.1", 6881)
ASKED = ("10.0.0.7", 6881)
OTHER = ("10.0.0.8", 6881)
IH = bytes(range(20))
THEM = b"T" * 20


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    if data[0] & 1:
        _node(data[1:], ASKED if not data[0] & 2 else OTHER)
    else:
        _codec(data[1:])


def _codec(data: bytes) -> None:
    try:
        msg = krpc.decode(data)
    except KrpcError as err:
        assert err.reason and str(err).isprintable(), err
        return
    if isinstance(msg, Response):
        assert len(msg.nodes) <= MAX_NODES and len(msg.nodes6) <= MAX_NODES
        assert len(msg.values) <= MAX_VALUES
        assert all(n.addr[1] > 0 for n in msg.nodes + msg.nodes6)
        assert all(p[1] > 0 for p in msg.values)
    assert krpc.decode(krpc.encode(msg)) == msg


def fresh_node() -> tuple[Node, bytes]:
    """A node with one lookup in flight to ASKED; the transaction id it used."""
    node = Node(b"N" * 20, rng=random.Random(0), own_addrs=frozenset({OWN[0]}))
    ((query, to),) = node.start_lookup(IH, 0.0, announce_port=6881, bootstrap=[ASKED])
    msg = krpc.decode(query)
    assert isinstance(msg, GetPeers) and to == ASKED
    return node, msg.tid


def datagrams(data: bytes) -> list[bytes]:
    out: list[bytes] = []
    pos = 0
    while pos + 2 <= len(data) and len(out) < 64:
        n = int.from_bytes(data[pos : pos + 2], "big")
        out.append(data[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return out


def _node(data: bytes, src: tuple[str, int]) -> None:
    node, _ = fresh_node()
    now = 0.0
    for datagram in datagrams(data):
        now += 1.0
        sent = node.datagram_received(datagram, src, now) + node.timers(now)
        for raw, to in sent:
            krpc.decode(raw)  # ours must always decode
            assert to[1] > 0 and to[0] != OWN[0]
        assert len(sent) <= 3 + 8 + len(node.table.buckets) * 2
        assert len(node._pending) <= MAX_PENDING and node.lookups <= MAX_LOOKUPS
        for search in node._searches:
            assert len(search.lookup.peers) <= MAX_PEERS
    node.timers(now + 3600)
    node.take_events()


def _frame(msg: krpc.Message) -> bytes:
    raw = krpc.encode(msg)
    return len(raw).to_bytes(2, "big") + raw


def seeds() -> list[bytes]:
    _, tid = fresh_node()
    near = [NodeInfo(bytes([0, 1, 2, i]) + bytes(16), (f"10.0.1.{i}", 6881)) for i in range(1, 9)]
    reply = Response(tid, THEM, nodes=tuple(near), values=(("10.0.2.1", 80),), token=b"tok")
    six = Response(tid, THEM, nodes6=(NodeInfo(IH, ("2001:db8::1", 6881)),), token=b"x")
    queries: list[krpc.Message] = [
        Ping(b"p1", THEM),
        FindNode(b"f1", THEM, IH),
        GetPeers(b"g1", THEM, IH),
        AnnouncePeer(b"a1", THEM, IH, 6881, b"token", True),
    ]
    script = b"".join(_frame(m) for m in [reply, *queries, Error(b"zz", 201, b"x")])
    return [
        *(b"\x00" + krpc.encode(m) for m in [reply, six, *queries, Error(tid, 203, b"no")]),
        b"\x00d1:t2:aa1:y1:q1:q4:vote1:ad2:id20:" + THEM + b"ee",
        b"\x01" + script,
        b"\x03" + script,
        b"\x01" + _frame(Error(tid, 202, b"busy")) + _frame(six),
    ]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
    from fuzz.engine import main as run

    run(TestOneInput, seeds())


if __name__ == "__main__":
    main()
