"""Fuzz target: mptorrent.proto.metainfo.parse gives a Metainfo or BadTorrent, nothing else.

A Metainfo that comes out must keep every promise the module makes: safe relative
paths, lengths that agree with the piece hashes, an info-hash over the raw info
bytes, usable trackers only, printable warnings.

    python fuzz/fuzz_metainfo.py -runs=20000         # atheris (pip install atheris)
    python fuzz/fuzz_metainfo.py --hypothesis 2000   # without atheris
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from mptorrent.errors import BadTorrent
from mptorrent.proto import bencode, merkle, metainfo


def TestOneInput(data: bytes) -> None:
    try:
        m = metainfo.parse(data)
    except BadTorrent as exc:
        msg = str(exc)
        assert msg and msg.isprintable() and "\n" not in msg, msg
        return
    check(m, data)


def check(m: metainfo.Metainfo, data: bytes) -> None:
    """Everything a parsed torrent promises its users."""
    if m.info_hash_v2 is None:
        assert m.info_hash == hashlib.sha1(m.info_bytes).digest()
    else:  # BEP 52: SHA-256; the wire's hash is v1's for a hybrid, v2's cut to 20 bytes else
        assert m.info_hash_v2 == hashlib.sha256(m.info_bytes).digest()
        v1 = hashlib.sha1(m.info_bytes).digest()
        assert m.info_hash == (v1 if m.pieces else m.info_hash_v2[:20])
        v = m.merkle_verifier()  # every layer kept hashes up to its file's root
        for root, layer in m.piece_layers:
            assert merkle.layer_root(layer, m.piece_length) == root
        assert v.num_pieces == m.num_pieces
        for f in m.data_files:
            assert f.length == 0 or f.offset % m.piece_length == 0, f  # aligned to pieces
    assert m.info_bytes in data
    assert 0 < m.piece_length <= metainfo.MAX_PIECE_LENGTH
    assert 0 < m.total_length <= metainfo.MAX_TOTAL_LENGTH
    assert len(m.pieces) % metainfo.HASH_LEN == 0
    assert m.num_pieces == -(-m.total_length // m.piece_length) <= metainfo.MAX_PIECES
    assert 0 < m.piece_size(m.num_pieces - 1) <= m.piece_length
    offset = 0
    seen: set[tuple[str, ...]] = set()
    for f in m.files:
        assert f.offset == offset and f.length >= 0
        offset += f.length
        assert f.path
        for part in (m.name, *f.path):
            assert part not in ("", ".", ".."), part
            assert not any(c in part for c in "/\\\0"), part
            assert len(part.encode("utf-8", "surrogatepass")) <= metainfo.MAX_COMPONENT_BYTES
        if not f.padding:
            assert f.path not in seen, f.path
            seen.add(f.path)
    assert offset == m.total_length
    if not m.multi_file:
        assert m.files[0].path == (m.name,)
    for tier in m.trackers:
        assert tier
        for url in tier:
            assert metainfo.tracker_url_problem(url) is None, url
    assert len(m.warnings) <= metainfo.MAX_WARNINGS + 1
    for w in m.warnings:
        assert w.isprintable(), w


def seeds() -> list[bytes]:
    pl = 16384
    single = metainfo.build(name="movie.mp4", piece_length=pl, pieces=bytes(60), length=40000,
                            trackers=[["http://t.example/announce"], ["udp://u.example:80"]],
                            web_seeds=["http://ws.example/"], creation_date=0)  # fmt: skip
    multi = metainfo.build(name="album", piece_length=pl, pieces=bytes(40),
                           files=[(("a.txt",), 1000), (("sub", "b.bin"), 30000), (("e",), 0)],
                           private=True, comment="hi", creation_date=0)  # fmt: skip
    padded = bencode.encode({b"info": {
        b"files": [
            {b"length": 1000, b"path": [b"a"]},
            {b"attr": b"p", b"length": pl - 1000, b"path": [b".pad", b"15384"]},
            {b"length": 5, b"path": [b"b"], b"path.utf-8": [b"b\xc3\xa9"]},
        ],
        b"name": b"pad", b"name.utf-8": b"p\xc3\xa4d", b"piece length": pl, b"pieces": bytes(40),
    }})  # fmt: skip
    hybrid = bencode.encode({b"info": {
        b"file tree": {b"h": {b"": {b"length": 10, b"pieces root": bytes(32)}}},
        b"length": 10, b"meta version": 2, b"name": b"h", b"piece length": pl,
        b"pieces": bytes(20),
    }})  # fmt: skip
    big = bytes(range(256)) * 200  # three 16 KiB pieces: needs a piece layer
    leaves = [hashlib.sha256(big[o : o + pl]).digest() for o in range(0, len(big), pl)]
    layer = b"".join(leaves)
    root = merkle.layer_root(layer, pl)
    tree = {b"big": {b"": {b"length": len(big), b"pieces root": root}},
            b"d": {b"e": {b"": {b"length": 0}}, b"s": {b"": {b"length": 3,
                   b"pieces root": merkle.file_root(b"abc")}}}}  # fmt: skip
    info = {b"file tree": tree, b"meta version": 2, b"name": b"v2", b"piece length": pl}
    v2 = bencode.encode({b"info": info, b"piece layers": {root: layer}})
    return [single, multi, padded, hybrid, v2]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
    from fuzz.engine import main as run

    run(TestOneInput, seeds())


if __name__ == "__main__":
    main()
