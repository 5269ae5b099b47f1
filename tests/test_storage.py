"""mptorrent.disk.storage: the byte-range map, mmap I/O and the coordinator's preflight."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import random
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mptorrent.disk.storage import (
    IO_MODES,
    Layout,
    Slice,
    Storage,
    check_safe,
    choose_io,
    filesystem_type,
    human_size,
    prepare,
)
from mptorrent.errors import DiskFull, ExitStatus, StorageError, UnsafePath
from mptorrent.proto import metainfo
from mptorrent.proto.metainfo import FileEntry

Spec = list[tuple[str, int]]  # (relative path, or "" for a padding file; length)


def make_layout(root: Path, spec: Spec, piece_length: int) -> Layout:
    files: list[FileEntry] = []
    paths: list[str | None] = []
    offset = 0
    for name, length in spec:
        pad = name == ""
        files.append(
            FileEntry((".pad", str(length)) if pad else tuple(name.split("/")), length, offset, pad)
        )
        paths.append(None if pad else str(root.joinpath(*name.split("/"))))
        offset += length
    return Layout(piece_length, offset, tuple(files), tuple(paths))


# a0 b10 pad6 c0 d20 e0 -> offsets 0, 0, 10, 16, 16, 36; 8-byte pieces
MIXED: Spec = [("a", 0), ("b", 10), ("", 6), ("c", 0), ("dir/d", 20), ("e", 0)]


def naive_map(layout: Layout) -> list[tuple[int, int]]:
    """(file index, offset in file) of every byte of the torrent, the slow obvious way."""
    out: list[tuple[int, int]] = []
    for i, f in enumerate(layout.files):
        out.extend((i, k) for k in range(f.length))
    return out


# -- Layout.slices ------------------------------------------------------------------


def test_slices_across_boundaries(tmp_path: Path) -> None:
    lay = make_layout(tmp_path, MIXED, 8)
    assert lay.total_length == 36 and lay.num_pieces == 5
    assert list(lay.slices(0, 36)) == [Slice(1, 0, 10), Slice(2, 0, 6), Slice(4, 0, 20)]
    assert lay.piece_slices(0) == [Slice(1, 0, 8)]
    assert lay.piece_slices(1) == [Slice(1, 8, 2), Slice(2, 0, 6)]
    assert lay.piece_slices(2) == [Slice(4, 0, 8)]
    assert lay.piece_slices(4) == [Slice(4, 16, 4)]
    assert [lay.piece_size(i) for i in range(5)] == [8, 8, 8, 8, 4]
    assert list(lay.slices(10, 6)) == [Slice(2, 0, 6)]  # padding only
    assert list(lay.slices(36, 0)) == [] and list(lay.slices(5, 0)) == []


def test_file_pieces(tmp_path: Path) -> None:
    lay = make_layout(tmp_path, MIXED, 8)
    assert [lay.file_pieces(i) for i in range(6)] == [
        range(0),
        range(0, 2),
        range(1, 2),
        range(0),
        range(2, 5),
        range(0),
    ]


@pytest.mark.parametrize(
    "spec",
    [
        MIXED,
        [("only", 37)],
        [("a", 0), ("b", 0), ("c", 1)],
        [("a", 1), ("b", 0), ("c", 0), ("d", 7), ("", 8), ("e", 9), ("f", 0)],
        [("a", 8), ("b", 8), ("c", 8)],
    ],
)
def test_slices_match_naive_map_everywhere(tmp_path: Path, spec: Spec) -> None:
    lay = make_layout(tmp_path, spec, 8)
    naive = naive_map(lay)
    for start in range(lay.total_length + 1):
        for length in range(lay.total_length - start + 1):
            got: list[tuple[int, int]] = []
            for s in lay.slices(start, length):
                assert s.length > 0 and lay.files[s.file_index].length > 0
                got.extend((s.file_index, s.file_offset + k) for k in range(s.length))
            assert got == naive[start : start + length], (start, length)


@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=8).filter(lambda ls: sum(ls) > 0),
    st.integers(1, 32),
)
def test_piece_slices_cover_each_piece(lengths: list[int], piece_length: int) -> None:
    lay = make_layout(
        Path("/nonexistent"), [(f"f{i}", n) for i, n in enumerate(lengths)], piece_length
    )
    naive = naive_map(lay)
    pos = 0
    for i in range(lay.num_pieces):
        covered = [
            (s.file_index, s.file_offset + k) for s in lay.piece_slices(i) for k in range(s.length)
        ]
        assert covered == naive[pos : pos + lay.piece_size(i)]
        pos += lay.piece_size(i)
        for fi in range(len(lengths)):
            touches = any(s.file_index == fi for s in lay.piece_slices(i))
            assert touches == (i in lay.file_pieces(fi))
    assert pos == lay.total_length


def test_layout_for_torrent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pieces = bytes(20 * 2)
    single = metainfo.parse(
        metainfo.build(name="m", piece_length=16384, pieces=pieces, length=20000)
    )
    assert Layout.for_torrent(single, tmp_path / "out.bin").paths == (str(tmp_path / "out.bin"),)
    multi = metainfo.parse(
        metainfo.build(
            name="m", piece_length=16384, pieces=pieces, files=[(("a",), 1), (("d", "b"), 19999)]
        )
    )
    lay = Layout.for_torrent(multi, tmp_path / "out")
    assert lay.paths == (str(tmp_path / "out" / "a"), str(tmp_path / "out" / "d" / "b"))
    # A relative output becomes absolute, so a later chdir cannot move the files.
    monkeypatch.chdir(tmp_path)
    assert Layout.for_torrent(multi, "rel").paths[0] == str(tmp_path / "rel" / "a")


# -- Storage ------------------------------------------------------------------------


@pytest.fixture
def mixed(tmp_path: Path) -> Iterator[tuple[Layout, Path]]:
    root = tmp_path / "out"
    lay = make_layout(root, MIXED, 8)
    prepare(lay, root)
    yield lay, root


def torrent_bytes(lay: Layout, seed: int = 1) -> bytes:
    """Content for the whole torrent, with zeros where the padding is."""
    out = bytearray()
    for f in lay.files:
        if f.padding:
            out += bytes(f.length)
        else:
            out += (
                hashlib.sha256(f"{seed}{f.offset}".encode())
                .digest()[: f.length]
                .ljust(f.length, b"z")
            )
    return bytes(out)


@pytest.mark.parametrize("io", IO_MODES)
def test_write_read_hash(mixed: tuple[Layout, Path], io: str) -> None:
    lay, root = mixed
    data = torrent_bytes(lay)
    with Storage(lay, writable=True, io=io) as s:
        for i in range(lay.num_pieces):
            s.write_piece(i, data[i * 8 : i * 8 + lay.piece_size(i)])
        s.flush()
    assert (root / "b").read_bytes() == data[0:10]
    assert (root / "dir" / "d").read_bytes() == data[16:36]
    assert (root / "a").read_bytes() == b"" and (root / "e").read_bytes() == b""
    with Storage(lay, io=io) as s:
        for i in range(lay.num_pieces):
            assert s.has_piece_data(i)
            chunk = data[i * 8 : i * 8 + lay.piece_size(i)]
            assert s.hash_piece(i) == hashlib.sha1(chunk).digest()
        assert s.read(0, 36) == data
        assert s.read(9, 9) == data[9:18]
        assert s.read(10, 6) == bytes(6)  # padding reads as zeros


@pytest.mark.parametrize("io", IO_MODES)
def test_padding_in_written_piece_is_not_stored(mixed: tuple[Layout, Path], io: str) -> None:
    lay, root = mixed
    with Storage(lay, writable=True, io=io) as s:
        s.write_piece(1, b"BB" + b"\xff" * 6)  # bytes over padding are dropped
    assert (root / "b").read_bytes()[8:] == b"BB"
    with Storage(lay, io=io) as s:
        assert s.read(8, 8) == b"BB" + bytes(6)


@pytest.mark.parametrize("io", IO_MODES)
def test_missing_or_wrong_size_file_is_unavailable(mixed: tuple[Layout, Path], io: str) -> None:
    lay, root = mixed
    (root / "b").unlink()
    with Storage(lay, io=io) as s:
        assert [s.has_piece_data(i) for i in range(5)] == [False, False, True, True, True]
        assert s.hash_piece(0) is None and s.hash_piece(1) is None
        assert s.hash_piece(2) == hashlib.sha1(bytes(8)).digest()
    (root / "b").write_bytes(b"short")
    with Storage(lay, io=io) as s:
        assert s.hash_piece(0) is None
    with pytest.raises(StorageError, match="does not have the expected size"):
        Storage(lay, writable=True, io=io)
    (root / "b").unlink()
    with pytest.raises(StorageError, match="vanished"):
        Storage(lay, writable=True, io=io)


def test_pwrite_storage_sees_a_file_shrink_as_unavailable(mixed: tuple[Layout, Path]) -> None:
    lay, root = mixed
    with Storage(lay, io="pwrite") as s:
        assert s.hash_piece(3) is not None
        os.truncate(root / "dir" / "d", 4)  # under an open Storage: no SIGBUS with pread
        assert s.hash_piece(3) is None
        # serving a peer from it is a storage error naming the file, not a crash
        with pytest.raises(StorageError, match=r"dir/d is missing or shorter than expected"):
            s.read(3 * lay.piece_length, lay.piece_size(3))


def test_io_mode_is_checked(mixed: tuple[Layout, Path]) -> None:
    with pytest.raises(ValueError, match="io must be one of"):
        Storage(mixed[0], io="aio")


def test_auto_io_follows_the_filesystem(tmp_path: Path) -> None:
    fstype = filesystem_type(tmp_path / "not" / "yet")  # an existing ancestor decides
    assert fstype is not None and fstype == filesystem_type(tmp_path)
    assert choose_io("auto", tmp_path) == ("pwrite" if fstype.startswith("fuse") else "mmap")
    assert choose_io("pwrite", tmp_path) == "pwrite"
    assert filesystem_type("/proc/self") == "proc"


def test_storage_does_not_follow_symlinked_file(tmp_path: Path) -> None:
    root = tmp_path / "out"
    lay = make_layout(root, [("f", 8)], 8)
    root.mkdir()
    target = tmp_path / "target"
    target.write_bytes(b"12345678")
    (root / "f").symlink_to(target)
    with Storage(lay) as s:
        assert s.hash_piece(0) is None
    with pytest.raises(StorageError, match="cannot open"):
        Storage(lay, writable=True)


# -- prepare ------------------------------------------------------------------------


def test_prepare_creates_and_reserves(tmp_path: Path) -> None:
    root = tmp_path / "out"
    big = 3 * 1024 * 1024 + 5
    lay = make_layout(root, [("z0", 0), ("sub/deep/big", big), ("", 100), ("sub/z1", 0)], 16384)
    prepare(lay, root)
    st_big = os.stat(root / "sub" / "deep" / "big")
    assert st_big.st_size == big
    # posix_fallocate reserved the blocks: the file is not sparse.
    assert st_big.st_blocks * 512 >= big
    assert (root / "z0").is_file() and (root / "z0").stat().st_size == 0
    assert (root / "sub" / "z1").is_file()
    assert sorted(p.name for p in root.rglob("*")) == ["big", "deep", "sub", "z0", "z1"]


def test_prepare_single_file(tmp_path: Path) -> None:
    out = tmp_path / "movie.bin"
    lay = make_layout(tmp_path, [("movie.bin", 100000)], 16384)
    prepare(lay, out)
    assert out.stat().st_size == 100000


def test_prepare_keeps_existing_data(tmp_path: Path) -> None:
    root = tmp_path / "out"
    lay = make_layout(root, [("a", 10), ("b", 10)], 8)
    root.mkdir()
    (root / "a").write_bytes(b"0123456789")
    (root / "b").write_bytes(b"abc")  # a partial file grows; its bytes stay
    prepare(lay, root)
    assert (root / "a").read_bytes() == b"0123456789"
    assert (root / "b").read_bytes() == b"abc" + bytes(7)
    prepare(lay, root)  # idempotent
    assert (root / "b").read_bytes() == b"abc" + bytes(7)


def test_prepare_refuses_larger_existing_file(tmp_path: Path) -> None:
    root = tmp_path / "out"
    lay = make_layout(root, [("a", 10), ("b", 10)], 8)
    root.mkdir()
    (root / "b").write_bytes(b"x" * 11)
    with pytest.raises(StorageError, match=r"existing file .*b is larger than expected") as info:
        prepare(lay, root)
    assert info.value.exit_status == ExitStatus.STORAGE
    assert (root / "b").read_bytes() == b"x" * 11
    assert not (root / "a").exists()  # refused before anything was created


def test_prepare_refuses_directory_in_place_of_file(tmp_path: Path) -> None:
    root = tmp_path / "out"
    lay = make_layout(root, [("a", 10)], 8)
    (root / "a").mkdir(parents=True)
    with pytest.raises(StorageError, match="is a directory where a file should be"):
        prepare(lay, root)


def test_prepare_refuses_file_in_place_of_directory(tmp_path: Path) -> None:
    root = tmp_path / "out"
    lay = make_layout(root, [("d/a", 10)], 8)
    root.mkdir()
    (root / "d").write_bytes(b"")
    with pytest.raises(StorageError, match="is in the way: it is not a directory"):
        prepare(lay, root)


def test_prepare_turns_os_errors_into_storage_errors(tmp_path: Path) -> None:
    # metainfo caps components at 255 bytes; a layout built by hand can still ask for more.
    root = tmp_path / "out"
    lay = make_layout(root, [("x" * 300, 1)], 8)
    with pytest.raises(StorageError, match="File name too long"):
        prepare(lay, root)


def snapshot(d: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for p in sorted(d.rglob("*")):
        if p.is_symlink():
            out[str(p)] = "-> " + os.readlink(p)
        elif p.is_file():
            out[str(p)] = p.read_bytes()
        else:
            out[str(p)] = "dir"
    return out


def test_planted_symlinked_directory(tmp_path: Path) -> None:
    root, outside = tmp_path / "out", tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"canary")
    root.mkdir()
    (root / "sub").symlink_to(outside)
    lay = make_layout(root, [("a", 10), ("sub/keep", 20), ("sub/new", 5)], 8)
    before = snapshot(tmp_path)
    with pytest.raises(UnsafePath, match=r"unsafe path: .*sub is a symbolic link") as info:
        prepare(lay, root)
    assert info.value.exit_status == ExitStatus.STORAGE
    assert snapshot(tmp_path) == before


def test_planted_symlinked_file(tmp_path: Path) -> None:
    root, target = tmp_path / "out", tmp_path / "passwd"
    target.write_bytes(b"root:x:0:0")
    root.mkdir()
    (root / "f").symlink_to(target)
    lay = make_layout(root, [("f", 100)], 8)
    before = snapshot(tmp_path)
    with pytest.raises(UnsafePath, match="symbolic link"):
        prepare(lay, root)
    assert snapshot(tmp_path) == before


def test_dangling_symlink_is_refused_too(tmp_path: Path) -> None:
    root = tmp_path / "out"
    root.mkdir()
    (root / "f").symlink_to(tmp_path / "would-be-created")
    lay = make_layout(root, [("f", 100)], 8)
    with pytest.raises(UnsafePath):
        prepare(lay, root)
    assert not (tmp_path / "would-be-created").exists()


def test_check_safe_refuses_paths_outside_root(tmp_path: Path) -> None:
    # metainfo refuses '..' long before this; storage checks containment again anyway.
    root = tmp_path / "out"
    lay = make_layout(root, [("a", 1)], 8)
    escaped = Layout(lay.piece_length, lay.total_length, lay.files, (str(tmp_path / "x"),))
    with pytest.raises(UnsafePath, match="is outside"):
        check_safe(escaped, root)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        if os.geteuid() != 0 or "permission denied" in proc.stderr.lower():
            pytest.skip(
                f"cannot mount a tmpfs here ({errno.errorcode[errno.EPERM]}): {proc.stderr.strip()}"
            )
        pytest.fail(f"mount failed: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_disk_full_before_touching_anything(small_tmpfs: Path) -> None:
    root = small_tmpfs / "out"
    lay = make_layout(root, [("a", 1024), ("b", 4 * 1024 * 1024)], 16384)
    with pytest.raises(
        DiskFull, match=r"not enough space in .*: need 4\.0 MiB, have 1\.0 MiB"
    ) as e:
        prepare(lay, root)
    assert e.value.exit_status == ExitStatus.STORAGE
    assert list(small_tmpfs.iterdir()) == []


def test_pwrite_on_a_full_disk_is_an_error_not_a_crash(small_tmpfs: Path) -> None:
    assert filesystem_type(small_tmpfs) == "tmpfs"
    root = small_tmpfs / "out"
    piece = 512 * 1024
    lay = make_layout(root, [("a", 4 * piece)], piece)
    root.mkdir()
    with open(root / "a", "wb") as f:
        f.truncate(4 * piece)  # sparse: writing past 1 MiB runs out of room
    with Storage(lay, writable=True, io="pwrite") as s:
        s.write_piece(0, b"\x01" * piece)  # what fits is written
        # pwrite fails where an mmap write would SIGBUS: a storage error (exit 4), named
        with pytest.raises(DiskFull, match=r"disk full writing .*out/a"):
            for i in range(1, 4):
                s.write_piece(i, b"\x01" * piece)


def test_map_write_on_a_full_disk_is_an_error_not_a_crash(small_tmpfs: Path) -> None:
    root = small_tmpfs / "out"
    piece = 512 * 1024
    lay = make_layout(root, [("a", 4 * piece)], piece)
    root.mkdir()
    with open(root / "a", "wb") as f:
        f.truncate(4 * piece)  # sparse, as where posix_fallocate is not supported
    done = memoryview(bytearray(lay.num_pieces + 1))
    with Storage(lay, writable=True) as s:
        assert s.io == "mmap"
        assert s.write_piece(0, b"\x01" * piece, done)
        # a piece's new pages are made by pwrite before the copy into the map, which would
        # be a SIGBUS here: the full disk is an error naming the file, and nothing is marked
        with pytest.raises(DiskFull, match=r"disk full writing .*out/a"):
            for i in range(1, 4):
                s.write_piece(i, b"\x01" * piece, done)
    assert done[0] == 1 and sum(done) < 4


def test_reserved_tmpfs_file_keeps_the_page_faults(small_tmpfs: Path) -> None:
    root = small_tmpfs / "out"
    piece = 256 * 1024
    lay = make_layout(root, [("a", 2 * piece)], piece)
    prepare(lay, root)  # tmpfs's posix_fallocate makes the pages: no zeros over them again
    done = memoryview(bytearray(lay.num_pieces + 1))
    with Storage(lay, writable=True) as s:
        assert s._fills == [False]
        assert s.write_piece(1, b"\x05" * piece, done) and done[1] == 1
    assert (root / "a").read_bytes() == bytes(piece) + b"\x05" * piece


def test_disk_fits_exactly_what_is_free(small_tmpfs: Path) -> None:
    root = small_tmpfs / "out"
    lay = make_layout(root, [("a", 512 * 1024)], 16384)
    prepare(lay, root)
    st_a = os.stat(root / "a")
    assert st_a.st_size == 512 * 1024 and st_a.st_blocks * 512 >= 512 * 1024
    # Writes through the mmap now cannot fault: the space is reserved.
    with Storage(lay, writable=True) as s:
        for i in range(lay.num_pieces):
            s.write_piece(i, b"\x01" * lay.piece_size(i))
    # The rest no longer fits.
    more = make_layout(root, [("a", 512 * 1024), ("b", 768 * 1024)], 16384)
    with pytest.raises(DiskFull, match=r"need 768\.0 KiB"):
        prepare(more, root)
    assert not (root / "b").exists()


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (2**30, "1.0 GiB"),
        (2**50, "1024.0 TiB"),
    ],
)
def test_human_size(n: int, text: str) -> None:
    assert human_size(n) == text


# -- --only: selected files, the parts file (issue 16) ----------------------------------


def _tree_torrent(tmp_path: Path) -> tuple[metainfo.Metainfo, dict[str, bytes]]:
    from mptorrent.disk import create

    src = tmp_path / "src" / "t"
    data = {"a.bin": os.urandom(70_000), "b.bin": os.urandom(50_000), "c.bin": os.urandom(30_001)}
    src.mkdir(parents=True)
    for name, blob in data.items():
        (src / name).write_bytes(blob)
    return metainfo.parse(create.create(src, piece_length=16384, jobs=1)), data


def _write_all(meta: metainfo.Metainfo, lay: Layout, data: dict[str, bytes]) -> None:
    blob = b"".join(data[n] for n in ("a.bin", "b.bin", "c.bin"))
    with Storage(lay, writable=True) as st:
        for i, prio in enumerate(lay.priorities()):
            if prio:
                st.write_piece(i, blob[i * lay.piece_length : (i + 1) * lay.piece_length])


def test_only_creates_the_selected_files_and_keeps_shared_bytes_in_the_parts_file(
    tmp_path: Path,
) -> None:
    from mptorrent.disk import checker

    meta, data = _tree_torrent(tmp_path)
    out = tmp_path / "out"
    lay = Layout.for_torrent(meta, out, selected=[1])  # b.bin: shares a piece with a and c
    prio = lay.priorities()
    assert [i for i, p in enumerate(prio) if p] == list(lay.file_pieces(1))
    assert lay.selected_length == 50_000
    assert sum(lay.wanted_size(i) for i, p in enumerate(prio) if p) == 50_000
    prepare(lay, out)
    _write_all(meta, lay, data)
    assert (out / "b.bin").read_bytes() == data["b.bin"]
    assert not (out / "a.bin").exists() and not (out / "c.bin").exists()
    parts = out / ".mptorrent.parts"
    assert parts.stat().st_size <= 2 * lay.piece_length  # two shared pieces, no more
    report = checker.verify(meta, lay, pieces=[i for i, p in enumerate(prio) if p])
    assert report.complete  # shared pieces verify with the parts file's bytes

    # A second selection adds c.bin: its shared piece with b comes from the parts file.
    more = Layout.for_torrent(meta, out, selected=[1, 2])
    fresh = {2}
    prepare(more, out)
    wanted = [i for i, p in enumerate(more.priorities()) if p]
    report = checker.verify(meta, more, pieces=wanted)
    bad = report.invalid + report.missing
    shared = lay.file_pieces(2)[0]
    assert shared in bad
    assert checker.recover_shared(meta, more, bad, fresh) == [shared]
    assert checker.verify(meta, more, pieces=[shared]).complete


def test_a_parts_file_that_lies_only_costs_a_download(tmp_path: Path) -> None:
    from mptorrent.disk import checker

    meta, data = _tree_torrent(tmp_path)
    out = tmp_path / "out"
    lay = Layout.for_torrent(meta, out, selected=[1])
    prepare(lay, out)
    _write_all(meta, lay, data)
    parts = out / ".mptorrent.parts"
    parts.write_bytes(b"\xff" * parts.stat().st_size)
    wanted = [i for i, p in enumerate(lay.priorities()) if p]
    report = checker.verify(meta, lay, pieces=wanted)
    assert set(report.invalid) == {lay.file_pieces(1)[0], lay.file_pieces(1)[-1]}
    assert checker.recover_shared(meta, lay, report.invalid, set()) == []


def test_selecting_every_file_is_no_selection(tmp_path: Path) -> None:
    meta, _data = _tree_torrent(tmp_path)
    lay = Layout.for_torrent(meta, tmp_path / "o", selected=[0, 1, 2])
    assert lay.selected is None and not lay.needs_parts
    assert lay.wanted_size(0) == lay.piece_size(0)


def test_a_torrent_file_named_like_the_parts_file_is_not_overwritten(tmp_path: Path) -> None:
    from mptorrent.disk import create

    src = tmp_path / "src" / "t"
    src.mkdir(parents=True)
    (src / ".mptorrent.parts").write_bytes(os.urandom(20_000))
    (src / "b.bin").write_bytes(os.urandom(20_000))
    meta = metainfo.parse(create.create(src, piece_length=16384, jobs=1))
    lay = Layout.for_torrent(meta, tmp_path / "out", selected=[0])
    assert lay.parts_path == str(tmp_path / "out" / ".mptorrent.parts_")
    assert lay.parts_path not in lay.paths


def test_a_planted_symlink_as_the_parts_file_is_refused(tmp_path: Path) -> None:
    meta, _data = _tree_torrent(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").write_bytes(b"")
    os.symlink(tmp_path / "elsewhere", out / ".mptorrent.parts")
    lay = Layout.for_torrent(meta, out, selected=[1])
    with pytest.raises(UnsafePath, match="is a symbolic link"):
        prepare(lay, out)
    assert (tmp_path / "elsewhere").read_bytes() == b""


def test_padding_next_to_a_selected_file_needs_no_parts_file(tmp_path: Path) -> None:
    base = make_layout(tmp_path, MIXED, 8)  # b: bytes 0-10, padding 10-16, d: 16-36
    only_b = Layout(
        base.piece_length, base.total_length, base.files, base.paths,
        tuple(i == 1 for i in range(len(base.files))), str(tmp_path / ".mptorrent.parts"),
    )  # fmt: skip
    assert not only_b.needs_parts
    assert [only_b.wanted_size(i) for i in (0, 1)] == [8, 2]  # padding is not counted
    assert list(only_b.priorities()) == [1, 1, 0, 0, 0]
    prepare(only_b, tmp_path)
    with Storage(only_b, writable=True) as st:
        st.write_piece(1, b"xx" + bytes(6))
    assert not (tmp_path / ".mptorrent.parts").exists()


# -- write_piece with the done-map: each piece once among processes -------------------

# two files of odd lengths: pieces straddle them and share pages with their neighbours
ODD: Spec = [("x", 256 * 1024 + 5000), ("y", 300 * 1024 + 3)]


@pytest.mark.parametrize("io", IO_MODES)
def test_done_map_writes_each_piece_once(tmp_path: Path, io: str) -> None:
    lay = make_layout(tmp_path / "out", ODD, 16384)
    prepare(lay, tmp_path / "out")
    data = random.Random(7).randbytes(lay.total_length)
    order = list(range(lay.num_pieces))
    random.Random(1).shuffle(order)
    done = memoryview(bytearray(lay.num_pieces + 1))
    pl = lay.piece_length
    with Storage(lay, writable=True, io=io) as s:
        for i in order:
            assert s.write_piece(i, data[i * pl : i * pl + lay.piece_size(i)], done)
            assert done[i] == 1
        # another worker's copy of a piece already written and marked is left alone
        assert not s.write_piece(order[0], bytes(lay.piece_size(order[0])), done)
    assert (tmp_path / "out" / "x").read_bytes() + (tmp_path / "out" / "y").read_bytes() == data


def test_a_piece_another_process_is_writing_waits_for_it(tmp_path: Path) -> None:
    piece = 256 * 1024
    root = tmp_path / "out"
    lay = make_layout(root, [("a", 4 * piece)], piece)
    prepare(lay, root)
    done = memoryview(bytearray(lay.num_pieces + 1))
    other = os.open(root / "a", os.O_RDWR)  # another worker's open file
    try:
        fcntl.lockf(other, fcntl.LOCK_EX, piece, piece, os.SEEK_SET)  # it is writing piece 1
        with Storage(lay, writable=True) as s:
            got: list[bool] = []
            t = threading.Thread(target=lambda: got.append(s.write_piece(1, b"\x02" * piece, done)))
            t.start()
            t.join(0.3)
            assert t.is_alive()  # neither zeros nor bytes go over a piece being written
            os.pwrite(other, b"\x01" * piece, piece)
            done[1] = 1
            fcntl.lockf(other, fcntl.LOCK_UN, piece, piece, os.SEEK_SET)
            t.join(10)
            assert got == [False]  # and it finds the piece written
            assert s.write_piece(2, b"\x03" * piece, done)  # a piece nobody holds: at once
    finally:
        os.close(other)
    content = (root / "a").read_bytes()
    assert content[piece : 2 * piece] == b"\x01" * piece
    assert content[2 * piece : 3 * piece] == b"\x03" * piece
    assert content[:piece] == bytes(piece) and done[0] == 0
