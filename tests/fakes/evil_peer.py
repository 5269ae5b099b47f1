"""A scripted hostile BitTorrent peer on its own loopback address (libtorrent's fake_peer.hpp).

    def liar(c: EvilConn) -> None:
        c.greet()                                    # handshakes, full bitfield, unchoke
        c.serve_from(data, corrupt=stamp(b"EVIL"))   # answer every request with junk

    with EvilPeer("127.0.5.20", meta, liar) as evil:
        fetch(meta, out, FetchOptions(peers=(good, evil.addr), use_trackers=False))
    assert evil.connections[0].end == "closed by client"

Every connection, accepted or dialled out (:meth:`EvilPeer.dial`), runs the script in a
thread of its own.  A reader thread parses whatever the client sends and records how and
when the connection ended; after the script returns the connection stays open until the
client closes it or the peer is stopped.  It is an adversary, not a mock: everything goes
over real sockets, the bytes are built here by hand (not by ``mptorrent.proto.wire``), and the
scripts may break any rule of the protocol.
"""

from __future__ import annotations

import os
import queue
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import NamedTuple, Protocol

from mptorrent.messages import PeerAddr

PROTOCOL = b"BitTorrent protocol"
HANDSHAKE_LEN = 68
BLOCK = 16384
CHOKE, UNCHOKE, INTERESTED, NOT_INTERESTED, HAVE, BITFIELD, REQUEST, PIECE, CANCEL, PORT = range(10)
HAVE_ALL, HAVE_NONE = 14, 15  # BEP 6, which the client does not negotiate
EXTENDED = 20  # BEP 10
EXTENSION_RESERVED = bytes([0, 0, 0, 0, 0, 0x10, 0, 0])
SEND_TIMEOUT = 10.0

# How a connection ended; "by client" are the ones the client under test chose.
CLOSED_BY_CLIENT = "closed by client"
RESET_BY_CLIENT = "reset by client"
CLOSED_BY_PEER = "closed by peer"
RESET_BY_PEER = "reset by peer"
STOPPED = "stopped"  # still open when the test tore the peer down


class Torrent(Protocol):
    """What the peer needs to know of the torrent (a ``Metainfo`` will do)."""

    @property
    def info_hash(self) -> bytes: ...
    @property
    def num_pieces(self) -> int: ...
    @property
    def piece_length(self) -> int: ...
    @property
    def total_length(self) -> int: ...


class PeerGone(Exception):
    """The connection is over (the client closed it, or the test stops the peer)."""


class Request(NamedTuple):
    index: int
    begin: int
    length: int


class Message(NamedTuple):
    at: float  # time.monotonic() when it was parsed
    msg_id: int | None  # None for a keep-alive
    payload: bytes


@dataclass
class ConnLog:
    """What happened on one connection, as the hostile side saw it."""

    n: int  # 0 for the first connection of this peer
    opened: float  # time.monotonic()
    inbound: bool  # the client dialled us
    their_handshake: bytes | None = None
    received: list[Message] = field(default_factory=list)
    sent_bytes: int = 0
    blocks_sent: int = 0
    marks: dict[str, float] = field(default_factory=dict)  # named moments set by the script
    end: str = ""  # one of the module's end constants; "" while open
    ended: float | None = None
    error: str = ""  # traceback of a script that failed (a bug in the test)

    @property
    def by_client(self) -> bool:
        return self.end in (CLOSED_BY_CLIENT, RESET_BY_CLIENT)

    @property
    def their_peer_id(self) -> bytes | None:
        return None if self.their_handshake is None else self.their_handshake[48:68]

    @property
    def requests(self) -> list[Request]:
        return [
            Request(*struct.unpack(">III", m.payload))
            for m in self.received
            if m.msg_id == REQUEST and len(m.payload) == 12
        ]

    @property
    def first_request_at(self) -> float | None:
        return next((m.at for m in self.received if m.msg_id == REQUEST), None)

    @property
    def lifetime(self) -> float | None:
        return None if self.ended is None else self.ended - self.opened


Script = Callable[["EvilConn"], None]
Corrupt = Callable[[int, int, bytes], bytes]


def stamp(tag: bytes) -> Corrupt:
    """Corruption that replaces a block with ``tag`` repeated: easy to spot on disk."""

    def corrupt(_index: int, _begin: int, block: bytes) -> bytes:
        return (tag * (len(block) // len(tag) + 1))[: len(block)]

    return corrupt


def flip(_index: int, _begin: int, block: bytes) -> bytes:
    """Corruption that inverts every bit of the block."""
    return bytes(b ^ 0xFF for b in block)


def message(msg_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">IB", 1 + len(payload), msg_id) + payload


def full_bitfield(num_pieces: int, have: set[int] | None = None) -> bytes:
    """The packed bitfield of ``have`` (default: every piece), spare bits clear."""
    bits = bytearray((num_pieces + 7) // 8)
    for i in range(num_pieces) if have is None else have:
        bits[i >> 3] |= 0x80 >> (i & 7)
    return bytes(bits)


class EvilConn:
    """One connection, and the verbs a script plays on it."""

    def __init__(self, peer: EvilPeer, sock: socket.socket, log: ConnLog) -> None:
        self.peer = peer
        self.torrent = peer.torrent
        self.sock = sock
        self.log = log
        self._inbox: queue.Queue[Message | None] = queue.Queue()
        self._handshake = threading.Event()
        self._gone = threading.Event()
        self._lock = threading.Lock()
        sock.settimeout(SEND_TIMEOUT)

    # -- bookkeeping ---------------------------------------------------------

    def _ended(self, how: str) -> bool:
        """Record the first way the connection ended; True if this call recorded it."""
        with self._lock:
            if self.log.end:
                return False
            self.log.end = how
            self.log.ended = time.monotonic()
        self._gone.set()
        self._inbox.put(None)
        return True

    @property
    def gone(self) -> bool:
        return self._gone.is_set() or self.peer.stopping.is_set()

    def mark(self, name: str) -> None:
        """Note the time of a moment the test wants to measure from."""
        self.log.marks[name] = time.monotonic()

    def sleep(self, seconds: float) -> None:
        if self._gone.wait(seconds) or self.peer.stopping.is_set():
            raise PeerGone

    # -- receiving -------------------------------------------------------------

    def _read_loop(self) -> None:
        buf = bytearray()
        shaken = False
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                if self.gone:
                    return
                continue
            except ConnectionResetError:
                self._ended(RESET_BY_CLIENT)
                return
            except OSError:
                return  # we closed it ourselves
            if not data:
                self._ended(CLOSED_BY_CLIENT)
                return
            buf += data
            if not shaken:
                if len(buf) < HANDSHAKE_LEN:
                    continue
                self.log.their_handshake = bytes(buf[:HANDSHAKE_LEN])
                del buf[:HANDSHAKE_LEN]
                shaken = True
                self._handshake.set()
            while len(buf) >= 4:
                (length,) = struct.unpack_from(">I", buf)
                if len(buf) < 4 + length:
                    break
                body = bytes(buf[4 : 4 + length])
                del buf[: 4 + length]
                msg = Message(time.monotonic(), body[0] if body else None, body[1:])
                self.log.received.append(msg)
                self._inbox.put(msg)

    def read_handshake(self, timeout: float = 5.0) -> bytes:
        """Wait for the client's 68-byte handshake and return it."""
        deadline = time.monotonic() + timeout
        while not self._handshake.wait(0.05):
            if self.gone or time.monotonic() > deadline:
                raise PeerGone
        assert self.log.their_handshake is not None
        return self.log.their_handshake

    def next_message(self, timeout: float = 10.0) -> Message:
        try:
            msg = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no message from the client in {timeout} s") from None
        if msg is None:
            self._inbox.put(None)  # keep answering "gone"
            raise PeerGone
        return msg

    def next_request(self, timeout: float = 10.0) -> Request:
        """The next REQUEST the client sends (other messages are only recorded)."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.next_message(max(0.0, deadline - time.monotonic()))
            if msg.msg_id == REQUEST and len(msg.payload) == 12:
                return Request(*struct.unpack(">III", msg.payload))

    def requests_within(self, seconds: float) -> list[Request]:
        """Every REQUEST that arrives in the next ``seconds`` (at least one is waited for)."""
        got = [self.next_request()]
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.next_request(left))
            except TimeoutError:
                break
        return got

    # -- sending ---------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        if self.gone:
            raise PeerGone
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self._ended(RESET_BY_CLIENT)
            raise PeerGone from None
        except OSError:
            raise PeerGone from None
        self.log.sent_bytes += len(data)

    def send_message(self, msg_id: int, payload: bytes = b"") -> None:
        self.send_raw(message(msg_id, payload))

    def send_length_prefix(self, length: int, msg_id: int | None = None) -> None:
        """A message header claiming ``length`` bytes, and nothing after it."""
        head = struct.pack(">I", length)
        self.send_raw(head if msg_id is None else head + bytes([msg_id]))

    def send_handshake(
        self,
        info_hash: bytes | None = None,
        peer_id: bytes | None = None,
        *,
        pstr: bytes = PROTOCOL,
        pstrlen: int | None = None,
        reserved: bytes = bytes(8),
    ) -> None:
        self.send_raw(
            bytes([len(pstr) if pstrlen is None else pstrlen])
            + pstr
            + reserved
            + (self.torrent.info_hash if info_hash is None else info_hash)
            + (self.peer.peer_id if peer_id is None else peer_id)
        )
        self.mark("handshake")

    def send_keepalive(self) -> None:
        self.send_raw(bytes(4))

    def send_choke(self) -> None:
        self.send_message(CHOKE)
        self.mark("choke")

    def send_unchoke(self) -> None:
        self.send_message(UNCHOKE)
        self.mark("unchoke")

    def send_interested(self) -> None:
        self.send_message(INTERESTED)

    def send_have(self, index: int) -> None:
        self.send_message(HAVE, struct.pack(">I", index))

    def send_have_all(self) -> None:
        self.send_message(HAVE_ALL)

    def send_have_none(self) -> None:
        self.send_message(HAVE_NONE)

    def send_bitfield(self, bits: bytes | None = None) -> None:
        self.send_message(
            BITFIELD, full_bitfield(self.torrent.num_pieces) if bits is None else bits
        )

    def send_piece(self, index: int, begin: int, data: bytes) -> None:
        self.send_raw(struct.pack(">IBII", 9 + len(data), PIECE, index, begin) + data)
        self.log.blocks_sent += 1

    def send_extended(self, ext_id: int, payload: bytes) -> None:
        self.send_message(EXTENDED, bytes([ext_id]) + payload)

    def greet(self, *, bitfield: bool = True, unchoke: bool = True) -> bytes:
        """The usual opening: wait for the client's handshake, answer it, offer every piece
        and unchoke.  Returns the client's handshake."""
        theirs = self.read_handshake()
        self.send_handshake()
        if bitfield:
            self.send_bitfield()
        if unchoke:
            self.send_unchoke()
        return theirs

    # -- behaviours --------------------------------------------------------------

    def block(self, data: bytes, req: Request) -> bytes:
        start = req.index * self.torrent.piece_length + req.begin
        return data[start : start + req.length]

    def serve_from(
        self, data: bytes, *, corrupt: Corrupt | None = None, limit: int | None = None,
        pace: float = 0.0,
    ) -> int:  # fmt: skip
        """Answer requests from ``data`` (the whole torrent's bytes), through ``corrupt`` if
        given, one block per ``pace`` seconds at most, until ``limit`` blocks are sent or the
        connection ends; the count sent."""
        sent = 0
        while limit is None or sent < limit:
            try:
                req = self.next_request(timeout=1.0)
            except TimeoutError:
                if self.gone:
                    raise PeerGone from None
                continue
            block = self.block(data, req)
            if corrupt is not None:
                block = corrupt(req.index, req.begin, block)
            self.send_piece(req.index, req.begin, block)
            sent += 1
            if pace:
                self.sleep(pace)
        return sent

    def trickle(self, data: bytes, rate: float) -> None:
        """Send ``data`` at ``rate`` bytes per second (slowloris), one small write at a time."""
        step = max(1, int(rate / 10))
        pause = step / rate
        for i in range(0, len(data), step):
            self.send_raw(data[i : i + step])
            self.sleep(pause)

    def keepalive_forever(self, interval: float = 0.5) -> None:
        while True:
            self.send_keepalive()
            self.sleep(interval)

    def hold(self) -> None:
        """Say nothing until the client gives up."""
        while True:
            self.sleep(1.0)

    def close(self) -> None:
        if self._ended(CLOSED_BY_PEER):
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
        raise PeerGone

    def reset(self) -> None:
        """Abort with a TCP RST (SO_LINGER 0), not an orderly FIN."""
        if self._ended(RESET_BY_PEER):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        raise PeerGone

    def reset_after(self, n_blocks: int, data: bytes, corrupt: Corrupt | None = None) -> None:
        self.serve_from(data, corrupt=corrupt, limit=n_blocks)
        self.reset()


class EvilPeer:
    """A listening hostile peer on ``host`` (a free port unless given); each connection plays
    ``script``.  ``connections`` logs every connection in the order they opened."""

    def __init__(
        self, host: str, torrent: Torrent, script: Script, *, port: int = 0,
        peer_id: bytes | None = None,
    ) -> None:  # fmt: skip
        self.host = host
        self.torrent = torrent
        self.script = script
        self.peer_id = peer_id or b"-EV0001-" + os.urandom(12)
        self.stopping = threading.Event()
        self.connections: list[ConnLog] = []
        self._conns: list[EvilConn] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]

    @property
    def addr(self) -> PeerAddr:
        return PeerAddr(self.host, self.port)

    @property
    def attempts(self) -> int:
        """How many times the client connected (or we dialled it)."""
        return len(self.connections)

    @property
    def errors(self) -> list[str]:
        return [c.error for c in self.connections if c.error]

    def start(self) -> EvilPeer:
        self._spawn(self._accept_loop, "accept")
        return self

    def __enter__(self) -> EvilPeer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            if c._ended(STOPPED):
                try:
                    c.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.sock.close()
        for t in list(self._threads):
            t.join(5.0)

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        t = threading.Thread(target=target, args=args, name=f"evil-{self.host}-{name}", daemon=True)
        self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._run(sock, inbound=True)

    def dial(self, addr: tuple[str, int], timeout: float = 5.0) -> ConnLog:
        """Connect to ``addr`` from our own address and play the script there."""
        sock = socket.create_connection(addr, timeout=timeout, source_address=(self.host, 0))
        return self._run(sock, inbound=False)

    def _run(self, sock: socket.socket, *, inbound: bool) -> ConnLog:
        with self._lock:
            log = ConnLog(len(self.connections), time.monotonic(), inbound)
            conn = EvilConn(self, sock, log)
            self.connections.append(log)
            self._conns.append(conn)
        self._spawn(conn._read_loop, f"read{log.n}")
        self._spawn(self._play, f"play{log.n}", conn)
        return log

    def _play(self, conn: EvilConn) -> None:
        try:
            self.script(conn)
            conn.hold()
        except PeerGone:
            pass
        except TimeoutError:
            pass  # the client went quiet while the script waited for it
        except Exception:
            conn.log.error = traceback.format_exc()
