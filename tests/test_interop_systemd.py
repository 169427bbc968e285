"""
Our daemon under systemd's protocols, with systemd's own tool: sockets
bound by C{systemd-socket-activate} (as C{ekey.socket} binds them) and
adopted by C{twistd ekey --port systemd:domain=...:index=N}, entropy read
through them, and C{READY=1} sent to the C{$NOTIFY_SOCKET} the test binds
(C{Type=notify}).

The daemon's C{--port} values are those of the shipped socket-activated
unit (examples/systemd/socket-activation/ekey.service), so the example is
what is run.
"""

from __future__ import annotations

import os
import signal
import socket

from twisted.trial.unittest import TestCase

from tests.interop.egdsockets import EGDSocket, EGDUnixSocket
from tests.interop.processes import (
    DEFAULT_TIMEOUT,
    RunningProcess,
    assertNoTraceback,
    daemonLog,
    freeTCPPort,
    makeTempDir,
    pythonEnvironment,
    socketPath,
    startSimulator,
    twistdCommand,
    waitFor,
    waitForListening,
    writeKeyring,
)
from tests.interop.requirements import findPeer
from tests.test_units import REPO_ROOT, execStart, loadUnit, optionValues

EXAMPLE = os.path.join(REPO_ROOT, "examples", "systemd", "socket-activation")


def examplePorts():
    """
    @return: the C{--port} values of the shipped socket-activated unit.
    """
    return optionValues(execStart(loadUnit(os.path.join(EXAMPLE, "ekey.service"))), "--port")


class NotifySocket:
    """
    The datagram socket systemd would listen on for C{sd_notify}.

    @ivar path: its address, for C{$NOTIFY_SOCKET}.
    @ivar messages: every message received so far, in order.
    """

    def __init__(self, testCase, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        testCase.addCleanup(self.sock.close)
        self.messages = []

    def received(self):
        """
        Take what has arrived.

        @return: the messages received so far.
        """
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode("utf-8", "replace"))
            except BlockingIOError:
                return self.messages

    def waitFor(self, word: str, process: RunningProcess) -> str:
        """
        @return: the first message holding the line C{word}.
        """
        def found():
            return next((m for m in self.received() if word in m.split("\n")), None)

        return waitFor(found, DEFAULT_TIMEOUT, f"{word} on NOTIFY_SOCKET", process)


class SocketActivationTests(TestCase):
    """
    C{systemd-socket-activate} binds a Unix and a TCP socket and starts the
    daemon at the first connection, as C{ekey.socket} has systemd do.
    """

    def setUp(self):
        self.activate = findPeer("systemd-socket-activate", "systemd")
        self.directory = makeTempDir(self)
        self.keyring = writeKeyring(os.path.join(self.directory, "keyring"))
        self.keySocket = socketPath(self, self.directory)
        self.egdSocket = socketPath(self, self.directory, "egd.sock")
        self.notify = NotifySocket(self, socketPath(self, self.directory, "notify"))
        self.port = freeTCPPort()
        startSimulator(self, self.directory, listen=self.keySocket)

    def startActivated(self) -> RunningProcess:
        """
        Bind the example's sockets with C{systemd-socket-activate} (in the
        order of C{ekey.socket}'s lines: the Unix socket, then IPv4
        loopback), to run the example's daemon command at the first
        connection, with C{$NOTIFY_SOCKET} set.
        """
        ports = examplePorts()
        self.assertEqual(ports, ["systemd:domain=UNIX:index=0", "systemd:domain=INET:index=1"])
        # systemd names every descriptor (LISTEN_FDNAMES); Twisted reads
        # none of them without names.
        argv = [self.activate, "-l", self.egdSocket, "-l", f"127.0.0.1:{self.port}",
                "--fdname=egd:egd", "-E", "PYTHONPATH", "-E", "PATH", "-E", "NOTIFY_SOCKET"]
        logPath = os.path.join(self.directory, "ekey.log")
        argv += twistdCommand() + ["-n", "--pidfile=", "--logfile", logPath, "ekey",
                                   "--device", self.keySocket, "--keyring", self.keyring,
                                   "--control", "none"]
        for port in ports:
            argv += ["--port", port]
        process = RunningProcess(self, "activated", argv, self.directory,
                                 env=pythonEnvironment({"NOTIFY_SOCKET": self.notify.path}))
        process.logPath = logPath
        waitForListening(self.egdSocket, process=process)
        return process

    def test_egdThroughActivatedSockets(self):
        """
        The first connection to the Unix socket starts the daemon, which
        adopts both sockets: that client and a TCP client each get
        entropy, and systemd is told C{READY=1} with the daemon's pid.
        """
        process = self.startActivated()
        with EGDUnixSocket(self.egdSocket, timeout=DEFAULT_TIMEOUT) as client:
            self.assertEqual(len(client.get(64)), 64)
        with EGDSocket("127.0.0.1", self.port, timeout=DEFAULT_TIMEOUT) as client:
            self.assertEqual(len(client.get(64)), 64)
        ready = self.notify.waitFor("READY=1", process)
        # systemd-socket-activate execs the command in its own process.
        self.assertIn(f"MAINPID={process.pid}", ready.split("\n"))
        log = daemonLog(process)
        self.assertIn("systemd:domain=UNIX:index=0", log)
        assertNoTraceback(self, log, process.stderr())

    def test_stoppingSaid(self):
        """
        A daemon that is stopped (SIGTERM, as systemd stops it) says
        C{STOPPING=1} after C{READY=1}.
        """
        process = self.startActivated()
        with EGDUnixSocket(self.egdSocket, timeout=DEFAULT_TIMEOUT) as client:
            client.get(1)
        self.notify.waitFor("READY=1", process)
        # twistd stops cleanly, then ends by the signal it was sent (so that
        # systemd sees how it ended): status -SIGTERM.
        self.assertEqual(process.terminate(), -signal.SIGTERM)
        self.notify.waitFor("STOPPING=1", process=None)
        words = [m.split("\n")[0] for m in self.notify.received()]
        self.assertEqual(words[-2:], ["READY=1", "STOPPING=1"])
