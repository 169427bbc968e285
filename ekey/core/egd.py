# -*- test-case-name: tests.test_egd -*-
"""
The Entropy Gathering Daemon protocol, sans-I/O, both directions.

Client-initiated and byte oriented, numbers big-endian:

    0x00                      -> U32 bits available
    0x01 U8 n                 -> U8 count, count bytes (non-blocking)
    0x02 U8 n                 -> exactly n bytes (blocking)
    0x03 U16 shannons U8 n .. -> nothing (entropy offered by the client)
    0x04                      -> U8 length, the PID as decimal text

L{EGDServerParser} turns a client's bytes into commands, however they are
split or pipelined; L{EGDClientParser} turns a server's bytes into replies
for the requests a client sent.  Anything else is a L{RemoteProtocolError}.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Deque, List, Union

from ekey.core.errors import LocalProtocolError, RemoteProtocolError

GET_LEVEL = 0x00
READ = 0x01
READ_BLOCKING = 0x02
WRITE = 0x03
GET_PID = 0x04

MAX_READ = 255

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


@dataclass(frozen=True)
class GetLevel:
    """
    0x00: how many bits of entropy are available.
    """


@dataclass(frozen=True)
class Read:
    """
    0x01: up to C{n} bytes, now.
    """

    n: int


@dataclass(frozen=True)
class ReadBlocking:
    """
    0x02: exactly C{n} bytes, waiting for them.
    """

    n: int


@dataclass(frozen=True)
class Write:
    """
    0x03: the client offers C{data}, claiming C{shannons} of entropy.
    """

    shannons: int
    data: bytes


@dataclass(frozen=True)
class GetPID:
    """
    0x04: the server's process id.
    """


@dataclass(frozen=True)
class ReadBlockingRun:
    """
    C{count} blocking reads in a row, C{n} bytes in all, as
    L{EGDServerParser} gives them when asked to coalesce.  Their replies
    are exactly the C{n} bytes, in order, with nothing between them, so a
    server may answer the run as one blocking read.
    """

    n: int
    count: int


Command = Union[GetLevel, Read, ReadBlocking, ReadBlockingRun, Write, GetPID]

# Commands are immutable: the parser hands out one instance of each
# (clients pipeline thousands of identical reads a second).
_GET_LEVEL = GetLevel()
_GET_PID = GetPID()
_READS = tuple(Read(n) for n in range(MAX_READ + 1))
_READS_BLOCKING = tuple(ReadBlocking(n) for n in range(MAX_READ + 1))


#: The most blocking reads one L{ReadBlockingRun} stands for.
MAX_RUN = 1024


class EGDServerParser:
    """
    Parse a client's byte stream into commands.

    The parser holds at most one incomplete command (259 bytes).
    """

    def __init__(self, coalesce: bool = False):
        """
        @param coalesce: give blocking reads that follow one another in the
            stream as one L{ReadBlockingRun} (of up to L{MAX_RUN} reads)
            rather than one L{ReadBlocking} each.
        """
        self._buffer = b""
        self._coalesce = coalesce

    @property
    def buffered(self) -> int:
        """
        Bytes of an incomplete command held.
        """
        return len(self._buffer)

    def receiveData(self, data: bytes) -> List[Command]:
        """
        @return: the complete commands in the stream so far, in order.
        @raise RemoteProtocolError: on an unknown command byte; the stream
            cannot be trusted after it.
        """
        buffer = self._buffer + data
        commands: List[Command] = []
        offset = 0
        end = len(buffer)
        coalesce = self._coalesce
        while offset < end:
            if (coalesce and buffer[offset] == READ_BLOCKING and offset + 3 < end
                    and buffer[offset + 2] == READ_BLOCKING):
                # Count the complete blocking reads from here at C speed: every
                # other byte of the run is 0x02.
                pairs = min((end - offset) // 2, MAX_RUN)
                codes = buffer[offset : offset + 2 * pairs : 2]
                run = pairs - len(codes.lstrip(b"\x02"))
                runEnd = offset + 2 * run
                commands.append(ReadBlockingRun(sum(buffer[offset + 1 : runEnd : 2]), run))
                offset = runEnd
                continue
            command, used = self._parseOne(buffer, offset)
            if command is None:
                break
            commands.append(command)
            offset += used
        self._buffer = buffer[offset:]
        return commands

    def _parseOne(self, buffer: bytes, offset: int):
        code = buffer[offset]
        available = len(buffer) - offset
        if code == READ_BLOCKING or code == READ:
            if available < 2:
                return None, 0
            n = buffer[offset + 1]
            return (_READS_BLOCKING[n] if code == READ_BLOCKING else _READS[n]), 2
        if code == GET_LEVEL:
            return _GET_LEVEL, 1
        if code == GET_PID:
            return _GET_PID, 1
        if code == WRITE:
            if available < 4:
                return None, 0
            shannons = _U16.unpack_from(buffer, offset + 1)[0]
            n = buffer[offset + 3]
            if available < 4 + n:
                return None, 0
            return Write(shannons, bytes(buffer[offset + 4 : offset + 4 + n])), 4 + n
        raise RemoteProtocolError(f"unknown EGD command 0x{code:02x}")


def encodeLevel(bits: int) -> bytes:
    """
    @return: the reply to 0x00 (saturating at 2**32 - 1 bits).
    """
    return _U32.pack(min(max(bits, 0), 0xFFFFFFFF))


def encodeRead(data: bytes) -> bytes:
    """
    @return: the reply to 0x01.
    @raise LocalProtocolError: if C{data} is over 255 bytes.
    """
    if len(data) > MAX_READ:
        raise LocalProtocolError("a 0x01 reply carries at most 255 bytes")
    return bytes((len(data),)) + data


def encodePID(pid: Union[int, str]) -> bytes:
    """
    @return: the reply to 0x04.
    """
    text = str(pid).encode("ascii")
    return bytes((len(text),)) + text


# The client's side -----------------------------------------------------------------


def _checkCount(n: int) -> None:
    if not 0 <= n <= MAX_READ:
        raise LocalProtocolError(f"an EGD request asks for 0 to 255 bytes, not {n}")


def encodeRequest(command: Command) -> bytes:
    """
    @return: the bytes a client sends for C{command}.
    @raise LocalProtocolError: if a count is out of range.
    """
    if isinstance(command, GetLevel):
        return bytes((GET_LEVEL,))
    if isinstance(command, GetPID):
        return bytes((GET_PID,))
    if isinstance(command, (Read, ReadBlocking)):
        _checkCount(command.n)
        code = READ if isinstance(command, Read) else READ_BLOCKING
        return bytes((code, command.n))
    if isinstance(command, Write):
        _checkCount(len(command.data))
        if not 0 <= command.shannons <= 0xFFFF:
            raise LocalProtocolError("shannons must fit in 16 bits")
        return bytes((WRITE,)) + _U16.pack(command.shannons) + bytes((len(command.data),)) \
            + command.data
    raise LocalProtocolError(f"not an EGD command: {command!r}")


@dataclass(frozen=True)
class Reply:
    """
    A server's complete reply to one request.

    @ivar command: the request it answers.
    @ivar value: bits (0x00), bytes (0x01, 0x02), the PID text (0x04), or
        C{None} (0x03, which has no reply).
    """

    command: Command
    value: Union[int, bytes, str, None]


class EGDClientParser:
    """
    Match a server's bytes to the requests sent, in order.

    Call L{sent} for each request, then L{receiveData} with what arrives.
    """

    def __init__(self):
        self._expected: Deque[Command] = deque()
        self._buffer = b""
        self._partial = b""

    @property
    def outstanding(self) -> int:
        """
        Requests not yet fully answered.
        """
        return len(self._expected)

    def sent(self, command: Command) -> None:
        """
        Note that C{command} was sent; a 0x03 write is answered at once.
        """
        self._expected.append(command)

    def receiveData(self, data: bytes) -> List[Reply]:
        """
        @return: the replies completed, in order.
        @raise RemoteProtocolError: on bytes nobody asked for, or a reply
            that breaks the protocol.
        """
        # Parse at an offset and keep only the unparsed rest: a chunk holding
        # many replies is read once, not copied again for each reply.
        buffer = self._buffer + data if self._buffer else data
        offset = 0
        end = len(buffer)
        expected = self._expected
        out: List[Reply] = []
        while expected:
            command = expected[0]
            kind = type(command)
            if kind is Write:
                out.append(Reply(command, None))
            elif kind is ReadBlocking or kind is ReadBlockingRun:
                need = command.n - len(self._partial)
                piece = buffer[offset : offset + need]
                offset += len(piece)
                if len(piece) < need:
                    self._partial += piece
                    break
                out.append(Reply(command, self._partial + piece if self._partial else piece))
                self._partial = b""
            elif kind is Read or kind is GetPID:
                if offset >= end:
                    break
                count = buffer[offset]
                if kind is Read and count > command.n:
                    raise RemoteProtocolError(
                        f"server sent {count} bytes for a {command.n}-byte read")
                if end - offset < 1 + count:
                    break
                body = buffer[offset + 1 : offset + 1 + count]
                offset += 1 + count
                if kind is GetPID:
                    out.append(Reply(command, body.decode("ascii", "replace")))
                else:
                    out.append(Reply(command, body))
            elif kind is GetLevel:
                if end - offset < 4:
                    break
                out.append(Reply(command, _U32.unpack_from(buffer, offset)[0]))
                offset += 4
            else:
                raise LocalProtocolError(f"not an EGD command: {command!r}")
            expected.popleft()
        self._buffer = buffer[offset:] if offset < end else b""
        if self._buffer and not expected:
            raise RemoteProtocolError(f"server sent {len(self._buffer)} bytes nobody asked for")
        return out


class BlockingReadClient:
    """
    The client side of an EGD connection that only ever sends blocking
    reads (0x02), as a relay's upstream connection does.

    The replies to blocking reads are the bytes asked for, unframed and in
    order, so every byte that arrives is entropy owed to the client, and
    can be used as it arrives, whichever read it completes: nothing is
    parsed, and a chunk holding hundreds of replies costs one comparison.

    @ivar owed: bytes asked for and not yet received.
    """

    def __init__(self, readSize: int = MAX_READ):
        """
        @param readSize: the most one read asks for (1 to L{MAX_READ}).
        @raise LocalProtocolError: if it is out of range.
        """
        _checkCount(readSize)
        if readSize < 1:
            raise LocalProtocolError("a blocking read asks for at least 1 byte")
        self.owed = 0
        self._readSize = readSize
        self._fullRead = bytes((READ_BLOCKING, readSize))

    def request(self, n: int) -> bytes:
        """
        Ask for C{n} more bytes.

        @return: the requests to send: blocking reads of the read size and
            one of the rest.
        @raise LocalProtocolError: if C{n} is negative.
        """
        if n < 0:
            raise LocalProtocolError(f"cannot ask for {n} bytes")
        full, rest = divmod(n, self._readSize)
        self.owed += n
        requests = self._fullRead * full
        if rest:
            requests += bytes((READ_BLOCKING, rest))
        return requests

    def receiveData(self, data: bytes) -> bytes:
        """
        @return: C{data}, all of it owed.
        @raise RemoteProtocolError: if the server sent more than was asked
            for (nothing of C{data} is then counted).
        """
        if len(data) > self.owed:
            raise RemoteProtocolError(
                f"server sent {len(data) - self.owed} bytes nobody asked for")
        self.owed -= len(data)
        return data
