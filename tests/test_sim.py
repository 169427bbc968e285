"""
Tests for L{ekey.cli.sim}: the C{ekey-sim} command.
"""

import io
import os
import socket
import stat
import sys

from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from ekey.cli import sim
from ekey.cli.sim import main
from ekey.core.keyring import Keyring, formatSerial
from ekey.services.simulator import DEFAULT_SERIAL, Fault, SimulatedKeyFactory

LONG_TERM_KEY = bytes(range(32))


class MainTests(SynchronousTestCase):
    """
    Tests for L{main}, the C{ekey-sim} command.
    """

    def setUp(self):
        self.stderr = io.StringIO()
        self.stdout = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.patch(sys, "stdout", self.stdout)

    def assertUsageError(self, argv, *fragments):
        """
        Running the command with C{argv} exits with status 2 and one line
        on standard error that contains each fragment.
        """
        error = self.assertRaises(SystemExit, main, argv, reactor=MemoryReactorClock())
        self.assertEqual(error.code, 2)
        message = self.stderr.getvalue()
        self.assertEqual(message.count("\n"), 1, message)
        self.assertTrue(message.startswith("ekey-sim: error: "), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        self.assertNotIn("Traceback", message)

    def test_noWhere(self):
        """
        Either C{--listen} or C{--pty} is required.
        """
        self.assertUsageError([], "--listen", "--pty")

    def test_bothWheres(self):
        """
        C{--listen} and C{--pty} exclude each other.
        """
        self.assertUsageError(["--pty", "--listen", "unix:/x"], "not allowed")

    def test_badEndpoint(self):
        """
        An endpoint string Twisted cannot parse is an error.
        """
        self.assertUsageError(["--listen", "nonsense:foo"], "bad endpoint 'nonsense:foo'")

    def test_badLongTermKey(self):
        """
        A long-term key that is neither 44 base64 characters nor 64 hex
        digits is an error.
        """
        self.assertUsageError(["--pty", "--long-term-key", "abc"], "long-term key must be 32 bytes")

    def test_badMasterKey(self):
        """
        So is such a master key.
        """
        self.assertUsageError(["--pty", "--master-key", "abc"], "master key must be 32 bytes")

    def test_badSerial(self):
        """
        A serial that is not 16 base64 characters is an error.
        """
        self.assertUsageError(["--pty", "--serial", "short"], "not a serial number")

    def test_badFault(self):
        """
        A bad fault specification is an error that says what is wrong.
        """
        self.assertUsageError(["--pty", "--fault", "bad-mac:0"], "whole number from 1")

    def test_badRate(self):
        """
        A negative or non-numeric rate is an error.
        """
        self.assertUsageError(["--pty", "--rate", "-1"], "--rate")
        self.stderr.truncate(0)
        self.stderr.seek(0)
        self.assertUsageError(["--pty", "--info-every", "often"], "--info-every")

    def test_badKeyring(self):
        """
        A keyring file that cannot be parsed is an error.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a keyring\n")
        self.assertUsageError(["--pty", "--keyring", path], path, "line 1")

    def test_cannotListen(self):
        """
        A failure to listen is an error, reported in one line.
        """

        class Reactor(MemoryReactorClock):
            def listenUNIX(self, address, *args, **kwargs):
                raise CannotListenError(None, address, "address in use")

        error = self.assertRaises(
            SystemExit, main, ["--listen", "unix:/nowhere/key.sock"], reactor=Reactor()
        )
        self.assertEqual(error.code, 2)
        last = self.stderr.getvalue().splitlines()[-1]
        self.assertTrue(last.startswith("ekey-sim: error: cannot listen on unix:/nowhere/key.sock"))

    def test_listen(self):
        """
        With C{--listen} the command serves the key on that endpoint, writes
        its serial and long-term key to the keyring with mode 0600, and says
        loudly that it is only a simulator.
        """
        reactor = MemoryReactorClock()
        keyring = self.mktemp()
        socketPath = self.mktemp()
        longTermKey = "ab" * 32
        error = self.assertRaises(
            SystemExit,
            main,
            [
                "--listen", f"unix:{socketPath}",
                "--keyring", keyring,
                "--long-term-key", longTermKey,
                "--seed", "x",
                "--fault", "reset:5",
                "--rate", "0",
            ],
            reactor=reactor,
        )
        self.assertEqual(error.code, 0)
        [(path, factory, backlog, mode, wantPID)] = reactor.unixServers
        self.assertEqual(path, socketPath)
        self.assertIsInstance(factory, SimulatedKeyFactory)
        self.assertEqual(factory.rate, 0)
        self.assertEqual(factory.key.serial, DEFAULT_SERIAL)
        self.assertEqual(factory.key.faults, [Fault.parse("reset:5")])
        self.assertEqual(Keyring.load(keyring).get(DEFAULT_SERIAL), bytes.fromhex(longTermKey))
        self.assertEqual(stat.S_IMODE(os.stat(keyring).st_mode), 0o600)
        self.assertIn("SIMULATOR", self.stderr.getvalue())
        self.assertIn("NOT a hardware entropy source", self.stderr.getvalue())

    def test_keyringKeyReused(self):
        """
        Without C{--long-term-key}, the key the keyring already holds for
        the serial is used, so that a host that has read the keyring before
        can still use the key.
        """
        path = self.mktemp()
        keyring = Keyring(path)
        keyring.set(DEFAULT_SERIAL, LONG_TERM_KEY)
        keyring.save()
        reactor = MemoryReactorClock()
        self.assertRaises(
            SystemExit, main, ["--listen", "unix:/x", "--keyring", path], reactor=reactor
        )
        self.assertEqual(reactor.unixServers[0][1].key.longTermKey, LONG_TERM_KEY)

    def test_randomKeyToKeyring(self):
        """
        Without C{--long-term-key}, a new serial gets a random long-term key,
        which goes into the keyring next to the keys already there.
        """
        path = self.mktemp()
        keyring = Keyring(path)
        keyring.set(b"other serial", LONG_TERM_KEY)
        keyring.save()
        reactor = MemoryReactorClock()
        self.assertRaises(
            SystemExit,
            main,
            ["--listen", "unix:/x", "--keyring", path, "--serial", "E52jaQ2jxAYlra1N"],
            reactor=reactor,
        )
        key = reactor.unixServers[0][1].key
        saved = Keyring.load(path)
        self.assertEqual(saved.get(key.serial), key.longTermKey)
        self.assertEqual(saved.get(b"other serial"), LONG_TERM_KEY)
        self.assertEqual(formatSerial(key.serial), "E52jaQ2jxAYlra1N")

    def test_warnWithoutKeyOrKeyring(self):
        """
        With neither C{--long-term-key} nor C{--keyring}, the command warns
        that no host can know the key.
        """
        self.assertRaises(
            SystemExit, main, ["--listen", "unix:/x"], reactor=MemoryReactorClock()
        )
        self.assertIn("warning: neither --long-term-key nor --keyring", self.stderr.getvalue())

    def test_pty(self):
        """
        With C{--pty} the command serves the key on a pseudo-terminal and
        prints the terminal's path.
        """
        left, right = socket.socketpair()
        self.addCleanup(left.close)
        self.addCleanup(right.close)
        descriptors = (os.dup(left.fileno()), os.dup(left.fileno()))
        for descriptor in descriptors:
            self.addCleanup(os.close, descriptor)
        self.patch(
            sim, "_openPTY", lambda: descriptors + (right.fileno(), "/dev/pts/simulated")
        )
        reactor = MemoryReactorClock()
        error = self.assertRaises(
            SystemExit,
            main,
            ["--pty", "--long-term-key", "ab" * 32, "--rate", "8"],
            reactor=reactor,
        )
        self.assertEqual(error.code, 0)
        self.assertEqual(self.stdout.getvalue(), "/dev/pts/simulated\n")
        self.assertEqual(
            {reader.fileno() for reader in reactor.getReaders()}, {descriptors[0]}
        )
        [writer] = reactor.getWriters()
        self.assertEqual(writer.fileno(), descriptors[1])
