"""mptorrent.proto.metainfo: validated .torrent parsing (table A of tests/adversarial/README.md)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.fuzz_metainfo import TestOneInput as metainfo_rule
from mptorrent.errors import BadTorrent, ExitStatus
from mptorrent.proto import bencode, metainfo
from mptorrent.proto.metainfo import FileEntry, Metainfo

PL = 16384

# -- builder: a valid minimal torrent as plain dicts, for tests to mutate -------------


def pieces_for(total: int, piece_length: int = PL) -> bytes:
    n = -(-total // piece_length)
    return b"".join(hashlib.sha1(i.to_bytes(4, "big")).digest() for i in range(n))


def single(length: int = 40000, *, name: bytes = b"movie.mp4", **info: Any) -> dict[bytes, Any]:
    d: dict[bytes, Any] = {
        b"name": name,
        b"piece length": PL,
        b"length": length,
        b"pieces": pieces_for(length),
    }
    d.update({k.replace("_", " ").encode(): v for k, v in info.items()})
    return {b"info": d}


def multi(
    files: list[tuple[list[bytes], int]] | None = None, *, name: bytes = b"album"
) -> dict[bytes, Any]:
    if files is None:
        files = [([b"a.txt"], 1000), ([b"sub", b"b.bin"], 30000), ([b"sub", b"c"], 0)]
    total = sum(n for _, n in files)
    return {
        b"info": {
            b"name": name,
            b"piece length": PL,
            b"files": [{b"length": n, b"path": p} for p, n in files],
            b"pieces": pieces_for(total),
        }
    }


def fix_pieces(top: dict[bytes, Any]) -> dict[bytes, Any]:
    """Recompute 'pieces' after a test changed the lengths."""
    info = top[b"info"]
    total = info.get(b"length") or sum(f[b"length"] for f in info[b"files"])
    info[b"pieces"] = pieces_for(total, info[b"piece length"])
    return top


def parse(top: dict[bytes, Any] | bytes) -> Metainfo:
    return metainfo.parse(top if isinstance(top, bytes) else bencode.encode(top))


def refused(top: dict[bytes, Any] | bytes, match: str) -> BadTorrent:
    with pytest.raises(BadTorrent) as info:
        parse(top)
    msg = str(info.value)
    assert re.search(match, msg), msg
    assert "\n" not in msg and msg.isprintable(), msg
    assert info.value.exit_status == ExitStatus.BAD_TORRENT
    return info.value


# -- valid torrents --------------------------------------------------------------------


def test_minimal_single_file() -> None:
    top = single(40000)
    data = bencode.encode(top)
    m = metainfo.parse(data)
    assert m.name == "movie.mp4"
    assert not m.multi_file
    assert m.total_length == 40000
    assert m.piece_length == PL
    assert m.num_pieces == 3
    assert [m.piece_size(i) for i in range(3)] == [PL, PL, 40000 - 2 * PL]
    assert m.piece_hash(1) == top[b"info"][b"pieces"][20:40]
    assert m.files == (FileEntry(("movie.mp4",), 40000, 0),)
    assert m.data_files == m.files
    assert m.info_hash == hashlib.sha1(bencode.encode(top[b"info"])).digest()
    assert m.info_hash_hex == m.info_hash.hex()
    assert m.info_bytes == bencode.encode(top[b"info"])
    assert m.trackers == () and m.web_seeds == () and not m.private
    assert m.comment is None and m.created_by is None and m.creation_date is None


def test_minimal_multi_file() -> None:
    m = parse(multi())
    assert m.multi_file and m.name == "album"
    assert m.files == (
        FileEntry(("a.txt",), 1000, 0),
        FileEntry(("sub", "b.bin"), 30000, 1000),
        FileEntry(("sub", "c"), 0, 31000),
    )
    assert m.total_length == 31000 and m.num_pieces == 2


def test_exact_piece_multiple() -> None:
    m = parse(fix_pieces(single(2 * PL)))
    assert m.num_pieces == 2 and m.piece_size(1) == PL


def test_optional_fields() -> None:
    top = single()
    top[b"comment"] = b"hello \xe2\x82\xac"
    top[b"created by"] = b"mktorrent 1.1"
    top[b"creation date"] = 1700000000
    m = parse(top)
    assert m.comment == "hello €"
    assert m.created_by == "mktorrent 1.1"
    assert m.creation_date == 1700000000
    top[b"creation date"] = b"yesterday"  # ill-typed optional fields are ignored, not fatal
    top[b"comment"] = 5
    m = parse(top)
    assert m.creation_date is None and m.comment is None


def test_build_round_trip() -> None:
    pieces = pieces_for(31000)
    data = metainfo.build(
        name="album",
        piece_length=PL,
        pieces=pieces,
        files=[(("a",), 1000), (("d", "b"), 30000)],
        trackers=[["http://t1/a", "http://t2/a"], ["udp://t3:80"]],
        web_seeds=["http://ws/"],
        private=True,
        comment="c",
        creation_date=123,
    )
    m = metainfo.parse(data)
    assert m.files == (FileEntry(("a",), 1000, 0), FileEntry(("d", "b"), 30000, 1000))
    assert m.trackers == (("http://t1/a", "http://t2/a"), ("udp://t3:80",))
    assert m.web_seeds == ("http://ws/",)
    assert m.private and m.comment == "c" and m.creation_date == 123
    assert m.created_by == "mptorrent"


# -- info-hash ----------------------------------------------------------------------


def test_info_hash_is_over_raw_info_bytes() -> None:
    """The hash covers the info dict exactly as written, including keys we don't know."""
    known = single(40000)[b"info"]
    info = dict(known)
    info[b"x-unknown"] = {b"nested": [1, b"e", {b"": -5}]}
    info[b"source"] = b"TRACKER"
    raw_info = bencode.encode(info)
    # Keys before and after 'info' in the outer dict must not leak into the span.
    data = (
        b"d8:announce"
        + bencode.encode(b"http://t/announce")
        + b"4:info"
        + raw_info
        + b"8:url-list"
        + bencode.encode([b"http://ws/"])
        + b"e"
    )
    m = metainfo.parse(data)
    assert m.info_bytes == raw_info
    assert m.info_hash == hashlib.sha1(raw_info).digest()
    assert m.info_hash != hashlib.sha1(bencode.encode(known)).digest()
    assert m.trackers == (("http://t/announce",),) and m.web_seeds == ("http://ws/",)


def test_non_canonical_info_is_refused_not_rehashed() -> None:
    """bencoder.pyx would accept unsorted keys and re-sort them on encode, which would give
    a different info-hash from every other client; we refuse such files instead."""
    raw_info = b"d6:lengthi40000e4:name1:x12:piece lengthi16384e6:pieces60:" + bytes(60) + b"e"
    unsorted = raw_info.replace(b"6:lengthi40000e4:name1:x", b"4:name1:x6:lengthi40000e")
    assert parse(b"d4:info" + raw_info + b"e").info_hash == hashlib.sha1(raw_info).digest()
    refused(b"d4:info" + unsorted + b"e", r"not a valid torrent file .*unsorted dictionary key")
    refused(b"d4:info" + raw_info.replace(b"i40000e", b"i040000e") + b"e", "leading zero")


# -- missing and ill-typed keys -------------------------------------------------------


def _del(top: dict[bytes, Any], key: bytes) -> dict[bytes, Any]:
    del top[b"info"][key]
    return top


def _set(top: dict[bytes, Any], key: bytes, value: Any) -> dict[bytes, Any]:
    top[b"info"][key] = value
    return top


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not a valid torrent file .*empty input"),
        (b"hello world", "not a valid torrent file"),
        (b"4:spam", "top level is not a dictionary"),
        (b"li1ee", "top level is not a dictionary"),
        (b"de", "missing or ill-typed 'info'"),
        (b"d4:infoli1eee", "missing or ill-typed 'info'"),
        (b"d4:info4:spame", "missing or ill-typed 'info'"),
        (bencode.encode(single()) + b"\n", "trailing data"),
    ],
)
def test_not_a_torrent(data: bytes, match: str) -> None:
    refused(data, match)


def test_truncated_at_every_offset() -> None:
    data = bencode.encode(multi())
    for cut in range(len(data)):
        refused(data[:cut], "not a valid torrent file")


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda t: _del(t, b"piece length"), "missing 'piece length' in info"),
        (lambda t: _set(t, b"piece length", b"16384"), "'piece length' in info is not an integer"),
        (lambda t: _set(t, b"piece length", 0), "piece length 0 is out of range"),
        (lambda t: _set(t, b"piece length", -16384), "piece length -16384 is out of range"),
        (lambda t: _set(t, b"piece length", 2**40), "out of range"),
        (lambda t: _del(t, b"pieces"), "missing 'pieces' in info"),
        (lambda t: _set(t, b"pieces", 5), "'pieces' in info is not a string"),
        (lambda t: _set(t, b"pieces", bytes(59)), "'pieces' is 59 bytes, not a multiple of 20"),
        (lambda t: _set(t, b"pieces", bytes(20)), r"1 piece hashes for 40000 bytes .*expected 3"),
        (lambda t: _set(t, b"pieces", bytes(80)), r"4 piece hashes .*expected 3"),
        (lambda t: _set(t, b"pieces", b""), r"0 piece hashes .*expected 3"),
        (lambda t: _del(t, b"name"), "missing 'name' in info"),
        (lambda t: _set(t, b"name", 7), "'name' in info is not a string"),
        (lambda t: _set(t, b"name", [b"x"]), "'name' in info is not a string"),
        (lambda t: _del(t, b"length"), "neither 'length' nor 'files'"),
        (lambda t: _set(t, b"length", b"40000"), "'length' in info is not an integer"),
        (lambda t: _set(t, b"length", -1), "negative length -1"),
        (lambda t: _set(t, b"length", 0), "total length 0"),
        (lambda t: _set(t, b"length", 2**62), "total length .* is absurd"),
        (lambda t: _set(t, b"length", 10**60), "total length .* is absurd"),
    ],
)
def test_single_file_hostile(mutate: Any, match: str) -> None:
    refused(mutate(single(40000)), match)


def _files(t: dict[bytes, Any]) -> list[dict[bytes, Any]]:
    return t[b"info"][b"files"]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda t: _set(t, b"files", []), "'files' must be a non-empty list"),
        (lambda t: _set(t, b"files", {b"a": 1}), "'files' must be a non-empty list"),
        (lambda t: _set(t, b"files", b"a"), "'files' must be a non-empty list"),
        (lambda t: _files(t).__setitem__(1, 5), r"files\[1\] is not a dictionary"),
        (lambda t: _files(t)[0].pop(b"length"), r"missing 'length' in files\[0\]"),
        (lambda t: _files(t)[0].__setitem__(b"length", b"1"), r"'length' in files\[0\] is not"),
        (lambda t: _files(t)[1].__setitem__(b"length", -5), r"files\[1\] has negative length -5"),
        (lambda t: _files(t)[0].pop(b"path"), r"files\[0\] has a missing or empty 'path'"),
        (lambda t: _files(t)[0].__setitem__(b"path", []), r"files\[0\] has a missing or empty"),
        (lambda t: _files(t)[0].__setitem__(b"path", b"a.txt"), r"files\[0\] has a missing"),
        (lambda t: _files(t)[2].__setitem__(b"path", [b"sub", 3]), r"files\[2\] has a path comp"),
        (lambda t: _files(t)[2].__setitem__(b"path", [[b"x"]]), r"files\[2\] has a path comp"),
        (
            lambda t: [f.__setitem__(b"length", 2**52) for f in _files(t)],
            "total length .* is absurd",
        ),
        (lambda t: [f.__setitem__(b"length", 0) for f in _files(t)], "total length 0"),
    ],
)
def test_multi_file_hostile(mutate: Any, match: str) -> None:
    top = multi()
    mutate(top)
    refused(top, match)


def test_both_length_and_files_is_multi_file() -> None:
    """A11: a documented choice; 'files' wins, as in libtorrent."""
    top = multi()
    top[b"info"][b"length"] = 5
    m = parse(top)
    assert m.multi_file and m.total_length == 31000


def test_piece_count_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real cap (2,097,152 hashes = 40 MiB) cannot fit under the 10 MB file-size cap,
    # so lower it to show the check runs before any per-piece state exists.
    monkeypatch.setattr(metainfo, "MAX_PIECES", 2)
    refused(single(40000), "3 pieces is over the limit of 2")
    assert parse(fix_pieces(single(2 * PL))).num_pieces == 2


def test_file_count_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metainfo, "MAX_FILES", 2)
    refused(multi(), "3 files is over the limit of 2")


def test_piece_length_cap() -> None:
    top = single(40000)
    top[b"info"][b"piece length"] = metainfo.MAX_PIECE_LENGTH
    top[b"info"][b"pieces"] = bytes(20)
    assert parse(top).num_pieces == 1
    top[b"info"][b"piece length"] = metainfo.MAX_PIECE_LENGTH + 1
    refused(top, "out of range")


# -- path safety ------------------------------------------------------------------------

HOSTILE_COMPONENTS = [
    (b"", "unsafe path component ''"),
    (b".", r"unsafe path component '\.'"),
    (b"..", r"unsafe path component '\.\.'"),
    (b"a/b", "unsafe path component"),
    (b"/etc", "unsafe path component"),
    (b"../../etc/passwd", "unsafe path component"),
    (b"a\\b", "unsafe path component"),
    (b"..\\x", "unsafe path component"),
    (b"a\x00b", r"unsafe path component 'a\\x00b'"),
    (b"C:", "drive letter"),
    (b"C:x", "drive letter"),
    (b"c:\\windows", "unsafe path component"),
    (b"z:", "drive letter"),
    (b"a:b", "drive letter"),  # harmless on POSIX, but a drive-relative path on Windows
    (b"x" * 256, "longer than 255 bytes"),
    ("é".encode() * 128, "longer than 255 bytes"),
]


@pytest.mark.parametrize(("component", "match"), HOSTILE_COMPONENTS)
def test_hostile_path_component(component: bytes, match: str) -> None:
    err = refused(multi([([b"ok"], 10), ([b"dir", component], 10)]), match)
    assert "in files[1]" in str(err)


@pytest.mark.parametrize(("component", "match"), HOSTILE_COMPONENTS)
def test_hostile_name(component: bytes, match: str) -> None:
    for top in (single(name=component), multi(name=component)):
        err = refused(top, match)
        assert "in name" in str(err)


@pytest.mark.parametrize(("component", "match"), HOSTILE_COMPONENTS)
def test_hostile_path_utf8_component(component: bytes, match: str) -> None:
    top = multi([([b"ok"], 10), ([b"fine"], 10)])
    _files(top)[1][b"path.utf-8"] = [component]
    refused(top, match)


@pytest.mark.parametrize(
    "component",
    [b"x" * 255, "é".encode() * 127, b"...", b".hidden", b"1:", b"ab:", b"Icon\r", b"\xe2\x80\xae"],
)
def test_odd_but_safe_components(component: bytes) -> None:
    m = parse(multi([([b"d", component], 10)]))
    assert len(m.files[0].path[1].encode()) <= 255


def test_hostile_path_lists() -> None:
    for path in ([b"..", b"..", b"etc", b"x"], [b"a", b"..", b"..", b"b"], [b""], [b"a/../../b"]):
        refused(multi([(path, 10)]), "unsafe path component")


def test_duplicate_paths() -> None:
    refused(multi([([b"a"], 1), ([b"b"], 1), ([b"a"], 1)]), "duplicate path 'a'")
    refused(multi([([b"d", b"x"], 1), ([b"d", b"x"], 0)]), "duplicate path 'd/x'")


def test_path_through_a_file() -> None:
    refused(multi([([b"a"], 1), ([b"a", b"b"], 1)]), "path 'a/b' runs through a file")
    refused(multi([([b"a"], 1), ([b"a", b"b", b"c"], 1)]), "runs through a file")
    # The other order: the directory comes first, then a file of the same name.
    refused(multi([([b"a", b"b"], 1), ([b"a"], 1)]), "duplicate path 'a'")


def test_same_leaf_in_different_dirs_is_fine() -> None:
    m = parse(multi([([b"a", b"x"], 1), ([b"b", b"x"], 1), ([b"x"], 1)]))
    assert [f.path for f in m.files] == [("a", "x"), ("b", "x"), ("x",)]


def test_padding_files() -> None:
    files = [
        {b"length": 1000, b"path": [b"a"]},
        {b"length": PL - 1000, b"path": [b".pad", b"15384"], b"attr": b"p"},
        {b"length": 20000, b"path": [b"b"]},
        {b"length": 2 * PL - 20000, b"path": [b".pad", b"15384"], b"attr": b"p"},
        {b"length": 5, b"path": [b"c"], b"attr": b"x"},
    ]
    top = multi()
    top[b"info"][b"files"] = files
    fix_pieces(top)
    m = parse(top)
    assert [f.padding for f in m.files] == [False, True, False, True, False]
    assert [f.offset for f in m.files] == [0, 1000, PL, PL + 20000, 3 * PL]
    assert [f.path for f in m.data_files] == [("a",), ("b",), ("c",)]
    assert m.total_length == 3 * PL + 5
    # Padding does not get a pass on unsafe paths.
    files[1][b"path"] = [b"..", b"x"]
    refused(top, "unsafe path component")


def test_padding_does_not_excuse_a_real_duplicate() -> None:
    top = multi()
    top[b"info"][b"files"] = [
        {b"length": 1, b"path": [b"a"]},
        {b"length": 1, b"path": [b"a"], b"attr": b"x"},
    ]
    refused(fix_pieces(top), "duplicate path")


# -- text -----------------------------------------------------------------------------


def test_utf8_variants_preferred() -> None:
    top = multi([([b"legacy-name"], 10)], name=b"legacy")
    top[b"info"][b"name.utf-8"] = "Ünïcode".encode()
    _files(top)[0][b"path.utf-8"] = ["dir é".encode(), "fïle".encode()]
    m = parse(top)
    assert m.name == "Ünïcode"
    assert m.files[0].path == ("dir é", "fïle")


def test_ill_typed_name_utf8_falls_back() -> None:
    top = single(name=b"plain")
    top[b"info"][b"name.utf-8"] = 5
    assert parse(top).name == "plain"


def test_undecodable_names_do_not_crash() -> None:
    top = multi([([b"\xff\xfeabc", b"ok\xc3"], 10)], name=b"\x80\x81name")
    m = parse(top)
    assert m.name == "__name"
    assert m.files[0].path == ("__abc", "ok_")
    # Replacement can make two distinct byte names collide; that is a duplicate.
    refused(multi([([b"\xff"], 1), ([b"\xfe"], 1)]), "duplicate path '_'")


def test_undecodable_single_file_name() -> None:
    m = parse(single(name=b"movie\xff.mkv"))
    assert m.name == "movie_.mkv" and m.files[0].path == ("movie_.mkv",)


# -- trackers, web seeds, private ------------------------------------------------------


def test_announce_only() -> None:
    top = single()
    top[b"announce"] = b" http://t/announce "
    assert parse(top).trackers == (("http://t/announce",),)


def test_announce_list_tiers() -> None:
    top = single()
    top[b"announce"] = b"http://ignored/"
    top[b"announce-list"] = [
        [b"http://a/", b"udp://b:6969"],
        [],
        [b"http://a/", b""],  # duplicates and empty strings are dropped ...
        [b"http://c/"],
    ]
    assert parse(top).trackers == (("http://a/", "udp://b:6969"), ("http://c/",))


def test_empty_announce_list_falls_back_to_announce() -> None:
    top = single()
    top[b"announce"] = b"http://only/"
    top[b"announce-list"] = [[], [b""]]
    assert parse(top).trackers == (("http://only/",),)


def test_empty_announce() -> None:
    top = single()
    top[b"announce"] = b""
    assert parse(top).trackers == ()


@pytest.mark.parametrize(
    ("key", "value", "warning"),
    [
        (b"announce-list", b"http://a/", "ignored 'announce-list': a string, not a list of tiers"),
        (b"announce-list", [b"http://a/"], "skipped 'announce-list' tier 0: a string, not a list"),
        (b"announce-list", [[5]], "skipped a tracker in 'announce-list' tier 0: a number, not"),
        (b"announce", 5, "skipped a tracker in 'announce': a number, not a string"),
        (b"url-list", 5, "ignored 'url-list': a number, neither a string nor a list"),
        (b"url-list", [b"http://a/", 5], "skipped a web seed in 'url-list': a number, not a"),
    ],
)
def test_ill_typed_trackers_are_skipped_with_a_warning(
    key: bytes, value: Any, warning: str
) -> None:
    """A18: trackers and web seeds are optional, so a bad entry costs that entry only."""
    top = single()
    top[key] = value
    m = parse(top)
    assert m.trackers == ()
    assert m.web_seeds == (("http://a/",) if value == [b"http://a/", 5] else ())
    assert any(w.startswith(warning) for w in m.warnings), m.warnings


def test_url_list_string_and_list() -> None:
    top = single()
    top[b"url-list"] = b"http://ws/file"
    assert parse(top).web_seeds == ("http://ws/file",)
    top[b"url-list"] = [b"http://a/", b"", b"http://b/"]
    assert parse(top).web_seeds == ("http://a/", "http://b/")
    top[b"url-list"] = b""
    assert parse(top).web_seeds == ()


@pytest.mark.parametrize(("value", "private"), [(1, True), (0, False), (b"1", False), (2, False)])
def test_private_flag(value: Any, private: bool) -> None:
    assert parse(single(private=value)).private is private


def test_private_flag_outside_info_is_ignored() -> None:
    top = single()
    top[b"private"] = 1
    assert parse(top).private is False


# -- loading files -----------------------------------------------------------------------


def test_load(tmp_path: Path) -> None:
    p = tmp_path / "x.torrent"
    p.write_bytes(bencode.encode(single()))
    assert metainfo.load(p).name == "movie.mp4"
    assert metainfo.load(str(p)).total_length == 40000


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(BadTorrent, match="is a directory"):
        metainfo.load(tmp_path)
    with pytest.raises(BadTorrent, match=r"cannot read .*nope\.torrent: No such file"):
        metainfo.load(tmp_path / "nope.torrent")
    bad = tmp_path / "bad.torrent"
    bad.write_bytes(b"d4:infoi1ee")
    with pytest.raises(BadTorrent, match=r"bad\.torrent: missing or ill-typed 'info'"):
        metainfo.load(bad)


def test_load_refuses_oversized_file(tmp_path: Path) -> None:
    # Valid bencode, just too big: only cap+1 bytes are read, then the size cap refuses it.
    p = tmp_path / "big.torrent"
    top = single()
    top[b"comment"] = bytes(bencode.MAX_TORRENT_SIZE)
    p.write_bytes(bencode.encode(top))
    with pytest.raises(BadTorrent, match=r"over the .*-byte limit"):
        metainfo.load(p)


# -- property: anything in, a Metainfo or BadTorrent out ----------------------------------


@st.composite
def mutated_torrent(draw: st.DrawFn) -> bytes:
    data = bytearray(bencode.encode(draw(st.sampled_from([single(), multi()]))))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert"]))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.sampled_from(b"ilde0123456789:-./\\\x00"))
        elif kind == "truncate":
            del data[at:]
            if not data:
                break
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(data)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_torrent())
def test_mutations_give_metainfo_or_bad_torrent(data: bytes) -> None:
    # fuzz/fuzz_metainfo.py holds the rule: a Metainfo keeping every promise, or BadTorrent
    metainfo_rule(data)


_component = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\\0\ufffd"),
    min_size=1,
    max_size=12,
).filter(lambda c: c not in (".", "..") and not re.match(r"[A-Za-z]:", c))
_url = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}:{port}/{path}",
    st.sampled_from(["http", "https", "udp", "HTTP"]),
    st.sampled_from(["t.example", "127.0.0.1", "[::1]", "xn--bcher-kva.example", "a"]),
    st.integers(1, 65535),
    st.text("abcXYZ019_.~-/?=&%", max_size=20),
)


def _no_replacement(text: str) -> bool:
    return "\ufffd" not in text  # the parser turns U+FFFD into "_", as libtorrent does


@st.composite
def valid_torrents(draw: st.DrawFn) -> dict[str, Any]:
    piece_length = draw(st.sampled_from([4096, PL, 65536, 1 << 20]))
    if draw(st.booleans()):
        files = None
        length = draw(st.integers(1, 300_000))
        total = length
    else:
        length = None
        paths = draw(st.lists(st.lists(_component, min_size=1, max_size=3).map(tuple),
                              min_size=1, max_size=6, unique=True))  # fmt: skip
        # no file may stand where another needs a directory
        if any(p[:k] in paths for p in paths for k in range(1, len(p))):
            paths = [(f"f{i}",) for i in range(len(paths))]
        files = [(p, draw(st.integers(0, 100_000))) for p in paths]
        total = sum(n for _, n in files)
        if total == 0:
            files[0] = (files[0][0], 1)
            total = 1
    n = -(-total // piece_length)
    tiers = draw(st.lists(st.lists(_url, min_size=1, max_size=3, unique=True), max_size=3))
    flat = [u for t in tiers for u in t]
    if len(set(flat)) != len(flat):
        tiers = [[f"http://t{i}.example/announce"] for i in range(len(tiers))]
    return dict(
        name=draw(_component),
        piece_length=piece_length,
        pieces=draw(st.binary(min_size=20 * n, max_size=20 * n)),
        files=files,
        length=length,
        trackers=tiers,
        web_seeds=draw(st.lists(_url, max_size=2)),
        private=draw(st.booleans()),
        comment=draw(st.none() | st.text(min_size=1, max_size=20).filter(_no_replacement)),
        creation_date=draw(st.integers(0, 2**40)),
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_torrents())
def test_random_valid_torrents_parse_to_what_was_built(spec: dict[str, Any]) -> None:
    data = metainfo.build(**spec)
    metainfo_rule(data)
    m = metainfo.parse(data)
    assert m.warnings == ()
    assert m.name == spec["name"] and m.piece_length == spec["piece_length"]
    assert m.pieces == spec["pieces"]
    if spec["files"] is None:
        assert not m.multi_file and m.files == (FileEntry((spec["name"],), spec["length"], 0),)
    else:
        assert m.multi_file
        assert [(f.path, f.length) for f in m.files] == spec["files"]
    assert m.trackers == tuple(tuple(t) for t in spec["trackers"])
    assert m.web_seeds == tuple(spec["web_seeds"])
    assert m.private == spec["private"] and m.comment == spec["comment"]
    assert m.creation_date == spec["creation_date"]


# Values a hostile torrent could put anywhere: right and wrong types, edge numbers.
_junk = st.one_of(
    st.integers(-3, 3),
    st.integers(),
    st.binary(max_size=8),
    st.lists(st.integers(-1, 1), max_size=2),
    st.dictionaries(st.binary(max_size=3), st.integers(), max_size=2),
)
_hostile_component = st.one_of(
    st.sampled_from(
        [b"a", b"b", b"..", b".", b"", b"a/b", b"a\\b", b"C:", b"x\x00", b"\x1b[2J", b"\xff\xfe",
         b"x" * 256, "é".encode() * 128, b"Icon\r", b".pad", "\u202e".encode()]
    ),
    st.binary(max_size=6),
)  # fmt: skip
_hostile_url = st.one_of(
    st.sampled_from([b"http://t.example/announce", b"udp://t.example:6969", b"wss://w.example/",
                     b"udp://noport.example/", b"", b"http://[::1/", b"http://a b/", b"\x1b[2J"]),
    _junk,
)  # fmt: skip


def _mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a sane value, so that the checks behind the first one get reached too."""
    # hypothesis favours small integers (its shrink target), so the rare branch is the big one
    return st.integers(0, 4).flatmap(lambda k: bad if k == 4 else good)


def _maybe(draw: st.DrawFn, d: dict[bytes, Any], key: bytes, value: st.SearchStrategy[Any]) -> None:
    if draw(st.integers(0, 9)) != 9:  # usually present
        d[key] = draw(value)


@st.composite
def torrent_shaped(draw: st.DrawFn) -> bytes:
    """Dictionaries shaped like torrents whose every field may be wrong."""
    info: dict[bytes, Any] = {}
    sane_name = st.sampled_from([b"a", b"movie.mkv", "é".encode(), b"Icon\r", b"\x1b[2Jx"])
    _maybe(draw, info, b"name", _mostly(sane_name, _hostile_component | _junk))
    _maybe(
        draw,
        info,
        b"piece length",
        _mostly(st.sampled_from([PL, 65536]), st.sampled_from([1, 0, -PL, 2**40]) | _junk),
    )
    if draw(st.booleans()):
        sane_path = st.lists(st.sampled_from([b"a", b"b", b"c"]), min_size=1, max_size=3)
        entry = st.fixed_dictionaries(
            {b"length": _mostly(st.integers(0, 40_000), st.integers(-2, -1) | _junk),
             b"path": _mostly(sane_path, st.lists(_hostile_component, max_size=3) | _junk)},
            optional={b"attr": st.sampled_from([b"p", b"x", b""]) | _junk,
                      b"path.utf-8": st.lists(_hostile_component, max_size=2) | _junk},
        )  # fmt: skip
        _maybe(draw, info, b"files", _mostly(st.lists(entry, min_size=1, max_size=4), _junk))
    if draw(st.booleans()):
        _maybe(
            draw,
            info,
            b"length",
            _mostly(st.integers(1, 100_000), st.sampled_from([-1, 0, 2**62]) | _junk),
        )
    files = info.get(b"files")
    if isinstance(files, list):
        lengths = [f.get(b"length") if isinstance(f, dict) else None for f in files]
    else:
        lengths = [info.get(b"length")]
    pl = info.get(b"piece length")
    if (isinstance(pl, int) and pl > 0 and all(isinstance(n, int) for n in lengths)
            and 0 <= sum(lengths) <= 10_000 * pl and draw(st.integers(0, 3)) != 3):  # fmt: skip
        info[b"pieces"] = bytes(20 * -(-sum(lengths) // pl))  # consistent: may well be valid
    else:
        _maybe(draw, info, b"pieces", st.binary(max_size=61) | _junk)
    if draw(st.integers(0, 7)) == 7:
        info[b"meta version"] = draw(st.sampled_from([1, 2, 3]) | _junk)
    if draw(st.integers(0, 7)) == 7:
        info[b"file tree"] = draw(_junk)
    top: dict[bytes, Any] = {b"info": info}
    if draw(st.booleans()):
        top[b"announce"] = draw(_hostile_url)
    if draw(st.booleans()):
        tier = st.lists(_hostile_url, max_size=3) | _junk
        top[b"announce-list"] = draw(st.lists(tier, max_size=3) | _junk)
    if draw(st.booleans()):
        top[b"url-list"] = draw(st.lists(_hostile_url, max_size=2) | _hostile_url)
    return bencode.encode(top)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(torrent_shaped())
def test_random_torrent_shaped_input_gives_metainfo_or_bad_torrent(data: bytes) -> None:
    metainfo_rule(data)


def test_a_path_of_control_characters_is_shown_short() -> None:
    # each \x01 is shown as four characters: the message is cut after escaping, not before
    name = b"\x01" * 200
    err = refused(multi([([name], 10), ([name], 10)]), "duplicate")
    assert "\\x01" in str(err) and "..." in str(err)
    assert len(str(err)) < 160, str(err)
