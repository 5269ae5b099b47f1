"""proto/bitfield.py: packed and one-byte-per-piece bitfields, converted in C."""

from __future__ import annotations

import random

import pytest

from mptorrent.proto import bitfield, wire


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 15, 16, 17, 1000, 4099])
def test_packed_and_flags_round_trip_and_agree_with_the_wire(n: int) -> None:
    rng = random.Random(n)
    flags = bytes(rng.getrandbits(1) for _ in range(n))
    packed = bitfield.from_flags(flags)
    assert packed == wire.pack_bitfield(flags)
    assert bitfield.problem(packed, n) is None
    assert bitfield.to_flags(packed, n) == flags == bytes(wire.unpack_bitfield(packed, n))
    assert bitfield.count(packed) == sum(flags)
    assert bitfield.indices(flags) == [i for i in range(n) if flags[i]]
    full = bitfield.full(n)
    assert full == wire.pack_bitfield(b"\x01" * n)
    assert bitfield.problem(full, n) is None and bitfield.count(full) == n


def test_any_non_zero_byte_is_a_have() -> None:
    assert bitfield.from_flags(b"\x00\x07\xff\x01") == bytes([0b01110000])
    assert bitfield.ones(b"\x00\x07\xff\x01") == b"\x00\x01\x01\x01"


@pytest.mark.parametrize(
    ("packed", "n", "why"),
    [
        (b"", 1, "bitfield of 0 bytes for 1 pieces (want 1)"),
        (b"\x00\x00", 8, "bitfield of 2 bytes for 8 pieces (want 1)"),
        (b"\xff", 7, "bitfield with spare bits set"),  # the last bit is spare
        (b"\x80\x40", 9, "bitfield with spare bits set"),
        (b"\xff" * 62_500, 500_001, "bitfield of 62500 bytes for 500001 pieces (want 62501)"),
    ],
)
def test_a_hostile_bitfield_is_named(packed: bytes, n: int, why: str) -> None:
    assert bitfield.problem(packed, n) == why


def test_newly_set_finds_the_new_pieces_only() -> None:
    n = 100_000
    rng = random.Random(5)
    before = bytearray(n)
    for i in rng.sample(range(n), 30_000):
        before[i] = 1
    now = bytearray(before)
    new = sorted(rng.sample([i for i in range(n) if not before[i]], 321))
    for i in new:
        now[i] = 1
    now[0] = 7  # any non-zero byte counts
    if not before[0]:
        new = sorted({0, *new})
    assert bitfield.newly_set(now, before) == new
    assert bitfield.newly_set(before, before) == []
    assert bitfield.newly_set(memoryview(now), before) == new  # the done-map is a memoryview
