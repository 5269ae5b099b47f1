"""Acceptance tests of ``mptorrent fetch``: the real CLI in a subprocess against real libtorrent
seeders on loopback, with peers found through Debian's opentracker or given with ``--peer``.

Torrents are made by libtorrent (tests/swarm.py).  Seeders of the single-file torrent sit on
127.0.0.11-13 and of the multi-file one on 127.0.0.14-16, announcing to opentracker on
127.0.0.1; the partial-seeder and resume tests bring their own seeders on .17 and up.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

import libtorrent as lt
import pytest

from mptorrent.proto import metainfo
from tests.dht_off import no_dht
from tests.interop.opentracker import OpenTracker, run_opentracker
from tests.schema_check import validate
from tests.spread import (
    CLI_WITH_RESULT,
    RESULT_ENV,
    SPREAD_MIN_SIZE,
    assert_spread,
    read_result,
)
from tests.swarm import Swarm, TorrentCase, same_tree

pytestmark = pytest.mark.interop

FETCH_TIMEOUT = 60.0
SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "events.schema.json").read_text())
SUMMARY = re.compile(
    r"done: [\d.]+ \S+ in [\d.]+ s, [\d.]+ \S+/s average, (?P<peers>\d+) peer\(s\) used"
    r"(, (?P<resumed>\d+) piece\(s\) already on disk)?"
    r"(, [\d.]+ \S+ received twice or discarded)?"
)


# -- helpers ------------------------------------------------------------------------------


def with_tracker(torrent: bytes, url: str) -> bytes:
    """The same torrent (same info-hash) announcing to ``url``."""
    d = lt.bdecode(torrent)
    d[b"announce"] = url.encode()
    out: bytes = lt.bencode(d)
    assert metainfo.parse(out).info_hash == metainfo.parse(torrent).info_hash
    return out


def scrape(tracker: OpenTracker, info_hash: bytes) -> dict[bytes, int]:
    """opentracker's own counters for one torrent: complete, incomplete, downloaded."""
    q = urllib.parse.quote_from_bytes(info_hash, safe="")
    with urllib.request.urlopen(f"{tracker.scrape_url}?info_hash={q}", timeout=5) as resp:
        body = lt.bdecode(resp.read())
    files = body.get(b"files", {})
    return dict(files.get(info_hash, {}))


def wait_for_seeders(tracker: OpenTracker, info_hash: bytes, n: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while scrape(tracker, info_hash).get(b"complete", 0) < n:
        if time.monotonic() > deadline:
            seen = scrape(tracker, info_hash)
            raise AssertionError(f"opentracker knows {seen} after {timeout} s")
        time.sleep(0.05)


@contextlib.contextmanager
def tracked_swarm(case: TorrentCase, tracker: OpenTracker, first_ip: int) -> Iterator[Swarm]:
    """Three libtorrent seeders of ``case`` from 127.0.0.``first_ip`` on, announced to
    ``tracker``, and known to it as complete before the test goes on."""
    with Swarm(
        case.torrent, case.save_dir, first_ip=first_ip, tracker_url=tracker.announce_url
    ) as s:
        wait_for_seeders(tracker, case.meta.info_hash, 3)
        yield s


def peer_args(addrs: Iterable[tuple[str, int]]) -> list[str]:
    return [arg for host, port in addrs for arg in ("--peer", f"{host}:{port}")]


def unused_port() -> int:
    """A port to report to the tracker.  opentracker knows a peer by address and port, so each
    fetch needs its own to be counted as a new peer."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch_cmd(torrent: Path, out: Path, *args: str) -> list[str]:
    """The real CLI, which also writes its FetchResult to $MPTORRENT_TEST_RESULT (spread.py)."""
    return [
        sys.executable, "-c", CLI_WITH_RESULT, *no_dht(["fetch", str(torrent), "-o", str(out),
        "--port", str(unused_port()), *args]),
    ]  # fmt: skip


def run_fetch(
    torrent: Path, out: Path, *args: str, timeout: float = FETCH_TIMEOUT,
    result: Path | None = None,
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    env = {**os.environ, RESULT_ENV: str(result)} if result else None
    try:
        return subprocess.run(
            fetch_cmd(torrent, out, *args), stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=timeout, env=env,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"mptorrent fetch {' '.join(args)} did not finish in {timeout:.0f} s")


def summary_of(proc: subprocess.CompletedProcess[str]) -> re.Match[str]:
    """Exit 0 and the summary as the last stderr line; returns the parsed summary."""
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines, "nothing on stderr"
    m = SUMMARY.fullmatch(lines[-1])
    assert m is not None, proc.stderr
    return m


def piece_bytes(meta: metainfo.Metainfo, pieces: Iterable[int]) -> int:
    return sum(min(meta.piece_length, meta.total_length - i * meta.piece_length) for i in pieces)


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tracker(
    opentracker_bin: str, single_case: TorrentCase, multi_case: TorrentCase
) -> Iterator[OpenTracker]:
    with run_opentracker([single_case.meta.info_hash, multi_case.meta.info_hash]) as t:
        yield t


@pytest.fixture(scope="module")
def single_swarm(single_case: TorrentCase, tracker: OpenTracker) -> Iterator[Swarm]:
    with tracked_swarm(single_case, tracker, first_ip=11) as swarm:
        yield swarm


@pytest.fixture(scope="module")
def multi_swarm(multi_case: TorrentCase, tracker: OpenTracker) -> Iterator[Swarm]:
    with tracked_swarm(multi_case, tracker, first_ip=14) as swarm:
        yield swarm


@pytest.fixture
def setup(
    request: pytest.FixtureRequest, tracker: OpenTracker, tmp_path: Path
) -> tuple[TorrentCase, Swarm, Path]:
    """(case, its tracker-announcing swarm, a .torrent file naming opentracker)."""
    kind = request.param
    case: TorrentCase = request.getfixturevalue(f"{kind}_case")
    swarm: Swarm = request.getfixturevalue(f"{kind}_swarm")
    torrent = tmp_path / f"{kind}.torrent"
    torrent.write_bytes(with_tracker(case.torrent, tracker.announce_url))
    return case, swarm, torrent


# -- tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("jobs", [1, 3])
@pytest.mark.parametrize("setup", ["single", "multi"], indirect=True)
def test_fetch_through_opentracker(
    setup: tuple[TorrentCase, Swarm, Path], tracker: OpenTracker, tmp_path: Path, jobs: int
) -> None:
    case, _swarm, torrent = setup
    before = scrape(tracker, case.meta.info_hash).get(b"downloaded", 0)
    out = tmp_path / "out"
    proc = run_fetch(torrent, out, "-j", str(jobs), result=tmp_path / "result.json")
    m = summary_of(proc)
    assert 1 <= int(m["peers"]) <= 3
    if case.meta.total_length >= SPREAD_MIN_SIZE:  # opentracker lists all three seeders
        assert_spread(read_result(tmp_path / "result.json").pieces_per_worker, jobs, 3)
    assert m["resumed"] is None
    assert same_tree(out, case.payload.root)
    # the peers came from opentracker (no --peer), and we told it we finished
    assert scrape(tracker, case.meta.info_hash).get(b"downloaded", 0) == before + 1


@pytest.mark.parametrize("setup", ["single"], indirect=True)
def test_json_says_the_peers_came_from_the_tracker(
    setup: tuple[TorrentCase, Swarm, Path], tracker: OpenTracker, tmp_path: Path
) -> None:
    """--json: every peer the fetch dialled came from opentracker (no --peer), so its ``peer``
    lines say ``tracker``; ``tracker`` lines name their tracker, a failed one too, without the
    passkey in its path."""
    case, swarm, _torrent = setup
    dead = f"http://127.0.0.1:{unused_port()}"
    d = lt.bdecode(with_tracker(case.torrent, tracker.announce_url))
    d[b"announce-list"] = [[tracker.announce_url.encode()], [f"{dead}/SECRET/announce".encode()]]
    torrent = tmp_path / "two-tiers.torrent"
    torrent.write_bytes(lt.bencode(d))
    proc = run_fetch(torrent, tmp_path / "out", "-j", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    for line in lines:
        validate(line, SCHEMA)
    assert lines[-1]["event"] == "done"
    seeders = {f"{h}:{p}" for h, p in swarm.addrs}
    dialled = {(g["address"], g["source"]) for g in lines if g["event"] == "peer"}
    assert dialled and {a for a, _ in dialled} <= seeders, dialled
    assert {src for _, src in dialled} == {"tracker"}, dialled
    trackers = [g for g in lines if g["event"] == "tracker"]
    ours = urllib.parse.urlsplit(tracker.announce_url)
    assert {g["url"] for g in trackers if g["outcome"] == "ok"} == {f"http://{ours.netloc}"}
    assert {g["url"] for g in trackers if g["outcome"] == "error"} == {dead}, trackers
    assert "SECRET" not in proc.stdout


@pytest.mark.parametrize("setup", ["single"], indirect=True)
def test_tracker_forgets_us_when_fetch_exits(
    setup: tuple[TorrentCase, Swarm, Path], tracker: OpenTracker, tmp_path: Path
) -> None:
    """fetch does not seed: when it exits, trackers must not keep listing it (BEP 3: a
    downloader that ceases sends event=stopped), or other peers are sent to a dead port."""
    case, _swarm, torrent = setup
    before = scrape(tracker, case.meta.info_hash)
    summary_of(run_fetch(torrent, tmp_path / "out", "-j", "1"))
    after = scrape(tracker, case.meta.info_hash)
    assert after[b"downloaded"] == before[b"downloaded"] + 1
    assert (after[b"complete"], after[b"incomplete"]) == (
        before[b"complete"], before[b"incomplete"],
    ), after  # fmt: skip


@pytest.mark.parametrize("jobs", [1, 3])
@pytest.mark.parametrize("setup", ["single", "multi"], indirect=True)
def test_fetch_from_given_peers_without_trackers(
    setup: tuple[TorrentCase, Swarm, Path], tracker: OpenTracker, tmp_path: Path, jobs: int
) -> None:
    case, swarm, torrent = setup
    before = scrape(tracker, case.meta.info_hash)
    out = tmp_path / "out"
    proc = run_fetch(
        torrent, out, "-j", str(jobs), "--no-trackers", *peer_args(swarm.addrs),
        result=tmp_path / "result.json",
    )  # fmt: skip
    summary_of(proc)
    if case.meta.total_length >= SPREAD_MIN_SIZE:
        assert_spread(read_result(tmp_path / "result.json").pieces_per_worker, jobs, 3)
    assert same_tree(out, case.payload.root)
    assert scrape(tracker, case.meta.info_hash) == before  # never announced


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_partial_seeders_serve_exactly_their_pieces(
    single_case: TorrentCase, tmp_path: Path, jobs: int
) -> None:
    """Two seeders with complementary halves (split off the middle): every piece exists at
    exactly one peer, so each seeder must have sent exactly its own pieces, and a request for
    a piece a peer lacks would stall the fetch."""
    meta = single_case.meta
    n = meta.num_pieces
    split = n // 2 + 7
    first, second = range(split), range(split, n)
    torrent = tmp_path / "single.torrent"
    torrent.write_bytes(single_case.torrent)
    with Swarm(
        single_case.torrent, single_case.save_dir, n_seeders=2, first_ip=17,
        have_pieces=[first, second], use_trackers=False,
    ) as swarm:  # fmt: skip
        a, b = swarm.seeders
        assert (a.have(), b.have()) == (set(first), set(second))
        out = tmp_path / "out.bin"
        # With both seeders whole this takes under a second at any -j.
        proc = run_fetch(
            torrent, out, "-j", str(jobs), "--no-trackers", *peer_args(swarm.addrs), timeout=12,
            result=tmp_path / "result.json",
        )  # fmt: skip
        m = summary_of(proc)
        assert_spread(read_result(tmp_path / "result.json").pieces_per_worker, jobs, 2)
        assert same_tree(out, single_case.payload.root)
        assert int(m["peers"]) == 2
        up_a, up_b = (s.payload_upload for s in swarm.stats())
    want_a, want_b = piece_bytes(meta, first), piece_bytes(meta, second)
    # Sent twice only in the endgame (an idle worker asks for a piece still in flight, through
    # its own connection to the same seeder) or after a connection drops mid-piece.
    slack = (jobs + 1) * meta.piece_length
    assert want_a <= up_a <= want_a + slack, (up_a, want_a)
    assert want_b <= up_b <= want_b + slack, (up_b, want_b)


def test_interrupt_and_resume(single_case: TorrentCase, tmp_path: Path) -> None:
    """Ctrl-C midway exits 130 with one line; the rerun fetches only what is missing."""
    meta = single_case.meta
    size = meta.total_length
    torrent = tmp_path / "single.torrent"
    torrent.write_bytes(single_case.torrent)
    out = tmp_path / "out.bin"
    # About 13 MiB/s in all: the first half takes ~1.5 s, long enough to interrupt midway.
    rate = 9 * 512 * 1024
    with Swarm(
        single_case.torrent, single_case.save_dir, n_seeders=3, first_ip=19,
        upload_rate_limit=rate, use_trackers=False,
    ) as swarm:  # fmt: skip
        args = ("-j", "3", "--no-trackers", *peer_args(swarm.addrs))
        proc = subprocess.Popen(
            fetch_cmd(torrent, out, *args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while swarm.total_uploaded() < 0.45 * size:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the fetch did not get halfway"
                time.sleep(0.02)
            # Ctrl-C in a terminal reaches the whole foreground process group.
            os.killpg(proc.pid, signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 130, stderr
        assert stderr.splitlines() == ["mptorrent: error: interrupted"], stderr
        assert stdout == ""
        time.sleep(0.2)  # let libtorrent's counters see the closed connections
        first_run = swarm.total_uploaded()
        assert first_run < 0.9 * size, "the first run was not interrupted midway"

        proc2 = run_fetch(torrent, out, *args)
        m = summary_of(proc2)
        total = swarm.total_uploaded()
    assert same_tree(out, single_case.payload.root)
    resumed = int(m["resumed"] or 0)
    kept = piece_bytes(meta, range(resumed))  # all pieces but the last are full size
    # Blocks of pieces that were unfinished at the interrupt are lost; nothing else.  Each
    # worker keeps about a second of data in flight per peer (here 3 workers x 3 peers x
    # ~1.5 MiB, spread over the pieces each worker holds), so up to ~24 pieces' worth.
    slack = 24 * meta.piece_length
    assert kept >= first_run - slack, (kept, first_run)
    assert total - first_run <= size - kept + slack, (total, first_run, kept)
    assert total <= size + slack, (total, size)
