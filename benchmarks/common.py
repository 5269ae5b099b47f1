"""Shared helpers for the fetch benchmarks: process-tree memory, timing, results.

Memory is sampled from /proc every ~50 ms over the whole process tree of the measured
command (coordinator, workers, multiprocessing helpers) and summed per sample; the peak of
the sums is reported for two figures:

- ``RssAnon``: anonymous memory, what the client itself allocated (heap, buffers);
- ``VmRSS``: everything resident, which also counts the pages of memory-mapped output files.
  Those are page cache, shared with the kernel, and grow with the file: not the client's.

Both count a page shared by several processes (fork's copy-on-write) once per process, so
the sums overstate a forked tree somewhat; ``--pss`` adds proportional anonymous memory
(``Pss_Anon`` of /proc/PID/smaps_rollup), which splits shared pages fairly but costs more to
read.

Also the libtorrent yardstick, in its own process so it can be measured the same way:

    python3 benchmarks/common.py lt-leech TORRENT SAVE_DIR HOST:PORT [HOST:PORT ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # for ``tests.swarm`` when run as a script
    sys.path.insert(0, str(REPO))

RESULTS_DIR = REPO / "benchmarks" / "results"
MiB = 1024 * 1024
CLK = os.sysconf("SC_CLK_TCK")
LT_LEECHER_IP = "127.0.0.20"


# -- sizes ----------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """500M, 2G (powers of 1000, as in "a 500 MB file"), or 64MiB, 1GiB (powers of 1024)."""
    t = text.strip().upper().removesuffix("B")
    binary = t.endswith("I")
    t = t.removesuffix("I")
    base = 1024 if binary else 1000
    mult = {"K": base, "M": base**2, "G": base**3, "T": base**4}.get(t[-1:], 1)
    num = t[:-1] if t[-1:] in "KMGT" else t
    return int(float(num) * mult)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def check_space(directory: Path, need: int) -> None:
    """Refuse to start when ``directory``'s filesystem lacks ``need`` bytes (plus 1 GiB)."""
    usage = shutil.disk_usage(directory)
    print(
        f"{directory}: {human(usage.free)} free of {human(usage.total)}; "
        f"this run needs about {human(need)}",
        file=sys.stderr,
    )
    if usage.free < need + 1024 * MiB:
        raise SystemExit(f"not enough space in {directory}: need {human(need)} and 1 GiB spare")


# -- the process tree and its memory --------------------------------------------------------


def _parents() -> dict[int, int]:
    out: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue  # it exited meanwhile
        # the command name may hold spaces and parentheses: split after the last ')'
        out[int(name)] = int(stat.rsplit(b")", 1)[1].split()[1])
    return out


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants alive now."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _status_kib(pid: int, keys: Sequence[bytes]) -> list[int] | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            text = fh.read()
    except OSError:
        return None
    found = dict.fromkeys(keys, 0)
    for line in text.splitlines():
        key, _, rest = line.partition(b":")
        if key in found:
            found[key] = int(rest.split()[0])
    return [found[k] for k in keys]


def pss_anon_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss_Anon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class MemPeak:
    anon: int = 0  # bytes: peak over samples of the tree's summed RssAnon
    rss: int = 0  # bytes: same for VmRSS
    pss_anon: int | None = None  # bytes: same for Pss_Anon, when asked for
    samples: int = 0
    max_procs: int = 0


class TreeSampler:
    """Samples the memory of ``root``'s process tree in a thread until :meth:`stop`."""

    def __init__(self, root: int, interval: float = 0.05, pss: bool = False) -> None:
        self.root = root
        self.interval = interval
        self.pss = pss
        self.peak = MemPeak(pss_anon=0 if pss else None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def sample(self) -> None:
        anon = rss = pss = procs = 0
        for pid in process_tree(self.root):
            vals = _status_kib(pid, (b"RssAnon", b"VmRSS"))
            if vals is None:
                continue
            procs += 1
            anon += vals[0]
            rss += vals[1]
            if self.pss:
                pss += pss_anon_kib(pid)
        p = self.peak
        p.samples += 1
        p.max_procs = max(p.max_procs, procs)
        p.anon = max(p.anon, anon * 1024)
        p.rss = max(p.rss, rss * 1024)
        if p.pss_anon is not None:
            p.pss_anon = max(p.pss_anon, pss * 1024)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            self.sample()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t0)))

    def stop(self) -> MemPeak:
        self._stop.set()
        self._thread.join()
        return self.peak


# -- CPU: ours and the rest of the machine's ------------------------------------------------


def system_busy() -> float:
    """CPU-seconds the whole machine spent busy so far (all but idle and iowait)."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:9]]
    return (sum(f) - f[3] - f[4]) / CLK


def own_cpu() -> float:
    """CPU-seconds of this process (seeders included) and its reaped children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def add_run_options(ap: argparse.ArgumentParser, *, settle: float) -> None:
    """--dir, --settle and --timeout, as every download benchmark here takes them."""
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                    help="where data and downloads go (default: the temp folder)")  # fmt: skip
    ap.add_argument("--settle", type=float, default=settle,
                    help="before each run, wait up to this many s for a quiet machine")  # fmt: skip
    ap.add_argument("--timeout", type=float, default=600.0, help="per download, seconds")


def wait_for_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (at most ``max_wait`` s) until other processes use under ``threshold`` of the
    machine; returns the load last seen.  The machine is shared: a busy neighbour on two
    cores halves any throughput figure."""
    deadline = time.monotonic() + max_wait
    ncpu = os.cpu_count() or 1
    while True:
        b0, c0, t0 = system_busy(), own_cpu(), time.monotonic()
        time.sleep(0.3)
        load = max(0.0, system_busy() - b0 - (own_cpu() - c0)) / ((time.monotonic() - t0) * ncpu)
        if load < threshold or time.monotonic() > deadline:
            return load


# -- running a measured command -------------------------------------------------------------


@dataclass
class Measurement:
    wall_s: float  # from start to exit of the process
    returncode: int
    mem: MemPeak
    cpu_s: float  # CPU-seconds of the measured tree (reaped children)
    background_load: float  # share of the machine others used meanwhile
    stdout: str = ""
    stderr: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def run_measured(
    cmd: Sequence[str],
    *,
    timeout: float,
    interval: float = 0.05,
    pss: bool = False,
    env: Mapping[str, str] | None = None,
) -> Measurement:
    """Run ``cmd``, sampling its process tree's memory; raise if it fails or times out."""
    before = os.times()
    b0 = system_busy()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=None if env is None else dict(env), cwd=REPO,
    )  # fmt: skip
    sampler = TreeSampler(proc.pid, interval, pss).start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        sampler.stop()
        raise RuntimeError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}") from None
    wall = time.perf_counter() - t0
    mem = sampler.stop()
    after = os.times()
    tree_cpu = (after.children_user + after.children_system) - (
        before.children_user + before.children_system
    )
    ours = (after.user + after.system) - (before.user + before.system)  # seeders, sampler
    ncpu = os.cpu_count() or 1
    others = max(0.0, system_busy() - b0 - tree_cpu - ours) / (wall * ncpu)
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd)}\n{err[-2000:]}")
    return Measurement(wall, proc.returncode, mem, tree_cpu, others, out, err)


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


# -- commands under test --------------------------------------------------------------------


def mptorrent_fetch_cmd(
    torrent: Path, out: Path, peers: Iterable[tuple[str, int]], jobs: int
) -> list[str]:
    cmd = [sys.executable, "-m", "mptorrent", "fetch", str(torrent), "-o", str(out),
           "-j", str(jobs), "--no-trackers", "--no-dht", "-q"]  # fmt: skip
    for host, port in peers:
        cmd += ["--peer", f"{host}:{port}"]
    return cmd


def lt_leech_cmd(torrent: Path, save_dir: Path, peers: Iterable[tuple[str, int]]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "lt-leech", str(torrent),
            str(save_dir), *(f"{h}:{p}" for h, p in peers)]  # fmt: skip


def transfer_seconds(m: Measurement) -> float | None:
    """The client's own download time: mptorrent's summary line or the leecher's JSON."""
    if "seconds" in m.extra:
        return float(m.extra["seconds"])
    for line in reversed(m.stderr.splitlines()):
        if line.startswith("done: "):
            try:
                return float(line.split(" in ", 1)[1].split(" s,", 1)[0])
            except (IndexError, ValueError):
                return None
    return None


def lt_leech_main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="common.py lt-leech")
    ap.add_argument("torrent", type=Path)
    ap.add_argument("save_dir", type=Path)
    ap.add_argument("peers", nargs="+")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args(argv)
    from tests.swarm import run_lt_leecher

    peers = [(h, int(p)) for h, _, p in (a.rpartition(":") for a in args.peers)]
    args.save_dir.mkdir(parents=True, exist_ok=True)
    secs = run_lt_leecher(
        args.torrent.read_bytes(), args.save_dir, peers, ip=LT_LEECHER_IP, timeout=args.timeout
    )
    print(json.dumps({"seconds": secs}))
    return 0


def run_lt_leecher_measured(
    torrent: Path, save_dir: Path, peers: Iterable[tuple[str, int]], *, timeout: float,
    pss: bool = False,
) -> Measurement:  # fmt: skip
    m = run_measured(lt_leech_cmd(torrent, save_dir, peers), timeout=timeout, pss=pss)
    m.extra = json.loads(m.stdout.strip().splitlines()[-1])
    return m


# -- results --------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    try:
        import libtorrent as lt

        lt_version: str | None = lt.__version__
    except ImportError:
        lt_version = None
    import mptorrent

    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
            text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except OSError:
        commit = ""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "mptorrent": mptorrent.__version__,
        "libtorrent": lt_version,
        "git": commit,
        "start_method": os.environ.get("MPTORRENT_START_METHOD") or "default",
    }


def measurement_dict(m: Measurement) -> dict[str, Any]:
    d = asdict(m)
    d.pop("stdout")
    d.pop("stderr")
    d["transfer_s"] = transfer_seconds(m)
    return d


def write_json(name: str, data: Mapping[str, Any], out: Path | None = None) -> Path:
    path = out or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return path


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table (numbers right-aligned); printed and returned."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(
        "---" if i == 0 else "---:" for i in range(len(headers))
    ) + "|"]  # fmt: skip
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    text = "\n".join(lines)
    print(text)
    return text


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / MiB:.1f}"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "lt-leech":
        sys.exit(lt_leech_main(sys.argv[2:]))
    sys.exit(__doc__)
