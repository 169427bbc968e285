"""
Tests for the daemon's status model: L{ekey.core.status} (the frozen
snapshots), L{ekey.services.daemon.Daemon.status} (one snapshot of the
whole daemon) and L{ekey.services.statusviews} (its renderings as JSON and
as ekeydctl's statistics).
"""

import dataclasses
import os
from collections import Counter
from types import SimpleNamespace

from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from ekey.core.pool import EntropyPool
from ekey.core.session import KeyState
from ekey.core.status import (
    ClientStatus,
    KernelFeederStatus,
    KeyReadings,
    KeyStatus,
    ListenerStatus,
    NumberedKey,
    UpstreamState,
    UpstreamStatus,
    celsius,
)
from ekey.services.daemon import SAMPLE_INTERVAL, Daemon
from ekey.services.server import EGDServerFactory, EGDServerProtocol
from ekey.services.upstream import PullPolicy, Upstream
from ekey.services.statusviews import (
    daemonJSON,
    ekeydStatistics,
    keyJSON,
    poolJSON,
    upstreamJSON,
)
from tests.memory import boundSocket, connectKey, startKeyManager, writeKeyring
from tests.vectors import SESSION


def readings(**changes) -> KeyReadings:
    """
    @return: readings of a key that has sent everything, with C{changes}.
    """
    values = dict(
        bytesRead=704, bytesWritten=64, framesOK=12, framingErrors=0, bytesDiscarded=0,
        packetsOK=11, packetErrors=1, macFailures=1, resets=0, noncesSent=1, rekeys=0,
        entropyBytes=160, temperatureTenthsK=3150, voltageMillivolts=3254, fipsBlocks=20,
        firstFipsBlocks=10, fipsFailures=0, failMode="0",
        shannonsPerByte=(("rawL", 2.94), ("debiasedR", 7.5)))
    values.update(changes)
    return KeyReadings(**values)


def upstreamStatus(**changes) -> UpstreamStatus:
    """
    @return: a stalled backup upstream with something of everything, with
        C{changes}.
    """
    values = dict(
        description="tls:b.example:8888", priority=1, state=UpstreamState.STALLED,
        bytesPulled=4096, bytesRefused=224, inFlight=2976, testing=448, connections=2,
        healthFailures=1, lastError="its bytes failed the health tests: stuck")
    values.update(changes)
    return UpstreamStatus(**values)


def keyStatus(state=KeyState.RUNNING, connectedAt=100.0, **changes) -> KeyStatus:
    return KeyStatus("/dev/entropykey/k", state, "session keyed", SESSION["serial_pem"],
                     connectedAt, readings(**changes), 40, 1, None)


class StatusModelTests(unittest.TestCase):
    """
    The snapshots are frozen values with a few derived facts.
    """

    def test_frozen(self):
        """
        A snapshot cannot be changed once made.
        """
        status = keyStatus()
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, status, "reason", "x")
        self.assertTrue(status.running)
        self.assertFalse(dataclasses.replace(status, state=KeyState.FAILED_HEALTH).running)

    def test_celsius(self):
        """
        Tenths of a kelvin become degrees Celsius, to two decimals.
        """
        self.assertEqual(celsius(3150), 41.85)
        self.assertEqual(celsius(2731), -0.05)
        self.assertEqual(celsius(2732), 0.05)

    def test_upstreamConnected(self):
        """
        An upstream is connected while it is up or stalled, not while it
        is connecting or down.
        """
        connected = {state: upstreamStatus(state=state).connected for state in UpstreamState}
        self.assertEqual(connected, {UpstreamState.CONNECTING: False, UpstreamState.UP: True,
                                     UpstreamState.STALLED: True, UpstreamState.DOWN: False})


class EkeydStatisticsTests(unittest.TestCase):
    """
    L{ekeydStatistics} gives a key's statistics the names and units
    ekeydctl's C{stats} prints.
    """

    def test_names(self):
        """
        Counters, rates over the connection's age, temperatures in K, C
        and F, volts, entropy estimates and the fail mode in ekeydctl's
        words.
        """
        stats = ekeydStatistics(keyStatus(connectedAt=100.0), now=110.0)
        self.assertEqual(stats["KeyTemperatureK"], 315.0)
        self.assertEqual(stats["KeyTemperatureC"], 41.85)
        self.assertEqual(stats["KeyTemperatureF"], 107.33)
        self.assertEqual(stats["KeyVoltage"], 3.254)
        self.assertEqual(stats["KeyRawShannonPerByteL"], 2.94)
        self.assertEqual(stats["KeyDbsdShannonPerByteR"], 7.5)
        self.assertNotIn("KeyRawShannonPerByteR", stats)
        self.assertEqual(stats["KeyRawBadness"], "0")
        self.assertEqual(stats["KeyShortBadness"], "efm_ok")
        self.assertEqual(stats["KeyEnglishBadness"], "No failure")
        self.assertEqual(stats["TotalEntropy"], 160)
        self.assertEqual(stats["ConnectionTime"], 10)
        self.assertEqual(stats["ConnectionPackets"], 12)
        self.assertEqual(stats["EntropyRate"], 128)
        self.assertEqual(stats["FipsFrameRate"], 1.0)
        self.assertEqual(stats["MACFailures"], 1)
        self.assertEqual(stats["HealthFIPSBlocks"], 40)
        self.assertEqual(stats["HealthFIPSFailures"], 1)

    def test_missingReadings(self):
        """
        Readings the key has not sent are absent; a key not connected has
        no statistics; no rates at the instant of connection.
        """
        stats = ekeydStatistics(keyStatus(temperatureTenthsK=None, voltageMillivolts=None,
                                          failMode=None), now=100.0)
        for name in ("KeyTemperatureC", "KeyVoltage", "KeyShortBadness", "EntropyRate"):
            self.assertNotIn(name, stats)
        closed = KeyStatus("/k", KeyState.CLOSED, "not connected", None, None, None, 0, 0, None)
        self.assertEqual(ekeydStatistics(closed, now=5.0), {})

    def test_failModes(self):
        """
        A fail mode gets ekeydctl's name and words for it, and an unknown
        mode ekeydctl's unknown names.
        """
        stats = ekeydStatistics(keyStatus(failMode="9"), now=101.0)
        self.assertEqual(stats["KeyShortBadness"], "efm_fips1402_threshold_exceeded")
        stats = ekeydStatistics(keyStatus(failMode="Z"), now=101.0)
        self.assertEqual((stats["KeyRawBadness"], stats["KeyShortBadness"]), ("Z", "efm_unknown"))


class _FakeClient(SimpleNamespace):
    """
    The counters of an EGD client, read by the real L{EGDServerProtocol.status}.
    """

    status = EGDServerProtocol.status


class _FakeListener(SimpleNamespace):
    """
    The counters of an EGD listener, read by the real
    L{EGDServerFactory.status} and L{EGDServerFactory.clientStatuses}.
    """

    status = EGDServerFactory.status
    clientStatuses = EGDServerFactory.clientStatuses


class DaemonStatusTests(unittest.TestCase):
    """
    L{Daemon.status} reads every part once into one L{DaemonStatus}.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.pool = EntropyPool(1 << 16)
        self.keys = startKeyManager(self, self.reactor, self.pool, writeKeyring(self))
        self.daemon = Daemon(self.keys, self.pool, self.reactor, lambda: None)

    def test_everything(self):
        """
        Keys (by number, with the key service's own status), the pool,
        listeners with their clients, upstreams, the kernel feeder and the
        rate history are all in the snapshot.
        """
        self.keys.add(boundSocket(self, self.mktemp()))
        connectKey(self, self.reactor, self.keys, 1, 8)
        client = _FakeClient(peer="tcp:127.0.0.1:4000", identity="relay.example",
                                 bytesServed=64, requests=Counter({"Read": 2}),
                                 connectedAt=3.0)
        factory = _FakeListener(clients=[client], connections=5, bytesServed=96,
                                  requests=Counter({"Read": 3, "GetLevel": 1}),
                                  protocolErrors=1, refused=2, idleClosed=0)
        self.daemon.listeners.append(("tcp:8888", factory))
        policy = PullPolicy(self.pool, 512, 4096, reactor=self.reactor)
        upstream = Upstream("tcp:up:1:priority=2", policy)
        upstream.bytesPulled, upstream.lastError = 10, "refused"
        policy.refillAt, policy.ranDry = 512, 4
        self.daemon.pullPolicy = policy
        self.daemon.kernelFeeder = SimpleNamespace(bytesFed=7, feeds=1, lastError=None)
        self.daemon.startService()
        self.addCleanup(self.daemon.stopService)
        self.pool.add(b"\x55" * 100)
        self.reactor.advance(SAMPLE_INTERVAL)
        status = self.daemon.status()
        self.assertEqual([n.number for n in status.keys], [1])
        self.assertEqual(status.keys[0].key, self.keys._keys[1].status())
        self.assertEqual(status.keysRunning, 1)
        self.assertEqual((status.pool.level, status.pool.refillAt, status.pool.ranDry),
                         (self.pool.level, 512, 4))
        self.assertEqual(status.pool.bytesPerSecond, status.history[-1][1])
        self.assertEqual(status.listeners, (ListenerStatus(
            "tcp:8888", 1, 5, 96, (("GetLevel", 1), ("Read", 3)), 1, 2, 0),))
        self.assertEqual(status.clients, (ClientStatus(
            "tcp:8888", "tcp:127.0.0.1:4000", "relay.example", 64, 2, 3.0),))
        self.assertEqual(status.upstreams, (UpstreamStatus(
            "tcp:up:1", 2, UpstreamState.DOWN, 10, 0, 0, 0, 0, 0, "refused"),))
        self.assertEqual(status.kernel, KernelFeederStatus(7, 1, None))
        self.assertEqual(status.time, self.reactor.seconds())

    def test_upstreamsAnswerTheirOwnStatus(self):
        """
        The snapshot holds what each upstream's own C{status()} answers,
        in the policy's order, and reads nothing else of it.
        """
        first, second = upstreamStatus(), upstreamStatus(description="tcp:a:1", priority=0)
        self.daemon.pullPolicy = SimpleNamespace(
            upstreams=[SimpleNamespace(status=lambda: first),
                       SimpleNamespace(status=lambda: second)], refillAt=0, ranDry=0)
        upstreams = self.daemon.status().upstreams
        self.assertIs(upstreams[0], first)
        self.assertIs(upstreams[1], second)

    def test_bare(self):
        """
        A daemon with no key, listener, upstream or feeder has an empty
        status, and no relay figures for its pool.
        """
        status = self.daemon.status()
        self.assertEqual((status.keys, status.listeners, status.clients, status.upstreams),
                         ((), (), (), ()))
        self.assertIsNone(status.kernel)
        self.assertIsNone(status.pool.refillAt)
        self.assertEqual(poolJSON(status.pool), {
            "level": 0, "capacity": 1 << 16, "bytesIn": 0, "bytesOut": 0, "bytesRefused": 0,
            "waitingReaders": 0})


class JSONTests(unittest.TestCase):
    """
    The JSON renderings carry the snapshot's values, with states in words
    for ekeyctl and by name for programs.
    """

    def test_key(self):
        """
        A key as ekeyctl lists it.
        """
        self.assertEqual(keyJSON(NumberedKey(3, keyStatus())), {
            "number": 3, "path": "/dev/entropykey/k", "serial": SESSION["serial_pem"],
            "state": "Running OK", "ok": True, "reason": "session keyed"})

    def test_upstream(self):
        """
        An upstream as ekeyctl gets it: every field of its snapshot, its
        state in words.
        """
        self.assertEqual(upstreamJSON(upstreamStatus()), {
            "upstream": "tls:b.example:8888", "priority": 1, "state": "stalled",
            "bytesPulled": 4096, "bytesRefused": 224, "inFlight": 2976, "testing": 448,
            "connections": 2, "healthFailures": 1,
            "lastError": "its bytes failed the health tests: stuck"})
        self.assertEqual(upstreamJSON(upstreamStatus(state=UpstreamState.CONNECTING))["state"],
                         "connecting")

    def test_daemon(self):
        """
        C{/status.json}'s keys have their state's name, readings and host
        health; clients their age at the snapshot's time.
        """
        reactor = MemoryReactorClock()
        reactor.advance(50)
        daemon = Daemon(None, EntropyPool(64), reactor, lambda: None)
        status = dataclasses.replace(
            daemon.status(), keys=(NumberedKey(1, keyStatus(state=KeyState.FAILED_HEALTH)),),
            clients=(ClientStatus("unix:/e", "unix:?", None, 1, 1, 20.0),),
            upstreams=(upstreamStatus(),))
        data = daemonJSON(status)
        key = data["keys"][0]
        self.assertEqual((key["state"], key["stateName"], key["ok"]),
                         ("Failed health tests", "failed_health", False))
        self.assertEqual(key["readings"]["shannonsPerByte"], {"rawL": 2.94, "debiasedR": 7.5})
        self.assertEqual(key["health"], {"fipsBlocks": 40, "fipsFailures": 1, "failure": None})
        self.assertEqual(data["clients"][0]["connectedFor"], 30.0)
        self.assertEqual(data["upstreams"], [upstreamJSON(upstreamStatus())])
        self.assertIsNone(data["kernel"])
        self.assertEqual(os.path.basename(data["keys"][0]["path"]), "k")
