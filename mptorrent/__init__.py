"""mptorrent: a BitTorrent client whose worker processes download in parallel.

The Python API (docs/api.md)::

    import mptorrent

    result = mptorrent.fetch("movie.torrent", "downloads/")      # blocks until verified
    handle = mptorrent.start("magnet:?xt=urn:btih:...")          # does not block
    for event in handle.events(): ...                            # mptorrent.events records

The functions and classes live in :mod:`mptorrent.engine.api`, imported the first time one
of them is used, so that ``import mptorrent`` (and the command line's start-up) stays cheap.
Errors are :class:`MptorrentError` subclasses whose ``exit_code`` is the command line's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mptorrent.errors import (
    BadMagnet,
    BadSelection,
    BadTorrent,
    BencodeError,
    Cancelled,
    DiskFull,
    DownloadError,
    MetadataTimeout,
    MptorrentError,
    NoPeers,
    OutputLocked,
    StorageError,
    StreamClosed,
    UnsafePath,
)

if TYPE_CHECKING:
    from mptorrent.engine.api import (
        Download,
        FetchResult,
        SeedResult,
        Torrent,
        TorrentFile,
        VerifyResult,
        create,
        fetch,
        seed,
        start,
        verify,
    )

__version__ = "0.1.0"

_API = frozenset({
    "Download", "FetchResult", "SeedResult", "Torrent", "TorrentFile", "VerifyResult",
    "create", "fetch", "seed", "start", "verify",
})  # fmt: skip

__all__ = [
    "BadMagnet", "BadSelection", "BadTorrent", "BencodeError", "Cancelled", "DiskFull",
    "Download", "DownloadError", "FetchResult", "MetadataTimeout", "MptorrentError", "NoPeers",
    "OutputLocked", "SeedResult", "StorageError", "StreamClosed", "Torrent", "TorrentFile",
    "UnsafePath", "VerifyResult", "__version__", "create", "fetch", "seed", "start", "verify",
]  # fmt: skip


def __getattr__(name: str) -> object:
    # the API's names, loaded on first use (PEP 562)
    if name in _API:
        from mptorrent.engine import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mptorrent' has no attribute {name!r}")
