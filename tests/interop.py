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
    Skip (or fail, when interop is required) if C{ekey.simulator} is
    missing, so that a half-built tree reports it clearly.
    """
    try:
        import ekey.simulator  # noqa: F401
    except ImportError as e:
        if interopRequired():
            raise FailTest(f"ekey.simulator cannot be imported: {e}")
        raise SkipTest(f"ekey.simulator cannot be imported: {e}")


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
    from ekey.simulator import seededBlock

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
    from ekey.simulator import seededBlock

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
    Start C{ekey-sim} (its entry point, C{ekey.simulator:main}) and wait until it is
    ready: its Unix socket listening, or its pty path printed.

    @param listen: a Unix socket path to listen on.
    @param pty: use a pty instead; the path is then in C{process.ptyPath}.
    @param seed: the C{--seed}, making the plaintext predictable.
    @param rate: frames per second (0: as fast as possible; C{None}: the
        simulator's default).
    @return: the running simulator.
    """
    requireSimulator()
    # What the ekey-sim console script runs (ekey.simulator:main).
    argv = [sys.executable, "-c", "from ekey.simulator import main; main()"]
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
    ekeyd = findPeer("ekeyd")
    control = socketPath(testCase, directory, "ctl.sock")
    if not os.path.exists(outputFile):
        # SetOutputToFile refuses a missing file.
        open(outputFile, "wb").close()

    def lua(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [
        "Daemonise(false)",
        f"Keyring {lua(keyring)}",
        f"UnixControlSocket {lua(control)}",
        # The output must be configured before any key.
        f"SetOutputToFile {lua(outputFile)}",
    ]
    lines += [f"AddEntropyKey {lua(key)}" for key in keys]
    config = os.path.join(directory, "ekeyd.conf")
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
