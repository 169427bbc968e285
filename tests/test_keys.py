"""
Tests for L{ekey.services.keys}: the daemon's numbered keys, and which
paths may be added as keys at run time.
"""

import os
import pty
import socket

from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from ekey.core.keyring import KeyringError
from ekey.core.pool import EntropyPool
from ekey.core.session import KeyState
from ekey.services.device import KeyPathError
from ekey.services.keys import KeyNotFound, checkRunTimeKeyPath
from tests.memory import boundSocket, connectKey, startKeyManager, writeKeyring
from tests.vectors import LONG_TERM_KEY, SERIAL, SESSION, VECTORS, deviceFrames


class KeyManagerTests(unittest.TestCase):
    """
    Keys are added, found, described and removed by number.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.keyringPath = writeKeyring(self)
        self.manager = startKeyManager(self, self.reactor, EntropyPool(1 << 16),
                                       self.keyringPath)

    def socketPath(self):
        return boundSocket(self, self.mktemp())

    def connect(self, number, frames=4):
        """
        Connect key C{number} in memory and replay the transcript's first
        frames.
        """
        return connectKey(self, self.reactor, self.manager, number, frames)

    def state(self, number):
        return self.manager.keyStatus(number).key.state

    def test_addFindStatus(self):
        """
        Added keys get numbers from 1; they can be found by number, path
        and, once it has said it, serial; their status is the key service's.
        """
        path = self.socketPath()
        self.assertEqual(self.manager.add(path), 1)
        self.assertIs(self.state(1), KeyState.CLOSED)
        self.connect(1)
        numbered = self.manager.keyStatus(1)
        self.assertEqual(numbered.number, 1)
        self.assertIs(numbered.key.state, KeyState.RUNNING)
        self.assertEqual(numbered.key.serial, SESSION["serial_pem"])
        self.assertEqual(self.manager.status(), (numbered,))
        for identifier in ("1", path, SESSION["serial_pem"]):
            self.assertEqual(self.manager.find(identifier).number, 1, identifier)
        self.assertRaises(KeyNotFound, self.manager.find, "7")
        self.assertRaises(KeyNotFound, self.manager.keyStatus, 7)

    def test_addErrors(self):
        """
        A missing path, or a key served already, is refused.
        """
        path = self.socketPath()
        self.manager.add(path)
        self.assertRaises(KeyPathError, self.manager.add, path)
        self.assertRaises(KeyPathError, self.manager.add, self.mktemp())

    def test_addChecked(self):
        """
        A check given to C{add} can refuse a path; nothing is added then.
        """
        def refuse(path):
            raise KeyPathError(f"not {path}")

        self.assertRaises(KeyPathError, self.manager.add, self.socketPath(), refuse)
        self.assertEqual(self.manager.numbers(), [])

    def test_ownSocketsAreNotKeys(self):
        """
        The daemon's own Unix sockets (EGD, control) are never taken for
        keys, even by addall.
        """
        own = self.socketPath()
        self.manager.ownSockets = [own]
        self.assertIn("own sockets", str(self.assertRaises(KeyPathError, self.manager.add, own)))
        self.assertEqual(str(KeyNotFound("no key '9'")), "no key '9'")

    def test_remove(self):
        """
        Removing a key stops its service, answers the key as it was, and
        frees its number's slot.
        """
        path = self.socketPath()
        self.manager.add(path)
        service = self.manager._keys[1]
        removed = self.manager.remove("1")
        self.assertEqual((removed.number, removed.key.path), (1, path))
        self.assertFalse(service.running)
        self.assertEqual(self.manager.numbers(), [])
        self.assertRaises(KeyNotFound, self.manager.remove, "1")
        self.assertEqual(self.manager.add(self.socketPath()), 2)

    def test_reloadKeyring(self):
        """
        Reloading a keyring that gained a serial restarts the key that was
        stopped for want of it on the connection it has (nothing is
        reopened, which would need the device's permissions after
        privileges were dropped), and it then runs.
        """
        with open(self.keyringPath, "w") as f:
            f.write("# empty\n")
        self.manager.reloadKeyring()
        self.manager.add(self.socketPath())
        first = self.connect(1, frames=1)
        self.assertIs(self.state(1), KeyState.UNKNOWN_SERIAL)
        with open(self.keyringPath, "w") as f:
            f.write(VECTORS["keyring_line_text"] + "\n")
        connections = len(self.reactor.unixClients)
        self.assertEqual(self.manager.reloadKeyring(), 1)
        self.assertFalse(first.transport.disconnecting)
        self.assertEqual(len(self.reactor.unixClients), connections)
        # Reset, it says its serial again and is keyed.
        self.assertIs(self.state(1), KeyState.WAITING)
        first.dataReceived(b"".join(deviceFrames()[:4]))
        self.assertIs(self.state(1), KeyState.RUNNING)

    def test_reloadLeavesRunningKeys(self):
        """
        A running key is not disturbed by a keyring reload.
        """
        self.manager.add(self.socketPath())
        protocol = self.connect(1)
        self.manager.reloadKeyring()
        self.assertFalse(protocol.transport.disconnecting)
        self.assertIs(self.state(1), KeyState.RUNNING)

    def test_reloadOnlyTheConfiguredKeyring(self):
        """
        C{reloadKeyring} takes no path: it reads the configured file only.
        """
        self.assertEqual(self.manager.keyringPath, self.keyringPath)
        self.assertRaises(TypeError, self.manager.reloadKeyring, self.mktemp())

    def test_reloadBadKeyring(self):
        """
        A keyring that cannot be read leaves the old one in force.
        """
        old = self.manager.keyring
        with open(self.keyringPath, "w") as f:
            f.write("broken line\n")
        self.assertRaises(KeyringError, self.manager.reloadKeyring)
        self.assertIs(self.manager.keyring, old)

    def test_addAll(self):
        """
        Every key in a directory not served yet (and let in by the check)
        is added.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        for name in ("one", "two", "three"):
            s = socket.socket(socket.AF_UNIX)
            self.addCleanup(s.close)
            s.bind(os.path.join(directory, name))
        open(os.path.join(directory, "not-a-key"), "w").close()

        def notThree(path):
            if path.endswith("three"):
                raise KeyPathError("no")

        self.assertEqual(self.manager.addAll(directory, notThree), [1, 2])
        self.assertEqual(self.manager.addAll(directory, notThree), [])
        self.assertRaises(KeyPathError, self.manager.addAll, self.mktemp())
        self.assertEqual(LONG_TERM_KEY, self.manager.keyring.get(SERIAL))


class RunTimeKeyPathTests(unittest.TestCase):
    """
    At run time only serial ports owned by root or the daemon's user, and
    entries of the device directories, may become keys.
    """

    def openPTY(self):
        """
        @return: the path of a new pty's terminal side (closed at the end).
        """
        master, slave = pty.openpty()
        self.addCleanup(os.close, master)
        self.addCleanup(os.close, slave)
        return os.ttyname(slave)

    def test_socketRefused(self):
        """
        A Unix socket outside the device directories is refused in a line
        saying socket keys come from the command line.
        """
        path = boundSocket(self, self.mktemp())
        message = str(self.assertRaises(KeyPathError, checkRunTimeKeyPath, path))
        self.assertIn("--device", message)
        self.assertIn("not added at run time", message)

    def test_deviceDirectoryEntry(self):
        """
        Anything that is a key in a configured device directory is let in,
        sockets too (the directory is the owner's choice); its link target
        does not matter, the entry's own directory does.
        """
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        path = boundSocket(self, os.path.join(directory, "k"))
        checkRunTimeKeyPath(path, [directory])
        checkRunTimeKeyPath(os.path.join(directory, ".", "k"), [directory + "/"])
        outside = os.path.abspath(self.mktemp())
        os.symlink(path, outside)
        self.assertRaises(KeyPathError, checkRunTimeKeyPath, outside, [directory])

    def test_serialPort(self):
        """
        A terminal device owned by root or the daemon's user is let in.
        """
        checkRunTimeKeyPath(self.openPTY())
        checkRunTimeKeyPath(self.openPTY(), getuid=lambda: 1234)

    def test_notATerminal(self):
        """
        A character device that is no terminal (C{/dev/null}) is refused.
        """
        message = str(self.assertRaises(KeyPathError, checkRunTimeKeyPath, "/dev/null"))
        self.assertEqual(message, "/dev/null is a character device but not a serial port")

    def test_someoneElsesTerminal(self):
        """
        A terminal owned by another user (such as a pty where they run a
        simulator) is refused.
        """
        if os.getuid() != 0:
            raise unittest.SkipTest("needs root, to give a pty to another user")
        path = self.openPTY()
        os.chown(path, 65534, -1)
        message = str(self.assertRaises(KeyPathError, checkRunTimeKeyPath, path))
        self.assertIn("belongs to uid 65534", message)

    def test_missingOrRegular(self):
        """
        A missing path or a regular file is refused, as at start.
        """
        self.assertRaises(KeyPathError, checkRunTimeKeyPath, self.mktemp())
        regular = self.mktemp()
        open(regular, "w").close()
        self.assertRaises(KeyPathError, checkRunTimeKeyPath, regular)
