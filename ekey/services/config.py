# -*- test-case-name: tests.test_config -*-
"""
The daemon's configuration as one typed value.

L{DaemonConfig} is what L{ekey.services.assembly.makeService} builds the
daemon from.  Front ends make one: C{twistd ekey}'s options
(L{ekey.cli.twistd.Options}), C{ekey-feed-kernel} (L{ekey.cli.feedkernel})
and tests.  Nothing here parses a command line or touches a file: checks
that need only the values live in L{DaemonConfig.check}, which raises
L{ValueError} with one line; checks that need the system (a keyring that
must be read, a device that must exist) are made by the assembly.

Kernel credit follows the trust model: bytes fed to the kernel are credited
C{shannonsPerByte} by default only when every source is verified (a local
key, a C{unix:} upstream, a C{tcp:} upstream on a loopback address, a
C{tls:} upstream, whose name Twisted checks); with any other source the
default credit is 0, unless C{shannonsPerByte} is given explicitly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Optional, Tuple

from ekey.core.endpointstrings import isLoopbackHost, splitDescription
from ekey.core.kernel import DEFAULT_BYTES, DEFAULT_INTERVAL, DEFAULT_SHANNONS_PER_BYTE
from ekey.core.keyring import DEFAULT_KEYRING
from ekey.core.pool import DEFAULT_POOL_SIZE
from ekey.core.pull import DEFAULT_STALL_TIMEOUT
from ekey.services.server import DEFAULT_MAX_PENDING
from ekey.services.upstream import DEFAULT_HIGH_WATER, DEFAULT_LOW_WATER

#: The control channel's default: a private Unix socket in the run directory
#: (C{twistd --rundir}, such as C{/run/ekey}, where ekeyctl looks first).
DEFAULT_CONTROL = "unix:control.sock:mode=600:lockfile=1"

#: The key directories served when no source is given, as ekeyd's stock
#: configuration has them: udev's links to serial keys, and the sockets of
#: keys on other transports.
DEFAULT_DEVICE_DIRS = ("/dev/entropykey", "/var/run/entropykeys")

#: The most bytes a regular output file grows to (1 MiB); a FIFO has no cap.
DEFAULT_OUTPUT_MAX_BYTES = 1 << 20

#: Seconds a TLS client has to complete its handshake.
DEFAULT_TLS_HANDSHAKE_TIMEOUT = 10.0

#: Seconds an upstream may deliver nothing of what it was asked before its
#: demand is asked of the others (L{ekey.core.pull.PullPolicy}).
DEFAULT_UPSTREAM_STALL_TIMEOUT = DEFAULT_STALL_TIMEOUT

#: The log levels C{--log-level} accepts, as L{twisted.logger.LogLevel} names.
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")

#: Client endpoint types whose peer is verified by the endpoint itself.
_VERIFIED_TYPES = ("unix", "tls")


def isVerifiedSource(description: str) -> bool:
    """
    Whether an upstream's bytes come from a peer that is verified: a Unix
    socket (only local processes, under file permissions), a C{tls:}
    server whose name Twisted checked against its trust roots, or a
    C{tcp:} server on a loopback address.

    @param description: a client endpoint description.
    """
    kind, args, kwargs = splitDescription(description)
    if kind in _VERIFIED_TYPES:
        return True
    if kind in ("tcp", "tcp6"):
        host = kwargs.get("host", args[0] if args else "")
        return isLoopbackHost(host)
    return False


def privateUnixListener(description: str) -> str:
    """
    Give a C{unix:} server endpoint mode 0600 unless it names a mode, as
    ekeyd makes its EGD sockets.

    @return: the description, with C{:mode=600} added if it is a C{unix:}
        description without a mode; any other description unchanged.
    """
    kind, _, kwargs = splitDescription(description)
    if kind == "unix" and "mode" not in kwargs:
        return description + ":mode=600"
    return description


def unixPath(description: str) -> Optional[str]:
    """
    @return: the path of a C{unix:} endpoint description, else C{None}.
    """
    kind, args, kwargs = splitDescription(description)
    if kind != "unix":
        return None
    return kwargs.get("address", kwargs.get("path", args[0] if args else None)) or None


@dataclass(frozen=True)
class DaemonConfig:
    """
    Everything C{twistd ekey} can be told, typed.  Repeatable options are
    tuples; an endpoint is its description string; C{None} means "not
    given".

    @ivar devices: key paths (serial devices or Unix sockets).
    @ivar deviceDirs: directories whose keys are served as they appear.
    @ivar keyring: the keyring file.
    @ivar ports: EGD server endpoints.
    @ivar upstreams: EGD client endpoints to pull from.
    @ivar outputFile: a file or FIFO to write entropy to.
    @ivar outputMaxBytes: the most bytes a regular output file grows to.
    @ivar poolSize: bytes the pool holds.
    @ivar lowWater: pull from upstreams below this pool level.
    @ivar highWater: stop pulling at this pool level; C{None} for the
        default (L{pullHighWater}).
    @ivar kernel: feed the kernel's pool.
    @ivar shannonsPerByte: kernel credit per byte; C{None} for the default,
        which depends on the sources (L{kernelCredit}).
    @ivar kernelInterval: seconds between top-ups of the kernel.
    @ivar kernelBytes: bytes per top-up.
    @ivar control: the control endpoint, or C{None} for none.
    @ivar controlGroup: a group whose members may use the control channel.
    @ivar ekeydControl: an endpoint for ekeyd's text control protocol.
    @ivar clientRate: bytes per second per client identity (0: no limit).
    @ivar clientBurst: bytes a client may draw at once after a rest.
    @ivar maxClients: the most clients per port (0: no limit).
    @ivar maxConnections: the most client connections over all listeners;
        C{None} to derive it from C{RLIMIT_NOFILE}.
    @ivar idleTimeout: seconds before an EGD connection with no request is
        closed (0: never).
    @ivar maxPending: bytes a connection may have asked for and not received.
    @ivar tlsHandshakeTimeout: seconds a TLS client has to finish its
        handshake.
    @ivar upstreamStallTimeout: seconds an upstream may deliver nothing of
        what it was asked before its demand moves to the others.
    @ivar metrics: the metrics and status page endpoint, or C{None}.
    @ivar logLevel: the lowest level logged, a name from L{LOG_LEVELS}.
    @ivar configFile: the configuration file the settings were read
        from (C{--config} or C{--ekeyd-conf}), if any, for the start line.
    @ivar defaultSources: whether C{deviceDirs} are L{DEFAULT_DEVICE_DIRS}
        because no source was given (L{withDefaultSources}).
    @ivar switchUID: the user id twistd switches to after start-up
        (C{twistd --uid}), if any.
    @ivar keepsCapabilities: whether capabilities survive that switch.
    """

    devices: Tuple[str, ...] = ()
    deviceDirs: Tuple[str, ...] = ()
    keyring: str = DEFAULT_KEYRING
    ports: Tuple[str, ...] = ()
    upstreams: Tuple[str, ...] = ()
    outputFile: Optional[str] = None
    outputMaxBytes: int = DEFAULT_OUTPUT_MAX_BYTES
    poolSize: int = DEFAULT_POOL_SIZE
    lowWater: int = DEFAULT_LOW_WATER
    highWater: Optional[int] = None
    kernel: bool = False
    shannonsPerByte: Optional[int] = None
    kernelInterval: float = DEFAULT_INTERVAL
    kernelBytes: int = DEFAULT_BYTES
    control: Optional[str] = DEFAULT_CONTROL
    controlGroup: Optional[str] = None
    ekeydControl: Optional[str] = None
    clientRate: float = 0.0
    clientBurst: int = 65536
    maxClients: int = 0
    maxConnections: Optional[int] = None
    idleTimeout: float = 0.0
    maxPending: int = DEFAULT_MAX_PENDING
    tlsHandshakeTimeout: float = DEFAULT_TLS_HANDSHAKE_TIMEOUT
    upstreamStallTimeout: float = DEFAULT_UPSTREAM_STALL_TIMEOUT
    metrics: Optional[str] = None
    logLevel: str = "info"
    configFile: Optional[str] = None
    defaultSources: bool = False
    switchUID: Optional[int] = None
    keepsCapabilities: bool = False

    def withDefaultSources(self) -> "DaemonConfig":
        """
        Serve the keys that appear in ekeyd's stock directories
        (L{DEFAULT_DEVICE_DIRS}) when no source is given, as ekeyd does.

        @return: this configuration if it has a key, a key directory or an
            upstream; else a copy with the stock directories and
            C{defaultSources} set.
        """
        if self.devices or self.deviceDirs or self.upstreams:
            return self
        return replace(self, deviceDirs=tuple(DEFAULT_DEVICE_DIRS), defaultSources=True)

    @property
    def pullHighWater(self) -> int:
        """
        The high watermark: C{highWater} if given, else L{DEFAULT_HIGH_WATER}
        or the pool size if that is smaller (so that a smaller C{--pool-size}
        alone is still a whole configuration).
        """
        if self.highWater is not None:
            return self.highWater
        return min(DEFAULT_HIGH_WATER, self.poolSize)

    def check(self) -> None:
        """
        Check what can be checked from the values alone.

        @raise ValueError: with one line naming the option and the fix.
        """
        if not self.devices and not self.deviceDirs and not self.upstreams:
            raise ValueError("give at least one source: --device, --device-dir or --upstream")
        for name, values in (("key", self.devices), ("--device-dir", self.deviceDirs),
                             ("--port", self.ports), ("--upstream", self.upstreams)):
            for value in values:
                if values.count(value) > 1:
                    raise ValueError(f"{name} {value} is given more than once")
        if not self.outputFile and not self.ports and not self.kernel:
            raise ValueError("nothing to do with the entropy: give --port, --output-file or --kernel")
        if self.poolSize < 1:
            raise ValueError("--pool-size must be at least 1 byte")
        for name in ("clientRate", "clientBurst", "maxClients", "idleTimeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{_optionName(name)} cannot be negative")
        if self.maxPending < 255:
            raise ValueError("--max-pending must allow one request (255 bytes)")
        if self.clientRate and self.clientBurst < 1:
            raise ValueError("--client-burst must be at least 1 byte with --client-rate")
        if self.maxConnections is not None and self.maxConnections < 1:
            raise ValueError("--max-connections must be at least 1")
        if self.outputMaxBytes < 1:
            raise ValueError("--output-max-bytes must be at least 1")
        for name in ("tlsHandshakeTimeout", "upstreamStallTimeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{_optionName(name)} must be more than 0 seconds")
        if self.upstreams and not 0 <= self.lowWater < self.pullHighWater <= self.poolSize:
            raise ValueError(
                f"need 0 <= --low-water ({self.lowWater}) < --high-water ({self.pullHighWater}) "
                f"<= --pool-size ({self.poolSize})")
        if self.logLevel not in LOG_LEVELS:
            raise ValueError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
        if self.shannonsPerByte is not None and not 0 <= self.shannonsPerByte <= 8:
            raise ValueError("--shannons-per-byte must be between 0 and 8")
        if self.kernel:
            if self.kernelInterval <= 0 or self.kernelBytes <= 0:
                raise ValueError("--kernel-interval and --kernel-bytes must be more than 0")
            if self.switchUID is not None and not self.keepsCapabilities:
                raise ValueError(
                    "--kernel needs CAP_SYS_ADMIN, which twistd --uid drops: run as the "
                    "capability-based unit examples/systemd/ekey-feed-kernel.service "
                    "instead (or keep the capability)")

    def unverifiedSources(self) -> Tuple[str, ...]:
        """
        @return: the upstreams whose peer is not verified
            (L{isVerifiedSource}); keys are always verified.
        """
        return tuple(d for d in self.upstreams if not isVerifiedSource(d))

    def kernelCredit(self) -> Tuple[int, str]:
        """
        The credit per byte given to the kernel, and why.

        @return: C{(shannons per byte, reason in words)}.
        """
        if self.shannonsPerByte is not None:
            return self.shannonsPerByte, "as set by --shannons-per-byte"
        unverified = self.unverifiedSources()
        if unverified:
            return 0, (f"no credit by default: {', '.join(unverified)} is not verified "
                       "(set --shannons-per-byte to credit it)")
        return DEFAULT_SHANNONS_PER_BYTE, "every source is verified"


def _optionName(attribute: str) -> str:
    """
    @return: the long option for a L{DaemonConfig} attribute, such as
        C{client-rate} for C{clientRate}.
    """
    return re.sub(r"([A-Z])", lambda m: "-" + m.group(1).lower(), attribute)
