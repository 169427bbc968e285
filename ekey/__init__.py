"""
ekey: a Twisted host stack for the Simtec Entropy Key.

The key's protocol (L{ekey.skein}, L{ekey.frames}, L{ekey.session}), the
keyring (L{ekey.keyring}), a simulated key (L{ekey.simulator}), the Twisted
adapters (L{ekey.device}) and the daemon (L{ekey.tap}).
"""

__version__ = "0.1.0"
