"""
The kernel side of feeding entropy: running a command under C{strace} and
reading back its C{RNDADDENTROPY} ioctls exactly, dropping privileges
with C{setpriv}, and the C{ekey-feed-kernel} command.
"""

from __future__ import annotations

import codecs
import os
import re
import signal
import subprocess
import sys
from typing import List, Optional, Sequence

from tests.interop.processes import RunningProcess
from tests.interop.requirements import findPeer


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
        (65534), with no supplementary groups and one capability only:
        C{CAP_DAC_READ_SEARCH}, so that it can read an interpreter and
        source tree that only root may read (a pyenv under C{/root}).  It
        may not write where nobody may not, nor feed the kernel.
    """
    setpriv = findPeer("setpriv", "util-linux")
    return [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"] + list(argv)


def feedKernelCommand(*arguments: str) -> List[str]:
    """
    @return: the command that runs C{ekey-feed-kernel} (C{ekey.cli.feedkernel:main})
        with this interpreter, from the source tree (with
        L{pythonEnvironment}).
    """
    return [sys.executable, "-m", "ekey.cli.feedkernel"] + list(arguments)

