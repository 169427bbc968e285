"""
What the benchmarks share: starting and stopping their subprocesses, free
loopback ports, and asking an EGD server its level.  Benchmarks run as
scripts (C{python3 benchmarks/NAME.py}), so this module is imported from
their own directory.
"""

import os
import signal
import socket
import subprocess
from typing import Callable, List, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Processes:
    """
    Every subprocess a benchmark starts, each with its output in
    C{DIRECTORY/NAME.out}, stopped by id at the end.
    """

    def __init__(self, directory: str, preexec: Optional[Callable[[], object]] = None):
        """
        @param preexec: run in each child before it starts (such as raising
            its open-file limit).
        """
        self.directory = directory
        self.preexec = preexec
        self.running: List[subprocess.Popen] = []
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [REPO_ROOT] + ([self.env["PYTHONPATH"]] if self.env.get("PYTHONPATH") else []))
        self.env["PYTHONUNBUFFERED"] = "1"

    def start(self, name: str, argv: List[str]) -> subprocess.Popen:
        """
        @return: the started process; its name is C{process.benchName}.
        """
        log = open(os.path.join(self.directory, f"{name}.out"), "wb")
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 env=self.env, cwd=self.directory, start_new_session=True,
                                 preexec_fn=self.preexec)
        finally:
            log.close()
        p.benchName = name
        self.running.append(p)
        return p

    def tail(self, p: subprocess.Popen) -> str:
        """
        @return: the end of a process's output and log, for error messages.
        """
        text = ""
        for suffix in (".out", ".log"):
            path = os.path.join(self.directory, p.benchName + suffix)
            if os.path.exists(path):
                with open(path, "rb") as f:
                    text += f.read()[-1500:].decode("utf-8", "replace")
        return text

    def stop(self, p: subprocess.Popen) -> None:
        """
        Stop a process: SIGTERM, then SIGKILL after five seconds.
        """
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if p in self.running:
            self.running.remove(p)

    def stopAll(self) -> None:
        """
        Stop every process still running, newest first.
        """
        for p in list(reversed(self.running)):
            self.stop(p)


def freePort() -> int:
    """
    @return: a TCP port free on 127.0.0.1 now.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpuSeconds(pid: int) -> Optional[float]:
    """
    @return: user + system CPU seconds of a process, from /proc.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def egdLevelBits(port: int, timeout: float = 2.0) -> Optional[int]:
    """
    @return: an EGD server's level in bits (0x00), or C{None} if it cannot
        be asked.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"\x00")
            data = b""
            while len(data) < 4:
                chunk = s.recv(4 - len(data))
                if not chunk:
                    return None
                data += chunk
            return int.from_bytes(data, "big")
    except OSError:
        return None


def egdLevelBytes(port: int, timeout: float = 2.0) -> Optional[int]:
    """
    @return: an EGD server's level in bytes, or C{None}.
    """
    bits = egdLevelBits(port, timeout)
    return None if bits is None else bits // 8
