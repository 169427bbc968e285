# -*- test-case-name: tests.test_upstreamconfig -*-
"""
What an C{--upstream} description may say, checked before anything
connects.

A description is a Twisted client endpoint string (C{tcp:}, C{unix:},
C{tls:}), with one addition: a C{priority=N} argument anywhere after the
type (N a whole number, 0 by default, lower asked first; see
L{ekey.core.pull}).  It is taken off before the rest goes to
C{clientFromString}.

Only verified sources are trusted: C{ssl:} connects without checking the
server's certificate and is refused (C{tls:} with C{trustRoots=} checks
both the chain and the name); plain C{tcp:} to an address other than
loopback is accepted with a warning, since anybody on the path can read or
replace what it carries.
"""

from __future__ import annotations

from typing import List, Tuple

from ekey.core.endpointstrings import isLoopbackHost, splitDescription, splitFields, unescape

#: The priority of an upstream that names none.
DEFAULT_PRIORITY = 0


def splitPriority(description: str) -> Tuple[str, int]:
    """
    Take the C{priority=N} argument off an upstream description.

    @return: the endpoint description without it, and the priority
        (L{DEFAULT_PRIORITY} when none is given).
    @raise ValueError: if a priority is not a whole number, or is given
        twice.
    """
    segments = splitFields(description)
    kept = segments[:1]
    priority = None
    for segment in segments[1:]:
        name, equals, value = segment.partition("=")
        if equals and name.strip().lower() == "priority":
            if priority is not None:
                raise ValueError("priority= is given twice")
            try:
                priority = int(unescape(value))
            except ValueError:
                raise ValueError(f"priority= takes a whole number, not {value!r}") from None
            if priority < 0:
                raise ValueError(f"priority= takes a number from 0 up, not {priority}")
        else:
            kept.append(segment)
    return ":".join(kept), DEFAULT_PRIORITY if priority is None else priority


def checkUpstreamDescription(description: str) -> List[str]:
    """
    Check an C{--upstream} description before it is used.

    @return: warnings to log at start (possibly none).
    @raise ValueError: with one line naming the fix, for a description
        that must not be used (C{ssl:}, a bad C{priority=}).
    """
    endpoint, _ = splitPriority(description)
    kind, positional, keywords = splitDescription(endpoint)
    kind = kind.strip().lower()
    if kind == "ssl":
        raise ValueError(
            "ssl: does not check the server's certificate; use "
            "tls:HOST:PORT:trustRoots=DIR instead, which checks its chain and its name")
    warnings = []
    if kind in ("tcp", "tcp6"):
        host = keywords.get("host", positional[0] if positional else "")
        if not isLoopbackHost(host):
            warnings.append(
                f"upstream {endpoint} is plain TCP to {host}: nothing checks who answers and "
                f"anybody on the path can read or replace its bytes; use tls: with "
                f"trustRoots= across a network")
    return warnings
