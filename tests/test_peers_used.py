"""The summary's "N peer(s) used" counts every peer that sent blocks of verified pieces.

A piece is credited (``pieces_per_peer``) to the peer that sent most of its blocks; in a
swarm of many slow peers most pieces come from few fast ones, and a peer whose blocks always
made up the minority of a piece was left out of the count (issue 18: 22 counted where all
48 sent data).  The reports go through the coordinator's own message path here.
"""

from __future__ import annotations

import os
from pathlib import Path

from mptorrent.cli.render import render
from mptorrent.disk.create import create
from mptorrent.engine.coordinator import Coordinator, FetchOptions, done_event
from mptorrent.engine.pool import Batch
from mptorrent.messages import PeerAddr, PieceDone
from mptorrent.policy.picker import Picker
from mptorrent.proto import metainfo

BLOCK = 16384
A, B, C, D = (PeerAddr(f"127.0.0.{i}", 6881) for i in range(31, 35))


def test_summary_counts_every_peer_that_sent_blocks(tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(4 * 2 * BLOCK))
    meta = metainfo.parse(create(src, piece_length=2 * BLOCK))
    c = Coordinator(meta, tmp_path / "out.bin", FetchOptions(jobs=2, peers=(A, B, C, D)))
    c.picker = Picker(meta.num_pieces)
    for i in range(4):
        c.picker.took(i, i % 2)
    # A sent most of every piece; B and C one block each of some; D nothing verified.
    c._handle(("worker", Batch(0, 0, [PieceDone(0, 0, (A, B)), PieceDone(0, 2, (A,))])))
    c._handle(("worker", Batch(1, 0, [PieceDone(1, 1, (A, C)), PieceDone(1, 3, (A, B))])))
    res = c._result(0.0, 0)
    assert res.pieces_per_peer == {A: 4}  # credit still goes to the main sender
    assert res.peers_used == 3
    text = render(done_event(res))
    assert text is not None and "3 peer(s) used" in text


def test_an_endgame_duplicate_counts_once(tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(2 * BLOCK))
    meta = metainfo.parse(create(src, piece_length=2 * BLOCK))
    c = Coordinator(meta, tmp_path / "out.bin", FetchOptions(jobs=2, peers=(A, B)))
    c.picker = Picker(meta.num_pieces)
    c.picker.took(0, 0)
    c.picker.took(0, 1)
    # Both workers verified piece 0 (endgame): the second copy was discarded, and its
    # sender's blocks never reached the output.
    c._handle(("worker", Batch(0, 0, [PieceDone(0, 0, (A,))])))
    c._handle(("worker", Batch(1, 0, [PieceDone(1, 0, (B,))])))
    assert c._result(0.0, 0).peers_used == 1
