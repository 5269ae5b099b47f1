"""Does ``--max-download-rate`` hold across worker processes?  A 20 MiB/s cap over 256 MiB.

    python3 benchmarks/ratelimit.py                        # -j 1, 2, 8; 2 runs each
    python3 benchmarks/ratelimit.py --jobs 2 --rate 8M --size 64MiB --runs 1

The swarm is vs_anchors.py's: four libtorrent seeders (checked, in the page cache) behind
Debian's opentracker, on 127.0.0.11-14; mptorrent runs as the real CLI
(``fetch T -j N --max-download-rate 20M --json``) and finds them through the tracker.  A
libtorrent leecher with ``download_rate_limit`` set to the same cap runs in the same swarm
(in this process: only its rate is compared).

Reported per client (medians): the average rate over the fetch (bytes / the time from the
``started`` event, storage ready and workers about to start, to the last verified piece:
worker start-up and the tracker's reply included), the steady rate (bytes after the first
verified piece / the time from it to the last), their error against the cap, and the wall
time of the whole process (start-up and shutdown included).  libtorrent's figures are its
bytes over its time from adding the torrent to ``torrent_finished`` (its local peer class
limited too: libtorrent exempts loopback peers otherwise).  ``--upload`` adds ``mptorrent seed
-j N --max-upload-rate RATE`` on 127.0.0.23 serving a libtorrent leecher alone (its rate is
the payload over the leecher's time).  The cap holds when the average is
within 5% of it.
JSON goes to benchmarks/results/ratelimit.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import vs_anchors
from common import MiB
from vs_anchors import Client, Workload

UPLOAD_SEED_IP = "127.0.0.23"
HEADERS = ["client", "cap MiB/s", "runs", "average MiB/s", "error", "steady MiB/s", "error",
           "wall s", "peak RssAnon MiB"]  # fmt: skip


def parse_rate(text: str) -> int:
    sys.path.insert(0, str(common.REPO))
    from mptorrent.policy.ratelimit import parse_rate as parse

    return parse(text)


def mptorrent_run(
    setup: vs_anchors.SwarmSetup, jobs: int, rate_text: str, out_dir: Path, timeout: float
) -> dict[str, float]:
    out_dir.mkdir(parents=True)
    try:
        cmd = vs_anchors.client_cmd(Client("mptorrent", jobs), setup, out_dir)
        cmd = [c for c in cmd if c != "-q"] + ["--max-download-rate", rate_text, "--json"]
        m = common.run_measured(cmd, timeout=timeout, env=vs_anchors.client_env())
        events = [json.loads(line) for line in m.stdout.splitlines() if line.startswith("{")]
        started = next(e for e in events if e["event"] == "started")
        pieces = [e for e in events if e["event"] == "piece"]
        total = sum(e["size"] for e in pieces)
        if not vs_anchors.same_output(out_dir / setup.workload.name, setup.payload_root):
            raise RuntimeError("the download differs from the original")
        return {
            # from "started" (storage ready, workers about to start) to the last piece
            "average": total / (pieces[-1]["t"] - started["t"]),
            # from the first verified piece to the last
            "steady": (total - pieces[0]["size"]) / (pieces[-1]["t"] - pieces[0]["t"]),
            "wall": m.wall_s,
            "anon": m.mem.anon,
        }
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def libtorrent_run(
    setup: vs_anchors.SwarmSetup, rate: int, out_dir: Path, timeout: float
) -> dict[str, float]:
    from tests.swarm import LtPeer

    out_dir.mkdir(parents=True)
    try:
        t0 = time.monotonic()
        leecher = LtPeer(
            setup.torrent.read_bytes(), out_dir, ip=vs_anchors.LT_IP, role="leech",
            tracker_url=setup.tracker_url, settings={"download_rate_limit": rate},
        )  # fmt: skip
        with leecher:
            leecher.wait_ready(timeout)
            # loopback peers are in libtorrent's local peer class, which the session's
            # limit skips: limit that class too
            ses = leecher._ses
            cls = ses.get_peer_class(ses.local_peer_class_id)
            cls["download_limit"] = rate
            ses.set_peer_class(ses.local_peer_class_id, cls)
            leecher.connect([])
            secs = leecher.wait_finished(timeout)
        wall = time.monotonic() - t0
        total = setup.workload.total
        return {"average": total / secs, "steady": total / secs, "wall": wall, "anon": 0}
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def upload_run(
    setup: vs_anchors.SwarmSetup, jobs: int, rate_text: str, out_dir: Path, timeout: float
) -> dict[str, float]:
    """``mptorrent seed -j N --max-upload-rate RATE`` alone serves a libtorrent leecher."""
    from tests.interop.test_seed import mptorrent_seed
    from tests.swarm import LtPeer

    out_dir.mkdir(parents=True)
    try:
        with mptorrent_seed(
            setup.torrent, setup.payload_root, UPLOAD_SEED_IP, "--no-trackers",
            "--max-upload-rate", rate_text, jobs=jobs,
        ) as seed:  # fmt: skip
            leecher = LtPeer(setup.torrent.read_bytes(), out_dir, ip=vs_anchors.LT_IP,
                             role="leech", use_trackers=False)  # fmt: skip
            with leecher:
                leecher.wait_ready(timeout)
                leecher.connect([seed.addr])
                secs = leecher.wait_finished(timeout)
            seed.interrupt()
        total = setup.workload.total
        return {"average": total / secs, "steady": total / secs, "wall": secs, "anon": 0}
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rate", default="20M", help="the cap (default 20M: 20 MiB/s)")
    ap.add_argument("--size", default="256MiB", help="single file, 1 MiB pieces (default 256MiB)")
    ap.add_argument("--jobs", default="1,2,8", help="mptorrent worker counts (default 1,2,8)")
    ap.add_argument("--runs", type=int, default=2, help="runs per client (default 2)")
    ap.add_argument("--no-libtorrent", action="store_true", help="leave the libtorrent leecher out")
    ap.add_argument("--upload", action="store_true",
                    help="also: seed -j N --max-upload-rate to a libtorrent leecher")  # fmt: skip
    common.add_run_options(ap, settle=10.0)
    ap.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/...)")
    args = ap.parse_args(argv)
    vs_anchors.on_sigterm()
    rate = parse_rate(args.rate)
    size = common.parse_size(args.size)
    jobs = [int(j) for j in args.jobs.split(",")]
    wl = Workload("rate", f"{common.human(size)} file, 1 MiB pieces", MiB, size=size)
    labels = [f"mptorrent -j {j}" for j in jobs] + ([] if args.no_libtorrent else ["libtorrent"])
    if args.upload:
        labels += [f"mptorrent seed -j {j}" for j in jobs]
    samples: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    args.dir.mkdir(parents=True, exist_ok=True)
    common.check_space(args.dir, 2 * size + 64 * MiB)
    workdir = Path(tempfile.mkdtemp(prefix="mptorrent-ratelimit-", dir=args.dir))
    n = 0
    try:
        with vs_anchors.swarm(workdir, wl) as setup:
            vs_anchors.ensure_cached(setup.files)
            for r in range(args.runs):
                shift = r % len(labels)
                for label in labels[shift:] + labels[:shift]:
                    common.wait_for_quiet(args.settle)
                    out = workdir / f"dl-{n}"
                    n += 1
                    if label == "libtorrent":
                        got = libtorrent_run(setup, rate, out, args.timeout)
                    elif label.startswith("mptorrent seed"):
                        got = upload_run(setup, int(label.split()[-1]), args.rate, out,
                                         args.timeout)  # fmt: skip
                    else:
                        got = mptorrent_run(setup, int(label.split()[-1]), args.rate, out,
                                            args.timeout)  # fmt: skip
                    samples[label].append(got)
                    print(f"run {r + 1}/{args.runs} {label}: average {got['average'] / MiB:.2f} "
                          f"MiB/s, steady {got['steady'] / MiB:.2f} MiB/s, wall "
                          f"{got['wall']:.2f} s", file=sys.stderr)  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rows: list[dict[str, Any]] = []
    for label, ms in samples.items():
        avg = common.median(m["average"] for m in ms)
        steady = common.median(m["steady"] for m in ms)
        rows.append({
            "client": label, "cap": rate, "runs": len(ms), "average": avg, "steady": steady,
            "wall": common.median(m["wall"] for m in ms),
            "anon": common.median(m["anon"] for m in ms), "samples": ms,
        })  # fmt: skip
    print(f"\n{common.human(size)} from 4 libtorrent seeders, cap {args.rate}B/s\n")
    text = common.print_table(HEADERS, [
        [r["client"], f"{rate / MiB:.1f}", r["runs"], f"{r['average'] / MiB:.2f}",
         f"{r['average'] / rate - 1:+.1%}", f"{r['steady'] / MiB:.2f}",
         f"{r['steady'] / rate - 1:+.1%}", f"{r['wall']:.2f}",
         common.mib(r["anon"]) if r["anon"] else "-"]
        for r in rows
    ])  # fmt: skip
    common.write_json(
        "ratelimit",
        {**common.environment(), "rate": rate, "size": size, "results": rows, "table": text},
        args.out or common.RESULTS_DIR / "ratelimit.json",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
