"""A bounded fuzz run of every target, for CI: ``python fuzz/run.py``.

Runs fuzz/fuzz_{bencode,metainfo,wire,tracker,magnet,ext,dht,v2,webseed,select,rate,picker}.py
with atheris (pip-installing it when missing), each for at most ``--runs`` inputs and
``--seconds`` seconds, the targets side by side, each starting from its seed corpus (the
run checks that libFuzzer loaded it).  Where atheris cannot be installed it says so loudly and
drives the same entry points with hypothesis instead, under the same time bound.
The first line of output names the engine that ran.  Exit status 1 if any target
found a failure (its reproducer is kept under ``--artifacts``), 2 if the run could
not start as asked.

Under CI (environment variable CI=true) atheris is required wherever a wheel of it
exists for this interpreter (CPython 3.8-3.14 on Linux x86_64, ``atheris_has_wheel``):
failing to install it there is exit 2, not a quiet fallback.  Elsewhere (another
architecture, a Python newer than atheris) the hypothesis fallback is allowed, and said.

    python fuzz/run.py                                # CI: 20,000 runs or 10 s per target
    python fuzz/run.py --seconds 600 --runs 0 wire    # a long run of one target
    python fuzz/run.py --engine hypothesis            # without atheris: 2,000 inputs each
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = (
    "bencode",
    "metainfo",
    "wire",
    "tracker",
    "magnet",
    "ext",
    "dht",
    "v2",
    "webseed",
    "select",
    "rate",
    "picker",
)
PY = f"{sys.version_info[0]}.{sys.version_info[1]}"


# Interpreters atheris publishes manylinux x86_64 wheels for (PyPI, atheris 2.3-3.1).
ATHERIS_WHEEL_PYTHONS = ((3, 8), (3, 14))
# A target that neither finishes nor fails is killed after its time plus this.
GRACE = 60


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def atheris_has_wheel() -> bool:
    """Whether pip can install atheris here without building it (which needs clang)."""
    low, high = ATHERIS_WHEEL_PYTHONS
    return (
        sys.platform == "linux" and platform.machine() == "x86_64"
        and sys.implementation.name == "cpython" and low <= sys.version_info[:2] <= high
    )  # fmt: skip


def have_atheris() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import atheris"], capture_output=True)
    return probe.returncode == 0


def ensure_atheris(install: bool) -> str | None:
    """None when atheris is usable, else why not."""
    if have_atheris():
        return None
    if not install:
        return "atheris is not installed"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "atheris"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if pip.returncode != 0 or not have_atheris():
        last = (pip.stderr.strip().splitlines() or ["no output"])[-1]
        return f"pip could not install atheris ({last})"
    return None


def command(
    engine: str, target: str, runs: int, seconds: int, examples: int, artifacts: Path
) -> list[str]:
    script = str(HERE / f"fuzz_{target}.py")
    if engine == "hypothesis":
        return [sys.executable, script, "--hypothesis", str(examples), str(seconds)]
    # The target writes its seeds into this (empty) corpus directory before libFuzzer starts.
    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-"))
    return [
        sys.executable, script, f"-runs={runs or -1}", f"-max_total_time={seconds}",
        "-timeout=10", "-rss_limit_mb=2048", f"-artifact_prefix={artifacts}/{target}-",
        "-print_final_stats=1", str(corpus),
    ]  # fmt: skip


def atheris_version() -> str:
    try:
        return importlib.metadata.version("atheris")
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def seed_corpus_files(lines: list[str]) -> int:
    """How many inputs libFuzzer loaded before fuzzing ("INFO: seed corpus: files: N ...")."""
    for line in lines:
        if line.startswith("INFO: seed corpus: files: "):
            return int(line.split()[4])
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("targets", nargs="*", metavar="TARGET", help=f"any of {', '.join(TARGETS)}")
    ap.add_argument("--engine", choices=["auto", "atheris", "hypothesis"], default="auto")
    ap.add_argument("--runs", type=int, default=20_000, help="inputs per target (0: no limit)")
    ap.add_argument("--seconds", type=int, default=10, help="time per target")
    ap.add_argument("--examples", type=int, default=2000,
                    help="inputs per target with hypothesis, ~10x slower per input")  # fmt: skip
    ap.add_argument("--artifacts", type=Path, help="where reproducers go (default: a temp dir)")
    ap.add_argument("--no-install", action="store_true", help="never pip-install atheris")
    args = ap.parse_args(argv)
    targets = args.targets or list(TARGETS)
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        ap.error(f"unknown target(s): {', '.join(unknown)}")

    engine = args.engine
    if engine in ("auto", "atheris"):
        why = ensure_atheris(install=not args.no_install)
        if why is not None:
            if engine == "atheris":
                print(f"fuzz: {why}", file=sys.stderr)
                return 2
            if in_ci() and atheris_has_wheel():
                print(f"fuzz: CI=true and atheris has a wheel for Python {PY}, but {why}: "
                      "failing rather than fuzzing without coverage guidance",
                      file=sys.stderr)  # fmt: skip
                return 2
            banner = (f"fuzz: ENGINE hypothesis (FALLBACK, not coverage-guided): {why}; "
                      f"atheris wheel for Python {PY} here: "
                      f"{'yes' if atheris_has_wheel() else 'no'}")  # fmt: skip
            print(banner, file=sys.stderr)
            engine = "hypothesis"
        else:
            engine = "atheris"
    if engine == "atheris":
        print(f"fuzz: ENGINE atheris {atheris_version()} (libFuzzer, coverage-guided), "
              "starting from each target's seed corpus")  # fmt: skip
    else:
        print(f"fuzz: ENGINE hypothesis (not coverage-guided), {args.examples} inputs or "
              f"{args.seconds} s per target")  # fmt: skip
    artifacts = (args.artifacts or Path(tempfile.gettempdir()) / "mptorrent-fuzz").resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get(
        "PYTHONPATH", "")]).rstrip(os.pathsep)}  # fmt: skip

    start = time.monotonic()
    failed = 0
    with contextlib.ExitStack() as stack:
        running = []
        for target in targets:
            log = stack.enter_context(tempfile.TemporaryFile())
            cmd = command(engine, target, args.runs, args.seconds, args.examples, artifacts)
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    cwd=artifacts)  # fmt: skip
            running.append((target, proc, log, cmd))
        for target, proc, log, cmd in running:
            # Both engines stop themselves at --seconds; this is the backstop.
            left = start + args.seconds + GRACE - time.monotonic()
            try:
                proc.wait(max(left, 1))
                why = f"status {proc.returncode}"
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                why = f"no end after {args.seconds + GRACE} s (killed)"
            log.seek(0)
            lines = log.read().decode(errors="replace").splitlines()
            if engine == "atheris":
                shutil.rmtree(cmd[-1], ignore_errors=True)  # the corpus it grew from the seeds
            done = next((ln for ln in reversed(lines) if ln.startswith("Done ")), None)
            seeded = seed_corpus_files(lines) if engine == "atheris" else None
            if proc.returncode == 0 and seeded == 0:
                why = "libFuzzer started without the seed corpus"
            elif proc.returncode == 0:
                from_seeds = f", {seeded} seed files" if seeded else ""
                print(f"fuzz_{target}: ok ({engine}{': ' + done if done else ''}{from_seeds})")
                continue
            failed += 1
            print(f"fuzz_{target}: FAILED: {why} (reproducers in "
                  f"{artifacts}); last lines:", file=sys.stderr)  # fmt: skip
            for line in lines[-40:]:
                print(f"  {line}", file=sys.stderr)
    took = time.monotonic() - start
    print(f"fuzz: {len(targets) - failed} of {len(targets)} targets clean in {took:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
