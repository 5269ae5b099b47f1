"""Making a .torrent from files on disk (``mptorrent create``): v1 (the default), v2 or hybrid.

v2 and hybrid torrents (BEP 52) are hashed in one pass over a padded layout (each file
starts on a piece boundary): each piece's merkle subtree root (and, for a hybrid, its SHA-1
over the padded piece) in parallel processes, like v1; then each file's piece layer and root
are put together from its pieces' roots.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, TypeAlias

from mptorrent.disk import checker
from mptorrent.disk.storage import Layout
from mptorrent.errors import MptorrentError, StorageError
from mptorrent.proto import merkle, metainfo
from mptorrent.proto.hashing import Sha1Pieces
from mptorrent.proto.metainfo import FileEntry
from mptorrent.record import Record, frozen

Version: TypeAlias = Literal["v1", "v2", "hybrid"]
VERSIONS: tuple[Version, ...] = ("v1", "v2", "hybrid")

MIN_PIECE = 16 * 1024
MAX_PIECE = 16 * 1024 * 1024
TARGET_PIECES = 2000  # auto size: the smallest power of two giving at most this many


class CreateError(MptorrentError):
    """``mptorrent create`` cannot make a torrent of what it was given (nothing but empty files);
    exits with the generic status 1."""

    pass


@frozen(slots=False)
class Source(Record):
    """The files :func:`scan` found to make a torrent of, in the order their bytes are hashed;
    ``paths[i]`` is where ``files[i]`` is read from."""

    name: str
    files: tuple[FileEntry, ...]  # path relative to the torrent root
    paths: tuple[str, ...]
    multi_file: bool

    @property
    def total_length(self) -> int:
        return sum(f.length for f in self.files)


def scan(path: str | Path) -> Source:
    """The regular files under ``path`` in a stable order; symlinks are not followed."""
    root = Path(os.path.abspath(path))
    if not root.exists():
        raise StorageError(f"{path}: no such file or directory")
    name = root.name
    if root.is_file():
        size = root.stat().st_size
        return Source(name, (FileEntry((name,), size, 0),), (str(root),), False)
    if not root.is_dir():
        raise StorageError(f"{path} is neither a regular file nor a directory")
    found: list[tuple[tuple[str, ...], str]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root).parts
        for fn in sorted(filenames):
            full = os.path.join(dirpath, fn)
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            found.append(((*rel, fn), full))
    found.sort(key=lambda item: item[0])
    if not found:
        raise StorageError(f"{path} holds no files")
    files: list[FileEntry] = []
    offset = 0
    for parts, full in found:
        size = os.stat(full).st_size
        files.append(FileEntry(parts, size, offset))
        offset += size
    return Source(name, tuple(files), tuple(p for _, p in found), True)


def auto_piece_length(total: int) -> int:
    size = MIN_PIECE
    while size < MAX_PIECE and -(-total // size) > TARGET_PIECES:
        size *= 2
    return size


def parse_piece_size(text: str) -> int | None:
    """'auto' -> None; '256K', '1M', '16384' -> bytes (a power of two in 16K..16M)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    if t == "AUTO":
        return None
    mult = 1
    if t and t[-1] in "KM":
        mult = 1024 if t[-1] == "K" else 1024 * 1024
        t = t[:-1]
    if not t.isdigit():
        raise ValueError(f"piece size {text!r} is not a size like 256K or 1M")
    n = int(t) * mult
    if n < MIN_PIECE or n > MAX_PIECE or n & (n - 1):
        raise ValueError(f"piece size {text!r} must be a power of two from 16K to 16M")
    return n


def create(
    path: str | Path,
    *,
    trackers: list[list[str]] | None = None,
    piece_length: int | None = None,
    jobs: int = 1,
    private: bool = False,
    comment: str | None = None,
    web_seeds: list[str] | None = None,
    progress: checker.Progress | None = None,
    version: Version = "v1",
) -> bytes:
    src = scan(path)
    total = src.total_length
    if total == 0:
        raise CreateError(f"{path} holds no data (all files are empty)")
    pl = piece_length or auto_piece_length(total)
    if version != "v1":
        return _create_v2(
            src, pl, hybrid=version == "hybrid", jobs=jobs, progress=progress, trackers=trackers,
            web_seeds=web_seeds, private=private, comment=comment,
        )  # fmt: skip
    layout = Layout(pl, total, src.files, src.paths)
    digests = bytearray(20 * layout.num_pieces)
    for index, digest in checker.hash_pieces(layout, jobs=jobs, progress=progress):
        if digest is None:
            raise StorageError(f"a file under {path} changed or vanished while hashing")
        digests[index * 20 : index * 20 + 20] = digest
    return metainfo.build(
        name=src.name,
        piece_length=pl,
        pieces=bytes(digests),
        files=[(f.path, f.length) for f in src.files] if src.multi_file else None,
        length=None if src.multi_file else total,
        trackers=trackers,
        web_seeds=web_seeds,
        private=private,
        comment=comment,
    )


def _create_v2(
    src: Source, pl: int, *, hybrid: bool, jobs: int, progress: checker.Progress | None,
    trackers: list[list[str]] | None, web_seeds: list[str] | None, private: bool,
    comment: str | None,
) -> bytes:  # fmt: skip
    # Each file on a piece boundary: padding after every file that does not end on one but
    # the last (as build_v2 writes the hybrid's v1 list: the SHA-1 of the last piece covers
    # no padding).
    files: list[FileEntry] = []
    paths: list[str | None] = []
    offset = 0
    for n, (f, p) in enumerate(zip(src.files, src.paths, strict=True)):
        files.append(FileEntry(f.path, f.length, offset))
        paths.append(p)
        offset += f.length
        if f.length % pl and n < len(src.files) - 1:
            pad = pl - f.length % pl
            files.append(FileEntry((metainfo.PAD_DIR, str(pad)), pad, offset, True))
            paths.append(None)
            offset += pad
    layout = Layout(pl, offset, tuple(files), tuple(paths))
    n = layout.num_pieces
    entries = [
        merkle.V2File(f.offset // pl, f.length, None, None)
        for f in files
        if f.length and not f.padding
    ]
    tree = merkle.MerklePieces(pl, n, entries)
    # hashers only: a hybrid's digest is its SHA-1 then its merkle root
    hashers = merkle.BothPieces(Sha1Pieces(bytes(20 * n)), tree) if hybrid else tree
    roots: list[bytes] = [b""] * n
    sha1 = bytearray(20 * n)
    for index, digest in checker.hash_pieces(
        layout, jobs=jobs, progress=progress, verifier=hashers
    ):
        if digest is None:
            raise StorageError(f"a file under {src.name} changed or vanished while hashing")
        roots[index] = digest[-merkle.HASH :]
        if hybrid:
            sha1[index * 20 : index * 20 + 20] = digest[:20]
    v2files: list[tuple[tuple[str, ...], int, bytes | None]] = []
    layers: dict[bytes, bytes] = {}
    for e, f in zip(entries, (f for f in files if f.length and not f.padding), strict=True):
        count = -(-e.length // pl)
        if count == 1:
            v2files.append((f.path, f.length, roots[e.first_piece]))
            continue
        layer = b"".join(roots[e.first_piece : e.first_piece + count])
        root = merkle.layer_root(layer, pl)
        layers[root] = layer
        v2files.append((f.path, f.length, root))
    # empty files, in their places: the tree and the v1 list keep the scan's order
    by_path = {p: (p, length, root) for p, length, root in v2files}
    ordered = [by_path.get(f.path, (f.path, 0, None)) for f in src.files]
    return metainfo.build_v2(
        name=src.name,
        piece_length=pl,
        files=ordered,
        piece_layers=layers,
        multi_file=src.multi_file,
        v1_pieces=bytes(sha1) if hybrid else None,
        trackers=trackers,
        web_seeds=web_seeds,
        private=private,
        comment=comment,
    )
