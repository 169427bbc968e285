"""
One way to name and default the reactor.

Every service, factory and command takes C{reactor=None} and calls
L{default} once, in its constructor or at the top of its entry function;
the global reactor is imported only there, never at module level, so that
tests can pass a L{twisted.internet.testing.MemoryReactorClock} or a
L{twisted.internet.task.Clock} instead.
"""

from __future__ import annotations


def default(reactor=None):
    """
    @param reactor: a reactor (or clock) given by the caller, or C{None}.
    @return: C{reactor}, or the global reactor if it is C{None}.
    """
    if reactor is None:
        from twisted.internet import reactor
    return reactor
