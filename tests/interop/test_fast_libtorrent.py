"""BEP 6, the fast extension, against real libtorrent and the real `mptorrent seed`.

What each side puts on the wire is checked with a raw client: a socket driven by our own
``wire.Connection`` with the fast bit set (the simplest exact check, and independent of
libtorrent's API).  libtorrent seeders greet it with HaveAll and an Allowed Fast set that
must be the one BEP 6 defines (``proto.fast.allowed_fast_set``); `mptorrent seed` greets it
with HaveAll and its own Allowed Fast set, serves those pieces to it while it stays choked,
and answers every request it does not serve with a RejectRequest (choked, cancelled, or
queued when it chokes).  Whole transfers run both ways with the bit on, and `mptorrent
fetch` takes the pieces a choking libtorrent seed allowed it fast.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import libtorrent as lt
import pytest

from mptorrent.proto import wire
from mptorrent.proto.fast import allowed_fast_set
from mptorrent.proto.metainfo import Metainfo
from mptorrent.worker.upload import ALLOWED_FAST_SENT
from tests.interop.test_seed import mptorrent_seed
from tests.swarm import (
    LtPeer,
    Swarm,
    TorrentCase,
    run_lt_leecher,
    same_tree,
    single_file_case,
    write_torrent,
)

pytestmark = pytest.mark.interop

IpSource = Callable[[], str]
PEER_ID = b"-RW0001-" + b"fastfastfast"


class RawClient:
    """A plain BitTorrent client on one socket: our sans-IO ``wire.Connection`` with the fast
    bit set, no extensions, nothing sent unless the test says so."""

    def __init__(self, sock: socket.socket, meta: Metainfo) -> None:
        self.sock = sock
        self.conn = wire.Connection(
            meta.info_hash, meta.num_pieces, meta.piece_length, meta.total_length
        )
        self.got: list[wire.Event] = []  # every event so far, blocks copied

    def send(self, *events: wire.Event) -> None:
        self.sock.sendall(b"".join(self.conn.send(ev) for ev in events))

    def send_requests(self, keys: list[tuple[int, int, int]]) -> None:
        self.sock.sendall(self.conn.send_requests(keys))

    def read_until(
        self, done: Callable[[list[wire.Event]], bool], timeout: float = 10.0
    ) -> list[wire.Event]:
        """Read until ``done(self.got)``; the events read by this call."""
        start = len(self.got)
        deadline = time.monotonic() + timeout
        while not done(self.got):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"waited {timeout} s; got {self.got[start:][-10:]}")
            self.sock.settimeout(left)
            view = self.conn.get_buffer()
            n = self.sock.recv_into(view)
            view.release()
            if n == 0:
                raise ConnectionError(f"closed by the peer; got {self.got[start:][-10:]}")
            self.conn.buffer_updated(n)
            while (ev := self.conn.next_event()) is not wire.NEED_DATA:
                if isinstance(ev, wire.Piece):
                    ev = wire.Piece(ev.index, ev.begin, bytes(ev.block))
                self.got.append(ev)
        return self.got[start:]

    def linger(self, seconds: float) -> list[wire.Event]:
        """Everything that arrives in the next ``seconds``."""
        end = time.monotonic() + seconds
        try:
            return self.read_until(lambda _got: time.monotonic() >= end, timeout=seconds + 1)
        except TimeoutError:
            return []


@contextmanager
def raw_client(addr: tuple[str, int], meta: Metainfo, ip: str) -> Iterator[RawClient]:
    with socket.create_connection((addr[0], addr[1]), timeout=10, source_address=(ip, 0)) as sock:
        client = RawClient(sock, meta)
        client.send(wire.Handshake(meta.info_hash, PEER_ID, wire.FAST_RESERVED))
        hs = client.read_until(lambda got: len(got) >= 1)[0]
        assert isinstance(hs, wire.Handshake) and hs.fast, hs
        assert client.conn.fast_enabled
        yield client


def is_piece_state(ev: wire.Event) -> bool:
    return isinstance(ev, (wire.Bitfield, wire.HaveAll, wire.HaveNone, wire.Have))


def first_piece_state(client: RawClient) -> wire.Event:
    client.read_until(lambda got: any(is_piece_state(e) for e in got))
    return next(e for e in client.got if is_piece_state(e))


def blocks(meta: Metainfo, pieces: range) -> list[tuple[int, int, int]]:
    out = []
    for index in pieces:
        size = min(meta.piece_length, meta.total_length - index * meta.piece_length)
        out += [(index, b, min(wire.BLOCK_SIZE, size - b)) for b in range(0, size, wire.BLOCK_SIZE)]
    return out


def answered(key: tuple[int, int, int]) -> Callable[[wire.Event], bool]:
    def match(ev: wire.Event) -> bool:
        if isinstance(ev, wire.RejectRequest):
            return (ev.index, ev.begin, ev.length) == key
        if isinstance(ev, wire.Piece):
            return (ev.index, ev.begin, len(ev.block)) == key
        return False

    return match


def answers(events: list[wire.Event]) -> list[tuple[str, tuple[int, int, int]]]:
    out: list[tuple[str, tuple[int, int, int]]] = []
    for ev in events:
        if isinstance(ev, wire.RejectRequest):
            out.append(("reject", (ev.index, ev.begin, ev.length)))
        elif isinstance(ev, wire.Piece):
            out.append(("piece", (ev.index, ev.begin, len(ev.block))))
    return out


# -- libtorrent seeds --------------------------------------------------------------------


def test_libtorrent_seed_sends_have_all(
    lt_swarm: Swarm, single_case: TorrentCase, fresh_ip: IpSource
) -> None:
    with raw_client(lt_swarm.addrs[0], single_case.meta, fresh_ip()) as client:
        client.send(wire.HaveNone())
        assert first_piece_state(client) == wire.HaveAll()
        assert client.conn.peer_is_seed


def test_libtorrent_allowed_fast_is_accepted_and_kept(
    multi_case: TorrentCase, fresh_ip: IpSource
) -> None:
    """libtorrent's high-performance seed sends no Allowed Fast (allowed_fast_set_size 0);
    with libtorrent's default size it sends five, which we take and keep.

    They are BEP 6's chain over the peer's *full* address: libtorrent leaves out the /24
    mask for peers on a local network (seen here on loopback), so they differ from
    ``proto.fast.allowed_fast_set``, which masks as BEP 6 says.  Only the sender computes
    its set, so this costs no interoperability.
    """
    meta = multi_case.meta
    ip = fresh_ip()
    with LtPeer(
        multi_case.torrent, multi_case.save_dir, ip=fresh_ip(), use_trackers=False,
        settings={"allowed_fast_set_size": 5},
    ) as seeder, raw_client(seeder.addr, meta, ip) as client:  # fmt: skip
        client.send(wire.HaveNone(), wire.Interested())
        client.read_until(lambda got: sum(isinstance(e, wire.AllowedFast) for e in got) >= 5)
        allowed = [ev.index for ev in client.got if isinstance(ev, wire.AllowedFast)]
        assert len(set(allowed)) == 5 and all(0 <= i < meta.num_pieces for i in allowed)
        assert client.conn.allowed_fast == set(allowed)
        assert allowed == lt_local_allowed_fast(ip, meta.info_hash, meta.num_pieces, 5)


def lt_local_allowed_fast(ip: str, info_hash: bytes, num_pieces: int, k: int) -> list[int]:
    """libtorrent's Allowed Fast set for a peer on a local network: BEP 6's chain over the
    peer's full IPv4 address (no /24 mask)."""
    key = bytes(map(int, ip.split("."))) + info_hash
    out: list[int] = []
    while len(out) < k:
        key = hashlib.sha1(key).digest()
        for j in range(0, 20, 4):
            index = int.from_bytes(key[j : j + 4], "big") % num_pieces
            if index not in out and len(out) < k:
                out.append(index)
    return out


def test_fetch_takes_the_pieces_a_choking_libtorrent_seed_allowed_fast(
    tmp_path: Path, fresh_ip: IpSource
) -> None:
    """A libtorrent seed that never unchokes us (no unchoke slots, and loopback peers made
    to count against them) but allows five pieces fast: `mptorrent fetch` asks for exactly
    those while choked, gets and verifies them, and nothing else."""
    case = single_file_case(tmp_path / "small", 8 * 64 * 1024 - 1000, 64 * 1024)
    meta = case.meta
    torrent = write_torrent(tmp_path, case.torrent)
    our_ip = fresh_ip()
    allowed = lt_local_allowed_fast(our_ip, meta.info_hash, meta.num_pieces, 5)
    never = {"unchoke_slots_limit": 0, "num_optimistic_unchoke_slots": 0,
             "optimistic_unchoke_interval": 3600, "unchoke_interval": 3600}  # fmt: skip
    with LtPeer(
        case.torrent, case.save_dir, ip=fresh_ip(), use_trackers=False,
        settings={"allowed_fast_set_size": 5, **never},
    ) as seeder:  # fmt: skip
        ses = seeder._ses
        local = ses.get_peer_class(ses.local_peer_class_id)
        local["ignore_unchoke_slots"] = False  # else loopback peers are always unchoked
        ses.set_peer_class(ses.local_peer_class_id, local)
        out = tmp_path / "out.bin"
        proc = subprocess.Popen(
            [sys.executable, "-m", "mptorrent", "fetch", str(torrent), "-o", str(out), "-q",
             "-j", "1", "--no-trackers", "--no-dht", "--bind", our_ip, "--port", "0",
             "--peer", f"{seeder.addr[0]}:{seeder.addr[1]}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            want = sum(meta.piece_size(i) for i in allowed)
            deadline = time.monotonic() + 30
            sent = 0
            while time.monotonic() < deadline:
                infos = [p for p in seeder.handle.get_peer_info() if p.ip[0] == our_ip]
                assert all(p.flags & lt.peer_info.choked for p in infos)  # choked throughout
                sent = sum(p.total_upload for p in infos)
                if sent >= want:
                    break
                time.sleep(0.1)
            time.sleep(0.5)  # room for anything more it would send
            infos = [p for p in seeder.handle.get_peer_info() if p.ip[0] == our_ip]
            assert infos and all(p.flags & lt.peer_info.choked for p in infos)
            assert sum(p.total_upload for p in infos) == want
            assert proc.poll() is None  # the rest never came
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err[-2000:]
    data = out.read_bytes()
    got = {
        i
        for i in range(meta.num_pieces)
        if hashlib.sha1(data[i * meta.piece_length : i * meta.piece_length + meta.piece_size(i)])
        .digest() == meta.piece_hash(i)
    }  # fmt: skip
    assert got == set(allowed)


def test_fetch_from_libtorrent_seeds_with_the_fast_extension(
    lt_swarm: Swarm, single_case: TorrentCase, tmp_path: Path
) -> None:
    torrent = write_torrent(tmp_path, single_case.torrent)
    out = tmp_path / "out.bin"
    peers = [arg for a in lt_swarm.addrs for arg in ("--peer", f"{a[0]}:{a[1]}")]
    proc = subprocess.run(
        [sys.executable, "-m", "mptorrent", "fetch", str(torrent), "-o", str(out), "-q",
         "-j", "2", "--no-trackers", "--no-dht", *peers],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert same_tree(out, single_case.payload.root)


# -- `mptorrent seed` ----------------------------------------------------------------------


def test_mptorrent_seed_sends_have_all_and_libtorrent_downloads(
    multi_case: TorrentCase, tmp_path: Path, fresh_ip: IpSource
) -> None:
    meta = multi_case.meta
    torrent = write_torrent(tmp_path, multi_case.torrent)
    with mptorrent_seed(torrent, multi_case.payload.root, fresh_ip(), "--no-trackers") as seed:
        with raw_client(seed.addr, meta, fresh_ip()) as client:
            assert first_piece_state(client) == wire.HaveAll()
            assert client.conn.peer_is_seed
        run_lt_leecher(multi_case.torrent, tmp_path / "lt", [seed.addr], ip=fresh_ip(), timeout=60)
        status, err = seed.interrupt()
    assert same_tree(multi_case.payload.root, tmp_path / "lt" / multi_case.payload.root.name)
    assert status == 130, err


def test_mptorrent_seed_rejects_what_it_will_not_serve(
    multi_case: TorrentCase, tmp_path: Path, fresh_ip: IpSource
) -> None:
    """Every request gets exactly one answer (BEP 6): a block, or a reject when we are
    choked, when we cancel it, or when the seed chokes us with it still queued."""
    meta = multi_case.meta
    torrent = write_torrent(tmp_path, multi_case.torrent)
    everything = blocks(meta, range(meta.num_pieces))
    with mptorrent_seed(torrent, multi_case.payload.root, fresh_ip(), "--no-trackers") as seed:
        ip = fresh_ip()
        with raw_client(seed.addr, meta, ip) as client:
            first_piece_state(client)
            # Choked: refused at once (a piece outside the set it allowed us fast).
            fast = set(allowed_fast_set(ip, meta.info_hash, meta.num_pieces, ALLOWED_FAST_SENT))
            key = next(k for k in everything if k[0] not in fast)
            # (our wire refuses to ask a choking peer: record it and send the bytes ourselves)
            client.conn.ledger.record([key])
            client.sock.sendall(struct.pack(">IBIII", 13, 6, *key))
            assert answers(client.read_until(lambda got: answered(key)(got[-1]))) == [
                ("reject", key)
            ]
            # Unchoked: served; and a cancel is answered by the block or a reject.
            client.send(wire.Interested())
            client.read_until(lambda got: isinstance(got[-1], wire.Unchoke))
            rest = [k for k in everything if k != key]
            client.send_requests(rest[0:2])
            client.send(wire.Cancel(*rest[1]))
            # The answer to a cancelled request (block or reject) is dropped by our wire
            # without an event, once: the key leaves the ledger's cancelled set.
            cancelled = client.conn.ledger.cancelled
            got = client.read_until(
                lambda got: rest[1] not in cancelled and answered(rest[0])(got[-1])
            )
            assert answers(got) == [("piece", rest[0])]
            # Many requests, then NotInterested: the seed chokes us with most still queued,
            # and rejects each of them after its Choke.
            many = rest[2:]
            client.send_requests(many)
            client.send(wire.NotInterested())
            got = client.read_until(lambda got: client.conn.outstanding_requests == 0, timeout=20)
            assert wire.Choke() in got
            after_choke = got[got.index(wire.Choke()) :]
            rejected = [k for kind, k in answers(after_choke) if kind == "reject"]
            assert rejected, answers(got)[:5]
            assert all(kind == "reject" for kind, _ in answers(after_choke))
            # exactly one answer per request
            assert sorted(k for _, k in answers(got)) == sorted(many)
        status, err = seed.interrupt()
    assert status == 130, err


def test_mptorrent_seed_serves_a_choked_peer_the_pieces_it_allowed_fast(
    multi_case: TorrentCase, tmp_path: Path, fresh_ip: IpSource
) -> None:
    """A peer that never says Interested stays choked.  `mptorrent seed -j 1` sends it BEP 6's
    Allowed Fast set for its address (``ALLOWED_FAST_SENT`` pieces, all of them here: a seed
    has everything), serves those pieces exactly while it stays choked, and rejects the rest."""
    meta = multi_case.meta
    torrent = write_torrent(tmp_path, multi_case.torrent)
    ip = fresh_ip()
    expected = allowed_fast_set(ip, meta.info_hash, meta.num_pieces, ALLOWED_FAST_SENT)
    assert len(expected) == ALLOWED_FAST_SENT
    with mptorrent_seed(
        torrent, multi_case.payload.root, fresh_ip(), "--no-trackers", jobs=1
    ) as seed:
        with raw_client(seed.addr, meta, ip) as client:
            client.send(wire.HaveNone())
            client.read_until(
                lambda got: sum(isinstance(e, wire.AllowedFast) for e in got) >= len(expected)
            )
            allowed = [e.index for e in client.got if isinstance(e, wire.AllowedFast)]
            assert allowed == expected  # in BEP 6's order, each once
            assert client.conn.peer_choking
            wanted = blocks(meta, range(0))
            for index in allowed:
                wanted += blocks(meta, range(index, index + 1))
            other = next(i for i in range(meta.num_pieces) if i not in allowed)
            # Our wire lets a choked client ask only for allowed-fast pieces: send the
            # one outside the set by hand, recorded so that its reject is expected.
            refused = blocks(meta, range(other, other + 1))[0]
            client.send_requests(wanted)
            client.conn.ledger.record([refused])
            client.sock.sendall(struct.pack(">IBIII", 13, 6, *refused))
            got = client.read_until(lambda got: client.conn.outstanding_requests == 0, timeout=20)
            assert sorted(k for kind, k in answers(got) if kind == "piece") == sorted(wanted)
            assert [k for kind, k in answers(got) if kind == "reject"] == [refused]
            assert not any(isinstance(e, wire.Unchoke) for e in client.got)  # choked throughout
            pieces: dict[int, bytearray] = {i: bytearray(meta.piece_size(i)) for i in allowed}
            for ev in got:
                if isinstance(ev, wire.Piece):
                    pieces[ev.index][ev.begin : ev.begin + len(ev.block)] = ev.block
            for index, data in pieces.items():
                assert hashlib.sha1(data).digest() == meta.piece_hash(index)
        status, err = seed.interrupt()
    assert status == 130, err
