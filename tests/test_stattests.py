"""
Tests for L{ekey.core.stattests}: the fast FIPS 140-2 tests and repeated-run
search give exactly what a plain bit-by-bit reading of the standards gives.
"""

from __future__ import annotations

import os
import random
from itertools import groupby
from typing import List, Optional

from twisted.trial.unittest import TestCase

from ekey.core.stattests import (BLOCK_BYTES, LONG_RUN, MONOBIT, POKER, RUNS, fipsFailures,
                                  repeatAtDistance, repeatedRun)


def referenceFailures(block: bytes) -> List[str]:
    """
    FIPS 140-2 as the standard words it, one bit at a time: slow and plain,
    the yardstick for the fast version.
    """
    bits = "".join(format(byte, "08b") for byte in block)
    failed = []
    if not MONOBIT[0] < bits.count("1") < MONOBIT[1]:
        failed.append("monobit")
    nibbles = [int(bits[i:i + 4], 2) for i in range(0, len(bits), 4)]
    poker = 16 / 5000 * sum(nibbles.count(v) ** 2 for v in range(16)) - 5000
    if not POKER[0] < poker < POKER[1]:
        failed.append("poker")
    runs = {"0": [0] * 6, "1": [0] * 6}
    longest = 0
    for bit, group in groupby(bits):
        length = len(list(group))
        runs[bit][min(length, 6) - 1] += 1
        longest = max(longest, length)
    if any(not low <= count <= high
           for counts in (runs["1"], runs["0"]) for count, (low, high) in zip(counts, RUNS)):
        failed.append("runs")
    if longest >= LONG_RUN:
        failed.append("long run")
    return failed


def referenceRun(data: bytes, length: int) -> Optional[int]:
    for start in range(len(data) - length + 1):
        if len(set(data[start:start + length])) == 1:
            return start
    return None


def crafted(rng: random.Random) -> bytes:
    """
    A block near the tests' edges: random, with a run, a bias or a pattern
    written into it.
    """
    block = bytearray(rng.getrandbits(8) for _ in range(BLOCK_BYTES))
    kind = rng.randrange(4)
    if kind == 0:
        start, length = rng.randrange(BLOCK_BYTES - 5), rng.randrange(1, 5)
        block[start:start + length] = bytes([rng.choice((0, 255))]) * length
    elif kind == 1:
        for i in range(0, BLOCK_BYTES, rng.randrange(2, 9)):
            block[i] |= 0x80
    elif kind == 2:
        for i in range(rng.randrange(0, 300)):
            block[rng.randrange(BLOCK_BYTES)] &= 0x0F
    return bytes(block)


class ReferenceTests(TestCase):
    """
    The yardstick itself fails what it must.
    """

    def test_referenceRejects(self):
        """
        All zeros fail every test; a long run alone fails the long-run test;
        alternating bits fail poker and runs.
        """
        self.assertEqual(referenceFailures(bytes(BLOCK_BYTES)),
                         ["monobit", "poker", "runs", "long run"])
        self.assertEqual(referenceFailures(b"\x55" * BLOCK_BYTES), ["poker", "runs"])
        block = bytearray(os.urandom(BLOCK_BYTES))
        block[100:104] = b"\xff\xff\xff\xff"
        self.assertIn("long run", referenceFailures(bytes(block)))

    def test_referenceRun(self):
        """
        The plain run search finds the first run of the length asked.
        """
        self.assertEqual(referenceRun(b"abbbcccc", 4), 4)
        self.assertIsNone(referenceRun(b"abbbccc", 4))


class FIPSTests(TestCase):
    """
    L{fipsFailures} against the yardstick.
    """

    def test_sameAsReference(self):
        """
        On random blocks, and on blocks made to sit near or past each test's
        bounds, the fast tests and the plain ones agree exactly.
        """
        rng = random.Random(20261130)
        blocks = [bytes(BLOCK_BYTES), b"\xff" * BLOCK_BYTES, b"\x55" * BLOCK_BYTES,
                  b"\x0f" * BLOCK_BYTES]
        blocks += [crafted(rng) for _ in range(60)]
        blocks += [os.urandom(BLOCK_BYTES) for _ in range(20)]
        kinds = set()
        for block in blocks:
            expected = referenceFailures(block)
            self.assertEqual(fipsFailures(block), expected)
            kinds.update(expected)
        # The blocks exercised every test's failure, not only passes.
        self.assertEqual(kinds, {"monobit", "poker", "runs", "long run"})

    def test_longRunBoundary(self):
        """
        25 ones in a row pass the long-run test, 26 fail it, at the start,
        the end and the middle of a block, for ones and zeros alike.
        """
        base = bytearray(b"\x55" * BLOCK_BYTES)
        for length, fails in ((25, False), (26, True)):
            for fill in ("1", "0"):
                for position in (0, 7000, 8 * BLOCK_BYTES - length):
                    bits = list(format(int.from_bytes(base, "big"), f"0{8 * BLOCK_BYTES}b"))
                    bits[position:position + length] = fill * length
                    # Break the run where it would join its neighbours.
                    other = "0" if fill == "1" else "1"
                    if position:
                        bits[position - 1] = other
                    if position + length < len(bits):
                        bits[position + length] = other
                    block = int("".join(bits), 2).to_bytes(BLOCK_BYTES, "big")
                    self.assertEqual("long run" in fipsFailures(block), fails,
                                     (length, fill, position))

    def test_size(self):
        """
        Only whole 2,500-byte blocks are tested.
        """
        self.assertRaises(ValueError, fipsFailures, bytes(2499))


class RepeatedRunTests(TestCase):
    """
    L{repeatedRun} against a plain search.
    """

    def test_sameAsReference(self):
        """
        Over random data with runs written into it, the first run of the
        length asked is found where the plain search finds it, or nowhere.
        """
        rng = random.Random(7)
        for _ in range(400):
            data = bytearray(rng.choice(b"ab") if rng.random() < 0.5 else rng.getrandbits(8)
                             for _ in range(rng.randrange(0, 80)))
            if len(data) > 10 and rng.random() < 0.5:
                start, length = rng.randrange(len(data) - 8), rng.randrange(4, 9)
                data[start:start + length] = bytes([rng.getrandbits(8)]) * length
            for length in (2, 5, 7):
                self.assertEqual(repeatedRun(bytes(data), length),
                                 referenceRun(bytes(data), length))

    def test_edges(self):
        """
        A run at either end is found; data shorter than the run is not; a
        length below 2 is a caller's error.
        """
        self.assertEqual(repeatedRun(b"\x00\x00\x00xyz", 3), 0)
        self.assertEqual(repeatedRun(b"xyz\x07\x07\x07", 3), 3)
        self.assertIsNone(repeatedRun(b"\x07\x07", 3))
        self.assertRaises(ValueError, repeatedRun, b"abc", 1)

    def test_distance(self):
        """
        A stretch equal to the one C{distance} bytes before it is found where
        a plain search finds it.
        """
        rng = random.Random(11)
        for _ in range(300):
            data = bytearray(rng.getrandbits(8) for _ in range(rng.randrange(0, 200)))
            if len(data) > 70 and rng.random() < 0.5:
                start = rng.randrange(len(data) - 64)
                data[start + 32:start + 64] = data[start:start + 32]
            data = bytes(data)
            expected = next((i for i in range(len(data) - 63)
                             if data[i:i + 32] == data[i + 32:i + 64]), None)
            self.assertEqual(repeatAtDistance(data, 32, 32), expected)
        self.assertRaises(ValueError, repeatAtDistance, b"abc", 0, 1)
