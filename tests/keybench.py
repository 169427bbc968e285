"""
A bench for running C{ekey-setkey} and C{ekey-rekey} in-process against a
simulated key (and, for C{ekey-rekey}, a stand-in daemon's control
channel), on a L{MemoryReactorClock}: every Unix connection the command
makes is completed in memory with L{twisted.test.iosim}, and the clock is
stepped by hand, so that nothing sleeps and nothing depends on real time.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import socket
import stat
import tempfile
from typing import Callable, Dict, List, Optional

from twisted.internet import error
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim

from ekey.cli import setkey
from ekey.core.keyring import Keyring, formatSerial
from ekey.core.rekey import formatMasterKey
from ekey.services.controlschema import AddKey, ControlFailed, ReloadKeyring, RemoveKey, UnknownKey
from ekey.services.simulator import SimulatedKey, SimulatedKeyProtocol

SERIAL = b"SIMULATOR-01"
SERIAL_TEXT = formatSerial(SERIAL)
LONG_TERM_KEY = bytes(range(32, 64))
MASTER_KEY = bytes(range(32))
OTHER_MASTER_KEY = bytes(range(1, 33))
#: The frames per second the simulated key sends once keyed.
RATE = 100.0
STEP = 0.01


def makeSocketFile(path: str) -> str:
    """
    Make a Unix socket file at C{path} (bound, never listening: the bench
    completes connections to it in memory).
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(path)
    finally:
        s.close()
    return path


class SilentKey(Protocol):
    """
    A key that never answers.
    """


class HangUpKey(Protocol):
    """
    A key that closes the connection at once (another host holds it).
    """

    def connectionMade(self):
        self.transport.loseConnection()


class FakeDaemon(amp.AMP):
    """
    The control channel of a daemon that serves one key at C{path}: it
    records the commands it gets, and can refuse them.

    @ivar calls: C{(command name, argument)} in order.
    """

    def __init__(self, path: str, keyringPath: str, refuseRemove: bool = False,
                 serves: bool = True, onCall: Optional[Callable[[str], None]] = None):
        super().__init__()
        self.path = path
        self.keyringPath = keyringPath
        self.refuseRemove = refuseRemove
        self.serves = serves
        self.calls: List[tuple] = []
        self._onCall = onCall or (lambda name: None)

    @RemoveKey.responder
    def removeKey(self, identifier):
        self.calls.append(("remove", identifier))
        self._onCall("remove")
        if self.refuseRemove:
            raise ControlFailed("the daemon failed to remove a key; see its log")
        if not self.serves or identifier not in (self.path, SERIAL_TEXT):
            raise UnknownKey(f"no key {identifier!r}")
        return {"result": {"number": 1, "path": self.path}}

    @ReloadKeyring.responder
    def reloadKeyring(self, path=None):
        self.calls.append(("keyring", path))
        self._onCall("keyring")
        return {"result": {"path": self.keyringPath, "keys": 1}}

    @AddKey.responder
    def addKey(self, path):
        self.calls.append(("add", path))
        self._onCall("add")
        return {"result": {"number": 2, "path": path}}


class KeyBench:
    """
    A simulated key at a socket path and, optionally, a daemon's control
    socket, for a command run on L{reactor}.

    @ivar key: the L{SimulatedKey}.
    @ivar keyConnections: how many times the command opened the key.
    @ivar events: C{"key"} (the key was opened) and the daemon's command
        names, in order.
    """

    def __init__(self, directory: str, masterKey: Optional[bytes] = MASTER_KEY,
                 keyProtocols: Optional[List[Callable[[], Protocol]]] = None):
        """
        @param keyProtocols: what answers each successive connection to the
            key (by default the simulated key, every time).
        """
        self.directory = directory
        self.reactor = MemoryReactorClock()
        self.key = SimulatedKey(SERIAL, LONG_TERM_KEY, masterKey=masterKey,
                                randomBytes=lambda n: b"\x42" * n)
        self.keyPath = makeSocketFile(os.path.join(directory, "key.sock"))
        self.controlPath = os.path.join(directory, "control.sock")
        self.keyringPath = os.path.join(directory, "keyring")
        self.daemon: Optional[FakeDaemon] = None
        self.keyConnections = 0
        self.events: List[str] = []
        self._keyProtocols = list(keyProtocols or [])
        self._pumps: List[iosim.IOPump] = []
        self._handled = 0
        self.out = io.StringIO()
        self.err = io.StringIO()

    def addDaemon(self, **kwargs) -> FakeDaemon:
        """
        Serve a stand-in daemon's control channel at L{controlPath}.
        """
        makeSocketFile(self.controlPath)
        self.daemon = FakeDaemon(self.keyPath, self.keyringPath, onCall=self.events.append,
                                 **kwargs)
        return self.daemon

    def writeMasterKeyFile(self, masterKey: bytes = MASTER_KEY, mode: int = 0o600) -> str:
        """
        @return: the path of a master key file holding C{masterKey} as
            printed on a card, with C{mode}.
        """
        path = os.path.join(self.directory, "master-key")
        with open(path, "w") as f:
            f.write(formatMasterKey(masterKey) + "\n")
        os.chmod(path, mode)
        return path

    def writeKeyring(self) -> Dict[str, str]:
        """
        Write the keyring with the key's present long-term key.

        @return: the keyring file's text.
        """
        keyring = Keyring(self.keyringPath)
        keyring.set(SERIAL, self.key.longTermKey)
        keyring.save()
        with open(self.keyringPath) as f:
            return f.read()

    def keyringText(self) -> Optional[str]:
        """
        @return: the keyring file's text, or C{None} if there is none.
        """
        try:
            with open(self.keyringPath) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _connectPending(self) -> None:
        clients = self.reactor.unixClients
        while self._handled < len(clients):
            address, factory = clients[self._handled][:2]
            self._handled += 1
            if address == self.controlPath and self.daemon is not None:
                server = self.daemon
            elif address == self.keyPath:
                self.keyConnections += 1
                self.events.append("key")
                if self._keyProtocols:
                    server = self._keyProtocols.pop(0)()
                else:
                    server = SimulatedKeyProtocol(self.key, RATE, self.reactor)
            else:
                factory.clientConnectionFailed(
                    None, Failure(error.ConnectError(osError=errno.ENOENT)))
                continue
            client = factory.buildProtocol(None)
            self._pumps.append(iosim.connect(
                server, iosim.FakeTransport(server, isServer=True),
                client, iosim.FakeTransport(client, isServer=False),
                greet=False, clock=self.reactor))

    def run(self, d, seconds: float = 60.0):
        """
        Step the clock and move bytes until C{d} fires (at most C{seconds}
        of simulated time).

        @return: C{d}'s result.
        @raise AssertionError: if it does not fire, or fails.
        """
        results = []
        d.addBoth(results.append)
        for _ in range(int(seconds / STEP)):
            for _ in range(20):
                self._connectPending()
                moved = [pump.pump() for pump in self._pumps]
                if not any(moved):
                    break
            if results:
                break
            self.reactor.advance(STEP)
        else:
            raise AssertionError(f"the command did not finish in {seconds:g} simulated "
                                 f"seconds; stderr: {self.err.getvalue()!r}")
        result = results[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result


def fileMode(path: str) -> int:
    """
    @return: a file's permission bits.
    """
    return stat.S_IMODE(os.stat(path).st_mode)


def shortTempDir(testCase) -> str:
    """
    @return: a new directory with a path short enough for Unix sockets,
        removed after the test.
    """
    directory = tempfile.mkdtemp(prefix="ekey-")
    testCase.addCleanup(shutil.rmtree, directory, True)
    return directory


class CommandMixin:
    """
    Run a command in-process on a L{KeyBench}.
    """

    main = staticmethod(setkey.main)

    def setUp(self):
        self.bench = KeyBench(shortTempDir(self))

    def runCommand(self, argv, typed=None, seconds=60.0, **kwargs):
        """
        @param typed: what the user types at the master key prompt (the
            prompt fails the test if it is asked for and this is C{None}).
        @return: the exit status.
        """
        self.prompted = []

        def prompt():
            self.prompted.append(True)
            if typed is None:
                self.fail("the master key was asked for")
            return typed

        d = self.main(argv, reactor=self.bench.reactor, out=self.bench.out,
                      err=self.bench.err, prompt=prompt, **kwargs)
        return self.bench.run(d, seconds)

    def assertOneLineFailure(self, status, *fragments):
        """
        Assert exit status 1 (or the given one) and exactly one line on
        standard error holding every fragment.
        """
        expected = 1
        if isinstance(status, tuple):
            status, expected = status
        err = self.bench.err.getvalue()
        self.assertEqual(status, expected, err)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertTrue(err.endswith("\n"), err)
        self.assertNotIn("Traceback", err)
        for fragment in fragments:
            self.assertIn(fragment, err)
        return err

    def assertUntouched(self, keyringBefore):
        """
        Assert that the key kept its long-term key and the keyring file is
        as it was.
        """
        self.assertEqual(self.bench.key.longTermKey, LONG_TERM_KEY)
        self.assertEqual(self.bench.keyringText(), keyringBefore)
