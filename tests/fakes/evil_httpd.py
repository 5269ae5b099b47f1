"""A hostile web seed (BEP 19) on loopback: serves a directory, but answers ``Range`` requests in
one scripted wrong way (tests/adversarial/README.md, table M).

    with EvilHttpd(docroot, "127.0.0.41", "ignore-range") as evil:
        ... evil.base (ends in /), evil.requests ...

Modes: ``ignore-range`` (200 with the whole file), ``too-long`` (206, the right
Content-Range, but a Content-Length and body longer than asked), ``redirect-loop`` (302 to
itself), ``drip`` (206 head, then one byte a second), ``corrupt`` (206 with flipped bytes),
``503`` (every request), ``redirect`` (302 to ``redirect_to`` + the same path: an honest
redirector), ``hang-up`` (an honest 206 that leaves the connection open as HTTP/1.1 keep-alive
allows, then closes it a moment later without a word, as servers do with idle connections).
Other modes keep each connection alive for as many requests as the client sends.
"""

from __future__ import annotations

import re
import socket
import socketserver
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Literal
from urllib.parse import unquote

Mode = Literal[
    "ignore-range", "too-long", "redirect-loop", "drip", "corrupt", "503", "redirect", "hang-up"
]
_RANGE = re.compile(rb"range:\s*bytes=(\d+)-(\d+)", re.I)


class EvilHttpd:
    """The server; :attr:`requests` counts the requests it got, :attr:`times` says when
    (``time.monotonic()``)."""

    def __init__(self, docroot: Path, host: str, mode: Mode, *, redirect_to: str = "") -> None:
        self.docroot = Path(docroot)
        self.mode = mode
        self.redirect_to = redirect_to
        self.requests = 0
        self.times: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server((host, 0), Handler)
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def __enter__(self) -> EvilHttpd:
        self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        conn.settimeout(30)
        try:
            while not self._stop.is_set():
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                with self._lock:
                    self.requests += 1
                    self.times.append(time.monotonic())
                path = unquote(head.split(b" ")[1].decode())
                m = _RANGE.search(head)
                self._answer(conn, path, (int(m[1]), int(m[2])) if m else None)
        except OSError:
            return
        finally:
            conn.close()

    def _answer(self, conn: socket.socket, path: str, rng: tuple[int, int] | None) -> None:
        mode = self.mode
        if mode == "503":
            conn.sendall(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
            return
        if mode in ("redirect-loop", "redirect"):
            to = path if mode == "redirect-loop" else self.redirect_to.rstrip("/") + path
            conn.sendall(f"HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n"
                         .encode())  # fmt: skip
            return
        file = self.docroot / path.lstrip("/")
        data = file.read_bytes()
        if mode == "ignore-range" or rng is None:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
            return
        first, last = rng
        body = data[first : last + 1]
        cr = b"Content-Range: bytes %d-%d/%d\r\n" % (first, last, len(data))
        if mode == "too-long":
            body += b"\x00" * 1000
        if mode == "corrupt":
            body = bytes(b ^ 0xFF for b in body[:64]) + body[64:]
        head = b"HTTP/1.1 206 Partial Content\r\n" + cr + b"Content-Length: %d\r\n\r\n" % len(body)
        if mode == "drip":
            conn.sendall(head)
            for i in range(len(body)):
                if self._stop.wait(1.0):
                    return
                conn.sendall(body[i : i + 1])
            return
        conn.sendall(head + body)
        if mode == "hang-up":
            self._stop.wait(0.05)
            raise OSError("hung up")  # _serve closes the connection
