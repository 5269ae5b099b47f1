"""``mptorrent demo``: the reference scenario on a self-contained loopback swarm.

A random "BigMovie.mp4" is written to a temporary folder, made into a torrent
that names an embedded HTTP tracker, and served by three mptorrent seeders
(PeerA, PeerB, PeerC), each a separate ``mptorrent seed`` process on its own
loopback address.  Then a fetch with the usual progress bar downloads it, the
result's SHA-256 is checked against the original, and everything is removed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mptorrent.disk.create import create
from mptorrent.engine.coordinator import FetchOptions, FetchResult, fetch
from mptorrent.errors import DownloadError, MptorrentError
from mptorrent.events import EventSink
from mptorrent.messages import PeerAddr
from mptorrent.netio.trackerserver import TrackerServer
from mptorrent.proto import metainfo
from mptorrent.record import Record, mutable

PEER_NAMES = [f"Peer{chr(ord('A') + i)}" for i in range(26)]
SEEDER_READY_TIMEOUT = 120.0


@mutable
class DemoResult(Record):
    """What ``mptorrent demo`` reports: the fetch, whether the SHA-256 matched the original, the
    seeders' names by address; ``workdir`` is gone unless ``--keep`` named it."""

    fetch: FetchResult
    sha256_ok: bool
    size: int
    peer_names: dict[PeerAddr, str]
    workdir: Path


def write_random(path: Path, size: int) -> str:
    """Write ``size`` random bytes; return their SHA-256."""
    digest = hashlib.sha256()
    chunk = 4 << 20
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            block = os.urandom(min(chunk, left))
            fh.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(4 << 20):
            h.update(block)
    return h.hexdigest()


def run_demo(
    *,
    size: int,
    peers: int,
    jobs: int,
    piece_length: int,
    keep: Path | None,
    progress: EventSink,
    say: Callable[[str], None],
) -> DemoResult:
    if not 1 <= peers <= len(PEER_NAMES):
        raise MptorrentError(f"--peers must be from 1 to {len(PEER_NAMES)}")
    work = Path(tempfile.mkdtemp(prefix="mptorrent-demo-")) if keep is None else keep
    work.mkdir(parents=True, exist_ok=True)
    seeders: list[subprocess.Popen[bytes]] = []
    tracker = TrackerServer("127.0.0.1", 0, interval=60).start()
    try:
        src_dir = work / "seed"
        src_dir.mkdir(exist_ok=True)
        movie = src_dir / "BigMovie.mp4"
        say(f"writing {size / 1e6:.0f} MB of random data to {movie}")
        original = write_random(movie, size)
        torrent = work / "BigMovie.mp4.torrent"
        torrent.write_bytes(
            create(movie, trackers=[[tracker.announce_url]], piece_length=piece_length, jobs=jobs)
        )
        meta = metainfo.load(torrent)
        say(
            f"torrent: {meta.num_pieces} pieces of {piece_length // 1024} KiB, "
            f"tracker {tracker.announce_url}"
        )
        names: dict[PeerAddr, str] = {}
        for k in range(peers):
            host = f"127.0.0.{11 + k}"
            cmd = [
                sys.executable, "-m", "mptorrent", "seed", str(torrent), str(movie),
                "-j", "1", "--bind", host, "--port", "0", "-q", "--no-dht",
            ]  # fmt: skip
            seeders.append(
                subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
            )
        say(f"starting seeders {', '.join(PEER_NAMES[:peers])} on 127.0.0.11-{10 + peers}")
        deadline = time.monotonic() + SEEDER_READY_TIMEOUT
        while True:
            seen = tracker.state.peers(meta.info_hash)
            if len(seen) >= peers:
                break
            for p in seeders:
                if p.poll() is not None:
                    err = (p.stderr.read() if p.stderr else b"").decode(errors="replace")
                    raise DownloadError(f"a seeder failed to start: {err.strip()[-300:]}")
            if time.monotonic() > deadline:
                raise DownloadError("the seeders did not announce in time")
            time.sleep(0.1)
        for addr in seen:
            names[addr] = PEER_NAMES[int(addr.host.rsplit(".", 1)[1]) - 11]
        out = work / "download" / "BigMovie.mp4"
        out.parent.mkdir(exist_ok=True)
        say(f"fetching with {jobs} worker process(es)")
        result = fetch(meta, out, FetchOptions(jobs=jobs, port=6881, dht=False), progress)
        ok = file_sha256(out) == original
        return DemoResult(result, ok, size, names, work)
    finally:
        for p in seeders:
            if p.poll() is None:
                # SIGTERM, not SIGINT: a demo started from a script's background job inherits
                # SIGINT ignored, and so would the seeders
                p.send_signal(signal.SIGTERM)
        for p in seeders:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)  # its worker processes too (own session)
                p.wait()
        tracker.stop()
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
