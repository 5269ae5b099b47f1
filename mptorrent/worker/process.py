"""A worker process: peer connections, block requests, SHA-1, writes to the mmap.

Loop: take a piece from the shared work queue -> request its 16 KiB blocks from
peers that have it (pipelined, several pieces and peers at once) -> assemble in
the worker's own buffer -> SHA-1 -> copy the verified piece into the output
mmap -> report on the result queue.  Unverified bytes never reach the output.

The decisions (which blocks to ask of whom, what a finished piece means, whom to
ban, what to give back) are ``policy.download.DownloadPolicy``'s; this module is
the I/O around it: sockets, timers, queues, control messages and storage writes.

Each worker opens its own mmaps by path and attaches to nothing inherited but
its queues and the shared done-map, so fork, spawn and forkserver all work.
"""

from __future__ import annotations

import multiprocessing
import operator
import os
import queue
import random
import selectors
import signal
import socket
import time
import traceback
from collections.abc import Sequence
from dataclasses import field
from typing import TYPE_CHECKING, assert_never

from mptorrent.disk.storage import IoMode, Layout, Storage
from mptorrent.errors import MptorrentError, ProtocolError, StorageError
from mptorrent.messages import (
    AddPeers,
    ControlQueue,
    DhtNodeLearned,
    DoneMap,
    PeerAddr,
    PeerBanned,
    PeerBitfield,
    PeerCap,
    PeerHaves,
    PieceDone,
    PieceFailed,
    ReportQueue,
    ReturnBacklog,
    Returned,
    Seeding,
    SeedOnly,
    Stop,
    SwarmPeers,
    Took,
    WorkerFailed,
    WorkerReport,
    WorkerStats,
    WorkQueue,
)
from mptorrent.mp import RateCells
from mptorrent.netio.peer import ACTIVE, CLOSED, CONNECTING, HANDSHAKING, PeerSession, Timeouts
from mptorrent.policy.download import Ban, DownloadPolicy, Failed, GiveBack, Verified
from mptorrent.policy.pipeline import endgame_horizon, near_headroom
from mptorrent.proto import bitfield, wire
from mptorrent.proto.metainfo import Metainfo
from mptorrent.record import Record, mutable
from mptorrent.worker.extensions import WorkerExtensions
from mptorrent.worker.upload import Uploader

if TYPE_CHECKING:
    # loaded with the first web seed (ssl and a thread pool for DNS: not every fetch's cost)
    from mptorrent.netio.webseed import WebConn, WebSeed

TICK = 0.05
RECONNECT_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
MAX_CONNECTS = 12  # connection attempts per address per worker, successful ones included
MAX_HALF_OPEN = 8  # connections in progress (TCP connect or handshake) per worker
CONNECTS_PER_TURN = 10  # new connection attempts per look (every 0.2 s, or on AddPeers)
SELF_ID_LEN = 18  # peer ids of one client's workers share this prefix
STATS_EVERY = 0.25
CONTROL_EVERY = 0.02  # seconds between looks at the control queue
IDLE_TICK = 0.005  # select timeout of a worker with no piece in hand
REPORT_EVERY = 0.03  # batch routine reports (verified pieces, stats) for this long
LIMITED_TICK = 0.005  # select timeout while a rate limit's balance is used up
_length = operator.itemgetter(2)  # of a block request (index, begin, length)


@mutable
class WorkerConfig(Record):
    """Everything a worker process starts from, pickled to it; the coordinator or seeder builds a
    fresh one for every restart (the slot's current peers and bans)."""

    worker_id: int
    meta: Metainfo
    layout: Layout
    peers: tuple[PeerAddr, ...]
    parent_pid: int
    peer_id_prefix: bytes = b"-MP0100-"
    max_peers: int = 50
    banned: tuple[PeerAddr, ...] = ()
    listen: tuple[str, int] | None = None  # accept peers here (SO_REUSEPORT, one per worker)
    seed_only: bool = False  # serve, never request
    client_id: bytes = b""  # shared by all workers of one client: spots self-connections
    source_address: str | None = None  # dial out from this address (the one we bind)
    io: IoMode = "mmap"  # how verified pieces reach the output
    timeouts: Timeouts = field(default_factory=Timeouts)
    # The UDP port of the owner's DHT node (BEP 5): our handshake sets the DHT bit and peers
    # that set it too are sent a Port message.  None: no DHT (off, or a private torrent).
    dht_port: int | None = None
    web_seeds: tuple[str, ...] = ()  # BEP 19 mirrors (http/https URLs) this worker reads from
    web_seed_connections: int = 3  # connections to each of them (netio.webseed.CONNECTIONS)
    # global rate limits (engine/limits.py): the shared counters, None when unlimited
    download_limit: RateCells | None = None
    upload_limit: RateCells | None = None
    workers: int = 1  # worker processes of the fetch (pipeline.near_headroom)


class _SelfConnection(Exception):
    """The peer's handshake carries our client's peer-id prefix: it is one of our own workers, and
    its address is never dialled again by this worker."""

    pass


class _Peer(PeerSession):
    """A wire connection as the download policy sees a peer (``policy.download.Peer``)."""

    port_sent = False  # our BEP 5 Port went out on this connection
    port_heard = False  # the peer's Port was reported (once per connection)
    best_rate = 0.0  # its highest two-second rate: what it sends when asked (idle, rate decays)

    @property
    def active(self) -> bool:
        return self.state == ACTIVE

    @property
    def connecting(self) -> bool:
        return self.state in (CONNECTING, HANDSHAKING)

    def has_piece(self, index: int) -> bool:
        return self.wire.peer_has[index] != 0

    def request(self, blocks: Sequence[tuple[int, int, int]]) -> None:
        self.queue(self.wire.send_requests(blocks))
        self.window.sent(time.monotonic(), sum(map(_length, blocks)))

    def cancel(self, index: int, begin: int, length: int) -> None:
        self.window.settled(length)
        if self.state == ACTIVE:
            self.window.cancelled(time.monotonic(), length)
            self.queue(self.wire.send(wire.Cancel(index, begin, length)))


@mutable
class _Retry(Record):
    """This worker's dial-out record for one address: attempts are capped (``MAX_CONNECTS``), and
    the back-off starts over once a connection delivered data."""

    attempts: int = 0
    failures: int = 0  # consecutive attempts that delivered nothing
    next_at: float = 0.0


@mutable
class _Worker(Record):
    """One worker process's state, built and run in the child by :func:`run`. Besides its queues, it
    shares only the done-map with other processes."""

    cfg: WorkerConfig
    work_q: WorkQueue
    result_q: ReportQueue
    control_q: ControlQueue
    done_map: memoryview
    storage: Storage = field(init=False)
    sel: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    peers: dict[PeerAddr, _Peer] = field(default_factory=dict)
    retry: dict[PeerAddr, _Retry] = field(default_factory=dict)
    banned: set[PeerAddr] = field(default_factory=set)
    banned_hosts: set[str] = field(default_factory=set)  # incoming offenders, by address
    haves: dict[PeerAddr, list[int]] = field(default_factory=dict)
    stopping: bool = False
    uploaded: int = 0
    now: float = 0.0  # the loop's clock, read once per turn
    outbox: list[WorkerReport] = field(default_factory=list)  # reports not yet sent
    urgent: bool = False  # the outbox holds something the coordinator acts on
    last_report: float = 0.0
    to_tell: list[int] = field(default_factory=list)  # verified here, HAVE not yet sent
    seed_only: bool = False  # serve, never request (from the start, or after SeedOnly)
    complete_peers: set[PeerAddr] = field(default_factory=set)  # seeds we left as a seed
    webseeds: dict[PeerAddr, WebSeed] = field(default_factory=dict)  # by PeerAddr(seed_id, 0)
    # what the download policy sees: the wire peers and the web seeds
    sources: dict[PeerAddr, _Peer | WebSeed] = field(default_factory=dict)
    rx_paused: bool = False  # the download limit's balance is used up: sockets not read
    rx_quota: int = 0  # under a download limit: bytes one socket may read this turn
    accept_cap: int = 0  # connections at most when a peer dials us: cfg.max_peers, then PeerCap
    # Dialling: new attempts left in this look (``CONNECTS_PER_TURN`` each slow tick or
    # AddPeers), and a half-open slot freed since (dial again this turn, not at the next tick)
    dial_budget: int = 0
    slot_freed: bool = False

    def __post_init__(self) -> None:
        # Serve-only workers open read-only: a file missing from partial data leaves its
        # pieces unserved (they are not in the have-map) instead of failing the start.
        self.storage = Storage(self.cfg.layout, writable=not self.cfg.seed_only, io=self.cfg.io)
        # Distinct per worker (peers refuse a second connection from one peer id),
        # with a prefix shared by the whole client so we recognise ourselves.
        cid = (self.cfg.client_id or os.urandom(20))[: SELF_ID_LEN - len(self.cfg.peer_id_prefix)]
        self.client_prefix = self.cfg.peer_id_prefix + cid
        self.peer_id = self.client_prefix + self.cfg.worker_id.to_bytes(2, "big")
        self.banned.update(self.cfg.banned)
        self.accept_cap = self.cfg.max_peers
        self.num_pieces = self.cfg.meta.num_pieces
        self.have = self.done_map[: self.num_pieces]
        meta = self.cfg.meta
        self.policy: DownloadPolicy[_Peer | WebSeed] = DownloadPolicy(
            verifier=meta.verifier(),
            piece_length=meta.piece_length,
            total_length=meta.total_length,
            done=self.done_map,
            peers=self.sources,
            take=self._take_batch,
        )
        # What our peers were told: the done-map as of our last HAVE broadcast.
        self.told = bytearray(self.have)
        self.seed_only = self.cfg.seed_only
        self.uploader = Uploader(self.storage, self.have, seeding=self.seed_only)
        # v2/hybrid: what answers BEP 52 hash requests (its file trees are built on demand)
        self.merkle = meta.merkle_verifier() if meta.info_hash_v2 is not None else None
        self.rx_limit = self.cfg.download_limit
        self.near_headroom = near_headroom(self.cfg.workers, os.cpu_count() or 1)
        if self.cfg.upload_limit is not None:
            self.uploader.limit = _Budget(self.cfg.upload_limit, self.cfg.worker_id)
        self.ext = WorkerExtensions(
            meta,
            worker_id=self.cfg.worker_id,
            listen_port=self.cfg.listen[1] if self.cfg.listen is not None else None,
        )
        self.listener: socket.socket | None = None
        if self.cfg.listen is not None:
            self.listener = listen_socket(*self.cfg.listen)
            self.sel.register(self.listener, selectors.EVENT_READ, None)
        for addr in self.cfg.peers:
            self.retry.setdefault(addr, _Retry())
        if not self.seed_only:
            self._start_web_seeds()

    # -- main loop ----------------------------------------------------------

    def run(self) -> None:
        last_slow = last_stats = last_control = 0.0
        policy = self.policy
        while not self.stopping:
            now = self.now = policy.now = time.monotonic()
            if now - last_control >= CONTROL_EVERY or not policy.jobs:
                # Often: new peers at start-up and Stop at the end are latency, not work.
                last_control = now
                self._check_control()
            if now - last_slow >= 0.2:
                last_slow = now
                if not _parent_alive(self.cfg.parent_pid):
                    return  # the coordinator died: nothing left to report to
                self.dial_budget = CONNECTS_PER_TURN
                self._connect_peers(now)
                self._check_timeouts(now)
                self._check_web_seeds(now)
                policy.drop_finished_elsewhere()
                self._tell_new_pieces()
                policy.return_orphans()
                self._apply()
                self._update_windows(now)
                self.uploader.rechoke(now)
                self.ext.send_pex(self.peers.values(), now)
            if policy.jobs and self.done_map[self.num_pieces]:
                # Endgame: pieces in hand that another worker verified go now, not at the
                # next slow tick (the coordinator's Stop waited up to TICK for such a worker).
                policy.drop_finished_elsewhere()
            # A worker with no piece in hand waits for work, peers or (at the end) Stop,
            # which arrive on queues the selector cannot watch: look at them often.
            idle = not policy.jobs and not self.seed_only
            timeout = IDLE_TICK if idle else TICK
            if self.rx_limit is not None and self._pace_reads():
                timeout = LIMITED_TICK  # tokens come back every few milliseconds
            elif self.uploader.starved():
                timeout = min(timeout, LIMITED_TICK)
            events = self.sel.select(timeout)
            self.now = policy.now = time.monotonic()
            if self.rx_limit is not None:
                self._share_reads(events)
            for key, mask in events:
                if key.data is None:
                    self._accept()
                elif type(key.data) is _Peer:
                    self._on_event(key.data, mask)
                    if policy.decisions:  # at once: a peer banned here reads no more
                        self._apply()
                else:  # a web seed's connection (netio.webseed.WebConn)
                    self._on_web(key.data, mask)
            if self.slot_freed:
                # A handshake came in (or a dial failed): the next peer now, within this
                # look's budget, not up to 0.2 s later.  Half-open slots count handshakes
                # too, so at start-up a worker's peers come in waves of MAX_HALF_OPEN, one
                # round trip each; a wave waiting for the slow tick cost a 48-seeder
                # swarm 0.4-0.8 s before its last peer was connected.
                self.slot_freed = False
                self._connect_peers(self.now)
            if self.to_tell:
                self._tell(self.to_tell)
                self.to_tell = []
            self.uploader.begin_turn()
            for p in list(self.peers.values()):
                if p.state == ACTIVE:
                    if not self.seed_only:
                        self._fill(p)
                        if policy.decisions:
                            self._apply()
                    self.uploader.serve(p)
                self._flush(p)
            if self.webseeds:
                self._pump_web_seeds()
            self._report_haves()
            if now - last_stats >= STATS_EVERY:
                last_stats = now
                active = sum(1 for p in self.peers.values() if p.state == ACTIVE)
                active += sum(1 for w in self.webseeds.values() if w.active)
                up = self.uploader.uploaded
                self.uploader.uploaded = 0
                self._emit(
                    WorkerStats(self.cfg.worker_id, policy.downloaded, up, active), urgent=False
                )
                policy.downloaded = 0
            self._send_reports()

    def _emit(self, msg: WorkerReport, *, urgent: bool = True) -> None:
        self.outbox.append(msg)
        self.urgent = self.urgent or urgent

    def _send_reports(self, *, force: bool = False) -> None:
        """One put for everything reported since the last one.

        Routine reports wait up to REPORT_EVERY; anything the coordinator acts on
        (a batch taken, a piece returned, a peer's pieces) goes at once, and so does
        everything when this worker has no piece left in hand.
        """
        if not self.outbox:
            return
        busy = bool(self.policy.jobs)
        if force or self.urgent or not busy or self.now - self.last_report >= REPORT_EVERY:
            self.result_q.put(self.outbox)
            self.outbox = []
            self.urgent = False
            self.last_report = self.now

    def shutdown(self) -> None:
        for p in list(self.peers.values()):
            p.close("worker stopping")
        for w in self.webseeds.values():
            w.close()
        if self.listener is not None:
            self.listener.close()
        self.storage.close()

    def _accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                sock, raw = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. out of file descriptors: keep serving who we have
            addr = PeerAddr(raw[0], raw[1])
            live = sum(1 for p in self.peers.values() if p.state != CLOSED)
            if (
                addr.host in self.banned_hosts
                or addr in self.banned
                or addr in self.peers
                or live >= self.accept_cap
            ):
                sock.close()
                continue
            p = self._session(addr)
            p.accepted(sock)
            self._greet(p)
            self.peers[addr] = self.sources[addr] = p
            self.uploader.attach(p)
            self._watch(p, self._reading())

    def _session(self, addr: PeerAddr) -> _Peer:
        p = _Peer(
            addr,
            info_hash=self.cfg.meta.info_hash,
            peer_id=self.peer_id,
            num_pieces=self.num_pieces,
            piece_length=self.cfg.meta.piece_length,
            total_length=self.cfg.meta.total_length,
        )
        p.window.near_headroom = self.near_headroom
        return p

    def _greet(self, p: _Peer) -> None:
        # holding nothing: the empty bitfield and interest go with the handshake (netio/peer.py)
        empty = not self.seed_only and 1 not in self.told
        p.greet(dht=self.cfg.dht_port is not None, empty=empty)

    def _send_port(self, p: _Peer) -> None:
        """Our DHT node's port (BEP 5), once per connection, if our DHT runs."""
        if self.cfg.dht_port is not None and not p.port_sent:
            p.port_sent = True
            p.queue(p.wire.send(wire.Port(self.cfg.dht_port)))

    def _on_port(self, p: _Peer, port: int) -> None:
        """The peer's DHT port (BEP 5): reported once per connection for the owner's DHT to
        ping; port 0, later ones, or any while our DHT is off are dropped.  A peer that sends
        one without the handshake's bit gets ours back, as libtorrent does."""
        if self.cfg.dht_port is None:
            return
        self._send_port(p)
        if port and not p.port_heard:
            p.port_heard = True
            node = PeerAddr(p.addr.host, port)
            self._emit(DhtNodeLearned(self.cfg.worker_id, node), urgent=False)

    def _check_control(self) -> None:
        while True:
            try:
                msg = self.control_q.get_nowait()
            except queue.Empty:
                return
            match msg:
                case Stop():
                    self.stopping = True
                case SeedOnly():
                    self._become_seed()
                case AddPeers():
                    for addr in msg.peers:
                        if addr not in self.banned and addr not in self.complete_peers:
                            self.retry.setdefault(addr, _Retry())
                    self.dial_budget = CONNECTS_PER_TURN
                    self._connect_peers(time.monotonic())  # now, not at the next slow tick
                case SwarmPeers():
                    self.ext.swarm = msg.peers  # listed in our PEX besides our own peers
                case ReturnBacklog():
                    self.policy.return_backlog()
                    self._apply()
                case PeerCap():
                    self.accept_cap = msg.max_peers  # over it already: no new ones, none dropped
                case _:
                    assert_never(msg)

    def _become_seed(self) -> None:
        """The download is complete: withdraw what is still asked (endgame duplicates),
        tell peers we want nothing more, and leave the seeds, who want nothing of us."""
        self.seed_only = True
        self.uploader.seeding = True
        self.policy.stop()  # Cancel what is still asked: late blocks drop quietly
        for w in list(self.webseeds.values()):
            self._drop_web_seed(w)  # a seed has nothing to read from a mirror
        for p in list(self.peers.values()):
            if self._leave_if_seed(p):
                continue
            if p.state in (HANDSHAKING, ACTIVE) and p.wire.am_interested:
                p.queue(p.wire.send(wire.NotInterested()))
        # the download's last counts, then the answer: the coordinator's summary waits
        active = sum(1 for p in self.peers.values() if p.state == ACTIVE)
        up, self.uploader.uploaded = self.uploader.uploaded, 0
        self._emit(WorkerStats(self.cfg.worker_id, self.policy.downloaded, up, active))
        self.policy.downloaded = 0
        self._emit(Seeding(self.cfg.worker_id))

    def _leave_if_seed(self, p: _Peer) -> bool:
        """As a seed, close a peer that has every piece (as libtorrent does) and do not
        dial it again.  True if it was closed."""
        if not (self.seed_only and p.wire.peer_is_seed):
            return False
        self.complete_peers.add(p.addr)
        self._drop(p, "both complete")
        self.retry.pop(p.addr, None)
        return True

    # -- connections --------------------------------------------------------

    def _connect_peers(self, now: float) -> None:
        live = sum(1 for p in self.peers.values() if p.state != CLOSED)
        # Paced: a swarm of hundreds is not dialled all at once (a home router's NAT
        # table, and the peers that answer first are the ones we keep anyway).
        half_open = sum(1 for p in self.peers.values() if p.connecting and not p.inbound)
        if not self._may_dial(live, half_open):
            return  # before the sort: this runs on every freed half-open slot
        # Never-tried peers first (in the order we were given them), then those that
        # delivered before, then the ones that failed, fewest failures first (as
        # policy/peertable.py orders the coordinator's table).
        for addr, r in sorted(self.retry.items(), key=_dial_order):
            if not self._may_dial(live, half_open):
                return
            if addr in self.peers or addr in self.banned or r.next_at > now:
                continue
            if r.attempts >= MAX_CONNECTS:
                continue
            p = self._session(addr)
            p.source_address = self.cfg.source_address
            r.attempts += 1
            r.next_at = now + RECONNECT_DELAYS[min(r.failures, len(RECONNECT_DELAYS) - 1)]
            r.failures += 1  # cleared once the connection proves useful
            try:
                p.start_connect()
            except OSError as exc:
                p.close(f"connect failed: {exc.strerror}")
                continue
            assert p.sock is not None
            self.peers[addr] = self.sources[addr] = p
            self.sel.register(p.sock, selectors.EVENT_WRITE, p)
            live += 1
            half_open += 1
            self.dial_budget -= 1

    def _may_dial(self, live: int, half_open: int) -> bool:
        """Room for one more dial: under our share of --max-peers, the half-open cap and
        this look's budget."""
        return live < self.cfg.max_peers and half_open < MAX_HALF_OPEN and self.dial_budget > 0

    def _drop(self, p: _Peer, reason: str, *, ban: bool = False) -> None:
        if p.connecting and not p.inbound:
            self.slot_freed = True
        if p.sock is not None and p.state != CLOSED:
            try:
                self.sel.unregister(p.sock)
            except (KeyError, ValueError):
                pass
        self._release_pending(p)
        p.close(reason)
        self.uploader.detach(p)
        self.ext.forget(p)
        self.peers.pop(p.addr, None)
        self.sources.pop(p.addr, None)
        if p.reported_bits:
            self._emit(PeerBitfield(self.cfg.worker_id, p.addr, None))
        self.haves.pop(p.addr, None)
        if ban:
            self.banned.add(p.addr)
            if p.inbound:
                # An incoming peer's port is temporary: ban the address it comes from.
                self.banned_hosts.add(p.addr.host)
            self._emit(PeerBanned(self.cfg.worker_id, p.addr, reason))
        elif p.useful and not p.inbound:
            # It delivered data: try again soon, from the start of the back-off ladder
            # (the total number of attempts stays capped, so a flapping peer cannot spin us).
            r = self.retry.setdefault(p.addr, _Retry())
            r.failures = 0
            r.next_at = time.monotonic() + RECONNECT_DELAYS[0]

    def _check_timeouts(self, now: float) -> None:
        t = self.cfg.timeouts
        for p in list(self.peers.values()):
            if p.state == CONNECTING and now - p.started > t.connect:
                self._drop(p, "connect timed out")
            elif p.state == HANDSHAKING and now - p.started > t.handshake:
                self._drop(p, "no handshake")
            elif p.pending and now - p.last_block > t.snub:
                self._drop(p, "stalled with requests outstanding")
            elif now - p.last_message > t.idle:
                self._drop(p, "idle")
        self.policy.give_back_stalled(t.piece)

    # -- socket events ------------------------------------------------------

    def _on_event(self, p: _Peer, mask: int) -> None:
        if p.state == CLOSED:
            return
        try:
            if p.state == CONNECTING:
                if mask & selectors.EVENT_WRITE:
                    p.finish_connect()
                    self._greet(p)
                    self.uploader.attach(p)
                    self._watch(p, self._reading())
                    self._flush(p)
                return
            if mask & selectors.EVENT_READ:
                if not self._receive(p):
                    self._drop(p, "closed by peer")
                    return
                self._process(p)
            if mask & selectors.EVENT_WRITE:
                self._flush(p)
        except _SelfConnection:
            self.banned.add(p.addr)  # never dial our own listener again
            self._drop(p, "connected to ourselves")
        except ProtocolError as exc:
            # A refused handshake is another protocol or another torrent, not a liar:
            # libtorrent closes it without a ban, and the capped retries bound the cost.
            self._drop(p, f"protocol error: {exc}", ban=p.wire.handshake_received)
        except OSError as exc:
            self._drop(p, f"connection error: {exc.strerror or exc}")

    def _flush(self, p: _Peer) -> None:
        if p.state in (CLOSED, CONNECTING) or p.sock is None:
            return
        try:
            more = p.flush()
        except OSError as exc:
            self._drop(p, f"send failed: {exc.strerror or exc}")
            return
        # Requests still queued for upload count as more to send: the buffer may have
        # drained in one send, and waiting for readability would stall them a tick.
        want = self._reading()
        if more or self.uploader.backlogged(p):
            want |= selectors.EVENT_WRITE
        self._watch(p, want)

    def _watch(self, p: _Peer, want: int) -> None:
        """Have the selector watch ``p``'s socket for ``want`` (0: not at all)."""
        assert p.sock is not None
        key = self.sel.get_map().get(p.sock)
        if key is None:
            if want:
                self.sel.register(p.sock, want, p)
        elif not want:
            self.sel.unregister(p.sock)
        elif key.events != want:
            self.sel.modify(p.sock, want, p)

    # -- the download limit -----------------------------------------------------
    # While the shared balance is used up no socket is watched for reading: the peers'
    # TCP windows fill and they slow down.  The loop polls the balance every few ms.

    def _reading(self) -> int:
        return 0 if self.rx_paused else selectors.EVENT_READ

    def _receive(self, p: _Peer) -> bool:
        """One read from ``p``, within the download limit; False when the peer closed."""
        lim = self.rx_limit
        if lim is None:
            return p.receive()
        wid = self.cfg.worker_id
        balance = lim.balance(wid)
        if balance <= 0:
            return True  # used up by an earlier read of this turn: _pace_reads pauses next
        # this turn's share, at least a block's worth: a read may overdraw by that, paid
        # back next tick
        before = p.bytes_in
        alive = p.receive(max(min(balance, self.rx_quota), wire.BLOCK_SIZE))
        lim.spend(wid, p.bytes_in - before)
        return alive

    def _share_reads(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        """Share the balance among this turn's readable sockets: the sockets the selector
        lists first (the order they were watched in, after a pause) cannot take it all."""
        assert self.rx_limit is not None
        readable = sum(1 for k, m in events if k.data is not None and m & selectors.EVENT_READ)
        self.rx_quota = self.rx_limit.balance(self.cfg.worker_id) // max(1, readable)

    def _pace_reads(self) -> bool:
        """True while the download limit holds reads back (the loop then polls often)."""
        assert self.rx_limit is not None
        paused = self.rx_limit.balance(self.cfg.worker_id) <= 0
        if paused != self.rx_paused:
            self.rx_paused = paused
            for p in self.peers.values():
                if p.sock is None or p.state in (CLOSED, CONNECTING):
                    continue
                key = self.sel.get_map().get(p.sock)
                writing = key.events & selectors.EVENT_WRITE if key is not None else 0
                self._watch(p, writing | self._reading())
        return paused

    def _process(self, p: _Peer) -> None:
        conn = p.wire
        policy = self.policy
        got = policy.downloaded
        while True:
            # Blocks go to the policy a run at a time; we see the other messages.
            ev = policy.receive(p, conn)
            if ev is wire.NEED_DATA:
                break
            if not isinstance(ev, wire.KeepAlive):
                p.last_message = time.monotonic()
            if isinstance(ev, wire.Handshake):
                if ev.peer_id[:SELF_ID_LEN] == self.client_prefix:
                    raise _SelfConnection
                p.state = ACTIVE
                self.slot_freed = self.slot_freed or not p.inbound
                # our bitfield (or HaveAll/HaveNone) first, then the BEP 10 handshake
                p.greet_rest(self.have, interested=not self.seed_only)
                self.uploader.greeted(p)  # BEP 6 Allowed Fast, if both speak it
                self.ext.attach(p)  # BEP 10, if both handshakes set its bit
                if ev.dht:
                    self._send_port(p)  # BEP 5, after our piece state as libtorrent does
            elif isinstance(ev, (wire.Bitfield, wire.HaveAll)):  # HaveAll: BEP 6's full bitfield
                if self.seed_only:  # availability matters only while downloading
                    if self._leave_if_seed(p):
                        return
                else:  # packed, as it came: an eighth of a byte per piece to pickle
                    bits = ev.bits if type(ev) is wire.Bitfield else bitfield.full(self.num_pieces)
                    self._emit(PeerBitfield(self.cfg.worker_id, p.addr, bits))
                    p.reported_bits = True
            elif isinstance(ev, wire.Have):
                if self.seed_only:
                    if self._leave_if_seed(p):
                        return
                elif not p.reported_bits:
                    bits = bitfield.from_flags(conn.peer_has)
                    self._emit(PeerBitfield(self.cfg.worker_id, p.addr, bits))
                    p.reported_bits = True
                else:
                    self.haves.setdefault(p.addr, []).append(ev.index)
            elif isinstance(ev, wire.Choke):
                # BEP 6: the peer answers each request (block or RejectRequest) even so.
                if not conn.fast_enabled:
                    self._release_pending(p)
            elif isinstance(ev, wire.RejectRequest):
                policy.rejected(p, ev.index, ev.begin)  # asked again, of whoever has it
                p.window.settled(ev.length)
            elif isinstance(ev, (wire.Request, wire.Cancel, wire.Interested, wire.NotInterested)):
                self.uploader.on_event(p, ev)
            elif isinstance(ev, wire.Port):
                self._on_port(p, ev.port)
            elif isinstance(ev, wire.HashRequest):  # BEP 52
                self.uploader.hashes(p, ev, self.merkle)
            elif not isinstance(ev, (wire.Unchoke, wire.KeepAlive)):
                learned = self.ext.handle(p, ev, self.now)  # BEP 10 events
                if learned is not None:
                    self._emit(learned)
            # Unchoke, KeepAlive and the rest change wire state only.
        if policy.downloaded != got:
            p.last_block = p.last_message = self.now
            p.useful = True
            p.window.received(self.now, policy.downloaded - got)

    def _tell_new_pieces(self) -> None:
        """HAVE to our peers for pieces any worker verified since we last looked.

        Peers are spread over the workers, so each worker must announce the others'
        pieces too, or a peer would hear of only the share its own worker fetched.
        """
        now_have = bytes(self.have)
        if now_have != self.told:  # a memcmp; then the new ones in C, not a loop per piece
            self._tell(bitfield.newly_set(now_have, self.told))

    def _tell(self, pieces: list[int]) -> None:
        for i in pieces:
            self.told[i] = 1
        for q in self.peers.values():
            # A peer still connecting gets them in the bitfield it is greeted with once
            # its handshake is in; a seed needs none (libtorrent's send_redundant_have
            # off: it would only wake the seed to read them).
            if q.state == ACTIVE and not q.wire.peer_is_seed:
                q.queue(b"".join(q.wire.send(wire.Have(i)) for i in pieces))

    def _report_haves(self) -> None:
        for addr, idx in self.haves.items():
            if idx:
                self._emit(PeerHaves(self.cfg.worker_id, addr, tuple(idx)))
        self.haves.clear()

    # -- blocks and pieces --------------------------------------------------

    def _release_pending(self, p: _Peer) -> None:
        """The peer will not answer these requests: let others ask for the blocks."""
        self.policy.release(p)
        p.wire.clear_requests()
        p.window.dropped()

    def _fill(self, p: _Peer) -> None:
        if not p.pending:
            p.last_block = self.now  # the snub clock starts with the first request
        self.policy.fill(p)

    def _update_windows(self, now: float) -> None:
        """Each peer's request window to its rate x delay; once nothing more is to be taken,
        with a headroom no longer than the worker's remaining blocks take at all its peers'
        rate (policy/pipeline.py, "The tail")."""
        rates = [(p, p.rate(now)) for p in self.peers.values()]
        left_bytes = self.policy.left_in_hand()
        total = sum(r for _, r in rates)
        left = None if left_bytes is None or total <= 0 else left_bytes / total
        for p, rate in rates:
            p.update_depth(rate, left)
            if rate > p.best_rate:
                p.best_rate = rate
        # the endgame's horizon; none with web seeds, whose rate is not measured here
        horizon = endgame_horizon(left_bytes, ((r, p.best_rate, bool(p.pending)) for p, r in rates))
        self.policy.tail_left = None if self.webseeds else horizon

    def _take_batch(self) -> list[int] | None:
        """The policy's work source: the next batch from our work queue, acknowledged."""
        try:
            batch: list[int] = self.work_q.get_nowait()
        except queue.Empty:
            return None
        # Always acknowledge, so the coordinator's count of queued pieces stays exact.
        self._emit(Took(self.cfg.worker_id, tuple(batch)))
        return batch

    def _apply(self) -> None:
        """Carry out the policy's decisions, in the order it made them."""
        policy = self.policy
        decisions, policy.decisions = policy.decisions, []
        wid = self.cfg.worker_id
        for d in decisions:
            if type(d) is Verified:
                if not self.done_map[d.index]:  # else another worker wrote it
                    self.storage.write_piece(d.index, d.data, self.done_map)
                policy.recycle(d.data)
                self._emit(PieceDone(wid, d.index, d.peers), urgent=False)
                self.to_tell.append(d.index)
            elif type(d) is Failed:
                self._emit(PieceFailed(wid, d.index, d.peers, retrying=d.retrying))
            elif type(d) is Ban:
                self._ban(d.addr, d.reason)
            elif type(d) is GiveBack:
                self._emit(Returned(wid, d.index))

    def _ban(self, addr: PeerAddr, reason: str) -> None:
        if addr in self.banned:
            return
        w = self.webseeds.get(addr)
        if w is not None:  # a mirror whose bytes failed the hash check
            self._drop_web_seed(w)
        q = self.peers.get(addr)
        if q is not None:
            self._drop(q, reason, ban=True)
        else:
            self.banned.add(addr)
            self._emit(PeerBanned(self.cfg.worker_id, addr, reason))

    # -- web seeds (BEP 19) -------------------------------------------------

    def _start_web_seeds(self) -> None:
        if not self.cfg.web_seeds:
            return  # netio.webseed (ssl, a DNS thread pool) stays unloaded, as in the coordinator
        from mptorrent.netio.webseed import WebSeed
        from mptorrent.proto.webseed import seed_id

        now = time.monotonic()
        for url in self.cfg.web_seeds:
            addr = PeerAddr(seed_id(url), 0)
            if addr in self.banned or addr in self.webseeds:
                continue
            w = WebSeed(
                url, self.cfg.meta, self.sel, now=now, stall=self.cfg.timeouts.snub,
                connect_timeout=self.cfg.timeouts.connect, source_address=self.cfg.source_address,
                connections=self.cfg.web_seed_connections,
            )  # fmt: skip
            self.webseeds[w.addr] = self.sources[w.addr] = w
            self._web_notes(w)

    def _on_web(self, c: WebConn, mask: int) -> None:
        """A web seed's socket is ready: read, and hand finished blocks to the policy."""
        w = c.seed
        w.on_event(c, mask, self.now)
        if w.ready:
            self.policy.receive(w, w)  # the same block path as a wire connection's
        if w.notes:
            self._web_notes(w)

    def _pump_web_seeds(self) -> None:
        """Each turn: top up the web seeds' requests and start them on idle connections."""
        policy = self.policy
        for w in list(self.webseeds.values()):
            if w.active and not self.seed_only:
                policy.fill(w)
                if policy.decisions:
                    self._apply()
            w.pump(self.now)
            if w.notes:
                self._web_notes(w)

    def _check_web_seeds(self, now: float) -> None:
        for w in list(self.webseeds.values()):
            w.check(now)
            if w.notes:
                self._web_notes(w)

    def _web_notes(self, w: WebSeed) -> None:
        """What a web seed's connections came to: it is up (it has every piece), or down for a
        back-off (its requests go to others), or gone."""
        from mptorrent.netio.webseed import Down, Up

        notes, w.notes = w.notes, []
        wid = self.cfg.worker_id
        for n in notes:
            if type(n) is Up:
                self._emit(PeerBitfield(wid, w.addr, bitfield.full(self.num_pieces)))
            elif type(n) is Down:
                self.policy.release(w)
                self._emit(PeerBitfield(wid, w.addr, None))
                if n.fatal:
                    self.webseeds.pop(w.addr, None)
                    self.sources.pop(w.addr, None)
                    self.banned.add(w.addr)
                    self._emit(PeerBanned(wid, w.addr, f"web seed {n.outcome}: {n.detail}"))

    def _drop_web_seed(self, w: WebSeed) -> None:
        self.policy.release(w)
        w.close()
        self.webseeds.pop(w.addr, None)
        self.sources.pop(w.addr, None)
        self._emit(PeerBitfield(self.cfg.worker_id, w.addr, None))


def _dial_order(item: tuple[PeerAddr, _Retry]) -> tuple[bool, int]:
    r = item[1]
    return (r.attempts > 0, r.failures)


class _Budget:
    """This worker's draw on a global limit's shared counters (``worker.upload.Budget``)."""

    __slots__ = ("cells", "wid")

    def __init__(self, cells: RateCells, wid: int) -> None:
        self.cells = cells
        self.wid = wid

    def balance(self) -> int:
        return self.cells.balance(self.wid)

    def spend(self, n: int) -> None:
        self.cells.spend(self.wid, n)


def _parent_alive(parent_pid: int) -> bool:
    # Under forkserver our OS parent is the fork server, so ask multiprocessing
    # about the process that started us; fall back to the pid for plain forks.
    parent = multiprocessing.parent_process()
    if parent is not None:
        return parent.is_alive()
    return os.getppid() == parent_pid


def run(
    cfg: WorkerConfig,
    work_q: WorkQueue,
    result_q: ReportQueue,
    control_q: ControlQueue,
    done_map: DoneMap,
) -> None:
    """Process entry point."""
    # Ctrl-C goes to the whole process group; only the coordinator answers it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    random.seed()
    # every file of the torrent stays open (pwrite), or up to 256 of them for the map's
    # piece locks (disk.storage), besides the sockets
    _raise_fd_limit()
    w = None
    failed: WorkerFailed | None = None
    try:
        w = _Worker(cfg, work_q, result_q, control_q, memoryview(done_map).cast("B"))
        w.run()
    except MptorrentError as exc:
        failed = WorkerFailed(cfg.worker_id, str(exc), traceback.format_exc(), storage=True)
    except OSError as exc:
        failed = WorkerFailed(
            cfg.worker_id, f"disk or system error: {exc}", traceback.format_exc(), storage=True
        )
    except Exception as exc:
        failed = WorkerFailed(
            cfg.worker_id, f"worker {cfg.worker_id} crashed: {exc!r}", traceback.format_exc()
        )
    finally:
        last: list[WorkerReport] = []
        if w is not None:
            try:
                w.shutdown()
            except OSError as exc:  # e.g. a deferred write error reported by close()
                if failed is None:
                    failed = WorkerFailed(
                        cfg.worker_id, f"disk or system error: {exc}", traceback.format_exc(),
                        storage=True,
                    )  # fmt: skip
            # what was still batched, and the last counts (a seed ratio sees every byte)
            last = w.outbox
            last.append(WorkerStats(cfg.worker_id, w.policy.downloaded, w.uploader.uploaded, 0))
        if failed is not None:
            last.append(failed)
        result_q.put(last)
        # let the queue's feeder thread deliver what we put before we exit
        result_q.close()
        result_q.join_thread()


def _raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass  # as many as we may: Storage says which file it could not open


def listen_socket(host: str, port: int) -> socket.socket:
    """A listener that several worker processes can share (the kernel spreads accepts)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def reserve_port(host: str, port: int) -> socket.socket:
    """Hold ``host:port`` (a free one when 0) so every worker can bind it with SO_REUSEPORT."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = []
    try:
        if port:
            # SO_REUSEPORT would let us join another process's listeners on this port and
            # take half of its peers: first make sure nobody is listening there.
            probe = socket.socket(family, socket.SOCK_STREAM)
            socks.append(probe)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
            probe.close()
        s = socket.socket(family, socket.SOCK_STREAM)
        socks.append(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((host, port))
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise StorageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return s
