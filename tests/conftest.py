"""Under CI a skipped test is a failed test, bar the few skips the machine alone decides.

CI (``bash .ci/run``, which exports CI=true) runs as root on a machine where scripts/test has
installed opentracker, openssl, libtorrent and atheris, so a test that skips there has lost
what it needs, and the run must say so instead of exiting 0.  Only the skips listed in
``ENVIRONMENT_SKIPS`` may still happen under CI, each for the reason given there.  Outside CI a
skip stays a skip (a developer without root or opentracker still gets a useful run).

Tools are guarded by fixtures (``opentracker_bin`` here, the tmpfs ``mount`` fixtures in
tests/adversarial/) so that one missing tool skips only the tests that need it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator

import pytest
from pluggy import Result

from fuzz import run as fuzz_run
from tests.interop.opentracker import opentracker_binary


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


# Skip reason (its start) -> (why it may happen even under CI, whether it may happen here).
ENVIRONMENT_SKIPS: dict[str, tuple[str, Callable[[], bool]]] = {
    "no IPv6 loopback here": (
        "container runtimes often start without ::1 (Docker's default); nothing scripts/test "
        "installs can add it, and the IPv4 tests cover the same code",
        lambda: True,
    ),
    "this filesystem has no immutable attribute": (
        "chattr +i depends on the filesystem under $TMPDIR (ext4, xfs and btrfs have it; "
        "tmpfs and some overlayfs setups do not)",
        lambda: True,
    ),
    "atheris is not installed": (
        "atheris ships wheels only for CPython 3.8-3.14 on Linux x86_64; elsewhere fuzz/run.py "
        "falls back to hypothesis, loudly.  Where a wheel exists this skip fails CI",
        lambda: not fuzz_run.atheris_has_wheel(),
    ),
}


def _skip_reason(longrepr: object) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr)
    return reason.removeprefix("Skipped: ")


def _allowed(reason: str) -> bool:
    return any(reason.startswith(k) and ok() for k, (_, ok) in ENVIRONMENT_SKIPS.items())


def _fail_if_skipped_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (in_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report.longrepr)
    if _allowed(reason):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI=true, where every test must run: {reason}\n"
        "(tests/conftest.py lists the only skips allowed under CI: "
        f"{'; '.join(ENVIRONMENT_SKIPS)})"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Result[pytest.TestReport], None]:
    outcome = yield
    _fail_if_skipped_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, Result[pytest.CollectReport], None]:
    # a module-level skip shows here, as one skip hiding all of the module's tests
    outcome = yield
    _fail_if_skipped_in_ci(outcome.get_result())


@pytest.fixture(scope="session")
def opentracker_bin() -> str:
    """Debian's opentracker binary; tests that start one skip without it (scripts/test
    installs it, and under CI the skip fails the run)."""
    path = opentracker_binary()
    if path is None:
        pytest.skip("opentracker is not installed")
    return path


@pytest.fixture(scope="session", autouse=True)
def _dht_stays_home(tmp_path_factory: pytest.TempPathFactory) -> Generator[None, None, None]:
    """No test reaches the public DHT, nor reads or writes the user's saved routing table.

    Every process a test starts inherits these: the DHT's built-in routers become an
    address where nothing listens (``MPTORRENT_DHT_ROUTERS``), the routing table is kept in
    a temporary cache directory (``XDG_CACHE_HOME``), and a DHT datagram to any non-loopback
    address raises (``MPTORRENT_LOOPBACK_ONLY``). Tests still pass ``--no-dht`` or a loopback
    ``--dht-bootstrap``: this is the net under them.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPTORRENT_DHT_ROUTERS", "127.0.0.1:1")
        mp.setenv("MPTORRENT_LOOPBACK_ONLY", "1")
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield
