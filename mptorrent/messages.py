"""Small, picklable records passed between processes (and between layers).

Every message that crosses a process boundary is defined here, in one place.
"""

from __future__ import annotations

from typing import NamedTuple


class PeerAddr(NamedTuple):
    host: str  # IPv4 or IPv6 literal (no brackets)
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
