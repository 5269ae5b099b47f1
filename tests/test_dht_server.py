"""mptorrent.proto.dht.server and the Node façade's input side: the good citizen's answers,
tokens, the peer store's expiry and caps, the rate limit, and replies that do not match.

Hostile inputs are rows of tests/adversarial/README.md table J.
"""

from __future__ import annotations

import random

import pytest

from mptorrent.proto.dht import krpc
from mptorrent.proto.dht.krpc import (
    AnnouncePeer,
    Error,
    FindNode,
    GetPeers,
    NodeInfo,
    Ping,
    Response,
)
from mptorrent.proto.dht.node import LookupDone, Node, PeersFound
from mptorrent.proto.dht.routing import random_id
from mptorrent.proto.dht.server import (
    MAX_HASHES,
    MAX_VALUES_REPLY,
    PEER_TTL,
    RATE_BURST,
    TOKEN_ROTATION,
    PeerStore,
    Server,
)

ME = ("10.0.0.1", 6881)
ASKER = ("10.0.0.2", 7000)
IH = b"I" * 20


def node(seed: int = 1) -> Node:
    rng = random.Random(seed)
    return Node(random_id(rng), rng=rng, own_addrs=frozenset({ME[0]}))


def ask(n: Node, msg: krpc.Message, src: tuple[str, int] = ASKER, now: float = 0.0) -> krpc.Message:
    ((reply, to),) = n.datagram_received(krpc.encode(msg), src, now)
    assert to == src
    return krpc.decode(reply)


def test_ping_find_node_and_get_peers_are_answered() -> None:
    n = node()
    them = b"T" * 20
    assert ask(n, Ping(b"p1", them)) == Response(b"p1", n.id)
    # the asker entered our table (questionable until it answers us)
    assert n.table.get(them) is not None
    for i in range(20):
        n.table.heard_from(
            random_id(random.Random(i + 100)), (f"10.1.0.{i + 1}", 1), 0.0, responded=True
        )
    target = random_id(random.Random(7))
    reply = ask(n, FindNode(b"f1", them, target))
    assert isinstance(reply, Response) and len(reply.nodes) == 8
    assert list(reply.nodes) == n.table.closest(target, 8)
    reply = ask(n, GetPeers(b"g1", them, IH))
    assert (
        isinstance(reply, Response) and reply.token and len(reply.nodes) == 8 and not reply.values
    )


def test_announce_with_a_good_token_stores_the_peer() -> None:
    n = node()
    reply = ask(n, GetPeers(b"g1", b"T" * 20, IH))
    assert isinstance(reply, Response) and reply.token is not None
    token = reply.token
    assert ask(n, AnnouncePeer(b"a1", b"T" * 20, IH, 51413, token), now=1.0) == Response(
        b"a1", n.id
    )
    assert ask(
        n, AnnouncePeer(b"a2", b"T" * 20, IH, 0, token, implied_port=True), now=2.0
    ) == Response(b"a2", n.id)
    reply = ask(n, GetPeers(b"g2", b"U" * 20, IH), src=("10.0.0.3", 1), now=3.0)
    assert isinstance(reply, Response)
    assert set(reply.values) == {(ASKER[0], 51413), ASKER}


def test_bad_tokens_are_refused_with_203() -> None:
    """K8: a made-up token, one given to another address, and one two rotations old."""
    n = node()
    reply = ask(n, GetPeers(b"g1", b"T" * 20, IH))
    assert isinstance(reply, Response) and reply.token is not None
    token = reply.token
    bad = ask(n, AnnouncePeer(b"a1", b"T" * 20, IH, 1, b"made-up"))
    assert bad == Error(b"a1", 203, b"bad token")
    other = ask(n, AnnouncePeer(b"a2", b"T" * 20, IH, 1, token), src=("10.0.0.9", 7000))
    assert other == Error(b"a2", 203, b"bad token")
    # still good after one rotation (the previous secret), not after two
    later = TOKEN_ROTATION + 1
    assert ask(n, AnnouncePeer(b"a3", b"T" * 20, IH, 1, token), now=later) == Response(b"a3", n.id)
    stale = ask(n, AnnouncePeer(b"a4", b"T" * 20, IH, 1, token), now=2 * later)
    assert stale == Error(b"a4", 203, b"bad token")
    assert len(n.server.store) == 1


def test_token_is_bound_to_the_ip_and_rotates() -> None:
    s = Server(b"S" * 20, lambda t, f: [], rng=random.Random(1))
    t1 = s.token_for("10.0.0.2", 0.0)
    assert s.token_for("10.0.0.2", 10.0) == t1 and s.token_for("10.0.0.3", 10.0) != t1
    assert s.token_for("10.0.0.2", TOKEN_ROTATION) != t1
    assert s.token_valid(t1, "10.0.0.2", TOKEN_ROTATION + 1)
    assert not s.token_valid(t1, "10.0.0.2", 2 * TOKEN_ROTATION)


def test_peers_expire_after_30_minutes() -> None:
    store = PeerStore()
    store.add(IH, ("10.0.0.5", 1), 0.0)
    store.add(IH, ("10.0.0.6", 1), 100.0)
    assert store.get(IH, PEER_TTL - 1) == [("10.0.0.6", 1), ("10.0.0.5", 1)]
    assert store.get(IH, PEER_TTL + 1) == [("10.0.0.6", 1)]
    store.add(IH, ("10.0.0.6", 1), PEER_TTL)  # re-announce refreshes
    store.expire(PEER_TTL + 150)
    assert len(store) == 1 and store.get(IH, PEER_TTL + 150) == [("10.0.0.6", 1)]
    store.expire(3 * PEER_TTL)
    assert len(store) == 0


def test_announce_floods_hit_the_caps_and_keep_what_is_stored() -> None:
    """K7: 10,000 announces for one info-hash, then for 10,000 info-hashes."""
    store = PeerStore(per_hash=100, hashes=50, total=1000)
    stored = sum(store.add(IH, (f"10.{i >> 8}.{i & 255}.1", 1), 0.0) for i in range(10_000))
    assert stored == 100 and len(store) == 100
    first = store.get(IH, 1.0, n=1000)
    for i in range(10_000):
        store.add(i.to_bytes(20, "big"), ("10.9.9.9", 1), 1.0)
    assert len(store) == 100 + 49  # 50 info-hashes at most
    assert set(store.get(IH, 2.0, n=1000)) == set(first)
    assert len(store.get(IH, 2.0)) == MAX_VALUES_REPLY
    big = PeerStore(per_hash=100, hashes=1000, total=300)
    for i in range(10_000):
        big.add(i.to_bytes(20, "big"), ("10.9.9.9", 1), 1.0)
    assert len(big) == 300


def test_announce_flood_through_the_node_is_bounded() -> None:
    """K7 through the node: one asker announcing 2,100 info-hashes (paced under the rate
    limit) fills MAX_HASHES and no more; a burst in one second is cut by the rate limit."""
    n = node()
    reply = ask(n, GetPeers(b"g1", b"T" * 20, IH))
    assert isinstance(reply, Response) and reply.token is not None
    token = reply.token
    for i in range(2100):
        ann = AnnouncePeer(b"a%d" % i, b"T" * 20, i.to_bytes(20, "big"), 1, token)
        assert ask(n, ann, now=1.0 + i / 4) == Response(b"a%d" % i, n.id)
    assert len(n.server.store) == MAX_HASHES and n.server.dropped == 0
    burst = AnnouncePeer(b"b", b"T" * 20, IH, 2, token)
    now = 10_000.0  # tokens would be stale: the rate limit acts first anyway
    answered = sum(bool(n.datagram_received(krpc.encode(burst), ASKER, now)) for _ in range(1000))
    assert answered == RATE_BURST and n.server.dropped == 1000 - RATE_BURST


def test_a_source_over_its_rate_is_dropped_unanswered() -> None:
    n = node()
    answered = sum(
        bool(n.datagram_received(krpc.encode(Ping(b"p", b"T" * 20)), ASKER, 0.0))
        for _ in range(100)
    )
    assert answered == RATE_BURST and n.server.dropped == 100 - RATE_BURST
    # another source is not affected; the first recovers with time
    assert n.datagram_received(krpc.encode(Ping(b"p", b"U" * 20)), ("10.0.0.3", 1), 0.0)
    assert n.datagram_received(krpc.encode(Ping(b"p", b"T" * 20)), ASKER, 1.0)


def test_malformed_queries_get_an_error_and_garbage_gets_nothing() -> None:
    """K1: a query we can read the tid of gets 203/204; anything else is dropped."""
    n = node()
    raw = krpc.encode(Ping(b"p1", b"T" * 20)).replace(b"4:ping", b"4:vote")
    assert ask(n, krpc.decode(krpc.encode(Ping(b"ok", b"T" * 20)))) == Response(b"ok", n.id)
    ((reply, _),) = n.datagram_received(raw, ASKER, 0.0)
    assert krpc.decode(reply) == Error(b"p1", 204, b"unknown method 'vote'")
    for junk in (b"", b"\xff" * 50, b"d1:t2:aa1:y1:re", b"de", b"i1e"):
        assert n.datagram_received(junk, ASKER, 0.0) == []
    assert n.malformed == 6


def _started(n: Node) -> tuple[bytes, tuple[str, int]]:
    out = n.start_lookup(IH, 0.0, bootstrap=[("10.0.0.7", 6881)])
    ((data, to),) = out
    msg = krpc.decode(data)
    assert isinstance(msg, GetPeers) and to == ("10.0.0.7", 6881)
    return msg.tid, to


def test_replies_with_a_wrong_tid_or_from_another_address_are_dropped() -> None:
    """K2 and K3: only the address we asked, under the tid we used, is heard."""
    n = node()
    tid, to = _started(n)
    them = b"R" * 20
    reply = Response(tid, them, values=(("10.5.5.5", 80),), token=b"t")
    assert n.datagram_received(krpc.encode(reply), ("10.0.0.8", 6881), 1.0) == []  # other address
    wrong_tid = Response(bytes([tid[0] ^ 1, tid[1]]), them, values=(("10.5.5.5", 80),))
    assert n.datagram_received(krpc.encode(wrong_tid), to, 1.0) == []
    assert n.unmatched == 2 and n.take_events() == [] and n.table.get(them) is None
    n.datagram_received(krpc.encode(reply), to, 1.0)
    assert PeersFound(IH, (("10.5.5.5", 80),)) in n.take_events()
    assert n.table.get(them) is not None
    # the same reply again is a replay: its tid is spent
    assert n.datagram_received(krpc.encode(reply), to, 2.0) == []
    assert n.unmatched == 3


def test_own_address_and_port_zero_nodes_in_a_reply_are_not_asked() -> None:
    """K5 (lookup part): a reply naming us, or a node at port 0, does not make us ask it."""
    n = node()
    tid, to = _started(n)
    nodes = (
        NodeInfo(b"A" * 20, ME),
        NodeInfo(n.id, ("10.0.0.20", 1)),
        NodeInfo(b"B" * 20, ("10.0.0.21", 1)),
    )
    raw = krpc.encode(Response(tid, b"R" * 20, nodes=nodes)).replace(
        b"\x0a\x00\x00\x15\x00\x01", b"\x0a\x00\x00\x15\x00\x00"
    )
    out = n.datagram_received(raw, to, 1.0)
    assert out == []  # nothing usable was named; the lookup ends
    assert n.lookups == 0


def test_timeouts_fail_the_node_and_end_the_lookup() -> None:
    n = node()
    _started(n)
    assert n.next_deadline() == 5.0
    n.timers(5.0)
    (done,) = n.take_events()
    assert isinstance(done, LookupDone) and done.queries == 1 and n.lookups == 0


def test_datagrams_from_unusable_sources_are_dropped() -> None:
    n = node()
    ping = krpc.encode(Ping(b"p", b"T" * 20))
    for src in [("fe80::1%eth0", 1), ("::1", 1), ("10.0.0.2", 0), ("not-an-ip", 1)]:
        assert n.datagram_received(ping, src, 0.0) == []
    assert n.malformed == 4 and len(n.table) == 0


def test_announcing_port_zero_is_our_own_mistake() -> None:
    with pytest.raises(ValueError, match="cannot announce port 0"):
        node().start_lookup(IH, 0.0, announce_port=0)


def test_read_only_askers_are_answered_but_not_added() -> None:
    n = node()
    assert ask(n, Ping(b"p", b"T" * 20, read_only=True)) == Response(b"p", n.id)
    assert len(n.table) == 0
    assert ask(n, Ping(b"q", b"T" * 20)) == Response(b"q", n.id)
    assert len(n.table) == 1


# -- nodes named by peers' BEP 5 port messages (Node.introduced) -----------------------


def test_a_node_a_peer_names_is_pinged_and_enters_the_table_only_when_it_answers() -> None:
    n = node()
    named = ("10.0.9.1", 6881)
    outcome, out = n.introduced(named, 0.0)
    assert outcome == "pinged"
    ((data, to),) = out
    ping = krpc.decode(data)
    assert to == named and isinstance(ping, Ping) and ping.id == n.id
    assert len(n.table) == 0  # not trusted as it came
    them = b"N" * 20
    assert n.datagram_received(krpc.encode(Response(ping.tid, them)), named, 1.0) == []
    entry = n.table.get(them)
    assert entry is not None and entry.addr == named and entry.last_response == 1.0
    assert n.introduced(named, 2.0) == ("known", [])  # in the table: nothing to ask


def test_a_named_node_that_never_answers_stays_out_and_is_not_asked_again_soon() -> None:
    n = node()
    named = ("10.0.9.2", 6881)
    assert n.introduced(named, 0.0)[0] == "pinged"
    assert n.timers(10.0) == []  # the ping timed out
    assert len(n.table) == 0
    assert n.introduced(named, 20.0) == ("asked_lately", [])
    assert n.introduced(named, 700.0)[0] == "pinged"  # INTRODUCED_AGAIN later: once more


@pytest.mark.parametrize(
    "addr",
    [("10.0.9.3", 0), ME, ("::1", 6881), ("224.0.0.1", 6881), ("0.0.0.0", 6881), ("x", 1)],
    ids=["port 0", "our own address", "other family", "multicast", "unspecified", "no IP"],
)
def test_unusable_named_nodes_are_not_pinged(addr: tuple[str, int]) -> None:
    n = node()
    assert n.introduced(addr, 0.0) == ("unusable", [])
    assert n.introductions == {"unusable": 1}


def test_a_flood_of_named_nodes_is_pinged_at_a_capped_rate() -> None:
    """Peers naming 1,000 nodes in one second cost INTRODUCED_BURST pings, then one a
    second: the DHT cannot be made to ping a victim at the peers' rate."""
    from mptorrent.proto.dht.node import INTRODUCED_BURST, INTRODUCED_RATE, MAX_INTRODUCED

    n = node()
    sent = 0
    for i in range(1000):
        outcome, out = n.introduced((f"10.2.{i // 250}.{i % 250 + 1}", 6881), i / 1000)
        sent += len(out)
        assert outcome in ("pinged", "over_rate")
    assert sent == INTRODUCED_BURST  # the burst; the next token comes a second after it
    assert n.introductions["over_rate"] == 1000 - sent
    later = [n.introduced((f"10.3.0.{i + 1}", 6881), 10.0 + i / 10)[0] for i in range(50)]
    assert later.count("pinged") <= INTRODUCED_BURST + 5 * INTRODUCED_RATE + 1
    # what it remembers is bounded
    for i in range(3 * MAX_INTRODUCED):
        n.introduced((f"10.4.{i // 250}.{i % 250 + 1}", 6881), 1000.0 + i)
    assert len(n._introduced) <= MAX_INTRODUCED


def test_named_nodes_wait_when_every_query_slot_is_taken() -> None:
    from mptorrent.proto.dht.node import MAX_PENDING

    n = node()
    for i in range(MAX_PENDING):
        n.ping((f"10.5.{i // 250}.{i % 250 + 1}", 6881), 0.0)
    assert n.introduced(("10.6.0.1", 6881), 0.0) == ("busy", [])
