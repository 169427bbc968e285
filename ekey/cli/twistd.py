# -*- test-case-name: tests.test_twistd -*-
"""
C{twistd ekey}: the command line of the daemon.

    twistd -n ekey --device /dev/entropykey/XXXX --port tcp:8888:interface=127.0.0.1

L{Options} turns the command line into one L{DaemonConfig} and, in
L{Options.postOptions}, has it checked and its files opened
(L{ekey.services.assembly.prepare}), so that bad configuration stops
C{twistd} at start-up with a one-line message; L{makeService} hands both
to the assembly.
"""

from __future__ import annotations

import getopt
import re
import sys
from typing import Dict, Optional, Set, Tuple

from twisted.python import reflect, usage

from ekey import __version__

from ekey.core.configfile import ConfigError, loadTOML, readEkeydConf
from ekey.core.kernel import DEFAULT_BYTES, DEFAULT_INTERVAL, DEFAULT_SHANNONS_PER_BYTE
from ekey.core.keyring import DEFAULT_KEYRING
from ekey.core.pool import DEFAULT_POOL_SIZE
from ekey.services import assembly
from ekey.services.config import (
    DEFAULT_CONTROL,
    DEFAULT_OUTPUT_MAX_BYTES,
    DEFAULT_TLS_HANDSHAKE_TIMEOUT,
    DEFAULT_UPSTREAM_STALL_TIMEOUT,
    LOG_LEVELS,
    DaemonConfig,
)
from ekey.services.process import capabilitiesSurvive, disableCoreDumps
from ekey.services.server import DEFAULT_MAX_PENDING
from ekey.services.startup import checkPidFile
from ekey.services.upstream import DEFAULT_HIGH_WATER, DEFAULT_LOW_WATER

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    """
    Command-line options of C{twistd ekey}.

    @ivar config: the L{DaemonConfig}, after parsing.
    @ivar resources: what L{assembly.prepare} opened, after parsing.
    """

    synopsis = "[options]"
    longdesc = (
        "Read verified entropy from Entropy Keys and serve it over EGD "
        "(--port) or write it to a file or FIFO (--output-file). Every key "
        "must be in the keyring. Nothing is ever served that did not come "
        "from a verified source. With no --device, --device-dir or --upstream, "
        "the keys that appear in /dev/entropykey and /var/run/entropykeys are "
        "served, as ekeyd's stock configuration does."
    )

    #: The repeatable options (each an C{opt_} method), with the key their
    #: values are gathered under.  A configuration file gives them as arrays.
    repeatable = {"device": "devices", "device-dir": "device-dirs", "port": "ports",
                  "upstream": "upstreams"}

    #: The options that name a configuration file, which no file may set.
    fileOptions = ("config", "ekeyd-conf")

    optParameters = [
        ["config", None, None,
         "Read settings from this TOML file: its keys are the long option names, "
         "repeatable options as arrays. The command line overrides the file."],
        ["ekeyd-conf", None, None,
         "Read settings from ekeyd's own configuration file (such as "
         "/etc/entropykey/ekeyd.conf); a directive ekey does not honour is refused by "
         "name. The command line overrides the file."],
        ["keyring", "k", DEFAULT_KEYRING, "The keyring of long-term keys (ekeyd's format)."],
        ["output-file", "o", None, "Append verified entropy to this file or FIFO."],
        ["output-max-bytes", None, DEFAULT_OUTPUT_MAX_BYTES,
         "The most bytes a regular --output-file grows to; at the cap no more entropy "
         "is taken for it until it shrinks.", int],
        ["pool-size", None, DEFAULT_POOL_SIZE, "Bytes of entropy the pool holds.", int],
        ["low-water", None, DEFAULT_LOW_WATER,
         "Pull from upstreams when the pool holds fewer bytes than this.", int],
        ["high-water", None, None,
         f"Stop pulling from upstreams when the pool holds this many bytes. Default: "
         f"{DEFAULT_HIGH_WATER}, or --pool-size if that is smaller.", int],
        ["shannons-per-byte", None, None,
         f"Entropy credited to the kernel per byte (0 to 8). Default: "
         f"{DEFAULT_SHANNONS_PER_BYTE} when every source is verified (keys, unix:, "
         f"loopback tcp:, tls:), else 0.", int],
        ["kernel-interval", None, DEFAULT_INTERVAL,
         "Seconds between top-ups of the kernel's pool.", float],
        ["kernel-bytes", None, DEFAULT_BYTES, "Bytes per top-up of the kernel's pool.", int],
        ["control", None, DEFAULT_CONTROL,
         "The control channel (ekeyctl) endpoint; 'none' for no control channel. The default "
         "is a Unix socket, mode 0600, in the run directory (twistd --rundir)."],
        ["control-group", None, None,
         "A group whose members may use the control channels (their sockets are then "
         "mode 0660, that group's). Without it only root and the daemon's user may."],
        ["ekeyd-control", None, None,
         "Also serve ekeyd's own control protocol on this Unix socket (unix:PATH), for "
         "ekeydctl, ekeyd's munin plugin and udev script; the same owner-only rule."],
        ["client-rate", None, 0.0,
         "Bytes per second each EGD client may draw, keyed by identity (Unix user, "
         "certificate fingerprint, else address); 0 for no limit. A client over its share "
         "waits.", float],
        ["client-burst", None, 65536, "Bytes a client may draw at once after a rest.", int],
        ["max-clients", None, 0,
         "The most EGD clients at once on each --port (0: no limit).", int],
        ["max-connections", None, None,
         "The most client connections over all listeners; over it, the oldest that never "
         "sent a request is closed. Default: the file-descriptor limit less a reserve.", int],
        ["idle-timeout", None, 0.0,
         "Close EGD connections that send no request for this many seconds (0: never).",
         float],
        ["max-pending", None, DEFAULT_MAX_PENDING,
         "Bytes an EGD connection may have asked for and not yet received before its "
         "requests stop being read.", int],
        ["tls-handshake-timeout", None, DEFAULT_TLS_HANDSHAKE_TIMEOUT,
         "Seconds a client of a TLS listener has to complete its handshake.", float],
        ["upstream-stall-timeout", None, DEFAULT_UPSTREAM_STALL_TIMEOUT,
         "Seconds an upstream may deliver nothing of what it was asked before its demand "
         "is asked of the other upstreams.", float],
        ["metrics", None, None,
         "Serve Prometheus metrics (/metrics) and the status page (/) on this endpoint: "
         "plain on loopback only (tcp:9110:interface=127.0.0.1), or mtls:... for other "
         "hosts."],
        ["log-level", None, "info", f"The lowest level logged: {', '.join(LOG_LEVELS)}."],
    ]
    optFlags = [
        ["kernel", None, "Feed the Linux kernel's random pool (RNDADDENTROPY; needs "
         "CAP_SYS_ADMIN), on old kernels and new."],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        for gathered in self.repeatable.values():
            self[gathered] = []
        # usage.Options folds docstrings into the help as they are written,
        # indentation included: one space between words instead.
        self.docs = {name: " ".join(doc.split()) if doc else doc
                     for name, doc in self.docs.items()}
        #: The configuration file read, if any.
        self.configFile: Optional[str] = None
        self._fromFile: Set[str] = set()

    @classmethod
    def fileSettings(cls) -> Dict[str, type]:
        """
        The settings a configuration file may give: every parameter and
        flag of the option table but the file options themselves, so that
        a new option is accepted in a file as soon as it exists.

        @return: long option name to the type of its value in a file:
            C{int} or C{float} for a parameter coerced by that type, C{str}
            for the other parameters, C{bool} for a flag.
        """
        parameters, flags = [], []
        reflect.accumulateClassList(cls, "optParameters", parameters)
        reflect.accumulateClassList(cls, "optFlags", flags)
        known: Dict[str, type] = {}
        for parameter in parameters:
            name = parameter[0]
            if name in cls.fileOptions:
                continue
            coerce = parameter[4] if len(parameter) > 4 else None
            known[name] = coerce if coerce in (int, float) else str
        for flag in flags:
            known[flag[0]] = bool
        return known

    def _scan(self, argv) -> Optional[Tuple[Set[str], Dict[str, str]]]:
        """
        Look at the command line as L{usage.Options.parseOptions} will read
        it, without acting on it.

        @return: the long names of the options it gives, and the file
            options' values; C{None} if it cannot be read (the real parse
            then says why).
        """
        try:
            opts, _ = getopt.getopt(argv, self.shortOpt, self.longOpt)
        except getopt.error:
            return None
        given: Set[str] = set()
        files: Dict[str, str] = {}
        for opt, value in opts:
            name = opt[2:] if opt.startswith("--") else opt[1:]
            name = self.synonyms.get(name, name)
            given.add(name)
            if name in self.fileOptions:
                files[name] = value
        return given, files

    def _readFile(self, argv) -> None:
        """
        Read the configuration file that C{argv} names, if any, into this
        object's values, as defaults that the command line then overrides.
        A repeatable option in the file is used only if the command line
        does not give it.

        @raise usage.UsageError: with one line, if the file cannot be used.
        """
        scanned = self._scan(argv)
        if scanned is None:
            return
        given, files = scanned
        if not files or given & {"help", "version"}:
            return
        if len(files) > 1:
            raise usage.UsageError(
                "give --config or --ekeyd-conf, not both (ekey-convert-ekeyd-conf turns "
                "an ekeyd.conf into a TOML file to add settings to)")
        [(option, path)] = files.items()
        known = self.fileSettings()
        try:
            if option == "config":
                settings = loadTOML(path, known, self.repeatable)
            else:
                settings = readEkeydConf(path)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        for name, value in settings.items():
            if name in self.repeatable:
                if name not in given:
                    self[self.repeatable[name]] = list(value)
            elif known.get(name) is bool:
                self[name] = 1 if value else 0
            elif name in known:
                self[name] = value
            else:
                raise usage.UsageError(f"{path}: --{name} cannot be set in a file")
        self.configFile = path
        self._fromFile = set(settings) - given

    def _located(self, message: str) -> str:
        """
        @return: C{message}, saying which file gave the option it names if
            that option came from the configuration file.
        """
        for name in sorted(self._fromFile):
            if re.search(rf"--{re.escape(name)}(?![\w-])", message):
                return f"{message} (--{name} is from {self.configFile})"
        return message

    def opt_device(self, path):
        """
        A key: a serial device (such as /dev/entropykey/...) or a Unix
        socket path. Repeatable.
        """
        self["devices"].append(path)

    opt_d = opt_device

    def opt_device_dir(self, directory):
        """
        Serve every key that appears in this directory (such as
        /dev/entropykey); one that does not exist yet is watched until it
        appears. Repeatable.
        """
        self["device-dirs"].append(directory)

    def opt_port(self, description):
        """
        Serve EGD on this endpoint, such as tcp:8888,
        tcp:8888:interface=127.0.0.1 or unix:/run/ekey/egd (mode 0600 unless
        it says mode=). Repeatable.
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

    def opt_version(self):
        """
        Print the version and exit.
        """
        print(f"twistd ekey {__version__}")
        sys.exit(0)

    def _switchUID(self):
        parent = getattr(self, "parent", None)
        if parent is None:
            return None
        try:
            return parent["uid"]
        except KeyError:
            return None

    def toConfig(self) -> DaemonConfig:
        """
        @return: the parsed options as a L{DaemonConfig}; with no source,
            ekeyd's stock key directories (L{DaemonConfig.withDefaultSources}).
        """
        uid = self._switchUID()
        control = self["control"]
        return DaemonConfig(
            devices=tuple(self["devices"]),
            deviceDirs=tuple(self["device-dirs"]),
            keyring=self["keyring"],
            ports=tuple(self["ports"]),
            upstreams=tuple(self["upstreams"]),
            outputFile=self["output-file"],
            outputMaxBytes=self["output-max-bytes"],
            poolSize=self["pool-size"],
            lowWater=self["low-water"],
            highWater=self["high-water"],
            kernel=bool(self["kernel"]),
            shannonsPerByte=self["shannons-per-byte"],
            kernelInterval=self["kernel-interval"],
            kernelBytes=self["kernel-bytes"],
            control=None if control in (None, "none") else control,
            controlGroup=self["control-group"],
            ekeydControl=self["ekeyd-control"],
            clientRate=self["client-rate"],
            clientBurst=self["client-burst"],
            maxClients=self["max-clients"],
            maxConnections=self["max-connections"],
            idleTimeout=self["idle-timeout"],
            maxPending=self["max-pending"],
            tlsHandshakeTimeout=self["tls-handshake-timeout"],
            upstreamStallTimeout=self["upstream-stall-timeout"],
            metrics=self["metrics"],
            logLevel=self["log-level"],
            configFile=self.configFile,
            switchUID=uid,
            keepsCapabilities=uid is None or capabilitiesSurvive(uid),
        ).withDefaultSources()

    def parseOptions(self, options=None):
        """
        Parse the options, after reading the configuration file that
        C{--config} or C{--ekeyd-conf} names, whose settings are defaults
        the command line overrides.  Under C{twistd}, a refusal is one line on
        standard error and exit status 1: C{twistd} would print its whole
        usage before the message.

        @raise usage.UsageError: outside C{twistd} (tests, embedding).
        @raise SystemExit: under C{twistd}, after the one line.
        """
        if options is None:
            options = sys.argv[1:]
        try:
            self._readFile(options)
            usage.Options.parseOptions(self, options)
        except usage.UsageError as e:
            if not isinstance(getattr(self, "parent", None), usage.Options):
                raise
            sys.stderr.write(f"twistd ekey: {e}\n")
            sys.stderr.flush()
            raise SystemExit(1) from None

    def postOptions(self):
        """
        Build the configuration, check it and open its files.

        @raise usage.UsageError: with one line, if anything is wrong.
        """
        parent = getattr(self, "parent", None)
        if isinstance(parent, usage.Options):
            # Before twistd's own four-line refusal of a second daemon.
            try:
                checkPidFile(parent.get("pidfile"))
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        self.config = self.toConfig()
        try:
            self.resources = assembly.prepare(self.config)
        except ValueError as e:
            raise usage.UsageError(self._located(str(e))) from None


def makeService(options: Options, reactor=None):
    """
    Build the daemon from parsed L{Options}, with core dumps disabled and
    logging filtered to C{--log-level}, under a
    L{ekey.services.startup.StartupGuard}: a listener
    that cannot bind (a port in use, another daemon's control socket) stops
    C{twistd} with one line on standard error and exit status 1.

    @return: the daemon's services, whose attributes (C{daemon}, C{pool},
        C{keys}...) are the assembly's.
    """
    from ekey.services.startup import StartupGuard, listenersOf

    disableCoreDumps()
    filterLogging(options.config.logLevel)
    service = assembly.makeService(options.config, options.resources, reactor=reactor)
    parent = getattr(options, "parent", None)
    return StartupGuard(service, listenersOf(options.config), prog="twistd ekey",
                        serverOptions=parent if isinstance(parent, usage.Options) else None)


def filterLogging(level: str, beginner=None) -> None:
    """
    Log only events at C{level} or above: wrap the observers that twistd
    starts logging to (after L{makeService}) in a level filter.

    @param level: a name from L{LOG_LEVELS}.
    @param beginner: the L{twisted.logger.LogBeginner} (default the global
        one).
    """
    from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate,
                                globalLogBeginner)

    beginner = beginner or globalLogBeginner
    if getattr(beginner, "_ekeyFiltered", False):
        return
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    begin = beginner.beginLoggingTo

    def beginLoggingTo(observers, *args, **kwargs):
        return begin([FilteringLogObserver(o, [predicate]) for o in observers],
                     *args, **kwargs)

    beginner.beginLoggingTo = beginLoggingTo
    beginner._ekeyFiltered = True
