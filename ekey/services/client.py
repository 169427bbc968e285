# -*- test-case-name: tests.test_server -*-
"""
The EGD client: L{EGDClientProtocol} with a L{Deferred} for every request,
pipelined.  The C{ekey-egd} command is L{ekey.cli.egd}.
"""

from __future__ import annotations

from collections import deque
from typing import Deque

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
            d.errback(EGDConnectionLost(reason.getErrorMessage()))
        self.lost.callback(None)


async def readExactly(client: EGDClientProtocol, n: int, blocking: bool = True) -> bytes:
    """
    Read C{n} bytes in requests of at most 255, pipelined.

    @param blocking: use 0x02 (wait for every byte) rather than 0x01 (take
        what there is, so the result may be short).
    """
    requests = []
    for offset in range(0, n, MAX_READ):
        size = min(MAX_READ, n - offset)
        requests.append(client.readBlocking(size) if blocking else client.read(size))
    parts = []
    for d in requests:
        parts.append(await d)
    return b"".join(parts)
