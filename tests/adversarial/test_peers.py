"""Table C of tests/adversarial/README.md: malicious or broken peers, next to one good peer.

Every hostile peer is tests/fakes/evil_peer.py on its own 127.0.5.x address; the good peer is
a real libtorrent seeder (tests/swarm.py ``LtPeer``) on 127.0.5.1.  The fetch runs in-process
(``Coordinator`` is what ``coordinator.fetch`` runs; using it directly lets a watcher read the
worker pids) with short timeouts, and every case checks both the hostile peer's fate and that
the download completes with every piece verifying.

To keep the file fast, rows that do not disturb each other share one fetch (a module-scoped
"scenario" with several hostile peers at once) and each row asserts on its own peer.  Rows
about timeouts or retries need the fetch to outlive them: the good seeder is throttled for a
fixed window and then let go, so a scenario lasts a known time.

C18 (hostile requests to us as a seeder) is tests/test_upload.py.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mptorrent import events as ev
from mptorrent.cli.render import render, summary
from mptorrent.engine.coordinator import Coordinator, FetchOptions, FetchResult, done_event
from mptorrent.errors import DownloadError
from mptorrent.messages import PeerAddr
from mptorrent.netio.peer import Timeouts
from mptorrent.proto.wire import FAST_RESERVED, MAX_MESSAGE
from tests.fakes.evil_peer import (
    BLOCK,
    EXTENSION_RESERVED,
    PIECE,
    PROTOCOL,
    RESET_BY_PEER,
    ConnLog,
    EvilConn,
    EvilPeer,
    Script,
    flip,
    full_bitfield,
    stamp,
)
from tests.swarm import IpPool, LtPeer, TorrentCase, single_file_case

pytestmark = [pytest.mark.interop, pytest.mark.slow]

KiB = 1024
MiB = 1024 * KiB
PIECE_LEN = 128 * KiB  # eight blocks
# 41 pieces (seven spare bitfield bits), the last one short.  Enough that the five peers
# which hoard requests in the stall scenario (four pieces each) leave pieces for the rest.
NUM_PIECES = 41
SIZE = NUM_PIECES * PIECE_LEN - 12_345
GOOD_IP = "127.0.5.1"
FAST = Timeouts(connect=3.0, handshake=3.0, snub=1.5, idle=3.0, piece=3.0)
# Deadlines are checked every 0.2 s by a worker that shares two cores with libtorrent and
# the hostile peers' threads: allow that much lateness, never earliness.
EARLY, LATE = 0.3, 1.2

_ips = IpPool(third=5, first=10)


# -- the good peer and the torrent ----------------------------------------------------------


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> TorrentCase:
    return single_file_case(tmp_path_factory.mktemp("src"), SIZE, PIECE_LEN)


@pytest.fixture(scope="module")
def data(case: TorrentCase) -> bytes:
    return case.payload.root.read_bytes()


@pytest.fixture(scope="module")
def good(case: TorrentCase) -> Iterator[LtPeer]:
    # No PEX: it would dial the hostile peers our workers tell it about, and their counts
    # of connections would no longer be the client's alone.
    with LtPeer(case.torrent, case.save_dir, ip=GOOD_IP, use_trackers=False, pex=False) as seeder:
        yield seeder


def throttle(seeder: LtPeer, rate: int, seconds: float) -> threading.Timer:
    """Limit the seeder to ``rate`` bytes/s, then lift the limit after ``seconds``."""
    seeder.handle.set_upload_limit(rate)
    timer = threading.Timer(seconds, seeder.handle.set_upload_limit, (0,))
    timer.daemon = True
    timer.start()
    return timer


# -- running a fetch --------------------------------------------------------------------------


class Recorder:
    """A progress sink that keeps the notes and the moment the last piece was verified."""

    def __init__(self) -> None:
        self.total = 0
        self.notes: list[str] = []
        self.details: list[str] = []
        self.complete_at: float | None = None

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.Started):
            self.total = event.total
        elif isinstance(event, ev.Progress):
            if event.done == self.total and self.complete_at is None:
                self.complete_at = time.monotonic()
        elif isinstance(event, ev.WorkerError):
            self.notes.append(event.message)
            self.details.append(event.detail)
        elif not isinstance(event, ev.Done) and (text := render(event)) is not None:
            self.notes.append(text.removeprefix("mptorrent: "))


def _proc_status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Watcher(threading.Thread):
    """Samples every worker's RssAnon and CPU time while a fetch runs."""

    def __init__(self, co: Coordinator) -> None:
        super().__init__(daemon=True)
        self.co = co
        self.stop = threading.Event()
        self.peak_rss: dict[int, int] = {}
        self.cpu: dict[int, float] = {}

    def run(self) -> None:
        while not self.stop.wait(0.01):
            for pid in self.co.pool.pids():
                try:
                    rss = _proc_status(pid, "RssAnon")
                    self.cpu[pid] = _cpu_seconds(pid)
                except (OSError, ValueError, IndexError):
                    continue  # exited meanwhile
                self.peak_rss[pid] = max(self.peak_rss.get(pid, 0), rss)


@dataclass
class Run:
    result: FetchResult | None
    error: BaseException | None
    started: float
    finished: float
    progress: Recorder
    watcher: Watcher
    evils: dict[str, EvilPeer] = field(default_factory=dict)

    @property
    def res(self) -> FetchResult:
        assert self.error is None, f"fetch failed: {self.error!r}"
        assert self.result is not None
        return self.result

    @property
    def complete_at(self) -> float:
        assert self.progress.complete_at is not None
        return self.progress.complete_at


def run_fetch(
    case: TorrentCase, out: Path, peers: tuple[PeerAddr, ...], *, jobs: int = 1,
    bind: str | None = None, during: Callable[[Coordinator], None] | None = None,
) -> Run:  # fmt: skip
    opts = FetchOptions(
        jobs=jobs, peers=peers, use_trackers=False, timeouts=FAST, no_peers_timeout=20.0,
        bind=bind, port=0,
    )  # fmt: skip
    progress = Recorder()
    co = Coordinator(case.meta, out, opts, progress)
    watcher = Watcher(co)
    watcher.start()
    if during is not None:
        threading.Thread(target=during, args=(co,), daemon=True).start()
    started = time.monotonic()
    result: FetchResult | None = None
    error: BaseException | None = None
    try:
        result = co.run()
    except DownloadError as exc:
        error = exc
    finished = time.monotonic()
    watcher.stop.set()
    watcher.join()
    return Run(result, error, started, finished, progress, watcher)


def assert_complete(case: TorrentCase, out: Path) -> None:
    """Byte-identical to the source, and every piece verifies against the torrent."""
    got = out.read_bytes()
    meta = case.meta
    assert len(got) == meta.total_length
    bad = [
        i for i in range(meta.num_pieces)
        if hashlib.sha1(got[i * meta.piece_length : (i + 1) * meta.piece_length]).digest()
        != meta.piece_hash(i)
    ]  # fmt: skip
    assert not bad, f"pieces {bad} do not verify"
    assert got == case.payload.root.read_bytes()


# The whole download may take only a few tens of milliseconds now: a handful of looks
# at the output file is what a run can promise, and enough to have watched it.
MIN_SAMPLES = 4


class Poller(threading.Thread):
    """Reads the output file over and over, looking for bytes that must never land there."""

    def __init__(self, path: Path, needle: bytes) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.needle = needle
        self.stop = threading.Event()
        self.samples = 0
        self.hits: list[int] = []

    def run(self) -> None:
        while not self.stop.wait(0.005):
            try:
                content = self.path.read_bytes()
            except OSError:
                continue
            self.samples += 1
            at = content.find(self.needle)
            if at >= 0:
                self.hits.append(at)


def start_evils(
    stack: ExitStack, case: TorrentCase, scripts: dict[str, Script]
) -> dict[str, EvilPeer]:
    return {
        name: stack.enter_context(EvilPeer(_ips(), case.meta, script))
        for name, script in scripts.items()
    }


def check_evils(run: Run) -> None:
    """A hostile script that crashed is a bug in the test, not a finding."""
    errors = {name: e.errors for name, e in run.evils.items() if e.errors}
    assert not errors, errors


def first(evil: EvilPeer) -> ConnLog:
    assert evil.connections, f"{evil.addr}: the client never connected"
    return evil.connections[0]


def gaps(evil: EvilPeer) -> list[float]:
    opened = [c.opened for c in evil.connections]
    return [b - a for a, b in itertools.pairwise(opened)]


def closed_after(conn: ConnLog, since: float | None, seconds: float) -> float:
    """Assert the client closed ``conn`` about ``seconds`` after ``since``; the delay."""
    assert since is not None
    assert conn.by_client, conn.end
    assert conn.ended is not None
    delay = conn.ended - since
    assert seconds - EARLY <= delay <= seconds + LATE, f"closed {delay:.2f} s after, not ~{seconds}"
    return delay


def banned_reason(res: FetchResult, evil: EvilPeer) -> str:
    assert evil.addr in res.banned, f"{evil.addr} not banned: {res.banned}"
    return res.banned[evil.addr]


# -- scripts ----------------------------------------------------------------------------------


def handshake_bytes(c: EvilConn, **changes: bytes) -> bytes:
    return (
        bytes([len(PROTOCOL)]) + PROTOCOL + changes.get("reserved", bytes(8))
        + changes.get("info_hash", c.torrent.info_hash) + c.peer.peer_id
    )  # fmt: skip


def offend(action: Callable[[EvilConn], None], *, greet: bool = True) -> Script:
    """Open normally (or with the handshake only), then do one forbidden thing."""

    def script(c: EvilConn) -> None:
        if greet:
            c.greet()
        else:
            c.read_handshake()
            c.send_handshake()
        c.mark("offense")
        action(c)

    return script


def then_junk(c: EvilConn) -> None:
    """Keep pushing bytes after a huge length prefix, as a real attacker would."""
    chunk = bytes(64 * KiB)
    for _ in range(256):
        c.send_raw(chunk)


def prefix(length: int, msg_id: int | None = None) -> Callable[[EvilConn], None]:
    def action(c: EvilConn) -> None:
        c.send_length_prefix(length, msg_id)
        then_junk(c)

    return action


# -- C1-C4 and C20: handshakes and reconnects -------------------------------------------------

HANDSHAKE_WINDOW = 6.5  # seconds the good seeder is throttled: retries at ~0, 1, 3 s fit


def bad_pstrlen(c: EvilConn) -> None:
    c.read_handshake()
    c.mark("offense")
    c.send_handshake(pstr=PROTOCOL[:18])


def bad_pstr(c: EvilConn) -> None:
    c.read_handshake()
    c.mark("offense")
    c.send_handshake(pstr=b"BitTorrent Protocol")


def wrong_info_hash(c: EvilConn) -> None:
    c.read_handshake()
    c.mark("offense")
    c.send_handshake(info_hash=hashlib.sha1(b"another torrent").digest())


def mirror(c: EvilConn) -> None:
    theirs = c.read_handshake()
    c.mark("offense")
    c.send_handshake(peer_id=theirs[48:68])


def close_mid_handshake(c: EvilConn) -> None:
    c.read_handshake()
    c.send_raw(handshake_bytes(c)[:30])
    c.close()


def close_after_handshake(c: EvilConn) -> None:
    c.read_handshake()
    c.send_handshake()
    c.close()


def reset_at_once(c: EvilConn) -> None:
    c.reset()


@pytest.fixture(scope="module")
def handshakes(
    case: TorrentCase, good: LtPeer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    scripts = {
        "C1-pstrlen": bad_pstrlen, "C1-pstr": bad_pstr, "C2": wrong_info_hash, "C3": mirror,
        "C4-mid": close_mid_handshake, "C4-after": close_after_handshake, "C20": reset_at_once,
    }  # fmt: skip
    out = tmp_path_factory.mktemp("handshakes") / "out.bin"
    with ExitStack() as stack:
        evils = start_evils(stack, case, scripts)
        timer = throttle(good, 160 * KiB, HANDSHAKE_WINDOW)
        try:
            run = run_fetch(case, out, (good.addr, *(e.addr for e in evils.values())), jobs=2)
        finally:
            timer.cancel()
            good.handle.set_upload_limit(0)
    run.evils = evils
    check_evils(run)
    assert_complete(case, out)
    yield run


# The promised cap on connection attempts per address per worker (successful ones included),
# written out rather than read from the code under test.
CONNECT_CAP = 12


def assert_retried_with_backoff(evil: EvilPeer) -> None:
    """Reconnects follow the 1, 2, 5 s ladder (RECONNECT_DELAYS): never a tight loop."""
    assert 2 <= evil.attempts <= 4, [round(g, 2) for g in gaps(evil)]
    g = gaps(evil)
    assert g[0] >= 1.0 - EARLY, g
    if len(g) > 1:
        assert g[1] >= 2.0 - EARLY, g


@pytest.mark.parametrize("name", ["C1-pstrlen", "C1-pstr", "C2"])
def test_c1_c2_bad_handshake_is_closed_not_banned(handshakes: Run, name: str) -> None:
    """C1 pstrlen 18 / "BitTorrent Protocol"; C2 another torrent's info-hash: closed at once
    (the wire checks each part as it arrives), no ban, retried on the back-off ladder."""
    evil = handshakes.evils[name]
    for conn in evil.connections:
        closed_after(conn, conn.marks.get("offense"), 0.0)
        assert conn.blocks_sent == 0 and not conn.requests
    assert evil.addr not in handshakes.res.banned
    assert_retried_with_backoff(evil)


def test_c3_self_connection_is_closed_and_never_retried(handshakes: Run) -> None:
    """C3: a peer that answers with our own peer id is us: closed, and never dialled again
    although the fetch went on for seconds."""
    evil = handshakes.evils["C3"]
    conn = first(evil)
    closed_after(conn, conn.marks.get("offense"), 0.0)
    assert conn.their_peer_id is not None
    assert handshakes.finished - conn.opened > 3.0, "too short a fetch to see a retry"
    assert evil.attempts == 1
    assert evil.addr not in handshakes.res.banned


@pytest.mark.parametrize("name", ["C4-mid", "C4-after"])
def test_c4_close_during_or_after_handshake_is_retried_with_backoff(
    handshakes: Run, name: str
) -> None:
    evil = handshakes.evils[name]
    assert all(c.end == "closed by peer" for c in evil.connections)
    assert evil.addr not in handshakes.res.banned
    assert_retried_with_backoff(evil)


def test_c20_resetting_address_gets_capped_backoff_and_no_cpu_spin(handshakes: Run) -> None:
    """C20: every connection is reset at once.  Attempts follow the back-off ladder (at most
    12 ever), and the workers' CPU time stays a small part of the wall time."""
    evil = handshakes.evils["C20"]
    assert all(c.end == RESET_BY_PEER for c in evil.connections)
    wall = handshakes.finished - handshakes.started
    assert wall >= HANDSHAKE_WINDOW - 0.5
    assert_retried_with_backoff(evil)
    assert evil.attempts <= CONNECT_CAP
    cpu = sum(handshakes.watcher.cpu.values())
    assert cpu < 0.1 * wall, f"workers used {cpu:.2f} s of CPU in {wall:.1f} s"


# -- C5-C9b and C16: messages that end the connection -----------------------------------------

OVERSIZED = {
    "C5-ffffffff": prefix(0xFFFFFFFF),
    "C5-2^31": prefix(1 << 31, 0),
    "C5-over-cap": prefix(MAX_MESSAGE + 1, 99),
    "C5-piece": prefix(9 + BLOCK + 1, PIECE),
}
DEEP_BENCODE = b"l" * 100_000 + b"e" * 100_000


def bitfield_offense(kind: str) -> Callable[[EvilConn], None]:
    def action(c: EvilConn) -> None:
        n = c.torrent.num_pieces
        bits = full_bitfield(n)
        if kind == "short":
            c.send_bitfield(bits[:-1])
        elif kind == "long":
            c.send_bitfield(bits + b"\x00")
        elif kind == "spare":
            c.send_bitfield(bits[:-1] + bytes([bits[-1] | 1]))
        elif kind == "empty":
            c.send_bitfield(b"")
        elif kind == "twice":
            c.send_bitfield()
            c.send_bitfield()
        elif kind == "late":
            c.send_have(0)
            c.send_bitfield()

    return action


def piece_outside(where: str) -> Callable[[EvilConn], None]:
    def action(c: EvilConn) -> None:
        c.next_request()  # answered with a block no request can match
        n, size = c.torrent.num_pieces, c.torrent.total_length
        c.mark("offense")
        if where == "index":
            c.send_piece(n, 0, bytes(BLOCK))
        else:
            last = size - (n - 1) * c.torrent.piece_length
            c.send_piece(n - 1, last - 100, bytes(BLOCK))

    return action


def unknown_ids_then_honest(data: bytes) -> Script:
    def script(c: EvilConn) -> None:
        # Only half the pieces: the throttled good seeder must bring the rest, so the fetch
        # lasts long enough for the inbound attack.
        c.read_handshake()
        c.send_handshake()
        c.send_bitfield(full_bitfield(c.torrent.num_pieces, set(range(0, 10))))
        c.send_unchoke()
        c.send_message(0xFF, b"?" * 1000)
        c.send_message(99, bytes(MAX_MESSAGE - 1))
        c.mark("offense")
        c.serve_from(data)

    return script


def extended(payload: bytes) -> Script:
    def script(c: EvilConn) -> None:
        c.read_handshake()
        c.send_handshake(reserved=EXTENSION_RESERVED)
        c.send_bitfield()
        c.mark("offense")
        c.send_extended(0, payload)

    return script


def fast_offense(action: Callable[[EvilConn], None]) -> Script:
    """Open with BEP 6 negotiated (the client sets the fast bit too) and a full bitfield,
    then break one of the fast extension's rules."""

    def script(c: EvilConn) -> None:
        c.read_handshake()
        c.send_handshake(reserved=FAST_RESERVED)
        c.send_bitfield()
        c.mark("offense")
        action(c)

    return script


VIOLATIONS: dict[str, Callable[[bytes], Script]] = {
    **{name: (lambda _d, a=action: offend(a)) for name, action in OVERSIZED.items()},
    **{
        f"C7-{kind}": (lambda _d, k=kind: offend(bitfield_offense(k), greet=False))
        for kind in ("short", "long", "spare", "empty", "twice", "late")
    },
    "C8-have": lambda _d: offend(lambda c: c.send_have(c.torrent.num_pieces)),
    "C8-have-all": lambda _d: offend(lambda c: c.send_have_all(), greet=False),
    "C8-have-none": lambda _d: offend(lambda c: c.send_have_none(), greet=False),
    "C8-fast-have-all-late": lambda _d: fast_offense(lambda c: c.send_have_all()),
    "C8-fast-allowed-range": lambda _d: fast_offense(
        lambda c: c.send_message(0x11, struct.pack(">I", c.torrent.num_pieces))
    ),
    "C8-fast-reject-unasked": lambda _d: fast_offense(
        lambda c: c.send_message(0x10, struct.pack(">III", 0, 0, BLOCK))  # still choked
    ),
    "C9b-index": lambda _d: offend(piece_outside("index")),
    "C9b-begin": lambda _d: offend(piece_outside("begin")),
    "C16-deep": lambda _d: extended(DEEP_BENCODE),
    "C16-malformed": lambda _d: extended(b"d8:msg_typei0e5:piecei"),
    "C6": unknown_ids_then_honest,
}


def inbound_oversized(c: EvilConn) -> None:
    c.read_handshake()  # an accepting worker greets first
    c.send_handshake()
    c.mark("offense")
    c.send_length_prefix(0xFFFFFFFF)
    then_junk(c)


@pytest.fixture(scope="module")
def violations(
    case: TorrentCase, data: bytes, good: LtPeer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    out = tmp_path_factory.mktemp("violations") / "out.bin"
    with ExitStack() as stack:
        evils = start_evils(stack, case, {k: make(data) for k, make in VIOLATIONS.items()})
        inbound = stack.enter_context(EvilPeer(_ips(), case.meta, inbound_oversized))

        def dial_in(co: Coordinator) -> None:
            """Once the worker listens, attack it from outside, then try to come back."""
            deadline = time.monotonic() + 10
            while co.listen is None or not co.pool.pids():
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)
            time.sleep(0.3)
            assert co.listen is not None
            conn = inbound.dial(co.listen)
            while not conn.end and time.monotonic() < deadline:
                time.sleep(0.02)
            inbound.dial(co.listen)

        parent_rss = _proc_status(os.getpid(), "RssAnon")
        timer = throttle(good, 512 * KiB, 2.5)
        try:
            run = run_fetch(
                case, out, (good.addr, *(e.addr for e in evils.values())), jobs=1,
                bind=_ips(), during=dial_in,
            )  # fmt: skip
        finally:
            timer.cancel()
            good.handle.set_upload_limit(0)
        time.sleep(0.2)  # the second inbound connection's fate
    run.evils = {**evils, "inbound": inbound}
    run.watcher.peak_rss[-1] = parent_rss  # the fork point's baseline, kept beside the peaks
    check_evils(run)
    assert_complete(case, out)
    yield run


def assert_closed_and_banned(run: Run, name: str, reason: str) -> None:
    evil = run.evils[name]
    conn = first(evil)
    closed_after(conn, conn.marks.get("offense"), 0.0)
    assert evil.attempts == 1, "a banned address was dialled again"
    got = banned_reason(run.res, evil)
    assert got.startswith("protocol error: ") and re.search(reason, got), got
    assert conn.ended is not None and conn.ended < run.complete_at


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("C5-ffffffff", "message of 4294967295 bytes is too large"),
        ("C5-2^31", "message of 2147483648 bytes is too large"),
        ("C5-over-cap", f"message of {MAX_MESSAGE + 1} bytes is too large"),
        ("C5-piece", f"piece message of {9 + BLOCK + 1} bytes is too large"),
    ],
)
def test_c5_oversized_length_prefix_closes_before_allocating(
    violations: Run, name: str, reason: str
) -> None:
    """C5: refused on the 4-5 byte header, while 16 MiB of junk keeps coming behind it."""
    assert_closed_and_banned(violations, name, reason)
    assert first(violations.evils[name]).sent_bytes < 16 * MiB


def test_c5_worker_memory_stays_flat(violations: Run) -> None:
    """No worker ever held more anonymous memory than the process it forked from plus a
    margin (each of the 20 connections costs its 1 MiB receive buffer), while a buffer sized
    by those prefixes would be 1 MiB to 4 GiB each.  The wire grows its buffer only for a
    message that passed the caps: tests/test_wire.py
    test_huge_length_prefix_via_get_buffer_does_not_grow_buffer."""
    peaks = dict(violations.watcher.peak_rss)
    parent = peaks.pop(-1)
    assert peaks, "no worker was sampled"
    for pid, peak in peaks.items():
        assert peak < parent + 48 * MiB, f"worker {pid}: {peak / MiB:.0f} MiB RssAnon"


def test_c5_inbound_offender_is_banned_by_address(violations: Run) -> None:
    """The same attack from a peer that dials us: banned by host, so its next connection is
    closed before any handshake."""
    evil = violations.evils["inbound"]
    assert evil.attempts == 2
    attack, again = evil.connections
    closed_after(attack, attack.marks.get("offense"), 0.0)
    assert again.by_client and again.their_handshake is None
    hosts = {a.host: r for a, r in violations.res.banned.items()}
    assert "too large" in hosts[evil.host]


def test_c6_unknown_message_ids_are_ignored(violations: Run) -> None:
    """C6, choice: ignore (BEP 3), skipping the payload as it arrives, even at the 1 MiB
    cap; the peer stays connected and serves blocks until the download is complete."""
    evil = violations.evils["C6"]
    conn = first(evil)
    assert evil.addr not in violations.res.banned
    assert conn.blocks_sent > 0, "it was asked for blocks after its unknown messages"
    assert conn.ended is None or conn.ended - conn.marks["offense"] > 1.0
    assert evil.attempts == 1


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("short", f"bitfield of 5 bytes for {NUM_PIECES} pieces"),
        ("long", f"bitfield of 7 bytes for {NUM_PIECES} pieces"),
        ("spare", "bitfield with spare bits set"),
        ("empty", f"bitfield of 0 bytes for {NUM_PIECES} pieces"),
        ("twice", "bitfield after other messages"),
        ("late", "bitfield after other messages"),
    ],
)
def test_c7_bad_bitfield_closes(violations: Run, kind: str, reason: str) -> None:
    assert_closed_and_banned(violations, f"C7-{kind}", reason)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("C8-have", f"have for piece {NUM_PIECES} of {NUM_PIECES}"),
        ("C8-have-all", "fast-extension message 14 without BEP 6"),
        ("C8-have-none", "fast-extension message 15 without BEP 6"),
    ],
)
def test_c8_bad_have_closes(violations: Run, name: str, reason: str) -> None:
    assert_closed_and_banned(violations, name, reason)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("C8-fast-have-all-late", "have all after other messages"),
        ("C8-fast-allowed-range", f"allowed fast for piece {NUM_PIECES} of {NUM_PIECES}"),
        ("C8-fast-reject-unasked", rf"reject for block \(0, 0, {BLOCK}\) we never requested"),
    ],
)
def test_c8_fast_extension_rule_broken_closes(violations: Run, name: str, reason: str) -> None:
    """BEP 6 negotiated (our handshake sets the bit): HAVE_ALL after a bitfield, ALLOWED_FAST
    past the last piece, REJECT_REQUEST for a block never asked."""
    assert_closed_and_banned(violations, name, reason)


@pytest.mark.parametrize("name", ["C9b-index", "C9b-begin"])
def test_c9b_block_outside_the_torrent_closes(violations: Run, name: str) -> None:
    assert_closed_and_banned(violations, name, "piece outside the torrent")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("C16-deep", r"extended handshake: .*input is 200000 bytes, over the 16384-byte limit"),
        ("C16-malformed", r"extended handshake: bad bencode at byte 21: integer is unterminated"),
    ],
)
def test_c16_extended_message_closes_that_connection_only(
    violations: Run, name: str, reason: str
) -> None:
    """C16: both handshakes set the BEP 10 bit (ours does since issue 14), so the hostile
    extended handshake reaches our router, which refuses it by its size before decoding
    (the 100k-deep one) or as bad bencode.  The worker survives: no restart, and the
    download completes."""
    assert_closed_and_banned(violations, name, reason)
    assert not [n for n in violations.progress.notes if "restart" in n or "crash" in n]
    assert set(violations.res.pieces_per_worker) == {0}


# -- C9: unrequested blocks ---------------------------------------------------------------------


def unrequested(data: bytes, blocks: int) -> Script:
    """While still choking the client (so it cannot have asked), push ``blocks`` blocks."""

    def script(c: EvilConn) -> None:
        c.greet(unchoke=False)
        junk = stamp(b"UNWANTED")
        per_piece = c.torrent.piece_length // BLOCK
        for k in range(blocks):
            index, blk = divmod(k % ((c.torrent.num_pieces - 1) * per_piece), per_piece)
            c.send_piece(index, blk * BLOCK, junk(index, blk * BLOCK, bytes(BLOCK)))
        c.mark("pushed")
        c.send_unchoke()
        c.serve_from(data)

    return script


def test_c9_unrequested_blocks_are_discarded_and_a_flood_disconnects(
    case: TorrentCase, data: bytes, good: LtPeer, tmp_path: Path
) -> None:
    """C9: 1 MiB of blocks nobody asked for is dropped (never written: the output is
    watched for them), and the peer stays useful; more than 4 MiB (MAX_UNWANTED_BYTES)
    closes the connection."""
    out = tmp_path / "out.bin"
    poller = Poller(out, b"UNWANTEDUNWANTED")
    with ExitStack() as stack:
        evils = start_evils(
            stack, case, {"pusher": unrequested(data, 64), "flood": unrequested(data, 640)}
        )
        timer = throttle(good, 512 * KiB, 1.5)
        poller.start()
        try:
            run = run_fetch(case, out, (good.addr, evils["pusher"].addr, evils["flood"].addr))
        finally:
            timer.cancel()
            good.handle.set_upload_limit(0)
            poller.stop.set()
            poller.join()
    run.evils = evils
    check_evils(run)
    assert_complete(case, out)
    assert poller.samples >= MIN_SAMPLES and not poller.hits
    pusher = first(evils["pusher"])
    assert "pushed" in pusher.marks and pusher.blocks_sent > 64, "it served after pushing"
    assert evils["pusher"].addr not in run.res.banned
    flood = first(evils["flood"])
    assert flood.by_client and flood.blocks_sent > 4 * MiB // BLOCK and "pushed" not in flood.marks
    assert banned_reason(run.res, evils["flood"]) == "protocol error: too many unrequested blocks"
    assert evils["flood"].attempts == 1


# -- C10, C11: wrong data -----------------------------------------------------------------------


def test_c10_wrong_piece_is_never_written_and_its_sender_banned(
    case: TorrentCase, data: bytes, good: LtPeer, tmp_path: Path
) -> None:
    """C10: the liar answers every request at once with junk while the good seeder is held
    at 256 KiB/s, so the bad piece arrives first.  It fails SHA-1, nothing of it ever shows
    in the output file (polled all along), the liar is banned and never dialled again, and
    the good peer supplies that piece."""
    out = tmp_path / "out.bin"
    poller = Poller(out, b"EVILEVILEVILEVIL")

    def liar(c: EvilConn) -> None:
        c.greet()
        c.serve_from(data, corrupt=stamp(b"EVIL"))

    with EvilPeer(_ips(), case.meta, liar) as evil:
        timer = throttle(good, 256 * KiB, 2.0)
        poller.start()
        try:
            run = run_fetch(case, out, (good.addr, evil.addr))
        finally:
            timer.cancel()
            good.handle.set_upload_limit(0)
            poller.stop.set()
            poller.join()
    assert not evil.errors
    assert_complete(case, out)
    assert poller.samples >= MIN_SAMPLES and not poller.hits
    res = run.res
    assert first(evil).blocks_sent >= case.meta.piece_length // BLOCK
    assert set(res.banned) == {evil.addr}
    assert re.fullmatch(r"sent data that failed the hash check of piece \d+", res.banned[evil.addr])
    assert res.hash_failures >= 1
    assert "1 peer(s) banned" in summary(done_event(res))
    assert evil.attempts == 1 and first(evil).by_client
    assert res.pieces_per_peer == {good.addr: case.meta.num_pieces}


def test_c11_smart_ban_bans_only_the_peer_whose_block_was_corrupt(
    case: TorrentCase, data: bytes, good: LtPeer, tmp_path: Path
) -> None:
    """C11: the liar sends five blocks of a piece, one of them corrupt, then chokes; the good
    seeder sends the rest.  The piece fails, is fetched again (from the good peer), passes,
    and the per-block digests kept from the failure convict the liar alone."""
    out = tmp_path / "out.bin"
    chosen: list[int] = []

    def half_liar(c: EvilConn) -> None:
        c.greet()
        reqs = c.requests_within(0.3)
        indices = [r.index for r in reqs]
        piece = max(indices, key=indices.count)
        mine = [r for r in reqs if r.index == piece][:5]
        chosen.append(piece)
        for k, r in enumerate(mine):
            block = c.block(data, r)
            c.send_piece(r.index, r.begin, flip(r.index, r.begin, block) if k == 2 else block)
        c.send_choke()
        c.keepalive_forever()

    with EvilPeer(_ips(), case.meta, half_liar) as evil:
        timer = throttle(good, 512 * KiB, 1.5)
        try:
            run = run_fetch(case, out, (good.addr, evil.addr))
        finally:
            timer.cancel()
            good.handle.set_upload_limit(0)
    assert not evil.errors
    assert_complete(case, out)
    res = run.res
    assert first(evil).blocks_sent == 5, "too few blocks requested to mix a piece"
    assert res.banned == {evil.addr: f"sent a corrupt block of piece {chosen[0]}"}
    assert good.addr not in res.banned
    assert res.hash_failures == 1
    assert evil.attempts == 1 and first(evil).by_client


# -- C12-C15 and C9b (wrong length): peers that stall ----------------------------------------

STALL_WINDOW = 5.0


def choke_mid_piece(data: bytes) -> Script:
    def script(c: EvilConn) -> None:
        c.greet()
        reqs = c.requests_within(0.2)
        for r in [r for r in reqs if r.index == reqs[0].index][:3]:
            c.send_piece(r.index, r.begin, c.block(data, r))
        c.send_choke()
        c.keepalive_forever()

    return script


def snub(c: EvilConn) -> None:
    c.greet()
    c.next_request()
    c.keepalive_forever()


def trickle(rate: float) -> Callable[[bytes], Script]:
    def make(data: bytes) -> Script:
        def script(c: EvilConn) -> None:
            c.greet()
            r = c.next_request()
            body = c.block(data, r)
            c.trickle(b"".join((len(body).to_bytes(4, "big"), b"\x07", r.index.to_bytes(4, "big"),
                                r.begin.to_bytes(4, "big"), body)), rate)  # fmt: skip

        return script

    return make


def keepalives_only(c: EvilConn) -> None:
    c.read_handshake()
    c.send_handshake()
    c.keepalive_forever(0.5)


def short_blocks(data: bytes) -> Script:
    def script(c: EvilConn) -> None:
        c.greet()
        # One pipeline's worth: answering every endgame request this way would pass the
        # unrequested-bytes cap and get it banned, which is C9's business.
        for _ in range(32):
            r = c.next_request()
            c.send_piece(r.index, r.begin, c.block(data, r)[:-1])
        c.keepalive_forever()

    return script


STALLERS: dict[str, Callable[[bytes], Script]] = {
    "C12": choke_mid_piece,
    "C13": lambda _d: snub,
    "C14": trickle(1.0),
    "C14-1KiB/s": trickle(1024.0),
    "C15": lambda _d: keepalives_only,
    "C9b-length": short_blocks,
}


@pytest.fixture(scope="module")
def stalls(
    case: TorrentCase, data: bytes, good: LtPeer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    out = tmp_path_factory.mktemp("stalls") / "out.bin"
    with ExitStack() as stack:
        evils = start_evils(stack, case, {k: make(data) for k, make in STALLERS.items()})
        timer = throttle(good, 160 * KiB, STALL_WINDOW)
        try:
            run = run_fetch(case, out, (good.addr, *(e.addr for e in evils.values())), jobs=2)
        finally:
            timer.cancel()
            good.handle.set_upload_limit(0)
    run.evils = evils
    check_evils(run)
    assert_complete(case, out)
    assert run.res.banned == {}, "being slow is not a reason to ban"
    assert run.complete_at - run.started >= STALL_WINDOW - 0.5
    yield run


def test_c12_choke_mid_piece_and_never_unchoke(stalls: Run) -> None:
    """C12: three blocks, then a choke and keep-alives for ever.  The requests are handed
    back at the choke (other peers finish the piece), and the silent peer is dropped when
    the idle timeout runs out, counted from its last real message, the choke."""
    conn = first(stalls.evils["C12"])
    assert conn.blocks_sent == 3
    closed_after(conn, conn.marks.get("choke"), FAST.idle)


@pytest.mark.parametrize("name", ["C13", "C14", "C14-1KiB/s", "C9b-length"])
def test_c13_c14_no_block_within_the_snub_timeout_drops_the_peer(stalls: Run, name: str) -> None:
    """C13 never answers; C14 trickles its first block at 1 B/s (and 1 KiB/s): bytes keep
    coming but no block completes; C9b-length answers with blocks one byte short, which are
    discarded as unrequested.  Each is dropped once no block came for ``snub`` seconds after
    the first request, and it is not banned."""
    conn = first(stalls.evils[name])
    closed_after(conn, conn.first_request_at, FAST.snub)
    if name == "C14-1KiB/s":
        assert conn.sent_bytes > 1024, "the trickle did flow"


def test_c15_keepalives_only_hits_the_idle_timeout(stalls: Run) -> None:
    conn = first(stalls.evils["C15"])
    assert not conn.requests
    closed_after(conn, conn.marks.get("handshake"), FAST.idle)


def test_c14_slow_honest_peer_does_not_hold_back_the_end_with_one_worker(
    case: TorrentCase, data: bytes, good: LtPeer, tmp_path: Path
) -> None:
    """A peer that answers correctly at 10 blocks/s, next to an unthrottled seeder that can
    send the whole torrent in a fraction of a second: endgame must let the fast peer fetch
    the blocks still waiting on the slow one."""
    out = tmp_path / "out.bin"

    def slow(c: EvilConn) -> None:
        c.greet()
        c.serve_from(data, pace=0.1)

    with EvilPeer(_ips(), case.meta, slow) as evil:
        run = run_fetch(case, out, (good.addr, evil.addr))
    assert not evil.errors
    assert_complete(case, out)
    assert run.complete_at - run.started < 2.0, f"{first(evil).blocks_sent} blocks from it"


def test_c13_snubbing_peer_alone_in_a_worker_does_not_hold_its_pieces(
    case: TorrentCase, good: LtPeer, tmp_path: Path
) -> None:
    """Listed first, the snubber has worker 0 to itself and reports its bitfield (half the
    pieces) before the seeder, paused for the first half second, does.  Once back, the
    unthrottled seeder in worker 1 could send everything in well under a second."""
    out = tmp_path / "out.bin"

    def hoarder(c: EvilConn) -> None:
        c.read_handshake()
        c.send_handshake()
        c.send_bitfield(full_bitfield(c.torrent.num_pieces, set(range(0, NUM_PIECES, 2))))
        c.send_unchoke()
        c.next_request()
        c.keepalive_forever()

    with EvilPeer(_ips(), case.meta, hoarder) as evil:
        good.handle.pause()
        timer = threading.Timer(0.5, good.handle.resume)
        timer.start()
        try:
            run = run_fetch(case, out, (evil.addr, good.addr), jobs=2)
        finally:
            timer.cancel()
            good.handle.resume()
    assert not evil.errors
    assert_complete(case, out)
    assert run.complete_at - run.started < 3.0


# -- C17: reset mid-piece -----------------------------------------------------------------------


def test_c17_reset_after_five_blocks_moves_on_and_retries_later(
    case: TorrentCase, data: bytes, good: LtPeer, tmp_path: Path
) -> None:
    """C17: five honest blocks of a piece, then a TCP RST, on every connection.  The piece's
    other blocks go to the good peer; the flaky peer delivered data, so it is retried from
    the bottom of the back-off ladder, at most 12 times, and never banned."""
    out = tmp_path / "out.bin"

    def flaky(c: EvilConn) -> None:
        c.greet()
        c.reset_after(5, data)

    with EvilPeer(_ips(), case.meta, flaky) as evil:
        timer = throttle(good, 256 * KiB, 3.0)
        try:
            run = run_fetch(case, out, (good.addr, evil.addr))
        finally:
            timer.cancel()
            good.handle.set_upload_limit(0)
    assert not evil.errors
    assert_complete(case, out)
    assert evil.addr not in run.res.banned
    conn = first(evil)
    assert conn.end == RESET_BY_PEER and conn.blocks_sent == 5
    assert 2 <= evil.attempts <= CONNECT_CAP
    assert all(g >= 1.0 - EARLY for g in gaps(evil)), gaps(evil)


# -- C19: nobody is honest ----------------------------------------------------------------------


def partial_liar(data: bytes, have: set[int], honest_pieces: int) -> Script:
    """Offers ``have``; the first ``honest_pieces`` pieces asked for get real data, the rest
    junk (each piece wholly from this peer, so the liar is its sole contributor)."""

    def script(c: EvilConn) -> None:
        c.read_handshake()
        c.send_handshake()
        c.send_bitfield(full_bitfield(c.torrent.num_pieces, have))
        c.send_unchoke()
        good_pieces: set[int] = set()
        seen: set[int] = set()
        while True:
            r = c.next_request()
            if r.index not in seen:
                seen.add(r.index)
                if len(good_pieces) < honest_pieces:
                    good_pieces.add(r.index)
            block = c.block(data, r)
            if r.index not in good_pieces:
                block = stamp(b"LIAR")(r.index, r.begin, block)
            c.send_piece(r.index, r.begin, block)

    return script


def test_c19_every_peer_hostile_exits_1_then_resumes_from_a_good_peer(
    case: TorrentCase, data: bytes, good: LtPeer, tmp_path: Path
) -> None:
    """C19 through the real command line: three liars, each offering a third of the pieces
    and telling the truth about its first two.  Exit 1 with one line naming the bans; the
    verified pieces stay on disk, and a later fetch from the good seeder keeps them."""
    meta = case.meta
    out = tmp_path / "out.bin"
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(case.torrent)
    thirds = [set(range(k, meta.num_pieces, 3)) for k in range(3)]
    with ExitStack() as stack:
        evils = [
            stack.enter_context(EvilPeer(_ips(), meta, partial_liar(data, have, 2)))
            for have in thirds
        ]
        peers = [arg for e in evils for arg in ("--peer", f"{e.host}:{e.port}")]
        proc = subprocess.run(
            [sys.executable, "-m", "mptorrent", "fetch", str(torrent), "-o", str(out), "-j", "2",
             "--no-trackers", "--no-dht", "--bind", _ips(), "--port", "0", "-q", *peers],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        "mptorrent: error: could not complete: no usable peers (3 banned: sent data that "
        "failed the hash check)"
    ], proc.stderr
    for e in evils:
        assert not e.errors
        assert e.attempts == 1 and first(e).by_client
    content = out.read_bytes()
    assert b"LIARLIARLIARLIAR" not in content
    kept = [
        i for i in range(meta.num_pieces)
        if hashlib.sha1(content[i * meta.piece_length : (i + 1) * meta.piece_length]).digest()
        == meta.piece_hash(i)
    ]  # fmt: skip
    assert len(kept) >= 3, "each liar's first honest pieces should have been verified"

    run = run_fetch(case, out, (good.addr,))
    assert run.res.resumed_pieces == len(kept)
    assert run.res.downloaded == meta.total_length - sum(meta.piece_size(i) for i in kept)
    assert_complete(case, out)
