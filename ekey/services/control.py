# -*- test-case-name: tests.test_control -*-
"""
The control channel: what C{ekeyctl} (ekey's C{ekeydctl}) asks a running
daemon, over L{twisted.protocols.amp}.

The daemon listens with L{ControlFactory} on C{twistd ekey --control
ENDPOINT} (by default a Unix socket of mode 0600 in the run directory).
Each command answers one JSON value in a L{JSONValue} argument named
C{result}; a refusal is an AMP error whose description is one line fit for
the user:

    ListKeys                    -> [key, ...]   (see L{ekey.services.keys.KeyManager.describe})
    KeyStats(identifier)        -> {"key": key, "statistics": {Name: value}}
    AddKey(path)                -> key
    AddAll(directory)           -> [key, ...]   (the keys added)
    RemoveKey(identifier)       -> key          (as it was)
    ReloadKeyring([path])       -> {"path": file, "keys": count}
    Shutdown                    -> {"shuttingDown": true}
    Upstreams                   -> [upstream, ...]
    Clients                     -> [EGD client, ...]
    Pool                        -> {name: value}

C{identifier} is a key's number (from C{ListKeys}), its serial number or
its path, as with ekeydctl.  Errors: L{UnknownKey}, L{BadKeyPath},
L{BadKeyring}, and L{ControlFailed} for anything unexpected (logged in full
by the daemon).

C{ekeyctl} is L{main}; the formatting of its output is done by pure
functions (L{formatList}, L{formatNameValues}, ...) on the JSON values.
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence

from twisted.internet import defer, error as netError
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp

from ekey.services.device import KeyPathError
from ekey.services.peers import describePeer
from ekey.core.keyring import KeyringError
from ekey.services.keys import KeyNotFound

#: Where C{ekeyctl} looks for the daemon first (C{twistd --rundir /run/ekey}).
SYSTEM_CONTROL = "unix:/run/ekey/control.sock"
#: Where it looks next: the daemon's default, in the current directory.
LOCAL_CONTROL = "unix:control.sock"
#: Seconds C{ekeyctl} waits for the daemon, by default.
DEFAULT_TIMEOUT = 10.0
#: Seconds between answering L{Shutdown} and stopping the daemon even if
#: the client does not let go of the connection.
SHUTDOWN_GRACE = 2.0


# Errors -------------------------------------------------------------------------


class ControlError(Exception):
    """
    A control command was refused; the message is one line for the user.
    """

    def __str__(self):
        return _oneLine(self.args[0] if self.args else self.__class__.__name__)


class UnknownKey(ControlError):
    """
    No key has that number, serial or path (L{KeyNotFound}).
    """


class BadKeyPath(ControlError):
    """
    A key's path is missing, not a key, or served already (L{KeyPathError}).
    """


class BadKeyring(ControlError):
    """
    The keyring cannot be read or is missing (L{KeyringError}).
    """


class ControlFailed(ControlError):
    """
    The daemon failed unexpectedly while doing the command (it logged why).
    """


def _oneLine(message) -> str:
    """
    @return: C{message} as text on one line.
    """
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return " ".join(str(message).split())


def _message(exception: BaseException) -> str:
    """
    @return: an exception's message on one line, without the quotes that
        C{str} puts around a L{KeyError}'s.
    """
    if exception.args:
        return _oneLine(exception.args[0])
    return _oneLine(str(exception) or exception.__class__.__name__)


# The protocol ------------------------------------------------------------------


class JSONValue(amp.Argument):
    """
    An AMP argument holding any JSON value, split over as many AMP values as
    it needs (each at most L{amp.MAX_VALUE_LENGTH} bytes): the first under
    the argument's name, the others under C{name.1}, C{name.2}, ...
    """

    chunkSize = amp.MAX_VALUE_LENGTH

    def toBox(self, name, strings, objects, proto):
        value = self.retrieve(objects, name.decode("ascii"), proto)
        data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")
        strings[name] = data[:self.chunkSize]
        for index, start in enumerate(range(self.chunkSize, len(data), self.chunkSize), 1):
            strings[name + b".%d" % (index,)] = data[start:start + self.chunkSize]

    def fromBox(self, name, strings, objects, proto):
        data = strings.get(name)
        if data is None:
            if self.optional:
                return
            raise KeyError(name)
        parts = [data]
        index = 1
        while name + b".%d" % (index,) in strings:
            parts.append(strings[name + b".%d" % (index,)])
            index += 1
        objects[name.decode("ascii")] = json.loads(b"".join(parts).decode("utf-8"))


class _ControlCommand(amp.Command):
    """
    A control command: it answers one JSON value, C{result}.
    """

    response = [(b"result", JSONValue())]
    errors = {
        UnknownKey: b"UNKNOWN_KEY",
        BadKeyPath: b"BAD_KEY_PATH",
        BadKeyring: b"BAD_KEYRING",
        ControlFailed: b"CONTROL_FAILED",
    }


class ListKeys(_ControlCommand):
    """
    Describe every key, by number.
    """


class KeyStats(_ControlCommand):
    """
    One key's description and statistics (ekeydctl's names).
    """

    arguments = [(b"identifier", amp.Unicode())]


class AddKey(_ControlCommand):
    """
    Start serving the key at a path.
    """

    arguments = [(b"path", amp.Unicode())]


class AddAll(_ControlCommand):
    """
    Start serving every key in a directory that is not served yet.
    """

    arguments = [(b"directory", amp.Unicode())]


class RemoveKey(_ControlCommand):
    """
    Stop serving a key and forget it.
    """

    arguments = [(b"identifier", amp.Unicode())]


class ReloadKeyring(_ControlCommand):
    """
    Read the keyring again, or another keyring file, and restart the keys
    that were stopped for want of a long-term key.
    """

    arguments = [(b"path", amp.Unicode(optional=True))]


class Shutdown(_ControlCommand):
    """
    Stop the daemon, once the answer is sent.
    """


class Upstreams(_ControlCommand):
    """
    Each upstream's state, bytes pulled and last error.
    """


class Clients(_ControlCommand):
    """
    The connected EGD clients.
    """


class Pool(_ControlCommand):
    """
    The pool's level, size and traffic.
    """


# The server --------------------------------------------------------------------


def _translated(what: str):
    """
    Make a L{Controller} method raise L{ControlError}s only: the daemon's
    own errors become their remote kinds, anything else L{ControlFailed}
    (logged in full).

    @param what: what the command does, for the log.
    """
    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, peer, *args, **kwargs):
            try:
                return method(self, peer, *args, **kwargs)
            except KeyNotFound as e:
                raise UnknownKey(_message(e)) from None
            except KeyPathError as e:
                raise BadKeyPath(_message(e)) from None
            except KeyringError as e:
                raise BadKeyring(_message(e)) from None
            except ControlError:
                raise
            except Exception:
                self.log.failure("Control {peer}: {what} failed", peer=peer, what=what)
                raise ControlFailed(f"the daemon failed to {what}; see its log") from None
        return wrapper
    return decorate


class Controller:
    """
    What the control commands do to a L{ekey.services.daemon.Daemon}, free of I/O:
    each method takes the peer (for the log) and the command's arguments,
    and returns a JSON value or raises a L{ControlError}.  State-changing
    commands are logged, with who asked, whether they succeed or not.

    @ivar daemon: the L{ekey.services.daemon.Daemon}.
    """

    log = Logger()

    def __init__(self, daemon):
        self.daemon = daemon
        self.shuttingDown = False

    def _changed(self, peer: str, what: str, call: Callable[[], object]):
        """
        Do a state-changing C{call}, logging it and any refusal.
        """
        try:
            result = call()
        except Exception as e:
            self.log.warn("Control {peer}: refused to {what}: {reason}", peer=peer,
                          what=what, reason=_message(e))
            raise
        return result

    @_translated("list the keys")
    def listKeys(self, peer: str) -> List[Dict[str, object]]:
        keys = self.daemon.keys
        return [keys.describe(number) for number in keys.numbers()]

    @_translated("give a key's statistics")
    def keyStats(self, peer: str, identifier: str) -> Dict[str, object]:
        keys = self.daemon.keys
        number = keys.find(identifier)
        return {"key": keys.describe(number),
                "statistics": keys.statistics(number, self.daemon.clock.seconds())}

    @_translated("add a key")
    def addKey(self, peer: str, path: str) -> Dict[str, object]:
        keys = self.daemon.keys
        number = self._changed(peer, f"add key {path}", lambda: keys.add(path))
        self.log.info("Control {peer}: added key {number}: {path}", peer=peer,
                      number=number, path=path)
        return keys.describe(number)

    @_translated("add the keys in a directory")
    def addAll(self, peer: str, directory: str) -> List[Dict[str, object]]:
        keys = self.daemon.keys
        numbers = self._changed(peer, f"add the keys in {directory}",
                                lambda: keys.addAll(directory))
        self.log.info("Control {peer}: added {count} key(s) from {directory}: {numbers}",
                      peer=peer, count=len(numbers), directory=directory,
                      numbers=", ".join(map(str, numbers)) or "none")
        return [keys.describe(number) for number in numbers]

    @_translated("remove a key")
    def removeKey(self, peer: str, identifier: str) -> Dict[str, object]:
        keys = self.daemon.keys

        def remove():
            description = keys.describe(keys.find(identifier))
            keys.remove(str(description["number"]))
            return description

        description = self._changed(peer, f"remove key {identifier}", remove)
        self.log.info("Control {peer}: removed key {number}: {path}", peer=peer,
                      number=description["number"], path=description["path"])
        return description

    @_translated("reload the keyring")
    def reloadKeyring(self, peer: str, path: Optional[str] = None) -> Dict[str, object]:
        keys = self.daemon.keys
        what = f"reload the keyring {path}" if path else "reload the keyring"
        count = self._changed(peer, what, lambda: keys.reloadKeyring(path))
        loaded = keys.keyring.path if keys.keyring is not None else path
        self.log.info("Control {peer}: reloaded the keyring {path}: {count} key(s)",
                      peer=peer, path=loaded, count=count)
        return {"path": loaded, "keys": count}

    @_translated("shut down")
    def shutdown(self, peer: str) -> Dict[str, object]:
        """
        Say yes to a shutdown; the caller then calls L{shutdownNow}.
        """
        self.log.info("Control {peer}: shutdown requested", peer=peer)
        return {"shuttingDown": True}

    def shutdownNow(self) -> None:
        """
        Stop the daemon, once only however many clients ask.
        """
        if not self.shuttingDown:
            self.shuttingDown = True
            self.daemon.shutdown()

    @_translated("list the upstreams")
    def upstreams(self, peer: str) -> List[Dict[str, object]]:
        return self.daemon.upstreamStatus()

    @_translated("list the EGD clients")
    def clients(self, peer: str) -> List[Dict[str, object]]:
        return self.daemon.clients()

    @_translated("describe the pool")
    def pool(self, peer: str) -> Dict[str, object]:
        return self.daemon.poolStatus()


class ControlProtocol(amp.AMP):
    """
    One control connection, server side: the AMP responders, which hand
    their work to the factory's L{Controller}.

    @ivar peer: who is connected (L{describePeer}).
    """

    log = Logger()

    def __init__(self, controller: Controller, clock):
        amp.AMP.__init__(self)
        self.controller = controller
        self.clock = clock
        self.peer = "?"
        self._shutdownAsked = False
        self._shutdownCall = None

    def makeConnection(self, transport):
        # AMP.makeConnection logs every connection at info level; a
        # monitor polling ekeyctl would fill the log.  Log at debug instead.
        self.peer = describePeer(transport)
        self.log.debug("Control connection from {peer}", peer=self.peer)
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason):
        self.log.debug("Control connection from {peer} closed", peer=self.peer)
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None
        if self._shutdownAsked:
            self._shutdown()

    def _shutdown(self):
        if self._shutdownCall is not None and self._shutdownCall.active():
            self._shutdownCall.cancel()
        self._shutdownCall = None
        self.controller.shutdownNow()

    @ListKeys.responder
    def listKeys(self):
        return {"result": self.controller.listKeys(self.peer)}

    @KeyStats.responder
    def keyStats(self, identifier):
        return {"result": self.controller.keyStats(self.peer, identifier)}

    @AddKey.responder
    def addKey(self, path):
        return {"result": self.controller.addKey(self.peer, path)}

    @AddAll.responder
    def addAll(self, directory):
        return {"result": self.controller.addAll(self.peer, directory)}

    @RemoveKey.responder
    def removeKey(self, identifier):
        return {"result": self.controller.removeKey(self.peer, identifier)}

    @ReloadKeyring.responder
    def reloadKeyring(self, path=None):
        return {"result": self.controller.reloadKeyring(self.peer, path)}

    @Shutdown.responder
    def shutdown(self):
        """
        Answer, then close this connection (which flushes the answer) and
        stop the daemon when it is closed, or after L{SHUTDOWN_GRACE}
        seconds at the latest.
        """
        result = self.controller.shutdown(self.peer)
        if not self._shutdownAsked:
            self._shutdownAsked = True
            # The answer is written when this returns; close after that.
            self.clock.callLater(0, self.transport.loseConnection)
            self._shutdownCall = self.clock.callLater(SHUTDOWN_GRACE, self._shutdown)
        return {"result": result}

    @Upstreams.responder
    def upstreams(self):
        return {"result": self.controller.upstreams(self.peer)}

    @Clients.responder
    def clients(self):
        return {"result": self.controller.clients(self.peer)}

    @Pool.responder
    def pool(self):
        return {"result": self.controller.pool(self.peer)}


class ControlFactory(Factory):
    """
    The daemon's control channel: builds a L{ControlProtocol} per
    connection, all sharing one L{Controller}.
    """

    noisy = False

    def __init__(self, daemon, clock=None):
        """
        @param daemon: the L{ekey.services.daemon.Daemon} to control.
        @param clock: an L{IReactorTime} (default the daemon's clock).
        """
        self.daemon = daemon
        self.clock = clock if clock is not None else daemon.clock
        self.controller = Controller(daemon)

    def buildProtocol(self, addr):
        protocol = ControlProtocol(self.controller, self.clock)
        protocol.factory = self
        return protocol


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


def formatUpstreams(upstreams: Sequence[Dict[str, object]]) -> str:
    """
    @return: a line per upstream: C{Upstream,State,BytesPulled,Connections,LastError}.
    """
    return _table(["Upstream", "State", "BytesPulled", "Connections", "LastError"],
                  [[u.get("upstream"), u.get("state"), u.get("bytesPulled"),
                    u.get("connections"), u.get("lastError")] for u in upstreams])


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
    return f"Added {_describeKey(key)}\n"


def formatAddedAll(keys: Sequence[Dict[str, object]]) -> str:
    if not keys:
        return "No keys added: every key there is served already\n"
    return "".join(formatAdded(key) for key in keys)


def formatRemoved(key: Dict[str, object]) -> str:
    return f"Removed {_describeKey(key)}\n"


def formatKeyring(result: Dict[str, object]) -> str:
    return f"Keyring {result['path']} loaded: {result['keys']} key(s)\n"


def formatShutdown(result: Dict[str, object]) -> str:
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


def _parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"give up after this many seconds (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("verb", metavar="VERB", nargs="?",
                        help="what to do: " + ", ".join(VERBS))
    parser.add_argument("arguments", nargs="*", metavar="ARG", help=argparse.SUPPRESS)
    return parser


def parseArguments(argv: Optional[Sequence[str]], environ=None) -> argparse.Namespace:
    """
    @return: the options, with C{verb} a L{Verb}, C{verbName}, C{argument}
        and C{control} (the endpoint) filled in.
    @raise UsageError: if the command line is wrong.
    """
    options = _parser().parse_args(argv)
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
        err.write(f"ekeyctl: {_oneLine(message)}\n")
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
            out.write(text)
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
    [--timeout SECONDS] VERB [ARG]}.  Exits with 0 when done, 1 when the
    daemon refused or could not be reached, 2 for bad usage, after one
    line on standard error.

    @param reactor: if given, run on it and return a L{Deferred} firing
        with the exit status instead of exiting.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        options = parseArguments(argv, environ)
    except UsageError as e:
        err.write(f"ekeyctl: {_oneLine(e)}\n")
        if reactor is not None:
            return defer.succeed(2)
        raise SystemExit(2)

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
