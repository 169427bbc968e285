"""
EGD serving speed: our daemon (twistd ekey) and the real ekeyd 1.1.5, side
by side in one run.

    python3 benchmarks/bench_egd.py [--duration 3] [--warmup 0.5]
        [--clients 1,50,500] [--only ours|ekeyd] [--procs 1] [--timeout 2]

Each server is fed by its own simulated key (ekey-sim on a Unix socket, at
the simulator's default 125 entropy frames/s unless --rate says otherwise),
so both serve the same kind of key, and serves EGD on TCP on 127.0.0.1.
For 1, 50 and 500 concurrent clients and for two commands,

    level   0x00        (entropy available, a 4-byte reply)
    read32  0x01 0x20   (non-blocking read of up to 32 bytes)
    block32 0x02 0x20   (blocking read of 32 bytes: what real consumers such
                        as QEMU's rng-egd and ekeyd-egd-linux send)

each client sends one request, waits for the whole reply and then sends the
next (a closed loop).  After a short warm-up, requests completed during the
measured window give requests per second and the p50/p99 latency of each
request.  Before that, every client connects and has one 0x00 answered (not
measured; a note says if that took 0.5 s or more), so the server has really
accepted every connection.  Errors are counted over the whole case
(connecting included): connections refused, reset, closed by the server, or
not connected and answered once within --connect-timeout ("connect"); short
or malformed replies; and requests unanswered after --timeout seconds.  The
"B/s" column is the entropy the read32 and block32 replies carried: the
keys make only about 4000 bytes/s, so most read32 replies are empty once the
pool is drained (expected, not an error), and block32 requests wait for the
key: their rate is the key's, and their latency is how long a consumer
waits for 32 bytes with that many others waiting beside it.  A blocking read
unanswered after max(--timeout, 10) seconds counts as a time-out.

Beside requests per second, "req/cpu-s" is requests answered per second of
the server's CPU time in the window: what a request costs the server,
whatever else limits the rate (ekeyd answers on a ~10 ms tick, so its
requests per second say more about its tick than about its cost).  The
server's CPU includes decoding its key's frames (Skein MACs and decryption:
C in ekeyd, Python in ours), which dominates the block32 cases.

The load generator is a separate process (--procs of them) driving every
client from one epoll loop, not a thread per client.  The cpu columns show
how busy the server and the load generator were during the window (100% =
one core), so one can tell which of them was the bottleneck; "rest" is the
rest of the machine's busy time in the window (the simulators, and any other
process on the machine).  Both share the
machine (and its cores) with each other and with the simulators.

ekeyd is known to answer about 100 requests/s in total (on a ~10 ms tick)
and to abort ("buffer overflow detected") at around 400 simultaneous
clients.  Its cases with the most clients are therefore run last, a dead
ekeyd is reported as a result ("ekeyd died") and is restarted, with a fresh
simulated key, for any case after that.

Targets reported against: ours at least 50x ekeyd's request rate at 50
clients, ours with p99 under 10 ms at 50 clients, and ours with no errors at
500 clients.

This is a benchmark, not a test: it prints figures and asserts nothing.
Every process it starts is stopped (by its id) before it exits.  Needs the
ekeyd package for the ekeyd side (apt-get install ekeyd); --only ours runs
without it.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import platform
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from _support import cpuSeconds, egdLevelBits, freePort  # noqa: E402  (benchmarks/ is on sys.path)
sys.path.insert(0, REPO_ROOT)

COMMANDS = {
    "level": b"\x00",
    "read32": b"\x01\x20",
    "block32": b"\x02\x20",
}
COMMAND_TEXT = {"level": "0x00", "read32": "0x01 32", "block32": "0x02 32"}
#: Seconds a blocking read may wait before it counts as a time-out, at the
#: least (a key's 4,000 bytes/s shared by 500 clients is 4 s a read).
BLOCKING_TIMEOUT = 10.0
ERROR_KINDS = ("refused", "reset", "closed", "short", "bad", "timeout", "connect")

# Targets.
TARGET_RATIO = 50.0
TARGET_P99_MS = 10.0


# The load generator (a separate process) -------------------------------------


def _raiseFileLimit(wanted: int) -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, wanted), hard))
    except (ImportError, ValueError, OSError):
        pass


class _Client:
    __slots__ = ("sock", "fd", "buf", "sent", "timedOut", "connected")

    def __init__(self, sock):
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = b""
        self.sent = 0.0
        self.timedOut = False
        self.connected = False


def _replyLength(command: str, buf: bytes) -> Optional[int]:
    """
    @return: the length of the whole reply that C{buf} starts, or C{None}
        if that is not known yet; -1 if the reply is malformed.
    """
    if command == "level":
        return 4
    if command == "block32":
        return 32
    if not buf:
        return None
    count = buf[0]
    if count > 32:
        return -1
    return 1 + count


def runWorker(spec: dict) -> dict:
    """
    Drive C{spec["clients"]} closed-loop EGD clients against one server.

    Protocol with the parent: print C{ready} once connected, then read a
    line C{go T} (T on the monotonic clock, shared by all processes on
    Linux), warm up until T + warmup, measure until T + warmup + duration,
    and return the results (printed as JSON by the caller).
    """
    host, port, count = spec["host"], spec["port"], spec["clients"]
    command, request = spec["command"], COMMANDS[spec["command"]]
    timeout = spec["timeout"]
    _raiseFileLimit(count + 64)
    errors = {kind: 0 for kind in ERROR_KINDS}
    ep = select.epoll()
    byFd: Dict[int, _Client] = {}

    def drop(client: _Client, kind: Optional[str]) -> None:
        if kind is not None:
            errors[kind] += 1
        byFd.pop(client.fd, None)
        try:
            ep.unregister(client.fd)
        except (OSError, ValueError):
            pass
        client.sock.close()

    # Connect everybody (not measured), bounded in time.
    connecting = 0
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            errors["refused" if err == errno.ECONNREFUSED else "connect"] += 1
            sock.close()
            continue
        client = _Client(sock)
        byFd[client.fd] = client
        ep.register(client.fd, select.EPOLLOUT)
        connecting += 1
    deadline = time.monotonic() + spec["connectTimeout"]
    while connecting and time.monotonic() < deadline:
        for fd, _event in ep.poll(0.1):
            client = byFd.get(fd)
            if client is None or client.connected:
                continue
            connecting -= 1
            err = client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                drop(client, "refused" if err == errno.ECONNREFUSED else "connect")
            else:
                client.connected = True
                ep.modify(fd, select.EPOLLIN)
    for client in list(byFd.values()):
        if not client.connected:
            drop(client, "connect")
    # Prime every connection with one 0x00, answered, so that the server has
    # really accepted it (a burst of connects overflows a short listen
    # backlog, and the kernel then retries with growing delays).
    for client in list(byFd.values()):
        try:
            client.sock.send(b"\x00")
        except OSError:
            drop(client, "reset")
    priming = set(byFd)
    while priming and time.monotonic() < deadline:
        for fd, _event in ep.poll(0.1):
            client = byFd.get(fd)
            if client is None or fd not in priming:
                continue
            try:
                data = client.sock.recv(64)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                priming.discard(fd)
                drop(client, "reset")
                continue
            if not data:
                priming.discard(fd)
                drop(client, "short" if client.buf else "closed")
                continue
            client.buf += data
            if len(client.buf) >= 4:
                priming.discard(fd)
                if len(client.buf) > 4:
                    drop(client, "bad")
                client.buf = b""
    for fd in priming:
        drop(byFd[fd], "connect")
    setupTime = time.monotonic() - (deadline - spec["connectTimeout"])
    connected = len(byFd)

    sys.stdout.write(f"ready {connected}\n")
    sys.stdout.flush()
    line = sys.stdin.readline().split()
    if not line or line[0] != "go":
        return {"aborted": True}
    t0 = float(line[1])
    while time.monotonic() < t0:
        time.sleep(min(0.01, max(0.0, t0 - time.monotonic())))
    start = t0 + spec["warmup"]
    end = start + spec["duration"]

    latencies: List[float] = []
    entropyBytes = 0
    cpuStart = cpuEnd = None
    now = time.monotonic()
    for client in list(byFd.values()):
        client.sent = now
        try:
            client.sock.send(request)
        except OSError:
            drop(client, "reset")
    nextTimeoutCheck = now + 0.1
    recv = socket.socket.recv
    while byFd:
        now = time.monotonic()
        if cpuStart is None and now >= start:
            cpuStart = time.process_time()
        if now >= end:
            break
        if now >= nextTimeoutCheck:
            nextTimeoutCheck = now + 0.1
            for client in byFd.values():
                if not client.timedOut and now - client.sent > timeout:
                    client.timedOut = True
                    errors["timeout"] += 1
        for fd, _event in ep.poll(min(0.05, end - now)):
            client = byFd.get(fd)
            if client is None:
                continue
            try:
                data = recv(client.sock, 65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                drop(client, "reset")
                continue
            if not data:
                drop(client, "short" if client.buf else "closed")
                continue
            buf = client.buf + data if client.buf else data
            length = _replyLength(command, buf)
            if length is None or (0 < length and len(buf) < length):
                client.buf = buf
                continue
            if length < 0 or len(buf) > length:
                # Malformed, or bytes nobody asked for.
                drop(client, "bad")
                continue
            t = time.monotonic()
            if not client.timedOut and start <= t < end:
                latencies.append(t - client.sent)
                if command == "read32":
                    entropyBytes += length - 1
                elif command == "block32":
                    entropyBytes += length
            client.buf = b""
            client.timedOut = False
            if t < end:
                client.sent = t
                try:
                    client.sock.send(request)
                except OSError:
                    drop(client, "reset")
    cpuEnd = time.process_time()
    now = time.monotonic()
    for client in list(byFd.values()):
        if not client.timedOut and now - client.sent > timeout:
            errors["timeout"] += 1
        drop(client, None)
    return {
        "connected": connected,
        "latencies": latencies,
        "bytes": entropyBytes,
        "errors": errors,
        "cpu": (cpuEnd - cpuStart) if cpuStart is not None else 0.0,
        "window": spec["duration"],
        "setup": setupTime,
    }


def workerMain() -> None:
    spec = json.loads(sys.argv[2])
    result = runWorker(spec)
    sys.stdout.write("result " + json.dumps(result) + "\n")
    sys.stdout.flush()


# Servers -------------------------------------------------------------------


class Cleanups:
    """
    Just what the interop helpers want of a test case: C{addCleanup}.
    """

    def __init__(self):
        self._cleanups = []

    def addCleanup(self, function, *args, **kwargs):
        self._cleanups.append((function, args, kwargs))

    def run(self):
        while self._cleanups:
            function, args, kwargs = self._cleanups.pop()
            try:
                function(*args, **kwargs)
            except Exception as e:  # keep cleaning up
                print(f"(cleanup {function!r} failed: {e})", file=sys.stderr)


class Server:
    """
    One EGD server under test with its own simulated key.
    """

    def __init__(self, kind: str, root: str, rate: Optional[float], generation: int = 0):
        self.kind = kind
        self.name = "ours" if kind == "ours" else "ekeyd"
        self.directory = os.path.join(root, f"{kind}{generation}")
        os.makedirs(self.directory)
        self.rate = rate
        self.cleanups = Cleanups()
        self.process = None
        self.simulator = None
        self.port = None

    def start(self, timeout: float = 30.0) -> None:
        from tests.interop import processes as interop
        from tests.interop.requirements import findPeer

        keyring = interop.writeKeyring(os.path.join(self.directory, "keyring"))
        keySocket = os.path.join(self.directory, "key.sock")
        self.simulator = interop.startSimulator(
            self.cleanups, self.directory, listen=keySocket, rate=self.rate,
            name=f"ekey-sim-{self.kind}")
        self.port = freePort()
        if self.kind == "ours":
            self.process = interop.startDaemon(
                self.cleanups, self.directory, [keySocket], keyring, None,
                extra=["--port", f"tcp:{self.port}:interface=127.0.0.1"])
        else:
            ekeyd = findPeer("ekeyd")
            control = os.path.join(self.directory, "ctl.sock")
            config = os.path.join(self.directory, "ekeyd.conf")
            with open(config, "w") as f:
                f.write("\n".join([
                    "Daemonise(false)",
                    f'Keyring "{keyring}"',
                    f'UnixControlSocket "{control}"',
                    # The output must be configured before any key.
                    f'EGDTCPSocket({self.port}, "127.0.0.1")',
                    f'AddEntropyKey "{keySocket}"',
                ]) + "\n")
            self.process = interop.RunningProcess(
                self.cleanups, "ekeyd",
                [ekeyd, "-f", config, "-p", os.path.join(self.directory, "ekeyd.pid")],
                self.directory)
        # Ready when it serves entropy: the key's session is up.
        interop.waitFor(lambda: (egdLevelBits(self.port) or 0) > 0, timeout,
                        f"{self.name} to have entropy on port {self.port}", self.process)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def deathNote(self) -> str:
        status = self.process.poll()
        how = f"killed by signal {-status}" if status is not None and status < 0 \
            else f"exit status {status}"
        text = (self.process.stderr() + self.process.stdout()).strip().splitlines()
        tail = f": {text[-1].strip()}" if text else ""
        return f"{self.name} died ({how}){tail}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
        self.cleanups.run()


# Running a case ------------------------------------------------------------


def percentile(sortedValues: List[float], fraction: float) -> Optional[float]:
    if not sortedValues:
        return None
    # Nearest rank.
    index = min(len(sortedValues) - 1, max(0, math.ceil(fraction * len(sortedValues)) - 1))
    return sortedValues[index]


def runCase(server: Server, clients: int, command: str, args) -> dict:
    procs = max(1, min(args.procs, clients))
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    workers = []
    env = dict(os.environ)
    for share in shares:
        spec = {
            "host": "127.0.0.1", "port": server.port, "clients": share, "command": command,
            "warmup": args.warmup, "duration": args.duration,
            "timeout": max(args.timeout, BLOCKING_TIMEOUT) if command == "block32" else args.timeout,
            "connectTimeout": args.connect_timeout,
        }
        workers.append(subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env))
    result = {"server": server.name, "clients": clients, "command": command, "note": ""}
    try:
        connected = 0
        for worker in workers:
            line = worker.stdout.readline().split()  # bounded by the worker's connect timeout
            if line and line[0] == "ready":
                connected += int(line[1])
        t0 = time.monotonic() + 0.05
        for worker in workers:
            try:
                worker.stdin.write(f"go {t0!r}\n")
                worker.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
        start = t0 + args.warmup
        end = start + args.duration
        time.sleep(max(0.0, start - time.monotonic()))
        serverCpu0 = cpuSeconds(server.process.pid)
        machine0 = machineSample()
        time.sleep(max(0.0, end - time.monotonic()))
        serverCpu1 = cpuSeconds(server.process.pid)
        machine1 = machineSample()
        latencies: List[float] = []
        errors = {kind: 0 for kind in ERROR_KINDS}
        entropyBytes = 0
        workerCpu = 0.0
        setup = 0.0
        for worker in workers:
            try:
                out, _ = worker.communicate(timeout=args.timeout + 10)
            except subprocess.TimeoutExpired:
                worker.kill()
                out, _ = worker.communicate()
                result["note"] += " load generator hung;"
            for line in out.splitlines():
                if line.startswith("result "):
                    data = json.loads(line[len("result "):])
                    latencies += data.get("latencies", [])
                    entropyBytes += data.get("bytes", 0)
                    workerCpu += data.get("cpu", 0.0)
                    setup = max(setup, data.get("setup", 0.0))
                    for kind, n in data.get("errors", {}).items():
                        errors[kind] += n
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(5)
    latencies.sort()
    result.update(
        connected=connected,
        rate=len(latencies) / args.duration,
        p50=percentile(latencies, 0.50),
        p99=percentile(latencies, 0.99),
        errors=sum(errors.values()),
        errorKinds={k: v for k, v in errors.items() if v},
        bytesPerSecond=entropyBytes / args.duration if command != "level" else None,
        serverCpu=(None if serverCpu0 is None or serverCpu1 is None
                   else (serverCpu1 - serverCpu0) / args.duration),
        loadCpu=workerCpu / args.duration,
    )
    machine = busyCores(machine0, machine1)
    result["perCpuSecond"] = (len(latencies) / (result["serverCpu"] * args.duration)
                              if result["serverCpu"] else None)
    result["otherCpu"] = (None if machine is None or result["serverCpu"] is None
                          else max(0.0, machine - result["serverCpu"] - result["loadCpu"]))
    if connected < clients:
        result["note"] += f" {connected}/{clients} connected;"
    if setup >= 0.5:
        result["note"] += f" connecting all took {setup:.1f} s;"
    if not server.alive():
        result["died"] = True
        result["note"] += " " + server.deathNote() + ";"
    return result


# Reporting -----------------------------------------------------------------


def facts(args) -> List[str]:
    import twisted

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ekeydVersion = "not run"
    if args.only != "ours":
        path = shutil.which("ekeyd", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        if path:
            try:
                out = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=5)
                ekeydVersion = (out.stdout + out.stderr).strip() or "?"
            except (OSError, subprocess.TimeoutExpired):
                ekeydVersion = "?"
        else:
            ekeydVersion = "not installed"
    return [
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"Twisted {twisted.__version__}, {platform.system()} {platform.release()} "
        f"{platform.machine()}",
        f"CPU: {cpu}; nproc: {os.cpu_count()} (sched affinity: {len(os.sched_getaffinity(0))})",
        f"ekeyd: {ekeydVersion}",
        f"Keys: one ekey-sim per server, {simulatorRate(args):g} frames/s each, on Unix sockets; "
        f"EGD over TCP on 127.0.0.1",
        f"Per case: {args.warmup:g} s warm-up, {args.duration:g} s measured; closed loop; "
        f"request time-out {args.timeout:g} s; {args.procs} load-generator process(es), "
        "epoll, one loop for all clients",
        f"Machine busy before the run (other processes): {fmt(machineBusy(), '.2f')} cores "
        f"of {os.cpu_count()}; load average {loadAverage()}",
        "NOTE: the daemon, the load generator and both simulators share these "
        f"{os.cpu_count()} cores, so figures are lower than on a machine with a core "
        "for each.",
    ]


def loadAverage() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def simulatorRate(args) -> float:
    if args.rate is not None:
        return args.rate
    from ekey.services.simulator import DEFAULT_RATE

    return DEFAULT_RATE


def machineSample():
    """
    @return: (all jiffies, idle jiffies) of the whole machine, or C{None}.
    """
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return sum(fields[:8]), fields[3] + (fields[4] if len(fields) > 4 else 0)
    except (OSError, ValueError, IndexError):
        return None


def busyCores(before, after) -> Optional[float]:
    """
    @return: how many cores were busy between two L{machineSample}s.
    """
    if before is None or after is None or after[0] == before[0]:
        return None
    return (1 - (after[1] - before[1]) / (after[0] - before[0])) * (os.cpu_count() or 1)


def machineBusy(seconds: float = 1.0) -> Optional[float]:
    """
    @return: how busy the whole machine is before anything starts, in cores
        (other people's processes disturb the figures).
    """
    before = machineSample()
    time.sleep(seconds)
    return busyCores(before, machineSample())


def fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def printTable(results: List[dict]) -> None:
    header = (f"{'server':<6} {'clients':>7} {'command':<8} {'req/s':>9} {'req/cpu-s':>9} "
              f"{'p50 ms':>8} "
              f"{'p99 ms':>8} {'errors':>6} {'B/s':>6} {'srv cpu':>7} {'gen cpu':>7} "
              f"{'rest':>5}  notes")
    print(header)
    print("-" * len(header))
    for r in results:
        kinds = ", ".join(f"{k} {v}" for k, v in r["errorKinds"].items())
        note = (f"({kinds}) " if kinds else "") + r["note"].strip()
        print(f"{r['server']:<6} {r['clients']:>7} {COMMAND_TEXT[r['command']]:<8} "
              f"{r['rate']:>9.1f} {fmt(r.get('perCpuSecond'), '9.0f'):>9} "
              f"{fmt(r['p50'] and r['p50'] * 1e3, '8.2f'):>8} "
              f"{fmt(r['p99'] and r['p99'] * 1e3, '8.2f'):>8} {r['errors']:>6} "
              f"{fmt(r['bytesPerSecond'], '6.0f'):>6} "
              f"{fmt(r['serverCpu'] and r['serverCpu'] * 100, '6.0f'):>6}% "
              f"{fmt(r['loadCpu'] * 100, '6.0f'):>6}% "
              f"{fmt(r['otherCpu'] and r['otherCpu'] * 100, '4.0f'):>4}%  {note}")


def printComparison(results: List[dict], clientCounts: List[int]) -> None:
    byKey = {(r["server"], r["clients"], r["command"]): r for r in results}
    rows = []
    for clients in clientCounts:
        for command in COMMANDS:
            ours = byKey.get(("ours", clients, command))
            theirs = byKey.get(("ekeyd", clients, command))
            if ours is None or theirs is None:
                continue
            if theirs.get("died") or theirs["rate"] == 0:
                ratio = "ekeyd died" if theirs.get("died") else "ekeyd served 0"
                p99 = "-"
            else:
                ratio = f"{ours['rate'] / theirs['rate']:.1f}x"
                p99 = ("-" if not ours["p99"] or theirs["p99"] is None
                       else f"{theirs['p99'] / ours['p99']:.1f}x")
            perCpu = "-"
            if ours.get("perCpuSecond") and theirs.get("perCpuSecond"):
                perCpu = f"{ours['perCpuSecond'] / theirs['perCpuSecond']:.1f}x"
            rows.append((clients, COMMAND_TEXT[command], ratio, perCpu, p99))
    if not rows:
        return
    print()
    print("ours / ekeyd, per case")
    header = (f"{'clients':>7} {'command':<8} {'req/s ratio':>12} {'req/cpu-s ratio':>16} "
              f"{'p99 ekeyd/ours':>15}")
    print(header)
    print("-" * len(header))
    for clients, command, ratio, perCpu, p99 in rows:
        print(f"{clients:>7} {command:<8} {ratio:>12} {perCpu:>16} {p99:>15}")


def printTargets(results: List[dict]) -> None:
    byKey = {(r["server"], r["clients"], r["command"]): r for r in results}
    lines = []
    # The targets are on the server's own work: a blocking read's rate and
    # latency are the key's.
    for command in ("level", "read32"):
        ours = byKey.get(("ours", 50, command))
        theirs = byKey.get(("ekeyd", 50, command))
        if ours and theirs and theirs["rate"] > 0 and not theirs.get("died"):
            ratio = ours["rate"] / theirs["rate"]
            lines.append(f"{'met ' if ratio >= TARGET_RATIO else 'MISSED'} ours >= "
                         f"{TARGET_RATIO:g}x ekeyd's req/s at 50 clients, "
                         f"{COMMAND_TEXT[command]}: {ratio:.1f}x")
        if ours:
            p99 = ours["p99"] * 1e3 if ours["p99"] is not None else None
            ok = p99 is not None and p99 < TARGET_P99_MS
            lines.append(f"{'met ' if ok else 'MISSED'} ours p99 < {TARGET_P99_MS:g} ms at "
                         f"50 clients, {COMMAND_TEXT[command]}: {fmt(p99, '.2f')} ms")
    for command in ("level", "read32"):
        ours = byKey.get(("ours", 500, command))
        if ours:
            ok = ours["errors"] == 0 and ours["connected"] == 500
            lines.append(f"{'met ' if ok else 'MISSED'} ours with no errors at 500 clients, "
                         f"{COMMAND_TEXT[command]}: {ours['errors']} errors, "
                         f"{ours['connected']}/500 connected")
    if lines:
        print()
        print("Targets")
        for line in lines:
            print("  " + line)


# Main ----------------------------------------------------------------------


def parseClients(text: str) -> List[int]:
    try:
        values = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers")
    if not values or any(v < 1 or v > 5000 for v in values):
        raise argparse.ArgumentTypeError("client counts must be from 1 to 5000")
    return values


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        workerMain()
        return
    parser = argparse.ArgumentParser(
        description="EGD requests/s and latency: our daemon and ekeyd 1.1.5 side by side.")
    parser.add_argument("--duration", type=float, default=3.0,
                        help="seconds measured per case (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=0.5,
                        help="seconds of warm-up per case (default %(default)s)")
    parser.add_argument("--clients", type=parseClients, default=[1, 50, 500],
                        help="concurrent client counts, comma-separated (default 1,50,500)")
    parser.add_argument("--only", choices=["ours", "ekeyd"],
                        help="benchmark only one server")
    parser.add_argument("--procs", type=int, default=1,
                        help="load-generator processes (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=2.0,
                        help="a request unanswered this long is an error (default %(default)s)")
    parser.add_argument("--connect-timeout", type=float, default=10.0,
                        help="seconds allowed for connecting the clients (default %(default)s)")
    parser.add_argument("--rate", type=float, default=None,
                        help="simulated key's frames/s (default: the simulator's, 125)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory with the servers' logs")
    args = parser.parse_args()
    args.duration = min(max(args.duration, 0.1), 60.0)
    args.warmup = min(max(args.warmup, 0.0), 10.0)
    args.procs = min(max(args.procs, 1), 8)

    kinds = [k for k in ("ours", "ekeyd") if args.only in (None, k)]
    # ekeyd's cases with many clients may kill it: run them last, biggest last.
    cases = []
    for clients in sorted(args.clients):
        for command in COMMANDS:
            for kind in kinds:
                cases.append((kind, clients, command))
    cases.sort(key=lambda c: (c[0] == "ekeyd" and c[1] >= 100, c[0] == "ekeyd" and c[1]))

    for line in facts(args):
        print(line)
    print(flush=True)

    root = tempfile.mkdtemp(prefix="ekey-bench-")
    servers: Dict[str, Server] = {}
    generations = {k: 0 for k in kinds}
    results: List[dict] = []
    runStart = time.monotonic()
    try:
        for kind in kinds:
            servers[kind] = Server(kind, root, args.rate)
        for kind in kinds:
            servers[kind].start()
        for kind, clients, command in cases:
            server = servers[kind]
            if not server.alive():
                server.stop()
                generations[kind] += 1
                server = servers[kind] = Server(kind, root, args.rate, generations[kind])
                server.start()
            print(f"... {server.name}, {clients} clients, {COMMAND_TEXT[command]}",
                  file=sys.stderr, flush=True)
            results.append(runCase(server, clients, command, args))
    except Exception as e:
        print(f"benchmark stopped early: {e}", file=sys.stderr)
        for server in servers.values():
            if server.process is not None:
                print(server.process.describe(), file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()
        if args.keep:
            print(f"(servers' files kept in {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)

    order = {k: i for i, k in enumerate(("ours", "ekeyd"))}
    results.sort(key=lambda r: (r["clients"], list(COMMANDS).index(r["command"]),
                                order[r["server"]]))
    printTable(results)
    printComparison(results, sorted(args.clients))
    printTargets(results)
    print(f"\nWhole run: {time.monotonic() - runStart:.0f} s")


if __name__ == "__main__":
    main()
