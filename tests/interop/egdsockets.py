"""
Blocking EGD client sockets with a time limit on every operation, over
TCP (from any loopback source address) or a Unix socket, for talking to
our daemon, C{ekeyd} or a relay as real clients do.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Optional

from twisted.trial.unittest import FailTest

from tests.interop.processes import DEFAULT_TIMEOUT, RunningProcess, waitFor


class EGDSocket:
    """
    A plain blocking EGD client socket with a timeout on every operation,
    for interop tests (C{TCP_NODELAY}, so that each C{send} is a segment).

    @ivar sock: the socket.
    """

    def __init__(self, host: str, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout

    def close(self) -> None:
        self.sock.close()

    def abort(self) -> None:
        """
        Close with a reset (C{SO_LINGER} 0), as a vanished client would.
        """
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def sendByteByByte(self, data: bytes, pause: float = 0.003) -> None:
        """
        Send C{data} one byte per C{send}, pausing between them.
        """
        for byte in data:
            self.sock.sendall(bytes((byte,)))
            time.sleep(pause)

    def recvExactly(self, n: int, what: str = "a reply") -> bytes:
        """
        @return: exactly C{n} bytes.
        @raise FailTest: on time-out or end of stream.
        """
        data = bytearray()
        deadline = time.monotonic() + self.timeout
        while len(data) < n:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(n - len(data))
            except socket.timeout:
                raise FailTest(f"timed out after {self.timeout:g} s with {len(data)} of "
                               f"{n} bytes of {what}") from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise FailTest(f"connection closed after {len(data)} of {n} bytes of {what}")
            data += chunk
        self.sock.settimeout(self.timeout)
        return bytes(data)

    def assertNothingMore(self, wait: float = 0.2) -> None:
        """
        @raise FailTest: if the server sends anything (or closes) within
            C{wait} seconds.
        """
        self.sock.settimeout(wait)
        try:
            chunk = self.sock.recv(4096)
        except socket.timeout:
            return
        finally:
            self.sock.settimeout(self.timeout)
        raise FailTest(f"the server sent {chunk!r} that nobody asked for"
                       if chunk else "the server closed the connection")

    def waitForClose(self, timeout: Optional[float] = None) -> bytes:
        """
        Read until the server closes the connection.

        @return: what came before the end.
        @raise FailTest: if it is still open after C{timeout} seconds.
        """
        timeout = self.timeout if timeout is None else timeout
        data = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FailTest(f"the server kept the connection open for {timeout:g} s "
                               f"(after sending {bytes(data)[:64]!r})")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return bytes(data)
            if not chunk:
                return bytes(data)
            data += chunk

    # Commands

    def level(self) -> int:
        """
        0x00: @return: the bits available.
        """
        self.send(b"\x00")
        return int.from_bytes(self.recvExactly(4, "a 0x00 reply"), "big")

    def read(self, n: int) -> bytes:
        """
        0x01: @return: what the server had, up to C{n} bytes.
        """
        self.send(bytes((0x01, n)))
        return self.readReply(n)

    def readReply(self, n: int) -> bytes:
        """
        @return: the body of a 0x01 reply to an C{n}-byte request.
        @raise FailTest: if it claims more than C{n} bytes.
        """
        count = self.recvExactly(1, "a 0x01 count")[0]
        if count > n:
            raise FailTest(f"a 0x01 reply of {count} bytes to a {n}-byte request")
        return self.recvExactly(count, "a 0x01 body")

    def get(self, n: int) -> bytes:
        """
        0x02, in requests of at most 255 bytes, pipelined.

        @return: exactly C{n} bytes.
        """
        requests = b"".join(bytes((0x02, min(255, n - offset))) for offset in range(0, n, 255))
        self.send(requests)
        return self.recvExactly(n, f"{n} bytes of 0x02 replies")

    def pid(self) -> str:
        """
        0x04: @return: the PID text.
        """
        self.send(b"\x04")
        return self.pidReply()

    def pidReply(self) -> str:
        length = self.recvExactly(1, "a 0x04 length")[0]
        return self.recvExactly(length, "a 0x04 body").decode("ascii", "replace")


def waitForLevel(host: str, port: int, bits: int, timeout: float = DEFAULT_TIMEOUT,
                 process: Optional[RunningProcess] = None) -> int:
    """
    Wait until an EGD server reports at least C{bits} of entropy (0x00).

    @return: the level reported then.
    """
    with EGDSocket(host, port, timeout=timeout) as s:
        def enough():
            level = s.level()
            return level if level >= bits else None

        return waitFor(enough, timeout, f"{bits} bits at the EGD server {host}:{port}",
                       process)


class EGDUnixSocket(EGDSocket):
    """
    L{EGDSocket} over a Unix stream socket.
    """

    def __init__(self, path: str, timeout: float = 10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self.timeout = timeout

    def recvAvailable(self, wait: float) -> bytes:
        """
        @return: what arrives within C{wait} seconds (until a pause of
            C{wait} seconds), possibly nothing.
        """
        data = bytearray()
        self.sock.settimeout(wait)
        try:
            while True:
                try:
                    chunk = self.sock.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                data += chunk
        finally:
            self.sock.settimeout(self.timeout)
        return bytes(data)


class BoundEGDSocket(EGDSocket):
    """
    L{EGDSocket} from a chosen loopback source address (such as
    C{127.0.0.2}), so that a server that tells clients apart by address
    (per-client rate limits) sees distinct clients on one host.
    """

    def __init__(self, source: str, host: str, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout

