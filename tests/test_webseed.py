"""The sans-IO side of web seeds (BEP 19): URLs per file, byte runs onto files, and the h11 range
client's reading of good and hostile responses (tests/adversarial/README.md, table M)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mptorrent.proto import metainfo
from mptorrent.proto.webseed import (
    MAX_REDIRECTS,
    Body,
    Finished,
    RangeClient,
    Redirect,
    Refused,
    Span,
    WebEvent,
    file_urls,
    seed_url_problem,
    spans,
    target,
)
from mptorrent.proto.wire import NEED_DATA

PL = 16384


def _meta(files: list[tuple[tuple[str, ...], int]] | None, length: int | None = None,
          name: str = "my torrent") -> metainfo.Metainfo:  # fmt: skip
    total = length if length is not None else sum(n for _p, n in files or [])
    pieces = bytes(20) * -(-total // PL)
    data = metainfo.build(name=name, piece_length=PL, pieces=pieces, files=files, length=length)
    return metainfo.parse(data)


def test_single_file_url_is_the_file_or_the_name_in_a_directory() -> None:
    m = _meta(None, length=100, name="a b.iso")
    assert file_urls("http://h/x/file.iso", m) == ("http://h/x/file.iso",)
    assert file_urls("http://h/x/", m) == ("http://h/x/a%20b.iso",)


def test_multi_file_urls_append_name_and_each_encoded_segment() -> None:
    m = _meta([(("dir", "ü #1.txt"), 10), (("b%c",), 5)], name="my torrent")
    assert file_urls("https://h:8443/pub/", m) == (
        "https://h:8443/pub/my%20torrent/dir/%C3%BC%20%231.txt",
        "https://h:8443/pub/my%20torrent/b%25c",
    )
    # BEP 19: a multi-file web seed is a directory, with or without its slash
    assert file_urls("http://h/pub", m)[1] == "http://h/pub/my%20torrent/b%25c"


def test_spans_split_a_run_at_file_boundaries_and_skip_empty_files() -> None:
    m = _meta([(("a",), 10), (("e",), 0), (("b",), 20), (("c",), 5)])
    assert spans(m.files, 5, 30) == [Span(0, 5, 5, 0), Span(2, 0, 20, 5), Span(3, 0, 5, 25)]
    assert spans(m.files, 12, 3) == [Span(2, 2, 3, 0)]
    with pytest.raises(ValueError, match="outside"):
        spans(m.files, 30, 10)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://h/f", "scheme 'ftp' is not http or https"),
        ("http:///f", "no host"),
        ("http://h:99999/f", "bad URL"),
        ("http://h/a b", "spaces"),
        ("http://h/" + "a" * 9000, "too long"),
    ],
)
def test_seed_url_problems(url: str, problem: str) -> None:
    found = seed_url_problem(url)
    assert found is not None and problem in found


def test_target_has_the_host_header_and_path() -> None:
    t = target("http://[::1]:8080/a/b?x=1")
    assert (t.host, t.port, t.path, t.host_header) == ("::1", 8080, "/a/b?x=1", "[::1]:8080")
    assert target("https://h/").host_header == "h"


# -- the range client -------------------------------------------------------------------------


def events(client: RangeClient, *chunks: bytes) -> list[WebEvent]:
    out: list[WebEvent] = []
    for chunk in chunks:
        client.receive_data(chunk)
        while (e := client.next_event()) is not NEED_DATA:
            assert not isinstance(e, type(NEED_DATA))
            out.append(e)
    return out


def asked(first: int = 100, last: int = 109, *, whole: bool = False) -> tuple[RangeClient, bytes]:
    c = RangeClient()
    return c, c.get("http://h:81/d/f%20x", first, last, whole_file=whole)


def test_request_is_a_keep_alive_get_with_range() -> None:
    _c, req = asked()
    head = req.decode()
    assert head.startswith("GET /d/f%20x HTTP/1.1\r\n")
    assert "host: h:81\r\n" in head.lower() and "range: bytes=100-109\r\n" in head.lower()
    assert "connection: close" not in head.lower()


def test_206_with_the_range_asked_is_delivered_and_the_connection_reused() -> None:
    c, _ = asked()
    got = events(c, b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 100-109/1000\r\n"
                    b"Content-Length: 10\r\n\r\n01234", b"56789")  # fmt: skip
    assert got == [Body(b"01234"), Body(b"56789"), Finished(reusable=True)]
    c.get("http://h:81/d/f%20x", 0, 0)  # the next request on the same connection
    got = events(c, b"HTTP/1.1 206 OK\r\nContent-Range: bytes 0-0/*\r\nContent-Length: 1\r\n\r\nA")
    assert got == [Body(b"A"), Finished(reusable=True)]


def test_connection_close_is_not_reused() -> None:
    c, _ = asked(0, 1)
    got = events(c, b"HTTP/1.1 206 OK\r\nContent-Range: bytes 0-1/2\r\nConnection: close\r\n"
                    b"Content-Length: 2\r\n\r\nab")  # fmt: skip
    assert got == [Body(b"ab"), Finished(reusable=False)]


def test_200_is_accepted_only_when_the_whole_file_was_asked() -> None:
    c, _ = asked(0, 2, whole=True)
    assert events(c, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc") == [
        Body(b"abc"), Finished(reusable=True)]  # fmt: skip
    c, _ = asked()
    (e,) = events(c, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + bytes(1000))
    assert isinstance(e, Refused) and e.outcome == "ignores-range"


@pytest.mark.parametrize(
    ("response", "outcome"),
    [
        (b"HTTP/1.1 206 OK\r\nContent-Range: bytes 0-9/1000\r\nContent-Length: 10\r\n\r\n",
         "wrong-range"),
        (b"HTTP/1.1 206 OK\r\nContent-Length: 10\r\n\r\n", "wrong-range"),
        (b"HTTP/1.1 206 OK\r\nContent-Range: bytes 100-109/1000\r\nContent-Length: 11\r\n\r\n",
         "too-long"),
        (b"HTTP/1.1 206 OK\r\nContent-Range: bytes 100-109/1000\r\n"
         b"Transfer-Encoding: chunked\r\n\r\nb\r\n0123456789A\r\n0\r\n\r\n", "too-long"),
        (b"HTTP/1.1 206 OK\r\nContent-Range: bytes 100-109/1000\r\nContent-Length: 10\r\n\r\n"
         b"0123456789EXTRA", "too-long"),
        (b"HTTP/1.1 206 OK\r\nContent-Range: bytes 100-109/1000\r\nContent-Length: 9\r\n\r\n",
         "short"),
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "not-found"),
        (b"HTTP/1.1 410 Gone\r\nContent-Length: 0\r\n\r\n", "not-found"),
        (b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", "server-error"),
        (b"HTTP/1.1 429 Slow down\r\nContent-Length: 0\r\n\r\n", "server-error"),
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", "bad-status"),
        (b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n", "bad-redirect"),
        (b"HTTP/1.1 302 Found\r\nLocation: ftp://h/x\r\nContent-Length: 0\r\n\r\n",
         "bad-redirect"),
        (b"HTTP/1.1 302 Found\r\nLocation: https://h/x\r\nContent-Length: 0\r\n\r\n",
         "bad-redirect"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "protocol-error"),
        (b"HTTP/1.1 206 OK\r\n" + b"X-Junk: " + b"a" * 20000, "protocol-error"),  # endless head
    ],
)  # fmt: skip
def test_hostile_responses_are_named(response: bytes, outcome: str) -> None:
    c, _ = asked()
    got = events(c, response)
    assert isinstance(got[-1], Refused), got
    assert got[-1].outcome == outcome, got[-1]
    assert got[-1].detail.isprintable()
    assert c.next_event() is NEED_DATA  # done with: nothing more is read


def test_the_server_closing_mid_body_is_closed() -> None:
    c, _ = asked()
    got = events(c, b"HTTP/1.1 206 OK\r\nContent-Range: bytes 100-109/1000\r\n"
                    b"Content-Length: 10\r\n\r\n0123", b"")  # fmt: skip
    assert got[0] == Body(b"0123")
    assert isinstance(got[1], Refused) and got[1].outcome in ("closed", "protocol-error")


def test_redirect_is_resolved_against_the_request() -> None:
    c, _ = asked()
    got = events(c, b"HTTP/1.1 302 Found\r\nLocation: /mirror/f\r\nContent-Length: 3\r\n\r\nabc")
    assert got == [Redirect("http://h:81/mirror/f")]
    assert MAX_REDIRECTS >= 3


def test_100_continue_is_skipped() -> None:
    c, _ = asked(0, 0)
    got = events(c, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 206 OK\r\n"
                    b"Content-Range: bytes 0-0/5\r\nContent-Length: 1\r\n\r\nz")  # fmt: skip
    assert got == [Body(b"z"), Finished(reusable=True)]


def test_a_close_before_any_answer_is_closed_not_a_protocol_error() -> None:
    # what a kept-alive connection looks like when the server closed it as it was reused
    c, _ = asked()
    (e,) = events(c, b"")
    assert isinstance(e, Refused) and e.outcome == "closed"


# -- the worker's web seed: blocks out of reads of any size ---------------------------------


@settings(max_examples=200, deadline=None)
@given(
    nblocks=st.integers(1, 12), last=st.integers(1, 16384),
    cuts=st.lists(st.integers(1, 200_000), max_size=12), dropped=st.sets(st.integers(0, 11)),
)  # fmt: skip
def test_blocks_come_out_whole_whatever_the_reads(
    nblocks: int, last: int, cuts: list[int], dropped: set[int]
) -> None:
    import selectors

    from mptorrent.netio.webseed import WebSeed

    block = 16384
    size = (nblocks - 1) * block + last
    m = _meta(None, length=size, name="f")
    with selectors.DefaultSelector() as sel:
        ws = WebSeed("http://127.0.0.1:9/f", m, sel, now=0.0)  # its connection is never used
        ws.close()
        blocks = [(b * block // PL, b * block % PL, min(block, size - b * block))
                  for b in range(nblocks)]  # fmt: skip
        ws.pending.update((i, o) for k, (i, o, _n) in enumerate(blocks) if k not in dropped)
        ws.request(blocks)
        payload = bytes((i * 7 + i // 251) & 0xFF for i in range(size))
        got: dict[tuple[int, int], bytes] = {}
        for run in ws.runs:
            at = 0
            body = payload[run.start : run.start + run.ends[-1]]
            for cut in [*sorted(c % (len(body) + 1) for c in cuts), len(body)]:
                if cut > at:
                    ws._take(run, at, bytearray(body[at:cut]))
                    at = cut
            while (e := ws.next_event()) is not NEED_DATA:
                got[(e.index, e.begin)] = bytes(e.block)
    want = {(i, o): payload[i * PL + o : i * PL + o + n] for k, (i, o, n) in enumerate(blocks)
            if k not in dropped}  # fmt: skip
    assert got == want


def test_a_web_seed_is_named_without_its_password() -> None:
    from mptorrent.proto.webseed import seed_id

    assert seed_id("https://u:secret@h:8/p?q=1") == "https://h:8/p?q=1"
    assert seed_id("http://h/p") == "http://h/p"


def test_at_most_max_web_seeds_are_used_the_users_first() -> None:
    from mptorrent.engine.coordinator import web_seed_urls
    from mptorrent.proto.webseed import MAX_WEB_SEEDS

    urls = [f"http://m{i}.example/f" for i in range(10_000)] + ["ftp://x/f"]
    data = metainfo.build(name="f", piece_length=PL, pieces=bytes(20), length=10, web_seeds=urls)
    m = metainfo.parse(data)
    got = web_seed_urls(m, ("http://mine.example/f", "http://m3.example/f"))
    assert len(got) == MAX_WEB_SEEDS
    assert got[:3] == ("http://mine.example/f", "http://m3.example/f", "http://m0.example/f")


def test_adjacent_pieces_asked_together_are_one_run() -> None:
    import selectors

    from mptorrent.netio.webseed import RUN_BYTES, WebSeed

    m = _meta(None, length=100 * PL, name="f")
    with selectors.DefaultSelector() as sel:
        ws = WebSeed("http://127.0.0.1:9/f", m, sel, now=0.0)
        ws.close()
        ws.request([(3, 0, PL), (1, 0, PL), (2, 0, PL), (9, 0, PL)])
        assert [(r.start, r.ends[-1]) for r in ws.runs] == [(PL, 3 * PL), (9 * PL, PL)]
        ws.runs.clear()
        ws.request([(i, 0, PL) for i in range(100)])  # 1.6 MiB: runs stop at RUN_BYTES
        assert [r.ends[-1] for r in ws.runs] == [RUN_BYTES, 100 * PL - RUN_BYTES]


def test_pipelined_answers_pass_on_what_follows_their_end() -> None:
    head = b"HTTP/1.1 206 OK\r\nContent-Length: 2\r\nContent-Range: bytes "
    answer = (head + b"0-1/9\r\n\r\nab", head + b"2-3/9\r\n\r\ncd")
    first, second = RangeClient(pipelined=True), RangeClient(pipelined=True)
    first.get("http://h/f", 0, 1)
    second.get("http://h/f", 2, 3)
    assert events(first, answer[0] + answer[1][:30]) == [Body(b"ab"), Finished(reusable=True)]
    assert first.leftover() == answer[1][:30]
    assert events(second, first.leftover(), answer[1][30:]) == [
        Body(b"cd"), Finished(reusable=True)]  # fmt: skip
    # not pipelined, the same bytes after an answer are a body longer than asked
    c = RangeClient()
    c.get("http://h/f", 0, 1)
    got = events(c, answer[0] + answer[1])
    assert isinstance(got[-1], Refused) and got[-1].outcome == "too-long"


def test_an_idle_connection_to_the_server_redirected_from_does_not_block_the_new_one() -> None:
    # A redirect moved the file while another connection to the first server was opening: it
    # comes up idle and takes nothing.  The runs must get a connection to the new server at
    # once, not wait for the old one to close its idle keep-alive connection (30 s and more).
    import selectors
    import socket
    import time

    from mptorrent.netio.webseed import WebSeed

    m = _meta(None, length=8 * PL, name="f")
    with (
        socket.create_server(("127.0.0.1", 0)) as old,
        socket.create_server(("127.0.0.1", 0)) as new,
        selectors.DefaultSelector() as sel,
    ):
        ws = WebSeed(f"http://127.0.0.1:{old.getsockname()[1]}/f", m, sel, now=0.0, connections=2)
        deadline = time.monotonic() + 5.0
        while not ws.active and time.monotonic() < deadline:  # the connect completes
            for key, mask in sel.select(0.1):
                ws.on_event(key.data, mask, 0.0)
        assert ws.active and [c.state for c in ws.conns] == ["ready"]
        ws.urls[0] = f"http://127.0.0.1:{new.getsockname()[1]}/f"  # as a Redirect does
        ws.pending.add((0, 0))  # as the policy does when it asks
        ws.request([(0, 0, PL)])
        ws.pump(0.0)
        assert {c.origin[2] for c in ws.conns} == {old.getsockname()[1], new.getsockname()[1]}
        ws.close()
