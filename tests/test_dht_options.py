"""The DHT's options as a fetch uses them (issue 15): on by default, ``--no-dht``, never for a
private torrent, ``--dht-port`` (default: the ``--port`` number, on UDP) and ``--bind``.

The "bootstrap node" is a UDP socket of ours on loopback: what reaches it, and from where,
is what the fetch's DHT node did.  The fetches go through the Python API (which the command
line calls, with the same defaults) and are cancelled once seen; each uses its own address
on 127.0.9.0/24.  ``--help`` is checked for the stall timeout's default.
"""

from __future__ import annotations

import hashlib
import select
import socket
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import mptorrent
from mptorrent.cli.main import cli
from mptorrent.disk.create import create
from mptorrent.proto.dht import krpc

PIECE = 16 * 1024
NOBODY = "127.0.0.1:1"  # a peer that refuses every connection


def torrent(tmp: Path, *, private: bool = False) -> bytes:
    data = tmp / "data.bin"
    data.write_bytes(hashlib.shake_256(b"test_dht_options").digest(3 * PIECE))
    return create(data, trackers=[], piece_length=PIECE, private=private, jobs=1)


def bootstrap_node(ip: str) -> socket.socket:
    """A UDP socket on the address beside ``ip`` (a node at our own address is never asked)."""
    a, b, c, d = ip.split(".")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((f"{a}.{b}.{c}.{int(d) + 100}", 0))
    return s


def free_port(ip: str) -> int:
    """A port free on ``ip`` for TCP and UDP (the fetch listens on one, its DHT the other)."""
    with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        t.bind((ip, 0))
        port: int = t.getsockname()[1]
        u.bind((ip, port))
        return port


def first_datagram(
    node: socket.socket, seconds: float
) -> tuple[krpc.Message, tuple[str, int]] | None:
    ready, _, _ = select.select([node], [], [], seconds)
    if not ready:
        return None
    data, src = node.recvfrom(65536)
    return krpc.decode(data), (src[0], src[1])


def fetch_and_listen(
    tmp: Path, node: socket.socket, seconds: float, source: bytes, *, bind: str, port: int = 0,
    dht: bool = True, dht_port: int | None = None,
) -> tuple[krpc.Message, tuple[str, int]] | None:  # fmt: skip
    """Start a fetch (one peer that refuses: it keeps trying), wait for what reaches
    ``node``, then cancel the fetch."""
    host, node_port = node.getsockname()
    handle = mptorrent.start(
        source, tmp / "out.bin", workers=1, peers=[NOBODY], trackers=False, bind=bind,
        port=port, dht=dht, dht_bootstrap=[f"{host}:{node_port}"], dht_port=dht_port,
    )  # fmt: skip
    try:
        return first_datagram(node, seconds)
    finally:
        handle.cancel()
        with pytest.raises(mptorrent.Cancelled):
            handle.wait(30)


def test_the_node_binds_to_bind_and_to_the_port_number_by_default(tmp_path: Path) -> None:
    ip = "127.0.9.1"
    node, port = bootstrap_node(ip), free_port(ip)
    got = fetch_and_listen(tmp_path, node, 10, torrent(tmp_path), bind=ip, port=port)
    assert got is not None, "the DHT (on by default) sent nothing"
    msg, src = got
    assert isinstance(msg, krpc.FindNode)  # the bootstrap: a find_node of our own id
    assert src == (ip, port)  # --bind, and the --port number on UDP


def test_dht_port_sets_the_nodes_udp_port(tmp_path: Path) -> None:
    ip = "127.0.9.2"
    node, dht_port = bootstrap_node(ip), free_port(ip)
    got = fetch_and_listen(
        tmp_path, node, 10, torrent(tmp_path), bind=ip, port=0, dht_port=dht_port
    )
    assert got is not None and got[1] == (ip, dht_port)


@pytest.mark.parametrize("case", ["no-dht", "private"])
def test_no_datagram_with_the_dht_off_or_for_a_private_torrent(tmp_path: Path, case: str) -> None:
    ip = "127.0.9.3" if case == "no-dht" else "127.0.9.4"
    node = bootstrap_node(ip)
    started = time.monotonic()
    got = fetch_and_listen(
        tmp_path, node, 2, torrent(tmp_path, private=case == "private"), bind=ip,
        dht=case != "no-dht",
    )  # fmt: skip
    assert got is None and time.monotonic() - started >= 2


def test_help_states_the_stall_timeout_default_and_the_dht_options() -> None:
    out = CliRunner().invoke(cli, ["fetch", "--help"], terminal_width=200).output
    assert "--stall-timeout" in out and "default: 300" in out
    for option in ("--no-dht", "--dht-bootstrap", "--dht-port"):
        assert option in out


def test_a_bare_magnet_whose_dht_bootstrap_never_answers_says_so(tmp_path: Path) -> None:
    """Nothing but the DHT, and no node answers the first bootstrap: exit 1 after that
    bootstrap's time-out (QUERY_TIMEOUT), not the stall timeout, in words that name the DHT."""
    from mptorrent.proto.dht.lookup import QUERY_TIMEOUT
    from mptorrent.proto.magnet import Magnet

    silent = bootstrap_node("127.0.9.5")  # bound, never answers
    host, port = silent.getsockname()
    started = time.monotonic()
    with pytest.raises(mptorrent.MptorrentError) as caught:
        mptorrent.fetch(
            Magnet(bytes(range(20))).to_uri(), tmp_path / "out", workers=1, bind="127.0.9.5",
            dht_bootstrap=[f"{host}:{port}"],
        )  # fmt: skip
    assert caught.value.exit_code == 1
    assert str(caught.value).endswith("; no DHT node answered"), caught.value
    assert QUERY_TIMEOUT <= time.monotonic() - started < QUERY_TIMEOUT + 10
    assert first_datagram(silent, 0)  # it was asked
    assert not list(tmp_path.glob("out*"))
