# -*- test-case-name: tests.test_feeder -*-
"""
The kernel feeder: a service that feeds the kernel's pool from the
daemon's L{EntropyPool} as L{FeedPolicy} says, used by C{twistd ekey
--kernel} and by the standalone C{ekey-feed-kernel --connect ENDPOINT}
(which builds the same daemon with upstreams, a small pool and no
listener, without going through twistd).
"""

from __future__ import annotations

import argparse
import sys

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from ekey.core.kernel import (
    DEFAULT_BYTES,
    DEFAULT_INTERVAL,
    DEFAULT_SHANNONS_PER_BYTE,
    FeedPolicy,
    KernelError,
    LinuxKernel,
    countsEntropy,
)
from ekey.core.pool import EntropyPool


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
        if reactor is None:
            from twisted.internet import reactor
        self.pool = pool
        self.kernel = kernel
        self.policy = policy
        self.shannonsPerByte = shannonsPerByte
        self._clock = reactor
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
            self._call = self._clock.callLater(delay, self._check)

    def _check(self):
        self._call = None
        state = self.kernel.state()
        now = self._clock.seconds()
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
        now = self._clock.seconds()
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


# ekey-feed-kernel ---------------------------------------------------------------------


def _parser():
    parser = argparse.ArgumentParser(
        prog="ekey-feed-kernel",
        description="Feed the Linux kernel's random pool from an EGD server (such as "
        "twistd ekey), on old kernels and new. Needs CAP_SYS_ADMIN.",
    )
    parser.add_argument("--connect", "-c", required=True, action="append",
                        help="EGD server: a client endpoint such as tcp:host:8888, "
                        "unix:/run/ekey/egd or tls:host:8888:trustRoots=DIR:certificate=F:"
                        "privateKey=F (repeatable: several servers are used together)")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL,
                        help=f"seconds between top-ups (default {DEFAULT_INTERVAL:g})")
    parser.add_argument("--bytes", type=int, default=DEFAULT_BYTES,
                        help=f"bytes per top-up (default {DEFAULT_BYTES})")
    parser.add_argument("--shannons-per-byte", type=int, default=DEFAULT_SHANNONS_PER_BYTE,
                        choices=range(0, 9), metavar="0-8",
                        help=f"entropy credited per byte (default {DEFAULT_SHANNONS_PER_BYTE})")
    return parser


def main(argv=None, reactor=None):
    """
    The C{ekey-feed-kernel} command: the ekey daemon with upstreams, the
    kernel sink, a small pool and no listener, in the foreground.
    """
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.python.usage import UsageError

    from ekey.services.tap import Options, makeService

    args = _parser().parse_args(argv)
    high = max(2048, 4 * args.bytes)
    daemonArgs = ["--control", "none", "--kernel", "--kernel-interval", str(args.interval),
                  "--kernel-bytes", str(args.bytes),
                  "--shannons-per-byte", str(args.shannons_per_byte),
                  "--pool-size", str(2 * high), "--low-water", str(high // 4),
                  "--high-water", str(high)]
    for description in args.connect:
        daemonArgs += ["--upstream", description]
    options = Options()
    try:
        options.parseOptions(daemonArgs)
    except UsageError as e:
        print(f"ekey-feed-kernel: {e}", file=sys.stderr)
        return 2
    if reactor is None:
        from twisted.internet import reactor
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)],
                                     redirectStandardIO=False)
    service = makeService(options, reactor=reactor)
    try:
        service.privilegedStartService()
        service.startService()
    except Exception as e:
        print(f"ekey-feed-kernel: {e}", file=sys.stderr)
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
