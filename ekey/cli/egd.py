# -*- test-case-name: tests.test_cli_egd -*-
"""
C{ekey-egd}: talk EGD to a server; entropy is written raw to standard
output.

    ekey-egd --connect tcp:localhost:8888 get 64 | xxd
"""

from __future__ import annotations

import argparse
import sys

from twisted.internet import defer, task

from ekey import __version__
from ekey.cli._args import ArgumentParser
from ekey.services.client import (EGDClientProtocol, EGDConnectionLost, EGDProtocolError,
                                  readInto)
from ekey.services.startup import EndpointError, checkEndpoint

PROG = "ekey-egd"


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Talk EGD to a server. Entropy is written raw to standard output.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--connect", "-c", required=True,
                        help="client endpoint, such as tcp:localhost:8888 or unix:/run/ekey/egd")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait with nothing received (default 30); what "
                        "was received by then is written out")
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("level", help="print the bits of entropy available")
    read = sub.add_parser("read", help="read up to N bytes without waiting (0x01)")
    read.add_argument("n", type=_count)
    get = sub.add_parser("get", help="read exactly N bytes, waiting for them (0x02)")
    get.add_argument("n", type=_count)
    sub.add_parser("pid", help="print the server's process id")
    return parser


def _count(text: str) -> int:
    try:
        n = int(text, 10)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a byte count")
    return n


def _say(message: str) -> None:
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()


class _Output:
    """
    Standard output for entropy: each answer is written as it arrives.
    """

    def __init__(self, out):
        self._stream = getattr(out, "buffer", out)
        self.written = 0

    def write(self, data: bytes) -> None:
        self._stream.write(data)
        self._stream.flush()
        self.written += len(data)


async def _run(reactor, args, out) -> int:
    from twisted.internet.endpoints import connectProtocol

    try:
        endpoint = checkEndpoint("--connect", args.connect, reactor, server=False)
    except EndpointError as e:
        _say(str(e))
        return 2
    client = EGDClientProtocol()
    try:
        connecting = connectProtocol(endpoint, client)
        connecting.addTimeout(args.timeout, reactor)
        await connecting
    except defer.TimeoutError:
        _say(f"cannot connect to {args.connect}: no answer within {args.timeout:g} seconds")
        return 1
    except Exception as e:
        _say(f"cannot connect to {args.connect}: {e}")
        return 1
    output = _Output(out)
    wanted = getattr(args, "n", None)
    # The time-out runs while nothing arrives: each answer restarts it.
    timedOut = []

    def expire():
        timedOut.append(True)
        work.cancel()

    def progress(data: bytes):
        timer.reset(args.timeout)
        output.write(data)

    timer = reactor.callLater(args.timeout, expire)
    if args.verb == "level":
        work = defer.ensureDeferred(client.level())
    elif args.verb == "pid":
        work = defer.ensureDeferred(client.pid())
    else:
        work = defer.Deferred.fromCoroutine(
            readInto(client, wanted, progress, blocking=args.verb == "get"))
    try:
        result = await work
    except defer.CancelledError:
        if not timedOut:
            raise
        _say(f"no answer within {args.timeout:g} seconds" + _partial(output, wanted))
        return 1
    except EGDProtocolError as e:
        _say(f"{args.connect}: {e}" + _partial(output, wanted))
        return 1
    except EGDConnectionLost as e:
        _say(f"the server closed the connection: {e}" + _partial(output, wanted))
        return 1
    except OSError as e:
        _say(f"cannot write the entropy to standard output: {e.strerror or e}"
             f"{_partial(output, wanted)}")
        return 1
    finally:
        if timer.active():
            timer.cancel()
        if client.transport is not None:
            client.transport.loseConnection()
    if isinstance(result, int) and args.verb == "level":
        print(result, file=out)
    elif isinstance(result, str):
        print(result, file=out)
    return 0


def _partial(output: _Output, wanted) -> str:
    if wanted is None:
        return ""
    return f"; {output.written} of the {wanted} bytes were received and written out"


def main(argv=None, reactor=None, out=None):
    """
    The C{ekey-egd} command.  Every failure is one line on standard error
    and a non-zero exit status: 2 for bad arguments, 1 when the server
    cannot be reached, stops answering or is not an EGD server.  Entropy
    is written as it arrives, so that bytes received before a failure are
    kept.

    @param reactor: a reactor to run on (for tests): then the
        L{defer.Deferred} of the run is returned, failing with
        L{SystemExit} on failure.
    """
    args = _parser().parse_args(argv)
    out = out or sys.stdout

    def run(r):
        d = defer.Deferred.fromCoroutine(_run(r, args, out))

        def exitWithStatus(code):
            if code:
                raise SystemExit(code)

        def unexpected(failure):
            failure.trap(Exception)
            _say(f"unexpected failure: {failure.getErrorMessage() or failure.type.__name__}")
            raise SystemExit(1)

        return d.addCallbacks(exitWithStatus, unexpected)

    if reactor is not None:
        return run(reactor)
    task.react(run)


if __name__ == "__main__":
    main()
