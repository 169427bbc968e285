# -*- test-case-name: tests.test_pool -*-
"""
The entropy pool: verified bytes from every source, each handed out once.

The pool is bounded and first-in first-out.  Readers either take what
there is (L{EntropyPool.take}) or wait for bytes (L{EntropyPool.request}).
Waiting readers are served in turns, in the order they asked, so that one
reader asking for much cannot starve the others; while there is plenty,
each turn is an equal split of what is free.  A reader may pause (its
consumer is full) and is skipped while paused; a reader that goes away is
cancelled, and any bytes not yet handed to it stay in the pool for the
others.  Bytes that arrive while the pool is full are refused and counted:
they were never handed to anybody.

Turns among the readers waiting at one moment are not enough: a reader
that asks once and then waits a round trip before asking again (EGD's
non-blocking 0x01, or a client doing one blocking read at a time) is never
waiting when bytes arrive, and a reader with many requests in flight would
take every byte.  So a reader that is active (it read recently) holds a
L{ReaderShare}: every arrival is split equally among the active readers
and the waiting readers without a share (sinks, feeders, relays); an active
reader's part is held in the pool for it (up to C{POLLING_RESERVE} bytes,
or the size of the latest arrival if larger, since keys deliver in
2,500-byte chunks) and its reads are served from it first, so a reader
asking one request at a time gets as much as one with many in flight.  A
share given up (the reader went quiet) returns to everybody.

Fairness is among owners first, then among each owner's readers: readers
that say who they are (an EGD server keys its clients by Unix user,
certificate or address) split their owner's part of each arrival between
them, and waiting readers take their turns by owner (the owner's readers in
turn among themselves), so that opening many connections does not multiply
a client's part, and its connections are still fair to one another.

The pool knows nothing of time, sockets or reactors.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Deque, Dict, Hashable, List, Optional

from ekey.core.units import BLOCK_SIZE

DEFAULT_POOL_SIZE = 1 << 20
POLLING_RESERVE = 256


class ReaderShare:
    """
    An active reader's part of the pool (its part of its owner's part).
    Created by L{EntropyPool.addShare}.

    @ivar owner: who the reader is (C{None}: an owner of its own).
    @ivar reserved: bytes of the pool held for this reader.
    @ivar removed: whether the reader gave it up.
    """

    def __init__(self, pool: "EntropyPool", owner: Optional[Hashable] = None):
        self._pool = pool
        self.owner = owner
        self.reserved = 0
        # Entitlement not yet reserved: shares are reserved in whole 32-byte
        # blocks, and small arrivals add up.
        self.owed = 0
        self.removed = False
        self._waitingReads = 0

    @property
    def waiting(self) -> bool:
        """
        Whether the reader is waiting (it then takes its turns among the
        waiting readers instead of gathering a share).
        """
        return self._waitingReads > 0

    def remove(self) -> None:
        """
        The reader went quiet or away: its share returns to everybody.
        """
        self._pool._removeShare(self)


class PendingRead:
    """
    A reader waiting for bytes.  Created by L{EntropyPool.request}.

    @ivar remaining: bytes still wanted, or C{None} for a reader that wants
        everything it can get (a sink).
    @ivar paused: whether the reader is skipped for now.
    """

    def __init__(self, pool: "EntropyPool", remaining: Optional[int],
                 deliver: Callable[[bytes], None], quantum: int,
                 share: Optional[ReaderShare] = None):
        self._pool = pool
        self.remaining = remaining
        self._deliver = deliver
        self.quantum = quantum
        self.share = share
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

    def _finished(self) -> None:
        self.active = False
        if self.share is not None:
            self.share._waitingReads -= 1


def _turnKey(pending: PendingRead) -> Hashable:
    # Whose turn a waiting reader takes: its owner's, else its own.
    share = pending.share
    if share is None:
        return pending
    return share if share.owner is None else share.owner


class _Turns:
    """
    The waiting readers of one owner, in the order they take their turns.
    """

    __slots__ = ("key", "reads")

    def __init__(self, key: Hashable):
        self.key = key
        self.reads: Deque[PendingRead] = deque()


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
        # Owners with readers waiting, in turn; each owner's readers in turn.
        self._turns: Deque[_Turns] = deque()
        self._turnsByOwner: Dict[Hashable, _Turns] = {}
        self._waitingCount = 0
        self._distributing = False
        self._levelObservers: List[Callable[["EntropyPool"], None]] = []
        self._shares: List[ReaderShare] = []
        # Every share, by owner (an anonymous share is its own owner).
        self._owners: Dict[Hashable, List[ReaderShare]] = {}
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
        return self._waitingCount

    @property
    def reserved(self) -> int:
        """
        Bytes held for active readers' shares.
        """
        return self._reserved

    def observeLevel(self, observer: Callable[["EntropyPool"], None]) -> None:
        """
        Call C{observer(pool)} after every change of level (sources that
        pull, such as upstreams, use it to know when to pull again).
        """
        self._levelObservers.append(observer)

    # Shares -------------------------------------------------------------------------

    def addShare(self, owner: Optional[Hashable] = None) -> ReaderShare:
        """
        A reader became active: give it a share, with its part of its
        owner's part of what is free now.

        @param owner: who the reader is (C{None}: an owner of its own).
        """
        share = ReaderShare(self, owner)
        self._shares.append(share)
        group = self._owners.setdefault(share if owner is None else owner, [])
        group.append(share)
        self._grant(share, (self.level - self._reserved) // self._holders() // len(group))
        return share

    def _holders(self) -> int:
        # Everybody with a claim on an arrival: every owner with an active
        # reader, and every waiting reader without a share (sinks, feeders,
        # relays).
        unshared = 0
        for turns in self._turns:
            for pending in turns.reads:
                if pending.share is None and not pending.paused:
                    unshared += 1
        return max(1, len(self._owners) + unshared)

    def _removeShare(self, share: ReaderShare) -> None:
        if share.removed:
            return
        share.removed = True
        self._shares.remove(share)
        key = share if share.owner is None else share.owner
        group = self._owners[key]
        group.remove(share)
        if not group:
            del self._owners[key]
        self._reserved -= share.reserved
        share.reserved = 0
        self._distribute()

    def _shareCap(self) -> int:
        return max(POLLING_RESERVE, self._lastArrival)

    def _grant(self, share: ReaderShare, amount: int) -> None:
        cap = self._shareCap()
        share.owed = min(share.owed + amount, cap)
        amount = min(share.owed, cap - share.reserved, self.level - self._reserved)
        # Whole 32-byte blocks, so that readers asking for whole blocks get
        # the key's blocks whole.
        amount -= amount % BLOCK_SIZE
        if amount > 0:
            share.owed -= amount
            share.reserved += amount
            self._reserved += amount

    # Adding and taking ----------------------------------------------------------------

    def add(self, data: bytes) -> int:
        """
        Offer verified entropy.

        @return: how many bytes were accepted (fewer than offered only when
            the pool is full).
        """
        accepted = len(data)
        if accepted > self.space:
            # Whole blocks only: the rest of a block would reach a reader
            # without its beginning.
            accepted = self.space - self.space % BLOCK_SIZE
        if accepted < len(data):
            self.bytesRefused += len(data) - accepted
        if accepted:
            self._buffer += data[:accepted] if accepted < len(data) else data
            self.bytesIn += accepted
            self._lastArrival = accepted
            if self._owners:
                part = accepted // self._holders()
                for group in self._owners.values():
                    each = part // len(group)
                    for share in group:
                        self._grant(share, each)
            self._distribute()
            self._notify()
        return accepted

    def availableTo(self, share: Optional[ReaderShare] = None) -> int:
        """
        @return: the most L{take} would give the holder of C{share} now.
        """
        return (share.reserved if share is not None else 0) + self.level - self._reserved

    def take(self, n: int, share: Optional[ReaderShare] = None) -> bytes:
        """
        Take up to C{n} bytes now, without waiting: the reader's share
        first, then what nobody holds.

        @return: between 0 and C{n} bytes.
        """
        own = min(n, share.reserved) if share is not None else 0
        data = self._remove(own + min(n - own, self.level - self._reserved))
        self._release(share, own)
        if data:
            self._notify()
        return data

    def request(self, n: Optional[int], deliver: Callable[[bytes], None],
                quantum: int = BLOCK_SIZE,
                share: Optional[ReaderShare] = None) -> PendingRead:
        """
        Wait for C{n} bytes, delivered in pieces as they are available, in
        turn with other waiting readers; from the reader's share at once,
        if it has one.

        @param n: bytes wanted, or C{None} for all there ever will be.
        @param deliver: called with each piece.
        @param quantum: the least a turn gives, and the unit its turns are
            rounded to (default one block, L{BLOCK_SIZE}).
        @param share: the reader's L{ReaderShare}, if it has one.
        @return: the L{PendingRead}, to pause, resume or cancel.
        """
        if share is not None and share.reserved and n != 0:
            own = share.reserved if n is None else min(n, share.reserved)
            data = self._remove(own)
            self._release(share, own)
            n = None if n is None else n - own
            deliver(data)
            self._notify()
        pending = PendingRead(self, n, deliver, quantum, share)
        if n == 0:
            pending.active = False
            return pending
        if share is not None:
            share._waitingReads += 1
        key = _turnKey(pending)
        turns = self._turnsByOwner.get(key)
        if turns is None:
            turns = self._turnsByOwner[key] = _Turns(key)
            self._turns.append(turns)
        turns.reads.append(pending)
        self._waitingCount += 1
        self._distribute()
        return pending

    def _release(self, share: Optional[ReaderShare], amount: int) -> None:
        if share is not None and amount:
            share.reserved -= amount
            self._reserved -= amount

    def _cancel(self, pending: PendingRead) -> None:
        if pending.active:
            pending._finished()
            self._unwait(pending)

    def _unwait(self, pending: PendingRead) -> None:
        key = _turnKey(pending)
        turns = self._turnsByOwner.get(key)
        if turns is None:
            return
        try:
            turns.reads.remove(pending)
        except ValueError:
            return
        self._waitingCount -= 1
        if not turns.reads:
            del self._turnsByOwner[key]
            self._turns.remove(turns)

    def _remove(self, n: int) -> bytes:
        n = min(n, self.level)
        if n <= 0:
            return b""
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
            turns = self._turns
            skipped = 0
            while turns and skipped < len(turns):
                owner = turns.popleft()
                reads = owner.reads
                # The owner's first reader with bytes held for it, else its
                # first reader that is not paused.
                pick = -1
                for index, candidate in enumerate(reads):
                    if candidate.paused:
                        continue
                    if candidate.share is not None and candidate.share.reserved:
                        pick = index
                        break
                    if pick < 0:
                        pick = index
                if pick < 0:
                    turns.append(owner)
                    skipped += 1
                    continue
                pending = reads[pick]
                share = pending.share
                own = share.reserved if share is not None else 0
                free = self.level - self._reserved
                if not own and free <= 0:
                    turns.append(owner)
                    skipped += 1
                    continue
                if own:
                    # A reader with a share is served from it first.
                    size = own
                else:
                    # An equal split among the owners waiting, this one
                    # included, in whole quanta (blocks stay whole).
                    split = free // (len(turns) + 1)
                    split -= split % pending.quantum
                    size = min(max(pending.quantum, split), free)
                if pending.remaining is not None:
                    size = min(size, pending.remaining)
                skipped = 0
                data = self._remove(size)
                if own:
                    self._release(share, len(data))
                changed = True
                del reads[pick]
                if pending.remaining is not None:
                    pending.remaining -= len(data)
                if pending.remaining == 0:
                    pending._finished()
                    self._waitingCount -= 1
                else:
                    reads.append(pending)
                if reads:
                    turns.append(owner)
                else:
                    del self._turnsByOwner[owner.key]
                pending._deliver(data)
        finally:
            self._distributing = False
        if changed:
            self._notify()

    def _notify(self) -> None:
        for observer in list(self._levelObservers):
            observer(self)
