"""policy/ratelimit.py: the global limit's share-out and the CLI's rate values (sans-IO)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mptorrent.engine.limits import peer_shares
from mptorrent.policy.ratelimit import MAX_GAP, RateShare, TokenBucket, burst_for, parse_rate

MiB = 1 << 20


@pytest.mark.parametrize(
    ("text", "rate"),
    [("20M", 20 * MiB), ("512K", 512 << 10), ("1.5M", 3 * MiB // 2), ("100000", 100000),
     ("0", 0), ("2G", 2 << 30), ("20MiB", 20 * MiB), ("20m/s", 20 * MiB), (" 4 M ", 4 * MiB)],
)  # fmt: skip
def test_parse_rate(text: str, rate: int) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    "text", ["", "M", "-1M", "fast", "nanM", "infK", "1e400", "12T", "0.5", "1" * 30, "2P"]
)
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


def simulate(share: RateShare, demand: list[float], seconds: float, dt: float = 0.02) -> list[int]:
    """Workers that would each take ``demand[i]`` bytes/s, drawing what their balance allows
    (a read may overdraw by one 16 KiB block); their spent totals at the end."""
    n = len(demand)
    spent = [0] * n
    granted = share.tick(0.0, spent)
    t = 0.0
    while t < seconds - 1e-9:
        t += dt
        for i in range(n):
            want = int(demand[i] * dt)
            while want > 0 and granted[i] - spent[i] > 0:
                take = min(want, max(granted[i] - spent[i], 16384))
                spent[i] += take
                want -= take
        granted = share.tick(t, spent)
    return spent


@pytest.mark.parametrize("workers", [1, 2, 8])
def test_share_holds_the_global_rate(workers: int) -> None:
    rate = 20 * MiB
    share = RateShare(rate, workers)
    spent = simulate(share, [50 * MiB] * workers, 10.0)
    total = sum(spent)
    assert rate * 10 * 0.95 <= total <= rate * 10 + share.burst + workers * 16384


def test_share_follows_the_traffic() -> None:
    # one worker has all the fast peers: it gets (nearly) the whole rate
    rate = 20 * MiB
    share = RateShare(rate, 4)
    spent = simulate(share, [100 * MiB, 0, 0, 0], 5.0)
    assert spent[0] >= rate * 5 * 0.9
    assert sum(spent) <= rate * 5 + share.burst + 16384


def test_share_splits_between_uneven_workers() -> None:
    # a slow worker takes what it can, the rest goes to the fast one
    rate = 20 * MiB
    share = RateShare(rate, 2)
    spent = simulate(share, [2 * MiB, 100 * MiB], 5.0)
    assert spent[0] >= 2 * MiB * 5 * 0.9
    assert sum(spent) >= rate * 5 * 0.93


def test_share_never_saves_more_than_a_burst() -> None:
    # idle for a minute, then everyone at once: at most one burst above the rate
    share = RateShare(MiB, 2)
    spent = [0, 0]
    for i in range(3000):
        granted = share.tick(i * 0.02, spent)
    assert sum(g - s for g, s in zip(granted, spent, strict=True)) <= share.burst + 1
    # one late tick (the thread held up) hands out at most MAX_GAP seconds' worth
    granted = share.tick(1000.0, spent)
    assert sum(granted) - sum(spent) <= share.burst + MAX_GAP * MiB


def test_a_late_tick_pays_for_its_gap() -> None:
    # the coordinator's thread was held up for 0.3 s while the workers waited for tokens:
    # they get what those 0.3 s earned, not just a burst
    share = RateShare(20 * MiB, 2)
    spent = share.tick(0.0, [0, 0])  # everything granted is spent
    granted = share.tick(0.3, spent)
    assert sum(granted) - sum(spent) == pytest.approx(0.3 * 20 * MiB, abs=2)


def test_share_takes_back_debt() -> None:
    share = RateShare(MiB, 1)
    granted = share.tick(0.0, [0])
    overdrawn = granted[0] + 200_000
    # 0.1 s earns ~105 KB, not enough to pay back 200 KB: nothing to spend yet
    granted = share.tick(0.1, [overdrawn])
    assert granted[0] - overdrawn <= 0
    granted = share.tick(0.4, [overdrawn])
    assert granted[0] - overdrawn > 0


def test_share_refuses_wrong_counts() -> None:
    share = RateShare(MiB, 2)
    with pytest.raises(ValueError):
        share.tick(0.0, [0])
    with pytest.raises(ValueError):
        RateShare(0, 1)


def test_token_bucket() -> None:
    b = TokenBucket(1000, burst=2000)
    assert b.available(0.0) == 2000
    b.take(2500)  # overdrawn: the debt is paid first
    assert b.available(0.0) == 0
    assert b.wait(0.0) == pytest.approx(0.501)
    assert b.available(1.0) == 500
    assert b.available(100.0) == 2000  # never more than the burst


def test_burst_floor() -> None:
    assert burst_for(1024) == 64 << 10
    assert burst_for(20 * MiB) == 5 * MiB


def test_peer_shares_add_up() -> None:
    assert peer_shares(50, 8) == [7, 7, 6, 6, 6, 6, 6, 6]
    assert sum(peer_shares(50, 8)) == 50
    assert peer_shares(50, 1) == [50]
    assert peer_shares(3, 8) == [1, 1, 1, 0, 0, 0, 0, 0]  # five workers stay idle


def test_fuzz_target_on_its_seeds_and_random_text() -> None:
    import random

    from fuzz import fuzz_rate

    for seed in fuzz_rate.seeds():
        fuzz_rate.TestOneInput(seed)
    rng = random.Random(18)
    alphabet = b"0123456789.eE+-_ kKmMgGbBiI/sSnaNfx\x00\xff"
    for _ in range(5000):
        fuzz_rate.TestOneInput(bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 12))))


@pytest.mark.parametrize(
    "kwargs", [{"max_download_rate": -1}, {"max_upload_rate": -5}, {"max_peers": 0}]
)
def test_api_refuses_bad_limits_before_anything_else(kwargs: dict[str, int]) -> None:
    import mptorrent

    # the source is not even a torrent: the limits are checked first
    with pytest.raises(ValueError, match=r"max_peers|rate limit"):
        mptorrent.fetch(b"not a torrent", **kwargs)
    with pytest.raises(ValueError, match=r"max_peers|rate limit"):
        mptorrent.start(b"not a torrent", **kwargs)


def test_api_seed_refuses_a_negative_rate() -> None:
    import mptorrent

    with pytest.raises(ValueError, match="rate limit"):
        mptorrent.seed(b"not a torrent", "/nonexistent", max_upload_rate=-1)


def test_numwant_is_the_peers_wanted_up_to_what_trackers_give() -> None:
    from mptorrent.netio.announcer import numwant_for

    assert numwant_for(50) == 50
    assert numwant_for(50, 2) == 100
    assert numwant_for(50, 8) == 200  # trackers usually hand out 200 at most
    assert numwant_for(1000, 1) == 200


def test_coordinator_shares_max_peers_and_asks_trackers_for_them(tmp_path: Path) -> None:
    import hashlib

    from mptorrent.engine.coordinator import Coordinator, FetchOptions
    from mptorrent.messages import PeerAddr
    from mptorrent.proto import metainfo

    data = metainfo.build(
        name="t", piece_length=16384, pieces=hashlib.sha1(bytes(16384)).digest(),
        files=[(("a.bin",), 16384)], trackers=[["http://127.0.0.1:1/announce"]],
    )  # fmt: skip
    meta = metainfo.parse(data)
    opts = FetchOptions(jobs=8, max_peers=10, max_download_rate=MiB, use_trackers=True)
    c = Coordinator(meta, tmp_path / "out", opts)
    assert c.announcer.numwant == 80
    assert c.peer_shares == [2, 2, 1, 1, 1, 1, 1, 1]
    assert c.limits.download_cells is not None and c.limits.upload_cells is None
    # a peer never goes to a worker whose share is none
    c3 = Coordinator(meta, tmp_path / "out3", FetchOptions(jobs=3, max_peers=2))
    for i in range(6):
        c3._add_peer(PeerAddr(f"127.0.3.{i + 1}", 6881), "tracker")
    assert [len(s.peers) for s in c3.slots] == [3, 3, 0]
