"""Piece verification behind one small interface, so the hash scheme is named once.

BitTorrent v1 (BEP 3) names each piece by the SHA-1 of its bytes, the 20-byte digests
concatenated in the info dictionary's ``pieces``.  v2 (BEP 52) names pieces by SHA-256
merkle roots instead; everything that checks a piece (the worker on a downloaded piece,
``checker`` on data read back from disk, ``storage`` streaming a piece file by file)
asks a :class:`PieceVerifier`; v2's implementation is :mod:`mptorrent.proto.merkle`
(``MerklePieces``, and ``BothPieces`` for hybrids), chosen by ``Metainfo.verifier()``.

The hot path is one ``hashlib`` call over the caller's buffer: a memoryview or a
bytearray is hashed where it lies, without a copy, and hashlib releases the GIL.
"""

from __future__ import annotations

import hashlib
from typing import Protocol, TypeAlias

from mptorrent.errors import BadTorrent

SHA1_LEN = 20  # bytes of a v1 piece hash and of a v1 info-hash

Data: TypeAlias = bytes | bytearray | memoryview


class PieceHasher(Protocol):
    """A running digest of one piece, fed its bytes in order (a piece read file by file)."""

    def update(self, data: Data, /) -> None: ...

    def digest(self) -> bytes: ...


class PieceVerifier(Protocol):
    """Says whether bytes are the piece the torrent names."""

    @property
    def num_pieces(self) -> int: ...

    def verify(self, index: int, data: Data) -> bool:
        """The whole piece ``index`` is ``data``."""
        ...

    def hasher(self, index: int) -> PieceHasher:
        """A hasher for piece ``index`` whose :meth:`PieceHasher.digest` goes to
        :meth:`matches` (for a piece that is not in one buffer)."""
        ...

    def matches(self, index: int, digest: bytes) -> bool:
        """``digest``, from :meth:`hasher`, is the one piece ``index`` must have."""
        ...


class Sha1Pieces:
    """v1 verification: each piece's SHA-1 against the concatenated ``pieces`` string.

    Picklable (``checker`` hands it to its pool processes).
    """

    __slots__ = ("hashes",)

    def __init__(self, hashes: bytes) -> None:
        if len(hashes) % SHA1_LEN:
            raise BadTorrent(f"'pieces' is {len(hashes)} bytes, not a multiple of {SHA1_LEN}")
        self.hashes = hashes

    def __getstate__(self) -> bytes:
        return self.hashes

    def __setstate__(self, state: bytes) -> None:
        self.hashes = state

    @property
    def num_pieces(self) -> int:
        return len(self.hashes) // SHA1_LEN

    def expected(self, index: int) -> bytes:
        """The 20-byte digest piece ``index`` must have."""
        if not 0 <= index < self.num_pieces:
            raise IndexError(f"piece {index} out of range")
        return self.hashes[index * SHA1_LEN : (index + 1) * SHA1_LEN]

    def verify(self, index: int, data: Data) -> bool:
        return hashlib.sha1(data).digest() == self.expected(index)

    def hasher(self, index: int) -> PieceHasher:
        return hashlib.sha1()

    def matches(self, index: int, digest: bytes) -> bool:
        return digest == self.expected(index)


def sha1_hasher() -> PieceHasher:
    """The v1 piece hasher, for code that builds v1 piece hashes (``create``, ``checker``)."""
    return hashlib.sha1()


def info_hash_v1(info_bytes: Data) -> bytes:
    """The v1 info-hash: SHA-1 of the bencoded info dictionary, as it was in the file."""
    return hashlib.sha1(info_bytes).digest()


def block_fingerprint(data: Data) -> bytes:
    """A short, collision-resistant stand-in for a block's bytes: smart ban keeps one per
    sender of a failed piece and compares it with the copy that finally verifies."""
    return hashlib.sha1(data).digest()
