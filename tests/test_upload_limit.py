"""The upload half under a global limit: a worker serves only what its balance allows and shares
each loop turn's balance among the peers waiting, whatever their order in the loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mptorrent.netio.peer import ACTIVE
from mptorrent.worker.upload import Uploader, UploadState

BLOCK = 16384


@dataclass
class FakeBudget:
    granted: int = 0
    spent: int = 0

    def balance(self) -> int:
        return self.granted - self.spent

    def spend(self, n: int) -> None:
        self.spent += n


class FakeWire:
    def piece_header(self, index: int, begin: int, length: int) -> bytes:
        return b"h" * 13


@dataclass(eq=False)
class FakePeer:
    state: Any = ACTIVE
    out: bytearray = field(default_factory=bytearray)
    wire: FakeWire = field(default_factory=FakeWire)
    served: int = 0

    def queue(self, data: bytes) -> None:
        if len(data) == BLOCK:
            self.served += BLOCK
        # the socket takes everything at once: the send buffer never holds serving back


class FakeLayout:
    piece_length = 4 * BLOCK


class FakeStorage:
    layout = FakeLayout()

    def read(self, start: int, length: int) -> bytes:
        return bytes(length)


def uploader(peers: list[FakePeer], budget: FakeBudget) -> Uploader:
    up = Uploader(FakeStorage(), bytearray(b"\x01" * 1000), seeding=True)  # type: ignore[arg-type]
    up.limit = budget
    for p in peers:
        st = UploadState()
        st.queue.extend((i // 4, (i % 4) * BLOCK, BLOCK) for i in range(400))
        up.state[p] = st  # type: ignore[index]
    return up


def test_the_balance_is_shared_among_waiting_peers_every_turn() -> None:
    peers = [FakePeer() for _ in range(4)]
    budget = FakeBudget()
    up = uploader(peers, budget)
    for _ in range(50):  # 50 turns, 128 KiB each: 32 KiB a peer a turn
        budget.granted += 8 * BLOCK
        up.begin_turn()
        for p in peers:  # always the same order
            up.serve(p)  # type: ignore[arg-type]
    assert budget.spent <= budget.granted + BLOCK
    assert [p.served for p in peers] == [50 * 2 * BLOCK] * 4


def test_a_lone_peer_gets_the_whole_balance() -> None:
    p = FakePeer()
    budget = FakeBudget(granted=40 * BLOCK)
    up = uploader([p], budget)
    up.begin_turn()
    up.serve(p)  # type: ignore[arg-type]
    assert p.served == 40 * BLOCK
    up.begin_turn()
    up.serve(p)  # type: ignore[arg-type]
    assert p.served == 40 * BLOCK  # nothing left: nothing served
    assert up.starved() and not up.backlogged(p)  # type: ignore[arg-type]
