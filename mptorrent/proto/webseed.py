"""Web seeds (BEP 19), sans-IO: HTTP mirrors of a torrent's files, read with ``Range`` requests.

Three small pieces, none of which touches a socket or the clock:

- :func:`file_urls` turns a web seed's URL into one URL per file of the torrent (a URL
  ending in ``/`` is a directory: the torrent's name and the file's path are appended,
  each segment percent-encoded; otherwise it is the file of a single-file torrent);
- :func:`spans` maps a run of the torrent's bytes (adjacent blocks, often whole pieces)
  onto the files it covers, as one byte range per file;
- :class:`RangeClient` is one HTTP/1.1 keep-alive connection's client side on ``h11``:
  :meth:`RangeClient.get` gives the bytes of a ``GET`` with ``Range``, and
  :meth:`RangeClient.receive_data` / :meth:`RangeClient.next_event` turn the server's
  bytes into :class:`Body`, :class:`Finished`, :class:`Redirect` or :class:`Refused`.
  h11 reads one request's response per connection object, so a connection with several
  requests in flight (HTTP/1.1 pipelining, ``netio/webseed.py``) has a ``pipelined``
  client per request and hands the bytes after each response to the next one.

A response is used only if it is exactly what was asked: a ``206`` whose ``Content-Range``
names the asked range (or a ``200`` when the whole file was asked), no more bytes than
asked.  Anything else is a :class:`Refused` with a named :data:`Outcome`, so a hostile or
broken mirror is described, never trusted; its bytes are still SHA-1 checked piece by
piece above this layer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, TypeAlias
from urllib.parse import quote, urljoin, urlsplit

from mptorrent.proto.metainfo import FileEntry, Metainfo
from mptorrent.proto.wire import NEED_DATA, NeedData
from mptorrent.record import Record, frozen

if TYPE_CHECKING:
    import h11


def _load_h11() -> None:
    # h11 (its regular expressions) costs about 14 ms to import: it loads with a fetch's
    # first web seed request, not with every fetch (the coordinator imports this module).
    global h11
    import h11


SCHEMES = frozenset({"http", "https"})
MAX_WEB_SEEDS = 8  # mirrors used at most (a torrent's url-list may hold thousands)
MAX_URL = 8192  # a longer request target is refused by common servers anyway
MAX_HEADER_BYTES = 16 * 1024  # h11's limit on a response's head
USER_AGENT = "mptorrent"

Outcome: TypeAlias = Literal[
    "not-found",  # 404 or 410: the mirror lacks the file (for now): back off, retry later
    "server-error",  # 5xx or 429: back off, retry later
    "ignores-range",  # 200 with the whole file where a part was asked: mirror dropped
    "wrong-range",  # 206 whose Content-Range is not the range asked: mirror dropped
    "too-long",  # more body than asked (Content-Length, chunks, bytes past the end)
    "short",  # the response ended before the range did
    "bad-redirect",  # a redirect without Location, or to another scheme: mirror dropped
    "redirect-loop",  # more than MAX_REDIRECTS hops for one request: mirror dropped
    "bad-status",  # any other status (401, 403, 416...): mirror dropped
    "protocol-error",  # not HTTP/1.1 as h11 reads it: connection closed, back off
    "closed",  # the server closed the connection mid-response: back off
    "connection-error",  # connect or socket error: back off
    "tls-error",  # its certificate does not verify: mirror dropped
    "timeout",  # no byte for the stall timeout: back off
    "too-slow",  # under the minimum rate (a drip): mirror dropped
]
"""Why a web seed's request did not deliver, one name per case (tests/adversarial/README.md).
Wrong bytes are not among them: they fail the piece's SHA-1 check, and the download policy
bans the mirror as it bans a lying peer."""

RETRYABLE: frozenset[Outcome] = frozenset(
    {"not-found", "server-error", "short", "protocol-error", "closed", "connection-error",
     "timeout"}
)  # fmt: skip
"""Outcomes that a mirror may get over (a file still syncing, a restart): back off, retry."""

MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE = re.compile(rb"bytes[ \t]+(\d{1,19})-(\d{1,19})/(\d{1,19}|\*)", re.I)


def seed_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a web seed, or None (http or https with a host)."""
    if len(url) > MAX_URL:
        return "URL too long"
    if not url.isprintable() or any(c.isspace() for c in url):
        return "URL has spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"bad URL ({exc})"
    if parts.scheme.lower() not in SCHEMES:
        return f"scheme {parts.scheme or '(none)'!r} is not http or https"
    if not parts.hostname:
        return "no host"
    return None


def seed_id(url: str) -> str:
    """How a web seed is named in events and bans: its URL without a user name or password
    (which are never sent either)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _encode_target(url: str) -> str:
    """``url`` with whatever is not printable ASCII percent-encoded (a user's URL may hold
    UTF-8); what is already encoded stays as it is."""
    return quote(url, safe=":/?#[]@!$&'()*+,;=%~")


def file_urls(base: str, meta: Metainfo) -> tuple[str | None, ...]:
    """The URL of each file of ``meta`` on the web seed ``base`` (None for padding files,
    which no mirror serves: their bytes are zeros)."""
    base = _encode_target(base)
    if not meta.multi_file:
        return (base + quote(meta.name, safe="") if base.endswith("/") else base,)
    if not base.endswith("/"):
        base += "/"  # BEP 19: a multi-file torrent's web seed is a directory
    root = base + quote(meta.name, safe="") + "/"
    return tuple(
        None if f.padding else root + "/".join(quote(c, safe="") for c in f.path)
        for f in meta.files
    )


@frozen
class Span(Record):
    """Part of a run of the torrent's bytes that lies in one file."""

    file: int  # index in ``Metainfo.files``
    offset: int  # in the file
    length: int
    at: int  # where it starts in the run


def spans(files: Sequence[FileEntry], start: int, length: int) -> list[Span]:
    """The files (and byte ranges in them) that the torrent bytes ``start`` to
    ``start + length`` lie in, in order; empty files are skipped."""
    out: list[Span] = []
    end = start + length
    lo, hi = 0, len(files)
    while lo < hi:  # the first file that ends after ``start``
        mid = (lo + hi) // 2
        f = files[mid]
        if f.offset + f.length <= start:
            lo = mid + 1
        else:
            hi = mid
    pos = start
    for i in range(lo, len(files)):
        if pos >= end:
            break
        f = files[i]
        if f.length == 0 or f.offset + f.length <= pos:
            continue
        n = min(end, f.offset + f.length) - pos
        out.append(Span(i, pos - f.offset, n, pos - start))
        pos += n
    if pos != end:
        raise ValueError(f"bytes {start}..{end} lie outside the torrent")
    return out


@frozen
class Target(Record):
    """Where one request goes: the connection's origin and the request target."""

    scheme: str
    host: str
    port: int
    path: str  # request target: path and query, percent-encoded

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def target(url: str) -> Target:
    """Split an http(s) URL (checked by :func:`seed_url_problem`) into a :class:`Target`."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url[:80]!r}")
    port = parts.port or (443 if scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme, parts.hostname, port, path)


# -- events -------------------------------------------------------------------


@frozen
class Body(Record):
    """Bytes of the range asked, in order."""

    data: bytes | bytearray


@frozen
class Finished(Record):
    """The response is complete and delivered every byte asked; ``reusable``: the
    connection can carry the next request."""

    reusable: bool


@frozen
class Redirect(Record):
    """Ask again at ``url`` (resolved, same scheme); the connection is done with."""

    url: str


@frozen
class Refused(Record):
    """The response cannot be used; the connection is done with."""

    outcome: Outcome
    detail: str


WebEvent: TypeAlias = Body | Finished | Redirect | Refused


class RangeClient:
    """One keep-alive HTTP/1.1 connection to a web seed, one request at a time: :meth:`get`
    sends, :meth:`receive_data` and :meth:`next_event` read.

    ``pipelined``: this client is one request of several in flight on one connection (h11
    keeps one per connection, so each request gets a client of its own): bytes after its
    response are not refused but kept for the next request's client (:meth:`leftover`),
    and it carries no second request."""

    def __init__(self, *, pipelined: bool = False) -> None:
        _load_h11()
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        self._pipelined = pipelined
        self._leftover = b""
        self._url = ""
        self._first = self._last = 0
        self._whole_file = False
        self._left = 0  # body bytes still expected
        self._status = 0
        self._location: str | None = None
        self._done = False  # a final event was returned: nothing more to read
        self._heard = False  # a byte of the current response arrived
        self._eof = False
        self.busy = False

    def get(self, url: str, first: int, last: int, *, whole_file: bool = False) -> bytes:
        """A ``GET`` of bytes ``first``..``last`` (inclusive) of ``url``; ``whole_file``: that
        is the whole file, so a ``200`` is as good as a ``206``."""
        if self.busy or self._done:
            raise RuntimeError("RangeClient: one request at a time, on a reusable connection")
        t = target(url)
        self._url, self._first, self._last, self._whole_file = url, first, last, whole_file
        self._left = last - first + 1
        self._status = 0
        self._location = None
        self._heard = False
        self.busy = True
        headers = [
            ("Host", t.host_header),
            ("Range", f"bytes={first}-{last}"),
            ("User-Agent", USER_AGENT),
            ("Accept-Encoding", "identity"),
        ]
        out = self._h11.send(h11.Request(method="GET", target=t.path, headers=headers))
        out2 = self._h11.send(h11.EndOfMessage())
        assert out is not None and out2 is not None
        return out + out2

    def receive_data(self, data: bytes) -> None:
        """Bytes from the socket; ``b""`` when the server closed the connection."""
        if not self._done:
            self._heard = self._heard or bool(data)
            self._eof = not data
            self._h11.receive_data(data)

    def next_event(self) -> WebEvent | NeedData:
        if self._done or not self.busy:
            return NEED_DATA
        try:
            event = self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            if self._eof and not self._heard:  # closed before a byte of the answer
                return self._refuse("closed", "the server closed the connection")
            return self._refuse("protocol-error", f"bad HTTP: {exc}")
        if event is h11.NEED_DATA:
            return NEED_DATA
        if isinstance(event, h11.InformationalResponse):
            return self.next_event()  # 100 Continue and the like: the answer follows
        if isinstance(event, h11.Response):
            return self._head(event)
        if isinstance(event, h11.Data):
            return self._data(event.data)  # h11's own copy out of its buffer: no other
        if isinstance(event, h11.EndOfMessage):
            return self._end()
        if isinstance(event, h11.ConnectionClosed):
            return self._refuse("closed", "the server closed the connection mid-response")
        return self._refuse("protocol-error", f"unexpected {type(event).__name__}")

    def _refuse(self, outcome: Outcome, detail: str) -> Refused:
        self._done = True
        self.busy = False
        return Refused(outcome, _one_line(detail))

    def _head(self, resp: h11.Response) -> WebEvent | NeedData:
        status = self._status = resp.status_code
        headers = dict(resp.headers)  # h11 lower-cases names
        if status in REDIRECTS:
            loc = headers.get(b"location")
            if loc is None:
                return self._refuse("bad-redirect", f"{status} without Location")
            url = urljoin(self._url, loc.decode("latin-1").strip())
            if urlsplit(url).scheme.lower() != urlsplit(self._url).scheme.lower():
                return self._refuse("bad-redirect", f"{status} to another scheme")
            if seed_url_problem(url) is not None:
                return self._refuse("bad-redirect", f"{status} to a bad URL")
            self._location = url
            self._left = -1  # its body, if any, is read and dropped
            return self.next_event()
        if status in (404, 410):
            return self._refuse("not-found", f"{status} for {_short(self._url)}")
        if status >= 500 or status == 429:
            return self._refuse("server-error", f"status {status}")
        asked = self._last - self._first + 1
        length = headers.get(b"content-length")
        if status == 200:
            if not self._whole_file:
                return self._refuse("ignores-range", "200 with the whole file for a Range request")
        elif status == 206:
            m = _CONTENT_RANGE.fullmatch(headers.get(b"content-range", b"").strip())
            if m is None or (int(m[1]), int(m[2])) != (self._first, self._last):
                got = headers.get(b"content-range", b"none").decode("latin-1")[:60]
                return self._refuse(
                    "wrong-range", f"Content-Range {got!r} for bytes {self._first}-{self._last}"
                )
        else:
            return self._refuse("bad-status", f"status {status}")
        if length is not None and length.isdigit():
            if int(length) > asked:
                return self._refuse("too-long", f"Content-Length {int(length)} for {asked} bytes")
            if int(length) < asked:
                return self._refuse("short", f"Content-Length {int(length)} for {asked} bytes")
        return self.next_event()

    def _data(self, data: bytes | bytearray) -> WebEvent | NeedData:
        if self._left < 0:
            return self.next_event()  # a redirect's body
        if self._status == 0:
            return self._refuse("protocol-error", "body before the status line")
        if len(data) > self._left:
            return self._refuse("too-long", "the body runs past the range asked")
        self._left -= len(data)
        return Body(data)

    def leftover(self) -> bytes:
        """A pipelined client's bytes after its response: the next response's start."""
        return self._leftover

    def _end(self) -> WebEvent:
        self.busy = False
        leftover, _closed = self._h11.trailing_data
        if self._pipelined:
            self._leftover = bytes(leftover)
        elif leftover:
            return self._refuse("too-long", "bytes after the end of the response")
        if self._location is not None:
            self._done = True
            return Redirect(self._location)
        if self._left:
            return self._refuse("short", f"the body ended {self._left} bytes short")
        reusable = self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE
        if reusable and not self._pipelined:
            self._h11.start_next_cycle()
        else:
            self._done = True
        return Finished(reusable)


def _one_line(text: str, limit: int = 160) -> str:
    """A server's words in a detail: printable, one line, bounded."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(url: str) -> str:
    return url if len(url) <= 80 else url[:77] + "..."
