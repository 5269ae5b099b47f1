"""``mptorrent fetch MAGNET`` against a libtorrent client given the same magnet, same seeders.

    python3 benchmarks/magnet.py                       # 100 MB, 256 KiB pieces, -j 2, 3 runs
    python3 benchmarks/magnet.py --size 400M --jobs 3 --runs 5

Three libtorrent seeders (tests/swarm.py, full hash check at start, so the data is in the
page cache) on 127.0.0.11-13 serve one random file.  The magnet link carries only the
info-hash, the name and the three seeders as ``x.pe`` (no tracker: the figures are the
clients', not a tracker's).  Each run fetches it twice, the order alternating from run to
run: with the real CLI, ``mptorrent fetch MAGNET -o OUT -j N --no-trackers --bind
127.0.0.20 --port 0``, and with a libtorrent session in a process of its own on 127.0.0.21
that is given only the magnet (``magnet.py lt-magnet URI DIR``; settings as
tests/swarm.py's leechers).  Every download is compared with the original outside the
timing, then deleted.

What is measured, all from the moment the client's process is started:

- **first request**: the first piece REQUEST from the client's address to reach any seeder,
  taken from the seeders' own peer log (libtorrent's ``peer_log_alert`` timestamps; the
  log is switched on before each run and off again once that request is seen, so it
  costs the seeders nothing during the transfer).  This is what the issue's closing note
  asks for: the metadata phase, the start of the workers (ours) and the first requests.
- **metadata**: when the client says it has the verified info dictionary: mptorrent's
  ``metadata received in X s`` line arriving on stderr, libtorrent's ``has_metadata``
  (the child prints a CLOCK_MONOTONIC time stamp, comparable across processes).
- **done**: the download complete: mptorrent's ``done:`` summary line, libtorrent's
  ``is_finished``.
- **exit**: the process's exit (interpreter start-up and shutdown included).

Prints a Markdown table of medians and writes JSON to benchmarks/results/magnet.json.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import common
from common import median, parse_size

from mptorrent.messages import PeerAddr
from mptorrent.proto.magnet import Magnet
from tests.swarm import LtPeer, Swarm, make_single_file, make_torrent, session_settings

MPTORRENT_IP = "127.0.0.20"
LT_IP = "127.0.0.21"
NAME = "payload.bin"
METADATA_LINE = "mptorrent: metadata received in "
MP, LT = "mptorrent", "libtorrent"


@dataclass
class Timing:
    """One client's run, seconds from the start of its process (None: never seen)."""

    client: str
    first_request: float | None
    metadata: float | None
    done: float | None
    exit: float


class RequestWatch:
    """The first piece request from one address to reach any seeder, from the seeders' peer
    log (``peer_log_alert``), which is on only until that request is seen.  ``needle``: the
    log line to wait for (None: any line from that address, its first contact)."""

    def __init__(self, seeders: list[LtPeer], needle: str | None = "<== REQUEST") -> None:
        import libtorrent as lt

        self._lt = lt
        self.needle = needle
        self.seeders = seeders
        self._quiet = lt.alert_category.error | lt.alert_category.status
        self.first: datetime | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, ip: str) -> None:
        self.first, self._ip = None, ip
        for s in self.seeders:
            s._ses.pop_alerts()  # nothing left from an earlier run
            s._ses.apply_settings({"alert_mask": self._quiet | self._lt.alert_category.peer_log})
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        lt = self._lt
        while not self._stop.is_set() and self.first is None:
            for s in self.seeders:
                s._ses.wait_for_alert(5)
                for a in s._ses.pop_alerts():
                    if (
                        isinstance(a, lt.peer_log_alert)
                        and a.ip[0] == self._ip
                        and (self.needle is None or self.needle in a.message())
                    ):
                        at: datetime = a.timestamp()
                        if self.first is None or at < self.first:
                            self.first = at
        self._quiet_all()

    def _quiet_all(self) -> None:
        for s in self.seeders:
            s._ses.apply_settings({"alert_mask": self._quiet})

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._quiet_all()


def run_client(
    client: str, cmd: list[str], watch: RequestWatch, ip: str, timeout: float
) -> tuple[Timing, str]:
    """Start ``cmd``; time stamp the lines it writes (stderr for mptorrent, stdout for the
    libtorrent child) as they arrive."""
    watch.start(ip)
    started_wall = datetime.now()
    started = time.monotonic()
    metadata = done = None
    lines: list[str] = []
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stream = proc.stderr if client == MP else proc.stdout
        other = proc.stdout if client == MP else proc.stderr
        assert stream is not None and other is not None
        drain = threading.Thread(target=other.read, daemon=True)  # never blocks the child
        drain.start()
        for line in stream:
            now = time.monotonic()
            lines.append(line.rstrip("\n"))
            if client == MP:
                if line.startswith(METADATA_LINE):
                    metadata = now - started
                elif line.startswith("done: "):
                    done = now - started
            else:  # the child's own CLOCK_MONOTONIC stamps
                kind, _, stamp = line.partition(" ")
                if kind == "metadata":
                    metadata = float(stamp) - started
                elif kind == "done":
                    done = float(stamp) - started
        proc.wait(timeout)
        exit_s = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        watch.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{client} exited {proc.returncode}:\n" + "\n".join(lines[-20:]))
    first = watch.first
    first_s = None if first is None else (first - started_wall).total_seconds()
    return Timing(client, first_s, metadata, done, exit_s), "\n".join(lines)


def lt_magnet_main(argv: list[str]) -> int:
    """The libtorrent client: only the magnet; prints ``metadata T`` and ``done T``
    (``time.monotonic()``, CLOCK_MONOTONIC) as they happen."""
    ap = argparse.ArgumentParser(prog="magnet.py lt-magnet")
    ap.add_argument("uri")
    ap.add_argument("save_dir", type=Path)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args(argv)
    import libtorrent as lt

    settings: Any = session_settings(LT_IP, 0, seed=False)
    ses = lt.session(lt.session_params(settings))
    try:
        return lt_fetch_magnet(ses, args.uri, args.save_dir, args.timeout)
    finally:
        ses.pause()
        del ses


def lt_fetch_magnet(ses: Any, uri: str, save_dir: Path, timeout: float) -> int:
    """Add the magnet to a libtorrent session and wait; prints ``metadata T`` and ``done T``
    (monotonic seconds) as they happen; 0 when done, 1 past ``timeout``."""
    import libtorrent as lt

    atp = lt.parse_magnet_uri(uri)
    atp.save_path = str(save_dir)
    handle = ses.add_torrent(atp)
    deadline = time.monotonic() + timeout
    have_metadata = False
    while True:
        st = handle.status()
        if not have_metadata and st.has_metadata:
            have_metadata = True
            print(f"metadata {time.monotonic()!r}", flush=True)
        if st.is_finished and have_metadata:
            print(f"done {time.monotonic()!r}", flush=True)
            return 0
        if time.monotonic() > deadline:
            print(f"libtorrent: state {st.state}, progress {st.progress:.3f}", file=sys.stderr)
            return 1
        ses.wait_for_alert(5)
        ses.pop_alerts()


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def med(values: list[float | None]) -> float | None:
    seen = [v for v in values if v is not None]
    return median(seen) if len(seen) == len(values) and seen else None


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("100M"))
    ap.add_argument("--piece-length", type=parse_size, default=parse_size("256KiB"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path)
    common.add_run_options(ap, settle=20.0)
    args = ap.parse_args(argv)
    common.check_space(args.dir, 3 * args.size)
    work = Path(tempfile.mkdtemp(prefix="mptorrent-magnet-", dir=args.dir))
    timings: list[Timing] = []
    try:
        payload = make_single_file(work / "data", args.size, name=NAME)
        torrent = make_torrent(payload.root, args.piece_length)
        with Swarm(torrent, payload.save_dir, n_seeders=3, first_ip=11, use_trackers=False) as sw:
            from mptorrent.proto import metainfo

            meta = metainfo.parse(torrent)
            uri = Magnet(
                meta.info_hash, name=NAME, peers=tuple(PeerAddr(*a) for a in sw.addrs)
            ).to_uri()
            watch = RequestWatch(sw.seeders)
            for run in range(args.runs):
                order = [MP, LT] if run % 2 == 0 else [LT, MP]
                for client in order:
                    load = common.wait_for_quiet(args.settle)
                    out_dir = work / f"out-{client}-{run}"
                    out_dir.mkdir()
                    if client == MP:
                        cmd = [sys.executable, "-m", "mptorrent", "fetch", uri,
                               "-o", str(out_dir / NAME), "-j", str(args.jobs), "--no-trackers",
                               "--bind", MPTORRENT_IP, "--port", "0", "--no-dht"]  # fmt: skip
                        ip = MPTORRENT_IP
                    else:
                        cmd = [sys.executable, str(Path(__file__).resolve()), "lt-magnet", uri,
                               str(out_dir), "--timeout", str(args.timeout)]  # fmt: skip
                        ip = LT_IP
                    t, _ = run_client(client, cmd, watch, ip, args.timeout)
                    if not filecmp.cmp(out_dir / NAME, payload.root, shallow=False):
                        raise SystemExit(f"{client}: the download differs from the original")
                    shutil.rmtree(out_dir)
                    timings.append(t)
                    print(
                        f"run {run + 1} {client}: first request {fmt(t.first_request)} s, "
                        f"metadata {fmt(t.metadata)} s, done {fmt(t.done)} s, "
                        f"exit {fmt(t.exit)} s (others' load {load:.0%})",
                        file=sys.stderr,
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    label = {MP: f"mptorrent -j {args.jobs}", LT: "libtorrent"}
    rows = []
    for client in (MP, LT):
        mine = [t for t in timings if t.client == client]
        rows.append([
            label[client], fmt(med([t.first_request for t in mine])),
            fmt(med([t.metadata for t in mine])), fmt(med([t.done for t in mine])),
            fmt(med([t.exit for t in mine])),
        ])  # fmt: skip
    print(
        f"\nfetch MAGNET, {args.size / 1e6:.0f} MB, {args.piece_length // 1024} KiB pieces, "
        f"3 libtorrent seeders in x.pe, median of {args.runs} runs (s from process start):\n"
    )
    common.print_table(["client", "first request", "metadata", "done", "exit"], rows)
    common.write_json(
        "magnet",
        {
            "environment": common.environment(),
            "size": args.size,
            "piece_length": args.piece_length,
            "jobs": args.jobs,
            "runs": [asdict(t) for t in timings],
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["lt-magnet"]:
        sys.exit(lt_magnet_main(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
