"""Speed vs the anchors: mptorrent -j 1/2/4, libtorrent and aria2 on one loopback swarm.

    python3 benchmarks/vs_anchors.py                         # every workload, 3 runs each
    python3 benchmarks/vs_anchors.py --workload 1g-1m --runs 5
    python3 benchmarks/vs_anchors.py --memory-scale          # peak memory at 1 GiB and 4 GiB

One swarm per workload: four libtorrent seeders (tests/swarm.py) on 127.0.0.11-14 announce to
Debian's opentracker on 127.0.0.1, and every client finds them through the tracker only (the
.torrent names it; no --peer), each from its own loopback address:

- ``mptorrent fetch T -o OUT -j N --bind 127.0.0.20 --port 0 -q`` (the real CLI);
- a libtorrent leecher on 127.0.0.21, run as ``vs_anchors.py lt-leech`` in a process of its
  own so that it is measured exactly like the others (tests.swarm.run_lt_leecher);
- ``aria2c`` on 127.0.0.22 (``--interface``), when it is installed: no DHT, LPD or PEX,
  ``--seed-time=0``, ``--file-allocation=falloc`` (mptorrent reserves its files with
  posix_fallocate; aria2's default, ``prealloc``, writes zeros first).

The seeders check their data in full when they start (not seed mode: a seed-mode libtorrent
hashes each piece the first time it uploads it, and with four seeders a warm-up download
would leave most pieces unhashed on three of them).  That check also reads the data into the
page cache, which is verified with mincore(2) before every run and printed.  An untimed
warm-up download goes first.  Each run downloads once per client into a fresh folder, the
order rotating from run to run; the download is compared with the original after the timing,
then deleted (which also drops its page cache).

Workloads: ``1g-1m`` (1 GiB single file, 1 MiB pieces), ``1g-256k`` (the same with 256 KiB
pieces), ``multi`` (8 files of 256 MiB in all, uneven sizes, 256 KiB pieces).
``--memory-scale``: a 1 GiB and a 4 GiB single file (1 MiB pieces) with mptorrent -j 2 and
the anchors; does peak anonymous memory grow with the torrent?

Reported per client (medians): wall time of the whole process (start-up, preallocation,
tracker announces and exit included), MiB/s from it, the client's own transfer time where it
prints one, CPU seconds (user+system of the whole process tree, from the rusage of reaped
children), peak summed RssAnon and VmRSS of the process tree (common.TreeSampler), the CPU
that the benchmark process itself (the four seeders, mostly) spent meanwhile, and the worst
share of the machine that other processes took during a run.  JSON goes to
benchmarks/results/vs_anchors.json (vs_anchors_memory.json for --memory-scale), and a PNG
next to it when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import functools
import json
import mmap
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import common
from common import Measurement, MiB, median, mib

GiB = 1024 * MiB
MP_IP = "127.0.0.20"
LT_IP = "127.0.0.21"
ARIA2_IP = "127.0.0.22"
TRACKER_IP = "127.0.0.1"
N_SEEDERS = 4
FIRST_SEEDER = 11  # 127.0.0.11 .. .14
LT = "libtorrent"
ARIA2 = "aria2"
TRANSMISSION = "transmission"
# The uneven swarm's libtorrent seeders: one uncapped, three capped (bytes/s).
UNEVEN_CAPS = (0, 48 * MiB, 12 * MiB, 3 * MiB)


# -- workloads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    piece: int
    size: int = 0  # single file of this many bytes
    tree: dict[str, int] = field(default_factory=dict)  # or these files
    # The swarm: one libtorrent seeder per entry of ``caps`` (its upload cap in bytes/s, 0 for
    # none; empty: the four uncapped seeders of the first workloads), then one seeder of
    # each other client in ``others`` (aria2, transmission) where it is installed.
    caps: tuple[int, ...] = ()
    others: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return self.size or sum(self.tree.values())

    @property
    def name(self) -> str:
        return "payload" if self.tree else "payload.bin"


def eight_files(total: int) -> dict[str, int]:
    """Eight files of ``total`` bytes in all, with sizes that are not multiples of anything,
    so most files begin and end inside a piece; two sit in sub-folders."""
    eighth = total // 8
    odd = [12_345, -777, 1, -11_567, 0, 4_099, -65_537]
    names = ["a.bin", "b.bin", "c.bin", "d/e.bin", "d/f.bin", "g.bin", "h/i.bin"]
    tree = {n: eighth + d for n, d in zip(names, odd, strict=True)}
    tree["z.bin"] = total - sum(tree.values())
    return tree


def workloads(size: int, multi_size: int) -> dict[str, Workload]:
    return {
        "1g-1m": Workload("1g-1m", f"{common.human(size)} file, 1 MiB pieces", MiB, size=size),
        "1g-256k": Workload(
            "1g-256k", f"{common.human(size)} file, 256 KiB pieces", 256 * 1024, size=size
        ),
        "multi": Workload(
            "multi",
            f"8 files, {common.human(multi_size)}, 256 KiB pieces",
            256 * 1024,
            tree=eight_files(multi_size),
        ),
        "1g-4m": Workload("1g-4m", f"{common.human(size)} file, 4 MiB pieces", 4 * MiB, size=size),
        "uneven": Workload(
            "uneven",
            f"8 files, {common.human(multi_size)}, 256 KiB pieces, uneven seeders",
            256 * 1024,
            tree=eight_files(multi_size),
            caps=UNEVEN_CAPS,
            others=(ARIA2, TRANSMISSION),
        ),
    }


# -- the page cache -------------------------------------------------------------------------


def resident_fraction(paths: Sequence[Path]) -> float:
    """Share of the files' pages that are in the page cache now (mincore(2))."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]  # fmt: skip
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    pages = resident = 0
    for path in paths:
        size = path.stat().st_size
        if size == 0:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), f"mmap {path}")
            try:
                n = -(-size // mmap.PAGESIZE)
                vec = (ctypes.c_ubyte * n)()
                if libc.mincore(addr, size, vec) != 0:
                    raise OSError(ctypes.get_errno(), f"mincore {path}")
                pages += n
                resident += sum(b & 1 for b in bytes(vec))
            finally:
                libc.munmap(addr, size)
        finally:
            os.close(fd)
    return resident / pages if pages else 1.0


def read_through(paths: Sequence[Path]) -> None:
    """Read files once, so they sit in the page cache."""
    buf = bytearray(4 * MiB)
    for path in paths:
        with open(path, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def ensure_cached(paths: Sequence[Path]) -> float:
    frac = resident_fraction(paths)
    if frac < 0.999:
        read_through(paths)
        frac = resident_fraction(paths)
    return frac


# -- the swarm ------------------------------------------------------------------------------


def with_announce(torrent: bytes, url: str) -> bytes:
    """The same torrent (same info-hash) announcing to ``url``."""
    import libtorrent as lt

    d = lt.bdecode(torrent)
    d[b"announce"] = url.encode()
    out: bytes = lt.bencode(d)
    return out


def scrape_complete(scrape_url: str, info_hash: bytes) -> int:
    q = urllib.parse.quote_from_bytes(info_hash, safe="")
    with urllib.request.urlopen(f"{scrape_url}?info_hash={q}", timeout=5) as resp:
        body = resp.read()
    import libtorrent as lt

    files = lt.bdecode(body).get(b"files", {})
    return int(files.get(info_hash, {}).get(b"complete", 0))


@dataclass
class SwarmSetup:
    workload: Workload
    torrent: Path  # .torrent naming the tracker
    payload_root: Path  # the original file or top folder
    files: tuple[Path, ...]
    tracker_url: str
    seeders: list[str]
    start_s: float  # seeders' start-up, their full hash check included
    # other clients' seeders (their processes): their CPU is the benchmark's, not background
    other_pids: tuple[int, ...] = ()
    # bytes each seeder has sent so far, by its label in ``seeders`` (see ``sent_by_seeder``)
    sent: Callable[[], list[int]] = list


def transmission_binary() -> str | None:
    return shutil.which("transmission-cli")


def other_binary(kind: str) -> str | None:
    return aria2_binary() if kind == ARIA2 else transmission_binary()


def other_seeder_cmd(kind: str, torrent: Path, save_dir: Path, ip: str, port: int,
                     conf: Path) -> list[str]:  # fmt: skip
    """Another client seeding ``torrent`` from ``save_dir`` on ``ip``:``port``, announcing to
    the torrent's tracker only: no DHT, LPD, PEX or port mapping; its data checked at start."""
    if kind == ARIA2:
        return [
            aria2_binary() or "aria2c", "--no-conf=true", f"--dir={save_dir}",
            "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
            "--enable-peer-exchange=false", "--seed-ratio=0.0", "--check-integrity=true",
            f"--interface={ip}", f"--listen-port={port}", "--disable-ipv6=true",
            "--allow-overwrite=false", "--auto-file-renaming=false",
            "--bt-save-metadata=false", "--summary-interval=0", "--console-log-level=warn",
            "--bt-tracker-interval=1", str(torrent),
        ]  # fmt: skip
    # transmission-cli takes most settings from settings.json in its config folder only
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "settings.json").write_text(json.dumps({
        "bind-address-ipv4": ip, "bind-address-ipv6": "::1", "peer-port": port,
        "peer-port-random-on-start": False, "dht-enabled": False, "lpd-enabled": False,
        "pex-enabled": False, "utp-enabled": False, "port-forwarding-enabled": False,
        "encryption": 0, "ratio-limit-enabled": False, "speed-limit-up-enabled": False,
        "rpc-enabled": False, "download-dir": str(save_dir), "message-level": 2,
    }))  # fmt: skip
    return [transmission_binary() or "transmission-cli", "-g", str(conf), "-w", str(save_dir),
            "-p", str(port), "-M", "-U", "-D", "-v", str(torrent)]  # fmt: skip


def process_sent(pid: int) -> int:
    """Bytes a process has passed to write and send calls (/proc/PID/io's wchar): for a
    seeder, its uploads and a little logging."""
    try:
        with open(f"/proc/{pid}/io", "rb") as fh:
            for line in fh:
                if line.startswith(b"wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def process_cpu(pids: Sequence[int]) -> float:
    """CPU-seconds (user+system) that these live processes have used so far."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                f = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += int(f[11]) + int(f[12])  # utime, stime (fields 14 and 15)
    return total / common.CLK


Named = tuple[str, "subprocess.Popen[bytes]"]  # a seeder's label and its process


@contextlib.contextmanager
def other_seeders(kinds: Sequence[str], torrent: Path, save_dir: Path, first_ip: int,
                  workdir: Path) -> Iterator[list[Named]]:  # fmt: skip
    """Start a seeder of each installed client in ``kinds``, one loopback address each."""
    procs: list[Named] = []
    try:
        for kind in kinds:
            if other_binary(kind) is None:
                print(f"{kind} is not installed: no {kind} seeder", file=sys.stderr)
                continue
            ip = f"127.0.0.{first_ip + len(procs)}"
            port = free_port(ip)
            cmd = other_seeder_cmd(kind, torrent, save_dir, ip, port, workdir / f"{kind}-conf")
            with open(workdir / f"{kind}-seeder.log", "wb") as log:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT)  # fmt: skip
            procs.append((f"{kind}@{ip}:{port}", proc))
        yield procs
    finally:
        for _, proc in procs:
            proc.terminate()
        for _, proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def swarm(workdir: Path, wl: Workload, *, start_timeout: float = 600.0) -> Iterator[SwarmSetup]:
    """Write the payload, start opentracker and the checked seeders; remove all at exit."""
    from tests.interop.opentracker import run_opentracker
    from tests.swarm import Swarm, info_hash, make_payload, make_torrent

    seed_dir = workdir / "seed"
    caps = wl.caps or (0,) * N_SEEDERS
    print(f"[{wl.key}] writing {common.human(wl.total)} of random data ...", file=sys.stderr)
    payload = make_payload(seed_dir, wl.tree or wl.size, name=wl.name)
    try:
        bare = make_torrent(payload.root, wl.piece)
        ih = info_hash(bare)
        with run_opentracker([ih], host=TRACKER_IP) as tracker:
            torrent = workdir / f"{wl.key}.torrent"
            data = with_announce(bare, tracker.announce_url)
            torrent.write_bytes(data)
            t0 = time.monotonic()
            sw = Swarm(
                data, payload.save_dir, n_seeders=len(caps), first_ip=FIRST_SEEDER,
                tracker_url=tracker.announce_url, trust_data=False, start_timeout=start_timeout,
            )  # fmt: skip
            for seeder, cap in zip(sw.seeders, caps, strict=True):
                seeder.upload_rate_limit = cap
            with sw, other_seeders(wl.others, torrent, payload.save_dir,
                                   FIRST_SEEDER + len(caps), workdir) as others:  # fmt: skip
                want = len(caps) + len(others)
                deadline = time.monotonic() + 60
                while scrape_complete(tracker.scrape_url, ih) < want:
                    dead = [name for name, p in others if p.poll() is not None]
                    if dead or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"opentracker does not list {want} seeders"
                            + (f" ({', '.join(dead)} exited)" if dead else "")
                        )
                    time.sleep(0.05)
                start_s = time.monotonic() - t0
                seeders = [
                    f"{a.host}:{a.port}" + (f" (cap {cap / MiB:g} MiB/s)" if cap else "")
                    for a, cap in zip(sw.addrs, caps, strict=True)
                ] + [name for name, _ in others]
                print(
                    f"[{wl.key}] {want} seeders checked and announced in {start_s:.1f} s: "
                    f"{', '.join(seeders)}; tracker {tracker.announce_url}",
                    file=sys.stderr,
                )

                def sent() -> list[int]:
                    return [st.total_upload for st in sw.stats()] + [
                        process_sent(p.pid) for _, p in others
                    ]

                yield SwarmSetup(wl, torrent, payload.root, payload.files, tracker.announce_url,
                                 seeders, start_s, tuple(p.pid for _, p in others),
                                 sent)  # fmt: skip
    finally:
        shutil.rmtree(seed_dir, ignore_errors=True)


# -- clients --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    kind: str  # "mptorrent", LT or ARIA2
    jobs: int = 0
    io: str = "auto"  # mptorrent's --io
    src: str = ""  # another checkout of mptorrent to run instead of this one (--baseline)

    @property
    def label(self) -> str:
        if self.kind != "mptorrent":
            return self.kind
        label = f"mptorrent -j {self.jobs}" + (f" --io {self.io}" if self.io != "auto" else "")
        return label + (" @baseline" if self.src else "")


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def aria2_binary() -> str | None:
    return shutil.which("aria2c")


@functools.cache
def _fetch_help(src: str) -> str:
    """``mptorrent fetch --help`` of the checkout at ``src``."""
    env = client_env(src)
    cmd = [sys.executable, "-P", "-m", "mptorrent", "fetch", "--help"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60).stdout


def client_cmd(client: Client, setup: SwarmSetup, out_dir: Path) -> list[str]:
    torrent, wl = setup.torrent, setup.workload
    if client.kind == "mptorrent":
        # -P: the working directory must not shadow PYTHONPATH (client_env), or a
        # --baseline run would import this checkout's mptorrent instead of the baseline's
        cmd = [sys.executable, "-P", "-m", "mptorrent", "fetch", str(torrent), "-o",
               str(out_dir / wl.name), "-j", str(client.jobs), "--bind", MP_IP, "--port", "0",
               "--io", client.io, "-q"]  # fmt: skip
        # A --baseline checkout older than the DHT has no --no-dht (and no DHT to turn off).
        if not client.src or "--no-dht" in _fetch_help(client.src):
            cmd.append("--no-dht")
        return cmd
    if client.kind == LT:
        return [sys.executable, str(Path(__file__).resolve()), "lt-leech", str(torrent),
                str(out_dir), "--tracker", setup.tracker_url, "--ip", LT_IP]  # fmt: skip
    aria2 = aria2_binary()
    assert aria2 is not None
    return [
        aria2, "--no-conf=true", f"--dir={out_dir}", "--enable-dht=false",
        "--enable-dht6=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false",
        "--seed-time=0", f"--interface={ARIA2_IP}", f"--listen-port={free_port(ARIA2_IP)}",
        "--disable-ipv6=true", "--file-allocation=falloc", "--allow-overwrite=true",
        "--auto-file-renaming=false", "--bt-save-metadata=false", "--summary-interval=0",
        "--console-log-level=error", "--quiet=true", "--bt-tracker-connect-timeout=10",
        "--bt-tracker-timeout=10", str(torrent),
    ]  # fmt: skip


def client_env(src: str = "") -> dict[str, str]:
    """The environment for the clients: without PYTHONDONTWRITEBYTECODE, so the warm-up leaves
    compiled bytecode behind, as an installed package has (otherwise each run compiles
    mptorrent's modules, and the libtorrent leecher's helpers, from source).

    ``src``: a checkout whose ``mptorrent`` package shadows this one (``--baseline``), so two
    commits of the client race in the same swarm, under the same load."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = src or str(Path(__file__).resolve().parent.parent)
    return env


def on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so the work folder and the swarm are cleaned up."""

    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, stop)


def same_output(out: Path, original: Path) -> bool:
    from tests.swarm import same_tree

    return same_tree(out, original)


def download(
    client: Client, setup: SwarmSetup, out_dir: Path, *, timeout: float, pss: bool = False
) -> Measurement:
    """One measured download into ``out_dir``, checked against the original, then deleted."""
    wl = setup.workload
    out_dir.mkdir(parents=True)
    try:
        cmd = client_cmd(client, setup, out_dir)
        t = os.times()
        ours0 = t.user + t.system
        others0 = process_cpu(setup.other_pids)
        sent0 = setup.sent()
        m = common.run_measured(cmd, timeout=timeout, pss=pss, env=client_env(client.src))
        t = os.times()
        others = process_cpu(setup.other_pids) - others0
        m.extra["sent"] = [b - a for a, b in zip(sent0, setup.sent(), strict=True)]
        m.extra["bench_cpu_s"] = t.user + t.system - ours0 + others  # seeders and the sampler
        if others:
            # other clients' seeders are processes of their own: not background load
            ncpu = os.cpu_count() or 1
            m.background_load = max(0.0, m.background_load - others / (m.wall_s * ncpu))
        if client.kind == LT:
            m.extra.update(json.loads(m.stdout.strip().splitlines()[-1]))
        out = out_dir / wl.name
        if not out.exists():
            raise RuntimeError(f"{client.label}: exit 0 but no {out}\n{m.stderr[-2000:]}")
        if not same_output(out, setup.payload_root):
            raise RuntimeError(f"{client.label}: the download differs from the original")
        return m
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def lt_leech_main(argv: Sequence[str]) -> int:
    """``vs_anchors.py lt-leech TORRENT SAVE_DIR --tracker URL --ip IP``: a libtorrent leecher
    that finds its peers through the tracker only; prints {"seconds": ...} (added to finished)."""
    ap = argparse.ArgumentParser(prog="vs_anchors.py lt-leech")
    ap.add_argument("torrent", type=Path)
    ap.add_argument("save_dir", type=Path)
    ap.add_argument("--tracker", required=True, help="announce URL")
    ap.add_argument("--ip", default=LT_IP)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args(argv)
    from tests.swarm import run_lt_leecher

    args.save_dir.mkdir(parents=True, exist_ok=True)
    secs = run_lt_leecher(args.torrent.read_bytes(), args.save_dir, (), tracker_url=args.tracker,
                          ip=args.ip, timeout=args.timeout)  # fmt: skip
    print(json.dumps({"seconds": secs}))
    return 0


# -- the runs -------------------------------------------------------------------------------


def run_workload(
    workdir: Path, wl: Workload, clients: list[Client], *, runs: int, warmups: int,
    settle: float, timeout: float, pss: bool, redo_above: float = 1.0, redo_tries: int = 3,
) -> tuple[dict[Client, list[Measurement]], dict[str, Any]]:  # fmt: skip
    """``redo_above``: a run during which other processes took more than this share of the
    machine is measured again, up to ``redo_tries`` times in all (the last one stays)."""
    samples: dict[Client, list[Measurement]] = {c: [] for c in clients}
    redone: dict[str, int] = {}
    with swarm(workdir, wl) as setup:
        cached = ensure_cached(setup.files)
        print(f"[{wl.key}] seed data in page cache: {cached:.1%}", file=sys.stderr)
        for w in range(warmups):
            c = clients[w % len(clients)]
            m = download(c, setup, workdir / f"warm-up-{w}", timeout=timeout)
            print(f"[{wl.key}] warm-up {c.label}: {m.wall_s:.2f} s", file=sys.stderr)
        n = 0
        for r in range(runs):
            shift = r % len(clients)
            for c in clients[shift:] + clients[:shift]:
                for attempt in range(redo_tries):
                    cached = ensure_cached(setup.files)
                    load = common.wait_for_quiet(settle)
                    m = download(c, setup, workdir / f"dl-{n}", timeout=timeout, pss=pss)
                    n += 1
                    if m.background_load <= redo_above or attempt == redo_tries - 1:
                        break
                    redone[c.label] = redone.get(c.label, 0) + 1
                    print(
                        f"[{wl.key}] run {r + 1}/{runs} {c.label}: {m.wall_s:.2f} s with "
                        f"{m.background_load:.0%} background: again",
                        file=sys.stderr,
                    )
                m.extra["load_before"] = load
                m.extra["seed_cached"] = cached
                samples[c].append(m)
                print(
                    f"[{wl.key}] run {r + 1}/{runs} {c.label}: {m.wall_s:.2f} s, "
                    f"{wl.total / MiB / m.wall_s:.0f} MiB/s, CPU {m.cpu_s:.2f} s, seeders "
                    f"{m.extra['bench_cpu_s']:.2f} s, peak anon {mib(m.mem.anon)} MiB, rss "
                    f"{mib(m.mem.rss)} MiB, background {m.background_load:.0%}; seeders sent "
                    f"{'/'.join(mib(b) for b in m.extra['sent'])} MiB",
                    file=sys.stderr,
                )
        info = {"seeders": setup.seeders, "tracker": setup.tracker_url,
                "seeder_start_s": setup.start_s, "redone": redone}  # fmt: skip
    return samples, info


def summarize(wl: Workload, client: Client, ms: list[Measurement]) -> dict[str, Any]:
    wall = median(m.wall_s for m in ms)
    transfers = [t for t in (common.transfer_seconds(m) for m in ms) if t is not None]
    pss = [m.mem.pss_anon for m in ms if m.mem.pss_anon is not None]
    cpu = median(m.cpu_s for m in ms)
    return {
        "workload": wl.key,
        "size_bytes": wl.total,
        "piece_length": wl.piece,
        "client": client.label,
        "kind": client.kind,
        "jobs": client.jobs or None,
        "runs": len(ms),
        "median_wall_s": wall,
        "mib_s": wl.total / MiB / wall,
        "median_transfer_s": median(transfers) if transfers else None,
        "median_cpu_s": cpu,
        "cpu_s_per_gib": cpu / (wl.total / GiB),
        "median_peak_anon": median(m.mem.anon for m in ms),
        "max_peak_anon": max(m.mem.anon for m in ms),
        "median_peak_rss": median(m.mem.rss for m in ms),
        "median_peak_pss_anon": median(pss) if pss else None,
        "median_bench_cpu_s": median(m.extra["bench_cpu_s"] for m in ms),
        "max_background_load": max(m.background_load for m in ms),
        "median_sent": [median(col) for col in zip(*(m.extra["sent"] for m in ms), strict=True)],
        "measurements": [common.measurement_dict(m) for m in ms],
    }


HEADERS = ["workload", "client", "wall s", "MiB/s", "transfer s", "CPU s", "CPU s/GiB",
           "peak RssAnon MiB", "peak RSS MiB", "seeders CPU s", "worst bg load"]  # fmt: skip


def table_rows(rows: list[dict[str, Any]]) -> list[list[object]]:
    out: list[list[object]] = []
    for r in rows:
        t = r["median_transfer_s"]
        out.append([
            r["workload"], r["client"], f"{r['median_wall_s']:.2f}", f"{r['mib_s']:.0f}",
            "-" if t is None else f"{t:.2f}", f"{r['median_cpu_s']:.2f}",
            f"{r['cpu_s_per_gib']:.2f}", mib(r["median_peak_anon"]), mib(r["median_peak_rss"]),
            f"{r['median_bench_cpu_s']:.2f}", f"{r['max_background_load']:.0%}",
        ])  # fmt: skip
    return out


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    keys = list(dict.fromkeys(r["workload"] for r in rows))
    labels = list(dict.fromkeys(r["client"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.8 / max(1, len(labels))
    metrics = [("mib_s", "MiB/s (median, whole process)"),
               ("cpu_s_per_gib", "CPU s per GiB (process tree)"),
               ("median_peak_anon", "peak RssAnon MiB (process tree)")]  # fmt: skip
    for ax, (metric, ylabel) in zip(axes, metrics, strict=True):
        for j, label in enumerate(labels):
            xs, ys = [], []
            for i, k in enumerate(keys):
                for r in rows:
                    if r["workload"] == k and r["client"] == label:
                        xs.append(i + (j - (len(labels) - 1) / 2) * width)
                        v = r[metric]
                        ys.append(v / MiB if metric == "median_peak_anon" else v)
            ax.bar(xs, ys, width, label=label)
        ax.set_xticks(range(len(keys)), keys)
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def parse_clients(text: str, jobs: list[int], ios: Sequence[str] = ("auto",)) -> list[Client]:
    out: list[Client] = []
    for name in (t.strip() for t in text.split(",") if t.strip()):
        if name == "mptorrent":
            out += [Client("mptorrent", j, io) for io in ios for j in jobs]
        elif name in (LT, ARIA2):
            if name == ARIA2 and aria2_binary() is None:
                print("aria2c is not installed: skipping aria2", file=sys.stderr)
                continue
            out.append(Client(name))
        else:
            raise SystemExit(f"unknown client {name!r} (mptorrent, libtorrent, aria2)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workload", default="1g-1m,1g-256k,multi",
                    help="comma-separated: 1g-1m, 1g-256k, multi, 1g-4m, uneven "
                         "(default: the first three)")  # fmt: skip
    ap.add_argument("--runs", type=int, default=3, help="timed runs per client (default 3)")
    ap.add_argument("--jobs", default="1,2,4", help="mptorrent worker counts (default 1,2,4)")
    ap.add_argument("--io", default="auto",
                    help="mptorrent's --io values, comma-separated (default auto)")  # fmt: skip
    ap.add_argument("--clients", default=f"mptorrent,{LT},{ARIA2}",
                    help="comma-separated: mptorrent, libtorrent, aria2 (default: all; aria2 "
                         "only where aria2c is installed)")  # fmt: skip
    ap.add_argument("--size", default="1GiB", help="single-file size (default 1GiB)")
    ap.add_argument("--multi-size", default="256MiB", help="multi-file total (default 256MiB)")
    ap.add_argument(
        "--memory-scale",
        action="store_true",
        help="peak memory at --scale-sizes with mptorrent -j 2 and the anchors",
    )
    ap.add_argument("--scale-sizes", default="1GiB,4GiB", help="for --memory-scale")
    ap.add_argument("--warmups", type=int, default=1, help="untimed downloads first (default 1)")
    ap.add_argument("--pss", action="store_true", help="also sample Pss_Anon (costs CPU)")
    ap.add_argument("--baseline", type=Path,
                    help="a second checkout of mptorrent (e.g. a git worktree of an older "
                         "commit): its fetch runs beside this one's, same -j and --io")  # fmt: skip
    common.add_run_options(ap, settle=30.0)
    ap.add_argument("--redo-above", type=float, default=1.0, metavar="SHARE",
                    help="measure a run again when others took more than SHARE of the "
                         "machine during it (e.g. 0.25; default 1: never)")  # fmt: skip
    ap.add_argument("--redo-tries", type=int, default=3, help="with --redo-above (default 3)")
    ap.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/...)")
    args = ap.parse_args(argv)
    on_sigterm()

    if args.memory_scale:
        texts = [t.strip() for t in args.scale_sizes.split(",") if t.strip()]
        wls = [Workload(t, f"{common.human(common.parse_size(t))} file, 1 MiB pieces", MiB,
                        size=common.parse_size(t)) for t in texts]  # fmt: skip
        jobs = [2]
        name = "vs_anchors_memory"
    else:
        table = workloads(common.parse_size(args.size), common.parse_size(args.multi_size))
        keys = [k.strip() for k in args.workload.split(",") if k.strip()]
        bad = [k for k in keys if k not in table]
        if bad:
            raise SystemExit(f"unknown workload {bad[0]!r} (one of {', '.join(table)})")
        wls = [table[k] for k in keys]
        jobs = [int(j) for j in args.jobs.split(",")]
        name = "vs_anchors"
    ios = [t.strip() for t in args.io.split(",") if t.strip()]
    clients = parse_clients(args.clients, jobs, ios)
    if args.baseline:
        base = str(args.baseline.resolve())
        clients += [replace(c, src=base) for c in clients if c.kind == "mptorrent"]
    if not clients:
        raise SystemExit("no client to measure")
    from tests.interop.opentracker import opentracker_binary

    if opentracker_binary() is None:
        raise SystemExit("opentracker is not installed (apt-get install opentracker)")
    args.dir.mkdir(parents=True, exist_ok=True)
    # the payload, plus one download at a time
    common.check_space(args.dir, 2 * max(w.total for w in wls) + 64 * MiB)
    out_path: Path = args.out or common.RESULTS_DIR / f"{name}.json"
    workdir = Path(tempfile.mkdtemp(prefix="mptorrent-anchors-", dir=args.dir))
    rows: list[dict[str, Any]] = []
    swarms: dict[str, Any] = {}
    started = time.monotonic()
    try:
        for wl in wls:
            samples, info = run_workload(
                workdir, wl, clients, runs=args.runs, warmups=args.warmups,
                settle=args.settle, timeout=args.timeout, pss=args.pss,
                redo_above=args.redo_above, redo_tries=args.redo_tries,
            )  # fmt: skip
            swarms[wl.key] = info
            rows += [summarize(wl, c, ms) for c, ms in samples.items()]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    env = common.environment()
    title = (f"{N_SEEDERS} libtorrent seeders behind opentracker, {env['cpus']} CPUs, "
             f"median of {args.runs} runs")  # fmt: skip
    print(f"\n{title}\n")
    text = common.print_table(HEADERS, table_rows(rows))
    for wl in wls:
        if wl.caps or wl.others:  # who sent what, in a swarm of unequal seeders
            labels = swarms[wl.key]["seeders"]
            print(f"\n{wl.key}: MiB each seeder sent (median, protocol included)\n")
            text += "\n\n" + common.print_table(
                ["client", *labels],
                [[r["client"], *(mib(b) for b in r["median_sent"])]
                 for r in rows if r["workload"] == wl.key],
            )  # fmt: skip
    growth: dict[str, float] = {}
    if args.memory_scale and len(wls) > 1:
        print()
        for c in clients:
            mine = [r for r in rows if r["client"] == c.label]
            growth[c.label] = mine[-1]["median_peak_anon"] / mine[0]["median_peak_anon"]
            print(f"{c.label}: peak RssAnon at {wls[-1].key} / at {wls[0].key} = "
                  f"{growth[c.label]:.2f}x")  # fmt: skip
    aria2_version = None
    if aria2_binary():
        aria2_version = subprocess.run(
            [aria2_binary() or "aria2c", "--version"], capture_output=True, text=True
        ).stdout.splitlines()[0]
    common.write_json(
        name,
        {
            **env,
            "aria2": aria2_version,
            "runs": args.runs,
            "seeders": N_SEEDERS,
            "dir": str(args.dir),
            "elapsed_s": time.monotonic() - started,
            "workloads": {
                w.key: {
                    "title": w.title,
                    "size_bytes": w.total,
                    "piece_length": w.piece,
                    "files": w.tree or {w.name: w.size},
                }
                for w in wls
            },
            "swarms": swarms,
            "results": rows,
            "anon_growth": growth,
            "table": text,
        },
        out_path,
    )
    png = out_path.with_suffix(".png")
    if plot(rows, png, title):
        print(f"wrote {png}", file=sys.stderr)
    else:
        print("matplotlib is not installed: no plot", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "lt-leech":
        sys.exit(lt_leech_main(sys.argv[2:]))
    sys.exit(main())
