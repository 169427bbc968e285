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

from ekey.core.ekeydcontrol import ekeydStatistics
from ekey.core.status import (
    ClientStatus,
    DaemonStatus,
    KernelFeederStatus,
    ListenerStatus,
    NumberedKey,
    PoolStatus,
    UpstreamStatus,
)

__all__ = ["ekeydStatistics", "keyJSON", "poolJSON", "clientJSON", "upstreamJSON",
           "daemonJSON"]


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
    @return: an upstream as C{ekeyctl upstreams} gets it: its endpoint,
        priority, state in words (C{connecting}, C{up}, C{stalled},
        C{down}), bytes pulled into the pool and refused by it, bytes asked
        of it and not yet received (C{inFlight}), bytes received and still
        under test (C{testing}), connections made, connections dropped for
        failed health tests, and its last error.
    """
    return {"upstream": upstream.description, "priority": upstream.priority,
            "state": upstream.state.value, "bytesPulled": upstream.bytesPulled,
            "bytesRefused": upstream.bytesRefused, "inFlight": upstream.inFlight,
            "testing": upstream.testing, "connections": upstream.connections,
            "healthFailures": upstream.healthFailures, "lastError": upstream.lastError}


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
