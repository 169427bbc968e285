# -*- test-case-name: tests.test_ekeydcontrol -*-
"""
ekeyd's control protocol on a socket, so that the real C{ekeydctl}, the
munin plugin C{ekeyd_stat_} and C{/lib/udev/entropykey.sh} work with
this daemon unchanged.  The protocol itself is
L{ekey.core.ekeydcontrol}; this module carries bytes, checks who is
connecting and logs what changes.

Only root, the daemon's own user and members of the control group may
issue commands (the kernel's C{SO_PEERCRED}, as on the AMP channel);
anyone else gets one C{ERROR} line and is disconnected, and the refusal
is logged with their uid.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Optional, Sequence, Tuple

from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from ekey.core.ekeydcontrol import (BANNER, MAX_LINE_LENGTH, CommandRefused,
                                    EkeydControlSession, EkeydControlTarget, Reply, formatError)
from ekey.core.keyring import KeyringError
from ekey.core.status import KeyStatus
from ekey.services.device import KeyPathError
from ekey.services.keys import KeyNotFound
from ekey.services._reactor import default
from ekey.services.control import ControlAccess, Controller, listenControl
from ekey.services.controlschema import ControlError


class EkeydControlProtocol(LineReceiver):
    """
    One connection on ekeyd's control socket: checks the peer, then feeds
    lines to an L{EkeydControlSession} and writes its replies.

    @ivar peer: who is connected (L{describePeer}), for the log.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE_LENGTH
    log = Logger()

    def __init__(self, session: EkeydControlSession, clock, access: ControlAccess):
        """
        @param access: who may control the daemon (the same rule as the AMP
            control channel's).
        """
        self.session = session
        self.clock = clock
        self.access = access
        self.peer = "?"

    def connectionMade(self):
        self.peer, credentials, refusal = self.access.check(self.transport)
        if refusal is not None:
            self.log.warn("ekeyd control: refused {peer} (uid {uid}): {reason}", peer=self.peer,
                          uid=credentials.uid if credentials is not None else "unknown",
                          reason=refusal)
            self.session.closed = True
            self.transport.write(formatError(refusal))
            self.transport.loseConnection()
            return
        self.log.debug("ekeyd control connection from {peer}", peer=self.peer)
        # Stop reading while replies are not being read, so that a client
        # that only writes cannot make the daemon buffer without bound.
        self.transport.registerProducer(self, True)
        self.transport.write(BANNER)

    def connectionLost(self, reason):
        self.log.debug("ekeyd control connection from {peer} closed", peer=self.peer)
        self.session.closed = True

    def lineReceived(self, line: bytes):
        self._carryOut(self.session.lineReceived(line, self.clock.seconds()))

    def lineLengthExceeded(self, line: bytes):
        self.log.warn("ekeyd control: {peer} sent a line longer than {limit} bytes; "
                      "disconnected", peer=self.peer, limit=self.MAX_LENGTH)
        self.clearLineBuffer()
        self._carryOut(self.session.lineTooLong())

    def _carryOut(self, reply: Reply) -> None:
        if reply.failure is not None:
            self.log.failure("ekeyd control {peer}: {verb} failed", peer=self.peer,
                             verb=reply.request.verb, failure=_failure(reply.failure))
        elif reply.changes:
            request = reply.request
            arguments = ", ".join(repr(a) for a in request.arguments)
            if reply.ok:
                self.log.info("ekeyd control {peer}: {verb}({arguments}): {result}",
                              peer=self.peer, verb=request.verb, arguments=arguments,
                              result=reply.data.decode("utf-8", "replace").strip() or "done")
            else:
                self.log.warn("ekeyd control {peer}: refused {verb}({arguments}): {result}",
                              peer=self.peer, verb=request.verb, arguments=arguments,
                              result=reply.data.decode("utf-8", "replace").strip())
        if reply.data:
            self.transport.write(reply.data)
        if reply.close:
            self.transport.loseConnection()


def _failure(exception: BaseException) -> Failure:
    return Failure(exception, type(exception), exception.__traceback__)


class EkeydControlFactory(Factory):
    """
    ekeyd's control socket: one L{EkeydControlProtocol} per connection,
    all acting on one L{EkeydControlTarget}.
    """

    noisy = False

    def __init__(self, target: EkeydControlTarget, clock=None,
                 access: Optional[ControlAccess] = None):
        """
        @param target: what the commands act on (see L{targetFromDaemon}).
        @param clock: an L{IReactorTime}, the clock of the keys'
            C{connectedAt} (default the global reactor).
        @param access: who may control the daemon (default root and the
            daemon's user only).
        """
        self.target = target
        self.clock = default(clock)
        self.access = access if access is not None else ControlAccess()

    def buildProtocol(self, addr):
        protocol = EkeydControlProtocol(EkeydControlSession(self.target), self.clock,
                                        self.access)
        protocol.factory = self
        return protocol


def ekeydControlService(description: str, target: EkeydControlTarget, reactor=None,
                        controlGroup: Optional[int] = None):
    """
    ekeyd's control socket as a service, under the same rules as the AMP
    channel (L{listenControl}: a Unix socket only, mode 0600, or 0660 with
    a control group, which it is then given).

    @param description: a server endpoint string, C{unix:PATH}.
    @raise ValueError: with one line, if the endpoint is refused.
    """
    reactor = default(reactor)
    factory = EkeydControlFactory(target, reactor, ControlAccess(controlGroup))
    return listenControl(description, factory, controlGroup, reactor, option="--ekeyd-control")


# Today's daemon as a target --------------------------------------------------------


class _DaemonTarget:
    """
    An L{EkeydControlTarget} over a L{ekey.services.daemon.Daemon} and its
    L{ekey.services.keys.KeyManager}, under the same rules as the AMP
    control channel (L{Controller}): keys added at run time are serial
    ports or entries of the device directories, and only the configured
    keyring is reloaded.  Refusals become L{CommandRefused}.
    """

    def __init__(self, daemon, deviceDirs: Sequence[str] = ()):
        self.daemon = daemon
        self.controller = Controller(daemon, deviceDirs)

    def keyStatuses(self) -> Sequence[Tuple[int, KeyStatus]]:
        return [(numbered.number, numbered.key) for numbered in self.daemon.keys.status()]

    def addKey(self, path: str) -> int:
        with _refusing():
            return self.daemon.keys.add(path, self.controller.checkPath)

    def addKeys(self, directory: str) -> Iterable[int]:
        with _refusing():
            return self.daemon.keys.addAll(directory, self.controller.checkPath)

    def removeKey(self, number: int) -> None:
        with _refusing():
            self.daemon.keys.remove(str(number))

    def reloadKeyring(self, path: str) -> int:
        with _refusing():
            return self.controller.reloadKeyring("ekeyd control", path)["keys"]

    def shutdown(self) -> None:
        self.controller.shutdownNow()


@contextmanager
def _refusing():
    """
    Turn the key manager's refusals into L{CommandRefused}, one line each.
    """
    try:
        yield
    except (KeyringError, KeyPathError, KeyNotFound, ControlError) as e:
        message = e.args[0] if e.args else type(e).__name__
        raise CommandRefused(" ".join(str(message).split())) from None


def targetFromDaemon(daemon, deviceDirs: Sequence[str] = ()) -> EkeydControlTarget:
    """
    The one place that knows the daemon's API: an L{EkeydControlTarget}
    over an L{ekey.services.daemon.Daemon}.

    @param deviceDirs: the daemon's device directories, whose entries may
        be added at run time.
    """
    return _DaemonTarget(daemon, deviceDirs)
