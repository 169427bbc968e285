"""
C{ekeyctl} end to end: our daemon (C{twistd -n ekey --control unix:PATH})
with two simulated keys (C{ekey-sim}), and C{ekeyctl} run as a separate
process for every verb, its errors included; and another local user
(uid 65534) kept out of the control socket.

Every process is bounded in time: C{ekeyctl} runs with C{--timeout 10}
and is killed after 30 seconds; every wait has a time limit.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import List, Optional, Sequence, Tuple

from twisted.trial.unittest import FailTest, TestCase

from tests.interop.egdsockets import EGDUnixSocket
from tests.interop.kernel import asNobody, withoutCapability
from tests.interop.processes import (
    MAX_SOCKET_PATH,
    SERIAL,
    assertNoTraceback,
    daemonLog,
    makeTempDir,
    pythonEnvironment,
    socketPath,
    startDaemon,
    startRelay,
    startSimulator,
    waitFor,
    waitForListening,
    writeKeyring,
)
from tests.interop.requirements import skipUnlessRequired

#: The second key's serial: 12 bytes, as 16 base64 characters.
SERIAL2 = base64.b64encode(b"ekey-ctl-2nd").decode("ascii")

#: How long one ekeyctl may run before the test kills it.
EKEYCTL_LIMIT = 30.0

#: Frames per second from each simulated key: enough to see entropy move,
#: little enough to keep the machine quiet.
RATE = 25


class _ControlMixin:
    """
    Two simulated keys in one directory, our daemon on them with a control
    socket, and C{ekeyctl} as a subprocess.
    """

    def setUp(self):
        self.directory = makeTempDir(self)
        self.keysDirectory = self.shortDirectory("keys")
        self.key1 = os.path.join(self.keysDirectory, "k1.sock")
        self.key2 = os.path.join(self.keysDirectory, "k2.sock")
        startSimulator(self, self.directory, listen=self.key1, serial=SERIAL, rate=RATE,
                       name="sim1")
        startSimulator(self, self.directory, listen=self.key2, serial=SERIAL2, rate=RATE,
                       name="sim2")
        self.keyring = os.path.join(self.directory, "keyring")

    def shortDirectory(self, name: str) -> str:
        """
        @return: a new directory C{name} in the test's directory, or under
            the system's temporary directory if socket paths in it would be
            too long for a Unix socket.
        """
        path = os.path.join(self.directory, name)
        if len(os.path.join(path, "k1.sock").encode()) > MAX_SOCKET_PATH:
            path = tempfile.mkdtemp(prefix="ekey-ctl-")
            self.addCleanup(shutil.rmtree, path, True)
        else:
            os.makedirs(path)
        return path

    def startOurDaemon(self, serials: Sequence[str] = (SERIAL, SERIAL2),
                       extra: Sequence[str] = (), name: str = "ekey"):
        """
        Start the daemon on both keys, with a keyring holding C{serials},
        and wait for its control socket.
        """
        writeKeyring(self.keyring, [(serial, None) for serial in serials])
        control = socketPath(self, self.directory, f"{name}-ctl.sock")
        daemon = startDaemon(self, self.directory, [self.key1, self.key2], self.keyring,
                             os.path.join(self.directory, f"{name}.out"),
                             extra=["--control", f"unix:{control}"] + list(extra), name=name)
        daemon.controlPath = control
        waitForListening(control, process=daemon)
        self.daemon = daemon
        return daemon

    def ekeyctl(self, *arguments: str, control: Optional[str] = None,
                wrap=None) -> Tuple[int, str, str]:
        """
        Run C{ekeyctl --control unix:PATH --timeout 10 ARGUMENTS}.

        @param control: the control socket (default the daemon's).
        @param wrap: turns the command into another (such as L{asNobody}).
        @return: C{(status, stdout, stderr)}.
        """
        control = control or self.daemon.controlPath
        argv = [sys.executable, "-m", "ekey.cli.ekeyctl", "--control", f"unix:{control}",
                "--timeout", "10"] + list(arguments)
        if wrap is not None:
            argv = wrap(argv)
        try:
            done = subprocess.run(argv, env=pythonEnvironment(), cwd=self.directory,
                                  stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=EKEYCTL_LIMIT)
        except subprocess.TimeoutExpired:
            self.fail(f"ekeyctl {' '.join(arguments)} still running after {EKEYCTL_LIMIT:g} s")
        out = done.stdout.decode("utf-8", "replace")
        err = done.stderr.decode("utf-8", "replace")
        assertNoTraceback(self, out, err)
        return done.returncode, out, err

    def ekeyctlOK(self, *arguments: str, **kwargs) -> str:
        """
        Run C{ekeyctl}, which must succeed silently on standard error.

        @return: its standard output.
        """
        status, out, err = self.ekeyctl(*arguments, **kwargs)
        if status != 0 or err:
            self.fail(f"ekeyctl {' '.join(arguments)} failed ({status}): {err}{out}")
        return out

    def ekeyctlJSON(self, *arguments: str, **kwargs):
        return json.loads(self.ekeyctlOK("--json", *arguments, **kwargs))

    def assertOneLineError(self, result: Tuple[int, str, str], status: int,
                           *fragments: str) -> str:
        """
        Assert that C{ekeyctl} failed with C{status}, printing nothing on
        standard output and one line, C{ekeyctl: ...}, holding all of
        C{fragments} on standard error.

        @return: that line.
        """
        actualStatus, out, err = result
        self.assertEqual(actualStatus, status, err)
        self.assertEqual(out, "")
        self.assertTrue(err.startswith("ekeyctl: ") and err.endswith("\n"), err)
        self.assertEqual(err.count("\n"), 1, err)
        for fragment in fragments:
            self.assertIn(fragment, err)
        return err.strip()

    def waitForStates(self, states: Sequence[Tuple[str, str]], timeout: float = 20.0,
                      control: Optional[str] = None) -> List[dict]:
        """
        Poll C{ekeyctl --json list} until the keys are C{(path, state)}, in
        order.

        @return: the keys then.
        """
        last = []

        def reached():
            last[:] = self.ekeyctlJSON("list", control=control)
            return [(k["path"], k["state"]) for k in last] == list(states) and last

        try:
            return waitFor(reached, timeout, f"keys {states}", self.daemon)
        except Exception:
            self.fail(f"keys never reached {states}: last {last}\n{self.daemon.describe()}")

    def tearDown(self):
        daemon = getattr(self, "daemon", None)
        if daemon is not None:
            daemon.terminate()
            assertNoTraceback(self, daemon.stdout(), daemon.stderr(), daemonLog(daemon))


class KeyVerbTests(_ControlMixin, TestCase):
    """
    C{list}, C{stats}, C{remove}, C{add}, C{addall} and C{keyring} against
    a running daemon.
    """

    def test_listAndStats(self):
        """
        C{list} shows both keys C{Running OK} with their serials, in
        ekeydctl's lines; C{stats} answers by number, serial and path with
        ekeydctl's names.
        """
        self.startOurDaemon()
        self.waitForStates([(self.key1, "Running OK"), (self.key2, "Running OK")])
        self.assertEqual(self.ekeyctlOK("list"),
                         "NR,OK,Status,Path,SerialNo\n"
                         f"1,YES,Running OK,{self.key1},{SERIAL}\n"
                         f"2,YES,Running OK,{self.key2},{SERIAL2}\n")
        waitFor(lambda: "TotalEntropy" in self.ekeyctlJSON("stats", "2")["statistics"]
                and self.ekeyctlJSON("stats", "2")["statistics"]["TotalEntropy"] > 0,
                20, "entropy from key 2", self.daemon)
        for identifier in ("2", SERIAL2, self.key2):
            out = self.ekeyctlOK("stats", identifier)
            lines = out.splitlines()
            self.assertEqual(lines, sorted(lines))
            values = dict(line.split("=", 1) for line in lines)
            for name in ("BytesRead", "ConnectionTime", "FramesOk", "PacketOK",
                         "TotalEntropy", "ConnectionRekeys"):
                self.assertIn(name, values, out)
            self.assertGreater(int(values["TotalEntropy"]), 0)
        result = self.ekeyctlJSON("stats", SERIAL)
        self.assertEqual(result["key"]["number"], 1)
        self.assertEqual(result["key"]["path"], self.key1)

    def test_removeAddAddAll(self):
        """
        A key removed (by serial) leaves the list. A Unix socket is added at
        run time only if the daemon was started with it (C{ekey-rekey} gives
        a key back so); another socket is refused, and by C{addall} too; a
        serial port (a simulated key on a pty) is added with a new number
        and runs.
        """
        self.startOurDaemon()
        self.waitForStates([(self.key1, "Running OK"), (self.key2, "Running OK")])
        self.assertEqual(self.ekeyctlOK("remove", SERIAL2),
                         f"Removed key 2: {self.key2} ({SERIAL2})\n")
        self.assertEqual(self.ekeyctlOK("list"),
                         f"NR,OK,Status,Path,SerialNo\n1,YES,Running OK,{self.key1},{SERIAL}\n")
        stranger = socketPath(self, self.directory, "stranger.sock")
        listener = socket.socket(socket.AF_UNIX)
        self.addCleanup(listener.close)
        listener.bind(stranger)
        self.assertOneLineError(self.ekeyctl("add", stranger), 1, stranger,
                                "not added at run time")
        self.assertTrue(self.ekeyctlOK("add", self.key2).startswith(f"Added key 3: {self.key2}"))
        self.waitForStates([(self.key1, "Running OK"), (self.key2, "Running OK")])
        self.assertEqual(self.ekeyctlOK("addall", self.keysDirectory),
                         "No keys added: those there are served already or may not be added "
                         "at run time\n")
        self.assertEqual([k["number"] for k in self.ekeyctlJSON("list")], [1, 3])

        pty = startSimulator(self, self.directory, pty=True, serial=SERIAL2, rate=RATE,
                             name="sim-pty").ptyPath
        self.ekeyctlOK("remove", "3")
        self.assertTrue(self.ekeyctlOK("add", pty).startswith(f"Added key 4: {pty}"))
        self.waitForStates([(self.key1, "Running OK"), (pty, "Running OK")])
        self.ekeyctlOK("remove", "1")
        self.assertEqual([k["number"] for k in self.ekeyctlJSON("list")], [4])
        log = daemonLog(self.daemon)
        self.assertIn(": removed key 2: ", log)
        self.assertIn(": added key 3: ", log)
        self.assertIn("refused to add a key", log)
        self.assertIn(",uid=", log)

    def test_keyringGainedSerial(self):
        """
        A key whose serial is not in the keyring is C{Serial unknown};
        once its line is added to the keyring file, C{ekeyctl keyring}
        reloads it and the key reaches C{Running OK}.
        """
        self.startOurDaemon(serials=[SERIAL])
        states = self.waitForStates([(self.key1, "Running OK"), (self.key2, "Serial unknown")])
        self.assertFalse(states[1]["ok"])
        self.assertIn(f"2,NO,Serial unknown,{self.key2},{SERIAL2}\n", self.ekeyctlOK("list"))
        writeKeyring(self.keyring, [(SERIAL, None), (SERIAL2, None)])
        self.assertEqual(self.ekeyctlOK("keyring"), f"Keyring {self.keyring} loaded: 2 key(s)\n")
        self.waitForStates([(self.key1, "Running OK"), (self.key2, "Running OK")])
        self.assertIn("reloaded the keyring", daemonLog(self.daemon))


class DaemonVerbTests(_ControlMixin, TestCase):
    """
    C{upstreams}, C{clients}, C{pool} and C{shutdown}.
    """

    def test_relayUpstreamsClientsPool(self):
        """
        With a relay pulling from the daemon and an EGD client reading from
        the relay, C{upstreams} shows the relay's upstream up with bytes
        pulled, C{clients} shows each side's client with bytes served, and
        C{pool} shows entropy having come in.
        """
        egd = socketPath(self, self.directory, "egd.sock")
        self.startOurDaemon(extra=["--port", f"unix:{egd}"])
        waitForListening(egd, process=self.daemon)
        relayEGD = socketPath(self, self.directory, "relay-egd.sock")
        relayControl = socketPath(self, self.directory, "relay-ctl.sock")
        relay = startRelay(self, self.directory, [f"unix:{egd}"], [f"unix:{relayEGD}"],
                           "relay", extra=["--control", f"unix:{relayControl}"])
        waitForListening(relayControl, process=relay)
        waitForListening(relayEGD, process=relay)

        def pulled():
            upstreams = self.ekeyctlJSON("upstreams", control=relayControl)
            up = upstreams[0]["state"] == "up" and upstreams[0]["bytesPulled"] > 0
            return upstreams if up else None

        upstreams = waitFor(pulled, 20, "the relay to pull from the daemon", relay)
        self.assertEqual(upstreams[0]["upstream"], f"unix:{egd}")
        self.assertEqual(upstreams[0]["connections"], 1)
        out = self.ekeyctlOK("upstreams", control=relayControl)
        lines = out.splitlines()
        self.assertEqual(lines[0], "Upstream,State,Priority,BytesPulled,InFlight,Testing,"
                                   "BytesRefused,Connections,HealthFailures,LastError")
        self.assertTrue(lines[1].startswith(f"unix:{egd},up,"), out)
        self.assertEqual(self.ekeyctlJSON("upstreams"), [])

        with EGDUnixSocket(relayEGD) as client:
            self.assertEqual(len(client.get(64)), 64)
            clients = self.ekeyctlJSON("clients", control=relayControl)
            self.assertEqual(len(clients), 1)
            self.assertEqual(clients[0]["listener"], f"unix:{relayEGD}")
            self.assertGreaterEqual(clients[0]["bytesServed"], 64)
            self.assertEqual(clients[0]["identity"], f"uid:{os.getuid()}")
            out = self.ekeyctlOK("clients", control=relayControl)
            self.assertEqual(out.splitlines()[0],
                             "Listener,Peer,Identity,BytesServed,Requests,ConnectedFor")
            self.assertTrue(out.splitlines()[1].startswith(f"unix:{relayEGD},"), out)
        # On the daemon, the relay is the EGD client.
        daemonClients = self.ekeyctlJSON("clients")
        self.assertEqual([c["listener"] for c in daemonClients], [f"unix:{egd}"])
        self.assertGreater(daemonClients[0]["bytesServed"], 0)

        pool = self.ekeyctlJSON("pool", control=relayControl)
        self.assertGreater(pool["bytesIn"], 0)
        self.assertGreaterEqual(pool["bytesOut"], 64)
        lines = self.ekeyctlOK("pool").splitlines()
        self.assertEqual(lines, sorted(lines))
        self.assertIn("capacity=1048576", lines)
        relay.terminate()
        assertNoTraceback(self, relay.stdout(), relay.stderr(), daemonLog(relay))

    def test_shutdown(self):
        """
        C{shutdown} is answered, and the daemon then exits with status 0;
        C{ekeyctl} then says it is not running.
        """
        daemon = self.startOurDaemon()
        self.assertEqual(self.ekeyctlOK("shutdown"), "The daemon is shutting down\n")
        # The exit is the event waited for; a daemon that ignored the
        # request would run on past the wait, which is many times the second
        # or so a loaded machine takes to stop it.
        self.assertEqual(daemon.wait(30), 0)
        self.assertIn("shutdown requested", daemonLog(daemon))
        self.assertOneLineError(self.ekeyctl("list"), 1, "is the daemon running?")


class ErrorTests(_ControlMixin, TestCase):
    """
    Each mistake or failure is one line on standard error and a non-zero
    status: 1 for what went wrong, 2 for bad usage.
    """

    def test_errors(self):
        """
        An unknown ID, a path that is not a key, a keyring that cannot be
        read, a socket with no daemon, an unknown verb and a missing
        argument.
        """
        self.startOurDaemon()
        self.assertOneLineError(self.ekeyctl("stats", "9"), 1, "no key '9'")
        self.assertOneLineError(self.ekeyctl("remove", "AAAAAAAAAAAAAAAA"), 1,
                                "no key 'AAAAAAAAAAAAAAAA'")
        missing = os.path.join(self.directory, "no-such-key")
        self.assertOneLineError(self.ekeyctl("add", missing), 1, missing)
        self.assertOneLineError(self.ekeyctl("add", self.key1), 1, "served already")
        self.assertOneLineError(self.ekeyctl("keyring", missing), 1, missing,
                                f"only the daemon's own keyring can be reloaded: {self.keyring}")
        self.assertOneLineError(
            self.ekeyctl("list", control=os.path.join(self.directory, "no-daemon.sock")), 1,
            "no such socket", "is the daemon running?")
        self.assertOneLineError(self.ekeyctl("frobnicate"), 2, "unknown verb 'frobnicate'")
        self.assertOneLineError(self.ekeyctl("stats"), 2, "stats needs ID")
        self.assertOneLineError(self.ekeyctl("list", "extra"), 2, "too many arguments")
        # The daemon is still there and unchanged.
        self.assertEqual(len(self.ekeyctlJSON("list")), 2)
        self.assertIn("refused to add a key", daemonLog(self.daemon))

    def notPermittedCommand(self):
        """
        @return: a wrapper that runs a command as a user the control
            socket (mode 000) does not admit: C{nobody} if it can run this
            Python and import ekey and Twisted, else root without
            C{CAP_DAC_OVERRIDE}.
        @raise SkipTest: if neither can (L{skipUnlessRequired}).
        """
        probe = [sys.executable, "-c", "import twisted.protocols.amp, ekey.cli.ekeyctl"]
        reasons = []
        for name, wrap in [("nobody", asNobody),
                           ("root without CAP_DAC_OVERRIDE",
                            lambda argv: withoutCapability(argv, "dac_override"))]:
            try:
                done = subprocess.run(wrap(probe), env=pythonEnvironment(), cwd=self.directory,
                                      stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired) as e:
                reasons.append(f"{name}: {e}")
                continue
            if done.returncode == 0:
                return name, wrap
            lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
            reasons.append(f"{name}: {lines[-1] if lines else done.returncode}")
        skipUnlessRequired("no user that the socket's mode refuses can run ekeyctl here: "
                           + "; ".join(reasons))

    def test_notPermitted(self):
        """
        A control socket its user may not open (mode 000) is one line
        saying permission is denied, and status 1.
        """
        if os.getuid() != 0:
            skipUnlessRequired("needs root, to run ekeyctl as another user")
        self.startOurDaemon()
        who, wrap = self.notPermittedCommand()
        os.chmod(self.daemon.controlPath, 0)
        line = self.assertOneLineError(self.ekeyctl("list", wrap=wrap), 1, "permission denied")
        self.assertIn(self.daemon.controlPath, line, who)


class OtherUserTests(_ControlMixin, TestCase):
    """
    Another local user cannot control the daemon, whatever the control
    socket's mode: the attack of issue 11, against the real daemon.
    """

    def test_nobodyRefused(self):
        """
        Uid 65534, connecting to C{--control unix:PATH} (which used to be
        mode 0666), cannot list or remove the keys: either the socket's
        mode keeps it out, or the daemon answers one refusal and logs its
        uid; both keys are still served.
        """
        from tests.test_control_access import NOBODY, askAsNow, requireRoot

        requireRoot()
        self.startOurDaemon()
        self.waitForStates([(self.key1, "Running OK"), (self.key2, "Running OK")])
        os.chmod(self.directory, 0o755)
        for command, arguments in ((b"ListKeys", {}), (b"RemoveKey", {b"identifier": b"1"})):
            try:
                box = askAsNow(self.daemon.controlPath, command, arguments, NOBODY)
            except FailTest as e:
                self.assertIn("PermissionError", str(e))
                continue
            self.assertEqual(box.get(b"_error_code"), b"NOT_PERMITTED", box)
            self.assertIn(b"uid 65534 may not control this daemon",
                          box[b"_error_description"])
            self.assertIn("uid 65534 may not control this daemon", daemonLog(self.daemon))
        self.assertEqual(len(self.ekeyctlJSON("list")), 2)
