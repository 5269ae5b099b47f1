"""Fuzz target: mptorrent.proto.bencode.decode gives a value or BencodeError, nothing else.

Only canonical input is accepted, so whatever decodes must re-encode to the very
same bytes (anacrolix FuzzInterfaceRoundTrip).

    python fuzz/fuzz_bencode.py -runs=20000          # atheris (pip install atheris)
    python fuzz/fuzz_bencode.py --hypothesis 2000    # without atheris
"""

from __future__ import annotations

import sys
from pathlib import Path

from mptorrent.errors import BencodeError
from mptorrent.proto import bencode

# Small limits so a short run reaches them; the scanner is the same code at any limit.
LIMITS = {"max_size": 1 << 16, "max_depth": 20, "max_tokens": 2000, "max_string": 4096}


def TestOneInput(data: bytes) -> None:
    for limits in (LIMITS, {"max_size": bencode.MAX_TORRENT_SIZE}):
        try:
            value, spans = bencode.decode_with_spans(data, **limits)
        except BencodeError as exc:
            assert exc.offset is None or 0 <= exc.offset <= len(data), exc.offset
            assert str(exc).isprintable(), str(exc)
            continue
        assert bencode.encode(value) == data
        if isinstance(value, dict):
            assert set(spans) == set(value)
            for key, (start, end) in spans.items():
                assert data[start:end] == bencode.encode(value[key])
        else:
            assert spans == {}


def seeds() -> list[bytes]:
    return [
        b"i0e", b"i-42e", b"0:", b"4:spam", b"le", b"de", b"li1ei2ee",
        b"d3:cow3:moo4:spam4:eggse",
        b"d4:infod6:lengthi40000e4:name9:movie.mp412:piece lengthi16384e6:pieces0:ee",
        b"d8:intervali1800e5:peers6:\x0a\x00\x00\x01\x1a\xe1e",
        b"l" * 30 + b"e" * 30,
        b"d1:ad1:bd1:cleeee",
    ]  # fmt: skip


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
    from fuzz.engine import main as run

    run(TestOneInput, seeds())


if __name__ == "__main__":
    main()
