"""Fuzz target: mptorrent.proto.wire gives events or RemoteProtocolError, nothing else.

The first byte picks the mode.  Odd: the rest is the peer's whole byte stream,
handshake included, fed in two pieces; with bit 1 set too, our side knows no
geometry until between the two (a magnet download), so early piece state is
kept and checked by ``set_geometry``.  Even: the rest follows a valid
handshake and is fed one length-prefixed frame at a time; every frame that
yields an event must re-encode to the very same bytes when a model of the peer
sends that event (anacrolix FuzzDecoder), and a protocol error must stick.
With bit 2 set, our handshake carries BEP 6's fast bit (and, frame by frame,
the peer's too), so the fast extension's messages and rules are reached.
With bit 3 set, blocks are taken a run at a time with ``next_blocks()`` before
each ``next_event()``, as the download policy takes them, and checked as the
Piece events they stand for.

Our side always has a BEP 10 router (``mptorrent.proto.ext``) with one
stand-in extension under id 1, so Extended frames reach the extended-handshake
decoder and a handler: a decoded handshake must re-encode to itself.

    python fuzz/fuzz_wire.py -runs=20000             # atheris (pip install atheris)
    python fuzz/fuzz_wire.py --hypothesis 2000       # without atheris
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

from mptorrent.errors import BencodeError
from mptorrent.proto import bencode
from mptorrent.proto.ext import (
    ExtendedHandshake,
    ExtensionHandler,
    ExtensionRouter,
    decode_handshake,
    encode_handshake,
)
from mptorrent.proto.wire import (
    BLOCK_SIZE,
    DHT_RESERVED,
    EXTENSION_RESERVED,
    FAST_RESERVED,
    MAX_MESSAGE,
    NEED_DATA,
    PROTOCOL,
    AllowedFast,
    Bitfield,
    Cancel,
    Choke,
    Connection,
    Event,
    Extended,
    Handshake,
    Have,
    HaveAll,
    Interested,
    KeepAlive,
    Piece,
    Port,
    RejectRequest,
    RemoteProtocolError,
    Request,
    SuggestPiece,
    Unchoke,
    pack_bitfield,
)

IH = bytes(range(20))
US = b"-MP0100-usususususus"
THEM = b"-XX0001-themthemthem"
NUM_PIECES = 5
PIECE_LEN = 2 * BLOCK_SIZE
TOTAL = (NUM_PIECES - 1) * PIECE_LEN + 10_000
BLOCKS = [(0, 0, 300), (1, 40, 200), (NUM_PIECES - 1, 0, 10_000)]  # what we ask for
THEIR_HANDSHAKE = bytes([len(PROTOCOL)]) + PROTOCOL + EXTENSION_RESERVED + IH + THEM
OUR_HANDSHAKE = THEIR_HANDSHAKE.replace(THEM, US)
FAST_EXT = bytes(a | b for a, b in zip(EXTENSION_RESERVED, FAST_RESERVED, strict=True))
THEIR_FAST_HANDSHAKE = THEIR_HANDSHAKE.replace(EXTENSION_RESERVED, FAST_EXT)
OUR_FAST_HANDSHAKE = OUR_HANDSHAKE.replace(EXTENSION_RESERVED, FAST_EXT)
# BEP 5: the DHT bit, as libtorrent sends it beside BEP 10's and BEP 6's
DHT_EXT = bytes(a | b for a, b in zip(FAST_EXT, DHT_RESERVED, strict=True))
THEIR_DHT_HANDSHAKE = THEIR_HANDSHAKE.replace(EXTENSION_RESERVED, DHT_EXT)


PROBE_ID = 1  # the id our router gives the stand-in extension


class Probed(Event):
    """What the stand-in extension makes of a message: its payload, checked bencode."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class _Probe(ExtensionHandler):
    """A stand-in for ut_metadata/ut_pex: bounded bencode or the remote error."""

    name = "mp_probe"

    def receive(self, payload: bytes) -> Event | None:
        try:
            bencode.decode(payload, max_size=1024, max_depth=4)
        except BencodeError as exc:
            raise RemoteProtocolError(f"mp_probe: {exc}") from None
        return Probed(payload)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    fast = bool(data[0] & 4)
    runs = bool(data[0] & 8)
    if data[0] & 1:
        _whole_stream(data[1:], late_geometry=bool(data[0] & 2), fast=fast, runs=runs)
    else:
        _frame_by_frame(data[1:], fast=fast, runs=runs)


def _us(late_geometry: bool = False, fast: bool = False) -> Connection:
    router = ExtensionRouter([_Probe()], client="mptorrent fuzz")
    if late_geometry:
        conn = Connection(IH, buffer_size=256, extensions=router)
    else:
        conn = Connection(IH, NUM_PIECES, PIECE_LEN, TOTAL, buffer_size=256, extensions=router)
    conn.send(Handshake(IH, US, FAST_EXT if fast else EXTENSION_RESERVED))
    return conn


def _events(conn: Connection, runs: bool = False) -> list[Event]:
    """Drain ``conn``, asking for BLOCKS whenever the peer unchokes us, as a client would;
    with ``runs``, blocks are taken with ``next_blocks()`` first, as Piece events."""
    out: list[Event] = []
    while True:
        if runs:
            for index, begin, block in conn.next_blocks():
                assert block.readonly and 0 < len(block) <= BLOCK_SIZE, len(block)
                out.append(Piece(index, begin, block))
        ev = conn.next_event()
        if ev is NEED_DATA:
            break
        assert isinstance(ev, Event), ev
        out.append(ev)
        if isinstance(ev, ExtendedHandshake):
            router = conn.extensions
            assert isinstance(router, ExtensionRouter) and router.peer_handshake is ev
            assert decode_handshake(encode_handshake(ev)) == ev
            assert set(router.peer_ids.values()) >= {i for i in ev.extensions.values() if i}
        if isinstance(ev, Unchoke) and conn.geometry is not None:
            asked = conn.list_requests()
            for blk in BLOCKS:
                if Request(*blk) not in asked:
                    conn.send(Request(*blk))
    return out


def _sticky(conn: Connection, err: RemoteProtocolError) -> None:
    assert err.reason and str(err).isprintable()
    try:
        conn.next_event()
    except RemoteProtocolError as again:
        assert again is err
    else:
        raise AssertionError("a protocol error did not stick")


def _whole_stream(data: bytes, late_geometry: bool, fast: bool = False, runs: bool = False) -> None:
    conn = _us(late_geometry, fast)
    half = len(data) // 2
    try:
        for part in (data[:half], data[half:]):
            conn.receive_data(part)
            _events(conn, runs)
            if conn.geometry is None:
                conn.set_geometry(NUM_PIECES, PIECE_LEN, TOTAL)
                assert len(conn.peer_has) == NUM_PIECES
    except RemoteProtocolError as err:
        _sticky(conn, err)


def frames(data: bytes) -> Iterator[bytes]:
    """``data`` cut at its length prefixes; the last frame may be short."""
    pos = 0
    while pos < len(data):
        end = pos + 4 + int.from_bytes(data[pos : pos + 4], "big") if len(data) - pos >= 4 else pos
        end = max(end, pos + 4)
        yield data[pos:end]
        pos = end


def _frame_by_frame(data: bytes, fast: bool = False, runs: bool = False) -> None:
    conn = _us(fast=fast)
    reserved = FAST_EXT if fast else EXTENSION_RESERVED
    theirs, ours = (
        (THEIR_FAST_HANDSHAKE, OUR_FAST_HANDSHAKE) if fast else (THEIR_HANDSHAKE, OUR_HANDSHAKE)
    )
    # The peer as we model it: it sent THEIR_HANDSHAKE and saw ours and our Unchoke, so
    # it may send whatever we can accept; re-sending each event must give its frame back.
    peer = Connection(IH, NUM_PIECES, PIECE_LEN, TOTAL, buffer_size=256)
    assert peer.send(Handshake(IH, THEM, reserved)) == theirs
    peer.receive_data(ours + conn.send(Unchoke()))
    while peer.next_event() is not NEED_DATA:
        pass
    conn.receive_data(theirs)
    assert conn.next_event() == Handshake(IH, THEM, reserved)
    try:
        for frame in frames(data):
            conn.receive_data(frame)
            events = _events(conn, runs)
            assert len(events) <= 1, events
            if not events:
                continue
            whole = len(frame) >= 4 and len(frame) == 4 + int.from_bytes(frame[:4], "big")
            assert whole, (frame[:16], events)
            if isinstance(events[0], ExtendedHandshake):
                # Keys we do not use are dropped: compare values, not bytes (_events did).
                assert frame[4:6] == b"\x14\x00"
                continue
            if isinstance(events[0], Probed):
                events[0] = Extended(PROBE_ID, events[0].payload)
            ev = events[0]
            if isinstance(ev, Piece) and peer.am_choking:
                # BEP 6: a block still answers a request made before the peer's Choke
                # (our model refuses to send one while choking): encode it by hand.
                sent = (9 + len(ev.block)).to_bytes(4, "big") + b"\x07"
                sent += ev.index.to_bytes(4, "big") + ev.begin.to_bytes(4, "big") + ev.block
            else:
                sent = peer.send(ev)
            if isinstance(events[0], Request):
                peer.clear_requests()  # a peer may ask twice; our model must not refuse that
            assert sent == frame, (events[0], sent[:32], frame[:32])
            assert len(frame) <= MAX_MESSAGE + 4
    except RemoteProtocolError as err:
        _sticky(conn, err)


def _model_peer(fast: bool = False) -> Connection:
    """The peer after both handshakes and our Unchoke."""
    peer = Connection(IH, NUM_PIECES, PIECE_LEN, TOTAL)
    peer.send(Handshake(IH, THEM, FAST_EXT if fast else EXTENSION_RESERVED))
    peer.receive_data((OUR_FAST_HANDSHAKE if fast else OUR_HANDSHAKE) + b"\x00\x00\x00\x01\x01")
    while peer.next_event() is not NEED_DATA:
        pass
    return peer


def seeds() -> list[bytes]:
    peer = _model_peer()
    script: list[Event] = [
        Extended(0, b"d1:md6:ut_pexi1ee13:metadata_sizei31235e1:pi6881e4:reqqi250e1:v2:XXe"),
        Bitfield(pack_bitfield(b"\x01\x00\x01\x00\x01")),
        KeepAlive(),
        Unchoke(),
        Have(1),
        Request(2, 0, BLOCK_SIZE),
        *(Piece(i, b, bytes([i]) * n) for i, b, n in BLOCKS),
        Port(6881),
        Cancel(2, 0, BLOCK_SIZE),
        Interested(),
        Extended(PROBE_ID, b"d8:msg_typei0e5:piecei0ee"),
        Extended(0, b"d1:md11:ut_metadatai2e6:ut_pexi0eee"),
        Extended(3, b"x" * 40),
    ]
    stream = b"".join(peer.send(ev) for ev in script)
    unknown = b"\x00\x00\x00\x03\xff\x01\x02"
    # For a side that learns the geometry half-way: early piece state, then the rest.
    peer = _model_peer()
    early = [*script[:2], Have(4), Unchoke(), Have(1)]
    late = [Request(2, 0, BLOCK_SIZE), Cancel(2, 0, BLOCK_SIZE), Port(1), *script[-3:]]
    magnet = b"".join(peer.send(ev) for ev in early + late)
    # BEP 6: HaveAll in place of the bitfield, hints, a choke that keeps our requests,
    # a reject for one of them (we ask for BLOCKS on every Unchoke), the rest served.
    peer = _model_peer(fast=True)
    fast_script: list[Event] = [
        HaveAll(),
        AllowedFast(1),
        SuggestPiece(3),
        Unchoke(),
        Choke(),
        RejectRequest(*BLOCKS[0]),
        *(Piece(i, b, bytes([i]) * n) for i, b, n in BLOCKS[1:]),
        Unchoke(),
        Have(2),
    ]
    fast_stream = b"".join(
        peer.send(ev) if not isinstance(ev, Piece) else _piece_bytes(ev) for ev in fast_script
    )
    peer = _model_peer(fast=True)
    fast_early = b"".join(peer.send(ev) for ev in (HaveAll(), AllowedFast(4), Have(1)))
    # BEP 5 port messages: port 0 and the highest, then a short and a long one (errors)
    peer = _model_peer()
    ports = b"".join(peer.send(Port(p)) for p in (0, 65535, 6881))
    short_port, long_port = b"\x00\x00\x00\x02\x09\x1a", b"\x00\x00\x00\x04\x09\x1a\xe1\x00"
    return [
        b"\x00" + stream,
        b"\x01" + THEIR_HANDSHAKE + stream,
        b"\x00" + unknown + stream[:40],
        b"\x01" + THEIR_HANDSHAKE[:30],
        b"\x03" + THEIR_HANDSHAKE + magnet,
        b"\x04" + fast_stream,
        b"\x05" + THEIR_FAST_HANDSHAKE + fast_stream,
        b"\x07" + THEIR_FAST_HANDSHAKE + fast_early + fast_stream[5:],
        b"\x04" + stream,  # the plain conversation with BEP 6 on
        b"\x00" + ports + stream,
        b"\x00" + ports + short_port + stream[:40],
        b"\x00" + long_port + stream[:40],
        b"\x05" + THEIR_DHT_HANDSHAKE + ports + fast_stream,
        # blocks taken a run at a time (next_blocks), as the download policy takes them
        b"\x09" + THEIR_HANDSHAKE + stream,
        b"\x08" + stream,
        b"\x0d" + THEIR_FAST_HANDSHAKE + fast_stream,
    ]


def _piece_bytes(ev: Piece) -> bytes:
    """A block as the wire carries it, whoever is choking whom."""
    head = (9 + len(ev.block)).to_bytes(4, "big") + b"\x07"
    return head + ev.index.to_bytes(4, "big") + ev.begin.to_bytes(4, "big") + bytes(ev.block)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
    from fuzz.engine import main as run

    run(TestOneInput, seeds())


if __name__ == "__main__":
    main()
