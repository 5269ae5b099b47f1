"""Where the CPU goes: one mptorrent fetch of 1 GiB, profiled, per category and per GiB.

    python3 benchmarks/profile_fetch.py                    # 1 GiB, 1 MiB pieces, -j 1 and -j 2
    python3 benchmarks/profile_fetch.py --jobs 2 --piece-size 256KiB --rate 500

The swarm is the one of vs_anchors.py (four libtorrent seeders on 127.0.0.11-14 behind
opentracker, data checked and in the page cache), and the fetch is the real CLI,
``python -m mptorrent fetch T -o OUT -j N --bind 127.0.0.20 --port 0 -q``.  For each -j:

1. a plain run: wall time, user and system CPU of the whole process tree (rusage of reaped
   children), split into the coordinator and the workers by sampling /proc/PID/stat;
2. a run under ``py-spy record --subprocesses --nonblocking --format raw`` (the sampling
   profiler reads the processes' memory; nothing changes inside them).  Each sample's stack is
   put in one category by its innermost frame that a rule knows (the mptorrent source line
   decides where one function does two things, e.g. ``recv_into`` vs the rest of
   ``PeerSession.receive``).  A category's share of a process role's samples, times that
   role's CPU in the plain run, gives its seconds; divided by the GiB fetched, s/GiB;
3. ``perf stat`` (task-clock, page faults, context switches of the whole tree), where perf
   works, and ``perf record -e cpu-clock`` for the native view: kernel (TCP, page cache and
   faults), SHA-1 in libcrypto, memmove in libc, the interpreter.

py-spy: ``pip install py-spy`` (a registry package with its binary).  Each missing tool's part
is skipped.  JSON goes to benchmarks/results/profile_fetch.json (``--keep-raw``: the raw
py-spy stacks next to it).
"""

from __future__ import annotations

import argparse
import hashlib
import linecache
import mmap
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
import vs_anchors
from common import REPO, MiB
from vs_anchors import Client, GiB, SwarmSetup, Workload

COORD, WORKERS = "coordinator", "workers"

# (category, group): groups are the headings of the summary; categories the rows.
CATEGORIES: list[tuple[str, str]] = [
    ("receive: recv_into", "receive"),
    ("receive: buffer and rate bookkeeping", "receive"),
    ("parse: wire.next_event", "parse"),
    ("parse: event dispatch (worker._process)", "parse"),
    ("copy block into piece buffer", "copy to piece buffer"),
    ("block bookkeeping (_on_block)", "copy to piece buffer"),
    ("piece buffer allocation", "copy to piece buffer"),
    ("hash: SHA-1", "hash"),
    ("mmap: prefault (MADV_POPULATE_WRITE)", "copy into mmap"),
    ("mmap: new pages (pwrite of zeros)", "copy into mmap"),
    ("mmap: piece lock", "copy into mmap"),
    ("mmap: copy piece", "copy into mmap"),
    ("mmap: other", "copy into mmap"),
    ("pwrite: write piece", "copy into mmap"),
    ("requests: pick blocks, build messages", "requests and sends"),
    ("send (sock.send)", "requests and sends"),
    ("pending-set scans (cancels, timeouts)", "requests and sends"),
    ("inter-process messages (queues, pickling)", "inter-process messages"),
    ("thread hand-off (queue.Queue, Condition)", "inter-process messages"),
    ("event loop: select()", "event loop"),
    ("event loop: loop body, timers", "event loop"),
    ("HAVE broadcast", "event loop"),
    ("upload (serving peers)", "event loop"),
    ("coordinator: picker", "coordinator and progress"),
    ("coordinator: loop and message handling", "coordinator and progress"),
    ("progress bar", "coordinator and progress"),
    ("trackers", "coordinator and progress"),
    ("start-up: imports", "start-up and shutdown"),
    ("start-up: torrent, storage, workers", "start-up and shutdown"),
    ("shutdown: unmap the output (munmap)", "start-up and shutdown"),
    ("shutdown: other", "start-up and shutdown"),
    ("other", "other"),
]
GROUP = dict(CATEGORIES)

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*):(?P<line>\d+)\)$")
_IDLE_LEAVES = {("threading.py", "Condition.wait"), ("threading.py", "Event.wait")}


def _src(file: str, line: int) -> str:
    if not file.startswith("mptorrent/"):
        return ""
    return linecache.getline(str(REPO / file), line)


# Lines of the block path that worker._process runs inline for every received block.
_BLOCK_PATH = ("type(ev) is wire.Piece", "blocks += 1", "index, begin, block = ev",
               "pending.discard", "jobs.get(index)", "job is None", "blk = begin", "job.received",
               "n = len(block)", "job.nreceived", "job.senders", "job.last_progress",
               "self.downloaded", "job.requested[blk]", "continue")  # fmt: skip


def classify_frame(file: str, func: str, line: int) -> str | None:
    """The category of a stack whose innermost known frame is this one, or None to look
    further out."""
    short = func.rsplit(".", 1)[-1]
    owner = func.split(".<locals>")[0].rsplit(".", 1)[-1]  # a comprehension's function
    if file == "selectors.py":
        return "event loop: select()" if "select" in func else None
    if file in ("pickle.py", "copyreg.py") or (
        file.startswith("multiprocessing/")
        and file not in ("multiprocessing/process.py", "multiprocessing/popen_fork.py",
                         "multiprocessing/context.py", "multiprocessing/util.py")
    ):  # fmt: skip
        return "inter-process messages (queues, pickling)"
    if file in ("queue.py", "threading.py"):
        return "thread hand-off (queue.Queue, Condition)" if "Thread." not in func else None
    if file.startswith("tqdm/"):
        return "progress bar"
    if file.startswith("<frozen importlib") or file.startswith("importlib/"):
        return "start-up: imports"
    if not file.startswith("mptorrent/"):
        return None
    # The module's own name (the layer folders are not needed to tell them apart); the
    # worker's process loop and its download policy share the worker's categories.
    mod = file.removeprefix("mptorrent/").removesuffix(".py").rsplit("/", 1)[-1]
    text = _src(file, line)
    if mod == "download" and owner == "receive":
        if ".buf[" in text:
            return "copy block into piece buffer"
        return "block bookkeeping (_on_block)"
    if mod == "hashing":  # proto/hashing.py: piece verification behind its interface
        return "hash: SHA-1"
    mod = {"process": "worker", "download": "worker", "ledger": "wire"}.get(mod, mod)
    if mod == "peer":
        if short == "receive":
            return "receive: recv_into" if "recv_into" in text else (
                "receive: buffer and rate bookkeeping")  # fmt: skip
        if short == "flush":
            return (
                "send (sock.send)" if ".send(" in text else "requests: pick blocks, build messages"
            )
        if short in ("rate", "update_depth"):
            return "event loop: loop body, timers"
        if short in ("start_connect", "finish_connect", "accepted", "greet", "__init__"):
            return "start-up: torrent, storage, workers"
        if short == "close":
            return "shutdown: other"
        return "requests: pick blocks, build messages"
    if mod == "wire":
        if short in ("get_buffer", "buffer_updated", "_compact", "_grow", "_need"):
            return "receive: buffer and rate bookkeeping"
        if short in ("send", "piece_header") or short.startswith(("_send_", "_check_")):
            return "requests: pick blocks, build messages"
        return "parse: wire.next_event"
    if mod == "storage":
        if short == "_prefault_write":
            return "mmap: prefault (MADV_POPULATE_WRITE)"
        if short == "_fill_new":
            return "mmap: new pages (pwrite of zeros)"
        if short in ("_lock", "_lock_fd"):
            return "mmap: piece lock"
        if short in ("write_piece", "_write"):
            return "mmap: copy piece" if "] = src[" in text else "mmap: other"
        if short == "_pwrite_all":
            return "pwrite: write piece"
        if short in ("read", "_views", "has_piece_data"):
            return "upload (serving peers)"
        if short == "close":
            return "shutdown: unmap the output (munmap)"
        if short == "flush":
            return "shutdown: other"
        if short in ("slices", "piece_slices", "_offsets", "piece_size"):
            return "mmap: other"
        return "start-up: torrent, storage, workers"
    if mod == "worker":
        if owner == "_complete":
            return "hash: SHA-1" if "sha1" in text else "block bookkeeping (_on_block)"
        if owner in ("block_digest", "_smart_ban"):
            return "hash: SHA-1"
        if owner in ("_new_job", "_recycle") or func.startswith("PieceJob.__init__"):
            return "piece buffer allocation"
        if owner in ("_cancel_piece", "_cancel_others") or (
            owner == "_check_timeouts" and "pending" in text
        ):
            return "pending-set scans (cancels, timeouts)"
        if owner in ("_fill", "fill", "take", "_start_piece", "_take_work", "_endgame_blocks",
                     "block_len", "_release_pending"):  # fmt: skip
            return "requests: pick blocks, build messages"
        if owner == "_flush":
            return "send (sock.send)"
        if owner == "_process":
            if "job.buf[" in text:
                return "copy block into piece buffer"
            if any(m in text for m in _BLOCK_PATH):
                return "block bookkeeping (_on_block)"
            return "parse: event dispatch (worker._process)"
        if owner in ("_tell", "_tell_new_pieces"):
            return "HAVE broadcast"
        if owner in ("__post_init__", "_connect_peers", "_session", "_greet", "_accept",
                     "listen_socket"):  # fmt: skip
            return "start-up: torrent, storage, workers"
        if owner in ("shutdown", "_drop"):
            return "shutdown: other"
        if func == "run" and "w.run()" not in text:
            return "start-up: torrent, storage, workers"
        return "event loop: loop body, timers"
    if mod in ("upload", "seeder"):
        return "upload (serving peers)"
    if mod == "picker":
        return "coordinator: picker"
    if mod in ("announcer", "net", "tracker", "trackerserver"):
        return "trackers"
    if mod == "coordinator":
        if short == "_start" or short in ("_prepare_storage", "_lock_output", "_listen",
                                          "__init__", "_add_peer", "_give"):  # fmt: skip
            return "start-up: torrent, storage, workers"
        if short in ("_pump",):
            return "inter-process messages (queues, pickling)"
        if short in ("_stop_workers", "_retire", "_unlock_output", "_result", "summary"):
            return "shutdown: other"
        if short in ("_announce_all", "_reannounce", "_tracker_result"):
            return "trackers"
        return "coordinator: loop and message handling"
    if mod == "pool":  # the coordinator's worker supervision
        if short == "_pump":
            return "inter-process messages (queues, pickling)"
        if short in ("start", "restart"):
            return "start-up: torrent, storage, workers"
        if short in ("stop", "let_go", "close"):
            return "shutdown: other"
        return "coordinator: loop and message handling"
    if mod == "cli":
        if func.startswith("BarProgress"):
            return "progress bar"
        return None
    if mod in ("metainfo", "bencode", "checker", "mp", "errors", "messages", "__main__"):
        return "start-up: torrent, storage, workers"
    return None


@dataclass
class StackProfile:
    """py-spy samples per process role and category."""

    rate: int
    samples: dict[str, Counter[str]] = field(default_factory=dict)  # role -> category -> n
    idle: int = 0  # samples of threads waiting (dropped)
    no_frame: Counter[str] = field(default_factory=Counter)  # role -> samples (dropped)
    lines: dict[str, Counter[str]] = field(default_factory=dict)  # role -> innermost mptorrent


def parse_raw(text: str, rate: int) -> StackProfile:
    prof = StackProfile(rate, {COORD: Counter(), WORKERS: Counter()},
                        lines={COORD: Counter(), WORKERS: Counter()})  # fmt: skip
    for raw in text.splitlines():
        stack, _, n_s = raw.rpartition(" ")
        if not stack or not n_s.isdigit():
            continue
        n = int(n_s)
        frames = stack.split(";")
        procs = sum(1 for f in frames if f.startswith("process "))
        role = COORD if procs <= 1 else WORKERS
        parsed = []
        for f in frames:
            m = _FRAME.match(f)
            if m:
                parsed.append((m["file"], m["func"], int(m["line"])))
        if not parsed:
            # Stacks with no Python frame at all: mostly py-spy's failed reads (--nonblocking)
            # of a process; perf record shows no matching native work.  Counted, not shared.
            prof.no_frame[role] += n
            continue
        # Threads that block (the coordinator's inbox and its reader threads, the queues'
        # feeder threads) are sometimes sampled as they wake: not CPU, leave them out.
        leaf = (parsed[-1][0], parsed[-1][1])
        if leaf in _IDLE_LEAVES or (
            leaf == ("multiprocessing/connection.py", "Connection._recv")
            and any(p[1] == "Coordinator._pump" for p in parsed)
        ):
            prof.idle += n
            continue
        category = "other"
        for file, func, line in reversed(parsed):
            c = classify_frame(file, func, line)
            if c is not None:
                category = c
                break
        prof.samples[role][category] += n
        for file, func, line in reversed(parsed):
            if file.startswith("mptorrent/"):
                prof.lines[role][f"{file}:{line} {func}: {_src(file, line).strip()[:60]}"] += n
                break
    return prof


# -- running and measuring -----------------------------------------------------------------


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(ppid, own CPU s, reaped children's CPU s) from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            f = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    clk = common.CLK
    return int(f[1]), (int(f[11]) + int(f[12])) / clk, (int(f[13]) + int(f[14])) / clk


class CpuSplit:
    """Samples CPU per process of a tree: the root (coordinator) and the rest (workers)."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        self.root = root
        self.interval = interval
        self.last: dict[int, tuple[int, float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in common.process_tree(self.root):
                st = _stat(pid)
                if st is not None:
                    self.last[pid] = st
            self._stop.wait(self.interval)

    def stop(self) -> float:
        """CPU seconds of the workers (everything but the root)."""
        self._stop.set()
        self._thread.join()
        others = sum(cpu for pid, (_, cpu, _) in self.last.items() if pid != self.root)
        reaped = self.last.get(self.root, (0, 0.0, 0.0))[2]
        return max(others, reaped)


@dataclass
class Run:
    wall_s: float
    user_s: float
    sys_s: float
    workers_cpu_s: float | None = None
    stderr: str = ""
    background_load: float = 0.0  # share of the machine other processes used meanwhile

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def run_tree(cmd: Sequence[str], *, timeout: float, split: bool = False) -> Run:
    """Run ``cmd``; CPU from the rusage of reaped children; raise if it fails."""
    before = os.times()
    b0 = common.system_busy()
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=vs_anchors.client_env())  # fmt: skip
    sampler = CpuSplit(proc.pid) if split else None
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}") from None
    finally:
        workers = sampler.stop() if sampler is not None else None
    wall = time.perf_counter() - t0
    after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd)}\n{err[-3000:]}")
    user = after.children_user - before.children_user
    system = after.children_system - before.children_system
    ours = (after.user + after.system) - (before.user + before.system)  # seeders, samplers
    others = max(0.0, common.system_busy() - b0 - user - system - ours)
    return Run(wall, user, system, workers, err, others / (wall * (os.cpu_count() or 1)))


def fetch_cmd(setup: SwarmSetup, out_dir: Path, jobs: int) -> list[str]:
    return vs_anchors.client_cmd(Client("mptorrent", jobs, IO[0]), setup, out_dir)


IO = ["auto"]  # mptorrent's --io (set from the command line)


def measured(setup: SwarmSetup, work: Path, prefix: list[str], jobs: int, *, timeout: float,
             split: bool = False) -> Run:  # fmt: skip
    """One fetch into a fresh folder, ``prefix`` (a profiler) in front; checked, deleted."""
    out_dir = work / "out"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    try:
        run = run_tree([*prefix, *fetch_cmd(setup, out_dir, jobs)], timeout=timeout, split=split)
        if not vs_anchors.same_output(out_dir / setup.workload.name, setup.payload_root):
            raise RuntimeError("the download differs from the original")
        return run
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def perf_works() -> bool:
    if shutil.which("perf") is None:
        return False
    try:
        r = subprocess.run(["perf", "stat", "-e", "task-clock", "true"], capture_output=True,
                           timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


PERF_EVENTS = "task-clock,page-faults,major-faults,context-switches,cpu-migrations"
# system calls counted through tracepoints (needs tracefs; left out where perf refuses them)
PERF_SYSCALLS = ("recvfrom", "sendto", "epoll_wait", "futex", "read", "write", "madvise")


def perf_stat_events() -> str:
    extra = ",".join(f"syscalls:sys_enter_{s}" for s in PERF_SYSCALLS)
    try:
        r = subprocess.run(["perf", "stat", "-e", extra, "true"], capture_output=True,
                           timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return PERF_EVENTS
    return f"{PERF_EVENTS},{extra}" if r.returncode == 0 else PERF_EVENTS


def parse_perf_stat(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) < 3 or line.startswith("#"):
            continue
        try:
            value = float(parts[0])
        except ValueError:
            continue
        name = parts[2].removeprefix("syscalls:sys_enter_")
        out[name] = value / 1000 if parts[1] == "msec" else value  # task-clock: s
    return out


NATIVE_GROUPS = [
    "kernel: TCP and sockets",
    "kernel: page cache, faults, zeroing",
    "kernel: scheduling, locks, other",
    "SHA-1 (libcrypto)",
    "memmove/memcpy (libc)",
    "memset (libc)",
    "libc: other",
    "Python interpreter",
    "other",
]
_K_NET = re.compile(r"tcp|skb|sock|copy_to_iter|copy_from_iter|copy_user|rep_movs|ip_|inet|"
                    r"__dev_|net_|napi|loopback|datagram|sk_|csum")  # fmt: skip
_K_MEM = re.compile(r"page|fault|folio|filemap|pte|pmd|memset|clear_|mm|ext4|madvise|vma|"
                    r"lru|shmem|mapping|buffer|block_|jbd2|iomap|xas_|mtree|writeback")  # fmt: skip


def native_group(dso: str, sym: str) -> str:
    if dso.startswith("[kernel"):
        if _K_NET.search(sym):
            return "kernel: TCP and sockets"
        if _K_MEM.search(sym):
            return "kernel: page cache, faults, zeroing"
        return "kernel: scheduling, locks, other"
    if "libcrypto" in dso:
        return "SHA-1 (libcrypto)"
    if dso.startswith("libc.") or dso.startswith("libc-"):
        if "memmove" in sym or "memcpy" in sym:
            return "memmove/memcpy (libc)"
        if "memset" in sym:
            return "memset (libc)"
        return "libc: other"
    if "python" in dso or (dso.startswith("_") and ".so" in dso):
        return "Python interpreter"
    return "other"


def perf_record_report(data: Path) -> tuple[Counter[str], list[tuple[float, str, str]]]:
    """Samples per native group, and the top symbols (share %, dso, symbol)."""
    text = subprocess.run(
        ["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso,sym",
         "-F", "sample,dso,sym", "--percent-limit", "0"],
        capture_output=True, text=True, timeout=300,
    ).stdout  # fmt: skip
    groups: Counter[str] = Counter()
    rows: list[tuple[int, str, str]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.match(r"\s*(\d+)\s+(\S+)\s+\[[.k]\]\s+(.*)$", line)
        if not m:
            continue
        n, dso, sym = int(m[1]), m[2], m[3].strip()
        groups[native_group(dso, sym)] += n
        rows.append((n, dso, sym))
    total = sum(groups.values()) or 1
    top = sorted(rows, reverse=True)[:25]
    return groups, [(100 * n / total, d, s) for n, d, s in top]


# -- copy paths, in isolation --------------------------------------------------------------

_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def copy_paths(directory: Path, size: int, piece: int, reps: int = 3) -> dict[str, float]:
    """CPU seconds per GiB of the copies a worker makes, in this process, without a network:
    a verified piece into a fresh preallocated output (three ways) and 16 KiB blocks into a
    piece buffer (new buffer per piece, or one reused).  Medians of ``reps``."""
    src = bytearray(os.urandom(piece))
    wire_block = 16384
    block = bytes(wire_block)
    path = directory / "copy-paths.bin"
    gib = size / GiB
    n = size // piece

    def output(fill: Any) -> float:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.posix_fallocate(fd, 0, n * piece)
            t = _self_cpu()
            fill(fd)
            return (_self_cpu() - t) / gib
        finally:
            os.close(fd)
            path.unlink()

    def populate_copy(fd: int) -> None:  # what storage.write_piece does now
        with mmap.mmap(fd, n * piece) as m:
            for i in range(n):
                m.madvise(_MADV_POPULATE_WRITE, i * piece, piece)
                m[i * piece : (i + 1) * piece] = src

    def fault_copy(fd: int) -> None:
        with mmap.mmap(fd, n * piece) as m:
            for i in range(n):
                m[i * piece : (i + 1) * piece] = src

    def pwrite(fd: int) -> None:
        for i in range(n):
            os.pwrite(fd, src, i * piece)

    def blocks(reuse: bool) -> float:
        t = _self_cpu()
        buf = bytearray(piece)
        for _ in range(n):
            if not reuse:
                buf = bytearray(piece)
            for b in range(0, piece, wire_block):
                buf[b : b + wire_block] = block
        return (_self_cpu() - t) / gib

    def sha1() -> float:
        t = _self_cpu()
        for _ in range(n):
            hashlib.sha1(src).digest()
        return (_self_cpu() - t) / gib

    tests: dict[str, Any] = {
        "piece -> output: MADV_POPULATE_WRITE + mmap copy (now), incl. munmap": (
            lambda: output(populate_copy)),
        "piece -> output: mmap copy, page faults, incl. munmap": lambda: output(fault_copy),
        "piece -> output: os.pwrite": lambda: output(pwrite),
        "blocks -> piece buffer: new bytearray per piece (now)": lambda: blocks(False),
        "blocks -> piece buffer: one buffer reused": lambda: blocks(True),
        "SHA-1 of the piece (floor)": sha1,
    }  # fmt: skip
    return {name: statistics.median(fn() for _ in range(reps)) for name, fn in tests.items()}


# -- the report -----------------------------------------------------------------------------


def profile_jobs(
    setup: SwarmSetup, work: Path, jobs: int, *, rate: int, timeout: float, settle: float,
    use_spy: bool, use_perf: bool, raw_dir: Path | None,
) -> dict[str, Any]:  # fmt: skip
    gib = setup.workload.total / GiB
    res: dict[str, Any] = {"jobs": jobs}
    common.wait_for_quiet(settle)
    base = measured(setup, work, [], jobs, timeout=timeout, split=True)
    workers_cpu = base.workers_cpu_s or 0.0
    role_cpu = {WORKERS: workers_cpu, COORD: max(0.0, base.cpu_s - workers_cpu)}
    res["plain"] = {
        "wall_s": base.wall_s, "mib_s": setup.workload.total / MiB / base.wall_s,
        "user_s": base.user_s, "sys_s": base.sys_s, "cpu_s": base.cpu_s,
        "cpu_s_per_gib": base.cpu_s / gib, "role_cpu_s": role_cpu,
        "background_load": base.background_load,
        "transfer_s": common.transfer_seconds(common.Measurement(
            base.wall_s, 0, common.MemPeak(), base.cpu_s, 0.0, "", base.stderr)),
    }  # fmt: skip
    print(f"-j {jobs}: plain run {base.wall_s:.2f} s, CPU {base.cpu_s:.2f} s (user "
          f"{base.user_s:.2f}, sys {base.sys_s:.2f}; workers {workers_cpu:.2f}), background "
          f"load {base.background_load:.0%}",
          file=sys.stderr)  # fmt: skip
    if use_spy:
        raw = work / f"pyspy-j{jobs}.txt"
        common.wait_for_quiet(settle)
        spy = measured(setup, work, ["py-spy", "record", "--subprocesses", "--nonblocking",
                                     "--format", "raw", "-r", str(rate), "-o", str(raw), "--"],
                       jobs, timeout=timeout)  # fmt: skip
        prof = parse_raw(raw.read_text(), rate)
        if raw_dir is not None:
            raw_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(raw, raw_dir / raw.name)
        per_gib: dict[str, dict[str, float]] = {}
        for role, counts in prof.samples.items():
            total = sum(counts.values()) or 1
            per_gib[role] = {c: role_cpu[role] * n / total / gib for c, n in counts.items()}
        res["pyspy"] = {
            "rate_hz": rate, "wall_s": spy.wall_s, "cpu_s": spy.cpu_s,
            "sampled_s": {r: sum(c.values()) / rate for r, c in prof.samples.items()},
            "idle_samples": prof.idle,
            "no_python_frame_samples": dict(prof.no_frame),
            "samples": {r: dict(c) for r, c in prof.samples.items()},
            "s_per_gib": per_gib,
            "top_lines": {r: c.most_common(25) for r, c in prof.lines.items()},
        }  # fmt: skip
        print(f"-j {jobs}: py-spy run {spy.wall_s:.2f} s, sampled "
              f"{sum(sum(c.values()) for c in prof.samples.values()) / rate:.2f} CPU s",
              file=sys.stderr)  # fmt: skip
    if use_perf:
        stat_file = work / "perf-stat.txt"
        common.wait_for_quiet(settle)
        measured(setup, work, ["perf", "stat", "-x,", "-e", perf_stat_events(), "-o",
                               str(stat_file), "--"], jobs, timeout=timeout)  # fmt: skip
        stats = parse_perf_stat(stat_file.read_text())
        res["perf_stat"] = {"total": stats, "per_gib": {k: v / gib for k, v in stats.items()}}
        data = work / "perf.data"
        common.wait_for_quiet(settle)
        freq = 997
        measured(setup, work, ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(freq),
                               "-o", str(data), "--"], jobs, timeout=timeout)  # fmt: skip
        groups, top = perf_record_report(data)
        data.unlink(missing_ok=True)
        total = sum(groups.values()) or 1
        res["perf_record"] = {
            "freq_hz": freq, "samples": dict(groups),
            "share": {g: n / total for g, n in groups.items()},
            # scaled to the plain run's CPU, like the py-spy figures
            "s_per_gib": {g: base.cpu_s * n / total / gib for g, n in groups.items()},
            "top_symbols": top,
        }  # fmt: skip
    return res


def category_table(results: list[dict[str, Any]]) -> str:
    cols = [(r["jobs"], role) for r in results if "pyspy" in r for role in (WORKERS, COORD)]
    by = {r["jobs"]: r for r in results}
    headers = ["group", "category", *(f"-j {j} {role}" for j, role in cols)]
    rows: list[list[object]] = []
    for cat, group in CATEGORIES:
        vals = [by[j]["pyspy"]["s_per_gib"][role].get(cat, 0.0) for j, role in cols]
        if all(v < 0.005 for v in vals):
            continue
        rows.append([group, cat, *(f"{v:.2f}" for v in vals)])
    groups = list(dict.fromkeys(g for _, g in CATEGORIES))
    for g in groups:
        vals = [sum(v for c, v in by[j]["pyspy"]["s_per_gib"][role].items() if GROUP[c] == g)
                for j, role in cols]  # fmt: skip
        if any(v >= 0.005 for v in vals):
            rows.append([f"**{g}**", "(group total)", *(f"{v:.2f}" for v in vals)])
    rows.append(["**all**", "CPU s per GiB (plain run)",
                 *(f"{by[j]['plain']['role_cpu_s'][role] / (by[j]['size'] / GiB):.2f}"
                   for j, role in cols)])  # fmt: skip
    return common.print_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="1GiB", help="file size (default 1GiB)")
    ap.add_argument("--piece-size", default="1MiB", help="piece length (default 1MiB)")
    ap.add_argument("--jobs", default="1,2", help="worker counts (default 1,2)")
    ap.add_argument("--io", default="auto", help="mptorrent's --io (default auto)")
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second (250)")
    ap.add_argument("--no-perf", action="store_true", help="skip perf stat and perf record")
    ap.add_argument("--keep-raw", action="store_true", help="keep the raw py-spy stacks")
    ap.add_argument("--no-copy-paths", action="store_true",
                    help="skip the in-process benchmark of the copy paths")  # fmt: skip
    common.add_run_options(ap, settle=30.0)
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR / "profile_fetch.json")
    args = ap.parse_args(argv)
    IO[0] = args.io
    vs_anchors.on_sigterm()

    size = common.parse_size(args.size)
    piece = common.parse_size(args.piece_size)
    jobs = [int(j) for j in args.jobs.split(",")]
    use_spy = shutil.which("py-spy") is not None
    if not use_spy:
        print("py-spy is not installed (pip install py-spy): no per-category profile",
              file=sys.stderr)  # fmt: skip
    use_perf = not args.no_perf and perf_works()
    if not use_perf and not args.no_perf:
        print("perf is missing or not allowed here: no perf stat / perf record", file=sys.stderr)
    args.dir.mkdir(parents=True, exist_ok=True)
    common.check_space(args.dir, 2 * size + 64 * MiB)
    wl = Workload("profile", f"{common.human(size)} file, {piece // 1024} KiB pieces", piece,
                  size=size)  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="mptorrent-profile-", dir=args.dir))
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    copies: dict[str, float] = {}
    try:
        if not args.no_copy_paths:
            common.wait_for_quiet(args.settle)
            copies = copy_paths(workdir, size, piece)
        with vs_anchors.swarm(workdir, wl) as setup:
            cached = vs_anchors.ensure_cached(setup.files)
            print(f"seed data in page cache: {cached:.1%}", file=sys.stderr)
            measured(setup, workdir, [], max(jobs), timeout=args.timeout)  # warm-up
            for j in jobs:
                vs_anchors.ensure_cached(setup.files)
                r = profile_jobs(
                    setup, workdir, j, rate=args.rate, timeout=args.timeout,
                    settle=args.settle, use_spy=use_spy, use_perf=use_perf,
                    raw_dir=args.out.parent if args.keep_raw else None,
                )  # fmt: skip
                r["size"] = size
                results.append(r)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nmptorrent fetch of a {wl.title}, {vs_anchors.N_SEEDERS} libtorrent seeders, "
          f"{common.environment()['cpus']} CPUs\n")  # fmt: skip
    tables: dict[str, str] = {}
    tables["runs"] = common.print_table(
        ["-j", "wall s", "MiB/s", "CPU s/GiB", "user s/GiB", "sys s/GiB", "coordinator s/GiB",
         "workers s/GiB", "page faults/GiB", "ctx switches/GiB", "bg load"],
        [[r["jobs"], f"{r['plain']['wall_s']:.2f}", f"{r['plain']['mib_s']:.0f}",
          f"{r['plain']['cpu_s_per_gib']:.2f}", f"{r['plain']['user_s'] / (size / GiB):.2f}",
          f"{r['plain']['sys_s'] / (size / GiB):.2f}",
          f"{r['plain']['role_cpu_s'][COORD] / (size / GiB):.2f}",
          f"{r['plain']['role_cpu_s'][WORKERS] / (size / GiB):.2f}",
          f"{r['perf_stat']['per_gib'].get('page-faults', 0):.0f}" if "perf_stat" in r else "-",
          f"{r['perf_stat']['per_gib'].get('context-switches', 0):.0f}"
          if "perf_stat" in r else "-", f"{r['plain']['background_load']:.0%}"]
         for r in results],
    )  # fmt: skip
    if use_perf and any(k in r["perf_stat"]["total"] for r in results for k in PERF_SYSCALLS):
        print("\nSystem calls per GiB (perf stat, whole tree)\n")
        tables["syscalls"] = common.print_table(
            ["-j", *PERF_SYSCALLS, "KiB per recvfrom"],
            [[r["jobs"], *(f"{r['perf_stat']['per_gib'].get(k, 0):.0f}" for k in PERF_SYSCALLS),
              f"{GiB / 1024 / max(1.0, r['perf_stat']['per_gib'].get('recvfrom', 0)):.0f}"]
             for r in results],
        )  # fmt: skip
    if use_spy:
        print("\nCPU seconds per GiB, by category (py-spy shares x the plain run's CPU)\n")
        tables["categories"] = category_table(results)
        for r in results:
            print(f"\n-j {r['jobs']}: hottest mptorrent lines in the workers (share of samples)\n")
            top = r["pyspy"]["top_lines"][WORKERS]
            total = sum(r["pyspy"]["samples"][WORKERS].values()) or 1
            tables[f"lines-j{r['jobs']}"] = common.print_table(
                ["share", "line"], [[f"{100 * n / total:.1f}%", f"`{k}`"] for k, n in top[:15]]
            )
    if use_perf:
        print("\nNative view (perf record -e cpu-clock, whole tree), CPU s per GiB\n")
        tables["native"] = common.print_table(
            ["where", *(f"-j {r['jobs']}" for r in results)],
            [[g, *(f"{r['perf_record']['s_per_gib'].get(g, 0.0):.2f}" for r in results)]
             for g in NATIVE_GROUPS],
        )  # fmt: skip
    if copies:
        print(f"\nCopy paths alone (this process, {wl.title}), CPU s per GiB, median of 3\n")
        tables["copy_paths"] = common.print_table(
            ["copy", "CPU s/GiB"], [[k, f"{v:.2f}"] for k, v in copies.items()]
        )
    common.write_json(
        "profile_fetch",
        {**common.environment(), "size_bytes": size, "piece_length": piece,
         "seeders": vs_anchors.N_SEEDERS, "elapsed_s": time.monotonic() - started,
         "results": results, "copy_paths": copies, "tables": tables},
        args.out,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
