# -*- test-case-name: tests.test_tap -*-
"""
C{twistd ekey}: the daemon, assembled from services under one
L{MultiService}.

    twistd -n ekey --device /dev/entropykey/XXXX --port tcp:8888:interface=127.0.0.1

Keys feed one L{EntropyPool}; EGD listeners (C{--port}) and the output
file (C{--output-file}) draw from it, each byte going to exactly one of
them.  Every option is checked in L{Options.postOptions}, so that bad
configuration stops C{twistd} at start-up with a one-line message, and
listeners are C{strports} services, so that a failed bind does too.
"""

from __future__ import annotations

import os

from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.logger import Logger
from twisted.python import usage

from ekey.services.daemon import Daemon
from ekey.services.device import KeyDirectoryService, KeyPathError, checkKeyPath
from ekey.services.feeder import KernelFeeder, openKernel
from ekey.core.kernel import (
    DEFAULT_BYTES,
    DEFAULT_INTERVAL,
    DEFAULT_SHANNONS_PER_BYTE,
    KernelError,
)
from ekey.core.keyring import DEFAULT_KEYRING, Keyring, KeyringError
from ekey.services.keys import KeyManager
from ekey.core.pool import DEFAULT_POOL_SIZE, EntropyPool
from ekey.core.ratelimit import RateLimiter
from ekey.services.server import DEFAULT_MAX_PENDING, EGDServerFactory
from ekey.services.sinks import FileSink, SinkError
from ekey.services.upstream import DEFAULT_HIGH_WATER, DEFAULT_LOW_WATER, PullPolicy, UpstreamService

log = Logger()

#: The control channel's default: a private Unix socket in the run directory
#: (C{twistd --rundir}, such as C{/run/ekey}, where ekeyctl looks first).
DEFAULT_CONTROL = "unix:control.sock:mode=600:lockfile=1"


class Options(usage.Options):
    """
    Command-line options of C{twistd ekey}.
    """

    synopsis = "[options]"
    longdesc = (
        "Read verified entropy from Entropy Keys and serve it over EGD "
        "(--port) or write it to a file or FIFO (--output-file). Every key "
        "must be in the keyring. Nothing is ever served that did not come "
        "from a verified key."
    )

    optParameters = [
        ["keyring", "k", DEFAULT_KEYRING, "The keyring of long-term keys (ekeyd's format)."],
        ["output-file", "o", None, "Append verified entropy to this file or FIFO."],
        ["pool-size", None, DEFAULT_POOL_SIZE, "Bytes of entropy the pool holds.", int],
        ["device-dir", None, None,
         "Serve every key that appears in this directory (such as /dev/entropykey)."],
        ["low-water", None, DEFAULT_LOW_WATER,
         "Pull from upstreams when the pool holds fewer bytes than this.", int],
        ["high-water", None, DEFAULT_HIGH_WATER,
         "Stop pulling from upstreams when the pool holds this many bytes.", int],
        ["shannons-per-byte", None, DEFAULT_SHANNONS_PER_BYTE,
         "Entropy credited to the kernel per byte (0 to 8).", int],
        ["kernel-interval", None, DEFAULT_INTERVAL,
         "Seconds between top-ups of the kernel's pool.", float],
        ["kernel-bytes", None, DEFAULT_BYTES, "Bytes per top-up of the kernel's pool.", int],
        ["control", None, DEFAULT_CONTROL,
         "The control channel (ekeyctl) endpoint; 'none' for no control channel. The default "
         "is a Unix socket, mode 0600, in the run directory (twistd --rundir)."],
        ["client-rate", None, 0.0,
         "Bytes per second each EGD client may draw (keyed by certificate identity, else "
         "address); 0 for no limit. A client over its share waits.", float],
        ["client-burst", None, 65536, "Bytes a client may draw at once after a rest.", int],
        ["max-clients", None, 0,
         "The most EGD clients at once on each --port (0: no limit).", int],
        ["idle-timeout", None, 0.0,
         "Close EGD connections that send no request for this many seconds (0: never).",
         float],
        ["max-pending", None, DEFAULT_MAX_PENDING,
         "Bytes an EGD connection may have asked for and not yet received before its "
         "requests stop being read.", int],
        ["metrics", None, None,
         "Serve Prometheus metrics (/metrics) and the status page (/) on this endpoint, "
         "such as tcp:9110:interface=127.0.0.1."],
    ]
    optFlags = [
        ["kernel", None, "Feed the Linux kernel's random pool (RNDADDENTROPY; needs "
         "CAP_SYS_ADMIN), on old kernels and new."],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        self["devices"] = []
        self["ports"] = []
        self["upstreams"] = []

    def opt_device(self, path):
        """
        A key: a serial device (such as /dev/entropykey/...) or a Unix
        socket path. Repeatable.
        """
        self["devices"].append(path)

    opt_d = opt_device

    def opt_port(self, description):
        """
        Serve EGD on this endpoint, such as tcp:8888,
        tcp:8888:interface=127.0.0.1 or unix:/run/ekey/egd:mode=660.
        Repeatable.
        """
        self["ports"].append(description)

    opt_p = opt_port

    def opt_upstream(self, description):
        """
        Pull entropy from this EGD server: a client endpoint such as
        tcp:host:8888, unix:/run/ekey/egd or
        tls:host:8888:trustRoots=DIR:certificate=FILE:privateKey=FILE.
        Repeatable.
        """
        self["upstreams"].append(description)

    opt_u = opt_upstream

    def postOptions(self):
        self._checkKeys()
        self._checkPorts()
        if self["pool-size"] < 1:
            raise usage.UsageError("--pool-size must be at least 1 byte")
        self._checkLimits()
        if self["upstreams"]:
            self._checkUpstreams()
        self["keyringObject"] = None
        if self["devices"] or self["device-dir"]:
            try:
                self["keyringObject"] = Keyring.load(self["keyring"])
            except KeyringError as e:
                raise usage.UsageError(str(e)) from None
        if not self["output-file"] and not self["ports"] and not self["kernel"]:
            raise usage.UsageError(
                "nothing to do with the entropy: give --port, --output-file or --kernel")
        self["kernelFeed"] = None
        if self["kernel"]:
            if not 0 <= self["shannons-per-byte"] <= 8:
                raise usage.UsageError("--shannons-per-byte must be between 0 and 8")
            try:
                self["kernelFeed"] = openKernel(self["kernel-interval"], self["kernel-bytes"])
            except KernelError as e:
                raise usage.UsageError(f"--kernel: {e}") from None
        self["sinks"] = []
        if self["output-file"]:
            try:
                self["sinks"].append(FileSink(self["output-file"]))
            except SinkError as e:
                raise usage.UsageError(str(e)) from None

    def _checkKeys(self):
        if not self["devices"] and not self["device-dir"] and not self["upstreams"]:
            raise usage.UsageError(
                "give at least one source: --device, --device-dir or --upstream")
        for path in self["devices"]:
            if self["devices"].count(path) > 1:
                raise usage.UsageError(f"key {path} is given more than once")
            try:
                checkKeyPath(path)
            except KeyPathError as e:
                raise usage.UsageError(str(e)) from None
        directory = self["device-dir"]
        if directory and not os.path.isdir(directory):
            raise usage.UsageError(f"--device-dir {directory} is not a directory")

    def _checkLimits(self):
        for name in ("client-rate", "client-burst", "max-clients", "idle-timeout"):
            if self[name] < 0:
                raise usage.UsageError(f"--{name} cannot be negative")
        if self["max-pending"] < 255:
            raise usage.UsageError("--max-pending must allow one request (255 bytes)")
        if self["client-rate"] and self["client-burst"] < 1:
            raise usage.UsageError("--client-burst must be at least 1 byte with --client-rate")

    def _checkUpstreams(self):
        from twisted.internet import endpoints, reactor

        if not 0 <= self["low-water"] < self["high-water"] <= self["pool-size"]:
            raise usage.UsageError(
                f"need 0 <= --low-water ({self['low-water']}) < --high-water "
                f"({self['high-water']}) <= --pool-size ({self['pool-size']})")
        for description in self["upstreams"]:
            if self["upstreams"].count(description) > 1:
                raise usage.UsageError(f"--upstream {description} is given more than once")
            try:
                endpoints.clientFromString(reactor, description)
            except (ValueError, KeyError, TypeError, OSError) as e:
                raise usage.UsageError(f"bad --upstream {description!r}: {e}") from None

    def _checkPorts(self):
        from twisted.internet import endpoints, reactor

        if self["control"] == "none":
            self["control"] = None
        listeners = [("--port", d) for d in self["ports"]]
        listeners += [(f"--{name}", self[name]) for name in ("control", "metrics") if self[name]]
        for option, description in listeners:
            if self["ports"].count(description) > 1:
                raise usage.UsageError(f"--port {description} is given more than once")
            try:
                endpoints.serverFromString(reactor, description)
            except (ValueError, KeyError, TypeError) as e:
                raise usage.UsageError(f"bad {option} {description!r}: {e}") from None


class SinkService(Service):
    """
    Feed a sink from the pool, in turn with the pool's other readers.
    """

    def __init__(self, pool: EntropyPool, sink):
        self.pool = pool
        self.sink = sink
        self._pending = None

    def startService(self):
        Service.startService(self)
        self._pending = self.pool.request(None, self.sink.write)

    def stopService(self):
        Service.stopService(self)
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self.sink.close()


def _unixPath(description: str):
    """
    @return: the path of a C{unix:} endpoint description, else C{None}.
    """
    if not description.startswith("unix:"):
        return None
    return description[len("unix:"):].split(":")[0].replace("\\", "") or None


def makeService(options, reactor=None):
    """
    Build the daemon's services from parsed L{Options}.

    @return: a L{MultiService} with attributes C{pool}, C{keys} (the
        L{KeyManager}) and C{daemon} (the L{Daemon}).
    """
    if reactor is None:
        from twisted.internet import reactor
    top = MultiService()
    keyring = options["keyringObject"]
    pool = EntropyPool(options["pool-size"])
    top.pool = pool

    keys = KeyManager(keyring, pool, reactor=reactor)
    keys.setServiceParent(top)
    top.keys = keys
    daemon = Daemon(keys, pool, reactor, reactor.stop)
    daemon.setServiceParent(top)
    top.daemon = daemon
    keys.ownSockets = [_unixPath(d) for d in options["ports"] + [options["control"] or ""]
                       if _unixPath(d)]
    for path in options["devices"]:
        keys.add(path)
    if options["device-dir"]:

        def appeared(path):
            try:
                keys.add(path)
            except KeyPathError as e:
                log.warn("Not serving {path}: {reason}", path=path, reason=str(e))

        KeyDirectoryService(options["device-dir"], appeared, keys.removePath,
                            exclude=options["devices"], reactor=reactor).setServiceParent(top)
    if options["upstreams"]:
        policy = PullPolicy(pool, options["low-water"], options["high-water"])
        top.pullPolicy = daemon.pullPolicy = policy
        for description in options["upstreams"]:
            UpstreamService(description, policy, reactor=reactor).setServiceParent(top)
    # One factory per listener, so that each has its own clients and
    # counters; they share the pool and the per-client rate limits.
    limiter = RateLimiter(options["client-rate"], options["client-burst"])
    for description in options["ports"]:
        factory = EGDServerFactory(
            pool, name=description, clock=reactor, limiter=limiter,
            maxClients=options["max-clients"], idleTimeout=options["idle-timeout"],
            maxPendingBytes=options["max-pending"])
        strports.service(description, factory, reactor=reactor).setServiceParent(top)
        daemon.listeners.append((description, factory))
    for sink in options["sinks"]:
        SinkService(pool, sink).setServiceParent(top)
        daemon.sinks.append(sink)
    if options["kernelFeed"] is not None:
        kernel, policy = options["kernelFeed"]
        top.kernelFeeder = KernelFeeder(pool, kernel, policy, options["shannons-per-byte"],
                                        reactor=reactor)
        top.kernelFeeder.setServiceParent(top)
        daemon.kernelFeeder = top.kernelFeeder
    if options["control"]:
        from ekey.services.control import ControlFactory

        strports.service(options["control"], ControlFactory(daemon),
                         reactor=reactor).setServiceParent(top)
    if options["metrics"]:
        from ekey.services.web import makeSite

        strports.service(options["metrics"], makeSite(daemon),
                         reactor=reactor).setServiceParent(top)
    log.info(
        "ekey starting: {keys} key(s){directory}, {upstreams} upstream(s), keyring {keyring}, "
        "pool of {size} bytes, EGD on {ports}",
        keys=len(options["devices"]),
        upstreams=len(options["upstreams"]),
        directory=f" and keys in {options['device-dir']}" if options["device-dir"] else "",
        keyring=options["keyring"],
        size=options["pool-size"],
        ports=", ".join(options["ports"]) or "no port",
    )
    return top
