# -*- test-case-name: tests.test_health -*-
"""
Continuous health tests on a key's decrypted stream, sans-I/O.

A key tests its own generators and reports a fail mode when they go bad;
the host checks the output too, because a key can fail in ways it cannot
see itself, and a man in the middle with the session key could feed
anything.  L{HealthMonitor} runs, on every byte a key delivers:

  - the SP 800-90B repetition count test (4.4.1) and adaptive proportion
    test (4.4.2) on bytes, for an assessed min-entropy of C{H} bits per byte
    and a false-alarm probability of C{2**-40} per test;
  - a repetition test on whole 32-byte blocks (a repeated 256-bit block
    is a stuck generator, never chance);
  - the FIPS 140-2 monobit, poker, runs and long-run tests on every
    20,000-bit block, as rngd does.  Random data fails one of these about
    once in 1,250 blocks, so a key is only stopped when
    C{FIPS_FAILURE_LIMIT} of the last C{FIPS_WINDOW} blocks failed.

Bytes are held until the FIPS block they belong to has passed, so nothing
from a failing block ever leaves the monitor; once a test fails the
monitor is failed for good and releases nothing more.  What passed is
released in whole 32-byte blocks (a FIPS block is 2,500 bytes, not a whole
number of them; the rest waits for the next), so that the key's blocks
reach the pool whole.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from typing import List, Optional

from ekey.core import stattests
from ekey.core.stattests import BLOCK_BYTES as FIPS_BLOCK_BYTES
from ekey.core.stattests import fipsFailures
from ekey.core.units import BLOCK_SIZE

FIPS_WINDOW = 100
FIPS_FAILURE_LIMIT = 5
DEFAULT_MIN_ENTROPY = 7.0
ALPHA_EXPONENT = 40
APT_WINDOW = 512

def repetitionCutoff(minEntropy: float, alphaExponent: int = ALPHA_EXPONENT) -> int:
    """
    SP 800-90B 4.4.1: C{C = 1 + ceil(alphaExponent / H)}.
    """
    return 1 + math.ceil(alphaExponent / minEntropy)


@functools.lru_cache(maxsize=None)
def proportionCutoff(minEntropy: float, window: int = APT_WINDOW,
                     alphaExponent: int = ALPHA_EXPONENT) -> int:
    """
    SP 800-90B 4.4.2: the smallest C{C} such that, for a source of
    min-entropy C{H}, the first sample of a window appears C{C} or more
    times in it with probability at most C{2**-alphaExponent}.
    """
    p = 2.0 ** -minEntropy
    n = window - 1
    alpha = 2.0 ** -alphaExponent
    # P(1 + Binomial(n, p) >= c), summed from the top down.
    tail = 0.0
    for k in range(n, -1, -1):
        tail += math.comb(n, k) * p ** k * (1 - p) ** (n - k)
        if tail > alpha:
            return k + 2
    return 1


class HealthMonitor:
    """
    The health tests of one key's output.

    @ivar failure: why the stream failed, in words, or C{None}.
    @ivar fipsBlocks: FIPS 140-2 blocks tested.
    @ivar fipsFailed: of those, blocks that failed a test.
    """

    def __init__(self, minEntropy: float = DEFAULT_MIN_ENTROPY):
        self.repetitionCutoff = repetitionCutoff(minEntropy)
        self.proportionCutoff = proportionCutoff(minEntropy)
        self.failure: Optional[str] = None
        self.fipsBlocks = 0
        self.fipsFailed = 0
        self._recentFIPS: deque = deque(maxlen=FIPS_WINDOW)
        # Bytes not yet FIPS-tested; the last _pending of them are in an
        # adaptive proportion window not yet complete.
        self._held = b""
        self._pending = 0
        # The end of what came before, so that runs and repeated blocks
        # across the boundary of two feeds are seen.
        self._tail = b""
        # Bytes of passed FIPS blocks not yet released (less than a whole
        # 32-byte block between feeds).
        self._passed = b""

    def feed(self, data: bytes) -> List[bytes]:
        """
        Test more of the stream.

        The work is linear in the size of C{data}: windows and blocks are
        found by offset in one buffer, not by slicing off what was tested.
        The statistics come from L{ekey.core.stattests} (in C where it is
        built), looked up there at each call.

        @return: the chunks that are now cleared to be used (bytes of FIPS
            blocks that passed, and whose adaptive proportion windows
            passed, in whole 32-byte blocks), possibly none.
        """
        if self.failure is not None:
            return []
        stream = self._tail + data
        # Repetition count test, across the boundary with earlier data.
        run = stattests.repeatedRun(stream, self.repetitionCutoff)
        if run is not None:
            return self._fail(f"byte 0x{stream[run]:02x} repeated "
                              f"{self.repetitionCutoff} times (repetition count test)")
        # A 256-bit stretch equal to the one before it: a stuck generator
        # (random data does this with probability 2**-256).
        if stattests.repeatAtDistance(stream, BLOCK_SIZE, BLOCK_SIZE) is not None:
            return self._fail("a 32-byte block repeated: the generator is stuck")
        self._tail = stream[-(2 * BLOCK_SIZE - 1):]
        # Adaptive proportion test, on whole windows: the incomplete one
        # held from before, completed by data, and those after it.  (Bytes,
        # not a bytearray: slicing a large bytearray is far slower.)
        held = self._held + data
        start = len(self._held) - self._pending
        found = stattests.proportionFailure(held, start, APT_WINDOW, self.proportionCutoff)
        if found is not None:
            index, count = found
            return self._fail(f"byte 0x{held[index]:02x} appeared {count} times in "
                              f"{APT_WINDOW} (adaptive proportion test)")
        self._pending = (len(held) - start) % APT_WINDOW
        # FIPS 140-2 on every whole block whose windows all passed: the scan
        # finds the next failing block, if any; the blocks before it passed.
        testable = len(held) - self._pending
        end = testable - testable % FIPS_BLOCK_BYTES
        offset = 0
        passed = [self._passed]
        while offset < end:
            failing = stattests.fipsScan(held, offset, end)
            stop = end if failing is None else failing
            if stop > offset:
                count = (stop - offset) // FIPS_BLOCK_BYTES
                self.fipsBlocks += count
                self._recentFIPS.extend([False] * min(count, FIPS_WINDOW))
                passed.append(held[offset:stop])
                offset = stop
            if failing is None:
                break
            block = held[offset:offset + FIPS_BLOCK_BYTES]
            offset += FIPS_BLOCK_BYTES
            failed = fipsFailures(block)
            self.fipsBlocks += 1
            self._recentFIPS.append(bool(failed))
            if failed:
                self.fipsFailed += 1
                if sum(self._recentFIPS) >= FIPS_FAILURE_LIMIT:
                    return self._fail(
                        f"{sum(self._recentFIPS)} of the last {len(self._recentFIPS)} "
                        f"FIPS 140-2 blocks failed (last: {', '.join(failed)})")
                continue
            passed.append(block)
        self._held = held[offset:]
        if len(passed) == 1:
            return []
        passed = b"".join(passed)
        whole = len(passed) - len(passed) % BLOCK_SIZE
        self._passed = passed[whole:]
        return [passed[:whole]] if whole else []

    def streamEnded(self) -> int:
        """
        The stream was cut (the key went away): drop the bytes held and not
        yet released, so that the next connection's bytes never complete a
        FIPS block that the last one began (the key plugged in again may be
        another key), and nothing from before the cut comes out after it.
        Failures and counts are kept.

        @return: how many bytes were dropped.
        """
        dropped = len(self._held) + len(self._passed)
        self._held = b""
        self._passed = b""
        self._pending = 0
        self._tail = b""
        return dropped

    def _fail(self, reason: str) -> List[bytes]:
        self.failure = reason
        self._held = b""
        self._passed = b""
        self._pending = 0
        return []
