"""
ekey: a Twisted host stack for the Simtec Entropy Key.

Three layers: L{ekey.core}, the protocols and policies, pure (no I/O, no
reactor); L{ekey.services}, the Twisted adapters and services around them;
L{ekey.cli}, the command-line front ends (C{twistd ekey} is
L{ekey.cli.twistd} over L{ekey.services.assembly}).  doc/architecture.md
draws how entropy flows through them.
"""

__version__ = "0.1.0"
