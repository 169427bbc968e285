# -*- test-case-name: tests.test_status -*-
"""
The daemon's status model (L{ekey.core.status}) rendered as plain values:
JSON for C{ekeyctl}'s AMP answers and C{/status.json}, and the statistics
as ekeydctl names them (C{BytesRead}, C{KeyTemperatureC}, ...) for the
ekeydctl-compatible front ends.

Each function reads a frozen snapshot; none reaches into a service.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from ekey.core.frames import FAIL_MODES
from ekey.core.status import (
    ClientStatus,
    DaemonStatus,
    KernelFeederStatus,
    KeyStatus,
    ListenerStatus,
    NumberedKey,
    PoolStatus,
    UpstreamStatus,
    celsius,
)

#: ekeydctl's names for the fail modes of L{ekey.core.frames.FAIL_MODES}
#: (same keys): its short name and its words.
EKEYD_FAIL_MODES = {
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
assert set(EKEYD_FAIL_MODES) == set(FAIL_MODES), "one row per fail mode"

#: What ekeydctl says of a fail mode it does not know.
EKEYD_UNKNOWN_FAIL_MODE = ("efm_unknown", "Unknown failure")

#: ekeydctl's names of the key's estimates of its generators' entropy, by
#: the names L{ekey.core.session.KeyStatistics.shannonsPerByte} gives.
_EKEYD_SHANNONS = (
    ("KeyRawShannonPerByteL", "rawL"),
    ("KeyRawShannonPerByteR", "rawR"),
    ("KeyRawShannonPerByteX", "rawX"),
    ("KeyDbsdShannonPerByteL", "debiasedL"),
    ("KeyDbsdShannonPerByteR", "debiasedR"),
)


def ekeydStatistics(key: KeyStatus, now: float) -> Dict[str, object]:
    """
    A key's statistics with ekeydctl's names and units (what its C{stats}
    verb prints), plus ekey's host health counters.

    @param now: the time, for rates and the connection's age.
    @return: name to value; empty while the key is not connected, and
        without the readings the key has not sent.
    """
    st = key.readings
    if st is None:
        return {}
    elapsed = max(now - (key.connectedAt if key.connectedAt is not None else now), 0.0)
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
        "HealthFIPSBlocks": key.healthBlocks,
        "HealthFIPSFailures": key.healthFailures,
    }
    if elapsed > 0:
        result["EntropyRate"] = int(st.entropyBytes * 8 / elapsed)
        result["ReadRate"] = int(st.bytesRead * 8 / elapsed)
        result["WriteRate"] = int(st.bytesWritten * 8 / elapsed)
        if st.fipsBlocks is not None and st.firstFipsBlocks is not None:
            result["FipsFrameRate"] = round((st.fipsBlocks - st.firstFipsBlocks) / elapsed, 2)
    if st.temperatureTenthsK is not None:
        degrees = celsius(st.temperatureTenthsK)
        result["KeyTemperatureK"] = st.temperatureTenthsK / 10
        result["KeyTemperatureC"] = degrees
        result["KeyTemperatureF"] = round(degrees * 9 / 5 + 32, 2)
    if st.voltageMillivolts is not None:
        result["KeyVoltage"] = st.voltageMillivolts / 1000
    shannons = dict(st.shannonsPerByte)
    for name, source in _EKEYD_SHANNONS:
        if source in shannons:
            result[name] = shannons[source]
    if st.failMode is not None:
        short, words = EKEYD_FAIL_MODES.get(st.failMode, EKEYD_UNKNOWN_FAIL_MODE)
        result["KeyRawBadness"] = st.failMode
        result["KeyShortBadness"] = short
        result["KeyEnglishBadness"] = words
    return result


def keyJSON(numbered: NumberedKey) -> Dict[str, object]:
    """
    @return: a key as C{ekeyctl list} gets it: its number, path, serial,
        state in words, whether it gives entropy now, and why it is in its
        state.
    """
    key = numbered.key
    return {"number": numbered.number, "path": key.path, "serial": key.serial,
            "state": key.state.value, "ok": key.running, "reason": key.reason}


def poolJSON(pool: PoolStatus) -> Dict[str, object]:
    """
    @return: the pool's level, size and traffic; the rate once sampled;
        for a relay, C{refillAt} and C{ranDry}.
    """
    result: Dict[str, object] = {
        "level": pool.level, "capacity": pool.capacity, "bytesIn": pool.bytesIn,
        "bytesOut": pool.bytesOut, "bytesRefused": pool.bytesRefused,
        "waitingReaders": pool.waitingReaders}
    for name in ("bytesPerSecond", "refillAt", "ranDry"):
        value = getattr(pool, name)
        if value is not None:
            result[name] = round(value, 1) if name == "bytesPerSecond" else value
    return result


def clientJSON(client: ClientStatus, now: float) -> Dict[str, object]:
    """
    @return: an EGD client: listener, peer, identity, bytes served,
        requests, and seconds connected at C{now}.
    """
    return {"listener": client.listener, "peer": client.peer, "identity": client.identity,
            "bytesServed": client.bytesServed, "requests": client.requests,
            "connectedFor": round(now - client.connectedAt, 1)}


def upstreamJSON(upstream: UpstreamStatus) -> Dict[str, object]:
    """
    @return: an upstream's endpoint, state, bytes pulled, connections and
        last error.
    """
    return {"upstream": upstream.description, "state": upstream.state,
            "bytesPulled": upstream.bytesPulled, "connections": upstream.connections,
            "lastError": upstream.lastError}


def listenerJSON(listener: ListenerStatus) -> Dict[str, object]:
    """
    @return: an EGD listener's counters.
    """
    return {"listener": listener.description, "clients": listener.clients,
            "connections": listener.connections, "bytesServed": listener.bytesServed,
            "requests": dict(listener.requests), "protocolErrors": listener.protocolErrors,
            "refused": listener.refused, "idleClosed": listener.idleClosed}


def kernelJSON(kernel: Optional[KernelFeederStatus]) -> Optional[Dict[str, object]]:
    """
    @return: the kernel feeder's counters, or C{None} without one.
    """
    if kernel is None:
        return None
    return {"bytesFed": kernel.bytesFed, "feeds": kernel.feeds, "lastError": kernel.lastError}


def daemonJSON(status: DaemonStatus) -> Dict[str, object]:
    """
    @return: the whole status as C{/status.json} serves it: each key as
        L{keyJSON} gives it, with its state's name (as the metrics label
        it), its readings (C{None} while not connected) and its host
        health counters.
    """
    keys: List[Dict[str, object]] = []
    for numbered in status.keys:
        key = numbered.key
        readings = key.readings
        keys.append(dict(
            keyJSON(numbered), stateName=key.state.name.lower(),
            readings=None if readings is None else {
                name: (dict(value) if name == "shannonsPerByte" else value)
                for name, value in vars(readings).items()},
            health={"fipsBlocks": key.healthBlocks, "fipsFailures": key.healthFailures,
                    "failure": key.healthFailure}))
    return {
        "time": status.time,
        "uptime": round(status.uptime, 1),
        "pool": poolJSON(status.pool),
        "keys": keys,
        "listeners": [listenerJSON(listener) for listener in status.listeners],
        "clients": [clientJSON(client, status.time) for client in status.clients],
        "upstreams": [upstreamJSON(upstream) for upstream in status.upstreams],
        "kernel": kernelJSON(status.kernel),
        "history": [[t, round(rate, 1)] for t, rate in status.history],
    }
