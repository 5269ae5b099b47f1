"""The two errors of the peer wire protocol, split by blame (h11's habit).

They live apart from :mod:`mptorrent.proto.wire` so that the modules the
connection is built from (:mod:`~mptorrent.proto.ledger`, the extension
handlers under :mod:`mptorrent.proto.ext`) raise the very same classes;
``wire`` re-exports both.
"""

from __future__ import annotations

from mptorrent.errors import ProtocolError

__all__ = ["LocalProtocolError", "RemoteProtocolError"]


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids; drop the connection."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class LocalProtocolError(ValueError):
    """The caller asked for something the protocol forbids (a bug on our side)."""
