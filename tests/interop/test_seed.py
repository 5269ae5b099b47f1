"""`mptorrent seed` and `mptorrent fetch` in loopback swarms with real libtorrent peers.

Our side always runs as the real command in a subprocess; libtorrent peers live in this
process.  Each test takes its own loopback addresses from ``fresh_ip``, so peers that trackers
or libtorrent remember from one test are never mistaken for another test's.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from mptorrent.disk.storage import Layout
from mptorrent.messages import PeerAddr
from mptorrent.netio.net import announce_http
from mptorrent.netio.trackerserver import TrackerServer
from mptorrent.proto.metainfo import Metainfo
from mptorrent.proto.tracker import AnnounceRequest
from tests.dht_off import no_dht
from tests.interop.opentracker import opentracker_binary, run_opentracker
from tests.spread import CLI_WITH_RESULT, RESULT_ENV, assert_spread, read_result
from tests.swarm import (
    KiB,
    LtPeer,
    SwarmError,
    TorrentCase,
    advertised_pieces,
    make_torrent,
    run_lt_leecher,
    same_tree,
    write_torrent,
)

pytestmark = pytest.mark.interop

IpSource = Callable[[], str]

SEEDING_LINE = re.compile(r"^seeding .* on (?P<host>[\d.]+):(?P<port>\d+); Ctrl-C stops$")
SUMMARY = re.compile(r"done: .* (?P<peers>\d+) peer\(s\) used")


def mptorrent(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "mptorrent", *no_dht([str(a) for a in args])]


@dataclass
class SeedProcess:
    proc: subprocess.Popen[str]
    addr: PeerAddr

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C; the exit status and the rest of stderr."""
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=15)
        return self.proc.returncode, err


@contextmanager
def mptorrent_seed(
    torrent: Path, data: Path, ip: str, *extra: str, jobs: int = 2
) -> Iterator[SeedProcess]:
    proc = subprocess.Popen(
        mptorrent("seed", torrent, data, "-j", str(jobs), "--bind", ip, "--port", "0", *extra),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline().strip()  # printed once the workers are started
        m = SEEDING_LINE.match(first)
        assert m, f"unexpected first line {first!r}; exit status {proc.poll()}"
        seed = SeedProcess(proc, PeerAddr(m["host"], int(m["port"])))
        wait_listening(seed.addr)
        yield seed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def wait_listening(addr: tuple[str, int], timeout: float = 10.0) -> None:
    """The seeder reports ready once its workers are started, a moment before they listen."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(addr, timeout=1).close()
            return
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def reporting_fetch(torrent: Path, *args: str | Path) -> list[str]:
    """`mptorrent fetch` that also writes its FetchResult to $MPTORRENT_TEST_RESULT."""
    return [
        sys.executable,
        "-c",
        CLI_WITH_RESULT,
        *no_dht(["fetch", str(torrent), *map(str, args)]),
    ]


def start_fetch(torrent: Path, out: Path, *args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        mptorrent("fetch", torrent, "-o", out, "-q", *args),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@contextmanager
def fetching(torrent: Path, out: Path, *args: str | Path) -> Iterator[subprocess.Popen[str]]:
    """A quiet `mptorrent fetch`, killed on the way out if it is still running."""
    proc = start_fetch(torrent, out, *args)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def peers_used(stderr: str) -> int:
    m = SUMMARY.search(stderr)
    assert m, stderr[-2000:]
    return int(m["peers"])


# -- libtorrent downloads from `mptorrent seed` ---------------------------------------------


@pytest.mark.parametrize(
    ("which", "io"), [("single", "auto"), ("multi", "auto"), ("multi", "pwrite")],
    ids=["single", "multi", "multi-pwrite"],
)  # fmt: skip
def test_libtorrent_leecher_downloads_from_mptorrent_seed_alone(
    which: str, io: str, request: pytest.FixtureRequest, tmp_path: Path, fresh_ip: IpSource
) -> None:
    case: TorrentCase = request.getfixturevalue(f"{which}_case")
    torrent = write_torrent(tmp_path, case.torrent)
    with mptorrent_seed(
        torrent, case.payload.root, fresh_ip(), "--no-trackers", "--io", io
    ) as seed:
        run_lt_leecher(case.torrent, tmp_path / "lt", [seed.addr], ip=fresh_ip(), timeout=60)
        status, err = seed.interrupt()
    assert same_tree(case.payload.root, tmp_path / "lt" / case.payload.root.name)
    assert status == 130, err


def test_seed_whose_data_shrinks_stops_with_exit_4_naming_the_file(
    single_case: TorrentCase, tmp_path: Path, fresh_ip: IpSource
) -> None:
    """Data verified at start and then cut short under the seeder is a storage error (exit
    4, the file named), not a crash and not a loop of restarted workers."""
    torrent = write_torrent(tmp_path, single_case.torrent)
    data = tmp_path / "data" / single_case.payload.root.name
    data.parent.mkdir()
    shutil.copyfile(single_case.payload.root, data)
    with mptorrent_seed(torrent, data, fresh_ip(), "--no-trackers", "--io", "pwrite") as seed:
        os.truncate(data, 1000)
        with pytest.raises(SwarmError):
            run_lt_leecher(single_case.torrent, tmp_path / "lt", [seed.addr], ip=fresh_ip(),
                           timeout=5)  # fmt: skip
        _, err = seed.proc.communicate(timeout=15)
    assert seed.proc.returncode == 4, err
    assert err.splitlines()[-1] == (
        f"mptorrent: error: {data} is missing or shorter than expected"
    ), err
    assert "restarting" not in err, err


def test_seed_with_a_file_missing_serves_the_other_pieces(
    multi_case: TorrentCase, tmp_path: Path, fresh_ip: IpSource
) -> None:
    """Partial data: the pieces of the missing file are neither announced nor a reason
    to fail (serve-only workers open the files read-only and skip what is absent)."""
    torrent = write_torrent(tmp_path, multi_case.torrent)
    data = tmp_path / "data" / multi_case.payload.root.name
    shutil.copytree(multi_case.payload.root, data)
    meta = multi_case.meta
    layout = Layout.for_torrent(meta, data)
    gone = max(range(len(meta.files)), key=lambda i: meta.files[i].length)
    Path(layout.paths[gone]).unlink()
    expected = set(range(meta.num_pieces)) - set(layout.file_pieces(gone))
    with mptorrent_seed(torrent, data, fresh_ip(), "--no-trackers") as seed:
        assert advertised_pieces(seed.addr, multi_case.torrent, source_ip=fresh_ip()) == expected
        status, err = seed.interrupt()
    assert status == 130, err
    assert err.splitlines() == ["mptorrent: error: interrupted"], err  # nothing went wrong


@pytest.mark.parametrize("tracker_kind", ["mptorrent", "opentracker"])
def test_libtorrent_leecher_finds_mptorrent_seed_through_a_tracker(
    tracker_kind: str, multi_case: TorrentCase, tmp_path: Path, fresh_ip: IpSource
) -> None:
    with _tracker(tracker_kind, multi_case.meta.info_hash) as (url, listed):
        # The announce list is outside the info dict: same info-hash, now with a tracker.
        torrent_bytes = make_torrent(multi_case.payload.root, multi_case.meta.piece_length, [[url]])
        torrent = write_torrent(tmp_path, torrent_bytes)
        seed_ip = fresh_ip()
        with mptorrent_seed(torrent, multi_case.payload.root, seed_ip) as seed:
            # announced from its bind address, not the host's default one
            assert seed.addr in listed()
            run_lt_leecher(
                torrent_bytes, tmp_path / "lt", tracker_url=url, ip=fresh_ip(), timeout=60
            )
            status, err = seed.interrupt()
        assert status == 130, err
        assert same_tree(multi_case.payload.root, tmp_path / "lt" / multi_case.payload.root.name)
        assert seed.addr not in listed()  # the "stopped" announce went out


@contextmanager
def _tracker(
    kind: str, info_hash: bytes
) -> Iterator[tuple[str, Callable[[], tuple[PeerAddr, ...]]]]:
    if kind == "mptorrent":
        with TrackerServer("127.0.0.1", 0, interval=60) as server:
            yield server.announce_url, lambda: server.state.peers(info_hash)
        return
    if opentracker_binary() is None:  # under CI a skip fails the run (tests/conftest.py)
        pytest.skip("opentracker is not installed")
    with run_opentracker([info_hash]) as ot:
        yield ot.announce_url, lambda: _opentracker_peers(ot.announce_url, info_hash)


def _opentracker_peers(url: str, info_hash: bytes) -> tuple[PeerAddr, ...]:
    # opentracker answers "stopped" with no peers: join for a moment to read the list
    peer_id = b"-PROBE0-listlistlist"
    req = AnnounceRequest(info_hash, peer_id, 1, 0, 0, 1, event="started", numwant=200)
    peers = announce_http(url, req, timeout=5, source_address="127.0.0.1").peers
    req = AnnounceRequest(info_hash, peer_id, 1, 0, 0, 1, event="stopped")
    announce_http(url, req, timeout=5, source_address="127.0.0.1")
    return tuple(peers)


# -- `mptorrent fetch` with mptorrent and libtorrent peers ----------------------------------


def test_fetch_from_mixed_swarm_uses_both_kinds_of_seeder(
    single_case: TorrentCase, tmp_path: Path, fresh_ip: IpSource
) -> None:
    torrent = write_torrent(tmp_path, single_case.torrent)
    total = single_case.meta.total_length
    with (
        mptorrent_seed(torrent, single_case.payload.root, fresh_ip(), "--no-trackers") as seed,
        LtPeer(single_case.torrent, single_case.save_dir, ip=fresh_ip(), use_trackers=False) as lt,
    ):
        out = tmp_path / "out.bin"
        done = subprocess.run(
            reporting_fetch(torrent, "-o", out, "-j", "2",
                            "--no-trackers", "-q", "--peer", str(seed.addr), "--peer",
                            str(lt.addr), "--bind", fresh_ip(), "--port", "0"),
            capture_output=True, text=True, timeout=120,
            env={**os.environ, RESULT_ENV: str(tmp_path / "result.json")},
        )  # fmt: skip
        lt_sent = lt.stats().payload_upload
        seed.interrupt()
    assert done.returncode == 0, done.stderr[-2000:]
    assert same_tree(single_case.payload.root, out)
    # Pieces are credited to two peers and libtorrent sent at least one piece but not all of
    # them: the rest can only have come from `mptorrent seed`.
    assert peers_used(done.stderr) == 2
    assert single_case.meta.piece_length <= lt_sent < total
    assert_spread(read_result(tmp_path / "result.json").pieces_per_worker, jobs=2, peers=2)


def test_fetch_workers_whose_peers_hold_different_halves_finish_promptly(
    multi_case: TorrentCase, tmp_path: Path, fresh_ip: IpSource
) -> None:
    # Each worker gets one of the two peers, so each can use only half of the pieces the
    # shared queue hands out.  -j 1 takes well under a second here.
    meta = multi_case.meta
    torrent = write_torrent(tmp_path, multi_case.torrent)
    halves = [range(0, meta.num_pieces, 2), range(1, meta.num_pieces, 2)]
    with (
        LtPeer(multi_case.torrent, multi_case.save_dir, ip=fresh_ip(), use_trackers=False,
               have_pieces=halves[0]) as even,
        LtPeer(multi_case.torrent, multi_case.save_dir, ip=fresh_ip(), use_trackers=False,
               have_pieces=halves[1]) as odd,
    ):  # fmt: skip
        t0 = time.monotonic()
        done = subprocess.run(
            reporting_fetch(torrent, "-o", tmp_path / "out", "-j",
                            "2", "--no-trackers", "-q", "--peer", str(even.addr), "--peer",
                            str(odd.addr)),
            capture_output=True, text=True, timeout=60,
            env={**os.environ, RESULT_ENV: str(tmp_path / "result.json")},
        )  # fmt: skip
        elapsed = time.monotonic() - t0
    assert done.returncode == 0, done.stderr[-2000:]
    assert same_tree(multi_case.payload.root, tmp_path / "out")
    assert elapsed < 10, done.stderr
    assert_spread(read_result(tmp_path / "result.json").pieces_per_worker, jobs=2, peers=2)


def test_fetch_serves_what_it_has_while_downloading(
    multi_case: TorrentCase, tmp_path: Path, fresh_ip: IpSource
) -> None:
    torrent = write_torrent(tmp_path, multi_case.torrent)
    total = multi_case.meta.total_length
    fetch_ip = fresh_ip()
    port = free_port(fetch_ip)
    # Slow enough that the fetch is still running when the libtorrent leecher asks it.
    with (
        LtPeer(
            multi_case.torrent, multi_case.save_dir, ip=fresh_ip(), use_trackers=False,
            upload_rate_limit=total // 2,
        ) as seeder,
        fetching(
            torrent, tmp_path / "out", "-j", "2", "--no-trackers", "--peer", str(seeder.addr),
            "--bind", fetch_ip, "--port", str(port),
        ) as fetch,
    ):  # fmt: skip
        wait_listening((fetch_ip, port))
        with LtPeer(
            multi_case.torrent, tmp_path / "lt", ip=fresh_ip(), role="leech",
            use_trackers=False,
        ) as leecher:  # fmt: skip
            leecher.add_peer(fetch_ip, port)
            _, err = fetch.communicate(timeout=60)
            got = leecher.stats()
    assert fetch.returncode == 0, err[-2000:]
    # The leecher knew only the fetch; libtorrent checked every piece it counts, and each
    # of them came whole from the fetch: at least the bytes of its num_pieces smallest pieces.
    meta = multi_case.meta
    sizes = sorted(min(meta.piece_length, total - i * meta.piece_length)
                   for i in range(meta.num_pieces))  # fmt: skip
    assert got.num_pieces > 0
    assert got.payload_download >= sum(sizes[: got.num_pieces]), (got, sizes[:2])


def test_fetch_takes_another_port_when_its_own_is_busy(
    multi_case: TorrentCase, tmp_path: Path, fresh_ip: IpSource
) -> None:
    torrent = write_torrent(tmp_path, multi_case.torrent)
    fetch_ip = fresh_ip()
    with (
        socket.create_server((fetch_ip, 0)) as squatter,
        LtPeer(multi_case.torrent, multi_case.save_dir, ip=fresh_ip(), use_trackers=False) as lt,
    ):
        busy = squatter.getsockname()[1]
        done = subprocess.run(
            mptorrent("fetch", torrent, "-o", tmp_path / "out", "-j", "2", "--no-trackers",
                      "--peer", str(lt.addr), "--bind", fetch_ip, "--port", str(busy)),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(rf"port {busy} is busy; accepting peers on port \d+", done.stderr)
    assert same_tree(multi_case.payload.root, tmp_path / "out")


def test_every_fetch_worker_tells_its_peers_about_every_verified_piece(
    multi_case: TorrentCase, tmp_path: Path, fresh_ip: IpSource
) -> None:
    meta = multi_case.meta
    evens = set(range(0, meta.num_pieces, 2))
    torrent = write_torrent(tmp_path, multi_case.torrent)
    fetch_ip = fresh_ip()
    port = free_port(fetch_ip)
    # A partial seeder: the fetch verifies the even pieces and then waits for the rest.
    with LtPeer(
        multi_case.torrent, multi_case.save_dir, ip=fresh_ip(), use_trackers=False,
        have_pieces=evens, upload_rate_limit=meta.total_length // 2,
    ) as lt:  # fmt: skip
        watchers: list[HaveWatcher] = []
        with fetching(
            torrent, tmp_path / "out", "-j", "2", "--no-trackers", "--peer", str(lt.addr),
            "--bind", fetch_ip, "--port", str(port),
        ) as fetch:  # fmt: skip
            try:
                wait_listening((fetch_ip, port))
                # Several connections, so that the kernel hands some to each worker.
                for _ in range(4):
                    watchers.append(
                        HaveWatcher((fetch_ip, port), meta.info_hash, meta.num_pieces, fresh_ip())
                    )
                collect_until(watchers, evens, time.monotonic() + 20)
                status, err = _interrupt(fetch)
            finally:
                for w in watchers:
                    w.close()
    assert [sorted(evens - w.have) for w in watchers] == [[]] * len(watchers)
    assert all(not (w.have - evens) for w in watchers)
    assert status == 130, err


def _interrupt(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    return proc.returncode, err


class HaveWatcher:
    """A plain peer that has nothing and records what the remote says it has."""

    def __init__(self, addr: tuple[str, int], info_hash: bytes, n: int, ip: str) -> None:
        self.n = n
        self.have: set[int] = set()
        self.buf = bytearray()
        self.sock = socket.create_connection(addr, timeout=5, source_address=(ip, 0))
        self.sock.sendall(b"\x13BitTorrent protocol" + bytes(8) + info_hash + os.urandom(20))

    def close(self) -> None:
        self.sock.close()

    def read(self) -> bool:
        """Take in what arrived; False once the remote closed."""
        data = self.sock.recv(1 << 16)
        self.buf += data
        self._parse()
        return bool(data)

    def _parse(self) -> None:
        if self.buf[:1] == b"\x13":
            if len(self.buf) < 68:
                return
            del self.buf[:68]
        while len(self.buf) >= 4:
            (length,) = struct.unpack_from(">I", self.buf)
            if len(self.buf) < 4 + length:
                return
            body = bytes(self.buf[4 : 4 + length])
            del self.buf[: 4 + length]
            if body[:1] == b"\x05":
                self.have |= {i for i in range(self.n) if body[1 + (i >> 3)] & (0x80 >> (i & 7))}
            elif body[:1] == b"\x04":
                self.have.add(struct.unpack(">I", body[1:5])[0])


def collect_until(watchers: list[HaveWatcher], wanted: set[int], deadline: float) -> None:
    with selectors.DefaultSelector() as sel:
        for w in watchers:
            w.sock.setblocking(False)
            sel.register(w.sock, selectors.EVENT_READ, w)
        while any(not wanted <= w.have for w in watchers) and time.monotonic() < deadline:
            for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
                if not key.data.read():
                    sel.unregister(key.fileobj)


class OnceSeeder:
    """A seeder that gives each piece to one leecher only (BEP 16 super-seeding, simplified).

    It listens on one address per leecher; whoever connects to the k-th is offered the pieces
    i with i % leechers == k, by HAVE messages (nobody gets a bitfield), so a leecher can
    finish only with the others' help.  Once every connection to one address has closed (that
    leecher finished), the rest are offered every piece, so that one leaving first cannot
    strand the others.  Each address serves only the first leecher (by IP) that reached it:
    one that learns the other address from the other leecher's PEX is turned away, or it
    would be offered the other share too.

    Not libtorrent: its super-seeding sends no piece at all to a peer without the fast
    extension (2.1.1), and share mode does not limit what a seed uploads.
    """

    def __init__(
        self, meta: Metainfo, data: Path, ips: list[str], block_delay: float = 0.0
    ) -> None:
        self.meta = meta
        self.block_delay = block_delay  # seconds per block sent: a seed slower than the swarm
        self.data = data.read_bytes()
        self.listeners = [socket.create_server((ip, 0)) for ip in ips]
        self.addrs = [PeerAddr(*ls.getsockname()[:2]) for ls in self.listeners]
        n, k = meta.num_pieces, len(ips)
        self.shares = [{i for i in range(n) if i % k == j} for j in range(k)]
        self.sent = 0  # payload bytes
        self.conns: dict[socket.socket, int] = {}  # -> the listener it came through
        self.owners: dict[int, str] = {}  # listener -> the IP of the leecher it serves
        self.bufs: dict[socket.socket, bytearray] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> OnceSeeder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in [*self.listeners, *self.conns]:
            sock.close()

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            for k, ls in enumerate(self.listeners):
                sel.register(ls, selectors.EVENT_READ, k)
            while not self._stop.is_set():
                for key, _ in sel.select(0.05):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock in self.listeners:
                        conn, (ip, *_) = sock.accept()
                        if self.owners.setdefault(key.data, ip) != ip:
                            conn.close()
                            continue
                        conn.setblocking(True)  # small writes: a blocking sendall is simplest
                        self.conns[conn] = key.data
                        self.bufs[conn] = bytearray()
                        sel.register(conn, selectors.EVENT_READ)
                    elif not self._read(sock):
                        sel.unregister(sock)
                        self._closed(sock)

    def _closed(self, sock: socket.socket) -> None:
        k = self.conns.pop(sock)
        del self.bufs[sock]
        sock.close()
        if k not in self.conns.values():
            everything = set(range(self.meta.num_pieces))
            for other, j in list(self.conns.items()):
                self._offer(other, everything - self.shares[j])
            self.shares = [everything] * len(self.shares)

    def _offer(self, sock: socket.socket, pieces: set[int]) -> None:
        try:
            sock.sendall(b"".join(struct.pack(">IBI", 5, 4, i) for i in sorted(pieces)))
        except OSError:
            pass  # seen as a close at the next read

    def _read(self, sock: socket.socket) -> bool:
        try:
            data = sock.recv(1 << 16)
            if not data:
                return False
            buf = self.bufs[sock]
            buf += data
            return self._parse(sock, buf)
        except OSError:
            return False

    def _parse(self, sock: socket.socket, buf: bytearray) -> bool:
        if buf[:1] == b"\x13":
            if len(buf) < 68:
                return True
            if buf[28:48] != self.meta.info_hash:
                return False
            del buf[:68]
            hs = b"\x13BitTorrent protocol" + bytes(8) + self.meta.info_hash + os.urandom(20)
            sock.sendall(hs + struct.pack(">IB", 1, 1))  # handshake, unchoke
            self._offer(sock, self.shares[self.conns[sock]])
        while len(buf) >= 4:
            (length,) = struct.unpack_from(">I", buf)
            if len(buf) < 4 + length:
                return True
            body = bytes(buf[4 : 4 + length])
            del buf[: 4 + length]
            if body[:1] == b"\x06":
                index, begin, size = struct.unpack(">III", body[1:13])
                if index not in self.shares[self.conns[sock]]:
                    return False
                start = index * self.meta.piece_length + begin
                block = self.data[start : start + size]
                sock.sendall(struct.pack(">IBII", 9 + size, 7, index, begin) + block)
                self.sent += size
                if self.block_delay:
                    time.sleep(self.block_delay)
        return True


def test_two_fetches_trade_what_a_seeder_gave_each_of_them_once(
    single_case: TorrentCase, tmp_path: Path, fresh_ip: IpSource
) -> None:
    meta = single_case.meta
    with (
        TrackerServer("127.0.0.1", 0, interval=60) as tracker,
        # About 30 MiB/s: slower than the fetches trade with each other, as a seed usually
        # is, so the one that finishes first (and leaves: no --seed-time) does not leave
        # the other much to get from the seeder again.
        OnceSeeder(
            meta, single_case.payload.root, [fresh_ip(), fresh_ip()], block_delay=0.0005
        ) as seeder,
    ):
        # Only the tracker tells the fetches about each other.
        torrent = tmp_path / "tracked.torrent"
        torrent.write_bytes(
            make_torrent(single_case.payload.root, meta.piece_length, [[tracker.announce_url]])
        )
        fetches = []
        for k, addr in enumerate(seeder.addrs):
            args = ["-j", "2", "--peer", str(addr), "--bind", fresh_ip(), "--port", "0"]
            fetches.append(start_fetch(torrent, tmp_path / f"out{k}", *args))
        try:
            errs = [f.communicate(timeout=60)[1] for f in fetches]
        finally:
            for f in fetches:
                if f.poll() is None:
                    f.kill()
                    f.communicate()
    for f, err in zip(fetches, errs, strict=True):
        assert f.returncode == 0, err[-2000:]
        # the seeder and the other fetch (perhaps on more than one connection)
        assert peers_used(err) >= 2, err
    for k in range(2):
        assert same_tree(single_case.payload.root, tmp_path / f"out{k}")
    # Each fetch was offered only its half until the other had left.
    assert seeder.sent < 1.25 * meta.total_length, (seeder.sent, errs)


# -- a seed worker killed while it uploads ---------------------------------------------------

KILLED_NOTE = re.compile(r"^mptorrent: seed worker (\d+) died \(signal 9\); restarting it$", re.M)
LEECH_RATE = 512 * KiB  # bytes/s per leecher: the multi-file case takes each about 9 s


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (the seed's workers, whatever the start method)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                kids = Path(f"/proc/{p}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for k in map(int, kids):
                if k not in found:
                    found.add(k)
                    todo.append(k)
    return found


def _proc_net_ip(hex_ip: str) -> str:
    return socket.inet_ntoa(int(hex_ip, 16).to_bytes(4, "little"))


def connection_owners(pids: set[int], local: PeerAddr) -> dict[str, tuple[int, str]]:
    """remote IP -> (pid, socket inode) of an established TCP connection to it on ``local``."""
    inodes: dict[str, str] = {}  # socket inode -> remote IP
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        lhost, lport = fields[1].split(":")
        rhost = fields[2].split(":")[0]
        if fields[3] == "01" and (_proc_net_ip(lhost), int(lport, 16)) == local:
            inodes[fields[9]] = _proc_net_ip(rhost)
    owners: dict[str, tuple[int, str]] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                owners[inodes[target[8:-1]]] = (pid, target[8:-1])
    return owners


def test_seed_worker_killed_while_uploading_is_restarted_and_the_others_serve_on(
    multi_case: TorrentCase, tmp_path: Path, fresh_ip: IpSource
) -> None:
    """SIGKILL the seed worker that is uploading to one libtorrent leecher: the workers
    serving the other leechers keep sending meanwhile, the pool restarts the dead one (and
    says so), and every leecher completes (the cut-off one by dialling again)."""
    torrent = write_torrent(tmp_path, multi_case.torrent)
    root = multi_case.payload.root
    with ExitStack() as stack:
        seed = stack.enter_context(
            mptorrent_seed(torrent, root, fresh_ip(), "--no-trackers", jobs=3)
        )
        workers = descendants(seed.proc.pid)  # (and a fork server, under forkserver)
        assert len(workers) >= 3, workers
        leechers: list[LtPeer] = []
        owners: dict[str, tuple[int, str]] = {}
        # The kernel spreads connections over the workers' listeners: add leechers until
        # at least two workers are uploading.
        while len({pid for pid, _ in owners.values()}) < 2:
            assert len(leechers) < 6, owners
            for _ in range(3 if not leechers else 1):
                lt = stack.enter_context(
                    LtPeer(multi_case.torrent, tmp_path / f"lt{len(leechers)}", ip=fresh_ip(),
                           role="leech", use_trackers=False, settings={"min_reconnect_time": 1})
                )  # fmt: skip
                lt.handle.set_download_limit(LEECH_RATE)
                lt.add_peer(*seed.addr)
                leechers.append(lt)
            deadline = time.monotonic() + 10
            while any(lt.stats().payload_download < 128 * KiB for lt in leechers):  # under way
                assert time.monotonic() < deadline, [lt.stats() for lt in leechers]
                time.sleep(0.02)
            owners = connection_owners(workers, seed.addr)
        victim = next(owners[lt.ip][0] for lt in leechers if lt.ip in owners)
        others = [lt for lt in leechers if owners.get(lt.ip, (victim,))[0] != victim]
        before = [lt.stats().payload_download for lt in others]
        assert all(lt.stats().progress < 0.8 for lt in leechers)  # mid-upload
        os.kill(victim, signal.SIGKILL)
        # The other workers serve on, on the same connections, while the dead one restarts
        # (libtorrent updates its counters about once a second).
        deadline = time.monotonic() + 5
        while any(lt.stats().payload_download <= b for lt, b in zip(others, before, strict=True)):
            assert time.monotonic() < deadline, (before, [lt.stats() for lt in others])
            time.sleep(0.05)
        still = connection_owners(workers, seed.addr)
        assert all(still.get(lt.ip) == owners[lt.ip] for lt in others), (owners, still)
        deadline = time.monotonic() + 10
        while len(now := descendants(seed.proc.pid)) < len(workers) or victim in now:
            assert time.monotonic() < deadline, now
            time.sleep(0.02)
        for lt in leechers:
            lt.add_peer(*seed.addr)  # as a re-announce would tell it again
        for lt in leechers:
            lt.wait_finished(60)
        status, err = seed.interrupt()
    assert status == 130, err
    assert len(KILLED_NOTE.findall(err)) == 1, err  # the pool's restart, said once
    for k in range(len(leechers)):
        assert same_tree(root, tmp_path / f"lt{k}" / root.name)
