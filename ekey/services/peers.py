# -*- test-case-name: tests.test_peers -*-
"""
Who is at the other end of a connection: one answer for logs, the control
channel's checks and the EGD server's fair shares.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Optional

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

_UCRED = struct.Struct("3i")


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
