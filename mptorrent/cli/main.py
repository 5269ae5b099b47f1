"""The ``mptorrent`` command: a thin click adapter over the engine.

Nothing imports this module.  It owns click, tqdm and exit codes: every
``MptorrentError`` becomes one line ``mptorrent: error: ...`` on stderr and the
error's exit status; a traceback appears only with ``-v``.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple, Never, NoReturn

import click

from mptorrent import __version__
from mptorrent.cli.render import render, safe_text
from mptorrent.errors import (
    DownloadError,
    ExitStatus,
    MptorrentError,
    OutputClosed,
    StreamClosed,
)
from mptorrent.mp import default_jobs

# Start-up time is part of every command's run time, so modules only some commands need
# (tqdm alone is ~35 ms: it reads its version with importlib.metadata) are imported in
# the functions that use them.
if TYPE_CHECKING:
    from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]  # stubs optional

    from mptorrent.cli.jsonl import JsonLines
    from mptorrent.disk import checker
    from mptorrent.disk.storage import IoChoice, Layout
    from mptorrent.engine.api import VerifyResult
    from mptorrent.engine.metadata import MetadataResult
    from mptorrent.events import Event
    from mptorrent.messages import PeerAddr
    from mptorrent.proto import metainfo
    from mptorrent.proto.magnet import Magnet


class MptorrentGroup(click.Group):
    """The root click group: turns any :class:`MptorrentError` into one ``mptorrent: error:`` line
    and its own exit status, and Ctrl-C into 130; tracebacks (and a worker's) only with -v."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OutputClosed:  # stdout's reader left (--json | head): no words, 141
            _stdout_to_devnull()
            ctx.exit(int(ExitStatus.OUTPUT_CLOSED))
        except StreamClosed as exc:  # -o -'s reader left early (the player quit): one line
            _stdout_to_devnull()
            self._fail(ctx, str(exc), exc.exit_status)
        except MptorrentError as exc:
            self._fail(ctx, str(exc), exc.exit_status, exc.detail)
        except KeyboardInterrupt:
            self._fail(ctx, "interrupted", ExitStatus.INTERRUPTED)

    @staticmethod
    def _fail(ctx: click.Context, message: str, status: int, detail: str = "") -> None:
        if ctx.meta.get("mptorrent.verbose"):
            import traceback

            traceback.print_exc()
            if detail:  # where a worker process met it
                click.echo(detail.rstrip(), err=True)
        click.echo(f"mptorrent: error: {safe_text(message)}", err=True)
        ctx.exit(int(status))


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so that what is still buffered for the closed pipe goes
    nowhere at exit instead of into a second BrokenPipeError (and Python's note about it)."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # no stdout, or no file behind it
        pass


def _verbose() -> bool:
    return bool(click.get_current_context().meta.get("mptorrent.verbose"))


def _set_verbose(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta["mptorrent.verbose"] = True
    return value


io_option = click.option(
    "--io", "io", type=click.Choice(["auto", "mmap", "pwrite"]), default="auto",
    show_default=True,
    help="How workers reach the data: through its memory map, or with pread/pwrite (less "
    "CPU per byte written; auto picks it on network and FUSE filesystems, where a failed "
    "page fault would crash a worker).",
)  # fmt: skip
verbose_option = click.option(
    "-v", "--verbose", is_flag=True, expose_value=False, is_eager=True,
    callback=_set_verbose, help="Show tracebacks and more detail.",
)  # fmt: skip
jobs_option = click.option(
    "-j", "--jobs", type=click.IntRange(min=1, max=512), default=None,
    help="Worker processes (default: the CPU count).",
)  # fmt: skip
quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bar.")


@click.group(cls=MptorrentGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mptorrent")
@verbose_option
def cli() -> None:
    """A BitTorrent client whose worker processes download, verify and
    assemble pieces in parallel."""


def shows_bar(quiet: bool) -> bool:
    """Whether a progress bar would show: tqdm's ``disable=None`` hides it off a terminal.

    Deciding it here spares importing tqdm where no bar shows (scripts, -q).
    """
    try:
        return not quiet and sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


@contextmanager
def byte_bar(total: int, desc: str, quiet: bool) -> Iterator[checker.Progress]:
    if not shows_bar(quiet):
        yield lambda _n: None
        return
    from tqdm import tqdm

    with tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
        leave=False, dynamic_ncols=True,
    ) as bar:  # fmt: skip

        def advance(n: int) -> None:
            bar.update(n)

        yield advance


# -- info ---------------------------------------------------------------------


def load_torrent(path: Path, *, quiet: bool = False) -> metainfo.Metainfo:
    """Parse a .torrent and show its warnings (skipped trackers...) on stderr."""
    from mptorrent.proto import metainfo

    meta = metainfo.load(path)
    if not quiet:
        for w in meta.warnings:
            click.echo(f"mptorrent: warning: {safe_text(w)}", err=True)
    return meta


def info_dict(meta: metainfo.Metainfo) -> dict[str, Any]:
    return {
        "name": meta.name,
        "info_hash": meta.info_hash_hex,
        "info_hash_v2": None if meta.info_hash_v2 is None else meta.info_hash_v2.hex(),
        "meta_version": meta.meta_version,
        "total_length": meta.total_length,
        "piece_length": meta.piece_length,
        "num_pieces": meta.num_pieces,
        "private": meta.private,
        "multi_file": meta.multi_file,
        "trackers": [list(t) for t in meta.trackers],
        "web_seeds": list(meta.web_seeds),
        "comment": meta.comment,
        "warnings": list(meta.warnings),
        "created_by": meta.created_by,
        "creation_date": meta.creation_date,
        "files": [
            {
                "index": i,
                "path": "/".join(f.path),
                "length": f.length,
                "offset": f.offset,
                "padding": f.padding,
            }
            for i, f in enumerate(meta.files)
        ],
    }


def _peers(
    _ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]
) -> tuple[PeerAddr, ...]:
    try:
        return tuple(parse_peer(v) for v in value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _web_seeds(
    _ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    if not value:
        return value  # proto.webseed loads only for a fetch that has web seeds
    from mptorrent.proto.webseed import seed_url_problem

    for url in value:
        problem = seed_url_problem(url)
        if problem is not None:
            raise click.BadParameter(f"{safe_text(url)[:80]}: {problem}")
    return value


web_seed_option = click.option(
    "--web-seed", "web_seeds", multiple=True, callback=_web_seeds, metavar="URL",
    help="Also download from this HTTP(S) mirror (BEP 19; repeatable): a file for a single-file "
    "torrent, a directory (ending in /) holding NAME/... for a multi-file one.",
)  # fmt: skip
save_torrent_option = click.option(
    "--save-torrent", type=click.Path(dir_okay=False, path_type=Path),
    help="Write the .torrent to FILE (a magnet link's: once its metadata is verified).",
)  # fmt: skip
metadata_timeout_option = click.option(
    "--metadata-timeout", type=click.FloatRange(min=0, min_open=True), default=60.0,
    show_default=True, help="Seconds a magnet link's metadata may take to arrive.",
)  # fmt: skip


class DhtChoice(NamedTuple):
    """The DHT options of fetch, seed and info MAGNET, as one parameter."""

    on: bool
    bootstrap: tuple[tuple[str, int], ...]
    port: int | None

    def kwargs(self) -> dict[str, Any]:
        return {"dht": self.on, "dht_bootstrap": self.bootstrap, "dht_port": self.port}


def dht_options(f: Callable[..., None]) -> Callable[..., None]:
    """``--dht/--no-dht``, ``--dht-bootstrap`` and ``--dht-port``, passed to ``f`` as
    one ``dht`` keyword (a :class:`DhtChoice`)."""

    @functools.wraps(f)
    def wrapper(
        *args: Any, dht_on: bool, dht_bootstrap: tuple[PeerAddr, ...], dht_port: int | None,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        boot = tuple((a.host, a.port) for a in dht_bootstrap)
        f(*args, dht=DhtChoice(dht_on, boot, dht_port), **kwargs)

    wrapper = click.option(
        "--dht-port", type=click.IntRange(0, 65535),
        help="UDP port of the DHT node [default: the --port number; 0: any free port].",
    )(wrapper)  # fmt: skip
    wrapper = click.option(
        "--dht-bootstrap", multiple=True, callback=_peers, metavar="HOST:PORT",
        help="Bootstrap the DHT from this node (repeatable); replaces the built-in routers "
        "and the routing table saved in $XDG_CACHE_HOME/mptorrent/dht.dat.",
    )(wrapper)  # fmt: skip
    wrapper = click.option(
        "--dht/--no-dht", "dht_on", default=True, show_default=True,
        help="Find peers in the DHT (BEP 5); never for private torrents.",
    )(wrapper)  # fmt: skip
    return wrapper


def _save_torrent(path: Path, data: bytes) -> None:
    from mptorrent.errors import StorageError

    try:
        path.write_bytes(data)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror}") from None


def load_source(
    source: str, *, quiet: bool = False, save_torrent: Path | None = None,
    magnet_phase: Callable[[Magnet], MetadataResult] | None = None,
) -> tuple[metainfo.Metainfo, tuple[PeerAddr, ...]]:  # fmt: skip
    """The torrent of a .torrent path or a magnet link, and the peers its metadata came from.

    A magnet link's metadata is fetched by ``magnet_phase`` (given the parsed
    :class:`~mptorrent.proto.magnet.Magnet`, it returns a ``MetadataResult``).
    """
    from mptorrent.proto.magnet import is_magnet

    if not is_magnet(source):
        meta = load_torrent(Path(source), quiet=quiet)
        if save_torrent is not None:
            _save_torrent(save_torrent, Path(source).read_bytes())
        return meta, ()
    from mptorrent.proto.magnet import parse_magnet, torrent_from_metadata

    magnet = parse_magnet(source)  # BadMagnet: exit 3, one line
    if not quiet:
        for w in magnet.warnings:
            click.echo(f"mptorrent: warning: {safe_text(w)}", err=True)
    if magnet_phase is None:
        raise click.UsageError("this command takes a .torrent file, not a magnet link")
    found = magnet_phase(magnet)
    if save_torrent is not None:
        _save_torrent(save_torrent, torrent_from_metadata(found.info, magnet, found.piece_layers))
    if not quiet:
        for w in found.meta.warnings:
            click.echo(f"mptorrent: warning: {safe_text(w)}", err=True)
    return found.meta, found.peers


def _notes(quiet: bool = False) -> Callable[[Event], None]:
    """A sink that prints the rendered events as lines on stderr."""
    verbose = _verbose()

    def show(event: Event) -> None:
        text = render(event, quiet=quiet, verbose=verbose)
        if text is not None:
            click.echo(text, err=True)

    return show


json_option = click.option(
    "--json", "as_json", is_flag=True,
    help="One JSON object per line on stdout, no progress bar (docs/events.md).",
)  # fmt: skip


@contextmanager
def _json_stream(stream: JsonLines | None) -> Iterator[None]:
    """End a ``--json`` stream with an ``error`` line whatever stops the command (exit 130
    for Ctrl-C and SIGTERM), unless it ended already; without a stream, do nothing."""
    if stream is None:
        yield
        return
    try:
        with _sigterm_as_interrupt():
            yield
    except MptorrentError as exc:
        stream.end_with_error(str(exc), int(exc.exit_status))
        raise
    except click.ClickException as exc:
        stream.end_with_error(exc.format_message(), exc.exit_code)
        raise
    except KeyboardInterrupt:
        stream.end_with_error("interrupted", int(ExitStatus.INTERRUPTED))
        raise


def _json_lines(
    as_json: bool, *, last: tuple[str, ...] = ("done", "error"), manual: Iterable[PeerAddr] = ()
) -> JsonLines | None:
    if not as_json:
        return None
    from mptorrent.cli.jsonl import JsonLines

    return JsonLines(last=last, manual=manual)


@cli.command()
@click.argument("torrent", metavar="TORRENT|MAGNET", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--peer", "peers", multiple=True, callback=_peers,
    help="A peer HOST:PORT to ask for a magnet link's metadata (repeatable).",
)  # fmt: skip
@click.option("--bind", default="0.0.0.0", show_default=True,
              help="Address to dial peers and announce from (magnet links).")  # fmt: skip
@click.option("--no-trackers", is_flag=True, help="Ask only x.pe and --peer peers (magnet links).")
@save_torrent_option
@metadata_timeout_option
@dht_options
@verbose_option
def info(
    torrent: str, as_json: bool, peers: tuple[PeerAddr, ...], bind: str, no_trackers: bool,
    save_torrent: Path | None, metadata_timeout: float, dht: DhtChoice,
) -> None:  # fmt: skip
    """Show what a .torrent file holds, or a magnet link's torrent (its metadata is
    fetched from peers first)."""
    from mptorrent.disk.storage import human_size

    def phase(magnet: Magnet) -> MetadataResult:
        from mptorrent.engine.metadata import fetch_metadata

        return fetch_metadata(
            magnet, peers=peers, use_trackers=not no_trackers, bind=bind,
            timeout=metadata_timeout, events=_notes(), announce_stopped=True, **dht.kwargs(),
        )  # fmt: skip

    meta, _found = load_source(torrent, save_torrent=save_torrent, magnet_phase=phase)
    if as_json:
        import json

        # ASCII escapes keep bidi overrides and other tricks in names off the terminal
        click.echo(json.dumps(info_dict(meta), indent=2, ensure_ascii=True))
        return
    s = safe_text
    click.echo(f"name:        {s(meta.name)}")
    click.echo(f"info-hash:   {meta.info_hash_hex}")
    if meta.info_hash_v2 is not None:
        click.echo(f"info-hash v2: {meta.info_hash_v2.hex()} ({meta.meta_version})")
    click.echo(f"size:        {human_size(meta.total_length)} ({meta.total_length} bytes)")
    click.echo(f"pieces:      {meta.num_pieces} x {human_size(meta.piece_length)}")
    click.echo(f"private:     {'yes' if meta.private else 'no'}")
    if meta.comment:
        click.echo(f"comment:     {s(meta.comment)}")
    if meta.created_by:
        click.echo(f"created by:  {s(meta.created_by)}")
    if meta.trackers:
        click.echo("trackers:")
        for n, tier in enumerate(meta.trackers):
            for url in tier:
                click.echo(f"  tier {n}: {s(url)}")
    if meta.web_seeds:
        click.echo("web seeds:")
        for url in meta.web_seeds:
            click.echo(f"  {s(url)}")
    click.echo("files:")  # "#N": the index fetch --only takes
    if not meta.multi_file:
        click.echo(f"  {s(meta.name)}  ({human_size(meta.total_length)})  #0")
        return
    click.echo(f"  {s(meta.name)}/")
    shown: set[tuple[str, ...]] = set()
    for i, f in enumerate(meta.files):
        if f.padding:
            continue
        for depth in range(1, len(f.path)):
            d = f.path[:depth]
            if d not in shown:
                shown.add(d)
                click.echo(f"  {'  ' * depth}{s(d[-1])}/")
        click.echo(f"  {'  ' * len(f.path)}{s(f.path[-1])}  ({human_size(f.length)})  #{i}")


# -- create -------------------------------------------------------------------


def _piece_size(_ctx: click.Context, _param: click.Parameter, value: str) -> int | None:
    from mptorrent.disk.create import parse_piece_size

    try:
        return parse_piece_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("-t", "--tracker", "trackers", multiple=True,
              help="Tracker URL; repeat for more tiers, commas put URLs in one tier.")  # fmt: skip
@click.option("--piece-size", default="auto", callback=_piece_size, show_default=True,
              help="auto, or a power of two from 16K to 16M.")  # fmt: skip
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the .torrent (default: NAME.torrent).")  # fmt: skip
@click.option("--v2", "v2", is_flag=True,
              help="A BitTorrent v2-only torrent (BEP 52); v1 clients cannot read it.")  # fmt: skip
@click.option("--hybrid", is_flag=True,
              help="A hybrid v1+v2 torrent (BEP 52), for v1 and v2 clients.")  # fmt: skip
@jobs_option
@click.option("--private", is_flag=True, help="Set the private flag (BEP 27).")
@click.option("--comment", help="A comment stored in the torrent.")
@click.option("--webseed", "webseeds", multiple=True, help="Web seed URL (BEP 19).")
@quiet_option
@verbose_option
def create(
    path: Path, trackers: tuple[str, ...], piece_size: int | None, output: Path | None,
    jobs: int | None, private: bool, comment: str | None, webseeds: tuple[str, ...], quiet: bool,
    v2: bool, hybrid: bool,
) -> None:  # fmt: skip
    """Make a .torrent from a file or a directory (BitTorrent v1 unless --v2 or --hybrid)."""
    from mptorrent.disk.create import create as make
    from mptorrent.disk.create import scan
    from mptorrent.disk.storage import human_size
    from mptorrent.proto import metainfo

    if v2 and hybrid:
        raise click.UsageError("--v2 and --hybrid exclude each other")
    src = scan(path)
    out = output or Path(f"{src.name}.torrent")
    tiers = [[u.strip() for u in t.split(",") if u.strip()] for t in trackers]
    with byte_bar(src.total_length, "hashing", quiet) as update:
        data = make(
            path, trackers=tiers, piece_length=piece_size, jobs=jobs or default_jobs(),
            private=private, comment=comment, web_seeds=list(webseeds), progress=update,
            version="v2" if v2 else "hybrid" if hybrid else "v1",
        )  # fmt: skip
    meta = metainfo.parse(data)
    try:
        out.write_bytes(data)
    except OSError as exc:
        raise click.ClickException(f"cannot write {out}: {exc.strerror}") from None
    click.echo(
        f"{out}: {safe_text(meta.name)}, {human_size(meta.total_length)} in {meta.num_pieces} "
        f"pieces of {human_size(meta.piece_length)}, info-hash {meta.info_hash_hex}"
        + ("" if meta.info_hash_v2 is None else f", v2 info-hash {meta.info_hash_v2.hex()}")
    )


# -- verify -------------------------------------------------------------------


@cli.command()
@click.argument("torrent", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("path", type=click.Path(path_type=Path))
@jobs_option
@click.option(
    "--only",
    "only",
    multiple=True,
    metavar="GLOB",
    help="Check only the files fetch --only GLOB fetched (repeatable; #N: file N).",
)
@json_option
@quiet_option
@verbose_option
def verify(
    torrent: Path, path: Path, jobs: int | None, only: tuple[str, ...], as_json: bool,
    quiet: bool,
) -> None:  # fmt: skip
    """Recheck downloaded data against a .torrent; exit 0 only if all pieces verify."""
    stream = _json_lines(as_json)
    with _json_stream(stream):
        _verify(torrent, path, jobs or default_jobs(), quiet, stream, only)


def _verify(
    torrent: Path, path: Path, jobs: int, quiet: bool, stream: JsonLines | None,
    only: tuple[str, ...] = (),
) -> None:  # fmt: skip
    from mptorrent.disk.storage import Layout
    from mptorrent.engine import api

    t0 = time.monotonic()
    meta = load_torrent(torrent, quiet=quiet)
    selected = api.Torrent(meta).select(only) if only else None
    layout = Layout.for_torrent(meta, path, selected)  # here, for the files' states
    if stream is not None:
        from mptorrent import events as ev
        from mptorrent.engine.coordinator import metadata_event

        stream(metadata_event(meta))
        checked = 0

        def advance(n: int) -> None:
            nonlocal checked
            checked += n
            total = layout.selected_length
            stream(ev.Progress(min(checked, total), total, 0, jobs))

        report = api.verify(api.Torrent(meta), path, workers=jobs, on_progress=advance, only=only)
        _verify_json(stream, meta, layout, report, time.monotonic() - t0)
        return
    with byte_bar(layout.selected_length, "verifying", quiet) as update:
        report = api.verify(api.Torrent(meta), path, workers=jobs, on_progress=update, only=only)
    bad = set(report.invalid) | set(report.missing)
    for i, f in enumerate(meta.files):
        if f.padding or not layout.is_selected(i) or not bad.intersection(layout.file_pieces(i)):
            continue
        p = layout.paths[i]
        state = "missing" if p is None or not Path(p).is_file() else "incomplete"
        if state == "incomplete" and p is not None and Path(p).stat().st_size != f.length:
            state = "wrong size"
        click.echo(f"{state}: {safe_text('/'.join(f.path))}")
    of = "" if layout.selected is None else " selected"  # --only: the selected files' pieces
    click.echo(
        f"{report.valid} of {report.pieces}{of} pieces valid, "
        f"{len(report.invalid)} invalid, {len(report.missing)} missing"
    )
    if not report.complete:
        sys.exit(int(ExitStatus.ERROR))


def _file_state(meta: metainfo.Metainfo, layout: Layout, i: int) -> str:
    p = layout.paths[i]
    if p is None or not Path(p).is_file():
        return "missing"
    return "wrong size" if Path(p).stat().st_size != meta.files[i].length else "incomplete"


def _verify_json(
    stream: JsonLines, meta: metainfo.Metainfo, layout: Layout, report: VerifyResult,
    elapsed: float,
) -> None:  # fmt: skip
    bad = set(report.invalid) | set(report.missing)
    for i, f in enumerate(meta.files):
        if not f.padding and layout.is_selected(i) and bad.intersection(layout.file_pieces(i)):
            stream.write(
                {"event": "file", "path": "/".join(f.path), "state": _file_state(meta, layout, i)}
            )
    stream.write({
        "event": "verified", "pieces": report.pieces, "valid": report.valid,
        "invalid": sorted(report.invalid), "missing": sorted(report.missing),
    })  # fmt: skip
    if not report.complete:
        msg = f"{len(report.invalid)} invalid and {len(report.missing)} missing piece(s)"
        stream.end_with_error(msg, int(ExitStatus.ERROR))
        sys.exit(int(ExitStatus.ERROR))
    rate = layout.selected_length / elapsed if elapsed > 0 else 0.0
    stream.write({
        "event": "done", "bytes": layout.selected_length, "elapsed": round(elapsed, 3),
        "rate": round(rate, 1), "wasted": 0,
    })  # fmt: skip


# -- fetch --------------------------------------------------------------------


def parse_peer(text: str) -> PeerAddr:
    """HOST:PORT or [IPv6]:PORT."""
    from mptorrent.messages import PeerAddr

    t = text.strip()
    if t.startswith("["):
        host, sep, rest = t[1:].partition("]")
        port_s = rest.removeprefix(":") if sep else ""
    else:
        host, _, port_s = t.rpartition(":")
    if not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return PeerAddr(host, int(port_s))


def _rate(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    """A rate limit option: ``20M``, ``512K`` (powers of 1024) in bytes a second; 0: none."""
    if value is None:
        return None
    from mptorrent.policy.ratelimit import parse_rate

    try:
        return parse_rate(value) or None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _rate_text(rate: int) -> str:
    return f"{rate / (1 << 20):.1f} MiB/s" if rate >= 1 << 20 else f"{rate / 1024:.0f} KiB/s"


def _limits_text(download: int | None, upload: int | None) -> str | None:
    """How the bar and the summary say which rate limits hold (None: none)."""
    parts = []
    if download:
        parts.append(f"down<={_rate_text(download)}")
    if upload:
        parts.append(f"up<={_rate_text(upload)}")
    return " ".join(parts) or None


def rate_option(name: str, what: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return click.option(
        name, metavar="RATE", callback=_rate,
        help=f"Limit {what} for all workers together, bytes/s with K/M/G (powers of 1024), "
        "e.g. 20M; 0: no limit.",
    )  # fmt: skip


class BarProgress:
    """The command line's sink for a fetch's events: one tqdm bar on stderr, and the
    lines :func:`mptorrent.cli.render.render` gives for the other events.

    ``Done`` closes the bar and prints the summary, unless ``summary`` is False (the
    demo prints its own).
    """

    def __init__(self, quiet: bool, verbose: bool = False, *, summary: bool = True) -> None:
        self.quiet = quiet
        self.verbose = verbose
        self.summary = summary
        self.bar: tqdm[Never] | None = None
        from mptorrent import events  # the engine loads it anyway

        self._ev = events  # an import statement per event would cost a call per piece
        self.limits: str | None = None  # the rate limits, shown on the bar and in the summary

    def __call__(self, event: Event) -> None:
        ev = self._ev
        if type(event) is ev.PieceVerified:
            return  # one per piece, and the bar draws from Progress: the cheapest way out
        if isinstance(event, ev.Progress):
            if self.bar is None:
                return
            if event.done > self.bar.n:
                self.bar.update(event.done - self.bar.n)
            postfix = f"peers={event.peers} workers={event.workers}"
            if self.limits:
                postfix += f" {self.limits}"
            self.bar.set_postfix_str(postfix, refresh=False)
            return
        if isinstance(event, ev.Started):
            self.start(event.total, event.done)
            return
        if isinstance(event, ev.Done):
            self.close()
            if not self.summary:
                return
            text = render(event, quiet=self.quiet, verbose=self.verbose)
            if text is not None and self.limits:
                text += f" ({self.limits.replace('<=', ' limited to ')})"
            self.write(text)
            return
        self.write(render(event, quiet=self.quiet, verbose=self.verbose))

    def start(self, total: int, done: int) -> None:
        if not shows_bar(self.quiet):
            return
        from tqdm import tqdm

        self.bar = tqdm(
            total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024,
            dynamic_ncols=True, leave=False, desc="fetch",
        )  # fmt: skip

    def write(self, text: str | None) -> None:
        if text is None:
            return
        if self.bar is None:
            click.echo(text, err=True)
        else:  # tqdm.write keeps the line clear of the bar
            self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None  # later notes (while seeding) print as plain lines


@cli.command()
@click.argument("torrent", metavar="TORRENT|MAGNET", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Output file, or directory for multi-file; default ./NAME; '-': stdout "
              "(the one file, verified, in order).")  # fmt: skip
@jobs_option
@click.option(
    "--peer", "peers", multiple=True, callback=_peers, help="Add a peer HOST:PORT (repeatable)."
)
@click.option("--only", "only", multiple=True, metavar="GLOB",
              help="Fetch only the files whose path inside the torrent matches GLOB "
              "(repeatable; #N: file N of mptorrent info).")  # fmt: skip
@click.option(
    "--sequential/--no-sequential",
    default=None,
    help="Pieces in order, a read-ahead window first [default: with -o - only].",
)
@click.option(
    "--keep",
    type=click.Path(path_type=Path),
    help="With -o -: also keep the data at PATH (else a temporary copy is removed).",
)
@click.option("--port", type=click.IntRange(0, 65535), default=6881, show_default=True,
              help="Port to accept peers on and to announce (0: any free port).")  # fmt: skip
@click.option("--bind", default="0.0.0.0", show_default=True,
              help="Address to accept peers on and announce from.")  # fmt: skip
@click.option("--max-peers", type=click.IntRange(1, 5000), default=50, show_default=True,
              help="Connections for all workers together (each gets a share).")  # fmt: skip
@rate_option("--max-download-rate", "downloading")
@rate_option("--max-upload-rate", "uploading")
@click.option("--no-trackers", is_flag=True, help="Use only --peer addresses.")
@click.option("--seed-ratio", type=click.FloatRange(min=0, min_open=True),
              help="After completing, keep seeding until uploaded/size reaches R.")  # fmt: skip
@click.option("--seed-time", type=click.FloatRange(min=0, min_open=True),
              help="After completing, keep seeding for MIN minutes.")  # fmt: skip
@web_seed_option
@save_torrent_option
@metadata_timeout_option
@dht_options
@click.option("--stall-timeout", type=click.FloatRange(min=0, min_open=True), default=300.0,
              show_default=True, help="Give up (exit 1) after SEC without any data received "
              "(no peer found, or none sends).")  # fmt: skip
@io_option
@json_option
@quiet_option
@verbose_option
def fetch(
    torrent: str, output: Path | None, jobs: int | None, peers: tuple[PeerAddr, ...],
    only: tuple[str, ...], sequential: bool | None, keep: Path | None, port: int,
    bind: str, max_peers: int, no_trackers: bool, seed_ratio: float | None,
    seed_time: float | None, save_torrent: Path | None, metadata_timeout: float, io: IoChoice,
    as_json: bool, quiet: bool, dht: DhtChoice, stall_timeout: float, web_seeds: tuple[str, ...],
    max_download_rate: int | None, max_upload_rate: int | None,
) -> None:  # fmt: skip
    """Download a torrent (a .torrent file or a magnet link) with parallel worker processes."""
    to_stdout = output == Path("-")
    if to_stdout and as_json:
        raise click.UsageError("-o - and --json both want stdout: choose one")
    if to_stdout and sys.stdout.isatty():  # as curl does: binary data would garble the terminal
        raise click.UsageError("-o - writes the file's bytes to stdout, a terminal: redirect it")
    if keep is not None and not to_stdout:
        raise click.UsageError("--keep goes with -o - (otherwise -o says where the data goes)")
    in_order = to_stdout if sequential is None else sequential
    picks = _Picks(only, in_order, sys.stdout.buffer if to_stdout else None)
    if to_stdout:
        output = keep
    seeds = seed_ratio is not None or seed_time is not None
    last = ("seeded", "error") if seeds else ("done", "error")
    stream = _json_lines(as_json, last=last, manual=peers)
    with _json_stream(stream):
        _fetch(
            torrent, output, jobs, peers, port, bind, max_peers, no_trackers, seed_ratio,
            seed_time, save_torrent, metadata_timeout, io, quiet or as_json, stream, dht,
            stall_timeout, web_seeds, picks, (max_download_rate, max_upload_rate),
        )  # fmt: skip


class _Picks(NamedTuple):
    """fetch's --only, --sequential and -o - (the API's only, sequential and stream)."""

    only: tuple[str, ...] = ()
    sequential: bool = False
    stream: BinaryIO | None = None

    def kwargs(self) -> dict[str, Any]:
        return {"only": self.only, "sequential": self.sequential, "stream": self.stream}


def _import_engine() -> None:
    """The engine (api, coordinator, worker: most of a fetch's start-up), imported with the
    cyclic garbage collector paused: imports make some 100,000 objects and no garbage, and
    the collector's passes over them cost about 5 ms of the time before the first request."""
    import gc

    gc.disable()
    try:
        from mptorrent.engine import api, coordinator  # noqa: F401 - the fetch runs both
    finally:
        gc.enable()


def _fetch(
    torrent: str, output: Path | None, jobs: int | None, peers: tuple[PeerAddr, ...], port: int,
    bind: str, max_peers: int, no_trackers: bool, seed_ratio: float | None,
    seed_time: float | None, save_torrent: Path | None, metadata_timeout: float, io: IoChoice,
    quiet: bool, stream: JsonLines | None, dht: DhtChoice, stall_timeout: float,
    web_seeds: tuple[str, ...] = (),
    picks: _Picks | None = None,
    rates: tuple[int | None, int | None] = (None, None),  # --max-download-rate, --max-upload-rate
) -> None:  # fmt: skip
    # the Python API's fetch (mptorrent.fetch), in its two halves: the download runs
    # under this command's signal handling and closes the bar whatever happens
    _import_engine()
    from mptorrent.engine import api

    progress: BarProgress | JsonLines
    if stream is not None:
        progress = stream
    else:
        progress = BarProgress(quiet, verbose=_verbose())
        progress.limits = _limits_text(*rates)

    def warn(text: str) -> None:
        click.echo(f"mptorrent: warning: {safe_text(text)}", err=True)

    def seeding() -> None:  # the download's summary is out (its Done event closed the bar)
        click.echo("mptorrent: seeding until the ratio or time limit; Ctrl-C stops", err=True)

    t0 = time.monotonic()
    found, opts = api.prepare(
        torrent, workers=jobs, peers=peers, trackers=not no_trackers, emit=progress, port=port,
        bind=bind, max_peers=max_peers, metadata_timeout=metadata_timeout, io=io,
        seed_ratio=seed_ratio, seed_time=None if seed_time is None else seed_time * 60,
        save_torrent=save_torrent, warn=None if quiet else warn,
        on_seeding=None if quiet else seeding, peer_option="--peer",
        stall_timeout=stall_timeout, web_seeds=web_seeds, max_download_rate=rates[0],
        max_upload_rate=rates[1], **dht.kwargs(), **(picks or _Picks()).kwargs(),
    )  # fmt: skip
    with _sigterm_as_interrupt():
        try:
            # ends with the summary (Done or Seeded)
            api.download(found, output, opts, progress, t0)
        finally:
            progress.close()


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops a fetch the same graceful way Ctrl-C does (exit 130)."""
    import signal

    def handler(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# -- seed, tracker ------------------------------------------------------------


@cli.command()
@click.argument("torrent", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("path", type=click.Path(path_type=Path))
@jobs_option
@click.option("--port", type=click.IntRange(0, 65535), default=6881, show_default=True,
              help="Port to listen on (0: any free port).")  # fmt: skip
@click.option("--bind", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--no-trackers", is_flag=True, help="Do not announce.")
@rate_option("--max-upload-rate", "uploading")
@dht_options
@io_option
@json_option
@quiet_option
@verbose_option
def seed(
    torrent: Path, path: Path, jobs: int | None, port: int, bind: str, no_trackers: bool,
    io: IoChoice, as_json: bool, quiet: bool, dht: DhtChoice, max_upload_rate: int | None,
) -> None:  # fmt: skip
    """Serve a torrent's data to other peers until Ctrl-C."""
    stream = _json_lines(as_json)
    with _json_stream(stream):
        _seed(
            torrent, path, jobs, port, bind, no_trackers, io, quiet or as_json, stream, dht,
            max_upload_rate,
        )  # fmt: skip


def _seed(
    torrent: Path, path: Path, jobs: int | None, port: int, bind: str, no_trackers: bool,
    io: IoChoice, quiet: bool, stream: JsonLines | None, dht: DhtChoice,
    max_upload_rate: int | None = None,
) -> None:  # fmt: skip
    from mptorrent.engine import api

    meta = load_torrent(torrent, quiet=quiet)
    verbose = _verbose()

    def show(event: Event) -> None:
        if stream is not None:
            stream(event)
            return
        # shown with -q too (-q hides the bar), except the line that says it is ready
        text = render(event, quiet=quiet and _is_ready(event), verbose=verbose)
        if text is not None:
            click.echo(text, err=True)

    if stream is not None:
        from mptorrent.engine.coordinator import metadata_event

        stream(metadata_event(meta))

    with _sigterm_as_interrupt(), byte_bar(meta.total_length, "verifying", quiet) as update:
        api.seed(
            api.Torrent(meta), path, workers=jobs, port=port, bind=bind,
            trackers=not no_trackers, on_event=show, io=io, on_progress=update,
            max_upload_rate=max_upload_rate, **dht.kwargs(),
        )  # fmt: skip


def _is_ready(event: Event) -> bool:
    from mptorrent import events as ev

    return isinstance(event, ev.SeedingReady)


@cli.command("tracker")
@click.option("--bind", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=6969, show_default=True)
@click.option("--interval", type=click.IntRange(10, 86400), default=1800, show_default=True,
              help="Re-announce interval given to peers, seconds.")  # fmt: skip
@verbose_option
def tracker_cmd(bind: str, port: int, interval: int) -> None:
    """Run a small HTTP tracker (for a LAN or tests) until Ctrl-C."""
    from mptorrent.netio.trackerserver import serve

    def ready(srv: Any) -> None:
        click.echo(f"tracker on {srv.announce_url}", err=True)

    with _sigterm_as_interrupt():
        serve(bind, port, interval, on_ready=ready)


# -- demo ---------------------------------------------------------------------


def _size(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    t = value.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1000, "M": 1000**2, "G": 1000**3}.get(t[-1:], 1)
    num = t[:-1] if t[-1:] in "KMG" else t
    try:
        n = int(float(num) * mult)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size like 500M") from None
    if n < 1:
        raise click.BadParameter("size must be positive")
    return n


@cli.command()
@click.option("--size", default="500M", callback=_size, show_default=True,
              help="Size of BigMovie.mp4 (K, M, G are powers of 1000).")  # fmt: skip
@click.option("--peers", type=click.IntRange(1, 26), default=3, show_default=True,
              help="Seeders PeerA, PeerB, ... on 127.0.0.11 upwards.")  # fmt: skip
@click.option("-j", "--jobs", type=click.IntRange(1, 512), default=3, show_default=True,
              help="Worker processes of the fetch.")  # fmt: skip
@click.option("--piece-size", default="1M", callback=_piece_size, show_default=True)
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path),
              help="Work in DIR and keep everything there.")  # fmt: skip
@quiet_option
@verbose_option
def demo(size: int, peers: int, jobs: int, piece_size: int | None, keep: Path | None,
         quiet: bool) -> None:  # fmt: skip
    """The reference scenario: a loopback swarm serves BigMovie.mp4 to a parallel fetch."""
    from mptorrent.cli.demo import run_demo

    def say(text: str) -> None:
        click.echo(f"demo: {text}", err=True)

    progress = BarProgress(quiet, verbose=_verbose(), summary=False)  # it prints its own
    with _sigterm_as_interrupt():
        try:
            res = run_demo(
                size=size, peers=peers, jobs=jobs, piece_length=piece_size or 1 << 20,
                keep=keep, progress=progress, say=say,
            )  # fmt: skip
        finally:
            progress.close()
    f = res.fetch
    rate = f.downloaded / f.elapsed / 1e6 if f.elapsed else 0.0
    click.echo(f"demo: downloaded {res.size / 1e6:.0f} MB in {f.elapsed:.2f} s ({rate:.1f} MB/s)")
    per_worker = ", ".join(f"worker {w}: {n}" for w, n in sorted(f.pieces_per_worker.items()))
    click.echo(f"demo: pieces per worker: {per_worker}")
    per_peer = ", ".join(
        f"{res.peer_names.get(a, str(a))} ({a}): {n}"
        for a, n in sorted(f.pieces_per_peer.items(), key=lambda kv: kv[0].host)
    )
    click.echo(f"demo: pieces per peer:   {per_peer}")
    if not res.sha256_ok:
        click.echo("mptorrent: error: the download's SHA-256 does not match the original", err=True)
        sys.exit(int(ExitStatus.ERROR))
    click.echo("demo: SHA-256 of the download matches the original: verified")
    if keep is not None:
        click.echo(f"demo: kept everything in {res.workdir}")


# -- scrape -------------------------------------------------------------------


@cli.command()
@click.argument("torrent", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--timeout", type=click.FloatRange(0.5, 120), default=10.0, show_default=True,
              help="Seconds to wait for the trackers.")  # fmt: skip
@verbose_option
def scrape(torrent: Path, timeout: float) -> None:
    """Ask each tracker (HTTP and UDP) how many seeders and leechers a torrent has."""
    from mptorrent.netio.announcer import scrape_all

    meta = load_torrent(torrent)
    rows = scrape_all(meta.trackers, meta.info_hash, timeout)
    if not rows:
        raise DownloadError("the torrent lists no usable trackers")
    ok = 0
    for url, r in rows:
        if isinstance(r, str):
            click.echo(f"{safe_text(url)}  error: {safe_text(r)}")
        else:
            ok += 1
            click.echo(
                f"{safe_text(url)}  seeders {r.complete}  leechers {r.incomplete}  "
                f"completed {r.downloaded}"
            )
    if not ok:
        sys.exit(int(ExitStatus.ERROR))


def main() -> NoReturn:
    try:
        cli(prog_name="mptorrent")
    except SystemExit as exc:
        if isinstance(exc.code, int | None):
            _exit_now(exc.code or 0)
        raise
    raise AssertionError("click's standalone mode always exits")


def _exit_now(status: int) -> None:
    """Exit without the interpreter's teardown, which frees every module and object one by one.

    That takes 30-60 ms after a fetch and does nothing a finished command needs.  Exit
    handlers (multiprocessing's among them) still run and stdout and stderr are flushed.
    Returns instead, for a normal exit, while a non-daemon thread runs, under a profiler or
    tracer that reports after ``main`` returns (cProfile, coverage), or if a flush fails.
    """
    import atexit
    import os
    import threading

    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon for t in threading.enumerate()):
        return
    if sys.getprofile() is not None or sys.gettrace() is not None:
        return
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        return
    os._exit(status)
