"""Typed events: the text the command line renders for each, and what a real fetch emits.

The renderer tests pin the exact lines users saw when these were still sentences
(tests/test_cli.py, tests/adversarial and tests/interop match on some of them).
The fetch tests run the coordinator against real ``mptorrent seed`` processes on
loopback addresses and check the stream a collecting sink receives.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest

from mptorrent import events as ev
from mptorrent.cli.main import BarProgress
from mptorrent.cli.render import render, summary
from mptorrent.engine.coordinator import FetchOptions, SeedAfter, fetch
from mptorrent.errors import DownloadError, ExitStatus
from mptorrent.messages import PeerAddr
from tests.test_coordinator import Case, make_case, same_tree, start_seeders

KiB = 1024
MiB = 1024 * KiB
A = PeerAddr("127.0.0.5", 6881)
B6 = PeerAddr("::1", 51413)

DONE = ev.Done(
    total=100 * MiB, downloaded=100 * MiB, elapsed=2.0, resumed=0, peers_used=3, banned=0,
    hash_failures=0, received=100 * MiB, uploaded=0,
)  # fmt: skip

# Every event and the exact text the command line prints for it (None: nothing).
LINES: list[tuple[ev.Event, str | None]] = [
    (
        ev.FetchingMetadata("ab" * 20, "a name"),
        f"mptorrent: fetching the metadata of a name ({'ab' * 20})",
    ),
    (ev.FetchingMetadata("ab" * 20, None), f"mptorrent: fetching the metadata of {'ab' * 20}"),
    (
        ev.MetadataReceived("a name", 10 * MiB, 40, 0.256, 2),
        "mptorrent: metadata received in 0.26 s: a name, 10.0 MiB in 40 piece(s)",
    ),
    (ev.Metadata("a name", "ab" * 20, 10 * MiB, 256 * KiB, 40, (("a name", 10 * MiB),)), None),
    (ev.CheckingExisting(), "mptorrent: checking existing data"),
    (ev.Started(total=10 * MiB, done=MiB, pieces=40, resumed=4), None),
    (ev.PortBusy(6881, 40123), "mptorrent: port 6881 is busy; accepting peers on port 40123"),
    (ev.Progress(done=MiB, total=10 * MiB, peers=3, workers=2), None),
    (ev.PeerConnected(0, A), None),
    (ev.PeerGone(1, B6), None),
    (
        ev.PeerBanned(A, "sent data that failed the hash check of piece 7", 0),
        "mptorrent: banned 127.0.0.5:6881: sent data that failed the hash check of piece 7",
    ),
    (ev.PieceVerified(index=3, size=256 * KiB, worker=1, peer=A), None),
    (ev.PieceVerified(index=4, size=256 * KiB, worker=None, peer=None), None),
    (ev.PieceFailed(12, 0, (A, B6), retrying=True), "mptorrent: piece 12 failed its hash check"),
    (ev.TrackerReply("http://t.example:80", 0, "started", 5, 1800, 3, 1, None), None),
    (
        ev.TrackerReply("udp://t.example:6969", 1, None, 0, 900, None, None, "slow down"),
        "mptorrent: tracker warning: slow down",
    ),
    (
        ev.TrackerError("t.example:80: connection refused"),
        "mptorrent: tracker error: t.example:80: connection refused",
    ),
    (
        ev.WorkerError(2, "worker 2 failed: ValueError: boom", "Traceback ...\n"),
        "mptorrent: worker 2 failed: ValueError: boom",
    ),
    (
        ev.WorkerRestarted(1, -9, "worker 1 died (signal 9)", 1),
        "mptorrent: worker 1 died (signal 9); restarting it",
    ),
    (DONE, "done: 100.0 MiB in 2.0 s, 50.0 MiB/s average, 3 peer(s) used"),
    (
        ev.SeedingStopped("worker 0 crashed (signal 11); giving up after 20 worker restarts"),
        "mptorrent: worker 0 crashed (signal 11); giving up after 20 worker restarts; "
        "seeding stops",
    ),
    (
        ev.SeedingReady("a.iso", "127.0.0.9", 6881, 15, 16),
        "seeding a.iso (15/16 pieces) on 127.0.0.9:6881; Ctrl-C stops",
    ),
    (ev.Seeded(3 * MiB + MiB // 2), "seeded: 3.5 MiB uploaded in all"),
    (ev.Error("no peers: the trackers returned none", ExitStatus.ERROR), None),
]


# -- the records --------------------------------------------------------------------------


def test_every_event_type_has_its_line_pinned() -> None:
    assert {type(e) for e, _ in LINES} == set(typing.get_args(ev.Event))


def test_events_are_frozen_plain_records() -> None:
    for event, _ in LINES:
        for f in dataclasses.fields(event):
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(event, f.name, None)
        assert not hasattr(event, "__dict__")  # slots
        # plain fields only: what a JSON stream or an API caller gets
        for value in dataclasses.astuple(event):
            assert value is None or isinstance(value, int | float | str | tuple | list)


def test_equal_values_of_different_events_are_different_events() -> None:
    gone: object = ev.PeerGone(0, A)
    assert ev.PeerConnected(0, A) != gone
    assert ev.PeerConnected(0, A) == ev.PeerConnected(0, A)


# -- rendering ------------------------------------------------------------------------------


@pytest.mark.parametrize(("event", "line"), LINES, ids=lambda x: type(x).__name__)
def test_render(event: ev.Event, line: str | None) -> None:
    assert render(event) == line


@pytest.mark.parametrize(("event", "line"), LINES, ids=lambda x: type(x).__name__)
def test_quiet_keeps_only_the_summaries(event: ev.Event, line: str | None) -> None:
    quiet = render(event, quiet=True)
    if isinstance(event, ev.Done | ev.Seeded):
        assert quiet == line  # -q hides the bar and the notes, not the result
    else:
        assert quiet is None


def test_verbose_adds_a_workers_traceback_even_with_quiet() -> None:
    event = ev.WorkerError(2, "worker 2 failed: ValueError: boom", "Traceback (most recent)\n  x\n")
    assert render(event, verbose=True) == (
        "mptorrent: worker 2 failed: ValueError: boom\nTraceback (most recent)\n  x"
    )
    assert render(event, quiet=True, verbose=True) == "Traceback (most recent)\n  x"
    assert render(ev.WorkerError(2, "m", ""), verbose=True) == "mptorrent: m"


def test_untrusted_text_is_escaped() -> None:
    line = render(ev.TrackerError("t.example:80: \x1b[2Jgone"))
    assert line == "mptorrent: tracker error: t.example:80: \\x1b[2Jgone"
    line = render(ev.PeerBanned(A, "bad\nline", 0))
    assert line == "mptorrent: banned 127.0.0.5:6881: bad\\nline"


def test_summary_names_resumed_banned_and_wasted() -> None:
    more = dataclasses.replace(DONE, resumed=7, banned=2, received=103 * MiB)
    assert summary(more) == (
        "done: 100.0 MiB in 2.0 s, 50.0 MiB/s average, 3 peer(s) used, "
        "7 piece(s) already on disk, 2 peer(s) banned, 3.0 MiB received twice or discarded"
    )
    # nothing fetched at all (everything was on disk): no division by zero
    assert summary(dataclasses.replace(DONE, downloaded=0, elapsed=0.0, received=0)).startswith(
        "done: 100.0 MiB in 0.0 s, 0 B/s average"
    )


# -- the command line's consumer -----------------------------------------------------------


def test_bar_progress_prints_the_rendered_lines(capsys: pytest.CaptureFixture[str]) -> None:
    sink = BarProgress(quiet=False)  # stderr is not a terminal here: no bar
    for event, _ in LINES:
        sink(event)
    sink.close()
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [line for _, line in LINES if line is not None]


def test_bar_progress_quiet_and_demo(capsys: pytest.CaptureFixture[str]) -> None:
    BarProgress(quiet=True)(ev.TrackerError("x"))
    BarProgress(quiet=True)(DONE)
    BarProgress(quiet=False, summary=False)(DONE)  # the demo prints its own result
    assert capsys.readouterr().err.splitlines() == [render(DONE)]


# -- what a real fetch emits ------------------------------------------------------------------


class Collector:
    """The simplest sink: keeps every event."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def __call__(self, event: ev.Event) -> None:
        self.events.append(event)

    def of(self, kind: type[ev.Event]) -> list[ev.Event]:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return make_case(tmp_path_factory.mktemp("events"), 3 * MiB + 777, 64 * KiB)


@pytest.fixture(scope="module")
def peers(case: Case) -> Iterator[list[PeerAddr]]:
    yield from start_seeders(case, ["127.0.0.91", "127.0.0.92"])


def _opts(peers: list[PeerAddr], **kw: object) -> FetchOptions:
    return FetchOptions(jobs=2, peers=tuple(peers), use_trackers=False, **kw)  # type: ignore[arg-type]


def test_a_fetch_reports_progress_every_piece_and_done(
    case: Case, peers: list[PeerAddr], tmp_path: Path
) -> None:
    sink = Collector()
    out = tmp_path / "movie.bin"
    res = fetch(case.meta, out, _opts(peers), sink)
    assert same_tree(out, case.root)
    meta, events = case.meta, sink.events

    assert events[0] == ev.Started(meta.total_length, 0, meta.num_pieces, 0)
    verified = typing.cast(list[ev.PieceVerified], sink.of(ev.PieceVerified))
    assert sorted(e.index for e in verified) == list(range(meta.num_pieces))
    assert sum(e.size for e in verified) == meta.total_length
    assert all(e.worker in (0, 1) and e.peer in peers for e in verified)

    progress = typing.cast(list[ev.Progress], sink.of(ev.Progress))
    assert progress, "no Progress event"
    done = [p.done for p in progress]
    assert done == sorted(done) and done[-1] == meta.total_length
    assert all(p.total == meta.total_length and p.workers <= 2 for p in progress)
    # each Progress counts exactly the pieces verified before it
    seen = 0
    for e in events:
        if isinstance(e, ev.PieceVerified):
            seen += e.size
        elif isinstance(e, ev.Progress):
            assert e.done == seen

    connected = typing.cast(list[ev.PeerConnected], sink.of(ev.PeerConnected))
    assert {c.peer for c in connected} <= set(peers) and connected
    assert not sink.of(ev.PieceFailed) and not sink.of(ev.PeerBanned)
    assert not sink.of(ev.WorkerRestarted) and not sink.of(ev.Error)
    assert not sink.of(ev.TrackerReply) and not sink.of(ev.TrackerError)  # trackers off

    last = events[-1]
    assert isinstance(last, ev.Done) and len(sink.of(ev.Done)) == 1
    assert last.total == last.downloaded == res.downloaded == meta.total_length
    assert (last.elapsed, last.peers_used, last.resumed) == (res.elapsed, res.peers_used, 0)
    assert last.received >= meta.total_length


def test_a_complete_output_is_checked_and_done_at_once(
    case: Case, peers: list[PeerAddr], tmp_path: Path
) -> None:
    out = tmp_path / "movie.bin"
    fetch(case.meta, out, _opts(peers))
    sink = Collector()
    fetch(case.meta, out, _opts(peers), sink)
    n, size = case.meta.num_pieces, case.meta.total_length
    assert [type(e) for e in sink.events] == [ev.CheckingExisting, ev.Started, ev.Done]
    assert sink.events[1] == ev.Started(size, size, n, n)
    assert render(sink.events[2]).endswith(f"{n} piece(s) already on disk")  # type: ignore[union-attr]


def test_seeding_after_reports_done_then_seeded(
    case: Case, peers: list[PeerAddr], tmp_path: Path
) -> None:
    sink = Collector()
    began: list[int] = []

    def until(uploaded: int) -> bool:
        return True  # stop at once: only the order of events matters here

    plan = SeedAfter(until=until, started=lambda _r: began.append(len(sink.events)))
    res = fetch(case.meta, tmp_path / "movie.bin", _opts(peers, seed_after=plan), sink)
    kinds = [type(e) for e in sink.events]
    assert kinds.count(ev.Done) == 1 and kinds[-1] is ev.Seeded
    assert began == [kinds.index(ev.Done) + 1]  # the summary comes before seeding starts
    assert sink.events[-1] == ev.Seeded(res.uploaded)


def test_a_failed_fetch_reports_the_error_it_raises(tmp_path: Path, case: Case) -> None:
    sink = Collector()
    with pytest.raises(DownloadError) as err:
        fetch(case.meta, tmp_path / "out.bin", FetchOptions(jobs=1, use_trackers=False), sink)
    assert sink.events == [ev.Error(str(err.value), int(ExitStatus.ERROR))]
