"""
Relays end to end, as real processes over real (loopback) TLS: a chain of
our daemons, the faults a chain meets, the C{mtls:} listener against our
client and C{openssl s_client}, and relays in front of the real C{ekeyd}
1.1.5, directly and through C{stunnel}.

The chain is

    ekey-sim --seed S --rate 0 (Unix socket)
      -> daemon A (the key; mtls: listener on 127.0.0.1)
      -> relay B (--upstream tls:localhost:PORT_A with B's certificate; mtls: listener)
      -> relay C (--upstream tls:localhost:PORT_B with C's certificate; unix: listener)
      -> clients of C

with every certificate made by L{ekey.cli.certs} in the test's temporary
directory.  Since the simulator is seeded, what clients receive can be
compared with the plaintext the key produced (L{ekey.services.simulator.seededBlock}).
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
from typing import List, Sequence, Tuple

from twisted.trial.unittest import TestCase

from ekey.core.units import BLOCK_SIZE
from tests.interop.egdsockets import EGDUnixSocket
from tests.interop.processes import (
    RunningProcess,
    assertNoTraceback,
    daemonLog,
    freeTCPPort,
    makeTempDir,
    pythonEnvironment,
    restartProcess,
    socketPath,
    startDaemon,
    startEkeydEGD,
    startRelay,
    startSimulator,
    waitFor,
    waitForListening,
    waitForListeningTCP,
    waitForLog,
    writeKeyring,
)
from tests.interop.requirements import findPeer
from tests.interop.seeded import describeMismatch, seededPlaintext, traceServed
from tests.interop.tlspeers import (
    mtlsServerEndpoint,
    runOpenSSLClient,
    startStunnel,
    tlsClientEndpoint,
    writeCertificateAuthority,
    writeHostCertificate,
)

SEED = b"ekey-interop-relay"

# Key daemon A's pool: small, so that it is full (and the simulator's
# output is being refused) long before anything here reaches its end.
KEY_POOL_SIZE = 256 * 1024

# Refusals by the mtls: listener as OpenSSL reports them.
ALERTS = ("alert", "certificate required", "unknown ca", "certificate expired",
          "handshake failure", "bad certificate")


def egdClient(endpoint: str, verb: str, *arguments: str,
              timeout: float = 15.0) -> subprocess.Popen:
    """
    Start our EGD client (C{ekey-egd}, from the source tree) on
    C{endpoint}; the caller waits for it with L{finishClient}.
    """
    argv = [sys.executable, "-c", "from ekey.cli.egd import main; main()",
            "--timeout", f"{timeout:g}", "--connect", endpoint, verb] + list(arguments)
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=pythonEnvironment(),
                            start_new_session=True)


def finishClient(client: subprocess.Popen, timeout: float = 25.0) -> Tuple[bytes, bytes]:
    """
    Wait for an L{egdClient} to finish; kill it if it has not within
    C{timeout} seconds (the wait then raises L{subprocess.TimeoutExpired}).

    @return: its standard output and standard error.
    """
    try:
        return client.communicate(timeout=timeout)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()


class _RelayFixture:
    """
    Certificates, the simulated key, key daemon A and relays B and C, as
    the tests need them.
    """

    def setUp(self):
        self.directory = makeTempDir(self)
        self.pki = os.path.join(self.directory, "pki")
        self.ca = writeCertificateAuthority(self.pki)
        self.caFile = os.path.join(self.pki, "ca.pem")
        # Servers are reached as "localhost"; B's certificate serves it
        # both as A's client and as C's server.
        self.aCertificate = writeHostCertificate(self.pki, "localhost", self.ca, name="a")
        self.bCertificate = writeHostCertificate(self.pki, "localhost", self.ca, name="b")
        self.cCertificate = writeHostCertificate(self.pki, "relay-c", self.ca, name="c")
        self.keyring = writeKeyring(os.path.join(self.directory, "keyring"))
        self.keySocket = socketPath(self, self.directory)
        self.processes: List[RunningProcess] = []

    def tearDown(self):
        for process in self.processes:
            process.kill()
        assertNoTraceback(self, *[daemonLog(p) + p.stderr() for p in self.processes
                                  if getattr(p, "logPath", None)])

    def startKeyDaemon(self, wait: bool = True) -> RunningProcess:
        """
        Start the seeded simulator and daemon A, serving it on an C{mtls:}
        port (C{self.portA}).

        @param wait: wait until A listens.
        """
        self.simulator = startSimulator(self, self.directory, listen=self.keySocket,
                                        seed=SEED, rate=0)
        self.portA = freeTCPPort()
        certificate, key = self.aCertificate
        self.daemonA = startDaemon(
            self, self.directory, [self.keySocket], self.keyring, None, name="A",
            extra=["--port", mtlsServerEndpoint(self.portA, certificate, key, self.caFile),
                   "--pool-size", str(KEY_POOL_SIZE)])
        self.processes.append(self.daemonA)
        if wait:
            waitForListeningTCP(self.portA, process=self.daemonA)
        return self.daemonA

    def startRelayB(self, wait: bool = True) -> RunningProcess:
        """
        Start relay B, pulling from A over TLS and serving on an C{mtls:}
        port (C{self.portB}).

        @param wait: wait until B listens.
        """
        certificate, key = self.bCertificate
        self.portB = freeTCPPort()
        self.relayB = startRelay(
            self, self.directory, name="B",
            upstreams=[tlsClientEndpoint("localhost", self.portA, self.pki, certificate, key)],
            ports=[mtlsServerEndpoint(self.portB, certificate, key, self.caFile)])
        self.processes.append(self.relayB)
        if wait:
            waitForListeningTCP(self.portB, process=self.relayB)
        return self.relayB

    def startRelayC(self, extra: Sequence[str] = ()) -> RunningProcess:
        """
        Start relay C, pulling from B (C{self.portB}) over TLS and serving
        on a Unix socket (C{self.socketC}).
        """
        certificate, key = self.cCertificate
        self.socketC = socketPath(self, self.directory, "c.sock")
        self.upstreamC = tlsClientEndpoint("localhost", self.portB, self.pki, certificate, key)
        self.relayC = startRelay(self, self.directory, name="C", upstreams=[self.upstreamC],
                                 ports=[f"unix:{self.socketC}"], extra=extra)
        self.processes.append(self.relayC)
        waitForListening(self.socketC, process=self.relayC)
        return self.relayC

    def startChain(self, extraC: Sequence[str] = ()) -> None:
        """
        Start the simulator, A, B and C, overlapping their start-ups (an
        upstream not listening yet is retried).
        """
        self.startKeyDaemon(wait=False)
        self.startRelayB(wait=False)
        waitForListeningTCP(self.portA, process=self.daemonA)
        self.startRelayC(extraC)
        waitForListeningTCP(self.portB, process=self.relayB)

    def levelOfC(self) -> int:
        """
        @return: the bytes relay C's pool holds (its 0x00 answer over 8).
        """
        with EGDUnixSocket(self.socketC, timeout=5.0) as client:
            return client.level() // 8


class RelayChainTests(_RelayFixture, TestCase):
    """
    Key, daemon, relay, relay: clients at the end of the chain get the
    key's plaintext, in order, each byte once.
    """

    def test_singleClientGetsSeededStreamInOrder(self):
        """
        A fresh client of the last relay, reading 64 KiB with blocking
        reads, gets exactly the first 64 KiB the key produced: the oldest
        bytes of every pool on the way come first.
        """
        self.startChain()
        size = 64 * 1024
        with EGDUnixSocket(self.socketC, timeout=40.0) as client:
            data = client.get(size)
        expected = seededPlaintext(SEED, size // BLOCK_SIZE)
        if data != expected:
            self.fail("the chain's output is not the seeded stream: "
                      + describeMismatch(expected, data))

    def test_concurrentClientsShareEachByteOnce(self):
        """
        Three clients reading from the last relay at once, in whole blocks,
        share out the start of the key's stream: each gets seeded blocks in
        order, and together they get all of its first blocks, none twice.
        """
        self.startChain()
        size = 8 * 1024
        # With the pool well stocked, every turn is a whole 32-byte block.
        waitFor(lambda: self.levelOfC() >= 3 * size, 30.0, "relay C to fill its pool",
                self.relayC)
        clients = [EGDUnixSocket(self.socketC, timeout=40.0) for _ in range(3)]
        for client in clients:
            self.addCleanup(client.close)
        read = 7 * BLOCK_SIZE
        for client in clients:
            client.send(b"".join(bytes((0x02, min(read, size - offset)))
                                 for offset in range(0, size, read)))
        received = [client.recvExactly(size, "a client's blocking reads") for client in clients]
        # Each client's blocks in the key's order, no byte to two clients...
        traced = traceServed(received, [SEED])
        for pieces in traced:
            self.assertGreater(len(pieces), 0)
        # ...and together every byte of the key's first blocks.
        everything = {piece.index for pieces in traced for piece in pieces}
        self.assertEqual(sorted(everything), list(range(3 * size // BLOCK_SIZE)),
                         "the clients did not get the key's first blocks")
        self.assertEqual(sum(piece.end - piece.start for pieces in traced for piece in pieces),
                         3 * size)


class RelayFaultTests(_RelayFixture, TestCase):
    """
    A relay whose upstream goes away keeps its clients and serves what it
    holds; upstreams and clients with the wrong certificates are refused.
    """

    def assertUpstreamOutageSurvived(self, stopSignal: int) -> None:
        """
        Stop B with C{stopSignal} while C's client waits on a blocking read,
        then start B again: the client is served what C held, stays
        connected, and gets the rest once B is back.
        """
        highWater = 8192
        self.startChain(extraC=["--pool-size", "16384", "--low-water", "2048",
                                "--high-water", str(highWater)])
        waitFor(lambda: self.levelOfC() >= highWater, 20.0, "relay C to fill its pool",
                self.relayC)
        logStart = len(daemonLog(self.relayC))
        self.relayB.process.send_signal(stopSignal)
        self.relayB.wait(10.0)
        waitForLog(self.relayC, "Every upstream is down", 10.0, start=logStart)
        lost = waitForLog(self.relayC, f"Upstream {self.upstreamC} lost", 1.0, start=logStart)
        held = self.levelOfC()
        self.assertGreaterEqual(held, highWater)
        more = 2048
        with EGDUnixSocket(self.socketC, timeout=30.0) as client:
            wanted = held + more
            client.send(b"".join(bytes((0x02, min(255, wanted - offset)))
                                 for offset in range(0, wanted, 255)))
            first = client.recvExactly(held, "what relay C held")
            client.assertNothingMore(0.5)  # waiting, and still connected
            self.relayB = restartProcess(self, self.relayB, self.directory)
            self.processes.append(self.relayB)
            waitForListeningTCP(self.portB, process=self.relayB)
            rest = client.recvExactly(more, "the rest, once B is back")
        waitForLog(self.relayC, "An upstream is back", 10.0, start=logStart)
        # The key's blocks from its first, in order, each once, across the
        # outage.
        [pieces] = traceServed([first + rest], [SEED])
        self.assertEqual((pieces[0].index, pieces[0].start), (0, 0),
                         "the client's first bytes are not the key's first")
        self.assertIn(self.upstreamC, lost)

    def test_upstreamKilled(self):
        """
        SIGKILL of the middle relay: its client relay keeps its own client
        connected, serves what its pool holds, says every upstream is
        down, and resumes when the middle relay is back.
        """
        self.assertUpstreamOutageSurvived(signal.SIGKILL)

    def test_upstreamStopped(self):
        """
        SIGTERM of the middle relay (a clean stop) is survived the same way.
        """
        self.assertUpstreamOutageSurvived(signal.SIGTERM)

    def test_upstreamCertificateNamesAnotherHost(self):
        """
        An upstream whose certificate (from the right CA) names another
        host is refused, and the relay's log says that the certificate
        does not name the host; nothing reaches its clients.
        """
        wrong = writeHostCertificate(self.pki, "elsewhere.example", self.ca, name="elsewhere")
        self.portB = freeTCPPort()
        # B's own upstream does not matter here: nothing listens there.
        self.relayB = startRelay(
            self, self.directory, name="B", upstreams=[f"tcp:127.0.0.1:{freeTCPPort()}"],
            ports=[mtlsServerEndpoint(self.portB, *wrong, self.caFile)])
        self.processes.append(self.relayB)
        self.startRelayC()
        waitForListeningTCP(self.portB, process=self.relayB)
        line = waitForLog(self.relayC, "does not name the host", 15.0)
        self.assertIn(f"localhost:{self.portB}", line)
        # And again when C retries; the upstream never counts as back.
        waitFor(lambda: daemonLog(self.relayC).count("does not name the host") >= 2, 15.0,
                "relay C to retry and refuse the upstream again", self.relayC)
        log = daemonLog(self.relayC)
        self.assertNotIn("An upstream is back", log,
                         "relay C says an upstream is back, though none passed the TLS "
                         f"handshake:\n{log[-3000:]}")
        self.assertEqual(self.levelOfC(), 0)


class MutualTLSListenerTests(_RelayFixture, TestCase):
    """
    The C{mtls:} listener serves clients holding a certificate from its CA
    and refuses every other: no certificate, one from another CA, an
    expired one.  Checked with our client over C{tls:} and with
    C{openssl s_client}.
    """

    def setUp(self):
        _RelayFixture.setUp(self)
        self.startKeyDaemon()
        self.otherPKI = os.path.join(self.directory, "other-pki")
        otherCA = writeCertificateAuthority(self.otherPKI, "another CA")
        self.otherCertificate = writeHostCertificate(self.otherPKI, "relay-c", otherCA,
                                                     name="c")
        ended = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=3)
        self.expiredCertificate = writeHostCertificate(self.pki, "relay-c", self.ca, days=1,
                                                       notBefore=ended, name="expired")

    def assertOurClientRefused(self, certificates) -> None:
        """
        Our client, over C{tls:} with the right trust root and each of
        C{certificates} (C{None} for none), gets no entropy and fails with
        a TLS alert.
        """
        clients = [
            egdClient(tlsClientEndpoint("localhost", self.portA, self.pki,
                                        *(certificate or (None, None))), "get", "32")
            for certificate in certificates
        ]
        for client, certificate in zip(clients, certificates):
            out, err = finishClient(client)
            err = err.decode("utf-8", "replace")
            self.assertNotEqual(client.returncode, 0, f"with {certificate}: {err}")
            self.assertEqual(out, b"", f"with {certificate}, entropy was served")
            self.assertTrue(any(alert in err for alert in ALERTS),
                            f"with {certificate}, no TLS alert: {err}")

    def assertOpenSSLRefused(self, arguments: Sequence[str]) -> str:
        """
        C{openssl s_client ARGUMENTS}, asking for 32 bytes, gets none: its
        handshake ends with an alert from the listener.

        @return: its standard error.
        """
        returnCode, out, err = runOpenSSLClient(self, self.portA, arguments, b"\x02\x20", 32)
        self.assertEqual(out, b"", f"s_client {arguments} got data: {err}")
        self.assertNotEqual(returnCode, 0, f"s_client {arguments} succeeded: {err}")
        self.assertTrue(any(alert in err for alert in ALERTS),
                        f"s_client {arguments} saw no alert (exit {returnCode}): {err}")
        return err

    def test_clientsFromTheCAAreServed(self):
        """
        Our client and C{openssl s_client}, each with a certificate from the
        listener's CA, are served the key's plaintext: the refusals below
        are the certificates' doing.
        """
        client = egdClient(tlsClientEndpoint("localhost", self.portA, self.pki,
                                             *self.cCertificate), "get", "64")
        out, err = finishClient(client)
        self.assertEqual(client.returncode, 0, err.decode("utf-8", "replace"))
        returnCode, data, sErr = runOpenSSLClient(
            self, self.portA, ["-CAfile", self.caFile, "-cert", self.cCertificate[0],
                               "-key", self.cCertificate[1]], b"\x02\x40", 64)
        self.assertEqual(len(out), 64)
        self.assertEqual(len(data), 64, f"s_client: exit {returnCode}: {sErr}")
        # Seeded blocks of the key, none to both clients.
        traceServed([out, data], [SEED])

    def test_ourClientRefused(self):
        """
        Our client over C{tls:} (trusting the listener's CA) is refused
        without a certificate, with one from another CA, and with an
        expired one from the right CA.
        """
        self.assertOurClientRefused([None, self.otherCertificate, self.expiredCertificate])

    def test_opensslRefused(self):
        """
        C{openssl s_client} is refused with an alert naming the reason:
        without a certificate (whether or not it checks the server), with
        one from another CA, and with an expired one from the right CA.
        """
        err = self.assertOpenSSLRefused(["-CAfile", self.caFile])
        self.assertIn("certificate required", err)
        self.assertOpenSSLRefused([])
        certificate, key = self.otherCertificate
        err = self.assertOpenSSLRefused(["-CAfile", self.caFile, "-cert", certificate,
                                         "-key", key])
        self.assertIn("unknown ca", err)
        certificate, key = self.expiredCertificate
        err = self.assertOpenSSLRefused(["-CAfile", self.caFile, "-cert", certificate,
                                         "-key", key])
        self.assertIn("certificate expired", err)


class EkeydUpstreamTests(_RelayFixture, TestCase):
    """
    A relay pulls from the real C{ekeyd} 1.1.5 as it is: its EGD TCP socket
    directly, and through C{stunnel} for TLS.  ekeyd serves the newest
    blocks first, so what clients get is checked block by block against
    the seeded blocks, not in order.
    """

    def setUp(self):
        _RelayFixture.setUp(self)
        findPeer("ekeyd")
        self.simulator = startSimulator(self, self.directory, listen=self.keySocket,
                                        seed=SEED, rate=0)
        self.ekeyd = startEkeydEGD(self, self.directory, [self.keySocket], self.keyring)

    def assertRelayServesSeededBlocks(self, upstream: str) -> None:
        """
        Relay B on C{upstream} serves its clients seeded blocks, each once.
        """
        socketB = socketPath(self, self.directory, "b.sock")
        self.relayB = startRelay(self, self.directory, name="B", upstreams=[upstream],
                                 ports=[f"unix:{socketB}"],
                                 extra=["--low-water", "2048", "--high-water", "8192"])
        self.processes.append(self.relayB)
        waitForListening(socketB, process=self.relayB)
        size = 8192
        with EGDUnixSocket(socketB, timeout=30.0) as client:
            # Block-aligned reads: 7 blocks each.
            data = b"".join(client.get(7 * BLOCK_SIZE) for _ in range(0, size, 7 * BLOCK_SIZE))
        # Whole seeded blocks, each once; ekeyd serves the newest first, so
        # in no particular order.  The simulator runs far ahead of what
        # ekeyd keeps: look far into its stream.
        traceServed([data], [SEED], ordered=False, limit=1 << 19)

    def test_relayFromEkeyd(self):
        """
        A relay whose upstream is ekeyd's EGD TCP socket serves seeded
        blocks.
        """
        self.assertRelayServesSeededBlocks(f"tcp:127.0.0.1:{self.ekeyd.egdPort}")

    def test_relayFromEkeydThroughStunnel(self):
        """
        A relay reaches ekeyd over TLS through stunnel (a server
        certificate from L{ekey.cli.certs}, checked against the CA) and serves
        seeded blocks.
        """
        stunnelPort = freeTCPPort()
        certificate, key = writeHostCertificate(self.pki, "localhost", self.ca, name="stunnel")
        self.stunnel = startStunnel(self, self.directory, stunnelPort, self.ekeyd.egdPort,
                                    certificate, key)
        self.assertRelayServesSeededBlocks(
            tlsClientEndpoint("localhost", stunnelPort, self.pki))
