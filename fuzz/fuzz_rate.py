"""Fuzz target: mptorrent.policy.ratelimit.parse_rate gives a rate or a ValueError, nothing else.

The input is the text of a ``--max-download-rate`` / ``--max-upload-rate`` value (UTF-8,
undecodable bytes replaced).  A rate is 0 (no limit) or between 1 KiB/s and 2^50 bytes/s;
a ValueError's message is one printable line that names the value.

    python fuzz/fuzz_rate.py -runs=20000           # atheris (pip install atheris)
    python fuzz/fuzz_rate.py --hypothesis 2000     # without atheris
"""

from __future__ import annotations

import sys
from pathlib import Path

from mptorrent.policy.ratelimit import parse_rate


def TestOneInput(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        rate = parse_rate(text)
    except ValueError as err:
        message = str(err)
        assert message.isprintable() and "rate" in message, message
        assert len(message) < 200 + 4 * len(text), message
        return
    assert isinstance(rate, int)
    assert rate == 0 or 1024 <= rate <= 1 << 50, (text, rate)


def seeds() -> list[bytes]:
    return [b"20M", b"512K", b"1.5M", b"0", b"100000", b"2G", b"20MiB/s", b"-1M", b"1e3K",
            b"nan", b"inf", b"0x10M", b"\xff\xfeM", b"  7 k  "]  # fmt: skip


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
    from fuzz.engine import main as run

    run(TestOneInput, seeds())


if __name__ == "__main__":
    main()
