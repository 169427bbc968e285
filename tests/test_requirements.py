"""
Tests for L{tests.interop.requirements}: a missing peer or privilege
skips an interop test, except under C{EKEY_REQUIRE_INTEROP=1}, where it
fails it (CI promises that every interop test runs).
"""

import os

from twisted.trial.unittest import FailTest, SkipTest, TestCase

from tests.interop.requirements import findPeer, skipUnlessRequired


class SkipUnlessRequiredTests(TestCase):
    """
    L{skipUnlessRequired} and L{findPeer} skip, or fail when required.
    """

    def setEnvironment(self, value):
        old = os.environ.get("EKEY_REQUIRE_INTEROP")

        def restore():
            if old is None:
                os.environ.pop("EKEY_REQUIRE_INTEROP", None)
            else:
                os.environ["EKEY_REQUIRE_INTEROP"] = old

        self.addCleanup(restore)
        if value is None:
            os.environ.pop("EKEY_REQUIRE_INTEROP", None)
        else:
            os.environ["EKEY_REQUIRE_INTEROP"] = value

    def test_skipsNormally(self):
        """
        Without the variable (or with another value), a skip, with the
        reason.
        """
        for value in (None, "0"):
            self.setEnvironment(value)
            error = self.assertRaises(SkipTest, skipUnlessRequired, "no widget here")
            self.assertEqual(str(error), "no widget here")

    def test_failsWhenRequired(self):
        """
        With C{EKEY_REQUIRE_INTEROP=1}, a failure naming the reason and the
        variable.
        """
        self.setEnvironment("1")
        error = self.assertRaises(FailTest, skipUnlessRequired, "no widget here")
        self.assertIn("no widget here", str(error))
        self.assertIn("EKEY_REQUIRE_INTEROP=1", str(error))

    def test_missingPeer(self):
        """
        A peer that is not installed skips, naming the package to install,
        or fails when required.
        """
        self.setEnvironment(None)
        error = self.assertRaises(SkipTest, findPeer, "no-such-peer-ekey", "some-package")
        self.assertIn("apt-get install some-package", str(error))
        self.setEnvironment("1")
        self.assertRaises(FailTest, findPeer, "no-such-peer-ekey", "some-package")

    def test_presentPeer(self):
        """
        A peer that is installed is found, whatever the variable says.
        """
        self.setEnvironment("1")
        self.assertTrue(os.path.isabs(findPeer("sh")))

    def test_systemPeerNotShadowed(self):
        """
        With C{system=True}, a command of the same name earlier on C{PATH}
        (ekey's own C{ekey-setkey} beside ekeyd's) is not taken for the
        system's.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        shadow = os.path.join(directory, "sh")
        with open(shadow, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(shadow, 0o755)
        old = os.environ["PATH"]
        self.addCleanup(os.environ.__setitem__, "PATH", old)
        os.environ["PATH"] = directory + os.pathsep + old
        self.assertEqual(findPeer("sh"), shadow)
        self.assertNotEqual(findPeer("sh", system=True), shadow)
