"""The CPU cost of BitTorrent v2 verification (BEP 52) against v1, two ways.

    python3 benchmarks/v2.py                          # 256 MiB, 256 KiB pieces, 3 runs
    python3 benchmarks/v2.py --size 1GiB --runs 5 --jobs 2
    python3 benchmarks/v2.py --verifier-only          # parts 1 and 2 alone

1. **The verifiers over the same bytes**, in this process: one random file made into a
   hybrid torrent by ``mptorrent create --hybrid``; each piece is checked, from memory, by
   ``Sha1Pieces`` (v1), ``MerklePieces`` (v2: SHA-256 of each 16 KiB leaf, then the
   piece's subtree), and ``BothPieces`` (what a hybrid fetch does: both).  CPU seconds per
   GiB (``time.process_time``), the best of ``--runs``.
2. **create and verify** (``mptorrent.disk``, ``-j 1`` and ``-j N``) of the same file as a
   v1, v2 and hybrid torrent: seconds, the data in the page cache, best of ``--runs``.
3. **The same fetch benchmark three times**: libtorrent makes a v1-only, a v2-only and a
   hybrid torrent of one random file; a libtorrent seeder (tests/swarm.py, 127.0.0.11)
   serves each, and the real ``mptorrent fetch -j N`` fetches it (v1: SHA-1; v2: merkle;
   hybrid: both), beside a libtorrent leecher of the same torrent from the same seeder.
   CPU seconds of the whole fetching process tree (``wait4`` of the reaped children, as
   ``common.run_measured``), per GiB, median of ``--runs``; runs interleaved.

Prints Markdown tables and writes JSON to benchmarks/results/v2.json.
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
from common import median, parse_size

from mptorrent.disk import checker
from mptorrent.disk.create import create
from mptorrent.disk.storage import Layout
from mptorrent.proto import merkle, metainfo
from mptorrent.proto.hashing import PieceVerifier, Sha1Pieces
from tests.swarm import LtPeer, make_single_file

GiB = 1024**3
NAME = "payload.bin"


def verifier_cpu(meta: metainfo.Metainfo, data: bytes, runs: int) -> dict[str, float]:
    """CPU seconds per GiB of each verifier over every piece of ``data``."""
    v2 = meta.merkle_verifier()
    kinds: dict[str, PieceVerifier] = {
        "v1 (SHA-1)": Sha1Pieces(meta.pieces),
        "v2 (merkle SHA-256)": v2,
        "hybrid (both)": merkle.BothPieces(Sha1Pieces(meta.pieces), v2),
    }
    pl = meta.piece_length
    mv = memoryview(data)
    out: dict[str, float] = {}
    for name, v in kinds.items():
        best = float("inf")
        for _ in range(runs):
            t0 = time.process_time()
            ok = all(v.verify(i, mv[i * pl : (i + 1) * pl]) for i in range(meta.num_pieces))
            best = min(best, time.process_time() - t0)
            assert ok, name
        out[name] = best * GiB / len(data)
    return out


def create_verify(payload: Path, args: argparse.Namespace) -> dict[str, float]:
    """Best wall seconds of ``create`` and of ``checker.verify`` per version and -j."""
    out: dict[str, float] = {}
    rows = []
    for version in ("v1", "v2", "hybrid"):
        for jobs in sorted({1, args.jobs}):
            made = b""
            best_c = best_v = float("inf")
            for _ in range(args.runs):
                t0 = time.perf_counter()
                made = create(payload, piece_length=args.piece_length, jobs=jobs,
                              version=version)  # type: ignore[arg-type]  # fmt: skip
                best_c = min(best_c, time.perf_counter() - t0)
                meta = metainfo.parse(made)
                layout = Layout.for_torrent(meta, payload)
                t0 = time.perf_counter()
                assert checker.verify(meta, layout, jobs=jobs).complete
                best_v = min(best_v, time.perf_counter() - t0)
            out[f"create {version} -j {jobs}"] = best_c
            out[f"verify {version} -j {jobs}"] = best_v
            gib = args.size / GiB
            rows.append([f"{version} -j {jobs}", f"{best_c:.2f}", f"{gib / best_c * 1024:.0f}",
                         f"{best_v:.2f}", f"{gib / best_v * 1024:.0f}"])  # fmt: skip
    common.print_table(["version", "create s", "MiB/s", "verify s", "MiB/s"], rows)
    return out


def lt_torrent(payload: Path, piece_length: int, kind: str) -> bytes:
    import libtorrent as lt

    flags = {"v1": lt.create_torrent.v1_only, "v2": lt.create_torrent.v2_only, "hybrid": 0}[kind]
    ct = lt.create_torrent(lt.list_files(str(payload)), piece_length, flags)
    lt.set_piece_hashes(ct, str(payload.parent))
    return bytes(lt.bencode(ct.generate()))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("256MiB"))
    ap.add_argument("--piece-length", type=parse_size, default=parse_size("256KiB"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--verifier-only", action="store_true", help="parts 1 and 2 alone")
    ap.add_argument("--out", type=Path)
    common.add_run_options(ap, settle=20.0)
    args = ap.parse_args(argv)
    common.check_space(args.dir, 3 * args.size)
    work = Path(tempfile.mkdtemp(prefix="mptorrent-v2-", dir=args.dir))
    result: dict[str, Any] = {"env": common.environment(), "size": args.size,
                              "piece_length": args.piece_length, "jobs": args.jobs}  # fmt: skip
    try:
        payload = make_single_file(work / "data", args.size, name=NAME)
        meta = metainfo.parse(
            create(payload.root, piece_length=args.piece_length, jobs=args.jobs, version="hybrid")
        )
        cpu = verifier_cpu(meta, payload.root.read_bytes(), args.runs)
        result["verifier_cpu_s_per_gib"] = cpu
        base = cpu["v1 (SHA-1)"]
        common.print_table(
            ["verifier (one process, from memory)", "CPU s / GiB", "vs v1"],
            [[k, f"{s:.2f}", f"{s / base:.2f}x"] for k, s in cpu.items()],
        )
        result["create_verify_s"] = create_verify(payload.root, args)
        if not args.verifier_only:
            result["fetch"] = fetch_part(work, payload.root, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    common.write_json("v2", result, args.out)
    return 0


def fetch_part(work: Path, payload: Path, args: argparse.Namespace) -> dict[str, Any]:
    kinds = ("v1", "v2", "hybrid")
    torrents = {}
    for kind in kinds:
        torrents[kind] = work / f"{kind}.torrent"
        torrents[kind].write_bytes(lt_torrent(payload, args.piece_length, kind))
    runs: dict[str, list[common.Measurement]] = {}
    for run in range(args.runs):
        order = kinds if run % 2 == 0 else kinds[::-1]
        for kind in order:
            data = torrents[kind].read_bytes()
            with LtPeer(data, payload.parent, ip="127.0.0.11", use_trackers=False) as seeder:
                peers = [(seeder.addr.host, seeder.addr.port)]
                for client in (
                    ("mptorrent", "libtorrent") if run % 2 == 0 else ("libtorrent", "mptorrent")
                ):
                    common.wait_for_quiet(args.settle)
                    out = work / f"out-{kind}-{client}"
                    if client == "mptorrent":
                        cmd = common.mptorrent_fetch_cmd(torrents[kind], out / NAME, peers,
                                                         args.jobs)  # fmt: skip
                        m = common.run_measured([*cmd, "--bind", "127.0.0.20", "--port", "0"],
                                                timeout=args.timeout)  # fmt: skip
                    else:
                        m = common.run_lt_leecher_measured(
                            torrents[kind], out, peers, timeout=args.timeout
                        )
                    if not filecmp.cmp(out / NAME, payload, shallow=False):
                        raise SystemExit(f"{kind} {client}: the download differs")
                    shutil.rmtree(out, ignore_errors=True)
                    runs.setdefault(f"{kind} {client}", []).append(m)
                    print(f"run {run + 1} {kind} {client}: {m.wall_s:.2f} s wall, "
                          f"{m.cpu_s:.2f} s CPU (others' load {m.background_load:.0%})",
                          file=sys.stderr)  # fmt: skip
    gib = args.size / GiB
    rows = []
    for key, ms in runs.items():
        rows.append([key, f"{median(m.wall_s for m in ms):.2f}",
                     f"{median(m.cpu_s for m in ms):.2f}",
                     f"{median(m.cpu_s for m in ms) / gib:.2f}"])  # fmt: skip
    common.print_table(["torrent, client", "wall s", "CPU s", "CPU s / GiB"], sorted(rows))
    return {k: [common.measurement_dict(m) for m in ms] for k, ms in runs.items()}


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
