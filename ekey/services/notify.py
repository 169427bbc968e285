# -*- test-case-name: tests.test_notify -*-
"""
Tell systemd how the daemon stands (C{Type=notify}): C{READY=1} once its
listeners are bound and its keys have been tried, C{WATCHDOG=1} while the
reactor turns when the unit sets C{WatchdogSec=}, C{STOPPING=1} on the way
out.  The protocol is one datagram per message to the socket named by
C{$NOTIFY_SOCKET} (sd_notify(3)); nothing is sent where that is unset.
"""

from __future__ import annotations

import os
import socket
from typing import Callable, Iterable, Mapping, Optional

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ekey.services._reactor import default


def notifyAddress(environ: Mapping[str, str]) -> Optional[str]:
    """
    @return: the address in C{$NOTIFY_SOCKET} (an abstract one as a string
        starting with a NUL byte), or C{None} when systemd is not listening.
    @raise ValueError: for an address that is neither a path nor abstract.
    """
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return None
    if address.startswith("@"):
        return "\0" + address[1:]
    if not address.startswith("/"):
        raise ValueError(f"NOTIFY_SOCKET={address!r} is neither a path nor an abstract name")
    return address


def watchdogInterval(environ: Mapping[str, str], pid: int) -> Optional[float]:
    """
    @return: seconds between C{WATCHDOG=1} messages (half of
        C{$WATCHDOG_USEC}, as sd_watchdog_enabled(3) advises), or C{None}
        when the watchdog is off or meant for another process.
    """
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner and owner.isdigit() and int(owner) != pid:
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


def _datagramSender(address: str) -> Callable[[bytes], None]:
    def send(message: bytes) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(message, address)
    return send


class SystemdNotifier(Service):
    """
    Send systemd the daemon's readiness, watchdog pings and stopping.

    @ivar sent: every message sent, in order (for status and tests).
    """

    log = Logger()

    def __init__(self, ready: Iterable[defer.Deferred] = (), environ=None, send=None,
                 reactor=None, pid: Optional[int] = None):
        """
        @param ready: Deferreds that fire (or fail) once a part of the
            daemon has started, such as each key's first attempt to open;
            C{READY=1} goes out when the reactor runs and all have fired.
        @param environ: the environment (default C{os.environ}).
        @param send: sends one datagram (default: to C{$NOTIFY_SOCKET}).
        @param reactor: for C{callWhenRunning} and the watchdog's timer.
        @param pid: this process's id (default C{os.getpid()} at start, which
            is after twistd has forked).
        """
        self._reactor = default(reactor)
        self._environ = os.environ if environ is None else environ
        self._send = send
        # Only that each has ended matters (a key that cannot be opened
        # does not keep the daemon from being ready), never how.
        self._ready = [d.addErrback(lambda failure: None) for d in ready]
        self._pid = pid
        self._watchdog: Optional[LoopingCall] = None
        self.sent: list = []

    def startService(self):
        Service.startService(self)
        try:
            address = notifyAddress(self._environ)
        except ValueError as e:
            self.log.warn("Not notifying systemd: {reason}", reason=str(e))
            return
        if address is None and self._send is None:
            return
        if self._send is None:
            self._send = _datagramSender(address)
        pid = self._pid if self._pid is not None else os.getpid()
        interval = watchdogInterval(self._environ, pid)
        if interval is not None:
            self._watchdog = LoopingCall(self._notify, "WATCHDOG=1")
            self._watchdog.clock = self._reactor
            self._watchdog.start(interval, now=False)
        self._reactor.callWhenRunning(self._whenRunning)

    def _whenRunning(self):
        waiting = defer.DeferredList(self._ready)
        waiting.addCallback(lambda _: self._notify(f"READY=1\nMAINPID={os.getpid()}"))

    def stopService(self):
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        if self._send is not None and self.running:
            self._notify("STOPPING=1")
        return Service.stopService(self)

    def _notify(self, message: str) -> None:
        try:
            self._send(message.encode())
        except OSError as e:
            self.log.warn("Could not notify systemd ({message!r}): {reason}",
                          message=message.split("\n")[0], reason=e.strerror or str(e))
            return
        self.sent.append(message)
