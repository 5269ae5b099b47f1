"""Tests for mptorrent.proto.ext: the BEP 10 extended handshake and the extension router.

Byte for byte and sans-IO: two real Connections joined in memory (tests/test_wire.py's
Pair), the router attached to one or both.  Hostile handshakes are catalogued in
tests/adversarial/README.md, table F; each is a row of HOSTILE below.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mptorrent.proto import bencode
from mptorrent.proto.ext import (
    MAX_EXTENSIONS,
    MAX_HANDSHAKE_SIZE,
    ExtendedHandshake,
    ExtensionHandler,
    ExtensionRouter,
    decode_handshake,
    encode_handshake,
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
from tests.test_wire import IH, PID_B, Pair, drain, feed_zero_copy

FULL = ExtendedHandshake(
    {"ut_metadata": 1, "ut_pex": 2},
    client="mptorrent 0.1",
    port=6881,
    metadata_size=31235,
    reqq=250,
)
FULL_BYTES = (
    b"d1:md11:ut_metadatai1e6:ut_pexi2ee13:metadata_sizei31235e1:pi6881e4:reqqi250e"
    b"1:v13:mptorrent 0.1e"
)


# -- the codec ------------------------------------------------------------------------


def test_handshake_encodes_byte_for_byte_and_back() -> None:
    assert encode_handshake(FULL) == FULL_BYTES
    assert decode_handshake(FULL_BYTES) == FULL
    assert encode_handshake(ExtendedHandshake()) == b"d1:mdee"


def test_optional_fields_and_unknown_keys() -> None:
    # libtorrent-style extras we do not use are ignored; a handshake without 'm' is an
    # update that changes nothing (BEP 10: 'm' is additive).
    data = bencode.encode(
        {
            b"e": 0,
            b"ipv6": bytes(16),
            b"complete_ago": -1,
            b"m": {b"lt_donthave": 7, b"ut_metadata": 0},
            b"upload_only": 1,
            b"yourip": b"\x7f\x00\x00\x01",
            b"x": [[{b"deep": [1]}]],
        }
    )
    hs = decode_handshake(data)
    assert hs == ExtendedHandshake(
        {"lt_donthave": 7, "ut_metadata": 0}, yourip=IPv4Address("127.0.0.1")
    )
    assert decode_handshake(b"de") == ExtendedHandshake()


def test_yourip_encodes_byte_for_byte_and_back() -> None:
    v4 = ExtendedHandshake(yourip=IPv4Address("127.0.0.9"))
    assert encode_handshake(v4) == b"d1:mde6:yourip4:\x7f\x00\x00\x09e"
    assert decode_handshake(b"d1:mde6:yourip4:\x7f\x00\x00\x09e") == v4
    v6 = ExtendedHandshake(yourip=IPv6Address("::1"))
    assert encode_handshake(v6) == b"d1:mde6:yourip16:" + bytes(15) + b"\x01e"
    assert decode_handshake(encode_handshake(v6)) == v6
    # After 'v' in key order, as bencode wants.
    full = encode_handshake(ExtendedHandshake({"a": 1}, client="c", yourip=IPv4Address("1.2.3.4")))
    assert full == b"d1:md1:ai1ee1:v1:c6:yourip4:\x01\x02\x03\x04e"
    router = ExtensionRouter(yourip=IPv4Address("10.0.0.2"))
    assert router.handshake().payload == b"d1:mde6:yourip4:\n\x00\x00\x02e"


@pytest.mark.parametrize(
    "raw", [b"", b"\x7f\x00\x01", b"\x7f\x00\x00\x01\x1a\xe1", bytes(15), bytes(17), 5, [b"1"]]
)
def test_yourip_of_a_wrong_length_or_type_is_dropped_not_fatal(raw: bencode.Encodable) -> None:
    # A hint about our own address, nothing to drop the peer for: adversarial F6.
    data = bencode.encode({b"p": 6881, b"yourip": raw})
    assert decode_handshake(data) == ExtendedHandshake(port=6881)


def test_client_text_is_decoded_with_replacement() -> None:
    assert decode_handshake(b"d1:v3:\xffabe").client == "\ufffdab"


def test_limits_are_inclusive() -> None:
    names = {f"e{i:02}": i + 1 for i in range(MAX_EXTENSIONS)}
    top = {
        b"m": {k.encode(): v for k, v in names.items()},
        b"metadata_size": 10 * 1024 * 1024,
        b"p": 65535,
        b"reqq": 1 << 16,
        b"v": b"v" * 256,
    }
    hs = decode_handshake(bencode.encode(top))
    assert len(hs.extensions) == MAX_EXTENSIONS and hs.port == 65535
    assert decode_handshake(bencode.encode({b"m": {b"n" * 64: 255}})).extensions == {"n" * 64: 255}


def _m(entries: dict[bytes, object]) -> bytes:
    return bencode.encode({b"m": entries})


# (row, payload, what the error says): tests/adversarial/README.md table F.
HOSTILE: list[tuple[str, bytes, str]] = [
    ("F1-empty", b"", "empty input"),
    ("F1-garbage", b"\x00\xffjunk", "bad bencode at byte 0"),
    ("F1-truncated", FULL_BYTES[:-1], "unexpected end of input"),
    ("F1-trailing", FULL_BYTES + b"de", "trailing data"),
    ("F2-list", b"le", "not a dictionary"),
    ("F2-int", b"i1e", "not a dictionary"),
    ("F2-string", b"4:spam", "not a dictionary"),
    ("F3-deep", b"d1:x" + b"l" * 20 + b"e" * 20 + b"e", "nesting deeper than 8"),
    ("F3-too-big", bencode.encode({b"x": b"y" * MAX_HANDSHAKE_SIZE}), "over the 16384-byte"),
    ("F3-absurd-length", b"d1:v99999999999999999999999:e", "string length"),
    ("F3-many-tokens", b"d1:xl" + b"i1e" * 5000 + b"ee", "tokens"),
    ("F4-unsorted", b"d1:pi1e1:md1:ai1eee", "unsorted dictionary key"),
    ("F4-leading-zero", b"d1:pi01ee", "leading zero"),
    ("F4-huge-int", b"d1:pi" + b"9" * 70 + b"ee", "integer"),
    ("F5-m-int", b"d1:mi1ee", "'m' is not a dictionary"),
    ("F5-m-list", b"d1:mli1eee", "'m' is not a dictionary"),
    ("F5-id-string", _m({b"ut_pex": b"1"}), "id of 'ut_pex' is not an integer"),
    ("F5-id-256", _m({b"ut_pex": 256}), "id of 'ut_pex' is not an integer in 0..255"),
    ("F5-id-negative", _m({b"ut_pex": -1}), "in 0..255"),
    ("F5-name-empty", _m({b"": 1}), "extension name is not 1 to 64 bytes"),
    ("F5-name-65", _m({b"n" * 65: 1}), "extension name is not 1 to 64 bytes"),
    ("F5-name-escape", _m({b"\x1b[2J": 1}), "not printable ASCII"),
    ("F5-name-utf8", _m({"ü".encode(): 1}), "not printable ASCII"),
    (
        "F5-too-many",
        _m({f"e{i:03}".encode(): 1 for i in range(MAX_EXTENSIONS + 1)}),
        "65 extensions, over the limit of 64",
    ),
    ("F6-p-zero", b"d1:pi0ee", "'p' 0 is outside 1..65535"),
    ("F6-p-big", b"d1:pi65536ee", "'p' 65536 is outside"),
    ("F6-p-string", b"d1:p4:6881e", "'p' is not an integer"),
    ("F6-metadata-zero", b"d13:metadata_sizei0ee", "'metadata_size' 0 is outside"),
    ("F6-metadata-negative", b"d13:metadata_sizei-5ee", "'metadata_size' -5"),
    ("F6-metadata-huge", b"d13:metadata_sizei10485761ee", "'metadata_size' 10485761"),
    ("F6-reqq-zero", b"d4:reqqi0ee", "'reqq' 0 is outside 1..65536"),
    ("F6-reqq-huge", b"d4:reqqi99999999999ee", "'reqq' 99999999999"),
    ("F6-reqq-list", b"d4:reqqlee", "'reqq' is not an integer"),
    ("F7-v-int", b"d1:vi1ee", "'v' is not a string"),
    ("F7-v-long", bencode.encode({b"v": b"v" * 257}), "at most 256 bytes"),
]


@pytest.mark.parametrize(
    ("payload", "reason"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE]
)
def test_hostile_handshake_is_a_remote_protocol_error(payload: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason) as err:
        decode_handshake(payload)
    assert err.value.reason.startswith("extended handshake: ")
    assert err.value.reason.isprintable() and len(err.value.reason) < 200


@pytest.mark.parametrize(
    ("payload", "reason"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE]
)
def test_hostile_handshake_closes_the_connection_and_sticks(payload: bytes, reason: str) -> None:
    pair = Pair(ext=True)
    pair.b.extensions = ExtensionRouter()
    pair.b.receive_data(pair.a.send(Extended(0, payload)))
    with pytest.raises(RemoteProtocolError, match=reason) as first:
        pair.b.next_event()
    with pytest.raises(RemoteProtocolError) as again:
        pair.b.next_event()
    assert again.value is first.value


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_payloads_give_a_handshake_or_the_remote_error(payload: bytes) -> None:
    try:
        hs = decode_handshake(payload)
    except RemoteProtocolError:
        return
    assert decode_handshake(encode_handshake(hs)) == hs


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(FULL_BYTES)), st.binary(min_size=1, max_size=4), st.booleans())
def test_mutated_handshakes_give_a_handshake_or_the_remote_error(
    at: int, blob: bytes, insert: bool
) -> None:
    payload = FULL_BYTES[:at] + blob + FULL_BYTES[at + (0 if insert else len(blob)) :]
    try:
        hs = decode_handshake(payload)
    except RemoteProtocolError:
        return
    assert decode_handshake(encode_handshake(hs)) == hs


def test_encoding_refuses_what_a_peer_would_refuse() -> None:
    for bad in (
        ExtendedHandshake({"": 1}),
        ExtendedHandshake({"ü": 1}),
        ExtendedHandshake({"a": 256}),
        ExtendedHandshake(port=0),
        ExtendedHandshake(reqq=0),
        ExtendedHandshake(metadata_size=10 * 1024 * 1024 + 1),
        ExtendedHandshake(client="x" * MAX_HANDSHAKE_SIZE),
    ):
        with pytest.raises(LocalProtocolError):
            encode_handshake(bad)


# -- the router -----------------------------------------------------------------------


class Echo(ExtensionHandler):
    """A stand-in extension: its messages come back as EchoEvents, 'bad' is refused."""

    name = "mp_echo"

    def __init__(self) -> None:
        self.peer_id_seen: list[int] = []

    def receive(self, payload: bytes) -> Event | None:
        if payload == b"bad":
            raise RemoteProtocolError("mp_echo: bad payload")
        if payload == b"":
            return None
        return EchoEvent(payload)

    def peer_handshake(self, handshake: ExtendedHandshake, peer_id: int) -> None:
        self.peer_id_seen.append(peer_id)


class Other(Echo):
    name = "mp_other"


class EchoEvent(Event):
    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EchoEvent) and other.payload == self.payload

    __hash__ = None  # type: ignore[assignment]


def routed_pair() -> tuple[Pair, ExtensionRouter, ExtensionRouter, Echo]:
    """a and b both speak BEP 10; b has handlers mp_other (id 1) and mp_echo (id 2)."""
    pair = Pair(ext=True)
    echo = Echo()
    ra = ExtensionRouter(client="peer a", reqq=100)
    rb = ExtensionRouter([Other(), echo], client="peer b", port=6881)
    pair.a.extensions = ra
    pair.b.extensions = rb
    return pair, ra, rb, echo


def test_handshakes_cross_byte_for_byte() -> None:
    pair, ra, rb, echo = routed_pair()
    data = pair.b.send(rb.handshake())
    body = b"d1:md7:mp_echoi2e8:mp_otheri1ee1:pi6881e1:v6:peer be"
    assert data == (2 + len(body)).to_bytes(4, "big") + b"\x14\x00" + body
    assert feed_zero_copy(pair.a, data) == [
        ExtendedHandshake({"mp_echo": 2, "mp_other": 1}, client="peer b", port=6881)
    ]
    assert ra.peer_ids == {"mp_echo": 2, "mp_other": 1} and ra.peer_supports("mp_echo")
    assert ra.peer_handshake is not None and ra.peer_handshake.client == "peer b"
    got = feed_zero_copy(pair.b, pair.a.send(ra.handshake()))
    assert got == [ExtendedHandshake({}, client="peer a", reqq=100)]
    assert echo.peer_id_seen == [0]  # a does not speak mp_echo
    assert rb.local_ids == {"mp_other": 1, "mp_echo": 2}


def test_messages_go_to_their_handler_under_the_receivers_id() -> None:
    pair, ra, rb, _ = routed_pair()
    feed_zero_copy(pair.a, pair.b.send(rb.handshake()))
    msg = ra.message("mp_echo", b"hello")
    assert msg == Extended(2, b"hello")
    assert pair.a.send(msg) == bytes.fromhex("00000007 14 02") + b"hello"
    assert feed_zero_copy(pair.b, pair.a.send(msg)) == [EchoEvent(b"hello")]
    # A handler may consume a message without an event.
    assert feed_zero_copy(pair.b, pair.a.send(ra.message("mp_echo", b""))) == []
    with pytest.raises(LocalProtocolError, match="does not support 'ut_pex'"):
        ra.message("ut_pex", b"x")


def test_ids_we_did_not_advertise_pass_through_as_extended() -> None:
    pair, _, _, _ = routed_pair()
    assert feed_zero_copy(pair.b, pair.a.send(Extended(9, b"?"))) == [Extended(9, b"?")]


def test_a_handler_refusal_is_the_connections_sticky_error() -> None:
    pair, _, _, _ = routed_pair()
    pair.b.receive_data(pair.a.send(Extended(2, b"bad")))
    with pytest.raises(RemoteProtocolError, match="mp_echo: bad payload") as first:
        pair.b.next_event()
    with pytest.raises(RemoteProtocolError) as again:
        pair.b.next_event()
    assert again.value is first.value


def test_later_handshakes_are_additive_and_zero_disables() -> None:
    pair, ra, rb, echo = routed_pair()
    for m, expected in [
        ({b"mp_echo": 3, b"ut_pex": 1}, {"mp_echo": 3, "ut_pex": 1}),
        ({b"ut_metadata": 2}, {"mp_echo": 3, "ut_pex": 1, "ut_metadata": 2}),
        ({b"mp_echo": 0}, {"ut_pex": 1, "ut_metadata": 2}),
        ({b"nothing": 0}, {"ut_pex": 1, "ut_metadata": 2}),
    ]:
        payload = bencode.encode({b"m": m})
        got = feed_zero_copy(pair.b, pair.a.send(Extended(0, payload)))
        assert len(got) == 1 and isinstance(got[0], ExtendedHandshake)
        assert rb.peer_ids == expected
    assert echo.peer_id_seen == [3, 3, 0, 0]
    assert ra.peer_ids == {}


@pytest.mark.parametrize(
    ("handshakes", "reason"),
    [
        ([{b"ut_pex": 1, b"ut_metadata": 1}], "two extensions share one id"),
        ([{b"ut_pex": 1}, {b"ut_metadata": 1}], "two extensions share one id"),
        (
            [{f"a{i:02}".encode(): i + 1 for i in range(40)},
             {f"b{i:02}".encode(): i + 41 for i in range(40)}],
            "more than 64 extensions over all handshakes",
        ),
    ],
    ids=["F8-same-id", "F8-same-id-later", "F8-growing"],
)  # fmt: skip
def test_the_peers_ids_stay_unique_and_bounded(
    handshakes: list[dict[bytes, int]], reason: str
) -> None:
    pair, _, rb, _ = routed_pair()
    data = b"".join(pair.a.send(Extended(0, bencode.encode({b"m": m}))) for m in handshakes)
    pair.b.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=reason):
        drain(pair.b)
    assert len(rb.peer_ids) <= MAX_EXTENSIONS


def test_registration() -> None:
    router = ExtensionRouter()
    assert router.register(Echo()) == 1
    assert router.register(Other()) == 2
    with pytest.raises(LocalProtocolError, match="already registered"):
        router.register(Echo())
    assert router.handshake() == Extended(0, b"d1:md7:mp_echoi1e8:mp_otheri2eee")


def test_without_a_router_extended_messages_reach_the_caller() -> None:
    pair = Pair(ext=True)
    payload = encode_handshake(FULL)
    assert feed_zero_copy(pair.b, pair.a.send(Extended(0, payload))) == [Extended(0, payload)]


def test_router_on_a_connection_without_geometry() -> None:
    # The magnet case: the extension handshake arrives before anything else is known.
    us = Connection(IH, extensions=ExtensionRouter([Echo()]))
    peer = Pair(ext=True).a  # only its send side is used
    us.receive_data(Connection(IH).send(Handshake(IH, PID_B, EXTENSION_RESERVED)))
    us.send(Handshake(IH, PID_B, EXTENSION_RESERVED))
    assert isinstance(us.next_event(), Handshake)
    us.receive_data(peer.send(Extended(0, FULL_BYTES)) + peer.send(Extended(1, b"hi")))
    assert drain(us) == [FULL, EchoEvent(b"hi")]
    assert us.next_event() is NEED_DATA


def test_the_wire_fuzzer_seeds_reach_the_router_cleanly() -> None:
    # fuzz/fuzz_wire.py mutates these; unmutated, each must parse without a protocol
    # error and cover the handshake decoder and a handler.
    from fuzz import fuzz_wire

    kinds: set[str] = set()
    for seed in fuzz_wire.seeds():
        if not seed[0] & 1 or seed[0] & 4 or len(seed) < 100:
            continue  # the fast-extension seeds (bit 2) are for the BEP 6 rules, not the router
        conn = fuzz_wire._us(late_geometry=bool(seed[0] & 2))
        half = (len(seed) - 1) // 2
        for part in (seed[1 : 1 + half], seed[1 + half :]):
            conn.receive_data(part)
            kinds.update(type(ev).__name__ for ev in fuzz_wire._events(conn))
            if conn.geometry is None:
                conn.set_geometry(fuzz_wire.NUM_PIECES, fuzz_wire.PIECE_LEN, fuzz_wire.TOTAL)
    assert {"ExtendedHandshake", "Probed", "Extended", "Bitfield", "Piece"} <= kinds
