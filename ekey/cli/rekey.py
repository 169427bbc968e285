# -*- test-case-name: tests.test_rekey -*-
"""
C{ekey-rekey}: give an Entropy Key a new long-term key with its master key,
store it in the keyring, and have a running daemon let go of the key
meanwhile and take it back afterwards, as ekeyd's C{ekey-rekey} does.

    ekey-rekey [-d PATH] [-f KEYRING] [--master-key-file FILE]
               [--control ENDPOINT] [--no-verify] [SERIAL]

Without C{--device}, the key is looked for by its serial number where udev
(C{/dev/entropykey}) and ekeyd (C{/var/run/entropykeys}) put it.  The
daemon is asked over its control channel (C{ekeyctl}'s): C{RemoveKey},
then, whatever happened, C{ReloadKeyring} and C{AddKey}.  When no daemon
answers, the key is re-keyed directly, and the command says so.  The new
key is then proved by agreeing a session key under it (unless
C{--no-verify}).  Exit status: 0 done, 1 failed (one line on standard
error saying why), 2 bad usage.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Optional, Sequence

from ekey.cli.setkey import (
    ArgumentParser,
    CommandFailed,
    UsageError,
    addCommonArguments,
    checkCommonArguments,
    checkKey,
    masterKeyRefusal,
    openKeyring,
    promptForMasterKey,
    readMasterKey,
    runCommand,
)
from ekey.core.keyring import formatSerial
from ekey.cli.ekeyctl import defaultEndpoint
from ekey.services.rekey import (
    DaemonLink,
    RekeyError,
    changeLongTermKey,
    findKeyPath,
    storeLongTermKey,
    verifyLongTermKey,
)

#: Where keys are looked for by serial number: udev's links (see
#: examples/udev) and ekeyd's user-space USB keys.
KEY_DIRECTORIES = ("/dev/entropykey", "/var/run/entropykeys")

#: The C{--control} value that means: do not ask any daemon.
NO_CONTROL = "none"


def parser() -> ArgumentParser:
    """
    @return: C{ekey-rekey}'s argument parser.
    """
    parser = ArgumentParser(
        prog="ekey-rekey",
        description="Give an Entropy Key a new long-term key made with its master key, store "
                    "it in the keyring, and have a running daemon let go of the key meanwhile "
                    "and take it back afterwards.",
    )
    parser.add_argument("-d", "--device", metavar="PATH",
                        help="the key: a serial device or a Unix socket (default: the entry "
                             f"named after SERIAL in {' or '.join(KEY_DIRECTORIES)})")
    addCommonArguments(parser)
    parser.add_argument("--control", metavar="ENDPOINT", default=None,
                        help="the daemon's control endpoint, as for ekeyctl (default "
                             "$EKEY_CONTROL, else ekeyctl's default); 'none' to ask no daemon")
    parser.add_argument("--no-verify", action="store_true",
                        help="do not prove the new key with a session re-key afterwards")
    parser.add_argument("arguments", metavar="SERIAL", nargs="*",
                        help="the key's serial number (as --serial)")
    return parser


def parseArguments(argv: Optional[Sequence[str]], environ=None):
    """
    @return: the options, with C{device} found and C{control} filled in.
    @raise UsageError: if the command line is wrong.
    @raise CommandFailed: if no key can be found for the serial.
    """
    prog = "ekey-rekey"
    options = parser().parse_args(argv)
    if len(options.arguments) > 1:
        # ekeyd's ekey-rekey SERIAL MASTERKEY.
        raise UsageError(masterKeyRefusal(prog))
    if options.arguments:
        serial = options.arguments[0]
        if options.serial is not None and options.serial != serial:
            raise UsageError(f"two serial numbers given: {options.serial} and {serial}")
        options.serial = serial
    checkCommonArguments(options, prog)
    if options.device is None:
        if options.serial is None:
            raise UsageError("give the key's SERIAL or --device PATH (see ekey-rekey --help)")
        options.device = findKeyPath(options.serial, KEY_DIRECTORIES)
        if options.device is None:
            raise CommandFailed(f"no key with serial {options.serial} in "
                          f"{' or '.join(KEY_DIRECTORIES)}: is it plugged in? "
                          "(or give --device PATH)")
    options.device = os.path.abspath(options.device)
    options.control = options.control or defaultEndpoint(environ)
    return options


async def rekey(reactor, options, keyring, masterKey: bytes, out,
                randomBytes=os.urandom) -> int:
    """
    Release the key from a running daemon, re-key it, store the new key,
    prove it, and give the key back to the daemon.

    @param options: from L{parseArguments}.
    @param keyring: the keyring, checked writable.
    @param masterKey: the key's master key.
    @param out: where progress goes.
    @return: 0.
    @raise CommandFailed: with one line saying everything that went wrong.
    """
    def say(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    path = options.device
    link = released = None
    if options.control != NO_CONTROL:
        link, why = await DaemonLink.connect(reactor, options.control, options.timeout)
        if link is None:
            say(f"No daemon answered on {options.control} ({why}): re-keying {path} directly")
    try:
        if link is not None:
            identifiers = [path] + ([options.serial] if options.serial else [])
            released = await link.release(identifiers)
            if released is None:
                say(f"The daemon at {options.control} does not serve {path}: "
                    "re-keying it directly")
            else:
                say(f"The daemon at {options.control} let go of key {released.get('number')} "
                    f"({released.get('path')})")
        problems = []
        try:
            protocol, exchange = await changeLongTermKey(
                reactor, path, masterKey, options.expectedSerial, options.timeout,
                randomBytes=randomBytes)
            try:
                say(f"Entropy Key serial: {formatSerial(exchange.serial)}")
                storeLongTermKey(keyring, exchange.serial, exchange.newLongTermKey)
                say(f"New long-term key stored in {keyring.path}")
                if not options.no_verify:
                    await verifyLongTermKey(reactor, protocol, keyring, options.timeout)
                    say("Verified: the key sends entropy under the new long-term key")
            finally:
                protocol.close()
        except RekeyError as e:
            problems.append(str(e))
        if released is not None:
            problem = await link.giveBack(str(released.get("path") or path), keyring.path)
            if problem:
                problems.append(problem)
            else:
                say(f"The daemon at {options.control} serves the key again")
        if problems:
            raise CommandFailed("; ".join(problems))
        return 0
    finally:
        if link is not None:
            link.close()


def main(argv: Optional[Sequence[str]] = None, reactor=None, out=None, err=None,
         prompt: Callable[[], str] = promptForMasterKey, environ=None, randomBytes=os.urandom):
    """
    The C{ekey-rekey} command.

    @param argv: the arguments, without the program name.
    @param reactor: if given, run on it and return a L{Deferred} firing
        with the exit status instead of exiting.
    @param prompt: asks for the master key.
    @param environ: the environment (for C{$EKEY_CONTROL}).
    @param randomBytes: where the host's nonce comes from.
    """
    out = out or sys.stdout

    def prepare():
        options = parseArguments(argv, environ)
        checkKey(options.device)
        keyring = openKeyring(options.keyring)
        masterKey = readMasterKey(options, prompt)
        return options, keyring, masterKey

    async def execute(reactor, prepared) -> int:
        options, keyring, masterKey = prepared
        return await rekey(reactor, options, keyring, masterKey, out, randomBytes)

    return runCommand("ekey-rekey", prepare, execute, reactor, err)


__all__ = ["main", "parseArguments", "rekey"]

if __name__ == "__main__":
    main()
