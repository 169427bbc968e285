"""
Tests for L{ekey.services.keys.KeyManager}: the daemon's numbered keys.
"""

import os
import socket

from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from ekey.services.device import KeyPathError
from ekey.core.keyring import KeyringError
from ekey.services.keys import KeyNotFound
from ekey.core.pool import EntropyPool
from tests.memory import boundSocket, connectKey, startKeyManager, writeKeyring
from tests.vectors import LONG_TERM_KEY, SERIAL, SESSION, VECTORS, deviceFrames


class KeyManagerTests(unittest.TestCase):
    """
    Keys are added, found, described, counted and removed by number.
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

    def test_addFindDescribe(self):
        """
        Added keys get numbers from 1; they can be found by number, path
        and, once it has said it, serial; a running key says so.
        """
        path = self.socketPath()
        self.assertEqual(self.manager.add(path), 1)
        self.assertEqual(self.manager.describe(1)["state"], "Key closed")
        self.connect(1)
        description = self.manager.describe(1)
        self.assertEqual(description["state"], "Running OK")
        self.assertEqual(description["serial"], SESSION["serial_pem"])
        self.assertTrue(description["ok"])
        self.assertEqual(self.manager.find("1"), 1)
        self.assertEqual(self.manager.find(path), 1)
        self.assertEqual(self.manager.find(SESSION["serial_pem"]), 1)
        self.assertRaises(KeyNotFound, self.manager.find, "7")

    def test_addErrors(self):
        """
        A missing path, or a key served already, is refused.
        """
        path = self.socketPath()
        self.manager.add(path)
        self.assertRaises(KeyPathError, self.manager.add, path)
        self.assertRaises(KeyPathError, self.manager.add, self.mktemp())

    def test_statistics(self):
        """
        Statistics carry ekeydctl's names, with temperatures in K, C and F
        and the fail mode in words.
        """
        self.manager.add(self.socketPath())
        self.connect(1, frames=12)
        self.reactor.advance(10)
        stats = self.manager.statistics(1, self.reactor.seconds())
        self.assertEqual(stats["KeyTemperatureK"], 315.0)
        self.assertEqual(stats["KeyTemperatureC"], 41.85)
        self.assertEqual(stats["KeyTemperatureF"], 107.33)
        self.assertEqual(stats["KeyVoltage"], 3.254)
        self.assertEqual(stats["KeyRawShannonPerByteL"], 2.94)
        self.assertEqual(stats["KeyShortBadness"], "efm_ok")
        self.assertEqual(stats["KeyEnglishBadness"], "No failure")
        self.assertEqual(stats["TotalEntropy"], 160)
        self.assertEqual(stats["ConnectionTime"], 10)
        self.assertEqual(stats["EntropyRate"], 128)
        self.assertEqual(stats["MACFailures"], 1)

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
        Removing a key stops its service and frees its number's slot.
        """
        self.manager.add(self.socketPath())
        service = self.manager._keys[1]
        self.assertEqual(self.manager.remove("1"), 1)
        self.assertFalse(service.running)
        self.assertEqual(self.manager.numbers(), [])
        self.assertRaises(KeyNotFound, self.manager.remove, "1")
        self.assertEqual(self.manager.add(self.socketPath()), 2)

    def test_reloadKeyring(self):
        """
        Reloading a keyring that gained a serial restarts the key that was
        stopped for want of it.
        """
        with open(self.keyringPath, "w") as f:
            f.write("# empty\n")
        self.manager.reloadKeyring()
        self.manager.add(self.socketPath())
        protocol = self.connect(1, frames=1)
        self.assertEqual(self.manager.describe(1)["state"], "Serial unknown")
        with open(self.keyringPath, "w") as f:
            f.write(VECTORS["keyring_line_text"] + "\n")
        self.assertEqual(self.manager.reloadKeyring(), 1)
        self.assertTrue(protocol.transport.value().endswith(b"\x03"))
        for frame in deviceFrames()[:4]:
            protocol.dataReceived(frame)
        self.assertEqual(self.manager.describe(1)["state"], "Running OK")

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
        Every key in a directory not served yet is added.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        for name in ("one", "two"):
            s = socket.socket(socket.AF_UNIX)
            self.addCleanup(s.close)
            s.bind(os.path.join(directory, name))
        open(os.path.join(directory, "not-a-key"), "w").close()
        self.assertEqual(self.manager.addAll(directory), [1, 2])
        self.assertEqual(self.manager.addAll(directory), [])
        self.assertRaises(KeyPathError, self.manager.addAll, self.mktemp())
        self.assertEqual(LONG_TERM_KEY, self.manager.keyring.get(SERIAL))
