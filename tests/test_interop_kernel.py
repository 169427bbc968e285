"""
Feeding the real kernel: C{ekey-feed-kernel} and C{twistd ekey --kernel}
as real processes under C{strace}, against a seeded simulated key, so that
every byte added to the kernel with C{RNDADDENTROPY} can be traced to the
key's block it came from; the real C{ekeyd-egd-linux} for contrast; the
errors an operator sees; and the FIFO output.

These tests add (simulated, predictable) bytes to this machine's kernel
pool.  That is harmless: mixing in known bytes never weakens the kernel's
generator, and the credit (7 shannons a byte) only matters on kernels that
are still unseeded, which a test machine running these is not.

They need root (C{CAP_SYS_ADMIN}) and C{strace}, and skip otherwise, or
fail when C{EKEY_REQUIRE_INTEROP=1}; the FIFO test needs neither.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

from twisted.trial.unittest import TestCase

from ekey.core.kernel import parseKernelVersion

from tests.interop.egdsockets import EGDSocket
from tests.interop.kernel import (
    asNobody,
    entropyAdditions,
    feedKernelCommand,
    startTraced,
    stopTraced,
    straceCalls,
    unescapeStrace,
    withoutCapability,
)
from tests.interop.processes import (
    assertNoTraceback,
    daemonLog,
    makeTempDir,
    pythonEnvironment,
    socketPath,
    startDaemonEGD,
    startSimulator,
    twistdCommand,
    waitFor,
    writeKeyring,
)
from tests.interop.requirements import findPeer, skipUnlessRequired
from tests.interop.seeded import seededPlaintext, traceServed

SEED = b"ekey-interop-kernel"
#: Entropy frames (32-byte blocks) a second from the simulated key.
RATE = 200
#: Seconds the feeders are watched for.
WINDOW = 3.5


def requireRoot() -> None:
    """
    Skip unless running as root (needed for C{RNDADDENTROPY}), or fail
    when interop is required.
    """
    if os.geteuid() != 0:
        skipUnlessRequired("adding entropy to the kernel needs CAP_SYS_ADMIN: run these "
                           "tests as root")


def kernelVersion():
    return parseKernelVersion(platform.release())


class _KeyMixin:
    """
    A seeded simulated key, and our daemon serving it over EGD.
    """

    def setUp(self):
        self.directory = makeTempDir(self)
        self.keyring = writeKeyring(os.path.join(self.directory, "keyring"))
        self.keySocket = socketPath(self, self.directory)
        self.sim = startSimulator(self, self.directory, listen=self.keySocket, seed=SEED,
                                  rate=RATE)

    def startEGD(self, extra=()):
        self.daemon = startDaemonEGD(self, self.directory, [self.keySocket], self.keyring,
                                     extra=extra)
        return self.daemon


class _KernelMixin(_KeyMixin):
    """
    L{_KeyMixin} where the kernel's random device can be fed and traced.
    """

    def setUp(self):
        requireRoot()
        findPeer("strace")
        if not os.access("/dev/random", os.W_OK):
            skipUnlessRequired("/dev/random is not writable here")
        _KeyMixin.setUp(self)

    def watchAdditions(self, process, minimum: int, size: int, timeout: float = 15.0):
        """
        Wait until the trace shows C{minimum} successful additions of
        C{size} bytes, then at least L{WINDOW} seconds in all; stop the
        process.

        @return: C{(additions, seconds watched)}.
        """
        started = time.monotonic()

        def enough():
            return len([a for a in entropyAdditions(process.tracePath)
                        if a.size == size and a.result == 0]) >= minimum

        waitFor(enough, timeout, f"{minimum} RNDADDENTROPY calls of {size} bytes", process)
        remaining = WINDOW - (time.monotonic() - started)
        if remaining > 0:
            time.sleep(remaining)
        elapsed = time.monotonic() - started
        stopTraced(process)
        return entropyAdditions(process.tracePath), elapsed

    def assertFedFromKey(self, additions, size: int, interval: float, elapsed: float,
                         process):
        """
        The trace shows the privilege check (a zero-byte addition), then
        successful additions of C{size} bytes to /dev/random at 7 shannons
        a byte, no more often than C{interval} allows, whose bytes are, in
        order, exactly the simulated key's seeded stream from its start.
        """
        description = process.describe() + "\n" + "\n".join(a.line[:200] for a in additions)
        self.assertTrue(additions, description)
        for addition in additions:
            self.assertEqual(addition.device, "/dev/random", description)
            self.assertEqual(addition.result, 0, addition.line)
        self.assertEqual((additions[0].size, additions[0].bits), (0, 0), description)
        feeds = additions[1:]
        self.assertGreaterEqual(len(feeds), 2, description)
        for feed in feeds:
            self.assertEqual((feed.size, feed.bits, len(feed.data)), (size, 7 * size, size),
                             feed.line[:200])
        # Start-up, then one every interval: never a flood.  A feeder that
        # ignored its interval would make hundreds of calls in the window;
        # the bound is five times what it may make (counting from the
        # process's start, before the watch), so that a loaded machine
        # delaying the trace or the test cannot fail it.
        lifetime = time.monotonic() - process.started
        self.assertLessEqual(len(feeds), 5 * (lifetime / interval + 2), description)
        fed = b"".join(feed.data for feed in feeds)
        expected = seededPlaintext(SEED, len(fed) // 32 + 1)[:len(fed)]
        self.assertEqual(fed, expected,
                         "the bytes added to the kernel are not the key's stream, in order")
        first = feeds[0]
        print(f"\n{len(feeds)} RNDADDENTROPY calls of {size} bytes in {elapsed:.1f} s, e.g.: "
              f"ioctl({first.device}, RNDADDENTROPY, {{entropy_count={first.bits}, "
              f"buf_size={first.size}, buf={first.data[:8].hex()}...}}) = {first.result}")


class KernelFeederTests(_KernelMixin, TestCase):
    """
    Our feeders make real C{RNDADDENTROPY} calls on this kernel.
    """

    def test_feedKernelCommand(self):
        """
        C{ekey-feed-kernel --connect tcp:127.0.0.1:PORT --interval 1 --bytes
        64} adds the daemon's entropy to /dev/random at start-up and every
        second, and the daemon served it over EGD.
        """
        daemon = self.startEGD()
        feeder = startTraced(
            self, "ekey-feed-kernel",
            feedKernelCommand("--connect", f"tcp:127.0.0.1:{daemon.egdPort}",
                              "--interval", "1", "--bytes", "64"),
            self.directory, env=pythonEnvironment())
        additions, elapsed = self.watchAdditions(feeder, 3, 64)
        self.assertFedFromKey(additions, 64, 1.0, elapsed, feeder)
        self.assertIn(f"Upstream tcp:127.0.0.1:{daemon.egdPort} connected", feeder.stderr())
        assertNoTraceback(self, feeder.stderr(), daemonLog(daemon))
        self.assertIsNone(daemon.poll(), daemon.describe())

    def test_twistdKernel(self):
        """
        C{twistd ekey --device SOCK --keyring KR --kernel --kernel-interval 1}
        adds the key's entropy to /dev/random itself.
        """
        logPath = os.path.join(self.directory, "ekey-kernel.log")
        argv = twistdCommand() + [
            "-n", "--logfile", logPath, "--pidfile",
            os.path.join(self.directory, "ekey-kernel.pid"), "ekey",
            "--device", self.keySocket, "--keyring", self.keyring,
            "--kernel", "--kernel-interval", "1"]
        daemon = startTraced(self, "ekey-kernel", argv, self.directory, env=pythonEnvironment())
        daemon.logPath = logPath
        additions, elapsed = self.watchAdditions(daemon, 3, 64)
        self.assertFedFromKey(additions, 64, 1.0, elapsed, daemon)
        assertNoTraceback(self, daemon.stderr(), daemonLog(daemon))


class EkeydEgdLinuxTests(_KernelMixin, TestCase):
    """
    The contrast: the real C{ekeyd-egd-linux} waits for C{/dev/random} to
    become writable before asking for anything.  Before Linux 5.18 that
    happens whenever the kernel's entropy estimate falls below its
    write-wakeup threshold; since 5.18 it never happens once the kernel's
    generator is initialised.
    """

    def test_requestsNothingOnNewKernels(self):
        """
        Against our daemon for the same window, C{ekeyd-egd-linux} connects
        and waits for C{/dev/random} to become writable (C{POLLOUT}).  On
        Linux >= 5.18 it then sends nothing and adds nothing to the kernel.
        On older kernels it may be woken: whatever it adds is then bytes our
        daemon served it, the key's seeded blocks in order, each once,
        credited with at most 8 bits a byte, and it adds nothing it was not
        served.
        """
        egdLinux = findPeer("ekeyd-egd-linux")
        daemon = self.startEGD()
        peer = startTraced(
            self, "ekeyd-egd-linux", [egdLinux, "-H", "127.0.0.1", "-p", str(daemon.egdPort)],
            self.directory,
            trace="ioctl,connect,write,sendto,sendmsg,read,recvfrom,poll,ppoll")

        def connected():
            return [c for c in straceCalls(peer.tracePath)
                    if c.name == "connect" and f"htons({daemon.egdPort})" in c.arguments
                    and c.result == 0]

        waitFor(connected, 10, "ekeyd-egd-linux to connect", peer)
        time.sleep(WINDOW)
        self.assertIsNone(peer.poll(), peer.describe())
        stopTraced(peer)
        calls = straceCalls(peer.tracePath)
        # The connected socket: its descriptor and inode, as in "4<socket:[123]>"
        # (descriptors are reused: the same number was a netlink socket before).
        socketFD = connected()[0].arguments.split(",", 1)[0]
        sent = [c for c in calls if c.name in ("write", "sendto", "sendmsg")
                and c.arguments.split(",", 1)[0] == socketFD]
        received = sum(c.result or 0 for c in calls if c.name in ("read", "recvfrom")
                       and c.arguments.split(",", 1)[0] == socketFD)
        additions = [a for a in entropyAdditions(peer.tracePath) if a.size]
        polls = [unescapeStrace(c.line).decode("utf-8", "replace")
                 for c in calls if c.name in ("poll", "ppoll")]
        summary = (f"kernel {platform.release()}: ekeyd-egd-linux connected to our daemon, then "
                   f"in {WINDOW:g} s sent {len(sent)} request(s), received {received} bytes, "
                   f"made {len(additions)} RNDADDENTROPY call(s); last poll: "
                   f"{polls[-1][:160] if polls else 'none'}")
        print("\n" + summary)
        # On every kernel it waits on /dev/random becoming writable.
        self.assertTrue(any("POLLOUT" in poll and "/dev/random" in poll for poll in polls),
                        summary)
        if kernelVersion() >= (5, 18):
            # Never woken: nothing asked for, nothing added.
            self.assertEqual((len(sent), received, len(additions)), (0, 0, 0), summary)
            self.assertTrue(polls and "POLLOUT" in polls[-1], summary)
            return
        # Woken now and then: it adds only what our daemon served it (the
        # key's blocks, each once, in order), at most 8 bits a byte, and
        # asks before it is served.
        added = b"".join(a.data for a in additions)
        self.assertLessEqual(len(added), received, summary)
        if received:
            self.assertTrue(sent, summary)
        if added:
            traceServed([added], [SEED])
        for addition in additions:
            self.assertEqual(addition.result, 0, addition.line)
            self.assertLessEqual(addition.bits, 8 * addition.size, addition.line)


class KernelErrorTests(_KernelMixin, TestCase):
    """
    What an operator sees when feeding the kernel cannot work.
    """

    def assertRefusesWithoutCapability(self, argv, what: str):
        result = subprocess.run(argv, env=pythonEnvironment(), stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=30)
        output = result.stdout + result.stderr
        assertNoTraceback(self, output)
        self.assertNotEqual(result.returncode, 0, output)
        # The error is the last line (twistd prints its usage, which also
        # names the capability in --kernel's help, before it).
        lines = [line for line in output.splitlines() if line.strip()]
        self.assertTrue(lines and "CAP_SYS_ADMIN" in lines[-1], f"{what}:\n{output}")
        print(f"\n{what} (exit {result.returncode}): {lines[-1]}")
        return result

    def test_feedKernelWithoutCapability(self):
        """
        C{ekey-feed-kernel} without CAP_SYS_ADMIN (as root with the
        capability dropped) refuses with one line naming it, no traceback.
        """
        result = self.assertRefusesWithoutCapability(
            withoutCapability(feedKernelCommand("--connect", "tcp:127.0.0.1:1")),
            "ekey-feed-kernel without CAP_SYS_ADMIN")
        self.assertEqual(result.stdout, "")
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)

    def test_feedKernelAsNobody(self):
        """
        The same as user nobody.
        """
        probe = subprocess.run(asNobody([sys.executable, "-c", "import ekey.services.feeder"]),
                               env=pythonEnvironment(), capture_output=True, text=True,
                               timeout=30)
        if probe.returncode != 0:
            skipUnlessRequired(f"this interpreter or source tree cannot be run by nobody: "
                               f"{probe.stderr.strip()[-200:]}")
        result = self.assertRefusesWithoutCapability(
            asNobody(feedKernelCommand("--connect", "tcp:127.0.0.1:1")),
            "ekey-feed-kernel as nobody")
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)

    def test_twistdKernelWithoutCapability(self):
        """
        C{twistd ekey --kernel} without CAP_SYS_ADMIN stops at start-up with
        a line naming it (after twistd's usage text, as twistd prints every
        option error), no traceback.
        """
        self.assertRefusesWithoutCapability(
            withoutCapability(twistdCommand() + [
                "-n", "--logfile", os.path.join(self.directory, "nocap.log"),
                "--pidfile", os.path.join(self.directory, "nocap.pid"),
                "ekey", "--upstream", "tcp:127.0.0.1:1", "--kernel"]),
            "twistd ekey --kernel without CAP_SYS_ADMIN")

    def test_unreachableUpstream(self):
        """
        An unreachable upstream is reported ("unreachable") while
        C{ekey-feed-kernel} keeps running, to retry.
        """
        feeder = startTraced(self, "ekey-feed-kernel",
                             feedKernelCommand("--connect", "tcp:127.0.0.1:1"),
                             self.directory, env=pythonEnvironment())
        line = waitFor(lambda: [l for l in feeder.stderr().splitlines() if "unreachable" in l],
                       15, "an 'unreachable' report", feeder)[0]
        time.sleep(2)
        self.assertIsNone(feeder.poll(), feeder.describe())
        stopTraced(feeder)
        assertNoTraceback(self, feeder.stderr())
        self.assertIn("tcp:127.0.0.1:1", line)
        # It checked its privilege, and added nothing it did not have.
        self.assertEqual([a.size for a in entropyAdditions(feeder.tracePath)], [0])
        print(f"\n{line}")


class FIFOSinkTests(_KeyMixin, TestCase):
    """
    C{--output-file FIFO} with nobody reading does not block the daemon,
    and a reader that comes later gets the key's bytes.  (No root and no
    strace needed: nothing here touches the kernel.)
    """

    def test_fifoWithoutReader(self):
        """
        With a FIFO nobody reads as its output file, the daemon serves EGD
        clients at once; a reader that opens the FIFO later gets seeded
        blocks of the key, in order, none of them also served over EGD.
        """
        fifo = os.path.join(self.directory, "entropy.fifo")
        os.mkfifo(fifo)
        daemon = self.startEGD(extra=["--output-file", fifo])
        egd = []
        # A daemon blocked on the FIFO would serve nothing: each read
        # would time out (10 s, against the fraction of a second they take).
        with EGDSocket(daemon.egdHost, daemon.egdPort, timeout=10) as client:
            for _ in range(10):
                egd.append(client.get(224))
            self.assertEqual(client.pid(), str(daemon.pid))
        served = sum(len(data) for data in egd)
        self.assertEqual(served, 2240)

        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, reader)
        data = bytearray()

        def read():
            try:
                chunk = os.read(reader, 65536)
            except BlockingIOError:
                return False
            data.extend(chunk)
            return len(data) >= 8192

        waitFor(read, 15, "8192 bytes from the FIFO", daemon)
        # The daemon still serves EGD.
        with EGDSocket(daemon.egdHost, daemon.egdPort, timeout=10) as client:
            egd.append(client.get(64))
        # The FIFO's bytes are the key's blocks in order (the sink drops
        # the oldest of what it holds while nobody reads, so they may begin
        # and jump inside a block), and no byte went both to the FIFO and to
        # an EGD client.
        traceServed([b"".join(egd[:-1]), bytes(data), egd[-1]], [SEED])
        assertNoTraceback(self, daemon.stderr(), daemonLog(daemon))
        print(f"\nserved {served} bytes over EGD with no FIFO reader; the reader then got "
              f"{len(data)} seeded bytes")
