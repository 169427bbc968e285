"""
Tests for L{ekey.cli.egd} (the C{ekey-egd} command) and the one-line
argument parser every command shares (L{ekey.cli._args}).
"""

import io
import sys

from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from ekey.cli import egd
from ekey.cli._args import ArgumentParser


class ArgumentParserTests(unittest.TestCase):
    """
    Argument errors are one line naming the program, and status 2.
    """

    def test_oneLine(self):
        """
        A missing required option gives C{PROG: error: MESSAGE} and no
        usage dump.
        """
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        parser = ArgumentParser(prog="ekey-test")
        parser.add_argument("--needed", required=True)
        error = self.assertRaises(SystemExit, parser.parse_args, [])
        self.assertEqual(error.code, 2)
        [line] = stderr.getvalue().splitlines()
        self.assertTrue(line.startswith("ekey-test: error: "), line)
        self.assertIn("--needed", line)


class EGDCommandTests(unittest.TestCase):
    """
    C{ekey-egd} refuses bad input in one line.
    """

    def setUp(self):
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def test_badEndpoint(self):
        """
        An endpoint Twisted cannot parse is named, and the command fails
        with status 2.
        """
        d = egd.main(["--connect", "nosuch:1", "level"], reactor=MemoryReactorClock())
        failure = self.failureResultOf(d, SystemExit)
        self.assertEqual(failure.value.code, 2)
        [line] = self.stderr.getvalue().splitlines()
        self.assertIn("ekey-egd: bad endpoint 'nosuch:1'", line)

    def test_badCount(self):
        """
        A byte count that is not a number is one line.
        """
        error = self.assertRaises(SystemExit, egd.main, ["--connect", "tcp:h:1", "get", "x"])
        self.assertEqual(error.code, 2)
        self.assertEqual(len(self.stderr.getvalue().splitlines()), 1)
