"""
Tests for the control channel: L{ekey.services.control} (the daemon side)
against a real L{ekey.services.daemon.Daemon} (with a real
L{ekey.services.keys.KeyManager} on a L{MemoryReactorClock}), the schema
of L{ekey.services.controlschema}, and C{ekeyctl}'s command line,
formatting and errors (L{ekey.cli.ekeyctl}), all in memory.
"""

import errno
import io
import json
import os
import socket
from collections import Counter

from twisted.internet import defer
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.test import iosim
from twisted.trial import unittest

from ekey.cli import ekeyctl
from ekey.services import control
from ekey.services.control import ControlFactory
from ekey.services.controlschema import (
    AddAll,
    AddKey,
    BadKeyPath,
    BadKeyring,
    Clients,
    ControlFailed,
    JSONValue,
    KeyStats,
    ListKeys,
    NotPermitted,
    Pool,
    ReloadKeyring,
    RemoveKey,
    Shutdown,
    UnknownKey,
    Upstreams,
)
from ekey.cli.ekeyctl import UsageError
from ekey.services.daemon import Daemon
from ekey.services.server import EGDServerFactory, EGDServerProtocol
from ekey.services.peers import Credentials
from ekey.core.pool import EntropyPool
from ekey.services.upstream import PullPolicy, Upstream
from tests.memory import boundSocket, connectKey, startMemoryDaemon
from tests.vectors import SESSION, VECTORS, deviceFrames

SERIAL_PEM = SESSION["serial_pem"]


class _FakeEGDClient:
    """
    The counters of an EGD server protocol, read by its real C{status}.
    """

    status = EGDServerProtocol.status

    def __init__(self, peer, identity, bytesServed, connectedAt):
        self.peer = peer
        self.identity = identity
        self.bytesServed = bytesServed
        self.requests = Counter({"get": 3, "level": 1})
        self.connectedAt = connectedAt


class _FakeEGDFactory:
    """
    The counters of an EGD server factory, read by its real C{status} and
    C{clientStatuses}.
    """

    status = EGDServerFactory.status
    clientStatuses = EGDServerFactory.clientStatuses

    def __init__(self, clients):
        self.clients = set(clients)
        self.connections = len(self.clients)
        self.bytesServed = sum(client.bytesServed for client in clients)
        self.requests = Counter()
        self.protocolErrors = self.refused = self.idleClosed = 0


#: What the kernel would say of root at the other end of a Unix socket.
ROOT = Credentials(pid=1, uid=0, gid=0)


class _DaemonMixin:
    """
    A real daemon's parts on a L{MemoryReactorClock}, a control server for
    it, and an AMP client connected to the server in memory.
    """

    def setUp(self):
        startMemoryDaemon(self)
        self.keysDirectory = self.mktemp()
        os.makedirs(self.keysDirectory)
        self.factory = ControlFactory(self.daemon, deviceDirs=[self.keysDirectory],
                                      credentials=lambda transport: ROOT)
        self.events = []
        from twisted.logger import Logger

        self.factory.controller.log = Logger(observer=self.events.append)
        self.client, self.server, self.pump = self.connectClient()

    def connectClient(self):
        return iosim.connectedServerAndClient(
            lambda: self.factory.buildProtocol(None), amp.AMP)

    def socketPath(self, directory=None):
        """
        @return: a (relative, short) path in the device directory (or
            C{directory}) where a Unix socket is bound, so that it counts as
            a key's path.
        """
        directory = directory or self.keysDirectory
        return boundSocket(self, os.path.join(directory, f"k{len(os.listdir(directory))}"))

    def connectKey(self, number, frames=4):
        """
        Connect key C{number} in memory and replay the transcript's first
        frames (4 reach C{Running OK}; 12 include information frames).
        """
        return connectKey(self, self.reactor, self.keys, number, frames)

    def call(self, command, **arguments):
        """
        Send a command and pump until it is answered.

        @return: its result.
        """
        d = self.client.callRemote(command, **arguments)
        self.pump.flush()
        return self.successResultOf(d)["result"]

    def callFails(self, errorType, command, **arguments):
        """
        Send a command that must be refused with C{errorType}.

        @return: the error's one-line message.
        """
        d = self.client.callRemote(command, **arguments)
        failures = []
        d.addErrback(failures.append)
        self.pump.flush()
        self.assertEqual(len(failures), 1)
        message = str(failures[0].trap(errorType) and failures[0].value)
        self.assertNotIn("\n", message)
        return message

    def logged(self):
        """
        @return: the control log's messages so far, formatted.
        """
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events]


class KeyCommandTests(_DaemonMixin, unittest.TestCase):
    """
    The key commands do what ekeydctl's verbs do, through AMP, and refuse
    with one-line remote errors.
    """

    def test_listKeysEmpty(self):
        """
        A daemon without keys lists none.
        """
        self.assertEqual(self.call(ListKeys), [])

    def test_listKeys(self):
        """
        Each key is listed with its number, path, serial, state in words
        and whether it gives entropy.
        """
        closed = self.socketPath()
        self.keys.add(closed)
        running = self.socketPath()
        self.keys.add(running)
        self.connectKey(2)
        result = self.call(ListKeys)
        self.assertEqual([k["number"] for k in result], [1, 2])
        self.assertEqual(result[0]["state"], "Key closed")
        self.assertFalse(result[0]["ok"])
        self.assertIsNone(result[0]["serial"])
        self.assertEqual(result[1], {"number": 2, "path": running, "serial": SERIAL_PEM,
                                     "state": "Running OK", "ok": True,
                                     "reason": result[1]["reason"]})
        self.assertTrue(result[1]["ok"])

    def test_keyStatsByNumberSerialAndPath(self):
        """
        A key's statistics come with ekeydctl's names, whether it is named
        by number, serial or path.
        """
        path = self.socketPath()
        self.keys.add(path)
        self.connectKey(1, frames=12)
        self.reactor.advance(10)
        for identifier in ("1", SERIAL_PEM, path):
            result = self.call(KeyStats, identifier=identifier)
            self.assertEqual(result["key"]["number"], 1)
            statistics = result["statistics"]
            self.assertEqual(statistics["KeyTemperatureK"], 315.0)
            self.assertEqual(statistics["KeyTemperatureC"], 41.85)
            self.assertEqual(statistics["KeyVoltage"], 3.254)
            self.assertEqual(statistics["TotalEntropy"], 160)
            self.assertEqual(statistics["ConnectionTime"], 10)
            self.assertEqual(statistics["EntropyRate"], 128)
            self.assertEqual(statistics["KeyShortBadness"], "efm_ok")

    def test_keyStatsUnknown(self):
        """
        Statistics of a key that is not there are refused with
        L{UnknownKey}, its message without the quotes of a L{KeyError}.
        """
        message = self.callFails(UnknownKey, KeyStats, identifier="7")
        self.assertTrue(message.startswith("no key '7'"), message)

    def test_addKey(self):
        """
        Adding a key starts serving it and answers its description; the
        change is logged with who asked.
        """
        path = self.socketPath()
        result = self.call(AddKey, path=path)
        self.assertEqual(result["number"], 1)
        self.assertEqual(result["path"], path)
        self.assertEqual(self.keys.numbers(), [1])
        self.assertIn(f"Control {self.server.peer}: added key 1: {path}", self.logged())

    def test_addKeyErrors(self):
        """
        A missing path, or a key served already, is refused with
        L{BadKeyPath}, and the refusal is logged.
        """
        missing = self.mktemp()
        message = self.callFails(BadKeyPath, AddKey, path=missing)
        self.assertIn(missing, message)
        path = self.socketPath()
        self.call(AddKey, path=path)
        self.assertIn("served already", self.callFails(BadKeyPath, AddKey, path=path))
        self.assertTrue(any("refused to add a key" in line for line in self.logged()))

    def test_addSocketAtRunTimeRefused(self):
        """
        A Unix socket outside the device directories is refused at run
        time, in one line, and nothing is added.
        """
        elsewhere = self.mktemp()
        os.makedirs(elsewhere)
        path = self.socketPath(elsewhere)
        message = self.callFails(BadKeyPath, AddKey, path=path)
        self.assertIn("not added at run time", message)
        self.assertEqual(self.callFails(BadKeyPath, AddKey, path=path), message)
        self.assertEqual(self.call(AddAll, directory=elsewhere), [])
        self.assertEqual(self.keys.numbers(), [])

    def test_addConfiguredSocketBack(self):
        """
        A socket key the daemon was started with may be added back at run
        time (C{ekey-rekey} lets it go and gives it back); another socket
        beside it may not.
        """
        elsewhere = self.mktemp()
        os.makedirs(elsewhere)
        path = self.socketPath(elsewhere)
        self.keys.configuredPaths = [path]
        self.assertEqual(self.call(AddKey, path=path)["path"], path)
        other = self.socketPath(elsewhere)
        self.assertIn("not added at run time", self.callFails(BadKeyPath, AddKey, path=other))

    def test_addKeyWithoutKeyring(self):
        """
        Without a keyring, adding a key is refused with L{BadKeyring}.
        """
        self.keys.keyring = None
        self.assertIn("keyring", self.callFails(BadKeyring, AddKey, path=self.socketPath()))

    def test_addAll(self):
        """
        Every key in a directory not served yet is added; a second time,
        none; a directory that cannot be read is refused.
        """
        directory = self.keysDirectory
        for name in ("one", "two"):
            s = socket.socket(socket.AF_UNIX)
            self.addCleanup(s.close)
            s.bind(os.path.join(directory, name))
        result = self.call(AddAll, directory=directory)
        self.assertEqual([k["number"] for k in result], [1, 2])
        self.assertEqual(self.call(AddAll, directory=directory), [])
        self.callFails(BadKeyPath, AddAll, directory=self.mktemp())
        self.assertIn(f"Control {self.server.peer}: added 2 key(s) from {directory}: 1, 2",
                      self.logged())

    def test_removeKey(self):
        """
        Removing a key (by serial here) answers what it was; removing it
        again is refused with L{UnknownKey}.
        """
        path = self.socketPath()
        self.keys.add(path)
        self.connectKey(1)
        result = self.call(RemoveKey, identifier=SERIAL_PEM)
        self.assertEqual((result["number"], result["path"], result["serial"]),
                         (1, path, SERIAL_PEM))
        self.assertEqual(self.keys.numbers(), [])
        self.callFails(UnknownKey, RemoveKey, identifier="1")
        self.assertIn(f"Control {self.server.peer}: removed key 1: {path}", self.logged())

    def test_reloadKeyring(self):
        """
        A keyring that gained a key's serial, reloaded through the control
        channel, lets the key that was stopped for want of it run.
        """
        with open(self.keyringPath, "w") as f:
            f.write("# empty\n")
        self.assertEqual(self.call(ReloadKeyring), {"path": self.keyringPath, "keys": 0})
        self.keys.add(self.socketPath())
        protocol = self.connectKey(1, frames=1)
        self.assertEqual(self.call(ListKeys)[0]["state"], "Serial unknown")
        with open(self.keyringPath, "w") as f:
            f.write(VECTORS["keyring_line_text"] + "\n")
        self.assertEqual(self.call(ReloadKeyring), {"path": self.keyringPath, "keys": 1})
        # The key stopped for want of its serial starts again on its
        # connection.
        self.assertFalse(protocol.transport.disconnecting)
        protocol.dataReceived(b"".join(deviceFrames()[:4]))
        self.assertEqual(self.call(ListKeys)[0]["state"], "Running OK")
        self.assertTrue(any("reloaded the keyring" in line for line in self.logged()))

    def test_reloadAnotherKeyringRefused(self):
        """
        Only the configured keyring is reloaded: another file is refused in
        a line naming the configured one, and the keyring in force stays;
        the configured file named explicitly is fine.
        """
        other = self.mktemp()
        with open(other, "w") as f:
            f.write("# nothing\n")
        old = self.keys.keyring
        message = self.callFails(BadKeyring, ReloadKeyring, path=other)
        self.assertIn(f"only the daemon's own keyring can be reloaded: {self.keyringPath}",
                      message)
        self.assertIs(self.keys.keyring, old)
        self.assertEqual(self.call(ReloadKeyring, path=os.path.abspath(self.keyringPath)),
                         {"path": self.keyringPath, "keys": 1})

    def test_reloadBadKeyring(self):
        """
        A keyring that cannot be read is refused with L{BadKeyring} naming
        the file; the old keyring stays.
        """
        old = self.keys.keyring
        with open(self.keyringPath, "w") as f:
            f.write("SECRETFIELD0123456789 broken\n")
        message = self.callFails(BadKeyring, ReloadKeyring)
        self.assertIn(self.keyringPath, message)
        self.assertNotIn("SECRETFIELD", message)
        self.assertIs(self.keys.keyring, old)
        self.callFails(BadKeyring, ReloadKeyring, path=self.mktemp())


class DaemonCommandTests(_DaemonMixin, unittest.TestCase):
    """
    The daemon-wide commands: upstreams, clients, pool, shutdown, and what
    happens when the daemon fails unexpectedly.
    """

    def test_upstreams(self):
        """
        Each upstream's endpoint, priority, state, bytes pulled, refused,
        in flight and under test, connections, health failures and last
        error are answered, as the upstream itself reports them; without
        upstreams, none.
        """
        self.assertEqual(self.call(Upstreams), [])
        policy = PullPolicy(self.pool, 1024, 4096, reactor=self.reactor)
        self.daemon.pullPolicy = policy
        upstream = Upstream("tcp:relay.example:8888:priority=1", policy)
        upstream.bytesPulled, upstream.bytesRefused, upstream.healthFailures = 4096, 32, 1
        upstream.lastError = "Connection was refused by other side"
        connecting = Upstream("tcp:backup.example:8888", policy)
        connecting.attempting()
        self.assertEqual(self.call(Upstreams), [{
            "upstream": "tcp:relay.example:8888", "priority": 1, "state": "down",
            "bytesPulled": 4096, "bytesRefused": 32, "inFlight": 0, "testing": 0,
            "connections": 0, "healthFailures": 1,
            "lastError": "Connection was refused by other side"}, {
            "upstream": "tcp:backup.example:8888", "priority": 0, "state": "connecting",
            "bytesPulled": 0, "bytesRefused": 0, "inFlight": 0, "testing": 0,
            "connections": 0, "healthFailures": 0, "lastError": None}])

    def test_clients(self):
        """
        Each connected EGD client is answered with its listener, peer,
        certificate identity and bytes served.
        """
        self.reactor.advance(100)
        self.daemon.listeners.append(("tcp:8888", _FakeEGDFactory([
            _FakeEGDClient("tcp:127.0.0.1:4000", None, 64, 90.0),
            _FakeEGDClient("tcp:10.0.0.2:5000", "relay.example", 4096, 50.0),
        ])))
        result = self.call(Clients)
        self.assertEqual([c["peer"] for c in result],
                         ["tcp:10.0.0.2:5000", "tcp:127.0.0.1:4000"])
        self.assertEqual(result[0], {"listener": "tcp:8888", "peer": "tcp:10.0.0.2:5000",
                                     "identity": "relay.example", "bytesServed": 4096,
                                     "requests": 4, "connectedFor": 50.0})

    def test_pool(self):
        """
        The pool's level, capacity and traffic are answered.
        """
        self.pool.add(b"x" * 96)
        result = self.call(Pool)
        self.assertEqual(result["level"], 96)
        self.assertEqual(result["capacity"], 1 << 16)
        self.assertEqual(result["bytesIn"], 96)

    def test_shutdown(self):
        """
        Shutdown is answered first; the server then closes the connection
        and stops the daemon, once, and logs who asked.
        """
        transport = self.server.transport
        self.assertEqual(self.call(Shutdown), {"shuttingDown": True})
        self.assertEqual(self.shutdowns, [])
        self.reactor.advance(0)
        self.pump.flush()
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.shutdowns, [True])
        self.reactor.advance(control.SHUTDOWN_GRACE)
        other, _, pump = self.connectClient()
        d = other.callRemote(Shutdown)
        pump.flush()
        self.successResultOf(d)
        self.reactor.advance(control.SHUTDOWN_GRACE)
        pump.flush()
        self.assertEqual(self.shutdowns, [True])
        self.assertIn(f"Control {self.server.peer}: shutdown requested", self.logged())

    def test_shutdownWithoutClose(self):
        """
        If the connection does not close, the daemon stops anyway after
        L{control.SHUTDOWN_GRACE} seconds.
        """
        server = self.factory.buildProtocol(None)
        transport = StringTransport()
        server.makeConnection(transport)
        server.dataReceived(amp.AmpBox(_command=b"Shutdown", _ask=b"1").serialize())
        self.assertIn(b"shuttingDown", transport.value())
        self.reactor.advance(0)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.shutdowns, [])
        self.reactor.advance(control.SHUTDOWN_GRACE)
        self.assertEqual(self.shutdowns, [True])

    def test_unexpectedFailure(self):
        """
        An unexpected exception in the daemon is answered with
        L{ControlFailed}, logged in full, and leaves the connection usable.
        """
        def broken():
            raise ZeroDivisionError("oops")

        self.daemon.poolStatus = broken
        self.assertIn("see its log", self.callFails(ControlFailed, Pool))
        failures = [e["log_failure"] for e in self.events if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        failures[0].trap(ZeroDivisionError)
        self.assertEqual(self.call(ListKeys), [])


class JSONValueTests(unittest.TestCase):
    """
    L{JSONValue} carries any JSON value, however long, over AMP's 64 KiB
    value limit.
    """

    def roundTrip(self, value):
        strings = {}
        JSONValue().toBox(b"result", strings, {"result": value}, None)
        for data in strings.values():
            self.assertLessEqual(len(data), amp.MAX_VALUE_LENGTH)
        objects = {}
        JSONValue().fromBox(b"result", amp.AmpBox(strings), objects, None)
        return strings, objects["result"]

    def test_small(self):
        """
        A small value is one AMP value.
        """
        strings, value = self.roundTrip({"a": [1, 2.5, None, "é"]})
        self.assertEqual(list(strings), [b"result"])
        self.assertEqual(value, {"a": [1, 2.5, None, "é"]})

    def test_large(self):
        """
        A value of several hundred kilobytes is split and put together
        again.
        """
        big = [{"peer": "tcp:127.0.0.1:%d" % i, "bytesServed": i} for i in range(10000)]
        strings, value = self.roundTrip(big)
        self.assertGreater(len(strings), 3)
        self.assertEqual(value, big)

    def test_largeOverAMP(self):
        """
        A long answer (here, many EGD clients) crosses a real AMP
        connection.
        """
        daemon = Daemon(None, EntropyPool(16), Clock(), lambda: None)
        daemon.listeners.append(("tcp:8888", _FakeEGDFactory([
            _FakeEGDClient("tcp:127.0.0.1:%d" % i, "x" * 40, i, 0.0) for i in range(3000)])))
        client, server, pump = iosim.connectedServerAndClient(
            lambda: ControlFactory(daemon, credentials=lambda t: ROOT).buildProtocol(None),
            amp.AMP)
        d = client.callRemote(Clients)
        pump.flush()
        self.assertEqual(len(self.successResultOf(d)["result"]), 3000)


class DescribePeerTests(unittest.TestCase):
    """
    The log says who sent a command: the process and user for a Unix
    socket, the address for TCP.
    """

    def test_unix(self):
        """
        A Unix peer is described by its credentials from the kernel.
        """
        one, two = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(one.close)
        self.addCleanup(two.close)

        class Transport:
            def getPeer(self):
                return UNIXAddress(None)

            def getHandle(self):
                return one

        self.assertEqual(control.describePeer(Transport()),
                         f"unix:pid={os.getpid()},uid={os.getuid()},gid={os.getgid()}")

    def test_tcp(self):
        """
        A TCP peer is described by its address.
        """
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 4567))
        self.assertEqual(control.describePeer(transport), "tcp:10.1.2.3:4567")


# ekeyctl ---------------------------------------------------------------------------


class _FakeControl:
    """
    A control client that answers from a table, as L{amp.AMP.callRemote}
    would: C{answers[command]} is a result or an exception.

    @ivar calls: C{(command, arguments)} sent.
    """

    def __init__(self, answers):
        self.answers = answers
        self.calls = []
        self.transport = StringTransport()

    def callRemote(self, command, **arguments):
        self.calls.append((command, arguments))
        answer = self.answers[command]
        if isinstance(answer, Exception):
            return defer.fail(answer)
        if isinstance(answer, defer.Deferred):
            return answer
        return defer.succeed({"result": answer})


KEYS = [
    {"number": 1, "path": "/dev/entropykey/NwBvBlg3OTBJORFD", "serial": "NwBvBlg3OTBJORFD",
     "state": "Running OK", "ok": True, "reason": "session keyed"},
    {"number": 2, "path": "/tmp/key.sock", "serial": "E52jaQ2jxAYlra1N",
     "state": "Serial unknown", "ok": False, "reason": "not in /etc/entropykey/keyring"},
    {"number": 3, "path": "/tmp/gone.sock", "serial": None, "state": "Key closed",
     "ok": False, "reason": "not connected (retrying)"},
]

STATS = {"key": KEYS[0], "statistics": {
    "TotalEntropy": 160, "BytesRead": 704, "KeyTemperatureK": 315.0,
    "KeyTemperatureC": 41.85, "KeyVoltage": 3.254, "EntropyRate": 128,
    "KeyEnglishBadness": "No failure"}}


class CommandLineTests(unittest.TestCase):
    """
    C{ekeyctl}'s command line: verbs and their arguments, the default
    endpoint, and one-line usage errors with status 2.
    """

    def run_(self, argv, answers=None, connect=None, environ=None):
        """
        Run C{ekeyctl} on a fake control client.

        @return: C{(status, stdout, stderr, fake)}.
        """
        out, err = io.StringIO(), io.StringIO()
        fake = _FakeControl(answers or {})
        try:
            options = ekeyctl.parseArguments(argv, environ or {})
        except UsageError:
            status = self.successResultOf(
                ekeyctl.main(argv, reactor=Clock(), out=out, err=err, environ=environ or {}))
            return status, out.getvalue(), err.getvalue(), fake
        d = defer.Deferred.fromCoroutine(ekeyctl.execute(
            Clock(), options, out, err,
            connect or (lambda reactor, endpoint: defer.succeed(fake))))
        return self.successResultOf(d), out.getvalue(), err.getvalue(), fake

    def assertUsageError(self, argv, text):
        status, out, err, _ = self.run_(argv)
        self.assertEqual(status, 2)
        self.assertEqual(out, "")
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.startswith("ekeyctl: "), err)
        self.assertIn(text, err)

    def test_usageErrors(self):
        """
        An unknown verb, a missing or extra argument, a missing verb and a
        bad timeout are one line on standard error and status 2.
        """
        self.assertUsageError(["frobnicate"], "unknown verb 'frobnicate'")
        self.assertUsageError(["stats"], "stats needs ID")
        self.assertUsageError(["add"], "add needs PATH")
        self.assertUsageError(["addall"], "addall needs DIR")
        self.assertUsageError(["remove"], "remove needs ID")
        self.assertUsageError(["list", "extra"], "too many arguments")
        self.assertUsageError(["keyring", "a", "b"], "too many arguments")
        self.assertUsageError([], "give a VERB: one of list, stats")
        self.assertUsageError(["--timeout", "0", "list"], "--timeout")
        self.assertUsageError(["--bogus", "list"], "unrecognized arguments")

    def test_usageErrorExits(self):
        """
        Without a reactor, a usage error exits with status 2.
        """
        err = io.StringIO()
        exit = self.assertRaises(SystemExit, ekeyctl.main, ["nope"], err=err)
        self.assertEqual(exit.code, 2)
        self.assertEqual(err.getvalue().count("\n"), 1)

    def test_badEndpoint(self):
        """
        A --control that is not an endpoint is a usage error.
        """
        out, err = io.StringIO(), io.StringIO()
        options = ekeyctl.parseArguments(["--control", "bogus:x", "list"], {})
        d = defer.Deferred.fromCoroutine(
            ekeyctl.execute(Clock(), options, out, err, ekeyctl.connectControl))
        self.assertEqual(self.successResultOf(d), 2)
        self.assertIn("bad --control endpoint 'bogus:x'", err.getvalue())

    def test_defaultEndpoint(self):
        """
        The endpoint is $EKEY_CONTROL, else /run/ekey/control.sock if it
        exists, else control.sock here; --control overrides all.
        """
        self.assertEqual(ekeyctl.defaultEndpoint({"EKEY_CONTROL": "unix:/x"}), "unix:/x")
        systemOnly = lambda path: path == "/run/ekey/control.sock"  # noqa: E731
        self.assertEqual(ekeyctl.defaultEndpoint({}, exists=systemOnly),
                         "unix:/run/ekey/control.sock")
        self.assertEqual(ekeyctl.defaultEndpoint({}, exists=lambda p: False), "unix:control.sock")
        options = ekeyctl.parseArguments(["--control", "tcp:localhost:1", "list"],
                                         {"EKEY_CONTROL": "unix:/x"})
        self.assertEqual(options.control, "tcp:localhost:1")

    def test_commandArguments(self):
        """
        Paths are sent absolute; an identifier only when it names an
        existing file (a number or serial goes as it is).
        """
        here = os.path.abspath(self.mktemp())
        os.makedirs(here)
        open(os.path.join(here, "key"), "w").close()
        verbs = ekeyctl.VERBS
        self.assertEqual(ekeyctl.commandArguments(verbs["add"], "key", here),
                         {"path": os.path.join(here, "key")})
        self.assertEqual(ekeyctl.commandArguments(verbs["addall"], ".", here),
                         {"directory": here})
        self.assertEqual(ekeyctl.commandArguments(verbs["keyring"], None, here), {})
        self.assertEqual(ekeyctl.commandArguments(verbs["keyring"], "../ring", here),
                         {"path": os.path.join(os.path.dirname(here), "ring")})
        self.assertEqual(ekeyctl.commandArguments(verbs["stats"], "1", here),
                         {"identifier": "1"})
        self.assertEqual(ekeyctl.commandArguments(verbs["remove"], "E52jaQ2jxAYlra1N", here),
                         {"identifier": "E52jaQ2jxAYlra1N"})
        self.assertEqual(ekeyctl.commandArguments(verbs["remove"], "key", here),
                         {"identifier": os.path.join(here, "key")})
        self.assertEqual(ekeyctl.commandArguments(verbs["list"], None, here), {})


class OutputTests(unittest.TestCase):
    """
    C{ekeyctl}'s output: ekeydctl's list lines and C{Name=Value} lines,
    tables for upstreams and clients, and JSON for every verb.
    """

    run_ = CommandLineTests.run_

    def test_list(self):
        """
        C{list} prints ekeydctl's header and a line per key, the state in
        words, OK as YES or NO, an unknown serial empty.
        """
        status, out, err, fake = self.run_(["list"], {ListKeys: KEYS})
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, "NR,OK,Status,Path,SerialNo\n"
                              "1,YES,Running OK,/dev/entropykey/NwBvBlg3OTBJORFD,NwBvBlg3OTBJORFD\n"
                              "2,NO,Serial unknown,/tmp/key.sock,E52jaQ2jxAYlra1N\n"
                              "3,NO,Key closed,/tmp/gone.sock,\n")
        self.assertEqual(fake.calls, [(ListKeys, {})])
        self.assertTrue(fake.transport.disconnecting)

    def test_stats(self):
        """
        C{stats ID} prints sorted C{Name=Value} lines, whole floats without
        C{.0}.
        """
        status, out, err, fake = self.run_(["stats", "1"], {KeyStats: STATS})
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, "BytesRead=704\nEntropyRate=128\nKeyEnglishBadness=No failure\n"
                              "KeyTemperatureC=41.85\nKeyTemperatureK=315\nKeyVoltage=3.254\n"
                              "TotalEntropy=160\n")
        self.assertEqual(fake.calls, [(KeyStats, {"identifier": "1"})])

    def test_statsOfClosedKey(self):
        """
        A key with no statistics (not connected) is one line on standard
        error and status 1; with C{--json} it is an empty table.
        """
        result = {"key": KEYS[2], "statistics": {}}
        status, out, err, _ = self.run_(["stats", "3"], {KeyStats: result})
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, "ekeyctl: key 3: /tmp/gone.sock has no statistics: Key closed "
                              "(not connected (retrying))\n")
        status, out, err, _ = self.run_(["--json", "stats", "3"], {KeyStats: result})
        self.assertEqual(status, 0)
        self.assertEqual(json.loads(out), result)

    def test_changes(self):
        """
        C{add}, C{addall}, C{remove}, C{keyring} and C{shutdown} say what
        was done in a line.
        """
        cases = [
            (["add", "/tmp/key.sock"], {AddKey: KEYS[1]},
             "Added key 2: /tmp/key.sock (E52jaQ2jxAYlra1N)\n"),
            (["addall", "/dev/entropykey"], {AddAll: KEYS[:1]},
             "Added key 1: /dev/entropykey/NwBvBlg3OTBJORFD (NwBvBlg3OTBJORFD)\n"),
            (["addall", "/dev/entropykey"], {AddAll: []},
             "No keys added: those there are served already or may not be added at run time\n"),
            (["remove", "3"], {RemoveKey: KEYS[2]}, "Removed key 3: /tmp/gone.sock\n"),
            (["keyring"], {ReloadKeyring: {"path": "/etc/entropykey/keyring", "keys": 2}},
             "Keyring /etc/entropykey/keyring loaded: 2 key(s)\n"),
            (["shutdown"], {Shutdown: {"shuttingDown": True}}, "The daemon is shutting down\n"),
        ]
        for argv, answers, expected in cases:
            status, out, err, _ = self.run_(argv, answers)
            self.assertEqual((status, out, err), (0, expected, ""), argv)

    def test_upstreamsClientsPool(self):
        """
        C{upstreams} and C{clients} print a header and a line each (a
        value an older daemon does not give is empty); C{pool} prints
        C{Name=Value} lines.
        """
        upstreams = [{"upstream": "tcp:a:1", "priority": 0, "state": "up", "bytesPulled": 64,
                      "bytesRefused": 0, "inFlight": 2976, "testing": 448, "connections": 1,
                      "healthFailures": 0, "lastError": None},
                     {"upstream": "tcp:b:2", "priority": 1, "state": "stalled",
                      "bytesPulled": 0, "bytesRefused": 32, "inFlight": 224, "testing": 0,
                      "connections": 2, "healthFailures": 1, "lastError": "Connection refused"},
                     {"upstream": "tcp:c:3", "state": "down"}]
        clients = [{"listener": "tcp:8888", "peer": "tcp:127.0.0.1:4000", "identity": None,
                    "bytesServed": 64, "requests": 2, "connectedFor": 1.5}]
        pool = {"level": 64, "capacity": 1024, "bytesIn": 96, "bytesOut": 32,
                "bytesRefused": 0, "waitingReaders": 0}
        answers = {Upstreams: upstreams, Clients: clients, Pool: pool}
        self.assertEqual(self.run_(["upstreams"], answers)[1],
                         "Upstream,State,Priority,BytesPulled,InFlight,Testing,BytesRefused,"
                         "Connections,HealthFailures,LastError\n"
                         "tcp:a:1,up,0,64,2976,448,0,1,0,\n"
                         "tcp:b:2,stalled,1,0,224,0,32,2,1,Connection refused\n"
                         "tcp:c:3,down,,,,,,,,\n")
        self.assertEqual(self.run_(["clients"], answers)[1],
                         "Listener,Peer,Identity,BytesServed,Requests,ConnectedFor\n"
                         "tcp:8888,tcp:127.0.0.1:4000,,64,2,1.5\n")
        self.assertEqual(self.run_(["pool"], answers)[1],
                         "bytesIn=96\nbytesOut=32\nbytesRefused=0\ncapacity=1024\nlevel=64\n"
                         "waitingReaders=0\n")

    def test_json(self):
        """
        C{--json} prints the daemon's answer as JSON, for every verb.
        """
        answers = {ListKeys: KEYS, KeyStats: STATS, AddKey: KEYS[0], AddAll: KEYS,
                   RemoveKey: KEYS[0], ReloadKeyring: {"path": "/k", "keys": 1},
                   Shutdown: {"shuttingDown": True},
                   Upstreams: [{"upstream": "tcp:a:1", "priority": 0, "state": "stalled",
                                "bytesPulled": 64, "bytesRefused": 0, "inFlight": 2976,
                                "testing": 448, "connections": 1, "healthFailures": 0,
                                "lastError": None}], Clients: [],
                   Pool: {"level": 1}}
        for verb, argument in [("list", None), ("stats", "1"), ("add", "/k"),
                               ("addall", "/d"), ("remove", "1"), ("keyring", None),
                               ("shutdown", None), ("upstreams", None), ("clients", None),
                               ("pool", None)]:
            argv = ["--json", verb] + ([argument] if argument else [])
            status, out, err, fake = self.run_(argv, answers)
            self.assertEqual((status, err), (0, ""), verb)
            self.assertEqual(json.loads(out), answers[ekeyctl.VERBS[verb].command], verb)

    def test_remoteErrors(self):
        """
        A refusal from the daemon is one line, C{ekeyctl: message}, and
        status 1.
        """
        for error in [UnknownKey("no key '9': give a number from 'list', a serial or a path"),
                      BadKeyPath("no such device or socket: /nope"),
                      BadKeyring("/k: line 2 is malformed"),
                      NotPermitted("permission denied: uid 1000 may not control this daemon"),
                      ControlFailed("the daemon failed to list the keys; see its log")]:
            status, out, err, _ = self.run_(["list"], {ListKeys: error})
            self.assertEqual((status, out), (1, ""))
            self.assertEqual(err, f"ekeyctl: {error}\n")

    def test_connectionLost(self):
        """
        A daemon that goes away before answering is one line and status 1.
        """
        status, out, err, _ = self.run_(["list"], {ListKeys: ConnectionDone()})
        self.assertEqual(status, 1)
        self.assertIn("closed the connection", err)
        self.assertEqual(err.count("\n"), 1)

    def test_unexpectedError(self):
        """
        Even an unexpected exception is one line, never a traceback.
        """
        status, out, err, _ = self.run_(["list"], {ListKeys: RuntimeError("boom\nsecond")})
        self.assertEqual((status, err), (1, "ekeyctl: unexpected error: RuntimeError: boom "
                                            "second\n"))

    def test_connectErrors(self):
        """
        A missing socket, a socket that is not permitted and a refused
        connection are each one line saying so, and status 1.
        """
        cases = [
            (ConnectError(errno.ENOENT, "No such file or directory"), "no such socket"),
            (ConnectError(errno.EACCES, "Permission denied"), "permission denied"),
            (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
             "connection refused"),
        ]
        for error, text in cases:
            status, out, err, _ = self.run_(
                ["--control", "unix:/x.sock", "list"],
                connect=lambda reactor, endpoint, e=error: defer.fail(e))
            self.assertEqual((status, out), (1, ""))
            self.assertTrue(err.startswith("ekeyctl: cannot connect to unix:/x.sock: " + text),
                            err)
            self.assertEqual(err.count("\n"), 1)

    def test_timeouts(self):
        """
        A daemon that does not accept, or does not answer, within
        C{--timeout} seconds is one line and status 1.
        """
        clock = Clock()
        out, err = io.StringIO(), io.StringIO()
        options = ekeyctl.parseArguments(["--timeout", "3", "list"], {})
        d = defer.Deferred.fromCoroutine(ekeyctl.execute(
            clock, options, out, err, lambda reactor, endpoint: defer.Deferred()))
        clock.advance(3)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertIn("no answer within 3 s", err.getvalue())

        err = io.StringIO()
        fake = _FakeControl({ListKeys: defer.Deferred()})
        d = defer.Deferred.fromCoroutine(ekeyctl.execute(
            clock, options, out, err, lambda reactor, endpoint: defer.succeed(fake)))
        clock.advance(3)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(err.getvalue(), "ekeyctl: no answer from unix:control.sock within 3 s\n")


class EndToEndInMemoryTests(_DaemonMixin, unittest.TestCase):
    """
    C{ekeyctl} against the real control server, connected in memory.
    """

    def ekeyctl(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        client, server, pump = self.connectClient()
        options = ekeyctl.parseArguments(list(argv), {})
        d = defer.Deferred.fromCoroutine(ekeyctl.execute(
            self.reactor, options, out, err, lambda reactor, endpoint: defer.succeed(client)))
        pump.flush()
        return self.successResultOf(d), out.getvalue(), err.getvalue()

    def test_listStatsRemove(self):
        """
        A key added through C{ekeyctl} is listed, has statistics by its
        path, and is removed; an unknown ID is then an error.
        """
        path = os.path.abspath(self.socketPath())
        self.assertEqual(self.ekeyctl("add", path), (0, f"Added key 1: {path}\n", ""))
        self.connectKey(1)
        self.reactor.advance(5)
        status, out, err = self.ekeyctl("list")
        self.assertEqual(out, f"NR,OK,Status,Path,SerialNo\n1,YES,Running OK,{path},"
                              f"{SERIAL_PEM}\n")
        status, out, err = self.ekeyctl("stats", path)
        self.assertIn("ConnectionTime=5\n", out)
        self.assertIn("PacketOK=4\n", out)
        self.assertEqual(self.ekeyctl("remove", SERIAL_PEM),
                         (0, f"Removed key 1: {path} ({SERIAL_PEM})\n", ""))
        status, out, err = self.ekeyctl("stats", "1")
        self.assertEqual((status, out), (1, ""))
        self.assertTrue(err.startswith("ekeyctl: no key '1'"), err)


class ControlAccessTests(unittest.TestCase):
    """
    L{control.ControlAccess} lets in root, the daemon's own user (as it is
    when asked) and the control group's members, and nobody else.
    """

    def refusal(self, uid, groups=(), group=None, own=1000):
        access = control.ControlAccess(group, getuid=lambda: own)
        asked = []

        def peerGroups():
            asked.append(True)
            return groups

        return access.refusal(Credentials(pid=7, uid=uid, gid=uid), peerGroups), asked

    def test_rootAndOwnUser(self):
        """
        Root and the daemon's user are let in without looking at groups.
        """
        self.assertEqual(self.refusal(0, group=50), (None, []))
        self.assertEqual(self.refusal(1000, group=50), (None, []))

    def test_others(self):
        """
        Another user is refused in one line naming their uid and who may;
        with a control group, only if they are not in it.
        """
        message, _ = self.refusal(2000)
        self.assertEqual(message, "permission denied: uid 2000 may not control this daemon; "
                                  "only root, uid 1000 (the daemon's user) may")
        message, asked = self.refusal(2000, groups=(2000, 51), group=50)
        self.assertIn("and members of group 50", message)
        self.assertEqual(asked, [True])
        self.assertEqual(self.refusal(2000, groups=(2000, 50), group=50)[0], None)

    def test_notUnix(self):
        """
        A peer the kernel cannot name (not on a Unix socket) is refused.
        """
        access = control.ControlAccess(None)
        self.assertIn("only on its Unix control socket", access.refusal(None, lambda: ()))

    def test_peerGroups(self):
        """
        The peer's groups are read from the kernel for a real Unix socket:
        here, this process's own.
        """
        one, two = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(one.close)
        self.addCleanup(two.close)

        class Transport:
            def getHandle(self):
                return one

        credentials = Credentials(os.getpid(), os.getuid(), os.getgid())
        groups = control.peerGroups(Transport(), credentials)
        self.assertEqual(set(groups), {os.getgid(), *os.getgroups()})

    def test_refusedConnection(self):
        """
        A connection whose peer may not control the daemon is answered
        L{NotPermitted} to every command, logged once with its uid, and
        then closed.
        """
        reactor = MemoryReactorClock()
        daemon = Daemon(None, EntropyPool(16), reactor, lambda: None)
        events = []
        factory = ControlFactory(daemon, credentials=lambda t: Credentials(9, 4321, 4321))
        factory.controller.log = Logger(observer=events.append)
        client, server, pump = iosim.connectedServerAndClient(
            lambda: factory.buildProtocol(None), amp.AMP)
        failures = []
        client.callRemote(ListKeys).addErrback(failures.append)
        pump.flush()
        self.assertEqual(len(failures), 1)
        failures[0].trap(NotPermitted)
        self.assertEqual([e["uid"] for e in events if "uid" in e], [4321])
        self.assertIsNotNone(server.transport)
        reactor.advance(0)
        pump.flush()
        self.assertIsNone(server.transport)


class ControlEndpointTests(unittest.TestCase):
    """
    L{control.checkControlEndpoint} lets only Unix sockets through and
    forces their mode.
    """

    def test_modeForced(self):
        """
        Without a mode, 0600, or 0660 with a control group; a narrower
        mode given is kept.
        """
        check = control.checkControlEndpoint
        self.assertEqual(check("unix:/run/ekey/control.sock"),
                         "unix:/run/ekey/control.sock:mode=600")
        self.assertEqual(check("unix:/run/c.sock:lockfile=1", 50),
                         "unix:/run/c.sock:lockfile=1:mode=660")
        self.assertEqual(check("unix:c.sock:mode=600:lockfile=1"), "unix:c.sock:mode=600:lockfile=1")
        self.assertEqual(check("unix:c.sock:mode=640", 50), "unix:c.sock:mode=640")
        self.assertEqual(check("UNIX:address=c.sock"), "UNIX:address=c.sock:mode=600")

    def test_refused(self):
        """
        A non-Unix endpoint, a mode that lets others in, a mode that is not
        octal and a socket without a path are each refused in one line.
        """
        check = control.checkControlEndpoint
        for description, group, text in [
                ("tcp:7777", None, "must be a local Unix socket"),
                ("ssl:7777:privateKey=k", None, "must be a local Unix socket"),
                ("unix:c.sock:mode=666", None, "--control-group GROUP"),
                ("unix:c.sock:mode=660", None, "would let other users"),
                ("unix:c.sock:mode=664", 50, "would let other users"),
                ("unix:c.sock:mode=rw", None, "not an octal mode"),
                ("unix:mode=600", None, "no socket path")]:
            message = str(self.assertRaises(ValueError, check, description, group))
            self.assertIn(text, message, description)
            self.assertNotIn("\n", message)

    def test_socketPath(self):
        """
        The socket's path is the first positional field, unescaped.
        """
        self.assertEqual(control.controlSocketPath(r"unix:/run/a\:b.sock:mode=600"),
                         "/run/a:b.sock")
        self.assertEqual(control.controlSocketPath("unix:mode=600:address=/x"), "/x")

    def test_resolveGroup(self):
        """
        A group is named or numbered; an unknown name is one line.
        """
        self.assertEqual(control.resolveGroup("root"), 0)
        self.assertEqual(control.resolveGroup("4242"), 4242)
        self.assertIn("no such group",
                      str(self.assertRaises(ValueError, control.resolveGroup, "no-such-grp")))


class LayeringTests(unittest.TestCase):
    """
    C{ekeyctl} is a front end: it needs the schema, never the daemon.
    """

    def test_cliImportsSchemaOnly(self):
        """
        Importing L{ekey.cli.ekeyctl} in a fresh interpreter loads no ekey
        module but the schema (not the responders, the keys or the
        daemon).
        """
        import subprocess
        import sys

        code = ("import sys, ekey.cli.ekeyctl; "
                "print(' '.join(sorted(m for m in sys.modules if m.startswith('ekey'))))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.assertEqual(done.stdout.decode().split(), [
            "ekey", "ekey.cli", "ekey.cli.ekeyctl", "ekey.services",
            "ekey.services.controlschema"])


class PrintableTests(unittest.TestCase):
    """
    C{ekeyctl} prints nothing a terminal would act on.
    """

    def test_printable(self):
        """
        Escape sequences, C0 controls (but newline and tab), DEL and C1
        controls are removed; other text, accents included, stays.
        """
        self.assertEqual(ekeyctl.printable("a\x1b[31mred\x1b[0m\x1b]0;title\x07b\x1bc"),
                         "aredb")
        self.assertEqual(ekeyctl.printable("x\x00\x08\r\x7f\x85\x9by\n\tz é"), "xy\n\tz é")

    def test_outputStripped(self):
        """
        A key path holding escape sequences (chosen by whoever named the
        socket) is printed without them, in lists and errors alike.
        """
        key = dict(KEYS[2], path="/tmp/\x1b[2J\x1b]0;pwned\x07k.sock\r")
        status, out, err, _ = CommandLineTests.run_(self, ["list"], {ListKeys: [key]})
        self.assertEqual(out.splitlines()[1], "3,NO,Key closed,/tmp/k.sock,")
        status, out, err, _ = CommandLineTests.run_(
            self, ["list"], {ListKeys: UnknownKey("no key '\x1b[2J\x9b1m'")})
        self.assertEqual(err, "ekeyctl: no key '1m'\n")
