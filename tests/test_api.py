"""The Python API without a swarm: errors and their exit codes, torrents to inspect, create and
verify, a light ``import mptorrent``, the docs' examples (docs/api.md, which bring their own
seeder on loopback) and a type-checked client script.

Downloads from libtorrent seeders are in tests/interop/test_api.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mptorrent
from mptorrent import errors
from mptorrent.proto import metainfo

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def test_a_garbage_torrent_raises_bad_torrent_with_exit_code_3(tmp_path: Path) -> None:
    with pytest.raises(mptorrent.BadTorrent) as caught:
        mptorrent.fetch(b"this is not a torrent", tmp_path / "x")
    assert caught.value.exit_code == 3
    bad = tmp_path / "bad.torrent"
    bad.write_bytes(b"d4:infod6:lengthi-5eee")
    with pytest.raises(mptorrent.MptorrentError) as caught2:
        mptorrent.fetch(bad, tmp_path / "x")
    assert caught2.value.exit_code == 3
    with pytest.raises(mptorrent.BadTorrent):
        mptorrent.Torrent.load(tmp_path / "missing.torrent")
    assert not (tmp_path / "x").exists()


def test_a_bad_magnet_raises_bad_magnet_with_exit_code_3() -> None:
    with pytest.raises(mptorrent.BadMagnet) as caught:
        mptorrent.fetch("magnet:?xt=urn:btih:12345")
    assert caught.value.exit_code == 3


def test_a_bad_dht_bootstrap_is_a_value_error_before_anything_starts(tmp_path: Path) -> None:
    for bad in ("nohost", "127.0.0.1:0", "127.0.0.1:70000", ":6881"):
        with pytest.raises(ValueError, match="is not HOST:PORT"):
            mptorrent.start(b"not even a torrent", tmp_path / "x", dht_bootstrap=[bad])
        with pytest.raises(ValueError, match="is not HOST:PORT"):
            mptorrent.fetch(b"not even a torrent", tmp_path / "x", dht_bootstrap=[bad])
    assert not (tmp_path / "x").exists()


def test_exit_code_mirrors_exit_status() -> None:
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.MptorrentError)]  # fmt: skip
    for cls in classes:
        assert cls.exit_status == cls.__new__(cls).exit_code
    assert mptorrent.Cancelled.exit_status == 130


def test_create_load_and_verify(tmp_path: Path) -> None:
    data = tmp_path / "tree"
    (data / "sub").mkdir(parents=True)
    (data / "a.bin").write_bytes(os.urandom(100_000))
    (data / "sub" / "b.bin").write_bytes(os.urandom(50_000))
    t = mptorrent.create(
        data, tmp_path / "t.torrent", trackers=["http://127.0.0.1:1/announce"],
        piece_length=16 * 1024, comment="hi", workers=1,
    )  # fmt: skip
    meta = metainfo.load(tmp_path / "t.torrent")
    loaded = mptorrent.Torrent.load(tmp_path / "t.torrent")
    for torrent in (t, loaded, mptorrent.Torrent.load((tmp_path / "t.torrent").read_bytes())):
        assert torrent.info_hash == meta.info_hash_hex and torrent.name == "tree"
        assert torrent.size == 150_000 and torrent.pieces == meta.num_pieces
        assert torrent.piece_length == 16 * 1024
        assert {f.path: f.length for f in torrent.files} == {"a.bin": 100_000, "sub/b.bin": 50_000}
        assert torrent.trackers == (("http://127.0.0.1:1/announce",),)
        assert not torrent.private
    ok = mptorrent.verify(t, data, workers=1)
    assert ok.complete and ok.valid == ok.pieces == meta.num_pieces
    with (data / "a.bin").open("r+b") as fh:
        fh.seek(20_000)
        fh.write(b"\0" * 3)
    (data / "sub" / "b.bin").unlink()
    seen: list[int] = []
    bad = mptorrent.verify(tmp_path / "t.torrent", data, workers=1, on_progress=seen.append)
    assert not bad.complete
    assert bad.invalid == (1,)
    assert bad.missing and min(bad.missing) == 100_000 // (16 * 1024)
    assert sum(seen) > 0


def test_import_mptorrent_loads_no_engine() -> None:
    code = (
        "import sys, mptorrent\n"
        "assert not [m for m in sys.modules if m.startswith('mptorrent.engine')]\n"
        "mptorrent.Torrent\n"
        "assert 'mptorrent.engine.api' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV, timeout=30)


def test_the_docs_examples_run(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)
    assert len(blocks) >= 4
    script = tmp_path / "examples.py"
    script.write_text("\n".join(blocks))
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=work, env=ENV, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "downloads/movie.bin: 10240000 bytes" in proc.stdout
    assert "asyncio: done, 10240000 bytes" in proc.stdout
    assert "BadTorrent 3" in proc.stdout
    assert "only: 768000 bytes, ['.mptorrent.parts', 'two.bin']" in proc.stdout
    assert "streamed: - 1024000 bytes, sha-256 matches: True" in proc.stdout
    assert not (work / "some" / "one.bin").exists()
    for name in ("downloads", "again", "async"):
        assert (work / name / "movie.bin").read_bytes() == (work / "movie.bin").read_bytes()


CLIENT = """
from __future__ import annotations

import asyncio
from pathlib import Path

import mptorrent
from mptorrent import events as ev


def download(source: str | bytes | Path, out: Path) -> int:
    def show(event: ev.Event) -> None:
        if isinstance(event, ev.Progress):
            print(event.done, event.total)

    try:
        result: mptorrent.FetchResult = mptorrent.fetch(
            source, out, workers=2, peers=["127.0.0.1:6881", ("::1", 6881)], trackers=False,
            on_event=show, dht=True, dht_bootstrap=["127.0.0.2:6881", ("::1", 6882)],
            dht_port=6881,
        )
    except mptorrent.MptorrentError as exc:
        return exc.exit_code
    size: int = result.bytes
    where: Path = result.path
    print(where, size, result.elapsed, result.info_hash)
    return 0


async def follow(t: mptorrent.Torrent) -> float:
    handle: mptorrent.Download = mptorrent.start(t, None)
    async for event in handle.aevents():
        if isinstance(event, ev.Done):
            return event.elapsed
    p = handle.progress
    handle.cancel()
    return 0.0 if p is None else p.done / p.total


def inspect(path: Path) -> list[str]:
    t = mptorrent.Torrent.load(path)
    report: mptorrent.VerifyResult = mptorrent.verify(t, "data")
    print(report.complete, asyncio.run(follow(t)))
    return [f"{f.path}: {f.length}" for f in t.files]


def some_files(t: mptorrent.Torrent) -> tuple[int, ...]:
    chosen: tuple[int, ...] = t.select(["season 1/*", "#0", 3])
    with open("ep1.mkv", "wb") as sink:
        mptorrent.fetch(t, only=["#1"], sequential=True, stream=sink)
    handle = mptorrent.start(t, "out", only=chosen, sequential=False)
    print(handle.wait().bytes, mptorrent.verify(t, "out", only=chosen).complete)
    return chosen
"""


def test_a_typed_client_passes_mypy_strict(tmp_path: Path) -> None:
    client = tmp_path / "client.py"
    client.write_text(CLIENT)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
         "--cache-dir", str(tmp_path / "cache"), str(client)],
        env={**ENV, "MYPYPATH": str(ROOT)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bad = tmp_path / "bad.py"
    bad.write_text("import mptorrent\nx: str = mptorrent.fetch('a.torrent').bytes\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
         "--cache-dir", str(tmp_path / "cache"), str(bad)],
        env={**ENV, "MYPYPATH": str(ROOT)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1 and "incompatible types in assignment" in proc.stdout.lower()
