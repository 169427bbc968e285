# -*- test-case-name: tests.test_tlsclient -*-
"""
C{tls:} client endpoints whose TLS 1.2 is limited to AEAD suites.

A C{tls:} description (Twisted's C{tls:HOST:PORT[:trustRoots=DIR]
[:certificate=FILE[:privateKey=FILE]][:timeout=N][:bindAddress=ADDR]
[:endpoint=DESCRIPTION]}) cannot say which ciphers to accept, so an
upstream built by C{clientFromString} would take a server's TLS 1.2
CBC-SHA1 suite.  L{clientEndpoint} reads the same description with
Twisted's own parser and builds the same endpoint (C{wrapClientTLS} of
C{optionsForClientTLS}: the chain checked against C{trustRoots}, or the
platform's roots without it; the name checked by C{service_identity}; the
client certificate sent if given), with
C{acceptableCiphers=}L{ekey.services.mtls.aeadCiphers} as the
C{mtls:} listeners have.  TLS 1.2 is the minimum, as Twisted's default;
TLS 1.3's suites are all AEAD.  Other descriptions go to
C{clientFromString} unchanged.
"""

from __future__ import annotations

from twisted.internet import endpoints
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import TLSVersion, optionsForClientTLS

from ekey.services.mtls import aeadCiphers

__all__ = ["clientEndpoint", "tlsClientOptions"]


def tlsClientOptions(host: str, trustRoots=None, certificate=None, privateKey=None):
    """
    The TLS options of a C{tls:} client: Twisted's C{optionsForClientTLS}
    (chain and name verified) with TLS 1.2 limited to AEAD suites.

    @param host: the name the server's certificate must carry.
    @param trustRoots: a directory of CA certificates (PEM), or C{None}
        for the platform's trust roots.
    @param certificate: a PEM file of the client certificate, or C{None}.
    @param privateKey: a PEM file of its key (default: in C{certificate}).
    @return: an C{IOpenSSLClientConnectionCreator}.
    @raise OSError: if a file cannot be read.
    """
    return optionsForClientTLS(
        host,
        trustRoot=endpoints._parseTrustRootPath(trustRoots),
        clientCertificate=endpoints._privateCertFromPaths(certificate, privateKey),
        extraCertificateOptions={"acceptableCiphers": aeadCiphers(),
                                 "raiseMinimumTo": TLSVersion.TLSv1_2},
    )


def _tlsEndpoint(reactor, host, port, timeout="30", bindAddress=None, certificate=None,
                 privateKey=None, trustRoots=None, endpoint=None, **unknown):
    """
    Build a C{tls:} endpoint from its parsed arguments, as Twisted's own
    C{tls:} parser does, with L{tlsClientOptions}.
    """
    if unknown:
        raise TypeError("unrecognized keyword arguments present", sorted(unknown))
    options = tlsClientOptions(host, trustRoots, certificate, privateKey)
    if endpoint is not None:
        wrapped = endpoints.clientFromString(reactor, endpoint)
    else:
        wrapped = endpoints.HostnameEndpoint(
            reactor, host.encode("idna"), int(port), int(timeout),
            None if bindAddress is None else (bindAddress, 0))
    return endpoints.wrapClientTLS(options, wrapped)


def clientEndpoint(reactor, description: str) -> IStreamClientEndpoint:
    """
    Like C{clientFromString}, except that a C{tls:} endpoint limits TLS 1.2
    to AEAD suites.

    @param description: a client endpoint description.
    @raise ValueError: as C{clientFromString} does, for a bad description.
    @raise TypeError: for an argument the endpoint type does not take.
    @raise OSError: if a C{tls:} file cannot be read.
    """
    args, kwargs = endpoints._parse(description)
    if not args or args[0].lower() != "tls":
        return endpoints.clientFromString(reactor, description)
    return _tlsEndpoint(reactor, *args[1:], **kwargs)
