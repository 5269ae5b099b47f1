"""Magnet links (BEP 9, "magnet URI format"), both ways.

:func:`parse_magnet` turns a pasted ``magnet:?...`` string into a frozen
:class:`Magnet`; :meth:`Magnet.to_uri` formats one back, and
``parse_magnet(m.to_uri()) == m`` for every :class:`Magnet` it returns.

What is read:

* ``xt=urn:btih:`` with 40 hex or 32 base32 characters: the v1 info-hash,
  required (a v2-only magnet cannot be fetched by a v1 client: refused).
  ``xt=urn:btmh:1220`` + 64 hex (a SHA-256 multihash, BEP 52 hybrids) is kept
  in :attr:`Magnet.info_hash_v2`.  Other ``xt`` URNs (ed2k, sha1) are ignored.
* ``dn``: the display name until the metadata says otherwise (``+`` is a
  space here, as browsers and most clients write it; not in URLs).
* ``tr``: trackers, in order, each its own tier.  Like a .torrent's
  announce-list, an unusable one (a scheme we do not speak, such as ``wss``)
  is skipped with a line in :attr:`Magnet.warnings`, not refused.
* ``x.pe``: peers to dial for the metadata, ``HOST:PORT`` or ``[IPv6]:PORT``
  (``--peer``'s syntax).
* ``ws``: web seeds (http and https; others skipped with a warning, as for ``tr``).
* Anything else is ignored.

A magnet is user input, often pasted from a web page: it is bounded
(``MAX_URI_CHARS``, ``MAX_PARAMS``, ``MAX_VALUE_CHARS``) and anything
malformed raises :class:`~mptorrent.errors.BadMagnet` (exit status 3) with a
one-line, printable message naming the parameter at fault.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import unicodedata
from dataclasses import field
from typing import Final
from urllib.parse import quote, unquote, urlsplit

from mptorrent.errors import BadMagnet
from mptorrent.messages import PeerAddr
from mptorrent.proto import bencode
from mptorrent.proto.bencode import Encodable
from mptorrent.proto.metainfo import tracker_url_problem
from mptorrent.record import Record, frozen

__all__ = [
    "MAX_PARAMS",
    "MAX_URI_CHARS",
    "MAX_VALUE_CHARS",
    "Magnet",
    "is_magnet",
    "parse_magnet",
    "torrent_from_metadata",
]

# A magnet with a few dozen trackers is a few KiB; 64 KiB is far past any real
# one and keeps a pasted blob from costing more than a glance.
MAX_URI_CHARS: Final = 64 * 1024
MAX_PARAMS: Final = 512  # key=value pairs of every kind, ignored ones included
MAX_VALUE_CHARS: Final = 4096  # one decoded value (a tracker URL, a name)
MAX_PEERS: Final = 200  # x.pe entries
MAX_WARNINGS: Final = 10

_PREFIX: Final = "magnet:?"
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_BASE32: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567abcdefghijklmnopqrstuvwxyz")
_BTIH: Final = "urn:btih:"
_BTMH: Final = "urn:btmh:"
_SHA256_MULTIHASH: Final = "1220"  # multihash code 0x12 (sha2-256), length 0x20
_LABEL: Final = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


@frozen
class Magnet(Record):
    """A parsed magnet link.  ``info_hash`` is the 20-byte hash the wire, trackers and the DHT
    use: the v1 info-hash, or for a v2-only link (``urn:btmh`` alone) the v2 one cut to 20
    bytes (BEP 52);
    ``trackers`` are one tier each, in the order given; ``warnings`` are
    printable lines about skipped parameters (not part of :meth:`to_uri`)."""

    info_hash: bytes
    name: str | None = None
    trackers: tuple[str, ...] = ()
    peers: tuple[PeerAddr, ...] = ()
    web_seeds: tuple[str, ...] = ()
    info_hash_v2: bytes | None = None  # 32-byte SHA-256, from xt=urn:btmh:
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def info_hash_hex(self) -> str:
        return self.info_hash.hex()

    @property
    def v2_only(self) -> bool:
        """A link with a v2 info-hash and no v1 one."""
        return self.info_hash_v2 is not None and self.info_hash == self.info_hash_v2[:20]

    @property
    def tiers(self) -> tuple[tuple[str, ...], ...]:
        """The trackers as BEP 12 tiers (one each), as a .torrent's ``trackers`` are."""
        return tuple((url,) for url in self.trackers)

    def to_uri(self) -> str:
        """The magnet link: hex info-hash(es) first, then dn, tr, x.pe, ws."""
        parts = [] if self.v2_only else [f"xt={_BTIH}{self.info_hash.hex()}"]
        if self.info_hash_v2 is not None:
            parts.append(f"xt={_BTMH}{_SHA256_MULTIHASH}{self.info_hash_v2.hex()}")
        if self.name is not None:
            parts.append("dn=" + quote(self.name, safe=""))
        parts += ["tr=" + quote(url, safe="") for url in self.trackers]
        parts += ["x.pe=" + quote(str(peer), safe="[]:") for peer in self.peers]
        parts += ["ws=" + quote(url, safe="") for url in self.web_seeds]
        return _PREFIX + "&".join(parts)


def is_magnet(text: str) -> bool:
    """Whether ``text`` is meant as a magnet link (so the CLI does not open it as a file)."""
    return text[: len(_PREFIX)].lower() == _PREFIX


def _shown(text: str, limit: int = 60) -> str:
    """``text`` made safe for a one-line message."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def _redacted(url: str) -> str:
    """``scheme://host:port`` of a URL for a warning: private trackers put passkeys
    in paths and queries (as :mod:`mptorrent.proto.metainfo` does for .torrent files)."""
    try:
        parts = urlsplit(url)
        if parts.scheme and parts.netloc:
            return _shown(f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}")
    except ValueError:
        pass
    return _shown(url, 40)


def _decode(key: str, raw: str, *, plus_is_space: bool = False) -> str:
    if plus_is_space:
        raw = raw.replace("+", " ")
    try:
        value = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise BadMagnet(f"bad magnet link: {key!r} is not UTF-8 once %-decoded") from None
    if len(value) > MAX_VALUE_CHARS:
        raise BadMagnet(f"bad magnet link: {key!r} is over {MAX_VALUE_CHARS} characters")
    return value


def _btih(value: str) -> bytes:
    digest = value[len(_BTIH) :]
    if len(digest) == 40 and set(digest) <= _HEX:
        return bytes.fromhex(digest)
    if len(digest) == 32 and set(digest) <= _BASE32:
        try:
            return base64.b32decode(digest, casefold=True)
        except binascii.Error:  # unreachable with the alphabet checked; kept as a guard
            pass
    raise BadMagnet(
        f"bad magnet link: info-hash {_shown(digest)!r} is neither 40 hex nor 32 base32 characters"
    )


def _btmh(value: str) -> bytes:
    digest = value[len(_BTMH) :]
    body = digest[len(_SHA256_MULTIHASH) :]
    if digest.startswith(_SHA256_MULTIHASH) and len(body) == 64 and set(body) <= _HEX:
        return bytes.fromhex(body)
    raise BadMagnet(
        f"bad magnet link: v2 info-hash {_shown(digest)!r} is not '1220' and 64 hex characters"
    )


def _hostname_ok(host: str) -> bool:
    # Label by label (a single regex over the whole name backtracks badly).
    labels = host.removesuffix(".").split(".")
    return (
        0 < len(host) <= 253
        and all(_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()  # 1.2.3 or 999.1.1.1: a mistyped address, not a name
    )


def _peer(value: str) -> PeerAddr:
    """``HOST:PORT`` or ``[IPv6]:PORT``; an IP literal comes back in its normal form."""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        port_text = rest[1:] if sep and rest.startswith(":") else ""
        bracketed = True
    else:
        host, _, port_text = value.rpartition(":")
        bracketed = False
    bad = BadMagnet(f"bad magnet link: peer {_shown(value)!r} is not HOST:PORT or [IPv6]:PORT")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) <= 0xFFFF:
        raise bad
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if bracketed or not _hostname_ok(host):
            raise bad from None
        return PeerAddr(host, int(port_text))
    if ip.version == 6 and not bracketed:
        raise bad
    if ip.is_unspecified or ip.is_multicast:
        raise BadMagnet(f"bad magnet link: peer {_shown(value)!r} is not a unicast address")
    return PeerAddr(str(ip), int(port_text))


def _web_seed_problem(url: str) -> str | None:
    if not url.lower().startswith(("http://", "https://")):
        return "not an http(s) URL"
    return tracker_url_problem(url)


def parse_magnet(uri: str) -> Magnet:
    """The :class:`Magnet` of ``uri``, or :class:`BadMagnet` naming what is wrong."""
    if len(uri) > MAX_URI_CHARS:
        raise BadMagnet(f"bad magnet link: over {MAX_URI_CHARS} characters")
    uri = uri.strip()
    if not is_magnet(uri):
        raise BadMagnet("bad magnet link: it does not start with 'magnet:?'")
    query = uri[len(_PREFIX) :].split("#", 1)[0]
    pairs = [p for p in query.split("&") if p]
    if len(pairs) > MAX_PARAMS:
        raise BadMagnet(f"bad magnet link: {len(pairs)} parameters, over the limit of {MAX_PARAMS}")
    info_hash: bytes | None = None
    info_hash_v2: bytes | None = None
    name: str | None = None
    trackers: dict[str, None] = {}
    peers: dict[PeerAddr, None] = {}
    web_seeds: dict[str, None] = {}
    warnings: list[str] = []
    for pair in pairs:
        raw_key, sep, raw_value = pair.partition("=")
        key = unquote(raw_key[:16], errors="replace")  # only five names matter
        if key not in ("xt", "dn", "tr", "x.pe", "ws"):
            continue  # BEP 9 and its successors add parameters we do not need
        if not sep:
            raise BadMagnet(f"bad magnet link: {key!r} has no value")
        value = _decode(key, raw_value, plus_is_space=key == "dn")
        if key == "xt":
            lowered = value.lower()
            if lowered.startswith(_BTIH):
                digest = _btih(value)
                if info_hash is not None and digest != info_hash:
                    raise BadMagnet("bad magnet link: two different urn:btih info-hashes")
                info_hash = digest
            elif lowered.startswith(_BTMH):
                digest = _btmh(value)
                if info_hash_v2 is not None and digest != info_hash_v2:
                    raise BadMagnet("bad magnet link: two different urn:btmh info-hashes")
                info_hash_v2 = digest
        elif key == "dn":
            # Control characters could drive the terminal the name is shown on.
            if any(unicodedata.category(c) == "Cc" for c in value):
                raise BadMagnet("bad magnet link: 'dn' holds control characters")
            name = value
        elif key in ("tr", "ws"):
            # Like a .torrent's trackers and web seeds: the download can do without
            # an unusable one, so it is skipped with a warning rather than refused.
            tracker = key == "tr"
            problem = tracker_url_problem(value) if tracker else _web_seed_problem(value)
            if problem is None:
                (trackers if tracker else web_seeds).setdefault(value, None)
            elif len(warnings) < MAX_WARNINGS:
                what = "tracker" if tracker else "web seed"
                warnings.append(f"skipped {what} {_redacted(value)!r}: {problem}")
        else:
            peers.setdefault(_peer(value), None)
            if len(peers) > MAX_PEERS:
                raise BadMagnet(f"bad magnet link: more than {MAX_PEERS} 'x.pe' peers")
    if info_hash is None:
        if info_hash_v2 is None:
            raise BadMagnet("bad magnet link: no 'xt=urn:btih:' or 'xt=urn:btmh:' info-hash")
        info_hash = info_hash_v2[:20]  # BEP 52: a v2 swarm's name on the wire and at trackers
    return Magnet(
        info_hash=info_hash,
        name=name,
        trackers=tuple(trackers),
        peers=tuple(peers),
        web_seeds=tuple(web_seeds),
        info_hash_v2=info_hash_v2,
        warnings=tuple(warnings),
    )


def torrent_from_metadata(
    info: bytes, magnet: Magnet, piece_layers: tuple[tuple[bytes, bytes], ...] = ()
) -> bytes:
    """A .torrent for ``--save-torrent``: the verified info dictionary exactly as
    received (so its info-hash is unchanged), with ``announce``/``announce-list``
    from the magnet's trackers, ``piece layers`` (BEP 52) fetched from peers and
    ``url-list`` from its web seeds."""
    head: dict[bytes, Encodable] = {}
    if magnet.trackers:
        head[b"announce"] = magnet.trackers[0]
        head[b"announce-list"] = [[url] for url in magnet.trackers]
    # Keys sort as announce < announce-list < info < piece layers < url-list: splice
    # the raw info bytes in between rather than re-encode them.
    before = bencode.encode(head)[1:-1]
    tail: dict[bytes, Encodable] = {}
    if piece_layers:
        tail[b"piece layers"] = dict(piece_layers)
    if magnet.web_seeds:
        tail[b"url-list"] = list(magnet.web_seeds)
    after = bencode.encode(tail)[1:-1]
    return b"d" + before + b"4:info" + info + after + b"e"
