"""Hostile web seeds (BEP 19), table M of tests/adversarial/README.md.

Each hostile mirror (tests/fakes/evil_httpd.py, ours) sits next to a good one (Debian's
lighttpd, rate-capped so the download lasts long enough for the hostile one to be asked):
the real CLI must finish byte-identical, and the hostile mirror's fate must be the named
outcome, seen in the ``--json`` peer lines.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mptorrent.netio.webseed import CONNECTIONS, MAX_CONNECTIONS, PIPELINE
from tests.dht_off import no_dht
from tests.fakes.evil_httpd import EvilHttpd, Mode
from tests.httpd import run_lighttpd
from tests.swarm import same_tree, single_file_case

pytestmark = pytest.mark.interop

MiB = 1 << 20
TIMEOUT = 60.0


def fetch(torrent: Path, out: Path, *args: str) -> tuple[int, str, list[dict[str, Any]]]:
    cmd = [sys.executable, "-m", "mptorrent", *no_dht(["fetch", str(torrent), "-o", str(out),
           "--no-trackers", "--port", "0", "--json", *args])]  # fmt: skip
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=TIMEOUT, env=dict(os.environ))  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"fetch {' '.join(args)} did not finish in {TIMEOUT:.0f} s")
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, proc.stderr, lines


def states(lines: list[dict[str, Any]], address: str) -> list[tuple[str, str | None]]:
    return [(e["state"], e["reason"]) for e in lines
            if e["event"] == "peer" and e["address"] == address]  # fmt: skip


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("ignore-range", "web seed ignores-range: 200 with the whole file for a Range request"),
        ("too-long", "web seed too-long: Content-Length"),
        ("redirect-loop", "web seed redirect-loop: more than 5 redirects"),
        ("drip", "web seed too-slow"),
        ("corrupt", "sent data that failed the hash check of piece"),
    ],
)
def test_a_hostile_mirror_is_dropped_and_the_good_one_finishes(
    tmp_path: Path, mode: Mode, reason: str
) -> None:
    # a drip is judged after SLOW_AFTER (3 s) of a request: the download must last longer
    case = single_file_case(tmp_path / "src", size=(4 if mode == "drip" else 2) * MiB)
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(case.torrent)
    with (
        EvilHttpd(tmp_path / "src", "127.0.16.41", mode) as evil,
        run_lighttpd(tmp_path / "src", "127.0.16.42", rate_kib=1024) as good,
    ):
        bad_url = evil.base + "payload.bin"
        mirrors = ("--web-seed", bad_url, "--web-seed", good.url("payload.bin"))
        code, err, lines = fetch(torrent, tmp_path / "out.bin", "-j", "1", *mirrors)
    assert code == 0, err
    assert same_tree(tmp_path / "out.bin", case.payload.root)
    assert evil.requests > 0
    banned = [r for s, r in states(lines, bad_url) if s == "banned"]
    assert len(banned) == 1 and banned[0] is not None and banned[0].startswith(reason), banned
    assert lines[-1]["event"] == "done"


def test_a_mirror_answering_503_backs_off_instead_of_hammering(tmp_path: Path) -> None:
    case = single_file_case(tmp_path / "src", size=4 * MiB)
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(case.torrent)
    with (
        EvilHttpd(tmp_path / "src", "127.0.16.43", "503") as evil,
        run_lighttpd(tmp_path / "src", "127.0.16.44", rate_kib=1024) as good,
    ):
        bad_url = evil.base + "payload.bin"
        mirrors = ("--web-seed", bad_url, "--web-seed", good.url("payload.bin"))
        code, err, lines = fetch(torrent, tmp_path / "out.bin", "-j", "1", *mirrors)
    assert code == 0, err
    assert same_tree(tmp_path / "out.bin", case.payload.root)
    # about 4 s of download: a first round of requests (up to PIPELINE on each of up to
    # CONNECTIONS connections), then one more after the 2 s back-off (the next would come
    # 5 s later); without a back-off, hundreds
    rounds = 1 + sum(1 for a, b in itertools.pairwise(evil.times) if b - a > 1.0)
    assert rounds <= 2 and evil.requests <= 2 * CONNECTIONS * PIPELINE, evil.times
    seen = [s for s, _r in states(lines, bad_url)]
    assert "gone" in seen and "banned" not in seen


def test_an_honest_redirect_is_followed(tmp_path: Path) -> None:
    workers = 2  # explicit: the default follows the machine's cores, and so would the bound
    # small pieces: a few hundred requests in all
    case = single_file_case(tmp_path / "src", size=4 * MiB, piece_length=16 * 1024)
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(case.torrent)
    with (
        run_lighttpd(tmp_path / "src", "127.0.16.46") as good,
        EvilHttpd(tmp_path / "src", "127.0.16.45", "redirect", redirect_to=good.base) as hop,
    ):
        code, err, _lines = fetch(torrent, tmp_path / "out.bin", "-j", str(workers),
                                  "--web-seed", hop.base + "payload.bin")  # fmt: skip
    assert code == 0, err
    assert same_tree(tmp_path / "out.bin", case.payload.root)
    # the redirect is remembered for the file: not one hop per request, only those already
    # in flight when the first redirect came back; each worker has its own connections
    # (the coordinator's share of MAX_CONNECTIONS) and learns the redirect on its own
    per_worker = min(CONNECTIONS, MAX_CONNECTIONS // workers)
    assert 1 <= hop.requests <= workers * per_worker * PIPELINE, hop.requests


def test_bad_web_seed_option_is_a_usage_error(tmp_path: Path) -> None:
    case = single_file_case(tmp_path / "src", size=MiB)
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(case.torrent)
    proc = subprocess.run(
        [sys.executable, "-m", "mptorrent",
         *no_dht(["fetch", str(torrent), "-o", str(tmp_path / "o"), "--web-seed", "ftp://x/y"])],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "scheme 'ftp' is not http or https" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()


def test_a_mirror_that_hangs_up_kept_alive_connections_still_serves(tmp_path: Path) -> None:
    # Each response is followed by a silent close: the next request on that connection finds
    # it gone (or is cut off): a fresh connection takes the run, no failure is counted.
    case = single_file_case(tmp_path / "src", size=3 * MiB)
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(case.torrent)
    with EvilHttpd(tmp_path / "src", "127.0.16.47", "hang-up") as evil:
        url = evil.base + "payload.bin"
        code, err, lines = fetch(torrent, tmp_path / "out.bin", "--web-seed", url)
    assert code == 0, err
    assert same_tree(tmp_path / "out.bin", case.payload.root)
    assert {s for s, _r in states(lines, url)} == {"connected"}  # never gone, never banned
