# -*- test-case-name: tests.test_upstream -*-
"""
One upstream as the status model shows it (to join L{ekey.core.status}).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional


class UpstreamState(enum.Enum):
    """
    Where an upstream stands.

    @cvar CONNECTING: a connection (and, over TLS, its handshake) is being
        made.
    @cvar UP: connected and delivering (or not yet asked).
    @cvar STALLED: connected, but it has delivered nothing of what it was
        asked for the stall time-out; the others are asked instead.
    @cvar DOWN: not connected; it will be tried again.
    """

    CONNECTING = "connecting"
    UP = "up"
    STALLED = "stalled"
    DOWN = "down"


@dataclass(frozen=True)
class UpstreamStatus:
    """
    One upstream, as its L{ekey.services.upstream.Upstream} sees it now.

    @ivar description: the endpoint string (without C{priority=}).
    @ivar priority: lower is asked first.
    @ivar state: where it stands.
    @ivar bytesPulled: bytes it delivered that passed the health tests and
        went into the pool.
    @ivar bytesRefused: of its tested bytes, those the pool had no room for.
    @ivar inFlight: bytes asked of it now and not yet received.
    @ivar testing: bytes received from it and still held by the health
        tests.
    @ivar connections: connections made to it.
    @ivar healthFailures: connections dropped because its bytes failed the
        health tests.
    @ivar lastError: why it last failed or went away, in words, or C{None}.
    """

    description: str
    priority: int
    state: UpstreamState
    bytesPulled: int
    bytesRefused: int
    inFlight: int
    testing: int
    connections: int
    healthFailures: int
    lastError: Optional[str]
