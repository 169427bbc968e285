"""
Interop with ekeyd's own control clients: the real C{ekeydctl} (list,
stats, add, addall, remove, keyring, shutdown) and the real munin plugin
C{/usr/share/munin/plugins/ekeyd_stat_}, unchanged, against our daemon's
ekeyd control socket (L{ekey.services.ekeydcontrol}), with keys from the
simulator; and the statistic names against the real C{ekeyd}'s.

C{ekeydctl} reads its socket's path from C{/etc/entropykey/ekeyd.conf}, a
path written into the script.  The tests leave that file alone: Lua's
standalone interpreter runs C{LUA_INIT} before the script, and
L{EKEYDCTL_LUA_INIT} there wraps C{loadfile} so that this one path reads
a private configuration instead (named by C{EKEYDCTL_CONF}).  The munin
plugin takes its socket from the C{controlsocket} environment variable, as
munin-node passes it from C{plugin-conf.d}.

Our server is the real daemon, C{twistd -n ekey} from the source tree
(L{startDaemon}), with its ekeyd control socket (C{--ekeyd-control}).  It
is also started from configuration files: a copy of the stock
C{/etc/entropykey/ekeyd.conf} rewritten to private paths
(C{--ekeyd-conf}), and a TOML file (C{--config}); the real C{ekeydctl}
lists its key and C{ekey-egd} reads from the EGD socket the file names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

from twisted.trial.unittest import FailTest, SkipTest, TestCase

from ekey.core.ekeydcontrol import EKEYD_STATISTICS
from tests.interop.processes import (
    RunningProcess,
    SERIAL,
    assertNoTraceback,
    daemonLog,
    ekeydControl,
    makeTempDir,
    pythonEnvironment,
    socketPath,
    startDaemon,
    startEkeyd,
    startSimulator,
    waitFor,
    waitForListening,
    writeKeyring,
)
from tests.interop.requirements import findPeer, interopRequired

#: Where ekeydctl reads its configuration (written into the script).
SYSTEM_CONF = "/etc/entropykey/ekeyd.conf"

#: The munin plugin, as the ekeyd package installs it.
MUNIN_PLUGIN = "/usr/share/munin/plugins/ekeyd_stat_"

#: Run by lua5.1 before ekeydctl: read $EKEYDCTL_CONF instead of the
#: system configuration, and nothing else changes.
EKEYDCTL_LUA_INIT = (
    "local loadfile_ = loadfile "
    "function loadfile(path, ...) "
    f'if path == "{SYSTEM_CONF}" then path = assert(os.getenv("EKEYDCTL_CONF")) end '
    "return loadfile_(path, ...) end"
)

#: Simulated keys send information frames often, so that their readings
#: are in within a second.
SIMULATOR_OPTIONS = ["--info-every", "25"]


def requireFile(path: str, package: str) -> str:
    """
    @return: C{path}, which must exist.
    @raise SkipTest: if it does not.
    @raise FailTest: instead, if C{EKEY_REQUIRE_INTEROP=1}.
    """
    if os.path.exists(path):
        return path
    message = f"{path} is not installed: apt-get install {package}"
    if interopRequired():
        raise FailTest(f"{message} (required: EKEY_REQUIRE_INTEROP=1)")
    raise SkipTest(message)


class _Mixin:
    """
    A simulated key, our daemon serving it with an ekeyd control socket,
    and ways to run the real clients against that socket.
    """

    def requirePeers(self) -> None:
        """
        Skip (or fail) before starting anything if a real client is missing.
        """

    def setUp(self):
        self.requirePeers()
        self.directory = makeTempDir(self)
        os.chmod(self.directory, 0o755)
        self.keyring = writeKeyring(os.path.join(self.directory, "keyring"))
        self.keySocket = socketPath(self, self.directory)
        self.simulator = startSimulator(self, self.directory, listen=self.keySocket, rate=None,
                                        extra=SIMULATOR_OPTIONS)

    def startServer(self, public: bool = False) -> RunningProcess:
        """
        Start our daemon (C{twistd -n ekey}) on the key, with its ekeyd
        control socket, and wait until the socket listens.

        @param public: put the socket (and ekeydctl's configuration) in a
            directory that every user can reach.
        """
        if public:
            directory = tempfile.mkdtemp(prefix="ekey-")
            self.addCleanup(shutil.rmtree, directory, True)
            os.chmod(directory, 0o755)
            control = os.path.join(directory, "ekeyd.sock")
        else:
            control = socketPath(self, self.directory, "ekeyd.sock")
        egd = socketPath(self, self.directory, "egd.sock")
        server = startDaemon(self, self.directory, [self.keySocket], self.keyring, None,
                             extra=["--port", f"unix:{egd}", "--ekeyd-control",
                                    f"unix:{control}"])
        return self.serving(server, control)

    def serving(self, server: RunningProcess, control: str) -> RunningProcess:
        """
        Wait until our daemon's ekeyd control socket at C{control} listens.

        @return: C{server}, which is now L{server}.
        """
        server.controlPath = control
        waitForListening(control, process=server)
        self.server = server
        return server

    def waitForStatistics(self, server: RunningProcess, key: str = "1",
                          names: Sequence[str] = ("EntropyRate", "KeyTemperatureK",
                                                  "FipsFrameRate", "FrameByteLast")) -> None:
        """
        Wait until key C{key} is running and shows the given statistics (its
        readings in, and a connection old enough for rates).
        """
        def ready():
            lines = ekeydControl(server, f'StatEntropyKey("{key}")')
            shown = {line.split("\t", 1)[1].split("=", 1)[0] for line in lines
                     if line.startswith("*\t")}
            return set(names) <= shown

        waitFor(ready, 20, f"key {key}'s statistics", server)

    def runEkeydctl(self, *arguments: str, uid: Optional[int] = None,
                    control: Optional[str] = None) -> subprocess.CompletedProcess:
        """
        Run the real C{ekeydctl} against C{control} (our server's socket by
        default), reading a private configuration instead of
        L{SYSTEM_CONF}.

        @param uid: run as this user (and group) instead of root.
        """
        ekeydctl = findPeer("ekeydctl")
        findPeer("lua5.1", "lua5.1")
        control = control or self.server.controlPath
        conf = os.path.join(os.path.dirname(self.server.controlPath), "ekeydctl.conf")
        with open(conf, "w") as f:
            f.write(f'UnixControlSocket "{control}"\n')
        os.chmod(conf, 0o644)
        env = dict(os.environ, LUA_INIT=EKEYDCTL_LUA_INIT, EKEYDCTL_CONF=conf)
        argv = [ekeydctl, *arguments]
        if uid is not None:
            argv = [findPeer("setpriv", "util-linux"), f"--reuid={uid}", f"--regid={uid}",
                    "--clear-groups", *argv]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30,
                              cwd=self.directory)

    def assertEkeydctlSucceeds(self, *arguments: str) -> List[str]:
        """
        Run C{ekeydctl} and require success.

        @return: its output lines.
        """
        result = self.runEkeydctl(*arguments)
        if result.returncode != 0 or result.stderr:
            self.fail(f"ekeydctl {' '.join(arguments)} exited {result.returncode}:\n"
                      f"{result.stdout}{result.stderr}\n{self.server.describe()}")
        return result.stdout.splitlines()

    def assertEkeydctlRefused(self, *arguments: str, uid: Optional[int] = None) -> str:
        """
        Run C{ekeydctl} and require a refusal: exit status 4 (an C{ERROR}
        line) and exactly one line on standard error.

        @return: that line.
        """
        result = self.runEkeydctl(*arguments, uid=uid)
        lines = result.stderr.splitlines()
        if result.returncode != 4 or len(lines) != 1 or result.stdout:
            self.fail(f"ekeydctl {' '.join(arguments)} exited {result.returncode}, expected 4 "
                      f"with one line:\n{result.stdout}{result.stderr}")
        return lines[0]

    def listed(self) -> List[List[str]]:
        """
        @return: C{ekeydctl list}'s keys, each split into its fields.
        """
        lines = self.assertEkeydctlSucceeds("list")
        self.assertEqual(lines[0], "NR,OK,Status,Path,SerialNo")
        return [line.split(",") for line in lines[1:]]

    def tearDown(self):
        server = getattr(self, "server", None)
        if server is not None:
            server.terminate()
            assertNoTraceback(self, server.stdout(), server.stderr(), daemonLog(server))


class EkeydctlTests(_Mixin, TestCase):
    """
    The real C{ekeydctl} works against our daemon as against ekeyd.
    """

    def requirePeers(self):
        findPeer("ekeydctl")
        findPeer("lua5.1", "lua5.1")

    def test_list(self):
        """
        C{ekeydctl list} shows the key as ekeyd would: number, OK, state,
        path and serial.
        """
        server = self.startServer()
        waitFor(lambda: any("Running OK" in line for line in ekeydControl(
            server, "ListEntropyKeys")), 20, "the key to run", server)
        self.assertEqual(self.listed(), [["1", "YES", "Running OK", self.keySocket, SERIAL]])

    def test_stats(self):
        """
        C{ekeydctl stats} by number, serial and path gives every statistic
        ekeyd reports, FrameByteLast included, as C{Name=value}, sorted.
        """
        server = self.startServer()
        self.waitForStatistics(server)
        for tag in ["1", SERIAL, self.keySocket]:
            lines = self.assertEkeydctlSucceeds("stats", tag)
            self.assertEqual(lines, sorted(lines))
            stats = dict(line.split("=", 1) for line in lines)
            self.assertEqual(EKEYD_STATISTICS - set(stats), set(), tag)
            self.assertEqual(stats["KeyShortBadness"], "efm_ok")
            self.assertGreater(int(stats["BytesRead"]), int(stats["FrameByteLast"]))
            self.assertEqual(int(stats["FrameByteLast"]) % 64, 0)

    def test_statsUnknownKey(self):
        """
        C{ekeydctl stats} of a key that is not there is one error line and
        exit status 4.
        """
        self.startServer()
        line = self.assertEkeydctlRefused("stats", "9")
        self.assertEqual(line,
                         "ERROR no key '9': give a number from ListEntropyKeys, a serial or a path")

    def test_addAndRemove(self):
        """
        C{ekeydctl add} serves another key (a serial device, here the
        simulator's pty), C{remove} stops it again; C{addall} adds the keys
        of a directory that are not served yet.
        """
        server = self.startServer()
        pty = startSimulator(self, self.directory, pty=True, rate=None, name="sim-pty",
                             extra=SIMULATOR_OPTIONS)
        self.assertEkeydctlSucceeds("add", pty.ptyPath)
        waitFor(lambda: any(line.startswith(f"*\t2\tYES\tRunning OK\t{pty.ptyPath}")
                            for line in ekeydControl(server, "ListEntropyKeys")),
                20, "the added key to run", server)
        self.assertEkeydctlSucceeds("remove", pty.ptyPath)
        self.assertEqual([key[0] for key in self.listed()], ["1"])

        keys = os.path.join(self.directory, "keys")
        os.mkdir(keys)
        os.symlink(pty.ptyPath, os.path.join(keys, SERIAL))
        self.assertEkeydctlSucceeds("addall", keys)
        self.assertEqual([key[0] for key in self.listed()], ["1", "3"])
        self.assertEqual(ekeydControl(server, f'AddEntropyKeys("{keys}")'), ["OK"])
        self.assertEqual(self.listed()[1][3], os.path.join(keys, SERIAL))

    def test_addRefused(self):
        """
        C{ekeydctl add} of something that is not a key is one error line.
        """
        self.startServer()
        line = self.assertEkeydctlRefused("add", self.keyring)
        self.assertTrue(line.startswith("ERROR "), line)

    def test_keyring(self):
        """
        C{ekeydctl keyring} reloads the daemon's keyring; another file is
        refused, without its contents in the answer.
        """
        self.startServer()
        self.assertEkeydctlSucceeds("keyring", self.keyring)
        secret = os.path.join(self.directory, "secret")
        with open(secret, "w") as f:
            f.write("s3cr3t-first-field rest\n")
        line = self.assertEkeydctlRefused("keyring", secret)
        self.assertTrue(line.startswith("ERROR only the daemon's own keyring"), line)
        self.assertNotIn("s3cr3t", line)

    def test_othersRefused(self):
        """
        A user who is neither root nor the daemon's user gets one refusal
        line from C{ekeydctl} even when the socket lets them connect, and
        the daemon logs their uid.
        """
        server = self.startServer(public=True)
        # The daemon makes its socket 0600; open it up, as a mistaken
        # chmod would, to reach the daemon's own check.
        os.chmod(server.controlPath, 0o666)
        line = self.assertEkeydctlRefused("shutdown", uid=65534)
        self.assertTrue(line.startswith("ERROR permission denied: uid 65534"), line)
        line = self.assertEkeydctlRefused("list", uid=65534)
        self.assertTrue(line.startswith("ERROR permission denied: uid 65534"), line)
        self.assertIsNone(server.poll())
        waitFor(lambda: "uid 65534" in daemonLog(server), 5, "the refusal in the log", server)

    def test_shutdown(self):
        """
        C{ekeydctl shutdown} stops the daemon.
        """
        server = self.startServer()
        self.assertEkeydctlSucceeds("shutdown")
        self.assertEqual(server.wait(), 0)

    def test_configurationLeftAlone(self):
        """
        The redirection the tests use works: with it, ekeydctl talks to the
        socket given, not the one the system configuration names.
        """
        self.startServer()
        result = self.runEkeydctl("list", control=os.path.join(self.directory, "nothing.sock"))
        self.assertEqual(result.returncode, 5, result.stderr)
        self.assertIn(os.path.join(self.directory, "nothing.sock"), result.stderr)


class MuninTests(_Mixin, TestCase):
    """
    The real munin plugin, run as munin-node runs it (through a symbolic
    link named for the statistic, C{controlsocket} in the environment),
    graphs our daemon's keys.
    """

    def requirePeers(self):
        requireFile(MUNIN_PLUGIN, "ekeyd")
        findPeer("perl", "perl")

    def runPlugin(self, statistic: str, *arguments: str) -> List[str]:
        """
        Run C{ekeyd_stat_<statistic>} and require success without warnings.

        @return: its output lines.
        """
        plugins = os.path.join(self.directory, "plugins")
        os.makedirs(plugins, exist_ok=True)
        link = os.path.join(plugins, f"ekeyd_stat_{statistic}")
        if not os.path.islink(link):
            os.symlink(MUNIN_PLUGIN, link)
        env = dict(os.environ, controlsocket=self.server.controlPath)
        result = subprocess.run([link, *arguments], env=env, capture_output=True, text=True,
                                timeout=30)
        if result.returncode != 0 or result.stderr:
            self.fail(f"{link} {' '.join(arguments)} exited {result.returncode}:\n"
                      f"{result.stdout}{result.stderr}\n{self.server.describe()}")
        return result.stdout.splitlines()

    def pluginValues(self, statistic: str, *arguments: str) -> Dict[str, str]:
        """
        Run C{ekeyd_stat_<statistic>} (see L{runPlugin}).

        @return: its output, field name to value.
        """
        return dict(line.split(" ", 1) for line in self.runPlugin(statistic, *arguments))

    def test_everyStatistic(self):
        """
        Every statistic ekeyd reports graphs as a number per key, for
        FrameByteLast as for the rest.
        """
        server = self.startServer()
        self.waitForStatistics(server)
        words = {"KeyEnglishBadness", "KeyShortBadness"}
        for statistic in sorted(EKEYD_STATISTICS - words):
            values = self.pluginValues(statistic)
            self.assertEqual(list(values), [f"stats{SERIAL}.value"], statistic)
            float(values[f"stats{SERIAL}.value"])

    def test_config(self):
        """
        C{config} names the graph and the key.
        """
        server = self.startServer()
        self.waitForStatistics(server)
        values = self.pluginValues("KeyTemperatureC", "config")
        self.assertEqual(values["graph_title"], "Entropy Key Temperature")
        self.assertEqual(values[f"stats{SERIAL}.label"], SERIAL)

    def test_total(self):
        """
        A C{total_} link sums a statistic over the keys.
        """
        server = self.startServer()
        self.waitForStatistics(server)
        values = self.pluginValues("total_TotalEntropy")
        self.assertGreater(int(values["totstat.value"]), 0)
        self.assertEqual(self.pluginValues("total_TotalEntropy", "config")["totstat.type"],
                         "DERIVE")

    def test_autoconf(self):
        """
        C{autoconf} finds the socket.
        """
        self.startServer()
        self.assertEqual(self.runPlugin("FrameByteLast", "autoconf"), ["yes"])


class SameStatisticsAsEkeydTests(_Mixin, TestCase):
    """
    The statistics' names are the real ekeyd's, checked against it.
    """

    def requirePeers(self):
        findPeer("ekeyd")
        findPeer("ekeydctl")
        findPeer("lua5.1", "lua5.1")

    def test_ekeydNames(self):
        """
        The real ekeyd, serving a simulated key, reports exactly the
        statistics of L{EKEYD_STATISTICS}; ours are a superset.
        """
        ekeydKey = socketPath(self, self.directory, "ekeyd-key.sock")
        startSimulator(self, self.directory, listen=ekeydKey, rate=None, name="sim-ekeyd")
        ekeyd = startEkeyd(self, self.directory, [ekeydKey], self.keyring,
                           os.path.join(self.directory, "ekeyd.out"))

        def ekeydStats():
            lines = ekeydControl(ekeyd, 'StatEntropyKey("1")')
            return lines if lines and lines[-1] == "OK" else None

        theirs = {line.split("\t", 1)[1].split("=", 1)[0]
                  for line in waitFor(ekeydStats, 20, "ekeyd's statistics", ekeyd)[:-1]}
        self.assertEqual(theirs, set(EKEYD_STATISTICS))
        server = self.startServer()
        self.waitForStatistics(server)
        ours = {line.split("=", 1)[0] for line in self.assertEkeydctlSucceeds("stats", "1")}
        self.assertEqual(theirs - ours, set())


#: A second simulated key's serial number.
SECOND_SERIAL = "E52jaQ2jxAYlra1M"


class ConfigurationFileTests(_Mixin, TestCase):
    """
    The daemon started from a configuration file alone: ekeyd's own (the
    stock C{ekeyd.conf}, with its paths made private) and ekey's TOML.
    The real C{ekeydctl} lists its keys over the control socket the file
    names, and C{ekey-egd} reads from the EGD socket it names.
    """

    def requirePeers(self):
        findPeer("ekeydctl")
        findPeer("lua5.1", "lua5.1")

    def shortDirectory(self) -> str:
        """
        @return: a new directory with a short path, for sockets in it.
        """
        directory = tempfile.mkdtemp(prefix="ekey-")
        self.addCleanup(shutil.rmtree, directory, True)
        os.chmod(directory, 0o755)
        return directory

    def readEGD(self, egd: str, count: int = 64) -> bytes:
        """
        Run C{ekey-egd get} (its entry point) against the EGD socket.

        @return: the bytes it wrote.
        """
        argv = [sys.executable, "-c", "from ekey.cli.egd import main; main()",
                "--connect", f"unix:{egd}", "--timeout", "20", "get", str(count)]
        result = subprocess.run(argv, env=pythonEnvironment(), capture_output=True,
                                timeout=60, cwd=self.directory)
        if result.returncode != 0:
            self.fail(f"ekey-egd exited {result.returncode}: {result.stderr!r}\n"
                      f"{self.server.describe()}")
        return result.stdout

    def waitForListed(self, expected: List[List[str]]) -> None:
        """
        Wait until C{ekeydctl list} shows exactly C{expected}.
        """
        waitFor(lambda: self.listed() == expected, 20,
                f"ekeydctl list to show {expected}", self.server)

    def test_stockEkeydConf(self):
        """
        The stock ekeyd.conf, its paths made private (the keyring, the
        control socket, the first key directory; the second directory line
        made one key, kernel output made an EGD socket) is read by
        C{--ekeyd-conf}: the key is listed and served; the key directory,
        missing at start, is watched, and a key that appears in it later is
        served too.
        """
        stock = requireFile(SYSTEM_CONF, "ekeyd")
        short = self.shortDirectory()
        control = os.path.join(short, "ekeyd.sock")
        egd = os.path.join(short, "egd.sock")
        keys = os.path.join(short, "keys")
        writeKeyring(self.keyring, [(SERIAL, None), (SECOND_SERIAL, None)])
        with open(stock) as f:
            text = f.read()
        for old, new in [
                ('\nUnixControlSocket "/var/run/ekeyd.sock"\n', f'\nUnixControlSocket "{control}"\n'),
                ('\nKeyring "/etc/entropykey/keyring"\n', f'\nKeyring "{self.keyring}"\n'),
                ("\nSetOutputToKernel(7)\n", f'\nEGDUnixSocket("{egd}", "0600", "", "")\n'),
                ('\nAddEntropyKeys "/dev/entropykey"\n', f'\nAddEntropyKeys "{keys}"\n'),
                ('\nAddEntropyKeys "/var/run/entropykeys"\n',
                 f'\nAddEntropyKey "{self.keySocket}"\n')]:
            self.assertEqual(text.count(old), 1, f"{stock} no longer has {old.strip()!r}")
            text = text.replace(old, new)
        conf = os.path.join(self.directory, "ekeyd.conf")
        with open(conf, "w") as f:
            f.write(text)
        server = startDaemon(self, self.directory, [], None, None,
                             extra=["--ekeyd-conf", conf])
        self.serving(server, control)
        self.waitForListed([["1", "YES", "Running OK", self.keySocket, SERIAL]])
        self.assertEqual(len(self.readEGD(egd)), 64)
        self.assertIn(f"{keys} does not exist (yet): waiting for it", daemonLog(server))

        os.mkdir(keys)
        second = os.path.join(keys, "key.sock")
        startSimulator(self, self.directory, listen=second, rate=None, name="sim-second",
                       serial=SECOND_SERIAL, extra=SIMULATOR_OPTIONS)
        self.waitForListed([["1", "YES", "Running OK", self.keySocket, SERIAL],
                            ["2", "YES", "Running OK", second, SECOND_SERIAL]])

    def test_toml(self):
        """
        A TOML file (C{--config}) gives the key, the keyring, the EGD socket
        and the ekeyd control socket; the command line adds to it.
        """
        from ekey.core.configfile import toTOML

        short = self.shortDirectory()
        control = os.path.join(short, "ekeyd.sock")
        egd = os.path.join(short, "egd.sock")
        conf = os.path.join(self.directory, "ekey.toml")
        with open(conf, "w") as f:
            f.write(toTOML({"device": [self.keySocket], "keyring": self.keyring,
                            "port": [f"unix:{egd}"], "ekeyd-control": f"unix:{control}",
                            "log-level": "warn"}))
        server = startDaemon(self, self.directory, [], None, None,
                             extra=["--config", conf, "--log-level", "info"])
        self.serving(server, control)
        self.waitForListed([["1", "YES", "Running OK", self.keySocket, SERIAL]])
        self.assertEqual(len(self.readEGD(egd)), 64)
        self.assertIn(" starting: 1 key(s)", daemonLog(server))
