"""
ekey: a Twisted host stack for the Simtec Entropy Key.

The key's protocol (L{ekey.core.skein}, L{ekey.core.frames}, L{ekey.core.session}), the
keyring (L{ekey.core.keyring}), a simulated key (L{ekey.services.simulator}), the Twisted
adapters (L{ekey.services.device}) and the daemon (L{ekey.services.tap}).
"""

__version__ = "0.1.0"
