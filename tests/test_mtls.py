"""
Tests for L{ekey.services.mtls}: the C{mtls:} server endpoint's TLS
options.
"""

from OpenSSL import SSL
from twisted.trial import unittest

from ekey.cli import certs
from ekey.services.mtls import AEAD_CIPHERS, MutualTLSServerParser, aeadCiphers, mutualTLSOptions


def writeFiles(testCase):
    """
    Make a CA and a host certificate in files.

    @return: C{(certKey, privateKey, caCerts)} paths.
    """
    ca = certs.makeCA()
    host = certs.makeHost("localhost", ca)
    paths = [testCase.mktemp() for _ in range(3)]
    for path, data in zip(paths, [certs.certificatePEM(host[0]), certs.keyPEM(host[1]),
                                  certs.certificatePEM(ca[0])]):
        with open(path, "wb") as f:
            f.write(data)
    return paths


class CipherTests(unittest.TestCase):
    """
    An C{mtls:} listener offers TLS 1.2 only with forward-secret AEAD
    suites.
    """

    def suites(self, options):
        return SSL.Connection(options.getContext(), None).get_cipher_list()

    def test_onlyAEAD(self):
        """
        Every suite the server accepts is TLS 1.3 or ECDHE with AES-GCM or
        ChaCha20-Poly1305: no CBC, no SHA-1 MAC, no static RSA.
        """
        suites = self.suites(mutualTLSOptions(*writeFiles(self)))
        self.assertTrue(suites)
        for name in suites:
            if name.startswith("TLS_"):
                continue
            self.assertTrue(name.startswith("ECDHE-"), name)
            self.assertTrue("GCM" in name or "CHACHA20" in name, name)
            self.assertNotIn("CBC", name)

    def test_checkerRejectsCBC(self):
        """
        The check above fails for Twisted's default suites, which include
        CBC ones: it can fail.
        """
        from twisted.internet.ssl import CertificateOptions

        suites = self.suites(CertificateOptions())
        self.assertTrue([n for n in suites if not n.startswith("TLS_")
                         and "GCM" not in n and "CHACHA20" not in n])

    def test_cipherString(self):
        """
        The cipher string names only ECDHE AEAD suites, and Twisted accepts
        it.
        """
        self.assertEqual(AEAD_CIPHERS, "ECDHE+AESGCM:ECDHE+CHACHA20")
        self.assertTrue(aeadCiphers())


class ParserTests(unittest.TestCase):
    """
    The C{mtls:} parser refuses incomplete descriptions in one line.
    """

    def test_missing(self):
        """
        Missing files are named.
        """
        error = self.assertRaises(ValueError, MutualTLSServerParser().parseStreamServer,
                                  None, "8443", certKey="x")
        self.assertIn("privateKey, caCerts", str(error))
