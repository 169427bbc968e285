# -*- test-case-name: tests.test_session -*-
"""
The host side of one Entropy Key connection, sans-I/O.

L{KeySession} takes the bytes the key sends and returns events: verified
32-byte entropy blocks, information, and changes of state.  What it must
send to the key is collected and taken with L{KeySession.dataToSend}.  It
never sees a transport, a reactor or a clock.

The rules it keeps:

  - the serial number frame picks the long-term key from the keyring; an
    unknown serial leaves the key unusable, and a serial that changes on a
    live connection makes it untrusted for good;
  - a re-key request (C{k}) is answered with a 12-byte nonce: a 4-byte
    little-endian count of nonces sent on this connection, then 8 random
    bytes; the reply (C{K}) is authenticated under the old session key and
    must echo the nonce length, or the key is reset.  While a nonce is
    outstanding, further requests are ignored (the key may have sent them
    before it read the nonce), even across a serial number frame: a key
    that announces itself when it is plugged in and again after the host's
    reset would otherwise get two nonces and answer the first;
  - after the host resets the key, frames still in flight are ignored
    until the key's serial number frame;
  - entropy frames are accepted only under a session key this host derived,
    with a strictly increasing sequence number, and are re-keyed after
    sequence 4095;
  - a frame whose MAC fails never yields a byte; repeated failures reset the
    key; a re-key after which nothing verifies is tried once more from a
    reset, and if that fails too the long-term key is wrong;
  - a fail mode in an information frame means the key has stopped itself.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass
from typing import Callable, List, Optional

from ekey.core.errors import RemoteProtocolError
from ekey.core.frames import (
    LAST_SEQUENCE,
    ZERO_KEY,
    FrameReader,
    Information,
    Packet,
    parseFrame,
    parseInformation,
    pemEncode,
)
from ekey.core.keyring import SERIAL_LENGTH, Keyring, formatSerial
from ekey.core.skein import prepared
from ekey.core.units import BLOCK_SIZE

RESET = b"\x03"
NONCE_LENGTH = 12

#: Re-key requests ignored while a nonce is outstanding before the host
#: gives up on that nonce and resets the key (ekeyd resets on the sixth).
MAX_IGNORED_REQUESTS = 5

#: Seconds an adapter should wait for a re-key reply before calling
#: L{KeySession.rekeyTimedOut}.
REKEY_TIMEOUT = 10.0


class KeyState(enum.Enum):
    """
    Where a key stands, in the words ekeydctl uses where it has them.
    """

    WAITING = "Awaiting serial number"
    UNKNOWN_SERIAL = "Serial unknown"
    REKEYING = "Re-keying session"
    RUNNING = "Running OK"
    BAD_LONG_TERM_KEY = "Long-Term-Key is bad"
    SELF_STOPPED = "Key has self-stopped"
    FAILED_HEALTH = "Failed health tests"
    UNTRUSTED = "Key untrusted: serial number changed"
    CLOSED = "Key closed"

    @property
    def stopped(self) -> bool:
        """
        Whether the key will give no more entropy on this connection.
        """
        return self in _STOPPED


_STOPPED = frozenset(
    {KeyState.UNKNOWN_SERIAL, KeyState.BAD_LONG_TERM_KEY, KeyState.SELF_STOPPED,
     KeyState.FAILED_HEALTH, KeyState.UNTRUSTED, KeyState.CLOSED}
)


@dataclass(frozen=True)
class EntropyReceived:
    """
    32 bytes of verified, decrypted entropy.
    """

    data: bytes
    sequence: int


@dataclass(frozen=True)
class StateChanged:
    """
    The key moved to a new state; C{reason} says why in words.
    """

    old: KeyState
    new: KeyState
    reason: str


@dataclass(frozen=True)
class InformationReceived:
    """
    The key sent an information frame.
    """

    information: Information


class KeyStatistics:
    """
    Counters and the latest readings of one key, at least as rich as what
    ekeydctl's C{stats} shows.  Readings are C{None} until the key has sent
    them.
    """

    def __init__(self):
        self.bytesRead = 0
        self.bytesWritten = 0
        self.framesOK = 0
        self.framingErrors = 0
        self.bytesDiscarded = 0
        self.packetsOK = 0
        self.packetErrors = 0
        self.macFailures = 0
        self.resets = 0
        self.noncesSent = 0
        self.rekeys = 0
        self.entropyBytes = 0
        self.temperatureTenthsK: Optional[int] = None
        self.voltageMillivolts: Optional[int] = None
        self.fipsBlocks: Optional[int] = None
        self.fipsFailures: Optional[int] = None
        self.firstFipsBlocks: Optional[int] = None
        self.generatorState: Optional[tuple] = None
        self.failMode: Optional[str] = None

    def shannonsPerByte(self) -> dict:
        """
        Shannons per byte from the key's last C{S} information field, worked
        out as ekeyd does: the key reports, for the raw left, right and
        combined (XOR) streams and the debiased left and right streams, a
        byte count and an entropy estimate; the figure is
        C{estimate * 100 // bytes / 100}, only once more than 100 bytes were
        counted.

        @return: a dict with keys C{rawL}, C{rawR}, C{rawX}, C{debiasedL},
            C{debiasedR}, each present only once the key has given it.
        """
        fields = self.generatorState
        if fields is None:
            return {}
        result = {}
        for name, countIndex, estimateIndex in _SHANNON_FIELDS:
            count = fields[countIndex]
            if count > 100:
                result[name] = fields[estimateIndex] * 100 // count / 100
        return result


# The S field is rawBytes:rawL:rawR:rawX:debiasedBytesL:debiasedL:
# debiasedBytesR:debiasedR:failMode; (name, count index, estimate index).
_SHANNON_FIELDS = (
    ("rawL", 0, 1),
    ("rawR", 0, 2),
    ("rawX", 0, 3),
    ("debiasedL", 4, 5),
    ("debiasedR", 6, 7),
)


class KeySession:
    """
    The host's view of one key on one connection.

    @ivar state: a L{KeyState}.
    @ivar serial: the key's 12-byte serial once it has said it, else C{None}.
    @ivar statistics: a L{KeyStatistics}.
    @ivar reason: why the key is in its current state, in words.
    """

    def __init__(
        self,
        keyring: Keyring,
        randomBytes: Callable[[int], bytes] = os.urandom,
        maxBadPackets: int = 3,
        sendResetOnStart: bool = True,
    ):
        """
        @param keyring: where to find long-term keys.
        @param randomBytes: the source of the nonces' random part.
        @param maxBadPackets: consecutive bad packets that make this host
            reset the key (and, right after a re-key, conclude that the
            long-term key is wrong).
        @param sendResetOnStart: whether L{connectionMade} resets the key so
            that it announces its serial number at once.
        """
        self.keyring = keyring
        self._randomBytes = randomBytes
        self._maxBadPackets = maxBadPackets
        self._sendResetOnStart = sendResetOnStart
        self._reader = FrameReader()
        self._outgoing: List[bytes] = []
        self.statistics = KeyStatistics()
        self.state = KeyState.WAITING
        self.reason = "waiting for the key to say its serial number"
        self.serial: Optional[bytes] = None
        self._longTermKey: Optional[bytes] = None
        self._sessionKey = ZERO_KEY
        self._verified = False  # whether _sessionKey is one this host derived
        self._prepare(ZERO_KEY)
        self._pendingNonce: Optional[bytes] = None
        self._lastSequence = -1
        self._badInARow = 0
        self._goodSinceRekey = False
        self._failedRekeys = 0
        self._ignoredRequests = 0
        self._awaitingSerial = False
        self._events: list = []

    # Inputs ------------------------------------------------------------------

    def connectionMade(self) -> List[object]:
        """
        The connection to the key is open.

        @return: the events this causes.
        """
        if self._sendResetOnStart:
            self._reset("connection opened")
        return self._takeEvents()

    def connectionLost(self, reason: str = "connection closed") -> List[object]:
        """
        The connection to the key is gone.

        @return: the events this causes.
        """
        self._setState(KeyState.CLOSED, reason)
        return self._takeEvents()

    def receiveData(self, data: bytes) -> List[object]:
        """
        Process bytes from the key.

        @return: the events they cause, in order: L{EntropyReceived},
            L{InformationReceived} and L{StateChanged}.
        """
        for frame in self._reader.receiveData(data):
            if self.state in (KeyState.UNTRUSTED, KeyState.CLOSED):
                break
            try:
                self._packetReceived(parseFrame(frame))
            except RemoteProtocolError as e:
                self._badPacket(str(e))
        self._syncReaderStatistics()
        return self._takeEvents()

    def dataToSend(self) -> bytes:
        """
        @return: the bytes this host must now send to the key (and forget
            them).
        """
        out = b"".join(self._outgoing)
        self._outgoing = []
        self.statistics.bytesWritten += len(out)
        return out

    @property
    def awaitingRekeyReply(self) -> bool:
        """
        Whether a nonce has been sent and not yet answered.  An adapter
        with a clock calls L{rekeyTimedOut} if this stays true for
        C{REKEY_TIMEOUT} seconds.
        """
        return self._pendingNonce is not None and self.state not in _STOPPED

    def rekeyTimedOut(self) -> List[object]:
        """
        The key did not answer a nonce in time: reset it.

        @return: the events this causes.
        """
        if self.awaitingRekeyReply:
            self._setState(KeyState.WAITING, "no answer to the session re-key; resetting")
            self._reset("re-key timed out")
        return self._takeEvents()

    def halt(self, state: KeyState, reason: str) -> List[object]:
        """
        Stop using the key for a reason found outside the protocol (such as
        failed health tests of its output).

        @param state: a stopped L{KeyState}.
        @return: the events this causes.
        @raise ValueError: if C{state} is not a stopped state.
        """
        if not state.stopped:
            raise ValueError(f"{state} is not a stopped state")
        if not self.state.stopped:
            self._setState(state, reason)
        return self._takeEvents()

    def restart(self, reason: str) -> List[object]:
        """
        Start again from the serial number: reset the key.  Used after the
        keyring changes, or by an operator.  An untrusted key stays so.

        @return: the events this causes.
        """
        if self.state not in (KeyState.UNTRUSTED, KeyState.CLOSED):
            self._setState(KeyState.WAITING, reason)
            self._reset(reason)
        return self._takeEvents()

    # Packet handling -----------------------------------------------------------

    def _packetReceived(self, packet: Packet) -> None:
        if packet.type == "S" and packet.binary:
            self._serialReceived(packet)
            return
        if self.serial is None or self._awaitingSerial or self.state in _STOPPED:
            # Frames still in flight from before our reset, or from a key
            # we cannot use.
            return
        if not packet.verify(self._pms):
            self.statistics.macFailures += 1
            self._badPacket(f"{packet.type!r} frame failed its MAC check")
            return
        handler = _HANDLERS.get((packet.type, packet.binary))
        if handler is None:
            self._badPacket(f"unexpected {packet.type!r} frame")
            return
        handler(self, packet)

    def _serialReceived(self, packet: Packet) -> None:
        version, serial = packet.binaryPayload()
        if len(serial) != SERIAL_LENGTH:
            raise RemoteProtocolError(f"serial number of {len(serial)} bytes")
        if not packet.verify(prepared("PMS", serial, ZERO_KEY)):
            self.statistics.macFailures += 1
            raise RemoteProtocolError("serial number frame failed its MAC check")
        if version != 0:
            raise RemoteProtocolError(f"unsupported protocol version {version}")
        if self.serial is not None and serial != self.serial:
            self._setState(
                KeyState.UNTRUSTED,
                f"serial number changed from {formatSerial(self.serial)} "
                f"to {formatSerial(serial)} on a live connection",
            )
            return
        self._packetOK()
        self._awaitingSerial = False
        self.serial = serial
        # An outstanding nonce is kept: the key may read it after this
        # reset and answer it.
        self._lastSequence = -1
        self._prepare(ZERO_KEY)
        self._verified = False
        longTermKey = self.keyring.get(serial)
        if longTermKey is None:
            where = f" {self.keyring.path}" if self.keyring.path else ""
            self._longTermKey = None
            self._setState(
                KeyState.UNKNOWN_SERIAL,
                f"serial {formatSerial(serial)} is not in the keyring{where}",
            )
            return
        self._longTermKey = longTermKey
        if self.state in (KeyState.WAITING, KeyState.REKEYING, KeyState.RUNNING):
            self._setState(KeyState.REKEYING, "waiting for the key to ask for a session key")

    def _rekeyRequested(self, packet: Packet) -> None:
        self._packetOK()
        if self._pendingNonce is None:
            self._sendRekey()
            return
        self._ignoredRequests += 1
        if self._ignoredRequests > MAX_IGNORED_REQUESTS:
            self._setState(KeyState.WAITING, "the key keeps asking for a session key; resetting")
            self._reset("repeated re-key requests")

    def _rekeyReplied(self, packet: Packet) -> None:
        if self._pendingNonce is None:
            self._badPacket("session re-key reply that nobody asked for")
            return
        length, deviceEntropy = packet.binaryPayload()
        nonce, self._pendingNonce = self._pendingNonce, None
        self._ignoredRequests = 0
        if length != len(nonce) or len(deviceEntropy) != BLOCK_SIZE:
            self._setState(KeyState.WAITING, f"key received a {length}-byte nonce, not {len(nonce)}")
            self._reset("nonce length mismatch")
            return
        self._packetOK()
        sessionKey = (
            prepared("RS", self.serial, self._longTermKey).update(deviceEntropy + nonce).final()
        )
        self._prepare(sessionKey)
        self._verified = True
        self._goodSinceRekey = False
        self._lastSequence = -1
        self.statistics.rekeys += 1
        self._setState(KeyState.RUNNING, "session key agreed")

    def _entropyReceived(self, packet: Packet) -> None:
        sequence, ciphertext = packet.binaryPayload()
        if not self._verified:
            self._badPacket("entropy frame before a session key was agreed")
            return
        if len(ciphertext) != BLOCK_SIZE:
            self._badPacket(f"entropy frame with {len(ciphertext)} bytes")
            return
        if sequence <= self._lastSequence:
            self._badPacket(f"entropy sequence {sequence} after {self._lastSequence}")
            return
        self._packetOK()
        self._goodSinceRekey = True
        self._failedRekeys = 0
        self._lastSequence = sequence
        pad = self._ees.copy().update(packet.payload[:2]).final()
        plaintext = (int.from_bytes(ciphertext, "big") ^ int.from_bytes(pad, "big")).to_bytes(
            BLOCK_SIZE, "big"
        )
        self.statistics.entropyBytes += BLOCK_SIZE
        self._events.append(EntropyReceived(plaintext, sequence))
        if sequence >= LAST_SEQUENCE and self._pendingNonce is None:
            self._sendRekey()

    def _informationReceived(self, packet: Packet) -> None:
        information = parseInformation(packet.text)
        self._packetOK()
        stats = self.statistics
        if information.temperatureTenthsK is not None:
            stats.temperatureTenthsK = information.temperatureTenthsK
        if information.voltageMillivolts is not None:
            stats.voltageMillivolts = information.voltageMillivolts
        if information.fips is not None:
            if stats.firstFipsBlocks is None:
                stats.firstFipsBlocks = information.fips.blocks
            stats.fipsBlocks = information.fips.blocks
            stats.fipsFailures = information.fips.failures
        if information.state is not None:
            stats.generatorState = information.state
            stats.failMode = information.failMode
        self._events.append(InformationReceived(information))
        if information.failed:
            self._setState(
                KeyState.SELF_STOPPED,
                f"key reports fail mode {information.failMode}: {information.failDescription}",
            )

    def _textReceived(self, packet: Packet) -> None:
        self._packetOK()
        if packet.type == "B":
            self._setState(KeyState.SELF_STOPPED, "generators went bad during re-keying")
        # "W": the key did not understand a byte we sent; counted as OK
        # traffic, nothing to do.  M/L/l belong to the long-term re-key.

    # Helpers -------------------------------------------------------------------

    def _prepare(self, sessionKey: bytes) -> None:
        self._sessionKey = sessionKey
        serial = self.serial or bytes(12)
        self._pms = prepared("PMS", serial, sessionKey)
        self._ees = prepared("EES", serial, sessionKey)

    def _sendRekey(self) -> None:
        counter = struct.pack("<I", self.statistics.noncesSent & 0xFFFFFFFF)
        nonce = counter + self._randomBytes(NONCE_LENGTH - len(counter))
        self.statistics.noncesSent += 1
        self._pendingNonce = nonce
        self._outgoing.append(b"K" + pemEncode(nonce) + b".")
        if self.state is KeyState.RUNNING:
            self._setState(KeyState.REKEYING, "session key used up")

    def _reset(self, reason: str) -> None:
        self.statistics.resets += 1
        self._outgoing.append(RESET)
        self._reader.reset()
        self._pendingNonce = None
        self._ignoredRequests = 0
        self._awaitingSerial = True
        self._verified = False
        self._badInARow = 0
        if self.serial is not None:
            self._prepare(ZERO_KEY)

    def _packetOK(self) -> None:
        self.statistics.packetsOK += 1
        self._badInARow = 0

    def _badPacket(self, reason: str) -> None:
        self.statistics.packetErrors += 1
        self._badInARow += 1
        if self._badInARow < self._maxBadPackets:
            return
        if self._verified and not self._goodSinceRekey and self.state is KeyState.RUNNING:
            self._failedRekeys += 1
            if self._failedRekeys >= 2:
                self._setState(
                    KeyState.BAD_LONG_TERM_KEY,
                    f"no frame verified under two new session keys ({reason}); "
                    "the long-term key in the keyring is wrong",
                )
                return
        if self.state not in _STOPPED:
            self._setState(KeyState.WAITING, f"reset after {self._badInARow} bad packets ({reason})")
            self._reset(reason)

    def _setState(self, new: KeyState, reason: str) -> None:
        old, self.state, self.reason = self.state, new, reason
        if old is not new:
            self._events.append(StateChanged(old, new, reason))

    def _syncReaderStatistics(self) -> None:
        self.statistics.bytesRead = self._reader.bytesRead
        self.statistics.framesOK = self._reader.framesOK
        self.statistics.framingErrors = self._reader.framingErrors
        self.statistics.bytesDiscarded = self._reader.bytesDiscarded

    def _takeEvents(self) -> List[object]:
        events, self._events = self._events, []
        return events


_HANDLERS = {
    ("k", False): KeySession._rekeyRequested,
    ("K", True): KeySession._rekeyReplied,
    ("E", True): KeySession._entropyReceived,
    ("I", False): KeySession._informationReceived,
    ("W", False): KeySession._textReceived,
    ("B", False): KeySession._textReceived,
}
