"""
A conformance suite for EGD servers, written once (L{EGDConformanceMixin})
and run unchanged against our daemon (C{twistd ekey --port tcp:...}) and
the real C{ekeyd} 1.1.5 (C{EGDTCPSocket(PORT, "127.0.0.1")}), each fed by
its own simulated key (C{ekey-sim --rate 0}) over a Unix socket.

The servers legitimately differ in the order they hand bytes out (ekeyd
serves the newest bytes first, ours the oldest), so nothing here depends on
ordering.  Where a server deviates from the protocol as the spec
(C{doc/egd.md}) states it, the deviation is named in the class's
C{deviations} and the test asserts the deviant behaviour, saying so,
instead of hiding it.

One server runs per test class: it is started by the class's first test
and stopped after its last (or, if only some of its tests are run, when
the process exits).  Every wait has a time limit; everything is on the
loopback interface.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from typing import Callable, Dict, List, Optional, Tuple

from twisted.trial.unittest import TestCase

from tests.interop.egdsockets import EGDSocket, waitForLevel
from tests.interop.processes import (
    RunningProcess,
    startDaemonEGD,
    startEkeydEGD,
    startSimulator,
    writeKeyring,
)
from tests.interop.requirements import findPeer
from tests.interop.seeded import traceServed

SEED = b"ekey-egd-conformance"

#: Seconds any one reply may take.
REPLY_TIMEOUT = 10.0

#: Bits a fed server should have before the tests start.
READY_BITS = 8 * 8192


class _ClassFixture:
    """
    What the interop helpers need of a test case (C{mktemp}, C{addCleanup}),
    for processes that live as long as a whole test class.
    """

    def __init__(self):
        self._cleanups: List[Tuple[Callable, tuple]] = []
        self.directory = tempfile.mkdtemp(prefix="ekey-conf-")
        self._cleanups.append((shutil.rmtree, (self.directory, True)))
        atexit.register(self.cleanUp)

    def mktemp(self) -> str:
        return tempfile.mktemp(dir=self.directory)

    def addCleanup(self, function, *args) -> None:
        self._cleanups.append((function, args))

    def cleanUp(self) -> None:
        while self._cleanups:
            function, args = self._cleanups.pop()
            try:
                function(*args)
            except Exception:
                pass


class EGDConformanceMixin:
    """
    The EGD conformance suite.  A subclass (also a L{TestCase}) provides
    L{startServer} and names its known C{deviations}.

    @cvar deviations: known deviations of the server from the spec, by
        name, with a description; the tests concerned assert the deviant
        behaviour instead.
    """

    deviations: Dict[str, str] = {}

    # Set on the class by the first test.
    _fixture: Optional[_ClassFixture] = None
    _address: Optional[Tuple[str, int]] = None
    _serverProcess: Optional[RunningProcess] = None
    _testsRun = 0

    def startServer(self, fixture: _ClassFixture) -> Tuple[str, int, RunningProcess]:
        """
        Start a fed EGD server; its processes are cleaned up by C{fixture}.

        @return: its host, port and process.
        """
        raise NotImplementedError()

    def expectedPID(self) -> str:
        """
        @return: what 0x04 must answer.
        """
        raise NotImplementedError()

    @staticmethod
    def startKey(fixture: _ClassFixture) -> Tuple[str, str]:
        """
        Start the seeded simulated key, at full speed, in C{fixture}'s
        directory.

        @return: the key's socket and the keyring that holds it.
        """
        directory = fixture.directory
        keyring = writeKeyring(os.path.join(directory, "keyring"))
        keySocket = os.path.join(directory, "key.sock")
        startSimulator(fixture, directory, listen=keySocket, seed=SEED, rate=0)
        return keySocket, keyring

    def setUp(self):
        cls = type(self)
        if cls._fixture is None:
            fixture = _ClassFixture()
            cls._fixture = fixture
            try:
                host, port, process = self.startServer(fixture)
                waitForLevel(host, port, READY_BITS, timeout=30, process=process)
            except BaseException:
                fixture.cleanUp()
                cls._fixture = None
                raise
            cls._address = (host, port)
            cls._serverProcess = process
        self.addCleanup(self._countTest)
        if cls._serverProcess.poll() is not None:
            self.fail(f"the server exited\n{cls._serverProcess.describe()}")
        self.host, self.port = cls._address
        self.server = cls._serverProcess

    def _countTest(self):
        cls = type(self)
        cls._testsRun += 1
        total = len([name for name in dir(cls) if name.startswith("test_")])
        if cls._testsRun >= total and cls._fixture is not None:
            cls._fixture.cleanUp()
            cls._fixture = None

    def connect(self) -> EGDSocket:
        """
        @return: a new client connection, closed by the test's cleanup.
        """
        client = EGDSocket(self.host, self.port, timeout=REPLY_TIMEOUT)
        self.addCleanup(client.close)
        return client

    def deviates(self, name: str) -> bool:
        """
        @return: whether this server has the known deviation C{name}.
        """
        return name in self.deviations

    def assertServerStillServes(self):
        """
        A new connection is answered.
        """
        client = self.connect()
        self.assertEqual(client.pid(), self.expectedPID())
        self.assertGreaterEqual(client.level(), 0)

    # 0x00 ------------------------------------------------------------------

    def test_levelIsBigEndianBitCount(self):
        """
        0x00 is answered with exactly 4 bytes, a big-endian count of bits
        that is a multiple of 8 (whole bytes) and, the server being fed,
        not zero.
        """
        client = self.connect()
        client.send(b"\x00")
        reply = client.recvExactly(4, "the 0x00 reply")
        bits = int.from_bytes(reply, "big")
        self.assertEqual(bits % 8, 0, reply.hex())
        self.assertGreater(bits, 0)
        client.assertNothingMore()

    # 0x01 ------------------------------------------------------------------

    def test_readNonBlocking(self):
        """
        0x01 n for n in 0, 1, 32 and 255 is answered at once with a count
        no more than n, then that many bytes; n = 0 gives a count of 0,
        and with plenty of entropy available every other read gives some.
        """
        client = self.connect()
        self.assertGreaterEqual(client.level(), 8 * 1024)
        for n in (0, 1, 32, 255):
            data = client.read(n)
            self.assertLessEqual(len(data), n)
            if n == 0:
                self.assertEqual(data, b"")
            else:
                self.assertGreater(len(data), 0, f"0x01 {n} gave nothing")
        # Still in step: the next command's reply comes next.
        self.assertEqual(client.pid(), self.expectedPID())
        client.assertNothingMore()

    # 0x02 ------------------------------------------------------------------

    def test_readBlockingOne(self):
        """
        0x02 1 is answered with exactly one byte, and nothing more.
        """
        client = self.connect()
        client.send(b"\x02\x01")
        self.assertEqual(len(client.recvExactly(1, "the 0x02 1 reply")), 1)
        client.assertNothingMore()
        self.assertEqual(client.pid(), self.expectedPID())

    def test_readBlocking255(self):
        """
        0x02 255 is answered with exactly 255 bytes (more than seven of the
        key's 32-byte blocks), and nothing more.
        """
        client = self.connect()
        client.send(b"\x02\xff")
        data = client.recvExactly(255, "the 0x02 255 reply")
        client.assertNothingMore()
        self.assertGreater(len(set(data)), 64, "255 bytes of entropy with few distinct values")
        self.assertEqual(client.pid(), self.expectedPID())

    def test_readBlockingLarge(self):
        """
        4096 bytes asked for as pipelined 0x02 requests of 255 bytes (and a
        last one of 16) arrive exactly: the key's blocks in order, each
        once (for a server that serves its newest bytes first, at least no
        32 bytes twice).
        """
        client = self.connect()
        data = client.get(4096)
        self.assertEqual(len(data), 4096)
        client.assertNothingMore()
        self.assertEqual(len(set(data)), 256, "4096 random bytes miss some byte values")
        if self.deviates("newestFirst"):
            # Whatever the alignment, no 32 bytes come twice.
            chunks = [data[i:i + 32] for i in range(0, 4096, 32)]
            self.assertEqual(len(set(chunks)), len(chunks), "a 32-byte piece came twice")
        else:
            traceServed([data], [SEED])

    # 0x03 ------------------------------------------------------------------

    def test_writeHasNoReply(self):
        """
        0x03 with 8 bytes of offered entropy is answered with nothing: the
        reply to the next command (0x04) comes next.
        """
        client = self.connect()
        client.send(b"\x03\x00\x40\x08" + b"ABCDEFGH" + b"\x04")
        self.assertEqual(client.pidReply(), self.expectedPID())
        client.assertNothingMore()

    def test_writeOfNothing(self):
        """
        0x03 offering no bytes at all (n = 0) is answered with nothing and
        the next command is answered.  Known deviation C{writeOfNothing}:
        ekeyd 1.1.5 stops answering that connection altogether (it never
        answers the next command), which this test asserts for it.
        """
        client = self.connect()
        client.send(b"\x03\x00\x00\x00" + b"\x04")
        if self.deviates("writeOfNothing"):
            client.assertNothingMore(wait=1.0)
            client.send(b"\x00")
            client.assertNothingMore(wait=1.0)
            self.assertServerStillServes()
            return
        self.assertEqual(client.pidReply(), self.expectedPID())
        client.assertNothingMore()

    def test_writeOf255(self):
        """
        0x03 offering the most bytes (255) with the next command (0x04) in
        the same send is answered with nothing, then the 0x04 reply.
        Known deviation C{writeOf255}: ekeyd 1.1.5 holds that 0x04 back
        until more bytes arrive (and in some runs loses it), which this
        test asserts for it: no reply until a 0x00 is sent, then the 0x00
        reply, with or without the late 0x04 reply before it.
        """
        client = self.connect()
        client.send(b"\x03\x07\xf8\xff" + bytes(range(255)) + b"\x04")
        if self.deviates("writeOf255"):
            client.assertNothingMore(wait=1.0)
            client.send(b"\x00")
            late = client.recvExactly(4, "a reply after 0x00")
            if late.startswith(b"\x02-1"):
                late = late[3:] + client.recvExactly(3, "the rest of the 0x00 reply")
                print("ekeyd answered the held-back 0x04 late")
            else:
                print("ekeyd lost the 0x04 after a 255-byte 0x03")
            self.assertEqual(int.from_bytes(late, "big") % 8, 0)
            client.assertNothingMore()
            return
        self.assertEqual(client.pidReply(), self.expectedPID())
        client.assertNothingMore()

    # 0x04 ------------------------------------------------------------------

    def test_pid(self):
        """
        0x04 is answered with a length byte and that much decimal text: the
        server's real process id.  Known deviation C{pid}: ekeyd 1.1.5
        answers "-1" (its subclass expects that, see L{expectedPID}).
        """
        client = self.connect()
        client.send(b"\x04")
        length = client.recvExactly(1, "the 0x04 length")[0]
        text = client.recvExactly(length, "the 0x04 text").decode("ascii")
        self.assertRegex(text, r"^-?[0-9]+$")
        self.assertEqual(text, self.expectedPID())
        client.assertNothingMore()

    # Framing ---------------------------------------------------------------

    def test_commandsSplitByteByByte(self):
        """
        Every command, sent one byte per segment with a short pause between
        them, is answered as if it had come whole.
        """
        client = self.connect()
        client.sendByteByByte(b"\x00")
        self.assertEqual(int.from_bytes(client.recvExactly(4), "big") % 8, 0)
        client.sendByteByByte(b"\x01\x20")
        self.assertLessEqual(len(client.readReply(32)), 32)
        client.sendByteByByte(b"\x02\x40")
        self.assertEqual(len(client.recvExactly(64)), 64)
        client.sendByteByByte(b"\x03\x00\x20\x04wxyz")
        client.sendByteByByte(b"\x04")
        self.assertEqual(client.pidReply(), self.expectedPID())
        client.assertNothingMore()

    def test_pipelined(self):
        """
        Several commands in one send (0x00, 0x04, 0x02 64, 0x01 16, 0x03,
        0x04, 0x00) are all answered, in order.
        """
        client = self.connect()
        client.send(b"\x00\x04\x02\x40\x01\x10\x03\x00\x10\x02ab\x04\x00")
        self.assertEqual(int.from_bytes(client.recvExactly(4), "big") % 8, 0)
        self.assertEqual(client.pidReply(), self.expectedPID())
        self.assertEqual(len(client.recvExactly(64, "the 0x02 64 reply")), 64)
        self.assertLessEqual(len(client.readReply(16)), 16)
        self.assertEqual(client.pidReply(), self.expectedPID())
        self.assertEqual(int.from_bytes(client.recvExactly(4), "big") % 8, 0)
        client.assertNothingMore()

    def test_pipelinedBlockingReadsThenPID(self):
        """
        Several blocking reads pipelined with a 0x04 behind them: the 0x04
        is answered only after all their bytes (a blocking read holds back
        the connection's later commands).
        """
        client = self.connect()
        client.send(b"\x02\x20\x02\xff\x02\x01\x04")
        self.assertEqual(len(client.recvExactly(32 + 255 + 1, "the 0x02 replies")), 288)
        self.assertEqual(client.pidReply(), self.expectedPID())
        client.assertNothingMore()

    # Errors ----------------------------------------------------------------

    def test_unknownCommandClosesConnection(self):
        """
        Each unknown command byte (0x05, 0x7f, 0xff) closes the connection
        that sent it, without a reply, and the server goes on serving new
        connections.
        """
        for byte in (0x05, 0x7F, 0xFF):
            client = self.connect()
            client.send(bytes((byte,)))
            self.assertEqual(client.waitForClose(timeout=5.0), b"",
                             f"0x{byte:02x} was answered")
            self.assertServerStillServes()

    def test_unknownCommandAfterValidOnes(self):
        """
        An unknown command byte that follows valid commands in the same
        send still closes the connection, and whatever was sent before the
        close is a correct prefix of the valid commands' replies (both
        servers, as observed, send nothing: the spec leaves it open); the
        server goes on serving.
        """
        client = self.connect()
        client.send(b"\x04\x04\x05")
        data = client.waitForClose(timeout=5.0)
        pid = self.expectedPID().encode("ascii")
        expected = 2 * (bytes((len(pid),)) + pid)
        self.assertIn(len(data), (0, len(expected) // 2, len(expected)))
        self.assertEqual(data, expected[:len(data)])
        print(f"{len(data)} bytes of replies before the close")
        self.assertServerStillServes()


class OurDaemonConformanceTests(EGDConformanceMixin, TestCase):
    """
    Our daemon, C{twistd ekey --port tcp:PORT:interface=127.0.0.1}, fed by a
    simulated key at full speed.
    """

    deviations: Dict[str, str] = {}

    def startServer(self, fixture):
        keySocket, keyring = self.startKey(fixture)
        daemon = startDaemonEGD(fixture, fixture.directory, [keySocket], keyring)
        return daemon.egdHost, daemon.egdPort, daemon

    def expectedPID(self):
        return str(self.server.pid)


class EkeydConformanceTests(EGDConformanceMixin, TestCase):
    """
    The real C{ekeyd} 1.1.5, C{EGDTCPSocket(PORT, "127.0.0.1")}, fed by a
    simulated key at full speed.  It answers requests on a ~10 ms tick.
    """

    deviations = {
        "pid": 'ekeyd answers 0x04 with "-1", not its process id',
        "writeOfNothing": "a 0x03 offering 0 bytes stops ekeyd answering that connection",
        "writeOf255": "ekeyd loses a command that follows a 255-byte 0x03 in the same send",
        "newestFirst": "ekeyd serves its newest bytes first, in reads that split its blocks, "
                       "so what a client gets is not the key's stream in order",
    }

    def startServer(self, fixture):
        findPeer("ekeyd")
        keySocket, keyring = self.startKey(fixture)
        ekeyd = startEkeydEGD(fixture, fixture.directory, [keySocket], keyring)
        return ekeyd.egdHost, ekeyd.egdPort, ekeyd

    def expectedPID(self):
        # Known deviation "pid": ekeyd 1.1.5 does not tell its process id.
        return "-1"
