"""
twistd ekey: the command line (Options) and the daemon it builds.
"""

from ekey.services.tap import Options, makeService

__all__ = ["Options", "makeService"]
