"""
Tests for L{ekey.core.keyring}: ekeyd's keyring file.
"""

import os
import stat

from twisted.trial import unittest

from ekey.core.keyring import (
    Keyring,
    KeyringError,
    formatSerial,
    parseSecret,
    parseSerial,
)
from tests.vectors import LONG_TERM_KEY, SERIAL, VECTORS


class KeyringFileTests(unittest.TestCase):
    """
    Reading and writing the keyring file.
    """

    def write(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_vectorLine(self):
        """
        The vectors' keyring line gives the session's serial and long-term
        key, and is written back identically.
        """
        path = self.write("# Keyring Data file\n\n" + VECTORS["keyring_line_text"] + "\n")
        ring = Keyring.load(path)
        self.assertEqual(ring.get(SERIAL), LONG_TERM_KEY)
        self.assertEqual(len(ring), 1)
        self.assertIn(SERIAL, ring)
        self.assertEqual(
            ring.serialise(), "# Keyring Data file\n\n" + VECTORS["keyring_line_text"] + "\n"
        )

    def test_saveIsPrivateAndAtomic(self):
        """
        Saving writes mode 0600 through a renamed temporary file, keeps
        comments, and leaves no temporary file behind.
        """
        path = self.write("# mine\n")
        os.chmod(path, 0o644)
        ring = Keyring.load(path)
        ring.set(SERIAL, LONG_TERM_KEY)
        inode = os.stat(path).st_ino
        ring.save()
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertNotEqual(os.stat(path).st_ino, inode)
        self.assertEqual(
            sorted(os.listdir(os.path.dirname(path))), [os.path.basename(path)]
        )
        again = Keyring.load(path)
        self.assertEqual(again.get(SERIAL), LONG_TERM_KEY)
        self.assertTrue(again.serialise().startswith("# mine\n"))

    def test_replaceKey(self):
        """
        Setting a known serial replaces its key on the same line.
        """
        ring = Keyring()
        ring.set(SERIAL, LONG_TERM_KEY)
        ring.set(SERIAL, b"n" * 32)
        self.assertEqual(ring.serialise().count("\n"), 1)
        self.assertEqual(ring.get(SERIAL), b"n" * 32)

    def test_malformedLine(self):
        """
        A malformed line is an error naming the file and the line number.
        """
        path = self.write("# ok\n" + VECTORS["keyring_line_text"] + "\nnot a key line at all\n")
        error = self.assertRaises(KeyringError, Keyring.load, path)
        self.assertIn(path, str(error))
        self.assertIn("line 3", str(error))
        path = self.write("AAAA BBBB\n")
        self.assertIn("line 1", str(self.assertRaises(KeyringError, Keyring.load, path)))

    def test_duplicateSerial(self):
        """
        The same serial twice is an error naming the second line.
        """
        line = VECTORS["keyring_line_text"] + "\n"
        error = self.assertRaises(KeyringError, Keyring.load, self.write(line + line))
        self.assertIn("line 2", str(error))

    def test_unreadable(self):
        """
        A missing file, or a directory, gives an error naming the path and
        the cause, not a traceback.
        """
        missing = self.mktemp()
        self.assertIn("No such file", str(self.assertRaises(KeyringError, Keyring.load, missing)))
        directory = self.mktemp()
        os.mkdir(directory)
        self.assertIn(directory, str(self.assertRaises(KeyringError, Keyring.load, directory)))

    def test_saveFails(self):
        """
        A keyring that cannot be written raises an error naming the path.
        """
        ring = Keyring(os.path.join(self.mktemp(), "missing-dir", "keyring"))
        ring.set(SERIAL, LONG_TERM_KEY)
        self.assertRaises(KeyringError, ring.save)


class ParsingTests(unittest.TestCase):
    """
    Secrets and serials as people type them.
    """

    def test_secretFormats(self):
        """
        A secret may be 64 hex digits or 44 base64 characters, with spaces.
        """
        self.assertEqual(parseSecret(LONG_TERM_KEY.hex()), LONG_TERM_KEY)
        pem = formatSerial(LONG_TERM_KEY)
        self.assertEqual(parseSecret(pem), LONG_TERM_KEY)
        self.assertEqual(parseSecret(" ".join([pem[:10], pem[10:]])), LONG_TERM_KEY)
        self.assertRaises(ValueError, parseSecret, "abcd")
        self.assertRaises(ValueError, parseSecret, "zz" * 32)

    def test_serialFormats(self):
        """
        A serial is 16 base64 characters (or 24 hex digits).
        """
        self.assertEqual(parseSerial(VECTORS["session"]["serial_pem"]), SERIAL)
        self.assertEqual(parseSerial(SERIAL.hex()), SERIAL)
        self.assertRaises(ValueError, parseSerial, "short")
