"""
Tests for L{ekey.services.server} and L{ekey.services.client}: EGD server and client over an
in-memory connection.
"""

import datetime
import hashlib
import struct

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from OpenSSL import crypto
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test import iosim
from twisted.trial import unittest
from zope.interface import directlyProvides

from ekey.services.client import EGDClientProtocol, EGDConnectionLost, readExactly
from ekey.core.pool import EntropyPool
from ekey.core.ratelimit import RateLimiter
from ekey.services.server import MAX_QUEUED_COMMANDS, EGDServerFactory, certificateIdentity


def connect(factory, peer=None):
    """
    Connect a client to a new server protocol in memory.

    @param peer: the client's address as the server sees it (default a
        fake address of its own).
    @return: C{(client, server, pump)}.
    """
    server = factory.buildProtocol(None)
    client = EGDClientProtocol()
    serverTransport = iosim.FakeTransport(server, isServer=True, peerAddress=peer)
    clientTransport = iosim.FakeTransport(client, isServer=False)
    pump = iosim.connect(server, serverTransport, client, clientTransport)
    return client, server, pump


class ServerTests(unittest.TestCase):
    """
    The server answers every command from the pool.
    """

    def setUp(self):
        self.pool = EntropyPool(4096)
        self.clock = Clock()
        self.factory = EGDServerFactory(self.pool, pid=4242, clock=self.clock)

    def test_commands(self):
        """
        Level, non-blocking read, blocking read, write and PID are answered
        in order; written entropy never enters the pool.
        """
        client, server, pump = connect(self.factory)
        self.pool.add(b"0123456789")
        results = [client.level(), client.read(4), client.write(64, b"x" * 8),
                   client.readBlocking(3), client.pid(), client.level()]
        pump.flush()
        values = [self.successResultOf(d) for d in results]
        self.assertEqual(values, [80, b"0123", None, b"456", "4242", 24])
        self.assertEqual(self.pool.level, 3)
        self.assertEqual(server.bytesServed, 7)
        self.assertEqual(self.factory.requests["Write"], 1)

    def test_status(self):
        """
        The listener and each client answer C{status} with their counters
        now, clients longest connected first.
        """
        client, server, pump = connect(self.factory)
        self.clock.advance(5)
        later, laterServer, laterPump = connect(self.factory)
        self.pool.add(b"0123456789")
        client.read(4)
        client.level()
        pump.flush()
        listener = self.factory.status("tcp:8888")
        self.assertEqual(
            (listener.description, listener.clients, listener.connections,
             listener.bytesServed, listener.requests),
            ("tcp:8888", 2, 2, 4, (("GetLevel", 1), ("Read", 1))))
        first, second = self.factory.clientStatuses("tcp:8888")
        self.assertEqual((first.listener, first.bytesServed, first.requests,
                          first.connectedAt), ("tcp:8888", 4, 2, 0.0))
        self.assertEqual((second.bytesServed, second.requests, second.connectedAt),
                         (0, 0, 5.0))

    def test_blockingReadWaits(self):
        """
        A blocking read is answered as bytes arrive, and later commands on
        that connection wait for it.
        """
        client, server, pump = connect(self.factory)
        big = client.readBlocking(100)
        after = client.level()
        pump.flush()
        self.assertNoResult(big)
        self.assertNoResult(after)
        self.pool.add(b"a" * 60)
        pump.flush()
        self.assertNoResult(big)
        self.pool.add(b"b" * 60)
        pump.flush()
        self.assertEqual(self.successResultOf(big), b"a" * 60 + b"b" * 40)
        self.assertEqual(self.successResultOf(after), 160)

    def test_fairness(self):
        """
        A client looping on 0x02 255 does not stop a 0x01 client from being
        served bytes.
        """
        greedy, _, greedyPump = connect(self.factory)
        poller, _, pollerPump = connect(self.factory)
        greedyGot, pollerGot = [], []

        def loop(data=b""):
            greedyGot.append(data)
            greedy.readBlocking(255).addCallback(loop)

        loop()
        poller.read(1)
        for _ in range(50):
            self.pool.add(b"k" * 32)
            greedyPump.flush()
            poller.read(255).addCallback(pollerGot.append)
            pollerPump.flush()
        self.assertGreater(len(b"".join(pollerGot)), 300)
        self.assertGreater(len(b"".join(greedyGot)), 300)

    def ordinaryShare(self, greedyReads: int, lump: int, lumps: int, flushes: int,
                      peers=(None, None)) -> tuple:
        """
        A greedy client keeps C{greedyReads} reads of 255 bytes in flight
        beside an ordinary one reading 32 bytes at a time, each asking again
        as soon as a read is answered, while C{lumps} lumps of C{lump} bytes
        arrive 0.1 s apart.

        @param peers: the two clients' addresses (default one each).
        @return: the ordinary client's share of the bytes, and the bytes
            each got.
        """
        greedy, _, greedyPump = connect(self.factory, peers[0])
        ordinary, _, ordinaryPump = connect(self.factory, peers[1])
        got = {"greedy": 0, "ordinary": 0}

        def again(data, who, client, n):
            got[who] += len(data)
            client.readBlocking(n).addCallback(again, who, client, n)

        for _ in range(greedyReads):
            greedy.readBlocking(255).addCallback(again, "greedy", greedy, 255)
        ordinary.readBlocking(32).addCallback(again, "ordinary", ordinary, 32)
        greedyPump.flush()
        for _ in range(lumps):
            self.pool.add(b"L" * lump)
            for _ in range(flushes):
                greedyPump.flush()
                ordinaryPump.flush()
            self.clock.advance(0.1)
        return got["ordinary"] / (got["ordinary"] + got["greedy"]), got

    def test_oneAtATimeClientKeepsShare(self):
        """
        A client asking for 32 bytes at a time, a round trip apart, keeps a
        fair share of what arrives in lumps (as keys deliver after their
        health tests) next to a client with many 255-byte reads in flight.
        """
        share, got = self.ordinaryShare(greedyReads=8, lump=2500, lumps=20, flushes=60)
        self.assertGreater(share, 0.35, got)

    def test_oneIdentityStaysFairWithin(self):
        """
        Two connections of one identity (one address) split its part
        between them: the one asking one request at a time still keeps a
        fair share next to the one with many reads in flight.
        """
        share, got = self.ordinaryShare(greedyReads=8, lump=2500, lumps=20, flushes=60,
                                        peers=(tcp("10.0.0.5", 1), tcp("10.0.0.5", 2)))
        self.assertGreater(share, 0.35, got)

    def test_slowKeyLongRunKeepsShare(self):
        """
        From a slow key, a run of pipelined reads takes longer than
        L{ACTIVE_WINDOW} to fill; the client waiting on it stays active and
        keeps its share next to a one-at-a-time client: each gets about
        half.
        """
        share, got = self.ordinaryShare(greedyReads=16, lump=400, lumps=100, flushes=20)
        self.assertTrue(0.4 < share < 0.6, got)

    def test_deepPipeline(self):
        """
        Thousands of pipelined blocking reads, served at once from a full
        pool, are answered in order without recursing once per command.
        """
        client, server, pump = connect(self.factory)
        self.pool.add(bytes(range(256)) * 16)
        results = [client.readBlocking(2) for _ in range(2000)]
        pump.flush()
        self.assertEqual(b"".join(self.successResultOf(d) for d in results),
                         (bytes(range(256)) * 16)[:4000])

    def test_pipelinedReadsOneWrite(self):
        """
        Blocking reads pipelined back to back, which the pool can answer
        now, are answered with one write; every read is counted.
        """
        writes = []
        server = self.factory.buildProtocol(None)
        transport = StringTransport()
        transport.write = writes.append
        server.makeConnection(transport)
        data = bytes(range(256)) * 4
        self.pool.add(data)
        server.dataReceived(b"\x02\x20" * 10 + b"\x00" + b"\x02\x10" * 3)
        self.assertEqual(writes, [data[:320], (8 * (1024 - 320)).to_bytes(4, "big"),
                                  data[320:368]])
        self.assertEqual(server.requests["ReadBlocking"], 13)
        self.assertEqual(self.factory.requests["ReadBlocking"], 13)
        self.assertEqual(server.bytesServed, 368)

    def test_runLongerThanPool(self):
        """
        A run of blocking reads longer than the pool holds gets what there
        is at once and the rest as it arrives, in order and each byte once;
        the command after it waits for the whole run.
        """
        client, server, pump = connect(self.factory)
        self.pool.add(b"a" * 100)
        reads = [client.readBlocking(64) for _ in range(4)]
        level = client.level()
        pump.flush()
        self.assertEqual(self.successResultOf(reads[0]), b"a" * 64)
        self.assertNoResult(reads[1])
        self.assertNoResult(level)
        self.pool.add(b"b" * 200)
        pump.flush()
        self.assertEqual(b"".join(self.successResultOf(d) for d in reads[1:]),
                         b"a" * 36 + b"b" * 156)
        self.assertEqual(self.successResultOf(level), 44 * 8)
        self.assertEqual(server.requests["ReadBlocking"], 4)

    def test_runWaitsItsTurn(self):
        """
        A run of blocking reads does not take ahead of a reader already
        waiting: what arrives is shared.
        """
        first, firstServer, firstPump = connect(self.factory)
        waiting = first.readBlocking(200)
        firstPump.flush()
        second, secondServer, secondPump = connect(self.factory)
        run = [second.readBlocking(100) for _ in range(2)]
        secondPump.flush()
        self.pool.add(b"z" * 200)
        firstPump.flush()
        secondPump.flush()
        self.assertNoResult(waiting)
        self.assertNoResult(run[1])
        self.assertGreater(firstServer.bytesServed, 0)
        self.assertGreater(secondServer.bytesServed, 0)
        self.assertEqual(firstServer.bytesServed + secondServer.bytesServed, 200)

    def test_unknownCommand(self):
        """
        An unknown command closes that connection at once (the stream
        cannot be trusted, so even the commands pipelined before it go
        unanswered), is counted, and leaves other clients alone.
        """
        bad, _, badPump = connect(self.factory)
        good, _, goodPump = connect(self.factory)
        pending = bad.level()
        bad.transport.write(b"\x09")
        badPump.flush()
        self.failureResultOf(pending, EGDConnectionLost)
        self.assertEqual(self.factory.protocolErrors, 1)
        self.pool.add(b"ok")
        d = good.read(2)
        goodPump.flush()
        self.assertEqual(self.successResultOf(d), b"ok")
        self.assertEqual(len(self.factory.clients), 1)

    def test_vanishedClientLosesNothing(self):
        """
        A client that disconnects mid-request leaves the pool's bytes for
        others, and its request is dropped.
        """
        gone, server, pump = connect(self.factory)
        d = gone.readBlocking(200)
        pump.flush()
        self.pool.add(b"m" * 50)
        pump.flush()
        gone.transport.loseConnection()
        pump.flush()
        self.failureResultOf(d, EGDConnectionLost)
        self.assertEqual(self.pool.waiting, 0)
        self.pool.add(b"n" * 50)
        self.assertEqual(self.pool.take(100), b"n" * 50)

    def test_slowReaderBounded(self):
        """
        A client that never reads makes the server stop taking bytes from
        the pool and stop reading its commands.
        """
        server = self.factory.buildProtocol(None)
        transport = StringTransport()
        server.makeConnection(transport)
        self.assertIs(transport.producer, server)
        server.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        server.dataReceived(b"\x02\xff" * 10)
        self.pool.add(b"p" * 1000)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.pool.level, 1000)
        server.resumeProducing()
        self.assertEqual(len(transport.value()), 1000)

    def test_tlsRepliesBatched(self):
        """
        Over TLS, the replies written in one reactor turn go out as one
        write (one TLS record); nothing goes out once the client broke the
        protocol.
        """
        server = self.factory.buildProtocol(None)
        transport = StringTransport()
        directlyProvides(transport, ISSLTransport)
        writes = []
        transport.write = writes.append
        server.makeConnection(transport)
        self.pool.add(b"0123")
        server.dataReceived(b"\x00\x01\x02")
        server.dataReceived(b"\x04")
        self.assertEqual(writes, [])
        self.clock.advance(0)
        self.assertEqual(writes, [(32).to_bytes(4, "big") + b"\x0201" + b"\x044242"])
        server.dataReceived(b"\x00")
        server.dataReceived(b"\x09")
        self.clock.advance(0)
        self.assertEqual(len(writes), 1)
        self.assertEqual(self.factory.protocolErrors, 1)

    def test_queueBounded(self):
        """
        Commands queued behind a blocking read stop the server reading
        from that client once they reach the bound.
        """
        server = self.factory.buildProtocol(None)
        transport = StringTransport()
        server.makeConnection(transport)
        server.dataReceived(b"\x02\x01" + b"\x00" * (MAX_QUEUED_COMMANDS + 5))
        self.assertEqual(transport.producerState, "paused")
        self.pool.add(b"!")
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(len(transport.value()), 1 + 4 * (MAX_QUEUED_COMMANDS + 5))


class LimitTests(unittest.TestCase):
    """
    Per-client rates, the client cap, the idle time-out and the pending
    bytes cap.
    """

    def setUp(self):
        self.clock = Clock()
        self.pool = EntropyPool(1 << 20)

    def factory(self, **kwargs):
        return EGDServerFactory(self.pool, clock=self.clock, **kwargs)

    def test_rateLimitedBlockingRead(self):
        """
        A client over its rate waits for its bucket to refill rather than
        being disconnected; its blocking read completes at the rate.
        """
        factory = self.factory(limiter=RateLimiter(rate=100, burst=100))
        client, server, pump = connect(factory)
        self.pool.add(b"r" * 1000)
        d = client.readBlocking(250)
        pump.flush()
        self.assertNoResult(d)
        self.assertEqual(server.bytesServed, 100)
        self.clock.advance(1)
        pump.flush()
        self.assertEqual(server.bytesServed, 200)
        self.clock.advance(0.5)
        pump.flush()
        self.assertEqual(self.successResultOf(d), b"r" * 250)

    def test_rateLimitedNonBlockingRead(self):
        """
        A non-blocking read gets no more than the client's bucket holds.
        """
        factory = self.factory(limiter=RateLimiter(rate=10, burst=50))
        client, server, pump = connect(factory)
        self.pool.add(b"n" * 1000)
        first, second = client.read(255), client.read(255)
        pump.flush()
        self.assertEqual(len(self.successResultOf(first)), 50)
        self.assertEqual(self.successResultOf(second), b"")

    def test_maxClients(self):
        """
        Clients beyond the cap are refused at once and counted; room comes
        back when one leaves.
        """
        factory = self.factory(maxClients=2)
        connections = [connect(factory) for _ in range(3)]
        for _, _, pump in connections:
            pump.flush()
        self.assertEqual(len(factory.clients), 2)
        self.assertEqual(factory.refused, 1)
        self.failureResultOf(connections[2][0].level(), EGDConnectionLost)
        connections[0][0].transport.loseConnection()
        connections[0][2].flush()
        self.assertEqual(len(factory.clients), 1)

    def test_idleTimeout(self):
        """
        A connection that asks for nothing is closed after the idle time;
        one waiting on a blocking read is not idle.
        """
        factory = self.factory(idleTimeout=30)
        idle, _, idlePump = connect(factory)
        waiting, _, waitingPump = connect(factory)
        d = waiting.readBlocking(10)
        waitingPump.flush()
        self.clock.advance(31)
        idlePump.flush()
        waitingPump.flush()
        self.assertFalse(idle.connected)
        self.assertTrue(waiting.connected)
        self.assertEqual(factory.idleClosed, 1)
        self.pool.add(b"w" * 10)
        waitingPump.flush()
        self.assertEqual(self.successResultOf(d), b"w" * 10)

    def test_pendingBytesCap(self):
        """
        A client that asks for more than the pending cap stops being read
        until what it asked for has been served.
        """
        factory = self.factory(maxPendingBytes=1000)
        server = factory.buildProtocol(None)
        transport = StringTransport()
        server.makeConnection(transport)
        server.dataReceived(b"\x02\xff" * 10)
        self.assertEqual(transport.producerState, "paused")
        self.pool.add(b"p" * 2550)
        self.assertEqual(transport.producerState, "producing")


def tcp(host, port=40000):
    """
    @return: a TCP peer address.
    """
    return IPv4Address("TCP", host, port)


class UnixPeerTransport(StringTransport):
    """
    A Unix-socket transport whose kernel says the peer runs as C{uid}.
    """

    def __init__(self, uid, pid=4000):
        super().__init__(peerAddress=UNIXAddress(None))
        self._credentials = struct.pack("3i", pid, uid, uid)

    def getHandle(self):
        return self

    def getsockopt(self, level, option, size):
        return self._credentials


class TLSPeerTransport(StringTransport):
    """
    A transport whose peer presented C{certificate} (pyOpenSSL's type, as
    Twisted's TLS transports give it).
    """

    def __init__(self, certificate, host="10.0.0.9"):
        super().__init__(peerAddress=tcp(host))
        self._certificate = crypto.X509.from_cryptography(certificate)

    def getPeerCertificate(self):
        return self._certificate


def makeCertificate(*commonNames):
    """
    @return: a self-signed certificate whose subject holds C{commonNames},
        in order.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in commonNames])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))


class IdentityTests(unittest.TestCase):
    """
    Clients are known by identity (Unix user, certificate fingerprint,
    address), and fair shares and rate limits are per identity, not per
    connection.
    """

    def setUp(self):
        self.clock = Clock()
        self.pool = EntropyPool(1 << 20)

    def fill(self):
        """
        Put 1,000 bytes in the pool in small arrivals, so that a reader's
        share holds little of it and the rate limit alone decides.
        """
        for _ in range(1000 // 25):
            self.pool.add(b"f" * 25)

    def test_greedyIdentityDoesNotCrowdOut(self):
        """
        Twenty greedy connections of one identity, each with reads in
        flight, beside a single polite connection of another identity
        reading 32 bytes at a time: the polite one gets at least 40% of the
        bytes (per connection, it would get about 5%).
        """
        factory = EGDServerFactory(self.pool, clock=self.clock)
        got = {"greedy": 0, "polite": 0}

        def again(data, who, client, n):
            got[who] += len(data)
            client.readBlocking(n).addCallback(again, who, client, n)

        pumps = []
        for port in range(20):
            greedy, _, pump = connect(factory, tcp("10.0.0.1", 41000 + port))
            for _ in range(2):
                greedy.readBlocking(255).addCallback(again, "greedy", greedy, 255)
            pumps.append(pump)
        polite, _, politePump = connect(factory, tcp("10.0.0.2"))
        polite.readBlocking(32).addCallback(again, "polite", polite, 32)
        pumps.append(politePump)
        for pump in pumps:
            pump.flush()
        for _ in range(40):
            self.pool.add(b"L" * 2500)
            for _ in range(10):
                for pump in pumps:
                    pump.flush()
            self.clock.advance(0.1)
        self.assertGreater(got["greedy"], 0)
        self.assertGreaterEqual(got["polite"] / (got["polite"] + got["greedy"]), 0.4, got)

    def test_rateLimitPerAddress(self):
        """
        Over TCP, connections from one address draw from one bucket; another
        address has its own.
        """
        factory = EGDServerFactory(self.pool, clock=self.clock,
                                   limiter=RateLimiter(rate=10, burst=100))
        self.fill()
        reads = []
        for host, port in (("10.0.0.1", 1), ("10.0.0.1", 2), ("10.0.0.2", 3)):
            client, server, pump = connect(factory, tcp(host, port))
            reads.append(client.read(255))
            pump.flush()
            self.assertEqual(server.identity, f"addr:{host}")
        self.assertEqual([len(self.successResultOf(d)) for d in reads], [100, 0, 100])

    def unixClient(self, factory, uid):
        server = factory.buildProtocol(None)
        transport = UnixPeerTransport(uid)
        server.makeConnection(transport)
        return server, transport

    def test_unixClientsByUser(self):
        """
        Unix-socket clients are known by the user the kernel reports
        (C{SO_PEERCRED}), shown as C{uid:N}; connections of one user share
        a bucket, another user has its own (not one bucket for every Unix
        client).
        """
        factory = EGDServerFactory(self.pool, clock=self.clock,
                                   limiter=RateLimiter(rate=10, burst=100))
        self.fill()
        clients = [self.unixClient(factory, uid) for uid in (1000, 1000, 1001)]
        self.assertEqual([server.identity for server, _ in clients],
                         ["uid:1000", "uid:1000", "uid:1001"])
        for server, transport in clients:
            server.dataReceived(b"\x01\xff")
        self.assertEqual([transport.value()[0] for _, transport in clients], [100, 0, 100])

    def tlsClient(self, factory, certificate, host="10.0.0.9"):
        server = factory.buildProtocol(None)
        transport = TLSPeerTransport(certificate, host)
        server.makeConnection(transport)
        server.handshakeCompleted()
        return server, transport

    def test_tlsClientsByFingerprint(self):
        """
        TLS clients with a certificate are known by its SHA-256 fingerprint,
        shown with its common name: two certificates with one name are two
        identities, each with its own bucket, even from one address.
        """
        factory = EGDServerFactory(self.pool, clock=self.clock,
                                   limiter=RateLimiter(rate=10, burst=100))
        self.fill()
        first, second = makeCertificate("relay.example"), makeCertificate("relay.example")
        clients = [self.tlsClient(factory, certificate) for certificate in (first, second)]
        fingerprint = first.fingerprint(hashes.SHA256()).hex()
        self.assertEqual(clients[0][0].identity, f"relay.example sha256:{fingerprint[:16]}")
        self.assertNotEqual(clients[0][0].identity, clients[1][0].identity)
        for server, transport in clients:
            server.dataReceived(b"\x01\xff")
        self.assertEqual([transport.value()[0] for _, transport in clients], [100, 100])

    def test_secondCommonNameIsNoIdentity(self):
        """
        A certificate with two common names, the last one another client's,
        does not take that client's identity (nor its bucket): the key is
        the fingerprint, and both names are shown.
        """
        victim = makeCertificate("victim.example")
        impostor = makeCertificate("impostor.example", "victim.example")
        victimIdentity = certificateIdentity(crypto.X509.from_cryptography(victim))
        impostorIdentity = certificateIdentity(impostor)
        self.assertEqual(victimIdentity.key,
                         "sha256:" + victim.fingerprint(hashes.SHA256()).hex())
        self.assertNotEqual(impostorIdentity.key, victimIdentity.key)
        self.assertTrue(impostorIdentity.display.startswith(
            "impostor.example+victim.example sha256:"), impostorIdentity.display)
        factory = EGDServerFactory(self.pool, clock=self.clock,
                                   limiter=RateLimiter(rate=10, burst=100))
        self.fill()
        impostorServer, impostorTransport = self.tlsClient(factory, impostor)
        impostorServer.dataReceived(b"\x01\xff")
        victimServer, victimTransport = self.tlsClient(factory, victim)
        victimServer.dataReceived(b"\x01\xff")
        self.assertEqual(victimTransport.value()[0], 100)

    def test_certificateIdentityOfDER(self):
        """
        L{certificateIdentity} hashes the certificate's DER encoding, the
        same for pyOpenSSL's type and cryptography's.
        """
        certificate = makeCertificate("a")
        expected = "sha256:" + hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()
        self.assertEqual(certificateIdentity(certificate).key, expected)
        self.assertEqual(
            certificateIdentity(crypto.X509.from_cryptography(certificate)).key, expected)


class ClientTests(unittest.TestCase):
    """
    The client's API.
    """

    def test_readExactlySplits(self):
        """
        Reading more than 255 bytes pipelines several requests.
        """
        pool = EntropyPool(4096)
        client, server, pump = connect(EGDServerFactory(pool, clock=Clock()))
        pool.add(bytes(range(256)) * 3)
        d = Deferred.fromCoroutine(readExactly(client, 600))
        pump.flush()
        self.assertEqual(self.successResultOf(d), (bytes(range(256)) * 3)[:600])
        self.assertEqual(server.requests["ReadBlocking"], 3)

    def test_notConnected(self):
        """
        Requests on a closed connection fail at once.
        """
        client = EGDClientProtocol()
        self.failureResultOf(client.level(), EGDConnectionLost)
