# -*- test-case-name: tests.test_server -*-
"""
The EGD client: L{EGDClientProtocol} with a L{Deferred} for every request,
pipelined.  The C{ekey-egd} command is L{ekey.cli.egd}.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Deque

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from ekey.core.egd import (
    MAX_READ,
    Command,
    EGDClientParser,
    GetLevel,
    GetPID,
    Read,
    ReadBlocking,
    Write,
    encodeRequest,
)
from ekey.core.errors import RemoteProtocolError


class EGDConnectionLost(Exception):
    """
    The connection closed before a request was answered.
    """


class EGDProtocolError(EGDConnectionLost):
    """
    The server broke the EGD protocol (sent bytes nobody asked for, or a
    malformed reply), so the connection was closed: it is probably not an
    EGD server.
    """


class EGDClientProtocol(Protocol):
    """
    Speak EGD to a server.  Requests may be sent before earlier ones are
    answered; answers come back in order.
    """

    log = Logger()

    def __init__(self):
        self._parser = EGDClientParser()
        self._waiting: Deque[defer.Deferred] = deque()
        self.connected = False
        self.lost = defer.Deferred()
        self._protocolError = None

    def connectionMade(self):
        self.connected = True

    def _send(self, command: Command) -> defer.Deferred:
        if not self.connected:
            return defer.fail(EGDConnectionLost("not connected"))
        data = encodeRequest(command)
        d = defer.Deferred()
        self._parser.sent(command)
        self._waiting.append(d)
        self.transport.write(data)
        if isinstance(command, Write):
            # No reply comes; the parser answers it in order.
            self._handle(self._parser.receiveData(b""))
        return d

    def level(self) -> defer.Deferred:
        """
        @return: a L{Deferred} firing with the bits of entropy available.
        """
        return self._send(GetLevel())

    def read(self, n: int) -> defer.Deferred:
        """
        Non-blocking read (0x01).

        @return: a L{Deferred} firing with up to C{n} bytes (maybe none).
        """
        return self._send(Read(n))

    def readBlocking(self, n: int) -> defer.Deferred:
        """
        Blocking read (0x02).

        @return: a L{Deferred} firing with exactly C{n} bytes.
        """
        return self._send(ReadBlocking(n))

    def pid(self) -> defer.Deferred:
        """
        @return: a L{Deferred} firing with the server's PID, as text.
        """
        return self._send(GetPID())

    def write(self, shannons: int, data: bytes) -> defer.Deferred:
        """
        Offer entropy to the server (0x03), which may ignore it.

        @return: a L{Deferred} that fires once it is sent.
        """
        return self._send(Write(shannons, data))

    @property
    def outstanding(self) -> int:
        """
        Requests not yet answered.
        """
        return len(self._waiting)

    def dataReceived(self, data):
        try:
            replies = self._parser.receiveData(data)
        except RemoteProtocolError as e:
            self.log.warn("EGD server broke the protocol ({reason}); disconnecting", reason=str(e))
            self._protocolError = str(e)
            self.transport.loseConnection()
            return
        self._handle(replies)

    def _handle(self, replies):
        for reply in replies:
            self._waiting.popleft().callback(reply.value)

    def connectionLost(self, reason):
        self.connected = False
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            if self._protocolError is not None:
                d.errback(EGDProtocolError(
                    f"not an EGD server? it broke the protocol: {self._protocolError}"))
            else:
                d.errback(EGDConnectionLost(reason.getErrorMessage()))
        self.lost.callback(None)


async def readInto(client: EGDClientProtocol, n: int, write: Callable[[bytes], object],
                   blocking: bool = True) -> int:
    """
    Read C{n} bytes in requests of at most 255, pipelined, handing each
    answer to C{write} as it arrives, so that a failure part-way loses
    nothing already received.

    @param write: called with each answer's bytes, in order.
    @param blocking: use 0x02 (wait for every byte) rather than 0x01 (take
        what there is, so fewer bytes may come).
    @return: the number of bytes received.
    @raise Exception: what failed the first unanswered request
        (L{EGDConnectionLost}, L{EGDProtocolError}, a cancellation); the
        later requests' failures are consumed.
    """
    requests = []
    for offset in range(0, n, MAX_READ):
        size = min(MAX_READ, n - offset)
        requests.append(client.readBlocking(size) if blocking else client.read(size))
    received = 0
    try:
        for index, d in enumerate(requests):
            data = await d
            received += len(data)
            write(data)
    except BaseException:
        for later in requests[index + 1:]:
            later.addErrback(lambda _: None)
        raise
    return received


async def readExactly(client: EGDClientProtocol, n: int, blocking: bool = True) -> bytes:
    """
    Read C{n} bytes in requests of at most 255, pipelined.

    @param blocking: use 0x02 (wait for every byte) rather than 0x01 (take
        what there is, so the result may be short).
    """
    parts = []
    await readInto(client, n, parts.append, blocking)
    return b"".join(parts)
