# -*- test-case-name: tests.test_server -*-
"""
The EGD server: L{EGDServerFactory} serves an L{EntropyPool} on any
listening endpoint (TCP, Unix, TLS).

Commands are answered in order.  A blocking read (0x02) streams bytes as
they arrive and holds back the connection's later commands until it is
complete.  Each connection is a push producer for its transport: when the
client stops reading, the connection stops taking bytes from the pool and
stops reading commands, so a slow client costs bounded memory and holds no
entropy hostage.  A client that breaks the protocol is disconnected with a
log line naming it; nobody else notices.

Limits against clients that take more than their share: a per-client rate
(a token bucket keyed by certificate identity or address; a client over
its share waits, it is not disconnected), a cap on the clients at once, an
idle time-out for connections that ask for nothing, and a cap on the bytes
a connection may have asked for and not yet received.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from typing import Deque, Optional, Set

from twisted.internet.interfaces import IHandshakeListener, IPushProducer, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from ekey.core.egd import (
    Command,
    EGDServerParser,
    GetLevel,
    GetPID,
    Read,
    ReadBlocking,
    ReadBlockingRun,
    Write,
    encodeLevel,
    encodePID,
    encodeRead,
)
from ekey.core.errors import RemoteProtocolError
from ekey.services.peers import describePeer
from ekey.core.pool import EntropyPool, PendingRead
from ekey.core.ratelimit import RateLimiter

#: Parsed commands a connection may queue behind a blocking read before it
#: stops reading from its client.
MAX_QUEUED_COMMANDS = 64

#: Bytes a connection may have asked for and not yet received before the
#: server stops reading its requests.
DEFAULT_MAX_PENDING = 64 * 1024

#: Blocking reads, alone or in a run: answered alike.
_BLOCKING = (ReadBlocking, ReadBlockingRun)

#: Seconds after its last read during which a client between requests keeps
#: a share of what arrives (so that a client asking one request at a time,
#: a round trip apart, is not outrun by one with many in flight).
ACTIVE_WINDOW = 1.0


@implementer(IPushProducer, IHandshakeListener)
class EGDServerProtocol(Protocol, TimeoutMixin):
    """
    One EGD client.

    @ivar bytesServed: entropy bytes sent to this client.
    @ivar requests: commands received, by name.
    @ivar identity: over TLS with a client certificate, the certificate's
        subject common name; else C{None}.
    """

    log = Logger()

    def __init__(self, factory: "EGDServerFactory"):
        self.factory = factory
        self.callLater = factory.clock.callLater
        self._parser = EGDServerParser(coalesce=True)
        self._queue: Deque[Command] = deque()
        self._queuedBytes = 0
        self._blocking: Optional[PendingRead] = None
        self._blockingRemaining = 0
        self._rateWait = None
        self._inRequest = False
        self._processing = False
        self._paused = False
        self._readingPaused = False
        self._closed = False
        self._refused = False
        self._writeLogged = False
        self._share = None
        self._activeExpiry = None
        # Over TLS, replies written in one reactor turn go out as one write
        # (one TLS record) instead of one record each.
        self._outbox: Optional[list] = None
        self._coalesce = False
        self.peer = "?"
        self.identity: Optional[str] = None
        self._clientKey: Optional[str] = None
        self.connectedAt = 0.0
        self.bytesServed = 0
        self.requests: Counter = Counter()

    @property
    def clientKey(self) -> str:
        """
        Who this client is for its rate limit: its certificate identity if
        it has one, else its address without the port.
        """
        if self._clientKey is None:
            if self.identity is not None:
                self._clientKey = "cert:" + self.identity
            else:
                peer = self.transport.getPeer()
                self._clientKey = "addr:" + str(getattr(peer, "host", None) or self.peer)
        return self._clientKey

    def connectionMade(self):
        self._coalesce = ISSLTransport.providedBy(self.transport)
        self.peer = describePeer(self.transport)
        self.connectedAt = self.factory.clock.seconds()
        if not self.factory.admit(self):
            self._refused = True
            self._closed = True
            self.transport.abortConnection()
            return
        self.transport.registerProducer(self, True)
        self.factory.clientConnected(self)
        self.setTimeout(self.factory.idleTimeout or None)

    def handshakeCompleted(self):
        certificate = self.transport.getPeerCertificate()
        if certificate is not None:
            for key, value in certificate.get_subject().get_components():
                if key == b"CN":
                    self.identity = value.decode("utf-8", "replace")
                    self._clientKey = None
            self.log.info("EGD client {peer} is {identity}", peer=self.peer,
                          identity=self.identity)

    def dataReceived(self, data):
        if self._closed:
            return
        self.resetTimeout()
        try:
            commands = self._parser.receiveData(data)
        except RemoteProtocolError as e:
            self._protocolError(str(e))
            return
        for command in commands:
            self._queuedBytes += getattr(command, "n", 0)
        self._queue.extend(commands)
        self._process()

    def timeoutConnection(self):
        self.factory.idleClosed += 1
        self.log.info("EGD client {peer} sent no request for {seconds:g} s; closing",
                      peer=self.peer, seconds=self.factory.idleTimeout)
        self._closed = True
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self._closed = True
        self.setTimeout(None)
        self._stopBlocking()
        self._notActive()
        self._queue.clear()
        if not self._refused:
            self.factory.clientDisconnected(self)

    # IPushProducer: the transport tells us when the client stops reading.

    def pauseProducing(self):
        self._paused = True
        if self._blocking is not None:
            self._blocking.pause()
        self._setReading(False)

    def resumeProducing(self):
        self._paused = False
        if self._blocking is not None:
            self._blocking.resume()
        self._process()

    def stopProducing(self):
        self._closed = True
        self._stopBlocking()

    # Commands ------------------------------------------------------------------

    @property
    def _busy(self) -> bool:
        # Serving a blocking read: later commands wait for it.
        return self._blockingRemaining > 0

    def _process(self):
        # Not re-entrant: a blocking read completed from inside the loop
        # lets the loop carry on, rather than recursing once per pipelined
        # command.
        if self._processing:
            return
        self._processing = True
        try:
            self._processLoop()
        finally:
            self._processing = False

    def _processLoop(self):
        factory = self.factory
        while self._queue and not self._busy and not self._paused and not self._closed:
            command = self._queue.popleft()
            self._queuedBytes -= getattr(command, "n", 0)
            self._count(command)
            if isinstance(command, GetLevel):
                self._write(encodeLevel(factory.pool.level * 8))
            elif isinstance(command, Read):
                self._stillActive()
                now = factory.clock.seconds()
                allowed = min(command.n, factory.limiter.available(self.clientKey, now))
                data = factory.pool.take(max(allowed, 0), self._share)
                factory.limiter.consume(self.clientKey, len(data), now)
                self._served(len(data))
                self._write(encodeRead(data))
            elif isinstance(command, _BLOCKING):
                # A run of blocking reads is answered as one read of their
                # total: the replies are the bytes alone, back to back.
                if (not factory.pool.waiting and factory.limiter.unlimited
                        and self._serveBlockingRun(command)):
                    continue
                self._blockingRemaining = command.n
                self.setTimeout(None)
                self._continueBlocking()
            elif isinstance(command, Write):
                if not self._writeLogged:
                    self._writeLogged = True
                    self.log.info(
                        "EGD client {peer} offered entropy (0x03); it is discarded: "
                        "only verified sources feed the pool",
                        peer=self.peer,
                    )
            elif isinstance(command, GetPID):
                self._write(encodePID(factory.pid or os.getpid()))
        if not self._closed:
            self._setReading(not self._paused and len(self._queue) < MAX_QUEUED_COMMANDS
                             and self._queuedBytes + self._blockingRemaining
                             < factory.maxPendingBytes)

    def _count(self, command: Command) -> None:
        if type(command) is ReadBlockingRun:
            name, count = "ReadBlocking", command.count
        else:
            name, count = type(command).__name__, 1
        self.requests[name] += count
        self.factory.requests[name] += count

    def _serveBlockingRun(self, first) -> bool:
        """
        The fast path for pipelined blocking reads when nobody is waiting
        and there is no rate limit: serve C{first} and the blocking reads
        queued right behind it, as many as the pool can answer in full now,
        with one take and one write.

        @return: whether C{first} was served (not when the pool cannot
            answer it in full; it then takes the usual path).
        """
        self._stillActive()
        pool = self.factory.pool
        available = pool.availableTo(self._share)
        total = first.n
        if total > available:
            return False
        queue = self._queue
        while queue:
            following = queue[0]
            if type(following) not in _BLOCKING or total + following.n > available:
                break
            queue.popleft()
            self._count(following)
            total += following.n
        self._queuedBytes -= total - first.n
        data = pool.take(total, self._share)
        self._served(len(data))
        self._write(data)
        return True

    def _continueBlocking(self):
        """
        Ask the pool for the rest of the blocking read, as much as this
        client's rate limit allows now; when it allows nothing, wait for its
        bucket to refill.
        """
        factory = self.factory
        while self._blockingRemaining > 0 and not self._closed:
            now = factory.clock.seconds()
            allowed = factory.limiter.available(self.clientKey, now)
            if allowed <= 0:
                delay = factory.limiter.wait(self.clientKey, self._blockingRemaining, now)
                self._rateWait = factory.clock.callLater(delay, self._rateWaitOver)
                return
            wanted = min(self._blockingRemaining, allowed)
            if not factory.pool.waiting:
                # Nobody else is waiting: take what there is at once (what a
                # turn would give), without queueing a request.
                data = factory.pool.take(wanted, self._share)
                if data:
                    self._inRequest = True
                    try:
                        self._deliver(data)
                    finally:
                        self._inRequest = False
                    continue
            self._inRequest = True
            try:
                pending = factory.pool.request(wanted, self._deliver, share=self._share)
            finally:
                self._inRequest = False
            if pending.active:
                self._blocking = pending
                if self._paused:
                    pending.pause()
                return
        self._blockingDone()

    def _rateWaitOver(self):
        self._rateWait = None
        self._continueBlocking()

    def _blockingDone(self):
        if self._blockingRemaining == 0 and not self._closed:
            self.setTimeout(self.factory.idleTimeout or None)
            self._stillActive()
            self._process()

    def _stillActive(self):
        """
        This client just read: for L{ACTIVE_WINDOW} seconds, while it is not
        waiting, it keeps a share of what arrives (the pool's reserve for
        readers between requests).
        """
        if self._share is None:
            self._share = self.factory.pool.addShare()
        if self._activeExpiry is not None and self._activeExpiry.active():
            self._activeExpiry.reset(ACTIVE_WINDOW)
        else:
            self._activeExpiry = self.factory.clock.callLater(ACTIVE_WINDOW,
                                                              self._activeWindowOver)

    def _activeWindowOver(self):
        self._activeExpiry = None
        if self._busy and not self._closed:
            # Still waiting for a blocking read (a long run of them takes
            # seconds from a key): still active.
            self._stillActive()
        else:
            self._notActive()

    def _notActive(self):
        if self._activeExpiry is not None and self._activeExpiry.active():
            self._activeExpiry.cancel()
        self._activeExpiry = None
        if self._share is not None:
            share, self._share = self._share, None
            share.remove()

    def _deliver(self, data: bytes):
        if self._closed:
            return
        self._served(len(data))
        self._blockingRemaining -= len(data)
        self.factory.limiter.consume(self.clientKey, len(data), self.factory.clock.seconds())
        self._write(data)
        if self._inRequest:
            return
        pending = self._blocking
        if pending is not None and not pending.active:
            self._blocking = None
            self._continueBlocking()

    def _stopBlocking(self):
        if self._blocking is not None:
            self._blocking.cancel()
            self._blocking = None
        if self._rateWait is not None and self._rateWait.active():
            self._rateWait.cancel()
        self._rateWait = None

    def _write(self, data: bytes):
        if not self._coalesce:
            self.transport.write(data)
            return
        if self._outbox is None:
            self._outbox = []
            self.factory.clock.callLater(0, self._flushOutbox)
        self._outbox.append(data)

    def _flushOutbox(self):
        held, self._outbox = self._outbox, None
        if held and not self._closed:
            self.transport.write(b"".join(held))

    def _served(self, count: int):
        self.bytesServed += count
        self.factory.bytesServed += count

    def _setReading(self, reading: bool):
        if self.transport is None:
            return
        if reading and self._readingPaused:
            self._readingPaused = False
            self.transport.resumeProducing()
        elif not reading and not self._readingPaused:
            self._readingPaused = True
            self.transport.pauseProducing()

    def _protocolError(self, reason: str):
        self.factory.protocolErrors += 1
        self.log.warn("EGD client {peer} broke the protocol ({reason}); disconnecting",
                      peer=self.peer, reason=reason)
        self._closed = True
        self._stopBlocking()
        self.transport.loseConnection()


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
        @param limiter: the per-client L{RateLimiter} (default none).
        @param maxClients: the most clients at once (0: no limit); more are
            refused.
        @param idleTimeout: seconds a client may stay connected without a
            request (0: for ever).  A client waiting for a blocking read is
            not idle.
        @param maxPendingBytes: bytes a client may have asked for and not
            yet received before the server stops reading its requests.
        """
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.pool = pool
        self.pid = pid
        self.name = name
        self.limiter = limiter or RateLimiter(0, 0)
        self.maxClients = maxClients
        self.idleTimeout = idleTimeout
        self.maxPendingBytes = maxPendingBytes
        self.clients: Set[EGDServerProtocol] = set()
        self.requests: Counter = Counter()
        self.bytesServed = 0
        self.connections = 0
        self.protocolErrors = 0
        self.refused = 0
        self.idleClosed = 0
        self._refusalLogged = False

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
