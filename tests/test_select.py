"""``--only`` selectors (mptorrent.policy.select) and the command line's refusals of bad
selections and of ``-o -`` combinations: exit 2, one line, nothing created (issue 16)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from mptorrent.cli.main import cli
from mptorrent.errors import BadSelection, ExitStatus
from mptorrent.policy.select import MAX_SELECTOR_LEN, select_files
from mptorrent.proto.metainfo import FileEntry
from tests.dht_off import no_dht
from tests.test_cli import runner

FILES = (
    FileEntry(("a.bin",), 10, 0),
    FileEntry((".pad", "6"), 6, 10, True),
    FileEntry(("media", "season 1", "ep1.mkv"), 20, 16),
    FileEntry(("media", "season 1", "ep2.mkv"), 20, 36),
    FileEntry(("media", "[x]", "cover.jpg"), 5, 56),
)


@pytest.mark.parametrize(
    ("selectors", "chosen"),
    [
        (["media/season 1/*"], [2, 3]),
        (["*.mkv", "#0"], [0, 2, 3]),
        (["#3", "#3", 3], [3]),
        (["media/*"], [2, 3, 4]),  # fnmatch's * crosses '/'
        (["media/[[]x]/*"], [4]),  # a literal [ in a name
        (["MEDIA/*", "*"], [0, 2, 3, 4]),  # case-sensitive; padding never selected
    ],
)
def test_globs_and_indices(selectors: list[str | int], chosen: list[int]) -> None:
    if selectors[0] == "MEDIA/*":
        with pytest.raises(BadSelection):
            select_files(FILES, selectors[:1])
        selectors = selectors[1:]
    assert select_files(FILES, selectors) == chosen


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("nothing/*", "--only 'nothing/*' matches no file of the torrent"),
        ("#9", "--only #9: the torrent has no file 9 (mptorrent info lists them)"),
        ("#1", "--only #1: the torrent has no file 1 (mptorrent info lists them)"),  # padding
        ("#-1", "--only '#-1': '#' must be followed by a file index"),
        ("#", "--only '#': '#' must be followed by a file index"),
        ("#１", "--only '#１': '#' must be followed by a file index"),  # not ASCII digits
        ("#99999999999999999999", "--only '#99999999999999999999': '#' must be followed by"),
        ("", "--only: an empty, over-long or NUL-bearing pattern"),
        ("a\x00b", "--only: an empty, over-long or NUL-bearing pattern"),
        ("*" * (MAX_SELECTOR_LEN + 1), "--only: an empty, over-long or NUL-bearing pattern"),
    ],
)
def test_bad_selectors_are_one_line_usage_errors(selector: str, message: str) -> None:
    with pytest.raises(BadSelection) as caught:
        select_files(FILES, [selector])
    assert str(caught.value).startswith(message)
    assert str(caught.value).isprintable() and caught.value.exit_code == 2


def test_too_many_selectors() -> None:
    with pytest.raises(BadSelection, match="more than 10000 selectors"):
        select_files(FILES, ["*"] * 10_001)


def test_a_pathological_glob_is_fast() -> None:
    many = (FileEntry(("a" * 200,), 1, i, False) for i in range(1))
    with pytest.raises(BadSelection):
        select_files(tuple(many), ["*a" * 1000 + "b"])  # no catastrophic backtracking


def _run(args: Sequence[str | os.PathLike[str]]) -> tuple[int, str, str]:
    r = runner().invoke(cli, no_dht([str(a) for a in args]), catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture
def torrent(tmp_path: Path) -> Path:
    src = tmp_path / "album"
    (src / "sub").mkdir(parents=True)
    (src / "one.bin").write_bytes(os.urandom(40_000))
    (src / "sub" / "two.txt").write_bytes(os.urandom(6_000))
    out = tmp_path / "album.torrent"
    code, _, err = _run(["create", src, "-o", out, "--piece-size", "16K", "-q"])
    assert code == 0, err
    return out


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--only", "nope"], "mptorrent: error: --only 'nope' matches no file of the torrent"),
        (["--only", "#7"], "mptorrent: error: --only #7: the torrent has no file 7"),
        (["-o", "-"], "mptorrent: error: -o - streams one file, and 2 are selected: choose"),
        (["-o", "-", "--json"], "Error: -o - and --json both want stdout: choose one"),
        (["--keep", "k"], "Error: --keep goes with -o - (otherwise -o says where the data goes)"),
    ],
)
def test_fetch_refuses_bad_selections_before_creating_anything(
    torrent: Path, tmp_path: Path, args: list[str], line: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = sorted(tmp_path.rglob("*"))
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(["fetch", torrent, "--peer", "127.0.0.1:1", "--no-trackers", *args])
    assert code == ExitStatus.USAGE
    assert out == ""
    assert line in err and "Traceback" not in err
    if "--json" not in args and "--keep" not in args:  # click's usage errors say more
        assert len(err.strip().splitlines()) == 1
    assert sorted(tmp_path.rglob("*")) == before


def test_verify_only_reports_the_selected_pieces(torrent: Path, tmp_path: Path) -> None:
    code, out, _ = _run(["verify", torrent, tmp_path / "album", "--only", "sub/*", "-q"])
    assert code == 0
    assert out.strip().splitlines()[-1] == "1 of 1 selected pieces valid, 0 invalid, 0 missing"
    code, out, _ = _run(["verify", torrent, tmp_path / "nowhere", "--only", "#0", "-q"])
    assert code == 1
    assert out.strip().splitlines() == [
        "missing: one.bin", "0 of 3 selected pieces valid, 0 invalid, 3 missing"
    ]  # fmt: skip


def test_fetch_refuses_to_stream_into_a_terminal(torrent: Path, tmp_path: Path) -> None:
    # A real terminal (a pseudo-terminal) on stdout: the payload would garble it.
    import pty
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    main, sub = pty.openpty()
    try:
        args = no_dht(["fetch", str(torrent), "--only", "#0", "-o", "-", "--peer", "127.0.0.1:1",
                       "--no-trackers"])  # fmt: skip
        r = subprocess.run(
            [sys.executable, "-m", "mptorrent", *args], stdout=sub, stderr=subprocess.PIPE,
            cwd=tmp_path, timeout=60, text=True, env=dict(os.environ, PYTHONPATH=str(root)),
        )  # fmt: skip
    finally:
        os.close(sub)
        os.close(main)
    assert r.returncode == ExitStatus.USAGE
    assert "-o - writes the file's bytes to stdout, a terminal: redirect it" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("Error: -o - writes")  # click's usage form
    assert sorted(p.name for p in tmp_path.iterdir()) == ["album", "album.torrent"]
