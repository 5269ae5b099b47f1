"""policy/peertable.py: the capped table of known peers, whom to dial first, whom to forget."""

from __future__ import annotations

import pytest

from mptorrent.messages import PeerAddr
from mptorrent.policy.peertable import MAX_FAILURES, RETRY_AFTER, PeerTable


def addr(i: int) -> PeerAddr:
    return PeerAddr(f"127.0.1.{i}", 6881)


def test_new_peers_are_dialled_in_arrival_order_before_known_ones() -> None:
    t: PeerTable[PeerAddr] = PeerTable()
    for i in range(1, 4):
        assert t.add(addr(i), 0.0)
    assert not t.add(addr(2), 1.0)  # heard of again: not new
    t.connected(addr(1), 1.0)
    t.closed(addr(1), 2.0, useful=True)
    assert t.candidates(10, 3.0) == [addr(2), addr(3), addr(1)]


def test_recently_good_before_failed() -> None:
    t: PeerTable[PeerAddr] = PeerTable()
    for i in range(1, 5):
        t.add(addr(i), 0.0)
    t.failed(addr(1), 0.0)
    t.connected(addr(2), 1.0)
    t.closed(addr(2), 5.0, useful=True)
    t.connected(addr(3), 1.0)
    t.closed(addr(3), 8.0, useful=True)
    t.connected(addr(4), 1.0)  # connected now: never offered
    now = RETRY_AFTER + 1
    assert t.candidates(10, now) == [addr(3), addr(2), addr(1)]
    assert t.candidates(2, now) == [addr(3), addr(2)]
    assert t.candidates(10, now, exclude={addr(3)}) == [addr(2), addr(1)]


def test_failed_peers_back_off_and_are_given_up() -> None:
    t: PeerTable[PeerAddr] = PeerTable()
    t.add(addr(1), 0.0)
    t.failed(addr(1), 0.0)
    assert t.candidates(1, RETRY_AFTER - 1) == []
    assert t.candidates(1, RETRY_AFTER) == [addr(1)]
    t.failed(addr(1), RETRY_AFTER)
    assert t.candidates(1, RETRY_AFTER * 2.5) == []  # the back-off doubled
    assert t.candidates(1, RETRY_AFTER * 3) == [addr(1)]
    for _ in range(MAX_FAILURES):
        t.failed(addr(1), 0.0)
    assert t.candidates(1, 1e9) == []
    t.ban(addr(1))
    assert t.candidates(1, 1e9) == []


def test_a_useless_connection_counts_as_a_failure() -> None:
    t: PeerTable[PeerAddr] = PeerTable()
    t.add(addr(1), 0.0)
    t.connected(addr(1), 0.0)
    t.closed(addr(1), 1.0, useful=False)
    assert t.peers[addr(1)].failures == 1


def test_a_full_table_forgets_the_worst() -> None:
    t: PeerTable[PeerAddr] = PeerTable(capacity=3)
    t.add(addr(1), 0.0)
    t.add(addr(2), 1.0)
    t.add(addr(3), 2.0)
    t.failed(addr(2), 3.0)
    assert t.add(addr(4), 4.0)  # the one that failed goes
    assert addr(2) not in t and len(t) == 3
    assert t.add(addr(5), 5.0)  # then the longest unheard of
    assert addr(1) not in t
    t.ban(addr(3))
    assert t.add(addr(6), 6.0)  # a banned one before any other
    assert addr(3) not in t


def test_a_full_table_of_connected_peers_takes_no_more() -> None:
    t: PeerTable[PeerAddr] = PeerTable(capacity=2)
    for i in (1, 2):
        t.add(addr(i), 0.0)
        t.connected(addr(i), 0.0)
    assert not t.add(addr(3), 1.0)
    assert addr(3) not in t and len(t) == 2


def test_the_default_cap_holds_for_a_huge_swarm() -> None:
    t: PeerTable[PeerAddr] = PeerTable()
    for i in range(20_000):
        t.add(PeerAddr(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 6881), float(i))
    assert 2700 <= len(t) <= 3000  # a tenth is forgotten at once when it is full
    assert len(t.candidates(200, 1e6)) == 200


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PeerTable(0)


def test_a_worker_dials_new_peers_then_good_ones_then_failed_ones() -> None:
    from mptorrent.worker.process import _dial_order, _Retry

    retry = {
        addr(1): _Retry(attempts=3, failures=2),  # failed twice in a row
        addr(2): _Retry(),  # never tried
        addr(3): _Retry(attempts=1, failures=0),  # delivered, then left
        addr(4): _Retry(attempts=1, failures=1),
        addr(5): _Retry(),
    }
    order = [a for a, _ in sorted(retry.items(), key=_dial_order)]
    assert order == [addr(2), addr(5), addr(3), addr(4), addr(1)]
