"""BEP 10 in a worker: metadata served to peers (BEP 9), peers exchanged (BEP 11).

A worker sets the BEP 10 bit in its handshake.  On a connection where the peer
set it too, :meth:`WorkerExtensions.attach` sends our extended handshake (``m``
with ut_metadata and, unless the torrent is private (BEP 27), ut_pex; ``v``,
``p`` when we listen, ``reqq``, ``metadata_size``, ``yourip``: the peer's
address as we see it, which tells a peer behind NAT its public address) and puts an
:class:`~mptorrent.proto.ext.ExtensionRouter` on the connection, whose events the
worker hands to :meth:`WorkerExtensions.handle`:

* a metadata request is answered from the raw info dictionary
  (``Metainfo.info_bytes``) within a per-peer :class:`RequestBudget`, and
  rejected beyond it: a small request earns a 16 KiB reply, so a flood is cut
  down to ``METADATA_RATE`` replies a second;
* peers a peer tells us about by ut_pex become a :class:`~mptorrent.messages.PexLearned`
  report: the coordinator decides whom to dial, the worker never dials them on
  its own.  A peer's ut_pex messages past ``PEX_BURST`` in quick succession are
  ignored (an honest client sends one a minute);
* :meth:`WorkerExtensions.send_pex` sends each ut_pex peer, at most once a
  minute (``PexState``), the changes in the peers we are connected to: this
  worker's own, plus :attr:`WorkerExtensions.swarm`, the other workers'
  connections as the coordinator last sent them (``SwarmPeers``, every few
  seconds while fetching).  A seed's workers have only their own (the seeder
  hears of no peer's pieces, so it does not know who is connected).

All of this happens at handshake time and on Extended messages only: nothing
here runs per block.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import TYPE_CHECKING, Final

from mptorrent import __version__
from mptorrent.messages import PeerAddr, PexLearned
from mptorrent.netio.peer import ACTIVE, PeerSession
from mptorrent.policy.budget import RequestBudget
from mptorrent.proto import wire
from mptorrent.proto.ext import ExtendedHandshake, ExtensionHandler, ExtensionRouter
from mptorrent.proto.metainfo import Metainfo
from mptorrent.record import Record, mutable
from mptorrent.worker.upload import MAX_QUEUED_REQUESTS

if TYPE_CHECKING:
    from mptorrent.proto.ext.ut_pex import PexFlags, PexState

# ut_metadata and ut_pex are not imported with this module, which the coordinator imports
# before its first tracker request, but on a worker's first BEP 10 peer (between its
# handshake and its bitfield report: 1-3 ms, far more under load), or, with several
# workers, by preload(), which the coordinator calls while that request is under way,
# before it forks them: once instead of once per worker. With one worker the cost is the
# same either way, and the coordinator's start-up stays shorter.

__all__ = ["CLIENT", "PEX_BURST", "PEX_RATE", "WorkerExtensions", "preload"]

CLIENT: Final = f"mptorrent/{__version__}"
# Incoming ut_pex: three messages at once, then one per 20 s (BEP 11 allows one a minute).
PEX_BURST: Final = 3.0
PEX_RATE: Final = 1 / 20


def preload() -> None:
    """Import the extensions a worker's BEP 10 peers use, in the process that forks the
    workers (not in a thread: see ``netio.net.prepare``)."""
    from mptorrent.proto.ext import ut_metadata, ut_pex  # noqa: F401


def _seen_address(host: str) -> IPv4Address | IPv6Address | None:
    """``host`` as BEP 10's ``yourip``: an IPv4 peer on a dual-stack socket
    (``::ffff:a.b.c.d``) gets its 4 bytes; None if ``host`` is not an IP literal."""
    try:
        addr = ip_address(host.split("%", 1)[0])  # a scoped v6 address drops its zone
    except ValueError:
        return None
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@mutable
class _PeerExt(Record):
    """BEP 10 state of one connection."""

    router: ExtensionRouter
    metadata_budget: RequestBudget
    pex_budget: RequestBudget
    pex: PexState | None = None  # set once the peer says it speaks ut_pex
    listen_port: int | None = None  # the peer's ``p``: how an incoming peer can be dialled


class WorkerExtensions:
    """The BEP 10 side of one worker's connections (see the module docstring)."""

    def __init__(self, meta: Metainfo, *, worker_id: int, listen_port: int | None) -> None:
        self.worker_id = worker_id
        self.info: bytes | None = meta.info_bytes or None
        self.private = meta.private
        self.listen_port = listen_port
        self.swarm: tuple[PeerAddr, ...] = ()  # the whole client's peers (SwarmPeers)
        self._peers: dict[PeerSession, _PeerExt] = {}

    # -- connections --------------------------------------------------------

    def attach(self, p: PeerSession) -> None:
        """The peer's handshake is in: if both set the BEP 10 bit, route its Extended
        messages through a router of ours and queue our extended handshake."""
        if not p.wire.extensions_enabled:
            return
        from mptorrent.proto.ext.ut_metadata import UtMetadata
        from mptorrent.proto.ext.ut_pex import UtPex

        handlers: list[ExtensionHandler] = [UtMetadata()]
        if not self.private:  # BEP 27: no PEX on private torrents
            handlers.append(UtPex())
        router = ExtensionRouter(
            handlers,
            client=CLIENT,
            port=self.listen_port,
            metadata_size=len(self.info) if self.info else None,
            reqq=MAX_QUEUED_REQUESTS,
            yourip=_seen_address(p.addr.host),
        )
        self._peers[p] = _PeerExt(router, RequestBudget(), RequestBudget(PEX_RATE, PEX_BURST))
        p.wire.extensions = router
        p.queue(p.wire.send(router.handshake()))

    def forget(self, p: PeerSession) -> None:
        self._peers.pop(p, None)

    def handle(self, p: PeerSession, ev: wire.Event, now: float) -> PexLearned | None:
        """One event of ``p``'s connection that the worker loop does not handle itself."""
        st = self._peers.get(p)
        if st is None:
            return None
        # loaded by attach() already, which made ``st``
        from mptorrent.proto.ext import ut_pex
        from mptorrent.proto.ext.ut_metadata import MetadataRequested
        from mptorrent.proto.ext.ut_pex import PexPeers, PexState

        if isinstance(ev, MetadataRequested):
            self._serve_metadata(p, st, ev.piece, now)
        elif isinstance(ev, PexPeers):
            if ev.added and st.pex_budget.allow(now):
                return PexLearned(
                    self.worker_id,
                    self._advertised(p, st) or p.addr,
                    tuple(peer.addr for peer in ev.added),
                    tuple(int(peer.flags) for peer in ev.added),
                )
        elif isinstance(ev, ExtendedHandshake):
            st.listen_port = ev.port
            if ev.reqq is not None:
                p.window.limit(ev.reqq)  # never more requests in flight than it queues
            if st.pex is None and st.router.peer_supports(ut_pex.NAME) and not self.private:
                st.pex = PexState(exclude=self._advertised(p, st))
        # Metadata pieces and rejects: we have the metadata and ask for none.
        return None

    def _serve_metadata(self, p: PeerSession, st: _PeerExt, piece: int, now: float) -> None:
        from mptorrent.proto.ext import ut_metadata

        if not st.router.peer_supports(ut_metadata.NAME):
            return  # it asked without saying where answers go: BEP 9 has no reply for it
        if st.metadata_budget.allow(now):
            payload = ut_metadata.serve_request(self.info, piece)
        else:
            payload = ut_metadata.encode_reject(piece)
        p.queue(p.wire.send(st.router.message(ut_metadata.NAME, payload)))

    # -- PEX, sending -------------------------------------------------------

    @staticmethod
    def _advertised(p: PeerSession, st: _PeerExt) -> PeerAddr | None:
        """Where others can dial ``p``: the address we dialled, or an incoming peer's
        address with the listen port it told us; None if it did not say."""
        if not p.inbound:
            return p.addr
        if st.listen_port is not None:
            return PeerAddr(p.addr.host, st.listen_port)
        return None

    def send_pex(self, peers: Iterable[PeerSession], now: float) -> None:
        """Queue a ut_pex message to each peer that is due one and has news."""
        due = [(p, st) for p, st in self._peers.items() if st.pex is not None and st.pex.due(now)]
        if not due:
            return
        from mptorrent.proto.ext import ut_pex
        from mptorrent.proto.ext.ut_pex import PexFlags

        connected: dict[PeerAddr, PexFlags] = {}
        for q in peers:
            st = self._peers.get(q)
            if q.state != ACTIVE or (st is None and q.inbound):
                continue
            addr = q.addr if st is None else self._advertised(q, st)
            if addr is None:
                continue
            flags = PexFlags(0)
            if q.wire.peer_is_seed:
                flags |= PexFlags.SEED
            if not q.inbound:
                flags |= PexFlags.REACHABLE  # we reached it
            connected[addr] = flags
        for addr in self.swarm:
            connected.setdefault(addr, PexFlags.REACHABLE)  # a worker of ours dialled it
        for p, st in due:
            assert st.pex is not None
            if p.state != ACTIVE:
                continue
            payload = st.pex.update(connected, now)
            if payload is not None:
                p.queue(p.wire.send(st.router.message(ut_pex.NAME, payload)))
