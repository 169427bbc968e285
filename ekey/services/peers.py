# -*- test-case-name: tests.test_control -*-
"""
Who is at the other end of a connection: one answer for logs, the control
channel's checks and the EGD server's fair shares; and how small writes
reach it.
"""

from __future__ import annotations

import os
import pwd
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Optional, Tuple

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

_UCRED = struct.Struct("3i")
#: Linux's C{SO_PEERGROUPS} (since 4.13): the peer's supplementary groups.
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_GID = struct.Struct("I")


@dataclass(frozen=True)
class Credentials:
    """
    What the kernel says of the process at the other end of a Unix socket
    (C{SO_PEERCRED}), as it was when the connection was made.
    """

    pid: int
    uid: int
    gid: int


def peerCredentials(transport) -> Optional[Credentials]:
    """
    @return: the peer's L{Credentials} for a connected Unix socket, else
        C{None} (not a Unix socket, or the kernel would not say).
    """
    try:
        if not isinstance(transport.getPeer(), UNIXAddress):
            return None
        raw = transport.getHandle().getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        return Credentials(*_UCRED.unpack(raw))
    except (AttributeError, OSError, struct.error):
        return None


def describePeer(transport) -> str:
    """
    Say who is at the other end of a connection, for logs and listings: for
    a Unix socket the process, user and group the kernel reports
    (C{SO_PEERCRED}), for TCP the address and port.
    """
    try:
        peer = transport.getPeer()
    except Exception:
        return "?"
    if isinstance(peer, UNIXAddress):
        credentials = peerCredentials(transport)
        if credentials is None:
            return "unix:?"
        return f"unix:pid={credentials.pid},uid={credentials.uid},gid={credentials.gid}"
    if isinstance(peer, (IPv4Address, IPv6Address)):
        return f"{peer.type.lower()}:{peer.host}:{peer.port}"
    return str(peer)


def peerGroups(transport, credentials: Credentials) -> Tuple[int, ...]:
    """
    The groups of the process at the other end of a Unix socket: its group
    and its supplementary groups as the kernel reports them
    (C{SO_PEERGROUPS}), else, where the kernel does not say, the groups
    the user database gives its user.

    @return: group ids.
    """
    groups = [credentials.gid]
    try:
        if not sys.platform.startswith("linux"):
            raise OSError("no SO_PEERGROUPS")
        raw = transport.getHandle().getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 1024)
        groups += [gid for (gid,) in _GID.iter_unpack(raw[:len(raw) - len(raw) % _GID.size])]
    except (AttributeError, OSError):
        try:
            name = pwd.getpwuid(credentials.uid).pw_name
            groups += os.getgrouplist(name, credentials.gid)
        except (KeyError, OSError):
            pass
    return tuple(groups)


def sendSmallWritesAtOnce(transport) -> None:
    """
    Turn off Nagle's algorithm on a TCP connection (through TLS, on the TCP
    transport underneath; nothing on other transports).

    EGD is requests and replies of a few bytes, pipelined: with Nagle's
    algorithm a small write waits for the acknowledgement of the one
    before it, which the other end delays (up to 40 ms on Linux) until it
    has something to send.  Both a relay's requests and a server's replies
    are such writes; stunnel turns it off on its sockets too.
    """
    setTcpNoDelay = getattr(transport, "setTcpNoDelay", None)
    if setTcpNoDelay is not None:
        try:
            setTcpNoDelay(True)
        except OSError:
            pass
