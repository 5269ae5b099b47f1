"""One live peer connection inside a worker: a socket around ``wire.Connection``.

The socket is non-blocking and driven by the worker's selector loop.  Received
bytes land directly in the wire buffer (``recv_into``), so a block is copied
exactly once: from that buffer into the piece being assembled.
"""

from __future__ import annotations

import errno
import socket
import time
from collections import deque
from enum import Enum
from typing import Final

from mptorrent.messages import PeerAddr
from mptorrent.policy.pipeline import RequestWindow
from mptorrent.proto import wire
from mptorrent.record import Record, frozen


@frozen(slots=False)
class Timeouts(Record):
    """Peer deadlines in seconds; parameters so tests can shrink them."""

    connect: float = 10.0
    handshake: float = 15.0
    snub: float = 20.0  # requests outstanding and no block for this long (per block, not byte)
    idle: float = 120.0  # nothing but keep-alives for this long
    piece: float = 60.0  # a piece held with no block arriving for this long is given back


# Receive buffer per connection.  256 KiB saved 3-4 MiB at -j 2 but cost 1-3% of a loopback
# fetch's CPU and wall time (four times the reads and loop turns): benchmarks/README.md.
RECV_SIZE = 1 << 20


class PeerState(Enum):
    """Where a connection is: it only ever moves forward, to CLOSED at the latest."""

    CONNECTING = "connecting"  # TCP connect in flight (outgoing connections only)
    HANDSHAKING = "handshaking"  # connected; the BitTorrent handshake is not complete
    ACTIVE = "active"  # handshake done: messages flow
    CLOSED = "closed"


# The states by their bare names, as the worker loop compares them.
CONNECTING: Final = PeerState.CONNECTING
HANDSHAKING: Final = PeerState.HANDSHAKING
ACTIVE: Final = PeerState.ACTIVE
CLOSED: Final = PeerState.CLOSED


class PeerSession:
    """One peer inside one worker process: its non-blocking socket, :class:`wire.Connection`, unsent
    bytes and a request window fitted to its rate and round trip (``policy.pipeline``).
    Never leaves the process."""

    def __init__(
        self,
        addr: PeerAddr,
        *,
        info_hash: bytes,
        peer_id: bytes,
        num_pieces: int,
        piece_length: int,
        total_length: int,
    ) -> None:
        self.addr = addr
        self.info_hash = info_hash
        self.peer_id = peer_id
        self.wire = wire.Connection(
            info_hash, num_pieces, piece_length, total_length, buffer_size=RECV_SIZE
        )
        self.sock: socket.socket | None = None
        self.state: PeerState = CONNECTING
        self.out = bytearray()
        self.pending: set[tuple[int, int]] = set()  # (index, begin) we requested
        self.started = time.monotonic()
        self.last_recv = self.started
        self.last_block = self.started
        self.last_message = self.started  # last message other than a keep-alive
        self.bytes_in = 0
        self.bytes_out = 0
        self.close_reason = ""
        self.reported_bits = False
        self.inbound = False
        self.useful = False  # delivered at least one block
        self.source_address: str | None = None
        # rate estimate over a sliding window of (time, bytes) samples
        self._samples: deque[tuple[float, int]] = deque()
        self._window_bytes = 0
        self.window = RequestWindow()  # requests worth keeping in flight: rate x delay
        self.greeted_early = False  # our empty bitfield and interest went with the handshake

    # -- socket -------------------------------------------------------------

    def start_connect(self) -> None:
        family = socket.AF_INET6 if ":" in self.addr.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # a large receive buffer lets one recv_into take many blocks at once
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock = sock
        if self.source_address and (":" in self.source_address) == (family == socket.AF_INET6):
            sock.bind((self.source_address, 0))  # peers and trackers see our bind address
        err = sock.connect_ex((self.addr.host, self.addr.port))
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            raise OSError(err, errno.errorcode.get(err, "connect failed"))

    def finish_connect(self) -> None:
        assert self.sock is not None
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, errno.errorcode.get(err, "connect failed"))
        self.state = HANDSHAKING

    def accepted(self, sock: socket.socket) -> None:
        """An incoming connection: we already know the torrent, so greet at once."""
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.inbound = True
        self.state = HANDSHAKING

    def greet(self, *, dht: bool = False, empty: bool = False) -> None:
        """Our handshake, offering BEP 10 and BEP 6, and with ``dht`` BEP 5's bit (our DHT
        node runs).  Our piece state and interest wait for the peer's (:meth:`greet_rest`):
        only then do we know whether BEP 6 lets a HaveAll or HaveNone stand in for the
        bitfield.  ``empty`` (we hold nothing and want it all): an empty bitfield, valid with
        or without BEP 6, and our interest go with the handshake instead, so the peer's
        unchoke can come with its handshake, a round trip sooner (on a 300 ms link, 0.3 s
        of the start-up)."""
        reserved = bytearray(wire.EXTENSION_RESERVED)  # BEP 10
        reserved[wire.FAST_BYTE] |= wire.FAST_BIT  # BEP 6
        if dht:
            reserved[wire.DHT_BYTE] |= wire.DHT_BIT  # BEP 5
        conn = self.wire
        self.queue(conn.send(wire.Handshake(self.info_hash, self.peer_id, bytes(reserved))))
        if empty and conn.geometry is not None:
            nothing = wire.pack_bitfield(bytes(conn.geometry.num_pieces))
            self.queue(conn.send(wire.Bitfield(nothing)) + conn.send(wire.Interested()))
            self.greeted_early = True

    def greet_rest(self, have: bytes | bytearray | memoryview | None, interested: bool) -> None:
        """After the peer's handshake: our bitfield (only if we hold something; with the
        fast extension HaveAll or HaveNone when we hold all or nothing), then interest.
        Greeted early (an empty bitfield went with the handshake): a HAVE for each piece
        verified since, and interest only if it changed."""
        conn = self.wire
        if self.greeted_early:
            if have is not None:
                got = bytes(have)
                i = got.find(1)
                while i >= 0:
                    self.queue(conn.send(wire.Have(i)))
                    i = got.find(1, i + 1)
            if not interested:
                self.queue(conn.send(wire.NotInterested()))
            return
        if conn.fast_enabled and have is not None and conn.geometry is not None:
            if all(have):
                self.queue(conn.send(wire.HaveAll()))
            elif not any(have):
                self.queue(conn.send(wire.HaveNone()))
            else:
                self.queue(conn.send(wire.Bitfield(wire.pack_bitfield(have))))
        elif have is not None and any(have):
            self.queue(conn.send(wire.Bitfield(wire.pack_bitfield(have))))
        if interested:
            self.queue(conn.send(wire.Interested()))

    def queue(self, data: bytes) -> None:
        self.out += data

    def flush(self) -> bool:
        """Send what we can; True if bytes remain (the caller watches for writability)."""
        if not self.out or self.sock is None:
            return False
        try:
            n = self.sock.send(self.out)
        except BlockingIOError:
            return True
        self.bytes_out += n
        del self.out[:n]
        return bool(self.out)

    def receive(self, max_bytes: int = RECV_SIZE) -> bool:
        """One ``recv_into`` of at most ``max_bytes`` (a rate limit's share); False when the
        peer closed the connection."""
        assert self.sock is not None
        buf = self.wire.get_buffer(RECV_SIZE)
        try:
            n = self.sock.recv_into(buf, min(max_bytes, len(buf)))
        except BlockingIOError:
            return True
        finally:
            buf.release()
        if n == 0:
            return False
        self.wire.buffer_updated(n)
        now = time.monotonic()
        self.last_recv = now
        self.bytes_in += n
        self._samples.append((now, n))
        self._window_bytes += n
        return True

    def close(self, reason: str) -> None:
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self.close_reason = reason
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass

    # -- pipeline -----------------------------------------------------------

    def rate(self, now: float) -> float:
        """Bytes per second over the last two seconds."""
        while self._samples and now - self._samples[0][0] > 2.0:
            self._window_bytes -= self._samples.popleft()[1]
        span = max(0.25, min(2.0, now - self.started))
        return self._window_bytes / span

    def update_depth(self, rate: float, left: float | None = None) -> None:
        """Resize the request window (``policy.pipeline.RequestWindow.update``)."""
        self.window.update(rate, left)

    @property
    def depth(self) -> int:
        """Requests worth keeping in flight (slow start, then rate x round trip)."""
        return self.window.depth

    @property
    def batch(self) -> int:
        """The fewest free slots worth a top-up while requests are outstanding."""
        return self.window.batch

    @property
    def can_request(self) -> bool:
        """Requests may go out: the peer does not choke us, or it does but allowed us some
        pieces fast (BEP 6; :attr:`allowed_while_choked` says which)."""
        if self.state != ACTIVE:
            return False
        conn = self.wire
        return not conn.peer_choking or bool(conn.allowed_fast)

    @property
    def allowed_while_choked(self) -> frozenset[int] | None:
        """None while the peer does not choke us; else the pieces it allowed us fast
        (BEP 6), the only ones we may ask of it then (often none)."""
        conn = self.wire
        return conn.allowed_fast if conn.peer_choking else None

    @property
    def spare(self) -> int:
        if not self.can_request:
            return 0
        w = self.window
        n = w.depth - len(self.pending)
        if w.junk:  # cancelled requests the peer is probably still sending count too
            n -= w.in_flight(time.monotonic())
        return n
