# -*- test-case-name: tests.test_sim -*-
"""
C{ekey-sim}: serve a simulated Entropy Key (L{ekey.services.simulator}) on
a listening endpoint or a pseudo-terminal, until killed.

    ekey-sim --listen unix:/tmp/key.sock --keyring /tmp/keyring

B{It is not a source of entropy.}
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import react
from twisted.logger import Logger

from ekey import __version__
from ekey.cli._args import ArgumentParser, fail
from ekey.core.keyring import Keyring, KeyringError, formatSerial, parseSecret, parseSerial
from ekey.services._reactor import default
from ekey.services.simulator import (
    DEFAULT_INFO_EVERY,
    DEFAULT_RATE,
    DEFAULT_SERIAL,
    Fault,
    SimulatedKey,
    SimulatedKeyFactory,
    SimulatedKeyProtocol,
)

PROG = "ekey-sim"

BANNER = (
    "*** ekey-sim is a SIMULATOR of an Entropy Key. It is NOT a hardware entropy "
    "source: never use its output where real randomness is needed. ***"
)


def _faultArgument(text: str) -> Fault:
    try:
        return Fault.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _nonNegative(kind):
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = -1
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number from 0")
        return value

    return convert


def parser() -> argparse.ArgumentParser:
    """
    @return: C{ekey-sim}'s argument parser.
    """
    parser = ArgumentParser(
        prog="ekey-sim",
        description=(
            "Simulate an Entropy Key for testing ekey or ekeyd. "
            "THIS IS NOT A SOURCE OF ENTROPY."
        ),
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--listen",
        metavar="ENDPOINT",
        help="serve the key on a Twisted server endpoint, such as unix:/tmp/key.sock "
        "(one host at a time)",
    )
    where.add_argument(
        "--pty",
        action="store_true",
        help="serve the key on a new pseudo-terminal; its path is printed on standard output",
    )
    parser.add_argument(
        "--serial",
        metavar="PEM",
        default=formatSerial(DEFAULT_SERIAL),
        help="serial number, 16 base64 characters (default %(default)s, 'SIMULATOR-01')",
    )
    parser.add_argument(
        "--long-term-key",
        metavar="KEY",
        help="long-term key, 44 base64 characters or 64 hex digits (default: the one "
        "--keyring holds for the serial, else a random one)",
    )
    parser.add_argument(
        "--master-key",
        metavar="KEY",
        help="master key that allows long-term re-keys (default: none, refuse them)",
    )
    parser.add_argument(
        "--rate",
        metavar="FRAMES_PER_SECOND",
        type=_nonNegative(float),
        default=DEFAULT_RATE,
        help="entropy frames per second, 0 for as fast as possible (default %(default)s)",
    )
    parser.add_argument(
        "--info-every",
        metavar="N",
        type=_nonNegative(int),
        default=DEFAULT_INFO_EVERY,
        help="send information frames every N entropy frames, 0 for never "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--fault",
        metavar="SPEC",
        type=_faultArgument,
        action="append",
        default=[],
        help="misbehave once: bad-mac:N, garbage:N, reset:N, stuck:N or fail-mode:C@N, "
        "N counting entropy frames from 1 (repeatable)",
    )
    parser.add_argument(
        "--seed",
        metavar="TEXT",
        help="make the plaintext predictable: block i is SHA-256(TEXT + i as 8 bytes)",
    )
    parser.add_argument(
        "--keyring",
        metavar="FILE",
        help="add the key's serial and long-term key to this ekeyd keyring file "
        "(created if missing, written atomically with mode 0600)",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}",
                        help="print the version and exit")
    return parser


def _buildKey(args: argparse.Namespace) -> SimulatedKey:
    """
    Make the key the arguments describe, and write the keyring if asked.

    @raise ValueError: with a message for the user, if an argument is bad.
    @raise KeyringError: if the keyring cannot be read or written.
    """
    serial = parseSerial(args.serial)
    masterKey = None if args.master_key is None else parseSecret(args.master_key, "master key")
    keyring = None
    if args.keyring is not None:
        if os.path.exists(args.keyring):
            keyring = Keyring.load(args.keyring)
        else:
            keyring = Keyring(args.keyring)
    if args.long_term_key is not None:
        longTermKey = parseSecret(args.long_term_key, "long-term key")
    elif keyring is not None and keyring.get(serial) is not None:
        longTermKey = keyring.get(serial)
        sys.stderr.write(
            f"ekey-sim: using the long-term key {args.keyring} holds for {args.serial}\n"
        )
    else:
        longTermKey = os.urandom(32)
        if keyring is None:
            sys.stderr.write(
                "ekey-sim: warning: neither --long-term-key nor --keyring given: the "
                "random long-term key is known to no host, which cannot use this key\n"
            )
    if keyring is not None:
        keyring.set(serial, longTermKey)
        keyring.save()
    seed = None if args.seed is None else args.seed.encode("utf-8")
    return SimulatedKey(
        serial,
        longTermKey,
        masterKey=masterKey,
        seed=seed,
        infoEvery=args.info_every,
        faults=args.fault,
    )


def _openPTY() -> tuple:
    """
    Open a pseudo-terminal, its terminal side in raw mode.

    @return: C{(readFD, writeFD, slaveFD, path)}: two descriptors of the
        master side (the reactor tracks each descriptor with one reader or
        writer object, so reading and writing need their own), the open
        terminal side and its path.  The terminal side stays open for as
        long as the simulator runs, so that the master side never reads
        end-of-file while no host has the terminal open.
    """
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)
    return master, os.dup(master), slave, os.ttyname(slave)


def _serve(reactor, args: argparse.Namespace, key: SimulatedKey, endpoint):
    """
    The body of C{ekey-sim} under L{twisted.internet.task.react}.

    @return: a L{Deferred} that fails with C{SystemExit(2)} if the key
        cannot be served, and otherwise never fires.
    """
    log = Logger(namespace="ekey.cli.sim")
    log.warn("This key is SIMULATED: it is not a source of entropy")
    log.info(
        "Simulated key {serial}, {rate} entropy frames/s, faults: {faults}",
        serial=formatSerial(key.serial),
        rate=args.rate or "unlimited",
        faults=", ".join(str(fault) for fault in key.faults) or "none",
    )
    if args.seed is not None:
        log.warn("Seeded: every byte this key produces is predictable")
    forever = Deferred()
    if args.pty:
        from twisted.internet.stdio import StandardIO

        readFD, writeFD, slaveFD, path = _openPTY()
        StandardIO(
            SimulatedKeyProtocol(key, args.rate, reactor),
            stdin=readFD,
            stdout=writeFD,
            reactor=reactor,
        )
        sys.stdout.write(path + "\n")
        sys.stdout.flush()
        log.info("Simulated key on {path}", path=path)
        return forever

    def listening(port):
        log.info("Simulated key listening on {address}", address=port.getHost())
        return forever

    def failed(failure):
        fail(f"cannot listen on {args.listen}: {failure.getErrorMessage()}", PROG)

    d = endpoint.listen(SimulatedKeyFactory(key, args.rate, reactor))
    d.addCallbacks(listening, failed)
    return d


def main(argv: Optional[List[str]] = None, reactor=None) -> None:
    """
    The C{ekey-sim} command: serve a simulated Entropy Key until killed.

    @param argv: the arguments, without the program name; C{sys.argv[1:]}
        if C{None}.
    @param reactor: the reactor to use, for tests; the global one if
        C{None} (only then does the command log to standard error).
    @raise SystemExit: always: status 2 with a one-line message on standard
        error for bad arguments or a failure to start, else the reactor's
        exit status.
    """
    args = parser().parse_args(argv)
    logToStandardError = reactor is None
    reactor = default(reactor)
    endpoint = None
    if args.listen is not None:
        try:
            endpoint = serverFromString(reactor, args.listen)
        except Exception as e:
            fail(f"bad endpoint {args.listen!r}: {e}", PROG)
    try:
        key = _buildKey(args)
    except (ValueError, KeyringError) as e:
        fail(str(e), PROG)
    sys.stderr.write(BANNER + "\n")
    sys.stderr.flush()
    if logToStandardError:
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo(
            [textFileLogObserver(sys.stderr)], redirectStandardIO=False
        )
    react(_serve, (args, key, endpoint), _reactor=reactor)


if __name__ == "__main__":
    main()
