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

from ekey.services.device import KeyDirectoryService, KeyService
from ekey.cli.twistd import Options
from ekey.services.assembly import Resources, prepare
from ekey.services.assembly import makeService as assemble
from ekey.services.config import DaemonConfig
from ekey.services.limits import LimitedFactory
from tests.vectors import VECTORS


class OptionsFixture:
    """
    A keyring, two socket keys and an output path, and ways to parse
    options and build the daemon from them.
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

    def assertUsage(self, expected, *args):
        error = self.assertRaises(UsageError, self.parse, *args)
        self.assertIn(expected, str(error))
        self.assertNotIn("\n", str(error))



class OptionsTests(OptionsFixture, unittest.TestCase):
    """
    Bad configuration stops start-up with a clear message.
    """

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
        A key directory alone is a source, and is repeatable; one that does
        not exist yet is accepted (it is watched until it appears); a path
        that exists and is not a directory is refused.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        missing = self.mktemp()
        options = self.parse("--device-dir", directory, "--device-dir", missing,
                             "--keyring", self.keyring, "--port", "tcp:0")
        self.assertEqual(options.config.devices, ())
        self.assertEqual(options.config.deviceDirs, (directory, missing))
        self.assertFalse(options.config.defaultSources)
        open(self.output, "w").close()
        self.assertUsage(f"--device-dir {self.output} is not a directory",
                         "--device-dir", self.output, "--keyring", self.keyring,
                         "--port", "tcp:0")

    def test_defaultSources(self):
        """
        With no --device, --device-dir or --upstream, the daemon serves the
        keys that appear in ekeyd's stock directories, waiting for those
        that do not exist yet, and says so in its start line.
        """
        from ekey.services import config

        present = self.mktemp()
        os.mkdir(present)
        missing = self.mktemp()
        self.patch(config, "DEFAULT_DEVICE_DIRS", (present, missing))
        options = self.parse("--keyring", self.keyring, "--port", "tcp:0", "--control", "none")
        self.assertEqual(options.config.deviceDirs, (present, missing))
        self.assertTrue(options.config.defaultSources)
        with capturedLogs() as events:
            service = self.build(options)
        watchers = sorted(s.directory for s in service if isinstance(s, KeyDirectoryService))
        self.assertEqual(watchers, sorted([present, missing]))
        [line] = [formatEvent(e) for e in events if "starting" in formatEvent(e)]
        self.assertIn(f"the keys that appear in {present}, {missing} (no --device, "
                      "--device-dir or --upstream given: ekeyd's stock directories)", line)
        upstream = self.parse("--upstream", "unix:/u", "--port", "tcp:0", "--control", "none")
        self.assertEqual(upstream.config.deviceDirs, ())
        self.assertFalse(upstream.config.defaultSources)

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
        [start] = [e for e in events if " starting: " in e["log_format"]]
        return service, formatEvent(start)

    def test_healthTestsNamedAtStart(self):
        """
        The start line says whether the health tests are compiled or run in
        pure Python (about ten times slower), and how to build them.
        """
        from ekey.core import stattests

        for accelerated, expected in ((True, "health tests compiled"),
                                      (False, "health tests in pure Python (about ten times "
                                              "slower: install ekey where a C compiler")):
            self.patch(stattests, "ACCELERATED", accelerated)
            _, line = self.kernelDaemon(upstreams=("unix:/u",))
            self.assertIn(expected, line)

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


class WiringTests(OptionsFixture, unittest.TestCase):
    """
    The options that reach services beyond the pool: the control channels'
    owner-only rule, ekeyd's control protocol, the upstreams' checks and
    stall time-out, systemd's notification, the version and the log level.
    """

    def base(self):
        return ("--device", self.device, "--keyring", self.keyring, "--port", "tcp:0",
                "--control", "none")

    def test_controlChannelsLocalOnly(self):
        """
        Neither control channel may be anything but a Unix socket, nor have
        a mode that lets others in; a control group must exist.
        """
        self.assertUsage("must be a local Unix socket", *self.base(), "--control", "tcp:7000")
        self.assertUsage("--ekeyd-control tcp:7001: the control channel must be a local Unix",
                         *self.base(), "--ekeyd-control", "tcp:7001")
        self.assertUsage("would let other users reach", *self.base(),
                         "--ekeyd-control", f"unix:{self.mktemp()}:mode=666")
        self.assertUsage("no such group", *self.base(), "--control-group", "no-such-group-x")

    def test_ekeydControlServed(self):
        """
        C{--ekeyd-control} serves ekeyd's protocol beside the AMP channel,
        on a socket made owner-only, never taken for a key.
        """
        from ekey.services.ekeydcontrol import EkeydControlFactory

        path = self.mktemp()
        options = self.parse(*self.base(), "--ekeyd-control", f"unix:{path}")
        reactor = MemoryReactorClock()
        service = self.build(options, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        factories = [args[1] for args in reactor.unixServers]
        self.assertEqual([type(f) for f in factories], [EkeydControlFactory])
        self.assertEqual(reactor.unixServers[0][0], path)
        self.assertEqual(reactor.unixServers[0][3], 0o600)
        self.assertIn(path, service.keys.ownSockets)

    def test_upstreams(self):
        """
        An C{ssl:} upstream is refused with a hint; C{priority=} is taken
        off before Twisted reads the endpoint; the stall time-out reaches
        the pull policy, and so does the high watermark: 512 KiB by
        default, the pool size when that is smaller, or as given.
        """
        self.assertUsage("use tls:", *self.base(), "--upstream", "ssl:example.net:8888")
        options = self.parse(*self.base(), "--upstream", "unix:/run/a:priority=1",
                             "--upstream-stall-timeout", "7.5")
        service = self.build(options)
        self.assertEqual(service.pullPolicy.stallTimeout, 7.5)
        self.assertEqual(service.pullPolicy.highWater, 524288)
        for extra, high in ((["--pool-size", "300000"], 300000),
                            (["--pool-size", "300000", "--high-water", "200000"], 200000)):
            options = self.parse(*self.base(), "--upstream", "unix:/run/a", *extra)
            self.assertEqual(self.build(options).pullPolicy.highWater, high)
        self.assertUsage("--high-water (600000) <= --pool-size (300000)", *self.base(),
                         "--upstream", "unix:/run/a", "--pool-size", "300000",
                         "--high-water", "600000")

    def test_systemdNotified(self):
        """
        The daemon has a systemd notifier, waiting for each key's first
        attempt.
        """
        from ekey.services.notify import SystemdNotifier

        service = self.build(self.parse(*self.base()))
        notifiers = [s for s in service if isinstance(s, SystemdNotifier)]
        self.assertEqual(len(notifiers), 1)
        self.assertEqual(len(notifiers[0]._ready), 1)

    def test_version(self):
        """
        C{--version} prints the version and exits 0.
        """
        import io
        from contextlib import redirect_stdout

        from ekey import __version__

        out = io.StringIO()
        with redirect_stdout(out):
            error = self.assertRaises(SystemExit, self.parse, "--version")
        self.assertEqual((error.code, out.getvalue()), (0, f"twistd ekey {__version__}\n"))

    def test_logLevel(self):
        """
        C{--log-level warn} drops info events from what twistd logs to; the
        default, info, drops debug events (routine re-keys) and keeps info.
        """
        from twisted.logger import Logger, LogLevel

        from ekey.cli.twistd import filterLogging

        class Beginner:
            def beginLoggingTo(self, observers):
                self.observers = observers

        seen = []
        beginner = Beginner()
        filterLogging("warn", beginner)
        beginner.beginLoggingTo([seen.append])
        log = Logger(observer=beginner.observers[0])
        log.info("routine")
        log.warn("attention")
        self.assertEqual([e["log_level"] for e in seen], [LogLevel.warn])
        seen.clear()
        default = Beginner()
        filterLogging("info", default)
        default.beginLoggingTo([seen.append])
        log = Logger(observer=default.observers[0])
        log.debug("routine re-key")
        log.info("key added")
        self.assertEqual([e["log_level"] for e in seen], [LogLevel.info])


class ConfigFileTests(OptionsFixture, unittest.TestCase):
    """
    C{--config FILE} (TOML) and C{--ekeyd-conf FILE} (ekeyd's own file)
    give settings that the command line overrides.
    """

    def writeFile(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def toml(self, **settings):
        from ekey.core.configfile import toTOML

        return self.writeFile(toTOML(settings))

    def test_toml(self):
        """
        Every kind of setting is read from a TOML file: strings, numbers,
        flags and arrays for the repeatable options.
        """
        egd = self.mktemp()
        path = self.toml(**{"keyring": self.keyring, "device": [self.device, self.device2],
                            "port": [f"unix:{egd}", "tcp:0"], "pool-size": 4096,
                            "client-rate": 100, "control": "none", "log-level": "warn"})
        config = self.parse("--config", path).config
        self.assertEqual(config.keyring, self.keyring)
        self.assertEqual(config.devices, (self.device, self.device2))
        self.assertEqual(config.ports, (f"unix:{egd}", "tcp:0"))
        self.assertEqual((config.poolSize, config.clientRate), (4096, 100.0))
        self.assertIsInstance(config.clientRate, float)
        self.assertIsNone(config.control)
        self.assertEqual(config.logLevel, "warn")
        self.assertFalse(config.defaultSources)

    def test_commandLineOverrides(self):
        """
        A setting on the command line wins over the file's, whatever its
        place on the line; a repeatable option given on the command line
        replaces the file's list, one not given is taken from the file.
        """
        path = self.toml(**{"keyring": "/nonexistent/keyring", "device": [self.device],
                            "port": ["tcp:0"], "pool-size": 4096, "log-level": "warn",
                            "control": "none"})
        options = self.parse("--pool-size", "8192", "--config=" + path, "--keyring",
                             self.keyring, "--device", self.device2, "--log-level", "info")
        config = options.config
        self.assertEqual((config.poolSize, config.keyring, config.logLevel),
                         (8192, self.keyring, "info"))
        self.assertEqual(config.devices, (self.device2,))
        self.assertEqual(config.ports, ("tcp:0",))
        self.assertEqual(options.configFile, path)
        self.assertEqual(config.configFile, path)
        with capturedLogs() as events:
            self.build(options)
        [line] = [formatEvent(e) for e in events if "starting" in formatEvent(e)]
        self.assertTrue(line.endswith(f"; settings from {path}"), line)

    def test_flag(self):
        """
        A flag is true or false in the file; false leaves it off, and the
        command line can still turn it on.
        """
        path = self.toml(**{"kernel": False, "keyring": self.keyring, "device": [self.device],
                            "port": ["tcp:0"], "control": "none"})
        self.assertFalse(self.parse("--config", path).config.kernel)
        options = Options()
        options._readFile(["--config", path])
        self.assertEqual(options["kernel"], 0)
        options = Options()
        options._readFile(["--config", self.toml(kernel=True)])
        self.assertEqual(options["kernel"], 1)

    def test_refusals(self):
        """
        A file that cannot be used is refused in one line naming the file
        and what is wrong: missing, not TOML, an unknown setting, a value of
        the wrong type, a file option inside a file, both kinds of file.
        """
        missing = self.mktemp()
        self.assertUsage(f"cannot read {missing}", "--config", missing)
        self.assertUsage("is not valid TOML", "--config", self.writeFile("port = [\n"))
        unknown = self.toml(**{"no-such-option": 1})
        self.assertUsage(f"{unknown}: unknown setting 'no-such-option'", "--config", unknown)
        self.assertUsage("pool-size must be a whole number, not a string",
                         "--config", self.toml(**{"pool-size": "big"}))
        self.assertUsage("port must be a string or an array of strings",
                         "--config", self.toml(port=[8888]))
        self.assertUsage("unknown setting 'config'", "--config", self.toml(config="other"))
        self.assertUsage("give --config or --ekeyd-conf, not both", "--config",
                         self.toml(), "--ekeyd-conf", self.writeFile(""))

    def test_refusalNamesFile(self):
        """
        A refused setting that came from the file says so; the same setting
        from the command line does not.
        """
        path = self.toml(**{"port": ["nosuch:1"], "pool-size": 0})
        self.assertUsage("bad --port 'nosuch:1': ",
                         "--config", path, "--device", self.device, "--keyring", self.keyring,
                         "--pool-size", "10")
        error = self.assertRaises(UsageError, self.parse, "--config", path, "--device",
                                  self.device, "--keyring", self.keyring, "--pool-size", "10")
        self.assertTrue(str(error).endswith(f"(--port is from {path})"), str(error))
        error = self.assertRaises(UsageError, self.parse, "--config", path, "--device",
                                  self.device, "--keyring", self.keyring, "--port", "tcp:0")
        self.assertTrue(str(error).endswith("--pool-size must be at least 1 byte "
                                            f"(--pool-size is from {path})"), str(error))
        error = self.assertRaises(UsageError, self.parse, "--config", path, "--device",
                                  self.device, "--keyring", self.keyring, "--port", "nosuch:2",
                                  "--pool-size", "10")
        self.assertNotIn(path, str(error))

    def test_knownFromTable(self):
        """
        The settings a file may give are the option table's, typed by each
        option's coerce function, so that an option added to the table is
        accepted in a file with no other change.
        """
        known = Options.fileSettings()
        self.assertEqual((known["pool-size"], known["client-rate"], known["keyring"],
                          known["kernel"]), (int, float, str, bool))
        self.assertNotIn("config", known)
        self.assertNotIn("ekeyd-conf", known)
        self.assertEqual(set(Options.repeatable), {"device", "device-dir", "port", "upstream"})

        class MoreOptions(Options):
            optParameters = [["new-setting", None, 3, "A new setting.", int]]

        options = MoreOptions()
        options._readFile(["--config", self.toml(**{"new-setting": 5})])
        self.assertEqual(options["new-setting"], 5)

    def test_ekeydConf(self):
        """
        ekeyd's own file gives the keyring, the keys, the EGD sockets, the
        ekeyd control socket and kernel output; the command line overrides
        it.
        """
        control = self.mktemp()
        egd = self.mktemp()
        keys = self.mktemp()
        path = self.writeFile(
            "-- ekeyd.conf\n"
            f'Keyring "{self.keyring}"\n'
            f'UnixControlSocket "{control}"\n'
            f'AddEntropyKey "{self.device}"\n'
            f'AddEntropyKeys "{keys}"\n'
            f'EGDUnixSocket("{egd}", "0600", "", "")\n'
            "EGDTCPSocket(8888)\n")
        options = self.parse("--ekeyd-conf", path, "--control", "none")
        config = options.config
        self.assertEqual(config.keyring, self.keyring)
        self.assertEqual(config.ekeydControl, f"unix:{control}")
        self.assertEqual(config.devices, (self.device,))
        self.assertEqual(config.deviceDirs, (keys,))
        self.assertEqual(config.ports, (f"unix:{egd}:mode=600", "tcp:8888:interface=127.0.0.1"))
        self.assertFalse(config.kernel)
        config = self.parse("--ekeyd-conf", path, "--control", "none",
                            "--port", "tcp:0").config
        self.assertEqual(config.ports, ("tcp:0",))

    def test_ekeydConfKernel(self):
        """
        C{SetOutputToKernel(n)} turns on kernel output, crediting n.
        """
        options = Options()
        options._readFile(["--ekeyd-conf", self.writeFile("SetOutputToKernel(6)\n")])
        self.assertEqual((options["kernel"], options["shannons-per-byte"]), (1, 6))

    def test_ekeydConfRefused(self):
        """
        A directive ekey does not honour is refused by name, with its line,
        in one line.
        """
        path = self.writeFile('Keyring "/k"\nTCPControlSocket "1234"\n')
        self.assertUsage(f"{path}:2: TCPControlSocket is refused", "--ekeyd-conf", path)

    def test_helpNotStoppedByFile(self):
        """
        C{--help} prints the help even when the file named beside it is
        broken.
        """
        import io
        from contextlib import redirect_stdout

        out = io.StringIO()
        with redirect_stdout(out):
            self.assertRaises(SystemExit, self.parse, "--config", self.mktemp(), "--help")
        self.assertIn("--config=", out.getvalue())

    def test_oneLineUnderTwistd(self):
        """
        Under twistd, a bad file is one line on standard error and exit
        status 1.
        """
        import io
        import sys

        from twisted.scripts.twistd import ServerOptions

        stderr, stdout = io.StringIO(), io.StringIO()
        self.patch(sys, "stderr", stderr)
        self.patch(sys, "stdout", stdout)
        path = self.writeFile("Daemonise(false)\n")
        error = self.assertRaises(SystemExit, ServerOptions().parseOptions,
                                  ["ekey", "--ekeyd-conf", path])
        self.assertEqual(error.code, 1)
        self.assertEqual(stderr.getvalue().count("\n"), 1)
        self.assertTrue(stderr.getvalue().startswith(
            f"twistd ekey: {path}:1: Daemonise is refused"), stderr.getvalue())
        self.assertEqual(stdout.getvalue(), "")


class HelpTests(unittest.TestCase):
    """
    C{twistd ekey --help} reads as prose.
    """

    def test_singleSpaces(self):
        """
        The help has no runs of spaces inside its sentences (docstrings of
        C{opt_} methods are folded into single spaces), only in the columns'
        indentation.
        """
        import re

        text = Options().getUsage()
        self.assertIn("--device=", text)
        for line in text.splitlines():
            prose = re.sub(r"^\s*(?:-\w,?\s+)?(?:--[\w-]+=?\s+)?", "", line)
            self.assertNotIn("  ", prose, line)

    def test_checkerRejectsRuns(self):
        """
        The check above finds a run of spaces in a docstring that is not
        folded.
        """
        import re

        class Unfolded(Options):
            def __init__(self):
                Options.__init__(self)
                self.docs["device"] = "A key: a serial device or a Unix\n        socket path."

        lines = Unfolded().getUsage().splitlines()
        self.assertTrue(any("  " in re.sub(r"^\s*(?:-\w,?\s+)?(?:--[\w-]+=?\s+)?", "", line)
                            for line in lines))


class ExampleConfigTests(unittest.TestCase):
    """
    C{examples/ekey.toml} is a configuration the daemon reads.
    """

    def test_example(self):
        """
        The example's settings, and every setting it shows commented out,
        are settings of the option table with values of the right type.
        """
        import re

        from ekey.core.configfile import loadTOML

        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "examples", "ekey.toml")
        known, repeatable = Options.fileSettings(), Options.repeatable
        settings = loadTOML(path, known, repeatable)
        self.assertEqual(settings["device-dir"], ["/dev/entropykey", "/var/run/entropykeys"])
        with open(path) as f:
            text = f.read()
        uncommented = re.sub(r"(?m)^# ([a-z][a-z-]* = )", r"\1", text)
        shown = self.mktemp()
        with open(shown, "w") as f:
            f.write(uncommented)
        every = loadTOML(shown, known, repeatable)
        self.assertGreater(len(every), len(settings) + 10)


class PidFileTests(OptionsFixture, unittest.TestCase):
    """
    A second daemon is refused in one line before twistd's own refusal.
    """

    def test_runningDaemonsPidFile(self):
        """
        Under twistd, a pid file naming a live process stops the options
        with one line naming --rundir and --pidfile; a stale one does not.
        """
        from twisted.python import usage

        pidfile = self.mktemp()
        with open(pidfile, "w") as f:
            f.write(f"{os.getppid()}\n")

        class Parent(usage.Options):
            optParameters = [["pidfile", None, pidfile, ""]]

        options = Options()
        options.parent = Parent()
        options.parent.parseOptions([])
        args = ["--device", self.device, "--keyring", self.keyring, "--port", "tcp:0",
                "--control", "none"]
        import io
        from contextlib import redirect_stderr

        err = io.StringIO()
        with redirect_stderr(err), self.assertRaises(SystemExit) as exited:
            options.parseOptions(args)
        self.assertEqual(exited.exception.code, 1)
        self.assertEqual(err.getvalue().count("\n"), 1)
        self.assertIn("--pidfile", err.getvalue())
        with open(pidfile, "w") as f:
            f.write("999999999\n")
        options = Options()
        options.parent = Parent()
        options.parent.parseOptions([])
        options.parseOptions(args)
