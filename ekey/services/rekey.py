# -*- test-case-name: tests.test_rekey -*-
"""
Long-term re-keying over a key's connection, and what goes with it: the
keyring checked writable before the key is touched, the master key read
from an owner-only file, and a running daemon asked to let go of the key
and to take it back (ekeyd's C{ekey-setkey} and C{ekey-rekey}).

The exchange itself is L{ekey.core.rekey.LongTermRekey} (sans-I/O); the
commands are L{ekey.cli.setkey} and L{ekey.cli.rekey}.  Every failure here
is a L{RekeyError} whose message is one line for the user.
"""

from __future__ import annotations

import os
import stat
import tempfile
import termios
from typing import Callable, Dict, Iterable, Optional, Tuple

from twisted.internet import defer
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.protocols import amp

from ekey.core.keyring import Keyring, KeyringError, formatSerial
from ekey.core.rekey import LongTermRekey, RekeyState, parseMasterKey
from ekey.core.session import EntropyReceived, KeySession
from ekey.services.controlschema import AddKey, ControlError, ReloadKeyring, RemoveKey, UnknownKey
from ekey.services.device import KeyDeviceEndpoint, KeyPathError

#: Seconds between attempts to open a key that another program still holds
#: (a daemon that has just let go of it).
RETRY_DELAY = 0.25

#: The longest Unix socket path (C{sun_path} holds 108 bytes with the NUL).
MAX_UNIX_PATH = 107


class RekeyError(Exception):
    """
    Re-keying failed; the message is one line for the user.
    """


# Files ---------------------------------------------------------------------------


def prepareKeyring(path: str) -> Keyring:
    """
    Read the keyring (or start an empty one if the file does not exist
    yet) and check that it can be written, by creating and removing a
    file beside it as L{Keyring.save} will: this is done before the key
    is touched, so that a key never gets a long-term key that cannot be
    stored.

    @param path: the keyring file.
    @return: the keyring.
    @raise KeyringError: if it cannot be read or written, naming the file.
    """
    keyring = Keyring.load(path) if os.path.exists(path) else Keyring(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, probe = tempfile.mkstemp(prefix=".keyring.", dir=directory)
    except OSError as e:
        reason = e.strerror or str(e)
        raise KeyringError(f"cannot write keyring {path}: {reason}") from None
    os.close(fd)
    os.unlink(probe)
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        raise KeyringError(f"cannot write keyring {path}: permission denied")
    return keyring


def readMasterKeyFile(path: str) -> bytes:
    """
    Read a master key from a file that only its owner may read or write
    (as ssh does with private keys): the first line, as printed on the
    key's card.

    @param path: the file.
    @return: the 32-byte master key.
    @raise ValueError: with one line for the user, if the file cannot be
        read, is open to group or others, or holds no master key.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY)
    except OSError as e:
        raise ValueError(f"cannot read master key file {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if mode & 0o077:
            raise ValueError(
                f"master key file {path} is open to group or others (mode {mode:04o}): "
                f"chmod 600 {path}")
        text = f.read(4096).decode("ascii", "replace")
    lines = text.strip().splitlines()
    if not lines:
        raise ValueError(f"master key file {path} is empty")
    try:
        return parseMasterKey(lines[0])
    except ValueError as e:
        raise ValueError(f"master key file {path}: {e}") from None


# The key -------------------------------------------------------------------------


def saveTerminal(path: str) -> Callable[[], None]:
    """
    Remember a serial device's terminal settings, to put them back once the
    key is closed: pyserial leaves a tty non-blocking (C{VMIN} and C{VTIME}
    0), after which ekeyd's tools, which read the tty blocking, fail with
    "Unexpected error: Success".

    @param path: the key's path (a socket or an unreadable device is left
        alone).
    @return: a function that puts the settings back (and does nothing for
        a socket or if they could not be read).
    """
    def attributes(action):
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            return action(fd)
        except termios.error:
            return None
        finally:
            os.close(fd)

    try:
        isTerminal = stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        isTerminal = False
    saved = attributes(termios.tcgetattr) if isTerminal else None
    if saved is None:
        return lambda: None
    return lambda: attributes(lambda fd: termios.tcsetattr(fd, termios.TCSANOW, saved))


class _RekeyProtocol(Protocol):
    """
    Drive a L{LongTermRekey} over a key's connection, then optionally prove
    the new key with a session re-key on the same connection.

    @ivar rekeyed: fires with the exchange once it is over.
    @ivar lostEarly: whether the connection was lost before the key said
        its serial number (nothing was changed: opening again is safe).
    """

    lostEarly = False

    def __init__(self, exchange: LongTermRekey,
                 restoreTerminal: Callable[[], None] = lambda: None):
        self.exchange = exchange
        self._restoreTerminal = restoreTerminal
        self.rekeyed = defer.Deferred()
        self.verified = defer.Deferred()
        self._session: Optional[KeySession] = None

    def connectionMade(self):
        self.exchange.start()
        self.transport.write(self.exchange.dataToSend())

    def close(self) -> None:
        """
        Close the key, and put its terminal settings back as they were.
        """
        if self.transport is not None:
            self.transport.loseConnection()
        self._restoreTerminal()

    def verify(self, keyring: Keyring) -> defer.Deferred:
        """
        Reset the key and agree a session key under the new long-term key.

        @param keyring: a keyring holding the key's new long-term key.
        @return: a L{Deferred} firing with C{None} once an entropy frame
            verified, or with the reason it did not, in words.
        """
        self._session = KeySession(keyring)
        self._session.connectionMade()
        self.transport.write(self._session.dataToSend())
        return self.verified

    def dataReceived(self, data):
        if self._session is not None:
            events = self._session.receiveData(data)
            out = self._session.dataToSend()
            if out:
                self.transport.write(out)
            if not self.verified.called:
                if any(isinstance(e, EntropyReceived) for e in events):
                    self.verified.callback(None)
                elif self._session.state.stopped:
                    self.verified.callback(self._session.reason)
            return
        self.exchange.receiveData(data)
        out = self.exchange.dataToSend()
        if out:
            self.transport.write(out)
        if self.exchange.finished and not self.rekeyed.called:
            self.rekeyed.callback(self.exchange)

    def connectionLost(self, reason):
        self.lostEarly = self.exchange.state is RekeyState.WAITING_SERIAL
        self.exchange.fail("the connection to the key was lost")
        if not self.rekeyed.called:
            self.rekeyed.callback(self.exchange)
        if not self.verified.called:
            self.verified.callback("the connection to the key was lost")


def _describeFailure(path: str, exchange: LongTermRekey) -> str:
    if exchange.mayHaveChanged:
        return (f"{path}: {exchange.error} after the re-key was sent: the key may now have "
                "a long-term key nobody knows; run this again with its master key")
    return f"{path}: {exchange.error} (its long-term key is unchanged)"


async def changeLongTermKey(reactor, path: str, masterKey: bytes,
                            expectedSerial: Optional[bytes] = None, timeout: float = 10.0,
                            randomBytes: Callable[[int], bytes] = os.urandom,
                            ) -> Tuple[_RekeyProtocol, LongTermRekey]:
    """
    Open the key at C{path} and give it a new long-term key.  A key that
    cannot be opened, or that closes the connection before saying its
    serial number (another program, such as a daemon letting go of it,
    still holds it), is tried again every L{RETRY_DELAY} seconds until
    C{timeout}.

    @param reactor: the reactor.
    @param path: the key's serial device or Unix socket.
    @param masterKey: its 32-byte master key.
    @param expectedSerial: refuse a key with another serial number.
    @param timeout: seconds for the whole exchange.
    @param randomBytes: where the host's nonce comes from.
    @return: the connected protocol (to verify the new key with, then
        C{close()}) and the finished exchange, whose C{serial} and
        C{newLongTermKey} are set.
    @raise RekeyError: if the key cannot be opened, refuses, or does not
        answer in time; the connection is then closed.
    """
    deadline = reactor.seconds() + timeout
    restoreTerminal = saveTerminal(path)
    while True:
        exchange = LongTermRekey(masterKey, randomBytes=randomBytes,
                                 expectedSerial=expectedSerial)
        protocol = _RekeyProtocol(exchange, restoreTerminal)
        remaining = max(deadline - reactor.seconds(), 0)
        connecting = connectProtocol(KeyDeviceEndpoint(reactor, path), protocol)
        connecting.addTimeout(remaining, reactor)
        try:
            await connecting
        except defer.TimeoutError:
            raise RekeyError(f"cannot open {path}: no answer within {timeout:g} seconds") from None
        except Exception as e:
            reason = str(e) if isinstance(e, KeyPathError) else f"cannot open {path}: {e}"
            if reactor.seconds() + RETRY_DELAY < deadline:
                await deferLater(reactor, RETRY_DELAY)
                continue
            raise RekeyError(reason) from None
        rekeyed = protocol.rekeyed
        rekeyed.addTimeout(max(deadline - reactor.seconds(), 0), reactor)
        try:
            await rekeyed
        except defer.TimeoutError:
            exchange.fail(f"the key did not answer within {timeout:g} seconds "
                          f"({exchange.state.value})")
        if exchange.state is RekeyState.DONE:
            return protocol, exchange
        protocol.close()
        if protocol.lostEarly:
            if reactor.seconds() + RETRY_DELAY < deadline:
                await deferLater(reactor, RETRY_DELAY)
                continue
            raise RekeyError(f"{path}: the key closed the connection before saying its serial "
                             "number (is another program, such as a daemon, using it?)")
        raise RekeyError(_describeFailure(path, exchange))


async def verifyLongTermKey(reactor, protocol: _RekeyProtocol, keyring: Keyring,
                            timeout: float) -> None:
    """
    Prove a new long-term key: reset the key on the same connection, agree
    a session key under the key the keyring holds, and wait for a verified
    entropy frame.

    @param protocol: from L{changeLongTermKey}.
    @param keyring: holding the key's new long-term key.
    @param timeout: seconds to wait.
    @raise RekeyError: if no verified frame came.
    """
    verified = protocol.verify(keyring)
    verified.addTimeout(timeout, reactor)
    try:
        problem = await verified
    except defer.TimeoutError:
        problem = f"no entropy within {timeout:g} seconds"
    if problem is not None:
        raise RekeyError(f"the new long-term key could not be verified: {problem}")


def storeLongTermKey(keyring: Keyring, serial: bytes, longTermKey: bytes) -> None:
    """
    Store a key's new long-term key in the keyring file.

    @raise RekeyError: if the file cannot be written; the message then
        holds the keyring line, so that the new key is not lost.
    """
    keyring.set(serial, longTermKey)
    try:
        keyring.save()
    except KeyringError as e:
        raise RekeyError(
            f"the key now has a new long-term key, but {e}; add this line to the keyring "
            f"by hand: {formatSerial(serial)} {formatSerial(longTermKey)}") from None


def findKeyPath(serial: str, directories: Iterable[str],
                exists: Callable[[str], bool] = os.path.lexists) -> Optional[str]:
    """
    Find a key by serial number where udev and ekeyd put it: each
    directory's entry named after the serial, with C{/} (which a file name
    cannot hold) as C{.} or C{_}, as ekeyd's C{ekey-rekey} looks.

    @param serial: the serial, 16 base64 characters.
    @param directories: where to look, in order.
    @return: the first path that exists, or C{None}.
    """
    names = dict.fromkeys([serial.replace("/", "."), serial.replace("/", "_")])
    for directory in directories:
        for name in names:
            path = os.path.join(directory, name)
            if exists(path):
                return path
    return None


# The daemon ------------------------------------------------------------------------


class DaemonLink:
    """
    A running daemon's control channel, to let go of a key while it is
    re-keyed and take it back afterwards (what ekeyd's C{ekey-rekey} does
    with C{ekeydctl remove}, C{keyring} and C{add}).

    @ivar endpoint: the control endpoint, as given.
    """

    def __init__(self, protocol: amp.AMP, endpoint: str, reactor, timeout: float):
        self._protocol = protocol
        self._reactor = reactor
        self._timeout = timeout
        self.endpoint = endpoint

    @classmethod
    async def connect(cls, reactor, endpoint: str, timeout: float
                      ) -> Tuple[Optional["DaemonLink"], str]:
        """
        Connect to a daemon's control endpoint.

        @return: the link and C{""}, or C{None} and why no daemon answered
            (then there is none to ask).
        @raise RekeyError: if C{endpoint} is not an endpoint.
        """
        try:
            client = clientFromString(reactor, endpoint)
        except (ValueError, KeyError, TypeError) as e:
            raise RekeyError(f"bad --control endpoint {endpoint!r}: {e}") from None
        path = getattr(client, "_path", None)
        if isinstance(path, str) and len(os.fsencode(path)) > MAX_UNIX_PATH:
            return None, (f"a Unix socket path is at most {MAX_UNIX_PATH} bytes; "
                          "give a shorter one")
        connecting = connectProtocol(client, amp.AMP())
        connecting.addTimeout(timeout, reactor)
        try:
            protocol = await connecting
        except defer.TimeoutError:
            return None, f"no answer within {timeout:g} seconds"
        except Exception as e:
            code = getattr(e, "osError", None)
            return None, os.strerror(code) if code else (str(e) or e.__class__.__name__)
        return cls(protocol, endpoint, reactor, timeout), ""

    async def _call(self, command, **arguments) -> object:
        call = defer.maybeDeferred(self._protocol.callRemote, command, **arguments)
        call.addTimeout(self._timeout, self._reactor)
        try:
            answer = await call
        except defer.TimeoutError:
            raise RekeyError(f"the daemon at {self.endpoint} did not answer within "
                             f"{self._timeout:g} seconds") from None
        except ControlError:
            raise
        except Exception as e:
            raise ControlError(f"{e.__class__.__name__}: {e}") from None
        return answer["result"]

    async def release(self, identifiers: Iterable[str]) -> Optional[Dict[str, object]]:
        """
        Ask the daemon to stop serving a key (C{RemoveKey}).

        @param identifiers: what the key may be known by (path, serial),
            tried in order.
        @return: the key's description as it was (its C{path} is where to
            give it back), or C{None} if the daemon does not serve it.
        @raise RekeyError: if the daemon refuses.
        """
        for identifier in identifiers:
            try:
                return await self._call(RemoveKey, identifier=identifier)
            except UnknownKey:
                continue
            except ControlError as e:
                raise RekeyError(f"the daemon at {self.endpoint} refused to let go of the key: "
                                 f"{e} (stop the daemon first)") from None
        return None

    async def giveBack(self, path: str, keyring: str) -> str:
        """
        Ask the daemon to read its keyring again (C{ReloadKeyring}) and to
        serve the key again (C{AddKey}).

        @param path: the key's path, as the daemon had it.
        @param keyring: the keyring the new long-term key went to.
        @return: C{""} when done, else one line saying what the daemon did
            not do, and what to do about it.
        """
        problems = []
        try:
            reloaded = await self._call(ReloadKeyring)
        except (ControlError, RekeyError) as e:
            problems.append(f"the daemon did not reload its keyring: {e} "
                            "(run ekeyctl keyring)")
        else:
            loaded = reloaded.get("path") if isinstance(reloaded, dict) else None
            if loaded and os.path.realpath(loaded) != os.path.realpath(keyring):
                problems.append(f"the daemon reads the keyring {loaded}, not {keyring}: "
                                "copy the key's new line there and run ekeyctl keyring")
        try:
            await self._call(AddKey, path=path)
        except (ControlError, RekeyError) as e:
            problems.append(f"the daemon did not take the key back: {e} "
                            f"(run ekeyctl add {path})")
        return "; ".join(problems)

    def close(self) -> None:
        """
        Close the control connection.
        """
        transport = self._protocol.transport
        if transport is not None:
            transport.loseConnection()


__all__ = [
    "DaemonLink",
    "saveTerminal",
    "RekeyError",
    "changeLongTermKey",
    "findKeyPath",
    "prepareKeyring",
    "readMasterKeyFile",
    "storeLongTermKey",
    "verifyLongTermKey",
]
