"""Node ids, XOR distance and the k-bucket routing table (BEP 5).

The table covers the 160-bit id space with buckets of at most ``K`` (8) nodes.  A full
bucket whose range holds our own id splits in two; any other full bucket keeps its
nodes and puts newcomers in a small replacement cache, from which a node that turns
bad is replaced at once.

Node states follow BEP 5: a node is *good* if it answered one of our queries in the
last 15 minutes, or has answered once and sent us a query in the last 15 minutes;
*questionable* after 15 minutes of silence (or when it never answered); *bad* after
``MAX_FAILURES`` (2) queries in a row went unanswered.  A bucket nobody was heard in
for 15 minutes is due for a refresh (a ``find_node`` of a random id in its range).
"""

from __future__ import annotations

import enum
import ipaddress
import random
from dataclasses import field
from typing import Final, Literal, TypeAlias

from mptorrent.errors import BencodeError, MptorrentError
from mptorrent.proto import bencode
from mptorrent.proto.dht.krpc import ID_LEN, Addr, NodeInfo, pack_addr, unpack_addr
from mptorrent.record import Record, mutable

K: Final = 8
ID_BITS: Final = 160
GOOD_FOR: Final = 15 * 60.0  # BEP 5: good for 15 minutes after the last sign of life
REFRESH_AFTER: Final = 15 * 60.0
MAX_FAILURES: Final = 2
REPLACEMENTS: Final = K  # replacement cache size per bucket
MAX_SAVED: Final = 2000  # nodes read from a saved table at most

Outcome: TypeAlias = Literal["added", "updated", "cached", "rejected"]


class BadSavedTable(MptorrentError, ValueError):
    """Bytes that are not a routing table :meth:`RoutingTable.save` wrote (start from the
    bootstrap nodes instead)."""


def id_int(node_id: bytes) -> int:
    return int.from_bytes(node_id, "big")


def distance(a: bytes, b: bytes) -> int:
    """Kademlia's metric: the XOR of two ids as an unsigned integer."""
    return id_int(a) ^ id_int(b)


def random_id(rng: random.Random, lo: int = 0, hi: int = 1 << ID_BITS) -> bytes:
    """A random id in ``[lo, hi)``."""
    return rng.randrange(lo, hi).to_bytes(ID_LEN, "big")


class NodeState(enum.Enum):
    """BEP 5's three states of a node in the table."""

    GOOD = "good"
    QUESTIONABLE = "questionable"
    BAD = "bad"


@mutable(slots=True)
class Entry(Record):
    """One node in the table and what we know of its liveness."""

    id: bytes
    addr: Addr
    last_response: float | None = None  # when it last answered one of our queries
    last_query: float | None = None  # when it last sent us a query
    failures: int = 0  # our queries in a row it did not answer

    def state(self, now: float) -> NodeState:
        if self.failures >= MAX_FAILURES:
            return NodeState.BAD
        if self.last_response is None:
            return NodeState.QUESTIONABLE
        last = max(self.last_response, self.last_query or 0.0)
        return NodeState.GOOD if now - last < GOOD_FOR else NodeState.QUESTIONABLE

    @property
    def last_seen(self) -> float:
        return max(self.last_response or 0.0, self.last_query or 0.0)

    def info(self) -> NodeInfo:
        return NodeInfo(self.id, self.addr)


@mutable(slots=True)
class Bucket(Record):
    """The nodes whose ids fall in ``[lo, hi)``."""

    lo: int
    hi: int
    last_changed: float
    nodes: list[Entry] = field(default_factory=list)
    replacements: list[Entry] = field(default_factory=list)

    def covers(self, value: int) -> bool:
        return self.lo <= value < self.hi


class RoutingTable:
    """The k-bucket table around ``own_id``; ``own_addrs`` (IP literals) are refused as nodes."""

    def __init__(
        self, own_id: bytes, *, now: float = 0.0, own_addrs: frozenset[str] = frozenset(),
        k: int = K,
    ) -> None:  # fmt: skip
        if len(own_id) != ID_LEN:
            raise ValueError("a node id is 20 bytes")
        self.own_id = own_id
        self.own_addrs = own_addrs
        self.k = k
        self.buckets = [Bucket(0, 1 << ID_BITS, now)]
        self._by_id: dict[bytes, Entry] = {}
        self._by_addr: dict[Addr, Entry] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def _bucket(self, node_id: bytes) -> Bucket:
        value = id_int(node_id)
        for b in self.buckets:
            if b.covers(value):
                return b
        raise AssertionError("the buckets cover the whole id space")

    def refuses(self, node_id: bytes, addr: Addr) -> str | None:
        """Why ``(node_id, addr)`` may not enter the table, or None."""
        if len(node_id) != ID_LEN:
            return "id is not 20 bytes"
        if node_id == self.own_id:
            return "our own id"
        if not 0 < addr[1] < 65536:
            return f"port {addr[1]}"
        if addr[0] in self.own_addrs:
            return "our own address"
        try:
            ip = ipaddress.ip_address(addr[0])
        except ValueError:
            return "not an IP address"
        if ip.is_multicast or ip.is_unspecified or str(ip) == "255.255.255.255":
            return "not a unicast address"
        return None

    def add_unverified(self, node: NodeInfo, now: float) -> Outcome:
        """Put a node we have not heard from (a saved table's) where there is room; it stays
        questionable until it answers, and never pushes anyone into the replacement cache."""
        if self.refuses(node.id, node.addr) is not None:
            return "rejected"
        if node.id in self._by_id or node.addr in self._by_addr:
            return "rejected"
        return self._insert(Entry(node.id, node.addr), now)

    def get(self, node_id: bytes) -> Entry | None:
        return self._by_id.get(node_id)

    def knows(self, addr: Addr) -> bool:
        """A node at ``addr`` is in the table (its replacement caches not included)."""
        return addr in self._by_addr

    def heard_from(self, node_id: bytes, addr: Addr, now: float, *, responded: bool) -> Outcome:
        """A message from ``node_id`` at ``addr``: an answer to our query when ``responded``."""
        if self.refuses(node_id, addr) is not None:
            return "rejected"
        entry = self._by_id.get(node_id)
        other = self._by_addr.get(addr)
        # An id that moved, or an address that changed its id: keep what we have unless
        # it went bad (a forged source cannot take a live node's place).
        stale = [e for e in (entry, other) if e is not None and (e.id, e.addr) != (node_id, addr)]
        if any(e.state(now) is not NodeState.BAD for e in stale):
            return "rejected"
        for e in stale:
            self._remove(e)
        if entry in stale:
            entry = None
        if entry is None:
            for cached in self._bucket(node_id).replacements:
                if cached.id == node_id and cached.addr == addr:
                    entry = cached
                    break
        if entry is not None:
            self._touch(entry, now, responded)
            if entry.id in self._by_id:
                self._bucket(node_id).last_changed = now
                return "updated"
            return self._insert(entry, now)
        entry = Entry(node_id, addr)
        self._touch(entry, now, responded)
        return self._insert(entry, now)

    @staticmethod
    def _touch(entry: Entry, now: float, responded: bool) -> None:
        if responded:
            entry.last_response = now
            entry.failures = 0
        else:
            entry.last_query = now

    def _insert(self, entry: Entry, now: float) -> Outcome:
        while True:
            bucket = self._bucket(entry.id)
            if entry in bucket.replacements:
                bucket.replacements.remove(entry)
            if len(bucket.nodes) < self.k:
                bucket.nodes.append(entry)
                self._by_id[entry.id] = entry
                self._by_addr[entry.addr] = entry
                bucket.last_changed = now
                return "added"
            bad = [e for e in bucket.nodes if e.state(now) is NodeState.BAD]
            if bad:
                self._remove(bad[0])
                continue
            if bucket.covers(id_int(self.own_id)) and bucket.hi - bucket.lo > 1:
                self._split(bucket)
                continue
            # Full of good or questionable nodes: wait in the cache, newest last.
            if entry.last_response is None and entry.last_query is None:
                return "rejected"
            cache = [e for e in bucket.replacements if e.id != entry.id and e.addr != entry.addr]
            cache.append(entry)
            bucket.replacements = cache[-REPLACEMENTS:]
            return "cached"

    def _split(self, bucket: Bucket) -> None:
        mid = (bucket.lo + bucket.hi) // 2
        low = Bucket(bucket.lo, mid, bucket.last_changed)
        high = Bucket(mid, bucket.hi, bucket.last_changed)
        for e in bucket.nodes:
            (low if low.covers(id_int(e.id)) else high).nodes.append(e)
        for e in bucket.replacements:
            (low if low.covers(id_int(e.id)) else high).replacements.append(e)
        i = self.buckets.index(bucket)
        self.buckets[i : i + 1] = [low, high]

    def _remove(self, entry: Entry) -> None:
        bucket = self._bucket(entry.id)
        if entry in bucket.nodes:
            bucket.nodes.remove(entry)
        self._by_id.pop(entry.id, None)
        if self._by_addr.get(entry.addr) is entry:
            del self._by_addr[entry.addr]

    def failed(self, addr: Addr, now: float) -> None:
        """A query to ``addr`` went unanswered; a node that turns bad is replaced at once
        by the most recently seen node of its bucket's replacement cache."""
        entry = self._by_addr.get(addr)
        if entry is None:
            return
        entry.failures += 1
        if entry.state(now) is not NodeState.BAD:
            return
        bucket = self._bucket(entry.id)
        if bucket.replacements:
            self._remove(entry)
            newcomer = bucket.replacements.pop()
            self._insert(newcomer, now)

    def questionable_to_ping(self, now: float) -> list[NodeInfo]:
        """In each full bucket with someone waiting in its cache, the least recently seen
        questionable node: pinging it tells whether it keeps its place."""
        out: list[NodeInfo] = []
        for b in self.buckets:
            if len(b.nodes) >= self.k and b.replacements:
                q = [e for e in b.nodes if e.state(now) is NodeState.QUESTIONABLE]
                if q:
                    out.append(min(q, key=lambda e: e.last_seen).info())
        return out

    def refresh_due(self, now: float, rng: random.Random, limit: int = ID_BITS) -> list[bytes]:
        """A random target in each bucket (at most ``limit``) not changed for
        ``REFRESH_AFTER``; those buckets count as refreshed."""
        out: list[bytes] = []
        for b in self.buckets:
            if len(out) < limit and now - b.last_changed >= REFRESH_AFTER:
                out.append(random_id(rng, b.lo, b.hi))
                b.last_changed = now
        return out

    def next_refresh(self) -> float:
        return min(b.last_changed for b in self.buckets) + REFRESH_AFTER

    def closest(self, target: bytes, n: int = K, *, family: int | None = None) -> list[NodeInfo]:
        """The ``n`` nodes closest to ``target``, bad ones left out (and, with ``family`` 4
        or 6, nodes of the other address family)."""
        t = id_int(target)
        nodes = [
            e for e in self._by_id.values()
            if e.failures < MAX_FAILURES
            and (family is None or ipaddress.ip_address(e.addr[0]).version == family)
        ]  # fmt: skip
        nodes.sort(key=lambda e: id_int(e.id) ^ t)
        return [e.info() for e in nodes[:n]]

    def entries(self) -> list[Entry]:
        return [e for b in self.buckets for e in b.nodes]

    # ---- persistence ----

    def save(self) -> bytes:
        """The table as bytes (our id, then compact IPv4 and IPv6 nodes, good ones first)."""
        order = sorted(self._by_id.values(), key=lambda e: (e.failures, -e.last_seen))
        v4 = [e for e in order if ipaddress.ip_address(e.addr[0]).version == 4]
        v6 = [e for e in order if ipaddress.ip_address(e.addr[0]).version == 6]
        return bencode.encode({
            b"id": self.own_id,
            b"nodes": b"".join(e.id + pack_addr(e.addr) for e in v4),
            b"nodes6": b"".join(e.id + pack_addr(e.addr) for e in v6),
        })  # fmt: skip


SAVE_FORMAT_MAX: Final = 64 + MAX_SAVED * 40


def load_saved(data: bytes) -> tuple[bytes, list[NodeInfo]]:
    """Our id and the nodes of a :meth:`RoutingTable.save`, or :class:`BadSavedTable`."""
    try:
        top = bencode.decode(data, max_size=SAVE_FORMAT_MAX * 2, max_depth=2)
    except BencodeError as exc:
        raise BadSavedTable(f"not a saved DHT table: {exc.reason}") from None
    if not isinstance(top, dict):
        raise BadSavedTable("not a saved DHT table: not a dictionary")
    own = top.get(b"id")
    if not isinstance(own, bytes) or len(own) != ID_LEN:
        raise BadSavedTable("not a saved DHT table: no 20-byte id")
    nodes: list[NodeInfo] = []
    for key, size in ((b"nodes", 26), (b"nodes6", 38)):
        raw = top.get(key, b"")
        if not isinstance(raw, bytes) or len(raw) % size:
            raise BadSavedTable(f"not a saved DHT table: bad {key.decode()!r}")
        for pos in range(0, len(raw), size):
            if len(nodes) >= MAX_SAVED:
                break
            nodes.append(
                NodeInfo(raw[pos : pos + ID_LEN], unpack_addr(raw[pos + ID_LEN : pos + size]))
            )
    return own, nodes
