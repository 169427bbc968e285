"""
Tests for the shipped systemd units (examples/systemd, its socket-activation/,
examples/bastion/systemd): they fit together, set the limits the daemon
derives its caps from, name only options the daemon has, tell systemd when
they are ready, take the sockets their .socket units pass, and are sandboxed
tightly enough.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
from typing import Dict, List, Tuple

from twisted.trial.unittest import TestCase

from tests.interop.requirements import findPeer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = sorted(glob.glob(os.path.join(REPO_ROOT, "examples", "**", "*.service"),
                         recursive=True))
SOCKETS = sorted(glob.glob(os.path.join(REPO_ROOT, "examples", "**", "*.socket"),
                           recursive=True))

#: The most exposure `systemd-analyze security` may rate a shipped unit.
MAX_EXPOSURE = 2.0


class UnitSyntaxError(ValueError):
    """
    A unit file line that is neither a section, a comment nor KEY=VALUE.
    """


def parseUnit(text: str) -> Dict[str, Dict[str, List[str]]]:
    """
    Parse a systemd unit as systemd does for what these tests need:
    sections, repeatable keys, backslash continuation lines.

    @return: section name to key to every value given, in order.
    @raise UnitSyntaxError: on a line that is none of those.
    """
    sections: Dict[str, Dict[str, List[str]]] = {}
    current = None
    pending = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = pending + raw.strip() if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, equals, value = line.partition("=")
        if current is None or not equals or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key):
            raise UnitSyntaxError(f"line {number}: {raw!r}")
        current.setdefault(key, []).append(value)
    if pending:
        raise UnitSyntaxError("the last line continues into nothing")
    return sections


def exposure(output: str) -> float:
    """
    @param output: what C{systemd-analyze security --offline=true UNIT} printed.
    @return: the unit's overall exposure level.
    @raise ValueError: if the output has no (or more than one) such line.
    """
    levels = re.findall(r"^\u2192 Overall exposure level for \S+: (\d+(?:\.\d+)?) ",
                        output, re.M)
    if len(levels) != 1:
        raise ValueError(f"expected one overall exposure level, found {len(levels)}")
    return float(levels[0])


def loadUnit(path: str) -> Dict[str, Dict[str, List[str]]]:
    with open(path) as f:
        return parseUnit(f.read())


def execStart(unit) -> List[str]:
    """
    @return: the words of a unit's one C{ExecStart=}.
    """
    (command,) = unit["Service"]["ExecStart"]
    return shlex.split(command)


def optionValues(argv: List[str], name: str) -> List[str]:
    """
    @return: every value of C{--name VALUE} or C{--name=VALUE} in C{argv}.
    """
    values = []
    for i, word in enumerate(argv):
        if word == name and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif word.startswith(name + "="):
            values.append(word[len(name) + 1:])
    return values


def unixPath(description: str) -> str:
    return description[len("unix:"):].split(":")[0]


def systemdPorts(argv: List[str]) -> List[Tuple[str, int]]:
    """
    @return: C{(domain, index)} of every C{--port systemd:...} in C{argv}.
    @raise ValueError: for a C{systemd:} port without both, or with a
        C{name=} (the shipped units take descriptors by index).
    """
    ports = []
    for description in optionValues(argv, "--port"):
        if not description.startswith("systemd:"):
            continue
        fields = dict(field.partition("=")[::2]
                      for field in description[len("systemd:"):].split(":"))
        if set(fields) != {"domain", "index"} or not fields["index"].isdigit():
            raise ValueError(f"{description!r}: give domain= and index= only")
        ports.append((fields["domain"], int(fields["index"])))
    return ports


def listenDomain(listen: str) -> str:
    """
    @param listen: a C{ListenStream=} value.
    @return: the address family systemd binds it in, as Twisted's
        C{systemd:domain=} names it: C{UNIX} for a path or abstract name,
        C{INET} for an IPv4 address, C{INET6} for an IPv6 address or a bare
        port (which systemd binds dual-stack).
    @raise ValueError: for anything else.
    """
    if listen.startswith(("/", "@")):
        return "UNIX"
    if listen.isdigit():
        return "INET6"
    if re.fullmatch(r"\[[0-9A-Fa-f:.]+\]:\d+", listen):
        return "INET6"
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+:\d+", listen):
        return "INET"
    raise ValueError(f"ListenStream={listen!r} is not a path, address or port")


def activationProblems(service, socketUnit) -> List[str]:
    """
    @return: what is wrong with a service taking its EGD sockets from a
        socket unit: every C{--port systemd:domain=D:index=I} must name an
        existing C{ListenStream=} line (in order) of family C{D}, and every
        such line must be taken; empty if nothing is.
    """
    listens = socketUnit.get("Socket", {}).get("ListenStream", [])
    problems = []
    taken = set()
    for domain, index in systemdPorts(execStart(service)):
        if index >= len(listens):
            problems.append(f"index={index}: the socket unit has {len(listens)} ListenStream")
            continue
        actual = listenDomain(listens[index])
        if actual != domain:
            problems.append(f"index={index} is {listens[index]} ({actual}), not {domain}")
        taken.add(index)
    problems += [f"ListenStream={listens[i]} (index {i}) is taken by no --port"
                 for i in range(len(listens)) if i not in taken]
    return problems


class CheckerTests(TestCase):
    """
    The parsers these tests rely on reject what they must.
    """

    def test_parseUnitRejectsMalformedLines(self):
        """
        A line outside any section, or one without C{=}, is an error.
        """
        for text in ("Description=x\n", "[Unit]\nDescription\n", "[Unit]\n=x\n",
                     "[Service]\nExecStart=a \\\n"):
            self.assertRaises(UnitSyntaxError, parseUnit, text)

    def test_parseUnitContinuationAndRepeats(self):
        """
        Continued lines join, and a repeated key keeps every value.
        """
        unit = parseUnit("[Service]\nExecStart=a \\\n   b\nX=1\nX=2\n# c\n")
        self.assertEqual(unit["Service"]["ExecStart"], ["a  b"])
        self.assertEqual(unit["Service"]["X"], ["1", "2"])

    def test_systemdPortsRejectsNames(self):
        """
        A C{systemd:} port without an index (or with a name) is refused;
        others are read as (domain, index) and other ports are ignored.
        """
        self.assertRaises(ValueError, systemdPorts, ["--port", "systemd:domain=UNIX"])
        self.assertRaises(ValueError, systemdPorts,
                          ["--port", "systemd:domain=UNIX:name=egd"])
        self.assertEqual(systemdPorts(["--port", "systemd:domain=INET:index=1",
                                       "--port=tcp:8888"]), [("INET", 1)])

    def test_listenDomain(self):
        """
        Each C{ListenStream=} form maps to its family; nonsense is refused.
        """
        self.assertEqual([listenDomain(v) for v in ("/run/x", "@x", "127.0.0.1:8888",
                                                    "[::1]:8888", "8888")],
                         ["UNIX", "UNIX", "INET", "INET6", "INET6"])
        self.assertRaises(ValueError, listenDomain, "localhost:8888")

    def test_activationProblems(self):
        """
        A service whose indices or domains do not match its socket unit, or
        that leaves a socket untaken, is reported; a matching one is not.
        """
        socketUnit = parseUnit("[Socket]\nListenStream=/run/e\nListenStream=127.0.0.1:1\n")

        def service(*ports):
            words = " ".join(f"--port {p}" for p in ports)
            return parseUnit(f"[Service]\nExecStart=twistd ekey {words}\n")

        good = service("systemd:domain=UNIX:index=0", "systemd:domain=INET:index=1")
        self.assertEqual(activationProblems(good, socketUnit), [])
        for bad in (service("systemd:domain=INET:index=0", "systemd:domain=UNIX:index=1"),
                    service("systemd:domain=UNIX:index=0", "systemd:domain=INET:index=2"),
                    service("systemd:domain=UNIX:index=0")):
            self.assertNotEqual(activationProblems(bad, socketUnit), [])

    def test_exposureRejectsOtherOutput(self):
        """
        Output without exactly one overall level is refused, not read as 0.
        """
        self.assertRaises(ValueError, exposure, "")
        self.assertRaises(ValueError, exposure, "Overall exposure level: 1.0\n")
        line = "\u2192 Overall exposure level for a.service: 1.5 OK\n"
        self.assertRaises(ValueError, exposure, line * 2)
        self.assertEqual(exposure("x\n" + line), 1.5)


class ShippedUnitTests(TestCase):
    """
    The units as shipped.
    """

    def test_unitsFound(self):
        """
        The daemon's, the feeder's and the bastion example's units are all
        checked here.
        """
        names = {os.path.relpath(p, os.path.join(REPO_ROOT, "examples")) for p in UNITS}
        self.assertTrue({"systemd/ekey.service", "systemd/ekey-feed-kernel.service",
                         "systemd/socket-activation/ekey.service",
                         "bastion/systemd/ekey-keyhost.service",
                         "bastion/systemd/ekey-bastion.service",
                         "bastion/systemd/ekey-relay.service"} <= names, names)
        self.assertIn(os.path.join(REPO_ROOT, "examples", "systemd", "socket-activation",
                                   "ekey.socket"), SOCKETS)

    def test_feederConnectsWhereTheDaemonServes(self):
        """
        C{ekey-feed-kernel.service} reads from a Unix socket that
        C{ekey.service} serves, and its user is in the socket's group.
        """
        directory = os.path.join(REPO_ROOT, "examples", "systemd")
        daemon = loadUnit(os.path.join(directory, "ekey.service"))
        feeder = loadUnit(os.path.join(directory, "ekey-feed-kernel.service"))
        served = {unixPath(d) for d in optionValues(execStart(daemon), "--port")
                  if d.startswith("unix:")}
        (connect,) = optionValues(execStart(feeder), "--connect")
        self.assertTrue(connect.startswith("unix:"), connect)
        self.assertIn(unixPath(connect), served)
        (socket,) = [d for d in optionValues(execStart(daemon), "--port")
                     if unixPath(d) == unixPath(connect)]
        self.assertIn(":mode=660", socket)
        self.assertEqual(daemon["Service"]["Group"], ["ekey"])
        self.assertEqual(feeder["Service"]["SupplementaryGroups"], ["ekey"])

    def test_socketActivation(self):
        """
        Every shipped C{.socket} unit has its C{.service}, which takes each
        of its sockets by the right index and family, and starts after it.
        """
        for path in SOCKETS:
            socketUnit = loadUnit(path)
            servicePath = path[:-len(".socket")] + ".service"
            self.assertTrue(os.path.exists(servicePath), servicePath)
            service = loadUnit(servicePath)
            self.assertEqual(activationProblems(service, socketUnit), [], servicePath)
            self.assertIn(os.path.basename(path),
                          " ".join(service["Unit"].get("After", [])).split())

    def test_feederConnectsWhereTheActivatedDaemonServes(self):
        """
        The feeder's socket is also the first socket of the socket-activated
        daemon, mode 0660, group ekey.
        """
        directory = os.path.join(REPO_ROOT, "examples", "systemd")
        feeder = loadUnit(os.path.join(directory, "ekey-feed-kernel.service"))
        socketUnit = loadUnit(os.path.join(directory, "socket-activation", "ekey.socket"))
        (connect,) = optionValues(execStart(feeder), "--connect")
        self.assertEqual(socketUnit["Socket"]["ListenStream"][0], unixPath(connect))
        self.assertEqual(socketUnit["Socket"]["SocketMode"], ["0660"])
        self.assertEqual(socketUnit["Socket"]["SocketGroup"], ["ekey"])

    def test_notify(self):
        """
        The daemon's units (examples/systemd) are C{Type=notify} with a
        watchdog, notified by the daemon's process alone; and every
        C{Type=notify} unit runs twistd in the foreground (C{--nodaemon}),
        so that the process that notifies is the unit's main process.
        """
        for path in glob.glob(os.path.join(REPO_ROOT, "examples", "systemd", "**",
                                           "ekey.service"), recursive=True):
            service = loadUnit(path)["Service"]
            self.assertEqual((service["Type"], service.get("NotifyAccess")),
                             (["notify"], ["main"]), path)
            (watchdog,) = service["WatchdogSec"]
            self.assertGreater(int(watchdog), 0, path)
        for path in UNITS:
            unit = loadUnit(path)
            if unit["Service"].get("Type") == ["notify"]:
                argv = execStart(unit)
                self.assertTrue({"--nodaemon", "-n"} & set(argv), path)

    def test_noWorldAccessibleSockets(self):
        """
        No shipped unit makes a socket anyone on the host may use.
        """
        for path in SOCKETS:
            (mode,) = loadUnit(path)["Socket"].get("SocketMode", ["0666"])
            self.assertEqual(int(mode, 8) & 0o007, 0, path)
        for path in UNITS:
            for description in optionValues(execStart(loadUnit(path)), "--port"):
                mode = re.search(r":mode=([0-7]+)", description)
                if description.startswith("unix:") and mode:
                    self.assertEqual(int(mode.group(1), 8) & 0o007, 0, (path, description))

    def test_limitNOFILE(self):
        """
        Every unit sets C{LimitNOFILE}, above any client cap it gives with
        room for keys, upstreams and the control socket.
        """
        for path in UNITS:
            unit = loadUnit(path)
            (limit,) = unit["Service"].get("LimitNOFILE", [None])
            self.assertIsNotNone(limit, path)
            for cap in optionValues(execStart(unit), "--max-clients"):
                self.assertGreater(int(limit), int(cap) + 64, path)

    def test_optionsAreTheDaemons(self):
        """
        Every option a daemon unit passes to C{twistd ekey} is one the
        daemon has.
        """
        from ekey.cli.twistd import Options

        known = set()
        for name in ([p[0] for p in Options.optParameters]
                     + [f[0] for f in Options.optFlags]):
            known.add("--" + name)
        known.update("--" + name[len("opt_"):].replace("_", "-")
                     for name in dir(Options) if name.startswith("opt_"))
        for path in UNITS:
            argv = execStart(loadUnit(path))
            # The subcommand: "ekey" where it is not the value of a
            # twistd option such as --uid ekey.
            starts = [i for i, word in enumerate(argv) if word == "ekey"
                      and argv[i - 1] not in ("--uid", "-u", "--gid", "-g")]
            if not starts:
                continue
            for word in argv[starts[0] + 1:]:
                if word.startswith("--"):
                    self.assertIn(word.split("=")[0], known, path)

    def test_securityExposure(self):
        """
        C{systemd-analyze security} rates every shipped unit at
        L{MAX_EXPOSURE} or lower.
        """
        analyze = findPeer("systemd-analyze", "systemd")
        for path in UNITS:
            result = subprocess.run([analyze, "security", "--offline=true", path],
                                    capture_output=True, text=True, timeout=60)
            level = exposure(result.stdout + result.stderr)
            self.assertLessEqual(level, MAX_EXPOSURE, os.path.basename(path))
