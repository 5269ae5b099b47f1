"""Hashing throughput: ``create`` and ``verify`` with -j 1 and -j 2, against libtorrent.

    python3 benchmarks/hash.py                  # 1 GiB in /tmp, 3 runs
    python3 benchmarks/hash.py --size 256M --runs 5 --dir /dev/shm

The data file is random and stays in the page cache (it is written, synced and read
once before timing), so this measures hashing and process overhead, not the disk.
Runs are interleaved across the variants so that drift (other load, frequency
changes) hits them all alike.  Prints a table of medians and writes JSON to
benchmarks/results/hash.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import libtorrent as lt

from mptorrent.disk import checker, create
from mptorrent.disk.storage import Layout
from mptorrent.proto import metainfo

MiB = 1024 * 1024
RESULTS = Path(__file__).resolve().parent / "results" / "hash.json"


def parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1024, "M": MiB, "G": 1024 * MiB}.get(t[-1:], 1)
    return int(float(t.rstrip("KMG")) * mult)


def make_file(path: Path, size: int) -> None:
    chunk = 64 * MiB
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(chunk, left)
            fh.write(os.urandom(n))
            left -= n
        fh.flush()
        os.fsync(fh.fileno())  # no writeback competing with the timed runs


def warm(path: Path) -> None:
    with open(path, "rb") as fh:
        while fh.read(64 * MiB):
            pass


CLK = os.sysconf("SC_CLK_TCK")


def system_cpu() -> float:
    """CPU-seconds spent busy so far, summed over every CPU of the machine."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:9]]
    return (sum(f) - f[3] - f[4]) / CLK  # all but idle and iowait


def own_cpu() -> float:
    """CPU-seconds of this process and its reaped children (the pool workers)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def wait_for_quiet(max_wait: float, threshold: float = 0.10) -> float:
    """Wait (at most ``max_wait`` s) until other processes use under ``threshold`` of the
    machine; this box is shared, and a busy neighbour makes -j 2 look like -j 1."""
    deadline = time.monotonic() + max_wait
    ncpu = os.cpu_count() or 1
    while True:
        b0, t0 = system_cpu(), time.monotonic()
        time.sleep(0.3)
        load = (system_cpu() - b0) / ((time.monotonic() - t0) * ncpu)
        if load < threshold or time.monotonic() > deadline:
            return load


def timed(fn: Callable[[], object]) -> tuple[float, float, float]:
    """Wall time, our CPU time, and the share of the machine others used meanwhile."""
    b0, c0, t0 = system_cpu(), own_cpu(), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    ours = own_cpu() - c0
    others = max(0.0, system_cpu() - b0 - ours) / (wall * (os.cpu_count() or 1))
    return wall, ours, others


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="1G", help="data size, e.g. 1G, 256M (default 1G)")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the data file goes")
    ap.add_argument("--runs", type=int, default=3, help="timed runs of each variant (default 3)")
    ap.add_argument("--piece-size", default="auto", help="auto (what create picks) or e.g. 1M")
    ap.add_argument("--jobs", default="1,2", help="worker counts to compare (default 1,2)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    ap.add_argument(
        "--settle",
        type=float,
        default=20.0,
        help="before each timed run, wait up to this many s for a quiet machine",
    )
    args = ap.parse_args(argv)

    size = parse_size(args.size)
    jobs = [int(j) for j in args.jobs.split(",")]
    piece = create.parse_piece_size(args.piece_size) or create.auto_piece_length(size)
    workdir = Path(tempfile.mkdtemp(prefix="mptorrent-hash-", dir=args.dir))
    data = workdir / "data.bin"
    try:
        print(f"writing {size / MiB:.0f} MiB of random data to {data} ...", file=sys.stderr)
        make_file(data, size)
        warm(data)
        torrent = create.create(data, piece_length=piece, jobs=max(jobs))  # also a warm-up
        meta = metainfo.parse(torrent)
        layout = Layout.for_torrent(meta, data)

        def lt_hash() -> None:
            ct = lt.create_torrent(lt.list_files(str(data)), piece, lt.create_torrent.v1_only)
            lt.set_piece_hashes(ct, str(workdir))
            # Same piece hashes as ours, so it did the same work.
            assert lt.torrent_info(lt.bencode(ct.generate())).info_hashes().v1 == lt.sha1_hash(
                meta.info_hash
            )

        def make_create(j: int) -> Callable[[], None]:
            def run() -> None:
                made = create.create(data, piece_length=piece, jobs=j)
                assert metainfo.parse(made).info_hash == meta.info_hash

            return run

        def make_verify(j: int) -> Callable[[], None]:
            def run() -> None:
                assert checker.verify(meta, layout, jobs=j).complete

            return run

        variants: dict[str, Callable[[], None]] = {}
        for j in jobs:
            variants[f"create -j {j}"] = make_create(j)
        for j in jobs:
            variants[f"verify -j {j}"] = make_verify(j)
        variants["libtorrent set_piece_hashes"] = lt_hash

        samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
        for r in range(args.runs):
            for name, fn in variants.items():
                wait_for_quiet(args.settle)
                samples[name].append(timed(fn))
            print(f"run {r + 1}/{args.runs} done", file=sys.stderr)
    finally:
        for p in workdir.iterdir():
            p.unlink()
        workdir.rmdir()

    rows = []
    for name, ts in samples.items():
        med = statistics.median(w for w, _, _ in ts)
        rows.append(
            {
                "variant": name,
                "median_s": med,
                "mib_s": size / MiB / med,
                "median_cpu_s": statistics.median(c for _, c, _ in ts),
                "max_background_load": max(o for _, _, o in ts),
                "runs": [{"wall_s": w, "cpu_s": c, "background_load": o} for w, c, o in ts],
            }
        )
    by = {r["variant"]: r for r in rows}
    speedups = {}
    for op in ("create", "verify"):
        base = by.get(f"{op} -j {jobs[0]}")
        for j in jobs[1:]:
            other = by.get(f"{op} -j {j}")
            if base and other:
                speedups[f"{op} -j {j} / -j {jobs[0]}"] = base["median_s"] / other["median_s"]

    print(
        f"\n{size / MiB:.0f} MiB, {meta.num_pieces} pieces of {piece // 1024} KiB, "
        f"{os.cpu_count()} CPUs, median of {args.runs} runs\n"
    )
    print("| variant | median wall s | MiB/s | median CPU s | worst background load |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['median_s']:.3f} | {r['mib_s']:.0f} "
            f"| {r['median_cpu_s']:.3f} | {r['max_background_load']:.0%} |"
        )
    print()
    for k, v in speedups.items():
        print(f"speed-up {k}: {v:.2f}x")

    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "size_bytes": size,
        "piece_length": piece,
        "num_pieces": meta.num_pieces,
        "task_bytes": checker.TASK_BYTES,
        "runs": args.runs,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "libtorrent": lt.__version__,
        "start_method": os.environ.get("MPTORRENT_START_METHOD") or "default",
        "dir": str(args.dir),
        "results": rows,
        "speedups": speedups,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
