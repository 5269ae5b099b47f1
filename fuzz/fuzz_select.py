"""Fuzz target: mptorrent.policy.select gives file indices or BadSelection, nothing else.

The input is text (UTF-8, undecodable bytes replaced): the lines before the first empty
line are the torrent's file paths ('/'-separated; a path starting with ``.pad/`` is a
padding file), the lines after it are ``--only`` selectors.  A result must be sorted,
unique, in range, never a padding file, and every file in it must be named by some
selector (its index, or a glob it matches); a BadSelection's message is one printable
line.

    python fuzz/fuzz_select.py -runs=20000           # atheris (pip install atheris)
    python fuzz/fuzz_select.py --hypothesis 2000     # without atheris
"""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

from mptorrent.errors import BadSelection
from mptorrent.policy.select import select_files
from mptorrent.proto.metainfo import FileEntry


def TestOneInput(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    head, _, tail = text.partition("\n\n")
    files = []
    offset = 0
    for n, line in enumerate(head.split("\n")[:200]):
        path = tuple(p for p in line.split("/") if p) or ("f",)
        files.append(FileEntry(path, n, offset, path[0] == ".pad"))
        offset += n
    selectors = tail.split("\n")[:50] if tail else []
    try:
        chosen = select_files(files, selectors)
    except BadSelection as err:
        message = str(err)
        assert message.isprintable() and len(message) < 300, message
        return
    assert chosen == sorted(set(chosen))
    for i in chosen:
        assert 0 <= i < len(files) and not files[i].padding
        name = "/".join(files[i].path)
        assert any(_index(s) == i or fnmatch.fnmatchcase(name, s) for s in selectors)


def _index(selector: str) -> int | None:
    digits = selector[1:]
    if selector.startswith("#") and digits.isascii() and digits.isdigit():
        return int(digits)
    return None


def seeds() -> list[bytes]:
    return [
        b"a.bin\ndocs/readme.txt\nmedia/season 1/ep1.mkv\n\nmedia/*\n#0",
        b"x\n.pad/1\ny\n\n#2\n*",
        b"one\n\n[o]ne\n#0",
        b"a/b/c\n\na/*/c\n#00",
        b"x\ny\n\n#01",
        # found by the CI fuzz run: control characters quadruple when escaped, and the
        # message showed 200 characters of the selector before escaping them
        b"one\n\n[o]n" + b"\x19" * 67 + b"e",
    ]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
    from fuzz.engine import main as run

    run(TestOneInput, seeds())


if __name__ == "__main__":
    main()
