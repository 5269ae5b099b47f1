"""The Python API behind ``import mptorrent``: fetch, a non-blocking download handle, seed,
verify, create, and torrents to inspect.

``mptorrent/__init__.py`` re-exports these names and imports this module only when one is
used, so ``import mptorrent`` stays cheap.  Everything a call reports goes to its
``on_event`` sink as the typed records of :mod:`mptorrent.events` (the ones ``--json``
prints); every failure is a :class:`~mptorrent.errors.MptorrentError` whose ``exit_code``
is the one the command line would exit with.

The DHT (BEP 5) is on by default, as on the command line (``dht=False`` is ``--no-dht``,
``dht_bootstrap`` ``--dht-bootstrap``, ``dht_port`` ``--dht-port``), never for a private
torrent.  ``only``, ``sequential`` and ``stream`` (issue 16) are piece priorities in the picker.
"""

from __future__ import annotations

import inspect
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, ParamSpec, TypeAlias

from mptorrent import events as ev
from mptorrent.errors import BadSelection, BadTorrent, Cancelled, DownloadError, StorageError
from mptorrent.messages import PeerAddr
from mptorrent.record import Record, frozen

if TYPE_CHECKING:
    from mptorrent.engine.coordinator import FetchOptions, SeedAfter
    from mptorrent.proto.magnet import Magnet
    from mptorrent.proto.metainfo import Metainfo

Source: TypeAlias = "str | os.PathLike[str] | bytes | Torrent"
PeerLike: TypeAlias = "PeerAddr | tuple[str, int] | str"  # ("host", port) or "host:port"
IoMode: TypeAlias = Literal["auto", "mmap", "pwrite"]
Selector: TypeAlias = "str | int"  # a glob on the path inside the torrent, "#N", or N
P = ParamSpec("P")


# -- torrents -------------------------------------------------------------------------------


@frozen(slots=False)
class TorrentFile(Record):
    """One file of a torrent: its path inside the torrent ("dir/name") and size in bytes."""

    path: str
    length: int


class Torrent:
    """A torrent's metadata: what a .torrent holds, or what a magnet link's peers sent.

    Make one with :meth:`load` (a path or the bytes of a .torrent) or :meth:`from_magnet`
    (asks peers for the metadata); pass it to :func:`fetch` to skip parsing again.
    """

    def __init__(self, meta: Metainfo, data: bytes | None = None) -> None:
        self.meta = meta  # the parsed metainfo (mptorrent.proto.metainfo.Metainfo)
        self.data = data  # the .torrent's bytes, when known
        self.peers: tuple[PeerAddr, ...] = ()  # from_magnet: the peers that had the metadata
        self.peer_sources: dict[PeerAddr, ev.PeerSource] = {}  # where those came from

    @classmethod
    def load(cls, source: str | os.PathLike[str] | bytes) -> Torrent:
        """Parse a .torrent file (a path) or its bytes; raises BadTorrent (exit code 3)."""
        from mptorrent.proto import metainfo

        if isinstance(source, bytes):
            return cls(metainfo.parse(source), source)
        path = Path(source)
        meta = metainfo.load(path)  # its errors: a directory, too big, unreadable, not bencode
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BadTorrent(f"cannot read {path}: {exc.strerror}") from None
        return cls(meta, data)

    @classmethod
    def from_magnet(
        cls, uri: str, *, peers: Iterable[PeerLike] = (), trackers: bool = True,
        timeout: float = 60.0, bind: str = "0.0.0.0", on_event: ev.EventSink | None = None,
        dht: bool = True, dht_bootstrap: Iterable[PeerLike] = (), dht_port: int | None = None,
    ) -> Torrent:  # fmt: skip
        """Fetch a magnet link's metadata from its peers (``x.pe``, ``peers``, trackers, the
        DHT: see :func:`fetch` for ``dht``, ``dht_bootstrap`` and ``dht_port``)."""
        from mptorrent.proto.magnet import parse_magnet

        return cls._from_magnet(
            parse_magnet(uri), peers=_peers(peers), trackers=trackers, timeout=timeout,
            bind=bind, emit=on_event or ev.ignore, dht=dht, dht_bootstrap=_peers(dht_bootstrap),
            dht_port=dht_port,
        )  # fmt: skip

    @classmethod
    def _from_magnet(
        cls, magnet: Magnet, *, peers: tuple[PeerAddr, ...], trackers: bool, timeout: float,
        bind: str, emit: ev.EventSink, port: int = 0, dht: bool = False,
        dht_bootstrap: tuple[tuple[str, int], ...] = (), dht_port: int | None = None,
    ) -> Torrent:  # fmt: skip
        """``port``: the one the download will listen on, announced meanwhile; 0: not known
        yet (6881 is announced, and "stopped" once the metadata is in)."""
        from mptorrent.engine.metadata import fetch_metadata
        from mptorrent.proto.magnet import torrent_from_metadata

        found = fetch_metadata(
            magnet, peers=peers, use_trackers=trackers, port=port, bind=bind, timeout=timeout,
            events=emit, announce_stopped=port == 0, dht=dht, dht_bootstrap=dht_bootstrap,
            dht_port=dht_port,
        )  # fmt: skip
        t = cls(found.meta, torrent_from_metadata(found.info, magnet, found.piece_layers))
        t.peers = found.peers
        t.peer_sources = dict(found.sources)
        return t

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def info_hash(self) -> str:
        """Hex, as in magnet links."""
        return self.meta.info_hash_hex

    @property
    def info_hash_v2(self) -> str | None:
        """BitTorrent v2's SHA-256 info-hash in hex (64 digits); None for a v1 torrent."""
        v2 = self.meta.info_hash_v2
        return None if v2 is None else v2.hex()

    @property
    def size(self) -> int:
        return self.meta.total_length

    @property
    def piece_length(self) -> int:
        return self.meta.piece_length

    @property
    def pieces(self) -> int:
        return self.meta.num_pieces

    @property
    def files(self) -> tuple[TorrentFile, ...]:
        """Without padding files."""
        return tuple(
            TorrentFile("/".join(f.path), f.length) for f in self.meta.files if not f.padding
        )

    def select(self, only: Iterable[Selector]) -> tuple[int, ...]:
        """The indices (``mptorrent info``'s, padding files counted) of the files ``only``
        names, as :func:`fetch` would download them; BadSelection (exit code 2) if one
        selector names no file."""
        from mptorrent.policy.select import select_files

        return tuple(select_files(self.meta.files, only))

    @property
    def trackers(self) -> tuple[tuple[str, ...], ...]:
        """Tiers of announce URLs."""
        return tuple(tuple(tier) for tier in self.meta.trackers)

    @property
    def private(self) -> bool:
        return self.meta.private

    def __repr__(self) -> str:
        return f"Torrent({self.name!r}, {self.info_hash}, {self.size} bytes)"


# -- fetch ----------------------------------------------------------------------------------


@frozen(slots=False)
class FetchResult(Record):
    """A finished download: where it is, how big, how long it took."""

    path: Path  # the file, or a multi-file torrent's folder; Path("-"): streamed, not kept
    bytes: int  # the torrent's size, or the selected files' (``only``): all there, verified
    elapsed: float  # seconds, the metadata phase of a magnet link included
    info_hash: str  # hex
    downloaded: int  # bytes of pieces verified in this run (resumed ones not counted)
    resumed: int  # pieces already on disk when it started
    peers_used: int


def _peers(peers: Iterable[PeerLike]) -> tuple[PeerAddr, ...]:
    out = []
    for p in peers:
        if isinstance(p, str):
            host, sep, port = p.strip().rpartition(":")
            host = host.removeprefix("[").removesuffix("]")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{p!r} is not HOST:PORT")
            out.append(PeerAddr(host, int(port)))
        else:
            out.append(PeerAddr(str(p[0]), int(p[1])))
    return tuple(out)


def _is_magnet(source: str) -> bool:
    # proto.magnet (base64, unicodedata: 2 ms) loads only for what may be a magnet link
    if source[:7].lower() != "magnet:":
        return False
    from mptorrent.proto.magnet import is_magnet

    return is_magnet(source)


def _web_seeds(urls: Iterable[str]) -> tuple[str, ...]:
    out = tuple(urls)
    if not out:
        return out  # proto.webseed loads only for a fetch that has web seeds
    from mptorrent.proto.webseed import seed_url_problem

    for url in out:
        problem = seed_url_problem(url)
        if problem is not None:
            raise ValueError(f"{url[:80]!r} is not a web seed: {problem}")
    return out


def fetch(
    source: Source,
    output: str | os.PathLike[str] | None = None,
    *,
    workers: int | None = None,
    peers: Iterable[PeerLike] = (),
    trackers: bool = True,
    dht: bool = True,
    dht_bootstrap: Iterable[PeerLike] = (),
    dht_port: int | None = None,
    on_event: ev.EventSink | None = None,
    port: int = 0,
    bind: str = "0.0.0.0",
    max_peers: int = 50,
    metadata_timeout: float = 60.0,
    io: IoMode = "auto",
    seed_ratio: float | None = None,
    seed_time: float | None = None,
    save_torrent: str | os.PathLike[str] | None = None,
    web_seeds: Iterable[str] = (),
    only: Iterable[Selector] = (),
    sequential: bool = False,
    stream: IO[bytes] | None = None,
    max_download_rate: int | None = None,
    max_upload_rate: int | None = None,
) -> FetchResult:
    """Download ``source`` (a .torrent path, its bytes, a magnet URI or a :class:`Torrent`)
    into ``output`` (default: ./NAME) and return once it is complete and verified.

    ``workers``: worker processes (default: the CPU count); ``peers``: peers to dial
    besides the trackers' and the DHT's (``trackers=False, dht=False``: only these);
    ``port``: where to accept peers (0: any free port).  ``on_event`` receives every
    :mod:`mptorrent.events` record, on this thread.  Data already in ``output`` is verified
    and kept: a second call resumes.

    ``dht``: find peers in the DHT (BEP 5) and announce there, as the command line does
    (never for a private torrent); ``dht_bootstrap``: nodes (``"host:port"`` or pairs) that
    replace the built-in routers and the saved routing table; ``dht_port``: the node's UDP
    port (default: the listening port).

    ``seed_ratio`` / ``seed_time`` (seconds): once complete, keep seeding on the same
    connections until uploaded/size reaches the ratio or the time is up, whichever comes
    first (the call returns then).  ``save_torrent``: write the .torrent there (a magnet
    link's once its metadata is verified).  ``web_seeds``: HTTP(S) mirrors (BEP 19) to read
    from besides the torrent's ``url-list`` (a file for a single-file torrent, a directory
    ending in ``/`` for a multi-file one).

    ``only``: download just the files these select (globs on the path inside the torrent,
    ``"#N"`` or N for the file of index N; :meth:`Torrent.select`); the others are not
    created, and the bytes of theirs that share a piece with a selected file wait in
    ``.mptorrent.parts`` for a later call that selects more.  ``sequential``: pieces in
    order, a read-ahead window first.  ``stream``: a binary file (a pipe) that receives
    the one selected file's verified bytes in order as they arrive (pair it with
    ``sequential=True``, as ``mptorrent fetch -o -`` does, or the first bytes wait for
    rarest-first to reach them); without ``output`` the data goes to a temporary folder
    removed at the end.  A reader that leaves early raises StreamClosed (exit code 141).

    ``max_download_rate`` / ``max_upload_rate``: bytes a second for all workers together
    (None or 0: no limit); ``max_peers``: connections for all workers together.
    """
    params = dict(locals())  # every parameter above, by name
    emit = params.pop("on_event") or ev.ignore
    return _plan(**params)(emit)


def _plan(
    source: Source,
    output: str | os.PathLike[str] | None,
    *,
    peers: Iterable[PeerLike],
    dht_bootstrap: Iterable[PeerLike],
    web_seeds: Iterable[str],
    only: Iterable[Selector],
    **options: Any,
) -> Callable[[ev.EventSink], FetchResult]:
    """:func:`fetch` and :func:`start`'s one path: check what can be checked before any
    network (a bad peer or limit is a ValueError at the call, not on a download's thread),
    and return the fetch to run with an event sink."""
    peer_addrs, boot, mirrors = _peers(peers), _peers(dht_bootstrap), _web_seeds(web_seeds)
    selectors = tuple(only)
    _check_limits(options["max_peers"], options["max_download_rate"], options["max_upload_rate"])

    def run(emit: ev.EventSink) -> FetchResult:
        t0 = time.monotonic()
        torrent, opts = prepare(
            source, peers=peer_addrs, dht_bootstrap=boot, web_seeds=mirrors, only=selectors,
            emit=emit, **options,
        )  # fmt: skip
        return download(torrent, output, opts, emit, t0)

    return run


def prepare(
    source: Source, *, workers: int | None, peers: tuple[PeerAddr, ...], trackers: bool,
    emit: ev.EventSink, port: int, bind: str, max_peers: int, metadata_timeout: float,
    io: IoMode, seed_ratio: float | None = None, seed_time: float | None = None,
    save_torrent: str | os.PathLike[str] | None = None,
    warn: Callable[[str], None] | None = None, on_seeding: Callable[[], None] | None = None,
    peer_option: str = "peer", dht: bool = False,
    dht_bootstrap: tuple[tuple[str, int], ...] = (), dht_port: int | None = None,
    stall_timeout: float = 300.0,  # coordinator.STALL_TIMEOUT (imported lazily here)
    web_seeds: tuple[str, ...] = (),
    only: tuple[Selector, ...] = (), sequential: bool = False, stream: IO[bytes] | None = None,
    max_download_rate: int | None = None, max_upload_rate: int | None = None,
) -> tuple[Torrent, FetchOptions]:  # fmt: skip
    """:func:`fetch`'s first half, apart for the command line (which runs the second,
    :func:`download`, under its own signal handling): the torrent (a magnet link's metadata
    fetched), saved if asked, and the fetch's options; nothing is created on disk.

    ``warn`` gets the magnet link's and the torrent's warnings (skipped trackers...);
    ``on_seeding`` is called when seeding after the download begins; ``peer_option``
    names the peers given in the no-peers error (the command line says ``--peer``)."""
    from mptorrent.engine.coordinator import FetchOptions, web_seed_urls
    from mptorrent.mp import default_jobs

    _check_limits(max_peers, max_download_rate, max_upload_rate)  # before any network
    if isinstance(source, Torrent):
        torrent = source
    elif isinstance(source, str) and _is_magnet(source):
        from mptorrent.proto.magnet import parse_magnet

        magnet = parse_magnet(source)  # BadMagnet: exit 3
        _warn(warn, magnet.warnings)
        torrent = Torrent._from_magnet(
            magnet, peers=peers, trackers=trackers, timeout=metadata_timeout, bind=bind,
            emit=emit, port=port, dht=dht, dht_bootstrap=dht_bootstrap, dht_port=dht_port,
        )  # fmt: skip
        _save(torrent, save_torrent)
        save_torrent = None
    else:
        torrent = Torrent.load(source)
    _warn(warn, torrent.meta.warnings)
    _save(torrent, save_torrent)  # a .torrent: after its warnings
    meta = torrent.meta
    selected = torrent.select(only) if only else None  # BadSelection before anything else
    if stream is not None:
        streamed = [i for i, f in enumerate(meta.files) if not f.padding]
        if selected is not None:
            streamed = [i for i in streamed if i in selected]
        if len(streamed) != 1:
            raise BadSelection(
                f"-o - streams one file, and {len(streamed)} are selected: choose one with --only"
            )
    peers = tuple(dict.fromkeys((*torrent.peers, *peers)))
    mirrors = web_seed_urls(meta, web_seeds)
    if (
        not peers and (not trackers or not meta.trackers) and not (dht and not meta.private)
        and not mirrors
    ):  # fmt: skip
        # decided before anything is created on disk
        why = "trackers are turned off" if not trackers else "the torrent lists no usable trackers"
        raise DownloadError(f"no peers: {why} and no {peer_option} was given")
    opts = FetchOptions(
        jobs=workers or default_jobs(), peers=peers, port=port, bind=bind, max_peers=max_peers,
        use_trackers=trackers, io=io, sources=torrent.peer_sources,
        seed_after=_seed_after(meta.total_length, seed_ratio, seed_time, on_seeding),
        dht=dht, dht_bootstrap=dht_bootstrap, dht_port=dht_port, stall_timeout=stall_timeout,
        web_seeds=web_seeds,
        only=selected, sequential=sequential, stream=stream,
        max_download_rate=max_download_rate or None, max_upload_rate=max_upload_rate or None,
    )  # fmt: skip
    return torrent, opts


def _check_limits(max_peers: int, *rates: int | None) -> None:
    if max_peers < 1:
        raise ValueError("max_peers must be at least 1")
    for rate in rates:
        if rate is not None and rate < 0:
            raise ValueError("a rate limit must be 0 (none) or more bytes a second")


def download(
    torrent: Torrent, output: str | os.PathLike[str] | None, opts: FetchOptions,
    emit: ev.EventSink, t0: float,
) -> FetchResult:  # fmt: skip
    """:func:`fetch`'s second half (see :func:`prepare`): says which torrent it is (the
    ``Metadata`` event), then downloads; ``t0`` is when the fetch began (its elapsed time)."""
    from mptorrent.engine.coordinator import fetch as run_fetch
    from mptorrent.engine.coordinator import metadata_event, output_path

    meta = torrent.meta
    out = None if output is None else Path(output)
    emit(metadata_event(meta))
    scratch = None
    if opts.stream is not None and out is None:
        # streamed and not kept: the workers still need files to write verified pieces into
        scratch = _scratch_dir()
        out = scratch / meta.name
    try:
        res = run_fetch(meta, out, opts, emit)
    finally:
        if scratch is not None:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
    return FetchResult(
        path=Path("-") if scratch is not None else output_path(meta, out),
        bytes=res.total_length, elapsed=time.monotonic() - t0, info_hash=meta.info_hash_hex,
        downloaded=res.downloaded, resumed=res.resumed_pieces, peers_used=res.peers_used,
    )  # fmt: skip


def _scratch_dir() -> Path:
    """A fresh folder for a streamed download's data, under $XDG_CACHE_HOME/mptorrent (on
    disk: /tmp is often memory, too small for a film)."""
    import tempfile

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mptorrent"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="stream-", dir=cache))
    except OSError as exc:
        raise StorageError(f"cannot make a folder in {cache}: {exc.strerror}") from None


def _warn(warn: Callable[[str], None] | None, warnings: Iterable[str]) -> None:
    if warn is not None:
        for w in warnings:
            warn(w)


def _save(torrent: Torrent, path: str | os.PathLike[str] | None) -> None:
    if path is None:
        return
    data = torrent.data
    if data is None:  # a Torrent made from parsed metadata alone
        raise ValueError("save_torrent: this Torrent has no .torrent bytes to write")
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror}") from None


def _seed_after(
    total: int, ratio: float | None, seconds: float | None, on_seeding: Callable[[], None] | None
) -> SeedAfter | None:
    """Seeding once complete, by the fetch's own workers, until whichever limit comes
    first; uploads during the download count towards the ratio."""
    from mptorrent.engine.coordinator import SeedAfter

    if ratio is None and seconds is None:
        return None
    if (ratio is not None and ratio <= 0) or (seconds is not None and seconds <= 0):
        raise ValueError("seed_ratio and seed_time must be positive")
    target = ratio * total if ratio is not None else None
    deadline: float | None = None

    def started(_download: object) -> None:
        nonlocal deadline
        if seconds is not None:
            deadline = time.monotonic() + seconds
        if on_seeding is not None:  # the download's summary is out (its Done event)
            on_seeding()

    def until(uploaded: int) -> bool:
        if deadline is not None and time.monotonic() >= deadline:
            return True
        return target is not None and uploaded >= target

    return SeedAfter(until=until, started=started)


# -- the non-blocking handle ----------------------------------------------------------------


class Download:
    """A fetch running on a thread of its own (:func:`start`).

    Every event is kept and each call of :meth:`events` or :meth:`aevents` iterates all of
    them from the first, waiting for more until the download ends, so several consumers
    (threads, asyncio tasks) can follow one download.  :meth:`cancel` stops it the way
    Ctrl-C stops the command line: workers stop, verified pieces stay on disk, and
    :meth:`wait` raises :class:`~mptorrent.errors.Cancelled` (exit code 130).

    Cancelling takes effect at the download's next event: within a fraction of a second
    while downloading (progress is reported several times a second), but a magnet link's
    metadata phase reports little, so there it may take until that phase ends.
    """

    def __init__(
        self, run: Callable[[ev.EventSink], FetchResult], on_event: ev.EventSink | None = None
    ) -> None:
        self._cond = threading.Condition()
        self._events: list[ev.Event] = []
        self._finished = False
        self._result: FetchResult | None = None
        self._error: BaseException | None = None
        self._cancel = threading.Event()
        self._cancel_raised = False
        self._on_event = on_event
        self._progress: ev.Progress | None = None
        self._thread = threading.Thread(
            target=self._run, args=(run,), name="mptorrent-download", daemon=True
        )
        self._thread.start()

    def _sink(self, event: ev.Event) -> None:
        # called on the download's thread; raising here unwinds the fetch (as Ctrl-C does)
        with self._cond:
            self._events.append(event)
            if isinstance(event, ev.Progress):
                self._progress = event
            self._cond.notify_all()
        if self._on_event is not None:
            self._on_event(event)
        final = isinstance(event, ev.Done | ev.Error | ev.Seeded)  # too late to cancel those
        if self._cancel.is_set() and not self._cancel_raised and not final:
            self._cancel_raised = True
            raise Cancelled("cancelled")

    def _run(self, run: Callable[[ev.EventSink], FetchResult]) -> None:
        try:
            result = run(self._sink)
        except BaseException as exc:  # handed to wait()
            with self._cond:
                self._error = exc
        else:
            with self._cond:
                self._result = result
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    @property
    def progress(self) -> ev.Progress | None:
        """The latest progress record (bytes done, total, peers, workers), None before."""
        with self._cond:
            return self._progress

    @property
    def done(self) -> bool:
        """True once the download ended, well or not."""
        with self._cond:
            return self._finished

    def cancel(self) -> None:
        """Stop the download soon (within a fraction of a second once it is downloading);
        does not wait: :meth:`wait` does."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> FetchResult:
        """The result, once complete; raises the download's error (an MptorrentError, or
        TimeoutError if ``timeout`` seconds pass first)."""
        self._thread.join(timeout)
        with self._cond:
            if not self._finished:
                raise TimeoutError("the download is still running")
            if self._error is not None:
                raise self._error
            assert self._result is not None
            return self._result

    def _next(self, index: int, timeout: float | None) -> ev.Event | None:
        """Event number ``index``, waiting for it; None once none will come."""
        with self._cond:
            self._cond.wait_for(lambda: index < len(self._events) or self._finished, timeout)
            return self._events[index] if index < len(self._events) else None

    def events(self) -> Iterator[ev.Event]:
        """Every event of the download, from the first, as they come; ends with it."""
        index = 0
        while (event := self._next(index, None)) is not None:
            yield event
            index += 1

    async def aevents(self) -> AsyncIterator[ev.Event]:
        """:meth:`events` for asyncio: waits in a worker thread, never blocks the loop."""
        import asyncio  # here: asyncio costs the command line 18 ms to import

        index = 0
        while True:
            event = await asyncio.to_thread(self._next, index, 1.0)
            if event is None:
                if self.done and index >= len(self._events):
                    return
                continue  # the wait timed out: ask again (lets cancellation through)
            yield event
            index += 1

    def __enter__(self) -> Download:
        return self

    def __exit__(self, *_exc: object) -> None:
        # leaving the block early cancels; either way the download has ended after it
        if not self.done:
            self.cancel()
        self._thread.join()


def _parameters_of(
    model: Callable[P, object],
) -> Callable[[Callable[..., Download]], Callable[P, Download]]:
    """Give the decorated function ``model``'s parameters (for mypy, ``help()`` and IDEs),
    so that :func:`start` and :func:`fetch` have one list of options to keep."""

    def give(f: Callable[..., Download]) -> Callable[P, Download]:
        f.__signature__ = inspect.signature(model).replace(  # type: ignore[attr-defined]
            return_annotation="Download"
        )
        return f

    return give


@_parameters_of(fetch)
def start(*args: Any, **kwargs: Any) -> Download:
    """Begin :func:`fetch` on a thread and return its :class:`Download` handle at once;
    the same parameters. ``on_event`` (if given) is called on that thread."""
    call = inspect.signature(fetch).bind(*args, **kwargs)  # a wrong name: TypeError here
    call.apply_defaults()
    params = dict(call.arguments)
    on_event = params.pop("on_event")
    return Download(_plan(**params), on_event)


# -- verify, create, seed -------------------------------------------------------------------


@frozen(slots=False)
class VerifyResult(Record):
    """What :func:`verify` found: piece indices that are bad or touch a missing file."""

    pieces: int
    valid: int
    invalid: tuple[int, ...]
    missing: tuple[int, ...]

    @property
    def complete(self) -> bool:
        return not self.invalid and not self.missing


def verify(
    torrent: str | os.PathLike[str] | bytes | Torrent,
    path: str | os.PathLike[str],
    *,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    only: Iterable[Selector] = (),
) -> VerifyResult:
    """Check the data at ``path`` against ``torrent`` (``on_progress`` gets bytes checked,
    as they are); unlike ``mptorrent verify``, an incomplete result is not an error.

    ``only``: check just the pieces of the files these select (as :func:`fetch` would
    fetch them; shared pieces are read with the parts file); ``pieces`` is then how many
    pieces that is."""
    from mptorrent.disk import checker
    from mptorrent.disk.storage import Layout
    from mptorrent.mp import default_jobs

    t = torrent if isinstance(torrent, Torrent) else Torrent.load(torrent)
    selectors = tuple(only)
    layout = Layout.for_torrent(t.meta, Path(path), t.select(selectors) if selectors else None)
    wanted = [i for i, p in enumerate(layout.priorities()) if p]
    partial = layout.selected is not None
    report = checker.verify(
        t.meta, layout, jobs=workers or default_jobs(), progress=on_progress,
        pieces=wanted if partial else None,
        # a shared piece's other bytes: from its file if there, else from the parts file
        files=range(len(layout.files)) if partial else None,
    )  # fmt: skip
    return VerifyResult(
        len(wanted), report.valid_count, tuple(report.invalid), tuple(report.missing)
    )


def create(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    trackers: Sequence[str | Sequence[str]] = (),
    piece_length: int | None = None,
    private: bool = False,
    comment: str | None = None,
    web_seeds: Sequence[str] = (),
    workers: int | None = None,
    version: Literal["v1", "v2", "hybrid"] = "v1",
) -> Torrent:
    """Make a torrent of a file or a folder; written to ``output`` if given.

    ``trackers``: one URL per tier, or a list of URLs for a tier of several;
    ``piece_length``: None picks one for the size; ``version``: BitTorrent v1, v2-only or
    hybrid (BEP 52).
    """
    from mptorrent.disk.create import create as make
    from mptorrent.mp import default_jobs

    tiers = [[t] if isinstance(t, str) else list(t) for t in trackers]
    data = make(
        Path(path), trackers=tiers, piece_length=piece_length, jobs=workers or default_jobs(),
        private=private, comment=comment, web_seeds=list(web_seeds), version=version,
    )  # fmt: skip
    if output is not None:
        try:
            Path(output).write_bytes(data)
        except OSError as exc:
            raise StorageError(f"cannot write {output}: {exc.strerror}") from None
    return Torrent.load(data)


@frozen(slots=False)
class SeedResult(Record):
    """What a :func:`seed` did before it stopped."""

    uploaded: int
    port: int


def seed(
    torrent: str | os.PathLike[str] | bytes | Torrent,
    path: str | os.PathLike[str],
    *,
    workers: int | None = None,
    port: int = 0,
    bind: str = "0.0.0.0",
    trackers: bool = True,
    on_event: ev.EventSink | None = None,
    until: Callable[[int], bool] | None = None,
    on_ready: Callable[[int], None] | None = None,
    io: IoMode = "auto",
    on_progress: Callable[[int], None] | None = None,
    dht: bool = True,
    dht_bootstrap: Iterable[PeerLike] = (),
    dht_port: int | None = None,
    max_upload_rate: int | None = None,
) -> SeedResult:
    """Serve ``path``'s data until ``until(bytes uploaded)`` is true (checked a few times a
    second) or KeyboardInterrupt; ``on_ready`` gets the port once peers can connect (as
    ``on_event`` gets :class:`~mptorrent.events.SeedingReady`).  The data is verified
    first: ``on_progress`` gets bytes checked, as they are.  ``dht``, ``dht_bootstrap``,
    ``dht_port``: as for :func:`fetch` (the seed announces itself in the DHT).
    ``max_upload_rate``: bytes a second for all workers together (None or 0: no limit)."""
    from mptorrent.engine.seeder import Seeder
    from mptorrent.mp import default_jobs

    _check_limits(1, max_upload_rate)
    t = torrent if isinstance(torrent, Torrent) else Torrent.load(torrent)
    seeder = Seeder(
        t.meta, Path(path), jobs=workers or default_jobs(), bind=bind, port=port, io=io,
        use_trackers=trackers, events=on_event, dht=dht, dht_bootstrap=_peers(dht_bootstrap),
        dht_port=dht_port, max_upload_rate=max_upload_rate or None,
        until=None if until is None else (lambda stats: until(stats.uploaded)),
    )  # fmt: skip
    if on_ready is not None:
        ready = on_ready

        def tell() -> None:
            seeder.ready.wait()
            ready(seeder.stats.port)

        threading.Thread(target=tell, daemon=True).start()
    stats = seeder.run(progress=on_progress)
    return SeedResult(stats.uploaded, stats.port)


__all__ = [
    "Download", "FetchResult", "SeedResult", "Selector", "Source", "Torrent", "TorrentFile",
    "VerifyResult",
    "create", "fetch", "seed", "start", "verify",
]  # fmt: skip
