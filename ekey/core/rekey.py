# -*- test-case-name: tests.test_rekey -*-
"""
Long-term re-keying, sans-I/O: the master key as printed on a key's card,
the MAC and key derivation of the exchange, and the host's side of it.

The exchange, after a reset: the key says its serial number; the host
sends C{M} and the MAC of a fresh nonce under the master key; the key
answers C{M} (unlocked); the host sends C{L} and the nonce; the key checks
the MAC and answers C{L} with 32 bytes of its own entropy (or C{l}:
refused).  Both sides then derive the new long-term key
(L{deriveLongTermKey}).  Every frame is authenticated under the all-zero
session key of a freshly reset key.

The Twisted driver is L{ekey.services.rekey}; the commands are
L{ekey.cli.rekey} and L{ekey.cli.setkey}.
"""

from __future__ import annotations

import base64
import binascii
import enum
import os
from typing import Callable, List, Optional

from ekey.core.errors import RemoteProtocolError
from ekey.core.frames import FrameReader, Packet, computeMAC, parseFrame, pemEncode
from ekey.core.keyring import KEY_LENGTH, SERIAL_LENGTH, formatSerial, parseSecret
from ekey.core.session import NONCE_LENGTH, RESET, ZERO_KEY
from ekey.core.skein import prepared


def crc8(data: bytes) -> int:
    """
    The CCITT CRC-8 (polynomial 0x31, initial value 0xFF) that checks a
    master key as printed on the key's card.

    @param data: the bytes to check.
    @return: the check byte.
    """
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def parseMasterKey(text: str) -> bytes:
    """
    Parse a master key as printed on the key's card: 44 base64 characters
    (spaces allowed) holding the 32-byte key and a CRC-8 check byte.  A
    plain 32-byte key in base64 or 64 hex digits is accepted too.

    @param text: the master key as typed.
    @return: the 32-byte master key.
    @raise ValueError: with a message fit for the user (which never
        repeats the key).
    """
    compact = "".join(text.split())
    try:
        decoded = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == KEY_LENGTH + 1:
        if crc8(decoded[:KEY_LENGTH]) != decoded[KEY_LENGTH]:
            raise ValueError(
                "the master key's check digit is incorrect: check for typing errors "
                "and character substitution"
            )
        return decoded[:KEY_LENGTH]
    return parseSecret(compact, "master key")


def formatMasterKey(key: bytes) -> str:
    """
    @param key: a 32-byte master key.
    @return: the master key as printed on a card (with its check byte), in
        groups of four characters.
    """
    text = base64.b64encode(key + bytes([crc8(key)])).decode("ascii")
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


def unlockMAC(serial: bytes, masterKey: bytes, nonce: bytes) -> bytes:
    """
    The MAC the host sends with C{M}: it proves knowledge of the master key
    for the nonce that C{L} will carry.

    @param serial: the key's 12-byte serial number.
    @param masterKey: its 32-byte master key.
    @param nonce: the host's nonce.
    @return: the 6-byte MAC.
    """
    return computeMAC(prepared("LKMS", serial, masterKey), nonce)


def deriveLongTermKey(serial: bytes, masterKey: bytes, deviceEntropy: bytes,
                      nonce: bytes) -> bytes:
    """
    The new long-term key both sides derive after a successful exchange.

    @param serial: the key's 12-byte serial number.
    @param masterKey: its 32-byte master key.
    @param deviceEntropy: the 32 bytes the key sent in its C{L} reply.
    @param nonce: the host's nonce.
    @return: the 32-byte long-term key.
    """
    return prepared("LRS", serial, masterKey).update(deviceEntropy + nonce).final()


class RekeyState(enum.Enum):
    """
    Where a long-term re-key stands.
    """

    WAITING_SERIAL = "waiting for the serial number"
    WAITING_UNLOCK = "waiting for the key to accept the MAC"
    WAITING_REPLY = "waiting for the key's entropy"
    DONE = "new long-term key agreed"
    FAILED = "failed"


class LongTermRekey:
    """
    The host's side of a long-term re-key, sans-I/O.

    @ivar state: a L{RekeyState}.
    @ivar serial: the key's serial once said.
    @ivar newLongTermKey: the new key once agreed.
    @ivar error: why it failed, in words.
    @ivar mayHaveChanged: whether, having failed, the key may nevertheless
        have changed its long-term key (C{L} was sent, no answer came).
    """

    mayHaveChanged = False

    def __init__(self, masterKey: bytes, randomBytes: Callable[[int], bytes] = os.urandom,
                 expectedSerial: Optional[bytes] = None):
        """
        @param masterKey: the key's 32-byte master key.
        @param randomBytes: where the host's nonce comes from.
        @param expectedSerial: refuse any key whose serial is not this one.
        @raise ValueError: if the master key is not 32 bytes.
        """
        if len(masterKey) != KEY_LENGTH:
            raise ValueError("the master key is 32 bytes")
        self._masterKey = masterKey
        self._randomBytes = randomBytes
        self._expectedSerial = expectedSerial
        self._reader = FrameReader()
        self._outgoing: List[bytes] = []
        self._nonce = b""
        self._pms = None
        self.state = RekeyState.WAITING_SERIAL
        self.serial: Optional[bytes] = None
        self.newLongTermKey: Optional[bytes] = None
        self.error: Optional[str] = None

    def start(self) -> None:
        """
        Reset the key so that it says its serial number.
        """
        self._outgoing.append(RESET)

    def dataToSend(self) -> bytes:
        """
        @return: bytes to send to the key now.
        """
        out, self._outgoing = b"".join(self._outgoing), []
        return out

    @property
    def finished(self) -> bool:
        """
        Whether the exchange is over, one way or the other.
        """
        return self.state in (RekeyState.DONE, RekeyState.FAILED)

    def fail(self, reason: str) -> None:
        """
        Give up (for example on a time-out).  If the C{L} command was sent
        and no answer came, the key may have changed its long-term key:
        L{mayHaveChanged} says so.

        @param reason: why, in words.
        """
        if not self.finished:
            self.mayHaveChanged = self.state is RekeyState.WAITING_REPLY
            self.state, self.error = RekeyState.FAILED, reason

    def receiveData(self, data: bytes) -> None:
        """
        Process bytes from the key.

        @param data: any number of bytes, in any size of chunk.
        """
        for frame in self._reader.receiveData(data):
            if self.finished:
                return
            try:
                self._packetReceived(parseFrame(frame))
            except RemoteProtocolError:
                # Noise or frames from before the reset: wait for the key.
                continue

    def _packetReceived(self, packet: Packet) -> None:
        if self.state is RekeyState.WAITING_SERIAL:
            if packet.type == "S" and packet.binary:
                self._serialReceived(packet)
            return
        if not packet.verify(self._pms):
            return
        if packet.type == "l":
            self.fail("the key refused the master key: it is not this key's master key")
            # Refused: the key kept its long-term key.
            self.mayHaveChanged = False
        elif self.state is RekeyState.WAITING_UNLOCK and packet.type == "M":
            self.state = RekeyState.WAITING_REPLY
            self._outgoing.append(b"L" + pemEncode(self._nonce) + b".")
        elif self.state is RekeyState.WAITING_REPLY and packet.type == "L" and packet.binary:
            length, deviceEntropy = packet.binaryPayload()
            if length != len(self._nonce) or len(deviceEntropy) != KEY_LENGTH:
                self.fail(f"the key received a {length}-byte nonce, not {len(self._nonce)}")
                return
            self.newLongTermKey = deriveLongTermKey(
                self.serial, self._masterKey, deviceEntropy, self._nonce)
            self.state = RekeyState.DONE

    def _serialReceived(self, packet: Packet) -> None:
        _, serial = packet.binaryPayload()
        if len(serial) != SERIAL_LENGTH or not packet.verify(prepared("PMS", serial, ZERO_KEY)):
            return
        if self._expectedSerial is not None and serial != self._expectedSerial:
            self.fail(f"the key's serial is {formatSerial(serial)}, "
                      f"not {formatSerial(self._expectedSerial)} as given")
            return
        self.serial = serial
        self._pms = prepared("PMS", serial, ZERO_KEY)
        self._nonce = self._randomBytes(NONCE_LENGTH)
        self._outgoing.append(b"M" + pemEncode(unlockMAC(serial, self._masterKey, self._nonce)))
        self.state = RekeyState.WAITING_UNLOCK
