"""
Limits on by default, as real processes: under C{prlimit --nofile=300},
600 idle TCP connections to an C{mtls:} listener do not stop a valid mTLS
client from being served, nor C{ekeyctl list} from answering; and a
connection that never starts TLS is closed after the handshake time-out.

The daemon reads the simulated key (C{ekey-sim}) over a Unix socket.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time

from twisted.trial.unittest import TestCase

from ekey.core.units import BLOCK_SIZE
from tests.interop.load import raiseOpenFileLimit
from tests.interop.processes import (
    RunningProcess,
    SERIAL,
    assertNoTraceback,
    daemonLog,
    freeTCPPort,
    makeTempDir,
    pythonEnvironment,
    socketPath,
    startSimulator,
    twistdCommand,
    waitFor,
    waitForListeningTCP,
    writeKeyring,
)
from tests.interop.requirements import findPeer
from tests.interop.tlspeers import (
    mtlsServerEndpoint,
    writeCertificateAuthority,
    writeHostCertificate,
)

#: The daemon's file-descriptor limit, and the idle connections made.
NOFILE = 300
IDLE = 600

#: Seconds within which the valid client must be served.
SERVED_WITHIN = 20.0


class DescriptorLimitTests(TestCase):
    """
    The owner and valid clients are never locked out by idle connections.
    """

    #: More daemon options (a subclass turns the limits off, to show that
    #: the test fails without them).
    extraOptions: list = []

    def setUp(self):
        self.prlimit = findPeer("prlimit", "util-linux")
        if raiseOpenFileLimit(IDLE + 200) < IDLE + 100:
            self.skipTest(f"this test needs {IDLE + 100} descriptors of its own")
        self.directory = makeTempDir(self)
        keyPath = socketPath(self, self.directory)
        startSimulator(self, self.directory, listen=keyPath)
        self.keyring = writeKeyring(os.path.join(self.directory, "keyring"))
        pki = os.path.join(self.directory, "pki")
        ca = writeCertificateAuthority(pki)
        self.caPath = os.path.join(pki, "ca.pem")
        self.server = writeHostCertificate(pki, "localhost", ca)
        self.client = writeHostCertificate(pki, "client", ca)
        self.port = freeTCPPort()
        self.controlPath = socketPath(self, self.directory, "control.sock")
        argv = [self.prlimit, f"--nofile={NOFILE}:{NOFILE}", "--"] + twistdCommand() + [
            "-n", "--logfile", os.path.join(self.directory, "ekey.log"),
            "--pidfile", os.path.join(self.directory, "ekey.pid"), "ekey",
            "--device", keyPath, "--keyring", self.keyring,
            "--port", mtlsServerEndpoint(self.port, *self.server, self.caPath),
            "--control", f"unix:{self.controlPath}:mode=600",
            "--tls-handshake-timeout", "10",
        ] + self.extraOptions
        self.daemon = RunningProcess(self, "ekey", argv, self.directory, env=pythonEnvironment())
        self.daemon.logPath = os.path.join(self.directory, "ekey.log")
        waitForListeningTCP(self.port, process=self.daemon)
        waitFor(lambda: os.path.exists(self.controlPath), 20, "the control socket", self.daemon)

    def openIdle(self, count):
        """
        Open C{count} TCP connections that never start TLS.

        @return: the sockets (closed at clean-up).
        """
        sockets = []
        self.addCleanup(lambda: [s.close() for s in sockets])
        for _ in range(count):
            sockets.append(socket.create_connection(("127.0.0.1", self.port), timeout=10))
        return sockets

    def fetchOverMTLS(self, n=BLOCK_SIZE):
        """
        Connect with the client certificate, ask for C{n} bytes (EGD
        0x02) and read them.

        @return: the bytes.
        """
        context = ssl.create_default_context(cafile=self.caPath)
        context.load_cert_chain(*self.client)
        deadline = time.monotonic() + SERVED_WITHIN
        with socket.create_connection(("127.0.0.1", self.port), timeout=SERVED_WITHIN) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(bytes([0x02, n]))
                data = b""
                while len(data) < n:
                    tls.settimeout(max(0.1, deadline - time.monotonic()))
                    chunk = tls.recv(n - len(data))
                    if not chunk:
                        break
                    data += chunk
        return data

    def ekeyctlList(self):
        done = subprocess.run(
            [sys.executable, "-m", "ekey.cli.ekeyctl", "--control", f"unix:{self.controlPath}",
             "--timeout", "10", "list"],
            env=pythonEnvironment(), cwd=self.directory, stdin=subprocess.DEVNULL,
            capture_output=True, timeout=30)
        return done.returncode, done.stdout.decode(), done.stderr.decode()

    def test_idleFlood(self):
        """
        With 600 idle connections (twice the daemon's descriptor limit)
        open, a valid mTLS client is served within 20 seconds and
        C{ekeyctl list} answers; the daemon says once that it reached its
        cap.
        """
        waitFor(lambda: SERIAL in self.ekeyctlList()[1] or None, 20,
                "the key to be listed", self.daemon)
        self.openIdle(IDLE)
        started = time.monotonic()
        data = self.fetchOverMTLS()
        self.assertEqual(len(data), BLOCK_SIZE, self.daemon.describe())
        self.assertLess(time.monotonic() - started, SERVED_WITHIN)
        status, out, err = self.ekeyctlList()
        self.assertEqual(status, 0, err + self.daemon.describe())
        self.assertIsNone(self.daemon.poll(), self.daemon.describe())
        log = daemonLog(self.daemon)
        self.assertEqual(log.count("reach the cap"), 1, log[-3000:])
        assertNoTraceback(self, log, self.daemon.stderr())

    def test_handshakeTimeout(self):
        """
        A connection that never starts TLS is closed by the daemon after
        the handshake time-out.
        """
        [idle] = self.openIdle(1)
        idle.setblocking(True)
        idle.settimeout(30)
        started = time.monotonic()
        try:
            self.assertEqual(idle.recv(1), b"")
        except ConnectionResetError:
            pass
        self.assertGreater(time.monotonic() - started, 5)
        self.assertIn("no TLS handshake within 10 seconds", daemonLog(self.daemon))

