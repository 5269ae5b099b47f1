"""A sans-IO DHT (BEP 5, with BEP 32 compact IPv6 nodes).

Bytes, addresses and the time come in as arguments; datagrams to send, events
and decisions come out.  Nothing here opens a socket or reads the clock:

- :mod:`.krpc`: the KRPC codec (bounded, strict decoding; one error class);
- :mod:`.routing`: node ids, XOR distance and the k-bucket routing table;
- :mod:`.lookup`: the iterative ``find_node`` / ``get_peers`` state machine;
- :mod:`.server`: answers to other nodes' queries (tokens, peer store, rate limit);
- :mod:`.node`: the :class:`~.node.Node` façade the I/O layer drives.
"""
