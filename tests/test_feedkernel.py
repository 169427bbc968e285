"""
Tests for L{ekey.cli.feedkernel}: the C{ekey-feed-kernel} command builds
the daemon's configuration directly, and refuses bad arguments in one line.
"""

import io
import sys

from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from ekey.cli import feedkernel


class ConfigTests(unittest.TestCase):
    """
    The command's daemon: upstreams, the kernel, a small pool, no listener.
    """

    def test_config(self):
        """
        The servers become upstreams, the pool holds a few top-ups and no
        control channel or port is opened.
        """
        config = feedkernel.configFor(["unix:/run/ekey/egd"], 30.0, 64)
        config.check()
        self.assertEqual(config.upstreams, ("unix:/run/ekey/egd",))
        self.assertTrue(config.kernel)
        self.assertIsNone(config.control)
        self.assertEqual(config.ports, ())
        self.assertEqual((config.kernelInterval, config.kernelBytes), (30.0, 64))
        self.assertTrue(0 <= config.lowWater < config.highWater <= config.poolSize)

    def test_credit(self):
        """
        A remote plain-TCP server is credited nothing unless asked; a local
        one the default.
        """
        self.assertEqual(feedkernel.configFor(["tcp:192.0.2.7:8888"], 60, 64).kernelCredit()[0], 0)
        self.assertEqual(
            feedkernel.configFor(["tcp:192.0.2.7:8888"], 60, 64, 7).kernelCredit()[0], 7)
        self.assertEqual(feedkernel.configFor(["unix:/run/ekey/egd"], 60, 64).kernelCredit()[0], 7)


class MainTests(unittest.TestCase):
    """
    Bad arguments are one line on standard error and a non-zero exit.
    """

    def setUp(self):
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def test_badEndpoint(self):
        """
        A --connect Twisted cannot parse is named with its option.
        """
        status = feedkernel.main(["--connect", "nosuch:1"], reactor=MemoryReactorClock())
        self.assertEqual(status, 2)
        [line] = self.stderr.getvalue().splitlines()
        self.assertIn("ekey-feed-kernel: bad --connect 'nosuch:1'", line)

    def test_badValue(self):
        """
        A bad value is refused with the command's own option name, in one
        line.
        """
        error = self.assertRaises(SystemExit, feedkernel.main,
                                  ["--connect", "unix:/u", "--bytes", "0"],
                                  reactor=MemoryReactorClock())
        self.assertEqual(error.code, 2)
        [line] = self.stderr.getvalue().splitlines()
        self.assertIn("--bytes", line)
        self.assertIn("above 0", line)

    def test_noConnect(self):
        """
        Without --connect, argparse's error is one line.
        """
        error = self.assertRaises(SystemExit, feedkernel.main, [], reactor=MemoryReactorClock())
        self.assertEqual(error.code, 2)
        [line] = self.stderr.getvalue().splitlines()
        self.assertIn("--connect", line)
