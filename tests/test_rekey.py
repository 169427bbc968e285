"""
Tests for L{ekey.services.rekey}: long-term re-keying with the master key.
"""

from twisted.trial import unittest

from ekey.core.frames import binaryPayload, buildContent, buildFrame
from ekey.services.rekey import (
    LongTermRekey,
    RekeyState,
    crc8,
    formatMasterKey,
    parseMasterKey,
)
from ekey.core.skein import prepared
from tests.vectors import SERIAL, VECTORS, deviceFrames

VECTOR = VECTORS["long_term_rekey"]
MASTER = bytes.fromhex(VECTOR["master_key"])
NONCE = bytes.fromhex(VECTOR["host_nonce"])


def zeroKeyFrame(packetType, payload, binary):
    if binary:
        payload = binaryPayload(*payload)
    content = buildContent(packetType, payload, binary)
    return buildFrame(content, prepared("PMS", SERIAL, bytes(32)))


class ExchangeTests(unittest.TestCase):
    """
    The M/L exchange, sans-I/O, against the vectors.
    """

    def exchange(self, **kwargs):
        rekey = LongTermRekey(MASTER, randomBytes=lambda n: NONCE, **kwargs)
        rekey.start()
        self.assertEqual(rekey.dataToSend(), b"\x03")
        rekey.receiveData(deviceFrames()[0])
        return rekey

    def test_vector(self):
        """
        The host sends exactly the vectors' M and L commands and derives the
        vectors' new long-term key from the key's L reply.
        """
        rekey = self.exchange()
        self.assertEqual(rekey.dataToSend().decode(), VECTOR["host_sends_text"][0])
        self.assertEqual(rekey.state, RekeyState.WAITING_UNLOCK)
        rekey.receiveData(zeroKeyFrame("M", b"Long-term re-key unlocked", False))
        self.assertEqual(rekey.dataToSend().decode(), VECTOR["host_sends_text"][1])
        entropy = bytes.fromhex(VECTOR["device_entropy"])
        rekey.receiveData(zeroKeyFrame("L", (12, entropy), True))
        self.assertEqual(rekey.state, RekeyState.DONE)
        self.assertEqual(rekey.newLongTermKey.hex(), VECTOR["new_long_term_key"])
        self.assertEqual(rekey.serial, SERIAL)

    def test_refused(self):
        """
        An C{l} frame (master key refused) fails the exchange with a reason.
        """
        rekey = self.exchange()
        rekey.receiveData(zeroKeyFrame("M", b"ok", False))
        rekey.receiveData(zeroKeyFrame("l", b"Refused", False))
        self.assertEqual(rekey.state, RekeyState.FAILED)
        self.assertIn("master key", rekey.error)
        self.assertIsNone(rekey.newLongTermKey)

    def test_forgedReply(self):
        """
        A reply whose MAC fails is ignored, and a wrong nonce length fails.
        """
        rekey = self.exchange()
        rekey.receiveData(zeroKeyFrame("M", b"ok", False))
        forged = buildFrame(buildContent("L", binaryPayload(12, b"x" * 32), True),
                            prepared("PMS", SERIAL, b"f" * 32))
        rekey.receiveData(forged)
        self.assertEqual(rekey.state, RekeyState.WAITING_REPLY)
        rekey.receiveData(zeroKeyFrame("L", (11, b"x" * 32), True))
        self.assertEqual(rekey.state, RekeyState.FAILED)

    def test_wrongSerial(self):
        """
        A key whose serial is not the one asked for is not re-keyed.
        """
        rekey = self.exchange(expectedSerial=bytes(12))
        self.assertEqual(rekey.state, RekeyState.FAILED)
        self.assertEqual(rekey.dataToSend(), b"")


class MasterKeyTests(unittest.TestCase):
    """
    Master keys as printed on the key's card.
    """

    def test_cardFormat(self):
        """
        A card's key (32 bytes and a CRC-8 check byte in base64, in groups
        with spaces) parses to the key; hex works too.
        """
        card = formatMasterKey(MASTER)
        self.assertEqual(len(card.replace(" ", "")), 44)
        self.assertEqual(parseMasterKey(card), MASTER)
        self.assertEqual(parseMasterKey(MASTER.hex()), MASTER)

    def test_checkDigit(self):
        """
        A typing error in a card's key is caught by the check byte.
        """
        card = formatMasterKey(MASTER).replace(" ", "")
        typo = ("B" if card[0] != "B" else "C") + card[1:]
        error = self.assertRaises(ValueError, parseMasterKey, typo)
        self.assertIn("check digit", str(error))
        self.assertRaises(ValueError, parseMasterKey, "not a key")

    def test_crc8(self):
        """
        The check is CCITT CRC-8 (polynomial 0x31, initial 0xFF).
        """
        self.assertEqual(crc8(b""), 0xFF)
        self.assertEqual(crc8(b"123456789"), 0xF7)
