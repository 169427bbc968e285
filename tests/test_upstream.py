"""
Tests for L{ekey.services.upstream}: relays pulling from upstream EGD
servers, in memory (and, for socket options, on loopback).
"""

import os
import random
import socket

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial import unittest

from ekey.cli import certs
from ekey.core.pool import EntropyPool
from ekey.core.units import BLOCK_SIZE
from ekey.core.status import UpstreamState, UpstreamStatus
from ekey.services.server import EGDServerFactory
from ekey.services.upstream import PullPolicy, Upstream, UpstreamService
from tests.interop.seeded import seededPlaintext, traceServed

#: The seeds of the upstreams' streams in L{SeveralUpstreamsTests}: what
#: simulated keys behind them would produce, so that what the relay serves
#: is traced with the interop tests' checker (L{traceServed}).
SEED_A = b"upstream-a"
SEED_B = b"upstream-b"


def randomStream(seed, n):
    """
    @return: C{n} seeded random bytes (which pass the health tests).
    """
    return random.Random(seed).randbytes(n)


class _RelayMixin:
    """
    A relay's pool and policy on a L{Clock}, and in-memory upstream EGD
    servers to connect it to.
    """

    stallTimeout = 2.0

    def setUp(self):
        self.clock = Clock()
        self.pool = EntropyPool(16384)
        self.policy = PullPolicy(self.pool, lowWater=1000, highWater=3000,
                                 stallTimeout=self.stallTimeout, reactor=self.clock)
        self.pumps = {}
        self.taken = []

    def upstreamServer(self, data=b""):
        """
        @return: an upstream EGD server's pool, holding C{data}, and its
            factory.
        """
        pool = EntropyPool(1 << 20)
        pool.add(data)
        return pool, EGDServerFactory(pool, clock=self.clock)

    def connect(self, upstream, factory):
        """
        Connect C{upstream} to the server C{factory} in memory.

        @return: the relay's L{UpstreamProtocol}.
        """
        server = factory.buildProtocol(None)
        client = upstream.buildProtocol(None)
        self.pumps[client] = iosim.connect(
            server, iosim.FakeTransport(server, isServer=True),
            client, iosim.FakeTransport(client, isServer=False), clock=self.clock)
        return client

    def disconnect(self, client):
        """
        Close C{client}'s connection from the relay's side.
        """
        client.transport.loseConnection()
        self.flush()
        del self.pumps[client]

    def flush(self):
        """
        Move bytes on every connection until none moves.
        """
        moved = True
        while moved:
            moved = False
            for pump in list(self.pumps.values()):
                moved = pump.flush() or moved

    def read(self, n):
        """
        A reader waits for C{n} bytes of the relay's pool.

        @return: a list the bytes it got are appended to.
        """
        got = []

        def deliver(data):
            got.append(data)
            self.taken.append(data)

        self.pool.request(n, deliver)
        return got

    def drain(self):
        """
        Take everything the relay's pool holds.
        """
        self.taken.append(self.pool.take(self.pool.level))

    def output(self):
        """
        @return: everything taken from the relay's pool, in order.
        """
        return b"".join(self.taken)


class RelayTests(_RelayMixin, unittest.TestCase):
    """
    One upstream fills the relay's pool between its watermarks, with bytes
    that passed the health tests.
    """

    def setUp(self):
        _RelayMixin.setUp(self)
        self.data = randomStream(7, 20000)
        self.upstreamPool, self.server = self.upstreamServer()
        self.upstream = Upstream("tcp:upstream:8888", self.policy)

    def test_fillsToHighWaterInOrder(self):
        """
        The relay pulls the upstream's bytes, in order and each once, to the
        high watermark (beyond it by at most what the health tests held
        back until their block was complete), and the pool never refuses
        any.
        """
        self.upstreamPool.add(self.data)
        self.connect(self.upstream, self.server)
        self.flush()
        level = self.pool.level
        self.assertGreaterEqual(level, 3000 - BLOCK_SIZE)
        self.assertLessEqual(level, 3000 + 2500)
        self.assertEqual(self.pool.take(level), self.data[:level])
        self.assertEqual(self.upstream.bytesPulled, level)
        self.assertEqual(self.pool.bytesRefused, 0)
        self.assertEqual(self.upstream.state, "up")

    def test_pullsAgainBelowLowWater(self):
        """
        Draining the relay's pool below the low watermark makes it pull
        again, continuing the upstream's stream where it stopped.
        """
        self.upstreamPool.add(self.data)
        self.connect(self.upstream, self.server)
        self.flush()
        first = self.pool.take(self.pool.level - 500)
        self.flush()
        self.assertGreaterEqual(self.pool.level, 3000 - BLOCK_SIZE)
        rest = self.pool.take(self.pool.level)
        self.assertEqual(first + rest, self.data[:len(first + rest)])

    def test_waitsForUpstream(self):
        """
        An upstream with nothing to give leaves blocking reads pending, up
        to the high watermark in whole blocks, and they are answered as
        bytes arrive; bytes reach the pool once a health-test block of them
        has passed.
        """
        client = self.connect(self.upstream, self.server)
        self.flush()
        self.assertEqual(self.policy.inFlight, 2976)
        self.assertEqual(client.outstanding, 2976)
        self.upstreamPool.add(self.data[:2000])
        self.flush()
        self.assertEqual(self.pool.level, 0)
        self.upstreamPool.add(self.data[2000:4000])
        self.flush()
        self.assertEqual(self.pool.take(2496), self.data[:2496])

    def test_lostConnectionDiscardsUntestedBytes(self):
        """
        When a connection is lost, bytes that passed the health tests stay
        in the pool; those still under test are discarded (never served);
        the upstream is marked down with the reason.
        """
        client = self.connect(self.upstream, self.server)
        self.flush()
        self.upstreamPool.add(self.data[:3000])
        self.flush()
        self.assertEqual(self.pool.level, 2496)
        self.assertEqual(self.upstream.status().testing, self.upstream.bytesReceived - 2496)
        self.assertGreater(self.upstream.status().testing, 0)
        client.connectionLost(Failure(ConnectionError("upstream went away")))
        self.assertEqual(self.pool.take(10000), self.data[:2496])
        status = self.upstream.status()
        self.assertEqual((status.state, status.inFlight, status.testing),
                         (UpstreamState.DOWN, 0, 0))
        self.assertIn("went away", status.lastError)
        self.assertEqual(self.policy.inFlight, 0)

    def test_unaskedBytesDisconnect(self):
        """
        An upstream that sends more than was asked for breaks the protocol:
        nothing it sent is used, and it is disconnected with the reason.
        """
        client = self.upstream.buildProtocol(None)
        transport = StringTransport()
        client.makeConnection(transport)
        asked = client.outstanding
        client.dataReceived(randomStream(1, asked + 1))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.pool.level, 0)
        client.connectionLost(Failure(ConnectionError("closed")))
        self.assertIn("nobody asked for", self.upstream.lastError)

    def test_everyUpstreamDownIsLogged(self):
        """
        When the last upstream goes, the daemon says that only the pool's
        bytes are left to serve.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        client = self.connect(self.upstream, self.server)
        self.flush()
        client.connectionLost(Failure(ConnectionError("gone")))
        texts = [e.get("log_format", "") for e in events]
        self.assertTrue(any("Every upstream is down" in t for t in texts), texts)

    def test_requestsUseTheClientParser(self):
        """
        Requests are blocking reads of whole blocks, sent in one write.
        """
        client = self.upstream.buildProtocol(None)
        transport = StringTransport()
        client.makeConnection(transport)
        sent = transport.value()
        self.assertEqual(sent, b"\x02\xe0" * 13 + b"\x02\x40")
        self.assertEqual(client.outstanding, 13 * 224 + 64)


class HealthTests(_RelayMixin, unittest.TestCase):
    """
    An upstream's bytes pass the same health tests as a key's before they
    reach the pool.
    """

    def test_constantStreamFails(self):
        """
        An upstream serving a constant byte fails the repetition count
        test: it is disconnected, nothing it sent reaches the pool, and the
        failure is logged, counted and shown in its status.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        _, factory = self.upstreamServer(b"\x00" * 10000)
        upstream = Upstream("tcp:constant:8888", self.policy)
        self.connect(upstream, factory)
        self.flush()
        status = upstream.status()
        self.assertEqual(self.pool.bytesIn, 0)
        self.assertEqual((status.state, status.healthFailures, status.bytesPulled),
                         (UpstreamState.DOWN, 1, 0))
        self.assertIn("health tests", status.lastError)
        self.assertIn("repetition count", status.lastError)
        self.assertTrue(any("failed the health tests" in e.get("log_format", "")
                            for e in events))

    def test_randomStreamPasses(self):
        """
        An upstream serving good random bytes passes, beside one that
        fails, and fills the pool alone after the other is dropped.
        """
        good = randomStream(5, 50000)
        _, badFactory = self.upstreamServer(b"\x00" * 10000)
        _, goodFactory = self.upstreamServer(good)
        bad = Upstream("tcp:constant:8888", self.policy)
        upstream = Upstream("tcp:random:8888", self.policy)
        self.connect(bad, badFactory)
        self.connect(upstream, goodFactory)
        self.flush()
        self.assertEqual(bad.status().healthFailures, 1)
        self.assertEqual(upstream.status().healthFailures, 0)
        self.assertGreaterEqual(self.pool.level, 3000 - BLOCK_SIZE)
        self.drain()
        self.assertEqual(self.output(), good[:len(self.output())])


class SeveralUpstreamsTests(_RelayMixin, unittest.TestCase):
    """
    Several upstreams share a relay's demand, take it over from one that
    stalls or goes, and never bring a byte twice or one that was not asked
    for.
    """

    def setUp(self):
        _RelayMixin.setUp(self)
        self.streamA = seededPlaintext(SEED_A, 200000 // BLOCK_SIZE)
        self.streamB = seededPlaintext(SEED_B, 200000 // BLOCK_SIZE)
        self.a = Upstream("tcp:a:8888", self.policy)
        self.b = Upstream("tcp:b:8888", self.policy)

    def checkOutput(self, servers):
        """
        Everything the relay served traces to the upstreams' streams, each
        byte once, and no upstream brought more than it was asked or the
        pool refused any.

        @param servers: the upstream servers' pools, A's then B's.
        """
        self.drain()
        [pieces] = traceServed([self.output()], [SEED_A, SEED_B])
        for seed, upstream, server in zip((SEED_A, SEED_B), (self.a, self.b), servers):
            self.assertEqual(sum(piece.end - piece.start for piece in pieces
                                 if piece.seed == seed), upstream.bytesPulled)
            self.assertLessEqual(upstream.bytesPulled, upstream.bytesReceived)
            self.assertLessEqual(upstream.bytesReceived, upstream.bytesRequested)
            self.assertLessEqual(upstream.bytesReceived, server.bytesOut)
        self.assertEqual(self.pool.bytesIn, self.a.bytesPulled + self.b.bytesPulled)
        self.assertEqual(self.pool.bytesRefused, 0)

    def test_emptyFirstUpstreamBesideFullOne(self):
        """
        An upstream with nothing to give, connected first, holds at most its
        share of the demand: a reader is served from the other at once, and
        once the empty one has delivered nothing for the stall time-out,
        the other fills the pool.
        """
        poolA, serverA = self.upstreamServer()
        poolB, serverB = self.upstreamServer(self.streamB[:100000])
        self.a.attempting()
        self.b.attempting()
        self.connect(self.a, serverA)
        self.connect(self.b, serverB)
        got = self.read(200)
        self.flush()
        self.assertEqual(len(b"".join(got)), 200)
        self.assertLessEqual(self.a.status().inFlight, 1504)
        self.assertEqual(self.a.state, "up")
        self.clock.advance(self.stallTimeout)
        self.flush()
        self.assertEqual(self.a.status().state, UpstreamState.STALLED)
        self.assertGreaterEqual(self.pool.level, 3000 - BLOCK_SIZE - 200)
        self.checkOutput([poolA, poolB])
        self.assertEqual(self.a.bytesPulled, 0)

    def test_firstUpstreamDisconnectsMidDemand(self):
        """
        An upstream that took the whole refill, connected alone, goes away
        having delivered a little: its demand is asked of the other at once,
        the reader waiting is served from it, and what the lost one sent,
        untested, is never served.
        """
        poolA, serverA = self.upstreamServer(self.streamA[:64])
        poolB, serverB = self.upstreamServer()
        clientA = self.connect(self.a, serverA)
        self.flush()
        self.connect(self.b, serverB)
        self.flush()
        got = self.read(200)
        self.disconnect(clientA)
        poolB.add(self.streamB[:100000])
        self.flush()
        self.assertEqual(len(b"".join(got)), 200)
        self.checkOutput([poolA, poolB])
        self.assertEqual(self.a.bytesPulled, 0)

    def test_bothFlapping(self):
        """
        Two upstreams that come and go in turn keep a reader served, and
        every byte served is one of theirs, once.
        """
        poolA, serverA = self.upstreamServer(self.streamA)
        poolB, serverB = self.upstreamServer(self.streamB)
        clients = {}
        reads = []
        for round in range(12):
            up, down = (self.a, self.b) if round % 2 else (self.b, self.a)
            factory = serverA if up is self.a else serverB
            clients[up] = self.connect(up, factory)
            self.flush()
            reads.append(self.read(700))
            self.flush()
            if down in clients:
                self.disconnect(clients.pop(down))
            reads.append(self.read(700))
            self.flush()
        self.assertEqual([len(b"".join(got)) for got in reads], [700] * len(reads))
        self.assertEqual((self.a.connections, self.b.connections), (6, 6))
        self.checkOutput([poolA, poolB])

    def test_tricklingUpstream(self):
        """
        An upstream that delivers a little at a time is not stalled and
        never holds more than its share; the other serves the readers.
        """
        poolA, serverA = self.upstreamServer()
        poolB, serverB = self.upstreamServer(self.streamB)
        self.a.attempting()
        self.b.attempting()
        self.connect(self.a, serverA)
        self.connect(self.b, serverB)
        reads = []
        trickled = 0
        for second in range(30):
            poolA.add(self.streamA[trickled : trickled + 64])
            trickled += 64
            self.clock.advance(1)
            reads.append(self.read(300))
            self.flush()
            self.assertEqual(len(b"".join(reads[-1])), 300)
            self.assertEqual(self.a.state, "up")
            self.assertLessEqual(self.a.status().inFlight, 1504)
        # All it had, but for part of a read not yet complete.
        self.assertGreater(self.a.bytesReceived, 30 * 64 - 224)
        self.checkOutput([poolA, poolB])

    def test_backupAskedOnlyWhenPrimaryDown(self):
        """
        A backup (C{priority=1}) is asked nothing while the primary
        delivers, and takes over when the primary goes.
        """
        backup = Upstream("tcp:backup:8888:priority=1", self.policy)
        self.assertEqual((backup.description, backup.priority), ("tcp:backup:8888", 1))
        poolA, serverA = self.upstreamServer(self.streamA)
        poolB, serverB = self.upstreamServer(self.streamB)
        clientA = self.connect(self.a, serverA)
        self.connect(backup, serverB)
        self.flush()
        self.drain()
        self.flush()
        self.assertEqual(backup.bytesRequested, 0)
        self.disconnect(clientA)
        self.drain()
        self.flush()
        self.assertGreater(backup.bytesPulled, 0)
        self.assertEqual(self.pool.bytesRefused, 0)


class StatusTests(_RelayMixin, unittest.TestCase):
    """
    L{Upstream.status} is a frozen snapshot of one upstream.
    """

    def test_states(self):
        """
        An upstream is down, then connecting, then up; its priority comes
        from its description.
        """
        upstream = Upstream("tcp:a:8888:priority=3", self.policy)
        self.assertEqual(upstream.status(), UpstreamStatus(
            description="tcp:a:8888", priority=3, state=UpstreamState.DOWN, bytesPulled=0,
            bytesRefused=0, inFlight=0, testing=0, connections=0, healthFailures=0,
            lastError=None))
        upstream.attempting()
        self.assertEqual(upstream.status().state, UpstreamState.CONNECTING)
        _, factory = self.upstreamServer()
        self.connect(upstream, factory)
        self.flush()
        status = upstream.status()
        self.assertEqual((status.state, status.inFlight, status.connections),
                         (UpstreamState.UP, 2976, 1))
        self.assertRaises(AttributeError, setattr, status, "state", UpstreamState.DOWN)


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


    def test_sslRefused(self):
        """
        An C{ssl:} upstream (no certificate check) is refused.
        """
        policy = PullPolicy(EntropyPool(4096), 100, 200, reactor=MemoryReactorClock())
        self.assertRaises(ValueError, UpstreamService, "ssl:relay.example:8888", policy,
                          reactor=MemoryReactorClock())

    def test_plainTCPAcrossANetworkWarnedAtStart(self):
        """
        Starting an upstream service for plain TCP to a host other than
        loopback logs a warning naming it.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        reactor = MemoryReactorClock()
        policy = PullPolicy(EntropyPool(4096), 100, 200, reactor=reactor)
        service = UpstreamService("tcp:192.0.2.7:8888", policy, reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        warnings = [e["caution"] for e in events if "caution" in e]
        self.assertEqual(len(warnings), 1)
        self.assertIn("192.0.2.7", warnings[0])

    def test_priorityNotPassedToTheEndpoint(self):
        """
        C{priority=} is the relay's own: the endpoint is made without it.
        """
        reactor = MemoryReactorClock()
        policy = PullPolicy(EntropyPool(4096), 100, 200, reactor=reactor)
        service = UpstreamService("tcp:127.0.0.1:9:priority=1", policy, reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(reactor.tcpClients[0][:2], ("127.0.0.1", 9))
        self.assertEqual(service.upstream.priority, 1)
        self.assertEqual(service.upstream.state, "connecting")


class NoDelayTests(unittest.TestCase):
    """
    An upstream connection sends its small requests at once, and the EGD
    server its small replies: Nagle's algorithm is off on both ends' TCP
    sockets, under TLS too.
    """

    def connectUpstream(self, serverDescription: str, clientDescription):
        """
        Serve EGD on C{serverDescription}; connect an upstream to it.

        @return: a L{Deferred} firing with C{TCP_NODELAY} as the upstream
            connection's TCP socket and the server's end of it have it.
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
                if service.upstream.connection is not None:
                    break
                await deferLater(reactor, 0.05, lambda: None)
            protocol = service.upstream.connection
            self.assertIsNotNone(protocol, service.upstream.lastError)
            [served] = factory.clients

            def noDelay(transport):
                if isinstance(transport, TLSMemoryBIOProtocol):
                    transport = transport.transport
                return transport.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

            return noDelay(protocol.transport), noDelay(served.transport)

        return Deferred.fromCoroutine(run())

    def test_tcp(self):
        """
        Over TCP.
        """
        d = self.connectUpstream("tcp:0:interface=127.0.0.1", lambda p: f"tcp:127.0.0.1:{p}")
        return d.addCallback(self.assertEqual, (1, 1))

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
        return d.addCallback(self.assertEqual, (1, 1))
