# -*- test-case-name: tests.test_kernel -*-
"""
Feeding the Linux kernel's random pool, on old kernels and new.

Entropy is added with the C{RNDADDENTROPY} ioctl on C{/dev/random}, which
needs C{CAP_SYS_ADMIN}, credited at C{--shannons-per-byte} (7 by default,
as ekeyd).

When to add it is the hard part.  C{ekeyd-egd-linux} waits for
C{/dev/random} to become writable (C{POLLOUT}), which kernels before 5.18
signalled when the pool fell below C{write_wakeup_threshold}; since Linux
5.18 the kernel's generator, once initialised, never asks again, so that
feeder connects and then sleeps for ever.  L{FeedPolicy} does not rely on
the wake-up:

  - while the kernel's generator is not initialised (early boot, where it
    matters most), it feeds at once and again every C{BOOT_INTERVAL};
  - on kernels that still keep an entropy count (before 5.18), it tops up
    whenever C{entropy_avail} is below C{write_wakeup_threshold};
  - on every kernel it also feeds C{bytes} every C{interval} seconds, so a
    new kernel keeps being reseeded from the key.

L{LinuxKernel} is the real interface; tests use a fake with the same
methods.
"""

from __future__ import annotations

import errno
import fcntl
import os
import platform
import re
import struct
from dataclasses import dataclass
from typing import Optional, Tuple

#: _IOW('R', 0x03, int[2])
RNDADDENTROPY = 0x40085203

DEFAULT_SHANNONS_PER_BYTE = 7
#: Seconds between scheduled top-ups.  The kernel reseeds its generator from
#: its input pool at most once a minute after the first few minutes, so
#: feeding more often than that adds little; once a minute keeps every
#: reseed fed by the key.
DEFAULT_INTERVAL = 60.0
#: Bytes per top-up: 64 bytes (512 bits, credited 448 at 7 shannons per
#: byte) is more than the 256 bits that fully seed the kernel's generator.
DEFAULT_BYTES = 64
#: Seconds between feeds while the kernel's generator is not initialised.
BOOT_INTERVAL = 0.5
#: Seconds between looks at entropy_avail on kernels that still count.
POLL_INTERVAL = 1.0

_PROC = "/proc/sys/kernel/random"


class KernelError(Exception):
    """
    The kernel pool cannot be fed; the message says why, in words fit for
    an operator.
    """


def parseKernelVersion(release: str) -> Tuple[int, int]:
    """
    @param release: as C{uname -r} prints it, such as C{"6.1.0-18-amd64"}.
    @return: C{(major, minor)}, or C{(0, 0)} if it cannot be read.
    """
    match = re.match(r"(\d+)\.(\d+)", release)
    if match is None:
        return (0, 0)
    return int(match.group(1)), int(match.group(2))


def countsEntropy(version: Tuple[int, int]) -> bool:
    """
    Whether a kernel of this version still keeps an entropy count that falls
    below C{write_wakeup_threshold} (before 5.18).
    """
    return version < (5, 18)


@dataclass
class KernelState:
    """
    What the feeder knows of the kernel at one moment.
    """

    initialised: bool
    entropyAvail: Optional[int] = None
    wakeupThreshold: Optional[int] = None


class FeedPolicy:
    """
    When to feed the kernel and how much, sans-I/O: given the time and the
    kernel's state, L{due} says how many bytes to add now, and
    L{nextCheck} when to look again.
    """

    def __init__(self, interval: float = DEFAULT_INTERVAL, bytesPerFeed: int = DEFAULT_BYTES,
                 counting: bool = False):
        """
        @param interval: seconds between scheduled top-ups.
        @param bytesPerFeed: bytes per top-up.
        @param counting: whether the kernel keeps an entropy count
            (L{countsEntropy}).
        @raise ValueError: for a non-positive interval or size.
        """
        if interval <= 0 or bytesPerFeed <= 0:
            raise ValueError("the interval and the bytes per top-up must be positive")
        self.interval = interval
        self.bytesPerFeed = bytesPerFeed
        self.counting = counting
        self._lastFeed: Optional[float] = None

    def due(self, now: float, state: KernelState) -> Tuple[int, str]:
        """
        @return: C{(bytes, reason)}: how much to feed now (0 for nothing)
            and why, for logs.
        """
        if not state.initialised:
            return self.bytesPerFeed, "the kernel's generator is not initialised yet"
        if (self.counting and state.entropyAvail is not None
                and state.wakeupThreshold is not None
                and state.entropyAvail < state.wakeupThreshold):
            missing = (state.wakeupThreshold - state.entropyAvail + 7) // 8
            return max(missing, self.bytesPerFeed), "entropy_avail is below write_wakeup_threshold"
        if self._lastFeed is None:
            return self.bytesPerFeed, "start-up"
        if now - self._lastFeed >= self.interval:
            return self.bytesPerFeed, "scheduled top-up"
        return 0, ""

    def fed(self, now: float) -> None:
        """
        Note that the kernel was fed at C{now}.
        """
        self._lastFeed = now

    def nextCheck(self, now: float, state: KernelState) -> float:
        """
        @return: seconds until the policy should be asked again.
        """
        if not state.initialised:
            return BOOT_INTERVAL
        untilScheduled = self.interval if self._lastFeed is None else max(
            0.0, self._lastFeed + self.interval - now)
        if self.counting:
            return min(POLL_INTERVAL, untilScheduled)
        return untilScheduled


class LinuxKernel:
    """
    The real kernel: C{RNDADDENTROPY} on C{/dev/random}, and the files under
    C{/proc/sys/kernel/random}.
    """

    def __init__(self, device: str = "/dev/random", proc: str = _PROC):
        self.device = device
        self.proc = proc
        self.version = parseKernelVersion(platform.release())
        self._fd: Optional[int] = None

    def open(self) -> None:
        """
        Open the device and check that this process may add entropy.

        @raise KernelError: if the device is missing, or the process lacks
            C{CAP_SYS_ADMIN} (as shown by a zero-byte C{RNDADDENTROPY}).
        """
        try:
            self._fd = os.open(self.device, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KernelError(f"{self.device} does not exist: is this Linux?") from None
        except OSError as e:
            raise KernelError(f"cannot open {self.device}: {e.strerror}") from None
        # Adding nothing checks the privilege without changing the pool.
        self.addEntropy(b"", 0)

    def addEntropy(self, data: bytes, bits: int) -> None:
        """
        Add C{data} to the kernel's pool, crediting C{bits}.

        @raise KernelError: with the reason, if the kernel refuses.
        """
        if self._fd is None:
            raise KernelError("the kernel device is not open")
        request = struct.pack("ii", bits, len(data)) + data
        try:
            fcntl.ioctl(self._fd, RNDADDENTROPY, request)
        except OSError as e:
            if e.errno == errno.EPERM:
                raise KernelError(
                    "adding entropy to the kernel needs CAP_SYS_ADMIN: run as root or grant "
                    "the capability (AmbientCapabilities=CAP_SYS_ADMIN in systemd)") from None
            raise KernelError(f"RNDADDENTROPY on {self.device} failed: {e.strerror}") from None

    def _readNumber(self, name: str) -> Optional[int]:
        try:
            with open(os.path.join(self.proc, name)) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def state(self) -> KernelState:
        """
        @return: whether the generator is initialised (C{getrandom} with
            C{GRND_NONBLOCK} succeeds) and the entropy count and threshold.
        """
        try:
            os.getrandom(1, os.GRND_NONBLOCK)
            initialised = True
        except BlockingIOError:
            initialised = False
        except (AttributeError, OSError):
            initialised = True
        return KernelState(initialised, self._readNumber("entropy_avail"),
                           self._readNumber("write_wakeup_threshold"))

    def close(self) -> None:
        """
        Close the device.
        """
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
