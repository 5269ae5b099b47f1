"""``-o -``: the verified bytes of one file, in order, to a pipe, as pieces verify.

Workers write verified pieces into the output's files as always (the fetch's own output,
or a temporary one the caller removes at the end); the coordinator tells this stream each
piece it accepts, and a thread of the main process copies the next run of the file's bytes
from its own read-only :class:`~mptorrent.disk.storage.Storage` (the same page cache the
workers wrote into) to the reader.  The thread blocks on a slow reader, never the
coordinator; a reader that leaves (EPIPE) sets :attr:`PieceStream.closed` for the
coordinator to act on.  Only verified pieces are ever read: a piece is streamed after its
``PieceDone`` (or the resume check) says so.
"""

from __future__ import annotations

import errno
import threading
from typing import IO

from mptorrent.disk.storage import IoMode, Layout, Storage
from mptorrent.errors import MptorrentError

CHUNK = 1 << 20  # bytes per write: a pipe takes 64 KiB at a time anyway


class PieceStream:
    """Streams bytes ``[start, end)`` of a torrent's linear space to ``out`` in order."""

    def __init__(
        self, layout: Layout, start: int, end: int, out: IO[bytes], io: IoMode = "mmap"
    ) -> None:
        self.layout = layout
        self.io = io  # the workers' choice: pread where a page fault could be a SIGBUS
        self.start = start
        self.end = end
        self.out = out
        self.pos = start  # the next byte to write
        self.closed = False  # the reader left before the end
        self.error: str | None = None  # why, for the one-line note
        self._have = bytearray(layout.num_pieces)
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="mptorrent-stream", daemon=True)

    @property
    def written(self) -> int:
        return self.pos - self.start

    @property
    def complete(self) -> bool:
        return self.pos >= self.end

    def begin(self, have: bytes | bytearray) -> None:
        """Start streaming, with the pieces already verified on disk."""
        self._have[:] = have
        self._thread.start()

    def piece_done(self, index: int) -> None:
        """The coordinator accepted a verified piece (O(1); wakes the thread when it is the
        one the stream waits for)."""
        self._have[index] = 1
        if index == self.pos // self.layout.piece_length:
            with self._cond:
                self._cond.notify()

    def finish(self, timeout: float | None = None) -> bool:
        """Wait until every byte is written (or the reader left); True if all were."""
        self._thread.join(timeout)
        return self.complete

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()

    def _next_ready(self) -> bool:
        return self._stop or self.complete or bool(self._have[self.pos // self.layout.piece_length])

    def _run(self) -> None:
        pl = self.layout.piece_length
        with Storage(self.layout, io=self.io) as st:
            while True:
                with self._cond:
                    while not self._next_ready():
                        self._cond.wait(0.5)
                    if self._stop or self.complete:
                        return
                # the verified run from pos: this piece and the ones after it already in
                stop = self.pos
                while stop < self.end and self._have[stop // pl] and stop - self.pos < CHUNK:
                    stop = min(self.end, (stop // pl + 1) * pl)
                try:
                    data = st.read(self.pos, stop - self.pos)
                    self.out.write(data)
                    self.out.flush()
                except (BrokenPipeError, ConnectionResetError):
                    self._closed("the reader of the stream went away")
                    return
                except OSError as exc:
                    if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                        self._closed("the reader of the stream went away")
                    else:
                        self._closed(f"cannot write the stream: {exc.strerror}")
                    return
                except ValueError:  # the file object was closed under us
                    self._closed("the stream's file was closed")
                    return
                except MptorrentError as exc:  # a disk error reading it back
                    self._closed(f"cannot read the stream back: {exc}")
                    return
                self.pos = stop

    def _closed(self, why: str) -> None:
        self.error = why
        self.closed = True
