"""
Tests for L{ekey.services.device}: the Twisted adapters between key paths and
sessions.
"""

import os
import socket

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest

from ekey.services.device import (
    NOT_CONNECTED,
    KeyDeviceEndpoint,
    KeyPathError,
    KeyProtocolFactory,
    KeyService,
    checkKeyPath,
    describeOpenError,
    openSerialKey,
)
from ekey.core.keyring import Keyring
from ekey.core.session import REKEY_TIMEOUT, KeyState
from tests.vectors import HOST_NONCE, LONG_TERM_KEY, SERIAL, SESSION, deviceFrames, entropyFrame


def ring():
    keyring = Keyring()
    keyring.set(SERIAL, LONG_TERM_KEY)
    return keyring


class PassThrough:
    """
    A health monitor that passes everything at once.
    """

    failure = None

    def feed(self, data):
        return [data]

    def streamEnded(self):
        return 0


def runningProtocol(onEntropy):
    """
    A key protocol over a string transport that has agreed the vectors'
    session key.

    @return: C{(factory, protocol)}.
    """
    factory = KeyProtocolFactory("/dev/test", ring, onEntropy, clock=Clock(),
                                 randomBytes=lambda n: HOST_NONCE[4:])
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    for frame in deviceFrames()[:4]:
        protocol.dataReceived(frame)
    return factory, protocol


class KeyProtocolTests(unittest.TestCase):
    """
    L{KeyProtocol} forwards bytes and hands out verified blocks.
    """

    def test_transcript(self):
        """
        Over a transport, the protocol writes the reset and the nonce, and
        hands exactly the transcript's plaintext to its entropy callback;
        when the connection is lost the key is closed.
        """
        blocks = []
        factory = KeyProtocolFactory(
            "/dev/test", ring, blocks.append, clock=Clock(), randomBytes=lambda n: HOST_NONCE[4:],
        )
        factory.health = PassThrough()
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertEqual(transport.value(), b"\x03")
        transport.clear()
        for frame in deviceFrames():
            protocol.dataReceived(frame)
        self.assertTrue(transport.value().startswith(b"KAAAAAPVgtIxFv4Dw."))
        self.assertEqual(b"".join(blocks).hex(), "".join(SESSION["plaintext_in_order"]))
        protocol.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(protocol.pipeline.session.state, KeyState.CLOSED)
        self.assertIs(factory.connection, protocol)

    def test_healthFailureStopsKey(self):
        """
        A key whose decrypted output repeats a block fails its health
        tests: it is stopped with the reason, nothing it sent is handed on,
        and it stays stopped when it connects again.
        """
        blocks = []
        factory, protocol = runningProtocol(blocks.append)
        stuck = bytes(range(100, 132))
        protocol.dataReceived(entropyFrame(0, stuck) + entropyFrame(1, stuck))
        self.assertEqual(protocol.pipeline.session.state, KeyState.FAILED_HEALTH)
        self.assertIn("stuck", protocol.pipeline.session.reason)
        self.assertEqual(blocks, [])
        again = factory.buildProtocol(None)
        again.makeConnection(StringTransport())
        self.assertEqual(again.pipeline.session.state, KeyState.FAILED_HEALTH)
        self.assertEqual(again.transport.value(), b"")

    def test_healthyOutputReleasedInChunks(self):
        """
        Healthy output is handed on once a whole 2,500-byte FIPS block has
        passed, in whole 32-byte blocks.
        """
        import os

        blocks = []
        factory, protocol = runningProtocol(blocks.append)
        sent = [os.urandom(32) for _ in range(100)]
        protocol.dataReceived(b"".join(entropyFrame(i, p) for i, p in enumerate(sent)))
        self.assertEqual(b"".join(blocks), b"".join(sent)[:2496])
        self.assertEqual(protocol.pipeline.session.state, KeyState.RUNNING)

    def test_fullPoolPausesKey(self):
        """
        When the pool it feeds is full, the key is not read and what was
        read is not decoded (nothing is refused); both go on once there is
        room.
        """
        from ekey.core.pool import EntropyPool

        pool = EntropyPool(5000)
        factory = KeyProtocolFactory("/dev/test", ring, None, clock=Clock(), pool=pool,
                                     randomBytes=lambda n: HOST_NONCE[4:])
        factory.health = PassThrough()
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        for frame in deviceFrames()[:4]:
            protocol.dataReceived(frame)
        import os

        protocol.dataReceived(b"".join(entropyFrame(i, os.urandom(32)) for i in range(400)))
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(pool.bytesRefused, 0)
        level = pool.level
        self.assertLess(protocol.pipeline.session.statistics.entropyBytes, 400 * 32)
        pool.take(pool.level)
        self.assertGreater(pool.level, 0)
        self.assertEqual(pool.bytesRefused, 0)
        pool.take(pool.level)
        pool.take(pool.level)
        self.assertEqual(protocol.pipeline.session.statistics.entropyBytes, 400 * 32)
        self.assertEqual(transport.producerState, "producing")
        self.assertGreater(level, 2500)

    def test_lostWhilePaused(self):
        """
        A key lost while it is paused for want of room is not resumed, and
        its undecoded bytes are dropped.
        """
        from ekey.core.pool import EntropyPool

        pool = EntropyPool(3000)
        factory = KeyProtocolFactory("/dev/test", ring, None, clock=Clock(), pool=pool,
                                     randomBytes=lambda n: HOST_NONCE[4:])
        factory.health = PassThrough()
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"".join(deviceFrames()[:4]))
        protocol.dataReceived(b"".join(entropyFrame(i, os.urandom(32)) for i in range(200)))
        self.assertEqual(transport.producerState, "paused")
        protocol.connectionLost(Failure(ConnectionError("unplugged")))
        self.assertEqual(transport.producerState, "paused")
        level = pool.level
        pool.take(level)
        self.assertEqual(pool.level, 0)
        self.assertFalse(protocol.pipeline.holding)

    def test_rekeyTimeout(self):
        """
        A nonce the key never answers makes the protocol reset the key after
        the re-key time-out; an answer in time cancels the timer.
        """
        clock = Clock()
        factory = KeyProtocolFactory("/dev/test", ring, lambda b: None, clock=clock,
                                     randomBytes=lambda n: HOST_NONCE[4:])
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"".join(deviceFrames()[:3]))
        transport.clear()
        clock.advance(REKEY_TIMEOUT)
        self.assertEqual(transport.value(), b"\x03")
        self.assertEqual(clock.getDelayedCalls(), [])
        protocol.dataReceived(b"".join(deviceFrames()[:4]))
        self.assertEqual(protocol.pipeline.session.state, KeyState.RUNNING)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_logsCarryNoSecrets(self):
        """
        Everything logged while a key connects, re-keys, sends entropy,
        fails a MAC and goes away names the key but never carries entropy,
        the session key or the long-term key, in hex or base64.
        """
        import base64

        from twisted.logger import formatEvent, globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        blocks = []
        factory, protocol = runningProtocol(blocks.append)
        for frame in deviceFrames()[4:]:
            protocol.dataReceived(frame)
        protocol.connectionLost(Failure(ConnectionError("unplugged")))
        text = "\n".join(formatEvent(e) + repr(sorted(e.items(), key=str)) for e in events)
        self.assertIn(SESSION["serial_pem"], text)
        secrets = [bytes.fromhex(h) for h in SESSION["plaintext_in_order"]]
        secrets += [bytes.fromhex(SESSION["session_key"]), LONG_TERM_KEY]
        for secret in secrets:
            for form in (secret.hex(), base64.b64encode(secret).decode(), repr(secret)[2:20]):
                self.assertNotIn(form[:16], text)

    def test_freshSessionPerConnection(self):
        """
        Each connection gets a new session with the keyring in force then.
        """
        rings = [ring(), Keyring()]
        factory = KeyProtocolFactory("/dev/test", lambda: rings[0], lambda b: None)
        first = factory.buildProtocol(None)
        rings[0] = rings[1]
        second = factory.buildProtocol(None)
        self.assertIsNot(first.pipeline.session, second.pipeline.session)
        self.assertIs(second.pipeline.session.keyring, rings[1])


class EndpointTests(unittest.TestCase):
    """
    L{KeyDeviceEndpoint} opens whichever kind of path a key has.
    """

    def test_missing(self):
        """
        A missing path fails with an error naming it.
        """
        path = self.mktemp()
        error = self.assertRaises(KeyPathError, checkKeyPath, path)
        self.assertIn(path, str(error))
        d = KeyDeviceEndpoint(MemoryReactorClock(), path).connect(None)
        self.failureResultOf(d, KeyPathError)

    def test_regularFile(self):
        """
        A regular file is neither a serial device nor a socket.
        """
        path = self.mktemp()
        open(path, "w").close()
        self.assertIn("neither", str(self.assertRaises(KeyPathError, checkKeyPath, path)))

    def test_socketAndSerial(self):
        """
        A Unix socket path is connected to as a Unix client; a character
        device counts as a serial port.
        """
        path = self.mktemp()
        listener = socket.socket(socket.AF_UNIX)
        self.addCleanup(listener.close)
        listener.bind(path)
        self.assertEqual(checkKeyPath(path), "socket")
        self.assertEqual(checkKeyPath("/dev/null"), "serial")
        reactor = MemoryReactorClock()
        KeyDeviceEndpoint(reactor, path).connect(
            KeyProtocolFactory(path, ring, lambda b: None))
        self.assertEqual(reactor.unixClients[0][0], path)


class KeyServiceTests(unittest.TestCase):
    """
    L{KeyService} keeps trying a key that is not there yet.
    """

    def test_retriesWithBackoff(self):
        """
        While the path is missing the service retries with growing delays,
        and connects once the socket appears.
        """
        path = self.mktemp()
        reactor = MemoryReactorClock()
        service = KeyService(path, ring, lambda b: None, reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(reactor.unixClients, [])
        reactor.advance(1.5)
        self.assertEqual(reactor.unixClients, [])
        listener = socket.socket(socket.AF_UNIX)
        self.addCleanup(listener.close)
        listener.bind(path)
        reactor.advance(120)
        self.assertEqual(reactor.unixClients[0][0], path)
        self.assertTrue(os.path.exists(path))


class KeyStatusTests(unittest.TestCase):
    """
    L{KeyService.status} is the one view of a key: closed, running, closed
    again.
    """

    def test_lifecycle(self):
        """
        A key not yet connected is closed and not connected; once it has
        agreed a session key it is running with its serial, the time it
        connected and its readings; when it goes it is closed again.
        """
        path = self.mktemp()
        listener = socket.socket(socket.AF_UNIX)
        self.addCleanup(listener.close)
        listener.bind(path)
        reactor = MemoryReactorClock()
        reactor.advance(7)
        service = KeyService(path, ring, lambda b: None, reactor=reactor,
                             randomBytes=lambda n: HOST_NONCE[4:])
        status = service.status()
        self.assertEqual((status.path, status.state, status.reason, status.serial,
                          status.connectedAt, status.readings),
                         (path, KeyState.CLOSED, NOT_CONNECTED, None, None, None))
        service.startService()
        self.addCleanup(service.stopService)
        wrapper = reactor.unixClients[-1][1].buildProtocol(None)
        wrapper.makeConnection(StringTransport())
        for frame in deviceFrames()[:8]:
            service.factory.connection.dataReceived(frame)
        status = service.status()
        self.assertTrue(status.running)
        self.assertEqual(status.serial, SESSION["serial_pem"])
        self.assertEqual(status.connectedAt, 7)
        self.assertEqual(status.readings.entropyBytes, 4 * 32)
        self.assertEqual(status.readings.temperatureTenthsK, 3150)
        self.assertEqual(status.healthFailure, None)
        wrapper.connectionLost(Failure(ConnectionDone()))
        status = service.status()
        self.assertEqual((status.state, status.reason, status.readings),
                         (KeyState.CLOSED, NOT_CONNECTED, None))

    def test_keyringChanged(self):
        """
        A key whose serial was not in the keyring starts again when the
        keyring in force changes, and runs.
        """
        path = self.mktemp()
        listener = socket.socket(socket.AF_UNIX)
        self.addCleanup(listener.close)
        listener.bind(path)
        reactor = MemoryReactorClock()
        rings = [Keyring()]
        service = KeyService(path, lambda: rings[0], lambda b: None, reactor=reactor,
                             randomBytes=lambda n: HOST_NONCE[4:])
        self.assertFalse(service.keyringChanged())
        service.startService()
        self.addCleanup(service.stopService)
        wrapper = reactor.unixClients[-1][1].buildProtocol(None)
        transport = StringTransport()
        wrapper.makeConnection(transport)
        self.addCleanup(wrapper.connectionLost, Failure(ConnectionDone()))
        service.factory.connection.dataReceived(deviceFrames()[0])
        self.assertEqual(service.status().state, KeyState.UNKNOWN_SERIAL)
        transport.clear()
        rings[0] = ring()
        self.assertTrue(service.keyringChanged())
        self.assertEqual(transport.value(), b"\x03")
        service.factory.connection.dataReceived(b"".join(deviceFrames()[:4]))
        self.assertTrue(service.status().running)


def asNobody(testCase, function):
    """
    Run C{function} in a child process as uid and gid 65534.

    @return: what it returns (a string), or the text of what it raised.
    """
    if os.getuid() != 0:
        raise unittest.SkipTest("acting as another user needs root")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                result = function()
            except BaseException as e:
                result = f"{type(e).__name__}: {e}"
            os.write(write, str(result).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as f:
        return f.read().decode()


class OpenFailureTests(unittest.TestCase):
    """
    A key that cannot be opened says why in one line, with the fix.
    """

    def pty(self):
        """
        @return: the path of a fresh pty's slave (its master stays open
            until the test ends).
        """
        master, slave = os.openpty()
        self.addCleanup(os.close, master)
        path = os.ttyname(slave)
        os.close(slave)
        return path

    def open(self, path):
        """
        Open C{path} as a serial key, closed when the test ends.
        """
        port = openSerialKey(path, Protocol(), MemoryReactor())
        self.addCleanup(port.connectionLost, Failure(ConnectionDone()))
        return port

    def tryOpen(self, path):
        try:
            self.open(path)
        except KeyPathError as e:
            return str(e)
        return "opened"

    def test_notATty(self):
        """
        A character device that is not a tty (C{/dev/zero}) is refused as
        not a serial port.
        """
        message = str(self.assertRaises(KeyPathError, self.open, "/dev/zero"))
        self.assertEqual(message, "cannot open /dev/zero: not a serial port "
                                  "(a character device that is not a tty)")

    def test_socketErrors(self):
        """
        A Unix-socket key nobody listens on, or that the daemon's user may
        not connect to, is described in one line.
        """
        import errno

        from twisted.internet.error import ConnectError, ConnectionRefusedError

        path = self.mktemp()
        open(path, "w").close()
        os.chmod(path, 0o660)
        self.assertEqual(describeOpenError(path, ConnectionRefusedError(errno.ECONNREFUSED)),
                         f"cannot connect to {path}: nobody listens on that socket")
        self.assertIn(f"cannot open {path}: permission denied (add the daemon's user ",
                      describeOpenError(path, ConnectError(errno.EACCES)))
        self.assertEqual(describeOpenError(path, ConnectError(errno.EIO)),
                         f"cannot open {path}: {os.strerror(errno.EIO)}")

    def test_pty(self):
        """
        A pty is a serial port and opens.
        """
        self.assertEqual(self.tryOpen(self.pty()), "opened")

    def test_permissionDenied(self):
        """
        A device the daemon's user may not open names the group to join
        when the group may read and write it, and says to give the group
        access when it may not.
        """
        import grp

        path = self.pty()
        group = grp.getgrgid(os.stat(path).st_gid).gr_name
        os.chmod(path, 0o660)
        message = asNobody(self, lambda: self.tryOpen(path))
        self.assertEqual(message, f"cannot open {path}: permission denied "
                                  f"(add the daemon's user nobody to group {group})")
        os.chmod(path, 0o600)
        message = asNobody(self, lambda: self.tryOpen(path))
        self.assertIn("permission denied (it is mode 0600: give group", message)

    def test_exclusive(self):
        """
        A key is opened with C{TIOCEXCL}: another user's open of the same
        tty fails with C{EBUSY} (root bypasses C{TIOCEXCL}, so the second
        opener is a child that dropped to uid 65534; before the key is
        opened the same child opens it fine), and is reported in one line
        as busy; a second open as root fails too (the advisory lock).
        """
        import errno

        path = self.pty()
        os.chmod(path, 0o666)

        def plainOpen():
            try:
                os.close(os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK))
            except OSError as e:
                return errno.errorcode[e.errno]
            return "opened"

        self.assertEqual(asNobody(self, plainOpen), "opened")
        self.open(path)
        self.assertEqual(asNobody(self, plainOpen), "EBUSY")
        busy = (f"cannot open {path}: busy, another program has it open exclusively "
                "(ekeyd, or a second ekey daemon?)")
        self.assertEqual(asNobody(self, lambda: self.tryOpen(path)), busy)
        self.assertEqual(self.tryOpen(path), busy)

    def test_reasonShownAndLoggedOncePerChange(self):
        """
        While a key cannot be opened, its status says why, and the reason
        is logged at warning level once per change, however often the
        service retries.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        link = os.path.join(directory, "key")
        os.symlink("/dev/zero", link)
        reactor = MemoryReactorClock()
        service = KeyService(link, ring, lambda b: None, reactor=reactor)
        events = []
        service.log = Logger(observer=events.append)
        service.startService()
        self.addCleanup(service.stopService)
        reactor.advance(10)
        reactor.advance(10)
        self.assertEqual(service.status().state, KeyState.CLOSED)
        self.assertEqual(service.status().reason,
                         f"cannot open {link}: not a serial port "
                         "(a character device that is not a tty)")
        os.unlink(link)
        os.symlink(os.path.join(directory, "missing"), link)
        reactor.advance(60)
        reactor.advance(60)
        self.assertEqual(service.status().reason, f"no such device or socket: {link}")
        warnings = [e["reason"] for e in events if e["log_level"].name == "warn"]
        self.assertEqual(warnings, [f"cannot open {link}: not a serial port "
                                    "(a character device that is not a tty)",
                                    f"no such device or socket: {link}"])


class PrivilegeTests(unittest.TestCase):
    """
    Keys are opened before privileges are shed.
    """

    def test_openedInPrivilegedStart(self):
        """
        A key service starts connecting in privilegedStartService, and the
        later startService does not connect again.
        """
        path = self.mktemp()
        listener = socket.socket(socket.AF_UNIX)
        self.addCleanup(listener.close)
        listener.bind(path)
        reactor = MemoryReactorClock()
        service = KeyService(path, ring, lambda b: None, reactor=reactor)
        service.privilegedStartService()
        self.assertEqual(len(reactor.unixClients), 1)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(len(reactor.unixClients), 1)
        self.assertTrue(service.running)


class KeyDirectoryServiceTests(unittest.TestCase):
    """
    L{KeyDirectoryService} follows keys as they come and go.
    """

    def test_appearAndVanish(self):
        """
        A socket appearing in the directory is reported at the next look; a
        link to it is not reported twice; keys served elsewhere are left
        alone; a vanished key is reported gone.
        """
        from ekey.services.device import KeyDirectoryService

        directory = self.mktemp()
        os.mkdir(directory)
        elsewhere = os.path.join(directory, "elsewhere")
        reactor = MemoryReactorClock()
        appeared, vanished = [], []
        watcher = KeyDirectoryService(directory, appeared.append, vanished.append,
                                      exclude=[elsewhere], reactor=reactor)
        watcher.startService()
        self.addCleanup(watcher.stopService)
        self.assertEqual(watcher.paths, [])
        for name in ("a-key", "elsewhere"):
            s = socket.socket(socket.AF_UNIX)
            self.addCleanup(s.close)
            s.bind(os.path.join(directory, name))
        os.symlink(os.path.join(directory, "a-key"), os.path.join(directory, "b-link"))
        open(os.path.join(directory, "not-a-key"), "w").close()
        reactor.advance(1)
        self.assertEqual(appeared, [os.path.join(directory, "a-key")])
        os.unlink(os.path.join(directory, "b-link"))
        os.unlink(os.path.join(directory, "a-key"))
        reactor.advance(1)
        self.assertEqual(vanished, appeared)
        self.assertEqual(watcher.paths, [])

    def test_missingDirectoryWaitedFor(self):
        """
        A directory that does not exist yet is waited for, as ekeyd does: it
        is said once, at info level, however many looks find it missing;
        keys are reported once it appears, and reported gone if it goes
        away again.
        """
        from twisted.logger import LogLevel, capturedLogs

        from ekey.services.device import KeyDirectoryService

        directory = self.mktemp()
        reactor = MemoryReactorClock()
        appeared, vanished = [], []
        watcher = KeyDirectoryService(directory, appeared.append, vanished.append,
                                      reactor=reactor)
        with capturedLogs() as events:
            watcher.startService()
            self.addCleanup(watcher.stopService)
            reactor.advance(1)
            reactor.advance(1)
        waiting = [e for e in events if "waiting for it" in formatEvent(e)]
        self.assertEqual(len(waiting), 1, [formatEvent(e) for e in events])
        self.assertEqual(waiting[0]["log_level"], LogLevel.info)
        self.assertIn(directory, formatEvent(waiting[0]))
        self.assertEqual(appeared, [])

        os.mkdir(directory)
        key = os.path.join(directory, "a-key")
        s = socket.socket(socket.AF_UNIX)
        self.addCleanup(s.close)
        s.bind(key)
        reactor.advance(1)
        self.assertEqual(appeared, [key])

        os.unlink(key)
        os.rmdir(directory)
        with capturedLogs() as events:
            reactor.advance(1)
            reactor.advance(1)
        self.assertEqual(vanished, [key])
        self.assertEqual(len([e for e in events if "waiting for it" in formatEvent(e)]), 1)


class RekeyLoggingTests(unittest.TestCase):
    """
    A key's routine session re-keys (every ~33 s on a real key) are logged
    at debug level; its first keying and the changes that matter stay at
    info or above.
    """

    def test_routineRekeysAtDebug(self):
        """
        Over a connection to a simulated key whose sessions last a few
        frames, the first keying is logged at info, and the later re-keys
        (several, each a step to re-keying and back) at debug only.
        """
        from twisted.logger import LogLevel, capturedLogs
        from twisted.test import iosim

        from ekey.core import session as sessionModule
        from ekey.services import simulator

        self.patch(simulator, "LAST_SEQUENCE", 20)
        self.patch(sessionModule, "LAST_SEQUENCE", 20)
        clock = Clock()
        key = simulator.SimulatedKey(SERIAL, LONG_TERM_KEY, randomBytes=lambda n: b"\x42" * n)
        server = simulator.SimulatedKeyProtocol(key, 0, clock)
        factory = KeyProtocolFactory("/dev/test", ring, lambda b: None, clock=clock)
        factory.health = PassThrough()
        client = factory.buildProtocol(None)
        with capturedLogs() as events:
            pump = iosim.connect(server, iosim.FakeTransport(server, isServer=True),
                                 client, iosim.FakeTransport(client, isServer=False),
                                 greet=False, clock=clock)
            for _ in range(200):
                pump.pump()
                clock.advance(0)
            client.connectionLost(Failure(ConnectionDone()))
        self.assertGreater(client.pipeline.session.statistics.noncesSent, 3)

        def states(level):
            return [formatEvent(e).split(": ", 1)[1].split(" (")[0] for e in events
                    if e["log_level"] is level and "(serial " in formatEvent(e)]

        self.assertEqual(states(LogLevel.info), ["Re-keying session", "Running OK"])
        routine = states(LogLevel.debug)
        self.assertGreaterEqual(len(routine), 4)
        self.assertEqual(set(routine), {"Re-keying session", "Running OK"})
        self.assertEqual(states(LogLevel.warn), ["Key closed"])

    def test_factoryQuiet(self):
        """
        Opening and closing a key's connection logs no C{Starting factory}
        line at info level (it is at debug).
        """
        from twisted.logger import LogLevel, capturedLogs

        factory = KeyProtocolFactory("/dev/test", ring, lambda b: None, clock=Clock())
        with capturedLogs() as events:
            factory.doStart()
            factory.doStop()
        self.assertEqual([e["log_level"] for e in events], [LogLevel.debug, LogLevel.debug])
        self.assertNotIn("object at 0x", " ".join(formatEvent(e) for e in events))
