"""The ``mptorrent`` command through click's CliRunner: output, exit codes, stderr."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from mptorrent.cli.main import cli
from mptorrent.errors import ExitStatus
from mptorrent.proto import bencode, metainfo
from tests.dht_off import no_dht

PL = 16384


def runner() -> CliRunner:
    try:  # click < 8.2 mixes stderr into stdout unless told not to
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


def run(args: Sequence[str | os.PathLike[str]]) -> Result:
    return runner().invoke(cli, no_dht([str(a) for a in args]), catch_exceptions=False)


def listing(d: Path) -> list[tuple[str, int]]:
    return sorted(
        (str(p.relative_to(d)), p.stat().st_size if p.is_file() else -1) for p in d.rglob("*")
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "album"
    (root / "sub").mkdir(parents=True)
    (root / "one.bin").write_bytes(os.urandom(3 * PL + 5))
    (root / "sub" / "two.txt").write_bytes(b"hello\n" * 1000)
    (root / "sub" / "empty").write_bytes(b"")
    return root


@pytest.fixture
def made(tree: Path, tmp_path: Path) -> Path:
    out = tmp_path / "album.torrent"
    r = run(
        [
            "create",
            tree,
            "-o",
            out,
            "--piece-size",
            "16K",
            "-q",
            "-t",
            "http://t1/ann",
            "-t",
            "udp://t2:80/ann, http://t3/ann",
            "--webseed",
            "http://ws/",
            "--private",
            "--comment",
            "a comment",
        ]
    )
    assert r.exit_code == 0, r.stderr
    return out


# -- create ------------------------------------------------------------------------------


def test_create(made: Path, tree: Path) -> None:
    m = metainfo.load(made)
    assert m.name == "album" and m.multi_file and m.piece_length == PL
    assert [f.path for f in m.files] == [("one.bin",), ("sub", "empty"), ("sub", "two.txt")]
    assert m.trackers == (("http://t1/ann",), ("udp://t2:80/ann", "http://t3/ann"))
    assert m.web_seeds == ("http://ws/",)
    assert m.private and m.comment == "a comment"
    blob = (tree / "one.bin").read_bytes() + (tree / "sub" / "two.txt").read_bytes()
    assert m.pieces == b"".join(
        hashlib.sha1(blob[i : i + PL]).digest() for i in range(0, len(blob), PL)
    )


def test_create_output_line_and_default_name(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    r = run(["create", tree, "-q", "-j", "1"])
    assert r.exit_code == 0, r.stderr
    m = metainfo.load(work / "album.torrent")
    assert r.stdout.strip().startswith("album.torrent: album, ")
    assert m.info_hash_hex in r.stdout
    assert r.stderr == ""
    assert m.trackers == () and not m.private and m.comment is None
    assert m.piece_length == 16384  # auto: the smallest size giving at most 2000 pieces


def test_create_single_file(tmp_path: Path) -> None:
    f = tmp_path / "movie.bin"
    f.write_bytes(os.urandom(100_000))
    out = tmp_path / "m.torrent"
    assert run(["create", f, "-o", out, "-q", "-j", "2"]).exit_code == 0
    m = metainfo.load(out)
    assert not m.multi_file and m.total_length == 100_000


@pytest.mark.parametrize("size", ["8K", "3K", "24K", "32M", "abc", "1.5M", "-16K", ""])
def test_create_bad_piece_size(tree: Path, tmp_path: Path, size: str) -> None:
    before = listing(tmp_path)
    r = run(["create", tree, "--piece-size", size, "-o", tmp_path / "x.torrent"])
    assert r.exit_code == ExitStatus.USAGE
    assert "piece size" in r.stderr or "piece-size" in r.stderr
    assert listing(tmp_path) == before


@pytest.mark.parametrize(
    ("size", "expected"), [("16K", 16384), ("16384", 16384), ("1M", 1 << 20), ("256KiB", 1 << 18)]
)
def test_create_piece_sizes(tree: Path, tmp_path: Path, size: str, expected: int) -> None:
    out = tmp_path / "x.torrent"
    assert run(["create", tree, "--piece-size", size, "-o", out, "-q"]).exit_code == 0
    assert metainfo.load(out).piece_length == expected


@pytest.mark.parametrize("jobs", ["0", "-1", "x"])
def test_create_bad_jobs(tree: Path, tmp_path: Path, jobs: str) -> None:
    r = run(["create", tree, "-j", jobs, "-o", tmp_path / "x.torrent"])
    assert r.exit_code == ExitStatus.USAGE


def test_create_from_nothing(tmp_path: Path) -> None:
    (tmp_path / "none").mkdir()
    r = run(["create", tmp_path / "none", "-o", tmp_path / "x.torrent"])
    assert r.exit_code == ExitStatus.STORAGE
    assert r.stderr.splitlines() == [f"mptorrent: error: {tmp_path / 'none'} holds no files"]
    (tmp_path / "none" / "empty").write_bytes(b"")
    r = run(["create", tmp_path / "none", "-o", tmp_path / "x.torrent"])
    assert r.exit_code == ExitStatus.ERROR
    assert r.stderr.startswith("mptorrent: error: ") and "holds no data" in r.stderr
    assert not (tmp_path / "x.torrent").exists()


# -- info --------------------------------------------------------------------------------


def test_info_text(made: Path) -> None:
    r = run(["info", made])
    assert r.exit_code == 0 and r.stderr == ""
    m = metainfo.load(made)
    lines = r.stdout.splitlines()
    assert lines[0] == "name:        album"
    assert lines[1] == f"info-hash:   {m.info_hash_hex}"
    assert f"pieces:      {m.num_pieces} x 16.0 KiB" in lines
    assert "private:     yes" in lines
    assert "comment:     a comment" in lines
    assert lines[lines.index("trackers:") + 1 :][:3] == [
        "  tier 0: http://t1/ann",
        "  tier 1: udp://t2:80/ann",
        "  tier 1: http://t3/ann",
    ]
    assert lines[lines.index("web seeds:") + 1] == "  http://ws/"
    assert lines[lines.index("files:") + 1 :] == [
        "  album/",
        "    one.bin  (48.0 KiB)  #0",
        "    sub/",
        "      empty  (0 B)  #1",
        "      two.txt  (5.9 KiB)  #2",
    ]


def test_info_json(made: Path) -> None:
    r = run(["info", "--json", made])
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    m = metainfo.load(made)
    assert d["name"] == "album" and d["info_hash"] == m.info_hash_hex
    assert d["total_length"] == m.total_length and d["num_pieces"] == m.num_pieces
    assert d["piece_length"] == PL and d["private"] is True and d["multi_file"] is True
    assert d["trackers"] == [["http://t1/ann"], ["udp://t2:80/ann", "http://t3/ann"]]
    assert d["web_seeds"] == ["http://ws/"] and d["comment"] == "a comment"
    assert d["files"] == [
        {"index": 0, "path": "one.bin", "length": 3 * PL + 5, "offset": 0, "padding": False},
        {"index": 1, "path": "sub/empty", "length": 0, "offset": 3 * PL + 5, "padding": False},
        {"index": 2, "path": "sub/two.txt", "length": 6000, "offset": 3 * PL + 5,
         "padding": False},
    ]  # fmt: skip


def test_info_escapes_terminal_control_characters(tmp_path: Path) -> None:
    """A19: ANSI sequences in names must not reach the terminal raw."""
    data = metainfo.build(
        name="evil\x1b[2J\u202ename",
        piece_length=PL,
        pieces=bytes(20),
        length=10,
        comment="c\x07\r",
    )
    t = tmp_path / "evil.torrent"
    t.write_bytes(data)
    r = run(["info", t])
    assert r.exit_code == 0
    assert "\x1b" not in r.stdout and "\u202e" not in r.stdout and "\x07" not in r.stdout
    assert "name:        evil\\x1b[2J\\u202ename" in r.stdout.splitlines()
    r = run(["info", "--json", t])
    assert json.loads(r.stdout)["name"] == "evil\x1b[2J\u202ename"
    assert "\x1b" not in r.stdout  # JSON escapes it


# -- verify ------------------------------------------------------------------------------


def test_verify_ok(made: Path, tree: Path) -> None:
    r = run(["verify", made, tree, "-q"])
    assert r.exit_code == 0, r.stderr
    m = metainfo.load(made)
    assert r.stdout.splitlines() == [
        f"{m.num_pieces} of {m.num_pieces} pieces valid, 0 invalid, 0 missing"
    ]


def test_verify_incomplete(made: Path, tree: Path) -> None:
    with open(tree / "one.bin", "r+b") as fh:
        fh.write(b"\0\0\0")
    r = run(["verify", made, tree, "-q", "-j", "2"])
    assert r.exit_code == ExitStatus.ERROR
    m = metainfo.load(made)
    assert r.stdout.splitlines() == [
        "incomplete: one.bin",
        f"{m.num_pieces - 1} of {m.num_pieces} pieces valid, 1 invalid, 0 missing",
    ]
    (tree / "sub" / "two.txt").write_bytes(b"short")
    r = run(["verify", made, tree, "-q"])
    assert r.exit_code == ExitStatus.ERROR
    assert "wrong size: sub/two.txt" in r.stdout.splitlines()
    (tree / "sub" / "two.txt").unlink()
    r = run(["verify", made, tree, "-q"])
    assert "missing: sub/two.txt" in r.stdout.splitlines()
    r = run(["verify", made, tree.parent / "elsewhere", "-q"])
    assert r.exit_code == ExitStatus.ERROR
    assert (
        r.stdout.splitlines()[-1] == f"0 of {m.num_pieces} pieces valid, 0 invalid, "
        f"{m.num_pieces} missing"
    )
    assert not (tree.parent / "elsewhere").exists()


# -- hostile .torrent files --------------------------------------------------------------


def good_info() -> dict[bytes, Any]:
    return {
        b"name": b"x",
        b"piece length": PL,
        b"files": [{b"length": 10, b"path": [b"a"]}],
        b"pieces": bytes(20),
    }


def with_info(**changes: Any) -> bytes:
    info = good_info()
    info.update({k.replace("_", " ").encode(): v for k, v in changes.items()})
    return bencode.encode({b"info": info})


HOSTILE: dict[str, bytes] = {
    "empty": b"",
    "not-bencode": b"<html>404</html>",
    "truncated": with_info()[:-7],
    "trailing": with_info() + b"garbage",
    "deep-lists": b"l" * 100_000 + b"e" * 100_000,
    "deep-in-info": b"d4:info" + b"l" * 100_000 + b"e" * 100_001,
    "huge-length": b"d4:info99999999999999999999999:e",
    "top-string": b"4:spam",
    "no-info": b"d8:announce3:urle",
    "bad-piece-length": with_info(piece_length=-1),
    "unaligned-pieces": with_info(pieces=bytes(21)),
    "hash-count": with_info(pieces=bytes(40)),
    "negative-file": with_info(files=[{b"length": -1, b"path": [b"a"]}]),
    "dotdot": with_info(files=[{b"length": 10, b"path": [b"..", b"..", b"etc", b"x"]}]),
    "slash": with_info(files=[{b"length": 10, b"path": [b"a/../../b"]}]),
    "backslash": with_info(files=[{b"length": 10, b"path": [b"..\\x"]}]),
    "drive": with_info(files=[{b"length": 10, b"path": [b"C:\\x"]}]),
    "nul": with_info(files=[{b"length": 10, b"path": [b"a\x00b"]}]),
    "name-dotdot": with_info(name=b".."),
    "ansi-in-bad-path": with_info(files=[{b"length": 10, b"path": [b"\x1b[31m/x"]}]),
    "duplicate": with_info(
        files=[{b"length": 5, b"path": [b"a"]}, {b"length": 5, b"path": [b"a"]}]
    ),
    "through-file": with_info(
        files=[{b"length": 5, b"path": [b"a"]}, {b"length": 5, b"path": [b"a", b"b"]}]
    ),
    "unsorted-keys": b"d4:infod4:name1:x6:lengthi1e12:piece lengthi16384e6:pieces20:"
    + bytes(20)
    + b"ee",
}


def commands(torrent: Path, out: Path) -> list[list[str | os.PathLike[str]]]:
    cmds: list[list[str | os.PathLike[str]]] = [
        ["info", torrent],
        ["info", "--json", torrent],
        ["verify", torrent, out, "-q"],
    ]
    if "fetch" in cli.commands:  # exists once the download issue lands
        cmds.append(["fetch", torrent, "-o", out, "-q"])
    return cmds


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_torrent(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torrent = tmp_path / "bad.torrent"
    torrent.write_bytes(HOSTILE[case])
    monkeypatch.chdir(tmp_path)
    before = listing(tmp_path)
    for cmd in commands(torrent, tmp_path / "out"):
        r = run(cmd)
        assert r.exit_code == ExitStatus.BAD_TORRENT, (cmd, r.stdout, r.stderr)
        lines = r.stderr.splitlines()
        assert len(lines) == 1, (cmd, r.stderr)
        assert lines[0].startswith(f"mptorrent: error: {torrent}: "), lines[0]
        assert lines[0].isprintable(), lines[0]
        assert r.stdout == ""
        assert listing(tmp_path) == before


def test_missing_torrent_file(tmp_path: Path) -> None:
    r = run(["info", tmp_path / "nope.torrent"])
    assert r.exit_code == ExitStatus.BAD_TORRENT
    assert r.stderr.splitlines() == [
        f"mptorrent: error: cannot read {tmp_path / 'nope.torrent'}: No such file or directory"
    ]


def test_verbose_shows_traceback(tmp_path: Path) -> None:
    t = tmp_path / "bad.torrent"
    t.write_bytes(b"garbage")
    quiet = run(["info", t])
    assert "Traceback" not in quiet.stderr
    loud = run(["info", "-v", t])
    assert loud.exit_code == ExitStatus.BAD_TORRENT
    assert "Traceback" in loud.stderr and "BadTorrent" in loud.stderr
    assert loud.stderr.splitlines()[-1].startswith("mptorrent: error: ")


def test_version_and_help() -> None:
    r = run(["--version"])
    assert r.exit_code == 0 and "mptorrent" in r.stdout
    r = run(["-h"])
    assert r.exit_code == 0
    for name in ("info", "create", "verify"):
        assert name in r.stdout
