# -*- test-case-name: tests.test_status -*-
"""
The daemon's state as one typed model: frozen snapshots that each service
answers from C{status()}, and that every front end (ekeyctl's AMP channel,
ekeyd's text control protocol, Prometheus, the status page) renders.  No
consumer reaches into a service's internals, and no state is turned into
words to be parsed back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

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
