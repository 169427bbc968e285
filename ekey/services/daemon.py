# -*- test-case-name: tests.test_daemon -*-
"""
The running daemon as one object: what the control channel, the metrics
and the status page read and act on.

L{Daemon} holds the pool, the keys, the upstreams, the EGD listeners and
the sinks, and keeps a short history of the entropy rate (one sample every
C{SAMPLE_INTERVAL} seconds, C{HISTORY} samples) for the status page's
chart.  It reads; it does not own the services' lifecycles (the tap's
L{MultiService} does), except for its own sampler.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Dict, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

SAMPLE_INTERVAL = 5.0
HISTORY = 120


class Daemon(Service):
    """
    The daemon's parts, and a sampler of its entropy rate.

    @ivar keys: the L{ekey.services.keys.KeyManager}.
    @ivar pool: the L{ekey.core.pool.EntropyPool}.
    @ivar pullPolicy: the L{ekey.services.upstream.PullPolicy}, or C{None} without
        upstreams.
    @ivar listeners: C{(endpoint description, EGDServerFactory)} pairs.
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

    def clients(self) -> List[Dict[str, object]]:
        """
        @return: every connected EGD client: listener, peer, certificate
            identity (if any), bytes served, requests.
        """
        result = []
        for description, factory in self.listeners:
            for client in sorted(factory.clients, key=lambda c: c.connectedAt):
                result.append({
                    "listener": description,
                    "peer": client.peer,
                    "identity": client.identity,
                    "bytesServed": client.bytesServed,
                    "requests": sum(client.requests.values()),
                    "connectedFor": round(self.clock.seconds() - client.connectedAt, 1),
                })
        return result

    def poolStatus(self) -> Dict[str, object]:
        """
        @return: the pool's level, size, and traffic; for a relay, the
            level below which it pulls now and how many refills found the
            pool emptied by readers.
        """
        pool = self.pool
        status = {"level": pool.level, "capacity": pool.capacity, "bytesIn": pool.bytesIn,
                  "bytesOut": pool.bytesOut, "bytesRefused": pool.bytesRefused,
                  "waitingReaders": pool.waiting}
        if self.history:
            status["bytesPerSecond"] = round(self.history[-1][1], 1)
        if self.pullPolicy is not None:
            status["refillAt"] = self.pullPolicy.refillAt
            status["ranDry"] = self.pullPolicy.ranDry
        return status

    def upstreamStatus(self) -> List[Dict[str, object]]:
        """
        @return: each upstream's state, bytes pulled and last error.
        """
        return [{"upstream": u.description, "state": u.state, "bytesPulled": u.bytesPulled,
                 "connections": u.connections, "lastError": u.lastError}
                for u in self.upstreams]
