"""The picker is pure policy: tested with small fixtures, no processes."""

from __future__ import annotations

from mptorrent.picker import DONE, NEEDED, QUEUED, RANDOM_FIRST, TAKEN, Picker


def bits(s: str) -> bytes:
    """'1101' -> one byte per piece."""
    return bytes(1 if c == "1" else 0 for c in s)


def test_nothing_is_picked_that_no_peer_has() -> None:
    p = Picker(4, seed=1)
    assert p.pick(10) == []
    p.peer_bitfield("a", bits("0100"))
    assert p.pick(10) == [1]


def test_rarest_first_after_the_random_start() -> None:
    p = Picker(10, seed=2)
    p.peer_bitfield("a", bits("1111111111"))
    p.peer_bitfield("b", bits("1111111110"))
    p.peer_bitfield("c", bits("1111111100"))
    first = p.pick(RANDOM_FIRST)
    assert len(first) == RANDOM_FIRST
    rest = [i for i in range(10) if i not in first]
    order = p.pick(10)
    assert sorted(order) == rest
    avail = [p.availability[i] for i in order]
    assert avail == sorted(avail)  # rarest first


def test_have_pieces_are_done_and_never_picked() -> None:
    p = Picker(4, bits("1010"), seed=3)
    p.peer_bitfield("a", bits("1111"))
    assert sorted(p.pick(10)) == [1, 3]
    assert p.remaining == 2


def test_lease_lifecycle_and_release_on_failure() -> None:
    p = Picker(3, seed=4)
    p.peer_bitfield("a", bits("111"))
    picked = p.pick(1)
    (i,) = picked
    assert p.state[i] == QUEUED
    p.took(i, worker=0)
    assert p.state[i] == TAKEN
    p.release(i, worker=0)  # hash failure or hand-back
    assert p.state[i] == NEEDED
    assert i in p.pick(3)
    p.took(i, 1)
    assert p.finished(i) is True
    assert p.state[i] == DONE
    assert p.finished(i) is False  # an endgame duplicate does not count twice


def test_release_keeps_a_piece_another_worker_still_holds() -> None:
    p = Picker(1, seed=5)
    p.peer_bitfield("a", bits("1"))
    p.pick(1)
    p.took(0, 0)
    p.took(0, 1)  # endgame duplicate
    p.release(0, 0)
    assert p.state[0] == TAKEN
    p.release(0, 1)
    assert p.state[0] == NEEDED


def test_worker_death_releases_its_pieces_only() -> None:
    p = Picker(4, seed=6)
    p.peer_bitfield("a", bits("1111"))
    got = p.pick(4)
    p.took(got[0], 0)
    p.took(got[1], 1)
    p.release_worker(0)
    assert p.state[got[0]] == NEEDED
    assert p.state[got[1]] == TAKEN


def test_release_all_keeps_done_pieces() -> None:
    p = Picker(3, seed=7)
    p.peer_bitfield("a", bits("111"))
    for i in p.pick(3):
        p.took(i, 0)
    p.finished(0)
    p.release_all()
    assert [p.state[i] for i in range(3)] == [DONE, NEEDED, NEEDED]


def test_peer_leaving_lowers_availability() -> None:
    p = Picker(2, seed=8)
    p.peer_bitfield("a", bits("11"))
    p.peer_have("b", 1)
    assert p.availability == [1, 2]
    p.peer_bitfield("a", None)
    assert p.availability == [0, 1]
    assert p.pick(5) == [1]


def test_endgame_offers_only_pieces_in_flight() -> None:
    p = Picker(3, seed=9)
    p.peer_bitfield("a", bits("111"))
    for i in p.pick(3):
        p.took(i, 0)
    p.finished(1)
    assert sorted(p.endgame_pick(5)) == [0, 2]
    assert p.needed_available == 0
