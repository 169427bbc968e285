"""
Tests for L{ekey.core.session.KeySession}, the host's side of a key, in memory.
"""

from twisted.trial import unittest

from ekey.core.frames import binaryPayload, buildContent, buildFrame
from ekey.core.keyring import Keyring
from ekey.core.session import (
    EntropyReceived,
    InformationReceived,
    KeySession,
    KeyState,
    StateChanged,
)
from ekey.core.skein import prepared
from tests.vectors import (
    HOST_NONCE,
    LONG_TERM_KEY,
    SERIAL,
    SESSION,
    SESSION_KEY,
    deviceFrames,
    transcriptSession,
)



def frame(packetType, payload, key=SESSION_KEY, serial=SERIAL, binary=None):
    """
    Build a device frame MAC'd under C{key}.
    """
    if binary is None:
        binary = isinstance(payload, tuple)
    if binary:
        payload = binaryPayload(*payload)
    return buildFrame(buildContent(packetType, payload, binary), prepared("PMS", serial, key))


def keyring():
    ring = Keyring("/etc/entropykey/keyring")
    ring.set(SERIAL, LONG_TERM_KEY)
    return ring


def blocks(events):
    return [e.data for e in events if isinstance(e, EntropyReceived)]


class TranscriptTests(unittest.TestCase):
    """
    The session decodes the vectors' transcript exactly.
    """

    def test_transcript(self):
        """
        Replaying the device's side of the transcript, the host sends the
        documented reset and nonce, derives the session key, outputs exactly
        C{plaintext_in_order}, and rejects and counts the frame whose MAC
        fails.
        """
        session = KeySession(keyring(), randomBytes=lambda n: HOST_NONCE[4:])
        session.connectionMade()
        self.assertEqual(session.dataToSend(), b"\x03")
        out = []
        hostSends = [e for e in SESSION["events"] if e["from"] == "host"]
        for event in SESSION["events"]:
            if event["from"] == "host":
                self.assertEqual(session.dataToSend(), event["bytes_text"].encode())
                continue
            out.extend(blocks(session.receiveData(event["bytes_text"].encode())))
        self.assertEqual(len(hostSends), 1)
        self.assertEqual([b.hex() for b in out], SESSION["plaintext_in_order"])
        self.assertEqual(session._sessionKey, SESSION_KEY)
        stats = session.statistics
        self.assertEqual(stats.macFailures, 1)
        self.assertEqual(stats.packetErrors, 1)
        self.assertEqual(stats.rekeys, 1)
        self.assertEqual(stats.entropyBytes, 5 * 32)
        self.assertEqual(stats.framesOK, 12)

    def test_rekeyAfterLastSequence(self):
        """
        After sequence 4095 the host asks for a new session key at once,
        with the nonce counter advanced to 1.
        """
        session = transcriptSession()
        for f in deviceFrames()[4:9]:
            session.receiveData(f)
        sent = session.dataToSend()
        self.assertTrue(sent.startswith(b"KAQAAA"), sent)
        self.assertTrue(sent.endswith(b"."))
        self.assertEqual(session.state, KeyState.REKEYING)
        self.assertEqual(session.statistics.noncesSent, 2)

    def test_statistics(self):
        """
        Information frames update temperature, voltage, FIPS counters and
        shannons per byte as ekeyd works them out.
        """
        session = transcriptSession()
        for f in deviceFrames()[4:]:
            session.receiveData(f)
        stats = session.statistics
        self.assertEqual(stats.temperatureTenthsK, 3150)
        self.assertEqual(stats.voltageMillivolts, 3254)
        self.assertEqual(stats.fipsBlocks, 7342)
        self.assertEqual(stats.failMode, "0")
        self.assertEqual(
            stats.shannonsPerByte(),
            {"rawL": 2.94, "rawR": 2.95, "rawX": 2.92, "debiasedL": 2.93, "debiasedR": 2.99},
        )


class SafetyTests(unittest.TestCase):
    """
    Nothing unverified ever comes out, and bad keys stop.
    """

    def test_unknownSerial(self):
        """
        A serial number missing from the keyring makes the key unusable, and
        the reason names the serial and the keyring.
        """
        session = KeySession(Keyring("/tmp/ring"))
        session.connectionMade()
        events = session.receiveData(b"".join(deviceFrames()))
        self.assertEqual(session.state, KeyState.UNKNOWN_SERIAL)
        self.assertIn(SESSION["serial_pem"], session.reason)
        self.assertIn("/tmp/ring", session.reason)
        self.assertEqual(blocks(events), [])
        self.assertEqual(session.dataToSend(), b"\x03")

    def test_serialChanges(self):
        """
        A different serial number on a live connection makes the key
        untrusted for good: nothing more comes out, even valid frames.
        """
        session = transcriptSession()
        other = bytes(12)
        events = session.receiveData(frame("S", (0, other), key=bytes(32), serial=other))
        self.assertEqual(session.state, KeyState.UNTRUSTED)
        self.assertIsInstance(events[-1], StateChanged)
        self.assertEqual(blocks(session.receiveData(deviceFrames()[4])), [])
        self.assertEqual(session.restart("operator"), [])
        self.assertEqual(session.state, KeyState.UNTRUSTED)

    def test_restartReturnsEvents(self):
        """
        Restarting a running key resets it and returns the change of state
        at once, as every input does.
        """
        session = transcriptSession()
        [event] = session.restart("operator")
        self.assertEqual((event.old, event.new, event.reason),
                         (KeyState.RUNNING, KeyState.WAITING, "operator"))
        self.assertEqual(session.dataToSend(), b"\x03")

    def test_nonceLengthMismatch(self):
        """
        A re-key reply that says the key received a nonce of another length
        resets the key and yields no session key.
        """
        session = KeySession(keyring(), randomBytes=lambda n: HOST_NONCE[4:])
        session.connectionMade()
        session.dataToSend()
        for f in deviceFrames()[:3]:
            session.receiveData(f)
        session.dataToSend()
        session.receiveData(frame("K", (11, b"e" * 32), key=bytes(32)))
        self.assertEqual(session.dataToSend(), b"\x03")
        self.assertEqual(session.state, KeyState.WAITING)
        self.assertEqual(blocks(session.receiveData(deviceFrames()[5])), [])

    def test_unsolicitedRekeyReply(self):
        """
        A re-key reply nobody asked for is a bad packet, not a new key.
        """
        session = transcriptSession()
        session.receiveData(frame("K", (12, b"e" * 32)))
        self.assertEqual(session._sessionKey, SESSION_KEY)
        self.assertEqual(session.statistics.packetErrors, 1)

    def test_entropyUnderZeroKey(self):
        """
        Entropy frames MAC'd under the all-zero key (which anybody can
        compute) are never accepted.
        """
        session = KeySession(keyring())
        session.connectionMade()
        session.receiveData(deviceFrames()[0])
        events = session.receiveData(frame("E", (0, b"x" * 32), key=bytes(32)))
        self.assertEqual(blocks(events), [])
        self.assertEqual(session.statistics.packetErrors, 1)

    def test_replayedSequence(self):
        """
        A replayed entropy frame (same sequence number) is refused, so no
        block is served twice.
        """
        session = transcriptSession()
        first = blocks(session.receiveData(deviceFrames()[4]))
        again = blocks(session.receiveData(deviceFrames()[4]))
        self.assertEqual(len(first), 1)
        self.assertEqual(again, [])
        self.assertEqual(session.statistics.packetErrors, 1)

    def test_repeatedBadPacketsReset(self):
        """
        One bad MAC is counted and skipped; C{maxBadPackets} in a row reset
        the key, and frames still in flight are ignored until its serial
        number frame.
        """
        session = transcriptSession(maxBadPackets=3)
        session.receiveData(deviceFrames()[4])
        bad = deviceFrames()[-1]
        session.receiveData(bad)
        self.assertEqual(session.dataToSend(), b"")
        self.assertEqual(blocks(session.receiveData(deviceFrames()[5])), [bytes.fromhex(
            SESSION["plaintext_in_order"][1])])
        session.receiveData(bad * 3)
        self.assertEqual(session.dataToSend(), b"\x03")
        self.assertEqual(session.state, KeyState.WAITING)
        self.assertEqual(session.statistics.resets, 2)
        self.assertEqual(blocks(session.receiveData(deviceFrames()[6])), [])
        session.receiveData(deviceFrames()[0])
        self.assertEqual(session.state, KeyState.REKEYING)

    def test_badLongTermKey(self):
        """
        When nothing verifies after a re-key, the host resets the key and
        tries once more; when nothing verifies after that one either, the
        long-term key in the keyring is wrong and the key is stopped.
        """
        ring = Keyring()
        ring.set(SERIAL, b"w" * 32)
        session = KeySession(ring, randomBytes=lambda n: HOST_NONCE[4:])
        session.connectionMade()
        for attempt in range(2):
            for f in deviceFrames()[:4]:
                session.receiveData(f)
            self.assertEqual(session.state, KeyState.RUNNING)
            events = session.receiveData(b"".join(deviceFrames()[4:8]))
            self.assertEqual(blocks(events), [])
            if attempt == 0:
                self.assertEqual(session.state, KeyState.WAITING)
                self.assertTrue(session.dataToSend().endswith(b"\x03"))
        self.assertEqual(session.state, KeyState.BAD_LONG_TERM_KEY)
        self.assertIn("long-term key", session.reason)

    def test_keyAnnouncesItselfOnConnect(self):
        """
        A key that says S, I, k when plugged in and again after the host's
        reset gets one nonce only, and its answer to that nonce gives the
        right session key.
        """
        session = KeySession(keyring(), randomBytes=lambda n: HOST_NONCE[4:])
        session.connectionMade()
        self.assertEqual(session.dataToSend(), b"\x03")
        announce = b"".join(deviceFrames()[:3])
        session.receiveData(announce)
        self.assertEqual(session.dataToSend(), b"KAAAAAPVgtIxFv4Dw.")
        session.receiveData(announce)
        self.assertEqual(session.dataToSend(), b"")
        self.assertTrue(session.awaitingRekeyReply)
        session.receiveData(deviceFrames()[3])
        self.assertEqual(session.state, KeyState.RUNNING)
        out = blocks(session.receiveData(deviceFrames()[4]))
        self.assertEqual([b.hex() for b in out], SESSION["plaintext_in_order"][:1])

    def test_repeatedRequestsReset(self):
        """
        A key that keeps asking for a session key while a nonce is
        outstanding (it never got the nonce) is reset after five requests.
        """
        session = KeySession(keyring(), randomBytes=lambda n: HOST_NONCE[4:])
        session.receiveData(b"".join(deviceFrames()[:3]))
        self.assertTrue(session.dataToSend().startswith(b"K"))
        session.receiveData(deviceFrames()[2] * 5)
        self.assertEqual(session.dataToSend(), b"")
        session.receiveData(deviceFrames()[2])
        self.assertEqual(session.dataToSend(), b"\x03")
        self.assertFalse(session.awaitingRekeyReply)

    def test_rekeyTimeout(self):
        """
        An adapter's time-out on an unanswered nonce resets the key.
        """
        session = KeySession(keyring(), randomBytes=lambda n: HOST_NONCE[4:])
        session.receiveData(b"".join(deviceFrames()[:3]))
        session.dataToSend()
        [event] = session.rekeyTimedOut()
        self.assertEqual(session.dataToSend(), b"\x03")
        self.assertEqual(session.state, KeyState.WAITING)
        self.assertEqual((event.old, event.new), (KeyState.REKEYING, KeyState.WAITING))
        self.assertEqual(session.rekeyTimedOut(), [])
        self.assertEqual(session.dataToSend(), b"")

    def test_inFlightIgnoredAfterReset(self):
        """
        After the host resets the key, frames still in flight (under the
        old session key) are ignored rather than counted as bad packets, so
        one reset does not cause another.
        """
        session = transcriptSession(maxBadPackets=1)
        session.receiveData(deviceFrames()[-1])
        self.assertEqual(session.dataToSend(), b"\x03")
        errors = session.statistics.packetErrors
        session.receiveData(b"".join(deviceFrames()[5:8]) + deviceFrames()[-1] * 3)
        self.assertEqual(session.statistics.packetErrors, errors)
        self.assertEqual(session.dataToSend(), b"")

    def test_failMode(self):
        """
        An information frame with a fail mode stops the key, with the mode
        described, and later entropy frames yield nothing.
        """
        session = transcriptSession()
        events = session.receiveData(
            frame("I", b"S08052:23751:23792:23584:07112:20876:08063:24150:3")
        )
        self.assertIsInstance(events[0], InformationReceived)
        self.assertEqual(session.state, KeyState.SELF_STOPPED)
        self.assertIn("Generators have become correlated", session.reason)
        self.assertEqual(blocks(session.receiveData(deviceFrames()[4])), [])

    def test_badGenerators(self):
        """
        A C{B} frame (generators went bad while re-keying) stops the key.
        """
        session = transcriptSession()
        session.receiveData(frame("B", b"Bad generators"))
        self.assertEqual(session.state, KeyState.SELF_STOPPED)

    def test_connectionLost(self):
        """
        Losing the connection closes the key.
        """
        session = transcriptSession()
        events = session.connectionLost("unplugged")
        self.assertEqual(session.state, KeyState.CLOSED)
        self.assertEqual(events[-1].reason, "unplugged")

    def test_garbage(self):
        """
        Garbage on the line is counted as framing errors and never reaches
        the packet layer; the frames around it still decode.
        """
        session = transcriptSession()
        events = session.receiveData(b"\x00\xff*garbage*" + deviceFrames()[4] + b"* \r\n")
        self.assertEqual(len(blocks(events)), 1)
        self.assertGreater(session.statistics.framingErrors, 0)
        self.assertEqual(session.statistics.packetErrors, 0)
