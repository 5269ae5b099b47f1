"""Fixtures for interop tests: real libtorrent seeders on loopback (see tests/swarm.py).

Payloads and torrents are made once per test run; swarms once per test module.  Seeders sit on
127.0.0.11-13 (single-file) and 127.0.0.14-16 (multi-file); ``fresh_ip`` gives each test its own
addresses for the client under test or for extra peers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.swarm import IpPool, Swarm, TorrentCase, multi_file_case, single_file_case

_ips = IpPool(third=1)


@pytest.fixture(scope="session")
def single_case(tmp_path_factory: pytest.TempPathFactory) -> TorrentCase:
    """~40 MiB single file, 256 KiB pieces, short last piece, no trackers."""
    return single_file_case(tmp_path_factory.mktemp("single"))


@pytest.fixture(scope="session")
def multi_case(tmp_path_factory: pytest.TempPathFactory) -> TorrentCase:
    """~4 MiB tree: nested folders, a zero-length file, uneven sizes; 64 KiB pieces."""
    return multi_file_case(tmp_path_factory.mktemp("multi"))


@pytest.fixture(scope="module")
def lt_swarm(single_case: TorrentCase) -> Iterator[Swarm]:
    """Three libtorrent seeders of ``single_case``; ``lt_swarm.addrs`` are their addresses."""
    with Swarm(single_case.torrent, single_case.save_dir, n_seeders=3, first_ip=11) as swarm:
        yield swarm


@pytest.fixture(scope="module")
def lt_multi_swarm(multi_case: TorrentCase) -> Iterator[Swarm]:
    with Swarm(multi_case.torrent, multi_case.save_dir, n_seeders=3, first_ip=14) as swarm:
        yield swarm


@pytest.fixture
def fresh_ip() -> Callable[[], str]:
    """Call it for a loopback address no other test in this run has used."""
    return _ips
