"""The iterative lookup (Kademlia's node lookup, BEP 5's ``get_peers`` search).

A :class:`Lookup` keeps the candidates it has heard of, sorted by XOR distance to the
target, and asks the closest it has not asked yet, ``ALPHA`` (3) at a time.  It ends
when the ``k`` closest candidates that have not failed have all answered, when nothing
is left to ask, or when it has sent ``MAX_QUERIES`` (64) queries, so a node that answers
every query with ever closer (invented) nodes cannot keep it going.  A query unanswered
after ``QUERY_TIMEOUT`` seconds counts as failed.

It sends nothing itself: :meth:`Lookup.next_queries` says whom to ask, and the caller
reports answers (:meth:`Lookup.answered`) and failures (:meth:`Lookup.failed`).
Candidates are keyed by address: one address is one candidate, whatever ids it
claims, and at most ``MAX_CANDIDATES`` (256) of the closest are kept.
"""

from __future__ import annotations

import enum
from typing import Final, Literal, TypeAlias

from mptorrent.proto.dht.krpc import Addr, NodeInfo, Response
from mptorrent.proto.dht.routing import K, id_int
from mptorrent.record import Record, mutable

ALPHA: Final = 3
QUERY_TIMEOUT: Final = 5.0
MAX_QUERIES: Final = 64
MAX_CANDIDATES: Final = 256
MAX_PEERS: Final = 2000  # distinct peers one lookup collects

Kind: TypeAlias = Literal["find_node", "get_peers"]
_UNKNOWN: Final = 1 << 161  # distance of a bootstrap address whose id we do not know yet


class CandidateState(enum.Enum):
    """Where one candidate of a lookup stands."""

    NEW = "new"
    ASKED = "asked"
    ANSWERED = "answered"
    FAILED = "failed"


@mutable(slots=True)
class Candidate(Record):
    """A node the lookup may ask: its address, its id once known, what it answered."""

    addr: Addr
    id: bytes | None
    distance: int
    state: CandidateState = CandidateState.NEW
    sent_at: float = 0.0
    token: bytes | None = None


class Lookup:
    """One ``find_node`` or ``get_peers`` search for ``target``."""

    def __init__(
        self, kind: Kind, target: bytes, seeds: list[NodeInfo] | list[Addr], *,
        own_id: bytes, own_addrs: frozenset[str] = frozenset(), k: int = K,
        alpha: int = ALPHA, max_queries: int = MAX_QUERIES, timeout: float = QUERY_TIMEOUT,
    ) -> None:  # fmt: skip
        self.kind: Kind = kind
        self.target = target
        self.own_id = own_id
        self.own_addrs = own_addrs
        self.k = k
        self.alpha = alpha
        self.max_queries = max_queries
        self.timeout = timeout
        self.queries_sent = 0
        self.peers: dict[Addr, None] = {}  # insertion-ordered set
        self._t = id_int(target)
        self._candidates: dict[Addr, Candidate] = {}
        for seed in seeds:
            if isinstance(seed, NodeInfo):
                self._add(seed.addr, seed.id)
            else:
                self._add(seed, None)

    def add_seed(self, addr: Addr) -> None:
        """A contact whose id we do not know (a bootstrap router): asked only while fewer
        than ``k`` known nodes are closer."""
        self._add(addr, None)

    def _add(self, addr: Addr, node_id: bytes | None) -> None:
        if addr in self._candidates or not 0 < addr[1] < 65536 or addr[0] in self.own_addrs:
            return
        if node_id == self.own_id:
            return
        d = _UNKNOWN if node_id is None else id_int(node_id) ^ self._t
        if len(self._candidates) >= MAX_CANDIDATES:
            worst = max(self._candidates.values(), key=lambda c: c.distance)
            if worst.distance <= d or worst.state is CandidateState.ASKED:
                return
            del self._candidates[worst.addr]
        self._candidates[addr] = Candidate(addr, node_id, d)

    def _ranked(self) -> list[Candidate]:
        """The candidates that have not failed, closest first."""
        live = [c for c in self._candidates.values() if c.state is not CandidateState.FAILED]
        live.sort(key=lambda c: c.distance)
        return live

    @property
    def in_flight(self) -> int:
        return sum(c.state is CandidateState.ASKED for c in self._candidates.values())

    def expire(self, now: float) -> list[Addr]:
        """Queries unanswered for ``timeout`` seconds fail; their addresses."""
        out = []
        for c in self._candidates.values():
            if c.state is CandidateState.ASKED and now - c.sent_at >= self.timeout:
                c.state = CandidateState.FAILED
                out.append(c.addr)
        return out

    def next_queries(self, now: float) -> list[NodeInfo | Addr]:
        """Whom to ask now (marked asked): the closest not yet asked among the ``k`` closest,
        while fewer than ``alpha`` queries are out and the query budget lasts."""
        out: list[NodeInfo | Addr] = []
        in_flight = self.in_flight
        for c in self._ranked()[: self.k]:
            if in_flight >= self.alpha or self.queries_sent >= self.max_queries:
                break
            if c.state is CandidateState.NEW:
                c.state = CandidateState.ASKED
                c.sent_at = now
                in_flight += 1
                self.queries_sent += 1
                out.append(c.addr if c.id is None else NodeInfo(c.id, c.addr))
        return out

    @property
    def done(self) -> bool:
        """No query out and nothing useful left to ask (or the budget is spent)."""
        if self.in_flight:
            return False
        if self.queries_sent >= self.max_queries:
            return True
        return all(c.state is not CandidateState.NEW for c in self._ranked()[: self.k])

    def answered(self, addr: Addr, response: Response, nodes: tuple[NodeInfo, ...]) -> list[Addr]:
        """``addr`` answered (``nodes``: the contacts of the reply we can use); returns the
        peers it named that this lookup had not seen."""
        c = self._candidates.get(addr)
        if c is None or c.state is not CandidateState.ASKED:
            return []
        if (c.id is not None and c.id != response.id) or response.id == self.own_id:
            c.state = CandidateState.FAILED  # not the node we meant to ask, or posing as us
            return []
        if c.id is None:
            c.id = response.id
            c.distance = id_int(response.id) ^ self._t
        c.state = CandidateState.ANSWERED
        c.token = response.token
        for node in nodes:
            self._add(node.addr, node.id)
        fresh = []
        if self.kind == "get_peers":
            for peer in response.values:
                if peer not in self.peers and len(self.peers) < MAX_PEERS:
                    self.peers[peer] = None
                    fresh.append(peer)
        return fresh

    def failed(self, addr: Addr) -> None:
        """``addr`` will not answer (an error reply, or the caller's own time-out)."""
        c = self._candidates.get(addr)
        if c is not None and c.state is CandidateState.ASKED:
            c.state = CandidateState.FAILED

    def closest_answered(self) -> list[tuple[NodeInfo, bytes]]:
        """The ``k`` closest nodes that answered with a token: where to ``announce_peer``."""
        out = []
        for c in self._ranked():
            if c.state is CandidateState.ANSWERED and c.id is not None and c.token:
                out.append((NodeInfo(c.id, c.addr), c.token))
                if len(out) == self.k:
                    break
        return out
