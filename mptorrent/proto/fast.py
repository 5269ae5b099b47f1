"""BEP 6 (the fast extension): the allowed-fast set.

A peer with the fast extension may tell another which pieces it may request
even while choked (Allowed Fast, message 0x11).  BEP 6 gives the canonical way
to pick them, so that a peer cannot get a fresh set by reconnecting: the
SHA-1 chain of the peer's address (its /24, so a few addresses on one network
share a set) followed by the info-hash, read as big-endian 32-bit words modulo
the piece count, until ``k`` distinct indices are found.

The wire messages themselves (Have All, Have None, Suggest, Reject Request,
Allowed Fast) are in :mod:`mptorrent.proto.wire`.  Pure function, no I/O.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Final

from mptorrent.proto.wire_errors import LocalProtocolError

__all__ = ["ALLOWED_FAST_COUNT", "allowed_fast_set"]

ALLOWED_FAST_COUNT: Final = 10  # libtorrent's allowed_fast_set_size default


def _address_key(ip: str) -> bytes:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if isinstance(addr, ipaddress.IPv4Address):
        return (int(addr) & 0xFFFFFF00).to_bytes(4, "big")  # BEP 6: the /24
    # BEP 6 defines IPv4 only.  Our choice for IPv6: the /48 (one site), zero-filled
    # to 16 bytes.  Only the sender computes its set, so no peer needs to agree.
    return addr.packed[:6] + bytes(10)


def allowed_fast_set(
    ip: str, info_hash: bytes, num_pieces: int, k: int = ALLOWED_FAST_COUNT
) -> list[int]:
    """The ``k`` piece indices (fewer if the torrent has fewer pieces) the peer at
    ``ip`` may request while choked, in BEP 6's order."""
    if len(info_hash) != 20:
        raise LocalProtocolError("info_hash must be 20 bytes")
    if num_pieces <= 0 or k < 0:
        raise LocalProtocolError("num_pieces must be positive and k not negative")
    k = min(k, num_pieces)  # the spec's loop never ends when k exceeds the pieces
    chosen: list[int] = []
    seen: set[int] = set()
    x = _address_key(ip) + info_hash
    while len(chosen) < k:
        x = hashlib.sha1(x).digest()
        for j in range(0, 20, 4):
            if len(chosen) >= k:
                break
            index = int.from_bytes(x[j : j + 4], "big") % num_pieces
            if index not in seen:
                seen.add(index)
                chosen.append(index)
    return chosen
