"""The picker is pure policy: tested with small fixtures, no processes."""

from __future__ import annotations

import random

import pytest

from mptorrent.policy.picker import DONE, NEEDED, RANDOM_FIRST, TAKEN, Picker, Priority
from mptorrent.proto import bitfield


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


def test_endgame_of_slow_workers_offers_only_the_pieces_they_alone_hold() -> None:
    """The coordinator's hurry (an idle fast worker fetches a slow worker's pieces, started
    ones too): ``of`` keeps pieces every holder of which is slow; a piece a fast worker
    also holds is on its way already."""
    p = Picker(6, seed=9)
    for w in range(4):
        p.peer_bitfield(("peer", w), bits("111111"), worker=w)
    assert sorted(p.pick_for(0, 2) + p.pick_for(1, 2) + p.pick_for(2, 2)) == list(range(6))
    fast = 3
    held = {w: [i for i, o in p.owner.items() if o == {w}] for w in range(3)}
    assert sorted(p.endgame_for(fast, 9, of={1})) == sorted(held[1])
    assert p.endgame_for(fast, 9, of={1}) == []  # already its own
    both = held[2][0]
    p.took(both, 0)  # a fast worker holds it too: not for the hurry
    assert p.endgame_for(fast, 9, of={1, 2}) == [held[2][1]]
    assert sorted(p.endgame_for(fast, 9, of={0, 2})) == sorted(held[0])  # one holder first
    assert p.endgame_for(fast, 9, of={0, 2}) == [both]  # held by 0 and 2 only: a third copy
    assert p.owner[both] == {0, 2, fast}
    assert p.endgame_for(fast, 9) == []  # every piece in flight is its own already


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


# -- huge torrents (issue 18): packed bitfields, seeds apart, availability buckets ---------


def packed(s: str) -> bytes:
    """'1101' -> the wire's packed form."""
    return bitfield.from_flags(bits(s))


def test_packed_bitfields_haves_and_departures_keep_the_counts_of_a_model() -> None:
    n, rng = 1003, random.Random(11)  # not a multiple of 8: the last byte has spare bits
    p = Picker(n, seed=11)
    model: dict[tuple[int, int], bytearray] = {}  # (worker, peer) -> flags
    for step in range(300):
        op = rng.random()
        key = (rng.randrange(3), rng.randrange(12))
        if op < 0.3:
            share = rng.choice([0.0, 0.3, 0.9, 1.0])
            flags = bytearray(1 if rng.random() < share else 0 for _ in range(n))
            if rng.random() < 0.5:
                p.peer_packed(key, bitfield.from_flags(flags), key[0])
            else:
                p.peer_bitfield(key, bytes(flags), key[0])
            model[key] = flags
        elif op < 0.4:
            p.peer_packed(key, None, key[0])
            model.pop(key, None)
        else:
            for _ in range(20):
                i = rng.randrange(n)
                p.peer_have(key, i, key[0])
                model.setdefault(key, bytearray(n))[i] = 1
        if step % 25 == 0 or step == 299:
            assert p.availability == [sum(f[i] for f in model.values()) for i in range(n)]
            for w in range(3):
                mine = [f for (pw, _), f in model.items() if pw == w]
                assert p.needed_for(w) == any(any(f) for f in mine)


def test_a_hostile_packed_bitfield_is_refused_and_changes_nothing() -> None:
    p = Picker(9, seed=12)
    p.peer_packed("a", packed("110000001"), worker=0)
    with pytest.raises(ValueError, match="spare bits set"):
        p.peer_packed("a", bytes([0xFF, 0xFF]), worker=0)  # 7 spare bits set
    with pytest.raises(ValueError, match="bitfield of 1 bytes for 9 pieces"):
        p.peer_packed("a", b"\xff", worker=0)
    with pytest.raises(ValueError, match="3 have-flags for 9 pieces"):
        p.peer_bitfield("a", b"\x01\x01\x01", worker=0)
    with pytest.raises(ValueError, match="have for piece 9 of 9"):
        p.peer_have("a", 9, worker=0)
    with pytest.raises(ValueError, match="have for piece -1 of 9"):
        p.peer_have("a", -1, worker=0)  # never a wrap-around to the last piece
    assert p.availability == [1, 1, 0, 0, 0, 0, 0, 0, 1]  # the first bitfield stands


def test_a_peer_whose_haves_complete_it_counts_as_a_seed() -> None:
    p = Picker(10, seed=13)
    p.peer_packed("a", packed("1111111110"), worker=0)
    p.peer_packed("b", packed("1000000000"), worker=0)
    p.peer_have("a", 9, worker=0)
    assert p.availability == [2] + [1] * 9
    assert (p._seeds, p._partials) == (1, 1)  # counted apart: no longer per piece
    p.peer_packed("a", None)
    assert p.availability == [1] + [0] * 9
    assert p.pick_for(0, 10) == [0]


def test_a_worker_that_ran_dry_gets_what_its_peer_announces_next() -> None:
    p = Picker(100, seed=14)
    p.peer_packed("a", packed("1" + "0" * 99), worker=0)
    p.peer_packed("b", packed("1" * 100), worker=1)
    assert p.pick_for(0, 10) == [0]
    assert p.pick_for(0, 10) == []  # dry: its one peer has nothing more
    p.peer_have("a", 57, worker=0)
    assert p.pick_for(0, 10) == [57]  # without waiting for the next rebuild


def test_the_walk_hands_out_every_needed_piece_once_and_only_to_workers_that_can_serve_it() -> None:
    n, rng = 5000, random.Random(15)
    have = bytes(1 if rng.random() < 0.2 else 0 for _ in range(n))
    p = Picker(n, have, seed=15)
    field = {w: bytes(1 if rng.random() < 0.4 else 0 for _ in range(n)) for w in (0, 1)}
    p.peer_packed("a", bitfield.from_flags(field[0]), worker=0)
    p.peer_bitfield("b", field[1], worker=1)
    p.peer_packed("s", bitfield.full(n), worker=2)  # a seed
    got: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for _ in range(200):
        for w in (0, 1):  # the partial workers first: the seed's worker takes the rest
            got[w] += p.pick_for(w, 64)
    for _ in range(200):
        got[2] += p.pick_for(2, 64)
    every = got[0] + got[1] + got[2]
    assert sorted(every) == [i for i in range(n) if not have[i]]  # each once
    for w in (0, 1):
        assert all(field[w][i] for i in got[w])
    assert not any(p.needed_for(w) for w in range(3))


def test_buckets_order_rarest_first_among_many_partial_peers() -> None:
    n = 40
    p = Picker(n, seed=16)  # nothing done: the first RANDOM_FIRST picks are random
    for k in range(n):  # peer k has pieces k.. : piece i has i + 1 peers, none has all
        p.peer_packed(k, packed("0" * k + "1" * (n - k) if k else "0" + "1" * (n - 1)), 0)
    p.peer_packed("z", packed("1" + "0" * (n - 1)), 0)  # piece 0: one peer
    first = p.pick_for(0, RANDOM_FIRST)
    rest = p.pick_for(0, n)
    assert sorted(first + rest) == list(range(n))
    # buckets: exact below 16 peers, then one for 16 to 31, one for 32 to 63
    levels = [a if a < 16 else 16 + a.bit_length() - 5 for a in (p.availability[i] for i in rest)]
    assert levels == sorted(levels)
    exact = [i for i in rest if p.availability[i] < 16]
    assert [p.availability[i] for i in exact] == sorted(p.availability[i] for i in exact)


def test_more_than_255_partial_peers_still_leave_the_rarest_first() -> None:
    n = 12
    p = Picker(n, bits("000000001111"), seed=17)  # 4 done: rarest first from the start
    for k in range(300):
        p.peer_packed(k, packed("111111000000"), worker=0)
    p.peer_packed("x", packed("000000010000"), worker=0)
    p.peer_packed("y", packed("000000100000"), worker=0)
    p.peer_packed("z", packed("000000100000"), worker=0)
    got = p.pick_for(0, 8)
    assert got[:2] == [7, 6] and sorted(got[2:]) == [0, 1, 2, 3, 4, 5]
    assert p.availability[:8] == [300] * 6 + [2, 1]


def test_counts_widen_before_a_65536th_partial_peer_could_overflow_them() -> None:
    p = Picker(2, seed=18)
    one = packed("10")
    for k in range(65_537):
        p.peer_packed(k, one, worker=0)
    assert p._counts.typecode == "I"
    assert p.availability == [65_537, 0]
    p.peer_packed(0, None)
    assert p.availability == [65_536, 0]
    assert p.pick_for(0, 2) == [0]


def test_a_piece_announced_by_a_peer_that_left_since_is_not_handed_to_its_worker() -> None:
    p = Picker(100, seed=19)
    p.peer_packed("a", packed("1" + "0" * 99), worker=0)
    p.peer_packed("b", packed("1" * 100), worker=1)
    assert p.pick_for(0, 10) == [0]
    assert p.pick_for(0, 10) == []  # dry
    p.peer_have("a", 57, worker=0)
    p.peer_packed("a", None, worker=0)  # gone before the worker asked again
    assert p.pick_for(0, 10) == []  # none of its peers has 57 now
    assert 57 in p.pick_for(1, 100)


def test_a_piece_announced_while_the_walk_is_under_way_is_found_when_it_runs_dry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mptorrent.policy import picker

    monkeypatch.setattr(picker, "REBUILD_EVERY", 3600.0)  # no rebuild for time passing
    p = Picker(100, bits("1" * RANDOM_FIRST + "0" * (100 - RANDOM_FIRST)), seed=20)
    p.peer_packed("a", packed("0" * 10 + "1" * 10 + "0" * 80), worker=0)
    assert sorted(p.pick_for(0, 10)) == list(range(10, 20))  # all it has: not dry yet
    p.peer_have("a", 50, worker=0)  # nobody had 50 when the order was built
    assert p.pick_for(0, 10) == [50]


def test_a_worker_whose_peer_completes_walks_every_piece_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mptorrent.policy import picker

    monkeypatch.setattr(picker, "REBUILD_EVERY", 3600.0)
    p = Picker(20, bits("1" * RANDOM_FIRST + "0" * (20 - RANDOM_FIRST)), seed=21)
    p.peer_packed("s", packed("1" * 20), worker=1)  # pieces 10.. are in the order
    p.peer_packed("a", packed("0" * RANDOM_FIRST + "1" * 6 + "0" * 10), worker=0)
    assert sorted(p.pick_for(0, 6)) == list(range(RANDOM_FIRST, 10))
    for i in range(10, 20):
        p.peer_have("a", i, worker=0)  # now a seed
    assert sorted(p.pick_for(0, 20)) == list(range(10, 20))


def test_more_announcements_than_are_listed_still_reach_a_worker_that_runs_dry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mptorrent.policy import picker

    monkeypatch.setattr(picker, "REBUILD_EVERY", 3600.0)
    monkeypatch.setattr(picker, "FRESH_MAX", 3)
    p = Picker(100, bits("1" * RANDOM_FIRST + "0" * (100 - RANDOM_FIRST)), seed=22)
    p.peer_packed("a", packed("0" * 10 + "1" * 10 + "0" * 80), worker=0)
    assert len(p.pick_for(0, 10)) == 10
    for i in range(50, 60):
        p.peer_have("a", i, worker=0)
    assert sorted(p.pick_for(0, 20)) == list(range(50, 60))
