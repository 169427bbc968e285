# -*- test-case-name: tests.test_sinks -*-
"""
Places verified entropy goes to other than EGD clients.

L{FileSink} appends to a file or writes into a FIFO, taking bytes from the
pool only as fast as the file or FIFO accepts them: it asks the pool for
one chunk at a time, writes it, and asks for the next only once the whole
chunk is written.  A FIFO that is full is waited for through the reactor
(it is a writer until it can take more); one with no reader, or a file
that fails (a full disk), is tried again every L{RETRY_INTERVAL} seconds.
Bytes taken from the pool and not yet written (at most one chunk) are kept
for the next writer, never dropped.

A regular output file is capped at C{maxBytes} (the sink stops taking at
the cap and says so once; it takes again if the file shrinks, say when a
consumer truncates it), and is opened with C{O_NOFOLLOW}, so that a
symbolic link planted where the file should be is refused.  A file that
is removed is created again.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Optional

from twisted.application.service import Service
from twisted.logger import Logger

from ekey.core.pool import EntropyPool
from ekey.services._reactor import default

#: Bytes asked of the pool at once: C{PIPE_BUF} on Linux, so that a write
#: to a FIFO that polls writable is taken whole.
CHUNK = 4096

#: Seconds between attempts while the sink cannot be written (no reader on
#: the FIFO, a full disk, the cap reached).
RETRY_INTERVAL = 1.0

#: The most a regular output file grows to by default (1 MiB); the
#: daemon's C{--output-max-bytes}.
DEFAULT_MAX_BYTES = 1 << 20


class SinkError(Exception):
    """
    A sink could not be opened.  The message names the path and the cause.
    """


class FileSink:
    """
    Append entropy to a file, or write it into a FIFO, as fast as it takes
    it.

    @ivar bytesWritten: bytes that reached the file or FIFO.
    @ivar held: bytes taken from the pool and not written yet.
    @ivar isFIFO: whether the path is a FIFO.
    @ivar full: whether a regular file has reached C{maxBytes}.
    """

    log = Logger()

    def __init__(self, path: str, maxBytes: int = DEFAULT_MAX_BYTES, reactor=None):
        """
        Open the sink (a FIFO is opened when it has a reader).

        @param maxBytes: the most a regular file grows to.
        @raise SinkError: if the path is a symbolic link or cannot be
            opened for writing.
        """
        self.path = path
        self.maxBytes = maxBytes
        self._reactor = default(reactor)
        self._fd: Optional[int] = None
        self._lastError: Optional[str] = None
        self._pool: Optional[EntropyPool] = None
        self._pending = None
        self._retry = None
        self._writing = False
        self._requesting = False
        self.held = b""
        self.bytesWritten = 0
        self.full = False
        self.isFIFO = False
        try:
            self.isFIFO = stat.S_ISFIFO(os.lstat(path).st_mode)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise SinkError(f"cannot use output file {path}: {e.strerror}") from None
        if not self.isFIFO:
            error = self._open()
            if error is not None:
                if error.errno == errno.ELOOP:
                    raise SinkError(f"output file {path} is a symbolic link: give the real "
                                    "path") from None
                raise SinkError(f"cannot open output file {path}: {error.strerror}")

    # Opening and closing ----------------------------------------------------------------

    def _open(self) -> Optional[OSError]:
        flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC
                 | os.O_NOFOLLOW)
        try:
            self._fd = os.open(self.path, flags, 0o600)
        except OSError as e:
            # A FIFO with no reader refuses a non-blocking open (ENXIO).
            self._fd = None
            return e
        return None

    def fileno(self) -> int:
        """
        @return: the open descriptor, for the reactor.
        """
        return self._fd if self._fd is not None else -1

    def logPrefix(self) -> str:
        """
        @return: what the reactor logs this writer as.
        """
        return f"FileSink({self.path})"

    def _closeFile(self) -> None:
        self._stopWriting()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """
        Stop taking entropy and close the file.
        """
        self.stop()
        self._closeFile()

    # Taking from the pool ----------------------------------------------------------------

    def start(self, pool: EntropyPool) -> None:
        """
        Take entropy from C{pool}, as fast as the sink writes it.
        """
        self._pool = pool
        self._proceed()

    def stop(self) -> None:
        """
        Take no more entropy; what is held stays held.
        """
        self._pool = None
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._stopWriting()

    def _proceed(self) -> None:
        """
        Write what is held, then ask the pool for chunks while the sink
        takes them whole, or wait until it can take more.
        """
        while self._pool is not None and self._pending is None and not self._requesting:
            if not self._ready():
                self._retryLater()
                return
            if self.held and not self._flush():
                return
            room = self._room()
            if room <= 0:
                if not self.full:
                    self.full = True
                    self.log.warn(
                        "Output {path} reached its cap of {cap} bytes: taking no more entropy "
                        "for it until it shrinks (--output-max-bytes)",
                        path=self.path, cap=self.maxBytes)
                self._retryLater()
                return
            self.full = False
            # The pool may deliver at once, before it returns the request.
            self._requesting = True
            try:
                pending = self._pool.request(min(CHUNK, room), self._deliver)
            finally:
                self._requesting = False
            if pending.active:
                self._pending = pending
                if self.held:
                    pending.pause()
                return
            if self.held:
                return

    def _ready(self) -> bool:
        """
        @return: whether the file is open (opening or reopening it if need
            be).
        """
        if self._fd is not None and not self.isFIFO and self._vanished():
            self.log.warn("Output {path} was removed; creating it again", path=self.path)
            self._closeFile()
        if self._fd is None:
            error = self._open()
            if error is not None:
                self._reportError(error)
                return False
        return True

    def _room(self) -> int:
        if self.isFIFO:
            return CHUNK
        try:
            size = os.fstat(self._fd).st_size
        except OSError:
            return 0
        return self.maxBytes - size

    def _vanished(self) -> bool:
        try:
            return os.fstat(self._fd).st_nlink == 0
        except OSError:
            return True

    def _deliver(self, data: bytes) -> None:
        self.held += data
        if not self._flush() or self._requesting:
            # Blocked (the writer or a retry resumes), or called from
            # within _proceed, which carries on.
            if self._pending is not None:
                self._pending.pause()
            return
        if self._pending is not None and not self._pending.active:
            self._pending = None
            self._proceed()

    def _flush(self) -> bool:
        """
        Write what is held.

        @return: whether all of it was written; if not, the sink waits for
            writability (a FIFO) or a retry.
        """
        if not self._ready():
            self._retryLater()
            return False
        while self.held:
            try:
                written = os.write(self._fd, self.held)
            except BlockingIOError:
                self._startWriting()
                return False
            except OSError as e:
                self._reportError(e)
                if e.errno == errno.EPIPE:
                    # The FIFO's reader went away: reopen when one returns.
                    self._closeFile()
                self._retryLater()
                return False
            self.held = self.held[written:]
            self.bytesWritten += written
            if self._lastError is not None:
                self.log.info("Output {path} is writable again", path=self.path)
                self._lastError = None
        return True

    def _retryLater(self) -> None:
        if self._pool is not None and self._retry is None:
            self._retry = self._reactor.callLater(RETRY_INTERVAL, self._retried)

    def _retried(self) -> None:
        self._retry = None
        self._resume()

    def _resume(self) -> None:
        if not self._ready():
            self._retryLater()
            return
        if not self._flush():
            return
        pending = self._pending
        if pending is not None and pending.active:
            pending.resume()
        else:
            self._pending = None
            self._proceed()

    # IWriteDescriptor, while a FIFO is full -------------------------------------------------

    def _startWriting(self) -> None:
        if not self._writing:
            self._writing = True
            self._reactor.addWriter(self)

    def _stopWriting(self) -> None:
        if self._writing:
            self._writing = False
            self._reactor.removeWriter(self)

    def doWrite(self) -> None:
        """
        The FIFO can take more: write what is held, then take more.
        """
        self._stopWriting()
        self._resume()

    def connectionLost(self, reason) -> None:
        """
        The reactor gave up on the descriptor: try it again later.
        """
        self._writing = False
        self._retryLater()

    def _reportError(self, error: OSError) -> None:
        reason = error.strerror or str(error)
        if reason != self._lastError:
            self.log.error("Cannot write to output {path}: {reason}", path=self.path, reason=reason)
            self._lastError = reason


class SinkService(Service):
    """
    Feed a sink from the pool, in turn with the pool's other readers.
    """

    def __init__(self, pool: EntropyPool, sink: FileSink):
        self.pool = pool
        self.sink = sink

    def startService(self):
        Service.startService(self)
        self.sink.start(self.pool)

    def stopService(self):
        Service.stopService(self)
        self.sink.close()
