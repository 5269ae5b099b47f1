"""Fuzz target: mptorrent.proto.tracker's codecs give a result or TrackerError, nothing else.

Every input goes through every parser: the HTTP announce and scrape replies,
the UDP replies (the transaction id is the input's first four bytes, so the
fuzzer can match it), the UDP requests a tracker parses (connect and scrape
re-encode byte for byte), and a UDP announce exchange fed the input as
length-prefixed datagrams.

    python fuzz/fuzz_tracker.py -runs=20000          # atheris (pip install atheris)
    python fuzz/fuzz_tracker.py --hypothesis 2000    # without atheris
"""

from __future__ import annotations

import sys
from pathlib import Path

from mptorrent.errors import TrackerError
from mptorrent.messages import PeerAddr
from mptorrent.proto import bencode
from mptorrent.proto import tracker as tr

IH = bytes(range(20))
REQ = tr.AnnounceRequest(IH, b"-MP0100-abcdefghijkl", 6881, 0, 0, 1000, "started")
TIDS = (0x01020304, 0x05060708, 0x090A0B0C, 0x0D0E0F10)


def TestOneInput(data: bytes) -> None:
    tid = int.from_bytes(data[:4], "big") if len(data) >= 4 else 0
    _expect(lambda: _check_response(tr.parse_announce(data)))
    _expect(lambda: _check_response(tr.parse_announce(data, max_peers=3)))
    _expect(lambda: _check_scrape(tr.parse_scrape(data, IH)))
    _expect(lambda: tr.raise_for_failure(data))
    _expect(lambda: tr.parse_udp_connect(data, tid))
    _expect(lambda: _check_response(tr.parse_udp_announce(data, tid, ipv6=bool(tid & 1))))
    _expect(lambda: [_check_scrape(r) for r in tr.parse_udp_scrape(data, tid, 1 + tid % 3)])
    _expect(lambda: _round_trip_request(data))
    _expect(lambda: _exchange(data))


def _expect(step: object) -> None:
    try:
        step()  # type: ignore[operator]
    except TrackerError as exc:
        msg = str(exc)
        assert msg and msg.isprintable() and "\n" not in msg, msg
        # one_line() keeps MAX_MESSAGE characters of remote text, each escaped to at most 10
        assert len(msg) <= 10 * tr.MAX_MESSAGE + 200, len(msg)


def _check_response(r: tr.AnnounceResponse) -> None:
    assert 0 <= r.interval <= tr.MAX_INTERVAL
    assert r.min_interval is None or 0 <= r.min_interval <= tr.MAX_INTERVAL
    assert len(r.peers) <= tr.MAX_PEERS and len(set(r.peers)) == len(r.peers)
    for p in r.peers:
        assert isinstance(p, PeerAddr) and 0 < p.port <= 0xFFFF
        assert p.host not in ("0.0.0.0", "::", "255.255.255.255")
    assert r.complete is None or r.complete >= 0
    assert r.incomplete is None or r.incomplete >= 0
    assert r.warning is None or r.warning.isprintable()


def _check_scrape(r: tr.ScrapeResult) -> None:
    assert min(r.complete, r.incomplete, r.downloaded) >= 0


def _round_trip_request(data: bytes) -> None:
    pkt = tr.parse_udp_request(data)
    if isinstance(pkt, tr.UDPConnectPacket):
        assert tr.udp_connect_request(pkt.tid) == data[:16]
    elif isinstance(pkt, tr.UDPScrapePacket):
        assert tr.udp_scrape_request(pkt.connection_id, pkt.tid, pkt.info_hashes) == data
    else:
        packet = tr.udp_announce_request(
            pkt.connection_id, pkt.tid, pkt.request, url_data=pkt.url_data
        )
        again = tr.parse_udp_request(packet)
        assert isinstance(again, tr.UDPAnnouncePacket) and again.request == pkt.request


def _exchange(data: bytes) -> None:
    """A client exchange fed the input as datagrams (one length byte, then that many)."""
    tids = iter(TIDS * 8)
    ex = tr.UDPAnnounce(REQ, retry=tr.UDPRetry(1.0, 2), new_tid=lambda: next(tids))
    ex.start(0.0)
    pos, now = 0, 0.0
    while pos < len(data) and not ex.done:
        n = data[pos]
        datagram = data[pos + 1 : pos + 1 + n]
        pos += 1 + n
        now += 0.25
        if n == 0 and now >= ex.deadline:
            ex.timeout(now)  # an empty datagram stands for "time passed"
            continue
        ex.receive(datagram, now)
    if ex.done and ex.result is not None:
        _check_response(ex.result)


def seeds() -> list[bytes]:
    peers = tr.compact_peers([PeerAddr("10.0.0.1", 6881), PeerAddr("10.0.0.2", 1)], ipv6=False)
    tid = TIDS[0]
    connect = tr.udp_connect_reply(tid, 0x1122334455667788)
    announce = tr.udp_announce_reply(TIDS[1], interval=60, leechers=1, seeders=2, peers=peers)
    return [
        bencode.encode({b"interval": 1800, b"min interval": 60, b"peers": peers,
                        b"peers6": bytes(18), b"warning message": b"w", b"complete": 1}),
        bencode.encode({b"peers": [{b"ip": b"10.0.0.3", b"port": 3}, {b"ip": b"::1", b"port": 4}]}),
        bencode.encode({b"failure reason": b"go away"}),
        bencode.encode({b"files": {IH: {b"complete": 1, b"downloaded": 2, b"incomplete": 3}}}),
        connect,
        tr.udp_error_reply(tid, "banned"),
        tr.udp_scrape_reply(tid, [tr.ScrapeResult(1, 2, 3)]),
        tr.udp_connect_request(tid),
        tr.udp_announce_request(7, tid, REQ, url_data=b"/announce?pk=1"),
        tr.udp_scrape_request(7, tid, [IH, IH]),
        bytes([len(connect)]) + connect + bytes([len(announce)]) + announce,
    ]  # fmt: skip


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
    from fuzz.engine import main as run

    run(TestOneInput, seeds())


if __name__ == "__main__":
    main()
