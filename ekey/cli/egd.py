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

from ekey.cli._args import ArgumentParser
from ekey.services.client import EGDClientProtocol, EGDConnectionLost, readExactly


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="ekey-egd",
        description="Talk EGD to a server. Entropy is written raw to standard output.",
    )
    parser.add_argument("--connect", "-c", required=True,
                        help="client endpoint, such as tcp:localhost:8888 or unix:/run/ekey/egd")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for the answer (default 30)")
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


async def _run(reactor, args, out) -> int:
    from twisted.internet.endpoints import clientFromString, connectProtocol

    try:
        endpoint = clientFromString(reactor, args.connect)
    except (ValueError, TypeError, KeyError) as e:
        print(f"ekey-egd: bad endpoint {args.connect!r}: {e}", file=sys.stderr)
        return 2
    client = EGDClientProtocol()
    try:
        connecting = connectProtocol(endpoint, client)
        connecting.addTimeout(args.timeout, reactor)
        await connecting
    except Exception as e:
        print(f"ekey-egd: cannot connect to {args.connect}: {e}", file=sys.stderr)
        return 1
    try:
        if args.verb == "level":
            work = defer.ensureDeferred(client.level())
        elif args.verb == "pid":
            work = defer.ensureDeferred(client.pid())
        else:
            work = defer.Deferred.fromCoroutine(
                readExactly(client, args.n, blocking=args.verb == "get"))
        work.addTimeout(args.timeout, reactor)
        try:
            result = await work
        except defer.TimeoutError:
            print(f"ekey-egd: no answer within {args.timeout:g} seconds", file=sys.stderr)
            return 1
        except EGDConnectionLost as e:
            print(f"ekey-egd: the server closed the connection: {e}", file=sys.stderr)
            return 1
        if isinstance(result, bytes):
            out.buffer.write(result)
            out.buffer.flush()
        else:
            print(result, file=out)
        return 0
    finally:
        client.transport.loseConnection()


def main(argv=None, reactor=None, out=None):
    """
    The C{ekey-egd} command.
    """
    args = _parser().parse_args(argv)
    out = out or sys.stdout

    def run(r):
        d = defer.Deferred.fromCoroutine(_run(r, args, out))

        def exitWithStatus(code):
            if code:
                raise SystemExit(code)

        return d.addCallback(exitWithStatus)

    if reactor is not None:
        return run(reactor)
    task.react(run)


if __name__ == "__main__":
    main()
