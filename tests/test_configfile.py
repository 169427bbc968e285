"""
Tests for L{ekey.core.configfile} and C{ekey-convert-ekeyd-conf}: ekey's
TOML configuration and ekeyd's ekeyd.conf, read into options.
"""

from __future__ import annotations

import io
import os
import tempfile

from twisted.trial.unittest import TestCase

from ekey.cli.convert import main as convert
from ekey.core.configfile import (
    ConfigError,
    Directive,
    ekeydConfOptions,
    loadTOML,
    parseEkeydConf,
    readEkeydConf,
    toTOML,
)

#: The directives of the ekeyd.conf that Debian's ekeyd 1.1.5 installs (its
#: comments shortened), as a file a migrating host has.
STOCK = """-- -*- Lua -*-
-- Sample configuration file for ekeyd
-- TCPControlSocket "1234"
UnixControlSocket "/var/run/ekeyd.sock"
Keyring "/etc/entropykey/keyring"
-- Daemonise(false)
SetOutputToKernel(7)
-- EGDTCPSocket(8888)
-- EGDUnixSocket("/etc/entropy", "0660", "root", "entropyusers")
-- SetOutputToFile "/tmp/entropy"
AddEntropyKeys "/dev/entropykey"
AddEntropyKeys "/var/run/entropykeys"
-- AddEntropyKey "/dev/cuaU0"
"""

KNOWN = {"keyring": str, "kernel": bool, "shannons-per-byte": int, "pool-size": int,
         "output-file": str, "ekeyd-control": str, "client-rate": float}
REPEATABLE = ("device", "device-dir", "port", "upstream")


def options(text: str):
    return ekeydConfOptions(parseEkeydConf(text))


class EkeydConfTests(TestCase):
    """
    Reading ekeyd.conf without running it.
    """

    def test_stock(self):
        """
        The stock file becomes the same set-up: its keyring, kernel output
        at 7 shannons per byte, both key directories, and ekeyd's control
        protocol on its socket.
        """
        self.assertEqual(options(STOCK), {
            "ekeyd-control": "unix:/var/run/ekeyd.sock",
            "keyring": "/etc/entropykey/keyring",
            "kernel": True,
            "shannons-per-byte": 7,
            "device-dir": ["/dev/entropykey", "/var/run/entropykeys"],
        })

    def test_callForms(self):
        """
        Both Lua call forms, and numbers, strings with escapes, booleans,
        block comments and semicolons, are read.
        """
        directives = parseEkeydConf(
            'A "x"\nB(1, "y\\"z") ; C(false)\n--[[ D("no")\n]] E(0x10, 1.5)\nF()\n')
        self.assertEqual(directives, [
            Directive("A", ("x",), 1), Directive("B", (1, 'y"z'), 2),
            Directive("C", (False,), 2), Directive("E", (16, 1.5), 4),
            Directive("F", (), 5)])

    def test_egdSockets(self):
        """
        EGD sockets become --port endpoints: TCP on 127.0.0.1 unless an
        address is given, Unix at mode 0600 unless a mode is given.
        """
        self.assertEqual(options('EGDTCPSocket(8888)\nEGDTCPSocket(8889, "::1")\n'
                                 'EGDUnixSocket "/run/egd"\n'
                                 'EGDUnixSocket("/run/e:gd", "0660", "", "")\n')["port"],
                         ["tcp:8888:interface=127.0.0.1", "tcp:8889:interface=\\:\\:1",
                          "unix:/run/egd:mode=600", "unix:/run/e\\:gd:mode=660"])

    def test_devicesAndFile(self):
        """
        Keys, key directories and the output file carry over.
        """
        self.assertEqual(options('AddEntropyKey "/dev/ttyACM0"\nAddEntropyKey "/dev/ttyACM1"\n'
                                 'SetOutputToFile "/tmp/e"\nSetFoldedOutput(false)\n'),
                         {"device": ["/dev/ttyACM0", "/dev/ttyACM1"], "output-file": "/tmp/e"})

    def test_refusedByName(self):
        """
        What ekey does not do is refused in one line that names the
        directive, its line and what to use instead.
        """
        cases = {
            'TCPControlSocket "1234"': "UnixControlSocket",
            "Daemonise(false)": "twistd --nodaemon",
            "SetFoldedOutput(true)": "no folded output",
            'EGDUnixSocket("/e", "0660", "root", "ent")': "twistd --gid",
            'RemoveEntropyKey "/dev/x"': "leave the key out",
            'Shutdown()': "ekeyctl shutdown",
            'Frobnicate "x"': "not an ekeyd.conf directive",
        }
        for text, hint in cases.items():
            with self.assertRaises(ConfigError) as raised:
                options("-- first\n" + text)
            message = str(raised.exception)
            self.assertIn("ekeyd.conf:2: " + text.split("(")[0].split(" ")[0], message)
            self.assertIn(hint, message)
            self.assertNotIn("\n", message)

    def test_badArguments(self):
        """
        Arguments of the wrong number or kind are refused, naming the line.
        """
        for text in ("Keyring()", 'Keyring("a", "b")', "Keyring(3)", 'EGDTCPSocket "http"',
                     "EGDTCPSocket(70000)", 'EGDUnixSocket("/e", "rw")', "SetOutputToKernel(9)",
                     'SetOutputToKernel "7"', 'Keyring "a"\nKeyring "b"'):
            self.assertRaises(ConfigError, options, text)

    def test_notJustDirectives(self):
        """
        Lua that does more than call directives with literals is refused at
        its line rather than half-read.
        """
        for text in ('local d = "/dev/x"', 'AddEntropyKey(d)', 'AddEntropyKey("a" .. "b")',
                     'if true then Keyring "x" end', 'Keyring "x', 'Keyring("x"',
                     "Keyring", "x = 1"):
            with self.assertRaises(ConfigError) as raised:
                parseEkeydConf("-- ok\n" + text, "f")
            self.assertTrue(str(raised.exception).startswith("f:2: "), str(raised.exception))

    def test_unreadable(self):
        """
        A missing file is one line naming it.
        """
        with self.assertRaises(ConfigError) as raised:
            readEkeydConf("/nonexistent/ekeyd.conf")
        self.assertEqual(str(raised.exception),
                         "cannot read /nonexistent/ekeyd.conf: No such file or directory")


class TOMLTests(TestCase):
    """
    ekey's own configuration file.
    """

    def write(self, text: str) -> str:
        fd, path = tempfile.mkstemp(suffix=".toml")
        os.write(fd, text.encode())
        os.close(fd)
        self.addCleanup(os.unlink, path)
        return path

    def test_values(self):
        """
        Keys are long option names; repeatable options take a string or an
        array; whole numbers are accepted where a number is wanted.
        """
        path = self.write('keyring = "/k"\nkernel = true\nport = ["tcp:1", "tcp:2"]\n'
                          'device = "/dev/x"\nclient-rate = 100\n')
        self.assertEqual(loadTOML(path, KNOWN, REPEATABLE), {
            "keyring": "/k", "kernel": True, "port": ["tcp:1", "tcp:2"],
            "device": ["/dev/x"], "client-rate": 100.0})

    def test_refusals(self):
        """
        Unknown keys, values of the wrong type and files that are not TOML
        are one line each, naming the file.
        """
        for text, words in (('kernal = true\n', "unknown setting 'kernal'"),
                            ('pool-size = "big"\n', "pool-size must be a whole number"),
                            ('kernel = 1\n', "kernel must be true or false"),
                            ('port = [1]\n', "port must be a string or an array of strings"),
                            ('keyring = \n', "is not valid TOML")):
            path = self.write(text)
            with self.assertRaises(ConfigError) as raised:
                loadTOML(path, KNOWN, REPEATABLE)
            self.assertIn(words, str(raised.exception))
            self.assertIn(path, str(raised.exception))
        self.assertRaises(ConfigError, loadTOML, "/nonexistent.toml", KNOWN, REPEATABLE)

    def test_roundTrip(self):
        """
        What L{toTOML} writes reads back as the same settings, awkward
        strings included.
        """
        settings = {"keyring": 'a "quoted"\\path\n\x01', "kernel": False,
                    "shannons-per-byte": 7, "port": ["unix:/x\\:y:mode=600", "tcp:1"]}
        path = self.write(toTOML(settings, ["a comment", ""]))
        self.assertEqual(loadTOML(path, KNOWN, REPEATABLE), settings)


class ConvertCommandTests(TestCase):
    """
    C{ekey-convert-ekeyd-conf}.
    """

    def run_(self, argv):
        out, err = io.StringIO(), io.StringIO()
        status = convert(argv, out, err)
        return status, out.getvalue(), err.getvalue()

    def test_converts(self):
        """
        It prints TOML that ekey's loader reads back as the file's options.
        """
        fd, conf = tempfile.mkstemp()
        os.write(fd, STOCK.encode())
        os.close(fd)
        self.addCleanup(os.unlink, conf)
        status, out, err = self.run_([conf])
        self.assertEqual((status, err), (0, ""))
        fd, toml = tempfile.mkstemp(suffix=".toml")
        os.write(fd, out.encode())
        os.close(fd)
        self.addCleanup(os.unlink, toml)
        self.assertEqual(loadTOML(toml, KNOWN, REPEATABLE), options(STOCK))

    def test_errorsAreOneLine(self):
        """
        A refused directive or a missing file is one line and exit 1; bad
        usage exit 2.
        """
        status, out, err = self.run_(["/nonexistent"])
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err.count("\n"), 1)
        self.assertEqual(self.run_(["a", "b"])[0], 2)


class InstalledEkeydConfTests(TestCase):
    """
    The ekeyd.conf that Debian's ekeyd package installs.
    """

    def test_installedFileReads(self):
        """
        The installed stock file, comments and all, reads as L{STOCK} does.
        """
        from tests.interop.requirements import findPeer

        findPeer("ekeyd")
        self.assertEqual(readEkeydConf("/etc/entropykey/ekeyd.conf"), options(STOCK))
