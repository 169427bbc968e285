"""
Tests for L{ekey.core.stattests}: the fast FIPS 140-2 tests and repeated-run
search give exactly what a plain bit-by-bit reading of the standards gives,
in pure Python and with the C accelerator C{ekey.core._stattests}, whose
statistics equal the pure-Python ones.

Every test of results runs against both implementations; the C ones skip
when the module is not built, except under C{EKEY_REQUIRE_INTEROP=1} (as in
CI), where they fail.
"""

from __future__ import annotations

import functools
import os
import random
import sys
from itertools import groupby
from typing import List, Optional

from twisted.trial.unittest import FailTest, SkipTest, TestCase

from ekey.core import stattests
from ekey.core.stattests import (BLOCK_BYTES, LONG_RUN, MONOBIT, POKER, RUNS, fipsFailures,
                                  repeatedRun)
from tests.interop.requirements import skipUnlessRequired

try:
    from ekey.core import _stattests
except ImportError:
    _stattests = None

#: How to build the accelerator when it is missing.
NOT_BUILT = ("the C accelerator ekey.core._stattests is not built: "
             "pip install -e . (needs a C compiler and the Python headers)")


def requireAccelerator() -> None:
    """
    Skip a test of the C accelerator when it is not built, or fail it under
    C{EKEY_REQUIRE_INTEROP=1}.
    """
    if _stattests is None:
        skipUnlessRequired(NOT_BUILT)


def implementation(name: str) -> dict:
    """
    @param name: C{"python"} or C{"c"}.
    @return: the statistics functions of L{ekey.core.stattests} that one
        implementation provides, by name.
    """
    if name == "python":
        return {"fipsStatistics": stattests._fipsStatisticsPython,
                "fipsScan": stattests._fipsScanPython,
                "repeatAtDistance": stattests._repeatAtDistancePython,
                "proportionFailure": stattests._proportionFailurePython}
    requireAccelerator()
    return {"fipsStatistics": _stattests.fipsStatistics,
            "fipsScan": stattests._fipsScanC,
            "repeatAtDistance": _stattests.repeatAtDistance,
            "proportionFailure": _stattests.proportionFailure}


def useImplementation(case: TestCase, name: str) -> dict:
    """
    Make L{ekey.core.stattests} (and so everything calling its public
    functions, L{ekey.core.health} included) use one implementation for the
    rest of a test.

    @return: that implementation's functions, as L{implementation}.
    """
    functions = implementation(name)
    for attribute, function in functions.items():
        case.patch(stattests, attribute, function)
    return functions


class ReferenceCheckTests(TestCase):
    """
    The plain searches and statistics the implementations are held to find
    what they must (so that agreeing with them means something).
    """

    def test_referenceRepeat(self):
        """
        The plain repeat search finds the first repeat, counting from the
        earlier copy, and nothing where there is none.
        """
        self.assertEqual(referenceRepeat(b"xabcabc", 3, 3), 1)
        self.assertEqual(referenceRepeat(b"aab", 1, 1), 0)
        self.assertIsNone(referenceRepeat(b"abcabd", 3, 3))

    def test_referenceProportion(self):
        """
        The plain proportion test looks only at whole windows from C{start},
        counting each window's first byte.
        """
        self.assertEqual(referenceProportion(b"xyzaaab", 3, 3, 3), (3, 3))
        self.assertIsNone(referenceProportion(b"xyzaab", 3, 3, 3))
        self.assertIsNone(referenceProportion(b"xyzaaab", 1, 3, 3))
        self.assertIsNone(referenceProportion(b"xyzaa", 3, 3, 2))

    def test_referenceStatistics(self):
        """
        The plain statistics count bits, nibbles and runs as the standard
        says, on blocks whose statistics are known.
        """
        self.assertEqual(referenceStatistics(bytes(BLOCK_BYTES)),
                         (0, 5000 ** 2, (0,) * 11 + (1,), True))
        # 0x55: 20,000 runs of one bit, 10,000 of each; nibble 5 only.
        self.assertEqual(referenceStatistics(b"\x55" * BLOCK_BYTES),
                         (10000, 5000 ** 2, (10000, 0, 0, 0, 0, 0) * 2, False))
        # 0x0f: runs of four, nibbles 0 and f.
        self.assertEqual(referenceStatistics(b"\x0f" * BLOCK_BYTES),
                         (10000, 2 * 2500 ** 2, (0, 0, 0, 2500, 0, 0) * 2, False))

    def test_withBits(self):
        """
        L{withBits} writes a run of exactly the length asked, across byte
        boundaries, at the very start and the very end.
        """
        block = withBits(b"\x55" * 8, 3, "1", 10)
        self.assertEqual(format(int.from_bytes(block, "big"), "064b")[:16],
                         "0101111111111001")
        self.assertEqual(withBits(bytes(2), 0, "1", 3), b"\xe0\x00")
        self.assertEqual(withBits(b"\xff\xff", 13, "0", 3), b"\xff\xf8")

    def test_withOnes(self):
        """
        L{withOnes} gives blocks with exactly the number of ones asked.
        """
        rng = random.Random(1)
        for ones in (0, 9725, 20000):
            self.assertEqual(int.from_bytes(withOnes(rng, ones), "big").bit_count(), ones)


class PythonImplementation:
    """
    Mixin: the test runs on the pure-Python statistics.
    """

    implementation = "python"

    def setUp(self):
        super().setUp()
        self.functions = useImplementation(self, self.implementation)


class CImplementation(PythonImplementation):
    """
    Mixin: the test runs on the C accelerator's statistics.
    """

    implementation = "c"


def referenceFailures(block: bytes) -> List[str]:
    """
    FIPS 140-2 as the standard words it, one bit at a time: slow and plain,
    the yardstick for the fast version.
    """
    ones, sumSquares, runs, longRun = referenceStatistics(block)
    failed = []
    if not MONOBIT[0] < ones < MONOBIT[1]:
        failed.append("monobit")
    poker = 16 / 5000 * sumSquares - 5000
    if not POKER[0] < poker < POKER[1]:
        failed.append("poker")
    if any(not low <= count <= high for count, (low, high) in zip(runs, RUNS * 2)):
        failed.append("runs")
    if longRun:
        failed.append("long run")
    return failed


def referenceRun(data: bytes, length: int) -> Optional[int]:
    for start in range(len(data) - length + 1):
        if len(set(data[start:start + length])) == 1:
            return start
    return None


def referenceRepeat(data: bytes, distance: int, length: int) -> Optional[int]:
    """
    The plain search for C{length} bytes equal to those C{distance} before
    them.
    """
    for start in range(len(data) - distance - length + 1):
        if data[start:start + length] == data[start + distance:start + distance + length]:
            return start
    return None


def referenceProportion(data: bytes, start: int, window: int, cutoff: int):
    """
    The plain adaptive proportion test on the windows from C{start}.
    """
    while start + window <= len(data):
        count = list(data[start:start + window]).count(data[start])
        if count >= cutoff:
            return start, count
        start += window
    return None


def referenceStatistics(block: bytes):
    """
    The raw FIPS 140-2 statistics, one bit at a time: what
    L{stattests.fipsStatistics} must give.
    """
    bits = "".join(format(byte, "08b") for byte in block)
    nibbles = [int(bits[i:i + 4], 2) for i in range(0, len(bits), 4)]
    runs = {"0": [0] * 6, "1": [0] * 6}
    longest = 0
    for bit, group in groupby(bits):
        length = len(list(group))
        runs[bit][min(length, 6) - 1] += 1
        longest = max(longest, length)
    return (bits.count("1"), sum(nibbles.count(v) ** 2 for v in range(16)),
            tuple(runs["1"] + runs["0"]), longest >= LONG_RUN)


def withBits(block: bytes, position: int, fill: str, length: int) -> bytes:
    """
    @return: C{block} with bits C{position} to C{position + length - 1}
        (most significant bit of the first byte first) set to C{fill}, and
        the bits either side set to the other value, so that the run is
        exactly C{length} long.
    """
    bits = list(format(int.from_bytes(block, "big"), f"0{8 * len(block)}b"))
    bits[position:position + length] = fill * length
    other = "0" if fill == "1" else "1"
    if position:
        bits[position - 1] = other
    if position + length < len(bits):
        bits[position + length] = other
    return int("".join(bits), 2).to_bytes(len(block), "big")


def withOnes(rng: random.Random, ones: int) -> bytes:
    """
    @return: a random block with exactly C{ones} one bits.
    """
    positions = rng.sample(range(8 * BLOCK_BYTES), ones)
    number = 0
    for position in positions:
        number |= 1 << position
    return number.to_bytes(BLOCK_BYTES, "big")


@functools.lru_cache(maxsize=None)
def onlyRunsFail(more: bool) -> bytes:
    """
    A block that fails the runs test alone, with too many runs of one bit
    (C{more}) or too few: random bits, in which the middle bit of three
    equal ones (or a lone bit between two others) is flipped, ones and
    zeros in turn so that the monobit and poker tests keep passing, until
    the runs test fails.  Seeded, so always the same block.
    """
    rng = random.Random(7 if more else 9)
    bits = [rng.getrandbits(1) for _ in range(8 * BLOCK_BYTES)]
    flip = 1
    flips = 0
    while True:
        i = rng.randrange(1, len(bits) - 1)
        alike = bits[i - 1] == bits[i + 1]
        if bits[i] != flip or not alike or (bits[i - 1] == bits[i]) != more:
            continue
        bits[i] ^= 1
        flip ^= 1
        flips += 1
        if flips % 20 == 0:
            block = int("".join(map(str, bits)), 2).to_bytes(BLOCK_BYTES, "big")
            failed = referenceFailures(block)
            if failed:
                assert failed == ["runs"], failed
                return block


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


class FIPSTestsMixin:
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
                    block = withBits(bytes(base), position, fill, length)
                    self.assertEqual("long run" in fipsFailures(block), fails,
                                     (length, fill, position))

    def test_size(self):
        """
        Only whole 2,500-byte blocks are tested.
        """
        self.assertRaises(ValueError, fipsFailures, bytes(2499))


class FIPSPythonTests(PythonImplementation, FIPSTestsMixin, TestCase):
    """
    L{FIPSTestsMixin} on the pure-Python statistics.
    """


class FIPSCTests(CImplementation, FIPSTestsMixin, TestCase):
    """
    L{FIPSTestsMixin} on the C accelerator.
    """


class RepeatedRunTestsMixin:
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
            self.assertEqual(stattests.repeatAtDistance(data, 32, 32), expected)
        self.assertRaises(ValueError, stattests.repeatAtDistance, b"abc", 0, 1)


class RepeatedRunPythonTests(PythonImplementation, RepeatedRunTestsMixin, TestCase):
    """
    L{RepeatedRunTestsMixin} on the pure-Python search.
    """


class RepeatedRunCTests(CImplementation, RepeatedRunTestsMixin, TestCase):
    """
    L{RepeatedRunTestsMixin} on the C accelerator.
    """


class StatisticsTestsMixin:
    """
    The raw statistics of each implementation: exactly the plain ones, on
    every kind of input, and the same errors.
    """

    def test_sameAsReference(self):
        """
        On random and crafted blocks, and on blocks exactly at every bound
        (ones counts 9725, 9726, 10274, 10275; runs of 25 and 26 ones or
        zeros crossing byte and 64-bit word boundaries, at the very start
        and the very end), the statistics equal the plain ones.
        """
        fipsStatistics = self.functions["fipsStatistics"]
        rng = random.Random(30112026)
        blocks = [bytes(BLOCK_BYTES), b"\xff" * BLOCK_BYTES, b"\x55" * BLOCK_BYTES,
                  b"\xaa" * BLOCK_BYTES, b"\x0f" * BLOCK_BYTES, b"\x80" * BLOCK_BYTES,
                  b"\x01" * BLOCK_BYTES]
        blocks += [crafted(rng) for _ in range(30)]
        blocks += [rng.randbytes(BLOCK_BYTES) for _ in range(30)]
        blocks += [withOnes(rng, ones) for ones in (9725, 9726, 10274, 10275)]
        end = 8 * BLOCK_BYTES
        for length in (5, 6, 25, 26, 27):
            for fill in "01":
                for position in (0, 3, 60, 63, 64, 8 * 1000 + 5, end - 32 - length // 2,
                                 end - 40, end - length):
                    blocks.append(withBits(rng.randbytes(BLOCK_BYTES), position, fill, length))
        for block in blocks:
            self.assertEqual(fipsStatistics(block), referenceStatistics(block))

    def test_bounds(self):
        """
        The decisions from the statistics put each bound where the standard
        does: 9725 and 10275 ones fail, 9726 and 10274 pass; a run of 26
        fails, 25 passes, wherever it is.
        """
        fipsStatistics = self.functions["fipsStatistics"]
        rng = random.Random(5)
        for ones, fails in ((9725, True), (9726, False), (10274, False), (10275, True)):
            failed = stattests.fipsDecision(fipsStatistics(withOnes(rng, ones)))
            self.assertEqual("monobit" in failed, fails, ones)
        for length, fails in ((25, False), (26, True)):
            for fill in "01":
                for position in (0, 61, 8 * BLOCK_BYTES - 33, 8 * BLOCK_BYTES - length):
                    block = withBits(rng.randbytes(BLOCK_BYTES), position, fill, length)
                    self.assertEqual(fipsStatistics(block)[3], fails, (length, fill, position))

    def test_scanFindsTheFirstFailingBlock(self):
        """
        The scan of many blocks gives the offset of the first block that
        the decision fails, counting from where it starts and stopping at
        the last whole block before its end; None when all pass.  Its
        blocks include ones exactly at the bounds (9725 and 10275 ones
        fail, 9726 and 10274 pass; runs of 25 pass, 26 fail).
        """
        fipsScan = self.functions["fipsScan"]
        rng = random.Random(11)
        end = 8 * BLOCK_BYTES
        edgeBlocks = [withOnes(rng, 9725), withOnes(rng, 9726), withOnes(rng, 10274),
                      withOnes(rng, 10275), withBits(rng.randbytes(BLOCK_BYTES), 61, "1", 25),
                      withBits(rng.randbytes(BLOCK_BYTES), 61, "1", 26),
                      withBits(rng.randbytes(BLOCK_BYTES), end - 26, "0", 26),
                      b"\x55" * BLOCK_BYTES, onlyRunsFail(True), onlyRunsFail(False),
                      crafted(rng), crafted(rng), crafted(rng)]
        passing = [block for block in (rng.randbytes(BLOCK_BYTES) for _ in range(20))
                   if not fipsFailures(block)][:6]
        self.assertEqual(len(passing), 6)
        for edge in edgeBlocks:
            data = b"xyz" + b"".join(passing[:3]) + edge + b"".join(passing[3:]) + b"tail"
            expected = 3 + 3 * BLOCK_BYTES if fipsFailures(edge) else None
            self.assertEqual(fipsScan(data, 3, len(data)), expected)
            # Started past it, or stopped before it, the scan does not see it.
            self.assertIsNone(fipsScan(data, 3 + 4 * BLOCK_BYTES, len(data)))
            self.assertIsNone(fipsScan(data, 3, 3 + 4 * BLOCK_BYTES - 1))
        # Both outcomes were tried: 9725 and 10275 ones, a run of 26, the
        # pattern, too many and too few runs fail; 9726, 10274 and a run of
        # 25 pass.
        self.assertEqual([bool(fipsFailures(edge)) for edge in edgeBlocks[:10]],
                         [True, False, False, True, False, True, True, True, True, True])
        self.assertIsNone(fipsScan(b"".join(passing), 0, 0))

    def test_scanErrors(self):
        """
        A range outside the data is a ValueError.
        """
        fipsScan = self.functions["fipsScan"]
        data = bytes(3 * BLOCK_BYTES)
        for start, end in ((-1, 10), (10, 5), (0, len(data) + 1)):
            self.assertRaises(ValueError, fipsScan, data, start, end)

    def test_types(self):
        """
        Any bytes-like block gives the same statistics; a block of another
        length is a ValueError, something not bytes-like a TypeError.
        """
        fipsStatistics = self.functions["fipsStatistics"]
        block = os.urandom(BLOCK_BYTES)
        expected = fipsStatistics(block)
        self.assertEqual(fipsStatistics(bytearray(block)), expected)
        self.assertEqual(fipsStatistics(memoryview(block)), expected)
        self.assertEqual(fipsStatistics(memoryview(b"x" + block)[1:]), expected)
        for size in (0, 1, BLOCK_BYTES - 1, BLOCK_BYTES + 1, 2 * BLOCK_BYTES):
            self.assertRaises(ValueError, fipsStatistics, bytes(size))
        self.assertRaises(TypeError, fipsStatistics, "x" * BLOCK_BYTES)

    def test_repeatEdges(self):
        """
        The repeat search on the edge cases: empty data, data one byte too
        short, a repeat at index 0 and at the very end, distances 1 and 32.
        """
        repeat = self.functions["repeatAtDistance"]
        self.assertIsNone(repeat(b"", 1, 1))
        self.assertIsNone(repeat(b"", 32, 32))
        self.assertIsNone(repeat(b"aaa", 1, 3))
        self.assertEqual(repeat(b"aaaa", 1, 3), 0)
        self.assertEqual(repeat(b"xyzaaaa", 1, 3), 3)
        self.assertIsNone(repeat(b"xyzaaab", 1, 3))
        block = bytes(range(1, 33))
        self.assertIsNone(repeat(block + block[:31], 32, 32))
        self.assertEqual(repeat(block + block, 32, 32), 0)
        self.assertEqual(repeat(b"\x00" * 9 + block + block, 32, 32), 9)
        self.assertIsNone(repeat(b"\x00" * 9 + block + block[:-1] + b"\x00", 32, 32))
        self.assertIsNone(repeat(b"abc", 2 ** 70, 1))

    def test_repeatSameAsReference(self):
        """
        Over random data with repeats written in (some crossing an 8-byte
        boundary, some at either end), for distances and lengths from 1 to
        40, the first repeat is where the plain search finds it.
        """
        repeat = self.functions["repeatAtDistance"]
        rng = random.Random(12)
        for _ in range(300):
            data = bytearray(rng.choice(b"ab") if rng.random() < 0.3 else rng.getrandbits(8)
                             for _ in range(rng.randrange(0, 120)))
            distance, length = rng.randrange(1, 41), rng.randrange(1, 41)
            if len(data) >= distance + length and rng.random() < 0.7:
                start = rng.choice([0, len(data) - distance - length,
                                    rng.randrange(len(data) - distance - length + 1)])
                part = length + rng.randrange(-1, 2)
                for i in range(start, min(start + part, len(data) - distance)):
                    data[i + distance] = data[i]
            data = bytes(data)
            self.assertEqual(repeat(data, distance, length),
                             referenceRepeat(data, distance, length), (data, distance, length))

    def test_repeatTypesAndErrors(self):
        """
        Any bytes-like data gives the same answer; a distance or a length
        below 1 is a ValueError.
        """
        repeat = self.functions["repeatAtDistance"]
        data = os.urandom(50) + b"\x07" * 5 + os.urandom(5)
        for form in (data, bytearray(data), memoryview(data)):
            self.assertEqual(repeat(form, 1, 4), repeat(data, 1, 4))
            self.assertEqual(repeat(form, 1, 4), referenceRepeat(data, 1, 4))
        for distance, length in ((0, 1), (1, 0), (-1, 5), (5, -1)):
            self.assertRaises(ValueError, repeat, data, distance, length)
            self.assertRaises(ValueError, repeat, b"", distance, length)

    def test_proportionSameAsReference(self):
        """
        The adaptive proportion scan finds the first failing whole window
        from C{start}, and its count, where the plain test does.
        """
        proportion = self.functions["proportionFailure"]
        rng = random.Random(13)
        for _ in range(300):
            window, cutoff = rng.randrange(1, 40), rng.randrange(1, 12)
            data = bytes(rng.choice(b"abc") if rng.random() < 0.3 else rng.getrandbits(8)
                         for _ in range(rng.randrange(0, 200)))
            start = rng.randrange(0, 50)
            self.assertEqual(proportion(data, start, window, cutoff),
                             referenceProportion(data, start, window, cutoff))

    def test_proportionTypesAndErrors(self):
        """
        Any bytes-like data gives the same answer; a start below 0 or a
        window below 1 is a ValueError.
        """
        proportion = self.functions["proportionFailure"]
        data = os.urandom(20) + b"\x01" * 20
        for form in (data, bytearray(data), memoryview(data)):
            self.assertEqual(proportion(form, 0, 20, 19), (20, 20))
        self.assertRaises(ValueError, proportion, data, -1, 20, 3)
        self.assertRaises(ValueError, proportion, data, 0, 0, 3)


class StatisticsPythonTests(PythonImplementation, StatisticsTestsMixin, TestCase):
    """
    L{StatisticsTestsMixin} on the pure-Python statistics.
    """


class StatisticsCTests(CImplementation, StatisticsTestsMixin, TestCase):
    """
    L{StatisticsTestsMixin} on the C accelerator.
    """

    def test_sameAsPython(self):
        """
        On hundreds of random and crafted blocks the C statistics equal the
        pure-Python ones, as do both searches on random data.
        """
        rng = random.Random(424242)
        blocks = [crafted(rng) for _ in range(300)] + [rng.randbytes(BLOCK_BYTES)
                                                      for _ in range(300)]
        for block in blocks:
            self.assertEqual(_stattests.fipsStatistics(block),
                             stattests._fipsStatisticsPython(block))
        for _ in range(300):
            data = bytes(rng.choice(b"ab") if rng.random() < 0.5 else rng.getrandbits(8)
                         for _ in range(rng.randrange(0, 300)))
            for distance, length in ((1, 1), (1, 6), (32, 32), (3, 2)):
                self.assertEqual(_stattests.repeatAtDistance(data, distance, length),
                                 stattests._repeatAtDistancePython(data, distance, length))
            self.assertEqual(_stattests.proportionFailure(data, 3, 16, 6),
                             stattests._proportionFailurePython(data, 3, 16, 6))


class PassingBoundsTests(TestCase):
    """
    The ranges the C scan checks are those the one decision passes.
    """

    def test_boundsAreTheDecisions(self):
        """
        Just inside each range the decision passes that statistic, just
        outside it fails it: monobit, poker (on the sum of squares) and
        every run count.
        """
        onesLow, onesHigh, squaresLow, squaresHigh, runsLow, runsHigh = stattests._PASSING
        middle = ((2500, 1250, 625, 312, 156, 156) * 2)

        def failed(ones=10000, squares=1570000, runs=middle, longRun=False):
            return stattests.fipsDecision((ones, squares, tuple(runs), longRun))

        self.assertEqual(failed(), [])
        self.assertEqual(failed(longRun=True), ["long run"])
        for ones, expected in ((onesLow - 1, ["monobit"]), (onesLow, []), (onesHigh, []),
                               (onesHigh + 1, ["monobit"])):
            self.assertEqual(failed(ones=ones), expected, ones)
        for squares, expected in ((squaresLow - 1, ["poker"]), (squaresLow, []),
                                  (squaresHigh, []), (squaresHigh + 1, ["poker"])):
            self.assertEqual(failed(squares=squares), expected, squares)
        for k in range(12):
            for count, expected in ((runsLow[k] - 1, ["runs"]), (runsLow[k], []),
                                    (runsHigh[k], []), (runsHigh[k] + 1, ["runs"])):
                runs = list(middle)
                runs[k] = count
                self.assertEqual(failed(runs=runs), expected, (k, count))


class AcceleratorTests(TestCase):
    """
    Which implementation L{ekey.core.stattests} uses.
    """

    def test_accelerated(self):
        """
        The C module is built (here a skip unless required: CI requires it),
        L{stattests.ACCELERATED} says so and the public functions are its.
        """
        requireAccelerator()
        self.assertTrue(stattests.ACCELERATED)
        self.assertIs(stattests.fipsStatistics, _stattests.fipsStatistics)
        self.assertIs(stattests.repeatAtDistance, _stattests.repeatAtDistance)
        self.assertIs(stattests.proportionFailure, _stattests.proportionFailure)

    def test_requireAccelerator(self):
        """
        Without the module, a C test is skipped, or fails under
        C{EKEY_REQUIRE_INTEROP=1}.
        """
        self.patch(sys.modules[__name__], "_stattests", None)
        self.patch(os, "environ", {})
        self.assertRaises(SkipTest, requireAccelerator)
        self.patch(os, "environ", {"EKEY_REQUIRE_INTEROP": "1"})
        self.assertRaises(FailTest, requireAccelerator)
