"""The only module that opens data files.

A :class:`Layout` places the torrent's files under an output path and maps any
byte range of the torrent's linear space onto file slices.  A layout may select some
files only (``--only``): the others are neither created nor opened, and the bytes of
theirs that share a piece with a selected file (a piece is verified whole) go to the
*parts file*, ``.mptorrent.parts`` in the output folder, so a later fetch that selects
more files finds them there (``Layout.parts_rank`` says where each piece's bytes sit).
:class:`Storage` opens one mmap per non-empty file (each process opens its own, by path, so this
works under fork, spawn and forkserver alike) and reads, writes and hashes
pieces through them (a piece's new pages of a map made by ``pwrite`` of zeros first, under
a per-piece lock: see ``write_piece``).  :func:`prepare` is the coordinator's one-time set-up:
safe paths, free space, ``posix_fallocate`` and zero-length files.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import mmap
import os
import re
import shutil
import stat
import struct
from collections.abc import Collection, Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Literal, TypeAlias

from mptorrent.errors import DiskFull, StorageError, UnsafePath
from mptorrent.policy.picker import NORMAL, SKIP
from mptorrent.proto.hashing import PieceHasher, PieceVerifier, sha1_hasher
from mptorrent.proto.metainfo import FileEntry, Metainfo
from mptorrent.record import Record, frozen


@frozen
class Slice(Record):
    """The part of one file that a byte range of the torrent covers."""

    file_index: int
    file_offset: int
    length: int


@frozen(slots=False)
class Layout(Record):
    """Where the torrent's linear byte space lies in files on disk. Pure data: it is pickled to
    every worker, which opens its own :class:`Storage` on it."""

    piece_length: int
    total_length: int
    files: tuple[FileEntry, ...]
    paths: tuple[str | None, ...]  # absolute path of each file; None for padding
    # --only: one flag per file (None: every file); the unselected are not created
    selected: tuple[bool, ...] | None = None
    parts_path: str | None = None  # where unselected bytes of shared pieces go (multi-file)

    @classmethod
    def for_torrent(
        cls, meta: Metainfo, output: str | Path, selected: Iterable[int] | None = None
    ) -> Layout:
        """Single-file: ``output`` is the file.  Multi-file: the directory of files.

        ``selected``: the indices of the files wanted (None: all of them)."""
        root = Path(os.path.abspath(output))
        paths: list[str | None] = []
        for f in meta.files:
            if f.padding:
                paths.append(None)
            elif meta.multi_file:
                paths.append(str(root.joinpath(*f.path)))
            else:
                paths.append(str(root))
        flags = None
        if selected is not None:
            chosen = set(selected)
            flags = tuple(i in chosen for i in range(len(meta.files)))
            if all(flags[i] for i, f in enumerate(meta.files) if not f.padding):
                flags = None  # every file: the same as no selection
        parts = None
        if meta.multi_file:
            parts = str(root / PARTS_NAME)
            while parts in paths:  # a torrent may name a file of its own so: step aside
                parts += "_"
        return cls(meta.piece_length, meta.total_length, meta.files, tuple(paths), flags, parts)

    def is_selected(self, file_index: int) -> bool:
        return self.selected is None or self.selected[file_index]

    @cached_property
    def parts_rank(self) -> dict[int, int]:
        """Piece -> its slot in the parts file, for every piece that holds bytes of two or
        more files.  It depends on the torrent alone, never on a selection, so any later
        selection finds the bytes an earlier one put there."""
        pl = self.piece_length
        shared = sorted({f.offset // pl for f in self.files if f.length and f.offset % pl})
        return {piece: rank for rank, piece in enumerate(shared)}

    def priorities(self) -> bytearray:
        """One picker priority per piece: NORMAL where a selected file has bytes, else SKIP."""
        if self.selected is None:
            return bytearray([NORMAL]) * self.num_pieces
        prio = bytearray([SKIP]) * self.num_pieces
        for i, f in enumerate(self.files):
            if self.selected[i] and not f.padding:
                for p in self.file_pieces(i):
                    prio[p] = NORMAL
        return prio

    @cached_property
    def _selected_in_piece(self) -> dict[int, int]:
        """Bytes of selected files in each piece that also holds unselected ones."""
        out: dict[int, int] = {}
        if self.selected is None:
            return out
        for piece in self.parts_rank:
            slices = self.piece_slices(piece)
            if any(not self.is_selected(s.file_index) for s in slices):
                out[piece] = sum(s.length for s in slices if self.is_selected(s.file_index))
        return out

    def wanted_size(self, index: int) -> int:
        """Bytes of selected files in a piece (its size with every file selected); O(1)."""
        got = self._selected_in_piece.get(index)
        return self.piece_size(index) if got is None else got

    @property
    def selected_length(self) -> int:
        """Bytes in the selected files (padding not counted unless nothing is selected)."""
        if self.selected is None:
            return self.total_length
        return sum(f.length for i, f in enumerate(self.files) if self.selected[i] and not f.padding)

    @cached_property
    def needs_parts(self) -> bool:
        """Some piece holds bytes of a selected file and of an unselected one (padding,
        never stored, does not count)."""
        files = self.files
        return any(
            not self.is_selected(s.file_index) and not files[s.file_index].padding
            for piece in self._selected_in_piece
            for s in self.piece_slices(piece)
        )

    @property
    def num_pieces(self) -> int:
        return -(-self.total_length // self.piece_length)

    def piece_size(self, index: int) -> int:
        if index == self.num_pieces - 1:
            return self.total_length - index * self.piece_length
        return self.piece_length

    @cached_property
    def _offsets(self) -> list[int]:
        return [f.offset for f in self.files]

    def slices(self, start: int, length: int) -> Iterator[Slice]:
        """File slices covering bytes ``[start, start + length)`` of the torrent."""
        i = max(0, bisect.bisect_right(self._offsets, start) - 1)
        end = start + length
        pos = start
        while pos < end and i < len(self.files):
            f = self.files[i]
            f_end = f.offset + f.length
            if f.length and pos < f_end:
                n = min(end, f_end) - pos
                yield Slice(i, pos - f.offset, n)
                pos += n
            i += 1

    def piece_slices(self, index: int) -> list[Slice]:
        return list(self.slices(index * self.piece_length, self.piece_size(index)))

    def file_pieces(self, file_index: int) -> range:
        """The pieces that hold any byte of one file."""
        f = self.files[file_index]
        if f.length == 0:
            return range(0)
        return range(
            f.offset // self.piece_length, (f.offset + f.length - 1) // self.piece_length + 1
        )


PARTS_NAME = ".mptorrent.parts"
_ZEROS = bytes(1 << 20)


# How pieces reach the files: copies into a shared mapping, or pread/pwrite on a descriptor.
IoMode: TypeAlias = Literal["mmap", "pwrite"]
IoChoice: TypeAlias = Literal["auto", "mmap", "pwrite"]  # "auto": choose_io() picks by filesystem
IO_MODES: tuple[IoMode, ...] = ("mmap", "pwrite")


class Storage:
    """Per-process access to a layout's files.  Files missing or of the wrong size
    are left unopened; any piece touching them reads as unavailable.

    ``io="mmap"`` maps each file and copies pieces into the mapping;
    ``io="pwrite"`` keeps each file open and uses pread/pwrite.  Both land in
    the same page cache.  pwrite is the choice where page faults are costly or
    unsafe (network and FUSE filesystems: a failed fault is a SIGBUS, a failed
    pwrite an error), and costs less CPU per byte written on local disks too.
    """

    def __init__(
        self, layout: Layout, *, writable: bool = False, io: IoMode = "mmap",
        files: Collection[int] | None = None,
    ) -> None:  # fmt: skip
        """``files``: the files to open (default: the selected ones); the bytes of the others
        are read from, and written to, the parts file where it holds them."""
        if io not in IO_MODES:
            raise ValueError(f"io must be one of {IO_MODES}, not {io!r}")
        self.layout = layout
        self.writable = writable
        self.io = io
        self._maps: list[mmap.mmap | None] = [None] * len(layout.files)
        self._fds: list[int | None] = [None] * len(layout.files)
        # a writable map's descriptor (files of 256 KiB and up), kept for write_piece's
        # locks and _fill_new's pwrite of zeros; whether zeros are worth it in that file
        self._map_fds: list[int | None] = [None] * len(layout.files)
        self._fills = [False] * len(layout.files)
        self._files = files
        self._parts_fd: int | None = None
        self._open()

    def _opens(self, i: int) -> bool:
        return self.layout.is_selected(i) if self._files is None else i in self._files

    def _open_parts(self) -> None:
        path = self.layout.parts_path
        if path is None:
            return
        try:
            if self.writable and self.layout.needs_parts:
                self._parts_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            elif not self.writable:
                self._parts_fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            pass  # nothing kept there yet
        except OSError as exc:
            if self.writable:
                raise StorageError(f"cannot open {path}: {exc.strerror}") from None

    def _open(self) -> None:
        self._open_parts()
        kept = 0
        in_memory: bool | None = None  # the output is on tmpfs (looked up once, if asked)
        for i, (f, path) in enumerate(zip(self.layout.files, self.layout.paths, strict=True)):
            if path is None or f.length == 0 or not self._opens(i):
                continue
            flags = (os.O_RDWR if self.writable else os.O_RDONLY) | os.O_NOFOLLOW
            try:
                fd = os.open(path, flags)
            except FileNotFoundError:
                if self.writable:
                    raise StorageError(f"output file {path} vanished") from None
                continue
            except OSError as exc:
                if self.writable:
                    raise StorageError(f"cannot open {path}: {exc.strerror}") from None
                continue
            try:
                st = os.fstat(fd)
                if st.st_size != f.length:
                    if self.writable:
                        raise StorageError(f"{path} does not have the expected size")
                    continue
                if self.io == "pwrite":
                    self._fds[i], fd = fd, -1  # kept open until close()
                else:
                    access = mmap.ACCESS_WRITE if self.writable else mmap.ACCESS_READ
                    self._maps[i] = mmap.mmap(fd, f.length, access=access)
                    # Which files lock a piece must not depend on anything but the layout:
                    # every process locks a piece in the same file.  Small files keep the
                    # page faults.
                    if self.writable and f.length >= _FILL_MIN and kept < _MAX_MAP_FDS:
                        self._map_fds[i], fd = fd, -1
                        kept += 1
                        if in_memory is None:
                            in_memory = filesystem_type(path) in _MEMORY_FILESYSTEMS
                        # tmpfs's posix_fallocate made the pages already: zeros again cost more
                        self._fills[i] = not (in_memory and st.st_blocks * 512 >= f.length)
            finally:
                if fd >= 0:
                    os.close(fd)

    def close(self) -> None:
        for m in self._maps:
            if m is not None:
                m.close()
        for fd in [*self._fds, *self._map_fds]:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass  # written pages are in the page cache; close the rest
        self._maps = [None] * len(self.layout.files)
        self._fds = [None] * len(self.layout.files)
        self._map_fds = [None] * len(self.layout.files)
        self._fills = [False] * len(self.layout.files)
        if self._parts_fd is not None:
            os.close(self._parts_fd)
            self._parts_fd = None

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _views(self, start: int, length: int) -> Iterator[memoryview | None]:
        for s in self.layout.slices(start, length):
            if self.layout.files[s.file_index].padding:
                yield None  # padding reads as zeros
                continue
            m = self._maps[s.file_index]
            if m is not None:
                yield memoryview(m)[s.file_offset : s.file_offset + s.length]
                continue
            fd = self._fds[s.file_index]
            offset = s.file_offset
            if fd is None:
                fd, offset = self._in_parts(s)
            data = os.pread(fd, s.length, offset)
            if len(data) != s.length:
                raise _Unavailable  # the file shrank under us
            yield memoryview(data)

    def _in_parts(self, s: Slice) -> tuple[int, int]:
        """Where a slice of a file that is not open lies in the parts file: (fd, offset)."""
        fd = self._parts_fd
        lay = self.layout
        # a selected file that is missing is missing (its piece is not all zeros), unless
        # the caller named the files to open (checker.recover_shared)
        if fd is None or (self._files is None and lay.is_selected(s.file_index)):
            raise _Unavailable
        pos = lay.files[s.file_index].offset + s.file_offset
        piece, within = divmod(pos, lay.piece_length)
        rank = lay.parts_rank.get(piece)
        if rank is None or within + s.length > lay.piece_length:
            raise _Unavailable  # a piece of unselected files alone: nowhere here
        return fd, rank * lay.piece_length + within

    def has_piece_data(self, index: int) -> bool:
        """Every file under the piece is open (exists with the right size), or the parts file
        holds its bytes of the others."""
        start = index * self.layout.piece_length
        shared = self._parts_fd is not None and index in self.layout.parts_rank
        for s in self.layout.slices(start, self.layout.piece_size(index)):
            i = s.file_index
            closed = self._maps[i] is None and self._fds[i] is None
            in_parts = shared and (self._files is not None or not self.layout.is_selected(i))
            if not self.layout.files[i].padding and closed and not in_parts:
                return False
        return True

    def hash_piece(self, index: int, hasher: PieceHasher | None = None) -> bytes | None:
        """The digest of a piece as it stands on disk, or None if a file is missing.

        ``hasher`` is a fresh one from ``PieceVerifier.hasher(index)``; v1 SHA-1 by default.
        """
        h = sha1_hasher() if hasher is None else hasher
        start = index * self.layout.piece_length
        try:
            for s, view in zip(
                self.layout.slices(start, self.layout.piece_size(index)),
                self._views(start, self.layout.piece_size(index)),
                strict=True,
            ):
                if view is None:
                    _update_zeros(h, s.length)
                else:
                    h.update(view)
                    view.release()
        except _Unavailable:
            return None
        return h.digest()

    def verify_piece(self, index: int, verifier: PieceVerifier) -> bool | None:
        """Whether a piece on disk is the one the torrent names; None if a file is missing."""
        digest = self.hash_piece(index, verifier.hasher(index))
        return None if digest is None else verifier.matches(index, digest)

    def read(self, start: int, length: int) -> bytes:
        """Bytes ``[start, start+length)`` of the torrent (for serving peers).

        Raises ``StorageError`` naming the file if one is missing or has shrunk
        since it was verified: data we announced is gone, which ends the transfer
        as a disk problem, not as a crash.
        """
        out = bytearray(length)
        pos = 0
        slices = list(self.layout.slices(start, length))
        k = 0  # the slice being read; _views raises while producing its view
        try:
            for s, view in zip(slices, self._views(start, length), strict=True):
                if view is not None:
                    out[pos : pos + s.length] = view
                    view.release()
                pos += s.length
                k += 1
        except _Unavailable:
            path = self.layout.paths[slices[k].file_index]
            raise StorageError(f"{path} is missing or shorter than expected") from None
        return bytes(out)

    def write_piece(
        self, index: int, data: bytes | bytearray | memoryview, done: memoryview | None = None
    ) -> bool:
        """Copy a verified piece into the mapped files (padding is skipped).

        ``done`` (the shared done-map, a byte per piece) makes the write the only one of
        this piece among processes: under a lock on the piece's bytes, a piece already
        marked done is left as it is (False), else written, then marked (True).  Only then
        may the piece's new pages of a map be made by ``pwrite`` of zeros (``_fill_new``):
        no process holds verified bytes there, and none reads them before the mark.
        """
        lock = self._lock_fd(index) if done is not None else None
        try:
            if done is not None and done[index]:
                return False
            self._write(index, memoryview(data), fill=lock is not None)
            if done is not None:
                done[index] = 1
            return True
        finally:
            if lock is not None:
                _lock(lock[0], fcntl.F_UNLCK, lock[1], lock[2])

    def _lock_fd(self, index: int) -> tuple[int, int, int] | None:
        """Lock the piece's bytes in its first mapped file (the same file in every process:
        they all open the same layout); (fd, start, length), or None where no lock is had
        (no mapped file, or no OFD locks here)."""
        if _F_OFD_SETLKW is None:
            return None
        start = index * self.layout.piece_length
        for s in self.layout.slices(start, self.layout.piece_size(index)):
            fd = self._map_fds[s.file_index]
            if fd is not None:
                try:
                    _lock(fd, fcntl.F_WRLCK, s.file_offset, s.length)
                except OSError as exc:
                    if exc.errno in _NO_LOCKS:
                        # a filesystem without these locks, the same answer in every
                        # process: none zero-fills there, the map's page faults it is
                        return None
                    # not for this process alone to go on unlocked: another may zero-fill
                    # the piece under its lock once this one has marked it done
                    path = self.layout.paths[s.file_index]
                    raise StorageError(f"cannot lock a piece of {path}: {exc.strerror}") from None
                return fd, s.file_offset, s.length
        return None

    def _write(self, index: int, src: memoryview, fill: bool) -> None:
        start = index * self.layout.piece_length
        pos = 0
        for s in self.layout.slices(start, len(src)):
            m = self._maps[s.file_index]
            fd = self._fds[s.file_index]
            offset = s.file_offset
            path = self.layout.paths[s.file_index]
            if m is None and fd is None and path is not None and self._parts_fd is not None:
                # an unselected file's bytes of a shared piece: kept for a later selection
                try:
                    fd, offset = self._in_parts(s)
                except _Unavailable:
                    raise StorageError(f"{path} is not open for writing") from None
                path = self.layout.parts_path
            if m is not None:
                map_fd = self._map_fds[s.file_index]
                if not (
                    fill
                    and map_fd is not None
                    and self._fills[s.file_index]
                    and _fill_new(map_fd, offset, s.length, path)
                ):
                    _prefault_write(m, s.file_offset, s.length)
                m[s.file_offset : s.file_offset + s.length] = src[pos : pos + s.length]
            elif fd is not None:
                try:
                    _pwrite_all(fd, src[pos : pos + s.length], offset)
                except OSError as exc:
                    # A disk error, not the peer's: it must end the fetch (exit 4), not
                    # pass for a connection error in the worker's socket handling.
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise DiskFull(f"disk full writing {path}") from None
                    raise StorageError(f"cannot write {path}: {exc.strerror}") from None
            elif not self.layout.files[s.file_index].padding:
                raise StorageError(f"{path} is not open for writing")
            pos += s.length

    def flush(self) -> None:
        for m in self._maps:
            if m is not None:
                m.flush()
        for fd in self._fds:
            if fd is not None:
                os.fsync(fd)
        if self._parts_fd is not None:
            os.fsync(self._parts_fd)


class _Unavailable(Exception):
    """Internal to :class:`Storage`: a piece touches a file that is not open or has shrunk; hashing
    answers None, serving raises :class:`StorageError`."""

    pass


# Linux 5.14's MADV_POPULATE_WRITE (Python 3.11 does not name it): fault a range in,
# writable, with one call.  Copying into a fresh shared file mapping otherwise takes a
# write fault per 4 KiB page, which measured 4x slower than the copy itself.
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)
_PAGE = mmap.PAGESIZE
_populate_ok = hasattr(mmap.mmap, "madvise")


def _prefault_write(m: mmap.mmap, offset: int, length: int) -> None:
    global _populate_ok
    if not _populate_ok:
        return
    aligned = offset - offset % _PAGE
    try:
        m.madvise(_MADV_POPULATE_WRITE, aligned, length + offset - aligned)
    except OSError:
        _populate_ok = False  # an older kernel: plain page faults it is


# Pages a piece's copy into a map creates, made by pwrite of zeros first instead: a write
# fault on a page not in the page cache allocates one zeroed 4 KiB folio and runs the
# filesystem's page_mkwrite for it (0.7 CPU s per GiB on ext4 here, pieces landing in
# rarest-first order, where readahead never grows); a pwrite of 32 KiB makes one 32 KiB
# folio with its blocks mapped, which the copy then faults in whole.
# Not larger: the kernel carves large folios out of free blocks of 2 MiB and up once the
# smaller ones run out, and on a VM whose balloon hands such blocks back to the host (free
# page reporting) every page of them is a host fault to touch again: 256 KiB folios cost
# 1-1.5 s per GiB more in such spells (and the other worker spun on the file's lock
# meanwhile), and 64 KiB ones did too in a later spell (-j 8 on 1 GiB: 2.6-2.8 CPU s
# against 1.35 with 32 KiB and 1.45-1.5 with 16 KiB, in one swarm; 32 KiB was within 5% of
# 64 KiB in the spell where 64 KiB was best).  Not smaller: 4 KiB writes cost 2.3 s.
_FILL_CHUNK = 32 * 1024
_FILL_MIN = 256 * 1024  # smaller files keep the page faults
_MAX_MAP_FDS = 256  # descriptors kept for it: the largest torrents' files stay within limits
_MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")  # no disk behind the page cache
_F_OFD_SETLKW: int | None = getattr(fcntl, "F_OFD_SETLKW", None)
_fill_ok = True
_NO_LOCKS = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS)


def _lock(fd: int, kind: int, start: int, length: int) -> None:
    """An open-file-description lock on ``[start, start+length)``: the kernel drops it with a
    process that dies holding it; waits while another process holds it."""
    assert _F_OFD_SETLKW is not None
    # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks)
    fcntl.fcntl(fd, _F_OFD_SETLKW, struct.pack("@hhqqi4x", kind, os.SEEK_SET, start, length, 0))


def _fill_new(fd: int, offset: int, length: int, path: str | None) -> bool:
    """Zeros over ``[offset, offset+length)`` of a file, in 32 KiB writes; False where the
    filesystem refused for a reason other than space (the copy's page faults do the rest)."""
    global _fill_ok
    if not _fill_ok:
        return False
    zeros = memoryview(_ZEROS)
    end = offset + length
    try:
        if os.fstat(fd).st_size < end:
            # the file was cut under us: pwrite would grow it back over the verified pieces
            # it lost; the copy into the map raises SIGBUS, a disk error (D2)
            return False
        while offset < end:
            n = os.pwrite(
                fd, zeros[: min(_FILL_CHUNK - offset % _FILL_CHUNK, end - offset)], offset
            )
            if n <= 0:
                raise OSError(errno.EIO, "short write")
            offset += n
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # a sparse file on a full disk: the copy into the map would have been a SIGBUS
            raise DiskFull(f"disk full writing {path}") from None
        _fill_ok = False
        return False
    return True


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        data = data[n:]
        offset += n


# Filesystems where page faults on a mapping are slow or unsafe (remote or userspace
# I/O inside a fault; an error there is a SIGBUS): "auto" uses pwrite on these.
_PWRITE_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs",
                       "afs", "lustre", "virtiofs")  # fmt: skip


def choose_io(io: IoChoice, root: str | Path) -> IoMode:
    """Resolve ``io="auto"``: pwrite on network and FUSE filesystems, else mmap."""
    if io != "auto":
        return io
    fstype = filesystem_type(root)
    if fstype and (fstype in _PWRITE_FILESYSTEMS or fstype.startswith("fuse")):
        return "pwrite"
    return "mmap"


_MOUNTINFO_ESCAPE = re.compile(r"\\([0-7]{3})")  # mountinfo writes " " as \040 etc.


def filesystem_type(path: str | Path) -> str | None:
    """The type of the filesystem holding ``path`` (Linux mountinfo), or None."""
    p = os.path.realpath(_existing_ancestor(Path(os.path.abspath(path))))
    best, fstype = -1, None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5 or not right:
                    continue
                mount = _MOUNTINFO_ESCAPE.sub(lambda m: chr(int(m[1], 8)), fields[4])
                inside = p == mount or p.startswith(mount.rstrip("/") + "/")
                # >=: of two mounts on one point, the later line is the one on top
                if inside and len(mount) >= best:
                    best, fstype = len(mount), right.split()[0]
    except OSError:
        return None
    return fstype


def _update_zeros(h: PieceHasher, n: int) -> None:
    while n > 0:
        k = min(n, len(_ZEROS))
        h.update(memoryview(_ZEROS)[:k])
        n -= k


def check_safe(layout: Layout, root: str | Path) -> None:
    """Refuse symlinks anywhere between ``root`` and each file (planted escapes)."""
    root_p = Path(os.path.abspath(root))
    chosen = [p for i, p in enumerate(layout.paths) if layout.is_selected(i)]
    for path in [*chosen, layout.parts_path if layout.needs_parts else None]:
        if path is None:
            continue
        p = Path(path)
        chain = [p, *p.parents]
        for q in chain:
            if q == root_p.parent or q == Path(q.anchor):
                break
            if q == root_p and q != p:
                break  # the user named this directory; follow it even if it is a link
            try:
                st = os.lstat(q)
            except (FileNotFoundError, NotADirectoryError):
                continue  # a parent that is not a directory is reported when we reach it
            except OSError as exc:
                raise StorageError(f"cannot inspect {q}: {exc.strerror}") from None
            if stat.S_ISLNK(st.st_mode):
                raise UnsafePath(f"unsafe path: {q} is a symbolic link")
            if q != p and not stat.S_ISDIR(st.st_mode):
                raise StorageError(f"{q} is in the way: it is not a directory")
        if os.path.commonpath([str(root_p), path]) != str(root_p):
            raise UnsafePath(f"unsafe path: {path} is outside {root_p}")


def prepare(layout: Layout, root: str | Path) -> None:
    """Create and reserve every file so later writes cannot hit a full disk.

    Raises ``DiskFull`` ("need X, have Y") before touching anything when the
    filesystem cannot hold the rest of the torrent.
    """
    check_safe(layout, root)
    need = 0
    for i, (f, path) in enumerate(zip(layout.files, layout.paths, strict=True)):
        if path is None or not layout.is_selected(i):
            continue
        try:
            st = os.stat(path)
        except FileNotFoundError:
            need += f.length
            continue
        if stat.S_ISDIR(st.st_mode):
            raise StorageError(f"{path} is a directory where a file should be")
        if st.st_size > f.length:
            raise StorageError(
                f"existing file {path} is larger than expected ({st.st_size} > {f.length} bytes)"
            )
        need += max(0, f.length - st.st_blocks * 512)
    base = _existing_ancestor(Path(os.path.abspath(root)))
    try:
        free = shutil.disk_usage(base).free
    except OSError as exc:
        raise StorageError(f"cannot inspect {base}: {exc.strerror}") from None
    if need > free:
        raise DiskFull(
            f"not enough space in {base}: need {human_size(need)}, have {human_size(free)}"
        )
    for i, (f, path) in enumerate(zip(layout.files, layout.paths, strict=True)):
        if path is None or not layout.is_selected(i):
            continue  # unselected files are not created (their shared bytes: parts file)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot create {exc.filename or path}: {exc.strerror}") from None
        try:
            if f.length:
                _reserve(fd, f.length, path)
        finally:
            os.close(fd)


def _reserve(fd: int, length: int, path: str) -> None:
    try:
        os.posix_fallocate(fd, 0, length)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFull(f"not enough space for {path}") from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise StorageError(f"cannot reserve space for {path}: {exc.strerror}") from None
        # The filesystem cannot reserve; a sparse file is the best we can do.
        if os.fstat(fd).st_size < length:
            os.ftruncate(fd, length)


def _existing_ancestor(p: Path) -> Path:
    while not p.exists():
        p = p.parent
    return p


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
