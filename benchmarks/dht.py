"""A bare magnet through a loopback DHT: mptorrent against a libtorrent client (issue 15).

    python3 benchmarks/dht.py                          # 32 MiB, 256 KiB pieces, -j 2, 5 runs
    python3 benchmarks/dht.py --size 64M --nodes 12 --runs 5

The DHT is libtorrent's, all on 127.0.10.0/24 (tests/swarm.py's ``LtDhtNode``,
``dht_settings``): ``--nodes`` sessions that are only DHT nodes and two libtorrent seeders of
one random file with no tracker, every session introduced to every other one
(``add_dht_node``), the seeders' announces forced once the tables are full and checked with
a ``get_peers``.  No public router can be reached: ``MPTORRENT_DHT_ROUTERS`` points at a
dead loopback address and ``MPTORRENT_LOOPBACK_ONLY=1`` makes any other destination an
error.

Each run gives each client (the order alternating from run to run) the magnet with nothing
but ``xt`` and one bootstrap node (the first DHT node), nothing else:

- ``mptorrent fetch MAGNET -o OUT -j N --bind 127.0.10.20 --port 0 --dht-bootstrap NODE``
  (the real CLI, a fresh ``XDG_CACHE_HOME`` each run: no saved routing table);
- a libtorrent session in a process of its own on 127.0.10.21 with the same DHT settings
  as the seeders, ``add_dht_node(NODE)`` and the magnet (``dht.py lt-dht URI DIR NODE``).

Measured from the client's process start (medians): **first peer**, the first contact
from the client's address at either seeder (their peer log; the DHT is the only way the
client can learn a seeder's address, so this is the first peer found through the DHT
plus one loopback connect); **metadata**, the verified info dictionary; **done**; **exit**.
Prints a Markdown table and writes JSON to benchmarks/results/dht.json.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import common
from common import parse_size
from magnet import LT, MP, NAME, RequestWatch, Timing, fmt, lt_fetch_magnet, med, run_client

from mptorrent.messages import PeerAddr
from mptorrent.proto.magnet import Magnet
from tests.swarm import (
    LtDhtNode,
    LtPeer,
    dht_mesh,
    dht_settings,
    dht_table_size,
    make_single_file,
    make_torrent,
    session_settings,
)

NET = "127.0.10"
MPTORRENT_IP = f"{NET}.20"
LT_IP = f"{NET}.21"


def build_dht(n_nodes: int, torrent: bytes, save_dir: Path) -> tuple[list[LtDhtNode], list[LtPeer]]:
    """``n_nodes`` DHT-only sessions and two seeders, meshed, the seeders announced."""
    import libtorrent as lt

    nodes = [LtDhtNode(f"{NET}.{i}") for i in range(1, n_nodes + 1)]
    seeders = [
        LtPeer(torrent, save_dir, ip=f"{NET}.{n_nodes + i}", use_trackers=False,
               settings=dht_settings())
        for i in (1, 2)
    ]  # fmt: skip
    for s in seeders:
        s.start()
    sessions = [n.session for n in nodes] + [s.session for s in seeders]
    addrs = [n.addr for n in nodes] + [(s.ip, s.port) for s in seeders]
    deadline = time.monotonic() + 60
    while not all(dht_table_size(s) >= len(addrs) // 2 for s in sessions):
        if time.monotonic() > deadline:
            raise SystemExit("the loopback DHT's routing tables did not fill")
        dht_mesh(sessions, addrs)
        time.sleep(0.5)
    want = {s.addr for s in seeders}
    from mptorrent.proto import metainfo

    ih = lt.sha1_hash(metainfo.parse(torrent).info_hash)
    found: set[PeerAddr] = set()
    deadline = time.monotonic() + 60
    asked = 0.0
    while not want <= found:
        if time.monotonic() > deadline:
            raise SystemExit(f"the seeders' announces were lost (found {found})")
        if time.monotonic() - asked > 3:
            for s in seeders:
                s.handle.force_dht_announce()
            nodes[-1].session.dht_get_peers(ih)
            asked = time.monotonic()
        for a in nodes[-1].session.pop_alerts():
            if isinstance(a, lt.dht_get_peers_reply_alert):
                found.update(PeerAddr(str(h), int(p)) for h, p in a.peers())
        time.sleep(0.2)
    return nodes, seeders


def lt_dht_main(argv: list[str]) -> int:
    """The libtorrent client: the magnet and one DHT node; prints ``metadata T`` and
    ``done T`` (``time.monotonic()``) as they happen."""
    ap = argparse.ArgumentParser(prog="dht.py lt-dht")
    ap.add_argument("uri")
    ap.add_argument("save_dir", type=Path)
    ap.add_argument("node")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args(argv)
    import libtorrent as lt

    settings: Any = session_settings(LT_IP, 0, seed=False)
    settings.update(dht_settings())
    settings["alert_mask"] = lt.alert_category.error | lt.alert_category.status
    ses = lt.session(lt.session_params(settings))
    try:
        host, _, port = args.node.rpartition(":")
        ses.add_dht_node((host, int(port)))
        return lt_fetch_magnet(ses, args.uri, args.save_dir, args.timeout)
    finally:
        ses.pause()
        del ses


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("32M"))
    ap.add_argument("--piece-length", type=parse_size, default=parse_size("256KiB"))
    ap.add_argument("--nodes", type=int, default=8, help="DHT-only libtorrent sessions")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path)
    common.add_run_options(ap, settle=20.0)
    args = ap.parse_args(argv)
    if not 8 <= args.nodes <= 200:
        ap.error("--nodes: 8 to 200")
    # Never the public DHT (inherited by the mptorrent processes).
    os.environ["MPTORRENT_DHT_ROUTERS"] = "127.0.0.1:1"
    os.environ["MPTORRENT_LOOPBACK_ONLY"] = "1"
    common.check_space(args.dir, 3 * args.size)
    work = Path(tempfile.mkdtemp(prefix="mptorrent-dht-", dir=args.dir))
    timings: list[Timing] = []
    nodes: list[LtDhtNode] = []
    seeders: list[LtPeer] = []
    try:
        payload = make_single_file(work / "data", args.size, name=NAME)
        torrent = make_torrent(payload.root, args.piece_length)
        t0 = time.monotonic()
        nodes, seeders = build_dht(args.nodes, torrent, payload.save_dir)
        print(f"loopback DHT ready in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        from mptorrent.proto import metainfo

        uri = Magnet(metainfo.parse(torrent).info_hash).to_uri()  # nothing but xt
        node = f"{nodes[0].addr[0]}:{nodes[0].addr[1]}"
        watch = RequestWatch(seeders, needle=None)  # first contact
        for run in range(args.runs):
            order = [MP, LT] if run % 2 == 0 else [LT, MP]
            for client in order:
                load = common.wait_for_quiet(args.settle)
                out_dir = work / f"out-{client}-{run}"
                out_dir.mkdir()
                if client == MP:
                    os.environ["XDG_CACHE_HOME"] = str(work / f"cache-{run}")  # no saved table
                    cmd = [sys.executable, "-m", "mptorrent", "fetch", uri,
                           "-o", str(out_dir / NAME), "-j", str(args.jobs), "--bind",
                           MPTORRENT_IP, "--port", "0", "--dht-bootstrap", node]  # fmt: skip
                    ip = MPTORRENT_IP
                else:
                    cmd = [sys.executable, str(Path(__file__).resolve()), "lt-dht", uri,
                           str(out_dir), node, "--timeout", str(args.timeout)]  # fmt: skip
                    ip = LT_IP
                t, _ = run_client(client, cmd, watch, ip, args.timeout)
                if not filecmp.cmp(out_dir / NAME, payload.root, shallow=False):
                    raise SystemExit(f"{client}: the download differs from the original")
                shutil.rmtree(out_dir)
                timings.append(t)
                print(
                    f"run {run + 1} {client}: first peer {fmt(t.first_request)} s, "
                    f"metadata {fmt(t.metadata)} s, done {fmt(t.done)} s, "
                    f"exit {fmt(t.exit)} s (others' load {load:.0%})",
                    file=sys.stderr,
                )
    finally:
        for s in seeders:
            s.close()
        for n in nodes:
            n.close()
        shutil.rmtree(work, ignore_errors=True)
    label = {MP: f"mptorrent -j {args.jobs}", LT: "libtorrent"}
    rows = []
    for client in (MP, LT):
        mine = [t for t in timings if t.client == client]
        rows.append([
            label[client], fmt(med([t.first_request for t in mine])),
            fmt(med([t.metadata for t in mine])), fmt(med([t.done for t in mine])),
            fmt(med([t.exit for t in mine])),
        ])  # fmt: skip
    print(
        f"\nfetch of a bare magnet through a loopback DHT ({args.nodes} libtorrent nodes, 2 "
        f"seeders), {args.size / 1e6:.0f} MB, {args.piece_length // 1024} KiB pieces, "
        f"median of {args.runs} runs (s from process start):\n"
    )
    common.print_table(["client", "first peer", "metadata", "done", "exit"], rows)
    common.write_json(
        "dht",
        {
            "environment": common.environment(),
            "size": args.size,
            "piece_length": args.piece_length,
            "nodes": args.nodes,
            "jobs": args.jobs,
            "runs": [asdict(t) for t in timings],
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["lt-dht"]:
        sys.exit(lt_dht_main(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
