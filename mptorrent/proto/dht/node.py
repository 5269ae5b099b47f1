"""The :class:`Node` façade: one DHT node, sans-IO, for the I/O layer to drive.

The I/O layer owns the UDP socket and the clock.  It calls
:meth:`Node.datagram_received` with every datagram, :meth:`Node.timers` whenever
:meth:`Node.next_deadline` passes, and :meth:`Node.start_lookup` to look for peers;
each returns the datagrams to send as ``(bytes, addr)`` pairs.  What happened comes out
of :meth:`Node.take_events`: :class:`PeersFound` and :class:`LookupDone`.

The I/O layer passes addresses as ``(IP literal, port)`` pairs of the node's family
(an IPv6 socket's 4-tuples cut to two; scoped addresses are dropped).  Bootstrap
addresses given to :meth:`Node.bootstrap` are remembered: asked again every
``BOOTSTRAP_RETRY`` (30 s) while the table holds fewer than ``K`` nodes, and offered to
every lookup as a last resort.

A node a peer names in a BEP 5 ``port`` message goes to :meth:`Node.introduced`: pinged,
never trusted, within ``INTRODUCED_BURST`` / ``INTRODUCED_RATE``; it enters the table only
when it answers, like any node.

Replies are matched to our queries by transaction id *and* source address: a reply
with an unknown id, or with a known id from another address, is dropped.  At most
``MAX_PENDING`` (512) queries are out at once; a query unanswered for
``QUERY_TIMEOUT`` counts as a failure of that node.
"""

from __future__ import annotations

import ipaddress
import random
from typing import Final, Literal, TypeAlias

from mptorrent.proto.dht import krpc
from mptorrent.proto.dht.krpc import (
    Addr,
    AnnouncePeer,
    Error,
    FindNode,
    GetPeers,
    KrpcError,
    NodeInfo,
    Ping,
    Response,
)
from mptorrent.proto.dht.lookup import QUERY_TIMEOUT, Kind, Lookup
from mptorrent.proto.dht.routing import K, RoutingTable, load_saved
from mptorrent.proto.dht.server import Server
from mptorrent.record import Record, frozen, mutable

MAX_PENDING: Final = 512
MAX_LOOKUPS: Final = 16
BOOTSTRAP_RETRY: Final = (
    30.0  # while the table holds fewer than K nodes, bootstrap again this often
)
MAX_ROUTERS: Final = 16
# Nodes named by peers' BEP 5 port messages: a burst of this many pings, then one a second
# (a peer, or many, cannot turn us into a ping cannon); an address asked in the last
# INTRODUCED_AGAIN seconds is not asked again (at most MAX_INTRODUCED remembered).
INTRODUCED_BURST: Final = 16.0
INTRODUCED_RATE: Final = 1.0
INTRODUCED_AGAIN: Final = 600.0
MAX_INTRODUCED: Final = 1024

Datagram: TypeAlias = tuple[bytes, Addr]
Family: TypeAlias = Literal[4, 6]  # the address family of the node's socket


@frozen
class PeersFound(Record):
    """Peers of ``info_hash`` a lookup learnt (each reported once per lookup)."""

    info_hash: bytes
    peers: tuple[Addr, ...]


@frozen
class LookupDone(Record):
    """A lookup ended: how many peers it found, queries it sent, nodes it announced to."""

    target: bytes
    kind: Kind
    peers: int
    queries: int
    announced: int


Event: TypeAlias = PeersFound | LookupDone
Introduction: TypeAlias = Literal[
    "pinged", "unusable", "known", "asked_lately", "over_rate", "busy"
]  # what Node.introduced did with a node a peer named


@mutable(slots=True)
class _Pending(Record):
    addr: Addr
    sent_at: float
    lookup: _Search | None  # the search this query serves, if any


@mutable(slots=True)
class _Search(Record):
    lookup: Lookup
    announce_port: int | None
    implied_port: bool


class Node:
    """A DHT node: routing table, server, lookups and the transactions between them.

    ``own_addrs`` are our own IP literals (never added as nodes nor asked); ``family`` is
    the address family of our socket (4 or 6): nodes of the other family are ignored.
    """

    def __init__(
        self, node_id: bytes, *, now: float = 0.0, rng: random.Random | None = None,
        own_addrs: frozenset[str] = frozenset(), family: Family = 4,
    ) -> None:  # fmt: skip
        self.rng = rng if rng is not None else random.SystemRandom()
        self.id = node_id
        self.family: Family = family
        self.own_addrs = own_addrs
        self.table = RoutingTable(node_id, now=now, own_addrs=own_addrs)
        self.server = Server(node_id, self._closest, rng=self.rng, now=now)
        self._pending: dict[bytes, _Pending] = {}
        self._searches: list[_Search] = []
        self._events: list[Event] = []
        self._next_tid = self.rng.randrange(1 << 16)
        self._routers: list[Addr] = []  # the bootstrap addresses, for retries
        self._next_bootstrap = float("inf")
        self._introduced: dict[Addr, float] = {}  # addresses pinged for peers, and when
        self._intro_tokens = INTRODUCED_BURST
        self._intro_at: float | None = None
        self.introductions: dict[Introduction, int] = {}  # outcomes of introduced(), counted
        self.malformed = 0  # datagrams refused by the codec
        self.unmatched = 0  # replies with an unknown transaction id or from the wrong address

    # ---- persistence ----

    def save(self) -> bytes:
        """The routing table (our id included) as bytes, for :meth:`load`."""
        return self.table.save()

    @classmethod
    def load(
        cls, data: bytes, *, now: float = 0.0, rng: random.Random | None = None,
        own_addrs: frozenset[str] = frozenset(), family: Family = 4,
    ) -> Node:  # fmt: skip
        """A node with the id and nodes of a :meth:`save` (:class:`~.routing.BadSavedTable`
        if it is not one); the nodes are questionable until they answer."""
        own_id, nodes = load_saved(data)
        node = cls(own_id, now=now, rng=rng, own_addrs=own_addrs, family=family)
        for info in nodes:
            if node._usable(info.addr):
                node.table.add_unverified(info, now)
        return node

    # ---- helpers ----

    def _usable(self, addr: Addr) -> bool:
        try:
            return ipaddress.ip_address(addr[0]).version == self.family
        except ValueError:
            return False

    def _closest(self, target: bytes, family: int) -> list[NodeInfo]:
        return self.table.closest(target, K, family=family)

    def _tid(self) -> bytes:
        for _ in range(1 << 16):
            self._next_tid = (self._next_tid + 1) & 0xFFFF
            tid = self._next_tid.to_bytes(2, "big")
            if tid not in self._pending:
                return tid
        raise AssertionError("MAX_PENDING keeps transaction ids free")  # pragma: no cover

    def _send(
        self, msg: krpc.Query, addr: Addr, now: float, search: _Search | None,
        out: list[Datagram],
    ) -> bool:  # fmt: skip
        if len(self._pending) >= MAX_PENDING:
            return False
        self._pending[msg.tid] = _Pending(addr, now, search)
        out.append((krpc.encode(msg), addr))
        return True

    def take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    # ---- starting things ----

    def ping(self, addr: Addr, now: float) -> list[Datagram]:
        """Ask ``addr`` whether it is there (e.g. a node a peer named in a BEP 5 ``port`` message);
        it enters the table when it answers."""
        out: list[Datagram] = []
        if self._usable(addr) and addr[1] and addr[0] not in self.own_addrs:
            self._send(Ping(self._tid(), self.id), addr, now, None, out)
        return out

    def introduced(self, addr: Addr, now: float) -> tuple[Introduction, list[Datagram]]:
        """A node a peer named in a BEP 5 ``port`` message (the peer's IP, the port it sent):
        pinged, so it enters the table only if it answers.  Not pinged: port 0, the other
        family, our own address or not unicast (``"unusable"``), a node already in the table
        (``"known"``), one asked in the last ``INTRODUCED_AGAIN`` seconds (``"asked_lately"``),
        past the rate (``"over_rate"``), or with ``MAX_PENDING`` queries out (``"busy"``)."""
        outcome, out = self._introduce(addr, now)
        self.introductions[outcome] = self.introductions.get(outcome, 0) + 1
        return outcome, out

    def _introduce(self, addr: Addr, now: float) -> tuple[Introduction, list[Datagram]]:
        not_us = bytes([self.id[0] ^ 0xFF]) + self.id[1:]  # an id the table does not refuse
        if not self._usable(addr) or self.table.refuses(not_us, addr) is not None:
            return "unusable", []
        if self.table.knows(addr):
            return "known", []
        asked = self._introduced.get(addr)
        if asked is not None and now - asked < INTRODUCED_AGAIN:
            return "asked_lately", []
        if self._intro_at is not None and now > self._intro_at:
            gained = (now - self._intro_at) * INTRODUCED_RATE
            self._intro_tokens = min(INTRODUCED_BURST, self._intro_tokens + gained)
        self._intro_at = now if self._intro_at is None else max(now, self._intro_at)
        if self._intro_tokens < 1.0:
            return "over_rate", []
        out: list[Datagram] = []
        if not self._send(Ping(self._tid(), self.id), addr, now, None, out):
            return "busy", []
        self._intro_tokens -= 1.0
        self._introduced.pop(addr, None)
        if len(self._introduced) >= MAX_INTRODUCED:
            del self._introduced[next(iter(self._introduced))]  # the oldest goes
        self._introduced[addr] = now
        return "pinged", out

    def bootstrap(self, addrs: list[Addr], now: float) -> list[Datagram]:
        """A ``find_node`` of our own id through ``addrs`` and the table's nodes; repeated
        every ``BOOTSTRAP_RETRY`` seconds while the table holds fewer than ``K`` nodes."""
        self._routers = [a for a in addrs if self._usable(a)][:MAX_ROUTERS]
        self._next_bootstrap = now + BOOTSTRAP_RETRY
        return self._start("find_node", self.id, now, extra=addrs)

    def start_lookup(
        self, info_hash: bytes, now: float, *, announce_port: int | None = None,
        implied_port: bool = False, bootstrap: list[Addr] | None = None,
    ) -> list[Datagram]:  # fmt: skip
        """A ``get_peers`` search for ``info_hash``; with ``announce_port`` (or
        ``implied_port``), an ``announce_peer`` to the closest nodes when it ends."""
        if announce_port is not None and not 0 < announce_port < 65536:
            raise ValueError(f"cannot announce port {announce_port}")
        port = announce_port if announce_port is not None or not implied_port else 0
        # Bootstrap addresses (ours, and those given) are asked only while fewer than k
        # known nodes are closer: they help a table that is still nearly empty.
        extra = (bootstrap or []) + self._routers
        return self._start("get_peers", info_hash, now, extra=extra, announce=port,
                           implied=implied_port)  # fmt: skip

    def _start(
        self, kind: Kind, target: bytes, now: float, *, extra: list[Addr],
        announce: int | None = None, implied: bool = False,
    ) -> list[Datagram]:  # fmt: skip
        out: list[Datagram] = []
        if len(self._searches) >= MAX_LOOKUPS:
            # The oldest gives way (its late answers are ignored) and says so.
            self._finish(self._searches[0], now, out)
        seeds: list[NodeInfo] | list[Addr] = self.table.closest(target, 3 * K, family=self.family)
        lookup = Lookup(kind, target, seeds, own_id=self.id, own_addrs=self.own_addrs)
        for addr in extra:
            if self._usable(addr):
                lookup.add_seed(addr)
        search = _Search(lookup, announce, implied)
        self._searches.append(search)
        self._step(search, now, out)
        return out

    def _step(self, search: _Search, now: float, out: list[Datagram]) -> None:
        lookup = search.lookup
        for who in lookup.next_queries(now):
            addr = who.addr if isinstance(who, NodeInfo) else who
            if lookup.kind == "get_peers":
                msg: krpc.Query = GetPeers(self._tid(), self.id, lookup.target)
            else:
                msg = FindNode(self._tid(), self.id, lookup.target)
            if not self._send(msg, addr, now, search, out):
                lookup.failed(addr)
        if lookup.done and search in self._searches:
            self._finish(search, now, out)

    def _finish(self, search: _Search, now: float, out: list[Datagram]) -> None:
        """End ``search``: announce to the closest nodes that gave a token, if asked to."""
        self._searches.remove(search)
        lookup = search.lookup
        announced = 0
        if search.announce_port is not None:
            for info, token in lookup.closest_answered():
                ann = AnnouncePeer(self._tid(), self.id, lookup.target, search.announce_port,
                                   token, search.implied_port)  # fmt: skip
                announced += self._send(ann, info.addr, now, None, out)
        self._events.append(LookupDone(lookup.target, lookup.kind, len(lookup.peers),
                                       lookup.queries_sent, announced))  # fmt: skip

    # ---- input ----

    def datagram_received(self, data: bytes, addr: Addr, now: float) -> list[Datagram]:
        """One datagram from ``addr`` (an ``(IP literal, port)`` pair of our family): the
        datagrams to send in return."""
        out: list[Datagram] = []
        if not self._usable(addr) or not 0 < addr[1] < 65536:
            self.malformed += 1  # nothing can be sent back there
            return out
        try:
            msg = krpc.decode(data)
        except KrpcError as exc:
            self.malformed += 1
            if exc.is_query and exc.tid is not None and self.server.allow(addr[0], now):
                out.append((krpc.encode(Error(exc.tid, exc.code, exc.reason.encode())), addr))
            return out
        if isinstance(msg, Ping | FindNode | GetPeers | AnnouncePeer):
            if msg.id == self.id:
                return out  # ourselves, through some loop
            answer = self.server.handle(msg, addr, now)
            if answer is not None:
                out.append((krpc.encode(answer), addr))
                if not msg.read_only:  # BEP 43: a read-only node would never answer us
                    self.table.heard_from(msg.id, addr, now, responded=False)
            return out
        pending = self._pending.get(msg.tid)
        if pending is None or pending.addr != addr:
            self.unmatched += 1
            return out
        del self._pending[msg.tid]
        search = pending.lookup
        if isinstance(msg, Error):
            if search is not None:
                search.lookup.failed(addr)
                self._step(search, now, out)
            return out
        self._on_response(msg, addr, now, search, out)
        return out

    def _on_response(
        self, msg: Response, addr: Addr, now: float, search: _Search | None,
        out: list[Datagram],
    ) -> None:  # fmt: skip
        self.table.heard_from(msg.id, addr, now, responded=True)
        if search is None or search not in self._searches:
            return
        nodes = msg.nodes if self.family == 4 else msg.nodes6
        usable = tuple(n for n in nodes if self.table.refuses(n.id, n.addr) is None)
        fresh = search.lookup.answered(addr, msg, usable)
        if fresh:
            self._events.append(PeersFound(search.lookup.target, tuple(fresh)))
        self._step(search, now, out)

    # ---- time ----

    def timers(self, now: float) -> list[Datagram]:
        """Time-outs, lookups moving on, bucket refreshes and pings of questionable nodes."""
        out: list[Datagram] = []
        for tid, p in list(self._pending.items()):
            if now - p.sent_at >= QUERY_TIMEOUT:
                del self._pending[tid]
                self.table.failed(p.addr, now)
                if p.lookup is not None:
                    p.lookup.lookup.failed(p.addr)
        for search in list(self._searches):
            search.lookup.expire(now)
            self._step(search, now, out)
        if self._routers and len(self.table) < K and now >= self._next_bootstrap:
            bootstrapping = any(s.lookup.target == self.id for s in self._searches)
            if not bootstrapping:
                out += self.bootstrap(self._routers, now)
            self._next_bootstrap = now + BOOTSTRAP_RETRY
        if len(self.table):
            # Refreshes never push a caller's lookup out: they use half the slots at most.
            room = MAX_LOOKUPS // 2 - len(self._searches)
            for target in self.table.refresh_due(now, self.rng, limit=max(0, room)):
                out += self._start("find_node", target, now, extra=[])
            for info in self.table.questionable_to_ping(now):
                if not any(p.addr == info.addr for p in self._pending.values()):
                    self._send(Ping(self._tid(), self.id), info.addr, now, None, out)
        return out

    def next_deadline(self) -> float:
        """When :meth:`timers` next has something to do."""
        deadlines = [p.sent_at + QUERY_TIMEOUT for p in self._pending.values()]
        deadlines.append(self.table.next_refresh())
        if self._routers and len(self.table) < K:
            deadlines.append(self._next_bootstrap)
        return min(deadlines)

    @property
    def lookups(self) -> int:
        return len(self._searches)
