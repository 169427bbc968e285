"""
Tests for L{ekey.cli.twistd} and L{ekey.services.assembly}: the C{twistd
ekey} options, the configuration they build and the daemon built from it.
"""

import os
import socket

from twisted.application.service import IServiceCollection
from twisted.internet.testing import MemoryReactorClock
from twisted.python.usage import UsageError
from twisted.trial import unittest

from ekey.services.device import KeyService
from ekey.cli.twistd import Options
from ekey.services.assembly import makeService as assemble
from tests.vectors import VECTORS


class OptionsTests(unittest.TestCase):
    """
    Bad configuration stops start-up with a clear message.
    """

    def setUp(self):
        self.keyring = self.mktemp()
        with open(self.keyring, "w") as f:
            f.write(VECTORS["keyring_line_text"] + "\n")
        self.device = self.mktemp()
        self.listener = socket.socket(socket.AF_UNIX)
        self.addCleanup(self.listener.close)
        self.listener.bind(self.device)
        self.output = self.mktemp()
        self.device2 = self.mktemp()
        self.listener2 = socket.socket(socket.AF_UNIX)
        self.addCleanup(self.listener2.close)
        self.listener2.bind(self.device2)

    def parse(self, *args):
        options = Options()
        options.parseOptions(list(args))
        return options

    def build(self, options, reactor=None):
        """
        Build the daemon from parsed options, as C{twistd}'s makeService
        does (without disabling core dumps in the test process).
        """
        return assemble(options.config, options.resources, reactor=reactor or MemoryReactorClock())

    def test_good(self):
        """
        Devices, a keyring, ports and an output file make a service with one
        key service per device, a listener per port and the sink, all
        around one pool; the sink takes what the keys deliver.
        """
        options = self.parse("--device", self.device, "--device", self.device2,
                             "--keyring", self.keyring, "--output-file", self.output,
                             "--port", "tcp:0:interface=127.0.0.1", "--pool-size", "4096")
        reactor = MemoryReactorClock()
        service = self.build(options, reactor)
        self.assertTrue(IServiceCollection.providedBy(service))
        keys = [s for s in service.keys if isinstance(s, KeyService)]
        self.assertEqual(len(keys), 2)
        self.assertEqual(keys[0].path, self.device)
        self.assertEqual(service.keys.numbers(), [1, 2])
        self.assertEqual(service.pool.capacity, 4096)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(len(reactor.tcpServers), 1)
        service.pool.add(b"e" * 64)
        with open(self.output, "rb") as f:
            self.assertEqual(f.read(), b"e" * 64)

    def test_portOnly(self):
        """
        An EGD port alone is enough output; the pool then keeps what the
        keys deliver for EGD clients.
        """
        options = self.parse("--device", self.device, "--keyring", self.keyring,
                             "--port", "unix:" + self.mktemp() + ":mode=600")
        service = self.build(options)
        [(description, factory)] = service.daemon.listeners
        self.assertIs(factory.pool, service.pool)

    def test_badPort(self):
        """
        A port description Twisted cannot parse is refused at start-up.
        """
        self.assertUsage("bad --port 'nosuch:1'", "--device", self.device, "--keyring", self.keyring,
                         "--port", "nosuch:1")

    def test_deviceDirectory(self):
        """
        A key directory alone is a source; one that is not a directory is
        refused.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        options = self.parse("--device-dir", directory, "--keyring", self.keyring,
                             "--port", "tcp:0")
        self.assertEqual(options.config.devices, ())
        self.assertEqual(options.config.deviceDirs, (directory,))
        self.assertUsage("not a directory", "--device-dir", self.output,
                         "--keyring", self.keyring, "--port", "tcp:0")

    def assertUsage(self, expected, *args):
        error = self.assertRaises(UsageError, self.parse, *args)
        self.assertIn(expected, str(error))
        self.assertNotIn("\n", str(error))

    def test_noDevice(self):
        """
        No device at all is refused.
        """
        self.assertUsage("--device", "--keyring", self.keyring, "--output-file", self.output)

    def test_duplicateDevice(self):
        """
        The same key twice is refused rather than read by two sessions.
        """
        self.assertUsage("more than once", "--device", self.device, "--device", self.device,
                         "--keyring", self.keyring, "--output-file", self.output)

    def test_missingDevice(self):
        """
        A device path that is not there is named in the error.
        """
        missing = self.mktemp()
        self.assertUsage(missing, "--device", missing, "--keyring", self.keyring,
                         "--output-file", self.output)

    def test_badKeyring(self):
        """
        A malformed keyring is refused with its line number; a missing one
        with its path.
        """
        with open(self.keyring, "a") as f:
            f.write("garbage\n")
        self.assertUsage("line 2", "--device", self.device, "--keyring", self.keyring,
                         "--output-file", self.output)
        missing = self.mktemp()
        self.assertUsage(missing, "--device", self.device, "--keyring", missing,
                         "--output-file", self.output)

    def test_noOutput(self):
        """
        A daemon with nowhere to put entropy is refused.
        """
        self.assertUsage("--port, --output-file or --kernel", "--device", self.device,
                         "--keyring", self.keyring)

    def test_badOutput(self):
        """
        An output file that cannot be opened is refused with its path.
        """
        bad = self.mktemp() + "/missing/out"
        self.assertUsage(bad, "--device", self.device, "--keyring", self.keyring,
                         "--output-file", bad)
