# -*- test-case-name: tests.test_endpointstrings -*-
"""
Endpoint description strings (C{tcp:HOST:PORT}, C{unix:PATH:mode=600},
...) read as Twisted reads them, for the checks made before one is used:
colons separate fields, a backslash escapes the next character, and a
C{name=value} field is a keyword argument.

Twisted parses them itself when it connects or listens
(C{clientFromString}, C{strports.service}); these functions only look, so
that a refusal can name the option and the fix before anything opens.
"""

from __future__ import annotations

import ipaddress
from typing import Dict, List, Optional, Tuple


def splitFields(description: str) -> List[str]:
    """
    Split a description at its unescaped colons, keeping the escapes (so
    that joining the fields again with colons gives it back).

    @return: the fields, the endpoint type first.
    """
    fields = []
    current = []
    chars = iter(description)
    for char in chars:
        if char == "\\":
            current.append(char)
            current.append(next(chars, ""))
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields


def unescape(field: str) -> str:
    """
    @return: C{field} with each backslash escape replaced by the character
        it escapes.
    """
    out = []
    chars = iter(field)
    for char in chars:
        out.append(next(chars, "") if char == "\\" else char)
    return "".join(out)


def splitDescription(description: str) -> Tuple[str, List[str], Dict[str, str]]:
    """
    @return: the endpoint type, its positional arguments and its keyword
        arguments, unescaped.
    """
    fields = splitFields(description)
    args, kwargs = [], {}
    for field in fields[1:]:
        name, value = _splitKeyword(field)
        if value is None:
            args.append(unescape(field))
        else:
            kwargs[unescape(name)] = unescape(value)
    return unescape(fields[0]), args, kwargs


def _splitKeyword(field: str) -> Tuple[str, Optional[str]]:
    """
    @return: a field's name and value, split at its first unescaped C{=},
        or the field and C{None} if it has none.
    """
    index = 0
    while index < len(field):
        if field[index] == "\\":
            index += 2
            continue
        if field[index] == "=":
            return field[:index], field[index + 1:]
        index += 1
    return field, None


def isLoopbackHost(host: str) -> bool:
    """
    @return: whether C{host} names this machine: C{localhost} (and the
        names distributions give it) or a loopback address
        (C{127.0.0.0/8}, C{::1}, bracketed or not).
    """
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
