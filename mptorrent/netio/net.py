"""Tracker I/O: the only module that opens sockets to talk to trackers.

The codecs in :mod:`mptorrent.proto.tracker` build URLs and parse replies; this
module moves the bytes.  Every request has one deadline for the whole exchange
(DNS aside): each socket read and write gets only the time that is left, so a
tracker that drips one byte a second cannot hold us past ``timeout``.  Bodies
are read against a hard cap, TLS certificates are always verified, redirects
are bounded, and every failure is a one-line :class:`TrackerError`.

UDP trackers (BEP 15) run the sans-IO :class:`~mptorrent.proto.tracker.UDPExchange`
over one connected datagram socket: the kernel then drops datagrams from any
other address, and a closed port fails at once (ICMP port unreachable).
Connection ids are kept for reuse within their minute.  :func:`announce` and
:func:`scrape` pick the transport from the URL's scheme.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import SplitResult, urljoin, urlsplit

from mptorrent import __version__
from mptorrent.errors import TrackerError
from mptorrent.proto import bencode
from mptorrent.proto.tracker import (
    MAX_PEERS,
    AnnounceRequest,
    AnnounceResponse,
    ScrapeResult,
    UDPAnnounce,
    UDPExchange,
    UDPRetry,
    UDPScrape,
    announce_url,
    one_line,
    parse_announce,
    parse_scrape,
    raise_for_failure,
    scrape_request_url,
)

if TYPE_CHECKING:
    import http.client
    import ssl

    from _typeshed import ReadableBuffer, WriteableBuffer

    # host, port, deadline, source address
    _MakeConnection = Callable[[str, int, float, str | None], http.client.HTTPConnection]

USER_AGENT = f"mptorrent/{__version__}"
MAX_REDIRECTS = 5
MAX_ERROR_BODY = 64 * 1024  # enough of a non-200 body to find a failure reason in
_CHUNK = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class HTTPStatusError(TrackerError):
    """A tracker answered with an HTTP status other than 200 (after redirects)."""

    def __init__(self, message: str, status: int, body: bytes) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


class _DeadlineSocket(socket.socket):
    """A TCP socket whose every read and write times out at one shared deadline."""

    deadline = math.inf

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        self.settimeout(_remaining(self.deadline))
        return super().recv_into(buffer, nbytes, flags)

    def sendall(self, data: ReadableBuffer, flags: int = 0) -> None:
        self.settimeout(_remaining(self.deadline))
        super().sendall(data, flags)


# http.client and ssl (with the email package) cost tens of milliseconds to import, and a
# fetch that uses only --peer or UDP trackers never needs them: the classes built on them
# are made on first use.  ``net._DeadlineSSLSocket`` still works (PEP 562).
def __getattr__(name: str) -> type[ssl.SSLSocket]:
    if name == "_DeadlineSSLSocket":
        return _deadline_ssl_socket()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _deadline_ssl_socket() -> type[ssl.SSLSocket]:
    import ssl

    class _DeadlineSSLSocket(ssl.SSLSocket):
        """The TLS twin of :class:`_DeadlineSocket`, made by :func:`_tls` for every wrapped socket:
        the handshake and each read and write share the request's one deadline."""

        deadline = math.inf

        def recv_into(
            self, buffer: WriteableBuffer, nbytes: int | None = None, flags: int = 0
        ) -> int:
            self.settimeout(_remaining(self.deadline))
            return super().recv_into(buffer, nbytes, flags)

        def sendall(self, data: ReadableBuffer, flags: int = 0) -> None:
            self.settimeout(_remaining(self.deadline))
            super().sendall(data, flags)

    return _DeadlineSSLSocket


_tls_context: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    # Built once: loading the system CA store costs milliseconds per request.
    global _tls_context
    if _tls_context is None:
        import ssl

        ctx = ssl.create_default_context()  # CERT_REQUIRED and hostname checks
        ctx.sslsocket_class = _deadline_ssl_socket()
        _tls_context = ctx
    return _tls_context


def _open_socket(
    host: str, port: int, deadline: float, source_address: str | None
) -> _DeadlineSocket:
    source = (source_address, 0) if source_address else None
    raw = socket.create_connection((host, port), _remaining(deadline), source)
    sock = _DeadlineSocket(raw.family, raw.type, raw.proto, fileno=raw.detach())
    sock.deadline = deadline
    sock.settimeout(_remaining(deadline))
    return sock


@functools.cache
def _connection_classes() -> tuple[_MakeConnection, _MakeConnection]:
    """The plain and the TLS connection class, built on first use (see ``__getattr__``)."""
    import http.client

    class _Connection(http.client.HTTPConnection):
        """HTTP over :func:`_open_socket` (from ``source_address`` if given): connecting, sending
        and reading all count against the request's one deadline."""

        def __init__(
            self, host: str, port: int, deadline: float, source_address: str | None
        ) -> None:
            source = (source_address, 0) if source_address else None
            super().__init__(host, port, timeout=_remaining(deadline), source_address=source)
            self._deadline = deadline
            self._source = source_address

        def connect(self) -> None:
            self.sock = _open_socket(self.host, self.port, self._deadline, self._source)

    class _TLSConnection(_Connection):
        """HTTPS on the same deadline socket; the shared default context checks the certificate and
        the host name."""

        def connect(self) -> None:
            raw = _open_socket(self.host, self.port, self._deadline, self._source)
            try:
                tls = _tls().wrap_socket(
                    raw, server_hostname=self.host, do_handshake_on_connect=False
                )
            except BaseException:
                raw.close()
                raise
            assert isinstance(tls, _deadline_ssl_socket())
            self.sock = tls
            tls.deadline = self._deadline  # type: ignore[attr-defined]
            tls.settimeout(_remaining(self._deadline))
            tls.do_handshake()

    return _Connection, _TLSConnection


def _where(parts: SplitResult) -> str:
    # Host and port only: private trackers put passkeys in the path and query,
    # and error messages end up in logs and bug reports.
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    try:
        port = parts.port
    except ValueError:
        port = None
    kind = "UDP tracker" if parts.scheme.lower() == "udp" else "tracker"
    return f"{kind} {host}:{port}" if port else f"{kind} {host}"


def where(url: str) -> str:
    """``tracker host:port`` (``UDP tracker host:port``): how messages name a tracker."""
    try:
        return _where(urlsplit(url))
    except ValueError:
        return "tracker ?"


def _split(url: str) -> SplitResult:
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise TrackerError("bad tracker URL: it contains spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise TrackerError(f"bad tracker URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise TrackerError(f"bad tracker URL: scheme {parts.scheme!r} is not http or https")
    if not parts.hostname:
        raise TrackerError("bad tracker URL: no host")
    return parts


def _read_capped(resp: http.client.HTTPResponse, cap: int, where: str, strict: bool) -> bytes:
    """At most ``cap`` bytes of the body; never asks the socket for more than cap+1."""
    if strict and resp.length is not None and resp.length > cap:
        raise TrackerError(f"{where} sent {resp.length} bytes, over the {cap}-byte limit")
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = resp.read(min(_CHUNK, cap + 1 - total))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        chunks.append(chunk)
        if total > cap:
            if strict:
                raise TrackerError(f"{where} sent more than the {cap}-byte limit")
            return b"".join(chunks)[:cap]


def _get_once(
    parts: SplitResult, deadline: float, max_bytes: int, source_address: str | None
) -> tuple[int, str, str | None, bytes]:
    """One GET: (status, reason, Location header, body). Raises OSError/HTTPException."""
    tls = parts.scheme.lower() == "https"
    port = parts.port or (443 if tls else 80)
    plain, secure = _connection_classes()
    conn = (secure if tls else plain)(parts.hostname or "", port, deadline, source_address)
    where = _where(parts)
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.putrequest("GET", target, skip_accept_encoding=True)
        conn.putheader("User-Agent", USER_AGENT)
        conn.putheader("Accept-Encoding", "identity")  # a tracker reply is never worth inflating
        conn.putheader("Connection", "close")
        conn.endheaders()
        resp = conn.getresponse()
        if resp.status in _REDIRECTS:
            return resp.status, resp.reason, resp.getheader("Location"), b""
        if resp.status != 200:
            body = _read_capped(resp, min(max_bytes, MAX_ERROR_BODY), where, strict=False)
            return resp.status, resp.reason, None, body
        return 200, resp.reason, None, _read_capped(resp, max_bytes, where, strict=True)
    finally:
        conn.close()


def http_get(
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    max_redirects: int = MAX_REDIRECTS,
    source_address: str | None = None,
) -> bytes:
    """GET ``url`` and return the body of its 200 reply.

    ``timeout`` bounds the whole exchange, redirects included.  A body over
    ``max_bytes`` is refused.  ``source_address`` binds the local end of each
    connection, so test peers on 127.x each reach the tracker from their own
    address.  Any failure raises a one-line :class:`TrackerError`
    (:class:`HTTPStatusError` for a status other than 200).
    """
    import http.client  # here, not at the top: see __getattr__ above
    import ssl

    deadline = time.monotonic() + timeout
    max_redirects = max(max_redirects, 0)
    for _ in range(max_redirects + 1):
        parts = _split(url)
        where = _where(parts)
        try:
            status, reason, location, body = _get_once(parts, deadline, max_bytes, source_address)
        except TimeoutError:
            raise TrackerError(f"{where} did not answer within {timeout:g} s") from None
        except ConnectionRefusedError:
            raise TrackerError(f"{where} refused the connection") from None
        except ssl.SSLCertVerificationError as exc:
            detail = exc.verify_message or exc.reason or "verification failed"
            raise TrackerError(f"{where}: TLS certificate check failed: {detail}") from None
        except ssl.SSLError as exc:
            raise TrackerError(f"{where}: TLS failed: {exc.reason or exc}") from None
        except socket.gaierror as exc:
            raise TrackerError(f"{where}: cannot resolve the host ({exc.strerror})") from None
        except OSError as exc:
            raise TrackerError(f"{where}: {exc.strerror or exc}") from None
        except http.client.HTTPException as exc:
            detail = one_line(str(exc) or type(exc).__name__, 100)
            raise TrackerError(f"{where}: bad HTTP reply ({detail})") from None
        if status == 200:
            return body
        if status in _REDIRECTS and location:
            url = urljoin(url, location)
            continue
        raise HTTPStatusError(
            f"{where} answered HTTP {status} {one_line(reason, 80)}".rstrip(), status, body
        )
    raise TrackerError(f"{where}: more than {max_redirects} redirects")


def _tracker_get(url: str, timeout: float, source_address: str | None) -> bytes:
    try:
        return http_get(
            url,
            timeout=timeout,
            max_bytes=bencode.MAX_TRACKER_REPLY_SIZE,
            source_address=source_address,
        )
    except HTTPStatusError as exc:
        # Some trackers send their bencoded failure reason with a 4xx status;
        # that reason says more than the status line.
        raise_for_failure(exc.body)
        raise


def announce_http(
    url: str,
    req: AnnounceRequest,
    *,
    timeout: float,
    source_address: str | None = None,
    max_peers: int = MAX_PEERS,
) -> AnnounceResponse:
    """Announce ``req`` to the HTTP tracker at ``url``."""
    body = _tracker_get(announce_url(url, req), timeout, source_address)
    return parse_announce(body, max_peers=max_peers)


def scrape_http(
    url: str,
    info_hash: bytes,
    *,
    timeout: float,
    source_address: str | None = None,
) -> ScrapeResult:
    """Scrape one torrent from the HTTP tracker whose announce URL is ``url`` (BEP 48)."""
    target = scrape_request_url(url, [info_hash])
    if target is None:
        raise TrackerError("this tracker has no scrape URL (its path does not end in 'announce')")
    return parse_scrape(_tracker_get(target, timeout, source_address), info_hash)


# -- UDP (BEP 15) -------------------------------------------------------------

_UDP_RECV = 65536  # larger than any datagram
_MAX_CACHED = 256
_connections: dict[tuple[str, int, str | None], tuple[int, float]] = {}
_connections_lock = threading.Lock()
_R = TypeVar("_R")  # what an exchange yields: an announce reply or scrape counts


def _split_udp(url: str) -> tuple[SplitResult, int, bytes]:
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise TrackerError("bad tracker URL: it contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TrackerError(f"bad tracker URL: {exc}") from None
    if parts.scheme.lower() != "udp":
        raise TrackerError(f"bad tracker URL: scheme {parts.scheme!r} is not udp")
    if not parts.hostname:
        raise TrackerError("bad tracker URL: no host")
    if not port:
        raise TrackerError("bad tracker URL: no port")
    # BEP 41: the path and query travel with the announce (passkeys live there)
    url_data = (parts.path + (f"?{parts.query}" if parts.query else "")).encode()
    return parts, port, url_data


_SockAddr = tuple[str, int] | tuple[str, int, int, int]


def _udp_addresses(
    host: str, port: int, source_address: str | None, where: str
) -> list[tuple[socket.AddressFamily, _SockAddr]]:
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise TrackerError(f"{where}: cannot resolve the host ({exc.strerror})") from None
    if source_address:
        want = socket.AF_INET6 if ":" in source_address else socket.AF_INET
        infos = [i for i in infos if i[0] == want]
        if not infos:
            version = "IPv6" if want == socket.AF_INET6 else "IPv4"
            raise TrackerError(f"{where}: no {version} address to reach from {source_address}")
    out = [(i[0], i[4]) for i in infos if i[0] in (socket.AF_INET, socket.AF_INET6)]
    if not out:
        raise TrackerError(f"{where}: cannot resolve the host (no IP address)")
    return out  # type: ignore[return-value]


def _is_ipv6(family: int, host: str) -> bool:
    if family != socket.AF_INET6:
        return False
    ip = ipaddress.IPv6Address(host.partition("%")[0])
    return ip.ipv4_mapped is None  # a mapped address carries IPv4 and 6-byte peers


def _forget(key: tuple[str, int, str | None]) -> None:
    with _connections_lock:
        _connections.pop(key, None)


def _udp_run(
    ex: UDPExchange[_R],
    family: socket.AddressFamily,
    sockaddr: _SockAddr,
    source_address: str | None,
    deadline: float,
) -> None:
    """Drive ``ex`` to its end over one connected socket; raises OSError and TrackerError."""
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        if source_address:
            sock.bind((source_address, 0))
        sock.connect(sockaddr)  # fails at once without a route (an IPv6-less host, say)
        sock.send(ex.start(time.monotonic()))
        while not ex.done:
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError
            if now >= ex.deadline:
                sock.send(ex.timeout(now))
                continue
            sock.settimeout(max(min(ex.deadline, deadline) - now, 0.001))
            try:
                data = sock.recv(_UDP_RECV)
            except TimeoutError:
                continue
            reply = ex.receive(data, time.monotonic())
            if reply is not None:
                sock.send(reply)


def _udp_exchange(
    url: str,
    make: Callable[[bool, bytes, tuple[int, float] | None], UDPExchange[_R]],
    *,
    timeout: float,
    source_address: str | None,
) -> UDPExchange[_R]:
    """Run one exchange against the tracker at ``url`` within ``timeout`` seconds.

    A host name with several addresses is tried address by address, but only
    past failures that come at once (no route, port unreachable): a silent
    address uses up the whole timeout.
    """
    deadline = time.monotonic() + timeout
    parts, port, url_data = _split_udp(url)
    where = _where(parts)
    addresses = _udp_addresses(parts.hostname or "", port, source_address, where)
    for n, (family, sockaddr) in enumerate(addresses, 1):
        key = (sockaddr[0], sockaddr[1], source_address)
        with _connections_lock:
            cached = _connections.get(key)
        ex = make(_is_ipv6(family, sockaddr[0]), url_data, cached)
        try:
            _udp_run(ex, family, sockaddr, source_address, deadline)
        except TimeoutError:
            _forget(key)
            msg = f"{where} did not answer within {timeout:g} s"
            if ex.ignored:
                msg += f" (ignored {ex.ignored} bad packets, last: {ex.last_ignored})"
            raise TrackerError(msg) from None
        except TrackerError as exc:
            _forget(key)
            raise TrackerError(f"{where}: {exc}") from None
        except OSError as exc:
            _forget(key)
            if n < len(addresses) and time.monotonic() < deadline:
                continue
            if isinstance(exc, ConnectionRefusedError):
                raise TrackerError(f"{where} refused the connection (port unreachable)") from None
            raise TrackerError(f"{where}: {exc.strerror or exc}") from None
        if ex.connection is not None:
            with _connections_lock:
                if len(_connections) >= _MAX_CACHED:
                    _connections.clear()
                _connections[key] = ex.connection
        return ex
    raise AssertionError("unreachable: _udp_addresses never returns an empty list")


def announce_udp(
    url: str,
    req: AnnounceRequest,
    *,
    timeout: float,
    source_address: str | None = None,
    retry: UDPRetry | None = None,
    max_peers: int = MAX_PEERS,
) -> AnnounceResponse:
    """Announce ``req`` to the UDP tracker at ``url`` (BEP 15).

    ``retry`` is the retransmission schedule (BEP 15's own by default);
    ``timeout`` caps the whole exchange whatever the schedule says.
    """

    def make(ipv6: bool, url_data: bytes, cached: tuple[int, float] | None) -> UDPAnnounce:
        return UDPAnnounce(
            req, ipv6=ipv6, url_data=url_data, max_peers=max_peers, retry=retry, connection=cached
        )

    ex = _udp_exchange(url, make, timeout=timeout, source_address=source_address)
    assert ex.result is not None
    return ex.result


def scrape_udp(
    url: str,
    info_hash: bytes,
    *,
    timeout: float,
    source_address: str | None = None,
    retry: UDPRetry | None = None,
) -> ScrapeResult:
    """Scrape one torrent from the UDP tracker at ``url`` (BEP 15)."""

    def make(_ipv6: bool, _url_data: bytes, cached: tuple[int, float] | None) -> UDPScrape:
        return UDPScrape([info_hash], retry=retry, connection=cached)

    ex = _udp_exchange(url, make, timeout=timeout, source_address=source_address)
    assert ex.result is not None
    return ex.result[0]


# -- either transport ---------------------------------------------------------


def prepare(urls: Iterable[str]) -> None:
    """Import what talking to ``urls`` needs, in the calling thread.

    Announces run in threads while the coordinator forks workers, and a fork in the
    middle of another thread's import leaves the child that module's lock, held for ever.
    """
    if any(_scheme(u) in ("http", "https", "udp") for u in urls):
        # the codec getaddrinfo encodes a host name with, loaded by the first lookup
        import encodings.idna  # noqa: F401
    if any(_scheme(u) in ("http", "https") for u in urls):
        _connection_classes()
    if any(_scheme(u) == "https" for u in urls):
        _tls()  # built here, once: two announce threads building it would race


def _scheme(url: str) -> str:
    return url.partition(":")[0].lower()


def _named(url: str, exc: TrackerError) -> TrackerError:
    # Reply errors ("tracker failure: ...") do not say which tracker sent them.
    name = where(url)
    if str(exc).startswith(name):
        return exc
    return TrackerError(f"{name}: {exc}")


def announce(
    url: str,
    req: AnnounceRequest,
    *,
    timeout: float,
    source_address: str | None = None,
    udp_retry: UDPRetry | None = None,
    max_peers: int = MAX_PEERS,
) -> AnnounceResponse:
    """Announce over HTTP(S) or UDP, as the URL says; every error names the tracker."""
    scheme = _scheme(url)
    try:
        if scheme == "udp":
            return announce_udp(
                url, req, timeout=timeout, source_address=source_address,
                retry=udp_retry, max_peers=max_peers,
            )  # fmt: skip
        if scheme in ("http", "https"):
            return announce_http(
                url, req, timeout=timeout, source_address=source_address, max_peers=max_peers
            )
    except TrackerError as exc:
        raise _named(url, exc) from None
    raise TrackerError(f"{where(url)}: scheme {scheme!r} is not http, https or udp")


def scrape(
    url: str,
    info_hash: bytes,
    *,
    timeout: float,
    source_address: str | None = None,
    udp_retry: UDPRetry | None = None,
) -> ScrapeResult:
    """Scrape over HTTP(S) or UDP, as the URL says; every error names the tracker."""
    scheme = _scheme(url)
    try:
        if scheme == "udp":
            return scrape_udp(
                url, info_hash, timeout=timeout, source_address=source_address, retry=udp_retry
            )
        if scheme in ("http", "https"):
            return scrape_http(url, info_hash, timeout=timeout, source_address=source_address)
    except TrackerError as exc:
        raise _named(url, exc) from None
    raise TrackerError(f"{where(url)}: scheme {scheme!r} is not http, https or udp")
