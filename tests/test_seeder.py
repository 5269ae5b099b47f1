"""`mptorrent seed` as a command: start-up, the tracker, Ctrl-C, and its listening port."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mptorrent.disk.create import create
from mptorrent.engine.seeder import reserve_port
from mptorrent.errors import StorageError
from mptorrent.messages import PeerAddr
from mptorrent.netio.trackerserver import TrackerServer
from mptorrent.proto import metainfo
from mptorrent.proto.metainfo import Metainfo
from mptorrent.worker.process import listen_socket
from tests.swarm import advertised_pieces

PIECE = 32 * 1024
SIZE = 10 * PIECE + 123
SEEDING_LINE = re.compile(r"^seeding (?P<name>\S+) \((?P<valid>\d+)/(?P<n>\d+) pieces\) "
                          r"on (?P<host>[\d.]+):(?P<port>\d+); Ctrl-C stops$")  # fmt: skip


@dataclass(frozen=True)
class Case:
    torrent: Path
    data: Path
    meta: Metainfo


@pytest.fixture(scope="module")
def tracker() -> Iterator[TrackerServer]:
    with TrackerServer("127.0.0.1", 0, interval=60) as server:
        yield server


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory, tracker: TrackerServer) -> Case:
    d = tmp_path_factory.mktemp("seeder")
    data = d / "movie.bin"
    data.write_bytes(hashlib.shake_256(b"test_seeder").digest(SIZE))
    torrent = d / "movie.torrent"
    torrent.write_bytes(create(data, trackers=[[tracker.announce_url]], piece_length=PIECE))
    return Case(torrent, data, metainfo.load(torrent))


def seed_cmd(case: Case, data: Path, ip: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mptorrent", "seed", str(case.torrent), str(data),
            "-j", "2", "--bind", ip, "--no-dht", *extra]  # fmt: skip


def start_seed(case: Case, ip: str, *extra: str) -> tuple[subprocess.Popen[str], re.Match[str]]:
    proc = subprocess.Popen(
        seed_cmd(case, case.data, ip, "--port", "0", *extra),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    first = proc.stderr.readline().rstrip("\n")
    m = SEEDING_LINE.match(first)
    if m is None:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"first stderr line {first!r}; then {err!r}")
    return proc, m


def children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # the command name in parentheses may hold spaces: the ppid follows the last ')'
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.add(int(entry))
    return found


def connectable(addr: tuple[str, int]) -> bool:
    try:
        socket.create_connection(addr, timeout=1).close()
    except OSError:
        return False
    return True


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_exits_130_after_a_stopped_announce(
    case: Case, tracker: TrackerServer, sig: signal.Signals
) -> None:
    ip = "127.0.9.10" if sig == signal.SIGINT else "127.0.9.11"
    proc, m = start_seed(case, ip)
    try:
        assert (m["name"], m["valid"], m["n"]) == ("movie.bin", "11", "11")
        me = PeerAddr(ip, int(m["port"]))
        # announced from the bind address, with the port its workers listen on
        assert wait_for(lambda: me in tracker.state.peers(case.meta.info_hash))
        workers = children(proc.pid)
        assert len(workers) >= 2  # -j 2 (multiprocessing may add a helper)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    assert out == ""
    assert err.splitlines() == ["mptorrent: error: interrupted"]
    assert me not in tracker.state.peers(case.meta.info_hash)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


def test_quiet_seed_prints_nothing_but_the_interruption(case: Case) -> None:
    proc = subprocess.Popen(
        seed_cmd(case, case.data, "127.0.9.12", "--port", "0", "--no-trackers", "-q"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # no ready line to wait for: wait for the worker processes instead
        assert wait_for(lambda: len(children(proc.pid)) >= 2)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, out, err) == (130, "", "mptorrent: error: interrupted\n")


def test_seeds_only_the_pieces_that_verify(case: Case, tmp_path: Path) -> None:
    data = bytearray(case.data.read_bytes())
    data[3 * PIECE] ^= 1
    data[-1] ^= 1  # the short last piece
    broken = tmp_path / "movie.bin"
    broken.write_bytes(data)
    proc = subprocess.Popen(
        seed_cmd(case, broken, "127.0.9.13", "--port", "0", "--no-trackers"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        m = SEEDING_LINE.match(proc.stderr.readline().rstrip("\n"))
        assert m and (m["valid"], m["n"]) == ("9", "11")
        # Not only its own count: what a peer on the wire is offered is every piece but the
        # two broken ones.
        addr = ("127.0.9.13", int(m["port"]))
        assert wait_for(lambda: connectable(addr))
        offered = advertised_pieces(addr, case.torrent.read_bytes(), source_ip="127.0.9.18")
        assert offered == set(range(11)) - {3, 10}, sorted(offered)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130


def test_nothing_to_seed_is_a_storage_error(case: Case, tmp_path: Path) -> None:
    wrong = tmp_path / "movie.bin"
    wrong.write_bytes(bytes(SIZE))
    done = subprocess.run(
        seed_cmd(case, wrong, "127.0.9.14", "--port", "0", "--no-trackers"),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 4
    assert done.stderr.splitlines()[-1].startswith("mptorrent: error: nothing to seed")


def test_a_port_another_seeder_listens_on_is_refused(case: Case) -> None:
    ip = "127.0.9.15"
    first, m = start_seed(case, ip, "--no-trackers")
    try:
        second = subprocess.run(
            seed_cmd(case, case.data, ip, "--port", m["port"], "--no-trackers"),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        # Sharing it through SO_REUSEPORT would hand the first seeder's peers to the second.
        assert second.returncode == 4, second.stderr
        assert f"cannot listen on {ip}:{m['port']}" in second.stderr
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=15)


def test_reserve_port_refuses_a_port_with_listeners_but_lets_workers_join() -> None:
    holder = reserve_port("127.0.9.16", 0)
    port = holder.getsockname()[1]
    workers = [listen_socket("127.0.9.16", port) for _ in range(2)]  # as seed workers do
    try:
        with pytest.raises(StorageError, match=f"cannot listen on 127.0.9.16:{port}"):
            reserve_port("127.0.9.16", port)
        other = reserve_port("127.0.9.17", port)  # the same port on another address is free
        other.close()
    finally:
        for s in [holder, *workers]:
            s.close()
    again = reserve_port("127.0.9.16", port)  # free once everyone has gone
    again.close()
