"""
Tests for L{ekey.core.endpointstrings}.
"""

from twisted.trial import unittest

from ekey.core.endpointstrings import isLoopbackHost, splitDescription, splitFields, unescape


class SplitTests(unittest.TestCase):
    """
    Descriptions are split as Twisted splits them.
    """

    def test_fieldsKeepEscapes(self):
        """
        Fields are split at unescaped colons only, and keep their escapes,
        so that joining them gives the description back.
        """
        description = r"unix:/run/a\:b.sock:mode=600"
        fields = splitFields(description)
        self.assertEqual(fields, ["unix", r"/run/a\:b.sock", "mode=600"])
        self.assertEqual(":".join(fields), description)

    def test_trailingBackslash(self):
        """
        A backslash at the very end escapes nothing and is dropped, instead
        of failing.
        """
        self.assertEqual(splitFields("unix:/x\\"), ["unix", "/x\\"])
        self.assertEqual(unescape("/x\\"), "/x")

    def test_description(self):
        """
        Positional and keyword arguments come apart, unescaped.
        """
        self.assertEqual(
            splitDescription(r"tcp:host=\:\:1:8888:interface=127.0.0.1"),
            ("tcp", ["8888"], {"host": "::1", "interface": "127.0.0.1"}))

    def test_escapedEquals(self):
        """
        An escaped C{=} does not make a keyword, and only the first
        unescaped one splits.
        """
        self.assertEqual(splitDescription(r"unix:/a\=b:x=y=z"),
                         ("unix", ["/a=b"], {"x": "y=z"}))


class LoopbackTests(unittest.TestCase):
    """
    L{isLoopbackHost} tells this machine's names and addresses from others.
    """

    def test_loopback(self):
        """
        localhost, its distribution aliases and loopback addresses, with
        or without brackets, are this machine.
        """
        for host in ("localhost", "LOCALHOST", "localhost.localdomain", "ip6-localhost",
                     "127.0.0.1", "127.1.2.3", "::1", "[::1]"):
            self.assertTrue(isLoopbackHost(host), host)

    def test_others(self):
        """
        Other names and addresses are not, and neither is nothing.
        """
        for host in ("example.com", "10.0.0.1", "::2", "", "localhost.example.com"):
            self.assertFalse(isLoopbackHost(host), host)
