# -*- test-case-name: tests.test_limits -*-
"""
Limits that are on by default: a TLS handshake time-out on every TLS
listener, and one cap on client connections over all listeners, derived
from the file-descriptor limit.

L{ConnectionLimiter.wrap} wraps a listener's factory.  Every connection
it builds is counted; when the count goes over the cap, the oldest
connection that never became I{active} is closed: first those that never
completed a TLS handshake (or, on a plain listener, never sent a byte),
then those that completed one but never sent a byte after it.  A
connection becomes active on its first byte after the handshake, or when
its protocol says so through L{markActive}.  An active connection is never
closed for the cap, however long it stays idle: QEMU's C{rng-egd} keeps
one connection open and asks only when the guest needs bytes.

The cap leaves a reserve of descriptors (L{reserveFor}) below
C{RLIMIT_NOFILE}, so that keys, upstreams, the control socket and the
daemon's files always get one.
"""

from __future__ import annotations

import resource
from collections import OrderedDict
from typing import Optional

from twisted.internet.interfaces import IHandshakeListener, ISSLTransport
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import implementer

from ekey.services._reactor import default

#: Descriptors always kept out of the client cap, at the least.
MIN_RESERVE = 64


def reserveFor(limit: int) -> int:
    """
    @param limit: the file-descriptor limit.
    @return: descriptors to keep for everything but clients: 64, or a
        tenth of the limit if that is more.
    """
    return max(MIN_RESERVE, limit // 10)


def defaultMaxConnections(limit: Optional[int] = None) -> int:
    """
    The default cap on client connections over all listeners.

    @param limit: the file-descriptor limit; the soft C{RLIMIT_NOFILE} if
        C{None}.
    @return: the limit less its reserve, and at least 1.
    """
    if limit is None:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if limit == resource.RLIM_INFINITY:
            limit = 1 << 20
    return max(1, limit - reserveFor(limit))


def markActive(transport) -> None:
    """
    Tell the limiter that a connection did something a client does (a
    complete request): it is no longer among the first to be closed when
    connections run short.  A protocol calls this with its own
    C{transport}; on a transport that is not limited it does nothing.
    """
    mark = getattr(transport, "markActive", None)
    if mark is not None:
        mark()


@implementer(IHandshakeListener)
class LimitedProtocol(ProtocolWrapper):
    """
    One counted connection: times its TLS handshake and notes when it
    becomes active.

    @ivar handshaken: whether the TLS handshake completed (C{True} at once
        on a plain connection).
    @ivar active: whether the client sent a byte after the handshake.
    """

    factory: "LimitedFactory"

    def __init__(self, factory, wrappedProtocol):
        ProtocolWrapper.__init__(self, factory, wrappedProtocol)
        self.handshaken = False
        self.active = False
        self._timer = None

    def makeConnection(self, transport):
        ProtocolWrapper.makeConnection(self, transport)
        limiter = self.factory.limiter
        if ISSLTransport.providedBy(transport):
            self._timer = limiter.reactor.callLater(limiter.handshakeTimeout, self._timedOut)
        else:
            self.handshaken = True
        limiter.opened(self)

    def _timedOut(self):
        self._timer = None
        self.factory.limiter.log.info(
            "Closing {peer}: no TLS handshake within {timeout:g} seconds",
            peer=self.getPeer(), timeout=self.factory.limiter.handshakeTimeout)
        self.factory.limiter.timedOut += 1
        self.abortConnection()

    def _cancelTimer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def handshakeCompleted(self):
        """
        The TLS handshake completed: stop its timer and tell the wrapped
        protocol, if it listens.
        """
        self._cancelTimer()
        self.handshaken = True
        self.factory.limiter.handshaken(self)
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()

    def markActive(self):
        """
        Note that the client did what a client does; see L{markActive}.
        """
        if not self.active and self.handshaken:
            self.active = True
            self.factory.limiter.activated(self)

    def dataReceived(self, data):
        self.markActive()
        ProtocolWrapper.dataReceived(self, data)

    def connectionLost(self, reason):
        self._cancelTimer()
        self.factory.limiter.closed(self)
        ProtocolWrapper.connectionLost(self, reason)


class LimitedFactory(WrappingFactory):
    """
    A listener's factory, with every connection counted by a
    L{ConnectionLimiter}.
    """

    protocol = LimitedProtocol
    noisy = False

    def __init__(self, wrappedFactory, limiter: "ConnectionLimiter"):
        WrappingFactory.__init__(self, wrappedFactory)
        self.limiter = limiter

    def buildProtocol(self, addr):
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        return self.protocol(self, inner)


class ConnectionLimiter:
    """
    Count client connections over every listener it wraps, time TLS
    handshakes, and close the oldest never-active connection when there are
    more than C{maxConnections}.

    @ivar maxConnections: the cap.
    @ivar handshakeTimeout: seconds a TLS client has to complete its
        handshake.
    @ivar count: connections open and not being closed.
    @ivar evicted: connections closed for the cap.
    @ivar timedOut: connections closed for a slow handshake.
    """

    log = Logger()

    def __init__(self, maxConnections: Optional[int] = None, handshakeTimeout: float = 10.0,
                 reactor=None):
        """
        @param maxConnections: the cap; L{defaultMaxConnections} if C{None}.
        @raise ValueError: for a cap below 1 or a time-out not above 0.
        """
        if maxConnections is None:
            maxConnections = defaultMaxConnections()
        if maxConnections < 1:
            raise ValueError("the connection cap must be at least 1")
        if not handshakeTimeout > 0:
            raise ValueError("the TLS handshake time-out must be more than 0 seconds")
        self.maxConnections = maxConnections
        self.handshakeTimeout = handshakeTimeout
        self.reactor = default(reactor)
        self.count = 0
        self.evicted = 0
        self.timedOut = 0
        # Never-active connections, oldest first: before and after the
        # handshake.  Active ones are only counted.
        self._fresh: "OrderedDict[LimitedProtocol, None]" = OrderedDict()
        self._quiet: "OrderedDict[LimitedProtocol, None]" = OrderedDict()
        self._counted = set()
        self._warned = False

    def wrap(self, factory) -> LimitedFactory:
        """
        @return: a factory that builds C{factory}'s protocols, counted.
        """
        return LimitedFactory(factory, self)

    def opened(self, protocol: LimitedProtocol) -> None:
        """
        Count a new connection and, over the cap, close the oldest
        never-active one (which may be this one).
        """
        self._counted.add(protocol)
        self.count += 1
        (self._quiet if protocol.handshaken else self._fresh)[protocol] = None
        reached = self.count
        while self.count > self.maxConnections:
            victim = self._oldestIdle()
            if victim is None:
                break
            self._forget(victim)
            self.evicted += 1
            if not self._warned:
                self._warned = True
                self.log.warn(
                    "{count} client connections reach the cap of {cap}: closing the oldest "
                    "that never sent a request (raise LimitNOFILE or set --max-connections)",
                    count=reached, cap=self.maxConnections)
            victim.abortConnection()
        if self.count <= self.maxConnections // 2:
            self._warned = False

    def _oldestIdle(self) -> Optional[LimitedProtocol]:
        for tier in (self._fresh, self._quiet):
            if tier:
                return next(iter(tier))
        return None

    def handshaken(self, protocol: LimitedProtocol) -> None:
        """
        A connection completed its TLS handshake.
        """
        if protocol in self._fresh:
            del self._fresh[protocol]
            self._quiet[protocol] = None

    def activated(self, protocol: LimitedProtocol) -> None:
        """
        A connection became active: it is never closed for the cap.
        """
        self._fresh.pop(protocol, None)
        self._quiet.pop(protocol, None)

    def _forget(self, protocol: LimitedProtocol) -> None:
        self._fresh.pop(protocol, None)
        self._quiet.pop(protocol, None)
        if protocol in self._counted:
            self._counted.discard(protocol)
            self.count -= 1

    def closed(self, protocol: LimitedProtocol) -> None:
        """
        A connection closed.
        """
        self._forget(protocol)
