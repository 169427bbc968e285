# -*- test-case-name: tests.test_ekeydcontrol -*-
"""
ekeyd's own control protocol, sans I/O: what the real C{ekeydctl} and
the munin plugin C{ekeyd_stat_} say to C{ekeyd}'s C{UnixControlSocket},
parsed and answered from the typed status model
(L{ekey.core.status.KeyStatus}).

The wire format, as ekeyd 1.1.5 speaks it (captured between the real
C{ekeydctl}, the munin plugin and the real C{ekeyd})::

    server, on connecting:  PROTOCOL EKEYD/1
    client, one a line:     ListEntropyKeys
                            StatEntropyKey("1")        (a number, serial or path)
                            AddEntropyKey("/dev/entropykey/X",nil)
                            AddEntropyKeys("/dev/entropykey")
                            RemoveEntropyKey("1")
                            Keyring("/etc/entropykey/keyring")
                            Shutdown
    server, per command:    zero or more "*<TAB>field<TAB>field..." lines,
                            then "OK" or "OK <message>";
                            or one "ERROR <message>" line instead.

ekeyd evaluates each line as Lua (C{return <line>}); this module accepts
only the call forms those clients send (C{Name}, C{Name()},
C{Name(arg, ...)}, C{Name "arg"}, with Lua string literals, integers and
C{nil} as arguments) and never evaluates anything.  Every refusal is one
C{ERROR} line that names the fix and never echoes what the client sent.

Replies, as ekeyd gives them::

    ListEntropyKeys   *  NR  OK  Status  Path  SerialNo     (header)
                      *  1   YES Running OK  /dev/...  E52j...  (a key)
                      OK
    StatEntropyKey    *  Name=value  (one per statistic, sorted by name)
                      OK
    AddEntropyKey     OK ID 3
    AddEntropyKeys    OK ID 3, ID 4     (just "OK" when none was added)
    RemoveEntropyKey  OK
    Keyring           OK 2              (the number of keys the keyring holds)
    Shutdown          (no reply; the connection closes and the daemon stops)
    Bye               OK Good bye       (then the connection closes)

The statistics (L{ekeydStatistics}) carry ekeyd's names and units, all
that C{ekeydctl stats} prints, including C{FrameByteLast}, plus a few of
ekey's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import (Dict, Iterable, List, Optional, Protocol, Sequence, Tuple,
                    Union)

from ekey.core.frames import FAIL_MODES, FRAME_LENGTH
from ekey.core.status import KeyStatus, celsius

#: What the server says first: the protocol and its version.
BANNER = b"PROTOCOL EKEYD/1\n"

#: The longest command line accepted (ekeydctl's longest is a path in a
#: call); a longer one is refused and the connection closed.
MAX_LINE_LENGTH = 4096

#: Every statistic ekeyd 1.1.5 reports for a key (C{ekeydctl stats}).
EKEYD_STATISTICS = frozenset({
    "BytesRead", "BytesWritten", "ConnectionNonces", "ConnectionPackets",
    "ConnectionRekeys", "ConnectionResets", "ConnectionTime", "EntropyRate",
    "FipsFrameRate", "FrameByteLast", "FramesOk", "FramingErrors",
    "KeyDbsdShannonPerByteL", "KeyDbsdShannonPerByteR", "KeyEnglishBadness",
    "KeyRawBadness", "KeyRawShannonPerByteL", "KeyRawShannonPerByteR",
    "KeyRawShannonPerByteX", "KeyShortBadness", "KeyTemperatureC", "KeyTemperatureF",
    "KeyTemperatureK", "KeyVoltage", "PacketErrors", "PacketOK", "ReadRate",
    "TotalEntropy", "WriteRate",
})

#: ekeyd's names for the shannons-per-byte figures of
#: L{ekey.core.status.KeyReadings.shannonsPerByte}.
_SHANNON_NAMES = {
    "rawL": "KeyRawShannonPerByteL",
    "rawR": "KeyRawShannonPerByteR",
    "rawX": "KeyRawShannonPerByteX",
    "debiasedL": "KeyDbsdShannonPerByteL",
    "debiasedR": "KeyDbsdShannonPerByteR",
}

#: ekeyd.conf's directives, which ekeyd also accepts on its control
#: socket; they are refused here by name.
CONFIGURATION_DIRECTIVES = frozenset({
    "UnixControlSocket", "TCPControlSocket", "EGDUnixSocket", "EGDTCPSocket",
    "SetOutputToFile", "SetOutputToKernel", "SetFoldedOutput", "Daemonise",
})

Value = Union[int, float, str]


# Errors ------------------------------------------------------------------------


class ProtocolError(ValueError):
    """
    A client sent a line that is not a command this server understands (a
    remote error: the client gets one C{ERROR} line and may carry on).
    """


class CommandRefused(Exception):
    """
    The daemon refused a well-formed command; the message is one line for
    the user, naming the fix.  What an L{EkeydControlTarget} raises.
    """


# Requests ------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """
    One parsed command line.

    @ivar verb: the command's name, e.g. C{"StatEntropyKey"}.
    @ivar arguments: its arguments: C{str} for strings and numbers (as Lua's
        C{tostring} gives them), C{None} for C{nil}.
    """

    verb: str
    arguments: Tuple[Optional[str], ...] = ()


@dataclass(frozen=True)
class _Verb:
    minimum: int
    maximum: int
    usage: str


VERBS = {
    "ListEntropyKeys": _Verb(0, 0, "ListEntropyKeys"),
    "StatEntropyKey": _Verb(1, 1, 'StatEntropyKey("1"), with a number, serial or path'),
    "AddEntropyKey": _Verb(1, 2, 'AddEntropyKey("/dev/entropykey/SERIAL")'),
    "AddEntropyKeys": _Verb(1, 1, 'AddEntropyKeys("/dev/entropykey")'),
    "RemoveEntropyKey": _Verb(1, 1, 'RemoveEntropyKey("1"), with a number, serial or path'),
    "Keyring": _Verb(1, 1, 'Keyring("/etc/entropykey/keyring")'),
    "Shutdown": _Verb(0, 0, "Shutdown"),
    "Bye": _Verb(0, 0, "Bye"),
}

_NAME_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_NAME_REST = _NAME_START | frozenset(b"0123456789")
_DIGITS = frozenset(b"0123456789")
_SPACE = frozenset(b" \t\r")
_ESCAPES = {ord("a"): 7, ord("b"): 8, ord("f"): 12, ord("n"): 10, ord("r"): 13,
            ord("t"): 9, ord("v"): 11, ord("\\"): 92, ord('"'): 34, ord("'"): 39,
            ord("\n"): 10}


class _Scanner:
    """
    Walk a command line, byte by byte, for L{parseRequest}.
    """

    def __init__(self, line: bytes):
        self.line = line
        self.position = 0

    def fail(self, expected: str) -> ProtocolError:
        return ProtocolError(
            f"cannot parse the command (expected {expected} at column {self.position + 1}); "
            'send one call a line, e.g. StatEntropyKey("1")')

    def skipSpace(self) -> None:
        while self.position < len(self.line) and self.line[self.position] in _SPACE:
            self.position += 1

    def peek(self) -> Optional[int]:
        return self.line[self.position] if self.position < len(self.line) else None

    def name(self) -> str:
        start = self.position
        if self.peek() not in _NAME_START:
            raise self.fail("a command name")
        while self.peek() is not None and self.peek() in _NAME_REST:
            self.position += 1
        return self.line[start:self.position].decode("ascii")

    def string(self) -> str:
        quote = self.line[self.position]
        self.position += 1
        out = bytearray()
        while True:
            byte = self.peek()
            if byte is None:
                raise self.fail("the end of a string")
            self.position += 1
            if byte == quote:
                return out.decode("utf-8", "surrogateescape")
            if byte != 0x5C:  # backslash
                out.append(byte)
                continue
            escaped = self.peek()
            if escaped is None:
                raise self.fail("an escaped character")
            if escaped in _DIGITS:
                digits = 0
                value = 0
                while digits < 3 and self.peek() is not None and self.peek() in _DIGITS:
                    value = value * 10 + self.line[self.position] - 0x30
                    self.position += 1
                    digits += 1
                if value > 255:
                    raise self.fail("a character code below 256")
                out.append(value)
                continue
            self.position += 1
            # Lua 5.1 keeps any other escaped character as it is.
            out.append(_ESCAPES.get(escaped, escaped))

    def argument(self) -> Optional[str]:
        byte = self.peek()
        if byte in (0x22, 0x27):  # " or '
            return self.string()
        if byte is not None and byte in _DIGITS:
            start = self.position
            while self.peek() is not None and self.peek() in _DIGITS:
                self.position += 1
            return str(int(self.line[start:self.position]))
        if byte is not None and byte in _NAME_START:
            start = self.position
            if self.name() == "nil":
                return None
            self.position = start
        raise self.fail("a string, a number or nil")


def parseRequest(line: bytes) -> Optional[Request]:
    """
    Parse one command line (without its newline).

    @return: the request, or C{None} for a blank line (which ekeyd answers
        with a bare C{OK}).
    @raise ProtocolError: if the line is not a call of a known command
        with the right number of arguments.
    """
    scanner = _Scanner(line)
    scanner.skipSpace()
    if scanner.peek() is None:
        return None
    verb = scanner.name()
    scanner.skipSpace()
    arguments: List[Optional[str]] = []
    byte = scanner.peek()
    if byte == 0x28:  # (
        scanner.position += 1
        scanner.skipSpace()
        if scanner.peek() == 0x29:
            scanner.position += 1
        else:
            while True:
                scanner.skipSpace()
                arguments.append(scanner.argument())
                scanner.skipSpace()
                if scanner.peek() == 0x2C:  # ,
                    scanner.position += 1
                    continue
                if scanner.peek() == 0x29:  # )
                    scanner.position += 1
                    break
                raise scanner.fail("',' or ')'")
    elif byte in (0x22, 0x27):
        arguments.append(scanner.string())
    scanner.skipSpace()
    if scanner.peek() == 0x3B:  # ; (Lua allows one after a return)
        scanner.position += 1
        scanner.skipSpace()
    if scanner.peek() is not None:
        raise scanner.fail("the end of the line")
    return _checked(Request(verb, tuple(arguments)))


def _checked(request: Request) -> Request:
    verb = VERBS.get(request.verb)
    if verb is None:
        if request.verb in CONFIGURATION_DIRECTIVES:
            raise ProtocolError(
                f"{request.verb} is an ekeyd.conf directive, not a control command: "
                "set it in the daemon's configuration")
        name = request.verb if len(request.verb) <= 40 else request.verb[:40] + "..."
        raise ProtocolError(f"unknown command {name}: use one of {', '.join(VERBS)}")
    # Trailing nils are no arguments at all (Lua cannot tell them apart).
    arguments = request.arguments
    while len(arguments) > verb.minimum and arguments[-1] is None:
        arguments = arguments[:-1]
    if not verb.minimum <= len(arguments) <= verb.maximum or None in arguments[:verb.minimum]:
        raise ProtocolError(f"wrong arguments for {request.verb}: use {verb.usage}")
    return Request(request.verb, arguments)


# Replies ------------------------------------------------------------------------


def _clean(text: object) -> str:
    """
    @return: C{text} fit for one field of one line: control characters
        (tabs and newlines included) become C{?}.
    """
    return "".join(c if " " <= c != "\x7f" else "?" for c in str(text))


def oneLine(message: object) -> str:
    """
    @return: C{message} on one line, its whitespace collapsed and control
        characters replaced.
    """
    return _clean(" ".join(str(message).split()))


def formatValue(value: Value) -> str:
    """
    @return: a statistic as ekeyd's Lua prints it: integers as they are,
        other numbers with 14 significant digits (so C{315.0} is C{315} and
        C{41.850000000000023} is C{41.85}), text cleaned to one field.
    """
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "%.14g" % value
    return _clean(value)


def formatReply(lines: Iterable[Sequence[object]] = (), message: Optional[str] = None) -> bytes:
    """
    @param lines: the reply's data lines, each a sequence of fields.
    @param message: what follows C{OK} on the last line, if anything.
    @return: a successful reply.
    """
    out = [b"*\t" + "\t".join(_clean(field) for field in fields).encode("utf-8", "replace")
           + b"\n" for fields in lines]
    last = "OK" if message is None else "OK " + oneLine(message)
    out.append(last.encode("utf-8", "replace") + b"\n")
    return b"".join(out)


def formatError(message: object) -> bytes:
    """
    @return: a refusal: one C{ERROR} line.
    """
    return b"ERROR " + oneLine(message).encode("utf-8", "replace") + b"\n"


def listLines(keys: Sequence[Tuple[int, KeyStatus]]) -> List[List[object]]:
    """
    The lines of C{ListEntropyKeys}: a header, then one line per key with
    its number, whether it is well (C{YES} unless it has stopped), its
    state in words, its path and its serial (left out while unknown, as
    ekeyd does).
    """
    lines: List[List[object]] = [["NR", "OK", "Status", "Path", "SerialNo"]]
    for number, status in keys:
        line = [number, "NO" if status.state.stopped else "YES", status.state.value,
                status.path]
        if status.serial:
            line.append(status.serial)
        lines.append(line)
    return lines


def findKey(keys: Sequence[Tuple[int, KeyStatus]], tag: str) -> int:
    """
    Find a key as ekeyd does: the first whose path, serial or number is
    C{tag}, or whose path ends in C{/tag}.

    @return: its number.
    @raise CommandRefused: if none matches.
    """
    for number, status in keys:
        if tag in (status.path, status.serial, str(number)) or status.path.endswith("/" + tag):
            return number
    raise CommandRefused(
        f"no key {_shortened(tag)}: give a number from ListEntropyKeys, a serial or a path")


def _shortened(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _frameByteLast(readings) -> Optional[int]:
    """
    The offset in the key's byte stream where its last well-framed frame
    began (ekeyd's C{FrameByteLast}).

    Taken from the readings' C{frameByteLast} when the model carries it.
    Otherwise it is known exactly only while every byte read was part of a
    frame (no framing error, nothing discarded, no reset after the first):
    the frames then lie end to end from offset 0.  Else it is unknown.
    """
    value = getattr(readings, "frameByteLast", None)
    if value is not None:
        return value
    if (readings.framesOK and not readings.framingErrors and not readings.bytesDiscarded
            and readings.resets <= 1):
        return (readings.framesOK - 1) * FRAME_LENGTH
    return None


def ekeydStatistics(status: KeyStatus, now: float) -> Dict[str, Value]:
    """
    A key's statistics with ekeyd's names and units (see C{ekeydctl(8)}),
    worked out as ekeyd does: rates in bits per second over the whole
    connection (C{ConnectionTime}, whole seconds), temperatures from
    tenths of a kelvin, the supply voltage in volts, C{FipsFrameRate} in
    FIPS blocks per second (to hundredths), the badness as character,
    short name and words.  ekey adds C{MACFailures}, C{BytesDiscarded},
    C{HealthFIPSBlocks} and C{HealthFIPSFailures} (the daemon's own health
    tests).

    Readings the key has not sent yet, and rates over a connection younger
    than a second, are left out rather than made up (where ekeyd would
    show zeros, or C{inf}).

    @param now: the time, on the clock of C{status.connectedAt}.
    @return: name to value; empty if the key is not connected.
    """
    readings = status.readings
    if readings is None:
        return {}
    connectionTime = 0
    if status.connectedAt is not None:
        connectionTime = max(0, int(now - status.connectedAt))
    stats: Dict[str, Value] = {
        "BytesRead": readings.bytesRead,
        "BytesWritten": readings.bytesWritten,
        "ConnectionNonces": readings.noncesSent,
        "ConnectionPackets": readings.packetsOK + readings.packetErrors,
        "ConnectionRekeys": readings.rekeys,
        "ConnectionResets": readings.resets,
        "ConnectionTime": connectionTime,
        "FramesOk": readings.framesOK,
        "FramingErrors": readings.framingErrors,
        "PacketErrors": readings.packetErrors,
        "PacketOK": readings.packetsOK,
        "TotalEntropy": readings.entropyBytes,
        "MACFailures": readings.macFailures,
        "BytesDiscarded": readings.bytesDiscarded,
        "HealthFIPSBlocks": status.healthBlocks,
        "HealthFIPSFailures": status.healthFailures,
    }
    frameByteLast = _frameByteLast(readings)
    if frameByteLast is not None:
        stats["FrameByteLast"] = frameByteLast
    if connectionTime:
        stats["EntropyRate"] = readings.entropyBytes * 8 // connectionTime
        stats["ReadRate"] = readings.bytesRead * 8 // connectionTime
        stats["WriteRate"] = readings.bytesWritten * 8 // connectionTime
        if readings.fipsBlocks is not None and readings.firstFipsBlocks is not None:
            blocks = readings.fipsBlocks - readings.firstFipsBlocks
            stats["FipsFrameRate"] = blocks * 100 // connectionTime / 100
    if readings.temperatureTenthsK is not None:
        degrees = celsius(readings.temperatureTenthsK)
        stats["KeyTemperatureK"] = readings.temperatureTenthsK / 10
        stats["KeyTemperatureC"] = degrees
        stats["KeyTemperatureF"] = round(degrees * 1.8 + 32, 2)
    if readings.voltageMillivolts is not None:
        stats["KeyVoltage"] = readings.voltageMillivolts / 1000
    for name, value in readings.shannonsPerByte:
        if name in _SHANNON_NAMES:
            stats[_SHANNON_NAMES[name]] = value
    if readings.failMode is not None:
        short, words = FAIL_MODES.get(
            readings.failMode, ("efm_unknown", f"Unknown failure mode {readings.failMode}"))
        stats["KeyRawBadness"] = readings.failMode
        stats["KeyShortBadness"] = short
        stats["KeyEnglishBadness"] = words
    return stats


def statLines(stats: Dict[str, Value]) -> List[List[str]]:
    """
    @return: the lines of C{StatEntropyKey}: C{Name=value}, sorted by name.
    """
    return [[f"{name}={formatValue(stats[name])}"] for name in sorted(stats)]


# Who may control ---------------------------------------------------------------


# The session ----------------------------------------------------------------------


class EkeydControlTarget(Protocol):
    """
    What ekeyd's control protocol acts on: the daemon's keys by number.
    Refusals are L{CommandRefused} with a one-line message.
    """

    def keyStatuses(self) -> Sequence[Tuple[int, KeyStatus]]:
        """
        @return: every key's number and status, in number order.
        """

    def addKey(self, path: str) -> int:
        """
        Serve the key at C{path}.

        @return: its number.
        """

    def addKeys(self, directory: str) -> Sequence[int]:
        """
        Serve every key in C{directory} not served yet.

        @return: the numbers of those added.
        """

    def removeKey(self, number: int) -> None:
        """
        Stop serving a key and forget it.
        """

    def reloadKeyring(self, path: str) -> int:
        """
        Read the daemon's keyring again; C{path} must name it.

        @return: how many keys it holds.
        """

    def shutdown(self) -> None:
        """
        Stop the daemon.
        """


@dataclass(frozen=True)
class Reply:
    """
    What to do after one line.

    @ivar data: the bytes to send (possibly none).
    @ivar request: the command, if the line parsed.
    @ivar ok: whether it succeeded.
    @ivar close: whether to close the connection after sending C{data}.
    @ivar failure: an unexpected exception the target raised, for the log.
    """

    data: bytes
    request: Optional[Request] = None
    ok: bool = True
    close: bool = False
    failure: Optional[BaseException] = None

    @property
    def changes(self) -> bool:
        """
        Whether the command changes the daemon (and so is logged).
        """
        return self.request is not None and self.request.verb in _CHANGES


_CHANGES = frozenset({"AddEntropyKey", "AddEntropyKeys", "RemoveEntropyKey", "Keyring",
                      "Shutdown"})

_WHAT = {
    "ListEntropyKeys": "list the keys",
    "StatEntropyKey": "give a key's statistics",
    "AddEntropyKey": "add a key",
    "AddEntropyKeys": "add the keys in a directory",
    "RemoveEntropyKey": "remove a key",
    "Keyring": "reload the keyring",
    "Shutdown": "shut down",
}


class EkeydControlSession:
    """
    One control connection's commands, answered from an
    L{EkeydControlTarget}.  Feed it lines; send what it returns.

    @ivar closed: whether the session has ended (after C{Shutdown},
        C{Bye} or an over-long line); later lines are ignored.
    """

    def __init__(self, target: EkeydControlTarget):
        self.target = target
        self.closed = False

    def lineReceived(self, line: bytes, now: float) -> Reply:
        """
        Answer one command line.

        @param line: the line, without its newline.
        @param now: the time, on the clock of the keys' C{connectedAt}.
        """
        if self.closed:
            return Reply(b"")
        try:
            request = parseRequest(line.rstrip(b"\r"))
        except ProtocolError as e:
            return Reply(formatError(e), ok=False)
        if request is None:
            return Reply(formatReply())
        try:
            return getattr(self, "_do" + request.verb)(request, *request.arguments, now=now)
        except CommandRefused as e:
            return Reply(formatError(e), request, ok=False)
        except Exception as e:
            return Reply(formatError(f"the daemon failed to {_WHAT[request.verb]}; see its log"),
                         request, ok=False, failure=e)

    def lineTooLong(self) -> Reply:
        """
        A line longer than L{MAX_LINE_LENGTH} arrived: refuse it and end.
        """
        self.closed = True
        return Reply(formatError(
            f"command longer than {MAX_LINE_LENGTH} bytes refused; closing the connection"),
            ok=False, close=True)

    def _doListEntropyKeys(self, request, now):
        return Reply(formatReply(listLines(self.target.keyStatuses())), request)

    def _doStatEntropyKey(self, request, tag, now):
        keys = self.target.keyStatuses()
        number = findKey(keys, tag)
        status = dict(keys)[number]
        stats = ekeydStatistics(status, now)
        if not stats:
            raise CommandRefused(
                f"key {number} has no statistics: {oneLine(status.state.value)}, "
                f"{oneLine(status.reason)}")
        return Reply(formatReply(statLines(stats)), request)

    def _doAddEntropyKey(self, request, path, serial=None, now=None):
        if serial is not None:
            raise CommandRefused(
                "AddEntropyKey with a serial number to lock to is not supported: "
                "give the path only; the keyring decides which keys are trusted")
        for number, status in self.target.keyStatuses():
            if status.path == path:
                return Reply(formatReply(message=f"ID {number}"), request)
        return Reply(formatReply(message=f"ID {self.target.addKey(path)}"), request)

    def _doAddEntropyKeys(self, request, directory, now):
        numbers = self.target.addKeys(directory)
        message = ", ".join(f"ID {number}" for number in numbers) or None
        return Reply(formatReply(message=message), request)

    def _doRemoveEntropyKey(self, request, tag, now):
        self.target.removeKey(findKey(self.target.keyStatuses(), tag))
        return Reply(formatReply(), request)

    def _doKeyring(self, request, path, now):
        return Reply(formatReply(message=str(self.target.reloadKeyring(path))), request)

    def _doShutdown(self, request, now):
        self.closed = True
        self.target.shutdown()
        return Reply(b"", request, close=True)

    def _doBye(self, request, now):
        self.closed = True
        return Reply(formatReply(message="Good bye"), request, close=True)
