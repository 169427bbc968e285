"""
Tests for L{ekey.core.kernel}: when and how to feed the kernel.
"""

import os

from twisted.trial import unittest

from ekey.core.kernel import (
    BOOT_INTERVAL,
    POLL_INTERVAL,
    FeedPolicy,
    KernelError,
    KernelState,
    LinuxKernel,
    countsEntropy,
    parseKernelVersion,
)


class VersionTests(unittest.TestCase):
    """
    Kernel versions decide whether the entropy count still means anything.
    """

    def test_parse(self):
        """
        Releases as uname prints them give (major, minor).
        """
        self.assertEqual(parseKernelVersion("6.18.44-fc-v657"), (6, 18))
        self.assertEqual(parseKernelVersion("5.4.0-150-generic"), (5, 4))
        self.assertEqual(parseKernelVersion("4.19rc1"), (4, 19))
        self.assertEqual(parseKernelVersion("garbage"), (0, 0))

    def test_counting(self):
        """
        Kernels before 5.18 keep an entropy count; 5.18 and later do not.
        """
        self.assertTrue(countsEntropy((5, 17)))
        self.assertFalse(countsEntropy((5, 18)))
        self.assertFalse(countsEntropy((6, 1)))


class PolicyTests(unittest.TestCase):
    """
    L{FeedPolicy} feeds at boot, below the threshold on old kernels, and on
    a schedule everywhere.
    """

    ready = KernelState(initialised=True, entropyAvail=256, wakeupThreshold=256)

    def test_earlyBoot(self):
        """
        While the generator is not initialised, every check feeds, and
        checks come quickly.
        """
        policy = FeedPolicy(interval=60, bytesPerFeed=64)
        booting = KernelState(initialised=False)
        for now in (0, 0.5, 1):
            n, reason = policy.due(now, booting)
            self.assertEqual(n, 64)
            self.assertIn("not initialised", reason)
            policy.fed(now)
            self.assertEqual(policy.nextCheck(now, booting), BOOT_INTERVAL)

    def test_newKernelSchedule(self):
        """
        On a new kernel the policy feeds at start-up and then once per
        interval, whatever the entropy count says.
        """
        policy = FeedPolicy(interval=60, bytesPerFeed=64, counting=False)
        self.assertEqual(policy.due(0, self.ready), (64, "start-up"))
        policy.fed(0)
        self.assertEqual(policy.due(30, self.ready)[0], 0)
        self.assertEqual(policy.nextCheck(30, self.ready), 30)
        low = KernelState(True, 10, 256)
        self.assertEqual(policy.due(31, low)[0], 0)
        self.assertEqual(policy.due(60, self.ready), (64, "scheduled top-up"))

    def test_oldKernelThreshold(self):
        """
        On a kernel that counts, falling below write_wakeup_threshold feeds
        at once, enough to reach it, and the count is watched every second.
        """
        policy = FeedPolicy(interval=60, bytesPerFeed=64, counting=True)
        policy.fed(0)
        n, reason = policy.due(5, KernelState(True, 0, 4096))
        self.assertEqual(n, 512)
        self.assertIn("write_wakeup_threshold", reason)
        self.assertEqual(policy.due(5, KernelState(True, 3000, 3072))[0], 64)
        self.assertEqual(policy.nextCheck(5, self.ready), POLL_INTERVAL)

    def test_badArguments(self):
        """
        A zero interval or size is refused.
        """
        self.assertRaises(ValueError, FeedPolicy, 0, 64)
        self.assertRaises(ValueError, FeedPolicy, 60, 0)


class LinuxKernelTests(unittest.TestCase):
    """
    The real kernel interface's errors are clear.
    """

    def test_missingDevice(self):
        """
        A missing device is an error that says so.
        """
        kernel = LinuxKernel(device=self.mktemp())
        error = self.assertRaises(KernelError, kernel.open)
        self.assertIn("does not exist", str(error))

    def test_notADevice(self):
        """
        RNDADDENTROPY on something that is not the random device fails
        with the kernel's reason.
        """
        path = self.mktemp()
        open(path, "w").close()
        kernel = LinuxKernel(device=path)
        self.addCleanup(kernel.close)
        error = self.assertRaises(KernelError, kernel.open)
        self.assertIn("RNDADDENTROPY", str(error))

    def test_state(self):
        """
        The state of this machine's kernel can be read.
        """
        if not os.path.exists("/proc/sys/kernel/random/entropy_avail"):
            raise unittest.SkipTest("not Linux")
        state = LinuxKernel().state()
        self.assertIsInstance(state.entropyAvail, int)
        self.assertIn(state.initialised, (True, False))
