"""Tests for mptorrent.proto.ledger: the geometry check and the request ledger, alone.

The connection-level behaviour (what goes on the wire) is in tests/test_wire.py;
here the ledger is driven directly, as a plain data structure.
"""

from __future__ import annotations

import pytest

from mptorrent.proto.ledger import (
    BLOCK_SIZE,
    MAX_CANCELLED,
    MAX_PEER_REQUESTS,
    MAX_UNWANTED_BYTES,
    Geometry,
    RequestLedger,
)
from mptorrent.proto.wire_errors import LocalProtocolError

K1, K2, K3 = (0, 0, BLOCK_SIZE), (0, BLOCK_SIZE, BLOCK_SIZE), (1, 0, 100)


@pytest.mark.parametrize(
    ("n", "size", "total"),
    [(0, 10, 0), (1, 0, 1), (2, 10, 10), (2, 10, 21), (1, 10, 0), (-1, 10, 5)],
)
def test_geometry_refuses_what_is_not_a_torrent(n: int, size: int, total: int) -> None:
    with pytest.raises(LocalProtocolError):
        Geometry(n, size, total)


def test_geometry_derived_values_and_block_edges() -> None:
    g = Geometry(3, 2 * BLOCK_SIZE, 2 * 2 * BLOCK_SIZE + 100)
    assert (g.last_piece, g.last_piece_size, g.bitfield_bytes) == (2, 100, 1)
    assert g == Geometry(3, 2 * BLOCK_SIZE, 2 * 2 * BLOCK_SIZE + 100)
    assert g.block_ok(0, BLOCK_SIZE, BLOCK_SIZE)
    assert not g.block_ok(0, BLOCK_SIZE + 1, BLOCK_SIZE)  # past the piece
    assert not g.block_ok(0, 0, BLOCK_SIZE + 1)  # over the block size
    assert not g.block_ok(0, 0, 0)
    assert g.block_ok(2, 0, 100) and g.block_ok(2, 99, 1)
    assert not g.block_ok(2, 0, 101)  # the short last piece
    assert not g.block_ok(3, 0, 1)  # no such piece
    assert Geometry(9, 1, 9).bitfield_bytes == 2


def test_record_is_all_or_nothing_and_oldest_first() -> None:
    ledger = RequestLedger()
    ledger.record([K1, K2])
    with pytest.raises(LocalProtocolError, match="already requested"):
        ledger.record([K3, K1])
    with pytest.raises(LocalProtocolError, match="twice"):
        ledger.record([K3, K3])
    assert ledger.requested() == [K1, K2]
    ledger.record([])
    assert ledger.requested() == [K1, K2]


def test_cancel_makes_a_late_block_quiet_once() -> None:
    ledger = RequestLedger()
    ledger.record([K1])
    assert ledger.cancel(K1)
    assert not ledger.cancel(K1)  # not outstanding any more: nothing to remember
    assert ledger.requested() == []
    assert ledger.late(K1)
    assert not ledger.late(K1)  # a second copy is unrequested


def test_re_requesting_forgets_the_cancel() -> None:
    ledger = RequestLedger()
    ledger.record([K1])
    ledger.cancel(K1)
    ledger.record([K1])
    assert not ledger.late(K1)
    assert ledger.requested() == [K1]


def test_a_choke_loses_requests_until_clear_hands_them_back() -> None:
    ledger = RequestLedger()
    ledger.record([K1, K2])
    ledger.choked()
    assert ledger.requested() == []
    ledger.record([K3])  # asked again after an unchoke
    assert ledger.clear() == [K1, K2, K3]  # lost ones first, then outstanding
    assert ledger.clear() == []
    assert all(ledger.late(k) for k in (K1, K2, K3))


def test_re_requesting_a_lost_block_hands_it_back_once() -> None:
    ledger = RequestLedger()
    ledger.record([K1])
    ledger.choked()
    ledger.record([K1])
    assert ledger.clear() == [K1]


def test_cancelled_set_is_bounded_oldest_forgotten() -> None:
    ledger = RequestLedger()
    keys = [(i, 0, 1) for i in range(MAX_CANCELLED + 10)]
    ledger.record(keys)
    ledger.cancel_all()
    assert len(ledger.cancelled) == MAX_CANCELLED
    assert not ledger.late(keys[0]) and ledger.late(keys[-1])


def test_unwanted_bytes_count_up_to_the_limit() -> None:
    ledger = RequestLedger()
    assert not ledger.unwanted(MAX_UNWANTED_BYTES)
    assert ledger.unwanted(1)
    assert ledger.unwanted_bytes == MAX_UNWANTED_BYTES + 1


def test_peer_requests_are_bounded_and_settled() -> None:
    ledger = RequestLedger()
    for i in range(MAX_PEER_REQUESTS + 5):
        ledger.peer_requested((i, 0, 1))
    assert len(ledger.peer_requests) == MAX_PEER_REQUESTS
    assert (0, 0, 1) not in ledger.peer_requests and (5, 0, 1) in ledger.peer_requests
    ledger.peer_settled((5, 0, 1))
    ledger.peer_settled((5, 0, 1))  # twice is harmless (a cancel after the block)
    assert (5, 0, 1) not in ledger.peer_requests
    ledger.peer_requests_dropped()
    assert not ledger.peer_requests


def test_outstanding_dict_is_never_replaced() -> None:
    # Connection's receive fast path keeps a reference to it.
    ledger = RequestLedger()
    outstanding = ledger.outstanding
    ledger.record([K1, K2])
    ledger.choked()
    ledger.record([K3])
    ledger.clear()
    ledger.cancel_all()
    assert ledger.outstanding is outstanding
