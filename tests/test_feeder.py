"""
Tests for L{ekey.services.feeder.KernelFeeder}, with a fake kernel and a fake clock.
"""

from twisted.internet.task import Clock
from twisted.trial import unittest

from ekey.services.feeder import KernelFeeder, fetchFromPool
from ekey.core.kernel import FeedPolicy, KernelError, KernelState
from ekey.core.pool import EntropyPool


class FakeKernel:
    """
    A kernel that records what it is fed.
    """

    def __init__(self, initialised=True):
        self.added = []
        self.initialised = initialised
        self.refuse = None
        self.version = (6, 1)

    def state(self):
        return KernelState(self.initialised, 256, 256)

    def addEntropy(self, data, bits):
        if self.refuse:
            raise KernelError(self.refuse)
        self.added.append((data, bits))


class FeederTests(unittest.TestCase):
    """
    The feeder takes verified bytes from the pool and gives them to the
    kernel as the policy says.
    """

    def setUp(self):
        self.clock = Clock()
        self.pool = EntropyPool(4096)
        self.kernel = FakeKernel()
        self.feeder = KernelFeeder(self.pool, self.kernel, FeedPolicy(60, 64), 7,
                                   reactor=self.clock)

    def test_feedsAtStartAndOnSchedule(self):
        """
        The kernel gets 64 bytes at start-up, credited 7 bits a byte, then
        64 more every interval, in pool order.
        """
        data = bytes(range(200))
        self.pool.add(data)
        self.feeder.startService()
        self.addCleanup(self.feeder.stopService)
        self.assertEqual(self.kernel.added, [(data[:64], 448)])
        self.clock.advance(59)
        self.assertEqual(len(self.kernel.added), 1)
        self.clock.advance(1)
        self.assertEqual(self.kernel.added[1], (data[64:128], 448))
        self.assertEqual(self.feeder.bytesFed, 128)

    def test_waitsForEntropy(self):
        """
        With the pool empty the feeder waits; it never feeds anything but
        pool bytes.
        """
        self.feeder.startService()
        self.addCleanup(self.feeder.stopService)
        self.clock.advance(600)
        self.assertEqual(self.kernel.added, [])
        self.pool.add(b"k" * 64)
        self.assertEqual(self.kernel.added, [(b"k" * 64, 448)])

    def test_earlyBootFeedsQuickly(self):
        """
        While the kernel is not initialised the feeder feeds every half
        second.
        """
        self.kernel.initialised = False
        self.pool.add(b"b" * 1000)
        self.feeder.startService()
        self.addCleanup(self.feeder.stopService)
        self.clock.advance(0.5)
        self.clock.advance(0.5)
        self.assertEqual(len(self.kernel.added), 3)

    def test_refusalReported(self):
        """
        A kernel that refuses (no privilege) is reported once and retried
        at the next top-up.
        """
        self.kernel.refuse = "adding entropy to the kernel needs CAP_SYS_ADMIN"
        self.pool.add(b"r" * 1000)
        self.feeder.startService()
        self.addCleanup(self.feeder.stopService)
        self.assertIn("CAP_SYS_ADMIN", self.feeder.lastError)
        self.kernel.refuse = None
        self.clock.advance(60)
        self.assertEqual(len(self.kernel.added), 1)
        self.assertIsNone(self.feeder.lastError)

    def test_stopCancelsWait(self):
        """
        Stopping while waiting for bytes leaves the pool untouched.
        """
        self.feeder.startService()
        self.feeder.stopService()
        self.pool.add(b"s" * 100)
        self.assertEqual(self.pool.level, 100)


class FetchTests(unittest.TestCase):
    """
    L{fetchFromPool} waits for exactly what it asks for.
    """

    def test_fetch(self):
        """
        The Deferred fires with exactly n bytes once they have arrived.
        """
        pool = EntropyPool(100)
        d = fetchFromPool(pool, 40)
        pool.add(b"a" * 30)
        self.assertNoResult(d)
        pool.add(b"b" * 30)
        self.assertEqual(self.successResultOf(d), b"a" * 30 + b"b" * 10)
        self.assertEqual(pool.level, 20)
