"""What a fetch loads before its first worker starts (issues 13 and 18: start-up time).

The command line imports the engine when ``fetch`` runs (``cli/main.py``'s
``_import_engine``); everything it loads is serial work before the first request, and the
workers are forked from it.  Features a plain fetch does not use load on first use, and the
classes it defines are ``record.py`` records, not ``@dataclass``es (which compile up to six
methods each at import).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mptorrent.disk.create import create

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# loaded only by the feature that needs it
LAZY = (
    "mptorrent.proto.webseed",  # --web-seed, a torrent's url-list
    "mptorrent.netio.webseed",
    "h11",
    "ssl",  # https trackers and mirrors (http.client loads it with the first HTTP announce)
    "mptorrent.proto.merkle",  # v2 and hybrid torrents
    "mptorrent.proto.magnet",  # a magnet link
    "mptorrent.engine.stream",  # -o -
    "mptorrent.proto.ext.ut_metadata",  # a worker's first BEP 10 peer, a magnet link
    "mptorrent.proto.ext.ut_pex",
    "mptorrent.netio.dht",  # the DHT (on unless --no-dht)
    "asyncio",  # the Python API's async iterator
)

PROBE = """
import dataclasses, json, sys
import mptorrent.cli.main as m
m._import_engine()
from mptorrent.engine import api
from mptorrent.messages import PeerAddr
api.prepare(  # what `fetch` does before the coordinator starts
    sys.argv[1], workers=2, peers=(PeerAddr("127.0.0.1", 6881),), trackers=False,
    emit=lambda _event: None, port=0, bind="127.0.0.1", max_peers=50, metadata_timeout=60.0,
    io="auto",
)
made = [f"{name}.{k}" for name, mod in list(sys.modules.items()) if name.startswith("mptorrent")
        for k, v in vars(mod).items() if isinstance(v, type) and v.__module__ == name
        and "__dataclass_params__" in v.__dict__]  # made by @dataclass, not by record.py
print(json.dumps({"modules": sorted(sys.modules), "dataclasses": made}))
"""


def test_the_fetch_path_loads_only_what_a_plain_fetch_uses(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(bytes(100_000))
    torrent = tmp_path / "a.torrent"
    torrent.write_bytes(create(tmp_path / "a.bin", piece_length=16 * 1024, jobs=1))
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(torrent)], env=ENV, capture_output=True, text=True,
        timeout=60, check=True,
    ).stdout  # fmt: skip
    seen = json.loads(out)
    assert [m for m in LAZY if m in seen["modules"]] == []
    # a @dataclass here costs start-up: declare it with record.frozen or record.mutable
    assert seen["dataclasses"] == []


FORKSERVER_PROBE = """
import os, sys
os.environ["MPTORRENT_START_METHOD"] = "forkserver"
from mptorrent import mp
ctx = mp.context(preload=sys.argv[1:])
# exec is picklable by name: the child answers whether the module was there before it ran
p = ctx.Process(target=exec, args=(
    "import sys; sys.exit(0 if 'mptorrent.worker.process' in sys.modules else 3)",))
p.start()
p.join(30)
print(p.exitcode)
"""


def test_forkserver_workers_start_with_their_modules_imported() -> None:
    """Under forkserver (Python 3.14's POSIX default) the server imports the workers' module
    once: without the preload each worker imported ~70 modules itself (30 ms, 6 MiB)."""

    def child_exit(*preload: str) -> str:
        return subprocess.run(
            [sys.executable, "-c", FORKSERVER_PROBE, *preload], env=ENV, cwd=ROOT,
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.strip()  # fmt: skip

    assert child_exit("mptorrent.worker.process") == "0"
    assert child_exit() == "3"  # the probe sees the difference
