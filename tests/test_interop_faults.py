"""
Faults, as real processes on loopback: hops of a relay chain killed and
restarted under load, a simulated key unplugged and plugged in again, a key
that streams garbage at full speed, a burst of 2,000 clients, and a greedy
client beside ordinary ones, with and without per-client rate limits.

Every process is started by the helpers in L{tests.interop} (each in the
test's temporary directory, killed by the test's cleanup); every wait and
every loop is bounded in time.  The daemons run with C{--control none}, as
several share one directory.  Each test prints the figures it measured
(bytes per client, resident memory from C{/proc/PID/status}: C{VmRSS} now
and C{VmHWM} at its peak).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Dict, List, Optional

from twisted.trial.unittest import TestCase

from ekey.core.units import BLOCK_SIZE
from tests.interop.egdsockets import BoundEGDSocket, EGDSocket, waitForLevel
from tests.interop.load import massLevelQueries, memoryKilobytes, openFileLimit, raiseOpenFileLimit
from tests.interop.processes import (
    RunningProcess,
    assertNoTraceback,
    daemonLog,
    fetchMetrics,
    freeTCPPort,
    killHard,
    makeTempDir,
    restartProcess,
    socketPath,
    startDaemonEGD,
    startGarbageKey,
    startRelay,
    startSimulator,
    waitFor,
    waitForListeningTCP,
    waitForLog,
    writeKeyring,
)
from tests.interop.requirements import skipUnlessRequired
from tests.interop.seeded import SeededStreams, traceServed

SEED = b"ekey-interop-faults"

#: Resident memory any daemon here must stay under, in kB.
RSS_LIMIT_KB = 150 * 1024

NO_CONTROL = ["--control", "none"]


#: How far into the seeded stream blocks are looked for: the simulators run
#: at full speed here, ahead of what the daemons take.
STREAM_LIMIT = 1 << 19


def memoryLine(name: str, pid: int) -> str:
    figures = memoryKilobytes(pid)
    return f"{name} pid {pid}: VmRSS {figures['rss'] / 1024:.1f} MiB, " \
           f"VmHWM {figures['hwm'] / 1024:.1f} MiB"


class BlockReader(threading.Thread):
    """
    A client thread reading whole 32-byte blocks (C{0x02 32}), one every
    C{interval} seconds, from an EGD server on TCP, reconnecting when the
    server goes away, until told to stop.

    @ivar blocks: every whole block received, with the time it came.
    @ivar reconnects: connections made after the first.
    """

    def __init__(self, name: str, port: int, interval: float, stop: threading.Event):
        threading.Thread.__init__(self, name=name, daemon=True)
        self.port = port
        self.interval = interval
        self.stopping = stop
        self.blocks: List[tuple] = []
        self.connections = 0
        self.errors: List[str] = []
        self.lock = threading.Lock()

    @property
    def bytesReceived(self) -> int:
        return len(self.blocks) * BLOCK_SIZE

    def countSince(self, when: float) -> int:
        with self.lock:
            return sum(1 for t, _ in self.blocks if t >= when)

    def run(self):
        client = None
        deadline = time.monotonic() + 120.0  # a bound, whatever happens
        while not self.stopping.is_set() and time.monotonic() < deadline:
            if client is None:
                try:
                    client = EGDSocket("127.0.0.1", self.port, timeout=1.0)
                    self.connections += 1
                except OSError:
                    time.sleep(0.1)
                    continue
            try:
                client.send(bytes((0x02, BLOCK_SIZE)))
                block = self._receive(client)
            except OSError as e:
                block = None
                self.errors.append(repr(e))
            if block is None:
                client.close()
                client = None
                continue
            if block:
                with self.lock:
                    self.blocks.append((time.monotonic(), block))
                self.stopping.wait(self.interval)
        if client is not None:
            client.close()

    def _receive(self, client) -> Optional[bytes]:
        """
        @return: the block; C{b""} if none came within the client's time-out
            but the connection is up (the request stays queued, so the
            connection is dropped to keep requests and replies in step:
            C{None}); C{None} if the connection went away.
        """
        data = b""
        waited = time.monotonic() + 30.0
        while len(data) < BLOCK_SIZE:
            if self.stopping.is_set() or time.monotonic() > waited:
                return None
            try:
                chunk = client.sock.recv(BLOCK_SIZE - len(data))
            except TimeoutError:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk
        return data


class _FaultFixture:
    def setUp(self):
        self.directory = makeTempDir(self)
        self.keyring = writeKeyring(os.path.join(self.directory, "keyring"))
        self.keySocket = socketPath(self, self.directory)
        self.daemons: List[RunningProcess] = []

    def tearDown(self):
        for process in self.daemons:
            process.kill()
        assertNoTraceback(self, *[daemonLog(p) + p.stderr() for p in self.daemons])

    def startDaemon(self, devices, extra=(), name="ekey") -> RunningProcess:
        daemon = startDaemonEGD(self, self.directory, devices, self.keyring,
                                extra=NO_CONTROL + list(extra), name=name)
        self.daemons.append(daemon)
        return daemon


class RelayChainKillTests(_FaultFixture, TestCase):
    """
    sim -> A (the key) -> B (relay, plain TCP upstream) -> clients of B.
    """

    def test_killAndRestartEachHop(self):
        """
        Kill -9 B and restart it, then kill -9 A and restart it, while three
        clients of B read: the other processes stay up, the clients keep
        reading (reconnecting to B; served from B's pool while A is down),
        every block they get is a seeded block and none comes twice, and
        the logs say what happened.
        """
        started = time.monotonic()
        self.simulator = startSimulator(self, self.directory, listen=self.keySocket,
                                        seed=SEED, rate=0)
        a = self.startDaemon([self.keySocket], ["--pool-size", str(256 * 1024)], name="A")
        portB = freeTCPPort()
        upstream = f"tcp:127.0.0.1:{a.egdPort}"
        b = startRelay(self, self.directory, [upstream],
                       [f"tcp:{portB}:interface=127.0.0.1"], name="B", extra=NO_CONTROL)
        self.daemons.append(b)
        waitForListeningTCP(portB, process=b)
        waitForLevel("127.0.0.1", portB, 32 * 1024 * 8, 20.0, b)

        stop = threading.Event()
        readers = [BlockReader(f"client{i}", portB, 0.01, stop) for i in range(3)]
        for reader in readers:
            reader.start()

        def progress(since: float, blocks: int, what: str, process=None):
            waitFor(lambda: all(r.countSince(since) >= blocks for r in readers), 20.0,
                    f"every client to get {blocks} blocks {what}", process)

        try:
            progress(time.monotonic(), 20, "at first")

            # Kill B: A and the simulator stay up; clients reconnect to the new B.
            killHard(b)
            killedB = time.monotonic()
            time.sleep(0.5)
            self.assertIsNone(a.poll(), "A died when its downstream B was killed")
            self.assertIsNone(self.simulator.poll(), "the simulator died when B was killed")
            logStartB = len(daemonLog(b))
            b = restartProcess(self, b, self.directory)
            self.daemons.append(b)
            waitForListeningTCP(portB, process=b)
            connectedB = waitForLog(b, f"Upstream {upstream} connected", 10.0, start=logStartB)
            progress(time.monotonic(), 20, "after B was restarted", b)
            restartedB = time.monotonic() - killedB

            # Kill A: B stays up, says every upstream is down, serves its pool.
            logStartB = len(daemonLog(b))
            waitForLevel("127.0.0.1", portB, 16 * 1024 * 8, 20.0, b)
            logStartA = len(daemonLog(a))
            killHard(a)
            killedA = time.monotonic()
            lost = waitForLog(b, f"Upstream {upstream} lost", 10.0, start=logStartB)
            down = waitForLog(b, "Every upstream is down", 10.0, start=logStartB)
            progress(time.monotonic(), 10, "from B's pool while A is down", b)
            self.assertIsNone(self.simulator.poll(), "the simulator died when A was killed")
            portA = a.egdPort
            a = restartProcess(self, a, self.directory)
            a.egdPort = portA
            self.daemons.append(a)
            waitForListeningTCP(portA, process=a)
            keyBack = waitForLog(a, "connected", 10.0, start=logStartA)
            back = waitForLog(b, "An upstream is back", 20.0, start=logStartB)
            progress(time.monotonic(), 20, "after A was restarted", b)
            restartedA = time.monotonic() - killedA
            self.assertIsNone(b.poll())
            self.assertIsNone(self.simulator.poll())
            memory = [memoryLine("A", a.pid), memoryLine("B", b.pid)]
        finally:
            stop.set()
            for reader in readers:
                reader.join(10.0)

        # Every client's blocks are the key's, in order (each of its
        # connections is to a first-in first-out pool, and a restarted hop
        # only ever gets later blocks), and no block went to two clients.
        traced = traceServed([b"".join(block for _, block in reader.blocks)
                              for reader in readers], [SEED], limit=STREAM_LIMIT)
        seen = {piece.index for pieces in traced for piece in pieces}
        for line in (connectedB, lost, down, keyBack, back):
            print("log:", line.strip())
        for reader in readers:
            print(f"{reader.name}: {reader.bytesReceived} bytes in {len(reader.blocks)} blocks, "
                  f"{reader.connections} connections")
        print(f"B back and serving {restartedB:.1f} s after its kill; "
              f"A back and serving {restartedA:.1f} s after its kill; "
              f"{len(seen)} distinct seeded blocks, highest index {max(seen)}")
        for line in memory:
            print(line)
        print(f"test time {time.monotonic() - started:.1f} s")


class KeyReplugTests(_FaultFixture, TestCase):

    def test_unplugAndReplug(self):
        """
        Kill the simulated key and remove its socket (unplugged), start it
        again on the same path with the same options (plugged in again):
        the daemon logs the key closed, retries with backoff, reconnects,
        and serves fresh seeded blocks again.
        """
        started = time.monotonic()
        self.simulator = startSimulator(self, self.directory, listen=self.keySocket,
                                        seed=SEED, rate=250)
        daemon = self.startDaemon([self.keySocket], ["--pool-size", "4096"])
        stop = threading.Event()
        reader = BlockReader("client", daemon.egdPort, 0.0, stop)
        reader.start()
        try:
            waitFor(lambda: len(reader.blocks) >= 100, 20.0, "100 blocks before the unplug",
                    daemon)
            logStart = len(daemonLog(daemon))
            killHard(self.simulator)
            os.unlink(self.keySocket)
            unplugged = time.monotonic()
            closed = waitForLog(daemon, "closed", 10.0, start=logStart)
            retry = waitForLog(daemon, "Scheduling retry", 10.0, start=logStart)
            # Let the pool drain and a few retries fail.
            time.sleep(2.5)
            before = len(reader.blocks)
            self.simulator = startSimulator(self, self.directory, listen=self.keySocket,
                                            seed=SEED, rate=250)
            replugged = time.monotonic()
            connected = waitForLog(daemon, f"Key {self.keySocket} connected", 15.0,
                                   start=logStart)
            waitFor(lambda: reader.countSince(replugged) >= 100, 20.0,
                    "100 blocks after the key is back", daemon)
            servingAgain = time.monotonic() - replugged
            self.assertIsNone(daemon.poll())
            memory = memoryLine("daemon", daemon.pid)
        finally:
            stop.set()
            reader.join(10.0)

        streams = SeededStreams([SEED], limit=STREAM_LIMIT)
        indices = []
        for n, (_, block) in enumerate(reader.blocks):
            found = streams.find(block)
            if found is None:
                self.fail(f"block {n} ({block.hex()}) is not a seeded block")
            indices.append(found[1])
        # One client of a FIFO pool: increasing indices, with one drop back
        # where the replugged key's stream starts again from block 0.
        drops = [n for n in range(1, len(indices)) if indices[n] <= indices[n - 1]]
        self.assertEqual(len(drops), 1, f"expected one restart of the seeded stream, got "
                                        f"drops at {drops[:10]}")
        first, second = indices[:drops[0]], indices[drops[0]:]
        # Each life of the key: its blocks in order, each once.
        blocks = [block for _, block in reader.blocks]
        traceServed([b"".join(blocks[:drops[0]])], [SEED], limit=STREAM_LIMIT)
        traceServed([b"".join(blocks[drops[0]:])], [SEED], limit=STREAM_LIMIT)
        self.assertLess(second[0], 200, "the replugged key's blocks do not start afresh")
        self.assertGreaterEqual(len(second), 100)
        self.assertGreaterEqual(drops[0], before - 1)
        for line in (closed, retry, connected):
            print("log:", line.strip())
        print(f"client: {reader.bytesReceived} bytes; {len(first)} blocks (indices "
              f"{first[0]}..{first[-1]}) before the unplug, {len(second)} after (indices "
              f"{second[0]}..{second[-1]}); serving again {servingAgain:.1f} s after the "
              f"re-plug ({replugged - unplugged:.1f} s unplugged)")
        print(memory)
        print(f"test time {time.monotonic() - started:.1f} s")


class GarbageKeyTests(_FaultFixture, TestCase):

    def test_garbageAtFullSpeed(self):
        """
        A key that sends nothing but junk (random bytes, stray and runs of
        C{*}) as fast as the daemon reads: the daemon answers EGD
        throughout, its memory stays bounded, it serves no entropy, and its
        log has no traceback.
        """
        started = time.monotonic()
        # Long enough that the whole watch below falls within the garbage,
        # however slowly the daemon starts on a loaded machine.
        seconds = 20.0
        metricsPort = freeTCPPort()
        garbage = startGarbageKey(self, self.directory, self.keySocket, seconds)
        daemon = self.startDaemon([self.keySocket],
                                  ["--metrics", f"tcp:{metricsPort}:interface=127.0.0.1"])
        waitForLog(daemon, f"Key {self.keySocket} connected", 10.0)
        latencies = []
        served = 0
        samples = []
        metrics: Dict[str, float] = {}
        with EGDSocket("127.0.0.1", daemon.egdPort, timeout=15.0) as client:
            # Well within the garbage key's time, which began before the
            # daemon started.
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                t = time.monotonic()
                self.assertEqual(client.level(), 0)
                served += len(client.read(255))
                latencies.append(time.monotonic() - t)
                # Answered while the key still sends garbage, not after.
                self.assertIsNone(garbage.poll(), "the garbage key stopped before the watch did")
                samples.append(memoryKilobytes(daemon.pid)["rss"])
                if len(latencies) % 4 == 0:
                    metrics.update(fetchMetrics(metricsPort))
                time.sleep(0.1)
        metrics.update(fetchMetrics(metricsPort))
        memory = memoryKilobytes(daemon.pid)
        self.assertIsNone(daemon.poll(), "the daemon died")
        garbage.wait(seconds + 10.0)
        self.assertEqual(served, 0, "entropy was served from a key that sent only garbage")
        self.assertLess(max(samples + [memory["hwm"]]), RSS_LIMIT_KB)
        log = daemonLog(daemon)
        assertNoTraceback(self, log, daemon.stderr())
        framing = {k: v for k, v in metrics.items() if "framing" in k}
        readBytes = {k: v for k, v in metrics.items() if "bytes_read" in k}
        print(f"garbage key: {garbage.stdout().strip().splitlines()[-1]}")
        print(f"{len(latencies)} EGD round trips (0x00 then 0x01 255) during the garbage: "
              f"max {max(latencies) * 1000:.0f} ms, entropy served {served} bytes")
        print(f"metrics: {framing or 'no framing-error metric'} {readBytes}")
        print(memoryLine("daemon", daemon.pid) + f" (peak sampled VmRSS {max(samples) / 1024:.1f}"
              " MiB)")
        keyLines = [line for line in log.splitlines() if "Key " in line or "garbage" in line
                    or "framing" in line.lower()]
        print("key log lines:\n  " + "\n  ".join(keyLines[-6:]))
        self.assertTrue(any(v > 0 for v in framing.values()),
                        f"the daemon's metrics show no framing errors: {framing}")
        # Every round trip was answered during the garbage (above).  Their
        # time: 24 ms at most here, with other test runs on the machine;
        # the 2 s bound this replaced failed now and then on a loaded
        # machine, so the bound is five times that.
        self.assertLess(max(latencies), 10.0, "EGD stalled while the key sent garbage")
        print(f"test time {time.monotonic() - started:.1f} s")

    def test_garbageIsLogged(self):
        """
        The log says that the key sends garbage (framing errors), not only
        the metrics.
        """
        garbage = startGarbageKey(self, self.directory, self.keySocket, 3.0)
        daemon = self.startDaemon([self.keySocket])
        waitForLog(daemon, f"Key {self.keySocket} connected", 10.0)
        garbage.wait(10.0)
        # Only what the daemon says, not the paths it names (the test's
        # directory holds this test's name).
        log = daemonLog(daemon).replace(self.directory, "DIR")
        text = log.replace(self.keySocket, "KEY").lower()
        self.assertTrue(
            any(word in text for word in ("garbage", "framing", "not frames", "junk")),
            "the daemon's log does not say that the key sent garbage:\n" + log[-2000:])


class ManyClientsTests(_FaultFixture, TestCase):

    CLIENTS = 2000

    def startBusyDaemon(self, extra=()) -> RunningProcess:
        limit = raiseOpenFileLimit(self.CLIENTS + 1000)
        if limit < self.CLIENTS + 200:
            skipUnlessRequired(f"the open-file limit is {limit}, too low for {self.CLIENTS} "
                               "clients (raise it with ulimit -n, or run as root)")
        self.simulator = startSimulator(self, self.directory, listen=self.keySocket,
                                        seed=SEED, rate=125)
        port = freeTCPPort()
        daemon = self.startDaemon(
            [self.keySocket], ["--port", f"tcp:{port}:interface=127.0.0.1:backlog=2048"]
            + list(extra))
        daemonLimit = openFileLimit(daemon.pid)
        if daemonLimit < self.CLIENTS + 100:
            skipUnlessRequired(f"the daemon's open-file limit is {daemonLimit}, too low for "
                               f"{self.CLIENTS} clients")
        daemon.burstPort = port
        waitForListeningTCP(port, process=daemon)
        return daemon

    def test_burstOfClients(self):
        """
        2,000 clients connect at once: the daemon stays up and answers
        every one's 0x00, in bounded memory.
        """
        daemon = self.startBusyDaemon()
        before = memoryKilobytes(daemon.pid)
        counts = massLevelQueries("127.0.0.1", daemon.burstPort, self.CLIENTS, timeout=45.0)
        after = memoryKilobytes(daemon.pid)
        print(f"{self.CLIENTS} clients at once: {counts}")
        print(f"daemon VmRSS {before['rss'] / 1024:.1f} MiB before, {after['rss'] / 1024:.1f} "
              f"MiB after, VmHWM {after['hwm'] / 1024:.1f} MiB")
        self.assertIsNone(daemon.poll(), "the daemon died")
        self.assertEqual(counts["answered"], self.CLIENTS, counts)
        self.assertLess(after["hwm"], RSS_LIMIT_KB)
        with EGDSocket("127.0.0.1", daemon.egdPort, timeout=5.0) as client:
            client.level()

    def test_burstBeyondMaxClients(self):
        """
        With C{--max-clients 500}, 2,000 clients at once: 500 are answered,
        the rest are closed, and the log says so once.
        """
        daemon = self.startBusyDaemon(["--max-clients", "500"])
        counts = massLevelQueries("127.0.0.1", daemon.burstPort, self.CLIENTS, timeout=45.0)
        memory = memoryKilobytes(daemon.pid)
        print(f"{self.CLIENTS} clients at once, --max-clients 500: {counts}")
        print(memoryLine("daemon", daemon.pid))
        self.assertIsNone(daemon.poll(), "the daemon died")
        self.assertEqual(counts["answered"], 500, counts)
        self.assertEqual(counts["closed"], self.CLIENTS - 500, counts)
        self.assertLess(memory["hwm"], RSS_LIMIT_KB)
        refusals = [line for line in daemonLog(daemon).splitlines()
                    if "the most allowed: refusing" in line]
        print("log:", *refusals)
        self.assertEqual(len(refusals), 1, refusals)
        waitForLog(daemon, "Room for clients again", 10.0)
        with EGDSocket("127.0.0.1", daemon.egdPort, timeout=5.0) as client:
            client.level()


class GreedyClientTests(_FaultFixture, TestCase):
    """
    One client drains as fast as it can (pipelined 0x02 255) from
    127.0.0.2, beside ten ordinary clients (0x02 32 every 100 ms) from
    127.0.0.10 to 127.0.0.19: distinct addresses, so distinct rate-limit
    buckets.
    """

    ORDINARY = 10
    WINDOW = 5.0
    SETTLE = 1.5

    def runClients(self, port: int) -> dict:
        stop = threading.Event()
        greedyLog: List[tuple] = []
        ordinary = [dict(address=f"127.0.0.{10 + i}", latencies=[], bytes=0, errors=[])
                    for i in range(self.ORDINARY)]
        greedyErrors: List[str] = []
        greedyStart = []

        def greedy():
            greedyStart.append(time.monotonic())
            try:
                client = BoundEGDSocket("127.0.0.2", "127.0.0.1", port, timeout=1.0)
            except OSError as e:
                greedyErrors.append(repr(e))
                return
            total = 0
            client.send(b"\x02\xff" * 16)
            requested = 16 * 255
            deadline = time.monotonic() + self.SETTLE + self.WINDOW + 10.0
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    chunk = client.sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError as e:
                    greedyErrors.append(repr(e))
                    break
                if not chunk:
                    greedyErrors.append("closed")
                    break
                total += len(chunk)
                greedyLog.append((time.monotonic(), total))
                while requested - total < 8 * 255:
                    client.send(b"\x02\xff" * 8)
                    requested += 8 * 255
            client.close()

        def ordinaryClient(record):
            try:
                client = BoundEGDSocket(record["address"], "127.0.0.1", port, timeout=5.0)
            except OSError as e:
                record["errors"].append(repr(e))
                return
            deadline = time.monotonic() + self.SETTLE + self.WINDOW + 10.0
            while not stop.is_set() and time.monotonic() < deadline:
                t = time.monotonic()
                try:
                    client.send(bytes((0x02, 32)))
                    record["bytes"] += len(client.recvExactly(32))
                except Exception as e:  # a time-out is a FailTest
                    record["errors"].append(str(e)[:200])
                    break
                record["latencies"].append(time.monotonic() - t)
                stop.wait(max(0.0, 0.1 - (time.monotonic() - t)))
            client.close()

        threads = [threading.Thread(target=greedy, daemon=True)]
        threads += [threading.Thread(target=ordinaryClient, args=(r,), daemon=True)
                    for r in ordinary]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(self.SETTLE + self.WINDOW)
        stop.set()
        for thread in threads:
            thread.join(10.0)

        def greedyAt(when):
            got = [total for t, total in greedyLog if t <= start + when]
            return got[-1] if got else 0

        windowBytes = greedyAt(self.SETTLE + self.WINDOW) - greedyAt(self.SETTLE)
        return dict(greedyTotal=greedyAt(self.SETTLE + self.WINDOW),
                    greedyRate=windowBytes / self.WINDOW, greedyErrors=greedyErrors,
                    greedyLog=greedyLog, greedyStart=greedyStart[0], ordinary=ordinary)

    def report(self, label: str, result: dict):
        demand = (self.SETTLE + self.WINDOW) / 0.1 * 32
        print(f"{label}: greedy client {result['greedyTotal']} bytes, "
              f"{result['greedyRate']:.0f} B/s over the {self.WINDOW:g} s window after "
              f"{self.SETTLE:g} s; errors {result['greedyErrors']}")
        for r in result["ordinary"]:
            lat = sorted(r["latencies"]) or [float("nan")]
            print(f"  ordinary {r['address']}: {r['bytes']} bytes "
                  f"({100 * r['bytes'] / demand:.0f}% of its demand), {len(r['latencies'])} "
                  f"requests, latency median {lat[len(lat) // 2] * 1000:.1f} ms max "
                  f"{lat[-1] * 1000:.1f} ms, errors {r['errors']}")

    def assertOrdinaryServed(self, result: dict, maxLatency: float, share: float):
        """
        Every ordinary client had every request answered, each within
        C{maxLatency} seconds, and made at least C{share} of the requests it
        would have made had each been answered at once.
        """
        expected = (self.SETTLE + self.WINDOW) / 0.1
        for r in result["ordinary"]:
            self.assertEqual(r["errors"], [], r["address"])
            self.assertGreaterEqual(len(r["latencies"]), expected * share,
                                    f"{r['address']} was served {len(r['latencies'])} times")
            self.assertLess(max(r["latencies"]), maxLatency, r["address"])

    def test_rateLimited(self):
        """
        With C{--client-rate 2000 --client-burst 2000}: the greedy client
        never gets more than its token bucket allows, yet is served, and
        every ordinary request is answered.
        """
        # 500 frames/s (16 kB/s): more than every client together asks
        # for, without the pool ever being full (a full pool fed by a key
        # at full speed costs the daemon a burst of verifying for every
        # small draw, which would be measured here instead).
        self.simulator = startSimulator(self, self.directory, listen=self.keySocket,
                                        seed=SEED, rate=500)
        daemon = self.startDaemon([self.keySocket], ["--client-rate", "2000",
                                                     "--client-burst", "2000"])
        waitForLevel("127.0.0.1", daemon.egdPort, 8 * 1024 * 8, 20.0, daemon)
        result = self.runClients(daemon.egdPort)
        self.report("--client-rate 2000", result)
        print(memoryLine("daemon", daemon.pid))
        self.assertEqual(result["greedyErrors"], [])
        # Held to its rate: by any moment, the greedy client has received
        # no more than the burst plus the rate times the time since it began
        # to connect (plus one reply on its way).  That is the token
        # bucket's promise, which no load on this machine can break (a
        # slow client only receives later).
        for when, total in result["greedyLog"]:
            allowed = 2000 + 2000 * (when - result["greedyStart"]) + 255
            self.assertLessEqual(total, allowed,
                                 f"greedy client had {total} bytes after "
                                 f"{when - result['greedyStart']:.2f} s: more than 2000 B/s")
        # Not held below it: a fifth of its rate, a margin of five times
        # for a loaded machine (2040 B/s measured here, with other test runs
        # on the machine).
        self.assertGreater(result["greedyRate"], 2000 / 5,
                           f"greedy client at {result['greedyRate']:.0f} B/s")
        # Measured here, with other test runs on the machine: every
        # ordinary client made 100% of its requests, each answered within
        # 7 ms.  The bounds (a fifth of the requests, 1 s each) leave more
        # than five times that for a loaded machine.
        self.assertOrdinaryServed(result, 1.0, 0.2)

    def test_unlimitedFairTurns(self):
        """
        Without a rate limit, from a key at its real rate (125 frames/s,
        4000 B/s), which the greedy client would take whole: fair turns
        still serve every ordinary request, within a bounded time.
        """
        self.simulator = startSimulator(self, self.directory, listen=self.keySocket,
                                        seed=SEED, rate=125)
        daemon = self.startDaemon([self.keySocket])
        waitForLevel("127.0.0.1", daemon.egdPort, 2048 * 8, 20.0, daemon)
        result = self.runClients(daemon.egdPort)
        self.report("no rate limit", result)
        print(memoryLine("daemon", daemon.pid))
        self.assertEqual(result["greedyErrors"], [])
        self.assertGreater(result["greedyTotal"], 0)
        # Served in turns: the key's output reaches the pool in lumps of
        # 2,500 bytes (every 0.625 s at 4000 B/s), and each lump is split
        # among the readers waiting then; the greedy one takes the rest, so
        # an ordinary client is answered about once a lump (printed above).
        # Measured here, with other test runs on the machine: 88% or more of
        # the requests made, each answered within 0.59 s.  The bounds (a
        # tenth of the requests, 3 s each) leave five times that and more.
        self.assertOrdinaryServed(result, 3.0, 0.1)
