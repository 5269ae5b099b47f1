"""mptorrent.proto.dht.krpc: BEP 5's examples byte for byte, hostile datagrams, round trips.

Hostile inputs are rows of tests/adversarial/README.md table J.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mptorrent.proto import bencode
from mptorrent.proto.dht import krpc
from mptorrent.proto.dht.krpc import (
    MAX_DATAGRAM,
    MAX_NODES,
    MAX_VALUES,
    AnnouncePeer,
    Error,
    FindNode,
    GetPeers,
    KrpcError,
    Message,
    NodeInfo,
    Ping,
    Response,
    decode,
    encode,
)
from mptorrent.proto.dht.node import PeersFound

A = b"abcdefghij0123456789"  # the querying node's id in BEP 5's examples
M = b"mnopqrstuvwxyz123456"  # the responding node / target / info-hash

# BEP 5's examples, with ``nodes`` made real (the BEP writes "def456...").
NODE = NodeInfo(b"0123456789abcdefghij", ("127.0.0.2", 6881))
NODE_C = b"0123456789abcdefghij" + bytes([127, 0, 0, 2, 0x1A, 0xE1])
BEP5 = [
    (b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe", Ping(b"aa", A)),
    (b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re", Response(b"aa", M)),
    (
        b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee",
        Error(b"aa", 201, b"A Generic Error Ocurred"),
    ),
    (
        b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe",
        FindNode(b"aa", A, M),
    ),
    (
        b"d1:rd2:id20:0123456789abcdefghij5:nodes26:" + NODE_C + b"e1:t2:aa1:y1:re",
        Response(b"aa", b"0123456789abcdefghij", nodes=(NODE,)),
    ),
    (
        b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e1:q9:get_peers1:t2:aa1:y1:qe",
        GetPeers(b"aa", A, M),
    ),
    (
        b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re",
        Response(
            b"aa",
            A,
            values=(("97.120.106.101", 11893), ("105.100.104.116", 28269)),
            token=b"aoeusnth",
        ),
    ),
    (
        b"d1:rd2:id20:abcdefghij01234567895:nodes26:"
        + NODE_C
        + b"5:token8:aoeusnthe1:t2:aa1:y1:re",
        Response(b"aa", A, nodes=(NODE,), token=b"aoeusnth"),
    ),
    (
        b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe",
        AnnouncePeer(b"aa", A, M, 6881, b"aoeusnth", implied_port=True),
    ),
]


@pytest.mark.parametrize(("raw", "msg"), BEP5, ids=[type(m).__name__ for _, m in BEP5])
def test_bep5_examples_byte_for_byte(raw: bytes, msg: Message) -> None:
    assert decode(raw) == msg
    assert encode(msg) == raw


def test_nodes6_is_bep32s_38_byte_entry() -> None:
    node = NodeInfo(M, ("2001:db8::1", 6881))
    raw = encode(Response(b"t", A, nodes6=(node,)))
    entry = M + bytes.fromhex("20010db8000000000000000000000001") + b"\x1a\xe1"
    assert raw == b"d1:rd2:id20:" + A + b"6:nodes638:" + entry + b"e1:t1:t1:y1:re"
    assert decode(raw) == Response(b"t", A, nodes6=(node,))


def test_ipv6_values_and_announce_without_implied_port() -> None:
    msg = Response(b"t", A, values=(("::1", 80), ("10.0.0.1", 1)), token=b"")
    assert decode(encode(msg)) == msg
    ann = AnnouncePeer(b"t", A, M, 51413, b"tok")
    assert b"implied_port" not in encode(ann)
    assert decode(encode(ann)) == ann


def test_implied_port_without_a_port_key_is_accepted() -> None:
    raw = bencode.encode({b"a": {b"id": A, b"implied_port": 1, b"info_hash": M, b"token": b"x"},
                          b"q": b"announce_peer", b"t": b"t", b"y": b"q"})  # fmt: skip
    assert decode(raw) == AnnouncePeer(b"t", A, M, 0, b"x", True)


def q(method: bytes, args: dict[bytes, bencode.Encodable], tid: bytes = b"aa") -> bytes:
    return bencode.encode({b"a": args, b"q": method, b"t": tid, b"y": b"q"})


def r(body: dict[bytes, bencode.Encodable], tid: bytes = b"aa") -> bytes:
    return bencode.encode({b"r": body, b"t": tid, b"y": b"r"})


HOSTILE = {
    "empty": (b"", "empty input"),
    "not-bencode": (b"GET / HTTP/1.1\r\n", "unexpected byte"),
    "truncated": (BEP5[0][0][:-1], "unexpected end of input"),
    "unsorted-keys": (b"d1:t2:aa1:ad2:id20:abcdefghij0123456789e1:q4:ping1:y1:qe", "unsorted"),
    "list": (b"l1:t2:aae", "not a dictionary"),
    "deep": (b"d1:a" + b"l" * 10 + b"e" * 10 + b"e", "nesting deeper than 4"),
    "oversized": (b"d1:t2:aa1:y1:q1:x9000:" + b"x" * 9000 + b"e", "over the 8192-byte limit"),
    "no-tid": (b"d1:y1:qe", "transaction id"),
    "empty-tid": (b"d1:t0:1:y1:qe", "transaction id"),
    "long-tid": (b"d1:t17:" + b"x" * 17 + b"1:y1:qe", "transaction id"),
    "int-tid": (b"d1:ti1e1:y1:qe", "transaction id"),
    "bad-y": (b"d1:t2:aa1:y1:xe", "'y' is not"),
    "no-a": (b"d1:q4:ping1:t2:aa1:y1:qe", "'a' is not a dictionary"),
    "short-id": (q(b"ping", {b"id": b"short"}), "'id' is not a 20-byte string"),
    "no-target": (q(b"find_node", {b"id": A}), "'target' is not a 20-byte string"),
    "bad-info-hash": (q(b"get_peers", {b"id": A, b"info_hash": 5}), "'info_hash'"),
    "unknown-method": (q(b"vote", {b"id": A}), "unknown method 'vote'"),
    "port-string": (
        q(b"announce_peer", {b"id": A, b"info_hash": M, b"port": b"1", b"token": b"x"}),
        "'port'",
    ),
    "port-huge": (
        q(b"announce_peer", {b"id": A, b"info_hash": M, b"port": 70000, b"token": b"x"}),
        "'port'",
    ),
    "no-token": (q(b"announce_peer", {b"id": A, b"info_hash": M, b"port": 1}), "'token'"),
    "implied-2": (
        q(
            b"announce_peer",
            {b"id": A, b"implied_port": 2, b"info_hash": M, b"port": 1, b"token": b"x"},
        ),
        "'implied_port'",
    ),
    "r-not-dict": (b"d1:ri1e1:t2:aa1:y1:re", "'r' is not a dictionary"),
    "nodes-25": (r({b"id": A, b"nodes": b"x" * 25}), "'nodes' is 25 bytes, not a multiple of 26"),
    "nodes6-26": (
        r({b"id": A, b"nodes6": b"x" * 26}),
        "'nodes6' is 26 bytes, not a multiple of 38",
    ),
    "nodes-int": (r({b"id": A, b"nodes": 1}), "'nodes' is not a string"),
    "values-string": (r({b"id": A, b"values": b"abcdef"}), "'values' is not a list"),
    "value-7": (r({b"id": A, b"values": [b"abcdefg"]}), "compact peer"),
    "token-int": (r({b"id": A, b"token": 5}), "'token'"),
    "e-string": (b"d1:e3:bad1:t2:aa1:y1:ee", "'e' is not a list"),
    "e-three": (b"d1:eli201e1:x1:ye1:t2:aa1:y1:ee", "'e' is not a list"),
    "e-code": (b"d1:eli-1e1:xe1:t2:aa1:y1:ee", "error code -1"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_datagrams_raise_krpc_error_only(name: str) -> None:
    raw, words = HOSTILE[name]
    with pytest.raises(KrpcError) as err:
        decode(raw)
    assert words in err.value.reason, err.value.reason
    assert str(err.value).isprintable()


def test_a_malformed_query_keeps_its_tid_and_code_for_the_error_reply() -> None:
    with pytest.raises(KrpcError) as err:
        decode(q(b"vote", {b"id": A}, tid=b"zz"))
    assert (err.value.tid, err.value.code, err.value.is_query) == (b"zz", 204, True)
    with pytest.raises(KrpcError) as err:
        decode(q(b"ping", {b"id": b"x"}, tid=b"zz"))
    assert (err.value.tid, err.value.code, err.value.is_query) == (b"zz", 203, True)


def test_ten_thousand_nodes_are_refused_and_the_caps_truncate() -> None:
    """K4: 10,000 nodes (260 KB) are over the datagram cap; within it, 32 nodes and 200
    values are taken and the rest of the string is never parsed."""
    entries = b"".join(
        i.to_bytes(20, "big") + bytes([10, 0, i >> 8 & 255, i & 255]) + b"\x1a\xe1"
        for i in range(10_000)
    )
    with pytest.raises(KrpcError, match="over the 8192-byte limit"):
        decode(r({b"id": A, b"nodes": entries}))
    msg = decode(r({b"id": A, b"nodes": entries[: 300 * 26]}))
    assert isinstance(msg, Response) and len(msg.nodes) == MAX_NODES
    values = [bytes([10, 0, i >> 8, i & 255, 0, 1]) for i in range(1000)]
    msg = decode(r({b"id": A, b"values": values}))
    assert isinstance(msg, Response) and len(msg.values) == MAX_VALUES


def test_port_zero_nodes_and_peers_are_left_out() -> None:
    """K5 (codec part): a contact with port 0 cannot be reached."""
    zero = M + bytes([10, 0, 0, 9, 0, 0])
    msg = decode(
        r({b"id": A, b"nodes": zero + NODE_C, b"values": [bytes(6), b"\x0a\x00\x00\x01\x00\x05"]})
    )
    assert msg == Response(b"aa", A, nodes=(NODE,), values=(("10.0.0.1", 5),))


ids = st.binary(min_size=20, max_size=20)
tids = st.binary(min_size=1, max_size=16)
ports = st.integers(1, 65535)
ip4 = st.ip_addresses(v=4).map(str)
ip6 = st.ip_addresses(v=6).map(str)
nodes4 = st.lists(st.builds(NodeInfo, ids, st.tuples(ip4, ports)), max_size=MAX_NODES).map(tuple)
nodes6 = st.lists(st.builds(NodeInfo, ids, st.tuples(ip6, ports)), max_size=MAX_NODES).map(tuple)
peers = st.lists(st.tuples(ip4 | ip6, ports), max_size=50).map(tuple)
messages = st.one_of(
    st.builds(Ping, tids, ids, st.booleans()),
    st.builds(FindNode, tids, ids, ids, st.booleans()),
    st.builds(GetPeers, tids, ids, ids, st.booleans()),
    st.builds(
        AnnouncePeer,
        tids,
        ids,
        ids,
        st.integers(0, 65535),
        st.binary(min_size=1, max_size=64),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(Response, tids, ids, nodes4, nodes6, peers, st.none() | st.binary(max_size=64)),
    st.builds(Error, tids, st.sampled_from([201, 202, 203, 204]), st.binary(max_size=100)),
)


@given(messages)
def test_every_message_round_trips(msg: Message) -> None:
    raw = encode(msg)
    assert len(raw) <= MAX_DATAGRAM
    assert decode(raw) == msg
    assert encode(decode(raw)) == raw


@given(st.binary(max_size=300))
def test_random_bytes_give_a_message_or_krpc_error(data: bytes) -> None:
    try:
        msg = decode(data)
    except KrpcError as err:
        assert err.reason
    else:
        assert krpc.decode(encode(msg)) == msg


@given(messages, st.integers(0, 400), st.binary(min_size=1, max_size=3))
def test_mutated_messages_give_a_message_or_krpc_error(msg: Message, at: int, junk: bytes) -> None:
    raw = encode(msg)
    at %= len(raw)
    for data in (raw[:at], raw[:at] + junk + raw[at + 1 :]):
        try:
            decode(data)
        except KrpcError:
            pass


def test_fuzz_target_takes_its_seeds_truncations_and_bit_flips() -> None:
    """fuzz/fuzz_dht.py's entry point, without atheris (fuzz/run.py does not list it yet)."""
    from fuzz import fuzz_dht

    seeds = fuzz_dht.seeds()
    rng = random.Random(1)
    for seed in seeds:
        fuzz_dht.TestOneInput(seed)
        for cut in range(0, len(seed), max(1, len(seed) // 40)):
            fuzz_dht.TestOneInput(seed[:cut])
        for _ in range(30):
            flipped = bytearray(seed)
            i = rng.randrange(1, len(seed)) if len(seed) > 1 else 0
            flipped[i] ^= 1 << rng.randrange(8)
            fuzz_dht.TestOneInput(bytes(flipped))
    # the node mode's seed really drives the lookup: the reply's peer is found
    node, _ = fuzz_dht.fresh_node()
    (script,) = [s for s in seeds if s[0] == 1 and len(s) > 400]
    for datagram in fuzz_dht.datagrams(script[1:])[:1]:
        assert len(node.datagram_received(datagram, fuzz_dht.ASKED, 1.0)) == 3  # alpha more
    assert PeersFound(fuzz_dht.IH, (("10.0.2.1", 80),)) in node.take_events()


def test_fuzz_target_lets_no_foreign_exception_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule is not vacuous: a decoder that raised anything else would fail the target."""
    from fuzz import fuzz_dht

    def broken(data: bytes) -> Message:
        raise IndexError("not ours")

    seed = fuzz_dht.seeds()[0]
    fuzz_dht.TestOneInput(seed)
    monkeypatch.setattr(krpc, "decode", broken)
    with pytest.raises(IndexError):
        fuzz_dht.TestOneInput(seed)


def test_bep43_read_only_flag_round_trips_and_odd_values_are_ignored() -> None:
    ping = Ping(b"aa", A, read_only=True)
    raw = encode(ping)
    assert raw == b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping2:roi1e1:t2:aa1:y1:qe"
    assert decode(raw) == ping
    odd = raw.replace(b"2:roi1e", b"2:ro3:yes")
    assert decode(odd) == Ping(b"aa", A)
