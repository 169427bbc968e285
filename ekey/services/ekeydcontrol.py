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

import os
import pwd
from contextlib import contextmanager
from typing import Iterable, List, Optional, Sequence, Tuple

from twisted.application import strports
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver

from ekey.core.ekeydcontrol import (BANNER, MAX_LINE_LENGTH, CommandRefused,
                                    EkeydControlSession, EkeydControlTarget, Reply, mayControl,
                                    refusalLine)
from ekey.core.keyring import KeyringError
from ekey.core.status import KeyStatus
from ekey.services.device import KeyPathError
from ekey.services.keys import KeyNotFound
from ekey.services.peers import describePeer, peerCredentials


def groupsOf(uid: int, gid: int) -> List[int]:
    """
    @return: the groups of the user C{uid} (primary group C{gid}) from the
        system's user database; just C{gid} if the user has no entry.
    """
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return [gid]
    return os.getgrouplist(name, gid)


class EkeydControlProtocol(LineReceiver):
    """
    One connection on ekeyd's control socket: checks the peer, then feeds
    lines to an L{EkeydControlSession} and writes its replies.

    @ivar peer: who is connected (L{describePeer}), for the log.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE_LENGTH
    log = Logger()

    def __init__(self, session: EkeydControlSession, clock, daemonUid: int,
                 controlGroup: Optional[int], groupsOf=groupsOf):
        self.session = session
        self.clock = clock
        self.daemonUid = daemonUid
        self.controlGroup = controlGroup
        self.groupsOf = groupsOf
        self.peer = "?"

    def connectionMade(self):
        self.peer = describePeer(self.transport)
        credentials = peerCredentials(self.transport)
        uid = credentials.uid if credentials is not None else None
        gid = credentials.gid if credentials is not None else None
        if not mayControl(uid, gid, self.daemonUid, self.controlGroup, self.groupsOf):
            self.log.warn("ekeyd control: refused {peer} (uid {uid}): not root, the daemon's "
                          "user or in its control group", peer=self.peer, uid=uid)
            self.session.closed = True
            self.transport.write(refusalLine(uid))
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


def _failure(exception: BaseException):
    from twisted.python.failure import Failure

    return Failure(exception, type(exception), exception.__traceback__)


class EkeydControlFactory(Factory):
    """
    ekeyd's control socket: one L{EkeydControlProtocol} per connection,
    all acting on one L{EkeydControlTarget}.
    """

    noisy = False

    def __init__(self, target: EkeydControlTarget, clock=None, controlGroup: Optional[int] = None,
                 daemonUid: Optional[int] = None, groupsOf=groupsOf):
        """
        @param target: what the commands act on (see L{targetFromDaemon}).
        @param clock: an L{IReactorTime}, the clock of the keys'
            C{connectedAt} (default the global reactor).
        @param controlGroup: the id of the group whose members may control
            the daemon, or C{None} for root and the daemon's user only.
        @param daemonUid: the daemon's user id (default the process's).
        @param groupsOf: gives a user's groups (for tests).
        """
        if clock is None:
            from twisted.internet import reactor as clock
        self.target = target
        self.clock = clock
        self.controlGroup = controlGroup
        self.daemonUid = os.getuid() if daemonUid is None else daemonUid
        self.groupsOf = groupsOf

    def buildProtocol(self, addr):
        protocol = EkeydControlProtocol(EkeydControlSession(self.target), self.clock,
                                        self.daemonUid, self.controlGroup, self.groupsOf)
        protocol.factory = self
        return protocol


def ekeydControlService(description: str, target: EkeydControlTarget, reactor=None,
                        controlGroup: Optional[int] = None):
    """
    @param description: a server endpoint string, C{unix:PATH} (with
        C{mode=} as the AMP control socket has it).
    @return: a service listening with an L{EkeydControlFactory}.
    """
    if reactor is None:
        from twisted.internet import reactor
    return strports.service(description, EkeydControlFactory(target, reactor, controlGroup),
                            reactor=reactor)


# Today's daemon as a target --------------------------------------------------------


class _DaemonTarget:
    """
    An L{EkeydControlTarget} over today's L{ekey.services.daemon.Daemon} and
    its L{ekey.services.keys.KeyManager}, translating their errors into
    L{CommandRefused}.
    """

    def __init__(self, daemon):
        self.daemon = daemon

    def keyStatuses(self) -> Sequence[Tuple[int, KeyStatus]]:
        keys = self.daemon.keys
        return [(number, keys._keys[number].status()) for number in keys.numbers()]

    def addKey(self, path: str) -> int:
        with _refusing():
            return self.daemon.keys.add(path)

    def addKeys(self, directory: str) -> Iterable[int]:
        with _refusing():
            return self.daemon.keys.addAll(directory)

    def removeKey(self, number: int) -> None:
        with _refusing():
            self.daemon.keys.remove(str(number))

    def reloadKeyring(self, path: str) -> int:
        keys = self.daemon.keys
        configured = keys.keyring.path if keys.keyring is not None else None
        if configured is None or os.path.realpath(path) != os.path.realpath(configured):
            raise CommandRefused(
                f"only the daemon's own keyring can be reloaded: Keyring({configured!r})"
                if configured else "the daemon has no keyring to reload: start it with --keyring")
        with _refusing():
            return keys.reloadKeyring(configured)

    def shutdown(self) -> None:
        self.daemon.shutdown()


@contextmanager
def _refusing():
    """
    Turn the key manager's refusals into L{CommandRefused}, one line each.
    """
    try:
        yield
    except (KeyringError, KeyPathError, KeyNotFound) as e:
        message = e.args[0] if e.args else type(e).__name__
        raise CommandRefused(" ".join(str(message).split())) from None


def targetFromDaemon(daemon) -> EkeydControlTarget:
    """
    The one place that knows the daemon's API: an L{EkeydControlTarget}
    over an L{ekey.services.daemon.Daemon}.
    """
    return _DaemonTarget(daemon)
