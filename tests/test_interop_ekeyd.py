"""
Interop with the real C{ekeyd} 1.1.5: our simulated key must be a key
that C{ekeyd} accepts, and our daemon must turn the same key into the same
bytes that C{ekeyd} does.

The simulator runs with C{--seed}, so its plaintext is known in advance
(L{ekey.services.simulator.seededBlock}); both hosts are judged by their output
files.  More than 4096 blocks are read, so each run crosses the session
re-key after sequence number 4095.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import TestCase

from ekey.core.units import BLOCK_SIZE
from tests.interop.processes import (
    SERIAL,
    assertNoTraceback,
    daemonLog,
    ekeydControl,
    makeTempDir,
    socketPath,
    startDaemon,
    startEkeyd,
    startSimulator,
    waitForSize,
    writeKeyring,
)
from tests.interop.requirements import findPeer
from tests.interop.seeded import describeMismatch, indicesOf, seededPlaintext, traceServed

SEED = b"ekey-interop-acceptance"

# More than 4096 blocks: across the re-key after sequence 4095.
BLOCKS = 4200


class EkeydInteropTests(TestCase):
    """
    The simulated key against C{ekeyd}, and our daemon against the same key.
    """

    def setUp(self):
        findPeer("ekeyd")
        self.directory = makeTempDir(self)
        self.keyring = writeKeyring(os.path.join(self.directory, "keyring"))
        self.keySocket = socketPath(self, self.directory)

    def assertSeededOutput(self, data: bytes, blocks: int, host: str) -> None:
        expected = seededPlaintext(SEED, blocks)
        actual = data[: len(expected)]
        if actual != expected:
            self.fail(f"{host}'s output is not the seeded plaintext: "
                      f"{describeMismatch(expected, actual)}")

    def test_ekeydOutputIsSeededPlaintextAcrossRekey(self):
        """
        C{ekeyd} reading the simulator over a Unix socket writes exactly the
        simulator's seeded plaintext, block for block, over more than 4096
        blocks, so the simulator's frames, MACs, encryption and session
        re-key are all what C{ekeyd} expects of a real key.
        """
        startSimulator(self, self.directory, listen=self.keySocket, seed=SEED, rate=0)
        output = os.path.join(self.directory, "ekeyd.out")
        ekeyd = startEkeyd(self, self.directory, [self.keySocket], self.keyring, output)
        data = waitForSize(output, BLOCKS * BLOCK_SIZE, timeout=40, process=ekeyd)
        self.assertSeededOutput(data, BLOCKS, "ekeyd")
        # ekeyd's own view, over its control socket: the key is trusted.
        reply = ekeydControl(ekeyd, "ListEntropyKeys")
        self.assertEqual(reply[-1][:2], "OK", reply)
        self.assertTrue(any("Running OK" in line and SERIAL in line for line in reply), reply)

    def test_daemonOutputIsEkeydOutput(self):
        """
        Our daemon reading a fresh simulator with the same seed writes the
        same bytes C{ekeyd} does (the seeded plaintext), across the 4095
        re-key.
        """
        startSimulator(self, self.directory, listen=self.keySocket, seed=SEED, rate=0)
        output = os.path.join(self.directory, "ekey.out")
        daemon = startDaemon(self, self.directory, [self.keySocket], self.keyring, output)
        data = waitForSize(output, BLOCKS * BLOCK_SIZE, timeout=40, process=daemon)
        self.assertSeededOutput(data, BLOCKS, "ekey")
        daemon.terminate()
        assertNoTraceback(self, daemon.stderr(), daemonLog(daemon))

    def test_ekeydDropsBadMAC(self):
        """
        A key that sends one frame with a bad MAC makes C{ekeyd} reset it:
        the bad block is never output, frames in flight may be dropped, and
        everything C{ekeyd} does output is seeded plaintext, in order.
        """
        # Faults count entropy frames from 1; blocks are numbered from 0.
        badFrame = 100
        bad = badFrame - 1
        # A real key's rate (125 frames/s): at sixteen times that, so many
        # frames are in flight when ekeyd resets the key that ekeyd now and
        # then never takes it up again (1 run in 5 here).
        startSimulator(self, self.directory, listen=self.keySocket, seed=SEED, rate=125,
                       faults=[f"bad-mac:{badFrame}"])
        output = os.path.join(self.directory, "ekeyd.out")
        ekeyd = startEkeyd(self, self.directory, [self.keySocket], self.keyring, output)
        wanted = 400
        data = waitForSize(output, wanted * BLOCK_SIZE, timeout=30, process=ekeyd)
        data = data[: len(data) - len(data) % BLOCK_SIZE]
        [pieces] = traceServed([data], [SEED])
        indices = indicesOf(pieces)
        self.assertNotIn(bad, indices, f"ekeyd output the block with the bad MAC ({bad})")
        self.assertTrue(indices[-1] > bad, "no output after the bad MAC: ekeyd never recovered")
        # Everything before the bad frame arrived intact.
        self.assertEqual(indices[: bad], list(range(bad)))
