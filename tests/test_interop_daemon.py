"""
Our daemon (C{twistd -n ekey}) and C{ekey-rekey} end to end, as real
processes, against the simulated key (C{ekey-sim}) on a real pty and on a
Unix socket.

The simulator runs with C{--seed}, so the daemon's output file can be
compared with the plaintext the key produced (L{ekey.services.simulator.seededBlock}).
"""

from __future__ import annotations

import os
import re
import stat
import sys
import time

from twisted.trial.unittest import TestCase

from ekey.core.units import BLOCK_SIZE
from tests.interop.processes import (
    LONG_TERM_KEY_HEX,
    MASTER_KEY_HEX,
    SERIAL,
    RunningProcess,
    assertNoTraceback,
    daemonLog,
    fileSize,
    makeTempDir,
    pythonEnvironment,
    socketPath,
    startDaemon,
    startSimulator,
    waitFor,
    waitForSize,
    writeKeyring,
)
from tests.interop.seeded import describeMismatch, indicesOf, seededPlaintext, traceServed

SEED = b"ekey-interop-daemon"

# More than 4096 blocks: across the re-key after sequence 4095.
BLOCKS = 4200

# A serial that is in no keyring of these tests ('NOT-IN-RING!').
UNKNOWN_SERIAL = "Tk9ULUlOLVJJTkch"


class _DaemonTestMixin:
    """
    Set-up shared by the daemon's interop tests.
    """

    def setUp(self):
        self.directory = makeTempDir(self)
        self.keyring = writeKeyring(os.path.join(self.directory, "keyring"))
        self.keySocket = socketPath(self, self.directory)
        self.output = os.path.join(self.directory, "ekey.out")

    def assertSeededOutput(self, data: bytes, blocks: int) -> None:
        expected = seededPlaintext(SEED, blocks)
        actual = data[: len(expected)]
        if actual != expected:
            self.fail("the daemon's output is not the seeded plaintext: "
                      + describeMismatch(expected, actual))

    def assertCleanStop(self, daemon: RunningProcess) -> None:
        daemon.terminate()
        assertNoTraceback(self, daemon.stdout(), daemon.stderr(), daemonLog(daemon))


class DaemonEndToEndTests(_DaemonTestMixin, TestCase):
    """
    The daemon reads a simulated key and writes exactly its plaintext.
    """

    def test_pty(self):
        """
        Over a real pseudo-terminal (a serial device as far as the daemon
        can tell), the daemon's output equals the seeded plaintext across
        the re-key after sequence 4095.
        """
        sim = startSimulator(self, self.directory, pty=True, seed=SEED, rate=0)
        daemon = startDaemon(self, self.directory, [sim.ptyPath], self.keyring, self.output)
        data = waitForSize(self.output, BLOCKS * BLOCK_SIZE, timeout=40, process=daemon)
        self.assertSeededOutput(data, BLOCKS)
        self.assertCleanStop(daemon)

    def test_unixSocket(self):
        """
        Over a Unix socket, with information frames mixed in, the daemon's
        output equals the seeded plaintext across the re-key after sequence
        4095.
        """
        startSimulator(self, self.directory, listen=self.keySocket, seed=SEED, rate=0,
                       extra=["--info-every", "100"])
        daemon = startDaemon(self, self.directory, [self.keySocket], self.keyring, self.output)
        data = waitForSize(self.output, BLOCKS * BLOCK_SIZE, timeout=40, process=daemon)
        self.assertSeededOutput(data, BLOCKS)
        self.assertCleanStop(daemon)

    def test_garbageOnTheLine(self):
        """
        Junk between frames (C{--fault garbage:N}) costs nothing: the frame
        reader resynchronises and the output still equals the seeded
        plaintext, block for block.
        """
        startSimulator(self, self.directory, listen=self.keySocket, seed=SEED, rate=0,
                       faults=["garbage:1", "garbage:50", "garbage:51", "garbage:300"])
        daemon = startDaemon(self, self.directory, [self.keySocket], self.keyring, self.output)
        blocks = 600
        data = waitForSize(self.output, blocks * BLOCK_SIZE, timeout=30, process=daemon)
        self.assertSeededOutput(data, blocks)
        self.assertCleanStop(daemon)


class DaemonRefusalTests(_DaemonTestMixin, TestCase):
    """
    Bad configuration stops the daemon at start-up with one clear line, and
    a key it cannot use is reported, never read.
    """

    def assertRefuses(self, daemon: RunningProcess, *fragments: str) -> str:
        """
        Assert that the daemon exits non-zero without a traceback, having
        printed one line that holds all of C{fragments}.

        @return: that line.
        """
        status = daemon.wait(30)
        text = daemon.stdout() + daemon.stderr() + daemonLog(daemon)
        self.assertNotEqual(status, 0, f"the daemon did not refuse to start:\n{daemon.describe()}")
        assertNoTraceback(self, text)
        lines = [line for line in text.splitlines() if all(f in line for f in fragments)]
        if not lines:
            self.fail(f"no line says {fragments!r}:\n{daemon.describe()}")
        self.assertFalse(os.path.exists(self.output) and fileSize(self.output),
                         "the daemon wrote output although it refused to start")
        return lines[-1]

    def test_missingDevice(self):
        """
        A device path that does not exist stops the daemon with a line
        naming the path.
        """
        missing = os.path.join(self.directory, "no-such-key")
        daemon = startDaemon(self, self.directory, [missing], self.keyring, self.output)
        self.assertRefuses(daemon, missing, "no such")

    def test_keyringIsDirectory(self):
        """
        A keyring that cannot be read (here a directory, as root can read
        any mode-000 file) stops the daemon with a line naming it.
        """
        startSimulator(self, self.directory, listen=self.keySocket, seed=SEED)
        keyring = os.path.join(self.directory, "keyring.d")
        os.mkdir(keyring)
        daemon = startDaemon(self, self.directory, [self.keySocket], keyring, self.output)
        self.assertRefuses(daemon, keyring, "keyring")

    def test_keyringMissing(self):
        """
        A keyring file that does not exist stops the daemon with a line
        naming it.
        """
        startSimulator(self, self.directory, listen=self.keySocket, seed=SEED)
        keyring = os.path.join(self.directory, "no-such-keyring")
        daemon = startDaemon(self, self.directory, [self.keySocket], keyring, self.output)
        self.assertRefuses(daemon, keyring, "keyring")

    def test_malformedKeyring(self):
        """
        A malformed keyring stops the daemon with a line naming the file and
        the number of the bad line.
        """
        startSimulator(self, self.directory, listen=self.keySocket, seed=SEED)
        keyring = os.path.join(self.directory, "bad-keyring")
        with open(keyring, "w") as f:
            f.write("# a comment\n\nthis-is-not-a-serial and-not-a-key\n")
        daemon = startDaemon(self, self.directory, [self.keySocket], keyring, self.output)
        self.assertRefuses(daemon, keyring, "line 3")

    def test_unknownSerial(self):
        """
        A key whose serial is not in the keyring is reported at error level,
        naming the serial and the keyring, and none of its output is used.
        """
        startSimulator(self, self.directory, listen=self.keySocket, seed=SEED, rate=0,
                       serial=UNKNOWN_SERIAL)
        daemon = startDaemon(self, self.directory, [self.keySocket], self.keyring, self.output)

        def reported():
            return [line for line in daemonLog(daemon).splitlines()
                    if UNKNOWN_SERIAL in line and self.keyring in line]

        lines = waitFor(reported, 20, "the daemon to report the unknown serial", daemon)
        # Give the key a moment in which output would have appeared.
        time.sleep(1.0)
        self.assertEqual(fileSize(self.output), 0, "the daemon wrote entropy from an unknown key")
        self.assertTrue(
            any(re.search(r"#(error|critical)\]", line) for line in lines),
            f"the unknown serial is not logged as an error: {lines!r}",
        )
        self.assertCleanStop(daemon)


class RekeyInteropTests(_DaemonTestMixin, TestCase):
    """
    C{ekey-rekey} gives a simulated key a new long-term key that the
    daemon then uses.
    """

    def runRekey(self, keyring: str) -> RunningProcess:
        from ekey.core.rekey import formatMasterKey

        masterKeyFile = os.path.join(self.directory, "master-key")
        with open(masterKeyFile, "w") as f:
            f.write(formatMasterKey(bytes.fromhex(MASTER_KEY_HEX)) + "\n")
        os.chmod(masterKeyFile, 0o600)
        argv = [
            sys.executable, "-c", "import sys; from ekey.cli.rekey import main; sys.exit(main())",
            "--device", self.keySocket, "--master-key-file", masterKeyFile, "--keyring", keyring,
            "--timeout", "10", "--control", "none",
        ]
        rekey = RunningProcess(self, "ekey-rekey", argv, self.directory, env=pythonEnvironment())
        rekey.wait(30)
        return rekey

    def test_rekeyThenDaemon(self):
        """
        C{ekey-rekey} prints the key's serial and stores a new long-term key
        in the keyring (mode 0600); a daemon started afterwards with that
        keyring gets seeded entropy from the same simulator process.
        """
        from ekey.core.keyring import Keyring, parseSerial

        startSimulator(self, self.directory, listen=self.keySocket, seed=SEED, rate=500,
                       masterKey=MASTER_KEY_HEX)
        keyring = os.path.join(self.directory, "new-keyring")
        rekey = self.runRekey(keyring)
        self.assertEqual(rekey.poll(), 0, rekey.describe())
        self.assertIn(SERIAL, rekey.stdout())
        assertNoTraceback(self, rekey.stdout(), rekey.stderr())
        self.assertEqual(stat.S_IMODE(os.stat(keyring).st_mode), 0o600)
        newKey = Keyring.load(keyring).get(parseSerial(SERIAL))
        self.assertIsNotNone(newKey, "the keyring holds no key for the serial")
        self.assertNotEqual(newKey, bytes.fromhex(LONG_TERM_KEY_HEX),
                            "the long-term key did not change")

        daemon = startDaemon(self, self.directory, [self.keySocket], keyring, self.output)
        blocks = 200
        data = waitForSize(self.output, blocks * BLOCK_SIZE, timeout=30, process=daemon)
        data = data[: len(data) - len(data) % BLOCK_SIZE]
        [pieces] = traceServed([data], [SEED])
        indices = indicesOf(pieces)
        self.assertEqual(indices, list(range(indices[0], indices[0] + len(indices))),
                         "the daemon's output skips seeded blocks")
        self.assertCleanStop(daemon)
