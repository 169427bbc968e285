"""
Tests for L{ekey.core.skein}: Skein-256 v1.1 and ekeyd's prepared states.
"""

from twisted.trial import unittest

from ekey.core.skein import PERSONALISATIONS, prepared, skein256
from tests.vectors import VECTORS


class Skein256Tests(unittest.TestCase):
    """
    Plain Skein-256-256 v1.1.
    """

    def test_vectors(self):
        """
        Every plain Skein vector hashes to its digest.
        """
        for vector in VECTORS["skein256_v1_1"]:
            self.assertEqual(
                skein256(bytes.fromhex(vector["msg"])).hex(), vector["digest"], vector["msg"]
            )

    def test_version_1_1_not_1_3(self):
        """
        The single byte C{ff} hashes to the v1.1 answer, which differs from
        what every v1.3 library gives.
        """
        self.assertEqual(
            skein256(b"\xff").hex(),
            "a47be71a185ba0af820b3ce845a3d35a80ec64f96a0d6a36e3f5363624d8a091",
        )

    def test_multiBlockUpdates(self):
        """
        Feeding a message in pieces of any size gives the same digest as in
        one piece.
        """
        message = bytes(range(200))
        whole = skein256(message)
        for size in (1, 7, 31, 32, 33, 64, 65):
            state = prepared("PMS", bytes(12), bytes(32))
            reference = state.copy().update(message).final()
            for offset in range(0, len(message), size):
                state.update(message[offset : offset + size])
            self.assertEqual(state.final(), reference, size)
        self.assertEqual(len(whole), 32)


class PreparedTests(unittest.TestCase):
    """
    States prepared as ekeyd's C{PrepareSkein} does.
    """

    def test_vectors(self):
        """
        Every prepared-state vector gives its output, including those that
        copy the state between two messages.
        """
        for vector in VECTORS["prepared_skein"]:
            state = prepared(
                vector["personalisation"],
                bytes.fromhex(vector["serial"]),
                bytes.fromhex(vector["secret"]),
            )
            state.update(bytes.fromhex(vector["msg1"]))
            state = state.copy()
            state.update(bytes.fromhex(vector["msg2"]))
            if vector["finalise"] == "final":
                out = state.final()
            else:
                out = state.finalPad()
            self.assertEqual(out.hex(), vector["output"], vector)

    def test_copiesAreIndependent(self):
        """
        Using a copy leaves the original state as it was.
        """
        state = prepared("EES", bytes(12), bytes(32))
        first = state.copy().update(b"AA").final()
        state.copy().update(b"something else").final()
        self.assertEqual(state.copy().update(b"AA").final(), first)

    def test_personalisationTruncated(self):
        """
        Only the first 64 bytes of the personalisation string count: two
        strings that differ after byte 64 prepare the same state.
        """
        self.assertEqual(len(PERSONALISATIONS["LKMS"]), 96)
        name = "LKMS"
        original = PERSONALISATIONS[name]
        try:
            PERSONALISATIONS[name] = original[:64] + b"x" * 32
            changed = prepared(name, bytes(12), bytes(32)).final()
        finally:
            PERSONALISATIONS[name] = original
        self.assertEqual(changed, prepared(name, bytes(12), bytes(32)).final())

    def test_badLengths(self):
        """
        A serial that is not 12 bytes or a secret that is not 32 is a local
        error.
        """
        self.assertRaises(ValueError, prepared, "PMS", bytes(11), bytes(32))
        self.assertRaises(ValueError, prepared, "PMS", bytes(12), bytes(31))
        self.assertRaises(KeyError, prepared, "NOPE", bytes(12), bytes(32))
