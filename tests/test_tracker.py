"""mptorrent.tracker: the sans-IO announce/scrape codecs (BEP 3, 7, 23, 48)."""

from __future__ import annotations

import struct
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mptorrent import bencode
from mptorrent.errors import TrackerError
from mptorrent.messages import PeerAddr
from mptorrent.tracker import (
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
    url = announce_url(
        "http://tracker.example:6969/announce", req(event="started", key=0xBEEF)
    )
    assert url == (
        "http://tracker.example:6969/announce"
        f"?info_hash={INFO_HASH_Q}&peer_id={PEER_ID_Q}"
        "&port=6881&uploaded=1&downloaded=2&left=3&compact=1&numwant=50"
        "&event=started&key=0000BEEF"
    )


def test_announce_url_optional_fields() -> None:
    url = announce_url(
        "http://t/announce", req(compact=False, numwant=0, tracker_id=b"id 1\x01")
    )
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
