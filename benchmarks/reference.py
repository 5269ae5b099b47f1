"""The reference scenario: BigMovie.mp4 (500 MB, 1 MiB pieces) from three libtorrent seeders.

    python3 benchmarks/reference.py                        # 500 MB, -j 3, 3 runs
    python3 benchmarks/reference.py --size 100M --runs 5
    python3 benchmarks/reference.py --compare-sizes 500M,2G   # peak memory against size

Three libtorrent seeders (tests/swarm.py) on 127.0.0.11-13 serve the file; they start in
seed mode (``trust_data``: no full hash check first; libtorrent checks each piece the first
time it sends it, so an untimed warm-up download goes first).  Each run is
``mptorrent fetch -j 3 --peer ... --no-trackers`` in a subprocess, and a libtorrent leecher
(``common.py lt-leech``, its own process) downloading the same torrent from the same
seeders; their order alternates between runs.  Every download is compared byte for byte
with the original, outside the timing, then deleted.

Reported per client: median wall time of the whole process (start-up and exit included), MB/s
from it (1 MB = 10^6 bytes, as in "500 MB"), the client's own transfer time, and the peak of
the process tree's summed RssAnon and VmRSS (see common.py).  ``--compare-sizes`` runs the
scenario at each size in turn (the data of one size is deleted before the next is written),
to show whether peak memory grows with the torrent.

Data lives in ``--dir`` (default: the system temporary folder); the free space is checked
first and everything is removed at the end.  JSON goes to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
from common import Measurement, MiB, median, mib

from tests.swarm import Swarm, make_single_file, make_torrent

NAME = "BigMovie.mp4"
CLIENTS = ("mptorrent", "libtorrent")


def make_movie(workdir: Path, size: int, piece: int) -> tuple[Path, Path]:
    """Write the movie and its torrent; returns (torrent path, the movie)."""
    print(f"writing {size / 1e6:.0f} MB of random data to {workdir} ...", file=sys.stderr)
    payload = make_single_file(workdir / "seed", size, name=NAME)
    torrent = workdir / f"{NAME}.torrent"
    torrent.write_bytes(make_torrent(payload.root, piece))
    return torrent, payload.root


def download(
    client: str, torrent: Path, movie: Path, out_dir: Path, peers: list[tuple[str, int]],
    jobs: int, *, timeout: float, pss: bool,
) -> Measurement:  # fmt: skip
    """One measured download into ``out_dir``, checked against ``movie``, then deleted."""
    out_dir.mkdir(parents=True)
    try:
        if client == "mptorrent":
            cmd = common.mptorrent_fetch_cmd(torrent, out_dir / NAME, peers, jobs)
            m = common.run_measured(cmd, timeout=timeout, pss=pss)
        else:
            m = common.run_lt_leecher_measured(torrent, out_dir, peers, timeout=timeout, pss=pss)
        if not filecmp.cmp(out_dir / NAME, movie, shallow=False):
            raise SystemExit(f"{client}: the download differs from the original")
        return m
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def run_scenario(
    workdir: Path, size: int, piece: int, *, runs: int, jobs: int, clients: tuple[str, ...],
    settle: float, timeout: float, pss: bool,
) -> dict[str, list[Measurement]]:  # fmt: skip
    torrent, movie = make_movie(workdir, size, piece)
    results: dict[str, list[Measurement]] = {c: [] for c in clients}
    try:
        with Swarm(
            torrent.read_bytes(), movie.parent, n_seeders=3, first_ip=11, trust_data=True,
            use_trackers=False,
        ) as swarm:  # fmt: skip
            peers = [(a.host, a.port) for a in swarm.addrs]
            print(f"seeders: {', '.join(f'{h}:{p}' for h, p in peers)}", file=sys.stderr)
            # the seeders hash every piece on its first upload; keep that out of the timings
            download(clients[0], torrent, movie, workdir / "warm-up", peers, jobs,
                     timeout=timeout, pss=False)  # fmt: skip
            n = 0
            for r in range(runs):
                order = clients if r % 2 == 0 else tuple(reversed(clients))
                for client in order:
                    load = common.wait_for_quiet(settle)
                    m = download(client, torrent, movie, workdir / f"dl-{n}", peers, jobs,
                                 timeout=timeout, pss=pss)  # fmt: skip
                    n += 1
                    m.extra["load_before"] = load
                    results[client].append(m)
                    print(
                        f"run {r + 1}/{runs} {client}: {m.wall_s:.2f} s, peak anon "
                        f"{mib(m.mem.anon)} MiB, rss {mib(m.mem.rss)} MiB, background load "
                        f"{m.background_load:.0%}",
                        file=sys.stderr,
                    )
    finally:
        shutil.rmtree(workdir / "seed", ignore_errors=True)
        torrent.unlink(missing_ok=True)
    return results


def summarize(client: str, size: int, ms: list[Measurement]) -> dict[str, Any]:
    wall = median(m.wall_s for m in ms)
    transfers = [t for t in (common.transfer_seconds(m) for m in ms) if t is not None]
    pss = [m.mem.pss_anon for m in ms if m.mem.pss_anon is not None]
    return {
        "client": client,
        "size_bytes": size,
        "runs": len(ms),
        "median_wall_s": wall,
        "mb_s": size / 1e6 / wall,
        "median_transfer_s": median(transfers) if transfers else None,
        "median_peak_anon": median(m.mem.anon for m in ms),
        "median_peak_rss": median(m.mem.rss for m in ms),
        "median_peak_pss_anon": median(pss) if pss else None,
        "max_peak_anon": max(m.mem.anon for m in ms),
        "median_cpu_s": median(m.cpu_s for m in ms),
        "max_background_load": max(m.background_load for m in ms),
        "measurements": [common.measurement_dict(m) for m in ms],
    }


def print_rows(rows: list[dict[str, Any]], with_size: bool) -> str:
    headers = [
        "client", *(["size"] if with_size else []), "median wall s", "MB/s",
        "transfer s", "peak RssAnon MiB", "peak RSS MiB", "CPU s", "worst bg load",
    ]  # fmt: skip
    if any(r["median_peak_pss_anon"] is not None for r in rows):
        headers.insert(-2, "peak Pss_Anon MiB")
    table = []
    for r in rows:
        t = r["median_transfer_s"]
        row: list[object] = [
            r["client"], *([f"{r['size_bytes'] / 1e6:.0f} MB"] if with_size else []),
            f"{r['median_wall_s']:.2f}", f"{r['mb_s']:.0f}", "-" if t is None else f"{t:.2f}",
            mib(r["median_peak_anon"]), mib(r["median_peak_rss"]),
            f"{r['median_cpu_s']:.1f}", f"{r['max_background_load']:.0%}",
        ]  # fmt: skip
        if "peak Pss_Anon MiB" in headers:
            row.insert(-2, mib(r["median_peak_pss_anon"]))
        table.append(row)
    return common.print_table(headers, table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="500M", help="movie size: 500M, 2G, 64MiB (default 500M)")
    ap.add_argument("--piece-size", default="1MiB", help="piece length (default 1MiB)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per client (default 3)")
    ap.add_argument("-j", "--jobs", type=int, default=3, help="mptorrent workers (default 3)")
    ap.add_argument("--compare-sizes", metavar="SIZES",
                    help="e.g. 500M,2G: the scenario at each size; compare memory")  # fmt: skip
    ap.add_argument("--no-libtorrent", action="store_true", help="skip the libtorrent leecher")
    ap.add_argument("--pss", action="store_true", help="also sample Pss_Anon (costs CPU)")
    common.add_run_options(ap, settle=20.0)
    ap.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/...)")
    args = ap.parse_args(argv)

    piece = common.parse_size(args.piece_size)
    clients = ("mptorrent",) if args.no_libtorrent else CLIENTS
    if args.compare_sizes:
        sizes = [common.parse_size(s) for s in args.compare_sizes.split(",")]
        name = "reference-sizes"
    else:
        sizes = [common.parse_size(args.size)]
        name = "reference"
    args.dir.mkdir(parents=True, exist_ok=True)
    # the movie, plus one download at a time
    common.check_space(args.dir, 2 * max(sizes) + 64 * MiB)
    workdir = Path(tempfile.mkdtemp(prefix="mptorrent-ref-", dir=args.dir))
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for size in sizes:
            res = run_scenario(
                workdir, size, piece, runs=args.runs, jobs=args.jobs, clients=clients,
                settle=args.settle, timeout=args.timeout, pss=args.pss,
            )  # fmt: skip
            rows += [summarize(c, size, ms) for c, ms in res.items()]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"\nBigMovie.mp4, pieces of {piece // 1024} KiB, 3 libtorrent seeders, mptorrent -j "
        f"{args.jobs}, {common.environment()['cpus']} CPUs, median of {args.runs} runs\n"
    )
    table = print_rows(rows, with_size=len(sizes) > 1)
    growth: dict[str, float] = {}
    if len(sizes) > 1:
        print()
        for client in clients:
            mine = [r for r in rows if r["client"] == client]
            first, last = mine[0], mine[-1]
            growth[client] = last["median_peak_anon"] / first["median_peak_anon"]
            print(
                f"{client}: peak RssAnon at {last['size_bytes'] / 1e6:.0f} MB / at "
                f"{first['size_bytes'] / 1e6:.0f} MB = {growth[client]:.2f}x "
                f"(the torrent is {last['size_bytes'] / first['size_bytes']:.1f}x larger)"
            )
    common.write_json(
        name,
        {
            **common.environment(),
            "piece_length": piece,
            "jobs": args.jobs,
            "runs": args.runs,
            "seeders": 3,
            "dir": str(args.dir),
            "elapsed_s": time.monotonic() - started,
            "results": rows,
            "anon_growth": growth,
            "table": table,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
