# -*- test-case-name: tests.test_upstream -*-
"""
Upstream EGD sources: what makes a daemon a relay.

Each C{--upstream} is a client endpoint (C{tcp:}, C{unix:}, C{tls:} with
its certificate checks and TLS 1.2 limited to AEAD suites, see
L{ekey.services.tlsclient}; C{ssl:} is refused, see
L{ekey.core.upstreamconfig}) kept connected by a L{ClientService} with
backoff and jitter.  All upstreams share one L{PullPolicy}
(L{ekey.core.pull}), which decides how much to ask of which: demand is
spread over every connected, delivering upstream, moves away from one that
stalls, is asked again of the others when a connection is lost, and goes
to backups (a higher C{priority=}) only while the primaries are down or
stalled.

An upstream connection is an EGD client that only ever sends blocking
reads (0x02), whose replies are the bytes asked for, unframed
(L{BlockingReadClient}): every byte is used as it arrives, and a server
that sends more than was asked for is disconnected.  Every byte received
goes through the connection's own L{HealthMonitor}, the same tests a key's
bytes pass, and only bytes that passed reach the pool, in order and each
once.  An upstream whose bytes fail is disconnected, the bytes it sent
that were not yet tested are discarded, and the failure is logged and
counted.  Bytes still under test when a connection goes away are discarded
too: nothing untested is ever served.  When every upstream is down the
daemon says so and serves only what its pool holds: it never makes
anything up.
"""

from __future__ import annotations

from typing import Optional

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from ekey.core import pull
from ekey.core.egd import BlockingReadClient
from ekey.core.errors import RemoteProtocolError
from ekey.core.health import HealthMonitor
from ekey.core.pull import (
    DEFAULT_HIGH_WATER,
    DEFAULT_LOW_WATER,
    DEFAULT_STALL_TIMEOUT,
    MAX_PIPELINE,
    READ_SIZE,
)
from ekey.core.pool import EntropyPool
from ekey.core.upstreamconfig import checkUpstreamDescription, splitPriority
from ekey.core.status import UpstreamState, UpstreamStatus
from ekey.services.peers import sendSmallWritesAtOnce
from ekey.services.tlsclient import clientEndpoint

__all__ = [
    "DEFAULT_HIGH_WATER", "DEFAULT_LOW_WATER", "DEFAULT_STALL_TIMEOUT", "MAX_PIPELINE",
    "READ_SIZE", "PullPolicy", "Upstream", "UpstreamProtocol", "UpstreamService",
    "checkUpstreamDescription",
]


class PullPolicy(pull.PullPolicy):
    """
    L{ekey.core.pull.PullPolicy} on the reactor's clock unless told
    otherwise.
    """

    def __init__(self, pool: EntropyPool, lowWater: int = DEFAULT_LOW_WATER,
                 highWater: int = DEFAULT_HIGH_WATER,
                 stallTimeout: float = DEFAULT_STALL_TIMEOUT, reactor=None):
        """
        @param reactor: an L{IReactorTime} (default the reactor).
        @raise ValueError: as L{ekey.core.pull.PullPolicy} does.
        """
        if reactor is None:
            from twisted.internet import reactor
        pull.PullPolicy.__init__(self, pool, lowWater, highWater, clock=reactor,
                                 stallTimeout=stallTimeout)


@implementer(IHandshakeListener)
class UpstreamProtocol(Protocol):
    """
    One connection to an upstream: blocking reads out, replies in.

    It asks for what its L{Upstream} is told to pull, in reads of
    L{READ_SIZE} bytes, and hands every byte to it as it arrives.
    Over TLS the upstream counts as connected only once the handshake (and
    the check of its name) has succeeded.

    @ivar monitor: the health tests of the bytes this connection brings.
    @ivar dropReason: why we closed it, or C{None}.
    """

    log = Logger()

    def __init__(self, upstream: "Upstream"):
        self.upstream = upstream
        self.monitor = HealthMonitor()
        self._requests = BlockingReadClient(READ_SIZE)
        self._up = False
        self.connected = False
        self.dropReason: Optional[str] = None

    def connectionMade(self):
        self.connected = True
        sendSmallWritesAtOnce(self.transport)
        if not ISSLTransport.providedBy(self.transport):
            self.handshakeCompleted()

    def handshakeCompleted(self):
        self._up = True
        self.upstream.connected(self)

    @property
    def outstanding(self) -> int:
        """
        Bytes asked for and not yet received.
        """
        return self.upstream.policy.inFlightOf(self.upstream) if self._up else 0

    def pull(self, n: int) -> None:
        """
        Ask for C{n} more bytes, in reads of L{READ_SIZE} bytes, in one
        write.
        """
        if not (self._up and self.connected) or n <= 0:
            return
        requests = self._requests.request(n)
        self.upstream.requested(n)
        self.transport.write(requests)

    def dataReceived(self, data):
        if not self._up:
            return
        try:
            data = self._requests.receiveData(data)
        except RemoteProtocolError as e:
            self.log.warn("Upstream {upstream} broke the EGD protocol ({reason}); "
                          "disconnecting", upstream=self.upstream.description, reason=str(e))
            self.drop(f"it broke the EGD protocol: {e}")
            return
        self.upstream.received(self, data)

    def drop(self, reason: str) -> None:
        """
        Use nothing more from this connection, and close it.

        @param reason: why, in words, for the upstream's last error.
        """
        self._up = False
        self.dropReason = reason
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.connected = False
        if self.upstream.connection is self:
            self.upstream.disconnected(self, reason)
        else:
            self.upstream.connectionFailed(reason)


class Upstream(Factory):
    """
    One upstream: a member of the L{PullPolicy}, its counters for status,
    and the factory of its connections.

    @ivar description: the endpoint string (without C{priority=}).
    @ivar priority: lower is asked first.
    @ivar connection: the connected L{UpstreamProtocol}, or C{None}.
    @ivar bytesRequested: bytes asked of it.
    @ivar bytesReceived: of those, bytes received (before the health tests).
    @ivar bytesPulled: bytes received from it, tested and added to the pool.
    @ivar bytesRefused: of those, bytes the pool had no room for.
    @ivar connections: connections made to it.
    @ivar healthFailures: connections dropped because its bytes failed the
        health tests.
    @ivar lastError: why it last failed or went away, in words.
    """

    log = Logger()
    noisy = False

    def __init__(self, description: str, policy: pull.PullPolicy,
                 priority: Optional[int] = None):
        """
        @param description: the endpoint string, possibly with
            C{priority=N}.
        @param priority: overrides a C{priority=} in the description.
        @raise ValueError: if the priority in the description is bad.
        """
        self.description, named = splitPriority(description)
        self.priority = named if priority is None else priority
        self.policy = policy
        self.connection: Optional[UpstreamProtocol] = None
        self.connecting = False
        self.bytesRequested = 0
        self.bytesReceived = 0
        self.bytesPulled = 0
        self.bytesRefused = 0
        self.connections = 0
        self.healthFailures = 0
        self.lastError: Optional[str] = None
        policy.join(self, self.description, self.priority)

    def __repr__(self):
        return f"<Upstream {self.description}>"

    @property
    def stateValue(self) -> UpstreamState:
        """
        Where it stands now.
        """
        if self.connection is not None:
            return UpstreamState.STALLED if self.policy.isStalled(self) else UpstreamState.UP
        return UpstreamState.CONNECTING if self.connecting else UpstreamState.DOWN

    @property
    def state(self) -> str:
        """
        L{stateValue} in words: C{"connecting"}, C{"up"}, C{"stalled"} or
        C{"down"}.
        """
        return self.stateValue.value

    def status(self) -> UpstreamStatus:
        """
        @return: a snapshot of this upstream.
        """
        return UpstreamStatus(
            description=self.description, priority=self.priority, state=self.stateValue,
            bytesPulled=self.bytesPulled, bytesRefused=self.bytesRefused,
            inFlight=self.policy.inFlightOf(self), testing=self.policy.testingOf(self),
            connections=self.connections, healthFailures=self.healthFailures,
            lastError=self.lastError)

    def buildProtocol(self, addr):
        if not self.connecting:
            self.attempting()
        return UpstreamProtocol(self)

    # From the policy --------------------------------------------------------------------

    def pull(self, n: int) -> None:
        """
        Ask the connected upstream for C{n} more bytes (the policy's
        decision).
        """
        if self.connection is not None:
            self.connection.pull(n)

    # From the connection ----------------------------------------------------------------

    def attempting(self) -> None:
        """
        A connection attempt started.
        """
        self.connecting = True
        self.policy.attempting(self)

    def connected(self, connection: UpstreamProtocol) -> None:
        """
        C{connection} is up (over TLS, its handshake succeeded).
        """
        self.connection = connection
        self.connecting = False
        self.connections += 1
        self.log.info("Upstream {upstream} connected", upstream=self.description)
        self.policy.connected(self)

    def requested(self, n: int) -> None:
        """
        The connection asked for C{n} more bytes.
        """
        self.bytesRequested += n
        self.policy.requested(self, n)

    def received(self, connection: UpstreamProtocol, data: bytes) -> None:
        """
        Bytes asked for arrived on C{connection}: test them, add what
        passed to the pool, and ask for more if more is wanted.
        """
        policy = self.policy
        self.bytesReceived += len(data)
        policy.received(self, len(data))
        released = connection.monitor.feed(data)
        if connection.monitor.failure is not None:
            self.healthFailures += 1
            self.log.error(
                "Upstream {upstream} failed the health tests ({reason}): disconnecting, its "
                "untested bytes discarded", upstream=self.description,
                reason=connection.monitor.failure)
            connection.drop(f"its bytes failed the health tests: {connection.monitor.failure}")
            return
        for chunk in released:
            policy.released(self, len(chunk))
            accepted = policy.pool.add(chunk)
            self.bytesPulled += accepted
            self.bytesRefused += len(chunk) - accepted
        policy.kick()

    def disconnected(self, connection: UpstreamProtocol, reason) -> None:
        """
        C{connection}, which was up, went away; what it was asked for is
        asked of the others.
        """
        self.connection = None
        self.connecting = False
        self.lastError = connection.dropReason or _describeFailure(reason)
        self.log.warn("Upstream {upstream} lost: {reason}", upstream=self.description,
                      reason=self.lastError)
        self.policy.lost(self)

    def connectionFailed(self, failure) -> None:
        """
        A connection attempt failed (before it was up).
        """
        self.connecting = False
        self.policy.failed(self)
        self.lastError = _describeFailure(failure)
        self.log.warn("Upstream {upstream} unreachable: {reason}", upstream=self.description,
                      reason=self.lastError)


def _describeFailure(failure) -> str:
    """
    Say why a connection failed or closed, including TLS verification
    failures (a certificate for another host, an untrusted CA, an expired
    certificate), which arrive as lists of OpenSSL errors.
    """
    value = failure.value
    try:
        from service_identity import VerificationError
    except ImportError:  # pragma: no cover
        VerificationError = ()
    if isinstance(value, VerificationError):
        names = ", ".join(type(e).__name__ for e in value.errors)
        return f"the upstream's certificate does not name the host connected to ({names})"
    args = getattr(value, "args", ())
    if args and isinstance(args[0], list) and args[0] and isinstance(args[0][0], tuple):
        reasons = ", ".join(str(entry[-1]) for entry in args[0])
        return f"TLS handshake failed: {reasons}"
    return failure.getErrorMessage()


@implementer(IStreamClientEndpoint)
class _ReportingEndpoint:
    """
    Wrap an endpoint so that failed connection attempts reach the
    L{Upstream} (L{ClientService} only logs them).
    """

    def __init__(self, endpoint, upstream: Upstream):
        self._endpoint = endpoint
        self._upstream = upstream

    def __repr__(self) -> str:
        # ClientService names the endpoint in its retry lines.
        return f"<upstream {self._upstream.description}>"

    def connect(self, factory):
        self._upstream.attempting()
        d = defer.maybeDeferred(self._endpoint.connect, factory)

        def failed(failure):
            self._upstream.connectionFailed(failure)
            return failure

        return d.addErrback(failed)


class UpstreamService(ClientService):
    """
    Keep one upstream connected, reconnecting with backoff (one second
    doubling to thirty, with jitter).

    @ivar warnings: what L{checkUpstreamDescription} found to warn about,
        logged when the service starts.
    """

    log = Logger()

    def __init__(self, description: str, policy: pull.PullPolicy, reactor=None):
        """
        @param description: the endpoint string, possibly with
            C{priority=N}.
        @param reactor: the reactor (default the global one).
        @raise ValueError: for a description that must not be used (see
            L{checkUpstreamDescription}).
        """
        if reactor is None:
            from twisted.internet import reactor
        self.warnings = checkUpstreamDescription(description)
        self.upstream = Upstream(description, policy)
        ClientService.__init__(
            self,
            _ReportingEndpoint(clientEndpoint(reactor, self.upstream.description),
                               self.upstream),
            self.upstream,
            retryPolicy=backoffPolicy(initialDelay=1.0, maxDelay=30.0),
            clock=reactor,
        )
        self.setName(f"upstream:{description}")

    def startService(self):
        for warning in self.warnings:
            self.log.warn("{caution}", caution=warning)
        ClientService.startService(self)
