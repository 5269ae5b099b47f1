"""Selective and streaming fetches (issue 16) against real libtorrent seeders on loopback:
``--only`` (selected files byte-identical, unselected ones not created, the seeders' upload
counters bounded by the selected pieces, a second selection fetching only what is new),
``-o -`` through a real pipe (``sha256sum``, ``head``), ``--sequential``'s first bytes on a
rate-limited swarm, and the API's ``only=`` / ``sequential=`` / ``stream=``.

Seeders: 127.0.0.81 (multi-file, one seeder so that no endgame duplicate muddies its upload
counter), 127.0.0.82-84 (single file, full speed), 127.0.0.85-87 (single file, rate-limited).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import mptorrent
from mptorrent import events as ev
from tests.dht_off import no_dht
from tests.swarm import KiB, MiB, Swarm, TorrentCase, single_file_case

pytestmark = pytest.mark.interop

TIMEOUT = 60.0
EP1 = "media/season 1/ep1.mkv"


@pytest.fixture(scope="module")
def one_seeder(multi_case: TorrentCase) -> Iterator[Swarm]:
    with Swarm(
        multi_case.torrent, multi_case.save_dir, n_seeders=1, first_ip=81, use_trackers=False
    ) as s:
        yield s


@pytest.fixture(scope="module")
def full_speed(single_case: TorrentCase) -> Iterator[Swarm]:
    with Swarm(
        single_case.torrent, single_case.save_dir, n_seeders=3, first_ip=82, use_trackers=False
    ) as s:
        yield s


def _cmd(torrent: Path, swarm: Swarm, bind: str, *args: str) -> list[str]:
    peers = [w for a in swarm.addrs for w in ("--peer", f"{a.host}:{a.port}")]
    return [
        sys.executable, "-m", "mptorrent", *no_dht(["fetch", str(torrent), *peers,
        "--no-trackers", "--port", "0", "--bind", bind, *args]),
    ]  # fmt: skip


def _uploaded(swarm: Swarm) -> int:
    """The seeders' payload upload counters, once libtorrent has stopped moving them."""
    last, deadline = -1, time.monotonic() + 5
    while time.monotonic() < deadline:
        now = swarm.total_uploaded()
        if now == last:
            return now
        last = now
        time.sleep(1.1)  # libtorrent's status counters move once a second
    return last


def _pieces_bytes(case: TorrentCase, pieces: set[int]) -> int:
    meta = case.meta
    return sum(min(meta.piece_length, meta.total_length - i * meta.piece_length) for i in pieces)


def _file_pieces(case: TorrentCase, path: str) -> set[int]:
    meta = case.meta
    (f,) = [f for f in meta.files if "/".join(f.path) == path]
    pl = meta.piece_length
    return set(range(f.offset // pl, (f.offset + f.length - 1) // pl + 1))


def test_only_fetches_the_selected_files_and_a_second_selection_only_what_is_new(
    multi_case: TorrentCase, one_seeder: Swarm, tmp_path: Path, fresh_ip: Callable[[], str]
) -> None:
    torrent = tmp_path / "multi.torrent"
    torrent.write_bytes(multi_case.torrent)
    src = multi_case.payload.root
    out = tmp_path / "out"
    before = _uploaded(one_seeder)
    r = subprocess.run(
        _cmd(torrent, one_seeder, fresh_ip(), "-o", str(out), "-j", "1", "--only", EP1),
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (out / EP1).read_bytes() == (src / EP1).read_bytes()
    data = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert data == [".mptorrent.parts", EP1]  # nothing else created
    first = _pieces_bytes(multi_case, _file_pieces(multi_case, EP1))
    sent = _uploaded(one_seeder) - before
    size = (src / EP1).stat().st_size
    assert size <= sent <= first  # the file and the rest of its two straddling pieces

    # more of the season: ep2 shares a piece with ep1, which is not fetched again
    r = subprocess.run(
        _cmd(torrent, one_seeder, fresh_ip(), "-o", str(out), "-j", "1", "--only",
             "media/season 1/*"),
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    for name in (EP1, "media/season 1/ep2.mkv"):
        assert (out / name).read_bytes() == (src / name).read_bytes()
    new = _file_pieces(multi_case, "media/season 1/ep2.mkv") - _file_pieces(multi_case, EP1)
    sent2 = _uploaded(one_seeder) - before - sent
    assert 0 < sent2 <= _pieces_bytes(multi_case, new)
    v = subprocess.run(
        [sys.executable, "-m", "mptorrent", "verify", str(torrent), str(out), "--only",
         "media/season 1/*"],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert v.returncode == 0 and "selected pieces valid, 0 invalid, 0 missing" in v.stdout

    # every file: the rest comes, the parts file's bytes are used and it is removed
    r = subprocess.run(
        _cmd(torrent, one_seeder, fresh_ip(), "-o", str(out), "-j", "1"),
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    for f in multi_case.payload.files:
        assert (out / f.relative_to(src)).read_bytes() == f.read_bytes()
    assert not (out / ".mptorrent.parts").exists()
    assert _uploaded(one_seeder) - before <= multi_case.meta.total_length


def test_stdout_through_a_pipe_is_the_verified_payload(
    single_case: TorrentCase, full_speed: Swarm, tmp_path: Path, fresh_ip: Callable[[], str]
) -> None:
    torrent = tmp_path / "single.torrent"
    torrent.write_bytes(single_case.torrent)
    cache = tmp_path / "cache"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    fetch = subprocess.Popen(
        _cmd(torrent, full_speed, fresh_ip(), "-o", "-", "-j", "2"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert fetch.stdout is not None and fetch.stderr is not None
    digest = subprocess.run(
        ["sha256sum"], stdin=fetch.stdout, capture_output=True, text=True, timeout=TIMEOUT
    )
    fetch.stdout.close()
    assert fetch.wait(TIMEOUT) == 0, fetch.stderr.read().decode()
    want = hashlib.sha256(single_case.payload.root.read_bytes()).hexdigest()
    assert digest.stdout.split()[0] == want
    assert "done:" in fetch.stderr.read().decode()  # the summary: on stderr
    assert list((cache / "mptorrent").iterdir()) == []  # the temporary copy is gone


def test_a_closed_pipe_ends_the_fetch_with_one_line(
    single_case: TorrentCase, full_speed: Swarm, tmp_path: Path, fresh_ip: Callable[[], str]
) -> None:
    torrent = tmp_path / "single.torrent"
    torrent.write_bytes(single_case.torrent)
    fetch = subprocess.Popen(
        _cmd(torrent, full_speed, fresh_ip(), "-o", "-", "-j", "2"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert fetch.stdout is not None and fetch.stderr is not None
    head = subprocess.run(["head", "-c", "100000"], stdin=fetch.stdout, capture_output=True)
    fetch.stdout.close()
    code = fetch.wait(TIMEOUT)
    err = fetch.stderr.read().decode()
    assert head.stdout == single_case.payload.root.read_bytes()[:100000]
    if code != 0:  # the reader left before the end (the usual case)
        assert code == 141
        assert err.strip().splitlines()[-1].startswith("mptorrent: error: the reader of the")
    assert "Traceback" not in err and "Exception" not in err


def test_stdout_with_two_files_is_a_usage_error(
    multi_case: TorrentCase, one_seeder: Swarm, tmp_path: Path, fresh_ip: Callable[[], str]
) -> None:
    torrent = tmp_path / "multi.torrent"
    torrent.write_bytes(multi_case.torrent)
    r = subprocess.run(
        _cmd(torrent, one_seeder, fresh_ip(), "-o", "-", "--only", "media/season 1/*"),
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "mptorrent: error: -o - streams one file, and 2 are selected: choose one with --only"
    ]


def test_sequential_streams_the_first_bytes_early_on_a_slow_swarm(
    tmp_path: Path, fresh_ip: Callable[[], str]
) -> None:
    """The first 64 KiB on stdout within the first fifth of the run.  A rate-limited
    libtorrent seeder sends a request pipeline's worth at once when its limiter has granted
    it (32 blocks: 0.5 s at 1 MiB/s), so the first piece cannot come sooner than that."""
    case = single_file_case(tmp_path / "data", 16 * MiB, 64 * KiB, seed=16)
    torrent = tmp_path / "slow.torrent"
    torrent.write_bytes(case.torrent)
    with Swarm(
        case.torrent, case.save_dir, n_seeders=3, first_ip=85, use_trackers=False,
        upload_rate_limit=1024 * KiB,
    ) as slow:  # fmt: skip
        t0 = time.monotonic()
        fetch = subprocess.Popen(
            _cmd(torrent, slow, fresh_ip(), "-o", "-", "-j", "2", "--sequential", "--keep",
                 str(tmp_path / "kept.bin")),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert fetch.stdout is not None and fetch.stderr is not None
        got = bytearray()
        first = None
        while chunk := fetch.stdout.read1(64 * KiB):
            got += chunk
            if first is None and len(got) >= 64 * KiB:
                first = time.monotonic() - t0
        assert fetch.wait(TIMEOUT) == 0, fetch.stderr.read().decode()
        total = time.monotonic() - t0
    assert got == case.payload.root.read_bytes()
    assert (tmp_path / "kept.bin").read_bytes() == got  # --keep: the data stays there too
    assert first is not None and first <= total / 5, (first, total)


# -- the Python API -----------------------------------------------------------------------


def test_api_only_and_stream(multi_case: TorrentCase, one_seeder: Swarm, tmp_path: Path) -> None:
    src = multi_case.payload.root
    out = tmp_path / "out"
    seen: list[ev.Event] = []
    res = mptorrent.fetch(
        multi_case.torrent, out, workers=1, peers=one_seeder.addrs, trackers=False,
        only=["#6", "docs/*"], on_event=seen.append,
    )  # fmt: skip
    names = ["z/tiny", "docs/readme.txt", "docs/empty.dat"]
    for name in names:
        assert (out / name).read_bytes() == (src / name).read_bytes()
    assert not (out / "a.bin").exists() and not (out / "media").exists()
    size = sum((src / n).stat().st_size for n in names)
    assert res.bytes == size
    done = seen[-1]
    assert isinstance(done, ev.Done) and done.total == size
    check = mptorrent.verify(multi_case.torrent, out, only=["#6", "docs/*"])
    assert check.complete

    sink = io.BytesIO()
    res = mptorrent.fetch(
        multi_case.torrent, workers=1, peers=one_seeder.addrs, trackers=False,
        only=[EP1], sequential=True, stream=sink,
    )  # fmt: skip
    assert sink.getvalue() == (src / EP1).read_bytes()
    assert res.path == Path("-") and res.bytes == len(sink.getvalue())

    handle = mptorrent.start(
        multi_case.torrent, tmp_path / "bg", workers=1, peers=one_seeder.addrs,
        trackers=False, only=["media/cover.jpg"], sequential=True,
    )  # fmt: skip
    assert handle.wait(TIMEOUT).bytes == (src / "media/cover.jpg").stat().st_size
    got = (tmp_path / "bg" / "media/cover.jpg").read_bytes()
    assert got == (src / "media/cover.jpg").read_bytes()

    with pytest.raises(mptorrent.BadSelection) as bad:
        mptorrent.fetch(multi_case.torrent, out, only=["nothing/*"], peers=one_seeder.addrs)
    assert bad.value.exit_code == 2
