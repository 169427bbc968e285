# -*- test-case-name: tests.test_status -*-
"""
The daemon's state as one typed model: frozen snapshots that each service
answers from C{status()}, and that every front end (ekeyctl's AMP channel,
ekeyd's text control protocol, Prometheus, the status page) renders.  No
consumer reaches into a service's internals, and no state is turned into
words to be parsed back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional, Tuple

from ekey.core.session import KeyState


@dataclass(frozen=True)
class KeyReadings:
    """
    A key's counters and latest readings, copied from its session's
    L{ekey.core.session.KeyStatistics} (readings are C{None} until the key
    has sent them).
    """

    bytesRead: int
    bytesWritten: int
    framesOK: int
    framingErrors: int
    bytesDiscarded: int
    packetsOK: int
    packetErrors: int
    macFailures: int
    resets: int
    noncesSent: int
    rekeys: int
    entropyBytes: int
    temperatureTenthsK: Optional[int]
    voltageMillivolts: Optional[int]
    fipsBlocks: Optional[int]
    fipsFailures: Optional[int]
    firstFipsBlocks: Optional[int]
    failMode: Optional[str]
    shannonsPerByte: tuple  # ((name, value), ...) as KeyStatistics.shannonsPerByte() gives

    @classmethod
    def fromStatistics(cls, st) -> "KeyReadings":
        """
        @param st: a L{ekey.core.session.KeyStatistics}.
        """
        return cls(
            bytesRead=st.bytesRead, bytesWritten=st.bytesWritten, framesOK=st.framesOK,
            framingErrors=st.framingErrors, bytesDiscarded=st.bytesDiscarded,
            packetsOK=st.packetsOK, packetErrors=st.packetErrors, macFailures=st.macFailures,
            resets=st.resets, noncesSent=st.noncesSent, rekeys=st.rekeys,
            entropyBytes=st.entropyBytes, temperatureTenthsK=st.temperatureTenthsK,
            voltageMillivolts=st.voltageMillivolts, fipsBlocks=st.fipsBlocks,
            fipsFailures=st.fipsFailures, firstFipsBlocks=st.firstFipsBlocks,
            failMode=st.failMode, shannonsPerByte=tuple(st.shannonsPerByte().items()))


@dataclass(frozen=True)
class KeyStatus:
    """
    One key, as its L{ekey.services.device.KeyService} sees it now.

    @ivar path: the device or socket path.
    @ivar state: where it stands (L{KeyState.CLOSED} while not connected).
    @ivar reason: why it is in that state, in words.
    @ivar serial: its serial number (PEM text), once it has said it.
    @ivar connectedAt: when the current connection was made, else C{None}.
    @ivar readings: its session's counters and readings while connected,
        else C{None}.
    @ivar healthBlocks: FIPS 140-2 blocks the daemon's own health tests
        checked (kept across connections).
    @ivar healthFailures: of those, blocks that failed.
    @ivar healthFailure: why the daemon's health tests stopped the key, or
        C{None}.
    """

    path: str
    state: KeyState
    reason: str
    serial: Optional[str]
    connectedAt: Optional[float]
    readings: Optional[KeyReadings]
    healthBlocks: int
    healthFailures: int
    healthFailure: Optional[str]

    @property
    def running(self) -> bool:
        """
        Whether the key gives entropy now.
        """
        return self.state is KeyState.RUNNING


def celsius(tenthsKelvin: int) -> float:
    """
    The one conversion of a key's temperature (tenths of a kelvin, as its
    information frames carry it) to degrees Celsius.

    @return: degrees Celsius, to two decimals.
    """
    return round((tenthsKelvin - 2731.5) / 10, 2)


@dataclass(frozen=True)
class NumberedKey:
    """
    A key as the daemon's key manager numbers it (what ekeydctl's C{list}
    shows).
    """

    number: int
    key: KeyStatus


@dataclass(frozen=True)
class PoolStatus:
    """
    The entropy pool now.

    @ivar bytesPerSecond: bytes in per second at the last sample, if any.
    @ivar refillAt: for a relay, the level below which it pulls now, else
        C{None}.
    @ivar ranDry: for a relay, refills that found the pool emptied by
        readers, else C{None}.
    """

    level: int
    capacity: int
    bytesIn: int
    bytesOut: int
    bytesRefused: int
    waitingReaders: int
    bytesPerSecond: Optional[float] = None
    refillAt: Optional[int] = None
    ranDry: Optional[int] = None


@dataclass(frozen=True)
class ClientStatus:
    """
    One connected EGD client.

    @ivar listener: the endpoint it came in on.
    @ivar peer: who it is (L{ekey.services.peers.describePeer}).
    @ivar identity: its certificate's identity, if it showed one.
    @ivar requests: EGD commands it sent, all kinds together.
    @ivar connectedAt: when it connected.
    """

    listener: str
    peer: str
    identity: Optional[str]
    bytesServed: int
    requests: int
    connectedAt: float


@dataclass(frozen=True)
class ListenerStatus:
    """
    One EGD listener and its counters.

    @ivar requests: C{((command name, count), ...)}, sorted by name.
    """

    description: str
    clients: int
    connections: int
    bytesServed: int
    requests: Tuple[Tuple[str, int], ...]
    protocolErrors: int
    refused: int
    idleClosed: int


class UpstreamState(enum.Enum):
    """
    Where an upstream of a relay stands.

    @cvar CONNECTING: a connection (and, over TLS, its handshake) is being
        made.
    @cvar UP: connected and delivering (or not yet asked).
    @cvar STALLED: connected, but it has delivered nothing of what it was
        asked for the stall time-out; the others are asked instead.
    @cvar DOWN: not connected; it will be tried again.
    """

    CONNECTING = "connecting"
    UP = "up"
    STALLED = "stalled"
    DOWN = "down"


@dataclass(frozen=True)
class UpstreamStatus:
    """
    One upstream EGD server of a relay, as its
    L{ekey.services.upstream.Upstream} sees it now.

    @ivar description: the endpoint string (without C{priority=}).
    @ivar priority: lower is asked first.
    @ivar state: where it stands.
    @ivar bytesPulled: bytes it delivered that passed the health tests and
        went into the pool.
    @ivar bytesRefused: of its tested bytes, those the pool had no room for.
    @ivar inFlight: bytes asked of it now and not yet received.
    @ivar testing: bytes received from it and still held by the health
        tests.
    @ivar connections: connections made to it.
    @ivar healthFailures: connections dropped because its bytes failed the
        health tests.
    @ivar lastError: why it last failed or went away, in words, or C{None}.
    """

    description: str
    priority: int
    state: UpstreamState
    bytesPulled: int
    bytesRefused: int
    inFlight: int
    testing: int
    connections: int
    healthFailures: int
    lastError: Optional[str]

    @property
    def connected(self) -> bool:
        """
        Whether a connection to it is up (delivering or stalled).
        """
        return self.state in (UpstreamState.UP, UpstreamState.STALLED)


@dataclass(frozen=True)
class KernelFeederStatus:
    """
    The kernel feeder: bytes added to the kernel's random pool.
    """

    bytesFed: int
    feeds: int
    lastError: Optional[str]


@dataclass(frozen=True)
class DaemonStatus:
    """
    The whole daemon at one moment: what the control channel, the metrics
    and the status page render.

    @ivar time: when this was read.
    @ivar startedAt: when the daemon started.
    @ivar history: C{((time, bytes in per second), ...)}, oldest first.
    @ivar kernel: the kernel feeder's, or C{None} without one.
    """

    time: float
    startedAt: float
    pool: PoolStatus
    keys: Tuple[NumberedKey, ...]
    listeners: Tuple[ListenerStatus, ...]
    clients: Tuple[ClientStatus, ...]
    upstreams: Tuple[UpstreamStatus, ...]
    kernel: Optional[KernelFeederStatus]
    history: Tuple[Tuple[float, float], ...]

    @property
    def uptime(self) -> float:
        """
        Seconds since the daemon started.
        """
        return self.time - self.startedAt

    @property
    def keysRunning(self) -> int:
        """
        How many keys give entropy now.
        """
        return sum(1 for numbered in self.keys if numbered.key.running)
