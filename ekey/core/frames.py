# -*- test-case-name: tests.test_frames -*-
"""
The Entropy Key's framing, sans-I/O: 64-byte frames in, typed packets out,
and the same in reverse for the simulated device.

Every frame is C{"* "}, 52 bytes of content, 8 PEM characters of MAC and
C{"\\r\\n"}.  The content is a type character, a class character (C{>} text,
C{!} binary) and 50 bytes of space-padded payload.  "PEM" is plain base64.
"""

from __future__ import annotations

import base64
import binascii
import string
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from ekey.core.errors import LocalProtocolError, RemoteProtocolError
from ekey.core.skein import SkeinState


FRAME_LENGTH = 64
CONTENT_LENGTH = 52
PAYLOAD_LENGTH = 50
MAC_LENGTH = 6
MAX_BINARY_DATA = 32

_START = b"*"
_FRAME_START = b"* "
_TRAILER = b"\r\n"

CLASS_TEXT = ord(">")
CLASS_BINARY = ord("!")

#: The 64 characters of "PEM" (base64's standard alphabet), in the order of
#: their values; base64's padding character C{=} is not among them.
PEM_ALPHABET = (string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/").encode()
_INDEX = {c: i for i, c in enumerate(PEM_ALPHABET)}

#: The last sequence number of a session key (the largest 12-bit subcode):
#: after the E frame with it, the key asks for a new session key.
LAST_SEQUENCE = 4095

#: The session key in force before one is agreed: the serial number frame
#: (and every frame after a reset, until a re-key) is MACed under it.
ZERO_KEY = bytes(32)


def encodeSubcode(value: int) -> bytes:
    """
    Encode a 12-bit subcode as two PEM characters, low six bits first.

    @param value: 0 to 4095.
    @return: two ASCII bytes.
    @raise LocalProtocolError: if the value does not fit in 12 bits.
    """
    if not 0 <= value < 4096:
        raise LocalProtocolError(f"subcode {value} does not fit in 12 bits")
    return bytes((PEM_ALPHABET[value & 63], PEM_ALPHABET[value >> 6]))


def decodeSubcode(chars: bytes) -> int:
    """
    Decode two PEM characters as a 12-bit subcode, low six bits first.

    @param chars: two ASCII bytes.
    @return: 0 to 4095.
    @raise RemoteProtocolError: if they are not PEM characters.
    """
    try:
        return _INDEX[chars[0]] | _INDEX[chars[1]] << 6
    except (KeyError, IndexError):
        raise RemoteProtocolError(f"bad subcode {chars!r}") from None


def pemEncode(data: bytes) -> bytes:
    """
    @return: C{data} as base64, standard alphabet, with padding.
    """
    return base64.b64encode(data)


def pemDecode(text: bytes) -> bytes:
    """
    @return: the bytes that the base64 C{text} encodes.
    @raise RemoteProtocolError: if C{text} is not valid base64.
    """
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RemoteProtocolError(f"bad PEM {text!r}") from None


def computeMAC(prepared: SkeinState, content: bytes) -> bytes:
    """
    The 6-byte MAC of a frame's content or a long-term re-key nonce:
    bytes 0..2 and 29..31 of a prepared state's C{final_pad} output.

    @param prepared: a prepared state (L{ekey.core.skein.prepared}); it is copied,
        not consumed.
    @param content: the bytes to authenticate.
    """
    out = prepared.copy().update(content).finalPad()
    return out[:3] + out[29:]


@dataclass(frozen=True)
class Packet:
    """
    One frame, split into its parts but not yet authenticated.

    @ivar type: the type character, such as C{"E"}.
    @ivar binary: C{True} for the binary class (C{!}), C{False} for text.
    @ivar content: the 52 bytes the MAC covers.
    @ivar mac: the 6 MAC bytes the frame carries.
    """

    type: str
    binary: bool
    content: bytes
    mac: bytes

    @property
    def payload(self) -> bytes:
        """
        The 50 payload bytes, padding included.
        """
        return self.content[2:]

    @property
    def text(self) -> str:
        """
        A text packet's payload without its padding.
        """
        return self.payload.rstrip(b" ").decode("ascii", "replace")

    def binaryPayload(self) -> Tuple[int, bytes]:
        """
        Split a binary payload into subcode and data.

        @return: C{(subcode, data)}.
        @raise RemoteProtocolError: if the payload is not a subcode followed
            by base64.
        """
        subcode = decodeSubcode(self.payload[:2])
        data = pemDecode(self.payload[2:].rstrip(b" "))
        if len(data) > MAX_BINARY_DATA:
            raise RemoteProtocolError(f"{len(data)} bytes of binary data in one frame")
        return subcode, data

    def verify(self, prepared: SkeinState) -> bool:
        """
        @param prepared: the PMS state for the current session key.
        @return: whether the MAC is right.
        """
        return computeMAC(prepared, self.content) == self.mac


def parseFrame(frame: bytes) -> Packet:
    """
    Split a 64-byte frame into a L{Packet}.

    @raise RemoteProtocolError: if the frame is malformed.
    """
    if (
        len(frame) != FRAME_LENGTH
        or frame[:2] != b"* "
        or frame[-2:] != _TRAILER
    ):
        raise RemoteProtocolError("not a frame")
    content = frame[2 : 2 + CONTENT_LENGTH]
    kind = content[1]
    if kind not in (CLASS_TEXT, CLASS_BINARY):
        raise RemoteProtocolError(f"unknown packet class {chr(kind)!r}")
    try:
        mac = base64.b64decode(frame[54:62], validate=True)
    except (binascii.Error, ValueError):
        raise RemoteProtocolError(f"bad MAC characters {frame[54:62]!r}") from None
    return Packet(chr(content[0]), kind == CLASS_BINARY, content, mac)


def buildContent(packetType: str, payload: bytes, binary: bool) -> bytes:
    """
    Build the 52 content bytes of a frame.

    @param packetType: one type character.
    @param payload: at most 50 bytes, padded here with spaces.
    @param binary: the packet class.
    @raise LocalProtocolError: if the payload is too long.
    """
    if len(payload) > PAYLOAD_LENGTH:
        raise LocalProtocolError(f"payload of {len(payload)} bytes is too long")
    return packetType.encode("ascii") + (b"!" if binary else b">") + payload.ljust(PAYLOAD_LENGTH)


def binaryPayload(subcode: int, data: bytes) -> bytes:
    """
    @return: a binary payload: subcode, then C{data} in base64.
    @raise LocalProtocolError: if C{data} is longer than 32 bytes.
    """
    if len(data) > MAX_BINARY_DATA:
        raise LocalProtocolError(f"{len(data)} bytes do not fit in one frame")
    return encodeSubcode(subcode) + pemEncode(data)


def buildFrame(content: bytes, prepared: SkeinState) -> bytes:
    """
    Wrap content in a frame with its MAC.

    @param content: 52 bytes from L{buildContent}.
    @param prepared: the PMS state for the session key in force.
    @return: 64 bytes.
    """
    return b"* " + content + pemEncode(computeMAC(prepared, content)) + _TRAILER


class FrameReader:
    """
    Cut a byte stream from a device into 64-byte frames, as ekeyd does.

    Bytes before a C{*} are garbage; a candidate frame that does not end in
    C{\\r\\n} (or lacks the space after C{*}) is a framing error, and the
    reader resynchronises on the next C{*} after its start.  Nothing but
    well-framed 64-byte frames is ever returned, and the reader holds at
    most one frame's worth of bytes.

    @ivar bytesRead: every byte received.
    @ivar framesOK: frames returned.
    @ivar framingErrors: runs of garbage and malformed frames skipped.
    @ivar bytesDiscarded: bytes that were not part of a frame.
    """

    def __init__(self):
        self._buffer = b""
        self.bytesRead = 0
        self.framesOK = 0
        self.framingErrors = 0
        self.bytesDiscarded = 0

    def reset(self) -> None:
        """
        Forget any partial frame (after the device has been reset).
        """
        self._buffer = b""

    def receiveData(self, data: bytes) -> List[bytes]:
        """
        @param data: bytes from the device, in any size of chunk.
        @return: the complete, well-framed frames they finish, in order.
        """
        self.bytesRead += len(data)
        buffer = self._buffer + data
        frames = []
        position, end = 0, len(buffer)
        # Walk an offset through the buffer and slice once at the end, so
        # that a flood of stray "*" costs linear time.
        while position < end:
            # A frame starts with "* ": a "*" followed by anything else is
            # garbage (one at the very end may yet be followed by a space).
            start = buffer.find(_FRAME_START, position)
            if start < 0:
                keep = end - 1 if buffer.endswith(_START) else end
                if keep > position:
                    self.framingErrors += 1
                    self.bytesDiscarded += keep - position
                position = keep
                break
            if start > position:
                self.framingErrors += 1
                self.bytesDiscarded += start - position
                position = start
            if end - position < FRAME_LENGTH:
                break
            if buffer[position + FRAME_LENGTH - 2 : position + FRAME_LENGTH] == _TRAILER:
                frames.append(buffer[position : position + FRAME_LENGTH])
                self.framesOK += 1
                position += FRAME_LENGTH
            else:
                self.framingErrors += 1
                self.bytesDiscarded += 1
                position += 1
        self._buffer = buffer[position:]
        return frames


# Information frames ----------------------------------------------------------

#: The fail modes of the C{S} information field, by character: ekeyd's short
#: name and its words for each (what ekeydctl shows as C{KeyShortBadness}
#: and C{KeyEnglishBadness}, and what a stopped key's reason says).
FAIL_MODES = {
    "0": ("efm_ok", "No failure"),
    "1": ("efm_raw_left_bad", "Left generator is no longer random"),
    "2": ("efm_raw_right_bad", "Right generator is no longer random"),
    "3": ("efm_raw_xor_bad", "Generators have become correlated"),
    "4": ("efm_debias_left_bad", "Left generator is strongly biassed"),
    "5": ("efm_debias_right_bad", "Right generator is strongly biassed"),
    "7": ("efm_temp_too_low", "Temperature detected below threshold"),
    "8": ("efm_temp_too_high", "Temperature detected above threshold"),
    "9": ("efm_fips1402_threshold_exceeded",
          "FIPS 140-2 tests exceeded threshold for failed blocks"),
    "A": ("efm_volt_too_low", "Voltage too low"),
    "B": ("efm_volt_too_high", "Voltage too high"),
}


def describeFailMode(mode: str) -> str:
    """
    @return: ekeyd's words for a fail-mode character, also for unknown ones.
    """
    if mode in FAIL_MODES:
        return FAIL_MODES[mode][1]
    return f"Unknown failure mode {mode}"


@dataclass(frozen=True)
class FIPSCounters:
    """
    The device's FIPS 140-2 counters (C{F} field of an information frame).
    """

    blocks: int
    failures: int
    monobit: int
    poker: int
    runs: int


@dataclass(frozen=True)
class Information:
    """
    What one information frame said.  Fields it did not carry are C{None}.

    @ivar temperatureTenthsK: temperature in tenths of a kelvin.
    @ivar voltageMillivolts: supply voltage in mV.
    @ivar fips: the FIPS counters.
    @ivar state: the eight numeric fields of the C{S} field.
    @ivar failMode: the fail-mode character of the C{S} field.
    @ivar unknown: any fields this parser did not recognise.
    """

    temperatureTenthsK: Optional[int] = None
    voltageMillivolts: Optional[int] = None
    fips: Optional[FIPSCounters] = None
    state: Optional[Tuple[int, ...]] = None
    failMode: Optional[str] = None
    unknown: Tuple[str, ...] = field(default=())

    @property
    def failed(self) -> bool:
        """
        Whether the key reported that it has stopped itself.
        """
        return self.failMode not in (None, "0")

    @property
    def failDescription(self) -> Optional[str]:
        """
        The fail mode in words.
        """
        return None if self.failMode is None else describeFailMode(self.failMode)


def parseInformation(text: str) -> Information:
    """
    Parse the text of an C{I} frame, such as C{"T03150 V03254"}.

    @raise RemoteProtocolError: if a recognised field is malformed.
    """
    values: dict = {}
    unknown = []
    try:
        for token in text.split():
            tag, rest = token[0], token[1:]
            if tag == "T":
                values["temperatureTenthsK"] = int(rest, 10)
            elif tag == "V":
                values["voltageMillivolts"] = int(rest, 10)
            elif tag == "F":
                numbers = [int(n, 10) for n in rest.split(":")]
                values["fips"] = FIPSCounters(*numbers)
            elif tag == "S":
                parts = rest.split(":")
                if len(parts) != 9 or len(parts[8]) != 1:
                    raise ValueError(rest)
                values["state"] = tuple(int(n, 10) for n in parts[:8])
                values["failMode"] = parts[8]
            else:
                unknown.append(token)
    except (ValueError, TypeError):
        raise RemoteProtocolError(f"malformed information frame {text!r}") from None
    return Information(unknown=tuple(unknown), **values)
