"""The BEP 5 ``port`` message between mptorrent and libtorrent (issue 15), loopback only.

Each libtorrent session here has its DHT on (``dht_settings``) but knows no DHT node at all,
and mptorrent's DHT bootstraps from an address where nothing listens: the only way either
DHT can hear of the other is the ``port`` message their peer connection carries.

* a fetch (the coordinator's workers) from a libtorrent seed: libtorrent's DHT learns our
  node, and libtorrent is the one that opens the DHT conversation (it learned our port
  from the peer connection, not from a query of ours);
* an ``mptorrent seed`` (the seeder's workers, in this process so its DHT node can be
  inspected) dialled by a libtorrent leecher: our node is told libtorrent's DHT port and
  libtorrent's node enters our routing table.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

import mptorrent
from mptorrent.engine.seeder import Seeder
from mptorrent.proto.dht.routing import load_saved
from tests.swarm import KiB, LtPeer, dht_settings, dht_table_size, same_tree, single_file_case

lt = pytest.importorskip("libtorrent")
pytestmark = pytest.mark.interop

NET = "127.0.8"
NOWHERE = "127.0.0.1:1"  # a bootstrap node that never answers


def _lt_settings() -> dict[str, Any]:
    settings = dht_settings()
    settings["alert_mask"] |= lt.alert_category.dht_log  # every DHT datagram, both ways
    return settings


def _dht_packets(session: Any) -> list[str]:
    """libtorrent's log lines of the DHT datagrams since the last call (``==> [ip:port]``
    sent by it, ``<== [ip:port]`` received)."""
    return [a.message() for a in session.pop_alerts() if isinstance(a, lt.dht_pkt_alert)]


def test_libtorrent_learns_our_node_from_the_port_message_of_a_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    case = single_file_case(tmp_path / "data", 1024 * KiB + 5, 64 * KiB, seed=51)
    ours = f"{NET}.2"
    with LtPeer(case.torrent, case.save_dir, ip=f"{NET}.1", use_trackers=False,
                settings=_lt_settings()) as seed:  # fmt: skip
        _dht_packets(seed.session)
        assert dht_table_size(seed.session) == 0
        # seeding 2 s after the download: time for libtorrent to reach our node
        res = mptorrent.fetch(
            case.torrent, tmp_path / "out.bin", workers=1, peers=[seed.addr], trackers=False,
            dht_bootstrap=[NOWHERE], bind=ours, seed_time=2,
        )  # fmt: skip
        assert same_tree(tmp_path / "out.bin", case.payload.root) and res.peers_used == 1
        packets = [p for p in _dht_packets(seed.session) if f"[{ours}:" in p]
        assert packets, "libtorrent's DHT never talked to our node"
        assert packets[0].startswith("==>"), packets[:3]  # libtorrent spoke first
        assert dht_table_size(seed.session) == 1  # our node, the only one it could know


def test_our_seed_learns_the_libtorrent_node_from_its_port_message(tmp_path: Path) -> None:
    case = single_file_case(tmp_path / "data", 512 * KiB + 3, 32 * KiB, seed=52)
    seeder = Seeder(
        case.meta, case.payload.root, jobs=1, bind=f"{NET}.3", port=0, use_trackers=False,
        dht=True, dht_bootstrap=(("127.0.0.1", 1),),
    )  # fmt: skip
    thread = threading.Thread(target=seeder.run, daemon=True)
    thread.start()
    leech = None
    try:
        assert seeder.ready.wait(30)
        dht = seeder.dht
        assert dht is not None and dht.node is not None
        leech = LtPeer(case.torrent, tmp_path / "lt", ip=f"{NET}.4", role="leech",
                       use_trackers=False, settings=_lt_settings())  # fmt: skip
        leech.start()
        leech.add_peer(f"{NET}.3", seeder.stats.port)
        leech.wait_finished(60)
        their_node = (f"{NET}.4", leech.port)  # libtorrent's DHT shares its listen port
        deadline = time.monotonic() + 10
        # its port message reached our node (pinged, or known already: libtorrent may have
        # queried us first, having learnt our port the same way), and the node is in the table
        while not dht.node.table.knows(their_node) or not dht.node.introductions:
            assert time.monotonic() < deadline, (
                f"table {dht.node.table.entries()}, port messages {dht.node.introductions}"
            )
            time.sleep(0.1)
        assert set(dht.node.introductions) <= {"pinged", "known"}
        assert len(dht.node.table) == 1  # nothing else could be there
    finally:
        if leech is not None:
            leech.close()
        seeder.stop()
        thread.join(30)


def test_the_saved_table_holds_the_node_a_peer_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a fetch learnt by port messages is saved for the next run (no bootstrap needed)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    case = single_file_case(tmp_path / "data", 512 * KiB + 9, 32 * KiB, seed=53)
    with LtPeer(case.torrent, case.save_dir, ip=f"{NET}.5", use_trackers=False,
                settings=_lt_settings()) as seed:  # fmt: skip
        mptorrent.fetch(
            case.torrent, tmp_path / "out.bin", workers=1, peers=[seed.addr], trackers=False,
            dht_bootstrap=[NOWHERE], bind=f"{NET}.6", seed_time=2,
        )  # fmt: skip
        _own_id, nodes = load_saved((tmp_path / "cache" / "mptorrent" / "dht.dat").read_bytes())
        assert [n.addr for n in nodes] == [(f"{NET}.5", seed.port)]
