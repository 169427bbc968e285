"""
Interop tests for long-term re-keying: the real C{ekey-setkey} (ekeyd's)
and ours write the same keyring line for the same simulated key, and the
real ekeyd serves a key re-keyed by ours; C{ekey-rekey} has our running
daemon let go of a key and take it back.

To make the real tool's line reproducible, both tools re-key one simulated
key whose own entropy is fixed (its C{os.urandom} replaced), and each host
gets the same nonce: ekeyd's C{ekey-setkey} reads its nonce from
C{/dev/urandom}, here a file bind-mounted over it in a private mount
namespace (C{unshare -m}, as root); ours gets the same bytes from its
C{os.urandom}.  The new long-term key depends only on the serial, the
master key, the key's entropy and the nonce, so the two lines must be
equal byte for byte.
"""

from __future__ import annotations

import os
import shutil
import sys

from twisted.trial.unittest import FailTest, SkipTest, TestCase

from ekey.core.keyring import Keyring, formatSerial, parseSerial
from ekey.core.units import BLOCK_SIZE
from ekey.core.rekey import deriveLongTermKey, formatMasterKey
from tests.interop.processes import (
    LONG_TERM_KEY_HEX,
    MASTER_KEY_HEX,
    RunningProcess,
    SERIAL,
    assertNoTraceback,
    daemonLog,
    fileSize,
    makeTempDir,
    pythonEnvironment,
    socketPath,
    startDaemon,
    startEkeyd,
    startSimulator,
    waitFor,
    waitForLog,
    waitForSize,
    writeKeyring,
)
from tests.interop.requirements import findPeer, interopRequired

#: The simulated key's entropy in every re-key (its os.urandom).
DEVICE_BYTE = 0x42
#: The hosts' nonce: the first 12 bytes of what both read as random.
NONCE = bytes(range(0xA0, 0xA0 + 12))
SEED = b"interop-setkey"


def _patchedRandom(data: bytes) -> str:
    """
    @return: Python that replaces C{os.urandom} with one repeating C{data}.
    """
    return (f"import os; _d = {data!r}; "
            "os.urandom = lambda n: (_d * (n // len(_d) + 1))[:n]; ")


def startFixedKey(testCase, directory: str) -> RunningProcess:
    """
    Start C{ekey-sim} on a pty, with the master key and seeded plaintext,
    whose re-key entropy is always C{DEVICE_BYTE} repeated.

    @return: the simulator, its pty path in C{ptyPath}.
    """
    argv = [sys.executable, "-c",
            _patchedRandom(bytes([DEVICE_BYTE]))
            + "from ekey.cli.sim import main; main()",
            "--pty", "--serial", SERIAL, "--long-term-key", LONG_TERM_KEY_HEX,
            "--master-key", MASTER_KEY_HEX, "--seed", SEED.decode(), "--rate", "200"]
    process = RunningProcess(testCase, "ekey-sim", argv, directory, env=pythonEnvironment())

    def printedPath():
        lines = [line.strip() for line in process.stdout().splitlines()]
        return next((line for line in lines if line.startswith("/dev/")), None)

    process.ptyPath = waitFor(printedPath, 20, "the simulator's pty path", process)
    return process


def requireUnshare() -> str:
    """
    @return: the path of C{unshare}, if a private mount namespace can be
        made here (root, C{unshare -m}).
    @raise SkipTest: if not (C{FailTest} under C{EKEY_REQUIRE_INTEROP=1}).
    """
    unshare = shutil.which("unshare")
    reason = None
    if unshare is None:
        reason = "unshare (util-linux) is not installed"
    elif os.geteuid() != 0:
        reason = "a private mount namespace for /dev/urandom needs root"
    if reason is not None:
        if interopRequired():
            raise FailTest(reason)
        raise SkipTest(reason)
    return unshare


def keyLines(path: str):
    """
    @return: a keyring file's key lines (without comments and blanks).
    """
    with open(path) as f:
        return [line for line in f.read().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]


class SetKeyInteropTests(TestCase):
    """
    ekeyd's C{ekey-setkey} and ours on one simulated key.
    """

    def setUp(self):
        self.setkey = findPeer("ekey-setkey", "ekeyd", system=True)
        self.unshare = requireUnshare()
        self.directory = makeTempDir(self)
        self.masterKeyFile = os.path.join(self.directory, "master-key")
        with open(self.masterKeyFile, "w") as f:
            f.write(formatMasterKey(bytes.fromhex(MASTER_KEY_HEX)) + "\n")
        os.chmod(self.masterKeyFile, 0o600)
        self.random = os.path.join(self.directory, "urandom")
        with open(self.random, "wb") as f:
            f.write(NONCE * 64)

    def runReal(self, keyring: str, path: str) -> RunningProcess:
        """
        Run ekeyd's C{ekey-setkey} with C{/dev/urandom} reading C{NONCE}.
        """
        card = formatMasterKey(bytes.fromhex(MASTER_KEY_HEX)).replace(" ", "")
        script = 'mount --bind "$1" /dev/urandom && shift && exec "$@"'
        argv = [self.unshare, "-m", "sh", "-c", script, "sh", self.random,
                self.setkey, "-s", SERIAL, "-m", card, "-f", keyring, path]
        process = RunningProcess(self, "real-ekey-setkey", argv, self.directory)
        process.wait(30)
        return process

    def runOurs(self, keyring: str, path: str) -> RunningProcess:
        """
        Run our C{ekey-setkey}, whose nonce is C{NONCE}.
        """
        argv = [sys.executable, "-c",
                _patchedRandom(NONCE) + "from ekey.cli.setkey import main; main()",
                "-s", SERIAL, "--master-key-file", self.masterKeyFile, "-f", keyring, path]
        process = RunningProcess(self, "ekey-setkey", argv, self.directory,
                                 env=pythonEnvironment())
        process.wait(30)
        return process

    def test_sameKeyringLine(self):
        """
        For the same key, master key, key entropy and nonce, ekeyd's
        C{ekey-setkey} and ours write the same keyring line, which is the
        long-term key the protocol derives; each reads the other's file
        (ours keeps the real tool's comment line).
        """
        key = startFixedKey(self, self.directory)
        realKeyring = os.path.join(self.directory, "real-keyring")
        ourKeyring = os.path.join(self.directory, "our-keyring")
        open(realKeyring, "w").close()
        open(ourKeyring, "w").close()

        real = self.runReal(realKeyring, key.ptyPath)
        self.assertEqual(real.poll(), 0, real.describe())
        ours = self.runOurs(ourKeyring, key.ptyPath)
        self.assertEqual(ours.poll(), 0, ours.describe())
        assertNoTraceback(self, ours.stderr())

        expected = deriveLongTermKey(parseSerial(SERIAL), bytes.fromhex(MASTER_KEY_HEX),
                                     bytes([DEVICE_BYTE]) * 32, NONCE)
        line = f"{SERIAL} {formatSerial(expected)}"
        self.assertEqual(keyLines(realKeyring), [line])
        self.assertEqual(keyLines(ourKeyring), [line])

        # Ours updates the real tool's file in place, keeping its comment.
        with open(realKeyring) as f:
            comments = [text for text in f.read().splitlines() if text.startswith("#")]
        again = self.runOurs(realKeyring, key.ptyPath)
        self.assertEqual(again.poll(), 0, again.describe())
        with open(realKeyring) as f:
            self.assertEqual(f.read().splitlines(), comments + [line])
        # And the real tool reads ours.
        real = self.runReal(ourKeyring, key.ptyPath)
        self.assertEqual(real.poll(), 0, real.describe())
        self.assertEqual(keyLines(ourKeyring), [line])

    def test_realDaemonUsesOurLine(self):
        """
        The real ekeyd, given the keyring our C{ekey-setkey} wrote, keys
        the re-keyed simulator and writes its entropy.  (ekeyd waits for a
        pty key to speak first, so the key is on a Unix socket here, which
        ekeyd's C{ekey-setkey} cannot open.)
        """
        findPeer("ekeyd")
        keySocket = socketPath(self, self.directory)
        startSimulator(self, self.directory, listen=keySocket, seed=SEED, rate=200,
                       masterKey=MASTER_KEY_HEX)
        keyring = os.path.join(self.directory, "keyring")
        ours = self.runOurs(keyring, keySocket)
        self.assertEqual(ours.poll(), 0, ours.describe())
        self.assertNotEqual(Keyring.load(keyring).get(parseSerial(SERIAL)),
                            bytes.fromhex(LONG_TERM_KEY_HEX))
        output = os.path.join(self.directory, "ekeyd.out")
        ekeyd = startEkeyd(self, self.directory, [keySocket], keyring, output)
        waitForSize(output, 64 * BLOCK_SIZE, timeout=30, process=ekeyd)


class RekeyDaemonInteropTests(TestCase):
    """
    Our C{ekey-rekey} with our daemon (C{twistd ekey}) serving the key.
    """

    def setUp(self):
        self.directory = makeTempDir(self)
        self.keySocket = socketPath(self, self.directory)
        self.keyring = writeKeyring(os.path.join(self.directory, "keyring"))
        self.output = os.path.join(self.directory, "out")
        self.masterKeyFile = os.path.join(self.directory, "master-key")
        with open(self.masterKeyFile, "w") as f:
            f.write(formatMasterKey(bytes.fromhex(MASTER_KEY_HEX)) + "\n")
        os.chmod(self.masterKeyFile, 0o600)

    def runRekey(self, *extra: str) -> RunningProcess:
        argv = [sys.executable, "-c", "from ekey.cli.rekey import main; main()",
                "--device", self.keySocket, "--keyring", self.keyring,
                "--master-key-file", self.masterKeyFile, "--timeout", "15", *extra]
        process = RunningProcess(self, "ekey-rekey", argv, self.directory,
                                 env=pythonEnvironment())
        process.wait(60)
        return process

    def test_releaseAndReAdd(self):
        """
        With our daemon serving the key, C{ekey-rekey} has it let go of the
        key (the simulator serves one host at a time), re-keys it, stores
        the key, and has the daemon reload the keyring and serve the key
        again: the daemon's output goes on growing under the new key.
        """
        startSimulator(self, self.directory, listen=self.keySocket, seed=SEED, rate=200,
                       masterKey=MASTER_KEY_HEX)
        daemon = startDaemon(self, self.directory, [self.keySocket], self.keyring, self.output)
        waitForSize(self.output, 16 * BLOCK_SIZE, timeout=30, process=daemon)
        # Relative to the directory both run in: the absolute path may be
        # too long for a Unix socket.
        control = "unix:ekey.control"
        rekey = self.runRekey("--control", control)
        self.assertEqual(rekey.poll(), 0, rekey.describe())
        assertNoTraceback(self, rekey.stdout(), rekey.stderr())
        self.assertEqual(rekey.stderr(), "")
        out = rekey.stdout()
        self.assertIn("let go of key", out)
        self.assertIn("Verified", out)
        self.assertIn("serves the key again", out)
        newKey = Keyring.load(self.keyring).get(parseSerial(SERIAL))
        self.assertNotEqual(newKey, bytes.fromhex(LONG_TERM_KEY_HEX))
        waitForLog(daemon, "reloaded the keyring", timeout=20)
        size = fileSize(self.output)
        waitForSize(self.output, size + 64 * BLOCK_SIZE, timeout=30, process=daemon)
        log = daemonLog(daemon)
        self.assertIn("removed", log)
        self.assertIn("added", log)

    def test_wrongMasterKeyWithDaemon(self):
        """
        A wrong master key: exit 1 with one line; the daemon gets its key
        back, with its old long-term key, and goes on serving.
        """
        startSimulator(self, self.directory, listen=self.keySocket, seed=SEED, rate=200,
                       masterKey=MASTER_KEY_HEX)
        daemon = startDaemon(self, self.directory, [self.keySocket], self.keyring, self.output)
        waitForSize(self.output, 16 * BLOCK_SIZE, timeout=30, process=daemon)
        with open(self.masterKeyFile, "w") as f:
            f.write(formatMasterKey(bytes(32)) + "\n")
        # Relative to the directory both run in: the absolute path may be
        # too long for a Unix socket.
        control = "unix:ekey.control"
        rekey = self.runRekey("--control", control)
        self.assertEqual(rekey.poll(), 1, rekey.describe())
        self.assertEqual(len(rekey.stderr().splitlines()), 1, rekey.describe())
        self.assertIn("refused the master key", rekey.stderr())
        self.assertEqual(Keyring.load(self.keyring).get(parseSerial(SERIAL)),
                         bytes.fromhex(LONG_TERM_KEY_HEX))
        size = fileSize(self.output)
        waitForSize(self.output, size + 64 * BLOCK_SIZE, timeout=30, process=daemon)

    def test_noDaemon(self):
        """
        With no daemon, C{ekey-rekey} says so and re-keys the key directly.
        """
        startSimulator(self, self.directory, listen=self.keySocket, seed=SEED, rate=200,
                       masterKey=MASTER_KEY_HEX)
        control = "unix:nobody.control"
        rekey = self.runRekey("--control", control)
        self.assertEqual(rekey.poll(), 0, rekey.describe())
        self.assertIn(f"No daemon answered on {control}", rekey.stdout())
        self.assertNotEqual(Keyring.load(self.keyring).get(parseSerial(SERIAL)),
                            bytes.fromhex(LONG_TERM_KEY_HEX))


