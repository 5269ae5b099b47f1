"""Table A of tests/adversarial/README.md: hostile .torrent files given to ``mptorrent fetch``.

Every case is built here from a valid minimal torrent plus one mutation, never
committed as an opaque blob.  Refusals are checked through the real command
line: exit 3, one printable ``mptorrent: error:`` line naming the file, and
nothing created.  The rows that could escape the output directory (A3, A12,
A13, A16) also run as real ``python -m mptorrent fetch`` processes, so that a
crash is a failed test rather than a dead pytest, with a canary directory next
to the output that must stay byte-for-byte the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from mptorrent.cli.main import cli
from mptorrent.disk.create import create
from mptorrent.errors import ExitStatus
from mptorrent.proto import bencode, metainfo
from tests.dht_off import no_dht
from tests.fakes.evil_tracker import EvilTracker
from tests.v2data import v2_parts

PL = 16384
CLOSED_PEER = "127.0.0.1:9"  # discard port: nothing listens, and nothing may be sent there

# -- builder -------------------------------------------------------------------------------


def pieces_for(total: int, piece_length: int = PL) -> bytes:
    return bytes(20 * max(0, -(-total // piece_length)))


def multi_info(
    paths: Sequence[Sequence[bytes]] = ((b"a.txt",), (b"sub", b"b.bin")),
    *,
    name: Any = b"album",
    length: int = 10,
    **extra: Any,
) -> dict[bytes, Any]:
    files = [{b"length": length, b"path": list(p)} for p in paths]
    info: dict[bytes, Any] = {b"name": name, b"piece length": PL, b"files": files}
    if "pieces" not in extra:
        info[b"pieces"] = pieces_for(length * len(files))
    info.update({k.replace("_", " ").encode(): v for k, v in extra.items()})
    return info


def single_info(length: int = 40000, *, name: Any = b"movie.mp4", **extra: Any) -> dict[bytes, Any]:
    info: dict[bytes, Any] = {b"name": name, b"piece length": PL, b"length": length}
    if "pieces" not in extra:
        info[b"pieces"] = pieces_for(length if isinstance(length, int) else 0)
    info.update({k.replace("_", " ").encode(): v for k, v in extra.items()})
    return info


SPACED_KEYS = {"created_by": b"created by", "creation_date": b"creation date",
               "piece_layers": b"piece layers"}  # fmt: skip


def torrent(info: dict[bytes, Any], **top: Any) -> bytes:
    """``announce_list`` becomes 'announce-list', ``created_by`` 'created by', and so on."""
    d: dict[bytes, Any] = {b"info": info}
    d.update({SPACED_KEYS.get(k, k.replace("_", "-").encode()): v for k, v in top.items()})
    return bencode.encode(d)


def without(info: dict[bytes, Any], key: bytes) -> dict[bytes, Any]:
    return {k: v for k, v in info.items() if k != key}


VALID = torrent(single_info())
VALID_INFO = bencode.encode(single_info())


def in_info(old: bytes, new: bytes) -> bytes:
    """VALID with one byte string replaced inside its raw info dict (non-canonical forms)."""
    assert old in VALID_INFO
    return b"d4:info" + VALID_INFO.replace(old, new, 1) + b"e"


R = bytes(range(32))  # a pieces root; the rows using it fail before any hash is checked
V2_FILES = [((b"big",), bytes(range(256)) * 156 + b"x" * 64), ((b"small",), b"s" * 100),
            ((b"sub", b"e"), b"")]  # fmt: skip


def leaf(length: int = 5, root: bytes = R) -> dict[bytes, Any]:
    """A v2 file node."""
    return {b"": {b"length": length, b"pieces root": root}}


def v2_with_tree(tree: dict[bytes, Any]) -> bytes:
    return torrent({b"file tree": tree, b"meta version": 2, b"name": b"x", b"piece length": PL})


def v2_mutated(change: Callable[[dict[bytes, Any], dict[bytes, bytes]], object]) -> bytes:
    """A valid v2-only torrent of V2_FILES, changed by ``change(info, piece_layers)``."""
    info, layers = v2_parts(V2_FILES, PL)
    change(info, layers)
    return torrent(info, piece_layers=layers)


def hybrid_mutated(change: Callable[[dict[bytes, Any]], object]) -> bytes:
    info, layers = v2_parts(V2_FILES, PL, hybrid=True)
    change(info)
    return torrent(info, piece_layers=layers)


def deep_dicts(n: int) -> bytes:
    return b"d4:info" + b"d1:a" * n + b"i1e" + b"e" * n + b"e"


# -- the cases: (row, id, the file's bytes, what the message must say) ---------------------

Case = tuple[str, str, Callable[[], bytes], str]

# fmt: off
CASES: list[Case] = [
    ("A1", "empty", lambda: b"", r"not a valid torrent file \(bad bencode at byte 0: empty"),
    ("A1", "not-bencode", lambda: b"<html>404</html>", r"unexpected byte b'<'"),
    ("A1", "truncated", lambda: VALID[: len(VALID) // 2], r"runs past the end|unexpected end"),
    ("A1", "trailing", lambda: VALID + b"junk", r"trailing data after the value"),
    ("A2", "top-string", lambda: b"4:spam", r"top level is not a dictionary"),
    ("A2", "top-list", lambda: b"l4:spame", r"top level is not a dictionary"),
    ("A2", "no-info", lambda: b"d8:announce3:urle", r"missing or ill-typed 'info'"),
    ("A2", "info-not-dict", lambda: b"d4:infoli1eee", r"missing or ill-typed 'info'"),
    ("A3", "deep-lists", lambda: b"l" * 100_000 + b"e" * 100_000, r"nesting deeper than 100"),
    ("A3", "deep-dicts-in-info", lambda: deep_dicts(100_000), r"nesting deeper than 100"),
    (
        "A3",
        "deep-in-announce-list",
        lambda: b"d13:announce-list" + b"l" * 100_000 + b"e" * 100_000 + b"4:info"
        + VALID_INFO + b"e",
        r"nesting deeper than 100",
    ),
    ("A4", "huge-length", lambda: b"d4:info99999999999999999999999:e", r"string length is unt"),
    ("A4", "length-past-end", lambda: b"d4:info100:abce", r"string of 100 bytes runs past the end"),
    ("A4", "negative-key-length", lambda: b"d-3:abci1ee", r"dictionary key is not a string"),
    ("A4", "huge-int", lambda: in_info(b"i40000e", b"i" + b"9" * 70 + b"e"), r"integer is unt"),
    (
        "A5",
        "over-10MB",
        lambda: torrent(single_info(), comment=bytes(bencode.MAX_TORRENT_SIZE)),
        r"input is 10485761 bytes, over the 10485760-byte limit",
    ),
    ("A6", "i+5e", lambda: in_info(b"i40000e", b"i+40000e"), r"not a plain decimal number"),
    ("A6", "i1_0e", lambda: in_info(b"i40000e", b"i40_000e"), r"not a plain decimal number"),
    ("A6", "i-space-e", lambda: in_info(b"i40000e", b"i 40000e"), r"not a plain decimal number"),
    ("A6", "i05e", lambda: in_info(b"i40000e", b"i040000e"), r"integer has a leading zero"),
    ("A6", "i-0e", lambda: b"d4:infoi-0ee", r"integer is negative zero"),
    ("A6", "1_0-length", lambda: in_info(b"4:name", b"4_:name"), r"string length is not canon"),
    ("A6", "leading-zero-length", lambda: in_info(b"4:name", b"04:name"), r"not canonical"),
    (
        "A6",
        "unsorted-keys-in-info",
        lambda: in_info(b"6:lengthi40000e4:name9:movie.mp4", b"4:name9:movie.mp46:lengthi40000e"),
        r"unsorted dictionary key b'length'",
    ),
    (
        "A6",
        "duplicate-keys-in-info",
        lambda: in_info(b"4:name", b"4:name1:x4:name"),
        r"duplicate dictionary key b'name'",
    ),
    ("A7", "no-piece-length", lambda: torrent(without(single_info(), b"piece length")),
     r"missing 'piece length' in info"),
    ("A7", "piece-length-0", lambda: torrent(single_info(piece_length=0)),
     r"piece length 0 is out of range"),
    ("A7", "piece-length-negative", lambda: torrent(single_info(piece_length=-PL)),
     r"piece length -16384 is out of range"),
    ("A7", "piece-length-string", lambda: torrent(single_info(piece_length=b"16384")),
     r"'piece length' in info is not an integer"),
    ("A7", "piece-length-over-cap", lambda: torrent(single_info(piece_length=1 << 29)),
     r"piece length 536870912 is out of range"),
    ("A8", "unaligned-pieces", lambda: torrent(single_info(pieces=bytes(61))),
     r"'pieces' is 61 bytes, not a multiple of 20"),
    ("A8", "too-few-hashes", lambda: torrent(single_info(pieces=bytes(40))),
     r"2 piece hashes for 40000 bytes in 16384-byte pieces \(expected 3\)"),
    ("A8", "too-many-hashes", lambda: torrent(single_info(pieces=bytes(80))),
     r"4 piece hashes .*\(expected 3\)"),
    ("A10", "negative-file", lambda: torrent(multi_info(length=-1)), r"negative length -1"),
    ("A10", "negative-single", lambda: torrent(single_info(length=-5)), r"negative length -5"),
    ("A10", "zero-total", lambda: torrent(multi_info(length=0)), r"total length 0"),
    ("A10", "sum-over-2**63", lambda: torrent(multi_info(length=2**62, pieces=bytes(20))),
     r"total length \d+ is absurd"),
    ("A10", "length-string", lambda: torrent(single_info(length=b"40000")),
     r"'length' in info is not an integer"),
    ("A12", "no-name", lambda: torrent(without(single_info(), b"name")), r"missing 'name' in"),
    ("A12", "empty-name", lambda: torrent(single_info(name=b"")), r"unsafe path component ''"),
    ("A12", "name-not-string", lambda: torrent(single_info(name=[b"x"])), r"'name' in info is not"),
    ("A12", "name-dot", lambda: torrent(multi_info(name=b".")), r"component '\.' in name"),
    ("A12", "name-dotdot", lambda: torrent(multi_info(name=b"..")), r"component '\.\.' in name"),
    ("A12", "name-slash", lambda: torrent(single_info(name=b"a/b")), r"component 'a/b' in name"),
    ("A12", "name-backslash", lambda: torrent(single_info(name=b"a\\b")), r"'a\\b' in name"),
    ("A12", "name-nul", lambda: torrent(single_info(name=b"a\x00b")), r"'a\\x00b' in name"),
    ("A13", "dotdot-etc", lambda: torrent(multi_info([[b"..", b"..", b"etc", b"x"]])),
     r"unsafe path component '\.\.' in files\[0\]"),
    ("A13", "absolute", lambda: torrent(multi_info([[b"/abs"]])),
     r"unsafe path component '/abs' in files\[0\]"),
    ("A13", "a-dotdot-dotdot-b", lambda: torrent(multi_info([[b"a", b"..", b"..", b"b"]])),
     r"unsafe path component '\.\.' in files\[0\]"),
    ("A13", "empty-path", lambda: torrent(multi_info([[]])), r"files\[0\] has a missing or empty"),
    ("A13", "empty-component", lambda: torrent(multi_info([[b""]])), r"component '' in files"),
    ("A13", "separator-inside", lambda: torrent(multi_info([[b"a/../../b"]])),
     r"unsafe path component 'a/\.\./\.\./b' in files\[0\]"),
    ("A13", "backslash-dotdot", lambda: torrent(multi_info([[b"..\\x"]])),
     r"unsafe path component '\.\.\\x' in files\[0\]"),
    ("A13", "drive-letter", lambda: torrent(multi_info([[b"C:\\x"]])), r"component 'C:\\x'"),
    ("A13", "into-the-canary", lambda: torrent(multi_info([[b"..", b"canary", b"precious.txt"]])),
     r"unsafe path component '\.\.' in files\[0\]"),
    ("A13", "path-utf8-traversal",
     lambda: torrent(multi_info([[b"ok"]]) | {b"files": [
         {b"length": 10, b"path": [b"ok"], b"path.utf-8": [b"..", b"x"]}]}),
     r"unsafe path component '\.\.' in files\[0\]"),
    ("A14", "duplicate", lambda: torrent(multi_info([[b"a"], [b"b"], [b"a"]])),
     r"duplicate path 'a'"),
    ("A14", "file-then-dir", lambda: torrent(multi_info([[b"a"], [b"a", b"b"]])),
     r"path 'a/b' runs through a file"),
    ("A14", "dir-then-file", lambda: torrent(multi_info([[b"a", b"b"], [b"a"]])),
     r"duplicate path 'a'"),
    ("A14", "collide-after-utf8-repair", lambda: torrent(multi_info([[b"\xff"], [b"\xfe"]])),
     r"duplicate path '_'"),
    ("A16", "component-256", lambda: torrent(multi_info([[b"d", b"x" * 256]])),
     r"path component longer than 255 bytes in files\[0\]"),
    ("A16", "name-256", lambda: torrent(single_info(name=b"n" * 252 + b".mkv")),
     r"path component longer than 255 bytes in name"),
    ("A16", "path-over-PATH_MAX", lambda: torrent(multi_info([[b"d" * 250] * 17])),
     r"path of 4272 bytes in files\[0\] \(d{60}\.\.\.\) is over the 4095-byte limit"),
    ("A17", "v2-without-file-tree",
     lambda: torrent(without(single_info(meta_version=2), b"pieces")),
     r"meta version 2 without a 'file tree'$"),
    ("A17", "file-tree-without-meta-version", lambda: torrent(
        {b"file tree": {b"a": {b"": {b"length": 5}}}, b"name": b"x", b"piece length": PL}),
     r"a 'file tree' without 'meta version' 2$"),
    ("V1", "tree-traversal", lambda: v2_with_tree({b"..": leaf()}),
     r"unsafe path component '\.\.' in 'file tree'$"),
    ("V1", "tree-slash", lambda: v2_with_tree({b"a/../../b": leaf()}),
     r"unsafe path component 'a/\.\./\.\./b' in 'file tree'$"),
    ("V1", "tree-too-deep", lambda: b"d4:infod9:file tree" + b"d1:a" * 120
     + b"d0:d6:lengthi1eee" + b"e" * 120 + b"12:meta versioni2e4:name1:x12:piece lengthi16384eee",
     r"nesting deeper than 100"),
    ("V1", "tree-file-and-dir", lambda: v2_with_tree({b"a": leaf() | {b"b": leaf()}}),
     r"'file tree' entry 'a' is both a file and a directory$"),
    ("V1", "tree-root-is-file", lambda: v2_with_tree(leaf()),
     r"'file tree' is itself a file, not a directory$"),
    ("V1", "tree-empty-dir", lambda: v2_with_tree({b"a": {}}),
     r"empty directory 'a' in 'file tree'$"),
    ("V1", "tree-collide-after-utf8-repair",
     lambda: v2_with_tree({b"\xfe": leaf(), b"\xff": leaf()}),
     r"duplicate path '_' in 'file tree'$"),
    ("V1", "tree-only-empty-files", lambda: v2_with_tree({b"a": {b"": {b"length": 0}}}),
     r"torrent holds no data \(total length 0\)$"),
    ("V2", "root-not-32-bytes", lambda: v2_with_tree({b"a": leaf(root=R[:31])}),
     r"file 'a' has no 32-byte 'pieces root'$"),
    ("V2", "negative-length", lambda: v2_with_tree({b"a": leaf(-5)}),
     r"file 'a' has length -5$"),
    ("V2", "piece-length-not-pow2",
     lambda: v2_mutated(lambda info, _ly: info.update({b"piece length": 3 * PL})),
     r"piece length 49152 of a v2 torrent is not a power of two of 16 KiB or more$"),
    ("V3", "layer-missing", lambda: v2_mutated(lambda _i, ly: ly.clear()),
     r"no piece layer for file 'big' \(larger than a piece\)$"),
    ("V3", "layer-wrong-hash",
     lambda: v2_mutated(lambda _i, ly: ly.update({k: bytes(len(v)) for k, v in ly.items()})),
     r"piece layer of file 'big' does not hash to its pieces root$"),
    ("V3", "layer-wrong-length",
     lambda: v2_mutated(lambda _i, ly: ly.update({k: v[:-32] for k, v in ly.items()})),
     r"piece layer of file 'big' is 64 bytes, not 96 \(3 pieces of 32 bytes\)$"),
    ("V4", "hybrid-file-renamed",
     lambda: hybrid_mutated(lambda i: i[b"files"][0].update({b"path": [b"aaa"]})),
     r"hybrid torrent's v1 'files' and v2 'file tree' disagree at file 0: "
     r"'aaa' \(40000 bytes\) against 'big' \(40000 bytes\)$"),
    ("V4", "hybrid-file-resized", lambda: hybrid_mutated(lambda i: (
        i[b"files"][0].update({b"length": 39999}), i[b"files"][1].update({b"length": 9153}))),
     r"disagree at file 0: 'big' \(39999 bytes\) against 'big' \(40000 bytes\)$"),
    ("V4", "hybrid-extra-file", lambda: hybrid_mutated(lambda i: (
        i[b"files"].append({b"length": 7, b"path": [b"zz"]}),
        i.update({b"pieces": i[b"pieces"] + R[:20]}))),
     r"disagree: 4 files against 3$"),
    ("V4", "hybrid-no-padding", lambda: hybrid_mutated(lambda i: i[b"files"].pop(1)),
     r"disagree: file 1 does not start on a piece boundary$"),
    ("A17", "meta-version-3", lambda: torrent(single_info(meta_version=3)),
     r"meta version 3 is not supported$"),
]
# fmt: on


def case_id(case: Case) -> str:
    return f"{case[0]}-{case[1]}"


# -- running the command line --------------------------------------------------------------


def runner() -> CliRunner:
    try:  # click < 8.2 mixes stderr into stdout unless told not to
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


def run(args: Sequence[str | os.PathLike[str]]) -> Result:
    return runner().invoke(cli, no_dht([str(a) for a in args]), catch_exceptions=False)


def fetch_args(torrent_path: Path, out: Path | None) -> list[str]:
    args = ["fetch", str(torrent_path)]
    if out is not None:
        args += ["-o", str(out)]
    return [*args, "--no-trackers", "--peer", CLOSED_PEER, "-q"]


def snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every entry under ``root``: mode, size, mtime and a digest of the content."""
    out: dict[str, tuple[int, int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return out


def plant_canary(beside: Path) -> None:
    canary = beside / "canary"
    (canary / "etc").mkdir(parents=True)
    (canary / "precious.txt").write_bytes(b"do not touch\n")
    (canary / "etc" / "x").write_bytes(b"\x00\x01")


def check_error_line(stderr: str, torrent_path: Path, match: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.isprintable(), line
    assert "Traceback" not in line
    prefix = f"mptorrent: error: {torrent_path}: "
    assert line.startswith(prefix), line
    assert re.search(match, line[len(prefix) :]), line
    return line


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fetch_refuses_hostile_torrent(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 3 with one line naming the problem; nothing created or changed anywhere."""
    _, _, build, match = case
    work = tmp_path / "work"
    work.mkdir()
    bad = work / "bad.torrent"
    bad.write_bytes(build())
    plant_canary(work)
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    r = run(fetch_args(bad, work / "out"))
    assert r.exit_code == ExitStatus.BAD_TORRENT, (r.stdout, r.stderr)
    check_error_line(r.stderr, bad, match)
    assert r.stdout == ""
    assert snapshot(tmp_path) == before


def test_every_case_is_a_distinct_row_and_id() -> None:
    ids = [case_id(c) for c in CASES]
    assert len(ids) == len(set(ids))
    rows = {c[0] for c in CASES}
    assert {"A1", "A2", "A3", "A4", "A5", "A6", "A7", "A8", "A10", "A12", "A13", "A14", "A16",
            "A17"} <= rows  # fmt: skip


# -- the same, as real processes, for the rows that could crash or escape ------------------

SUBPROCESS_IDS = {
    "A3-deep-lists", "A3-deep-dicts-in-info",
    "A12-name-dot", "A12-name-dotdot", "A12-name-slash", "A12-name-backslash",
    "A16-component-256", "A16-name-256", "A16-path-over-PATH_MAX",
}  # fmt: skip


def mptorrent(*args: str | os.PathLike[str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "mptorrent", *no_dht([str(a) for a in args])],
        cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_escaping_rows_in_real_processes(tmp_path: Path) -> None:
    """A3/A12/A13/A16 through ``python -m mptorrent fetch``: a segfault or an escape fails here.

    All cases run at once, each in its own directory with a canary beside the
    output; the snapshot spans every directory a ``..`` could reach inside tmp_path.
    """
    cases = [c for c in CASES if c[0] == "A13" or case_id(c) in SUBPROCESS_IDS]
    # The default output (./NAME) must be as safe as -o.
    cases.append(("A12", "name-dotdot-default-output", lambda: torrent(multi_info(name=b"..")),
                  r"unsafe path component '\.\.' in name"))  # fmt: skip
    runs: list[tuple[Case, Path, subprocess.Popen[bytes]]] = []
    for n, case in enumerate(cases):
        work = tmp_path / f"c{n:02}"
        work.mkdir()
        (work / "bad.torrent").write_bytes(case[2]())
        plant_canary(work)
    before = snapshot(tmp_path)
    for n, case in enumerate(cases):
        work = tmp_path / f"c{n:02}"
        out = None if case[1].endswith("default-output") else work / "out"
        runs.append((case, work, mptorrent(*fetch_args(work / "bad.torrent", out), cwd=work)))
    for case, work, proc in runs:
        try:
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == ExitStatus.BAD_TORRENT, (case_id(case), proc.returncode, stderr)
        check_error_line(stderr.decode(), work / "bad.torrent", case[3])
        assert stdout == b""
    assert snapshot(tmp_path) == before


# -- A9: many pieces -----------------------------------------------------------------------


def run_measured(args: Sequence[str | os.PathLike[str]], cwd: Path) -> tuple[int, str, float, int]:
    """Exit status, stderr, wall seconds and peak RSS (KiB) of one mptorrent process."""
    start = time.monotonic()
    proc = mptorrent(*args, cwd=cwd)
    assert proc.stderr is not None
    # wait4 gives this child's own rusage; RUSAGE_CHILDREN would mix in earlier tests'.
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - start
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    if proc.stdout is not None:
        proc.stdout.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, stderr, elapsed, usage.ru_maxrss


def test_a9_more_pieces_than_the_cap_is_refused_fast_in_little_memory(tmp_path: Path) -> None:
    # 2,097,153 hashes are 40 MiB: the 10 MB file cap refuses the file after reading
    # cap+1 bytes, long before the piece-count cap (test_metainfo.test_piece_count_cap
    # shows that cap on its own) or any per-piece state.
    n = metainfo.MAX_PIECES + 1
    big = tmp_path / "many.torrent"
    big.write_bytes(torrent(single_info(n * PL, pieces=bytes(20 * n))))
    assert big.stat().st_size > 40 << 20
    small = tmp_path / "garbage.torrent"
    small.write_bytes(b"garbage")
    base_status, _, _, base_rss = run_measured(fetch_args(small, tmp_path / "o1"), tmp_path)
    assert base_status == ExitStatus.BAD_TORRENT
    status, stderr, elapsed, rss = run_measured(fetch_args(big, tmp_path / "o2"), tmp_path)
    assert status == ExitStatus.BAD_TORRENT
    check_error_line(stderr, big, r"input is 10485761 bytes, over the 10485760-byte limit")
    assert elapsed < 5.0
    assert rss - base_rss < 32 * 1024, (base_rss, rss)  # KiB: about one 10 MB read
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.torrent", "many.torrent"]


def test_a9_the_largest_torrent_that_fits_loads_without_per_piece_objects(tmp_path: Path) -> None:
    n = 500_000  # 10,000,000 bytes of hashes: just under the 10 MB file cap
    big = tmp_path / "big.torrent"
    big.write_bytes(torrent(single_info(n * PL, pieces=bytes(20 * n))))
    script = (
        "import resource, sys, time\n"
        "from mptorrent.proto import metainfo\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = time.perf_counter()\n"
        "m = metainfo.load(sys.argv[1])\n"
        "took = time.perf_counter() - t\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(m.num_pieces, took, after - before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(big)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    pieces, took, grew = out.stdout.split()
    assert int(pieces) == n
    assert float(took) < 2.0
    # the file, the decoded hashes and the raw info span: about 3 x 10 MB, nothing per piece
    assert int(grew) < 48 * 1024, grew


# -- A10: bigger than the free disk: exit 4 at preflight, before any traffic ---------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs (CI runs as root), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = tmp_path / "small"
    d.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(d)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_a10_larger_than_the_free_disk_is_exit_4_before_any_traffic(
    small_fs: Path, tmp_path: Path
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    peer = f"127.0.0.1:{listener.getsockname()[1]}"
    with listener, EvilTracker("127.0.0.81") as evil:
        length = 8 << 20
        t = tmp_path / "big.torrent"
        t.write_bytes(torrent(single_info(length), announce=evil.http_url().encode()))
        out = small_fs / "big.bin"
        proc = mptorrent("fetch", t, "-o", out, "--peer", peer, "-q", cwd=tmp_path)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == ExitStatus.STORAGE, stderr
        (line,) = stderr.decode().splitlines()
        assert re.fullmatch(
            rf"mptorrent: error: not enough space in {re.escape(str(small_fs))}: "
            r"need 8\.0 MiB, have [\d.]+ (KiB|MiB)",
            line,
        ), line
        assert stdout == b""
        assert evil.http_requests == [] and evil.udp_requests == []
        readable, _, _ = select.select([listener], [], [], 0)
        assert readable == [], "a peer connection was attempted before the space check"
    assert list(small_fs.iterdir()) == []


# -- A11: both 'length' and 'files' --------------------------------------------------------


def test_a11_length_and_files_is_read_as_multi_file(tmp_path: Path) -> None:
    info = multi_info([[b"a"], [b"b"]], length=7)
    info[b"length"] = 999_999
    m = metainfo.parse(torrent(info))
    assert m.multi_file and m.total_length == 14
    assert [f.path for f in m.files] == [("a",), ("b",)]
    assert m.warnings == ("info has both 'length' and 'files'; it is read as multi-file",)
    t = tmp_path / "both.torrent"
    t.write_bytes(torrent(info))
    r = run(["info", t])
    assert r.exit_code == 0
    assert r.stdout.splitlines()[-3:] == ["  album/", "    a  (7 B)  #0", "    b  (7 B)  #1"]


# -- A12 / A19: odd names are accepted and always shown escaped ----------------------------

EVIL_NAME = "evil\x1b[2J\x1b]0;pwned\x07\u202egpj.exe"
EVIL_PATHS = [["\x1b[31mred", "Icon\r"], ["tab\there", "bidi\u202etxt.exe"], ["nl\nx", "bell\x07"]]


def evil_torrent() -> bytes:
    info = multi_info([[c.encode() for c in p] for p in EVIL_PATHS], name=EVIL_NAME.encode())
    return torrent(
        info,
        comment=b"see \x1b[1mthis\x1b[0m",
        created_by=b"\x1b[?1049h",
        announce_list=[[b"http://t.example/ann"], [b"http://x\x1b[5m/announce"]],
    )


def test_a12_control_and_bidi_names_are_accepted_as_single_components() -> None:
    m = metainfo.parse(evil_torrent())
    assert m.name == EVIL_NAME
    assert [f.path for f in m.files] == [tuple(p) for p in EVIL_PATHS]
    # the tracker URL with an escape in it is skipped, and the warning is escaped too
    assert m.trackers == (("http://t.example/ann",),)
    (warning,) = m.warnings
    assert warning.isprintable() and "\\x1b[5m" in warning
    bad = metainfo.parse(torrent(single_info(name=b"movie\xff\xfe.mkv")))
    assert bad.name == "movie__.mkv"  # invalid UTF-8, repaired as libtorrent does


def test_a12_a19_info_output_never_carries_raw_control_characters(tmp_path: Path) -> None:
    t = tmp_path / "evil.torrent"
    t.write_bytes(evil_torrent())
    r = run(["info", t])
    assert r.exit_code == 0, r.stderr
    for text in (r.stdout, r.stderr):
        assert all(ch.isprintable() for ch in text.replace("\n", "")), repr(text)
    lines = r.stdout.splitlines()
    assert lines[0] == "name:        evil\\x1b[2J\\x1b]0;pwned\\x07\\u202egpj.exe"
    assert "comment:     see \\x1b[1mthis\\x1b[0m" in lines
    assert "created by:  \\x1b[?1049h" in lines
    assert "      Icon\\r  (10 B)  #0" in lines
    assert "      bidi\\u202etxt.exe  (10 B)  #1" in lines
    assert "    \\x1b[31mred/" in lines and "    nl\\nx/" in lines
    r = run(["info", "--json", t])
    assert r.exit_code == 0
    assert "\x1b" not in r.stdout  # JSON escapes C0 controls; U+202E is left to the reader
    d = json.loads(r.stdout)
    assert d["name"] == EVIL_NAME
    assert [f["path"] for f in d["files"]] == ["/".join(p) for p in EVIL_PATHS]


def test_a19_error_lines_escape_what_the_torrent_and_its_file_name_carry(tmp_path: Path) -> None:
    named = tmp_path / "evil\x1b[31m\u202e.torrent"
    named.write_bytes(b"garbage")
    r = run(["fetch", named, "-o", tmp_path / "out", "--no-trackers", "--peer", CLOSED_PEER])
    assert r.exit_code == ExitStatus.BAD_TORRENT
    (line,) = r.stderr.splitlines()
    assert line.isprintable() and "evil\\x1b[31m\\u202e.torrent" in line
    component = tmp_path / "c.torrent"
    component.write_bytes(torrent(multi_info([[b"\x1b[2J/..", b"x"]])))
    r = run(["fetch", component, "-o", tmp_path / "out", "--no-trackers", "--peer", CLOSED_PEER])
    assert r.exit_code == ExitStatus.BAD_TORRENT
    (line,) = r.stderr.splitlines()
    assert line.isprintable() and "unsafe path component '\\x1b[2J/..' in files[0]" in line
    assert not (tmp_path / "out").exists()


def test_a19_storage_errors_about_hostile_names_are_escaped(tmp_path: Path) -> None:
    """A real process, stdout and stderr as bytes: no ESC may reach the terminal."""
    t = tmp_path / "evil.torrent"
    t.write_bytes(torrent(multi_info([[b"\x1b[31mdir", b"f"]], name=b"\x1b[2Jname")))
    out = tmp_path / "out"
    out.mkdir()
    (out / "\x1b[31mdir").write_bytes(b"a file where the torrent wants a directory")
    proc = mptorrent("fetch", t, "-o", out, "--no-trackers", "--peer", CLOSED_PEER, cwd=tmp_path)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == ExitStatus.STORAGE, stderr
    assert b"\x1b" not in stdout + stderr
    (line,) = stderr.decode().splitlines()
    assert line.endswith("\\x1b[31mdir is in the way: it is not a directory"), line


# -- A14: names differing only in case -----------------------------------------------------


def test_a14_names_differing_only_in_case_are_distinct_files() -> None:
    # Linux filesystems are case-sensitive and real trees rely on it (the kernel has
    # xt_CONNMARK.h and xt_connmark.h), so these are two files, not a duplicate.
    m = metainfo.parse(torrent(multi_info([[b"README"], [b"readme"], [b"ReadMe"]])))
    assert [f.path for f in m.files] == [("README",), ("readme",), ("ReadMe",)]


# -- A15: zero-length files anywhere still download ----------------------------------------

A15_TREE = {
    "0-empty-first": 0,
    "1-exactly-one-piece": PL,
    "2-empty-on-a-boundary": 0,
    "3-data": 30_000,
    "4-empty-middle": 0,
    "5-tiny": 5,
    "sub/6-empty-in-a-dir": 0,
    "sub/7-data": 2 * PL + 17,
    "z-empty-last": 0,
}
READY = re.compile(rb"seeding .* on (?P<host>[\d.]+):(?P<port>\d+); Ctrl-C stops")


@dataclass
class Seeder:
    proc: subprocess.Popen[bytes]
    addr: str


@pytest.fixture
def a15_seeder(tmp_path: Path) -> Iterator[tuple[Path, Path, Seeder]]:
    root = tmp_path / "src" / "zeros"
    for rel, size in A15_TREE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(hashlib.shake_128(rel.encode()).digest(size) if size else b"")
    t = tmp_path / "zeros.torrent"
    t.write_bytes(create(root, piece_length=PL, jobs=1))
    proc = mptorrent("seed", t, root, "-j", "1", "--bind", "127.0.0.82", "--port", "0",
                     "--no-trackers", cwd=tmp_path)  # fmt: skip
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + 30
    try:
        while (m := READY.search(seen)) is None and time.monotonic() < deadline:
            if not select.select([proc.stderr], [], [], 0.2)[0]:
                continue
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
        assert m is not None, f"seeder not ready: {seen.decode(errors='replace')}"
        stderr = proc.stderr
        # keep draining so the seeder never blocks on a full pipe
        threading.Thread(target=lambda: stderr.read(), daemon=True).start()
        yield root, t, Seeder(proc, f"{m['host'].decode()}:{m['port'].decode()}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_a15_zero_length_files_at_the_start_end_and_piece_boundaries(
    a15_seeder: tuple[Path, Path, Seeder], tmp_path: Path
) -> None:
    root, t, seeder = a15_seeder
    m = metainfo.load(t)
    empties = [f for f in m.files if f.length == 0]
    assert len(empties) == 5 and m.files[0].length == 0 and m.files[-1].length == 0
    assert any(f.offset == PL for f in empties)  # exactly on a piece boundary
    out = tmp_path / "got"
    proc = mptorrent("fetch", t, "-o", out, "--peer", seeder.addr, "--no-trackers", "-j", "2",
                     "--port", "0", "--bind", "127.0.0.83", "-q", cwd=tmp_path)  # fmt: skip
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr.decode(errors="replace")
    for rel, size in A15_TREE.items():
        got = out / rel
        assert got.is_file(), rel
        assert got.read_bytes() == (root / rel).read_bytes(), rel
        assert got.stat().st_size == size
    r = run(["verify", t, out, "-q"])
    assert r.exit_code == 0, r.stdout


# -- A17: hybrid v1+v2 torrents are read through their v1 half -----------------------------


def test_a17_hybrid_keeps_both_hashes() -> None:
    info, layers = v2_parts(V2_FILES, PL, hybrid=True)
    m = metainfo.parse(torrent(info, piece_layers=layers))
    assert (m.name, m.num_pieces, m.multi_file, m.meta_version) == ("payload", 4, True, "hybrid")
    assert m.info_hash == hashlib.sha1(bencode.encode(info)).digest()  # the v1 info-hash
    assert m.info_hash_v2 == hashlib.sha256(bencode.encode(info)).digest()
    assert [f.path for f in m.data_files] == [("big",), ("small",), ("sub", "e")]
    assert [f.padding for f in m.files] == [False, True, False, True, False]
    assert m.warnings == ()


@pytest.mark.interop
def test_a17_libtorrent_hybrid_and_v2_only(tmp_path: Path) -> None:
    lt = pytest.importorskip("libtorrent")
    root = tmp_path / "d"
    (root / "sub").mkdir(parents=True)
    (root / "a.bin").write_bytes(os.urandom(40_000))
    (root / "sub" / "b").write_bytes(os.urandom(100))
    (root / "empty").write_bytes(b"")

    def make(flags: int) -> bytes:
        ct = lt.create_torrent(lt.list_files(str(root)), PL, flags)
        lt.set_piece_hashes(ct, str(tmp_path))
        return bytes(lt.bencode(ct.generate()))

    hybrid = make(0)  # libtorrent 2 makes hybrid torrents by default
    ti = lt.torrent_info(hybrid)
    assert ti.info_hashes().has_v1() and ti.info_hashes().has_v2()
    m = metainfo.parse(hybrid)
    assert m.info_hash_hex == str(ti.info_hashes().v1)
    assert [f.path for f in m.data_files] == [("a.bin",), ("empty",), ("sub", "b")]
    assert m.info_hash_v2 is not None and m.info_hash_v2.hex() == str(ti.info_hashes().v2)
    v2 = make(lt.create_torrent.v2_only)
    ti = lt.torrent_info(v2)
    m = metainfo.parse(v2)
    assert m.meta_version == "v2" and m.info_hash_v2 is not None
    assert m.info_hash_v2.hex() == str(ti.info_hashes().v2)
    assert m.info_hash == m.info_hash_v2[:20]  # the wire's and trackers' name for it (BEP 52)
    assert [f.path for f in m.data_files] == [("a.bin",), ("empty",), ("sub", "b")]
    assert m.num_pieces == ti.num_pieces()


# -- A18: trackers that cannot be used are skipped with a warning --------------------------


def test_a18_bad_tracker_entries_are_skipped_with_warnings() -> None:
    data = torrent(
        single_info(),
        announce=b"http://ignored.example/announce",  # BEP 12: announce-list wins
        announce_list=[
            [b"http://good.example/announce", 5, b"", b"wss://ws.example/announce"],
            [],
            b"http://flat.example/announce",
            [b"udp://noport.example/announce", b"http://sp ace.example/a", b"http://[::1/a"],
            [b"UDP://t.example:80/announce?passkey=SECRET", b"http://good.example/announce"],
            [b"file:///etc/passwd", b"magnet:?xt=urn:btih:x", b"//nohost/x", b"http:///x"],
        ],
        url_list=[b"http://ws.example/", 7],
    )
    m = metainfo.parse(data)
    assert m.trackers == (
        ("http://good.example/announce",),
        ("UDP://t.example:80/announce?passkey=SECRET",),
    )
    assert m.web_seeds == ("http://ws.example/",)
    assert m.warnings == (
        "skipped a tracker in 'announce-list' tier 0: a number, not a string",
        "skipped an empty tracker URL in 'announce-list' tier 0",
        "skipped tracker wss://ws.example in 'announce-list' tier 0: scheme 'wss' is not supported",
        "skipped 'announce-list' tier 1: it is empty",
        "skipped 'announce-list' tier 2: a string, not a list",
        "skipped tracker udp://noport.example in 'announce-list' tier 3: "
        "a UDP tracker URL needs a port",
        "skipped tracker http://sp ace.example in 'announce-list' tier 3: "
        "it contains spaces or control characters",
        "skipped tracker http://[::1/a in 'announce-list' tier 3: it is not a valid URL "
        "(Invalid IPv6 URL)",
        "skipped tracker file:///etc/passwd in 'announce-list' tier 5: "
        "scheme 'file' is not supported",
        "skipped tracker magnet:?xt=urn:btih:x in 'announce-list' tier 5: "
        "scheme 'magnet' is not supported",
        "... and 3 more warnings like these",
    )
    assert all(w.isprintable() and "SECRET" not in w for w in m.warnings)


def test_a18_a_thousand_bad_entries_cost_eleven_lines() -> None:
    data = torrent(single_info(), announce_list=[[b"wss://x%d.example/" % i] for i in range(1000)])
    m = metainfo.parse(data)
    assert m.trackers == ()
    assert len(m.warnings) == metainfo.MAX_WARNINGS + 1
    assert m.warnings[-1] == "... and 990 more warnings like these"


def test_a18_info_still_works_without_usable_trackers(tmp_path: Path) -> None:
    t = tmp_path / "t.torrent"
    t.write_bytes(torrent(single_info(), announce=b"wss://only.example/announce"))
    r = run(["info", t])
    assert r.exit_code == 0
    assert "trackers:" not in r.stdout


def test_a18_no_usable_tracker_and_no_peer_is_exit_1(tmp_path: Path) -> None:
    t = tmp_path / "t.torrent"
    t.write_bytes(
        torrent(single_info(), announce_list=[[b"wss://a.example/announce"], [b"dht://b"]])
    )
    r = run(["fetch", t, "-o", tmp_path / "out", "-q"])
    assert r.exit_code == ExitStatus.ERROR, r.stderr
    (line,) = r.stderr.splitlines()
    # decided by the CLI before anything is created on disk
    assert line == (
        "mptorrent: error: no peers: the torrent lists no usable trackers and no --peer was given"
    ), line
    assert not (tmp_path / "out").exists()
