"""
Tests for L{ekey.cli.twistd} and L{ekey.services.assembly}: the C{twistd
ekey} options, the configuration they build and the daemon built from it.
"""

import os
import socket

from twisted.application.service import IServiceCollection
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.usage import UsageError
from twisted.trial import unittest

from ekey.services.device import KeyService
from ekey.cli.twistd import Options
from ekey.services.assembly import Resources, prepare
from ekey.services.assembly import makeService as assemble
from ekey.services.config import DaemonConfig
from ekey.services.limits import LimitedFactory
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


class FakeKernel:
    """
    A kernel that opens and records what it is fed.
    """

    version = (6, 1)

    def __init__(self):
        self.added = []

    def open(self):
        pass

    def state(self):
        from ekey.core.kernel import KernelState

        return KernelState(True, 256, 256)

    def addEntropy(self, data, bits):
        self.added.append((data, bits))


class AssemblyTests(unittest.TestCase):
    """
    The assembly applies the trust rules and limits the configuration
    carries.
    """

    def test_unixListenerPrivate(self):
        """
        An EGD Unix socket without mode= is made mode 0600, as ekeyd's are;
        one with a mode keeps it.
        """
        config = DaemonConfig(upstreams=("unix:/nonexistent/up",), control=None,
                              ports=("unix:/tmp/a.sock", "unix:/tmp/b.sock:mode=660"))
        reactor = MemoryReactorClock()
        service = assemble(config, Resources(), reactor=reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        modes = {address: mode for address, factory, backlog, mode, wantPID
                 in reactor.unixServers}
        self.assertEqual(modes, {"/tmp/a.sock": 0o600, "/tmp/b.sock": 0o660})

    def test_listenersLimited(self):
        """
        Every EGD listener's factory is wrapped by the one connection
        limiter, with the configured handshake time-out and cap.
        """
        config = DaemonConfig(upstreams=("unix:/u",), control=None, ports=("tcp:0", "tcp:1"),
                              tlsHandshakeTimeout=3, maxConnections=50)
        reactor = MemoryReactorClock()
        service = assemble(config, Resources(), reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        factories = [factory for port, factory, backlog, interface in reactor.tcpServers]
        self.assertEqual(len(factories), 2)
        for factory in factories:
            self.assertIsInstance(factory, LimitedFactory)
            self.assertIs(factory.limiter, service.limiter)
        self.assertEqual((service.limiter.handshakeTimeout, service.limiter.maxConnections),
                         (3, 50))

    def kernelDaemon(self, **fields):
        config = DaemonConfig(kernel=True, control=None, **fields)
        reactor = MemoryReactorClock()
        with capturedLogs() as events:
            service = assemble(config, prepare(config, reactor, kernel=FakeKernel()),
                               reactor=reactor)
        [start] = [e for e in events if "ekey starting" in e["log_format"]]
        return service, formatEvent(start)

    def test_kernelCreditUnverified(self):
        """
        A remote plain-TCP upstream is credited 0 by default, and the start
        line says so and why.
        """
        service, line = self.kernelDaemon(upstreams=("tcp:192.0.2.1:8888",))
        self.assertEqual(service.kernelFeeder.shannonsPerByte, 0)
        self.assertIn("crediting 0 bits a byte", line)
        self.assertIn("tcp:192.0.2.1:8888 is not verified", line)

    def test_kernelCreditVerified(self):
        """
        A local upstream is credited the default, and the start line says
        every source is verified; an explicit credit is used as given.
        """
        service, line = self.kernelDaemon(upstreams=("unix:/run/ekey/egd",))
        self.assertEqual(service.kernelFeeder.shannonsPerByte, 7)
        self.assertIn("every source is verified", line)
        service, line = self.kernelDaemon(upstreams=("tcp:192.0.2.1:8888",), shannonsPerByte=6)
        self.assertEqual(service.kernelFeeder.shannonsPerByte, 6)

    def test_kernelWithUID(self):
        """
        C{twistd --uid} with --kernel is refused in one line pointing at
        the capability-based unit, before the kernel device is touched.
        """
        parent = {"uid": os.geteuid() + 1000}
        options = Options()
        options.parent = parent
        error = self.assertRaises(UsageError, options.parseOptions,
                                  ["--upstream", "unix:/u", "--kernel"])
        self.assertIn("ekey-feed-kernel.service", str(error))
        self.assertNotIn("\n", str(error))

    def test_portWithoutType(self):
        """
        A bare port number suggests its tcp: form.
        """
        options = Options()
        error = self.assertRaises(UsageError, options.parseOptions,
                                  ["--upstream", "unix:/u", "--port", "8888"])
        self.assertIn("tcp:8888", str(error))

    def test_twistdMakeService(self):
        """
        The plugin's module exports Options and makeService, which builds
        the daemon from the parsed options.
        """
        from ekey.cli import twistd

        self.patch(twistd, "disableCoreDumps", lambda: None)
        options = Options()
        options.parseOptions(["--upstream", "unix:/u", "--port", "tcp:0", "--control", "none"])
        service = twistd.makeService(options, reactor=MemoryReactorClock())
        self.assertTrue(IServiceCollection.providedBy(service))
        self.assertEqual(service.daemon.listeners[0][0], "tcp:0")


class TwistdTests(unittest.TestCase):
    """
    Under C{twistd}, a refusal is one line on standard error, without
    twistd's usage dump.
    """

    def test_oneLine(self):
        """
        C{twistd ekey --port 8888} exits 1 after one line naming the fix.
        """
        import io
        import sys

        from twisted.scripts.twistd import ServerOptions

        stderr, stdout = io.StringIO(), io.StringIO()
        self.patch(sys, "stderr", stderr)
        self.patch(sys, "stdout", stdout)
        config = ServerOptions()
        error = self.assertRaises(SystemExit, config.parseOptions,
                                  ["ekey", "--upstream", "unix:/u", "--port", "8888"])
        self.assertEqual(error.code, 1)
        self.assertEqual(stderr.getvalue(),
                         "twistd ekey: bad --port '8888': an endpoint needs its type, "
                         "such as tcp:8888\n")
        self.assertEqual(stdout.getvalue(), "")
