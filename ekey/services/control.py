# -*- test-case-name: tests.test_control -*-
"""
The control channel, daemon side: who may send commands, and what each
command does to a L{ekey.services.daemon.Daemon}.  The commands are in
L{ekey.services.controlschema}; C{ekeyctl} is L{ekey.cli.ekeyctl}.

Control is local and owner-only.  The endpoint must be a Unix socket
(L{checkControlEndpoint} refuses any other, and forces its mode to 0600,
or 0660 with a control group), and every connection is checked with
C{SO_PEERCRED}: only root, the daemon's own user and members of the
control group may issue commands; anyone else is answered
L{NotPermitted} to every command, and logged with their uid.

Keys added at run time must be serial ports or entries of the daemon's
device directories (L{ekey.services.keys.checkRunTimeKeyPath}), and the
keyring reloaded is always the configured one; no answer ever holds a
file's contents.
"""

from __future__ import annotations

import functools
import grp
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp

from ekey.core.endpointstrings import splitDescription
from ekey.core.keyring import KeyringError
from ekey.services.controlschema import (
    AddAll,
    AddKey,
    BadKeyPath,
    BadKeyring,
    Clients,
    ControlError,
    ControlFailed,
    KeyStats,
    ListKeys,
    NotPermitted,
    Pool,
    ReloadKeyring,
    RemoveKey,
    Shutdown,
    UnknownKey,
    Upstreams,
    messageOf,
)
from ekey.services.device import KeyPathError
from ekey.services.keys import KeyNotFound, checkRunTimeKeyPath
from ekey.services.peers import Credentials, describePeer, peerCredentials, peerGroups
from ekey.services.statusviews import (
    clientJSON,
    ekeydStatistics,
    keyJSON,
    poolJSON,
    upstreamJSON,
)

#: Seconds between answering L{Shutdown} and stopping the daemon even if
#: the client does not let go of the connection.
SHUTDOWN_GRACE = 2.0



# Who may control ------------------------------------------------------------------


class ControlAccess:
    """
    Who may issue control commands: root, the daemon's own user (as it is
    when asked) and members of the control group, if there is one.
    """

    def __init__(self, group: Optional[int] = None, getuid: Callable[[], int] = os.getuid,
                 credentials: Callable[[object], Optional[Credentials]] = peerCredentials,
                 groups: Callable[[object, Credentials], Sequence[int]] = peerGroups):
        """
        @param group: the control group's id, or C{None}.
        @param getuid: returns the daemon's user id.
        @param credentials: C{transport -> Credentials or None}
            (L{peerCredentials}).
        @param groups: C{(transport, credentials) -> gids} (L{peerGroups}).
        """
        self.group = group
        self._getuid = getuid
        self._credentials = credentials
        self._groups = groups

    def check(self, transport) -> Tuple[str, Optional[Credentials], Optional[str]]:
        """
        Check the peer of a new control connection.

        @return: who it is (L{describePeer}), its credentials (C{None} if
            it is not on a Unix socket) and why it may not control the
            daemon, in one line, or C{None} if it may.
        """
        credentials = self._credentials(transport)
        refusal = self.refusal(credentials, lambda: self._groups(transport, credentials))
        return describePeer(transport), credentials, refusal

    def refusal(self, credentials: Optional[Credentials],
                groups: Callable[[], Sequence[int]]) -> Optional[str]:
        """
        @param credentials: the peer's, or C{None} if it is not on a Unix
            socket.
        @param groups: returns the peer's groups (asked only if needed).
        @return: why the peer may not control the daemon, in one line, or
            C{None} if it may.
        """
        if credentials is None:
            return ("the daemon takes commands only on its Unix control socket, "
                    "from root, its own user or its control group")
        own = self._getuid()
        if credentials.uid in (0, own):
            return None
        if self.group is not None and self.group in groups():
            return None
        members = f", uid {own} (the daemon's user)" if own != 0 else ""
        if self.group is not None:
            members += f" and members of group {self.group}"
        return (f"permission denied: uid {credentials.uid} may not control this daemon; "
                f"only root{members} may")


# What the commands do ---------------------------------------------------------------


class Controller:
    """
    What the control commands do to a L{ekey.services.daemon.Daemon}, free of
    I/O: each method takes the peer (for the log) and the command's
    arguments, and returns a JSON value.  State-changing commands are
    logged with who asked.

    @ivar daemon: the L{ekey.services.daemon.Daemon}.
    @ivar deviceDirs: directories whose entries may be added as keys at run
        time whatever their kind.
    """

    log = Logger()

    def __init__(self, daemon, deviceDirs: Sequence[str] = ()):
        self.daemon = daemon
        self.deviceDirs = tuple(deviceDirs)
        self.shuttingDown = False

    def checkPath(self, path: str) -> None:
        """
        Refuse a key path that may not be added at run time.

        @raise KeyPathError: with one line, if it is refused.
        """
        checkRunTimeKeyPath(path, self.deviceDirs,
                            configured=self.daemon.keys.configuredPaths)

    def listKeys(self, peer: str) -> List[Dict[str, object]]:
        """
        @return: every key, as L{keyJSON} gives it.
        """
        return [keyJSON(numbered) for numbered in self.daemon.keys.status()]

    def keyStats(self, peer: str, identifier: str) -> Dict[str, object]:
        """
        @return: a key and its statistics with ekeydctl's names.
        @raise KeyNotFound: if no key matches C{identifier}.
        """
        numbered = self.daemon.keys.find(identifier)
        return {"key": keyJSON(numbered),
                "statistics": ekeydStatistics(numbered.key, self.daemon.clock.seconds())}

    def addKey(self, peer: str, path: str) -> Dict[str, object]:
        """
        Start serving a serial port, or an entry of a device directory.

        @return: the key added.
        @raise KeyPathError: if the path is refused.
        """
        keys = self.daemon.keys
        number = keys.add(path, self.checkPath)
        self.log.info("Control {peer}: added key {number}: {path}", peer=peer,
                      number=number, path=path)
        return keyJSON(keys.keyStatus(number))

    def addAll(self, peer: str, directory: str) -> List[Dict[str, object]]:
        """
        Start serving every key of a directory that may be added at run
        time and is not served yet.

        @return: the keys added.
        """
        keys = self.daemon.keys
        numbers = keys.addAll(directory, self.checkPath)
        self.log.info("Control {peer}: added {count} key(s) from {directory}: {numbers}",
                      peer=peer, count=len(numbers), directory=directory,
                      numbers=", ".join(map(str, numbers)) or "none")
        return [keyJSON(keys.keyStatus(number)) for number in numbers]

    def removeKey(self, peer: str, identifier: str) -> Dict[str, object]:
        """
        @return: the key removed, as it was.
        @raise KeyNotFound: if no key matches C{identifier}.
        """
        numbered = self.daemon.keys.remove(identifier)
        self.log.info("Control {peer}: removed key {number}: {path}", peer=peer,
                      number=numbered.number, path=numbered.key.path)
        return keyJSON(numbered)

    def reloadKeyring(self, peer: str, path: Optional[str] = None) -> Dict[str, object]:
        """
        Reload the configured keyring; a C{path} other than it is refused.
        No refusal holds anything read from a file.
        """
        keys = self.daemon.keys
        configured = keys.keyringPath
        if configured is None:
            raise BadKeyring("no keyring file is configured: give the daemon --keyring")
        if path and os.path.realpath(path) != os.path.realpath(configured):
            raise BadKeyring(
                f"only the daemon's own keyring can be reloaded: {configured}, not {path}; "
                "edit that file, or restart the daemon with --keyring")
        try:
            count = keys.reloadKeyring()
        except KeyringError as e:
            self.log.error("Control {peer}: the keyring {path} could not be loaded: {reason}",
                           peer=peer, path=configured, reason=messageOf(e))
            raise BadKeyring(f"cannot load the keyring {configured}; the old keyring stays in "
                             "force (the daemon's log says why)") from None
        self.log.info("Control {peer}: reloaded the keyring {path}: {count} key(s)",
                      peer=peer, path=configured, count=count)
        return {"path": configured, "keys": count}

    def shutdown(self, peer: str) -> Dict[str, object]:
        """
        Say yes to a shutdown; the connection then calls L{shutdownNow}.
        """
        self.log.info("Control {peer}: shutdown requested", peer=peer)
        return {"shuttingDown": True}

    def shutdownNow(self) -> None:
        """
        Stop the daemon, once only however many clients ask.
        """
        if not self.shuttingDown:
            self.shuttingDown = True
            self.daemon.shutdown()

    def upstreams(self, peer: str) -> List[Dict[str, object]]:
        """
        @return: every upstream, as L{upstreamJSON} gives it.
        """
        return [upstreamJSON(upstream) for upstream in self.daemon.status().upstreams]

    def clients(self, peer: str) -> List[Dict[str, object]]:
        """
        @return: every connected EGD client, as L{clientJSON} gives it.
        """
        status = self.daemon.status()
        return [clientJSON(client, status.time) for client in status.clients]

    def pool(self, peer: str) -> Dict[str, object]:
        """
        @return: the pool, as L{poolJSON} gives it.
        """
        return poolJSON(self.daemon.poolStatus())


#: Each command, the L{Controller} method that answers it, and what it does
#: (for the log); the last column says whether it changes the daemon.
RESPONDERS: Dict[bytes, Tuple[type, Callable, str, bool]] = {
    command.commandName: (command, method, what, changes)
    for command, method, what, changes in [
        (ListKeys, Controller.listKeys, "list the keys", False),
        (KeyStats, Controller.keyStats, "give a key's statistics", False),
        (AddKey, Controller.addKey, "add a key", True),
        (AddAll, Controller.addAll, "add the keys in a directory", True),
        (RemoveKey, Controller.removeKey, "remove a key", True),
        (ReloadKeyring, Controller.reloadKeyring, "reload the keyring", True),
        (Shutdown, Controller.shutdown, "shut down", True),
        (Upstreams, Controller.upstreams, "list the upstreams", False),
        (Clients, Controller.clients, "list the EGD clients", False),
        (Pool, Controller.pool, "describe the pool", False),
    ]
}

#: The daemon's own errors, and the remote error each becomes.
_REMOTE_ERRORS = ((KeyNotFound, UnknownKey), (KeyPathError, BadKeyPath),
                  (KeyringError, BadKeyring))


class ControlProtocol(amp.AMP):
    """
    One control connection, server side: checks who is connected, and
    answers each command of L{RESPONDERS} through the factory's
    L{Controller}, as one JSON C{result} or one remote error.

    @ivar peer: who is connected (L{describePeer}).
    @ivar refusal: why the peer may not issue commands, or C{None}.
    """

    def __init__(self, controller: Controller, clock, access: ControlAccess):
        amp.AMP.__init__(self)
        # Commands are logged where the controller logs what they do.
        self.log = controller.log
        self.controller = controller
        self.clock = clock
        self.access = access
        self.peer = "?"
        self.refusal: Optional[str] = "not connected"
        self._shutdownAsked = False
        self._shutdownCall = None

    def makeConnection(self, transport):
        # AMP.makeConnection logs every connection at info level; a
        # monitor polling ekeyctl would fill the log.  Log at debug instead.
        self.peer, credentials, self.refusal = self.access.check(transport)
        if self.refusal is None:
            self.log.debug("Control connection from {peer}", peer=self.peer)
        else:
            self.log.warn("Control connection from {peer} refused: {reason}", peer=self.peer,
                          reason=self.refusal,
                          uid=credentials.uid if credentials is not None else None)
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason):
        self.log.debug("Control connection from {peer} closed", peer=self.peer)
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None
        if self._shutdownAsked:
            self._shutdown()

    def locateResponder(self, name):
        """
        @param name: a command's name on the wire.
        @return: its responder from L{RESPONDERS}, wrapped in AMP's
            argument parsing and answer serialisation, or C{None} for a
            command this channel does not have.
        """
        entry = RESPONDERS.get(name)
        if entry is None:
            return None
        return self._wrapWithSerialization(functools.partial(self._respond, *entry), entry[0])

    def _respond(self, command, method, what: str, changes: bool, **arguments):
        """
        Answer one command: refuse it if the peer may not control the
        daemon; else run it, turning the daemon's errors into their remote
        kinds and anything unexpected into L{ControlFailed} (logged in
        full); log refused changes.
        """
        if self.refusal is not None:
            self.clock.callLater(0, self._close)
            raise NotPermitted(self.refusal)
        try:
            try:
                result = method(self.controller, self.peer, **arguments)
            except ControlError:
                raise
            except Exception as e:
                for local, remote in _REMOTE_ERRORS:
                    if isinstance(e, local):
                        raise remote(messageOf(e)) from None
                self.log.failure("Control {peer}: {what} failed", peer=self.peer, what=what)
                raise ControlFailed(f"the daemon failed to {what}; see its log") from None
        except ControlError as e:
            if changes:
                self.log.warn("Control {peer}: refused to {what}: {reason}", peer=self.peer,
                              what=what, reason=str(e))
            raise
        if command is Shutdown:
            self._shutdownAfterAnswer()
        return {"result": result}

    def _close(self):
        if self.transport is not None:
            self.transport.loseConnection()

    def _shutdownAfterAnswer(self):
        """
        Close this connection once the answer is written (which flushes
        it), and stop the daemon when it is closed, or after
        L{SHUTDOWN_GRACE} seconds at the latest.
        """
        if not self._shutdownAsked:
            self._shutdownAsked = True
            self.clock.callLater(0, self._close)
            self._shutdownCall = self.clock.callLater(SHUTDOWN_GRACE, self._shutdown)

    def _shutdown(self):
        if self._shutdownCall is not None and self._shutdownCall.active():
            self._shutdownCall.cancel()
        self._shutdownCall = None
        self.controller.shutdownNow()


class ControlFactory(Factory):
    """
    The daemon's control channel: builds a L{ControlProtocol} per
    connection, all sharing one L{Controller} and one L{ControlAccess}.
    """

    noisy = False

    def __init__(self, daemon, clock=None, controlGroup: Optional[int] = None,
                 deviceDirs: Sequence[str] = (), credentials=peerCredentials,
                 groups=peerGroups):
        """
        @param daemon: the L{ekey.services.daemon.Daemon} to control.
        @param clock: an L{IReactorTime} (default the daemon's clock).
        @param controlGroup: the id of the group whose members may control
            the daemon besides root and its own user, or C{None}.
        @param deviceDirs: the daemon's device directories, whose entries
            may be added as keys at run time.
        @param credentials: C{transport -> Credentials or None}
            (L{peerCredentials}).
        @param groups: C{(transport, credentials) -> gids} (L{peerGroups}).
        """
        self.daemon = daemon
        self.clock = clock if clock is not None else daemon.clock
        self.controller = Controller(daemon, deviceDirs)
        self.access = ControlAccess(controlGroup, credentials=credentials, groups=groups)

    def buildProtocol(self, addr):
        protocol = ControlProtocol(self.controller, self.clock, self.access)
        protocol.factory = self
        return protocol


# The control endpoint ---------------------------------------------------------------


def controlSocketPath(description: str, option: str = "--control") -> str:
    """
    @return: the socket path of a C{unix:} endpoint description.
    @raise ValueError: if it has none.
    """
    _, args, kwargs = splitDescription(description)
    path = args[0] if args else kwargs.get("address")
    if not path:
        raise ValueError(f"{option} {description}: no socket path (unix:PATH)")
    return path


def checkControlEndpoint(description: str, group: Optional[int] = None,
                         option: str = "--control") -> str:
    """
    Check a control channel's endpoint at start-up, and force its mode.

    @param group: the control group's id, or C{None}.
    @param option: the option that gave it, for messages.
    @return: the description with C{mode=600} (C{mode=660} with a group)
        when it gave none.
    @raise ValueError: with one line naming the fix, if it is not a Unix
        socket or its mode would let others in.
    """
    kind, _, kwargs = splitDescription(description)
    if kind.lower() != "unix":
        raise ValueError(
            f"{option} {description}: the control channel must be a local Unix socket "
            "(unix:PATH), since anyone who can connect to it controls the daemon")
    controlSocketPath(description, option)
    allowed = 0o660 if group is not None else 0o600
    value = kwargs.get("mode")
    if value is None:
        return f"{description}:mode={allowed:o}"
    try:
        mode = int(value, 8)
    except ValueError:
        raise ValueError(f"{option} {description}: mode={value} is not an octal "
                         "mode such as 600") from None
    if mode & ~allowed:
        hint = ("" if group is not None else
                ", or give --control-group GROUP to let a group in (0660)")
        raise ValueError(
            f"{option} {description}: mode={value} would let other users reach the "
            f"control socket; leave mode= out (0{allowed:o}){hint}")
    return description


def resolveGroup(name: str) -> int:
    """
    @param name: a group's name or number.
    @return: its id.
    @raise ValueError: with one line, if there is no such group.
    """
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise ValueError(f"--control-group {name}: no such group (see getent group)") from None


def applyControlGroup(description: str, group: int) -> None:
    """
    Give the bound control socket to the control group (call it once the
    socket is bound; its mode is 0660 by L{checkControlEndpoint}).

    @raise OSError: if the socket cannot be changed.
    """
    os.chown(controlSocketPath(description), -1, group)


class _ControlGroupService(Service):
    """
    Apply the control group to the socket once its listener (the service
    before this one) has bound it, while the daemon is still privileged.
    """

    log = Logger()

    def __init__(self, description: str, group: int):
        self.description = description
        self.group = group
        self._applied = False

    def privilegedStartService(self):
        Service.privilegedStartService(self)
        self._apply()

    def startService(self):
        Service.startService(self)
        if not self._applied:
            self._apply()

    def _apply(self):
        self._applied = True
        try:
            applyControlGroup(self.description, self.group)
        except OSError as e:
            self.log.error("Cannot give the control socket {path} to group {group}: {reason}",
                           path=controlSocketPath(self.description), group=self.group,
                           reason=e.strerror)


def controlService(description: str, daemon, controlGroup: Optional[int] = None,
                   deviceDirs: Sequence[str] = (), reactor=None) -> MultiService:
    """
    The AMP control channel as a service (see L{listenControl}).

    @param daemon: the L{ekey.services.daemon.Daemon}.
    @raise ValueError: with one line, if the endpoint is refused.
    """
    factory = ControlFactory(daemon, controlGroup=controlGroup, deviceDirs=deviceDirs)
    return listenControl(description, factory, controlGroup, reactor)


def listenControl(description: str, factory, controlGroup: Optional[int] = None,
                  reactor=None, option: str = "--control") -> MultiService:
    """
    A control channel (the AMP one, or ekeyd's text protocol) as a service:
    checked with L{checkControlEndpoint}, listening with C{strports} (so
    that a failed bind stops the daemon), then given to the control group.

    @param factory: the channel's protocol factory, which checks each peer.
    @raise ValueError: with one line, if the endpoint is refused.
    """
    description = checkControlEndpoint(description, controlGroup, option)
    top = MultiService()
    strports.service(description, factory, reactor=reactor).setServiceParent(top)
    if controlGroup is not None:
        _ControlGroupService(description, controlGroup).setServiceParent(top)
    top.factory = factory
    top.description = description
    return top
