"""mptorrent.proto.tracker: the sans-IO announce/scrape codecs (BEP 3, 7, 23, 48)."""

from __future__ import annotations

import ipaddress
import struct
import time
from collections.abc import Callable

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mptorrent.errors import TrackerError
from mptorrent.messages import PeerAddr
from mptorrent.proto import bencode
from mptorrent.proto import tracker as tr
from mptorrent.proto.tracker import (
    DEFAULT_INTERVAL,
    MAX_INTERVAL,
    PEER_ID_PREFIX,
    AnnounceRequest,
    AnnounceResponse,
    ScrapeResult,
    announce_url,
    make_peer_id,
    one_line,
    parse_announce,
    parse_scrape,
    raise_for_failure,
    scrape_request_url,
    scrape_url,
)

# The info-hash from BEP 3's own example URL.
INFO_HASH = bytes.fromhex("123456789abcdef123456789abcdef123456789a")
INFO_HASH_Q = "%124Vx%9A%BC%DE%F1%23Eg%89%AB%CD%EF%124Vx%9A"
# Reserved, unreserved and non-ASCII bytes in one peer id.
PEER_ID = b"-MP0100-\x00 ~.-_+/%&=\xff"
PEER_ID_Q = "-MP0100-%00%20~.-_%2B%2F%25%26%3D%FF"


def req(**kw: object) -> AnnounceRequest:
    args: dict[object, object] = dict(
        info_hash=INFO_HASH, peer_id=PEER_ID, port=6881, uploaded=1, downloaded=2, left=3
    )
    args.update(kw)
    return AnnounceRequest(**args)  # type: ignore[arg-type]


def compact4(*peers: tuple[str, int]) -> bytes:
    return b"".join(bytes(int(x) for x in ip.split(".")) + struct.pack("!H", p) for ip, p in peers)


def reply(**fields: object) -> bytes:
    out: dict[bytes, object] = {b"interval": 1800}
    for k, v in fields.items():
        out[k.replace("_", " ").encode()] = v
    return bencode.encode(out)


# -- peer ids and requests ----------------------------------------------------


def test_peer_id_is_azureus_style_and_random() -> None:
    a, b = make_peer_id(), make_peer_id()
    assert len(a) == len(b) == 20
    assert a.startswith(b"-MP0100-") and PEER_ID_PREFIX == b"-MP0100-"
    assert a != b


@pytest.mark.parametrize(
    "bad",
    [
        {"info_hash": b"x" * 19},
        {"peer_id": b"x" * 21},
        {"port": 65536},
        {"port": -1},
        {"left": -1},
        {"event": "paused"},
        {"key": 1 << 32},
    ],
)
def test_request_rejects_local_misuse(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        req(**bad)


# -- announce URLs ------------------------------------------------------------


def test_announce_url_byte_for_byte() -> None:
    url = announce_url("http://tracker.example:6969/announce", req(event="started", key=0xBEEF))
    assert url == (
        "http://tracker.example:6969/announce"
        f"?info_hash={INFO_HASH_Q}&peer_id={PEER_ID_Q}"
        "&port=6881&uploaded=1&downloaded=2&left=3&compact=1&numwant=50"
        "&event=started&key=0000BEEF"
    )


def test_announce_url_optional_fields() -> None:
    url = announce_url("http://t/announce", req(compact=False, numwant=0, tracker_id=b"id 1\x01"))
    assert url.endswith("&compact=0&numwant=0&trackerid=id%201%01")
    assert "event=" not in url and "key=" not in url


@pytest.mark.parametrize(
    ("base", "prefix"),
    [
        ("http://t/announce?passkey=abc", "http://t/announce?passkey=abc&info_hash="),
        ("http://t/announce?", "http://t/announce?info_hash="),
        ("http://t/announce?a=1&", "http://t/announce?a=1&info_hash="),
        ("http://t/announce#frag", "http://t/announce?info_hash="),
        ("https://[::1]:443/a/announce.php", "https://[::1]:443/a/announce.php?info_hash="),
    ],
)
def test_announce_url_keeps_the_base_query(base: str, prefix: str) -> None:
    url = announce_url(base, req())
    assert url.startswith(prefix)
    assert url.count("?") == 1


# BEP 48's own table, plus the cases a naive string replace gets wrong.
@pytest.mark.parametrize(
    ("announce", "scrape"),
    [
        ("http://example.com/announce", "http://example.com/scrape"),
        ("http://example.com/x/announce", "http://example.com/x/scrape"),
        ("http://example.com/announce.php", "http://example.com/scrape.php"),
        ("http://example.com/a", None),
        ("http://example.com/announce?x2%0644", "http://example.com/scrape?x2%0644"),
        ("http://example.com/announce?x=2/4", "http://example.com/scrape?x=2/4"),
        ("http://example.com/x%064announce", None),
        ("http://example.com/announce/x", None),
        ("http://announce.example.com/", None),
        ("http://announce", None),
        ("https://t:8443/pk/announce#f", "https://t:8443/pk/scrape"),
        ("udp://t:6969/announce", None),
        ("not a url", None),
    ],
)
def test_scrape_url_follows_bep48(announce: str, scrape: str | None) -> None:
    assert scrape_url(announce) == scrape


def test_scrape_request_url() -> None:
    url = scrape_request_url("http://t/announce?pk=1", [INFO_HASH, b"\x00" * 20])
    assert url == f"http://t/scrape?pk=1&info_hash={INFO_HASH_Q}&info_hash=" + "%00" * 20
    assert scrape_request_url("http://t/a", [INFO_HASH]) is None


# -- announce replies ---------------------------------------------------------


def test_compact_peers() -> None:
    peers = compact4(("10.0.0.1", 6881), ("127.0.0.12", 51413))
    resp = parse_announce(reply(peers=peers, complete=3, incomplete=4))
    assert resp == AnnounceResponse(
        interval=1800,
        min_interval=None,
        peers=(PeerAddr("10.0.0.1", 6881), PeerAddr("127.0.0.12", 51413)),
        complete=3,
        incomplete=4,
        warning=None,
        tracker_id=None,
    )


def test_compact_peers_drop_port_zero_bad_ips_duplicates_and_truncated_tail() -> None:
    peers = compact4(
        ("10.0.0.1", 0),  # port 0: nobody listens there
        ("0.0.0.0", 6881),
        ("224.0.0.1", 6881),  # multicast
        ("255.255.255.255", 6881),
        ("10.0.0.2", 6882),
        ("10.0.0.2", 6882),
    )
    resp = parse_announce(reply(peers=peers + b"\x0a\x00\x00"))
    assert resp.peers == (PeerAddr("10.0.0.2", 6882),)


def test_dictionary_peers() -> None:
    peers = [
        {b"ip": b"10.0.0.1", b"peer id": b"x" * 20, b"port": 6881},
        {b"ip": b"2001:db8::1", b"port": 6882},
        {b"ip": b"[2001:db8::2]", b"port": 6883},
        {b"ip": b"::ffff:10.0.0.3", b"port": 6884},
        {b"ip": b"tracker.example.com", b"port": 6881},  # DNS names are not followed
        {b"ip": b"10.0.0.4", b"port": 0},
        {b"ip": b"10.0.0.5", b"port": 70000},
        {b"ip": b"10.0.0.6"},
        {b"ip": 5, b"port": 1},
        {b"ip": b"\xff\xfe", b"port": 1},
        {b"ip": b"fe80::1%eth0", b"port": 1},
        b"not a dict",
    ]
    resp = parse_announce(reply(peers=peers))
    assert resp.peers == (
        PeerAddr("10.0.0.1", 6881),
        PeerAddr("2001:db8::1", 6882),
        PeerAddr("2001:db8::2", 6883),
        PeerAddr("10.0.0.3", 6884),
    )


def test_peers6() -> None:
    v6 = (
        bytes.fromhex("20010db8000000000000000000000001") + struct.pack("!H", 6881)
        + bytes(16) + struct.pack("!H", 1)  # unspecified
        + bytes.fromhex("00000000000000000000000000000001") + struct.pack("!H", 0)
        + b"\x20\x01"  # truncated
    )  # fmt: skip
    resp = parse_announce(reply(peers=compact4(("10.0.0.1", 1)), peers6=v6))
    assert resp.peers == (PeerAddr("10.0.0.1", 1), PeerAddr("2001:db8::1", 6881))
    assert str(resp.peers[1]) == "[2001:db8::1]:6881"


def test_peers6_alone_is_a_valid_reply() -> None:
    v6 = bytes(15) + b"\x01" + struct.pack("!H", 7)
    assert parse_announce(reply(peers6=v6)).peers == (PeerAddr("::1", 7),)


def test_peer_count_is_capped() -> None:
    peers = b"".join(struct.pack("!IH", 0x0A000000 + i, 6881) for i in range(1, 5001))
    assert len(parse_announce(reply(peers=peers)).peers) == 2000
    assert len(parse_announce(reply(peers=peers), max_peers=3).peers) == 3
    assert parse_announce(reply(peers=peers), max_peers=0).peers == ()


def test_a_flood_of_one_repeated_peer_is_cheap() -> None:
    peers = compact4(("10.0.0.1", 6881)) * (bencode.MAX_TRACKER_REPLY_SIZE // 6 - 10)
    start = time.perf_counter()
    assert parse_announce(reply(peers=peers)).peers == (PeerAddr("10.0.0.1", 6881),)
    assert time.perf_counter() - start < 2


def test_optional_fields() -> None:
    resp = parse_announce(
        reply(
            peers=b"",
            min_interval=900,
            warning_message=b"slow down\r\nnow",
            tracker_id=b"\x00tid",
            complete=-1,  # nonsense counts are dropped, not trusted
            incomplete=b"7",
        )
    )
    assert resp.min_interval == 900
    assert resp.warning == "slow down\\r\\nnow"
    assert resp.tracker_id == b"\x00tid"
    assert resp.complete is None and resp.incomplete is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, DEFAULT_INTERVAL), (b"60", DEFAULT_INTERVAL), (-5, 0), (10**30, MAX_INTERVAL)],
)
def test_interval_is_bounded(value: object, expected: int) -> None:
    fields: dict[bytes, object] = {b"peers": b""}
    if value is not None:
        fields[b"interval"] = value
    assert parse_announce(bencode.encode(fields)).interval == expected


def test_failure_reason_is_one_safe_line() -> None:
    body = bencode.encode({b"failure reason": b"not authorized\n\x1b[31mreally\xe2\x80\xae"})
    with pytest.raises(TrackerError) as info:
        parse_announce(body)
    msg = str(info.value)
    assert msg == "tracker failure: not authorized\\n\\x1b[31mreally\\u202e"
    assert msg.isprintable()


def test_failure_reason_wins_over_peers() -> None:
    body = bencode.encode({b"failure reason": b"banned", b"peers": compact4(("10.0.0.1", 1))})
    with pytest.raises(TrackerError, match="banned"):
        parse_announce(body)


def test_long_failure_reason_is_cut() -> None:
    with pytest.raises(TrackerError) as info:
        parse_announce(bencode.encode({b"failure reason": b"x" * 10_000}))
    assert len(str(info.value)) < 400


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>502 Bad Gateway</html>",
        b"i42e",
        b"l5:peerse",
        b"de",  # a dictionary without any peer list
        b"d8:intervali1800ee",
        b"d5:peersi3ee",
        b"d8:intervali01e5:peers0:e",  # non-canonical
        b"d5:peers0:8:intervali1ee",  # unsorted keys
        b"d5:peers6:abc",  # truncated
        b"d14:failure reasoni1ee",
    ],
)
def test_garbage_is_a_tracker_error(body: bytes) -> None:
    with pytest.raises(TrackerError, match=r"^(bad tracker reply|tracker failure)"):
        parse_announce(body)


def test_oversized_reply_is_refused() -> None:
    body = reply(peers=b"x" * bencode.MAX_TRACKER_REPLY_SIZE)
    with pytest.raises(TrackerError, match=r"bad tracker reply.*limit"):
        parse_announce(body)


def test_raise_for_failure() -> None:
    raise_for_failure(b"<html>not bencode</html>")
    raise_for_failure(reply(peers=b""))
    with pytest.raises(TrackerError, match="tracker failure: go away"):
        raise_for_failure(bencode.encode({b"failure reason": b"go away"}))


def test_one_line() -> None:
    assert one_line("plain text") == "plain text"
    assert one_line(b"a\tb\x00\xff") == "a\\tb\\x00\ufffd"
    assert one_line("x" * 20, limit=5) == "xxxxx..."


# -- scrape replies -----------------------------------------------------------


def test_parse_scrape() -> None:
    other = b"\x01" * 20
    body = bencode.encode(
        {
            b"files": {
                INFO_HASH: {b"complete": 5, b"downloaded": 50, b"incomplete": 10},
                other: {b"complete": 1, b"downloaded": 1, b"incomplete": 1},
            }
        }
    )
    assert parse_scrape(body, INFO_HASH) == ScrapeResult(5, 10, 50)


def test_scrape_of_an_empty_swarm_is_zeros() -> None:
    # opentracker leaves torrents without peers out of the files dictionary
    assert parse_scrape(b"d5:filesdee", INFO_HASH) == ScrapeResult(0, 0, 0)


def test_scrape_with_odd_counts() -> None:
    body = bencode.encode({b"files": {INFO_HASH: {b"complete": -3, b"incomplete": b"x"}}})
    assert parse_scrape(body, INFO_HASH) == ScrapeResult(0, 0, 0)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"d14:failure reason7:privatee", "tracker failure: private"),
        (b"de", "no files"),
        (b"d5:filesi1ee", "no files"),
        (b"d5:filesd20:" + INFO_HASH + b"i1eee", "not a dictionary"),
        (b"junk", "bad tracker reply"),
    ],
)
def test_bad_scrape_replies(body: bytes, match: str) -> None:
    with pytest.raises(TrackerError, match=match):
        parse_scrape(body, INFO_HASH)


# -- fuzz: a response or TrackerError, never anything else -------------------


@given(st.binary(max_size=512))
def test_random_bytes_give_a_response_or_tracker_error(body: bytes) -> None:
    try:
        resp = parse_announce(body)
    except TrackerError:
        return
    assert isinstance(resp, AnnounceResponse)


_keys = st.sampled_from(
    [b"interval", b"min interval", b"peers", b"peers6", b"complete", b"incomplete",
     b"warning message", b"tracker id", b"failure reason", b"files", b"ip", b"port",
     b"downloaded", INFO_HASH]
)  # fmt: skip
_leaves = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.binary(max_size=40)
    | st.sampled_from([b"127.0.0.1", b"::1", b"\x7f\x00\x00\x01\x1a\xe1" * 2, b"x" * 18])
)
_bvalues = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=8,
)


@given(st.dictionaries(_keys, _bvalues, max_size=6))
def test_random_replies_give_a_response_or_tracker_error(fields: dict[bytes, object]) -> None:
    body = bencode.encode(fields)
    try:
        resp = parse_announce(body, max_peers=10)
    except TrackerError:
        pass
    else:
        assert 0 <= resp.interval <= MAX_INTERVAL
        assert len(resp.peers) <= 10
        assert all(0 < p.port < 65536 for p in resp.peers)
        assert resp.warning is None or resp.warning.isprintable()
    try:
        counts = parse_scrape(body, INFO_HASH)
    except TrackerError:
        pass
    else:
        assert min(counts.complete, counts.incomplete, counts.downloaded) >= 0


# -- UDP packets (BEP 15) -----------------------------------------------------

TID = 0x01020304
CID = 0x1122334455667788


def udp_req(**kw: object) -> AnnounceRequest:
    return req(peer_id=b"-MP0100-abcdefghijkl", **kw)


def test_udp_connect_request_byte_for_byte() -> None:
    assert tr.udp_connect_request(TID) == bytes.fromhex(
        "0000041727101980" "00000000" "01020304"
    )  # fmt: skip


def test_udp_announce_request_byte_for_byte() -> None:
    packet = tr.udp_announce_request(
        CID, TID, udp_req(event="started", key=0xCAFEBABE, numwant=7, port=6881)
    )
    assert packet == (
        bytes.fromhex("1122334455667788" "00000001" "01020304")
        + INFO_HASH + b"-MP0100-abcdefghijkl"
        + struct.pack("!qqq", 2, 3, 1)  # downloaded, left, uploaded: BEP 15's order
        + struct.pack("!IIIiH", 2, 0, 0xCAFEBABE, 7, 6881)
    )  # fmt: skip
    assert len(packet) == tr.UDP_ANNOUNCE_SIZE


@pytest.mark.parametrize(
    ("event", "code"), [(None, 0), ("completed", 1), ("started", 2), ("stopped", 3)]
)
def test_udp_event_codes(event: str | None, code: int) -> None:
    packet = tr.udp_announce_request(CID, TID, udp_req(event=event))
    assert struct.unpack_from("!I", packet, 80)[0] == code


def test_udp_announce_carries_the_url_in_bep41_options() -> None:
    path = b"/announce?passkey=" + b"k" * 300
    packet = tr.udp_announce_request(CID, TID, udp_req(), url_data=path)
    options = packet[tr.UDP_ANNOUNCE_SIZE :]
    assert options[:2] == bytes((2, 255)) and options[2:257] == path[:255]
    assert options[257:259] == bytes((2, len(path) - 255))
    parsed = tr.parse_udp_request(packet)
    assert isinstance(parsed, tr.UDPAnnouncePacket)
    assert parsed.url_data == path
    # NOP and end-of-options, as BEP 41 defines them
    parsed = tr.parse_udp_request(packet[:98] + b"\x01\x02\x03/ab\x00\x02\x02zz")
    assert isinstance(parsed, tr.UDPAnnouncePacket) and parsed.url_data == b"/ab"


def test_udp_scrape_request() -> None:
    assert tr.udp_scrape_request(CID, TID, [INFO_HASH]) == (
        bytes.fromhex("1122334455667788" "00000002" "01020304") + INFO_HASH
    )  # fmt: skip
    with pytest.raises(ValueError):
        tr.udp_scrape_request(CID, TID, [])
    with pytest.raises(ValueError):
        tr.udp_scrape_request(CID, TID, [INFO_HASH] * 75)
    with pytest.raises(ValueError):
        tr.udp_connect_request(1 << 32)


def test_parse_udp_connect() -> None:
    assert tr.parse_udp_connect(tr.udp_connect_reply(TID, CID), TID) == CID


def test_parse_udp_announce_ipv4_and_ipv6() -> None:
    v4 = compact4(("10.0.0.1", 6881), ("10.0.0.2", 0), ("10.0.0.3", 7))
    reply4 = tr.udp_announce_reply(TID, interval=1800, leechers=4, seeders=5, peers=v4 + b"\x0a")
    resp = tr.parse_udp_announce(reply4, TID)
    assert resp == AnnounceResponse(
        interval=1800,
        min_interval=None,
        peers=(PeerAddr("10.0.0.1", 6881), PeerAddr("10.0.0.3", 7)),
        complete=5,
        incomplete=4,
        warning=None,
        tracker_id=None,
    )
    v6 = tr.compact_peers([PeerAddr("2001:db8::1", 6881), PeerAddr("10.0.0.1", 1)], ipv6=True)
    assert len(v6) == 18
    resp = tr.parse_udp_announce(
        tr.udp_announce_reply(TID, interval=10**9, leechers=0, seeders=0, peers=v6), TID, ipv6=True
    )
    assert resp.peers == (PeerAddr("2001:db8::1", 6881),)
    assert resp.interval == MAX_INTERVAL


def test_parse_udp_scrape() -> None:
    results = [ScrapeResult(1, 2, 3), ScrapeResult(4, 5, 6)]
    assert tr.parse_udp_scrape(tr.udp_scrape_reply(TID, results), TID, 2) == tuple(results)


def test_udp_error_packet_is_a_one_line_tracker_error() -> None:
    packet = tr.udp_error_reply(TID, b"torrent not registered\n\x1b[2J\x00")
    for parse in (
        lambda: tr.parse_udp_connect(packet, TID),
        lambda: tr.parse_udp_announce(packet, TID),
        lambda: tr.parse_udp_scrape(packet, TID, 1),
    ):
        with pytest.raises(TrackerError) as info:
            parse()
        assert not isinstance(info.value, tr.UDPIgnored)
        assert str(info.value) == "tracker failure: torrent not registered\\n\\x1b[2J"
    with pytest.raises(TrackerError, match=r"^tracker failure \(an error packet without"):
        tr.parse_udp_connect(tr.udp_error_reply(TID, b""), TID)


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x00\x00\x00\x00\x01\x02\x03",  # too short to hold a transaction id
        tr.udp_connect_reply(TID + 1, CID),
        tr.udp_error_reply(TID ^ 0xFF, "not for you"),
    ],
)
def test_stray_udp_packets_are_ignored(packet: bytes) -> None:
    with pytest.raises(tr.UDPIgnored):
        tr.parse_udp_connect(packet, TID)


@pytest.mark.parametrize(
    ("packet", "match"),
    [
        (tr.udp_scrape_reply(TID, []), "scrape reply to a connect request"),
        (struct.pack("!II", 9, TID), "action 9 reply to a connect request"),
        (tr.udp_connect_reply(TID, CID)[:15], "connect reply of 15 bytes, under 16"),
    ],
)
def test_bad_replies_to_our_transaction_fail_at_once(packet: bytes, match: str) -> None:
    # Our random transaction id proves the tracker sent it: waiting will not help.
    with pytest.raises(TrackerError, match=match) as info:
        tr.parse_udp_connect(packet, TID)
    assert not isinstance(info.value, tr.UDPIgnored)


def test_short_udp_announce_and_scrape_replies() -> None:
    with pytest.raises(TrackerError, match="announce reply of 19 bytes"):
        short = tr.udp_announce_reply(TID, interval=1, leechers=0, seeders=0)[:19]
        tr.parse_udp_announce(short, TID)
    with pytest.raises(TrackerError, match="scrape reply of 20 bytes, under 32"):
        tr.parse_udp_scrape(tr.udp_scrape_reply(TID, [ScrapeResult(1, 1, 1)]), TID, 2)
    # opentracker's reply for a torrent off its whitelist: a bare header
    with pytest.raises(TrackerError, match="empty announce reply"):
        tr.parse_udp_announce(struct.pack("!II", 1, TID), TID)


@pytest.mark.parametrize(
    ("packet", "match"),
    [
        (b"short", "5 bytes"),
        (struct.pack("!QII", 5, 0, 1), "protocol id"),
        (struct.pack("!QII", CID, 7, 1), "action 7"),
        (struct.pack("!QII", CID, 2, 1) + b"x" * 19, "scrape info-hashes"),
        (struct.pack("!QII", CID, 1, 1) + b"x" * 80, "96-byte announce"),
        (tr.udp_announce_request(CID, 1, udp_req())[:80] + struct.pack("!I", 4) + bytes(14),
         "event 4"),
    ],
)  # fmt: skip
def test_parse_udp_request_refuses(packet: bytes, match: str) -> None:
    with pytest.raises(TrackerError, match=match):
        tr.parse_udp_request(packet)


# -- the UDP exchange state machine (clock as input) --------------------------


class Tids:
    """Predictable transaction ids: 1, 2, 3, ..."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        self.n += 1
        return self.n


def exchange(**kw: object) -> tr.UDPAnnounce:
    args: dict[str, object] = {"retry": tr.UDPRetry(2, 2), "new_tid": Tids()}
    args.update(kw)
    return tr.UDPAnnounce(udp_req(), **args)  # type: ignore[arg-type]


def answer(packet: bytes, peers: bytes = b"") -> bytes:
    """What an honest tracker sends back."""
    got = tr.parse_udp_request(packet)
    if isinstance(got, tr.UDPConnectPacket):
        return tr.udp_connect_reply(got.tid, CID)
    assert isinstance(got, tr.UDPAnnouncePacket) and got.connection_id == CID
    return tr.udp_announce_reply(got.tid, interval=900, leechers=1, seeders=2, peers=peers)


def test_exchange_connects_then_announces() -> None:
    ex = exchange()
    first = ex.start(100.0)
    assert isinstance(tr.parse_udp_request(first), tr.UDPConnectPacket)
    assert ex.deadline == 102.0
    second = ex.receive(answer(first), 100.5)
    assert second is not None
    got = tr.parse_udp_request(second)
    assert isinstance(got, tr.UDPAnnouncePacket)
    assert (got.connection_id, got.tid, got.request) == (CID, 2, udp_req(numwant=50, key=0))
    assert ex.receive(answer(second, compact4(("10.0.0.9", 9))), 100.6) is None
    assert ex.done and ex.result is not None
    assert ex.result.peers == (PeerAddr("10.0.0.9", 9),)
    assert ex.connection == (CID, 100.5)


def test_retransmit_schedule_and_give_up() -> None:
    ex = exchange(retry=tr.UDPRetry(2, 2))
    packet = ex.start(0.0)
    assert ex.deadline == 2.0
    assert ex.timeout(2.0) == packet  # same packet, same transaction id
    assert ex.deadline == 6.0
    with pytest.raises(TrackerError, match=r"^no reply to 2 connect requests in 6 s$"):
        ex.timeout(6.0)
    assert ex.done


def test_bep15_default_schedule() -> None:
    retry = tr.UDPRetry()
    assert [retry.wait(n) for n in range(retry.tries)] == [15 * 2**n for n in range(9)]
    assert tr.UDPRetry(2, 2).total == 6.0  # what a command-line fetch uses
    with pytest.raises(ValueError):
        tr.UDPRetry(0, 1)
    with pytest.raises(ValueError):
        tr.UDPRetry(1, 0)


def test_stray_packets_are_counted_and_the_wait_goes_on() -> None:
    ex = exchange()
    packet = ex.start(0.0)
    assert ex.receive(tr.udp_connect_reply(999, 5), 0.1) is None
    assert ex.receive(b"\x00", 0.2) is None
    assert not ex.done and ex.ignored == 2
    assert ex.receive(answer(packet), 0.3) is not None
    ex.timeout(2.3)
    with pytest.raises(TrackerError, match=r"ignored 2 bad packets \(last: a 1-byte packet\)"):
        ex.timeout(6.3)


def test_error_reply_ends_the_exchange() -> None:
    ex = exchange()
    packet = ex.start(0.0)
    got = tr.parse_udp_request(packet)
    assert isinstance(got, tr.UDPConnectPacket)
    with pytest.raises(TrackerError, match="tracker failure: go away"):
        ex.receive(tr.udp_error_reply(got.tid, "go away"), 0.1)
    assert ex.done
    assert ex.receive(answer(packet), 0.2) is None  # late replies change nothing


def test_fresh_cached_connection_skips_connect() -> None:
    ex = exchange(connection=(CID, 100.0))
    got = tr.parse_udp_request(ex.start(159.9))
    assert isinstance(got, tr.UDPAnnouncePacket) and got.connection_id == CID
    stale = exchange(connection=(CID, 100.0))
    assert isinstance(tr.parse_udp_request(stale.start(160.0)), tr.UDPConnectPacket)
    assert stale.connection is None


def test_silently_dropped_cached_connection_reconnects() -> None:
    # opentracker drops a packet with a connection id it does not accept
    ex = exchange(connection=(CID + 1, 0.0), retry=tr.UDPRetry(1, 4))
    ex.start(10.0)
    retry = ex.timeout(11.0)
    assert isinstance(tr.parse_udp_request(retry), tr.UDPConnectPacket)
    ask = ex.receive(answer(retry), 11.1)
    assert ask is not None
    got = tr.parse_udp_request(ask)
    assert isinstance(got, tr.UDPAnnouncePacket) and got.connection_id == CID
    assert ex.deadline == pytest.approx(11.1 + 2)  # the count went on: second wait, not first
    ex.receive(answer(ask), 11.2)
    assert ex.done and ex.connection == (CID, 11.1)


def test_error_on_cached_connection_reconnects_once() -> None:
    ex = exchange(connection=(CID + 1, 0.0))
    got = tr.parse_udp_request(ex.start(1.0))
    assert isinstance(got, tr.UDPAnnouncePacket)
    again = ex.receive(tr.udp_error_reply(got.tid, "Connection ID missmatch"), 1.1)
    assert again is not None and isinstance(tr.parse_udp_request(again), tr.UDPConnectPacket)
    ask = ex.receive(answer(again), 1.2)
    assert ask is not None
    got = tr.parse_udp_request(ask)
    assert isinstance(got, tr.UDPAnnouncePacket)
    with pytest.raises(TrackerError, match="not authorized"):
        ex.receive(tr.udp_error_reply(got.tid, "not authorized"), 1.3)


def test_connection_id_expires_during_retries() -> None:
    ex = exchange(retry=tr.UDPRetry(15, 9))
    ask = ex.receive(answer(ex.start(0.0)), 0.0)
    assert ask is not None
    assert ex.timeout(15.0) == ask  # 15 s old: still good
    assert ex.timeout(45.0) == ask
    reconnect = ex.timeout(105.0)  # 105 s old: BEP 15 says connect again
    assert isinstance(tr.parse_udp_request(reconnect), tr.UDPConnectPacket)


def test_a_tracker_that_only_answers_connects_cannot_hold_us() -> None:
    ex = exchange(retry=tr.UDPRetry(15, 9))
    now = 0.0
    packet = ex.start(now)
    sends = 1
    with pytest.raises(TrackerError, match="no reply to 9 announce requests"):
        while True:
            if isinstance(tr.parse_udp_request(packet), tr.UDPConnectPacket):
                reply = ex.receive(answer(packet), now)
                assert reply is not None
                packet = reply
            else:
                now = ex.deadline
                packet = ex.timeout(now)
            sends += 1
            assert sends < 40
    assert now < 2 * tr.UDPRetry(15, 9).total


def test_scrape_exchange() -> None:
    ex = tr.UDPScrape([INFO_HASH, b"\x01" * 20], retry=tr.UDPRetry(1, 1), new_tid=Tids())
    ask = ex.receive(answer(ex.start(0.0)), 0.1)
    assert ask is not None
    got = tr.parse_udp_request(ask)
    assert isinstance(got, tr.UDPScrapePacket) and got.info_hashes == (INFO_HASH, b"\x01" * 20)
    ex.receive(tr.udp_scrape_reply(got.tid, [ScrapeResult(1, 2, 3), ScrapeResult(0, 0, 0)]), 0.2)
    assert ex.result == (ScrapeResult(1, 2, 3), ScrapeResult(0, 0, 0))


# -- UDP fuzz and round trips -------------------------------------------------


# After a header answering our transaction: interval 1800, 1 leecher, 2 seeders, ten peers.
TEN_PEERS = struct.pack("!III", 1800, 1, 2) + b"".join(
    bytes([10, 0, 0, i]) + (6881).to_bytes(2, "big") for i in range(1, 11)
)


@given(st.binary(max_size=200), st.integers(0, 2**32 - 1), st.booleans())
@example(TEN_PEERS, 7, False)  # more peers than the cap of 5
def test_random_bytes_into_udp_parsers(tail: bytes, tid: int, ipv6: bool) -> None:
    """A result that keeps each parser's promises, or a printable TrackerError; each parser
    gets the bytes as they are, and after a header answering our own transaction."""
    ours = tid.to_bytes(4, "big")

    def connect(data: bytes) -> None:
        assert 0 <= tr.parse_udp_connect(data, tid) < 2**64
        assert data[4:8] == ours  # only our transaction is believed

    def announce(data: bytes) -> None:
        r = tr.parse_udp_announce(data, tid, ipv6=ipv6, max_peers=5)
        assert data[4:8] == ours
        assert 0 <= r.interval <= MAX_INTERVAL
        assert len(r.peers) <= 5 and len(set(r.peers)) == len(r.peers)
        assert all(p.port > 0 for p in r.peers)
        assert ipv6 or not any(":" in p.host for p in r.peers)  # v4-mapped v6 comes as v4

    def scrape(data: bytes) -> None:
        assert len(tr.parse_udp_scrape(data, tid, 2)) == 2
        assert data[4:8] == ours

    def request(data: bytes) -> None:
        got = tr.parse_udp_request(data)
        assert isinstance(got, tr.UDPConnectPacket | tr.UDPAnnouncePacket | tr.UDPScrapePacket)

    parsers: list[tuple[Callable[[bytes], None], int | None]] = [
        (connect, 0), (announce, 1), (scrape, 2), (request, None),
    ]  # fmt: skip
    for parse, action in parsers:
        inputs = [tail] if action is None else [tail, struct.pack("!II", action, tid) + tail]
        for data in inputs:
            try:
                parse(data)
            except TrackerError as exc:
                assert str(exc) and str(exc).isprintable(), str(exc)


@given(st.lists(st.binary(max_size=120), max_size=5))
def test_random_datagrams_into_an_exchange(datagrams: list[bytes]) -> None:
    ex = exchange(new_tid=lambda: 0)  # tid 0, so random packets can match it
    ex.start(0.0)
    for d in datagrams:
        try:
            out = ex.receive(d, 0.1)
        except TrackerError:
            assert ex.done
            return
        assert out is None or isinstance(tr.parse_udp_request(out), tr.UDPAnnouncePacket)


_u32 = st.integers(0, 2**32 - 1)
_u63 = st.integers(0, 2**63 - 1)


@given(
    cid=st.integers(0, 2**64 - 1), tid=_u32, info_hash=st.binary(min_size=20, max_size=20),
    peer_id=st.binary(min_size=20, max_size=20), port=st.integers(0, 65535),
    up=_u63, down=_u63, left=_u63, event=st.sampled_from([None, "started", "completed", "stopped"]),
    key=_u32, numwant=st.integers(0, 2**31 - 1), url_data=st.binary(max_size=600),
)  # fmt: skip
def test_udp_requests_round_trip(
    cid: int, tid: int, info_hash: bytes, peer_id: bytes, port: int, up: int, down: int,
    left: int, event: str | None, key: int, numwant: int, url_data: bytes,
) -> None:  # fmt: skip
    r = AnnounceRequest(info_hash, peer_id, port, up, down, left, event, numwant=numwant, key=key)
    got = tr.parse_udp_request(tr.udp_announce_request(cid, tid, r, url_data=url_data))
    assert got == tr.UDPAnnouncePacket(cid, tid, r, 0, url_data)
    assert tr.parse_udp_request(tr.udp_connect_request(tid)) == tr.UDPConnectPacket(tid)
    hashes = (info_hash, peer_id)
    assert tr.parse_udp_request(tr.udp_scrape_request(cid, tid, hashes)) == tr.UDPScrapePacket(
        cid, tid, hashes
    )


_v4 = st.builds(PeerAddr, st.ip_addresses(v=4).map(str), st.integers(1, 65535))
_v6 = st.builds(PeerAddr, st.ip_addresses(v=6).map(str), st.integers(1, 65535))


@given(
    tid=_u32, cid=st.integers(0, 2**64 - 1), interval=st.integers(0, MAX_INTERVAL),
    leechers=_u32, seeders=_u32, v4=st.lists(_v4, max_size=20), v6=st.lists(_v6, max_size=20),
    counts=st.lists(st.tuples(_u32, _u32, _u32), min_size=1, max_size=74),
)  # fmt: skip
def test_udp_replies_round_trip(
    tid: int, cid: int, interval: int, leechers: int, seeders: int,
    v4: list[PeerAddr], v6: list[PeerAddr], counts: list[tuple[int, int, int]],
) -> None:  # fmt: skip
    assert tr.parse_udp_connect(tr.udp_connect_reply(tid, cid), tid) == cid
    for peers, ipv6 in ((v4, False), (v6, True)):
        blob = tr.compact_peers(peers, ipv6=ipv6)
        packet = tr.udp_announce_reply(
            tid, interval=interval, leechers=leechers, seeders=seeders, peers=blob
        )
        resp = tr.parse_udp_announce(packet, tid, ipv6=ipv6)
        assert (resp.interval, resp.incomplete, resp.complete) == (interval, leechers, seeders)
        # what survives is exactly the usable peers, deduplicated, in order
        hosts = [tr._usable(ipaddress.ip_address(p.host)) for p in peers]
        usable = (PeerAddr(h, p.port) for h, p in zip(hosts, peers, strict=True) if h)
        assert resp.peers == tuple(dict.fromkeys(usable))
    results = [ScrapeResult(c, i, d) for c, i, d in counts]
    packet = tr.udp_scrape_reply(tid, results)
    assert tr.parse_udp_scrape(packet, tid, len(results)) == tuple(results)
