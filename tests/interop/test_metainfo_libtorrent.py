"""Our .torrent reader and writer against libtorrent's, in both directions.

libtorrent makes torrents that we parse (same info-hash, files, offsets and piece
hashes), and torrents made by ``mptorrent create`` load in libtorrent with the same
info-hash and check as complete against the data in a real (loopback-only) session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mptorrent.disk import checker
from mptorrent.disk.storage import Layout
from mptorrent.proto import bencode, metainfo
from mptorrent.proto.metainfo import Metainfo

lt = pytest.importorskip("libtorrent")

pytestmark = pytest.mark.interop

PL = 16384
V1 = lt.create_torrent.v1_only
# canonical_files puts BEP 47 pad files after every file (even the last), so each file
# starts on a piece boundary; the tail variant leaves the last file unpadded.
FLAGS = {
    "plain": V1,
    "padded": V1 | lt.create_torrent.canonical_files,
    "padded-no-tail": V1 | lt.create_torrent.canonical_files_no_tail_padding,
}


def write_tree(root: Path) -> None:
    # Two 100-byte files give two pad files with the same name (.pad/16284).
    sizes = {"a.bin": 40_000, "d/b": 100, "d/c": 100, "d/e/empty": 0, "d/e/f": 3 * PL, "z": 70_001}
    for rel, n in sizes.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(n))


def lt_make(path: Path, flags: int, piece_length: int = PL) -> bytes:
    ct = lt.create_torrent(lt.list_files(str(path)), piece_length, flags)
    lt.set_piece_hashes(ct, str(path.parent))
    ct.set_creator("libtorrent interop test")
    ct.add_tracker("http://127.0.0.1:1/announce", 0)
    ct.add_tracker("http://127.0.0.2:1/announce", 1)
    ct.add_url_seed("http://127.0.0.1:1/ws/")
    return bytes(lt.bencode(ct.generate()))


def lt_files(ti: lt.torrent_info) -> list[tuple[tuple[str, ...], int, int, bool]]:
    fs = ti.layout()
    out = []
    for i in range(fs.num_files()):
        parts = tuple(Path(fs.file_path(i)).parts)
        if ti.num_files() > 1 or len(parts) > 1:
            parts = parts[1:]  # libtorrent puts the torrent's name first
        pad = bool(fs.file_flags(i) & lt.file_storage.flag_pad_file)
        out.append((parts, fs.file_size(i), fs.file_offset(i), pad))
    return out


def assert_same(meta: Metainfo, ti: lt.torrent_info) -> None:
    assert meta.info_hash_hex == str(ti.info_hashes().v1)
    assert meta.name == ti.name()
    assert meta.total_length == ti.total_size()
    assert meta.piece_length == ti.piece_length()
    assert meta.num_pieces == ti.num_pieces()
    assert [(f.path, f.length, f.offset, f.padding) for f in meta.files] == lt_files(ti)
    for i in range(meta.num_pieces):
        assert meta.piece_hash(i) == bytes(ti.hash_for_piece(i))
        assert meta.piece_size(i) == ti.piece_size(i)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    write_tree(root)
    return root


# -- libtorrent writes, we read ---------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(FLAGS))
def test_libtorrent_multi_file(tree: Path, kind: str) -> None:
    data = lt_make(tree, FLAGS[kind])
    meta = metainfo.parse(data)
    ti = lt.torrent_info(data)
    assert_same(meta, ti)
    assert meta.multi_file
    assert meta.trackers == (("http://127.0.0.1:1/announce",), ("http://127.0.0.2:1/announce",))
    assert meta.web_seeds == ("http://127.0.0.1:1/ws/",)
    assert meta.created_by == "libtorrent interop test"
    pads = [f for f in meta.files if f.padding]
    assert bool(pads) == (kind != "plain")
    if kind == "padded":
        assert len({f.path for f in pads}) < len(pads)  # repeated pad names are allowed
    assert ("d", "e", "empty") in {f.path for f in meta.data_files}
    # Our checker agrees with libtorrent's hashes over the real data (pads read as zeros).
    report = checker.verify(meta, Layout.for_torrent(meta, tree), jobs=2)
    assert report.complete


def test_libtorrent_single_file(tmp_path: Path) -> None:
    f = tmp_path / "movie.bin"
    f.write_bytes(os.urandom(5 * PL + 17))
    data = lt_make(f, V1)
    meta = metainfo.parse(data)
    assert not meta.multi_file
    assert_same(meta, lt.torrent_info(data))
    assert checker.verify(meta, Layout.for_torrent(meta, f), jobs=1).complete


def test_info_hash_with_keys_we_do_not_know(tree: Path) -> None:
    """A6: the hash is over the info bytes as written, unknown keys included."""
    top = lt.bdecode(lt_make(tree, V1))
    top[b"info"][b"source"] = b"SOMETRACKER"
    top[b"info"][b"x-cross-seed"] = {b"id": [1, 2, b"three"]}
    data = bytes(lt.bencode(top))
    meta = metainfo.parse(data)
    assert meta.info_hash_hex == str(lt.torrent_info(data).info_hashes().v1)
    assert meta.info_bytes == bytes(lt.torrent_info(data).info_section())


# -- we write, libtorrent reads ------------------------------------------------------------


def mptorrent_create(path: Path, out: Path, *extra: str) -> bytes:
    proc = subprocess.run(
        [sys.executable, "-m", "mptorrent", "create", str(path), "-o", str(out), "-q", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return out.read_bytes()


@pytest.mark.parametrize("piece_size", ["16K", "64K", "auto"])
def test_mptorrent_create_loads_in_libtorrent(tree: Path, tmp_path: Path, piece_size: str) -> None:
    data = mptorrent_create(
        tree,
        tmp_path / "x.torrent",
        "--piece-size",
        piece_size,
        "-t",
        "http://127.0.0.1:1/a",
        "-t",
        "http://127.0.0.2:1/b",
        "--webseed",
        "http://127.0.0.1:1/ws/",
        "--private",
    )
    meta = metainfo.parse(data)
    ti = lt.torrent_info(data)
    assert_same(meta, ti)
    assert ti.priv()
    atp = lt.load_torrent_buffer(data)
    assert list(zip(atp.trackers, atp.tracker_tiers, strict=True)) == [
        ("http://127.0.0.1:1/a", 0),
        ("http://127.0.0.2:1/b", 1),
    ]
    assert atp.url_seeds == ["http://127.0.0.1:1/ws/"]


# -- a libtorrent session checks our torrent against the data --------------------------------


def loopback_session() -> lt.session:
    """One libtorrent peer that talks to nobody."""
    return lt.session(
        {
            "listen_interfaces": "127.0.0.11:0",
            "outgoing_interfaces": "127.0.0.11",
            "enable_dht": False,
            "dht_bootstrap_nodes": "",
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "enable_ip_notifier": False,
            "enable_incoming_utp": False,
            "enable_outgoing_utp": False,
            "max_retry_port_bind": 0,
            "alert_mask": lt.alert_category.error | lt.alert_category.status,
        }
    )


@pytest.fixture
def session() -> Iterator[lt.session]:
    s = loopback_session()
    yield s
    s.pause()
    del s


def checked(session: lt.session, data: bytes, save_path: Path, timeout: float = 30.0) -> Any:
    """Add the torrent, wait until libtorrent has hashed what is on disk, return its status."""
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(data)
    atp.save_path = str(save_path)
    atp.flags &= ~(lt.torrent_flags.paused | lt.torrent_flags.auto_managed)
    h = session.add_torrent(atp)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session.wait_for_alert(100)
        for a in session.pop_alerts():
            if isinstance(a, lt.torrent_error_alert | lt.file_error_alert):
                pytest.fail(f"libtorrent: {a.message()}")
            if isinstance(a, lt.torrent_checked_alert) and a.handle == h:
                st = h.status()
                if all(st.pieces):  # a complete torrent turns to seeding right after
                    while st.state != lt.torrent_status.seeding:
                        assert time.monotonic() < deadline, f"stuck in {st.state}"
                        time.sleep(0.02)
                        st = h.status()
                return st
    pytest.fail(f"libtorrent did not finish checking within {timeout} s")


def test_libtorrent_session_seeds_our_torrent(
    session: lt.session, tree: Path, tmp_path: Path
) -> None:
    data = mptorrent_create(tree, tmp_path / "x.torrent", "--piece-size", "16K")
    st = checked(session, data, tree.parent)
    assert st.state == lt.torrent_status.seeding
    assert st.is_seeding and st.num_pieces == metainfo.parse(data).num_pieces
    assert all(st.pieces)


def test_libtorrent_session_seeds_our_single_file(session: lt.session, tmp_path: Path) -> None:
    f = tmp_path / "movie.bin"
    f.write_bytes(os.urandom(3 * 1024 * 1024 + 1))
    data = mptorrent_create(f, tmp_path / "m.torrent")
    st = checked(session, data, tmp_path)
    assert st.state == lt.torrent_status.seeding and all(st.pieces)


def test_libtorrent_session_finds_our_corruption(
    session: lt.session, tree: Path, tmp_path: Path
) -> None:
    """The negative control: the session test above can fail."""
    data = mptorrent_create(tree, tmp_path / "x.torrent", "--piece-size", "16K")
    with open(tree / "z", "r+b") as fh:
        fh.write(b"\xff" * 4)
    meta = metainfo.parse(data)
    ours = checker.verify(meta, Layout.for_torrent(meta, tree), jobs=2)
    st = checked(session, data, tree.parent)
    assert st.state == lt.torrent_status.downloading
    assert [i for i, have in enumerate(st.pieces) if not have] == ours.invalid
    assert len(ours.invalid) == 1


def test_encodings_agree_byte_for_byte(tree: Path, tmp_path: Path) -> None:
    """libtorrent re-encodes what it loads; for our canonical output that changes nothing."""
    data = mptorrent_create(tree, tmp_path / "x.torrent")
    assert bytes(lt.bencode(lt.bdecode(data))) == data
    assert bencode.encode(bencode.decode(data, max_size=bencode.MAX_TORRENT_SIZE)) == data
