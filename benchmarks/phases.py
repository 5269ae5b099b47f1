"""Where a fetch's wall time goes: start-up, the transfer, its tail, and the exit.

    python3 benchmarks/phases.py --workload multi --jobs 1,2 --runs 3
    python3 benchmarks/phases.py --workload uneven,1g-256k --jobs 2,8

vs_anchors.py's swarm for each workload (the same seeders, tracker and data); mptorrent runs
as there plus ``--json``, and this process stamps each event line as it arrives on the pipe
(the stream flushes every line), counting from the moment it started the process, so
interpreter start-up and imports are in the first figure.  Reported per ``-j`` (medians, ms):
the first ``peer`` connected, the first ``piece`` verified, half and nine tenths of the bytes
verified, the last piece, ``done`` and the exit; then start-up (to the first piece), the
middle (first piece to 90%), the tail (90% to the last piece) and the exit (last piece to
exit), and which peers sent how many pieces.  The libtorrent leecher of vs_anchors.py runs
beside it: its wall time and its own transfer time (torrent added to finished).
JSON goes to benchmarks/results/phases.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import common
import vs_anchors
from common import MiB
from vs_anchors import Client

MILESTONES = ["peer", "piece", "50%", "90%", "last", "done", "exit"]


def run_json(client: Client, setup: vs_anchors.SwarmSetup, out_dir: Path, timeout: float
             ) -> dict[str, Any]:  # fmt: skip
    """One mptorrent fetch with --json; milestones in s from the process's start."""
    out_dir.mkdir(parents=True)
    try:
        cmd = [*vs_anchors.client_cmd(client, setup, out_dir), "--json"]
        stamped: list[tuple[float, dict[str, Any]]] = []
        before = os.times()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env=vs_anchors.client_env(client.src), cwd=common.REPO)  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        err: list[str] = []
        reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
        reader.start()
        for line in proc.stdout:
            stamped.append((time.perf_counter() - t0, json.loads(line)))
        proc.wait(timeout)
        wall = time.perf_counter() - t0
        reader.join(5)
        after = os.times()
        if proc.returncode != 0:
            raise RuntimeError(f"{client.label}: exit {proc.returncode}\n{''.join(err)[-2000:]}")
        if not vs_anchors.same_output(out_dir / setup.workload.name, setup.payload_root):
            raise RuntimeError(f"{client.label}: the download differs from the original")
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    total = setup.workload.total
    got: dict[str, float] = {"exit": wall}
    done_bytes = 0
    senders: Counter[str] = Counter()
    tail: list[tuple[float, int | None, str | None]] = []  # pieces after 90%: t, worker, peer
    for at, rec in stamped:
        kind = rec["event"]
        if kind == "peer" and rec["state"] == "connected":
            got.setdefault("peer", at)
        elif kind == "piece":
            got.setdefault("piece", at)
            done_bytes += rec["size"]
            senders[rec["peer"] or "?"] += 1
            if done_bytes >= total / 2:
                got.setdefault("50%", at)
            if "90%" in got:
                tail.append((at, rec["worker"], rec["peer"]))
            if done_bytes >= 0.9 * total:
                got.setdefault("90%", at)
            got["last"] = at
        elif kind == "done":
            got["done"] = at
            got["stream_offset"] = at - rec["t"]  # start-up before the stream's clock began
    got["cpu_s"] = (after.children_user + after.children_system) - (
        before.children_user + before.children_system
    )
    return {"at": got, "senders": dict(senders), "tail": tail}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workload", default="multi", help="vs_anchors.py's workloads (default multi)")
    ap.add_argument("--jobs", default="1,2", help="mptorrent worker counts (default 1,2)")
    ap.add_argument("--runs", type=int, default=3, help="runs per client (default 3)")
    ap.add_argument("--size", default="1GiB", help="single-file size (default 1GiB)")
    ap.add_argument("--multi-size", default="256MiB", help="multi-file total (default 256MiB)")
    common.add_run_options(ap, settle=10.0)
    ap.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/phases.json)")
    args = ap.parse_args(argv)
    vs_anchors.on_sigterm()
    table = vs_anchors.workloads(common.parse_size(args.size), common.parse_size(args.multi_size))
    wls = [table[k.strip()] for k in args.workload.split(",") if k.strip()]
    clients = [Client("mptorrent", int(j)) for j in args.jobs.split(",")]
    lt = Client(vs_anchors.LT)
    args.dir.mkdir(parents=True, exist_ok=True)
    common.check_space(args.dir, 2 * max(w.total for w in wls) + 64 * MiB)
    workdir = Path(tempfile.mkdtemp(prefix="mptorrent-phases-", dir=args.dir))
    rows: list[dict[str, Any]] = []
    n = 0
    try:
        for wl in wls:
            with vs_anchors.swarm(workdir, wl) as setup:
                vs_anchors.ensure_cached(setup.files)
                run_json(clients[0], setup, workdir / "warm-up", args.timeout)
                runs: dict[Client, list[dict[str, Any]]] = {c: [] for c in [*clients, lt]}
                for r in range(args.runs):
                    for c in [*clients, lt] if r % 2 == 0 else [lt, *clients][::-1]:
                        vs_anchors.ensure_cached(setup.files)
                        load = common.wait_for_quiet(args.settle)
                        if c.kind == vs_anchors.LT:
                            m = vs_anchors.download(c, setup, workdir / f"dl-{n}",
                                                    timeout=args.timeout)  # fmt: skip
                            got = {"at": {"exit": m.wall_s, "transfer": m.extra["seconds"],
                                          "cpu_s": m.cpu_s}, "senders": {}}  # fmt: skip
                        else:
                            got = run_json(c, setup, workdir / f"dl-{n}", args.timeout)
                        n += 1
                        got["load_before"] = load
                        runs[c].append(got)
                        print(f"[{wl.key}] {c.label}: " + ", ".join(
                            f"{k} {v * 1000:.0f}" for k, v in got["at"].items()
                        ) + f" (ms; background before {load:.0%})", file=sys.stderr)  # fmt: skip
                        if got.get("tail"):  # the last tenth: when, which worker, which peer
                            print("    after 90%: " + ", ".join(
                                f"{t * 1000:.0f} w{w} {peer}" for t, w, peer in got["tail"][-12:]
                            ), file=sys.stderr)  # fmt: skip
                for c, got_runs in runs.items():
                    keys = sorted({k for g in got_runs for k in g["at"]})
                    med = {k: common.median(g["at"][k] for g in got_runs if k in g["at"])
                           for k in keys}  # fmt: skip
                    senders: Counter[str] = Counter()
                    for g in got_runs:
                        senders.update(g["senders"])
                    rows.append({"workload": wl.key, "client": c.label, "median": med,
                                 "senders": dict(senders), "seeders": setup.seeders,
                                 "runs": got_runs})  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.0f}"

    print(f"\nmilestones, ms from starting the client (median of {args.runs})\n")
    text = common.print_table(
        ["workload", "client", *MILESTONES, "start-up", "middle", "tail", "exit after last",
         "CPU s"],
        [[r["workload"], r["client"], *(ms(r["median"].get(k)) for k in MILESTONES),
          ms(r["median"].get("piece")),
          ms(r["median"]["90%"] - r["median"]["piece"]) if "90%" in r["median"] else "-",
          ms(r["median"]["last"] - r["median"]["90%"]) if "90%" in r["median"] else "-",
          ms(r["median"]["exit"] - r["median"]["last"]) if "last" in r["median"] else "-",
          f"{r['median']['cpu_s']:.2f}"]
         for r in rows],
    )  # fmt: skip
    lts = [r for r in rows if r["client"] == vs_anchors.LT]
    for r in lts:
        print(f"{r['workload']}: libtorrent's own transfer time (added to finished) "
              f"{ms(r['median'].get('transfer'))} ms")  # fmt: skip
    print("\npieces by the peer that sent most of each (all runs)\n")
    text += "\n\n" + common.print_table(
        ["workload", "client", "pieces by sender"],
        [[r["workload"], r["client"], ", ".join(f"{k} {v}" for k, v in
                                                sorted(r["senders"].items()))]
         for r in rows if r["senders"]],
    )  # fmt: skip
    common.write_json("phases", {**common.environment(), "results": rows, "table": text},
                      args.out)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
