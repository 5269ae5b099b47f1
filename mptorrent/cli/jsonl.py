"""The ``--json`` output: one JSON object per line on stdout, for scripts.

:class:`JsonLines` is an event sink (``mptorrent.events``) like the progress bar: it
turns each typed record into one object of the schema in ``docs/events.md`` (version
:data:`VERSION`) and writes it as one line.  Every object has ``"event"`` and ``"t"``
(seconds since the sink was made); the first also has ``"v"``.  ``progress`` lines are
thinned to one every :data:`PROGRESS_EVERY` seconds (the engine reports several times
that), and carry the download and upload rates over the time since the previous one.

:func:`record` is the pure mapping, kept apart from the writing to test it alone.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, TextIO, TypeAlias, assert_never

if TYPE_CHECKING:
    from mptorrent import events as ev
    from mptorrent.messages import PeerAddr

from mptorrent.errors import OutputClosed

VERSION: Final = 1
PROGRESS_EVERY: Final = 0.5  # seconds between progress lines

Record: TypeAlias = dict[str, object]  # JSON-ready: str, numbers, None, lists and dicts of them


_NO_SOURCES: Mapping[PeerAddr, str] = MappingProxyType({})


def _addr(peer: PeerAddr | None) -> str | None:
    return None if peer is None else str(peer)


def record(
    event: ev.Event, manual: frozenset[PeerAddr] = frozenset(),
    sources: Mapping[PeerAddr, str] = _NO_SOURCES,
) -> Record | None:  # fmt: skip
    """The JSON object for ``event`` without ``t`` and ``v``; None for ``Progress``, which
    :class:`JsonLines` writes itself (it needs the previous one for the rates).

    A ``peer`` line's ``source`` is the event's (``PeerConnected``), else ``sources``' (what
    earlier events said of that peer), else ``manual`` for the peers the user gave
    (``--peer``), else null."""
    from mptorrent import events as ev

    match event:
        case ev.FetchingMetadata(info_hash, name):
            return {"event": "magnet", "info_hash": info_hash, "name": name}
        case ev.MetadataReceived(name, size, pieces, seconds, peers):
            return {
                "event": "metadata_fetched", "name": name, "size": size, "pieces": pieces,
                "seconds": round(seconds, 3), "peers": peers,
            }  # fmt: skip
        case ev.Metadata(name, info_hash, size, piece_length, pieces, files):
            return {
                "event": "metadata", "name": name, "info_hash": info_hash, "size": size,
                "piece_length": piece_length, "pieces": pieces,
                "files": [{"path": p, "length": n} for p, n in files],
            }  # fmt: skip
        case ev.CheckingExisting():
            return {"event": "checking"}
        case ev.Started(total, done, pieces, resumed):
            return {
                "event": "started", "total": total, "done": done, "pieces": pieces,
                "resumed": resumed,
            }  # fmt: skip
        case ev.PortBusy(wanted, port):
            return {"event": "port", "wanted": wanted, "port": port}
        case ev.Progress():
            return None
        case ev.PeerConnected(worker, peer, source):
            return _peer(peer, "connected", worker, None, source or _source(peer, manual, sources))
        case ev.PeerGone(worker, peer):
            return _peer(peer, "gone", worker, None, _source(peer, manual, sources))
        case ev.PeerBanned(peer, reason, worker):
            return _peer(peer, "banned", worker, reason, _source(peer, manual, sources))
        case ev.PieceVerified(index, size, worker, peer):
            return {
                "event": "piece", "index": index, "size": size, "worker": worker,
                "peer": _addr(peer),
            }  # fmt: skip
        case ev.PieceFailed(index, worker, peers, retrying):
            return {
                "event": "hashfail", "index": index, "worker": worker,
                "peers": [str(p) for p in peers], "retrying": retrying,
            }  # fmt: skip
        case ev.TrackerReply(url, tier, announce, peers, interval, seeders, leechers, warning):
            return {
                "event": "tracker", "url": url, "outcome": "ok", "peers": peers, "tier": tier,
                "announce": announce, "interval": interval, "seeders": seeders,
                "leechers": leechers, "message": warning,
            }  # fmt: skip
        case ev.TrackerError(message, url):
            # url: None where one message reports several trackers' errors (it names each)
            return {"event": "tracker", "url": url, "outcome": "error", "peers": 0,
                    "message": message}  # fmt: skip
        case ev.WorkerError(worker, message):
            return {"event": "worker", "worker": worker, "restarted": False, "reason": message}
        case ev.WorkerRestarted(worker, exitcode, reason, restarts):
            return {
                "event": "worker", "worker": worker, "restarted": True, "reason": reason,
                "exitcode": exitcode, "restarts": restarts,
            }  # fmt: skip
        case ev.Done():
            rate = event.downloaded / event.elapsed if event.elapsed > 0 else 0.0
            return {
                "event": "done", "bytes": event.total, "downloaded": event.downloaded,
                "elapsed": round(event.elapsed, 3), "rate": round(rate, 1),
                "wasted": max(0, event.received - event.downloaded),
                "resumed": event.resumed, "peers_used": event.peers_used,
                "banned": event.banned, "hash_failures": event.hash_failures,
                "uploaded": event.uploaded,
            }  # fmt: skip
        case ev.SeedingReady(_name, address, port, pieces):
            return {
                "event": "seeding", "state": "ready", "address": address, "port": port,
                "pieces": pieces,
            }  # fmt: skip
        case ev.SeedingStopped(reason):
            return {"event": "seeding", "state": "stopped", "reason": reason}
        case ev.Seeded(uploaded):
            return {"event": "seeded", "uploaded": uploaded}
        case ev.Error(message, exit_status):
            return error_record(message, exit_status)
        case _:
            if TYPE_CHECKING:  # mypy: every event needs its line; at run time, skip one
                assert_never(event)
            return None


def _source(
    peer: PeerAddr, manual: frozenset[PeerAddr], sources: Mapping[PeerAddr, str]
) -> str | None:
    return sources.get(peer) or ("manual" if peer in manual else None)


def _peer(
    peer: PeerAddr, state: str, worker: int, reason: str | None, source: str | None
) -> Record:
    return {
        "event": "peer", "address": str(peer), "state": state, "worker": worker,
        "reason": reason, "source": source,
    }  # fmt: skip


def error_record(message: str, exit_status: int) -> Record:
    return {"event": "error", "message": message, "exit": int(exit_status)}


class JsonLines:
    """An event sink writing the ``--json`` lines; safe to call from several threads.

    :meth:`end_with_error` writes the closing ``error`` line unless the stream has already
    ended (with one of ``last``: ``done`` or ``error``; ``seeded`` or ``error`` for a fetch
    that seeds after), so that every failure ends the stream exactly once.
    """

    def __init__(
        self, out: TextIO | None = None, *, clock: Callable[[], float] = time.monotonic,
        progress_every: float = PROGRESS_EVERY, last: tuple[str, ...] = ("done", "error"),
        manual: Iterable[PeerAddr] = (),
    ) -> None:  # fmt: skip
        self.last = last
        self.manual = frozenset(manual)
        self.sources: dict[PeerAddr, str] = {}  # from PeerConnected, for gone and banned lines
        self.out = out if out is not None else sys.stdout
        self.clock = clock
        self.t0 = clock()
        self.progress_every = progress_every
        self.first = True
        self.ended = False
        self._lock = threading.Lock()
        self._last: tuple[float, int, int] | None = None  # t, received, uploaded

    def __call__(self, event: ev.Event) -> None:
        from mptorrent import events as ev

        if isinstance(event, ev.Progress):
            self._progress(event)
            return
        if isinstance(event, ev.PeerConnected) and event.source is not None:
            self.sources.setdefault(event.peer, event.source)
        rec = record(event, self.manual, self.sources)
        if rec is not None:
            self.write(rec)

    def _progress(self, p: ev.Progress) -> None:
        now = self.clock()
        last = self._last
        if last is not None and now - last[0] < self.progress_every:
            return
        down = up = 0.0
        if last is not None and now > last[0]:
            down = max(0, p.received - last[1]) / (now - last[0])
            up = max(0, p.uploaded - last[2]) / (now - last[0])
        self._last = (now, p.received, p.uploaded)
        self.write({
            "event": "progress", "done": p.done, "total": p.total, "rate_down": round(down, 1),
            "rate_up": round(up, 1), "peers": p.peers, "workers": p.workers,
        })  # fmt: skip

    def write(self, rec: Record) -> None:
        """Write one object (its ``event`` key first, then ``t``, ``v`` on the first line)."""
        with self._lock:
            if self.ended:
                return  # nothing follows done or error
            head: Record = {"event": rec["event"], "t": round(self.clock() - self.t0, 3)}
            if self.first:
                head["v"] = VERSION
                self.first = False
            line = json.dumps({**head, **rec}, ensure_ascii=True, allow_nan=False)
            if rec["event"] in self.last:
                self.ended = True
            try:
                self.out.write(line + "\n")
                self.out.flush()
            except BrokenPipeError:
                # raised through the engine, it stops the command as Ctrl-C does
                self.ended = True  # and nothing more is written
                raise OutputClosed("stdout is closed: nobody reads the --json lines") from None

    def end_with_error(self, message: str, exit_status: int) -> None:
        self.write(error_record(message, exit_status))

    def close(self) -> None:
        """Nothing to close (the progress bar's sink has a bar to clear)."""
