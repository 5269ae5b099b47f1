"""Safe bencode: one bounded, canonical-only decoder over bencoder.pyx.

bencoder.pyx recurses without a depth limit (100,000 nested lists crash the
interpreter), lets ``OverflowError`` escape on absurd lengths and accepts
non-canonical integers and unsorted keys.  So every decode in mptorrent first
runs an iterative scan here that enforces size, depth, token and canonical-form
limits; only input that passes reaches the C decoder.  The scan also records the
raw byte span of each top-level dictionary value, which is what the info-hash
must be computed over (never a re-encoding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

import bencoder

from mptorrent.errors import BencodeError

# A decoded value: bencode has exactly these four types (no bool, no float, no str).
BValue: TypeAlias = "int | bytes | list[BValue] | dict[bytes, BValue]"
# What encode() takes: str too (as UTF-8) and tuples; read-only views so that a
# dict[bytes, int] or a list[bytes] passes as it is (list and dict are invariant).
Encodable: TypeAlias = (
    "int | bytes | str | Sequence[Encodable] | Mapping[bytes, Encodable] | Mapping[str, Encodable]"
)

# Limits, named after the libtorrent/anacrolix settings they follow.
MAX_TORRENT_SIZE = 10 * 1024 * 1024  # libtorrent max_buffer_size
MAX_TRACKER_REPLY_SIZE = 4 * 1024 * 1024
MAX_PEER_MESSAGE_SIZE = 1024 * 1024
MAX_DEPTH = 100  # libtorrent max_decode_depth
MAX_TOKENS = 3_000_000  # libtorrent max_decode_tokens
MAX_STRING = 128 * 1024 * 1024  # anacrolix DefaultDecodeMaxStrLen
MAX_INT_DIGITS = 64  # far beyond any 64-bit value; stops quadratic int() parsing

_DIGITS = frozenset(b"0123456789")
_I, _L, _D, _E, _ZERO = b"ilde0"


class _Frame:
    """One open list or dictionary on :func:`scan`'s explicit stack (no recursion); for a
    dictionary, the last key (keys must strictly increase) and where the current value began."""

    __slots__ = ("expect_key", "is_dict", "key", "value_start")

    def __init__(self, is_dict: bool) -> None:
        self.is_dict = is_dict
        self.key: bytes | None = None
        self.expect_key = True
        self.value_start = 0


def scan(
    data: bytes,
    *,
    max_size: int,
    max_depth: int = MAX_DEPTH,
    max_tokens: int = MAX_TOKENS,
    max_string: int = MAX_STRING,
) -> dict[bytes, tuple[int, int]]:
    """Check that ``data`` is one canonical, bounded bencoded value.

    Returns the ``(start, end)`` byte span of every value of a top-level
    dictionary (empty for any other top-level type).  Raises ``BencodeError``
    with the offset and reason of the first problem.
    """
    n = len(data)
    if n > max_size:
        raise BencodeError(f"input is {n} bytes, over the {max_size}-byte limit", 0)
    if n == 0:
        raise BencodeError("empty input", 0)
    spans: dict[bytes, tuple[int, int]] = {}
    stack: list[_Frame] = []
    tokens = 0
    pos = 0
    while True:
        if pos >= n:
            raise BencodeError("unexpected end of input", pos)
        c = data[pos]
        top = stack[-1] if stack else None
        if c == _E:
            if top is None:
                raise BencodeError("unexpected 'e'", pos)
            if top.is_dict and not top.expect_key:
                raise BencodeError("dictionary key without a value", pos)
            stack.pop()
            pos += 1
            if not stack:
                break
            _value_done(stack, spans, pos, None)
            continue
        tokens += 1
        if tokens > max_tokens:
            raise BencodeError(f"more than {max_tokens} tokens", pos)
        if top is not None and top.is_dict and top.expect_key and c not in _DIGITS:
            raise BencodeError("dictionary key is not a string", pos)
        if c == _I:
            end = data.find(b"e", pos + 1, pos + 2 + MAX_INT_DIGITS)
            if end < 0:
                raise BencodeError("integer is unterminated or too long", pos)
            _check_int(data[pos + 1 : end], pos)
            pos = end + 1
            if not stack:
                break
            _value_done(stack, spans, pos, None)
        elif c in _DIGITS:
            colon = data.find(b":", pos, pos + 12)
            if colon < 0:
                raise BencodeError("string length is unterminated or too long", pos)
            digits = data[pos:colon]
            if not digits.isdigit() or (len(digits) > 1 and digits[0] == _ZERO):
                raise BencodeError("string length is not canonical", pos)
            length = int(digits)
            if length > max_string:
                raise BencodeError(f"string of {length} bytes is over the limit", pos)
            start = colon + 1
            end = start + length
            if end > n:
                raise BencodeError(f"string of {length} bytes runs past the end", pos)
            pos = end
            if not stack:
                break
            key = data[start:end] if top is not None and top.is_dict and top.expect_key else None
            _value_done(stack, spans, pos, key, offset=start)
        elif c in (_L, _D):
            if len(stack) >= max_depth:
                raise BencodeError(f"nesting deeper than {max_depth}", pos)
            stack.append(_Frame(c == _D))
            pos += 1
        else:
            raise BencodeError(f"unexpected byte {bytes([c])!r}", pos)
    if pos != n:
        raise BencodeError("trailing data after the value", pos)
    return spans


def _check_int(body: bytes, pos: int) -> None:
    digits = body[1:] if body[:1] == b"-" else body
    if not digits or not digits.isdigit():
        raise BencodeError("integer is not a plain decimal number", pos)
    if len(digits) > 1 and digits[0] == _ZERO:
        raise BencodeError("integer has a leading zero", pos)
    if body == b"-0":
        raise BencodeError("integer is negative zero", pos)


def _value_done(
    stack: list[_Frame],
    spans: dict[bytes, tuple[int, int]],
    pos: int,
    key: bytes | None,
    offset: int = 0,
) -> None:
    """A complete value ended at ``pos``; update the enclosing container."""
    frame = stack[-1]
    if not frame.is_dict:
        return
    if frame.expect_key:
        assert key is not None
        if frame.key is not None and key <= frame.key:
            what = "duplicate" if key == frame.key else "unsorted"
            raise BencodeError(f"{what} dictionary key {key[:40]!r}", offset)
        frame.key = key
        frame.expect_key = False
        frame.value_start = pos
    else:
        if len(stack) == 1 and frame.key is not None:
            spans[frame.key] = (frame.value_start, pos)
        frame.expect_key = True


def decode_with_spans(
    data: bytes, *, max_size: int, **limits: int
) -> tuple[BValue, dict[bytes, tuple[int, int]]]:
    """Decode ``data`` after :func:`scan`; also return the top-level value spans."""
    data = bytes(data)
    spans = scan(data, max_size=max_size, **limits)
    try:
        value: BValue = bencoder.bdecode(data)
    except Exception as exc:  # the C decoder's errors are not ours to leak
        raise BencodeError(f"decoder failed: {exc}", None) from exc
    return value, spans


def decode(data: bytes, *, max_size: int, **limits: int) -> BValue:
    """Decode one canonical, bounded bencoded value, or raise ``BencodeError``."""
    return decode_with_spans(data, max_size=max_size, **limits)[0]


def encode(value: Encodable) -> bytes:
    """Encode ints, bytes, str, lists and dicts (keys sorted, as bencode requires)."""
    try:
        return bytes(bencoder.bencode(_utf8(value)))
    except Exception as exc:
        raise BencodeError(f"cannot encode {type(exc).__name__}: {exc}") from exc


def _utf8(value: Encodable) -> BValue:
    # bencoder.pyx writes a str's length in characters, not bytes ("é" -> b"1:\xc3\xa9"),
    # so every str becomes UTF-8 bytes before it gets there.
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list | tuple):
        return [_utf8(v) for v in value]
    if isinstance(value, dict):
        out = {_key(k): _utf8(v) for k, v in value.items()}
        if len(out) != len(value):
            raise ValueError("a str key and a bytes key are the same key")
        return out
    if isinstance(value, int | bytes):
        return value
    # bencoder.pyx refuses every other type too (other mappings and sequences included)
    raise TypeError(f"a {type(value).__name__} has no bencoding")


def _key(key: bytes | str) -> bytes:
    return key.encode() if isinstance(key, str) else key
