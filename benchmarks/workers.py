"""mptorrent fetch with 1, 2, 3, 4 and 8 worker processes: one swarm, one torrent.

    python3 benchmarks/workers.py                          # 500 MB, 1 MiB pieces, 3 runs
    python3 benchmarks/workers.py --size 200M --jobs 1,2,4 --runs 5

Three libtorrent seeders (tests/swarm.py, seed mode) on 127.0.0.11-13 serve one random file
for the whole session; an untimed warm-up download goes first, because the seeders hash
each piece the first time they send it.  Each run downloads the file once per worker count
(``mptorrent fetch -j N --peer ... --no-trackers`` in a subprocess), the order rotating from
run to run so drift hits every count alike, and once with a libtorrent leecher in its own
process as the reference line.  Every download is compared with the original outside the
timing, then deleted.

Prints a table of medians (wall time of the whole process, MB/s with 1 MB = 10^6 bytes,
speed-up over -j 1, peak summed RssAnon and VmRSS of the process tree; see common.py), writes
JSON to benchmarks/results/workers.json and, when matplotlib is importable, a PNG next to it.
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
LT = "libtorrent"


def download(
    variant: str | int, torrent: Path, movie: Path, out_dir: Path,
    peers: list[tuple[str, int]], *, timeout: float,
) -> Measurement:  # fmt: skip
    out_dir.mkdir(parents=True)
    try:
        if variant == LT:
            m = common.run_lt_leecher_measured(torrent, out_dir, peers, timeout=timeout)
        else:
            cmd = common.mptorrent_fetch_cmd(torrent, out_dir / NAME, peers, int(variant))
            m = common.run_measured(cmd, timeout=timeout)
        if not filecmp.cmp(out_dir / NAME, movie, shallow=False):
            raise SystemExit(f"{variant}: the download differs from the original")
        return m
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def label(variant: str | int) -> str:
    return LT if variant == LT else f"mptorrent -j {variant}"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    mp = [r for r in rows if r["variant"] != LT]
    lt = [r for r in rows if r["variant"] == LT]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [r["variant"] for r in mp]
    ax1.plot(xs, [r["mb_s"] for r in mp], "o-", label="mptorrent")
    for r in lt:
        ax1.axhline(r["mb_s"], color="gray", linestyle="--", label="libtorrent")
    ax1.set_xlabel("worker processes (-j)")
    ax1.set_ylabel("MB/s (median, whole process)")
    ax1.set_xticks(xs)
    ax1.legend()
    ax2.plot(xs, [r["median_peak_anon"] / MiB for r in mp], "o-", label="RssAnon, mptorrent")
    ax2.plot(xs, [r["median_peak_rss"] / MiB for r in mp], "s--", label="VmRSS, mptorrent")
    for r in lt:
        ax2.axhline(r["median_peak_anon"] / MiB, color="gray", linestyle="--",
                    label="RssAnon, libtorrent")  # fmt: skip
    ax2.set_xlabel("worker processes (-j)")
    ax2.set_ylabel("peak MiB, summed over the process tree")
    ax2.set_xticks(xs)
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="500M", help="file size: 500M, 1G, 64MiB (default 500M)")
    ap.add_argument("--piece-size", default="1MiB", help="piece length (default 1MiB)")
    ap.add_argument("--jobs", default="1,2,3,4,8", help="worker counts (default 1,2,3,4,8)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each variant (default 3)")
    ap.add_argument("--no-libtorrent", action="store_true", help="skip the libtorrent leecher")
    common.add_run_options(ap, settle=20.0)
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR / "workers.json",
                    help="JSON file; the PNG goes next to it")  # fmt: skip
    args = ap.parse_args(argv)

    size = common.parse_size(args.size)
    piece = common.parse_size(args.piece_size)
    jobs = [int(j) for j in args.jobs.split(",")]
    variants: list[str | int] = [*jobs, *([] if args.no_libtorrent else [LT])]
    args.dir.mkdir(parents=True, exist_ok=True)
    common.check_space(args.dir, 2 * size + 64 * MiB)
    workdir = Path(tempfile.mkdtemp(prefix="mptorrent-workers-", dir=args.dir))
    samples: dict[str | int, list[Measurement]] = {v: [] for v in variants}
    started = time.monotonic()
    try:
        print(f"writing {size / 1e6:.0f} MB of random data to {workdir} ...", file=sys.stderr)
        payload = make_single_file(workdir / "seed", size, name=NAME)
        torrent = workdir / f"{NAME}.torrent"
        torrent.write_bytes(make_torrent(payload.root, piece))
        with Swarm(
            torrent.read_bytes(), payload.save_dir, n_seeders=3, first_ip=11, trust_data=True,
            use_trackers=False,
        ) as swarm:  # fmt: skip
            peers = [(a.host, a.port) for a in swarm.addrs]
            download(max(jobs), torrent, payload.root, workdir / "warm-up", peers,
                     timeout=args.timeout)  # fmt: skip
            n = 0
            for r in range(args.runs):
                shift = r % len(variants)
                for v in variants[shift:] + variants[:shift]:
                    load = common.wait_for_quiet(args.settle)
                    m = download(v, torrent, payload.root, workdir / f"dl-{n}", peers,
                                 timeout=args.timeout)  # fmt: skip
                    n += 1
                    m.extra["load_before"] = load
                    samples[v].append(m)
                    print(
                        f"run {r + 1}/{args.runs} {label(v)}: {m.wall_s:.2f} s, peak anon "
                        f"{mib(m.mem.anon)} MiB, rss {mib(m.mem.rss)} MiB, background load "
                        f"{m.background_load:.0%}",
                        file=sys.stderr,
                    )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    base = median(m.wall_s for m in samples[jobs[0]])
    rows: list[dict[str, Any]] = []
    for v, ms in samples.items():
        wall = median(m.wall_s for m in ms)
        transfers = [t for t in (common.transfer_seconds(m) for m in ms) if t is not None]
        rows.append(
            {
                "variant": v,
                "label": label(v),
                "median_wall_s": wall,
                "mb_s": size / 1e6 / wall,
                "speedup_vs_first": base / wall,
                "median_transfer_s": median(transfers) if transfers else None,
                "median_peak_anon": median(m.mem.anon for m in ms),
                "median_peak_rss": median(m.mem.rss for m in ms),
                "median_cpu_s": median(m.cpu_s for m in ms),
                "max_background_load": max(m.background_load for m in ms),
                "measurements": [common.measurement_dict(m) for m in ms],
            }
        )

    title = (
        f"{size / 1e6:.0f} MB, {piece // 1024} KiB pieces, 3 libtorrent seeders, "
        f"{common.environment()['cpus']} CPUs, median of {args.runs} runs"
    )
    print(f"\n{title}\n")
    table = common.print_table(
        ["client", "median wall s", "MB/s", f"vs -j {jobs[0]}", "transfer s",
         "peak RssAnon MiB", "peak RSS MiB", "CPU s", "worst bg load"],
        [
            [r["label"], f"{r['median_wall_s']:.2f}", f"{r['mb_s']:.0f}",
             f"{r['speedup_vs_first']:.2f}x",
             "-" if r["median_transfer_s"] is None else f"{r['median_transfer_s']:.2f}",
             mib(r["median_peak_anon"]), mib(r["median_peak_rss"]), f"{r['median_cpu_s']:.1f}",
             f"{r['max_background_load']:.0%}"]
            for r in rows
        ],
    )  # fmt: skip
    common.write_json(
        "workers",
        {
            **common.environment(),
            "size_bytes": size,
            "piece_length": piece,
            "runs": args.runs,
            "seeders": 3,
            "dir": str(args.dir),
            "elapsed_s": time.monotonic() - started,
            "results": rows,
            "table": table,
        },
        args.out,
    )
    png = args.out.with_suffix(".png")
    if plot(rows, png, title):
        print(f"wrote {png}", file=sys.stderr)
    else:
        print("matplotlib is not installed: no plot (pip install '.[plot]')", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
