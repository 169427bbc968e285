"""
Tests for L{ekey.services.sinks}: files and FIFOs that receive entropy.
"""

import os
import stat

from twisted.trial import unittest

from ekey.services.sinks import FileSink, SinkError


class FileSinkTests(unittest.TestCase):
    """
    L{FileSink} appends to files and never blocks on FIFOs.
    """

    def test_appendsPrivately(self):
        """
        A new file is created mode 0600 and blocks are appended in order.
        """
        path = self.mktemp()
        sink = FileSink(path)
        self.addCleanup(sink.close)
        sink.write(b"a" * 32)
        sink.write(b"b" * 32)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"a" * 32 + b"b" * 32)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(sink.bytesWritten, 64)

    def test_cannotOpen(self):
        """
        A path in a missing directory is an error naming the path.
        """
        path = os.path.join(self.mktemp(), "nope", "out")
        self.assertIn(path, str(self.assertRaises(SinkError, FileSink, path)))

    def test_fifoWithoutReader(self):
        """
        A FIFO with no reader does not block: bytes are held, and reach the
        reader in order once one opens it.
        """
        path = self.mktemp()
        os.mkfifo(path)
        sink = FileSink(path)
        self.addCleanup(sink.close)
        sink.write(b"1" * 32)
        self.assertEqual(sink.bytesWritten, 0)
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, reader)
        sink.write(b"2" * 32)
        self.assertEqual(os.read(reader, 100), b"1" * 32 + b"2" * 32)

    def test_fullFifoIsBounded(self):
        """
        A reader that never reads makes the sink hold at most its bound and
        count what it drops.
        """
        path = self.mktemp()
        os.mkfifo(path)
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, reader)
        sink = FileSink(path, pendingLimit=4096)
        self.addCleanup(sink.close)
        for _ in range(5000):
            sink.write(b"x" * 32)
        self.assertLessEqual(len(sink._pending), 4096)
        self.assertEqual(sink.bytesWritten + len(sink._pending) + sink.bytesDropped, 5000 * 32)
        self.assertGreater(sink.bytesDropped, 0)

    def test_vanishedFile(self):
        """
        A file removed while the daemon writes to it is created again, and
        later blocks land in the new file.
        """
        path = self.mktemp()
        sink = FileSink(path)
        self.addCleanup(sink.close)
        sink.write(b"1" * 32)
        os.unlink(path)
        sink.write(b"2" * 32)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"2" * 32)

    def test_fullDisk(self):
        """
        A full disk (here /dev/full) is reported, not raised, and what it
        cannot take is held within the bound and counted when dropped.
        """
        if not os.path.exists("/dev/full"):
            raise unittest.SkipTest("no /dev/full")
        sink = FileSink("/dev/full", pendingLimit=64)
        self.addCleanup(sink.close)
        for _ in range(4):
            sink.write(b"f" * 32)
        self.assertIn("space", sink._lastError)
        self.assertEqual(sink.bytesWritten, 0)
        self.assertEqual(sink.bytesDropped, 64)
