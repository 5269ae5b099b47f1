"""Fuzz target: mptorrent.proto.wire gives events or RemoteProtocolError, nothing else.

The first byte picks the mode.  Odd: the rest is the peer's whole byte stream,
handshake included, fed in two pieces.  Even: the rest follows a valid
handshake and is fed one length-prefixed frame at a time; every frame that
yields an event must re-encode to the very same bytes when a model of the peer
sends that event (anacrolix FuzzDecoder), and a protocol error must stick.

    python fuzz/fuzz_wire.py -runs=20000             # atheris (pip install atheris)
    python fuzz/fuzz_wire.py --hypothesis 2000       # without atheris
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

from mptorrent.proto.wire import (
    BLOCK_SIZE,
    EXTENSION_RESERVED,
    MAX_MESSAGE,
    NEED_DATA,
    PROTOCOL,
    Bitfield,
    Cancel,
    Connection,
    Event,
    Extended,
    Handshake,
    Have,
    Interested,
    KeepAlive,
    Piece,
    Port,
    RemoteProtocolError,
    Request,
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


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    if data[0] & 1:
        _whole_stream(data[1:])
    else:
        _frame_by_frame(data[1:])


def _us() -> Connection:
    conn = Connection(IH, NUM_PIECES, PIECE_LEN, TOTAL, buffer_size=256)
    conn.send(Handshake(IH, US, EXTENSION_RESERVED))
    return conn


def _events(conn: Connection) -> list[Event]:
    """Drain ``conn``, asking for BLOCKS whenever the peer unchokes us, as a client would."""
    out: list[Event] = []
    while (ev := conn.next_event()) is not NEED_DATA:
        assert isinstance(ev, Event), ev
        out.append(ev)
        if isinstance(ev, Unchoke):
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


def _whole_stream(data: bytes) -> None:
    conn = _us()
    half = len(data) // 2
    try:
        for part in (data[:half], data[half:]):
            conn.receive_data(part)
            _events(conn)
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


def _frame_by_frame(data: bytes) -> None:
    conn = _us()
    # The peer as we model it: it sent THEIR_HANDSHAKE and saw ours and our Unchoke, so
    # it may send whatever we can accept; re-sending each event must give its frame back.
    peer = Connection(IH, NUM_PIECES, PIECE_LEN, TOTAL, buffer_size=256)
    assert peer.send(Handshake(IH, THEM, EXTENSION_RESERVED)) == THEIR_HANDSHAKE
    peer.receive_data(OUR_HANDSHAKE + conn.send(Unchoke()))
    while peer.next_event() is not NEED_DATA:
        pass
    conn.receive_data(THEIR_HANDSHAKE)
    assert conn.next_event() == Handshake(IH, THEM, EXTENSION_RESERVED)
    try:
        for frame in frames(data):
            conn.receive_data(frame)
            events = _events(conn)
            assert len(events) <= 1, events
            if not events:
                continue
            whole = len(frame) >= 4 and len(frame) == 4 + int.from_bytes(frame[:4], "big")
            assert whole, (frame[:16], events)
            sent = peer.send(events[0])
            if isinstance(events[0], Request):
                peer.clear_requests()  # a peer may ask twice; our model must not refuse that
            assert sent == frame, (events[0], sent[:32], frame[:32])
            assert len(frame) <= MAX_MESSAGE + 4
    except RemoteProtocolError as err:
        _sticky(conn, err)


def seeds() -> list[bytes]:
    peer = Connection(IH, NUM_PIECES, PIECE_LEN, TOTAL)
    peer.send(Handshake(IH, THEM, EXTENSION_RESERVED))
    peer.receive_data(OUR_HANDSHAKE + b"\x00\x00\x00\x01\x01")
    while peer.next_event() is not NEED_DATA:
        pass
    script: list[Event] = [
        Extended(0, b"d1:md6:ut_pexi1eee"),
        Bitfield(pack_bitfield(b"\x01\x00\x01\x00\x01")),
        KeepAlive(),
        Unchoke(),
        Have(1),
        Request(2, 0, BLOCK_SIZE),
        *(Piece(i, b, bytes([i]) * n) for i, b, n in BLOCKS),
        Port(6881),
        Cancel(2, 0, BLOCK_SIZE),
        Interested(),
        Extended(3, b"x" * 40),
    ]
    stream = b"".join(peer.send(ev) for ev in script)
    unknown = b"\x00\x00\x00\x03\xff\x01\x02"
    return [
        b"\x00" + stream,
        b"\x01" + THEIR_HANDSHAKE + stream,
        b"\x00" + unknown + stream[:40],
        b"\x01" + THEIR_HANDSHAKE[:30],
    ]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
    from fuzz.engine import main as run

    run(TestOneInput, seeds())


if __name__ == "__main__":
    main()
