"""Fuzz target: mptorrent.proto.webseed.RangeClient reads any server bytes as named events only.

The first byte picks the range asked (and whether it is the whole file), the second how the
rest is cut into reads and whether the requests are pipelined; the rest is what the server
sends, then it closes.  Whatever comes, the client raises nothing; it delivers no more body
than asked, ``Finished`` only after exactly the bytes asked, a ``Redirect`` only to a usable
URL of the same scheme, and a ``Refused`` with a known outcome and a one-line printable
detail.  After a reusable ``Finished`` the next request (up to three) goes out on the same
client, or, pipelined, on a fresh client that is fed the bytes after the last response
(``leftover``), as a web seed's connection does.

    python fuzz/fuzz_webseed.py -runs=20000           # atheris (pip install atheris)
    python fuzz/fuzz_webseed.py --hypothesis 2000     # without atheris
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path

from mptorrent.proto.webseed import (
    Body,
    Finished,
    Outcome,
    RangeClient,
    Redirect,
    Refused,
    seed_url_problem,
)
from mptorrent.proto.wire import NEED_DATA

URL = "http://mirror.example:8080/pub/file%20one.iso"
OUTCOMES = frozenset(typing.get_args(Outcome))


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    first = data[0] >> 3
    last = first + (data[0] & 7) * 3
    whole = bool(data[0] & 4)
    step = 1 + data[1] % 64
    pipelined = bool(data[1] & 0x80)
    stream = data[2:]
    client = RangeClient(pipelined=pipelined)
    client.get(URL, first, last, whole_file=whole)
    asked = last - first + 1
    got = 0
    requests = 1
    chunks = [stream[i : i + step] for i in range(0, len(stream), step)] + [b""]
    for chunk in chunks:
        client.receive_data(chunk)
        while True:
            e = client.next_event()
            if e is NEED_DATA:
                break
            if isinstance(e, Body):
                got += len(e.data)
                assert got <= asked, (got, asked)
            elif isinstance(e, Finished):
                assert got == asked, (got, asked)
                if not e.reusable or requests >= 3:
                    return
                requests += 1
                got = 0
                if pipelined:
                    rest = client.leftover()
                    client = RangeClient(pipelined=True)
                    client.get(URL, first, last, whole_file=whole)
                    client.receive_data(rest)
                else:
                    assert not client.leftover()
                    client.get(URL, first, last, whole_file=whole)
            elif isinstance(e, Redirect):
                assert seed_url_problem(e.url) is None, e.url
                assert e.url.startswith("http://"), e.url
                return
            else:
                assert isinstance(e, Refused)
                assert e.outcome in OUTCOMES, e.outcome
                assert e.detail.isprintable() and len(e.detail) < 300, e.detail
                assert client.next_event() is NEED_DATA  # done with
                return


def seeds() -> list[bytes]:
    ok = (b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 1-4/100\r\n"
          b"Content-Length: 4\r\n\r\nabcd")  # fmt: skip
    # data[0] = 0b00001001: first 1, last 4
    return [
        b"\x09\x00" + ok,
        b"\x09\x05" + ok + ok,
        b"\x09\x3f"
        + ok.replace(b"Content-Length: 4", b"Transfer-Encoding: chunked").replace(
            b"abcd", b"4\r\nabcd\r\n0\r\n\r\n"
        ),
        b"\x0d\x01HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd",
        b"\x09\x07HTTP/1.1 302 Found\r\nLocation: /elsewhere?x=1\r\nContent-Length: 0\r\n\r\n",
        b"\x09\x02HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found",
        b"\x09\x00HTTP/1.0 206 OK\r\nContent-Range: bytes 1-4/*\r\n\r\nabcdEXTRA",
        b"\x09\x00HTTP/1.1 100 Continue\r\n\r\n" + ok,
        b"\x09\x80" + ok + ok + ok,  # pipelined: three answers in one read
        b"\x09\x87" + ok + ok[:20],
    ]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
    from fuzz.engine import main as run

    run(TestOneInput, seeds())


if __name__ == "__main__":
    main()
