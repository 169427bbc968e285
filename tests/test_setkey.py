"""
Tests for C{ekey-setkey} (L{ekey.cli.setkey}) and the pieces of
L{ekey.services.rekey} it uses, run in-process against a simulated key
(L{tests.keybench}): every failure is one line and exit status 1, and
leaves the key's long-term key and the keyring as they were.
"""

import os
import subprocess
import sys

from twisted.trial import unittest

from ekey.core.keyring import Keyring, KeyringError, formatSerial
from ekey.core.rekey import formatMasterKey
from ekey.services.rekey import (
    RekeyError,
    findKeyPath,
    prepareKeyring,
    readMasterKeyFile,
    saveTerminal,
    storeLongTermKey,
)
from tests.keybench import (
    CommandMixin,
    LONG_TERM_KEY,
    MASTER_KEY,
    OTHER_MASTER_KEY,
    SERIAL,
    SERIAL_TEXT,
    HangUpKey,
    SilentKey,
    fileMode,
    makeSocketFile,
    shortTempDir,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SetKeyTests(CommandMixin, unittest.TestCase):
    """
    C{ekey-setkey} against a simulated key.
    """

    def argv(self, *extra):
        return ["-f", self.bench.keyringPath, *extra, self.bench.keyPath]

    def test_prompt(self):
        """
        With no master key file, the master key is asked for (as printed on
        the card); the key's new long-term key goes to the keyring, which
        keeps its other lines, and nothing else is printed than one line.
        """
        before = self.bench.writeKeyring()
        keyring = Keyring.load(self.bench.keyringPath)
        keyring.set(b"OTHER-KEY-01", bytes(32))
        keyring.save()
        status = self.runCommand(self.argv(), typed=formatMasterKey(MASTER_KEY))
        self.assertEqual(status, 0, self.bench.err.getvalue())
        self.assertEqual(self.prompted, [True])
        self.assertNotEqual(self.bench.key.longTermKey, LONG_TERM_KEY)
        stored = Keyring.load(self.bench.keyringPath)
        self.assertEqual(stored.get(SERIAL), self.bench.key.longTermKey)
        self.assertEqual(stored.get(b"OTHER-KEY-01"), bytes(32))
        self.assertNotEqual(self.bench.keyringText(), before)
        self.assertEqual(self.bench.out.getvalue(),
                         f"Entropy Key {SERIAL_TEXT}: new long-term key stored in "
                         f"{self.bench.keyringPath}\n")
        self.assertEqual(self.bench.err.getvalue(), "")
        self.assertEqual(fileMode(self.bench.keyringPath), 0o600)

    def test_masterKeyFile(self):
        """
        C{--master-key-file} is read instead of asking, and a new keyring
        file is created.
        """
        path = self.bench.writeMasterKeyFile()
        status = self.runCommand(self.argv("--master-key-file", path, "-s", SERIAL_TEXT))
        self.assertEqual(status, 0, self.bench.err.getvalue())
        self.assertEqual(self.prompted, [])
        self.assertEqual(Keyring.load(self.bench.keyringPath).get(SERIAL),
                         self.bench.key.longTermKey)

    def test_noStore(self):
        """
        C{-n} prints the keyring line instead of storing it, as ekeyd's
        C{ekey-setkey -n} does.
        """
        before = self.bench.writeKeyring()
        status = self.runCommand(self.argv("-n"), typed=formatMasterKey(MASTER_KEY))
        self.assertEqual(status, 0, self.bench.err.getvalue())
        self.assertEqual(self.bench.out.getvalue(),
                         f"{SERIAL_TEXT} {formatSerial(self.bench.key.longTermKey)}\n")
        self.assertEqual(self.bench.keyringText(), before)

    def test_masterKeyOnCommandLine(self):
        """
        A master key on the command line (ekeyd's C{-m}) is refused in one
        line naming the prompt and the file, with exit status 2, and the
        key is not opened.
        """
        for option in ("-m", "--master-key"):
            self.bench.err.truncate(0)
            self.bench.err.seek(0)
            status = self.runCommand(self.argv(option, formatMasterKey(MASTER_KEY)))
            self.assertOneLineFailure((status, 2), "/proc", "--master-key-file", "prompt")
        self.assertEqual(self.bench.keyConnections, 0)

    def test_wrongMasterKey(self):
        """
        A master key that is not the key's: exit 1, one line, the key and
        the keyring unchanged.
        """
        before = self.bench.writeKeyring()
        status = self.runCommand(self.argv(), typed=formatMasterKey(OTHER_MASTER_KEY))
        self.assertOneLineFailure(status, "refused the master key", "unchanged")
        self.assertUntouched(before)

    def test_checkDigit(self):
        """
        A typing error in the master key is caught by its check digit
        before the key is opened.
        """
        before = self.bench.writeKeyring()
        card = formatMasterKey(MASTER_KEY).replace(" ", "")
        typo = ("B" if card[0] != "B" else "C") + card[1:]
        status = self.runCommand(self.argv(), typed=typo)
        self.assertOneLineFailure(status, "check digit")
        self.assertEqual(self.bench.keyConnections, 0)
        self.assertUntouched(before)

    def test_wrongSerial(self):
        """
        A key whose serial is not the one given: exit 1, one line naming
        both, the key and the keyring unchanged.
        """
        before = self.bench.writeKeyring()
        other = formatSerial(b"ANOTHER-KEY!")
        status = self.runCommand(self.argv("-s", other), typed=formatMasterKey(MASTER_KEY))
        self.assertOneLineFailure(status, SERIAL_TEXT, other)
        self.assertUntouched(before)

    def test_timeout(self):
        """
        A key that does not answer: exit 1 after C{--timeout} seconds, one
        line saying what it was waiting for.
        """
        self.bench._keyProtocols = [SilentKey] * 100
        before = self.bench.writeKeyring()
        status = self.runCommand(self.argv("--timeout", "3"), typed=formatMasterKey(MASTER_KEY))
        self.assertOneLineFailure(status, "did not answer within 3 seconds", "serial number")
        self.assertUntouched(before)
        self.assertGreaterEqual(self.bench.reactor.seconds(), 3)

    def test_busyKeyRetried(self):
        """
        A key that hangs up before saying its serial (a daemon has not let
        go of it yet) is opened again, and the re-key then succeeds.
        """
        self.bench._keyProtocols = [HangUpKey, HangUpKey]
        status = self.runCommand(self.argv(), typed=formatMasterKey(MASTER_KEY))
        self.assertEqual(status, 0, self.bench.err.getvalue())
        self.assertEqual(self.bench.keyConnections, 3)
        self.assertEqual(Keyring.load(self.bench.keyringPath).get(SERIAL),
                         self.bench.key.longTermKey)

    def test_busyKeyGivesUp(self):
        """
        A key that always hangs up: exit 1 at the time-out, one line asking
        whether another program holds it.
        """
        self.bench._keyProtocols = [HangUpKey] * 1000
        status = self.runCommand(self.argv("--timeout", "2"), typed=formatMasterKey(MASTER_KEY))
        self.assertOneLineFailure(status, "another program")
        self.assertEqual(self.bench.key.longTermKey, LONG_TERM_KEY)

    def test_unwritableKeyring(self):
        """
        A keyring that cannot be written: exit 1, one line naming it,
        before the master key is asked for or the key opened.
        """
        blocker = os.path.join(self.bench.directory, "not-a-directory")
        open(blocker, "w").close()
        keyring = os.path.join(blocker, "keyring")
        status = self.runCommand(["-f", keyring, self.bench.keyPath])
        self.assertOneLineFailure(status, keyring, "nothing was changed")
        self.assertEqual(self.prompted, [])
        self.assertEqual(self.bench.keyConnections, 0)
        self.assertEqual(self.bench.key.longTermKey, LONG_TERM_KEY)

    def test_malformedKeyring(self):
        """
        A keyring that cannot be read: exit 1, one line, key untouched.
        """
        with open(self.bench.keyringPath, "w") as f:
            f.write("this is not a keyring line\n")
        status = self.runCommand(self.argv())
        self.assertOneLineFailure(status, self.bench.keyringPath, "line 1")
        self.assertEqual(self.bench.keyConnections, 0)

    def test_deviceMissing(self):
        """
        A key path that does not exist: exit 1, one line naming it.
        """
        missing = os.path.join(self.bench.directory, "no-such-key")
        status = self.runCommand(["-f", self.bench.keyringPath, missing])
        self.assertOneLineFailure(status, missing)
        self.assertEqual(self.bench.keyringText(), None)

    def test_groupReadableMasterKeyFile(self):
        """
        A master key file that group or others may read is refused in one
        line with the fix, and the key is not opened.
        """
        path = self.bench.writeMasterKeyFile(mode=0o640)
        status = self.runCommand(self.argv("--master-key-file", path))
        self.assertOneLineFailure(status, path, "chmod 600")
        self.assertEqual(self.bench.keyConnections, 0)

    def test_usage(self):
        """
        Bad usage is one line and exit status 2, without the usage text.
        """
        status = self.runCommand(["--no-such-option", self.bench.keyPath])
        self.assertOneLineFailure((status, 2), "--no-such-option", "--help")
        self.bench.err.truncate(0)
        self.bench.err.seek(0)
        status = self.runCommand(["--timeout", "0", self.bench.keyPath])
        self.assertOneLineFailure((status, 2), "--timeout")


class NoTerminalTests(unittest.TestCase):
    """
    C{ekey-setkey} as a process without a terminal.
    """

    def test_noTerminal(self):
        """
        Without a terminal to ask on and without C{--master-key-file}, the
        command fails in one line naming the file option instead of reading
        a master key from its standard input with echo.
        """
        directory = shortTempDir(self)
        key = makeSocketFile(os.path.join(directory, "key.sock"))
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        result = subprocess.run(
            [sys.executable, "-c", "from ekey.cli.setkey import main; main()",
             "-f", os.path.join(directory, "keyring"), key],
            input=formatMasterKey(MASTER_KEY) + "\n", capture_output=True, text=True,
            env=env, start_new_session=True, timeout=60)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(result.stderr.splitlines(),
                         ["ekey-setkey: no terminal to ask for the master key on: "
                          "give --master-key-file FILE (chmod 600)"])


class MasterKeyFileTests(unittest.TestCase):
    """
    L{readMasterKeyFile}: owner-only files, as printed on the card.
    """

    def write(self, text, mode=0o600):
        path = os.path.join(shortTempDir(self), "master")
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def test_card(self):
        """
        The first line, as printed on the card, with spaces, is the key.
        """
        self.assertEqual(readMasterKeyFile(self.write(formatMasterKey(MASTER_KEY) + "\n")),
                         MASTER_KEY)

    def test_modes(self):
        """
        Any access for group or others is refused, naming the mode and the
        fix; the owner's own bits do not matter.
        """
        for mode in (0o640, 0o604, 0o620, 0o602, 0o660):
            path = self.write(formatMasterKey(MASTER_KEY), mode)
            error = self.assertRaises(ValueError, readMasterKeyFile, path)
            self.assertIn(f"{mode:04o}", str(error))
            self.assertIn(f"chmod 600 {path}", str(error))
        self.assertEqual(readMasterKeyFile(self.write(formatMasterKey(MASTER_KEY), 0o400)),
                         MASTER_KEY)

    def test_badContents(self):
        """
        An empty file, a missing file and a malformed key are one-line
        errors that never repeat the file's contents.
        """
        for text in ("", "\n\n", "not a master key\n"):
            error = self.assertRaises(ValueError, readMasterKeyFile, self.write(text))
            self.assertNotIn("not a master key", str(error))
        self.assertRaises(ValueError, readMasterKeyFile, "/nonexistent/master")


class KeyringTests(unittest.TestCase):
    """
    L{prepareKeyring} and L{storeLongTermKey}.
    """

    def test_prepareChecksWritable(self):
        """
        A keyring whose directory cannot take a new file is refused before
        anything else happens; an existing keyring is read; a missing one
        starts empty.
        """
        directory = shortTempDir(self)
        blocker = os.path.join(directory, "file")
        open(blocker, "w").close()
        self.assertRaises(KeyringError, prepareKeyring, os.path.join(blocker, "keyring"))
        self.assertRaises(KeyringError, prepareKeyring, os.path.join(directory, "no", "k"))
        path = os.path.join(directory, "keyring")
        self.assertEqual(len(prepareKeyring(path)), 0)
        self.assertFalse(os.path.exists(path))
        keyring = Keyring(path)
        keyring.set(SERIAL, LONG_TERM_KEY)
        keyring.save()
        self.assertEqual(prepareKeyring(path).get(SERIAL), LONG_TERM_KEY)
        self.assertEqual(sorted(os.listdir(directory)), ["file", "keyring"])

    def test_storeFailureKeepsTheKey(self):
        """
        If the keyring cannot be written after all, the one-line error holds
        the keyring line, so that the new key is not lost.
        """
        directory = shortTempDir(self)
        keyring = Keyring(os.path.join(directory, "gone", "keyring"))
        error = self.assertRaises(RekeyError, storeLongTermKey, keyring, SERIAL, MASTER_KEY)
        self.assertEqual(len(str(error).splitlines()), 1)
        self.assertIn(f"{SERIAL_TEXT} {formatSerial(MASTER_KEY)}", str(error))


class FindKeyPathTests(unittest.TestCase):
    """
    L{findKeyPath} looks where udev and ekeyd put keys.
    """

    def test_slashes(self):
        """
        A serial's C{/} is looked for as C{.} and as C{_}, in each directory
        in order.
        """
        present = {"/b/AB_C", "/a/AB.C"}
        self.assertEqual(findKeyPath("AB/C", ["/a", "/b"], present.__contains__), "/a/AB.C")
        self.assertEqual(findKeyPath("AB/C", ["/b", "/a"], present.__contains__), "/b/AB_C")
        self.assertIsNone(findKeyPath("XY", ["/a", "/b"], present.__contains__))


class TerminalTests(unittest.TestCase):
    """
    L{saveTerminal} puts back the terminal settings pyserial changes, which
    ekeyd's tools depend on.
    """

    def test_restores(self):
        """
        Settings changed after saving (C{VMIN} 0, as pyserial leaves them)
        are put back as they were.
        """
        import termios

        master, slave = os.openpty()
        self.addCleanup(os.close, master)
        self.addCleanup(os.close, slave)
        path = os.ttyname(slave)
        before = termios.tcgetattr(slave)
        before[6][termios.VMIN] = 1
        termios.tcsetattr(slave, termios.TCSANOW, before)
        before = termios.tcgetattr(slave)
        restore = saveTerminal(path)
        changed = termios.tcgetattr(slave)
        changed[6][termios.VMIN] = 0
        changed[4] = changed[5] = termios.B9600
        termios.tcsetattr(slave, termios.TCSANOW, changed)
        self.assertNotEqual(termios.tcgetattr(slave), before)
        restore()
        self.assertEqual(termios.tcgetattr(slave), before)

    def test_notATerminal(self):
        """
        For a socket, or a path that does not exist, there is nothing to
        put back.
        """
        directory = shortTempDir(self)
        saveTerminal(makeSocketFile(os.path.join(directory, "key.sock")))()
        saveTerminal(os.path.join(directory, "gone"))()


class PromptTests(unittest.TestCase):
    """
    C{ekey-setkey} asking for the master key on a real terminal.
    """

    def test_noEcho(self):
        """
        The master key is asked for on the terminal and what is typed is
        not echoed; here it has a typing error, which the check digit
        catches, in one line that does not repeat it.
        """
        import pty
        import select
        import time

        directory = shortTempDir(self)
        key = makeSocketFile(os.path.join(directory, "key.sock"))
        card = formatMasterKey(MASTER_KEY).replace(" ", "")
        typo = ("B" if card[0] != "B" else "C") + card[1:]
        pid, fd = pty.fork()
        if pid == 0:  # the child: run the command on the pty, whatever happens
            try:
                os.environ["PYTHONPATH"] = REPO_ROOT
                os.execv(sys.executable, [
                    sys.executable, "-c", "from ekey.cli.setkey import main; main()",
                    "-f", os.path.join(directory, "keyring"), key])
            finally:
                os._exit(127)
        self.addCleanup(os.close, fd)
        output = b""
        typed = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child has gone
                    break
                if not chunk:
                    break
                output += chunk
            if not typed and b"Master key" in output:
                os.write(fd, typo.encode() + b"\n")
                typed = True
        _, status = os.waitpid(pid, 0)
        text = output.decode("utf-8", "replace")
        self.assertTrue(typed, text)
        self.assertEqual(os.waitstatus_to_exitcode(status), 1, text)
        self.assertNotIn(typo, text)
        self.assertIn("check digit", text)
        self.assertNotIn("Traceback", text)
