# -*- test-case-name: tests.test_mtls -*-
"""
C{mtls:} server endpoints: TLS listeners that only let in clients holding a
certificate signed by a given certificate authority.

Twisted's C{ssl:} server string cannot require client certificates, so
this module adds a server endpoint string parser, exported as a plugin from
C{twisted/plugins/ekey_mtls.py}:

    mtls:PORT:certKey=FILE:privateKey=FILE:caCerts=FILE[:interface=ADDR][:backlog=N]

C{certKey} is the server's certificate (with any intermediates after it),
C{privateKey} its key (it may be the same file), C{caCerts} one or more CA
certificates in PEM; a client completes the handshake only with a
certificate that chains to one of them and is within its validity period.
TLS 1.2 is the minimum, and TLS 1.2 is limited to forward-secret AEAD
suites (L{AEAD_CIPHERS}); TLS 1.3's suites are all AEAD.
"""

from __future__ import annotations

import re

from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.internet.ssl import (
    AcceptableCiphers,
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    TLSVersion,
    trustRootFromCertificates,
)
from twisted.plugin import IPlugin
from twisted.python.filepath import FilePath
from zope.interface import implementer

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)

#: The TLS 1.2 suites accepted: ECDHE key exchange with AES-GCM or
#: ChaCha20-Poly1305, no CBC, no SHA-1 MAC, no static RSA.
AEAD_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def aeadCiphers() -> AcceptableCiphers:
    """
    @return: L{AEAD_CIPHERS} as Twisted's C{acceptableCiphers}, for
        L{CertificateOptions} (servers) and C{optionsForClientTLS}'s
        C{extraCertificateOptions} (clients).
    """
    return AcceptableCiphers.fromOpenSSLCipherString(AEAD_CIPHERS)


def loadCertificates(path: str):
    """
    Read every PEM certificate in a file.

    @return: a list of L{Certificate}.
    @raise ValueError: if the file holds none.
    """
    blocks = _PEM_CERTIFICATE.findall(FilePath(path).getContent())
    if not blocks:
        raise ValueError(f"{path} holds no PEM certificate")
    return [Certificate.loadPEM(block) for block in blocks]


def mutualTLSOptions(certKey: str, privateKey: str, caCerts: str) -> CertificateOptions:
    """
    TLS options for a server that requires client certificates signed by
    the CAs in C{caCerts}.

    @param certKey: PEM file of the server's certificate, then any
        intermediate certificates.
    @param privateKey: PEM file of the server's private key.
    @param caCerts: PEM file of the CA certificates clients must chain to.
    @raise ValueError: if a file holds no certificate.
    @raise OSError: if a file cannot be read.
    """
    chain = loadCertificates(certKey)
    keyPEM = FilePath(privateKey).getContent()
    server = PrivateCertificate.loadPEM(chain[0].dumpPEM() + b"\n" + keyPEM)
    return CertificateOptions(
        privateKey=server.privateKey.original,
        certificate=server.original,
        extraCertChain=[c.original for c in chain[1:]],
        trustRoot=trustRootFromCertificates(loadCertificates(caCerts)),
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=aeadCiphers(),
    )


@implementer(IPlugin, IStreamServerEndpointStringParser)
class MutualTLSServerParser:
    """
    The C{mtls:} server endpoint string parser.
    """

    prefix = "mtls"

    def parseStreamServer(self, reactor, port, certKey=None, privateKey=None, caCerts=None,
                          interface="", backlog=50):
        """
        @return: an L{SSL4ServerEndpoint} requiring client certificates.
        @raise ValueError: if an argument is missing or a file unusable.
        """
        missing = [name for name, value in
                   [("certKey", certKey), ("privateKey", privateKey), ("caCerts", caCerts)]
                   if not value]
        if missing:
            raise ValueError(f"mtls: needs {', '.join(missing)}")
        try:
            options = mutualTLSOptions(certKey, privateKey, caCerts)
        except OSError as e:
            raise ValueError(f"mtls: cannot read {e.filename}: {e.strerror}") from None
        except Exception as e:
            raise ValueError(f"mtls: unusable certificate or key: {e}") from None
        return SSL4ServerEndpoint(reactor, int(port), options, int(backlog), interface)
