# -*- test-case-name: tests.test_keypipeline -*-
"""
One key's connection, from the bytes it sends to tested entropy, sans-I/O.

L{KeyPipeline} joins the three decisions made for every byte a key sends:
the protocol (L{KeySession}: frames, MACs, re-keys), the health tests of
what it decrypts (L{HealthMonitor}), and whether there is room for more in
the pool it feeds.  It never sees a transport, a reactor or a pool, only
numbers and bytes, as aioquic's connection does:

  - inputs: L{connectionMade}, L{receiveData}, L{roomChanged},
    L{handleTimer}, L{connectionLost}, and the operator's L{halt} and
    L{keyringChanged}; those that may start a timer take the time now;
  - outputs: L{dataToSend} (bytes for the key), L{takeEntropy} (verified,
    tested entropy, never more than the room there is), L{takeEvents}
    (changes of state, information, garbage and time-outs, for the log),
    L{readingWanted} (whether the adapter should read the key) and
    L{timer} (when L{handleTimer} is due).

While the pool has no room for the next tested chunk, bytes read from the
key wait here undecoded (at most one read of a transport that is then
paused), so that no work is spent verifying entropy the pool would refuse.
The handshake is never held back: while the key is not running, or a
session re-key is unanswered, its bytes are decoded whatever the room, so
that a full pool neither leaves a new key waiting for its serial number nor
lets a re-key reply time out; entropy decoded then waits here until there
is room.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from ekey.core.health import FIPS_BLOCK_BYTES, HealthMonitor
from ekey.core.keyring import Keyring
from ekey.core.session import REKEY_TIMEOUT, EntropyReceived, KeySession, KeyState
from ekey.core.units import BLOCK_SIZE

#: Bytes from a key decoded at a time (64 frames, 2,048 bytes of entropy:
#: less than one FIPS block, so that a slice never overfills the room that
#: let it be decoded).
DECODE_SLICE = 4096

#: Seconds between two reports of garbage from the same key.
GARBAGE_REPORT_INTERVAL = 60.0


@dataclass(frozen=True)
class GarbageDiscarded:
    """
    The key sent bytes that are not frames; they were discarded.  Reported
    at most once every L{GARBAGE_REPORT_INTERVAL} seconds.

    @ivar count: bytes discarded since the last report.
    @ivar framingErrors: framing errors on this connection, in all.
    """

    count: int
    framingErrors: int


@dataclass(frozen=True)
class RekeyTimedOut:
    """
    The key did not answer a session re-key within C{seconds}; it is reset.
    """

    seconds: float


class KeyPipeline:
    """
    One connection to a key: its session, the key's health monitor and the
    room in the pool it feeds.

    @ivar session: the L{KeySession} of this connection.
    @ivar health: the key's L{HealthMonitor} (kept across connections by
        whoever makes the pipelines, so that a key that failed stays
        stopped).
    @ivar connectedAt: when L{connectionMade} was called, else C{None}.
    """

    def __init__(self, session: KeySession, health: HealthMonitor,
                 room: Optional[int] = None, roomNeeded: int = FIPS_BLOCK_BYTES,
                 decodeSlice: int = DECODE_SLICE):
        """
        @param session: a fresh L{KeySession}.
        @param health: the key's L{HealthMonitor}.
        @param room: bytes the pool can take now, or C{None} for no limit.
        @param roomNeeded: the room below which the key is not read (one
            FIPS block: what the health monitor may release at once).
        @param decodeSlice: bytes decoded at a time.
        """
        self.session = session
        self.health = health
        self.connectedAt: Optional[float] = None
        self._room = room
        self._roomNeeded = roomNeeded
        self._decodeSlice = decodeSlice
        self._backlog = b""
        self._ready = bytearray()
        self._events: List[object] = []
        self._deadline: Optional[float] = None
        self._garbageReportedAt: Optional[float] = None
        self._garbageReported = 0

    # Inputs --------------------------------------------------------------------

    def connectionMade(self, now: float) -> None:
        """
        The key is connected: reset it, or, if its output failed the health
        tests before, stop it at once.

        @param now: the time now.
        """
        self.connectedAt = now
        if self.health.failure is not None:
            self._events += self.session.halt(KeyState.FAILED_HEALTH, self.health.failure)
        else:
            self._events += self.session.connectionMade()
        self._settle(now)

    def receiveData(self, data: bytes, now: float) -> None:
        """
        Bytes from the key: decode them now if there is room, else keep
        them until there is.

        @param now: the time now.
        """
        self._backlog += data
        self._settle(now)

    def roomChanged(self, room: Optional[int], now: Optional[float] = None) -> None:
        """
        The pool's room changed (a reader took bytes, or entropy from
        L{takeEntropy} went in): decode what waits, as far as it fits.

        @param room: bytes the pool can take now, or C{None} for no limit.
        @param now: the time now; it may be left out while nothing waits
            (L{holding} is false), which is most of the time.
        """
        self._room = room
        if self._backlog or self._ready:
            self._settle(now)

    def handleTimer(self, now: float) -> None:
        """
        The time of L{timer} has come: a re-key still unanswered resets the
        key.

        @param now: the time now.
        """
        if self._deadline is not None and now >= self._deadline:
            self._deadline = None
            if self.session.awaitingRekeyReply:
                self._events.append(RekeyTimedOut(REKEY_TIMEOUT))
                self._events += self.session.rekeyTimedOut()
        self._settle(now)

    def connectionLost(self, reason: str) -> None:
        """
        The key is gone.  What it sent and was not yet handed on is dropped
        (bytes not decoded, entropy held by the health tests, tested
        entropy waiting for room), so that nothing from this connection
        comes out after it, mixed with the next one's.

        @param reason: why, in words.
        """
        self._backlog = b""
        self._ready.clear()
        self.health.streamEnded()
        self._deadline = None
        self._events += self.session.connectionLost(reason)

    def halt(self, state: KeyState, reason: str) -> None:
        """
        Stop using the key for a reason found outside the protocol.

        @param state: a stopped L{KeyState}.
        @raise ValueError: if it is not one.
        """
        self._events += self.session.halt(state, reason)
        self._deadline = None

    def keyringChanged(self, keyring: Keyring) -> bool:
        """
        The keyring in force changed: a key stopped for want of its
        long-term key (unknown serial, or a key that did not verify) starts
        again from its serial number with the new keyring; a key in any
        other state keeps its session.

        @return: whether the key was restarted.
        """
        if self.session.state not in (KeyState.UNKNOWN_SERIAL, KeyState.BAD_LONG_TERM_KEY):
            return False
        self.session.keyring = keyring
        self._events += self.session.restart("keyring reloaded")
        return True

    # Outputs -------------------------------------------------------------------

    def dataToSend(self) -> bytes:
        """
        @return: the bytes to send to the key now (and forget them).
        """
        return self.session.dataToSend()

    def takeEntropy(self) -> bytes:
        """
        @return: verified entropy that passed the health tests, in whole
            32-byte blocks and no more than the room there is (and forget
            it); possibly empty.
        """
        size = len(self._ready)
        if self._room is not None:
            size = min(size, max(self._room, 0))
            size -= size % BLOCK_SIZE
            self._room -= size
        data = bytes(self._ready[:size])
        del self._ready[:size]
        return data

    def takeEvents(self) -> List[object]:
        """
        @return: what happened since the last call, in order (and forget
            it): L{ekey.core.session.StateChanged},
            L{ekey.core.session.InformationReceived}, L{GarbageDiscarded},
            L{RekeyTimedOut}.
        """
        events, self._events = self._events, []
        return events

    @property
    def holding(self) -> bool:
        """
        Whether bytes from the key or tested entropy wait for room.
        """
        return bool(self._backlog or self._ready)

    @property
    def readingWanted(self) -> bool:
        """
        Whether the key should be read now (else its transport should be
        paused until this is true again).
        """
        return self._mayDecode()

    def timer(self) -> Optional[float]:
        """
        @return: when L{handleTimer} must be called, or C{None}.
        """
        return self._deadline

    # Helpers -------------------------------------------------------------------

    def _mayDecode(self) -> bool:
        session = self.session
        if self._room is None or session.state is not KeyState.RUNNING:
            return True
        if session.awaitingRekeyReply:
            return True
        return self._room - len(self._ready) >= self._roomNeeded

    def _settle(self, now: float) -> None:
        # Decode a slice at a time while there is room, then note garbage
        # and start or stop the re-key timer.
        while self._backlog and self._mayDecode():
            chunk = self._backlog[: self._decodeSlice]
            self._backlog = self._backlog[self._decodeSlice :]
            self._decoded(self.session.receiveData(chunk))
        self._noteGarbage(now)
        if not self.session.awaitingRekeyReply:
            self._deadline = None
        elif self._deadline is None:
            self._deadline = now + REKEY_TIMEOUT

    def _decoded(self, events: List[object]) -> None:
        for event in events:
            if not isinstance(event, EntropyReceived):
                self._events.append(event)
                continue
            if self.session.state.stopped:
                continue
            for chunk in self.health.feed(event.data):
                self._ready += chunk
            if self.health.failure is not None:
                self._events += self.session.halt(KeyState.FAILED_HEALTH, self.health.failure)

    def _noteGarbage(self, now: float) -> None:
        discarded = self.session.statistics.bytesDiscarded
        last = self._garbageReportedAt
        if discarded > self._garbageReported and (
                last is None or now - last >= GARBAGE_REPORT_INTERVAL):
            self._events.append(GarbageDiscarded(discarded - self._garbageReported,
                                                 self.session.statistics.framingErrors))
            self._garbageReportedAt = now
            self._garbageReported = discarded
