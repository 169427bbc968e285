"""
Tests for L{ekey.core.health}: continuous tests on a key's output.

The monitor's tests run on both implementations of the statistics (pure
Python, and the C accelerator: skipped when not built, failed under
C{EKEY_REQUIRE_INTEROP=1}).
"""

import os
import random
from collections import Counter
from itertools import groupby

from twisted.trial import unittest

from ekey.core import health, stattests
from ekey.core.health import (
    FIPS_BLOCK_BYTES,
    HealthMonitor,
    fipsFailures,
    proportionCutoff,
    repetitionCutoff,
)
from tests.test_stattests import CImplementation, PythonImplementation


def naiveRuns(block):
    """
    Run lengths of a block's bits, counted bit by bit.
    """
    bits = format(int.from_bytes(block, "big"), f"0{8 * len(block)}b")
    runs = {"0": Counter(), "1": Counter()}
    longest = 0
    for bit, group in groupby(bits):
        length = len(list(group))
        longest = max(longest, length)
        runs[bit][min(length, 6)] += 1
    return [runs["1"][n] for n in range(1, 7)] + [runs["0"][n] for n in range(1, 7)], longest


class CutoffTests(unittest.TestCase):
    """
    The SP 800-90B cut-offs for 7 bits of min-entropy per byte and a false
    alarm rate of 2**-40.
    """

    def test_values(self):
        """
        The repetition count cut-off is 1 + ceil(40 / 7) = 7; the adaptive
        proportion cut-off for a 512-byte window is 27.
        """
        self.assertEqual(repetitionCutoff(7), 7)
        self.assertEqual(proportionCutoff(7), 27)
        self.assertEqual(repetitionCutoff(1), 41)


class FIPSTestsMixin:
    """
    The FIPS 140-2 tests.
    """

    def test_runsMatchNaiveCount(self):
        """
        The run counting agrees with counting bit by bit, also for blocks
        starting and ending with zeros or ones.
        """
        for block in [os.urandom(FIPS_BLOCK_BYTES) for _ in range(20)] + [
                bytes(3) + os.urandom(FIPS_BLOCK_BYTES - 6) + bytes(3),
                b"\xff" * 3 + os.urandom(FIPS_BLOCK_BYTES - 6) + b"\xff" * 3]:
            ones, sumSquares, runs, longRun = self.functions["fipsStatistics"](block)
            expected, longest = naiveRuns(block)
            self.assertEqual(list(runs), expected)
            self.assertEqual(longRun, longest >= 26)

    def test_bigIntegerRuns(self):
        """
        The pure-Python big-integer run counting agrees with counting bit by
        bit.
        """
        for block in [os.urandom(FIPS_BLOCK_BYTES) for _ in range(5)] + [
                bytes(3) + os.urandom(FIPS_BLOCK_BYTES - 6) + bytes(3)]:
            x = int.from_bytes(block, "big")
            ones, longOnes = stattests._runCounts(x)
            zeros, longZeros = stattests._runCounts(x ^ ((1 << 8 * FIPS_BLOCK_BYTES) - 1))
            expected, longest = naiveRuns(block)
            self.assertEqual(ones + zeros, expected)
            self.assertEqual(longOnes or longZeros, longest >= 26)

    def test_badBlocks(self):
        """
        Constant, biased and patterned blocks fail the tests they should.
        """
        self.assertIn("monobit", fipsFailures(bytes(FIPS_BLOCK_BYTES)))
        self.assertIn("long run", fipsFailures(bytes(FIPS_BLOCK_BYTES)))
        self.assertIn("poker", fipsFailures(b"\x0f" * FIPS_BLOCK_BYTES))
        self.assertIn("runs", fipsFailures(b"\x55" * FIPS_BLOCK_BYTES))
        self.assertRaises(ValueError, fipsFailures, b"short")

    def test_randomPasses(self):
        """
        Random blocks almost always pass (about one in 1,250 fails).
        """
        failures = sum(bool(fipsFailures(os.urandom(FIPS_BLOCK_BYTES))) for _ in range(50))
        self.assertLessEqual(failures, 2)


class FIPSPythonTests(PythonImplementation, FIPSTestsMixin, unittest.TestCase):
    """
    L{FIPSTestsMixin} on the pure-Python statistics.
    """


class FIPSCTests(CImplementation, FIPSTestsMixin, unittest.TestCase):
    """
    L{FIPSTestsMixin} on the C accelerator.
    """


class MonitorTestsMixin:
    """
    L{HealthMonitor} releases only tested bytes and stops for good.
    """

    def test_releasesWholeBlocks(self):
        """
        Random data comes out unchanged, in order, once its FIPS blocks have
        passed, in whole 32-byte blocks.
        """
        monitor = HealthMonitor()
        data = os.urandom(32 * 400)
        out = []
        for i in range(0, len(data), 32):
            out.extend(monitor.feed(data[i : i + 32]))
        released = b"".join(out)
        # 12,800 bytes: five FIPS blocks (12,500 bytes) tested, released in
        # whole 32-byte blocks (12,480 bytes); the rest waits.
        self.assertEqual(released, data[:12480])
        self.assertTrue(all(len(chunk) % 32 == 0 for chunk in out))
        self.assertIsNone(monitor.failure)

    def test_streamEnded(self):
        """
        When the stream is cut, what was held is dropped: the next stream's
        first FIPS block is its own, and nothing from before the cut comes
        out; the counts are kept.
        """
        monitor = HealthMonitor()
        before = os.urandom(32 * 100)
        out = [chunk for i in range(0, len(before), 32) for chunk in monitor.feed(before[i:i + 32])]
        self.assertEqual(b"".join(out), before[:2496])
        self.assertEqual(monitor.streamEnded(), len(before) - 2496)
        after = os.urandom(32 * 80)
        out = [chunk for i in range(0, len(after), 32) for chunk in monitor.feed(after[i:i + 32])]
        self.assertEqual(b"".join(out), after[:2496])
        self.assertEqual(monitor.fipsBlocks, 2)
        self.assertEqual(monitor.streamEnded(), len(after) - 2496)

    def test_repetitionAcrossChunks(self):
        """
        A byte repeated seven times fails, even split across two feeds, and
        nothing held is released afterwards.
        """
        monitor = HealthMonitor()
        monitor.feed(os.urandom(100) + b"\x07" * 4)
        self.assertEqual(monitor.feed(b"\x07" * 3 + os.urandom(5000)), [])
        self.assertIn("repetition count", monitor.failure)
        self.assertEqual(monitor.feed(os.urandom(5000)), [])

    def test_adaptiveProportion(self):
        """
        A byte making up a tenth of a window fails the proportion test.
        """
        monitor = HealthMonitor()
        window = bytes(i % 10 * 17 for i in range(512))
        self.assertEqual(monitor.feed(window), [])
        self.assertIn("adaptive proportion", monitor.failure)

    def test_stuckBlock(self):
        """
        A repeated 32-byte block is a stuck generator.
        """
        monitor = HealthMonitor()
        block = bytes(range(32))
        monitor.feed(block)
        monitor.feed(block)
        self.assertIn("stuck", monitor.failure)

    def test_fipsFailureRate(self):
        """
        Occasional FIPS failures are dropped but tolerated; five in the last
        hundred blocks stop the monitor.
        """
        monitor = HealthMonitor()

        def biased():
            # Every byte's top bit set: fails monobit, passes the others.
            return bytes(b | 0x80 for b in os.urandom(FIPS_BLOCK_BYTES))

        good = os.urandom(FIPS_BLOCK_BYTES)
        released = monitor.feed(biased())
        self.assertEqual(released, [])
        self.assertIsNone(monitor.failure)
        for _ in range(3):
            monitor.feed(biased())
        self.assertIsNone(monitor.failure)
        monitor.feed(biased())
        # The fifth block is tested once its last proportion window is
        # complete, which the next bytes do; they are not released.
        self.assertEqual(monitor.feed(good), [])
        self.assertIn("FIPS 140-2", monitor.failure)
        self.assertEqual(monitor.feed(good), [])


class MonitorPythonTests(PythonImplementation, MonitorTestsMixin, unittest.TestCase):
    """
    L{MonitorTestsMixin} on the pure-Python statistics.
    """


class MonitorCTests(CImplementation, MonitorTestsMixin, unittest.TestCase):
    """
    L{MonitorTestsMixin} on the C accelerator.
    """


class RepeatedBlockTestsMixin:
    """
    A repeated 32-byte block stops the stream however the bytes are fed:
    inside one large feed (an upstream's 224-byte replies), and across the
    boundary of two feeds.
    """

    def test_insideOneFeed(self):
        """
        Seven blocks in one feed, the fifth equal to the fourth.
        """
        blocks = [os.urandom(32) for _ in range(7)]
        blocks[4] = blocks[3]
        monitor = HealthMonitor()
        self.assertEqual(monitor.feed(b"".join(blocks)), [])
        self.assertIn("32-byte block repeated", monitor.failure)

    def test_acrossFeeds(self):
        """
        A block repeated at the start of the next feed, split unevenly.
        """
        block = os.urandom(32)
        monitor = HealthMonitor()
        monitor.feed(os.urandom(100) + block[:20])
        self.assertIsNone(monitor.failure)
        monitor.feed(block[20:] + block + os.urandom(50))
        self.assertIn("32-byte block repeated", monitor.failure)

    def test_randomPasses(self):
        """
        Random bytes in feeds of any size do not trip it.
        """
        monitor = HealthMonitor()
        for size in (1, 31, 32, 33, 224, 4096, 7):
            monitor.feed(os.urandom(size))
        self.assertIsNone(monitor.failure)


class RepeatedBlockPythonTests(PythonImplementation, RepeatedBlockTestsMixin,
                               unittest.TestCase):
    """
    L{RepeatedBlockTestsMixin} on the pure-Python statistics.
    """


class RepeatedBlockCTests(CImplementation, RepeatedBlockTestsMixin, unittest.TestCase):
    """
    L{RepeatedBlockTestsMixin} on the C accelerator.
    """


def feedAll(monitor, data, sizes):
    """
    Feed C{data} to C{monitor} in chunks of the sizes given, in turn.

    @return: the bytes released, joined.
    """
    out, offset, turn = [], 0, 0
    while offset < len(data):
        size = sizes[turn % len(sizes)]
        out.extend(monitor.feed(data[offset:offset + size]))
        offset += size
        turn += 1
    return b"".join(out)


class ChunkingTestsMixin:
    """
    What the monitor releases and why it fails depend only on the stream,
    not on how it is cut into feeds: one large feed (a relay's) gives what
    many small ones (a key's) give.
    """

    def setUp(self):
        super().setUp()
        self.random = random.Random(2026)

    def stream(self, size):
        """
        @return: C{size} pseudo-random bytes, the same in every run (so that
            no block fails FIPS 140-2 by chance, as one random block in
            1,250 does), with no run of 7.
        """
        data = bytearray(self.random.randbytes(size))
        for i in range(6, size, 6):
            if data[i] == data[i - 1]:
                data[i] ^= 0x01
        return bytes(data)

    def test_releasedSameWhateverTheFeeds(self):
        """
        Random data fed in one piece, in 32-byte, in odd-sized and in
        growing pieces is released alike: every whole 32-byte block of the
        FIPS blocks tested, in order.
        """
        data = self.stream(40000)
        # Everything but the last incomplete proportion window is tested:
        # 78 windows, 39,936 bytes, 15 FIPS blocks, 37,472 bytes released.
        blocks = len(data) // health.APT_WINDOW * health.APT_WINDOW // FIPS_BLOCK_BYTES
        expected = data[:blocks * FIPS_BLOCK_BYTES // 32 * 32]
        self.assertEqual(len(expected), 37472)
        for sizes in ([len(data)], [32], [1, 255, 511, 4096], [65536], [513, 2500, 7]):
            monitor = HealthMonitor()
            released = feedAll(monitor, data, sizes)
            self.assertIsNone(monitor.failure, sizes)
            self.assertEqual(released, expected, sizes)
            self.assertEqual(monitor.fipsBlocks, blocks, sizes)

    def test_proportionFailureLateInOneFeed(self):
        """
        A window failing the adaptive proportion test deep inside one large
        feed, after a window held from the feed before, stops the monitor
        with that window's byte; nothing of the feed is released.
        """
        cutoff = proportionCutoff(7)
        for sizes in ([300, 30000], [30300], [100, 200, 30000]):
            data = bytearray(self.stream(30300))
            # The 40th window (bytes 19968 to 20479) starts with 0x42 and
            # has it cutoff times.
            start = 39 * health.APT_WINDOW
            for i in range(cutoff):
                data[start + 10 * i] = 0x42
            monitor = HealthMonitor()
            feedAll(monitor, bytes(data), sizes)
            self.assertIn("byte 0x42 appeared", monitor.failure)
            self.assertIn("adaptive proportion", monitor.failure)
            self.assertLessEqual(monitor.fipsBlocks, start // FIPS_BLOCK_BYTES)

    def test_proportionPassesBelowCutoff(self):
        """
        One fewer than the cut-off passes, in any window of a large feed.
        """
        cutoff = proportionCutoff(7)
        data = bytearray(self.stream(30000))
        start = 20 * health.APT_WINDOW
        marked = {start + 10 * i for i in range(cutoff - 1)}
        for i in range(start, start + health.APT_WINDOW):
            if i in marked:
                data[i] = 0x42
            elif data[i] == 0x42:
                data[i] = 0x43
        monitor = HealthMonitor()
        feedAll(monitor, bytes(data), [len(data)])
        self.assertIsNone(monitor.failure)

    def test_fipsFailureInsideOneFeed(self):
        """
        Blocks failing FIPS 140-2 inside one large feed are dropped and the
        others released in order; the fifth failure stops the monitor at
        once, releasing nothing of that feed.
        """
        blocks = [bytearray(self.stream(FIPS_BLOCK_BYTES)) for _ in range(8)]
        for i in (1, 2):
            # Top bit of every byte set: fails monobit only.
            blocks[i] = bytearray(b | 0x80 for b in blocks[i])
        monitor = HealthMonitor()
        released = feedAll(monitor, b"".join(blocks) + self.stream(600), [100000])
        passed = b"".join(bytes(blocks[i]) for i in (0, 3, 4, 5, 6, 7))
        self.assertEqual(released, passed[:len(passed) // 32 * 32])
        self.assertEqual((monitor.fipsBlocks, monitor.fipsFailed), (8, 2))
        biased = [bytes(b | 0x80 for b in self.stream(FIPS_BLOCK_BYTES)) for _ in range(3)]
        self.assertEqual(monitor.feed(b"".join(biased) + self.stream(600)), [])
        self.assertIn("5 of the last 11 FIPS 140-2 blocks failed", monitor.failure)


class ChunkingPythonTests(PythonImplementation, ChunkingTestsMixin, unittest.TestCase):
    """
    L{ChunkingTestsMixin} on the pure-Python statistics.
    """


class ChunkingCTests(CImplementation, ChunkingTestsMixin, unittest.TestCase):
    """
    L{ChunkingTestsMixin} on the C accelerator.
    """
