"""`mptorrent demo`: the reference scenario, run for real as a subprocess.

TMPDIR points at the test's own folder, so "it cleans up" means that folder ends up empty and
that no process still runs from inside it.
"""

from __future__ import annotations

import filecmp
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.spread import assert_spread

DOWNLOADED = re.compile(r"^demo: downloaded (?P<mb>\d+) MB in (?P<secs>[\d.]+) s "
                        r"\((?P<rate>[\d.]+) MB/s\)$")  # fmt: skip
PER_WORKER = re.compile(r"^demo: pieces per worker: (?P<list>.+)$")
PER_PEER = re.compile(r"^demo: pieces per peer: +(?P<list>.+)$")
WORKER_ITEM = re.compile(r"^worker (?P<w>\d+): (?P<n>\d+)$")
PEER_ITEM = re.compile(r"^(?P<name>Peer[A-Z]) \((?P<host>[\d.]+):(?P<port>\d+)\): (?P<n>\d+)$")


def demo(tmp: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mptorrent", "demo", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(tmp)},
        # Ctrl-C as a terminal sends it, even when the suite runs as a script's background
        # job (which starts with SIGINT ignored, passed on to every child)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def processes_inside(folder: Path) -> list[str]:
    """Command lines of live processes that name something under ``folder``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, UnicodeDecodeError):
                continue
            if str(folder) in cmd:
                found.append(cmd)
    return found


def test_demo_downloads_verifies_reports_and_cleans_up(tmp_path: Path) -> None:
    proc = demo(tmp_path, "--size", "32M")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    lines = out.splitlines()
    assert len(lines) == 4, out

    m = DOWNLOADED.match(lines[0])
    assert m, lines[0]
    assert m["mb"] == "32"
    secs, rate = float(m["secs"]), float(m["rate"])
    assert secs > 0 and rate > 0
    assert abs(rate - 32 / secs) < 0.1 * rate + 0.5  # the printed figures agree

    pieces = -(-32_000_000 // (1 << 20))  # 1 MiB pieces, the last one short
    m = PER_WORKER.match(lines[1])
    assert m, lines[1]
    per_worker = {}
    for item in m["list"].split(", "):
        w = WORKER_ITEM.match(item)
        assert w, item
        per_worker[int(w["w"])] = int(w["n"])
    assert set(per_worker) <= {0, 1, 2}  # -j 3 by default
    assert sum(per_worker.values()) == pieces
    assert_spread(per_worker, jobs=3, peers=3)  # three seeders by default

    m = PER_PEER.match(lines[2])
    assert m, lines[2]
    per_peer = {}
    for item in m["list"].split(", "):
        p = PEER_ITEM.match(item)
        assert p, item
        # PeerA is 127.0.0.11, PeerB 127.0.0.12, ...
        assert p["host"] == f"127.0.0.{11 + ord(p['name'][-1]) - ord('A')}"
        per_peer[p["name"]] = int(p["n"])
    assert set(per_peer) <= {"PeerA", "PeerB", "PeerC"}
    assert sum(per_peer.values()) == pieces
    assert len([n for n in per_peer.values() if n > 0]) >= 2, per_peer

    assert lines[3] == "demo: SHA-256 of the download matches the original: verified"
    assert "error" not in err
    assert list(tmp_path.iterdir()) == []
    assert processes_inside(tmp_path) == []


def test_kept_download_is_byte_identical_to_the_original(tmp_path: Path) -> None:
    """The demo's own "SHA-256 ... verified" line, checked from outside: with --keep the
    original and the download stay, and they are the same bytes."""
    keep = tmp_path / "keep"
    proc = demo(tmp_path, "--size", "8M", "--keep", str(keep))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    lines = out.splitlines()
    assert lines[-2:] == [
        "demo: SHA-256 of the download matches the original: verified",
        f"demo: kept everything in {keep}",
    ], out
    original = keep / "seed" / "BigMovie.mp4"
    download = keep / "download" / "BigMovie.mp4"
    assert original.stat().st_size == download.stat().st_size == 8_000_000
    assert filecmp.cmp(original, download, shallow=False)
    assert len(set(original.read_bytes()[: 1 << 20])) > 200  # random data, not zeros
    assert processes_inside(tmp_path) == []


def test_ctrl_c_during_the_fetch_stops_everything_and_cleans_up(tmp_path: Path) -> None:
    # Big enough that the fetch is still running when the signal comes.
    proc = demo(tmp_path, "--size", "64M", "-q")
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("demo: fetching"):
                break
        else:
            raise AssertionError(f"no fetch started: {seen}")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert out == ""
    assert err.splitlines()[-1] == "mptorrent: error: interrupted"
    assert list(tmp_path.iterdir()) == []
    assert processes_inside(tmp_path) == []
