"""The CPU floor of a download on this machine, and mptorrent's CPU per GiB against it.

    python3 benchmarks/floor.py                     # floor and fetch, 3 runs each
    python3 benchmarks/floor.py --no-fetch --runs 5 # the floor alone

The floor is the least work any client must do per byte: receive it from a loopback TCP
socket with ``recv_into`` straight into a piece buffer (no message framing, no copy), hash
each piece with SHA-1, and write the piece into the output file, which is reserved with
posix_fallocate first, as mptorrent does. Two ways of writing, as mptorrent's ``--io``:
``mmap`` (copy into a shared memory map of the file, each piece's pages faulted in first
with one ``madvise(MADV_POPULATE_WRITE)``, as mptorrent's storage does) and ``pwrite``. One
process does it all in a loop of a few lines, in this process's main thread; a child process
(``floor.py send``) on another loopback address sends the bytes (``sendall`` of one buffer,
over and over) and its CPU is reported apart, not counted. The file is deleted after each
run, which also drops its page cache, so every run pays for new page-cache pages as a real
download does. CPU is user+system of the receiving thread (getrusage RUSAGE_THREAD: the
seeders' threads share the process).

In the same run (unless ``--no-fetch``), mptorrent fetches 1 GiB from vs_anchors.py's swarm
(four checked libtorrent seeders behind opentracker) at ``-j 1`` and ``-j 2`` (``--io``:
with each way of writing given) with 1 MiB and 256 KiB pieces, and the libtorrent leecher
beside it; their CPU is that of the whole process tree (start-up, coordinator and workers).
Each round runs the floor both ways and every client, in a rotating order, so that a slow
spell of the shared machine (the cost of new page-cache pages here moves by half between
spells) hits them alike. The ratio is each client's CPU per GiB over the floor with the same
piece size, both ways of writing (mptorrent's ``auto`` is the memory map on a local disk).
JSON goes to benchmarks/results/floor.json.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import mmap
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import common
import vs_anchors
from common import Measurement, MiB
from vs_anchors import Client, Workload

GiB = 1024 * MiB
RECV_IP = "127.0.0.40"
SEND_IP = "127.0.0.41"
Io = Literal["mmap", "pwrite"]
# Linux 5.14: fault a range in, writable, in one call (Python 3.11 does not name it).
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def cpu_thread() -> float:
    """CPU of the calling thread only: the seeders' threads share this process."""
    r = resource.getrusage(resource.RUSAGE_THREAD)
    return r.ru_utime + r.ru_stime


def sender_main(argv: list[str]) -> int:
    """``floor.py send HOST PORT TOTAL``: send TOTAL bytes to HOST:PORT; print this CPU."""
    host, port, total = argv[0], int(argv[1]), int(argv[2])
    chunk = memoryview(os.urandom(4 * MiB))
    with socket.create_connection((host, port), source_address=(SEND_IP, 0)) as s:
        left = total
        while left:
            n = min(left, len(chunk))
            s.sendall(chunk[:n])
            left -= n
        s.shutdown(socket.SHUT_WR)
        s.recv(1)  # the receiver closes when it has everything
    r = resource.getrusage(resource.RUSAGE_SELF)
    print(r.ru_utime + r.ru_stime)
    return 0


def floor_once(directory: Path, total: int, piece: int, io: Io) -> dict[str, float]:
    """One 'download' of ``total`` bytes: recv_into + SHA-1 + write; CPU and wall seconds."""
    path = directory / f"floor-{os.getpid()}.bin"
    srv = socket.socket()
    srv.bind((RECV_IP, 0))
    srv.listen(1)
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "send", RECV_IP,
         str(srv.getsockname()[1]), str(total)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        conn, _ = srv.accept()  # the sender's start-up is not timed
        b0, c0, t0 = common.system_busy(), cpu_thread(), time.perf_counter()
        os.posix_fallocate(fd, 0, total)
        mm = mmap.mmap(fd, total) if io == "mmap" else None
        buf = bytearray(piece)
        view = memoryview(buf)
        check = 0
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
                check ^= hashlib.sha1(view[:want]).digest()[0]
                if mm is not None:
                    mm.madvise(MADV_POPULATE_WRITE, offset, want)  # as mptorrent's storage
                    mm[offset : offset + want] = view[:want]
                else:
                    os.pwrite(fd, view[:want], offset)
                offset += want
            if mm is not None:
                mm.close()
            cpu, wall = cpu_thread() - c0, time.perf_counter() - t0
        out, _ = child.communicate(timeout=30)
        send_cpu = float(out.strip())
    finally:
        os.close(fd)
        srv.close()
        path.unlink(missing_ok=True)
        if child.poll() is None:
            child.kill()
            child.wait()
    # what the rest of the machine did meanwhile (this thread and the sender left out, all of
    # the sender's CPU, its start-up too; the seeders' idle ticks are in it)
    busy = common.system_busy() - b0 - cpu - send_cpu
    load = max(0.0, busy) / (wall * (os.cpu_count() or 1))
    return {"cpu_s": cpu, "wall_s": wall, "sender_cpu_s": send_cpu, "check": check,
            "background_load": load}  # fmt: skip


def floor_measured(directory: Path, total: int, piece: int, io: Io, settle: float,
                   redo_above: float, tries: int = 3) -> dict[str, float]:  # fmt: skip
    for _ in range(tries):
        common.wait_for_quiet(settle)
        got = floor_once(directory, total, piece, io)
        if got["background_load"] <= redo_above:
            break
    print(f"floor {piece // 1024} KiB {io}: CPU {got['cpu_s']:.2f} s, wall "
          f"{got['wall_s']:.2f} s, sender {got['sender_cpu_s']:.2f} s, background "
          f"{got['background_load']:.0%}", file=sys.stderr)  # fmt: skip
    return got


def summarize_floor(piece: int, io: Io, ms: list[dict[str, float]], total: int) -> dict[str, Any]:
    return {
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


IOS: tuple[Io, ...] = ("mmap", "pwrite")


def measure(args: argparse.Namespace, size: int, pieces: list[int]
            ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:  # fmt: skip
    """Per piece size, one swarm; each round the floor (both ways) and every client, in a
    rotating order, so a slow spell of the shared machine hits them alike."""
    jobs = [int(j) for j in args.jobs.split(",")]
    ios = [t.strip() for t in args.io.split(",") if t.strip()]
    clients: list[Client] = []
    if not args.no_fetch:
        clients = [Client("mptorrent", j, io) for io in ios for j in jobs]
        clients.append(Client(vs_anchors.LT))
    floors: list[dict[str, Any]] = []
    fetches: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="mptorrent-floor-", dir=args.dir))
    try:
        for piece in pieces:
            wl = Workload(f"1g-{piece // 1024}k", f"{common.human(size)} file", piece, size=size)
            with contextlib.ExitStack() as stack:
                setup = None if args.no_fetch else stack.enter_context(
                    vs_anchors.swarm(workdir, wl))  # fmt: skip
                if setup is not None:
                    vs_anchors.ensure_cached(setup.files)
                    vs_anchors.download(clients[0], setup, workdir / "warm-up", timeout=600)
                for io in IOS:
                    floor_once(args.dir, size, piece, io)  # warm-up
                items: list[Io | Client] = [*IOS, *clients]
                got_floor: dict[Io, list[dict[str, float]]] = {io: [] for io in IOS}
                got_fetch: dict[Client, list[Measurement]] = {c: [] for c in clients}
                n = 0
                for r in range(args.runs):
                    shift = r % len(items)
                    for item in items[shift:] + items[:shift]:
                        if isinstance(item, Client):
                            assert setup is not None
                            for _ in range(3):
                                vs_anchors.ensure_cached(setup.files)
                                common.wait_for_quiet(args.settle)
                                m = vs_anchors.download(item, setup, workdir / f"dl-{n}",
                                                        timeout=args.timeout)  # fmt: skip
                                n += 1
                                if m.background_load <= args.redo_above:
                                    break
                            print(f"[{wl.key}] {item.label}: CPU {m.cpu_s:.2f} s, wall "
                                  f"{m.wall_s:.2f} s, background {m.background_load:.0%}",
                                  file=sys.stderr)  # fmt: skip
                            got_fetch[item].append(m)
                        else:
                            got = floor_measured(args.dir, size, piece, item, args.settle,
                                                 args.redo_above)  # fmt: skip
                            got_floor[item].append(got)
                floors += [summarize_floor(piece, io, ms, size) for io, ms in got_floor.items()]
                fetches += [vs_anchors.summarize(wl, c, ms) for c, ms in got_fetch.items()]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return floors, fetches


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="1GiB", help="bytes per run (default 1GiB)")
    ap.add_argument("--pieces", default="1MiB,256KiB", help="piece sizes (default 1MiB,256KiB)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each (default 3)")
    ap.add_argument("--jobs", default="1,2", help="mptorrent worker counts (default 1,2)")
    ap.add_argument("--no-fetch", action="store_true", help="the floor alone")
    ap.add_argument("--io", default="auto",
                    help="mptorrent's --io values, comma-separated (default auto)")  # fmt: skip
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
    floors, fetches = measure(args, size, pieces)

    print(f"\nfloor: recv_into + SHA-1 + write of {common.human(size)}, median of {args.runs}\n")
    text = common.print_table(
        ["piece", "write", "CPU s/GiB", "best", "wall s", "sender CPU s/GiB", "worst bg load"],
        [[f"{r['piece_length'] // 1024} KiB", r["io"], f"{r['cpu_s_per_gib']:.2f}",
          f"{r['min_cpu_s_per_gib']:.2f}", f"{r['wall_s']:.2f}",
          f"{r['sender_cpu_s_per_gib']:.2f}", f"{r['max_background_load']:.0%}"]
         for r in floors],
    )  # fmt: skip
    if fetches:
        # Medians over medians, and bests over bests: a neighbour on the shared cores only
        # ever adds CPU (caches, the cost of new pages), so the best run of each is the
        # closest to what the work itself costs.
        med = {(r["piece_length"], r["io"]): r["cpu_s_per_gib"] for r in floors}
        best = {(r["piece_length"], r["io"]): r["min_cpu_s_per_gib"] for r in floors}
        for r in fetches:
            r["min_cpu_s_per_gib"] = min(m["cpu_s"] for m in r["measurements"]) / (size / GiB)
        print(f"\nfetch of {common.human(size)} from 4 libtorrent seeders, median of {args.runs}; "
              "its CPU per GiB over the floor's with the same piece size\n")  # fmt: skip
        text += "\n\n" + common.print_table(
            ["piece", "client", "wall s", "CPU s/GiB", "best", "/ mmap floor", "/ pwrite floor",
             "best / best mmap", "best / best pwrite", "worst bg load"],
            [[f"{r['piece_length'] // 1024} KiB", r["client"], f"{r['median_wall_s']:.2f}",
              f"{r['cpu_s_per_gib']:.2f}", f"{r['min_cpu_s_per_gib']:.2f}",
              *(f"{r['cpu_s_per_gib'] / med[(r['piece_length'], io)]:.2f}x" for io in IOS),
              *(f"{r['min_cpu_s_per_gib'] / best[(r['piece_length'], io)]:.2f}x" for io in IOS),
              f"{r['max_background_load']:.0%}"]
             for r in fetches],
        )  # fmt: skip
    common.write_json("floor", {**common.environment(), "size": size, "floor": floors,
                                "fetch": fetches, "table": text}, args.out)  # fmt: skip
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "send":
        sys.exit(sender_main(sys.argv[2:]))
    sys.exit(main())
