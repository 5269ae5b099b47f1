"""mptorrent.policy.download: the worker's download policy, driven with in-memory peers.

The peers here are plain objects implementing the policy's ``Peer`` protocol (its input,
not a stand-in for a real part): they record the requests and cancels the policy queues
on them.  Blocks arrive as ``wire.Piece`` events from a list.  No processes, no sockets.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mptorrent.messages import PeerAddr
from mptorrent.policy.download import (
    BLOCK,
    ENDGAME_BLOCKS,
    ENDGAME_COPIES,
    ENDGAME_HORIZON,
    Ban,
    Decision,
    DownloadPolicy,
    Failed,
    GiveBack,
    Peer,
    Verified,
)
from mptorrent.proto import wire
from mptorrent.proto.hashing import Sha1Pieces

PL = 4 * BLOCK  # four blocks a piece
NUM = 6
TOTAL = (NUM - 1) * PL + BLOCK + 100  # the last piece is short: two blocks, one short
DATA = os.urandom(TOTAL)

Key = tuple[int, int, int]


@dataclass(eq=False)
class FakePeer:
    """A peer as the policy sees it: what it has, its pipeline, what it was asked."""

    addr: PeerAddr
    have: set[int]
    depth: int = 8
    choked: bool = False
    connecting: bool = False
    pending: set[tuple[int, int]] = field(default_factory=set)
    requests: list[Key] = field(default_factory=list)  # not yet answered
    cancels: list[Key] = field(default_factory=list)
    allowed_fast: set[int] = field(default_factory=set)  # BEP 6, while it chokes us

    @property
    def active(self) -> bool:
        return not self.connecting

    @property
    def batch(self) -> int:
        return self.depth // 2

    @property
    def spare(self) -> int:
        may = self.active and (not self.choked or bool(self.allowed_fast))
        return self.depth - len(self.pending) if may else 0

    @property
    def allowed_while_choked(self) -> set[int] | None:
        return self.allowed_fast if self.choked else None

    def has_piece(self, index: int) -> bool:
        return index in self.have

    def request(self, blocks: Sequence[Key]) -> None:
        self.requests.extend(blocks)

    def cancel(self, index: int, begin: int, length: int) -> None:
        self.cancels.append((index, begin, length))


_conforms: type[Peer] = FakePeer  # mypy: the fake implements the protocol


class Events:
    """A peer's parsed messages, as ``wire.Connection.next_event`` gives them."""

    def __init__(self, events: Iterable[wire.Event]) -> None:
        self.events = deque(events)

    def next_event(self) -> wire.Event | wire.NeedData:
        return self.events.popleft() if self.events else wire.NEED_DATA


def piece_hashes(data: bytes) -> bytes:
    return b"".join(hashlib.sha1(data[i : i + PL]).digest() for i in range(0, len(data), PL))


@dataclass
class Swarm:
    policy: DownloadPolicy[FakePeer]
    peers: dict[PeerAddr, FakePeer]
    batches: deque[list[int]]
    done: bytearray
    taken: list[list[int]] = field(default_factory=list)

    def add(
        self, n: int, have: Iterable[int] = range(NUM), *, depth: int = 8, choked: bool = False,
        connecting: bool = False,
    ) -> FakePeer:  # fmt: skip
        addr = PeerAddr(f"127.0.0.{n}", 6881)
        p = FakePeer(addr, set(have), depth, choked, connecting)
        self.peers[addr] = p
        return p

    def serve(self, p: FakePeer, *, only: int | None = None, corrupt: Iterable[Key] = ()) -> None:
        """``p`` answers its requests (the first ``only`` of them), corrupting some."""
        bad = set(corrupt)
        n = len(p.requests) if only is None else only
        answered, p.requests = p.requests[:n], p.requests[n:]
        events: list[wire.Event] = []
        for key in answered:
            index, begin, length = key
            block = DATA[index * PL + begin : index * PL + begin + length]
            if key in bad:
                block = bytes(b ^ 0xFF for b in block)
            events.append(wire.Piece(index, begin, memoryview(block)))
        assert self.policy.receive(p, Events(events)) is wire.NEED_DATA

    def decisions(self) -> list[Decision]:
        out, self.policy.decisions = self.policy.decisions, []
        return out


def swarm(batches: Sequence[list[int]] = ([0, 1, 2, 3, 4, 5],), data: bytes = DATA) -> Swarm:
    peers: dict[PeerAddr, FakePeer] = {}
    queue = deque(list(b) for b in batches)
    done = bytearray(NUM + 1)  # one byte per piece, then the endgame flag
    s: Swarm

    def take() -> list[int] | None:
        if not queue:
            return None
        batch = queue.popleft()
        s.taken.append(batch)
        return batch

    policy: DownloadPolicy[FakePeer] = DownloadPolicy(
        verifier=Sha1Pieces(piece_hashes(data)), piece_length=PL, total_length=TOTAL,
        done=done, peers=peers, take=take,
    )  # fmt: skip
    s = Swarm(policy, peers, queue, done)
    return s


def blocks_of(index: int) -> list[Key]:
    size = min(PL, TOTAL - index * PL)
    return [(index, b, min(BLOCK, size - b)) for b in range(0, size, BLOCK)]


# -- scheduling ---------------------------------------------------------------


def test_fill_fills_each_pipeline_without_asking_twice() -> None:
    s = swarm()
    a, b = s.add(1, depth=6), s.add(2, depth=6)
    assert s.policy.fill(a) == 6
    assert s.policy.fill(b) == 6
    assert len(s.taken) == 1  # one batch serves both
    asked = a.requests + b.requests
    assert len(set(asked)) == 12  # no block asked of two peers outside the endgame
    # pieces are finished in order: a's six blocks are piece 0 and half of piece 1
    assert a.requests == blocks_of(0) + blocks_of(1)[:2]
    assert b.requests == blocks_of(1)[2:] + blocks_of(2)
    assert a.pending == {(i, o) for i, o, _ in a.requests}


def test_fill_tops_up_only_once_half_the_pipeline_is_free() -> None:
    s = swarm()
    a = s.add(1, depth=8)
    s.policy.fill(a)
    s.serve(a, only=3)
    assert s.policy.fill(a) == 0  # 3 free of 8: wait for fuller sends
    s.serve(a, only=1)
    assert s.policy.fill(a) == 4


def test_fill_asks_only_for_pieces_the_peer_has_and_nothing_when_choked() -> None:
    s = swarm([[0, 1]])
    a = s.add(1, have={1}, depth=8)
    c = s.add(3, choked=True)
    assert s.policy.fill(a) == 4
    assert {k[0] for k in a.requests} == {1}
    assert s.policy.backlog == [0]  # waits for a peer that has it (c, once it unchokes)
    assert s.policy.fill(c) == 0 and c.requests == []
    c.choked = False
    assert s.policy.fill(c) == 4 and {k[0] for k in c.requests} == {0}


def test_a_choking_peer_is_asked_only_for_pieces_it_allowed_fast() -> None:
    s = swarm([[0, 1, 2, 3]])
    c = s.add(3, have={0, 1, 2}, depth=16, choked=True)
    c.allowed_fast = {2, 3, 5}  # BEP 6 may name pieces it lacks (3) or we do not want (5)
    assert s.policy.fill(c) == 4
    assert c.requests == blocks_of(2)
    assert 0 in s.policy.backlog and 1 in s.policy.backlog  # left for peers that unchoke us
    # Unchoked, the peer is asked for everything again, on the normal path.
    c.choked = False
    assert s.policy.fill(c) == 8
    assert {k[0] for k in c.requests[4:]} == {0, 1}
    # Choked with nothing allowed: nothing asked, whatever the pipeline has room for.
    d = s.add(4, have={3}, choked=True)
    assert s.policy.fill(d) == 0 and d.requests == []
    d.allowed_fast = {0}  # allowed, but piece 3 is the one it has
    assert s.policy.fill(d) == 0 and d.requests == []


def test_batches_are_taken_until_the_peer_has_something_to_fetch() -> None:
    s = swarm([[i] for i in range(NUM)])
    a = s.add(1, have={NUM - 1}, depth=4)
    s.add(2, have=range(NUM - 1), choked=True)  # has the rest, so nothing is given back
    s.policy.fill(a)
    assert len(s.taken) == NUM
    assert s.policy.backlog == list(range(NUM - 1))
    assert a.requests == blocks_of(NUM - 1)


# -- completion ---------------------------------------------------------------


def test_pieces_complete_and_verify() -> None:
    s = swarm()
    a = s.add(1, depth=64)
    s.policy.fill(a)
    s.serve(a)
    got = s.decisions()
    assert [d.index for d in got if isinstance(d, Verified)] == list(range(NUM))
    for d in got:
        assert isinstance(d, Verified)
        assert bytes(d.data) == DATA[d.index * PL : (d.index + 1) * PL]
        assert d.peers == (a.addr,)
    assert s.policy.jobs == {} and a.pending == set()
    assert s.policy.downloaded == TOTAL


def test_a_verified_buffer_is_reused_once_recycled() -> None:
    s = swarm([[0], [1]])
    a = s.add(1, depth=4)
    s.policy.fill(a)
    s.serve(a)
    [v] = s.decisions()
    assert isinstance(v, Verified)
    s.policy.recycle(v.data)
    s.policy.fill(a)
    assert s.policy.jobs[1].buf is v.data  # no new piece buffer per piece


def test_a_bad_piece_from_one_peer_fails_and_bans_it() -> None:
    s = swarm([[2]])
    a = s.add(1, depth=4)
    s.policy.fill(a)
    s.serve(a, corrupt=[blocks_of(2)[1]])
    reason = "sent data that failed the hash check of piece 2"
    assert s.decisions() == [Ban(a.addr, reason), Failed(2, (a.addr,), retrying=False)]
    assert 2 not in s.policy.jobs


def test_smart_ban_names_the_peer_whose_block_differs() -> None:
    s = swarm([[0]])
    honest, liar = s.add(1, depth=2), s.add(2, depth=2)
    s.policy.fill(honest)
    s.policy.fill(liar)
    assert honest.requests == blocks_of(0)[:2] and liar.requests == blocks_of(0)[2:]
    s.serve(honest)
    s.serve(liar, corrupt=[blocks_of(0)[3]])
    # two senders: nobody is banned yet, the piece is fetched again
    [failed] = s.decisions()
    assert isinstance(failed, Failed) and failed.retrying and failed.index == 0
    assert set(failed.peers) == {honest.addr, liar.addr}
    # this time the honest peer sends it all
    honest.depth = 4
    s.policy.fill(honest)
    assert honest.requests == blocks_of(0)
    s.serve(honest)
    got = s.decisions()
    assert got[0] == Ban(liar.addr, "sent a corrupt block of piece 0")
    assert isinstance(got[1], Verified) and got[1].index == 0
    assert len(got) == 2  # the honest peer is not named


def test_a_piece_that_keeps_failing_is_let_go_with_strikes() -> None:
    s = swarm([[0]])
    a, b = s.add(1, depth=2), s.add(2, depth=2)
    for _ in range(3):
        s.policy.fill(a)
        s.policy.fill(b)
        s.serve(a, corrupt=a.requests[:1])
        s.serve(b, corrupt=b.requests[:1])
    got = s.decisions()
    assert [type(d) for d in got] == [Failed, Failed, Failed]
    assert [d.retrying for d in got if isinstance(d, Failed)] == [True, True, False]
    assert s.policy.strikes == {a.addr: 1, b.addr: 1}
    assert 0 not in s.policy.jobs


# -- endgame --------------------------------------------------------------------


def test_endgame_duplicates_slow_blocks_and_cancels_the_other_copy() -> None:
    s = swarm([[0]])
    slow, fast = s.add(1, depth=4), s.add(2, depth=4)
    s.policy.fill(slow)
    assert s.policy.fill(fast) == 0  # not endgame yet: the coordinator has more to hand out
    s.done[NUM] = 1  # the coordinator's endgame flag
    s.policy.now += 1  # a new loop turn: the work source is asked again
    assert s.policy.fill(fast) == 4
    assert fast.requests == slow.requests == blocks_of(0)
    s.serve(fast, only=1)
    # the first copy wins: the slow peer's request for that block is withdrawn
    assert slow.cancels == [blocks_of(0)[0]]
    assert (0, 0) not in slow.pending
    s.serve(slow, only=1)  # block 0 again: the late copy is dropped...
    s.serve(slow)  # ...then the rest from the slow peer
    assert fast.cancels == blocks_of(0)[1:]
    assert fast.pending == set() and slow.pending == set()
    got = s.decisions()
    assert len(got) == 1 and isinstance(got[0], Verified)
    assert got[0].peers[0] == slow.addr  # three blocks from slow, one from fast
    assert s.policy.downloaded == PL + BLOCK  # the duplicate counts as received


def test_strict_endgame_only_an_idle_peer_duplicates_one_piece_at_a_time() -> None:
    s = swarm([[0, 1]])
    slow, busy, idle = s.add(1, depth=8), s.add(2, depth=16), s.add(3, depth=64)
    s.policy.fill(slow)  # pieces 0 and 1, four blocks each
    s.done[NUM] = 1  # the coordinator's endgame flag
    s.policy.now += 1
    busy.pending.add((5, 0))  # it still owes us a block (of a piece elsewhere)
    assert s.policy.fill(busy) == 0  # a busy peer gets to its own blocks first
    # An idle peer: the blocks of one piece (at most max(ENDGAME_BLOCKS, its batch)), not
    # its whole depth of everything outstanding.
    assert s.policy.fill(idle) == 4 <= max(ENDGAME_BLOCKS, idle.batch)
    assert idle.requests == blocks_of(0)
    assert s.policy.fill(idle) == 0  # the next piece once those are in
    s.serve(idle)
    assert s.policy.fill(idle) == 4 and idle.requests == blocks_of(1)


def test_endgame_asks_a_third_peer_only_when_every_missing_block_has_two() -> None:
    s = swarm([[0, 1]])
    a, b, c = s.add(1, depth=4), s.add(2, depth=4), s.add(3, depth=4)
    s.policy.fill(a)  # piece 0
    s.policy.fill(b)  # piece 1
    s.done[NUM] = 1
    s.policy.now += 1
    assert s.policy.fill(c) == 4 and c.requests == blocks_of(0)  # asked once: first
    s.serve(c)
    assert s.policy.fill(c) == 4 and c.requests == blocks_of(1)
    s.serve(a)  # piece 0 done (a's copies arrive late and are dropped)
    d = s.add(4, depth=4)
    # piece 1's blocks are asked of b and c: a third peer gets them only now
    assert s.policy.fill(d) == 4 and d.requests == blocks_of(1)
    assert max(s.policy.jobs[1].requested) == ENDGAME_COPIES
    e = s.add(5, depth=4)
    assert s.policy.fill(e) == 0  # never a fourth


def test_no_duplicates_while_the_blocks_in_hand_need_longer_than_the_horizon() -> None:
    """An idle peer duplicates nothing while the worker's blocks in hand need over
    ENDGAME_HORIZON s at its peers' rate (the caller's ``tail_left``): the busy peers'
    blocks are on their way, and a copy asked now is sent twice (a seeder's send buffer
    holds it when our cancel comes)."""
    s = swarm([[0]])
    slow, idle = s.add(1, depth=4), s.add(2, depth=4)
    s.policy.fill(slow)
    s.done[NUM] = 1  # the coordinator's endgame flag
    s.policy.now += 1
    s.policy.tail_left = ENDGAME_HORIZON + 0.5
    assert s.policy.fill(idle) == 0 and idle.requests == []
    s.policy.tail_left = ENDGAME_HORIZON - 0.1  # the last moments: copies of the slow blocks
    assert s.policy.fill(idle) == 4 and idle.requests == blocks_of(0)


def test_return_backlog_gives_back_the_pieces_not_started_only() -> None:
    s = swarm([[0, 1, 2, 3]])
    a = s.add(1, depth=4)
    s.policy.fill(a)  # piece 0 in hand; 1, 2 and 3 taken, waiting
    assert list(s.policy.jobs) == [0] and s.policy.backlog == [1, 2, 3]
    s.policy.return_backlog()
    assert s.decisions() == [GiveBack(1), GiveBack(2), GiveBack(3)]
    assert list(s.policy.jobs) == [0] and s.policy.backlog == []


def test_a_piece_verified_by_another_worker_is_dropped_and_its_requests_cancelled() -> None:
    s = swarm([[0, 1]])
    a = s.add(1, depth=8)
    s.policy.fill(a)
    s.done[0] = 1
    s.policy.drop_finished_elsewhere()
    assert 0 not in s.policy.jobs
    assert sorted(a.cancels) == blocks_of(0)
    assert all(i == 1 for i, _ in a.pending)


# -- giving work back -------------------------------------------------------------


def test_a_peer_leaving_returns_its_blocks() -> None:
    s = swarm([[0]])
    a, b = s.add(1, depth=4), s.add(2, depth=4)
    s.policy.fill(a)
    s.serve(a, only=1)
    assert s.policy.fill(b) == 0  # everything is asked of a
    s.policy.release(a)  # a choked us, or left
    assert a.pending == set()
    assert s.policy.fill(b) == 3
    assert sorted(b.requests) == blocks_of(0)[1:]
    s.serve(b)
    [v] = s.decisions()
    assert isinstance(v, Verified) and set(v.peers) == {a.addr, b.addr}


def test_pieces_no_peer_has_are_given_back() -> None:
    s = swarm([[0, 4, 5]])
    a = s.add(1, have={0, 5}, depth=4)
    s.policy.fill(a)
    assert s.decisions() == [GiveBack(4)]  # handed to us, but no peer of ours has it
    assert list(s.policy.jobs) == [0] and s.policy.backlog == [5]
    del s.peers[a.addr]
    s.policy.release(a)
    s.policy.return_orphans()
    assert sorted(d.index for d in s.decisions() if isinstance(d, GiveBack)) == [0, 5]
    assert s.policy.jobs == {} and s.policy.backlog == []


def test_orphans_wait_for_peers_still_connecting() -> None:
    s = swarm([[0]])
    a = s.add(1, have={0})
    s.policy.fill(a)
    del s.peers[a.addr]
    s.policy.release(a)
    s.add(2, have=(), connecting=True)  # its bitfield may yet hold piece 0
    s.policy.return_orphans()
    assert s.decisions() == [] and 0 in s.policy.jobs


def test_a_stalled_piece_is_given_back_once_nobody_is_asked_for_it() -> None:
    s = swarm([[0]])
    a = s.add(1, depth=4)
    s.policy.fill(a)
    s.policy.now += 61
    s.policy.give_back_stalled(60)
    assert s.decisions() == []  # requests are still out: the snub timer deals with a
    s.policy.release(a)
    s.policy.give_back_stalled(60)
    assert s.decisions() == [GiveBack(0)]


def test_stop_withdraws_every_request() -> None:
    s = swarm()
    a = s.add(1, depth=8)
    s.policy.fill(a)
    s.policy.stop()
    assert sorted(a.cancels) == sorted(a.requests)
    assert a.pending == set() and s.policy.jobs == {} and s.policy.backlog == []


# -- the block path -------------------------------------------------------------


def test_receive_hands_back_the_first_other_event() -> None:
    s = swarm([[0]])
    a = s.add(1, depth=4)
    s.policy.fill(a)
    have = wire.Have(3)
    ev = [wire.Piece(0, 0, DATA[:BLOCK]), have, wire.Piece(0, BLOCK, DATA[BLOCK : 2 * BLOCK])]
    src = Events(ev)
    assert s.policy.receive(a, src) is have
    assert s.policy.jobs[0].nreceived == 1
    assert s.policy.receive(a, src) is wire.NEED_DATA
    assert s.policy.jobs[0].nreceived == 2


class Runs:
    """A source with ``next_blocks`` as ``wire.Connection`` has: runs of blocks, as tuples,
    between other events (a block left to ``next_event`` comes as a Piece event)."""

    def __init__(self, items: Iterable[list[tuple[int, int, bytes]] | wire.Event]) -> None:
        self.items = deque(items)

    def next_blocks(self) -> list[tuple[int, int, bytes]]:
        head = self.items[0] if self.items else None
        if isinstance(head, list):
            self.items.popleft()
            return head
        return []

    def next_event(self) -> wire.Event | wire.NeedData:
        if not self.items:
            return wire.NEED_DATA
        head = self.items.popleft()
        if isinstance(head, list):  # as a Connection's next_event would: block by block
            if head[1:]:
                self.items.appendleft(head[1:])
            return wire.Piece(*head[0])
        return head


def test_receive_takes_runs_of_blocks_and_hands_back_the_events_between() -> None:
    s = swarm([[0, 1]])
    a = s.add(1, depth=8)
    s.policy.fill(a)
    blocks = [
        (i, b * BLOCK, DATA[i * PL + b * BLOCK : i * PL + (b + 1) * BLOCK])
        for i in (0, 1)
        for b in range(4)
    ]
    have = wire.Have(3)
    src = Runs([blocks[:3], have, blocks[3:5], wire.Piece(*blocks[5]), blocks[6:]])
    assert s.policy.receive(a, src) is have
    assert s.policy.jobs[0].nreceived == 3 and s.policy.downloaded == 3 * BLOCK
    assert s.policy.receive(a, src) is wire.NEED_DATA
    assert [type(d) for d in s.decisions()] == [Verified, Verified]
    assert s.policy.downloaded == 8 * BLOCK and a.pending == set() and s.policy.jobs == {}


def test_unasked_and_unknown_blocks_are_counted_and_dropped() -> None:
    s = swarm([[0]])
    a = s.add(1, depth=4)
    src = Events([wire.Piece(3, 0, DATA[3 * PL : 3 * PL + BLOCK])])
    assert s.policy.receive(a, src) is wire.NEED_DATA
    assert s.policy.jobs == {} and s.policy.downloaded == BLOCK


def test_the_short_last_piece() -> None:
    index = NUM - 1
    s = swarm([[index]])
    a = s.add(1, depth=4)
    s.policy.fill(a)
    assert a.requests == blocks_of(index) and a.requests[-1][2] == 100
    s.serve(a)
    [v] = s.decisions()
    assert isinstance(v, Verified) and bytes(v.data) == DATA[index * PL :]


# -- BEP 6 rejects ------------------------------------------------------------


def test_a_rejected_block_is_asked_again() -> None:
    s = swarm([[0]])
    a, b = s.add(1, depth=4), s.add(2, depth=4)
    s.policy.fill(a)
    assert s.policy.fill(b) == 0  # everything is asked of a
    rejected = blocks_of(0)[2]
    a.requests.remove(rejected)
    s.policy.rejected(a, rejected[0], rejected[1])  # a's RejectRequest
    assert (rejected[0], rejected[1]) not in a.pending and len(a.pending) == 3
    assert s.policy.fill(b) == 1
    assert b.requests == [rejected]  # only the rejected block, and only once
    s.serve(a)
    s.serve(b)
    [v] = s.decisions()
    assert isinstance(v, Verified) and set(v.peers) == {a.addr, b.addr}


def test_a_reject_for_a_block_no_longer_pending_changes_nothing() -> None:
    s = swarm([[0]])
    a = s.add(1, depth=4)
    s.policy.fill(a)
    s.serve(a, only=1)
    s.policy.rejected(a, 0, 0)  # crossed with its block (answered already)
    s.policy.rejected(a, 3, 0)  # never a job here
    assert len(a.pending) == 3
    assert s.policy.jobs[0].todo == [] and s.policy.fill(a) == 0


def test_an_endgame_duplicate_rejected_by_one_peer_stays_asked_of_the_other() -> None:
    s = swarm([[0]])
    a, b = s.add(1, depth=4), s.add(2, depth=4)
    s.policy.fill(a)
    s.done[NUM] = 1  # endgame
    s.policy.queue_empty, s.policy.empty_at = True, s.policy.now
    assert s.policy.fill(b) == 4  # the same four blocks, twice asked
    s.policy.rejected(b, 0, 0)
    job = s.policy.jobs[0]
    assert job.requested[0] == 1 and 0 not in job.todo  # a still owes it


def test_left_in_hand_is_known_once_nothing_more_can_be_taken() -> None:
    """The tail (policy/pipeline.py): what the worker's peers still have to send, counted
    only once ``take`` has run dry (before, more work may come at any moment)."""
    s = swarm(batches=([0, 1],))
    a = s.add(1, depth=6)
    s.policy.fill(a)  # piece 0 and half of piece 1 asked; the batch is taken
    assert s.policy.left_in_hand() is None  # take has not said "nothing" yet
    s.serve(a, only=3)
    s.policy.fill(a)  # asks the rest of piece 1, then looks for more: none
    assert s.policy.queue_empty
    assert s.policy.left_in_hand() == 2 * PL - 3 * BLOCK
    s.serve(a)
    assert s.policy.left_in_hand() == 0
