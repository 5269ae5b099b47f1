"""Run Debian's lighttpd on loopback as a web seed (BEP 19) for tests.

    with run_lighttpd(docroot, "127.0.0.31") as httpd:
        ... httpd.url("payload.bin"), httpd.base ...

Each server gets its own loopback address, a free port and a generated config (document
root, bind address, port, optionally a rate cap; no daemonizing: ``lighttpd -D -f conf``);
it is stopped and its config removed when the block ends.  ``tls`` (a directory holding
``cert.pem`` and ``key.pem``) serves https with mod_openssl.  A server that is not ours: a
test passing against it shows we speak HTTP as real servers do.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

START_TIMEOUT = 10.0


class LighttpdError(RuntimeError):
    pass


def lighttpd_binary() -> str | None:
    return shutil.which("lighttpd") or (
        "/usr/sbin/lighttpd" if os.access("/usr/sbin/lighttpd", os.X_OK) else None
    )


@dataclass(frozen=True)
class Lighttpd:
    host: str
    port: int
    scheme: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base(self) -> str:
        """The server's root URL, ending in ``/``."""
        return f"{self.scheme}://{self.host}:{self.port}/"

    def url(self, path: str) -> str:
        return self.base + quote(path)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _config(
    docroot: Path, host: str, port: int, log: Path, tls: Path | None, rate_kib: int | None
) -> str:
    lines = [
        f'server.document-root = "{docroot}"',
        f'server.bind = "{host}"',
        f"server.port = {port}",
        f'server.errorlog = "{log}"',
        'server.modules = ("mod_openssl")' if tls else "server.modules = ()",
        'mimetype.assign = ("" => "application/octet-stream")',
        "server.max-keep-alive-requests = 1000",
    ]
    if rate_kib is not None:
        lines.append(f"server.kbytes-per-second = {rate_kib}")
    if tls is not None:
        lines += [
            'ssl.engine = "enable"',
            f'ssl.pemfile = "{tls / "cert.pem"}"',
            f'ssl.privkey = "{tls / "key.pem"}"',
        ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def run_lighttpd(
    docroot: str | Path, host: str, *, tls: Path | None = None, rate_kib: int | None = None
) -> Iterator[Lighttpd]:
    """lighttpd serving ``docroot`` on ``host`` (a loopback address) and a free port;
    ``rate_kib``: its whole upload capped at that many KiB/s."""
    binary = lighttpd_binary()
    if binary is None:
        raise LighttpdError("lighttpd is not installed (./scripts/test installs it)")
    work = Path(tempfile.mkdtemp(prefix="mptorrent-lighttpd-"))
    port = _free_port(host)
    log = work / "error.log"
    conf = work / "lighttpd.conf"
    conf.write_text(_config(Path(docroot).resolve(), host, port, log, tls, rate_kib))
    proc = subprocess.Popen(
        [binary, "-D", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    server = Lighttpd(host, port, "https" if tls else "http", proc, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise LighttpdError(f"lighttpd exited {proc.returncode}: {err}{server.log()}")
            try:
                socket.create_connection((host, port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise LighttpdError(f"lighttpd did not listen on {host}:{port}") from None
                time.sleep(0.02)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(work, ignore_errors=True)
