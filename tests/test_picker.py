"""The picker is pure policy: tested with small fixtures, no processes."""

from __future__ import annotations

from mptorrent.policy.picker import DONE, NEEDED, RANDOM_FIRST, TAKEN, Picker, Priority


def bits(s: str) -> bytes:
    """'1101' -> one byte per piece."""
    return bytes(1 if c == "1" else 0 for c in s)


def test_nothing_is_handed_out_that_no_peer_of_the_worker_has() -> None:
    p = Picker(4, seed=1)
    assert p.pick_for(0, 10) == []
    p.peer_bitfield("a", bits("0100"), worker=0)
    assert p.pick_for(0, 10) == [1]
    assert p.state[1] == TAKEN


def test_each_worker_gets_only_what_its_own_peers_have() -> None:
    p = Picker(4, seed=10)
    p.peer_bitfield("a", bits("1100"), worker=0)
    p.peer_bitfield("b", bits("0011"), worker=1)
    assert sorted(p.pick_for(1, 10)) == [2, 3]
    assert sorted(p.pick_for(0, 10)) == [0, 1]


def test_rarest_first_after_the_random_start() -> None:
    p = Picker(10, seed=2)
    p.peer_bitfield("a", bits("1111111111"), worker=0)
    p.peer_bitfield("b", bits("1111111110"), worker=0)
    p.peer_bitfield("c", bits("1111111100"), worker=0)
    first = p.pick_for(0, RANDOM_FIRST)
    assert len(first) == RANDOM_FIRST
    rest = [i for i in range(10) if i not in first]
    order = p.pick_for(0, 10)
    assert sorted(order) == rest
    avail = [p.availability[i] for i in order]
    assert avail == sorted(avail)  # rarest first


def test_have_pieces_are_done_and_never_picked() -> None:
    p = Picker(4, bits("1010"), seed=3)
    p.peer_bitfield("a", bits("1111"), worker=0)
    assert sorted(p.pick_for(0, 10)) == [1, 3]
    assert p.remaining == 2


def test_lease_lifecycle_and_release_on_failure() -> None:
    p = Picker(3, seed=4)
    p.peer_bitfield("a", bits("111"), worker=0)
    (i,) = p.pick_for(0, 1)
    assert p.owner[i] == {0}
    p.release(i, worker=0)  # hash failure or hand-back
    assert p.state[i] == NEEDED
    assert i in p.pick_for(0, 3)
    assert p.finished(i) is True
    assert p.state[i] == DONE
    assert p.finished(i) is False  # an endgame duplicate does not count twice


def test_release_keeps_a_piece_another_worker_still_holds() -> None:
    p = Picker(1, seed=5)
    p.peer_bitfield("a", bits("1"), worker=0)
    p.peer_bitfield("b", bits("1"), worker=1)
    assert p.pick_for(0, 1) == [0]
    assert p.endgame_for(1, 1) == [0]  # duplicated to the idle worker
    assert p.knows(1) and not p.knows(2)  # worker 2 has heard from no peer: nothing to hand
    p.release(0, 0)
    assert p.state[0] == TAKEN
    p.release(0, 1)
    assert p.state[0] == NEEDED


def test_worker_death_releases_its_pieces_and_forgets_its_peers() -> None:
    p = Picker(4, seed=6)
    p.peer_bitfield("a", bits("1100"), worker=0)
    p.peer_bitfield("b", bits("0011"), worker=1)
    got0 = p.pick_for(0, 4)
    got1 = p.pick_for(1, 4)
    p.forget_worker(0, ["a"])
    p.release_worker(0)
    assert all(p.state[i] == NEEDED for i in got0)
    assert all(p.state[i] == TAKEN for i in got1)
    assert p.availability == [0, 0, 1, 1]
    assert p.pick_for(0, 4) == []


def test_release_all_keeps_done_pieces() -> None:
    p = Picker(3, seed=7)
    p.peer_bitfield("a", bits("111"), worker=0)
    p.pick_for(0, 3)
    p.finished(0)
    p.release_all()
    assert [p.state[i] for i in range(3)] == [DONE, NEEDED, NEEDED]


def test_peer_leaving_lowers_availability() -> None:
    p = Picker(2, seed=8)
    p.peer_bitfield("a", bits("11"), worker=0)
    p.peer_have("b", 1, worker=0)
    assert p.availability == [1, 2]
    p.peer_bitfield("a", None, worker=0)
    assert p.availability == [0, 1]
    assert p.pick_for(0, 5) == [1]


def test_endgame_offers_only_pieces_in_flight_elsewhere() -> None:
    p = Picker(3, seed=9)
    p.peer_bitfield("a", bits("111"), worker=0)
    p.peer_bitfield("b", bits("111"), worker=1)
    p.pick_for(0, 3)
    p.finished(1)
    assert not p.needed_for(1)
    assert sorted(p.endgame_for(1, 5)) == [0, 2]
    assert p.endgame_for(1, 5) == []  # already its own


def test_endgame_a_third_worker_only_once_every_piece_has_two() -> None:
    """The tail at -j 8 (benchmarks/wan.py partial): a piece held by a worker whose peers
    are slow and by one whose only peer with it is slow too goes to a third idle worker,
    but only once no piece is held by one worker alone."""
    p = Picker(2, seed=9)
    for w in range(3):
        p.peer_bitfield(("peer", w), bits("11"), worker=w)
    p.pick_for(0, 2)
    assert sorted(p.endgame_for(1, 1) + p.endgame_for(1, 1)) == [0, 1]  # one at a time
    assert p.endgame_for(1, 1) == []
    assert p.endgame_for(2, 1) != []  # every piece has two holders: a third
    assert p.owner[0] | p.owner[1] == {0, 1, 2}


# -- priorities (issue 16): one mechanism for --only and --sequential ---------------------


def test_skipped_pieces_are_never_picked_and_do_not_count() -> None:
    p = Picker(6, seed=5, priority=bytes([1, 0, 1, 0, 0, 1]))
    assert p.remaining == 3
    p.peer_bitfield("a", bits("111111"), worker=0)
    got = p.pick_for(0, 10)
    assert sorted(got) == [0, 2, 5]
    for i in got:
        p.finished(i)
    assert p.remaining == 0
    assert not p.needed_for(0)
    assert p.endgame_for(0, 5) == []


def test_a_piece_skipped_later_leaves_the_order_and_one_wanted_later_joins_it() -> None:
    p = Picker(4, seed=6, priority=bytes([1, 1, 0, 1]))
    p.peer_bitfield("a", bits("1111"), worker=0)
    p.set_priority(1, Priority.SKIP)  # after the order was built: the scan still skips it
    p.set_priority(2, Priority.NORMAL)
    assert p.remaining == 3
    assert sorted(p.pick_for(0, 10)) == [0, 2, 3]


def test_raised_pieces_go_first_deadline_before_high_rarest_first_within() -> None:
    p = Picker(8, seed=7)
    p.peer_bitfield("a", bits("11111111"), worker=0)
    p.peer_bitfield("b", bits("11111100"), worker=0)  # 6 and 7 are rarer
    p.set_priority(2, Priority.HIGH)
    p.set_priority(6, Priority.HIGH)
    p.set_priority(4, Priority.DEADLINE)
    assert p.pick_for(0, 3) == [4, 6, 2]
    assert p.remaining == 8  # raising a piece does not change what is wanted


def test_sequential_window_slides_as_pieces_complete() -> None:
    p = Picker(10, seed=8, sequential=True, window=3)
    assert [p.priority[i] for i in range(5)] == [
        Priority.DEADLINE, Priority.DEADLINE, Priority.HIGH, Priority.NORMAL, Priority.NORMAL
    ]  # fmt: skip
    p.peer_bitfield("a", bits("1111111111"), worker=0)
    p.peer_bitfield("b", bits("0111111111"), worker=0)  # 0 is rarer: still first (deadline)
    assert p.pick_for(0, 5) == [0, 1, 2, 3, 4]  # window, then the rest in order
    p.finished(1)  # out of order: the head (0) has not moved
    assert p.priority[3] == Priority.NORMAL
    p.finished(0)
    assert p.priority[2] == Priority.DEADLINE and p.priority[3] == Priority.DEADLINE
    assert p.priority[4] == Priority.HIGH and p.priority[5] == Priority.NORMAL


def test_sequential_window_skips_unwanted_pieces() -> None:
    prio = bytes([0, 0, 0, 1, 1, 1, 1, 0])
    p = Picker(8, seed=9, priority=prio, sequential=True, window=2)
    assert p.priority[3] == Priority.DEADLINE and p.priority[4] == Priority.DEADLINE
    assert p.priority[5] == Priority.NORMAL and p.priority[0] == Priority.SKIP
    p.peer_bitfield("a", bits("11111111"), worker=0)
    assert p.pick_for(0, 10) == [3, 4, 5, 6]


def test_endgame_duplicates_raised_pieces_first() -> None:
    p = Picker(6, seed=10)
    p.peer_bitfield("a", bits("111111"), worker=0)
    p.peer_bitfield("b", bits("111111"), worker=1)
    assert len(p.pick_for(0, 6)) == 6
    p.set_priority(5, Priority.DEADLINE)
    assert p.endgame_for(1, 1) == [5]
