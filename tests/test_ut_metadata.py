"""Tests for mptorrent.proto.ext.ut_metadata (BEP 9): codec, handler, assembler, serving.

Sans-IO and byte for byte: real Connections joined in memory carry the messages, the
assembler gets the time as an argument.  Hostile inputs are tests/adversarial/README.md
table H; each is a row of HOSTILE or a test named after what it defends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mptorrent.proto import bencode
from mptorrent.proto.ext import MAX_METADATA_SIZE, ExtendedHandshake, ExtensionRouter
from mptorrent.proto.ext.ut_metadata import (
    MAX_HEADER,
    MAX_METADATA_PIECES,
    MAX_TIMEOUTS,
    METADATA_PIECE,
    REQUEST_TIMEOUT,
    MetadataAssembler,
    MetadataMismatch,
    MetadataPieceReceived,
    MetadataRejected,
    MetadataRequested,
    MetadataVerified,
    PieceIgnored,
    PieceRefused,
    PieceStored,
    UtMetadata,
    decode_message,
    encode_data,
    encode_reject,
    encode_request,
    piece_count,
    serve_request,
)
from mptorrent.proto.wire import (
    EXTENSION_RESERVED,
    NEED_DATA,
    Connection,
    Event,
    Extended,
    Handshake,
    LocalProtocolError,
    RemoteProtocolError,
)

PID_A = b"-MP0001-aaaaaaaaaaaa"
PID_B = b"-MP0001-bbbbbbbbbbbb"


def info_dict(size: int) -> bytes:
    """A bencoded dictionary of exactly ``size`` bytes (size >= 12)."""
    n = next(n for n in range(size, -1, -1) if 9 + len(str(n)) + n == size)
    data = b"d4:name" + str(n).encode() + b":" + b"x" * n + b"e"
    assert len(data) == size, (len(data), size)
    return data


INFO = info_dict(2 * METADATA_PIECE + 1000)  # three pieces, the last 1000 bytes
IH = hashlib.sha1(INFO).digest()


# -- the codec ------------------------------------------------------------------------


def test_messages_encode_byte_for_byte() -> None:
    assert encode_request(0) == b"d8:msg_typei0e5:piecei0ee"
    assert encode_reject(3) == b"d8:msg_typei2e5:piecei3ee"
    assert encode_data(2, 33768, b"z" * 1000) == (
        b"d8:msg_typei1e5:piecei2e10:total_sizei33768ee" + b"z" * 1000
    )


def test_messages_decode() -> None:
    assert decode_message(encode_request(5)) == MetadataRequested(5)
    assert decode_message(encode_reject(0)) == MetadataRejected(0)
    data = encode_data(1, len(INFO), INFO[METADATA_PIECE : 2 * METADATA_PIECE])
    assert decode_message(data) == MetadataPieceReceived(
        1, len(INFO), INFO[METADATA_PIECE : 2 * METADATA_PIECE]
    )
    # A data dictionary whose piece bytes happen to look like bencode still splits right.
    tricky = encode_data(0, 3, b"i1e")
    assert decode_message(tricky) == MetadataPieceReceived(0, 3, b"i1e")
    # BEP 9: other msg_types are ignored; keys we do not know are too.
    assert decode_message(b"d8:msg_typei7e5:piecei0ee") is None
    assert decode_message(b"d3:aaa0:8:msg_typei0e5:piecei0e3:zzzli1eee") == MetadataRequested(0)


def test_limits_are_inclusive() -> None:
    last = MAX_METADATA_PIECES - 1
    assert decode_message(encode_request(last)) == MetadataRequested(last)
    tail = MAX_METADATA_SIZE - last * METADATA_PIECE
    msg = decode_message(encode_data(last, MAX_METADATA_SIZE, bytes(tail)))
    assert isinstance(msg, MetadataPieceReceived) and len(msg.data) == tail
    pad = MAX_HEADER - len(b"d1:a480:") - len(b"8:msg_typei0e5:piecei0ee")
    fat = b"d1:a" + str(pad).encode() + b":" + b"p" * pad + b"8:msg_typei0e5:piecei0ee"
    assert len(fat) == MAX_HEADER and decode_message(fat) == MetadataRequested(0)


def test_encoding_refuses_what_a_peer_would_refuse() -> None:
    bad: Callable[[], bytes]
    for bad in (
        lambda: encode_request(-1),
        lambda: encode_request(MAX_METADATA_PIECES),
        lambda: encode_data(0, 0, b""),
        lambda: encode_data(0, MAX_METADATA_SIZE + 1, bytes(METADATA_PIECE)),
        lambda: encode_data(0, 100, bytes(99)),
        lambda: encode_data(1, 100, bytes(100)),
    ):
        with pytest.raises(LocalProtocolError):
            bad()


def _data(piece: int, total: int, extra: bytes) -> bytes:
    return bencode.encode({b"msg_type": 1, b"piece": piece, b"total_size": total}) + extra


# (row, payload, what the error says): tests/adversarial/README.md table H.
HOSTILE: list[tuple[str, bytes, str]] = [
    ("H1-empty", b"", "empty input"),
    ("H1-garbage", b"\xff\x00", "bad bencode at byte 0"),
    ("H1-list", b"li1ee", "not a dictionary"),
    ("H1-truncated", b"d8:msg_typei0e5:piecei0e", "unexpected end of input"),
    ("H1-unsorted", b"d5:piecei0e8:msg_typei0ee", "unsorted dictionary key"),
    ("H1-huge-header", b"d1:a600:" + b"x" * 600 + b"e", "must end within 512 bytes"),
    ("H1-deep", b"d1:a" + b"l" * 10 + b"e" * 10 + b"e", "nesting deeper than 4"),
    ("H2-no-msg-type", b"d5:piecei0ee", "'msg_type' is missing or not an integer"),
    ("H2-msg-type-string", b"d8:msg_type1:0e", "'msg_type' is missing or not an integer"),
    ("H2-no-piece", b"d8:msg_typei0ee", "no 'piece'"),
    ("H2-piece-negative", b"d8:msg_typei0e5:piecei-1ee", "'piece' -1 is outside 0..639"),
    ("H2-piece-huge", b"d8:msg_typei2e5:piecei99999999999ee", "'piece' 99999999999 is outside"),
    ("H2-piece-string", b"d8:msg_typei0e5:piece1:0e", "'piece' is not an integer"),
    ("H2-request-trailing", encode_request(0) + b"x", "1 bytes after a request message"),
    ("H2-reject-trailing", encode_reject(0) + b"xy", "2 bytes after a reject message"),
    ("H3-no-total-size", b"d8:msg_typei1e5:piecei0ee" + b"x", "no 'total_size'"),
    ("H3-total-4GiB", _data(0, 4 << 30, bytes(METADATA_PIECE)), "'total_size' 4294967296 is"),
    ("H3-total-zero", _data(0, 0, b""), "'total_size' 0 is outside 1..10485760"),
    ("H3-piece-out-of-range", _data(3, len(INFO), bytes(10)), "piece 3 of metadata with 3"),
    ("H3-piece-short", _data(0, len(INFO), bytes(METADATA_PIECE - 1)), "has 16383 bytes"),
    ("H3-piece-long", _data(2, len(INFO), bytes(1001)), "piece 2 has 1001 bytes, not 1000"),
    ("H3-piece-over-16k", _data(0, len(INFO), bytes(METADATA_PIECE + 1)), "16385 bytes"),
    ("H3-piece-empty", _data(0, len(INFO), b""), "piece 0 has 0 bytes, not 16384"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "reason"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE]
)
def test_hostile_message_is_a_remote_protocol_error(payload: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason) as err:
        decode_message(payload)
    assert err.value.reason.startswith("ut_metadata: ")
    assert err.value.reason.isprintable() and len(err.value.reason) < 200


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=64))
def test_random_payloads_give_a_message_or_the_remote_error(head: bytes, tail: bytes) -> None:
    for payload in (head, head + tail, encode_data(0, 40, bytes(40))[: len(head)] + tail):
        try:
            msg = decode_message(payload)
        except RemoteProtocolError:
            continue
        if isinstance(msg, MetadataPieceReceived):
            assert payload.endswith(msg.data) and 0 < len(msg.data) <= METADATA_PIECE


# -- the handler on real connections ------------------------------------------------------


def linked(info_hash: bytes = IH) -> tuple[Connection, Connection, UtMetadata, UtMetadata]:
    """Two magnet-style connections (no geometry) with BEP 10 and ut_metadata on both,
    extended handshakes exchanged: b says it has the metadata."""
    a, b = Connection(info_hash), Connection(info_hash)
    ha, hb = UtMetadata(), UtMetadata()
    ra = ExtensionRouter([ha], client="a")
    rb = ExtensionRouter([hb], client="b", metadata_size=len(INFO))
    a.extensions, b.extensions = ra, rb
    b.receive_data(a.send(Handshake(info_hash, PID_A, EXTENSION_RESERVED)))
    a.receive_data(b.send(Handshake(info_hash, PID_B, EXTENSION_RESERVED)))
    assert isinstance(a.next_event(), Handshake) and isinstance(b.next_event(), Handshake)
    a.receive_data(b.send(rb.handshake()))
    b.receive_data(a.send(ra.handshake()))
    assert drain(a) == [ExtendedHandshake({"ut_metadata": 1}, client="b", metadata_size=len(INFO))]
    assert drain(b) == [ExtendedHandshake({"ut_metadata": 1}, client="a")]
    return a, b, ha, hb


def drain(conn: Connection) -> list[Event]:
    out: list[Event] = []
    while (ev := conn.next_event()) is not NEED_DATA:
        assert isinstance(ev, Event)
        out.append(ev)
    return out


def test_the_handler_learns_the_peers_id_and_size() -> None:
    _, _, ha, hb = linked()
    assert (ha.peer_id, ha.metadata_size) == (1, len(INFO))
    assert (hb.peer_id, hb.metadata_size) == (1, None)  # a has nothing to give


def test_fetch_over_two_connections_byte_for_byte() -> None:
    # a knows only the info-hash; b serves the metadata it has, piece by piece.
    a, b, ha, _ = linked()
    ra, rb = a.extensions, b.extensions
    assert isinstance(ra, ExtensionRouter) and isinstance(rb, ExtensionRouter)
    assert ha.metadata_size is not None
    asm: MetadataAssembler[str] = MetadataAssembler(IH, ha.metadata_size)
    assert asm.add_peer("b", ha.metadata_size)
    now, outcome = 0.0, None
    while not asm.complete:
        wanted = asm.next_requests("b", now)
        assert wanted
        b.receive_data(
            b"".join(a.send(ra.message("ut_metadata", encode_request(i))) for i in wanted)
        )
        for ev in drain(b):
            assert isinstance(ev, MetadataRequested)
            a.receive_data(b.send(rb.message("ut_metadata", serve_request(INFO, ev.piece))))
        for ev in drain(a):
            assert isinstance(ev, MetadataPieceReceived)
            outcome = asm.received("b", ev.piece, ev.total_size, ev.data)
        now += 1
    assert outcome == MetadataVerified(INFO, frozenset({"b"}))


def test_a_peer_without_the_metadata_rejects_and_we_see_it() -> None:
    a, b, _, _ = linked()
    rb = b.extensions
    ra = a.extensions
    assert isinstance(ra, ExtensionRouter) and isinstance(rb, ExtensionRouter)
    # b asks a, which has nothing: a rejects.
    a.receive_data(b.send(rb.message("ut_metadata", encode_request(0))))
    assert drain(a) == [MetadataRequested(0)]
    b.receive_data(a.send(ra.message("ut_metadata", serve_request(None, 0))))
    assert drain(b) == [MetadataRejected(0)]


def test_a_hostile_message_is_the_connections_sticky_error() -> None:
    a, b, _, _ = linked()
    a.receive_data(b.send(Extended(1, _data(0, 4 << 30, bytes(METADATA_PIECE)))))
    with pytest.raises(RemoteProtocolError, match="'total_size' 4294967296") as first:
        a.next_event()
    with pytest.raises(RemoteProtocolError) as again:
        a.next_event()
    assert again.value is first.value


def test_serving_slices_the_info_dict() -> None:
    pieces = [decode_message(serve_request(INFO, i)) for i in range(piece_count(len(INFO)))]
    assert b"".join(p.data for p in pieces if isinstance(p, MetadataPieceReceived)) == INFO
    assert [len(p.data) for p in pieces if isinstance(p, MetadataPieceReceived)] == [
        16384,
        16384,
        1000,
    ]
    assert serve_request(INFO, 3) == encode_reject(3)  # past the end: reject, as libtorrent
    assert serve_request(None, 0) == encode_reject(0)  # no metadata yet


# -- the assembler ----------------------------------------------------------------------


def piece(i: int, info: bytes = INFO) -> bytes:
    return info[i * METADATA_PIECE : (i + 1) * METADATA_PIECE]


def test_requests_spread_over_several_peers_without_duplicates() -> None:
    asm: MetadataAssembler[str] = MetadataAssembler(IH, len(INFO), max_outstanding=2)
    for p in "abc":
        assert asm.add_peer(p, len(INFO))
    assert asm.next_requests("a", 0.0) == [0, 1]
    assert asm.next_requests("b", 0.0) == [2]
    assert asm.next_requests("c", 0.0) == []
    assert asm.next_requests("a", 0.0) == []  # a has its two in flight
    assert asm.next_deadline() == REQUEST_TIMEOUT
    assert asm.received("b", 2, len(INFO), piece(2)) == PieceStored("b", 2, 2)
    assert asm.received("a", 0, len(INFO), piece(0)) == PieceStored("a", 0, 1)
    done = asm.received("a", 1, len(INFO), piece(1))
    assert done == MetadataVerified(INFO, frozenset({"a", "b"}))
    assert asm.complete and asm.next_requests("c", 1.0) == []
    assert asm.received("c", 0, len(INFO), piece(0)) == PieceIgnored(
        "c", 0, "the metadata is complete"
    )


def test_a_silent_peer_times_out_and_others_get_its_pieces() -> None:
    asm: MetadataAssembler[str] = MetadataAssembler(IH, len(INFO), max_outstanding=3)
    asm.add_peer("silent")
    assert asm.next_requests("silent", 0.0) == [0, 1, 2]
    asm.add_peer("honest")
    assert asm.next_requests("honest", 1.0) == []
    assert asm.expire(REQUEST_TIMEOUT - 0.001) == []
    assert asm.expire(REQUEST_TIMEOUT) == [("silent", 0), ("silent", 1), ("silent", 2)]
    assert asm.next_requests("honest", 11.0) == [0, 1, 2]
    # The silent peer's late answer still counts: it was asked.
    assert asm.received("silent", 0, len(INFO), piece(0)) == PieceStored("silent", 0, 2)
    assert asm.received("honest", 0, len(INFO), piece(0)) == PieceIgnored(
        "honest", 0, "already received"
    )
    assert asm.next_requests("silent", 12.0) == []  # everything is in flight with honest
    asm.remove_peer("honest")
    assert asm.next_requests("silent", 12.0) == [1, 2]
    # A second expiry and the silent peer is asked no more.
    for _ in range(MAX_TIMEOUTS):
        asm.expire(1000.0)
    assert asm.excluded("silent") and asm.peers == frozenset()
    assert not asm.add_peer("silent")
    assert asm.next_deadline() is None


def test_a_request_made_moot_by_a_late_answer_does_not_expire() -> None:
    asm: MetadataAssembler[str] = MetadataAssembler(IH, len(INFO), max_outstanding=3)
    asm.add_peer("slow")
    asm.add_peer("other")
    assert asm.next_requests("slow", 0.0) == [0, 1, 2]
    asm.expire(REQUEST_TIMEOUT)
    assert asm.next_requests("other", 20.0) == [0, 1, 2]
    assert asm.received("slow", 0, len(INFO), piece(0)) == PieceStored("slow", 0, 2)
    # other's request for piece 0 is moot: only 1 and 2 can expire against it.
    assert asm.expire(20.0 + REQUEST_TIMEOUT) == [("other", 1), ("other", 2)]
    assert asm.received("other", 0, len(INFO), piece(0)) == PieceIgnored(
        "other", 0, "already received"
    )
    assert asm.received("other", 1, len(INFO), piece(1)) == PieceStored("other", 1, 1)


def test_a_peer_that_rejects_everything_is_useless_and_others_finish() -> None:
    asm: MetadataAssembler[str] = MetadataAssembler(IH, len(INFO), max_outstanding=3)
    asm.add_peer("nay")
    for i in asm.next_requests("nay", 0.0):
        asm.rejected("nay", i)
    assert not asm.useful("nay") and asm.next_requests("nay", 1.0) == []
    asm.add_peer("yes")
    outcome = None
    for i in asm.next_requests("yes", 1.0):
        outcome = asm.received("yes", i, len(INFO), piece(i))
    assert outcome == MetadataVerified(INFO, frozenset({"yes"}))


@pytest.mark.parametrize(
    ("index", "total", "data", "reason"),
    [
        (0, len(INFO) + 1, piece(0), f"total_size {len(INFO) + 1}, not {len(INFO)}"),
        (3, len(INFO), b"x", "piece 3 of 3"),
        (-1, len(INFO), b"x", "piece -1 of 3"),
        (2, len(INFO), piece(2) + b"x", "piece 2 has 1001 bytes, not 1000"),
        (0, len(INFO), piece(0)[:-1], "piece 0 has 16383 bytes, not 16384"),
    ],
    ids=["H4-total-size-differs", "H4-out-of-range", "H4-negative", "H4-long", "H4-short"],
)
def test_a_bad_piece_excludes_its_sender(index: int, total: int, data: bytes, reason: str) -> None:
    asm: MetadataAssembler[str] = MetadataAssembler(IH, len(INFO), max_outstanding=3)
    asm.add_peer("liar")
    asm.add_peer("honest")
    asm.next_requests("liar", 0.0)
    assert asm.received("liar", index, total, data) == PieceRefused("liar", index, reason)
    assert asm.excluded("liar") and not asm.add_peer("liar")
    assert asm.next_requests("honest", 0.0) == [0, 1, 2]  # the liar's pieces are free again


def test_unrequested_pieces_are_ignored() -> None:
    asm: MetadataAssembler[str] = MetadataAssembler(IH, len(INFO))
    asm.add_peer("a")
    assert asm.received("a", 0, len(INFO), piece(0)) == PieceIgnored("a", 0, "not requested")
    assert asm.received("z", 0, len(INFO), piece(0)) == PieceIgnored(
        "z", 0, "not a peer of this metadata fetch"
    )
    assert asm.missing == 3


def test_metadata_from_one_liar_names_it() -> None:
    asm: MetadataAssembler[str] = MetadataAssembler(IH, len(INFO), max_outstanding=3)
    asm.add_peer("liar")
    fake = INFO[:-1] + b"!"
    outcome = None
    for i in asm.next_requests("liar", 0.0):
        outcome = asm.received("liar", i, len(INFO), piece(i, fake))
    assert outcome == MetadataMismatch(frozenset({"liar"}), "liar")
    assert asm.excluded("liar") and asm.missing == 3 and not asm.complete
    asm.add_peer("honest")
    for i in asm.next_requests("honest", 1.0):
        outcome = asm.received("honest", i, len(INFO), piece(i))
    assert outcome == MetadataVerified(INFO, frozenset({"honest"}))


def test_a_mismatch_among_several_peers_is_narrowed_to_one() -> None:
    asm: MetadataAssembler[str] = MetadataAssembler(IH, len(INFO), max_outstanding=2)
    fake = b"?" * len(INFO)
    sources = {"liar": fake, "honest": INFO}
    asm.add_peer("liar")
    asm.add_peer("honest")
    outcome = None
    for p in ("liar", "honest"):
        for i in asm.next_requests(p, 0.0):
            outcome = asm.received(p, i, len(INFO), piece(i, sources[p]))
    assert outcome == MetadataMismatch(frozenset({"liar", "honest"}), None)
    assert not asm.excluded("liar") and not asm.excluded("honest")
    # Now one peer gives every piece: the liar first, then it is named and excluded.
    assert asm.next_requests("liar", 1.0) == [0, 1]
    assert asm.next_requests("honest", 1.0) == []
    for i in (0, 1):
        asm.received("liar", i, len(INFO), piece(i, fake))
    assert asm.next_requests("liar", 1.0) == [2]
    outcome = asm.received("liar", 2, len(INFO), piece(2, fake))
    assert outcome == MetadataMismatch(frozenset({"liar"}), "liar")
    for _ in range(2):
        for i in asm.next_requests("honest", 2.0):
            outcome = asm.received("honest", i, len(INFO), piece(i))
    assert outcome == MetadataVerified(INFO, frozenset({"honest"}))


def test_a_single_source_that_stops_answering_hands_the_round_over() -> None:
    asm: MetadataAssembler[str] = MetadataAssembler(IH, len(INFO), max_outstanding=2)
    asm.add_peer("x")
    asm.add_peer("y")
    for p, data in (("x", b"?" * len(INFO)), ("y", INFO)):
        for i in asm.next_requests(p, 0.0):
            asm.received(p, i, len(INFO), piece(i, data))
    assert asm.missing == 3  # the mismatch of x's and y's pieces reset the round
    assert asm.next_requests("x", 1.0) == [0, 1]
    assert asm.next_requests("y", 1.0) == []  # x is this round's only source
    asm.remove_peer("x")  # its connection ended
    assert asm.next_requests("y", 1.0) == [0, 1]


def test_peers_announcing_another_size_are_not_mixed_in() -> None:
    asm: MetadataAssembler[str] = MetadataAssembler(IH, len(INFO))
    assert not asm.add_peer("other", len(INFO) + 1)
    assert asm.add_peer("same", len(INFO)) and asm.add_peer("unsaid")
    assert asm.peers == frozenset({"same", "unsaid"})


@pytest.mark.parametrize("size", [0, -1, MAX_METADATA_SIZE + 1, 4 << 30, 1 << 62])
def test_an_absurd_metadata_size_is_refused_before_allocating(size: int) -> None:
    with pytest.raises(RemoteProtocolError, match=f"metadata_size {size} is outside"):
        MetadataAssembler(IH, size)


def test_the_largest_metadata_is_accepted() -> None:
    asm: MetadataAssembler[int] = MetadataAssembler(IH, MAX_METADATA_SIZE)
    assert asm.count == MAX_METADATA_PIECES == 640


def test_a_one_piece_metadata() -> None:
    small = info_dict(100)
    asm: MetadataAssembler[int] = MetadataAssembler(hashlib.sha1(small).digest(), 100)
    asm.add_peer(7)
    assert asm.next_requests(7, 0.0) == [0]
    assert asm.received(7, 0, 100, small) == MetadataVerified(small, frozenset({7}))
