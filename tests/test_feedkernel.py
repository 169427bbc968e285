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


class OwnNamesTests(unittest.TestCase):
    """
    Every refusal of C{ekey-feed-kernel} is one line in its own option
    names (C{--connect}, C{--interval}, C{--bytes}), never the daemon's
    (C{--upstream}, C{--kernel}).
    """

    def setUp(self):
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def line(self):
        [line] = self.stderr.getvalue().splitlines()
        self.assertNotIn("--upstream", line)
        self.assertNotIn("--kernel", line)
        return line

    def test_sslRefused(self):
        """
        An C{ssl:} server (no certificate check) is refused as a
        C{--connect}.
        """
        status = feedkernel.main(["--connect", "ssl:host:8888"], reactor=MemoryReactorClock())
        self.assertEqual(status, 2)
        line = self.line()
        self.assertTrue(line.startswith("ekey-feed-kernel: bad --connect 'ssl:host:8888': ssl: "),
                        line)
        self.assertIn("use tls:HOST:PORT:trustRoots=DIR", line)

    def test_missingTrustRoots(self):
        """
        A C{trustRoots=} directory that does not exist is named, where
        Twisted's own error has no message at all.
        """
        description = "tls:localhost:8888:trustRoots=/nonexistent/ca"
        status = feedkernel.main(["--connect", description], reactor=MemoryReactorClock())
        self.assertEqual(status, 2)
        self.assertEqual(self.line(),
                         f"ekey-feed-kernel: bad --connect {description!r}: trustRoots="
                         "/nonexistent/ca: No such file or directory; give a directory of CA "
                         "certificates (PEM)")

    def test_missingPort(self):
        """
        A C{tls:} endpoint without its port says what is missing and how
        it is written.
        """
        status = feedkernel.main(["--connect", "tls:localhost"], reactor=MemoryReactorClock())
        self.assertEqual(status, 2)
        self.assertEqual(self.line(),
                         "ekey-feed-kernel: bad --connect 'tls:localhost': missing port; write "
                         "tls:HOST:PORT:trustRoots=DIR[:certificate=FILE:privateKey=FILE]")

    def test_priorityAccepted(self):
        """
        C{priority=} is the relay's own field, taken off before the
        endpoint is parsed: the refusal that follows is the kernel's.
        """
        from ekey.core.kernel import KernelError
        from ekey.services import assembly

        def refuse(*args, **kwargs):
            raise KernelError("adding entropy to the kernel needs CAP_SYS_ADMIN")

        self.patch(assembly, "openKernel", refuse)
        status = feedkernel.main(["--connect", "unix:/run/ekey/egd:priority=1"],
                                 reactor=MemoryReactorClock())
        self.assertEqual(status, 2)
        self.assertEqual(self.line(),
                         "ekey-feed-kernel: adding entropy to the kernel needs CAP_SYS_ADMIN")

    def test_ownNames(self):
        """
        The daemon's option names in a message become the command's.
        """
        self.assertEqual(feedkernel.ownNames("bad --upstream 'x'; --kernel-bytes, "
                                             "--kernel-interval; --kernel: no"),
                         "bad --connect 'x'; --bytes, --interval; no")

    def test_tooManyBytes(self):
        """
        A top-up larger than any kernel pool is refused in one line.
        """
        error = self.assertRaises(SystemExit, feedkernel.main,
                                  ["--connect", "unix:/u", "--bytes", "100000000"],
                                  reactor=MemoryReactorClock())
        self.assertEqual(error.code, 2)
        self.assertIn("--bytes", self.line())

    def test_version(self):
        """
        C{--version} prints the program and its version, without needing
        C{--connect}.
        """
        from ekey import __version__

        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        error = self.assertRaises(SystemExit, feedkernel.main, ["--version"])
        self.assertEqual(error.code, 0)
        self.assertEqual(stdout.getvalue(), f"ekey-feed-kernel {__version__}\n")
