"""A WAN swarm on one machine: many slow, distant, uneven seeders, without root (issue 18).

    python3 benchmarks/wan.py                            # mixed24 and one300, 3 runs each
    python3 benchmarks/wan.py --preset small48,partial --jobs 1,2,4,8 --runs 3
    python3 benchmarks/wan.py --quick                    # small payloads, one run: a smoke test

Each preset starts N libtorrent seeders (``tests.swarm.LtPeer``) in this process, each on its
own address 127.0.1.i with its own upload cap (libtorrent's ``upload_rate_limit``), and with
``allow_multiple_connections_per_ip`` at libtorrent's default (off): a seeder refuses a second
connection from one client's address, as real peers do.  Their ut_pex is off and they do
not announce: nobody can reach them but through their link.

Each seeder sits behind a userspace latency proxy on its own address 127.0.2.i, all of them
served by one asyncio process (``wan.py proxy``).  A link delays each direction by half its
round trip plus jitter (never reordering bytes), and holds at most ``LINK_BUFFER`` bytes per
direction: past that it stops reading, so TCP back-pressure still reaches the sender.  The
proxy dials the seeder from the client's own address (the one the client connected from),
so the seeder sees the client's address, one per client, as it would on the Internet.

Debian's opentracker on 127.0.0.1 knows only the proxies: the harness announces each proxy's
address and port from that address (opentracker records the address a request comes
from).  Every client finds the seeders through the tracker only, from its own address:
mptorrent (the real CLI, ``--bind 127.0.0.20``), a libtorrent leecher (127.0.0.21, run by
``vs_anchors.py lt-leech``) and aria2c (127.0.0.22) when it is installed.

Presets (``--quick`` shrinks the payloads to a quarter):

- ``mixed24``: 24 seeders, caps 256 KiB/s to 4 MiB/s, 40 MiB/s together, round trips
  30 to 300 ms; 256 MiB, 1 MiB pieces;
- ``small48``: 48 seeders at 256 to 512 KiB/s, 100 to 300 ms; 192 MiB, 256 KiB pieces;
- ``partial``: ``mixed24`` where a third of the seeders hold a random half of the pieces;
- ``one300``: one 4 MiB/s seeder 300 ms away; 64 MiB, 1 MiB pieces.

Reported per client (medians over the runs):

- **wall s**: process start to exit;
- **capacity**: payload / (wall x the sum of the seeders' caps): the share of what the swarm
  could give that the client took, start-up included;
- **steady**: the same between 10% and 90% of the payload delivered (the proxy counts the
  bytes its links hand to the client, sampled every 20 ms): the middle, without start-up
  and tail;
- **tail s**: from 90% of the payload delivered to the client's exit;
- **sent/payload**: what the seeders uploaded (payload counters) over the payload size:
  1.00 means no block was sent twice;
- **CPU s**, **peak anon MiB**: the client's process tree (``common.run_measured``).

The share of the machine other processes used during each run is printed and kept: the
machine is shared, and a busy neighbour costs a client on two cores more than it costs the
rate-capped seeders.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import mmap
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
from common import Measurement, MiB, median, mib

KiB = 1024
MP_IP = "127.0.0.20"
LT_IP = "127.0.0.21"
ARIA2_IP = "127.0.0.22"
TRACKER_IP = "127.0.0.1"
SEEDER_NET = 1  # seeders on 127.0.1.i
PROXY_NET = 2  # their links on 127.0.2.i
LINK_BUFFER = 4 * MiB  # bytes a link holds per direction before it stops reading
JITTER = 0.1  # each chunk's one-way delay varies by up to this share of it
SAMPLE_EVERY = 0.02
LT = "libtorrent"
ARIA2 = "aria2"


# -- presets --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeder:
    cap: int  # upload cap, bytes/s
    rtt: float  # round trip through its link, seconds
    partial: bool = False  # holds a random half of the pieces


@dataclass(frozen=True)
class Preset:
    key: str
    title: str
    size: int
    piece: int
    seeders: tuple[Seeder, ...]

    @property
    def capacity(self) -> int:
        return sum(s.cap for s in self.seeders)


def spread_caps(n: int, low: int, high: int, total: int) -> list[int]:
    """``n`` caps from ``low`` to ``high`` summing to ``total``: low + (high - low) x^p for x
    evenly spaced in [0, 1], with the exponent p that gives the sum."""
    xs = [i / (n - 1) for i in range(n)]
    lo_p, hi_p = 0.01, 100.0
    for _ in range(100):  # bisection on p: the sum falls as p grows
        p = (lo_p + hi_p) / 2
        s = sum(low + (high - low) * x**p for x in xs)
        lo_p, hi_p = (p, hi_p) if s > total else (lo_p, p)
    return [int(low + (high - low) * x**p) for x in xs]


def presets(quick: bool) -> dict[str, Preset]:
    rng = random.Random(18)
    scale = 4 if quick else 1

    def rtts(n: int, low: float, high: float) -> list[float]:
        out = [low + (high - low) * i / max(1, n - 1) for i in range(n)]
        rng.shuffle(out)  # no link between a seeder's cap and its distance
        return out

    caps24 = spread_caps(24, 256 * KiB, 4 * MiB, 40 * MiB)
    mixed = tuple(Seeder(c, r) for c, r in zip(caps24, rtts(24, 0.030, 0.300), strict=True))
    partial_idx = set(rng.sample(range(24), 8))
    small = tuple(
        Seeder(256 * KiB + (256 * KiB * i) // 47, r) for i, r in enumerate(rtts(48, 0.100, 0.300))
    )
    return {
        "mixed24": Preset(
            "mixed24",
            "24 seeders, 256 KiB/s-4 MiB/s (40 MiB/s), 30-300 ms",
            256 * MiB // scale,
            MiB,
            mixed,
        ),
        "small48": Preset(
            "small48", "48 seeders, 256-512 KiB/s, 100-300 ms", 192 * MiB // scale, 256 * KiB, small
        ),
        "partial": Preset(
            "partial",
            "mixed24, 8 of the 24 seeders hold half the pieces",
            256 * MiB // scale,
            MiB,
            tuple(Seeder(s.cap, s.rtt, i in partial_idx) for i, s in enumerate(mixed)),
        ),
        "one300": Preset(
            "one300",
            "one 4 MiB/s seeder, 300 ms",
            64 * MiB // scale,
            MiB,
            (Seeder(4 * MiB, 0.300),),
        ),
    }


# -- the latency proxy (its own process) ------------------------------------------------------


@dataclass(frozen=True)
class LinkSpec:
    listen: tuple[str, int]  # where clients connect (port 0: any)
    target: tuple[str, int]  # the seeder
    rtt: float


class _Counter:
    """Bytes the links delivered towards the clients, published in a shared 8-byte file."""

    def __init__(self, path: str) -> None:
        self.total = 0
        self.fd = os.open(path, os.O_RDWR)
        self.map = mmap.mmap(self.fd, 8)

    def publish(self) -> None:
        struct.pack_into("<Q", self.map, 0, self.total)


async def _pipe(
    src: asyncio.StreamReader, dst: asyncio.StreamWriter, one_way: float, counter: _Counter | None
) -> None:
    """Copy ``src`` to ``dst``, each chunk ``one_way`` seconds (+ jitter) late, in order,
    holding at most LINK_BUFFER bytes: beyond that ``src`` is not read (back-pressure).
    ``counter`` counts what reaches ``dst`` (the seeder-to-client direction)."""
    loop = asyncio.get_running_loop()
    rng = random.Random()
    q: deque[tuple[float, bytes]] = deque()
    held = 0
    room = asyncio.Event()
    room.set()
    arrived = asyncio.Event()
    eof = False

    async def read() -> None:
        nonlocal held, eof
        last = 0.0
        try:
            while True:
                await room.wait()
                data = await src.read(256 * KiB)
                due = max(last, loop.time() + one_way * (1 + JITTER * (2 * rng.random() - 1)))
                last = due
                q.append((due, data))
                arrived.set()
                if not data:
                    return
                held += len(data)
                if held >= LINK_BUFFER:
                    room.clear()
        except (ConnectionError, OSError):
            q.append((loop.time(), b""))
            arrived.set()

    async def write() -> None:
        nonlocal held
        while True:
            while not q:
                arrived.clear()
                await arrived.wait()
            delay = q[0][0] - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            out: list[bytes] = []
            while q and q[0][0] <= now:
                data = q.popleft()[1]
                if not data:
                    if out:
                        dst.write(b"".join(out))
                    with contextlib.suppress(OSError):
                        await dst.drain()
                        dst.write_eof()
                    return
                out.append(data)
            if out:
                n = sum(map(len, out))
                dst.write(b"".join(out))
                await dst.drain()
                held -= n
                if counter is not None:
                    counter.total += n
                if held < LINK_BUFFER:
                    room.set()

    reader = asyncio.ensure_future(read())
    try:
        await write()
    except (ConnectionError, OSError):
        pass
    finally:
        reader.cancel()


async def _serve_link(link: LinkSpec, counter: _Counter) -> tuple[str, int]:
    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        client_host = cw.get_extra_info("peername")[0]
        try:
            # From the client's address: the seeder sees one address per client.
            sr, sw = await asyncio.open_connection(*link.target, local_addr=(client_host, 0))
        except OSError:
            cw.close()
            return
        one_way = link.rtt / 2
        try:
            await asyncio.gather(_pipe(cr, sw, one_way, None), _pipe(sr, cw, one_way, counter))
        finally:
            for w in (cw, sw):
                w.close()

    server = await asyncio.start_server(handle, *link.listen, backlog=64)
    host, port = server.sockets[0].getsockname()[:2]
    return host, port


def proxy_main(argv: Sequence[str]) -> int:
    """``wan.py proxy LINKS_JSON COUNTER_FILE``: serve every link; print their addresses as one
    JSON line, then run until killed, publishing the bytes delivered to clients every 10 ms."""
    links = [
        LinkSpec(tuple(d["listen"]), tuple(d["target"]), d["rtt"]) for d in json.loads(argv[0])
    ]
    counter = _Counter(argv[1])

    async def run() -> None:
        addrs = [await _serve_link(link, counter) for link in links]
        print(json.dumps(addrs), flush=True)
        while True:
            await asyncio.sleep(0.01)
            counter.publish()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


@contextlib.contextmanager
def run_proxy(
    links: list[LinkSpec], counter: Path
) -> Iterator[tuple[list[tuple[str, int]], subprocess.Popen[str]]]:
    spec = json.dumps([{"listen": lk.listen, "target": lk.target, "rtt": lk.rtt} for lk in links])
    counter.write_bytes(bytes(8))
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "proxy", spec, str(counter)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the latency proxy did not start")
        yield [(h, int(p)) for h, p in json.loads(line)], proc
    finally:
        proc.terminate()
        proc.wait(10)


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        f = fh.read().rsplit(b")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / common.CLK


# -- the swarm ----------------------------------------------------------------------------------


def announce_as(
    tracker_host: str, tracker_port: int, info_hash: bytes, addr: tuple[str, int], n: int
) -> None:
    """Announce a seeder at ``addr`` to opentracker, from that address (it records the address
    a request comes from)."""
    q = (
        f"info_hash={urllib.parse.quote_from_bytes(info_hash, safe='')}"
        f"&peer_id=-WAN001-{n:012d}&port={addr[1]}&uploaded=0&downloaded=0&left=0"
        "&compact=1&numwant=0&event=started"
    )
    conn = http.client.HTTPConnection(
        tracker_host, tracker_port, timeout=5, source_address=(addr[0], 0)
    )
    try:
        conn.request("GET", f"/announce?{q}")
        body = conn.getresponse().read()
    finally:
        conn.close()
    if b"failure" in body:
        raise RuntimeError(f"opentracker refused {addr}: {body!r}")


@dataclass
class SwarmSetup:
    preset: Preset
    torrent: Path
    payload_root: Path
    tracker_url: str
    seeders: list[Any]  # tests.swarm.LtPeer
    proxy: subprocess.Popen[str]
    delivered: Path  # the proxy's counter of bytes delivered to clients


@contextlib.contextmanager
def wan_swarm(workdir: Path, preset: Preset) -> Iterator[SwarmSetup]:
    from vs_anchors import with_announce

    from tests.interop.opentracker import run_opentracker
    from tests.swarm import (
        LtPeer,
        info_hash,
        loopback_ip,
        make_payload,
        make_torrent,
    )

    seed_dir = workdir / "seed"
    print(f"[{preset.key}] writing {common.human(preset.size)} ...", file=sys.stderr)
    payload = make_payload(seed_dir, preset.size, name="payload.bin")
    bare = make_torrent(payload.root, preset.piece)
    ih = info_hash(bare)
    n_pieces = -(-preset.size // preset.piece)
    rng = random.Random(7)
    peers: list[Any] = []
    try:
        with run_opentracker([ih], host=TRACKER_IP) as tracker:
            torrent = workdir / f"{preset.key}.torrent"
            data = with_announce(bare, tracker.announce_url)
            torrent.write_bytes(data)
            for i, s in enumerate(preset.seeders):
                have = sorted(rng.sample(range(n_pieces), n_pieces // 2)) if s.partial else None
                peers.append(
                    LtPeer(
                        data,
                        payload.save_dir,
                        ip=loopback_ip(i + 1, SEEDER_NET),
                        have_pieces=have,
                        upload_rate_limit=s.cap,
                        use_trackers=False,
                        trust_data=have is None,
                        pex=False,
                        # libtorrent's default, as on the Internet (tests.swarm turns it on)
                        settings={"allow_multiple_connections_per_ip": False},
                    )
                )
            for p in peers:
                p.launch()
            for p in peers:
                p.wait_ready(120)
            links = [
                LinkSpec((loopback_ip(i + 1, PROXY_NET), 0), (p.ip, p.port), s.rtt)
                for i, (p, s) in enumerate(zip(peers, preset.seeders, strict=True))
            ]
            with run_proxy(links, workdir / "delivered") as (addrs, proc):
                for n, a in enumerate(addrs):
                    announce_as(tracker.host, tracker.port, ih, a, n)
                print(
                    f"[{preset.key}] {len(peers)} seeders behind their links, announced to "
                    f"{tracker.announce_url}",
                    file=sys.stderr,
                )
                yield SwarmSetup(
                    preset,
                    torrent,
                    payload.root,
                    tracker.announce_url,
                    peers,
                    proc,
                    workdir / "delivered",
                )
    finally:
        for p in peers:
            p.begin_close()
        for p in peers:
            with contextlib.suppress(Exception):
                p.finish_close()
        shutil.rmtree(seed_dir, ignore_errors=True)


class UploadSampler:
    """What the links delivered to the client, sampled in a thread from the proxy's counter
    (libtorrent updates its own counters only once a second): (seconds, bytes) since start.
    The seeders' payload counters, read at start and :meth:`stop`, say what they sent."""

    def __init__(self, seeders: list[Any], delivered: Path) -> None:
        self.seeders = seeders
        self.fh = open(delivered, "rb")  # noqa: SIM115 (closed in stop)
        self.map = mmap.mmap(self.fh.fileno(), 8, access=mmap.ACCESS_READ)
        self.sent0 = self.sent()
        self.base = self.delivered()
        self.t0 = time.perf_counter()
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sent(self) -> int:
        return sum(int(p.handle.status().total_payload_upload) for p in self.seeders)

    def delivered(self) -> int:
        return int(struct.unpack_from("<Q", self.map, 0)[0])

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self.samples.append((time.perf_counter() - self.t0, self.delivered() - self.base))

    def stop(self) -> int:
        """Stop sampling; the seeders' payload upload since the start."""
        self._stop.set()
        self._thread.join()
        time.sleep(1.2)  # libtorrent's counters move once a second
        sent = self.sent() - self.sent0
        self.map.close()
        self.fh.close()
        return sent

    def when(self, nbytes: float) -> float | None:
        """When the seeders had sent ``nbytes`` (linear between samples)."""
        prev_t, prev_b = 0.0, 0
        for t, b in self.samples:
            if b >= nbytes:
                if b == prev_b:
                    return t
                return prev_t + (t - prev_t) * (nbytes - prev_b) / (b - prev_b)
            prev_t, prev_b = t, b
        return None


# -- clients ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    kind: str
    jobs: int = 0

    @property
    def label(self) -> str:
        return f"mptorrent -j {self.jobs}" if self.kind == "mptorrent" else self.kind


def client_cmd(client: Client, setup: SwarmSetup, out_dir: Path) -> list[str]:
    from vs_anchors import aria2_binary, free_port

    torrent = setup.torrent
    if client.kind == "mptorrent":
        return [
            sys.executable,
            "-P",
            "-m",
            "mptorrent",
            "fetch",
            str(torrent),
            "-o",
            str(out_dir / "payload.bin"),
            "-j",
            str(client.jobs),
            "--bind",
            MP_IP,
            "--port",
            "0",
            "--no-dht",
            "-q",
        ]
    if client.kind == LT:
        vs = Path(__file__).resolve().parent / "vs_anchors.py"
        return [
            sys.executable,
            str(vs),
            "lt-leech",
            str(torrent),
            str(out_dir),
            "--tracker",
            setup.tracker_url,
            "--ip",
            LT_IP,
        ]
    aria2 = aria2_binary()
    assert aria2 is not None
    return [
        aria2,
        "--no-conf=true",
        f"--dir={out_dir}",
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--seed-time=0",
        f"--interface={ARIA2_IP}",
        f"--listen-port={free_port(ARIA2_IP)}",
        "--disable-ipv6=true",
        "--file-allocation=falloc",
        "--allow-overwrite=true",
        "--auto-file-renaming=false",
        "--bt-save-metadata=false",
        "--summary-interval=0",
        "--console-log-level=error",
        "--quiet=true",
        "--bt-max-peers=0",
        str(torrent),
    ]


def download(
    client: Client, setup: SwarmSetup, out_dir: Path, *, timeout: float
) -> tuple[Measurement, dict[str, Any]]:
    from vs_anchors import client_env, same_output

    preset = setup.preset
    out_dir.mkdir(parents=True)
    try:
        cmd = client_cmd(client, setup, out_dir)
        proxy_cpu0 = proc_cpu(setup.proxy.pid)
        sampler = UploadSampler(setup.seeders, setup.delivered)
        try:
            m = common.run_measured(cmd, timeout=timeout, env=client_env())
        finally:
            sent = sampler.stop()
        if not same_output(out_dir / "payload.bin", setup.payload_root):
            raise RuntimeError(f"{client.label}: the download differs from the original")
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    size, cap = preset.size, preset.capacity
    t10, t90 = sampler.when(0.1 * size), sampler.when(0.9 * size)
    figures: dict[str, Any] = {
        "wall_s": m.wall_s,
        "capacity": size / (m.wall_s * cap),
        "steady": 0.8 * size / ((t90 - t10) * cap)
        if t10 is not None and t90 and t90 > t10
        else float("nan"),
        "tail_s": m.wall_s - t90 if t90 is not None else float("nan"),
        "sent_ratio": sent / size,
        "cpu_s": m.cpu_s,
        "peak_anon": float(m.mem.anon),
        "proxy_cpu_s": proc_cpu(setup.proxy.pid) - proxy_cpu0,
        "background": m.background_load,
    }
    # the delivery curve, every 0.25 s, for a look at start-up, dips and the tail
    figures["curve"] = [
        round(b / MiB, 2) for t, b in sampler.samples[:: max(1, round(0.25 / SAMPLE_EVERY))]
    ]
    return m, figures


def run_preset(
    workdir: Path,
    preset: Preset,
    clients: list[Client],
    *,
    runs: int,
    settle: float,
    timeout: float,
) -> dict[Client, list[dict[str, float]]]:
    out: dict[Client, list[dict[str, float]]] = {c: [] for c in clients}
    with wan_swarm(workdir, preset) as setup:
        n = 0
        for r in range(runs):
            shift = r % len(clients)
            for c in clients[shift:] + clients[:shift]:
                common.wait_for_quiet(settle)
                _, f = download(c, setup, workdir / f"dl-{n}", timeout=timeout)
                n += 1
                out[c].append(f)
                print(
                    f"[{preset.key}] run {r + 1}/{runs} {c.label}: {f['wall_s']:.2f} s, "
                    f"capacity {f['capacity']:.2f}, steady {f['steady']:.2f}, tail "
                    f"{f['tail_s']:.2f} s, sent {f['sent_ratio']:.3f}x, CPU {f['cpu_s']:.2f} s, "
                    f"anon {mib(f['peak_anon'])} MiB, proxy CPU {f['proxy_cpu_s']:.2f} s, "
                    f"background {f['background']:.0%}",
                    file=sys.stderr,
                )
    return out


HEADERS = [
    "preset",
    "client",
    "wall s",
    "capacity",
    "steady",
    "tail s",
    "sent/payload",
    "CPU s",
    "peak anon MiB",
    "proxy CPU s",
    "worst bg load",
]


def summarize(preset: Preset, client: Client, fs: list[dict[str, float]]) -> dict[str, Any]:
    row: dict[str, Any] = {"preset": preset.key, "client": client.label, "runs": len(fs)}
    for k in (
        "wall_s",
        "capacity",
        "steady",
        "tail_s",
        "sent_ratio",
        "cpu_s",
        "peak_anon",
        "proxy_cpu_s",
    ):
        row[k] = median(f[k] for f in fs)
    row["max_background"] = max(f["background"] for f in fs)
    row["samples"] = fs
    return row


def table_rows(rows: list[dict[str, Any]]) -> list[list[object]]:
    return [
        [
            r["preset"],
            r["client"],
            f"{r['wall_s']:.2f}",
            f"{r['capacity']:.2f}",
            f"{r['steady']:.2f}",
            f"{r['tail_s']:.2f}",
            f"{r['sent_ratio']:.3f}",
            f"{r['cpu_s']:.2f}",
            mib(r["peak_anon"]),
            f"{r['proxy_cpu_s']:.2f}",
            f"{r['max_background']:.0%}",
        ]
        for r in rows
    ]


def main(argv: list[str] | None = None) -> int:
    from vs_anchors import aria2_binary, on_sigterm

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--preset",
        default="mixed24,one300",
        help="comma-separated: mixed24, small48, partial, one300",
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jobs", default="1,2,4,8", help="mptorrent worker counts")
    ap.add_argument(
        "--clients",
        default=f"mptorrent,{LT},{ARIA2}",
        help="comma-separated: mptorrent, libtorrent, aria2 (aria2 where installed)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a quarter of each payload, one run, -j 2 only unless --jobs",
    )
    common.add_run_options(ap, settle=5.0)
    ap.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/wan.json)")
    args = ap.parse_args(argv)
    on_sigterm()
    table = presets(args.quick)
    keys = [k.strip() for k in args.preset.split(",") if k.strip()]
    bad = [k for k in keys if k not in table]
    if bad:
        raise SystemExit(f"unknown preset {bad[0]!r} (one of {', '.join(table)})")
    runs = 1 if args.quick and "--runs" not in (argv or sys.argv) else args.runs
    jobs_text = "2" if args.quick and "--jobs" not in (argv or sys.argv) else args.jobs
    kinds = [k.strip() for k in args.clients.split(",") if k.strip()]
    clients: list[Client] = []
    for kind in kinds:
        if kind == "mptorrent":
            clients += [Client("mptorrent", int(j)) for j in jobs_text.split(",")]
        elif kind == LT or (kind == ARIA2 and aria2_binary()):
            clients.append(Client(kind))
        elif kind != ARIA2:
            raise SystemExit(f"unknown client {kind!r}")
    args.dir.mkdir(parents=True, exist_ok=True)
    common.check_space(args.dir, 2 * max(table[k].size for k in keys))
    workdir = Path(tempfile.mkdtemp(prefix="mptorrent-wan-", dir=args.dir))
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for k in keys:
            res = run_preset(
                workdir, table[k], clients, runs=runs, settle=args.settle, timeout=args.timeout
            )
            rows += [summarize(table[k], c, fs) for c, fs in res.items()]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    env = common.environment()
    print(f"\nWAN presets, {env['cpus']} CPUs, median of {runs} runs\n")
    text = common.print_table(HEADERS, table_rows(rows))
    common.write_json(
        "wan",
        {
            **env,
            "runs": runs,
            "quick": args.quick,
            "elapsed_s": time.monotonic() - started,
            "presets": {
                k: {
                    "title": table[k].title,
                    "size_bytes": table[k].size,
                    "piece_length": table[k].piece,
                    "capacity": table[k].capacity,
                    "seeders": [vars(s) for s in table[k].seeders],
                }
                for k in keys
            },
            "results": rows,
            "table": text,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "proxy":
        sys.exit(proxy_main(sys.argv[2:]))
    sys.exit(main())
