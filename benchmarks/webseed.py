"""Web seeds (BEP 19): one payload from a web seed alone, from libtorrent peers alone, and both.

    python3 benchmarks/webseed.py                          # 256 MiB, 1 MiB pieces, -j 2, 3 runs
    python3 benchmarks/webseed.py --size 64MiB --runs 5

Debian's lighttpd (tests/httpd.py, 127.0.16.100) serves the file; three libtorrent seeders
(tests/swarm.py, seed mode) on 127.0.0.11-13 serve the same file.  Each run downloads it with
``mptorrent fetch -j N`` (``--no-trackers --no-dht``) three ways: ``--web-seed`` alone,
``--peer`` alone, and both; plus a libtorrent leecher from the peers as the reference line
(the same run, the same machine).  An untimed warm-up goes first (the seeders hash each piece
the first time they send it; lighttpd's file is then in the page cache like theirs).  The
order rotates from run to run; every download is compared with the original outside the
timing, then deleted.  Prints the medians (wall time of the whole process, MB/s with
1 MB = 10^6 bytes) and writes JSON to benchmarks/results/webseed.json.
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

from tests.httpd import run_lighttpd
from tests.swarm import Swarm, make_single_file, make_torrent

NAME = "payload.bin"
WEB, PEERS, BOTH, LT = "web seed alone", "peers alone", "web seed + peers", "libtorrent (peers)"
HTTPD_IP = "127.0.16.100"


def download(
    variant: str, torrent: Path, original: Path, out_dir: Path, peers: list[tuple[str, int]],
    url: str, jobs: int, *, timeout: float,
) -> Measurement:  # fmt: skip
    out_dir.mkdir(parents=True)
    try:
        if variant == LT:
            m = common.run_lt_leecher_measured(torrent, out_dir, peers, timeout=timeout)
        else:
            cmd = common.mptorrent_fetch_cmd(
                torrent, out_dir / NAME, [] if variant == WEB else peers, jobs
            )
            if variant != PEERS:
                cmd += ["--web-seed", url]
            m = common.run_measured(cmd, timeout=timeout)
        if not filecmp.cmp(out_dir / NAME, original, shallow=False):
            raise SystemExit(f"{variant}: the download differs from the original")
        return m
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="256MiB", help="file size (default 256MiB)")
    ap.add_argument("--piece-size", default="1MiB", help="piece length (default 1MiB)")
    ap.add_argument("--jobs", type=int, default=2, help="mptorrent workers (default 2)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each variant (default 3)")
    ap.add_argument("--no-libtorrent", action="store_true", help="skip the libtorrent leecher")
    common.add_run_options(ap, settle=10.0)
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR / "webseed.json")
    args = ap.parse_args(argv)

    size = common.parse_size(args.size)
    piece = common.parse_size(args.piece_size)
    variants = [WEB, PEERS, BOTH, *([] if args.no_libtorrent else [LT])]
    args.dir.mkdir(parents=True, exist_ok=True)
    common.check_space(args.dir, 2 * size + 64 * MiB)
    workdir = Path(tempfile.mkdtemp(prefix="mptorrent-webseed-", dir=args.dir))
    samples: dict[str, list[Measurement]] = {v: [] for v in variants}
    started = time.monotonic()
    try:
        print(f"writing {size / 1e6:.0f} MB of random data to {workdir} ...", file=sys.stderr)
        payload = make_single_file(workdir / "seed", size, name=NAME)
        torrent = workdir / "payload.torrent"
        torrent.write_bytes(make_torrent(payload.root, piece))
        with (
            Swarm(torrent.read_bytes(), payload.save_dir, n_seeders=3, first_ip=11,
                  trust_data=True, use_trackers=False) as swarm,
            run_lighttpd(payload.save_dir, HTTPD_IP) as httpd,
        ):  # fmt: skip
            peers = [(a.host, a.port) for a in swarm.addrs]
            url = httpd.url(NAME)
            download(BOTH, torrent, payload.root, workdir / "warm-up", peers, url, args.jobs,
                     timeout=args.timeout)  # fmt: skip
            n = 0
            for r in range(args.runs):
                shift = r % len(variants)
                for v in variants[shift:] + variants[:shift]:
                    load = common.wait_for_quiet(args.settle)
                    m = download(v, torrent, payload.root, workdir / f"dl-{n}", peers, url,
                                 args.jobs, timeout=args.timeout)  # fmt: skip
                    n += 1
                    m.extra["load_before"] = load
                    samples[v].append(m)
                    print(f"run {r + 1}/{args.runs} {v}: {m.wall_s:.2f} s, peak anon "
                          f"{mib(m.mem.anon)} MiB, background load {m.background_load:.0%}",
                          file=sys.stderr)  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rows: list[dict[str, Any]] = []
    for v, ms in samples.items():
        wall = median(m.wall_s for m in ms)
        transfers = [t for t in (common.transfer_seconds(m) for m in ms) if t is not None]
        rows.append({
            "variant": v,
            "client": "libtorrent" if v == LT else f"mptorrent -j {args.jobs}",
            "median_wall_s": wall,
            "mb_s": size / 1e6 / wall,
            "median_transfer_s": median(transfers) if transfers else None,
            "median_peak_anon": median(m.mem.anon for m in ms),
            "median_cpu_s": median(m.cpu_s for m in ms),
            "max_background_load": max(m.background_load for m in ms),
            "measurements": [common.measurement_dict(m) for m in ms],
        })  # fmt: skip
    title = (
        f"{size / 1e6:.0f} MB, {piece // 1024} KiB pieces, lighttpd and/or 3 libtorrent "
        f"seeders, {common.environment()['cpus']} CPUs, median of {args.runs} runs"
    )
    print(f"\n{title}\n")
    table = common.print_table(
        ["source", "client", "median wall s", "MB/s", "transfer s", "transfer MB/s",
         "peak RssAnon MiB", "CPU s", "worst bg load"],
        [
            [r["variant"], r["client"], f"{r['median_wall_s']:.2f}", f"{r['mb_s']:.0f}",
             "-" if r["median_transfer_s"] is None else f"{r['median_transfer_s']:.2f}",
             "-" if not r["median_transfer_s"] else f"{size / 1e6 / r['median_transfer_s']:.0f}",
             mib(r["median_peak_anon"]), f"{r['median_cpu_s']:.1f}",
             f"{r['max_background_load']:.0%}"]
            for r in rows
        ],
    )  # fmt: skip
    common.write_json(
        "webseed",
        {
            **common.environment(), "size_bytes": size, "piece_length": piece, "jobs": args.jobs,
            "runs": args.runs, "elapsed_s": time.monotonic() - started, "results": rows,
            "table": table,
        },
        args.out,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
