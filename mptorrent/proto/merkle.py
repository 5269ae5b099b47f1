"""BitTorrent v2 merkle hashing (BEP 52): SHA-256 trees over 16 KiB leaves, one tree per file.

Each non-empty file has its own tree.  Its leaves are the SHA-256 of each 16 KiB block of the
file (the last block hashed as it is, shorter); the leaf row is filled up to a power of two
with leaves of 32 zero bytes, and every node above is SHA-256 of its two children.  The
file's root is its ``pieces root``.  The *piece layer* is the row where one node covers one
piece: ``piece length / 16 KiB`` leaves below it; for a file larger than a piece the
torrent carries that row in ``piece layers`` and each piece is checked against its node.  A
file no larger than a piece is checked against its root directly, and its tree is only as
wide as its own blocks need (a power of two of them), not a piece.

Pieces are aligned to files: a piece holds bytes of one file, then zeros (padding) up to
the next file.  :class:`MerklePieces` is the :class:`~mptorrent.proto.hashing.PieceVerifier`
for that; it finds a piece's file by bisection over the files' first pieces.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from typing import NamedTuple

from mptorrent.errors import BadTorrent
from mptorrent.proto.hashing import Data, PieceHasher, Sha1Pieces

BLOCK = 16 * 1024  # a leaf covers this much of a file
HASH = 32  # bytes of a SHA-256 digest
ZERO = bytes(HASH)

_sha256 = hashlib.sha256


def pad_hashes(levels: int) -> list[bytes]:
    """``pad[k]``: the root of a subtree of ``2**k`` zero leaves (``pad[0]`` is the zero leaf)."""
    pad = [ZERO]
    for _ in range(levels):
        pad.append(_sha256(pad[-1] + pad[-1]).digest())
    return pad


_PAD = pad_hashes(64)


def log2(n: int) -> int:
    """``k`` with ``2**k == n``; ``n`` must be a power of two."""
    return n.bit_length() - 1


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def root_of(hashes: Sequence[bytes], width: int, level: int = 0) -> bytes:
    """The root of a row of ``hashes`` at ``level`` (0: leaves) filled with pad hashes up to
    ``width`` nodes (a power of two, at least ``len(hashes)``)."""
    row = list(hashes)
    while width > 1:
        if len(row) % 2:
            row.append(_PAD[level])
        it = iter(row)
        row = [_sha256(a + b).digest() for a, b in zip(it, it, strict=True)]
        width //= 2
        level += 1
    return row[0] if row else _PAD[level]


def leaf_hashes(data: Data, length: int) -> list[bytes]:
    """SHA-256 of each 16 KiB block of the first ``length`` bytes of ``data``."""
    mv = memoryview(data)
    out = [_sha256(mv[o : min(o + BLOCK, length)]).digest() for o in range(0, length, BLOCK)]
    mv.release()
    return out


def file_root(data: Data) -> bytes:
    """The ``pieces root`` of a whole file held in memory (tests and small files)."""
    leaves = leaf_hashes(data, len(data))
    return root_of(leaves, next_pow2(len(leaves)))


def blocks_in(length: int) -> int:
    return -(-length // BLOCK)


def layer_root(layer: bytes, piece_length: int) -> bytes:
    """The root a file's piece layer hashes up to (padded with zero-subtree roots)."""
    hashes = [layer[o : o + HASH] for o in range(0, len(layer), HASH)]
    return root_of(hashes, next_pow2(len(hashes)), log2(piece_length // BLOCK))


def check_layer(root: bytes, layer: bytes, length: int, piece_length: int, where: str) -> None:
    """Raise :class:`BadTorrent` unless ``layer`` is the piece layer of a ``length``-byte file
    whose ``pieces root`` is ``root``."""
    pieces = -(-length // piece_length)
    if len(layer) != HASH * pieces:
        raise BadTorrent(
            f"piece layer of {where} is {len(layer)} bytes, not {HASH * pieces} "
            f"({pieces} pieces of 32 bytes)"
        )
    if layer_root(layer, piece_length) != root:
        raise BadTorrent(f"piece layer of {where} does not hash to its pieces root")


class V2File(NamedTuple):
    """One non-empty file as the merkle verifier sees it: where its pieces start in the
    torrent's piece space, its length, its root and (files over one piece) its piece layer;
    ``root``/``layer`` None where not known (creating a torrent; a magnet before hashes)."""

    first_piece: int
    length: int
    root: bytes | None
    layer: bytes | None


class MerkleHasher:
    """Running piece hash for :class:`MerklePieces`: takes the whole piece as it lies in the
    torrent (file bytes, then padding), hashes the first ``length`` bytes in 16 KiB leaves and
    ignores the rest; the digest is the piece's subtree root over ``width`` leaves."""

    __slots__ = ("_buf", "_fed", "_leaves", "_length", "_width")

    def __init__(self, length: int, width: int) -> None:
        self._length = length
        self._width = width
        self._fed = 0
        self._buf = bytearray()
        self._leaves: list[bytes] = []

    def update(self, data: Data, /) -> None:
        room = self._length - self._fed
        if room <= 0:
            return
        mv = memoryview(data)
        take = mv[: min(room, len(mv))]
        self._fed += len(take)
        if self._buf:
            need = BLOCK - len(self._buf)
            self._buf += take[:need]
            take = take[need:]
            if len(self._buf) == BLOCK:
                self._leaves.append(_sha256(self._buf).digest())
                self._buf.clear()
        whole = len(take) - len(take) % BLOCK
        if whole:
            self._leaves.extend(leaf_hashes(take, whole))
        if whole < len(take):
            self._buf += take[whole:]
        mv.release()

    def digest(self) -> bytes:
        leaves = self._leaves
        if self._buf:
            leaves = [*leaves, _sha256(self._buf).digest()]
        return root_of(leaves, self._width)


class MerklePieces:
    """v2 verification (BEP 52): each piece's subtree root against its file's piece layer, or
    against the file's root for a file no larger than a piece.  ``num_pieces`` counts the
    whole piece space (padding included); a piece that holds no file byte never verifies.

    Picklable (``checker`` hands it to its pool processes).
    """

    __slots__ = ("_firsts", "files", "num_pieces", "piece_length")

    def __init__(self, piece_length: int, num_pieces: int, files: Sequence[V2File]) -> None:
        if piece_length < BLOCK or piece_length & (piece_length - 1):
            raise BadTorrent(f"piece length {piece_length} is not a power of two of 16 KiB or more")
        self.piece_length = piece_length
        self.num_pieces = num_pieces
        self.files = tuple(sorted(files, key=lambda f: f.first_piece))
        self._firsts = [f.first_piece for f in self.files]

    def __getstate__(self) -> tuple[int, int, tuple[V2File, ...]]:
        return self.piece_length, self.num_pieces, self.files

    def __setstate__(self, state: tuple[int, int, tuple[V2File, ...]]) -> None:
        self.piece_length, self.num_pieces, self.files = state
        self._firsts = [f.first_piece for f in self.files]

    def locate(self, index: int) -> tuple[V2File, int] | None:
        """The file piece ``index`` belongs to and the piece's number within that file."""
        if not 0 <= index < self.num_pieces:
            raise IndexError(f"piece {index} out of range")
        k = bisect.bisect_right(self._firsts, index) - 1
        if k < 0:
            return None
        f = self.files[k]
        n = index - f.first_piece
        if n * self.piece_length >= f.length:
            return None
        return f, n

    def _geometry(self, f: V2File, n: int) -> tuple[int, int]:
        """Bytes of file data in the file's piece ``n``, and the leaves of its subtree."""
        pl = self.piece_length
        length = min(pl, f.length - n * pl)
        if f.length <= pl:  # the whole tree of a small file, as wide as its blocks need
            return length, next_pow2(blocks_in(f.length))
        return length, pl // BLOCK

    def expected(self, index: int) -> bytes | None:
        """The 32-byte subtree root piece ``index`` must have; None if not known."""
        where = self.locate(index)
        if where is None:
            return None
        f, n = where
        if f.length <= self.piece_length:
            return f.root
        if f.layer is None:
            return None
        return f.layer[n * HASH : (n + 1) * HASH]

    def piece_root(self, index: int, data: Data) -> bytes | None:
        """The subtree root of piece ``index`` whose bytes (padding included) are ``data``."""
        where = self.locate(index)
        if where is None:
            return None
        length, width = self._geometry(*where)
        if len(data) < length:
            return None
        return root_of(leaf_hashes(data, length), width)

    def verify(self, index: int, data: Data) -> bool:
        want = self.expected(index)
        return want is not None and self.piece_root(index, data) == want

    def hasher(self, index: int) -> PieceHasher:
        where = self.locate(index)
        if where is None:
            return MerkleHasher(0, 1)
        return MerkleHasher(*self._geometry(*where))

    def matches(self, index: int, digest: bytes) -> bool:
        want = self.expected(index)
        return want is not None and digest == want


class BothPieces:
    """Hybrid verification: a piece must match its v1 SHA-1 *and* its v2 merkle hash (a hybrid
    whose halves name different data is refused piece by piece).  Where the v2 hash is not
    known (a magnet's info dict has no piece layers) the v1 hash alone decides."""

    __slots__ = ("v1", "v2")

    def __init__(self, v1: Sha1Pieces, v2: MerklePieces) -> None:
        self.v1 = v1
        self.v2 = v2

    def __getstate__(self) -> tuple[Sha1Pieces, MerklePieces]:
        return self.v1, self.v2

    def __setstate__(self, state: tuple[Sha1Pieces, MerklePieces]) -> None:
        self.v1, self.v2 = state

    @property
    def num_pieces(self) -> int:
        return self.v1.num_pieces

    def verify(self, index: int, data: Data) -> bool:
        if not self.v1.verify(index, data):
            return False
        want = self.v2.expected(index)
        return want is None or self.v2.piece_root(index, data) == want

    def hasher(self, index: int) -> PieceHasher:
        return _TwoHashers(self.v1.hasher(index), self.v2.hasher(index))

    def matches(self, index: int, digest: bytes) -> bool:
        v1, v2 = digest[:-HASH], digest[-HASH:]
        want = self.v2.expected(index)
        return self.v1.matches(index, v1) and (want is None or v2 == want)


class _TwoHashers:
    """One pass over a piece feeding the v1 and the v2 hasher; digest: v1's then v2's."""

    __slots__ = ("a", "b")

    def __init__(self, a: PieceHasher, b: PieceHasher) -> None:
        self.a = a
        self.b = b

    def update(self, data: Data, /) -> None:
        self.a.update(data)
        self.b.update(data)

    def digest(self) -> bytes:
        return self.a.digest() + self.b.digest()
