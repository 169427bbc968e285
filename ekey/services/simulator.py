# -*- test-case-name: tests.test_simulator -*-
"""
A simulated Entropy Key: the device side of the protocol, for tests, demos
and development without the hardware.

B{It is not a source of entropy.}  With a seed its output is entirely
predictable; without one it is whatever C{os.urandom} gives, dressed up in
the key's protocol.  Never feed it to a system that needs real randomness.

Three layers, as everywhere in ekey:

  - L{SimulatedKey} is the device, sans-I/O: host bytes in
    (L{SimulatedKey.receiveData}), replies out (L{SimulatedKey.dataToSend}),
    and entropy frames only when asked (L{SimulatedKey.nextEntropyFrame}),
    so that whoever drives it controls the rate.  It can misbehave on
    purpose: see L{Fault}.
  - L{SimulatedKeyProtocol} and L{SimulatedKeyFactory} put it on a Twisted
    transport, pacing entropy frames with an injected clock.
  - L{ekey.cli.sim} is the C{ekey-sim} command: a key on a listening
    endpoint (such as C{unix:/tmp/key.sock}) or on a pseudo-terminal.

Choices the real key's documentation leaves open, made here:

  - The C{M>}, C{L!} and C{l>} replies of a long-term re-key are MAC'd under
    the session key in force, like every other frame.  A successful
    long-term re-key changes only the long-term key: the current session
    carries on, and the new long-term key is used from the next session
    re-key.
  - A key that has stopped itself (fail mode other than C{0}) stays stopped
    across resets and connections, as a real key does until it is
    power-cycled; after a reset it sends its serial number and its
    information frames (the fail mode included) but no C{k>}.
  - Every unknown input byte gets its own C{W>} frame.
"""

from __future__ import annotations

import enum
import hashlib
import os
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from ekey.core.errors import RemoteProtocolError
from ekey.core.frames import (
    FAIL_MODES,
    LAST_SEQUENCE,
    MAC_LENGTH,
    PEM_ALPHABET,
    ZERO_KEY,
    binaryPayload,
    buildContent,
    buildFrame,
    computeMAC,
    describeFailMode,
    encodeSubcode,
    pemDecode,
    pemEncode,
)
from ekey.core.keyring import KEY_LENGTH, SERIAL_LENGTH, formatSerial
from ekey.core.skein import prepared
from ekey.core.units import BLOCK_SIZE
from ekey.services._reactor import default

#: The serial number C{ekey-sim} uses unless told otherwise: the twelve ASCII
#: bytes C{SIMULATOR-01}, C{U0lNVUxBVE9SLTAx} in PEM, so that it is
#: recognisable wherever it shows up.
DEFAULT_SERIAL = b"SIMULATOR-01"

#: E frames per second: what the specification gives for a real key.
DEFAULT_RATE = 125.0

#: E frames between rounds of information frames, unless told otherwise.
DEFAULT_INFO_EVERY = 500

#: Longest nonce the key accepts: its length must fit in a 12-bit subcode.
MAX_NONCE_LENGTH = 4095

#: Text frames, as the vectors and ekeyd's documentation show them where
#: they show them.
REKEY_TEXT = b"Unable to send entropy. Please re-key session."
UNLOCKED_TEXT = b"Long-term re-key unlocked."
REFUSED_TEXT = b"Long-term re-key refused."

#: Readings of the information frames (the values of the test vectors).
TEMPERATURE_TENTHS_K = 3150
VOLTAGE_MILLIVOLTS = 3254
FIPS_BLOCKS_AT_START = 7342
E_FRAMES_PER_FIPS_BLOCK = 78
GENERATOR_STATE = (8052, 23751, 23792, 23584, 7112, 20876, 8063, 24150)

#: The junk a C{garbage} fault sends: stray bytes and C{*}s, a lone
#: carriage return and line feed, and the beginning of a frame that never
#: finishes.  It holds no C{"\\r\\n"}, so that it can never end a frame.
GARBAGE = b"\x00\xfe*noise\x7f** \r \n~*" + b"* E!AAspuriousPartialFrame+/0123"

#: What a nonce may hold: PEM characters and base64's padding.
_NONCE_CHARACTERS = frozenset(PEM_ALPHABET + b"=")


def seededBlock(seed: bytes, index: int) -> bytes:
    """
    The plaintext of a seeded simulated key's C{index}-th entropy block:
    SHA-256 of the seed followed by the index as 8 big-endian bytes.

    @param seed: the seed the key was given.
    @param index: the block's number, counting from 0 over the key's whole
        run (across re-keys, resets and connections).
    @return: 32 bytes.
    """
    return hashlib.sha256(seed + index.to_bytes(8, "big")).digest()


class FaultKind(enum.Enum):
    """
    The ways a L{SimulatedKey} can be told to misbehave.

    @cvar BAD_MAC: an entropy frame's MAC is corrupted.
    @cvar GARBAGE: junk (L{GARBAGE}) comes before an entropy frame.
    @cvar RESET: the key resets itself instead of sending an entropy frame.
    @cvar FAIL_MODE: the key reports a fail mode and stops for good.
    @cvar STUCK: from an entropy frame on, the generator is stuck and the
        plaintext is always the same block.
    """

    BAD_MAC = "bad-mac"
    GARBAGE = "garbage"
    RESET = "reset"
    FAIL_MODE = "fail-mode"
    STUCK = "stuck"


#: Fail-mode characters a L{FaultKind.FAIL_MODE} fault may report.
FAULT_FAIL_MODES = tuple(mode for mode in FAIL_MODES if mode != "0")


@dataclass(frozen=True)
class Fault:
    """
    One deliberate misbehaviour of a L{SimulatedKey}, applied once, when
    the key is about to send its C{frame}-th entropy frame (counting from 1
    over the key's whole run).

    A fault that takes the place of the frame (C{reset}, C{fail-mode}) does
    not use up a frame number: the next entropy frame the key does send is
    still the C{frame}-th.

    @ivar kind: a L{FaultKind}.
    @ivar frame: the entropy frame it applies to, from 1.
    @ivar failMode: for L{FaultKind.FAIL_MODE}, the fail-mode character to
        report; C{None} otherwise.
    """

    kind: FaultKind
    frame: int
    failMode: Optional[str] = None

    @classmethod
    def parse(cls, spec: str) -> "Fault":
        """
        Parse a fault as given on the command line: C{bad-mac:N},
        C{garbage:N}, C{reset:N}, C{stuck:N} or C{fail-mode:C@N}, where N
        counts entropy frames from 1 and C is a fail-mode character (one of
        C{1 2 3 4 5 7 8 9 A B}).

        @param spec: the text.
        @return: the fault.
        @raise ValueError: with a message fit for the user, if C{spec} is
            none of those.
        """
        name, colon, argument = spec.partition(":")
        kinds = ", ".join(kind.value for kind in FaultKind)
        try:
            kind = FaultKind(name.strip().lower())
        except ValueError:
            raise ValueError(
                f"unknown fault {spec!r}: expected one of {kinds}, as KIND:N "
                f"(or fail-mode:C@N)"
            ) from None
        if not colon:
            raise ValueError(f"fault {spec!r} needs an entropy frame number, as {kind.value}:N")
        failMode = None
        if kind is FaultKind.FAIL_MODE:
            failMode, at, argument = argument.partition("@")
            failMode = failMode.strip().upper()
            if not at:
                raise ValueError(f"fault {spec!r} must be written fail-mode:C@N")
            if failMode not in FAULT_FAIL_MODES:
                raise ValueError(
                    f"fault {spec!r}: fail mode must be one of {' '.join(FAULT_FAIL_MODES)}"
                )
        argument = argument.strip()
        if not argument.isdigit() or int(argument) < 1:
            raise ValueError(
                f"fault {spec!r}: entropy frame number must be a whole number from 1"
            )
        return cls(kind, int(argument), failMode)

    def __str__(self) -> str:
        if self.kind is FaultKind.FAIL_MODE:
            return f"{self.kind.value}:{self.failMode}@{self.frame}"
        return f"{self.kind.value}:{self.frame}"


class _Command(enum.Enum):
    """
    What the key is in the middle of reading from the host.
    """

    IDLE = "idle"
    SESSION_REKEY = "K"
    UNLOCK = "M"
    LONG_TERM_REKEY = "L"


class SimulatedKey:
    """
    An Entropy Key, as far as its host can tell: sans-I/O.

    Feed it what the host sends with L{receiveData}; take what it replies
    with L{dataToSend}; ask for entropy with L{nextEntropyFrame}, as often
    as the key should produce it.  Call L{reset} when a host connects (the
    key is plugged in).

    @ivar serial: the key's 12-byte serial number.
    @ivar longTermKey: its 32-byte long-term key (changed by a long-term
        re-key).
    @ivar blocksProduced: plaintext blocks drawn from the generator so far,
        including those of frames a fault corrupted; with a seed, the next
        block is C{seededBlock(seed, blocksProduced)}.
    @ivar entropyFrames: entropy frames produced so far, corrupted ones
        included (the number faults count by).
    @ivar resets: times the key has been reset.
    @ivar failMode: the fail-mode character it reports (C{"0"} while well).
    @ivar faults: the faults not yet applied, in order.
    """

    log = Logger()

    def __init__(
        self,
        serial: bytes,
        longTermKey: bytes,
        masterKey: Optional[bytes] = None,
        seed: Optional[bytes] = None,
        randomBytes: Callable[[int], bytes] = os.urandom,
        infoEvery: int = 0,
        faults: Iterable[Fault] = (),
    ):
        """
        @param serial: the 12-byte serial number.
        @param longTermKey: the 32-byte long-term key the host's keyring must
            hold.
        @param masterKey: the 32-byte master key that authorises a
            long-term re-key, or C{None} to refuse them all.
        @param seed: makes the plaintext predictable (see L{seededBlock});
            C{None} for random plaintext from C{randomBytes}.
        @param randomBytes: the source of the device entropy of re-keys and
            of unseeded plaintext.
        @param infoEvery: send information frames after every this many
            entropy frames; C{0} for never (they are still sent on reset).
        @param faults: L{Fault}s to apply.
        @raise ValueError: if a key or the serial has the wrong length, or
            C{infoEvery} is negative.
        """
        if len(serial) != SERIAL_LENGTH:
            raise ValueError(f"serial must be {SERIAL_LENGTH} bytes, not {len(serial)}")
        for name, key in (("long-term key", longTermKey), ("master key", masterKey)):
            if key is not None and len(key) != KEY_LENGTH:
                raise ValueError(f"{name} must be {KEY_LENGTH} bytes, not {len(key)}")
        if infoEvery < 0:
            raise ValueError("infoEvery must not be negative")
        self.serial = serial
        self.longTermKey = longTermKey
        self._masterKey = masterKey
        self._seed = seed
        self._randomBytes = randomBytes
        self._infoEvery = infoEvery
        self.faults: List[Fault] = sorted(faults, key=lambda fault: fault.frame)
        self.blocksProduced = 0
        self.entropyFrames = 0
        self.resets = 0
        self.failMode = "0"
        self._stuckBlock: Optional[bytes] = None
        self._outgoing: List[bytes] = []
        self._command = _Command.IDLE
        self._argument = bytearray()
        self._unlockMAC: Optional[bytes] = None
        self._setSessionKey(ZERO_KEY, keyed=False)

    # Inputs ------------------------------------------------------------------

    def reset(self) -> None:
        """
        Reset the key, as at power-on, when it is plugged in, on C{^C} and
        on C{R} from the host: forget the session key and any half-read
        command and any unsent replies, and queue the serial number frame,
        an information frame and (unless the key has stopped itself) a
        request for a session key.
        """
        self.resets += 1
        self._outgoing = []
        self._command = _Command.IDLE
        self._argument = bytearray()
        self._unlockMAC = None
        self._setSessionKey(ZERO_KEY, keyed=False)
        self._send("S", binaryPayload(0, self.serial), binary=True)
        self._send("I", self._environmentText())
        if self.failMode != "0":
            self._send("I", self._generatorText())
        else:
            self._send("k", REKEY_TEXT)

    def receiveData(self, data: bytes) -> None:
        """
        Process bytes from the host; the replies they cause are queued for
        L{dataToSend}.

        @param data: any number of bytes, in any size of chunk.
        """
        for byte in data:
            self._byteReceived(byte)

    # Outputs -----------------------------------------------------------------

    def dataToSend(self) -> bytes:
        """
        @return: the frames the key has queued for the host (replies, serial
            number, information, re-key requests), and forget them.
        """
        out = b"".join(self._outgoing)
        self._outgoing = []
        return out

    @property
    def canSendEntropy(self) -> bool:
        """
        Whether L{nextEntropyFrame} would now give anything: the key has a
        session key with sequence numbers left, and has not stopped itself.
        """
        return self._keyed and self._sequence <= LAST_SEQUENCE and self.failMode == "0"

    def nextEntropyFrame(self) -> bytes:
        """
        Produce the next entropy frame, with whatever comes with it: the
        junk of a C{garbage} fault before it, information frames after it
        when they are due, and a C{k>} frame after the last sequence
        number.  A C{reset} fault gives the reset's frames instead, and a
        C{fail-mode} fault the information frame that reports it.

        @return: bytes for the host, or C{b""} if the key cannot send
            entropy now (see L{canSendEntropy}).
        """
        if not self.canSendEntropy:
            return b""
        number = self.entropyFrames + 1
        replacing = self._takeFault(number, (FaultKind.RESET, FaultKind.FAIL_MODE))
        if replacing is not None:
            return self._replaceFrame(replacing)
        faults = self._takeFaults(number)
        kinds = {fault.kind for fault in faults}
        out = []
        if FaultKind.GARBAGE in kinds:
            self.log.info("Fault: sending junk before entropy frame {number}", number=number)
            out.append(GARBAGE)
        plaintext = self._nextPlaintext()
        if FaultKind.STUCK in kinds and self._stuckBlock is None:
            self.log.info("Fault: generator stuck from entropy frame {number}", number=number)
            self._stuckBlock = plaintext
        if self._stuckBlock is not None:
            plaintext = self._stuckBlock
        subcode = encodeSubcode(self._sequence)
        pad = self._ees.copy().update(subcode).final()
        ciphertext = bytes(a ^ b for a, b in zip(plaintext, pad))
        content = buildContent("E", binaryPayload(self._sequence, ciphertext), binary=True)
        if FaultKind.BAD_MAC in kinds:
            self.log.info("Fault: corrupting the MAC of entropy frame {number}", number=number)
            mac = computeMAC(self._pms, content)
            out.append(b"* " + content + pemEncode(bytes([mac[0] ^ 1]) + mac[1:]) + b"\r\n")
        else:
            out.append(buildFrame(content, self._pms))
        self._sequence += 1
        self.entropyFrames += 1
        if self._infoEvery and self.entropyFrames % self._infoEvery == 0:
            out.append(self._frame("I", self._environmentText()))
            out.append(self._frame("I", self._fipsText()))
            out.append(self._frame("I", self._generatorText()))
        if self._sequence > LAST_SEQUENCE:
            out.append(self._frame("k", REKEY_TEXT))
        return b"".join(out)

    # Host input ----------------------------------------------------------------

    def _byteReceived(self, byte: int) -> None:
        if byte == 0x03:
            self.reset()
            return
        command = self._command
        if command is _Command.IDLE:
            upper = chr(byte).upper() if byte < 0x80 else ""
            if upper == "R":
                self.reset()
            elif upper in ("K", "M", "L"):
                self._command = _Command(upper)
                self._argument = bytearray()
            else:
                self._unknownByte(byte)
            return
        if command is _Command.UNLOCK:
            if byte not in PEM_ALPHABET:
                self._unknownByte(byte)
                return
            self._argument.append(byte)
            if len(self._argument) == _pemLength(MAC_LENGTH):
                self._unlock(bytes(self._argument))
            return
        # A nonce, for K or L.
        if byte == ord("."):
            self._nonceReceived(bytes(self._argument))
        elif byte in _NONCE_CHARACTERS and len(self._argument) < _pemLength(MAX_NONCE_LENGTH):
            self._argument.append(byte)
        else:
            self._unknownByte(byte)

    def _unknownByte(self, byte: int) -> None:
        self._command = _Command.IDLE
        self._argument = bytearray()
        self._send("W", f"Unknown Input Character 0x{byte:02x}".encode("ascii"))

    def _unlock(self, text: bytes) -> None:
        self._command = _Command.IDLE
        self._unlockMAC = _decodePEM(text)
        self._send("M", UNLOCKED_TEXT)

    def _nonceReceived(self, text: bytes) -> None:
        command, self._command = self._command, _Command.IDLE
        nonce = _decodePEM(text)
        if nonce is None:
            self._unknownByte(ord("."))
            return
        if command is _Command.SESSION_REKEY:
            self._sessionRekey(nonce)
        else:
            self._longTermRekey(nonce)

    def _sessionRekey(self, nonce: bytes) -> None:
        deviceEntropy = self._randomBytes(BLOCK_SIZE)
        # The reply goes under the old key; the new one holds after it.
        self._send("K", binaryPayload(len(nonce), deviceEntropy), binary=True)
        sessionKey = (
            prepared("RS", self.serial, self.longTermKey).update(deviceEntropy + nonce).final()
        )
        self._setSessionKey(sessionKey, keyed=True)

    def _longTermRekey(self, nonce: bytes) -> None:
        mac, self._unlockMAC = self._unlockMAC, None
        if (
            self._masterKey is None
            or mac is None
            or computeMAC(prepared("LKMS", self.serial, self._masterKey), nonce) != mac
        ):
            self.log.info("Refusing a long-term re-key: no master key, or the wrong MAC")
            self._send("l", REFUSED_TEXT)
            return
        deviceEntropy = self._randomBytes(BLOCK_SIZE)
        self._send("L", binaryPayload(len(nonce), deviceEntropy), binary=True)
        self.longTermKey = (
            prepared("LRS", self.serial, self._masterKey).update(deviceEntropy + nonce).final()
        )
        self.log.info(
            "Long-term key of {serial} changed by a long-term re-key",
            serial=formatSerial(self.serial),
        )

    # Helpers -------------------------------------------------------------------

    def _setSessionKey(self, sessionKey: bytes, keyed: bool) -> None:
        self._keyed = keyed
        self._sequence = 0
        self._pms = prepared("PMS", self.serial, sessionKey)
        self._ees = prepared("EES", self.serial, sessionKey)

    def _frame(self, packetType: str, payload: bytes, binary: bool = False) -> bytes:
        return buildFrame(buildContent(packetType, payload, binary), self._pms)

    def _send(self, packetType: str, payload: bytes, binary: bool = False) -> None:
        self._outgoing.append(self._frame(packetType, payload, binary))

    def _nextPlaintext(self) -> bytes:
        if self._seed is None:
            block = self._randomBytes(BLOCK_SIZE)
        else:
            block = seededBlock(self._seed, self.blocksProduced)
        self.blocksProduced += 1
        return block

    def _takeFaults(self, number: int) -> List[Fault]:
        due = [fault for fault in self.faults if fault.frame <= number]
        self.faults = [fault for fault in self.faults if fault.frame > number]
        return due

    def _takeFault(self, number: int, kinds: tuple) -> Optional[Fault]:
        for fault in self.faults:
            if fault.frame <= number and fault.kind in kinds:
                self.faults.remove(fault)
                return fault
        return None

    def _replaceFrame(self, fault: Fault) -> bytes:
        if fault.kind is FaultKind.RESET:
            self.log.info(
                "Fault: resetting instead of sending entropy frame {number}", number=fault.frame
            )
            self.reset()
            return self.dataToSend()
        self.log.info(
            "Fault: fail mode {mode} ({description}) instead of entropy frame {number}; "
            "no more entropy",
            mode=fault.failMode,
            description=describeFailMode(fault.failMode),
            number=fault.frame,
        )
        self.failMode = fault.failMode
        return self._frame("I", self._generatorText())

    def _environmentText(self) -> bytes:
        return f"T{TEMPERATURE_TENTHS_K:05d} V{VOLTAGE_MILLIVOLTS:05d}".encode("ascii")

    def _fipsText(self) -> bytes:
        blocks = (FIPS_BLOCKS_AT_START + self.entropyFrames // E_FRAMES_PER_FIPS_BLOCK) % 100000
        return f"F{blocks:05d}:00000:00000:00000:00000".encode("ascii")

    def _generatorText(self) -> bytes:
        fields = ":".join(f"{value:05d}" for value in GENERATOR_STATE)
        return f"S{fields}:{self.failMode}".encode("ascii")


def _pemLength(length: int) -> int:
    return (length + 2) // 3 * 4


def _decodePEM(text: bytes) -> Optional[bytes]:
    try:
        return pemDecode(text)
    except RemoteProtocolError:
        return None


# Twisted ----------------------------------------------------------------------


@implementer(IPushProducer)
class SimulatedKeyProtocol(Protocol):
    """
    A L{SimulatedKey} on a transport: the host's bytes go to the key, its
    replies come straight back, and its entropy frames are sent at a steady
    rate kept by the reactor's clock, or, at rate 0, as fast as the
    transport takes them.

    The protocol registers itself with the transport as a streaming
    producer: while the transport is paused, no entropy frames are written
    (replies still are; they are few and small).

    Each connection begins with a reset key, as if it had just been plugged
    in.

    @ivar key: the L{SimulatedKey}.
    @ivar rate: entropy frames per second; C{0} for as fast as possible.
    @ivar paused: whether the transport has asked for a pause.
    """

    log = Logger()

    #: Most entropy frames written in one go: at rate 0 between returns to
    #: the reactor, otherwise to catch up after the clock ran late.
    maxBurst = 64

    factory: Optional["SimulatedKeyFactory"] = None

    def __init__(self, key: SimulatedKey, rate: float = DEFAULT_RATE, clock=None):
        """
        @param key: the key to put on the transport.
        @param rate: entropy frames per second, or C{0} for as fast as the
            transport takes them.
        @param clock: an L{IReactorTime} provider; the global reactor if
            C{None}.
        @raise ValueError: if C{rate} is negative.
        """
        if rate < 0:
            raise ValueError("rate must not be negative")
        self.key = key
        self.rate = rate
        self.paused = False
        self._clock = default(clock)
        self._stopped = False
        self._loop = None
        self._pump = None

    def connectionMade(self) -> None:
        """
        Reset the key (it announces its serial number) and start sending.
        """
        self.key.reset()
        self._writeReplies()
        self.transport.registerProducer(self, True)
        if self.rate:
            self._loop = LoopingCall.withCount(self._tick)
            self._loop.clock = self._clock
            self._loop.start(1.0 / self.rate, now=False)

    def dataReceived(self, data: bytes) -> None:
        """
        Pass the host's bytes to the key and send its replies.
        """
        self.key.receiveData(data)
        self._writeReplies()
        self._schedulePump()

    def connectionLost(self, reason) -> None:
        """
        Stop sending; tell the factory that the host has gone.
        """
        self._stop()
        if self.factory is not None:
            self.factory._hostGone(self)

    # IPushProducer

    def pauseProducing(self) -> None:
        """
        Stop writing entropy frames until L{resumeProducing}.
        """
        self.paused = True
        if self._pump is not None and self._pump.active():
            self._pump.cancel()
        self._pump = None

    def resumeProducing(self) -> None:
        """
        Write entropy frames again.
        """
        self.paused = False
        self._schedulePump()

    def stopProducing(self) -> None:
        """
        Write no more entropy frames: the transport is going away.
        """
        self._stop()

    # Internals

    def _writeReplies(self) -> None:
        replies = self.key.dataToSend()
        if replies and not self._stopped:
            self.transport.write(replies)

    def _writeFrames(self, count: int) -> int:
        written = 0
        while written < count and not self.paused and not self._stopped:
            data = self.key.nextEntropyFrame()
            if not data:
                break
            self.transport.write(data)
            written += 1
        return written

    def _tick(self, count: int) -> None:
        self._writeFrames(min(count, self.maxBurst))

    def _schedulePump(self) -> None:
        if self.rate or self.paused or self._stopped or self._pump is not None:
            return
        if self.key.canSendEntropy:
            self._pump = self._clock.callLater(0, self._runPump)

    def _runPump(self) -> None:
        self._pump = None
        self._writeFrames(self.maxBurst)
        self._schedulePump()

    def _stop(self) -> None:
        self._stopped = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._pump is not None and self._pump.active():
            self._pump.cancel()
        self._pump = None


class SimulatedKeyFactory(Factory):
    """
    Serve one L{SimulatedKey} to one host at a time, as a real key can only
    be opened by one.  A second connection while a host is connected is
    refused (closed at once) and logged.  Each new host finds the key just
    reset; the key itself, and so the seeded block counter and any pending
    faults, carries on from host to host.

    @ivar key: the L{SimulatedKey}.
    @ivar rate: entropy frames per second for each connection.
    @ivar host: the L{SimulatedKeyProtocol} of the connected host, if any.
    """

    log = Logger()

    def __init__(self, key: SimulatedKey, rate: float = DEFAULT_RATE, clock=None):
        """
        @param key: the key to serve.
        @param rate: entropy frames per second, or C{0} for as fast as each
            connection takes them.
        @param clock: an L{IReactorTime} provider for the protocols; the
            global reactor if C{None}.
        """
        self.key = key
        self.rate = rate
        self._clock = default(clock)
        self.host: Optional[SimulatedKeyProtocol] = None

    def buildProtocol(self, addr) -> Optional[SimulatedKeyProtocol]:
        """
        @param addr: the address of the connecting host.
        @return: a protocol for the first host, C{None} (which closes the
            connection) while one is already connected.
        """
        if self.host is not None:
            self.log.warn(
                "Refusing a connection from {address}: the simulated key already "
                "has a host",
                address=addr,
            )
            return None
        self.log.info(
            "Host connected from {address}; simulated key {serial} resets",
            address=addr,
            serial=formatSerial(self.key.serial),
        )
        protocol = SimulatedKeyProtocol(self.key, self.rate, self._clock)
        protocol.factory = self
        self.host = protocol
        return protocol

    def _hostGone(self, protocol: SimulatedKeyProtocol) -> None:
        if protocol is self.host:
            self.host = None
            self.log.info(
                "Host disconnected after {frames} entropy frames in all",
                frames=self.key.entropyFrames,
            )
