"""Tests for mptorrent.proto.fast: BEP 6's allowed-fast set, against the spec's vectors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mptorrent.proto.fast import allowed_fast_set
from mptorrent.proto.wire import LocalProtocolError

SPEC_IH = b"\xaa" * 20


def test_the_bep6_example_sets() -> None:
    # BEP 6, "Allowed Fast": 1313 pieces, info-hash aa...aa, peer 80.4.4.200.
    assert allowed_fast_set("80.4.4.200", SPEC_IH, 1313, 7) == [
        1059,
        431,
        808,
        1217,
        287,
        376,
        1188,
    ]
    assert allowed_fast_set("80.4.4.200", SPEC_IH, 1313, 9) == [
        1059, 431, 808, 1217, 287, 376, 1188, 353, 508,
    ]  # fmt: skip


def test_one_network_shares_a_set_and_mapped_addresses_count_as_ipv4() -> None:
    base = allowed_fast_set("80.4.4.200", SPEC_IH, 1313)
    assert allowed_fast_set("80.4.4.1", SPEC_IH, 1313) == base
    assert allowed_fast_set("::ffff:80.4.4.7", SPEC_IH, 1313) == base
    assert allowed_fast_set("80.4.5.200", SPEC_IH, 1313) != base
    six = allowed_fast_set("2001:db8:1::1", SPEC_IH, 1313)
    assert six == allowed_fast_set("2001:db8:1:ffff::2", SPEC_IH, 1313)  # one /48
    assert six != allowed_fast_set("2001:db8:2::1", SPEC_IH, 1313)


def test_small_torrents_end() -> None:
    # The spec's loop would never end with more wanted than there are pieces.
    assert sorted(allowed_fast_set("10.0.0.1", SPEC_IH, 3, 10)) == [0, 1, 2]
    assert allowed_fast_set("10.0.0.1", SPEC_IH, 1, 10) == [0]
    assert allowed_fast_set("10.0.0.1", SPEC_IH, 5, 0) == []


def test_bad_arguments_are_local_errors() -> None:
    for args in (("10.0.0.1", b"x", 5), ("10.0.0.1", SPEC_IH, 0)):
        with pytest.raises(LocalProtocolError):
            allowed_fast_set(*args)
    with pytest.raises(ValueError):
        allowed_fast_set("not an ip", SPEC_IH, 5)


@settings(max_examples=100, deadline=None)
@given(st.ip_addresses(), st.binary(min_size=20, max_size=20), st.integers(1, 5000))
def test_sets_are_distinct_indices_in_range(ip: object, ih: bytes, n: int) -> None:
    got = allowed_fast_set(str(ip), ih, n)
    assert len(got) == min(10, n) == len(set(got)) and all(0 <= i < n for i in got)
