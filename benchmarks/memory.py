"""Peak anonymous memory of mptorrent's process tree at -j 2 and -j 8, and its start-up.

    python3 benchmarks/memory.py                               # 1 GiB, -j 2 and 8, 2 runs
    python3 benchmarks/memory.py --baseline /tmp/base          # beside an older checkout
    python3 benchmarks/memory.py --startup --baseline /tmp/base   # time to the first request

Memory: vs_anchors.py's swarm (four checked libtorrent seeders behind opentracker, data in
the page cache); ``mptorrent fetch T -j N`` finds them through the tracker.  A thread samples
every process of the tree every 50 ms: RssAnon (what the issue's figures sum; after fork a
worker's RssAnon counts the pages it still shares with the coordinator) and, with ``--pss``,
Pss_Anon (shared pages split between their sharers: the memory really used).  Reported per
client (medians): peak summed RssAnon, the coordinator's and the largest worker's peak, the
wall time.  ``--baseline DIR``: a second checkout (e.g. ``git archive COMMIT | tar -x -C
DIR``) runs in the same swarm, alternating, so before and after meet the same load.

Start-up (``--startup``): a small torrent (4 MiB, 8 files, 256 KiB pieces) and one fake peer
on 127.0.0.31 that answers the handshake with a full bitfield and an unchoke; the time from
starting ``mptorrent fetch`` to that peer receiving the first block request: interpreter,
imports, storage, worker start and the connection included.  The fetch is then killed.
Beside it (unless ``--no-libtorrent``), the same for a libtorrent leecher given the same peer
in a fresh process (``common.py lt-leech``): interpreter, ``import libtorrent``, session
start, adding the torrent and checking its empty folder, what a user of it pays.
JSON goes to benchmarks/results/memory.json (startup.json).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
import vs_anchors
from common import MiB
from vs_anchors import Client, Workload

GiB = 1024 * MiB
FAKE_PEER_IP = "127.0.0.31"
FETCH_IP = "127.0.0.32"


# -- memory -----------------------------------------------------------------------------------


def _kib(pid: int, keys: Sequence[bytes]) -> list[int] | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            text = fh.read()
    except OSError:
        return None
    out = []
    for key in keys:
        i = text.find(key + b":")
        if i < 0:
            return None
        out.append(int(text[i + len(key) + 1 :].split(None, 1)[0]))
    return out


@dataclass
class Peaks:
    total: int = 0  # KiB: peak of the summed RssAnon
    pss: int = 0  # KiB: peak of the summed Pss_Anon (with --pss)
    root: int = 0  # KiB: the coordinator's peak RssAnon
    child: int = 0  # KiB: the largest peak RssAnon of one child process
    procs: int = 0
    per_pid: dict[int, int] = field(default_factory=dict)


class Sampler:
    """Per-process RssAnon of ``root``'s tree every ``interval`` s, in a thread."""

    def __init__(self, root: int, interval: float = 0.05, pss: bool = False) -> None:
        self.root = root
        self.interval = interval
        self.pss = pss
        self.peaks = Peaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        p = self.peaks
        while not self._stop.is_set():
            pids = common.process_tree(self.root)
            total = pss = 0
            for pid in pids:
                vals = _kib(pid, (b"RssAnon",))
                if vals is None:
                    continue
                total += vals[0]
                p.per_pid[pid] = max(p.per_pid.get(pid, 0), vals[0])
                if self.pss:
                    pss += common.pss_anon_kib(pid)
            p.total = max(p.total, total)
            p.pss = max(p.pss, pss)
            p.procs = max(p.procs, len(pids))
            self._stop.wait(self.interval)

    def stop(self) -> Peaks:
        self._stop.set()
        self._thread.join()
        p = self.peaks
        p.root = p.per_pid.get(self.root, 0)
        p.child = max((v for k, v in p.per_pid.items() if k != self.root), default=0)
        return p


def fetch_once(
    setup: vs_anchors.SwarmSetup, client: Client, out_dir: Path, timeout: float, pss: bool
) -> dict[str, float]:
    out_dir.mkdir(parents=True)
    try:
        cmd = vs_anchors.client_cmd(client, setup, out_dir)
        env = vs_anchors.client_env(client.src)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env,
                                cwd=common.REPO)  # fmt: skip
        sampler = Sampler(proc.pid, pss=pss)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        finally:
            peaks = sampler.stop()
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{client.label}: exit {proc.returncode}\n{err[-2000:]}")
        if not vs_anchors.same_output(out_dir / setup.workload.name, setup.payload_root):
            raise RuntimeError(f"{client.label}: the download differs from the original")
        return {"anon": peaks.total * 1024, "pss": peaks.pss * 1024, "root": peaks.root * 1024,
                "child": peaks.child * 1024, "procs": peaks.procs, "wall": wall}  # fmt: skip
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def memory_main(args: argparse.Namespace) -> int:
    size = common.parse_size(args.size)
    jobs = [int(j) for j in args.jobs.split(",")]
    wl = Workload("mem", f"{common.human(size)} file, 1 MiB pieces", MiB, size=size)
    clients = [Client("mptorrent", j) for j in jobs]
    if args.baseline:
        base = str(args.baseline.resolve())
        clients = [c for j in jobs for c in (Client("mptorrent", j, src=base),
                                             Client("mptorrent", j))]  # fmt: skip
    samples: dict[Client, list[dict[str, float]]] = {c: [] for c in clients}
    args.dir.mkdir(parents=True, exist_ok=True)
    common.check_space(args.dir, 2 * size + 64 * MiB)
    workdir = Path(tempfile.mkdtemp(prefix="mptorrent-memory-", dir=args.dir))
    n = 0
    try:
        with vs_anchors.swarm(workdir, wl) as setup:
            vs_anchors.ensure_cached(setup.files)
            fetch_once(setup, clients[-1], workdir / "warm-up", args.timeout, False)
            for r in range(args.runs):
                order = clients if r % 2 == 0 else clients[::-1]
                for c in order:
                    vs_anchors.ensure_cached(setup.files)
                    common.wait_for_quiet(args.settle)
                    got = fetch_once(setup, c, workdir / f"dl-{n}", args.timeout, args.pss)
                    n += 1
                    samples[c].append(got)
                    print(f"run {r + 1}/{args.runs} {c.label}: peak RssAnon "
                          f"{common.mib(got['anon'])} MiB (coordinator "
                          f"{common.mib(got['root'])}, largest worker "
                          f"{common.mib(got['child'])}), wall {got['wall']:.2f} s",
                          file=sys.stderr)  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = []
    for c, ms in samples.items():
        rows.append({
            "client": c.label, "runs": len(ms),
            **{k: common.median(m[k] for m in ms) for k in ("anon", "pss", "root", "child",
                                                           "wall")},
            "max_anon": max(m["anon"] for m in ms), "samples": ms,
        })  # fmt: skip
    headers = ["client", "runs", "peak RssAnon MiB (tree)", "max", "Pss_Anon MiB",
               "coordinator MiB", "largest worker MiB", "wall s"]  # fmt: skip
    print(f"\n{wl.title} from 4 libtorrent seeders, medians\n")
    text = common.print_table(headers, [
        [r["client"], r["runs"], common.mib(r["anon"]), common.mib(r["max_anon"]),
         common.mib(r["pss"]) if r["pss"] else "-", common.mib(r["root"]),
         common.mib(r["child"]), f"{r['wall']:.2f}"]
        for r in rows
    ])  # fmt: skip
    common.write_json("memory", {**common.environment(), "size": size, "results": rows,
                                 "table": text}, args.out)  # fmt: skip
    return 0


# -- start-up ---------------------------------------------------------------------------------


def fake_peer(sock: socket.socket, num_pieces: int, info_hash: bytes, got: list[float]) -> None:
    """Accept one connection: handshake, full bitfield, unchoke; note when a request arrives."""
    sock.settimeout(30)
    try:
        conn, _ = sock.accept()
    except OSError:
        return
    with conn:
        conn.settimeout(30)

        def read(n: int) -> bytes:
            buf = b""
            while len(buf) < n:
                chunk = conn.recv(n - len(buf))
                if not chunk:
                    raise ConnectionError
                buf += chunk
            return buf

        try:
            read(68)
            conn.sendall(
                b"\x13BitTorrent protocol" + bytes(8) + info_hash + b"-FK0001-" + bytes(12)
            )
            bits = bytearray((num_pieces + 7) // 8)
            for i in range(num_pieces):
                bits[i // 8] |= 0x80 >> (i % 8)
            conn.sendall(struct.pack(">IB", 1 + len(bits), 5) + bytes(bits))
            conn.sendall(struct.pack(">IB", 1, 1))  # unchoke
            while True:
                (length,) = struct.unpack(">I", read(4))
                if length == 0:
                    continue
                body = read(length)
                if body[0] == 6:  # request
                    got.append(time.perf_counter())
                    return
        except (OSError, ConnectionError):
            return


def startup_once(torrent: Path, meta: Any, out: Path, src: str, jobs: int) -> float:
    """Seconds from starting the client to the fake peer's first request; ``jobs`` 0 is the
    libtorrent leecher (``common.py lt-leech``: a fresh interpreter, ``import libtorrent``,
    the session and the torrent's check of its empty folder included)."""
    srv = socket.socket()
    srv.bind((FAKE_PEER_IP, 0))
    srv.listen(4)
    got: list[float] = []
    t = threading.Thread(target=fake_peer, args=(srv, meta.num_pieces, meta.info_hash, got),
                         daemon=True)  # fmt: skip
    t.start()
    port = srv.getsockname()[1]
    cmd = [sys.executable, "-P", "-m", "mptorrent", "fetch", str(torrent), "-o", str(out), "-j",
           str(jobs), "--peer", f"{FAKE_PEER_IP}:{port}", "--no-trackers", "-q",
           "--bind", FETCH_IP, "--port", "0"]  # fmt: skip
    # a --baseline checkout older than the DHT has no --no-dht (and no DHT to turn off)
    if not src or "--no-dht" in vs_anchors._fetch_help(src):
        cmd.append("--no-dht")
    if not jobs:
        cmd = common.lt_leech_cmd(torrent, out, [(FAKE_PEER_IP, port)])
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=vs_anchors.client_env(src),
                            cwd=common.REPO)  # fmt: skip
    t.join(30)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
    srv.close()
    shutil.rmtree(out, ignore_errors=True)
    if not got:
        raise RuntimeError("the fake peer saw no request")
    return got[0] - t0


def startup_main(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(common.REPO))
    from mptorrent.proto import metainfo
    from tests.swarm import make_payload, make_torrent

    jobs = [int(j) for j in args.jobs.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="mptorrent-startup-", dir=args.dir))
    srcs = [("this", "")] + ([("baseline", str(args.baseline.resolve()))] if args.baseline else [])
    if not args.no_libtorrent:
        srcs.append(("libtorrent", ""))
    samples: dict[tuple[str, int], list[float]] = {
        (s, j): [] for s, _ in srcs for j in ([0] if s == "libtorrent" else jobs)
    }
    try:
        payload = make_payload(workdir / "seed", vs_anchors.eight_files(4 * MiB), name="payload")
        data = make_torrent(payload.root, 256 * 1024)
        torrent = workdir / "small.torrent"
        torrent.write_bytes(data)
        meta = metainfo.parse(data)
        for r in range(args.runs + 1):  # the first round warms the caches: not counted
            for name, src in srcs if r % 2 == 0 else srcs[::-1]:
                for j in [0] if name == "libtorrent" else jobs:
                    secs = startup_once(torrent, meta, workdir / "out", src, j)
                    if r:
                        samples[(name, j)].append(secs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = [[name if name == "libtorrent" else f"mptorrent -j {j}" + (
                "" if name == "this" else " @baseline"), len(v),
             f"{common.median(v) * 1000:.0f}", f"{min(v) * 1000:.0f}"]
            for (name, j), v in samples.items()]  # fmt: skip
    print("\ntime from starting the client to the first block request (ms)\n")
    text = common.print_table(["client", "runs", "median ms", "best ms"], rows)
    common.write_json("startup", {**common.environment(), "table": text,
                                  "samples": {f"{k[0]} -j {k[1]}": v for k, v in samples.items()}},
                      args.out)  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="1GiB", help="single file, 1 MiB pieces (default 1GiB)")
    ap.add_argument("--jobs", default="2,8", help="mptorrent worker counts (default 2,8)")
    ap.add_argument("--runs", type=int, default=2, help="runs per client (default 2)")
    ap.add_argument("--baseline", type=Path, help="another checkout of mptorrent to compare")
    ap.add_argument("--pss", action="store_true", help="also sample Pss_Anon")
    ap.add_argument("--startup", action="store_true", help="time to the first request instead")
    ap.add_argument("--no-libtorrent", action="store_true",
                    help="--startup without the libtorrent leecher beside mptorrent")  # fmt: skip
    common.add_run_options(ap, settle=10.0)
    ap.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/...)")
    args = ap.parse_args(argv)
    vs_anchors.on_sigterm()
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    if args.startup:
        if args.runs == 2 and "--runs" not in (argv or sys.argv):
            args.runs = 10
        return startup_main(args)
    return memory_main(args)


if __name__ == "__main__":
    sys.exit(main())
