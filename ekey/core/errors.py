"""
Whose fault an error is, for every protocol ekey speaks (the key's frames,
EGD, the control channel).

A peer that breaks a protocol raises L{RemoteProtocolError}: log it, count
it, and resynchronise, reset or drop the connection.  Misuse of our own API
raises L{LocalProtocolError}: a bug in the caller, raised, never counted.
(The split is h11's.)
"""


class RemoteProtocolError(Exception):
    """
    The peer sent something the protocol does not allow.  This is the
    peer's fault (or the line's): count it, and resynchronise or reset.
    """


class LocalProtocolError(Exception):
    """
    This side was asked to do something the protocol does not allow: a bug
    in the caller.
    """
