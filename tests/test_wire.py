"""Tests for mptorrent.proto.wire, the sans-IO peer wire protocol.

Two real Connections talk through an in-memory link (h11's ConnectionPair
habit); adversarial cases are named for what they defend against.  Run this
file directly for a parse-rate micro-benchmark.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import time
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mptorrent.errors import ProtocolError
from mptorrent.proto.wire import (
    BLOCK_SIZE,
    DHT_RESERVED,
    EXTENSION_BIT,
    EXTENSION_RESERVED,
    HANDSHAKE_LEN,
    MAX_CANCELLED,
    MAX_MESSAGE,
    MAX_UNWANTED_BYTES,
    NEED_DATA,
    PROTOCOL,
    Bitfield,
    Cancel,
    Choke,
    Connection,
    Event,
    Extended,
    Handshake,
    Hashes,
    HashReject,
    HashRequest,
    Have,
    HaveAll,
    Interested,
    KeepAlive,
    LocalProtocolError,
    NotInterested,
    Piece,
    Port,
    RemoteProtocolError,
    Request,
    Unchoke,
    pack_bitfield,
    unpack_bitfield,
)

IH = bytes(range(20))
OTHER_IH = bytes(range(1, 21))
PID_A = b"-MP0001-aaaaaaaaaaaa"
PID_B = b"-MP0001-bbbbbbbbbbbb"

# Five pieces of two blocks; the last piece is a single short block.
PIECE_LEN = 2 * BLOCK_SIZE
NUM_PIECES = 5
LAST_SIZE = 10_000
TOTAL = (NUM_PIECES - 1) * PIECE_LEN + LAST_SIZE


def new_conn(
    num_pieces: int = NUM_PIECES,
    piece_length: int = PIECE_LEN,
    total: int = TOTAL,
    buffer_size: int = 1 << 20,
) -> Connection:
    return Connection(IH, num_pieces, piece_length, total, buffer_size=buffer_size)


def handshake_bytes(
    info_hash: bytes = IH, peer_id: bytes = PID_A, reserved: bytes = bytes(8)
) -> bytes:
    return b"\x13" + PROTOCOL + reserved + info_hash + peer_id


def drain(conn: Connection) -> list[Event]:
    """Every event now available, with blocks copied out (views die on the next feed)."""
    out: list[Event] = []
    while (ev := conn.next_event()) is not NEED_DATA:
        assert isinstance(ev, Event)
        out.append(snapshot(ev))
    return out


def snapshot(ev: Event) -> Event:
    if isinstance(ev, Piece):
        return Piece(ev.index, ev.begin, bytes(ev.block))
    return ev


def feed_zero_copy(conn: Connection, data: bytes, chunk: int = 65536) -> list[Event]:
    """Deliver like a socket would (get_buffer/recv_into/buffer_updated)."""
    events: list[Event] = []
    pos = 0
    while pos < len(data):
        view = conn.get_buffer()
        n = min(len(view), chunk, len(data) - pos)
        view[:n] = data[pos : pos + n]
        conn.buffer_updated(n)
        pos += n
        events.extend(drain(conn))
    return events


class Pair:
    """Two Connections joined by an in-memory link."""

    def __init__(
        self,
        *,
        ext: bool = False,
        num_pieces: int = NUM_PIECES,
        piece_length: int = PIECE_LEN,
        total: int = TOTAL,
        buffer_size: int = 1 << 20,
    ) -> None:
        self.a = new_conn(num_pieces, piece_length, total, buffer_size)
        self.b = new_conn(num_pieces, piece_length, total, buffer_size)
        reserved = EXTENSION_RESERVED if ext else bytes(8)
        assert self.deliver(self.a, Handshake(IH, PID_A, reserved)) == [
            Handshake(IH, PID_A, reserved)
        ]
        assert self.deliver(self.b, Handshake(IH, PID_B, reserved)) == [
            Handshake(IH, PID_B, reserved)
        ]

    def other(self, conn: Connection) -> Connection:
        return self.b if conn is self.a else self.a

    def deliver(self, sender: Connection, *events: Event) -> list[Event]:
        """Send ``events`` from ``sender``; return what the other side parsed."""
        receiver = self.other(sender)
        data = b"".join(sender.send(ev) for ev in events)
        return feed_zero_copy(receiver, data)

    def expect_same(self, sender: Connection, *events: Event) -> None:
        assert self.deliver(sender, *events) == list(events)

    def b_requests(self, *blocks: tuple[int, int, int]) -> None:
        """b asks a for blocks (a unchokes b first if needed)."""
        if self.b.peer_choking:
            self.expect_same(self.a, Unchoke())
        self.expect_same(self.b, *(Request(*blk) for blk in blocks))


# -- byte-for-byte, both directions ----------------------------------------------

WIRE_CASES: list[tuple[Event, str]] = [
    (KeepAlive(), "00000000"),
    (Choke(), "00000001 00"),
    (Unchoke(), "00000001 01"),
    (Interested(), "00000001 02"),
    (NotInterested(), "00000001 03"),
    (Have(3), "00000005 04 00000003"),
    (Bitfield(b"\xa8"), "00000002 05 a8"),
    (Request(1, 16384, 16384), "0000000d 06 00000001 00004000 00004000"),
    (Piece(4, 0, b"abc"), "0000000c 07 00000004 00000000 616263"),
    (Cancel(4, 100, 9900), "0000000d 08 00000004 00000064 000026ac"),
    (Port(6881), "00000003 09 1ae1"),
    (Extended(0, b"d1:md6:ut_pexi1eee"), "00000014 14 00" + b"d1:md6:ut_pexi1eee".hex()),
]


@pytest.mark.parametrize(("event", "wire"), WIRE_CASES, ids=lambda c: type(c).__name__)
def test_message_bytes_both_ways(event: Event, wire: str) -> None:
    pair = Pair(ext=True)
    if isinstance(event, Piece):
        pair.b_requests((event.index, event.begin, len(event.block)))
    if isinstance(event, Request):
        pair.expect_same(pair.b, Unchoke())
    data = pair.a.send(event)
    assert data == bytes.fromhex(wire)
    pair.b.receive_data(data)
    got = pair.b.next_event()
    assert type(got) is type(event)
    assert got == event
    assert pair.b.next_event() is NEED_DATA


def test_handshake_bytes_both_ways() -> None:
    reserved = bytes([0, 0, 0, 0, 0, EXTENSION_BIT, 0, 1])
    a = new_conn()
    b = new_conn()
    data = a.send(Handshake(IH, PID_A, reserved))
    assert data == b"\x13BitTorrent protocol" + reserved + IH + PID_A
    assert len(data) == HANDSHAKE_LEN
    assert not b.handshake_received
    b.receive_data(data)
    assert b.next_event() == Handshake(IH, PID_A, reserved)
    assert b.handshake_received
    assert b.peer_reserved == reserved


def test_piece_header_for_scatter_gather() -> None:
    pair = Pair()
    pair.a.send(Unchoke())
    block = bytes(range(200))
    assert pair.a.piece_header(1, 512, len(block)) + block == pair.a.send(Piece(1, 512, block))
    assert pair.a.piece_header(1, 512, 200) == bytes.fromhex("000000d1 07 00000001 00000200")


def test_send_piece_accepts_a_memoryview_block() -> None:
    pair = Pair()
    pair.a.send(Unchoke())
    block = memoryview(b"x" * 100)
    assert pair.a.send(Piece(0, 0, block)) == pair.a.piece_header(0, 0, 100) + b"x" * 100


# -- two connections exchanging whole pieces -------------------------------------


def test_pair_exchanges_full_pieces() -> None:
    rng = random.Random(1)
    content = rng.randbytes(TOTAL)
    seeder = Pair(ext=True)
    a, b = seeder.a, seeder.b
    bits = pack_bitfield(b"\x01" * NUM_PIECES)
    seeder.expect_same(a, Bitfield(bits))
    assert b.peer_is_seed
    assert b.peer_has == bytearray(b"\x01" * NUM_PIECES)
    seeder.expect_same(b, Interested())
    assert a.peer_interested and b.am_interested
    seeder.expect_same(a, Unchoke())
    assert not b.peer_choking and not a.am_choking

    received = bytearray(TOTAL)
    for index in (0, NUM_PIECES - 1):
        size = LAST_SIZE if index == NUM_PIECES - 1 else PIECE_LEN
        blocks = [
            (index, begin, min(BLOCK_SIZE, size - begin)) for begin in range(0, size, BLOCK_SIZE)
        ]
        requests = seeder.deliver(b, *(Request(*blk) for blk in blocks))
        assert requests == [Request(*blk) for blk in blocks]
        assert b.outstanding_requests == len(blocks)
        # The seeder answers; the downloader copies each block once, straight from the view.
        data = b"".join(
            a.send(Piece(r.index, r.begin, content[index * PIECE_LEN + r.begin :][: r.length]))
            for r in requests
            if isinstance(r, Request)
        )
        pos = 0
        while pos < len(data):
            view = b.get_buffer()
            n = min(len(view), 5000, len(data) - pos)
            view[:n] = data[pos : pos + n]
            b.buffer_updated(n)
            pos += n
            while (ev := b.next_event()) is not NEED_DATA:
                assert isinstance(ev, Piece)
                offset = ev.index * PIECE_LEN + ev.begin
                received[offset : offset + len(ev.block)] = ev.block
        assert b.outstanding_requests == 0
        piece = slice(index * PIECE_LEN, index * PIECE_LEN + size)
        assert hashlib.sha1(received[piece]).digest() == hashlib.sha1(content[piece]).digest()


def test_received_piece_block_is_a_read_only_view_into_the_buffer() -> None:
    pair = Pair()
    pair.b_requests((0, 0, BLOCK_SIZE))
    data = pair.a.send(Piece(0, 0, b"z" * BLOCK_SIZE))
    view = pair.b.get_buffer()
    view[: len(data)] = data
    pair.b.buffer_updated(len(data))
    ev = pair.b.next_event()
    assert isinstance(ev, Piece)
    assert isinstance(ev.block, memoryview)
    assert ev.block.readonly
    assert ev.block.obj is view.obj  # the very buffer the "socket" wrote into
    assert ev.block == b"z" * BLOCK_SIZE


# -- the handshake -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x12" + PROTOCOL, "not a BitTorrent handshake"),
        (b"\x13" + b"BitTorrent protocoX", "not a BitTorrent handshake"),
        (b"GET / HTTP/1.1\r\n\r\n", "not a BitTorrent handshake"),
        (handshake_bytes(info_hash=OTHER_IH), "wrong info-hash"),
    ],
)
def test_bad_handshake_is_refused(data: bytes, reason: str) -> None:
    conn = new_conn()
    conn.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=reason):
        conn.next_event()


def test_wrong_info_hash_is_refused_before_the_peer_id_arrives() -> None:
    conn = new_conn()
    conn.receive_data(handshake_bytes(info_hash=OTHER_IH)[:29])
    with pytest.raises(RemoteProtocolError, match="wrong info-hash"):
        conn.next_event()


def test_remote_errors_are_protocol_errors_and_sticky() -> None:
    conn = new_conn()
    conn.receive_data(b"\x00")
    with pytest.raises(ProtocolError) as first:
        conn.next_event()
    conn.receive_data(handshake_bytes())  # ignored from now on, never raises
    with pytest.raises(ProtocolError) as second:
        conn.next_event()
    assert first.value is second.value
    assert conn.get_buffer()  # the caller may keep draining its socket


# -- caps, checked on the length prefix before anything is buffered ---------------


def established_receiver(buffer_size: int = 1024, **geometry: int) -> Connection:
    conn = new_conn(buffer_size=buffer_size, **geometry)
    conn.receive_data(handshake_bytes())
    assert isinstance(conn.next_event(), Handshake)
    return conn


@pytest.mark.parametrize("length", [0xFFFFFFFF, 1 << 31, MAX_MESSAGE + 1, 1 << 24])
def test_huge_length_prefix_is_refused_without_allocating(length: int) -> None:
    conn = established_receiver()
    before = conn.buffer_capacity
    conn.receive_data(length.to_bytes(4, "big"))  # the id has not even arrived
    with pytest.raises(RemoteProtocolError, match="too large"):
        conn.next_event()
    assert conn.buffer_capacity == before


def test_huge_length_prefix_via_get_buffer_does_not_grow_buffer() -> None:
    conn = established_receiver()
    before = conn.buffer_capacity
    with pytest.raises(RemoteProtocolError):
        feed_zero_copy(conn, (0xFFFFFFF0).to_bytes(4, "big") + b"\x07" + bytes(3000), chunk=512)
    assert conn.buffer_capacity == before


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ((9 + BLOCK_SIZE + 1, 7), "piece message of 16394 bytes is too large"),
        ((MAX_MESSAGE, 7), "too large"),
        ((9, 7), "empty block"),
        ((1 + 2, 5), "bitfield of 2 bytes for 5 pieces"),  # too long
        ((1, 5), "bitfield of 0 bytes"),  # empty bitfield (libtorrent 1.2 crash)
        ((MAX_MESSAGE, 5), "bitfield"),
        ((2, 0), "message 0 has length 2, not 1"),
        ((2, 1), "message 1 has length 2"),
        ((2, 2), "message 2 has length 2"),
        ((5, 3), "message 3 has length 5"),
        ((4, 4), "message 4 has length 4, not 5"),
        ((6, 4), "message 4 has length 6, not 5"),
        ((12, 6), "message 6 has length 12, not 13"),
        ((MAX_MESSAGE, 6), "message 6"),
        ((14, 8), "message 8 has length 14, not 13"),
        ((2, 9), "message 9 has length 2, not 3"),
        ((4, 9), "message 9 has length 4, not 3"),
        ((MAX_MESSAGE + 1, 20), "too large"),
        ((MAX_MESSAGE + 1, 0xFF), "too large"),
        ((1, 13), "fast-extension message 13"),
        ((5, 14), "fast-extension message 14"),
        ((1, 15), "fast-extension message 15"),
        ((13, 16), "fast-extension message 16"),
        ((5, 17), "fast-extension message 17"),
    ],
)
def test_length_caps_are_checked_on_the_header(header: tuple[int, int], reason: str) -> None:
    conn = established_receiver()
    before = conn.buffer_capacity
    length, msg_id = header
    conn.receive_data(length.to_bytes(4, "big") + bytes([msg_id]))  # header only
    with pytest.raises(RemoteProtocolError, match=reason):
        conn.next_event()
    assert conn.buffer_capacity == before


def test_huge_torrent_allows_its_big_bitfield_but_nothing_else_that_big() -> None:
    num_pieces = 8 * MAX_MESSAGE + 8  # a bitfield of MAX_MESSAGE + 1 bytes
    conn = established_receiver(num_pieces=num_pieces, piece_length=1, total=num_pieces)
    conn.receive_data((MAX_MESSAGE + 2).to_bytes(4, "big") + b"\x05")
    assert conn.next_event() is NEED_DATA  # legal so far: the bitfield is that long
    conn = established_receiver(num_pieces=num_pieces, piece_length=1, total=num_pieces)
    conn.receive_data((MAX_MESSAGE + 1).to_bytes(4, "big") + b"\x14")
    with pytest.raises(RemoteProtocolError, match="too large"):
        conn.next_event()
    assert conn.buffer_capacity == 1024


def test_extended_message_needs_an_id_and_negotiation() -> None:
    pair = Pair(ext=True)
    pair.b.receive_data(bytes.fromhex("00000001 14"))
    with pytest.raises(RemoteProtocolError, match="without an id"):
        pair.b.next_event()
    plain = Pair(ext=False)
    plain.b.receive_data(bytes.fromhex("00000002 14 00"))
    with pytest.raises(RemoteProtocolError, match="BEP 10"):
        plain.b.next_event()


def test_buffer_grows_only_for_a_validated_message_that_needs_it() -> None:
    pair = Pair(ext=True, buffer_size=128)
    assert pair.b.buffer_capacity == 128
    pair.b_requests((0, 0, BLOCK_SIZE))
    assert pair.b.buffer_capacity == 128
    pair.a.send(Unchoke())
    assert pair.deliver(pair.a, Piece(0, 0, b"q" * BLOCK_SIZE)) == [Piece(0, 0, b"q" * BLOCK_SIZE)]
    assert pair.b.buffer_capacity == 13 + BLOCK_SIZE  # exactly one piece message
    big = Extended(1, b"p" * (MAX_MESSAGE - 2))
    assert pair.deliver(pair.a, big) == [big]
    assert pair.b.buffer_capacity == MAX_MESSAGE + 4


def test_unknown_message_ids_are_skipped_without_buffering() -> None:
    conn = established_receiver(buffer_size=1024)
    unknown = (100_001).to_bytes(4, "big") + b"\xff" + bytes(100_000)
    events = feed_zero_copy(conn, unknown + bytes.fromhex("00000005 04 00000002"), chunk=700)
    assert events == [Have(2)]
    assert conn.buffer_capacity == 1024


def test_unknown_message_is_ignored_entirely() -> None:
    conn = established_receiver()
    conn.receive_data(bytes.fromhex("00000003 0a 0102 00000001 01"))
    assert drain(conn) == [Unchoke()]


def test_get_buffer_compacts_without_losing_unread_bytes() -> None:
    pair = Pair(buffer_size=200)
    pair.b_requests((0, 0, 100), (0, 100, 100))
    pair.a.send(Unchoke())
    data = pair.a.send(Piece(0, 0, b"1" * 100)) + pair.a.send(Piece(0, 100, b"2" * 100))
    # 150 bytes in: one whole message (113) and a partial one.
    view = pair.b.get_buffer()
    view[:150] = data[:150]
    pair.b.buffer_updated(150)
    assert drain(pair.b) == [Piece(0, 0, b"1" * 100)]
    view = pair.b.get_buffer(min_size=100)  # tail is 50: the partial message moves to the front
    assert len(view) == 200 - 37
    view[: len(data) - 150] = data[150:]
    pair.b.buffer_updated(len(data) - 150)
    assert drain(pair.b) == [Piece(0, 100, b"2" * 100)]


def test_get_buffer_refuses_when_the_caller_did_not_drain() -> None:
    conn = new_conn(buffer_size=HANDSHAKE_LEN)
    view = conn.get_buffer()
    view[:] = handshake_bytes()
    conn.buffer_updated(HANDSHAKE_LEN)
    with pytest.raises(LocalProtocolError, match="drain"):
        conn.get_buffer()
    assert isinstance(conn.next_event(), Handshake)
    assert len(conn.get_buffer()) == HANDSHAKE_LEN
    with pytest.raises(LocalProtocolError):
        conn.buffer_updated(HANDSHAKE_LEN + 1)


# -- bitfields ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xf8\x00", b"\xf8\x00\x00", b"\xfc", b"\xf9", b"\x01"],
    ids=["empty", "long", "longer", "spare-bit-5", "spare-bit-7", "only-spare"],
)
def test_bad_bitfield_is_refused(payload: bytes) -> None:
    conn = established_receiver()
    conn.receive_data((1 + len(payload)).to_bytes(4, "big") + b"\x05" + payload)
    with pytest.raises(RemoteProtocolError, match="bitfield"):
        conn.next_event()


def test_short_bitfield_is_refused() -> None:
    conn = established_receiver(num_pieces=9, piece_length=100, total=900)
    conn.receive_data(bytes.fromhex("00000002 05 ff"))
    with pytest.raises(RemoteProtocolError, match="bitfield of 1 bytes for 9 pieces"):
        conn.next_event()


@pytest.mark.parametrize(
    "before",
    [
        bytes.fromhex("00000005 04 00000001"),  # have
        bytes.fromhex("00000001 01"),  # unchoke
        bytes.fromhex("00000001 02"),  # interested
        bytes.fromhex("0000000d 06 00000000 00000000 00004000"),  # request
        bytes.fromhex("00000002 05 80"),  # a bitfield already
    ],
    ids=["after-have", "after-unchoke", "after-interested", "after-request", "twice"],
)
def test_late_bitfield_is_refused(before: bytes) -> None:
    conn = established_receiver()
    conn.receive_data(before)
    drain(conn)
    conn.receive_data(bytes.fromhex("00000002 05 80"))
    with pytest.raises(RemoteProtocolError, match="bitfield after other messages"):
        conn.next_event()


def test_bitfield_may_follow_keepalive_port_and_extension_handshake() -> None:
    # libtorrent sends its BEP 10 handshake before its bitfield.
    pair = Pair(ext=True)
    hello = Extended(0, b"d1:md11:ut_metadatai1eee")
    pair.expect_same(pair.a, KeepAlive(), hello, Port(6881), Bitfield(b"\xf8"))
    assert pair.b.peer_is_seed


def test_bitfield_and_have_update_peer_has() -> None:
    pair = Pair()
    pair.expect_same(pair.a, Bitfield(pack_bitfield(b"\x01\x00\x01\x00\x00")))
    assert pair.b.peer_has == bytearray(b"\x01\x00\x01\x00\x00")
    assert pair.b.peer_has_count == 2
    pair.expect_same(pair.a, Have(1), Have(1), Have(3))
    assert pair.b.peer_has_count == 4
    assert not pair.b.peer_is_seed
    pair.expect_same(pair.a, Have(4))
    assert pair.b.peer_is_seed


@pytest.mark.parametrize("index", [NUM_PIECES, NUM_PIECES + 1, 0xFFFFFFFF])
def test_have_beyond_the_torrent_is_refused(index: int) -> None:
    conn = established_receiver()
    conn.receive_data(bytes.fromhex("00000005 04") + index.to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError, match="have for piece"):
        conn.next_event()


def test_pack_and_unpack_bitfield() -> None:
    flags = b"\x01\x00\x01\x01\x01"
    assert pack_bitfield(flags) == b"\xb8"
    assert pack_bitfield(b"\x01\x00\x07\xff\x01") == b"\xb8"  # any non-zero byte means have
    assert unpack_bitfield(b"\xb8", 5) == bytearray(flags)
    assert pack_bitfield(b"\x01" * 16) == b"\xff\xff"
    assert pack_bitfield(b"") == b""
    with pytest.raises(LocalProtocolError):
        unpack_bitfield(b"\xb9", 5)  # spare bit
    with pytest.raises(LocalProtocolError):
        unpack_bitfield(b"\xb8\x00", 5)


def test_bitfield_helpers_handle_two_million_pieces_quickly() -> None:
    n = 2_097_152
    flags = bytes(random.Random(2).choice((0, 1)) for _ in range(4096)) * (n // 4096)
    start = time.perf_counter()
    bits = pack_bitfield(flags)
    assert unpack_bitfield(bits, n) == flags
    assert time.perf_counter() - start < 2.0


@given(st.binary(max_size=300))
def test_bitfield_helpers_round_trip(flags: bytes) -> None:
    normal = bytes(1 if f else 0 for f in flags)
    bits = pack_bitfield(flags)
    assert len(bits) == (len(flags) + 7) // 8
    if flags:
        assert unpack_bitfield(bits, len(flags)) == normal
        assert pack_bitfield(unpack_bitfield(bits, len(flags))) == bits


# -- requests, pieces, cancels ---------------------------------------------------


@pytest.mark.parametrize(
    "block",
    [
        (NUM_PIECES, 0, 16384),  # no such piece
        (0xFFFFFFFF, 0, 16384),
        (0, PIECE_LEN - 100, 200),  # runs past the piece
        (0, PIECE_LEN, 1),
        (0, 0xFFFFFFFF, 1),
        (NUM_PIECES - 1, 0, LAST_SIZE + 1),  # the last piece is shorter
        (NUM_PIECES - 1, LAST_SIZE, 1),
        (0, 0, 0),  # empty
        (0, 0, BLOCK_SIZE + 1),  # too big
        (0, 0, 0xFFFFFFFF),
    ],
)
@pytest.mark.parametrize("msg_id", [6, 8], ids=["request", "cancel"])
def test_request_or_cancel_outside_the_piece_is_refused(
    block: tuple[int, int, int], msg_id: int
) -> None:
    conn = established_receiver()
    conn.receive_data(bytes([0, 0, 0, 13, msg_id]) + b"".join(v.to_bytes(4, "big") for v in block))
    with pytest.raises(RemoteProtocolError, match="outside the torrent"):
        conn.next_event()


def test_valid_requests_at_the_edges_are_accepted() -> None:
    conn = established_receiver()
    edges = [(0, PIECE_LEN - 1, 1), (NUM_PIECES - 1, 0, LAST_SIZE), (3, BLOCK_SIZE, BLOCK_SIZE)]
    conn.receive_data(b"".join(_request_bytes(*e) for e in edges))
    assert drain(conn) == [Request(*e) for e in edges]


def _request_bytes(index: int, begin: int, length: int) -> bytes:
    return bytes.fromhex("0000000d 06") + b"".join(
        v.to_bytes(4, "big") for v in (index, begin, length)
    )


def assert_discarded(conn: Connection) -> None:
    """An unrequested block is dropped without an event (libtorrent: unwanted_block)."""
    before = conn.unwanted_bytes
    assert conn.next_event() is NEED_DATA
    assert conn.unwanted_bytes > before


def test_a_flood_of_unrequested_blocks_closes_the_connection() -> None:
    pair = Pair()
    pair.a.send(Unchoke())
    block = pair.a.send(Piece(0, 0, b"x" * 10))
    with pytest.raises(RemoteProtocolError, match="too many unrequested blocks"):
        for _ in range(MAX_UNWANTED_BYTES // 10 + 2):
            pair.b.receive_data(block)
            pair.b.next_event()


def test_unrequested_block_is_discarded() -> None:
    pair = Pair()
    pair.a.send(Unchoke())
    pair.b.receive_data(pair.a.send(Piece(0, 0, b"x" * 10)))
    assert_discarded(pair.b)


def test_block_with_a_length_other_than_requested_is_discarded() -> None:
    pair = Pair()
    pair.b_requests((0, 0, BLOCK_SIZE))
    pair.b.receive_data(pair.a.send(Piece(0, 0, b"x" * 100)))
    assert_discarded(pair.b)


def test_block_outside_the_torrent_is_refused() -> None:
    conn = established_receiver()
    conn.receive_data(bytes.fromhex("0000000c 07 00000009 00000000 616263"))
    with pytest.raises(RemoteProtocolError, match="piece outside the torrent"):
        conn.next_event()


def test_a_block_is_delivered_once() -> None:
    pair = Pair()
    pair.b_requests((1, 0, 50))
    piece = pair.a.send(Piece(1, 0, b"y" * 50))
    pair.b.receive_data(piece)
    assert drain(pair.b) == [Piece(1, 0, b"y" * 50)]
    pair.b.receive_data(piece)
    assert_discarded(pair.b)


def test_cancelled_block_is_silently_dropped() -> None:
    pair = Pair()
    pair.b_requests((0, 0, BLOCK_SIZE), (0, BLOCK_SIZE, BLOCK_SIZE))
    assert pair.deliver(pair.b, Cancel(0, 0, BLOCK_SIZE)) == [Cancel(0, 0, BLOCK_SIZE)]
    assert pair.b.outstanding_requests == 1
    got = pair.deliver(
        pair.a,
        Piece(0, 0, b"a" * BLOCK_SIZE),  # crossed our cancel on the wire
        Piece(0, BLOCK_SIZE, b"b" * BLOCK_SIZE),
        Have(2),
    )
    assert got == [Piece(0, BLOCK_SIZE, b"b" * BLOCK_SIZE), Have(2)]
    assert pair.b.outstanding_requests == 0
    # Only once: a second copy of the cancelled block is unrequested.
    pair.b.receive_data(pair.a.send(Piece(0, 0, b"a" * BLOCK_SIZE)))
    assert_discarded(pair.b)


def test_choke_drops_outstanding_requests_for_requeueing() -> None:
    pair = Pair()
    blocks = [(0, 0, BLOCK_SIZE), (0, BLOCK_SIZE, BLOCK_SIZE), (1, 0, BLOCK_SIZE)]
    pair.b_requests(*blocks)
    assert pair.b.list_requests() == [Request(*blk) for blk in blocks]
    pair.expect_same(pair.a, Choke())
    assert pair.b.peer_choking
    assert pair.b.outstanding_requests == 0
    assert pair.b.clear_requests() == [Request(*blk) for blk in blocks]
    assert pair.b.clear_requests() == []
    # A late block for a dropped request is discarded quietly; a new one is not.
    assert pair.deliver(pair.a, Unchoke(), Piece(0, 0, b"l" * BLOCK_SIZE)) == [Unchoke()]
    pair.b.receive_data(pair.a.send(Piece(1, BLOCK_SIZE, b"n" * BLOCK_SIZE)))
    assert_discarded(pair.b)


def test_every_request_ends_exactly_one_way() -> None:
    pair = Pair()
    blocks = [(i, b, BLOCK_SIZE) for i in range(4) for b in (0, BLOCK_SIZE)]
    pair.b_requests(*blocks[:6])
    delivered = pair.deliver(pair.a, Piece(0, 0, b"0" * BLOCK_SIZE))
    pair.deliver(pair.b, Cancel(*blocks[1]))
    pair.expect_same(pair.a, Choke())
    pair.expect_same(pair.a, Unchoke())
    pair.expect_same(pair.b, *(Request(*blk) for blk in blocks[6:]))
    owed = pair.b.clear_requests()
    assert [(p.index, p.begin, len(p.block)) for p in delivered if isinstance(p, Piece)] == [
        blocks[0]
    ]
    assert sorted((r.index, r.begin, r.length) for r in owed) == sorted(blocks[2:])
    assert pair.b.outstanding_requests == 0


def test_re_requesting_a_dropped_block_counts_once() -> None:
    pair = Pair()
    pair.b_requests((0, 0, BLOCK_SIZE))
    pair.expect_same(pair.a, Choke(), Unchoke())
    pair.expect_same(pair.b, Request(0, 0, BLOCK_SIZE))
    assert pair.b.clear_requests() == [Request(0, 0, BLOCK_SIZE)]


def test_cancelled_set_is_bounded_oldest_forgotten() -> None:
    num_pieces = 600
    pair = Pair(
        num_pieces=num_pieces, piece_length=8 * BLOCK_SIZE, total=num_pieces * 8 * BLOCK_SIZE
    )
    blocks = [(i, b * BLOCK_SIZE, BLOCK_SIZE) for i in range(num_pieces) for b in range(8)]
    blocks = blocks[: MAX_CANCELLED + 10]
    pair.expect_same(pair.a, Unchoke())
    for blk in blocks:
        pair.b.send(Request(*blk))
        pair.b.send(Cancel(*blk))
    pair.a.send(Unchoke())
    newest = blocks[-1]
    assert pair.deliver(pair.a, Piece(newest[0], newest[1], b"n" * BLOCK_SIZE)) == []
    oldest = blocks[0]
    pair.b.receive_data(pair.a.send(Piece(oldest[0], oldest[1], b"o" * BLOCK_SIZE)))
    assert_discarded(pair.b)


def test_choke_with_a_deep_pipeline_keeps_the_cancelled_set_bounded() -> None:
    num_pieces = 700
    pair = Pair(
        num_pieces=num_pieces, piece_length=8 * BLOCK_SIZE, total=num_pieces * 8 * BLOCK_SIZE
    )
    blocks = [(i, b * BLOCK_SIZE, BLOCK_SIZE) for i in range(num_pieces) for b in range(8)]
    pair.expect_same(pair.a, Unchoke())
    for blk in blocks[:1000]:
        pair.b.send(Request(*blk))
        pair.b.send(Cancel(*blk))
    for blk in blocks[1000 : 1000 + MAX_CANCELLED]:
        pair.b.send(Request(*blk))
    pair.expect_same(pair.a, Choke())
    assert len(pair.b.clear_requests()) == MAX_CANCELLED
    pair.a.send(Unchoke())
    last = blocks[1000 + MAX_CANCELLED - 1]
    assert pair.deliver(pair.a, Piece(last[0], last[1], bytes(BLOCK_SIZE))) == []
    pair.b.receive_data(pair.a.send(Piece(*blocks[999][:2], bytes(BLOCK_SIZE))))
    assert_discarded(pair.b)


# -- state --------------------------------------------------------------------------


def test_choke_and_interest_state() -> None:
    pair = Pair()
    a, b = pair.a, pair.b
    assert (a.am_choking, a.am_interested, a.peer_choking, a.peer_interested) == (
        True,
        False,
        True,
        False,
    )
    pair.expect_same(a, Interested(), Unchoke())
    assert a.am_interested and not a.am_choking
    assert b.peer_interested and not b.peer_choking
    pair.expect_same(a, NotInterested(), Choke())
    assert not a.am_interested and a.am_choking
    assert not b.peer_interested and b.peer_choking


def test_extensions_enabled_needs_both_sides() -> None:
    assert Pair(ext=True).a.extensions_enabled
    assert not Pair(ext=False).a.extensions_enabled
    a = new_conn()
    a.send(Handshake(IH, PID_A, EXTENSION_RESERVED))
    a.receive_data(handshake_bytes(peer_id=PID_B))
    a.next_event()
    assert not a.extensions_enabled
    assert Handshake(IH, PID_A, EXTENSION_RESERVED).extensions


# -- misuse by the local caller ---------------------------------------------------


def test_local_misuse_is_a_local_error() -> None:
    conn = new_conn()
    with pytest.raises(LocalProtocolError, match="handshake must be sent first"):
        conn.send(Interested())
    with pytest.raises(LocalProtocolError, match="wrong info-hash"):
        conn.send(Handshake(OTHER_IH, PID_A))
    with pytest.raises(LocalProtocolError, match="20 bytes"):
        conn.send(Handshake(IH, b"short"))
    conn.send(Handshake(IH, PID_A))
    with pytest.raises(LocalProtocolError, match="fast extension"):
        conn.send(HaveAll())  # BEP 6 is not negotiated on this connection
    with pytest.raises(LocalProtocolError, match="already sent"):
        conn.send(Handshake(IH, PID_A))
    with pytest.raises(LocalProtocolError, match="valid bitfield"):
        conn.send(Bitfield(b"\xff"))  # spare bits
    with pytest.raises(LocalProtocolError, match="have for piece"):
        conn.send(Have(NUM_PIECES))
    with pytest.raises(LocalProtocolError, match="chokes us"):
        conn.send(Request(0, 0, BLOCK_SIZE))
    with pytest.raises(LocalProtocolError, match="while choking"):
        conn.send(Piece(0, 0, b"x"))
    with pytest.raises(LocalProtocolError, match="while choking"):
        conn.piece_header(0, 0, 1)
    with pytest.raises(LocalProtocolError, match="BEP 10"):
        conn.send(Extended(0, b"de"))
    with pytest.raises(LocalProtocolError, match="port"):
        conn.send(Port(70000))
    with pytest.raises(LocalProtocolError, match="cannot send"):
        conn.send(Event())
    conn.send(Have(0))
    with pytest.raises(LocalProtocolError, match="first message"):
        conn.send(Bitfield(b"\x80"))
    with pytest.raises(ValueError):
        Connection(IH, 3, 100, 301)
    with pytest.raises(ValueError):
        Connection(IH[:5], 3, 100, 300)


def test_local_request_checks() -> None:
    pair = Pair()
    pair.expect_same(pair.a, Unchoke())
    with pytest.raises(LocalProtocolError, match="not inside the torrent"):
        pair.b.send(Request(NUM_PIECES - 1, 0, LAST_SIZE + 1))
    with pytest.raises(LocalProtocolError, match="not inside the torrent"):
        pair.b.send(Request(0, -1, 10))
    pair.b.send(Request(0, 0, 10))
    with pytest.raises(LocalProtocolError, match="already requested"):
        pair.b.send(Request(0, 0, 10))
    pair.b.send(Cancel(3, 0, 10))  # not outstanding: harmless, allowed
    assert pair.b.outstanding_requests == 1


def test_more_local_checks() -> None:
    with pytest.raises(LocalProtocolError, match="handshake must be sent first"):
        new_conn().piece_header(0, 0, 1)
    pair = Pair(ext=True)
    with pytest.raises(LocalProtocolError, match="out of range"):
        pair.a.send(Extended(256, b""))
    with pytest.raises(LocalProtocolError, match="too large"):
        pair.a.send(Extended(1, bytes(MAX_MESSAGE - 1)))
    assert len(pair.a.send(Extended(1, bytes(MAX_MESSAGE - 2)))) == MAX_MESSAGE + 4
    for bad in [(IH, 0, 10, 1), (IH, 1, 0, 1), (IH, 2, 10, 10), (IH, 2, 10, 21)]:
        with pytest.raises(LocalProtocolError):
            Connection(*bad)
    with pytest.raises(LocalProtocolError, match="buffer_size"):
        Connection(IH, 1, 10, 10, buffer_size=HANDSHAKE_LEN - 1)
    assert Connection(IH, 1, 10, 10, buffer_size=HANDSHAKE_LEN).buffer_capacity == HANDSHAKE_LEN


def test_reprs_stay_short() -> None:
    assert repr(NEED_DATA) == "NEED_DATA"
    assert repr(Piece(1, 2, bytes(BLOCK_SIZE))) == "Piece(index=1, begin=2, block=<16384 bytes>)"
    assert repr(Bitfield(bytes(300))) == "Bitfield(<300 bytes>)"
    assert repr(Extended(3, bytes(5))) == "Extended(ext_id=3, payload=<5 bytes>)"
    assert repr(Have(4)) == "Have(index=4)"


def test_next_event_without_data_needs_data() -> None:
    conn = new_conn()
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    assert conn.next_event() is NEED_DATA
    assert not conn.handshake_received and not conn.handshake_sent


def test_local_errors_are_value_errors_not_protocol_errors() -> None:
    assert issubclass(LocalProtocolError, ValueError)
    assert not issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)


# -- split delivery -------------------------------------------------------------------


def ready_receiver() -> Connection:
    """A receiver that has seen the peer's handshake and Unchoke, and asked for its blocks."""
    b = new_conn()
    b.send(Handshake(IH, PID_B, EXTENSION_RESERVED))
    b.receive_data(handshake_bytes(reserved=EXTENSION_RESERVED))
    b.receive_data(bytes.fromhex("00000001 01"))
    assert drain(b) == [Handshake(IH, PID_A, EXTENSION_RESERVED), Unchoke()]
    b.send(Request(0, 0, BLOCK_SIZE))
    b.send(Request(NUM_PIECES - 1, 0, LAST_SIZE))
    return b


def split_stream() -> tuple[bytes, list[Event]]:
    a = new_conn()
    a.send(Handshake(IH, PID_A, EXTENSION_RESERVED))
    a.receive_data(handshake_bytes(peer_id=PID_B, reserved=EXTENSION_RESERVED))
    a.next_event()
    events: list[Event] = [
        KeepAlive(),
        Extended(0, b"d1:md6:ut_pexi1eee"),
        Have(1),
        Request(2, 0, BLOCK_SIZE),
        Unchoke(),
        Piece(0, 0, bytes(range(256)) * 64),
        Piece(NUM_PIECES - 1, 0, b"\x07" * LAST_SIZE),
        Port(51413),
        Cancel(2, 0, BLOCK_SIZE),
        Interested(),
        NotInterested(),
        Choke(),
        KeepAlive(),
    ]
    a.receive_data(bytes.fromhex("00000001 01"))
    a.next_event()
    return b"".join(a.send(ev) for ev in events), events


def test_one_byte_at_a_time_gives_the_same_events() -> None:
    data, events = split_stream()
    whole = ready_receiver()
    whole.receive_data(data)
    assert drain(whole) == events
    bytewise = ready_receiver()
    got: list[Event] = []
    for i in range(len(data)):
        bytewise.receive_data(data[i : i + 1])
        got.extend(drain(bytewise))
    assert got == events
    viewwise = ready_receiver()
    assert feed_zero_copy(viewwise, data, chunk=1) == events


def test_handshake_one_byte_at_a_time() -> None:
    conn = new_conn()
    data = handshake_bytes(reserved=EXTENSION_RESERVED)
    for i in range(HANDSHAKE_LEN - 1):
        conn.receive_data(data[i : i + 1])
        assert conn.next_event() is NEED_DATA
    conn.receive_data(data[-1:])
    assert conn.next_event() == Handshake(IH, PID_A, EXTENSION_RESERVED)


# -- property tests ---------------------------------------------------------------------


@st.composite
def geometries(draw: st.DrawFn) -> tuple[int, int, int]:
    num_pieces = draw(st.integers(1, 40))
    piece_length = draw(st.sampled_from([1, 7, 100, BLOCK_SIZE, 40_000]))
    last = draw(st.integers(1, piece_length))
    return num_pieces, piece_length, (num_pieces - 1) * piece_length + last


def draw_block(data: st.DataObject, geometry: tuple[int, int, int]) -> tuple[int, int, int]:
    num_pieces, piece_length, total = geometry
    index = data.draw(st.integers(0, num_pieces - 1))
    size = total - index * piece_length if index == num_pieces - 1 else piece_length
    begin = data.draw(st.integers(0, size - 1))
    length = data.draw(st.integers(1, min(BLOCK_SIZE, size - begin)))
    return index, begin, length


def chunks(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[x:y] for x, y in itertools.pairwise(points)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_valid_messages_round_trip_byte_for_byte(data: st.DataObject) -> None:
    """Encode, decode, re-encode: same events, same bytes (anacrolix FuzzDecoder rule)."""
    geometry = data.draw(geometries())
    num_pieces = geometry[0]
    ext = data.draw(st.booleans())
    reserved_a = EXTENSION_RESERVED if ext else bytes(8)
    reserved_b = EXTENSION_RESERVED if data.draw(st.booleans()) else bytes(8)
    a, b, replay = (Connection(IH, *geometry) for _ in range(3))
    hs_b = b.send(Handshake(IH, PID_B, reserved_b))
    unchoke_b = b.send(Unchoke())
    for sender in (a, replay):  # replay mirrors a, so it may send what a sent
        sender.receive_data(hs_b + unchoke_b)
        drain(sender)

    script: list[Event] = [Handshake(IH, PID_A, reserved_a)]
    if data.draw(st.booleans()):
        script.append(
            Bitfield(pack_bitfield(data.draw(st.binary(min_size=num_pieces, max_size=num_pieces))))
        )
    unchoked = False
    requested: set[tuple[int, int, int]] = set()
    kinds = ["keepalive", "choke", "unchoke", "interest", "have", "request", "cancel", "port"]
    kinds += ["piece", "extended"]
    for _ in range(data.draw(st.integers(0, 25))):
        kind = data.draw(st.sampled_from(kinds))
        ev: Event
        if kind == "keepalive":
            ev = KeepAlive()
        elif kind == "choke":
            ev = Choke()
        elif kind == "unchoke":
            ev = Unchoke()
        elif kind == "interest":
            ev = data.draw(st.sampled_from([Interested(), NotInterested()]))
        elif kind == "have":
            ev = Have(data.draw(st.integers(0, num_pieces - 1)))
        elif kind == "port":
            ev = Port(data.draw(st.integers(0, 0xFFFF)))
        elif kind == "extended":
            if not (ext and reserved_b != bytes(8)):
                continue
            ev = Extended(data.draw(st.integers(0, 255)), data.draw(st.binary(max_size=64)))
        elif kind == "cancel":
            ev = Cancel(*draw_block(data, geometry))
        elif kind == "request":
            blk = draw_block(data, geometry)
            if blk in requested:
                continue
            requested.add(blk)
            ev = Request(*blk)
        else:
            if not unchoked:
                continue
            index, begin, length = draw_block(data, geometry)
            block = random.Random(data.draw(st.integers(0, 2**32))).randbytes(length)
            ev = Piece(index, begin, block)
        unchoked = {"choke": False, "unchoke": True}.get(kind, unchoked)
        script.append(ev)

    for ev in script:
        if isinstance(ev, Piece):
            b.send(Request(ev.index, ev.begin, len(ev.block)))  # only blocks we asked for
        wire = a.send(ev)
        got: list[Event] = []
        for part in chunks(wire, data.draw(st.lists(st.integers(0, 1 << 16), max_size=3))):
            b.receive_data(part)
            while (out := b.next_event()) is not NEED_DATA:
                assert isinstance(out, Event)
                assert replay.send(out) == wire  # re-encoding the decoded event
                got.append(snapshot(out))
        assert got == [ev]
    assert b.outstanding_requests == 0


def valid_stream_for_fuzzing() -> tuple[bytes, list[tuple[int, int, int]]]:
    """A long valid stream from a's side, and the blocks b should request."""
    a = new_conn()
    a.send(Handshake(IH, PID_A, EXTENSION_RESERVED))
    a.receive_data(handshake_bytes(peer_id=PID_B, reserved=EXTENSION_RESERVED))
    a.receive_data(bytes.fromhex("00000001 01"))
    drain(a)
    blocks = [(0, 0, 300), (1, 40, 200), (NUM_PIECES - 1, 0, LAST_SIZE)]
    events: list[Event] = [
        Extended(0, b"d1:md6:ut_pexi1eee"),
        Bitfield(b"\xa8"),
        KeepAlive(),
        Unchoke(),
        Have(1),
        Request(2, 0, BLOCK_SIZE),
        *(Piece(i, s, bytes([i]) * n) for i, s, n in blocks),
        Port(6881),
        Cancel(2, 0, BLOCK_SIZE),
        Interested(),
        NotInterested(),
        Choke(),
        Extended(3, b"x" * 40),
    ]
    return b"".join(a.send(ev) for ev in events), blocks


FUZZ_SEED_STREAM, FUZZ_BLOCKS = valid_stream_for_fuzzing()
FUZZ_HANDSHAKE = handshake_bytes(reserved=EXTENSION_RESERVED)


def fuzz_receive(stream: bytes, cuts: list[int], zero_copy_mask: int, min_size: int) -> None:
    """Feed ``stream``: events or RemoteProtocolError, nothing else (the h11 fuzz rule)."""
    conn = Connection(IH, NUM_PIECES, PIECE_LEN, TOTAL, buffer_size=256)
    conn.send(Handshake(IH, PID_B, EXTENSION_RESERVED))
    biggest_chunk = 0
    try:
        for n, part in enumerate(chunks(stream, cuts)):
            biggest_chunk = max(biggest_chunk, len(part))
            if zero_copy_mask >> (n % 32) & 1:
                pos = 0
                while pos < len(part):
                    view = conn.get_buffer(min_size)
                    k = min(len(view), len(part) - pos)
                    view[:k] = part[pos : pos + k]
                    conn.buffer_updated(k)
                    pos += k
                    _fuzz_drain(conn)
            else:
                conn.receive_data(part)
                _fuzz_drain(conn)
    except RemoteProtocolError as err:
        with pytest.raises(RemoteProtocolError) as again:
            conn.next_event()
        assert again.value is err
    # Memory stays bounded however hostile the stream.
    assert conn.buffer_capacity <= MAX_MESSAGE + 4 + biggest_chunk


def _fuzz_drain(conn: Connection) -> None:
    while (ev := conn.next_event()) is not NEED_DATA:
        assert isinstance(ev, Event)
        if isinstance(ev, Unchoke):  # act like a client: ask for blocks when unchoked
            for blk in FUZZ_BLOCKS:
                if Request(*blk) not in conn.list_requests():
                    conn.send(Request(*blk))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(FUZZ_SEED_STREAM) + 68),
            st.sampled_from("fdi"),
            st.binary(max_size=6),
        )
    ),
    st.lists(st.integers(0, 1 << 16), max_size=12),
    st.integers(0, 2**32 - 1),
    st.sampled_from([-1, 1, 64, 65536]),
)
def test_mutated_streams_give_events_or_protocol_error(
    mutations: list[tuple[int, str, bytes]], cuts: list[int], mask: int, min_size: int
) -> None:
    stream = bytearray(FUZZ_HANDSHAKE + FUZZ_SEED_STREAM)
    for pos, op, blob in mutations:
        pos %= len(stream) + 1
        if op == "f" and blob and pos < len(stream):  # overwrite
            stream[pos : pos + len(blob)] = blob
        elif op == "d":
            del stream[pos : pos + len(blob) + 1]
        else:
            stream[pos:pos] = blob
    fuzz_receive(bytes(stream), cuts, mask, min_size)


@settings(max_examples=300, deadline=None)
@given(
    st.booleans(),
    st.binary(max_size=2000),
    st.lists(st.integers(0, 1 << 12), max_size=8),
    st.integers(0, 2**32 - 1),
)
def test_random_bytes_give_events_or_protocol_error(
    with_handshake: bool, junk: bytes, cuts: list[int], mask: int
) -> None:
    fuzz_receive((FUZZ_HANDSHAKE if with_handshake else b"") + junk, cuts, mask, 65536)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0x20), st.integers(0, 40), st.binary(max_size=40))))
def test_well_framed_random_messages_give_events_or_protocol_error(
    messages: list[tuple[int, int, bytes]],
) -> None:
    """Framing is right, ids and bodies are anything: exercises every handler."""
    body = b"".join(
        (len(payload) + 1).to_bytes(4, "big") + bytes([msg_id]) + payload
        for msg_id, _, payload in messages
    )
    fuzz_receive(FUZZ_HANDSHAKE + body, [n for _, n, _ in messages], 0x55555555, 65536)


def test_fuzz_seed_stream_is_valid() -> None:
    # Keeps the mutation fuzzer honest: unmutated, the seed parses completely.
    conn = new_conn()
    conn.send(Handshake(IH, PID_B, EXTENSION_RESERVED))
    conn.receive_data(FUZZ_HANDSHAKE + FUZZ_SEED_STREAM)
    events = []
    while (ev := conn.next_event()) is not NEED_DATA:
        events.append(snapshot(ev))
        if isinstance(ev, Unchoke):
            for blk in FUZZ_BLOCKS:
                conn.send(Request(*blk))
    assert sum(isinstance(ev, Piece) for ev in events) == len(FUZZ_BLOCKS)
    assert isinstance(events[-1], Extended)


# -- micro-benchmark: python3 tests/test_wire.py ------------------------------------------


def benchmark(megabytes: int = 256, recv_size: int = 256 * 1024) -> None:
    """Parse rate of 16 KiB Piece messages through get_buffer/buffer_updated/next_event."""
    piece_length = 1 << 20
    num_pieces = megabytes
    total = num_pieces * piece_length
    sender = Connection(IH, num_pieces, piece_length, total)
    sender.send(Handshake(IH, PID_A))
    sender.send(Unchoke())
    block = random.Random(0).randbytes(BLOCK_SIZE)
    requests = [
        Request(i, begin, BLOCK_SIZE)
        for i in range(num_pieces)
        for begin in range(0, piece_length, BLOCK_SIZE)
    ]
    stream = b"".join(sender.send(Piece(r.index, r.begin, block)) for r in requests)

    def run(copy_out: bool) -> float:
        conn = Connection(IH, num_pieces, piece_length, total)
        conn.send(Handshake(IH, PID_B))
        conn.receive_data(handshake_bytes() + bytes.fromhex("00000001 01"))
        drain(conn)
        for r in requests:
            conn.send(r)
        dest = bytearray(piece_length)  # stands in for the mmap'd piece
        source = memoryview(stream)
        pos, end, count = 0, len(stream), 0
        next_event = conn.next_event
        start = time.perf_counter()
        while pos < end:
            view = conn.get_buffer()
            n = min(len(view), recv_size, end - pos)
            view[:n] = source[pos : pos + n]  # what recv_into would do
            conn.buffer_updated(n)
            pos += n
            while (ev := next_event()) is not NEED_DATA:
                if copy_out and isinstance(ev, Piece):
                    dest[ev.begin : ev.begin + len(ev.block)] = ev.block
                count += 1
        elapsed = time.perf_counter() - start
        assert count == len(requests)
        return count * BLOCK_SIZE / elapsed

    def parse_only() -> float:
        conn = Connection(IH, num_pieces, piece_length, total, buffer_size=len(stream) + 100)
        conn.send(Handshake(IH, PID_B))
        conn.receive_data(handshake_bytes() + bytes.fromhex("00000001 01"))
        drain(conn)
        for r in requests:
            conn.send(r)
        conn.receive_data(stream)
        next_event, count = conn.next_event, 0
        start = time.perf_counter()
        while next_event() is not NEED_DATA:
            count += 1
        return count * BLOCK_SIZE / (time.perf_counter() - start)

    rates = {
        "next_event only, all bytes buffered": max(parse_only() for _ in range(3)),
        "get_buffer/buffer_updated/next_event": max(run(False) for _ in range(3)),
        "... plus copying each block out once": max(run(True) for _ in range(3)),
    }
    print(f"{len(requests)} Piece messages of {BLOCK_SIZE} bytes ({megabytes} MiB payload)")
    for name, rate in rates.items():
        print(f"  {name:38} {rate / 1e6:7.0f} MB/s")


if __name__ == "__main__":
    benchmark()


# -- send_requests: the batched hot path ------------------------------------------


def test_send_requests_is_byte_for_byte_a_run_of_requests() -> None:
    pair = Pair()
    pair.expect_same(pair.a, Unchoke())
    blocks = [(0, 0, BLOCK_SIZE), (0, BLOCK_SIZE, BLOCK_SIZE), (4, 0, LAST_SIZE)]
    data = pair.b.send_requests(blocks)
    assert data == b"".join(_request_bytes(*blk) for blk in blocks)
    assert pair.b.list_requests() == [Request(*blk) for blk in blocks]
    assert feed_zero_copy(pair.a, data) == [Request(*blk) for blk in blocks]
    # The blocks arrive as Piece events like any requested block.
    got = pair.deliver(pair.a, Piece(4, 0, b"z" * LAST_SIZE))
    assert got == [Piece(4, 0, b"z" * LAST_SIZE)]
    assert pair.b.outstanding_requests == 2
    assert pair.b.send_requests([]) == b""


@pytest.mark.parametrize(
    "blocks",
    [
        [(0, 0, BLOCK_SIZE), (5, 0, BLOCK_SIZE)],  # a piece beyond the torrent
        [(0, 0, BLOCK_SIZE), (4, 0, BLOCK_SIZE)],  # past the end of the short last piece
        [(0, 0, BLOCK_SIZE), (0, 0, BLOCK_SIZE)],  # the same block twice
        [(1, 0, BLOCK_SIZE), (0, 0, BLOCK_SIZE)],  # (0, 0) is already outstanding
        [(0, -1, BLOCK_SIZE)],
    ],
    ids=["beyond", "past-last", "twice", "outstanding", "negative"],
)
def test_send_requests_records_all_or_nothing(blocks: list[tuple[int, int, int]]) -> None:
    pair = Pair()
    pair.expect_same(pair.a, Unchoke())
    pair.b.send_requests([(0, 0, BLOCK_SIZE)])
    with pytest.raises(LocalProtocolError):
        pair.b.send_requests(blocks)
    assert pair.b.list_requests() == [Request(0, 0, BLOCK_SIZE)]


def test_send_requests_needs_a_handshake_and_an_unchoke() -> None:
    conn = new_conn()
    with pytest.raises(LocalProtocolError, match="handshake"):
        conn.send_requests([(0, 0, BLOCK_SIZE)])
    pair = Pair()
    with pytest.raises(LocalProtocolError, match="chokes"):
        pair.b.send_requests([(0, 0, BLOCK_SIZE)])
    assert pair.b.outstanding_requests == 0


# -- dispatch: every message id goes through the receive table --------------------

_BODIES: dict[int, bytes] = {
    0: b"",
    1: b"",
    2: b"",
    3: b"",
    4: (2).to_bytes(4, "big"),
    5: b"\xa8",
    6: bytes.fromhex("00000001 00000000 00004000"),
    7: bytes(8) + b"zz",  # unrequested: dropped
    8: bytes.fromhex("00000001 00000000 00004000"),
    9: b"\x1a\xe1",
    20: b"\x00d1:md6:ut_pexi1eee",
    21: bytes(32) + bytes.fromhex("00000000 00000000 00000002 00000000"),  # BEP 52
    22: bytes(32) + bytes.fromhex("00000000 00000000 00000002 00000000") + bytes(64),
    23: bytes(32) + bytes.fromhex("00000000 00000000 00000002 00000000"),
}
_EXPECTED: dict[int, Event | None] = {
    0: Choke(),
    1: Unchoke(),
    2: Interested(),
    3: NotInterested(),
    4: Have(2),
    5: Bitfield(b"\xa8"),
    6: Request(1, 0, BLOCK_SIZE),
    7: None,
    8: Cancel(1, 0, BLOCK_SIZE),
    9: Port(6881),
    20: Extended(0, b"d1:md6:ut_pexi1eee"),
    21: HashRequest(bytes(32), 0, 0, 2, 0),
    22: Hashes(bytes(32), 0, 0, 2, 0, bytes(64)),
    23: HashReject(bytes(32), 0, 0, 2, 0),
}


@pytest.mark.parametrize("msg_id", range(256))
def test_every_message_id_reaches_its_parser(msg_id: int) -> None:
    pair = Pair(ext=True)
    body = _BODIES.get(msg_id, b"\x01\x02\x03")
    frame = (1 + len(body)).to_bytes(4, "big") + bytes([msg_id]) + body + bytes(4)
    pair.b.receive_data(frame)  # and a keep-alive after it: parsing goes on
    if 13 <= msg_id <= 17:
        with pytest.raises(RemoteProtocolError, match="BEP 6"):
            pair.b.next_event()
        return
    expected = _EXPECTED.get(msg_id)
    got = drain(pair.b)
    assert got == ([expected] if expected is not None else []) + [KeepAlive()]


@pytest.mark.parametrize(
    ("msg_id", "good"), [(0, 1), (1, 1), (2, 1), (3, 1), (4, 5), (6, 13), (8, 13), (9, 3)]
)
@pytest.mark.parametrize("delta", [-1, 1, 100])
def test_fixed_size_messages_are_framed_by_the_table(msg_id: int, good: int, delta: int) -> None:
    conn = established_receiver()
    length = good + delta or good + 2  # 0 would be a keep-alive
    conn.receive_data(length.to_bytes(4, "big") + bytes([msg_id]))  # refused on the header
    with pytest.raises(RemoteProtocolError, match=f"message {msg_id} has length {length}"):
        conn.next_event()


def test_fixed_size_message_waits_for_its_body() -> None:
    conn = established_receiver()
    frame = bytes.fromhex("0000000d 06 00000001 00000000 00004000")
    for cut in range(len(frame)):
        conn.receive_data(frame[cut : cut + 1])
        if cut < len(frame) - 1:
            assert conn.next_event() is NEED_DATA
    assert conn.next_event() == Request(1, 0, BLOCK_SIZE)


# -- geometry given after the handshake (magnet downloads) --------------------------


def geometryless(ext: bool = True) -> tuple[Connection, Connection]:
    """``us`` knows only the info-hash; ``peer`` knows the torrent and has shaken hands."""
    reserved = EXTENSION_RESERVED if ext else bytes(8)
    us = Connection(IH)
    peer = new_conn()
    us.receive_data(peer.send(Handshake(IH, PID_A, reserved)))
    peer.receive_data(us.send(Handshake(IH, PID_B, reserved)))
    assert drain(us) == [Handshake(IH, PID_A, reserved)]
    assert drain(peer) == [Handshake(IH, PID_B, reserved)]
    return us, peer


def test_connection_without_geometry_takes_what_carries_no_piece_index() -> None:
    us, peer = geometryless()
    assert us.geometry is None and us.peer_has == bytearray() and not us.peer_is_seed
    events = [Extended(0, b"d1:md6:ut_pexi1eee"), KeepAlive(), Port(6881), Unchoke(),
              Interested(), Extended(7, b"x"), NotInterested(), Choke()]  # fmt: skip
    assert feed_zero_copy(us, b"".join(peer.send(ev) for ev in events)) == events
    # Our side may send the same kinds.
    for ev in (Interested(), Extended(0, b"de"), KeepAlive(), Port(1), Unchoke(), Choke()):
        us.send(ev)


def test_early_bitfield_is_kept_and_delivered_after_set_geometry() -> None:
    us, peer = geometryless()
    has = us.peer_has
    data = peer.send(Bitfield(b"\xa8")) + peer.send(Unchoke())
    assert feed_zero_copy(us, data) == [Unchoke()]  # the bitfield waits for the geometry
    assert us.peer_has == bytearray() and us.peer_has_count == 0
    us.set_geometry(NUM_PIECES, PIECE_LEN, TOTAL)
    assert us.geometry is not None and us.geometry.num_pieces == NUM_PIECES
    assert us.peer_has is has  # live view, extended in place
    assert has == bytearray([1, 0, 1, 0, 1]) and us.peer_has_count == 3
    us.receive_data(peer.send(Have(1)))
    assert drain(us) == [Bitfield(b"\xa8"), Have(1)]  # the deferred event comes first
    assert us.peer_has_count == 4


def test_early_haves_fold_into_one_bitfield_event() -> None:
    us, _ = geometryless()
    # Built by hand: the same Have twice, and out of order.
    data = b"".join(bytes.fromhex("00000005 04") + i.to_bytes(4, "big") for i in (4, 0, 4))
    assert feed_zero_copy(us, data) == []
    us.set_geometry(NUM_PIECES, PIECE_LEN, TOTAL)
    assert drain(us) == [Bitfield(b"\x88")]
    assert us.peer_has == bytearray([1, 0, 0, 0, 1])


def test_early_bitfield_and_haves_combine() -> None:
    us, peer = geometryless()
    us.receive_data(peer.send(Bitfield(b"\x80")) + bytes.fromhex("00000005 04 00000003"))
    assert drain(us) == []
    us.set_geometry(NUM_PIECES, PIECE_LEN, TOTAL)
    assert drain(us) == [Bitfield(b"\x90")]
    assert us.peer_has_count == 2


def test_a_seed_is_known_as_one_once_the_geometry_is() -> None:
    us, peer = geometryless()
    us.receive_data(peer.send(Bitfield(b"\xf8")))
    drain(us)
    assert not us.peer_is_seed
    us.set_geometry(NUM_PIECES, PIECE_LEN, TOTAL)
    assert us.peer_is_seed


def test_no_early_piece_state_means_no_event() -> None:
    us, _ = geometryless()
    us.set_geometry(NUM_PIECES, PIECE_LEN, TOTAL)
    assert us.next_event() is NEED_DATA
    assert us.peer_has == bytearray(NUM_PIECES)


@pytest.mark.parametrize(
    ("early", "reason"),
    [
        ("00000002 05 a8 00000002 05 a8", None),  # refused at once: second bitfield
        ("00000001 05", "bitfield of 0 bytes for 5 pieces"),
        ("00000003 05 a800", "bitfield of 2 bytes for 5 pieces"),
        ("00000002 05 ac", "spare bits"),
        ("00000005 04 00000005", "have for piece 5 of 5"),
        ("00000005 04 00000001 00000005 04 00000007", "have for piece 7 of 5"),
    ],
)
def test_early_piece_state_that_does_not_fit_fails_at_set_geometry(
    early: str, reason: str | None
) -> None:
    us, _ = geometryless()
    us.receive_data(bytes.fromhex(early))
    if reason is None:
        with pytest.raises(RemoteProtocolError, match="bitfield after other messages"):
            drain(us)
        return
    assert drain(us) == []
    with pytest.raises(RemoteProtocolError, match=reason) as failed:
        us.set_geometry(NUM_PIECES, PIECE_LEN, TOTAL)
    with pytest.raises(RemoteProtocolError) as again:
        us.next_event()
    assert again.value is failed.value


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("00000005 04 00200000", "have for piece 2097152 of at most 2097152"),
        ("00040002 05" + "00" * 0x40001, "bitfield of 262145 bytes for at most 2097152"),
        ("0000000d 06 00000000 00000000 00004000", "request before the torrent's geometry"),
        ("0000000d 08 00000000 00000000 00004000", "cancel before the torrent's geometry"),
    ],
)
def test_before_the_geometry_bounds_hold_and_requests_are_refused(frame: str, reason: str) -> None:
    us, _ = geometryless()
    us.receive_data(bytes.fromhex(frame))
    with pytest.raises(RemoteProtocolError, match=reason):
        drain(us)


def test_blocks_before_the_geometry_are_unwanted() -> None:
    us, _ = geometryless()
    us.receive_data(bytes.fromhex("0000000c 07 00000063 00000000 616263"))
    assert_discarded(us)
    assert us.unwanted_bytes == 3


def test_the_largest_early_bitfield_and_have_are_accepted() -> None:
    us, _ = geometryless()
    n = 2_097_152
    us.receive_data((1 + n // 8).to_bytes(4, "big") + b"\x05" + b"\xff" * (n // 8))
    us.receive_data(bytes.fromhex("00000005 04") + (n - 1).to_bytes(4, "big"))
    assert drain(us) == []
    us.set_geometry(n, 1, n)
    assert us.next_event() == Bitfield(b"\xff" * (n // 8))
    assert us.peer_is_seed


def test_sending_piece_state_needs_the_geometry() -> None:
    us, _ = geometryless()
    us.send(Unchoke())
    for ev in (Have(0), Bitfield(b"\x80"), Cancel(0, 0, 10), Piece(0, 0, b"x")):
        with pytest.raises(LocalProtocolError, match="geometry"):
            us.send(ev)
    with pytest.raises(LocalProtocolError, match="geometry"):
        us.piece_header(0, 0, 10)


def test_after_set_geometry_the_connection_works_as_usual() -> None:
    us, peer = geometryless(ext=False)
    us.set_geometry(NUM_PIECES, PIECE_LEN, TOTAL)
    assert feed_zero_copy(us, peer.send(Unchoke())) == [Unchoke()]
    assert us.send(Bitfield(b"\x00")) == bytes.fromhex("00000002 05 00")
    data = us.send_requests([(4, 0, LAST_SIZE)])
    assert feed_zero_copy(peer, data) == [Request(4, 0, LAST_SIZE)]
    block = b"q" * LAST_SIZE
    assert feed_zero_copy(us, peer.send(Piece(4, 0, block))) == [Piece(4, 0, block)]
    assert us.outstanding_requests == 0


def test_geometry_is_all_or_nothing_and_set_once() -> None:
    with pytest.raises(LocalProtocolError, match="all of the geometry"):
        Connection(IH, NUM_PIECES)
    with pytest.raises(LocalProtocolError, match="do not make"):
        Connection(IH).set_geometry(NUM_PIECES, PIECE_LEN, 1)
    conn = Connection(IH)
    conn.set_geometry(NUM_PIECES, PIECE_LEN, TOTAL)
    with pytest.raises(LocalProtocolError, match="already set"):
        conn.set_geometry(NUM_PIECES, PIECE_LEN, TOTAL)
    with pytest.raises(LocalProtocolError, match="already set"):
        new_conn().set_geometry(NUM_PIECES, PIECE_LEN, TOTAL)


def test_set_geometry_after_a_peer_error_leaves_the_error_in_place() -> None:
    us, _ = geometryless()
    us.receive_data(bytes.fromhex("00000002 05 a8") + bytes.fromhex("0000000d 06") + bytes(12))
    with pytest.raises(RemoteProtocolError, match="request before") as failed:
        drain(us)
    us.set_geometry(NUM_PIECES, PIECE_LEN, TOTAL)  # not the caller's fault: no raise here
    with pytest.raises(RemoteProtocolError) as again:
        us.next_event()
    assert again.value is failed.value


# -- the peer's requests, as the ledger records them ------------------------------


def test_peer_requests_are_recorded_while_we_unchoke_and_settled() -> None:
    pair = Pair()
    pair.a.receive_data(pair.b.send(Interested()))  # a is the uploader here
    drain(pair.a)
    pair.b.receive_data(pair.a.send(Unchoke()))
    drain(pair.b)
    blocks = [(0, 0, BLOCK_SIZE), (0, BLOCK_SIZE, BLOCK_SIZE), (4, 0, LAST_SIZE)]
    feed_zero_copy(pair.a, pair.b.send_requests(blocks))
    assert pair.a.peer_requests == 3
    feed_zero_copy(pair.a, pair.b.send(Cancel(*blocks[1])))
    assert pair.a.peer_requests == 2
    pair.a.piece_header(*blocks[0])
    assert pair.a.ledger.peer_requests == {blocks[2]: None}
    pair.a.send(Choke())  # BEP 3: a choke discards the rest
    assert pair.a.peer_requests == 0
    # Requests while we choke are not recorded (the uploader counts and drops them).
    pair.b.clear_requests()
    pair.a.receive_data(_request_bytes(*blocks[0]))
    assert drain(pair.a) == [Request(*blocks[0])]
    assert pair.a.peer_requests == 0


def test_the_early_index_bound_is_the_torrent_cap() -> None:
    from mptorrent.proto import metainfo, wire

    assert wire.MAX_PIECES == metainfo.MAX_PIECES  # no torrent we load has more pieces


# -- BEP 6, the fast extension ------------------------------------------------------
# Enabled only when both handshakes carry reserved[7] & 0x04; byte-for-byte both ways.

from mptorrent.proto.wire import (  # noqa: E402 - the section's own names
    FAST_BIT,
    FAST_RESERVED,
    MAX_ALLOWED_FAST,
    AllowedFast,
    HaveNone,
    RejectRequest,
    SuggestPiece,
)

BOTH = bytes(a | b for a, b in zip(EXTENSION_RESERVED, FAST_RESERVED, strict=True))


def fast_pair(a_fast: bool = True, b_fast: bool = True) -> Pair:
    """A Pair whose handshakes carry the fast bit as asked (and BEP 10's, as ours do)."""
    pair = Pair.__new__(Pair)
    pair.a, pair.b = new_conn(), new_conn()
    for conn, pid, fast in ((pair.a, PID_A, a_fast), (pair.b, PID_B, b_fast)):
        reserved = BOTH if fast else EXTENSION_RESERVED
        assert pair.deliver(conn, Handshake(IH, pid, reserved)) == [Handshake(IH, pid, reserved)]
    assert pair.a.fast_enabled is pair.b.fast_enabled is (a_fast and b_fast)
    return pair


def unchoked_fast_pair() -> Pair:
    """Fast on; b unchokes a, so a may request."""
    pair = fast_pair()
    pair.expect_same(pair.a, Interested())
    pair.expect_same(pair.b, Unchoke())
    return pair


def test_fast_bit_is_reserved_byte_7_value_4() -> None:
    assert FAST_BIT == 0x04
    assert Handshake(IH, PID_A, FAST_RESERVED).fast
    assert not Handshake(IH, PID_A, EXTENSION_RESERVED).fast
    conn = new_conn()
    assert conn.send(Handshake(IH, PID_A, BOTH)) == handshake_bytes(reserved=BOTH)


@pytest.mark.parametrize(
    ("event", "frame"),
    [
        (HaveAll(), "00000001 0e"),
        (HaveNone(), "00000001 0f"),
        (SuggestPiece(3), "00000005 0d 00000003"),
        (AllowedFast(4), "00000005 11 00000004"),
    ],
)
def test_fast_piece_state_messages_byte_for_byte_both_ways(event: Event, frame: str) -> None:
    for sender in ("a", "b"):
        pair = fast_pair()
        conn = getattr(pair, sender)
        data = conn.send(event)
        assert data == bytes.fromhex(frame)
        assert feed_zero_copy(pair.other(conn), data) == [event]


def test_reject_request_byte_for_byte_both_ways() -> None:
    for sender in ("a", "b"):
        pair = unchoked_fast_pair() if sender == "b" else fast_pair()
        if sender == "a":  # b must have asked a: a unchokes b
            pair.expect_same(pair.b, Interested())
            pair.expect_same(pair.a, Unchoke())
        conn = getattr(pair, sender)
        asker = pair.other(conn)
        feed_zero_copy(conn, asker.send(Request(4, 0, LAST_SIZE)))
        data = conn.send(RejectRequest(4, 0, LAST_SIZE))
        assert data == bytes.fromhex("0000000d 10 00000004 00000000 00002710")
        assert feed_zero_copy(asker, data) == [RejectRequest(4, 0, LAST_SIZE)]
        assert asker.outstanding_requests == 0
        assert conn.peer_requests == 0  # sending the reject settles the peer's request


def test_have_all_makes_the_peer_a_seed_and_have_none_makes_it_empty() -> None:
    pair = fast_pair()
    pair.expect_same(pair.a, HaveAll())
    assert pair.b.peer_has == bytearray(b"\x01" * NUM_PIECES)
    assert pair.b.peer_has_count == NUM_PIECES and pair.b.peer_is_seed
    pair.expect_same(pair.b, HaveNone())
    assert pair.a.peer_has == bytearray(NUM_PIECES) and not pair.a.peer_is_seed
    pair.expect_same(pair.b, Have(2))  # and Haves go on as usual
    assert pair.a.peer_has_count == 1


@pytest.mark.parametrize(
    "first", [Bitfield(pack_bitfield(b"\x01" * 5)), Have(1), HaveAll(), HaveNone()]
)
@pytest.mark.parametrize("second", [HaveAll(), HaveNone()])
def test_have_all_or_none_only_as_the_first_message(first: Event, second: Event) -> None:
    pair = fast_pair()
    pair.expect_same(pair.a, first)
    with pytest.raises(LocalProtocolError, match="only be the first message"):
        pair.a.send(second)
    frame = b"\x00\x00\x00\x01" + (b"\x0e" if isinstance(second, HaveAll) else b"\x0f")
    pair.b.receive_data(frame)
    with pytest.raises(RemoteProtocolError, match="after other messages"):
        pair.b.next_event()


def test_extended_and_keepalive_may_precede_have_all() -> None:
    pair = fast_pair()
    pair.expect_same(pair.a, KeepAlive(), Extended(0, b"de"), HaveAll())


@pytest.mark.parametrize("a_fast", [True, False])
@pytest.mark.parametrize(
    "frame",
    [
        "00000001 0e",
        "00000001 0f",
        "00000005 0d 00000001",
        "0000000d 10 00000001 00000000 00004000",
        "00000005 11 00000001",
    ],
)
def test_fast_messages_without_the_bit_on_both_sides_are_refused(a_fast: bool, frame: str) -> None:
    pair = fast_pair(a_fast=a_fast, b_fast=not a_fast)
    pair.b.receive_data(bytes.fromhex(frame))
    with pytest.raises(RemoteProtocolError, match="without BEP 6 negotiated"):
        pair.b.next_event()
    for event in (
        HaveAll(),
        HaveNone(),
        SuggestPiece(1),
        AllowedFast(1),
        RejectRequest(1, 0, 16384),
    ):
        with pytest.raises(LocalProtocolError, match="fast extension"):
            pair.a.send(event)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("00000002 0e 00", "message 14 has length 2, not 1"),
        ("00000002 0f 00", "message 15 has length 2, not 1"),
        ("00000004 0d 000000", "message 13 has length 4, not 5"),
        ("0000000c 10 00000001 00000000 000040", "message 16 has length 12, not 13"),
        ("00000006 11 00000001 00", "message 17 has length 6, not 5"),
        ("00000005 11 00000005", "allowed fast for piece 5 of 5"),
        ("00000005 0d ffffffff", "suggest for piece 4294967295 of 5"),
        ("0000000d 10 00000005 00000000 00004000", "reject outside the torrent"),
        ("0000000d 10 00000004 00000000 00004000", "reject outside the torrent"),
        ("0000000d 10 00000001 00000000 00004000", "never requested"),
    ],
)
def test_hostile_fast_messages_are_protocol_errors(frame: str, reason: str) -> None:
    pair = unchoked_fast_pair()
    pair.b.receive_data(bytes.fromhex(frame))
    with pytest.raises(RemoteProtocolError, match=reason):
        pair.b.next_event()
    with pytest.raises(RemoteProtocolError, match=reason):
        pair.b.next_event()  # sticky


def test_fast_messages_wait_for_their_body() -> None:
    pair = fast_pair()
    frame = bytes.fromhex("00000005 11 00000002")
    for byte in frame[:-1]:
        pair.b.receive_data(bytes([byte]))
        assert pair.b.next_event() is NEED_DATA
    pair.b.receive_data(frame[-1:])
    assert pair.b.next_event() == AllowedFast(2)


def test_with_fast_a_choke_keeps_our_requests_until_each_is_answered() -> None:
    pair = unchoked_fast_pair()
    blocks = [(0, 0, BLOCK_SIZE), (0, BLOCK_SIZE, BLOCK_SIZE), (4, 0, LAST_SIZE)]
    feed_zero_copy(pair.b, pair.a.send_requests(blocks))
    assert pair.b.peer_requests == 3
    pair.expect_same(pair.b, Choke())
    assert pair.a.outstanding_requests == 3  # BEP 6: not written off
    assert pair.b.peer_requests == 3  # and still owed a block or a reject
    pair.expect_same(pair.b, RejectRequest(*blocks[0]), RejectRequest(*blocks[1]))
    assert pair.a.list_requests() == [Request(*blocks[2])]
    assert pair.a.clear_requests() == [Request(*blocks[2])]  # nothing lost to the choke


def test_without_fast_a_choke_still_writes_requests_off() -> None:
    pair = fast_pair(a_fast=True, b_fast=False)
    pair.expect_same(pair.a, Interested())
    pair.expect_same(pair.b, Unchoke())
    pair.a.send_requests([(0, 0, BLOCK_SIZE)])
    pair.expect_same(pair.b, Choke())
    assert pair.a.outstanding_requests == 0


def test_an_allowed_fast_block_arrives_while_choked() -> None:
    pair = unchoked_fast_pair()
    pair.expect_same(pair.b, AllowedFast(1))
    assert pair.a.allowed_fast == {1}
    pair.a.send_requests([(1, 0, BLOCK_SIZE)])
    pair.expect_same(pair.b, Choke())
    block = bytes(range(256)) * 64
    # The peer's block comes as raw bytes (whatever its sender checks), and is still the
    # answer to an outstanding request.
    frame = (9 + BLOCK_SIZE).to_bytes(4, "big") + b"\x07" + (1).to_bytes(4, "big") + bytes(4)
    frame += block
    assert feed_zero_copy(pair.a, frame) == [Piece(1, 0, block)]
    assert pair.a.outstanding_requests == 0


def test_we_may_serve_only_the_pieces_we_allowed_fast_while_choking() -> None:
    pair = fast_pair()  # b chokes a, as every connection starts
    pair.expect_same(pair.b, AllowedFast(1))
    block = bytes(range(256)) * 64
    feed_zero_copy(pair.b, pair.a.send_requests([(1, 0, BLOCK_SIZE)]))
    assert pair.b.peer_requests == 1  # owed, though a is choked: it was allowed fast
    assert pair.b.send(Piece(1, 0, block))[:13] == bytes.fromhex("00004009 07 00000001 00000000")
    assert pair.b.peer_requests == 0
    with pytest.raises(LocalProtocolError, match="while choking the peer"):
        pair.b.send(Piece(2, 0, block))
    with pytest.raises(LocalProtocolError, match="while choking the peer"):
        pair.b.piece_header(0, 0, BLOCK_SIZE)
    assert len(pair.b.piece_header(1, BLOCK_SIZE, BLOCK_SIZE)) == 13


def test_a_reject_for_a_cancelled_request_is_dropped_quietly() -> None:
    # BEP 6: a cancel is answered too, by the block or a reject; neither is an error.
    pair = unchoked_fast_pair()
    pair.a.send_requests([(0, 0, BLOCK_SIZE), (2, 0, BLOCK_SIZE)])
    pair.a.send(Cancel(0, 0, BLOCK_SIZE))
    assert pair.deliver(pair.b, RejectRequest(0, 0, BLOCK_SIZE)) == []
    assert pair.a.outstanding_requests == 1
    # ... once: a second reject for it is one for a block we never asked for
    pair.a.receive_data(bytes.fromhex("0000000d 10 00000000 00000000 00004000"))
    with pytest.raises(RemoteProtocolError, match="never requested"):
        pair.a.next_event()


def test_a_rejected_block_arriving_later_is_unwanted() -> None:
    pair = unchoked_fast_pair()
    pair.a.send_requests([(4, 0, LAST_SIZE)])
    assert pair.deliver(pair.b, RejectRequest(4, 0, LAST_SIZE)) == [RejectRequest(4, 0, LAST_SIZE)]
    frame = (9 + LAST_SIZE).to_bytes(4, "big") + b"\x07" + (4).to_bytes(4, "big") + bytes(4)
    assert feed_zero_copy(pair.a, frame + bytes(LAST_SIZE)) == []
    assert pair.a.unwanted_bytes == LAST_SIZE


def test_with_fast_our_choke_keeps_the_peer_requests_owed() -> None:
    pair = fast_pair()
    pair.expect_same(pair.b, Interested())
    pair.expect_same(pair.a, Unchoke())
    feed_zero_copy(pair.a, pair.b.send_requests([(0, 0, BLOCK_SIZE), (1, 0, BLOCK_SIZE)]))
    pair.a.send(Choke())
    assert pair.a.peer_requests == 2
    pair.a.send(RejectRequest(0, 0, BLOCK_SIZE))
    assert pair.a.peer_requests == 1


def test_allowed_fast_set_is_bounded() -> None:
    pair = Pair.__new__(Pair)
    n = 2 * MAX_ALLOWED_FAST
    pair.a = new_conn(n, BLOCK_SIZE, n * BLOCK_SIZE)
    pair.b = new_conn(n, BLOCK_SIZE, n * BLOCK_SIZE)
    pair.deliver(pair.a, Handshake(IH, PID_A, FAST_RESERVED))
    pair.deliver(pair.b, Handshake(IH, PID_B, FAST_RESERVED))
    events = [AllowedFast(i) for i in range(n)]
    pair.expect_same(pair.a, *events)  # every one is reported...
    assert len(pair.b.allowed_fast) == MAX_ALLOWED_FAST  # ...the first ones kept


def early_fast() -> tuple[Connection, Connection]:
    """Like geometryless(), with the fast bit on both sides."""
    us, peer = Connection(IH), new_conn()
    us.receive_data(peer.send(Handshake(IH, PID_A, FAST_RESERVED)))
    peer.receive_data(us.send(Handshake(IH, PID_B, FAST_RESERVED)))
    assert drain(us) == [Handshake(IH, PID_A, FAST_RESERVED)]
    assert drain(peer) == [Handshake(IH, PID_B, FAST_RESERVED)]
    assert us.fast_enabled and peer.fast_enabled
    return us, peer


def test_fast_state_before_the_geometry_is_kept_and_checked() -> None:
    us2, peer2 = early_fast()
    us2.receive_data(
        b"".join(peer2.send(ev) for ev in (HaveAll(), AllowedFast(3), SuggestPiece(2), Have(1)))
    )
    assert drain(us2) == []  # nothing has a piece index we can check yet
    us2.set_geometry(NUM_PIECES, PIECE_LEN, TOTAL)
    assert drain(us2) == [HaveAll()]
    assert us2.peer_is_seed and us2.allowed_fast == {3}


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ("00000005 11 00000009", "allowed fast for piece 9 of 5"),
        ("00000001 0e 00000005 04 00000005", "have for piece 5 of 5"),
        ("00000005 11 00200000", "allowed fast for piece 2097152 of 2097152"),
        ("00000001 0f 00000001 0e", "have all after other messages"),
        ("0000000d 10 00000000 00000000 00004000", "reject before the torrent's geometry"),
    ],
)
def test_early_fast_state_that_does_not_fit_fails(frames: str, reason: str) -> None:
    us, _ = early_fast()
    us.receive_data(bytes.fromhex(frames))
    try:
        drain(us)
        us.set_geometry(NUM_PIECES, PIECE_LEN, TOTAL)
        drain(us)
    except RemoteProtocolError as err:
        assert reason in str(err)
    else:
        raise AssertionError("accepted")


def test_have_none_before_the_geometry_gives_no_event() -> None:
    us, peer = early_fast()
    us.receive_data(peer.send(HaveNone()))
    assert drain(us) == []
    us.set_geometry(NUM_PIECES, PIECE_LEN, TOTAL)
    assert drain(us) == [] and us.peer_has_count == 0


def test_allowed_fast_pieces_may_be_requested_while_choked() -> None:
    pair = fast_pair()
    pair.expect_same(pair.b, AllowedFast(1))
    pair.a.send_requests([(1, 0, BLOCK_SIZE), (1, BLOCK_SIZE, BLOCK_SIZE)])
    with pytest.raises(LocalProtocolError, match="chokes us"):
        pair.a.send_requests([(1, 0, 100), (2, 0, BLOCK_SIZE)])  # all or nothing
    assert pair.a.outstanding_requests == 2


# -- BEP 5: the DHT bit and the port message (issue 15) -------------------------------


def test_the_dht_bit_is_the_last_reserved_bit_and_survives_beside_the_others() -> None:
    assert bytes.fromhex("0000000000000001") == DHT_RESERVED
    both = bytes(a | b for a, b in zip(EXTENSION_RESERVED, DHT_RESERVED, strict=True))
    conn = new_conn()
    sent = conn.send(Handshake(IH, PID_B, both))
    assert sent[20:28] == bytes.fromhex("0000000000100001")  # BEP 10 and BEP 5, as libtorrent
    conn.receive_data(handshake_bytes(reserved=both))
    (got,) = drain(conn)
    assert isinstance(got, Handshake) and got.dht and got.extensions and not got.fast
    assert not Handshake(IH, PID_A, EXTENSION_RESERVED).dht
    assert Handshake(IH, PID_A, bytes.fromhex("0000000000000005")).dht  # with BEP 6's bit


@pytest.mark.parametrize("port", [0, 1, 6881, 65535])
def test_a_port_is_taken_as_it_came_with_or_without_the_dht_bit(port: int) -> None:
    """The wire passes every 2-byte port on (port 0 too: the worker drops it) whether the
    handshakes set the DHT bit or not, as libtorrent accepts one from any peer."""
    pair = Pair()  # no reserved bit at all
    data = pair.a.send(Port(port))
    assert data == b"\x00\x00\x00\x03\x09" + port.to_bytes(2, "big")
    assert feed_zero_copy(pair.b, data + pair.a.send(KeepAlive())) == [Port(port), KeepAlive()]


@pytest.mark.parametrize("length", [1, 2, 4, 5, 1000])
def test_a_port_message_of_another_length_is_a_protocol_error(length: int) -> None:
    conn = established_receiver()
    body = bytes(length - 1)
    conn.receive_data(length.to_bytes(4, "big") + b"\x09" + body)
    with pytest.raises(RemoteProtocolError, match=f"message 9 has length {length}, not 3"):
        conn.next_event()
    with pytest.raises(RemoteProtocolError):  # sticky
        conn.next_event()


def test_port_messages_between_blocks_keep_the_zero_copy_path() -> None:
    pair = Pair()
    pair.b_requests((0, 0, 300), (1, 0, 200))
    stream = b"".join(
        (pair.a.send(Piece(0, 0, b"a" * 300)), pair.a.send(Port(6881)),
         pair.a.send(Piece(1, 0, b"b" * 200)), pair.a.send(Port(6882)))
    )  # fmt: skip
    pair.b.receive_data(stream)
    first = pair.b.next_event()
    assert isinstance(first, Piece) and isinstance(first.block, memoryview)
    assert bytes(first.block) == b"a" * 300
    assert pair.b.next_event() == Port(6881)
    second = pair.b.next_event()
    assert isinstance(second, Piece) and isinstance(second.block, memoryview)
    assert pair.b.next_event() == Port(6882)
    assert pair.b.next_event() is NEED_DATA


def drain_runs(conn: Connection) -> list[Event]:
    """As drain(), taking blocks a run at a time with next_blocks() first, as the download
    policy does."""
    out: list[Event] = []
    while True:
        run = conn.next_blocks()
        for index, begin, block in run:
            assert isinstance(block, memoryview) and block.readonly
            out.append(Piece(index, begin, bytes(block)))
        if run:
            continue
        ev = conn.next_event()
        if ev is NEED_DATA:
            return out
        assert isinstance(ev, Event)
        out.append(snapshot(ev))


def test_next_blocks_takes_the_run_of_requested_blocks_up_to_anything_else() -> None:
    pair = Pair()
    pair.b_requests((0, 0, 300), (1, 0, 200), (2, 0, 100))
    stream = b"".join(
        (pair.a.send(Piece(0, 0, b"a" * 300)), pair.a.send(Piece(1, 0, b"b" * 200)),
         pair.a.send(Port(6881)), pair.a.send(Piece(2, 0, b"c" * 100)))
    )  # fmt: skip
    pair.b.receive_data(stream[:-1])  # the last block is one byte short
    run = pair.b.next_blocks()
    assert [(i, b, bytes(blk)) for i, b, blk in run] == [(0, 0, b"a" * 300), (1, 0, b"b" * 200)]
    assert pair.b.next_blocks() == []
    assert pair.b.next_event() == Port(6881)
    assert pair.b.next_blocks() == []
    assert pair.b.next_event() is NEED_DATA
    pair.b.receive_data(stream[-1:])
    assert [(i, b, bytes(blk)) for i, b, blk in pair.b.next_blocks()] == [(2, 0, b"c" * 100)]
    assert pair.b.outstanding_requests == 0


def test_next_blocks_leaves_unrequested_and_cancelled_blocks_to_next_event() -> None:
    pair = Pair()
    pair.b_requests((0, 0, BLOCK_SIZE), (0, BLOCK_SIZE, BLOCK_SIZE))
    pair.deliver(pair.b, Cancel(0, 0, BLOCK_SIZE))
    pair.b.receive_data(pair.a.send(Piece(0, 0, b"a" * BLOCK_SIZE)))  # crossed our cancel
    pair.b.receive_data(pair.a.send(Piece(0, BLOCK_SIZE, b"b" * BLOCK_SIZE)))
    assert pair.b.next_blocks() == []  # the cancelled one first: next_event drops it
    assert drain_runs(pair.b) == [Piece(0, BLOCK_SIZE, b"b" * BLOCK_SIZE)]


def test_next_blocks_waits_for_the_handshake_and_keeps_a_protocol_error() -> None:
    conn = new_conn()
    conn.send(Handshake(IH, PID_B, bytes(8)))
    assert conn.next_blocks() == []
    conn.receive_data(handshake_bytes() + bytes.fromhex("0000000c 07 00000009 00000000 616263"))
    assert conn.next_blocks() == []
    assert conn.next_event() == Handshake(IH, PID_A, bytes(8))
    assert conn.next_blocks() == []
    with pytest.raises(RemoteProtocolError, match="piece outside the torrent"):
        conn.next_event()
    assert conn.next_blocks() == []
    with pytest.raises(RemoteProtocolError):  # still sticky
        conn.next_event()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.sampled_from(["block", "cancelled", "unasked", "have", "port", "keepalive"]),
        max_size=30,
    ),
    st.integers(1, 40_000),
)
def test_next_blocks_then_next_event_give_what_next_event_alone_gives(
    kinds: list[str], chunk: int
) -> None:
    num_pieces = 64
    plen = 2 * BLOCK_SIZE
    pairs = [Pair(num_pieces=num_pieces, piece_length=plen, total=num_pieces * plen)]
    pairs.append(Pair(num_pieces=num_pieces, piece_length=plen, total=num_pieces * plen))
    # one block per message, of piece i: odd pieces' full size, even ones' shorter
    blocks = [(i, 0, BLOCK_SIZE if i % 2 else 1000 + i) for i in range(len(kinds))]
    sent = list(zip(blocks, kinds, strict=True))
    for pair in pairs:
        pair.b_requests(*[blk for blk, kind in sent if kind in ("block", "cancelled")])
        for blk, kind in sent:
            if kind == "cancelled":
                pair.b.send(Cancel(*blk))
    a = pairs[0].a
    parts = []
    for (index, begin, length), kind in sent:
        if kind in ("block", "cancelled", "unasked"):
            parts.append(a.send(Piece(index, begin, bytes([index]) * length)))
        elif kind == "have":
            parts.append(a.send(Have(index)))
        elif kind == "port":
            parts.append(a.send(Port(6881 + index)))
        else:
            parts.append(a.send(KeepAlive()))
    data = b"".join(parts)
    got: list[list[Event]] = [[], []]
    for k, (pair, drainer) in enumerate(zip(pairs, (drain, drain_runs), strict=True)):
        for pos in range(0, len(data), chunk):
            view = pair.b.get_buffer()
            piece = data[pos : pos + chunk]
            view[: len(piece)] = piece
            pair.b.buffer_updated(len(piece))
            got[k].extend(drainer(pair.b))
    assert got[0] == got[1]
    assert pairs[0].b.unwanted_bytes == pairs[1].b.unwanted_bytes


def test_sending_a_port_out_of_range_is_refused() -> None:
    conn = new_conn()
    conn.send(Handshake(IH, PID_B, DHT_RESERVED))
    for bad in (-1, 65536):
        with pytest.raises(LocalProtocolError, match="out of range"):
            conn.send(Port(bad))
