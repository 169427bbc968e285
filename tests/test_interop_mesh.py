"""
Interop test of a relay mesh: three key hosts, each a real C{twistd ekey}
daemon with its own seeded simulated key, behind one relay with three
C{--upstream}s, serving twenty EGD clients with blocking reads while the
key hosts are killed (SIGKILL) and restarted in turn::

    ekey-sim --seed mesh-0 --- twistd ekey (host-0) --- unix: ---------.
    ekey-sim --seed mesh-1 --- twistd ekey (host-1) --- unix: ----------+- relay --- 20 clients
    ekey-sim --seed mesh-2 --- twistd ekey (host-2) --- tcp: priority=0 '

Only our own programs take part, so nothing is skipped.  Every wait is
for an event, with a generous time limit; nothing is timed.
"""

from __future__ import annotations

import os
import threading
from typing import List

from twisted.trial.unittest import FailTest, TestCase

from tests.interop.egdsockets import EGDUnixSocket
from tests.interop.processes import (
    RunningProcess,
    assertNoTraceback,
    daemonLog,
    freeTCPPort,
    killHard,
    makeTempDir,
    restartProcess,
    socketPath,
    startDaemon,
    startRelay,
    startSimulator,
    waitFor,
    waitForListening,
    waitForListeningTCP,
    waitForLog,
    writeKeyring,
)
from tests.interop.seeded import traceServed

SEEDS = [b"mesh-0", b"mesh-1", b"mesh-2"]

#: Entropy frames per second of each simulated key: enough to keep twenty
#: clients busy, little enough for three keys, four daemons and the
#: clients on two shared cores.
KEY_RATE = 150

#: The key hosts' pools stay small, so that a host killed takes few of its
#: key's blocks with it.
HOST_POOL = 8192

#: The relay's pool and watermarks: it can hold at most RELAY_POOL bytes,
#: so clients served more than that while a host is down were served bytes
#: pulled from the survivors during the outage.
RELAY_POOL = 8192
RELAY_LOW = 2048
RELAY_HIGH = 4096

CLIENTS = 20

#: Seven whole 32-byte blocks a read, as relays ask their upstreams: the
#: pool gives turns in whole blocks, so with reads of whole blocks every
#: piece a client gets is whole blocks and each is traced to its key
#: exactly.  (Reads of 255 bytes split blocks between clients into pieces
#: of a few bytes, which no checker can place with certainty.)
READ = 224

#: Generous limits for events on a loaded machine (not measurements).
WAIT = 60.0


class Reader(threading.Thread):
    """
    One EGD client of the relay, making blocking reads (0x02) of C{READ}
    bytes one after another until told to stop.

    @ivar chunks: what each read returned, in order.
    @ivar error: the exception that ended it early, if any.
    """

    def __init__(self, path: str, stop: threading.Event):
        super().__init__(daemon=True)
        self.path = path
        self.stop = stop
        self.chunks: List[bytes] = []
        self.received = 0
        self.error = None

    def run(self) -> None:
        try:
            with EGDUnixSocket(self.path, timeout=WAIT) as client:
                while not self.stop.is_set():
                    client.send(bytes((0x02, READ)))
                    data = client.recvExactly(READ, "a blocking read's bytes")
                    self.chunks.append(data)
                    self.received += len(data)
        except Exception as e:  # reported by the test
            self.error = e


class RelayMeshTests(TestCase):
    """
    A relay pulling from three key hosts keeps its clients served from the
    survivors while each host in turn is killed and restarted, and every
    byte it serves is one key's, once.
    """

    def setUp(self):
        self.directory = makeTempDir(self)
        self.keyring = writeKeyring(os.path.join(self.directory, "keyring"))
        self.processes: List[RunningProcess] = []

    def tearDown(self):
        for process in self.processes:
            process.kill()
        assertNoTraceback(self, *[daemonLog(p) + p.stderr() for p in self.processes
                                  if getattr(p, "logPath", None)])

    def startHost(self, number: int, listen: str) -> RunningProcess:
        """
        Start simulated key C{number} (seed C{SEEDS[number]}) and its key
        host daemon, serving EGD on C{listen}.
        """
        keySocket = socketPath(self, self.directory, f"key-{number}.sock")
        simulator = startSimulator(self, self.directory, listen=keySocket,
                                   seed=SEEDS[number], rate=KEY_RATE, name=f"sim-{number}")
        self.processes.append(simulator)
        host = startDaemon(self, self.directory, [keySocket], self.keyring, None,
                           name=f"host-{number}",
                           extra=["--port", listen, "--pool-size", str(HOST_POOL)])
        self.processes.append(host)
        return host

    def totalReceived(self) -> int:
        return sum(reader.received for reader in self.readers)

    def test_clientsServedThroughHostOutages(self):
        """
        Each key host in turn is killed with SIGKILL: meanwhile the clients
        are served more than the relay's pool can hold (so bytes the
        survivors delivered during the outage), no client is dropped; the
        host is restarted and the relay takes it back.  At the end every
        byte each client got is traced to one block of one key's seeded
        stream, each key's blocks in order for each client, none twice.
        """
        unixPaths = [socketPath(self, self.directory, f"egd-{n}.sock") for n in range(2)]
        tcpPort = freeTCPPort()
        hosts = [self.startHost(n, f"unix:{unixPaths[n]}:lockfile=1") for n in range(2)]
        hosts.append(self.startHost(2, f"tcp:{tcpPort}:interface=127.0.0.1"))
        upstreams = [f"unix:{path}" for path in unixPaths]
        upstreams.append(f"tcp:127.0.0.1:{tcpPort}:priority=0")
        relaySocket = socketPath(self, self.directory, "relay.sock")
        relay = startRelay(self, self.directory, upstreams, [f"unix:{relaySocket}"],
                           name="relay",
                           extra=["--pool-size", str(RELAY_POOL),
                                  "--low-water", str(RELAY_LOW),
                                  "--high-water", str(RELAY_HIGH)])
        self.processes.append(relay)
        for path, host in zip(unixPaths, hosts):
            waitForListening(path, WAIT, host)
        waitForListeningTCP(tcpPort, timeout=WAIT, process=hosts[2])
        waitForListening(relaySocket, WAIT, relay)
        for upstream in upstreams:
            waitForLog(relay, f"Upstream {upstream.replace(':priority=0', '')} connected",
                       WAIT)

        stop = threading.Event()
        self.readers = [Reader(relaySocket, stop) for _ in range(CLIENTS)]
        for reader in self.readers:
            reader.start()
        self.addCleanup(stop.set)
        waitFor(lambda: all(r.received for r in self.readers), WAIT,
                "every client's first bytes", relay)

        for number, host in enumerate(hosts):
            logStart = len(daemonLog(relay))
            killHard(host)
            before = self.totalReceived()
            waitFor(lambda: self.totalReceived() > before + 2 * RELAY_POOL, WAIT,
                    f"clients served from the survivors while host-{number} is down", relay)
            self.assertEqual([r.error for r in self.readers], [None] * CLIENTS)
            again = restartProcess(self, host, self.directory)
            self.processes.append(again)
            hosts[number] = again
            description = upstreams[number].replace(":priority=0", "")
            waitForLog(relay, f"Upstream {description} connected", WAIT, start=logStart)

        # Everyone back: a few more reads each, then stop and collect.
        marks = [r.received for r in self.readers]
        waitFor(lambda: all(r.received > m for r, m in zip(self.readers, marks)), WAIT,
                "every client served after the last restart", relay)
        stop.set()
        for reader in self.readers:
            reader.join(WAIT)
            self.assertFalse(reader.is_alive(), "a client is still waiting for bytes")
        self.assertEqual([r.error for r in self.readers], [None] * CLIENTS)

        served = [b"".join(reader.chunks) for reader in self.readers]
        try:
            traced = traceServed(served, SEEDS)
        except FailTest as e:
            # What each client got, kept for looking into the failure.
            for number, data in enumerate(served):
                path = os.path.join(self.directory, f"client-{number}.bin")
                with open(path, "wb") as f:
                    f.write(data)
            raise FailTest(f"{e}\n(what the clients got is in {self.directory}/client-N.bin)")
        self.assertEqual(
            sum(piece.end - piece.start for pieces in traced for piece in pieces),
            sum(len(data) for data in served))
        # Every key's bytes reached the clients.
        self.assertEqual({piece.seed for pieces in traced for piece in pieces}, set(SEEDS))
