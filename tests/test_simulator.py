"""
Tests for L{ekey.services.simulator}: the simulated key against the test vectors and
against the host's L{KeySession}, its faults and its Twisted adapter.
"""

import hashlib
import json
import os

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ekey.core.frames import FrameReader, parseFrame, pemEncode
from ekey.core.keyring import Keyring
from ekey.core.session import EntropyReceived, KeySession, KeyState
from ekey.services.simulator import (
    DEFAULT_SERIAL,
    GARBAGE,
    Fault,
    FaultKind,
    SimulatedKey,
    SimulatedKeyFactory,
    SimulatedKeyProtocol,
    seededBlock,
)
from ekey.core.skein import prepared

with open(os.path.join(os.path.dirname(__file__), "entropykey-v0.json")) as _f:
    VECTORS = json.load(_f)

SERIAL = DEFAULT_SERIAL
LONG_TERM_KEY = bytes(range(32))
SEED = b"test seed"


def counterRandom(label=b"random"):
    """
    @return: a deterministic stand-in for C{os.urandom}.
    """
    counter = [0]

    def randomBytes(n):
        out = b""
        while len(out) < n:
            out += hashlib.sha256(label + counter[0].to_bytes(8, "big")).digest()
            counter[0] += 1
        return out[:n]

    return randomBytes


def fixedRandom(*chunks):
    """
    @return: a stand-in for C{os.urandom} that gives C{chunks} in order, then
        zeros.
    """
    pending = list(chunks)

    def randomBytes(n):
        chunk = pending.pop(0) if pending else bytes(n)
        assert len(chunk) == n, (len(chunk), n)
        return chunk

    return randomBytes


def frames(data):
    """
    @return: the packets in some bytes from a key.
    """
    return [parseFrame(frame) for frame in FrameReader().receiveData(data)]


def makeKey(**kwargs):
    """
    @return: a seeded L{SimulatedKey} with the test serial and long-term key.
    """
    kwargs.setdefault("seed", SEED)
    kwargs.setdefault("randomBytes", counterRandom())
    return SimulatedKey(SERIAL, LONG_TERM_KEY, **kwargs)


def keyringFor(serial=SERIAL, key=LONG_TERM_KEY):
    """
    @return: an in-memory keyring that knows one key.
    """
    keyring = Keyring()
    keyring.set(serial, key)
    return keyring


class HostPump:
    """
    A L{SimulatedKey} and a host L{KeySession} joined in memory.

    @ivar blocks: every block the host has output, in order.
    @ivar events: every event the host has produced, in order.
    """

    def __init__(self, key, keyring=None, **sessionArguments):
        sessionArguments.setdefault("sendResetOnStart", False)
        sessionArguments.setdefault("randomBytes", counterRandom(b"nonce"))
        self.key = key
        self.host = KeySession(keyring or keyringFor(key.serial, key.longTermKey), **sessionArguments)
        self.blocks = []
        self.events = []

    def connect(self):
        """
        Open the connection: the key resets, as when it is plugged in.
        """
        self.host.connectionMade()
        self.key.reset()
        self.exchange()

    def deliver(self, data):
        """
        Give bytes from the key to the host.
        """
        for event in self.host.receiveData(data):
            self.events.append(event)
            if isinstance(event, EntropyReceived):
                self.blocks.append(event.data)

    def exchange(self):
        """
        Pass bytes both ways until neither side has anything to say.
        """
        while True:
            fromKey = self.key.dataToSend()
            self.deliver(fromKey)
            fromHost = self.host.dataToSend()
            self.key.receiveData(fromHost)
            if not fromKey and not fromHost:
                return

    def run(self, frames):
        """
        Ask the key for up to C{frames} entropy frames, one at a time,
        letting the two sides talk after each.

        @return: how many times the key had something to send.
        """
        sent = 0
        for _ in range(frames):
            data = self.key.nextEntropyFrame()
            if data:
                sent += 1
            self.deliver(data)
            self.exchange()
        return sent


class SeededBlockTests(SynchronousTestCase):
    """
    Tests for L{seededBlock}.
    """

    def test_definition(self):
        """
        Block i is SHA-256 of the seed and i as 8 big-endian bytes.
        """
        self.assertEqual(
            seededBlock(b"abc", 258),
            hashlib.sha256(b"abc" + b"\0\0\0\0\0\0\x01\x02").digest(),
        )
        self.assertNotEqual(seededBlock(b"abc", 0), seededBlock(b"abc", 1))


class FaultParseTests(SynchronousTestCase):
    """
    Tests for L{Fault.parse}.
    """

    def test_kinds(self):
        """
        Every kind of fault parses to its kind and frame number, and prints
        as it was written.
        """
        for spec, expected in [
            ("bad-mac:3", Fault(FaultKind.BAD_MAC, 3)),
            ("garbage:1", Fault(FaultKind.GARBAGE, 1)),
            ("reset:4096", Fault(FaultKind.RESET, 4096)),
            ("stuck:10", Fault(FaultKind.STUCK, 10)),
            ("fail-mode:9@7", Fault(FaultKind.FAIL_MODE, 7, "9")),
            ("fail-mode:A@2", Fault(FaultKind.FAIL_MODE, 2, "A")),
        ]:
            fault = Fault.parse(spec)
            self.assertEqual(fault, expected)
            self.assertEqual(str(fault), spec)

    def test_lowerCaseFailMode(self):
        """
        A fail-mode letter may be given in lower case.
        """
        self.assertEqual(Fault.parse("fail-mode:b@5").failMode, "B")

    def assertParseError(self, spec, *fragments):
        """
        Parsing C{spec} raises L{ValueError} whose message quotes the spec
        and contains each fragment.
        """
        error = self.assertRaises(ValueError, Fault.parse, spec)
        message = str(error)
        self.assertIn(repr(spec), message)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def test_unknownKind(self):
        """
        An unknown kind of fault is an error that lists the known ones.
        """
        self.assertParseError("explode:3", "unknown fault", "bad-mac", "fail-mode")

    def test_missingNumber(self):
        """
        A fault without a frame number is an error.
        """
        self.assertParseError("bad-mac", "needs an entropy frame number")

    def test_badNumber(self):
        """
        The frame number must be a whole number from 1.
        """
        for spec in ("reset:0", "reset:-2", "reset:x", "reset:", "reset:1.5"):
            self.assertParseError(spec, "whole number from 1")

    def test_failModeSyntax(self):
        """
        A fail-mode fault needs a fail-mode character and an C{@}.
        """
        self.assertParseError("fail-mode:9", "fail-mode:C@N")

    def test_badFailMode(self):
        """
        The fail-mode character must be one a key can report, and not C{0}.
        """
        for spec in ("fail-mode:0@3", "fail-mode:6@3", "fail-mode:Z@3", "fail-mode:@3"):
            self.assertParseError(spec, "1 2 3 4 5 7 8 9 A B")


class SimulatedKeyVectorTests(SynchronousTestCase):
    """
    The simulated key reproduces the frames of the test vectors byte for
    byte.
    """

    session = VECTORS["session"]

    def vectorKey(self, randomBytes, **kwargs):
        """
        @return: a key with the vectors' serial and long-term key.
        """
        return SimulatedKey(
            bytes.fromhex(self.session["serial"]),
            bytes.fromhex(self.session["long_term_key"]),
            randomBytes=randomBytes,
            **kwargs,
        )

    def deviceFrames(self):
        """
        @return: the key's frames in the vectors' transcript, as bytes.
        """
        return [
            event["bytes_text"].encode("ascii")
            for event in self.session["events"]
            if event["from"] == "device"
        ]

    def test_reset(self):
        """
        On reset the key sends its serial number under the all-zero session
        key, an information frame and a request for a session key: exactly
        the transcript's first three frames.
        """
        key = self.vectorKey(os.urandom)
        key.reset()
        self.assertEqual(key.dataToSend(), b"".join(self.deviceFrames()[:3]))
        self.assertEqual(key.dataToSend(), b"")

    def test_sessionRekeyAndEntropy(self):
        """
        Given the transcript's nonce and device entropy, the key answers
        with the transcript's C{K!} frame and encrypts the transcript's
        plaintext into its C{E} frames, sequence 4095 included.
        """
        plaintext = [bytes.fromhex(block) for block in self.session["plaintext_in_order"]]
        filler = [bytes(32)] * (4095 - 4)
        key = self.vectorKey(
            fixedRandom(
                bytes.fromhex(self.session["device_entropy"]),
                *plaintext[:4],
                *filler,
                plaintext[4],
            )
        )
        expected = self.deviceFrames()
        key.reset()
        key.dataToSend()
        key.receiveData(self.session["events"][3]["bytes_text"].encode("ascii"))
        self.assertEqual(key.dataToSend(), expected[3])
        for i in range(4):
            self.assertEqual(key.nextEntropyFrame(), expected[4 + i])
        for i in range(4, 4095):
            key.nextEntropyFrame()
        last = key.nextEntropyFrame()
        self.assertEqual(last[:64], expected[8])
        self.assertEqual([p.type for p in frames(last[64:])], ["k"])


class SimulatedKeyTests(SynchronousTestCase):
    """
    Tests for L{SimulatedKey} on its own.
    """

    def keyed(self, **kwargs):
        """
        @return: a key that has been reset and given a session key, with its
            replies taken.
        """
        key = makeKey(**kwargs)
        key.reset()
        key.receiveData(b"K" + pemEncode(b"twelve bytes") + b".")
        key.dataToSend()
        return key

    def test_validation(self):
        """
        A serial, long-term key or master key of the wrong length, or a
        negative C{infoEvery}, is refused.
        """
        self.assertRaises(ValueError, SimulatedKey, b"short", LONG_TERM_KEY)
        self.assertRaises(ValueError, SimulatedKey, SERIAL, b"short")
        self.assertRaises(ValueError, SimulatedKey, SERIAL, LONG_TERM_KEY, masterKey=b"x")
        self.assertRaises(ValueError, SimulatedKey, SERIAL, LONG_TERM_KEY, infoEvery=-1)

    def test_noEntropyWithoutSessionKey(self):
        """
        Before a session re-key the key sends no entropy.
        """
        key = makeKey()
        self.assertFalse(key.canSendEntropy)
        self.assertEqual(key.nextEntropyFrame(), b"")
        key.reset()
        self.assertEqual(key.nextEntropyFrame(), b"")
        self.assertEqual(key.blocksProduced, 0)

    def test_rekeyReply(self):
        """
        The reply to a session re-key carries the nonce length as its subcode
        and 32 bytes of device entropy, MAC'd under the old key; the new key
        is derived from the long-term key, that entropy and the nonce.
        """
        randomBytes = counterRandom()
        key = makeKey(randomBytes=counterRandom())
        key.reset()
        key.dataToSend()
        key.receiveData(b"k" + pemEncode(b"nonce") + b".")
        [reply] = frames(key.dataToSend())
        self.assertEqual(reply.type, "K")
        self.assertTrue(reply.verify(prepared("PMS", SERIAL, bytes(32))))
        length, deviceEntropy = reply.binaryPayload()
        self.assertEqual((length, deviceEntropy), (5, randomBytes(32)))
        sessionKey = prepared("RS", SERIAL, LONG_TERM_KEY).update(deviceEntropy + b"nonce").final()
        [entropy] = frames(key.nextEntropyFrame())
        self.assertTrue(entropy.verify(prepared("PMS", SERIAL, sessionKey)))
        self.assertEqual(entropy.binaryPayload()[0], 0)

    def test_emptyNonce(self):
        """
        A nonce may be empty: the reply's subcode is then 0.
        """
        key = makeKey()
        key.reset()
        key.dataToSend()
        key.receiveData(b"K.")
        [reply] = frames(key.dataToSend())
        self.assertEqual(reply.binaryPayload()[0], 0)
        self.assertTrue(key.canSendEntropy)

    def test_sequenceExhausted(self):
        """
        After sequence 4095 the key asks for a new session key, under the
        current one, and sends nothing more until it has one; the next
        session starts again from sequence 0.
        """
        key = self.keyed(infoEvery=0)
        for expected in range(4095):
            [packet] = frames(key.nextEntropyFrame())
            self.assertEqual(packet.binaryPayload()[0], expected)
        last = frames(key.nextEntropyFrame())
        self.assertEqual([p.type for p in last], ["E", "k"])
        self.assertEqual(last[0].binaryPayload()[0], 4095)
        self.assertFalse(key.canSendEntropy)
        self.assertEqual(key.nextEntropyFrame(), b"")
        key.receiveData(b"KAAAA.")
        key.dataToSend()
        [packet] = frames(key.nextEntropyFrame())
        self.assertEqual(packet.binaryPayload()[0], 0)
        self.assertEqual(key.blocksProduced, 4097)

    def test_informationEvery(self):
        """
        With C{infoEvery}, information frames follow every so many entropy
        frames: temperature and voltage, FIPS counters, generator state.
        """
        key = self.keyed(infoEvery=3)
        self.assertEqual(len(frames(key.nextEntropyFrame())), 1)
        self.assertEqual(len(frames(key.nextEntropyFrame())), 1)
        packets = frames(key.nextEntropyFrame())
        self.assertEqual([p.type for p in packets], ["E", "I", "I", "I"])
        self.assertEqual(
            [p.text for p in packets[1:]],
            [
                "T03150 V03254",
                "F07342:00000:00000:00000:00000",
                "S08052:23751:23792:23584:07112:20876:08063:24150:0",
            ],
        )

    def test_unknownByte(self):
        """
        A byte the key does not understand gets a C{W>} frame naming it.
        """
        key = makeKey()
        key.receiveData(b"e\xff")
        self.assertEqual(
            [p.text for p in frames(key.dataToSend())],
            ["Unknown Input Character 0x65", "Unknown Input Character 0xff"],
        )

    def test_badCharacterInNonce(self):
        """
        A byte that is not base64 in the middle of a nonce abandons the
        command with a C{W>} frame, and the rest of it is then unknown
        input.
        """
        key = makeKey()
        key.reset()
        key.dataToSend()
        key.receiveData(b"KAA!AA.")
        self.assertEqual(
            [(p.type, p.text) for p in frames(key.dataToSend())],
            [
                ("W", "Unknown Input Character 0x21"),
                ("W", "Unknown Input Character 0x41"),
                ("W", "Unknown Input Character 0x41"),
                ("W", "Unknown Input Character 0x2e"),
            ],
        )
        self.assertFalse(key.canSendEntropy)

    def test_resetWhenIdle(self):
        """
        C{R} and C{r} reset the key when it is not reading a command.
        """
        key = self.keyed()
        for command in (b"R", b"r"):
            key.receiveData(command)
            self.assertEqual([p.type for p in frames(key.dataToSend())], ["S", "I", "k"])
            self.assertFalse(key.canSendEntropy)
        self.assertEqual(key.resets, 3)

    def test_resetCharacterInsideNonce(self):
        """
        Inside a nonce, C{R} is a base64 character, not a reset.
        """
        key = makeKey()
        key.reset()
        key.dataToSend()
        key.receiveData(b"KRRRR.")
        [reply] = frames(key.dataToSend())
        self.assertEqual(reply.type, "K")
        self.assertEqual(reply.binaryPayload()[0], 3)

    def test_controlCResetsAnyTime(self):
        """
        C{^C} resets the key even in the middle of a command, and the rest
        of that command is then taken as unknown input.
        """
        key = makeKey()
        key.reset()
        key.dataToSend()
        key.receiveData(b"KAA\x03")
        self.assertEqual([p.type for p in frames(key.dataToSend())], ["S", "I", "k"])
        key.receiveData(b"K.")
        self.assertEqual([p.type for p in frames(key.dataToSend())], ["K"])

    def test_resetDiscardsUnsentReplies(self):
        """
        A reset throws away replies the key has not sent yet.
        """
        key = makeKey()
        key.receiveData(b"?\x03")
        self.assertEqual([p.type for p in frames(key.dataToSend())], ["S", "I", "k"])

    def test_unseeded(self):
        """
        Without a seed, each plaintext block is 32 bytes from C{randomBytes}
        (which also gives the device entropy of the re-key).
        """
        block = b"\x01" * 32
        pump = HostPump(makeKey(seed=None, randomBytes=fixedRandom(bytes(32), block)))
        pump.connect()
        pump.run(2)
        self.assertEqual(pump.blocks, [block, bytes(32)])
        self.assertEqual(pump.key.blocksProduced, 2)


class LongTermRekeyTests(SynchronousTestCase):
    """
    Tests for the long-term re-key, against the test vectors.
    """

    vector = VECTORS["long_term_rekey"]

    def makeKey(self, masterKey="vector"):
        """
        @return: a key with the vector's serial and, by default, master key,
            whose device entropy is the vector's; it has been reset.
        """
        if masterKey == "vector":
            masterKey = bytes.fromhex(self.vector["master_key"])
        key = SimulatedKey(
            bytes.fromhex(self.vector["serial"]),
            LONG_TERM_KEY,
            masterKey=masterKey,
            randomBytes=fixedRandom(bytes.fromhex(self.vector["device_entropy"])),
        )
        key.reset()
        key.dataToSend()
        return key

    def test_vector(self):
        """
        The vector's C{M} and C{L} commands unlock the key (C{M>}) and give
        the vector's new long-term key, with an C{L!} reply carrying the
        nonce length and the device entropy, MAC'd under the session key in
        force.
        """
        key = self.makeKey()
        unlock, rekey = (text.encode("ascii") for text in self.vector["host_sends_text"])
        key.receiveData(unlock)
        [unlocked] = frames(key.dataToSend())
        self.assertEqual((unlocked.type, unlocked.binary), ("M", False))
        key.receiveData(rekey)
        [reply] = frames(key.dataToSend())
        self.assertEqual((reply.type, reply.binary), ("L", True))
        self.assertTrue(reply.verify(prepared("PMS", key.serial, bytes(32))))
        self.assertEqual(
            reply.binaryPayload(), (12, bytes.fromhex(self.vector["device_entropy"]))
        )
        self.assertEqual(key.longTermKey, bytes.fromhex(self.vector["new_long_term_key"]))

    def test_newKeyUsedForNextSession(self):
        """
        After a long-term re-key the next session key is derived from the
        new long-term key, so a host that knows only the new one can use
        the key.
        """
        key = self.makeKey()
        key.receiveData("".join(self.vector["host_sends_text"]).encode("ascii"))
        key.dataToSend()
        pump = HostPump(key, keyringFor(key.serial, key.longTermKey))
        pump.connect()
        pump.run(3)
        self.assertEqual(len(pump.blocks), 3)

    def test_sessionContinues(self):
        """
        A long-term re-key in the middle of a session does not end it.
        """
        key = self.makeKey()
        key.receiveData(b"K.")
        key.dataToSend()
        key.nextEntropyFrame()
        key.receiveData("".join(self.vector["host_sends_text"]).encode("ascii"))
        self.assertEqual([p.type for p in frames(key.dataToSend())], ["M", "L"])
        [packet] = frames(key.nextEntropyFrame())
        self.assertEqual(packet.binaryPayload()[0], 1)

    def assertRefused(self, key, data):
        """
        The key answers C{data} with C{l>} and keeps its long-term key.
        """
        key.receiveData(data)
        self.assertEqual(frames(key.dataToSend())[-1].type, "l")
        self.assertEqual(key.longTermKey, LONG_TERM_KEY)

    def test_wrongMAC(self):
        """
        A long-term re-key whose MAC does not match the nonce is refused.
        """
        unlock, rekey = self.vector["host_sends_text"]
        self.assertRefused(self.makeKey(), b"MAAAAAAAA" + rekey.encode("ascii"))

    def test_noMasterKey(self):
        """
        A key without a master key refuses every long-term re-key.
        """
        self.assertRefused(
            self.makeKey(masterKey=None), "".join(self.vector["host_sends_text"]).encode("ascii")
        )

    def test_withoutUnlock(self):
        """
        An C{L} command without an C{M} first is refused, and an unlock is
        good for one attempt only.
        """
        unlock, rekey = (text.encode("ascii") for text in self.vector["host_sends_text"])
        self.assertRefused(self.makeKey(), rekey)
        key = self.makeKey()
        self.assertRefused(key, unlock + b"L" + pemEncode(b"other") + b"." + rekey)


class HostSessionTests(SynchronousTestCase):
    """
    The simulated key and the host's L{KeySession}, joined in memory.
    """

    def test_acrossSessionRekey(self):
        """
        Across the re-key after sequence 4095, the host outputs exactly the
        seeded plaintext blocks, in order.
        """
        pump = HostPump(makeKey(infoEvery=1000))
        pump.connect()
        self.assertEqual(pump.host.state, KeyState.RUNNING)
        pump.run(4100)
        self.assertEqual(pump.blocks, [seededBlock(SEED, i) for i in range(4100)])
        self.assertEqual(pump.host.statistics.rekeys, 2)
        self.assertEqual(pump.host.statistics.macFailures, 0)
        self.assertEqual(pump.host.statistics.packetErrors, 0)
        self.assertEqual(pump.host.statistics.temperatureTenthsK, 3150)
        self.assertEqual(pump.key.blocksProduced, 4100)

    def test_badMAC(self):
        """
        A frame whose MAC is corrupted never reaches the host's output and
        is counted as a MAC failure; the frames after it flow on.
        """
        pump = HostPump(makeKey(faults=[Fault.parse("bad-mac:3")]))
        pump.connect()
        pump.run(6)
        self.assertEqual(pump.blocks, [seededBlock(SEED, i) for i in (0, 1, 3, 4, 5)])
        self.assertEqual(pump.host.statistics.macFailures, 1)
        self.assertEqual(pump.host.statistics.resets, 0)
        self.assertEqual(pump.host.state, KeyState.RUNNING)
        self.assertEqual(pump.key.faults, [])

    def test_garbage(self):
        """
        Junk before a frame costs the host framing errors but no entropy.
        """
        pump = HostPump(makeKey(faults=[Fault.parse("garbage:2")]))
        pump.connect()
        pump.run(4)
        self.assertEqual(pump.blocks, [seededBlock(SEED, i) for i in range(4)])
        self.assertGreater(pump.host.statistics.framingErrors, 0)
        self.assertEqual(pump.host.statistics.packetErrors, 0)

    def test_garbageShape(self):
        """
        The junk has stray C{*} characters and the start of a frame, and no
        line end that could finish one.
        """
        self.assertGreater(GARBAGE.count(b"*"), 2)
        self.assertIn(b"* E!", GARBAGE)
        self.assertNotIn(b"\r\n", GARBAGE)
        key = makeKey(faults=[Fault.parse("garbage:1")])
        key.reset()
        key.receiveData(b"K.")
        key.dataToSend()
        self.assertTrue(key.nextEntropyFrame().startswith(GARBAGE + b"* E!"))

    def test_reset(self):
        """
        A key that resets itself is re-keyed by the host, and the output
        carries on where it stopped.
        """
        pump = HostPump(makeKey(faults=[Fault.parse("reset:3")]))
        pump.connect()
        self.assertEqual(pump.run(6), 6)
        self.assertEqual(pump.blocks, [seededBlock(SEED, i) for i in range(5)])
        self.assertEqual(pump.host.statistics.rekeys, 2)
        self.assertEqual(pump.host.state, KeyState.RUNNING)
        self.assertEqual(pump.key.resets, 2)

    def test_resetAndOtherFaultOnSameFrame(self):
        """
        A reset takes the place of a frame without using up its number, so
        another fault for the same frame applies to the frame sent after
        the reset.
        """
        pump = HostPump(makeKey(faults=[Fault.parse("bad-mac:2"), Fault.parse("reset:2")]))
        pump.connect()
        pump.run(4)
        self.assertEqual(pump.blocks, [seededBlock(SEED, i) for i in (0, 2)])
        self.assertEqual(pump.host.statistics.macFailures, 1)

    def test_failMode(self):
        """
        A key that reports a fail mode is seen as self-stopped by the host
        and sends no more entropy, even after a reset.
        """
        pump = HostPump(makeKey(faults=[Fault.parse("fail-mode:7@3")]))
        pump.connect()
        self.assertEqual(pump.run(5), 3)
        self.assertEqual(pump.blocks, [seededBlock(SEED, i) for i in range(2)])
        self.assertEqual(pump.host.state, KeyState.SELF_STOPPED)
        self.assertEqual(pump.host.statistics.failMode, "7")
        self.assertFalse(pump.key.canSendEntropy)
        pump.key.receiveData(b"\x03")
        packets = frames(pump.key.dataToSend())
        self.assertEqual([p.type for p in packets], ["S", "I", "I"])
        self.assertTrue(packets[-1].text.endswith(":7"))
        pump.key.receiveData(b"K.")
        self.assertEqual(pump.key.nextEntropyFrame(), b"")

    def test_stuck(self):
        """
        From a stuck frame on, the plaintext is one constant block, still
        encrypted and authenticated so that the host outputs it.
        """
        pump = HostPump(makeKey(faults=[Fault.parse("stuck:3")]))
        pump.connect()
        pump.run(6)
        stuck = seededBlock(SEED, 2)
        self.assertEqual(
            pump.blocks, [seededBlock(SEED, 0), seededBlock(SEED, 1)] + [stuck] * 4
        )
        self.assertEqual(pump.host.statistics.macFailures, 0)
        self.assertEqual(pump.key.blocksProduced, 6)

    def test_hostResetOnConnect(self):
        """
        A host that resets the key as it connects, while the key announces
        itself unasked as a newly plugged-in key does, still agrees a
        session key with it.
        """
        key = makeKey()
        host = KeySession(keyringFor(), randomBytes=counterRandom(b"nonce"))
        host.connectionMade()
        key.reset()
        blocks = []
        for _ in range(5):
            fromKey, fromHost = key.dataToSend(), host.dataToSend()
            host.receiveData(fromKey)
            key.receiveData(fromHost)
        for _ in range(3):
            blocks += [e for e in host.receiveData(key.nextEntropyFrame())
                       if isinstance(e, EntropyReceived)]
        self.assertEqual(host.state, KeyState.RUNNING)
        self.assertEqual(len(blocks), 3)


class PausingTransport(StringTransport):
    """
    A transport that, like a real one, pauses its streaming producer when
    more than a given number of bytes is waiting to be written.
    """

    limit = None

    def pauseAbove(self, limit):
        """
        Pause the producer when more than C{limit} bytes are waiting.
        """
        self.limit = limit

    def write(self, data):
        StringTransport.write(self, data)
        if self.limit is not None and len(self.value()) > self.limit and self.producer:
            self.producer.pauseProducing()


class ProtocolTests(SynchronousTestCase):
    """
    Tests for L{SimulatedKeyProtocol}.
    """

    def connect(self, rate=8, **kwargs):
        """
        @return: a protocol on a L{StringTransport}, with its clock, and a
            host session that has keyed it.
        """
        clock = Clock()
        protocol = SimulatedKeyProtocol(makeKey(**kwargs), rate=rate, clock=clock)
        transport = PausingTransport()
        protocol.makeConnection(transport)
        host = KeySession(keyringFor(), sendResetOnStart=False)
        host.connectionMade()
        for _ in range(3):
            host.receiveData(transport.value())
            transport.clear()
            protocol.dataReceived(host.dataToSend())
        self.assertEqual(host.state, KeyState.RUNNING)
        return protocol, transport, clock, host

    def entropy(self, transport, host):
        """
        @return: the blocks the host gets from what the protocol wrote.
        """
        data = transport.value()
        transport.clear()
        return [e.data for e in host.receiveData(data) if isinstance(e, EntropyReceived)]

    def test_resetOnConnect(self):
        """
        A new connection finds the key just reset: it announces its serial
        number at once, and registers as a streaming producer.
        """
        protocol = SimulatedKeyProtocol(makeKey(), clock=Clock())
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertEqual([p.type for p in frames(transport.value())], ["S", "I", "k"])
        self.assertIs(transport.producer, protocol)
        self.assertTrue(transport.streaming)

    def test_rate(self):
        """
        Entropy frames go out at the given rate, by the injected clock.
        """
        protocol, transport, clock, host = self.connect(rate=8)
        self.assertEqual(self.entropy(transport, host), [])
        clock.advance(0.125)
        self.assertEqual(self.entropy(transport, host), [seededBlock(SEED, 0)])
        clock.advance(1)
        self.assertEqual(
            self.entropy(transport, host), [seededBlock(SEED, i) for i in range(1, 9)]
        )

    def test_lateClock(self):
        """
        When the clock jumps, the protocol catches up, but by no more than
        L{SimulatedKeyProtocol.maxBurst} frames at once.
        """
        protocol, transport, clock, host = self.connect(rate=1000)
        clock.advance(1)
        self.assertEqual(len(self.entropy(transport, host)), protocol.maxBurst)

    def test_pause(self):
        """
        While the transport has paused the protocol, it writes no entropy
        frames; it carries on when resumed.
        """
        protocol, transport, clock, host = self.connect(rate=8)
        protocol.pauseProducing()
        clock.advance(1)
        self.assertEqual(transport.value(), b"")
        protocol.resumeProducing()
        clock.advance(0.125)
        self.assertEqual(self.entropy(transport, host), [seededBlock(SEED, 0)])

    def test_repliesWhilePaused(self):
        """
        Replies to the host are written even while paused.
        """
        protocol, transport, clock, host = self.connect(rate=8)
        protocol.pauseProducing()
        protocol.dataReceived(b"K.")
        self.assertEqual([p.type for p in frames(transport.value())], ["K"])

    def test_asFastAsPossible(self):
        """
        At rate 0 the protocol writes entropy frames, in bursts of at most
        L{SimulatedKeyProtocol.maxBurst} between turns of the reactor, until
        the transport pauses it, and carries on when it is resumed.
        """
        protocol, transport, clock, host = self.connect(rate=0)
        [pump] = clock.getDelayedCalls()
        run = pump.func
        pump.cancel()
        run()
        self.assertEqual(len(self.entropy(transport, host)), protocol.maxBurst)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        transport.pauseAbove(64 * 100)
        clock.advance(0)
        self.assertTrue(protocol.paused)
        self.assertEqual(clock.getDelayedCalls(), [])
        blocks = self.entropy(transport, host)
        self.assertEqual(len(blocks), 101)
        protocol.resumeProducing()
        clock.advance(0)
        blocks = self.entropy(transport, host)
        self.assertEqual(blocks[-1], seededBlock(SEED, protocol.maxBurst + 2 * 101 - 1))

    def test_asFastAsPossibleToTheEnd(self):
        """
        At rate 0, a transport that never pauses gets every frame of the
        session, and then the protocol waits for a new session key.
        """
        protocol, transport, clock, host = self.connect(rate=0)
        clock.advance(0)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(protocol.key.entropyFrames, 4096)
        self.assertEqual(len(self.entropy(transport, host)), 4096)
        protocol.dataReceived(host.dataToSend())
        self.assertEqual(len(clock.getDelayedCalls()), 1)

    def test_asFastAsPossibleIdlesWithoutKey(self):
        """
        At rate 0 a key that cannot send entropy schedules nothing; a
        session re-key starts the flow.
        """
        protocol = SimulatedKeyProtocol(makeKey(), rate=0, clock=Clock())
        clock = protocol._clock
        protocol.makeConnection(StringTransport())
        self.assertEqual(clock.getDelayedCalls(), [])
        protocol.dataReceived(b"K.")
        self.assertEqual(len(clock.getDelayedCalls()), 1)

    def test_connectionLost(self):
        """
        When the connection is lost the protocol stops its timer.
        """
        protocol, transport, clock, host = self.connect(rate=8)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        protocol.connectionLost(Failure(Exception("gone")))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stopProducing(self):
        """
        After C{stopProducing} the protocol writes nothing more.
        """
        protocol, transport, clock, host = self.connect(rate=0)
        protocol.stopProducing()
        clock.advance(0)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_negativeRate(self):
        """
        A negative rate is refused.
        """
        self.assertRaises(ValueError, SimulatedKeyProtocol, makeKey(), rate=-1, clock=Clock())


class FactoryTests(SynchronousTestCase):
    """
    Tests for L{SimulatedKeyFactory}.
    """

    def test_oneHostAtATime(self):
        """
        While one host is connected, another connection is refused and
        logged; once the first has gone, a new one is accepted.
        """
        factory = SimulatedKeyFactory(makeKey(), rate=8, clock=Clock())
        first = factory.buildProtocol("first")
        first.makeConnection(StringTransport())
        with capturedLogs() as events:
            self.assertIsNone(factory.buildProtocol("second"))
        self.assertEqual(len(events), 1)
        self.assertIn("Refusing", events[0]["log_format"])
        self.assertEqual(events[0]["address"], "second")
        first.connectionLost(Failure(Exception("gone")))
        self.assertIsNotNone(factory.buildProtocol("third"))

    def test_newHostFindsResetKey(self):
        """
        Each host finds the key just reset, and the seeded plaintext carries
        on from host to host.
        """
        clock = Clock()
        factory = SimulatedKeyFactory(makeKey(), rate=8, clock=clock)
        received = []
        for _ in range(2):
            protocol = factory.buildProtocol(None)
            transport = StringTransport()
            protocol.makeConnection(transport)
            host = KeySession(keyringFor(), sendResetOnStart=False)
            host.connectionMade()
            for _ in range(3):
                data = transport.value()
                transport.clear()
                received += [e.data for e in host.receiveData(data) if isinstance(e, EntropyReceived)]
                protocol.dataReceived(host.dataToSend())
            clock.advance(0.25)
            received += [
                e.data for e in host.receiveData(transport.value()) if isinstance(e, EntropyReceived)
            ]
            protocol.connectionLost(Failure(Exception("gone")))
        self.assertEqual(received, [seededBlock(SEED, i) for i in range(4)])
        self.assertEqual(factory.key.resets, 2)
