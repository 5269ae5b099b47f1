"""Validated, typed view of a .torrent file (BEP 3, 12, 19, 27, 47, 52).

Everything in a .torrent is untrusted input from the internet.  Parsing either
returns a frozen :class:`Metainfo` whose every path is a safe relative path and
whose lengths, offsets and piece hashes agree, or raises :class:`BadTorrent`
with a one-line reason.

What the download needs (info dict, piece hashes, paths) is checked strictly.
What it can do without (trackers, web seeds) is checked leniently: a bad entry
is skipped and described in :attr:`Metainfo.warnings`, one printable line each.
BitTorrent v2 (BEP 52): ``meta version`` 2 with a ``file tree`` is read, v2-only or hybrid.
v2 pieces are aligned to files: a v2-only torrent's linear byte space gets a padding file
after every file that does not end on a piece boundary (as libtorrent places them), so the
storage, the wire and the picker see the same piece space as for a hybrid, whose v1 file
list carries those padding files itself.  Every ``piece layers`` entry a file needs is
checked against the file's ``pieces root`` here; a hybrid whose v1 and v2 halves describe
different files is refused (a known attack: the two swarms would get different data).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from mptorrent.errors import BadTorrent, BencodeError
from mptorrent.proto import bencode
from mptorrent.proto.bencode import BValue, Encodable
from mptorrent.proto.hashing import SHA1_LEN, PieceVerifier, Sha1Pieces, info_hash_v1
from mptorrent.record import Record, frozen

if TYPE_CHECKING:
    # v2 only: loaded by the functions that need it, not with every v1 fetch
    from mptorrent.proto import merkle

MAX_PIECES = 2_097_152  # libtorrent max_pieces
MAX_FILES = 200_000
MAX_PIECE_LENGTH = 256 * 1024 * 1024
MAX_COMPONENT_BYTES = 255  # what common filesystems allow for one name
MAX_PATH_BYTES = 4095  # Linux PATH_MAX (4096) less the NUL: longer can never be created
MAX_TOTAL_LENGTH = 1 << 53  # 8 PiB; beyond any real torrent, keeps arithmetic exact
HASH_LEN = SHA1_LEN  # a v1 piece hash
META_VERSION_V2 = 2  # BEP 52; a higher version must be refused
TRACKER_SCHEMES = frozenset({"http", "https", "udp"})
MAX_WARNINGS = 10  # a hostile torrent could hold a million bad tracker entries

_DRIVE = re.compile(r"^[A-Za-z]:")


@frozen
class FileEntry(Record):
    """One file of the torrent, placed in the torrent's linear byte space."""

    path: tuple[str, ...]  # components below the torrent's root (the name for single-file)
    length: int
    offset: int
    padding: bool = False  # BEP 47 padding file: zeros, never written to disk
    pieces_root: bytes | None = None  # v2: the file's merkle root (None: v1, or empty file)


@frozen
class Metainfo(Record):
    """A .torrent that passed every check of :func:`parse`; frozen and picklable (each worker gets a
    copy). ``info_hash`` hashes the raw info bytes, never a re-encoding."""

    info_hash: bytes
    name: str
    piece_length: int
    pieces: bytes = field(repr=False)  # concatenated 20-byte SHA-1 digests
    total_length: int
    files: tuple[FileEntry, ...]
    multi_file: bool
    trackers: tuple[tuple[str, ...], ...] = ()  # BEP 12 tiers; a lone announce is one tier
    web_seeds: tuple[str, ...] = ()
    private: bool = False
    comment: str | None = None
    created_by: str | None = None
    creation_date: int | None = None
    info_bytes: bytes = field(default=b"", repr=False)  # raw info dict, for BEP 9
    # Skipped tracker and web seed entries and other oddities: printable lines for the user.
    warnings: tuple[str, ...] = ()
    # BEP 52.  ``info_hash`` is then what the wire and trackers use: the v1 hash of a hybrid,
    # the v2 hash cut to 20 bytes for a v2-only torrent.
    info_hash_v2: bytes | None = None  # SHA-256 of the info dict
    # (pieces root, piece layer) for each file larger than a piece whose layer is known
    piece_layers: tuple[tuple[bytes, bytes], ...] = field(default=(), repr=False)

    @property
    def num_pieces(self) -> int:
        if not self.pieces:  # v2-only: no v1 hashes to count
            return -(-self.total_length // self.piece_length)
        return len(self.pieces) // HASH_LEN

    @property
    def meta_version(self) -> Literal["v1", "v2", "hybrid"]:
        if self.info_hash_v2 is None:
            return "v1"
        return "hybrid" if self.pieces else "v2"

    @property
    def info_hash_hex(self) -> str:
        return self.info_hash.hex()

    def piece_hash(self, index: int) -> bytes:
        return self.pieces[index * HASH_LEN : (index + 1) * HASH_LEN]

    def verifier(self) -> PieceVerifier:
        """What checks this torrent's pieces: SHA-1 (v1), merkle (v2), both (hybrid)."""
        if self.info_hash_v2 is None:
            return Sha1Pieces(self.pieces)
        from mptorrent.proto import merkle

        v2 = self.merkle_verifier()
        return v2 if not self.pieces else merkle.BothPieces(Sha1Pieces(self.pieces), v2)

    def merkle_verifier(self) -> merkle.MerklePieces:
        """The v2 half of a v2 or hybrid torrent's verification."""
        from mptorrent.proto import merkle

        layers = dict(self.piece_layers)
        pl = self.piece_length
        files = [
            merkle.V2File(f.offset // pl, f.length, f.pieces_root, layers.get(f.pieces_root))
            for f in self.files
            if f.length and not f.padding and f.pieces_root is not None
        ]
        return merkle.MerklePieces(pl, self.num_pieces, files)

    def piece_size(self, index: int) -> int:
        if index == self.num_pieces - 1:
            return self.total_length - index * self.piece_length
        return self.piece_length

    @property
    def data_files(self) -> tuple[FileEntry, ...]:
        """The files that exist on disk (everything but padding)."""
        return tuple(f for f in self.files if not f.padding)


def load(path: str | Path) -> Metainfo:
    """Read and parse a .torrent file, refusing anything over the size cap."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            data = fh.read(bencode.MAX_TORRENT_SIZE + 1)
    except IsADirectoryError:
        raise BadTorrent(f"{p} is a directory, not a .torrent file") from None
    except OSError as exc:
        raise BadTorrent(f"cannot read {p}: {exc.strerror or exc}") from None
    try:
        return parse(data)
    except BadTorrent as exc:
        raise BadTorrent(f"{p}: {exc}") from None


def parse(data: bytes, *, missing_layers_ok: bool = False) -> Metainfo:
    """The :class:`Metainfo` of a .torrent's bytes, or :class:`BadTorrent`.

    ``missing_layers_ok``: a v2 file larger than a piece may lack its piece layer (the info
    dict of a magnet link carries none; the hashes must then come from peers).
    """
    try:
        top, spans = bencode.decode_with_spans(data, max_size=bencode.MAX_TORRENT_SIZE)
    except BencodeError as exc:
        raise BadTorrent(f"not a valid torrent file ({exc})") from None
    if not isinstance(top, dict):
        raise BadTorrent("not a valid torrent file (top level is not a dictionary)")
    info = top.get(b"info")
    if not isinstance(info, dict):
        raise BadTorrent("missing or ill-typed 'info' dictionary")
    start, end = spans[b"info"]
    info_bytes = bytes(data[start:end])
    info_hash = info_hash_v1(info_bytes)
    v2 = _check_version(info)
    warnings = _Warnings()

    piece_length = _int(info, b"piece length", "info")
    if not 0 < piece_length <= MAX_PIECE_LENGTH:
        raise BadTorrent(f"piece length {piece_length} is out of range")
    if v2:
        tree = _V2.parse(info, top, piece_length, missing_layers_ok)
        if b"pieces" not in info:
            return _v2_only(top, info, info_bytes, tree, warnings)
    pieces = _bytes(info, b"pieces", "info")
    if len(pieces) % HASH_LEN:
        raise BadTorrent(f"'pieces' is {len(pieces)} bytes, not a multiple of {HASH_LEN}")
    num_pieces = len(pieces) // HASH_LEN
    if num_pieces > MAX_PIECES:
        raise BadTorrent(f"{num_pieces} pieces is over the limit of {MAX_PIECES}")

    name = _name(info, b"name", "info")
    if b"files" in info:
        multi = True
        files = _parse_files(info[b"files"])
        if b"length" in info:  # A11: libtorrent lets the file list win too
            warnings.add("info has both 'length' and 'files'; it is read as multi-file")
    elif b"length" in info:
        multi = False
        length = _int(info, b"length", "info")
        if length < 0:
            raise BadTorrent(f"negative length {length}")
        files = [FileEntry((name,), length, 0)]
    else:
        raise BadTorrent("info has neither 'length' nor 'files'")
    _check_component(name, "name")
    _check_path_lengths(name, files, multi)
    total = sum(f.length for f in files)
    _check_total(total)
    expected = -(-total // piece_length)
    if expected != num_pieces:
        raise BadTorrent(
            f"{num_pieces} piece hashes for {total} bytes in {piece_length}-byte pieces "
            f"(expected {expected})"
        )

    info_hash_v2 = layers = None
    if v2:
        files = tree.match_v1(name, files, multi)
        info_hash_v2, layers = hashlib.sha256(info_bytes).digest(), tree.layers
    return _metainfo(
        top, info, info_bytes, warnings, info_hash=info_hash, info_hash_v2=info_hash_v2,
        piece_layers=layers or (), name=name, piece_length=piece_length, pieces=pieces,
        total=total, files=files, multi=multi,
    )  # fmt: skip


def _v2_only(
    top: dict[bytes, BValue], info: dict[bytes, BValue], info_bytes: bytes, tree: _V2,
    warnings: _Warnings,
) -> Metainfo:  # fmt: skip
    """A v2-only torrent: the wire and trackers know it by its v2 info-hash cut to 20 bytes."""
    name = _name(info, b"name", "info")
    _check_component(name, "name")
    files = tree.linear(name)
    _check_path_lengths(name, files, not tree.single)
    total = files[-1].offset + files[-1].length
    _check_total(total)
    num_pieces = -(-total // tree.piece_length)
    if num_pieces > MAX_PIECES:
        raise BadTorrent(f"{num_pieces} pieces is over the limit of {MAX_PIECES}")
    info_hash_v2 = hashlib.sha256(info_bytes).digest()
    return _metainfo(
        top, info, info_bytes, warnings, info_hash=info_hash_v2[:SHA1_LEN],
        info_hash_v2=info_hash_v2, piece_layers=tree.layers, name=name,
        piece_length=tree.piece_length, pieces=b"", total=total, files=files,
        multi=not tree.single,
    )  # fmt: skip


def _check_total(total: int) -> None:
    if total > MAX_TOTAL_LENGTH:
        raise BadTorrent(f"total length {total} is absurd")
    if total == 0:
        raise BadTorrent("torrent holds no data (total length 0)")


def _metainfo(
    top: dict[bytes, BValue], info: dict[bytes, BValue], info_bytes: bytes, warnings: _Warnings,
    *, info_hash: bytes, info_hash_v2: bytes | None, piece_layers: tuple[tuple[bytes, bytes], ...],
    name: str, piece_length: int, pieces: bytes, total: int, files: list[FileEntry], multi: bool,
) -> Metainfo:  # fmt: skip
    """The Metainfo of a v1, hybrid or v2-only torrent: what lies outside the piece scheme
    (trackers, web seeds, private, comment, dates) is read the same way for all three."""
    return Metainfo(
        info_hash=info_hash,
        info_hash_v2=info_hash_v2,
        piece_layers=piece_layers,
        name=name,
        piece_length=piece_length,
        pieces=pieces,
        total_length=total,
        files=tuple(files),
        multi_file=multi,
        trackers=_trackers(top, warnings),
        web_seeds=_web_seeds(top, warnings),
        private=info.get(b"private") == 1,
        comment=_opt_text(top, b"comment"),
        created_by=_opt_text(top, b"created by"),
        creation_date=date if isinstance(date := top.get(b"creation date"), int) else None,
        info_bytes=info_bytes,
        warnings=warnings.lines(),
    )


def _check_version(info: dict[bytes, BValue]) -> bool:
    """Whether the torrent is v2 (BEP 52: ``meta version`` 2); refuse versions from the future
    and a v2 half that is not there."""
    version = info.get(b"meta version")
    if version is not None:
        if not isinstance(version, int):
            raise BadTorrent("'meta version' in info is not an integer")
        if version > META_VERSION_V2:
            raise BadTorrent(f"meta version {version} is not supported")
    if version == META_VERSION_V2:
        if b"file tree" not in info:
            raise BadTorrent("meta version 2 without a 'file tree'")
        return True
    if b"pieces" not in info and b"file tree" in info:
        raise BadTorrent("a 'file tree' without 'meta version' 2")
    return False


PAD_DIR = ".pad"  # where libtorrent names padding files


@frozen
class _V2(Record):
    """The v2 half of an info dict: files in file-tree order, and the checked piece layers."""

    files: tuple[tuple[tuple[str, ...], int, bytes | None], ...]  # path, length, pieces root
    piece_length: int
    single: bool  # one file at the top of the tree: a single-file torrent
    layers: tuple[tuple[bytes, bytes], ...]

    @classmethod
    def parse(
        cls, info: dict[bytes, BValue], top: dict[bytes, BValue], piece_length: int,
        missing_layers_ok: bool,
    ) -> _V2:  # fmt: skip
        from mptorrent.proto import merkle

        if piece_length < merkle.BLOCK or piece_length & (piece_length - 1):
            raise BadTorrent(
                f"piece length {piece_length} of a v2 torrent is not a power of two "
                f"of 16 KiB or more"
            )
        tree = info.get(b"file tree")
        if not isinstance(tree, dict):
            raise BadTorrent("'file tree' in info is not a dictionary")
        files = _walk_tree(tree)
        single = len(files) == 1 and len(files[0][0]) == 1
        raw = top.get(b"piece layers", {})
        if not isinstance(raw, dict):
            raise BadTorrent("'piece layers' is not a dictionary")
        layers: dict[bytes, bytes] = {}
        for path, length, root in files:
            if length <= piece_length or root is None or root in layers:
                continue
            where = f"file '{_shown('/'.join(path), 60)}'"
            layer = raw.get(root)
            if layer is None:
                if missing_layers_ok:
                    continue
                raise BadTorrent(f"no piece layer for {where} (larger than a piece)")
            if not isinstance(layer, bytes):
                raise BadTorrent(f"piece layer of {where} is not a string")
            merkle.check_layer(root, layer, length, piece_length, where)
            layers[root] = layer
        return cls(tuple(files), piece_length, single, tuple(layers.items()))

    def linear(self, name: str) -> list[FileEntry]:
        """The v2-only torrent's byte space: each file, then padding to the next piece
        boundary (after the last file too, as libtorrent does, so every piece is whole)."""
        out: list[FileEntry] = []
        offset = 0
        piece_length = self.piece_length
        for path, length, root in self.files:
            out.append(FileEntry((name,) if self.single else path, length, offset, False, root))
            offset += length
            if length % piece_length:
                pad = piece_length - length % piece_length
                out.append(FileEntry((PAD_DIR, str(pad)), pad, offset, True))
                offset += pad
        return out

    def match_v1(self, name: str, files: list[FileEntry], multi: bool) -> list[FileEntry]:
        """A hybrid's v1 files with their pieces roots, or :class:`BadTorrent` where the v1
        file list and the v2 file tree name different files, sizes or placements."""
        data = [f for f in files if not f.padding]
        what = "hybrid torrent's v1 'files' and v2 'file tree' disagree"
        if len(data) != len(self.files) or multi == self.single:
            raise BadTorrent(f"{what}: {len(data)} files against {len(self.files)}")
        roots: dict[int, bytes | None] = {}
        for n, (f, (path, length, root)) in enumerate(zip(data, self.files, strict=True)):
            if (f.path != path and multi) or f.length != length:
                raise BadTorrent(
                    f"{what} at file {n}: '{_shown('/'.join(f.path), 40)}' ({f.length} bytes) "
                    f"against '{_shown('/'.join(path), 40)}' ({length} bytes)"
                )
            if length and f.offset % self.piece_length:
                raise BadTorrent(f"{what}: file {n} does not start on a piece boundary")
            roots[id(f)] = root
        return [FileEntry(f.path, f.length, f.offset, f.padding, roots.get(id(f))) for f in files]


def _walk_tree(tree: dict[bytes, BValue]) -> list[tuple[tuple[str, ...], int, bytes | None]]:
    """The files of a BEP 52 ``file tree`` in order (depth first, keys sorted), each checked:
    safe names, a file node is ``{"": {length, pieces root}}`` and nothing else, no empty
    directory, no two paths the same.  Depth is bounded by the bencode decoder's limit."""
    from mptorrent.proto import merkle

    if b"" in tree:
        raise BadTorrent("'file tree' is itself a file, not a directory")
    if not tree:
        raise BadTorrent("'file tree' is empty")
    out: list[tuple[tuple[str, ...], int, bytes | None]] = []
    seen: set[tuple[str, ...]] = set()
    # depth first in key order, without recursion: a stack of directories being listed
    stack: list[tuple[tuple[str, ...], Iterator[tuple[bytes, BValue]]]] = [((), iter(tree.items()))]
    while stack:
        prefix, items = stack[-1]
        entry = next(items, None)
        if entry is None:
            stack.pop()
            continue
        key, child = entry
        text = _text(key)
        _check_component(text, "'file tree'")
        path = (*prefix, text)
        shown = _shown("/".join(path), 60)
        if path in seen:
            raise BadTorrent(f"duplicate path '{shown}' in 'file tree'")
        seen.add(path)
        if not isinstance(child, dict):
            raise BadTorrent(f"'file tree' entry '{shown}' is not a dictionary")
        if not child:
            raise BadTorrent(f"empty directory '{shown}' in 'file tree'")
        if b"" not in child:
            stack.append((path, iter(child.items())))
            continue
        if len(child) != 1:
            raise BadTorrent(f"'file tree' entry '{shown}' is both a file and a directory")
        leaf = child[b""]
        if not isinstance(leaf, dict):
            raise BadTorrent(f"'file tree' file '{shown}' is not a dictionary")
        length = _int(leaf, b"length", f"file '{shown}'")
        if not 0 <= length <= MAX_TOTAL_LENGTH:
            raise BadTorrent(f"file '{shown}' has length {length}")
        root = leaf.get(b"pieces root")
        if length == 0:
            root = None  # an empty file has no tree
        elif not isinstance(root, bytes) or len(root) != merkle.HASH:
            raise BadTorrent(f"file '{shown}' has no 32-byte 'pieces root'")
        out.append((path, length, root))
        if len(out) > MAX_FILES:
            raise BadTorrent(f"over {MAX_FILES} files in 'file tree'")
    return out


def _parse_files(raw: BValue) -> list[FileEntry]:
    if not isinstance(raw, list) or not raw:
        raise BadTorrent("'files' must be a non-empty list")
    if len(raw) > MAX_FILES:
        raise BadTorrent(f"{len(raw)} files is over the limit of {MAX_FILES}")
    files: list[FileEntry] = []
    seen: set[tuple[str, ...]] = set()
    dirs: set[tuple[str, ...]] = set()
    offset = 0
    for i, entry in enumerate(raw):
        where = f"files[{i}]"
        if not isinstance(entry, dict):
            raise BadTorrent(f"{where} is not a dictionary")
        length = _int(entry, b"length", where)
        if length < 0:
            raise BadTorrent(f"{where} has negative length {length}")
        key = b"path.utf-8" if b"path.utf-8" in entry else b"path"
        parts = entry.get(key)
        if not isinstance(parts, list) or not parts:
            raise BadTorrent(f"{where} has a missing or empty 'path'")
        path: list[str] = []
        for part in parts:
            if not isinstance(part, bytes):
                raise BadTorrent(f"{where} has a path component that is not a string")
            text = _text(part)
            _check_component(text, where)
            path.append(text)
        attr = entry.get(b"attr", b"")
        padding = isinstance(attr, bytes) and b"p" in attr
        tpath = tuple(path)
        if not padding:
            if tpath in seen or tpath in dirs:
                raise BadTorrent(f"duplicate path '{_shown('/'.join(tpath), 60)}'")
            for k in range(1, len(tpath)):
                if tpath[:k] in seen:
                    raise BadTorrent(f"path '{_shown('/'.join(tpath), 60)}' runs through a file")
                dirs.add(tpath[:k])
            seen.add(tpath)
        files.append(FileEntry(tpath, length, offset, padding))
        offset += length
        if offset > MAX_TOTAL_LENGTH:
            raise BadTorrent(f"total length {offset} is absurd")
    return files


def _check_component(text: str, where: str) -> None:
    """Refuse any path component that could leave the output directory."""
    shown = _shown(text, 80)
    if text in ("", ".", ".."):
        raise BadTorrent(f"unsafe path component '{shown}' in {where}")
    if "/" in text or "\\" in text or "\0" in text:
        raise BadTorrent(f"unsafe path component '{shown}' in {where}")
    if _DRIVE.match(text):
        raise BadTorrent(f"unsafe path component '{shown}' in {where} (drive letter)")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
        raise BadTorrent(f"path component longer than {MAX_COMPONENT_BYTES} bytes in {where}")


def _check_path_lengths(name: str, files: list[FileEntry], multi: bool) -> None:
    """Refuse paths no Linux filesystem can create, whatever the output directory."""
    if not multi:
        return  # the single file is just the name, checked as a component
    root = len(name.encode("utf-8", "surrogatepass"))
    for i, f in enumerate(files):
        size = root + sum(1 + len(c.encode("utf-8", "surrogatepass")) for c in f.path)
        if size > MAX_PATH_BYTES:
            shown = _shown("/".join(f.path), 60)
            raise BadTorrent(
                f"path of {size} bytes in files[{i}] ({shown}) is over the "
                f"{MAX_PATH_BYTES}-byte limit"
            )


def _shown(text: str, limit: int = 80) -> str:
    """``text`` with anything unprintable escaped, cut to ``limit`` characters *after*
    escaping (one control character becomes up to ten: a message stays one short line)."""
    out = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
        for c in text[: limit + 1]
    )
    return out if len(out) <= limit and len(text) <= limit else out[:limit] + "..."


def _text(raw: bytes) -> str:
    # libtorrent replaces undecodable sequences with '_'; do the same so names agree.
    return raw.decode("utf-8", "replace").replace("\ufffd", "_")


def _int(d: dict[bytes, BValue], key: bytes, where: str) -> int:
    v = d.get(key)
    if v is None:
        raise BadTorrent(f"missing '{key.decode()}' in {where}")
    if not isinstance(v, int):
        raise BadTorrent(f"'{key.decode()}' in {where} is not an integer")
    return v


def _bytes(d: dict[bytes, BValue], key: bytes, where: str) -> bytes:
    v = d.get(key)
    if v is None:
        raise BadTorrent(f"missing '{key.decode()}' in {where}")
    if not isinstance(v, bytes):
        raise BadTorrent(f"'{key.decode()}' in {where} is not a string")
    return v


def _name(d: dict[bytes, BValue], key: bytes, where: str) -> str:
    alt = d.get(key + b".utf-8")
    if isinstance(alt, bytes):
        return _text(alt)
    return _text(_bytes(d, key, where))


def _opt_text(d: dict[bytes, BValue], key: bytes) -> str | None:
    v = d.get(key)
    return _text(v) if isinstance(v, bytes) else None


class _Warnings:
    """Collects warnings, keeping the first MAX_WARNINGS and counting the rest."""

    def __init__(self) -> None:
        self._kept: list[str] = []
        self._dropped = 0

    def add(self, text: str) -> None:
        if text in self._kept:
            return
        if len(self._kept) < MAX_WARNINGS:
            self._kept.append(text)
        else:
            self._dropped += 1

    def lines(self) -> tuple[str, ...]:
        if self._dropped:
            return (*self._kept, f"... and {self._dropped} more warnings like these")
        return tuple(self._kept)


def _redact(url: str) -> str:
    # scheme://host:port only: private trackers put passkeys in paths and queries
    try:
        parts = urlsplit(url)
        if parts.scheme and parts.netloc:
            return _shown(f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}", 80)
    except ValueError:
        pass
    return _shown(url, 40)


def tracker_url_problem(url: str) -> str | None:
    """Why mptorrent cannot announce to ``url``, or None if it can."""
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        return "it contains spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"it is not a valid URL ({_shown(str(exc), 60)})"
    scheme = parts.scheme.lower()
    if scheme not in TRACKER_SCHEMES:
        return f"scheme {_shown(scheme, 20)!r} is not supported" if scheme else "it has no scheme"
    if not parts.hostname:
        return "it has no host"
    if scheme == "udp" and not port:
        return "a UDP tracker URL needs a port"
    return None


def _tracker(value: BValue, where: str, warnings: _Warnings) -> str | None:
    """One announce URL, or None (with a warning) if it is unusable."""
    if not isinstance(value, bytes):
        warnings.add(f"skipped a tracker in {where}: a {_kind(value)}, not a string")
        return None
    url = _text(value).strip()
    if not url:
        warnings.add(f"skipped an empty tracker URL in {where}")
        return None
    problem = tracker_url_problem(url)
    if problem is not None:
        warnings.add(f"skipped tracker {_redact(url)} in {where}: {problem}")
        return None
    return url


def _kind(value: object) -> str:
    return {int: "number", bytes: "string", list: "list", dict: "dictionary"}.get(
        type(value), type(value).__name__
    )


def _trackers(top: dict[bytes, BValue], warnings: _Warnings) -> tuple[tuple[str, ...], ...]:
    """BEP 12 tiers of usable trackers; every skipped entry leaves a warning."""
    tiers: list[tuple[str, ...]] = []
    seen: set[str] = set()
    raw = top.get(b"announce-list")
    if raw is not None and not isinstance(raw, list):
        warnings.add(f"ignored 'announce-list': a {_kind(raw)}, not a list of tiers")
    elif raw is not None:
        for n, tier in enumerate(raw):
            where = f"'announce-list' tier {n}"
            if not isinstance(tier, list):
                warnings.add(f"skipped {where}: a {_kind(tier)}, not a list")
                continue
            urls = []
            for value in tier:
                url = _tracker(value, where, warnings)
                if url is not None and url not in seen:
                    seen.add(url)
                    urls.append(url)
            if urls:
                tiers.append(tuple(urls))
            elif not tier:
                warnings.add(f"skipped {where}: it is empty")
    # BEP 12: 'announce' counts only when 'announce-list' gives nothing usable
    if not tiers and b"announce" in top:
        url = _tracker(top[b"announce"], "'announce'", warnings)
        if url is not None:
            tiers.append((url,))
    return tuple(tiers)


def _web_seeds(top: dict[bytes, BValue], warnings: _Warnings) -> tuple[str, ...]:
    raw = top.get(b"url-list")
    if raw is None:
        return ()
    items = [raw] if isinstance(raw, bytes) else raw
    if not isinstance(items, list):
        warnings.add(f"ignored 'url-list': a {_kind(raw)}, neither a string nor a list")
        return ()
    seeds = []
    for value in items:
        if not isinstance(value, bytes):
            warnings.add(f"skipped a web seed in 'url-list': a {_kind(value)}, not a string")
            continue
        url = _text(value).strip()
        if url:
            seeds.append(url)
    return tuple(seeds)


def build(
    *,
    name: str,
    piece_length: int,
    pieces: bytes,
    files: list[tuple[tuple[str, ...], int]] | None = None,
    length: int | None = None,
    trackers: list[list[str]] | None = None,
    web_seeds: list[str] | None = None,
    private: bool = False,
    comment: str | None = None,
    created_by: str | None = None,
    creation_date: int | None = None,
) -> bytes:
    """Encode a v1 .torrent.  ``files`` for multi-file torrents, else ``length``."""
    info: dict[bytes, Encodable] = {
        b"name": name.encode(),
        b"piece length": piece_length,
        b"pieces": pieces,
    }
    if files is not None:
        info[b"files"] = [
            {b"length": n, b"path": [p.encode() for p in parts]} for parts, n in files
        ]
    else:
        assert length is not None
        info[b"length"] = length
    if private:
        info[b"private"] = 1
    return _wrap(info, {}, trackers, web_seeds, comment, created_by, creation_date)


def _wrap(
    info: dict[bytes, Encodable], extra: dict[bytes, Encodable], trackers: list[list[str]] | None,
    web_seeds: list[str] | None, comment: str | None, created_by: str | None,
    creation_date: int | None,
) -> bytes:  # fmt: skip
    """The whole .torrent around an info dict: trackers, web seeds, comment, dates."""
    top: dict[bytes, Encodable] = {b"info": info, **extra}
    tiers = [t for t in (trackers or []) if t]
    if tiers:
        top[b"announce"] = tiers[0][0].encode()
        if len(tiers) > 1 or len(tiers[0]) > 1:
            top[b"announce-list"] = [[u.encode() for u in t] for t in tiers]
    if web_seeds:
        top[b"url-list"] = [u.encode() for u in web_seeds]
    if comment:
        top[b"comment"] = comment.encode()
    top[b"created by"] = (created_by or "mptorrent").encode()
    top[b"creation date"] = int(time.time()) if creation_date is None else creation_date
    return bencode.encode(top)


def build_v2(
    *,
    name: str,
    piece_length: int,
    files: list[tuple[tuple[str, ...], int, bytes | None]],
    piece_layers: dict[bytes, bytes],
    multi_file: bool,
    v1_pieces: bytes | None = None,
    trackers: list[list[str]] | None = None,
    web_seeds: list[str] | None = None,
    private: bool = False,
    comment: str | None = None,
    created_by: str | None = None,
    creation_date: int | None = None,
) -> bytes:
    """Encode a v2-only .torrent (BEP 52), or a hybrid one with ``v1_pieces``: then the v1
    ``files`` list gets a padding file after each file that does not end on a piece boundary,
    but the last, so that both halves place every file on a piece boundary."""
    tree: dict[bytes, Encodable] = {}
    for path, length, root in files:
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part.encode(), {})
            assert isinstance(child, dict)
            node = child
        leaf: dict[bytes, Encodable] = {b"length": length}
        if root is not None:
            leaf[b"pieces root"] = root
        node[path[-1].encode()] = {b"": leaf}
    info: dict[bytes, Encodable] = {
        b"file tree": tree,
        b"meta version": META_VERSION_V2,
        b"name": name.encode(),
        b"piece length": piece_length,
    }
    if v1_pieces is not None:
        info[b"pieces"] = v1_pieces
        if multi_file:
            v1: list[Encodable] = []
            for n, (path, length, _root) in enumerate(files):
                v1.append({b"length": length, b"path": [p.encode() for p in path]})
                pad = -length % piece_length
                if pad and n < len(files) - 1:
                    v1.append(
                        {
                            b"attr": b"p",
                            b"length": pad,
                            b"path": [PAD_DIR.encode(), str(pad).encode()],
                        }
                    )
            info[b"files"] = v1
        else:
            info[b"length"] = files[0][1]
    if private:
        info[b"private"] = 1
    return _wrap(info, {b"piece layers": piece_layers}, trackers, web_seeds, comment,
                 created_by, creation_date)  # fmt: skip
