"""BitTorrent v2 and hybrid torrents (BEP 52) against real libtorrent, both directions.

- ``mptorrent create --v2/--hybrid`` output loads in libtorrent with the same v1 and v2
  info-hashes, and a libtorrent session checks the payload as complete against it.
- libtorrent makes v2-only and hybrid torrents of a multi-file payload (uneven sizes, one
  file under 16 KiB, one empty); a libtorrent seeder serves it and the real ``mptorrent
  fetch`` gets every file byte-identical with ``-j 1`` and ``-j 3``, verifying v2 pieces
  through the merkle verifier (a v2-only torrent is known to the wire by its truncated v2
  info-hash; a hybrid by its v1 one).
- mptorrent seeds a v2 torrent to a libtorrent leecher.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import libtorrent as lt
import pytest

from mptorrent.proto import metainfo
from tests.dht_off import no_dht
from tests.interop.opentracker import run_opentracker
from tests.interop.test_seed import mptorrent_seed
from tests.swarm import (
    IpPool,
    LtPeer,
    Payload,
    make_tree,
    run_lt_leecher,
    run_lt_magnet_leecher,
    same_tree,
)

pytestmark = pytest.mark.interop

PL = 32 * 1024
SPEC = {"a.bin": 300_001, "b/small": 5_000, "b/empty": 0, "c/d/e.bin": 2 * PL, "z": 70_003}
FLAGS = {"v2": lt.create_torrent.v2_only, "hybrid": 0}
fresh_ip = IpPool(third=52)


def cli(*args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "mptorrent", *no_dht(list(args))]
    try:
        return subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"mptorrent {' '.join(args)} did not finish in {timeout:.0f} s")


def lt_make(payload: Payload, kind: str) -> bytes:
    entries = sorted(lt.list_files(str(payload.root)), key=lambda e: e.filename)
    ct = lt.create_torrent(entries, PL, FLAGS[kind])
    lt.set_piece_hashes(ct, str(payload.save_dir))
    return bytes(lt.bencode(ct.generate()))


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Payload:
    return make_tree(tmp_path_factory.mktemp("v2src"), SPEC, seed=52)


@pytest.mark.parametrize("kind", ["v2", "hybrid"])
@pytest.mark.parametrize("single", [False, True], ids=["tree", "single"])
def test_libtorrent_loads_and_seed_checks_what_we_create(
    payload: Payload, tmp_path: Path, kind: str, single: bool
) -> None:
    src = payload.root / "a.bin" if single else payload.root
    out = tmp_path / "ours.torrent"
    r = cli("create", str(src), f"--{kind}", "--piece-size", "32K", "-o", str(out), "-q")
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    ours = metainfo.parse(data)
    ti = lt.torrent_info(data)
    hashes = ti.info_hashes()
    assert ours.info_hash_v2 is not None and hashes.has_v2()
    assert ours.info_hash_v2.hex() == str(hashes.v2)
    if kind == "hybrid":
        assert hashes.has_v1() and ours.info_hash_hex == str(hashes.v1)
    else:
        assert not hashes.has_v1() and ours.info_hash == ours.info_hash_v2[:20]
    # libtorrent's own torrent of the same files: the same file tree (the same roots), and for
    # v2-only the same info dict (a hybrid's v1 padding differs: libtorrent pads the last file)
    theirs = lt.create_torrent(lt.list_files(str(src)), PL, FLAGS[kind])
    lt.set_piece_hashes(theirs, str(src.parent))
    their_info = lt.bdecode(lt.bencode(theirs.generate()))[b"info"]
    assert their_info[b"file tree"] == lt.bdecode(data)[b"info"][b"file tree"]
    if kind == "v2":
        assert their_info == lt.bdecode(data)[b"info"]
    with LtPeer(data, src.parent, ip=fresh_ip(), use_trackers=False) as seeder:
        st = seeder.handle.status()
        assert st.is_seeding and all(st.pieces) and len(st.pieces) == ours.num_pieces


@pytest.mark.parametrize("kind", ["v2", "hybrid"])
def test_fetch_from_a_libtorrent_seeder(payload: Payload, tmp_path: Path, kind: str) -> None:
    data = lt_make(payload, kind)
    meta = metainfo.parse(data)
    assert meta.meta_version == kind
    torrent = tmp_path / f"{kind}.torrent"
    torrent.write_bytes(data)
    with LtPeer(data, payload.save_dir, ip=fresh_ip(), use_trackers=False) as seeder:
        for jobs in ("1", "3"):
            out = tmp_path / f"out-j{jobs}"
            peer = f"{seeder.addr.host}:{seeder.addr.port}"
            r = cli("fetch", str(torrent), "-o", str(out), "-j", jobs, "--peer", peer, "-q",
                    "--no-trackers", "--bind", fresh_ip())  # fmt: skip
            assert r.returncode == 0, r.stderr
            assert same_tree(out, payload.root), jobs
            v = cli("verify", str(torrent), str(out), "-q")
            assert v.returncode == 0, v.stderr


def test_mptorrent_seeds_a_v2_torrent_to_a_libtorrent_leecher(
    payload: Payload, tmp_path: Path
) -> None:
    data = lt_make(payload, "v2")
    torrent = tmp_path / "v2.torrent"
    torrent.write_bytes(data)
    with mptorrent_seed(torrent, payload.root, fresh_ip(), "--no-trackers") as seed:
        run_lt_leecher(data, tmp_path / "lt", [seed.addr], ip=fresh_ip(), timeout=60)
        status, err = seed.interrupt()
    assert same_tree(tmp_path / "lt" / payload.root.name, payload.root)
    assert status == 130, err


def test_fetch_a_hybrid_magnet_with_both_hashes(payload: Payload, tmp_path: Path) -> None:
    data = lt_make(payload, "hybrid")
    meta = metainfo.parse(data)
    assert meta.info_hash_v2 is not None
    with LtPeer(data, payload.save_dir, ip=fresh_ip(), use_trackers=False) as seeder:
        uri = (
            f"magnet:?xt=urn:btih:{meta.info_hash_hex}&xt=urn:btmh:1220{meta.info_hash_v2.hex()}"
            f"&x.pe={seeder.addr.host}:{seeder.addr.port}"
        )
        out = tmp_path / "out"
        r = cli("fetch", uri, "-o", str(out), "-j", "2", "-q", "--no-trackers",
                "--bind", fresh_ip())  # fmt: skip
        assert r.returncode == 0, r.stderr
    assert same_tree(out, payload.root)


def test_fetch_a_v2_magnet_whose_piece_layers_come_by_hash_requests(
    payload: Payload, tmp_path: Path
) -> None:
    """A v2 magnet gives only the info dict: the metadata phase asks the libtorrent seeder for
    each large file's piece layer (BEP 52 hash requests), checks every answer's proof against
    the file's root, and the download verifies each piece against those layers."""
    data = lt_make(payload, "v2")
    meta = metainfo.parse(data)
    assert meta.info_hash_v2 is not None and meta.piece_layers  # a.bin, c/d/e.bin, z
    with LtPeer(data, payload.save_dir, ip=fresh_ip(), use_trackers=False) as seeder:
        uri = (f"magnet:?xt=urn:btmh:1220{meta.info_hash_v2.hex()}"
               f"&x.pe={seeder.addr.host}:{seeder.addr.port}")  # fmt: skip
        out = tmp_path / "out"
        saved = tmp_path / "saved.torrent"
        r = cli("fetch", uri, "-o", str(out), "-j", "2", "-q", "--no-trackers",
                "--bind", fresh_ip(), "--save-torrent", str(saved))  # fmt: skip
        assert r.returncode == 0, r.stderr
    assert same_tree(out, payload.root)
    again = metainfo.parse(saved.read_bytes())  # a whole .torrent: layers included
    assert again.info_hash_v2 == meta.info_hash_v2
    assert dict(again.piece_layers) == dict(meta.piece_layers)


def test_a_libtorrent_magnet_leecher_gets_hashes_from_our_seed(
    payload: Payload, tmp_path: Path
) -> None:
    """libtorrent from a v2 magnet has no piece layers: it asks our seed for them with hash
    requests (one per large file, the whole layer at once) and gets them.  (With a payload this
    small it could also check each whole file against its root, so the answers' worth is shown
    by the unit tests that check them against our own verifier.)"""
    data = lt_make(payload, "v2")
    meta = metainfo.parse(data)
    assert meta.info_hash_v2 is not None
    torrent = tmp_path / "v2.torrent"
    torrent.write_bytes(data)
    with mptorrent_seed(torrent, payload.root, fresh_ip(), "--no-trackers") as seed:
        run_lt_magnet_leecher(
            f"magnet:?xt=urn:btmh:1220{meta.info_hash_v2.hex()}", tmp_path / "lt",
            (seed.addr.host, seed.addr.port), ip=fresh_ip(),
        )  # fmt: skip
        assert seed.proc.poll() is None  # still serving
    assert same_tree(tmp_path / "lt" / payload.root.name, payload.root)


@pytest.mark.parametrize("kind", ["v2", "hybrid"])
def test_resume_keeps_what_verifies_against_the_merkle_trees(
    payload: Payload, tmp_path: Path, kind: str
) -> None:
    """Data already in the output is checked through the v2 verifier (resume): whole files
    are kept, a changed byte and a missing file are fetched again."""
    data = lt_make(payload, kind)
    meta = metainfo.parse(data)
    torrent = tmp_path / f"{kind}.torrent"
    torrent.write_bytes(data)
    out = tmp_path / "out"
    shutil.copytree(payload.root, out)
    (out / "b" / "small").unlink()
    z = bytearray((out / "z").read_bytes())
    z[-1] ^= 0xFF
    (out / "z").write_bytes(z)
    with LtPeer(data, payload.save_dir, ip=fresh_ip(), use_trackers=False) as seeder:
        peer = f"{seeder.addr.host}:{seeder.addr.port}"
        r = cli("fetch", str(torrent), "-o", str(out), "-j", "2", "--no-trackers",
                "--peer", peer, "--bind", fresh_ip())  # fmt: skip
        assert r.returncode == 0, r.stderr
    assert same_tree(out, payload.root)
    resumed = re.search(r"(\d+) piece\(s\) already on disk", r.stderr)
    assert resumed, r.stderr[-1000:]
    # all but b/small's piece and z's last one
    assert int(resumed[1]) == meta.num_pieces - 2


def test_a_v2_swarm_meets_at_a_tracker_under_the_truncated_v2_hash(
    payload: Payload, tmp_path: Path, opentracker_bin: str
) -> None:
    """BEP 52: a v2-only torrent is announced with its SHA-256 info-hash cut to 20 bytes.
    opentracker (whitelist: that hash only) introduces a libtorrent seeder and our fetch."""
    data = lt_make(payload, "v2")
    meta = metainfo.parse(data)
    assert meta.info_hash_v2 is not None and meta.info_hash == meta.info_hash_v2[:20]
    with run_opentracker([meta.info_hash]) as tracker:
        d = lt.bdecode(data)
        d[b"announce"] = tracker.announce_url.encode()
        torrent = tmp_path / "tracked.torrent"
        torrent.write_bytes(lt.bencode(d))
        assert metainfo.load(torrent).info_hash_v2 == meta.info_hash_v2
        with LtPeer(data, payload.save_dir, ip=fresh_ip(), tracker_url=tracker.announce_url):
            out = tmp_path / "out"
            r = cli("fetch", str(torrent), "-o", str(out), "-j", "2", "-q", "--bind", fresh_ip(),
                    "--port", "0")  # fmt: skip
            assert r.returncode == 0, r.stderr
    assert same_tree(out, payload.root)
