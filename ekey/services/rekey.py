# -*- test-case-name: tests.test_rekey -*-
"""
Long-term re-keying: give a key a new long-term key, made from its master
key, and store it in the keyring (ekeyd's C{ekey-rekey} and
C{ekey-setkey}).

The exchange, after a reset: the key says its serial number; the host
sends C{M} and the MAC of a fresh nonce under the master key; the key
answers C{M} (unlocked); the host sends C{L} and the nonce; the key checks
the MAC and answers C{L} with 32 bytes of its own entropy (or C{l}:
refused).  Both sides then derive the new long-term key.  Every frame is
authenticated under the all-zero session key of a freshly reset key.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import enum
import os
import sys
from typing import Callable, List, Optional

from twisted.internet import defer, task
from twisted.internet.protocol import Factory, Protocol

from ekey.core.errors import RemoteProtocolError
from ekey.core.frames import (
    FrameReader,
    Packet,
    computeMAC,
    parseFrame,
    pemEncode,
)
from ekey.core.keyring import (
    DEFAULT_KEYRING,
    KEY_LENGTH,
    Keyring,
    KeyringError,
    formatSerial,
    parseSecret,
)
from ekey.core.session import NONCE_LENGTH, RESET, ZERO_KEY, EntropyReceived, KeySession
from ekey.core.skein import prepared


def crc8(data: bytes) -> int:
    """
    The CCITT CRC-8 (polynomial 0x31, initial value 0xFF) that checks a
    master key as printed on the key's card.
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

    @return: the 32-byte master key.
    @raise ValueError: with a message fit for the user.
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
    @return: a master key as printed on a card (with its check byte), in
        groups of four characters.
    """
    text = base64.b64encode(key + bytes([crc8(key)])).decode("ascii")
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


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
    """

    def __init__(self, masterKey: bytes, randomBytes: Callable[[int], bytes] = os.urandom,
                 expectedSerial: Optional[bytes] = None):
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
        Give up (for example on a time-out).
        """
        if not self.finished:
            self.state, self.error = RekeyState.FAILED, reason

    def receiveData(self, data: bytes) -> None:
        """
        Process bytes from the key.
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
            self.fail("the key refused the master key: it does not match the key's own")
        elif self.state is RekeyState.WAITING_UNLOCK and packet.type == "M":
            self.state = RekeyState.WAITING_REPLY
            self._outgoing.append(b"L" + pemEncode(self._nonce) + b".")
        elif self.state is RekeyState.WAITING_REPLY and packet.type == "L" and packet.binary:
            length, deviceEntropy = packet.binaryPayload()
            if length != len(self._nonce) or len(deviceEntropy) != KEY_LENGTH:
                self.fail(f"the key received a {length}-byte nonce, not {len(self._nonce)}")
                return
            self.newLongTermKey = (
                prepared("LRS", self.serial, self._masterKey).update(deviceEntropy + self._nonce)
                .final()
            )
            self.state = RekeyState.DONE

    def _serialReceived(self, packet: Packet) -> None:
        _, serial = packet.binaryPayload()
        if len(serial) != 12 or not packet.verify(prepared("PMS", serial, ZERO_KEY)):
            return
        if self._expectedSerial is not None and serial != self._expectedSerial:
            self.fail(f"the key's serial is {formatSerial(serial)}, not the one given")
            return
        self.serial = serial
        self._pms = prepared("PMS", serial, ZERO_KEY)
        self._nonce = self._randomBytes(NONCE_LENGTH)
        mac = computeMAC(prepared("LKMS", serial, self._masterKey), self._nonce)
        self._outgoing.append(b"M" + pemEncode(mac))
        self.state = RekeyState.WAITING_UNLOCK


# Driving it over a real connection ------------------------------------------------


class _RekeyProtocol(Protocol):
    """
    Drive a L{LongTermRekey} over a key's connection, then optionally prove
    the new key with a session re-key on the same connection.
    """

    def __init__(self, exchange: LongTermRekey):
        self.exchange = exchange
        self.rekeyed = defer.Deferred()
        self.verified = defer.Deferred()
        self._session: Optional[KeySession] = None

    def connectionMade(self):
        self.exchange.start()
        self.transport.write(self.exchange.dataToSend())

    def verify(self, keyring: Keyring) -> defer.Deferred:
        """
        Reset the key and agree a session key under the new long-term key.

        @return: a L{Deferred} firing with C{None} once an entropy frame
            verified, or with the reason it did not, in words.
        """
        self._session = KeySession(keyring)
        self._session.connectionMade()
        self.transport.write(self._session.dataToSend())
        return self.verified

    def dataReceived(self, data):
        if self._session is not None:
            events = self._session.receiveData(data)
            out = self._session.dataToSend()
            if out:
                self.transport.write(out)
            if not self.verified.called:
                if any(isinstance(e, EntropyReceived) for e in events):
                    self.verified.callback(None)
                elif self._session.state.stopped:
                    self.verified.callback(self._session.reason)
            return
        self.exchange.receiveData(data)
        out = self.exchange.dataToSend()
        if out:
            self.transport.write(out)
        if self.exchange.finished and not self.rekeyed.called:
            self.rekeyed.callback(self.exchange)

    def connectionLost(self, reason):
        self.exchange.fail("the connection to the key was lost")
        if not self.rekeyed.called:
            self.rekeyed.callback(self.exchange)
        if not self.verified.called:
            self.verified.callback("the connection to the key was lost")


def _withTimeout(d: defer.Deferred, seconds: float, reactor, onTimeout) -> defer.Deferred:
    def expired():
        if not d.called:
            onTimeout()

    call = reactor.callLater(seconds, expired)
    d.addBoth(lambda result: (call.active() and call.cancel(), result)[1])
    return d


async def rekeyDevice(reactor, path: str, exchange: LongTermRekey, keyring: Keyring,
                      timeout: float, verify: bool = True, out=None) -> int:
    """
    Re-key the key at C{path}, store the new long-term key in C{keyring}
    and report on C{out} (standard output by default).

    @return: the exit status for C{ekey-rekey}.
    """
    from ekey.services.device import KeyDeviceEndpoint

    out = out or sys.stdout
    protocol = _RekeyProtocol(exchange)
    try:
        await KeyDeviceEndpoint(reactor, path).connect(_OneProtocolFactory(protocol))
    except Exception as e:
        print(f"ekey-rekey: cannot open {path}: {e}", file=sys.stderr)
        return 1

    def timedOut():
        exchange.fail(f"the key did not answer within {timeout:g} seconds ({exchange.state.value})")
        protocol.rekeyed.callback(exchange)

    try:
        await _withTimeout(protocol.rekeyed, timeout, reactor, timedOut)
        if exchange.state is not RekeyState.DONE:
            print(f"ekey-rekey: {path}: {exchange.error}", file=sys.stderr)
            return 1
        serial = formatSerial(exchange.serial)
        print(f"Entropy Key serial: {serial}", file=out)
        keyring.set(exchange.serial, exchange.newLongTermKey)
        try:
            keyring.save()
        except KeyringError as e:
            print(f"ekey-rekey: the key now has a new long-term key, but {e}; "
                  f"its keyring line is:\n{serial} {formatSerial(exchange.newLongTermKey)}",
                  file=sys.stderr)
            return 1
        print(f"New long-term key stored in {keyring.path}", file=out)
        if not verify:
            return 0
        verified = protocol.verify(keyring)
        problem = await _withTimeout(
            verified, timeout, reactor,
            lambda: verified.callback(f"no entropy within {timeout:g} seconds"))
        if problem is not None:
            print(f"ekey-rekey: the new key could not be verified: {problem}", file=sys.stderr)
            return 1
        print("Verified: the key sends entropy under the new long-term key", file=out)
        return 0
    finally:
        protocol.transport.loseConnection()


class _OneProtocolFactory(Factory):
    def __init__(self, protocol):
        self._protocol = protocol

    def buildProtocol(self, addr):
        return self._protocol


# The command line --------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ekey-rekey",
        description="Give an Entropy Key a new long-term key, made with its master key, "
        "and store it in the keyring.",
    )
    parser.add_argument("--device", "-d", required=True,
                        help="the key: a serial device or a Unix socket path")
    parser.add_argument("--master-key", "-m", required=True,
                        help="the master key as printed on the key's card (or 64 hex digits)")
    parser.add_argument("--keyring", "-f", default=DEFAULT_KEYRING,
                        help=f"the keyring to update (default {DEFAULT_KEYRING})")
    parser.add_argument("--serial", "-s", help="refuse to re-key any key but this serial")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the key (default 10)")
    parser.add_argument("--no-verify", action="store_true",
                        help="do not check the new key with a session re-key afterwards")
    return parser


def main(argv=None, reactor=None) -> int:
    """
    The C{ekey-rekey} command.

    @return: the exit status: 0 done, 1 the key refused or did not answer,
        2 bad usage or configuration.
    """
    from ekey.services.device import KeyPathError, checkKeyPath
    from ekey.core.keyring import parseSerial

    args = _parser().parse_args(argv)
    try:
        masterKey = parseMasterKey(args.master_key)
        expected = parseSerial(args.serial) if args.serial else None
        checkKeyPath(args.device)
        keyring = Keyring.load(args.keyring) if os.path.exists(args.keyring) else Keyring(args.keyring)
    except (ValueError, KeyPathError, KeyringError) as e:
        print(f"ekey-rekey: {e}", file=sys.stderr)
        return 2
    exchange = LongTermRekey(masterKey, expectedSerial=expected)
    status = []

    def run(reactor):
        d = defer.Deferred.fromCoroutine(
            rekeyDevice(reactor, args.device, exchange, keyring, args.timeout,
                        verify=not args.no_verify)
        )
        d.addCallback(status.append)
        return d

    if reactor is not None:
        run(reactor)
        return status[0] if status else 1

    def exitWithStatus(code):
        # task.react turns a SystemExit failure into the process's status.
        raise SystemExit(code)

    task.react(lambda r: run(r).addCallback(exitWithStatus))


if __name__ == "__main__":
    sys.exit(main())
