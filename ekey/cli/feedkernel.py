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

from twisted.logger import globalLogBeginner, textFileLogObserver

from ekey import __version__
from ekey.cli._args import ArgumentParser
from ekey.core.kernel import DEFAULT_BYTES, DEFAULT_INTERVAL, DEFAULT_SHANNONS_PER_BYTE
from ekey.core.upstreamconfig import checkUpstreamDescription, splitPriority
from ekey.services import assembly
from ekey.services._reactor import default
from ekey.services.config import DaemonConfig
from ekey.services.process import disableCoreDumps
from ekey.services.startup import EndpointError, checkEndpoint

PROG = "ekey-feed-kernel"

#: The most bytes a top-up may ask for: more than any kernel's pool holds.
MAX_BYTES = 65536

#: The daemon's option names (in messages of L{assembly.prepare}) and this
#: command's.
OWN_NAMES = (
    ("--upstream", "--connect"),
    ("--kernel-interval", "--interval"),
    ("--kernel-bytes", "--bytes"),
    ("--kernel: ", ""),
)


def ownNames(message: str) -> str:
    """
    Say a message of the shared daemon in this command's option names.

    @return: C{message} with C{--upstream} as C{--connect} and so on.
    """
    for theirs, ours in OWN_NAMES:
        message = message.replace(theirs, ours)
    return message


def _positive(kind, most=None):
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number above 0")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(
                f"{text!r} is more than {most}, more than the kernel's pool holds")
        return value

    return convert


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Feed the Linux kernel's random pool from an EGD server (such as "
        "twistd ekey), on old kernels and new. Needs CAP_SYS_ADMIN.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--connect", "-c", required=True, action="append",
                        help="EGD server: a client endpoint such as tcp:host:8888, "
                        "unix:/run/ekey/egd or tls:host:8888:trustRoots=DIR:certificate=F:"
                        "privateKey=F (repeatable: several servers are used together)")
    parser.add_argument("--interval", type=_positive(float), default=DEFAULT_INTERVAL,
                        help=f"seconds between top-ups (default {DEFAULT_INTERVAL:g})")
    parser.add_argument("--bytes", type=_positive(int, MAX_BYTES), default=DEFAULT_BYTES,
                        help=f"bytes per top-up (default {DEFAULT_BYTES}, at most {MAX_BYTES})")
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
            checkUpstreamDescription(description)
        except ValueError as e:
            return _fail(f"bad --connect {description!r}: {e}", 2)
        try:
            checkEndpoint("--connect", splitPriority(description)[0], reactor, server=False)
        except EndpointError as e:
            return _fail(str(e), 2)
    config = configFor(args.connect, args.interval, args.bytes, args.shannons_per_byte)
    try:
        resources = assembly.prepare(config, reactor)
    except ValueError as e:
        return _fail(ownNames(str(e)), 2)
    disableCoreDumps()
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)],
                                     redirectStandardIO=False)
    service = assembly.makeService(config, resources, reactor=reactor)
    try:
        service.privilegedStartService()
        service.startService()
    except Exception as e:
        return _fail(ownNames(str(e) or type(e).__name__), 1)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


def _fail(line: str, status: int) -> int:
    sys.stderr.write(f"{PROG}: {line}\n")
    sys.stderr.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
