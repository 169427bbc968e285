"""
Tests for L{ekey.services.sinks}: files and FIFOs that receive entropy, as
fast as they take it and no faster.
"""

import os
import stat

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial import unittest

from ekey.core.pool import EntropyPool
from ekey.services.sinks import CHUNK, RETRY_INTERVAL, FileSink, SinkError, SinkService


def pattern(n: int) -> bytes:
    """
    @return: C{n} bytes that differ from one position to the next, so that
        a lost or repeated piece shows.
    """
    return bytes((i * 7 + i // 256) % 256 for i in range(n))


class FileSinkTests(unittest.TestCase):
    """
    L{FileSink} takes from the pool only what its file or FIFO accepts,
    never drops, and caps regular files.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.pool = EntropyPool(1 << 20)

    def sink(self, path, **kwargs):
        sink = FileSink(path, reactor=self.reactor, **kwargs)
        self.addCleanup(sink.close)
        return sink

    def assertNothingLost(self, sink):
        """
        Every byte the pool handed the sink was written or is held, and at
        most one chunk is held.
        """
        self.assertEqual(self.pool.bytesOut, sink.bytesWritten + len(sink.held))
        self.assertLessEqual(len(sink.held), CHUNK)

    def test_appendsPrivately(self):
        """
        A new file is created mode 0600 and the pool's bytes are appended in
        order, all of them while the file takes them.
        """
        path = self.mktemp()
        sink = self.sink(path)
        data = pattern(10000)
        self.pool.add(data)
        sink.start(self.pool)
        self.pool.add(b"z" * 64)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), data + b"z" * 64)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(sink.bytesWritten, 10064)
        self.assertEqual(self.pool.level, 0)

    def test_cannotOpen(self):
        """
        A path in a missing directory is an error naming the path.
        """
        path = os.path.join(self.mktemp(), "nope", "out")
        self.assertIn(path, str(self.assertRaises(SinkError, FileSink, path)))

    def test_symbolicLinkRefused(self):
        """
        A symbolic link where the output file should be is refused in one
        line (O_NOFOLLOW), and its target is not touched.
        """
        target = self.mktemp()
        with open(target, "wb") as f:
            f.write(b"precious")
        link = self.mktemp()
        os.symlink(target, link)
        error = str(self.assertRaises(SinkError, FileSink, link))
        self.assertIn("symbolic link", error)
        self.assertNotIn("\n", error)
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"precious")

    def test_fifoWithoutReader(self):
        """
        A FIFO with no reader takes nothing from the pool; once a reader
        opens it, the next attempt writes the pool's bytes to it in order.
        """
        path = self.mktemp()
        os.mkfifo(path)
        sink = self.sink(path)
        self.pool.add(b"1" * 64)
        sink.start(self.pool)
        self.assertEqual(self.pool.level, 64)
        self.reactor.advance(RETRY_INTERVAL)
        self.assertEqual(self.pool.level, 64)
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, reader)
        self.reactor.advance(RETRY_INTERVAL)
        self.pool.add(b"2" * 32)
        self.assertEqual(os.read(reader, 1000), b"1" * 64 + b"2" * 32)
        self.assertEqual(self.pool.level, 0)

    def test_slowFifoReader(self):
        """
        A FIFO whose reader reads slowly gets every byte, in order; the sink
        takes no more than it has written plus one held chunk, and waits
        for writability through the reactor instead of taking more.
        """
        path = self.mktemp()
        os.mkfifo(path)
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, reader)
        sink = self.sink(path)
        data = pattern(400000)
        self.pool.add(data)
        sink.start(self.pool)
        self.assertIn(sink, self.reactor.getWriters())
        self.assertGreater(self.pool.level, 0)
        self.assertNothingLost(sink)
        received = b""
        while len(received) < len(data):
            try:
                received += os.read(reader, 5000)
            except BlockingIOError:
                pass
            self.assertNothingLost(sink)
            if sink in self.reactor.getWriters():
                sink.doWrite()
        self.assertEqual(received, data)
        self.assertEqual(self.pool.level, 0)
        self.assertEqual(sink.held, b"")

    def test_readerGoesAway(self):
        """
        Bytes taken but not written when the FIFO's reader leaves are kept
        and reach the next reader first, with nothing lost between.
        """
        path = self.mktemp()
        os.mkfifo(path)
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        sink = self.sink(path)
        data = pattern(200000)
        self.pool.add(data)
        sink.start(self.pool)
        first = b""
        while True:
            try:
                first += os.read(reader, 65536)
            except BlockingIOError:
                break
        os.close(reader)
        sink.doWrite()
        self.assertNothingLost(sink)
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, reader)
        rest = b""
        while len(first) + len(rest) < len(data):
            self.reactor.advance(RETRY_INTERVAL)
            try:
                rest += os.read(reader, 65536)
            except BlockingIOError:
                pass
            if sink in self.reactor.getWriters():
                sink.doWrite()
        self.assertEqual(first + rest, data)

    def test_capped(self):
        """
        A regular file stops growing at its cap: the sink takes no more
        from the pool and says so once; when the file shrinks it takes
        again.
        """
        path = self.mktemp()
        sink = self.sink(path, maxBytes=1000)
        self.pool.add(pattern(5000))
        with capturedLogs() as events:
            sink.start(self.pool)
            self.reactor.advance(RETRY_INTERVAL)
            self.reactor.advance(RETRY_INTERVAL)
        self.assertEqual(os.path.getsize(path), 1000)
        self.assertEqual(self.pool.level, 4000)
        self.assertTrue(sink.full)
        self.assertEqual(len([e for e in events if "cap" in e["log_format"]]), 1)
        os.truncate(path, 0)
        self.reactor.advance(RETRY_INTERVAL)
        self.assertEqual(os.path.getsize(path), 1000)
        self.assertEqual(self.pool.level, 3000)
        self.assertNothingLost(sink)

    def test_vanishedFile(self):
        """
        A file removed while the daemon writes to it is created again, and
        later blocks land in the new file.
        """
        path = self.mktemp()
        sink = self.sink(path)
        sink.start(self.pool)
        self.pool.add(b"1" * 32)
        os.unlink(path)
        self.pool.add(b"2" * 32)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"2" * 32)

    def test_fullDisk(self):
        """
        A full disk (here /dev/full) is reported, not raised: the chunk
        taken is held, and nothing more is taken until it is written.
        """
        if not os.path.exists("/dev/full"):
            raise unittest.SkipTest("no /dev/full")
        sink = self.sink("/dev/full")
        self.pool.add(b"f" * 100000)
        sink.start(self.pool)
        self.reactor.advance(RETRY_INTERVAL)
        self.reactor.advance(RETRY_INTERVAL)
        self.assertIn("space", sink._lastError)
        self.assertEqual(sink.bytesWritten, 0)
        self.assertEqual(len(sink.held), CHUNK)
        self.assertEqual(self.pool.level, 100000 - CHUNK)
        self.assertNothingLost(sink)


class SinkServiceTests(unittest.TestCase):
    """
    L{SinkService} starts and stops a sink with the daemon.
    """

    def test_startStop(self):
        """
        Started, the sink takes from the pool; stopped, it leaves the pool's
        bytes where they are and closes its file.
        """
        pool = EntropyPool(4096)
        path = self.mktemp()
        sink = FileSink(path, reactor=MemoryReactorClock())
        service = SinkService(pool, sink)
        service.startService()
        pool.add(b"s" * 64)
        service.stopService()
        pool.add(b"t" * 64)
        self.assertEqual(pool.level, 64)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"s" * 64)
        self.assertEqual(sink.fileno(), -1)


class PatternTests(unittest.TestCase):
    """
    The checker's pattern shows a lost or repeated piece.
    """

    def test_pattern(self):
        """
        Dropping any 32-byte piece of the pattern changes what follows.
        """
        data = pattern(4096)
        self.assertNotEqual(data[:1000] + data[1032:2000], data[:1968])

