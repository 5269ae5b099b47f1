"""``fetch``, ``verify`` and ``seed --json`` against real libtorrent seeders on loopback: every
line of stdout is one JSON object that docs/events.schema.json accepts, in a sane order
(which torrent first, ``done`` or ``error`` last), and ``done`` counts the torrent's bytes.

Seeders sit on 127.0.0.51-53 (a full-speed swarm) and 127.0.0.54-56 (a slow one, to stop a
fetch midway); the seed test listens on 127.0.0.57.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mptorrent.proto.magnet import Magnet
from tests.dht_off import no_dht
from tests.schema_check import validate
from tests.spread import CLI_WITH_RESULT
from tests.swarm import Swarm, TorrentCase, same_tree

pytestmark = pytest.mark.interop

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "events.schema.json").read_text())
TIMEOUT = 60.0


def cli(*args: str) -> list[str]:
    # the real CLI, with Python's SIGINT handler even when the test run ignores SIGINT
    return [sys.executable, "-c", CLI_WITH_RESULT, *no_dht(args)]


def peer_args(swarm: Swarm) -> list[str]:
    return [arg for a in swarm.addrs for arg in ("--peer", f"{a[0]}:{a[1]}")]


def parse(stdout: str, last: tuple[str, ...] = ("done", "error")) -> list[dict[str, Any]]:
    """Every line of stdout: one schema-valid JSON object, the version on the first only,
    times that never go back, and done or error (``last``) only as the last line."""
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert lines, "nothing on stdout"
    for n, line in enumerate(lines):
        validate(line, SCHEMA)
        assert ("v" in line) == (n == 0), line
    assert lines[0]["v"] == 1
    times = [line["t"] for line in lines]
    assert times == sorted(times)
    assert all(line["event"] not in last for line in lines[:-1])
    assert lines[-1]["event"] in last
    return lines


def run(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli(*args), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def swarm(single_case: TorrentCase) -> Iterator[Swarm]:
    with Swarm(
        single_case.torrent, single_case.save_dir, n_seeders=3, first_ip=51, use_trackers=False
    ) as s:
        yield s


@pytest.fixture
def torrent(single_case: TorrentCase, tmp_path: Path) -> Path:
    path = tmp_path / "single.torrent"
    path.write_bytes(single_case.torrent)
    return path


def test_fetch_json_validates_and_ends_with_done(
    single_case: TorrentCase, swarm: Swarm, torrent: Path, tmp_path: Path
) -> None:
    meta = single_case.meta
    out = tmp_path / "out.bin"
    proc = run(
        "fetch", str(torrent), "-o", str(out), "-j", "2", "--port", "0", "--no-trackers",
        *peer_args(swarm), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no bar, no notes: the stream says it all
    lines = parse(proc.stdout)
    first, last = lines[0], lines[-1]
    assert first["event"] == "metadata"
    assert (first["info_hash"], first["size"], first["pieces"]) == (
        meta.info_hash_hex, meta.total_length, meta.num_pieces,
    )  # fmt: skip
    assert first["files"] == [{"path": meta.name, "length": meta.total_length}]
    assert last["event"] == "done" and last["bytes"] == meta.total_length
    kinds = [line["event"] for line in lines]
    assert kinds.index("started") < kinds.index("piece")
    pieces = [line["index"] for line in lines if line["event"] == "piece"]
    assert sorted(pieces) == list(range(meta.num_pieces))
    swarm_addrs = {f"{a[0]}:{a[1]}" for a in swarm.addrs}
    connected = {line["address"] for line in lines if line["event"] == "peer"}
    assert connected and connected <= swarm_addrs
    assert {line["source"] for line in lines if line["event"] == "peer"} == {"manual"}
    assert "progress" in kinds
    for p in (line for line in lines if line["event"] == "progress"):
        assert p["total"] == meta.total_length and 0 <= p["done"] <= p["total"]
    assert same_tree(out, single_case.payload.root)

    # verify --json on what was fetched, then on a damaged copy
    ok = run("verify", str(torrent), str(out), "--json")
    assert ok.returncode == 0, ok.stderr
    vlines = parse(ok.stdout)
    assert [v["event"] for v in vlines] == ["metadata", *["progress"] * (len(vlines) - 3),
                                            "verified", "done"]  # fmt: skip
    assert vlines[-1]["bytes"] == meta.total_length
    with out.open("r+b") as fh:
        fh.seek(meta.piece_length * 3 + 5)
        fh.write(b"\xff" * 4)
    bad = run("verify", str(torrent), str(out), "--json")
    assert bad.returncode == 1
    blines = parse(bad.stdout)
    assert blines[-2]["event"] == "verified" and blines[-2]["invalid"] == [3]
    assert blines[-1]["event"] == "error" and blines[-1]["exit"] == 1


def test_magnet_fetch_json_starts_with_the_magnet_then_its_metadata(
    single_case: TorrentCase, swarm: Swarm, tmp_path: Path
) -> None:
    meta = single_case.meta
    magnet = Magnet(meta.info_hash, name=meta.name).to_uri()
    out = tmp_path / "out.bin"
    proc = run(
        "fetch", magnet, "-o", str(out), "--port", "0", "--no-trackers", *peer_args(swarm),
        "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = parse(proc.stdout)
    kinds = [line["event"] for line in lines]
    assert kinds[:3] == ["magnet", "metadata_fetched", "metadata"]
    assert lines[2]["info_hash"] == meta.info_hash_hex
    assert lines[-1]["event"] == "done" and lines[-1]["bytes"] == meta.total_length
    assert same_tree(out, single_case.payload.root)


def test_a_garbage_torrent_is_one_error_line_with_exit_3(tmp_path: Path) -> None:
    bad = tmp_path / "bad.torrent"
    bad.write_bytes(b"this is not bencode")
    proc = run("fetch", str(bad), "-o", str(tmp_path / "x"), "--json", timeout=20)
    assert proc.returncode == 3
    (line,) = parse(proc.stdout)
    assert line["event"] == "error" and line["exit"] == 3


@contextlib.contextmanager
def slow_json_fetch(
    case: TorrentCase, torrent: Path, tmp_path: Path, *, new_session: bool = False
) -> Iterator[subprocess.Popen[str]]:
    """``fetch --json -j 2`` from three seeders held to 4.5 MiB/s each, so that a test can
    act on the stream (signal it, close it) well before the download ends."""
    with Swarm(
        case.torrent, case.save_dir, n_seeders=3, first_ip=54,
        upload_rate_limit=9 * 512 * 1024, use_trackers=False,
    ) as slow:  # fmt: skip
        yield subprocess.Popen(
            cli("fetch", str(torrent), "-o", str(tmp_path / "out.bin"), "-j", "2", "--port", "0",
                "--no-trackers", *peer_args(slow), "--json"),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=new_session,
        )  # fmt: skip


def test_sigint_midway_ends_the_stream_with_error_130(
    single_case: TorrentCase, torrent: Path, tmp_path: Path
) -> None:
    size = single_case.meta.total_length
    with slow_json_fetch(single_case, torrent, tmp_path, new_session=True) as proc:
        try:
            assert proc.stdout is not None
            seen = []
            deadline = time.monotonic() + 30
            for text in proc.stdout:  # a few pieces in: stop it
                seen.append(text)
                if text.startswith('{"event": "piece"') and len(seen) > 20:
                    break
                assert time.monotonic() < deadline
            os.killpg(proc.pid, signal.SIGINT)
            rest, stderr = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, stderr
    lines = parse("".join(seen) + rest)
    assert lines[-1] == {**lines[-1], "event": "error", "exit": 130}
    progress = [line["done"] for line in lines if line["event"] == "progress"]
    assert not progress or progress[-1] < size


def test_a_closed_stdout_stops_the_fetch_quietly_with_141(
    single_case: TorrentCase, torrent: Path, tmp_path: Path
) -> None:
    """``fetch --json | head -1``: once nobody reads, the fetch stops as Ctrl-C stops it
    (within moments: a line is due every 0.5 s), with no traceback and no words, exit 141."""
    with slow_json_fetch(single_case, torrent, tmp_path) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            proc.stdout.close()  # what head -1 does once it has its line
            proc.stdout = None  # (communicate reads only stderr)
            _, stderr = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert json.loads(first)["event"] == "metadata"
    assert proc.returncode == 141, stderr
    assert stderr == ""


def test_seed_json_ready_then_sigterm_ends_with_error_130(
    single_case: TorrentCase, torrent: Path
) -> None:
    proc = subprocess.Popen(
        cli("seed", str(torrent), str(single_case.payload.root), "--bind", "127.0.0.57",
            "--port", "0", "--no-trackers", "-j", "1", "--json"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        seen = []
        for text in proc.stdout:
            seen.append(text)
            if '"seeding"' in text:
                break
        proc.send_signal(signal.SIGTERM)
        rest, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    lines = parse("".join(seen) + rest)
    assert lines[0]["event"] == "metadata"
    ready = next(line for line in lines if line["event"] == "seeding")
    assert ready["state"] == "ready" and ready["port"] > 0
    assert ready["pieces"] == single_case.meta.num_pieces
    assert lines[-1]["event"] == "error" and lines[-1]["exit"] == 130


def test_a_fetch_that_seeds_after_ends_with_seeded(
    single_case: TorrentCase, swarm: Swarm, torrent: Path, tmp_path: Path
) -> None:
    proc = run(
        "fetch", str(torrent), "-o", str(tmp_path / "out.bin"), "--port", "0", "--no-trackers",
        *peer_args(swarm), "--seed-time", "0.01", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = parse(proc.stdout, last=("seeded", "error"))
    kinds = [line["event"] for line in lines]
    assert kinds.count("done") == 1 and kinds[-1] == "seeded"
    assert lines[kinds.index("done")]["bytes"] == single_case.meta.total_length
