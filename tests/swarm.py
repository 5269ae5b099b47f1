"""Loopback swarms of real libtorrent peers, for interop tests and benchmarks.

Each peer is its own libtorrent session bound to its own 127.x address, so trackers and our
client see distinct peers.  Test torrents are made by libtorrent, not by our code, so a bug in
our writer cannot hide a matching bug in our reader.

    case = single_file_case(tmp_dir)                  # 40 MiB file + libtorrent .torrent
    with Swarm(case.torrent, case.save_dir) as swarm: # seeders on 127.0.0.11, .12, .13
        ... our client downloads from swarm.addrs ...
        secs = run_lt_leecher(case.torrent, other_dir, swarm.addrs)   # the yardstick

Benchmark scripts can import this module once the repository root is on sys.path.
Every libtorrent session here has LSD, UPnP, NAT-PMP and the DHT off and listens and
dials on its own loopback address only: a test must never reach outside this machine, and
two peers on one address would look like one peer to a tracker.  The settings and their
reasons are in ``session_settings``.
"""

from __future__ import annotations

import filecmp
import functools
import hashlib
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import libtorrent as lt

from mptorrent.messages import PeerAddr
from mptorrent.proto import metainfo
from mptorrent.proto.metainfo import Metainfo

KiB = 1024
MiB = 1024 * KiB

Role = Literal["seed", "leech"]

# A tree with nested folders, a zero-length file and sizes that are not multiples of anything,
# so files start and end inside pieces.
DEFAULT_TREE: dict[str, int] = {
    "a.bin": 1 * MiB + 12_345,
    "docs/readme.txt": 1_000,
    "docs/empty.dat": 0,
    "media/season 1/ep1.mkv": 2 * MiB + 1,
    "media/season 1/ep2.mkv": 777_777,
    "media/cover.jpg": 65_536,
    "z/tiny": 1,
}

_STATES = lt.torrent_status.states
_CHECKING = {
    _STATES.queued_for_checking,
    _STATES.checking_files,
    _STATES.checking_resume_data,
    _STATES.allocating,
}
_DONE = {_STATES.finished, _STATES.seeding}
_POLL = 0.02
_CLOSE_TRACKER_TIMEOUT = 1


class SwarmError(RuntimeError):
    """A libtorrent peer could not be started or did not reach the expected state."""


# -- payloads and torrents ------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    root: Path  # the file (single-file) or top folder (multi-file): what make_torrent takes
    files: tuple[Path, ...]  # every data file, in the order of the spec

    @property
    def save_dir(self) -> Path:
        """The folder to give a client as its download/save path."""
        return self.root.parent


def make_payload(
    directory: str | Path,
    spec: int | Mapping[str, int],
    *,
    name: str | None = None,
    seed: int = 0,
) -> Payload:
    """Write random data: one file of ``spec`` bytes, or a tree of {relative path: size}.

    ``name`` is the file name (default ``payload.bin``) or the tree's top folder (default
    ``payload``).  The data is reproducible for a given ``seed``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(spec, int):
        root = directory / (name or "payload.bin")
        _write_random(root, spec, f"{seed}:")
        return Payload(root, (root,))
    root = directory / (name or "payload")
    files = []
    for rel, size in spec.items():
        parts = [p for p in rel.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise ValueError(f"bad relative path {rel!r} in payload spec")
        path = root.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_random(path, size, f"{seed}:{rel}")
        files.append(path)
    return Payload(root, tuple(files))


def make_single_file(
    directory: str | Path, size: int, *, name: str = "payload.bin", seed: int = 0
) -> Payload:
    return make_payload(directory, size, name=name, seed=seed)


def make_tree(
    directory: str | Path,
    spec: Mapping[str, int] | None = None,
    *,
    name: str = "payload",
    seed: int = 0,
) -> Payload:
    return make_payload(directory, DEFAULT_TREE if spec is None else spec, name=name, seed=seed)


def _write_random(path: Path, size: int, key: str) -> None:
    if size < 0:
        raise ValueError(f"negative size {size} for {path}")
    # SHAKE output is reproducible and about twice as fast as random.randbytes; every chunk
    # differs, so no two pieces share a hash.
    with open(path, "wb") as fh:
        chunk = 0
        left = size
        while left:
            n = min(left, 4 * MiB)
            fh.write(hashlib.shake_128(f"{key}:{chunk}".encode()).digest(n))
            left -= n
            chunk += 1


def make_torrent(
    path: str | Path,
    piece_length: int,
    trackers: list[list[str]] | None = None,
    pad_files: bool = False,
    *,
    private: bool = False,
    comment: str | None = None,
) -> bytes:
    """Make a v1 .torrent of a file or folder with libtorrent's own creator.

    ``trackers`` is a list of tiers.  Without ``pad_files`` the torrent has no BEP 47 padding;
    with it, libtorrent orders the files canonically and pads each to a piece boundary.
    """
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(path)
    flags = lt.create_torrent.v1_only
    if pad_files:
        flags |= lt.create_torrent.canonical_files
    # Directory listing order depends on the filesystem; sort so the same tree gives the same
    # torrent everywhere.
    entries = sorted(lt.list_files(str(path)), key=lambda e: e.filename)
    ct = lt.create_torrent(entries, piece_length, flags)
    for tier, urls in enumerate(trackers or []):
        for url in urls:
            ct.add_tracker(url, tier)
    if private:
        ct.set_priv(True)
    if comment:
        ct.set_comment(comment)
    ct.set_creator(f"libtorrent {lt.__version__}")
    lt.set_piece_hashes(ct, str(path.parent))
    return lt.bencode(ct.generate())


def info_hash(torrent: bytes) -> bytes:
    """The v1 info-hash, as libtorrent computes it."""
    return bytes(lt.torrent_info(torrent).info_hashes().v1.to_bytes())


def num_pieces(torrent: bytes) -> int:
    return int(lt.torrent_info(torrent).num_pieces())


def write_torrent(directory: Path, torrent: bytes, name: str = "case.torrent") -> Path:
    """Put a .torrent where a client under test can be pointed at it."""
    path = directory / name
    path.write_bytes(torrent)
    return path


@dataclass(frozen=True)
class TorrentCase:
    """A payload on disk and a libtorrent-made .torrent of it."""

    torrent: bytes
    payload: Payload

    @property
    def save_dir(self) -> Path:
        return self.payload.save_dir

    @functools.cached_property
    def meta(self) -> Metainfo:
        """The torrent as our own parser reads it."""
        return metainfo.parse(self.torrent)


# 160 pieces of 256 KiB, the last one short (184_367 bytes).
SINGLE_SIZE = 40 * MiB - 77_777


def single_file_case(
    directory: str | Path,
    size: int = SINGLE_SIZE,
    piece_length: int = 256 * KiB,
    trackers: list[list[str]] | None = None,
    *,
    seed: int = 0,
) -> TorrentCase:
    payload = make_single_file(Path(directory), size, seed=seed)
    return TorrentCase(make_torrent(payload.root, piece_length, trackers), payload)


def multi_file_case(
    directory: str | Path,
    spec: Mapping[str, int] | None = None,
    piece_length: int = 64 * KiB,
    trackers: list[list[str]] | None = None,
    pad_files: bool = False,
    *,
    seed: int = 0,
) -> TorrentCase:
    payload = make_tree(Path(directory), spec, seed=seed)
    return TorrentCase(make_torrent(payload.root, piece_length, trackers, pad_files), payload)


def same_tree(a: str | Path, b: str | Path) -> bool:
    """True when two files, or two folders' files and sub-folders, are byte-identical."""
    a, b = Path(a), Path(b)
    if a.is_file() or b.is_file():
        return a.is_file() and b.is_file() and filecmp.cmp(a, b, shallow=False)
    names_a = sorted(p.relative_to(a) for p in a.rglob("*"))
    names_b = sorted(p.relative_to(b) for p in b.rglob("*"))
    if names_a != names_b:
        return False
    return all(
        (a / n).is_dir() == (b / n).is_dir()
        and ((a / n).is_dir() or filecmp.cmp(a / n, b / n, shallow=False))
        for n in names_a
    )


class IpPool:
    """Hands out loopback addresses nobody else in this process was given (127.0.<third>.x)."""

    def __init__(self, third: int = 1, first: int = 1) -> None:
        self._third = third
        self._next = first

    def __call__(self) -> str:
        if self._next > 254:
            self._third += 1
            self._next = 1
        ip = loopback_ip(self._next, self._third)
        self._next += 1
        return ip


# -- one libtorrent peer --------------------------------------------------------------------


@dataclass(frozen=True)
class PeerStats:
    total_upload: int  # bytes sent since the torrent was added, protocol overhead included
    total_download: int
    payload_upload: int  # piece data only
    payload_download: int
    num_peers: int
    progress: float  # 0.0 .. 1.0 of the wanted pieces
    state: str  # libtorrent's torrent_status state name: "seeding", "downloading", ...
    num_pieces: int  # pieces it has


def loopback_ip(host_byte: int, third: int = 0) -> str:
    if not 1 <= host_byte <= 254 or not 0 <= third <= 255:
        raise ValueError(f"no usable loopback address 127.0.{third}.{host_byte}")
    return f"127.0.{third}.{host_byte}"


def _check_loopback(ip: str) -> None:
    if ipaddress.ip_address(ip) not in ipaddress.ip_network("127.0.0.0/8"):
        raise ValueError(f"{ip} is not a 127.0.0.0/8 address")


# Pass as ``settings=`` (LtPeer, Swarm, run_lt_leecher) to keep libtorrent's default, as every
# peer on the Internet has it: a second connection from an address already connected is
# refused.  session_settings turns it on, so one machine can hold several clients on one
# address; a client that opens two connections to one peer needs a test with the default.
ONE_CONNECTION_PER_IP: Mapping[str, Any] = {"allow_multiple_connections_per_ip": False}


def session_settings(ip: str, port: int, *, seed: bool, encryption: bool = False) -> dict[str, Any]:
    """Settings that keep a session on one loopback address and make it a distinct peer.

    Without ``encryption`` the peer speaks plain BitTorrent only, as mptorrent does; with it,
    libtorrent's default: it tries an encrypted (MSE) handshake first when it dials.
    """
    base = lt.high_performance_seed() if seed else lt.default_settings()
    base.update(
        {
            "listen_interfaces": f"{ip}:{port}",
            "outgoing_interfaces": ip,
            "enable_dht": False,
            "dht_bootstrap_nodes": "",
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "enable_ip_notifier": False,
            "enable_incoming_utp": False,
            "enable_outgoing_utp": False,
            "allow_multiple_connections_per_ip": True,
            # Both, or a busy port is silently swapped for another one.
            "max_retry_port_bind": 0,
            "listen_system_port_fallback": False,
            "announce_to_all_tiers": True,
            "announce_to_all_trackers": True,
            "stop_tracker_timeout": _CLOSE_TRACKER_TIMEOUT,
            # Two cores shared by every peer and the client under test.
            "aio_threads": 2,
            "hashing_threads": 1,
            "alert_mask": lt.alert_category.error | lt.alert_category.status,
            # Peers added with connect_peer are dialled on the next tick (default 500 ms).
            "tick_interval": 100,
            # libtorrent caches UDP tracker connection IDs process-wide, keyed by tracker
            # address; opentracker ties an ID to the source IP, so a second session in this
            # process would announce with the first one's ID and be refused for 60 s.
            "udp_tracker_token_expiry": 0,
            "user_agent": f"libtorrent/{lt.__version__}",
        }
    )
    if not encryption:
        base.update(
            {"out_enc_policy": lt.enc_policy.disabled, "in_enc_policy": lt.enc_policy.disabled}
        )
    if seed:
        base.update({"unchoke_slots_limit": -1, "min_reconnect_time": 1})
    return base


def dht_settings() -> dict[str, Any]:
    """Settings that turn a session's DHT on for a loopback DHT of our own (issue 15).

    No public bootstrap node; libtorrent's private-address restrictions off (every node is on
    127.x), its per-address rate limit out of reach and unverified node ids accepted (ids are
    not derived from loopback addresses).  LSD, UPnP and NAT-PMP stay off as in
    ``session_settings``.
    """
    return {
        "enable_dht": True,
        "dht_bootstrap_nodes": "",
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        # libtorrent bans an address that sends 10 x this many datagrams within 10 s, for
        # dht_block_timeout (0 does not turn it off: it bans at the 10th); clients of one
        # address run one after the other in the benchmarks and some tests
        "dht_block_ratelimit": 10_000,
        "dht_prefer_verified_node_ids": False,
        "dht_announce_interval": 5,
        "alert_mask": lt.alert_category.error | lt.alert_category.status
        | lt.alert_category.dht | lt.alert_category.dht_operation,
    }  # fmt: skip


class LtDhtNode:
    """A libtorrent session that is only a DHT node, on its own loopback address."""

    def __init__(self, ip: str) -> None:
        _check_loopback(ip)
        settings = session_settings(ip, 0, seed=False)
        settings.update(dht_settings())
        self.ip = ip
        self.session: Any = lt.session(settings)
        deadline = time.monotonic() + 10
        while not self.session.listen_port() and time.monotonic() < deadline:
            time.sleep(0.05)

    @property
    def addr(self) -> tuple[str, int]:
        return (self.ip, int(self.session.listen_port()))

    def close(self) -> None:
        self.session.pause()
        del self.session


def dht_mesh(sessions: Iterable[Any], addrs: Iterable[tuple[str, int]]) -> None:
    """Introduce every node to every session.  Nodes named only as bootstrap nodes never
    enter libtorrent's routing table, so ``add_dht_node`` it is."""
    nodes = list(addrs)
    for ses in sessions:
        for addr in nodes:
            ses.add_dht_node(addr)


def dht_table_size(session: Any) -> int:
    """How many nodes a session's DHT routing table holds (asks and waits for its stats)."""
    session.post_dht_stats()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        for a in session.pop_alerts():
            if isinstance(a, lt.dht_stats_alert):
                return sum(int(b["num_nodes"]) for b in a.routing_table)
        time.sleep(0.05)
    return 0


class LtPeer:
    """One libtorrent session on its own loopback address, holding one torrent.

    ``have_pieces`` makes a partial seeder: it holds exactly those pieces and never downloads
    others.  ``upload_rate_limit`` is in bytes/s (0 = unlimited).  ``tracker_url`` replaces the
    torrent's trackers; ``use_trackers=False`` drops them.  ``trust_data`` adds a seeder in
    seed mode (no hash check at start, libtorrent verifies each piece when first sent).
    ``pex=False`` leaves out libtorrent's ut_pex plugin: the peer neither learns peers from
    mptorrent's PEX nor dials them (tests that count every connection a peer gets).
    """

    def __init__(
        self,
        torrent: bytes,
        save_path: str | Path,
        *,
        ip: str = "127.0.0.11",
        port: int = 0,
        role: Role = "seed",
        have_pieces: Iterable[int] | None = None,
        upload_rate_limit: int = 0,
        share_mode: bool = False,
        tracker_url: str | None = None,
        use_trackers: bool = True,
        trust_data: bool = False,
        encryption: bool = False,
        settings: Mapping[str, Any] | None = None,
        pex: bool = True,
    ) -> None:
        _check_loopback(ip)
        if role not in ("seed", "leech"):
            raise ValueError(f"role must be 'seed' or 'leech', not {role!r}")
        self.torrent = torrent
        self.info = lt.torrent_info(torrent)
        self.save_path = Path(save_path)
        self.ip = ip
        self.port = port
        self.role = role
        self.have_wanted: frozenset[int] | None = None
        if have_pieces is not None:
            if role != "seed" or trust_data:
                raise ValueError("have_pieces is for seeders that check their data")
            wanted = frozenset(have_pieces)
            n = self.info.num_pieces()
            bad = [i for i in wanted if not 0 <= i < n]
            if bad:
                raise ValueError(f"pieces {sorted(bad)[:5]} out of range 0..{n - 1}")
            self.have_wanted = wanted
        self.upload_rate_limit = upload_rate_limit
        self.share_mode = share_mode
        self.tracker_url = tracker_url
        self.use_trackers = use_trackers
        self.trust_data = trust_data
        self.encryption = encryption
        self.extra_settings = dict(settings or {})
        self.pex = pex
        self._ses: Any = None
        self._handle: Any = None
        self._added_at = 0.0
        self._finished_at: float | None = None
        self._checked = False
        self._log: list[str] = []

    # -- lifecycle --

    def __enter__(self) -> LtPeer:
        if self._ses is None:
            self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def addr(self) -> PeerAddr:
        if self._ses is None:
            raise SwarmError(f"{self.ip}: not started")
        return PeerAddr(self.ip, self.port)

    @property
    def handle(self) -> Any:
        """The libtorrent torrent_handle, for anything this class does not wrap."""
        if self._handle is None:
            raise SwarmError(f"{self.ip}: not started")
        return self._handle

    def start(self, timeout: float = 30.0) -> PeerAddr:
        """Open the session and add the torrent; wait until it is ready to serve or download.

        Seeders are ready when seeding (partial seeders: when they hold exactly their pieces),
        leechers when their files are checked.
        """
        self.launch()
        self.wait_ready(timeout)
        return self.addr

    def launch(self) -> None:
        """Open the session and add the torrent without waiting for the check to finish."""
        if self._ses is not None:
            raise SwarmError(f"{self.ip}: already started")
        attempts = 5 if self.port == 0 else 1
        for attempt in range(attempts):
            try:
                self._open_session()
                break
            except SwarmError:
                if attempt == attempts - 1:
                    raise
        self._add_torrent()

    def _open_session(self) -> None:
        settings = session_settings(
            self.ip, self.port, seed=self.role == "seed", encryption=self.encryption
        )
        if self.upload_rate_limit:
            settings["upload_rate_limit"] = self.upload_rate_limit
        settings.update(self.extra_settings)
        if self.pex:
            ses = lt.session(lt.session_params(settings))
        else:
            ses = lt.session(settings, 0)  # no default plugins: add all but ut_pex
            for plugin in ("ut_metadata", "smart_ban"):
                ses.add_extension(plugin)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ses.wait_for_alert(100)
            for a in ses.pop_alerts():
                if isinstance(a, lt.listen_failed_alert):
                    why = f"{a.error.message()} ({lt.operation_name(a.op)})"
                    ses.pause()
                    del ses  # frees the address before a retry
                    raise SwarmError(f"{self.ip}:{self.port}: cannot listen: {why}")
                if isinstance(a, lt.listen_succeeded_alert):
                    self.port = ses.listen_port()
                    self._ses = ses
                    if self.upload_rate_limit:
                        self._limit_local_class(self.upload_rate_limit)
                    return
        ses.pause()
        del ses
        raise SwarmError(f"{self.ip}:{self.port}: no listen result from libtorrent in 10 s")

    def _limit_local_class(self, rate: int) -> None:
        # Loopback peers fall in the local peer class, which the session rate limit skips.
        cls = self._ses.get_peer_class(self._ses.local_peer_class_id)
        cls["upload_limit"] = rate
        self._ses.set_peer_class(self._ses.local_peer_class_id, cls)

    def _add_torrent(self) -> None:
        atp = lt.add_torrent_params()
        atp.ti = self.info
        atp.save_path = str(self.save_path)
        flags = atp.flags & ~lt.torrent_flags.paused & ~lt.torrent_flags.auto_managed
        if self.trust_data:
            flags |= lt.torrent_flags.seed_mode
        if self.share_mode:
            flags |= lt.torrent_flags.share_mode
        if self.tracker_url is not None or not self.use_trackers:
            flags |= lt.torrent_flags.override_trackers
            atp.trackers = [self.tracker_url] if self.tracker_url else []
            atp.tracker_tiers = [0] if self.tracker_url else []
        if self.have_wanted is not None:
            n = self.info.num_pieces()
            # Passed as resume data: libtorrent trusts it instead of hashing the full data on
            # disk, and priority 0 keeps it from fetching the rest.
            atp.have_pieces = [i in self.have_wanted for i in range(n)]
            atp.piece_priorities = [4 if i in self.have_wanted else 0 for i in range(n)]
        atp.flags = flags
        self._added_at = time.monotonic()
        self._handle = self._ses.add_torrent(atp)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            st = self._status()
            # Judge only after libtorrent says the files are checked: before that the state can
            # still read "downloading".
            if self._checked and st.state not in _CHECKING:
                if self.role == "leech":
                    return
                if st.state not in _DONE or (self.have_wanted is None and not st.is_seeding):
                    raise SwarmError(
                        f"{self.ip}: seeder holds {st.num_pieces}/{len(st.pieces)} pieces of "
                        f"{self.info.name()!r} in {self.save_path} after its check"
                        f"{self._recent_log()}"
                    )
                if self.have_wanted is not None:
                    self._verify_partial(st)
                return
            if time.monotonic() >= deadline:
                raise SwarmError(
                    f"{self.ip}: not ready after {timeout:.0f} s (state {st.state}, progress "
                    f"{st.progress:.3f}){self._recent_log()}"
                )
            time.sleep(_POLL)

    def _verify_partial(self, st: Any) -> None:
        have = {i for i, b in enumerate(st.pieces) if b}
        if have != self.have_wanted:
            extra = sorted(have - (self.have_wanted or set()))[:5]
            missing = sorted((self.have_wanted or set()) - have)[:5]
            raise SwarmError(
                f"{self.ip}: partial seeder holds {len(have)} pieces, wanted "
                f"{len(self.have_wanted or ())} (extra {extra}, missing {missing})"
            )

    def _status(self) -> Any:
        st = self.handle.status()
        self._drain()
        if st.errc.value():
            raise SwarmError(f"{self.ip}: torrent error: {st.errc.message()}{self._recent_log()}")
        return st

    def _drain(self) -> None:
        for a in self._ses.pop_alerts():
            if isinstance(a, lt.torrent_checked_alert):
                self._checked = True
            if isinstance(a, lt.torrent_finished_alert) and self._finished_at is None:
                self._finished_at = time.monotonic()
            elif isinstance(a, lt.state_changed_alert | lt.torrent_finished_alert):
                continue
            self._log.append(f"{type(a).__name__}: {_alert_text(a)}")
        del self._log[:-20]

    def _recent_log(self) -> str:
        return "".join(f"\n  {line}" for line in self._log[-8:])

    def close(self) -> None:
        self.begin_close()
        self.finish_close()

    def begin_close(self) -> None:
        """Pause without waiting; lets a swarm stop all its peers at once."""
        if self._ses is not None:
            # Caller settings may have raised it; closing must stay quick.
            self._ses.apply_settings({"stop_tracker_timeout": _CLOSE_TRACKER_TIMEOUT})
            self._ses.pause()

    def finish_close(self) -> None:
        ses, self._ses, self._handle = self._ses, None, None
        if ses is not None:
            ses.pause()
            # The session stops in its destructor, waiting at most stop_tracker_timeout.
            del ses

    # -- using it --

    @property
    def session(self) -> Any:
        """The libtorrent session, for anything this class does not wrap (its DHT)."""
        if self._ses is None:
            raise SwarmError(f"{self.ip}: not started")
        return self._ses

    def add_peer(self, host: str, port: int) -> None:
        self.handle.connect_peer((host, port))

    def connect(self, addrs: Iterable[tuple[str, int]]) -> None:
        for host, port in addrs:
            self.add_peer(host, port)

    def stats(self) -> PeerStats:
        st = self._status()
        return PeerStats(
            total_upload=st.total_upload,
            total_download=st.total_download,
            payload_upload=st.total_payload_upload,
            payload_download=st.total_payload_download,
            num_peers=st.num_peers,
            progress=st.progress,
            state=str(st.state),
            num_pieces=st.num_pieces,
        )

    def have(self) -> set[int]:
        """The pieces this peer holds (libtorrent's own view)."""
        return {i for i, b in enumerate(self._status().pieces) if b}

    def uploaded_by_peer(self) -> dict[str, int]:
        """Payload bytes sent to each connected remote IP (current connections only)."""
        out: dict[str, int] = {}
        for p in self.handle.get_peer_info():
            host = p.ip[0]
            out[host] = out.get(host, 0) + p.total_upload
        return out

    def wait_finished(self, timeout: float = 120.0) -> float:
        """Wait until every wanted piece is here; seconds from adding the torrent to done."""
        deadline = time.monotonic() + timeout
        while True:
            st = self._status()
            if self._finished_at is not None or st.is_finished:
                done = self._finished_at if self._finished_at is not None else time.monotonic()
                return done - self._added_at
            if time.monotonic() >= deadline:
                raise SwarmError(
                    f"{self.ip}: not finished after {timeout:.0f} s (state {st.state}, "
                    f"progress {st.progress:.3f}, {st.num_peers} peers){self._recent_log()}"
                )
            # Wakes on the finished alert, so the time is not rounded up to a poll period.
            self._ses.wait_for_alert(50)


def _alert_text(a: Any) -> str:
    try:
        return str(a.message())
    except UnicodeDecodeError:
        # Seen with listen_failed_alert: the text can carry stray non-UTF-8 bytes.
        err = getattr(a, "error", None)
        return err.message() if err is not None else str(a.what())


# -- a swarm of seeders ---------------------------------------------------------------------


def _resolve_save_dir(info: Any, data_path: Path) -> Path:
    """Accept the save folder or the payload itself (file or top folder)."""
    if (data_path / info.name()).exists():
        return data_path
    if data_path.name == info.name() and data_path.exists():
        return data_path.parent
    raise FileNotFoundError(f"no {info.name()!r} in or at {data_path}")


class Swarm:
    """``n_seeders`` libtorrent seeders on 127.0.0.<first_ip>, .<first_ip + 1>, ...

    All seeders read the same data in ``data_path`` (the save folder or the payload itself).
    ``have_pieces[i]``, when not None, makes seeder i a partial seeder.
    """

    def __init__(
        self,
        torrent: bytes,
        data_path: str | Path,
        n_seeders: int = 3,
        first_ip: int = 11,
        tracker_url: str | None = None,
        *,
        have_pieces: Sequence[Iterable[int] | None] | None = None,
        upload_rate_limit: int = 0,
        trust_data: bool = False,
        use_trackers: bool = True,
        encryption: bool = False,
        start_timeout: float = 60.0,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        if n_seeders < 1:
            raise ValueError("a swarm needs at least one seeder")
        if have_pieces is not None and len(have_pieces) != n_seeders:
            raise ValueError("have_pieces needs one entry (or None) per seeder")
        info = lt.torrent_info(torrent)
        save_dir = _resolve_save_dir(info, Path(data_path))
        self.torrent = torrent
        self.start_timeout = start_timeout
        self.seeders = [
            LtPeer(
                torrent,
                save_dir,
                ip=loopback_ip(first_ip + i),
                role="seed",
                have_pieces=None if have_pieces is None else have_pieces[i],
                upload_rate_limit=upload_rate_limit,
                tracker_url=tracker_url,
                use_trackers=use_trackers,
                trust_data=trust_data,
                encryption=encryption,
                settings=settings,
            )
            for i in range(n_seeders)
        ]

    def start(self) -> Swarm:
        try:
            for s in self.seeders:
                s.launch()
            deadline = time.monotonic() + self.start_timeout
            for s in self.seeders:
                s.wait_ready(max(0.1, deadline - time.monotonic()))
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> Swarm:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def addrs(self) -> list[PeerAddr]:
        return [s.addr for s in self.seeders]

    def connect(self, host: str, port: int) -> None:
        """Make every seeder dial a peer (for clients that do not dial 127.x themselves)."""
        for s in self.seeders:
            s.add_peer(host, port)

    def stats(self) -> list[PeerStats]:
        return [s.stats() for s in self.seeders]

    def total_uploaded(self) -> int:
        return sum(st.payload_upload for st in self.stats())

    def close(self) -> None:
        for s in self.seeders:
            s.begin_close()
        for s in self.seeders:
            s.finish_close()


# -- a libtorrent leecher, to compare against ----------------------------------------------


def run_lt_leecher(
    torrent: bytes,
    save_dir: str | Path,
    peers: Iterable[tuple[str, int]] = (),
    *,
    tracker_url: str | None = None,
    ip: str = "127.0.0.20",
    port: int = 0,
    timeout: float = 120.0,
    encryption: bool = False,
    settings: Mapping[str, Any] | None = None,
) -> float:
    """Download with libtorrent from direct ``peers`` and/or a tracker; return the seconds from
    adding the torrent to having every piece verified.

    With direct peers and no ``tracker_url`` the torrent's own trackers are not used.
    """
    peers = list(peers)
    leecher = LtPeer(
        torrent,
        save_dir,
        ip=ip,
        port=port,
        role="leech",
        tracker_url=tracker_url,
        use_trackers=tracker_url is not None or not peers,
        encryption=encryption,
        settings=settings,
    )
    deadline = time.monotonic() + timeout
    with leecher:
        leecher.wait_ready(timeout)
        leecher.connect(peers)
        return leecher.wait_finished(max(0.1, deadline - time.monotonic()))


def run_lt_magnet_leecher(
    magnet: str, save_dir: str | Path, peer: tuple[str, int], *, ip: str, timeout: float = 30.0
) -> bytes:
    """A libtorrent leecher on ``ip`` with nothing but ``magnet`` and one ``peer`` to dial:
    wait until it has the metadata (BEP 9) and every piece; return the info section it got."""
    atp = lt.parse_magnet_uri(magnet)
    atp.save_path = str(save_dir)
    ses = lt.session(lt.session_params(session_settings(ip, 0, seed=False)))
    try:
        handle = ses.add_torrent(atp)
        handle.connect_peer(peer)
        deadline = time.monotonic() + timeout
        while not (st := handle.status()).is_seeding:
            assert time.monotonic() < deadline, (
                f"libtorrent: metadata {st.has_metadata}, progress {st.progress:.3f}"
            )
            ses.wait_for_alert(100)
            ses.pop_alerts()
        return bytes(handle.torrent_file().info_section())
    finally:
        ses.pause()
        del ses


# -- what a peer tells others it has ------------------------------------------------------


def advertised_pieces(
    addr: tuple[str, int],
    torrent: bytes,
    *,
    source_ip: str = "127.0.0.1",
    timeout: float = 5.0,
    linger: float = 0.3,
) -> set[int]:
    """Connect as a plain BitTorrent peer (no extensions) and collect the pieces the remote
    announces in its bitfield and in HAVE messages within ``linger`` seconds after it.

    Independent of libtorrent's API: this is what any client on the wire would see.
    """
    _check_loopback(source_ip)
    ih = info_hash(torrent)
    n = num_pieces(torrent)
    peer_id = b"-HT0001-" + os.urandom(12)
    have: set[int] = set()
    with socket.create_connection(
        tuple(addr), timeout=timeout, source_address=(source_ip, 0)
    ) as sock:
        sock.sendall(b"\x13BitTorrent protocol" + bytes(8) + ih + peer_id)
        reply = _recv_exact(sock, 68)
        if reply[:20] != b"\x13BitTorrent protocol" or reply[28:48] != ih:
            raise SwarmError(f"{addr}: bad handshake {reply[:48]!r}")
        stop_at: float | None = None
        while stop_at is None or time.monotonic() < stop_at:
            if stop_at is not None:
                sock.settimeout(max(0.01, stop_at - time.monotonic()))
            try:
                (length,) = struct.unpack(">I", _recv_exact(sock, 4))
                body = _recv_exact(sock, length) if length else b""
            except (TimeoutError, ConnectionError):
                break
            if not body:
                continue
            msg_id, payload = body[0], body[1:]
            if msg_id == 5:
                if len(payload) != (n + 7) // 8:
                    raise SwarmError(f"{addr}: bitfield of {len(payload)} bytes for {n} pieces")
                for i in range(len(payload) * 8):
                    if payload[i >> 3] & (0x80 >> (i & 7)):
                        if i >= n:
                            raise SwarmError(f"{addr}: spare bit {i} set in bitfield")
                        have.add(i)
            elif msg_id == 4:
                have.add(struct.unpack(">I", payload)[0])
            if stop_at is None and msg_id in (4, 5):
                stop_at = time.monotonic() + linger
    return have


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        buf += chunk
    return bytes(buf)
