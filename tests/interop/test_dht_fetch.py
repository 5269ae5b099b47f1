"""fetch, seed and info through the DHT (issue 15), in a loopback DHT of libtorrent sessions.

Eight libtorrent sessions on 127.0.6.1-8 make the DHT: six only DHT nodes, two seeding a
torrent that lists no tracker.  Every session is introduced to every other one with
``add_dht_node``; once their tables are full the seeders announce (the first announce of a
torrent added before the table filled reaches nobody).  mptorrent is then given nothing but
the info-hash, or the tracker-less .torrent, and one of these nodes as ``--dht-bootstrap``.
Everything stays on 127.0.6.0/24; the root conftest's environment makes any other
destination an error.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mptorrent.messages import PeerAddr
from mptorrent.netio.dht import Dht
from mptorrent.proto.magnet import Magnet
from tests.swarm import (
    KiB,
    LtDhtNode,
    LtPeer,
    TorrentCase,
    dht_mesh,
    dht_settings,
    dht_table_size,
    same_tree,
    single_file_case,
    write_torrent,
)

lt = pytest.importorskip("libtorrent")
pytestmark = pytest.mark.interop

NET = "127.0.6"
SIZE = 3 * 1024 * KiB + 12_345
TIMEOUT = 90


@dataclass
class LoopbackDht:
    """The DHT: its nodes, the two seeders and the torrent they seed."""

    nodes: list[LtDhtNode]
    seeders: list[LtPeer]
    case: TorrentCase
    torrent: Path

    @property
    def bootstrap(self) -> str:
        host, port = self.nodes[0].addr
        return f"{host}:{port}"

    @property
    def sessions(self) -> list[Any]:
        return [n.session for n in self.nodes] + [s.session for s in self.seeders]

    @property
    def addrs(self) -> list[tuple[str, int]]:
        return [n.addr for n in self.nodes] + [(s.ip, s.port) for s in self.seeders]


def _lt_finds(session: Any, info_hash: bytes, want: set[PeerAddr], seconds: float) -> bool:
    """A libtorrent node's get_peers of ``info_hash`` returns every peer in ``want``."""
    found: set[PeerAddr] = set()
    deadline = time.monotonic() + seconds
    asked = 0.0
    while time.monotonic() < deadline:
        if time.monotonic() - asked > 2:
            asked = time.monotonic()
            session.dht_get_peers(lt.sha1_hash(info_hash))
        for a in session.pop_alerts():
            if isinstance(a, lt.dht_get_peers_reply_alert):
                found.update(PeerAddr(str(h), int(p)) for h, p in a.peers())
        if want <= found:
            return True
        time.sleep(0.1)
    return False


def fill_tables(sessions: list[Any], addrs: list[tuple[str, int]], seconds: float = 30) -> None:
    dht_mesh(sessions, addrs)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(dht_table_size(s) >= len(addrs) // 2 for s in sessions):
            return
        dht_mesh(sessions, addrs)  # nodes that were still starting
        time.sleep(0.5)
    raise AssertionError("the loopback DHT's routing tables did not fill")


@pytest.fixture(scope="module")
def loopback_dht(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackDht]:
    tmp = tmp_path_factory.mktemp("dht")
    case = single_file_case(tmp / "data", SIZE, 64 * KiB)
    nodes = [LtDhtNode(f"{NET}.{i}") for i in range(1, 7)]
    seeders = [
        LtPeer(case.torrent, case.save_dir, ip=f"{NET}.{i}", use_trackers=False,
               settings=dht_settings())
        for i in (7, 8)
    ]  # fmt: skip
    try:
        for s in seeders:
            s.start()
        net = LoopbackDht(nodes, seeders, case, write_torrent(tmp, case.torrent))
        fill_tables(net.sessions, net.addrs)
        for s in seeders:
            s.handle.force_dht_announce()
        want = {s.addr for s in seeders}
        assert _lt_finds(nodes[-1].session, case.meta.info_hash, want, 30), "announces lost"
        yield net
    finally:
        for s in seeders:
            s.close()
        for n in nodes:
            n.close()


def mptorrent(*args: str | Path, cache: Path) -> list[str]:
    del cache
    return [sys.executable, "-m", "mptorrent", *map(str, args)]


def run(args: list[str], cache: Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    return subprocess.run(
        args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, env=env
    )


def magnet(case: TorrentCase) -> str:
    return Magnet(case.meta.info_hash).to_uri()  # nothing but xt


def test_fetch_a_bare_magnet_through_the_dht(loopback_dht: LoopbackDht, tmp_path: Path) -> None:
    net, out, cache = loopback_dht, tmp_path / "out", tmp_path / "cache"
    uri = magnet(net.case)
    assert "&" not in uri
    proc = run(
        mptorrent("fetch", uri, "-o", out, "-q", "-j", "2", "--bind", f"{NET}.20", "--port", "0",
                  "--dht-bootstrap", net.bootstrap, cache=cache),
        cache,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert same_tree(out, net.case.payload.root)
    assert (cache / "mptorrent" / "dht.dat").stat().st_size > 20  # the table was saved


def test_fetch_a_trackerless_torrent_then_again_from_the_saved_table(
    loopback_dht: LoopbackDht, tmp_path: Path
) -> None:
    net, cache = loopback_dht, tmp_path / "cache"
    assert not net.case.meta.trackers
    first = run(
        mptorrent("fetch", net.torrent, "-o", tmp_path / "one", "-q", "--bind", f"{NET}.21",
                  "--port", "0", "--dht-bootstrap", net.bootstrap, cache=cache),
        cache,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    assert same_tree(tmp_path / "one", net.case.payload.root)
    # No bootstrap: the built-in routers are 127.0.0.1:1 here (conftest), so only the
    # table the first run saved can lead to the seeders.
    assert os.environ["MPTORRENT_DHT_ROUTERS"] == "127.0.0.1:1"
    second = run(
        mptorrent("fetch", magnet(net.case), "-o", tmp_path / "two", "-q", "--bind",
                  f"{NET}.22", "--port", "0", cache=cache),
        cache,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert same_tree(tmp_path / "two", net.case.payload.root)


def test_seed_is_found_through_the_dht_by_libtorrent(
    loopback_dht: LoopbackDht, tmp_path: Path
) -> None:
    net, cache = loopback_dht, tmp_path / "cache"
    case = single_file_case(tmp_path / "data", 1024 * KiB + 7, 64 * KiB, seed=15)
    torrent = write_torrent(tmp_path, case.torrent)
    ours = f"{NET}.23"
    seeder = subprocess.Popen(
        mptorrent("seed", torrent, case.payload.root, "-j", "1", "--bind", ours, "--port", "0",
                  "--dht-bootstrap", net.bootstrap, "--json", cache=cache),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "XDG_CACHE_HOME": str(cache)},
    )  # fmt: skip
    client_ip = f"{NET}.24"
    client: Any = None
    try:
        assert seeder.stdout is not None
        for line in seeder.stdout:  # verified and listening
            if '"ready"' in line:
                break
        else:
            raise AssertionError(seeder.stderr.read() if seeder.stderr else "seed ended")
        client = LtDhtNode(client_ip)
        client.session.add_dht_node(net.nodes[1].addr)
        atp = lt.parse_magnet_uri(magnet(case))
        atp.save_path = str(tmp_path / "lt")
        handle = client.session.add_torrent(atp)
        deadline = time.monotonic() + TIMEOUT
        while not handle.status().is_seeding:
            assert time.monotonic() < deadline, "libtorrent did not download from our seed"
            assert seeder.poll() is None, seeder.stderr.read() if seeder.stderr else ""
            time.sleep(0.2)
        assert same_tree(tmp_path / "lt" / case.meta.name, case.payload.root)
    finally:
        seeder.terminate()
        seeder.communicate(timeout=30)
        if client is not None:
            client.close()


def test_a_failing_tracker_no_longer_ends_the_fetch_with_the_dht_on(
    loopback_dht: LoopbackDht, tmp_path: Path
) -> None:
    """The same info dictionary (same info-hash) with a tracker that refuses: with --no-dht
    the fetch ends at once (exit 1, the tracker's error); with the DHT it goes on, finds the
    seeders there and completes."""
    from mptorrent.proto import bencode

    net, cache = loopback_dht, tmp_path / "cache"
    top = bencode.decode(net.case.torrent, max_size=len(net.case.torrent))
    assert isinstance(top, dict)
    top[b"announce"] = b"http://127.0.0.1:1/announce"
    torrent = tmp_path / "dead-tracker.torrent"
    torrent.write_bytes(bencode.encode(top))
    common = ["-q", "--port", "0"]
    alone = run(
        mptorrent("fetch", torrent, "-o", tmp_path / "no-dht", "--bind", f"{NET}.28", "--no-dht",
                  *common, cache=cache),
        cache, timeout=60,
    )  # fmt: skip
    assert alone.returncode == 1 and alone.stderr.startswith("mptorrent: error: no peers")
    proc = run(
        mptorrent("fetch", torrent, "-o", tmp_path / "out", "--bind", f"{NET}.29",
                  "--dht-bootstrap", net.bootstrap, *common, cache=cache),
        cache,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert same_tree(tmp_path / "out", net.case.payload.root)


def test_the_python_api_fetches_a_bare_magnet_through_the_dht(
    loopback_dht: LoopbackDht, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mptorrent.fetch(magnet, dht_bootstrap=[...])``: the API's DHT, as the CLI's."""
    import mptorrent
    from mptorrent import events as ev

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    net, out = loopback_dht, tmp_path / "out"
    seen: list[ev.Event] = []
    res = mptorrent.fetch(
        magnet(net.case), out, workers=2, bind=f"{NET}.27", dht_bootstrap=[net.bootstrap],
        on_event=seen.append,
    )  # fmt: skip
    assert same_tree(out, net.case.payload.root) and res.bytes == net.case.meta.total_length
    seeders = {s.addr for s in net.seeders}
    dialled = {e.peer for e in seen if isinstance(e, ev.PeerConnected) and e.source == "dht"}
    assert dialled and dialled <= seeders  # found through the DHT, nowhere else
    assert (tmp_path / "cache" / "mptorrent" / "dht.dat").stat().st_size > 20


def test_stall_timeout_ends_a_fetch_nobody_seeds(loopback_dht: LoopbackDht, tmp_path: Path) -> None:
    """The DHT answers but knows no peer: no tracker failure ends the fetch, the stall does."""
    case = single_file_case(tmp_path / "data", 100 * KiB, 16 * KiB, seed=99)
    torrent = write_torrent(tmp_path, case.torrent)
    cache = tmp_path / "cache"
    started = time.monotonic()
    proc = run(
        mptorrent("fetch", torrent, "-o", tmp_path / "out", "-q", "--bind", f"{NET}.26",
                  "--port", "0", "--dht-bootstrap", loopback_dht.bootstrap,
                  "--stall-timeout", "4", cache=cache),
        cache, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "stalled: no peer found for 4 s" in proc.stderr
    assert 4 <= time.monotonic() - started < 30


def test_the_dht_socket_refuses_non_loopback_destinations() -> None:
    """The net under every test: with MPTORRENT_LOOPBACK_ONLY (the root conftest sets it),
    a DHT datagram to a non-loopback address is an error, not a packet."""
    assert os.environ.get("MPTORRENT_LOOPBACK_ONLY") == "1"
    dht = Dht(bind="127.0.6.30", port=0, bootstrap=(("192.0.2.1", 6881),),
              on_peers=lambda _ih, _p: None, save=False)  # fmt: skip
    dht.start()
    assert dht.bootstrapped.wait(5)
    with pytest.raises(Exception, match="refused"):
        dht.stop()


def test_a_cli_fetch_aimed_at_a_public_node_fails(
    tmp_path: Path, loopback_dht: LoopbackDht
) -> None:
    cache = tmp_path / "cache"
    proc = run(
        mptorrent("fetch", loopback_dht.torrent, "-o", tmp_path / "out", "-q", "--bind",
                  f"{NET}.25", "--port", "0", "--dht-bootstrap", "192.0.2.1:6881", cache=cache),
        cache, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "refused" in proc.stderr, proc.stderr
