"""
Tests for L{ekey.services.notify}: what systemd is told, and when.
"""

from __future__ import annotations

import os
import socket
import tempfile

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from ekey.services.notify import SystemdNotifier, notifyAddress, watchdogInterval


class Recorder:
    def __init__(self):
        self.messages = []

    def __call__(self, message: bytes):
        self.messages.append(message.decode())


def started(notifier: SystemdNotifier, reactor: MemoryReactorClock) -> None:
    notifier.startService()
    reactor.running = True
    for function, args, kwargs in reactor.whenRunningHooks:
        function(*args, **kwargs)


class AddressTests(TestCase):
    """
    Reading C{$NOTIFY_SOCKET} and C{$WATCHDOG_USEC}.
    """

    def test_address(self):
        """
        A path is used as it is, C{@name} is an abstract address, and
        nothing at all means systemd is not listening.
        """
        self.assertIsNone(notifyAddress({}))
        self.assertEqual(notifyAddress({"NOTIFY_SOCKET": "/run/systemd/notify"}),
                         "/run/systemd/notify")
        self.assertEqual(notifyAddress({"NOTIFY_SOCKET": "@x/y"}), "\0x/y")

    def test_badAddress(self):
        """
        A relative name is refused rather than sent to.
        """
        self.assertRaises(ValueError, notifyAddress, {"NOTIFY_SOCKET": "notify"})

    def test_watchdog(self):
        """
        The watchdog pings at half its time-out, only for the process it
        names, and not at all when unset or malformed.
        """
        self.assertEqual(watchdogInterval({"WATCHDOG_USEC": "20000000"}, 7), 10.0)
        self.assertEqual(watchdogInterval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "7"}, 7),
                         10.0)
        self.assertIsNone(watchdogInterval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "8"}, 7))
        self.assertIsNone(watchdogInterval({}, 7))
        self.assertIsNone(watchdogInterval({"WATCHDOG_USEC": "soon"}, 7))
        self.assertIsNone(watchdogInterval({"WATCHDOG_USEC": "0"}, 7))


class NotifierTests(TestCase):
    """
    L{SystemdNotifier} as a service.
    """

    def test_readyOnceEverythingStarted(self):
        """
        C{READY=1} goes out only when the reactor runs and every part it
        waits for has fired, failures included (a key that cannot be opened
        does not keep the unit from starting).
        """
        reactor = MemoryReactorClock()
        record = Recorder()
        key1, key2 = defer.Deferred(), defer.Deferred()
        notifier = SystemdNotifier([key1, key2], environ={"NOTIFY_SOCKET": "/x"}, send=record,
                                   reactor=reactor, pid=1)
        started(notifier, reactor)
        self.assertEqual(record.messages, [])
        key1.callback(None)
        self.assertEqual(record.messages, [])
        key2.errback(RuntimeError("no such device"))
        self.assertEqual(len(record.messages), 1)
        self.assertTrue(record.messages[0].startswith("READY=1\nMAINPID="))

    def test_watchdogAndStopping(self):
        """
        With C{WATCHDOG_USEC}, C{WATCHDOG=1} goes out every half period
        while running; C{STOPPING=1} on stop, and no ping after it.
        """
        reactor = MemoryReactorClock()
        record = Recorder()
        notifier = SystemdNotifier(environ={"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "4000000"},
                                   send=record, reactor=reactor, pid=1)
        started(notifier, reactor)
        reactor.advance(2.0)
        reactor.advance(2.0)
        self.assertEqual([m.split("\n")[0] for m in record.messages],
                         ["READY=1", "WATCHDOG=1", "WATCHDOG=1"])
        notifier.stopService()
        reactor.advance(10.0)
        self.assertEqual(record.messages[-1], "STOPPING=1")
        self.assertEqual(record.messages.count("WATCHDOG=1"), 2)

    def test_silentWithoutSystemd(self):
        """
        Without C{$NOTIFY_SOCKET}, nothing is sent and nothing is scheduled.
        """
        reactor = MemoryReactorClock()
        notifier = SystemdNotifier(environ={"WATCHDOG_USEC": "4000000"}, reactor=reactor)
        started(notifier, reactor)
        notifier.stopService()
        self.assertEqual((notifier.sent, reactor.getDelayedCalls()), ([], []))

    def test_sendFailureLogged(self):
        """
        A socket that refuses the message costs a warning, not the daemon.
        """
        reactor = MemoryReactorClock()

        def refuse(message):
            raise ConnectionRefusedError(111, "Connection refused")

        notifier = SystemdNotifier(environ={"NOTIFY_SOCKET": "/x"}, send=refuse,
                                   reactor=reactor, pid=1)
        started(notifier, reactor)
        self.assertEqual(notifier.sent, [])
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_realDatagramSocket(self):
        """
        By default the messages are datagrams to the socket systemd names.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, directory)
        path = os.path.join(directory, "notify")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(path)
        self.addCleanup(os.unlink, path)
        self.addCleanup(server.close)
        reactor = MemoryReactorClock()
        notifier = SystemdNotifier(environ={"NOTIFY_SOCKET": path}, reactor=reactor, pid=1)
        started(notifier, reactor)
        server.settimeout(5)
        self.assertTrue(server.recv(256).startswith(b"READY=1\n"))
