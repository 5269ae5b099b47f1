"""fuzz/'s atheris entry points, exercised without atheris.

Each ``TestOneInput`` gets its own seeds, every truncation and a spread of bit
flips of them, and a shared list of inputs that have broken bencode and wire
parsers elsewhere; each must take all of them (a result or the documented
error).  Then each is shown to let a foreign exception or a broken promise
through, so the rule it checks is not vacuous, and fuzz/run.py is run briefly
with its hypothesis engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from fuzz import (
    fuzz_bencode,
    fuzz_dht,
    fuzz_ext,
    fuzz_magnet,
    fuzz_metainfo,
    fuzz_picker,
    fuzz_rate,
    fuzz_select,
    fuzz_tracker,
    fuzz_v2,
    fuzz_webseed,
    fuzz_wire,
    run,
)
from mptorrent.policy.picker import Picker
from mptorrent.proto import bencode, bitfield, merkle, metainfo, wire
from mptorrent.proto import tracker as tr
from mptorrent.proto.dht import krpc
from mptorrent.proto.ext import ut_metadata, ut_pex
from mptorrent.proto.webseed import Body, RangeClient

ROOT = Path(__file__).resolve().parent.parent
ATHERIS_MISSING = "atheris is not installed (fuzz/run.py installs it for the CI run)"
TARGETS: dict[str, ModuleType] = {
    "bencode": fuzz_bencode,
    "metainfo": fuzz_metainfo,
    "wire": fuzz_wire,
    "tracker": fuzz_tracker,
    "magnet": fuzz_magnet,
    "ext": fuzz_ext,
    "dht": fuzz_dht,
    "v2": fuzz_v2,
    "webseed": fuzz_webseed,
    "select": fuzz_select,
    "rate": fuzz_rate,
    "picker": fuzz_picker,
}

NASTY: list[bytes] = [
    b"", b"\x00", b"e", b"i", b"ie", b"i-e", b"i-0e", b"i01e", b"i+1e", b"i 1e", b"i1_0e",
    b"0:", b"1:", b"-1:", b"01:a", b"1_0:aaaaaaaaaa", b"99999999999999999999999:",
    b"4294967296:", b"i" + b"9" * 100 + b"e", b"l" * 100_000, b"l" * 100_000 + b"e" * 100_000,
    b"d" * 5000, b"d1:a" * 5000 + b"i1e" + b"e" * 5000, b"d1:b0:1:a0:e", b"d1:a0:1:a0:e",
    b"d4:infoi1ee", b"d4:infod4:name2:..ee", b"\xff" * 64, bytes(64),
    b"\xff\xff\xff\xff\x07", b"\x00\x00\x00\x00", b"\x80\x00\x00\x00\x05",
    b"\x00\x00\x00\x0d\x06" + bytes(12), b"\x00\x00\x40\x09\x07" + bytes(8) + bytes(16384),
    b"\x13BitTorrent protocol" + bytes(48), b"\x13BitTorrent protocoX",
    b"d14:failure reason2:\x1b[e", b"d5:peers" + b"7:" + bytes(7) + b"e",
    b"d5:peersld2:ipi1e4:porti0eeee", bytes(8) + b"\x00" * 12, b"\x00\x00\x00\x03" + bytes(12),
    (0x41727101980).to_bytes(8, "big") + bytes(8),
]  # fmt: skip


def corpus(module: ModuleType) -> Iterator[bytes]:
    for data in NASTY:
        yield data
        yield b"\x00" + data  # fuzz_wire's two modes
        yield b"\x01" + data
    for seed in module.seeds():
        yield seed
        yield seed + seed
        yield seed + b"e"
        for cut in range(len(seed)):
            yield seed[:cut]
        step = max(1, len(seed) // 60)
        for at in range(0, len(seed), step):
            for value in (seed[at] ^ 0x01, seed[at] ^ 0x80, 0x00, 0xFF, ord("e"), ord(":")):
                yield seed[:at] + bytes([value]) + seed[at + 1 :]


@pytest.mark.parametrize("name", list(TARGETS))
def test_entry_point_takes_the_whole_corpus(name: str) -> None:
    target = TARGETS[name].TestOneInput
    count = 0
    for data in corpus(TARGETS[name]):
        target(data)
        count += 1
    assert count > 500


@pytest.mark.parametrize("name", list(TARGETS))
def test_every_seed_is_accepted_by_its_parser(name: str) -> None:
    # Seeds that the parser refuses would leave the fuzzer starting from nothing.
    for seed in TARGETS[name].seeds():
        if name == "bencode":
            bencode.decode(seed, max_size=len(seed))
        elif name == "metainfo":
            metainfo.parse(seed)
    if name == "wire":
        assert fuzz_wire.seeds()[0][0] == 0 and fuzz_wire.seeds()[1][0] == 1


def _raise(*_args: Any, **_kw: Any) -> Any:
    raise ValueError("a bug in the parser")


# Each parser swapped for one that fails in a way the rule must catch.
BREAKS: dict[str, list[tuple[object, str, Callable[..., Any]]]] = {
    "bencode": [
        (bencode, "decode_with_spans", _raise),
        (bencode, "encode", lambda value: b"not the input"),
    ],
    "metainfo": [
        (metainfo, "parse", _raise),
        (metainfo, "parse", lambda data, real=metainfo.parse: replace(
            real(data), files=(metainfo.FileEntry(("..",), 40000, 0),))),
        (metainfo, "parse", lambda data, real=metainfo.parse: replace(
            real(data), warnings=("\x1b[2J",))),
    ],
    "wire": [
        (wire.Connection, "next_event", _raise),
        (wire.Connection, "send", lambda self, ev, real=wire.Connection.send: real(self, ev)
         + (b"x" if not isinstance(ev, wire.Handshake) else b"")),
    ],
    "tracker": [
        (tr, "parse_announce", _raise),
        (tr, "parse_udp_connect", _raise),
        (tr, "parse_announce", lambda body, max_peers=2000, real=tr.parse_announce: replace(
            real(body), interval=-1)),
    ],
    "magnet": [
        (fuzz_magnet, "parse_magnet", _raise),
        (fuzz_magnet, "parse_magnet", lambda uri, real=fuzz_magnet.parse_magnet: replace(
            real(uri), trackers=("wss://x",))),
    ],
    "ext": [
        (ut_metadata, "decode_message", _raise),
        (ut_pex, "decode_pex", _raise),
        (ut_metadata.MetadataAssembler, "next_requests", lambda self, peer, now: [7]),
    ],
    "dht": [
        (krpc, "decode", _raise),
    ],
    "v2": [
        (merkle, "answer", lambda *_a, **_kw: bytes(32)),
        (merkle, "check_answer", lambda *_a, **_kw: True),
    ],
    "webseed": [
        (RangeClient, "next_event", _raise),
        (RangeClient, "_data", lambda self, data: Body(bytes(data) + b"x")),
    ],
    "select": [
        (fuzz_select, "select_files", _raise),
        (fuzz_select, "select_files", lambda files, sels: [len(files)]),
    ],
    "rate": [
        (fuzz_rate, "parse_rate", lambda text: 7),  # below 1 KiB/s and not 0
        (fuzz_rate, "parse_rate", lambda text: int(text)),  # a bare int error, unnamed
    ],
    "picker": [
        (Picker, "peer_have", lambda self, peer, index, worker=None: None),  # HAVEs lost
        (bitfield, "count", lambda packed: 0),  # every peer taken for one with nothing
        (bitfield, "problem", lambda packed, n: None),  # a hostile bitfield let through
    ],
}  # fmt: skip


@pytest.mark.parametrize(
    ("name", "index"), [(n, i) for n, cases in BREAKS.items() for i in range(len(cases))]
)
def test_entry_point_reports_a_broken_parser(
    name: str, index: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner, attr, fake = BREAKS[name][index]
    seeds = TARGETS[name].seeds()
    monkeypatch.setattr(owner, attr, fake)
    with pytest.raises((ValueError, AssertionError)):
        for seed in seeds:
            TARGETS[name].TestOneInput(seed)


def test_entry_points_import_without_atheris() -> None:
    code = (
        "import sys\n"
        "sys.modules['atheris'] = None  # any import of it now fails\n"
        "import fuzz.fuzz_bencode, fuzz.fuzz_metainfo, fuzz.fuzz_wire, fuzz.fuzz_tracker\n"
        "import fuzz.fuzz_magnet, fuzz.fuzz_ext, fuzz.fuzz_dht, fuzz.fuzz_webseed\n"
        "for m in (fuzz.fuzz_bencode, fuzz.fuzz_metainfo, fuzz.fuzz_wire, fuzz.fuzz_tracker,\n"
        "          fuzz.fuzz_magnet, fuzz.fuzz_ext, fuzz.fuzz_dht, fuzz.fuzz_webseed):\n"
        "    assert callable(m.TestOneInput) and callable(m.main)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def fuzz_run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "run.py"), *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def test_bounded_run_with_the_hypothesis_engine() -> None:
    proc = fuzz_run("--engine", "hypothesis", "--examples", "30")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0].startswith("fuzz: ENGINE hypothesis"), proc.stdout
    for name in TARGETS:
        assert f"fuzz_{name}: ok (hypothesis" in proc.stdout
    assert f"{len(run.TARGETS)} of {len(run.TARGETS)} targets clean" in proc.stdout


def test_the_hypothesis_engine_stops_at_its_time_bound() -> None:
    """Hypothesis has no time limit of its own: --seconds bounds it (a million inputs
    would take minutes)."""
    t0 = time.monotonic()
    proc = fuzz_run("--engine", "hypothesis", "--examples", "1000000", "--seconds", "2", "wire")
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 of 1 targets clean" in proc.stdout
    assert took < 20, (took, proc.stdout)


def hidden_atheris(tmp_path: Path, ci: str | None) -> dict[str, str]:
    """An environment in which ``import atheris`` fails, as where it is not installed."""
    (tmp_path / "atheris.py").write_text('raise ImportError("hidden by the test")\n')
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    if ci is not None:
        env["CI"] = ci
    return env


def test_without_atheris_the_fallback_says_so_loudly(tmp_path: Path) -> None:
    proc = fuzz_run(
        "--no-install", "--examples", "20", "bencode", env=hidden_atheris(tmp_path, None)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fuzz: ENGINE hypothesis (FALLBACK, not coverage-guided): atheris is not installed" in (
        proc.stderr
    )
    assert proc.stdout.splitlines()[0].startswith("fuzz: ENGINE hypothesis"), proc.stdout


def test_under_ci_a_missing_atheris_fails_where_a_wheel_exists(tmp_path: Path) -> None:
    proc = fuzz_run(
        "--no-install", "--examples", "20", "bencode", env=hidden_atheris(tmp_path, "true")
    )
    if run.atheris_has_wheel():
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "CI=true and atheris has a wheel" in proc.stderr
        assert "ENGINE" not in proc.stdout
    else:  # nothing to install here: the fallback is allowed, and announced
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "ENGINE hypothesis (FALLBACK" in proc.stderr


def test_bounded_run_with_atheris_when_installed() -> None:
    probe = subprocess.run([sys.executable, "-c", "import atheris"], capture_output=True)
    if probe.returncode != 0:
        # Under CI a skip fails the run (tests/conftest.py) unless no wheel exists here.
        pytest.skip(ATHERIS_MISSING)
    proc = fuzz_run("--engine", "atheris", "--runs", "300", "--seconds", "5", "--no-install")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0].startswith("fuzz: ENGINE atheris"), proc.stdout
    for name in TARGETS:
        # libFuzzer loaded the target's seeds before it mutated anything
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(f"fuzz_{name}: "))
        n = len(set(TARGETS[name].seeds()))
        assert line.startswith(f"fuzz_{name}: ok (atheris: Done "), line
        assert line.endswith(f", {n} seed files)"), (line, n)
    assert f"{len(run.TARGETS)} of {len(run.TARGETS)} targets clean" in proc.stdout
