"""The sans-IO DHT core (mptorrent.proto.dht) against libtorrent's DHT on loopback.

The test drives a :class:`Node` over a real UDP socket (the I/O layer of issue 15 does
not exist yet), talking to one real libtorrent session with its DHT on and its
private-address restrictions off.  Both directions: we bootstrap from libtorrent and
announce into it, and libtorrent finds through our node a peer stored there.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mptorrent.proto.dht import krpc
from mptorrent.proto.dht.krpc import AnnouncePeer, GetPeers, Response
from mptorrent.proto.dht.node import Datagram, Event, LookupDone, Node, PeersFound

lt = pytest.importorskip("libtorrent")
pytestmark = pytest.mark.interop

LT_IP, OUR_IP, PEER_IP = "127.0.5.1", "127.0.5.2", "127.0.5.3"
IH = bytes.fromhex("5a" * 20)


@pytest.fixture
def lt_dht() -> Iterator[Any]:
    settings = {
        "listen_interfaces": f"{LT_IP}:0",
        "outgoing_interfaces": LT_IP,
        "enable_dht": True,
        "dht_bootstrap_nodes": "",
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_ip_notifier": False,
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_block_ratelimit": 0,
        "dht_prefer_verified_node_ids": False,
        "alert_mask": lt.alert.category_t.dht_operation_notification,
    }
    ses = lt.session(settings)
    deadline = time.monotonic() + 10
    while not ses.listen_port() and time.monotonic() < deadline:
        time.sleep(0.05)
    yield ses
    del ses


class Driver:
    """A Node on its own UDP socket, pumped by hand with the monotonic clock."""

    def __init__(self, ip: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, 0))
        self.sock.settimeout(0.05)
        self.t0 = time.monotonic()
        self.node = Node(
            random.randbytes(20), now=0.0, rng=random.Random(), own_addrs=frozenset({ip})
        )
        self.received: list[krpc.Message] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    def send(self, out: list[Datagram]) -> None:
        for data, addr in out:
            self.sock.sendto(data, addr)

    def pump(self, until: Callable[[], bool], seconds: float = 10.0) -> None:
        deadline = time.monotonic() + seconds
        while not until():
            assert time.monotonic() < deadline, f"timed out; received {self.received[-5:]}"
            try:
                data, src = self.sock.recvfrom(65536)
            except TimeoutError:
                self.send(self.node.timers(self.now()))
                continue
            self.received.append(krpc.decode(data))  # every datagram libtorrent sends decodes
            self.send(self.node.datagram_received(data, src, self.now()))

    def events(self, into: list[Event]) -> bool:
        """Move the node's events into ``into``; whether there are any."""
        into.extend(self.node.take_events())
        return bool(into)

    def close(self) -> None:
        self.sock.close()


def test_we_bootstrap_from_libtorrent_and_announce_into_it(lt_dht: Any) -> None:
    lt_addr = (LT_IP, lt_dht.listen_port())
    us = Driver(OUR_IP)
    try:
        events: list[Event] = []
        us.send(us.node.bootstrap([lt_addr], us.now()))
        us.pump(lambda: us.events(events))
        assert isinstance(events[0], LookupDone) and len(us.node.table) == 1
        us.send(us.node.start_lookup(IH, us.now(), announce_port=6881))
        events.clear()
        us.pump(lambda: us.events(events))
        done = events[-1]
        assert isinstance(done, LookupDone) and done.announced == 1
        # libtorrent now hands our peer to anyone who asks
        us.sock.sendto(krpc.encode(GetPeers(b"zz", b"Q" * 20, IH)), lt_addr)
        us.pump(lambda: any(isinstance(m, Response) and m.tid == b"zz" for m in us.received))
        reply = next(m for m in us.received if isinstance(m, Response) and m.tid == b"zz")
        assert isinstance(reply, Response) and (OUR_IP, 6881) in reply.values
        # the hand-made query's reply is the only one the node did not expect
        assert us.node.malformed == 0 and us.node.unmatched == 1
    finally:
        us.close()


def test_libtorrent_finds_a_peer_stored_in_our_node(lt_dht: Any) -> None:
    lt_addr = (LT_IP, lt_dht.listen_port())
    us = Driver(OUR_IP)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        peer.bind((PEER_IP, 0))
        peer.settimeout(5)
        us.send(us.node.bootstrap([lt_addr], us.now()))
        us.pump(lambda: len(us.node.table) > 0 and us.node.lookups == 0)
        # a third party announces itself to our node, with the token we gave it
        ours = (OUR_IP, us.sock.getsockname()[1])
        peer.sendto(krpc.encode(GetPeers(b"g1", b"P" * 20, IH)), ours)
        us.pump(lambda: len(us.node.server.store) == 0 and bool(us.node.server._sources))
        reply = krpc.decode(peer.recvfrom(4096)[0])
        assert isinstance(reply, Response) and reply.token
        peer.sendto(krpc.encode(AnnouncePeer(b"a1", b"P" * 20, IH, 7777, reply.token)), ours)
        us.pump(lambda: len(us.node.server.store) == 1)
        # Nodes that only queried libtorrent are not in its table: introduce ours, and
        # search once it has queried us (a search from an empty table ends at once).
        lt_dht.add_dht_node((OUR_IP, ours[1]))
        lt_queries = (krpc.Ping, krpc.FindNode, GetPeers)
        us.pump(lambda: any(isinstance(m, lt_queries) and m.id != b"P" * 20 for m in us.received))
        found: set[tuple[str, int]] = set()
        searches: list[float] = []

        def lt_found() -> bool:
            if not searches or time.monotonic() - searches[-1] > 2:
                searches.append(time.monotonic())
                lt_dht.dht_get_peers(lt.sha1_hash(IH))
            for a in lt_dht.pop_alerts():
                if isinstance(a, lt.dht_get_peers_reply_alert):
                    found.update((ep[0], ep[1]) for ep in a.peers())
            return (PEER_IP, 7777) in found

        us.pump(lt_found, seconds=20)
        assert any(isinstance(m, GetPeers) and m.info_hash == IH for m in us.received)
        assert not any(isinstance(e, PeersFound) for e in us.node.take_events())
    finally:
        peer.close()
        us.close()
