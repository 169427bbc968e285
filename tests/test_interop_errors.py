"""
Every start-up failure of every command, as real processes: C{twistd -n
ekey} with each bad start (a port in use, a second daemon in the same
directory, malformed endpoints, missing certificate files, a missing
keyring or device), C{ekey-egd} against servers that stall or do not speak
EGD, and C{ekey-feed-kernel}.  Each must exit non-zero with exactly one
non-empty line on standard error, naming the fix, and no traceback.

Nothing here needs a peer but Python and Twisted, so nothing is skipped.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
import threading
from typing import List, Sequence

from twisted.trial.unittest import TestCase

from tests.interop.processes import (
    DEFAULT_TIMEOUT,
    RunningProcess,
    assertNoTraceback,
    freeTCPPort,
    makeTempDir,
    pythonEnvironment,
    twistdCommand,
    waitFor,
    waitForListeningTCP,
    writeKeyring,
)


class _OneLineMixin:
    """
    Running a command that must refuse to start, and checking its one line.
    """

    def setUp(self):
        self.directory = makeTempDir(self)
        self.runs = 0

    def runCommand(self, argv: List[str], name: str) -> RunningProcess:
        self.runs += 1
        process = RunningProcess(self, f"{name}-{self.runs}", argv, self.directory,
                                 env=pythonEnvironment())
        process.wait(DEFAULT_TIMEOUT)
        return process

    def assertOneLine(self, process: RunningProcess, expected: str) -> str:
        """
        The process failed with exactly one non-empty line on standard
        error, which holds C{expected}, and printed no traceback anywhere.

        @return: the line.
        """
        self.assertNotEqual(process.poll(), 0, process.describe())
        assertNoTraceback(self, process.stderr(), process.stdout())
        lines = [line for line in process.stderr().splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, process.describe())
        self.assertIn(expected, lines[0])
        return lines[0]


class TwistdStartTests(_OneLineMixin, TestCase):
    """
    C{twistd -n ekey} refuses every bad start in one line on standard
    error (its log, on standard output, may say more), exit status 1.
    """

    def twistd(self, *options: str, foreground: bool = True) -> RunningProcess:
        """
        Run C{twistd ekey} in the test's directory, logging to standard
        output.
        """
        argv = twistdCommand() + (["-n"] if foreground else
                                  ["--logfile", os.path.join(self.directory, "twistd.log")])
        argv += ["--pidfile", os.path.join(self.directory, f"twistd-{self.runs + 1}.pid"),
                 "ekey"] + list(options)
        return self.runCommand(argv, "twistd")

    def assertRefused(self, options: Sequence[str], expected: str) -> str:
        process = self.twistd(*options)
        line = self.assertOneLine(process, expected)
        self.assertEqual(process.poll(), 1)
        self.assertTrue(line.startswith("twistd ekey: "), line)
        return line

    def test_portInUse(self):
        """
        A TCP port another program listens on: named with C{--port} and
        the fix, where twistd logged a 37-line traceback.
        """
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            description = f"tcp:{port}:interface=127.0.0.1"
            line = self.assertRefused(
                ["--upstream", "unix:/nonexistent/egd", "--port", description,
                 "--control", "none"], "address in use")
        self.assertEqual(line, f"twistd ekey: --port {description}: address in use: another "
                         "daemon (or ekeyd) listens there; stop it or choose another port")
        self.assertFalse(os.path.exists(os.path.join(self.directory, "twistd-1.pid")))

    def test_secondDaemon(self):
        """
        A second daemon in the same run directory meets the first one's
        control socket: one line naming C{--rundir} and C{--control}, and
        the first daemon keeps its socket.
        """
        port = freeTCPPort()
        first = RunningProcess(
            self, "first", twistdCommand() + [
                "-n", "--pidfile", os.path.join(self.directory, "first.pid"), "ekey",
                "--upstream", "unix:/nonexistent/egd", "--port",
                f"tcp:{port}:interface=127.0.0.1"],
            self.directory, env=pythonEnvironment())
        control = os.path.join(self.directory, "control.sock")
        # The socket's path is too long for /proc/net/unix to be asked;
        # its lock and the EGD port, bound in the same start, will do.
        waitForListeningTCP(port, process=first)
        waitFor(lambda: os.path.islink(control + ".lock") and os.path.exists(control),
                DEFAULT_TIMEOUT, "the first daemon's control socket", first)
        line = self.assertRefused(["--upstream", "unix:/nonexistent/egd", "--port", "tcp:0"],
                                  "another twistd ekey runs in this directory")
        self.assertTrue(line.endswith("give --rundir DIR or --control unix:OTHER"), line)
        self.assertIsNone(first.poll(), first.describe())
        self.assertTrue(stat.S_ISSOCK(os.stat(control).st_mode))
        self.assertEqual(os.readlink(control + ".lock"), str(first.pid))

    def test_socketDirectoryMissing(self):
        """
        A Unix socket in a directory that does not exist.
        """
        self.assertRefused(["--upstream", "unix:/nonexistent/egd", "--control", "none",
                            "--port", "unix:/nonexistent/dir/egd"],
                           "--port unix:/nonexistent/dir/egd: the directory of "
                           "/nonexistent/dir/egd does not exist")

    def test_notAPort(self):
        """
        C{tcp:notaport}.
        """
        self.assertRefused(["--upstream", "unix:/u", "--port", "tcp:notaport"],
                           "bad --port 'tcp:notaport': 'notaport' is not a port number")

    def test_bareNumber(self):
        """
        C{--port 8888} suggests C{tcp:8888}.
        """
        self.assertRefused(["--upstream", "unix:/u", "--port", "8888"], "such as tcp:8888")

    def test_unknownType(self):
        """
        An endpoint type nobody knows.
        """
        self.assertRefused(["--upstream", "unix:/u", "--port", "nosuch:8888"],
                           "bad --port 'nosuch:8888': unknown endpoint type 'nosuch'")

    def test_tlsWithoutPort(self):
        """
        C{tls:localhost} names the missing port.
        """
        self.assertRefused(["--upstream", "tls:localhost", "--port", "tcp:0"],
                           "bad --upstream 'tls:localhost': missing port; write tls:HOST:PORT")

    def test_missingTrustRoots(self):
        """
        C{trustRoots=} naming nothing, where the reason used to be empty.
        """
        self.assertRefused(["--upstream", "tls:localhost:8888:trustRoots=/nonexistent",
                            "--port", "tcp:0"],
                           "trustRoots=/nonexistent: No such file or directory; give a "
                           "directory of CA certificates")

    def test_missingCertificate(self):
        """
        An C{mtls:} listener whose certificate file does not exist.
        """
        self.assertRefused(["--upstream", "unix:/u", "--port",
                            "mtls:0:certKey=/nonexistent.crt:privateKey=/nonexistent.key:"
                            "caCerts=/nonexistent-ca.pem"],
                           "certKey=/nonexistent.crt: No such file or directory")

    def test_sslRefused(self):
        """
        An C{ssl:} upstream (its certificate is never checked).
        """
        self.assertRefused(["--upstream", "ssl:localhost:8888", "--port", "tcp:0"],
                           "use tls:HOST:PORT:trustRoots=DIR instead")

    def test_missingKeyring(self):
        """
        A key with a keyring that does not exist.
        """
        self.assertRefused(["--device", "/dev/null", "--keyring", "/nonexistent/keyring",
                            "--port", "tcp:0", "--control", "none"], "/nonexistent/keyring")

    def test_missingDevice(self):
        """
        A C{--device} that does not exist.
        """
        keyring = writeKeyring(os.path.join(self.directory, "keyring"))
        self.assertRefused(["--device", "/nonexistent/key", "--keyring", keyring,
                            "--port", "tcp:0", "--control", "none"], "/nonexistent/key")

    def test_daemonised(self):
        """
        Without C{-n}, twistd's waiting parent prints the line it is given
        through its status pipe (its own two-line wrapping, cut at 98
        characters) and exits 1; nothing is left running.
        """
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            process = self.twistd("--upstream", "unix:/nonexistent/egd", "--port",
                                  f"tcp:{port}", "--control", "none", foreground=False)
        self.assertEqual(process.poll(), 1, process.describe())
        assertNoTraceback(self, process.stderr())
        self.assertIn(f"--port tcp:{port}: address in use", process.stderr())
        with open(os.path.join(self.directory, "twistd.log")) as f:
            self.assertIn("stop it or choose another port", f.read())


class _Server:
    """
    A TCP server on a thread that sends C{reply} to its first connection
    (after reading a request) and then holds it open until stopped.
    """

    def __init__(self, testCase, reply: bytes, readFirst: bool = True):
        self.reply = reply
        self.readFirst = readFirst
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()
        testCase.addCleanup(self.stop)

    def serve(self):
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            if self.readFirst:
                conn.recv(65536)
            conn.sendall(self.reply)
            self.done.wait(DEFAULT_TIMEOUT)

    def stop(self):
        self.done.set()
        self.listener.close()
        self.thread.join(5)


class EGDClientTests(_OneLineMixin, TestCase):
    """
    C{ekey-egd} fails in one line and keeps what it received.
    """

    def egd(self, *args: str) -> RunningProcess:
        return self.runCommand([sys.executable, "-c", "from ekey.cli.egd import main; main()"]
                        + list(args), "ekey-egd")

    def test_timeOutKeepsBytes(self):
        """
        A server that answers part of a C{get} then stalls: the answered
        bytes are on standard output, and one line says how many and why.
        """
        server = _Server(self, b"e" * 1000)
        process = self.egd("--connect", f"tcp:127.0.0.1:{server.port}", "--timeout", "1",
                           "get", "100000")
        self.assertOneLine(process, "ekey-egd: no answer within 1 seconds; 765 of the 100000 "
                           "bytes were received and written out")
        with open(process.stdoutPath, "rb") as f:
            self.assertEqual(f.read(), b"e" * 765)

    def test_banner(self):
        """
        A server that is not an EGD server (it sends a banner): C{ekey-egd}
        says so, not that the connection closed.
        """
        server = _Server(self, b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", readFirst=False)
        process = self.egd("--connect", f"tcp:127.0.0.1:{server.port}", "--timeout", "5",
                           "level")
        self.assertOneLine(process, "not an EGD server? it broke the protocol")

    def test_missingCertificate(self):
        """
        A client certificate file that does not exist, where there was a
        traceback.
        """
        process = self.egd("--connect", "tls:localhost:8888:certificate=/nonexistent.crt",
                           "level")
        self.assertOneLine(process, "ekey-egd: bad --connect 'tls:localhost:8888:certificate="
                           "/nonexistent.crt': certificate=/nonexistent.crt: No such file")
        self.assertEqual(process.poll(), 2)

    def test_refused(self):
        """
        Nobody listening.
        """
        process = self.egd("--connect", f"tcp:127.0.0.1:{freeTCPPort()}", "level")
        self.assertOneLine(process, "ekey-egd: cannot connect to tcp:127.0.0.1:")


class FeedKernelTests(_OneLineMixin, TestCase):
    """
    C{ekey-feed-kernel}'s refusals name its own option, C{--connect}.
    """

    def feed(self, *args: str) -> RunningProcess:
        return self.runCommand([sys.executable, "-c",
                         "import sys; from ekey.cli.feedkernel import main; sys.exit(main())"]
                        + list(args), "ekey-feed-kernel")

    def test_ssl(self):
        """
        An C{ssl:} server.
        """
        line = self.assertOneLine(self.feed("--connect", "ssl:localhost:8888"),
                                  "ekey-feed-kernel: bad --connect 'ssl:localhost:8888'")
        self.assertNotIn("--upstream", line)

    def test_missingTrustRoots(self):
        """
        A C{trustRoots=} directory that does not exist.
        """
        self.assertOneLine(self.feed("--connect", "tls:localhost:8888:trustRoots=/nonexistent"),
                           "trustRoots=/nonexistent: No such file or directory")
