# -*- test-case-name: tests.test_control -*-
"""
The control channel's schema: the L{twisted.protocols.amp} commands that
C{ekeyctl} sends a running daemon, their errors, and the argument type
that carries their answers.  Both sides import it; it imports neither.

Each command answers one JSON value in a L{JSONValue} argument named
C{result}; a refusal is an AMP error whose description is one line fit for
the user:

    ListKeys                    -> [key, ...]   (L{ekey.services.statusviews.keyJSON})
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
L{BadKeyring}, L{NotPermitted} (the peer may not control the daemon), and
L{ControlFailed} for anything unexpected (logged in full by the daemon).
"""

from __future__ import annotations

import json

from twisted.protocols import amp


def oneLine(message) -> str:
    """
    @return: C{message} as text on one line.
    """
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return " ".join(str(message).split())


def messageOf(exception: BaseException) -> str:
    """
    @return: an exception's message on one line, without the quotes that
        C{str} puts around a L{KeyError}'s.
    """
    if exception.args:
        return oneLine(exception.args[0])
    return oneLine(str(exception) or exception.__class__.__name__)


# Errors -------------------------------------------------------------------------


class ControlError(Exception):
    """
    A control command was refused; the message is one line for the user.
    """

    def __str__(self):
        return oneLine(self.args[0] if self.args else self.__class__.__name__)


class UnknownKey(ControlError):
    """
    No key has that number, serial or path.
    """


class BadKeyPath(ControlError):
    """
    A key's path is missing, not a key, served already, or not allowed at
    run time.
    """


class BadKeyring(ControlError):
    """
    The keyring cannot be read, is missing, or is not the configured one.
    """


class NotPermitted(ControlError):
    """
    The peer may not control the daemon (it is not root, the daemon's user
    or a member of its control group).
    """


class ControlFailed(ControlError):
    """
    The daemon failed unexpectedly while doing the command (it logged why).
    """


# The argument type --------------------------------------------------------------


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


# The commands -------------------------------------------------------------------


class ControlCommand(amp.Command):
    """
    A control command: it answers one JSON value, C{result}.
    """

    response = [(b"result", JSONValue())]
    errors = {
        UnknownKey: b"UNKNOWN_KEY",
        BadKeyPath: b"BAD_KEY_PATH",
        BadKeyring: b"BAD_KEYRING",
        NotPermitted: b"NOT_PERMITTED",
        ControlFailed: b"CONTROL_FAILED",
    }


class ListKeys(ControlCommand):
    """
    Describe every key, by number.
    """


class KeyStats(ControlCommand):
    """
    One key's description and statistics (ekeydctl's names).
    """

    arguments = [(b"identifier", amp.Unicode())]


class AddKey(ControlCommand):
    """
    Start serving the key at a path: a serial port, or an entry of one of
    the daemon's device directories.
    """

    arguments = [(b"path", amp.Unicode())]


class AddAll(ControlCommand):
    """
    Start serving every key in a directory that is not served yet.
    """

    arguments = [(b"directory", amp.Unicode())]


class RemoveKey(ControlCommand):
    """
    Stop serving a key and forget it.
    """

    arguments = [(b"identifier", amp.Unicode())]


class ReloadKeyring(ControlCommand):
    """
    Read the configured keyring again, and restart the keys that were
    stopped for want of a long-term key.  A path, if given, must be the
    configured keyring's.
    """

    arguments = [(b"path", amp.Unicode(optional=True))]


class Shutdown(ControlCommand):
    """
    Stop the daemon, once the answer is sent.
    """


class Upstreams(ControlCommand):
    """
    Each upstream's state, bytes pulled and last error.
    """


class Clients(ControlCommand):
    """
    The connected EGD clients.
    """


class Pool(ControlCommand):
    """
    The pool's level, size and traffic.
    """
