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
        with open(path, "w", encoding="utf-8") as f:
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

    def test_saveIsAtomic(self):
        """
        Saving writes through a renamed temporary file, keeps comments and
        the file's mode, and leaves no temporary file behind.
        """
        path = self.write("# mine\n")
        os.chmod(path, 0o640)
        ring = Keyring.load(path)
        ring.set(SERIAL, LONG_TERM_KEY)
        inode = os.stat(path).st_ino
        ring.save()
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o640)
        self.assertNotEqual(os.stat(path).st_ino, inode)
        self.assertEqual(
            sorted(os.listdir(os.path.dirname(path))), [os.path.basename(path)]
        )
        again = Keyring.load(path)
        self.assertEqual(again.get(SERIAL), LONG_TERM_KEY)
        self.assertTrue(again.serialise().startswith("# mine\n"))

    def test_newFileIsPrivate(self):
        """
        A keyring saved where there was none is mode 0600, whatever the
        umask.
        """
        path = self.mktemp()
        ring = Keyring(path)
        ring.set(SERIAL, LONG_TERM_KEY)
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        ring.save()
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_saveKeepsOwnerAndGroup(self):
        """
        A C{root:ekey 0640} keyring (here owned by uid and gid 65534) stays
        so after a save, as a daemon running as the group's user needs it.
        """
        if os.getuid() != 0:
            raise unittest.SkipTest("changing a file's owner needs root")
        path = self.write(VECTORS["keyring_line_text"] + "\n")
        os.chown(path, 65534, 65534)
        os.chmod(path, 0o640)
        ring = Keyring(path)
        ring.set(SERIAL, b"n" * 32)
        ring.save()
        st = os.stat(path)
        self.assertEqual((st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)), (65534, 65534, 0o640))
        os.chown(path, 0, 0)
        self.assertEqual(Keyring.load(path).get(SERIAL), b"n" * 32)

    def test_saveThroughLink(self):
        """
        A keyring reached through a symbolic link is written where the link
        points; the link stays a link.
        """
        target = self.write("# mine\n")
        os.chmod(target, 0o600)
        link = self.mktemp()
        os.symlink(os.path.abspath(target), link)
        ring = Keyring.load(link)
        ring.set(SERIAL, LONG_TERM_KEY)
        ring.save()
        self.assertTrue(os.path.islink(link))
        self.assertEqual(Keyring.load(target).get(SERIAL), LONG_TERM_KEY)

    def test_writableByOthersRefused(self):
        """
        A keyring that group or others may write is refused in one line
        naming the file and the fix; group- and world-readable are fine.
        """
        for mode in (0o620, 0o602, 0o666):
            path = self.write(VECTORS["keyring_line_text"] + "\n")
            os.chmod(path, mode)
            message = str(self.assertRaises(KeyringError, Keyring.load, path))
            self.assertIn(f"keyring {path} is writable by group or others", message)
            self.assertIn(f"chmod go-w {path}", message)
            self.assertNotIn("\n", message)
        for mode in (0o600, 0o640, 0o644, 0o400):
            path = self.write(VECTORS["keyring_line_text"] + "\n")
            os.chmod(path, mode)
            self.assertEqual(Keyring.load(path).get(SERIAL), LONG_TERM_KEY)

    def test_foreignOwnerRefused(self):
        """
        A keyring owned by a user other than root or the one reading it
        (uid 65534 here) is refused in one line naming the fix.
        """
        if os.getuid() != 0:
            raise unittest.SkipTest("changing a file's owner needs root")
        path = self.write(VECTORS["keyring_line_text"] + "\n")
        os.chmod(path, 0o600)
        os.chown(path, 65534, 0)
        message = str(self.assertRaises(KeyringError, Keyring.load, path))
        self.assertIn(f"keyring {path} is owned by", message)
        self.assertIn("uid 65534", message)
        self.assertIn(f"chown root {path}", message)

    def test_ownedByReader(self):
        """
        A keyring owned by the user who reads it (not root) is accepted, as
        for a daemon that runs as C{ekey} with its own keyring.
        """
        if os.getuid() != 0:
            raise unittest.SkipTest("acting as another user needs root")
        path = self.write(VECTORS["keyring_line_text"] + "\n")
        os.chmod(path, 0o600)
        os.chown(path, 65534, 65534)
        os.chmod(os.path.dirname(os.path.abspath(path)), 0o755)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read)
                os.setgid(65534)
                os.setuid(65534)
                Keyring.load(path)
                os.write(write, b"ok")
            except BaseException as e:
                os.write(write, str(e).encode()[:500])
            finally:
                os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        with os.fdopen(read, "rb") as f:
            self.assertEqual(f.read(), b"ok")

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

    def test_errorsQuoteNoField(self):
        """
        No error quotes what a line holds: with the columns swapped, the
        long-term key does not appear in the error, nor does a serial, nor
        any part of a line that is not ASCII.
        """
        serial, key = VECTORS["keyring_line_text"].split()
        for text, words in [
                (f"{key} {serial}\n", "first field is not a serial number"),
                (f"{serial} {serial}\n", "second field is not a long-term key"),
                (f"{key}\n", "found 1 field(s)"),
                (f"{serial} {key} {key}\n", "found 3 field(s)"),
                (f"{serial} {key}\n{serial} {key}\n", "line 2: the serial number of line 1 again"),
                ("# \u00e9t\u00e9\n", "line 1: not ASCII text")]:
            path = self.write(text)
            message = str(self.assertRaises(KeyringError, Keyring.load, path))
            self.assertIn(words, message)
            self.assertTrue(message.startswith(f"keyring {path}, line "), message)
            for secret in (key, key[:16], key[-16:], serial, "\u00e9"):
                self.assertNotIn(secret, message)

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
