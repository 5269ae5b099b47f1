"""mptorrent.proto.hashing: piece verification behind PieceVerifier (v1: SHA-1)."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import pytest

from mptorrent.disk.storage import Layout, Storage, prepare
from mptorrent.errors import BadTorrent
from mptorrent.proto import metainfo
from mptorrent.proto.hashing import (
    SHA1_LEN,
    PieceVerifier,
    Sha1Pieces,
    block_fingerprint,
    info_hash_v1,
)

PL = 32768
DATA = os.urandom(3 * PL + 1000)
PIECES = [DATA[i : i + PL] for i in range(0, len(DATA), PL)]
HASHES = b"".join(hashlib.sha1(p).digest() for p in PIECES)

_conforms: type[PieceVerifier] = Sha1Pieces  # mypy: the v1 class implements the protocol


def test_sha1_pieces_verifies_each_piece_and_only_its_own() -> None:
    v = Sha1Pieces(HASHES)
    assert v.num_pieces == 4
    for i, piece in enumerate(PIECES):
        assert v.verify(i, piece)
        assert v.verify(i, bytearray(piece))
        assert v.verify(i, memoryview(DATA)[i * PL : i * PL + len(piece)])
        assert not v.verify(i, PIECES[(i + 1) % 4])
        assert v.expected(i) == HASHES[i * SHA1_LEN : (i + 1) * SHA1_LEN]
    bad = bytearray(PIECES[1])
    bad[-1] ^= 1
    assert not v.verify(1, bad)


def test_an_incremental_hasher_matches_the_whole_piece() -> None:
    v = Sha1Pieces(HASHES)
    h = v.hasher(2)
    for k in range(0, PL, 1000):
        h.update(memoryview(PIECES[2])[k : k + 1000])
    assert v.matches(2, h.digest())
    assert not v.matches(1, h.digest())


def test_indices_outside_the_torrent_are_refused() -> None:
    v = Sha1Pieces(HASHES)
    with pytest.raises(IndexError):
        v.verify(4, PIECES[0])
    with pytest.raises(IndexError):
        v.matches(-1, b"\0" * SHA1_LEN)


def test_a_pieces_string_of_the_wrong_length_is_a_bad_torrent() -> None:
    with pytest.raises(BadTorrent, match="not a multiple of 20"):
        Sha1Pieces(HASHES[:-1])


def test_it_pickles_for_the_checker_pool() -> None:
    v = pickle.loads(pickle.dumps(Sha1Pieces(HASHES)))
    assert isinstance(v, Sha1Pieces) and v.hashes == HASHES and v.verify(3, PIECES[3])


def test_metainfo_gives_its_verifier_and_v1_info_hash() -> None:
    meta = metainfo.parse(
        metainfo.build(name="x.bin", piece_length=PL, pieces=HASHES, length=len(DATA))
    )
    v = meta.verifier()
    assert v.num_pieces == meta.num_pieces == 4
    assert all(v.expected(i) == meta.piece_hash(i) for i in range(4))
    assert info_hash_v1(meta.info_bytes) == hashlib.sha1(meta.info_bytes).digest()
    assert meta.info_hash == info_hash_v1(meta.info_bytes)


def test_storage_verifies_pieces_on_disk(tmp_path: Path) -> None:
    meta = metainfo.parse(
        metainfo.build(name="x.bin", piece_length=PL, pieces=HASHES, length=len(DATA))
    )
    out = tmp_path / "x.bin"
    layout = Layout.for_torrent(meta, out)
    prepare(layout, out)
    v = meta.verifier()
    with Storage(layout, writable=True) as st:
        st.write_piece(1, bytearray(PIECES[1]))
        assert st.verify_piece(1, v) is True
        assert st.verify_piece(0, v) is False  # still zeros
        assert st.hash_piece(1) == hashlib.sha1(PIECES[1]).digest()
    out.unlink()
    with Storage(layout) as st:
        assert st.verify_piece(1, v) is None  # the file is gone


def test_block_fingerprints_tell_copies_apart() -> None:
    a = memoryview(DATA)[:16384]
    assert block_fingerprint(a) == block_fingerprint(bytes(a))
    assert block_fingerprint(a) != block_fingerprint(DATA[1:16385])
