"""
Tests for ekeyd's control protocol: the sans-I/O parser, replies, statistics
and session of L{ekey.core.ekeydcontrol}, and the line protocol with its
owner-only check and the adapter over today's daemon in
L{ekey.services.ekeydcontrol}, all in memory.

The wire format these tests expect is what the real ekeyd 1.1.5 sent and
received on its control socket (captured with C{socat -v} between it and
the real C{ekeydctl} and munin plugin).
"""

import os
import struct

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.testing import StringTransport
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial import unittest

from ekey.core import ekeydcontrol as core
from ekey.core.ekeydcontrol import (BANNER, EKEYD_STATISTICS, MAX_LINE_LENGTH, CommandRefused,
                                    EkeydControlSession, ProtocolError, Request,
                                    ekeydStatistics, findKey, formatReply, formatValue,
                                    parseRequest)
from ekey.core.session import KeyState
from ekey.core.status import KeyReadings, KeyStatus
from ekey.services.control import ControlAccess
from ekey.services.ekeydcontrol import EkeydControlFactory, targetFromDaemon
from tests.memory import boundSocket, connectKey, startMemoryDaemon
from tests.vectors import SESSION, deviceFrames

SERIAL = "E52jaQ2jxAYlra1N"


def readings(**changes) -> KeyReadings:
    """
    @return: the readings ekeyd showed for a simulated key after 7 s,
        with C{changes}.
    """
    values = dict(
        bytesRead=57600, bytesWritten=18, framesOK=900, framingErrors=0, bytesDiscarded=0,
        packetsOK=900, packetErrors=0, macFailures=0, resets=1, noncesSent=1, rekeys=1,
        entropyBytes=28576, temperatureTenthsK=3150, voltageMillivolts=3254, fipsBlocks=120,
        fipsFailures=0, firstFipsBlocks=100, failMode="0",
        shannonsPerByte=(("rawL", 2.94), ("rawR", 2.95), ("rawX", 2.92),
                         ("debiasedL", 2.93), ("debiasedR", 2.99)))
    values.update(changes)
    return KeyReadings(**values)


def status(path="/dev/entropykey/" + SERIAL, state=KeyState.RUNNING, serial=SERIAL,
           connectedAt=1000.0, reading=None, **changes) -> KeyStatus:
    """
    @return: a key's status: running, connected at 1000 s, with
        L{readings} unless C{reading} is given.
    """
    values = dict(path=path, state=state, reason="keyed", serial=serial,
                  connectedAt=connectedAt,
                  readings=reading if reading is not None else readings(),
                  healthBlocks=5, healthFailures=0, healthFailure=None)
    values.update(changes)
    return KeyStatus(**values)


class _ReadingsWithFrameByteLast:
    """
    Readings as the model will carry them once it has C{frameByteLast}.
    """

    def __init__(self, base, frameByteLast):
        self.__dict__.update(vars(base))
        self.frameByteLast = frameByteLast


class ParseTests(unittest.TestCase):
    """
    L{parseRequest} accepts the lines ekeydctl and the munin plugin send,
    and refuses anything else with a L{ProtocolError}.
    """

    def test_ekeydctlLines(self):
        """
        Every line ekeydctl 1.1.5 sends (its strings quoted with Lua's
        C{%q}) parses to its verb and arguments.
        """
        cases = {
            b"ListEntropyKeys": Request("ListEntropyKeys"),
            b'StatEntropyKey("1")': Request("StatEntropyKey", ("1",)),
            b'AddEntropyKey("/dev/entropykey/X",nil)': Request("AddEntropyKey",
                                                               ("/dev/entropykey/X",)),
            b'AddEntropyKeys("/dev/entropykey")': Request("AddEntropyKeys",
                                                          ("/dev/entropykey",)),
            b'RemoveEntropyKey("E52jaQ2jxAYlra1N")': Request("RemoveEntropyKey", (SERIAL,)),
            b'Keyring("/etc/entropykey/keyring")': Request("Keyring",
                                                           ("/etc/entropykey/keyring",)),
            b"Shutdown": Request("Shutdown"),
        }
        for line, expected in cases.items():
            self.assertEqual(parseRequest(line), expected, line)

    def test_muninLine(self):
        """
        The munin plugin's form, C{Name("arg")}, parses too.
        """
        self.assertEqual(parseRequest(b'StatEntropyKey("E52jaQ2jxAYlra1N")'),
                         Request("StatEntropyKey", (SERIAL,)))

    def test_otherLuaCallForms(self):
        """
        The other ways Lua calls a function (empty parentheses, a string
        without parentheses, single quotes, a number, spaces, a trailing
        semicolon, a CR before the newline) mean the same.
        """
        self.assertEqual(parseRequest(b"ListEntropyKeys()"), Request("ListEntropyKeys"))
        self.assertEqual(parseRequest(b'  StatEntropyKey "1" ;'), Request("StatEntropyKey", ("1",)))
        self.assertEqual(parseRequest(b"StatEntropyKey('1')"), Request("StatEntropyKey", ("1",)))
        self.assertEqual(parseRequest(b"StatEntropyKey( 01 )"), Request("StatEntropyKey", ("1",)))
        self.assertEqual(parseRequest(b"Shutdown\r"), Request("Shutdown"))

    def test_luaEscapes(self):
        """
        String escapes are decoded as Lua does (what C{%q} produces for
        backslashes, quotes, CR and NUL, and decimal codes).
        """
        request = parseRequest(rb'AddEntropyKey("a\\b\"c\r\000\065\tq\z")')
        self.assertEqual(request.arguments, ('a\\b"c\r\x00A\tqz',))

    def test_nonASCIIPath(self):
        """
        A path that is not UTF-8 survives as the file system's bytes would.
        """
        request = parseRequest(b'AddEntropyKey("/dev/\xff")')
        self.assertEqual(request.arguments[0].encode("utf-8", "surrogateescape"), b"/dev/\xff")

    def test_blankLine(self):
        """
        A blank line is no command (ekeyd answers it with C{OK}).
        """
        self.assertIsNone(parseRequest(b""))
        self.assertIsNone(parseRequest(b" \t"))

    def test_refusals(self):
        """
        Lines that are not a call of a known command with the right
        arguments are refused, each with a message on one line that does
        not repeat the input.
        """
        lines = [
            b"x=1", b"print('hi')", b"Bogus", b"Bogus()", b'StatEntropyKey("1', b"StatEntropyKey(",
            b"StatEntropyKey()", b"StatEntropyKey(nil)", b'StatEntropyKey("1","2")',
            b"ListEntropyKeys;ListEntropyKeys", b"ListEntropyKeys() os.exit()",
            b'StatEntropyKey(os.getenv("HOME"))', b"StatEntropyKey(true)", b'Shutdown("now")',
            b'Keyring("a" .. "b")', b"StatEntropyKey(\"\\999\")", b"(ListEntropyKeys)",
            b"StatEntropyKey -1", b'SetOutputToFile("/tmp/x")', b"Daemonise(false)",
            b"StatEntropyKey 1", b"\x00",
        ]
        for line in lines:
            with self.assertRaises(ProtocolError, msg=line) as caught:
                parseRequest(line)
            message = str(caught.exception)
            self.assertNotIn("\n", message)
            self.assertNotIn("os.exit", message)
            self.assertNotIn("/tmp/x", message)

    def test_directiveNamed(self):
        """
        An ekeyd.conf directive sent as a command is refused by name,
        pointing at the configuration.
        """
        with self.assertRaises(ProtocolError) as caught:
            parseRequest(b'UnixControlSocket("/tmp/x")')
        self.assertIn("UnixControlSocket is an ekeyd.conf directive", str(caught.exception))

    def test_unknownNamesTheCommands(self):
        """
        An unknown command is refused with the list of known ones.
        """
        with self.assertRaises(ProtocolError) as caught:
            parseRequest(b"Bogus")
        self.assertIn("unknown command Bogus", str(caught.exception))
        self.assertIn("ListEntropyKeys", str(caught.exception))


class FormatTests(unittest.TestCase):
    """
    Replies are lines as ekeyd writes them, whatever the fields hold.
    """

    def test_values(self):
        """
        Numbers print as ekeyd's Lua prints them (14 significant digits).
        """
        self.assertEqual(formatValue(57600), "57600")
        self.assertEqual(formatValue(315.0), "315")
        self.assertEqual(formatValue(315.0 - 273.15), "41.85")
        self.assertEqual(formatValue(315.0 * 1.8 - 459.67), "107.33")
        self.assertEqual(formatValue(3254 / 1000), "3.254")
        self.assertEqual(formatValue("No failure"), "No failure")

    def test_reply(self):
        """
        Data lines start with C{*} and a tab, fields are tab-separated, and
        C{OK} (with a message, if any) ends the reply.
        """
        self.assertEqual(formatReply([["NR", "OK"], [1, "YES"]]), b"*\tNR\tOK\n*\t1\tYES\nOK\n")
        self.assertEqual(formatReply(message="ID 3"), b"OK ID 3\n")

    def test_fieldsCannotBreakLines(self):
        """
        Tabs, newlines and other control characters in a field (a path can
        hold any of them) cannot add fields or lines.
        """
        reply = formatReply([["/dev/a\tb\nERROR x\r\x1b[2J"]])
        self.assertEqual(reply, b"*\t/dev/a?b?ERROR x??[2J\nOK\n")

    def test_error(self):
        """
        An error is one line, whatever its message holds.
        """
        self.assertEqual(core.formatError("no key\n'x'\tat all"), b"ERROR no key 'x' at all\n")


class StatisticsTests(unittest.TestCase):
    """
    L{ekeydStatistics} gives every statistic ekeyd gives, with its names
    and units, from the typed status model.
    """

    def test_everyEkeydStatistic(self):
        """
        A running key that has sent its readings has every statistic ekeyd
        1.1.5 reports, FrameByteLast included, plus ekey's own.
        """
        stats = ekeydStatistics(status(), 1007.5)
        self.assertEqual(EKEYD_STATISTICS - set(stats), set())
        self.assertEqual(set(stats) - EKEYD_STATISTICS,
                         {"MACFailures", "BytesDiscarded", "HealthFIPSBlocks",
                          "HealthFIPSFailures"})

    def test_valuesAndUnits(self):
        """
        The values are worked out as ekeyd does: these are the figures the
        real ekeyd showed for the same counters after 7 s (FipsFrameRate
        aside, which ekeyd averages over 50 s windows).
        """
        stats = ekeydStatistics(status(), 1007.9)
        lines = [fields[0] for fields in core.statLines(stats)]
        for expected in ["BytesRead=57600", "BytesWritten=18", "ConnectionNonces=1",
                         "ConnectionPackets=900", "ConnectionRekeys=1", "ConnectionTime=7",
                         "EntropyRate=32658", "FrameByteLast=57536", "FramesOk=900",
                         "FramingErrors=0", "KeyDbsdShannonPerByteL=2.93",
                         "KeyDbsdShannonPerByteR=2.99", "KeyEnglishBadness=No failure",
                         "KeyRawBadness=0", "KeyRawShannonPerByteL=2.94",
                         "KeyRawShannonPerByteR=2.95", "KeyRawShannonPerByteX=2.92",
                         "KeyShortBadness=efm_ok", "KeyTemperatureC=41.85",
                         "KeyTemperatureF=107.33", "KeyTemperatureK=315", "KeyVoltage=3.254",
                         "PacketErrors=0", "PacketOK=900", "ReadRate=65828",
                         "TotalEntropy=28576", "WriteRate=20", "FipsFrameRate=2.85"]:
            self.assertIn(expected, lines)
        self.assertEqual(lines, sorted(lines))

    def test_frameByteLastFromTheModel(self):
        """
        When the model carries C{frameByteLast}, that is what is shown,
        even after framing errors.
        """
        base = readings(framingErrors=3, bytesDiscarded=17)
        stats = ekeydStatistics(status(reading=_ReadingsWithFrameByteLast(base, 4242)), 1007)
        self.assertEqual(stats["FrameByteLast"], 4242)

    def test_frameByteLastUnknown(self):
        """
        Without it in the model, FrameByteLast is left out once a byte was
        not part of a frame, or the key was reset again (where the frames
        no longer lie end to end), or before any frame.
        """
        for changes in [dict(framingErrors=1, bytesDiscarded=3), dict(bytesDiscarded=1),
                        dict(resets=2), dict(framesOK=0)]:
            stats = ekeydStatistics(status(reading=readings(**changes)), 1007)
            self.assertNotIn("FrameByteLast", stats, changes)

    def test_readingsNotYetSent(self):
        """
        Readings the key has not sent yet are left out, not shown as zeros.
        """
        reading = readings(temperatureTenthsK=None, voltageMillivolts=None, fipsBlocks=None,
                           firstFipsBlocks=None, failMode=None, shannonsPerByte=())
        stats = ekeydStatistics(status(reading=reading), 1007)
        for name in ["KeyTemperatureK", "KeyTemperatureC", "KeyTemperatureF", "KeyVoltage",
                     "FipsFrameRate", "KeyRawBadness", "KeyShortBadness",
                     "KeyEnglishBadness", "KeyRawShannonPerByteL"]:
            self.assertNotIn(name, stats)
        self.assertEqual(stats["BytesRead"], 57600)

    def test_noRatesInTheFirstSecond(self):
        """
        Rates over a connection younger than a second are left out (ekeyd
        divides by zero there).
        """
        stats = ekeydStatistics(status(), 1000.5)
        self.assertEqual(stats["ConnectionTime"], 0)
        for name in ["EntropyRate", "ReadRate", "WriteRate", "FipsFrameRate"]:
            self.assertNotIn(name, stats)

    def test_failModes(self):
        """
        A key's fail mode is shown as ekeyd names it; an unknown one says
        so.
        """
        stats = ekeydStatistics(status(reading=readings(failMode="9")), 1007)
        self.assertEqual((stats["KeyRawBadness"], stats["KeyShortBadness"]),
                         ("9", "efm_fips1402_threshold_exceeded"))
        stats = ekeydStatistics(status(reading=readings(failMode="Z")), 1007)
        self.assertEqual(stats["KeyShortBadness"], "efm_unknown")

    def test_notConnected(self):
        """
        A key that is not connected has no statistics.
        """
        closed = status(state=KeyState.CLOSED, serial=None, connectedAt=None,
                        reading=None, readings=None)
        self.assertEqual(ekeydStatistics(closed, 1007), {})


class FindKeyTests(unittest.TestCase):
    """
    L{findKey} finds a key as ekeyd does.
    """

    keys = [(1, status(path="/dev/entropykey/AAAA", serial="AAAA")),
            (3, status(path="/run/entropykeys/" + SERIAL)),
            (4, status(path="/tmp/1", serial=None, state=KeyState.WAITING))]

    def test_byNumberSerialPathAndName(self):
        """
        A key is found by its number, serial, path, or the last part of its
        path.
        """
        self.assertEqual(findKey(self.keys, "3"), 3)
        self.assertEqual(findKey(self.keys, SERIAL), 3)
        self.assertEqual(findKey(self.keys, "/run/entropykeys/" + SERIAL), 3)
        self.assertEqual(findKey(self.keys, "AAAA"), 1)

    def test_firstMatchWins(self):
        """
        When several keys match (here key 4's path ends in C{/1}), the first
        one listed wins, as in ekeyd.
        """
        self.assertEqual(findKey(self.keys, "1"), 1)

    def test_unknown(self):
        """
        No match is a refusal naming what to give.
        """
        with self.assertRaises(CommandRefused) as caught:
            findKey(self.keys, "9")
        self.assertEqual(str(caught.exception),
                         "no key '9': give a number from ListEntropyKeys, a serial or a path")


class _Target:
    """
    An L{ekey.core.ekeydcontrol.EkeydControlTarget} in memory, recording
    what is asked of it.
    """

    def __init__(self):
        self.keys = [(1, status()),
                     (2, status(path="/dev/entropykey/BBBB", serial=None,
                                state=KeyState.UNKNOWN_SERIAL))]
        self.calls = []
        self.next = 3

    def keyStatuses(self):
        return list(self.keys)

    def addKey(self, path):
        self.calls.append(("addKey", path))
        if path == "/missing":
            raise CommandRefused("/missing does not exist")
        if path == "/boom":
            raise RuntimeError("boom")
        self.next += 1
        return self.next - 1

    def addKeys(self, directory):
        self.calls.append(("addKeys", directory))
        return [5, 6] if directory == "/dev/entropykey" else []

    def removeKey(self, number):
        self.calls.append(("removeKey", number))

    def reloadKeyring(self, path):
        self.calls.append(("reloadKeyring", path))
        return 2

    def shutdown(self):
        self.calls.append(("shutdown",))


class SessionTests(unittest.TestCase):
    """
    L{EkeydControlSession} answers each command as ekeyd does, from its
    target.
    """

    def setUp(self):
        self.target = _Target()
        self.session = EkeydControlSession(self.target)

    def send(self, line: bytes, now: float = 1007.0) -> bytes:
        reply = self.session.lineReceived(line, now)
        return reply.data

    def test_list(self):
        """
        C{ListEntropyKeys} gives a header and a line per key; a key whose
        serial is unknown has no serial field, and a stopped key is C{NO}.
        """
        self.assertEqual(
            self.send(b"ListEntropyKeys"),
            b"*\tNR\tOK\tStatus\tPath\tSerialNo\n"
            b"*\t1\tYES\tRunning OK\t/dev/entropykey/E52jaQ2jxAYlra1N\tE52jaQ2jxAYlra1N\n"
            b"*\t2\tNO\tSerial unknown\t/dev/entropykey/BBBB\n"
            b"OK\n")

    def test_stat(self):
        """
        C{StatEntropyKey} gives C{Name=value} lines, sorted, then C{OK}.
        """
        lines = self.send(b'StatEntropyKey("E52jaQ2jxAYlra1N")').decode().splitlines()
        self.assertEqual(lines[-1], "OK")
        self.assertIn("*\tFrameByteLast=57536", lines)
        self.assertEqual(lines[:-1], sorted(lines[:-1]))
        self.assertEqual(len(lines) - 1, len(EKEYD_STATISTICS) + 4)

    def test_statNoStatistics(self):
        """
        A key without statistics (not connected) is one error line saying
        why.
        """
        self.target.keys = [(1, status(state=KeyState.CLOSED, reason="not connected (retrying)",
                                       serial=None, connectedAt=None, reading=None,
                                       readings=None))]
        self.assertEqual(self.send(b'StatEntropyKey("1")'),
                         b"ERROR key 1 has no statistics: Key closed, not connected (retrying)\n")

    def test_statUnknownKey(self):
        """
        An unknown key is one error line.
        """
        self.assertEqual(
            self.send(b'StatEntropyKey("9")'),
            b"ERROR no key '9': give a number from ListEntropyKeys, a serial or a path\n")

    def test_add(self):
        """
        C{AddEntropyKey} says the new key's number; a path already served
        gives its number without adding it again, as ekeyd does.
        """
        self.assertEqual(self.send(b'AddEntropyKey("/dev/ttyACM0",nil)'), b"OK ID 3\n")
        self.assertEqual(self.send(b'AddEntropyKey("/dev/entropykey/BBBB")'), b"OK ID 2\n")
        self.assertEqual(self.target.calls, [("addKey", "/dev/ttyACM0")])

    def test_addWithSerialRefused(self):
        """
        ekeyd's optional serial lock is refused (not silently ignored).
        """
        reply = self.send(b'AddEntropyKey("/dev/ttyACM0","E52jaQ2jxAYlra1N")')
        self.assertTrue(reply.startswith(b"ERROR AddEntropyKey with a serial"), reply)
        self.assertEqual(self.target.calls, [])

    def test_addRefused(self):
        """
        The target's refusal is one error line with its message.
        """
        self.assertEqual(self.send(b'AddEntropyKey("/missing")'),
                         b"ERROR /missing does not exist\n")

    def test_addAll(self):
        """
        C{AddEntropyKeys} lists the numbers added, as ekeyd does; none
        added is a bare C{OK}.
        """
        self.assertEqual(self.send(b'AddEntropyKeys("/dev/entropykey")'), b"OK ID 5, ID 6\n")
        self.assertEqual(self.send(b'AddEntropyKeys("/empty")'), b"OK\n")

    def test_remove(self):
        """
        C{RemoveEntropyKey} removes the key found by its tag.
        """
        self.assertEqual(self.send(b'RemoveEntropyKey("BBBB")'), b"OK\n")
        self.assertEqual(self.target.calls, [("removeKey", 2)])

    def test_keyring(self):
        """
        C{Keyring} answers the number of keys in the keyring.
        """
        self.assertEqual(self.send(b'Keyring("/etc/entropykey/keyring")'), b"OK 2\n")
        self.assertEqual(self.target.calls, [("reloadKeyring", "/etc/entropykey/keyring")])

    def test_shutdown(self):
        """
        C{Shutdown} stops the daemon, answers nothing and ends the session
        (as ekeyd does); later lines are ignored.
        """
        reply = self.session.lineReceived(b"Shutdown", 1007)
        self.assertEqual((reply.data, reply.close, reply.changes), (b"", True, True))
        self.assertEqual(self.target.calls, [("shutdown",)])
        self.assertEqual(self.send(b"ListEntropyKeys"), b"")

    def test_bye(self):
        """
        C{Bye} says good bye and ends the session.
        """
        reply = self.session.lineReceived(b"Bye", 1007)
        self.assertEqual((reply.data, reply.close), (b"OK Good bye\n", True))

    def test_blankLine(self):
        """
        A blank line is answered C{OK}, as ekeyd does.
        """
        self.assertEqual(self.send(b""), b"OK\n")

    def test_badLine(self):
        """
        A line that does not parse is one error line, and the session goes
        on.
        """
        self.assertTrue(self.send(b"x=1").startswith(b"ERROR cannot parse the command"))
        self.assertTrue(self.send(b"ListEntropyKeys").endswith(b"OK\n"))

    def test_unexpectedFailure(self):
        """
        An unexpected exception in the target is one generic error line,
        with the exception kept for the log.
        """
        reply = self.session.lineReceived(b'AddEntropyKey("/boom")', 1007)
        self.assertEqual(reply.data, b"ERROR the daemon failed to add a key; see its log\n")
        self.assertIsInstance(reply.failure, RuntimeError)

    def test_lineTooLong(self):
        """
        An over-long line ends the session with one error line.
        """
        reply = self.session.lineTooLong()
        self.assertTrue(reply.data.startswith(b"ERROR command longer than 4096 bytes"))
        self.assertTrue(reply.close)
        self.assertTrue(self.session.closed)


class _Socket:
    """
    What L{ekey.services.peers.peerCredentials} reads of a Unix socket.
    """

    def __init__(self, pid, uid, gid):
        self.credentials = struct.pack("3i", pid, uid, gid)

    def getsockopt(self, level, option, size):
        return self.credentials


class _UnixTransport(StringTransport):
    """
    A L{StringTransport} that looks like a Unix socket whose peer is the
    given user.
    """

    def __init__(self, uid, gid):
        StringTransport.__init__(self, peerAddress=UNIXAddress(None))
        self.socket = _Socket(4242, uid, gid)

    def getHandle(self):
        return self.socket


class ProtocolTests(unittest.TestCase):
    """
    L{ekey.services.ekeydcontrol.EkeydControlProtocol} carries the
    session's bytes, lets only the owner in and bounds what it buffers.
    """

    def setUp(self):
        self.target = _Target()
        self.clock = Clock()
        self.clock.advance(1007)
        self.events = []
        self.factory = EkeydControlFactory(
            self.target, self.clock,
            access=ControlAccess(27, getuid=lambda: 500,
                                 groups=lambda transport, credentials: (credentials.gid,)))

    def connect(self, uid=0, gid=0, transport=None):
        protocol = self.factory.buildProtocol(None)
        protocol.log = Logger(observer=self.events.append)
        transport = transport if transport is not None else _UnixTransport(uid, gid)
        protocol.makeConnection(transport)
        return protocol, transport

    def logged(self):
        """
        @return: the messages logged at info level or above.
        """
        return [formatEvent(e) for e in self.events if e["log_level"] >= LogLevel.info]

    def test_banner(self):
        """
        The owner is greeted with ekeyd's banner, and commands are answered.
        """
        protocol, transport = self.connect(uid=500, gid=500)
        self.assertEqual(transport.value(), BANNER)
        transport.clear()
        protocol.dataReceived(b"ListEntropyKeys\n")
        self.assertTrue(transport.value().endswith(b"OK\n"))
        self.assertFalse(transport.disconnecting)

    def test_controlGroupMember(self):
        """
        A member of the control group may control the daemon.
        """
        _, transport = self.connect(uid=1000, gid=27)
        self.assertEqual(transport.value(), BANNER)

    def test_othersRefused(self):
        """
        Anyone else gets one refusal line instead of the banner, is
        disconnected, and is logged with their uid; what they send later is
        not acted on.
        """
        protocol, transport = self.connect(uid=65534, gid=65534)
        self.assertEqual(transport.value().count(b"\n"), 1)
        self.assertTrue(transport.value().startswith(b"ERROR permission denied: uid 65534"))
        self.assertTrue(transport.disconnecting)
        self.assertIn("uid 65534", " ".join(self.logged()))
        protocol.dataReceived(b"Shutdown\n")
        self.assertEqual(self.target.calls, [])

    def test_notUnixRefused(self):
        """
        A peer the kernel cannot name (not a Unix socket) is refused.
        """
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4000))
        _, transport = self.connect(transport=transport)
        self.assertTrue(transport.value().startswith(
            b"ERROR the daemon takes commands only on its Unix control socket"))
        self.assertTrue(transport.disconnecting)

    def test_pipelinedAndCRLF(self):
        """
        Several commands in one read are answered in order; CRLF line ends
        are accepted.
        """
        protocol, transport = self.connect()
        transport.clear()
        protocol.dataReceived(b'Keyring("/k")\r\nAddEntropyKey("/dev/ttyACM0")\n')
        self.assertEqual(transport.value(), b"OK 2\nOK ID 3\n")

    def test_lineTooLong(self):
        """
        More than L{MAX_LINE_LENGTH} bytes without a newline get one error
        line and the connection is closed, without buffering them.
        """
        protocol, transport = self.connect()
        transport.clear()
        protocol.dataReceived(b"A" * (MAX_LINE_LENGTH + 1))
        self.assertEqual(transport.value().count(b"\n"), 1)
        self.assertTrue(transport.value().startswith(b"ERROR command longer than"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(protocol._buffer), 0)

    def test_readingPausedWhileRepliesBackUp(self):
        """
        The protocol is its transport's producer: when replies back up, it
        stops reading (and answering) until they drain.
        """
        protocol, transport = self.connect()
        self.assertIs(transport.producer, protocol)
        self.assertTrue(transport.streaming)
        protocol.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        transport.clear()
        protocol.dataReceived(b"ListEntropyKeys\n")
        self.assertEqual(transport.value(), b"")
        protocol.resumeProducing()
        self.assertTrue(transport.value().endswith(b"OK\n"))

    def test_shutdownClosesAndStops(self):
        """
        C{Shutdown} closes the connection and stops the daemon, and is
        logged with who asked.
        """
        protocol, transport = self.connect()
        transport.clear()
        protocol.dataReceived(b"Shutdown\nListEntropyKeys\n")
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.target.calls, [("shutdown",)])
        self.assertIn("Shutdown", " ".join(self.logged()))

    def test_changesLogged(self):
        """
        Commands that change the daemon are logged with who asked and how
        they ended; questions are not.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b'ListEntropyKeys\nRemoveEntropyKey("1")\n'
                              b'AddEntropyKey("/missing")\n')
        logged = self.logged()
        self.assertEqual(len(logged), 2, logged)
        self.assertIn("uid=0", logged[0])
        self.assertIn("RemoveEntropyKey('1'): OK", logged[0])
        self.assertIn("refused AddEntropyKey('/missing'): ERROR /missing does not exist",
                      logged[1])

    def test_failureLogged(self):
        """
        An unexpected failure is logged in full; the client gets one line.
        """
        protocol, transport = self.connect()
        transport.clear()
        protocol.dataReceived(b'AddEntropyKey("/boom")\n')
        self.assertEqual(transport.value(), b"ERROR the daemon failed to add a key; see its log\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 0)
        self.assertIsInstance(self.events[-1]["log_failure"].value, RuntimeError)


class DaemonTargetTests(unittest.TestCase):
    """
    L{targetFromDaemon} puts today's L{Daemon} and its key manager behind
    the protocol (the keys on a L{MemoryReactorClock}).
    """

    def setUp(self):
        startMemoryDaemon(self)
        self.deviceDir = self.mktemp()
        os.mkdir(self.deviceDir)
        self.session = EkeydControlSession(targetFromDaemon(self.daemon, [self.deviceDir]))

    def send(self, line: bytes) -> bytes:
        return self.session.lineReceived(line, self.reactor.seconds()).data

    def test_addListStatRemove(self):
        """
        A key added over the protocol (from a device directory) is listed,
        gives statistics once it runs, and is removed.
        """
        path = boundSocket(self, os.path.join(self.deviceDir, "key.sock"))
        self.assertEqual(self.send(f'AddEntropyKey("{path}",nil)'.encode()), b"OK ID 1\n")
        protocol = connectKey(self, self.reactor, self.keys, 1, 4)
        self.reactor.advance(3)
        listing = self.send(b"ListEntropyKeys").decode().splitlines()
        serial = SESSION["serial_pem"]
        serial = serial.decode() if isinstance(serial, bytes) else serial
        self.assertEqual(listing[1], f"*\t1\tYES\tRunning OK\t{path}\t{serial}")
        for frame in deviceFrames()[4:12]:
            protocol.dataReceived(frame)
        stats = self.send(f'StatEntropyKey("{serial}")'.encode()).decode()
        self.assertIn("*\tConnectionTime=3\n", stats)
        self.assertIn("*\tKeyTemperatureK=", stats)
        self.assertIn("*\tFramesOk=12\n", stats)
        self.assertTrue(stats.endswith("OK\n"))
        self.assertEqual(self.send(b'RemoveEntropyKey("1")'), b"OK\n")
        self.assertEqual(self.send(b"ListEntropyKeys"), b"*\tNR\tOK\tStatus\tPath\tSerialNo\nOK\n")

    def test_refusalsAreOneLine(self):
        """
        The key manager's refusals reach the client as one error line.
        """
        reply = self.send(b'AddEntropyKey("/nonexistent/key")')
        self.assertTrue(reply.startswith(b"ERROR "), reply)
        self.assertEqual(reply.count(b"\n"), 1)
        reply = self.send(b'AddEntropyKeys("/nonexistent")')
        self.assertTrue(reply.startswith(b"ERROR cannot read /nonexistent"), reply)

    def test_onlyTheOwnKeyring(self):
        """
        C{Keyring} reloads the daemon's own keyring only; another file is
        refused without being read.
        """
        self.assertEqual(self.send(f'Keyring("{self.keyringPath}")'.encode()), b"OK 1\n")
        reply = self.send(b'Keyring("/etc/shadow")')
        self.assertTrue(reply.startswith(b"ERROR only the daemon's own keyring"), reply)
        self.assertNotIn(b"shadow:", reply)
        self.assertNotIn(b"root:", reply)

    def test_shutdown(self):
        """
        C{Shutdown} stops the daemon.
        """
        self.send(b"Shutdown")
        self.assertEqual(self.shutdowns, [True])
