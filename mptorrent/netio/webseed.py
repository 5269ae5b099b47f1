"""A web seed inside a worker: a few HTTP connections to one mirror, seen by the download policy as
one more peer (``policy.download.Peer``) that has every piece.

The policy asks it for 16 KiB blocks like any peer; :meth:`WebSeed.request` groups adjacent
blocks into runs (whole pieces, or several adjacent ones, up to ``RUN_BYTES``), and each run
is fetched on one keep-alive connection with one ``Range`` request per file it spans
(``proto/webseed.py``), up to ``PIPELINE`` requests in flight per connection (HTTP/1.1
pipelining: the answers come back in order).  As the body arrives the finished blocks
become ``wire.Piece`` events that the worker hands to ``DownloadPolicy.receive`` exactly as
it does a wire connection's, so pieces are SHA-1 checked like any other and a mirror that
sends wrong bytes is a liar like any other (its pieces fail, it is banned).

Sockets are non-blocking and registered on the worker's selector with the :class:`WebConn`
as their key's data; https uses ``ssl`` with verified certificates (the system store, or
``SSL_CERT_FILE``).  What goes wrong is a named ``Outcome``: retryable ones (404, 5xx,
connection errors, no byte for the stall timeout) take the mirror out for a growing
back-off, at most ``MAX_FAILURES`` times in a row; the others (a ``200`` that ignores
``Range``, a body longer than asked, a redirect loop, a drip under ``MIN_RATE``, a
certificate that does not verify) drop it for the rest of the fetch.  Either way the
worker releases its requests, so peers and other mirrors carry on.
"""

from __future__ import annotations

import errno
import ipaddress
import selectors
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import field
from enum import Enum
from typing import Any, Final

from mptorrent.messages import PeerAddr
from mptorrent.policy.download import BlockKey, BlockRequest
from mptorrent.proto import wire
from mptorrent.proto.metainfo import Metainfo
from mptorrent.proto.webseed import (
    MAX_REDIRECTS,
    RETRYABLE,
    Body,
    Finished,
    Outcome,
    RangeClient,
    Redirect,
    Refused,
    Span,
    file_urls,
    seed_id,
    spans,
    target,
)
from mptorrent.record import Record, frozen, mutable

CONNECTIONS = 3  # per web seed and worker
PIPELINE = 4  # requests in flight per connection (HTTP/1.1 pipelining)
MAX_CONNECTIONS = 8  # per web seed over all workers: a mirror is a shared server, be polite
RUN_BYTES = 1 << 20  # adjacent blocks asked in one run (one request per file it spans)
RUNS_PER_CONNECTION = 2  # the policy keeps this many runs' blocks asked per connection
RECV_SIZE = 1 << 20
BACKOFF_DELAYS = (2.0, 5.0, 15.0, 30.0, 60.0)  # seconds out after the 1st, 2nd... failure in a row
MAX_FAILURES = 6  # failures in a row (nothing delivered between them): given up
SLOW_AFTER = 3.0  # seconds into a request before its rate is judged
MIN_RATE = 16 * 1024  # bytes/s under which a request is a drip ("too-slow")


class WebSeedState(Enum):
    """Where a web seed is: CONNECTING and BACKOFF lead to ACTIVE; GONE is final."""

    CONNECTING = "connecting"  # its first connection is being opened
    ACTIVE = "active"  # a connection came up: it takes requests
    BACKOFF = "backoff"  # a request failed: out until ``retry_at``
    GONE = "gone"  # given up, or banned


CONNECTING: Final = WebSeedState.CONNECTING
ACTIVE: Final = WebSeedState.ACTIVE
BACKOFF: Final = WebSeedState.BACKOFF
GONE: Final = WebSeedState.GONE


@frozen
class Up(Record):
    """The web seed came up (again): it has every piece."""


@frozen
class Down(Record):
    """The web seed failed: ``fatal``: dropped for good, else out for a back-off."""

    outcome: Outcome
    detail: str
    fatal: bool


Note = Up | Down


@mutable
class _Run(Record):
    """Adjacent blocks fetched together, handed on block by block as the body arrives."""

    blocks: list[BlockRequest]
    ends: list[int]  # where each block ends, from the run's start
    start: int  # offset in the torrent
    part: bytearray  # the start of a block cut by a read boundary
    spans: list[Span]
    span: int = 0  # the span being fetched
    got: int = 0  # bytes of that span received
    emitted: int = 0  # blocks handed on
    hops: int = 0  # redirects followed for the current span
    asked_to: int = 0  # spans before this one are asked on the run's connection


@mutable(eq=False)
class WebConn(Record):
    """One connection of a web seed (its selector key's data): socket, TLS, and the requests in
    flight on it, answered in order: a :class:`RangeClient` each (h11 reads one request's
    response per client; the bytes after it go to the next one)."""

    seed: WebSeed
    origin: tuple[str, str, int]  # scheme, host, port
    opened: float
    sock: socket.socket | None = None
    state: str = "connecting"  # connecting, tls, ready, closed
    runs: deque[_Run] = field(default_factory=deque)  # in flight here, the oldest first
    clients: deque[RangeClient] = field(default_factory=deque)  # one per request in flight
    out: bytearray = field(default_factory=bytearray)
    events: int = selectors.EVENT_WRITE
    served: int = 0  # responses completed on it
    head_seen: bool = False  # a byte of the oldest request's answer arrived
    last_byte: float = 0.0
    first_byte: float = 0.0  # of the oldest request's answer
    got: int = 0  # body bytes of that answer


_tls_context: ssl.SSLContext | None = None
_resolver_pool: ThreadPoolExecutor | None = None
_AddrInfo = tuple[socket.AddressFamily, Any]  # family, and the sockaddr to connect to


def _resolver() -> ThreadPoolExecutor:
    global _resolver_pool
    if _resolver_pool is None:  # made in the worker process, after the fork
        _resolver_pool = ThreadPoolExecutor(1, thread_name_prefix="webseed-dns")
    return _resolver_pool


def _tls() -> ssl.SSLContext:
    global _tls_context
    if _tls_context is None:
        _tls_context = ssl.create_default_context()  # CERT_REQUIRED, hostname checked
    return _tls_context


class WebSeed:
    """One web seed in one worker; the download policy's ``Peer`` (it has every piece)."""

    def __init__(
        self, url: str, meta: Metainfo, sel: selectors.BaseSelector, *, now: float,
        stall: float = 20.0, connect_timeout: float = 10.0, source_address: str | None = None,
        connections: int = CONNECTIONS,
    ) -> None:  # fmt: skip
        self.url = url
        self.addr = PeerAddr(seed_id(url), 0)
        self.urls: list[str | None] = list(file_urls(url, meta))
        self.files = meta.files
        self.piece_length = meta.piece_length
        self.sel = sel
        self.stall = stall
        self.connect_timeout = connect_timeout
        self.source_address = source_address
        self.pending: set[BlockKey] = set()
        self.connections = max(1, connections)
        self.depth = self.connections * RUNS_PER_CONNECTION * RUN_BYTES // wire.BLOCK_SIZE
        # top up a whole run at a time: fewer, longer Range requests
        self.batch = RUN_BYTES // wire.BLOCK_SIZE
        self.allowed_while_choked: frozenset[int] | None = None
        self.state = CONNECTING
        self.conns: list[WebConn] = []
        self.runs: deque[_Run] = deque()
        self.ready: deque[wire.Piece] = deque()
        self.notes: list[Note] = []  # for the worker to act on
        self.failures = 0
        self.retry_at = 0.0
        self.received = 0  # body bytes in all
        self._dns: dict[tuple[str, int], Future[list[Any]]] = {}
        self._addr_turn = 0
        self.connecting_since = now
        self._open(target(url).origin, now)

    # -- the policy's Peer ----------------------------------------------------

    @property
    def active(self) -> bool:
        return self.state is ACTIVE

    @property
    def connecting(self) -> bool:
        return self.state is CONNECTING

    @property
    def spare(self) -> int:
        return self.depth - len(self.pending) if self.state is ACTIVE else 0

    def has_piece(self, index: int) -> bool:
        return True

    def request(self, blocks: Sequence[BlockRequest]) -> None:
        """Queue the blocks as runs of adjacent bytes; :meth:`pump` sends them.  Sorted first:
        adjacent pieces asked together go out as one request."""
        pl = self.piece_length
        run: list[BlockRequest] = []
        end = -1
        for b in sorted(blocks):
            at = b[0] * pl + b[1]
            if run and (at != end or at + b[2] - run[0][0] * pl - run[0][1] > RUN_BYTES):
                self._queue(run)
                run = []
            run.append(b)
            end = at + b[2]
        if run:
            self._queue(run)

    def cancel(self, index: int, begin: int, length: int) -> None:
        """Nothing to send: a block no longer pending is simply not handed on."""

    def next_event(self) -> wire.Piece | wire.NeedData:
        """The policy's block source: finished blocks, then NEED_DATA."""
        return self.ready.popleft() if self.ready else wire.NEED_DATA

    # -- runs -----------------------------------------------------------------

    def _queue(self, blocks: list[BlockRequest]) -> None:
        start = blocks[0][0] * self.piece_length + blocks[0][1]
        ends = []
        n = 0
        for b in blocks:
            n += b[2]
            ends.append(n)
        self.runs.append(_Run(blocks, ends, start, bytearray(), spans(self.files, start, n)))

    def _take(self, run: _Run, at: int, data: bytes | bytearray) -> None:
        """Body bytes for ``run`` from offset ``at``: the blocks they complete are handed on.

        A block that lies wholly in ``data`` is handed on as a view of it (the policy copies
        it once, into its piece); only a block cut by a read boundary is joined, in a
        bytearray of its own (never reused: a view of it may wait in :attr:`ready`)."""
        view = memoryview(data)
        end = at + len(data)
        k = run.emitted
        blocks, ends, pending, ready = run.blocks, run.ends, self.pending, self.ready
        while k < len(blocks):
            index, begin, n = blocks[k]
            stop = ends[k]
            if stop > end:
                break
            start = stop - n
            if start >= at:
                block = view[start - at : stop - at]
            else:  # begun in an earlier read
                joined = run.part
                joined += view[: stop - at]
                run.part = bytearray()
                block = memoryview(joined)
            if (index, begin) in pending:
                ready.append(wire.Piece(index, begin, block))
            k += 1
        if k < len(blocks):  # the start of a block whose end is still to come
            run.part += view[max(at, ends[k] - blocks[k][2]) - at :]
        run.emitted = k

    # -- connections ----------------------------------------------------------

    def _resolve(self, host: str, port: int, now: float) -> _AddrInfo | None:
        """The address to dial, or None while a name is still being looked up (in a thread:
        a DNS answer must not hold up the worker's loop); a failed look-up is a failure."""
        try:
            ipaddress.ip_address(host)
            numeric = True
        except ValueError:
            numeric = False
        if numeric:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            return (family, (host, port))
        key = (host, port)
        fut = self._dns.get(key)
        if fut is None:
            fut = self._dns[key] = _resolver().submit(
                socket.getaddrinfo, host, port, type=socket.SOCK_STREAM
            )
        if not fut.done():
            return None
        try:
            infos = fut.result()
        except OSError as exc:
            del self._dns[key]  # asked again after the back-off
            self._fail("connection-error", f"cannot resolve {host}: {_why(exc)}", now)
            return None
        src = self.source_address
        usable = [
            (family, sockaddr) for family, _type, _proto, _name, sockaddr in infos
            if not src or (":" in src) == (family == socket.AF_INET6)
        ] or [(infos[0][0], infos[0][4])]  # fmt: skip
        # each connection error moves on to the name's next address
        return usable[self._addr_turn % len(usable)]

    def _open(self, origin: tuple[str, str, int], now: float) -> WebConn | None:
        _scheme, host, port = origin
        where = self._resolve(host, port, now)
        if where is None:
            return None  # looking the name up: pump() and check() try again
        family, sockaddr = where
        c = WebConn(self, origin, now)
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
            c.sock = sock
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # as for peers: one recv takes a large part of a run (fewer trips through h11)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            src = self.source_address
            if src and (":" in src) == (family == socket.AF_INET6):
                sock.bind((src, 0))
            err = sock.connect_ex(sockaddr)
            if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                raise OSError(err, errno.errorcode.get(err, "connect failed"))
        except OSError as exc:
            if c.sock is not None:
                c.sock.close()
            self._fail("connection-error", f"cannot connect to {host}:{port}: {_why(exc)}", now)
            return None
        self.conns.append(c)
        self.sel.register(sock, selectors.EVENT_WRITE, c)
        return c

    def _close(self, c: WebConn) -> None:
        if c.state == "closed":
            return
        c.state = "closed"
        if c.sock is not None:
            try:
                self.sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            c.sock.close()
        if c in self.conns:
            self.conns.remove(c)

    def _want(self, c: WebConn, events: int) -> None:
        if c.events != events and c.sock is not None and c.state != "closed":
            c.events = events
            self.sel.modify(c.sock, events, c)

    def pump(self, now: float) -> None:
        """Ask for queued runs on ready connections (a few requests in flight on each, the
        runs dealt out in turn), opening connections as needed."""
        if self.state is not ACTIVE:
            return
        runs = self.runs
        pending = self.pending
        while runs and not any((b[0], b[1]) in pending for b in runs[0].blocks):
            runs.popleft()  # every block was got elsewhere meanwhile (endgame)
        placed = True
        while runs and placed:
            placed = False
            for c in list(self.conns):
                free = runs and c.state == "ready" and len(c.clients) < PIPELINE
                if free and self._ask(c, runs[0], now):
                    runs.popleft()
                    placed = True
        if not runs:
            return
        origin = self._origin_of(runs[0])
        if origin is None:
            return
        idle = [c for c in self.conns if c.state == "ready" and not c.clients]
        if any(c.origin == origin for c in idle):
            return  # it did not fit on an idle connection to its server: nor would it on a new one
        # An idle connection left is to another server (a redirect took the files away from
        # it): it takes none of these runs, so it must not stop one opening where they go
        # (waiting for its server to close it stalled the download), and at the limit it
        # makes room.
        if idle and len(self.conns) >= self.connections:
            self._close(idle[0])
        if len(self.conns) < self.connections:
            self._open(origin, now)

    def _origin_of(self, run: _Run) -> tuple[str, str, int] | None:
        for sp in run.spans[run.span :]:
            url = self.urls[sp.file]
            if url is not None:
                return target(url).origin
        return None

    def _skip_padding(self, run: _Run) -> None:
        """Padding files are zeros that no mirror serves: handed on without a request."""
        while run.span < len(run.spans) and self.urls[run.spans[run.span].file] is None:
            sp = run.spans[run.span]
            run.span += 1
            self._take(run, sp.at, bytes(sp.length))

    def _ask(self, c: WebConn, run: _Run, now: float) -> bool:
        """Send the requests for ``run`` (one per file span, from its current one) on ``c``,
        up to the first span that lives elsewhere (a redirect); False if none is for ``c``."""
        if not c.runs:
            self._skip_padding(run)
            if run.span == len(run.spans):
                return True  # padding only: done without a request
        i = run.span
        asks = []
        while i < len(run.spans):
            sp = run.spans[i]
            url = self.urls[sp.file]
            if url is not None:
                if target(url).origin != c.origin:
                    break
                whole = sp.offset == 0 and sp.length == self.files[sp.file].length
                client = RangeClient(pipelined=True)
                asks.append((client, client.get(url, sp.offset, sp.offset + sp.length - 1,
                                                whole_file=whole)))  # fmt: skip
            i += 1
        if not asks:
            return False
        run.asked_to = i
        if not c.clients:  # the oldest answer's clock starts now
            c.last_byte = now
            c.got = 0
            c.head_seen = False
        c.runs.append(run)
        for client, data in asks:
            c.clients.append(client)
            c.out += data
        self._flush(c, now)
        return True

    # -- socket events --------------------------------------------------------

    def on_event(self, c: WebConn, mask: int, now: float) -> None:
        """The selector says ``c``'s socket is ready."""
        if c.state == "closed":
            return
        try:
            if c.state == "connecting":
                assert c.sock is not None
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, errno.errorcode.get(err, "connect failed"))
                if c.origin[0] == "https":
                    c.sock = _tls().wrap_socket(
                        c.sock, server_hostname=c.origin[1], do_handshake_on_connect=False
                    )
                    self.sel.unregister(c.sock)  # the wrapper is a new object: re-register
                    self.sel.register(c.sock, selectors.EVENT_WRITE, c)
                    c.state = "tls"
                else:
                    self._connected(c, now)
                    return
            if c.state == "tls":
                self._handshake(c, now)
                return
            if mask & selectors.EVENT_WRITE:
                self._flush(c, now)
            if mask & selectors.EVENT_READ and c.state != "closed":
                self._read(c, now)
        except ssl.SSLCertVerificationError as exc:
            self._fail("tls-error", f"TLS certificate check failed: {exc.verify_message}", now)
        except OSError as exc:
            self._broken(c, exc, now)

    def _broken(self, c: WebConn, exc: OSError, now: float) -> None:
        if c.state == "ready" and (not c.clients or (c.served and not c.head_seen)):
            # An idle kept-alive connection went away, or it was reused just as the server
            # closed it (a reset for the request it never read): not a failure.
            self._requeue(c, now)
            return
        self._fail("connection-error", f"connection error: {_why(exc)}", now)

    def _handshake(self, c: WebConn, now: float) -> None:
        assert isinstance(c.sock, ssl.SSLSocket)
        try:
            c.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want(c, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._want(c, selectors.EVENT_WRITE)
            return
        self._connected(c, now)

    def _connected(self, c: WebConn, now: float) -> None:
        c.state = "ready"
        self._want(c, selectors.EVENT_READ)
        if self.state is CONNECTING:
            self.state = ACTIVE
            self.notes.append(Up())
        self.pump(now)

    def _flush(self, c: WebConn, now: float) -> None:
        if c.out and c.sock is not None:
            try:
                n = c.sock.send(c.out)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                n = 0
            except OSError as exc:  # also reached from pump(), outside on_event()
                self._broken(c, exc, now)
                return
            del c.out[:n]
        more = selectors.EVENT_WRITE if c.out else 0
        self._want(c, selectors.EVENT_READ | more)

    def _read(self, c: WebConn, now: float) -> None:
        sock = c.sock
        assert sock is not None
        while True:
            try:
                data = sock.recv(RECV_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            if not c.clients:
                # Nothing asked: the server closed an idle keep-alive connection, or sent
                # bytes after a response's end.
                if data:
                    self._fail("too-long", "bytes after the end of a response", now)
                else:
                    self._close(c)
                return
            c.clients[0].receive_data(data)
            if data:
                if not c.head_seen:
                    c.head_seen = True
                    c.first_byte = now
                c.last_byte = now
            if not self._drain(c, now) or not data:
                return
            # a short read drained the socket (TLS may still hold decrypted bytes)
            tls_more = isinstance(sock, ssl.SSLSocket) and sock.pending()
            if len(data) < RECV_SIZE and not tls_more:
                return

    def _drain(self, c: WebConn, now: float) -> bool:
        """Take the answers' events, the oldest request's first; False once the connection
        is done with."""
        while c.clients:
            client = c.clients[0]
            run = c.runs[0]
            e = client.next_event()
            if e is wire.NEED_DATA:
                return True
            if type(e) is Body:
                sp = run.spans[run.span]
                data = e.data
                self._take(run, sp.at + run.got, data)
                run.got += len(data)
                c.got += len(data)
                self.received += len(data)
            elif type(e) is Finished:
                c.served += 1
                self.failures = 0  # it delivered
                run.span += 1
                run.got = 0
                run.hops = 0
                c.clients.popleft()
                self._advance(c)
                if not e.reusable:  # the requests after it will not be answered
                    self._requeue(c, now)
                    return False
                # the next answer (if its start came with this one's end)
                rest = client.leftover()
                c.got = 0
                c.head_seen = bool(rest)
                c.first_byte = c.last_byte = now
                if c.clients:
                    c.clients[0].receive_data(rest)
                elif rest:
                    self._fail("too-long", "bytes after the end of a response", now)
                    return False
                else:
                    self.pump(now)
                    return c.state != "closed"
            elif type(e) is Redirect:
                run.hops += 1
                if run.hops > MAX_REDIRECTS:
                    self._fail("redirect-loop", f"more than {MAX_REDIRECTS} redirects", now)
                    return False
                self.urls[run.spans[run.span].file] = e.url  # later requests go there at once
                self._requeue(c, now)
                return False
            else:
                assert type(e) is Refused
                if e.outcome == "closed" and c.served and not c.head_seen:
                    self._requeue(c, now)  # closed a kept-alive connection as we reused it
                    return False
                self._fail(e.outcome, e.detail, now)
                return False
        return True

    def _advance(self, c: WebConn) -> None:
        """After an answer: runs finished (or whose next span is asked elsewhere) leave
        ``c``, the oldest remaining one's padding is handed on."""
        while c.runs:
            run = c.runs[0]
            self._skip_padding(run)
            if run.span < run.asked_to:
                return
            c.runs.popleft()
            if run.span < len(run.spans):
                self.runs.appendleft(run)  # the rest lives on another server

    def _requeue(self, c: WebConn, now: float) -> None:
        """``c`` is done with (closed by the server, a redirect): its runs go first in line
        again, from the span each had got to (no byte of which has arrived), and a fresh
        connection takes them.  Not a failure: a connection that never served an answer
        fails instead, so this cannot loop."""
        runs = [r for r in c.runs if r.span < len(r.spans)]
        c.runs.clear()
        c.clients.clear()
        self._close(c)
        self.runs.extendleft(reversed(runs))
        self.pump(now)

    # -- failures -------------------------------------------------------------

    def check(self, now: float) -> None:
        """Timers, from the worker's slow tick: stalls, drips, back-off ending."""
        if self.state is BACKOFF and now >= self.retry_at:
            self.state = CONNECTING
            self.connecting_since = now
        if self.state is CONNECTING and not self.conns:
            if now - self.connecting_since > self.connect_timeout:  # a name lookup hangs
                self._fail("connection-error", "name lookup timed out", now)
                return
            self._open(target(self.url).origin, now)
            return
        for c in list(self.conns):
            if c.state in ("connecting", "tls"):
                if now - c.opened > self.connect_timeout:
                    self._fail("connection-error", "connect timed out", now)
                    return
            elif c.clients:
                if now - c.last_byte > self.stall:
                    self._fail("timeout", f"no data for {self.stall:.0f} s", now)
                    return
                # judged from the answer's first byte: a slow start is the stall timeout's
                took = now - c.first_byte
                if c.head_seen and took > SLOW_AFTER and c.got < MIN_RATE * took:
                    self._fail("too-slow", f"{c.got / took:.0f} B/s", now)
                    return

    def _fail(self, outcome: Outcome, detail: str, now: float) -> None:
        """A request failed: out for a back-off (or for good); the worker releases the
        blocks asked of it (a :class:`Down` note)."""
        self._shut()
        if outcome == "connection-error":
            self._addr_turn += 1
        fatal = outcome not in RETRYABLE
        self.failures += 1
        if not fatal and self.failures >= MAX_FAILURES:
            fatal = True
            detail += f" ({self.failures} failures in a row)"
        if fatal:
            self.state = GONE
        else:
            self.state = BACKOFF
            self.retry_at = now + BACKOFF_DELAYS[min(self.failures, len(BACKOFF_DELAYS)) - 1]
        self.notes.append(Down(outcome, detail, fatal))

    def _shut(self) -> None:
        for c in list(self.conns):
            c.runs.clear()
            c.clients.clear()
            self._close(c)
        self.runs.clear()
        self.ready.clear()

    def close(self) -> None:
        """Gone for good (banned, the download complete, the worker stopping)."""
        self._shut()
        self.state = GONE


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
