"""
Relay chains: bytes per second and added latency through 0, 1, 2 and 3 TLS
relays (twistd ekey --upstream tls:... with mtls: listeners), and the same
chain built with stunnel, in one run.

    python3 benchmarks/bench_relay.py [--duration 3] [--hops 3] [--samples 1000]
                                      [--pipeline 64] [--watermarks 1048576:2097152]

What is measured
----------------

    key rate     ekey-sim --rate 0 (as fast as the host reads) into a daemon K;
                 a client drains K.  This is what one key gives a chain today:
                 the pure-Python key session (Skein MACs, decryption) decodes
                 only a few thousand frames/s, so the key path, not the
                 relays, limits any real chain.
    ekey N       A fast source -> daemon A (big pool) -> N ekey relays, each
                 pulling from the one before over TLS (client certificates,
                 names checked) and serving mtls:, the last also serving plain
                 TCP to the client.  N = 0 is A itself.  The relays run at
                 their default settings (watermarks included).
    ekey N tuned With --tuned: the same chain with the relays' watermarks
                 sized for a fast upstream (--watermarks, pool twice the high
                 one): a relay keeps at most its high watermark in its pool
                 and in flight together, so its throughput is at most the
                 high watermark per round trip (doc/relays.md).
    stunnel N    The same N TLS links made by stunnel (mutual TLS, names
                 checked) in front of A's plain TCP port: per hop one stunnel
                 process holding a server service (TLS in, plain out towards
                 A) and a client service (plain in, TLS out to that server),
                 so each hop costs one process one TLS decryption and one
                 encryption, as an ekey relay does.  Every request travels
                 the whole chain to A and back.

The fast source is this script serving EGD on a Unix socket from 16 MiB
drawn once from os.urandom and served round and round (it answers every
read at once and spends no CPU making bytes).  It is a stand-in for "an
upstream that is never the bottleneck", so that the figures are those of the
relays, not of the key; A is a real twistd ekey that pulls from it through
its --upstream.

Throughput: one client keeps 64 (--pipeline) blocking reads (0x02 255) in
flight on the last hop for --duration seconds (after a warm-up) and counts
the bytes.  The cpu columns are each process's share of one core meanwhile,
which says what limited the figure (the machine has few cores, shared by
every process of the chain).  A stunnel chain carries every read to A and
back, so its figure grows with --pipeline until the machine's cores run out;
an ekey relay answers from its pool, so its figure depends on the pipeline
far less.

Latency: with the pools full (the last hop's level checked first), one
client sends --samples blocking 32-byte reads one after another and times
each; "added per hop" is (pN - p0) / N against 0 hops in the same run.

Every case is measured --repeats times (default 5), the cases interleaved:
each repeat builds and measures every chain length of every kind in turn,
the kinds' order rotating between repeats.  Figures are medians with their
min-max; the ratio to stunnel is taken pair by pair within a repeat.
--output FILE writes the result (machine, date, command, table) as Markdown;
figures quoted in the README and doc/ come from such files, committed under
benchmarks/results/.

Targets (judged on medians, at default settings): ekey throughput at least
stunnel's at each hop count; ekey's added p99 latency per hop under 2 ms on
loopback.

This is a benchmark, not a test: it prints figures and asserts nothing.
Every process it starts is stopped by its id before it exits.
"""

from __future__ import annotations

import argparse
import os
import platform
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from _support import cpuSeconds, Processes, egdLevelBytes, freePort  # noqa: E402  (benchmarks/ is on sys.path)
sys.path.insert(0, REPO_ROOT)

TARGET_P99_PER_HOP_MS = 2.0
PIPELINE = 64
READ = 255
START_TIMEOUT = 20.0


# The fast source (a subprocess) -----------------------------------------------


#: The fast source's bytes: drawn once from os.urandom, then served round and
#: round (drawing 100 MB/s from the kernel would cost the source a third of a
#: core, which the chain under test would lose on a small machine).
SOURCE_BYTES = 16 << 20


def runFastSource(path: str) -> None:
    """
    Serve EGD on a Unix socket, answering every request at once, until
    killed.
    """
    stock = os.urandom(SOURCE_BYTES)
    position = 0

    def draw(n: int) -> bytes:
        nonlocal position
        if position + n > len(stock):
            position = 0
        position += n
        return stock[position - n : position]

    sel = selectors.DefaultSelector()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ, None)
    from ekey.core.egd import (EGDServerParser, GetLevel, GetPID, Read, ReadBlocking,
                          ReadBlockingRun, encodeLevel, encodePID, encodeRead)
    from ekey.core.errors import RemoteProtocolError

    # Each connection: its parser (coalescing runs of blocking reads, which
    # are answered with one slice) and the bytes it still has to be sent.
    state: Dict[socket.socket, list] = {}
    while True:
        for key, events in sel.select(1.0):
            sock = key.fileobj
            if sock is listener:
                conn, _ = listener.accept()
                conn.setblocking(False)
                state[conn] = [EGDServerParser(coalesce=True), b""]
                sel.register(conn, selectors.EVENT_READ, None)
                continue
            parser, outbuf = state[sock]
            if events & selectors.EVENT_READ:
                try:
                    data = sock.recv(65536)
                    commands = parser.receiveData(data) if data else None
                except (OSError, RemoteProtocolError):
                    commands = None
                if commands is None:
                    sel.unregister(sock)
                    sock.close()
                    del state[sock]
                    continue
                replies = []
                for command in commands:
                    if isinstance(command, GetLevel):
                        replies.append(encodeLevel(1 << 30))
                    elif isinstance(command, GetPID):
                        replies.append(encodePID(os.getpid()))
                    elif isinstance(command, Read):
                        replies.append(encodeRead(draw(command.n)))
                    elif isinstance(command, (ReadBlocking, ReadBlockingRun)):
                        # Exactly the bytes, for a run as for one read.
                        replies.append(draw(command.n))
                outbuf += b"".join(replies)
            if outbuf:
                try:
                    sent = sock.send(outbuf)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    sent = len(outbuf)
                outbuf = outbuf[sent:]
            state[sock][1] = outbuf
            sel.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if outbuf else 0))


# Processes ------------------------------------------------------------------------


def waitListening(port: int, p: subprocess.Popen, procs: Processes,
                  timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"{p.benchName} exited:\n{procs.tail(p)}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{p.benchName}: nothing on port {port}:\n{procs.tail(p)}")


def waitPath(path: str, p: subprocess.Popen, procs: Processes) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not os.path.exists(path):
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{p.benchName}: no {path}:\n{procs.tail(p)}")
        time.sleep(0.05)


# Clients --------------------------------------------------------------------------


def waitLevel(port: int, wanted: int, timeout: float) -> Optional[int]:
    deadline = time.monotonic() + timeout
    level = None
    while time.monotonic() < deadline:
        level = egdLevelBytes(port)
        if level is not None and level >= wanted:
            return level
        time.sleep(0.1)
    return level


def throughput(port: int, duration: float, warmup: float, pids: Dict[str, int],
               pipeline: int = PIPELINE) -> dict:
    """
    Keep C{pipeline} blocking reads in flight; count the bytes in the window.
    """
    pids = dict(pids, client=os.getpid())
    sock = socket.create_connection(("127.0.0.1", port), 5)
    sock.setblocking(False)
    request = bytes([2, READ])
    try:
        sock.sendall(request * pipeline)
    except BlockingIOError:
        pass
    received = 0
    windowBytes = 0
    lastProgress = start = time.monotonic()
    windowStart = start + warmup
    end = windowStart + duration
    cpu0: Dict[str, Optional[float]] = {}
    pendingRequests = b""
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    inWindow = False
    while True:
        now = time.monotonic()
        if not inWindow and now >= windowStart:
            inWindow = True
            cpu0 = {name: cpuSeconds(pid) for name, pid in pids.items()}
            windowBytes = 0
            windowStart = now
        if now >= end:
            break
        for _ in sel.select(min(0.1, max(0.0, end - now))):
            try:
                data = sock.recv(1 << 17)
            except BlockingIOError:
                continue
            if not data:
                end = 0
                break
            lastProgress = time.monotonic()
            before = received // READ
            received += len(data)
            windowBytes += len(data) if inWindow else 0
            pendingRequests += request * (received // READ - before)
        if pendingRequests:
            try:
                sent = sock.send(pendingRequests)
                pendingRequests = pendingRequests[sent:]
            except BlockingIOError:
                pass
    elapsed = time.monotonic() - windowStart
    cpu = {}
    for name, pid in pids.items():
        c1 = cpuSeconds(pid)
        if c1 is not None and cpu0.get(name) is not None:
            cpu[name] = 100.0 * (c1 - cpu0[name]) / elapsed
    sock.close()
    return {"bps": windowBytes / elapsed if elapsed > 0 else 0.0, "total": received,
            "stalled": time.monotonic() - lastProgress > 1.0, "cpu": cpu}


def latency(port: int, samples: int, limit: float = 10.0) -> dict:
    """
    Blocking 32-byte reads, one after another; the time of each.
    """
    times: List[float] = []
    timeouts = 0
    deadline = time.monotonic() + limit
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(1.0)
        for _ in range(samples):
            if time.monotonic() > deadline:
                break
            t0 = time.perf_counter()
            s.sendall(b"\x02\x20")
            got = 0
            try:
                while got < 32:
                    chunk = s.recv(32 - got)
                    if not chunk:
                        raise OSError("closed")
                    got += len(chunk)
            except (socket.timeout, OSError):
                timeouts += 1
                break
            times.append((time.perf_counter() - t0) * 1000.0)
    times.sort()

    def pct(f):
        return times[min(len(times) - 1, int(f * len(times)))] if times else None

    return {"p50": pct(0.50), "p99": pct(0.99), "n": len(times), "timeouts": timeouts}


# Building chains ------------------------------------------------------------------


class Bench:
    def __init__(self, args, directory: str):
        self.args = args
        self.dir = directory
        self.procs = Processes(directory)
        self.pki = os.path.join(directory, "pki")
        self.trust = os.path.join(directory, "trust")
        self.stunnel = shutil.which("stunnel4") or shutil.which("stunnel")

    def makeCertificates(self) -> None:
        from ekey.cli import certs

        os.makedirs(self.pki)
        os.makedirs(self.trust)
        ca = certs.makeCA()
        host = certs.makeHost("localhost", ca)
        certs.writePublic(os.path.join(self.pki, "ca.pem"), certs.certificatePEM(ca[0]))
        certs.writePublic(os.path.join(self.trust, "ca.pem"), certs.certificatePEM(ca[0]))
        certs.writePublic(os.path.join(self.pki, "localhost.crt"), certs.certificatePEM(host[0]))
        certs.writePrivate(os.path.join(self.pki, "localhost.key"), certs.keyPEM(host[1]))

    def twistd(self, name: str, ekeyArgs: List[str]) -> subprocess.Popen:
        common = ["--nodaemon", "--pidfile=", f"--logfile={name}.log", "ekey", "--control", "none"]
        argv = [sys.executable, "-c",
                "import sys; from twisted.scripts.twistd import run; "
                "sys.argv[0] = 'twistd'; run()"]
        return self.procs.start(name, argv + common + ekeyArgs)

    def mtls(self, port: int) -> str:
        return (f"mtls:{port}:certKey={self.pki}/localhost.crt:privateKey={self.pki}/localhost.key"
                f":caCerts={self.pki}/ca.pem:interface=127.0.0.1")

    def tlsUpstream(self, port: int) -> str:
        return (f"tls:localhost:{port}:trustRoots={self.trust}:certificate={self.pki}/localhost.crt"
                f":privateKey={self.pki}/localhost.key:endpoint=tcp\\:127.0.0.1\\:{port}")

    def startSource(self) -> None:
        path = os.path.join(self.dir, "fast.sock")
        p = self.procs.start("fast-source", [sys.executable, os.path.abspath(__file__),
                                             "--as-fast-source", path])
        waitPath(path, p, self.procs)
        self.sourcePath = path
        self.source = p

    def startA(self) -> None:
        """
        Daemon A: pulls from the fast source, big pool, plain TCP and mtls:.
        """
        self.aTCP, self.aTLS = freePort(), freePort()
        size = 8 << 20
        self.a = self.twistd("A", [
            "--upstream", f"unix:{self.sourcePath}",
            "--pool-size", str(size), "--low-water", str(size // 2), "--high-water", str(size),
            "--port", f"tcp:{self.aTCP}:interface=127.0.0.1", "--port", self.mtls(self.aTLS),
        ])
        waitListening(self.aTCP, self.a, self.procs)
        waitLevel(self.aTCP, size // 2, 30.0)

    def ekeyChain(self, hops: int, watermarks: Optional[tuple]) -> (int, Dict[str, int], list):
        """
        @param watermarks: the relays' (low, high), or C{None} for the
            defaults.
        @return: the last hop's plain TCP port, the pids, the processes.
        """
        sizing = []
        if watermarks is not None:
            low, high = watermarks
            sizing = ["--pool-size", str(2 * high), "--low-water", str(low),
                      "--high-water", str(high)]
        started = []
        upstreamTLS = self.aTLS
        port = self.aTCP
        pids = {"A": self.a.pid}
        for i in range(1, hops + 1):
            tcpPort, tlsPort = freePort(), freePort()
            p = self.twistd(f"R{i}", [
                "--upstream", self.tlsUpstream(upstreamTLS),
                "--port", f"tcp:{tcpPort}:interface=127.0.0.1", "--port", self.mtls(tlsPort),
            ] + sizing)
            started.append(p)
            waitListening(tcpPort, p, self.procs)
            upstreamTLS, port = tlsPort, tcpPort
            pids[f"R{i}"] = p.pid
        return port, pids, started

    def stunnelChain(self, hops: int) -> (int, Dict[str, int], list):
        """
        hops TLS links in front of A's plain TCP port.
        """
        started = []
        pids = {"A": self.a.pid}
        # Server beside A: TLS in, plain to A.
        nextTarget = self.aTCP
        for i in range(hops):
            tlsPort = freePort()
            services = [("server", tlsPort, nextTarget, False)]
            # Client towards it: plain in, TLS out; in the same process as the
            # next node's server service (one stunnel per relay host).
            plainPort = freePort()
            services.append(("client", plainPort, tlsPort, True))
            name = f"S{i + 1}"
            conf = os.path.join(self.dir, f"{name}.conf")
            with open(conf, "w") as f:
                f.write("foreground = yes\npid =\ndebug = err\n")
                for label, accept, connect, client in services:
                    f.write(f"[{label}]\naccept = 127.0.0.1:{accept}\n"
                            f"connect = 127.0.0.1:{connect}\n"
                            f"client = {'yes' if client else 'no'}\n"
                            f"cert = {self.pki}/localhost.crt\nkey = {self.pki}/localhost.key\n"
                            f"CAfile = {self.pki}/ca.pem\nverifyChain = yes\n"
                            f"sslVersionMin = TLSv1.2\n"
                            + ("checkHost = localhost\n" if client else ""))
            p = self.procs.start(name, [self.stunnel, conf])
            started.append(p)
            waitListening(plainPort, p, self.procs)
            pids[name] = p.pid
            nextTarget = plainPort
        return nextTarget, pids, started

    def stopAll(self) -> None:
        self.procs.stopAll()


# Reporting ------------------------------------------------------------------------


def fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def measure(bench: Bench, port: int, pids: Dict[str, int], args) -> dict:
    level = waitLevel(port, 16384, 8.0)
    row = {"levelBefore": level}
    row.update(latency(port, args.samples))
    row.update(throughput(port, args.duration, args.warmup, pids, args.pipeline))
    return row


def median(values: List[float]) -> Optional[float]:
    """
    @return: the median of C{values} (the mean of the middle two for an even
        count), or C{None} for none.
    """
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def spread(values: List[float], spec: str, scale: float = 1.0) -> str:
    """
    @return: "median (min-max)" of C{values} scaled, or "-".
    """
    values = [v / scale for v in values if v is not None]
    if not values:
        return "-"
    return (f"{format(median(values), spec)} ({format(min(values), spec)}-"
            f"{format(max(values), spec)})")


def cpuText(cpu: Dict[str, float]) -> str:
    """
    @return: each process's share of a core, in the chain's order.
    """
    return " ".join(f"{name} {share:.0f}" for name, share in cpu.items())


def cpuColumn(runs: List[dict]) -> str:
    """
    @return: the median share of a core of each process of a chain over
        the repeats, in the chain's order.
    """
    names = list(runs[0]["cpu"]) if runs else []
    shares = {name: median([r["cpu"].get(name) for r in runs]) for name in names}
    return cpuText({name: share for name, share in shares.items() if share is not None})


KINDS = {"ekey": "ekey (default watermarks)", "ekey-tuned": "ekey (--watermarks)",
         "stunnel": "stunnel"}


def table(cases: Dict[tuple, List[dict]], hops: int) -> List[str]:
    """
    The results as a Markdown table: per chain, throughput and latency as
    median (min-max) over the repeats, and each ekey chain's ratio to the
    stunnel chain of the same length, taken pair by pair (the two measured
    one after the other in the same repeat).
    """
    lines = ["| chain | hops | MiB/s | p50 ms | p99 ms | added p99 ms/hop | / stunnel (paired) "
             "| cpu % of a core (median) |",
             "|---|---|---|---|---|---|---|---|"]
    zero = cases.get(("ekey", 0), [])
    for kind in KINDS:
        for h in range(0, hops + 1):
            runs = cases.get((kind, h))
            if not runs:
                continue
            added = []
            for i, r in enumerate(runs):
                if h and i < len(zero) and r.get("p99") is not None and zero[i].get("p99") is not None:
                    added.append((r["p99"] - zero[i]["p99"]) / h)
            ratios = []
            theirs = cases.get(("stunnel", h), [])
            if kind != "stunnel":
                ratios = [r["bps"] / t["bps"] for r, t in zip(runs, theirs) if t["bps"]]
            lines.append(
                f"| {KINDS[kind]} | {h} | {spread([r['bps'] for r in runs], '.1f', 1 << 20)} "
                f"| {spread([r.get('p50') for r in runs], '.2f')} "
                f"| {spread([r.get('p99') for r in runs], '.2f')} "
                f"| {spread(added, '+.2f')} | {spread(ratios, '.2f') if ratios else '-'} "
                f"| {cpuColumn(runs)} |")
    return lines


def targets(cases: Dict[tuple, List[dict]], hops: int) -> List[str]:
    """
    The targets, judged on medians: at default watermarks a relay chain
    carries at least what the stunnel chain does, and adds under
    L{TARGET_P99_PER_HOP_MS} of p99 latency per hop.
    """
    lines = []
    for h in range(1, hops + 1):
        ours, theirs = cases.get(("ekey", h), []), cases.get(("stunnel", h), [])
        ratios = [r["bps"] / t["bps"] for r, t in zip(ours, theirs) if t["bps"]]
        if ratios:
            m = median(ratios)
            lines.append(f"- throughput, {h} hop(s), default watermarks: median ratio "
                         f"{m:.2f}x stunnel ({min(ratios):.2f}-{max(ratios):.2f}), "
                         f"{'MET' if m >= 1.0 else 'NOT MET'} (target >= 1x)")
        zero = cases.get(("ekey", 0), [])
        added = [(r["p99"] - z["p99"]) / h for r, z in zip(ours, zero)
                 if r.get("p99") is not None and z.get("p99") is not None]
        if added:
            m = median(added)
            lines.append(f"- added p99 per hop, {h} hop(s): median {m:+.2f} ms, "
                         f"{'MET' if m < TARGET_P99_PER_HOP_MS else 'NOT MET'} "
                         f"(target < {TARGET_P99_PER_HOP_MS:g} ms)")
    return lines


def keyRate(bench: Bench, args) -> List[dict]:
    """
    ekey-sim --rate 0 into daemon K; drain K directly, then through one relay
    pulling from K over TCP (a slow upstream: its replies arrive in pieces,
    as a key host's do).
    """
    keySock = os.path.join(bench.dir, "key.sock")
    keyring = os.path.join(bench.dir, "keyring")
    sim = bench.procs.start("sim", [sys.executable, "-m", "ekey.cli.sim", "--listen",
                                    f"unix:{keySock}", "--rate", "0", "--keyring", keyring,
                                    "--info-every", "0"])
    waitPath(keySock, sim, bench.procs)
    port = freePort()
    k = bench.twistd("K", ["--device", keySock, "--keyring", keyring, "--pool-size", "4096",
                           "--port", f"tcp:{port}:interface=127.0.0.1"])
    waitListening(port, k, bench.procs)
    time.sleep(0.5)
    rows = []
    row = throughput(port, args.duration, args.warmup, {"K": k.pid, "sim": sim.pid})
    row.update(label="key -> K", kind="key", hops=None)
    rows.append(row)
    relayPort = freePort()
    r = bench.twistd("KR", [
        "--upstream", f"tcp:127.0.0.1:{port}", "--low-water", "16384",
        "--high-water", "65536", "--port", f"tcp:{relayPort}:interface=127.0.0.1"])
    waitListening(relayPort, r, bench.procs)
    row = throughput(relayPort, args.duration, args.warmup,
                     {"K": k.pid, "sim": sim.pid, "R": r.pid})
    row.update(label="key -> K -> R", kind="key", hops=None)
    rows.append(row)
    bench.procs.stop(r)
    bench.procs.stop(k)
    bench.procs.stop(sim)
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--as-fast-source":
        runFastSource(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0,
                        help="seconds of each throughput window (default 3)")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--hops", type=int, default=3, help="up to this many relays (default 3)")
    parser.add_argument("--samples", type=int, default=1000,
                        help="32-byte reads per latency case (default 1000)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--repeats", type=int, default=5,
                        help="measure every case this many times, interleaved (default 5)")
    parser.add_argument("--tuned", action="store_true",
                        help="also measure ekey chains with --watermarks (not the defaults)")
    parser.add_argument("--output", metavar="FILE",
                        help="also write the result (machine, date, command, table) to FILE, "
                             "such as benchmarks/results/relay-DATE.md")
    parser.add_argument("--pipeline", type=int, default=PIPELINE,
                        help=f"blocking reads the throughput client keeps in flight "
                             f"(default {PIPELINE})")
    parser.add_argument("--watermarks", default="1048576:2097152", metavar="LOW:HIGH",
                        help="with --tuned, the relays' --low-water and --high-water, "
                             "their pool twice HIGH (default 1048576:2097152)")
    args = parser.parse_args()
    if not 0 <= args.hops <= 6:
        parser.error("--hops must be from 0 to 6")
    if not 1 <= args.repeats <= 50:
        parser.error("--repeats must be from 1 to 50")
    if not 1 <= args.pipeline <= 4096:
        parser.error("--pipeline must be from 1 to 4096")
    try:
        watermarks = tuple(int(v) for v in args.watermarks.split(":"))
        if len(watermarks) != 2 or not 0 <= watermarks[0] < watermarks[1]:
            raise ValueError
    except ValueError:
        parser.error("--watermarks must be LOW:HIGH with 0 <= LOW < HIGH")

    directory = tempfile.mkdtemp(prefix="bench-relay-")
    bench = Bench(args, directory)
    started = time.monotonic()
    print(f"bench_relay: {platform.python_version()}, {os.cpu_count()} cores, "
          f"stunnel {'at ' + bench.stunnel if bench.stunnel else 'NOT INSTALLED'}; "
          f"--duration {args.duration:g} --hops {args.hops} --samples {args.samples} "
          f"--pipeline {args.pipeline} --watermarks {args.watermarks}")
    cases: Dict[tuple, List[dict]] = {}
    keyRows: List[dict] = []
    try:
        bench.makeCertificates()
        keyRows = keyRate(bench, args)
        bench.startSource()
        bench.startA()
        pidsA = {"A": bench.a.pid, "src": bench.source.pid}
        builders = {"ekey": lambda h: bench.ekeyChain(h, None),
                    "ekey-tuned": lambda h: bench.ekeyChain(h, watermarks),
                    "stunnel": bench.stunnelChain}
        order = ["ekey", "stunnel"] + (["ekey-tuned"] if args.tuned else [])
        if not bench.stunnel:
            order.remove("stunnel")
        for repeat in range(args.repeats):
            # Interleaved: every chain length and kind once per repeat, the
            # kinds' order rotating from one repeat to the next, so that a
            # drift in the machine's speed falls on every kind alike.
            rotated = order[repeat % len(order):] + order[:repeat % len(order)]
            for hops in range(0, args.hops + 1):
                for kind in (["ekey"] if hops == 0 else rotated):
                    port, pids, chain = builders[kind](hops)
                    pids.update(pidsA)
                    row = measure(bench, port, pids, args)
                    cases.setdefault((kind, hops), []).append(row)
                    for p in reversed(chain):
                        bench.procs.stop(p)
                    print(f"  repeat {repeat + 1}/{args.repeats} {kind} {hops}: "
                          f"{row['bps'] / (1 << 20):.1f} MiB/s"
                          + (" STALLED" if row.get("stalled") else "")
                          + f" (cpu % of a core: {cpuText(row['cpu'])})", flush=True)
    finally:
        bench.stopAll()
        if args.keep:
            print(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    command = "python3 benchmarks/bench_relay.py " + " ".join(sys.argv[1:])
    report = [
        f"# bench_relay, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"- command: `{command.strip()}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, "
        f"{stunnelVersion(bench.stunnel)}",
        f"- each case {args.repeats} times, interleaved; throughput window {args.duration:g} s "
        f"after {args.warmup:g} s, client pipeline {args.pipeline}; latency {args.samples} "
        f"blocking 32-byte reads; tuned watermarks {args.watermarks}",
        "- figures: median (min-max) over the repeats",
        "",
    ] + table(cases, args.hops) + [""]
    for row in keyRows:
        report.append(f"- {row['label']}: {row['bps'] / 1024:.1f} KiB/s (one key at "
                      "--rate 0, decoded by the pure-Python session)")
    report += ["", "Targets:", ""] + targets(cases, args.hops) + [
        "", f"Whole run: {time.monotonic() - started:.0f} s."]
    text = "\n".join(report) + "\n"
    print()
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        print(f"written to {args.output}")


def stunnelVersion(path: Optional[str]) -> str:
    if not path:
        return "stunnel not installed"
    result = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=10)
    for line in (result.stdout + result.stderr).splitlines():
        if line.startswith("stunnel "):
            return " ".join(line.split()[:2])
    return "stunnel (version unknown)"


if __name__ == "__main__":
    main()
