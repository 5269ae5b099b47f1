"""Table D of tests/adversarial/README.md, disk rows: real filesystems under ``mptorrent fetch``.

Space and read-only cases use real tmpfs mounts (the tests run as root; they skip
otherwise, and under CI that skip fails the run: tests/conftest.py), never a mocked
``disk_usage``.  Every refusal is checked through the command
line: exit 4, exactly one ``mptorrent: error:`` line naming the path, and no network
traffic at all: the peer and the tracker given to the client are listening sockets that
count the connections they accept.  Downloads that must succeed use rate-limited libtorrent
seeders on 127.0.4.x that log which piece each block they serve belongs to, so "only the
missing pieces were fetched" is checked piece by piece.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.adversarial.test_process import REPO, Fetch, Seeders, wait_until_gone, wait_uploaded
from tests.swarm import (
    KiB,
    MiB,
    TorrentCase,
    make_torrent,
    multi_file_case,
    same_tree,
    single_file_case,
    write_torrent,
)

pytestmark = pytest.mark.interop

SIZE = 4 * MiB - 77  # 64 pieces of 64 KiB, the last one short
PIECE = 64 * KiB
RATE = 1_000_000  # per seeder: a whole fetch takes about two seconds


# -- a peer and a tracker that must never be contacted --------------------------------------


class Listener:
    """A listening socket that counts the connections it accepts and closes them."""

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, 0))
        self.sock.settimeout(0.05)
        self.host, self.port = self.sock.getsockname()[:2]
        self.accepts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepts += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def peer() -> Iterator[Listener]:
    lis = Listener("127.0.4.8")
    yield lis
    lis.close()


@pytest.fixture
def tracker() -> Iterator[Listener]:
    lis = Listener("127.0.4.7")
    yield lis
    lis.close()


def run_fetch(torrent: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mptorrent", "fetch", str(torrent), "-o", str(out),
         "--bind", "127.0.4.1", "--port", "0", "--no-dht", *args],
        cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def refused(proc: subprocess.CompletedProcess[str], pattern: str) -> None:
    """Exit 4 and exactly one error line that matches ``pattern`` (a regex)."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == 4, proc.stderr
    assert len(lines) == 1, lines
    assert re.fullmatch(f"mptorrent: error: {pattern}", lines[0]), lines[0]


def snapshot(root: Path, *, with_root: bool = True) -> dict[str, tuple[int, bytes]]:
    """Every entry under ``root`` (and ``root`` itself): its mtime and, for files, bytes."""
    entries = [root, *sorted(root.rglob("*"))][0 if with_root else 1 :]
    return {
        str(p): (p.lstat().st_mtime_ns, p.read_bytes() if p.is_file() else b"") for p in entries
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> TorrentCase:
    return single_file_case(tmp_path_factory.mktemp("disk-src"), SIZE, PIECE, seed=9)


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> TorrentCase:
    return multi_file_case(tmp_path_factory.mktemp("disk-multi"), None, PIECE, seed=10)


@pytest.fixture(scope="module")
def torrent(case: TorrentCase, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_torrent(tmp_path_factory.mktemp("disk-torrent"), case.torrent, "single.torrent")


@pytest.fixture(scope="module")
def multi_torrent(multi: TorrentCase, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_torrent(tmp_path_factory.mktemp("disk-torrent"), multi.torrent, "multi.torrent")


@pytest.fixture(scope="module")
def seeders(case: TorrentCase) -> Iterator[Seeders]:
    with Seeders(case, ["127.0.4.11", "127.0.4.12"], RATE, log_blocks=True) as s:
        yield s


@pytest.fixture(scope="module")
def multi_seeders(multi: TorrentCase) -> Iterator[Seeders]:
    with Seeders(multi, ["127.0.4.21"], 0) as s:
        yield s


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[[Path, str], Path]]:
    """mount(where, options) mounts a fresh tmpfs; everything is unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def do(where: Path, options: str) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
            capture_output=True, text=True,
        )  # fmt: skip
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
        mounted.append(where)
        return where

    yield do
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=True)


# -- D9, D10: space ---------------------------------------------------------------------------


def test_d9_not_enough_space_is_refused_before_any_traffic(
    case: TorrentCase, tmp_path: Path, mount: Callable[[Path, str], Path], peer: Listener,
    tracker: Listener,
) -> None:  # fmt: skip
    small = mount(tmp_path / "small", "size=1m")
    tracked = tmp_path / "tracked.torrent"
    tracked.write_bytes(
        make_torrent(case.payload.root, PIECE, [[f"http://{tracker.addr}/announce"]])
    )
    proc = run_fetch(tracked, small / "out.bin", "--peer", peer.addr)
    # the lock file (taken first, removed on the way out) holds a page during the check
    refused(proc, rf"not enough space in {small}: need 4\.0 MiB, have (?:10\d\d\.\d KiB|1\.0 MiB)")
    time.sleep(0.2)
    assert (peer.accepts, tracker.accepts) == (0, 0)
    assert list(small.iterdir()) == []  # not even the lock file is left


def test_d10_space_taken_after_preflight_does_not_matter(
    case: TorrentCase, torrent: Path, seeders: Seeders, tmp_path: Path,
    mount: Callable[[Path, str], Path],
) -> None:  # fmt: skip
    """Another process fills the disk once the download runs: posix_fallocate reserved
    every block of the output up front, so no write can fault and the fetch completes."""
    disk = mount(tmp_path / "disk", f"size={SIZE // 1024 + 512}k")
    out = disk / "out.bin"
    with Fetch(torrent, out, seeders.args(), jobs=2) as f:
        wait_uploaded(seeders, f, seeders.uploaded() + 256 * KiB)
        assert out.stat().st_blocks * 512 >= SIZE  # reserved, not sparse
        filled = 0
        with open(disk / "filler", "wb", buffering=0) as fh:
            try:
                while True:
                    filled += fh.write(bytes(64 * KiB)) or 0
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        assert shutil.disk_usage(disk).free < 64 * KiB
        assert f.proc.poll() is None, "finished before the disk was full: slow the seeders"
        code = f.wait(30)
        assert code == 0, f.stderr()
    assert filled > 0
    assert same_tree(out, case.payload.root)


def test_d2_output_truncated_under_the_workers_is_a_disk_error(
    torrent: Path, seeders: Seeders, tmp_path: Path
) -> None:
    """The file shrinks while mapped (another process truncated it): the next write through
    the mmap raises a real SIGBUS in the worker, reported as a disk error, exit 4."""
    out = tmp_path / "out.bin"
    with Fetch(torrent, out, seeders.args(), jobs=2) as f:
        wait_uploaded(seeders, f, seeders.uploaded() + 256 * KiB)
        os.truncate(out, 0)
        code = f.wait(20)
        lines = f.stderr().splitlines()
    assert code == 4, lines
    assert len(lines) == 1, lines
    assert re.fullmatch(
        r"mptorrent: error: worker \d was killed by SIGBUS: disk I/O error or disk full", lines[0]
    ), lines  # fmt: skip


# -- D11: nowhere to write ------------------------------------------------------------------


def test_d11_read_only_mount(
    torrent: Path, tmp_path: Path, mount: Callable[[Path, str], Path], peer: Listener
) -> None:
    ro = mount(tmp_path / "ro", "ro,size=1m")
    proc = run_fetch(torrent, ro / "out.bin", "--no-trackers", "--peer", peer.addr)
    refused(proc, rf"cannot create {ro}/\.out\.bin\.mptorrent-lock: Read-only file system")
    assert peer.accepts == 0


def test_d11_read_only_directory_inside_a_multi_file_tree(
    multi_torrent: Path, tmp_path: Path, mount: Callable[[Path, str], Path], peer: Listener
) -> None:
    out = tmp_path / "album"
    media = mount(out / "media", "ro,size=1m")
    proc = run_fetch(multi_torrent, out, "--no-trackers", "--peer", peer.addr)
    refused(proc, rf"cannot create {media}/\S+: Read-only file system")
    assert peer.accepts == 0


def test_d11_immutable_output_directory(torrent: Path, tmp_path: Path, peer: Listener) -> None:
    """Root ignores permission bits, but not the immutable attribute (chattr +i)."""
    locked = tmp_path / "immutable"
    locked.mkdir()
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode:
        pytest.skip("this filesystem has no immutable attribute")
    try:
        proc = run_fetch(torrent, locked / "out.bin", "--no-trackers", "--peer", peer.addr)
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    refused(proc, rf"cannot create {locked}/\.out\.bin\.mptorrent-lock: Operation not permitted")
    assert peer.accepts == 0


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_d11_a_file_where_a_directory_should_be(
    kind: str, torrent: Path, multi_torrent: Path, tmp_path: Path, peer: Listener
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"keep me")
    if kind == "single":
        proc = run_fetch(torrent, blocker / "out.bin", "--no-trackers", "--peer", peer.addr)
    else:
        proc = run_fetch(multi_torrent, blocker, "--no-trackers", "--peer", peer.addr)
    refused(proc, rf"cannot create {blocker}/\S+: {blocker} is not a directory")
    assert blocker.read_bytes() == b"keep me"
    assert peer.accepts == 0


# -- D12: the output already exists ---------------------------------------------------------


def test_d12_same_size_partial_file_resumes_by_recheck(
    case: TorrentCase, torrent: Path, seeders: Seeders, tmp_path: Path
) -> None:
    """Some pieces damaged, some zeroed: the recheck keeps every piece that verifies and
    the seeders are asked for the damaged ones, each of them, and nothing else."""
    meta = case.meta
    out = tmp_path / "out.bin"
    shutil.copyfile(case.payload.root, out)
    garbage, zeroed = {3, 17, 40, meta.num_pieces - 1}, {0, 25, 26, 27}
    with open(out, "r+b") as fh:
        for i in garbage | zeroed:
            fh.seek(i * PIECE + 1000)
            fh.write(bytes(100) if i in zeroed else os.urandom(100))
    seeders.sent_pieces()
    with Fetch(torrent, out, seeders.args(), jobs=2) as f:
        assert f.wait(30) == 0, f.stderr()
        err = f.stderr()
    time.sleep(0.1)
    assert set(seeders.sent_pieces()) == garbage | zeroed
    assert "mptorrent: checking existing data" in err
    kept = meta.num_pieces - len(garbage | zeroed)
    assert f"{kept} piece(s) already on disk" in err.splitlines()[-1], err
    assert same_tree(out, case.payload.root)


def test_d12_shorter_file_resumes_from_its_valid_prefix(
    case: TorrentCase, torrent: Path, seeders: Seeders, tmp_path: Path
) -> None:
    meta = case.meta
    out = tmp_path / "out.bin"
    keep = 20 * PIECE + 5_000  # 20 whole pieces and a bit of the 21st
    out.write_bytes(case.payload.root.read_bytes()[:keep])
    seeders.sent_pieces()
    with Fetch(torrent, out, seeders.args(), jobs=2) as f:
        assert f.wait(30) == 0, f.stderr()
        err = f.stderr()
    time.sleep(0.1)
    assert set(seeders.sent_pieces()) == set(range(20, meta.num_pieces))
    assert "20 piece(s) already on disk" in err.splitlines()[-1], err
    assert same_tree(out, case.payload.root)


def test_d12_larger_file_is_refused_and_left_alone(
    case: TorrentCase, torrent: Path, tmp_path: Path, peer: Listener
) -> None:
    out = tmp_path / "out.bin"
    out.write_bytes(case.payload.root.read_bytes() + b"trailing bytes that are not ours")
    before = sha256(out)
    proc = run_fetch(torrent, out, "--no-trackers", "--peer", peer.addr)
    refused(
        proc,
        rf"existing file {out} is larger than expected \({SIZE + 32} > {SIZE} bytes\)",
    )  # fmt: skip
    assert sha256(out) == before
    assert peer.accepts == 0


def test_d12_larger_file_inside_a_multi_file_tree(
    multi: TorrentCase, multi_torrent: Path, tmp_path: Path, peer: Listener
) -> None:
    out = tmp_path / "album"
    shutil.copytree(multi.payload.root, out)
    cover = out / "media" / "cover.jpg"
    with open(cover, "ab") as fh:
        fh.write(b"!")
    before = snapshot(out, with_root=False)  # the lock file comes and goes in the root
    proc = run_fetch(multi_torrent, out, "--no-trackers", "--peer", peer.addr)
    refused(proc, rf"existing file {cover} is larger than expected \(65537 > 65536 bytes\)")
    assert snapshot(out, with_root=False) == before
    assert peer.accepts == 0


def test_d12_directory_where_the_file_should_be(
    torrent: Path, tmp_path: Path, peer: Listener
) -> None:
    out = tmp_path / "out.bin"
    (out / "inside").mkdir(parents=True)
    proc = run_fetch(torrent, out, "--no-trackers", "--peer", peer.addr)
    refused(proc, rf"{out} is a directory where a file should be")
    assert [p.name for p in out.iterdir()] == ["inside"]
    assert peer.accepts == 0


# -- D13: planted symlinks ------------------------------------------------------------------

# (where the link sits, relative to the output; where it points, relative to the canary)
SYMLINKS: dict[str, tuple[str, str]] = {
    "a directory of the tree": ("media", "."),
    "a nested directory": ("media/season 1", "."),
    "a file of the tree": ("a.bin", "victim.txt"),
    "a dangling file link": ("z/tiny", "created-by-the-fetch"),
}


@pytest.mark.parametrize("name", list(SYMLINKS))
def test_d13_symlink_escaping_a_multi_file_tree_is_refused(
    name: str, multi_torrent: Path, tmp_path: Path, peer: Listener
) -> None:
    where, target = SYMLINKS[name]
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "victim.txt").write_bytes(b"must stay as it is")
    out = tmp_path / "album"
    link = out / where
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(canary / target)
    before = snapshot(canary)
    proc = run_fetch(multi_torrent, out, "--no-trackers", "--peer", peer.addr)
    refused(proc, rf"unsafe path: {re.escape(str(link))} is a symbolic link")
    assert snapshot(canary) == before
    assert not (canary / "created-by-the-fetch").exists()
    assert peer.accepts == 0


def test_d13_symlink_at_the_output_file_is_refused(
    torrent: Path, tmp_path: Path, peer: Listener
) -> None:
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "victim.txt").write_bytes(b"must stay as it is")
    out = tmp_path / "out.bin"
    out.symlink_to(canary / "victim.txt")
    before = snapshot(canary)
    proc = run_fetch(torrent, out, "--no-trackers", "--peer", peer.addr)
    refused(proc, rf"unsafe path: {out} is a symbolic link")
    assert snapshot(canary) == before
    assert peer.accepts == 0


def test_d13_output_directory_named_through_a_symlink_is_followed(
    multi: TorrentCase, multi_torrent: Path, multi_seeders: Seeders, tmp_path: Path
) -> None:
    """The documented choice: the path the user typed is trusted, links inside it are not."""
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with Fetch(multi_torrent, link, multi_seeders.args(), jobs=2) as f:
        assert f.wait(30) == 0, f.stderr()
    assert same_tree(real, multi.payload.root)


# -- D14: two fetches, one output -----------------------------------------------------------


@pytest.fixture
def silent_peer() -> Iterator[list[str]]:
    """A peer that accepts and never answers: a fetch stays busy without progress."""
    with socket.create_server(("127.0.4.9", 0)) as srv:
        yield ["--peer", f"127.0.4.9:{srv.getsockname()[1]}"]


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_d14_second_fetch_on_the_same_output_is_refused(
    kind: str, torrent: Path, multi_torrent: Path, silent_peer: list[str], tmp_path: Path
) -> None:
    if kind == "single":
        src, out = torrent, tmp_path / "out.bin"
        lock = tmp_path / ".out.bin.mptorrent-lock"
    else:
        src, out = multi_torrent, tmp_path / "album"
        lock = out / ".mptorrent-lock"
    with Fetch(src, out, silent_peer, jobs=2) as first:
        deadline = time.monotonic() + 10
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
            assert time.monotonic() < deadline, first.stderr()
            time.sleep(0.02)
        proc = run_fetch(src, out, "--no-trackers", *silent_peer)
        refused(proc, rf"output {out} is locked by another mptorrent \(pid {first.pid}\)")
        assert first.proc.poll() is None
        os.kill(first.pid, signal.SIGTERM)
        assert first.wait(10) == 130
    assert not lock.exists()  # removed by the first fetch on its way out


def test_d14_lock_left_by_a_killed_fetch_does_not_block(
    case: TorrentCase, torrent: Path, seeders: Seeders, silent_peer: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "out.bin"
    lock = tmp_path / ".out.bin.mptorrent-lock"
    with Fetch(torrent, out, silent_peer, jobs=2) as first:
        deadline = time.monotonic() + 10
        while not lock.exists():
            assert time.monotonic() < deadline, first.stderr()
            time.sleep(0.02)
        os.killpg(first.pid, signal.SIGKILL)
        first.proc.wait(5)
        assert wait_until_gone(first.pid, 5)[1] == []  # forked workers share the flock
    assert lock.exists()  # nobody removed it; the kernel released the flock
    with Fetch(torrent, out, seeders.args(), jobs=2) as second:
        assert second.wait(30) == 0, second.stderr()
    assert same_tree(out, case.payload.root)
