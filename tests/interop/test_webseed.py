"""Web seeds (BEP 19) against a real HTTP server that is not ours: Debian's lighttpd
(tests/httpd.py), started per test on its own loopback address (127.0.16.x).

The real CLI runs in a subprocess (``--no-dht``, no trackers), alone with the web seed, next to
a libtorrent seeder, and next to a broken mirror; every download must be byte-identical.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.dht_off import no_dht
from tests.httpd import run_lighttpd
from tests.spread import CLI_WITH_RESULT, RESULT_ENV, read_result
from tests.swarm import LtPeer, multi_file_case, same_tree, single_file_case

pytestmark = pytest.mark.interop

TIMEOUT = 60.0
MiB = 1 << 20


def fetch(
    torrent: Path | str, out: Path, *args: str, result: Path | None = None,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:  # fmt: skip
    """The real CLI with ``--json``: its process and its event lines."""
    cmd = [sys.executable, "-c", CLI_WITH_RESULT, *no_dht(["fetch", str(torrent), "-o", str(out),
           "--no-trackers", "--port", "0", "--json", *args])]  # fmt: skip
    full_env = {**os.environ, **(env or {})}
    if result is not None:
        full_env[RESULT_ENV] = str(result)
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=TIMEOUT, env=full_env)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"mptorrent fetch {' '.join(args)} did not finish in {TIMEOUT:.0f} s")
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc, lines


def peer_lines(lines: list[dict[str, Any]], address: str) -> list[dict[str, Any]]:
    return [e for e in lines if e["event"] == "peer" and e["address"] == address]


def test_single_file_from_the_web_seed_alone(tmp_path: Path) -> None:
    case = single_file_case(tmp_path / "src", size=8 * MiB - 12_345)
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(case.torrent)
    out = tmp_path / "out.bin"
    with run_lighttpd(tmp_path / "src", "127.0.16.1") as httpd:
        url = httpd.url("payload.bin")
        proc, lines = fetch(torrent, out, "-j", "2", "--web-seed", url)
    assert proc.returncode == 0, proc.stderr
    assert same_tree(out, case.payload.root)
    connected = [e for e in peer_lines(lines, url) if e["state"] == "connected"]
    assert connected and all(e["source"] == "webseed" for e in connected)
    assert lines[-1]["event"] == "done"


def test_multi_file_with_odd_names_and_padding_from_a_directory_url(tmp_path: Path) -> None:
    spec = {"a b/ü#1.bin": 3 * MiB + 7, "a b/%2e.txt": 100, "c/empty": 0, "z?.bin": 2 * MiB}
    case = multi_file_case(tmp_path / "src", spec, piece_length=256 * 1024, pad_files=True)
    assert any(f.padding for f in case.meta.files)  # BEP 47 pads: zeros no mirror serves
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(case.torrent)
    out = tmp_path / "out"
    with run_lighttpd(tmp_path / "src", "127.0.16.2") as httpd:
        proc, _lines = fetch(torrent, out, "-j", "2", "--web-seed", httpd.base)
    assert proc.returncode == 0, proc.stderr
    assert same_tree(out, case.payload.root)


def test_url_list_in_the_torrent_is_used(tmp_path: Path) -> None:
    import libtorrent as lt

    case = single_file_case(tmp_path / "src", size=3 * MiB)
    with run_lighttpd(tmp_path / "src", "127.0.16.3") as httpd:
        d = lt.bdecode(case.torrent)
        d[b"url-list"] = [httpd.base.encode()]  # a directory: + the torrent's name
        torrent = tmp_path / "t.torrent"
        torrent.write_bytes(lt.bencode(d))
        proc, _ = fetch(torrent, tmp_path / "out.bin")
    assert proc.returncode == 0, proc.stderr
    assert same_tree(tmp_path / "out.bin", case.payload.root)


def test_a_libtorrent_seeder_and_a_web_seed_are_both_used(tmp_path: Path) -> None:
    case = single_file_case(tmp_path / "src", size=16 * MiB, piece_length=64 * 1024)
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(case.torrent)
    result = tmp_path / "result.json"
    # Both capped near the same rate so that neither is done before the other starts.
    with (
        LtPeer(case.torrent, case.save_dir, ip="127.0.16.11", use_trackers=False,
               upload_rate_limit=4 * MiB) as seeder,
        run_lighttpd(tmp_path / "src", "127.0.16.12", rate_kib=4096) as httpd,
    ):  # fmt: skip
        url = httpd.url("payload.bin")
        proc, _ = fetch(torrent, tmp_path / "out.bin", "-j", "2", "--peer", str(seeder.addr),
                        "--web-seed", url, result=result)  # fmt: skip
        sent_by_seeder = seeder.stats().payload_upload
        seeder_addr = str(seeder.addr)
    assert proc.returncode == 0, proc.stderr
    assert same_tree(tmp_path / "out.bin", case.payload.root)
    per_peer = read_result(result).pieces_per_peer
    assert per_peer.get(url, 0) > 0, per_peer
    assert per_peer.get(seeder_addr, 0) > 0 and sent_by_seeder > 0, per_peer


def test_a_good_mirror_next_to_one_that_has_nothing(tmp_path: Path) -> None:
    case = single_file_case(tmp_path / "src", size=6 * MiB)
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(case.torrent)
    (tmp_path / "empty").mkdir()
    with (
        run_lighttpd(tmp_path / "empty", "127.0.16.21") as broken,
        run_lighttpd(tmp_path / "src", "127.0.16.22", rate_kib=4096) as good,  # lasts ~1.5 s
    ):
        bad_url = broken.url("payload.bin")  # 404 for everything
        good_url = good.url("payload.bin")
        proc, lines = fetch(
            torrent, tmp_path / "out.bin", "-j", "2", "--web-seed", bad_url, "--web-seed", good_url
        )
    assert proc.returncode == 0, proc.stderr
    assert same_tree(tmp_path / "out.bin", case.payload.root)
    # the broken one came up (TCP), failed its first request (404) and went away to back off
    assert "gone" in {e["state"] for e in peer_lines(lines, bad_url)}


def test_only_a_mirror_that_has_nothing_fails_in_bounded_time(tmp_path: Path) -> None:
    case = single_file_case(tmp_path / "src", size=1 * MiB)
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(case.torrent)
    (tmp_path / "empty").mkdir()
    with run_lighttpd(tmp_path / "empty", "127.0.16.23") as broken:
        proc, lines = fetch(torrent, tmp_path / "out.bin", "--web-seed", broken.url("x.bin"),
                            "--stall-timeout", "4")  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert lines[-1]["event"] == "error" and "stalled" in lines[-1]["message"]


def test_https_web_seed_with_a_verified_certificate(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is not installed (./scripts/test installs it)"
    tls = tmp_path / "tls"
    tls.mkdir()
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(tls / "key.pem"), "-out", str(tls / "cert.pem"), "-days", "2",
         "-subj", "/CN=127.0.16.31", "-addext", "subjectAltName=IP:127.0.16.31"],
        check=True, capture_output=True,
    )  # fmt: skip
    case = single_file_case(tmp_path / "src", size=4 * MiB)
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(case.torrent)
    with run_lighttpd(tmp_path / "src", "127.0.16.31", tls=tls) as httpd:
        url = httpd.url("payload.bin")
        assert url.startswith("https://")
        # not trusted: the certificate check fails, named; the mirror is dropped
        proc, lines = fetch(torrent, tmp_path / "untrusted.bin", "--web-seed", url,
                            "--stall-timeout", "3")  # fmt: skip
        assert proc.returncode == 1
        (banned,) = {e["reason"] for e in peer_lines(lines, url) if e["state"] == "banned"}
        assert banned.startswith("web seed tls-error: TLS certificate check failed"), banned
        # trusted the way the system store would trust a real CA
        proc, _ = fetch(torrent, tmp_path / "out.bin", "-j", "2", "--web-seed", url,
                        env={"SSL_CERT_FILE": str(tls / "cert.pem")})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert same_tree(tmp_path / "out.bin", case.payload.root)


def test_a_magnet_ws_is_used_once_the_metadata_is_known(tmp_path: Path) -> None:
    from mptorrent.proto.magnet import Magnet

    case = single_file_case(tmp_path / "src", size=6 * MiB)
    result = tmp_path / "result.json"
    # the seeder gives the metadata and little else: the web seed does the bulk
    with (
        LtPeer(case.torrent, case.save_dir, ip="127.0.16.51", use_trackers=False,
               upload_rate_limit=256 * 1024) as seeder,
        run_lighttpd(tmp_path / "src", "127.0.16.52") as httpd,
    ):  # fmt: skip
        url = httpd.url("payload.bin")
        uri = Magnet(case.meta.info_hash, peers=(seeder.addr,), web_seeds=(url,)).to_uri()
        proc, lines = fetch(uri, tmp_path / "out.bin", "-j", "2", result=result)
    assert proc.returncode == 0, proc.stderr
    assert same_tree(tmp_path / "out.bin", case.payload.root)
    assert read_result(result).pieces_per_peer.get(url, 0) > 0
    assert any(e.get("source") == "webseed" for e in peer_lines(lines, url))


def test_the_python_api_takes_web_seeds(tmp_path: Path) -> None:
    import mptorrent

    case = single_file_case(tmp_path / "src", size=3 * MiB)
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(case.torrent)
    seen: list[object] = []
    with run_lighttpd(tmp_path / "src", "127.0.16.53") as httpd:
        res = mptorrent.fetch(
            torrent, tmp_path / "out.bin", workers=2, trackers=False, on_event=seen.append,
            web_seeds=[httpd.url("payload.bin")],
        )  # fmt: skip
        with pytest.raises(ValueError, match="is not a web seed: scheme 'ftp'"):
            mptorrent.fetch(torrent, tmp_path / "o2", trackers=False, web_seeds=["ftp://h/x"])
    assert res.bytes == case.meta.total_length
    assert same_tree(tmp_path / "out.bin", case.payload.root)
    assert any(getattr(e, "source", None) == "webseed" for e in seen)


def test_a_host_name_is_looked_up_without_blocking(tmp_path: Path) -> None:
    case = single_file_case(tmp_path / "src", size=2 * MiB)
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(case.torrent)
    with run_lighttpd(tmp_path / "src", "127.0.0.1") as httpd:
        url = f"http://localhost:{httpd.port}/payload.bin"
        proc, lines = fetch(torrent, tmp_path / "out.bin", "--web-seed", url)
    assert proc.returncode == 0, proc.stderr
    assert same_tree(tmp_path / "out.bin", case.payload.root)
    assert peer_lines(lines, url)
