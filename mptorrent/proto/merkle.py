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
from collections.abc import Callable, Sequence
from typing import NamedTuple

from mptorrent.errors import BadTorrent
from mptorrent.proto.hashing import Data, PieceHasher, Sha1Pieces
from mptorrent.record import Record, frozen

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

    __slots__ = ("_firsts", "_trees", "files", "num_pieces", "piece_length")

    def __init__(self, piece_length: int, num_pieces: int, files: Sequence[V2File]) -> None:
        if piece_length < BLOCK or piece_length & (piece_length - 1):
            raise BadTorrent(f"piece length {piece_length} is not a power of two of 16 KiB or more")
        self.piece_length = piece_length
        self.num_pieces = num_pieces
        self.files = tuple(sorted(files, key=lambda f: f.first_piece))
        self._firsts = [f.first_piece for f in self.files]
        self._trees: dict[bytes, _FileTree] = {}

    def __getstate__(self) -> tuple[int, int, tuple[V2File, ...]]:
        return self.piece_length, self.num_pieces, self.files

    def __setstate__(self, state: tuple[int, int, tuple[V2File, ...]]) -> None:
        self.piece_length, self.num_pieces, self.files = state
        self._firsts = [f.first_piece for f in self.files]
        self._trees = {}

    def file_tree(self, root: bytes) -> _FileTree | None:
        """The file whose pieces root is ``root``, for answering hash requests (cached)."""
        tree = self._trees.get(root)
        if tree is None:
            entry = next((f for f in self.files if f.root == root), None)
            if entry is None:
                return None
            tree = self._trees[root] = _FileTree(entry, self.piece_length)
        return tree

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

    def piece_leaves(self, index: int, data: Data) -> list[bytes] | None:
        """The leaf hashes of piece ``index`` whose bytes are ``data`` (its file's bytes only)."""
        where = self.locate(index)
        if where is None:
            return None
        length, _width = self._geometry(*where)
        return leaf_hashes(data, length) if len(data) >= length else None

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


# -- BEP 52 hash requests: answering them, and fetching missing piece layers -----------------

MAX_HASH_COUNT = 8192  # hashes one request may ask for (libtorrent's limit too)
LAYER_CHUNK = 512  # piece-layer hashes asked for at once (BEP 52: SHOULD NOT exceed 512)


@frozen
class HashRange(Record):
    """The fields shared by BEP 52's hash request, hashes and hash reject messages: ``count``
    hashes of the tree of the file whose root is ``root``, from ``index`` in layer ``base`` (0:
    the 16 KiB leaves), with the uncle hashes of ``proof_layers`` layers above them."""

    root: bytes
    base: int
    index: int
    count: int
    proof_layers: int


def uncles_in(req: HashRange) -> int:
    """How many uncle hashes follow the ``count`` hashes in an answer to ``req``: a proof layer
    is left out while the requested hashes hold the whole layer below it (BEP 52)."""
    return max(0, req.proof_layers - log2(next_pow2(req.count)) + 1)


def _pairs(row: list[bytes]) -> list[bytes]:
    it = iter(row)
    return [_sha256(a + b).digest() for a, b in zip(it, it, strict=True)]


def _layers_up(row: list[bytes], width: int, level: int) -> list[list[bytes]]:
    """Every layer from ``row`` (at ``level``, filled with pad hashes to ``width``) to the root."""
    row = row + [_PAD[level]] * (width - len(row))
    out = [row]
    while len(row) > 1:
        row = _pairs(row)
        out.append(row)
    return out


class _FileTree:
    """What is needed to answer hash requests for one file: its layers from the piece layer up
    (built once, then kept: a request costs a lookup, not a pass over the layer)."""

    __slots__ = ("entry", "piece_level", "root_level", "upper")

    def __init__(self, entry: V2File, piece_length: int) -> None:
        self.entry = entry
        self.piece_level = log2(piece_length // BLOCK)
        self.root_level = log2(next_pow2(blocks_in(entry.length)))
        self.upper: list[list[bytes]] | None = None
        if entry.length > piece_length and entry.layer is not None:
            hashes = [entry.layer[o : o + HASH] for o in range(0, len(entry.layer), HASH)]
            self.upper = _layers_up(hashes, next_pow2(len(hashes)), self.piece_level)


LeafSource = Callable[[int], "list[bytes] | None"]  # piece index -> its leaf hashes, or None


def answer(v: MerklePieces, req: HashRange, leaves: LeafSource | None = None) -> bytes | None:
    """The hashes (then uncles) that answer ``req``, or None: reject it.  Layers at or above the
    piece layer come from the torrent's piece layers; below it, from ``leaves`` (the leaf
    hashes of a piece we have, read from disk), for a range inside one piece."""
    tree = v.file_tree(req.root)
    if tree is None:
        return None
    base, index, count, proof = req.base, req.index, req.count, req.proof_layers
    top = tree.root_level
    if not 0 <= base < top or not 1 <= count <= MAX_HASH_COUNT or count & (count - 1):
        return None
    if index < 0 or index % count or index + count > (1 << (top - base)):
        return None
    if not 0 <= proof < top - base:
        return None
    p_level = tree.piece_level
    below: list[list[bytes]] | None = None  # the piece's own layers, for levels under P
    if base < p_level or (tree.upper is None and top <= p_level):
        first = (index << base) >> p_level
        last = ((index + count - 1) << base) >> p_level
        if first != last or leaves is None:
            return None
        got = leaves(tree.entry.first_piece + first)
        if got is None:
            return None
        width = 1 << min(p_level, top)
        below = _layers_up(got, width, 0)

    def node(level: int, i: int) -> bytes | None:
        if below is not None and level < len(below) and (level < p_level or tree.upper is None):
            row = below[level]
            return row[i % len(row)]
        if tree.upper is not None and level >= p_level:
            row = tree.upper[level - p_level]
            return row[i] if i < len(row) else None
        return None

    out: list[bytes] = []
    for i in range(index, index + count):
        h = node(base, i)
        if h is None:
            return None
        out.append(h)
    h_levels = log2(count)
    at = index >> h_levels
    for j in range(uncles_in(req)):
        h = node(base + h_levels + j, (at >> j) ^ 1)
        if h is None:
            return None
        out.append(h)
    return b"".join(out)


def check_answer(req: HashRange, hashes: bytes, root_level: int) -> bool:
    """Whether ``hashes``, the answer to our ``req`` (whose uncles reach the root), prove the
    requested hashes against ``req.root`` in a tree whose root is ``root_level`` layers up."""
    n = req.count + uncles_in(req)
    if len(hashes) != n * HASH:
        return False
    row = [hashes[o : o + HASH] for o in range(0, req.count * HASH, HASH)]
    node = root_of(row, req.count, req.base)
    level = req.base + log2(req.count)
    at = req.index >> log2(req.count)
    for o in range(req.count * HASH, len(hashes), HASH):
        uncle = hashes[o : o + HASH]
        node = _sha256(node + uncle if at % 2 == 0 else uncle + node).digest()
        at //= 2
        level += 1
    return level == root_level and node == req.root


class LayerFetch:
    """Sans-IO: the piece layers a torrent from a magnet link lacks, fetched with hash requests.

    Each missing layer is asked for in chunks of up to 512 hashes with the uncles up to the
    file's root, so every answer is checked on its own; a chunk that is rejected, or whose
    proof fails, goes back to be asked of another peer (and a peer that lied is not asked
    again).  ``P`` identifies a peer to the caller.
    """

    def __init__(self, v: MerklePieces) -> None:
        self._pl = v.piece_length
        self._level = log2(v.piece_length // BLOCK)
        self._todo: list[HashRange] = []
        self._layers: dict[bytes, bytearray] = {}
        self._chunks_left: dict[bytes, int] = {}
        self._pieces: dict[bytes, int] = {}
        self._top: dict[bytes, int] = {}
        self._asked: dict[HashRange, object] = {}
        self._liars: set[object] = set()
        for f in v.files:
            if f.length <= v.piece_length or f.layer is not None or f.root is None:
                continue
            if f.root in self._layers:
                continue
            pieces = -(-f.length // v.piece_length)
            top = log2(next_pow2(blocks_in(f.length)))
            chunk = min(LAYER_CHUNK, next_pow2(pieces))
            self._layers[f.root] = bytearray(HASH * pieces)
            self._pieces[f.root] = pieces
            self._top[f.root] = top
            for index in range(0, pieces, chunk):
                count = min(chunk, next_pow2(pieces - index))
                self._todo.append(
                    HashRange(f.root, self._level, index, count, top - self._level - 1)
                )
            self._chunks_left[f.root] = -(-pieces // chunk)

    @property
    def complete(self) -> bool:
        return not any(self._chunks_left.values())

    def next_request(self, peer: object) -> HashRange | None:
        """A chunk to ask ``peer`` for, if any is left unasked (and the peer has not lied)."""
        if peer in self._liars or not self._todo:
            return None
        req = self._todo.pop(0)
        self._asked[req] = peer
        return req

    def forget(self, peer: object) -> None:
        """``peer`` is gone: what it was asked goes back to be asked of another."""
        for req, who in list(self._asked.items()):
            if who == peer:
                del self._asked[req]
                self._todo.append(req)

    def rejected(self, peer: object, req: HashRange) -> None:
        if self._asked.get(req) == peer:
            del self._asked[req]
            self._todo.append(req)

    def received(self, peer: object, req: HashRange, hashes: bytes) -> bool:
        """Take an answer; False if it was not asked of ``peer`` or does not prove out (the
        peer is then not asked again)."""
        if self._asked.get(req) != peer:
            return False
        del self._asked[req]
        if not check_answer(req, hashes, self._top[req.root]):
            self._liars.add(peer)
            self._todo.append(req)
            return False
        layer = self._layers[req.root]
        keep = min(req.count, self._pieces[req.root] - req.index)
        layer[req.index * HASH : (req.index + keep) * HASH] = hashes[: keep * HASH]
        self._chunks_left[req.root] -= 1
        return True

    def layers(self) -> tuple[tuple[bytes, bytes], ...]:
        """(pieces root, piece layer) of every layer fetched whole."""
        return tuple(
            (root, bytes(layer))
            for root, layer in self._layers.items()
            if not self._chunks_left[root]
        )
