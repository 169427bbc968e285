"""
Tests for L{ekey.services.startup}: every start-up failure is one line
naming the option and the fix, for endpoint descriptions (checked before
anything runs) and for listeners that cannot bind (caught around the
daemon's start by L{StartupGuard}).
"""

import errno
import io
import os
import socket
import sys

from twisted.application.service import MultiService, Service
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial import unittest

from ekey.services import startup
from ekey.services.config import DEFAULT_CONTROL, DaemonConfig
from ekey.services.startup import (EndpointError, StartupGuard, checkEndpoint,
                                   describeListenError, explainListenError, listenersOf)


def _inUse(interface, port):
    return CannotListenError(interface, port,
                             socket.error(errno.EADDRINUSE, "Address already in use"))


class CheckEndpointTests(unittest.TestCase):
    """
    L{checkEndpoint} accepts what Twisted parses and refuses the rest in
    one line naming the option, the description and how it is written.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def refused(self, option, description, server=True):
        error = self.assertRaises(EndpointError, checkEndpoint, option, description,
                                  self.reactor, server=server)
        line = str(error)
        self.assertNotIn("\n", line)
        self.assertTrue(line.startswith(f"bad {option} {description!r}: "), line)
        return line[len(f"bad {option} {description!r}: "):]

    def test_accepted(self):
        """
        Good descriptions give their endpoint.
        """
        self.assertIsNotNone(checkEndpoint("--port", "tcp:8888:interface=127.0.0.1",
                                           self.reactor))
        self.assertIsNotNone(checkEndpoint("--port", "unix:/run/ekey/egd", self.reactor))
        self.assertIsNotNone(checkEndpoint("--upstream", "tcp:localhost:8888", self.reactor,
                                           server=False))
        self.assertIsNotNone(checkEndpoint("--upstream",
                                           f"tls:localhost:8888:trustRoots={self.directory}",
                                           self.reactor, server=False))

    def test_notAPort(self):
        """
        C{tcp:notaport} says the port is not a port number, not
        C{invalid literal for int()}.
        """
        self.assertEqual(self.refused("--port", "tcp:notaport"),
                         "'notaport' is not a port number (0 to 65535); write "
                         "tcp:PORT[:interface=ADDRESS]")
        self.assertIn("'99999' is not a port number",
                      self.refused("--upstream", "tcp:host:99999", server=False))

    def test_bareNumber(self):
        """
        C{--port 8888} suggests C{tcp:8888}.
        """
        self.assertEqual(self.refused("--port", "8888"),
                         "an endpoint needs its type, such as tcp:8888")

    def test_unknownType(self):
        """
        An unknown type lists the forms there are.
        """
        reason = self.refused("--port", "foo:1")
        self.assertTrue(reason.startswith("unknown endpoint type 'foo'; use one of tcp:PORT"),
                        reason)
        self.assertIn("unix:PATH", reason)

    def test_missingField(self):
        """
        C{tls:localhost} names the missing port, not a Python function's
        missing positional argument.
        """
        self.assertEqual(self.refused("--upstream", "tls:localhost", server=False),
                         "missing port; write tls:HOST:PORT:trustRoots=DIR"
                         "[:certificate=FILE:privateKey=FILE]")
        self.assertEqual(self.refused("--port", "unix"),
                         "missing address; write unix:PATH[:mode=600]")

    def test_unknownParameter(self):
        """
        A parameter the type does not take is named.
        """
        self.assertEqual(self.refused("--port", "tcp:1:colour=red"),
                         "tcp: takes no colour=; write tcp:PORT[:interface=ADDRESS]")
        self.assertEqual(self.refused("--upstream", "tls:h:1:colour=red", server=False),
                         "tls: takes no colour=; write tls:HOST:PORT:trustRoots=DIR"
                         "[:certificate=FILE:privateKey=FILE]")

    def test_missingTrustRoots(self):
        """
        A C{trustRoots=} directory that does not exist is named (Twisted's
        own error is empty), and so is a file given for it.
        """
        self.assertEqual(self.refused("--upstream", "tls:h:1:trustRoots=/nonexistent",
                                      server=False),
                         "trustRoots=/nonexistent: No such file or directory; give a "
                         "directory of CA certificates (PEM)")
        path = os.path.join(self.directory, "ca.pem")
        open(path, "w").close()
        self.assertEqual(self.refused("--upstream", f"tls:h:1:trustRoots={path}",
                                      server=False),
                         f"trustRoots={path}: not a directory; give a directory of CA "
                         "certificates (PEM)")

    def test_missingCertificate(self):
        """
        A certificate or key file that does not exist is named with its
        parameter, for client and server endpoints.
        """
        self.assertEqual(self.refused("--upstream", "tls:h:1:certificate=/nonexistent.crt",
                                      server=False),
                         "certificate=/nonexistent.crt: No such file or directory; give a "
                         "PEM certificate file")
        self.assertEqual(
            self.refused("--port", "mtls:8888:certKey=/nonexistent.crt:privateKey=/k:caCerts=/c"),
            "certKey=/nonexistent.crt: No such file or directory; give a PEM certificate file")
        self.assertEqual(self.refused("--port", f"ssl:443:privateKey={self.directory}"),
                         f"privateKey={self.directory}: is a directory; give a PEM private "
                         "key file")

    def test_otherReasons(self):
        """
        A parser's own message is kept, without repeating the type.
        """
        self.assertEqual(self.refused("--metrics", "mtls:1"),
                         "needs certKey, privateKey, caCerts; write "
                         "mtls:PORT:certKey=FILE:privateKey=FILE:caCerts=FILE")


class ListenErrorTests(unittest.TestCase):
    """
    L{describeListenError} says why a listener could not start and what to
    do; L{explainListenError} finds the listener from the error.
    """

    def test_portInUse(self):
        """
        A TCP port in use: another daemon listens there.
        """
        self.assertEqual(describeListenError("--port", "tcp:8888", _inUse("", 8888)),
                         "--port tcp:8888: address in use: another daemon (or ekeyd) listens "
                         "there; stop it or choose another port")

    def test_controlLocked(self):
        """
        The control socket's lock is another daemon in the same directory:
        give another run directory or control socket.
        """
        error = CannotListenError(None, "control.sock", "Cannot acquire lock")
        self.assertEqual(describeListenError("--control", DEFAULT_CONTROL, error),
                         f"--control {DEFAULT_CONTROL}: another twistd ekey runs in this "
                         "directory (it holds control.sock.lock): give --rundir DIR or "
                         "--control unix:OTHER")

    def test_socketDirectoryMissing(self):
        """
        A Unix socket in a directory that does not exist (the lock file
        cannot be made).
        """
        error = FileNotFoundError(errno.ENOENT, "No such file or directory", "123",
                                  None, b"/nonexistent/egd.lock")
        self.assertEqual(explainListenError([("--port", "unix:/nonexistent/egd")], error),
                         "--port unix:/nonexistent/egd: the directory of /nonexistent/egd "
                         "does not exist: create it or choose another path")

    def test_foreignAddress(self):
        """
        An interface address this host does not have.
        """
        error = CannotListenError("192.0.2.1", 8888, socket.error(
            errno.EADDRNOTAVAIL, "Cannot assign requested address"))
        self.assertIn("no such address on this host",
                      describeListenError("--port", "tcp:8888:interface=192.0.2.1", error))

    def test_findsListener(self):
        """
        The failing listener is found by its port or path among several.
        """
        config = DaemonConfig(upstreams=("unix:/u",), ports=("tcp:1234", "tcp:8888"),
                              metrics="tcp:9110:interface=127.0.0.1")
        listeners = listenersOf(config)
        self.assertEqual(listeners, [("--port", "tcp:1234"), ("--port", "tcp:8888"),
                                     ("--control", DEFAULT_CONTROL),
                                     ("--metrics", "tcp:9110:interface=127.0.0.1")])
        self.assertTrue(explainListenError(listeners, _inUse("127.0.0.1", 9110))
                        .startswith("--metrics tcp:9110"))
        self.assertTrue(explainListenError(listeners, _inUse("", 8888))
                        .startswith("--port tcp:8888:"))
        locked = CannotListenError(None, "control.sock", "Cannot acquire lock")
        self.assertIn("--rundir", explainListenError(listeners, locked))

    def test_notAListener(self):
        """
        An L{OSError} that is no listener's is not explained (it is raised
        as it is).
        """
        self.assertIsNone(explainListenError([("--port", "tcp:8888")],
                                             OSError(errno.EIO, "I/O error")))


class _Failing(Service):
    """
    A service whose start fails with C{error}.
    """

    def __init__(self, error, when="privilegedStartService"):
        self.error = error
        self.when = when

    def privilegedStartService(self):
        if self.when == "privilegedStartService":
            raise self.error

    def startService(self):
        Service.startService(self)
        if self.when == "startService":
            raise self.error


class StartupGuardTests(unittest.TestCase):
    """
    L{StartupGuard} turns a listener that cannot bind into one reported
    line and L{SystemExit} with status 1, whichever start method fails.
    """

    def guard(self, error, when="privilegedStartService", listeners=(("--port", "tcp:8888"),)):
        top = MultiService()
        top.pool = "the pool"
        _Failing(error, when).setServiceParent(top)
        self.reported = []
        return StartupGuard(top, listeners, report=lambda *a: self.reported.append(a))

    def test_privilegedStart(self):
        """
        A port in use while binding (privilegedStartService).
        """
        guard = self.guard(_inUse("", 8888))
        error = self.assertRaises(SystemExit, guard.privilegedStartService)
        self.assertEqual(error.code, 1)
        [(prog, line, options)] = self.reported
        self.assertEqual(prog, "twistd ekey")
        self.assertTrue(line.startswith("--port tcp:8888: address in use"), line)

    def test_start(self):
        """
        A port in use in startService.
        """
        guard = self.guard(_inUse("", 8888), when="startService")
        guard.privilegedStartService()
        self.assertEqual(self.assertRaises(SystemExit, guard.startService).code, 1)
        self.assertEqual(len(self.reported), 1)

    def test_otherErrors(self):
        """
        Other failures are not hidden.
        """
        guard = self.guard(RuntimeError("bug"))
        self.assertRaises(RuntimeError, guard.privilegedStartService)
        self.assertEqual(self.reported, [])

    def test_attributes(self):
        """
        The daemon's attributes are read through the guard.
        """
        guard = self.guard(_inUse("", 8888))
        self.assertEqual(guard.pool, "the pool")
        self.assertRaises(AttributeError, lambda: guard.nothing)


class WriteErrorTests(unittest.TestCase):
    """
    L{startup.writeError} puts the line on the process's own standard error,
    or through twistd's status pipe when it has daemonised, and removes
    twistd's pid file.
    """

    def setUp(self):
        self.stderr = io.StringIO()
        self.patch(sys, "__stderr__", self.stderr)
        self.patch(sys, "stderr", io.StringIO())

    def test_stderr(self):
        """
        In the foreground, C{PROG: LINE} on the real standard error, even
        when twistd has taken over C{sys.stderr} for its log.
        """
        startup.writeError("twistd ekey", "--port tcp:1: address in use")
        self.assertEqual(self.stderr.getvalue(), "twistd ekey: --port tcp:1: address in use\n")
        self.assertEqual(sys.stderr.getvalue(), "")

    def test_statusPipe(self):
        """
        Daemonised, the line goes to twistd's waiting parent, as twistd's
        own failures do (C{1 } then the message).
        """
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        pidfile = os.path.abspath(self.mktemp())
        with open(pidfile, "w") as f:
            f.write(str(os.getpid()))
        options = {"statusPipe": w, "pidfile": pidfile}
        startup.writeError("twistd ekey", "--port tcp:1: address in use", options)
        self.assertEqual(os.read(r, 200), b"1 --port tcp:1: address in use")
        self.assertEqual(self.stderr.getvalue(), "")
        self.assertFalse(os.path.exists(pidfile))
        self.assertIsNone(options["statusPipe"])


class _BusyReactor(MemoryReactorClock):
    """
    A reactor on which every TCP port is in use.
    """

    def listenTCP(self, port, factory, backlog=50, interface=""):
        raise _inUse(interface, port)


class TwistdGuardTests(unittest.TestCase):
    """
    C{twistd ekey}'s L{makeService} puts the daemon under a L{StartupGuard}
    that knows its listeners.
    """

    def test_portInUse(self):
        """
        A port in use when C{twistd} starts the daemon: one line naming
        C{--port}, and exit status 1.
        """
        from ekey.cli import twistd

        self.patch(twistd, "disableCoreDumps", lambda: None)
        reported = []
        self.patch(startup, "writeError", lambda *a: reported.append(a))
        options = twistd.Options()
        options.parseOptions(["--upstream", "unix:/u", "--port", "tcp:8888", "--control",
                              "none"])
        service = twistd.makeService(options, reactor=_BusyReactor())
        self.assertEqual(service.daemon.listeners[0][0], "tcp:8888")
        error = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertEqual(error.code, 1)
        [(prog, line, serverOptions)] = reported
        self.assertEqual(line, "--port tcp:8888: address in use: another daemon (or ekeyd) "
                         "listens there; stop it or choose another port")

    def test_serverOptions(self):
        """
        Under C{twistd}, the guard is given twistd's own options (for its
        status pipe and pid file).
        """
        from ekey.cli import twistd

        self.patch(twistd, "disableCoreDumps", lambda: None)
        options = twistd.Options()
        options.parent = usage.Options()
        options.parseOptions(["--upstream", "unix:/u", "--port", "tcp:8888", "--control",
                              "none"])
        service = twistd.makeService(options, reactor=MemoryReactorClock())
        self.assertIs(service.serverOptions, options.parent)


class SystemdEndpointTests(unittest.TestCase):
    """
    A C{systemd:} listener without the socket systemd should have passed.
    """

    def test_noSocketPassed(self):
        """
        Outside a socket-activated unit there is no passed socket: said so,
        not C{list index out of range}.
        """
        self.patch(os, "environ", {k: v for k, v in os.environ.items()
                                   if not k.startswith("LISTEN_")})
        error = self.assertRaises(EndpointError, checkEndpoint, "--port",
                                  "systemd:domain=INET:index=0", MemoryReactorClock())
        self.assertEqual(str(error), "bad --port 'systemd:domain=INET:index=0': systemd passed "
                         "no such socket (LISTEN_FDS: none): start it from a .socket unit "
                         "that lists it, or listen with tcp:PORT or unix:PATH")


class UnusableFileTests(unittest.TestCase):
    """
    A certificate file that is there but is not PEM.
    """

    def test_notPEM(self):
        """
        OpenSSL's error list becomes one line saying the file is not a
        usable certificate or key.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("not a certificate\n")
        error = self.assertRaises(EndpointError, checkEndpoint, "--upstream",
                                  f"tls:localhost:8888:certificate={path}",
                                  MemoryReactorClock(), server=False)
        line = str(error)
        self.assertNotIn("\n", line)
        self.assertIn(": not a usable PEM certificate or key (", line)
        self.assertNotIn("[(", line)


class PidFileTests(unittest.TestCase):
    """
    L{startup.checkPidFile} refuses a pid file of a live process in one
    line, and lets stale, empty and missing ones be.
    """

    def pidfile(self, text):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_live(self):
        """
        A live process (this test's parent) holds the pid file.
        """
        path = self.pidfile(str(os.getppid()))
        error = self.assertRaises(ValueError, startup.checkPidFile, path)
        self.assertEqual(str(error), f"another twistd runs in this directory (process "
                         f"{os.getppid()}, in {path}): give --rundir DIR, or --pidfile OTHER "
                         "and --control unix:OTHER")

    def test_notRefused(self):
        """
        No pid file, an empty or garbled one, our own pid, or a process
        that is gone: nothing to refuse (twistd removes stale files).
        """
        startup.checkPidFile(None)
        startup.checkPidFile("")
        startup.checkPidFile(os.path.abspath(self.mktemp()))
        startup.checkPidFile(self.pidfile(""))
        startup.checkPidFile(self.pidfile("garbage"))
        startup.checkPidFile(self.pidfile(str(os.getpid())))
        self.patch(os, "kill", lambda pid, signal: (_ for _ in ()).throw(
            ProcessLookupError(errno.ESRCH, "No such process")))
        startup.checkPidFile(self.pidfile("12345"))


class UnixPathTests(unittest.TestCase):
    """
    A Unix socket path longer than the kernel takes.
    """

    def test_tooLong(self):
        """
        Refused when the options are checked, with its length and the
        limit, for listeners and servers alike.
        """
        path = "/tmp/" + "x" * 103
        for option, server in (("--port", True), ("--upstream", False)):
            error = self.assertRaises(EndpointError, checkEndpoint, option, f"unix:{path}",
                                      MemoryReactorClock(), server=server)
            self.assertEqual(str(error), f"bad {option} 'unix:{path}': the path is too long "
                             "for a Unix socket (108 bytes, at most 107); choose a shorter one")
        self.assertIsNotNone(checkEndpoint("--port", "unix:" + path[:-1], MemoryReactorClock()))
