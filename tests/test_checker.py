"""mptorrent.disk.checker: parallel piece hashing for create, verify and resume."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from mptorrent.disk import checker, create
from mptorrent.disk.checker import VerifyReport
from mptorrent.disk.storage import Layout
from mptorrent.proto import metainfo
from mptorrent.proto.metainfo import Metainfo

PL = 16384


def write_tree(root: Path) -> dict[str, bytes]:
    """A multi-file tree: zero-length files, files shorter than a piece, pieces spanning
    several files and a last piece that is short."""
    sizes = {
        "a.bin": 3 * PL + 100,
        "empty": 0,
        "d/b.bin": 50,
        "d/c.bin": 5 * PL - 7,
        "d/e/z": 0,
        "f.bin": 2 * PL,
    }
    contents: dict[str, bytes] = {}
    for i, (rel, n) in enumerate(sorted(sizes.items())):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        data = (hashlib.sha256(str(i).encode()).digest() * (n // 32 + 1))[:n]
        p.write_bytes(data)
        contents[rel] = data
    return contents


@pytest.fixture
def seeded(tmp_path: Path) -> tuple[Metainfo, Layout, Path]:
    root = tmp_path / "album"
    write_tree(root)
    meta = metainfo.parse(create.create(root, piece_length=PL))
    return meta, Layout.for_torrent(meta, root), root


def verify(meta: Metainfo, layout: Layout, jobs: int) -> VerifyReport:
    return checker.verify(meta, layout, jobs=jobs)


def test_create_hashes_the_concatenated_files(seeded: tuple[Metainfo, Layout, Path]) -> None:
    meta, _, root = seeded
    blob = b"".join((root / "/".join(f.path)).read_bytes() for f in meta.files)
    assert len(blob) == meta.total_length
    expected = b"".join(hashlib.sha1(blob[i : i + PL]).digest() for i in range(0, len(blob), PL))
    assert meta.pieces == expected
    assert [f.path for f in meta.files] == [
        ("a.bin",),
        ("d", "b.bin"),
        ("d", "c.bin"),
        ("d", "e", "z"),
        ("empty",),
        ("f.bin",),
    ]


@pytest.mark.parametrize("jobs", [1, 2])
def test_valid(seeded: tuple[Metainfo, Layout, Path], jobs: int) -> None:
    meta, layout, _ = seeded
    report = verify(meta, layout, jobs)
    assert report.complete
    assert report.valid_count == meta.num_pieces
    assert report.invalid == [] and report.missing == []


@pytest.mark.parametrize("jobs", [1, 2])
def test_corrupted(seeded: tuple[Metainfo, Layout, Path], jobs: int) -> None:
    meta, layout, root = seeded
    with open(root / "d" / "c.bin", "r+b") as fh:  # offset 3*PL+150 in the torrent
        fh.seek(PL)
        byte = fh.read(1)
        fh.seek(PL)
        fh.write(bytes([byte[0] ^ 0x80]))
    report = verify(meta, layout, jobs)
    assert report.invalid == [4]
    assert report.missing == []
    assert not report.complete
    assert report.valid_count == meta.num_pieces - 1


@pytest.mark.parametrize("jobs", [1, 2])
def test_missing_and_wrong_size(seeded: tuple[Metainfo, Layout, Path], jobs: int) -> None:
    meta, layout, root = seeded
    (root / "d" / "b.bin").unlink()  # inside piece 3 only
    report = verify(meta, layout, jobs)
    assert report.missing == [3] and report.invalid == []
    with open(root / "f.bin", "ab") as fh:  # now too long: its pieces count as missing
        fh.write(b"x")
    report = verify(meta, layout, jobs)
    assert report.missing == [3, 8, 9, 10]
    assert list(layout.file_pieces(len(meta.files) - 1)) == [8, 9, 10]
    shutil.rmtree(root)
    report = verify(meta, layout, jobs)
    assert report.missing == list(range(meta.num_pieces))
    assert report.valid_count == 0


def test_missing_zero_length_file_costs_no_piece(seeded: tuple[Metainfo, Layout, Path]) -> None:
    meta, layout, root = seeded
    (root / "empty").unlink()
    assert verify(meta, layout, 1).complete


def damage(meta: Metainfo, root: Path) -> None:
    with open(root / "a.bin", "r+b") as fh:
        fh.write(b"\0" * 10)
    (root / "d" / "b.bin").unlink()
    with open(root / "d" / "c.bin", "r+b") as fh:
        fh.seek(5 * PL - 8)
        fh.write(b"!")


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_jobs_1_and_2_agree(
    seeded: tuple[Metainfo, Layout, Path], monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    meta, layout, root = seeded
    damage(meta, root)
    # One piece per task, so two workers really split the run and finish out of order.
    monkeypatch.setattr(checker, "TASK_BYTES", PL)
    monkeypatch.setenv("MPTORRENT_START_METHOD", method)
    one = verify(meta, layout, 1)
    two = verify(meta, layout, 2)
    assert one == two
    assert one.invalid == [0, 8] and one.missing == [3]
    many = verify(meta, layout, 64)  # more jobs than pieces
    assert many == one


def test_subset_of_pieces(seeded: tuple[Metainfo, Layout, Path]) -> None:
    meta, layout, root = seeded
    damage(meta, root)
    for jobs in (1, 2):
        report = checker.verify(meta, layout, jobs=jobs, pieces=[0, 2, 3, 7, 9])
        assert report.invalid == [0] and report.missing == [3]
        assert [i for i, v in enumerate(report.valid) if v] == [2, 7, 9]
        assert checker.verify(meta, layout, jobs=jobs, pieces=[]).valid_count == 0


def test_progress_counts_every_byte(seeded: tuple[Metainfo, Layout, Path]) -> None:
    meta, layout, _ = seeded
    for jobs in (1, 2):
        seen: list[int] = []
        checker.verify(meta, layout, jobs=jobs, progress=seen.append)
        assert sum(seen) == meta.total_length
        assert len(seen) == meta.num_pieces


def test_hash_pieces_yields_each_piece_once(
    seeded: tuple[Metainfo, Layout, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    meta, layout, _ = seeded
    monkeypatch.setattr(checker, "TASK_BYTES", 2 * PL)
    got = dict(checker.hash_pieces(layout, jobs=2))
    assert sorted(got) == list(range(meta.num_pieces))
    assert all(got[i] == meta.piece_hash(i) for i in got)


@pytest.mark.parametrize(
    ("pieces", "per_task", "runs"),
    [
        ([], 4, []),
        (range(10), 4, [(0, 4), (4, 8), (8, 10)]),
        ([0, 1, 2, 5, 6, 9], 2, [(0, 2), (2, 3), (5, 7), (9, 10)]),
        ([3], 1, [(3, 4)]),
    ],
)
def test_runs(pieces: list[int], per_task: int, runs: list[tuple[int, int]]) -> None:
    assert list(checker._runs(pieces, per_task)) == runs


def test_create_single_file_and_jobs_agree(tmp_path: Path) -> None:
    p = tmp_path / "movie.bin"
    p.write_bytes(os.urandom(7 * PL + 3))
    one = metainfo.parse(create.create(p, piece_length=PL, jobs=1))
    two = metainfo.parse(create.create(p, piece_length=PL, jobs=2))
    assert one.info_hash == two.info_hash
    assert not one.multi_file and one.name == "movie.bin"
    assert verify(one, Layout.for_torrent(one, p), 2).complete
