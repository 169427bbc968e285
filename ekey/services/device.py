# -*- test-case-name: tests.test_device -*-
"""
Twisted adapters between a key's device path and a L{KeySession}.

A key is a path: a serial device (USB CDC-ACM, C{/dev/ttyACM*} or a udev
link under C{/dev/entropykey/}, or a pty) driven through
L{twisted.internet.serialport}, or a Unix stream socket that a key (or the
simulator) listens on, as ekeyd's C{AddEntropyKey} accepts.
L{KeyDeviceEndpoint} makes either look like a client endpoint, so that
L{twisted.application.internet.ClientService} reconnects with backoff
when the key vanishes, and L{KeyProtocol} only forwards bytes between the
transport and the session.
"""

from __future__ import annotations

import os
import stat
from typing import Callable, Optional

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from ekey.core.health import FIPS_BLOCK_BYTES, HealthMonitor
from ekey.core.keyring import Keyring, formatSerial
from ekey.core.status import KeyReadings, KeyStatus
from ekey.core.session import (
    EntropyReceived,
    InformationReceived,
    REKEY_TIMEOUT,
    KeySession,
    KeyState,
    StateChanged,
)

SERIAL_BAUDRATE = 115200

#: Seconds between two log lines about garbage from the same key.
GARBAGE_REPORT_INTERVAL = 60.0

#: Bytes from a key decoded at a time (64 frames).
DECODE_SLICE = 4096


class KeyPathError(Exception):
    """
    A key's path is missing or is neither a character device nor a socket.
    """


def checkKeyPath(path: str) -> str:
    """
    Say what kind of key path this is.

    @return: C{"serial"} or C{"socket"}.
    @raise KeyPathError: with a message fit for the user, if the path is
        missing or of another kind.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise KeyPathError(f"no such device or socket: {path}") from None
    except OSError as e:
        raise KeyPathError(f"cannot use key {path}: {e.strerror}") from None
    if stat.S_ISCHR(mode):
        return "serial"
    if stat.S_ISSOCK(mode):
        return "socket"
    raise KeyPathError(f"{path} is neither a serial device nor a Unix socket")


@implementer(IStreamClientEndpoint)
class KeyDeviceEndpoint:
    """
    A client endpoint for a key's path, whichever kind it is.
    """

    def __init__(self, reactor, path: str):
        """
        @param reactor: the reactor to connect with.
        @param path: the device or socket path.
        """
        self._reactor = reactor
        self.path = path

    def __repr__(self) -> str:
        return f"<key {self.path}>"

    def connect(self, protocolFactory):
        """
        Open the key and connect a protocol from C{protocolFactory} to it.

        @return: a L{Deferred} that fires with the protocol, or fails with
            L{KeyPathError} or the error of opening it.
        """
        try:
            kind = checkKeyPath(self.path)
        except KeyPathError:
            return defer.fail()
        if kind == "socket":
            return UNIXClientEndpoint(self._reactor, self.path).connect(protocolFactory)
        return self._openSerial(protocolFactory)

    def _openSerial(self, protocolFactory):
        from twisted.internet.serialport import SerialPort
        import serial

        protocol = protocolFactory.buildProtocol(None)
        try:
            SerialPort(protocol, self.path, self._reactor, baudrate=SERIAL_BAUDRATE)
        except (OSError, serial.SerialException) as e:
            return defer.fail(KeyPathError(f"cannot open {self.path}: {e}"))
        return defer.succeed(protocol)


class KeyProtocol(Protocol):
    """
    Forward bytes between one key and its L{KeySession}.

    @ivar session: the session, created per connection.
    """

    log = Logger()

    def __init__(self, path: str, session: KeySession, onEntropy: Callable[[bytes], None],
                 onEvent: Optional[Callable[["KeyProtocol", object], None]] = None,
                 clock=None, health: Optional[HealthMonitor] = None):
        """
        @param path: the key's path, for logs.
        @param session: a fresh L{KeySession}.
        @param onEntropy: called with verified entropy that passed the health
            tests (in chunks of 2,500 bytes).
        @param onEvent: called with every other session event.
        @param clock: an L{IReactorTime} for the re-key time-out (default
            the reactor).
        @param health: the key's L{HealthMonitor}, kept across connections
            so that a key that failed stays stopped (default a new one).
        """
        self.path = path
        self.session = session
        self.health = health if health is not None else HealthMonitor()
        self.readingPaused = False
        self._backlog = b""
        self.connectedAt: Optional[float] = None
        self._garbageReported = (None, 0)
        self._onEntropy = onEntropy
        self._onEvent = onEvent
        if clock is None:
            from twisted.internet import reactor as clock
        self._clock = clock
        self._rekeyTimer = None

    def connectionMade(self):
        self.connectedAt = self._clock.seconds()
        self.log.info("Key {path} connected", path=self.path)
        if self.health.failure is not None:
            self._handle(self.session.halt(KeyState.FAILED_HEALTH, self.health.failure))
            return
        self.session.connectionMade()
        self.flush()

    def dataReceived(self, data):
        self._backlog += data
        self._drainBacklog()

    def _drainBacklog(self):
        # Decode a slice at a time, and stop while reading is paused (the
        # pool is full): bytes already read wait here undecoded rather than
        # being verified only for their entropy to be refused.  The backlog
        # is at most one read of the transport, which is paused.
        while self._backlog and not self.readingPaused:
            chunk, self._backlog = self._backlog[:DECODE_SLICE], self._backlog[DECODE_SLICE:]
            self._handle(self.session.receiveData(chunk))
            self.flush()
        self._reportGarbage()

    def _reportGarbage(self):
        # At most one line a minute, however fast a key sends garbage.
        discarded = self.session.statistics.bytesDiscarded
        lastTime, lastCount = self._garbageReported
        now = self._clock.seconds()
        if discarded > lastCount and (lastTime is None or now - lastTime >= GARBAGE_REPORT_INTERVAL):
            self.log.warn(
                "Key {path} sent {count} bytes that are not frames ({errors} framing errors "
                "in all); they were discarded",
                path=self.path, count=discarded - lastCount,
                errors=self.session.statistics.framingErrors)
            self._garbageReported = (now, discarded)

    def pauseReading(self):
        """
        Stop reading from the key (the pool is full); it holds its frames
        until L{resumeReading}.
        """
        if not self.readingPaused and self.transport is not None:
            self.readingPaused = True
            self.transport.pauseProducing()

    def resumeReading(self):
        """
        Read from the key again, starting with what was read but not yet
        decoded.
        """
        if self.readingPaused:
            self.readingPaused = False
            self._drainBacklog()
            if not self.readingPaused:
                self.transport.resumeProducing()

    def connectionLost(self, reason):
        if self._rekeyTimer is not None:
            self._rekeyTimer.cancel()
            self._rekeyTimer = None
        self._handle(self.session.connectionLost(f"connection lost: {reason.getErrorMessage()}"))

    def flush(self):
        """
        Send the key what the session has for it, and start or stop the
        re-key timer.
        """
        out = self.session.dataToSend()
        if out:
            self.transport.write(out)
        waiting = self.session.awaitingRekeyReply
        if waiting and self._rekeyTimer is None:
            self._rekeyTimer = self._clock.callLater(REKEY_TIMEOUT, self._rekeyTimedOut)
        elif not waiting and self._rekeyTimer is not None:
            self._rekeyTimer.cancel()
            self._rekeyTimer = None

    def _rekeyTimedOut(self):
        self._rekeyTimer = None
        self.log.warn("Key {path} did not answer a session re-key in {seconds:g} s; resetting it",
                      path=self.path, seconds=REKEY_TIMEOUT)
        self.session.rekeyTimedOut()
        self._handle(self.session.receiveData(b""))
        self.flush()

    def _handle(self, events):
        for event in events:
            if isinstance(event, EntropyReceived):
                self._checked(event.data)
                continue
            if isinstance(event, StateChanged):
                serial = formatSerial(self.session.serial) if self.session.serial else "?"
                if event.new is KeyState.CLOSED:
                    emit = self.log.warn
                elif event.new.stopped:
                    emit = self.log.error
                else:
                    emit = self.log.info
                emit(
                    "Key {path} (serial {serial}): {state} ({reason})",
                    path=self.path,
                    serial=serial,
                    state=event.new.value,
                    reason=event.reason,
                )
            elif isinstance(event, InformationReceived) and event.information.unknown:
                self.log.debug("Key {path} sent unknown information {fields}",
                               path=self.path, fields=event.information.unknown)
            if self._onEvent is not None:
                self._onEvent(self, event)


    def _checked(self, data: bytes):
        if self.session.state.stopped:
            return
        for chunk in self.health.feed(data):
            self._onEntropy(chunk)
        if self.health.failure is not None:
            self._handle(self.session.halt(KeyState.FAILED_HEALTH, self.health.failure))


class KeyProtocolFactory(Factory):
    """
    Build a L{KeyProtocol} with a fresh session for each connection.
    """

    def __init__(self, path: str, keyringProvider: Callable[[], Keyring],
                 onEntropy: Callable[[bytes], None], onEvent=None, clock=None,
                 pool=None, **sessionOptions):
        """
        @param keyringProvider: returns the keyring in force (it may be
            reloaded between connections).
        @param onEntropy: called with verified, healthy entropy; ignored
            when C{pool} is given.
        @param clock: passed to L{KeyProtocol}.
        @param pool: an L{EntropyPool} to feed; when it is full, the key is
            not read until there is room again, so that a fast key costs no
            work the pool would throw away.
        @param sessionOptions: passed to L{KeySession}.
        """
        self.path = path
        self._clock = clock
        self.health = HealthMonitor()
        self.protocol = None
        self._pool = pool
        if pool is not None:
            onEntropy = self._feedPool
            pool.observeLevel(self._poolLevelChanged)
        self._keyringProvider = keyringProvider
        self._onEntropy = onEntropy
        self._onEvent = onEvent
        self._sessionOptions = sessionOptions

    def buildProtocol(self, addr):
        session = KeySession(self._keyringProvider(), **self._sessionOptions)
        self.protocol = KeyProtocol(self.path, session, self._onEntropy, self._onEvent,
                                    self._clock, self.health)
        return self.protocol

    def _feedPool(self, data: bytes):
        self._pool.add(data)
        # Stop reading (and decoding) while the pool has no room for the
        # next tested chunk, so that verified entropy is not refused.
        if self._pool.space < FIPS_BLOCK_BYTES and self.protocol is not None:
            self.protocol.pauseReading()

    def _poolLevelChanged(self, pool):
        if (self.protocol is not None and self.protocol.readingPaused
                and pool.space >= FIPS_BLOCK_BYTES):
            self.protocol.resumeReading()


class KeyService(ClientService):
    """
    Keep one key connected: open it, and open it again with backoff (one
    second doubling to a minute, with jitter) whenever it vanishes.
    """

    def __init__(self, path: str, keyringProvider: Callable[[], Keyring],
                 onEntropy: Optional[Callable[[bytes], None]], onEvent=None, reactor=None,
                 pool=None, **sessionOptions):
        if reactor is None:
            from twisted.internet import reactor
        self.path = path
        self.factory = KeyProtocolFactory(path, keyringProvider, onEntropy, onEvent,
                                          clock=reactor, pool=pool, **sessionOptions)
        ClientService.__init__(
            self,
            KeyDeviceEndpoint(reactor, path),
            self.factory,
            retryPolicy=backoffPolicy(initialDelay=1.0, maxDelay=60.0),
            clock=reactor,
        )
        self.setName(f"key:{path}")
        self._startedEarly = False

    def status(self) -> KeyStatus:
        """
        @return: this key's state, readings and health, now.
        """
        factory = self.factory
        protocol = factory.protocol
        health = factory.health
        session = protocol.session if protocol is not None else None
        if session is None or session.state is KeyState.CLOSED:
            return KeyStatus(self.path, KeyState.CLOSED, "not connected (retrying)", None, None,
                             None, health.fipsBlocks, health.fipsFailed, health.failure)
        return KeyStatus(
            self.path, session.state, session.reason,
            formatSerial(session.serial) if session.serial else None,
            protocol.connectedAt, KeyReadings.fromStatistics(session.statistics),
            health.fipsBlocks, health.fipsFailed, health.failure)

    def privilegedStartService(self):
        """
        Open the key while the process still has its privileges (before
        C{twistd --uid/--gid} sheds them), as ekeyd opens keys as root.
        Reopening it later, after it vanishes, needs the unprivileged user
        to have access (the C{dialout} group for USB serial devices).
        """
        ClientService.privilegedStartService(self)
        self._startedEarly = True
        ClientService.startService(self)

    def startService(self):
        if self._startedEarly and self.running:
            return
        ClientService.startService(self)


class KeyDirectoryService(Service):
    """
    Watch a directory (such as C{/dev/entropykey}, where udev links keys by
    serial number) and tell a key manager about every key in it: one that
    appears is added, one that goes away is removed.

    The directory is looked at every C{interval} seconds; a key is any
    entry that is (or links to) a character device or a Unix socket.  Keys
    that are already served elsewhere (by C{--device}) are left alone, and
    so is a second link to the same key.
    """

    log = Logger()

    def __init__(self, directory: str, onAppear: Callable[[str], None],
                 onVanish: Callable[[str], None], interval: float = 1.0, exclude=(),
                 reactor=None):
        """
        @param onAppear: called with the path of a key that appeared.
        @param onVanish: called with the path of a key that went away.
        @param exclude: paths of keys served elsewhere.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.directory = directory
        self._onAppear = onAppear
        self._onVanish = onVanish
        self._exclude = {os.path.realpath(p) for p in exclude}
        self._keys = set()
        self._loop = LoopingCall(self.scan)
        self._loop.clock = reactor
        self._interval = interval
        self.setName(f"keydir:{directory}")

    def startService(self):
        Service.startService(self)
        self._loop.start(self._interval, now=True)

    def stopService(self):
        if self._loop.running:
            self._loop.stop()
        return Service.stopService(self)

    def _present(self):
        try:
            names = sorted(os.listdir(self.directory))
        except OSError as e:
            self.log.warn("Cannot read key directory {directory}: {reason}",
                          directory=self.directory, reason=e.strerror)
            return None
        found = {}
        for name in names:
            path = os.path.join(self.directory, name)
            try:
                checkKeyPath(path)
            except KeyPathError:
                continue
            real = os.path.realpath(path)
            if real not in self._exclude and real not in found.values():
                found[path] = real
        return found

    def scan(self):
        """
        Look at the directory once: report new keys and vanished ones.
        """
        found = self._present()
        if found is None:
            return
        for path in sorted(self._keys - set(found)):
            self.log.info("Key {path} went away", path=path)
            self._keys.discard(path)
            self._onVanish(path)
        for path in sorted(set(found) - self._keys):
            self.log.info("Key {path} appeared", path=path)
            self._keys.add(path)
            self._onAppear(path)

    @property
    def paths(self):
        """
        The keys present now.
        """
        return sorted(self._keys)
