"""Tests for mptorrent.proto.ext.ut_pex (BEP 11): codec, handler, sending state.

Hostile inputs are tests/adversarial/README.md table I; each is a row of HOSTILE or a test
named after what it defends.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mptorrent.messages import PeerAddr
from mptorrent.proto import bencode
from mptorrent.proto.ext import ExtendedHandshake, ExtensionRouter
from mptorrent.proto.ext.ut_pex import (
    MAX_ADDED,
    MAX_DROPPED,
    MAX_PEX_SIZE,
    PEX_INTERVAL,
    PexFlags,
    PexPeer,
    PexPeers,
    PexState,
    UtPex,
    decode_pex,
    encode_pex,
)
from mptorrent.proto.wire import (
    EXTENSION_RESERVED,
    NEED_DATA,
    Connection,
    Event,
    Handshake,
    RemoteProtocolError,
)

IH = bytes(range(20))


def v4(host: str, port: int) -> bytes:
    return ipaddress.IPv4Address(host).packed + struct.pack("!H", port)


def v6(host: str, port: int) -> bytes:
    return ipaddress.IPv6Address(host).packed + struct.pack("!H", port)


A = PeerAddr("127.0.0.2", 6881)
B = PeerAddr("10.1.2.3", 51413)
C6 = PeerAddr("::1", 7000)


def test_encode_byte_for_byte_and_back() -> None:
    payload = encode_pex(
        [PexPeer(A, PexFlags.SEED | PexFlags.REACHABLE), PexPeer(C6, PexFlags.UTP)], [B]
    )
    assert payload == (
        b"d5:added6:" + v4("127.0.0.2", 6881) + b"7:added.f1:\x12"
        b"6:added618:" + v6("::1", 7000) + b"8:added6.f1:\x04"
        b"7:dropped6:" + v4("10.1.2.3", 51413) + b"e"
    )
    assert decode_pex(payload) == PexPeers(
        (PexPeer(A, PexFlags.SEED | PexFlags.REACHABLE), PexPeer(C6, PexFlags.UTP)), (B,)
    )
    # libtorrent's shape when nothing changed: the IPv4 keys, empty.
    assert encode_pex() == b"d5:added0:7:added.f0:7:dropped0:e"
    assert decode_pex(encode_pex()) == PexPeers()


def test_flags_are_optional_and_unknown_bits_dropped() -> None:
    msg = bencode.encode({b"added": v4("127.0.0.2", 6881)})
    assert decode_pex(msg) == PexPeers((PexPeer(A, PexFlags(0)),))
    msg = bencode.encode({b"added": v4("127.0.0.2", 6881), b"added.f": b"\xff"})
    assert decode_pex(msg).added[0].flags == PexFlags(0x1F)


def test_unusable_entries_are_skipped_and_duplicates_merged() -> None:
    blob = b"".join(
        [
            v4("0.0.0.0", 1),
            v4("224.0.0.1", 1),
            v4("255.255.255.255", 1),
            v4("127.0.0.2", 0),
            v4("127.0.0.2", 6881),
            v4("127.0.0.2", 6881),
        ]
    )
    mapped = v6("::ffff:127.0.0.2", 6881)  # the same peer, IPv4-mapped
    msg = bencode.encode(
        {b"added": blob, b"added.f": bytes(6), b"added6": mapped + v6("ff02::1", 1)}
    )
    assert decode_pex(msg) == PexPeers((PexPeer(A),))


def test_private_and_loopback_addresses_are_kept() -> None:
    # Our own address is the coordinator's to leave out (as for tracker replies).
    peers = [PexPeer(PeerAddr(h, 1)) for h in ("192.168.1.1", "10.0.0.1", "127.0.0.1", "fe80::1")]
    assert decode_pex(encode_pex(peers)).added == tuple(peers)


def test_unknown_keys_are_ignored() -> None:
    msg = bencode.encode({b"added": b"", b"x": [1, {b"y": b"z"}], b"zz": 5})
    assert decode_pex(msg) == PexPeers()


def test_ten_thousand_peers_are_refused_and_the_cap_truncates() -> None:
    many = b"".join(v4(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 1) for i in range(10_000))
    with pytest.raises(RemoteProtocolError, match="over the 16384-byte limit"):
        decode_pex(bencode.encode({b"added": many, b"added.f": bytes(10_000)}))
    # Within the byte cap: the first MAX_ADDED added and MAX_DROPPED dropped are kept.
    n = 1000
    msg = bencode.encode(
        {
            b"added": many[: 6 * n],
            b"added.f": bytes(n),
            b"added6": v6("::2", 2),
            b"dropped": many[6 * n : 12 * n],
        }
    )
    assert len(msg) <= MAX_PEX_SIZE
    got = decode_pex(msg)
    assert len(got.added) == MAX_ADDED == 50 and len(got.dropped) == MAX_DROPPED == 50
    assert got.added[0].addr == PeerAddr("10.0.0.0", 1) and got.dropped[0] == PeerAddr(
        "10.0.3.232", 1
    )


# (row, payload, what the error says): tests/adversarial/README.md table I.
HOSTILE: list[tuple[str, bytes, str]] = [
    ("I1-empty", b"", "empty input"),
    ("I1-garbage", b"\x00junk", "bad bencode at byte 0"),
    ("I1-list", b"le", "not a dictionary"),
    ("I1-deep", b"d1:x" + b"l" * 10 + b"e" * 10 + b"e", "nesting deeper than 4"),
    ("I2-added-int", b"d5:addedi1ee", "'added' is not a string"),
    ("I2-flags-list", b"d5:added0:7:added.flee", "'added.f' is not a string"),
    ("I3-added-5", bencode.encode({b"added": bytes(5)}), "'added' is 5 bytes, not a multiple of 6"),
    ("I3-added6-17", bencode.encode({b"added6": bytes(17)}), "'added6' is 17 bytes, not a"),
    ("I3-dropped-7", bencode.encode({b"dropped": bytes(7)}), "'dropped' is 7 bytes"),
    ("I3-dropped6-19", bencode.encode({b"dropped6": bytes(19)}), "'dropped6' is 19 bytes"),
    ("I3-flags-short", bencode.encode({b"added": bytes(12), b"added.f": b"\x01"}),
     "'added.f' has 1 bytes for 2 peers"),
    ("I3-flags-long", bencode.encode({b"added6": bytes(18), b"added6.f": b"\x01\x02"}),
     "'added6.f' has 2 bytes for 1 peers"),
    ("I4-too-big", bencode.encode({b"x": bytes(MAX_PEX_SIZE)}), "over the 16384-byte limit"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "reason"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE]
)
def test_hostile_message_is_a_remote_protocol_error(payload: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason) as err:
        decode_pex(payload)
    assert err.value.reason.startswith("ut_pex: ")
    assert err.value.reason.isprintable() and len(err.value.reason) < 200


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([b"added", b"added.f", b"added6", b"added6.f", b"dropped", b"dropped6"]),
        st.one_of(st.binary(max_size=80), st.integers()),
    )
)
def test_random_messages_give_peers_or_the_remote_error(top: dict[bytes, bytes | int]) -> None:
    try:
        got = decode_pex(bencode.encode(top))
    except RemoteProtocolError:
        return
    assert len(got.added) <= MAX_ADDED and len(got.dropped) <= MAX_DROPPED
    assert all(p.addr.port > 0 for p in got.added)
    again = decode_pex(encode_pex(got.added, got.dropped))
    # IPv4-mapped IPv6 entries come back in the IPv4 list: compare as sets.
    assert set(again.added) == set(got.added) and set(again.dropped) == set(got.dropped)


def test_the_handler_on_a_real_connection() -> None:
    a, b = Connection(IH), Connection(IH)
    ha, hb = UtPex(), UtPex()
    ra, rb = ExtensionRouter([ha]), ExtensionRouter([hb])
    a.extensions, b.extensions = ra, rb
    b.receive_data(a.send(Handshake(IH, b"-MP0001-aaaaaaaaaaaa", EXTENSION_RESERVED)))
    a.receive_data(b.send(Handshake(IH, b"-MP0001-bbbbbbbbbbbb", EXTENSION_RESERVED)))
    assert isinstance(a.next_event(), Handshake) and isinstance(b.next_event(), Handshake)
    a.receive_data(b.send(rb.handshake()))
    b.receive_data(a.send(ra.handshake()))
    events: list[Event] = []
    for conn in (a, b):
        while (ev := conn.next_event()) is not NEED_DATA:
            assert isinstance(ev, Event)
            events.append(ev)
    assert [type(e) for e in events] == [ExtendedHandshake] * 2
    assert ha.peer_id == hb.peer_id == 1
    state = PexState(exclude=A)
    payload = state.update({A: PexFlags(0), B: PexFlags.SEED}, now=0.0)
    assert payload is not None
    b.receive_data(a.send(ra.message("ut_pex", payload)))
    assert b.next_event() == PexPeers((PexPeer(B, PexFlags.SEED),))


# -- the sending side ---------------------------------------------------------------------


def test_pex_state_sends_changes_at_most_once_a_minute() -> None:
    state = PexState(exclude=A)
    first = state.update({A: PexFlags(0), B: PexFlags.SEED}, now=100.0)
    assert first is not None and decode_pex(first) == PexPeers((PexPeer(B, PexFlags.SEED),))
    # Changes within the minute wait.
    assert state.update({C6: PexFlags(0)}, now=100.0 + PEX_INTERVAL - 0.01) is None
    second = state.update({C6: PexFlags(0)}, now=100.0 + PEX_INTERVAL)
    assert second is not None and decode_pex(second) == PexPeers((PexPeer(C6),), (B,))
    assert state.told == {C6: PexFlags(0)}
    # Nothing changed: nothing is sent, and the minute does not restart.
    assert state.update({C6: PexFlags(0)}, now=1000.0) is None
    assert state.update({}, now=1000.0) is not None


def test_pex_state_caps_each_message_and_sends_the_rest_later() -> None:
    state = PexState()
    peers = {PeerAddr(f"10.0.{i // 250}.{i % 250 + 1}", 1): PexFlags(0) for i in range(120)}
    sizes = []
    for minute in range(4):
        payload = state.update(peers, now=60.0 * minute)
        if payload is None:
            break
        sizes.append(len(decode_pex(payload).added))
    assert sizes == [50, 50, 20]
    assert state.told == peers
    dropped = state.update({}, now=1000.0)
    assert dropped is not None and len(decode_pex(dropped).dropped) == 50


def test_pex_state_leaves_out_hosts_it_cannot_encode() -> None:
    state = PexState()
    payload = state.update({PeerAddr("seed.example", 1): PexFlags(0), A: PexFlags(0)}, 0.0)
    assert payload is not None and decode_pex(payload).added == (PexPeer(A),)
