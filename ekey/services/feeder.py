# -*- test-case-name: tests.test_feeder -*-
"""
The kernel feeder: a service that feeds the kernel's pool from the
daemon's L{EntropyPool} as L{FeedPolicy} says, used by C{twistd ekey
--kernel} and by the standalone C{ekey-feed-kernel} (L{ekey.cli.feedkernel}).
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from ekey.core.kernel import (
    DEFAULT_SHANNONS_PER_BYTE,
    FeedPolicy,
    KernelError,
    LinuxKernel,
    countsEntropy,
)
from ekey.core.pool import EntropyPool
from ekey.services._reactor import default


def fetchFromPool(pool: EntropyPool, n: int):
    """
    Wait for C{n} bytes from the pool, in turn with its other readers.

    @return: a L{Deferred} firing with exactly C{n} bytes; cancelling it
        leaves undelivered bytes in the pool.
    """
    parts = []
    missing = [n]

    def deliver(data):
        parts.append(data)
        missing[0] -= len(data)
        if missing[0] == 0:
            d.callback(b"".join(parts))

    d = defer.Deferred(lambda _: pending.cancel())
    pending = pool.request(n, deliver)
    return d


class KernelFeeder(Service):
    """
    Feed the kernel from a pool.

    @ivar bytesFed: bytes added to the kernel.
    @ivar feeds: successful C{RNDADDENTROPY} calls.
    @ivar lastError: the last failure, in words.
    """

    log = Logger()

    def __init__(self, pool: EntropyPool, kernel, policy: FeedPolicy,
                 shannonsPerByte: int = DEFAULT_SHANNONS_PER_BYTE, reactor=None):
        """
        @param kernel: a L{LinuxKernel}, already opened, or a fake.
        """
        self.pool = pool
        self.kernel = kernel
        self.policy = policy
        self.shannonsPerByte = shannonsPerByte
        self._reactor = default(reactor)
        self._call = None
        self._fetching = None
        self._waitLogged = False
        self.bytesFed = 0
        self.feeds = 0
        self.lastError = None

    def startService(self):
        Service.startService(self)
        self._check()

    def stopService(self):
        Service.stopService(self)
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._fetching is not None:
            self._fetching.cancel()
            self._fetching = None

    def _schedule(self, delay: float):
        if self.running:
            self._call = self._reactor.callLater(delay, self._check)

    def _check(self):
        self._call = None
        state = self.kernel.state()
        now = self._reactor.seconds()
        n, reason = self.policy.due(now, state)
        if not n:
            self._schedule(self.policy.nextCheck(now, state))
            return
        if self.pool.level < n and not self._waitLogged:
            self._waitLogged = True
            self.log.info("Waiting for {n} bytes of verified entropy to feed the kernel ({reason})",
                          n=n, reason=reason)
        d = self._fetching = fetchFromPool(self.pool, n)
        d.addCallback(self._feed, reason)
        d.addErrback(lambda f: f.trap(defer.CancelledError))

    def _feed(self, data: bytes, reason: str):
        self._fetching = None
        self._waitLogged = False
        now = self._reactor.seconds()
        bits = len(data) * self.shannonsPerByte
        try:
            self.kernel.addEntropy(data, bits)
        except KernelError as e:
            if str(e) != self.lastError:
                self.log.error("Cannot feed the kernel: {reason}", reason=str(e))
            self.lastError = str(e)
        else:
            if self.lastError is not None:
                self.log.info("Feeding the kernel again")
            self.lastError = None
            self.bytesFed += len(data)
            self.feeds += 1
            self.log.debug("Fed the kernel {n} bytes ({bits} bits credited): {reason}",
                           n=len(data), bits=bits, reason=reason)
        self.policy.fed(now)
        self._schedule(self.policy.nextCheck(now, self.kernel.state()))


def openKernel(interval: float, bytesPerFeed: int, kernel=None):
    """
    Open the kernel device and build its policy.

    @return: C{(kernel, policy)}.
    @raise KernelError: with a message for the operator.
    """
    kernel = kernel or LinuxKernel()
    kernel.open()
    try:
        policy = FeedPolicy(interval, bytesPerFeed, counting=countsEntropy(kernel.version))
    except ValueError as e:
        raise KernelError(str(e)) from None
    return kernel, policy
