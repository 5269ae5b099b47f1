"""Fuzz target: the BEP 9 and BEP 11 extension parsers and the metadata assembler.

The first byte picks the mode (its value modulo 3):

0. ``ut_metadata.decode_message``: a message or ``RemoteProtocolError``; a data
   message's bytes are the payload's tail, at most 16 KiB, and re-encode to a
   message that decodes the same.
1. ``ut_pex.decode_pex``: peers or ``RemoteProtocolError``; at most 50 added
   and 50 dropped, ports above 0, and a re-encoding decodes to the same peers.
2. ``ut_metadata.MetadataAssembler`` driven by a script of operations (two
   bytes each) from three peers, one of which lies: whatever the order, it
   raises nothing, never calls metadata verified unless it hashes to the
   info-hash, and keeps its counts in range.

    python fuzz/fuzz_ext.py -runs=20000              # atheris (pip install atheris)
    python fuzz/fuzz_ext.py --hypothesis 2000        # without atheris
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from mptorrent.proto.ext import ut_metadata as um
from mptorrent.proto.ext import ut_pex
from mptorrent.proto.wire_errors import RemoteProtocolError

INFO = b"d4:name" + b"33757:" + b"n" * 33757 + b"e"  # 3 pieces, the last 1003 bytes
IH = hashlib.sha1(INFO).digest()
FAKE = INFO[:-2] + b"!e"
PEERS = ("honest", "liar", "silent")


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 3, data[1:]
    if mode == 0:
        _metadata_message(body)
    elif mode == 1:
        _pex_message(body)
    else:
        _assembler(body)


def _metadata_message(body: bytes) -> None:
    try:
        msg = um.decode_message(body)
    except RemoteProtocolError as err:
        assert err.reason.startswith("ut_metadata: ") and err.reason.isprintable()
        return
    if isinstance(msg, um.MetadataPieceReceived):
        assert body.endswith(msg.data) and 0 < len(msg.data) <= um.METADATA_PIECE
        again = um.decode_message(um.encode_data(msg.piece, msg.total_size, msg.data))
        assert again == msg
    elif msg is not None:
        assert 0 <= msg.piece < um.MAX_METADATA_PIECES


def _pex_message(body: bytes) -> None:
    try:
        got = ut_pex.decode_pex(body)
    except RemoteProtocolError as err:
        assert err.reason.startswith("ut_pex: ") and err.reason.isprintable()
        return
    assert len(got.added) <= ut_pex.MAX_ADDED and len(got.dropped) <= ut_pex.MAX_DROPPED
    assert all(p.addr.port > 0 for p in got.added) and all(a.port > 0 for a in got.dropped)
    again = ut_pex.decode_pex(ut_pex.encode_pex(got.added, got.dropped))
    assert set(again.added) == set(got.added) and set(again.dropped) == set(got.dropped)


def _assembler(script: bytes) -> None:
    asm: um.MetadataAssembler[str] = um.MetadataAssembler(IH, len(INFO))
    now = 0.0
    for at in range(0, len(script) - 1, 2):
        op, arg = script[at], script[at + 1]
        peer = PEERS[op % 3]
        kind = (op >> 2) % 6
        piece = arg % 4  # 3 is out of range
        if kind == 0:
            asm.add_peer(peer, len(INFO) if arg & 0x80 else None)
        elif kind == 1:
            for i in asm.next_requests(peer, now):
                assert 0 <= i < asm.count
        elif kind == 2 and peer != "silent":
            source = INFO if peer == "honest" else FAKE
            chunk = source[piece * um.METADATA_PIECE : (piece + 1) * um.METADATA_PIECE]
            if arg & 0x40:
                chunk = chunk[:-1]
            outcome = asm.received(peer, piece, len(INFO), chunk)
            if isinstance(outcome, um.MetadataVerified):
                assert hashlib.sha1(outcome.info).digest() == IH and asm.complete
                assert outcome.info == INFO
            elif isinstance(outcome, um.PieceRefused):
                assert asm.excluded(peer)
            elif isinstance(outcome, um.MetadataMismatch) and outcome.culprit is not None:
                assert asm.excluded(outcome.culprit)
        elif kind == 3:
            asm.rejected(peer, piece)
        elif kind == 4:
            now += arg / 8
            for p, i in asm.expire(now):
                assert p in PEERS and 0 <= i < asm.count
        else:
            asm.remove_peer(peer)
        assert 0 <= asm.missing <= asm.count
        deadline = asm.next_deadline()
        assert deadline is None or deadline > now


def seeds() -> list[bytes]:
    request = um.encode_request(1)
    data = um.encode_data(2, len(INFO), INFO[2 * um.METADATA_PIECE :])
    pex = ut_pex.encode_pex(
        [ut_pex.PexPeer(ut_pex.PeerAddr("127.0.0.2", 6881), ut_pex.PexFlags.SEED)],
        [ut_pex.PeerAddr("::1", 80)],
    )
    # add all three, ask each, answer, expire, reject, answer again
    script = bytes(
        [0x00, 0x80, 0x01, 0x80, 0x02, 0x00, 0x04, 0, 0x05, 0, 0x06, 0,
         0x08, 0, 0x09, 1, 0x08, 2, 0x10, 120, 0x0D, 2, 0x04, 0, 0x08, 1, 0x14, 1]
    )  # fmt: skip
    return [
        b"\x00" + request,
        b"\x00" + um.encode_reject(0),
        b"\x00" + data,
        b"\x01" + pex,
        b"\x01" + ut_pex.encode_pex(),
        b"\x02" + script,
    ]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
    from fuzz.engine import main as run

    run(TestOneInput, seeds())


if __name__ == "__main__":
    main()
