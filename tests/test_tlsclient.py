"""
Tests for L{ekey.services.tlsclient}: a C{tls:} upstream's endpoint limits
TLS 1.2 to AEAD suites and still checks the server's chain and name.

The endpoint is built from its description on a L{MemoryReactorClock}
(through C{endpoint=tcp:...}, so that no name is resolved); the factory it
connects is then joined to an in-memory TLS server with L{iosim}.
"""

from __future__ import annotations

import os

from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import (
    AcceptableCiphers,
    CertificateOptions,
    PrivateCertificate,
    TLSVersion,
)
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from twisted.trial import unittest
from zope.interface import implementer

from ekey.core.pool import EntropyPool
from ekey.services.mtls import mutualTLSOptions
from ekey.services.upstream import PullPolicy, UpstreamService
from ekey.services.tlsclient import clientEndpoint
from tests.interop.tlspeers import (
    quoteEndpointArgument,
    writeCertificateAuthority,
    writeHostCertificate,
)

#: The suite the weak server offers: TLS 1.2, ECDHE-ECDSA (the test certificates
#: are ECDSA; the RSA suite AES128-SHA would need an RSA one), AES-CBC, SHA-1.
CBC_SHA1 = "ECDHE-ECDSA-AES128-SHA"


@implementer(IHandshakeListener)
class Recorder(Protocol):
    """
    Remember whether the TLS handshake completed and what ended the
    connection.
    """

    def __init__(self):
        self.handshook = False
        self.reason = None

    def handshakeCompleted(self):
        self.handshook = True

    def connectionLost(self, reason):
        self.reason = reason


class TLSClientTests(unittest.TestCase):
    """
    A C{tls:} description gives an endpoint that refuses CBC-SHA1 suites and
    unverified servers, and works with an AEAD server it can verify.
    """

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        self.trust = os.path.join(self.directory, "trust")
        self.ca = writeCertificateAuthority(self.trust)
        self.other = writeCertificateAuthority(os.path.join(self.directory, "other"),
                                               "another CA")

    def serverOptions(self, hostname="localhost", ca=None, ciphers=None,
                      maximum=TLSVersion.TLSv1_2, requireClient=False):
        """
        @return: TLS options for an in-memory server with a certificate for
            C{hostname} from C{ca} (default the trusted one), offering only
            C{ciphers} (an OpenSSL cipher string) if given, at most TLS
            C{maximum}.
        """
        certificate, key = writeHostCertificate(self.directory, hostname, ca or self.ca,
                                                name=f"server-{len(os.listdir(self.directory))}")
        if requireClient:
            return mutualTLSOptions(certificate, key, os.path.join(self.trust, "ca.pem"))
        with open(certificate, "rb") as c, open(key, "rb") as k:
            server = PrivateCertificate.loadPEM(c.read() + b"\n" + k.read())
        kwargs = {}
        if ciphers is not None:
            kwargs["acceptableCiphers"] = AcceptableCiphers.fromOpenSSLCipherString(ciphers)
        return CertificateOptions(privateKey=server.privateKey.original,
                                  certificate=server.original,
                                  lowerMaximumSecurityTo=maximum, **kwargs)

    def description(self, extra=""):
        q = quoteEndpointArgument
        return (f"tls:localhost:8888:trustRoots={q(self.trust)}{extra}"
                f":endpoint=tcp\\:127.0.0.1\\:8888")

    def connect(self, serverOptions, description=None, build=clientEndpoint):
        """
        Connect the endpoint built by C{build} from C{description} to an
        in-memory server with C{serverOptions}, and run the conversation.

        @return: the client's and the server's L{Recorder}.
        """
        reactor = MemoryReactorClock()
        endpoint = build(reactor, description or self.description())
        client = Recorder()
        endpoint.connect(Factory.forProtocol(lambda: client))
        return self.join(reactor, serverOptions, client)

    def join(self, reactor, serverOptions, client=None):
        """
        Join the one connection attempted on C{reactor} to an in-memory
        server with C{serverOptions}, and run the conversation.

        @return: the client's (C{client}) and the server's L{Recorder}.
        """
        [(host, port, factory, timeout, bindAddress)] = reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 8888))
        server = Recorder()
        serverSide = TLSMemoryBIOFactory(serverOptions, False,
                                         Factory.forProtocol(lambda: server)).buildProtocol(None)
        clientSide = factory.buildProtocol(None)
        pump = iosim.connect(serverSide, iosim.makeFakeServer(serverSide),
                             clientSide, iosim.makeFakeClient(clientSide))
        for _ in range(20):
            pump.pump()
        return client, server

    def test_aeadServerServed(self):
        """
        A server offering TLS 1.2 with its default suites (AEAD first),
        whose certificate names the host and chains to the trust roots,
        completes the handshake.
        """
        client, server = self.connect(self.serverOptions())
        self.assertTrue(client.handshook)
        self.assertTrue(server.handshook)
        self.assertIsNone(client.reason)

    def test_tls13Served(self):
        """
        A TLS 1.3 server is talked to (its suites are all AEAD).
        """
        client, _ = self.connect(self.serverOptions(maximum=TLSVersion.TLSv1_3))
        self.assertTrue(client.handshook)

    def test_cbcServerRefused(self):
        """
        A server offering only TLS 1.2 with AES-CBC and SHA-1 is refused:
        the handshake fails on both sides.
        """
        client, server = self.connect(self.serverOptions(ciphers=CBC_SHA1))
        self.assertFalse(client.handshook)
        self.assertFalse(server.handshook)
        self.assertIsNotNone(client.reason)

    def test_cbcCheckCanFail(self):
        """
        Twisted's own C{tls:} endpoint talks to that CBC-SHA1 server: the
        refusal above is this module's doing.
        """
        client, _ = self.connect(self.serverOptions(ciphers=CBC_SHA1), build=clientFromString)
        self.assertTrue(client.handshook)

    def test_nameChecked(self):
        """
        A certificate from the trusted CA for another host is refused.
        """
        client, _ = self.connect(self.serverOptions(hostname="elsewhere.example"))
        self.assertFalse(client.handshook)
        self.assertIsNotNone(client.reason)

    def test_chainChecked(self):
        """
        A certificate for the right host from another CA is refused.
        """
        client, _ = self.connect(self.serverOptions(ca=self.other))
        self.assertFalse(client.handshook)
        self.assertIsNotNone(client.reason)

    def test_clientCertificateSent(self):
        """
        C{certificate=} and C{privateKey=} are sent to a server that
        requires a client certificate; without them it refuses.
        """
        certificate, key = writeHostCertificate(self.directory, "client", self.ca)
        q = quoteEndpointArgument
        client, server = self.connect(
            self.serverOptions(requireClient=True),
            self.description(f":certificate={q(certificate)}:privateKey={q(key)}"))
        self.assertTrue(server.handshook)
        client, server = self.connect(self.serverOptions(requireClient=True))
        self.assertFalse(server.handshook)

    def test_upstreamsUseIt(self):
        """
        An C{--upstream tls:...} connects through this endpoint: the
        CBC-SHA1 server is refused, and the upstream says why.
        """
        reactor = MemoryReactorClock()
        policy = PullPolicy(EntropyPool(4096), 1024, 2048, reactor=reactor)
        service = UpstreamService(self.description(), policy, reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        self.join(reactor, self.serverOptions(ciphers=CBC_SHA1))
        upstream = service.upstream
        self.assertIsNone(upstream.connection)
        self.assertEqual(upstream.connections, 0)
        self.assertIn("TLS handshake failed", upstream.lastError)

    def test_otherTypesUnchanged(self):
        """
        Descriptions of other types are Twisted's own endpoints; a keyword
        C{tls:} does not take is refused, as Twisted refuses it.
        """
        reactor = MemoryReactorClock()
        for description in ("tcp:127.0.0.1:8888", "unix:/run/ekey/egd"):
            self.assertIs(type(clientEndpoint(reactor, description)),
                          type(clientFromString(reactor, description)))
        self.assertRaises(TypeError, clientEndpoint, reactor,
                          "tls:localhost:8888:ciphers=ALL")
        self.assertRaises(TypeError, clientFromString, reactor,
                          "tls:localhost:8888:ciphers=ALL")
