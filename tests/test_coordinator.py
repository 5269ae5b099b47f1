"""The download engine end to end, in-process, against mptorrent's own seeders.

Real processes and sockets on loopback: each seeder is a ``python -m mptorrent seed``
subprocess on its own 127.0.0.2x address, and ``coordinator.fetch`` runs here with its worker
processes.  No libtorrent: tests/interop covers other clients.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import multiprocessing
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from mptorrent import events as ev
from mptorrent.cli.render import render
from mptorrent.disk.create import create
from mptorrent.engine.coordinator import (
    HURRY_RATIO,
    UNLOAD_AFTER,
    FetchOptions,
    FetchResult,
    done_event,
    fetch,
    lagging_workers,
    slow_workers,
)
from mptorrent.errors import DownloadError
from mptorrent.messages import PeerAddr
from mptorrent.proto import metainfo
from mptorrent.proto.metainfo import Metainfo
from tests.fakes.evil_tracker import EvilTracker
from tests.spread import assert_spread

KiB = 1024
MiB = 1024 * KiB
SINGLE_SIZE = 48 * MiB - 12_345  # 768 pieces of 64 KiB, the last one short
TREE: dict[str, int] = {
    "a.bin": 1 * MiB + 12_345,
    "docs/readme.txt": 1_000,
    "docs/empty.dat": 0,
    "media/season 1/ep1.mkv": 2 * MiB + 1,
    "media/season 1/ep2.mkv": 777_777,
    "media/cover.jpg": 65_536,
    "z/tiny": 1,
}
READY = re.compile(r"seeding .* on (?P<host>[\d.]+):(?P<port>\d+); Ctrl-C stops")


# -- data ---------------------------------------------------------------------------------


def write_random(path: Path, size: int, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        chunk = 0
        while size:
            n = min(size, 4 * MiB)
            fh.write(hashlib.shake_128(f"{key}:{chunk}".encode()).digest(n))
            size -= n
            chunk += 1


@dataclass(frozen=True)
class Case:
    root: Path  # the file, or the top folder of a multi-file torrent
    torrent: Path
    meta: Metainfo


def make_case(directory: Path, spec: int | Mapping[str, int], piece_length: int) -> Case:
    if isinstance(spec, int):
        root = directory / "movie.bin"
        write_random(root, spec, "single")
    else:
        root = directory / "album"
        for rel, size in spec.items():
            write_random(root / rel, size, rel)
    data = create(root, piece_length=piece_length, jobs=1)
    torrent = directory / f"{root.name}.torrent"
    torrent.write_bytes(data)
    return Case(root, torrent, metainfo.parse(data))


def same_tree(a: Path, b: Path) -> bool:
    if a.is_file() or b.is_file():
        return a.is_file() and b.is_file() and filecmp.cmp(a, b, shallow=False)
    names_a = sorted(p.relative_to(a) for p in a.rglob("*"))
    names_b = sorted(p.relative_to(b) for p in b.rglob("*"))
    return names_a == names_b and all(
        (a / n).is_dir() == (b / n).is_dir()
        and ((a / n).is_dir() or filecmp.cmp(a / n, b / n, shallow=False))
        for n in names_a
    )


# -- seeders ------------------------------------------------------------------------------


class SeederProcess:
    """``mptorrent seed`` on ``host``, a free port; stderr is kept for failure messages."""

    def __init__(self, case: Case, host: str, timeout: float = 30.0) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mptorrent", "seed", str(case.torrent), str(case.root),
             "-j", "1", "--bind", host, "--port", "0", "--no-trackers", "--no-dht"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            self.addr = self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        threading.Thread(target=self._drain, daemon=True).start()

    def _wait_ready(self, timeout: float) -> PeerAddr:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stderr], [], [], 0.1)
            if not ready:
                continue
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line.rstrip("\n"))
            m = READY.search(line)
            if m:
                return PeerAddr(m["host"], int(m["port"]))
        raise RuntimeError(f"seeder not ready: exit {self.proc.poll()}, {self.lines[-5:]}")

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the graceful path, like Ctrl-C
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_seeders(case: Case, hosts: list[str]) -> Iterator[list[PeerAddr]]:
    seeders: list[SeederProcess] = []
    try:
        for host in hosts:
            seeders.append(SeederProcess(case, host))
        yield [s.addr for s in seeders]
    finally:
        for s in seeders:
            s.stop()


class Recorder:
    """A progress sink that keeps what the coordinator reports."""

    def __init__(self) -> None:
        self.total = 0
        self.done = 0
        self.notes: list[str] = []
        self.details: list[str] = []
        self.updated = threading.Event()

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.Started):
            self.total, self.done = event.total, event.done
        elif isinstance(event, ev.Progress):
            self.done = event.done
            self.updated.set()
        elif isinstance(event, ev.WorkerError):
            self.notes.append(event.message)
            self.details.append(event.detail)
        elif not isinstance(event, ev.Done) and (text := render(event)) is not None:
            self.notes.append(text.removeprefix("mptorrent: "))


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return make_case(tmp_path_factory.mktemp("single"), SINGLE_SIZE, 64 * KiB)


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return make_case(tmp_path_factory.mktemp("multi"), TREE, 32 * KiB)


@pytest.fixture(scope="module")
def single_peers(single: Case) -> Iterator[list[PeerAddr]]:
    yield from start_seeders(single, ["127.0.0.21", "127.0.0.22"])


@pytest.fixture(scope="module")
def multi_peers(multi: Case) -> Iterator[list[PeerAddr]]:
    yield from start_seeders(multi, ["127.0.0.23", "127.0.0.24"])


def options(peers: list[PeerAddr], jobs: int, no_peers_timeout: float = 30.0) -> FetchOptions:
    return FetchOptions(
        jobs=jobs, peers=tuple(peers), use_trackers=False, no_peers_timeout=no_peers_timeout
    )


def check_result(res: FetchResult, case: Case, peers: list[PeerAddr], jobs: int) -> None:
    n = case.meta.num_pieces
    assert res.total_length == case.meta.total_length
    assert res.downloaded == case.meta.total_length
    assert res.resumed_pieces == 0
    assert sum(res.pieces_per_worker.values()) == n
    assert set(res.pieces_per_worker) <= set(range(jobs))
    assert sum(res.pieces_per_peer.values()) == n
    assert set(res.pieces_per_peer) <= set(peers)


# -- downloads ----------------------------------------------------------------------------


@pytest.mark.parametrize("jobs", [1, 3])
def test_single_file(single: Case, single_peers: list[PeerAddr], tmp_path: Path, jobs: int) -> None:
    out = tmp_path / "movie.bin"
    res = fetch(single.meta, out, options(single_peers, jobs))
    assert same_tree(out, single.root)
    check_result(res, single, single_peers, jobs)
    # 768 pieces take long enough for every worker to start: with two seeders, two workers
    # (each dials its own seeder first) verify pieces.  The 4 MiB tree below can be done by
    # the first worker before a spawned second one has connected.
    assert_spread(res.pieces_per_worker, jobs, len(single_peers))
    if jobs >= 2:
        assert len(res.pieces_per_peer) == 2, res.pieces_per_peer


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multi_file_under_each_start_method(
    multi: Case, multi_peers: list[PeerAddr], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    method: str,
) -> None:  # fmt: skip
    monkeypatch.setenv("MPTORRENT_START_METHOD", method)
    out = tmp_path / "album"
    res = fetch(multi.meta, out, options(multi_peers, 2))
    assert same_tree(out, multi.root)
    assert (out / "docs" / "empty.dat").stat().st_size == 0
    check_result(res, multi, multi_peers, 2)


def fetch_killing_one_worker(torrent: str, out: str, peers: list[str], jobs: int) -> None:
    """Child-process body of the test below: fetch in-process, SIGKILL one worker once a
    quarter is verified, print what happened as JSON, exit."""
    meta = metainfo.load(torrent)
    progress = Recorder()
    report: dict[str, object] = {}

    def killer() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            progress.updated.wait(0.05)
            progress.updated.clear()
            if progress.total and progress.done >= progress.total // 4:
                pids = [
                    p.pid for p in multiprocessing.active_children()
                    if p.name.startswith("mptorrent-worker-") and p.pid is not None
                ]  # fmt: skip
                if pids:
                    report["done_at_kill"] = progress.done
                    os.kill(pids[0], signal.SIGKILL)
                    report["killed"] = pids[0]
                    return

    threading.Thread(target=killer, daemon=True).start()
    addrs = tuple(PeerAddr(h, int(p)) for h, _, p in (a.rpartition(":") for a in peers))
    t0 = time.monotonic()
    res = fetch(meta, out, FetchOptions(jobs=jobs, peers=addrs, use_trackers=False), progress)
    report.update(
        took=time.monotonic() - t0, done=progress.done, total=progress.total,
        notes=progress.notes, downloaded=res.downloaded,
        per_worker=sum(res.pieces_per_worker.values()),
    )  # fmt: skip
    print(json.dumps(report), flush=True)


def test_worker_killed_mid_download(
    single: Case, single_peers: list[PeerAddr], tmp_path: Path
) -> None:
    """SIGKILL one worker once a quarter is verified: the coordinator restarts the workers,
    the result is byte-identical, and the process still exits.

    The fetch runs in a child interpreter because a wedged multiprocessing queue shows only
    at interpreter exit, which must not hang the test session.
    """
    out = tmp_path / "movie.bin"
    code = (
        "import sys; from tests.test_coordinator import fetch_killing_one_worker as f; "
        "f(sys.argv[1], sys.argv[2], sys.argv[3].split(','), 3)"
    )
    peers = ",".join(f"{a.host}:{a.port}" for a in single_peers)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(single.torrent), str(out), peers],
        cwd=Path(__file__).resolve().parents[1], stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the report, printed once fetch() returned
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"fetch() returned but the process did not exit: {line}")
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == 0, err
    report = json.loads(line)
    size = single.meta.total_length
    assert "killed" in report, "no worker was killed: the download ended before a quarter"
    assert report["done_at_kill"] < size
    assert report["done"] == report["total"] == report["downloaded"] == size
    assert any(f"died (signal {signal.SIGKILL})" in n for n in report["notes"]), report
    assert same_tree(out, single.root)
    # pieces whose report died with the worker are found on disk, credited to no worker
    assert report["per_worker"] <= single.meta.num_pieces
    assert report["took"] < 30, report


# -- what trackers hear ---------------------------------------------------------------------


def announce_events(t: EvilTracker) -> list[str]:
    with t.lock:
        reqs = list(t.http_requests)
    return [
        r.query.get("event", [b""])[0].decode() or "(regular)"
        for r in reqs if r.path.endswith("/announce")
    ]  # fmt: skip


@pytest.fixture
def tracked(single: Case, single_peers: list[PeerAddr]) -> Iterator[tuple[EvilTracker, Metainfo]]:
    """A recording tracker on 127.0.0.26 that hands out the seeders, and the torrent naming it."""
    with EvilTracker("127.0.0.26") as t:
        t.peers = list(single_peers)
        data = create(single.root, trackers=[[t.http_url()]], piece_length=64 * KiB, jobs=1)
        meta = metainfo.parse(data)
        assert meta.info_hash == single.meta.info_hash
        yield t, meta


def test_fetch_announces_started_completed_stopped(
    tracked: tuple[EvilTracker, Metainfo], single: Case, tmp_path: Path
) -> None:
    """fetch does not stay to seed, so it leaves the swarm with event=stopped (BEP 3:
    "Downloaders send an announcement using stopped when they cease downloading")."""
    t, meta = tracked
    out = tmp_path / "movie.bin"
    fetch(meta, out, FetchOptions(jobs=2))
    assert same_tree(out, single.root)
    events = announce_events(t)
    assert events[0] == "started", events
    assert events.count("completed") == 1, events
    assert events[-1] == "stopped", events


def test_fetch_of_complete_data_sends_no_completed(
    tracked: tuple[EvilTracker, Metainfo], single: Case, tmp_path: Path
) -> None:
    """BEP 3: "No completed is sent if the file was complete when started"."""
    t, meta = tracked
    out = tmp_path / "movie.bin"
    fetch(meta, out, FetchOptions(jobs=2))
    with t.lock:
        t.http_requests.clear()
    res = fetch(meta, out, FetchOptions(jobs=2))
    assert res.resumed_pieces == meta.num_pieces
    assert "completed" not in announce_events(t), announce_events(t)


def test_workers_without_peers_are_not_started(
    tracked: tuple[EvilTracker, Metainfo], single: Case, single_peers: list[PeerAddr],
    tmp_path: Path,
) -> None:  # fmt: skip
    """Two seeders from the tracker at -j 4: worker 0 starts with the fetch, worker 1 with
    the first seeder the tracker's reply gives it, and workers 2 and 3, with no peer to
    talk to, never start (an idle forked worker costs 16-17 MiB of the tree's memory)."""
    _, meta = tracked
    workers: list[int] = []

    def sink(event: ev.Event) -> None:
        if isinstance(event, ev.Progress):
            workers.append(event.workers)

    res = fetch(meta, tmp_path / "movie.bin", FetchOptions(jobs=4), sink)
    assert same_tree(tmp_path / "movie.bin", single.root)
    check_result(res, single, single_peers, 2)  # only workers 0 and 1 verified pieces
    assert workers and max(workers) <= 2, workers
    assert set(res.pieces_per_peer) == set(single_peers), res.pieces_per_peer


def test_a_listening_fetch_with_shares_of_one_starts_no_idle_worker(
    tracked: tuple[EvilTracker, Metainfo], single: Case, single_peers: list[PeerAddr],
    tmp_path: Path,
) -> None:  # fmt: skip
    """-j 4 --max-peers 4, listening: every share is one connection, so the started workers
    are "near their share" only once each has its peer; nobody dials in, so the two without
    a seeder never start (with ``share - 1`` a worker with no peer was "near" and one more
    started every loop turn)."""
    _, meta = tracked
    workers: list[int] = []

    def sink(event: ev.Event) -> None:
        if isinstance(event, ev.Progress):
            workers.append(event.workers)

    opts = FetchOptions(jobs=4, max_peers=4, bind="127.0.0.28", port=0)
    res = fetch(meta, tmp_path / "movie.bin", opts, sink)
    assert same_tree(tmp_path / "movie.bin", single.root)
    assert workers and max(workers) <= 2, workers
    assert set(res.pieces_per_peer) == set(single_peers), res.pieces_per_peer


# -- no way to finish ---------------------------------------------------------------------


def test_only_peer_refuses_connections(single: Case, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.25", 0))  # bound, never listening: every connect is refused
        dead = PeerAddr("127.0.0.25", s.getsockname()[1])
        t0 = time.monotonic()
        with pytest.raises(DownloadError, match=r"no peer could be reached for 1 s"):
            fetch(single.meta, tmp_path / "movie.bin", options([dead], 2, no_peers_timeout=1.0))
    assert time.monotonic() - t0 < 10


def test_no_trackers_and_no_peers(single: Case, tmp_path: Path) -> None:
    assert single.meta.trackers == ()
    with pytest.raises(
        DownloadError, match="no peers: the torrent lists no trackers and no --peer was given"
    ):
        fetch(single.meta, tmp_path / "movie.bin", FetchOptions(jobs=2))


def test_trackers_turned_off_and_no_peers(tmp_path: Path) -> None:
    """The torrent does list a tracker; the message must not say it lists none."""
    src = tmp_path / "f.bin"
    write_random(src, 100_000, "tracked")
    meta = metainfo.parse(
        create(src, trackers=[["http://127.0.0.1:1/announce"]], piece_length=16 * KiB)
    )
    with pytest.raises(DownloadError, match="no peers") as err:
        fetch(meta, tmp_path / "out.bin", FetchOptions(jobs=1, use_trackers=False))
    assert "lists no trackers" not in str(err.value)


def _result(**kw: object) -> FetchResult:
    base: dict[str, object] = dict(
        total_length=100 * MiB, downloaded=100 * MiB, elapsed=2.0, resumed_pieces=0,
        peers_used=3, pieces_per_worker={}, pieces_per_peer={},
    )  # fmt: skip
    base.update(kw)
    return FetchResult(**base)  # type: ignore[arg-type]


def summary(res: FetchResult) -> str:
    text = render(done_event(res))
    assert text is not None
    return text


def test_summary_names_wasted_bytes_beyond_one_percent() -> None:
    clean = summary(_result(received=100 * MiB + MiB // 2))
    assert clean == "done: 100.0 MiB in 2.0 s, 50.0 MiB/s average, 3 peer(s) used"
    wasted = summary(_result(received=103 * MiB))
    assert wasted.endswith(", 3.0 MiB received twice or discarded")


def test_an_idle_worker_unloads_every_worker_that_would_hold_its_pieces_long() -> None:
    """The end of a download (coordinator._unload_slow): each worker that needs over
    UNLOAD_AFTER s for its leased pieces at its rate gives back the unstarted ones, not only
    the slowest; the idle worker (not in ``rates``) is never asked."""
    assert UNLOAD_AFTER <= 0.5  # a tail of 0.5 s is ~7% of a 7 s fetch: worth moving
    owner = {1: {0}, 2: {0}, 3: {1}, 4: {1}, 5: {1}, 6: {0, 1}, 7: {2}, 8: {2}, 9: {3}}
    rates = {0: 20.0 * MiB, 1: 2.0 * MiB, 2: 3.0 * MiB}  # 0.15 s, 2 s and 0.67 s of pieces
    assert slow_workers(owner, rates, MiB) == [1, 2]
    assert slow_workers(owner, {**rates, 2: 5.0 * MiB}, MiB) == [1]
    assert slow_workers(owner, {1: 0.0}, MiB) == [1]  # no rate yet: anything it holds is slow
    assert slow_workers({}, rates, MiB) == []


def test_workers_not_started_lend_their_share_of_max_peers(single: Case, tmp_path: Path) -> None:
    """-j 4 --max-peers 8 with one unreachable --peer: the workers left unstarted lend their
    share of --max-peers to the started ones, which alone accept peers that dial us; six
    peers dialling in are all answered (unlent, worker 0 would have taken two of them)."""
    out = tmp_path / "movie.bin"
    with socket.socket() as dead, socket.socket() as probe:
        dead.bind(("127.0.0.26", 0))  # bound, never listening: every connect is refused
        probe.bind(("127.0.0.27", 0))
        port = probe.getsockname()[1]
        probe.close()  # a free port for the fetch to listen on
        cmd = [
            sys.executable, "-m", "mptorrent", "fetch", str(single.torrent), "-o", str(out),
            "-j", "4", "--max-peers", "8", "--no-trackers", "--no-dht", "-q",
            "--bind", "127.0.0.27", "--port", str(port),
            "--peer", f"127.0.0.26:{dead.getsockname()[1]}", "--stall-timeout", "60",
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
        socks: list[socket.socket] = []
        try:
            handshake = b"\x13BitTorrent protocol" + bytes(8) + single.meta.info_hash
            deadline = time.monotonic() + 20
            for k in range(6):
                while True:  # refused until a worker listens
                    s = socket.socket()
                    s.bind((f"127.0.9.{k + 1}", 0))
                    try:
                        s.connect(("127.0.0.27", port))
                        break
                    except ConnectionRefusedError:
                        s.close()
                        assert time.monotonic() < deadline and proc.poll() is None
                        time.sleep(0.05)
                socks.append(s)
                s.sendall(handshake + b"-XX0001-" + os.urandom(12))
            answered = 0
            for s in socks:
                s.settimeout(5)
                try:
                    answered += len(s.recv(68)) > 0
                except OSError:
                    pass
            assert answered == 6
        finally:
            for s in socks:
                s.close()
            proc.kill()
            proc.wait()


def test_an_idle_worker_hurries_only_workers_far_slower_than_itself() -> None:
    """The uneven swarm's tail (coordinator._hurry): an idle worker fetches the pieces, started
    ones too, of a worker that would need over HURRY_AFTER s for them at a rate under
    1/HURRY_RATIO of its own, never of one about as fast (a WAN swarm of alike seeders,
    where copies only cost bytes sent twice), nor of one soon done."""
    owner = {1: {0}, 2: {0}, 3: {1}, 4: {1}, 5: {1}, 6: {2}, 7: {2}, 8: {2}, 9: {3}}
    # worker 0: 0.02 s of its pieces; 1: 1 s; 2: 0.25 s; 3 (one piece, no rate yet): slow
    rates = {0: 100.0 * MiB, 1: 3.0 * MiB, 2: 12.0 * MiB, 3: 0.0}
    fast = 200.0 * MiB
    assert lagging_workers(owner, rates, MiB, fast) == {1, 2, 3}
    assert lagging_workers(owner, rates, MiB, 40.0 * MiB) == {1, 3}  # 12 MiB/s is not 1/4
    assert lagging_workers(owner, rates, MiB, 3.0 * MiB * HURRY_RATIO) == {3}  # alike
    assert lagging_workers(owner, rates, MiB, 0.0) == set()  # an idle worker with no rate
    soon = {**rates, 2: 100.0 * MiB}  # 0.03 s of pieces left
    assert lagging_workers(owner, soon, MiB, 1000.0 * MiB) == {1, 3}
