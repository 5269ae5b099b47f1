"""Run Debian's opentracker on loopback for interop tests.

    with run_opentracker([info_hash]) as tracker:
        ... tracker.announce_url, tracker.udp_url, tracker.port ...

Debian builds opentracker whitelist-only, so every info-hash a test uses must
be listed up front.  opentracker chroots into its working directory (hence
the whitelist path is relative to it) and drops to ``nobody``, so the
directory and the list must be world-readable.  It loads the list in a
background thread, and until then it refuses every torrent as "not
authorized", so we probe with a real announce until one succeeds.  The probe is
plain urllib on purpose: a broken mptorrent client must not look like a
broken tracker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_from_bytes

START_TIMEOUT = 10.0
PROBE_PEER_ID = b"-PROBE0-probeprobepr"
PROBE_PORT = 1  # port 0 is refused by some trackers; nobody listens on 1 on loopback


class OpenTrackerError(RuntimeError):
    pass


def opentracker_binary() -> str | None:
    return shutil.which("opentracker") or (
        "/usr/bin/opentracker" if os.access("/usr/bin/opentracker", os.X_OK) else None
    )


@dataclass(frozen=True)
class OpenTracker:
    host: str
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path

    @property
    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def announce_url(self) -> str:
        return f"http://{self._netloc}/announce"

    @property
    def scrape_url(self) -> str:
        return f"http://{self._netloc}/scrape"

    @property
    def udp_url(self) -> str:
        # opentracker serves BEP 15 on the same port number as HTTP
        return f"udp://{self._netloc}/announce"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _free_port(host: str) -> int:
    """A port free for both TCP and UDP on ``host`` (opentracker needs both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            with socket.socket(family, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return int(port)
    raise OpenTrackerError("no port free for both TCP and UDP")


def _get(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return bytes(resp.read(1 << 20))


def _announce_query(info_hash: bytes, event: str | None) -> str:
    q = (
        f"info_hash={quote_from_bytes(info_hash, safe='')}"
        f"&peer_id={quote_from_bytes(PROBE_PEER_ID, safe='')}"
        f"&port={PROBE_PORT}&uploaded=0&downloaded=0&left=1&compact=1&numwant=0"
    )
    return q + (f"&event={event}" if event else "")


def _probe(tracker: OpenTracker, info_hashes: list[bytes], deadline: float) -> None:
    """Return once every info-hash is accepted; leave no probe peer behind."""
    pending = list(info_hashes)
    last = "no answer yet"
    answered = False
    while pending or not answered:
        if tracker.process.poll() is not None:
            raise OpenTrackerError(
                f"opentracker exited with status {tracker.process.returncode}: {tracker.log()}"
            )
        if time.monotonic() > deadline:
            raise OpenTrackerError(f"opentracker not ready after {START_TIMEOUT} s: {last}")
        # An event=stopped probe proves nothing: opentracker answers it normally
        # even for a torrent that is not on the whitelist.
        if pending:
            url = f"{tracker.announce_url}?{_announce_query(pending[0], 'started')}"
        else:
            url = tracker.scrape_url  # nothing whitelisted: just wait for an answer
        try:
            body = _get(url, 1.0)
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
            time.sleep(0.05)
            continue
        if not body.startswith(b"d") or b"failure reason" in body:
            last = body[:200].decode("latin-1")
            time.sleep(0.05)
            continue
        answered = True
        if pending:
            _get(f"{tracker.announce_url}?{_announce_query(pending[0], 'stopped')}", 1.0)
            pending.pop(0)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(3)


@contextlib.contextmanager
def run_opentracker(info_hashes: list[bytes], host: str = "127.0.0.1") -> Iterator[OpenTracker]:
    """Start opentracker on ``host`` whitelisting ``info_hashes``; stop it at exit.

    Needs root (opentracker chroots).  Raises :class:`OpenTrackerError` if the
    binary is missing or the tracker does not come up.
    """
    binary = opentracker_binary()
    if binary is None:
        raise OpenTrackerError("opentracker is not installed (apt-get install opentracker)")
    for h in info_hashes:
        if len(h) != 20:
            raise ValueError("info-hashes must be 20 bytes")
    with tempfile.TemporaryDirectory(prefix="opentracker-") as tmp:
        root = Path(tmp, "root")  # the chroot holds only the whitelist
        root.mkdir()
        root.chmod(0o755)
        whitelist = root / "whitelist.txt"
        whitelist.write_text("".join(f"{h.hex()}\n" for h in info_hashes))
        whitelist.chmod(0o644)
        log_path = Path(tmp, "opentracker.log")
        last_error: OpenTrackerError | None = None
        for _ in range(3):  # another process may grab the port between pick and bind
            port = _free_port(host)
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [binary, "-i", host, "-p", str(port), "-P", str(port),
                     "-d", str(root), "-w", whitelist.name],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            tracker = OpenTracker(host, port, process, root, log_path)
            try:
                _probe(tracker, info_hashes, time.monotonic() + START_TIMEOUT)
            except OpenTrackerError as exc:
                _stop(process)
                last_error = exc
                continue
            try:
                yield tracker
            finally:
                _stop(process)
            return
        assert last_error is not None
        raise last_error
