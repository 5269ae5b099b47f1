"""Sans-IO protocol code: bencode, .torrent metadata, the peer wire and tracker codecs.

Bytes in, typed values and bytes out; no sockets, processes, files or clocks of its own.
Everything above may import it; it imports only ``mptorrent.errors`` and ``mptorrent.messages``.
"""
