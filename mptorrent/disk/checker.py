"""Parallel piece hashing: used by ``create``, ``verify`` and ``fetch`` resume.

Each process opens its own read-only mmaps by path and hashes a contiguous run
of pieces; hashlib releases the GIL and reads straight from the page cache, so
N processes scale with cores.  The main process only collects digests.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Collection, Iterable, Iterator

from mptorrent.disk.storage import Layout, Storage
from mptorrent.mp import context
from mptorrent.proto.hashing import PieceVerifier
from mptorrent.proto.metainfo import Metainfo
from mptorrent.record import Record, mutable

# A task is this many bytes of pieces: big enough to amortise IPC, small enough
# to keep both cores busy to the end and the progress bar moving.
TASK_BYTES = 32 * 1024 * 1024

Progress = Callable[[int], None]  # called with bytes just hashed

_storage: Storage | None = None
_verifier: PieceVerifier | None = None  # None: v1 SHA-1 digests (what ``create`` records)


def _init(
    layout: Layout, child: bool = True, verifier: PieceVerifier | None = None,
    files: Collection[int] | None = None,
) -> None:  # fmt: skip
    global _storage, _verifier
    if child:
        # Forked children inherit the CLI's handlers; the parent alone answers
        # Ctrl-C, and Pool.terminate() must be able to end us with SIGTERM.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _storage = Storage(layout, files=files)
    _verifier = verifier


def _hash_run(run: tuple[int, int]) -> tuple[int, list[bytes | None]]:
    assert _storage is not None
    start, stop = run
    v = _verifier
    if v is None:
        return start, [_storage.hash_piece(i) for i in range(start, stop)]
    return start, [_storage.hash_piece(i, v.hasher(i)) for i in range(start, stop)]


def _runs(pieces: Iterable[int], per_task: int) -> Iterator[tuple[int, int]]:
    """Group piece indices into contiguous runs of at most ``per_task``."""
    start: int | None = None
    prev = 0
    for i in pieces:
        if start is None:
            start = prev = i
        elif i != prev + 1 or i - start >= per_task:
            yield start, prev + 1
            start = i
        prev = i
    if start is not None:
        yield start, prev + 1


def hash_pieces(
    layout: Layout,
    pieces: Iterable[int] | None = None,
    *,
    jobs: int = 1,
    progress: Progress | None = None,
    verifier: PieceVerifier | None = None,
    files: Collection[int] | None = None,
) -> Iterator[tuple[int, bytes | None]]:
    """Yield ``(index, digest)`` for each piece; digest is None where data is missing.

    Digests are v1 SHA-1, or ``verifier``'s own (for its ``matches``) when one is given.
    ``files``: the files to read (the rest from the parts file); default: the selected.
    """
    todo = range(layout.num_pieces) if pieces is None else pieces
    per_task = max(1, TASK_BYTES // layout.piece_length)
    runs = list(_runs(todo, per_task))
    if not runs:
        return

    def emit(start: int, digests: list[bytes | None]) -> Iterator[tuple[int, bytes | None]]:
        for k, d in enumerate(digests):
            if progress is not None:
                progress(layout.piece_size(start + k))
            yield start + k, d

    if jobs <= 1 or len(runs) == 1:
        _init(layout, child=False, verifier=verifier, files=files)
        try:
            for run in runs:
                yield from emit(*_hash_run(run))
        finally:
            assert _storage is not None
            _storage.close()
        return
    ctx = context()
    with ctx.Pool(
        min(jobs, len(runs)), initializer=_init, initargs=(layout, True, verifier, files)
    ) as pool:
        for start, digests in pool.imap_unordered(_hash_run, runs):
            yield from emit(start, digests)


@mutable
class VerifyReport(Record):
    """Which pieces on disk match the torrent, as :func:`verify` found them; ``invalid`` and
    ``missing`` are sorted and disjoint, and a piece in neither is valid."""

    num_pieces: int
    valid: bytearray  # one byte per piece: 1 valid
    invalid: list[int]
    missing: list[int]  # pieces touching a missing or wrongly sized file

    @property
    def complete(self) -> bool:
        return not self.invalid and not self.missing

    @property
    def valid_count(self) -> int:
        return sum(self.valid)


def verify(
    meta: Metainfo,
    layout: Layout,
    *,
    jobs: int = 1,
    progress: Progress | None = None,
    pieces: Iterable[int] | None = None,
    files: Collection[int] | None = None,
) -> VerifyReport:
    valid = bytearray(meta.num_pieces)
    invalid: list[int] = []
    missing: list[int] = []
    verifier = meta.verifier()
    found = hash_pieces(
        layout, pieces, jobs=jobs, progress=progress, verifier=verifier, files=files
    )
    for index, digest in found:
        if digest is None:
            missing.append(index)
        elif verifier.matches(index, digest):
            valid[index] = 1
        else:
            invalid.append(index)
    invalid.sort()
    missing.sort()
    return VerifyReport(meta.num_pieces, valid, invalid, missing)


def recover_shared(
    meta: Metainfo, layout: Layout, pieces: Iterable[int], fresh: Collection[int]
) -> list[int]:
    """Shared pieces (holding bytes of several files) that a change of ``--only`` moved:
    their bytes are in the parts file and in files an earlier run wrote, not where this
    selection looks.  Each of ``pieces`` is read with every existing file that is not in
    ``fresh`` (just created, so empty) open and the rest from the parts file; the ones
    that verify are written back where this layout keeps them.  Returns those pieces."""
    shared = [i for i in pieces if i in layout.parts_rank]
    if not shared or layout.parts_path is None or not os.path.exists(layout.parts_path):
        return []
    verifier = meta.verifier()
    keep = [i for i, p in enumerate(layout.paths) if p is not None and i not in fresh]
    found: list[tuple[int, bytes]] = []
    with Storage(layout, files=keep) as src:
        for i in shared:
            if src.verify_piece(i, verifier):
                found.append((i, src.read(i * layout.piece_length, layout.piece_size(i))))
    if found:
        with Storage(layout, writable=True) as dst:
            for i, data in found:
                dst.write_piece(i, data)
    return [i for i, _ in found]
