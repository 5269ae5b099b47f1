"""The CPU floor of a download on this machine, and mptorrent's CPU per GiB against it.

    python3 benchmarks/floor.py                     # floor and fetch, 3 runs each
    python3 benchmarks/floor.py --no-fetch --runs 5 # the floor alone

The floor is the least work any client must do per byte: receive it from a loopback TCP
socket with ``recv_into`` straight into a piece buffer (no message framing, no copy), hash
each piece with SHA-1, and write the piece into the output file, which is reserved with
posix_fallocate first, as mptorrent does.  Two ways of writing, as mptorrent's ``--io``:
``mmap`` (copy into a shared memory map of the file) and ``pwrite``.  One process does it all
in a loop of a few lines; a child process on another loopback address sends the bytes
(``sendall`` of one buffer, over and over) and its CPU is reported apart, not counted.  The
file is deleted after each run, which also drops its page cache, so every run pays for new
page-cache pages as a real download does.  CPU is user+system from getrusage.

In the same run (unless ``--no-fetch``), mptorrent fetches 1 GiB from vs_anchors.py's swarm
(four checked libtorrent seeders behind opentracker) at ``-j 1`` and ``-j 2`` with 1 MiB and
256 KiB pieces, and the libtorrent leecher beside it; their CPU is that of the whole process
tree (start-up, coordinator and workers).  The ratio is each client's CPU per GiB over the
floor with the same piece size and mptorrent's way of writing (``auto`` is the memory map on
a local disk).  JSON goes to benchmarks/results/floor.json.
"""

from __future__ import annotations

import argparse
import hashlib
import mmap
import multiprocessing as mp
import os
import resource
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import common
import vs_anchors
from common import MiB
from vs_anchors import Client, Workload

GiB = 1024 * MiB
RECV_IP = "127.0.0.40"
SEND_IP = "127.0.0.41"
Io = Literal["mmap", "pwrite"]


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def sender(addr: tuple[str, int], total: int, out: Any) -> None:
    """Connect to ``addr`` and send ``total`` bytes; put this process's CPU on ``out``."""
    chunk = memoryview(os.urandom(4 * MiB))
    with socket.create_connection(addr, source_address=(SEND_IP, 0)) as s:
        left = total
        while left:
            n = min(left, len(chunk))
            s.sendall(chunk[:n])
            left -= n
        s.shutdown(socket.SHUT_WR)
        s.recv(1)  # the receiver closes when it has everything
    out.put(cpu_self())


def floor_once(directory: Path, total: int, piece: int, io: Io) -> dict[str, float]:
    """One 'download' of ``total`` bytes: recv_into + SHA-1 + write; CPU and wall seconds."""
    path = directory / f"floor-{os.getpid()}.bin"
    srv = socket.socket()
    srv.bind((RECV_IP, 0))
    srv.listen(1)
    q: Any = mp.get_context("fork").Queue()
    child = mp.get_context("fork").Process(target=sender, args=(srv.getsockname(), total, q))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        c0, t0 = cpu_self(), time.perf_counter()
        os.posix_fallocate(fd, 0, total)
        mm = mmap.mmap(fd, total) if io == "mmap" else None
        child.start()
        conn, _ = srv.accept()
        buf = bytearray(piece)
        view = memoryview(buf)
        digests = 0
        with conn:
            offset = 0
            while offset < total:
                want = min(piece, total - offset)
                got = 0
                while got < want:
                    n = conn.recv_into(view[got:want])
                    if not n:
                        raise RuntimeError("the sender closed early")
                    got += n
                digests ^= hashlib.sha1(view[:want]).digest()[0]
                if mm is not None:
                    mm[offset : offset + want] = view[:want]
                else:
                    os.pwrite(fd, view[:want], offset)
                offset += want
        if mm is not None:
            mm.close()
        cpu, wall = cpu_self() - c0, time.perf_counter() - t0
        child.join(30)
        send_cpu = float(q.get(timeout=5))
    finally:
        os.close(fd)
        srv.close()
        path.unlink(missing_ok=True)
        if child.is_alive():
            child.kill()
    return {"cpu_s": cpu, "wall_s": wall, "sender_cpu_s": send_cpu, "check": digests}


def floor_rows(directory: Path, total: int, pieces: list[int], runs: int) -> list[dict[str, Any]]:
    samples: dict[tuple[int, Io], list[dict[str, float]]] = {}
    ios: tuple[Io, ...] = ("mmap", "pwrite")
    for r in range(runs + 1):  # the first round warms up: not counted
        for piece in pieces:
            for io in ios if r % 2 == 0 else ios[::-1]:
                common.wait_for_quiet(5.0)
                b0 = common.system_busy()
                got = floor_once(directory, total, piece, io)
                # what the rest of the machine did meanwhile (this process and the sender out)
                busy = common.system_busy() - b0 - got["cpu_s"] - got["sender_cpu_s"]
                got["background_load"] = max(0.0, busy) / (got["wall_s"] * (os.cpu_count() or 1))
                print(f"floor {'(warm-up) ' if not r else ''}{piece // 1024} KiB {io}: CPU "
                      f"{got['cpu_s']:.2f} s, wall {got['wall_s']:.2f} s, sender "
                      f"{got['sender_cpu_s']:.2f} s, background {got['background_load']:.0%}",
                      file=sys.stderr)  # fmt: skip
                if r:
                    samples.setdefault((piece, io), []).append(got)
    return [
        {
            "piece_length": piece,
            "io": io,
            "runs": len(ms),
            "cpu_s_per_gib": common.median(m["cpu_s"] for m in ms) / (total / GiB),
            "min_cpu_s_per_gib": min(m["cpu_s"] for m in ms) / (total / GiB),
            "wall_s": common.median(m["wall_s"] for m in ms),
            "sender_cpu_s_per_gib": common.median(m["sender_cpu_s"] for m in ms) / (total / GiB),
            "max_background_load": max(m["background_load"] for m in ms),
            "samples": ms,
        }
        for (piece, io), ms in samples.items()
    ]


def fetch_rows(args: argparse.Namespace, size: int, pieces: list[int]) -> list[dict[str, Any]]:
    jobs = [int(j) for j in args.jobs.split(",")]
    clients = [Client("mptorrent", j) for j in jobs] + [Client(vs_anchors.LT)]
    rows: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="mptorrent-floor-", dir=args.dir))
    try:
        for piece in pieces:
            wl = Workload(f"1g-{piece // 1024}k", f"{common.human(size)} file", piece, size=size)
            samples, _ = vs_anchors.run_workload(
                workdir, wl, clients, runs=args.runs, warmups=1, settle=args.settle,
                timeout=args.timeout, pss=False, redo_above=args.redo_above,
            )  # fmt: skip
            rows += [vs_anchors.summarize(wl, c, ms) for c, ms in samples.items()]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="1GiB", help="bytes per run (default 1GiB)")
    ap.add_argument("--pieces", default="1MiB,256KiB", help="piece sizes (default 1MiB,256KiB)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each (default 3)")
    ap.add_argument("--jobs", default="1,2", help="mptorrent worker counts (default 1,2)")
    ap.add_argument("--no-fetch", action="store_true", help="the floor alone")
    ap.add_argument("--redo-above", type=float, default=1.0, metavar="SHARE",
                    help="as vs_anchors.py's, for the fetches (default 1: never)")  # fmt: skip
    common.add_run_options(ap, settle=10.0)
    ap.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/floor.json)")
    args = ap.parse_args(argv)
    vs_anchors.on_sigterm()
    size = common.parse_size(args.size)
    pieces = [common.parse_size(p) for p in args.pieces.split(",") if p.strip()]
    args.dir.mkdir(parents=True, exist_ok=True)
    common.check_space(args.dir, 2 * size + 64 * MiB)
    floors = floor_rows(args.dir, size, pieces, args.runs)
    fetches = [] if args.no_fetch else fetch_rows(args, size, pieces)

    print(f"\nfloor: recv_into + SHA-1 + write of {common.human(size)}, median of {args.runs}\n")
    text = common.print_table(
        ["piece", "write", "CPU s/GiB", "best", "wall s", "sender CPU s/GiB", "worst bg load"],
        [[f"{r['piece_length'] // 1024} KiB", r["io"], f"{r['cpu_s_per_gib']:.2f}",
          f"{r['min_cpu_s_per_gib']:.2f}", f"{r['wall_s']:.2f}",
          f"{r['sender_cpu_s_per_gib']:.2f}", f"{r['max_background_load']:.0%}"]
         for r in floors],
    )  # fmt: skip
    if fetches:
        floor_of = {(r["piece_length"], r["io"]): r["cpu_s_per_gib"] for r in floors}
        print(f"\nfetch of {common.human(size)} from 4 libtorrent seeders, median of {args.runs}; "
              "ratio over the floor with the same piece size (mmap, pwrite)\n")  # fmt: skip
        text += "\n\n" + common.print_table(
            ["piece", "client", "wall s", "CPU s/GiB", "/ mmap floor", "/ pwrite floor",
             "worst bg load"],
            [[f"{r['piece_length'] // 1024} KiB", r["client"], f"{r['median_wall_s']:.2f}",
              f"{r['cpu_s_per_gib']:.2f}",
              f"{r['cpu_s_per_gib'] / floor_of[(r['piece_length'], 'mmap')]:.2f}x",
              f"{r['cpu_s_per_gib'] / floor_of[(r['piece_length'], 'pwrite')]:.2f}x",
              f"{r['max_background_load']:.0%}"]
             for r in fetches],
        )  # fmt: skip
    common.write_json("floor", {**common.environment(), "size": size, "floor": floors,
                                "fetch": fetches, "table": text}, args.out)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
