"""
Load: many EGD clients at once, and what a process holds meanwhile
(resident memory, its open-file limit).
"""

from __future__ import annotations

import errno
import resource
import selectors
import socket
import time

from twisted.trial.unittest import FailTest


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
    Raise this process's soft limit on open files to C{wanted}, and its
    hard limit too if need be and allowed (as root); never lower either.
    Child processes inherit them.

    @return: the soft limit now.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    for limits in ((wanted, max(hard, wanted) if hard != resource.RLIM_INFINITY else hard),
                   (min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


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

