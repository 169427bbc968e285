# -*- test-case-name: tests.test_configfile -*-
"""
Configuration files: ekey's own (TOML, keys are the daemon's long option
names) and ekeyd's C{ekeyd.conf}, read into the same form, a mapping from
long option name to value (a list for repeatable options), which the
command line then overrides.

C{ekeyd.conf} is a Lua script, but every stock and documented one is a
list of directive calls (C{Keyring "/etc/entropykey/keyring"},
C{EGDTCPSocket(8888, "127.0.0.1")}).  That subset is read here without
running anything; a file that does more is refused at the line where it
does, so that nothing in it is silently ignored.  Every directive of
ekeyd.conf(5), and the few more ekeyd 1.1.5 knows, is either honoured or
refused by name with the option to use instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

Value = Union[str, int, float, bool, List[str]]


class ConfigError(ValueError):
    """
    A configuration file cannot be used; the message is one line that names
    the file, the line where known, and what to do.
    """


# TOML -------------------------------------------------------------------------------


def loadTOML(path: str, known: Mapping[str, type], repeatable: Iterable[str]) -> Dict[str, Value]:
    """
    Read ekey's own configuration file.

    @param known: every long option name the file may set, with the type of
        its value (C{str}, C{int}, C{float} or C{bool}).
    @param repeatable: the names whose value is a list of strings.
    @return: option name to value.
    @raise ConfigError: for a file that cannot be read or parsed, an unknown
        key, or a value of the wrong type.
    """
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    repeatable = set(repeatable)
    result: Dict[str, Value] = {}
    for key, value in data.items():
        if key not in known and key not in repeatable:
            raise ConfigError(f"{path}: unknown setting {key!r}: the keys are the long option "
                              "names of 'twistd ekey --help' (without the dashes)")
        if key in repeatable:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{path}: {key} must be a string or an array of strings")
            result[key] = list(value)
            continue
        wanted = known[key]
        if wanted is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not wanted:
            raise ConfigError(f"{path}: {key} must be {_typeName(wanted)}, "
                              f"not {_typeName(type(value))}")
        result[key] = value
    return result


def _typeName(kind: type) -> str:
    return {str: "a string", int: "a whole number", float: "a number", bool: "true or false",
            list: "an array", dict: "a table"}.get(kind, kind.__name__)


def toTOML(settings: Mapping[str, Value], comments: Sequence[str] = ()) -> str:
    """
    @param comments: lines to put first, as TOML comments.
    @return: C{settings} as a TOML document, keys in the order given.
    """
    lines = [f"# {line}" if line else "#" for line in comments]
    if lines:
        lines.append("")
    for key, value in settings.items():
        lines.append(f"{_tomlKey(key)} = {_tomlValue(value)}")
    return "\n".join(lines) + "\n"


def _tomlKey(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _tomlString(key)


def _tomlValue(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_tomlValue(v) for v in value) + "]"
    return _tomlString(value)


def _tomlString(text: str) -> str:
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\t", "\\t"))
    escaped = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\u{ord(m.group()):04x}", escaped)
    return f'"{escaped}"'


# ekeyd.conf ------------------------------------------------------------------------


@dataclass(frozen=True)
class Directive:
    """
    One call in an ekeyd.conf: C{name(arguments)} at C{line}.
    """

    name: str
    arguments: Tuple[Union[str, int, float, bool, None], ...]
    line: int


_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\f]+)
  | (?P<newline>\n)
  | (?P<longcomment>--\[(?P<eq>=*)\[.*?\](?P=eq)\])
  | (?P<comment>--[^\n]*)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<punct>[(),;])
""", re.X | re.S)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "a": "\a",
            "b": "\b", "f": "\f", "v": "\v", "0": "\0"}


def _tokens(text: str, name: str):
    line, position = 1, 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ConfigError(f"{name}:{line}: ekey reads ekeyd.conf's directive calls only, "
                              f"and this is not one ({text[position:position + 20].split(chr(10))[0]!r}): "
                              "convert the file by hand to TOML (ekey-convert-ekeyd-conf)")
        kind = match.lastgroup
        value = match.group(kind)
        if kind == "longcomment":
            kind = "comment"
        if kind not in ("space", "newline", "comment"):
            yield kind, value, line
        line += value.count("\n") if kind in ("newline", "comment") else 0
        position = match.end()


def _string(literal: str) -> str:
    body = literal[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


def parseEkeydConf(text: str, name: str = "ekeyd.conf") -> List[Directive]:
    """
    Read the directive calls of an ekeyd.conf, running nothing.

    @param name: the file's name, for messages.
    @return: the calls, in order.
    @raise ConfigError: at the first line that is not a directive call with
        literal arguments.
    """
    tokens = list(_tokens(text, name))
    directives: List[Directive] = []
    i = 0

    def fail(line: int, what: str):
        raise ConfigError(f"{name}:{line}: {what}: ekey reads ekeyd.conf's directive calls "
                          "with literal arguments only; convert the file by hand to TOML "
                          "(ekey-convert-ekeyd-conf)")

    def literal(index: int):
        kind, value, line = tokens[index]
        if kind == "string":
            return _string(value)
        if kind == "number":
            number = float(value) if re.search(r"[.eE]", value) and not value.lower().startswith(
                "0x") else int(value, 0)
            return number
        if kind == "name" and value in ("true", "false", "nil"):
            return {"true": True, "false": False, "nil": None}[value]
        fail(line, f"{value!r} is not a literal")

    while i < len(tokens):
        kind, value, line = tokens[i]
        if kind == "punct" and value == ";":
            i += 1
            continue
        if kind != "name" or value in ("true", "false", "nil", "local", "function", "if",
                                       "for", "while", "return", "end", "do", "repeat"):
            fail(line, f"{value!r} does not start a directive")
        i += 1
        if i >= len(tokens):
            fail(line, f"{value} has no argument")
        nextKind, nextValue, _ = tokens[i]
        if nextKind in ("string",):
            directives.append(Directive(value, (literal(i),), line))
            i += 1
            continue
        if nextKind != "punct" or nextValue != "(":
            fail(line, f"{value} is not called")
        i += 1
        arguments = []
        while True:
            if i >= len(tokens):
                fail(line, f"{value}( is not closed")
            kind2, value2, line2 = tokens[i]
            if kind2 == "punct" and value2 == ")" and not arguments:
                i += 1
                break
            arguments.append(literal(i))
            i += 1
            if i >= len(tokens):
                fail(line, f"{value}( is not closed")
            kind3, value3, line3 = tokens[i]
            i += 1
            if kind3 == "punct" and value3 == ")":
                break
            if not (kind3 == "punct" and value3 == ","):
                fail(line3, f"{value3!r} in the arguments of {value}")
        directives.append(Directive(value, tuple(arguments), line))
    return directives


#: Directives ekeyd knows that have no place in a configuration (they are
#: control commands), with what to do instead.
_CONTROL_ONLY = {
    "RemoveEntropyKey": "leave the key out of the configuration instead",
    "ListEntropyKeys": "a control command: use 'ekeyctl list'",
    "StatEntropyKey": "a control command: use 'ekeyctl stats'",
    "Shutdown": "a control command: use 'ekeyctl shutdown'",
    "Print": "a control command", "MLPrint": "a control command",
    "KVPrint": "a control command",
}


def ekeydConfOptions(directives: Sequence[Directive],
                     name: str = "ekeyd.conf") -> Dict[str, Value]:
    """
    Turn ekeyd.conf's directives into ekey's options.

    @return: long option name to value (lists for C{device}, C{device-dir}
        and C{port}).
    @raise ConfigError: for a directive ekey refuses (naming the option to
        use instead), a directive it does not know, or bad arguments.
    """
    options: Dict[str, Value] = {}

    def add(key: str, value: str) -> None:
        options.setdefault(key, [])
        options[key].append(value)

    def setOnce(key: str, value: Value, directive: Directive) -> None:
        if key in options and options[key] != value:
            raise ConfigError(f"{name}:{directive.line}: {directive.name} is given twice")
        options[key] = value

    for d in directives:
        where = f"{name}:{d.line}: {d.name}"
        args = d.arguments

        def need(count: int, most: Optional[int] = None, kinds=(str,)):
            most = count if most is None else most
            if not count <= len(args) <= most:
                raise ConfigError(f"{where} takes {count}"
                                  + (f" to {most}" if most != count else "")
                                  + f" argument(s), not {len(args)}")
            for a in args:
                if not isinstance(a, kinds) or isinstance(a, bool) and bool not in kinds:
                    raise ConfigError(f"{where}: argument {a!r} is of the wrong kind")

        if d.name == "Keyring":
            need(1)
            setOnce("keyring", args[0], d)
        elif d.name == "AddEntropyKey":
            need(1)
            add("device", args[0])
        elif d.name == "AddEntropyKeys":
            need(1)
            add("device-dir", args[0])
        elif d.name == "EGDTCPSocket":
            need(1, 2, (str, int))
            port = str(args[0])
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"{where}: {port!r} is not a TCP port number")
            address = str(args[1]) if len(args) > 1 else "127.0.0.1"
            add("port", f"tcp:{port}:interface={_escape(address)}")
        elif d.name == "EGDUnixSocket":
            need(1, 4)
            mode = args[1] if len(args) > 1 and args[1] else "0600"
            if not re.fullmatch(r"0?[0-7]{3}", mode):
                raise ConfigError(f"{where}: mode {mode!r} is not an octal mode such as 0660")
            if any(a for a in args[2:]):
                raise ConfigError(
                    f"{where}: ekey does not chown its sockets; leave user and group empty "
                    "and give the socket the daemon's group instead (twistd --gid GROUP, or "
                    "a setgid run directory)")
            add("port", f"unix:{_escape(args[0])}:mode={int(mode, 8):o}")
        elif d.name == "UnixControlSocket":
            need(1)
            setOnce("ekeyd-control", f"unix:{_escape(args[0])}", d)
        elif d.name == "TCPControlSocket":
            raise ConfigError(f"{where} is refused: a TCP control socket lets anyone on the host "
                              "control the daemon; use UnixControlSocket (ekey's "
                              "--ekeyd-control unix:PATH) instead")
        elif d.name == "SetOutputToKernel":
            need(0, 1, (int, float))
            bits = args[0] if args else 7
            if not 0 <= bits <= 8 or bits != int(bits):
                raise ConfigError(f"{where}: {bits!r} is not a whole number of shannons "
                                  "per byte from 0 to 8")
            setOnce("kernel", True, d)
            setOnce("shannons-per-byte", int(bits), d)
        elif d.name == "SetOutputToFile":
            need(1)
            setOnce("output-file", args[0], d)
        elif d.name == "SetFoldedOutput":
            need(0, 1, (bool,))
            if not args or args[0]:
                raise ConfigError(f"{where} is refused: ekey has no folded output; it serves "
                                  "each key's health-tested bytes as they are. Remove the line")
        elif d.name == "Daemonise":
            need(0, 1, (bool,))
            raise ConfigError(f"{where} is refused: twistd decides whether to daemonise; "
                              "remove the line and run 'twistd ekey' (background) or "
                              "'twistd --nodaemon ekey' (foreground)")
        elif d.name in _CONTROL_ONLY:
            raise ConfigError(f"{where} is refused: {_CONTROL_ONLY[d.name]}")
        else:
            raise ConfigError(f"{where} is not an ekeyd.conf directive ekey knows")
    return options


def _escape(text: str) -> str:
    """
    Escape C{:} and C{\\} for a Twisted endpoint description.
    """
    return text.replace("\\", "\\\\").replace(":", "\\:")


def readEkeydConf(path: str) -> Dict[str, Value]:
    """
    Read an ekeyd.conf into ekey's options.

    @raise ConfigError: as L{parseEkeydConf} and L{ekeydConfOptions} do, or
        for a file that cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read {path}: {reason}") from None
    return ekeydConfOptions(parseEkeydConf(text, path), path)
