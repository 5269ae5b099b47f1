"""BitTorrent v2 (BEP 52): the merkle verifier and v2/hybrid torrents read and checked."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import pytest

from mptorrent.disk import checker
from mptorrent.disk.storage import Layout, Storage, prepare
from mptorrent.proto import bencode, merkle, metainfo, wire
from mptorrent.proto.hashing import PieceVerifier
from tests.v2data import tree_of, v2_parts, v2_torrent

PL = 32768
FILES = [
    ((b"a.bin",), os.urandom(100_000)),  # 4 pieces, the last partly padding
    ((b"b.bin",), os.urandom(5000)),  # under one 16 KiB leaf
    ((b"empty",), b""),
    ((b"sub", b"c.bin"), os.urandom(2 * PL)),  # ends on a piece boundary: no padding
    ((b"sub", b"d"), os.urandom(PL + 1)),
]

_conforms: type[PieceVerifier] = merkle.MerklePieces


def payload(meta: metainfo.Metainfo) -> bytes:
    """The torrent's linear byte space (padding as zeros)."""
    by_path = {tuple(p.decode() for p in path): data for path, data in FILES}
    return b"".join(bytes(f.length) if f.padding else by_path[f.path] for f in meta.files)


@pytest.mark.parametrize("hybrid", [False, True], ids=["v2", "hybrid"])
def test_every_piece_verifies_and_a_changed_byte_fails(hybrid: bool) -> None:
    meta = metainfo.parse(v2_torrent(FILES, PL, hybrid=hybrid))
    assert meta.meta_version == ("hybrid" if hybrid else "v2")
    data = payload(meta)
    v = pickle.loads(pickle.dumps(meta.verifier()))
    assert v.num_pieces == meta.num_pieces == -(-len(data) // PL)
    for i in range(meta.num_pieces):
        piece = data[i * PL : (i + 1) * PL]
        assert v.verify(i, piece), i
        h = v.hasher(i)
        for k in range(0, len(piece), 7000):  # odd-sized updates, as storage reads file by file
            h.update(memoryview(piece)[k : k + 7000])
        assert v.matches(i, h.digest()), i
        bad = bytearray(piece)
        bad[0] ^= 1  # (v2 ignores the padding bytes: they are never written anywhere)
        assert not v.verify(i, bad), i


def test_v2_only_places_files_on_piece_boundaries_like_libtorrent() -> None:
    meta = metainfo.parse(v2_torrent(FILES, PL))
    placed = [(f.path, f.offset, f.padding) for f in meta.files]
    assert placed == [
        (("a.bin",), 0, False), ((".pad", "31072"), 100_000, True),
        (("b.bin",), 4 * PL, False), ((".pad", "27768"), 4 * PL + 5000, True),
        (("empty",), 5 * PL, False), (("sub", "c.bin"), 5 * PL, False),
        (("sub", "d"), 7 * PL, False), ((".pad", str(PL - 1)), 8 * PL + 1, True),
    ]  # fmt: skip
    assert meta.total_length == 9 * PL and meta.pieces == b""
    info = bencode.encode(v2_parts(FILES, PL)[0])
    assert meta.info_hash_v2 == hashlib.sha256(info).digest()
    assert meta.info_hash == meta.info_hash_v2[:20]


def test_roots_and_layers_follow_bep52() -> None:
    data = os.urandom(5 * PL + 123)
    root, layer = tree_of(data, PL)
    assert merkle.file_root(data) == root
    merkle.check_layer(root, layer, len(data), PL, "x")
    assert merkle.layer_root(layer, PL) == root
    small = os.urandom(3 * merkle.BLOCK + 1)  # 4 leaves: a tree narrower than the piece
    assert merkle.file_root(small) == tree_of(small, PL * 4)[0]


def test_a_magnet_info_dict_without_layers_is_read_and_checks_what_it_can() -> None:
    info, _layers = v2_parts(FILES, PL)
    data = bencode.encode({b"info": info})
    with pytest.raises(metainfo.BadTorrent, match=r"no piece layer for file 'a\.bin'"):
        metainfo.parse(data)
    meta = metainfo.parse(data, missing_layers_ok=True)
    v = meta.merkle_verifier()
    whole = payload(meta)
    assert v.expected(0) is None  # a.bin's layer: to come from peers
    assert v.verify(4, whole[4 * PL : 5 * PL])  # b.bin is one piece: its root is the hash


def test_checker_verifies_v2_and_hybrid_on_disk(tmp_path: Path) -> None:
    for hybrid in (False, True):
        meta = metainfo.parse(v2_torrent(FILES, PL, hybrid=hybrid))
        out = tmp_path / meta.meta_version
        layout = Layout.for_torrent(meta, out)
        prepare(layout, out)
        data = payload(meta)
        with Storage(layout, writable=True) as st:
            for i in range(meta.num_pieces):
                st.write_piece(i, data[i * PL : (i + 1) * PL])
        assert checker.verify(meta, layout, jobs=2).complete
        target = out / "sub" / "d"
        raw = bytearray(target.read_bytes())
        raw[-1] ^= 1
        target.write_bytes(raw)
        report = checker.verify(meta, layout)
        assert report.invalid == [8] and not report.missing


@pytest.mark.parametrize("version", ["v2", "hybrid"])
def test_create_matches_the_independent_builder_and_checks_complete(
    tmp_path: Path, version: str
) -> None:
    from mptorrent.disk.create import create

    root = tmp_path / "payload"
    for path, data in FILES:
        target = root.joinpath(*(p.decode() for p in path))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    made = create(root, piece_length=PL, jobs=2, version=version)  # type: ignore[arg-type]
    meta = metainfo.parse(made)
    info, layers = v2_parts(FILES, PL, hybrid=version == "hybrid")
    assert bencode.decode(meta.info_bytes, max_size=1 << 20) == info
    assert dict(meta.piece_layers) == layers
    assert checker.verify(meta, Layout.for_torrent(meta, root), jobs=2).complete


@pytest.mark.parametrize("v2_only", [True, False], ids=["btmh", "btih+btmh"])
def test_metadata_must_hash_to_the_v2_info_hash(v2_only: bool) -> None:
    from mptorrent.proto.ext.ut_metadata import MetadataAssembler, MetadataVerified

    info = bencode.encode(v2_parts(FILES, PL, hybrid=not v2_only)[0])
    v2 = hashlib.sha256(info).digest()
    v1 = v2[:20] if v2_only else hashlib.sha1(info).digest()
    for sent, good in ((info, True), (info[:-2] + b"0e", False)):
        asm: MetadataAssembler[str] = MetadataAssembler(v1, len(info), info_hash_v2=v2)
        assert asm.add_peer("p", len(info))
        out = None
        for piece in asm.next_requests("p", 0.0):
            chunk = sent[piece * 16384 : (piece + 1) * 16384]
            out = asm.received("p", piece, len(sent), chunk)
        assert isinstance(out, MetadataVerified) == good


# -- BEP 52 hash requests ------------------------------------------------------------------

BIG = os.urandom(600 * 16384 + 5000)  # 601 pieces of 16 KiB: two chunks of piece hashes


def _big_meta(pl: int = 16384) -> metainfo.Metainfo:
    return metainfo.parse(v2_torrent([((b"big",), BIG), ((b"small",), b"x" * 10)], pl))


def _leaves(piece_length: int) -> merkle.LeafSource:
    def leaves(n: int) -> list[bytes] | None:
        data = BIG[n * piece_length : (n + 1) * piece_length]
        return merkle.leaf_hashes(data, len(data)) if data else None

    return leaves


def test_missing_layers_are_fetched_with_proofs_from_a_peer_that_has_them() -> None:
    full = _big_meta()
    seeder = full.merkle_verifier()
    bare = metainfo.parse(b"d4:info" + full.info_bytes + b"e", missing_layers_ok=True)
    fetch = merkle.LayerFetch(bare.merkle_verifier())
    asked = []
    while (req := fetch.next_request("seeder")) is not None:
        asked.append(req)
        answer = merkle.answer(seeder, req)
        assert answer is not None
        assert fetch.received("seeder", req, answer)
    assert [(r.index, r.count) for r in asked] == [(0, 512), (512, 128)]
    assert fetch.complete and dict(fetch.layers()) == dict(full.piece_layers)


def test_a_wrong_proof_is_refused_and_asked_of_another_peer() -> None:
    full = _big_meta()
    seeder = full.merkle_verifier()
    bare = metainfo.parse(b"d4:info" + full.info_bytes + b"e", missing_layers_ok=True)
    fetch = merkle.LayerFetch(bare.merkle_verifier())
    req = fetch.next_request("liar")
    assert req is not None
    good = merkle.answer(seeder, req)
    assert good is not None
    uncle_bent = good[:-1] + bytes([good[-1] ^ 1])
    hash_bent = bytes([good[0] ^ 1]) + good[1:]
    assert not fetch.received("liar", req, uncle_bent)
    assert fetch.next_request("liar") is None  # a liar is not asked again
    again = fetch.next_request("honest")
    assert again is not None and not fetch.received("honest", again, hash_bent)
    assert not fetch.received("nobody", again, good)  # not asked of it
    assert not fetch.received("honest", again, good[:-32])  # one uncle short


def test_block_hashes_of_a_piece_are_served_with_a_proof_to_the_root() -> None:
    pl = 65536  # 4 leaves a piece
    meta = _big_meta(pl)
    v = meta.merkle_verifier()
    root = meta.files[0].pieces_root
    assert root is not None
    tree = v.file_tree(root)
    assert tree is not None
    top = tree.root_level
    for index, count in ((8, 4), (10, 2), (4, 4)):
        req = merkle.HashRange(root, 0, index, count, top - 1)
        answer = merkle.answer(v, req, _leaves(pl))
        assert answer is not None and merkle.check_answer(req, answer, top)
    # refused: not a power of two, not aligned, past the layer, across pieces, proof too deep
    for bad in ((0, 0, 3, 2), (0, 2, 4, 2), (0, 1 << top, 2, 2), (0, 0, 8, 2), (0, 0, 4, top)):
        assert merkle.answer(v, merkle.HashRange(root, *bad), _leaves(pl)) is None, bad
    assert merkle.answer(v, merkle.HashRange(bytes(32), 2, 0, 2, 0)) is None  # unknown root
    assert merkle.answer(v, merkle.HashRange(root, 0, 0, 4, 1)) is None  # no data to hash


# -- the wire codec of BEP 52's hash messages ----------------------------------------------

ROOT = bytes(range(32))


def _wire_pair() -> tuple[wire.Connection, wire.Connection]:
    a = wire.Connection(bytes(20), 4, PL, 4 * PL)
    b = wire.Connection(bytes(20), 4, PL, 4 * PL)
    b.receive_data(a.send(wire.Handshake(bytes(20), b"A" * 20)))
    a.receive_data(b.send(wire.Handshake(bytes(20), b"B" * 20)))
    assert isinstance(b.next_event(), wire.Handshake) and isinstance(a.next_event(), wire.Handshake)
    return a, b


def test_hash_messages_round_trip_whole_and_byte_by_byte() -> None:
    a, b = _wire_pair()
    events: list[wire.Event] = [
        wire.HashRequest(ROOT, 2, 512, 512, 7),
        wire.Hashes(ROOT, 2, 512, 4, 3, os.urandom(32 * 6)),  # 4 hashes + 2 uncles
        wire.Hashes(ROOT, 0, 8, 2, 0, os.urandom(64)),
        wire.HashReject(ROOT, 0, 0, 4, 9),
    ]
    data = b"".join(a.send(e) for e in events)
    got: list[object] = []
    for i in range(len(data)):
        b.receive_data(data[i : i + 1])
        while (ev := b.next_event()) is not wire.NEED_DATA:
            got.append(ev)
    assert got == events


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (bytes([21]) + ROOT + bytes(15), "message 21 has length 48, not 49"),
        (bytes([21]) + ROOT + (0).to_bytes(4, "big") * 2 + (0).to_bytes(4, "big") * 2,
         "hash request with base layer 0, length 0"),
        (bytes([23]) + ROOT + (0).to_bytes(4, "big") * 2 + (8193).to_bytes(4, "big") + bytes(4),
         "hash reject with base layer 0, length 8193"),
        (bytes([21]) + ROOT + (99).to_bytes(4, "big") + bytes(4) + (2).to_bytes(4, "big")
         + bytes(4), "hash request with base layer 99"),
        (bytes([22]) + ROOT + bytes(16), "hashes message of 49 bytes is not 49 \\+ 32 x n"),
        (bytes([22]) + ROOT + bytes(16) + bytes(31), "is not 49 \\+ 32 x n"),
        (bytes([22]) + ROOT + bytes(8) + (4).to_bytes(4, "big") + bytes(4) + bytes(32 * 3),
         "hashes message holds 3 hashes, its fields say 4"),
        (bytes([22]) + ROOT + bytes(8) + (2).to_bytes(4, "big") + (5).to_bytes(4, "big")
         + bytes(64), "holds 2 hashes, its fields say 7"),  # proof layers want uncles
    ],
    ids=["short", "count-0", "count-8193", "base-99", "no-hashes", "ragged", "too-few",
         "no-uncles"],
)  # fmt: skip
def test_hostile_hash_messages_are_protocol_errors(body: bytes, message: str) -> None:
    _a, b = _wire_pair()
    b.receive_data(len(body).to_bytes(4, "big") + body)
    with pytest.raises(wire.RemoteProtocolError, match=message):
        while b.next_event() is not wire.NEED_DATA:
            pass


def test_hash_messages_we_would_send_wrong_are_refused() -> None:
    a, _b = _wire_pair()
    for bad in (
        wire.HashRequest(ROOT[:31], 0, 0, 2, 0),
        wire.HashRequest(ROOT, 0, -1, 2, 0),
        wire.Hashes(ROOT, 0, 0, 2, 0, bytes(32)),
        wire.HashReject(ROOT, 0, 0, 0, 0),
    ):
        with pytest.raises(wire.LocalProtocolError):
            a.send(bad)


# -- the command line ----------------------------------------------------------------------


def test_cli_create_info_and_verify_a_v2_torrent(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from mptorrent.cli.main import cli

    root = tmp_path / "payload"
    for path, data in FILES:
        target = root.joinpath(*(p.decode() for p in path))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    runner = CliRunner()
    both = runner.invoke(cli, ["create", str(root), "--v2", "--hybrid", "-q"])
    assert both.exit_code == 2 and "--v2 and --hybrid exclude each other" in both.output
    out = tmp_path / "p.torrent"
    made = runner.invoke(cli, ["create", str(root), "--hybrid", "-o", str(out), "-q"])
    assert made.exit_code == 0, made.output
    meta = metainfo.load(out)
    assert (
        meta.info_hash_v2 is not None and f"v2 info-hash {meta.info_hash_v2.hex()}" in made.output
    )
    shown = runner.invoke(cli, ["info", str(out), "--json", "--no-dht"])
    assert shown.exit_code == 0, shown.output
    got = json.loads(shown.output)
    assert got["info_hash"] == meta.info_hash_hex and got["meta_version"] == "hybrid"
    assert got["info_hash_v2"] == meta.info_hash_v2.hex()
    text = runner.invoke(cli, ["info", str(out), "--no-dht"])
    assert f"info-hash v2: {meta.info_hash_v2.hex()} (hybrid)" in text.output
    assert runner.invoke(cli, ["verify", str(out), str(root), "-q"]).exit_code == 0
    from mptorrent.engine.api import Torrent

    assert Torrent.load(out).info_hash_v2 == meta.info_hash_v2.hex()
    (root / "sub" / "d").write_bytes(b"\0" * (PL + 1))
    assert runner.invoke(cli, ["verify", str(out), str(root), "-q"]).exit_code == 1
