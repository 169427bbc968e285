"""
Tests for L{ekey.core.ratelimit.RateLimiter}.
"""

from twisted.trial import unittest

from ekey.core import ratelimit
from ekey.core.ratelimit import RateLimiter


class RateLimiterTests(unittest.TestCase):
    """
    Token buckets by client.
    """

    def test_burstThenRate(self):
        """
        A client may draw its burst at once, then its rate per second.
        """
        limiter = RateLimiter(rate=100, burst=300)
        self.assertEqual(limiter.available("a", 0), 300)
        limiter.consume("a", 300, 0)
        self.assertEqual(limiter.available("a", 0), 0)
        self.assertEqual(limiter.available("a", 1), 100)
        self.assertEqual(limiter.available("a", 10), 300)
        self.assertEqual(limiter.wait("a", 50, 0), 0.5)

    def test_refund(self):
        """
        Bytes drawn ahead and never delivered go back to the bucket, which
        never holds more than a burst.
        """
        limiter = RateLimiter(rate=10, burst=100)
        limiter.consume("a", 80, 0)
        limiter.refund("a", 50, 0)
        self.assertEqual(limiter.available("a", 0), 70)
        limiter.refund("a", 500, 0)
        self.assertEqual(limiter.available("a", 0), 100)
        unlimited = RateLimiter(0, 0)
        unlimited.refund("a", 5, 0)
        self.assertEqual(unlimited.tracked, 0)

    def test_repeatedDraws(self):
        """
        Several draws at the same moment add up: the bucket is not refilled
        between them.
        """
        limiter = RateLimiter(rate=100, burst=1000)
        for _ in range(5):
            limiter.consume("a", 255, 0)
        self.assertEqual(limiter.available("a", 0), 0)
        self.assertEqual(limiter._level("a", 0), 1000 - 5 * 255)
        self.assertEqual(limiter.available("a", 3), 25)

    def test_clientsSeparate(self):
        """
        One client's drawing does not use another's bucket.
        """
        limiter = RateLimiter(rate=10, burst=10)
        limiter.consume("a", 10, 0)
        self.assertEqual(limiter.available("b", 0), 10)

    def test_overdraw(self):
        """
        A piece delivered whole may take a bucket below zero; the client
        then waits longer.
        """
        limiter = RateLimiter(rate=10, burst=10)
        limiter.consume("a", 30, 0)
        self.assertEqual(limiter.available("a", 2), 0)
        self.assertEqual(limiter.wait("a", 10, 0), 3.0)

    def test_unlimited(self):
        """
        A rate of 0 means no limit.
        """
        limiter = RateLimiter(0, 0)
        self.assertTrue(limiter.unlimited)
        limiter.consume("a", 10 ** 9, 0)
        self.assertGreater(limiter.available("a", 0), 10 ** 6)
        self.assertEqual(limiter.wait("a", 10 ** 6, 0), 0)

    def test_bounded(self):
        """
        A flood of client addresses does not grow the table without bound.
        """
        self.patch(ratelimit, "MAX_TRACKED", 100)
        limiter = RateLimiter(rate=10, burst=10)
        for i in range(1000):
            limiter.consume(f"client{i}", 1, i * 0.001)
        self.assertLessEqual(limiter.tracked, 100)

    def test_badArguments(self):
        """
        A negative rate, or a rate without a burst, is refused.
        """
        self.assertRaises(ValueError, RateLimiter, -1, 10)
        self.assertRaises(ValueError, RateLimiter, 10, 0)
