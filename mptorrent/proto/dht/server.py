"""The good citizen: answers to other nodes' ``ping``, ``find_node``, ``get_peers`` and
``announce_peer``.

- **Tokens** are the first 8 bytes of SHA-1(secret + the asker's IP).  The secret rotates
  every ``TOKEN_ROTATION`` (5 minutes) and the previous one is still accepted, so a
  token is good for 5 to 10 minutes, and only from the address it was given to.
- **Peer store**: an announced peer expires ``PEER_TTL`` (30 minutes) after its last
  announce (never handed out after that; swept out at most a minute later).  At most
  ``MAX_PEERS_PER_HASH`` (100) peers per info-hash, ``MAX_HASHES`` (2,000) info-hashes
  and ``MAX_PEERS_TOTAL`` (20,000) peers in all: when full, new announces are
  acknowledged but not stored (choice: a flood cannot evict the peers already there);
  a ``get_peers`` answer carries at most ``MAX_VALUES_REPLY`` (50).
- **Rate limit** per source IP: a bucket of ``RATE_BURST`` (20) queries refilled at
  ``RATE_PER_SECOND`` (5/s); queries over it are dropped unanswered.  At most
  ``MAX_SOURCES`` (5,000) sources are tracked, the least recently seen forgotten first.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Final

from mptorrent.proto.dht.krpc import (
    GENERIC_ERROR,
    PROTOCOL_ERROR,
    Addr,
    AnnouncePeer,
    Error,
    FindNode,
    GetPeers,
    NodeInfo,
    Ping,
    Query,
    Response,
)
from mptorrent.record import Record, mutable

TOKEN_ROTATION: Final = 5 * 60.0
TOKEN_LEN: Final = 8
PEER_TTL: Final = 30 * 60.0
MAX_PEERS_PER_HASH: Final = 100
MAX_HASHES: Final = 2000
MAX_PEERS_TOTAL: Final = 20_000
MAX_VALUES_REPLY: Final = 50
RATE_BURST: Final = 20.0
RATE_PER_SECOND: Final = 5.0
MAX_SOURCES: Final = 5000
SWEEP_EVERY: Final = 60.0  # how often the peer store drops expired peers

# Given a target and an address family (4 or 6), the nodes to name in a reply.
Closest = Callable[[bytes, int], list[NodeInfo]]


@mutable(slots=True)
class _Allowance(Record):
    tokens: float
    at: float


class PeerStore:
    """Announced peers per info-hash, with expiry and the caps above."""

    def __init__(
        self, *, per_hash: int = MAX_PEERS_PER_HASH, hashes: int = MAX_HASHES,
        total: int = MAX_PEERS_TOTAL, ttl: float = PEER_TTL,
    ) -> None:  # fmt: skip
        self.per_hash = per_hash
        self.hashes = hashes
        self.total = total
        self.ttl = ttl
        self._peers: dict[bytes, dict[Addr, float]] = {}  # info-hash -> peer -> expiry
        self._count = 0
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return self._count

    def add(self, info_hash: bytes, peer: Addr, now: float) -> bool:
        """Store or refresh ``peer``; False when a cap refuses it."""
        if now >= self._next_sweep:  # a sweep costs the whole store: once a minute at most
            self.expire(now)
            self._next_sweep = now + SWEEP_EVERY
        peers = self._peers.get(info_hash)
        if peers is not None and peer in peers:
            peers[peer] = now + self.ttl
            return True
        if self._count >= self.total:
            return False
        if peers is None:
            if len(self._peers) >= self.hashes:
                return False
            peers = self._peers[info_hash] = {}
        if len(peers) >= self.per_hash:
            return False
        peers[peer] = now + self.ttl
        self._count += 1
        return True

    def get(self, info_hash: bytes, now: float, n: int = MAX_VALUES_REPLY) -> list[Addr]:
        """Up to ``n`` live peers of ``info_hash``, the most recently announced first."""
        peers = self._peers.get(info_hash, {})
        live = sorted((e, p) for p, e in peers.items() if e > now)
        return [p for _, p in reversed(live[-n:])]

    def expire(self, now: float) -> None:
        for info_hash in list(self._peers):
            peers = self._peers[info_hash]
            for peer in [p for p, e in peers.items() if e <= now]:
                del peers[peer]
                self._count -= 1
            if not peers:
                del self._peers[info_hash]


class Server:
    """Answers queries for the node ``own_id``; ``closest`` names nodes from its table."""

    def __init__(
        self, own_id: bytes, closest: Closest, *, rng: random.Random, now: float = 0.0,
        store: PeerStore | None = None,
    ) -> None:  # fmt: skip
        self.own_id = own_id
        self.closest = closest
        self.rng = rng
        self.store = store if store is not None else PeerStore()
        self._secret = rng.randbytes(16)
        self._previous = self._secret
        self._rotated = now
        self._sources: dict[str, _Allowance] = {}
        self.dropped = 0  # queries refused by the rate limit

    # ---- tokens ----

    def _rotate(self, now: float) -> None:
        if now - self._rotated >= TOKEN_ROTATION:
            # Two periods or more without a query: both old secrets are stale.
            self._previous = self._secret if now - self._rotated < 2 * TOKEN_ROTATION else b""
            self._secret = self.rng.randbytes(16)
            self._rotated = now

    @staticmethod
    def _token(secret: bytes, ip: str) -> bytes:
        return hashlib.sha1(secret + ip.encode()).digest()[:TOKEN_LEN]

    def token_for(self, ip: str, now: float) -> bytes:
        self._rotate(now)
        return self._token(self._secret, ip)

    def token_valid(self, token: bytes, ip: str, now: float) -> bool:
        self._rotate(now)
        return token in {self._token(s, ip) for s in (self._secret, self._previous) if s}

    # ---- rate limit ----

    def allow(self, ip: str, now: float) -> bool:
        """One more query from ``ip``; False when it is over its rate."""
        a = self._sources.pop(ip, None)
        if a is None:
            if len(self._sources) >= MAX_SOURCES:
                del self._sources[next(iter(self._sources))]
            a = _Allowance(RATE_BURST, now)
        a.tokens = min(RATE_BURST, a.tokens + max(0.0, now - a.at) * RATE_PER_SECOND)
        a.at = now
        self._sources[ip] = a  # re-inserted: the dict's order is least recently seen first
        if a.tokens < 1.0:
            self.dropped += 1
            return False
        a.tokens -= 1.0
        return True

    # ---- answers ----

    def handle(self, query: Query, addr: Addr, now: float) -> Response | Error | None:
        """The answer to ``query`` from ``addr``, or None when the rate limit drops it."""
        if not self.allow(addr[0], now):
            return None
        family = 6 if ":" in addr[0] else 4
        match query:
            case Ping():
                return Response(query.tid, self.own_id)
            case FindNode():
                return self._nodes_reply(query.tid, query.target, family)
            case GetPeers():
                values = tuple(self.store.get(query.info_hash, now))
                nodes = self._nodes_reply(query.tid, query.info_hash, family)
                token = self.token_for(addr[0], now)
                return Response(query.tid, self.own_id, nodes.nodes, nodes.nodes6, values, token)
            case AnnouncePeer():
                if not self.token_valid(query.token, addr[0], now):
                    return Error(query.tid, PROTOCOL_ERROR, b"bad token")
                port = addr[1] if query.implied_port else query.port
                if port == 0:
                    return Error(query.tid, PROTOCOL_ERROR, b"port 0")
                self.store.add(query.info_hash, (addr[0], port), now)
                return Response(query.tid, self.own_id)
        return Error(query.tid, GENERIC_ERROR, b"unexpected")  # pragma: no cover

    def _nodes_reply(self, tid: bytes, target: bytes, family: int) -> Response:
        found = self.closest(target, family)
        if family == 6:
            return Response(tid, self.own_id, nodes6=tuple(found))
        return Response(tid, self.own_id, nodes=tuple(found))
