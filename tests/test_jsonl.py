"""The ``--json`` sink alone: every event type becomes one line that the published schema
(docs/events.schema.json) accepts, the first line carries the version, progress lines are
thinned and carry rates, and nothing follows the last line.

Real runs of ``fetch/seed/verify --json`` are in tests/interop/test_json.py.
"""

from __future__ import annotations

import io
import json
import typing
from pathlib import Path
from typing import Any

import pytest

from mptorrent import events as ev
from mptorrent.cli.jsonl import VERSION, JsonLines, record
from tests.schema_check import SchemaError, validate
from tests.test_events import LINES

SCHEMA_PATH = Path(__file__).parent.parent / "docs" / "events.schema.json"


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return loaded


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_the_schema_is_draft_2020_12_and_names_every_event_once() -> None:
    s = schema()
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    names = [branch["properties"]["event"]["const"] for branch in s["oneOf"]]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("event", [e for e, _ in LINES], ids=lambda e: type(e).__name__)
def test_every_event_type_writes_a_valid_line(event: ev.Event) -> None:
    buf = io.StringIO()
    sink = JsonLines(buf)
    sink(event)
    (line,) = lines(buf)
    validate(line, schema())
    assert line["v"] == VERSION and line["t"] >= 0
    assert list(line)[:2] == ["event", "t"]


def test_every_event_type_is_mapped() -> None:
    # Progress is the sink's own (it needs the previous one); all others map alone
    mapped = {type(e) for e, _ in LINES if record(e) is not None}
    assert mapped | {ev.Progress} == set(typing.get_args(ev.Event))


def test_the_validator_rejects_what_the_schema_forbids() -> None:
    good = {"event": "piece", "t": 0.5, "index": 3, "size": 16384, "worker": 1, "peer": None}
    validate(good, schema())
    for bad in (
        {**good, "index": -1},
        {**good, "index": True},
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "peer"},
        {**good, "event": "nonsense"},
        {**good, "v": 2},
    ):
        with pytest.raises(SchemaError):
            validate(bad, schema())


def test_progress_is_thinned_and_carries_rates() -> None:
    buf, clock = io.StringIO(), Clock()
    sink = JsonLines(buf, clock=clock)
    sink(ev.Progress(0, 1000, 1, 2, received=0, uploaded=0))
    for step in range(1, 10):  # every 1/8 s, 100 bytes received and 10 sent each time
        clock.now += 0.125
        sink(ev.Progress(step * 100, 1000, 1, 2, received=step * 100, uploaded=step * 10))
    got = lines(buf)
    assert [g["done"] for g in got] == [0, 400, 800]
    assert got[1]["rate_down"] == pytest.approx(800.0)
    assert got[1]["rate_up"] == pytest.approx(80.0)
    assert got[1]["t"] == pytest.approx(0.5)
    for g in got:
        validate(g, schema())


def test_nothing_follows_the_last_line() -> None:
    buf = io.StringIO()
    sink = JsonLines(buf)
    sink(ev.Error("no peers", 1))
    sink.end_with_error("interrupted", 130)  # the CLI's catch-all: the stream already ended
    sink(ev.PieceVerified(0, 1, 0, None))
    assert [g["event"] for g in lines(buf)] == ["error"]
    assert lines(buf)[0]["exit"] == 1


def test_a_fetch_that_seeds_after_ends_with_seeded() -> None:
    buf = io.StringIO()
    sink = JsonLines(buf, last=("seeded", "error"))
    done = next(e for e, _ in LINES if isinstance(e, ev.Done))
    sink(done)
    sink(ev.Seeded(5))
    sink(ev.Seeded(6))
    assert [g["event"] for g in lines(buf)] == ["done", "seeded"]


def test_names_with_control_characters_stay_ascii() -> None:
    buf = io.StringIO()
    JsonLines(buf)(ev.Metadata("a\u202eb\x1b[31m", "ab" * 20, 1, 1, 1, (("a\u202eb", 1),)))
    text = buf.getvalue()
    assert text.isascii() and "\x1b" not in text
    assert lines(buf)[0]["name"] == "a\u202eb\x1b[31m"


def test_a_given_peer_is_marked_manual() -> None:
    from mptorrent.messages import PeerAddr

    given, other = PeerAddr("127.0.0.5", 6881), PeerAddr("::1", 51413)
    buf = io.StringIO()
    sink = JsonLines(buf, manual=[given])
    sink(ev.PeerConnected(0, given))
    sink(ev.PeerGone(0, other))
    got = lines(buf)
    assert [(g["address"], g["source"]) for g in got] == [
        ("127.0.0.5:6881", "manual"), ("[::1]:51413", None),
    ]  # fmt: skip
    for g in got:
        validate(g, schema())


def test_a_peer_line_says_where_the_peer_came_from() -> None:
    from mptorrent.messages import PeerAddr

    pexed, dialled_us = PeerAddr("127.0.0.6", 6881), PeerAddr("127.0.0.7", 40000)
    old = PeerAddr("127.0.0.8", 1)
    buf = io.StringIO()
    sink = JsonLines(buf, manual=[old])
    sink(ev.PeerConnected(0, pexed, "pex"))
    sink(ev.PeerConnected(1, dialled_us, "incoming"))
    sink(ev.PeerGone(0, pexed))  # gone and banned lines repeat the source connected said
    sink(ev.PeerBanned(dialled_us, "sent bad data", 1))
    sink(ev.PeerConnected(0, old))  # an event that does not know: --peer peers are manual
    got = lines(buf)
    assert [(g["state"], g["source"]) for g in got] == [
        ("connected", "pex"), ("connected", "incoming"), ("gone", "pex"), ("banned", "incoming"),
        ("connected", "manual"),
    ]  # fmt: skip
    for g in got:
        validate(g, schema())


def test_a_tracker_error_line_names_its_tracker() -> None:
    buf = io.StringIO()
    sink = JsonLines(buf)
    sink(ev.TrackerError("tracker 127.0.0.1:9 failed: refused", "http://127.0.0.1:9"))
    sink(ev.TrackerError("a; b"))  # one message for several trackers: no single url
    got = lines(buf)
    assert [(g["outcome"], g["url"]) for g in got] == [
        ("error", "http://127.0.0.1:9"), ("error", None),
    ]  # fmt: skip
    for g in got:
        validate(g, schema())


class _ClosedPipe(io.StringIO):
    def write(self, _text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_stdout_stops_the_command_and_ends_the_stream() -> None:
    from mptorrent.errors import ExitStatus, OutputClosed

    sink = JsonLines(_ClosedPipe())
    with pytest.raises(OutputClosed) as info:
        sink(ev.CheckingExisting())
    assert info.value.exit_code == 141 and info.value.exit_status is ExitStatus.OUTPUT_CLOSED
    sink.end_with_error("stdout is closed", 141)  # the CLI's catch-all: nothing more is tried
    sink(ev.PieceVerified(0, 1, 0, None))
