# -*- test-case-name: tests.test_device -*-
"""
Twisted adapters between a key's device path and a L{KeyPipeline}.

A key is a path: a serial device (USB CDC-ACM, C{/dev/ttyACM*} or a udev
link under C{/dev/entropykey/}, or a pty) driven through
L{twisted.internet.serialport} and opened exclusively (C{TIOCEXCL} and an
advisory lock), or a Unix stream socket that a key (or the simulator)
listens on, as ekeyd's C{AddEntropyKey} accepts.  L{KeyDeviceEndpoint}
makes either look like a client endpoint, so that
L{twisted.application.internet.ClientService} reconnects with backoff when
the key vanishes; a key that cannot be opened says why in one line.
L{KeyProtocol} only forwards bytes between the transport and the pipeline,
pauses and resumes the transport and runs the pipeline's timer.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import grp
import os
import pwd
import stat
import termios
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

from ekey.core.health import HealthMonitor
from ekey.core.keypipeline import GarbageDiscarded, KeyPipeline, RekeyTimedOut
from ekey.core.keyring import Keyring, formatSerial
from ekey.core.status import KeyReadings, KeyStatus
from ekey.core.session import (
    InformationReceived,
    KeySession,
    KeyState,
    StateChanged,
)

SERIAL_BAUDRATE = 115200

#: What a key's status says while it is not connected and nothing went
#: wrong opening it.
NOT_CONNECTED = "not connected (retrying)"


class KeyPathError(Exception):
    """
    A key's path is missing, is neither a character device nor a socket,
    or cannot be opened; the message is one line naming the fix.
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


def describeOpenError(path: str, error: BaseException) -> str:
    """
    Say in one line why a key could not be opened, and what to do.

    @param error: the error of opening it (an L{OSError}, a pyserial
        C{SerialException} or a Twisted C{ConnectError}).
    @return: the line.
    """
    code = getattr(error, "errno", None) or getattr(error, "osError", None)
    if code in (errno.EACCES, errno.EPERM):
        return f"cannot open {path}: permission denied ({_accessHint(path)})"
    if code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK):
        return (f"cannot open {path}: busy, another program has it open exclusively "
                "(ekeyd, or a second ekey daemon?)")
    if code == errno.ENOTTY:
        return f"cannot open {path}: not a serial port (a character device that is not a tty)"
    if code == errno.ENOENT:
        return f"no such device or socket: {path}"
    if code == errno.ECONNREFUSED:
        return f"cannot connect to {path}: nobody listens on that socket"
    if isinstance(code, int):
        return f"cannot open {path}: {os.strerror(code)}"
    return f"cannot open {path}: {error}"


def _accessHint(path: str) -> str:
    try:
        status = os.stat(path)
    except OSError:
        return "check the permissions of the path and its directories"
    try:
        group = grp.getgrgid(status.st_gid).gr_name
    except KeyError:
        group = f"gid {status.st_gid}"
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = f"uid {os.geteuid()}"
    if status.st_mode & 0o060 == 0o060:
        return f"add the daemon's user {user} to group {group}"
    return (f"it is mode {stat.S_IMODE(status.st_mode):04o}: give group {group} read-write "
            f"access (as ekeyd's udev rules do) and add the daemon's user {user} to it")


@functools.lru_cache(maxsize=None)
def _keySerialPortClass():
    # Built on first use: pyserial and Twisted's serial support are only
    # imported when a serial key is opened.
    import serial
    from twisted.internet.serialport import SerialPort

    class ExclusiveSerial(serial.Serial):
        """
        A serial port that is a tty, opened exclusively: C{TIOCEXCL} right
        after it is opened (so that any other opener but root gets
        C{EBUSY}) and an advisory C{flock} (which another ekey daemon
        respects even as root).
        """

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("exclusive", True)
            super().__init__(*args, **kwargs)

        def _reconfigure_port(self, force_update=False):
            if force_update:
                # Called once, by open(), right after the device is opened.
                if not os.isatty(self.fd):
                    raise serial.SerialException(errno.ENOTTY, "not a tty")
                fcntl.ioctl(self.fd, termios.TIOCEXCL)
            super()._reconfigure_port(force_update)

    class KeySerialPort(SerialPort):
        _serialFactory = ExclusiveSerial

    return KeySerialPort


def openSerialKey(path: str, protocol: Protocol, reactor):
    """
    Open a serial key exclusively and connect C{protocol} to it.

    @return: the L{twisted.internet.serialport.SerialPort}.
    @raise KeyPathError: one line naming the fix, if it cannot be opened
        (no permission, not a tty, busy, ...).
    """
    try:
        return _keySerialPortClass()(protocol, path, reactor, baudrate=SERIAL_BAUDRATE)
    except OSError as e:  # pyserial's SerialException is an OSError
        raise KeyPathError(describeOpenError(path, e)) from None


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
            L{KeyPathError} saying in one line why it cannot be opened.
        """
        try:
            kind = checkKeyPath(self.path)
        except KeyPathError:
            return defer.fail()
        if kind == "socket":
            d = UNIXClientEndpoint(self._reactor, self.path).connect(protocolFactory)
            d.addErrback(self._connectFailed)
            return d
        protocol = protocolFactory.buildProtocol(None)
        try:
            openSerialKey(self.path, protocol, self._reactor)
        except KeyPathError:
            return defer.fail()
        return defer.succeed(protocol)

    def _connectFailed(self, failure):
        raise KeyPathError(describeOpenError(self.path, failure.value))


class KeyProtocol(Protocol):
    """
    Carry bytes between one key and its L{KeyPipeline}: forward what the
    key sends, write what the pipeline has for the key, hand its entropy
    on, pause and resume the transport as it asks, run its timer, and log
    its events.

    @ivar pipeline: the L{KeyPipeline} of this connection.
    """

    log = Logger()

    def __init__(self, path: str, pipeline: KeyPipeline, deliver: Callable[[bytes], None],
                 clock=None):
        """
        @param path: the key's path, for logs.
        @param pipeline: a fresh L{KeyPipeline}.
        @param deliver: called with verified, tested entropy.
        @param clock: an L{IReactorTime} for the pipeline's timer (default
            the reactor).
        """
        if clock is None:
            from twisted.internet import reactor as clock
        self.path = path
        self.pipeline = pipeline
        self._deliver = deliver
        self._clock = clock
        self._reading = True
        self._timer = None
        self._timerDeadline: Optional[float] = None
        self._carrying = False
        self._again = False
        self._hasRun = False

    def connectionMade(self):
        self.log.info("Key {path} connected", path=self.path)
        self.pipeline.connectionMade(self._clock.seconds())
        self._carryOut()

    def dataReceived(self, data):
        self.pipeline.receiveData(data, self._clock.seconds())
        self._carryOut()

    def roomChanged(self, room: Optional[int]) -> None:
        """
        The room in the pool changed.

        @param room: bytes it can take, or C{None} for no limit.
        """
        pipeline = self.pipeline
        if pipeline.holding or not self._reading:
            pipeline.roomChanged(room, self._clock.seconds())
            self._carryOut()
        else:
            # Nothing waits for room (the usual case, at every change of
            # the pool's level): only note it.
            pipeline.roomChanged(room)

    def connectionLost(self, reason):
        self.transport = None
        self.pipeline.connectionLost(f"connection lost: {reason.getErrorMessage()}")
        self._carryOut()

    def flush(self):
        """
        Carry out what the pipeline has now, after an input given to it
        from outside (such as L{KeyPipeline.keyringChanged} or
        L{KeyPipeline.halt}).
        """
        self._carryOut()

    def _timerFired(self):
        self._timer = self._timerDeadline = None
        self.pipeline.handleTimer(self._clock.seconds())
        self._carryOut()

    def _carryOut(self):
        # Delivering entropy changes the pool's level, which calls
        # roomChanged again: that turn is folded into the loop running.
        if self._carrying:
            self._again = True
            return
        self._carrying = True
        try:
            self._again = True
            while self._again:
                self._again = False
                out = self.pipeline.dataToSend()
                if out and self.transport is not None:
                    self.transport.write(out)
                for event in self.pipeline.takeEvents():
                    self._logEvent(event)
                data = self.pipeline.takeEntropy()
                if data:
                    self._deliver(data)
            self._followReading()
            self._followTimer()
        finally:
            self._carrying = False

    def _followReading(self):
        wanted = self.pipeline.readingWanted
        if wanted == self._reading or self.transport is None:
            return
        self._reading = wanted
        if wanted:
            self.transport.resumeProducing()
        else:
            self.transport.pauseProducing()

    def _followTimer(self):
        deadline = self.pipeline.timer()
        if deadline == self._timerDeadline:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timerDeadline = deadline
        if deadline is not None:
            delay = max(0.0, deadline - self._clock.seconds())
            self._timer = self._clock.callLater(delay, self._timerFired)

    def _routineRekey(self, event: StateChanged) -> bool:
        """
        @return: whether C{event} is a step of a routine session re-key of
            a key that has run on this connection: from running to
            re-keying, and back to running.
        """
        return self._hasRun and (
            (event.old, event.new) in ((KeyState.RUNNING, KeyState.REKEYING),
                                       (KeyState.REKEYING, KeyState.RUNNING)))

    def _logEvent(self, event):
        session = self.pipeline.session
        if isinstance(event, StateChanged):
            if event.new is KeyState.CLOSED:
                emit = self.log.warn
            elif event.new.stopped:
                emit = self.log.error
            elif self._routineRekey(event):
                # Every ~33 s on a busy key: not worth a line at info.
                emit = self.log.debug
            else:
                emit = self.log.info
            if event.new is KeyState.RUNNING:
                self._hasRun = True
            emit("Key {path} (serial {serial}): {state} ({reason})",
                 path=self.path,
                 serial=formatSerial(session.serial) if session.serial else "?",
                 state=event.new.value, reason=event.reason)
        elif isinstance(event, InformationReceived) and event.information.unknown:
            self.log.debug("Key {path} sent unknown information {fields}",
                           path=self.path, fields=event.information.unknown)
        elif isinstance(event, GarbageDiscarded):
            self.log.warn(
                "Key {path} sent {count} bytes that are not frames ({errors} framing errors "
                "in all); they were discarded",
                path=self.path, count=event.count, errors=event.framingErrors)
        elif isinstance(event, RekeyTimedOut):
            self.log.warn("Key {path} did not answer a session re-key in {seconds:g} s; "
                          "resetting it", path=self.path, seconds=event.seconds)


class KeyProtocolFactory(Factory):
    """
    Build a L{KeyProtocol} with a fresh session and pipeline for each
    connection; keep the key's health monitor across them.

    @ivar connection: the L{KeyProtocol} of the latest connection, else
        C{None}.
    @ivar health: the key's L{HealthMonitor}.
    """

    # Started and stopped at every (re)connection: logged at debug level by
    # startFactory and stopFactory instead of Factory's info line.
    noisy = False
    log = Logger()

    def __init__(self, path: str, keyringProvider: Callable[[], Keyring],
                 onEntropy: Optional[Callable[[bytes], None]] = None, clock=None,
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
        self.connection: Optional[KeyProtocol] = None
        self._pool = pool
        if pool is not None:
            onEntropy = pool.add
            pool.observeLevel(self._poolLevelChanged)
        self._keyringProvider = keyringProvider
        self._onEntropy = onEntropy
        self._sessionOptions = sessionOptions

    def startFactory(self):
        self.log.debug("Key {path}: connecting", path=self.path)

    def stopFactory(self):
        self.log.debug("Key {path}: connection over", path=self.path)

    def buildProtocol(self, addr):
        session = KeySession(self._keyringProvider(), **self._sessionOptions)
        room = self._pool.space if self._pool is not None else None
        pipeline = KeyPipeline(session, self.health, room=room)
        self.connection = KeyProtocol(self.path, pipeline, self._onEntropy, self._clock)
        return self.connection

    def _poolLevelChanged(self, pool):
        if self.connection is not None:
            self.connection.roomChanged(pool.space)


class KeyService(ClientService):
    """
    Keep one key connected: open it, and open it again with backoff (one
    second doubling to a minute, with jitter) whenever it vanishes.  Why it
    cannot be opened is logged at warning level once per change of reason,
    and shown by L{status}.
    """

    log = Logger()

    def __init__(self, path: str, keyringProvider: Callable[[], Keyring],
                 onEntropy: Optional[Callable[[bytes], None]] = None, reactor=None,
                 pool=None, **sessionOptions):
        """
        @param path: the key's device or socket path.
        @param keyringProvider: returns the keyring in force.
        @param onEntropy: called with verified, healthy entropy, when no
            C{pool} is given.
        @param reactor: the reactor (default the global one).
        @param pool: the L{EntropyPool} to feed.
        @param sessionOptions: passed to L{KeySession}.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.path = path
        self.factory = KeyProtocolFactory(path, keyringProvider, onEntropy,
                                          clock=reactor, pool=pool, **sessionOptions)
        self._keyringProvider = keyringProvider
        self._openFailure: Optional[str] = None
        ClientService.__init__(
            self,
            _ReportingEndpoint(KeyDeviceEndpoint(reactor, path), self._opened, self._notOpened),
            self.factory,
            retryPolicy=backoffPolicy(initialDelay=1.0, maxDelay=60.0),
            clock=reactor,
        )
        self.setName(f"key:{path}")
        self._startedEarly = False

    def _opened(self):
        self._openFailure = None

    def _notOpened(self, reason: str):
        if reason != self._openFailure:
            self.log.warn("Key {path}: {reason}", path=self.path, reason=reason)
        self._openFailure = reason

    def status(self) -> KeyStatus:
        """
        @return: this key's state, readings and health, now; while it is
            not connected, the reason says why it could not be opened, if it
            could not.
        """
        factory = self.factory
        health = factory.health
        connection = factory.connection
        pipeline = connection.pipeline if connection is not None else None
        # A connection is built before the key is opened; one that never
        # connected does not count.
        if (pipeline is None or pipeline.connectedAt is None
                or pipeline.session.state is KeyState.CLOSED):
            return KeyStatus(self.path, KeyState.CLOSED, self._openFailure or NOT_CONNECTED,
                             None, None, None, health.fipsBlocks, health.fipsFailed,
                             health.failure)
        session = pipeline.session
        return KeyStatus(
            self.path, session.state, session.reason,
            formatSerial(session.serial) if session.serial else None,
            pipeline.connectedAt, KeyReadings.fromStatistics(session.statistics),
            health.fipsBlocks, health.fipsFailed, health.failure)

    def keyringChanged(self) -> bool:
        """
        The keyring in force changed: if the key is stopped for want of its
        long-term key (unknown serial, or a key that did not verify), start
        it again from its serial number with the keyring in force now.

        @return: whether it was restarted.
        """
        connection = self.factory.connection
        if connection is None:
            return False
        restarted = connection.pipeline.keyringChanged(self._keyringProvider())
        connection.flush()
        return restarted

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


@implementer(IStreamClientEndpoint)
class _ReportingEndpoint:
    """
    An endpoint that says whether each attempt to open a key worked, and
    if not why, in one line.
    """

    def __init__(self, endpoint, opened: Callable[[], None], notOpened: Callable[[str], None]):
        self._endpoint = endpoint
        self._opened = opened
        self._notOpened = notOpened

    def __repr__(self) -> str:
        return repr(self._endpoint)

    def connect(self, protocolFactory):
        d = self._endpoint.connect(protocolFactory)

        def opened(protocol):
            self._opened()
            return protocol

        def notOpened(failure):
            if failure.check(KeyPathError):
                self._notOpened(str(failure.value))
            else:
                self._notOpened(describeOpenError(self._endpoint.path, failure.value))
            return failure

        return d.addCallbacks(opened, notOpened)


class KeyDirectoryService(Service):
    """
    Watch a directory (such as C{/dev/entropykey}, where udev links keys by
    serial number) and tell a key manager about every key in it: one that
    appears is added, one that goes away is removed.

    The directory is looked at every C{interval} seconds; a key is any
    entry that is (or links to) a character device or a Unix socket.  Keys
    that are already served elsewhere (by C{--device}) are left alone, and
    so is a second link to the same key.  A directory that does not exist
    (yet: udev makes C{/dev/entropykey} with the first key) is waited for,
    as ekeyd does; that, and a directory that cannot be read, is logged
    once, not at every look.
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
        self._problem: Optional[str] = None
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
        except FileNotFoundError:
            self._readable("does not exist (yet): waiting for it", self.log.info)
            return {}
        except OSError as e:
            self._readable(f"cannot be read: {e.strerror}", self.log.warn)
            return None
        self._readable(None, self.log.info)
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

    def _readable(self, problem: Optional[str], emit) -> None:
        """
        Log once per change whether the directory can be read, and if not
        why.

        @param problem: why it cannot be read, or C{None} if it can.
        @param emit: the L{Logger} method to log a change with.
        """
        if problem == self._problem:
            return
        if problem is None:
            emit("Key directory {directory} is there now", directory=self.directory)
        else:
            emit("Key directory {directory} {problem}", directory=self.directory,
                 problem=problem)
        self._problem = problem

    def scan(self):
        """
        Look at the directory once: report new keys and vanished ones.  A
        directory that does not exist has no keys (they went away with it,
        if it had any); one that cannot be read changes nothing.
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
