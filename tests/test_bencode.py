"""mptorrent.proto.bencode: canonical-only, bounded decoding (adversarial table A)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mptorrent.errors import BencodeError, ExitStatus
from mptorrent.proto import bencode

CAP = 1 << 20


def decode(data: bytes, **limits: int) -> Any:
    return bencode.decode(data, max_size=limits.pop("max_size", CAP), **limits)


def refuse(data: bytes, **limits: int) -> BencodeError:
    with pytest.raises(BencodeError) as info:
        decode(data, **limits)
    return info.value


# -- canonical form -------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason", "offset"),
    [
        # Python's int() accepts all of these; bencoder.pyx passes them through (§3.1).
        (b"i+5e", "not a plain decimal", 0),
        (b"i 5e", "not a plain decimal", 0),
        (b"i5 e", "not a plain decimal", 0),
        (b"i1_0e", "not a plain decimal", 0),
        (b"i01e", "leading zero", 0),
        (b"i00e", "leading zero", 0),
        (b"i-01e", "leading zero", 0),
        (b"i-0e", "negative zero", 0),
        (b"ie", "not a plain decimal", 0),
        (b"i-e", "not a plain decimal", 0),
        (b"i--1e", "not a plain decimal", 0),
        (b"i\xd9\xa1e", "not a plain decimal", 0),  # Arabic-Indic digit one
        (b"1_0:aaaaaaaaaa", "not canonical", 0),
        (b"+1:a", "unexpected byte", 0),
        (b"-1:a", "unexpected byte", 0),
        (b"01:a", "not canonical", 0),
        (b"00:", "not canonical", 0),
        (b"l01:ae", "not canonical", 1),
        (b"d1:bi1e1:ai2ee", "unsorted dictionary key", 9),
        (b"d2:aai1e1:bi2e1:ai3ee", "unsorted dictionary key", 16),
        (b"d1:ai1e1:ai2ee", "duplicate dictionary key", 9),
        (b"d0:i1e0:i2ee", "duplicate dictionary key", 8),
        (b"ld1:ai1e1:ai1eee", "duplicate dictionary key", 10),
        (b"di1ei2ee", "dictionary key is not a string", 1),
        (b"dli1eei2ee", "dictionary key is not a string", 1),
        (b"dde1:ae", "dictionary key is not a string", 1),
        (b"d1:ae", "dictionary key without a value", 4),
        (b"i1ei2e", "trailing data", 3),
        (b"0:0:", "trailing data", 2),
        (b"lee", "trailing data", 2),
        (b"de\n", "trailing data", 2),
        (b"e", "unexpected 'e'", 0),
        (b"x", "unexpected byte", 0),
        (b"li1ex", "unexpected byte", 4),
        (b"", "empty input", 0),
        (b"i1", "unterminated", 0),
        (b"i", "unterminated", 0),
        (b"l", "end of input", 1),
        (b"li1e", "end of input", 4),
        (b"d1:a", "end of input", 4),
        (b"d1:ai1e", "end of input", 7),
        (b"5:abc", "runs past the end", 0),
        (b"1:", "runs past the end", 0),
        (b"12", "unterminated", 0),
        (b"99999999999999999999999:", "unterminated or too long", 0),
    ],
)
def test_refuses_non_canonical_and_malformed(data: bytes, reason: str, offset: int) -> None:
    err = refuse(data)
    assert reason in err.reason
    assert err.offset == offset
    assert f"at byte {offset}" in str(err)
    assert err.exit_status == ExitStatus.BAD_TORRENT


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b"i0e", 0),
        (b"i-1e", -1),
        (b"i10e", 10),
        (b"i9223372036854775808e", 2**63),  # beyond int64: exact, not an overflow
        (b"i-9223372036854775809e", -(2**63) - 1),
        (b"0:", b""),
        (b"4:spam", b"spam"),
        (b"3:\x00e:", b"\x00e:"),
        (b"le", []),
        (b"de", {}),
        (b"d0:i1e1:ai2ee", {b"": 1, b"a": 2}),  # the empty key sorts first
        (b"d1:Ai1e1:ai2ee", {b"A": 1, b"a": 2}),  # raw byte order, not case-folded
        (b"d1:ai1e2:aai2ee", {b"a": 1, b"aa": 2}),  # a prefix sorts before its extensions
        (b"d1:\x7fi1e1:\xffi2ee", {b"\x7f": 1, b"\xff": 2}),  # unsigned byte comparison
        (b"ll4:spamei-3ed1:xleee", [[b"spam"], -3, {b"x": []}]),
    ],
)
def test_accepts_canonical(data: bytes, value: Any) -> None:
    assert decode(data) == value
    assert bencode.encode(value) == data


def test_int_digit_cap() -> None:
    ok = b"i" + b"9" * bencode.MAX_INT_DIGITS + b"e"
    assert decode(ok) == int(b"9" * bencode.MAX_INT_DIGITS)
    err = refuse(b"i" + b"9" * (bencode.MAX_INT_DIGITS + 1) + b"e")
    assert err.offset == 0 and "too long" in err.reason
    err = refuse(b"l" + b"i" + b"1" * 100_000 + b"ee")
    assert err.offset == 1


def test_str_input_is_a_type_error() -> None:
    # Decoding text is a caller's bug, not bad input from a peer.
    with pytest.raises(TypeError):
        bencode.decode("i1e", max_size=CAP)  # type: ignore[arg-type]


def test_accepts_bytearray_and_memoryview() -> None:
    assert decode(bytearray(b"li1ee")) == [1]  # type: ignore[arg-type]
    assert decode(memoryview(b"3:abc")) == b"abc"  # type: ignore[arg-type]


# -- caps -------------------------------------------------------------------------


def test_size_cap() -> None:
    data = b"10:0123456789"
    assert bencode.decode(data, max_size=len(data)) == b"0123456789"
    with pytest.raises(BencodeError) as info:
        bencode.decode(data, max_size=len(data) - 1)
    assert info.value.offset == 0
    assert "limit" in info.value.reason


def test_depth_cap_lists() -> None:
    depth = bencode.MAX_DEPTH
    assert decode(b"l" * depth + b"e" * depth) is not None
    err = refuse(b"l" * (depth + 1) + b"e" * (depth + 1))
    assert f"deeper than {depth}" in err.reason
    assert err.offset == depth


def test_depth_cap_dicts() -> None:
    depth = bencode.MAX_DEPTH
    # depth-1 dicts each holding the next under key "k"; the innermost holds a list
    assert decode(b"d1:k" * (depth - 1) + b"le" + b"e" * (depth - 1)) is not None
    err = refuse(b"d1:k" * (depth + 1) + b"e" * (depth + 1))
    assert f"deeper than {depth}" in err.reason
    assert err.offset == 4 * depth


def test_custom_depth_limit() -> None:
    assert decode(b"llee", max_depth=2) == [[]]
    err = refuse(b"llleee", max_depth=2)
    assert err.offset == 2


def test_token_cap() -> None:
    data = b"l" + b"i1e" * 9 + b"e"  # ten tokens: the list and nine ints
    assert decode(data, max_tokens=10) == [1] * 9
    err = refuse(data, max_tokens=9)
    assert "tokens" in err.reason
    assert err.offset == 1 + 3 * 8  # the ninth int is the tenth token


def test_string_cap() -> None:
    assert decode(b"4:abcd", max_string=4) == b"abcd"
    err = refuse(b"l5:abcdee", max_string=4)
    assert err.offset == 1 and "over the limit" in err.reason


def test_string_length_beyond_input_is_refused_before_allocating() -> None:
    # A string length that fits the digit budget but would need 99 GB: no allocation happens.
    err = refuse(b"99999999999:x")
    assert "over the limit" in err.reason and err.offset == 0
    err = refuse(b"99999999:x", max_string=10**9)
    assert "runs past the end" in err.reason and err.offset == 0


def test_deep_nesting_regression_in_subprocess() -> None:
    """100,000 nested lists crashed bencoder.pyx with SIGSEGV.

    Run it in a child so a crash fails this test instead of killing pytest."""
    code = textwrap.dedent(
        """
        import sys
        from mptorrent.proto import bencode
        from mptorrent.errors import BencodeError
        for data in (b"l" * 100000 + b"e" * 100000, b"d1:k" * 100000 + b"e" * 100000):
            try:
                bencode.decode(data, max_size=bencode.MAX_TORRENT_SIZE)
            except BencodeError as exc:
                print(exc)
            else:
                sys.exit("decoded without error")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    lines = proc.stdout.splitlines()
    assert lines == [
        f"bad bencode at byte {bencode.MAX_DEPTH}: nesting deeper than {bencode.MAX_DEPTH}",
        f"bad bencode at byte {4 * bencode.MAX_DEPTH}: nesting deeper than {bencode.MAX_DEPTH}",
    ]


# -- spans --------------------------------------------------------------------------


def test_spans_of_top_level_dict_values() -> None:
    data = b"d1:ai1e4:infod6:lengthi3e4:name1:x4:nestd1:kl1:eeee1:zl3:e:ddeee"
    value, spans = bencode.decode_with_spans(data, max_size=CAP)
    assert set(spans) == {b"a", b"info", b"z"}
    for key, (start, end) in spans.items():
        assert bencode.decode(data[start:end], max_size=CAP) == value[key]
        assert data[start:end] == bencode.encode(value[key])
    assert data[slice(*spans[b"info"])] == b"d6:lengthi3e4:name1:x4:nestd1:kl1:eeee"


def test_spans_only_for_top_level_dict() -> None:
    assert bencode.decode_with_spans(b"ld1:ai1eee", max_size=CAP)[1] == {}
    assert bencode.decode_with_spans(b"i1e", max_size=CAP)[1] == {}
    assert bencode.decode_with_spans(b"de", max_size=CAP)[1] == {}


# -- encode -------------------------------------------------------------------------


def test_encode_sorts_keys_and_accepts_str() -> None:
    assert bencode.encode({b"b": 1, b"a": [b"x", 2]}) == b"d1:al1:xi2ee1:bi1ee"
    assert bencode.encode({"k": "v"}) == b"d1:k1:ve"
    assert bencode.encode({"k": ["\u00e9"]}) == b"d1:kl2:\xc3\xa9ee"


def test_encode_str_length_is_in_bytes() -> None:
    # bencoder.pyx writes a str's length in characters: "é" became b"1:\xc3\xa9".
    for text in ["\u00e9", "\u20acuro", "\U0001f600", "plain"]:
        data = bencode.encode(text)
        assert decode(data) == text.encode()
        assert decode(bencode.encode({text: text})) == {text.encode(): text.encode()}


@pytest.mark.parametrize(
    "value", [1.5, None, object(), {1: 2}, [set()], "\udcff", {"a": 1, b"a": 2}]
)
def test_encode_refuses_unencodable(value: Any) -> None:
    with pytest.raises(BencodeError):
        bencode.encode(value)


# -- properties ---------------------------------------------------------------------

ints = st.integers(min_value=-(10**63) + 1, max_value=10**63 - 1)
values = st.recursive(
    ints | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.binary(max_size=8), inner, max_size=6)
    ),
    max_leaves=20,
)
small_values = st.recursive(
    ints | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.binary(max_size=4), inner, max_size=4)
    ),
    max_leaves=8,
)


@given(values)
def test_round_trip(value: Any) -> None:
    data = bencode.encode(value)
    assert decode(data) == value
    assert bencode.encode(decode(data)) == data


@given(st.dictionaries(st.binary(max_size=8), small_values, max_size=6))
def test_spans_round_trip(value: dict[bytes, Any]) -> None:
    data = bencode.encode(value)
    decoded, spans = bencode.decode_with_spans(data, max_size=CAP)
    assert decoded == value
    assert set(spans) == set(value)
    for key, (start, end) in spans.items():
        assert data[start:end] == bencode.encode(value[key])


def check_only_bencode_error(data: bytes) -> None:
    """The h11 fuzz rule: a value or our documented error, nothing else.

    Since only canonical input is accepted, whatever decodes must re-encode to the
    very same bytes (the anacrolix FuzzInterfaceRoundTrip rule)."""
    try:
        value = bencode.decode(data, max_size=CAP)
    except BencodeError as exc:
        assert exc.offset is None or 0 <= exc.offset <= len(data)
        return
    assert bencode.encode(value) == data


@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    check_only_bencode_error(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(bencode.encode(draw(values)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.sampled_from(b"ilde0123456789:-+ _x"))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4) | st.sampled_from([b"e", b"i1e"]))
        elif kind == "delete" and data:
            del data[at]
    return bytes(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_encodings(data: bytes) -> None:
    check_only_bencode_error(data)


@given(small_values)
def test_every_truncation_is_refused(value: Any) -> None:
    data = bencode.encode(value)
    for cut in range(len(data)):
        with pytest.raises(BencodeError):
            bencode.decode(data[:cut], max_size=CAP)
