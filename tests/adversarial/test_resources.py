"""Table E of tests/adversarial/README.md: resource ceilings, asserted as bounds, never as timings.

- E1: the anonymous memory of a worker process, read from /proc/PID/status while a real
  fetch runs against three unthrottled libtorrent seeders, grows by at most the pieces it
  can have in flight (its request pipelines rounded up to whole pieces) plus a constant.  The
  output mmap is file-backed, so it shows in RssFile, not in RssAnon.
- E2: the largest torrent mptorrent accepts has MAX_TORRENT_SIZE / 20 pieces (10 MiB of
  hashes); ``mptorrent info`` on it and the coordinator's per-piece structures for it
  (picker, done-map, layout, a few dozen peers' bitfields, a rarest-first rebuild) stay
  within a budget.  Each is measured in a fresh interpreter.  So is the real thing: the
  coordinator process of a ``mptorrent fetch`` of that torrent while 20 peers offer every
  piece stays under the 256 MiB budget.
- E3: a tracker reply listing 100,000 peers (dictionary, compact and IPv6 forms) leaves
  at most MAX_PEERS of them; the transient cost of decoding it is bounded by the reply's
  size, which the HTTP client caps at MAX_TRACKER_REPLY_SIZE.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mptorrent.proto import bencode, metainfo
from mptorrent.proto import tracker as tr
from mptorrent.proto.bencode import MAX_TORRENT_SIZE, MAX_TRACKER_REPLY_SIZE
from tests.adversarial.test_process import REPO, Fetch, Seeders
from tests.fakes.evil_peer import EvilConn, EvilPeer
from tests.swarm import KiB, MiB, TorrentCase, same_tree, single_file_case, write_torrent

HASH = 20


def status(pid: int | str = "self") -> dict[str, int]:
    """RssAnon, VmRSS and VmHWM of a process in KiB (empty once it is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
    except OSError:
        return {}
    return out


def reset_peak() -> None:
    """Start VmHWM afresh from the current RSS (Linux 4.0+), after a collection."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def run_probe(call: str, *args: str) -> dict[str, int]:
    """Run ``tests.adversarial.test_resources.<call>(*args)`` in a fresh interpreter."""
    code = f"import sys; from tests.adversarial.test_resources import {call} as f; f(*sys.argv[1:])"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result: dict[str, int] = json.loads(proc.stdout.splitlines()[-1])
    return result


# -- E1: worker memory during a real fetch --------------------------------------------------

E1_SIZE = 64 * MiB
E1_PIECE = 1 * MiB
E1_SEEDERS = ["127.0.5.11", "127.0.5.12", "127.0.5.13"]


@pytest.fixture(scope="module")
def e1_case(tmp_path_factory: pytest.TempPathFactory) -> TorrentCase:
    return single_file_case(tmp_path_factory.mktemp("e1-src"), E1_SIZE, E1_PIECE, seed=1)


@pytest.fixture(scope="module")
def e1_seeders(e1_case: TorrentCase) -> Iterator[Seeders]:
    with Seeders(e1_case, E1_SEEDERS, 0) as s:
        yield s


@pytest.mark.interop
def test_e1_worker_memory_is_bounded_by_pieces_in_flight(
    e1_case: TorrentCase, e1_seeders: Seeders, tmp_path: Path
) -> None:
    torrent = write_torrent(tmp_path, e1_case.torrent, "e1.torrent")
    out = tmp_path / "out.bin"
    first: dict[int, int] = {}
    peak: dict[int, int] = {}
    main_peak = 0
    # One worker talks to every seeder: the most a worker can have in flight, and a worker
    # that kept the pieces it fetched would hold the whole torrent.
    with Fetch(torrent, out, e1_seeders.args(), jobs=1) as f:
        while f.proc.poll() is None:
            for pid in f.workers():
                anon = status(pid).get("RssAnon")
                if anon is not None:
                    first.setdefault(pid, anon)
                    peak[pid] = max(peak.get(pid, 0), anon)
            main_peak = max(main_peak, status(f.pid).get("RssAnon", 0))
            time.sleep(0.005)
        assert f.wait(5) == 0, f.stderr()
    assert same_tree(out, e1_case.payload.root)
    assert len(first) == 1, first  # the worker was seen, and never restarted
    # A worker holds a buffer for each piece it has requests out for: at most its request
    # pipelines (500 blocks per peer, libtorrent's max_out_request_queue) rounded up to whole
    # pieces, plus one partly requested piece per peer; each peer also has a 1 MiB receive
    # buffer.  Written out from those anchors (not read from pipeline.CEILING and RECV_SIZE) so
    # that a deeper pipeline or bigger buffers fail here instead of widening the bound.
    peers = len(E1_SEEDERS)
    in_flight = peers * (-(-500 * 16 * KiB // E1_PIECE) + 1)
    bound = in_flight * E1_PIECE + peers * MiB + 8 * MiB
    assert bound == 38 * MiB < E1_SIZE  # the figure tests/adversarial/README.md states
    growth = {pid: (peak[pid] - first[pid]) * KiB for pid in first}
    assert all(g <= bound for g in growth.values()), (growth, bound)
    # The coordinator never holds piece data: interpreter, click, tqdm and bookkeeping.
    assert main_peak * KiB < 48 * MiB, main_peak
    print(f"E1: worker RssAnon growth {sorted(g // KiB for g in growth.values())} KiB, "
          f"bound {bound // KiB} KiB; coordinator peak {main_peak} KiB")  # fmt: skip


# -- E2: the largest torrent we accept ------------------------------------------------------

E2_PIECES = (MAX_TORRENT_SIZE - 200) // HASH  # the hashes alone fill the size cap
E2_PIECE_LENGTH = 16 * KiB
E2_WORKERS = 2
E2_PEERS = 20  # bitfields the coordinator holds (full ones: a count each, issue 18)


def big_torrent(path: Path, pieces: int) -> Path:
    info = {
        b"name": b"big.bin", b"piece length": E2_PIECE_LENGTH,
        b"length": pieces * E2_PIECE_LENGTH, b"pieces": os.urandom(HASH * pieces),
    }  # fmt: skip
    path.write_bytes(bencode.encode({b"announce": b"http://127.0.0.1:9/announce", b"info": info}))
    return path


@pytest.fixture(scope="module")
def e2_torrent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = big_torrent(tmp_path_factory.mktemp("e2") / "big.torrent", E2_PIECES)
    assert path.stat().st_size <= MAX_TORRENT_SIZE
    assert metainfo.MAX_PIECES * HASH > MAX_TORRENT_SIZE  # the piece cap is never reached
    return path


def peak_rss_of(args: list[str]) -> int:
    """Peak RSS in bytes of a child process, from the kernel's own accounting."""
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, code, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(code)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    return usage.ru_maxrss * KiB


def test_e2_info_on_the_largest_torrent(e2_torrent: Path, tmp_path: Path) -> None:
    small = big_torrent(tmp_path / "small.torrent", 3)
    base = peak_rss_of([sys.executable, "-m", "mptorrent", "info", "--json", str(small)])
    big = peak_rss_of([sys.executable, "-m", "mptorrent", "info", "--json", str(e2_torrent)])
    size = e2_torrent.stat().st_size
    # the file, its decoded hash string and the info-dict span: a few copies, nothing per piece
    assert big - base <= 4 * size, (big, base, size)


def coordinator_probe(torrent: str, workers: str, peers: str) -> None:
    """In a fresh interpreter: build the coordinator's per-piece structures for ``torrent``
    (picker, layout, done-map) as the coordinator does, and print the memory figures (KiB) as
    JSON.  A model of those structures alone; the real coordinator process is measured by
    test_e2_real_coordinator_memory_for_the_largest_torrent."""
    from mptorrent.disk.storage import Layout
    from mptorrent.mp import context
    from mptorrent.policy.picker import Picker

    meta = metainfo.load(torrent)
    n = meta.num_pieces
    reset_peak()  # loading the file is measured by the info test
    before = status()
    layout = Layout.for_torrent(meta, Path(torrent).with_suffix(".out"))
    picker = Picker(n, bytearray(n))
    done = context().RawArray("B", n + 1)
    everything = bytes([1]) * n
    nw, np_ = int(workers), int(peers)
    for k in range(np_):
        # each PeerBitfield arrives unpickled: its own bytes object
        picker.peer_bitfield((k % nw, 1, k), bytes(bytearray(everything)), k % nw)
    for w in range(nw):
        picker.pick_for(w, 64)  # the first pick builds the order (availability buckets)
    after = status()
    assert layout.num_pieces == n and len(done) == n + 1
    print(json.dumps({
        "pieces": n, "anon_before": before["RssAnon"], "rss_before": before["VmRSS"],
        "anon_after": after["RssAnon"], "hwm_after": after["VmHWM"],
    }))  # fmt: skip


def test_e2_coordinator_structures_for_the_largest_torrent(e2_torrent: Path) -> None:
    r = run_probe("coordinator_probe", str(e2_torrent), str(E2_WORKERS), str(E2_PEERS))
    n = r["pieces"]
    assert n == E2_PIECES
    kept = (r["anon_after"] - r["anon_before"]) * KiB
    peak = (r["hwm_after"] - r["rss_before"]) * KiB
    # Per piece: state, priority, availability counts, a have-byte per worker, the done-map
    # and the order's bucket byte; a full bitfield is one count (budgets from before that).
    assert kept <= n * (128 + E2_PEERS), (kept, n)
    # The rebuild of the order is transient: a few byte-per-piece arrays and integers.
    assert peak <= n * (320 + E2_PEERS), (peak, n)
    assert r["hwm_after"] * KiB < 256 * MiB, r
    print(f"E2: {n} pieces, kept {kept / n:.0f} B/piece, peak {peak / n:.0f} B/piece, "
          f"process peak {r['hwm_after'] // KiB} MiB")  # fmt: skip


E2_PEER_IPS = [f"127.0.6.{10 + k}" for k in range(E2_PEERS)]


def offer_everything(c: EvilConn) -> None:
    """Handshake and a full bitfield, then silence: the client keeps the bitfield."""
    c.greet(unchoke=False)
    c.mark("offered")
    c.hold()


def fetch_coordinator_peak(torrent: Path, out: Path) -> int:
    """Peak RSS (VmHWM, bytes) of a real ``mptorrent fetch`` coordinator process of
    ``torrent`` once all E2_PEERS peers have offered it every piece and it has settled; the
    fetch is then stopped.  The kernel's high-water mark misses no transient."""
    meta = metainfo.load(torrent)
    with contextlib.ExitStack() as stack:
        peers = [stack.enter_context(EvilPeer(ip, meta, offer_everything)) for ip in E2_PEER_IPS]
        args = [a for p in peers for a in ("--peer", str(p.addr))]
        f = stack.enter_context(Fetch(torrent, out, args, "-q", jobs=E2_WORKERS))
        deadline = time.monotonic() + 60
        while not all(any("offered" in c.marks for c in p.connections) for p in peers):
            assert f.proc.poll() is None, f.stderr()
            assert time.monotonic() < deadline, [p.attempts for p in peers]
            time.sleep(0.05)
        # The workers pass each bitfield on; the coordinator adds it and picks rarest-first.
        # Done when its high-water mark has not moved for a second.
        peak, since = 0, time.monotonic()
        while time.monotonic() - since < 1.0:
            assert f.proc.poll() is None, f.stderr()
            assert time.monotonic() < deadline, "the coordinator's memory kept growing"
            now = status(f.pid)["VmHWM"]
            if now != peak:
                peak, since = now, time.monotonic()
            time.sleep(0.1)
    return peak * KiB


@pytest.mark.interop
def test_e2_real_coordinator_memory_for_the_largest_torrent(
    e2_torrent: Path, tmp_path: Path
) -> None:
    """The coordinator itself, not a model of it: a real fetch of the largest torrent while
    20 peers offer every piece, against the same fetch of a 3-piece torrent."""
    small = big_torrent(tmp_path / "small.torrent", 3)
    base = fetch_coordinator_peak(small, tmp_path / "small.out")
    big = fetch_coordinator_peak(e2_torrent, tmp_path / "big.out")
    n = E2_PIECES
    # The budget we set for a torrent of the most pieces we accept: 256 MiB for
    # the whole coordinator process, its metainfo (10 MB of hashes) included.
    assert big < 256 * MiB, (big, base)
    assert big - base > n * HASH, (big, base)  # the big torrent was really loaded and held
    print(f"E2 fetch: coordinator peak RSS {big // MiB} MiB ({(big - base) / n:.0f} B/piece over "
          f"a 3-piece fetch's {base // MiB} MiB)")  # fmt: skip


# -- E3: 100,000 peers in one tracker reply -------------------------------------------------

E3_PEERS = 100_000


def reply_body(form: str) -> bytes:
    if form == "dictionary":
        peers: object = [
            {b"ip": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}".encode(), b"port": 6881}
            for i in range(E3_PEERS)
        ]
        return bencode.encode({b"interval": 1800, b"peers": peers})
    if form == "compact":
        blob = b"".join(struct.pack("!IH", 0x0A000000 + i, 6881) for i in range(E3_PEERS))
        return bencode.encode({b"interval": 1800, b"peers": blob})
    v6 = b"".join(
        struct.pack("!QQH", 0x20010DB8 << 32, i + 1, 6881) for i in range(E3_PEERS)
    )  # fmt: skip
    return bencode.encode({b"interval": 1800, b"peers": b"", b"peers6": v6})


def tracker_reply_probe(form: str) -> None:
    """In a fresh interpreter: parse a 100,000-peer reply, print memory figures (KiB)."""
    body = reply_body(form)
    reset_peak()  # building the reply is not the client's cost
    before = status()
    reply = tr.parse_announce(body)
    after = status()
    print(json.dumps({
        "body": len(body), "peers": len(reply.peers), "unique": len(set(reply.peers)),
        "rss_before": before["VmRSS"], "hwm_after": after["VmHWM"],
    }))  # fmt: skip


@pytest.mark.parametrize("form", ["dictionary", "compact", "ipv6"])
def test_e3_100000_peer_reply_keeps_only_the_cap(form: str) -> None:
    r = run_probe("tracker_reply_probe", form)
    assert r["peers"] == r["unique"] == tr.MAX_PEERS
    assert r["body"] <= MAX_TRACKER_REPLY_SIZE  # what the HTTP client would read at most
    transient = (r["hwm_after"] - r["rss_before"]) * KiB
    # bencoder.pyx builds the whole reply (100,000 small dicts) before the cap applies
    assert transient <= 16 * r["body"], (transient, r)
    assert transient <= 16 * MAX_TRACKER_REPLY_SIZE
    print(f"E3 [{form}]: body {r['body']} B, transient {transient // KiB} KiB")
