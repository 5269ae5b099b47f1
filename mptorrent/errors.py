"""The one error hierarchy and the process exit statuses.

Every error the user can cause or meet derives from :class:`MptorrentError` and
carries the exit status the CLI should use, so the CLI needs no table of its own.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Self


class ExitStatus(IntEnum):
    """The CLI's process exit codes. Each error class carries its own, so the CLI needs no table;
    130 is the shell's code for a SIGINT."""

    SUCCESS = 0
    ERROR = 1  # could not finish: no peers, trackers down, every peer failed
    USAGE = 2  # click's own code for bad command lines
    BAD_TORRENT = 3
    STORAGE = 4
    INTERRUPTED = 130
    OUTPUT_CLOSED = 141  # the shell's code for SIGPIPE: stdout's reader left (--json | head)


class MptorrentError(Exception):
    """Root of every error mptorrent raises on purpose."""

    exit_status: ExitStatus = ExitStatus.ERROR
    detail: str = ""  # more for -v: the traceback of the worker process that failed

    @property
    def exit_code(self) -> int:
        """The command line's exit status for this error, as a plain int."""
        return int(self.exit_status)

    def with_detail(self, detail: str) -> Self:
        self.detail = detail
        return self


class BencodeError(MptorrentError):
    """Input that is not canonical, bounded bencode."""

    exit_status = ExitStatus.BAD_TORRENT

    def __init__(self, reason: str, offset: int | None = None) -> None:
        self.reason = reason
        self.offset = offset
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"bad bencode{where}: {reason}")


class BadTorrent(MptorrentError):
    """A .torrent file we refuse to use."""

    exit_status = ExitStatus.BAD_TORRENT


class BadMagnet(MptorrentError):
    """A magnet link we cannot use; the message names what is wrong with it."""

    exit_status = ExitStatus.BAD_TORRENT


class StorageError(MptorrentError):
    """Anything wrong with the output: space, permissions, unsafe paths, locks."""

    exit_status = ExitStatus.STORAGE


class DiskFull(StorageError):
    """The output's filesystem cannot hold the torrent, found before writing (free space, fallocate)
    or while writing (ENOSPC, EDQUOT)."""

    pass


class UnsafePath(StorageError):
    """A file of the torrent would be written through a symbolic link or outside the output
    directory."""

    pass


class OutputLocked(StorageError):
    """Another mptorrent process holds the output's lock file (its pid is in the message)."""

    pass


class ProtocolError(MptorrentError):
    """A peer broke the wire protocol. Costs that peer its connection, nothing more."""


class TrackerError(MptorrentError):
    """A tracker could not be reached or answered with an error."""


class DownloadError(MptorrentError):
    """The download cannot finish (no peers, every peer failed, workers keep dying)."""


class NoPeers(DownloadError):
    """Nobody to ask: no tracker, ``x.pe`` or ``--peer`` gave a peer to dial."""


class MetadataTimeout(DownloadError):
    """A magnet link's metadata did not arrive (verified) in the time allowed."""


class OutputClosed(MptorrentError):
    """Nobody reads the ``--json`` lines any more (stdout is a closed pipe): the command stops
    the way Ctrl-C stops it, and quietly, as a program killed by SIGPIPE would."""

    exit_status = ExitStatus.OUTPUT_CLOSED


class Cancelled(MptorrentError):
    """A download stopped by its caller (``Download.cancel()``), as Ctrl-C stops the CLI."""

    exit_status = ExitStatus.INTERRUPTED


class BadSelection(MptorrentError):
    """``--only`` (or ``only=``) names no file of the torrent, or ``-o -`` would stream several."""

    exit_status = ExitStatus.USAGE


class StreamClosed(MptorrentError):
    """The reader of ``-o -`` (or of the API's ``stream=``) went away before the end."""

    exit_status = ExitStatus.OUTPUT_CLOSED
