"""Tests for mptorrent.proto.magnet: magnet links in and out.

Hostile magnets are catalogued in tests/adversarial/README.md, table G; each is a row of
HOSTILE below.
"""

from __future__ import annotations

import base64
import hashlib
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mptorrent.errors import BadMagnet, ExitStatus, MptorrentError
from mptorrent.messages import PeerAddr
from mptorrent.proto import metainfo
from mptorrent.proto.magnet import (
    MAX_PARAMS,
    MAX_URI_CHARS,
    Magnet,
    is_magnet,
    parse_magnet,
    torrent_from_metadata,
)

IH = bytes.fromhex("c12fe1c06bba254a9dc9f519b335aa7c1367a88a")
IH_HEX = IH.hex()
V2 = bytes(range(32))


def test_bad_magnet_is_exit_3_like_a_bad_torrent() -> None:
    assert issubclass(BadMagnet, MptorrentError)
    assert BadMagnet("x").exit_status == ExitStatus.BAD_TORRENT
    assert int(BadMagnet("x").exit_status) == 3


def test_full_magnet() -> None:
    uri = (
        f"magnet:?xt=urn:btih:{IH_HEX.upper()}&dn=Hello+W%C3%B6rld%2B1"
        "&tr=udp%3A%2F%2Ftracker.example%3A6969%2Fannounce&tr=http://t2.example/a?k=%2B"
        "&x.pe=127.0.0.2:6881&x.pe=[::1]:51413&x.pe=seed.example:1&x.pe=[::ffff:127.0.0.3]:9"
        "&ws=https%3A%2F%2Fweb.example%2Ffile&xl=12345&so=0-3&kt=a+b"
    )
    m = parse_magnet(uri)
    assert m == Magnet(
        info_hash=IH,
        name="Hello Wörld+1",
        trackers=("udp://tracker.example:6969/announce", "http://t2.example/a?k=+"),
        peers=(
            PeerAddr("127.0.0.2", 6881),
            PeerAddr("::1", 51413),
            PeerAddr("seed.example", 1),
            PeerAddr("::ffff:7f00:3", 9),
        ),
        web_seeds=("https://web.example/file",),
    )
    assert m.tiers == (("udp://tracker.example:6969/announce",), ("http://t2.example/a?k=+",))
    assert m.warnings == () and m.info_hash_hex == IH_HEX


def test_minimal_magnets_and_the_two_info_hash_spellings() -> None:
    assert parse_magnet(f"magnet:?xt=urn:btih:{IH_HEX}") == Magnet(IH)
    b32 = base64.b32encode(IH).decode()
    assert parse_magnet(f"magnet:?xt=urn:btih:{b32}") == Magnet(IH)
    assert parse_magnet(f"MAGNET:?xt=URN:BTIH:{b32.lower()}") == Magnet(IH)
    assert parse_magnet(f"  magnet:?xt=urn:BTIH:{b32.lower()}#frag \n") == Magnet(IH)


def test_v2_hash_is_kept_beside_the_v1_one() -> None:
    uri = f"magnet:?xt=urn:btih:{IH_HEX}&xt=urn:btmh:1220{V2.hex().upper()}"
    m = parse_magnet(uri)
    assert m.info_hash == IH and m.info_hash_v2 == V2
    assert parse_magnet(m.to_uri()) == m
    # The same hash twice is no conflict; other URNs are ignored.
    again = f"magnet:?xt=urn:btih:{IH_HEX}&xt=urn:btih:{base64.b32encode(IH).decode()}"
    assert parse_magnet(again + "&xt=urn:ed2k:abcd&xt=urn:sha1:XYZ") == Magnet(IH)


def test_a_v2_only_link_is_known_by_its_truncated_v2_hash() -> None:
    m = parse_magnet(f"magnet:?xt=urn:btmh:1220{V2.hex()}&dn=x")
    assert m.v2_only and m.info_hash == V2[:20] and m.info_hash_v2 == V2
    assert "btih" not in m.to_uri() and parse_magnet(m.to_uri()) == m
    assert not parse_magnet(f"magnet:?xt=urn:btih:{IH_HEX}&xt=urn:btmh:1220{V2.hex()}").v2_only


def test_unusable_trackers_are_skipped_with_a_warning() -> None:
    m = parse_magnet(
        f"magnet:?xt=urn:btih:{IH_HEX}&tr=wss%3A%2F%2Fwt.example&tr=udp://no-port.example"
        "&tr=http://ok.example/a&tr=http://ok.example/a"
    )
    assert m.trackers == ("http://ok.example/a",)
    secret = parse_magnet(f"magnet:?{_XT}&tr=gopher://u:pw@t.example:70/announce/PASSKEY")
    assert secret.warnings == (
        "skipped tracker 'gopher://t.example:70': scheme 'gopher' is not supported",
    )
    assert m.warnings == (
        "skipped tracker 'wss://wt.example': scheme 'wss' is not supported",
        "skipped tracker 'udp://no-port.example': a UDP tracker URL needs a port",
    )


def test_unusable_web_seeds_are_skipped_with_a_warning() -> None:
    m = parse_magnet(
        f"magnet:?{_XT}&ws=ftp://a.example/f&ws=http://a.example/%20x%0A&ws=http://ok.example/f"
    )
    assert m.web_seeds == ("http://ok.example/f",)
    assert m.warnings == (
        "skipped web seed 'ftp://a.example': not an http(s) URL",
        "skipped web seed 'http://a.example': it contains spaces or control characters",
    )


def test_to_uri_round_trips() -> None:
    m = Magnet(
        IH,
        name="a & b = c?% +",
        trackers=("udp://t.example:1/x?a=1&b=2", "http://u.example/%41"),
        peers=(PeerAddr("10.0.0.1", 1), PeerAddr("fe80::1", 2), PeerAddr("host.example", 3)),
        web_seeds=("http://w.example/a%20b?c=d&e",),
        info_hash_v2=V2,
    )
    uri = m.to_uri()
    assert uri.startswith(f"magnet:?xt=urn:btih:{IH_HEX}&xt=urn:btmh:1220{V2.hex()}&dn=a%20%26")
    assert "x.pe=[fe80::1]:2" in uri and "x.pe=10.0.0.1:1" in uri
    assert parse_magnet(uri) == m
    assert parse_magnet(Magnet(IH).to_uri()) == Magnet(IH)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=20, max_size=20),
    st.one_of(st.none(), st.text(st.characters(categories=["L", "N", "P", "S", "Zs"]))),
    st.lists(st.sampled_from(["http://a.example/x?y=1&z=%20", "udp://b.example:80"]), unique=True),
    st.lists(st.tuples(st.ip_addresses(), st.integers(1, 65535)), max_size=5),
)
def test_any_magnet_round_trips(
    ih: bytes,
    name: str | None,
    trackers: list[str],
    peers: list[tuple[IPv4Address | IPv6Address, int]],
) -> None:
    addrs: dict[PeerAddr, None] = {}
    for ip, port in peers:
        if not (ip.is_multicast or ip.is_unspecified):
            addrs.setdefault(PeerAddr(str(ip), port), None)
    m = Magnet(ih, name=name, trackers=tuple(trackers), peers=tuple(addrs))
    assert parse_magnet(m.to_uri()) == m


def test_is_magnet() -> None:
    assert is_magnet("magnet:?xt=1") and is_magnet("MAGNET:?")
    assert not is_magnet("magnet.torrent") and not is_magnet("/tmp/magnet:?x")


def test_torrent_from_metadata_keeps_the_info_bytes_and_hash() -> None:
    info = metainfo.build(name="f", piece_length=16384, pieces=bytes(20), length=5)
    raw = metainfo.parse(info).info_bytes
    ih = hashlib.sha1(raw).digest()
    m = Magnet(ih, trackers=("http://a.example/ann", "udp://b.example:1"), web_seeds=("http://w/",))
    data = torrent_from_metadata(raw, m)
    parsed = metainfo.parse(data)
    assert parsed.info_hash == ih and parsed.info_bytes == raw
    assert parsed.trackers == m.tiers and parsed.web_seeds == ("http://w/",)
    bare = metainfo.parse(torrent_from_metadata(raw, Magnet(ih)))
    assert bare.trackers == () and bare.info_hash == ih


# (row, uri, what the message says): tests/adversarial/README.md table G.
_XT = f"xt=urn:btih:{IH_HEX}"
HOSTILE: list[tuple[str, str, str]] = [
    ("G1-not-magnet", "http://example.com/?" + _XT, "does not start with 'magnet:?'"),
    ("G1-empty", "", "does not start with 'magnet:?'"),
    ("G1-no-xt", "magnet:?dn=x&tr=http://a/", "no 'xt=urn:btih:' or 'xt=urn:btmh:' info-hash"),
    ("G2-short-hex", "magnet:?xt=urn:btih:" + IH_HEX[:-1], "neither 40 hex nor 32 base32"),
    ("G2-long-hex", "magnet:?xt=urn:btih:" + IH_HEX + "0", "neither 40 hex nor 32 base32"),
    ("G2-not-hex", "magnet:?xt=urn:btih:" + "g" * 40, "neither 40 hex nor 32 base32"),
    ("G2-spaced-hex", "magnet:?xt=urn:btih:" + "0a " * 13 + "0", "neither 40 hex"),
    ("G2-bad-base32", "magnet:?xt=urn:btih:" + "1" * 32, "neither 40 hex nor 32 base32"),
    ("G2-two-hashes", f"magnet:?{_XT}&xt=urn:btih:{'0' * 40}", "two different urn:btih"),
    ("G2-bad-btmh", f"magnet:?{_XT}&xt=urn:btmh:1114{V2.hex()}", "not '1220' and 64 hex"),
    ("G2-two-btmh", f"magnet:?{_XT}&xt=urn:btmh:1220{V2.hex()}&xt=urn:btmh:1220{'0' * 64}",
     "two different urn:btmh"),
    ("G3-peer-no-port", f"magnet:?{_XT}&x.pe=127.0.0.1", "peer '127.0.0.1' is not HOST:PORT"),
    ("G3-peer-port-0", f"magnet:?{_XT}&x.pe=127.0.0.1:0", "is not HOST:PORT"),
    ("G3-peer-port-big", f"magnet:?{_XT}&x.pe=127.0.0.1:65536", "is not HOST:PORT"),
    ("G3-peer-v6-bare", f"magnet:?{_XT}&x.pe=::1:80", "is not HOST:PORT"),
    ("G3-peer-v6-unclosed", f"magnet:?{_XT}&x.pe=[::1:80", "is not HOST:PORT"),
    ("G3-peer-bad-v4", f"magnet:?{_XT}&x.pe=999.1.1.1:80", "is not HOST:PORT"),
    ("G3-peer-bad-name", f"magnet:?{_XT}&x.pe=a_b.example:80", "is not HOST:PORT"),
    ("G3-peer-bracket-name", f"magnet:?{_XT}&x.pe=[host]:80", "is not HOST:PORT"),
    ("G3-peer-unspecified", f"magnet:?{_XT}&x.pe=0.0.0.0:80", "not a unicast address"),
    ("G3-peer-multicast", f"magnet:?{_XT}&x.pe=[ff02::1]:80", "not a unicast address"),
    ("G3-peer-unicode-port", f"magnet:?{_XT}&x.pe=1.2.3.4:%D9%A1", "is not HOST:PORT"),
    ("G3-too-many-peers",
     f"magnet:?{_XT}&" + "&".join(f"x.pe=10.0.{i // 250}.{i % 250 + 1}:1" for i in range(201)),
     "more than 200 'x.pe' peers"),
    ("G5-dn-control", f"magnet:?{_XT}&dn=a%1B%5B2J", "'dn' holds control characters"),
    ("G5-bad-utf8", f"magnet:?{_XT}&dn=%FF%FE", "'dn' is not UTF-8"),
    ("G5-no-value", f"magnet:?{_XT}&tr", "'tr' has no value"),
    ("G5-long-value", f"magnet:?{_XT}&dn=" + "a" * 5000, "'dn' is over 4096 characters"),
    ("G6-too-long", f"magnet:?{_XT}&dn=" + "a" * MAX_URI_CHARS, "over 65536 characters"),
    ("G6-too-many-params", f"magnet:?{_XT}" + "&x=1" * MAX_PARAMS, "513 parameters, over"),
]  # fmt: skip


@pytest.mark.parametrize(("uri", "reason"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_magnet_is_one_line_bad_magnet(uri: str, reason: str) -> None:
    with pytest.raises(BadMagnet, match=reason.replace("[", r"\[").replace("?", r"\?")) as err:
        parse_magnet(uri)
    text = str(err.value)
    assert text.startswith("bad magnet link: ")
    assert text.isprintable() and len(text) < 200


def test_unknown_parameters_are_ignored_even_when_odd() -> None:
    uri = f"magnet:?{_XT}&&x.foo&=&%FF=%FF&xl=notanumber&tr.1=zz&%64n=x%20y"
    assert parse_magnet(uri) == Magnet(IH, name="x y")  # %64 is 'd': names are %-decoded
    # An unknown key with no value is fine; a known one with none is not.
    with pytest.raises(BadMagnet, match="'dn' has no value"):
        parse_magnet(uri + "&dn")


def test_limits_are_inclusive() -> None:
    base = f"magnet:?{_XT}"
    assert parse_magnet(base + "&x=1" * (MAX_PARAMS - 1)) == Magnet(IH)
    padded = base + "&dn=" + "a" * 4096
    assert parse_magnet(padded).name == "a" * 4096
    filler = "&x=" + "a" * (MAX_URI_CHARS - len(base) - 3)
    assert len(base + filler) == MAX_URI_CHARS and parse_magnet(base + filler) == Magnet(IH)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_random_text_gives_a_magnet_or_bad_magnet(tail: str) -> None:
    for uri in (tail, "magnet:?" + tail, f"magnet:?{_XT}&" + tail):
        try:
            m = parse_magnet(uri)
        except BadMagnet as err:
            assert str(err).isprintable()
            continue
        assert len(m.info_hash) == 20 and parse_magnet(m.to_uri()) == m
