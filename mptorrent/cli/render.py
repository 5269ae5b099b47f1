"""The text the command line shows for each event of a fetch or a seed.

:func:`render` is the one place that turns :mod:`mptorrent.events` into the lines
users read on stderr; the progress bar in ``cli.main`` draws ``Started`` and
``Progress`` and prints whatever this returns for the rest.  Kept apart from
``cli.main`` (and from click and tqdm) so that it is a pure function to test.

``cli.main`` imports this module at start-up (for :func:`safe_text`): the events
module is imported where it is used, as commands other than fetch, seed and demo
never need it (defining its classes takes a few milliseconds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, assert_never

if TYPE_CHECKING:
    from mptorrent import events as ev


def safe_text(text: str) -> str:
    """Show untrusted names with control characters (ANSI escapes...) escaped."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def _note(text: str, quiet: bool) -> str | None:
    # notes are on stderr with the program's name; -q silences them
    return None if quiet else f"mptorrent: {safe_text(text)}"


def summary(done: ev.Done) -> str:
    """The line a fetch ends with (shown even with -q)."""
    from mptorrent.disk.storage import human_size

    rate = done.downloaded / done.elapsed if done.elapsed > 0 else 0.0
    text = (
        f"done: {human_size(done.total)} in {done.elapsed:.1f} s, "
        f"{human_size(rate)}/s average, {done.peers_used} peer(s) used"
    )
    if done.resumed:
        text += f", {done.resumed} piece(s) already on disk"
    if done.banned:
        text += f", {done.banned} peer(s) banned"
    wasted = done.received - done.downloaded
    if wasted > done.total // 100:  # endgame duplicates, failed pieces
        text += f", {human_size(wasted)} received twice or discarded"
    return text


def render(event: ev.Event, *, quiet: bool = False, verbose: bool = False) -> str | None:
    """The text to print for ``event`` (one or more lines), or None to print nothing.

    ``Started`` and ``Progress`` belong to the progress bar and print nothing; ``Error``
    neither, as the failing command prints the error itself when it exits.
    """
    from mptorrent import events as ev

    match event:
        case ev.Started() | ev.Progress() | ev.PeerConnected() | ev.PeerGone():
            return None
        case ev.PieceVerified() | ev.Error():
            return None
        case ev.Metadata():  # the lines above the bar say what they need of it
            return None
        case ev.FetchingMetadata(info_hash, name):
            what = info_hash if name is None else f"{name} ({info_hash})"
            return _note(f"fetching the metadata of {what}", quiet)
        case ev.MetadataReceived(name, size, pieces, seconds):
            from mptorrent.disk.storage import human_size

            return _note(
                f"metadata received in {seconds:.2f} s: {name}, {human_size(size)} in {pieces} "
                "piece(s)",
                quiet,
            )
        case ev.CheckingExisting():
            return _note("checking existing data", quiet)
        case ev.PortBusy(wanted, port):
            return _note(f"port {wanted} is busy; accepting peers on port {port}", quiet)
        case ev.PeerBanned(peer, reason):
            return _note(f"banned {peer}: {reason}", quiet)
        case ev.PieceFailed(index):
            return _note(f"piece {index} failed its hash check", quiet)
        case ev.TrackerReply(warning=warning):
            return None if warning is None else _note(f"tracker warning: {warning}", quiet)
        case ev.TrackerError(message):
            return _note(f"tracker error: {message}", quiet)
        case ev.WorkerError(message=message, detail=detail):
            # the traceback shows with -v, even with -q
            lines = [line for line in [_note(message, quiet)] if line is not None]
            if verbose and detail:
                lines.append(detail.rstrip())
            return "\n".join(lines) or None
        case ev.WorkerRestarted(reason=reason):
            return _note(f"{reason}; restarting it", quiet)
        case ev.SeedingReady(name, address, port, pieces, total):
            if quiet:
                return None
            where = f"{address}:{port}"
            return f"seeding {safe_text(name)} ({pieces}/{total} pieces) on {where}; Ctrl-C stops"
        case ev.SeedingStopped(reason):
            return _note(f"{reason}; seeding stops", quiet)
        case ev.Done():
            return summary(event)
        case ev.Seeded(uploaded):
            from mptorrent.disk.storage import human_size

            return f"seeded: {human_size(uploaded)} uploaded in all"
        case _:
            assert_never(event)
