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
"""

from __future__ import annotations

import os
from collections import Counter, deque
from typing import Deque, Optional, Set

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from ekey.egd import (
    Command,
    EGDServerParser,
    GetLevel,
    GetPID,
    Read,
    ReadBlocking,
    Write,
    encodeLevel,
    encodePID,
    encodeRead,
)
from ekey.frames import RemoteProtocolError
from ekey.pool import EntropyPool, PendingRead

#: Parsed commands a connection may queue behind a blocking read before it
#: stops reading from its client.
MAX_QUEUED_COMMANDS = 64


def describePeer(transport) -> str:
    """
    @return: a client's address in words, for logs.
    """
    peer = transport.getPeer()
    host = getattr(peer, "host", None)
    if host is not None:
        return f"{host}:{peer.port}"
    name = getattr(peer, "name", None)
    return f"unix:{name.decode() if isinstance(name, bytes) else name or '(unnamed)'}"


@implementer(IPushProducer)
class EGDServerProtocol(Protocol):
    """
    One EGD client.

    @ivar bytesServed: entropy bytes sent to this client.
    @ivar requests: commands received, by name.
    """

    log = Logger()

    def __init__(self, factory: "EGDServerFactory"):
        self.factory = factory
        self._parser = EGDServerParser()
        self._queue: Deque[Command] = deque()
        self._blocking: Optional[PendingRead] = None
        self._paused = False
        self._readingPaused = False
        self._closed = False
        self._writeLogged = False
        self._removePolling = None
        self.peer = "?"
        self.bytesServed = 0
        self.requests: Counter = Counter()

    def connectionMade(self):
        self.peer = describePeer(self.transport)
        self.transport.registerProducer(self, True)
        self.factory.clientConnected(self)

    def dataReceived(self, data):
        if self._closed:
            return
        try:
            self._queue.extend(self._parser.receiveData(data))
        except RemoteProtocolError as e:
            self._protocolError(str(e))
            return
        self._process()

    def connectionLost(self, reason):
        self._closed = True
        if self._blocking is not None:
            self._blocking.cancel()
            self._blocking = None
        if self._removePolling is not None:
            self._removePolling()
        self._queue.clear()
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
        if self._blocking is not None:
            self._blocking.cancel()
            self._blocking = None

    # Commands ------------------------------------------------------------------

    def _process(self):
        while self._queue and self._blocking is None and not self._paused and not self._closed:
            command = self._queue.popleft()
            name = type(command).__name__
            self.requests[name] += 1
            self.factory.requests[name] += 1
            if isinstance(command, GetLevel):
                self.transport.write(encodeLevel(self.factory.pool.level * 8))
            elif isinstance(command, Read):
                if self._removePolling is None:
                    self._removePolling = self.factory.pool.addPollingReader()
                data = self.factory.pool.take(command.n)
                self._served(len(data))
                self.transport.write(encodeRead(data))
            elif isinstance(command, ReadBlocking):
                pending = self.factory.pool.request(command.n, self._deliver)
                if pending.active:
                    self._blocking = pending
            elif isinstance(command, Write):
                if not self._writeLogged:
                    self._writeLogged = True
                    self.log.info(
                        "EGD client {peer} offered entropy (0x03); it is discarded: "
                        "only verified sources feed the pool",
                        peer=self.peer,
                    )
            elif isinstance(command, GetPID):
                self.transport.write(encodePID(self.factory.pid or os.getpid()))
        if not self._closed:
            self._setReading(not self._paused and len(self._queue) < MAX_QUEUED_COMMANDS)

    def _deliver(self, data: bytes):
        if self._closed:
            return
        self._served(len(data))
        self.transport.write(data)
        pending = self._blocking
        if pending is not None and not pending.active:
            self._blocking = None
            self._process()

    def _served(self, count: int):
        self.bytesServed += count
        self.factory.bytesServed += count

    def _setReading(self, reading: bool):
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
        if self._blocking is not None:
            self._blocking.cancel()
            self._blocking = None
        self.transport.loseConnection()


class EGDServerFactory(Factory):
    """
    Serve EGD from a pool.

    @ivar clients: the connected L{EGDServerProtocol}s.
    @ivar requests: commands received from all clients, by name.
    """

    protocol = EGDServerProtocol

    def __init__(self, pool: EntropyPool, pid=None, name: str = "egd"):
        """
        @param pool: where entropy comes from.
        @param pid: what 0x04 answers (default this process's id at the
            time of the request, which is right after twistd forks).
        @param name: the listener's name, for logs and statistics.
        """
        self.pool = pool
        self.pid = pid
        self.name = name
        self.clients: Set[EGDServerProtocol] = set()
        self.requests: Counter = Counter()
        self.bytesServed = 0
        self.connections = 0
        self.protocolErrors = 0

    def buildProtocol(self, addr):
        return self.protocol(self)

    def clientConnected(self, client: EGDServerProtocol):
        self.connections += 1
        self.clients.add(client)

    def clientDisconnected(self, client: EGDServerProtocol):
        self.clients.discard(client)
