# -*- test-case-name: tests.test_pool -*-
"""
The entropy pool: verified bytes from every source, each handed out once.

The pool is bounded and first-in first-out.  Readers either take what
there is (L{EntropyPool.take}) or wait for bytes (L{EntropyPool.request}).
Waiting readers are served in turns, in the order they asked, a quantum at a
time, so that one reader asking for much cannot starve the others.  A
reader may pause (its consumer is full) and is skipped while paused; a
reader that goes away is cancelled, and any bytes not yet handed to it stay
in the pool for the others.  Bytes that arrive while the pool is full are
refused and counted: they were never handed to anybody.

Readers that never wait (EGD's non-blocking 0x01, which is answered at once
with whatever there is) would find the pool always empty while a waiting
reader drains every byte as it arrives.  Such readers register with
L{EntropyPool.addPollingReader}; each arrival is then split between the
waiting readers and the polling ones in proportion to their numbers, and the
polling readers' share is held in the pool for them (up to
C{POLLING_RESERVE} bytes each, or the size of the latest arrival if that is
larger, since keys deliver in chunks of 2,500 bytes) rather than handed to
the waiting ones.

While there is plenty, waiting readers get more than one quantum per turn:
an equal split of what is available, so that a pool with much in it serves
a large request in one piece.

The pool knows nothing of time, sockets or reactors.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Deque, List, Optional

DEFAULT_POOL_SIZE = 1 << 20
DEFAULT_QUANTUM = 32
POLLING_RESERVE = 255


class PendingRead:
    """
    A reader waiting for bytes.  Created by L{EntropyPool.request}.

    @ivar remaining: bytes still wanted, or C{None} for a reader that wants
        everything it can get (a sink).
    @ivar paused: whether the reader is skipped for now.
    """

    def __init__(self, pool: "EntropyPool", remaining: Optional[int],
                 deliver: Callable[[bytes], None], quantum: int):
        self._pool = pool
        self.remaining = remaining
        self._deliver = deliver
        self.quantum = quantum
        self.paused = False
        self.active = True

    def pause(self) -> None:
        """
        Stop receiving bytes until L{resume}.
        """
        self.paused = True

    def resume(self) -> None:
        """
        Receive bytes again, at once if the pool has some.
        """
        if self.paused:
            self.paused = False
            self._pool._distribute()

    def cancel(self) -> None:
        """
        Stop waiting; bytes not yet delivered stay in the pool.
        """
        self._pool._cancel(self)


class EntropyPool:
    """
    A bounded FIFO of verified entropy.

    @ivar capacity: the most bytes the pool holds.
    @ivar bytesIn: bytes accepted.
    @ivar bytesOut: bytes handed out.
    @ivar bytesRefused: bytes offered while the pool was full.
    """

    def __init__(self, capacity: int = DEFAULT_POOL_SIZE):
        """
        @param capacity: the most bytes held, at least 1.
        @raise ValueError: if it is not positive.
        """
        if capacity < 1:
            raise ValueError("the pool must hold at least one byte")
        self.capacity = capacity
        self._buffer = bytearray()
        self._start = 0
        self._waiting: Deque[PendingRead] = deque()
        self._distributing = False
        self._levelObservers: List[Callable[["EntropyPool"], None]] = []
        self._pollingReaders = 0
        self._reserved = 0
        self._lastArrival = 0
        self.bytesIn = 0
        self.bytesOut = 0
        self.bytesRefused = 0

    @property
    def level(self) -> int:
        """
        Bytes in the pool now.
        """
        return len(self._buffer) - self._start

    @property
    def space(self) -> int:
        """
        Bytes the pool can still take.
        """
        return self.capacity - self.level

    @property
    def waiting(self) -> int:
        """
        Readers waiting for bytes.
        """
        return len(self._waiting)

    def addPollingReader(self) -> Callable[[], None]:
        """
        Register a reader that takes without waiting, so that it keeps a
        share of what arrives while others wait.

        @return: a function to call once when that reader goes away.
        """
        self._pollingReaders += 1
        removed = []

        def remove():
            if not removed:
                removed.append(True)
                self._pollingReaders -= 1
                self._reserved = min(self._reserved, self._reserveLimit())
                self._distribute()

        return remove

    def _reserveLimit(self) -> int:
        perReader = max(POLLING_RESERVE, self._lastArrival)
        return min(self._pollingReaders * perReader, self.level)

    def observeLevel(self, observer: Callable[["EntropyPool"], None]) -> None:
        """
        Call C{observer(pool)} after every change of level (sources that
        pull, such as upstreams, use it to know when to pull again).
        """
        self._levelObservers.append(observer)

    def add(self, data: bytes) -> int:
        """
        Offer verified entropy.

        @return: how many bytes were accepted (fewer than offered only when
            the pool is full).
        """
        accepted = min(len(data), self.space)
        if accepted < len(data):
            self.bytesRefused += len(data) - accepted
        if accepted:
            self._buffer += data[:accepted] if accepted < len(data) else data
            self.bytesIn += accepted
            self._lastArrival = accepted
            if self._pollingReaders:
                waiting = sum(1 for p in self._waiting if not p.paused)
                share = accepted * self._pollingReaders // (waiting + self._pollingReaders)
                self._reserved = min(self._reserved + share, self._reserveLimit())
            self._distribute()
            self._notify()
        return accepted

    def take(self, n: int) -> bytes:
        """
        Take up to C{n} bytes now, without waiting.

        @return: between 0 and C{n} bytes.
        """
        data = self._remove(n)
        if data:
            self._notify()
        return data

    def request(self, n: Optional[int], deliver: Callable[[bytes], None],
                quantum: int = DEFAULT_QUANTUM) -> PendingRead:
        """
        Wait for C{n} bytes, delivered in pieces of at most C{quantum} bytes
        as they are available, in turn with other waiting readers.

        @param n: bytes wanted, or C{None} for all there ever will be.
        @param deliver: called with each piece.
        @return: the L{PendingRead}, to pause, resume or cancel.
        """
        pending = PendingRead(self, n, deliver, quantum)
        if n == 0:
            pending.active = False
            return pending
        self._waiting.append(pending)
        self._distribute()
        return pending

    def _cancel(self, pending: PendingRead) -> None:
        if pending.active:
            pending.active = False
            try:
                self._waiting.remove(pending)
            except ValueError:
                pass

    def _remove(self, n: int) -> bytes:
        n = min(n, self.level)
        if n <= 0:
            return b""
        # A reader taking without waiting uses up the reserve first.
        self._reserved = max(0, self._reserved - n)
        data = bytes(self._buffer[self._start : self._start + n])
        self._start += n
        self.bytesOut += n
        if self._start > 65536 and self._start * 2 > len(self._buffer):
            del self._buffer[: self._start]
            self._start = 0
        return data

    def _distribute(self) -> None:
        # Re-entrant calls (a delivery that adds, resumes or requests) are
        # folded into the loop already running.
        if self._distributing:
            return
        self._distributing = True
        changed = False
        try:
            skipped = 0
            while self._waiting and self.level > self._reserved and skipped < len(self._waiting):
                pending = self._waiting.popleft()
                if pending.paused:
                    self._waiting.append(pending)
                    skipped += 1
                    continue
                skipped = 0
                free = self.level - self._reserved
                # An equal split among the readers waiting, this one included.
                size = min(max(pending.quantum, free // (len(self._waiting) + 1)), free)
                if pending.remaining is not None:
                    size = min(size, pending.remaining)
                reserved = self._reserved
                data = self._remove(size)
                self._reserved = reserved
                changed = True
                if pending.remaining is not None:
                    pending.remaining -= len(data)
                done = pending.remaining == 0
                if done:
                    pending.active = False
                else:
                    self._waiting.append(pending)
                pending._deliver(data)
        finally:
            self._distributing = False
        if changed:
            self._notify()

    def _notify(self) -> None:
        for observer in list(self._levelObservers):
            observer(self)
