# -*- test-case-name: tests.test_status -*-
"""
The running daemon as one object: what the control channel, the metrics
and the status page read (through L{Daemon.status}, one typed snapshot)
and act on.

L{Daemon} holds the pool, the keys, the upstreams, the EGD listeners and
the sinks, and keeps a short history of the entropy rate (one sample every
C{SAMPLE_INTERVAL} seconds, C{HISTORY} samples) for the status page's
chart.  It reads; it does not own the services' lifecycles (the
L{MultiService} of L{ekey.services.assembly.makeService} does), except
for its own sampler.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

from ekey.core.status import (
    DaemonStatus,
    KernelFeederStatus,
    PoolStatus,
)

SAMPLE_INTERVAL = 5.0
HISTORY = 120


class Daemon(Service):
    """
    The daemon's parts, and a sampler of its entropy rate.

    @ivar keys: the L{ekey.services.keys.KeyManager}.
    @ivar pool: the L{ekey.core.pool.EntropyPool}.
    @ivar pullPolicy: the L{ekey.core.pull.PullPolicy}, or C{None} without
        upstreams; its members are the L{ekey.services.upstream.Upstream}s,
        each of which answers its own C{status()}.
    @ivar listeners: C{(endpoint description, EGDServerFactory)} pairs;
        each factory answers C{status(description)} and
        C{clientStatuses(description)}.
    @ivar kernelFeeder: the L{ekey.services.feeder.KernelFeeder}, or C{None}.
    @ivar sinks: the file sinks.
    @ivar history: C{(time, bytes in per second)} samples, oldest first.
    """

    def __init__(self, keys, pool, clock, shutdown: Callable[[], None]):
        """
        @param clock: an L{IReactorTime}.
        @param shutdown: stops the daemon (C{reactor.stop}).
        """
        self.keys = keys
        self.pool = pool
        self.clock = clock
        self._shutdown = shutdown
        self.pullPolicy = None
        self.listeners: List[Tuple[str, object]] = []
        self.kernelFeeder = None
        self.sinks: List[object] = []
        self.history: deque = deque(maxlen=HISTORY)
        self.startedAt = clock.seconds()
        self._lastSample: Optional[Tuple[float, int]] = None
        self._stopping = False
        self._sampler = LoopingCall(self.sample)
        self._sampler.clock = clock

    def startService(self):
        Service.startService(self)
        self._sampler.start(SAMPLE_INTERVAL, now=True)

    def stopService(self):
        if self._sampler.running:
            self._sampler.stop()
        return Service.stopService(self)

    def sample(self):
        """
        Record the entropy rate since the last sample.
        """
        now, total = self.clock.seconds(), self.pool.bytesIn
        if self._lastSample is not None:
            then, before = self._lastSample
            if now > then:
                self.history.append((now, (total - before) / (now - then)))
        self._lastSample = (now, total)

    def shutdown(self):
        """
        Stop the daemon (once; later calls do nothing).
        """
        if not self._stopping:
            self._stopping = True
            self._shutdown()

    @property
    def upstreams(self) -> list:
        """
        The L{ekey.services.upstream.Upstream}s, possibly none.
        """
        return list(self.pullPolicy.upstreams) if self.pullPolicy is not None else []

    def status(self) -> DaemonStatus:
        """
        @return: the whole daemon as it is now, read through each part's
            narrow accessor.
        """
        return DaemonStatus(
            time=self.clock.seconds(),
            startedAt=self.startedAt,
            pool=self.poolStatus(),
            keys=self.keys.status() if self.keys is not None else (),
            listeners=tuple(factory.status(description)
                            for description, factory in self.listeners),
            clients=tuple(client for description, factory in self.listeners
                          for client in factory.clientStatuses(description)),
            upstreams=tuple(upstream.status() for upstream in self.upstreams),
            kernel=(kernelFeederStatus(self.kernelFeeder)
                    if self.kernelFeeder is not None else None),
            history=tuple(self.history),
        )

    def poolStatus(self) -> PoolStatus:
        """
        @return: the pool now, with the last sampled rate and, for a relay,
            its pull policy's refill level.
        """
        pool = self.pool
        policy = self.pullPolicy
        return PoolStatus(
            level=pool.level, capacity=pool.capacity, bytesIn=pool.bytesIn,
            bytesOut=pool.bytesOut, bytesRefused=pool.bytesRefused,
            waitingReaders=pool.waiting,
            bytesPerSecond=self.history[-1][1] if self.history else None,
            refillAt=policy.refillAt if policy is not None else None,
            ranDry=policy.ranDry if policy is not None else None)


# Built here from public attributes until the kernel feeder answers
# status() itself.


def kernelFeederStatus(feeder) -> KernelFeederStatus:
    """
    @param feeder: an L{ekey.services.feeder.KernelFeeder}.
    """
    return KernelFeederStatus(bytesFed=feeder.bytesFed, feeds=feeder.feeds,
                              lastError=feeder.lastError)
