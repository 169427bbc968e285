"""
Tests for L{ekey.cli.certs}: a CA and host certificates for relay chains.
"""

import io
import os
import stat
import sys

from cryptography import x509
from twisted.trial import unittest

from ekey.cli import certs


class CommandTests(unittest.TestCase):
    """
    The command writes a CA and host certificates, secrets mode 0600.
    """

    def setUp(self):
        self.out = self.mktemp()
        self.stdout, self.stderr = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def test_caAndHost(self):
        """
        C{ca} then C{host NAME} make a CA and a certificate it signed,
        naming the host as a subject alternative name; keys are private.
        """
        self.assertEqual(certs.main(["--out", self.out, "ca"]), 0)
        self.assertEqual(certs.main(["--out", self.out, "host", "relay.example"]), 0)
        for name in ("ca.key", "relay.example.key"):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.out, name)).st_mode), 0o600)
        with open(os.path.join(self.out, "relay.example.crt"), "rb") as f:
            certificate = x509.load_pem_x509_certificate(f.read())
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(names.value.get_values_for_type(x509.DNSName), ["relay.example"])
        ca, _ = certs.loadCA(self.out)
        self.assertEqual(certificate.issuer, ca.subject)

    def test_caNotReplaced(self):
        """
        A second C{ca} refuses to replace the CA, in one line.
        """
        certs.main(["--out", self.out, "ca"])
        self.assertEqual(certs.main(["--out", self.out, "ca"]), 2)
        [line] = self.stderr.getvalue().splitlines()
        self.assertIn("not replacing a CA", line)

    def test_badArguments(self):
        """
        A missing verb is one line on standard error and status 2.
        """
        error = self.assertRaises(SystemExit, certs.main, ["--out", self.out])
        self.assertEqual(error.code, 2)
        self.assertEqual(len(self.stderr.getvalue().splitlines()), 1)
