"""
Tests for L{ekey.services.upstream}: relays pulling from upstream EGD servers, in
memory (and, for socket options, on loopback).
"""

import os
import socket

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial import unittest

from ekey.cli import certs
from ekey.core.pool import EntropyPool
from ekey.services.server import EGDServerFactory
from ekey.services.upstream import MAX_PIPELINE, READ_SIZE, PullPolicy, Upstream, UpstreamService


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

    def test_refillStartsEarlierAfterRunningDry(self):
        """
        A refill during which readers emptied the pool makes the next one
        start earlier (a quarter of the way to the high watermark); one
        that completes without running dry moves the point back down.  The
        pool never holds more than the high watermark.
        """
        client, pump = self.connect()
        self.upstreamPool.add(stream(3000))
        pump.flush()
        self.assertEqual((self.pool.level, self.policy.refillAt), (3000, 1000))
        # Below the low watermark with nothing upstream: the refill waits,
        # and readers empty the pool meanwhile.
        self.pool.take(2100)
        pump.flush()
        self.assertTrue(self.policy.filling)
        self.pool.take(900)
        self.upstreamPool.add(stream(20000))
        pump.flush()
        self.assertEqual(self.pool.level, 3000)
        self.assertEqual((self.policy.ranDry, self.policy.refillAt), (1, 1500))
        # Now a level of 1400 starts a refill, which completes without the
        # pool running dry: the point goes back to the low watermark.
        self.pool.take(1600)
        self.assertTrue(self.policy.filling)
        pump.flush()
        self.assertEqual(self.pool.level, 3000)
        self.assertEqual(self.policy.refillAt, 1000)
        self.assertFalse(self.policy.filling)

    def test_refillPointBelowHighWater(self):
        """
        However often the pool runs dry, pulling starts at least one read
        below the high watermark.
        """
        client, pump = self.connect()
        for _ in range(10):
            self.policy._dry = True
            self.policy._refillDone()
        self.assertEqual(self.policy.refillAt, 3000 - READ_SIZE)

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


class NoDelayTests(unittest.TestCase):
    """
    An upstream connection sends its small requests at once: Nagle's
    algorithm is off on its TCP socket, under TLS too.
    """

    def connectUpstream(self, serverDescription: str, clientDescription):
        """
        Serve EGD on C{serverDescription}; connect an upstream to it.

        @return: a L{Deferred} firing with C{TCP_NODELAY} as the upstream
            connection's TCP socket has it.
        """
        from twisted.internet import reactor

        factory = EGDServerFactory(EntropyPool(4096))
        pool = EntropyPool(4096)
        policy = PullPolicy(pool, 100, 200)

        async def run():
            port = await serverFromString(reactor, serverDescription).listen(factory)
            self.addCleanup(port.stopListening)
            service = UpstreamService(clientDescription(port.getHost().port), policy)
            service.startService()
            self.addCleanup(service.stopService)
            for _ in range(200):
                if service.upstream.protocol is not None:
                    break
                await deferLater(reactor, 0.05, lambda: None)
            protocol = service.upstream.protocol
            self.assertIsNotNone(protocol, service.upstream.lastError)
            transport = protocol.transport
            if isinstance(transport, TLSMemoryBIOProtocol):
                transport = transport.transport
            return transport.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

        return Deferred.fromCoroutine(run())

    def test_tcp(self):
        """
        Over TCP.
        """
        d = self.connectUpstream("tcp:0:interface=127.0.0.1", lambda p: f"tcp:127.0.0.1:{p}")
        return d.addCallback(self.assertTrue)

    def test_tls(self):
        """
        Over TLS, on the TCP connection underneath.
        """
        directory = self.mktemp()
        os.makedirs(os.path.join(directory, "trust"))
        ca = certs.makeCA()
        host = certs.makeHost("localhost", ca)
        certs.writePublic(os.path.join(directory, "trust", "ca.pem"), certs.certificatePEM(ca[0]))
        certs.writePublic(os.path.join(directory, "host.crt"), certs.certificatePEM(host[0]))
        certs.writePrivate(os.path.join(directory, "host.key"), certs.keyPEM(host[1]))
        server = (f"ssl:0:interface=127.0.0.1:certKey={directory}/host.crt"
                  f":privateKey={directory}/host.key")
        d = self.connectUpstream(server, lambda p: (
            f"tls:localhost:{p}:trustRoots={directory}/trust:endpoint=tcp\\:127.0.0.1\\:{p}"))
        return d.addCallback(self.assertTrue)
