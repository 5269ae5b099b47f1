"""Fuzz target: the picker fed packed bitfields, HAVEs and departures from the input.

The first two bytes give the piece count (1 to 2,048); the rest is a script of operations
on a ``policy.picker.Picker``, each an opcode byte and its operands: a peer's packed
bitfield (``nbytes(n)`` bytes, cut short where the input ends, spare bits as they come),
a departure, a HAVE (any 16-bit index, so some are out of range), a ``pick_for``, a piece
verified or given back.  A bitfield or a HAVE is refused with a ValueError exactly when
``proto.bitfield.problem`` names its problem or the index is out of range, and then changes
nothing; the picker's availability always equals a model's (a list of flags per peer); a
pick is a needed, wanted piece that one of that worker's peers has, never one another
worker holds.  ``proto.bitfield``'s conversions round-trip each accepted bitfield.

    python fuzz/fuzz_picker.py -runs=20000           # atheris (pip install atheris)
    python fuzz/fuzz_picker.py --hypothesis 2000     # without atheris
"""

from __future__ import annotations

import sys
from pathlib import Path

from mptorrent.policy.picker import NEEDED, Picker
from mptorrent.proto import bitfield

WORKERS = 3
MAX_OPS = 300  # a script longer than this is cut: each check is O(pieces x peers)


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    n = 1 + int.from_bytes(data[:2], "big") % 2048
    p = Picker(n, seed=0)
    model: dict[int, bytearray] = {}  # peer -> flags
    held: dict[int, int] = {}  # piece -> the worker that picked it
    at, ops = 2, 0
    while at < len(data) and ops < MAX_OPS:
        ops += 1
        op, at = data[at] % 6, at + 1
        peer = data[at] % 8 if at < len(data) else 0
        at += 1
        worker = peer % WORKERS
        if op == 0:  # a bitfield
            packed = data[at : at + bitfield.nbytes(n)]
            at += len(packed)
            why = bitfield.problem(packed, n)
            try:
                p.peer_packed(peer, packed, worker)
            except ValueError as err:
                assert why is not None and str(err) == why, (why, err)
                assert str(err).isprintable()
                continue
            assert why is None
            flags = bitfield.to_flags(packed, n)
            assert bitfield.from_flags(flags) == packed and bitfield.count(packed) == sum(flags)
            model[peer] = bytearray(flags)
        elif op == 1:  # it left
            p.peer_packed(peer, None, worker)
            model.pop(peer, None)
        elif op == 2:  # a HAVE, maybe out of range
            index = int.from_bytes(data[at : at + 2], "big") - 8
            at += 2
            try:
                p.peer_have(peer, index, worker)
            except ValueError:
                assert not 0 <= index < n, index
                continue
            assert 0 <= index < n, index
            model.setdefault(peer, bytearray(n))[index] = 1
        elif op == 3:  # a worker asks for work
            can = [f for q, f in model.items() if q % WORKERS == worker]
            for i in p.pick_for(worker, 1 + peer):
                assert i not in held, (i, held)
                assert any(f[i] for f in can), i
                held[i] = worker
        elif op == 4 and held:  # verified
            i = min(held)
            del held[i]
            assert p.finished(i)
        elif op == 5 and held:  # given back
            i = max(held)
            p.release(i, held.pop(i))
            assert p.state[i] == NEEDED
        if ops % 16 == 0:
            check(p, model)
    check(p, model)


def check(p: Picker, model: dict[int, bytearray]) -> None:
    counts = [0] * p.num_pieces
    for f in model.values():
        for i in bitfield.indices(f):
            counts[i] += 1
    assert p.availability == counts


def seeds() -> list[bytes]:
    return [
        b"\x00\x08" + b"\x00\x01\xff\xc0" + b"\x00\x02\x80\x03\x02\x05\x03\x04\x04",
        b"\x00\x0f" + b"\x00\x03\xf0\x0f" + b"\x02\x03\x00\x08" + b"\x03\x00\x03\x03\x05\x00",
        b"\x07\xcf" + b"\x00\x01" + b"\xff" * 250 + b"\x03\x07\x01\x01\x03\x01",
        b"\x00\x06" + b"\x00\x00\x01\x00\x00\x01" + b"\x02\x01\xff\xff\x02\x01\x00\x00",
        b"\x00\x00" + b"\x00\x04" + b"\x02\x04\x00\x08\x03\x04\x01\x04\x03\x04",
    ]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
    from fuzz.engine import main as run

    run(TestOneInput, seeds())


if __name__ == "__main__":
    main()
