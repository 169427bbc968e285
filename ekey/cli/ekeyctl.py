# -*- test-case-name: tests.test_control -*-
"""
C{ekeyctl} (ekey's C{ekeydctl}): ask a running daemon about its keys, or
change them, over the control channel (L{ekey.services.controlschema}).

    ekeyctl [--control ENDPOINT] [--json] [--timeout SECONDS] VERB [ARG]

The formatting of its output is done by pure functions (L{formatList},
L{formatNameValues}, ...) on the daemon's JSON answers, and everything it
prints is stripped of control characters (L{printable}): the daemon's
answers hold paths, peers and error texts that others may have chosen.
This module imports the schema only, never the daemon's side.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
from typing import Dict, Optional, Sequence

from twisted.internet import defer, error as netError
from twisted.protocols import amp

from ekey import __version__

from ekey.services.controlschema import (
    AddAll,
    AddKey,
    Clients,
    ControlError,
    KeyStats,
    ListKeys,
    Pool,
    ReloadKeyring,
    RemoveKey,
    Shutdown,
    Upstreams,
    messageOf as _message,
    oneLine as _oneLine,
)

#: Where C{ekeyctl} looks for the daemon first (C{twistd --rundir /run/ekey}).
SYSTEM_CONTROL = "unix:/run/ekey/control.sock"
#: Where it looks next: the daemon's default, in the current directory.
LOCAL_CONTROL = "unix:control.sock"
#: Seconds C{ekeyctl} waits for the daemon, by default.
DEFAULT_TIMEOUT = 10.0

#: What a terminal would act on: ANSI escape sequences (CSI, string
#: sequences such as OSC up to their terminator, and other ESC
#: sequences), then any C0 control but newline and tab, DEL, and the C1
#: controls.
_CONTROL = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"      # CSI ... final byte
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC, DCS, SOS, PM, APC ... terminator
    r"|\x1b[ -/]*[0-~]"               # other ESC sequences (ESC c, ESC ( B, ...)
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """
    @return: C{text} without control characters (but newlines and tabs)
        or terminal escape sequences, fit to print to a terminal.
    """
    return _CONTROL.sub("", text)


# ekeyctl: formatting, pure -------------------------------------------------------


def formatValue(value) -> str:
    """
    @return: a value as ekeydctl shows it: whole floats without C{.0},
        nothing for C{None}.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "YES" if value else "NO"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = [",".join(header)]
    lines += [",".join(_oneLine(formatValue(cell)) for cell in row) for row in rows]
    return "\n".join(lines) + "\n"


def formatList(keys: Sequence[Dict[str, object]]) -> str:
    """
    @return: the keys as ekeydctl's C{list} shows them:
        C{NR,OK,Status,Path,SerialNo} then one line per key.
    """
    return _table(["NR", "OK", "Status", "Path", "SerialNo"],
                  [[k["number"], bool(k["ok"]), k["state"], k["path"], k.get("serial")]
                   for k in keys])


def formatNameValues(values: Dict[str, object]) -> str:
    """
    @return: C{Name=Value} lines, sorted by name, as ekeydctl's C{stats}.
    """
    return "".join(f"{name}={_oneLine(formatValue(values[name]))}\n"
                   for name in sorted(values))


#: The columns of C{ekeyctl upstreams}: (header, key in the daemon's
#: answer, as L{ekey.services.statusviews.upstreamJSON} makes it).
_UPSTREAM_COLUMNS = (
    ("Upstream", "upstream"), ("State", "state"), ("Priority", "priority"),
    ("BytesPulled", "bytesPulled"), ("InFlight", "inFlight"), ("Testing", "testing"),
    ("BytesRefused", "bytesRefused"), ("Connections", "connections"),
    ("HealthFailures", "healthFailures"), ("LastError", "lastError"),
)


def formatUpstreams(upstreams: Sequence[Dict[str, object]]) -> str:
    """
    @return: a header, then a line per upstream:
        C{Upstream,State,Priority,BytesPulled,InFlight,Testing,BytesRefused,
        Connections,HealthFailures,LastError} (a value the daemon did not
        give is empty).
    """
    return _table([header for header, _ in _UPSTREAM_COLUMNS],
                  [[u.get(key) for _, key in _UPSTREAM_COLUMNS] for u in upstreams])


def formatClients(clients: Sequence[Dict[str, object]]) -> str:
    """
    @return: a line per EGD client:
        C{Listener,Peer,Identity,BytesServed,Requests,ConnectedFor}.
    """
    return _table(["Listener", "Peer", "Identity", "BytesServed", "Requests", "ConnectedFor"],
                  [[c.get("listener"), c.get("peer"), c.get("identity"), c.get("bytesServed"),
                    c.get("requests"), c.get("connectedFor")] for c in clients])


def _describeKey(key: Dict[str, object]) -> str:
    serial = f" ({key['serial']})" if key.get("serial") else ""
    return f"key {key['number']}: {key['path']}{serial}"


def formatStats(result: Dict[str, object]) -> str:
    """
    @return: a key's statistics as C{Name=Value} lines.
    @raise ControlError: if the key has none (it is not connected).
    """
    statistics = result["statistics"]
    if not statistics:
        key = result["key"]
        raise ControlError(f"{_describeKey(key)} has no statistics: {key['state']}"
                           + (f" ({key['reason']})" if key.get("reason") else ""))
    return formatNameValues(statistics)


def formatAdded(key: Dict[str, object]) -> str:
    """
    @return: a line saying which key was added.
    """
    return f"Added {_describeKey(key)}\n"


def formatAddedAll(keys: Sequence[Dict[str, object]]) -> str:
    """
    @return: a line per key added, or one saying none was.
    """
    if not keys:
        return "No keys added: those there are served already or may not be added at run time\n"
    return "".join(formatAdded(key) for key in keys)


def formatRemoved(key: Dict[str, object]) -> str:
    """
    @return: a line saying which key was removed.
    """
    return f"Removed {_describeKey(key)}\n"


def formatKeyring(result: Dict[str, object]) -> str:
    """
    @return: a line saying which keyring was loaded, with how many keys.
    """
    return f"Keyring {result['path']} loaded: {result['keys']} key(s)\n"


def formatShutdown(result: Dict[str, object]) -> str:
    """
    @return: a line saying the daemon is stopping.
    """
    return "The daemon is shutting down\n"


def formatJSON(result) -> str:
    """
    @return: a result as indented JSON, for C{--json}.
    """
    return json.dumps(result, indent=2, sort_keys=True) + "\n"


class Verb:
    """
    One C{ekeyctl} verb.

    @ivar command: the AMP command it sends.
    @ivar argument: the command's argument name (C{str}), or C{None}.
    @ivar metavar: the argument as the usage shows it.
    @ivar required: whether the argument must be given.
    @ivar kind: C{"path"} (made absolute before sending), C{"identifier"}
        (made absolute if it names an existing file), or C{None}.
    @ivar format: turns the result into text.
    """

    def __init__(self, command, format, argument=None, metavar=None, required=True,
                 kind=None):
        self.command = command
        self.format = format
        self.argument = argument
        self.metavar = metavar
        self.required = required
        self.kind = kind

    def usage(self, name: str) -> str:
        if self.argument is None:
            return name
        return f"{name} {self.metavar}" if self.required else f"{name} [{self.metavar}]"


VERBS: Dict[str, Verb] = {
    "list": Verb(ListKeys, formatList),
    "stats": Verb(KeyStats, formatStats, "identifier", "ID", kind="identifier"),
    "add": Verb(AddKey, formatAdded, "path", "PATH", kind="path"),
    "addall": Verb(AddAll, formatAddedAll, "directory", "DIR", kind="path"),
    "remove": Verb(RemoveKey, formatRemoved, "identifier", "ID", kind="identifier"),
    "keyring": Verb(ReloadKeyring, formatKeyring, "path", "FILE", required=False, kind="path"),
    "shutdown": Verb(Shutdown, formatShutdown),
    "upstreams": Verb(Upstreams, formatUpstreams),
    "clients": Verb(Clients, formatClients),
    "pool": Verb(Pool, formatNameValues),
}


def commandArguments(verb: Verb, argument: Optional[str],
                     cwd: Optional[str] = None) -> Dict[str, str]:
    """
    The AMP arguments for a verb.  Paths are made absolute, since the
    daemon runs in another directory; an identifier is made absolute only
    when it names an existing file (else it is a number or a serial).

    @param cwd: the directory relative paths are in (default the current
        one).
    """
    if verb.argument is None or argument is None:
        return {}
    cwd = cwd or os.getcwd()
    if verb.kind == "path" or (verb.kind == "identifier" and not argument.isdigit()
                                and os.path.lexists(os.path.join(cwd, argument))):
        argument = os.path.normpath(os.path.join(cwd, argument))
    return {verb.argument: argument}


def defaultEndpoint(environ=None, exists=os.path.exists) -> str:
    """
    @return: the control endpoint: C{$EKEY_CONTROL}, else
        L{SYSTEM_CONTROL} if that socket exists, else L{LOCAL_CONTROL}.
    """
    environ = os.environ if environ is None else environ
    if environ.get("EKEY_CONTROL"):
        return environ["EKEY_CONTROL"]
    if exists(SYSTEM_CONTROL[len("unix:"):]):
        return SYSTEM_CONTROL
    return LOCAL_CONTROL


def describeConnectFailure(endpoint: str, reason: BaseException) -> str:
    """
    @return: one line saying why C{endpoint} could not be reached.
    """
    code = getattr(reason, "osError", None)
    text = _message(reason) if reason.args else reason.__class__.__name__
    if code == errno.ENOENT or "No such file" in text:
        return (f"cannot connect to {endpoint}: no such socket "
                "(is the daemon running? give --control or set EKEY_CONTROL)")
    if code in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        return (f"cannot connect to {endpoint}: permission denied "
                "(run ekeyctl as the daemon's user, such as root)")
    if isinstance(reason, netError.ConnectionRefusedError):
        return f"cannot connect to {endpoint}: connection refused (is the daemon running?)"
    return f"cannot connect to {endpoint}: {text}"


# ekeyctl: running -----------------------------------------------------------------


class UsageError(Exception):
    """
    The command line is wrong (exit status 2).
    """


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def parser() -> argparse.ArgumentParser:
    """
    @return: C{ekeyctl}'s argument parser (its options, for the manual
        page's test); L{parseArguments} checks what it cannot.
    """
    verbs = "\n".join(f"  {verb.usage(name)}" for name, verb in VERBS.items())
    parser = _Parser(
        prog="ekeyctl",
        usage="ekeyctl [--control ENDPOINT] [--json] [--timeout SECONDS] VERB [ARG]",
        description="Ask a running ekey daemon (twistd ekey) about its keys, or change them.",
        epilog=f"verbs:\n{verbs}\n\nID is a key's number (from 'list'), serial or path.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--control", metavar="ENDPOINT", default=None,
                        help="the daemon's control endpoint (default $EKEY_CONTROL, else "
                             f"{SYSTEM_CONTROL} if it exists, else {LOCAL_CONTROL})")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--version", action="store_true",
                        help="print ekeyctl's version and exit")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"give up after this many seconds (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("verb", metavar="VERB", nargs="?",
                        help="what to do: " + ", ".join(VERBS))
    parser.add_argument("arguments", nargs="*", metavar="ARG", help=argparse.SUPPRESS)
    return parser


def parseArguments(argv: Optional[Sequence[str]], environ=None) -> argparse.Namespace:
    """
    @return: the options, with C{verb} a L{Verb}, C{verbName}, C{argument}
        and C{control} (the endpoint) filled in; or, with C{version} set,
        nothing else checked.
    @raise UsageError: if the command line is wrong.
    """
    options = parser().parse_args(argv)
    if options.version:
        return options
    if options.verb is None:
        raise UsageError(f"give a VERB: one of {', '.join(VERBS)} (see ekeyctl --help)")
    verb = VERBS.get(options.verb)
    if verb is None:
        raise UsageError(f"unknown verb {options.verb!r} (one of: {', '.join(VERBS)})")
    maximum = 0 if verb.argument is None else 1
    if len(options.arguments) > maximum:
        raise UsageError(f"too many arguments: ekeyctl {verb.usage(options.verb)}")
    if verb.required and verb.argument is not None and not options.arguments:
        raise UsageError(f"{options.verb} needs {verb.metavar}: "
                         f"ekeyctl {verb.usage(options.verb)}")
    if not options.timeout > 0:
        raise UsageError("--timeout must be more than 0 seconds")
    options.verbName = options.verb
    options.verb = verb
    options.argument = options.arguments[0] if options.arguments else None
    options.control = options.control or defaultEndpoint(environ)
    return options


def connectControl(reactor, description: str):
    """
    Connect to a daemon's control endpoint.

    @return: a L{Deferred} that fires with a connected L{amp.AMP}.
    @raise UsageError: if C{description} is not an endpoint.
    """
    from twisted.internet.endpoints import clientFromString, connectProtocol

    try:
        endpoint = clientFromString(reactor, description)
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"bad --control endpoint {description!r}: {_message(e)}") from None
    return connectProtocol(endpoint, amp.AMP())


async def execute(reactor, options, out, err, connect=connectControl) -> int:
    """
    Do what the command line asks and print the result.

    @param options: from L{parseArguments}.
    @param out: where the result goes.
    @param err: where the one line of any error goes.
    @param connect: C{(reactor, endpoint) -> Deferred[AMP]}; the AMP may be
        anything with C{callRemote}.
    @return: the exit status: 0 done, 1 refused or failed, 2 bad usage.
    """
    def fail(message: str, status: int = 1) -> int:
        err.write(printable(f"ekeyctl: {_oneLine(message)}") + "\n")
        err.flush()
        return status

    try:
        connecting = connect(reactor, options.control)
    except UsageError as e:
        return fail(str(e), 2)
    connecting.addTimeout(options.timeout, reactor)
    try:
        protocol = await connecting
    except defer.TimeoutError:
        return fail(f"cannot connect to {options.control}: no answer within "
                    f"{options.timeout:g} s")
    except Exception as e:
        return fail(describeConnectFailure(options.control, e))
    try:
        call = defer.maybeDeferred(
            protocol.callRemote, options.verb.command,
            **commandArguments(options.verb, options.argument))
        call.addTimeout(options.timeout, reactor)
        try:
            answer = await call
        except defer.TimeoutError:
            return fail(f"no answer from {options.control} within {options.timeout:g} s")
        except ControlError as e:
            return fail(str(e))
        except (amp.UnknownRemoteError, amp.RemoteAmpError, amp.UnhandledCommand) as e:
            return fail(f"the daemon refused {options.verbName}: {_message(e)}")
        except (netError.ConnectionDone, netError.ConnectionLost) as e:
            return fail(f"the daemon closed the connection before answering: {_message(e)}")
        result = answer["result"]
        try:
            text = formatJSON(result) if options.json else options.verb.format(result)
        except ControlError as e:
            return fail(str(e))
        try:
            out.write(printable(text))
            out.flush()
        except BrokenPipeError:
            pass
        return 0
    except Exception as e:  # never a traceback
        return fail(f"unexpected error: {e.__class__.__name__}: {_message(e)}")
    finally:
        transport = getattr(protocol, "transport", None)
        if transport is not None:
            transport.loseConnection()


def main(argv: Optional[Sequence[str]] = None, reactor=None, out=None, err=None,
         environ=None):
    """
    The C{ekeyctl} command: C{ekeyctl [--control ENDPOINT] [--json]
    [--timeout SECONDS] VERB [ARG]} or C{ekeyctl --version}.  Exits with 0
    when done, 1 when the daemon refused or could not be reached, 2 for
    bad usage, after one line on standard error.

    @param reactor: if given, run on it and return a L{Deferred} firing
        with the exit status instead of exiting.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        options = parseArguments(argv, environ)
    except UsageError as e:
        err.write(printable(f"ekeyctl: {_oneLine(e)}") + "\n")
        if reactor is not None:
            return defer.succeed(2)
        raise SystemExit(2)
    if options.version:
        out.write(f"ekeyctl {__version__}\n")
        out.flush()
        return defer.succeed(0) if reactor is not None else None

    if reactor is not None:
        return defer.Deferred.fromCoroutine(execute(reactor, options, out, err))

    from twisted.internet import task

    def run(reactor):
        d = defer.Deferred.fromCoroutine(execute(reactor, options, out, err))

        def exitWithStatus(status):
            if status:
                raise SystemExit(status)

        return d.addCallback(exitWithStatus)

    task.react(run)


if __name__ == "__main__":
    main()
