# -*- test-case-name: tests.test_errors -*-
"""
Start-up failures as one line naming the option and the fix.

Two kinds of failure stop a start: an endpoint description that cannot be
used (L{checkEndpoint}, at option-checking time, before anything runs), and
a listener that cannot bind (a port in use, another daemon's lock on a
control socket), which only shows when C{strports} services start
listening in C{privilegedStartService}.  L{StartupGuard} wraps the daemon's
services and turns the latter into one line on standard error and exit
status 1, where C{twistd} would log a 40-line traceback.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

from twisted.application.service import MultiService
from twisted.internet import endpoints
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from ekey.core.endpointstrings import splitDescription

log = Logger()

#: How each kind of server endpoint is written, for messages.
SERVER_FORMS = {
    "tcp": "tcp:PORT[:interface=ADDRESS]",
    "tcp6": "tcp6:PORT[:interface=ADDRESS]",
    "unix": "unix:PATH[:mode=600]",
    "mtls": "mtls:PORT:certKey=FILE:privateKey=FILE:caCerts=FILE",
    "ssl": "ssl:PORT:privateKey=FILE:certKey=FILE",
    "systemd": "systemd:domain=INET:index=N",
}

#: How each kind of client endpoint is written, for messages.
CLIENT_FORMS = {
    "tcp": "tcp:HOST:PORT",
    "unix": "unix:PATH",
    "tls": "tls:HOST:PORT:trustRoots=DIR[:certificate=FILE:privateKey=FILE]",
}

#: Endpoint parameters that name files, and what each must be.
FILE_PARAMETERS = {
    "trustRoots": "a directory of CA certificates (PEM)",
    "certificate": "a PEM certificate file",
    "privateKey": "a PEM private key file",
    "certKey": "a PEM certificate file",
    "caCerts": "a PEM file of CA certificates",
    "extraCertChain": "a PEM file of certificates",
    "dhParameters": "a PEM file of DH parameters",
}


class EndpointError(ValueError):
    """
    An endpoint description cannot be used; the message is one line naming
    the option, the description and what to write instead.
    """


def _forms(server: bool) -> dict:
    return SERVER_FORMS if server else CLIENT_FORMS


def _checkFiles(option: str, description: str) -> None:
    _, _, kwargs = splitDescription(description)
    for name, path in kwargs.items():
        what = FILE_PARAMETERS.get(name)
        if what is None:
            continue
        prefix = f"bad {option} {description!r}: {name}={path}"
        if not path:
            raise EndpointError(f"{prefix}: empty; give {what}")
        try:
            isDirectory = stat.S_ISDIR(os.stat(path).st_mode)
        except OSError as e:
            raise EndpointError(f"{prefix}: {e.strerror}; give {what}") from None
        if name == "trustRoots":
            if not isDirectory:
                raise EndpointError(f"{prefix}: not a directory; give {what}")
            continue
        if isDirectory:
            raise EndpointError(f"{prefix}: is a directory; give {what}")
        if not os.access(path, os.R_OK):
            raise EndpointError(f"{prefix}: permission denied; give {what} this user "
                                f"can read")


#: The longest Unix socket path, in bytes (C{sun_path} less its NUL).
MAX_UNIX_PATH = 107


def _checkPorts(option: str, description: str, server: bool) -> None:
    kind, args, kwargs = splitDescription(description)
    if kind == "unix":
        path = kwargs.get("address", kwargs.get("path", args[0] if args else ""))
        size = len(path.encode("utf-8", "surrogateescape"))
        if size > MAX_UNIX_PATH:
            raise EndpointError(f"bad {option} {description!r}: the path is too long for a "
                                f"Unix socket ({size} bytes, at most {MAX_UNIX_PATH}); choose "
                                "a shorter one")
        return
    if kind not in ("tcp", "tcp6", "tls", "mtls", "ssl"):
        return
    form = _forms(server).get(kind, kind + ":...")
    if server:
        port = kwargs.get("port", args[0] if args else None)
    else:
        port = kwargs.get("port", args[1] if len(args) > 1 else None)
    if port is None:
        return
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise EndpointError(f"bad {option} {description!r}: {port!r} is not a port number "
                            f"(0 to 65535); write {form}")


def _opensslReason(error: BaseException) -> str:
    """
    @return: pyOpenSSL's list of C{(library, function, reason)} as words.
    """
    entries = error.args[0] if error.args and isinstance(error.args[0], list) else []
    words = [": ".join(part for part in entry if part) for entry in entries
             if isinstance(entry, tuple)]
    return "; ".join(w for w in words if w) or str(error) or "OpenSSL"


def describeEndpointError(option: str, description: str, error: BaseException,
                          server: bool = True) -> str:
    """
    Say in one line why Twisted refused an endpoint description.

    @param option: the option that gave it, such as C{--port}.
    @param error: what C{serverFromString} or C{clientFromString} raised.
    @param server: whether it is a server (listening) endpoint.
    @return: the line: the option, the description, what is wrong and how
        it is written.
    """
    forms = _forms(server)
    kind = description.split(":", 1)[0]
    form = forms.get(kind, f"{kind}:...")
    prefix = f"bad {option} {description!r}"
    text = str(error)
    unknown = re.match(r"Unknown endpoint type: '(.*)'", text)
    if unknown:
        return (f"{prefix}: unknown endpoint type {unknown.group(1)!r}; use one of "
                f"{', '.join(forms.values())}")
    missing = re.search(r"missing \d+ required positional arguments?: (.*)", text)
    if missing:
        names = re.findall(r"'(\w+)'", missing.group(1))
        return f"{prefix}: missing {' and '.join(names) or 'fields'}; write {form}"
    bad = re.search(r"unexpected keyword argument '(\w+)'", text)
    if bad:
        return f"{prefix}: {kind}: takes no {bad.group(1)}=; write {form}"
    if isinstance(error, TypeError) and len(error.args) > 1 and isinstance(error.args[1], list):
        names = ", ".join(f"{n}=" for n in error.args[1])
        return f"{prefix}: {kind}: takes no {names}; write {form}"
    if kind == "systemd" and isinstance(error, (IndexError, KeyError)):
        passed = os.environ.get("LISTEN_FDS", "none")
        return (f"{prefix}: systemd passed no such socket (LISTEN_FDS: {passed}): start it "
                "from a .socket unit that lists it, or listen with tcp:PORT or unix:PATH")
    number = re.search(r"invalid literal for int\(\) with base \d+: '(.*)'", text)
    if number:
        return f"{prefix}: {number.group(1)!r} is not a number; write {form}"
    if type(error).__module__.startswith("OpenSSL"):
        return (f"{prefix}: not a usable PEM certificate or key ({_opensslReason(error)}); "
                f"give PEM files: {form}")
    if isinstance(error, OSError) and error.strerror:
        where = f" {error.filename}" if error.filename else ""
        return f"{prefix}: cannot read{where}: {error.strerror}; write {form}"
    reason = text.strip() or type(error).__name__
    if reason.startswith(f"{kind}: "):
        reason = reason[len(kind) + 2:]
    return f"{prefix}: {reason}; write {form}"


def checkEndpoint(option: str, description: str, reactor, server: bool = True):
    """
    Parse an endpoint description as C{twistd} will, with every refusal as
    one line.

    @param option: the option that gave it, such as C{--port}.
    @param server: a server (listening) endpoint, else a client one.
    @return: the endpoint.
    @raise EndpointError: naming the option, the description and the fix.
    """
    if description.isdigit():
        raise EndpointError(f"bad {option} {description!r}: an endpoint needs its type, such as "
                            f"tcp:{description}" + ("" if server else
                                                    f" or tcp:HOST:{description}"))
    _checkPorts(option, description, server)
    _checkFiles(option, description)
    parse = endpoints.serverFromString if server else endpoints.clientFromString
    try:
        return parse(reactor, description)
    except Exception as e:
        raise EndpointError(describeEndpointError(option, description, e, server)) from None


def _address(description: str) -> Tuple[str, Optional[str]]:
    kind, args, kwargs = splitDescription(description)
    if kind == "unix":
        return kind, kwargs.get("address", args[0] if args else None)
    return kind, kwargs.get("port", args[0] if args else None)


def _code(error: CannotListenError) -> Optional[int]:
    reason = error.socketError
    code = getattr(reason, "errno", None)
    if code is None and isinstance(reason, tuple) and reason and isinstance(reason[0], int):
        code = reason[0]
    return code


def describeListenError(option: str, description: str, error: BaseException) -> str:
    """
    Say in one line why a listener could not start, and what to do.

    @param option: the option that gave it (C{--port}, C{--control}...).
    @param error: a L{CannotListenError} or the L{OSError} of making a Unix
        socket's lock file.
    @return: the line.
    """
    kind, where = _address(description)
    prefix = f"{option} {description}"
    if isinstance(error, CannotListenError):
        code = _code(error)
        reason = str(error.socketError)
    else:
        code = getattr(error, "errno", None)
        reason = getattr(error, "strerror", None) or str(error)
    if kind == "unix":
        if "lock" in reason.lower():
            if option == "--control":
                return (f"{prefix}: another twistd ekey runs in this directory (it holds "
                        f"{where}.lock): give --rundir DIR or --control unix:OTHER")
            return (f"{prefix}: another daemon holds {where}.lock: stop it or choose "
                    "another path")
        if code == errno.EADDRINUSE:
            return (f"{prefix}: {where} is in use: stop the daemon that listens there or "
                    "choose another path")
        if code in (errno.ENOENT, errno.ENOTDIR):
            return (f"{prefix}: the directory of {where} does not exist: create it or "
                    "choose another path")
        if code in (errno.EACCES, errno.EPERM, errno.EROFS):
            return (f"{prefix}: cannot create {where}: permission denied; choose a "
                    "directory this user may write")
        return f"{prefix}: cannot listen on {where}: {reason}"
    if code == errno.EADDRINUSE:
        return (f"{prefix}: address in use: another daemon (or ekeyd) listens there; stop "
                "it or choose another port")
    if code in (errno.EACCES, errno.EPERM):
        return (f"{prefix}: permission denied: ports below 1024 need root or "
                "CAP_NET_BIND_SERVICE; choose a port above 1023")
    if code == errno.EADDRNOTAVAIL:
        return (f"{prefix}: no such address on this host: give an interface= address "
                "of this host")
    return f"{prefix}: cannot listen: {reason}"


def listenersOf(config) -> List[Tuple[str, str]]:
    """
    @param config: a L{ekey.services.config.DaemonConfig}.
    @return: C{(option, description)} of every listener it asks for.
    """
    found = [("--port", d) for d in config.ports]
    found += [(option, d) for option, d in (("--control", config.control),
                                            ("--ekeyd-control", config.ekeydControl),
                                            ("--metrics", config.metrics)) if d]
    return found


def _sameAddress(description: str, error: BaseException) -> bool:
    kind, where = _address(description)
    if where is None:
        return False
    if isinstance(error, CannotListenError):
        got = error.port
    else:
        got = getattr(error, "filename2", None) or getattr(error, "filename", None)
        if isinstance(got, bytes):
            got = got.decode("utf-8", "replace")
        if isinstance(got, str) and got.endswith(".lock"):
            got = got[:-len(".lock")]
    if kind == "unix":
        if isinstance(got, bytes):
            got = got.decode("utf-8", "replace")
        return isinstance(got, str) and os.path.abspath(got) == os.path.abspath(where)
    return str(got) == where


def explainListenError(listeners: Sequence[Tuple[str, str]], error: BaseException,
                       ) -> Optional[str]:
    """
    Find which listener failed, and say why in one line.

    @param listeners: C{(option, description)} pairs (L{listenersOf}).
    @return: the line, or C{None} if C{error} is no listener's.
    """
    for option, description in listeners:
        if _sameAddress(description, error):
            return describeListenError(option, description, error)
    if isinstance(error, CannotListenError):
        return f"cannot listen: {error}"
    return None


def checkPidFile(pidfile: Optional[str]) -> None:
    """
    Refuse to start beside a running daemon's pid file, in one line, before
    C{twistd} does so in four (C{Another twistd server is running...}).
    Call it from the options' checks: C{twistd} looks at its pid file
    before it builds the service.

    @param pidfile: C{twistd}'s C{--pidfile} (C{None} or empty: none).
    @raise ValueError: with one line naming C{--rundir} and C{--pidfile},
        if the file names a process that is alive.
    """
    if not pidfile:
        return
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip() or "0")
    except (OSError, ValueError):
        return
    if pid <= 0 or pid == os.getpid():
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass
    raise ValueError(f"another twistd runs in this directory (process {pid}, in {pidfile}): "
                     "give --rundir DIR, or --pidfile OTHER and --control unix:OTHER")


def writeError(prog: str, line: str, serverOptions=None) -> None:
    """
    Report a failed start: C{PROG: LINE} on the process's own standard
    error (not twistd's log, which has taken over C{sys.stderr}) and in the
    log.  When C{twistd} has daemonised, the line goes through its status
    pipe instead, so that the waiting parent prints it and exits 1.

    @param serverOptions: C{twistd}'s own options (its C{statusPipe} and
        C{pidfile}), or C{None}.
    """
    log.error("{prog}: {line}", prog=prog, line=line)
    message = f"{prog}: {line}"
    statusPipe = serverOptions.get("statusPipe") if serverOptions is not None else None
    if statusPipe is not None:
        try:
            os.write(statusPipe, ("1 " + line).encode("ascii", "backslashreplace")[:100])
            os.close(statusPipe)
        except OSError:
            pass
        serverOptions["statusPipe"] = None
    else:
        stream = sys.__stderr__ or sys.stderr
        stream.write(message + "\n")
        stream.flush()
    pidfile = serverOptions.get("pidfile") if serverOptions is not None else None
    if pidfile:
        try:
            with open(pidfile) as f:
                ours = f.read().strip() == str(os.getpid())
            if ours:
                os.unlink(pidfile)
        except OSError:
            pass


class StartupGuard(MultiService):
    """
    The daemon's services under one parent that turns a listener that cannot
    bind into one line on standard error and exit status 1 (L{SystemExit},
    which C{twistd} lets through without a traceback), instead of the
    traceback C{twistd} logs.  Attributes the daemon's top service has
    (C{pool}, C{keys}, C{daemon}...) are read through.

    @ivar service: the daemon's top service.
    """

    def __init__(self, service, listeners: Iterable[Tuple[str, str]],
                 prog: str = "twistd ekey", serverOptions=None,
                 report: Optional[Callable[[str, str, object], None]] = None):
        """
        @param service: the daemon's top service.
        @param listeners: C{(option, description)} of its listeners
            (L{listenersOf}).
        @param serverOptions: C{twistd}'s options, for L{writeError}.
        @param report: called with C{(prog, line, serverOptions)} on
            failure (default L{writeError}).
        """
        MultiService.__init__(self)
        self.service = service
        self.listeners = list(listeners)
        self.prog = prog
        self.serverOptions = serverOptions
        self.report = report or writeError
        service.setServiceParent(self)

    def __getattr__(self, name):
        if name.startswith("__") or name == "service":
            raise AttributeError(name)
        return getattr(self.service, name)

    def _guarded(self, start):
        try:
            start(self)
        except (CannotListenError, OSError) as e:
            line = explainListenError(self.listeners, e)
            if line is None:
                raise
            self.report(self.prog, line, self.serverOptions)
            raise SystemExit(1) from None

    def privilegedStartService(self):
        """
        Start listening, or exit with one line.

        @raise SystemExit: with status 1, if a listener cannot bind.
        """
        self._guarded(MultiService.privilegedStartService)

    def startService(self):
        """
        Start the services, or exit with one line.

        @raise SystemExit: with status 1, if a listener cannot bind.
        """
        self._guarded(MultiService.startService)
