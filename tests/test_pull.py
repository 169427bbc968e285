"""
Tests for L{ekey.core.pull}: how a relay shares its demand among its
upstreams, with members that only record what they are asked.
"""

from twisted.internet.task import Clock
from twisted.trial import unittest

from ekey.core.pool import EntropyPool
from ekey.core.pull import MAX_PIPELINE, MIN_BATCH, READ_SIZE, PullPolicy


class FakeMember:
    """
    A member that records what it is asked for and says so to the policy,
    as an upstream connection does.
    """

    def __init__(self, policy, name, priority=0):
        self.policy = policy
        self.asked = 0
        policy.join(self, name, priority)

    def pull(self, n):
        self.asked += n
        self.policy.requested(self, n)

    def deliver(self, n):
        """
        C{n} of the bytes asked arrive and pass their tests at once.
        """
        self.policy.received(self, n)
        self.policy.released(self, n)
        self.policy.pool.add(b"\x55" * n)
        self.policy.kick()


class PolicyTests(unittest.TestCase):
    """
    The demand of a refill is shared, moved and re-issued by the policy.
    """

    def setUp(self):
        self.clock = Clock()
        self.pool = EntropyPool(16384)
        self.policy = PullPolicy(self.pool, 1000, 3000, clock=self.clock, stallTimeout=2)

    def members(self, *priorities):
        return [FakeMember(self.policy, f"m{i}", p) for i, p in enumerate(priorities)]

    def test_oneMemberTakesTheWholeRefill(self):
        """
        A lone member is asked for the whole refill, in whole blocks.
        """
        (a,) = self.members(0)
        self.policy.connected(a)
        self.assertEqual(a.asked, 2976)
        self.assertEqual(self.policy.inFlight, 2976)

    def connectAll(self, *members):
        """
        Connect C{members} as a daemon starting does: every attempt starts
        before the first is up.
        """
        for member in members:
            self.policy.attempting(member)
        for member in members:
            self.policy.connected(member)

    def test_sharedAmongMembers(self):
        """
        No member is asked for more than its share of the refill: the first
        to connect leaves the share of those still connecting.
        """
        a, b = self.members(0, 0)
        self.connectAll(a, b)
        self.assertEqual((a.asked, b.asked), (1504, 1472))

    def test_failedAttemptGivesUpItsShare(self):
        """
        When a connection attempt fails, the members that are up are asked
        for its share.
        """
        a, b = self.members(0, 0)
        self.policy.attempting(b)
        self.policy.connected(a)
        self.assertEqual(a.asked, 1504)
        self.policy.failed(b)
        self.assertEqual(a.asked, 2976)

    def test_deliveringMemberAskedAgain(self):
        """
        A member that delivers its share is asked again for what the refill
        still needs, beside one that holds its share and delivers nothing,
        which is never asked for more than its share.
        """
        a, b = self.members(0, 0)
        self.connectAll(a, b)
        for _ in range(10):
            b.deliver(self.policy.inFlightOf(b))
        self.assertEqual(a.asked, 1504)
        self.assertEqual(self.pool.level, 2976 - 1504)
        self.assertEqual(self.policy.inFlightOf(b), 0)

    def test_stalledMemberDemandMoves(self):
        """
        A member that delivers nothing for the stall time-out is stalled:
        what it holds is asked of the others, which then fill the pool to
        the high watermark.
        """
        a, b = self.members(0, 0)
        self.connectAll(a, b)
        b.deliver(self.policy.inFlightOf(b))
        self.assertEqual(b.asked, 1472)
        self.clock.advance(1.9)
        self.assertFalse(self.policy.isStalled(a))
        self.clock.advance(0.1)
        self.assertTrue(self.policy.isStalled(a))
        b.deliver(self.policy.inFlightOf(b))
        self.assertEqual(self.pool.level, 2976)
        self.assertEqual(self.policy.inFlightOf(a), 1504)

    def test_stallNeedsSilence(self):
        """
        A member that keeps delivering, however slowly, is never stalled.
        """
        (a,) = self.members(0)
        self.policy.connected(a)
        for _ in range(20):
            self.clock.advance(1.5)
            self.policy.received(a, 32)
            self.policy.released(a, 32)
        self.assertFalse(self.policy.isStalled(a))
        self.clock.advance(2)
        self.assertTrue(self.policy.isStalled(a))
        self.policy.received(a, 32)
        self.assertFalse(self.policy.isStalled(a))

    def test_lostDemandReissuedAtOnce(self):
        """
        A lost member's demand is asked of the others at once, even after
        the refill had asked for everything.
        """
        a, b = self.members(0, 0)
        self.policy.connected(a)
        self.policy.connected(b)
        # a connected alone and was asked for everything.
        self.assertEqual(b.asked, 0)
        self.policy.lost(a)
        self.assertEqual(b.asked, 2976)
        self.assertEqual(self.policy.inFlight, 2976)

    def test_lostTestingBytesForgotten(self):
        """
        Bytes under test when a member is lost no longer count as bytes
        the pool may have to take.
        """
        (a,) = self.members(0)
        self.policy.connected(a)
        self.policy.received(a, 2000)
        self.assertEqual(self.policy.testingOf(a), 2000)
        self.policy.lost(a)
        self.assertEqual((self.policy.testingOf(a), self.policy.inFlightOf(a)), (0, 0))

    def test_drainedDuringRefillAskedAgain(self):
        """
        A refill that cannot reach the high watermark (its last bytes still
        under test, the pool no bigger than the watermark) asks again when
        readers empty the pool, instead of waiting for deliveries nobody
        asked for (a relay whose pool size equals its high watermark
        stalled so).
        """
        pool = EntropyPool(3008)
        policy = PullPolicy(pool, 1000, 3008, clock=self.clock, stallTimeout=2)
        a = FakeMember(policy, "a")
        policy.connected(a)
        self.assertEqual(a.asked, 3008)
        a.deliver(2976)
        policy.received(a, 32)
        self.assertTrue(policy.filling)
        self.assertEqual(policy.inFlight, 0)
        pool.take(2976)
        self.assertEqual(a.asked, 3008 + 2976)

    def test_neverMoreThanThePoolCanTake(self):
        """
        Bytes asked of anybody, and bytes under test, never add up to more
        than the pool has room for: a stalled member's late bytes are
        never refused.
        """
        pool = EntropyPool(4000)
        policy = PullPolicy(pool, 1000, 3000, clock=self.clock, stallTimeout=2)
        a, b = FakeMember(policy, "a"), FakeMember(policy, "b")
        policy.connected(a)
        self.clock.advance(2)
        self.assertTrue(policy.isStalled(a))
        policy.connected(b)
        self.assertLessEqual(policy.inFlight, pool.capacity)
        b.deliver(policy.inFlightOf(b))
        a.deliver(policy.inFlightOf(a))
        self.assertEqual(pool.bytesRefused, 0)

    def test_backupsOnlyWhenPrimariesFail(self):
        """
        A backup (higher priority number) is asked nothing while a primary
        delivers, is asked when the primary stalls or goes, and the
        primary is asked again when it is back.
        """
        primary, backup = self.members(0, 1)
        self.connectAll(primary, backup)
        self.assertEqual((primary.asked, backup.asked), (2976, 0))
        self.clock.advance(2)
        self.assertTrue(self.policy.isStalled(primary))
        self.assertEqual(backup.asked, 2976)
        # The primary delivers again: it is asked for the next refill, the
        # backup is not.
        primary.deliver(2976)
        backup.deliver(2976)
        self.pool.take(16384)
        self.assertEqual((primary.asked, backup.asked), (5952, 2976))
        # The primary goes: the backup is asked for its demand at once.
        self.policy.lost(primary)
        self.assertEqual(backup.asked, 5952)

    def test_equalPrioritiesShare(self):
        """
        Backups of one priority share the demand between them.
        """
        primary, b1, b2 = self.members(0, 1, 1)
        self.connectAll(b1, b2)
        self.assertEqual(primary.asked, 0)
        self.assertEqual(b1.asked, 1504)
        self.assertEqual(b2.asked, 1472)

    def test_pipelineCap(self):
        """
        No member is asked for more than L{MAX_PIPELINE} reads at once.
        """
        pool = EntropyPool(4 * MAX_PIPELINE * READ_SIZE)
        policy = PullPolicy(pool, 0, pool.capacity, clock=self.clock)
        a = FakeMember(policy, "a")
        policy.connected(a)
        self.assertEqual(a.asked, MAX_PIPELINE * READ_SIZE)

    def test_smallTakesAskedTogether(self):
        """
        While a member has demand in flight, what readers take a few blocks
        at a time is asked of it in batches of L{MIN_BATCH} bytes (the
        watermarks here are more than twice that apart), not one request
        per take; a member with nothing in flight is asked at once, however
        little is wanted.
        """
        pool = EntropyPool(1 << 20)
        policy = PullPolicy(pool, 65536, 262144, clock=self.clock)
        a = FakeMember(policy, "a")
        policy.connected(a)
        self.assertEqual(a.asked, 262144)
        pulls = []
        a.pull = lambda n: (pulls.append(n), FakeMember.pull(a, n))
        a.deliver(131072)
        for _ in range(400):
            pool.take(224)
        # 89,600 bytes taken: asked once, when a batch had been taken; the
        # rest waits for the next batch.
        self.assertEqual(len(pulls), 1)
        self.assertTrue(MIN_BATCH <= pulls[0] < MIN_BATCH + 224, pulls)
        # Once nothing is in flight, what is wanted is asked at once,
        # however little.
        a.deliver(policy.inFlightOf(a))
        self.assertEqual(len(pulls), 2)
        self.assertLess(pulls[1], MIN_BATCH)
        self.assertEqual(policy.inFlight + pool.level, 262144)


class RefillPointTests(unittest.TestCase):
    """
    The point where a refill starts adapts to how fast readers drain the
    pool.
    """

    def setUp(self):
        self.clock = Clock()
        self.pool = EntropyPool(16384)
        self.policy = PullPolicy(self.pool, 1000, 3000, clock=self.clock)
        self.member = FakeMember(self.policy, "a")
        self.policy.connected(self.member)

    def deliverAll(self):
        """
        The member delivers what it is asked for until the refill is over.
        """
        while self.policy.inFlight:
            self.member.deliver(self.policy.inFlight)

    def test_refillStartsEarlierAfterRunningDry(self):
        """
        A refill during which readers emptied the pool makes the next one
        start earlier (a quarter of the way to the high watermark); one
        that completes without running dry moves the point back down.
        """
        member = self.member
        member.deliver(2976)
        self.assertEqual((self.pool.level, self.policy.refillAt), (2976, 1000))
        # Below the low watermark a refill asks for what is missing; readers
        # empty the pool before it arrives.
        self.pool.take(2100)
        self.assertEqual(self.policy.inFlight, 2112)
        self.pool.take(900)
        self.deliverAll()
        self.assertFalse(self.policy.filling)
        self.assertEqual((self.policy.ranDry, self.policy.refillAt), (1, 1500))
        # Now a level of 1400 starts a refill, which completes without the
        # pool running dry: the point goes back to the low watermark.
        self.pool.take(1600)
        self.assertTrue(self.policy.inFlight)
        self.deliverAll()
        self.assertEqual(self.policy.refillAt, 1000)
        self.assertEqual(self.pool.level, 2976)

    def test_refillPointBelowHighWater(self):
        """
        However often the pool runs dry, pulling starts at least one read
        below the high watermark.
        """
        for _ in range(10):
            self.policy._dry = True
            self.policy._refillDone()
        self.assertEqual(self.policy.refillAt, 3000 - READ_SIZE)

    def test_resumedRefillDoesNotMoveThePoint(self):
        """
        The end of a refill resumed after a loss does not move the refill
        point a second time.
        """
        other = FakeMember(self.policy, "b")
        self.policy.connected(other)
        self.policy.lost(self.member)
        other.deliver(self.policy.inFlightOf(other))
        self.assertEqual((self.policy.refillAt, self.policy.ranDry), (1000, 0))

    def test_badSettings(self):
        """
        Watermarks out of order, or above the pool's size, and a stall
        time-out that is not positive are refused.
        """
        self.assertRaises(ValueError, PullPolicy, EntropyPool(100), 50, 50, clock=self.clock)
        self.assertRaises(ValueError, PullPolicy, EntropyPool(100), 10, 200, clock=self.clock)
        self.assertRaises(ValueError, PullPolicy, EntropyPool(100), 10, 20, clock=self.clock,
                          stallTimeout=0)
