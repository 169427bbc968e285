"""
Tests for long-term re-keying with the master key: the exchange
(L{ekey.core.rekey}) and C{ekey-rekey} (L{ekey.cli.rekey}) against a
simulated key and a stand-in daemon's control channel.
"""

import os

from twisted.trial import unittest

from ekey.cli import rekey as rekeyCommand
from ekey.core.keyring import Keyring, formatSerial

from ekey.core.frames import binaryPayload, buildContent, buildFrame
from ekey.core.rekey import (
    LongTermRekey,
    RekeyState,
    crc8,
    formatMasterKey,
    parseMasterKey,
)
from ekey.core.skein import prepared
from tests.keybench import (
    LONG_TERM_KEY,
    MASTER_KEY,
    OTHER_MASTER_KEY,
    SERIAL as SERIAL_BYTES,
    SERIAL_TEXT,
    CommandMixin,
    SilentKey,
)
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
        self.assertFalse(rekey.mayHaveChanged)

    def test_mayHaveChanged(self):
        """
        Giving up after C{L} was sent (no answer) says that the key may
        have changed its long-term key; giving up before does not.
        """
        rekey = self.exchange()
        rekey.fail("time-out")
        self.assertFalse(rekey.mayHaveChanged)
        rekey = self.exchange()
        rekey.receiveData(zeroKeyFrame("M", b"ok", False))
        self.assertEqual(rekey.state, RekeyState.WAITING_REPLY)
        rekey.fail("time-out")
        self.assertTrue(rekey.mayHaveChanged)

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


class DerivationTests(unittest.TestCase):
    """
    The MAC and key derivation the host and the simulated key share.
    """

    def test_vector(self):
        """
        L{deriveLongTermKey} gives the vectors' new long-term key, and
        L{unlockMAC} the MAC in the vectors' C{M} command.
        """
        from ekey.core.frames import pemEncode
        from ekey.core.rekey import deriveLongTermKey, unlockMAC

        entropy = bytes.fromhex(VECTOR["device_entropy"])
        self.assertEqual(deriveLongTermKey(SERIAL, MASTER, entropy, NONCE).hex(),
                         VECTOR["new_long_term_key"])
        self.assertEqual(b"M" + pemEncode(unlockMAC(SERIAL, MASTER, NONCE)),
                         VECTOR["host_sends_text"][0].encode())


class RekeyCommandTests(CommandMixin, unittest.TestCase):
    """
    C{ekey-rekey} against a simulated key, with and without a daemon.
    """

    main = staticmethod(rekeyCommand.main)

    def argv(self, *extra):
        return ["-d", self.bench.keyPath, "-f", self.bench.keyringPath,
                "--control", f"unix:{self.bench.controlPath}", *extra]

    def runRekey(self, *extra, typed=None, masterKey=MASTER_KEY, **kwargs):
        if typed is None and masterKey is not None:
            typed = formatMasterKey(masterKey)
        return self.runCommand(self.argv(*extra), typed=typed, environ={}, **kwargs)

    def test_withDaemon(self):
        """
        A daemon serving the key lets go of it (C{RemoveKey}) before the key
        is opened, and after the new key is stored and proved, reloads its
        keyring and takes the key back at its path (C{AddKey}).
        """
        daemon = self.bench.addDaemon()
        self.bench.writeKeyring()
        status = self.runRekey()
        self.assertEqual(status, 0, self.bench.err.getvalue())
        self.assertEqual(daemon.calls, [("remove", self.bench.keyPath), ("keyring", None),
                                        ("add", self.bench.keyPath)])
        self.assertEqual(self.bench.events, ["remove", "key", "keyring", "add"])
        self.assertEqual(Keyring.load(self.bench.keyringPath).get(SERIAL_BYTES),
                         self.bench.key.longTermKey)
        self.assertNotEqual(self.bench.key.longTermKey, LONG_TERM_KEY)
        out = self.bench.out.getvalue()
        self.assertIn("let go of key 1", out)
        self.assertIn("Verified", out)
        self.assertIn("serves the key again", out)
        self.assertEqual(self.bench.err.getvalue(), "")

    def test_noDaemon(self):
        """
        When no daemon answers on the control endpoint, the key is re-keyed
        directly and the command says so.
        """
        self.bench.writeKeyring()
        status = self.runRekey()
        self.assertEqual(status, 0, self.bench.err.getvalue())
        self.assertIn(f"No daemon answered on unix:{self.bench.controlPath}",
                      self.bench.out.getvalue())
        self.assertIn("directly", self.bench.out.getvalue())
        self.assertEqual(Keyring.load(self.bench.keyringPath).get(SERIAL_BYTES),
                         self.bench.key.longTermKey)

    def test_daemonDoesNotServeIt(self):
        """
        A daemon that does not serve the key is not given it afterwards.
        """
        daemon = self.bench.addDaemon(serves=False)
        status = self.runRekey("-s", SERIAL_TEXT)
        self.assertEqual(status, 0, self.bench.err.getvalue())
        self.assertEqual(daemon.calls, [("remove", self.bench.keyPath),
                                        ("remove", SERIAL_TEXT)])
        self.assertIn("does not serve", self.bench.out.getvalue())

    def test_daemonRefuses(self):
        """
        A daemon that will not let go of the key: exit 1, one line, and the
        key is never opened.
        """
        self.bench.addDaemon(refuseRemove=True)
        before = self.bench.writeKeyring()
        status = self.runRekey()
        self.assertOneLineFailure(status, "refused to let go", "stop the daemon")
        self.assertEqual(self.bench.keyConnections, 0)
        self.assertUntouched(before)

    def test_wrongMasterKeyGivesTheKeyBack(self):
        """
        A wrong master key: exit 1 with one line, the key and the keyring
        unchanged, and the daemon given its key back.
        """
        daemon = self.bench.addDaemon()
        before = self.bench.writeKeyring()
        status = self.runRekey(masterKey=OTHER_MASTER_KEY)
        self.assertOneLineFailure(status, "refused the master key")
        self.assertUntouched(before)
        self.assertEqual([call[0] for call in daemon.calls], ["remove", "keyring", "add"])

    def test_wrongSerial(self):
        """
        A key with another serial: exit 1, one line, nothing changed.
        """
        before = self.bench.writeKeyring()
        other = formatSerial(b"ANOTHER-KEY!")
        status = self.runRekey("--serial", other)
        self.assertOneLineFailure(status, other)
        self.assertUntouched(before)

    def test_timeout(self):
        """
        A key that does not answer: exit 1, one line, after the time-out.
        """
        self.bench._keyProtocols = [SilentKey] * 100
        before = self.bench.writeKeyring()
        status = self.runRekey("--timeout", "2")
        self.assertOneLineFailure(status, "did not answer within 2 seconds")
        self.assertUntouched(before)

    def test_unwritableKeyring(self):
        """
        A keyring that cannot be written: exit 1, one line, before the
        daemon is asked, the master key typed or the key opened.
        """
        daemon = self.bench.addDaemon()
        blocker = os.path.join(self.bench.directory, "file")
        open(blocker, "w").close()
        argv = ["-d", self.bench.keyPath, "-f", os.path.join(blocker, "keyring"),
                "--control", f"unix:{self.bench.controlPath}"]
        status = self.runCommand(argv, environ={})
        self.assertOneLineFailure(status, "cannot write keyring")
        self.assertEqual(self.prompted, [])
        self.assertEqual(daemon.calls, [])
        self.assertEqual(self.bench.keyConnections, 0)
        self.assertEqual(self.bench.key.longTermKey, LONG_TERM_KEY)

    def test_deviceMissing(self):
        """
        A device that does not exist, given or looked for by serial: exit
        1, one line.
        """
        missing = os.path.join(self.bench.directory, "gone")
        status = self.runCommand(["-d", missing, "-f", self.bench.keyringPath], environ={})
        self.assertOneLineFailure(status, missing)
        self.bench.err.truncate(0)
        self.bench.err.seek(0)
        status = self.runCommand(["-f", self.bench.keyringPath, "AAAAAAAAAAAAAAAA"], environ={})
        self.assertOneLineFailure(status, "AAAAAAAAAAAAAAAA", "/dev/entropykey", "--device")

    def test_masterKeyOnCommandLine(self):
        """
        C{--master-key}, and ekeyd's C{ekey-rekey SERIAL MASTERKEY}, are
        refused in one line with exit status 2; nothing is opened.
        """
        daemon = self.bench.addDaemon()
        for argv in (self.argv("--master-key", formatMasterKey(MASTER_KEY)),
                     ["-d", self.bench.keyPath, SERIAL_TEXT, "AAAA", "BBBB"]):
            self.bench.err.truncate(0)
            self.bench.err.seek(0)
            status = self.runCommand(argv, environ={})
            self.assertOneLineFailure((status, 2), "/proc", "--master-key-file")
        self.assertEqual(daemon.calls, [])
        self.assertEqual(self.bench.keyConnections, 0)

    def test_verifyFails(self):
        """
        A key that takes the new long-term key but then sends no entropy:
        the failed proof is one line and exit 1, and the new key is stored
        all the same (the key has it).
        """
        self.bench.writeKeyring()
        real = self.bench.key.nextEntropyFrame
        self.bench.key.nextEntropyFrame = lambda: b""
        self.addCleanup(setattr, self.bench.key, "nextEntropyFrame", real)
        status = self.runRekey("--timeout", "2", "--control", "none")
        self.assertOneLineFailure(status, "could not be verified")
        self.assertEqual(Keyring.load(self.bench.keyringPath).get(SERIAL_BYTES),
                         self.bench.key.longTermKey)

    def test_controlPathTooLong(self):
        """
        A control socket path too long for a Unix socket counts as no
        daemon answering, in words, not as a traceback from the reactor.
        """
        self.bench.writeKeyring()
        status = self.runCommand(
            ["-d", self.bench.keyPath, "-f", self.bench.keyringPath,
             "--control", "unix:/" + "x" * 200], typed=formatMasterKey(MASTER_KEY), environ={})
        self.assertEqual(status, 0, self.bench.err.getvalue())
        self.assertIn("at most 107 bytes", self.bench.out.getvalue())
        self.assertEqual(self.bench.reactor.unixClients[0][0], self.bench.keyPath)
