"""Which files of a torrent ``--only`` means: sans-IO, no files and no processes.

A selector is a glob matched with :func:`fnmatch.fnmatchcase` on the file's path inside
the torrent, '/'-separated (``"season 1/*.mkv"``; a single-file torrent's one path is its
name), or ``#N`` for the file of index N (the indices ``mptorrent info`` prints; padding
files have indices too, but cannot be selected).  A selector that names no file is an
error: a typo must not download nothing, or everything.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence

from mptorrent.errors import BadSelection
from mptorrent.proto.metainfo import FileEntry

MAX_SELECTORS = 10_000  # a command line or a script, never more
MAX_SELECTOR_LEN = 4096  # bytes of a path inside a torrent are capped lower than this
_INDEX = re.compile(r"#([0-9]{1,9})")  # ASCII digits only ("#１" is not an index)


def select_files(files: Sequence[FileEntry], selectors: Iterable[str | int]) -> list[int]:
    """The indices (into ``files``) of the files any selector names, ascending; raises
    :class:`BadSelection` (exit 2) for a selector that names none or is malformed."""
    chosen: set[int] = set()
    for n, sel in enumerate(selectors):
        if n >= MAX_SELECTORS:
            raise BadSelection(f"--only: more than {MAX_SELECTORS} selectors")
        chosen.update(_one(files, sel))
    return sorted(chosen)


def _one(files: Sequence[FileEntry], sel: str | int) -> list[int]:
    if isinstance(sel, bool) or not isinstance(sel, int | str):
        raise BadSelection(f"--only: {_shown(sel)} is neither a glob, '#N' nor a file index")
    if isinstance(sel, int):
        return [_index(files, sel, str(sel))]
    if not sel or len(sel) > MAX_SELECTOR_LEN or "\x00" in sel:
        raise BadSelection("--only: an empty, over-long or NUL-bearing pattern")
    if sel.startswith("#"):
        m = _INDEX.fullmatch(sel)
        if m is None:
            raise BadSelection(f"--only {_shown(sel)}: '#' must be followed by a file index")
        return [_index(files, int(m[1]), sel)]
    found = [
        i for i, f in enumerate(files)
        if not f.padding and fnmatch.fnmatchcase("/".join(f.path), sel)
    ]  # fmt: skip
    if not found:
        raise BadSelection(f"--only {_shown(sel)} matches no file of the torrent")
    return found


def _shown(sel: object, limit: int = 120) -> str:
    """``sel`` as the error shows it: repr (control characters escaped), cut to ``limit``
    characters *after* escaping (one control character becomes up to ten)."""
    text = repr(sel)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _index(files: Sequence[FileEntry], i: int, sel: str) -> int:
    if not 0 <= i < len(files) or files[i].padding:
        raise BadSelection(f"--only {sel}: the torrent has no file {i} (mptorrent info lists them)")
    return i
