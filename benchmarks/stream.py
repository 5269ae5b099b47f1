"""Time to the first byte on stdout: ``mptorrent fetch -o -`` with and without
``--sequential`` on a rate-limited swarm, next to libtorrent's time to its first piece.

    python3 benchmarks/stream.py                  # 32 MiB, 256 KiB pieces, 3 x 1 MiB/s, 3 runs
    python3 benchmarks/stream.py --size 64MiB --rate 2MiB --runs 5

Three libtorrent seeders (tests/swarm.py) on 127.0.0.11-13, each limited to ``--rate``
bytes/s of upload, serve one random file.  Each run streams it with the real CLI,
``mptorrent fetch T -o - -j 2 --peer ... --no-trackers --no-dht --bind 127.0.0.20
--port 0`` (``-o -`` is sequential by default; ``--no-sequential`` turns the priorities
off, leaving rarest first), reading its stdout through a pipe, and checks the SHA-256 of
what came out.  From the start of the process: **first 64 KiB** (the first 64 KiB read
from the pipe: what a player waits for), **all** (the pipe's end of file) and **exit**.

The yardstick is a libtorrent leecher in this process on 127.0.0.21 (it cannot stream,
so: the time from adding the torrent to having piece 0 verified, with libtorrent's
``sequential_download`` flag and without, and to finished).  Variants alternate within
each run.  Prints a Markdown table of medians; writes JSON to benchmarks/results/stream.json.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
from common import median, parse_size

from tests.swarm import LtPeer, Swarm, make_single_file, make_torrent

MP_IP, LT_IP = "127.0.0.20", "127.0.0.21"
FIRST = 64 * 1024


def run_mptorrent(torrent: Path, peers: list[tuple[str, int]], sequential: bool,
                  want: str, timeout: float) -> dict[str, float]:  # fmt: skip
    cmd = [sys.executable, "-m", "mptorrent", "fetch", str(torrent), "-o", "-", "-j", "2",
           "--no-trackers", "--no-dht", "-q", "--bind", MP_IP, "--port", "0"]  # fmt: skip
    for host, port in peers:
        cmd += ["--peer", f"{host}:{port}"]
    if not sequential:
        cmd.append("--no-sequential")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    h = hashlib.sha256()
    got, first = 0, None
    while chunk := proc.stdout.read1(1 << 16):
        got += len(chunk)
        h.update(chunk)
        if first is None and got >= FIRST:
            first = time.monotonic() - t0
    end = time.monotonic() - t0
    if proc.wait(timeout) != 0 or h.hexdigest() != want:
        raise SystemExit(f"mptorrent fetch -o - failed or streamed wrong bytes: {cmd}")
    return {"first": first or end, "all": end, "exit": time.monotonic() - t0}


def run_libtorrent(torrent: bytes, peers: list[tuple[str, int]], sequential: bool,
                   work: Path, timeout: float) -> dict[str, float]:  # fmt: skip
    import libtorrent as lt

    save = work / "lt"
    shutil.rmtree(save, ignore_errors=True)
    save.mkdir()
    t0 = time.monotonic()
    with LtPeer(torrent, save, ip=LT_IP, role="leech", use_trackers=False) as leech:
        if sequential:
            leech.handle.set_flags(lt.torrent_flags.sequential_download)
        leech.connect(peers)
        first = None
        while first is None and time.monotonic() - t0 < timeout:
            if leech.handle.have_piece(0):
                first = time.monotonic() - t0
            time.sleep(0.005)
        leech.wait_finished(timeout)
        done = time.monotonic() - t0
    shutil.rmtree(save, ignore_errors=True)
    return {"first": first or done, "all": done}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("32MiB"))
    ap.add_argument("--piece-size", type=parse_size, default=parse_size("256KiB"))
    ap.add_argument("--rate", type=parse_size, default=parse_size("1MiB"),
                    help="upload limit of each seeder, bytes/s")  # fmt: skip
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mpt-stream-", dir=args.dir))
    try:
        payload = make_single_file(work / "data", args.size)
        torrent = make_torrent(payload.root, args.piece_size)
        tfile = work / "stream.torrent"
        tfile.write_bytes(torrent)
        want = hashlib.sha256(payload.root.read_bytes()).hexdigest()
        results: dict[str, list[dict[str, float]]] = {}
        with Swarm(torrent, payload.save_dir, n_seeders=3, first_ip=11, use_trackers=False,
                   upload_rate_limit=args.rate) as swarm:  # fmt: skip
            peers = [(a.host, a.port) for a in swarm.addrs]
            variants: list[tuple[str, Any]] = [
                ("mptorrent -o - (sequential)",
                 lambda: run_mptorrent(tfile, peers, True, want, args.timeout)),
                ("mptorrent -o - --no-sequential",
                 lambda: run_mptorrent(tfile, peers, False, want, args.timeout)),
                ("libtorrent sequential_download",
                 lambda: run_libtorrent(torrent, peers, True, work, args.timeout)),
                ("libtorrent rarest first",
                 lambda: run_libtorrent(torrent, peers, False, work, args.timeout)),
            ]  # fmt: skip
            for run in range(args.runs):
                order = variants[run % len(variants) :] + variants[: run % len(variants)]
                for name, fn in order:
                    r = fn()
                    results.setdefault(name, []).append(r)
                    print(f"run {run + 1} {name}: {r}", file=sys.stderr)
        rows = []
        for name, _fn in variants:
            rs = results[name]
            exit_s = f"{median(r['exit'] for r in rs):.2f}" if "exit" in rs[0] else "-"
            first = median(r["first"] for r in rs)
            total = median(r["all"] for r in rs)
            rows.append((name, f"{first:.2f}", f"{total:.2f}", f"{first / total:.2f}", exit_s))
        size, piece, rate = (common.human(n) for n in (args.size, args.piece_size, args.rate))
        print(f"\n{size}, {piece} pieces, 3 seeders x {rate}/s, medians of {args.runs} runs\n")
        common.print_table(["client", "first 64 KiB / piece 0", "all", "first / all", "exit"], rows)
        common.write_json(
            "stream",
            {"size": args.size, "piece_size": args.piece_size, "rate": args.rate,
             "runs": results, "environment": common.environment()},
            args.out,
        )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
