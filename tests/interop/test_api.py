"""The Python API (``import mptorrent``) against real libtorrent seeders on loopback: a
blocking fetch with ``on_event``, a ``Download`` handle cancelled halfway and resumed by a
second call, and an asyncio program following a download's events.

Seeders sit on 127.0.0.71-73 (full speed) and 127.0.0.74-76 (slow, to cancel midway).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

import mptorrent
from mptorrent import events as ev
from tests.swarm import Swarm, TorrentCase, same_tree

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def swarm(single_case: TorrentCase) -> Iterator[Swarm]:
    with Swarm(
        single_case.torrent, single_case.save_dir, n_seeders=3, first_ip=71, use_trackers=False
    ) as s:
        yield s


def test_fetch_is_byte_identical_and_reports_events(
    single_case: TorrentCase, swarm: Swarm, tmp_path: Path
) -> None:
    meta = single_case.meta
    seen: list[ev.Event] = []
    out = tmp_path / "out.bin"
    res = mptorrent.fetch(
        single_case.torrent, out, workers=2, peers=swarm.addrs, trackers=False, dht=False,
        on_event=seen.append,
    )  # fmt: skip
    assert same_tree(out, single_case.payload.root)
    assert res.path == out and res.bytes == meta.total_length
    assert res.info_hash == meta.info_hash_hex and res.elapsed > 0
    assert res.downloaded == meta.total_length and res.resumed == 0
    assert seen[0] == ev.Metadata(
        meta.name, meta.info_hash_hex, meta.total_length, meta.piece_length, meta.num_pieces,
        ((meta.name, meta.total_length),),
    )  # fmt: skip
    assert isinstance(seen[-1], ev.Done) and seen[-1].total == meta.total_length
    verified = {e.index for e in seen if isinstance(e, ev.PieceVerified)}
    assert verified == set(range(meta.num_pieces))


def test_a_cancelled_download_keeps_its_pieces_and_a_second_call_resumes(
    single_case: TorrentCase, tmp_path: Path
) -> None:
    meta = single_case.meta
    size = meta.total_length
    out = tmp_path / "out.bin"
    torrent = tmp_path / "single.torrent"
    torrent.write_bytes(single_case.torrent)
    with Swarm(
        single_case.torrent, single_case.save_dir, n_seeders=3, first_ip=74,
        upload_rate_limit=9 * 512 * 1024, use_trackers=False,
    ) as slow:  # fmt: skip
        handle = mptorrent.start(
            torrent, out, workers=2, peers=slow.addrs, trackers=False, dht=False
        )
        for event in handle.events():
            if isinstance(event, ev.Progress) and event.done >= 0.3 * size:
                handle.cancel()
                break
        with pytest.raises(mptorrent.Cancelled) as caught:
            handle.wait(timeout=30)
        assert caught.value.exit_code == 130
        assert handle.done
        kinds = [type(e) for e in handle.events()]  # the whole stream, from the first
        assert kinds[0] is ev.Metadata and kinds[-1] is ev.Error
        progress = handle.progress
        assert progress is not None and progress.done < size

        check = mptorrent.verify(torrent, out)
        assert not check.complete and check.valid * meta.piece_length >= 0.25 * size
        assert not (out.parent / f".{out.name}.mptorrent-lock").exists()

        res = mptorrent.fetch(torrent, out, workers=2, peers=slow.addrs, trackers=False, dht=False)
    assert res.resumed >= check.valid - 1
    assert res.downloaded <= size - (check.valid - 1) * meta.piece_length
    assert same_tree(out, single_case.payload.root)
    assert mptorrent.verify(torrent, out).complete


def test_an_asyncio_program_follows_a_download(
    single_case: TorrentCase, swarm: Swarm, tmp_path: Path
) -> None:
    out = tmp_path / "out.bin"
    ticks = 0

    async def other_work() -> None:
        nonlocal ticks
        while True:  # the loop stays free while the download runs
            ticks += 1
            await asyncio.sleep(0.01)

    async def main() -> tuple[list[ev.Event], mptorrent.FetchResult]:
        busy = asyncio.create_task(other_work())
        handle = mptorrent.start(
            mptorrent.Torrent.load(single_case.torrent), out, workers=2, peers=swarm.addrs,
            trackers=False, dht=False,
        )  # fmt: skip
        got = [event async for event in handle.aevents()]
        result = await asyncio.to_thread(handle.wait)
        busy.cancel()
        return got, result

    got, result = asyncio.run(main())
    assert isinstance(got[0], ev.Metadata) and isinstance(got[-1], ev.Done)
    assert result.bytes == single_case.meta.total_length
    assert same_tree(out, single_case.payload.root)
    assert ticks > 1


def test_a_magnet_link_from_python(single_case: TorrentCase, swarm: Swarm, tmp_path: Path) -> None:
    from mptorrent.proto.magnet import Magnet

    meta = single_case.meta
    uri = Magnet(meta.info_hash, name="from the link").to_uri()
    t = mptorrent.Torrent.from_magnet(uri, peers=swarm.addrs, trackers=False, dht=False, timeout=30)
    assert (t.info_hash, t.name, t.size, t.pieces) == (
        meta.info_hash_hex, meta.name, meta.total_length, meta.num_pieces,
    )  # fmt: skip
    assert t.data is not None and mptorrent.Torrent.load(t.data).info_hash == t.info_hash
    seen: list[ev.Event] = []
    out = tmp_path / "out.bin"
    res = mptorrent.fetch(
        uri, out, peers=swarm.addrs, trackers=False, dht=False, on_event=seen.append
    )
    assert same_tree(out, single_case.payload.root) and res.bytes == meta.total_length
    kinds = [type(e) for e in seen]
    assert kinds[:3] == [ev.FetchingMetadata, ev.MetadataReceived, ev.Metadata]


def test_fetch_takes_the_command_lines_options_seeding_after_and_saving_the_torrent(
    single_case: TorrentCase, swarm: Swarm, tmp_path: Path
) -> None:
    """What ``fetch --seed-time --save-torrent`` does, from Python (the CLI calls this API)."""
    seen: list[ev.Event] = []
    copy = tmp_path / "copy.torrent"
    mptorrent.fetch(
        single_case.torrent, tmp_path / "out.bin", workers=2, peers=swarm.addrs,
        trackers=False, dht=False, on_event=seen.append, seed_time=0.3, save_torrent=copy,
    )  # fmt: skip
    assert copy.read_bytes() == single_case.torrent
    assert same_tree(tmp_path / "out.bin", single_case.payload.root)
    kinds = [type(e) for e in seen]
    assert ev.Done in kinds and kinds[-1] is ev.Seeded
    sources = {e.source for e in seen if isinstance(e, ev.PeerConnected)}
    assert sources == {"manual"}  # the peers given
