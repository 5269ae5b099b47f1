"""mptorrent.proto.dht.routing: XOR distance, k-buckets, node states, replacement, refresh.

Hostile inputs are rows of tests/adversarial/README.md table J.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mptorrent.proto.dht.krpc import NodeInfo
from mptorrent.proto.dht.routing import (
    GOOD_FOR,
    REFRESH_AFTER,
    BadSavedTable,
    K,
    NodeState,
    RoutingTable,
    distance,
    id_int,
    load_saved,
    random_id,
)

OWN = bytes(20)  # our id: all zeros, so an id's distance is its value


def nid(value: int) -> bytes:
    return value.to_bytes(20, "big")


def addr(i: int) -> tuple[str, int]:
    return (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 6881)


def test_distance_is_xor() -> None:
    assert distance(nid(0b1100), nid(0b1010)) == 0b0110
    assert distance(OWN, OWN) == 0
    assert id_int(b"\xff" * 20) == (1 << 160) - 1


@given(
    st.binary(min_size=20, max_size=20),
    st.binary(min_size=20, max_size=20),
    st.binary(min_size=20, max_size=20),
)
def test_distance_is_a_metric(a: bytes, b: bytes, c: bytes) -> None:
    assert distance(a, b) == distance(b, a)
    assert (distance(a, b) == 0) == (a == b)
    assert distance(a, c) <= distance(a, b) + distance(b, c)


def test_refuses_port_zero_own_id_and_own_address() -> None:
    """K5: port 0, our own id and our own address never enter the table."""
    t = RoutingTable(OWN, own_addrs=frozenset({"10.9.9.9"}))
    assert t.heard_from(nid(5), ("10.0.0.1", 0), 0.0, responded=True) == "rejected"
    assert t.heard_from(OWN, ("10.0.0.1", 1), 0.0, responded=True) == "rejected"
    assert t.heard_from(nid(5), ("10.9.9.9", 6881), 0.0, responded=True) == "rejected"
    assert t.heard_from(nid(5), ("224.0.0.1", 6881), 0.0, responded=True) == "rejected"
    assert t.heard_from(nid(5), ("0.0.0.0", 6881), 0.0, responded=True) == "rejected"
    assert t.heard_from(b"short", ("10.0.0.1", 1), 0.0, responded=True) == "rejected"
    assert len(t) == 0
    assert t.heard_from(nid(5), ("10.0.0.1", 1), 0.0, responded=True) == "added"


def test_buckets_split_only_around_our_own_id() -> None:
    t = RoutingTable(OWN)
    # 8 far nodes fill the single bucket; the 9th far one splits it (it covers our id),
    # and the far half then refuses newcomers into its cache.
    far = [nid((1 << 159) + i) for i in range(K + 3)]
    for i, f in enumerate(far):
        t.heard_from(f, addr(i), 1.0, responded=True)
    assert len(t.buckets) == 2
    high = t.buckets[1]
    assert high.lo == 1 << 159 and len(high.nodes) == K and len(high.replacements) == 3
    # near nodes keep splitting the bucket that holds our id
    for i in range(1, 40):
        t.heard_from(nid(i), addr(1000 + i), 1.0, responded=True)
    assert all(len(b.nodes) <= K for b in t.buckets)
    assert sum(b.covers(0) for b in t.buckets) == 1
    assert len(t) == sum(len(b.nodes) for b in t.buckets)


def test_node_states_follow_bep5() -> None:
    t = RoutingTable(OWN)
    t.heard_from(nid(7), addr(7), 100.0, responded=True)
    e = t.get(nid(7))
    assert e is not None
    assert e.state(100.0 + GOOD_FOR - 1) is NodeState.GOOD
    assert e.state(100.0 + GOOD_FOR) is NodeState.QUESTIONABLE
    # a query from a node that has answered once keeps it good
    t.heard_from(nid(7), addr(7), 100.0 + GOOD_FOR, responded=False)
    assert e.state(100.0 + GOOD_FOR + 1) is NodeState.GOOD
    # a node that only ever queried us is questionable
    t.heard_from(nid(8), addr(8), 100.0, responded=False)
    e8 = t.get(nid(8))
    assert e8 is not None and e8.state(100.0) is NodeState.QUESTIONABLE
    # two failed queries in a row make it bad; an answer clears the count
    t.failed(addr(7), 200.0)
    assert e.state(200.0) is NodeState.GOOD
    t.heard_from(nid(7), addr(7), 201.0, responded=True)
    t.failed(addr(7), 202.0)
    t.failed(addr(7), 203.0)
    assert e.state(203.0) is NodeState.BAD
    assert nid(7) not in {n.id for n in t.closest(nid(7), 8)}


def _full_far_bucket(t: RoutingTable, now: float) -> list[bytes]:
    far = [nid((1 << 159) + i) for i in range(K)]
    for i, f in enumerate(far):
        t.heard_from(f, addr(i), now, responded=True)
    t.heard_from(nid(1), addr(500), now, responded=True)  # a near node splits the root
    return far


def test_a_bad_node_is_replaced_from_the_cache() -> None:
    t = RoutingTable(OWN)
    far = _full_far_bucket(t, 0.0)
    newcomer = nid((1 << 159) + 100)
    assert t.heard_from(newcomer, addr(100), 1.0, responded=True) == "cached"
    assert t.get(newcomer) is None
    t.failed(addr(3), 2.0)
    t.failed(addr(3), 3.0)
    assert t.get(far[3]) is None and t.get(newcomer) is not None


def test_a_newcomer_takes_a_bad_nodes_place_directly() -> None:
    t = RoutingTable(OWN)
    far = _full_far_bucket(t, 0.0)
    t.failed(addr(2), 1.0)
    t.failed(addr(2), 1.0)  # bad, but the cache was empty: it stays until someone comes
    assert t.get(far[2]) is not None
    assert t.heard_from(nid((1 << 159) + 50), addr(50), 2.0, responded=True) == "added"
    assert t.get(far[2]) is None


def test_questionable_nodes_of_full_buckets_are_pinged() -> None:
    t = RoutingTable(OWN)
    far = _full_far_bucket(t, 0.0)
    t.heard_from(nid((1 << 159) + 100), addr(100), 1.0, responded=True)
    assert t.questionable_to_ping(10.0) == []  # all good
    later = GOOD_FOR + 5
    for i, f in enumerate(far[1:], 1):
        t.heard_from(f, addr(i), later, responded=True)
    assert t.questionable_to_ping(later) == [NodeInfo(far[0], addr(0))]


def test_an_id_at_a_new_address_does_not_displace_a_live_node() -> None:
    t = RoutingTable(OWN)
    t.heard_from(nid(9), addr(9), 0.0, responded=True)
    assert t.heard_from(nid(9), addr(10), 1.0, responded=True) == "rejected"
    assert t.heard_from(nid(11), addr(9), 1.0, responded=True) == "rejected"
    e = t.get(nid(9))
    assert e is not None and e.addr == addr(9)
    t.failed(addr(9), 2.0)
    t.failed(addr(9), 3.0)
    assert t.heard_from(nid(9), addr(10), 4.0, responded=True) == "added"


def test_refresh_is_due_after_15_minutes_with_a_target_in_the_bucket() -> None:
    t = RoutingTable(OWN, now=0.0)
    _full_far_bucket(t, 0.0)
    rng = random.Random(1)
    assert t.refresh_due(REFRESH_AFTER - 1, rng) == []
    t.heard_from(nid(2), addr(600), 100.0, responded=True)  # the near bucket changed at 100
    due = t.refresh_due(REFRESH_AFTER, rng)
    assert len(due) == 1 and t.buckets[-1].covers(id_int(due[0]))
    assert t.next_refresh() == 100.0 + REFRESH_AFTER


def test_closest_sorts_by_distance_and_filters_family() -> None:
    t = RoutingTable(OWN)
    rng = random.Random(2)
    t.heard_from(random_id(rng), ("2001:db8::1", 1), 0.0, responded=True)
    ids = [random_id(rng) for _ in range(200)]
    for i, n in enumerate(ids):
        t.heard_from(n, addr(i), 0.0, responded=True)
    target = random_id(rng)
    got = t.closest(target, 8, family=4)
    dists = [distance(n.id, target) for n in got]
    assert dists == sorted(dists) and len(got) == 8
    kept = {e.id for e in t.entries()}
    assert [n.id for n in got] == sorted(kept & set(ids), key=lambda i: distance(i, target))[:8]
    assert [n.addr for n in t.closest(target, 8, family=6)] == [("2001:db8::1", 1)]


def test_save_and_load_round_trip() -> None:
    t = RoutingTable(OWN)
    rng = random.Random(3)
    for i in range(50):
        t.heard_from(random_id(rng), addr(i), 0.0, responded=True)
    t.heard_from(random_id(rng), ("2001:db8::5", 7), 0.0, responded=True)
    own, nodes = load_saved(t.save())
    assert own == OWN
    assert {(n.id, n.addr) for n in nodes} == {(e.id, e.addr) for e in t.entries()}
    fresh = RoutingTable(own)
    for n in nodes:
        fresh.add_unverified(n, 0.0)
    assert {e.id for e in fresh.entries()} == {e.id for e in t.entries()}
    assert all(e.state(0.0) is NodeState.QUESTIONABLE for e in fresh.entries())


@pytest.mark.parametrize(
    "data", [b"", b"garbage", b"le", b"d2:id3:abce", b"d2:id20:" + bytes(20) + b"5:nodes3:abce"]
)
def test_load_refuses_what_is_not_a_saved_table(data: bytes) -> None:
    with pytest.raises(BadSavedTable, match="not a saved DHT table"):
        load_saved(data)


ops = st.lists(
    st.tuples(
        st.sampled_from(["heard", "queried", "failed"]), st.integers(0, 63), st.integers(0, 40)
    ),
    max_size=300,
)


@given(ops, st.binary(min_size=20, max_size=20))
def test_table_invariants_hold_under_any_sequence(
    seq: list[tuple[str, int, int]], own: bytes
) -> None:
    """Buckets tile the id space, hold at most K nodes each, every node sits in its bucket,
    and the two indexes agree; our own id never enters."""
    t = RoutingTable(own)
    rng = random.Random(0)
    pool = [random_id(rng) for _ in range(48)] + [own[:19] + bytes([i]) for i in range(16)]
    now = 0.0
    for op, who, dt in seq:
        now += dt
        node_id, where = pool[who], addr(who % 40)  # some ids share an address
        if op == "failed":
            t.failed(where, now)
        else:
            t.heard_from(node_id, where, now, responded=op == "heard")
    assert t.buckets[0].lo == 0 and t.buckets[-1].hi == 1 << 160
    assert all(a.hi == b.lo for a, b in zip(t.buckets, t.buckets[1:], strict=False))
    entries = t.entries()
    assert all(len(b.nodes) <= K and len(b.replacements) <= K for b in t.buckets)
    assert all(b.covers(id_int(e.id)) for b in t.buckets for e in b.nodes + b.replacements)
    assert len(entries) == len(t) == len({e.id for e in entries}) == len({e.addr for e in entries})
    assert own not in {e.id for e in entries}


def test_a_move_onto_another_nodes_address_needs_both_to_be_bad() -> None:
    t = RoutingTable(OWN)
    t.heard_from(nid(1), addr(1), 0.0, responded=True)
    t.heard_from(nid(2), addr(2), 0.0, responded=True)
    for _ in range(2):
        t.failed(addr(1), 1.0)
    assert t.heard_from(nid(1), addr(2), 2.0, responded=True) == "rejected"  # 2 is alive
    for _ in range(2):
        t.failed(addr(2), 3.0)
    assert t.heard_from(nid(1), addr(2), 4.0, responded=True) == "added"
    assert [(e.id, e.addr) for e in t.entries()] == [(nid(1), addr(2))]
    assert t.get(nid(2)) is None
