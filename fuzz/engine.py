"""What the fuzz entry points share: running atheris, or hypothesis when atheris is missing.

Both engines start from each target's ``seeds()``: libFuzzer gets them as its
corpus directory, hypothesis mutates them (and also tries plain random bytes).
"""

from __future__ import annotations

import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path

Target = Callable[[bytes], None]

HYPOTHESIS_BATCH = 200  # inputs per hypothesis run between looks at the clock
# Bytes that change the meaning of bencode, wire frames and UDP packets.
TOKENS = (b"i", b"e", b"l", b"d", b"0", b"1:", b"9:", b"-", b"\x00\x00\x00", b"\xff\xff\xff\xff")


def write_corpus(seeds: Sequence[bytes], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for n, seed in enumerate(seeds):
        (directory / f"seed-{n:03}").write_bytes(seed)
    return directory


def run_atheris(target: Target, seeds: Sequence[bytes], argv: Sequence[str] | None = None) -> None:
    """libFuzzer through atheris, starting from the seeds: they are written into the first
    corpus directory given (libFuzzer reads it at start and adds what it finds there), or
    into a fresh one when none is.  A file argument is a reproducer to replay, left alone."""
    import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]

    args = list(sys.argv if argv is None else argv)
    paths = [a for a in args[1:] if not a.startswith("-")]
    if not paths:
        args.append(str(write_corpus(seeds, Path(tempfile.mkdtemp(prefix="mptorrent-fuzz-")))))
    elif Path(paths[0]).is_dir():
        write_corpus(seeds, Path(paths[0]))
    # Coverage feedback from mptorrent's own code only: atheris.instrument_all() would
    # also rewrite ~3,000 stdlib functions, which costs half a minute per start.
    for fn in project_functions():
        atheris.instrument_func(fn)
    atheris.Setup(args, target)
    atheris.Fuzz()


def project_functions(package: str = "mptorrent") -> list[types.FunctionType]:
    """Every Python function and method defined in ``package``'s imported modules."""
    found: dict[int, types.FunctionType] = {}

    def add(obj: object, module: str) -> None:
        if isinstance(obj, staticmethod | classmethod):
            obj = obj.__func__
        elif isinstance(obj, property):
            for part in (obj.fget, obj.fset, obj.fdel):
                add(part, module)
            return
        if isinstance(obj, types.FunctionType) and obj.__module__ == module:
            found[id(obj)] = obj

    for name, module in list(sys.modules.items()):
        if module is None or (name != package and not name.startswith(package + ".")):
            continue
        for obj in vars(module).values():
            if isinstance(obj, type) and obj.__module__ == name:
                for member in vars(obj).values():
                    add(member, name)
            else:
                add(obj, name)
    return list(found.values())


def run_hypothesis(
    target: Target, seeds: Sequence[bytes], examples: int, seconds: float | None = None
) -> int:
    """The same entry point driven by hypothesis: seeds, mutated seeds and random bytes.

    Stops after ``examples`` inputs or, when given, ``seconds`` of wall time, whichever comes
    first (hypothesis itself has no time limit: it runs in batches, the clock read between
    them).  Returns how many generated inputs ran."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    deadline = None if seconds is None else time.monotonic() + seconds
    for seed in seeds:
        target(seed)

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(list(seeds))))
        for _ in range(draw(st.integers(1, 6))):
            at = draw(st.integers(0, len(data)))
            kind = draw(st.sampled_from(["flip", "insert", "delete", "token", "cut", "splice"]))
            if kind == "flip" and at < len(data):
                data[at] ^= 1 << draw(st.integers(0, 7))
            elif kind == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=8))
            elif kind == "delete":
                del data[at : at + draw(st.integers(1, 8))]
            elif kind == "token":
                data[at:at] = draw(st.sampled_from(TOKENS))
            elif kind == "cut":
                del data[at:]
            else:
                other = draw(st.sampled_from(list(seeds)))
                start = draw(st.integers(0, len(other)))
                data[at:at] = other[start : start + draw(st.integers(1, 64))]
        return bytes(data)

    ran = 0

    def batch(n: int) -> None:
        @settings(
            max_examples=n, deadline=None, database=None, derandomize=False,
            suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        @given(mutated() | st.binary(max_size=512))
        def fuzz(data: bytes) -> None:
            nonlocal ran
            ran += 1
            target(data)

        fuzz()

    while ran < examples and (deadline is None or time.monotonic() < deadline):
        before = ran
        batch(min(HYPOTHESIS_BATCH, examples - ran))
        if ran == before:  # hypothesis found nothing new to try
            break
    return ran


def main(target: Target, seeds: Sequence[bytes]) -> None:
    """``python fuzz/fuzz_X.py [libFuzzer flags] [corpus]``; without atheris
    ``--hypothesis N [SECONDS]``: N inputs, or fewer if SECONDS of wall time pass first."""
    if len(sys.argv) >= 2 and sys.argv[1] == "--hypothesis":
        examples = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
        seconds = float(sys.argv[3]) if len(sys.argv) > 3 else None
        t0 = time.monotonic()
        ran = run_hypothesis(target, seeds, examples, seconds)
        # the line fuzz/run.py reports, like libFuzzer's "Done N runs in S second(s)"
        print(f"Done {ran} hypothesis inputs and {len(seeds)} seeds in "
              f"{time.monotonic() - t0:.1f} s", flush=True)  # fmt: skip
        return
    run_atheris(target, seeds)
