"""The metadata phase of a magnet link: find peers, fetch the info dictionary, verify it.

It runs in the coordinator's process before any worker starts (docs/architecture.md):
the piece queues need the piece count, which only the metadata gives.  One thread, one
``selectors`` loop over non-blocking sockets:

* peers come from the magnet's ``x.pe``, ``--peer`` and its ``tr`` trackers (announced
  through :class:`~mptorrent.netio.announcer.Announcer` with the info-hash alone; the
  answers arrive on a queue);
* up to ``max_connections`` are dialled at once; each gets our handshake with the BEP 10
  bit, then our extended handshake (``ut_metadata`` only); with the DHT on, the handshake
  has BEP 5's bit too, a peer that sets it is sent our node's port, and the node a peer
  names in its ``port`` message goes to our DHT to be pinged;
* a peer whose extended handshake announces ``metadata_size`` joins the
  :class:`~mptorrent.proto.ext.ut_metadata.MetadataAssembler` for that size (one
  assembler per distinct size, so a peer lying about the size cannot stall the honest
  ones), which says what to ask whom, times requests out and checks the SHA-1 of the
  whole dictionary; a peer that sent a piece that cannot be right, or metadata that does
  not verify, is dropped (when several peers fed a round that failed, the pieces each
  sent are compared with the dictionary that verifies later).

The result is the verified info dictionary, exactly as received, and the peers found
(those that answered first), so the download can begin with them.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import queue
import selectors
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import field
from typing import TYPE_CHECKING, Final

from mptorrent import events as ev
from mptorrent.errors import MetadataTimeout, NoPeers
from mptorrent.messages import PeerAddr
from mptorrent.netio.announcer import Announcer, TierResult, redact
from mptorrent.proto import metainfo, tracker, wire
from mptorrent.proto.ext import ExtendedHandshake, ExtensionRouter
from mptorrent.proto.ext.ut_metadata import (
    METADATA_PIECE,
    NAME,
    REQUEST_TIMEOUT,
    MetadataAssembler,
    MetadataMismatch,
    MetadataPieceReceived,
    MetadataRejected,
    MetadataRequested,
    MetadataVerified,
    PieceRefused,
    PieceStored,
    UtMetadata,
    encode_request,
    serve_request,
)
from mptorrent.proto.magnet import Magnet, torrent_from_metadata
from mptorrent.proto.merkle import HashRange, LayerFetch
from mptorrent.record import Record, frozen, mutable

if TYPE_CHECKING:
    from mptorrent.netio.dht import Dht

METADATA_TIMEOUT: Final = 60.0  # seconds for the whole phase (the CLI's default)
MAX_CONNECTIONS: Final = 30  # dialled at once
CONNECT_TIMEOUT: Final = 5.0
HANDSHAKE_TIMEOUT: Final = 10.0  # from connected to the peer's extended handshake
REDIAL_AFTER: Final = 3.0  # everyone tried and failed: dial the known peers again after this
MAX_SIZES: Final = 4  # distinct metadata_size claims followed at once
MAX_HASH_ASKS: Final = 4  # BEP 52 hash requests outstanding per peer (v2 piece layers)
RECV_SIZE: Final = 64 * 1024
CLIENT: Final = "mptorrent"
# A tracker lists a peer with nothing left as a seed; what is left is unknown yet.
LEFT_UNKNOWN: Final = 1


class _State(enum.Enum):
    """Where one connection is; it only moves forward."""

    CONNECTING = "connecting"
    HANDSHAKING = "handshaking"  # connected; waiting for both of the peer's handshakes
    ACTIVE = "active"  # its extended handshake arrived
    CLOSED = "closed"


@mutable(eq=False)
class _Peer(Record):
    """One outgoing connection of the metadata phase."""

    addr: PeerAddr
    sock: socket.socket
    conn: wire.Connection
    router: ExtensionRouter
    ut: UtMetadata
    deadline: float
    state: _State = _State.CONNECTING
    out: bytearray = field(default_factory=bytearray)
    size: int | None = None  # the metadata_size it announced, once it did
    port_sent: bool = False  # our DHT port went out (BEP 5)
    port_heard: bool = False  # its DHT port was handed to our node (once per connection)

    def send(self, event: wire.Event) -> None:
        self.out += self.conn.send(event)


@frozen
class MetadataResult(Record):
    """What the metadata phase found."""

    info: bytes  # the info dictionary exactly as received; its SHA-1 is the info-hash
    meta: metainfo.Metainfo  # the torrent it makes with the magnet's trackers
    peers: tuple[PeerAddr, ...]  # peers found, those that answered us first
    seconds: float
    sources: Mapping[PeerAddr, ev.PeerSource] = field(default_factory=dict)  # of ``peers``
    # BEP 52: the piece layers of a v2 torrent, fetched with hash requests (the info dict
    # has none); for --save-torrent's file.
    piece_layers: tuple[tuple[bytes, bytes], ...] = ()


class MetadataFetch:
    """One run of the metadata phase; :meth:`run` it once."""

    def __init__(
        self,
        magnet: Magnet,
        *,
        peers: Iterable[PeerAddr] = (),
        use_trackers: bool = True,
        port: int = 6881,
        bind: str | None = None,
        timeout: float = METADATA_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        events: ev.EventSink = ev.ignore,
        announce_stopped: bool = False,
        request_timeout: float = REQUEST_TIMEOUT,
        dht: bool = False,
        dht_bootstrap: tuple[tuple[str, int], ...] = (),
        dht_port: int | None = None,
    ) -> None:
        self.magnet = magnet
        self.request_timeout = request_timeout
        # BEP 52: once a v2-only info dict is verified, its piece layers are fetched from the
        # same peers before the phase ends (a torrent without them cannot check a piece).
        self.verified: MetadataVerified[PeerAddr] | None = None
        self.layer_fetch: LayerFetch | None = None
        self.hash_asks: dict[PeerAddr, dict[HashRange, None]] = {}
        self.info_hash = magnet.info_hash
        self.timeout = timeout
        self.max_connections = max_connections
        self.emit = events
        self.announce_stopped = announce_stopped
        self.source = None if bind in (None, "0.0.0.0", "::") else bind
        self.peer_id = tracker.make_peer_id()
        self.known: dict[PeerAddr, ev.PeerSource] = {}  # every address heard of, in order
        self.answered: dict[PeerAddr, None] = {}  # those that completed the handshake
        self.dropped: set[PeerAddr] = set()  # sent metadata that cannot be right
        self.pending: list[PeerAddr] = []  # to dial
        self.conns: dict[socket.socket, _Peer] = {}
        self.assemblers: dict[int, MetadataAssembler[PeerAddr]] = {}
        # SHA-1 of each metadata piece a peer sent that was kept, to find the liars of a
        # round that did not verify once a later one does.
        self._sent: dict[tuple[PeerAddr, int], bytes] = {}
        self.sel = selectors.DefaultSelector()
        self.results: queue.Queue[TierResult] = queue.Queue()
        # A tracker's answer wakes the loop at once, not at its next time-out.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self.announcer: Announcer | None = None
        self.trackers_busy = 0
        if use_trackers and magnet.trackers:
            self.announcer = Announcer(
                magnet.tiers, info_hash=magnet.info_hash, peer_id=self.peer_id, port=port or 6881,
                source_address=self.source, exclude=[(self.source, port)] if self.source else [],
            )  # fmt: skip
            if not self.announcer:
                self.announcer = None
        self._learn([*magnet.peers, *peers], "manual")
        # The DHT only looks here: nothing listens on our port during this phase.
        self.dht: Dht | None = None
        self.dht_found: queue.Queue[tuple[PeerAddr, ...]] = queue.Queue()
        if dht:
            from mptorrent.netio.dht import Dht  # only when the DHT is on

            self.dht = Dht(
                bind=bind or "0.0.0.0", port=dht_port if dht_port is not None else port,
                bootstrap=dht_bootstrap, on_peers=self._on_dht,
            )  # fmt: skip

    # -- peers ------------------------------------------------------------------------

    def _learn(self, addrs: Iterable[PeerAddr], source: ev.PeerSource) -> None:
        for addr in addrs:
            if addr not in self.known and addr not in self.dropped:
                self.known[addr] = source
                self.pending.append(addr)

    def _on_tracker(self, result: TierResult) -> None:
        self.results.put(result)  # from an announce thread: handled by the loop
        try:
            self._wake_w.send(b"!")
        except OSError:
            pass  # the phase is over

    def _on_dht(self, _info_hash: bytes, peers: tuple[PeerAddr, ...]) -> None:
        self.dht_found.put(peers)  # from the DHT thread: handled by the loop
        try:
            self._wake_w.send(b"!")
        except OSError:
            pass  # the phase is over

    def _drain_dht(self) -> None:
        while True:
            try:
                self._learn(self.dht_found.get_nowait(), "dht")
            except queue.Empty:
                return

    def _drain_trackers(self) -> None:
        while True:
            try:
                result = self.results.get_nowait()
            except queue.Empty:
                return
            self.trackers_busy -= 1
            if result.url is None:
                if result.errors:
                    one = len(set(result.failed)) == 1  # else the message names each
                    url = result.failed[0] if one else None
                    self.emit(ev.TrackerError("; ".join(result.errors), url))
                continue
            self.emit(
                ev.TrackerReply(
                    redact(result.url), result.tier, result.event, len(result.peers),
                    result.interval, result.complete, result.incomplete, result.warning,
                )
            )  # fmt: skip
            self._learn(result.peers, "tracker")

    def _announce(self, now: float, first: bool) -> None:
        if self.announcer is None:
            return
        if first:
            threads = self.announcer.announce(
                event=None, left=LEFT_UNKNOWN, on_result=self._on_tracker, now=now
            )
        else:
            threads = self.announcer.maybe_reannounce(
                now, peers_low=True, left=LEFT_UNKNOWN, on_result=self._on_tracker
            )
        self.trackers_busy += len(threads)

    # -- connections ------------------------------------------------------------------

    def _dial(self, addr: PeerAddr, now: float) -> None:
        family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.source and (":" in self.source) == (family == socket.AF_INET6):
                sock.bind((self.source, 0))
            err = sock.connect_ex((addr.host, addr.port))
            if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                raise OSError(err, errno.errorcode.get(err, "connect failed"))
        except OSError:
            sock.close()
            return
        ut = UtMetadata()
        router = ExtensionRouter([ut], client=CLIENT)
        peer = _Peer(
            addr, sock, wire.Connection(self.info_hash, extensions=router), router, ut,
            deadline=now + CONNECT_TIMEOUT,
        )  # fmt: skip
        self.conns[sock] = peer
        self.sel.register(sock, selectors.EVENT_WRITE, peer)

    def _close(self, peer: _Peer) -> None:
        if peer.state is _State.CLOSED:
            return
        peer.state = _State.CLOSED
        self.conns.pop(peer.sock, None)
        try:
            self.sel.unregister(peer.sock)
        except (KeyError, ValueError):
            pass
        peer.sock.close()
        asm = self.assemblers.get(peer.size) if peer.size is not None else None
        if asm is not None:
            asm.remove_peer(peer.addr)
        if self.layer_fetch is not None:
            self.layer_fetch.forget(peer.addr)
            self.hash_asks.pop(peer.addr, None)

    def _drop(self, addr: PeerAddr) -> None:
        """``addr`` sent metadata that cannot be right: closed, and not given to the download."""
        self.dropped.add(addr)
        self.known.pop(addr, None)
        self.answered.pop(addr, None)
        for peer in list(self.conns.values()):
            if peer.addr == addr:
                self._close(peer)

    def _connected(self, peer: _Peer, now: float) -> None:
        err = peer.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._close(peer)
            return
        peer.state = _State.HANDSHAKING
        peer.deadline = now + HANDSHAKE_TIMEOUT
        reserved = wire.EXTENSION_RESERVED
        if self.dht is not None:  # BEP 5: our node runs, peers may tell us theirs
            reserved = bytes(a | b for a, b in zip(reserved, wire.DHT_RESERVED, strict=True))
        peer.send(wire.Handshake(self.info_hash, self.peer_id, reserved))

    def _flush(self, peer: _Peer) -> None:
        if peer.out and peer.state is not _State.CLOSED:
            try:
                n = peer.sock.send(peer.out)
            except BlockingIOError:
                n = 0
            except OSError:
                self._close(peer)
                return
            del peer.out[:n]
        if peer.state is not _State.CLOSED:
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if peer.out else 0)
            self.sel.modify(peer.sock, want, peer)

    def _readable(self, peer: _Peer, now: float) -> MetadataVerified[PeerAddr] | None:
        buf = peer.conn.get_buffer(RECV_SIZE)
        try:
            n = peer.sock.recv_into(buf)
        except BlockingIOError:
            return None
        except OSError:
            n = 0
        finally:
            buf.release()
        if n == 0:
            self._close(peer)
            return None
        peer.conn.buffer_updated(n)
        try:
            while (event := peer.conn.next_event()) is not wire.NEED_DATA:
                done = self._on_event(peer, event, now)
                if done is not None or peer.state is _State.CLOSED:
                    return done
        except wire.RemoteProtocolError:
            self._close(peer)
        return None

    def _on_event(
        self, peer: _Peer, event: wire.Event, now: float
    ) -> MetadataVerified[PeerAddr] | None:
        match event:
            case wire.Handshake():
                if event.info_hash != self.info_hash or not event.extensions:
                    self._close(peer)  # without BEP 10 it cannot give metadata
                    return None
                self.answered.setdefault(peer.addr, None)
                peer.send(peer.router.handshake())
                if event.dht:
                    self._send_port(peer)
            case ExtendedHandshake():
                peer.state = _State.ACTIVE
                size = peer.ut.metadata_size
                if peer.size is None and peer.ut.peer_id and size is not None:
                    asm = self.assemblers.get(size)
                    if asm is None and len(self.assemblers) < MAX_SIZES:
                        asm = self.assemblers[size] = MetadataAssembler(
                            self.info_hash, size, timeout=self.request_timeout,
                            info_hash_v2=self.magnet.info_hash_v2,
                        )  # fmt: skip
                    if asm is not None and asm.add_peer(peer.addr, size):
                        peer.size = size
                if peer.size is None:
                    # It has no metadata to give (or not of a size we follow): its slot is
                    # worth more to another peer.  The download may still use it.
                    self._close(peer)
            case MetadataPieceReceived():
                asm = self.assemblers.get(peer.size) if peer.size is not None else None
                if asm is None:
                    return None
                outcome = asm.received(peer.addr, event.piece, event.total_size, event.data)
                match outcome:
                    case MetadataVerified():
                        self._drop_liars(outcome.info)
                        return self._verified(outcome)
                    case PieceStored():
                        self._sent[peer.addr, event.piece] = hashlib.sha1(event.data).digest()
                    case PieceRefused():
                        self._drop(peer.addr)
                    case MetadataMismatch(culprit=culprit):
                        self._sent[peer.addr, event.piece] = hashlib.sha1(event.data).digest()
                        if culprit is not None:
                            self._drop(culprit)
            case MetadataRejected():
                asm = self.assemblers.get(peer.size) if peer.size is not None else None
                if asm is not None:
                    asm.rejected(peer.addr, event.piece)
            case wire.Hashes() if self.layer_fetch is not None:
                req = HashRange(event.root, event.base, event.index, event.count,
                                event.proof_layers)  # fmt: skip
                self.hash_asks.get(peer.addr, {}).pop(req, None)
                if not self.layer_fetch.received(peer.addr, req, event.hashes):
                    self._close(peer)  # a wrong proof, or hashes nobody asked for
                elif self.layer_fetch.complete:
                    return self.verified
            case wire.HashReject() if self.layer_fetch is not None:
                req = HashRange(event.root, event.base, event.index, event.count,
                                event.proof_layers)  # fmt: skip
                self.hash_asks.get(peer.addr, {}).pop(req, None)
                self.layer_fetch.rejected(peer.addr, req)
            case MetadataRequested() if peer.router.peer_supports(NAME):
                peer.send(peer.router.message(NAME, serve_request(None, event.piece)))
            case wire.Port() if self.dht is not None:
                # BEP 5: a node for ours to ping (rate-limited there), once per connection
                self._send_port(peer)
                if event.port and not peer.port_heard:
                    peer.port_heard = True
                    self.dht.add_node(peer.addr.host, event.port)
            case _:
                pass  # bitfields, haves, chokes: kept by the connection for later, or moot
        return None

    def _send_port(self, peer: _Peer) -> None:
        """Our DHT node's port (BEP 5), once per connection."""
        if self.dht is not None and not peer.port_sent:
            peer.port_sent = True
            peer.send(wire.Port(self.dht.port))

    def _drop_liars(self, info: bytes) -> None:
        """Whoever sent a piece of a round that did not verify, and that piece differs from
        the verified dictionary, lied: it is not handed to the download."""
        for (addr, piece), digest in self._sent.items():
            start = piece * METADATA_PIECE
            if hashlib.sha1(info[start : start + METADATA_PIECE]).digest() != digest:
                self.dropped.add(addr)
        for addr in self.dropped:
            self.known.pop(addr, None)
            self.answered.pop(addr, None)

    def _verified(self, done: MetadataVerified[PeerAddr]) -> MetadataVerified[PeerAddr] | None:
        """The metadata verified: done, unless a v2-only torrent's piece layers must follow."""
        meta = metainfo.parse(b"d4:info" + done.info + b"e", missing_layers_ok=True)
        if meta.meta_version != "v2":  # v1, or a hybrid (its v1 hashes check every piece)
            return done
        fetch = LayerFetch(meta.merkle_verifier())
        if fetch.complete:
            return done
        self.verified, self.layer_fetch = done, fetch
        return None

    def _ask_hashes(self) -> None:
        fetch = self.layer_fetch
        assert fetch is not None
        for peer in list(self.conns.values()):
            if peer.state is not _State.ACTIVE:
                continue
            asks = self.hash_asks.setdefault(peer.addr, {})
            while len(asks) < MAX_HASH_ASKS and (req := fetch.next_request(peer.addr)):
                asks[req] = None
                peer.send(wire.HashRequest(req.root, req.base, req.index, req.count,
                                           req.proof_layers))  # fmt: skip

    def _request(self, now: float) -> None:
        if self.layer_fetch is not None:
            self._ask_hashes()
            return
        for peer in list(self.conns.values()):
            if peer.state is not _State.ACTIVE or peer.size is None:
                continue
            asm = self.assemblers.get(peer.size)
            if asm is None:
                continue
            if asm.excluded(peer.addr) or not peer.router.peer_supports(NAME):
                self._close(peer)  # a later extended handshake may turn ut_metadata off
                continue
            for piece in asm.next_requests(peer.addr, now):
                peer.send(peer.router.message(NAME, encode_request(piece)))

    def _expire(self, now: float) -> None:
        for peer in list(self.conns.values()):
            if peer.state in (_State.CONNECTING, _State.HANDSHAKING) and now >= peer.deadline:
                self._close(peer)
        for asm in self.assemblers.values():
            asm.expire(now)

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> MetadataResult:
        """The verified metadata, or :class:`NoPeers` / :class:`MetadataTimeout`."""
        start = time.monotonic()
        self.emit(ev.FetchingMetadata(self.info_hash.hex(), self.magnet.name))
        deadline = start + self.timeout
        self._announce(start, first=True)
        idle_since: float | None = None
        if self.dht is not None:
            self.dht.start()
            self.dht.lookup(self.info_hash, None)
        try:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    raise MetadataTimeout(
                        f"metadata not received within {self.timeout:g} s "
                        f"({len(self.known)} peer(s) known, {len(self.answered)} answered)"
                    )
                self._drain_trackers()
                self._drain_dht()
                while self.pending and len(self.conns) < self.max_connections:
                    self._dial(self.pending.pop(0), now)
                if not self.conns and not self.pending and not self.trackers_busy:
                    if not self.known and (self.dht is None or self.dht.hopeless()):
                        raise NoPeers(self._no_peers_reason())
                    # Everyone known was tried: ask the trackers again, and redial.
                    if idle_since is None:
                        idle_since = now
                    elif now - idle_since >= REDIAL_AFTER:
                        idle_since = None
                        self.pending.extend(self.known)
                        self._announce(now, first=False)
                else:
                    idle_since = None
                self._request(now)
                for peer in list(self.conns.values()):
                    if peer.state is not _State.CONNECTING:
                        self._flush(peer)
                wait = min(0.25, max(0.0, deadline - now))
                for key, mask in self.sel.select(wait):
                    peer = key.data
                    if peer is None:  # the wake-up socket
                        try:
                            self._wake_r.recv(4096)
                        except BlockingIOError:
                            pass
                        continue
                    assert isinstance(peer, _Peer)
                    now = time.monotonic()
                    if peer.state is _State.CONNECTING:
                        if mask & selectors.EVENT_WRITE:
                            self._connected(peer, now)
                            self._flush(peer)
                        continue
                    if peer.state is _State.CLOSED:
                        continue
                    if mask & selectors.EVENT_READ:
                        done = self._readable(peer, now)
                        if done is not None:
                            return self._finish(done, start)
                    if mask & selectors.EVENT_WRITE:
                        self._flush(peer)
                self._expire(time.monotonic())
        finally:
            for peer in list(self.conns.values()):
                self._close(peer)
            self.sel.close()
            self._wake_r.close()
            self._wake_w.close()
            if self.dht is not None:
                self.dht.stop()  # saves the routing table
            if self.announce_stopped and self.announcer is not None:
                self.announcer.announce(event="stopped", left=LEFT_UNKNOWN, wait=2.0)

    def _no_peers_reason(self) -> str:
        # the DHT gives up only when no node answered (Dht.hopeless): say so
        dht = "; no DHT node answered" if self.dht is not None else ""
        if self.announcer is not None:
            return f"no peers: the trackers gave none, and no 'x.pe' or --peer peer was given{dht}"
        why = "trackers are turned off" if self.magnet.trackers else "it names no usable tracker"
        return f"no peers: {why}, the magnet link has no 'x.pe' peer and no --peer was given{dht}"

    def _finish(self, done: MetadataVerified[PeerAddr], start: float) -> MetadataResult:
        seconds = time.monotonic() - start
        layers = self.layer_fetch.layers() if self.layer_fetch is not None else ()
        # A v2-only torrent's layers are all in by now (a hybrid's pieces are checked by SHA-1)
        meta = metainfo.parse(
            torrent_from_metadata(done.info, self.magnet, layers), missing_layers_ok=True
        )
        # Those that answered first, then the rest; none that sent bad metadata.
        order = [*done.peers, *self.answered, *self.known]
        peers = tuple(a for a in dict.fromkeys(order) if a not in self.dropped)
        self.emit(
            ev.MetadataReceived(
                meta.name, meta.total_length, meta.num_pieces, seconds, len(done.peers)
            )
        )
        sources = {a: self.known.get(a, "incoming") for a in peers}
        return MetadataResult(done.info, meta, peers, seconds, sources, layers)


def fetch_metadata(
    magnet: Magnet,
    *,
    peers: Iterable[PeerAddr] = (),
    use_trackers: bool = True,
    port: int = 6881,
    bind: str | None = None,
    timeout: float = METADATA_TIMEOUT,
    events: ev.EventSink = ev.ignore,
    announce_stopped: bool = False,
    request_timeout: float = REQUEST_TIMEOUT,
    dht: bool = False,
    dht_bootstrap: tuple[tuple[str, int], ...] = (),
    dht_port: int | None = None,
) -> MetadataResult:
    """The metadata of ``magnet`` from its peers, ``peers`` and its trackers.

    ``request_timeout`` is how long a peer has to answer one metadata request before
    another is asked.  ``port`` is announced to the trackers (nothing listens on it
    during this phase: the download that follows does).  ``announce_stopped``: tell the
    trackers we left once done (``info MAGNET``, which downloads nothing, or a fetch
    that will listen on another port).
    """
    return MetadataFetch(
        magnet, peers=peers, use_trackers=use_trackers, port=port, bind=bind, timeout=timeout,
        events=events, announce_stopped=announce_stopped, request_timeout=request_timeout,
        dht=dht, dht_bootstrap=dht_bootstrap, dht_port=dht_port,
    ).run()  # fmt: skip
