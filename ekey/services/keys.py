# -*- test-case-name: tests.test_keys -*-
"""
The daemon's keys, by number: what ekeydctl's C{list}, C{stats}, C{add},
C{addall}, C{remove} and C{keyring} act on.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Dict, List, Optional

from twisted.application.service import MultiService
from twisted.logger import Logger

from ekey.services.device import KeyPathError, KeyService, checkKeyPath
from ekey.core.keyring import Keyring, KeyringError, formatSerial
from ekey.core.session import KeyState


class KeyNotFound(LookupError):
    """
    No key has that number, serial or path.
    """


#: The fail modes as ekeydctl names them (short name, words).
_BADNESS = {
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


class KeyManager(MultiService):
    """
    Every key of the daemon, numbered from 1 in the order they were added.

    @ivar keyring: the keyring in force (replaced by L{reloadKeyring}).
    """

    log = Logger()

    def __init__(self, keyring: Optional[Keyring], pool, reactor=None):
        MultiService.__init__(self)
        self.keyring = keyring
        self.pool = pool
        self._reactor = reactor
        self._keys: "OrderedDict[int, KeyService]" = OrderedDict()
        self._nextNumber = 1
        #: Paths of the daemon's own Unix sockets (EGD, control), which are
        #: never keys even though they are sockets.
        self.ownSockets: List[str] = []

    # Changes ---------------------------------------------------------------------

    def add(self, path: str) -> int:
        """
        Start serving the key at C{path}.

        @return: its number.
        @raise KeyPathError: if the path is not a key or is served already.
        @raise KeyringError: if there is no keyring to check keys against.
        """
        if self.keyring is None:
            raise KeyringError("no keyring is loaded: give --keyring")
        checkKeyPath(path)
        real = os.path.realpath(path)
        if any(os.path.realpath(own) == real for own in self.ownSockets):
            raise KeyPathError(f"{path} is one of this daemon's own sockets, not a key")
        for service in self._keys.values():
            if os.path.realpath(service.path) == real:
                raise KeyPathError(f"key {path} is served already")
        number = self._nextNumber
        self._nextNumber += 1
        service = KeyService(path, lambda: self.keyring, None, reactor=self._reactor,
                             pool=self.pool)
        self._keys[number] = service
        service.setServiceParent(self)
        self.log.info("Key {number} added: {path}", number=number, path=path)
        return number

    def addAll(self, directory: str) -> List[int]:
        """
        Add every key in a directory that is not served yet.

        @return: the numbers of the keys added.
        @raise KeyPathError: if the directory cannot be read.
        """
        try:
            names = sorted(os.listdir(directory))
        except OSError as e:
            raise KeyPathError(f"cannot read {directory}: {e.strerror}") from None
        added = []
        for name in names:
            try:
                added.append(self.add(os.path.join(directory, name)))
            except KeyPathError:
                continue
        return added

    def remove(self, identifier: str) -> int:
        """
        Stop serving a key and forget it.

        @param identifier: its number, serial or path.
        @return: its number.
        @raise KeyNotFound: if no key matches.
        """
        number = self.find(identifier)
        service = self._keys.pop(number)
        service.disownServiceParent()
        self.log.info("Key {number} removed: {path}", number=number, path=service.path)
        return number

    def removePath(self, path: str) -> None:
        """
        Forget the key at C{path}, if it is served (for a key that went away
        from a watched directory).
        """
        try:
            self.remove(path)
        except KeyNotFound:
            pass

    def reloadKeyring(self, path: Optional[str] = None) -> int:
        """
        Read the keyring again (or another one) and restart every key that
        was stopped for want of a long-term key.

        @return: how many keys the keyring holds.
        @raise KeyringError: if it cannot be read; the old keyring stays.
        """
        path = path or (self.keyring.path if self.keyring is not None else None)
        if path is None:
            raise KeyringError("no keyring file to read")
        self.keyring = Keyring.load(path)
        for service in self._keys.values():
            protocol = service.factory.protocol
            if protocol is None or protocol.session is None:
                continue
            if protocol.session.state in (KeyState.UNKNOWN_SERIAL, KeyState.BAD_LONG_TERM_KEY):
                protocol.session.keyring = self.keyring
                protocol.session.restart("keyring reloaded")
                protocol.flush()
        self.log.info("Keyring {path} loaded: {count} key(s)", path=path,
                      count=len(self.keyring))
        return len(self.keyring)

    # Questions ---------------------------------------------------------------------

    def find(self, identifier: str) -> int:
        """
        @param identifier: a key's number, serial (16 base64 characters) or
            path.
        @return: its number.
        @raise KeyNotFound: if no key matches.
        """
        text = str(identifier).strip()
        if text.isdigit() and int(text) in self._keys:
            return int(text)
        for number, service in self._keys.items():
            if service.path == text or os.path.realpath(service.path) == os.path.realpath(text):
                return number
            session = _session(service)
            if session is not None and session.serial and formatSerial(session.serial) == text:
                return number
        raise KeyNotFound(f"no key {text!r}: give a number from 'list', a serial or a path")

    def numbers(self) -> List[int]:
        """
        @return: the keys' numbers, in order.
        """
        return list(self._keys)

    def describe(self, number: int) -> Dict[str, object]:
        """
        @return: a key's number, path, serial, state in words, whether it
            gives entropy now, and why it is in its state.
        """
        service = self._keys[number]
        session = _session(service)
        if session is None:
            state, reason, serial = "Key closed", "not connected (retrying)", None
            running = False
        else:
            state, reason = session.state.value, session.reason
            serial = formatSerial(session.serial) if session.serial else None
            running = session.state is KeyState.RUNNING
        return {"number": number, "path": service.path, "serial": serial,
                "state": state, "ok": running, "reason": reason}

    def statistics(self, number: int, now: float) -> Dict[str, object]:
        """
        A key's statistics with ekeydctl's names (and units), plus ekey's
        own.

        @param now: the time, for rates.
        @return: name to value; readings the key has not sent are absent.
        """
        service = self._keys[number]
        protocol = service.factory.protocol
        session = _session(service)
        if session is None:
            return {}
        st = session.statistics
        since = protocol.connectedAt if protocol.connectedAt is not None else now
        elapsed = max(now - since, 0.0)
        result: Dict[str, object] = {
            "BytesRead": st.bytesRead,
            "BytesWritten": st.bytesWritten,
            "ConnectionNonces": st.noncesSent,
            "ConnectionPackets": st.packetsOK + st.packetErrors,
            "ConnectionRekeys": st.rekeys,
            "ConnectionResets": st.resets,
            "ConnectionTime": int(elapsed),
            "FramesOk": st.framesOK,
            "FramingErrors": st.framingErrors,
            "PacketErrors": st.packetErrors,
            "PacketOK": st.packetsOK,
            "MACFailures": st.macFailures,
            "TotalEntropy": st.entropyBytes,
            "HealthFIPSBlocks": protocol.health.fipsBlocks,
            "HealthFIPSFailures": protocol.health.fipsFailed,
        }
        if elapsed > 0:
            result["EntropyRate"] = int(st.entropyBytes * 8 / elapsed)
            result["ReadRate"] = int(st.bytesRead * 8 / elapsed)
            result["WriteRate"] = int(st.bytesWritten * 8 / elapsed)
            if st.fipsBlocks is not None and st.firstFipsBlocks is not None and elapsed > 0:
                result["FipsFrameRate"] = round(
                    (st.fipsBlocks - st.firstFipsBlocks) / elapsed, 2)
        if st.temperatureTenthsK is not None:
            kelvin = st.temperatureTenthsK / 10
            celsius = (st.temperatureTenthsK - 2731.5) / 10
            result["KeyTemperatureK"] = kelvin
            result["KeyTemperatureC"] = round(celsius, 2)
            result["KeyTemperatureF"] = round(celsius * 9 / 5 + 32, 2)
        if st.voltageMillivolts is not None:
            result["KeyVoltage"] = st.voltageMillivolts / 1000
        spb = st.shannonsPerByte()
        for name, key in (("KeyRawShannonPerByteL", "rawL"), ("KeyRawShannonPerByteR", "rawR"),
                          ("KeyRawShannonPerByteX", "rawX"),
                          ("KeyDbsdShannonPerByteL", "debiasedL"),
                          ("KeyDbsdShannonPerByteR", "debiasedR")):
            if key in spb:
                result[name] = spb[key]
        if st.failMode is not None:
            short, words = _BADNESS.get(st.failMode, ("efm_unknown", "Unknown failure"))
            result["KeyRawBadness"] = st.failMode
            result["KeyShortBadness"] = short
            result["KeyEnglishBadness"] = words
        return result


def _session(service: KeyService):
    protocol = service.factory.protocol
    if protocol is None or protocol.session.state is KeyState.CLOSED:
        return None
    return protocol.session
