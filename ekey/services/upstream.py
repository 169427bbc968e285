# -*- test-case-name: tests.test_upstream -*-
"""
Upstream EGD sources: what makes a daemon a relay.

Each C{--upstream} is a client endpoint (C{tcp:}, C{unix:}, C{tls:} with
its certificate checks) kept connected by a L{ClientService} with backoff
and jitter.  All upstreams share one L{PullPolicy}: when the pool falls
below the low watermark they pull, with pipelined blocking reads (0x02), up
to the high watermark, and then stop until it falls again (the point where
they start again rises towards the high watermark while readers empty the
pool faster than refills arrive).  Bytes pulled go into the pool as they
arrive (not only when a read is complete), in order and each once; bytes of
a read cut short by a lost connection are kept, since the upstream handed
them to us and to nobody else.  When every upstream is down the daemon says
so and serves only what its pool holds: it never makes anything up.
"""

from __future__ import annotations

from typing import List, Optional

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from ekey.core.egd import MAX_READ, ReadBlocking, encodeRequest
from ekey.core.pool import EntropyPool

#: Blocking reads each upstream connection keeps in flight, at most (the
#: watermarks usually bound them first; an upstream stops reading a
#: client's requests beyond its own cap on pending bytes).
MAX_PIPELINE = 4096

#: Bytes per read: the most whole 32-byte key blocks that fit in an EGD
#: read, so that blocks stay whole along a chain even from an upstream that
#: serves newest bytes first (ekeyd).
READ_SIZE = MAX_READ - MAX_READ % 32

DEFAULT_LOW_WATER = 64 * 1024
DEFAULT_HIGH_WATER = 256 * 1024


class PullPolicy:
    """
    Decide, for all upstreams together, how much to pull: start below the
    low watermark, stop at the high one (counting bytes requested but not
    yet received).

    The point where pulling starts again adapts to demand.  When readers
    empty the pool while a refill is on its way, the low watermark was too
    low to cover the upstream's round trip at the rate they draw: the next
    refill starts earlier, a quarter of the way from the low watermark to
    the high one each time, until under steady heavy demand the policy
    keeps the upstream busy, topping the pool up as it is drawn.  Every
    refill that completes without the pool running dry moves the point back
    by the same step, down to the low watermark.  The pool never holds more
    than the high watermark either way.

    @ivar upstreams: every L{Upstream}.
    @ivar refillAt: the level below which pulling starts now, between the
        low watermark and the high one.
    @ivar ranDry: refills during which readers emptied the pool.
    """

    log = Logger()

    def __init__(self, pool: EntropyPool, lowWater: int = DEFAULT_LOW_WATER,
                 highWater: int = DEFAULT_HIGH_WATER):
        """
        @raise ValueError: unless C{0 <= lowWater < highWater <= capacity}.
        """
        if not 0 <= lowWater < highWater <= pool.capacity:
            raise ValueError(
                f"watermarks must satisfy 0 <= low ({lowWater}) < high ({highWater}) "
                f"<= pool size ({pool.capacity})"
            )
        self.pool = pool
        self.lowWater = lowWater
        self.highWater = highWater
        self.upstreams: List["Upstream"] = []
        self.inFlight = 0
        self.filling = True
        self.refillAt = lowWater
        self.ranDry = 0
        self._dry = False
        self._step = max(READ_SIZE, (highWater - lowWater) // 4)
        self._wasDown = False
        pool.observeLevel(self._levelChanged)

    def wanted(self) -> int:
        """
        @return: bytes to request now (0 when the pool is full enough).
        """
        if not self.filling:
            return 0
        want = self.highWater - self.pool.level - self.inFlight
        if want <= 0:
            self.filling = False
            self._refillDone()
            return 0
        return want

    def _refillDone(self):
        if self._dry:
            self.ranDry += 1
            self.refillAt = min(self.highWater - min(READ_SIZE, self.highWater - self.lowWater),
                                self.refillAt + self._step)
        else:
            self.refillAt = max(self.lowWater, self.refillAt - self._step)
        self._dry = False

    def _levelChanged(self, pool):
        if self.filling:
            if self.inFlight and not pool.level:
                self._dry = True
        elif pool.level < self.refillAt:
            self.filling = True
            self.kick()

    def kick(self):
        """
        Ask every connected upstream to pull what is wanted.
        """
        for upstream in self.upstreams:
            if upstream.protocol is not None:
                upstream.protocol.pull()

    @property
    def upCount(self) -> int:
        """
        Upstreams connected now.
        """
        return sum(1 for u in self.upstreams if u.protocol is not None)

    def stateChanged(self):
        """
        An upstream came or went: say so when none is left, and when one is
        back.
        """
        down = self.upCount == 0
        if down and not self._wasDown:
            self.log.warn(
                "Every upstream is down: serving only the {poolLevel} bytes the pool holds "
                "until one comes back",
                poolLevel=self.pool.level,
            )
        elif not down and self._wasDown:
            self.log.info("An upstream is back: pulling again")
        self._wasDown = down


@implementer(IHandshakeListener)
class UpstreamProtocol(Protocol):
    """
    An EGD client that fills the pool.

    It only ever sends blocking reads (0x02), whose replies are exactly the
    bytes asked for and nothing else, so every byte the upstream sends is
    entropy, in order: the protocol counts bytes rather than matching
    replies to requests, and hands each read of the connection to the pool
    whole.  A server that sends more than was asked is breaking the
    protocol and is disconnected.  Over TLS the upstream counts as
    connected only once the handshake (and the check of its name) has
    succeeded.
    """

    log = Logger()

    def __init__(self, upstream: "Upstream"):
        self.upstream = upstream
        self._requested = 0
        self._up = False
        self.connected = False

    def connectionMade(self):
        self.connected = True
        _noDelay(self.transport)
        if not ISSLTransport.providedBy(self.transport):
            self.handshakeCompleted()

    def handshakeCompleted(self):
        self._up = True
        self.upstream.connected(self)
        self.pull()

    @property
    def outstanding(self) -> int:
        """
        Bytes asked for and not yet received.
        """
        return self._requested

    def pull(self):
        """
        Ask for what the policy wants, in reads of L{READ_SIZE} bytes, with
        at most L{MAX_PIPELINE} reads' worth in flight, in one write.
        """
        if not (self._up and self.connected):
            return
        policy = self.upstream.policy
        room = MAX_PIPELINE * READ_SIZE - self._requested
        wanted = min(policy.wanted(), room)
        if wanted >= 32:
            wanted -= wanted % 32
        if wanted <= 0:
            return
        full, rest = divmod(wanted, READ_SIZE)
        requests = encodeRequest(ReadBlocking(READ_SIZE)) * full
        if rest:
            requests += encodeRequest(ReadBlocking(rest))
        policy.inFlight += wanted
        self._requested += wanted
        self.transport.write(requests)

    def dataReceived(self, data):
        if len(data) > self._requested:
            self.log.warn("Upstream {upstream} sent {extra} bytes nobody asked for; "
                          "disconnecting", upstream=self.upstream.description,
                          extra=len(data) - self._requested)
            self._up = False
            self.transport.loseConnection()
            return
        self._requested -= len(data)
        self.upstream.policy.inFlight -= len(data)
        self.upstream.received(data)
        self.pull()

    def connectionLost(self, reason):
        self.connected = False
        self.upstream.policy.inFlight -= self._requested
        self._requested = 0
        if self._up:
            self.upstream.disconnected(self, reason)
        else:
            self.upstream.connectionFailed(reason)


def _noDelay(transport) -> None:
    """
    Send small writes at once on TCP (a relay's requests are a few bytes:
    with Nagle's algorithm each would wait for the previous one's
    acknowledgement, which the upstream delays).  Through TLS, the TCP
    transport underneath.
    """
    setTcpNoDelay = getattr(transport, "setTcpNoDelay", None)
    if setTcpNoDelay is not None:
        try:
            setTcpNoDelay(True)
        except OSError:
            pass


class Upstream(Factory):
    """
    One upstream: its state for logs and status, and the factory of its
    connections.

    @ivar description: the endpoint string.
    @ivar protocol: the connected L{UpstreamProtocol}, or C{None}.
    @ivar bytesPulled: bytes received from it and added to the pool.
    @ivar lastError: why it last failed or went away, in words.
    """

    log = Logger()

    def __init__(self, description: str, policy: PullPolicy):
        self.description = description
        self.policy = policy
        self.protocol: Optional[UpstreamProtocol] = None
        self.bytesPulled = 0
        self.bytesRefused = 0
        self.connections = 0
        self.lastError: Optional[str] = None
        policy.upstreams.append(self)

    @property
    def state(self) -> str:
        """
        C{"up"} or C{"down"}.
        """
        return "up" if self.protocol is not None else "down"

    def buildProtocol(self, addr):
        return UpstreamProtocol(self)

    def connected(self, protocol: UpstreamProtocol):
        self.protocol = protocol
        self.connections += 1
        self.log.info("Upstream {upstream} connected", upstream=self.description)
        self.policy.stateChanged()

    def received(self, data: bytes):
        accepted = self.policy.pool.add(data)
        self.bytesPulled += accepted
        self.bytesRefused += len(data) - accepted

    def disconnected(self, protocol: UpstreamProtocol, reason):
        if self.protocol is protocol:
            self.protocol = None
        self.lastError = _describeFailure(reason)
        self.log.warn("Upstream {upstream} lost: {reason}", upstream=self.description,
                      reason=self.lastError)
        self.policy.stateChanged()

    def connectionFailed(self, failure):
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

    def connect(self, factory):
        d = defer.maybeDeferred(self._endpoint.connect, factory)

        def failed(failure):
            self._upstream.connectionFailed(failure)
            return failure

        return d.addErrback(failed)


class UpstreamService(ClientService):
    """
    Keep one upstream connected, reconnecting with backoff (one second
    doubling to thirty, with jitter).
    """

    def __init__(self, description: str, policy: PullPolicy, reactor=None):
        from twisted.internet.endpoints import clientFromString

        if reactor is None:
            from twisted.internet import reactor
        self.upstream = Upstream(description, policy)
        ClientService.__init__(
            self,
            _ReportingEndpoint(clientFromString(reactor, description), self.upstream),
            self.upstream,
            retryPolicy=backoffPolicy(initialDelay=1.0, maxDelay=30.0),
            clock=reactor,
        )
        self.setName(f"upstream:{description}")
