# -*- test-case-name: tests.test_pull -*-
"""
How a relay shares its demand among its upstreams: a policy that knows
nothing of sockets.

One L{PullPolicy} serves every upstream of a daemon.  When the pool falls
below the refill point a refill starts: the policy asks, in whole blocks,
for what the pool plus what is on its way from delivering upstreams lacks
of the high watermark, and asks again as bytes arrive, until the pool
itself holds the high watermark (to within a block); then it stops until
the pool falls again.  Bytes under test (an upstream's health tests hold
them until a whole FIPS 140-2 block has passed) do not count towards the
high watermark, so the pool may end a refill above it by what the tests
held back (a FIPS block and an adaptive proportion window per upstream,
about 3 KiB); never above its capacity, since the policy never asks for
more than the pool has room for, counting every byte asked of anybody or
under test.  (The pool should therefore be at least that much larger than
the refill point.)  Each upstream taking part is a
I{member} (an object with a C{pull(n)} method, which sends blocking reads
for C{n} bytes and says so with L{PullPolicy.requested}); the adapter tells
the policy what happens to it, and the policy owns all the accounting:

  - L{PullPolicy.attempting}, L{PullPolicy.failed}: a connection is being
    made, or could not be;
  - L{PullPolicy.connected}: the member can be asked now;
  - L{PullPolicy.requested}: C{n} bytes were asked of it;
  - L{PullPolicy.received}: C{n} of them arrived (they are then I{under
    test}, held by the member's health tests);
  - L{PullPolicy.released}: C{n} bytes under test passed and go to the pool;
  - L{PullPolicy.lost}: the connection went away; what it was asked and had
    not delivered, and what it held under test, is gone.

Sharing.  A refill is spread over every member that is connected and
delivering: no member holds more than its share (the bytes the refill still
needs divided by the members asked and those still connecting, rounded up
to whole blocks), so an upstream with nothing to give holds back at most
its share, and the others fill the rest.  A member is asked again as soon
as what it was asked arrives, so one that delivers fast carries most of a
refill.  While a member still has demand in flight, what readers take is
asked of it in batches (L{MIN_BATCH}, or half the distance between the
watermarks if that is less), not a few blocks at a time: each ask is a
write, and over TLS a record, and the member's own deliveries bring the
policy back to ask the rest.

Stalls.  A member that has been asked for bytes and has delivered nothing
for C{stallTimeout} seconds (by the injected clock) is I{stalled}: what it
holds no longer counts towards the refill, so the same demand is asked of
the others at once.  Its reads stay pending (EGD cannot cancel a blocking
read), so when it delivers again it is a member like the others; since
the policy never asks for more than the pool has room for, its late bytes
are never refused.

Losses.  A lost connection's demand is asked of the others at once (the
refill is not over until the pool itself is full).  Bytes that had passed
its tests stay in the pool; bytes still under test are discarded with the
connection.  The policy only ever re-issues demand, never bytes, so
nothing is counted or served twice and nothing is made up.

Priorities.  Each member has a priority, a number, lower first (0 by
default; C{--upstream tcp:host:8888:priority=1} sets it).  Only the members
of the lowest priority that has a connected, delivering member are asked:
backups (higher numbers) are asked only while every primary is down or
stalled.  Demand returns to the primaries as soon as one delivers again.
Members of one priority share the demand equally.

Refill point.  The point where pulling starts again adapts to demand.  When
readers empty the pool while a refill is on its way, the low watermark was
too low to cover the upstreams' round trip at the rate they draw: the next
refill starts earlier, a quarter of the way from the low watermark to the
high one each time, until under steady heavy demand the policy keeps the
upstreams busy, topping the pool up as it is drawn.  Every refill that
completes without the pool running dry moves the point back by the same
step, down to the low watermark.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from twisted.logger import Logger

from ekey.core.egd import MAX_READ
from ekey.core.pool import EntropyPool
from ekey.core.units import BLOCK_SIZE

#: Bytes per read: the most whole key blocks that fit in an EGD read, so
#: that blocks stay whole along a chain even from an upstream that serves
#: newest bytes first (ekeyd).
READ_SIZE = MAX_READ - MAX_READ % BLOCK_SIZE

#: Blocking reads one upstream connection may have in flight, at most (the
#: watermarks and shares usually bound them first).
MAX_PIPELINE = 4096

#: At most this many bytes are left unasked of a member that has demand
#: in flight, to be asked together with what follows (less when the
#: watermarks are closer together than twice this).
MIN_BATCH = 64 * 1024

DEFAULT_LOW_WATER = 64 * 1024
#: Half the default pool. A relay keeps at most this much in its pool and
#: in flight together, so a link carries at most this much per round trip:
#: at 256 KiB two relays in a row ran dry dozens of times a second on a
#: loaded 2-core machine and carried less than the same chain of stunnel
#: hops (benchmarks/results/relay-2026-11-30-high-water-ab.md).
DEFAULT_HIGH_WATER = 512 * 1024

#: Seconds an upstream may hold demand without delivering a byte before
#: its demand is asked of the others.
DEFAULT_STALL_TIMEOUT = 3.0


class _Ledger:
    """
    What the policy knows of one member.
    """

    def __init__(self, name: str, priority: int):
        self.name = name
        self.priority = priority
        self.connecting = False
        self.connected = False
        self.stalled = False
        self.inFlight = 0
        self.testing = 0
        self.lastProgress = 0.0
        self.timer = None

    @property
    def delivering(self) -> bool:
        return self.connected and not self.stalled


class PullPolicy:
    """
    Decide, for all upstreams together, how much to pull and from which.

    @ivar refillAt: the level below which pulling starts now, between the
        low watermark and the high one.
    @ivar ranDry: refills during which readers emptied the pool.
    @ivar filling: whether a refill is under way (from the level falling
        below the refill point until it reaches the high watermark).
    """

    log = Logger()

    def __init__(self, pool: EntropyPool, lowWater: int = DEFAULT_LOW_WATER,
                 highWater: int = DEFAULT_HIGH_WATER, *, clock,
                 stallTimeout: float = DEFAULT_STALL_TIMEOUT):
        """
        @param pool: the pool to keep filled.
        @param clock: an L{twisted.internet.interfaces.IReactorTime}, for
            stalls.
        @param stallTimeout: seconds a member may hold demand without
            delivering before its demand is asked of the others.
        @raise ValueError: unless C{0 <= lowWater < highWater <= capacity}
            and the stall time-out is positive.
        """
        if not 0 <= lowWater < highWater <= pool.capacity:
            raise ValueError(
                f"watermarks must satisfy 0 <= low ({lowWater}) < high ({highWater}) "
                f"<= pool size ({pool.capacity})"
            )
        if not stallTimeout > 0:
            raise ValueError(f"the stall time-out must be positive, not {stallTimeout}")
        self.pool = pool
        self.lowWater = lowWater
        self.highWater = highWater
        self.stallTimeout = stallTimeout
        self.clock = clock
        self._members: Dict[object, _Ledger] = {}
        self.filling = True
        self.refillAt = lowWater
        self.ranDry = 0
        self._dry = False
        self._step = max(READ_SIZE, (highWater - lowWater) // 4)
        # The least worth asking of a member that still has demand in flight
        # (its deliveries will bring the policy back here): asking for every
        # few blocks a reader takes would cost a write, and over TLS a
        # record, per take, on both ends.
        self._batch = min((highWater - lowWater) // 2, MIN_BATCH)
        self._batch -= self._batch % BLOCK_SIZE
        self._wasDown = False
        self._levelBefore = pool.level
        pool.observeLevel(self._levelChanged)

    # Members ---------------------------------------------------------------------------

    @property
    def upstreams(self) -> List[object]:
        """
        Every member, in the order they joined.
        """
        return list(self._members)

    def join(self, member, name: str, priority: int = 0) -> None:
        """
        Take part in refills from now on (not yet connected).

        @param member: an object with a C{pull(n)} method.
        @param name: what logs call it.
        @param priority: lower numbers are asked first.
        """
        self._members[member] = _Ledger(name, priority)

    def attempting(self, member) -> None:
        """
        A connection to C{member} is being made: until it is up or has
        failed, it counts among those the refill is shared by.
        """
        self._members[member].connecting = True

    def failed(self, member) -> None:
        """
        A connection attempt to C{member} failed: the others may take its
        share.
        """
        self._members[member].connecting = False
        self.kick()

    def connected(self, member) -> None:
        """
        C{member} can be asked for bytes now.
        """
        ledger = self._members[member]
        ledger.connecting = False
        ledger.connected = True
        ledger.stalled = False
        self._stateChanged()
        self.kick()

    def requested(self, member, n: int) -> None:
        """
        C{n} more bytes were asked of C{member}.
        """
        ledger = self._members[member]
        if not ledger.inFlight:
            ledger.lastProgress = self.clock.seconds()
        ledger.inFlight += n
        self._watch(member, ledger)

    def received(self, member, n: int) -> None:
        """
        C{n} bytes asked of C{member} arrived; they are under test until
        L{released} (or lost).
        """
        ledger = self._members[member]
        ledger.inFlight -= n
        ledger.testing += n
        ledger.lastProgress = self.clock.seconds()
        if ledger.stalled:
            ledger.stalled = False
            self.log.info("Upstream {upstream} delivers again", upstream=ledger.name)
        self._watch(member, ledger)

    def released(self, member, n: int) -> None:
        """
        C{n} bytes of C{member}'s passed their tests and are going to the
        pool now.
        """
        self._members[member].testing -= n

    def lost(self, member) -> None:
        """
        C{member}'s connection went away: what it was asked and had not
        delivered is asked of the others at once; what it held under test
        is discarded.
        """
        ledger = self._members[member]
        lostDemand = ledger.inFlight
        ledger.connecting = False
        ledger.connected = False
        ledger.stalled = False
        ledger.inFlight = 0
        ledger.testing = 0
        self._cancelTimer(ledger)
        self._stateChanged()
        if lostDemand:
            self.kick()

    def inFlightOf(self, member) -> int:
        """
        @return: bytes asked of C{member} and not yet received.
        """
        return self._members[member].inFlight

    def testingOf(self, member) -> int:
        """
        @return: bytes received from C{member} and still under test.
        """
        return self._members[member].testing

    def isStalled(self, member) -> bool:
        """
        @return: whether C{member} holds demand it has not delivered for
            the stall time-out.
        """
        return self._members[member].stalled

    # Stalls ----------------------------------------------------------------------------

    def _cancelTimer(self, ledger: _Ledger) -> None:
        if ledger.timer is not None:
            if ledger.timer.active():
                ledger.timer.cancel()
            ledger.timer = None

    def _watch(self, member, ledger: _Ledger) -> None:
        # While a member holds demand and is not stalled, a timer checks
        # that it keeps delivering.
        if ledger.timer is None and ledger.inFlight and ledger.connected and not ledger.stalled:
            due = ledger.lastProgress + self.stallTimeout
            ledger.timer = self.clock.callLater(max(0, due - self.clock.seconds()),
                                                self._checkStall, member)

    def _checkStall(self, member) -> None:
        ledger = self._members[member]
        ledger.timer = None
        if not ledger.inFlight or not ledger.connected or ledger.stalled:
            return
        if self.clock.seconds() < ledger.lastProgress + self.stallTimeout:
            self._watch(member, ledger)
            return
        ledger.stalled = True
        self.log.warn(
            "Upstream {upstream} delivered nothing for {timeout} s: asking the others "
            "for its {held} bytes", upstream=ledger.name, timeout=self.stallTimeout,
            held=ledger.inFlight)
        self.kick()

    # Demand ----------------------------------------------------------------------------

    @property
    def inFlight(self) -> int:
        """
        Bytes asked of every member and not yet received.
        """
        return sum(ledger.inFlight for ledger in self._members.values())

    def _counted(self) -> Tuple[int, int]:
        # What counts towards the refill (asked of members delivering), and
        # everything the pool may yet have to take.
        active = committed = 0
        for ledger in self._members.values():
            committed += ledger.inFlight + ledger.testing
            if not ledger.stalled:
                active += ledger.inFlight
        return active, committed

    def wanted(self) -> int:
        """
        @return: bytes to ask for now, from whoever may be asked (0 when
            the pool is full enough).
        """
        if not self.filling:
            return 0
        active, committed = self._counted()
        level = self.pool.level
        want = min(self.highWater - level - active, self.pool.capacity - level - committed)
        # Whole blocks only, so that blocks stay whole along a chain.
        want -= want % BLOCK_SIZE
        return max(0, want)

    def allocate(self) -> List[Tuple[object, int]]:
        """
        Share what is wanted among the members that may be asked now.

        @return: C{(member, n)} pairs, C{n} bytes (whole blocks) to ask of
            each.
        """
        want = self.wanted()
        if not want:
            return []
        asked = [(member, ledger) for member, ledger in self._members.items()
                 if ledger.delivering]
        if want < self._batch and all(ledger.inFlight for _, ledger in asked):
            # Less than a batch for members that all have demand in flight:
            # nothing to ask yet (the common case while readers draw).
            return []
        if not asked:
            return []
        best = min(ledger.priority for _, ledger in asked)
        asked = [(m, ledger) for m, ledger in asked if ledger.priority == best]
        # Each member's share of what this refill still needs, among those
        # of this priority that deliver or are about to connect.
        sharing = len(asked) + sum(1 for ledger in self._members.values()
                                   if ledger.connecting and ledger.priority == best)
        needed = self.highWater - self.pool.level
        share = -(-needed // sharing)
        share += -share % BLOCK_SIZE
        share = min(share, MAX_PIPELINE * READ_SIZE)
        out = []
        for member, ledger in sorted(asked, key=lambda pair: pair[1].inFlight):
            give = min(share - ledger.inFlight, want)
            if give <= 0 or (ledger.inFlight and give < self._batch):
                continue
            out.append((member, give))
            want -= give
            if not want:
                break
        return out

    def kick(self) -> None:
        """
        Ask the members for what is wanted now.
        """
        for member, n in self.allocate():
            member.pull(n)

    def _refillDone(self) -> None:
        if self._dry:
            self.ranDry += 1
            self.refillAt = min(self.highWater - min(READ_SIZE, self.highWater - self.lowWater),
                                self.refillAt + self._step)
        else:
            self.refillAt = max(self.lowWater, self.refillAt - self._step)
        self._dry = False

    def _levelChanged(self, pool: EntropyPool) -> None:
        # The previous level is replaced first: a kick may add bytes and
        # bring us back here.
        level = pool.level
        before, self._levelBefore = self._levelBefore, level
        if self.filling:
            if not level and self.inFlight:
                self._dry = True
            if level > self.highWater - BLOCK_SIZE:
                # Nothing more to ask for in whole blocks: the refill is over.
                self.filling = False
                self._refillDone()
            elif level < before:
                # Readers took bytes during the refill: there is room to ask
                # for again (a refill whose last bytes are still under test
                # may otherwise wait for deliveries that nobody asked for).
                self.kick()
        elif level < self.refillAt:
            self.filling = True
            self.kick()

    # Up and down -----------------------------------------------------------------------

    @property
    def upCount(self) -> int:
        """
        Members connected now.
        """
        return sum(1 for ledger in self._members.values() if ledger.connected)

    def _stateChanged(self) -> None:
        down = self.upCount == 0
        if down and not self._wasDown:
            self.log.warn(
                "Every upstream is down: serving only the {poolLevel} bytes the pool holds "
                "until one comes back",
                poolLevel=self.pool.level,
            )
        elif not down and self._wasDown:
            self.log.info("An upstream is back: pulling again")
        self._wasDown = down

