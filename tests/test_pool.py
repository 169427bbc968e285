"""
Tests for L{ekey.core.pool.EntropyPool}.
"""

from twisted.trial import unittest

from ekey.core.pool import POLLING_RESERVE, EntropyPool


def chunks(count, size=32):
    return [bytes([i % 256]) * size for i in range(count)]


class PoolTests(unittest.TestCase):
    """
    The pool is a bounded FIFO that hands every byte out once.
    """

    def test_fifo(self):
        """
        Bytes come out in the order they went in.
        """
        pool = EntropyPool(1000)
        pool.add(b"abc")
        pool.add(b"def")
        self.assertEqual(pool.take(2), b"ab")
        self.assertEqual(pool.take(10), b"cdef")
        self.assertEqual(pool.take(10), b"")
        self.assertEqual((pool.bytesIn, pool.bytesOut), (6, 6))

    def test_bounded(self):
        """
        A full pool refuses what does not fit and counts it.  What it takes
        of an offer too big for it is whole 32-byte blocks, so that no
        reader gets the end of a block without its beginning.
        """
        pool = EntropyPool(10)
        self.assertEqual(pool.add(b"x" * 8), 8)
        self.assertEqual(pool.add(b"y" * 8), 0)
        self.assertEqual(pool.level, 8)
        self.assertEqual(pool.bytesRefused, 8)
        self.assertRaises(ValueError, EntropyPool, 0)
        pool = EntropyPool(100)
        self.assertEqual(pool.add(bytes(range(40))), 40)
        self.assertEqual(pool.add(bytes(range(96))), 32)
        self.assertEqual(pool.take(100)[40:], bytes(range(32)))

    def test_turnsInWholeBlocks(self):
        """
        Readers waiting beside each other are given turns in whole 32-byte
        blocks, however the bytes present divide among them.
        """
        pool = EntropyPool(4096)
        got = {name: [] for name in "abc"}
        for name in "abc":
            pool.request(None, got[name].append)
        pool.add(bytes(224))
        pool.add(bytes(992))
        sizes = [len(chunk) for chunks in got.values() for chunk in chunks]
        self.assertTrue(sizes)
        self.assertEqual([size % 32 for size in sizes], [0] * len(sizes), sizes)

    def test_compaction(self):
        """
        Long use keeps memory near the level, and order survives compaction.
        """
        pool = EntropyPool(1 << 20)
        out = []
        for block in chunks(10000):
            pool.add(block)
            out.append(pool.take(32))
        self.assertEqual(out, chunks(10000))
        self.assertLess(len(pool._buffer), 200000)

    def test_waitingReaderServedAsBytesArrive(self):
        """
        A waiting reader receives bytes as they arrive until it has what it
        asked for, and is then done.
        """
        pool = EntropyPool(1000)
        got = []
        pending = pool.request(40, got.append)
        pool.add(b"a" * 32)
        self.assertTrue(pending.active)
        pool.add(b"b" * 32)
        self.assertEqual(b"".join(got), b"a" * 32 + b"b" * 8)
        self.assertFalse(pending.active)
        self.assertEqual(pool.level, 24)

    def test_roundRobin(self):
        """
        Waiting readers take turns, a quantum each, in request order: a big
        request does not starve a small one.
        """
        pool = EntropyPool(1000)
        big, small = [], []
        pool.request(255, big.append)
        pool.request(32, small.append)
        pool.add(b"x" * 64)
        self.assertEqual(len(b"".join(big)), 32)
        self.assertEqual(len(b"".join(small)), 32)

    def test_pausedSkipped(self):
        """
        A paused reader is skipped; its turn resumes when it does.
        """
        pool = EntropyPool(1000)
        first, second = [], []
        a = pool.request(64, first.append)
        pool.request(64, second.append)
        a.pause()
        pool.add(b"z" * 64)
        self.assertEqual(first, [])
        self.assertEqual(len(b"".join(second)), 64)
        pool.add(b"y" * 10)
        a.resume()
        self.assertEqual(b"".join(first), b"y" * 10)

    def test_cancelLosesNothing(self):
        """
        A cancelled reader leaves every undelivered byte in the pool.
        """
        pool = EntropyPool(1000)
        got = []
        pending = pool.request(100, got.append)
        pool.add(b"q" * 40)
        pending.cancel()
        pool.add(b"r" * 40)
        self.assertEqual(pool.take(100), b"r" * 40)
        self.assertEqual(len(b"".join(got)), 40)
        self.assertEqual(pool.waiting, 0)

    def test_zeroRequest(self):
        """
        A request for nothing is done at once.
        """
        pool = EntropyPool(10)
        self.assertFalse(pool.request(0, lambda d: self.fail(d)).active)

    def test_activeReadersKeepAShare(self):
        """
        While a reader waits for everything, an active reader between
        requests still finds its part of each arrival held for it, and takes
        it first; when it goes quiet its share returns to everybody.
        """
        pool = EntropyPool(10000)
        greedy = []
        pool.request(None, greedy.append)
        share = pool.addShare()
        for block in chunks(4):
            pool.add(block)
        self.assertEqual(pool.level, 64)
        self.assertEqual(share.reserved, 64)
        self.assertEqual(pool.take(255), b"")
        self.assertEqual(len(pool.take(255, share)), 64)
        for block in chunks(40):
            pool.add(block)
        self.assertEqual(share.reserved, POLLING_RESERVE)
        share.remove()
        self.assertEqual(pool.level, 0)
        self.assertEqual(len(b"".join(greedy)) + 64, 44 * 32)

    def test_shareServesRequestFirst(self):
        """
        A blocking request from a reader with a share is served from its
        share at once; when the request ends, the reader gets its part of
        what is free.
        """
        pool = EntropyPool(10000)
        share = pool.addShare()
        pool.add(b"s" * 100)
        # Shares are held in whole 32-byte blocks.
        self.assertEqual(share.reserved, 96)
        got = []
        pending = pool.request(40, got.append, share=share)
        self.assertEqual(b"".join(got), b"s" * 40)
        self.assertFalse(pending.active)
        self.assertEqual(share.reserved, 56)
        other = []
        pool.request(None, other.append)
        pending = pool.request(100, got.append, share=share)
        self.assertTrue(pending.active)
        self.assertTrue(share.waiting)
        pool.add(b"t" * 200)
        self.assertFalse(pending.active)
        self.assertFalse(share.waiting)

    def test_sharesByOwner(self):
        """
        Arrivals are split among owners first, then among each owner's
        readers: two readers of one owner hold what one reader of another
        owner holds; when one goes quiet, its part returns to everybody.
        """
        pool = EntropyPool(10000)
        first, second = pool.addShare("uid:1000"), pool.addShare("uid:1000")
        other = pool.addShare("uid:1001")
        pool.add(b"o" * 640)
        self.assertEqual((first.reserved, second.reserved, other.reserved), (160, 160, 320))
        first.remove()
        self.assertTrue(first.removed)
        self.assertEqual(pool.reserved, 480)
        pool.add(b"p" * 640)
        self.assertEqual((second.reserved, other.reserved), (480, 640))

    def test_turnsByOwner(self):
        """
        Waiting readers take their turns by owner: five readers of one owner
        beside one of another do not get five turns to its one.
        """
        pool = EntropyPool(10000)
        got = {"many": 0, "one": 0}

        def counter(who):
            def deliver(data):
                got[who] += len(data)
            return deliver

        many = [pool.addShare("many") for _ in range(5)]
        one = pool.addShare("one")
        for share in many:
            pool.request(None, counter("many"), share=share)
        pool.request(None, counter("one"), share=one)
        for _ in range(50):
            pool.add(b"x" * 40)
        # Per reader, "one" would get about 29%.
        self.assertGreater(got["one"] / 2000, 0.38, got)

    def test_levelObservers(self):
        """
        Observers hear of every change of level.
        """
        pool = EntropyPool(100)
        levels = []
        pool.observeLevel(lambda p: levels.append(p.level))
        pool.add(b"a" * 10)
        pool.take(4)
        self.assertEqual(levels, [10, 6])
