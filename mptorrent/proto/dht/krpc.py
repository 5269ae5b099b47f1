"""KRPC, the DHT's bencoded RPC over UDP (BEP 5; ``nodes6`` from BEP 32).

One datagram is one message: a query (``y=q``), a response (``y=r``) or an error
(``y=e``).  :func:`decode` turns a datagram into one of the frozen records below or
raises :class:`KrpcError`, never anything else; :func:`encode` is its inverse.

Limits on untrusted input (a datagram is whatever anyone on the internet sends):

- ``MAX_DATAGRAM`` (8 KiB) bytes in all, bencode nesting of at most ``MAX_DEPTH`` (4);
- a transaction id of 1 to ``MAX_TID`` (16) bytes;
- at most ``MAX_NODES`` (32) entries of ``nodes`` and of ``nodes6`` are taken (real
  replies carry 8), the rest of the string is not parsed; a length that is not a whole
  number of entries is refused;
- at most ``MAX_VALUES`` (200) peers of ``values`` are taken, the rest ignored;
- a ``token`` of at most ``MAX_TOKEN`` (64) bytes; an error message of at most 512.

Nodes and peers with port 0 cannot be reached, so the codec leaves them out.  Queries
carry BEP 43's read-only flag (top-level ``ro``: 1); other unknown keys (``v``, BEP 42's
``ip``, BEP 32's ``want``) are ignored.
"""

from __future__ import annotations

import ipaddress
from typing import Final, Literal, TypeAlias

from mptorrent.errors import BencodeError, ProtocolError
from mptorrent.proto import bencode
from mptorrent.record import Record, frozen

__all__ = [
    "Addr",
    "AnnouncePeer",
    "Error",
    "FindNode",
    "GetPeers",
    "KrpcError",
    "Message",
    "NodeInfo",
    "Ping",
    "Query",
    "Response",
    "decode",
    "encode",
]

Addr: TypeAlias = tuple[str, int]  # (IP literal, port), as a UDP socket gives it

MAX_DATAGRAM: Final = 8192
MAX_DEPTH: Final = 4
MAX_TID: Final = 16
MAX_NODES: Final = 32
MAX_VALUES: Final = 200
MAX_TOKEN: Final = 64
MAX_ERROR_TEXT: Final = 512
ID_LEN: Final = 20

# BEP 5 error codes.
GENERIC_ERROR: Final = 201
SERVER_ERROR: Final = 202
PROTOCOL_ERROR: Final = 203
METHOD_UNKNOWN: Final = 204


class KrpcError(ProtocolError):
    """A datagram that is not a KRPC message we accept.

    ``tid`` is the message's transaction id when it could be read and ``code`` the
    BEP 5 error code to answer with (203, or 204 for an unknown query method), so a
    server can reply to a malformed query; ``is_query`` says whether it looked like one.
    """

    def __init__(
        self, reason: str, *, tid: bytes | None = None, code: int = PROTOCOL_ERROR,
        is_query: bool = False,
    ) -> None:  # fmt: skip
        self.reason = reason
        self.tid = tid
        self.code = code
        self.is_query = is_query
        super().__init__(f"bad KRPC message: {reason}")


@frozen
class NodeInfo(Record):
    """A node's contact: its 20-byte id and UDP address."""

    id: bytes
    addr: Addr


@frozen
class Ping(Record):
    """``ping``: are you there?"""

    tid: bytes
    id: bytes
    read_only: bool = False  # BEP 43 ``ro``: the asker answers no queries; keep it out of tables


@frozen
class FindNode(Record):
    """``find_node``: the nodes you know closest to ``target``."""

    tid: bytes
    id: bytes
    target: bytes
    read_only: bool = False


@frozen
class GetPeers(Record):
    """``get_peers``: peers of ``info_hash``, or else the closest nodes; and a token."""

    tid: bytes
    id: bytes
    info_hash: bytes
    read_only: bool = False


@frozen
class AnnouncePeer(Record):
    """``announce_peer``: store me as a peer of ``info_hash`` (on ``port``, or on the
    datagram's source port when ``implied_port``)."""

    tid: bytes
    id: bytes
    info_hash: bytes
    port: int
    token: bytes
    implied_port: bool = False
    read_only: bool = False


@frozen
class Response(Record):
    """Any reply (``y=r``); a reply does not name its query, so every key is optional but ``id``."""

    tid: bytes
    id: bytes
    nodes: tuple[NodeInfo, ...] = ()
    nodes6: tuple[NodeInfo, ...] = ()
    values: tuple[Addr, ...] = ()
    token: bytes | None = None


@frozen
class Error(Record):
    """An error reply (``y=e``): a BEP 5 code (201-204) and a message."""

    tid: bytes
    code: int
    message: bytes


Query: TypeAlias = Ping | FindNode | GetPeers | AnnouncePeer
Message: TypeAlias = Query | Response | Error
Method: TypeAlias = Literal["ping", "find_node", "get_peers", "announce_peer"]


# ---- compact encodings -------------------------------------------------------------


def pack_addr(addr: Addr) -> bytes:
    """6 bytes for IPv4, 18 for IPv6: the address, then the port, big-endian."""
    host, port = addr
    return ipaddress.ip_address(host).packed + port.to_bytes(2, "big")


def unpack_addr(raw: bytes) -> Addr:
    """The inverse of :func:`pack_addr` (6 or 18 bytes)."""
    return str(ipaddress.ip_address(raw[:-2])), int.from_bytes(raw[-2:], "big")


def pack_nodes(nodes: tuple[NodeInfo, ...] | list[NodeInfo]) -> bytes:
    return b"".join(n.id + pack_addr(n.addr) for n in nodes)


def _unpack_nodes(raw: bytes, entry: int, key: str) -> tuple[NodeInfo, ...]:
    if len(raw) % entry:
        raise KrpcError(f"'{key}' is {len(raw)} bytes, not a multiple of {entry}")
    out: list[NodeInfo] = []
    for pos in range(0, min(len(raw), MAX_NODES * entry), entry):
        addr = unpack_addr(raw[pos + ID_LEN : pos + entry])
        if addr[1]:
            out.append(NodeInfo(raw[pos : pos + ID_LEN], addr))
    return tuple(out)


# ---- encoding ----------------------------------------------------------------------


def encode(msg: Message) -> bytes:
    """The datagram for ``msg``."""
    match msg:
        case Ping():
            return _query(msg, "ping", {b"id": msg.id})
        case FindNode():
            return _query(msg, "find_node", {b"id": msg.id, b"target": msg.target})
        case GetPeers():
            return _query(msg, "get_peers", {b"id": msg.id, b"info_hash": msg.info_hash})
        case AnnouncePeer():
            args: dict[bytes, bencode.Encodable] = {
                b"id": msg.id, b"info_hash": msg.info_hash, b"port": msg.port, b"token": msg.token,
            }  # fmt: skip
            if msg.implied_port:
                args[b"implied_port"] = 1
            return _query(msg, "announce_peer", args)
        case Response():
            r: dict[bytes, bencode.Encodable] = {b"id": msg.id}
            if msg.nodes:
                r[b"nodes"] = pack_nodes(msg.nodes)
            if msg.nodes6:
                r[b"nodes6"] = pack_nodes(msg.nodes6)
            if msg.values:
                r[b"values"] = [pack_addr(a) for a in msg.values]
            if msg.token is not None:
                r[b"token"] = msg.token
            return bencode.encode({b"r": r, b"t": msg.tid, b"y": b"r"})
        case Error():
            return bencode.encode({b"e": [msg.code, msg.message], b"t": msg.tid, b"y": b"e"})


def _query(msg: Query, method: Method, args: dict[bytes, bencode.Encodable]) -> bytes:
    top: dict[bytes, bencode.Encodable] = {b"a": args, b"q": method, b"t": msg.tid, b"y": b"q"}
    if msg.read_only:
        top[b"ro"] = 1
    return bencode.encode(top)


# ---- decoding ----------------------------------------------------------------------


def decode(data: bytes) -> Message:
    """The message in one datagram, or :class:`KrpcError`."""
    try:
        top = bencode.decode(data, max_size=MAX_DATAGRAM, max_depth=MAX_DEPTH)
    except BencodeError as exc:
        raise KrpcError(exc.reason) from None
    if not isinstance(top, dict):
        raise KrpcError("not a dictionary")
    tid = top.get(b"t")
    if not isinstance(tid, bytes) or not 1 <= len(tid) <= MAX_TID:
        raise KrpcError(f"transaction id is not a string of 1 to {MAX_TID} bytes")
    kind = top.get(b"y")
    if kind == b"q":
        return _decode_query(top, tid)
    if kind == b"r":
        body = top.get(b"r")
        if not isinstance(body, dict):
            raise KrpcError("'r' is not a dictionary", tid=tid)
        return _decode_response(body, tid)
    if kind == b"e":
        err = top.get(b"e")
        if (
            not isinstance(err, list) or len(err) != 2 or not isinstance(err[0], int)
            or not isinstance(err[1], bytes)
        ):  # fmt: skip
            raise KrpcError("'e' is not a list of a code and a message", tid=tid)
        code, text = err[0], err[1]
        assert isinstance(code, int) and isinstance(text, bytes)
        if not 0 <= code < 1000:
            raise KrpcError(f"error code {code} is out of range", tid=tid)
        return Error(tid, code, text[:MAX_ERROR_TEXT])
    raise KrpcError("'y' is not 'q', 'r' or 'e'", tid=tid)


def _id(d: dict[bytes, bencode.BValue], key: bytes, tid: bytes, query: bool = False) -> bytes:
    value = d.get(key)
    if not isinstance(value, bytes) or len(value) != ID_LEN:
        raise KrpcError(f"'{key.decode()}' is not a 20-byte string", tid=tid, is_query=query)
    return value


def _decode_query(top: dict[bytes, bencode.BValue], tid: bytes) -> Query:
    method = top.get(b"q")
    args = top.get(b"a")
    if not isinstance(method, bytes):
        raise KrpcError("'q' is not a string", tid=tid, is_query=True)
    if not isinstance(args, dict):
        raise KrpcError("'a' is not a dictionary", tid=tid, is_query=True)
    node_id = _id(args, b"id", tid, True)
    ro = top.get(b"ro", 0) == 1  # BEP 43; any other value is ignored, as libtorrent does
    if method == b"ping":
        return Ping(tid, node_id, ro)
    if method == b"find_node":
        return FindNode(tid, node_id, _id(args, b"target", tid, True), ro)
    if method == b"get_peers":
        return GetPeers(tid, node_id, _id(args, b"info_hash", tid, True), ro)
    if method == b"announce_peer":
        info_hash = _id(args, b"info_hash", tid, True)
        port = args.get(b"port")
        implied = args.get(b"implied_port", 0)
        token = args.get(b"token")
        if not isinstance(implied, int) or implied not in (0, 1):
            raise KrpcError("'implied_port' is not 0 or 1", tid=tid, is_query=True)
        if port is None and implied:
            port = 0  # the datagram's source port is the one that counts
        elif not isinstance(port, int) or not 0 <= port <= 65535:
            raise KrpcError("'port' is not an integer 0..65535", tid=tid, is_query=True)
        if not isinstance(token, bytes) or not 1 <= len(token) <= MAX_TOKEN:
            raise KrpcError(f"'token' is not a string of 1 to {MAX_TOKEN} bytes", tid=tid,
                            is_query=True)  # fmt: skip
        return AnnouncePeer(tid, node_id, info_hash, port, token, bool(implied), ro)
    name = method[:40].decode("ascii", "replace")
    raise KrpcError(f"unknown method {name!r}", tid=tid, code=METHOD_UNKNOWN, is_query=True)


def _decode_response(body: dict[bytes, bencode.BValue], tid: bytes) -> Response:
    node_id = _id(body, b"id", tid)
    nodes: tuple[NodeInfo, ...] = ()
    nodes6: tuple[NodeInfo, ...] = ()
    if b"nodes" in body:
        raw = body[b"nodes"]
        if not isinstance(raw, bytes):
            raise KrpcError("'nodes' is not a string", tid=tid)
        nodes = _unpack_nodes(raw, 26, "nodes")
    if b"nodes6" in body:
        raw = body[b"nodes6"]
        if not isinstance(raw, bytes):
            raise KrpcError("'nodes6' is not a string", tid=tid)
        nodes6 = _unpack_nodes(raw, 38, "nodes6")
    values: list[Addr] = []
    if b"values" in body:
        raw_values = body[b"values"]
        if not isinstance(raw_values, list):
            raise KrpcError("'values' is not a list", tid=tid)
        for v in raw_values[:MAX_VALUES]:
            if not isinstance(v, bytes) or len(v) not in (6, 18):
                raise KrpcError("a 'values' entry is not a 6- or 18-byte compact peer", tid=tid)
            addr = unpack_addr(v)
            if addr[1]:
                values.append(addr)
    token = body.get(b"token")
    if token is not None and (not isinstance(token, bytes) or len(token) > MAX_TOKEN):
        raise KrpcError(f"'token' is not a string of at most {MAX_TOKEN} bytes", tid=tid)
    return Response(tid, node_id, nodes, nodes6, tuple(values), token)
