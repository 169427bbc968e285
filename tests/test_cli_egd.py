"""
Tests for L{ekey.cli.egd} (the C{ekey-egd} command) and the one-line
argument parser every command shares (L{ekey.cli._args}).
"""

import io
import sys

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.internet.error import ConnectionDone
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
        self.assertIn("ekey-egd: bad --connect 'nosuch:1'", line)

    def test_badCount(self):
        """
        A byte count that is not a number is one line.
        """
        error = self.assertRaises(SystemExit, egd.main, ["--connect", "tcp:h:1", "get", "x"])
        self.assertEqual(error.code, 2)
        self.assertEqual(len(self.stderr.getvalue().splitlines()), 1)


class _Endpoint:
    """
    A client endpoint that connects at once to a L{StringTransport}.
    """

    def __init__(self):
        self.protocol = None

    def connect(self, factory):
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        return defer.succeed(self.protocol)


class _Out:
    """
    Standard output: text and, as C{buffer}, bytes.
    """

    def __init__(self):
        self.buffer = io.BytesIO()
        self.text = io.StringIO()

    def write(self, text):
        self.text.write(text)

    def flush(self):
        pass


class EGDFailureTests(unittest.TestCase):
    """
    C{ekey-egd} fails in one line on standard error with a non-zero
    status, never a traceback nor an unhandled error, and keeps the bytes
    it received before the failure.
    """

    def setUp(self):
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.endpoint = _Endpoint()
        self.patch(egd, "checkEndpoint", lambda *a, **k: self.endpoint)
        self.reactor = MemoryReactorClock()
        self.out = _Out()

    def egd(self, *argv):
        return egd.main(["--connect", "tcp:127.0.0.1:8888"] + list(argv),
                        reactor=self.reactor, out=self.out)

    def line(self):
        lines = self.stderr.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertNotIn("Traceback", lines[0])
        return lines[0]

    def test_timeOutKeepsReceived(self):
        """
        A C{get} that stops being answered writes the bytes received,
        then says after how long it gave up and how many bytes came.
        """
        d = self.egd("--timeout", "30", "get", "1000")
        self.endpoint.protocol.dataReceived(b"a" * 255 + b"b" * 255 + b"c" * 100)
        self.reactor.advance(29)
        self.assertNoResult(d)
        self.reactor.advance(30)
        failure = self.failureResultOf(d, SystemExit)
        self.assertEqual(failure.value.code, 1)
        self.assertEqual(self.out.buffer.getvalue(), b"a" * 255 + b"b" * 255)
        self.assertEqual(self.line(), "ekey-egd: no answer within 30 seconds; 510 of the "
                         "1000 bytes were received and written out")
        self.assertTrue(self.endpoint.transport.disconnecting)

    def test_connectionLostKeepsReceived(self):
        """
        A server that closes the connection part-way: the bytes received
        are written, and one line says so.
        """
        d = self.egd("get", "600")
        self.endpoint.protocol.dataReceived(b"a" * 255)
        self.endpoint.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.failureResultOf(d, SystemExit).value.code, 1)
        self.assertEqual(self.out.buffer.getvalue(), b"a" * 255)
        line = self.line()
        self.assertTrue(line.startswith("ekey-egd: the server closed the connection"), line)
        self.assertIn("255 of the 600 bytes", line)

    def test_notEGD(self):
        """
        A server that sends a banner breaks the protocol: C{ekey-egd}
        says so in its own words, not as a lost connection.
        """
        d = self.egd("level")
        self.endpoint.protocol.dataReceived(b"SSH-2.0-OpenSSH_9.2p1\r\n")
        self.endpoint.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.failureResultOf(d, SystemExit).value.code, 1)
        self.assertIn("not an EGD server? it broke the protocol: server sent",
                      self.line())

    def test_success(self):
        """
        A whole C{get} is written and the command succeeds, quietly.
        """
        d = self.egd("get", "300")
        self.endpoint.protocol.dataReceived(b"x" * 300)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.out.buffer.getvalue(), b"x" * 300)
        self.assertEqual(self.stderr.getvalue(), "")

    def test_level(self):
        """
        C{level} prints the bits available.
        """
        d = self.egd("level")
        self.endpoint.protocol.dataReceived(b"\x00\x00\x01\x00")
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.out.text.getvalue(), "256\n")

    def test_brokenOutput(self):
        """
        Standard output that cannot be written is one line, status 1.
        """
        class Broken:
            def write(self, data):
                raise BrokenPipeError(32, "Broken pipe")

            def flush(self):
                pass

        self.out.buffer = Broken()
        d = self.egd("get", "10")
        self.endpoint.protocol.dataReceived(b"x" * 10)
        self.assertEqual(self.failureResultOf(d, SystemExit).value.code, 1)
        self.assertIn("cannot write the entropy to standard output: Broken pipe", self.line())


class EGDStartTests(unittest.TestCase):
    """
    C{ekey-egd}'s endpoint refusals and C{--version}.
    """

    def setUp(self):
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def test_missingCertificate(self):
        """
        A C{tls:} endpoint naming a certificate file that does not exist is
        one line naming the option and the file, status 2.
        """
        d = egd.main(["--connect", "tls:localhost:8888:certificate=/nonexistent/c.crt",
                      "level"], reactor=MemoryReactorClock())
        self.assertEqual(self.failureResultOf(d, SystemExit).value.code, 2)
        [line] = self.stderr.getvalue().splitlines()
        self.assertEqual(line, "ekey-egd: bad --connect 'tls:localhost:8888:certificate="
                         "/nonexistent/c.crt': certificate=/nonexistent/c.crt: No such file "
                         "or directory; give a PEM certificate file")

    def test_version(self):
        """
        C{--version} prints the program and its version.
        """
        from ekey import __version__

        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        error = self.assertRaises(SystemExit, egd.main, ["--version"])
        self.assertEqual(error.code, 0)
        self.assertEqual(stdout.getvalue(), f"ekey-egd {__version__}\n")
