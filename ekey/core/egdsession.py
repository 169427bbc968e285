# -*- test-case-name: tests.test_egdsession -*-
"""
One EGD client's conversation with the server, sans-I/O.

L{EGDServerSession} takes the client's bytes (L{EGDServerSession.receiveData})
and the pool's bytes (through the L{EntropyPool} it reads from), and gives
out replies, a wish to stop or resume reading the client's requests, and
the time at which it wants to be called again (L{EGDServerSession.deadline},
L{EGDServerSession.tick}), through a L{SessionOutput}.  It never sees a
transport, a reactor or a clock: every input that depends on time carries
C{now}.

Commands are answered in order.  A blocking read (0x02) streams bytes as
they arrive and holds back the client's later commands until it is
complete; blocking reads that follow one another are one read of their
total, and a run the pool can answer now is served with one take and one
write.  While the client does not read (L{EGDServerSession.pause}), the
session takes nothing from the pool and reads no more requests.

Limits: a per-client rate (a token bucket keyed by the client's identity; a
client over its share waits, L{SessionState.RATE_WAIT}), an idle time-out
for clients that ask for nothing, a cap on the bytes a client may have
asked for and not yet received, and a cap on the commands queued behind a
blocking read.  A client that read recently keeps a share of the pool
(L{ACTIVE_WINDOW}): its part of its identity's part, so that many
connections of one identity do not multiply what it gets.
"""

from __future__ import annotations

import enum
import os
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Deque, Optional, Protocol

from ekey.core.egd import (
    Command,
    EGDServerParser,
    GetLevel,
    GetPID,
    Read,
    ReadBlocking,
    ReadBlockingRun,
    Write,
    encodeLevel,
    encodePID,
    encodeRead,
)
from ekey.core.errors import RemoteProtocolError
from ekey.core.pool import EntropyPool, PendingRead, ReaderShare
from ekey.core.ratelimit import RateLimiter

#: Parsed commands a connection may queue behind a blocking read before it
#: stops reading from its client.
MAX_QUEUED_COMMANDS = 64

#: Bytes a connection may have asked for and not yet received before the
#: server stops reading its requests.
DEFAULT_MAX_PENDING = 64 * 1024

#: Seconds after its last read during which a client between requests keeps
#: a share of what arrives (so that a client asking one request at a time,
#: a round trip apart, is not outrun by one with many in flight).
ACTIVE_WINDOW = 1.0

#: Blocking reads, alone or in a run: answered alike.
_BLOCKING = (ReadBlocking, ReadBlockingRun)


class SessionState(enum.Enum):
    """
    Where a session stands.

    @cvar IDLE: no blocking read in progress; commands are answered as
        they come.
    @cvar BLOCKING: serving a blocking read, waiting for the pool; later
        commands wait.
    @cvar RATE_WAIT: serving a blocking read, waiting for the client's rate
        limit to allow more (until L{EGDServerSession.deadline}).
    @cvar PAUSED: the client does not read its replies; nothing is taken
        from the pool and no request is read until it does.
    @cvar CLOSED: over; nothing more is done.
    """

    IDLE = "idle"
    BLOCKING = "blocking"
    RATE_WAIT = "rate-wait"
    PAUSED = "paused"
    CLOSED = "closed"


# The states as module constants for the session's own comparisons: on
# Python 3.11 every SessionState.X is a descriptor call (about 190 ns), and
# the path of one request compares states several times.
_IDLE = SessionState.IDLE
_BLOCKING_STATE = SessionState.BLOCKING
_RATE_WAIT = SessionState.RATE_WAIT
_PAUSED = SessionState.PAUSED
_CLOSED = SessionState.CLOSED


class CloseReason(enum.Enum):
    """
    Why a session asks for its connection to be closed.

    @cvar IDLE: the client asked for nothing for the idle time-out.
    @cvar PROTOCOL_ERROR: the client broke the protocol (a remote error).
    """

    IDLE = "idle"
    PROTOCOL_ERROR = "protocol error"


@dataclass
class EGDCounters:
    """
    What clients asked for and got.

    @ivar bytesServed: entropy bytes sent.
    @ivar requests: commands received, by name (a run of blocking reads
        counts as each of its reads).
    """

    bytesServed: int = 0
    requests: Counter = field(default_factory=Counter)


class SessionOutput(Protocol):
    """
    What a session asks of its connection.
    """

    def writeReply(self, data: bytes) -> None:
        """
        Send C{data} to the client.
        """

    def setReading(self, reading: bool) -> None:
        """
        Read the client's requests (C{True}) or stop reading them.
        """

    def wake(self) -> None:
        """
        Call L{EGDServerSession.tick} now: the pool completed a read outside
        any call that carried the time, and the session has more to do.
        """

    def closeSession(self, reason: CloseReason, detail: str) -> None:
        """
        Close the connection; the session is already closed.
        """

    def entropyOffered(self) -> None:
        """
        The client offered entropy (0x03), which is discarded; said once
        per session.
        """


class EGDServerSession:
    """
    One EGD client, sans-I/O.

    Inputs are public: L{receiveData}, L{tick}, L{pause}, L{resume},
    L{close}, L{setClientKey}.  Outputs go to the L{SessionOutput}.  After
    every input the caller asks L{deadline} when to call L{tick} next.

    @ivar state: the L{SessionState}.
    @ivar clientKey: who the client is, for its fair share and its rate
        limit (its identity: Unix user, certificate, or address).
    @ivar counters: this client's L{EGDCounters}.
    """

    def __init__(self, output: SessionOutput, pool: EntropyPool, clientKey: str, now: float,
                 limiter: Optional[RateLimiter] = None, idleTimeout: float = 0,
                 maxPendingBytes: int = DEFAULT_MAX_PENDING, pid: Optional[int] = None,
                 totals: Optional[EGDCounters] = None):
        """
        @param output: where replies and requests go.
        @param pool: where entropy comes from.
        @param clientKey: the client's identity (see L{setClientKey}).
        @param now: the time the client connected.
        @param limiter: the per-identity L{RateLimiter} (default none).
        @param idleTimeout: seconds a client may ask for nothing before it
            is closed (0: for ever).  A client waiting for a blocking read
            is not idle.
        @param maxPendingBytes: bytes a client may have asked for and not
            yet received before its requests stop being read.
        @param pid: what 0x04 answers (default this process's id at the
            time of the request).
        @param totals: L{EGDCounters} shared by every session of a listener,
            counted into beside this session's own.
        """
        self._output = output
        self._pool = pool
        self._limiter = limiter or RateLimiter(0, 0)
        self._idleTimeout = idleTimeout
        self._maxPendingBytes = maxPendingBytes
        self._pid = pid
        self._totals = totals if totals is not None else EGDCounters()
        self.state = _IDLE
        self.clientKey = clientKey
        self.counters = EGDCounters()
        self._parser = EGDServerParser(coalesce=True)
        self._queue: Deque[Command] = deque()
        self._queuedBytes = 0
        # Bytes of the blocking read in progress not yet served.
        self._remaining = 0
        self._pending: Optional[PendingRead] = None
        self._share: Optional[ReaderShare] = None
        self._activeUntil: Optional[float] = None
        self._rateDeadline: Optional[float] = None
        self._idleDeadline: Optional[float] = now + idleTimeout if idleTimeout else None
        self._reading = True
        self._offered = False
        # The time of the input being handled, else None (inputs nest when a
        # transport calls back from inside a write).
        self._now: Optional[float] = None
        self._inRequest = False
        self._advancing = False
        self._again = False

    @property
    def deadline(self) -> Optional[float]:
        """
        When L{tick} is due next (it may be called earlier or later), or
        C{None} when nothing is timed.
        """
        deadline = self._idleDeadline
        for other in (self._activeUntil,
                      self._rateDeadline if self.state is _RATE_WAIT else None):
            if other is not None and (deadline is None or other < deadline):
                deadline = other
        return deadline

    @property
    def outstanding(self) -> int:
        """
        Bytes the client asked for and has not yet received.
        """
        return self._queuedBytes + self._remaining

    # Inputs ---------------------------------------------------------------------------

    def receiveData(self, data: bytes, now: float) -> None:
        """
        The client sent C{data}.  Breaking the protocol closes the session
        (L{CloseReason.PROTOCOL_ERROR}).
        """
        if self.state is _CLOSED:
            return
        outer, self._now = self._now, now
        try:
            if self._idleTimeout and not self._remaining:
                self._idleDeadline = now + self._idleTimeout
            try:
                commands = self._parser.receiveData(data)
            except RemoteProtocolError as e:
                self._closeFor(CloseReason.PROTOCOL_ERROR, str(e))
                return
            for command in commands:
                self._queuedBytes += getattr(command, "n", 0)
            self._queue.extend(commands)
            self._advance()
        finally:
            self._now = outer

    def tick(self, now: float) -> None:
        """
        Time passed: do what is due at C{now} (close an idle client, give up
        a quiet client's share, end a rate wait) and carry on.
        """
        if self.state is _CLOSED:
            return
        outer, self._now = self._now, now
        try:
            if (self._idleDeadline is not None and now >= self._idleDeadline
                    and not self._remaining):
                self._closeFor(CloseReason.IDLE,
                               f"sent no request for {self._idleTimeout:g} s")
                return
            if self._activeUntil is not None and now >= self._activeUntil:
                if self._remaining:
                    # Still waiting for a blocking read (a long run of them
                    # takes seconds from a key): still active.
                    self._activeUntil = now + ACTIVE_WINDOW
                else:
                    self._dropShare()
            if self.state is _RATE_WAIT and now >= self._rateDeadline:
                self._rateDeadline = None
                self.state = _BLOCKING_STATE
            self._advance()
        finally:
            self._now = outer

    def pause(self) -> None:
        """
        The client stopped reading: take nothing from the pool and read no
        more requests until L{resume}.
        """
        if self.state in (_CLOSED, _PAUSED):
            return
        self.state = _PAUSED
        self._rateDeadline = None
        if self._pending is not None:
            self._pending.pause()
        self._setReading(False)

    def resume(self, now: float) -> None:
        """
        The client reads again: carry on where L{pause} stopped.
        """
        if self.state is not _PAUSED:
            return
        outer, self._now = self._now, now
        try:
            self.state = _BLOCKING_STATE if self._remaining else _IDLE
            if self._pending is not None:
                self._pending.resume()
            self._advance()
        finally:
            self._now = outer

    def close(self, now: float) -> None:
        """
        The connection is gone: bytes not yet delivered stay in the pool
        (and in the client's rate limit), the client's share returns to
        everybody.
        """
        self.state = _CLOSED
        self._release(now)

    def setClientKey(self, clientKey: str) -> None:
        """
        The client turned out to be C{clientKey} (a certificate seen at the
        end of a TLS handshake): its share and rate limit are those of that
        identity from now on.
        """
        if clientKey != self.clientKey:
            self._dropShare()
            self.clientKey = clientKey

    # The work -------------------------------------------------------------------------

    def _advance(self) -> None:
        # Not re-entrant: a call that comes back in (through the output)
        # asks the loop already running to go round again.
        if self._advancing:
            self._again = True
            return
        self._advancing = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self._work()
        finally:
            self._advancing = False
        if self.state is not _CLOSED:
            self._setReading(self.state is not _PAUSED
                             and len(self._queue) < MAX_QUEUED_COMMANDS
                             and self._queuedBytes + self._remaining < self._maxPendingBytes)

    def _work(self) -> None:
        queue = self._queue
        while True:
            state = self.state
            if state is _BLOCKING_STATE:
                pending = self._pending
                if pending is not None:
                    if pending.active:
                        return
                    self._pending = None
                self._serveBlocking()
                continue
            if state is not _IDLE or not queue:
                return
            command = queue.popleft()
            kind = type(command)
            if kind is ReadBlockingRun or kind is ReadBlocking:
                self._queuedBytes -= command.n
                self._count(command)
                self._startBlocking(command)
            elif kind is GetLevel:
                self._count(command)
                self._output.writeReply(encodeLevel(self._pool.level * 8))
            elif kind is Read:
                self._queuedBytes -= command.n
                self._count(command)
                self._read(command.n)
            elif kind is Write:
                self._count(command)
                if not self._offered:
                    self._offered = True
                    self._output.entropyOffered()
            elif kind is GetPID:
                self._count(command)
                self._output.writeReply(encodePID(self._pid or os.getpid()))

    def _count(self, command: Command) -> None:
        if type(command) is ReadBlockingRun:
            name, count = "ReadBlocking", command.count
        else:
            name, count = type(command).__name__, 1
        self.counters.requests[name] += count
        self._totals.requests[name] += count

    def _read(self, n: int) -> None:
        # 0x01: what there is now, within the client's rate.
        now = self._now
        self._stillActive()
        allowed = min(n, self._limiter.available(self.clientKey, now))
        data = self._pool.take(max(allowed, 0), self._share)
        self._limiter.consume(self.clientKey, len(data), now)
        self._served(len(data))
        self._output.writeReply(encodeRead(data))

    def _startBlocking(self, command) -> None:
        """
        Begin a blocking read, with the blocking reads queued right behind
        it that the pool and the rate limit can answer in full now: their
        replies are the bytes alone, back to back, so a run of them is one
        read of their total, served with one take and one write.
        """
        self._stillActive()
        total = command.n
        pool = self._pool
        queue = self._queue
        if queue and type(queue[0]) in _BLOCKING and not pool.waiting:
            budget = min(pool.availableTo(self._share),
                         self._limiter.available(self.clientKey, self._now))
            if total <= budget:
                while queue:
                    following = queue[0]
                    if type(following) not in _BLOCKING or total + following.n > budget:
                        break
                    queue.popleft()
                    self._count(following)
                    total += following.n
                self._queuedBytes -= total - command.n
        self._remaining = total
        self.state = _BLOCKING_STATE
        self._idleDeadline = None

    def _serveBlocking(self) -> None:
        """
        Serve the blocking read in progress as far as the pool and the rate
        limit allow now: take what there is when nobody else waits, else
        wait in turn; when the rate limit allows nothing, wait for the
        bucket to refill.
        """
        now = self._now
        pool = self._pool
        limiter = self._limiter
        limited = not limiter.unlimited
        key = self.clientKey
        while self._remaining > 0 and self.state is _BLOCKING_STATE:
            wanted = self._remaining
            if limited:
                allowed = limiter.available(key, now)
                if allowed <= 0:
                    self._rateDeadline = now + limiter.wait(key, wanted, now)
                    self.state = _RATE_WAIT
                    return
                wanted = min(wanted, allowed)
            if not pool.waiting:
                # Nobody else is waiting: take what there is at once (what a
                # turn would give), without queueing a request.
                data = pool.take(wanted, self._share)
                if data:
                    if limited:
                        limiter.consume(key, len(data), now)
                    self._deliver(data)
                    continue
            # What the request will deliver is counted against the rate now,
            # so that the identity's other connections cannot draw it too.
            if limited:
                limiter.consume(key, wanted, now)
            self._inRequest = True
            try:
                pending = pool.request(wanted, self._poolData, share=self._share)
            finally:
                self._inRequest = False
            if pending.active:
                self._pending = pending
                if self.state is _CLOSED:
                    # Closed by a write the request made: nothing more
                    # may be taken for it.
                    self._release(now)
                elif self.state is _PAUSED:
                    pending.pause()
                return
        if self._remaining == 0 and self.state is not _CLOSED:
            # Done: idle again (unless the last write paused the client).
            if self.state is _BLOCKING_STATE:
                self.state = _IDLE
            if self._idleTimeout:
                self._idleDeadline = now + self._idleTimeout
            if self._share is not None:
                self._activeUntil = now + ACTIVE_WINDOW
            else:
                self._stillActive()

    def _poolData(self, data: bytes) -> None:
        # The pool delivers part of a blocking read.
        if self.state is _CLOSED:
            return
        self._deliver(data)
        if self._inRequest:
            return
        pending = self._pending
        if pending is not None and not pending.active:
            if self._now is None:
                self._output.wake()
            else:
                # Inside one of this session's inputs, which carries on.
                self._again = True

    def _deliver(self, data: bytes) -> None:
        count = len(data)
        self._remaining -= count
        self.counters.bytesServed += count
        self._totals.bytesServed += count
        self._output.writeReply(data)

    def _served(self, count: int) -> None:
        self.counters.bytesServed += count
        self._totals.bytesServed += count

    def _stillActive(self) -> None:
        """
        This client just read: for L{ACTIVE_WINDOW} seconds, while it is not
        waiting, its identity keeps a share of what arrives (the pool's
        reserve for readers between requests).
        """
        if self._share is None:
            self._share = self._pool.addShare(self.clientKey)
        self._activeUntil = self._now + ACTIVE_WINDOW

    def _dropShare(self) -> None:
        self._activeUntil = None
        if self._share is not None:
            share, self._share = self._share, None
            share.remove()

    def _setReading(self, reading: bool) -> None:
        if reading != self._reading:
            self._reading = reading
            self._output.setReading(reading)

    def _closeFor(self, reason: CloseReason, detail: str) -> None:
        self.state = _CLOSED
        self._release(self._now)
        self._output.closeSession(reason, detail)

    def _release(self, now: float) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and pending.active:
            undelivered = pending.remaining or 0
            pending.cancel()
            self._limiter.refund(self.clientKey, undelivered, now)
        self._dropShare()
        self._queue.clear()
        self._queuedBytes = 0
        self._remaining = 0
        self._idleDeadline = None
        self._rateDeadline = None
