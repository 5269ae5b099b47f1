"""What a torrent of 500,000 pieces costs the coordinator's picker and the bitfield path,
without downloading 32 GiB.

    python3 benchmarks/picker.py                              # 500,000 and 2,000 pieces
    python3 benchmarks/picker.py --baseline /tmp/base         # beside an older checkout
    python3 benchmarks/picker.py --pieces 500000 --seconds 4 --have-rate 16000

The torrent is made up: 64 KiB pieces (500,000 of them is 32 GiB) with random piece hashes,
so its metadata is as large as a real one's (about 10 MB) and nothing is ever hashed.  Each
checkout runs in a fresh interpreter (``PYTHONPATH``) and does what the coordinator does with
the real classes: ``metainfo.parse``, a ``Picker`` resumed at 30 %, then per peer the
worker's ``PeerBitfield`` record pickled and unpickled (one byte per piece before, packed
after) and added to the picker; ``--peers`` peers of which ``--seeds`` have every piece, the
others a random share (5 to 95 %) of the pieces, spread over ``--workers`` workers.

Per-operation rows time each call the coordinator makes (median of several, in ms):
``pick_for`` as a worker's queue is topped up, a forced rebuild of the rarest-first order
(and each worker's next pick after it), HAVEs, completions, ``endgame_for`` and
``needed_for`` (endgame), a peer leaving; and the wire side: a BITFIELD message decoded by
``wire.Connection``, our own bitfield packed for a new connection, and a worker's look for
pieces to announce (``_tell_new_pieces``, modelled on the code of each checkout).

The figure that matters is **coordinator CPU per second of download**: ``--seconds`` of a
steady download simulated on a simulated clock (so the picker's twice-a-second rebuild
happens as often as it would for real): ``--rate`` pieces a second verified and re-picked
(100 MiB/s of 64 KiB pieces is 1,600), ``--have-rate`` HAVEs a second from the partial peers,
and one partial peer leaving and another arriving every second.  Its CPU time over the
simulated seconds is the share of one core the picker takes.

``--libtorrent`` (on when it is installed) adds libtorrent's time to parse the same torrent
and to add it to a session (no files on disk: its check finds nothing), for scale.
JSON goes to benchmarks/results/picker.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import types
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PIECE = 64 * 1024


# -- the probe: runs in a fresh interpreter against one checkout --------------------------------


def _ms(fn: Callable[[], object], repeat: int = 5) -> float:
    """Median wall time of ``fn`` in ms."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _flags(rng: random.Random, n: int, share: float) -> bytes:
    """One byte per piece, about ``share`` of them 1 (in C: random bytes under a threshold)."""
    cut = max(1, min(255, round(share * 256)))
    return rng.randbytes(n).translate(bytes(1 if b < cut else 0 for b in range(256)))


def probe(args: argparse.Namespace) -> dict[str, Any]:
    import mptorrent.policy.picker as pk
    from mptorrent.messages import PeerAddr, PeerBitfield
    from mptorrent.policy.picker import Picker
    from mptorrent.proto import bencode, metainfo, wire

    try:
        from mptorrent.proto import bitfield as bf  # this change's helpers
    except ImportError:
        bf = None
    packed_ipc = hasattr(Picker, "peer_packed")
    n, rng = args.pieces, random.Random(args.seed)
    r: dict[str, Any] = {"pieces": n, "packed_ipc": packed_ipc}
    clock = [1000.0]  # the picker's clock, simulated: rebuilds happen as often as for real
    pk.time = types.SimpleNamespace(monotonic=lambda: clock[0])  # type: ignore[attr-defined]

    # -- metadata and the picker, as the coordinator builds them
    info = {b"name": b"huge.bin", b"piece length": PIECE, b"length": n * PIECE,
            b"pieces": rng.randbytes(20 * n)}  # fmt: skip
    data = bencode.encode({b"announce": b"http://127.0.0.1:9/announce", b"info": info})
    r["metadata_bytes"] = len(data)
    r["metainfo_parse"] = _ms(lambda: metainfo.parse(data), 3)
    have = bytearray(_flags(rng, n, 0.3))  # resumed at 30 %
    prio = bytearray([1]) * n
    r["picker_new"] = _ms(lambda: Picker(n, have, priority=prio), 3)
    p = Picker(n, have, priority=prio, seed=args.seed)

    # -- peers' bitfields: the worker's record, pickled and unpickled, then the picker
    workers = args.workers
    peers: list[tuple[int, PeerAddr, bytes, bool]] = []  # worker, addr, flags, seed
    for k in range(args.peers):
        seed = k < args.seeds
        flags = b"\x01" * n if seed else _flags(rng, n, rng.uniform(0.05, 0.95))
        peers.append((k % workers, PeerAddr(f"10.0.{k >> 8}.{k & 255}", 6881), flags, seed))

    def record(w: int, addr: PeerAddr, flags: bytes) -> PeerBitfield:
        if packed_ipc:  # the wire's Bitfield event already holds the packed form
            return PeerBitfield(w, addr, wire.pack_bitfield(flags))
        return PeerBitfield(w, addr, bytes(flags))  # bytes(conn.peer_has)

    def add(msg: PeerBitfield) -> None:
        key = (msg.worker, 1, msg.peer)
        if packed_ipc:
            p.peer_packed(key, msg.bits, msg.worker)
        else:
            p.peer_bitfield(key, msg.bits, msg.worker)

    ipc = {True: [], False: []}
    add_ms = {True: [], False: []}
    size = {True: 0, False: 0}
    for w, addr, flags, seed in peers:
        msg = record(w, addr, flags)
        t0 = time.perf_counter()
        got = pickle.loads(pickle.dumps([msg], pickle.HIGHEST_PROTOCOL))[0]
        t1 = time.perf_counter()
        add(got)
        t2 = time.perf_counter()
        ipc[seed].append((t1 - t0) * 1e3)
        add_ms[seed].append((t2 - t1) * 1e3)
        size[seed] = len(pickle.dumps([msg], pickle.HIGHEST_PROTOCOL))
    for kind, seed in (("seed", True), ("partial", False)):
        if ipc[seed]:
            r[f"ipc_bytes_{kind}"] = size[seed]
            r[f"ipc_{kind}"] = statistics.median(ipc[seed])
            r[f"add_{kind}"] = statistics.median(add_ms[seed])
    r["bitfields_total"] = sum(add_ms[True]) + sum(add_ms[False])

    # -- the first picks (they build the order), then steady top-ups
    t0 = time.perf_counter()
    queues = {w: deque(p.pick_for(w, args.ahead)) for w in range(workers)}
    r["first_picks"] = (time.perf_counter() - t0) * 1e3
    half = args.ahead // 2

    def top_up() -> None:
        for w, q in queues.items():
            for _ in range(half):
                if q:
                    p.finished(q.popleft())
            q.extend(p.pick_for(w, args.ahead - len(q)))

    r["pick_for"] = _ms(top_up, 9) / workers  # includes `half` finished() per worker
    clock[0] += 1.0

    def rebuild_and_pick() -> None:
        p._rebuild()
        for w, q in queues.items():
            q.extend(p.pick_for(w, 1))

    r["rebuild"] = _ms(rebuild_and_pick, 5)

    partials = [(w, a) for w, a, _, s in peers if not s]
    haves = [(partials[rng.randrange(len(partials))], rng.randrange(n)) for _ in range(20_000)]

    def have_all() -> None:
        for (w, a), i in haves:
            p.peer_have((w, 1, a), i, w)

    r["have"] = _ms(have_all, 1) / len(haves)
    held = [i for q in queues.values() for i in q]

    def finish_all() -> None:
        for i in held:
            p.finished(i)

    r["finished"] = _ms(finish_all, 1) / max(1, len(held))
    for q in queues.values():
        q.clear()
    r["needed_for"] = _ms(lambda: p.needed_for(0), 5)
    for w in range(workers):  # something in flight everywhere, for endgame_for
        queues[w].extend(p.pick_for(w, args.ahead))
    r["endgame_for"] = _ms(lambda: [p.release(i, 1) for i in p.endgame_for(1, 2)], 5)

    # -- a peer leaving (and coming back, untimed)
    def leave(k: int) -> float:
        w, addr, flags, _ = peers[k]
        t0 = time.perf_counter()
        add(PeerBitfield(w, addr, None))
        dt = time.perf_counter() - t0
        add(pickle.loads(pickle.dumps(record(w, addr, flags))))
        return dt * 1e3

    seeds = [k for k, x in enumerate(peers) if x[3]][:3]
    partial_ks = [k for k, x in enumerate(peers) if not x[3]][:3]
    if seeds:
        r["leave_seed"] = statistics.median(leave(k) for k in seeds)
    if partial_ks:
        r["leave_partial"] = statistics.median(leave(k) for k in partial_ks)

    # -- the wire: a BITFIELD decoded by a Connection, our own bitfield packed
    ih = bytes(20)
    field = wire.pack_bitfield(peers[-1][2])
    hs = wire.Connection(ih, n, PIECE, n * PIECE).send(wire.Handshake(ih, bytes(20), bytes(8)))
    msg_bytes = hs + (1 + len(field)).to_bytes(4, "big") + b"\x05" + field

    def decode() -> None:
        c = wire.Connection(ih, n, PIECE, n * PIECE)
        c.receive_data(msg_bytes)
        while not isinstance(c.next_event(), wire.Bitfield):
            pass

    r["wire_decode"] = _ms(decode, 5)
    probe_conn = wire.Connection(ih, n, PIECE, n * PIECE)
    r["wire_peer_has"] = len(probe_conn.peer_has)  # kept per connection in the worker
    done_map = memoryview(bytearray(have))

    def our_bitfield() -> None:  # PeerSession.greet_rest, per new connection
        if not all(done_map) and any(done_map):
            wire.pack_bitfield(done_map)

    r["wire_encode"] = _ms(our_bitfield, 5)
    told = bytearray(have)
    now_have = bytearray(have)
    for i in rng.sample(range(n), args.rate // 5):  # 0.2 s of verified pieces
        now_have[i] = 1

    def tell() -> None:  # the worker's _tell_new_pieces, every 0.2 s
        now = bytes(now_have)
        if now != told:
            if bf is not None:
                bf.newly_set(now, told)
            else:
                [i for i, h in enumerate(now) if h and not told[i]]

    r["worker_tell"] = _ms(tell, 5)

    # -- a steady download on the simulated clock
    tick = 0.01
    ticks = round(args.seconds / tick)
    have_per_tick = args.have_rate * tick
    done_per_tick = args.rate * tick / workers
    events = [(partials[rng.randrange(len(partials))], rng.randrange(n))
              for _ in range(round(args.have_rate * args.seconds) + 1)]  # fmt: skip
    cost = {"have": 0.0, "pick": 0.0, "done": 0.0, "churn": 0.0}
    for q in queues.values():
        q.clear()
    credit = [0.0] * workers
    hv = 0.0
    e = 0
    churn_k = 0
    gc.collect()
    t_start = time.perf_counter()
    for t in range(ticks):
        clock[0] += tick
        hv += have_per_tick
        t0 = time.perf_counter()
        while hv >= 1:
            (w, a), i = events[e]
            e += 1
            hv -= 1
            p.peer_have((w, 1, a), i, w)
        t1 = time.perf_counter()
        for w, q in queues.items():
            credit[w] += done_per_tick
            while credit[w] >= 1 and q:
                credit[w] -= 1
                p.finished(q.popleft())
        t2 = time.perf_counter()
        for w, q in queues.items():
            if len(q) <= half:
                q.extend(p.pick_for(w, args.ahead - len(q)))
        t3 = time.perf_counter()
        if partial_ks and t % round(1 / tick) == round(1 / tick) - 1:  # a peer a second
            k = partial_ks[churn_k % len(partial_ks)]
            churn_k += 1
            w, addr, flags, _ = peers[k]
            add(PeerBitfield(w, addr, None))
            add(pickle.loads(pickle.dumps(record(w, addr, flags))))
        t4 = time.perf_counter()
        cost["have"] += t1 - t0
        cost["done"] += t2 - t1
        cost["pick"] += t3 - t2
        cost["churn"] += t4 - t3
    wall = time.perf_counter() - t_start
    r["sim_seconds"] = args.seconds
    r["sim_cpu_per_s"] = wall / args.seconds * 1e3  # ms of CPU per second of download
    for k, v in cost.items():
        r[f"sim_{k}_per_s"] = v / args.seconds * 1e3

    # -- memory of a fresh picker holding the same peers
    queues.clear()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    p = Picker(n, have, priority=prio, seed=args.seed)
    for w, addr, flags, _ in peers:
        add(record(w, addr, flags))
    for w in range(workers):
        p.pick_for(w, args.ahead)
    now, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    r["memory"] = now - base
    r["memory_peak"] = peak - base
    return r


# -- libtorrent, for scale ---------------------------------------------------------------------


def libtorrent_probe(pieces: int, seed: int) -> dict[str, float]:
    import libtorrent as lt

    rng = random.Random(seed)
    info = {b"name": b"huge.bin", b"piece length": PIECE, b"length": pieces * PIECE,
            b"pieces": rng.randbytes(20 * pieces)}  # fmt: skip
    data = lt.bencode({b"announce": b"http://127.0.0.1:9/announce", b"info": info})
    t0 = time.perf_counter()
    ti = lt.torrent_info(lt.bdecode(data))
    parse = time.perf_counter() - t0
    ses = lt.session({
        "listen_interfaces": "127.0.0.1:0", "enable_dht": False, "enable_lsd": False,
        "enable_upnp": False, "enable_natpmp": False, "alert_mask": 0,
    })  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        atp = lt.add_torrent_params()
        atp.ti, atp.save_path = ti, d
        h = ses.add_torrent(atp)
        while h.status().state in (
            lt.torrent_status.checking_resume_data, lt.torrent_status.checking_files,
        ) or not h.status().has_metadata:  # fmt: skip
            time.sleep(0.005)
        added = time.perf_counter() - t0
        ses.remove_torrent(h)
    return {"lt_parse": parse * 1e3, "lt_add_checked": added * 1e3}


# -- the driver ----------------------------------------------------------------------------------


ROWS: list[tuple[str, str, str]] = [
    ("metadata_bytes", "metadata, bytes", "n"),
    ("metainfo_parse", "metainfo.parse, ms", "ms"),
    ("picker_new", "Picker(...) resumed at 30 %, ms", "ms"),
    ("ipc_bytes_partial", "PeerBitfield pickled, bytes", "n"),
    ("ipc_partial", "PeerBitfield pickle + unpickle, ms", "ms"),
    ("add_seed", "seed's bitfield into the picker, ms", "ms"),
    ("add_partial", "partial peer's bitfield into the picker, ms", "ms"),
    ("bitfields_total", "all peers' bitfields, ms", "ms"),
    ("first_picks", "first pick_for of every worker, ms", "ms"),
    ("pick_for", "pick_for top-up (+ its finished()), ms", "ms"),
    ("rebuild", "rebuild + next pick of each worker, ms", "ms"),
    ("have", "HAVE, µs", "us"),
    ("finished", "finished(), µs", "us"),
    ("needed_for", "needed_for, ms", "ms"),
    ("endgame_for", "endgame_for, ms", "ms"),
    ("leave_seed", "seed leaves, ms", "ms"),
    ("leave_partial", "partial peer leaves, ms", "ms"),
    ("wire_decode", "wire: BITFIELD decoded, ms", "ms"),
    ("wire_encode", "wire: our bitfield packed, ms", "ms"),
    ("wire_peer_has", "wire: a connection's peer_has, bytes", "n"),
    ("worker_tell", "worker: pieces to announce (every 0.2 s), ms", "ms"),
    ("memory", "picker memory, MiB", "mib"),
    ("memory_peak", "picker peak memory, MiB", "mib"),
    ("sim_have_per_s", "download: HAVEs, ms CPU/s", "ms"),
    ("sim_done_per_s", "download: completions, ms CPU/s", "ms"),
    ("sim_pick_per_s", "download: picks and rebuilds, ms CPU/s", "ms"),
    ("sim_churn_per_s", "download: a peer leaving and arriving, ms CPU/s", "ms"),
    ("sim_cpu_per_s", "**download: coordinator CPU, ms per second**", "ms"),
]


def fmt(v: Any, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "n":
        return f"{v:,.0f}"
    if kind == "us":
        return f"{v * 1e3:.2f}"
    if kind == "mib":
        return f"{v / 1048576:.1f}"
    return f"{v:.3f}" if v < 1 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def run_probe(src: str, pieces: int, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=src)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", "--pieces", str(pieces),
           "--peers", str(args.peers), "--seeds", str(args.seeds), "--workers", str(args.workers),
           "--seconds", str(args.seconds), "--rate", str(args.rate),
           "--have-rate", str(args.have_rate), "--ahead", str(args.ahead),
           "--seed", str(args.seed)]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"probe of {src} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pieces", type=int, nargs="*", default=[500_000, 2_000])
    ap.add_argument("--peers", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=10, help="of --peers, those with every piece")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3.0, help="of simulated download")
    ap.add_argument("--rate", type=int, default=1600, help="pieces verified a second")
    ap.add_argument("--have-rate", type=int, default=1600, help="HAVEs received a second")
    ap.add_argument("--ahead", type=int, default=64, help="pieces queued per worker")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3, help="probes per checkout; medians")
    ap.add_argument("--baseline", type=Path, help="another checkout of mptorrent to compare")
    ap.add_argument("--no-libtorrent", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        args.pieces = args.pieces[0]
        print(json.dumps(probe(args)))
        return 0
    sys.path.insert(0, str(HERE))
    import common

    srcs = [("this", str(REPO))]
    if args.baseline:
        srcs.insert(0, ("baseline", str(args.baseline.resolve())))
    results: dict[str, dict[str, Any]] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in range(args.runs):
        for pieces in args.pieces:
            for name, src in srcs if r % 2 == 0 else srcs[::-1]:  # alternate: drift hits both
                label = f"{name} {pieces:,}"
                print(f"run {r + 1}/{args.runs} {label}", file=sys.stderr)
                runs.setdefault(label, []).append(run_probe(src, pieces, args))
    for label, got in sorted(runs.items(), key=lambda kv: (-kv[1][0]["pieces"], kv[0])):
        results[label] = {k: statistics.median(g[k] for g in got) for k in got[0]}
    lt_rows: dict[int, dict[str, float]] = {}
    if not args.no_libtorrent:
        try:
            for pieces in args.pieces:
                lt_rows[pieces] = libtorrent_probe(pieces, args.seed)
        except ImportError:
            pass
    labels = list(results)
    headers = ["per operation", *labels]
    rows = [
        [title, *(fmt(results[lb].get(key), kind) for lb in labels)] for key, title, kind in ROWS
    ]
    lt_titles = {"lt_parse": "libtorrent: torrent_info, ms",
                 "lt_add_checked": "libtorrent: add_torrent until checked, ms"}  # fmt: skip
    for key, title in lt_titles.items() if lt_rows else ():
        by_label = [lt_rows[results[lb]["pieces"]][key] for lb in labels]
        rows.append([title, *(fmt(v, "ms") for v in by_label)])
    print(f"\n{args.peers} peers ({args.seeds} seeds), {args.workers} workers, "
          f"{args.rate} pieces/s verified, {args.have_rate} HAVEs/s, "
          f"{args.seconds:g} s simulated\n")  # fmt: skip
    table = common.print_table(headers, rows)
    common.write_json("picker", {
        "environment": common.environment(), "args": {k: str(v) for k, v in vars(args).items()},
        "results": results, "libtorrent": lt_rows, "table": table,
    }, args.out)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
