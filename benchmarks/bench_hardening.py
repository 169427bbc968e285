"""
Hardening figures for our daemon (twistd ekey), in one run:

    python3 benchmarks/bench_hardening.py [--connections 10000] [--duration 5]
        [--key-rate 125] [--client-rate 1000]

(a) Idle connections per GiB: the daemon (fed by a simulated key) serves EGD
    on tcp:PORT:interface=127.0.0.1:backlog=4096; --connections TCP
    connections are opened to it, each has one 0x00 answered (so the daemon
    really holds them), then they sit idle.  Its resident memory (VmRSS from
    /proc/PID/status) before and after gives the memory per connection and
    "connections per GiB" (of the increase, and of the whole process).
    Target: 10,000 idle connections in under 200 MiB resident.

(b) An ordinary client beside a greedy one.  The key runs at --key-rate
    entropy frames a second (125, a real key's 4000 B/s, by default), so
    that the two clients compete for what it makes.  The ordinary client
    (from 127.0.0.3) asks 0x02 32 in a closed loop; the greedy one (from
    127.0.0.2; a distinct address, so a distinct rate-limit bucket) keeps
    sixteen 0x02 255 reads in flight.  Over --duration seconds after a
    warm-up, the ordinary client's requests per second and its share of the
    bytes served are measured, alone, beside the greedy client without a
    rate limit, and beside it with --client-rate B/s each (burst the same).
    Its fair share is what max-min fairness gives it: half of what was
    served when both want more than half.  Target: within 10% of its fair
    share while the greedy one runs.

The daemon is started with the open-file limit raised to its hard limit
(a preexec_fn), and so is this process.  Every process started is stopped
by its id before the benchmark exits.  This is a benchmark: it prints
figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import errno
import os
import platform
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from _support import Processes, egdLevelBytes, freePort  # noqa: E402  (benchmarks/ is on sys.path)
sys.path.insert(0, REPO_ROOT)

SERIAL = "E52jaQ2jxAYlra1N"
LONG_TERM_KEY_HEX = "de6e1a6aa89b8e73d14ccecbd9161a1d3cf1f361f9e76db604a99c9d29c50800"
START_TIMEOUT = 20.0
TARGET_IDLE_MIB = 200.0
TARGET_SHARE_ERROR = 0.10


def raiseLimit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def waitUntil(predicate, what: str, p: subprocess.Popen, procs: Processes,
              timeout: float = START_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        if p.poll() is not None:
            raise SystemExit(f"{p.benchName} exited while waiting for {what}:\n{procs.tail(p)}")
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}:\n{procs.tail(p)}")


def memory(pid: int) -> Dict[str, int]:
    figures = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            for name in ("VmRSS", "VmHWM"):
                if line.startswith(name + ":"):
                    figures[name] = int(line.split()[1])
    return figures


def fileLimit(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                value = line[len("Max open files"):].split()[0]
                return 1 << 40 if value == "unlimited" else int(value)
    return 0


class Daemon:
    """
    A simulated key and our daemon on it.
    """

    def __init__(self, procs: Processes, name: str, keyRate: float, extra: List[str]):
        directory = procs.directory
        self.keySocket = os.path.join(directory, f"{name}-key.sock")
        keyring = os.path.join(directory, "keyring")
        if not os.path.exists(keyring):
            import base64

            with open(keyring, "w") as f:
                f.write(f"{SERIAL} "
                        f"{base64.b64encode(bytes.fromhex(LONG_TERM_KEY_HEX)).decode()}\n")
            os.chmod(keyring, 0o600)
        self.sim = procs.start(f"{name}-sim", [
            sys.executable, "-c", "from ekey.cli.sim import main; main()",
            "--listen", f"unix:{self.keySocket}", "--serial", SERIAL,
            "--long-term-key", LONG_TERM_KEY_HEX, "--rate", f"{keyRate:g}"])
        waitUntil(lambda: os.path.exists(self.keySocket), "the simulated key", self.sim, procs)
        self.port = freePort()
        argv = [sys.executable, "-c",
                "import sys; from twisted.scripts.twistd import run; "
                "sys.argv[0] = 'twistd'; run()",
                "--nodaemon", "--pidfile=", f"--logfile={name}.log", "ekey",
                "--device", self.keySocket, "--keyring", keyring, "--control", "none",
                "--port", f"tcp:{self.port}:interface=127.0.0.1:backlog=4096"] + extra
        self.process = procs.start(name, argv)
        self.pid = self.process.pid
        waitUntil(lambda: egdLevelBytes(self.port) is not None, f"{name} to answer", self.process,
                  procs)


# (a) Idle connections ------------------------------------------------------------


def idleConnections(procs: Processes, count: int) -> dict:
    daemon = Daemon(procs, "idle", 125, [])
    own = raiseLimit()
    limit = fileLimit(daemon.pid)
    if min(own, limit) < count + 100:
        count = max(0, min(own, limit) - 200)
        note = f"open-file limits (ours {own}, the daemon's {limit}) allow only {count}"
    else:
        note = ""
    time.sleep(1.0)
    before = memory(daemon.pid)
    selector = selectors.DefaultSelector()
    sockets: List[socket.socket] = []
    answered = failed = 0
    start = time.monotonic()
    try:
        batch = 1000
        for first in range(0, count, batch):
            pending: Dict[socket.socket, bytes] = {}
            for _ in range(min(batch, count - first)):
                s = socket.socket()
                s.setblocking(False)
                sockets.append(s)
                code = s.connect_ex(("127.0.0.1", daemon.port))
                if code not in (0, errno.EINPROGRESS):
                    failed += 1
                    continue
                pending[s] = b""
                selector.register(s, selectors.EVENT_WRITE)
            deadline = time.monotonic() + 30.0
            while pending and time.monotonic() < deadline:
                for key, events in selector.select(0.5):
                    s = key.fileobj
                    if events & selectors.EVENT_WRITE:
                        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                            failed += 1
                            selector.unregister(s)
                            del pending[s]
                            continue
                        s.send(b"\x00")
                        selector.modify(s, selectors.EVENT_READ)
                        continue
                    try:
                        chunk = s.recv(8)
                    except OSError:
                        chunk = b""
                    if not chunk:
                        failed += 1
                    else:
                        pending[s] += chunk
                        if len(pending[s]) < 4:
                            continue
                        answered += 1
                    selector.unregister(s)
                    del pending[s]
            failed += len(pending)
            for s in pending:
                selector.unregister(s)
        opened = time.monotonic() - start
        time.sleep(2.0)  # idle
        after = memory(daemon.pid)
        alive = daemon.process.poll() is None
    finally:
        selector.close()
        for s in sockets:
            s.close()
    procs.stop(daemon.process)
    procs.stop(daemon.sim)
    return dict(count=count, answered=answered, failed=failed, seconds=opened, before=before,
                after=after, alive=alive, note=note)


# (b) An ordinary client beside a greedy one -------------------------------------------


def contention(procs: Processes, name: str, keyRate: float, extra: List[str],
               greedy: bool, duration: float, warmup: float) -> dict:
    daemon = Daemon(procs, name, keyRate, extra)
    stop = threading.Event()
    counts = {"ordinary": 0, "ordinaryBytes": 0, "greedyBytes": 0}
    marks: Dict[str, int] = {}
    latencies: List[float] = []
    errors: List[str] = []
    measuring = threading.Event()

    def ordinary():
        try:
            s = socket.create_connection(("127.0.0.1", daemon.port), timeout=5.0,
                                         source_address=("127.0.0.3", 0))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:
            errors.append(f"ordinary: {e}")
            return
        with s:
            while not stop.is_set():
                t = time.monotonic()
                try:
                    s.sendall(b"\x02\x20")
                    got = 0
                    while got < 32:
                        chunk = s.recv(32 - got)
                        if not chunk:
                            raise OSError("closed")
                        got += len(chunk)
                except OSError as e:
                    if not stop.is_set():
                        errors.append(f"ordinary: {e}")
                    return
                counts["ordinary"] += 1
                counts["ordinaryBytes"] += 32
                if measuring.is_set():
                    latencies.append(time.monotonic() - t)

    def greedyClient():
        try:
            s = socket.create_connection(("127.0.0.1", daemon.port), timeout=1.0,
                                         source_address=("127.0.0.2", 0))
        except OSError as e:
            errors.append(f"greedy: {e}")
            return
        with s:
            requested = 16 * 255
            s.sendall(b"\x02\xff" * 16)
            while not stop.is_set():
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    continue
                except OSError as e:
                    errors.append(f"greedy: {e}")
                    return
                if not chunk:
                    errors.append("greedy: closed")
                    return
                counts["greedyBytes"] += len(chunk)
                while requested - counts["greedyBytes"] < 8 * 255:
                    s.sendall(b"\x02\xff" * 8)
                    requested += 8 * 255

    threads = [threading.Thread(target=ordinary, daemon=True)]
    if greedy:
        threads.append(threading.Thread(target=greedyClient, daemon=True))
    for thread in threads:
        thread.start()
    time.sleep(warmup)
    marks.update({k + "0": v for k, v in counts.items()})
    measuring.set()
    t0 = time.monotonic()
    time.sleep(duration)
    elapsed = time.monotonic() - t0
    marks.update({k + "1": v for k, v in counts.items()})
    stop.set()
    for thread in threads:
        thread.join(10.0)
    rss = memory(daemon.pid)
    procs.stop(daemon.process)
    procs.stop(daemon.sim)
    ordinaryBytes = marks["ordinaryBytes1"] - marks["ordinaryBytes0"]
    greedyBytes = marks["greedyBytes1"] - marks["greedyBytes0"]
    latencies.sort()
    return dict(
        rps=(marks["ordinary1"] - marks["ordinary0"]) / elapsed,
        ordinaryRate=ordinaryBytes / elapsed, greedyRate=greedyBytes / elapsed,
        share=ordinaryBytes / (ordinaryBytes + greedyBytes) if ordinaryBytes + greedyBytes else 0,
        p50=latencies[len(latencies) // 2] if latencies else None,
        p99=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies
        else None,
        errors=errors, rss=rss)


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds measured in each case of (b)")
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--key-rate", type=float, default=125.0,
                        help="entropy frames per second of the simulated key in (b)")
    parser.add_argument("--client-rate", type=float, default=1000.0,
                        help="--client-rate (and --client-burst) of the rate-limited case")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="bench-hardening-")
    procs = Processes(directory, preexec=raiseLimit)
    started = time.monotonic()
    try:
        print(f"# bench_hardening: Python {platform.python_version()}, {os.cpu_count()} cpus, "
              f"{platform.machine()}, loopback only; open-file limit {raiseLimit()}")
        print()
        a = idleConnections(procs, args.connections)
        before, after = a["before"]["VmRSS"], a["after"]["VmRSS"]
        delta = max(after - before, 1)
        print("(a) idle connections held by the daemon")
        print(f"{'connections':>11} {'answered':>8} {'failed':>6} {'open s':>6} "
              f"{'RSS before':>10} {'RSS after':>10} {'KiB/conn':>8} {'conns/GiB (delta)':>17} "
              f"{'conns/GiB (total)':>17} {'target':>14}")
        total = a["answered"] * (1 << 20) / after if after else 0
        print(f"{a['count']:>11} {a['answered']:>8} {a['failed']:>6} {a['seconds']:>6.1f} "
              f"{before / 1024:>7.1f} MiB {after / 1024:>7.1f} MiB {delta / max(a['answered'], 1):>8.2f} "
              f"{a['answered'] * (1 << 20) / delta:>17,.0f} {total:>17,.0f} "
              f"{'met' if after / 1024 < TARGET_IDLE_MIB and a['answered'] >= 10000 else 'NOT met':>14}")
        if a["note"]:
            print(f"  note: {a['note']}")
        if not a["alive"]:
            print("  note: the daemon died")
        print(f"  target: 10,000 idle connections in under {TARGET_IDLE_MIB:g} MiB resident "
              f"(VmHWM after: {a['after'].get('VmHWM', 0) / 1024:.1f} MiB)")
        print()
        rate = args.client_rate
        limited = ["--client-rate", f"{rate:g}", "--client-burst", f"{int(rate)}"]
        cases = [
            ("alone, no limit", [], False),
            ("beside greedy, no limit", [], True),
            (f"beside greedy, --client-rate {rate:g}", limited, True),
        ]
        print(f"(b) ordinary client (0x02 32, closed loop) beside a greedy one (16 x 0x02 255 "
              f"in flight); key at {args.key_rate:g} frames/s = {args.key_rate * 32:g} B/s; "
              f"{args.duration:g} s measured after {args.warmup:g} s")
        print(f"{'case':<36} {'ord req/s':>9} {'ord B/s':>8} {'greedy B/s':>10} "
              f"{'ord share':>9} {'fair share':>10} {'vs fair':>7} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'RSS MiB':>7}  errors")
        for n, (label, extra, greedy) in enumerate(cases):
            r = contention(procs, f"b{n}", args.key_rate, extra, greedy, args.duration,
                           args.warmup)
            if greedy:
                fair = 0.5
                versus = f"{(r['share'] - fair) / fair * 100:+.0f}%"
            else:
                fair, versus = 1.0, "-"
            print(f"{label:<36} {r['rps']:>9.1f} {r['ordinaryRate']:>8.0f} "
                  f"{r['greedyRate']:>10.0f} {r['share'] * 100:>8.1f}% {fair * 100:>9.0f}% "
                  f"{versus:>7} {fmt(r['p50'] and r['p50'] * 1000, '.1f'):>7} "
                  f"{fmt(r['p99'] and r['p99'] * 1000, '.1f'):>7} "
                  f"{r['rss']['VmRSS'] / 1024:>7.1f}  {'; '.join(r['errors'][:3]) or 'none'}")
        print(f"  target: the ordinary client within {TARGET_SHARE_ERROR * 100:.0f}% of its fair "
              "share (50% of what is served) while the greedy one runs; with --client-rate each "
              f"is held to {rate:g} B/s")
        print(f"\ntotal time {time.monotonic() - started:.0f} s")
    finally:
        procs.stopAll()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
