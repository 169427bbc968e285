"""
Tests for L{ekey.core.upstreamconfig}: what an C{--upstream} description
may say.
"""

from twisted.trial import unittest

from ekey.core.upstreamconfig import checkUpstreamDescription, splitPriority


class SplitPriorityTests(unittest.TestCase):
    """
    L{splitPriority} takes C{priority=N} off a description.
    """

    def test_none(self):
        """
        Without C{priority=} the description is unchanged, at priority 0.
        """
        self.assertEqual(splitPriority("tcp:host:8888"), ("tcp:host:8888", 0))

    def test_anywhereAfterTheType(self):
        """
        C{priority=} may come anywhere after the type, and escaped colons
        elsewhere are kept as they were.
        """
        self.assertEqual(splitPriority("tcp:host:8888:priority=2"), ("tcp:host:8888", 2))
        self.assertEqual(
            splitPriority("tls:h:1:priority=1:trustRoots=/d:endpoint=tcp\\:127.0.0.1\\:1"),
            ("tls:h:1:trustRoots=/d:endpoint=tcp\\:127.0.0.1\\:1", 1))

    def test_bad(self):
        """
        A priority that is not a whole number from 0 up, or is given twice,
        is refused in one line.
        """
        for description in ("tcp:h:1:priority=high", "tcp:h:1:priority=-1",
                            "tcp:h:1:priority=1:priority=2"):
            e = self.assertRaises(ValueError, splitPriority, description)
            self.assertIn("priority=", str(e))
            self.assertNotIn("\n", str(e))


class CheckUpstreamDescriptionTests(unittest.TestCase):
    """
    L{checkUpstreamDescription} refuses unverified TLS and warns about
    plain TCP across a network.
    """

    def test_sslRefused(self):
        """
        C{ssl:} (no certificate check) is refused with one line naming
        C{tls:} with C{trustRoots=}.
        """
        for description in ("ssl:relay.example:8888", "SSL:host=relay.example:port=1"):
            e = self.assertRaises(ValueError, checkUpstreamDescription, description)
            self.assertIn("tls:", str(e))
            self.assertIn("trustRoots=", str(e))
            self.assertNotIn("\n", str(e))

    def test_tcpAcrossANetworkWarned(self):
        """
        Plain TCP to an address other than loopback gives a warning naming
        the host and the fix.
        """
        for description, host in [("tcp:relay.example:8888", "relay.example"),
                                  ("tcp:host=192.0.2.7:port=8888", "192.0.2.7"),
                                  ("tcp:10.0.0.1:8888:priority=1", "10.0.0.1")]:
            [warning] = checkUpstreamDescription(description)
            self.assertIn(host, warning)
            self.assertIn("tls:", warning)

    def test_quietForVerifiedOrLocal(self):
        """
        Loopback TCP, Unix sockets and C{tls:} give no warning.
        """
        for description in ("tcp:127.0.0.1:8888", "tcp:localhost:8888",
                            "tcp:host=\\:\\:1:port=8888", "tcp:127.1.2.3:8888",
                            "unix:/run/ekey/egd.sock", "tls:relay.example:8888:trustRoots=/d"):
            self.assertEqual(checkUpstreamDescription(description), [], description)
