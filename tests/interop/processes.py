"""
Running the programs under test as real subprocesses: the simulated key
(C{ekey-sim}), our daemon (C{twistd ekey}) as a key host or a relay, the
real C{ekeyd}, and a broken key; waiting for their sockets, files and
logs; and tearing them down.

Every process started here is killed by a cleanup of the test that
started it, by its id only.  Waits poll with short sleeps and have a time
limit, after which they fail showing the process's output.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Callable, Iterable, List, Optional, Sequence

from twisted.trial.unittest import FailTest

from tests.interop.requirements import findPeer

#: The source tree, found first by every subprocess (L{pythonEnvironment}).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A serial number and keys for simulated keys (any values do).
SERIAL = "E52jaQ2jxAYlra1N"
LONG_TERM_KEY_HEX = "de6e1a6aa89b8e73d14ccecbd9161a1d3cf1f361f9e76db604a99c9d29c50800"
MASTER_KEY_HEX = "00112233445566778899aabbccddeeff102132435465768798a9bacbdcedfe0f"

#: Unix socket paths are limited to 108 bytes including the NUL.
MAX_SOCKET_PATH = 100

DEFAULT_TIMEOUT = 20.0
POLL_INTERVAL = 0.05


def makeTempDir(testCase) -> str:
    """
    @return: a new, absolute directory from C{testCase.mktemp()}.
    """
    path = os.path.abspath(testCase.mktemp())
    os.makedirs(path)
    return path


def socketPath(testCase, directory: str, name: str = "key.sock") -> str:
    """
    A path for a Unix socket: in C{directory} if short enough, else in a
    fresh directory under the system's temporary directory that the test's
    cleanup removes.
    """
    path = os.path.join(directory, name)
    if len(path.encode()) <= MAX_SOCKET_PATH:
        return path
    short = tempfile.mkdtemp(prefix="ekey-")
    testCase.addCleanup(shutil.rmtree, short, True)
    return os.path.join(short, name)


def writeKeyring(path: str, entries: Iterable[Sequence[str]] = ((SERIAL, None),),
                 mode: int = 0o600) -> str:
    """
    Write a keyring in ekeyd's format.

    @param entries: pairs of (PEM serial, hex long-term key or C{None} for
        L{LONG_TERM_KEY_HEX}).
    @return: C{path}.
    """
    lines = ["# Keyring for an interop test"]
    for serial, keyHex in entries:
        key = bytes.fromhex(keyHex or LONG_TERM_KEY_HEX)
        lines.append(f"{serial} {base64.b64encode(key).decode('ascii')}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path, mode)
    return path


def waitFor(predicate: Callable[[], object], timeout: float, what: str,
            process: Optional["RunningProcess"] = None):
    """
    Poll C{predicate} until it returns something true.

    @param what: what is awaited, for the failure message.
    @param process: a process that must stay alive meanwhile (its output
        is shown if it dies or time runs out).
    @return: the predicate's true result.
    @raise FailTest: on time-out or if C{process} exits.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if process is not None and process.poll() is not None:
            raise FailTest(f"{process.name} exited ({process.poll()}) while waiting for {what}"
                           f"\n{process.describe()}")
        if time.monotonic() > deadline:
            extra = f"\n{process.describe()}" if process is not None else ""
            raise FailTest(f"timed out after {timeout:g} s waiting for {what}{extra}")
        time.sleep(POLL_INTERVAL)


def isListening(path: str) -> bool:
    """
    Whether a Unix stream socket is bound and listening at C{path}, judged
    from C{/proc/net/unix} so as not to take a connection from the server.
    """
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False
    except OSError:
        return False
    try:
        with open("/proc/net/unix") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return True  # no procfs: existence will have to do
    for line in lines:
        fields = line.split()
        # Num RefCount Protocol Flags Type St Inode [Path]
        if len(fields) >= 8 and fields[7] == path:
            if int(fields[3], 16) & 0x10000:  # __SO_ACCEPTCON: listening
                return True
    return False


def waitForListening(path: str, timeout: float = DEFAULT_TIMEOUT,
                     process: Optional["RunningProcess"] = None) -> None:
    """
    Wait until a Unix socket listens at C{path}.
    """
    waitFor(lambda: isListening(path), timeout, f"a listening socket at {path}", process)


def fileSize(path: str) -> int:
    """
    @return: the size of C{path}, or 0 if it does not exist.
    """
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def waitForSize(path: str, size: int, timeout: float = DEFAULT_TIMEOUT,
                process: Optional["RunningProcess"] = None) -> bytes:
    """
    Wait until the file at C{path} holds at least C{size} bytes.

    @return: its contents then.
    """
    def big():
        return fileSize(path) >= size

    try:
        waitFor(big, timeout, f"{size} bytes in {path}", process)
    except FailTest as e:
        raise FailTest(f"{e}\n(the file holds {fileSize(path)} bytes)") from None
    with open(path, "rb") as f:
        return f.read()


def pythonEnvironment(extra: Optional[dict] = None) -> dict:
    """
    @return: an environment in which the source tree's C{ekey} package and
        C{twisted/plugins/ekey_plugin.py} are found first.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [REPO_ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("EKEY_REQUIRE_INTEROP", None)
    if extra:
        env.update(extra)
    return env


class RunningProcess:
    """
    A subprocess whose standard output and error go to files, so that it
    can never block on a full pipe and its output survives for failure
    messages.

    @ivar name: what to call it in messages.
    @ivar stdoutPath: where its standard output goes.
    @ivar stderrPath: where its standard error goes.
    @ivar started: when it was started (C{time.monotonic()}).
    """

    def __init__(self, testCase, name: str, argv: List[str], directory: str,
                 env: Optional[dict] = None, cwd: Optional[str] = None):
        self.name = name
        self.argv = argv
        self.stdoutPath = os.path.join(directory, f"{name}.stdout")
        self.stderrPath = os.path.join(directory, f"{name}.stderr")
        stdout = open(self.stdoutPath, "wb")
        stderr = open(self.stderrPath, "wb")
        self.started = time.monotonic()
        try:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                env=env, cwd=cwd or directory, start_new_session=True,
            )
        finally:
            stdout.close()
            stderr.close()
        testCase.addCleanup(self.kill)

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> Optional[int]:
        return self.process.poll()

    def stdout(self) -> str:
        with open(self.stdoutPath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stderr(self) -> str:
        with open(self.stderrPath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def describe(self) -> str:
        """
        @return: the command and the tail of its output, for messages.
        """
        text = (f"--- {self.name}: {' '.join(self.argv)}\n"
                f"--- stdout (tail):\n{self.stdout()[-3000:]}\n"
                f"--- stderr (tail):\n{self.stderr()[-3000:]}")
        logPath = getattr(self, "logPath", None)
        if logPath and os.path.exists(logPath):
            with open(logPath, "rb") as f:
                text += f"\n--- log (tail):\n{f.read()[-3000:].decode('utf-8', 'replace')}"
        return text

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """
        Wait for the process to exit.

        @return: its exit status.
        @raise FailTest: if it is still running after C{timeout} seconds.
        """
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise FailTest(f"{self.name} still running after {timeout:g} s\n"
                           f"{self.describe()}") from None

    def terminate(self, timeout: float = 5.0) -> Optional[int]:
        """
        Stop the process politely (SIGTERM), then firmly.

        @return: its exit status.
        """
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGTERM)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """
        Kill the process (only it, by its id) if it still runs, and reap it.
        """
        if self.process.poll() is None:
            try:
                self.process.kill()
            except ProcessLookupError:
                pass
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                pass


def startSimulator(testCase, directory: str, listen: Optional[str] = None, pty: bool = False,
                   seed: Optional[bytes] = None, rate: Optional[float] = 0,
                   serial: str = SERIAL, longTermKey: str = LONG_TERM_KEY_HEX,
                   masterKey: Optional[str] = None, faults: Sequence[str] = (),
                   extra: Sequence[str] = (), name: str = "ekey-sim",
                   timeout: float = DEFAULT_TIMEOUT) -> RunningProcess:
    """
    Start C{ekey-sim} (its entry point, C{ekey.cli.sim:main}) and wait until it is
    ready: its Unix socket listening, or its pty path printed.

    @param listen: a Unix socket path to listen on.
    @param pty: use a pty instead; the path is then in C{process.ptyPath}.
    @param seed: the C{--seed}, making the plaintext predictable.
    @param rate: frames per second (0: as fast as possible; C{None}: the
        simulator's default).
    @return: the running simulator.
    """
    # What the ekey-sim console script runs (ekey.cli.sim:main).
    argv = [sys.executable, "-c", "from ekey.cli.sim import main; main()"]
    if listen is not None:
        argv += ["--listen", f"unix:{listen}"]
    if pty:
        argv += ["--pty"]
    argv += ["--serial", serial, "--long-term-key", longTermKey]
    if masterKey is not None:
        argv += ["--master-key", masterKey]
    if seed is not None:
        argv += ["--seed", seed.decode("ascii")]
    if rate is not None:
        argv += ["--rate", f"{rate:g}"]
    for fault in faults:
        argv += ["--fault", fault]
    argv += list(extra)
    process = RunningProcess(testCase, name, argv, directory, env=pythonEnvironment())
    process.ptyPath = None
    if listen is not None:
        waitForListening(listen, timeout, process)
    if pty:
        def printedPath():
            for line in process.stdout().splitlines():
                line = line.strip()
                if line.startswith("/dev/"):
                    return line
            return None

        process.ptyPath = waitFor(printedPath, timeout, "the simulator's pty path", process)
        waitFor(lambda: os.path.exists(process.ptyPath), timeout,
                f"{process.ptyPath} to exist", process)
    return process


def twistdCommand() -> List[str]:
    """
    @return: the command that runs C{twistd} with this interpreter.
    """
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [sys.executable, script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def startDaemon(testCase, directory: str, devices: Sequence[str], keyring: Optional[str],
                outputFile: Optional[str], extra: Sequence[str] = (),
                name: str = "ekey") -> RunningProcess:
    """
    Start our daemon, C{twistd -n ekey ...}, from the source tree, logging
    to C{process.logPath}.

    @return: the running daemon (it may already have refused to start).
    """
    logPath = os.path.join(directory, f"{name}.log")
    argv = twistdCommand() + [
        "-n", "--logfile", logPath, "--pidfile", os.path.join(directory, f"{name}.pid"),
        "ekey",
    ]
    for device in devices:
        argv += ["--device", device]
    if keyring is not None:
        argv += ["--keyring", keyring]
    if outputFile is not None:
        argv += ["--output-file", outputFile]
    argv += list(extra)
    if "--control" not in extra:
        # Several daemons may share a directory; each gets its own control
        # socket there rather than the default control.sock.
        argv += ["--control", f"unix:{name}.control:mode=600:lockfile=1"]
    process = RunningProcess(testCase, name, argv, directory, env=pythonEnvironment())
    process.logPath = logPath
    return process


def daemonLog(process: RunningProcess) -> str:
    """
    @return: the daemon's twistd log so far ("" if none).
    """
    try:
        with open(process.logPath, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def startEkeyd(testCase, directory: str, keys: Sequence[str], keyring: str,
               outputFile: str, timeout: float = DEFAULT_TIMEOUT) -> RunningProcess:
    """
    Run the real C{ekeyd} in the foreground with a generated configuration:
    its own control socket in a temporary directory (not the default
    C{/var/run/ekeyd.sock}, so that it can never meet another ekeyd),
    output to a file, and the given keys (Unix sockets that must already
    be listening, since ekeyd connects once, at start-up).

    ekeyd logs to syslog only, so it is judged by its output file.

    @return: the running ekeyd, once its control socket listens.
    """
    if not os.path.exists(outputFile):
        # SetOutputToFile refuses a missing file.
        open(outputFile, "wb").close()
    return _runEkeyd(testCase, directory, keys, keyring,
                     f"SetOutputToFile {_lua(outputFile)}", "ekeyd.conf", timeout)


def _lua(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _runEkeyd(testCase, directory: str, keys: Sequence[str], keyring: str, output: str,
              configName: str, timeout: float) -> RunningProcess:
    """
    Write an ekeyd configuration (its own control socket, the keyring, one
    output line, the keys) and run ekeyd with it until its control socket
    listens.
    """
    ekeyd = findPeer("ekeyd")
    control = socketPath(testCase, directory, "ctl.sock")
    lines = [
        "Daemonise(false)",
        f"Keyring {_lua(keyring)}",
        f"UnixControlSocket {_lua(control)}",
        # The output must be configured before any key.
        output,
    ]
    lines += [f"AddEntropyKey {_lua(key)}" for key in keys]
    config = os.path.join(directory, configName)
    with open(config, "w") as f:
        f.write("\n".join(lines) + "\n")
    process = RunningProcess(
        testCase, "ekeyd", [ekeyd, "-f", config, "-p", os.path.join(directory, "ekeyd.pid")],
        directory,
    )
    process.controlPath = control
    process.configPath = config
    waitForListening(control, timeout, process)
    return process


def ekeydControl(process: RunningProcess, command: str, timeout: float = 5.0) -> List[str]:
    """
    Send one command over ekeyd's control protocol (what C{ekeydctl} does,
    without its hard-coded configuration path).

    @return: the reply's lines, the final C{OK}/C{ERROR} line last.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(process.controlPath)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.sendall(command.encode() + b"\n")
        reply = b""
        while True:
            lines = reply.decode("utf-8", "replace").splitlines()
            if lines and reply.endswith(b"\n") and (
                lines[-1].startswith("OK") or lines[-1].startswith("ERROR")
            ):
                return lines
            chunk = s.recv(4096)
            if not chunk:
                return lines
            reply += chunk


def assertNoTraceback(testCase, *texts: str) -> None:
    """
    Fail if any of C{texts} (standard error, logs) holds a Python traceback.
    """
    for text in texts:
        if "Traceback (most recent call last)" in text or "Unhandled Error" in text:
            testCase.fail(f"a Python traceback was printed:\n{text[-4000:]}")


def freeTCPPort(host: str = "127.0.0.1") -> int:
    """
    @return: a TCP port on C{host} that nothing listens on right now (the
        kernel's choice for a port-0 bind; a tiny race with other
        programs is possible and accepted).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def isListeningTCP(port: int, host: str = "127.0.0.1") -> bool:
    """
    Whether a TCP socket listens on C{host:port}, judged from
    C{/proc/net/tcp} so as not to take a connection from the server.
    """
    wanted = f"{socket.htonl(int.from_bytes(socket.inet_aton(host), 'big')):08X}:{port:04X}"
    anyAddress = f"00000000:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            return False
    for line in lines:
        fields = line.split()
        # sl local_address rem_address st ...; st 0A is LISTEN
        if len(fields) > 3 and fields[3] == "0A" and fields[1] in (wanted, anyAddress):
            return True
    return False


def waitForListeningTCP(port: int, host: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT,
                        process: Optional[RunningProcess] = None) -> None:
    """
    Wait until a TCP socket listens on C{host:port}.
    """
    waitFor(lambda: isListeningTCP(port, host), timeout, f"a listener on {host}:{port}",
            process)


def startDaemonEGD(testCase, directory: str, devices: Sequence[str], keyring: str,
                   port: Optional[int] = None, extra: Sequence[str] = (),
                   name: str = "ekey", timeout: float = DEFAULT_TIMEOUT) -> RunningProcess:
    """
    Start our daemon serving EGD on C{tcp:PORT:interface=127.0.0.1} and wait
    until it listens.

    @param port: the port (a free one if C{None}); also in C{process.egdPort}.
    @return: the running daemon.
    """
    port = port or freeTCPPort()
    process = startDaemon(
        testCase, directory, devices, keyring, None,
        extra=["--port", f"tcp:{port}:interface=127.0.0.1"] + list(extra), name=name,
    )
    process.egdHost = "127.0.0.1"
    process.egdPort = port
    waitForListeningTCP(port, timeout=timeout, process=process)
    return process


def startEkeydEGD(testCase, directory: str, keys: Sequence[str], keyring: str,
                  port: Optional[int] = None,
                  timeout: float = DEFAULT_TIMEOUT) -> RunningProcess:
    """
    Run the real C{ekeyd} in the foreground serving EGD with
    C{EGDTCPSocket(PORT, "127.0.0.1")} (its only output), its control
    socket in C{directory}, and the given keys (Unix sockets that must
    already listen).

    @param port: the port (a free one if C{None}); also in C{process.egdPort}.
    @return: the running ekeyd, once its EGD port listens.
    """
    port = port or freeTCPPort()
    process = _runEkeyd(testCase, directory, keys, keyring,
                        f'EGDTCPSocket({port}, "127.0.0.1")', "ekeyd-egd.conf", timeout)
    process.egdHost = "127.0.0.1"
    process.egdPort = port
    waitForListeningTCP(port, timeout=timeout, process=process)
    return process


def startRelay(testCase, directory: str, upstreams: Sequence[str], ports: Sequence[str],
               name: str, extra: Sequence[str] = ()) -> RunningProcess:
    """
    Start our daemon as a relay (C{twistd -n ekey --upstream ... --port
    ...}, no key), logging to C{process.logPath}.  It is not waited for:
    wait for its listener with L{waitForListening} or
    L{waitForListeningTCP}.

    @return: the running relay (the command is in C{process.argv}, so
        that L{restartProcess} can run it again).
    """
    arguments: List[str] = []
    for description in upstreams:
        arguments += ["--upstream", description]
    for description in ports:
        arguments += ["--port", description]
    return startDaemon(testCase, directory, [], None, None, extra=arguments + list(extra),
                       name=name)


def restartProcess(testCase, process: RunningProcess, directory: str) -> RunningProcess:
    """
    Run a stopped process's command again, with the same name (its output
    files are started afresh; a twistd log is appended to).

    @return: the new process.
    """
    again = RunningProcess(testCase, process.name, process.argv, directory,
                           env=pythonEnvironment())
    if getattr(process, "logPath", None):
        again.logPath = process.logPath
    return again


def waitForLog(process: RunningProcess, text: str, timeout: float = DEFAULT_TIMEOUT,
               start: int = 0) -> str:
    """
    Wait until the daemon's log, from offset C{start}, contains C{text}.

    @return: the line holding it.
    """
    def found():
        log = daemonLog(process)[start:]
        for line in log.splitlines():
            if text in line:
                return line
        return None

    try:
        return waitFor(found, timeout, f"{text!r} in {process.name}'s log", None)
    except FailTest as e:
        raise FailTest(f"{e}\n{process.describe()}") from None


def killHard(process: RunningProcess, timeout: float = 5.0) -> Optional[int]:
    """
    SIGKILL one process (by its id) and reap it, as a crash or an
    unplugged host would end it.

    @return: its exit status.
    """
    if process.poll() is None:
        try:
            process.process.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        return process.process.wait(timeout)
    except subprocess.TimeoutExpired:
        raise FailTest(f"{process.name} survived SIGKILL for {timeout:g} s") from None


def runGarbageKey(path: str, seconds: float) -> None:
    """
    Be a broken key on a Unix socket at C{path}: to each host that
    connects, send junk as fast as it reads (random bytes, many of them
    turned into stray C{*}, with runs of C{*} and C{"* "}), reading and
    discarding what it sends, for C{seconds} from start-up; then exit.
    Run it in a subprocess (L{startGarbageKey}).
    """
    deadline = time.monotonic() + seconds
    # A quarter of all byte values become "*": many false frame starts.
    table = bytes(0x2A if b < 64 else b for b in range(256))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    listener.settimeout(0.2)
    sent = [0]

    def drain(conn):
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    def serve(conn):
        threading.Thread(target=drain, args=(conn,), daemon=True).start()
        conn.settimeout(0.5)
        n = 0
        try:
            while time.monotonic() < deadline:
                n += 1
                chunk = os.urandom(65536).translate(table)
                if n % 4 == 0:
                    chunk = b"*" * 4096 + chunk[4096:]
                elif n % 4 == 2:
                    chunk = b"* " * 2048 + chunk[4096:]
                try:
                    conn.sendall(chunk)
                    sent[0] += len(chunk)
                except socket.timeout:
                    continue
        except OSError:
            pass
        finally:
            conn.close()

    print(f"garbage key listening on {path}", flush=True)
    while time.monotonic() < deadline:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
    time.sleep(0.6)
    print(f"garbage key sent {sent[0]} bytes", flush=True)
    listener.close()


def startGarbageKey(testCase, directory: str, path: str, seconds: float,
                    name: str = "garbage-key") -> RunningProcess:
    """
    Start L{runGarbageKey} in a subprocess and wait until it listens.
    """
    argv = [sys.executable, "-c",
            f"from tests.interop.processes import runGarbageKey; runGarbageKey({path!r}, {seconds!r})"]
    process = RunningProcess(testCase, name, argv, directory, env=pythonEnvironment())
    waitForListening(path, process=process)
    return process


def fetchMetrics(port: int, timeout: float = 5.0) -> dict:
    """
    @return: the Prometheus metrics a daemon serves on
        C{tcp:PORT:interface=127.0.0.1} (C{--metrics}), as
        C{{"name{labels}": value}}; C{{}} if they cannot be fetched.
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
            text = r.read().decode("utf-8", "replace")
    except OSError:
        return {}
    metrics = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            metrics[name] = float(value)
        except ValueError:
            pass
    return metrics

