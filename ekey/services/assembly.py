# -*- test-case-name: tests.test_twistd -*-
"""
The daemon, assembled from one L{DaemonConfig} into services under one
L{MultiService}.

Keys feed one L{EntropyPool}; EGD listeners, the output file and the kernel
feeder draw from it, each byte going to exactly one of them.  Front ends
(C{twistd ekey}, C{ekey-feed-kernel}) make the configuration and call
L{prepare}, which opens what must be opened before privileges are dropped
and checks everything that needs the system, then L{makeService}.  Every
listener is a C{strports} service, so that a failed bind stops the start;
every client listener's factory is wrapped by one L{ConnectionLimiter}
(TLS handshake time-out, a cap on connections over all listeners).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.logger import Logger

from ekey import __version__
from ekey.core import stattests
from ekey.core.keyring import Keyring, KeyringError
from ekey.core.kernel import FeedPolicy, KernelError
from ekey.core.pool import EntropyPool
from ekey.core.ratelimit import RateLimiter
from ekey.core.upstreamconfig import checkUpstreamDescription, splitPriority
from ekey.services._reactor import default
from ekey.services.config import DaemonConfig, privateUnixListener, unixPath
from ekey.services.control import checkControlEndpoint, controlService, resolveGroup
from ekey.services.daemon import Daemon
from ekey.services.device import KeyDirectoryService, KeyPathError, checkKeyPath
from ekey.services.feeder import KernelFeeder, openKernel
from ekey.services.keys import KeyManager
from ekey.services.ekeydcontrol import ekeydControlService, targetFromDaemon
from ekey.services.limits import ConnectionLimiter
from ekey.services.notify import SystemdNotifier
from ekey.services.server import EGDServerFactory
from ekey.services.sinks import FileSink, SinkError, SinkService
from ekey.services.upstream import PullPolicy, UpstreamService

log = Logger()


class ConfigError(ValueError):
    """
    The configuration cannot be used on this system; the message is one
    line naming the option and the fix.
    """


@dataclass
class Resources:
    """
    What L{prepare} opened for L{makeService}.

    @ivar keyring: the loaded keyring, or C{None} without keys.
    @ivar kernel: C{(kernel, policy)} from L{openKernel}, or C{None}.
    @ivar sink: the L{FileSink}, or C{None}.
    @ivar controlGroup: the control group's id, or C{None}.
    """

    keyring: Optional[Keyring] = None
    kernel: Optional[Tuple[object, FeedPolicy]] = None
    sink: Optional[FileSink] = None
    controlGroup: Optional[int] = None


def _checkEndpoints(config: DaemonConfig, reactor) -> None:
    from ekey.services.startup import EndpointError, checkEndpoint, listenersOf

    for option, description in listenersOf(config):
        try:
            checkEndpoint(option, description, reactor, server=True)
        except EndpointError as e:
            raise ConfigError(str(e)) from None
    for description in config.upstreams:
        try:
            checkUpstreamDescription(description)
        except ValueError as e:
            raise ConfigError(f"bad --upstream {description!r}: {e}") from None
        try:
            checkEndpoint("--upstream", splitPriority(description)[0], reactor, server=False)
        except EndpointError as e:
            raise ConfigError(str(e)) from None


def _checkControl(config: DaemonConfig) -> Optional[int]:
    """
    Check the control channels' endpoints (Unix sockets only, owner-only
    modes) and find the control group.

    @return: the control group's id, or C{None}.
    """
    group = None
    try:
        if config.controlGroup is not None:
            group = resolveGroup(config.controlGroup)
        if config.control:
            checkControlEndpoint(config.control, group)
        if config.ekeydControl:
            checkControlEndpoint(config.ekeydControl, group, "--ekeyd-control")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return group


def prepare(config: DaemonConfig, reactor=None, kernel=None) -> Resources:
    """
    Check what needs the system and open what must be opened while the
    process still has its privileges: the keyring, the kernel device, the
    output file.

    @param kernel: a kernel for L{openKernel}, for tests.
    @raise ValueError: from L{DaemonConfig.check}.
    @raise ConfigError: with one line naming the option and the fix.
    """
    reactor = default(reactor)
    config.check()
    for path in config.devices:
        try:
            checkKeyPath(path)
        except KeyPathError as e:
            raise ConfigError(str(e)) from None
    for directory in config.deviceDirs:
        # One that does not exist yet is watched until it appears.
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise ConfigError(f"--device-dir {directory} is not a directory")
    _checkEndpoints(config, reactor)
    resources = Resources(controlGroup=_checkControl(config))
    if config.devices or config.deviceDirs:
        try:
            resources.keyring = Keyring.load(config.keyring)
        except KeyringError as e:
            raise ConfigError(str(e)) from None
    if config.kernel:
        try:
            resources.kernel = openKernel(config.kernelInterval, config.kernelBytes, kernel)
        except KernelError as e:
            raise ConfigError(f"--kernel: {e}") from None
    if config.outputFile:
        try:
            resources.sink = FileSink(config.outputFile, config.outputMaxBytes, reactor=reactor)
        except SinkError as e:
            raise ConfigError(str(e)) from None
    return resources


def makeService(config: DaemonConfig, resources: Optional[Resources] = None,
                reactor=None) -> MultiService:
    """
    Build the daemon's services.

    @param resources: what L{prepare} opened; L{prepare} is called if
        C{None}.
    @raise ValueError: if C{resources} is C{None} and L{prepare} refuses.
    @return: a L{MultiService} with attributes C{pool}, C{keys} (the
        L{KeyManager}), C{daemon} (the L{Daemon}) and C{limiter} (the
        L{ConnectionLimiter}).
    """
    reactor = default(reactor)
    if resources is None:
        resources = prepare(config, reactor)
    top = MultiService()
    pool = top.pool = EntropyPool(config.poolSize)

    keys = top.keys = KeyManager(resources.keyring, pool, reactor=reactor,
                                 keyringPath=config.keyring)
    keys.setServiceParent(top)
    daemon = top.daemon = Daemon(keys, pool, reactor, reactor.stop)
    daemon.setServiceParent(top)
    # Sockets of our own, which must never be taken for keys.
    keys.ownSockets = [path for path in map(unixPath, config.ports + (
                           config.control or "", config.metrics or "", config.ekeydControl or ""))
                       if path]
    keys.configuredPaths = list(config.devices)
    for path in config.devices:
        keys.add(path)
    for directory in config.deviceDirs:

        def appeared(path):
            try:
                keys.add(path)
            except KeyPathError as e:
                log.warn("Not serving {path}: {reason}", path=path, reason=str(e))

        KeyDirectoryService(directory, appeared, keys.removePath,
                            exclude=list(config.devices), reactor=reactor).setServiceParent(top)
    if config.upstreams:
        policy = PullPolicy(pool, config.lowWater, config.pullHighWater,
                            stallTimeout=config.upstreamStallTimeout, reactor=reactor)
        top.pullPolicy = daemon.pullPolicy = policy
        for description in config.upstreams:
            UpstreamService(description, policy, reactor=reactor).setServiceParent(top)
    limiter = top.limiter = ConnectionLimiter(config.maxConnections, config.tlsHandshakeTimeout,
                                              reactor=reactor)
    # One factory per listener, so that each has its own clients and
    # counters; they share the pool, the per-client rate limits and the
    # connection cap.
    rates = RateLimiter(config.clientRate, config.clientBurst)
    for description in config.ports:
        factory = EGDServerFactory(
            pool, name=description, clock=reactor, limiter=rates,
            maxClients=config.maxClients, idleTimeout=config.idleTimeout,
            maxPendingBytes=config.maxPending)
        strports.service(privateUnixListener(description), limiter.wrap(factory),
                         reactor=reactor).setServiceParent(top)
        daemon.listeners.append((description, factory))
    if resources.sink is not None:
        SinkService(pool, resources.sink).setServiceParent(top)
        daemon.sinks.append(resources.sink)
    credit, creditReason = config.kernelCredit()
    if resources.kernel is not None:
        kernel, policy = resources.kernel
        top.kernelFeeder = daemon.kernelFeeder = KernelFeeder(
            pool, kernel, policy, credit, reactor=reactor)
        top.kernelFeeder.setServiceParent(top)
    if config.control:
        controlService(config.control, daemon, controlGroup=resources.controlGroup,
                       deviceDirs=config.deviceDirs, reactor=reactor).setServiceParent(top)
    if config.ekeydControl:
        ekeydControlService(config.ekeydControl, targetFromDaemon(daemon, config.deviceDirs),
                            reactor=reactor,
                            controlGroup=resources.controlGroup).setServiceParent(top)
    if config.metrics:
        from ekey.services.web import makeSite

        strports.service(privateUnixListener(config.metrics), limiter.wrap(makeSite(daemon)),
                         reactor=reactor).setServiceParent(top)
    # Ready for systemd (Type=notify) once the reactor runs and every key
    # given at start has been tried once.
    SystemdNotifier(keys.firstAttempts(), reactor=reactor).setServiceParent(top)
    log.info(
        "ekey {version} starting: {keys} key(s){directory}, {upstreams} upstream(s), keyring {keyring}, "
        "pool of {size} bytes, EGD on {ports}{kernel}; at most {cap} client connections; "
        "health tests {health}{source}",
        version=__version__,
        keys=len(config.devices),
        upstreams=len(config.upstreams),
        directory=_describeDirectories(config),
        keyring=config.keyring,
        size=config.poolSize,
        ports=", ".join(config.ports) or "no port",
        kernel=(f"; feeding the kernel, crediting {credit} bits a byte ({creditReason})"
                if resources.kernel is not None else ""),
        cap=limiter.maxConnections,
        health=("compiled" if stattests.ACCELERATED else
                "in pure Python (about ten times slower: install ekey where a C compiler "
                "and the Python headers are, to build them)"),
        source=f"; settings from {config.configFile}" if config.configFile else "",
    )
    return top


def _describeDirectories(config: DaemonConfig) -> str:
    """
    @return: the key directories, for the start line.
    """
    if not config.deviceDirs:
        return ""
    directories = ", ".join(config.deviceDirs)
    if config.defaultSources:
        return (f" and the keys that appear in {directories} (no --device, --device-dir or "
                "--upstream given: ekeyd's stock directories)")
    return f" and keys in {directories}"
