# -*- test-case-name: tests.test_stattests -*-
"""
The statistical tests every verified byte goes through: the FIPS 140-2
tests (monobit, poker, runs, long run) on one 20,000-bit block, as rngd
applies them (change notice 1 bounds), and the search for a run of one byte
value that SP 800-90B's repetition count test fails on.

Each test is two steps: the raw statistics of the data (bit and nibble
counts, run counts, where a repeat starts), then the decision against the
bounds.  The statistics come from the optional C module
C{ekey.core._stattests} when it is built (L{ACCELERATED}), else from the
pure-Python code below, which is kept as the fallback and as the yardstick
the tests hold the C code to; the decisions are one Python function,
L{fipsDecision}, whichever computed the statistics.

The pure-Python statistics are written for speed: the block is one big
integer, and each test is a handful of whole-block operations (shifts, ANDs,
popcounts) that run in C, rather than a loop over 20,000 bits.

  - C{y_k}, the bits that start C{k} ones in a row, is
    C{y_{k-1} & (y_{k-1} >> 1)}; a run of length C{L >= k} is one run of
    C{y_k}, and C{y_k} has C{popcount(y_k) - popcount(y_{k+1})} runs, so the
    runs of each length come from seven popcounts;
  - the long run (26 or more) doubles up from C{y_6}: C{y_12}, C{y_24},
    then C{y_26 = y_24 & (y_2 >> 24)};
  - the poker test's nibble counts come from the four bit planes of the
    nibbles, combined two by two.

The C module does the same on 64-bit words, and the nibble counts from a
byte histogram.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

try:
    from ekey.core import _stattests
except ImportError:  # not built: no compiler where ekey was installed
    _stattests = None

#: Whether the statistics come from the C module C{ekey.core._stattests}.
ACCELERATED = _stattests is not None

#: What L{fipsStatistics} gives: the number of one bits, the sum over the 16
#: nibble values of their count squared, the runs of ones of lengths 1 to 5
#: and 6 or more then the same for zeros, and whether a run of L{LONG_RUN}
#: or more of either bit occurs.
FIPSStatistics = Tuple[int, int, Tuple[int, ...], bool]

BLOCK_BYTES = 2500
BLOCK_BITS = 8 * BLOCK_BYTES

# FIPS 140-2 (change notice 1) bounds, as rngd applies them.
MONOBIT = (9725, 10275)
POKER = (2.16, 46.17)
RUNS = ((2315, 2685), (1114, 1386), (527, 723), (240, 384), (103, 209), (103, 209))
LONG_RUN = 26

_MASK = (1 << BLOCK_BITS) - 1
#: Bit 0 of every nibble.
_PLANE = int("1" * (BLOCK_BITS // 4), 16)


def _runCounts(x: int) -> Tuple[List[int], bool]:
    """
    @return: the number of runs of ones in C{x} of lengths 1 to 5 and of 6
        or more, and whether it has a run of L{LONG_RUN} or more.
    """
    ys = [x]
    y = x
    for _ in range(6):
        y &= y >> 1
        ys.append(y)
    counts = [v.bit_count() for v in ys]
    atLeast = [counts[k] - counts[k + 1] for k in range(6)]
    exact = [atLeast[k] - atLeast[k + 1] for k in range(5)] + [atLeast[5]]
    longRun = False
    y6 = ys[5]
    if y6:
        y12 = y6 & (y6 >> 6)
        if y12:
            y24 = y12 & (y12 >> 12)
            longRun = bool(y24 & (ys[1] >> 24))
    return exact, longRun


def _nibbleCounts(x: int) -> List[int]:
    """
    @return: how many of the block's 5,000 nibbles have each value 0 to 15.
    """
    planes = [(x >> i) & _PLANE for i in range(4)]
    low = []
    for b1 in (planes[1] ^ _PLANE, planes[1]):
        for b0 in (planes[0] ^ _PLANE, planes[0]):
            low.append(b1 & b0)
    counts = []
    for b3 in (planes[3] ^ _PLANE, planes[3]):
        for b2 in (planes[2] ^ _PLANE, planes[2]):
            high = b3 & b2
            counts.extend((high & pair).bit_count() for pair in low)
    return counts


def _fipsStatisticsPython(block) -> FIPSStatistics:
    """
    The raw FIPS 140-2 statistics of one block, in pure Python.

    @param block: 2,500 bytes (any bytes-like object).
    @return: see L{FIPSStatistics}.
    @raise ValueError: unless the block is 2,500 bytes.
    """
    if len(block) != BLOCK_BYTES:
        raise ValueError("a FIPS 140-2 block is 2,500 bytes")
    number = int.from_bytes(block, "big")
    sumSquares = sum(c * c for c in _nibbleCounts(number))
    ones, longOnes = _runCounts(number)
    zeros, longZeros = _runCounts(number ^ _MASK)
    return number.bit_count(), sumSquares, tuple(ones + zeros), longOnes or longZeros


def _pokerPasses(sumSquares: int) -> bool:
    """
    The poker test on a block's sum of squared nibble counts.
    """
    poker = 16 / 5000 * sumSquares - 5000
    return POKER[0] < poker < POKER[1]


def fipsDecision(statistics: FIPSStatistics) -> List[str]:
    """
    Judge a block's FIPS 140-2 statistics against the bounds.

    @param statistics: from L{fipsStatistics} (either implementation).
    @return: the names of the tests failed (empty when all passed), in the
        order monobit, poker, runs, long run.
    """
    ones, sumSquares, runs, longRun = statistics
    failed = []
    if not MONOBIT[0] < ones < MONOBIT[1]:
        failed.append("monobit")
    if not _pokerPasses(sumSquares):
        failed.append("poker")
    if any(not low <= count <= high for count, (low, high) in zip(runs, RUNS * 2)):
        failed.append("runs")
    if longRun:
        failed.append("long run")
    return failed


def _passingBounds() -> Tuple[int, int, int, int, Tuple[int, ...], Tuple[int, ...]]:
    """
    The statistics L{fipsDecision} passes, as inclusive integer ranges, for
    the C scan (L{fipsScan}): derived from the decision itself, the poker
    test's by searching the sums of squares it passes (the poker value only
    grows with the sum, so they are one range).

    @return: C{(onesLow, onesHigh, sumSquaresLow, sumSquaresHigh, runsLow,
        runsHigh)}.
    """
    # 5,000 nibbles: the sum of their 16 counts squared lies between an
    # even spread's and all alike's.
    least, most = 5000 ** 2 // 16, 5000 ** 2
    center = least
    while not _pokerPasses(center):
        center += 1000
    low, high = least, center
    while low < high:  # the least passing sum
        middle = (low + high) // 2
        if _pokerPasses(middle):
            high = middle
        else:
            low = middle + 1
    squaresLow = low
    low, high = center, most
    while low < high:  # the greatest passing sum
        middle = (low + high + 1) // 2
        if _pokerPasses(middle):
            low = middle
        else:
            high = middle - 1
    squaresHigh = low
    runs = RUNS * 2
    return (MONOBIT[0] + 1, MONOBIT[1] - 1, squaresLow, squaresHigh,
            tuple(low for low, _ in runs), tuple(high for _, high in runs))


_PASSING = _passingBounds()


def fipsFailures(block) -> List[str]:
    """
    Run the FIPS 140-2 tests on one 2,500-byte block.

    @param block: any bytes-like object.
    @return: the names of the tests it failed (empty when it passed), in
        the order monobit, poker, runs, long run.
    @raise ValueError: unless the block is 2,500 bytes.
    """
    return fipsDecision(fipsStatistics(block))


def _repeatAtDistancePython(data, distance: int, length: int) -> Optional[int]:
    """
    Find C{length} bytes in a row that equal the C{length} bytes
    C{distance} before them: with C{distance} 1, a run of C{length + 1}
    equal bytes (SP 800-90B's repetition count test); with C{distance} 32,
    a 256-bit block repeated (a stuck generator, never chance).

    The bytes equal to the ones C{distance} before them are the zero bytes
    of C{data} XORed with itself shifted by C{distance}, so this is one XOR
    of two big integers and one substring search, instead of a regular
    expression or a loop stepping through every byte.

    @param data: any bytes-like object.
    @return: the index where the first repeated stretch starts (counting
        from the earlier copy), or C{None}.
    @raise ValueError: unless C{distance} and C{length} are at least 1.
    """
    if distance < 1 or length < 1:
        raise ValueError("a repeat needs a distance and a length of at least 1")
    if len(data) < distance + length:
        return None
    size = len(data) - distance
    difference = (int.from_bytes(data[:-distance], "big")
                  ^ int.from_bytes(data[distance:], "big"))
    index = difference.to_bytes(size, "big").find(bytes(length))
    return None if index < 0 else index


def _proportionFailurePython(data, start: int, window: int,
                             cutoff: int) -> Optional[Tuple[int, int]]:
    """
    SP 800-90B's adaptive proportion test on the complete windows of
    C{data} that begin at C{start}, C{start + window}, ...

    @param data: any bytes-like object.
    @return: the index of the first window whose first byte appears
        C{cutoff} times or more in it, and that count; or C{None}.
    @raise ValueError: unless C{start >= 0} and C{window >= 1}.
    """
    if start < 0 or window < 1:
        raise ValueError("a proportion window starts at 0 or later and is at least 1 byte")
    if not isinstance(data, (bytes, bytearray)):
        data = bytes(data)
    for index in range(start, len(data) - window + 1, window):
        count = data.count(data[index], index, index + window)
        if count >= cutoff:
            return index, count
    return None


def _fipsScanPython(data, start: int, end: int) -> Optional[int]:
    """
    Find where to look among the 2,500-byte blocks of C{data} at C{start},
    C{start + 2500}, ... (each ending at or before C{end}): the offset of
    the first block that fails a FIPS 140-2 test, or C{None} when all pass.
    Judge that block with L{fipsFailures}: the scan says where, the one
    decision says what.  (L{fipsScan} is this or L{_fipsScanC}.)

    @param data: any bytes-like object.
    @raise ValueError: unless C{0 <= start <= end <= len(data)}.
    """
    if start < 0 or end < start or end > len(data):
        raise ValueError("the blocks must lie within the data")
    for offset in range(start, end - BLOCK_BYTES + 1, BLOCK_BYTES):
        if fipsDecision(_fipsStatisticsPython(data[offset:offset + BLOCK_BYTES])):
            return offset
    return None


def _fipsScanC(data, start: int, end: int) -> Optional[int]:
    """
    L{fipsScan} with the C module, against the bounds that
    L{fipsDecision} passes (L{_passingBounds}).
    """
    return _stattests.fipsScan(data, start, end, _PASSING)


if _stattests is not None:
    fipsStatistics = _stattests.fipsStatistics
    fipsScan = _fipsScanC
    repeatAtDistance = _stattests.repeatAtDistance
    proportionFailure = _stattests.proportionFailure
else:
    fipsStatistics = _fipsStatisticsPython
    fipsScan = _fipsScanPython
    repeatAtDistance = _repeatAtDistancePython
    proportionFailure = _proportionFailurePython


def repeatedRun(data, length: int) -> Optional[int]:
    """
    Find C{length} equal bytes in a row (SP 800-90B's repetition count
    test fails on a run of C{length}).

    @param length: at least 2.
    @return: the index where the first such run starts, or C{None}.
    """
    if length < 2:
        raise ValueError("a repeated run is at least 2 bytes")
    return repeatAtDistance(data, 1, length - 1)
