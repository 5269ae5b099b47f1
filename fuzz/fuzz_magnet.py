"""Fuzz target: mptorrent.proto.magnet gives a Magnet or BadMagnet, nothing else.

The input is text (UTF-8, undecodable bytes replaced).  The first byte picks a
prefix, so mutations need not rediscover the scheme and a valid info-hash:
odd, ``magnet:?xt=urn:btih:<40 hex>&`` goes in front; even, the input stands
alone.  A Magnet must have a 20-byte info-hash, usable trackers, peers with a
port, printable warnings, and come back equal from ``parse_magnet(to_uri())``;
a BadMagnet's message is one printable line.

    python fuzz/fuzz_magnet.py -runs=20000           # atheris (pip install atheris)
    python fuzz/fuzz_magnet.py --hypothesis 2000     # without atheris
"""

from __future__ import annotations

import sys
from pathlib import Path

from mptorrent.errors import BadMagnet
from mptorrent.proto.magnet import parse_magnet
from mptorrent.proto.metainfo import tracker_url_problem

PREFIX = "magnet:?xt=urn:btih:" + bytes(range(20)).hex() + "&"


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    text = data[1:].decode("utf-8", "replace")
    uri = PREFIX + text if data[0] & 1 else text
    try:
        m = parse_magnet(uri)
    except BadMagnet as err:
        message = str(err)
        assert message.startswith("bad magnet link: ") and message.isprintable(), message
        assert len(message) < 300, message
        return
    assert len(m.info_hash) == 20
    assert m.info_hash_v2 is None or len(m.info_hash_v2) == 32
    assert all(tracker_url_problem(url) is None for url in m.trackers)
    assert all(0 < p.port <= 0xFFFF and p.host for p in m.peers)
    assert all(w.isprintable() for w in m.warnings)
    assert parse_magnet(m.to_uri()) == m


def seeds() -> list[bytes]:
    ih = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a"
    v2 = bytes(range(32)).hex()
    return [
        b"\x00magnet:?xt=urn:btih:" + ih.encode(),
        b"\x00magnet:?xt=urn:btih:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK&dn=a+b%20c",
        f"\x00magnet:?xt=urn:btih:{ih}&xt=urn:btmh:1220{v2}&dn=Hello+W%C3%B6rld"
        "&tr=udp%3A%2F%2Ft.example%3A6969&tr=wss://x.example&x.pe=127.0.0.2:6881"
        "&x.pe=[::1]:51413&x.pe=seed.example:1&ws=http://w.example/f&xl=5".encode(),
        b"\x01dn=x&tr=http://a.example/ann?k=%2B&x.pe=10.0.0.1:80&ws=https://w/",
        b"\x01x.pe=[fe80::1]:9&x.pe=bad&xt=urn:btih:0000",
    ]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
    from fuzz.engine import main as run

    run(TestOneInput, seeds())


if __name__ == "__main__":
    main()
