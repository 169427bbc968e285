# -*- test-case-name: tests.test_feedkernel -*-
"""
C{ekey-feed-kernel}: feed the Linux kernel's random pool from EGD servers.

    ekey-feed-kernel --connect unix:/run/ekey/egd

The same daemon as C{twistd ekey} (L{ekey.services.assembly}), built from a
L{DaemonConfig} with upstreams, the kernel feeder, a small pool and no
listener, in the foreground.  Bytes are credited C{--shannons-per-byte}
by default only when every server is verified (C{unix:}, C{tcp:} on a
loopback address, C{tls:}); from any other the default credit is 0.
"""

from __future__ import annotations

import argparse
import sys

from twisted.internet import endpoints
from twisted.logger import globalLogBeginner, textFileLogObserver

from ekey.cli._args import ArgumentParser
from ekey.core.kernel import DEFAULT_BYTES, DEFAULT_INTERVAL, DEFAULT_SHANNONS_PER_BYTE
from ekey.services import assembly
from ekey.services._reactor import default
from ekey.services.config import DaemonConfig
from ekey.services.process import disableCoreDumps

PROG = "ekey-feed-kernel"


def _positive(kind):
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number above 0")
        return value

    return convert


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Feed the Linux kernel's random pool from an EGD server (such as "
        "twistd ekey), on old kernels and new. Needs CAP_SYS_ADMIN.",
    )
    parser.add_argument("--connect", "-c", required=True, action="append",
                        help="EGD server: a client endpoint such as tcp:host:8888, "
                        "unix:/run/ekey/egd or tls:host:8888:trustRoots=DIR:certificate=F:"
                        "privateKey=F (repeatable: several servers are used together)")
    parser.add_argument("--interval", type=_positive(float), default=DEFAULT_INTERVAL,
                        help=f"seconds between top-ups (default {DEFAULT_INTERVAL:g})")
    parser.add_argument("--bytes", type=_positive(int), default=DEFAULT_BYTES,
                        help=f"bytes per top-up (default {DEFAULT_BYTES})")
    parser.add_argument("--shannons-per-byte", type=int, default=None,
                        choices=range(0, 9), metavar="0-8",
                        help=f"entropy credited per byte (default {DEFAULT_SHANNONS_PER_BYTE} "
                        "when every server is verified: unix:, loopback tcp:, tls:; else 0)")
    return parser


def configFor(connect, interval: float, bytesPerFeed: int, shannonsPerByte=None) -> DaemonConfig:
    """
    The daemon C{ekey-feed-kernel} runs: upstreams, the kernel feeder, a
    pool of a few top-ups, no listener and no control channel.

    @param connect: the servers' client endpoint descriptions.
    @return: its L{DaemonConfig}.
    """
    high = max(2048, 4 * bytesPerFeed)
    return DaemonConfig(
        upstreams=tuple(connect), kernel=True, kernelInterval=interval,
        kernelBytes=bytesPerFeed, shannonsPerByte=shannonsPerByte, control=None,
        poolSize=2 * high, lowWater=high // 4, highWater=high)


def main(argv=None, reactor=None) -> int:
    """
    The C{ekey-feed-kernel} command.

    @return: the exit status: 2 for bad arguments, 1 if the daemon cannot
        start, else 0 once the reactor stops.
    """
    args = _parser().parse_args(argv)
    reactor = default(reactor)
    for description in args.connect:
        try:
            endpoints.clientFromString(reactor, description)
        except (ValueError, KeyError, TypeError, IndexError, OSError) as e:
            print(f"{PROG}: bad --connect {description!r}: {e}", file=sys.stderr)
            return 2
    config = configFor(args.connect, args.interval, args.bytes, args.shannons_per_byte)
    try:
        resources = assembly.prepare(config, reactor)
    except ValueError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    disableCoreDumps()
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)],
                                     redirectStandardIO=False)
    service = assembly.makeService(config, resources, reactor=reactor)
    try:
        service.privilegedStartService()
        service.startService()
    except Exception as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
