"""
Tests for L{ekey.upstream}: relays pulling from upstream EGD servers, in
memory.
"""

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial import unittest

from ekey.pool import EntropyPool
from ekey.server import EGDServerFactory
from ekey.upstream import MAX_PIPELINE, READ_SIZE, PullPolicy, Upstream, UpstreamService


def stream(n):
    return bytes(i * 7 % 256 for i in range(n))


class RelayTests(unittest.TestCase):
    """
    An upstream fills the relay's pool between its watermarks.
    """

    def setUp(self):
        self.upstreamPool = EntropyPool(1 << 20)
        self.server = EGDServerFactory(self.upstreamPool, clock=Clock())
        self.pool = EntropyPool(4096)
        self.policy = PullPolicy(self.pool, lowWater=1000, highWater=3000)
        self.upstream = Upstream("tcp:upstream:8888", self.policy)

    def connect(self):
        server = self.server.buildProtocol(None)
        client = self.upstream.buildProtocol(None)
        return client, iosim.connect(
            server, iosim.FakeTransport(server, isServer=True),
            client, iosim.FakeTransport(client, isServer=False))

    def test_fillsToHighWaterInOrder(self):
        """
        The relay pulls the upstream's bytes, in order and each once, up to
        the high watermark and no further.
        """
        data = stream(10000)
        self.upstreamPool.add(data)
        client, pump = self.connect()
        pump.flush()
        self.assertEqual(self.pool.level, 3000)
        self.assertEqual(self.pool.take(3000), data[:3000])
        self.assertEqual(self.upstream.bytesPulled, 3000)
        self.assertEqual(self.upstream.state, "up")

    def test_pullsAgainBelowLowWater(self):
        """
        Draining the relay's pool below the low watermark makes it pull
        again, continuing the upstream's stream where it stopped.
        """
        data = stream(10000)
        self.upstreamPool.add(data)
        client, pump = self.connect()
        pump.flush()
        first = self.pool.take(1500)
        pump.flush()
        self.assertEqual(self.pool.level, 1500)
        more = self.pool.take(600)
        pump.flush()
        self.assertEqual(self.pool.level, 3000)
        rest = self.pool.take(3000)
        self.assertEqual(first + more + rest, data[:5100])

    def test_waitsForUpstream(self):
        """
        An upstream with nothing to give leaves blocking reads pending, up
        to the high watermark and at most the pipeline's worth, and they are
        answered as bytes arrive.
        """
        client, pump = self.connect()
        pump.flush()
        self.assertLessEqual(client.outstanding, MAX_PIPELINE * READ_SIZE)
        # Whole 32-byte blocks up to the high watermark.
        self.assertEqual(self.policy.inFlight, 2976)
        self.assertEqual(self.pool.level, 0)
        self.upstreamPool.add(stream(100))
        pump.flush()
        self.assertEqual(self.pool.take(100), stream(100))

    def test_lostConnectionKeepsPartialRead(self):
        """
        Bytes of a blocking read cut short by a lost connection are kept in
        the pool (the upstream handed them to nobody else), and the
        upstream is marked down with the reason.
        """
        client, pump = self.connect()
        pump.flush()
        self.upstreamPool.add(b"x" * 100)
        pump.flush()
        self.assertEqual(self.pool.level, 100)
        self.upstreamPool.add(b"y" * 10)
        pump.flush()
        client.connectionLost(Failure(ConnectionError("upstream went away")))
        self.assertEqual(self.pool.take(1000), b"x" * 100 + b"y" * 10)
        self.assertEqual(self.upstream.state, "down")
        self.assertIn("went away", self.upstream.lastError)
        self.assertEqual(self.policy.inFlight, 0)

    def test_unaskedBytesDisconnect(self):
        """
        An upstream that sends more than was asked for breaks the protocol:
        nothing it sent beyond that is used, and it is disconnected.
        """
        from twisted.internet.testing import StringTransport

        client = self.upstream.buildProtocol(None)
        transport = StringTransport()
        client.makeConnection(transport)
        asked = client.outstanding
        client.dataReceived(b"x" * (asked + 1))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.pool.level, 0)

    def test_everyUpstreamDownIsLogged(self):
        """
        When the last upstream goes, the daemon says that only the pool's
        bytes are left to serve.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        client, pump = self.connect()
        pump.flush()
        client.connectionLost(Failure(ConnectionError("gone")))
        texts = [e.get("log_format", "") for e in events]
        self.assertTrue(any("Every upstream is down" in t for t in texts), texts)

    def test_badWatermarks(self):
        """
        Watermarks out of order, or above the pool's size, are refused.
        """
        self.assertRaises(ValueError, PullPolicy, EntropyPool(100), 50, 50)
        self.assertRaises(ValueError, PullPolicy, EntropyPool(100), 10, 200)


class UpstreamServiceTests(unittest.TestCase):
    """
    L{UpstreamService} keeps an upstream connected.
    """

    def test_connectsAndReportsFailure(self):
        """
        The service connects to the endpoint; a failed attempt is recorded
        as the upstream's last error and retried.
        """
        reactor = MemoryReactorClock()
        policy = PullPolicy(EntropyPool(4096), 100, 200)
        service = UpstreamService("tcp:127.0.0.1:9", policy, reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        host, port, factory, timeout, bind = reactor.tcpClients[0]
        self.assertEqual((host, port), ("127.0.0.1", 9))
        from twisted.internet.error import ConnectionRefusedError

        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertIn("refused", service.upstream.lastError)
        reactor.advance(60)
        self.assertEqual(len(reactor.tcpClients), 2)
