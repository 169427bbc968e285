"""
Tests for L{ekey.core.frames}: framing, packets, subcodes and information.
"""

from twisted.trial import unittest

from ekey.core.frames import (
    LAST_SEQUENCE,
    PEM_ALPHABET,
    FrameReader,
    LocalProtocolError,
    RemoteProtocolError,
    binaryPayload,
    buildContent,
    buildFrame,
    decodeSubcode,
    encodeSubcode,
    parseFrame,
    parseInformation,
)
from ekey.core.keyring import parseSerial
from ekey.core.skein import prepared
from tests.vectors import VECTORS, deviceFrames


class SubcodeTests(unittest.TestCase):
    """
    12-bit subcodes travel as two PEM characters, low six bits first.
    """

    def test_vectors(self):
        """
        Every subcode vector encodes and decodes both ways.
        """
        for vector in VECTORS["subcode_12bit"]:
            self.assertEqual(encodeSubcode(vector["value"]), vector["pem"].encode())
            self.assertEqual(decodeSubcode(vector["pem"].encode()), vector["value"])

    def test_littleEndian(self):
        """
        Sequence 1 is C{BA} and 12 is C{MA}, not C{AB} and C{AM}.
        """
        self.assertEqual(encodeSubcode(1), b"BA")
        self.assertEqual(encodeSubcode(12), b"MA")

    def test_outOfRange(self):
        """
        A value over 12 bits is a local error; characters outside the PEM
        alphabet are a remote one.
        """
        self.assertRaises(LocalProtocolError, encodeSubcode, 4096)
        self.assertRaises(LocalProtocolError, encodeSubcode, -1)
        self.assertRaises(RemoteProtocolError, decodeSubcode, b"A*")

    def test_alphabet(self):
        """
        L{PEM_ALPHABET} is base64's standard alphabet in the order of the
        values, so that subcodes and base64 agree; L{LAST_SEQUENCE} is the
        largest value two of its characters carry.
        """
        import base64

        self.assertEqual(len(set(PEM_ALPHABET)), 64)
        values = int("".join(f"{value:06b}" for value in range(64)), 2).to_bytes(48, "big")
        self.assertEqual(base64.b64encode(values), PEM_ALPHABET)
        self.assertEqual(encodeSubcode(LAST_SEQUENCE), PEM_ALPHABET[-1:] * 2)
        self.assertRaises(LocalProtocolError, encodeSubcode, LAST_SEQUENCE + 1)


class ParseFrameTests(unittest.TestCase):
    """
    Splitting frames into packets and checking their MACs.
    """

    def test_documentedFrame(self):
        """
        The frame from the protocol description carries its serial number
        and verifies under the all-zero session key.
        """
        vector = VECTORS["documented_frame"]
        packet = parseFrame(vector["frame_text"].encode())
        self.assertEqual(packet.type, "S")
        self.assertTrue(packet.binary)
        version, serial = packet.binaryPayload()
        self.assertEqual(version, 0)
        self.assertEqual(serial, parseSerial(vector["serial_pem"]))
        key = bytes.fromhex(vector["session_key"])
        self.assertEqual(packet.verify(prepared("PMS", serial, key)), vector["mac_valid"])

    def test_roundTrip(self):
        """
        A frame built with a MAC parses back to the same content and
        verifies under the same key, and not under another.
        """
        serial = bytes(range(12))
        pms = prepared("PMS", serial, b"k" * 32)
        content = buildContent("E", binaryPayload(4095, b"\x01" * 32), binary=True)
        frame = buildFrame(content, pms)
        self.assertEqual(len(frame), 64)
        packet = parseFrame(frame)
        self.assertEqual(packet.content, content)
        self.assertEqual(packet.binaryPayload(), (4095, b"\x01" * 32))
        self.assertTrue(packet.verify(pms))
        self.assertFalse(packet.verify(prepared("PMS", serial, b"j" * 32)))

    def test_malformed(self):
        """
        Frames with a bad class, bad MAC characters or bad base64 payload
        are remote errors.
        """
        good = deviceFrames()[0]
        self.assertRaises(RemoteProtocolError, parseFrame, good[:2] + b"S?" + good[4:])
        self.assertRaises(RemoteProtocolError, parseFrame, good[:54] + b"!!!!!!!!" + good[62:])
        self.assertRaises(RemoteProtocolError, parseFrame, good[:63])
        broken = parseFrame(good[:6] + b"*" + good[7:])
        self.assertRaises(RemoteProtocolError, broken.binaryPayload)

    def test_textPayload(self):
        """
        A text packet's text has its padding removed.
        """
        packet = parseFrame(deviceFrames()[2])
        self.assertEqual(packet.type, "k")
        self.assertEqual(packet.text, "Unable to send entropy. Please re-key session.")

    def test_buildLimits(self):
        """
        Payloads too long for a frame are local errors.
        """
        self.assertRaises(LocalProtocolError, buildContent, "I", b"x" * 51, False)
        self.assertRaises(LocalProtocolError, binaryPayload, 0, b"x" * 33)


class FrameReaderTests(unittest.TestCase):
    """
    The frame reader cuts a stream into frames and resynchronises as ekeyd
    does.
    """

    def test_splitAnywhere(self):
        """
        Frames arriving one byte at a time come out whole and in order.
        """
        frames = deviceFrames()
        stream = b"".join(frames)
        reader = FrameReader()
        out = []
        for i in range(len(stream)):
            out.extend(reader.receiveData(stream[i : i + 1]))
        self.assertEqual(out, frames)
        self.assertEqual(reader.framesOK, len(frames))
        self.assertEqual(reader.framingErrors, 0)
        self.assertEqual(reader.bytesRead, len(stream))

    def test_garbageBetweenFrames(self):
        """
        Garbage, stray C{*} characters and a truncated frame between good
        frames are counted as framing errors and never come out; the good
        frames all do.
        """
        frames = deviceFrames()
        stream = (
            b"noise" + frames[0] + b"** junk *" + frames[1][:40] + frames[2] + b"\r\n" + frames[3]
        )
        reader = FrameReader()
        out = reader.receiveData(stream)
        self.assertEqual(out, [frames[0], frames[2], frames[3]])
        self.assertGreater(reader.framingErrors, 0)
        for frame in out:
            self.assertEqual(len(frame), 64)

    def test_boundedBuffer(self):
        """
        A stream with no frame in it never makes the reader hold more than
        one frame's worth of bytes.
        """
        reader = FrameReader()
        for _ in range(100):
            self.assertEqual(reader.receiveData(b"* " + b"x" * 1000), [])
            self.assertLessEqual(len(reader._buffer), 64)


class InformationTests(unittest.TestCase):
    """
    Information frames become typed values.
    """

    def test_temperatureAndVoltage(self):
        """
        C{T03150 V03254} is 3150 tenths of a kelvin and 3254 mV, kept in
        the key's own units (L{ekey.core.status.celsius} converts).
        """
        info = parseInformation("T03150 V03254")
        self.assertEqual(info.temperatureTenthsK, 3150)
        self.assertEqual(info.voltageMillivolts, 3254)
        self.assertIsNone(info.failMode)
        self.assertFalse(info.failed)

    def test_fipsAndState(self):
        """
        The FIPS counters and the nine state fields are parsed, the last
        being the fail mode with its description.
        """
        info = parseInformation("F07342:00000:00000:00000:00000")
        self.assertEqual(info.fips.blocks, 7342)
        self.assertEqual(info.fips.failures, 0)
        info = parseInformation("S08052:23751:23792:23584:07112:20876:08063:24150:0")
        self.assertEqual(info.state, (8052, 23751, 23792, 23584, 7112, 20876, 8063, 24150))
        self.assertEqual(info.failMode, "0")
        self.assertEqual(info.failDescription, "No failure")
        failed = parseInformation("S08052:23751:23792:23584:07112:20876:08063:24150:9")
        self.assertTrue(failed.failed)
        self.assertEqual(failed.failDescription,
                         "FIPS 140-2 tests exceeded threshold for failed blocks")

    def test_malformed(self):
        """
        Malformed recognised fields are remote errors; unknown fields are
        kept aside.
        """
        self.assertRaises(RemoteProtocolError, parseInformation, "Txyz")
        self.assertRaises(RemoteProtocolError, parseInformation, "S1:2:3")
        self.assertEqual(parseInformation("Q12 T1").unknown, ("Q12",))
