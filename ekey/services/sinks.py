# -*- test-case-name: tests.test_sinks -*-
"""
Places verified entropy goes to other than EGD clients.

L{FileSink} appends to a file or writes into a FIFO.  A sink never blocks
the daemon: the file is opened non-blocking, bytes a full FIFO (or a full
disk) cannot take are held (up to a bound) and retried, a file that is
removed is created again, and a failing sink reports its error once and
keeps trying, without affecting any other sink.
"""

from __future__ import annotations

import errno
import os
import stat

from twisted.logger import Logger

DEFAULT_PENDING_LIMIT = 1 << 20


class SinkError(Exception):
    """
    A sink could not be opened.  The message names the path and the cause.
    """


class FileSink:
    """
    Append entropy to a file, or write it into a FIFO.

    @ivar bytesWritten: bytes that reached the file.
    @ivar bytesDropped: bytes a full or reader-less FIFO, or a failing
        file, could not take within the pending bound; they are never
        written anywhere else.
    """

    log = Logger()

    def __init__(self, path: str, pendingLimit: int = DEFAULT_PENDING_LIMIT):
        """
        Open the sink.

        @raise SinkError: if the path cannot be opened for writing.
        """
        self.path = path
        self._pendingLimit = pendingLimit
        self._pending = b""
        self._lastError = None
        self.bytesWritten = 0
        self.bytesDropped = 0
        self._fd = None
        self.isFIFO = False
        try:
            self.isFIFO = stat.S_ISFIFO(os.stat(path).st_mode)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise SinkError(f"cannot use output file {path}: {e.strerror}") from None
        if not self.isFIFO:
            self._open()
            if self._fd is None:
                raise SinkError(f"cannot open output file {path}: {self._lastError}")

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            self._fd = os.open(self.path, flags, 0o600)
        except OSError as e:
            # A FIFO with no reader refuses a non-blocking open (ENXIO).
            self._reportError(e)
            self._fd = None

    def write(self, data: bytes) -> None:
        """
        Write verified entropy, or hold it while the sink cannot take it.
        """
        if self._fd is not None and not self.isFIFO and self._vanished():
            self.log.warn("Output {path} was removed; creating it again", path=self.path)
            self.close()
        if self._fd is None:
            self._open()
        self._pending += data
        if self._fd is not None:
            self._drain()
        excess = len(self._pending) - self._pendingLimit
        if excess > 0:
            self.bytesDropped += excess
            self._pending = self._pending[excess:]

    def _vanished(self) -> bool:
        try:
            return os.fstat(self._fd).st_nlink == 0
        except OSError:
            return True

    def _drain(self) -> None:
        while self._pending:
            try:
                written = os.write(self._fd, self._pending)
            except BlockingIOError:
                return
            except OSError as e:
                self._reportError(e)
                if e.errno == errno.EPIPE:
                    # The FIFO's reader went away: reopen when one returns.
                    self.close()
                return
            self._pending = self._pending[written:]
            self.bytesWritten += written
            if self._lastError is not None:
                self.log.info("Output {path} is writable again", path=self.path)
                self._lastError = None

    def _reportError(self, error: OSError) -> None:
        reason = error.strerror or str(error)
        if reason != self._lastError:
            self.log.error("Cannot write to output {path}: {reason}", path=self.path, reason=reason)
            self._lastError = reason

    def close(self) -> None:
        """
        Close the file.
        """
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
