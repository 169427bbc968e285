# -*- test-case-name: tests.test_keys -*-
"""
The daemon's keys, by number: what ekeydctl's C{list}, C{stats}, C{add},
C{addall}, C{remove} and C{keyring} act on.

Keys given on the daemon's command line (C{--device}) or found in its
device directories (C{--device-dir}) may be serial devices or Unix
sockets; a key added at run time (C{ekeyctl add}) must be a serial port,
unless it is in one of the device directories (L{checkRunTimeKeyPath}).
"""

from __future__ import annotations

import errno
import os
import termios
from collections import OrderedDict
from typing import Callable, List, Optional, Sequence, Tuple

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger

from ekey.services._reactor import default
from ekey.services.device import KeyPathError, KeyService, checkKeyPath
from ekey.core.keyring import Keyring, KeyringError
from ekey.core.status import NumberedKey


class KeyNotFound(LookupError):
    """
    No key has that number, serial or path.
    """




def _inDirectories(path: str, directories: Sequence[str]) -> bool:
    """
    @return: whether C{path} names an entry of one of C{directories}
        (its own name, not what a link in it points to).
    """
    parent = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    return any(parent == os.path.realpath(directory) for directory in directories)


def checkRunTimeKeyPath(path: str, deviceDirs: Sequence[str] = (),
                        getuid: Callable[[], int] = os.getuid,
                        configured: Sequence[str] = ()) -> None:
    """
    Check a key path given at run time (C{ekeyctl add}, C{addall}): an
    entry of a configured device directory, or a serial port (a character
    device that is a terminal) owned by root or the daemon's user.  A Unix
    socket is refused: a socket key comes only from the command line, so
    that nobody can make the daemon read a key they simulate.

    @param deviceDirs: the daemon's device directories (C{--device-dir}).
    @param configured: the keys the daemon was started with (C{--device}):
        one of them given back (as C{ekey-rekey} does after re-keying it)
        is the owner's own choice, whatever its kind.
    @raise KeyPathError: with one line for the user, if the path is refused.
    """
    kind = checkKeyPath(path)
    if _inDirectories(path, deviceDirs) or os.path.realpath(path) in {
            os.path.realpath(p) for p in configured}:
        return
    if kind == "socket":
        raise KeyPathError(
            f"{path} is a Unix socket: socket keys are given on the daemon's command line "
            "(--device), not added at run time")
    owner = os.stat(path).st_uid
    if owner not in (0, getuid()):
        raise KeyPathError(
            f"{path} belongs to uid {owner}: a key added at run time must be a serial port "
            "owned by root or the daemon's user")
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        raise KeyPathError(f"cannot open {path}: {e.strerror}") from None
    try:
        termios.tcgetattr(fd)
    except termios.error as e:
        if e.args and e.args[0] not in (errno.ENOTTY, errno.EINVAL):
            raise KeyPathError(f"cannot use {path}: {os.strerror(e.args[0])}") from None
        raise KeyPathError(f"{path} is a character device but not a serial port") from None
    finally:
        os.close(fd)


class KeyManager(MultiService):
    """
    Every key of the daemon, numbered from 1 in the order they were added.

    @ivar keyring: the keyring in force (replaced by L{reloadKeyring}).
    @ivar keyringPath: the configured keyring file, the only one
        L{reloadKeyring} reads.
    """

    log = Logger()

    def __init__(self, keyring: Optional[Keyring], pool, reactor=None,
                 keyringPath: Optional[str] = None):
        """
        @param keyring: the keyring loaded at start, or C{None}.
        @param keyringPath: the configured keyring file (default the path
            C{keyring} was read from).
        """
        MultiService.__init__(self)
        self.keyring = keyring
        self.keyringPath = keyringPath or (keyring.path if keyring is not None else None)
        self.pool = pool
        self._reactor = default(reactor)
        self._keys: "OrderedDict[int, KeyService]" = OrderedDict()
        self._nextNumber = 1
        #: Paths of the daemon's own Unix sockets (EGD, control), which are
        #: never keys even though they are sockets.
        self.ownSockets: List[str] = []
        #: The keys the daemon was started with (C{--device}), which may be
        #: added back at run time whatever their kind.
        self.configuredPaths: List[str] = []

    # Changes ---------------------------------------------------------------------

    def add(self, path: str, check: Optional[Callable[[str], None]] = None) -> int:
        """
        Start serving the key at C{path}.

        @param check: called with the path first; raises L{KeyPathError} to
            refuse it (such as L{checkRunTimeKeyPath}).
        @return: its number.
        @raise KeyPathError: if the path is not a key or is served already.
        @raise KeyringError: if there is no keyring to check keys against.
        """
        if self.keyring is None:
            raise KeyringError("no keyring is loaded: give --keyring")
        checkKeyPath(path)
        real = os.path.realpath(path)
        if any(os.path.realpath(own) == real for own in self.ownSockets):
            raise KeyPathError(f"{path} is one of this daemon's own sockets, not a key")
        for service in self._keys.values():
            if os.path.realpath(service.path) == real:
                raise KeyPathError(f"key {path} is served already")
        if check is not None:
            check(path)
        number = self._nextNumber
        self._nextNumber += 1
        service = KeyService(path, lambda: self.keyring, None, reactor=self._reactor,
                             pool=self.pool)
        self._keys[number] = service
        service.setServiceParent(self)
        self.log.info("Key {number} added: {path}", number=number, path=path)
        return number

    def addAll(self, directory: str,
               check: Optional[Callable[[str], None]] = None) -> List[int]:
        """
        Add every key in a directory that is not served yet (and that
        C{check} lets in).

        @return: the numbers of the keys added.
        @raise KeyPathError: if the directory cannot be read.
        """
        try:
            names = sorted(os.listdir(directory))
        except OSError as e:
            raise KeyPathError(f"cannot read {directory}: {e.strerror}") from None
        added = []
        for name in names:
            try:
                added.append(self.add(os.path.join(directory, name), check))
            except KeyPathError:
                continue
        return added

    def remove(self, identifier: str) -> NumberedKey:
        """
        Stop serving a key and forget it.

        @param identifier: its number, serial or path.
        @return: the key as it was.
        @raise KeyNotFound: if no key matches.
        """
        numbered = self.find(identifier)
        service = self._keys.pop(numbered.number)
        service.disownServiceParent()
        self.log.info("Key {number} removed: {path}", number=numbered.number,
                      path=service.path)
        return numbered

    def removePath(self, path: str) -> None:
        """
        Forget the key at C{path}, if it is served (for a key that went away
        from a watched directory).
        """
        try:
            self.remove(path)
        except KeyNotFound:
            pass

    def reloadKeyring(self) -> int:
        """
        Read the configured keyring again and restart every key that was
        stopped for want of a long-term key with the keyring now in force
        (on its connection: nothing is reopened, so this works after
        privileges were dropped).

        @return: how many keys the keyring holds.
        @raise KeyringError: if it cannot be read; the old keyring stays.
        """
        if self.keyringPath is None:
            raise KeyringError("no keyring file is configured: give --keyring")
        self.keyring = Keyring.load(self.keyringPath)
        for service in self._keys.values():
            # A key stopped for want of its long-term key starts again from
            # its serial number, on the connection it has.
            service.keyringChanged()
        self.log.info("Keyring {path} loaded: {count} key(s)", path=self.keyringPath,
                      count=len(self.keyring))
        return len(self.keyring)

    # Questions ---------------------------------------------------------------------

    def find(self, identifier: str) -> NumberedKey:
        """
        @param identifier: a key's number, serial (16 base64 characters) or
            path.
        @return: that key.
        @raise KeyNotFound: if no key matches.
        """
        text = str(identifier).strip()
        keys = self.status()
        for numbered in keys:
            if text.isdigit() and int(text) == numbered.number:
                return numbered
        for numbered in keys:
            key = numbered.key
            if (key.path == text or os.path.realpath(key.path) == os.path.realpath(text)
                    or (key.serial is not None and key.serial == text)):
                return numbered
        raise KeyNotFound(f"no key {text!r}: give a number from 'list', a serial or a path")

    def numbers(self) -> List[int]:
        """
        @return: the keys' numbers, in order.
        """
        return list(self._keys)

    def firstAttempts(self) -> List[defer.Deferred]:
        """
        @return: for each key, a L{defer.Deferred} that fires (or fails) when
            its first attempt to open it has ended either way.
        """
        return [service.whenConnected(failAfterFailures=1) for service in self._keys.values()]

    def status(self) -> Tuple[NumberedKey, ...]:
        """
        @return: every key, by number, as it is now.
        """
        return tuple(NumberedKey(number, service.status())
                     for number, service in self._keys.items())

    def keyStatus(self, number: int) -> NumberedKey:
        """
        @return: key C{number} as it is now.
        @raise KeyNotFound: if there is no such key.
        """
        service = self._keys.get(number)
        if service is None:
            raise KeyNotFound(f"no key {number}")
        return NumberedKey(number, service.status())
