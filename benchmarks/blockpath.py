"""The worker's Python cost per block, without sockets, SHA-1 or disk: a replay.

    python3 benchmarks/blockpath.py                        # this checkout
    python3 benchmarks/blockpath.py --baseline DIR         # and another one, e.g. 07a4d65

One worker (``_Worker``, built as the worker process builds it) downloads a torrent of
``--pieces`` pieces from four in-memory peers that answer every request at once.  Each
turn times the request side (``_fill`` for every peer: pick blocks, build and queue the
requests) and the receive side (1 MiB of Piece messages per peer placed in the connection's
buffer, then ``_process``: parse, copy each block into its piece, complete the piece).
SHA-1 is replaced by a constant and ``Storage.write_piece`` by nothing, so what is left is
the interpreter's work per block and per piece, the part a profile of a real fetch shows
least precisely (``profile_fetch.py`` for the rest).  Each checkout runs in its own
``python -P`` process; the best of ``--rounds`` downloads is kept.  07a4d65 (one
``mptorrent/worker.py``) and later layouts (``mptorrent/worker/process.py``) both work.
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

CHUNK = 1 << 20  # bytes put in a connection's buffer per read, as one recv_into
DIGEST = bytes(20)  # every piece "hashes" to this


class _Sha1:
    """Stands in for hashlib.sha1: every piece verifies, at no cost."""

    def __init__(self, data: object = b"") -> None:
        pass

    def update(self, data: object) -> None:
        pass

    def digest(self) -> bytes:
        return DIGEST


def _modules() -> tuple[Any, Any, Any, Any]:
    """The worker and metainfo modules, Layout and PeerAddr, SHA-1 replaced."""
    fake = types.SimpleNamespace(sha1=_Sha1)
    from mptorrent.messages import PeerAddr

    try:
        from mptorrent.disk.storage import Layout
        from mptorrent.proto import hashing, metainfo
        from mptorrent.worker import process as worker

        hashing.hashlib = fake
    except ImportError:  # 07a4d65: one module per part
        from mptorrent.storage import Layout

        from mptorrent import metainfo, worker

        worker.hashlib = fake
    return worker, metainfo, Layout, PeerAddr


def replay(pieces: int, piece_length: int) -> tuple[float, float]:
    """One download; seconds spent in the request side and in the receive side."""
    worker, metainfo, Layout, PeerAddr = _modules()
    meta = metainfo.parse(
        metainfo.build(
            name="x", piece_length=piece_length, pieces=DIGEST * pieces,
            length=pieces * piece_length,
        )
    )  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="mptorrent-blockpath-"))
    try:
        out = tmp / "x"
        with open(out, "wb") as fh:
            fh.truncate(pieces * piece_length)
        cfg = worker.WorkerConfig(
            worker_id=0, meta=meta, layout=Layout.for_torrent(meta, out), peers=(),
            parent_pid=os.getpid(),
        )  # fmt: skip
        work: queue.Queue[list[int]] = queue.Queue()
        order = list(range(pieces))
        random.Random(1).shuffle(order)
        for i in range(0, pieces, 8):
            work.put(order[i : i + 8])
        done = bytearray(pieces + 1)
        w = worker._Worker(cfg, work, queue.Queue(), queue.Queue(), memoryview(done))

        def write_piece(index: int, data: object, done: memoryview | None = None) -> bool:
            if done is not None:  # as Storage.write_piece marks it (older checkouts: the worker)
                done[index] = 1
            return True

        w.storage.write_piece = write_piece
        return _download(w, worker, meta, PeerAddr, done, pieces)
    finally:
        shutil.rmtree(tmp)


def _download(
    w: Any, worker: Any, meta: Any, PeerAddr: Any, done: bytearray, pieces: int
) -> tuple[float, float]:
    policy = getattr(w, "policy", None)  # where decisions wait to be applied, if anywhere
    block = bytes(16384)
    replies: list[tuple[Any, bytearray]] = []
    for k in range(4):
        addr = PeerAddr(f"127.0.0.{k + 11}", 6881)
        p = w._session(addr)
        p.state = worker.HANDSHAKING
        w._greet(p)
        w.peers[addr] = p
        if hasattr(w, "sources"):
            w.sources[addr] = p
        bits = b"\xff" * ((pieces + 7) // 8)
        p.wire.receive_data(
            b"\x13BitTorrent protocol" + bytes(8) + meta.info_hash + b"-LT0000-"
            + bytes([k]) * 12 + struct.pack(">IB", 1 + len(bits), 5) + bits
            + struct.pack(">IB", 1, 1)
        )  # fmt: skip
        w._process(p)
        assert p.state == worker.ACTIVE
        p.out.clear()
        replies.append((p, bytearray()))
    ask = receive = 0.0
    last_depth = 0.0
    clock = time.perf_counter
    while done.count(1) < pieces:
        now = w.now = time.monotonic()
        if policy is not None:
            policy.now = now
        if now - last_depth >= 0.2:
            last_depth = now
            for p in w.peers.values():
                p.update_depth(now)
        t = clock()
        for p in list(w.peers.values()):
            w._fill(p)
            if policy is not None and policy.decisions:
                w._apply()
        ask += clock() - t
        for p, reply in replies:  # the peers answer every request
            sent, pos = p.out, 0
            while len(sent) - pos >= 4:
                (n,) = struct.unpack_from(">I", sent, pos)
                if n == 13 and sent[pos + 4] == 6:
                    index, begin, length = struct.unpack_from(">III", sent, pos + 5)
                    reply += struct.pack(">IBII", 9 + length, 7, index, begin) + block[:length]
                pos += 4 + n
            sent.clear()
        for p, reply in replies:
            while reply:
                view = p.wire.get_buffer(CHUNK)
                n = min(len(view), len(reply), CHUNK)
                view[:n] = reply[:n]
                view.release()
                del reply[:n]
                p.wire.buffer_updated(n)
                t = clock()
                w._process(p)
                if policy is not None and policy.decisions:
                    w._apply()
                receive += clock() - t
        w.to_tell.clear()
        w.outbox.clear()
    return ask, receive


def child(args: argparse.Namespace) -> None:
    best: tuple[float, float] | None = None
    for _ in range(args.rounds):
        got = replay(args.pieces, args.piece_kib * 1024)
        best = got if best is None else (min(best[0], got[0]), min(best[1], got[1]))
    assert best is not None
    blocks = args.pieces * args.piece_kib * 1024 / 16384
    print(f"{best[0] / blocks * 1e9:.0f} {best[1] / blocks * 1e9:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", action="append", default=[], metavar="DIR",
                    help="another checkout to measure alongside (repeatable)")  # fmt: skip
    ap.add_argument("--pieces", type=int, default=1024)
    ap.add_argument("--piece-kib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7, help="downloads per checkout; best kept")
    ap.add_argument("--runs", type=int, default=3, help="processes per checkout, interleaved")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    here = str(Path(__file__).resolve().parent.parent)
    checkouts = [here, *(str(Path(b).resolve()) for b in args.baseline)]
    results: dict[str, list[tuple[int, int]]] = {c: [] for c in checkouts}
    for _ in range(args.runs):
        for c in checkouts:
            cmd = [sys.executable, "-P", __file__, "--child", "--pieces", str(args.pieces),
                   "--piece-kib", str(args.piece_kib), "--rounds", str(args.rounds)]  # fmt: skip
            env = dict(os.environ, PYTHONPATH=c)
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            a, r = out.stdout.split()
            results[c].append((int(a), int(r)))
    print(f"{args.pieces} pieces of {args.piece_kib} KiB, best of {args.rounds} x {args.runs}; "
          "ns per 16 KiB block")  # fmt: skip
    print(f"{'checkout':40} {'requests':>9} {'receive':>9} {'total':>9}")
    for c, rows in results.items():
        a, r = min(x[0] for x in rows), min(x[1] for x in rows)
        print(f"{c[-40:]:40} {a:9d} {r:9d} {a + r:9d}")


if __name__ == "__main__":
    main()
