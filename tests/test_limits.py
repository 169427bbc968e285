"""
Tests for L{ekey.services.limits}: the TLS handshake time-out and the
connection cap over all listeners, which closes only connections that
never became active.
"""

from twisted.internet.interfaces import IHandshakeListener, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import directlyProvides, implementer

from ekey.services.limits import ConnectionLimiter, defaultMaxConnections, markActive


@implementer(IHandshakeListener)
class Recorder(Protocol):
    """
    An application protocol that records what reaches it.
    """

    def __init__(self):
        self.received = b""
        self.handshakes = 0
        self.lost = False

    def dataReceived(self, data):
        self.received += data

    def handshakeCompleted(self):
        self.handshakes += 1

    def connectionLost(self, reason):
        self.lost = True


class Harness:
    """
    One limiter and two wrapped listeners (one plain, one TLS), with
    connections made on StringTransports.
    """

    def __init__(self, cap, timeout=10.0):
        self.clock = MemoryReactorClock()
        self.limiter = ConnectionLimiter(cap, timeout, reactor=self.clock)
        self.plain = self.limiter.wrap(Factory.forProtocol(Recorder))
        self.tls = self.limiter.wrap(Factory.forProtocol(Recorder))

    def connect(self, tls=False):
        factory = self.tls if tls else self.plain
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        if tls:
            directlyProvides(transport, ISSLTransport)
        protocol.makeConnection(transport)
        return protocol, transport

    def lose(self, protocol):
        protocol.connectionLost(Failure(Exception("closed")))


class HandshakeTimeoutTests(unittest.TestCase):
    """
    A TLS connection must complete its handshake in time.
    """

    def test_timeout(self):
        """
        A TLS client that has not completed its handshake after the
        time-out is aborted, and counted.
        """
        harness = Harness(100, timeout=10)
        protocol, transport = harness.connect(tls=True)
        harness.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        harness.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(harness.limiter.timedOut, 1)

    def test_completed(self):
        """
        A completed handshake stops the timer and reaches the application
        protocol; the connection then stays open however long it idles.
        """
        harness = Harness(100, timeout=10)
        protocol, transport = harness.connect(tls=True)
        harness.clock.advance(5)
        protocol.handshakeCompleted()
        self.assertEqual(protocol.wrappedProtocol.handshakes, 1)
        harness.clock.advance(3600)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_plainHasNoTimer(self):
        """
        A plain TCP connection has no handshake to time.
        """
        harness = Harness(100)
        protocol, transport = harness.connect()
        harness.clock.advance(3600)
        self.assertFalse(transport.disconnecting)

    def test_lostCancelsTimer(self):
        """
        A connection that closes before its handshake leaves no timer.
        """
        harness = Harness(100)
        protocol, transport = harness.connect(tls=True)
        application = protocol.wrappedProtocol
        harness.lose(protocol)
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        self.assertTrue(application.lost)
        self.assertEqual(harness.limiter.count, 0)


class CapTests(unittest.TestCase):
    """
    Over the cap, the oldest never-active connection is closed; active
    ones never are.
    """

    def test_evictsOldestIdle(self):
        """
        With a cap of 3, a fourth and fifth connection close the oldest
        connections that never sent a byte, not the one that did (however
        long ago), and the count stays at the cap.
        """
        harness = Harness(3)
        active, activeTransport = harness.connect()
        active.dataReceived(b"\x00")
        idle1, t1 = harness.connect()
        idle2, t2 = harness.connect()
        harness.clock.advance(86400)
        new1, n1 = harness.connect()
        self.assertEqual([t1.disconnecting, t2.disconnecting, n1.disconnecting],
                         [True, False, False])
        new2, n2 = harness.connect()
        self.assertEqual([t2.disconnecting, n2.disconnecting], [True, False])
        self.assertFalse(activeTransport.disconnecting)
        self.assertEqual(active.wrappedProtocol.received, b"\x00")
        self.assertEqual(harness.limiter.count, 3)
        self.assertEqual(harness.limiter.evicted, 2)
        # The evicted connections' own connectionLost does not count twice.
        harness.lose(idle1)
        harness.lose(idle2)
        self.assertEqual(harness.limiter.count, 3)

    def test_allActive(self):
        """
        When every other connection is active, the new one is the one
        closed.
        """
        harness = Harness(2)
        for _ in range(2):
            protocol, _ = harness.connect()
            protocol.dataReceived(b"\x00")
        new, transport = harness.connect()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(harness.limiter.count, 2)

    def test_acrossListeners(self):
        """
        The cap counts the connections of every wrapped listener; a TLS
        connection that never completed its handshake goes first, however
        young; then, oldest first, those that completed a handshake (or
        are plain) but never sent a byte.
        """
        harness = Harness(3)
        quiet, quietTransport = harness.connect(tls=True)
        quiet.handshakeCompleted()
        plain, plainTransport = harness.connect()
        fresh, freshTransport = harness.connect(tls=True)
        harness.connect()
        self.assertEqual([quietTransport.disconnecting, plainTransport.disconnecting,
                          freshTransport.disconnecting], [False, False, True])
        harness.connect()
        self.assertEqual([quietTransport.disconnecting, plainTransport.disconnecting],
                         [True, False])
        harness.connect()
        self.assertTrue(plainTransport.disconnecting)

    def test_bytesBeforeHandshakeDoNotCount(self):
        """
        Only bytes after the handshake make a TLS connection active (the
        application never sees earlier ones; the hook is ignored too).
        """
        harness = Harness(1)
        protocol, transport = harness.connect(tls=True)
        markActive(protocol)
        harness.connect()
        self.assertTrue(transport.disconnecting)

    def test_markActive(self):
        """
        An application protocol can mark its connection active through its
        transport (a complete request), and it is then never evicted.
        """
        harness = Harness(1)
        protocol, transport = harness.connect()
        markActive(protocol.wrappedProtocol.transport)
        harness.connect()
        self.assertFalse(transport.disconnecting)
        markActive(StringTransport())

    def test_refusedByApplication(self):
        """
        A factory that refuses a connection (C{None}) is not wrapped, and
        it is not counted.
        """
        limiter = ConnectionLimiter(5, reactor=MemoryReactorClock())
        factory = limiter.wrap(Factory.forProtocol(Recorder))
        factory.wrappedFactory.buildProtocol = lambda addr: None
        self.assertIsNone(factory.buildProtocol(None))
        self.assertEqual(limiter.count, 0)


class DefaultTests(unittest.TestCase):
    """
    The default cap keeps a reserve of descriptors below the limit.
    """

    def test_reserve(self):
        """
        64 descriptors are kept at least, a tenth of a large limit.
        """
        self.assertEqual(defaultMaxConnections(300), 236)
        self.assertEqual(defaultMaxConnections(1024), 922)
        self.assertEqual(defaultMaxConnections(100000), 90000)
        self.assertEqual(defaultMaxConnections(10), 1)

    def test_fromLimit(self):
        """
        Without a limit given, the process's soft RLIMIT_NOFILE is used.
        """
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            raise unittest.SkipTest("no file-descriptor limit")
        self.assertEqual(defaultMaxConnections(), defaultMaxConnections(soft))
        self.assertEqual(ConnectionLimiter(reactor=MemoryReactorClock()).maxConnections,
                         defaultMaxConnections(soft))

    def test_bad(self):
        """
        A cap below 1 or a time-out not above 0 is a local error.
        """
        self.assertRaises(ValueError, ConnectionLimiter, 0)
        self.assertRaises(ValueError, ConnectionLimiter, 5, 0)
