"""
Tests for L{ekey.core.keypipeline}: one key's bytes to tested entropy, with
the pool's room, sans-I/O.
"""

import os

from twisted.trial import unittest

from ekey.core.health import FIPS_BLOCK_BYTES, HealthMonitor
from ekey.core.keypipeline import (
    DECODE_SLICE,
    GARBAGE_REPORT_INTERVAL,
    GarbageDiscarded,
    KeyPipeline,
    RekeyTimedOut,
)
from ekey.core.keyring import Keyring
from ekey.core.session import REKEY_TIMEOUT, KeySession, KeyState, StateChanged
from tests.vectors import HOST_NONCE, LONG_TERM_KEY, SERIAL, SESSION, deviceFrames, entropyFrame


class PassThrough:
    """
    A health monitor that passes everything at once.
    """

    failure = None

    def feed(self, data):
        return [data]

    def streamEnded(self):
        return 0


def ring():
    keyring = Keyring()
    keyring.set(SERIAL, LONG_TERM_KEY)
    return keyring


def pipeline(room=None, health=None, keyring=None):
    """
    A pipeline over a session that uses the transcript's nonce, connected at
    time 0.
    """
    session = KeySession(keyring if keyring is not None else ring(),
                         randomBytes=lambda n: HOST_NONCE[4:])
    result = KeyPipeline(session, health if health is not None else PassThrough(), room=room)
    result.connectionMade(0)
    return result


def running(room=None, health=None):
    """
    A pipeline that has agreed the transcript's session key.
    """
    p = pipeline(room, health)
    p.receiveData(b"".join(deviceFrames()[:4]), 0)
    assert p.session.state is KeyState.RUNNING
    p.dataToSend()
    p.takeEvents()
    return p


def frames(count, start=0):
    """
    @return: C{count} entropy frames of random blocks from sequence
        C{start}, and the blocks.
    """
    blocks = [os.urandom(32) for _ in range(count)]
    return b"".join(entropyFrame(start + i, b) for i, b in enumerate(blocks)), b"".join(blocks)


class TranscriptTests(unittest.TestCase):
    """
    Without a limit on room, the pipeline is the session and the health
    tests end to end.
    """

    def test_transcript(self):
        """
        The reset, then the transcript's nonce, go to the key; exactly the
        transcript's plaintext comes out; the states are reported in order.
        """
        p = pipeline()
        self.assertEqual(p.dataToSend(), b"\x03")
        for frame in deviceFrames():
            p.receiveData(frame, 1)
        self.assertTrue(p.dataToSend().startswith(b"KAAAAAPVgtIxFv4Dw."))
        self.assertEqual(p.takeEntropy().hex(), "".join(SESSION["plaintext_in_order"]))
        self.assertEqual(p.takeEntropy(), b"")
        states = [e.new for e in p.takeEvents() if isinstance(e, StateChanged)]
        self.assertEqual(states[:2], [KeyState.REKEYING, KeyState.RUNNING])
        self.assertEqual(p.connectedAt, 0)
        p.connectionLost("unplugged")
        self.assertEqual(p.session.state, KeyState.CLOSED)

    def test_healthFailure(self):
        """
        A repeated block stops the key with the health monitor's reason and
        nothing it sent comes out; a new connection with the same monitor
        is stopped at once and sends the key nothing.
        """
        health = HealthMonitor()
        p = running(health=health)
        stuck = bytes(range(100, 132))
        p.receiveData(entropyFrame(0, stuck) + entropyFrame(1, stuck), 1)
        self.assertEqual(p.session.state, KeyState.FAILED_HEALTH)
        [event] = p.takeEvents()
        self.assertEqual(event.new, KeyState.FAILED_HEALTH)
        self.assertIn("stuck", event.reason)
        self.assertEqual(p.takeEntropy(), b"")
        again = pipeline(health=health)
        self.assertEqual(again.session.state, KeyState.FAILED_HEALTH)
        self.assertEqual(again.dataToSend(), b"")

    def test_nothingAfterConnectionLost(self):
        """
        What a connection sent and was not handed on is dropped when it is
        lost: the next connection (with the same health monitor) gives only
        its own blocks, from the first.
        """
        health = HealthMonitor()
        p = running(health=health, room=None)
        data, blocks = frames(120)
        p.receiveData(data, 1)
        p.roomChanged(1000, 1)
        self.assertEqual(p.takeEntropy(), blocks[:992])
        p.connectionLost("unplugged")
        p.roomChanged(None, 2)
        self.assertEqual(p.takeEntropy(), b"")
        self.assertFalse(p.holding)
        again = running(health=health)
        data, blocks = frames(100)
        again.receiveData(data, 3)
        self.assertEqual(again.takeEntropy(), blocks[:2496])

    def test_testedInWholeBlocks(self):
        """
        With the real health tests, entropy comes out once a FIPS block has
        passed, in whole 32-byte blocks.
        """
        p = running(health=HealthMonitor())
        data, blocks = frames(100)
        p.receiveData(data, 1)
        self.assertEqual(p.takeEntropy(), blocks[:FIPS_BLOCK_BYTES - FIPS_BLOCK_BYTES % 32])


class RoomTests(unittest.TestCase):
    """
    The pool's room decides how much is decoded; nothing is given that the
    pool could not take.
    """

    def test_heldUntilRoom(self):
        """
        With room for less than a FIPS block after a slice, decoding stops,
        the key is not to be read, and the rest waits undecoded; room lets
        it go on; nothing ever exceeds the room.
        """
        p = running(room=5000)
        data, blocks = frames(400)
        p.receiveData(data, 1)
        self.assertFalse(p.readingWanted)
        out = p.takeEntropy()
        self.assertEqual(out, blocks[:2 * DECODE_SLICE // 2])
        self.assertLess(p.session.statistics.entropyBytes, len(blocks))
        self.assertEqual(p.takeEntropy(), b"")
        taken = out
        while len(taken) < len(blocks):
            p.roomChanged(5000, 2)
            out = p.takeEntropy()
            self.assertLessEqual(len(out), 5000)
            self.assertTrue(out)
            taken += out
        self.assertEqual(taken, blocks)
        self.assertTrue(p.readingWanted)

    def test_entropyWithinRoom(self):
        """
        Decoded entropy beyond the room waits, in whole blocks, until there
        is room.
        """
        p = running(room=None)
        data, blocks = frames(10)
        p.receiveData(data, 1)
        p.roomChanged(100, 1)
        self.assertEqual(p.takeEntropy(), blocks[:96])
        self.assertEqual(p.takeEntropy(), b"")
        p.roomChanged(1000, 1)
        self.assertEqual(p.takeEntropy(), blocks[96:])

    def test_handshakeNotHeld(self):
        """
        A full pool does not keep a new key from saying its serial number
        and agreeing a session key; only then is it not read.
        """
        p = pipeline(room=0)
        self.assertTrue(p.readingWanted)
        p.receiveData(b"".join(deviceFrames()[:4]), 0)
        self.assertEqual(p.session.state, KeyState.RUNNING)
        self.assertFalse(p.readingWanted)
        data, blocks = frames(10)
        p.receiveData(data, 1)
        self.assertEqual(p.session.statistics.entropyBytes, 0)
        p.roomChanged(FIPS_BLOCK_BYTES, 2)
        self.assertEqual(p.takeEntropy(), blocks)

    def test_rekeyReplyNotHeld(self):
        """
        While a session re-key is unanswered, the key is read whatever the
        room, so that its reply is not left to time out.
        """
        p = running(room=None)
        data, blocks = frames(1, start=4095)
        p.receiveData(data, 1)
        self.assertTrue(p.session.awaitingRekeyReply)
        p.roomChanged(0, 1)
        self.assertTrue(p.readingWanted)


class TimerTests(unittest.TestCase):
    """
    The re-key time-out is a deadline the adapter runs.
    """

    def test_rekeyTimeout(self):
        """
        A nonce sent at time 5 sets a deadline C{REKEY_TIMEOUT} later; before
        it nothing happens; at it, the key is reset and the time-out is
        reported; an answer in time clears the deadline.
        """
        p = pipeline()
        self.assertIsNone(p.timer())
        p.dataToSend()
        p.receiveData(b"".join(deviceFrames()[:3]), 5)
        self.assertEqual(p.timer(), 5 + REKEY_TIMEOUT)
        p.dataToSend()
        p.handleTimer(5 + REKEY_TIMEOUT - 1)
        self.assertEqual(p.dataToSend(), b"")
        p.takeEvents()
        p.handleTimer(5 + REKEY_TIMEOUT)
        self.assertEqual(p.dataToSend(), b"\x03")
        self.assertEqual(p.takeEvents()[0], RekeyTimedOut(REKEY_TIMEOUT))
        self.assertIsNone(p.timer())
        p.receiveData(b"".join(deviceFrames()[:4]), 20)
        self.assertEqual(p.session.state, KeyState.RUNNING)
        self.assertIsNone(p.timer())


class GarbageTests(unittest.TestCase):
    """
    Bytes that are not frames are reported, at most once a minute.
    """

    def test_rateLimited(self):
        """
        Garbage is reported at once, then not again within
        C{GARBAGE_REPORT_INTERVAL}; the next report counts everything since
        the last.
        """
        p = pipeline()
        p.takeEvents()
        p.receiveData(b"junk\r\n", 0)
        [event] = p.takeEvents()
        self.assertIsInstance(event, GarbageDiscarded)
        first = event.count
        self.assertGreater(first, 0)
        p.receiveData(b"more junk\r\n", GARBAGE_REPORT_INTERVAL - 1)
        self.assertEqual(p.takeEvents(), [])
        p.receiveData(b"x\r\n", GARBAGE_REPORT_INTERVAL)
        [event] = p.takeEvents()
        self.assertEqual(first + event.count, p.session.statistics.bytesDiscarded)


class KeyringTests(unittest.TestCase):
    """
    A new keyring restarts a key stopped for want of its long-term key.
    """

    def test_unknownSerial(self):
        """
        A key whose serial was not in the keyring starts again with the new
        one; a running key is left alone.
        """
        p = pipeline(keyring=Keyring())
        p.receiveData(deviceFrames()[0], 0)
        self.assertEqual(p.session.state, KeyState.UNKNOWN_SERIAL)
        p.dataToSend()
        self.assertTrue(p.keyringChanged(ring()))
        self.assertEqual(p.dataToSend(), b"\x03")
        self.assertEqual(p.session.state, KeyState.WAITING)
        p.receiveData(b"".join(deviceFrames()[:4]), 1)
        self.assertEqual(p.session.state, KeyState.RUNNING)
        self.assertFalse(p.keyringChanged(Keyring()))
        self.assertEqual(p.session.state, KeyState.RUNNING)
