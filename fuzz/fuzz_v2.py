"""Fuzz target: BitTorrent v2's hash messages (BEP 52) from a hostile peer.

The first byte picks what the rest feeds:

- 0: the wire, after both handshakes: hash request / hashes / hash reject frames (and
  anything else).  Events or a ``RemoteProtocolError``; each hash event re-encodes to the
  exact bytes of its frame.
- 1: a hash request (48 bytes: a root picked by the first byte among the torrent's files
  and a made-up one, then base, index, count, proof layers) to ``merkle.answer`` as a seed
  answers it.  None (a reject) or exactly the hashes the fields call for, whose proof holds
  against the root whenever it reaches the root.
- 2: an answer to a :class:`~mptorrent.proto.merkle.LayerFetch`'s first request, the rest
  of the input as its hashes.  Never an exception; accepted only if it is the true piece
  layer (no forged proof gets through).

    python fuzz/fuzz_v2.py -runs=20000           # atheris (pip install atheris)
    python fuzz/fuzz_v2.py --hypothesis 2000     # without atheris
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from mptorrent.proto import merkle, wire

PL = 16384
BIG = bytes(range(256)) * 64 * 37 + b"tail"  # 37 pieces and 4 bytes: a 64-leaf tree
SMALL = b"small file"
IH = bytes(20)
_FIELDS = struct.Struct(">32sIIII")


def _torrent() -> tuple[merkle.MerklePieces, merkle.MerklePieces]:
    """(with piece layers, as a seed has them; without, as a magnet's info dict gives)."""
    n = -(-len(BIG) // PL)
    bare = merkle.MerklePieces(
        PL,
        n + 1,
        [merkle.V2File(0, len(BIG), None, None), merkle.V2File(n, len(SMALL), None, None)],
    )
    layer = b"".join(bare.piece_root(i, BIG[i * PL : (i + 1) * PL]) or b"" for i in range(n))
    root = merkle.layer_root(layer, PL)
    small = merkle.file_root(SMALL)
    full = merkle.MerklePieces(
        PL,
        n + 1,
        [merkle.V2File(0, len(BIG), root, layer), merkle.V2File(n, len(SMALL), small, None)],
    )
    magnet = merkle.MerklePieces(
        PL,
        n + 1,
        [merkle.V2File(0, len(BIG), root, None), merkle.V2File(n, len(SMALL), small, None)],
    )
    return full, magnet


FULL, MAGNET = _torrent()
ROOTS = [f.root or b"" for f in FULL.files] + [bytes(32)]


def _leaves(index: int) -> list[bytes] | None:
    f = FULL.locate(index)
    if f is None:
        return None
    data = (BIG if f[0].first_piece == 0 else SMALL)[f[1] * PL : (f[1] + 1) * PL]
    return FULL.piece_leaves(index, data)


def _wire(data: bytes) -> None:
    a = wire.Connection(IH, FULL.num_pieces, PL, FULL.num_pieces * PL)
    b = wire.Connection(IH, FULL.num_pieces, PL, FULL.num_pieces * PL)
    b.receive_data(a.send(wire.Handshake(IH, b"A" * 20)))
    a.receive_data(b.send(wire.Handshake(IH, b"B" * 20)))
    assert isinstance(a.next_event(), wire.Handshake)
    assert isinstance(b.next_event(), wire.Handshake)
    b.receive_data(data)
    try:
        while (ev := b.next_event()) is not wire.NEED_DATA:
            if isinstance(ev, (wire.HashRequest, wire.Hashes, wire.HashReject)):
                # the frame that made it ends where reading stopped
                unread = b._w - b._r
                assert data[: len(data) - unread].endswith(a.send(ev)), ev
    except wire.RemoteProtocolError as err:
        message = str(err)
        assert message and message.isprintable() and "\n" not in message, message


def _answer(data: bytes) -> None:
    if len(data) < _FIELDS.size:
        return
    _, base, index, count, proof = _FIELDS.unpack_from(data)
    root = ROOTS[data[0] % len(ROOTS)]
    req = merkle.HashRange(root, base, index, count, proof)
    got = merkle.answer(FULL, req, _leaves)
    if got is None:
        return
    assert len(got) == 32 * wire.hashes_expected(count, proof), req
    tree = FULL.file_tree(root)
    assert tree is not None
    if proof == tree.root_level - base - 1:
        assert merkle.check_answer(req, got, tree.root_level), req


def _layer(data: bytes) -> None:
    fetch = merkle.LayerFetch(MAGNET)
    req = fetch.next_request("peer")
    assert req is not None
    if fetch.received("peer", req, data):
        good = merkle.answer(FULL, req)
        assert good is not None and data[: req.count * 32] == good[: req.count * 32]


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 3, data[1:]
    if mode == 0:
        _wire(rest)
    elif mode == 1:
        _answer(rest)
    else:
        _layer(rest)


def seeds() -> list[bytes]:
    a = wire.Connection(IH, FULL.num_pieces, PL, FULL.num_pieces * PL)
    a.send(wire.Handshake(IH, b"A" * 20))
    root = ROOTS[0]
    top = 6  # 64 leaves
    frames = b"".join(
        a.send(e)
        for e in (
            wire.HashRequest(root, 2, 0, 16, 3),
            wire.Hashes(root, 0, 4, 4, 0, bytes(128)),
            wire.HashReject(root, 0, 0, 2, 1),
            wire.Have(1),
        )
    )
    piece_req = merkle.HashRange(root, 0, 0, 64, top - 1)
    first = merkle.LayerFetch(MAGNET).next_request("peer")
    assert first is not None
    honest = merkle.answer(FULL, first) or b""
    return [
        b"\x00" + frames,
        b"\x01" + _FIELDS.pack(b"", 2, 0, 16, 3)[32:].rjust(48, b"\x00"),
        b"\x01" + b"\x00" * 32 + _FIELDS.pack(root, 0, 4, 4, top - 1)[32:],
        b"\x01" + b"\x01" * 32 + _FIELDS.pack(root, 0, 0, 2, 0)[32:],
        b"\x01" + b"\x00" * 32 + _FIELDS.pack(*vars_of(piece_req))[32:],
        b"\x02" + honest,
        b"\x02" + bytes([honest[0] ^ 1]) + honest[1:],  # a forged first hash
    ]


def vars_of(req: merkle.HashRange) -> tuple[bytes, int, int, int, int]:
    return (req.root, req.base, req.index, req.count, req.proof_layers)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
    from fuzz.engine import main as run

    run(TestOneInput, seeds())


if __name__ == "__main__":
    main()
