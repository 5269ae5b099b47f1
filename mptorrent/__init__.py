"""mptorrent: a BitTorrent client whose worker processes download in parallel."""

__version__ = "0.1.0"
