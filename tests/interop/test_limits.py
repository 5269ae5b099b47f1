"""Global limits against real libtorrent peers: ``--max-download-rate`` and ``--max-upload-rate``
hold across all workers, and ``--max-peers`` counts the connections of every worker together.

Small caps on small payloads keep these tests short; benchmarks/ratelimit.py holds 20 MiB/s over
256 MiB within 5% at -j 1, 2 and 8.
"""

from __future__ import annotations

import json
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.dht_off import no_dht
from tests.interop.test_seed import mptorrent_seed
from tests.swarm import (
    MiB,
    Swarm,
    TorrentCase,
    run_lt_leecher,
    same_tree,
    single_file_case,
    write_torrent,
)

pytestmark = pytest.mark.interop

IpSource = Callable[[], str]
CAP = 4 * MiB
SIZE = 16 * MiB
# what a 4 MiB/s cap allows for 16 MiB: 4 s, less the burst the limiter starts with (1 MiB)
MIN_SECONDS = 3.5


@pytest.fixture(scope="module")
def case16(tmp_path_factory: pytest.TempPathFactory) -> TorrentCase:
    return single_file_case(tmp_path_factory.mktemp("limits"), SIZE, seed=18)


@pytest.fixture(scope="module")
def swarm16(case16: TorrentCase) -> Iterator[Swarm]:
    with Swarm(case16.torrent, case16.save_dir, n_seeders=4, first_ip=71) as swarm:
        yield swarm


def fetch(torrent: Path, out: Path, swarm: Swarm, ip: str, *extra: str) -> tuple[float, str]:
    peers = [a for addr in swarm.addrs for a in ("--peer", f"{addr[0]}:{addr[1]}")]
    args = ["fetch", str(torrent), "-o", str(out), "--no-trackers", "--bind", ip, "--port", "0"]
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "mptorrent", *no_dht([*args, *peers, *extra])],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return time.monotonic() - t0, proc.stdout + proc.stderr


@pytest.mark.parametrize("jobs", [1, 3])
def test_download_limit_holds_across_workers(
    jobs: int, case16: TorrentCase, swarm16: Swarm, tmp_path: Path, fresh_ip: IpSource
) -> None:
    torrent = write_torrent(tmp_path, case16.torrent)
    out = tmp_path / "out.bin"
    secs, output = fetch(torrent, out, swarm16, fresh_ip(), "-j", str(jobs),
                         "--max-download-rate", "4M")  # fmt: skip
    assert same_tree(case16.payload.root, out)
    assert secs >= MIN_SECONDS, f"16 MiB in {secs:.2f} s is over the 4 MiB/s cap"
    assert "limited to 4.0 MiB/s" in output  # the summary says so


def test_upload_limit_holds_for_a_libtorrent_leecher(
    case16: TorrentCase, tmp_path: Path, fresh_ip: IpSource
) -> None:
    torrent = write_torrent(tmp_path, case16.torrent)
    with mptorrent_seed(
        torrent, case16.payload.root, fresh_ip(), "--no-trackers", "--max-upload-rate", "4M",
        jobs=2,
    ) as seed:  # fmt: skip
        secs = run_lt_leecher(case16.torrent, tmp_path / "lt", [seed.addr], ip=fresh_ip(),
                              timeout=60)  # fmt: skip
        status, err = seed.interrupt()
    assert status == 130, err
    assert same_tree(case16.payload.root, tmp_path / "lt" / case16.payload.root.name)
    assert secs >= MIN_SECONDS, f"16 MiB served in {secs:.2f} s is over the 4 MiB/s cap"


def test_max_peers_counts_every_workers_connections(
    case16: TorrentCase, swarm16: Swarm, tmp_path: Path, fresh_ip: IpSource
) -> None:
    # four seeders, three workers, two connections in all: never more than two at once
    torrent = write_torrent(tmp_path, case16.torrent)
    out = tmp_path / "out.bin"
    _, output = fetch(torrent, out, swarm16, fresh_ip(), "-j", "3", "--max-peers", "2",
                      "--json")  # fmt: skip
    assert same_tree(case16.payload.root, out)
    live: set[tuple[int, str]] = set()
    most = 0
    for line in output.splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        if event["event"] == "peer":
            key = (event["worker"], event["address"])
            if event["state"] == "connected":
                live.add(key)
            else:
                live.discard(key)
            most = max(most, len(live))
    assert 1 <= most <= 2


@pytest.mark.parametrize(("option", "value"), [("--max-download-rate", "fast"),
                                               ("--max-upload-rate", "-3M")])  # fmt: skip
def test_bad_rate_is_one_line(option: str, value: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mptorrent", *no_dht(["fetch", str(tmp_path / "x.torrent"),
                                                     option, value])],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "rate" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())


def test_a_worker_has_at_most_eight_connections_half_open(
    case16: TorrentCase, tmp_path: Path, fresh_ip: IpSource
) -> None:
    # twenty peers that accept the connection and never answer the handshake: a worker
    # dials eight of them and waits (the handshake timeout is 15 s) before dialling more
    listeners = []
    for _ in range(20):
        s = socket.socket()
        s.bind((fresh_ip(), 0))
        s.listen(4)
        listeners.append(s)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept_all() -> None:
        sel = selectors.DefaultSelector()
        for s in listeners:
            sel.register(s, selectors.EVENT_READ)
        while not stop.is_set():
            for key, _ in sel.select(0.05):
                conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                accepted.append(conn)

    t = threading.Thread(target=accept_all, daemon=True)
    t.start()
    torrent = write_torrent(tmp_path, case16.torrent)
    peers = [a for s in listeners for a in ("--peer", "{}:{}".format(*s.getsockname()))]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mptorrent", *no_dht(["fetch", str(torrent), "-o",
         str(tmp_path / "out.bin"), "-j", "1", "--no-trackers", "--bind", fresh_ip(),
         "--port", "0", "-q", *peers])],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(2.0)
        assert proc.poll() is None, proc.communicate()[1]
        assert len(accepted) == 8
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
        stop.set()
        t.join(2)
        for c in [*accepted, *listeners]:
            c.close()


def test_a_limited_worker_reads_from_all_its_peers(
    case16: TorrentCase, swarm16: Swarm, tmp_path: Path, fresh_ip: IpSource
) -> None:
    # one worker, four seeders, a cap far below what they could send: each turn's tokens
    # are shared among the readable sockets, so no seeder is starved (and later snubbed)
    torrent = write_torrent(tmp_path, case16.torrent)
    out = tmp_path / "out.bin"
    _, output = fetch(torrent, out, swarm16, fresh_ip(), "-j", "1", "--max-download-rate",
                      "8M", "--json")  # fmt: skip
    assert same_tree(case16.payload.root, out)
    per_peer: dict[str, int] = {}
    for line in output.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event["event"] == "piece":
                per_peer[event["peer"]] = per_peer.get(event["peer"], 0) + 1
    total = sum(per_peer.values())
    assert len(per_peer) == 4, per_peer
    assert min(per_peer.values()) >= total // 10, per_peer
