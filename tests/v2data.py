"""Builders of BitTorrent v2 and hybrid torrents (BEP 52) for tests, from file contents.

Written from the BEP, independent of ``mptorrent.disk.create``: hostile cases mutate the
dictionaries these return, and interop tests check both against libtorrent.
"""

from __future__ import annotations

import hashlib
from typing import Any

from mptorrent.proto import bencode

BLOCK = 16384


def _pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _reduce(row: list[bytes], width: int, pad: bytes) -> bytes:
    while width > 1:
        row = row + [pad] * (len(row) % 2)
        row = [hashlib.sha256(row[i] + row[i + 1]).digest() for i in range(0, len(row), 2)]
        pad = hashlib.sha256(pad + pad).digest()
        width //= 2
    return row[0] if row else pad


def tree_of(data: bytes, piece_length: int) -> tuple[bytes, bytes]:
    """(pieces root, piece layer) of one non-empty file's bytes; the layer is b"" for a file no
    larger than a piece (BEP 52 gives none)."""
    leaves = [hashlib.sha256(data[o : o + BLOCK]).digest() for o in range(0, len(data), BLOCK)]
    if len(data) <= piece_length:
        return _reduce(leaves, _pow2(len(leaves)), bytes(32)), b""
    per = piece_length // BLOCK
    layer = [_reduce(leaves[o : o + per], per, bytes(32)) for o in range(0, len(leaves), per)]
    pad = _reduce([], per, bytes(32))
    return _reduce(layer, _pow2(len(layer)), pad), b"".join(layer)


def v2_parts(
    files: list[tuple[tuple[bytes, ...], bytes]], piece_length: int, *, name: bytes = b"payload",
    hybrid: bool = False,
) -> tuple[dict[bytes, Any], dict[bytes, bytes]]:  # fmt: skip
    """(info dict, piece layers) of a multi-file v2 torrent, or a hybrid one (v1 ``files`` with
    BEP 47 padding after each file that does not end on a piece boundary, but the last)."""
    tree: dict[bytes, Any] = {}
    layers: dict[bytes, bytes] = {}
    for path, data in files:
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        leaf: dict[bytes, Any] = {b"length": len(data)}
        if data:
            root, layer = tree_of(data, piece_length)
            leaf[b"pieces root"] = root
            if layer:
                layers[root] = layer
        node[path[-1]] = {b"": leaf}
    info: dict[bytes, Any] = {
        b"file tree": tree, b"meta version": 2, b"name": name, b"piece length": piece_length,
    }  # fmt: skip
    if hybrid:
        ordered = sorted(files)
        v1: list[dict[bytes, Any]] = []
        blob = b""
        for n, (path, data) in enumerate(ordered):
            v1.append({b"length": len(data), b"path": list(path)})
            blob += data
            pad = -len(data) % piece_length
            if pad and n < len(ordered) - 1:
                v1.append({b"attr": b"p", b"length": pad, b"path": [b".pad", str(pad).encode()]})
                blob += bytes(pad)
        info[b"files"] = v1
        info[b"pieces"] = b"".join(
            hashlib.sha1(blob[o : o + piece_length]).digest()
            for o in range(0, len(blob), piece_length)
        )
    return info, layers


def v2_torrent(
    files: list[tuple[tuple[bytes, ...], bytes]], piece_length: int, *, hybrid: bool = False,
) -> bytes:  # fmt: skip
    info, layers = v2_parts(files, piece_length, hybrid=hybrid)
    return bencode.encode({b"info": info, b"piece layers": layers})
