"""engine/stream.py: a file's verified bytes to a binary file in order, whatever order the
pieces verify in; a reader that leaves is noted, never raised at the coordinator (issue 16).
No processes: pieces are written with Storage, as a worker would."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from mptorrent.disk import create
from mptorrent.disk.storage import IO_MODES, IoMode, Layout, Storage, prepare
from mptorrent.engine.stream import PieceStream
from mptorrent.proto import metainfo

PL = 16384


def _setup(tmp_path: Path) -> tuple[Layout, bytes, bytes]:
    src = tmp_path / "src" / "t"
    src.mkdir(parents=True)
    a, b = os.urandom(3 * PL + 100), os.urandom(5 * PL + 7)
    (src / "a.bin").write_bytes(a)
    (src / "b.bin").write_bytes(b)
    meta = metainfo.parse(create.create(src, piece_length=PL, jobs=1))
    lay = Layout.for_torrent(meta, tmp_path / "out", selected=[1])
    prepare(lay, tmp_path / "out")
    return lay, a, b


def _write(lay: Layout, blob: bytes, pieces: list[int]) -> None:
    with Storage(lay, writable=True) as st:
        for i in pieces:
            st.write_piece(i, blob[i * PL : (i + 1) * PL])


@pytest.mark.parametrize("mode", IO_MODES)
def test_bytes_come_out_in_order_whatever_order_pieces_verify_in(
    tmp_path: Path, mode: IoMode
) -> None:
    lay, a, b = _setup(tmp_path)
    f = lay.files[1]
    out = io.BytesIO()
    s = PieceStream(lay, f.offset, f.offset + f.length, out, mode)
    wanted = list(lay.file_pieces(1))
    s.begin(bytearray(lay.num_pieces))
    for i in reversed(wanted):  # the last first: nothing can be written until the first
        _write(lay, a + b, [i])
        s.piece_done(i)
        if i != wanted[0]:
            assert out.getvalue() == b""
    assert s.finish(10) and s.complete and not s.closed
    assert out.getvalue() == b  # b.bin alone: not the part of a.bin in its first piece


def test_a_reader_that_leaves_is_noted_and_the_thread_ends(tmp_path: Path) -> None:
    lay, a, b = _setup(tmp_path)

    class Gone(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, _data: object) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    f = lay.files[1]
    s = PieceStream(lay, f.offset, f.offset + f.length, Gone())  # type: ignore[arg-type]
    have = bytearray(lay.num_pieces)
    _write(lay, a + b, list(lay.file_pieces(1)))
    for i in lay.file_pieces(1):
        have[i] = 1
    s.begin(have)  # everything on disk already: written at once, to nobody
    assert not s.finish(10)
    assert s.closed and s.error == "the reader of the stream went away" and s.written == 0
