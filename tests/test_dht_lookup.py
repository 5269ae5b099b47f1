"""mptorrent.proto.dht.lookup and the Node façade: iterative lookups converge and terminate.

The network tests run 200 real :class:`Node` objects exchanging their own datagrams in
memory (the protocol's own input, no mock), with a simulated clock.

Hostile inputs are rows of tests/adversarial/README.md table J.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

import pytest

from mptorrent.proto.dht import krpc
from mptorrent.proto.dht.krpc import Addr, FindNode, GetPeers, NodeInfo, Response
from mptorrent.proto.dht.lookup import MAX_QUERIES, QUERY_TIMEOUT, Lookup
from mptorrent.proto.dht.node import Family, LookupDone, Node, PeersFound
from mptorrent.proto.dht.routing import K, distance, random_id

Hostile = Callable[[bytes, Addr, Addr], list[tuple[bytes, Addr]]]


class Network:
    """Nodes on 10.x addresses (``family=6``: 2001:db8::x, BEP 32) delivering each other's
    datagrams in memory, in order."""

    def __init__(self, n: int, seed: int = 1, loss: float = 0.0, family: Family = 4) -> None:
        self.rng = random.Random(seed)
        self.loss = loss  # the share of datagrams the network drops
        self.now = 1000.0
        self.nodes: dict[Addr, Node] = {}
        self.hostile: dict[Addr, Hostile] = {}
        self.delivered = 0
        for i in range(n):
            if family == 4:
                addr = (f"10.0.{i // 200}.{i % 200 + 1}", 6881)
            else:
                addr = (f"2001:db8::{i + 1:x}", 6881)
            rng = random.Random(self.rng.random())
            self.nodes[addr] = Node(
                random_id(rng), now=self.now, rng=rng, own_addrs=frozenset({addr[0]}),
                family=family,
            )  # fmt: skip
        self.addrs = list(self.nodes)
        self.queue: deque[tuple[bytes, Addr, Addr]] = deque()

    def send(self, src: Addr, out: list[tuple[bytes, Addr]]) -> None:
        self.queue.extend((data, src, dst) for data, dst in out)

    def run(self, seconds: float = 30.0, max_datagrams: int = 500_000, settle: bool = True) -> None:
        """Deliver until quiet, then step the clock a second at a time, for ``seconds`` or
        (with ``settle``) until no node has a lookup running."""
        end = self.now + seconds
        while True:
            while self.queue:
                data, src, dst = self.queue.popleft()
                self.delivered += 1
                assert self.delivered < max_datagrams, "the network never quietens"
                if self.loss and self.rng.random() < self.loss:
                    continue
                if dst in self.hostile:
                    self.queue.extend((d, dst, to) for d, to in self.hostile[dst](data, src, dst))
                elif dst in self.nodes:
                    self.send(dst, self.nodes[dst].datagram_received(data, src, self.now))
            if self.now >= end or (settle and all(n.lookups == 0 for n in self.nodes.values())):
                return
            self.now += 1.0
            for addr, node in self.nodes.items():
                self.send(addr, node.timers(self.now))

    def bootstrap(self) -> None:
        first = self.addrs[0]
        for addr in self.addrs[1:]:
            self.send(addr, self.nodes[addr].bootstrap([first], self.now))
            self.run(0)
        self.run(60)


@pytest.fixture(scope="module")
def net() -> Network:
    net = Network(200)
    net.bootstrap()
    return net


def true_closest(net: Network, target: bytes, n: int = K) -> list[bytes]:
    ids = sorted((node.id for node in net.nodes.values()), key=lambda i: distance(i, target))
    return ids[:n]


def test_bootstrap_fills_every_routing_table(net: Network) -> None:
    sizes = [len(node.table) for node in net.nodes.values()]
    assert min(sizes) >= K, sizes
    for addr, node in net.nodes.items():
        events = node.take_events()
        if addr != net.addrs[0]:  # the first node bootstrapped from nobody
            assert any(isinstance(e, LookupDone) for e in events)
        assert node.malformed == 0


def test_find_node_lookups_converge_on_the_true_closest_nodes(net: Network) -> None:
    for i in range(10):
        target = random_id(net.rng)
        asker = net.addrs[(i * 37) % len(net.addrs)]
        node = net.nodes[asker]
        lookup = Lookup("find_node", target, node.table.closest(target, 3 * K), own_id=node.id)
        found = _drive(net, asker, lookup)
        expected = set(true_closest(net, target, K + 1)) - {node.id}
        expected = set(sorted(expected, key=lambda i: distance(i, target))[:K])
        assert {n.id for n, _ in found} == expected
        assert lookup.queries_sent <= MAX_QUERIES


def _drive(net: Network, asker: Addr, lookup: Lookup) -> list[tuple[NodeInfo, bytes]]:
    """Run one bare Lookup over the network's nodes, as the façade would."""
    node = net.nodes[asker]
    tid = 0
    while not lookup.done:
        asked = lookup.next_queries(net.now)
        assert asked or lookup.in_flight
        for who in asked:
            assert isinstance(who, NodeInfo)
            tid += 1
            query = GetPeers(tid.to_bytes(2, "big"), node.id, lookup.target)
            ((reply, _),) = net.nodes[who.addr].datagram_received(
                krpc.encode(query), asker, net.now
            )
            msg = krpc.decode(reply)
            assert isinstance(msg, Response)
            lookup.answered(who.addr, msg, msg.nodes)
    return [(info, token) for info, token in lookup.closest_answered()]


def test_announce_then_get_peers_finds_the_peer(net: Network) -> None:
    info_hash = random_id(net.rng)
    seeder, leecher = net.addrs[5], net.addrs[150]
    net.send(seeder, net.nodes[seeder].start_lookup(info_hash, net.now, announce_port=7000))
    net.run(30)
    done = [e for e in net.nodes[seeder].take_events() if isinstance(e, LookupDone)]
    assert done and done[-1].announced == K
    stored = [n for n in net.nodes.values() if n.server.store.get(info_hash, net.now)]
    assert {n.id for n in stored} == set(true_closest(net, info_hash)) - {net.nodes[seeder].id}
    net.send(leecher, net.nodes[leecher].start_lookup(info_hash, net.now))
    net.run(30)
    events = net.nodes[leecher].take_events()
    found = {p for e in events if isinstance(e, PeersFound) for p in e.peers}
    assert found == {(seeder[0], 7000)}
    assert any(isinstance(e, LookupDone) and e.peers == 1 for e in events)


def test_implied_port_announces_the_source_port(net: Network) -> None:
    info_hash = random_id(net.rng)
    seeder = net.addrs[7]
    net.send(seeder, net.nodes[seeder].start_lookup(info_hash, net.now, implied_port=True))
    net.run(30)
    stored = {p for n in net.nodes.values() for p in n.server.store.get(info_hash, net.now)}
    assert stored == {seeder}


def test_endless_closer_nodes_terminate_the_lookup(net: Network) -> None:
    """K6: a node that answers every query with 8 invented nodes closer than itself, each
    at a fresh address it also answers for: the lookup stops at MAX_QUERIES."""
    target = random_id(net.rng)
    liar_id = b"\xff" * 20
    counter = [0]
    ids: dict[Addr, bytes] = {}

    def liar(data: bytes, src: Addr, dst: Addr) -> list[tuple[bytes, Addr]]:
        msg = krpc.decode(data)
        assert isinstance(msg, GetPeers | FindNode)
        nodes = []
        for _ in range(8):
            counter[0] += 1
            c = counter[0]
            # each invented id is closer to the target than every one before it
            fake = (int.from_bytes(target, "big") ^ ((1 << 32) - c)).to_bytes(20, "big")
            addr = (f"10.66.{c // 250 % 250}.{c % 250 + 1}", 6881)
            net.hostile[addr] = liar
            ids[addr] = fake
            nodes.append(NodeInfo(fake, addr))
        reply = Response(msg.tid, ids.get(dst, liar_id), tuple(nodes), token=b"t")
        return [(krpc.encode(reply), src)]

    net.hostile[("10.66.0.1", 6881)] = liar
    asker = ("10.9.0.1", 6881)  # a newcomer whose only contact is the liar
    node = net.nodes[asker] = Node(random_id(net.rng), now=net.now, rng=random.Random(2))
    net.send(asker, node.start_lookup(target, net.now, bootstrap=[("10.66.0.1", 6881)]))
    before = net.delivered
    net.run(60)
    done = [e for e in node.take_events() if isinstance(e, LookupDone)]
    assert done and done[-1].queries == MAX_QUERIES  # the budget, not the liar, ended it
    assert node.lookups == 0
    assert net.delivered - before < 4 * MAX_QUERIES


def test_a_silent_network_times_out_and_ends() -> None:
    own = random_id(random.Random(1000))
    seeds = [NodeInfo(random_id(random.Random(i)), ("10.1.0.1", 1000 + i)) for i in range(20)]
    lookup = Lookup("get_peers", random_id(random.Random(99)), seeds, own_id=own)
    now = 0.0
    asked = lookup.next_queries(now)
    assert len(asked) == 3  # alpha
    assert lookup.next_queries(now) == []  # no more than alpha in flight
    steps = 0
    while not lookup.done:
        now += QUERY_TIMEOUT
        failed = lookup.expire(now)
        assert failed
        lookup.next_queries(now)
        steps += 1
    assert lookup.queries_sent == 20 and steps <= 7


def test_closest_k_termination_stops_before_asking_everyone() -> None:
    rng = random.Random(5)
    target = random_id(rng)
    own = random_id(rng)
    seeds = [NodeInfo(random_id(rng), ("10.2.0.1", 2000 + i)) for i in range(40)]
    lookup = Lookup("find_node", target, seeds, own_id=own)
    while not lookup.done:
        for who in lookup.next_queries(0.0):
            assert isinstance(who, NodeInfo)
            lookup.answered(who.addr, Response(b"t", who.id), ())
    ranked = sorted(seeds, key=lambda s: distance(s.id, target))
    assert lookup.queries_sent == K  # the k closest, no more
    assert lookup.closest_answered() == []  # no tokens were given
    assert set(lookup._candidates) - {s.addr for s in ranked[:K]} == {s.addr for s in ranked[K:]}


def test_a_reply_with_another_id_than_asked_fails_that_candidate() -> None:
    rng = random.Random(6)
    seed = NodeInfo(random_id(rng), ("10.3.0.1", 3000))
    lookup = Lookup("get_peers", random_id(rng), [seed], own_id=random_id(rng))
    assert len(lookup.next_queries(0.0)) == 1
    fresh = lookup.answered(seed.addr, Response(b"t", random_id(rng), values=(("1.2.3.4", 5),)), ())
    assert fresh == [] and lookup.done and lookup.peers == {}


def test_peers_are_reported_once_and_capped() -> None:
    rng = random.Random(7)
    seeds = [NodeInfo(random_id(rng), ("10.4.0.1", 4000 + i)) for i in range(2)]
    lookup = Lookup("get_peers", random_id(rng), seeds, own_id=random_id(rng))
    a, b = lookup.next_queries(0.0)
    assert isinstance(a, NodeInfo) and isinstance(b, NodeInfo)
    peers = (("1.2.3.4", 5), ("1.2.3.5", 6))
    assert lookup.answered(a.addr, Response(b"t", a.id, values=peers, token=b"x"), ()) == list(
        peers
    )
    assert lookup.answered(b.addr, Response(b"t", b.id, values=peers[::-1], token=b"y"), ()) == []
    assert lookup.done and {t for _, t in lookup.closest_answered()} == {b"x", b"y"}


def test_saved_table_restores_the_id_and_needs_no_bootstrap(net: Network) -> None:
    addr = net.addrs[42]
    old = net.nodes[addr]
    blob = old.save()
    new = Node.load(blob, now=net.now, rng=random.Random(3), own_addrs=frozenset({addr[0]}))
    assert new.id == old.id
    assert {e.id for e in new.table.entries()} == {e.id for e in old.table.entries()}
    net.nodes[addr] = new
    target = random_id(net.rng)
    net.send(addr, new.start_lookup(target, net.now))  # no bootstrap address given
    net.run(30)
    done = [e for e in new.take_events() if isinstance(e, LookupDone)]
    assert done and done[-1].queries >= K
    assert sum(e.last_response is not None for e in new.table.entries()) >= K


def test_stale_buckets_are_refreshed_with_find_node(net: Network) -> None:
    addr = net.addrs[60]
    node = net.nodes[addr]
    later = net.now + 16 * 60
    out = node.timers(later)
    queries = [krpc.decode(d) for d, _ in out]
    assert queries and all(isinstance(q, FindNode | krpc.Ping) for q in queries)
    assert 0 < node.lookups <= 8  # at most half the lookup slots
    net.now = later
    net.send(addr, out)
    net.run(30)
    assert node.lookups == 0


def test_too_many_lookups_end_the_oldest_with_an_event() -> None:
    from mptorrent.proto.dht.node import MAX_LOOKUPS

    node = Node(random_id(random.Random(1)), rng=random.Random(1))
    for i in range(MAX_LOOKUPS + 2):
        node.start_lookup(i.to_bytes(20, "big"), 0.0, bootstrap=[("10.0.0.9", 6881)])
    done = node.take_events()
    assert [e.target for e in done if isinstance(e, LookupDone)] == [
        bytes(20),
        (1).to_bytes(20, "big"),
    ]
    assert node.lookups == MAX_LOOKUPS


def test_lookups_converge_and_terminate_when_a_fifth_of_datagrams_are_lost() -> None:
    lossy = Network(200, seed=9, loss=0.2)
    lossy.bootstrap()
    lossy.run(300, settle=False)  # nodes whose bootstrap was lost try again every 30 s
    assert all(len(n.table) >= K for n in lossy.nodes.values())
    hits = 0
    for i in range(10):
        info_hash = random_id(lossy.rng)
        seeder, leecher = lossy.addrs[i], lossy.addrs[-1 - i]
        lossy.send(
            seeder, lossy.nodes[seeder].start_lookup(info_hash, lossy.now, announce_port=7000)
        )
        lossy.run(60)
        lossy.send(leecher, lossy.nodes[leecher].start_lookup(info_hash, lossy.now))
        lossy.run(60)
        assert lossy.nodes[seeder].lookups == lossy.nodes[leecher].lookups == 0  # both ended
        found = {
            p
            for e in lossy.nodes[leecher].take_events()
            if isinstance(e, PeersFound)
            for p in e.peers
        }
        assert found <= {(seeder[0], 7000)}
        hits += bool(found)
    assert hits >= 9


def test_bootstrap_is_retried_while_the_table_is_small() -> None:
    from mptorrent.proto.dht.node import BOOTSTRAP_RETRY

    node = Node(random_id(random.Random(4)), rng=random.Random(4))
    router = ("10.0.0.1", 6881)
    assert [to for _, to in node.bootstrap([router], 0.0)] == [router]
    assert node.timers(10.0) == []  # the query timed out; the lookup ended
    assert node.next_deadline() == BOOTSTRAP_RETRY
    again = node.timers(BOOTSTRAP_RETRY)
    assert [to for _, to in again] == [router]
    assert isinstance(krpc.decode(again[0][0]), FindNode)


def test_an_ipv6_network_bootstraps_announces_and_finds_peers() -> None:
    """BEP 32: nodes of family 6 answer with ``nodes6``, fill their tables from it, and a
    get_peers finds what another announced."""
    net = Network(40, seed=32, family=6)
    net.bootstrap()
    assert all(len(node.table) >= K for node in net.nodes.values())
    info_hash = random_id(net.rng)
    seeder, leecher = net.addrs[3], net.addrs[30]
    net.send(seeder, net.nodes[seeder].start_lookup(info_hash, net.now, announce_port=7000))
    net.run(30)
    net.send(leecher, net.nodes[leecher].start_lookup(info_hash, net.now))
    net.run(30)
    found = {
        p for e in net.nodes[leecher].take_events() if isinstance(e, PeersFound) for p in e.peers
    }
    assert found == {(seeder[0], 7000)}
