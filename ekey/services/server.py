# -*- test-case-name: tests.test_server -*-
"""
The EGD server: L{EGDServerFactory} serves an L{EntropyPool} on any
listening endpoint (TCP, Unix, TLS).

What a client is served, when, and when it waits is decided by its
L{ekey.core.egdsession.EGDServerSession}; L{EGDServerProtocol} only feeds it
bytes and time and carries out what it asks.  Each connection is a push
producer for its transport: when the client stops reading, the session
stops taking bytes from the pool and stops reading commands, so a slow
client costs bounded memory and holds no entropy hostage.  A client that
breaks the protocol is disconnected with a log line naming it; nobody else
notices.

Clients are known by identity (L{ClientIdentity}): a Unix-socket client by
its user (C{SO_PEERCRED}), a TLS client by its certificate's fingerprint,
else by its address.  Fair shares of the pool and rate limits are per
identity, so that opening many connections does not multiply a client's
part.  Other limits: a cap on the clients at once, an idle time-out for
connections that ask for nothing, and a cap on the bytes a connection may
have asked for and not yet received.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Set, Tuple

from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import IHandshakeListener, IPushProducer, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from ekey.core.egdsession import (
    ACTIVE_WINDOW,
    DEFAULT_MAX_PENDING,
    MAX_QUEUED_COMMANDS,
    CloseReason,
    EGDCounters,
    EGDServerSession,
    SessionState,
)
from ekey.core.pool import EntropyPool
from ekey.core.ratelimit import RateLimiter
from ekey.core.status import ClientStatus, ListenerStatus
from ekey.services._reactor import default
from ekey.services.peers import describePeer, peerCredentials, sendSmallWritesAtOnce

__all__ = ["EGDServerFactory", "EGDServerProtocol", "ClientIdentity", "peerIdentity",
           "certificateIdentity", "ACTIVE_WINDOW", "DEFAULT_MAX_PENDING", "MAX_QUEUED_COMMANDS"]


@dataclass(frozen=True)
class ClientIdentity:
    """
    Who an EGD client is, for its fair share and its rate limit.

    @ivar key: what its share and bucket are keyed by: C{uid:N} for a Unix
        socket (C{SO_PEERCRED}), C{sha256:HEX} for a TLS client certificate
        (its fingerprint, never a name the certificate merely claims),
        else C{addr:HOST}.
    @ivar display: the same, shown to operators (a certificate with its
        common name and the start of its fingerprint).
    """

    key: str
    display: str


def peerIdentity(transport) -> ClientIdentity:
    """
    @return: the L{ClientIdentity} of the peer of C{transport} before any
        TLS handshake: its Unix user, else its address without the port.
    """
    credentials = peerCredentials(transport)
    if credentials is not None:
        key = f"uid:{credentials.uid}"
        return ClientIdentity(key, key)
    peer = transport.getPeer()
    if isinstance(peer, UNIXAddress):
        return ClientIdentity("unix:?", "unix:?")
    key = "addr:" + str(getattr(peer, "host", None) or peer)
    return ClientIdentity(key, key)


def certificateIdentity(certificate) -> ClientIdentity:
    """
    @param certificate: a client's verified certificate (pyOpenSSL's or
        cryptography's).
    @return: its L{ClientIdentity}: keyed by its SHA-256 fingerprint, shown
        with every common name it holds, in order (a second CN is shown,
        never taken as who the client is).
    """
    if hasattr(certificate, "to_cryptography"):
        certificate = certificate.to_cryptography()
    fingerprint = hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()
    names = [str(attribute.value) for attribute
             in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    shown = "+".join(names) if names else "(no CN)"
    return ClientIdentity("sha256:" + fingerprint, f"{shown} sha256:{fingerprint[:16]}")


@implementer(IPushProducer, IHandshakeListener)
class EGDServerProtocol(Protocol):
    """
    One EGD client: carries out what its L{EGDServerSession} asks (the
    L{ekey.core.egdsession.SessionOutput}), and runs its one timer.

    @ivar session: the L{EGDServerSession} (C{None} for a refused client).
    @ivar identity: who the client is, for listings (see L{ClientIdentity}).
    """

    log = Logger()

    def __init__(self, factory: "EGDServerFactory"):
        self.factory = factory
        self.session: Optional[EGDServerSession] = None
        self.peer = "?"
        self.identity: Optional[str] = None
        self.connectedAt = 0.0
        self._timer = None
        self._timerAt = 0.0
        # Over TLS, replies written in one reactor turn go out as one write
        # (one TLS record) instead of one record each.
        self._outbox: Optional[list] = None
        self._coalesce = False

    @property
    def bytesServed(self) -> int:
        """
        Entropy bytes sent to this client.
        """
        return self.session.counters.bytesServed if self.session else 0

    @property
    def requests(self):
        """
        Commands received from this client, by name.
        """
        return self.session.counters.requests if self.session else EGDCounters().requests

    def status(self, listener: str) -> ClientStatus:
        """
        @param listener: the description of the listener it came in on.
        @return: this client, now.
        """
        return ClientStatus(
            listener=listener, peer=self.peer, identity=self.identity,
            bytesServed=self.bytesServed, requests=sum(self.requests.values()),
            connectedAt=self.connectedAt)

    def connectionMade(self):
        factory = self.factory
        self._coalesce = ISSLTransport.providedBy(self.transport)
        sendSmallWritesAtOnce(self.transport)
        self.peer = describePeer(self.transport)
        self.connectedAt = now = factory.clock.seconds()
        if not factory.admit(self):
            self.transport.abortConnection()
            return
        identity = peerIdentity(self.transport)
        self.identity = identity.display
        self.session = EGDServerSession(
            self, factory.pool, identity.key, now, limiter=factory.limiter,
            idleTimeout=factory.idleTimeout, maxPendingBytes=factory.maxPendingBytes,
            pid=factory.pid, totals=factory.totals)
        self.transport.registerProducer(self, True)
        factory.clientConnected(self)
        self._schedule()

    def handshakeCompleted(self):
        certificate = self.transport.getPeerCertificate()
        if certificate is not None and self.session is not None:
            identity = certificateIdentity(certificate)
            self.identity = identity.display
            self.session.setClientKey(identity.key)
            self.log.info("EGD client {peer} is {identity}", peer=self.peer,
                          identity=self.identity)

    def dataReceived(self, data):
        if self.session is not None:
            self.session.receiveData(data, self.factory.clock.seconds())
            self._schedule()

    def connectionLost(self, reason):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.session is not None:
            self.session.close(self.factory.clock.seconds())
            self.factory.clientDisconnected(self)

    # IPushProducer: the transport tells us when the client stops reading.

    def pauseProducing(self):
        self.session.pause()

    def resumeProducing(self):
        self.session.resume(self.factory.clock.seconds())
        self._schedule()

    def stopProducing(self):
        self.session.close(self.factory.clock.seconds())

    # The session's timer: one call, at the earliest deadline it names.

    def _schedule(self):
        deadline = self.session.deadline
        timer = self._timer
        if deadline is None or (timer is not None and timer.active()
                                and self._timerAt <= deadline):
            return
        if timer is not None and timer.active():
            timer.cancel()
        clock = self.factory.clock
        self._timerAt = deadline
        self._timer = clock.callLater(max(0.0, deadline - clock.seconds()), self.wake)

    # SessionOutput ----------------------------------------------------------------

    def wake(self):
        self.session.tick(self.factory.clock.seconds())
        self._schedule()

    def writeReply(self, data: bytes):
        if not self._coalesce:
            self.transport.write(data)
            return
        if self._outbox is None:
            self._outbox = []
            self.factory.clock.callLater(0, self._flushOutbox)
        self._outbox.append(data)

    def _flushOutbox(self):
        held, self._outbox = self._outbox, None
        if held and self.session.state is not SessionState.CLOSED:
            self.transport.write(b"".join(held))

    def setReading(self, reading: bool):
        if reading:
            self.transport.resumeProducing()
        else:
            self.transport.pauseProducing()

    def closeSession(self, reason: CloseReason, detail: str):
        if reason is CloseReason.IDLE:
            self.factory.idleClosed += 1
            self.log.info("EGD client {peer} {detail}; closing", peer=self.peer, detail=detail)
            self.transport.abortConnection()
        else:
            self.factory.protocolErrors += 1
            self.log.warn("EGD client {peer} broke the protocol ({reason}); disconnecting",
                          peer=self.peer, reason=detail)
            self.transport.loseConnection()

    def entropyOffered(self):
        self.log.info("EGD client {peer} offered entropy (0x03); it is discarded: "
                      "only verified sources feed the pool", peer=self.peer)


class EGDServerFactory(Factory):
    """
    Serve EGD from a pool.

    @ivar clients: the connected L{EGDServerProtocol}s.
    @ivar requests: commands received from all clients, by name.
    @ivar refused: connections refused because of C{maxClients}.
    @ivar idleClosed: connections closed for sending no request.
    """

    protocol = EGDServerProtocol
    log = Logger()
    noisy = False

    def __init__(self, pool: EntropyPool, pid=None, name: str = "egd", clock=None,
                 limiter: Optional[RateLimiter] = None, maxClients: int = 0,
                 idleTimeout: float = 0, maxPendingBytes: int = DEFAULT_MAX_PENDING):
        """
        @param pool: where entropy comes from.
        @param clock: an L{IReactorTime} for connection times, rate limits
            and time-outs (default the reactor).
        @param pid: what 0x04 answers (default this process's id at the
            time of the request, which is right after twistd forks).
        @param name: the listener's name, for logs and statistics.
        @param limiter: the per-identity L{RateLimiter} (default none),
            keyed by L{ClientIdentity.key}.
        @param maxClients: the most clients at once (0: no limit); more are
            refused.
        @param idleTimeout: seconds a client may stay connected without a
            request (0: for ever).  A client waiting for a blocking read is
            not idle.
        @param maxPendingBytes: bytes a client may have asked for and not
            yet received before the server stops reading its requests.
        """
        self.clock = default(clock)
        self.pool = pool
        self.pid = pid
        self.name = name
        self.limiter = limiter or RateLimiter(0, 0)
        self.maxClients = maxClients
        self.idleTimeout = idleTimeout
        self.maxPendingBytes = maxPendingBytes
        self.clients: Set[EGDServerProtocol] = set()
        self.totals = EGDCounters()
        self.connections = 0
        self.protocolErrors = 0
        self.refused = 0
        self.idleClosed = 0
        self._refusalLogged = False

    @property
    def requests(self):
        """
        Commands received from all clients, by name.
        """
        return self.totals.requests

    @property
    def bytesServed(self) -> int:
        """
        Entropy bytes sent to all clients.
        """
        return self.totals.bytesServed

    def status(self, description: str) -> ListenerStatus:
        """
        @param description: the endpoint it listens on.
        @return: this listener, now.
        """
        return ListenerStatus(
            description=description, clients=len(self.clients),
            connections=self.connections, bytesServed=self.bytesServed,
            requests=tuple(sorted(self.requests.items())),
            protocolErrors=self.protocolErrors, refused=self.refused,
            idleClosed=self.idleClosed)

    def clientStatuses(self, description: str) -> Tuple[ClientStatus, ...]:
        """
        @param description: the endpoint it listens on.
        @return: its clients now, the longest connected first.
        """
        return tuple(client.status(description) for client in
                     sorted(self.clients, key=lambda client: client.connectedAt))

    def buildProtocol(self, addr):
        return self.protocol(self)

    def admit(self, client: EGDServerProtocol) -> bool:
        """
        @return: whether there is room for another client.
        """
        if self.maxClients and len(self.clients) >= self.maxClients:
            self.refused += 1
            if not self._refusalLogged:
                self._refusalLogged = True
                self.log.warn("{count} clients connected, the most allowed: refusing {peer} "
                              "and later ones until there is room", count=len(self.clients),
                              peer=client.peer)
            return False
        return True

    def clientConnected(self, client: EGDServerProtocol):
        self.connections += 1
        self.clients.add(client)

    def clientDisconnected(self, client: EGDServerProtocol):
        self.clients.discard(client)
        if self._refusalLogged and len(self.clients) < self.maxClients:
            self._refusalLogged = False
            self.log.info("Room for clients again after refusing {count} in all",
                          count=self.refused)
