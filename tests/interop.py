"""
Shared helpers for the interop tests: finding real peers, running the
simulated key (C{ekey-sim}), our daemon (C{twistd ekey}) and the real
C{ekeyd} as subprocesses, and waiting on them with time limits.

These helpers deliberately use real processes, real sockets and real
time, with short polling sleeps and a timeout on every wait.  They belong
to the interop tests only; unit tests use Twisted's fakes instead.

Every process started here is killed by a cleanup of the test that
started it.  When the environment variable C{EKEY_REQUIRE_INTEROP} is
C{1} (as in C{.ci/run}), a missing peer fails the test instead of
skipping it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterable, List, Optional, Sequence

from twisted.trial.unittest import FailTest, SkipTest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The Debian package that provides each peer, for the skip message.
PACKAGES = {
    "ekeyd": "ekeyd",
    "ekeydctl": "ekeyd",
    "ekey-setkey": "ekeyd",
    "ekeyd-egd-linux": "ekeyd-egd-linux",
    "socat": "socat",
    "openssl": "openssl",
    "stunnel4": "stunnel4",
    "stunnel": "stunnel4",
    "strace": "strace",
}

# A serial number and keys for simulated keys (any values do).
SERIAL = "E52jaQ2jxAYlra1N"
LONG_TERM_KEY_HEX = "de6e1a6aa89b8e73d14ccecbd9161a1d3cf1f361f9e76db604a99c9d29c50800"
MASTER_KEY_HEX = "00112233445566778899aabbccddeeff102132435465768798a9bacbdcedfe0f"

BLOCK = 32
# Unix socket paths are limited to 108 bytes including the NUL.
MAX_SOCKET_PATH = 100

DEFAULT_TIMEOUT = 20.0
POLL_INTERVAL = 0.05


def interopRequired() -> bool:
    """
    @return: whether a missing peer must fail tests rather than skip them.
    """
    return os.environ.get("EKEY_REQUIRE_INTEROP") == "1"


def findPeer(name: str, package: Optional[str] = None) -> str:
    """
    Find a real peer's executable on C{PATH}, C{/usr/sbin} or C{/sbin}.

    @param name: the executable's name.
    @param package: the Debian package providing it (guessed from
        L{PACKAGES} if not given).
    @return: its path.
    @raise SkipTest: if it is not installed.
    @raise FailTest: instead, if C{EKEY_REQUIRE_INTEROP=1}.
    """
    package = package or PACKAGES.get(name, name)
    searchPath = os.pathsep.join(
        [os.environ.get("PATH", os.defpath), "/usr/local/sbin", "/usr/sbin", "/sbin"]
    )
    found = shutil.which(name, path=searchPath)
    if found:
        return found
    if interopRequired():
        raise FailTest(
            f"{name} is required (EKEY_REQUIRE_INTEROP=1) but is not installed: "
            f"apt-get install {package}"
        )
    raise SkipTest(f"{name} is not installed: apt-get install {package}")


def requireSimulator() -> None:
    """
    Skip (or fail, when interop is required) if C{ekey.services.simulator} is
    missing, so that a half-built tree reports it clearly.
    """
    try:
        import ekey.services.simulator  # noqa: F401
    except ImportError as e:
        if interopRequired():
            raise FailTest(f"ekey.services.simulator cannot be imported: {e}")
        raise SkipTest(f"ekey.services.simulator cannot be imported: {e}")


# Temporary places ----------------------------------------------------------


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
    import base64

    lines = ["# Keyring for an interop test"]
    for serial, keyHex in entries:
        key = bytes.fromhex(keyHex or LONG_TERM_KEY_HEX)
        lines.append(f"{serial} {base64.b64encode(key).decode('ascii')}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path, mode)
    return path


# Waiting -------------------------------------------------------------------


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


# Seeded plaintext ----------------------------------------------------------


def seededPlaintext(seed: bytes, count: int, start: int = 0) -> bytes:
    """
    @return: the simulator's plaintext blocks C{start} .. C{start+count-1}
        for C{--seed}, concatenated.
    """
    from ekey.services.simulator import seededBlock

    return b"".join(seededBlock(seed, i) for i in range(start, start + count))


def seededIndices(seed: bytes, data: bytes, limit: int = 1 << 20) -> List[int]:
    """
    Find each 32-byte block of C{data} among the simulator's seeded blocks,
    searching forwards only: the blocks must come in increasing order.

    @param limit: the highest block index to look at.
    @return: the index of each block.
    @raise FailTest: if a block is not a seeded block, or comes out of
        order, or C{data} is not whole blocks.
    """
    from ekey.services.simulator import seededBlock

    if len(data) % BLOCK:
        raise FailTest(f"{len(data)} bytes is not a whole number of {BLOCK}-byte blocks")
    indices: List[int] = []
    nextIndex = 0
    for n in range(len(data) // BLOCK):
        block = data[n * BLOCK:(n + 1) * BLOCK]
        i = nextIndex
        while i < limit and seededBlock(seed, i) != block:
            i += 1
        if i >= limit:
            raise FailTest(
                f"output block {n} ({block.hex()}) is not a seeded block after "
                f"index {nextIndex - 1} (searched up to {limit}): it is either "
                "not from the simulator or out of order"
            )
        indices.append(i)
        nextIndex = i + 1
    return indices


def describeMismatch(expected: bytes, actual: bytes) -> str:
    """
    @return: where two byte strings first differ, in blocks, for a failure
        message.
    """
    for n in range(0, min(len(expected), len(actual)), BLOCK):
        if expected[n:n + BLOCK] != actual[n:n + BLOCK]:
            return (f"first difference at block {n // BLOCK}: expected "
                    f"{expected[n:n + BLOCK].hex()}, got {actual[n:n + BLOCK].hex()}")
    return f"lengths differ: expected {len(expected)} bytes, got {len(actual)}"


# Processes -----------------------------------------------------------------


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
    """

    def __init__(self, testCase, name: str, argv: List[str], directory: str,
                 env: Optional[dict] = None, cwd: Optional[str] = None):
        self.name = name
        self.argv = argv
        self.stdoutPath = os.path.join(directory, f"{name}.stdout")
        self.stderrPath = os.path.join(directory, f"{name}.stderr")
        stdout = open(self.stdoutPath, "wb")
        stderr = open(self.stderrPath, "wb")
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
    Start C{ekey-sim} (its entry point, C{ekey.services.simulator:main}) and wait until it is
    ready: its Unix socket listening, or its pty path printed.

    @param listen: a Unix socket path to listen on.
    @param pty: use a pty instead; the path is then in C{process.ptyPath}.
    @param seed: the C{--seed}, making the plaintext predictable.
    @param rate: frames per second (0: as fast as possible; C{None}: the
        simulator's default).
    @return: the running simulator.
    """
    requireSimulator()
    # What the ekey-sim console script runs (ekey.services.simulator:main).
    argv = [sys.executable, "-c", "from ekey.services.simulator import main; main()"]
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


# EGD over real sockets (added for the EGD interop and conformance tests) ----


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


class EGDSocket:
    """
    A plain blocking EGD client socket with a timeout on every operation,
    for interop tests (C{TCP_NODELAY}, so that each C{send} is a segment).

    @ivar sock: the socket.
    """

    def __init__(self, host: str, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout

    def close(self) -> None:
        self.sock.close()

    def abort(self) -> None:
        """
        Close with a reset (C{SO_LINGER} 0), as a vanished client would.
        """
        import struct

        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def sendByteByByte(self, data: bytes, pause: float = 0.003) -> None:
        """
        Send C{data} one byte per C{send}, pausing between them.
        """
        for byte in data:
            self.sock.sendall(bytes((byte,)))
            time.sleep(pause)

    def recvExactly(self, n: int, what: str = "a reply") -> bytes:
        """
        @return: exactly C{n} bytes.
        @raise FailTest: on time-out or end of stream.
        """
        data = bytearray()
        deadline = time.monotonic() + self.timeout
        while len(data) < n:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(n - len(data))
            except socket.timeout:
                raise FailTest(f"timed out after {self.timeout:g} s with {len(data)} of "
                               f"{n} bytes of {what}") from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise FailTest(f"connection closed after {len(data)} of {n} bytes of {what}")
            data += chunk
        self.sock.settimeout(self.timeout)
        return bytes(data)

    def assertNothingMore(self, wait: float = 0.2) -> None:
        """
        @raise FailTest: if the server sends anything (or closes) within
            C{wait} seconds.
        """
        self.sock.settimeout(wait)
        try:
            chunk = self.sock.recv(4096)
        except socket.timeout:
            return
        finally:
            self.sock.settimeout(self.timeout)
        raise FailTest(f"the server sent {chunk!r} that nobody asked for"
                       if chunk else "the server closed the connection")

    def waitForClose(self, timeout: Optional[float] = None) -> bytes:
        """
        Read until the server closes the connection.

        @return: what came before the end.
        @raise FailTest: if it is still open after C{timeout} seconds.
        """
        timeout = self.timeout if timeout is None else timeout
        data = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FailTest(f"the server kept the connection open for {timeout:g} s "
                               f"(after sending {bytes(data)[:64]!r})")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return bytes(data)
            if not chunk:
                return bytes(data)
            data += chunk

    # Commands

    def level(self) -> int:
        """
        0x00: @return: the bits available.
        """
        self.send(b"\x00")
        return int.from_bytes(self.recvExactly(4, "a 0x00 reply"), "big")

    def read(self, n: int) -> bytes:
        """
        0x01: @return: what the server had, up to C{n} bytes.
        """
        self.send(bytes((0x01, n)))
        return self.readReply(n)

    def readReply(self, n: int) -> bytes:
        """
        @return: the body of a 0x01 reply to an C{n}-byte request.
        @raise FailTest: if it claims more than C{n} bytes.
        """
        count = self.recvExactly(1, "a 0x01 count")[0]
        if count > n:
            raise FailTest(f"a 0x01 reply of {count} bytes to a {n}-byte request")
        return self.recvExactly(count, "a 0x01 body")

    def get(self, n: int) -> bytes:
        """
        0x02, in requests of at most 255 bytes, pipelined.

        @return: exactly C{n} bytes.
        """
        requests = b"".join(bytes((0x02, min(255, n - offset))) for offset in range(0, n, 255))
        self.send(requests)
        return self.recvExactly(n, f"{n} bytes of 0x02 replies")

    def pid(self) -> str:
        """
        0x04: @return: the PID text.
        """
        self.send(b"\x04")
        return self.pidReply()

    def pidReply(self) -> str:
        length = self.recvExactly(1, "a 0x04 length")[0]
        return self.recvExactly(length, "a 0x04 body").decode("ascii", "replace")


def waitForLevel(host: str, port: int, bits: int, timeout: float = DEFAULT_TIMEOUT,
                 process: Optional[RunningProcess] = None) -> int:
    """
    Wait until an EGD server reports at least C{bits} of entropy (0x00).

    @return: the level reported then.
    """
    with EGDSocket(host, port, timeout=timeout) as s:
        def enough():
            level = s.level()
            return level if level >= bits else None

        return waitFor(enough, timeout, f"{bits} bits at the EGD server {host}:{port}",
                       process)


def residentKilobytes(pid: int) -> int:
    """
    @return: a process's resident set size (C{VmRSS}) in kB.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise FailTest(f"no VmRSS for process {pid}")


def openFileDescriptors(pid: int) -> int:
    """
    @return: how many file descriptors a process has open.
    """
    return len(os.listdir(f"/proc/{pid}/fd"))


# Relays and TLS (added for the relay interop tests) -------------------------


def quoteEndpointArgument(text: str) -> str:
    """
    @return: C{text} escaped for use as a value in an endpoint string
        (backslashes, colons and equals signs).
    """
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def writeCertificateAuthority(directory: str, commonName: str = "ekey relay CA"):
    """
    Make a CA with L{ekey.cli.certs.makeCA} and write C{ca.pem} and C{ca.key}
    in C{directory} (created if need be), as C{python3 -m ekey.cli.certs ca}
    does.  C{directory} is then a C{trustRoots=} directory for C{tls:}.

    @return: C{(certificate, privateKey)}, for L{writeHostCertificate}.
    """
    from ekey.cli import certs

    os.makedirs(directory, exist_ok=True)
    ca = certs.makeCA(commonName)
    certs.writePrivate(os.path.join(directory, "ca.key"), certs.keyPEM(ca[1]))
    certs.writePublic(os.path.join(directory, "ca.pem"), certs.certificatePEM(ca[0]))
    return ca


def writeHostCertificate(directory: str, hostname: str, ca, days: Optional[int] = None,
                         notBefore=None, name: Optional[str] = None):
    """
    Make a host certificate with L{ekey.cli.certs.makeHost} and write
    C{NAME.crt} and C{NAME.key} in C{directory}.

    @param name: the files' base name (default C{hostname}).
    @return: C{(certificatePath, keyPath)}.
    """
    from ekey.cli import certs

    kwargs = {} if days is None else {"days": days}
    certificate, key = certs.makeHost(hostname, ca, notBefore=notBefore, **kwargs)
    base = os.path.join(directory, name or hostname)
    certs.writePrivate(base + ".key", certs.keyPEM(key))
    certs.writePublic(base + ".crt", certs.certificatePEM(certificate))
    return base + ".crt", base + ".key"


def mtlsServerEndpoint(port: int, certificate: str, key: str, caCerts: str,
                       interface: str = "127.0.0.1") -> str:
    """
    @return: an C{mtls:} server endpoint string on loopback.
    """
    q = quoteEndpointArgument
    return (f"mtls:{port}:certKey={q(certificate)}:privateKey={q(key)}"
            f":caCerts={q(caCerts)}:interface={q(interface)}")


def tlsClientEndpoint(host: str, port: int, trustRoots: str,
                      certificate: Optional[str] = None, key: Optional[str] = None) -> str:
    """
    @return: a C{tls:} client endpoint string, with a client certificate
        if C{certificate} and C{key} are given.
    """
    q = quoteEndpointArgument
    text = f"tls:{host}:{port}:trustRoots={q(trustRoots)}"
    if certificate is not None:
        text += f":certificate={q(certificate)}:privateKey={q(key)}"
    return text


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


class EGDUnixSocket(EGDSocket):
    """
    L{EGDSocket} over a Unix stream socket.
    """

    def __init__(self, path: str, timeout: float = 10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self.timeout = timeout

    def recvAvailable(self, wait: float) -> bytes:
        """
        @return: what arrives within C{wait} seconds (until a pause of
            C{wait} seconds), possibly nothing.
        """
        data = bytearray()
        self.sock.settimeout(wait)
        try:
            while True:
                try:
                    chunk = self.sock.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                data += chunk
        finally:
            self.sock.settimeout(self.timeout)
        return bytes(data)


def startStunnel(testCase, directory: str, acceptPort: int, connectPort: int,
                 certificate: str, key: str, name: str = "stunnel",
                 timeout: float = DEFAULT_TIMEOUT) -> RunningProcess:
    """
    Run C{stunnel} in the foreground as a TLS server on
    C{127.0.0.1:acceptPort} forwarding to C{127.0.0.1:connectPort}, with a
    configuration file in C{directory}.

    @return: the running stunnel, once it listens.
    """
    stunnel = findPeer("stunnel4") if shutil.which("stunnel4") else findPeer("stunnel")
    config = os.path.join(directory, f"{name}.conf")
    with open(config, "w") as f:
        f.write("\n".join([
            "foreground = yes",
            "pid =",
            "debug = info",
            f"[{name}]",
            f"accept = 127.0.0.1:{acceptPort}",
            f"connect = 127.0.0.1:{connectPort}",
            f"cert = {certificate}",
            f"key = {key}",
        ]) + "\n")
    process = RunningProcess(testCase, name, [stunnel, config], directory)
    process.configPath = config
    waitForListeningTCP(acceptPort, timeout=timeout, process=process)
    return process


def runOpenSSLClient(testCase, port: int, arguments: Sequence[str], request: bytes,
                     expected: int, timeout: float = 10.0):
    """
    Run C{openssl s_client -quiet -connect 127.0.0.1:PORT ARGUMENTS}, send
    C{request}, and read its standard output until C{expected} bytes have
    come, it exits, or C{timeout} seconds pass; then kill it.

    @return: C{(returnCode, stdout, stderr)}; the return code is C{None}
        if it had to be killed.
    """
    import select

    openssl = findPeer("openssl")
    argv = [openssl, "s_client", "-quiet", "-connect", f"127.0.0.1:{port}"] + list(arguments)
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)

    def stop():
        if process.poll() is None:
            process.kill()
        process.wait(5)

    testCase.addCleanup(stop)
    returnCode = None
    output = bytearray()
    try:
        process.stdin.write(request)
        process.stdin.flush()
    except BrokenPipeError:
        pass
    deadline = time.monotonic() + timeout
    while len(output) < expected:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([process.stdout], [], [], min(remaining, 0.2))
        if ready:
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    try:
        returnCode = process.wait(min(1.0, max(0.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        returnCode = None
    stop()
    stderr = process.stderr.read().decode("utf-8", "replace")
    for stream in (process.stdin, process.stdout, process.stderr):
        try:
            stream.close()
        except OSError:
            pass
    return returnCode, bytes(output), stderr


# Kernel feeding under strace (added for the kernel interop tests) ----------

#: How strace shows the RNDADDENTROPY request: by name, or by number when it
#: cannot decode it.
RNDADDENTROPY_REQUESTS = ("RNDADDENTROPY", "0x40085203")


def straceArgv(outputPath: str, argv: Sequence[str], trace: str = "ioctl") -> List[str]:
    """
    @return: C{argv} run under C{strace -f}, tracing the system calls in
        C{trace} into C{outputPath}, with file descriptors' paths shown
        (C{-y}) and strings in hex (C{-xx}, up to 512 bytes) so that
        L{straceCalls} can read them back exactly.
    @raise SkipTest: if strace is missing (L{findPeer}).
    """
    strace = findPeer("strace")
    return [strace, "-f", "-y", "-xx", "-s", "512", "-e", f"trace={trace}",
            "-o", outputPath] + list(argv)


def startTraced(testCase, name: str, argv: Sequence[str], directory: str,
                trace: str = "ioctl", env: Optional[dict] = None) -> RunningProcess:
    """
    Start C{argv} under strace (L{straceArgv}); the trace goes to
    C{process.tracePath}.  Stop it with L{stopTraced}.
    """
    tracePath = os.path.join(directory, f"{name}.strace")
    process = RunningProcess(testCase, name, straceArgv(tracePath, argv, trace), directory,
                             env=env)
    process.tracePath = tracePath
    return process


def childPids(pid: int) -> List[int]:
    """
    @return: the ids of C{pid}'s children, from C{/proc}.
    """
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat_ = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces and parentheses.
        fields = stat_[stat_.rfind(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            children.append(int(entry))
    return children


def stopTraced(process: RunningProcess, timeout: float = 5.0) -> Optional[int]:
    """
    Stop a process started by L{startTraced}: SIGTERM to the traced
    command (strace itself may not pass a signal on, or exit on one, while
    its tracee sleeps), then wait for strace to finish writing its trace.

    @return: strace's exit status (the traced command's, normally).
    """
    for child in childPids(process.pid):
        try:
            os.kill(child, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        return process.process.wait(timeout)
    except subprocess.TimeoutExpired:
        for child in childPids(process.pid):
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return process.terminate(timeout)


def unescapeStrace(text: str) -> bytes:
    """
    @return: the bytes of a string strace printed with C{-xx} (C{\\xHH}
        escapes), tolerating other escapes.
    """
    import codecs

    return codecs.escape_decode(text.encode("latin-1"))[0]


class StraceCall:
    """
    One system call read from a trace.

    @ivar pid: the thread that made it.
    @ivar name: the call, such as C{"ioctl"}.
    @ivar arguments: the text between its parentheses.
    @ivar result: the return value (an integer), or C{None} if unknown.
    @ivar line: the whole line (joined, for calls strace split in two).
    """

    def __init__(self, pid: int, name: str, arguments: str, result: Optional[int], line: str):
        self.pid = pid
        self.name = name
        self.arguments = arguments
        self.result = result
        self.line = line

    def __repr__(self):
        return f"<StraceCall {self.line!r}>"


def straceCalls(path: str) -> List[StraceCall]:
    """
    Read the system calls of a trace written by L{straceArgv}, joining
    calls that strace split across threads (C{<unfinished ...>} and
    C{<... name resumed>}).
    """
    import re

    callPattern = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+|\?|0x[0-9a-f]+)")
    unfinished = {}
    calls = []
    try:
        with open(path, "r", encoding="latin-1") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        if line.endswith("<unfinished ...>"):
            pid = line.split(None, 1)[0]
            unfinished[pid] = line[:-len("<unfinished ...>")].rstrip()
            continue
        resumed = re.match(r"^(\d+)\s+<\.\.\. \w+ resumed>\s?(.*)$", line)
        if resumed and resumed.group(1) in unfinished:
            line = unfinished.pop(resumed.group(1)) + resumed.group(2)
        match = callPattern.match(line)
        if match is None:
            continue
        value = match.group(4)
        result = None if value == "?" else int(value, 0)
        calls.append(StraceCall(int(match.group(1)), match.group(2), match.group(3), result,
                                line))
    return calls


class EntropyAddition:
    """
    One C{RNDADDENTROPY} ioctl on the random device, read from a trace.

    @ivar device: the path of the file descriptor (C{/dev/random}).
    @ivar bits: the entropy credited.
    @ivar size: the C{buf_size} given.
    @ivar data: the bytes added (as strace showed them; at most 512).
    @ivar result: the ioctl's return value (0 for success).
    @ivar line: the trace's line.
    """

    def __init__(self, device, bits, size, data, result, line):
        self.device = device
        self.bits = bits
        self.size = size
        self.data = data
        self.result = result
        self.line = line

    def __repr__(self):
        return (f"<EntropyAddition {self.device} bits={self.bits} size={self.size} "
                f"result={self.result}>")


def entropyAdditions(path: str) -> List[EntropyAddition]:
    """
    @return: every C{RNDADDENTROPY} ioctl (by name or by its number,
        C{0x40085203}) in a trace written by L{straceArgv}, in order.
    """
    import re

    additions = []
    for call in straceCalls(path):
        if call.name != "ioctl":
            continue
        match = re.match(r"(\d+)(?:<([^>]*)>)?,\s*([\w]+),\s*(.*)$", call.arguments, re.S)
        if match is None or match.group(3) not in RNDADDENTROPY_REQUESTS:
            continue
        device = unescapeStrace(match.group(2) or "").decode("utf-8", "replace")
        rest = match.group(4)
        bits = re.search(r"entropy_count=(\d+)", rest)
        size = re.search(r"buf_size=(\d+)", rest)
        data = re.search(r'buf="((?:[^"\\]|\\.)*)"', rest)
        additions.append(EntropyAddition(
            device,
            int(bits.group(1)) if bits else None,
            int(size.group(1)) if size else None,
            unescapeStrace(data.group(1)) if data else None,
            call.result,
            call.line,
        ))
    return additions


def withoutCapability(argv: Sequence[str], capability: str = "sys_admin") -> List[str]:
    """
    @return: C{argv} run by C{setpriv} as the same user but without
        C{capability} in its bounding set (so that root, too, lacks it).
    """
    setpriv = findPeer("setpriv", "util-linux")
    return [setpriv, f"--bounding-set=-{capability}", f"--inh-caps=-{capability}"] + list(argv)


def asNobody(argv: Sequence[str], uid: int = 65534, gid: int = 65534) -> List[str]:
    """
    @return: C{argv} run by C{setpriv} as user and group C{nobody}
        (65534), with no supplementary groups and so no capabilities.
    """
    setpriv = findPeer("setpriv", "util-linux")
    return [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups"] + list(argv)


def feedKernelCommand(*arguments: str) -> List[str]:
    """
    @return: the command that runs C{ekey-feed-kernel} (C{ekey.services.feeder:main})
        with this interpreter, from the source tree (with
        L{pythonEnvironment}).
    """
    return [sys.executable, "-m", "ekey.services.feeder"] + list(arguments)


# Faults and hardening (added for the fault interop tests and
# benchmarks/bench_hardening.py) ----------------------------------------------


def memoryKilobytes(pid: int) -> dict:
    """
    @return: a process's C{VmRSS} (resident now) and C{VmHWM} (peak
        resident) in kB, from C{/proc/PID/status}, as C{{"rss": .., "hwm": ..}}.
    """
    figures = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                figures["rss"] = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                figures["hwm"] = int(line.split()[1])
    if "rss" not in figures:
        raise FailTest(f"no VmRSS for process {pid}")
    figures.setdefault("hwm", figures["rss"])
    return figures


def openFileLimit(pid: int) -> int:
    """
    @return: a process's soft limit on open files ("Max open files" in
        C{/proc/PID/limits}); a very large number for "unlimited".
    """
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft = line[len("Max open files"):].split()[0]
                return 1 << 62 if soft == "unlimited" else int(soft)
    raise FailTest(f"no open-file limit for process {pid}")


def raiseOpenFileLimit(wanted: int) -> int:
    """
    Raise this process's soft limit on open files towards C{wanted} (never
    above the hard limit, never lowering it).  Child processes inherit it.

    @return: the soft limit now.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


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


class BoundEGDSocket(EGDSocket):
    """
    L{EGDSocket} from a chosen loopback source address (such as
    C{127.0.0.2}), so that a server that tells clients apart by address
    (per-client rate limits) sees distinct clients on one host.
    """

    def __init__(self, source: str, host: str, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout


def massLevelQueries(host: str, port: int, count: int, timeout: float = 30.0,
                     hold: float = 0.0) -> dict:
    """
    Open C{count} TCP connections to an EGD server at once (non-blocking
    connects from one selector loop), send C{0x00} on each as soon as it is
    connected, and wait for each to be answered (4 bytes) or closed by the
    server, for at most C{timeout} seconds in all.  Answered connections
    stay open until every connection is settled (and C{hold} seconds more),
    so that the server sees them all at once; then all are closed.

    @return: counts C{answered}, C{closed} (closed or reset by the server,
        before an answer), C{connectFailed} (refused, or any connection
        error other than a reset), C{unsettled} (neither within
        the time), and C{seconds} (until all were settled).
    """
    import errno
    import selectors

    selector = selectors.DefaultSelector()
    sockets = []
    state = {}
    counts = {"answered": 0, "closed": 0, "connectFailed": 0, "unsettled": 0}
    start = time.monotonic()
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            sockets.append(s)
            code = s.connect_ex((host, port))
            if code not in (0, errno.EINPROGRESS):
                counts["connectFailed"] += 1
                continue
            state[s] = b""
            selector.register(s, selectors.EVENT_WRITE)
        pending = len(state)
        deadline = start + timeout
        while pending and time.monotonic() < deadline:
            for key, events in selector.select(min(0.5, max(0.0, deadline - time.monotonic()))):
                s = key.fileobj
                if events & selectors.EVENT_WRITE:
                    code = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code:
                        # Reset after the handshake: accepted, then closed by
                        # the server.  Anything else: never connected.
                        reset = code in (errno.ECONNRESET, errno.EPIPE)
                        counts["closed" if reset else "connectFailed"] += 1
                        selector.unregister(s)
                        del state[s]
                        pending -= 1
                        continue
                    try:
                        s.send(b"\x00")
                    except OSError:
                        counts["closed"] += 1
                        selector.unregister(s)
                        del state[s]
                        pending -= 1
                        continue
                    selector.modify(s, selectors.EVENT_READ)
                    continue
                try:
                    chunk = s.recv(16)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    counts["closed"] += 1
                    selector.unregister(s)
                    del state[s]
                    pending -= 1
                    continue
                state[s] += chunk
                if len(state[s]) >= 4:
                    counts["answered"] += 1
                    selector.unregister(s)
                    del state[s]
                    pending -= 1
        counts["unsettled"] = pending
        counts["seconds"] = time.monotonic() - start
        if hold:
            time.sleep(hold)
    finally:
        selector.close()
        for s in sockets:
            s.close()
    return counts


def runGarbageKey(path: str, seconds: float) -> None:
    """
    Be a broken key on a Unix socket at C{path}: to each host that
    connects, send junk as fast as it reads (random bytes, many of them
    turned into stray C{*}, with runs of C{*} and C{"* "}), reading and
    discarding what it sends, for C{seconds} from start-up; then exit.
    Run it in a subprocess (L{startGarbageKey}).
    """
    import threading

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
            f"from tests.interop import runGarbageKey; runGarbageKey({path!r}, {seconds!r})"]
    process = RunningProcess(testCase, name, argv, directory, env=pythonEnvironment())
    waitForListening(path, process=process)
    return process


def fetchMetrics(port: int, timeout: float = 5.0) -> dict:
    """
    @return: the Prometheus metrics a daemon serves on
        C{tcp:PORT:interface=127.0.0.1} (C{--metrics}), as
        C{{"name{labels}": value}}; C{{}} if they cannot be fetched.
    """
    import urllib.request

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
