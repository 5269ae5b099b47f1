"""The DHT node's I/O (BEP 5): one UDP socket and one thread driving a sans-IO
:class:`~mptorrent.proto.dht.node.Node`.

The thread waits in ``select`` until a datagram arrives or the node's next deadline
passes, so it never blocks the download.  The owner (the coordinator, the metadata
phase, the seeder) calls :meth:`Dht.lookup` with an info-hash: a ``get_peers`` search
is started at once and repeated every ``LOOKUP_EVERY`` seconds (sooner while it finds
nobody), announcing our port to the closest nodes.  Peers found are handed to the
``on_peers`` callback from the DHT thread; the owner puts them on its own inbox.

Bootstrap: the addresses given, else the built-in routers.  The built-in list can be
replaced by the ``MPTORRENT_DHT_ROUTERS`` environment variable (``HOST:PORT`` separated
by commas) so that tests can never reach the public routers.  The routing table is saved
on :meth:`Dht.stop` to ``$XDG_CACHE_HOME/mptorrent/dht.dat`` and loaded on start when no
bootstrap address is given.  With ``MPTORRENT_LOOPBACK_ONLY=1`` in the environment,
sending to a non-loopback address raises :class:`NonLoopbackDestination` (the test
suite sets it: a test that forgets to keep its DHT on loopback fails instead of leaking).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from mptorrent.errors import MptorrentError
from mptorrent.messages import PeerAddr
from mptorrent.proto.dht.krpc import Addr
from mptorrent.proto.dht.node import Datagram, Family, LookupDone, Node, PeersFound
from mptorrent.proto.dht.routing import BadSavedTable
from mptorrent.record import Record, mutable

ROUTERS: Final = (
    ("router.bittorrent.com", 6881),
    ("dht.transmissionbt.com", 6881),
    ("router.utorrent.com", 6881),
    ("dht.libtorrent.org", 25401),
)
ROUTERS_ENV: Final = "MPTORRENT_DHT_ROUTERS"
LOOPBACK_ENV: Final = "MPTORRENT_LOOPBACK_ONLY"
LOOKUP_EVERY: Final = 300.0  # seconds between lookups of one info-hash that found peers
LOOKUP_RETRY: Final = 10.0  # ... and between lookups that found none
MAX_WAIT: Final = 0.25  # the thread looks at new requests and the stop flag this often
MAX_QUEUED_NODES: Final = 64  # nodes named by peers waiting for the thread; more are dropped

PeersCallback = Callable[[bytes, tuple[PeerAddr, ...]], None]


class DhtError(MptorrentError):
    """The DHT node cannot run (its UDP socket cannot be bound)."""


class NonLoopbackDestination(MptorrentError):
    """A datagram to a non-loopback address while ``MPTORRENT_LOOPBACK_ONLY`` is set."""


def builtin_routers() -> list[tuple[str, int]]:
    """The routers to bootstrap from when none is given: ``$MPTORRENT_DHT_ROUTERS`` if set."""
    env = os.environ.get(ROUTERS_ENV)
    if env is None:
        return list(ROUTERS)
    out: list[tuple[str, int]] = []
    for item in env.split(","):
        host, _, port = item.strip().rpartition(":")
        if host and port.isdigit():
            out.append((host.strip("[]"), int(port)))
    return out


def state_path() -> Path:
    """Where the routing table is kept between runs."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "mptorrent" / "dht.dat"


def _loopback_only() -> bool:
    return os.environ.get(LOOPBACK_ENV, "") not in ("", "0")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@mutable
class _Wanted(Record):
    announce_port: int | None
    next_at: float = 0.0
    found: int = 0  # peers found by the running lookup


class Dht:
    """One DHT node on a UDP socket of its own, driven by a thread (see the module doc)."""

    def __init__(
        self, *, bind: str = "0.0.0.0", port: int = 6881,
        bootstrap: tuple[tuple[str, int], ...] = (), on_peers: PeersCallback,
        save: bool = True,
    ) -> None:  # fmt: skip
        self.bind = bind
        self.port = port
        self.bootstrap_addrs = bootstrap
        self.on_peers = on_peers
        self.save = save
        self.node: Node | None = None
        self.sock: socket.socket | None = None
        self.error: BaseException | None = None  # what ended the thread, if anything
        self.peers_found = 0
        self.bootstrapped = threading.Event()  # the first bootstrap lookup ended
        self.first_peer_at: float | None = None
        self._wanted: dict[bytes, _Wanted] = {}
        self._pings: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # A byte on this pair wakes the thread's select at once (stop, a new lookup): the
        # owner does not wait out MAX_WAIT (a magnet's metadata phase ends with a stop).
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._t0 = time.monotonic()

    # ---- the owner's side ----

    def start(self) -> None:
        """Bind the socket (another port if ours is taken) and start the thread."""
        family = socket.AF_INET6 if ":" in self.bind else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            try:
                sock.bind((self.bind, self.port))
            except OSError:
                sock.bind((self.bind, 0))  # a busy DHT port is no reason to fail a download
        except OSError as exc:
            sock.close()
            why = f"cannot bind the DHT's UDP socket to {self.bind}: {exc.strerror}"
            raise DhtError(why) from None
        sock.setblocking(False)
        self.sock = sock
        self.port = sock.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="mptorrent-dht", daemon=True)
        self._thread.start()

    def lookup(self, info_hash: bytes, announce_port: int | None) -> None:
        """Look for peers of ``info_hash`` now and every few minutes, announcing
        ``announce_port`` (None: only look)."""
        with self._lock:
            self._wanted[info_hash] = _Wanted(announce_port)
        self._wake()

    def add_node(self, host: str, port: int) -> None:
        """A node a peer told us about (the BEP 5 ``port`` message): a candidate the thread
        pings (:meth:`Node.introduced`: rate-limited, never trusted); at most
        ``MAX_QUEUED_NODES`` wait, the rest are dropped."""
        with contextlib.suppress(ValueError):  # a dual-stack socket's ::ffff:a.b.c.d is IPv4
            mapped = ipaddress.ip_address(host.split("%", 1)[0])
            if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped is not None:
                host = str(mapped.ipv4_mapped)
        with self._lock:
            if len(self._pings) < MAX_QUEUED_NODES:
                self._pings.append((host, port))

    @property
    def table_size(self) -> int:
        return len(self.node.table) if self.node is not None else 0

    def hopeless(self) -> bool:
        """The first bootstrap ended and no node answered: the DHT cannot find peers."""
        return self.bootstrapped.is_set() and self.table_size == 0 and self.peers_found == 0

    def stop(self) -> None:
        """End the thread and save the routing table; re-raise what ended the thread."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for end in (self._wake_r, self._wake_w):
            if end is not None:
                end.close()
        if self.sock is not None:
            self.sock.close()
        node = self.node
        if self.save and node is not None and len(node.table):
            path = state_path()
            with contextlib.suppress(OSError):
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(node.save())
                tmp.replace(path)
        if isinstance(self.error, MptorrentError):
            raise self.error

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (already woken) or closed
            if self._wake_w is not None:
                self._wake_w.send(b"\0")

    # ---- the thread ----

    def _now(self) -> float:
        return time.monotonic() - self._t0

    def _send(self, out: list[Datagram]) -> None:
        assert self.sock is not None
        for data, addr in out:
            if _loopback_only() and not _is_loopback(addr[0]):
                raise NonLoopbackDestination(
                    f"DHT datagram to {addr[0]}:{addr[1]} refused ({LOOPBACK_ENV} is set)"
                )
            with contextlib.suppress(OSError):  # unreachable nodes are the norm
                self.sock.sendto(data, addr)

    def _resolve(self, hosts: list[tuple[str, int]], family: int) -> list[Addr]:
        out: list[Addr] = []
        for host, port in hosts:
            try:
                infos = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
            except OSError:
                continue
            for info in infos[:2]:
                out.append((str(info[4][0]), int(info[4][1])))
        return out

    def _make_node(self, family: int) -> Node:
        own = frozenset({self.bind}) if self.bind not in ("0.0.0.0", "::") else frozenset()
        fam: Family = 6 if family == socket.AF_INET6 else 4
        if not self.bootstrap_addrs:
            with contextlib.suppress(OSError, BadSavedTable):
                return Node.load(state_path().read_bytes(), now=self._now(), own_addrs=own,
                                 family=fam)  # fmt: skip
        return Node(os.urandom(20), now=self._now(), own_addrs=own, family=fam)

    def _run(self) -> None:
        try:
            self._drive()
        except BaseException as exc:
            self.error = exc
            self.bootstrapped.set()

    def _drive(self) -> None:
        sock, wake = self.sock, self._wake_r
        assert sock is not None and wake is not None
        node = self.node = self._make_node(sock.family)
        routers = self._resolve(list(self.bootstrap_addrs) or builtin_routers(), sock.family)
        self._send(node.bootstrap(routers, self._now()))
        while not self._stop.is_set():
            now = self._now()
            self._start_lookups(node, now)
            wait = min(MAX_WAIT, max(0.0, node.next_deadline() - now))
            readable, _, _ = select.select([sock, wake], [], [], wait)
            if wake in readable:
                with contextlib.suppress(OSError):
                    wake.recv(4096)
                readable.remove(wake)
            if readable:
                for _ in range(64):
                    try:
                        data, src = sock.recvfrom(65536)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break
                    self._send(node.datagram_received(data, (src[0], src[1]), self._now()))
            now = self._now()
            if node.next_deadline() <= now:
                self._send(node.timers(now))
            self._events(node)

    def _start_lookups(self, node: Node, now: float) -> None:
        with self._lock:
            pings, self._pings[:] = list(self._pings), []
            due = [(ih, w) for ih, w in self._wanted.items() if w.next_at <= now]
            for _ih, w in due:
                w.next_at = float("inf")  # until its LookupDone says when to look again
                w.found = 0
        for host, port in pings:
            # a peer's word is no reason to leave home: under MPTORRENT_LOOPBACK_ONLY a
            # non-loopback node is not pinged (nor an error: the test did not choose it)
            if _is_loopback(host) or not _loopback_only():
                self._send(node.introduced((host, port), now)[1])
        for ih, w in due:
            self._send(node.start_lookup(ih, now, announce_port=w.announce_port))

    def _events(self, node: Node) -> None:
        for event in node.take_events():
            match event:
                case PeersFound(info_hash, peers):
                    addrs = tuple(PeerAddr(h, p) for h, p in peers if p)
                    if addrs:
                        if self.first_peer_at is None:
                            self.first_peer_at = time.monotonic()
                        self.peers_found += len(addrs)
                        with self._lock:
                            w = self._wanted.get(info_hash)
                            if w is not None:
                                w.found += len(addrs)
                        self.on_peers(info_hash, addrs)
                case LookupDone(target, kind, _peers, _queries, _announced):
                    if kind == "find_node":
                        self.bootstrapped.set()
                        continue
                    with self._lock:
                        w = self._wanted.get(target)
                        if w is not None:
                            again = LOOKUP_EVERY if w.found else LOOKUP_RETRY
                            w.next_at = self._now() + again
