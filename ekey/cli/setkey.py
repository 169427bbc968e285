# -*- test-case-name: tests.test_setkey -*-
"""
C{ekey-setkey}: give an Entropy Key a new long-term key with its master
key and store it in the keyring, nothing else (as ekeyd's C{ekey-setkey};
C{ekey-rekey} also asks a running daemon to let go of the key and to take
it back).

    ekey-setkey [-s SERIAL] [-f KEYRING] [-n] [--master-key-file FILE] PATH

The master key is typed at a prompt (not echoed) or read from
C{--master-key-file}, a file only its owner may read; one given on the
command line (C{-m}, as ekeyd's tool takes it) is refused, since every user
could read it in C{/proc/PID/cmdline}.  The keyring is checked writable
before the key is touched.  Exit status: 0 done, 1 failed (one line on
standard error saying why), 2 bad usage.

The pieces both commands share (the one-line argument parser, the master
key options) are here; L{ekey.cli.rekey} uses them.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Callable, List, Optional, Sequence

from twisted.internet import defer

import ekey
from ekey.core.keyring import DEFAULT_KEYRING, KeyringError, formatSerial, parseSerial
from ekey.core.rekey import parseMasterKey
from ekey.services.device import KeyPathError, checkKeyPath
from ekey.services.rekey import (
    RekeyError,
    changeLongTermKey,
    prepareKeyring,
    readMasterKeyFile,
    storeLongTermKey,
)

#: Seconds to wait for the key, by default.
DEFAULT_TIMEOUT = 10.0

MASTER_KEY_PROMPT = "Master key (as printed on the key's card; not echoed): "


class UsageError(Exception):
    """
    The command line is wrong (exit status 2); the message is one line.
    """


class CommandFailed(Exception):
    """
    The command failed (exit status 1); the message is one line.
    """


class ArgumentParser(argparse.ArgumentParser):
    """
    An argument parser whose errors are a L{UsageError} (one line, no
    usage dump).
    """

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def addCommonArguments(parser: argparse.ArgumentParser) -> None:
    """
    Add the options C{ekey-setkey} and C{ekey-rekey} share: the keyring,
    the serial, the master key's file, the time-out and the version.
    """
    parser.add_argument("-f", "--keyring", metavar="KEYRING", default=DEFAULT_KEYRING,
                        help="the keyring to store the new long-term key in "
                             f"(default {DEFAULT_KEYRING})")
    parser.add_argument("-s", "--serial", metavar="SERIAL",
                        help="refuse to re-key a key whose serial number is not this one")
    parser.add_argument("--master-key-file", metavar="FILE",
                        help="read the master key from the first line of FILE, which only "
                             "its owner may read (default: ask for it, without echo)")
    parser.add_argument("-m", "--master-key", metavar="KEY", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", metavar="SECONDS", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds to wait for the key (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("-v", "-V", "--version", action="version",
                        version=f"%(prog)s {ekey.__version__}")


def masterKeyRefusal(prog: str) -> str:
    """
    @return: the one line that refuses a master key on the command line.
    """
    return (f"a master key on the command line is visible to every user in /proc/PID/cmdline: "
            f"leave it out to type it at the prompt, or give --master-key-file FILE "
            f"(chmod 600), as in {prog} --master-key-file FILE")


def checkCommonArguments(options: argparse.Namespace, prog: str) -> None:
    """
    Check what L{addCommonArguments} added, and turn C{--serial} into
    bytes (C{options.expectedSerial}).

    @raise UsageError: if the master key was given on the command line, or
        the serial or time-out is malformed.
    """
    if options.master_key is not None:
        raise UsageError(masterKeyRefusal(prog))
    if not options.timeout > 0:
        raise UsageError("--timeout must be more than 0 seconds")
    options.expectedSerial = None
    if options.serial is not None:
        try:
            options.expectedSerial = parseSerial(options.serial)
        except ValueError as e:
            raise UsageError(str(e)) from None


def promptForMasterKey(prompt: str = MASTER_KEY_PROMPT) -> str:
    """
    Ask for the master key on the terminal, without echo.

    @return: what was typed.
    @raise CommandFailed: if there is no terminal to ask on, or nothing was typed.
    """
    try:
        with open("/dev/tty", "rb"):
            pass
    except OSError:
        raise CommandFailed("no terminal to ask for the master key on: "
                      "give --master-key-file FILE (chmod 600)") from None
    try:
        return getpass.getpass(prompt)
    except (EOFError, KeyboardInterrupt):
        raise CommandFailed("no master key was typed") from None


def readMasterKey(options: argparse.Namespace,
                  prompt: Callable[[], str] = promptForMasterKey) -> bytes:
    """
    @param prompt: asks the user and returns what was typed.
    @return: the master key from C{--master-key-file}, else from C{prompt}.
    @raise CommandFailed: if it cannot be read or is malformed.
    """
    try:
        if options.master_key_file is not None:
            return readMasterKeyFile(options.master_key_file)
        return parseMasterKey(prompt())
    except ValueError as e:
        raise CommandFailed(str(e)) from None


def checkKey(path: str) -> str:
    """
    @return: C{path}, once it is known to be a key (device or socket).
    @raise CommandFailed: if it is not.
    """
    try:
        checkKeyPath(path)
    except KeyPathError as e:
        raise CommandFailed(str(e)) from None
    return path


def openKeyring(path: str):
    """
    @return: the keyring, checked writable (L{prepareKeyring}).
    @raise CommandFailed: if it cannot be read or written.
    """
    try:
        return prepareKeyring(path)
    except KeyringError as e:
        raise CommandFailed(f"{e} (nothing was changed)") from None


def runCommand(prog: str, prepare: Callable[[], object], execute,
               reactor=None, err=None):
    """
    Run a command: C{prepare()} before the reactor (checks, prompts), then
    C{execute(reactor, prepared)}, a coroutine, on it.  A L{UsageError}
    exits with 2, a L{CommandFailed} or L{RekeyError} with 1, each after one line
    on C{err}; never a traceback.

    @param reactor: if given, run on it and return a L{Deferred} firing
        with the exit status instead of exiting.
    @return: see C{reactor}.
    """
    err = err or sys.stderr

    def fail(message: str, status: int):
        err.write(f"{prog}: {' '.join(str(message).split())}\n")
        err.flush()
        return status

    async def guarded(reactor, prepared) -> int:
        try:
            return await execute(reactor, prepared)
        except (CommandFailed, RekeyError) as e:
            return fail(str(e), 1)
        except Exception as e:  # never a traceback
            return fail(f"unexpected error: {e.__class__.__name__}: {e}", 1)

    try:
        prepared = prepare()
    except UsageError as e:
        status = fail(str(e), 2)
    except CommandFailed as e:
        status = fail(str(e), 1)
    else:
        status = None
    if reactor is not None:
        if status is not None:
            return defer.succeed(status)
        return defer.Deferred.fromCoroutine(guarded(reactor, prepared))
    if status is not None:
        raise SystemExit(status)

    from twisted.internet import task

    def run(reactor):
        d = defer.Deferred.fromCoroutine(guarded(reactor, prepared))

        def exitWithStatus(status):
            if status:
                raise SystemExit(status)

        return d.addCallback(exitWithStatus)

    task.react(run)


# ekey-setkey ----------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """
    @return: C{ekey-setkey}'s argument parser.
    """
    parser = ArgumentParser(
        prog="ekey-setkey",
        description="Give an Entropy Key a new long-term key made with its master key, and "
                    "store it in the keyring; nothing else (ekey-rekey also has a running "
                    "daemon let go of the key and take it back).",
    )
    addCommonArguments(parser)
    parser.add_argument("-n", "--no-store", action="store_true",
                        help="do not update the keyring: print the keyring line instead")
    parser.add_argument("path", metavar="PATH",
                        help="the key: a serial device (such as /dev/entropykey/SERIAL) or "
                             "a Unix socket")
    return parser


def main(argv: Optional[Sequence[str]] = None, reactor=None, out=None, err=None,
         prompt: Callable[[], str] = promptForMasterKey, randomBytes=os.urandom):
    """
    The C{ekey-setkey} command.

    @param argv: the arguments, without the program name.
    @param reactor: if given, run on it and return a L{Deferred} firing
        with the exit status instead of exiting.
    @param prompt: asks for the master key (L{promptForMasterKey}).
    @param randomBytes: where the host's nonce comes from.
    """
    out = out or sys.stdout
    prog = "ekey-setkey"

    def prepare():
        options = parser().parse_args(argv)
        checkCommonArguments(options, prog)
        checkKey(options.path)
        keyring = None if options.no_store else openKeyring(options.keyring)
        masterKey = readMasterKey(options, prompt)
        return options, keyring, masterKey

    async def execute(reactor, prepared) -> int:
        options, keyring, masterKey = prepared
        protocol, exchange = await changeLongTermKey(
            reactor, options.path, masterKey, options.expectedSerial, options.timeout,
            randomBytes=randomBytes)
        protocol.close()
        serial = formatSerial(exchange.serial)
        if keyring is None:
            out.write(f"{serial} {formatSerial(exchange.newLongTermKey)}\n")
        else:
            storeLongTermKey(keyring, exchange.serial, exchange.newLongTermKey)
            out.write(f"Entropy Key {serial}: new long-term key stored in {keyring.path}\n")
        out.flush()
        return 0

    return runCommand(prog, prepare, execute, reactor, err)


__all__: List[str] = [
    "ArgumentParser",
    "CommandFailed",
    "UsageError",
    "addCommonArguments",
    "checkCommonArguments",
    "checkKey",
    "main",
    "openKeyring",
    "readMasterKey",
    "runCommand",
]

if __name__ == "__main__":
    main()
