"""
The health tests' cost: HealthMonitor.feed in nanoseconds per byte and MiB/s
on one core, with the C statistics (ekey.core._stattests) and with the
pure-Python ones, in one process.

    python3 benchmarks/bench_health.py [--megabytes 4] [--repeats 5] [--output FILE]

What is measured
----------------

Every byte a key or an upstream delivers goes through a HealthMonitor
(SP 800-90B repetition count and adaptive proportion tests, a repeated
32-byte block, FIPS 140-2 on every 2,500-byte block), so the monitor's cost
per byte bounds what one relay hop can carry on one core.

Each case feeds --megabytes of random bytes (drawn once from os.urandom) to
a fresh HealthMonitor in feeds of 32 bytes (a key's block, as a key's
pipeline feeds them), 255 bytes (an EGD reply), 4,096 bytes and 65,536 bytes
(a relay's large reads), and times the feeds with the thread's
CPU time (time.thread_time_ns: what this thread spent, whatever else the
machine runs) and with the wall clock.  "python" is the same monitor with
ekey.core.stattests' statistics replaced, for that case only, by its
pure-Python implementations (_fipsStatisticsPython, ...): the fallback used
where the C module could not be built.

Every case is measured --repeats times (default 5), interleaved: each repeat
measures every feed size with both implementations, their order alternating
between repeats.  Figures are medians with their min-max; the speed-up is
taken pair by pair within a repeat.  --output FILE writes the result
(machine, date, command, table) as Markdown, as benchmarks/results/ holds.

This is a benchmark, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from contextlib import contextmanager
from statistics import median
from typing import Dict, Iterator, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ekey.core import stattests  # noqa: E402
from ekey.core.health import HealthMonitor  # noqa: E402

FEED_SIZES = (32, 255, 4096, 65536)

PYTHON_STATISTICS = {
    "fipsStatistics": stattests._fipsStatisticsPython,
    "fipsScan": stattests._fipsScanPython,
    "repeatAtDistance": stattests._repeatAtDistancePython,
    "proportionFailure": stattests._proportionFailurePython,
}


@contextmanager
def implementation(name: str) -> Iterator[None]:
    """
    Within the block, L{stattests} (so L{HealthMonitor}) uses the C
    statistics ("c", as imported) or the pure-Python ones ("python").
    """
    if name == "c":
        yield
        return
    saved = {attribute: getattr(stattests, attribute) for attribute in PYTHON_STATISTICS}
    try:
        for attribute, function in PYTHON_STATISTICS.items():
            setattr(stattests, attribute, function)
        yield
    finally:
        for attribute, function in saved.items():
            setattr(stattests, attribute, function)


def measure(name: str, feeds: List[bytes]) -> Dict[str, float]:
    """
    Feed C{feeds} to a fresh monitor with one implementation.

    @return: the bytes fed, the thread CPU and wall nanoseconds taken, and
        whether the monitor failed (random data should not).
    """
    monitor = HealthMonitor()
    with implementation(name):
        cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
        for data in feeds:
            monitor.feed(data)
        cpu, wall = time.thread_time_ns() - cpu, time.perf_counter_ns() - wall
    return {"bytes": sum(map(len, feeds)), "cpu": cpu, "wall": wall,
            "failed": monitor.failure is not None, "blocks": monitor.fipsBlocks}


def spread(values: List[float], fmt: str) -> str:
    """
    @return: median (min-max).
    """
    if not values:
        return "-"
    return (f"{format(median(values), fmt)} "
            f"({format(min(values), fmt)}-{format(max(values), fmt)})")


def table(cases: Dict[Tuple[str, int], List[dict]]) -> List[str]:
    """
    The results as a Markdown table.
    """
    lines = ["| statistics | feed bytes | ns/byte (thread CPU) | MiB/s (thread CPU) "
             "| MiB/s (wall) | C speed-up (paired) |",
             "|---|---|---|---|---|---|"]
    for size in FEED_SIZES:
        for name in ("c", "python"):
            runs = cases.get((name, size))
            if not runs:
                continue
            nsPerByte = [r["cpu"] / r["bytes"] for r in runs]
            cpuRate = [r["bytes"] / (r["cpu"] / 1e9) / (1 << 20) for r in runs if r["cpu"]]
            wallRate = [r["bytes"] / (r["wall"] / 1e9) / (1 << 20) for r in runs if r["wall"]]
            ratios = []
            if name == "c":
                ratios = [p["cpu"] / c["cpu"] for c, p in zip(runs, cases.get(("python", size), []))
                          if c["cpu"]]
            lines.append(f"| {name} | {size} | {spread(nsPerByte, '.1f')} "
                         f"| {spread(cpuRate, '.1f')} | {spread(wallRate, '.1f')} "
                         f"| {spread(ratios, '.1f') + 'x' if ratios else '-'} |")
    return lines


def cpuModel() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=4.0,
                        help="MiB fed per case (default 4)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="measure every case this many times, interleaved (default 5)")
    parser.add_argument("--output", metavar="FILE",
                        help="also write the result (machine, date, command, table) to FILE, "
                             "such as benchmarks/results/health-DATE.md")
    args = parser.parse_args()
    if not 0.01 <= args.megabytes <= 1024:
        parser.error("--megabytes must be from 0.01 to 1024")
    if not 1 <= args.repeats <= 50:
        parser.error("--repeats must be from 1 to 50")

    names = ["c", "python"] if stattests.ACCELERATED else ["python"]
    print(f"bench_health: Python {platform.python_version()}, C statistics "
          f"{'built' if stattests.ACCELERATED else 'NOT BUILT (python only)'}; "
          f"--megabytes {args.megabytes:g} --repeats {args.repeats}", flush=True)
    stream = os.urandom(int(args.megabytes * (1 << 20)))
    feedsBySize = {size: [stream[i:i + size] for i in range(0, len(stream), size)]
                   for size in FEED_SIZES}
    cases: Dict[Tuple[str, int], List[dict]] = {}
    loadBefore = " ".join(f"{v:.2f}" for v in os.getloadavg())
    started = time.monotonic()
    for repeat in range(args.repeats):
        # Interleaved, the implementations' order alternating, so that a
        # drift in the machine's speed falls on both alike.
        order = names if repeat % 2 == 0 else list(reversed(names))
        for size in FEED_SIZES:
            for name in order:
                row = measure(name, feedsBySize[size])
                cases.setdefault((name, size), []).append(row)
                print(f"  repeat {repeat + 1}/{args.repeats} {name:6} {size:6} bytes: "
                      f"{row['cpu'] / row['bytes']:.1f} ns/byte"
                      + (" (monitor FAILED on random data)" if row["failed"] else ""),
                      flush=True)
    command = "python3 benchmarks/bench_health.py " + " ".join(sys.argv[1:])
    failed = sum(r["failed"] for runs in cases.values() for r in runs)
    report = [
        f"# bench_health, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"- command: `{command.strip()}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores ({cpuModel()}), "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}; "
        f"load average at the start {loadBefore} (other processes share the cores: thread CPU "
        "time still grows when they compete for caches and cores)",
        f"- C statistics (ekey.core._stattests): "
        f"{'built' if stattests.ACCELERATED else 'not built: python only'}",
        f"- each case {args.repeats} times, interleaved; {args.megabytes:g} MiB of os.urandom "
        f"bytes per case, fed to a fresh HealthMonitor",
        "- figures: median (min-max) over the repeats; C speed-up = python CPU time / "
        "C CPU time, paired within a repeat",
        "",
    ] + table(cases) + [
        "",
        f"Monitors failed on random data: {failed} of {sum(map(len, cases.values()))} cases "
        "(a FIPS 140-2 block fails by chance once in about 1,250; five in 100 stop the "
        "monitor).",
        "",
        f"Whole run: {time.monotonic() - started:.0f} s.",
    ]
    text = "\n".join(report) + "\n"
    print()
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        print(f"written to {args.output}")


if __name__ == "__main__":
    main()
