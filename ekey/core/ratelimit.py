# -*- test-case-name: tests.test_ratelimit -*-
"""
Per-client rate limits: a token bucket for each client, sans-I/O.

A client is known by its identity (its Unix user, its certificate's
fingerprint, else its address), so that opening many connections does not
multiply its share.
Each client may draw C{rate} bytes per second with bursts of up to
C{burst} bytes; a client over its share waits for its bucket to refill, it
is not disconnected.  Buckets nobody has used for a while are forgotten, so
that the table stays small under a flood of addresses.
"""

from __future__ import annotations

from typing import Dict, Tuple

#: Buckets full and unused for this many seconds are forgotten.
FORGET_AFTER = 300.0
#: The most clients tracked at once; the least recently used go first.
MAX_TRACKED = 100_000


class RateLimiter:
    """
    Token buckets by client.

    @ivar rate: bytes per second each client may draw (0: unlimited).
    @ivar burst: the most bytes a client may draw at once after a rest.
    """

    def __init__(self, rate: float, burst: int):
        """
        @raise ValueError: if the rate is negative, or the burst is smaller
            than one byte while there is a rate.
        """
        if rate < 0:
            raise ValueError("the rate cannot be negative")
        if rate and burst < 1:
            raise ValueError("the burst must be at least one byte")
        self.rate = rate
        self.burst = burst
        self._buckets: Dict[str, Tuple[float, float]] = {}

    @property
    def unlimited(self) -> bool:
        """
        Whether there is no limit at all.
        """
        return not self.rate

    def _level(self, client: str, now: float) -> float:
        tokens, then = self._buckets.get(client, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - then) * self.rate)

    def available(self, client: str, now: float) -> int:
        """
        @return: bytes C{client} may draw now.
        """
        if self.unlimited:
            return 1 << 30
        return max(0, int(self._level(client, now)))

    def consume(self, client: str, n: int, now: float) -> None:
        """
        Note that C{client} drew C{n} bytes (it may go below zero: a piece
        delivered whole is never cut).
        """
        if self.unlimited:
            return
        level = self._level(client, now)
        # Re-insert so that the table is ordered by last use.
        self._buckets.pop(client, None)
        self._buckets[client] = (level - n, now)
        if len(self._buckets) > MAX_TRACKED:
            self._forget(now)

    def refund(self, client: str, n: int, now: float) -> None:
        """
        Give back C{n} bytes drawn ahead (by L{consume}) and never delivered
        (a reader that went away); the bucket never holds more than a burst.
        """
        if self.unlimited or n <= 0:
            return
        level = self._level(client, now)
        self._buckets.pop(client, None)
        self._buckets[client] = (min(float(self.burst), level + n), now)

    def wait(self, client: str, n: int, now: float) -> float:
        """
        @return: seconds until C{client} may draw C{n} bytes (at most a
            burst's worth).
        """
        if self.unlimited:
            return 0.0
        missing = min(n, self.burst) - self._level(client, now)
        return max(0.0, missing / self.rate)

    def _forget(self, now: float) -> None:
        for client, (tokens, then) in list(self._buckets.items()):
            if len(self._buckets) <= MAX_TRACKED // 2:
                break
            if now - then > FORGET_AFTER or tokens + (now - then) * self.rate >= self.burst:
                del self._buckets[client]
        while len(self._buckets) > MAX_TRACKED:
            del self._buckets[next(iter(self._buckets))]

    @property
    def tracked(self) -> int:
        """
        Clients with a bucket now.
        """
        return len(self._buckets)
